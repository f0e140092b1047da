"""`mgpu queue`: show jobs and GPUs."""

from mgpu import cells, errors
from mgpu.errors import MgpuError
from mgpu.cli.common import Parser, job_filters
from mgpu.client import call


EXAMPLES = """examples:
  mgpu queue                    pending and running jobs, then the GPUs
  mgpu queue --all              also finished jobs, with exit codes
  mgpu queue --user alice --state PENDING
  mgpu queue --me               only your jobs
  mgpu queue -j 42,43           these jobs, also when they have finished
  mgpu queue -j 12              job array 12: 12_[5-1000%8] (tasks not started), 12_4 (one task)
  mgpu queue --json | jq '.jobs[] | select(.state == "RUNNING") | .id'
"""


def build_parser():
    p = Parser(prog="mgpu queue", description="Show the queue (running, then pending in the order they "
               "will start, with why they wait) and each GPU's reserved memory and jobs.",
               epilog=EXAMPLES)
    p.add_argument("--all", "-a", action="store_true", help="include finished jobs and their exit codes")
    p.add_argument("--user", "-u", metavar="USER", help="only this user's jobs")
    p.add_argument("--state", "-t", metavar="STATE[,STATE]", help="only jobs in these states (e.g. PENDING,RUNNING)")
    p.add_argument("--me", action="store_true", help="only your own jobs")
    p.add_argument("--jobs", "-j", metavar="ID[,ID]", help="only these jobs (finished ones too, while the "
                   "master keeps them in memory; 'mgpu history' has all)")
    p.add_argument("--json", action="store_true", help='print {"jobs": [...], "nodes": [...]} as JSON')
    return p


def main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = dict(job_filters(args, parser), all=args.all)
    # The table needs only its cells: the master sends those (`brief`), --json every field.
    result = call("queue", brief=not args.json, **fields)
    from mgpu.cli import render

    if args.json:
        print(render.as_json(result))
        return 0
    lines = result["cells"]
    now = render.now_of(result)
    try:
        shown = render.cells_table(lines, now, show_exit=True if args.all else None)
    except (AttributeError, IndexError, TypeError, ValueError):
        raise MgpuError(errors.BAD_REQUEST, "the master's queue reply is malformed (not rows of %d cells)"
                        % len(cells.COLUMNS)) from None
    print(shown)
    nodes = result["nodes"]
    if len(nodes) > 1 or any(node.get("address") for node in nodes):
        print()
        print(render.nodes_table(nodes, now))
    print()
    print(render.gpus_table(nodes))
    return 0
