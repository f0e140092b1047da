"""The lifecycle of a job on several hosts in the controller: the two-step launch (rank 0, then
the others once rank 0's host chose MASTER_PORT), each part's start and end, the first failure
stopping the others, failed launches requeuing the whole job (FAILED after three), a lost host
ending the whole job, cancel / time limit / warning / time slice reaching every part,
reconciliation per host, and the queue's view. Jobs on one host behave as before."""

import json
import signal
from unittest.mock import ANY

import pytest

from mgpu import controller as controller_module
from mgpu.controller import MAX_LAUNCH_FAILURES, Controller, Launch, Release, Settings, SignalJob
from mgpu.model import Job, JobState

from test_controller import (BOB, ROOT, T0, Logged, Saved, cancel, cancel_ok, exited, node_up, queue,
                             request, rows_by_id, running_job, submitted)

SIGTERM, SIGKILL = int(signal.SIGTERM), int(signal.SIGKILL)
SIGUSR1 = int(signal.SIGUSR1)
PENDING, RUNNING = JobState.PENDING, JobState.RUNNING
COMPLETED, FAILED, CANCELLED = JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED
TIMEOUT, NODE_FAIL = JobState.TIMEOUT, JobState.NODE_FAIL

PORT = 29500


# ---------------------------------------------------------------------------------------------
# A cluster of three hosts (n1, n2, n3, two GPUs each) and jobs on several of them


def gang(job_id=1, hosts=("n1", "n2"), gpus=2, **fields):
    """A pending job on `hosts` (rank order), with GPUs 0..gpus-1 on each."""
    return Job(id=job_id, user="alice", uid=1000, gid=1000, command=["torchrun", "train.py"],
               cwd="/home/alice/work", output="/home/alice/.mgpu/logs/%d.out" % job_id, gpus=gpus,
               node_gpu_ids=[(host, list(range(gpus))) for host in hosts], priority=0,
               submit_time=T0, queue_seq=job_id, state=PENDING, reason="submitted", **fields)


def cluster(*jobs, nodes=("n1", "n2", "n3"), **settings):
    c = Controller(Settings(**settings), jobs=jobs, next_id=len(jobs) + 1, next_seq=len(jobs) + 1)
    for name in nodes:
        assert c.handle(node_up(name, 2), 0.0) == [Logged("node %s up" % name)]
    return c


def port(c, job_id=1, node="n1", value=PORT, attempt=None, now=T0):
    job = c.jobs[job_id]
    return c.handle({"kind": "job_port", "node": node, "job_id": job_id,
                     "attempt": job.attempt if attempt is None else attempt, "port": value}, now)


def started(c, node, job_id=1, now=T0, attempt=None, pgid=4242):
    job = c.jobs[job_id]
    return c.handle({"kind": "job_started", "node": node, "job_id": job_id,
                     "attempt": job.attempt if attempt is None else attempt,
                     "sup_pid": pgid - 1, "sup_start": 77, "pgid": pgid}, now)


def ended(c, node, now, exit_code=0, signum=None, error=None, job_id=1):
    return exited(c, job_id, now, exit_code, signum, node=node, error=error)


def lost(c, node, now, started, reason="its supervisor disappeared", job_id=1):
    job = c.jobs[job_id]
    return c.handle({"kind": "job_lost", "node": node, "job_id": job_id, "attempt": job.attempt,
                     "started": started, "reason": reason}, now)


def launched(c, job_id=1, now=T0):
    """Start the job: a pass, rank 0's port, and every part's start."""
    c.schedule(now)
    job = c.jobs[job_id]
    assert job.state == RUNNING and job.parts is not None
    port(c, job_id, job.parts[0][0], now=now)
    for host, _ in job.parts:
        started(c, host, job_id, now)
    return job


def signals(actions):
    return [(a.node, a.signum) for a in actions if isinstance(a, SignalJob)]


def releases(actions):
    return [a.node for a in actions if isinstance(a, Release)]


# ---------------------------------------------------------------------------------------------
# Start: rank 0 first, the others once its host chose the port


def test_a_start_saves_the_parts_and_launches_rank_0_only():
    c = cluster(gang(hosts=("n2", "n1")))
    job = c.jobs[1]
    assert c.schedule(T0) == [Saved(1, RUNNING, (PENDING, RUNNING, "", "scheduled"), at=T0),
                              Launch(job, rank=0),
                              Logged("start job 1 on 2 hosts", "rank 0 on n2 GPUs 0,1", "rank 1 on n1 GPUs 0,1")]
    assert (job.node, job.alloc, job.attempt, job.start_time) == ("n2", (0, 1), 1, T0)
    assert job.parts == (("n2", (0, 1)), ("n1", (0, 1)))
    assert (job.part_status, job.master_port) == ([None, None], None)


def test_a_job_placed_by_the_scheduler_on_any_hosts_starts_the_same_way():
    job = gang()
    job.node_gpu_ids, job.nnodes, job.gpus = None, 2, 1
    c = cluster(job)
    actions = c.schedule(T0)
    assert actions == [Saved(1, RUNNING, ANY), Launch(job, rank=0), Logged("start job 1 on 2 hosts")]
    hosts = [host for host, _ in job.parts]
    assert len(set(hosts)) == 2 and job.node == hosts[0] and job.alloc == job.parts[0][1]
    assert all(len(ids) == 1 for _, ids in job.parts)


def test_rank_0s_port_is_saved_then_every_other_rank_is_launched_once():
    c = cluster(gang(hosts=("n1", "n2", "n3")))
    c.schedule(T0)
    job = c.jobs[1]
    assert port(c, now=T0 + 1) == [Saved(1, RUNNING), Launch(job, rank=1), Launch(job, rank=2),
                                   Logged("launch job 1 ranks 1-2", "MASTER_PORT %d on n1" % PORT)]
    assert job.master_port == PORT
    assert port(c, value=PORT + 1, now=T0 + 2) == []  # once
    assert job.master_port == PORT


def test_a_port_from_another_host_or_attempt_is_ignored():
    c = cluster(gang(hosts=("n1", "n2")))
    c.schedule(T0)
    job = c.jobs[1]
    assert port(c, node="n2") == []     # rank 1's host does not choose the port
    assert port(c, node="n3") == []     # a host without a part
    assert port(c, attempt=0) == [] and port(c, attempt=2) == []
    assert port(c, job_id=1, node="n1", attempt=1)[0] == Saved(1, RUNNING)
    assert job.master_port == PORT


def test_a_port_that_comes_while_the_job_is_stopping_launches_nothing():
    c = cluster(gang(), kill_grace=5)
    c.schedule(T0)
    actions = cancel(c, ids=[1], now=T0 + 1)
    assert signals(actions) == [("n1", SIGTERM)]  # rank 1 was never launched
    assert port(c, now=T0 + 2) == [Logged("job 1", "stopping", "not launched")]
    assert c.jobs[1].master_port is None
    assert started(c, "n2") == []  # no part of it on n2
    assert ended(c, "n1", T0 + 3, 143, SIGTERM) == [
        Saved(1, CANCELLED, (RUNNING, CANCELLED, "cancelled by alice", "cancel")), Release("n1", 1, 1),
        Logged("end job 1 CANCELLED")]


# ---------------------------------------------------------------------------------------------
# Starts of the parts, and the queue's view


def test_the_job_has_started_once_every_part_started():
    c = cluster(gang())
    c.schedule(T0)
    port(c)
    assert rows_by_id(c)[1]["started"] is False
    assert started(c, "n1", pgid=500) == [Saved(1, RUNNING)]
    job = c.jobs[1]
    assert (job.sup_pid, job.sup_start, job.pgid) == (499, 77, 500)
    assert job.part_status == ["started", None]
    assert rows_by_id(c)[1]["started"] is False
    assert started(c, "n2", pgid=900) == [Saved(1, RUNNING), Logged("job 1 runs on every host", "n1, n2")]
    assert job.pgid == 500  # the job's process group is rank 0's
    assert job.part_status == ["started", "started"]
    assert rows_by_id(c)[1]["started"] is True


def test_queue_rows_name_every_host_in_rank_order():
    c = cluster(gang(hosts=("n3", "n1")), gang(2, hosts=("n1", "n3"), gpus=1))
    one_host = running_job(c, gpus=1)
    launched(c)
    rows = rows_by_id(c)
    assert rows[1]["nodes"] == [{"name": "n3", "gpu_ids": [0, 1]}, {"name": "n1", "gpu_ids": [0, 1]}]
    assert (rows[1]["node"], rows[1]["gpu_ids"]) == ("n3", [0, 1])
    assert rows[2]["state"] == PENDING and rows[2]["nodes"] == []
    assert rows[one_host]["nodes"] == [{"name": "n2", "gpu_ids": [0]}]
    ended(c, "n1", T0 + 1)
    ended(c, "n3", T0 + 2)
    assert rows_by_id(c)[1]["nodes"] == rows[1]["nodes"]  # where it ran, once ended too
    json.dumps(queue(c, all=True))


def test_node_rows_show_the_gpus_of_every_part():
    c = cluster(gang(hosts=("n1", "n2")))
    launched(c)
    nodes = {row["name"]: row for row in queue(c)["nodes"]}
    for name in ("n1", "n2"):
        assert nodes[name]["state"] == "allocated"
        assert [(g["jobs"], g["reserved_mb"]) for g in nodes[name]["gpus"]] == [([1], 16000), ([1], 16000)]
    assert nodes["n3"]["state"] == "idle"
    drained = request(c, "drain", {"node": "n2"}, peer=ROOT)
    assert drained[-1].message["result"]["running"] == 1


# ---------------------------------------------------------------------------------------------
# Ends


def test_every_part_exiting_0_completes_the_job_and_releases_every_host():
    c = cluster(gang(hosts=("n1", "n2", "n3")))
    launched(c)
    assert ended(c, "n2", T0 + 60) == [Saved(1, RUNNING)]  # waits for the others
    assert ended(c, "n2", T0 + 61) == []  # its end, reported again
    assert ended(c, "n1", T0 + 61) == [Saved(1, RUNNING)]
    assert c.jobs[1].part_status == [[0, None], [0, None], "started"]
    assert ended(c, "n3", T0 + 62) == [
        Saved(1, COMPLETED, (RUNNING, COMPLETED, "", "exit"), at=T0 + 62),
        Release("n1", 1, 1), Release("n2", 1, 1), Release("n3", 1, 1),
        Logged("end job 1 COMPLETED", "3 hosts")]
    job = c.jobs[1]
    assert (job.exit_code, job.end_time, job.reason) == (0, T0 + 62, "")
    assert all(g["jobs"] == [] for row in queue(c)["nodes"] for g in row["gpus"])


def test_a_failing_part_stops_the_others_and_the_job_fails_with_its_exit_code():
    c = cluster(gang(hosts=("n1", "n2", "n3")), kill_grace=5)
    launched(c)
    assert ended(c, "n2", T0 + 10, exit_code=3) == [
        SignalJob("n1", 1, 1, SIGTERM), SignalJob("n3", 1, 1, SIGTERM), Saved(1, RUNNING),
        Logged("stop job 1", "SIGTERM", "rank 1 on n2 exited with code 3")]
    job = c.jobs[1]
    assert (job.stop_cause, job.reason) == ("part_failed", "rank 1 on n2 exited with code 3")
    assert c.next_deadline(T0 + 10) == T0 + 15
    assert ended(c, "n1", T0 + 11, exit_code=143, signum=SIGTERM) == [Saved(1, RUNNING)]  # no new failure
    assert c.advance(T0 + 15) == [SignalJob("n3", 1, 1, SIGKILL), Saved(1, RUNNING), Logged("SIGKILL")]
    assert ended(c, "n3", T0 + 16, exit_code=137, signum=SIGKILL) == [
        Saved(1, FAILED, (RUNNING, FAILED, "rank 1 on n2 exited with code 3", "part_failed"), at=T0 + 16),
        Release("n1", 1, 1), Release("n2", 1, 1), Release("n3", 1, 1), Logged("end job 1 FAILED", "exit=3")]
    assert (job.state, job.exit_code) == (FAILED, 3)
    assert rows_by_id(c)[1]["reason"] == "rank 1 on n2 exited with code 3"


@pytest.mark.parametrize("exit_code,signum,error,reason", [
    (137, SIGKILL, None, "rank 1 on n2 was killed by signal 9 (SIGKILL)"),
    (None, None, "its log could not be opened", "rank 1 on n2 failed: its log could not be opened"),
])
def test_the_reason_names_the_failing_rank_its_host_and_how(exit_code, signum, error, reason):
    c = cluster(gang())
    launched(c)
    ended(c, "n2", T0 + 5, exit_code, signum, error)
    ended(c, "n1", T0 + 6, 143, SIGTERM)
    job = c.jobs[1]
    assert (job.state, job.reason, job.exit_code) == (FAILED, reason, exit_code)


def test_the_last_part_failing_ends_the_job_at_once():
    c = cluster(gang())
    launched(c)
    ended(c, "n1", T0 + 5)
    assert ended(c, "n2", T0 + 6, exit_code=2) == [
        Saved(1, FAILED, (RUNNING, FAILED, "rank 1 on n2 exited with code 2", "part_failed")),
        Release("n1", 1, 1), Release("n2", 1, 1), Logged("end job 1 FAILED")]


def test_a_cancel_does_not_turn_a_failure_into_a_cancel():
    c = cluster(gang())
    launched(c)
    ended(c, "n2", T0 + 5, exit_code=3)
    assert cancel(c, ids=[1], now=T0 + 6) == [cancel_ok([{"id": 1, "result": "stopping", "message": ANY}])]
    ended(c, "n1", T0 + 7, 143, SIGTERM)
    assert (c.jobs[1].state, c.jobs[1].exit_code) == (FAILED, 3)


# ---------------------------------------------------------------------------------------------
# Control reaches every part


def test_a_cancel_reaches_every_running_part():
    c = cluster(gang(hosts=("n1", "n2", "n3")), kill_grace=10)
    launched(c)
    ended(c, "n3", T0 + 1)  # already ended: nothing to stop there
    assert cancel(c, ids=[1], now=T0 + 5) == [
        SignalJob("n1", 1, 1, SIGTERM), SignalJob("n2", 1, 1, SIGTERM), Saved(1, RUNNING),
        Logged("cancel job 1", "2 parts on n1, n2"), cancel_ok([{"id": 1, "result": "stopping", "message": ANY}])]
    assert signals(c.advance(T0 + 15)) == [("n1", SIGKILL), ("n2", SIGKILL)]
    ended(c, "n1", T0 + 16, 137, SIGKILL)
    actions = ended(c, "n2", T0 + 16, 137, SIGKILL)
    assert actions == [Saved(1, CANCELLED, (RUNNING, CANCELLED, "cancelled by alice", "cancel")),
                       Release("n1", 1, 1), Release("n2", 1, 1), Release("n3", 1, 1), Logged("CANCELLED")]
    assert c.jobs[1].exit_code == 137


def test_the_time_limit_and_its_warning_reach_every_part():
    c = cluster(gang(time_limit=100, warn_signal=SIGUSR1, warn_seconds=30), kill_grace=5)
    launched(c)
    assert c.advance(T0 + 70) == [SignalJob("n1", 1, 1, SIGUSR1), SignalJob("n2", 1, 1, SIGUSR1),
                                  Saved(1, RUNNING), Logged("warn job 1")]
    assert signals(c.advance(T0 + 100)) == [("n1", SIGTERM), ("n2", SIGTERM)]
    assert signals(c.advance(T0 + 105)) == [("n1", SIGKILL), ("n2", SIGKILL)]
    ended(c, "n1", T0 + 106, 137, SIGKILL)
    assert ended(c, "n2", T0 + 106, 137, SIGKILL)[0] == Saved(1, TIMEOUT, (RUNNING, TIMEOUT, ANY, "timeout"))
    assert "time limit" in c.jobs[1].reason


def test_a_time_limit_with_requeue_puts_the_whole_job_back_and_it_starts_again_from_rank_0():
    c = cluster(gang(time_limit=100, requeue=True))
    launched(c)
    c.advance(T0 + 100)
    ended(c, "n1", T0 + 101, 143, SIGTERM)
    actions = ended(c, "n2", T0 + 101, 143, SIGTERM)
    assert actions == [Saved(1, PENDING, (RUNNING, PENDING, "requeued: reached its time limit", "timeout")),
                       Release("n1", 1, 1), Release("n2", 1, 1), Logged("requeue job 1", "restart 1")]
    job = c.jobs[1]
    assert (job.restarts, job.parts, job.part_status, job.master_port, job.node) == (1, None, None, None, None)
    assert rows_by_id(c)[1]["nodes"] == []
    assert c.schedule(T0 + 102)[:2] == [Saved(1, RUNNING, ANY), Launch(job, rank=0)]
    assert (job.attempt, job.part_status) == (2, [None, None])
    assert port(c, attempt=1) == []  # the old attempt's port
    assert port(c)[1:3] == [Launch(job, rank=1), Logged("launch job 1")]


def test_a_time_slice_stop_reaches_every_part_and_requeues_the_whole_job(monkeypatch):
    c = cluster(gang(hosts=("n1", "n2")), max_job_time=10, kill_grace=5, nodes=("n1", "n2"))
    launched(c)
    submitted(c, peer=BOB, now=T0 + 1, gpus=2)
    # The scheduler never picks a job on several hosts to switch out; were it to, every part
    # would be stopped.
    monkeypatch.setattr(controller_module.scheduler, "time_slice_victims", lambda *args: [1])
    c.advance(T0 + 10)
    actions = c.schedule(T0 + 10)
    assert signals(actions) == [("n1", SIGTERM), ("n2", SIGTERM)]
    assert c.jobs[1].stop_cause == "slice"
    ended(c, "n2", T0 + 11, 143, SIGTERM)
    actions = ended(c, "n1", T0 + 11, 143, SIGTERM)
    assert actions[0] == Saved(1, PENDING, (RUNNING, PENDING, ANY, "slice"))
    assert releases(actions) == ["n1", "n2"] and c.jobs[1].restarts == 1


# ---------------------------------------------------------------------------------------------
# A part that cannot start: the whole job goes back to the queue, FAILED after three tries


def test_a_part_that_cannot_start_kills_the_others_and_the_job_goes_back_to_the_queue():
    c = cluster(gang(hosts=("n1", "n2", "n3")), gang(2, hosts=("n1",), gpus=1))
    c.schedule(T0)
    port(c)
    started(c, "n1")
    seq = c.jobs[1].queue_seq
    why = "user alice does not exist on host n2"
    assert ended(c, "n2", T0 + 1, exit_code=None, error=why) == [
        SignalJob("n1", 1, 1, SIGKILL), SignalJob("n3", 1, 1, SIGKILL), Saved(1, RUNNING),
        Logged("job 1 could not start on every host: rank 1 on n2: " + why, "SIGKILL")]
    job = c.jobs[1]
    assert (job.stop_cause, job.stop_deadline) == ("launch_failed", None)
    assert c.next_deadline(T0 + 1) is None and c.advance(T0 + 100) == []
    assert ended(c, "n1", T0 + 2, 137, SIGKILL) == [Saved(1, RUNNING)]
    reason = "requeued: could not start on every host: rank 1 on n2: %s (failed launch 1 of 3)" % why
    assert lost(c, "n3", T0 + 3, started=False, reason="node n3 has no record of it") == [
        Saved(1, PENDING, (RUNNING, PENDING, reason, "launch_failed"), at=T0 + 3),
        Release("n1", 1, 1), Release("n2", 1, 1), Release("n3", 1, 1), Logged("requeue job 1")]
    assert (job.restarts, job.launch_failures, job.parts, job.master_port) == (0, 1, None, None)
    assert job.queue_seq > seq


def test_a_part_lost_before_it_started_is_a_failed_launch_too():
    c = cluster(gang())
    c.schedule(T0)
    port(c)
    assert lost(c, "n2", T0 + 1, started=False, reason="the link to node n2 was lost") == [
        SignalJob("n1", 1, 1, SIGKILL), Saved(1, RUNNING),
        Logged("could not start on every host: rank 1 on n2: the link to node n2 was lost")]
    assert lost(c, "n1", T0 + 2, started=False)[0] == Saved(1, PENDING, (RUNNING, PENDING, ANY, "launch_failed"))


def test_after_three_failed_launches_in_a_row_the_job_fails():
    c = cluster(gang())
    why = "user alice does not exist on host n1"
    for attempt in range(1, MAX_LAUNCH_FAILURES + 1):
        c.schedule(T0 + attempt)
        job = c.jobs[1]
        assert job.attempt == attempt
        actions = ended(c, "n1", T0 + attempt, exit_code=None, error=why)  # rank 0 refused: no port
        assert releases(actions) == ["n1"] and job.launch_failures == attempt
    assert actions == [Saved(1, FAILED, (RUNNING, FAILED, "could not start on every host: rank 0 on n1: " + why,
                                         "launch_failed")),
                       Release("n1", 1, 3), Logged("end job 1 FAILED")]
    assert (job.state, job.restarts, job.exit_code) == (FAILED, 0, None)


def test_a_launch_that_reaches_every_host_starts_the_count_again():
    c = cluster(gang())
    for _ in range(2):
        c.schedule(T0)
        lost(c, "n1", T0, started=False)
    assert c.jobs[1].launch_failures == 2
    launched(c)
    assert c.jobs[1].launch_failures == 0


def test_rank_0_ending_before_the_other_ranks_were_launched_is_a_failed_launch():
    c = cluster(gang())
    c.schedule(T0)
    started(c, "n1")
    actions = ended(c, "n1", T0 + 1, exit_code=0)
    assert actions[0] == Saved(1, PENDING, (
        RUNNING, PENDING, "requeued: could not start on every host: rank 0 on n1: it exited before the other "
        "ranks were launched (failed launch 1 of 3)", "launch_failed"))
    assert releases(actions) == ["n1"]


def test_a_cancel_wins_over_a_failed_launch():
    c = cluster(gang())
    c.schedule(T0)
    port(c)
    started(c, "n1")
    lost(c, "n2", T0 + 1, started=False)
    actions = cancel(c, ids=[1], now=T0 + 2)
    assert actions[:2] == [Saved(1, RUNNING), Logged("cancel job 1 (already stopping)")]
    assert ended(c, "n1", T0 + 3, 137, SIGKILL)[0] == Saved(1, CANCELLED, ANY)
    assert c.jobs[1].launch_failures == 0


# ---------------------------------------------------------------------------------------------
# A part lost with its host: the whole job ends


def test_a_part_host_going_down_ends_the_job_node_fail_and_kills_the_others():
    c = cluster(gang(hosts=("n1", "n2", "n3")))
    launched(c)
    reason = "rank 1 on n2: node n2 is down: no heartbeat"
    assert c.handle({"kind": "node_down", "name": "n2"}, T0 + 9) == [
        Logged("node n2 is down"),
        Saved(1, NODE_FAIL, (RUNNING, NODE_FAIL, reason, "lost"), at=T0 + 9),
        SignalJob("n1", 1, 1, SIGKILL), SignalJob("n3", 1, 1, SIGKILL),
        Release("n1", 1, 1), Release("n2", 1, 1), Release("n3", 1, 1), Logged("end job 1 NODE_FAIL")]
    assert ended(c, "n1", T0 + 10, 137, SIGKILL) == []  # the job has ended


def test_a_part_whose_supervisor_vanished_requeues_a_job_that_allows_it():
    c = cluster(gang(requeue=True))
    launched(c)
    actions = lost(c, "n1", T0 + 5, started=True)
    assert actions == [Saved(1, PENDING, (RUNNING, PENDING, "requeued: rank 0 on n1: its supervisor disappeared",
                                          "lost")),
                       SignalJob("n2", 1, 1, SIGKILL), Release("n1", 1, 1), Release("n2", 1, 1),
                       Logged("requeue job 1", "restart 1")]
    assert (c.jobs[1].restarts, c.jobs[1].parts) == (1, None)


def test_a_part_lost_while_cancelling_ends_the_job_cancelled():
    c = cluster(gang())
    launched(c)
    cancel(c, ids=[1], now=T0 + 1)
    assert lost(c, "n2", T0 + 2, started=True)[:2] == [Saved(1, CANCELLED, ANY), SignalJob("n1", 1, 1, SIGKILL)]


def test_a_host_going_down_after_its_part_ended_leaves_the_job_alone():
    c = cluster(gang())
    launched(c)
    ended(c, "n2", T0 + 1)
    assert c.handle({"kind": "node_down", "name": "n2"}, T0 + 2) == [Logged("node n2 is down")]
    assert c.jobs[1].state == RUNNING


def test_reports_from_hosts_without_a_part_of_the_attempt_are_ignored():
    c = cluster(gang(hosts=("n1", "n2")))
    c.schedule(T0)
    # Before the port, rank 1 was not launched: n2 has nothing of this attempt yet.
    assert started(c, "n2") == [] and ended(c, "n2", T0, exit_code=1) == []
    assert lost(c, "n2", T0, started=True) == []
    port(c)
    for node in ("n3", "elsewhere"):
        assert started(c, node) == []
        assert ended(c, node, T0 + 1, exit_code=1) == []
        assert lost(c, node, T0 + 1, started=True) == []
    assert started(c, "n2", attempt=0) == []
    assert c.jobs[1].part_status == [None, None] and c.jobs[1].state == RUNNING


# ---------------------------------------------------------------------------------------------
# Reconciliation and returning hosts


def test_attempts_to_keep_are_decided_per_host():
    c = cluster(gang(hosts=("n1", "n2")))
    c.schedule(T0)
    job = c.jobs[1]
    assert c.attempts_to_keep("n2", []) == ([], [])  # not launched there yet
    port(c)
    assert c.attempts_to_keep("n1", [(1, 1)]) == ([[1, 1]], [])
    assert c.attempts_to_keep("n2", [(1, 1)]) == ([[1, 1]], [])
    assert c.attempts_to_keep("n3", [(1, 1)]) == ([], [])
    assert c.attempts_to_keep("n2", [(1, 0)]) == ([], [job])
    started(c, "n1")
    started(c, "n2")
    ended(c, "n2", T0 + 1)
    assert c.attempts_to_keep("n2", [(1, 1)]) == ([], [])  # its part has ended
    assert c.attempts_to_keep("n1", []) == ([], [job])


def test_a_part_the_node_does_not_report_is_lost_not_started():
    c = cluster(gang())
    c.schedule(T0)
    port(c)
    started(c, "n1")
    keep, missing = c.attempts_to_keep("n2", [])
    assert missing == [c.jobs[1]]
    actions = c.handle({"kind": "job_lost", "node": "n2", "job_id": 1, "attempt": 1, "started": False,
                        "reason": "node n2 has no record of it"}, T0 + 1)
    assert signals(actions) == [("n1", SIGKILL)] and c.jobs[1].stop_cause == "launch_failed"


def test_a_stop_is_sent_again_to_a_part_host_that_returns():
    c = cluster(gang(hosts=("n1", "n2")), kill_grace=5)
    launched(c)
    cancel(c, ids=[1], now=T0 + 1)
    assert c.handle(node_up("n2"), T0 + 2) == [Logged("node n2 up"), SignalJob("n2", 1, 1, SIGTERM)]
    assert c.handle(node_up("n3"), T0 + 2) == [Logged("node n3 up")]
    c.advance(T0 + 6)
    assert c.handle(node_up("n1"), T0 + 7) == [Logged("node n1 up"), SignalJob("n1", 1, 1, SIGKILL)]
    ended(c, "n2", T0 + 8, 137, SIGKILL)
    assert c.handle(node_up("n2"), T0 + 9) == [Logged("node n2 up")]  # its part has ended


# ---------------------------------------------------------------------------------------------
# Restart, rename, and jobs on one host


def test_a_rebuilt_controller_goes_on_with_the_parts_it_stored():
    c = cluster(gang(hosts=("n1", "n2")))
    launched(c)
    ended(c, "n2", T0 + 1)
    stored = Job.from_dict(json.loads(json.dumps(c.jobs[1].to_dict())))
    rebuilt = cluster(stored)
    assert rebuilt.schedule(T0 + 2) == []  # its GPUs are held on both hosts
    assert port(rebuilt) == []
    assert ended(rebuilt, "n2", T0 + 3) == []
    assert ended(rebuilt, "n1", T0 + 3)[0] == Saved(1, COMPLETED, ANY)


def test_rehome_renames_the_part_on_the_renamed_host():
    c = cluster(gang(hosts=("old", "n2")), nodes=("old", "n2"))
    launched(c)
    del c.nodes["old"]  # the master restarted under another name
    assert c.rehome([1], "new", T0 + 1) == [Logged("job 1 rank 0 ran on node old", "now called new"),
                                            Saved(1, RUNNING)]
    job = c.jobs[1]
    assert (job.node, job.parts) == ("new", (("new", (0, 1)), ("n2", (0, 1))))
    assert c.rehome([1], "new", T0 + 2) == []


def test_unstart_of_a_job_on_several_hosts_frees_its_hosts():
    c = cluster(gang())
    c.schedule(T0)
    assert c.unstart(1, T0, "not started: the state database cannot be written")[0] == Saved(1, PENDING, ANY)
    job = c.jobs[1]
    assert (job.parts, job.part_status, job.node) == (None, None, None)


def test_jobs_on_one_host_launch_and_end_as_before():
    c = cluster(nodes=("n1",))
    submitted(c, gpus=1)
    actions = c.schedule(T0)
    job = c.jobs[1]
    assert actions == [Saved(1, RUNNING, ANY), Launch(job), Logged("start job 1 on n1 GPUs 0")]
    assert actions[1].rank is None and (job.parts, job.part_status) == (None, None)
    assert port(c) == []  # a port report means nothing for a job on one host
    assert rows_by_id(c)[1]["nodes"] == [{"name": "n1", "gpu_ids": [0]}]
    assert exited(c, 1, T0 + 1) == [Saved(1, COMPLETED, ANY), Release("n1", 1, 1), Logged("end job 1")]


# ---------------------------------------------------------------------------------------------
# --mpi: rank 0 runs the command, the others hold their GPUs until it ends

def test_mpi_rank_0_done_stops_the_holders_and_the_job_completes():
    c = cluster(gang(mpi=True), kill_grace=5)
    launched(c)
    actions = ended(c, "n1", T0 + 30)
    assert signals(actions) == [("n2", signal.SIGTERM)]
    assert c.jobs[1].state == RUNNING and c.jobs[1].stop_cause == "mpi_done"
    final = ended(c, "n2", T0 + 31, exit_code=143, signum=signal.SIGTERM)
    job = c.jobs[1]
    assert (job.state, job.exit_code, job.reason) == (COMPLETED, 0, "")
    assert releases(final) == ["n1", "n2"]


def test_mpi_rank_0_failing_fails_the_job_with_its_code():
    c = cluster(gang(mpi=True))
    launched(c)
    assert signals(ended(c, "n1", T0 + 30, exit_code=3)) == [("n2", signal.SIGTERM)]
    ended(c, "n2", T0 + 31, exit_code=143, signum=signal.SIGTERM)
    job = c.jobs[1]
    assert (job.state, job.exit_code) == (JobState.FAILED, 3) and "rank 0 on n1" in job.reason


def test_mpi_rank_0_done_before_the_others_were_launched_completes_the_job():
    c = cluster(gang(mpi=True))
    c.schedule(T0)
    started(c, "n1")
    actions = ended(c, "n1", T0 + 1)  # before its host's port came: the holders never started
    job = c.jobs[1]
    assert (job.state, job.exit_code) == (COMPLETED, 0) and releases(actions) == ["n1"]
    assert port(c, node="n1", attempt=1) == []


def test_the_job_shows_running_only_once_every_part_runs():
    c = cluster(gang())
    c.schedule(T0)
    port(c, node="n1")
    started(c, "n1")
    row = next(r for r in queue(c)["jobs"] if r["id"] == 1)
    assert (row["state"], row["reason"], row["position"]) == (PENDING, "starting on n1, n2: 1 of 2 parts running", None)
    assert [p["name"] for p in row["nodes"]] == ["n1", "n2"]
    assert not queue(c, state="RUNNING")["jobs"] and [r["id"] for r in queue(c, state="PENDING")["jobs"]] == [1]
    started(c, "n2")
    row = next(r for r in queue(c)["jobs"] if r["id"] == 1)
    assert (row["state"], row["started"]) == (RUNNING, True)
    assert [r["id"] for r in queue(c, state="RUNNING")["jobs"]] == [1]
