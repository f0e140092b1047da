"""The `mgpu` command: picks the role from the first argument and runs its module.

Owns: the top-level help, --version, --debug and the rule that a user sees one line and an exit
code, never a traceback. Must not: import a role's module before it is chosen (each client role
starts in the time of its own imports only).
"""

import os
import sys

from mgpu import __version__

ROLES = {
    # name: (module, one-line summary)
    "master": ("mgpu.cli.master", "run the scheduler daemon (queue, state, this host's GPUs)"),
    "node": ("mgpu.cli.node", "run a node agent: join this host's GPUs to a master (mgpu node --master HOST:PORT)"),
    "srun": ("mgpu.cli.srun", "submit a job; -i to wait for it and stream its output"),
    "sbatch": ("mgpu.cli.sbatch", "submit a batch script; its #SBATCH lines hold the options"),
    "queue": ("mgpu.cli.queue", "show jobs and GPUs"),
    "logs": ("mgpu.cli.logs", "print a job's output; -f to follow it until the job ends"),
    "attach": ("mgpu.cli.attach", "follow a job's output live again (after srun -i was detached)"),
    "history": ("mgpu.cli.history", "show finished jobs from the database (exit codes, times)"),
    "show": ("mgpu.cli.show", "show every field of one job"),
    "cancel": ("mgpu.cli.cancel", "cancel jobs"),
    "drain": ("mgpu.cli.drain", "drain a node: its jobs finish, no new ones start (root, operators)"),
    "resume": ("mgpu.cli.resume", "resume a drained node (root, operators)"),
    "keygen": ("mgpu.cli.keygen", "write a new cluster key (once per cluster; copy it to every host)"),
}

USAGE = """usage: mgpu [--debug] [--version] COMMAND [ARGS...]

A multi-GPU job scheduler: one daemon per GPU box, researchers share its GPUs.

commands:
%s

examples:
  sudo mgpu master                          start the scheduler on this GPU box
  mgpu srun --gpus 2 -- python train.py      queue a job on 2 GPUs (prints its id)
  mgpu srun -i --gpus 1 -- nvidia-smi -L     run it, wait, and stream its output
  mgpu sbatch train.sh                       submit a batch script (#SBATCH --gpus=2 ...)
  mgpu queue                                 jobs and GPUs
  mgpu logs -f 42                            job 42's output, followed until it ends
  mgpu history --since 2h                    jobs that ended in the last two hours
  mgpu show 42                               every field of job 42
  mgpu cancel 42                             cancel job 42
  sudo mgpu keygen                           write /etc/mgpu/cluster.key for a cluster of hosts

'mgpu COMMAND --help' shows the options of each command.
"""


def usage():
    width = max(len(name) for name in ROLES)
    lines = "\n".join("  %-*s  %s" % (width, name, summary) for name, (_, summary) in ROLES.items())
    return USAGE % lines


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("MGPU_DEBUG"))
    while argv and argv[0] in ("--debug", "--version", "-V", "--help", "-h"):
        flag = argv.pop(0)
        if flag == "--debug":
            debug = True
        elif flag in ("--version", "-V"):
            print("mgpu %s" % __version__)
            return 0
        else:
            sys.stdout.write(usage())
            return 0
    if not argv:
        sys.stderr.write(usage())
        return 2
    role = argv.pop(0)
    if role not in ROLES:
        sys.stderr.write("mgpu: unknown command %r (commands: %s; see 'mgpu --help')\n"
                         % (role, ", ".join(ROLES)))
        return 2
    if debug:
        os.environ["MGPU_DEBUG"] = "1"
    module = __import__(ROLES[role][0], fromlist=("main",))  # not importlib: it loads warnings
    return run_role(module.main, argv, debug)


DAEMONS = ("master", "node")  # they end through the interpreter's own shutdown (threads, handlers)


def finish(code, argv=None):
    """Exit with `code`. A client command ends without the interpreter's teardown (a few ms of
    every call; nothing of it is buffered but the standard streams, flushed here); a daemon
    role exits normally."""
    argv = sys.argv[1:] if argv is None else argv
    role = next((arg for arg in argv if not arg.startswith("-")), None)
    if role in DAEMONS:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (`mgpu queue | head`): nothing more to say
            pass
    if isinstance(code, str):  # SystemExit("message"), as the interpreter shows it
        try:
            sys.stderr.write(code + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 1 if code else 0)


def run_role(role_main, argv, debug):
    from mgpu.errors import EXIT_ERROR, MgpuError

    try:
        return role_main(argv) or 0
    except MgpuError as e:
        if debug:
            return _traceback()
        from mgpu.cli.render import text  # a message may quote what someone else chose

        sys.stderr.write("mgpu: %s\n" % text(e.message))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `mgpu queue | head`: the reader went away; nothing left to say.
        try:
            sys.stdout = None
        except Exception:
            pass
        return 0
    except Exception as e:  # a bug: one line unless --debug
        if debug:
            return _traceback()
        sys.stderr.write("mgpu: internal error: %s: %s (run with --debug for details)\n"
                         % (type(e).__name__, e))
        return EXIT_ERROR


def _traceback():
    """--debug: the traceback, printed here and not raised on, so that the binary's bootloader
    adds no line of its own about an unhandled exception."""
    import traceback

    from mgpu.errors import EXIT_ERROR

    traceback.print_exc()
    sys.stderr.flush()
    return EXIT_ERROR
