"""`mgpu drain NODE` and `mgpu resume NODE`: take a node out of scheduling and back."""

from mgpu.cli.common import Parser
from mgpu.cli.render import text
from mgpu.client import call

DRAIN_EXAMPLES = """examples:
  sudo mgpu drain gpu3 --reason "replace a fan"
  sudo mgpu resume gpu3

A drained node finishes the jobs running on it and starts no new ones; jobs that only it could
run wait in the queue. It stays drained across restarts of the master and of the node until
'mgpu resume'. Root and operators only. 'mgpu queue' shows it as drained."""

RESUME_EXAMPLES = """examples:
  sudo mgpu resume gpu3

The node takes jobs again. Root and operators only."""


def _plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def build_drain_parser():
    p = Parser(prog="mgpu drain", usage="mgpu drain NODE [--reason TEXT]",
               description="Drain a node: its running jobs finish, no new job starts on it.",
               epilog=DRAIN_EXAMPLES)
    p.add_argument("node", metavar="NODE", help="the node's name (as 'mgpu queue' shows it)")
    p.add_argument("--reason", "-r", metavar="TEXT", help="why (shown in 'mgpu queue' and the master's log)")
    return p


def build_resume_parser():
    p = Parser(prog="mgpu resume", usage="mgpu resume NODE",
               description="Resume a drained node: it takes jobs again.",
               epilog=RESUME_EXAMPLES)
    p.add_argument("node", metavar="NODE", help="the node's name (as 'mgpu queue' shows it)")
    return p


def main(argv):
    args = build_drain_parser().parse_args(argv)
    fields = {"node": args.node}
    if args.reason:
        fields["reason"] = args.reason
    result = call("drain", **fields)
    running = result.get("running") or 0
    print("node %s drained (%s): %s" % (
        text(result["node"]), text(result["reason"]),
        "no new job starts there" if not running else
        "%s finishing there, no new job starts" % _plural(running, "running job")))
    return 0


def resume_main(argv):
    args = build_resume_parser().parse_args(argv)
    result = call("resume", node=args.node)
    if result.get("was_drained"):
        print("node %s resumed: it takes jobs again" % text(result["node"]))
    else:
        print("node %s was not drained" % text(result["node"]))
    return 0
