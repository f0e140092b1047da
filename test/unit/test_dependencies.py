"""Job dependencies (`srun --dependency`, Slurm's meanings): parsing the spec, the submit request
at the protocol's edge (hostile input), the controller's checks at submit, the scheduler leaving
a job whose dependencies do not hold out of its passes (no reservation, no blocked backfill),
the reasons shown, cancellation of a job whose dependency can never hold (a chain cancels whole),
requeues, and a restart of the master (the store round trip and a fresh controller)."""

import json

import pytest

from mgpu import errors, protocol
from mgpu.controller import Controller, Launch, Log, Reply, Save, Settings
from mgpu.errors import MgpuError
from mgpu.model import (MAX_DEPENDENCIES, MAX_DEPENDENCY_SPEC, MAX_JOB_ID, Job, JobState,
                        dependency_outcome, format_dependency, parse_dependency)
from mgpu.store import Store

from test_controller import (BOB, T0, Logged, Saved, cancel, exited, lost, make, node_up, queue, refused,
                             rows_by_id, running_job, submit, submitted)

PENDING, RUNNING = JobState.PENDING, JobState.RUNNING
COMPLETED, FAILED, CANCELLED = JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED
TIMEOUT, NODE_FAIL = JobState.TIMEOUT, JobState.NODE_FAIL


def started(actions):
    return [a.job.id for a in actions if isinstance(a, Launch)]


def dep(spec):
    """The request field of a --dependency spec, as srun sends it."""
    return parse_dependency(spec)


def row(c, job_id):
    return rows_by_id(c)[job_id]


# ---------------------------------------------------------------------------------------------
# Parsing the spec (srun)


@pytest.mark.parametrize("spec,pairs", [
    ("afterok:5", [["afterok", 5]]),
    ("afterok:5:6,after:3", [["afterok", 5], ["afterok", 6], ["after", 3]]),
    ("afterany:7,afternotok:8", [["afterany", 7], ["afternotok", 8]]),
    (" AfterOK:5 : 6 ", [["afterok", 5], ["afterok", 6]]),
    ("afterok:5:5,afterok:5", [["afterok", 5]]),
    ("afterok:5,afternotok:5", [["afterok", 5], ["afternotok", 5]]),
    ("after:%d" % MAX_JOB_ID, [["after", MAX_JOB_ID]]),
])
def test_a_spec_parses_to_type_and_id_pairs_each_once(spec, pairs):
    assert parse_dependency(spec) == pairs


@pytest.mark.parametrize("spec,words", [
    ("", "needs TYPE:JOBID"),
    ("   ", "needs TYPE:JOBID"),
    ("afterok:5?afterany:6", "'?' (any one of) is not supported"),
    ("singleton", "singleton is not supported"),
    ("aftercorr:5", "aftercorr is not supported"),
    ("afterburstbuffer:5", "afterburstbuffer is not supported"),
    ("afterwards:5", "unknown type 'afterwards'"),
    ("5", "give a type before the job id"),
    ("afterok", "afterok needs job ids"),
    ("afterok:", "afterok needs job ids"),
    ("afterok:0", "bad job id '0'"),
    ("afterok:-3", "bad job id '-3'"),
    ("afterok:x", "bad job id 'x'"),
    ("afterok:1:", "bad job id ''"),
    ("afterok:\u0663", "bad job id"),
    ("afterok:%d" % (MAX_JOB_ID + 1), "bad job id"),
    ("afterok:" + "9" * 400, "bad job id"),
    ("afterok:5+60", "a delay after '+' is not supported"),
    ("afterok:5,,after:3", "an empty entry"),
    ("afterok:" + ":".join(str(i) for i in range(1, MAX_DEPENDENCIES + 2)), "more than %d job ids" % MAX_DEPENDENCIES),
    ("afterok:" + "1:" * MAX_DEPENDENCY_SPEC, "too long"),
])
def test_a_bad_spec_is_one_line_naming_the_problem(spec, words):
    with pytest.raises(ValueError) as e:
        parse_dependency(spec)
    message = str(e.value)
    assert words in message and "\n" not in message and len(message) < 300


def test_the_spec_is_shown_with_the_ids_of_a_type_together():
    assert format_dependency([["afterok", 5, False], ["afterok", 6, True], ["after", 3, False]]) == \
        "afterok:5:6,after:3"
    assert format_dependency(None) == ""


@pytest.mark.parametrize("kind,state,started,outcome", [
    ("after", PENDING, False, None),
    ("after", PENDING, True, True),      # requeued: it has started
    ("after", RUNNING, True, True),
    ("after", CANCELLED, False, True),   # cancelled before it started
    ("afterany", RUNNING, True, None),
    ("afterany", PENDING, True, None),   # requeued: it has not ended
    ("afterany", FAILED, True, True),
    ("afterany", COMPLETED, True, True),
    ("afterok", COMPLETED, True, True),
    ("afterok", RUNNING, True, None),
    ("afterok", FAILED, True, False),
    ("afterok", CANCELLED, False, False),
    ("afterok", TIMEOUT, True, False),
    ("afternotok", FAILED, True, True),
    ("afternotok", TIMEOUT, True, True),
    ("afternotok", NODE_FAIL, True, True),
    ("afternotok", CANCELLED, False, True),
    ("afternotok", COMPLETED, True, False),
    ("afternotok", PENDING, True, None),
])
def test_what_each_type_means(kind, state, started, outcome):
    assert dependency_outcome(kind, state, started) is outcome


# ---------------------------------------------------------------------------------------------
# The submit request at the protocol's edge


def _check(dependency):
    protocol.check_request(protocol.request("submit", command=["true"], cwd="/tmp", env={},
                                            dependency=dependency))


@pytest.mark.parametrize("dependency,code,words", [
    ("afterok:5", errors.BAD_REQUEST, "wrong type"),
    ({"afterok": 5}, errors.BAD_REQUEST, "wrong type"),
    (5, errors.BAD_REQUEST, "wrong type"),
    ([5], errors.BAD_REQUEST, "[type, job id] pairs"),
    ([["afterok"]], errors.BAD_REQUEST, "[type, job id] pairs"),
    ([["afterok", 5, 6]], errors.BAD_REQUEST, "[type, job id] pairs"),
    ([["afterok", "5"]], errors.BAD_REQUEST, "[type, job id] pairs"),
    ([["afterok", 5.0]], errors.BAD_REQUEST, "[type, job id] pairs"),
    ([["afterok", True]], errors.BAD_REQUEST, "[type, job id] pairs"),
    ([[5, "afterok"]], errors.BAD_REQUEST, "[type, job id] pairs"),
    ([["afterok", None]], errors.BAD_REQUEST, "[type, job id] pairs"),
    ([["singleton", 5]], errors.INVALID_ARGUMENT, "'singleton' is not supported"),
    ([["AFTEROK", 5]], errors.INVALID_ARGUMENT, "is not supported"),
    ([["x" * 10000, 5]], errors.INVALID_ARGUMENT, "is not supported"),
    ([["afterok", 0]], errors.INVALID_ARGUMENT, "job ids go from 1"),
    ([["afterok", -1]], errors.INVALID_ARGUMENT, "job ids go from 1"),
    ([["afterok", MAX_JOB_ID + 1]], errors.INVALID_ARGUMENT, "job ids go from 1"),
    ([["afterok", 10 ** 400]], errors.INVALID_ARGUMENT, "job ids go from 1"),
    ([["afterok", i] for i in range(1, MAX_DEPENDENCIES + 2)], errors.INVALID_ARGUMENT, "at most %d" % MAX_DEPENDENCIES),
])
def test_hostile_dependency_fields_are_refused_at_the_edge(dependency, code, words):
    with pytest.raises(MgpuError) as e:
        _check(dependency)
    assert e.value.code == code and words in e.value.message, e.value.message
    assert "\n" not in e.value.message and len(e.value.message) < 300


def test_a_well_formed_dependency_field_passes_the_edge():
    _check([["afterok", i] for i in range(1, MAX_DEPENDENCIES + 1)])
    _check(None)


# ---------------------------------------------------------------------------------------------
# Submit


def test_a_dependency_on_a_future_job_or_oneself_is_refused():
    c = make()
    first = submitted(c)
    message = refused(submit(c, dependency=dep("afterok:%d" % (first + 1))), errors.NOT_FOUND)
    assert message == "--dependency afterok:%d: no job %d" % (first + 1, first + 1)
    message = refused(submit(c, dependency=dep("afterok:%d:%d" % (first, MAX_JOB_ID))), errors.NOT_FOUND)
    assert message == "--dependency afterok:%d: no job %d" % (MAX_JOB_ID, MAX_JOB_ID)
    assert c.next_id == first + 1  # nothing was taken


def test_a_dependency_on_a_job_forgotten_long_ago_is_refused():
    c = make(keep_finished=1)
    old = running_job(c)
    exited(c, old, T0 + 1)
    newer = running_job(c, now=T0 + 1)
    exited(c, newer, T0 + 2)
    assert old not in c.jobs
    message = refused(submit(c, dependency=dep("afterany:%d" % old)), errors.NOT_FOUND)
    assert message == ("--dependency afterany:%d: job %d ended too long ago to depend on (the master keeps "
                       "the newest 1 finished jobs)" % (old, old))


@pytest.mark.parametrize("kind,exit_code", [("afterok", 3), ("afternotok", 0)])
def test_a_dependency_that_can_already_never_hold_is_refused(kind, exit_code):
    c = make()
    job_id = running_job(c)
    exited(c, job_id, T0 + 1, exit_code=exit_code)
    state = FAILED if exit_code else COMPLETED
    message = refused(submit(c, dependency=dep("%s:%d" % (kind, job_id))), errors.INVALID_ARGUMENT)
    assert message == "--dependency %s:%d can never be satisfied: job %d ended %s" % (kind, job_id, job_id, state)


@pytest.mark.parametrize("kind,exit_code", [("afterok", 0), ("afternotok", 1), ("afterany", 1), ("after", 0)])
def test_a_dependency_that_already_holds_does_not_hold_the_job_back(kind, exit_code):
    c = make()
    job_id = running_job(c)
    exited(c, job_id, T0 + 1, exit_code=exit_code)
    waiting = submitted(c, dependency=dep("%s:%d" % (kind, job_id)))
    assert started(c.schedule(T0 + 2)) == [waiting]
    assert c.jobs[waiting].dependency == [[kind, job_id, True]]


def test_after_on_a_running_job_holds_at_once():
    c = make(gpus=2)
    first = running_job(c)
    second = submitted(c, dependency=dep("after:%d" % first))
    assert started(c.schedule(T0)) == [second]


def test_submit_saves_the_dependency_and_logs_it():
    c = make(gpus=0)
    first = submitted(c, gpus=0)
    actions = submit(c, gpus=0, dependency=dep("afterok:%d,after:%d" % (first, first)))
    job = c.jobs[first + 1]
    assert job.dependency == [["afterok", first, False], ["after", first, False]]
    assert actions[0] == Saved(job.id, PENDING, ("", PENDING, "submitted", "submit by alice"), env={"PATH": "/usr/bin"})
    assert actions[1] == Logged("submit job %d" % job.id, "dependency=afterok:%d,after:%d" % (first, first))


# ---------------------------------------------------------------------------------------------
# Waiting: out of the scheduler's passes, with its reason


def test_a_job_waiting_on_a_dependency_holds_no_reservation_and_blocks_no_backfill():
    c = make(gpus=2)
    first = running_job(c, time_limit=100)
    # Would be the head (2 GPUs, priority 9) if it took part; a 1-GPU job behind it must backfill.
    big = submitted(c, gpus=2, priority=9, dependency=dep("afterok:%d" % first))
    small = submitted(c, gpus=1)
    assert started(c.schedule(T0)) == [small]
    assert c._head is None
    rows = rows_by_id(c)
    assert rows[big]["state"] == PENDING
    assert rows[big]["reason"] == "Dependency: waits for job %d to complete (afterok:%d)" % (first, first)
    assert rows[big]["position"] is None
    assert rows[big]["dependency"] == "afterok:%d" % first
    assert rows[small]["dependency"] is None
    json.dumps(queue(c, all=True))


@pytest.mark.parametrize("kind,words", [
    ("after", "to start"), ("afterany", "to end"), ("afterok", "to complete"), ("afternotok", "to fail"),
])
def test_the_reason_names_the_first_dependency_that_does_not_hold(kind, words):
    c = make(gpus=1)
    first = running_job(c)
    other = submitted(c)
    waiting = submitted(c, dependency=dep("afterany:%d,%s:%d" % (first, kind, other)))
    assert row(c, waiting)["reason"] == "Dependency: waits for job %d to end (afterany:%d)" % (first, first)
    exited(c, first, T0 + 1, exit_code=1)
    c.schedule(T0 + 1)  # `other` starts
    if kind == "after":
        assert row(c, waiting)["reason"] != "Dependency"  # it waits for GPUs now
        assert not row(c, waiting)["reason"].startswith("Dependency")
    else:
        assert row(c, waiting)["reason"] == "Dependency: waits for job %d %s (%s:%d)" % (other, words, kind, other)


def test_a_pending_job_of_a_time_slice_waits_for_no_dependant():
    c = make(gpus=1, max_job_time=60)
    first = running_job(c)
    submitted(c, dependency=dep("afterok:%d" % first))
    c.advance(T0 + 61)
    # The only waiting job waits on the running one: switching it out would start nothing.
    assert [a for a in c.schedule(T0 + 61) if not isinstance(a, Log)] == []
    assert c.jobs[first].state == RUNNING and c.jobs[first].stop_cause is None


# ---------------------------------------------------------------------------------------------
# Dependencies that come to hold


def test_afterok_starts_after_a_success():
    c = make(gpus=1)
    first = running_job(c)
    second = submitted(c, dependency=dep("afterok:%d" % first))
    assert started(c.schedule(T0)) == []
    actions = exited(c, first, T0 + 5)
    assert actions[-2:] == [Saved(second, PENDING),
                            Logged("job %d: its dependencies are satisfied (afterok:%d)" % (second, first))]
    assert c.jobs[second].dependency == [["afterok", first, True]]
    assert started(c.schedule(T0 + 5)) == [second]


def test_afternotok_starts_after_a_failure_and_afterany_after_either():
    c = make(gpus=0)
    first = running_job(c, gpus=0)
    on_failure = submitted(c, gpus=0, dependency=dep("afternotok:%d" % first))
    on_end = submitted(c, gpus=0, dependency=dep("afterany:%d" % first))
    assert started(c.schedule(T0)) == []
    exited(c, first, T0 + 5, exit_code=2)
    assert sorted(started(c.schedule(T0 + 5))) == [on_failure, on_end]


def test_after_starts_once_the_other_started_in_the_same_schedule_call():
    c = make(gpus=2)
    first = submitted(c)
    second = submitted(c, dependency=dep("after:%d" % first))
    third = submitted(c, dependency=dep("after:%d" % second))
    actions = c.schedule(T0)
    assert started(actions) == [first, second]  # the third waits for a GPU now, not for the second
    assert Logged("job %d: its dependencies are satisfied (after:%d)" % (second, first)) in actions
    assert row(c, third)["reason"].startswith("Resources")


def test_after_holds_once_started_even_when_the_other_is_requeued():
    c = make(gpus=1)
    first = running_job(c, requeue=True)
    waiting = submitted(c, dependency=dep("after:%d,afterany:%d" % (first, first)))
    lost(c, first, T0 + 1, started=True)  # back to the queue
    assert c.jobs[first].state == PENDING
    assert c.jobs[waiting].dependency == [["after", first, True], ["afterany", first, False]]
    assert row(c, waiting)["reason"] == "Dependency: waits for job %d to end (afterany:%d)" % (first, first)
    assert started(c.schedule(T0 + 1)) == [first]


def test_a_requeued_job_has_not_ended_for_afterok():
    c = make(gpus=1)
    first = running_job(c, requeue=True)
    waiting = submitted(c, dependency=dep("afterok:%d" % first))
    assert [a for a in lost(c, first, T0 + 1, started=True) if isinstance(a, Save) and a.job.id == waiting] == []
    assert c.jobs[waiting].state == PENDING and waiting in c.blocked
    c.schedule(T0 + 1)
    exited(c, first, T0 + 2)
    assert started(c.schedule(T0 + 2)) == [waiting]


def test_several_jobs_all_must_hold():
    c = make(gpus=0)
    a, b = running_job(c, gpus=0), running_job(c, gpus=0)
    waiting = submitted(c, gpus=0, dependency=dep("afterok:%d:%d" % (a, b)))
    exited(c, a, T0 + 1)
    assert started(c.schedule(T0 + 1)) == []
    assert row(c, waiting)["reason"] == "Dependency: waits for job %d to complete (afterok:%d)" % (b, b)
    exited(c, b, T0 + 2)
    assert started(c.schedule(T0 + 2)) == [waiting]


def test_another_users_job_may_be_depended_on():
    c = make(gpus=0)
    theirs = running_job(c, peer=BOB, gpus=0)
    mine = submitted(c, gpus=0, dependency=dep("afterok:%d" % theirs))
    exited(c, theirs, T0 + 1)
    assert started(c.schedule(T0 + 1)) == [mine]


# ---------------------------------------------------------------------------------------------
# Dependencies that can never hold


def test_afterok_on_a_failure_cancels_the_job_naming_why():
    c = make(gpus=1)
    first = running_job(c)
    second = submitted(c, dependency=dep("afterok:%d" % first))
    reason = "dependency never satisfied: job %d ended FAILED (afterok:%d)" % (first, first)
    actions = exited(c, first, T0 + 5, exit_code=1)
    assert actions[-2:] == [Saved(second, CANCELLED, (PENDING, CANCELLED, reason, "dependency"), at=T0 + 5),
                            Logged("cancel job %d (pending): %s" % (second, reason))]
    assert second not in c.pending and second not in c.blocked
    assert rows_by_id(c)[second]["reason"] == reason
    assert started(c.schedule(T0 + 5)) == []


def test_afternotok_on_a_success_cancels_the_job():
    c = make(gpus=1)
    first = running_job(c)
    second = submitted(c, dependency=dep("afternotok:%d" % first))
    exited(c, first, T0 + 5)
    assert c.jobs[second].state == CANCELLED
    assert c.jobs[second].reason == "dependency never satisfied: job %d ended COMPLETED (afternotok:%d)" % (
        first, first)


def test_a_chain_cancels_whole_and_other_types_go_on():
    c = make(gpus=1)
    first = submitted(c)
    second = submitted(c, dependency=dep("afterok:%d" % first))
    third = submitted(c, dependency=dep("afterok:%d" % second))
    fourth = submitted(c, dependency=dep("afterok:%d" % third))
    on_failure = submitted(c, dependency=dep("afternotok:%d" % second))
    on_end = submitted(c, dependency=dep("afterany:%d" % third))
    actions = cancel(c, ids=[first])
    cancels = [(a.job.id, a.transition.reason) for a in actions if isinstance(a, Save) and a.transition]
    assert cancels == [
        (first, "cancelled by alice"),
        (second, "dependency never satisfied: job %d ended CANCELLED (afterok:%d)" % (first, first)),
        (third, "dependency never satisfied: job %d ended CANCELLED (afterok:%d)" % (second, second)),
        (fourth, "dependency never satisfied: job %d ended CANCELLED (afterok:%d)" % (third, third)),
    ]
    assert [a for a in actions if isinstance(a, Reply)][0].message["ok"]
    assert started(c.schedule(T0 + 1)) == [on_failure]
    assert c.jobs[on_end].state == PENDING and on_end not in c.blocked


def test_after_on_a_job_cancelled_before_it_started_holds():
    c = make(gpus=1)
    first = submitted(c)
    waiting = submitted(c, dependency=dep("after:%d" % first))
    cancel(c, ids=[first])
    assert waiting not in c.blocked
    assert started(c.schedule(T0 + 1)) == [waiting]


def test_cancelling_a_waiting_job_forgets_what_it_waited_on():
    c = make(gpus=1)
    first = running_job(c)
    waiting = submitted(c, dependency=dep("afterok:%d" % first))
    cancel(c, ids=[waiting])
    assert c.jobs[waiting].reason == "cancelled by alice"
    assert waiting not in c.blocked and first not in c._waiting_on
    actions = exited(c, first, T0 + 1, exit_code=1)
    assert [a for a in actions if isinstance(a, Save) and a.job.id == waiting] == []


def test_a_node_failure_cancels_afterok_dependants_and_starts_afternotok_ones():
    c = make(gpus=1)
    first = running_job(c)
    ok_only = submitted(c, dependency=dep("afterok:%d" % first))
    not_ok = submitted(c, dependency=dep("afternotok:%d" % first))
    c.handle({"kind": "node_down", "name": "n1", "reason": "no heartbeat"}, T0 + 5)
    assert c.jobs[first].state == NODE_FAIL
    assert c.jobs[ok_only].state == CANCELLED
    assert c.jobs[ok_only].reason == "dependency never satisfied: job %d ended NODE_FAIL (afterok:%d)" % (
        first, first)
    assert not_ok not in c.blocked and c.jobs[not_ok].state == PENDING


def test_a_dependency_on_a_job_on_several_hosts():
    c = make(nodes={"n1": 1, "n2": 1})
    gang = submitted(c, nnodes=2, gpus=1)
    after = submitted(c, gpus=0, dependency=dep("after:%d" % gang))
    ok = submitted(c, gpus=0, dependency=dep("afterok:%d" % gang))
    assert started(c.schedule(T0)) == [gang, after]
    job = c.jobs[gang]
    for host, _ in job.parts:
        c.handle({"kind": "job_port", "node": host, "job_id": gang, "attempt": 1, "port": 29500}, T0)
    for host, _ in job.parts:
        c.handle({"kind": "job_exited", "node": host, "job_id": gang, "attempt": 1, "exit_code": 0,
                  "signal": None}, T0 + 1)
    assert c.jobs[gang].state == COMPLETED
    assert started(c.schedule(T0 + 1)) == [ok]


# ---------------------------------------------------------------------------------------------
# A restart of the master


def _restart(c, keep_finished=10000):
    """A fresh controller from what the store would hold (records round-tripped through JSON)."""
    jobs = [Job.from_dict(json.loads(json.dumps(job.to_dict()))) for job in c.jobs.values()]
    fresh = Controller(Settings(keep_finished=keep_finished), jobs, c.next_id, c.next_seq)
    fresh.handle(node_up(), T0)
    return fresh


def test_a_restart_keeps_the_dependency_and_what_of_it_holds():
    c = make(gpus=1)
    a, b = running_job(c), submitted(c)
    waiting = submitted(c, dependency=dep("afterok:%d,after:%d" % (a, b)))
    c.handle({"kind": "job_exited", "node": "n1", "job_id": a, "attempt": 1, "exit_code": 0, "signal": None}, T0)
    c = _restart(c)
    assert c.jobs[waiting].dependency == [["afterok", a, True], ["after", b, False]]
    assert row(c, waiting)["reason"] == "Dependency: waits for job %d to start (after:%d)" % (b, b)
    actions = c.schedule(T0 + 1)  # b starts, then (2 GPUs after the restart) the job that waited for it
    assert started(actions) == [b, waiting]
    assert Logged("job %d: its dependencies are satisfied" % waiting) in actions


def test_after_a_restart_a_dependency_that_can_no_longer_be_known_cancels_the_job():
    c = make(gpus=1)
    first = running_job(c)
    waiting = submitted(c, dependency=dep("afterok:%d" % first))
    jobs = [Job.from_dict(job.to_dict()) for job in c.jobs.values() if job.id != first]  # its record was lost
    fresh = Controller(Settings(), jobs, c.next_id, c.next_seq)
    actions = fresh.schedule(T0 + 1)
    reason = "dependency never satisfied: job %d is no longer known (afterok:%d)" % (first, first)
    assert actions[:2] == [Saved(waiting, CANCELLED, (PENDING, CANCELLED, reason, "dependency"), at=T0 + 1),
                           Logged("cancel job %d (pending): %s" % (waiting, reason))]


def test_a_job_lost_at_recovery_cancels_its_afterok_dependants():
    c = make(gpus=1)
    first = running_job(c)
    c.handle({"kind": "job_started", "node": "n1", "job_id": first, "attempt": 1, "sup_pid": 1, "sup_start": 1,
              "pgid": 1}, T0)
    chain = [submitted(c, dependency=dep("afterok:%d" % first))]
    chain.append(submitted(c, dependency=dep("afterok:%d" % chain[0])))
    c = _restart(c)
    lost(c, first, T0 + 10, started=True, reason="its supervisor is gone")
    assert [c.jobs[i].state for i in [first] + chain] == [NODE_FAIL, CANCELLED, CANCELLED]


def test_the_dependency_survives_the_store(tmp_path):
    store = Store(str(tmp_path / "state"))
    job = Job(id=3, user="alice", uid=1000, gid=1000, command=["true"], cwd="/tmp", output="/tmp/o",
              submit_time=T0, queue_seq=3, state=PENDING, dependency=[["afterok", 1, True], ["after", 2, False]])
    store.write([job], [], [], 4, 4)
    active, _, _, _ = store.load(10)
    assert active[0].dependency == [["afterok", 1, True], ["after", 2, False]]
    store.close()


@pytest.mark.parametrize("dependency", [
    "afterok:1", [["afterok", 1]], [["nope", 1, False]], [["afterok", "1", False]], [["afterok", 1, 1]],
    [["afterok", 0, False]], [["afterok", True, False]],
])
def test_a_stored_record_with_an_implausible_dependency_is_set_aside(tmp_path, dependency):
    store = Store(str(tmp_path / "state"))
    job = Job(id=3, user="alice", uid=1000, gid=1000, command=["true"], cwd="/tmp", output="/tmp/o",
              submit_time=T0, queue_seq=3, state=PENDING)
    record = job.to_dict()
    record["dependency"] = dependency
    store.db.execute("INSERT INTO jobs (id, state, record) VALUES (3, 'PENDING', ?)", (json.dumps(record),))
    active, _, _, _ = store.load(10)
    assert active == [] and "dependency" in store.set_aside[0]
    store.close()


def test_the_row_of_every_job_carries_its_dependency():
    c = make(gpus=1)
    first = running_job(c)
    waiting = submitted(c, dependency=dep("afterok:%d:%d" % (first, first)))
    rows = rows_by_id(c)
    assert rows[waiting]["dependency"] == "afterok:%d" % first
    assert rows[first]["dependency"] is None
