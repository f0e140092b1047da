"""`mgpu cancel`: cancel jobs."""

import sys

from mgpu import errors
from mgpu.cli.common import Parser
from mgpu.cli.render import text
from mgpu.client import call
from mgpu.errors import EXIT_ERROR, MgpuError
from mgpu.model import MAX_ARRAY_SPEC, MAX_JOB_ID, parse_array_spec

MAX_IDS = 10_000  # job ids in one request (protocol.MAX_CANCEL_IDS)

EXAMPLES = """examples:
  mgpu cancel 42                 cancel job 42
  mgpu cancel 42 43 44
  mgpu cancel --user $USER       cancel all your pending and running jobs
  mgpu cancel 12                 cancel job array 12: every task, pending or running
  mgpu cancel 12_7               only task 7 of job array 12
  mgpu cancel 12_[1-5,9]         tasks 1 to 5 and 9 of job array 12

A pending job leaves the queue. A running one gets SIGTERM on its whole process tree, then
SIGKILL after the master's grace period; its GPUs are free once its processes are gone.
You may cancel only your own jobs (root and operators: any)."""


def build_parser():
    p = Parser(prog="mgpu cancel", usage="mgpu cancel ID... | --user USER",
               description="Cancel jobs.", epilog=EXAMPLES)
    p.add_argument("ids", nargs="*", metavar="ID", help="job ids; ARRAY_TASK or ARRAY_[TASKS] for tasks of a job array")
    p.add_argument("--user", "-u", metavar="USER", help="cancel all active jobs of USER")
    return p


def main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    ids, tasks = [], []
    if len(args.ids) > MAX_IDS:
        raise MgpuError(errors.INVALID_ARGUMENT, "too many job ids: at most %d at once" % MAX_IDS)
    for arg in args.ids:
        if "_" in arg:
            tasks.append(parse_task_spec(arg, parser))
            continue
        if not (arg.isascii() and arg.isdigit()):
            parser.error("bad job id %r: job ids are numbers" % arg[:40])
        if len(arg) > 19 or not 1 <= int(arg) <= MAX_JOB_ID:
            raise MgpuError(errors.INVALID_ARGUMENT, "no such job %s: job ids go from 1 to %d"
                            % (arg[:40], MAX_JOB_ID))
        ids.append(int(arg))
    if not ids and not tasks and not args.user:
        parser.error("give job ids or --user USER")
    fields = {"ids": ids}
    if tasks:
        fields["tasks"] = tasks
    if args.user:
        fields["user"] = args.user
    results = call("cancel", **fields)["results"]
    failed = False
    for result in results:
        label = text(result.get("task") or result["id"])
        if result["result"] in ("cancelled", "stopping"):
            print("job %s: %s" % (label, text(result["message"])))
        else:
            failed = True
            sys.stderr.write("mgpu: cannot cancel job %s: %s\n" % (label, text(result["message"])))
    if args.user and not results:
        print("no active jobs of %s" % text(args.user))
    return EXIT_ERROR if failed else 0


def parse_task_spec(arg, parser):
    """`12_7` or `12_[1-5,9]` -> [12, runs]: tasks of job array 12."""
    array, _, spec = arg.partition("_")
    if not (array.isascii() and array.isdigit()) or len(array) > 19 or not 1 <= int(array) <= MAX_JOB_ID:
        parser.error("bad job id %r: write ARRAY_TASK (12_7) or ARRAY_[TASKS] (12_[1-5,9])" % arg[:40])
    if spec.startswith("[") and spec.endswith("]"):
        spec = spec[1:-1]
    if "%" in spec or len(spec) > MAX_ARRAY_SPEC:
        parser.error("bad task ids in %r: write ARRAY_TASK (12_7) or ARRAY_[TASKS] (12_[1-5,9])" % arg[:40])
    try:
        runs, _ = parse_array_spec(spec)
    except ValueError as e:
        parser.error("bad task ids in %r: %s" % (arg[:40], str(e).partition(": ")[2]))
    return [int(array), runs]
