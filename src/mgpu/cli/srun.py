"""`mgpu srun`: submit a job; with -i, wait for it and stream its output."""

import os
import sys

from mgpu import bundle, errors
from mgpu.cli.common import REMAINDER, SUPPRESS, Parser
from mgpu.client import Client
from mgpu.errors import MgpuError
from mgpu.model import (MAX_GPUS, MAX_MEM_MB, MAX_PRIORITY, parse_array_spec, parse_dependency, parse_duration,
                        parse_gpu_ids, parse_int, parse_signal_spec)
from mgpu.protocol import MAX_JOB_HOSTS, MAX_NODE_NAME, MAX_NODES_NAMED, valid_node_name

STREAM_READ_TIMEOUT = 120.0  # the master sends a frame at least every 30 s

DESCRIPTION = """Submit COMMAND as a job. It runs as you, in --chdir (default: here), with your
current environment plus CUDA_VISIBLE_DEVICES set to the GPUs it was granted (inside the job
they are cuda:0..N-1), CUDA_DEVICE_ORDER=PCI_BUS_ID, MGPU_JOB_ID, MGPU_GPU_IDS, and
MGPU_JOB_END_TIME when it has a time limit. Without -i it prints 'Submitted job N' and returns.
With --array it submits a job array: one task per task id, each a job of its own once it starts
(shown N_T), with MGPU_ARRAY_JOB_ID, MGPU_ARRAY_TASK_ID, MGPU_ARRAY_TASK_COUNT,
MGPU_ARRAY_TASK_MIN and MGPU_ARRAY_TASK_MAX set; %A (array id) and %a (task id) work in
--output and --error (default ~/.mgpu/logs/%A_%a.out)."""

EXAMPLES = """examples:
  mgpu srun -- python train.py                          1 GPU, output in ~/.mgpu/logs/N.out
  mgpu srun --gpus 4 --time-limit 2:00:00 -- torchrun --nproc-per-node 4 train.py
  mgpu srun --gpu-ids 0,2 --name eval -- python eval.py   exactly GPUs 0 and 2
  mgpu srun --nodelist gpu3 --gpu-ids 1 -- python eval.py   GPU 1 of host gpu3
  mgpu srun --gpus 2 --exclude gpu1,gpu2 -- python train.py  on any host but gpu1 and gpu2
  mgpu srun --nodes 2 --gpus-per-node 4 --distributed -- torchrun train.py
                                                         8 GPUs on 2 hosts; torchrun needs no arguments
  mgpu srun --node-gpu-ids 'gpu1:0,1;gpu2:0' -- ./run.sh  exactly these GPUs of these hosts
  mgpu srun --nodes 2 --gpus-per-node 4 --mpi -- sh -c 'mpirun --hostfile $MGPU_HOSTFILE ./app'
  mgpu srun --mem 20000 -- python small.py               share a GPU: 20000 MB of it
  mgpu srun -i --gpus 1 -- nvidia-smi -L                 wait, stream output, exit with its code
  mgpu srun -i -- python read_stdin.py < data.txt        your stdin is the job's stdin
  mgpu srun -i --pty --gpus 1 -- bash                    a shell holding one GPU
  mgpu srun --env-setup-cmd 'source venv/bin/activate' --output run-%j.log -- python train.py
  mgpu srun --time-limit 1-00:00:00 --signal USR1@300 --requeue -- python train.py
  mgpu srun --dependency afterok:41 -- python eval.py    starts once job 41 has COMPLETED
  mgpu srun -d afterany:41:42 -- ./cleanup.sh            once jobs 41 and 42 have ended, in any state
  mgpu srun -d afternotok:41,after:43 -- ./report.sh     once 41 has failed and 43 has started
  mgpu srun --array 1-1000%8 -o sweep-%A_%a.out -- python sweep.py
                                                         1000 tasks, at most 8 running at once
  mgpu srun -a 0-30:3 -- sh -c 'python run.py --seed $MGPU_ARRAY_TASK_ID'   tasks 0, 3, ..., 30
  mgpu srun --array 1,4,9 --gpus 2 -- ./eval.sh          three tasks of 2 GPUs each
  mgpu srun -d afterok:12 -- ./collect.sh                once every task of array 12 has COMPLETED
"""


def build_parser():
    p = Parser(prog="mgpu srun", usage="mgpu srun [options] -- COMMAND [ARGS...]",
               description=DESCRIPTION, epilog=EXAMPLES)
    p.add_argument("--gpus", "-G", metavar="N", help="number of GPUs (default 1; 0 for none)")
    p.add_argument("--gpu-ids", metavar="LIST", help="exact physical GPUs, e.g. 0,2 (as nvidia-smi numbers them)")
    p.add_argument("--nodes", "-N", metavar="N", help="run on N hosts at once (with --gpus-per-node GPUs each); all parts start together")
    p.add_argument("--gpus-per-node", metavar="G", help="GPUs on each host of the job (default 1)")
    p.add_argument("--node-gpu-ids", metavar="SPEC", help="exact GPUs per host, e.g. 'gpu1:0,1;gpu2:0' (host order = rank order)")
    p.add_argument("--distributed", action="store_true", help="also set torchrun's PET_* defaults (nodes, rank, processes per node, rendezvous), so 'torchrun script.py' needs no arguments")
    p.add_argument("--mpi", action="store_true", help="for mpirun: write an Open MPI hostfile of the job's hosts (MGPU_HOSTFILE, slots = GPUs per host) and run COMMAND on the first host only, the others holding their GPUs")
    p.add_argument("--nodelist", "-w", metavar="NODES", help="run on one of these hosts (comma-separated node names, see 'mgpu queue')")
    p.add_argument("--exclude", "-x", metavar="NODES", help="never run on these hosts (comma-separated node names)")
    p.add_argument("--mem", metavar="MB", help="memory per GPU (MB, or with a G suffix); a GPU may then be shared")
    p.add_argument("--time-limit", "-t", metavar="TIME", help="seconds or [D-]HH:MM:SS; SIGTERM then SIGKILL when reached")
    p.add_argument("--signal", nargs="?", const="", metavar="[SIG][@SECONDS]",
                   help="send SIG this long before the time limit so the job can checkpoint (default USR1@60)")
    p.add_argument("--dependency", "-d", metavar="LIST",
                   help="start only once these hold (all of them): after:ID[:ID...] (started), afterany:ID "
                        "(ended), afterok:ID (COMPLETED), afternotok:ID (failed, timed out or cancelled), "
                        "joined with ','; one that can never hold cancels the job")
    p.add_argument("--array", "-a", metavar="SPEC",
                   help="submit a job array: one task per id of SPEC: 1-1000, 0-30:3 (step 3), 1,4,9, or a mix "
                        "such as 1-5,10,20-30:5; %%N runs at most N tasks at once (1-1000%%8). Ids 0 to 3999999, "
                        "at most 1000000 tasks")
    p.add_argument("--requeue", action="store_true", help="on reaching the time limit, go back to the end of the queue")
    p.add_argument("-p", "--partition", dest="partition", metavar="NAME", help=SUPPRESS)
    p.add_argument("--priority", metavar="P", help="higher runs first; 0 to the site's maximum (100 unless configured), default 0")
    p.add_argument("--name", "-J", metavar="NAME", help="job name shown by 'mgpu queue'")
    p.add_argument("--chdir", "-D", metavar="DIR", help="working directory (default: the current one)")
    p.add_argument("--output", "-o", metavar="PATH", help="output file; %%j is the job id, %%u the user, %%x the job name, "
                   "and for a job array %%A the array's id and %%a the task id (default ~/.mgpu/logs/%%j.out, for "
                   "an array ~/.mgpu/logs/%%A_%%a.out)")
    p.add_argument("--error", "-e", metavar="PATH", help="separate file for stderr (default: with the output; with -i ~/.mgpu/logs/%%j.err)")
    p.add_argument("--env-setup-cmd", metavar="CMD", help="shell code run before COMMAND in the job's shell, e.g. 'source venv/bin/activate'")
    p.add_argument("--interactive", "-i", action="store_true", help="wait for the job, stream its stdout and stderr, forward your stdin to its stdin (EOF too), exit with its exit code (Ctrl+C detaches; the job's stdin then ends)")
    p.add_argument("--pty", action="store_true", help="run the job on a terminal of its own (implies -i): your terminal goes raw, keys such as Ctrl+C and Ctrl+Z and window size changes reach the job; stdout and stderr are one stream")
    p.add_argument("--label", action="store_true", help="with -i, for a job on several hosts: stream every part's output, each line prefixed with its rank (default: rank 0's)")
    p.add_argument("--parsable", action="store_true", help="print only the job id")
    p.add_argument("--quiet", "-q", action="store_true", help="with -i, do not report queue position and start")
    p.add_argument("command", nargs=REMAINDER, help=SUPPRESS)
    return p


def parse_mem(text):
    """MB from `20000`, `20000M(B)` or `20G(B)`: 1 MB .. model.MAX_MEM_MB; ValueError otherwise."""
    original = text
    text = text.strip().upper()
    factor = 1
    if text.endswith(("G", "GB")):
        factor, text = 1024, text.rstrip("B")[:-1]
    elif text.endswith(("M", "MB")):
        text = text.rstrip("B")[:-1]
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise ValueError("bad --mem %r: use MB (e.g. 20000) or GB with a G suffix (e.g. 20G)"
                         % original[:40])
    if len(text) > 12 or int(text) * factor > MAX_MEM_MB:
        raise ValueError("--mem %s is too large: at most %d MB (16 TiB)" % (original[:40], MAX_MEM_MB))
    return int(text) * factor


def parse_node_list(text, option):
    """`a,b` -> ["a", "b"]: node names (protocol.valid_node_name), at most MAX_NODES_NAMED;
    ValueError otherwise."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise ValueError("%s needs node names, e.g. %s gpu1,gpu2" % (option, option))
    if len(names) > MAX_NODES_NAMED:
        raise ValueError("%s names %d nodes: at most %d" % (option, len(names), MAX_NODES_NAMED))
    for name in names:
        if not valid_node_name(name):
            raise ValueError("%s: %r is not a node name (letters, digits, '.', '_', '-'; at most %d "
                             "characters)" % (option, name[:MAX_NODE_NAME + 1], MAX_NODE_NAME))
    return names


def parse_node_gpu_ids(text):
    """`gpu1:0,1;gpu2:0` -> [["gpu1", [0, 1]], ["gpu2", [0]]] (rank order); ValueError otherwise."""
    pairs = []
    for item in text.split(";"):
        host, colon, ids = item.strip().partition(":")
        if not colon or not host:
            raise ValueError("--node-gpu-ids %r: write HOST:IDS;HOST:IDS, e.g. 'gpu1:0,1;gpu2:0'" % text[:80])
        parse_node_list(host, "--node-gpu-ids")
        if host in [name for name, _ in pairs]:
            raise ValueError("--node-gpu-ids names %s twice" % host)
        pairs.append([host, list(parse_gpu_ids(ids))])
    if len(pairs) > MAX_JOB_HOSTS:
        raise ValueError("--node-gpu-ids names %d hosts: at most %d" % (len(pairs), MAX_JOB_HOSTS))
    return pairs


def hosts_request(args, gpus, fields):
    """The request fields of --nodes, --gpus-per-node, --node-gpu-ids and --distributed."""
    if args.distributed:
        fields["distributed"] = True
    if args.mpi:
        fields["mpi"] = True
    nodes = None if args.nodes is None else parse_int(args.nodes, "--nodes", 1, MAX_JOB_HOSTS)
    per_node = None if args.gpus_per_node is None else parse_int(args.gpus_per_node, "--gpus-per-node", 0, MAX_GPUS)
    if args.node_gpu_ids is not None:
        for option, value in (("--gpus", gpus), ("--gpu-ids", args.gpu_ids), ("--gpus-per-node", per_node)):
            if value is not None:
                raise ValueError("--node-gpu-ids says which GPUs of each host: leave out %s" % option)
        pairs = parse_node_gpu_ids(args.node_gpu_ids)
        if nodes is not None and nodes != len(pairs):
            raise ValueError("--nodes %d does not match --node-gpu-ids, which names %d hosts" % (nodes, len(pairs)))
        fields["node_gpu_ids"] = pairs
        return
    if nodes is not None and nodes > 1:
        if gpus is not None or args.gpu_ids is not None:
            raise ValueError("with --nodes, give the GPUs of each host with --gpus-per-node (or exact ones with "
                             "--node-gpu-ids), not --gpus or --gpu-ids")
        fields["nnodes"] = nodes
    if per_node is not None:
        if gpus is not None or args.gpu_ids is not None:
            raise ValueError("give either --gpus or --gpus-per-node")
        fields["gpus"] = per_node


def build_request(args, parser):
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given: mgpu srun [options] -- COMMAND [ARGS...]")
    if args.partition is not None:
        parser.error("-p/--partition: mgpu has no partitions (a job may use any GPU of the cluster); "
                     "for a job's priority write --priority in full")
    if args.label and not args.interactive:
        parser.error("--label labels the output srun -i streams: give -i too")
    if args.array is not None and (args.interactive or args.pty):
        raise MgpuError(errors.INVALID_ARGUMENT, "%s cannot follow a job array: submit it without %s and watch its "
                        "tasks with 'mgpu queue'" % ("--pty" if args.pty else "srun -i", "--pty" if args.pty else "-i"))
    if args.pty:
        args.interactive = True  # as Slurm's srun --pty: a terminal is for interacting with
    fields = {"command": command, "requeue": args.requeue, "interactive": args.interactive}
    if args.interactive:
        fields["stdin"] = "pty" if args.pty else "pipe"
    try:
        gpus = None if args.gpus is None else parse_int(args.gpus, "--gpus", 0, MAX_GPUS)
        if args.gpu_ids is not None:
            fields["gpu_ids"] = list(parse_gpu_ids(args.gpu_ids))
            if gpus is not None and gpus != len(fields["gpu_ids"]):
                raise ValueError("--gpus %d does not match --gpu-ids %s" % (gpus, args.gpu_ids))
        if gpus is not None:
            fields["gpus"] = gpus
        if args.priority is not None:
            fields["priority"] = parse_int(args.priority, "--priority", -MAX_PRIORITY, MAX_PRIORITY)
        if args.mem is not None:
            fields["mem_mb"] = parse_mem(args.mem)
        if args.time_limit is not None:
            fields["time_limit"] = parse_duration(args.time_limit)
        if args.signal is not None:
            fields["warn_signal"], lead = parse_signal_spec(args.signal)
            if "@" in args.signal:  # else the master's default lead, cut to half a short limit
                fields["warn_seconds"] = lead
        for name in ("nodelist", "exclude"):
            value = getattr(args, name)
            if value is not None:
                fields[name] = parse_node_list(value, "--" + name)
        hosts_request(args, gpus, fields)
        if args.dependency is not None:
            fields["dependency"] = parse_dependency(args.dependency)
        if args.array is not None:
            if fields.get("nnodes") or len(fields.get("node_gpu_ids") or ()) > 1 or fields.get("mpi"):
                raise ValueError("--array with --nodes is not supported: each task of a job array runs on one host")
            fields["array"], throttle = parse_array_spec(args.array)
            if throttle is not None:
                fields["array_throttle"] = throttle
    except ValueError as e:
        raise MgpuError(errors.INVALID_ARGUMENT, str(e)) from None
    from mgpu.cli import checks

    cwd = fields["cwd"] = checks.working_directory(args.chdir)
    for name in ("output", "error"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = os.path.join(cwd, os.path.expanduser(value))
            checks.output_path("--" + name, fields[name])
    for name, value in (("name", args.name), ("env_setup", args.env_setup_cmd)):
        if value is not None:
            fields[name] = value
    umask = os.umask(0o022)
    os.umask(umask)
    fields["umask"] = umask
    # Variables of a job array this client may run in are not the new job's.
    fields["env"] = {k: v for k, v in bundle.clean_environ().items() if not k.startswith("MGPU_ARRAY_")}
    if args.env_setup_cmd is None:  # else the setup may put the command on the PATH
        checks.command(command, cwd, fields["env"])
    return fields


def main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = build_request(args, parser)
    client = Client.connect()
    try:
        result = client.call("submit", **fields)
        job_id = result["job_id"]
        if not args.interactive and result.get("array_job_id") is not None:
            print(job_id if args.parsable else "Submitted job array %d: %s %s (%s)" % (
                job_id, result["array_tasks"], "task" if result["array_tasks"] == 1 else "tasks",
                where_output_goes(result)))
            return 0
        if not args.interactive:
            print(job_id if args.parsable else "Submitted job %d (%s)" % (job_id, where_output_goes(result)))
            return 0
        if args.parsable:
            print(job_id, file=sys.stderr)
        return follow(client, job_id, args.quiet, args.label, input_mode=fields["stdin"])
    finally:
        client.close()


def where_output_goes(result):
    """`output: PATH` (and `errors: PATH` when stderr has its own file) of a submit's result."""
    from mgpu.cli.render import text  # the paths hold names the user chose

    where = "output: %s" % text(result.get("output") or "?")
    if result.get("error") and result.get("error") != result.get("output"):
        where += ", errors: %s" % text(result["error"])
    return where


def follow(client, job_id, quiet, label=False, input_mode=None):
    """Stream a job until it ends; the job's exit code, or 130 when the user detaches. With
    `input_mode` ("pipe", or "pty" for --pty) stdin is forwarded to the job (cli/terminal.py)."""
    from mgpu.cli.render import text  # reasons and names come from other users and jobs
    say = (lambda line: None) if quiet else (lambda line: _stderr("mgpu: " + text(line) + "\n"))
    out, err = sys.stdout.buffer, sys.stderr.buffer
    running, output = False, None
    session = None
    try:
        extra = {"label": True} if label else {}
        if input_mode:
            extra["input"] = True
        client.send("attach", job_id=job_id, **extra)
        reply = client.read(STREAM_READ_TIMEOUT)
        if reply.get("ok") is False:
            raise MgpuError(reply.get("error", errors.INTERNAL), reply.get("message", "attach failed"))
        session = _forward_input(client, reply.get("result"), input_mode)
        announced = None
        while True:
            frame = client.read(STREAM_READ_TIMEOUT)
            if frame.get("ok") is False:  # cut short: the relaying node lost its master, say
                raise MgpuError(frame.get("error", errors.INTERNAL), frame.get("message", "the stream ended"))
            kind = frame.get("type")
            if kind == "output":
                stream = err if frame.get("stream") == "stderr" else out
                stream.write(frame["data"].encode("latin-1"))
                stream.flush()
            elif kind == "status":
                job = frame["job"]
                output = job.get("output") or output
                running = job["state"] != "PENDING"
                if not running:
                    if job.get("position"):
                        line = "job %d queued (position %s): %s" % (job_id, job["position"], job.get("reason") or "waiting")
                    else:
                        reason = job.get("reason") or "waiting"
                        line = ("job %d pending: %s" if reason.startswith("Dependency") else "job %d %s") % (
                            job_id, reason)
                elif len(job.get("nodes") or ()) > 1:
                    line = "job %d running on %s" % (job_id, " ".join(
                        "%s:%s" % (part["name"], ",".join(map(str, part["gpu_ids"])) or "-") for part in job["nodes"]))
                else:
                    gpus = ",".join(map(str, job["gpu_ids"])) or "none"
                    line = "job %d running on %s, GPUs %s" % (job_id, job.get("node"), gpus)
                if line != announced:
                    announced = line
                    say(line)
            elif kind == "end":
                job = frame["job"]
                out.flush()
                code = job.get("exit_code")
                state, reason = job["state"], job.get("reason") or ""
                if state != "COMPLETED" and not (state == "FAILED" and reason.startswith("exit code")):
                    _stderr("mgpu: job %d %s%s\n" % (job_id, text(state), (": " + text(reason)) if reason else ""))
                return code if isinstance(code, int) and 0 <= code <= 255 else 1
    except terminal_signal() as e:
        return 128 + e.signum
    except KeyboardInterrupt:
        if session is not None:
            session.close()
        _stderr("\nmgpu: detached from job %d; it %s%s. See its output with 'mgpu logs -f %d' or 'mgpu attach "
                "%d'; cancel it with 'mgpu cancel %d'\n"
                % (job_id, "keeps running" if running else "stays in the queue",
                   (", its output goes to " + text(output)) if output else "", job_id, job_id, job_id))
        return 130
    finally:
        if session is not None:
            session.close()


def _forward_input(client, result, input_mode):
    """The InputSession forwarding stdin when the attach granted input, else None (with one
    line saying why not, when it was asked for)."""
    if not input_mode:
        return None
    if not (isinstance(result, dict) and result.get("input")):
        if _stdin_is_null():
            return None  # nothing to forward: the job's stdin is empty either way
        from mgpu.cli.render import text

        why = result.get("input_refused") if isinstance(result, dict) else None
        _stderr("mgpu: your input is not forwarded to the job: %s\n" % text(
            why or "this daemon does not forward input (an older mgpu version?)"))
        return None
    from mgpu.cli import terminal

    session = terminal.InputSession(client.input_sender(), input_mode == "pty")
    global _session
    _session = session
    session.start()
    return session


def _stdin_is_null():
    try:
        mine, null = os.fstat(sys.stdin.fileno()), os.stat("/dev/null")
    except (OSError, ValueError):
        return True  # no stdin at all
    return (mine.st_rdev, mine.st_mode) == (null.st_rdev, null.st_mode)


_session = None  # the InputSession holding the terminal raw, while there is one


def terminal_signal():
    """What a SIGTERM or SIGHUP raises while stdin is forwarded (nothing else raises it)."""
    if _session is None:
        return ()
    from mgpu.cli.terminal import TerminalSignal

    return TerminalSignal


def _stderr(text):
    if _session is not None and _session.raw:
        text = text.replace("\n", "\r\n")
    sys.stderr.write(text)
    sys.stderr.flush()
