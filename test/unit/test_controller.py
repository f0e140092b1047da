"""The master's logic, event by event: `handle(event, now) -> actions`, `advance(now)`,
`schedule(now)`, `next_deadline(now)`. No sockets, no threads, no clock: time is an argument and
the tests assert on the exact list of actions (types, order, and what they carry)."""

import json
import signal
from unittest.mock import ANY

import pytest

from mgpu import cells, errors, protocol
from mgpu.controller import Controller, Launch, Log, ReadHistory, Release, Reply, Save, Settings, SignalJob
from mgpu.model import Job, JobState

T0 = 1000.0
SIGTERM, SIGKILL = int(signal.SIGTERM), int(signal.SIGKILL)
SIGUSR1 = int(signal.SIGUSR1)

ALICE = {"uid": 1000, "gid": 1000, "user": "alice", "home": "/home/alice"}
BOB = {"uid": 1001, "gid": 1001, "user": "bob", "home": "/home/bob"}
OPERATOR = {"uid": 1500, "gid": 1500, "user": "oper", "home": "/home/oper"}
ROOT = {"uid": 0, "gid": 0, "user": "root", "home": "/root"}

PENDING, RUNNING = JobState.PENDING, JobState.RUNNING
COMPLETED, FAILED, CANCELLED = JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED
TIMEOUT, NODE_FAIL = JobState.TIMEOUT, JobState.NODE_FAIL


# ---------------------------------------------------------------------------------------------
# Matchers: a Save carries a live Job and a Transition (compared by identity), and log lines are
# prose; these compare what matters. Subclasses of the action types, so that `actions ==
# expected` asks them first.


class Saved(Save):
    """A Save of job `job_id`, now in `state`, recording `change` = (old, new, reason, cause) at
    `at` (or no transition when change is None), with `env` (None: no new environment)."""

    __slots__ = ("job_id", "state", "change", "new_env", "at")

    def __init__(self, job_id, state, change=None, env=None, at=ANY):
        self.job_id, self.state, self.change, self.new_env, self.at = job_id, state, change, env, at

    def __eq__(self, other):
        if not isinstance(other, Save):
            return NotImplemented
        t = other.transition
        got = None if t is None else (t.old, t.new, t.reason, t.cause)
        if (self.change is None) != (t is None):
            return False
        return (other.job.id == self.job_id and other.job.state == self.state
                and (t is None or (got == self.change and t.job_id == self.job_id and self.at == t.time))
                and other.env == self.new_env)

    __hash__ = None

    def __repr__(self):
        return "Saved(%r, %r, %r, env=%r, at=%r)" % (self.job_id, self.state, self.change, self.new_env, self.at)


def _save_repr(self):
    t = self.transition
    change = None if t is None else (t.old, t.new, t.reason, t.cause, "at %r" % t.time)
    return "Save(job %s %s, %r, env=%r)" % (self.job.id, self.job.state, change, self.env)


Save.__repr__ = _save_repr  # readable diffs (test-only; Save itself prints object addresses)


class Logged(Log):
    """A Log line containing every fragment."""

    __slots__ = ("fragments",)

    def __init__(self, *fragments):
        self.fragments = fragments

    def __eq__(self, other):
        if not isinstance(other, Log):
            return NotImplemented
        return all(fragment in other.line for fragment in self.fragments)

    __hash__ = None

    def __repr__(self):
        return "Logged(%s)" % ", ".join(map(repr, self.fragments))


# ---------------------------------------------------------------------------------------------
# Events


def gpu_dicts(count, memory_mb=16000):
    return [{"index": i, "uuid": "u%d" % i, "name": "G", "memory_mb": memory_mb} for i in range(count)]


def node_up(name="n1", gpus=2, memory_mb=16000):
    return {"kind": "node_up", "name": name, "gpus": gpu_dicts(gpus, memory_mb)}


def make(gpus=2, nodes=None, **settings):
    c = Controller(Settings(**settings))
    for name, count in (nodes or {"n1": gpus}).items():
        assert c.handle(node_up(name, count), 0.0) == [Logged("node %s up" % name)]
    return c


def request(c, type_, fields=None, peer=ALICE, now=T0, token="tok"):
    """A request as the master passes it on: checked by the protocol first."""
    _, checked = protocol.check_request(protocol.request(type_, **(fields or {})))
    return c.handle({"kind": "request", "type": type_, "token": token, "fields": checked,
                     "peer": peer}, now)


def submit(c, peer=ALICE, now=T0, token="tok", **fields):
    base = {"command": ["python", "train.py"], "cwd": "/home/%s/work" % peer["user"],
            "env": {"PATH": "/usr/bin"}}
    base.update(fields)
    return request(c, "submit", base, peer, now, token)


def reply(actions, token="tok"):
    replies = [a for a in actions if isinstance(a, Reply)]
    assert len(replies) == 1 and replies[0].token == token, actions
    return replies[0].message


def submitted(c, peer=ALICE, now=T0, **fields):
    """The id of a newly accepted job."""
    message = reply(submit(c, peer, now, **fields))
    assert message["ok"], message
    return message["result"]["job_id"]


def refused(actions, code):
    """The message of the one error reply in `actions` (which must hold nothing else)."""
    assert actions == [Reply("tok", {"ok": False, "error": code, "message": ANY})]
    return actions[0].message["message"]


def running_job(c, now=T0, peer=ALICE, **fields):
    job_id = submitted(c, peer, now, **fields)
    c.schedule(now)
    assert c.jobs[job_id].state == RUNNING
    return job_id


def exited(c, job_id, now, exit_code=0, signum=None, attempt=None, node=None, error=None):
    job = c.jobs[job_id]
    event = {"kind": "job_exited", "node": job.node if node is None else node, "job_id": job_id,
             "attempt": job.attempt if attempt is None else attempt, "exit_code": exit_code,
             "signal": signum}
    if error is not None:
        event["error"] = error
    return c.handle(event, now)


def lost(c, job_id, now, started, reason="its supervisor disappeared"):
    job = c.jobs[job_id]
    return c.handle({"kind": "job_lost", "node": job.node, "job_id": job_id, "attempt": job.attempt,
                     "started": started, "reason": reason}, now)


def queue(c, peer=ALICE, now=T0, **fields):
    message = reply(request(c, "queue", fields, peer, now))
    assert message["ok"], message
    return message["result"]


def rows_by_id(c, **fields):
    return {row["id"]: row for row in queue(c, all=True, **fields)["jobs"]}


def cancel(c, peer=ALICE, now=T0, **fields):
    return request(c, "cancel", fields, peer, now)


def cancel_ok(results):
    return Reply("tok", {"ok": True, "result": {"results": results}})


# ---------------------------------------------------------------------------------------------
# Submit


def test_submit_saves_the_job_with_its_environment_then_logs_and_replies():
    c = make()
    actions = submit(c, env={"PATH": "/usr/bin", "SEED": "7"})
    job = c.jobs[1]
    assert actions == [
        Saved(1, PENDING, ("", PENDING, "submitted", "submit by alice"),
              env={"PATH": "/usr/bin", "SEED": "7"}, at=T0),
        Logged("submit job 1", "alice", "1 GPU", "python train.py"),
        Reply("tok", {"ok": True, "result": {"job_id": 1, "output": "/home/alice/.mgpu/logs/1.out",
                                             "error": None}}),
    ]
    assert actions[0].job is job
    assert (job.user, job.uid, job.gid, job.command, job.cwd) == (
        "alice", 1000, 1000, ["python", "train.py"], "/home/alice/work")
    assert (job.state, job.gpus, job.gpu_ids, job.mem_mb, job.priority, job.submit_time) == (
        PENDING, 1, None, None, 0, T0)
    assert job.attempt == 0 and job.restarts == 0 and job.start_time is None


def test_submit_does_not_start_the_job_a_scheduler_pass_does():
    c = make()
    actions = submit(c)
    assert not any(isinstance(a, (Launch, SignalJob)) for a in actions)
    assert c.jobs[1].state == PENDING


def test_job_ids_and_queue_places_increase_with_each_submit():
    c = make()
    ids = [submitted(c, now=T0 + i) for i in range(3)]
    assert ids == [1, 2, 3]
    seqs = [c.jobs[i].queue_seq for i in ids]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_output_and_error_paths_expand_job_user_and_name_relative_to_cwd():
    c = make()
    result = reply(submit(c, name="train", output="logs/%x-%j.out", error="/tmp/%u-%j.err"))["result"]
    assert result == {"job_id": 1, "output": "/home/alice/work/logs/train-1.out", "error": "/tmp/alice-1.err"}
    interactive = reply(submit(c, interactive=True))["result"]
    assert interactive["error"] == "/home/alice/.mgpu/logs/2.err"


def test_a_relative_working_directory_is_refused():
    c = make()
    message = refused(submit(c, cwd="work"), errors.INVALID_ARGUMENT)
    assert "absolute" in message
    assert c.jobs == {}


def test_gpu_ids_ask_for_exactly_those_gpus():
    c = make(gpus=4)
    job_id = submitted(c, gpu_ids=[1, 3])
    assert (c.jobs[job_id].gpus, c.jobs[job_id].gpu_ids) == (2, (1, 3))
    c.schedule(T0)
    assert c.jobs[job_id].alloc == (1, 3)
    refused(submit(c, gpu_ids=[2, 2]), errors.INVALID_ARGUMENT)


def test_warning_signal_needs_a_time_limit():
    c = make()
    message = refused(submit(c, warn_signal=SIGUSR1, warn_seconds=30), errors.INVALID_ARGUMENT)
    assert "--time-limit" in message


# -- who may submit ---------------------------------------------------------------------------


@pytest.mark.parametrize("other", [BOB, ROOT], ids=["other user", "root"])
def test_single_user_mode_refuses_every_other_uid_naming_the_owner(other):
    c = make(owner_uid=1000, owner_name="alice")
    for type_, fields in (("submit", {"command": ["true"], "cwd": "/", "env": {}}), ("queue", {}),
                          ("cancel", {"ids": [1]}), ("ping", {})):
        message = refused(request(c, type_, fields, peer=other), errors.PERMISSION_DENIED)
        assert "single-user" in message and "alice" in message, message
        assert "\n" not in message
    assert c.jobs == {}
    assert submitted(c, peer=ALICE) == 1


def test_root_submit_is_refused_unless_allowed():
    c = make()
    message = refused(submit(c, peer=ROOT), errors.PERMISSION_DENIED)
    assert "root" in message and "allow_root_jobs" in message
    assert c.jobs == {}
    c = make(allow_root_jobs=True)
    job_id = submitted(c, peer=ROOT)
    assert c.jobs[job_id].uid == 0


@pytest.mark.parametrize("priority,accepted", [(0, True), (100, True), (101, False), (-1, False)])
def test_users_priority_is_bounded_by_max_user_priority(priority, accepted):
    c = make()
    actions = submit(c, priority=priority)
    if accepted:
        assert reply(actions)["ok"] and c.jobs[1].priority == priority
    else:
        message = refused(actions, errors.INVALID_ARGUMENT)
        assert "priority" in message and "100" in message
        assert c.jobs == {}


def test_max_user_priority_is_configurable():
    c = make(max_user_priority=5)
    assert reply(submit(c, priority=5))["ok"]
    refused(submit(c, priority=6), errors.INVALID_ARGUMENT)


@pytest.mark.parametrize("peer", [ROOT, OPERATOR], ids=["root", "operator"])
@pytest.mark.parametrize("priority", [1000, -10])
def test_root_and_operators_may_go_beyond_the_priority_bounds(peer, priority):
    c = make(allow_root_jobs=True, operator_uids=(1500,))
    job_id = submitted(c, peer=peer, priority=priority)
    assert c.jobs[job_id].priority == priority


# -- what can never run -----------------------------------------------------------------------


@pytest.mark.parametrize("fields,words", [
    ({"gpus": 3}, "3 GPUs"),
    ({"gpu_ids": [5]}, "GPU 5"),
    ({"gpus": 1, "mem_mb": 20000}, "20000 MB"),
])
def test_a_request_no_node_can_ever_satisfy_is_refused(fields, words):
    c = make(gpus=2)
    message = refused(submit(c, **fields), errors.UNSATISFIABLE)
    assert words in message, message
    assert c.jobs == {} and c.next_id == 1


@pytest.mark.parametrize("nodes", [{}, {"cpu1": 0}], ids=["no node", "node without GPUs"])
def test_without_any_gpu_the_refusal_suggests_gpus_0(nodes):
    c = make(nodes=nodes) if nodes else Controller(Settings())
    message = refused(submit(c), errors.UNSATISFIABLE)
    assert "--gpus 0" in message, message


def test_a_job_without_gpus_runs_on_a_node_without_gpus():
    c = make(nodes={"cpu1": 0})
    job_id = submitted(c, gpus=0)
    job = c.jobs[job_id]
    assert c.schedule(T0) == [Saved(job_id, RUNNING, (PENDING, RUNNING, "", "scheduled"), at=T0),
                              Launch(job), Logged("start job 1", "cpu1")]
    assert job.alloc == () and job.node == "cpu1"


# ---------------------------------------------------------------------------------------------
# Scheduling


def test_a_pass_starts_the_job_saving_before_launching():
    c = make()
    job_id = submitted(c)
    job = c.jobs[job_id]
    assert c.schedule(T0 + 1) == [
        Saved(1, RUNNING, (PENDING, RUNNING, "", "scheduled"), at=T0 + 1),
        Launch(job),
        Logged("start job 1", "n1", "0"),
    ]
    assert (job.node, job.alloc, job.attempt, job.start_time) == ("n1", (0,), 1, T0 + 1)
    assert c.schedule(T0 + 2) == []  # nothing changed since


def test_a_pass_fills_the_node_and_the_rest_waits():
    c = make(gpus=2)
    ids = [submitted(c) for _ in range(3)]
    actions = c.schedule(T0)
    assert [a.job.id for a in actions if isinstance(a, Launch)] == ids[:2]
    assert sorted(c.jobs[i].alloc for i in ids[:2]) == [(0,), (1,)]
    assert c.jobs[ids[2]].state == PENDING


def test_a_job_end_frees_its_gpus_for_the_next_pass():
    c = make(gpus=1)
    first = running_job(c)
    second = submitted(c)
    assert c.schedule(T0) == []
    exited(c, first, T0 + 5)
    assert c.schedule(T0 + 5) == [Saved(second, RUNNING, ANY), Launch(c.jobs[second]), Logged("start job 2")]


# ---------------------------------------------------------------------------------------------
# Ends of jobs


@pytest.mark.parametrize("exit_code,signum,error,state,reason_has", [
    (0, None, None, COMPLETED, ""),
    (3, None, None, FAILED, "exit code 3"),
    (137, 9, None, FAILED, "signal 9"),
    (None, None, "user id 1000 no longer exists", FAILED, "no longer exists"),
])
def test_exit_status_decides_the_final_state(exit_code, signum, error, state, reason_has):
    c = make()
    job_id = running_job(c)
    actions = exited(c, job_id, T0 + 65, exit_code, signum, error=error)
    assert actions == [
        Saved(job_id, state, (RUNNING, state, ANY, "exit"), at=T0 + 65),
        Release("n1", job_id, 1),
        Logged("end job %d" % job_id, state),
    ]
    job = c.jobs[job_id]
    assert job.exit_code == exit_code
    assert reason_has in job.reason
    assert job.end_time == T0 + 65
    if state == COMPLETED:
        assert job.reason == ""


def test_a_signal_death_reads_as_128_plus_n_and_names_the_signal():
    c = make()
    job_id = running_job(c)
    exited(c, job_id, T0 + 1, exit_code=128 + SIGKILL, signum=SIGKILL)
    job = c.jobs[job_id]
    assert (job.state, job.exit_code) == (FAILED, 137)
    assert "SIGKILL" in job.reason
    row = rows_by_id(c)[job_id]
    assert (row["state"], row["exit_code"]) == (FAILED, 137)


def test_job_started_records_the_supervisor():
    c = make()
    job_id = running_job(c)
    actions = c.handle({"kind": "job_started", "node": "n1", "job_id": job_id, "attempt": 1,
                        "sup_pid": 4242, "sup_start": 99, "pgid": 4243}, T0 + 1)
    assert actions == [Saved(job_id, RUNNING)]
    assert (c.jobs[job_id].sup_pid, c.jobs[job_id].pgid) == (4242, 4243)
    assert rows_by_id(c)[job_id]["started"] is True


def _restarted(c, job_id, now):
    """Requeue a running job (its node lost it before it started) and start it again."""
    lost(c, job_id, now, started=False)
    c.schedule(now)
    assert c.jobs[job_id].state == RUNNING


def test_reports_about_an_older_attempt_are_ignored():
    c = make(gpus=1)
    job_id = running_job(c)
    _restarted(c, job_id, T0 + 10)
    job = c.jobs[job_id]
    assert job.attempt == 2
    assert exited(c, job_id, T0 + 11, exit_code=1, attempt=1) == []
    assert lost(c, job_id, T0 + 11, started=True) != []  # sanity: the current attempt counts
    c = make(gpus=1)
    job_id = running_job(c)
    _restarted(c, job_id, T0 + 10)
    assert c.handle({"kind": "job_started", "node": "n1", "job_id": job_id, "attempt": 1,
                     "sup_pid": 1, "sup_start": 1, "pgid": 1}, T0 + 11) == []
    assert c.handle({"kind": "job_lost", "node": "n1", "job_id": job_id, "attempt": 1,
                     "started": True, "reason": "late"}, T0 + 11) == []
    assert exited(c, job_id, T0 + 11, exit_code=1, attempt=1) == []
    job = c.jobs[job_id]
    assert (job.state, job.attempt, job.sup_pid) == (RUNNING, 2, None)


def test_reports_from_another_node_or_about_ended_jobs_are_ignored():
    c = make(nodes={"n1": 1, "n2": 1})
    job_id = running_job(c)
    other = "n2" if c.jobs[job_id].node == "n1" else "n1"
    assert exited(c, job_id, T0 + 1, node=other) == []
    assert c.jobs[job_id].state == RUNNING
    exited(c, job_id, T0 + 2)
    assert exited(c, job_id, T0 + 3, exit_code=1) == []
    assert c.jobs[job_id].state == COMPLETED
    assert c.handle({"kind": "job_exited", "node": "n1", "job_id": 99, "attempt": 1,
                     "exit_code": 0, "signal": None}, T0) == []


# -- lost jobs --------------------------------------------------------------------------------


def test_a_job_lost_before_it_started_goes_back_to_pending_without_a_restart():
    c = make()
    job_id = running_job(c)
    seq = c.jobs[job_id].queue_seq
    actions = lost(c, job_id, T0 + 3, started=False, reason="the daemon stopped before the job started")
    assert actions == [
        Saved(job_id, PENDING, (RUNNING, PENDING, ANY, "lost"), at=T0 + 3),
        Release("n1", job_id, 1),
        Logged("requeue job %d" % job_id),
    ]
    job = c.jobs[job_id]
    assert (job.state, job.restarts, job.node, job.alloc, job.start_time) == (PENDING, 0, None, (), None)
    assert "the daemon stopped" in job.reason
    assert job.queue_seq > seq
    c.schedule(T0 + 4)
    assert (job.state, job.attempt) == (RUNNING, 2)


def test_a_started_job_that_is_lost_is_a_node_failure():
    c = make()
    job_id = running_job(c)
    actions = lost(c, job_id, T0 + 3, started=True, reason="its node n1 is not part of this cluster")
    assert actions == [
        Saved(job_id, NODE_FAIL, (RUNNING, NODE_FAIL, ANY, "lost"), at=T0 + 3),
        Release("n1", job_id, 1),
        Logged("NODE_FAIL", "job %d" % job_id),
    ]
    assert c.jobs[job_id].end_time == T0 + 3


def test_a_started_job_that_allows_requeue_is_requeued_when_lost():
    c = make()
    job_id = running_job(c, requeue=True)
    actions = lost(c, job_id, T0 + 3, started=True)
    assert actions == [Saved(job_id, PENDING, (RUNNING, PENDING, ANY, "lost")), Release("n1", job_id, 1),
                       Logged("requeue job %d" % job_id)]
    assert c.jobs[job_id].restarts == 1


def test_a_job_lost_while_being_cancelled_ends_cancelled():
    c = make()
    job_id = running_job(c, requeue=True)
    cancel(c, ids=[job_id], now=T0 + 1)
    actions = lost(c, job_id, T0 + 2, started=True)
    assert actions == [Saved(job_id, CANCELLED, (RUNNING, CANCELLED, ANY, ANY)), Release("n1", job_id, 1),
                       Logged("CANCELLED")]


# ---------------------------------------------------------------------------------------------
# Time limits, warnings, two-stage stops


def test_time_limit_sends_sigterm_then_sigkill_after_the_grace():
    c = make(kill_grace=5)
    job_id = running_job(c, time_limit=100)
    assert c.next_deadline(T0) == T0 + 100
    assert c.advance(T0 + 99) == []
    assert c.advance(T0 + 100) == [SignalJob("n1", job_id, 1, SIGTERM), Saved(job_id, RUNNING),
                                   Logged("job %d" % job_id, "SIGTERM")]
    assert c.jobs[job_id].stopping
    assert c.next_deadline(T0 + 100) == T0 + 105
    assert c.advance(T0 + 104) == []
    assert c.advance(T0 + 105) == [SignalJob("n1", job_id, 1, SIGKILL), Saved(job_id, RUNNING),
                                   Logged("kill job %d" % job_id, "SIGKILL")]
    assert c.advance(T0 + 500) == []  # once
    assert c.next_deadline(T0 + 500) is None
    actions = exited(c, job_id, T0 + 106, exit_code=137, signum=SIGKILL)
    assert actions == [Saved(job_id, TIMEOUT, (RUNNING, TIMEOUT, ANY, "timeout"), at=T0 + 106),
                       Release("n1", job_id, 1), Logged("end job %d" % job_id, "TIMEOUT")]
    assert "time limit" in c.jobs[job_id].reason


def test_a_job_that_ends_within_the_grace_gets_no_sigkill():
    c = make(kill_grace=5)
    job_id = running_job(c, time_limit=100)
    c.advance(T0 + 100)
    exited(c, job_id, T0 + 101, exit_code=143, signum=SIGTERM)
    assert c.jobs[job_id].state == TIMEOUT
    assert c.advance(T0 + 105) == []
    assert c.next_deadline(T0 + 105) is None


def test_time_limit_with_requeue_goes_to_the_back_of_the_queue():
    c = make(gpus=1)
    first = running_job(c, time_limit=100, requeue=True)
    waiting = [submitted(c, now=T0 + 1), submitted(c, now=T0 + 2)]
    c.schedule(T0 + 2)
    before = c.jobs[first].queue_seq
    c.advance(T0 + 100)
    actions = exited(c, first, T0 + 101, exit_code=143, signum=SIGTERM)
    assert actions == [Saved(first, PENDING, (RUNNING, PENDING, ANY, "timeout"), at=T0 + 101),
                       Release("n1", first, 1), Logged("requeue job %d" % first, "restart 1")]
    job = c.jobs[first]
    assert (job.state, job.restarts) == (PENDING, 1)
    assert job.queue_seq > max(c.jobs[i].queue_seq for i in waiting) > before
    pending_rows = [row["id"] for row in queue(c, now=T0 + 101)["jobs"] if row["state"] == PENDING]
    assert pending_rows == waiting + [first]
    starts = [a.job.id for a in c.schedule(T0 + 101) if isinstance(a, Launch)]
    assert starts == [waiting[0]]


def test_warning_signal_goes_out_once_warn_seconds_before_the_limit():
    c = make()
    job_id = running_job(c, time_limit=100, warn_signal=SIGUSR1, warn_seconds=30)
    assert c.next_deadline(T0) == T0 + 70
    assert c.advance(T0 + 69) == []
    assert c.advance(T0 + 70) == [SignalJob("n1", job_id, 1, SIGUSR1), Saved(job_id, RUNNING),
                                  Logged("warn job %d" % job_id, "SIGUSR1")]
    assert c.advance(T0 + 71) == []
    assert c.next_deadline(T0 + 71) == T0 + 100
    assert c.jobs[job_id].state == RUNNING and not c.jobs[job_id].stopping


def test_a_requeued_job_is_warned_again_on_its_next_attempt():
    c = make(gpus=1)
    job_id = running_job(c, time_limit=100, warn_signal=SIGUSR1, warn_seconds=30, requeue=True)
    assert c.advance(T0 + 70)[0] == SignalJob("n1", job_id, 1, SIGUSR1)
    c.advance(T0 + 100)
    exited(c, job_id, T0 + 101, exit_code=143, signum=SIGTERM)
    c.schedule(T0 + 101)
    assert c.jobs[job_id].attempt == 2
    assert c.next_deadline(T0 + 101) == T0 + 171
    assert c.advance(T0 + 171)[0] == SignalJob("n1", job_id, 2, SIGUSR1)


def test_a_warning_signal_without_seconds_uses_the_default_lead_time():
    from mgpu.model import DEFAULT_WARN_SECONDS
    c = make()
    job_id = running_job(c, time_limit=600, warn_signal=SIGUSR1)
    due = T0 + 600 - DEFAULT_WARN_SECONDS
    assert c.next_deadline(T0) == due
    assert c.advance(due)[0] == SignalJob("n1", job_id, 1, SIGUSR1)


def test_the_default_warning_lead_is_cut_to_half_a_short_time_limit():
    c = make()
    job_id = running_job(c, time_limit=6, warn_signal=SIGUSR1)
    assert c.jobs[job_id].warn_seconds == 3
    assert c.next_deadline(T0) == T0 + 3
    job_id = submitted(c, time_limit=119, warn_signal=SIGUSR1)
    assert c.jobs[job_id].warn_seconds == 59
    job_id = submitted(c, time_limit=120, warn_signal=SIGUSR1)
    assert c.jobs[job_id].warn_seconds == 60


@pytest.mark.parametrize("limit, lead, fragment", [
    (6, 60, "--signal @60 warns 60 s before the time limit, but the limit is 6 s: give a lead shorter "
            "than the limit (e.g. @3)"),
    (60, 60, "but the limit is 60 s"),
    (1, None, "--signal: a time limit of 1 s leaves no time to warn the job before it"),
])
def test_a_warning_lead_not_shorter_than_the_time_limit_is_refused(limit, lead, fragment):
    c = make()
    fields = {"time_limit": limit, "warn_signal": SIGUSR1}
    if lead is not None:
        fields["warn_seconds"] = lead
    assert fragment in refused(submit(c, **fields), errors.INVALID_ARGUMENT)
    assert not c.jobs


def test_requeue_at_the_time_limit_stops_after_max_requeues_then_timeout():
    c = make(gpus=1, max_requeues=2)
    job_id = running_job(c, time_limit=100, requeue=True)
    now = T0
    for restart in (1, 2):
        c.advance(now + 100)
        exited(c, job_id, now + 101, exit_code=143, signum=SIGTERM)
        job = c.jobs[job_id]
        assert (job.state, job.restarts, job.reason) == (PENDING, restart, "requeued: reached its time limit")
        now += 101
        c.schedule(now)
        assert c.jobs[job_id].state == RUNNING
    c.advance(now + 100)
    actions = exited(c, job_id, now + 101, exit_code=143, signum=SIGTERM)
    reason = "reached its time limit of 1:40; not requeued again after 2 restarts (max_requeues)"
    assert actions[0] == Saved(job_id, TIMEOUT, (RUNNING, TIMEOUT, reason, "timeout"))
    assert c.jobs[job_id].restarts == 2


def test_max_requeues_zero_never_requeues_at_the_time_limit():
    c = make(gpus=1, max_requeues=0)
    job_id = running_job(c, time_limit=100, requeue=True)
    c.advance(T0 + 100)
    exited(c, job_id, T0 + 101, exit_code=143, signum=SIGTERM)
    assert c.jobs[job_id].state == TIMEOUT


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_a_pending_job():
    c = make(gpus=1)
    running_job(c)
    job_id = submitted(c)
    actions = cancel(c, ids=[job_id], now=T0 + 5)
    assert actions == [
        Saved(job_id, CANCELLED, (PENDING, CANCELLED, "cancelled by alice", "cancel by alice"), at=T0 + 5),
        Logged("cancel job %d" % job_id),
        cancel_ok([{"id": job_id, "result": "cancelled", "message": "cancelled"}]),
    ]
    assert c.jobs[job_id].end_time == T0 + 5


def test_cancel_a_running_job_is_a_two_stage_stop_and_ends_cancelled():
    c = make(kill_grace=10)
    job_id = running_job(c)
    actions = cancel(c, ids=[job_id], now=T0 + 5)
    assert actions == [
        SignalJob("n1", job_id, 1, SIGTERM), Saved(job_id, RUNNING), Logged("cancel job %d" % job_id),
        cancel_ok([{"id": job_id, "result": "stopping", "message": ANY}]),
    ]
    assert c.next_deadline(T0 + 5) == T0 + 15
    assert c.advance(T0 + 15) == [SignalJob("n1", job_id, 1, SIGKILL), Saved(job_id, RUNNING), Logged("SIGKILL")]
    actions = exited(c, job_id, T0 + 16, exit_code=137, signum=SIGKILL)
    assert actions == [Saved(job_id, CANCELLED, (RUNNING, CANCELLED, "cancelled by alice", "cancel")),
                       Release("n1", job_id, 1), Logged("end job %d" % job_id, "CANCELLED")]


def test_cancelling_a_stopping_job_again_sends_nothing_new():
    c = make()
    job_id = running_job(c)
    cancel(c, ids=[job_id], now=T0 + 1)
    assert cancel(c, ids=[job_id], now=T0 + 2) == [
        cancel_ok([{"id": job_id, "result": "stopping", "message": ANY}])]


def test_a_cancel_wins_over_a_time_limit_stop():
    c = make()
    job_id = running_job(c, time_limit=10, requeue=True)
    c.advance(T0 + 10)
    actions = cancel(c, ids=[job_id], now=T0 + 11)
    assert actions == [Saved(job_id, RUNNING), Logged("cancel job %d" % job_id),
                       cancel_ok([{"id": job_id, "result": "stopping", "message": ANY}])]
    exited(c, job_id, T0 + 12, exit_code=143, signum=SIGTERM)
    assert c.jobs[job_id].state == CANCELLED and c.jobs[job_id].restarts == 0


def test_a_user_may_not_cancel_another_users_job():
    c = make()
    job_id = running_job(c)
    actions = cancel(c, peer=BOB, ids=[job_id])
    assert actions == [cancel_ok([{"id": job_id, "result": "permission_denied", "message": ANY}])]
    assert "alice" in actions[0].message["result"]["results"][0]["message"]
    job = c.jobs[job_id]
    assert job.state == RUNNING and not job.stopping and c.next_deadline(T0) is None


@pytest.mark.parametrize("peer", [ROOT, OPERATOR], ids=["root", "operator"])
def test_root_and_operators_may_cancel_any_job(peer):
    c = make(gpus=1, operator_uids=(1500,))
    running = running_job(c)
    waiting = submitted(c)
    actions = cancel(c, peer=peer, ids=[running, waiting])
    assert reply(actions)["result"]["results"] == [
        {"id": running, "result": "stopping", "message": ANY},
        {"id": waiting, "result": "cancelled", "message": "cancelled"}]
    assert SignalJob("n1", running, 1, SIGTERM) in actions
    assert c.jobs[waiting].state == CANCELLED


def test_cancel_reports_unknown_and_finished_jobs():
    c = make()
    job_id = running_job(c)
    exited(c, job_id, T0 + 1)
    assert cancel(c, ids=[job_id, 77]) == [cancel_ok([
        {"id": job_id, "result": "finished", "message": ANY},
        {"id": 77, "result": "not_found", "message": "no such job"}])]


def test_cancel_by_user_takes_all_that_users_active_jobs():
    c = make(gpus=1)
    a_running = running_job(c)
    a_pending = submitted(c)
    b_pending = submitted(c, peer=BOB)
    actions = cancel(c, user="alice", now=T0 + 1)
    assert [r["id"] for r in reply(actions)["result"]["results"]] == [a_running, a_pending]
    assert c.jobs[a_pending].state == CANCELLED and c.jobs[a_running].stopping
    assert c.jobs[b_pending].state == PENDING


def test_cancel_by_user_of_someone_else_needs_privilege():
    c = make(operator_uids=(1500,))
    job_id = submitted(c)
    message = refused(cancel(c, peer=BOB, user="alice"), errors.PERMISSION_DENIED)
    assert "own jobs" in message
    assert c.jobs[job_id].state == PENDING
    assert reply(cancel(c, peer=OPERATOR, user="alice"))["result"]["results"] == [
        {"id": job_id, "result": "cancelled", "message": "cancelled"}]


# ---------------------------------------------------------------------------------------------
# Time slice (context switch)


def test_a_job_past_the_time_slice_is_requeued_while_another_waits_for_its_gpus():
    c = make(gpus=1, max_job_time=10, kill_grace=5)
    first = running_job(c, now=T0)
    second = submitted(c, now=T0 + 1)
    assert c.schedule(T0 + 1) == []
    assert c.next_deadline(T0 + 1) == T0 + 10
    assert c.advance(T0 + 9) == [] and c.schedule(T0 + 9) == []
    assert c.advance(T0 + 10) == []
    assert c.schedule(T0 + 10) == [SignalJob("n1", first, 1, SIGTERM), Saved(first, RUNNING),
                                   Logged("job %d" % first, "SIGTERM")]
    assert c.jobs[first].stop_cause == "slice"
    assert c.next_deadline(T0 + 10) == T0 + 15
    seq = c.jobs[first].queue_seq
    actions = exited(c, first, T0 + 11, exit_code=143, signum=SIGTERM)
    assert actions == [Saved(first, PENDING, (RUNNING, PENDING, ANY, "slice"), at=T0 + 11),
                       Release("n1", first, 1), Logged("requeue job %d" % first, "restart 1")]
    job = c.jobs[first]
    assert (job.state, job.restarts) == (PENDING, 1)
    assert job.queue_seq > seq and job.queue_seq > c.jobs[second].queue_seq
    assert "time slice" in job.reason
    assert c.schedule(T0 + 11) == [Saved(second, RUNNING, ANY), Launch(c.jobs[second]),
                                   Logged("start job %d" % second)]


def test_a_job_past_the_time_slice_is_left_alone_when_nothing_waits():
    c = make(gpus=2, max_job_time=10)
    job_id = running_job(c)
    other = running_job(c)  # a waiting job it does not block is not a reason either
    assert c.advance(T0 + 10) == []
    assert c.schedule(T0 + 10) == []
    assert c.next_deadline(T0 + 10) is None
    assert c.advance(T0 + 1000) == [] and c.schedule(T0 + 1000) == []
    assert not c.jobs[job_id].stopping and not c.jobs[other].stopping
    # Someone who needs its GPU arrives later: the switch happens on that pass.
    submitted(c, now=T0 + 2000)
    actions = c.schedule(T0 + 2000)
    signals = [a for a in actions if isinstance(a, SignalJob)]
    assert len(signals) == 1 and signals[0].signum == SIGTERM
    assert c.jobs[signals[0].job_id].stop_cause == "slice"


def test_a_job_within_its_time_slice_is_not_switched_out():
    c = make(gpus=1, max_job_time=100)
    job_id = running_job(c)
    submitted(c, now=T0 + 1)
    assert c.advance(T0 + 50) == [] and c.schedule(T0 + 50) == []
    assert not c.jobs[job_id].stopping


def test_no_job_is_switched_out_unless_that_lets_the_waiting_job_start():
    c = make(gpus=2, max_job_time=10)
    old = running_job(c, now=T0)
    young = running_job(c, now=T0 + 5)
    submitted(c, now=T0 + 6, gpus=2)
    c.advance(T0 + 10)
    assert c.schedule(T0 + 10) == []  # stopping `old` alone frees too little
    assert not c.jobs[old].stopping
    c.advance(T0 + 15)
    actions = c.schedule(T0 + 15)
    assert sorted((a.job_id, a.signum) for a in actions if isinstance(a, SignalJob)) == [
        (old, SIGTERM), (young, SIGTERM)]


# ---------------------------------------------------------------------------------------------
# next_deadline


def test_next_deadline_is_none_without_anything_timed():
    c = make()
    assert c.next_deadline(T0) is None
    running_job(c)
    submitted(c)
    assert c.next_deadline(T0) is None


def test_next_deadline_is_the_earliest_over_all_jobs():
    c = make(gpus=4, kill_grace=7)
    running_job(c, now=T0, time_limit=500)                                      # limit T0+500
    running_job(c, now=T0, time_limit=400, warn_signal=SIGUSR1, warn_seconds=50)  # warn T0+350
    assert c.next_deadline(T0) == T0 + 350
    stopping = running_job(c, now=T0)
    cancel(c, ids=[stopping], now=T0 + 100)                                    # kill T0+107
    assert c.next_deadline(T0 + 100) == T0 + 107
    c.advance(T0 + 107)
    assert c.next_deadline(T0 + 107) == T0 + 350


def test_next_deadline_counts_the_time_slice_crossing():
    c = make(gpus=2, max_job_time=40)
    job_id = running_job(c, time_limit=100)
    assert c.next_deadline(T0) == T0 + 40
    c.advance(T0 + 40)
    assert c.next_deadline(T0 + 40) == T0 + 100
    assert c.jobs[job_id].state == RUNNING


# ---------------------------------------------------------------------------------------------
# Queue view

ROW_FIELDS = {"id": int, "user": str, "state": str, "priority": int, "gpus": int, "gpu_ids": list,
              "mem_mb": (int, type(None)), "node": (str, type(None)), "name": (str, type(None)),
              "command": list, "exit_code": (int, type(None)), "reason": str, "restarts": int,
              "submit_time": (int, float), "start_time": (int, float, type(None)),
              "end_time": (int, float, type(None))}


def three_kinds_of_jobs():
    """A controller with a job that ended (exit 1), one running (named, 4000 MB) and one pending
    (2 GPUs, priority 3): (controller, ended, running, pending)."""
    c = make(gpus=2)
    done = running_job(c)
    exited(c, done, T0 + 1, exit_code=1)
    running = running_job(c, now=T0 + 1, name="train", mem_mb=4000)
    pending = submitted(c, now=T0 + 2, gpus=2, priority=3)
    return c, done, running, pending


def test_queue_rows_carry_what_a_user_needs():
    c, done, running, pending = three_kinds_of_jobs()
    c.schedule(T0 + 2)
    result = queue(c, all=True, now=T0 + 3)
    assert result["time"] == T0 + 3
    rows = {row["id"]: row for row in result["jobs"]}
    assert set(rows) == {running, pending, done}
    for row in rows.values():
        for field, types in ROW_FIELDS.items():
            assert isinstance(row[field], types) and not isinstance(row[field], bool), (field, row)
    assert (rows[running]["state"], rows[running]["node"], len(rows[running]["gpu_ids"]), rows[running]["mem_mb"],
            rows[running]["name"], rows[running]["start_time"]) == (RUNNING, "n1", 1, 4000, "train", T0 + 1)
    assert (rows[pending]["state"], rows[pending]["priority"], rows[pending]["gpus"], rows[pending]["node"]) == (
        PENDING, 3, 2, None)
    assert rows[pending]["reason"]  # why it waits
    assert (rows[done]["state"], rows[done]["exit_code"], rows[done]["end_time"]) == (FAILED, 1, T0 + 1)
    assert rows[done]["command"] == ["python", "train.py"] and rows[done]["user"] == "alice"
    assert rows[done]["gpu_ids"] == [0] and rows[done]["start_time"] == T0
    json.dumps(result)  # it goes on the wire


def test_queue_shows_nodes_with_their_gpus_and_reservations():
    c = make(gpus=2)
    exclusive = running_job(c)
    shared = running_job(c, mem_mb=4000)
    c.handle({"kind": "gpu_usage", "node": "n1", "usage": {"1": 1000}}, T0)
    nodes = queue(c)["nodes"]
    assert [n["name"] for n in nodes] == ["n1"]
    gpus = nodes[0]["gpus"]
    assert [(g["index"], g["name"], g["memory_mb"], g["reserved_mb"], g["jobs"]) for g in gpus] == [
        (0, "G", 16000, 16000, [exclusive]), (1, "G", 16000, 4000, [shared])]
    assert gpus[1]["external_mb"] == 1000


def test_queue_without_all_hides_finished_jobs_and_filters_by_user():
    c = make(gpus=2)
    done = running_job(c)
    exited(c, done, T0 + 1)
    mine = submitted(c)
    theirs = submitted(c, peer=BOB)
    assert [r["id"] for r in queue(c)["jobs"]] == [mine, theirs]
    assert [r["id"] for r in queue(c, user="bob")["jobs"]] == [theirs]
    assert {r["id"] for r in queue(c, all=True)["jobs"]} == {done, mine, theirs}


def brief_lines(c, now=T0, **fields):
    """The table rows of a compact queue reply, as a client reads them off the wire."""
    result = protocol.decode(protocol.encode(reply(request(c, "queue", dict(fields, brief=True), ALICE, now))))
    assert result["ok"], result
    return [line.split(cells.SEPARATOR) for line in result["result"]["cells"]]


def test_the_compact_queue_reply_has_the_table_cells_of_the_full_rows():
    c, done, running, pending = three_kinds_of_jobs()
    theirs = submitted(c, peer=BOB, now=T0 + 2, command=["sleep", "\x1b[2J"], name="a\x7fb\tc")
    c.schedule(T0 + 2)
    full = queue(c, all=True, now=T0 + 3)["jobs"]
    assert brief_lines(c, now=T0 + 3, all=True) == [cells.queue_cells(row, T0 + 3) for row in full]
    lines = {int(row[0]): row for row in brief_lines(c, now=T0 + 3, all=True)}
    assert set(lines) == {done, running, pending, theirs}
    assert lines[running][1:5] == ["alice", "RUNNING", "0", "1 (0) x4000M"] and lines[running][5] == repr(T0 + 1)
    assert lines[running][6] == "0:02" and lines[running][11] == "n1:0"
    assert lines[done][2] == "FAILED" and lines[done][9] == "1"
    assert lines[pending][2:5] == ["PENDING", "3", "2"] and lines[pending][5] == ""
    assert lines[pending][11].startswith("(") and lines[pending][11] == "(%s)" % c.waiting[pending]
    # Escaped on the master: no terminal control goes out, and no name splits its row.
    assert lines[theirs][10] == "a\\x7fb\\tc" and len(lines[theirs]) == len(cells.COLUMNS)
    assert [int(row[0]) for row in brief_lines(c, user="bob")] == [theirs]
    assert [int(row[0]) for row in brief_lines(c, state="RUNNING")] == [running]


def test_a_pending_jobs_kept_table_row_follows_its_reason_and_leaves_with_it():
    c = make(gpus=1)
    holder = running_job(c)
    waiting = submitted(c, now=T0 + 1)
    c.schedule(T0 + 1)
    first = {int(row[0]): row for row in brief_lines(c)}
    assert first[waiting][11] == "(%s)" % c.waiting[waiting]
    c.waiting[waiting] = "Priority: behind job 1"  # as a later pass may find
    assert {int(row[0]): row for row in brief_lines(c)}[waiting][11] == "(Priority: behind job 1)"
    assert c._cells and waiting in c._cells
    exited(c, holder, T0 + 2)
    c.schedule(T0 + 2)
    rows = {int(row[0]): row for row in brief_lines(c, now=T0 + 3)}
    assert rows[waiting][2] == "RUNNING" and holder not in rows
    assert waiting not in c._cells  # no longer pending: its kept row is gone


def test_a_compact_reply_relayed_to_a_node_is_plain_json_again():
    c = make(gpus=1)
    submitted(c)
    message = reply(request(c, "queue", {"brief": True}))
    assert isinstance(message["result"]["cells"], protocol.Encoded)
    relayed = protocol.plain(message)
    assert relayed["result"]["cells"] == protocol.decode(protocol.encode(message))["result"]["cells"]
    assert protocol.decode(protocol.encode({"type": "relay_reply", "reply": relayed}))["reply"] == relayed


def test_only_the_newest_finished_jobs_are_kept_in_memory():
    c = make(gpus=1, keep_finished=2)
    ids = []
    for i in range(4):
        ids.append(running_job(c, now=T0 + i))
        exited(c, ids[-1], T0 + i + 0.5)
    assert [r["id"] for r in queue(c, all=True)["jobs"]] == ids[2:]
    assert reply(cancel(c, ids=[ids[0]]))["result"]["results"][0]["result"] == "not_found"


def test_queue_state_filter():
    c = make(gpus=1)
    done = running_job(c)
    exited(c, done, T0 + 1)
    c.schedule(T0 + 1)
    running = running_job(c, now=T0 + 2)
    pending = submitted(c, now=T0 + 3)
    assert [r["id"] for r in queue(c, state="pending")["jobs"]] == [pending]
    assert [r["id"] for r in queue(c, state="RUNNING,PENDING")["jobs"]] == [running, pending]
    assert [r["id"] for r in queue(c, state="COMPLETED")["jobs"]] == [done]  # finished without --all


def test_queue_state_filter_refuses_unknown_states():
    c = make()
    message = refused(request(c, "queue", {"state": "RUNNING,SLEEPING"}), errors.INVALID_ARGUMENT)
    assert "SLEEPING" in message and "PENDING" in message


def test_positions_of_pending_jobs_follow_priority_then_submission():
    c = make(gpus=1)
    running = running_job(c)
    low1 = submitted(c, now=T0 + 1)
    low2 = submitted(c, now=T0 + 2)
    high = submitted(c, now=T0 + 3, priority=5)
    c.schedule(T0 + 3)
    rows = queue(c, now=T0 + 4)["jobs"]
    assert [(r["id"], r["position"]) for r in rows] == [(running, None), (high, 1), (low1, 2), (low2, 3)]
    assert all(r["reason"] for r in rows[1:])


def test_ping_and_unknown_events():
    c = make()
    assert request(c, "ping", now=T0 + 5) == [Reply("tok", {"ok": True, "result": {"time": T0 + 5}})]
    assert c.handle({"kind": "no_such_event"}, T0) == [Logged("no_such_event")]


def test_attach_is_for_the_owner_or_the_privileged():
    c = make()
    job_id = submitted(c)
    assert reply(request(c, "attach", {"job_id": job_id}))["result"]["id"] == job_id
    refused(request(c, "attach", {"job_id": job_id}, peer=BOB), errors.PERMISSION_DENIED)
    assert reply(request(c, "attach", {"job_id": job_id}, peer=ROOT))["ok"]
    refused(request(c, "attach", {"job_id": 99}), errors.NOT_FOUND)


def _minimal_fields(spec):
    samples = {list: ["true"], str: "/", dict: {}, int: 1, bool: False}
    fields = {}
    for name, (types, required) in spec.items():
        if required:
            types = types if isinstance(types, tuple) else (types,)
            fields[name] = samples[types[0]]
    return fields


@pytest.mark.parametrize("type_", sorted(protocol.REQUESTS))
def test_every_request_type_of_the_protocol_gets_one_reply(type_):
    c = make()
    actions = request(c, type_, _minimal_fields(protocol.REQUESTS[type_]), peer=ALICE)
    if len(actions) == 1 and isinstance(actions[0], ReadHistory):  # answered once the store was read
        actions = c.handle({"kind": "history_read", "read": actions[0], "jobs": [], "more": False}, T0)
    replies = [a for a in actions if isinstance(a, Reply)]
    assert len(replies) == 1 and replies[0].token == "tok", actions
    assert isinstance(replies[0].message.get("ok"), bool)


# ---------------------------------------------------------------------------------------------
# Restart: a controller rebuilt from what the store holds


def _as_stored(job):
    return Job.from_dict(json.loads(json.dumps(job.to_dict())))


def test_a_rebuilt_controller_keeps_queue_order_ids_and_running_attempts():
    c = make(gpus=1)
    first = running_job(c, requeue=True)
    waiting = [submitted(c, now=T0 + 1), submitted(c, now=T0 + 2, priority=2), submitted(c, now=T0 + 3)]
    c.schedule(T0 + 3)
    done = waiting[2]
    cancel(c, ids=[done], now=T0 + 4)
    order_before = [r["id"] for r in queue(c)["jobs"]]

    rebuilt = Controller(Settings(), jobs=[_as_stored(j) for j in c.jobs.values()],
                         next_id=c.next_id, next_seq=c.next_seq)
    assert rebuilt.handle(node_up("n1", 1), T0 + 10) == [Logged("node n1 up")]
    assert order_before == [first, waiting[1], waiting[0]]
    assert [r["id"] for r in queue(rebuilt, now=T0 + 10)["jobs"]] == order_before
    assert rows_by_id(rebuilt)[done]["state"] == CANCELLED
    assert rebuilt.schedule(T0 + 10) == []  # the GPU is still held by the running job
    assert submitted(rebuilt, now=T0 + 11) == 5
    # The running attempt's exit is still recognised; an older attempt's is not.
    assert exited(rebuilt, first, T0 + 12, exit_code=0, attempt=0) == []
    assert exited(rebuilt, first, T0 + 12, exit_code=0)[0] == Saved(first, COMPLETED, ANY)
    starts = [a.job.id for a in rebuilt.schedule(T0 + 12) if isinstance(a, Launch)]
    assert starts == [waiting[1]]


def test_a_rebuilt_controller_keeps_a_requeued_job_behind_those_that_waited():
    c = make(gpus=1)
    first = running_job(c, requeue=True)
    others = [submitted(c, now=T0 + 1), submitted(c, now=T0 + 2)]
    lost(c, first, T0 + 3, started=True)
    rebuilt = Controller(Settings(), jobs=[_as_stored(j) for j in c.jobs.values()],
                         next_id=c.next_id, next_seq=c.next_seq)
    rebuilt.handle(node_up("n1", 1), T0 + 4)
    assert [r["id"] for r in queue(rebuilt)["jobs"]] == others + [first]
    assert [a.job.id for a in rebuilt.schedule(T0 + 4) if isinstance(a, Launch)] == [others[0]]
    assert rebuilt.jobs[first].restarts == 1


# -- bounded paths, and one bad job cannot stop the queue ---------------------------------------


def test_an_output_path_too_long_once_expanded_is_refused_before_it_is_built():
    c = make()
    message = refused(submit(c, name="n" * 256, output="/tmp/" + "%x" * 1400), errors.INVALID_ARGUMENT)
    assert "--output" in message and "4096" in message
    message = refused(submit(c, name="n" * 256, error="/tmp/" + "%x" * 20), errors.INVALID_ARGUMENT)
    assert "--error" in message
    # Characters within the limit, UTF-8 bytes over it.
    refused(submit(c, name="é" * 256, output="/tmp/" + "%x" * 8), errors.INVALID_ARGUMENT)
    # A relative path counts the working directory too.
    refused(submit(c, output="a" * (4096 - len("/home/alice/work/") + 1)), errors.INVALID_ARGUMENT)
    assert c.jobs == {}
    exactly = "/tmp/" + "%x" * 15 + "a" * (4096 - 5 - 15 * 256)
    result = reply(submit(c, name="n" * 256, output=exactly))["result"]
    assert len(result["output"]) == 4096
    assert reply(submit(c, output="a" * (4096 - len("/home/alice/work/"))))["ok"]


def _corrupt(c, job_id, **fields):
    for name, value in fields.items():
        setattr(c.jobs[job_id], name, value)


@pytest.mark.parametrize("corruption", [{"mem_mb": "lots"}, {"gpus": "two"}, {"gpu_ids": (object(),)},
                                        {"time_limit": 10 ** 400}],
                         ids=lambda f: next(iter(f)))
def test_a_job_that_breaks_the_scheduler_is_held_and_the_others_start(corruption):
    c = make(gpus=3)
    first = submitted(c, now=T0)
    bad = submitted(c, now=T0 + 1, gpus=1)
    others = [submitted(c, now=T0 + 2), submitted(c, now=T0 + 3)]
    last = submitted(c, now=T0 + 4)
    _corrupt(c, bad, **corruption)
    c.dirty = True
    actions = c.schedule(T0 + 5)
    started = [a.job.id for a in actions if isinstance(a, Launch)]
    assert started == [first] + others  # three GPUs: the bad one is held, the last waits
    holds = [a for a in actions if isinstance(a, Log) and "hold job %d" % bad in a.line]
    assert len(holds) == 1 and "internal error while scheduling" in holds[0].line
    assert c.jobs[bad].state == PENDING
    rows = rows_by_id(c)
    assert rows[bad]["reason"].startswith("held: internal error while scheduling: ")
    assert rows[last]["state"] == PENDING and not rows[last]["reason"].startswith("held")
    # Later passes leave the held job out, without another log line; the others go on.
    assert exited(c, first, T0 + 6)[0] == Saved(first, COMPLETED, ANY)
    actions = c.schedule(T0 + 6)
    assert [a.job.id for a in actions if isinstance(a, Launch)] == [last]
    assert not [a for a in actions if isinstance(a, Log) and "hold" in a.line]
    assert c.jobs[bad].state == PENDING
    assert rows_by_id(c)[bad]["reason"].startswith("held: ")
    # A held job can still be cancelled, and then it is forgotten.
    assert reply(cancel(c, ids=[bad]))["result"]["results"][0]["result"] == "cancelled"
    c.dirty = True
    c.schedule(T0 + 7)
    assert bad not in c.held


def test_a_job_whose_priority_breaks_the_queue_order_is_held():
    c = make(gpus=2)
    first = submitted(c, now=T0)
    bad = submitted(c, now=T0 + 1)
    second = submitted(c, now=T0 + 2)
    _corrupt(c, bad, priority="high")
    c.dirty = True
    actions = c.schedule(T0 + 3)
    assert [a.job.id for a in actions if isinstance(a, Launch)] == [first, second]
    assert any(isinstance(a, Log) and "hold job %d" % bad in a.line for a in actions)
    assert c.held[bad].startswith("held: internal error while scheduling: TypeError")


def test_a_new_job_that_breaks_the_scheduler_is_held_on_the_quick_pass_too():
    c = make(gpus=2)
    c.schedule(T0)
    bad = submitted(c, now=T0)
    good = submitted(c, now=T0 + 1)
    _corrupt(c, bad, mem_mb="lots")
    assert not c.dirty
    actions = c.schedule(T0 + 1)
    assert [a.job.id for a in actions if isinstance(a, Launch)] == [good]
    assert any(isinstance(a, Log) and "hold job %d" % bad in a.line for a in actions)


def test_a_scheduler_failure_no_pending_job_explains_is_raised():
    c = make(gpus=2)
    running = running_job(c)
    submitted(c, now=T0 + 1)
    _corrupt(c, running, time_limit="soon", start_time=T0)
    c.dirty = True
    with pytest.raises(TypeError):
        c.schedule(T0 + 2)
    assert not c.held  # no pending job was blamed for a running job's fault


def test_an_error_advancing_one_job_is_contained_to_it():
    c = make(gpus=3)
    first = running_job(c, time_limit=60)
    bad = running_job(c, time_limit=60)
    last = running_job(c, time_limit=60)
    _corrupt(c, bad, time_limit="sixty")
    actions = c.advance(T0 + 60)
    signalled = [a.job_id for a in actions if isinstance(a, SignalJob)]
    assert signalled == [first, last]
    errors_logged = [a.line for a in actions if isinstance(a, Log) and "internal error" in a.line]
    assert len(errors_logged) == 1 and "job %d" % bad in errors_logged[0] and "TypeError" in errors_logged[0]
    # One line per attempt, not one per call; the others still advance.
    actions = c.advance(T0 + 71)
    assert [a.job_id for a in actions if isinstance(a, SignalJob)] == [first, last]
    assert not [a for a in actions if isinstance(a, Log) and "internal error" in a.line]
