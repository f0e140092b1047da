"""mgpu (the one-file binary) against task-spooler on this machine, in the same run (figures only).

Prints one table:
  - one submit: a whole `mgpu srun --gpus 1 -- true` process (no -i), median of 20
  - 1,000 `mgpu srun` processes in a sequential shell loop, first submit to last job's end
  - 1,000 jobs from 4 clients on kept connections, first submit to last end (jobs/s)
  - 1,000 jobs as one array (`srun --array`), when the binary has it, else 'n/a: no --array'
  - task-spooler: 1,000 sequential `tsp -n true` on 8 slots (`tsp -S 8`), first submit to last end
  - the ratio mgpu/tsp
  - `mgpu queue` with 1,000 and 10,000 pending jobs (median ms), `srun -i -- true` round trip,
    the master's RSS with 10,000 pending, and the client's import time (`python -X importtime`,
    cumulative time of mgpu.cli.srun)

mgpu runs with 8 fake GPUs and `--gpus 1` jobs (8 at once, as tsp's 8 slots). task-spooler is
installed with `apt-get install -y task-spooler` when `tsp` is missing and this runs as root;
otherwise its column is skipped with one line. Everything runs in a temporary directory (its own
master socket and state, its own TS_SOCKET), and every process started here is stopped at the end.

Usage: PYTHONPATH=src python bench/bench_vs_tsp.py [--jobs N] [--pending N] [--binary PATH]
(builds dist/mgpu with `make build` when it is missing).
"""

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")
sys.path.insert(0, SRC)

from mgpu import client as mgpu_client  # noqa: E402

CLIENTS = 4
POLL = 0.01          # how often the end of a run is looked for (one cheap request each)
RUN_DEADLINE = 600   # no run of this bench waits longer than this


def median_ms(argv, env, runs=20, warmup=2):
    times = []
    for run in range(warmup + runs):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=60)
        if done.returncode != 0:
            raise RuntimeError("%s failed: %s" % (" ".join(argv), done.stderr.decode(errors="replace").strip()))
        if run >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


class Master:
    """`mgpu master` of the binary on a socket and state directory of its own."""

    def __init__(self, binary, workdir, gpus="8:81920"):
        os.makedirs(workdir, exist_ok=True)
        self.socket = os.path.join(workdir, "mgpu.sock")
        self.env = dict(os.environ, MGPU_SOCKET=self.socket)
        argv = [binary, "master", "--socket", self.socket, "--state-dir", os.path.join(workdir, "state"),
                "--fake-gpus", gpus, "--kill-grace", "1"]
        if os.getuid() == 0:
            argv.append("--allow-root-jobs")
        self.log = open(os.path.join(workdir, "master.log"), "wb")
        self.process = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        os.environ["MGPU_SOCKET"] = self.socket
        deadline = time.monotonic() + 60
        while True:
            try:
                mgpu_client.call("ping")
                return
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the master did not start; see %s" % self.log.name)
                time.sleep(0.05)

    def rss_mb(self):
        with open("/proc/%d/status" % self.process.pid) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def cancel_all(self, timeout=60):
        """Cancel what is left of this master's jobs and wait until none is active."""
        mgpu_client.call("cancel", ids=[], user=_me())
        deadline = time.monotonic() + timeout
        while mgpu_client.call("queue", state="PENDING,RUNNING")["jobs"]:
            if time.monotonic() > deadline:
                raise RuntimeError("jobs still active %d s after their cancel" % timeout)
            time.sleep(0.1)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _me():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def submit_fields(command, output_dir, gpus=1):
    return {"command": command, "cwd": "/tmp", "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            "gpus": gpus, "output": os.path.join(output_dir, "%j.out"), "umask": 0o022}


def _submit_worker(args):
    socket_path, count, command, output_dir, gpus = args
    os.environ["MGPU_SOCKET"] = socket_path
    connection = mgpu_client.Client.connect()
    fields = submit_fields(command, output_dir, gpus)
    last = None
    for _ in range(count):
        last = connection.call("submit", **fields)["job_id"]
    connection.close()
    return last


def submit_concurrently(pool, socket_path, total, command, output_dir, gpus=1):
    """Submit `total` jobs from CLIENTS processes on kept connections: (start time, last id)."""
    per_client = [total // CLIENTS + (1 if i < total % CLIENTS else 0) for i in range(CLIENTS)]
    start = time.perf_counter()
    last = pool.map(_submit_worker, [(socket_path, n, command, output_dir, gpus) for n in per_client if n])
    return start, max(last)


def wait_idle(last_id=None):
    """Wait until no job is pending or running; perf_counter then. While the newest job is
    active only it is asked about (`show`: one job, a small reply, little work for the master),
    then the whole active list, which is short by then. Without `last_id` (an array) the
    active list is polled, less often."""
    deadline = time.monotonic() + RUN_DEADLINE
    connection = mgpu_client.Client.connect()
    try:
        if last_id is not None:
            while connection.call("show", job_id=last_id)["job"]["state"] in ("PENDING", "RUNNING"):
                if time.monotonic() > deadline:
                    raise RuntimeError("jobs did not finish within %d s" % RUN_DEADLINE)
                time.sleep(POLL)
        while connection.call("queue", state="PENDING,RUNNING")["jobs"]:
            if time.monotonic() > deadline:
                raise RuntimeError("jobs did not finish within %d s" % RUN_DEADLINE)
            time.sleep(POLL if last_id is not None else 5 * POLL)
    finally:
        connection.close()
    return time.perf_counter()


def newest_active_id():
    jobs = mgpu_client.call("queue", state="PENDING,RUNNING")["jobs"]
    return max((job["id"] for job in jobs), default=None)


# -- task-spooler ---------------------------------------------------------------------------------

def find_tsp():
    """The tsp command, installed with apt-get when missing and we are root; (path, None) or
    (None, why not)."""
    path = shutil.which("tsp")
    if path:
        return path, None
    if os.getuid() != 0 or not shutil.which("apt-get"):
        return None, "tsp is not installed (apt-get install task-spooler, as root)"
    done = subprocess.run(["apt-get", "install", "-y", "task-spooler"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300,
                          env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    path = shutil.which("tsp")
    if path:
        return path, None
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return None, "apt-get install task-spooler failed: %s" % (lines[-1] if lines else "exit %d" % done.returncode)


def tsp_run(tsp, workdir, jobs):
    """1,000 sequential `tsp -n true` on 8 slots: (seconds per submit, jobs/s end to end)."""
    tsdir = os.path.join(workdir, "tsp")
    os.makedirs(tsdir)
    env = dict(os.environ, TS_SOCKET=os.path.join(tsdir, "ts.sock"), TMPDIR=tsdir, TS_MAXFINISHED=str(jobs + 10))
    env.pop("TS_SAVELIST", None)
    env.pop("TS_ONFINISH", None)
    try:
        subprocess.run([tsp, "-S", "8"], env=env, check=True, stdout=subprocess.DEVNULL, timeout=30)
        loop = "for i in $(seq %d); do %s -n true >/dev/null || exit 1; done" % (jobs, tsp)
        start = time.perf_counter()
        subprocess.run(["bash", "-c", loop], env=env, check=True, timeout=RUN_DEADLINE)
        submitted = time.perf_counter()
        subprocess.run([tsp, "-w"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=RUN_DEADLINE)  # the last job's end; then the others', from the list
        deadline = time.monotonic() + RUN_DEADLINE
        while True:
            listing = subprocess.run([tsp, "-l"], env=env, capture_output=True, text=True, timeout=30).stdout
            states = re.findall(r"^\d+\s+(\w+)", listing, re.M)
            if len(states) >= jobs and all(state == "finished" for state in states):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("tsp jobs did not finish within %d s" % RUN_DEADLINE)
            time.sleep(POLL)
        done = time.perf_counter()
        return (submitted - start) / jobs, jobs / (done - start)
    finally:
        subprocess.run([tsp, "-K"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


# -- the client's import time ---------------------------------------------------------------------

def srun_import_ms(runs=7):
    """Cumulative import time of mgpu.cli.srun (`python -X importtime`), median of `runs`."""
    env = dict(os.environ, PYTHONPATH=SRC)
    values = []
    for _ in range(runs + 1):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mgpu.cli.srun"], env=env,
                              capture_output=True, text=True, timeout=60)
        for line in done.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[2].strip() == "mgpu.cli.srun":
                values.append(int(parts[1]) / 1000.0)
    return statistics.median(values[1:]) if len(values) > 1 else None


# -- the table ------------------------------------------------------------------------------------

def row(label, value):
    print("  %-58s %s" % (label, value), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--pending", type=int, default=10000)
    parser.add_argument("--binary", default=os.environ.get("MGPU_BIN") or os.path.join(ROOT, "dist", "mgpu"))
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        print("building %s (make build) ..." % binary, flush=True)
        if subprocess.run(["make", "-C", ROOT, "build"], stdout=subprocess.DEVNULL).returncode != 0 \
                or not os.access(binary, os.X_OK):
            print("skipped: %s is missing and 'make build' failed" % binary)
            return 1
    workdir = tempfile.mkdtemp(prefix="mgpu-bench-tsp-")
    output_dir = os.path.join(workdir, "out")
    os.makedirs(output_dir)
    n = args.jobs
    print("mgpu (%s) vs task-spooler, %d CPUs, 8 GPUs / 8 slots, `true` jobs" % (binary, os.cpu_count()))
    masters = []
    pool = multiprocessing.get_context("fork").Pool(CLIENTS)
    figures = {}
    try:
        pool.map(abs, range(CLIENTS))  # started before any timing
        master = Master(binary, os.path.join(workdir, "m1"))
        masters.append(master)
        srun = [binary, "srun", "--gpus", "1", "--output", output_dir + "/%j.out", "--", "true"]
        row("one submit (whole `mgpu srun` process, no -i), median", "%7.1f ms" % median_ms(srun, master.env))
        wait_idle(newest_active_id())

        loop = ("for i in $(seq %d); do %s srun --gpus 1 --output %s/%%j.out -- true >/dev/null || exit 1; done"
                % (n, binary, output_dir))
        start = time.perf_counter()
        subprocess.run(["bash", "-c", loop], env=master.env, check=True, timeout=RUN_DEADLINE)
        submitted = time.perf_counter()
        done = wait_idle(newest_active_id())
        row("%d x `mgpu srun` in a shell loop: per call" % n, "%7.1f ms" % ((submitted - start) * 1000 / n))
        row("%d x `mgpu srun` in a shell loop: end to end" % n, "%7.0f jobs/s" % (n / (done - start)))

        start, last = submit_concurrently(pool, master.socket, n, ["true"], output_dir)
        done = wait_idle(last)
        figures["kept"] = n / (done - start)
        row("%d jobs from %d kept connections: end to end" % (n, CLIENTS), "%7.0f jobs/s" % figures["kept"])

        help_text = subprocess.run([binary, "srun", "--help"], capture_output=True, text=True).stdout
        if "--array" in help_text:
            argv = [binary, "srun", "--array", "1-%d" % n, "--gpus", "1", "--output",
                    output_dir + "/%j.out", "--", "true"]
            start = time.perf_counter()
            submit = subprocess.run(argv, env=master.env, capture_output=True, text=True, timeout=60)
            if submit.returncode != 0:
                row("%d jobs as one array (srun --array 1-%d): end to end" % (n, n),
                    "n/a: %s" % (submit.stderr.strip().splitlines() or ["exit %d" % submit.returncode])[-1])
            else:
                done = wait_idle()
                figures["array"] = n / (done - start)
                row("%d jobs as one array (srun --array 1-%d): end to end" % (n, n), "%7.0f jobs/s" % figures["array"])
        else:
            row("%d jobs as one array: end to end" % n, "n/a: no --array")

        med = median_ms([binary, "srun", "-i", "--gpus", "1", "--output", output_dir + "/%j.out", "--", "true"],
                        master.env)
        row("`mgpu srun -i --gpus 1 -- true` round trip, median", "%7.1f ms" % med)
        master.stop()
        masters.remove(master)

        tsp, why_not = find_tsp()
        if tsp is None:
            row("task-spooler: %d x `tsp -n true` on 8 slots" % n, "skipped: %s" % why_not)
        else:
            per_submit, rate = tsp_run(tsp, workdir, n)
            figures["tsp"] = rate
            row("task-spooler: %d x `tsp -n true` in a shell loop: per call" % n, "%7.1f ms" % (per_submit * 1000))
            row("task-spooler: %d x `tsp -n true` on 8 slots: end to end" % n, "%7.0f jobs/s" % rate)
            row("ratio mgpu/tsp (kept connections)", "%7.2f" % (figures["kept"] / rate))
            if "array" in figures:
                row("ratio mgpu/tsp (one array)", "%7.2f" % (figures["array"] / rate))

        # A queue held up by one job on all 8 GPUs.
        master = Master(binary, os.path.join(workdir, "m2"))
        masters.append(master)
        _submit_worker((master.socket, 1, ["sleep", "3600"], output_dir, 8))
        submit_concurrently(pool, master.socket, 1000, ["true"], output_dir)
        row("`mgpu queue` with 1,000 pending jobs, median", "%7.1f ms" % median_ms([binary, "queue"], master.env))
        if args.pending > 1000:
            submit_concurrently(pool, master.socket, args.pending - 1000, ["true"], output_dir)
            row("`mgpu queue` with %d pending jobs, median" % args.pending,
                "%7.1f ms" % median_ms([binary, "queue"], master.env, runs=5, warmup=1))
            row("master RSS with %d pending jobs" % args.pending, "%7.1f MB" % master.rss_mb())
        master.cancel_all()
    finally:
        pool.terminate()
        pool.join()
        for master in masters:
            try:
                master.cancel_all()
            except Exception:
                pass
            master.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    ms = srun_import_ms()
    row("client import time: mgpu.cli.srun (python -X importtime)", "n/a" if ms is None else "%7.1f ms" % ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
