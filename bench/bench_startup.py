"""Start-up time of the mgpu command, from source and as the one-file binary (figures only).

`mgpu queue` and `mgpu srun` are felt on every call, so their start-up is a product feature (the
goal: `mgpu srun` within 2x `python -S -c pass`, `srun -i -- true` within 3x, `mgpu queue` of 1,000
pending jobs within 2.5x, of 10,000 under 100 ms). This prints the median wall time (and the
fastest run) of N runs each, every run a fresh process timed from the parent with perf_counter,
and each median's ratio to that of `python -S -c pass`:

  python -S -c pass                     the interpreter alone: the floor of a Python command
  python -c pass                        plus site (and whatever .pth files site-packages holds)
  client import time                    cumulative `mgpu.cli.srun` of `python -I -S -X importtime`
  python -m mgpu --version              mgpu from source (--src, default src/)
  dist/mgpu --version                   the binary, already unpacked in the user's cache
  dist/mgpu --version, first run        the same into an empty cache: check and unpack, then run
  mgpu srun -- true                     a background submit ('Submitted job N')
  mgpu srun -i -- true                  submit, wait for the job, stream its output, its exit code
  mgpu queue                            an empty queue, then 1,000 and 10,000 pending jobs

The master is `python -m mgpu master --fake-gpus 8` from this checkout's src/ on a socket in a
temporary directory; the pending jobs wait behind one job holding all 8 GPUs. The mgpu rows use
dist/mgpu, or `python -m mgpu` from --src without a binary. Also prints the binary's size. Build
it first with `make build`.

Usage: PYTHONPATH=src python bench/bench_startup.py [--runs N] [--binary PATH] [--src DIR]
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


BASELINE = []  # the median of `python -S -c pass`, once measured: every row's ratio is to it


def report(label, argv, runs, env=None):
    return summarise(label, *time_runs(argv, runs, env))


def ratio(median):
    return "   %5.2fx python -S" % (median / BASELINE[0]) if BASELINE and BASELINE[0] else ""


def summarise(label, times, error, note=""):
    """Print the median and fastest of `times` (or the failure); the median, or None."""
    if times is None:
        print("%-38s failed: %s" % (label, error.splitlines()[-1] if error else "no output"))
        return None
    median = statistics.median(times)
    print("%-38s median %7.1f ms   fastest %7.1f ms%s%s" % (label, median, min(times), ratio(median), note))
    return median


def import_time(python, src, runs, module="mgpu.cli.srun"):
    """Median of the cumulative import time (ms) of `module` in `python -I -S -X importtime`."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import %s" % module
    times = []
    for run in range(WARMUP + runs):
        done = subprocess.run([python, "-I", "-S", "-X", "importtime", "-c", code, src], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        if done.returncode != 0:
            return None, done.stderr.decode(errors="replace").strip()
        for line in done.stderr.decode(errors="replace").splitlines():
            fields = line.split("|")
            if len(fields) == 3 and fields[2].strip() == module:
                if run >= WARMUP:
                    times.append(int(fields[1]) / 1000)
                break
        else:
            return None, "no import time line for %s" % module
    return times, None


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
        if os.geteuid() == 0:
            argv.append("--allow-root-jobs")  # the bench's own jobs (`true`, `sleep`)
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

    def submit(self, argv, count=1):
        """Submit `count` jobs of srun's `argv` over one connection (no start-up per job); their ids."""
        sys.path.insert(0, SRC)
        from mgpu.cli import srun
        from mgpu.client import Client

        os.environ["MGPU_SOCKET"] = self.socket
        parser = srun.build_parser()
        fields = srun.build_request(parser.parse_args(argv), parser)
        client = Client.connect()
        try:
            return [client.call("submit", **fields)["job_id"] for _ in range(count)]
        finally:
            client.close()

    def cancel(self, ids):
        from mgpu.client import call

        call("cancel", ids=list(ids))

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
    parser.add_argument("--src", default=SRC, help="the client's sources, for the from-source rows (default src/)")
    args = parser.parse_args()
    python = sys.executable
    src = os.path.abspath(args.src)
    client_env = source_env()
    client_env["PYTHONPATH"] = src
    binary = os.path.abspath(args.binary)
    have_binary = os.access(binary, os.X_OK)

    print("start-up of mgpu: median of %d runs each (python: %s)" % (args.runs, python))
    BASELINE.append(report("python -S -c pass", [python, "-S", "-c", "pass"], args.runs))
    report("python -c pass", [python, "-c", "pass"], args.runs)
    summarise("client import time (mgpu.cli.srun)", *import_time(python, src, args.runs))
    report("python -m mgpu --version", [python, "-m", "mgpu", "--version"], args.runs, client_env)
    if have_binary:
        report("dist/mgpu --version", [binary, "--version"], args.runs)
        first_runs(binary, max(3, args.runs // 4))
        size = os.path.getsize(binary)
        print("%-38s %.1f MB (%d bytes)" % ("dist/mgpu size", size / 1e6, size))
    else:
        print("%-38s skipped: %s is missing (run 'make build')" % ("dist/mgpu --version", binary))

    with tempfile.TemporaryDirectory(prefix="mgpu-bench-startup-") as workdir:
        master = Master(workdir)
        blocker = []
        try:
            if not master.wait_ready():
                print("%-38s skipped: master did not start" % "mgpu queue (master running)")
                tail = master.log_tail()
                if tail:
                    print("  its last lines:\n    " + tail.replace("\n", "\n    "))
                return 0
            env = dict(client_env, MGPU_SOCKET=master.socket)
            mgpu, name = ([binary], "dist/mgpu") if have_binary else ([python, "-m", "mgpu"], "python -m mgpu")
            report("python -m mgpu queue", [python, "-m", "mgpu", "queue"], args.runs, env)
            report("%s queue" % name, mgpu + ["queue"], args.runs, env)
            report("%s srun -- true" % name, mgpu + ["srun", "--", "true"], args.runs, env)
            report("%s srun -i -- true" % name, mgpu + ["srun", "-i", "--", "true"], args.runs, env)
            blocker = master.submit(["--gpus", "8", "--", "sleep", "3600"])
            pending = 0
            for count in (1000, 10000):
                master.submit(["--gpus", "1", "--", "true"], count - pending)
                pending = count
                report("%s queue, %d pending" % (name, count), mgpu + ["queue"], args.runs, env)
        finally:
            if blocker:
                try:
                    master.cancel(blocker)
                except Exception as e:  # the master's state dir goes with the temporary directory
                    print("note: could not cancel the job holding the GPUs: %s" % e)
            master.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
