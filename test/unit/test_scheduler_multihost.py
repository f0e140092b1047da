"""Jobs on several hosts at once: placement, all or nothing, backfill, reasons, admission."""

import math
import random
import types

import pytest

from mgpu import scheduler
from mgpu.model import Allocation, Job, JobState, NodeState, ResourceRequest
from mgpu.scheduler import SPREAD, schedule, time_slice_victims, unsatisfiable_reason

from test_scheduler import (GB80, NOW, ends_in, limited, node, pending, running, started,
                            submit_only)


def gang(job_id, nnodes=2, gpus=1, node_gpu_ids=None, nodelist=None, exclude=None,
         mem_mb=None, priority=0, time_limit=None):
    """A pending job on `nnodes` hosts with `gpus` GPUs each (or exactly node_gpu_ids)."""
    return Job(id=job_id, priority=priority, queue_seq=job_id, gpus=gpus, nnodes=nnodes,
               node_gpu_ids=node_gpu_ids, nodelist=nodelist, exclude=exclude, mem_mb=mem_mb,
               time_limit=time_limit, state=JobState.PENDING)


def running_gang(job_id, parts, mem_mb=None, start_time=NOW - 100, time_limit=None):
    """A running job holding parts ((host, GPU ids), ...); node and alloc are its first part."""
    return Job(id=job_id, priority=0, queue_seq=job_id, gpus=len(parts[0][1]), nnodes=len(parts),
               mem_mb=mem_mb, time_limit=time_limit, state=JobState.RUNNING, node=parts[0][0],
               alloc=parts[0][1], parts=parts, start_time=start_time)


def four_hosts_partly_busy():
    """a, b, c, d with 4 GPUs each: a 4 free, b 2 free (GPUs 2, 3), c 3 free (1-3), d 4 free."""
    nodes = [node("a"), node("b"), node("c"), node("d")]
    busy = [running(100, "b", (0, 1)), running(101, "c", (0,))]
    return nodes, busy


# ---------------------------------------------------------------------------------------------
# Choosing the hosts


def test_fill_first_takes_the_best_fit_hosts_rank_0_first():
    nodes, busy = four_hosts_partly_busy()
    decided = schedule([gang(1, nnodes=2, gpus=2)], nodes, busy, NOW)
    assert started(decided) == {1: (Allocation("b", (2, 3)), Allocation("c", (1, 2)))}
    assert decided.waiting == {} and decided.head is None


def test_spread_takes_the_hosts_with_most_free_gpus_ties_by_list_order():
    nodes, busy = four_hosts_partly_busy()
    decided = schedule([gang(1, nnodes=3, gpus=2)], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: (Allocation("a", (0, 1)), Allocation("d", (0, 1)),
                                    Allocation("c", (1, 2)))}


def test_hosts_are_distinct_even_when_one_host_could_hold_every_part():
    decided = schedule([gang(1, nnodes=2, gpus=2)], [node("big", 8), node("small", 2)], [], NOW)
    assert started(decided) == {1: (Allocation("small", (0, 1)), Allocation("big", (0, 1)))}
    decided = schedule([gang(1, nnodes=2, gpus=2)], [node("big", 8)], [], NOW)
    assert decided.starts == []
    assert decided.waiting[1] == "Resources: no 2 hosts that are up have 2 GPUs each"


def test_starts_of_one_host_jobs_keep_their_shape_beside_jobs_on_several_hosts():
    nodes, busy = four_hosts_partly_busy()
    decided = schedule([pending(1, gpus=2), gang(2, nnodes=2, gpus=4), pending(3)],
                       nodes, busy, NOW)
    assert started(decided) == {1: Allocation("b", (2, 3)),
                                2: (Allocation("a", (0, 1, 2, 3)), Allocation("d", (0, 1, 2, 3))),
                                3: Allocation("c", (1,))}
    assert [job.id for job, _ in decided.starts] == [1, 2, 3]


def test_nodelist_naming_exactly_its_hosts():
    nodes, busy = four_hosts_partly_busy()
    for policy in scheduler.POLICIES:
        decided = schedule([gang(1, gpus=2, nodelist=("d", "c"))], nodes, busy, NOW, policy)
        assert {a.node for a in started(decided)[1]} == {"c", "d"}
    decided = schedule([gang(1, gpus=2, nodelist=("d", "c"))], nodes, busy, NOW)
    assert started(decided) == {1: (Allocation("c", (1, 2)), Allocation("d", (0, 1)))}


def test_nodelist_naming_more_hosts_chooses_among_them():
    nodes, busy = four_hosts_partly_busy()
    decided = schedule([gang(1, gpus=2, nodelist=("a", "c", "d"))], nodes, busy, NOW)
    assert started(decided) == {1: (Allocation("c", (1, 2)), Allocation("a", (0, 1)))}
    decided = schedule([gang(1, gpus=2, nodelist=("b", "c", "d"))], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: (Allocation("d", (0, 1)), Allocation("c", (1, 2)))}


def test_nodelist_naming_fewer_hosts_includes_them_and_chooses_the_rest_elsewhere():
    nodes, busy = four_hosts_partly_busy()
    decided = schedule([gang(1, nnodes=3, gpus=2, nodelist=("d",))], nodes, busy, NOW)
    # d must be used; the two best fits besides it are b (2 free) and c (3 free).
    assert started(decided) == {1: (Allocation("b", (2, 3)), Allocation("c", (1, 2)),
                                    Allocation("d", (0, 1)))}
    decided = schedule([gang(1, nnodes=2, gpus=2, nodelist=("b",))], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: (Allocation("a", (0, 1)), Allocation("b", (2, 3)))}


def test_exclude_keeps_every_part_off_those_hosts():
    nodes, busy = four_hosts_partly_busy()
    decided = schedule([gang(1, gpus=2, exclude=("b",))], nodes, busy, NOW)
    assert started(decided) == {1: (Allocation("c", (1, 2)), Allocation("a", (0, 1)))}
    decided = schedule([gang(1, nnodes=3, gpus=2, exclude=("a", "b"))], nodes, busy, NOW)
    assert decided.waiting[1] == "Resources: no 3 hosts it may use have 2 GPUs each"
    decided = schedule([gang(1, nnodes=2, gpus=2, nodelist=("a",), exclude=("d",))],
                       nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: (Allocation("a", (0, 1)), Allocation("c", (1, 2)))}


def test_many_allowed_hosts_walk_the_buckets_like_an_unlimited_job():
    nodes = [node("n%d" % i, 4) for i in range(12)]
    busy = [running(100 + i, "n%d" % i, tuple(range(i % 4))) for i in range(12)]
    decided = schedule([gang(1, nnodes=3, gpus=2, exclude=("n2",))], nodes, busy, NOW)
    assert [a.node for a in started(decided)[1]] == ["n6", "n10", "n1"]
    decided = schedule([gang(1, nnodes=3, gpus=2, exclude=("n0",), mem_mb=1000)],
                       nodes, busy, NOW, SPREAD)
    assert [a.node for a in started(decided)[1]] == ["n4", "n8", "n1"]


def test_node_gpu_ids_take_exactly_those_gpus_in_the_order_given():
    nodes, busy = four_hosts_partly_busy()
    job = gang(1, node_gpu_ids=(("d", (3, 1)), ("b", (2,))))
    decided = schedule([job], nodes, busy, NOW, SPREAD)
    assert started(decided) == {1: (Allocation("d", (1, 3)), Allocation("b", (2,)))}
    decided = schedule([gang(1, node_gpu_ids=(("d", (1,)), ("b", (0, 2))))], nodes, busy, NOW)
    assert decided.starts == []
    assert decided.waiting[1] == "Resources: needs GPU 1 on d and GPUs 0,2 on b (b busy)"


def test_node_gpu_ids_on_one_host_start_with_one_allocation():
    nodes, busy = four_hosts_partly_busy()
    decided = schedule([gang(1, node_gpu_ids=(("c", (2, 3)),))], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("c", (2, 3))}


def test_memory_per_gpu_applies_on_every_host():
    nodes = [node("a", 2), node("b", 2), node("c", 2)]
    busy = [running(100, "a", (0,), mem_mb=50000), running(101, "a", (1,), mem_mb=50000),
            running(102, "b", (0,), mem_mb=20000)]
    decided = schedule([gang(1, gpus=2, mem_mb=40000)], nodes, busy, NOW)
    # a has 31920 MB left per GPU; b shares GPU 0 (packed first) and GPU 1.
    assert started(decided) == {1: (Allocation("b", (0, 1), 40000),
                                    Allocation("c", (0, 1), 40000))}
    decided = schedule([gang(1, gpus=2)], nodes, busy, NOW)
    assert decided.starts == []  # without --mem only whole free GPUs count: c alone has 2
    assert decided.waiting[1] == "Resources: needs 2 hosts with 2 GPUs free each, 1 has"
    decided = schedule([gang(1, gpus=2, mem_mb=GB80)], nodes, busy, NOW)
    assert decided.waiting[1] == \
        "Resources: needs 2 hosts with 2 GPUs with 81920 MB free each, 1 has"


# ---------------------------------------------------------------------------------------------
# All or nothing


def test_one_host_short_nothing_starts_and_the_head_keeps_the_free_host():
    nodes = [node("a", 4), node("b", 4)]
    busy = [running(100, "b", (0, 1, 2))]
    blocker = pending(1, gpus=8, priority=9)  # never fits: does not become the head
    jobs = [blocker, gang(2, gpus=2, priority=5), pending(3, gpus=4)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.head == 2
    assert decided.starts == []
    assert decided.waiting[2] == "Resources: needs 2 hosts with 2 GPUs free each, 1 has"
    # b waits on a job without a limit: the head still keeps a's GPUs from a job without one.
    assert decided.shadow_time == math.inf
    assert decided.reserved == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    assert decided.waiting[3] == "Priority: behind job 2"


def test_a_job_on_several_hosts_behind_the_head_takes_nothing_from_its_hosts():
    nodes = [node("a", 4), node("b", 4), node("c", 4)]
    busy = [running(100, "b", (0, 1, 2)), running(101, "c", (0,), time_limit=ends_in(50))]
    head = limited(1, nodelist=("c",), gpus=4, priority=9)
    decided = schedule([head, gang(2, gpus=2, priority=5), pending(3, gpus=4)], nodes, busy, NOW)
    assert decided.head == 1
    assert decided.waiting[2] == "Priority: behind job 1"
    # Host a would have been one of its two: it stays free, and the next job takes it.
    assert started(decided) == {3: Allocation("a", (0, 1, 2, 3))}


def test_a_gang_that_fits_takes_all_its_hosts_in_the_same_pass():
    nodes = [node("a", 2), node("b", 2), node("c", 2)]
    decided = schedule([gang(1, nnodes=3, gpus=2), pending(2)], nodes, [], NOW)
    assert len(started(decided)[1]) == 3
    assert decided.waiting[2].startswith("Resources: needs 1 GPU")


# ---------------------------------------------------------------------------------------------
# Backfill around a head on several hosts


def two_hosts_ending_soon():
    """a: GPUs 0,1 busy until NOW+100; b: GPUs 0-2 busy until NOW+200; 4 GPUs each."""
    nodes = [node("a", 4), node("b", 4)]
    busy = [running(100, "a", (0, 1), time_limit=ends_in(100)),
            running(101, "b", (0, 1, 2), time_limit=ends_in(200))]
    return nodes, busy


def test_head_on_several_hosts_reserves_gpus_on_every_host():
    nodes, busy = two_hosts_ending_soon()
    decided = schedule([gang(1, gpus=4)], nodes, busy, NOW)
    assert decided.head == 1
    assert decided.shadow_time == NOW + 200
    assert decided.reserved == {(h, i) for h in "ab" for i in range(4)}
    assert decided.waiting[1] == \
        "Resources: needs 2 hosts with 4 GPUs free each, none has; expected within 3:20"


def test_short_job_backfills_onto_reserved_gpus_long_one_is_refused():
    nodes, busy = two_hosts_ending_soon()
    jobs = [gang(1, gpus=4, priority=9), pending(2, time_limit=150), pending(3, time_limit=300),
            pending(4), pending(5, gpus=2, time_limit=200)]
    decided = schedule(jobs, nodes, busy, NOW)
    # 2 ends before the head starts: it takes a free GPU the head has set aside. 5 would too,
    # but no host has 2 such GPUs left; 3 and 4 would delay the head.
    assert started(decided) == {2: Allocation("a", (2,))}
    assert decided.waiting[3] == decided.waiting[4] == decided.waiting[5] == \
        "Priority: behind job 1"


def test_short_job_on_several_hosts_backfills_long_one_is_refused():
    nodes = [node("a", 4), node("b", 4), node("c", 4)]
    busy = [running(100, "a", (0, 1), time_limit=ends_in(100)),
            running(101, "b", (0, 1), time_limit=ends_in(200)),
            running(102, "c", (0, 1, 2, 3))]
    jobs = [gang(1, gpus=4, priority=9), gang(2, gpus=2, time_limit=500),
            gang(3, gpus=2, time_limit=150)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.reserved == {(h, i) for h in "ab" for i in range(4)}
    assert decided.waiting[2] == "Priority: behind job 1"
    assert started(decided) == {3: (Allocation("a", (2, 3)), Allocation("b", (2, 3)))}


def test_small_jobs_cannot_starve_a_head_on_several_hosts():
    # a is free now, b frees at NOW+100: without a reservation on a, a stream of small jobs
    # without limits would keep a busy and the job on two hosts would never start.
    nodes = [node("a", 4), node("b", 4)]
    busy = [running(100, "b", (0, 1, 2, 3), time_limit=ends_in(100))]
    jobs = [gang(1, gpus=4, priority=9)] + [pending(i) for i in range(2, 12)]
    for policy in scheduler.POLICIES:
        decided = schedule(jobs, nodes, busy, NOW, policy)
        assert decided.starts == []
        assert decided.reserved == {(h, i) for h in "ab" for i in range(4)}
        assert decided.waiting[1] == \
            "Resources: needs 2 hosts with 4 GPUs free each, 1 has; expected within 1:40"
        assert all(decided.waiting[i] == "Priority: behind job 1" for i in range(2, 12))


def test_head_reserves_where_the_policy_would_place_it_when_hosts_free_up():
    nodes = [node("a", 4), node("b", 2), node("c", 2)]
    busy = [running(100, "a", (0, 1, 2, 3), time_limit=ends_in(50)),
            running(101, "b", (0, 1), time_limit=ends_in(50)),
            running(102, "c", (0, 1), time_limit=ends_in(50))]
    decided = schedule([gang(1, gpus=2)], nodes, busy, NOW)
    assert decided.reserved == {("b", 0), ("b", 1), ("c", 0), ("c", 1)}
    decided = schedule([gang(1, gpus=2)], nodes, busy, NOW, SPREAD)
    assert {h for h, _ in decided.reserved} == {"a", "b"}


def test_node_gpu_ids_head_reserves_those_gpus():
    nodes, busy = two_hosts_ending_soon()
    decided = schedule([gang(1, node_gpu_ids=(("b", (1,)), ("a", (0, 3))))], nodes, busy, NOW)
    assert decided.reserved == {("b", 1), ("a", 0), ("a", 3)}
    assert decided.waiting[1] == \
        "Resources: needs GPU 1 on b and GPUs 0,3 on a (b, a busy); expected within 3:20"


def test_one_host_head_counts_jobs_started_on_several_hosts_in_the_pass():
    nodes = [node("a", 2), node("b", 2)]
    jobs = [gang(1, gpus=1, priority=9, time_limit=600), pending(2, gpus=2, priority=5)]
    decided = schedule(jobs, nodes, [], NOW)
    assert started(decided) == {1: (Allocation("a", (0,)), Allocation("b", (0,)))}
    assert decided.shadow_time == NOW + 600
    assert decided.reserved == {("a", 0), ("a", 1)}


# ---------------------------------------------------------------------------------------------
# Running jobs on several hosts


def test_running_job_holds_gpus_on_every_host():
    nodes = [node("a", 2), node("b", 2), node("c", 2)]
    busy = [running_gang(100, (("a", (0, 1)), ("b", (0, 1))))]
    decided = schedule([pending(1, gpus=2), pending(2)], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("c", (0, 1))}
    assert decided.waiting[2].startswith("Resources: needs 1 GPU on one node, at most 0 free")


def test_running_job_on_several_hosts_frees_them_all_at_its_end():
    nodes = [node("a", 2), node("b", 2)]
    busy = [running_gang(100, (("a", (0, 1)), ("b", (0, 1))), time_limit=ends_in(100))]
    decided = schedule([pending(1, gpus=2)], nodes, busy, NOW)
    assert decided.shadow_time == NOW + 100
    assert decided.reserved == {("a", 0), ("a", 1)}
    decided = schedule([gang(1, gpus=2)], nodes, busy, NOW)
    assert decided.shadow_time == NOW + 100
    assert decided.reserved == {(h, i) for h in "ab" for i in range(2)}
    # Without a limit it ends "never" but still on all hosts at once.
    busy = [running_gang(100, (("a", (0, 1)), ("b", (0, 1)))),
            running(101, "c", (0,), start_time=NOW - 50)]
    decided = schedule([gang(1, gpus=2)], nodes + [node("c", 2)], busy, NOW)
    assert decided.shadow_time == math.inf
    assert decided.reserved == {(h, i) for h in "ab" for i in range(2)}


def test_running_job_parts_on_a_down_host_are_ignored():
    nodes = [node("a", 2), node("b", 2, state=NodeState.DOWN)]
    busy = [running_gang(100, (("b", (0, 1)), ("a", (0,))))]
    decided = schedule([pending(1)], nodes, busy, NOW)
    assert started(decided) == {1: Allocation("a", (1,))}


# ---------------------------------------------------------------------------------------------
# Reasons


def test_reasons_for_jobs_that_can_never_fit_the_up_hosts():
    nodes = [node("a", 4), node("b", 2, memory_mb=40960), node("c", 8, state=NodeState.DOWN)]
    jobs = [gang(1, gpus=4, priority=9), gang(2, gpus=2, mem_mb=50000, priority=9),
            gang(3, nnodes=3, gpus=0, priority=9), gang(4, gpus=2, nodelist=("c",), priority=9),
            gang(5, node_gpu_ids=(("a", (0, 1)), ("c", (0,))), priority=9),
            gang(6, node_gpu_ids=(("a", (7,)), ("b", (0,))), priority=9),
            gang(7, node_gpu_ids=(("a", (0,)), ("b", (1,))), mem_mb=50000, priority=9),
            gang(8, gpus=4, nodelist=("b",), priority=9),
            gang(9, gpus=1, exclude=("a", "b"), priority=9),
            gang(10, node_gpu_ids=(("a", (0,)), ("b", (1,))), exclude=("b",), priority=9),
            pending(11, gpus=4)]
    decided = schedule(jobs, nodes, [], NOW)
    assert decided.waiting == {
        1: "Resources: no 2 hosts that are up have 4 GPUs each",
        2: "Resources: no 2 hosts that are up have 2 GPUs with 50000 MB free each",
        3: "Resources: fewer than 3 hosts are up",
        4: "Resources: needs host c, which is not up",
        5: "Resources: needs GPUs 0,1 on a and GPU 0 on c (c is not up)",
        6: "Resources: needs GPU 7 on a and GPU 0 on b (a has no GPU 7)",
        7: "Resources: needs GPU 0 on a and GPU 1 on b with 50000 MB free each "
           "(b never has 50000 MB free on GPU 1)",
        8: "Resources: host b never has 4 GPUs free",
        9: scheduler.NO_ALLOWED_NODE_UP,
        10: "Resources: needs GPU 0 on a and GPU 1 on b (host b is excluded)",
    }
    assert started(decided) == {11: Allocation("a", (0, 1, 2, 3))}
    assert decided.head is None


def test_reasons_for_a_head_limited_to_some_hosts():
    nodes = [node("a", 4), node("b", 4), node("c", 4)]
    busy = [running(100, "a", (0, 1, 2), time_limit=ends_in(100)),
            running(101, "b", (0,), time_limit=ends_in(60))]
    decided = schedule([gang(1, gpus=3, nodelist=("a", "b"))], nodes, busy, NOW)
    assert decided.waiting[1] == \
        "Resources: needs 2 hosts it may use with 3 GPUs free each, 1 has; expected within 1:40"
    decided = schedule([gang(1, nnodes=3, gpus=3, nodelist=("a",))], nodes, busy, NOW)
    assert decided.waiting[1] == ("Resources: needs 3 hosts with 3 GPUs free each, "
                                  "including a (a busy); expected within 1:40")
    decided = schedule([gang(1, nnodes=3, gpus=4, nodelist=("c",))], nodes, busy, NOW)
    assert decided.waiting[1] == ("Resources: needs 3 hosts with 4 GPUs free each, "
                                  "including c, 1 has; expected within 1:40")


def test_jobs_behind_the_head_are_settled_by_their_whole_request():
    nodes = [node("a", 2), node("b", 2), node("c", 2)]
    busy = [running(100, "a", (0, 1)), running(101, "b", (0, 1), time_limit=ends_in(100))]
    jobs = [gang(1, gpus=2, priority=9), gang(2, gpus=2), gang(3, gpus=2, nodelist=("c",)),
            gang(4, gpus=1, exclude=("a",)), pending(5)]
    decided = schedule(jobs, nodes, busy, NOW)
    assert decided.head == 1
    assert decided.reserved == {("b", 0), ("b", 1), ("c", 0), ("c", 1)}
    assert decided.waiting[2] == decided.waiting[3] == decided.waiting[4] == \
        "Priority: behind job 1"
    assert decided.waiting[5] == "Priority: behind job 1"


# ---------------------------------------------------------------------------------------------
# Admission


def admission_cluster():
    """a: 4 GPUs of 80 GB; b: 8 of 40 GB, down; c: 2; relay: submit-only with 16."""
    return [node("a", 4), node("b", 8, memory_mb=40960, state=NodeState.DOWN), node("c", 2),
            submit_only("relay", 16)]


def request(nnodes=None, gpus=1, node_gpu_ids=None, mem_mb=None, nodelist=None, exclude=None,
            gpu_ids=None):
    """A Job-like request on several hosts, as the controller passes one."""
    return types.SimpleNamespace(nnodes=nnodes, gpus=gpus, gpu_ids=gpu_ids,
                                 node_gpu_ids=node_gpu_ids, mem_mb=mem_mb,
                                 nodelist=nodelist, exclude=exclude)


@pytest.mark.parametrize("request_, reason", [
    (request(nnodes=2, gpus=4), None),
    (request(nnodes=3, gpus=2), None),
    (request(nnodes=3, gpus=0), None),
    (request(nnodes=2, gpus=4, nodelist=("c",)),
     "asks for 2 hosts with 4 GPUs each, including c; node c has 2 GPUs"),
    (request(nnodes=4, gpus=1), "asks for 4 hosts; this cluster has 3 that run jobs"),
    (request(nnodes=3, gpus=4), "asks for 3 hosts with 4 GPUs each; only 2 hosts have 4 GPUs"),
    (request(nnodes=2, gpus=16), "asks for 2 hosts with 16 GPUs each; no host has 16 GPUs"),
    (request(nnodes=2, gpus=4, mem_mb=50000),
     "asks for 2 hosts with 4 GPUs of 50000 MB each; only 1 host has 4 such GPUs"),
    (request(nnodes=2, gpus=2, mem_mb=50000), None),
    (request(nnodes=2, gpus=4, nodelist=("a", "c")),
     "asks for 2 hosts with 4 GPUs each; only 1 host it may use has 4 GPUs"),
    (request(nnodes=3, gpus=4, nodelist=("a",)),
     "asks for 3 hosts with 4 GPUs each; only 1 host besides a has 4 GPUs"),
    (request(nnodes=3, gpus=1, exclude=("a",)), "asks for 3 hosts; it may use only 2 (b, c)"),
    (request(nnodes=2, gpus=1, nodelist=("relay",)), "node relay is submit-only: it runs no jobs"),
    (request(nnodes=2, gpus=1, exclude=("a", "b", "c")), "--exclude leaves no node to run on"),
    (request(nnodes=2, gpu_ids=(0, 3)), None),
    (request(nnodes=2, gpu_ids=(0, 5)), "asks for 2 hosts with GPUs 0,5 each; only 1 host has "
                                        "GPUs 0,5"),
    (request(node_gpu_ids=(("a", (0, 1)), ("b", (7,)))), None),
    (request(node_gpu_ids=(("a", (0, 1)), ("x", (0,)))),
     "asks for GPUs 0,1 on a and GPU 0 on x; x is not a node of this cluster"),
    (request(node_gpu_ids=(("a", (5,)), ("b", (0,)))), "asks for GPU 5 on a; node a has GPUs 0-3"),
    (request(node_gpu_ids=(("a", (0,)), ("a", (1,)))),
     "asks for GPU 0 on a and GPU 1 on a; host a is named twice"),
    (request(node_gpu_ids=(("a", (0,)), ("c", (1,))), exclude=("c",)),
     "asks for GPU 0 on a and GPU 1 on c; host c is excluded"),
    (request(node_gpu_ids=(("a", (0,)), ("c", (1,))), nodelist=("a", "b")),
     "asks for GPU 0 on a and GPU 1 on c; host c is not in its --nodelist"),
    (request(node_gpu_ids=(("a", (0,)), ("relay", (1,)))),
     "node relay is submit-only: it runs no jobs"),
    (request(node_gpu_ids=(("a", (0,)), ("b", (6, 7))), mem_mb=50000),
     "asks for 50000 MB per GPU on GPUs 6,7 on b; GPU 6 there has 40960 MB"),
])
def test_unsatisfiable_reason_for_requests_on_several_hosts(request_, reason):
    assert unsatisfiable_reason(request_, admission_cluster()) == reason


def test_unsatisfiable_reason_takes_a_job_and_still_a_plain_request():
    job = gang(1, nnodes=3, gpus=4)
    assert unsatisfiable_reason(job, admission_cluster()) == \
        "asks for 3 hosts with 4 GPUs each; only 2 hosts have 4 GPUs"
    assert unsatisfiable_reason(gang(1, nnodes=1, gpus=4), admission_cluster()) is None
    assert unsatisfiable_reason(ResourceRequest(gpus=16), admission_cluster()) == \
        "asks for 16 GPUs; the largest node has 8"
    assert unsatisfiable_reason(request(nnodes=2), [submit_only("r", 4)]) == \
        "asks for 2 hosts; this cluster has no node that runs jobs"


# ---------------------------------------------------------------------------------------------
# Time slicing


def test_time_slice_never_stops_a_job_on_several_hosts():
    nodes = [node("a", 4), node("b", 4)]
    wide = running_gang(100, (("a", (0, 1, 2, 3)), ("b", (0, 1))), start_time=NOW - 900)
    narrow = running(101, "b", (2, 3), start_time=NOW - 800)
    busy = [wide, narrow]
    assert time_slice_victims([pending(1, gpus=4)], nodes, busy, busy, NOW) == []
    assert time_slice_victims([pending(1, gpus=2)], nodes, busy, busy, NOW) == [101]
    # It still holds b's GPUs 0,1: stopping 101 does not make room for 3 GPUs.
    assert time_slice_victims([pending(1, gpus=3)], nodes, busy, busy, NOW) == []


def test_time_slice_passes_over_a_pending_job_on_several_hosts():
    nodes = [node("a", 2), node("b", 2)]
    busy = [running(100, "a", (0, 1), start_time=NOW - 900),
            running(101, "b", (0, 1), start_time=NOW - 900)]
    assert time_slice_victims([gang(1, gpus=2)], nodes, busy, busy, NOW) == []
    assert time_slice_victims([gang(1, gpus=2), pending(2, gpus=2)], nodes, busy, busy,
                              NOW) == [100]


# ---------------------------------------------------------------------------------------------
# A random pass keeps every rule


def random_cluster_with_gangs(rng, size):
    nodes = [node("n%d" % i, rng.choice((2, 4, 8)),
                  state=NodeState.UP if i % 6 else NodeState.DOWN) for i in range(size)]
    nodes[3].submit_only = True
    runnable = [n for n in nodes if not n.submit_only]
    busy = []
    free = {n.name: list(range(len(n.gpus))) for n in runnable}
    for job_id in range(1000, 1000 + size):
        if rng.random() < 0.3:
            hosts = rng.sample(runnable, 2)
            if all(free[h.name] for h in hosts):
                parts = tuple((h.name, (free[h.name].pop(),)) for h in hosts)
                busy.append(running_gang(job_id, parts,
                                         time_limit=rng.choice((None, 300, 3000))))
        else:
            host = rng.choice(runnable)
            if free[host.name]:
                busy.append(running(job_id, host.name, (free[host.name].pop(),),
                                    mem_mb=rng.choice((None, 20000)),
                                    time_limit=rng.choice((None, 200, 5000))))
    return nodes, busy


def random_queue(rng, names):
    jobs = []
    for job_id in range(1, 400):
        roll = rng.random()
        common = dict(priority=rng.randint(0, 3), mem_mb=rng.choice((None, None, 30000)),
                      time_limit=rng.choice((None, 100, 1000)))
        nodelist = tuple(rng.sample(names, rng.randint(1, 4))) if rng.random() < 0.3 else None
        exclude = tuple(rng.sample(names, rng.randint(1, 2))) if rng.random() < 0.2 else None
        if roll < 0.3:
            jobs.append(gang(job_id, nnodes=rng.randint(2, 4), gpus=rng.choice((0, 1, 2, 4)),
                             nodelist=nodelist, exclude=exclude, **common))
        elif roll < 0.35:
            hosts = rng.sample(names, rng.randint(1, 3))
            exact = tuple((h, tuple(rng.sample(range(4), rng.randint(1, 2)))) for h in hosts)
            jobs.append(gang(job_id, node_gpu_ids=exact, **common))
        else:
            jobs.append(limited(job_id, nodelist=nodelist, exclude=exclude,
                                gpus=rng.choice((0, 1, 2, 4)), **common))
    return jobs


@pytest.mark.parametrize("policy", scheduler.POLICIES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_random_pass_never_overcommits_and_keeps_parts_on_allowed_distinct_hosts(policy,
                                                                                   seed):
    rng = random.Random(seed)
    nodes, busy = random_cluster_with_gangs(rng, 24)
    names = [n.name for n in nodes]
    jobs = random_queue(rng, names)
    decided = schedule(jobs, nodes, busy, NOW, policy)

    runnable = {n.name: n for n in nodes if n.state == NodeState.UP and not n.submit_only}
    holders = {}
    for job in busy:
        for name, ids in (job.parts or ((job.node, job.alloc),)):
            for i in ids:
                holders.setdefault((name, i), []).append(job.mem_mb)
    gangs_started = 0
    # Jobs decided before the head may hold GPUs it reserves: they count as ending then.
    after_head = set(decided.order[decided.order.index(decided.head) + 1:]) \
        if decided.head is not None else set()
    for job, placed in decided.starts:
        parts = placed if isinstance(placed, tuple) else (placed,)
        if job.multi_host:
            gangs_started += 1
            assert isinstance(placed, tuple) and len(parts) == job.nnodes
        else:
            assert isinstance(placed, Allocation)
        hosts = [a.node for a in parts]
        assert len(set(hosts)) == len(hosts)
        for alloc in parts:
            assert alloc.node in runnable
            assert alloc.mem_mb == job.mem_mb
            assert job.exclude is None or alloc.node not in job.exclude
            assert list(alloc.gpu_ids) == sorted(set(alloc.gpu_ids))
        if job.node_gpu_ids:
            assert tuple((a.node, a.gpu_ids) for a in parts) == \
                tuple((h, tuple(sorted(ids))) for h, ids in job.node_gpu_ids)
        else:
            assert all(len(a.gpu_ids) == job.gpus for a in parts)
            if job.nodelist is not None:
                listed = [h for h in dict.fromkeys(job.nodelist)
                          if not (job.exclude and h in job.exclude)]
                if not job.multi_host or len(listed) >= job.nnodes:
                    assert set(hosts) <= set(listed)
                else:
                    assert set(listed) <= set(hosts)
        for alloc in parts:
            for i in alloc.gpu_ids:
                place = (alloc.node, i)
                assert i in {g.index for g in runnable[alloc.node].gpus}
                holders.setdefault(place, []).append(job.mem_mb)
                if place in decided.reserved and job.id in after_head:
                    assert job.time_limit and NOW + job.time_limit <= decided.shadow_time
    for place, mems in holders.items():
        if place[0] not in runnable:
            continue
        if None in mems:
            assert mems == [None], place
        else:
            assert sum(mems) <= GB80, place
    assert set(started(decided)) | set(decided.waiting) == set(range(1, 400))
    assert not set(started(decided)) & set(decided.waiting)
    assert gangs_started and decided.waiting


def test_a_random_pass_reserves_for_a_head_on_several_hosts_without_overcommit():
    rng = random.Random(5)
    for policy in scheduler.POLICIES:
        for _ in range(20):
            nodes, busy = random_cluster_with_gangs(rng, 10)
            names = [n.name for n in nodes]
            head = gang(0, nnodes=rng.randint(2, 3), gpus=rng.choice((2, 4)), priority=99)
            jobs = [head] + random_queue(rng, names)[:60]
            decided = schedule(jobs, nodes, busy, NOW, policy)
            if decided.head != 0:
                continue
            reserved_hosts = {h for h, _ in decided.reserved}
            if decided.reserved:
                assert len(reserved_hosts) == head.nnodes
            assert decided.order[0] == 0
            for job, placed in decided.starts:
                for alloc in placed if isinstance(placed, tuple) else (placed,):
                    for i in alloc.gpu_ids:
                        if (alloc.node, i) in decided.reserved:
                            assert job.time_limit
                            assert NOW + job.time_limit <= decided.shadow_time
