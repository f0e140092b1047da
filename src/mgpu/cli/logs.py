"""`mgpu logs`: print a job's output file, or follow it until the job ends (-f).

The daemon reads the file on the job's host as the job's user (never as root), for the job's
owner, root and the operators only, so the same rules hold for a job on any host."""

import sys

from mgpu import errors
from mgpu.cli.attach import job_id_argument
from mgpu.cli.common import Parser
from mgpu.client import Client
from mgpu.errors import MgpuError

READ_TIMEOUT = 120.0  # the master sends a frame at least every 30 s

EXAMPLES = """examples:
  mgpu logs 42              what job 42 has written so far (stdout, and stderr unless it has its own file)
  mgpu logs -f 42           the same, then follow it until the job ends (Ctrl+C stops following)
  mgpu logs --err 42        its stderr, when it was given its own file (--error, or srun -i's default)
  mgpu logs 42 | tail -n 20

Works for running and finished jobs (those 'mgpu queue --all' lists) on any host.
"""


def build_parser():
    p = Parser(prog="mgpu logs", usage="mgpu logs [-f] [--err] JOB_ID",
               description="Print a job's output, as its user reads it on the job's host.",
               epilog=EXAMPLES)
    p.add_argument("job_id", metavar="JOB_ID", help="the job (see 'mgpu queue --all')")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new output until the job ends")
    p.add_argument("--err", action="store_true", help="the job's stderr file instead of its output")
    return p


def main(argv):
    from mgpu.cli.render import text

    args = build_parser().parse_args(argv)
    job_id = job_id_argument(args.job_id)
    stream = "stderr" if args.err else "stdout"
    client = Client.connect()
    out = sys.stdout.buffer
    try:
        client.send("attach", job_id=job_id, follow=args.follow, stream=stream)
        reply = client.read(READ_TIMEOUT)
        if reply.get("ok") is False:
            raise MgpuError(reply.get("error", errors.INTERNAL), reply.get("message", "cannot read the job's output"))
        row = reply.get("result") or {}
        if args.err and (not row.get("error") or row.get("error") == row.get("output")):
            raise MgpuError(errors.INVALID_ARGUMENT, "job %d writes its stderr into its output file %s: see "
                            "'mgpu logs %d'" % (job_id, text(row.get("output") or "?"), job_id))
        notices, waiting_said = [], False
        while True:
            frame = client.read(READ_TIMEOUT)
            if frame.get("ok") is False:
                raise MgpuError(frame.get("error", errors.INTERNAL), frame.get("message", "the stream ended"))
            kind = frame.get("type")
            if kind == "output":
                out.write(frame["data"].encode("latin-1"))
                out.flush()
            elif kind == "notice":
                notices.append(frame.get("text") or "")
            elif kind == "status" and args.follow and not waiting_said and frame["job"]["state"] == "PENDING":
                waiting_said = True
                _say("job %d waits in the queue (%s); its output follows when it starts"
                     % (job_id, text(frame["job"].get("reason") or "pending")))
            elif kind == "end":
                job = frame["job"]
                if job.get("start_time") is None:
                    if job["state"] == "PENDING":
                        _say("job %d has not started yet: no output so far ('mgpu logs -f %d' waits for it)"
                             % (job_id, job_id))
                        return 0
                    _say("job %d never started (%s): it has no output" % (job_id, text(job["state"])))
                    return 1
                for notice in notices:
                    _say(text(notice))
                return 1 if notices else 0
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def _say(line):
    sys.stdout.flush()
    sys.stderr.write("mgpu: %s\n" % line)
    sys.stderr.flush()
