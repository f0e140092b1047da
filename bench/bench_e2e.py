"""End-to-end figures of a real master with fake GPUs (no pass/fail; prints what it measured).

  1. 1,000 `true` jobs with --gpus 1 on 8 fake GPUs, first submit to last completion (jobs/s),
     and the submit rate alone: (a) submitted as fast as the master takes them, from several
     client processes each on a kept connection; (b) one `mgpu srun` process per job in a plain
     shell loop, as Slurm's sbatch was measured.
  2. `mgpu srun -i --gpus 1 -- true` round trip, median of 20.
  3. `mgpu queue` with 1,000 pending jobs, median of 20.
  4. The master's RSS idle and with 10,000 pending jobs, and the rate at which it accepted them.

Usage: PYTHONPATH=src python bench/bench_e2e.py [--jobs N] [--shell-jobs N] [--pending N]
With MGPU_BIN=dist/mgpu the CLI and master are the binary instead of `python -m mgpu`.
"""

import argparse
import multiprocessing
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
sys.path.insert(0, SRC)

from mgpu import client as mgpu_client  # noqa: E402

BIN = os.environ.get("MGPU_BIN")
CLI = [os.path.abspath(BIN)] if BIN else [sys.executable, "-m", "mgpu"]


def cli_env(socket_path):
    env = dict(os.environ, MGPU_SOCKET=socket_path)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Master:
    def __init__(self, workdir, gpus="8:81920"):
        os.makedirs(workdir, exist_ok=True)
        self.socket = os.path.join(workdir, "mgpu.sock")
        self.env = cli_env(self.socket)
        argv = CLI + ["master", "--socket", self.socket, "--state-dir", os.path.join(workdir, "state"),
                      "--fake-gpus", gpus, "--kill-grace", "1"]
        if os.getuid() == 0:
            argv.append("--allow-root-jobs")
        self.log = open(os.path.join(workdir, "master.log"), "wb")
        self.process = subprocess.Popen(argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        os.environ["MGPU_SOCKET"] = self.socket
        while True:
            try:
                mgpu_client.call("ping")
                break
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("master did not start; see %s" % self.log.name)
                time.sleep(0.02)

    def rss_mb(self):
        """RSS of the master process (the launcher helper is a separate, forked process; the
        binary's sh header exec()s the program, so the binary's pid is the master's too)."""
        with open("/proc/%d/status" % self.process.pid) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self.log.close()


def submit_fields(command, output_dir, gpus=1):
    return {"command": command, "cwd": "/tmp", "env": dict(os.environ), "gpus": gpus,
            "output": os.path.join(output_dir, "%j.out"), "umask": 0o022}


def _submit_worker(args):
    socket_path, count, command, output_dir, gpus = args
    os.environ["MGPU_SOCKET"] = socket_path
    connection = mgpu_client.Client.connect()
    fields = submit_fields(command, output_dir, gpus)
    first = None
    for _ in range(count):
        result = connection.call("submit", **fields)
        first = first or result["job_id"]
    connection.close()
    return first


def submit_concurrently(master, total, clients, command, output_dir, gpus=1):
    """Submit `total` jobs from `clients` processes on kept connections; seconds taken."""
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        # Warm the pool so process start-up is not counted as the master's time.
        pool.map(abs, range(clients))
        start = time.perf_counter()
        pool.map(_submit_worker, [(master.socket, n, command, output_dir, gpus) for n in per_client])
        return time.perf_counter() - start, start


def wait_all_done(timeout=600):
    deadline = time.monotonic() + timeout
    while True:
        jobs = mgpu_client.call("queue", state="PENDING,RUNNING")["jobs"]
        if not jobs:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise SystemExit("jobs did not finish in time")
        time.sleep(0.05)  # a poll lists every active job: polling faster would load the master


def cancel_all_and_wait(timeout=60):
    """End every job this bench started through its master, and wait until none is active: a
    job is final only once its processes are gone (the bench never signals a process by name:
    that would reach other people's processes on a shared machine)."""
    me = pwd.getpwuid(os.getuid()).pw_name
    mgpu_client.call("cancel", user=me, ids=[])
    deadline = time.monotonic() + timeout
    while True:
        active = mgpu_client.call("queue", state="PENDING,RUNNING")["jobs"]
        if not active:
            return
        if time.monotonic() > deadline:
            raise SystemExit("bench jobs still active %d s after their cancel: %s" % (
                timeout, ", ".join(str(j["id"]) for j in active[:20])))
        time.sleep(0.1)


def finished_count(state="COMPLETED"):
    return len(mgpu_client.call("queue", state=state)["jobs"])


def median_ms(argv, env, runs=20):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append((time.perf_counter() - start) * 1000)
        if result.returncode != 0:
            raise SystemExit("%s failed: %s" % (" ".join(argv), result.stderr.decode()))
    return statistics.median(times), min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--shell-jobs", type=int, default=1000)
    parser.add_argument("--pending", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="mgpu-bench-")
    output_dir = os.path.join(workdir, "out")
    os.makedirs(output_dir)
    print("mgpu end-to-end bench (%s), %d CPUs" % ("binary " + BIN if BIN else "python -m mgpu", os.cpu_count()))
    base = median_ms([sys.executable, "-c", "pass"], os.environ)[0]
    print("  reference: python -c pass                     %7.1f ms" % base)

    # 1a. Fast submission, end to end.
    master = Master(os.path.join(workdir, "m1"))
    taken, start = submit_concurrently(master, args.jobs, args.clients, ["true"], output_dir)
    done = wait_all_done()
    completed = finished_count()
    print("  1a. %d x 'true' --gpus 1 on 8 GPUs, %d clients on kept connections:" % (args.jobs, args.clients))
    print("      submit rate at the master                 %7.0f jobs/s" % (args.jobs / taken))
    print("      end to end (first submit to last end)     %7.1f jobs/s  (%d completed)"
          % (args.jobs / (done - start), completed))

    # 1b. One srun process per job, in a shell loop.
    if args.shell_jobs:
        loop = ("for i in $(seq %d); do %s srun --gpus 1 --output %s/%%j.out -- true >/dev/null || exit 1; done"
                % (args.shell_jobs, " ".join(CLI), output_dir))
        start = time.perf_counter()
        subprocess.run(["bash", "-c", loop], env=master.env, check=True)
        submitted = time.perf_counter()
        done = wait_all_done()
        print("  1b. %d x 'mgpu srun --gpus 1 -- true' in a shell loop:" % args.shell_jobs)
        print("      srun calls                                %7.1f calls/s (%.1f ms each)"
              % (args.shell_jobs / (submitted - start), (submitted - start) * 1000 / args.shell_jobs))
        print("      end to end                                %7.1f jobs/s"
              % (args.shell_jobs / (done - start)))

    # 2. Interactive round trip.
    med, best = median_ms(CLI + ["srun", "-i", "--gpus", "1", "--output", output_dir + "/%j.out", "--", "true"],
                          master.env)
    print("  2.  srun -i --gpus 1 -- true round trip        %7.1f ms median (best %.1f)" % (med, best))
    master.stop()

    # 3 and 4. A queue held up by a job on all GPUs.
    master = Master(os.path.join(workdir, "m2"))
    try:
        held_queue(master, args, output_dir)
    finally:
        # Leave no bench jobs behind: a stopped master leaves running jobs to their supervisors.
        cancel_all_and_wait()
        master.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def held_queue(master, args, output_dir):
    """Sections 3 and 4: a queue held up by a job on all GPUs."""
    time.sleep(0.5)
    idle = master.rss_mb()
    _submit_worker((master.socket, 1, ["sleep", "3600"], output_dir, 8))
    taken, _ = submit_concurrently(master, 1000, args.clients, ["true"], output_dir)
    med, best = median_ms(CLI + ["queue"], master.env)
    print("  3.  mgpu queue with 1,000 pending jobs         %7.1f ms median (best %.1f)" % (med, best))
    more = max(args.pending - 1000, args.clients)
    taken, _ = submit_concurrently(master, more, args.clients, ["true"], output_dir)
    print("  4.  submissions at the master, queue blocked (%d more while %d pending)\n"
          "      submit rate at the master                 %7.0f jobs/s" % (more, 1000, more / taken))
    time.sleep(0.5)
    print("      master RSS idle                           %7.1f MB" % idle)
    print("      master RSS with %d pending jobs         %7.1f MB" % (1000 + more, master.rss_mb()))
    med, best = median_ms(CLI + ["queue"], master.env, runs=5)
    print("      mgpu queue with %d pending jobs         %7.1f ms median" % (1000 + more, med))


if __name__ == "__main__":
    main()
