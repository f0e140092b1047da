"""The scheduling policy, pass by pass: exact allocations and the reasons users see."""

import ast
import math
import pathlib
import random
import subprocess
import sys

import pytest

from mgpu import scheduler
from mgpu.model import Allocation, Gpu, Job, JobState, Node, NodeState, ResourceRequest
from mgpu.scheduler import (SPREAD, queue_order_key, schedule, time_slice_victims,
                            unsatisfiable_reason)

NOW = 10_000.0
GB80 = 81920


def node(name, gpus=4, memory_mb=GB80, external_mb=(), state=NodeState.UP):
    external = dict(external_mb)
    return Node(name, [Gpu(i, "GPU-%s-%d" % (name, i), "A100", memory_mb, external.get(i, 0))
                       for i in range(gpus)], state)


def pending(job_id, gpus=1, priority=0, seq=None, gpu_ids=None, mem_mb=None, time_limit=None):
    return Job(id=job_id, priority=priority, queue_seq=job_id if seq is None else seq,
               gpus=gpus, gpu_ids=gpu_ids, mem_mb=mem_mb, time_limit=time_limit,
               state=JobState.PENDING)


def running(job_id, on, alloc, mem_mb=None, start_time=NOW - 100, time_limit=None):
    return Job(id=job_id, priority=0, queue_seq=job_id, gpus=len(alloc), mem_mb=mem_mb,
               time_limit=time_limit, state=JobState.RUNNING, node=on, alloc=alloc,
               start_time=start_time)


def started(decided):
    return {job.id: alloc for job, alloc in decided.starts}


def ends_in(seconds, start_time=NOW - 100):
    """A time limit for a job started at start_time that ends `seconds` from NOW."""
    return NOW + seconds - start_time


# ---------------------------------------------------------------------------------------------
# Queue order


def test_queue_order_key_is_priority_then_submit_order():
    jobs = [pending(1, priority=0, seq=1), pending(2, priority=5, seq=2),
            pending(3, priority=5, seq=0)]
    assert [j.id for j in sorted(jobs, key=queue_order_key)] == [3, 2, 1]


def test_higher_priority_starts_first_then_earlier_submission():
    jobs = [pending(1, gpus=2, seq=1), pending(2, gpus=2, seq=2, priority=9),
            pending(3, gpus=2, seq=3, priority=9), pending(4, gpus=2, seq=0)]
    decided = schedule(jobs, [node("a", 4)], [], NOW)
    assert decided.order == [2, 3, 4, 1]
    assert [job.id for job, _ in decided.starts] == [2, 3]
    assert started(decided) == {2: Allocation("a", (0, 1)), 3: Allocation("a", (2, 3))}
    assert decided.head == 4
    assert decided.waiting[4].startswith("Resources: needs 2 GPUs, 0 free")
    assert decided.waiting[1] == "Priority: behind job 4"


def test_every_pending_job_not_started_has_a_reason():
    jobs = [pending(i, gpus=1 + i % 3, time_limit=None if i % 2 else 60) for i in range(1, 40)]
    decided = schedule(jobs, [node("a", 4), node("b", 4)], [], NOW)
    assert sorted(decided.order) == list(range(1, 40))
    assert set(started(decided)) | set(decided.waiting) == set(range(1, 40))
    assert not set(started(decided)) & set(decided.waiting)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        schedule([], [node("a")], [], NOW, policy="random")


# ---------------------------------------------------------------------------------------------
# Choosing a node and GPUs


def test_fill_first_takes_the_tightest_node_that_fits():
    nodes = [node("a", 4), node("b", 4), node("c", 4)]
    busy = [running(100, "b", (0, 1))]
    decided = schedule([pending(1, gpus=2), pending(2, gpus=3)], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("b", (2, 3)), 2: Allocation("a", (0, 1, 2))}


def test_fill_first_ties_go_to_the_first_node_in_list_order():
    decided = schedule([pending(1), pending(2)], [node("x", 4), node("y", 4)], [], NOW)
    assert started(decided) == {1: Allocation("x", (0,)), 2: Allocation("x", (1,))}


def test_spread_takes_the_node_with_most_free_gpus_ties_by_list_order():
    nodes = [node("a", 4), node("b", 4), node("c", 4)]
    busy = [running(100, "a", (0,))]
    decided = schedule([pending(1), pending(2), pending(3)], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: Allocation("b", (0,)), 2: Allocation("c", (0,)),
                                3: Allocation("a", (1,))}


def test_fill_first_takes_lowest_free_indices():
    busy = [running(100, "a", (0, 2))]
    decided = schedule([pending(1, gpus=2)], [node("a", 4)], busy, NOW)
    assert started(decided) == {1: Allocation("a", (1, 3))}


def test_spread_within_a_node_prefers_most_free_memory_then_lowest_index():
    nodes = [node("a", 4, external_mb={0: 5000, 1: 1000})]
    decided = schedule([pending(1, gpus=2)], nodes, [], NOW, SPREAD)
    assert started(decided) == {1: Allocation("a", (2, 3))}
    decided = schedule([pending(1, gpus=3)], nodes, [], NOW, SPREAD)
    assert started(decided) == {1: Allocation("a", (1, 2, 3))}


# ---------------------------------------------------------------------------------------------
# Exclusive versus shared GPUs


def test_exclusive_job_needs_gpus_no_mgpu_job_holds_and_ignores_external_memory():
    nodes = [node("a", 2, external_mb={1: 70000})]
    busy = [running(100, "a", (0,), mem_mb=1000)]
    decided = schedule([pending(1), pending(2)], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("a", (1,))}
    assert decided.waiting[2].startswith("Resources: needs 1 GPU, 0 free")


def test_memory_jobs_share_a_gpu_while_memory_lasts():
    jobs = [pending(1, mem_mb=30000), pending(2, mem_mb=30000), pending(3, mem_mb=30000)]
    decided = schedule(jobs, [node("a", 1)], [], NOW)
    assert started(decided) == {1: Allocation("a", (0,), 30000), 2: Allocation("a", (0,), 30000)}
    assert decided.waiting[3] == "Resources: needs 1 GPU with 30000 MB free"


def test_memory_job_counts_external_memory_and_avoids_exclusive_gpus():
    nodes = [node("a", 3, external_mb={1: 70000})]
    busy = [running(100, "a", (0,))]
    decided = schedule([pending(1, mem_mb=20000)], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("a", (2,), 20000)}
    decided = schedule([pending(1, mem_mb=10000)], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("a", (1,), 10000)}


def test_exclusive_job_does_not_take_a_shared_gpu():
    busy = [running(100, "a", (0,), mem_mb=1000)]
    decided = schedule([pending(1, gpus=2)], [node("a", 2)], busy, NOW)
    assert 1 in decided.waiting


def test_fill_first_packs_memory_jobs_onto_gpus_already_shared():
    busy = [running(100, "a", (2,), mem_mb=10000), running(101, "a", (3,), mem_mb=20000)]
    decided = schedule([pending(1, gpus=2, mem_mb=10000), pending(2, mem_mb=10000)],
                       [node("a", 4)], busy, NOW)
    assert started(decided) == {1: Allocation("a", (2, 3), 10000),
                                2: Allocation("a", (3,), 10000)}


def test_spread_gives_memory_jobs_the_gpus_with_most_free_memory():
    busy = [running(100, "a", (0,), mem_mb=10000), running(101, "a", (1,), mem_mb=20000)]
    nodes = [node("a", 3, external_mb={2: 30000})]
    decided = schedule([pending(1, gpus=2, mem_mb=10000)], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: Allocation("a", (0, 1), 10000)}


def test_fill_first_best_fit_for_memory_jobs_counts_gpus_with_enough_memory():
    nodes = [node("a", 4), node("b", 4)]
    # On a only GPU 3 has 40000 MB left; on b all four do.
    busy = [running(100 + i, "a", (i,), mem_mb=60000) for i in range(3)]
    decided = schedule([pending(1, mem_mb=40000), pending(2, gpus=2, mem_mb=40000)],
                       nodes, busy, NOW)
    assert started(decided) == {1: Allocation("a", (3,), 40000),
                                2: Allocation("b", (0, 1), 40000)}


# ---------------------------------------------------------------------------------------------
# Exact GPU ids and jobs without GPUs


def test_gpu_ids_get_exactly_those_gpus_on_the_first_node_that_has_them_usable():
    nodes = [node("a", 4), node("b", 4)]
    busy = [running(100, "a", (3,))]
    decided = schedule([pending(1, gpu_ids=(1, 3))], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: Allocation("b", (1, 3))}
    decided = schedule([pending(1, gpu_ids=(2, 0))], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("a", (0, 2))}


def test_gpu_ids_busy_make_the_head_and_say_which():
    busy = [running(100, "a", (3,), time_limit=ends_in(300))]
    decided = schedule([pending(1, gpu_ids=(3,))], [node("a", 4)], busy, NOW)
    assert decided.waiting[1] == "Resources: needs GPU 3 (busy); expected within 5:00"
    decided = schedule([pending(1, gpu_ids=(1, 3))], [node("a", 4)], busy, NOW)
    assert decided.waiting[1].startswith("Resources: needs GPUs 1,3 (3 busy)")


def test_gpu_ids_missing_on_up_nodes_do_not_block():
    nodes = [node("a", 4), node("big", 16, state=NodeState.DOWN)]
    decided = schedule([pending(1, gpu_ids=(9,)), pending(2)], nodes, [], NOW)
    assert decided.waiting[1] == "Resources: no node that is up has GPU 9"
    assert started(decided) == {2: Allocation("a", (0,))}
    assert decided.head is None


def test_gpu_ids_with_memory_share():
    busy = [running(100, "a", (1,), mem_mb=40000)]
    decided = schedule([pending(1, gpu_ids=(1,), mem_mb=40000),
                        pending(2, gpu_ids=(1,), mem_mb=40000)], [node("a", 2)], busy, NOW)
    assert started(decided) == {1: Allocation("a", (1,), 40000)}
    assert decided.waiting[2].startswith("Resources: needs GPU 1 with 40000 MB free (busy)")


def test_job_without_gpus_starts_at_once():
    nodes = [node("a", 2), node("b", 4)]
    busy = [running(100, "a", (0, 1)), running(101, "b", (0, 1, 2, 3))]
    blocker = pending(1, gpus=8)
    decided = schedule([blocker, pending(2, gpus=0)], nodes, busy, NOW)
    assert started(decided) == {2: Allocation("a", ())}
    decided = schedule([pending(2, gpus=0, mem_mb=500)], [node("a", 2), node("b", 4)], [], NOW,
                       SPREAD)
    assert started(decided) == {2: Allocation("b", (), 500)}


def test_nothing_starts_when_no_node_is_up():
    nodes = [node("a", 4, state=NodeState.DOWN)]
    decided = schedule([pending(1, gpus=0), pending(2)], nodes, [], NOW)
    assert decided.starts == []
    assert decided.waiting == {1: "Resources: no node is up", 2: "Resources: no node is up"}
    assert decided.order == [1, 2]


def test_down_nodes_are_ignored():
    nodes = [node("a", 8, state=NodeState.DOWN), node("b", 2)]
    busy = [running(100, "a", (0,))]
    decided = schedule([pending(1, gpus=2), pending(2, gpus=4)], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("b", (0, 1))}
    assert decided.waiting[2] == "Resources: no node that is up has 4 GPUs"


# ---------------------------------------------------------------------------------------------
# Backfill


def one_node_half_busy(time_limit=ends_in(100)):
    """Node a with GPUs 0,1 held by job 100 until NOW+100 (or forever)."""
    return [node("a", 4)], [running(100, "a", (0, 1), time_limit=time_limit)]


def test_head_gets_a_reservation_at_the_shadow_time():
    nodes, busy = one_node_half_busy()
    decided = schedule([pending(1, gpus=4)], nodes, busy, NOW)
    assert decided.head == 1
    assert decided.shadow_time == NOW + 100
    assert decided.reserved == {("a", 0), ("a", 1), ("a", 2), ("a", 3)}
    assert decided.waiting[1] == "Resources: needs 4 GPUs, 2 free; expected within 1:40"


def test_short_job_backfills_onto_reserved_gpus_when_it_ends_before_the_shadow():
    nodes, busy = one_node_half_busy()
    jobs = [pending(1, gpus=4, priority=5), pending(2, time_limit=60), pending(3, time_limit=100)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert started(decided) == {2: Allocation("a", (2,)), 3: Allocation("a", (3,))}


def test_backfill_refused_when_it_would_delay_the_head_or_has_no_limit():
    nodes, busy = one_node_half_busy()
    jobs = [pending(1, gpus=4, priority=5), pending(2, time_limit=101), pending(3)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.starts == []
    assert decided.waiting[2] == "Priority: behind job 1"
    assert decided.waiting[3] == "Priority: behind job 1"


def test_backfill_without_limit_allowed_on_gpus_the_head_does_not_need():
    nodes = [node("a", 8)]
    busy = [running(100, "a", (0, 1, 2, 3, 4, 5), time_limit=ends_in(100))]
    jobs = [pending(1, gpus=4, priority=5), pending(2, gpus=2), pending(3)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.reserved == {("a", 0), ("a", 1), ("a", 2), ("a", 3)}
    assert started(decided) == {2: Allocation("a", (6, 7))}
    assert decided.waiting[3] == "Priority: behind job 1"


def test_backfill_prefers_other_nodes_to_reserved_gpus():
    nodes = [node("a", 4), node("b", 4)]
    busy = [running(100, "a", (0, 1, 2), time_limit=ends_in(100)),
            running(101, "b", (0, 1, 2))]
    jobs = [pending(1, gpus=4, priority=5), pending(2, time_limit=10)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.reserved == {("a", 0), ("a", 1), ("a", 2), ("a", 3)}
    assert started(decided) == {2: Allocation("b", (3,))}


def test_head_with_infinite_shadow_still_keeps_its_gpus():
    nodes, busy = one_node_half_busy(time_limit=None)
    jobs = [pending(1, gpus=4, priority=5), pending(2), pending(3, time_limit=3600)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.shadow_time == math.inf
    assert decided.waiting[1] == "Resources: needs 4 GPUs, 2 free"
    assert decided.waiting[2] == "Priority: behind job 1"
    # Any job with a limit ends before a head that waits on jobs without one.
    assert started(decided) == {3: Allocation("a", (2,))}


def test_jobs_started_in_the_pass_count_for_the_shadow():
    jobs = [pending(1, gpus=2, priority=9, time_limit=600), pending(2, gpus=4, priority=5),
            pending(3, time_limit=700), pending(4, time_limit=500)]
    decided = schedule(jobs, [node("a", 4)], [], NOW)
    assert started(decided) == {1: Allocation("a", (0, 1)), 4: Allocation("a", (2,))}
    assert decided.shadow_time == NOW + 600
    assert decided.waiting[3] == "Priority: behind job 2"


def test_jobs_without_limit_end_after_all_limited_ones_in_start_order():
    nodes = [node("a", 2), node("b", 2)]
    busy = [running(100, "a", (0, 1), start_time=NOW - 50),
            running(101, "b", (0,), start_time=NOW - 500),
            running(102, "b", (1,), time_limit=ends_in(100))]
    decided = schedule([pending(1, gpus=2)], nodes, busy, NOW)
    # 102 ends first but b still holds 101; of the unlimited ones 101 started first.
    assert decided.reserved == {("b", 0), ("b", 1)}
    assert decided.shadow_time == math.inf


def test_shadow_picks_the_node_by_policy_when_several_free_up_together():
    nodes = [node("a", 4), node("b", 2)]
    busy = [running(100, "a", (0, 1, 2, 3), time_limit=ends_in(50)),
            running(101, "b", (0, 1), time_limit=ends_in(50))]
    decided = schedule([pending(1, gpus=2)], nodes, busy, NOW)
    assert decided.reserved == {("b", 0), ("b", 1)}
    decided = schedule([pending(1, gpus=2)], nodes, busy, NOW, SPREAD)
    assert decided.reserved == {("a", 0), ("a", 1)}


def test_unsatisfiable_jobs_never_block():
    jobs = [pending(1, gpus=16, priority=9), pending(2, mem_mb=100000, priority=9),
            pending(3, gpus=3, mem_mb=50000, priority=9), pending(4, gpus=2)]
    nodes = [node("a", 4, external_mb={0: 40000, 1: 40000})]
    decided = schedule(jobs, nodes, [], NOW)
    assert decided.waiting[1] == "Resources: no node that is up has 16 GPUs"
    assert decided.waiting[2] == "Resources: no node that is up has 1 GPU with 100000 MB free"
    assert decided.waiting[3] == \
        "Resources: no node that is up has 3 GPUs with 50000 MB free each"
    assert started(decided) == {4: Allocation("a", (0, 1))}
    assert decided.head is None


def test_only_one_reservation_per_pass():
    nodes = [node("a", 2), node("b", 2)]
    busy = [running(100, "a", (0, 1), time_limit=ends_in(100)),
            running(101, "b", (0,), time_limit=ends_in(200))]
    jobs = [pending(1, gpus=2, priority=9), pending(2, gpus=2, priority=8), pending(3)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.head == 1
    assert decided.reserved == {("a", 0), ("a", 1)}
    assert decided.waiting[2] == "Priority: behind job 1"
    assert started(decided) == {3: Allocation("b", (1,))}


def test_head_reason_on_many_nodes_names_the_best_node():
    nodes = [node("a", 4), node("b", 4)]
    busy = [running(100, "a", (0, 1, 2)), running(101, "b", (0, 1))]
    decided = schedule([pending(1, gpus=4)], nodes, busy, NOW)
    assert decided.waiting[1] == "Resources: needs 4 GPUs on one node, at most 2 free on any"


def random_cluster(rng, size, down_every):
    """`size` nodes of 2, 4 or 8 GPUs (every down_every-th down, some GPUs partly used outside
    mgpu), about half of the GPUs held by running jobs (some --mem, some with a time limit)."""
    nodes = [node("n%d" % i, rng.choice((2, 4, 8)), external_mb={0: rng.choice((0, 30000))},
                  state=NodeState.UP if i % down_every else NodeState.DOWN) for i in range(size)]
    busy = []
    for n in nodes:
        for i in range(len(n.gpus)):
            if rng.random() < 0.5:
                busy.append(running(1000 + len(busy), n.name, (i,),
                                    mem_mb=rng.choice((None, 20000)),
                                    time_limit=rng.choice((None, 200, 5000))))
    return nodes, busy


@pytest.mark.parametrize("policy", scheduler.POLICIES)
def test_a_random_pass_never_overcommits_a_gpu_nor_touches_the_reservation(policy):
    rng = random.Random(7)
    nodes, busy = random_cluster(rng, 20, down_every=7)
    jobs = []
    for job_id in range(1, 300):
        gpu_ids = tuple(sorted(rng.sample(range(4), 2))) if rng.random() < 0.05 else None
        jobs.append(pending(job_id, gpus=rng.choice((0, 1, 1, 2, 4, 8, 16)), gpu_ids=gpu_ids,
                            priority=rng.randint(0, 3), mem_mb=rng.choice((None, None, 10000)),
                            time_limit=rng.choice((None, 60, 100000))))
    decided = schedule(jobs, nodes, busy, NOW, policy)

    gpus = {(n.name, g.index): g for n in nodes if n.state == NodeState.UP for g in n.gpus}
    holders = {}
    for job in busy:
        for i in job.alloc:
            holders.setdefault((job.node, i), []).append(job.mem_mb)
    for job, alloc in decided.starts:
        assert alloc.mem_mb == job.mem_mb
        assert list(alloc.gpu_ids) == sorted(set(alloc.gpu_ids))
        assert len(alloc.gpu_ids) == (job.gpus or 0)
        if job.gpu_ids:
            assert alloc.gpu_ids == tuple(sorted(job.gpu_ids))
        for i in alloc.gpu_ids:
            assert (alloc.node, i) in gpus
            holders.setdefault((alloc.node, i), []).append(job.mem_mb)
            if (alloc.node, i) in decided.reserved:
                assert job.time_limit and NOW + job.time_limit <= decided.shadow_time
    for place, mems in holders.items():
        if place not in gpus:
            continue
        if None in mems:
            assert mems == [None], place
        else:
            gpu = gpus[place]
            assert sum(mems) <= gpu.memory_mb - gpu.external_mb, place
    assert set(started(decided)) | set(decided.waiting) == set(range(1, 300))
    assert decided.starts and decided.waiting


# ---------------------------------------------------------------------------------------------
# Time slicing


def slice_setup():
    nodes = [node("a", 4), node("b", 4, state=NodeState.DOWN)]
    old = running(100, "a", (0, 1), start_time=NOW - 900)
    young = running(101, "a", (2, 3), start_time=NOW - 800)
    return nodes, [old, young]


def test_time_slice_stops_the_longest_running_first():
    nodes, busy = slice_setup()
    assert time_slice_victims([pending(1, gpus=2)], nodes, busy, busy, NOW) == [100]
    assert time_slice_victims([pending(1, gpus=3)], nodes, busy, busy, NOW) == [100, 101]


def test_time_slice_stops_nothing_without_a_waiting_job_that_would_gain():
    nodes, busy = slice_setup()
    assert time_slice_victims([], nodes, busy, busy, NOW) == []
    assert time_slice_victims([pending(1, gpus=8)], nodes, busy, busy, NOW) == []
    assert time_slice_victims([pending(1, gpus=2)], nodes, busy, busy[1:], NOW) == [101]
    assert time_slice_victims([pending(1, gpus=2)], nodes, busy, [], NOW) == []
    assert time_slice_victims([pending(1, gpus=0)], nodes, busy, busy, NOW) == []


def test_time_slice_skips_jobs_that_fit_now_and_follows_queue_order():
    nodes = [node("a", 4)]
    old = running(100, "a", (0,), start_time=NOW - 900)
    young = running(101, "a", (1, 2), start_time=NOW - 800)
    jobs = [pending(1, gpus=1, priority=9), pending(2, gpus=2, priority=5),
            pending(3, gpus=3, priority=1)]
    # Job 1 fits on GPU 3; job 2 decides: stopping the oldest frees GPU 0, enough with GPU 3.
    assert time_slice_victims(jobs, nodes, [old, young], [old, young], NOW) == [100]
    # Job 3 needs 3: stopping 101 alone frees 1,2 besides 3, so the older 100 is spared.
    assert time_slice_victims(jobs[2:], nodes, [old, young], [old, young], NOW) == [101]


def test_time_slice_spares_an_older_job_that_is_not_needed():
    nodes = [node("a", 4)]
    old = running(100, "a", (0,), start_time=NOW - 900)
    middle = running(101, "a", (1, 2), start_time=NOW - 800)
    other = running(102, "a", (3,), start_time=NOW - 10)
    busy = [old, middle, other]
    assert time_slice_victims([pending(1, gpus=2)], nodes, busy, [old, middle], NOW) == [101]


def test_time_slice_picks_the_node_needing_fewest_stops():
    nodes = [node("a", 2), node("b", 2)]
    a0 = running(100, "a", (0,), start_time=NOW - 900)
    a1 = running(101, "a", (1,), start_time=NOW - 900)
    b01 = running(102, "b", (0, 1), start_time=NOW - 100)
    busy = [a0, a1, b01]
    assert time_slice_victims([pending(1, gpus=2)], nodes, busy, busy, NOW) == [102]


# ---------------------------------------------------------------------------------------------
# Admission


def cluster():
    return [node("a", 4), node("b", 8, memory_mb=40960, state=NodeState.DOWN)]


@pytest.mark.parametrize("request_, reason", [
    (ResourceRequest(gpus=0), None),
    (ResourceRequest(gpus=8), None),
    (ResourceRequest(gpus=2, mem_mb=GB80), None),
    (ResourceRequest(gpu_ids=(6, 7)), None),
    (ResourceRequest(gpus=16), "asks for 16 GPUs; the largest node has 8"),
    (ResourceRequest(gpus=1, mem_mb=100000),
     "asks for 100000 MB per GPU; the largest GPU has 81920 MB"),
    (ResourceRequest(gpus=5, mem_mb=50000),
     "asks for 5 GPUs with 50000 MB each; no node has more than 4 such GPUs"),
    (ResourceRequest(gpu_ids=(9,)), "GPU 9 does not exist (this cluster has GPUs 0-7)"),
    (ResourceRequest(gpu_ids=(1, 9, 12)), "GPUs 9,12 do not exist (this cluster has GPUs 0-7)"),
    (ResourceRequest(gpu_ids=(6,), mem_mb=50000),
     "asks for 50000 MB per GPU on GPU 6; no node has that much on it (at most 40960 MB)"),
])
def test_unsatisfiable_reason(request_, reason):
    assert unsatisfiable_reason(request_, cluster()) == reason


def test_unsatisfiable_reason_without_gpus():
    assert unsatisfiable_reason(ResourceRequest(gpus=1), []) == \
        "asks for 1 GPU; this cluster has no GPUs"
    assert unsatisfiable_reason(ResourceRequest(gpus=0), []) is None


def test_unsatisfiable_reason_ignores_external_memory():
    nodes = [node("a", 1, external_mb={0: GB80})]
    assert unsatisfiable_reason(ResourceRequest(gpus=1, mem_mb=GB80), nodes) is None


# ---------------------------------------------------------------------------------------------
# The pure core stays pure

ALLOWED_IMPORTS = {"mgpu.model", "heapq", "bisect", "itertools", "math", "collections",
                   "operator", "functools"}
FORBIDDEN_IMPORTS = {"time", "threading", "socket", "sqlite3", "os", "subprocess", "pynvml",
                     "psutil"}


def imported_modules(path):
    modules = set()
    for statement in ast.walk(ast.parse(path.read_text())):
        if isinstance(statement, ast.Import):
            modules.update(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            if statement.level:  # relative: from .model import ... inside mgpu
                base = "mgpu"
                module = statement.module
                modules.add(base + "." + module if module else base)
            else:
                modules.add(statement.module)
    return modules


def test_scheduler_imports_only_the_model_and_pure_stdlib():
    modules = imported_modules(pathlib.Path(scheduler.__file__))
    assert not {m.split(".")[0] for m in modules} & FORBIDDEN_IMPORTS
    assert modules <= ALLOWED_IMPORTS, modules - ALLOWED_IMPORTS
    assert "mgpu.model" in modules


def test_importing_the_scheduler_pulls_in_no_io_module_indirectly():
    probe = ("import sys; before = set(sys.modules); import mgpu.scheduler; "
             "print(' '.join(sorted(set(sys.modules) - before)))")
    src = str(pathlib.Path(scheduler.__file__).parent.parent)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={"PYTHONPATH": src}, check=True, timeout=60)
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert not loaded & FORBIDDEN_IMPORTS, loaded & FORBIDDEN_IMPORTS


# ---------------------------------------------------------------------------------------------
# Jobs limited to some nodes (--nodelist, --exclude) and submit-only nodes


def limited(job_id, nodelist=None, exclude=None, **request):
    """A pending job that may run only on `nodelist` (None: any) and never on `exclude`."""
    job = pending(job_id, **request)
    job.nodelist = tuple(nodelist) if nodelist else None
    job.exclude = tuple(exclude) if exclude else None
    return job


def submit_only(name, gpus=8, state=NodeState.UP):
    relay = node(name, gpus, state=state)
    relay.submit_only = True
    return relay


def three_nodes_partly_busy():
    """a, b, c with 4 GPUs each: a all free, b 1 free (GPU 3), c 2 free (GPUs 2, 3)."""
    nodes = [node("a"), node("b"), node("c")]
    busy = [running(100, "b", (0, 1, 2)), running(101, "c", (0, 1))]
    return nodes, busy


def test_nodelist_fill_first_takes_the_tightest_node_it_may_use():
    nodes, busy = three_nodes_partly_busy()
    decided = schedule([limited(1, nodelist=("a", "c"))], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("c", (2,))}  # b would fit tighter: not allowed


def test_nodelist_spread_takes_the_node_it_may_use_with_most_free_gpus():
    nodes, busy = three_nodes_partly_busy()
    decided = schedule([limited(1, nodelist=("b", "c"))], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: Allocation("c", (2,))}  # a has most free: not allowed


def test_nodelist_order_does_not_matter_ties_go_by_node_list_order():
    nodes = [node("a"), node("b"), node("c")]
    for policy in scheduler.POLICIES:
        decided = schedule([limited(1, nodelist=("c", "b"))], nodes, [], NOW, policy)
        assert started(decided) == {1: Allocation("b", (0,))}


def test_exclude_keeps_a_job_off_those_nodes():
    nodes, busy = three_nodes_partly_busy()
    decided = schedule([limited(1, exclude=("b",))], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("c", (2,))}
    decided = schedule([limited(1, exclude=("c",))], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: Allocation("a", (0,))}


def test_nodelist_and_exclude_leave_the_difference():
    nodes, busy = three_nodes_partly_busy()
    decided = schedule([limited(1, nodelist=("a", "b", "c"), exclude=("b",))], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("c", (2,))}


def test_many_allowed_nodes_choose_like_an_unlimited_job():
    # More nodes than a limited job scans one by one: it walks the shared buckets instead.
    nodes = [node("n%d" % i, 4) for i in range(12)]
    busy = [running(100 + i, "n%d" % i, tuple(range(i % 4))) for i in range(12)]
    decided = schedule([limited(1, gpus=2, exclude=("n2",)), limited(2, gpus=2, exclude=("n2",))],
                       nodes, busy, NOW)
    assert started(decided) == {1: Allocation("n6", (2, 3)), 2: Allocation("n10", (2, 3))}
    decided = schedule([limited(1, gpus=2, exclude=("n0",), mem_mb=1000)], nodes, busy, NOW,
                       SPREAD)
    assert started(decided) == {1: Allocation("n4", (0, 1), 1000)}
    decided = schedule([limited(1, gpu_ids=(3,), exclude=("n0", "n1"))], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("n2", (3,))}


def test_gpu_ids_with_a_one_node_nodelist_are_those_gpus_on_that_node():
    nodes = [node("a"), node("b")]
    decided = schedule([limited(1, nodelist=("b",), gpu_ids=(3, 1))], nodes, [], NOW)
    assert started(decided) == {1: Allocation("b", (1, 3))}
    busy = [running(100, "b", (3,), time_limit=ends_in(300))]
    decided = schedule([limited(1, nodelist=("b",), gpu_ids=(1, 3))], nodes, busy, NOW)
    assert decided.waiting[1] == \
        "Resources: needs GPUs 1,3 on node b (3 busy); expected within 5:00"
    assert decided.reserved == {("b", 1), ("b", 3)}
    decided = schedule([limited(1, nodelist=("b",), gpu_ids=(3,), mem_mb=1000)], nodes, busy, NOW)
    assert decided.waiting[1] == \
        "Resources: needs GPU 3 with 1000 MB free on node b (busy); expected within 5:00"


def test_job_without_gpus_goes_to_a_node_it_may_use():
    nodes = [node("a", 2), node("b", 4), node("c", 4)]
    busy = [running(100, "b", (0,))]
    decided = schedule([limited(1, gpus=0, nodelist=("c", "b"))], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("b", ())}
    decided = schedule([limited(1, gpus=0, nodelist=("a", "b"))], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: Allocation("b", ())}
    decided = schedule([limited(1, gpus=0, exclude=("a",), mem_mb=10)], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: Allocation("c", (), 10)}


def test_submit_only_nodes_never_get_a_job():
    nodes = [submit_only("relay", 8), node("a", 2)]
    jobs = [pending(1, gpus=0), pending(2, gpus=4), pending(3),
            limited(4, gpus=0, nodelist=("relay",))]
    for policy in scheduler.POLICIES:
        decided = schedule(jobs, nodes, [], NOW, policy)
        assert started(decided) == {1: Allocation("a", ()), 3: Allocation("a", (0,))}
        assert decided.waiting[2] == "Resources: no node that is up has 4 GPUs"
        assert decided.waiting[4] == scheduler.NO_ALLOWED_NODE_UP
    decided = schedule([pending(1, gpus=0)], [submit_only("relay")], [], NOW)
    assert decided.starts == [] and decided.waiting == {1: scheduler.NO_NODE_UP}


def test_no_allowed_node_up():
    nodes = [node("a"), node("b", state=NodeState.DOWN), node("c", state=NodeState.DRAINED)]
    jobs = [limited(1, nodelist=("b", "c")), limited(2, gpus=0, nodelist=("b",)),
            limited(3, exclude=("a",)), limited(4, nodelist=("a",), exclude=("a",)),
            limited(5, nodelist=("gone",)), pending(6)]
    decided = schedule(jobs, nodes, [], NOW)
    assert scheduler.NO_ALLOWED_NODE_UP == "Resources: none of the nodes it may use is up"
    assert {i: decided.waiting[i] for i in range(1, 6)} == \
        {i: scheduler.NO_ALLOWED_NODE_UP for i in range(1, 6)}
    assert started(decided) == {6: Allocation("a", (0,))}
    assert decided.head is None


def test_limited_job_that_can_never_fit_its_nodes_says_so_and_does_not_block():
    nodes = [node("a", 4), node("b", 8, memory_mb=40960)]
    jobs = [limited(1, nodelist=("a",), gpus=8, priority=9),
            limited(2, nodelist=("b",), mem_mb=50000, priority=9),
            limited(3, exclude=("a",), gpus=2, mem_mb=50000, priority=9),
            limited(4, nodelist=("a",), gpu_ids=(5,), priority=9),
            limited(5, nodelist=("a",), gpu_ids=(1, 2), mem_mb=GB80 + 1, priority=9),
            pending(6, gpus=8)]
    decided = schedule(jobs, nodes, [], NOW)
    assert decided.waiting[1] == "Resources: no node it may use has 8 GPUs"
    assert decided.waiting[2] == "Resources: no node it may use has 1 GPU with 50000 MB free"
    assert decided.waiting[3] == \
        "Resources: no node it may use has 2 GPUs with 50000 MB free each"
    assert decided.waiting[4] == "Resources: no node it may use has GPU 5"
    assert decided.waiting[5] == \
        "Resources: no node it may use has GPUs 1,2 with 81921 MB free each"
    assert started(decided) == {6: Allocation("b", tuple(range(8)))}
    assert decided.head is None


def test_limited_head_reasons_speak_of_the_nodes_it_may_use():
    nodes = [node("a", 4), node("b", 4), node("c", 4)]
    busy = [running(100, "a", (0, 1, 2), time_limit=ends_in(100)),
            running(101, "b", (0, 1, 2, 3), time_limit=ends_in(200))]
    decided = schedule([limited(1, nodelist=("a",), gpus=2)], nodes, busy, NOW)
    assert decided.waiting[1] == "Resources: needs 2 GPUs on node a, 1 free; expected within 1:40"
    decided = schedule([limited(1, exclude=("c",), gpus=2)], nodes, busy, NOW)
    assert decided.waiting[1] == ("Resources: needs 2 GPUs on one of the nodes it may use, "
                                  "at most 1 free there; expected within 1:40")
    busy = [running(100, "a", (0, 1, 2, 3), mem_mb=70000)]
    decided = schedule([limited(1, nodelist=("a",), gpus=2, mem_mb=20000)], nodes, busy, NOW)
    assert decided.waiting[1] == "Resources: needs 2 GPUs with 20000 MB free each on node a"
    decided = schedule([limited(1, nodelist=("a", "b"), mem_mb=20000)],
                       nodes, busy + [running(102, "b", (0, 1, 2, 3))], NOW)
    assert decided.waiting[1] == \
        "Resources: needs 1 GPU with 20000 MB free on one of the nodes it may use"


def test_limited_head_reserves_on_its_nodes_and_others_backfill_around_it():
    nodes = [node("a", 4), node("b", 4)]
    busy = [running(100, "a", (0, 1), time_limit=ends_in(100))]
    jobs = [limited(1, nodelist=("a",), gpus=4, priority=9),   # b is free, but not for it
            limited(2, nodelist=("a",), time_limit=60),        # ends before the head starts
            limited(3, nodelist=("a",)),                       # would delay it
            pending(4, gpus=2),                                # elsewhere: starts
            limited(5, nodelist=("b",), gpus=2)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.head == 1
    assert decided.shadow_time == NOW + 100
    assert decided.reserved == {("a", 0), ("a", 1), ("a", 2), ("a", 3)}
    assert decided.waiting[1] == "Resources: needs 4 GPUs on node a, 2 free; expected within 1:40"
    assert started(decided) == {2: Allocation("a", (2,)), 4: Allocation("b", (0, 1)),
                                5: Allocation("b", (2, 3))}
    assert decided.waiting[3] == "Priority: behind job 1"


def test_limited_head_picks_among_its_nodes_by_policy():
    nodes = [node("a", 4), node("b", 2), node("c", 4)]
    busy = [running(100, "a", (0, 1, 2, 3), time_limit=ends_in(50)),
            running(101, "b", (0, 1), time_limit=ends_in(50)),
            running(102, "c", (0, 1, 2, 3), time_limit=ends_in(10))]
    decided = schedule([limited(1, gpus=2, nodelist=("a", "b"))], nodes, busy, NOW)
    assert decided.reserved == {("b", 0), ("b", 1)}
    assert decided.shadow_time == NOW + 50
    decided = schedule([limited(1, gpus=2, exclude=("c",))], nodes, busy, NOW, SPREAD)
    assert decided.reserved == {("a", 0), ("a", 1)}


def test_a_limited_request_is_not_settled_as_the_same_count_anywhere():
    # The head: 1 GPU on the full node a. A second like it waits; 1 GPU anywhere starts on b.
    nodes = [node("a", 2), node("b", 2)]
    busy = [running(100, "a", (0, 1))]
    jobs = [limited(1, nodelist=("a",)), limited(2, nodelist=("a",)), pending(3)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.head == 1
    assert decided.waiting[2] == "Priority: behind job 1"
    assert started(decided) == {3: Allocation("b", (0,))}
    # Behind a head reserved elsewhere: settled as behind; the same count anywhere starts.
    nodes = [node("a", 2), node("b", 2), node("c", 2)]
    busy = [running(100, "a", (0, 1)), running(101, "b", (0,), time_limit=ends_in(100))]
    jobs = [limited(1, nodelist=("b",), gpus=2, priority=9), limited(2, nodelist=("a",)),
            pending(3), limited(4, nodelist=("a",))]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.reserved == {("b", 0), ("b", 1)}
    assert decided.waiting[2] == decided.waiting[4] == "Priority: behind job 1"
    assert started(decided) == {3: Allocation("c", (0,))}
    # Never fits its nodes: the same count anywhere is not refused with it.
    decided = schedule([limited(1, nodelist=("a",), gpus=4), pending(2, gpus=4)],
                       [node("a", 2), node("b", 4)], [], NOW)
    assert decided.waiting[1] == "Resources: no node it may use has 4 GPUs"
    assert started(decided) == {2: Allocation("b", (0, 1, 2, 3))}
    # The other way round: 2 GPUs anywhere take b, then 2 GPUs on b wait.
    decided = schedule([pending(1, gpus=2), limited(2, nodelist=("b",), gpus=2)],
                       [node("a", 2), node("b", 2)], [running(100, "a", (0,))], NOW)
    assert started(decided) == {1: Allocation("b", (0, 1))}
    assert decided.waiting[2].startswith("Resources: needs 2 GPUs on node b, 0 free")


@pytest.mark.parametrize("policy", scheduler.POLICIES)
@pytest.mark.parametrize("size", [6, 20])
def test_a_nodelist_of_every_node_decides_like_no_nodelist(policy, size):
    rng = random.Random(size)
    nodes, busy = random_cluster(rng, size, down_every=5)
    plain = []
    for job_id in range(1, 200):
        gpu_ids = tuple(sorted(rng.sample(range(4), 2))) if rng.random() < 0.1 else None
        plain.append(pending(job_id, gpus=rng.choice((0, 1, 1, 2, 4, 8, 16)), gpu_ids=gpu_ids,
                             priority=rng.randint(0, 3), mem_mb=rng.choice((None, None, 10000)),
                             time_limit=rng.choice((None, 60, 100000))))
    everywhere = tuple(n.name for n in reversed(nodes))
    alike = [limited(job.id, nodelist=everywhere, gpus=job.gpus, gpu_ids=job.gpu_ids,
                     priority=job.priority, mem_mb=job.mem_mb, time_limit=job.time_limit)
             for job in plain]
    expected = schedule(plain, nodes, busy, NOW, policy)
    decided = schedule(alike, nodes, busy, NOW, policy)
    assert [(job.id, alloc) for job, alloc in decided.starts] == \
        [(job.id, alloc) for job, alloc in expected.starts]
    assert (decided.head, decided.shadow_time, decided.reserved) == \
        (expected.head, expected.shadow_time, expected.reserved)
    assert decided.starts and decided.head is not None


@pytest.mark.parametrize("policy", scheduler.POLICIES)
def test_a_random_pass_keeps_limited_jobs_on_their_nodes(policy):
    rng = random.Random(11)
    nodes = [node("n%d" % i, rng.choice((2, 4, 8)),
                  state=NodeState.UP if i % 7 else NodeState.DOWN) for i in range(16)]
    nodes[3].submit_only = True
    names = [n.name for n in nodes] + ["gone"]
    busy = [running(1000 + i, n.name, (0,), time_limit=rng.choice((None, 300)))
            for i, n in enumerate(nodes) if rng.random() < 0.5 and not n.submit_only]
    jobs = []
    for job_id in range(1, 400):
        nodelist = tuple(rng.sample(names, rng.randint(1, 4))) if rng.random() < 0.4 else None
        exclude = tuple(rng.sample(names, rng.randint(1, 3))) if rng.random() < 0.3 else None
        jobs.append(limited(job_id, nodelist=nodelist, exclude=exclude,
                            gpus=rng.choice((0, 1, 2, 4, 8)), priority=rng.randint(0, 3),
                            mem_mb=rng.choice((None, None, 30000)),
                            time_limit=rng.choice((None, 100, 1000))))
    decided = schedule(jobs, nodes, busy, NOW, policy)
    held = {(job.node, i) for job in busy for i in job.alloc}
    for job, alloc in decided.starts:
        assert alloc.node != "n3"
        assert job.nodelist is None or alloc.node in job.nodelist
        assert job.exclude is None or alloc.node not in job.exclude
        for i in alloc.gpu_ids:
            if job.mem_mb is None:
                assert (alloc.node, i) not in held
            if (alloc.node, i) in decided.reserved:
                assert job.time_limit and NOW + job.time_limit <= decided.shadow_time
        if job.mem_mb is None:
            held.update((alloc.node, i) for i in alloc.gpu_ids)
    assert set(started(decided)) | set(decided.waiting) == set(range(1, 400))
    assert scheduler.NO_ALLOWED_NODE_UP in decided.waiting.values()


def test_time_slice_gains_a_limited_job_only_from_its_nodes():
    nodes = [node("a", 4), node("c", 4)]
    old = running(100, "a", (0, 1), start_time=NOW - 900)
    young = running(101, "a", (2, 3), start_time=NOW - 800)
    other = running(102, "c", (0, 1, 2, 3), start_time=NOW - 100)
    busy = [old, young, other]
    assert time_slice_victims([pending(1, gpus=4)], nodes, busy, busy, NOW) == [102]
    assert time_slice_victims([limited(1, gpus=4, nodelist=("a",))], nodes, busy, busy, NOW) \
        == [100, 101]
    assert time_slice_victims([limited(1, gpus=2, exclude=("c",))], nodes, busy, busy, NOW) \
        == [100]
    assert time_slice_victims([limited(1, gpus=2, exclude=("a", "c"))], nodes, busy, busy,
                              NOW) == []
    # A limited job that gains nothing does not hide an unlimited one asking the same.
    jobs = [limited(1, gpus=2, nodelist=("c",)), pending(2, gpus=2)]
    assert time_slice_victims(jobs, nodes, busy, [old, young], NOW) == [100]


def test_time_slice_ignores_submit_only_nodes():
    nodes = [submit_only("relay", 4), node("a", 2)]
    busy = [running(100, "a", (0, 1), start_time=NOW - 900)]
    assert time_slice_victims([pending(1, gpus=2)], nodes, busy, busy, NOW) == [100]
    assert time_slice_victims([pending(1, gpus=4)], nodes, busy, busy, NOW) == []


def odd_node(name, indices, memory_mb=GB80, state=NodeState.UP):
    return Node(name, [Gpu(i, "GPU-%s-%d" % (name, i), "A100", memory_mb) for i in indices],
                state)


def limited_cluster():
    """a: 4 GPUs of 80 GB; b: 8 GPUs of 40 GB, down; hi: GPUs 4-7; relay: submit-only, 16."""
    return [node("a", 4), node("b", 8, memory_mb=40960, state=NodeState.DOWN),
            odd_node("hi", range(4, 8)), submit_only("relay", 16)]


@pytest.mark.parametrize("request_, reason", [
    (ResourceRequest(gpus=8, nodelist=("a", "b")), None),
    (ResourceRequest(gpus=0, exclude=("a",)), None),
    (ResourceRequest(gpu_ids=(1, 6), nodelist=("b",)), None),
    (ResourceRequest(gpus=8, nodelist=("a",)),
     "asks for 8 GPUs; the largest node it may use (a) has 4"),
    (ResourceRequest(gpus=8, nodelist=("a", "hi")),
     "asks for 8 GPUs; the largest nodes it may use (a, hi) have 4"),
    (ResourceRequest(gpus=16, exclude=("a",)),
     "asks for 16 GPUs; the largest node it may use (b) has 8"),
    (ResourceRequest(gpu_ids=(5,), nodelist=("a",)), "asks for GPU 5; node a has GPUs 0-3"),
    (ResourceRequest(gpu_ids=(1, 9), nodelist=("a", "hi")),
     "asks for GPUs 1,9; the nodes it may use (a, hi) have GPUs 0-7"),
    (ResourceRequest(gpu_ids=(1, 6), nodelist=("a", "hi")),
     "GPUs 1,6 are not all on one node it may use (a, hi)"),
    (ResourceRequest(gpu_ids=(6,), mem_mb=50000, nodelist=("b",)),
     "asks for 50000 MB per GPU on GPU 6; no node it may use (b) has that much on it "
     "(at most 40960 MB)"),
    (ResourceRequest(gpus=1, mem_mb=50000, nodelist=("b",)),
     "asks for 50000 MB per GPU; the largest GPU on node b has 40960 MB"),
    (ResourceRequest(gpus=1, mem_mb=100000, exclude=("b",)),
     "asks for 100000 MB per GPU; the largest GPU on the nodes it may use (a, hi) has 81920 MB"),
    (ResourceRequest(gpus=5, mem_mb=50000, nodelist=("a", "b")),
     "asks for 5 GPUs with 50000 MB each; no node it may use (a, b) has more than 4 such GPUs"),
    (ResourceRequest(gpus=1, exclude=("a", "b", "hi")), "--exclude leaves no node to run on"),
    (ResourceRequest(gpus=0, nodelist=("a",), exclude=("a",)),
     "--nodelist and --exclude leave no node to run on"),
    (ResourceRequest(gpus=1, nodelist=("relay",)), "node relay is submit-only: it runs no jobs"),
    (ResourceRequest(gpus=0, nodelist=("relay", "a"), exclude=("a",)),
     "node relay is submit-only: it runs no jobs"),
    (ResourceRequest(gpus=1, nodelist=("gone",)), "--nodelist names no node of this cluster"),
    # Unlimited requests: the submit-only node's 16 GPUs count for nothing.
    (ResourceRequest(gpus=16), "asks for 16 GPUs; the largest node has 8"),
    (ResourceRequest(gpus=0), None),
])
def test_unsatisfiable_reason_for_limited_requests(request_, reason):
    assert unsatisfiable_reason(request_, limited_cluster()) == reason


def test_unsatisfiable_reason_with_only_submit_only_nodes():
    relays = [submit_only("r1", 4), submit_only("r2", 4)]
    assert unsatisfiable_reason(ResourceRequest(gpus=1), relays) == \
        "asks for 1 GPU; this cluster has no GPUs"
    assert unsatisfiable_reason(ResourceRequest(gpus=1, nodelist=("r1", "r2")), relays) == \
        "nodes r1, r2 are submit-only: they run no jobs"
    gpuless = [Node("cpu", [])]
    assert unsatisfiable_reason(ResourceRequest(gpus=2, nodelist=("cpu",)), gpuless) == \
        "asks for 2 GPUs; no node it may use (cpu) has GPUs"
