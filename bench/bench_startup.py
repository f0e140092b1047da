"""Start-up time of the mgpu command, from source and as the one-file binary (figures only).

`mgpu queue` and `mgpu srun` are felt on every call, so their start-up is a product feature. This
prints the median wall time (and the fastest run) of N runs each, every run a fresh process timed
from the parent with perf_counter:

  python -S -c pass                     the interpreter alone
  python -c pass                        plus site (and whatever .pth files site-packages holds)
  python -m mgpu --version              mgpu from source (PYTHONPATH=src)
  dist/mgpu --version                   the binary, already unpacked in the user's cache
  dist/mgpu --version, first run        the same into an empty cache: check and unpack, then run
  mgpu queue, source and binary         a whole client call against a running master

The master is `python -m mgpu master --fake-gpus 8` on a socket in a temporary directory.
Also prints the binary's size. Build the binary first with `make build`, else its rows are skipped.

Usage: PYTHONPATH=src python bench/bench_startup.py [--runs N] [--binary PATH]
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")
WARMUP = 2  # runs not counted: the first ones fill the page cache


def source_env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def time_runs(argv, runs, env=None, warmup=WARMUP):
    """Wall times in ms of `runs` runs of argv (after `warmup` uncounted ones); None if a run
    failed, with its output."""
    times = []
    for run in range(warmup + runs):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        elapsed = (time.perf_counter() - start) * 1000
        if done.returncode != 0:
            return None, done.stdout.decode(errors="replace").strip()
        if run >= warmup:
            times.append(elapsed)
    return times, None


def report(label, argv, runs, env=None):
    return summarise(label, *time_runs(argv, runs, env))


def summarise(label, times, error, note=""):
    """Print the median and fastest of `times` (or the failure); the median, or None."""
    if times is None:
        print("%-34s failed: %s" % (label, error.splitlines()[-1] if error else "no output"))
        return None
    print("%-34s median %7.1f ms   fastest %7.1f ms%s"
          % (label, statistics.median(times), min(times), note))
    return statistics.median(times)


def first_runs(binary, runs):
    """The binary's first run for a user: each run in a new empty cache (MGPU_CACHE_DIR)."""
    label = "dist/mgpu --version, first run"
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="mgpu-bench-cache-") as cache:
            env = dict(os.environ, MGPU_CACHE_DIR=os.path.join(cache, "mgpu"))
            one, error = time_runs([binary, "--version"], 1, env, warmup=0)
        if one is None:
            return summarise(label, None, error)
        times += one
    return summarise(label, times, None, "   (%d runs, each into an empty cache)" % runs)


class Master:
    """A master from source on a temporary socket, stopped with SIGTERM."""

    def __init__(self, workdir):
        self.socket = os.path.join(workdir, "mgpu.sock")
        self.log_path = os.path.join(workdir, "master.log")
        self.env = source_env({"MGPU_SOCKET": self.socket})
        argv = [sys.executable, "-m", "mgpu", "master", "--socket", self.socket,
                "--state-dir", os.path.join(workdir, "state"), "--fake-gpus", "8"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=30.0):
        """True once `python -m mgpu queue` succeeds against it; False if it died or the
        deadline passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            probe = subprocess.run([sys.executable, "-m", "mgpu", "queue"], env=self.env, cwd=ROOT,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            if probe.returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def log_tail(self, lines=5):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:]).rstrip()
        except OSError:
            return ""

    def stop(self, timeout=15.0):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print("note: the master did not stop within %.0f s of SIGTERM; killed" % timeout)
                self.process.kill()
                self.process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command (default 20)")
    parser.add_argument("--binary", default=os.path.join(ROOT, "dist", "mgpu"),
                        help="the one-file binary (default dist/mgpu)")
    args = parser.parse_args()
    python = sys.executable
    binary = os.path.abspath(args.binary)
    have_binary = os.access(binary, os.X_OK)

    print("start-up of mgpu: median of %d runs each (python: %s)" % (args.runs, python))
    report("python -S -c pass", [python, "-S", "-c", "pass"], args.runs)
    report("python -c pass", [python, "-c", "pass"], args.runs)
    report("python -m mgpu --version", [python, "-m", "mgpu", "--version"], args.runs, source_env())
    if have_binary:
        report("dist/mgpu --version", [binary, "--version"], args.runs)
        first_runs(binary, max(3, args.runs // 4))
        size = os.path.getsize(binary)
        print("%-34s %.1f MB (%d bytes)" % ("dist/mgpu size", size / 1e6, size))
    else:
        print("%-34s skipped: %s is missing (run 'make build')" % ("dist/mgpu --version", binary))

    with tempfile.TemporaryDirectory(prefix="mgpu-bench-startup-") as workdir:
        master = Master(workdir)
        try:
            if not master.wait_ready():
                print("%-34s skipped: master did not start" % "mgpu queue (master running)")
                tail = master.log_tail()
                if tail:
                    print("  its last lines:\n    " + tail.replace("\n", "\n    "))
                return 0
            report("python -m mgpu queue", [python, "-m", "mgpu", "queue"], args.runs, master.env)
            if have_binary:
                binary_env = dict(os.environ, MGPU_SOCKET=master.socket)
                report("dist/mgpu queue", [binary, "queue"], args.runs, binary_env)
            else:
                print("%-34s skipped: no binary" % "dist/mgpu queue")
        finally:
            master.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
