"""Job arrays: what 100,000 pending array tasks cost (figures only, no pass/fail).

  1. A full scheduler pass of the controller (candidate tasks included) on 256 nodes x 8 GPUs,
     every GPU held by a running job, (a) with 10,000 pending jobs, (b) the same plus one array
     of 100,000 tasks, (c) the array alone; median of --runs passes.
  2. A real master from source with fake GPUs, every GPU held by a `sleep` job: its RSS idle,
     with 10,000 pending jobs, and with one array of 100,000 `sleep` tasks on top; and how
     long the array's submit took.

Usage: PYTHONPATH=src python bench/bench_arrays.py [--runs N] [--pending N] [--tasks N] [--skip-master]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
sys.path.insert(0, HERE)

from mgpu import protocol  # noqa: E402
from mgpu.controller import Controller, Settings  # noqa: E402
from mgpu.model import Job, JobState  # noqa: E402

NODES = 256
GPUS_PER_NODE = 8
GPU_MB = 81920
NOW = 1_000_000.0
ALICE = {"uid": 1000, "gid": 1000, "user": "alice", "home": "/home/alice"}


def busy_controller(pending):
    """A controller with every GPU of the cluster held by a running job, and `pending` pending
    one-GPU jobs."""
    jobs, job_id = [], 1
    for n in range(NODES):
        for i in range(GPUS_PER_NODE):
            jobs.append(Job(id=job_id, user="bob", uid=1001, gid=1001, command=["sleep", "9"], cwd="/",
                            gpus=1, state=JobState.RUNNING, node="node%03d" % n, alloc=(i,), attempt=1,
                            start_time=NOW - 10, priority=0, queue_seq=job_id))
            job_id += 1
    for seq in range(pending):
        jobs.append(Job(id=job_id, user="bob", uid=1001, gid=1001, command=["true"], cwd="/", gpus=1 + seq % 2,
                        state=JobState.PENDING, priority=seq % 5, queue_seq=job_id, submit_time=NOW))
        job_id += 1
    c = Controller(Settings(), jobs, next_id=job_id, next_seq=job_id)
    for n in range(NODES):
        c.handle({"kind": "node_up", "name": "node%03d" % n,
                  "gpus": [{"index": i, "uuid": "u%d" % i, "name": "H100", "memory_mb": GPU_MB}
                           for i in range(GPUS_PER_NODE)]}, NOW)
    return c


def submit_array(c, tasks):
    _, fields = protocol.check_request(protocol.request(
        "submit", command=["sleep", "60"], cwd="/home/alice", env={"PATH": "/usr/bin"}, array=[[1, tasks, 1]]))
    actions = c.handle({"kind": "request", "type": "submit", "token": "t", "fields": fields, "peer": ALICE}, NOW)
    assert actions[-1].message["ok"], actions[-1].message


def pass_ms(c, runs):
    times = []
    for _ in range(runs):
        c.dirty = True
        start = time.perf_counter()
        started = c.schedule(NOW)
        times.append((time.perf_counter() - start) * 1000)
        assert not any(type(a).__name__ == "Launch" for a in started), "the cluster was meant to be full"
    return statistics.median(times), min(times)


def scheduler_section(args):
    print("1. full scheduler pass, %d nodes x %d GPUs all busy (median of %d)" % (NODES, GPUS_PER_NODE, args.runs))
    c = busy_controller(args.pending)
    med, best = pass_ms(c, args.runs)
    print("   (a) %6d pending jobs                          %7.2f ms (best %.2f)" % (args.pending, med, best))
    submit_array(c, args.tasks)
    med, best = pass_ms(c, args.runs)
    print("   (b) %6d pending jobs + array of %d tasks   %7.2f ms (best %.2f)" % (args.pending, args.tasks, med, best))
    c = busy_controller(0)
    med0, _ = pass_ms(c, args.runs)
    submit_array(c, args.tasks)
    med, best = pass_ms(c, args.runs)
    print("   (c) no pending job: %7.2f ms; one array of %d tasks: %7.2f ms (best %.2f)"
          % (med0, args.tasks, med, best))


def master_section(args):
    import bench_e2e
    from mgpu import client as mgpu_client

    workdir = tempfile.mkdtemp(prefix="mgpu-bench-arrays-")
    output_dir = os.path.join(workdir, "out")
    os.makedirs(output_dir)
    master = bench_e2e.Master(os.path.join(workdir, "master"), gpus="2:16000")
    try:
        time.sleep(0.5)
        idle = master.rss_mb()
        bench_e2e._submit_worker((master.socket, 1, ["sleep", "3600"], output_dir, 2))  # every GPU busy
        bench_e2e.submit_concurrently(master, args.pending, 4, ["true"], output_dir)
        time.sleep(0.5)
        with_jobs = master.rss_mb()
        fields = bench_e2e.submit_fields(["sleep", "60"], output_dir)
        fields["output"] = os.path.join(output_dir, "%A_%a.out")
        fields["array"] = [[1, args.tasks, 1]]
        start = time.perf_counter()
        result = mgpu_client.call("submit", **fields)
        took = (time.perf_counter() - start) * 1000
        time.sleep(1.0)
        with_array = master.rss_mb()
        start = time.perf_counter()
        rows = mgpu_client.call("queue")["jobs"]
        queue_ms = (time.perf_counter() - start) * 1000
        array_rows = [row for row in rows if row.get("array_job_id") == result["job_id"]]
        print("2. a real master, 2 fake GPUs held by one job")
        print("   RSS idle                                       %7.1f MB" % idle)
        print("   RSS with %6d pending jobs                    %7.1f MB" % (args.pending, with_jobs))
        print("   RSS with those and an array of %d tasks   %7.1f MB" % (args.tasks, with_array))
        print("   submit of the array                            %7.1f ms" % took)
        print("   queue request (%d rows, the array's is %s)   %7.1f ms" % (
            len(rows), "%d_[%s]" % (result["job_id"], array_rows[0]["array_tasks"]) if array_rows else "?", queue_ms))
    finally:
        bench_e2e.cancel_all_and_wait()
        master.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--skip-master", action="store_true", help="only the scheduler pass")
    args = parser.parse_args()
    scheduler_section(args)
    if not args.skip_master:
        master_section(args)


if __name__ == "__main__":
    main()
