"""A job on several hosts, end to end on loopback (no pass/fail; prints what it measured and
how). About 20 s.

The time from `srun --nodes 2 --gpus-per-node 1` (the submit request leaving the client) to both
parts running, over 2 real `mgpu node` agents joined to a master with no GPUs of its own: each part
writes the time it started (`date +%s.%N`, the first thing its shell runs) to its output file, and
the later of the two, minus the time of the submit, is one sample. The gang start takes two
steps (rank 0 first, on the host that chooses MASTER_PORT; the other ranks once that port is
back at the master), so it is compared with the same measure for a one-host job.

Run: PYTHONPATH=src python3 bench/bench_gang.py [--samples N]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench_nodes import Daemon, Master, cli_env, free_port, keygen, mgpu_client, wait_until

STAMP = ["sh", "-c", "date +%s.%N"]


def one_job(fields, output_dir):
    """Seconds from the submit to the last part's start, for one job (waits for its end)."""
    submitted = time.time()
    job_id = mgpu_client.call("submit", **fields)["job_id"]
    def ended():
        return any(j["id"] == job_id and j["state"] not in ("PENDING", "RUNNING")
                   for j in mgpu_client.call("queue", all=True)["jobs"])
    wait_until(ended, 30, "job %d to end" % job_id, interval=0.02)
    starts = []
    for name in sorted(os.listdir(output_dir)):
        if name.startswith("%d.out" % job_id):
            with open(os.path.join(output_dir, name)) as handle:
                starts.append(float(handle.read().strip()))
    return max(starts) - submitted, len(starts)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    if shutil.which("openssl") is None:
        print("bench_gang: needs the openssl command to make a cluster key")
        return 0
    workdir = tempfile.mkdtemp(prefix="mgpu-bench-gang-")
    os.chmod(workdir, 0o755)
    output_dir = os.path.join(workdir, "out")
    os.makedirs(output_dir)
    print("mgpu gang start bench (python -m mgpu, loopback), %d CPUs" % os.cpu_count())
    master, nodes = None, []
    try:
        key_path = keygen(workdir)
        port = free_port()
        master = Master(os.path.join(workdir, "master"), key_path, port)
        for i in range(2):
            home = os.path.join(workdir, "node%d" % i)
            os.makedirs(home)
            argv = [sys.executable, "-m", "mgpu", "node", "--master", "127.0.0.1:%d" % port, "--key", key_path,
                    "--name", "node%d" % i, "--socket", os.path.join(home, "mgpu.sock"),
                    "--state-dir", os.path.join(home, "state"), "--fake-gpus", "2", "--heartbeat-interval", "1"]
            nodes.append(Daemon(argv, cli_env(os.path.join(home, "mgpu.sock")), os.path.join(home, "node.log")))
        wait_until(lambda: len(master.remote_nodes()) == 2, 30, "the node agents to join")
        base = {"command": STAMP, "cwd": "/tmp", "env": dict(os.environ), "umask": 0o022,
                "output": os.path.join(output_dir, "%j.out")}
        results = {}
        for label, extra in (("one host, --gpus 1", {"gpus": 1}),
                             ("--nodes 2 --gpus-per-node 1", {"gpus": 1, "nnodes": 2})):
            samples, parts = [], set()
            for _ in range(args.samples):
                seconds, count = one_job(dict(base, **extra), output_dir)
                samples.append(seconds * 1000)
                parts.add(count)
            results[label] = samples
            print("  %-28s submit -> every part running: median %6.1f ms (min %.1f, max %.1f; %d samples, %s "
                  "part%s each)" % (label, statistics.median(samples), min(samples), max(samples), len(samples),
                                    "/".join(map(str, sorted(parts))), "" if parts == {1} else "s"))
    finally:
        for node in nodes:
            node.stop()
        if master is not None:
            master.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
