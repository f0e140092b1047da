"""`mgpu show ID`: every field of one job, pending, running or finished."""

from mgpu import errors
from mgpu.cli.common import Parser
from mgpu.client import call
from mgpu.errors import MgpuError
from mgpu.model import MAX_ARRAY_TASK_ID, MAX_JOB_ID

EXAMPLES = """examples:
  mgpu show 42                  job 42, Key=Value as 'scontrol show job' prints it
  mgpu show 42 --json           the same as JSON (times in epoch seconds)
  mgpu show 42 --json | jq -r .output
  mgpu show 12                  job array 12: its tasks not started yet
  mgpu show 12_7                task 7 of job array 12

Any job still in the master's database: pending, running or finished long ago. Everyone sees
every job as 'mgpu queue' shows it, plus its working directory; its --env-setup-cmd only its
owner, root and operators (the environment is never shown)."""


def build_parser():
    p = Parser(prog="mgpu show", usage="mgpu show ID [--json]", description="Show every field of one job.",
               epilog=EXAMPLES)
    p.add_argument("id", metavar="ID", help="the job id (ARRAY_TASK for a task of a job array, e.g. 12_7)")
    p.add_argument("--json", action="store_true", help="print the job as a JSON object")
    return p


def main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    arg, _, task = args.id.strip().partition("_")
    fields = {}
    if _:
        if not (task.isascii() and task.isdigit()) or len(task) > 7 or int(task) > MAX_ARRAY_TASK_ID:
            parser.error("bad task id %r: write ARRAY_TASK, e.g. 12_7 (task ids go from 0 to %d)"
                         % (args.id[:40], MAX_ARRAY_TASK_ID))
        fields["array_task_id"] = int(task)
    if not (arg.isascii() and arg.isdigit()):
        parser.error("bad job id %r: job ids are numbers" % args.id[:40])
    if len(arg) > 19 or not 1 <= int(arg) <= MAX_JOB_ID:
        raise MgpuError(errors.NOT_FOUND, "no such job %s: job ids go from 1 to %d" % (arg[:40], MAX_JOB_ID))
    result = call("show", job_id=int(arg), **fields)
    from mgpu.cli import render

    if args.json:
        print(render.json_of(result["job"]))
    else:
        print(render.job_detail(result["job"], render.now_of(result)))
    return 0
