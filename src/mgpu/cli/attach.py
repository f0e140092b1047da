"""`mgpu attach`: follow a job again after `srun -i` was detached, or a job submitted without
-i: its queue position while it waits, then its output live; exit with its exit code."""

from mgpu import errors
from mgpu.cli.common import Parser
from mgpu.client import Client
from mgpu.model import MAX_JOB_ID, parse_int

EXAMPLES = """examples:
  mgpu attach 42            stream job 42's output from the start, wait for it, exit with its code
  mgpu attach -q 42         the same without the queue and start messages
  mgpu attach --label 42    a job on several hosts: every part's output, each line with its rank

Ctrl+C detaches again and leaves the job running. Only the job's owner, root and the operators
may attach. To print the output without waiting, see 'mgpu logs'.
"""


def build_parser():
    p = Parser(prog="mgpu attach", usage="mgpu attach [-q] [--label] JOB_ID",
               description="Attach to a job as 'srun -i' does: its output so far, then live until it "
                           "ends; the exit code is the job's.",
               epilog=EXAMPLES)
    p.add_argument("job_id", metavar="JOB_ID", help="the job (see 'mgpu queue')")
    p.add_argument("--quiet", "-q", action="store_true", help="do not report queue position and start")
    p.add_argument("--label", action="store_true", help="a job on several hosts: every part's output, each "
                   "line prefixed with its rank (default: rank 0's)")
    return p


def job_id_argument(text):
    from mgpu.errors import MgpuError

    try:
        return parse_int(text, "job id", 1, MAX_JOB_ID)
    except ValueError as e:
        raise MgpuError(errors.INVALID_ARGUMENT, str(e)) from None


def main(argv):
    from mgpu.cli.srun import follow

    args = build_parser().parse_args(argv)
    job_id = job_id_argument(args.job_id)
    client = Client.connect()
    try:
        return follow(client, job_id, args.quiet, args.label)
    finally:
        client.close()
