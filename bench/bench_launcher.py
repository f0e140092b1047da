"""What starting one job costs the host, launcher alone (figures only, no pass/fail).

The per-job path of a master ends in mgpu.launcher: its helper forks a supervisor per job, which
writes the attempt's records (intent, launched, started, exited), forks the job, drops to the
user and execs. This runs that launcher without a master: N `true` jobs, 8 at a time, and prints
the rate and the CPU the whole host spent per job (from /proc/stat: user, system, irq, softirq,
steal of every process, the kernel's work for forks, page faults and exits included). Then the
floors under it, measured the same way from this process (about the size of the helper):

  a Python fork that exits at once              what a supervisor costs before it does anything
  a Python fork that execs `true`               a job forked from Python, no other work
  fork_exec of `true` as another user (C child) the cheapest a fork-per-job launcher can do

The gap between the launcher's figure and the sum of two floors is the supervisor's own work
(records, pipes, cgroup, the job's set-up before exec). Run as root for the cgroup row and the
user switch; otherwise those rows are skipped with one line.

Usage: PYTHONPATH=src python bench/bench_launcher.py [--jobs N]
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

from mgpu import launcher  # noqa: E402

IN_FLIGHT = 8
NOBODY = 65534


def busy_ticks():
    """Jiffies the host spent busy (every CPU), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return sum(fields[:3]) + sum(fields[5:8])


def measure(label, count, start_one, wait_one):
    """Run `count` starts, IN_FLIGHT at a time; print the rate and the host's CPU per start."""
    hz = os.sysconf("SC_CLK_TCK")
    before, began = busy_ticks(), time.perf_counter()
    running = 0
    for i in range(1, count + 1):
        if running == IN_FLIGHT:
            wait_one()
            running -= 1
        start_one(i)
        running += 1
    while running:
        wait_one()
        running -= 1
    took, spent = time.perf_counter() - began, (busy_ticks() - before) / hz
    print("%-52s %7.0f /s   %6.2f ms CPU each" % (label, count / took, spent * 1000 / count))


def launcher_row(count, workdir, with_cgroup):
    records = os.path.join(workdir, "jobs")
    os.makedirs(records, exist_ok=True)
    helper = launcher.Launcher()
    base = launcher.cgroup_base(workdir) if with_cgroup else None
    if with_cgroup and base is None:
        helper.close()
        print("%-52s skipped: no writable cgroup v2 hierarchy here" % "launcher, job in its own cgroup")
        return
    ended = threading.Semaphore(0)

    def read_events():
        for event in helper.events():
            if event.get("event") == "exited":
                if event.get("error"):
                    print("   a job failed to start: %s" % event["error"])
                try:
                    os.unlink(os.path.join(records, "%d.1.json" % event["job_id"]))
                except OSError:
                    pass
                ended.release()

    threading.Thread(target=read_events, daemon=True).start()
    root = os.getuid() == 0

    def start(i):
        helper.launch({
            "job_id": i, "attempt": 1, "uid": NOBODY if root else os.getuid(),
            "gid": NOBODY if root else os.getgid(), "user": "nobody" if root else "me", "drop": root,
            "umask": 0o022, "cwd": "/", "argv": ["true"], "env": {"PATH": "/usr/bin:/bin"}, "env_setup": None,
            "output": "/dev/null", "error": "/dev/null", "truncate": False, "log_dir": None,
            "record": os.path.join(records, "%d.1.json" % i),
            "cgroup": launcher.job_cgroup(base, i, 1) if base else None})

    label = "launcher, job in its own cgroup" if base else "launcher, no cgroup"
    measure(label + (" (as nobody)" if root else ""), count, start, ended.acquire)
    helper.close()
    if base:
        launcher.remove_cgroup_base(base)


def fork_rows(count):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = []

    def wait():
        os.waitpid(children.pop(0), 0)

    def fork_exit(_):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        children.append(pid)

    def fork_true(_):
        pid = os.fork()
        if pid == 0:
            try:
                os.execv("/bin/true", ["true"])
            finally:
                os._exit(127)
        children.append(pid)

    measure("floor: a Python fork that exits", count, fork_exit, wait)
    measure("floor: a Python fork that execs true", count, fork_true, wait)
    if os.getuid() != 0:
        print("%-52s skipped: needs root (a user switch)" % "floor: fork_exec of true as nobody")
        return
    import _posixsubprocess
    import subprocess

    def fork_exec(_):
        # What subprocess.Popen(["/bin/true"], user=..., group=..., extra_groups=[]) runs.
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            pid = _posixsubprocess.fork_exec(
                ["true"], [b"/bin/true"], True, (write_end,), "/", [b"PATH=/usr/bin:/bin"],
                -1, -1, -1, -1, -1, -1, read_end, write_end, True, False, -1, NOBODY, [], NOBODY, 0o022,
                None, getattr(subprocess, "_USE_VFORK", True))
        finally:
            os.close(write_end)
        os.read(read_end, 64)
        os.close(read_end)
        children.append(pid)

    try:
        measure("floor: fork_exec of true as nobody (C child)", count, fork_exec, wait)
    except TypeError as e:  # another Python's fork_exec signature
        print("%-52s skipped: %s" % ("floor: fork_exec of true as nobody", e))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    print("starting %d `true` jobs, %d at a time (%d CPUs)" % (args.jobs, IN_FLIGHT, os.cpu_count() or 0))
    workdir = tempfile.mkdtemp(prefix="mgpu-bench-launcher-")
    try:
        launcher_row(args.jobs, os.path.join(workdir, "plain"), with_cgroup=False)
        if os.getuid() == 0:
            launcher_row(args.jobs, os.path.join(workdir, "cgroup"), with_cgroup=True)
        fork_rows(args.jobs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
