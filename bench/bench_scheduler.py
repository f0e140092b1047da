"""How long one scheduler pass takes on a large queue: figures only, no pass/fail.

Run: PYTHONPATH=src python bench/bench_scheduler.py [--runs N]
256 nodes x 8 GPUs (80 GB each), 10,000 pending jobs of a seeded random mix (1/2/4/8 GPUs,
a quarter sharing with --mem, a few exact GPU ids and GPU-less jobs, random priorities and
time limits), on (a) an empty cluster and (b) one about 90% busy with running jobs; then the
same queue with some jobs limited to some nodes (10% with a --nodelist of 1-4 nodes, 2% with
an --exclude of 1-2 nodes); then the same queue with a tenth of the jobs on several hosts
(2-4 hosts x 2-8 GPUs each, a few of them on exact GPUs of named hosts).
"""

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from mgpu import scheduler  # noqa: E402
from mgpu.model import Gpu, Job, JobState, Node  # noqa: E402

NODES = 256
GPUS_PER_NODE = 8
GPU_MB = 81920
PENDING = 10_000
NOW = 1_000_000.0


def build_nodes():
    return [Node("node%03d" % n,
                 [Gpu(i, "GPU-%03d-%d" % (n, i), "H100", GPU_MB) for i in range(GPUS_PER_NODE)])
            for n in range(NODES)]


def build_pending(rng):
    jobs = []
    for seq in range(PENDING):
        roll = rng.random()
        gpu_ids = None
        gpus = rng.choices((1, 2, 4, 8), weights=(40, 30, 20, 10))[0]
        if roll < 0.01:
            gpus = 0
        elif roll < 0.03:
            gpu_ids = tuple(sorted(rng.sample(range(GPUS_PER_NODE), rng.choice((1, 2)))))
        mem_mb = rng.choice((8000, 10000, 16000, 20000, 40000)) if rng.random() < 0.25 else None
        time_limit = rng.choice((600, 1800, 3600, 4 * 3600, 86400)) if rng.random() < 0.7 else None
        jobs.append(Job(id=1000 + seq, priority=rng.randint(0, 10), queue_seq=seq, gpus=gpus,
                        gpu_ids=gpu_ids, mem_mb=mem_mb, time_limit=time_limit,
                        state=JobState.PENDING))
    return jobs


def limit_some(pending, rng, nodes, nodelist_share=0.10, exclude_share=0.02):
    """The same queue with some jobs limited by --nodelist (1-4 nodes) or --exclude (1-2)."""
    names = [node.name for node in nodes]
    limited = []
    for job in pending:
        fields = job.to_dict()
        roll = rng.random()
        if roll < nodelist_share:
            fields["nodelist"] = rng.sample(names, rng.randint(1, 4))
        elif roll < nodelist_share + exclude_share:
            fields["exclude"] = rng.sample(names, rng.randint(1, 2))
        limited.append(Job.from_dict(fields))
    return limited


def spread_some(pending, rng, nodes, share=0.10, exact_share=0.05):
    """The same queue with `share` of the jobs on several hosts: 2-4 hosts with 2-8 GPUs each
    (their --mem kept), `exact_share` of those on exact GPUs of named hosts instead."""
    names = [node.name for node in nodes]
    spread = []
    for job in pending:
        fields = job.to_dict()
        if rng.random() < share:
            hosts = rng.randint(2, 4)
            fields["gpu_ids"] = None
            if rng.random() < exact_share:
                fields["node_gpu_ids"] = [
                    (name, sorted(rng.sample(range(GPUS_PER_NODE), rng.randint(1, 4))))
                    for name in rng.sample(names, hosts)]
            else:
                fields["nnodes"] = hosts
                fields["gpus"] = rng.randint(2, 8)
        spread.append(Job.from_dict(fields))
    return spread


def build_running(rng, nodes, busy_fraction):
    """Running jobs covering about busy_fraction of the GPUs, some of them shared."""
    running = []
    job_id = 1
    for node in nodes:
        index = 0
        while index < GPUS_PER_NODE:
            size = rng.choice((1, 2, 4))
            size = min(size, GPUS_PER_NODE - index)
            if rng.random() >= busy_fraction:
                index += size
                continue
            alloc = tuple(range(index, index + size))
            start = NOW - rng.uniform(60, 20000)
            limit = rng.choice((3600, 7200, 86400)) if rng.random() < 0.8 else None
            if rng.random() < 0.2:
                for _ in range(rng.choice((1, 2, 3))):
                    running.append(Job(id=job_id, priority=0, queue_seq=0, gpus=size,
                                       mem_mb=20000, time_limit=limit, state=JobState.RUNNING,
                                       node=node.name, alloc=alloc, start_time=start))
                    job_id += 1
            else:
                running.append(Job(id=job_id, priority=0, queue_seq=0, gpus=size,
                                   time_limit=limit, state=JobState.RUNNING, node=node.name,
                                   alloc=alloc, start_time=start))
                job_id += 1
            index += size
    return running


def measure(label, pending, nodes, running, policy, runs, queue="pending"):
    timings = []
    decided = None
    for _ in range(runs):
        began = time.perf_counter()
        decided = scheduler.schedule(pending, nodes, running, NOW, policy)
        timings.append((time.perf_counter() - began) * 1000.0)
    in_use = len({(job.node, index) for job in running for index in job.alloc})
    on_hosts = sum(1 for _, placed in decided.starts if isinstance(placed, tuple))
    print("scheduler pass, %d %s, %dx%d GPUs, %s, %s: median %.1f ms (best %.1f ms), "
          "%d started%s; %d running on %d GPUs"
          % (len(pending), queue, NODES, GPUS_PER_NODE, label, policy,
             statistics.median(timings), min(timings), len(decided.starts),
             " (%d on several hosts)" % on_hosts if on_hosts else "", len(running), in_use))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(20240601)
    nodes = build_nodes()
    pending = build_pending(rng)
    busy = build_running(rng, nodes, 0.9)
    for policy in scheduler.POLICIES:
        measure("empty cluster", pending, nodes, [], policy, args.runs)
        measure("~90% busy", pending, nodes, busy, policy, args.runs)
    over_slice = [job for job in busy if NOW - job.start_time > 10000]
    timings = []
    for _ in range(args.runs):
        began = time.perf_counter()
        victims = scheduler.time_slice_victims(pending, nodes, busy, over_slice, NOW)
        timings.append((time.perf_counter() - began) * 1000.0)
    print("time_slice_victims, %d pending, %d running of which %d over the slice: "
          "median %.1f ms (best %.1f ms), %d to stop"
          % (len(pending), len(busy), len(over_slice), statistics.median(timings), min(timings),
             len(victims)))
    limited = limit_some(pending, random.Random(20240602), nodes)
    queue = "pending (12% limited to some nodes)"
    for policy in scheduler.POLICIES:
        measure("empty cluster", limited, nodes, [], policy, args.runs, queue)
        measure("~90% busy", limited, nodes, busy, policy, args.runs, queue)
    spread = spread_some(pending, random.Random(20240603), nodes)
    queue = "pending (10% on 2-4 hosts)"
    for policy in scheduler.POLICIES:
        measure("empty cluster", spread, nodes, [], policy, args.runs, queue)
        measure("~90% busy", spread, nodes, busy, policy, args.runs, queue)


if __name__ == "__main__":
    main()
