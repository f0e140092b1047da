"""`mgpu drain` / `mgpu resume`: the two requests at the protocol's edge (hostile input), the
controller's handling (no placement on a drained node, its running jobs go on, privileged only,
unknown nodes, a drain outlasting a node's restart and the master's), and the store's record."""

import pytest

from mgpu import errors, protocol
from mgpu.controller import Controller, Launch, Log, Reply, SaveDrain, Settings
from mgpu.errors import MgpuError
from mgpu.model import JobState, NodeState
from mgpu.store import Store

from test_controller import (ALICE, BOB, OPERATOR, ROOT, T0, Logged, exited, make, node_up, queue, refused,
                             reply, request, running_job, submitted)

PENDING, RUNNING = JobState.PENDING, JobState.RUNNING


def drain(c, node="n1", peer=ROOT, now=T0, **fields):
    return request(c, "drain", dict(fields, node=node), peer, now)


def resume(c, node="n1", peer=ROOT, now=T0):
    return request(c, "resume", {"node": node}, peer, now)


def started(actions):
    return [a.job.id for a in actions if isinstance(a, Launch)]


def node_row(c, name="n1"):
    return next(row for row in queue(c)["nodes"] if row["name"] == name)


# ---------------------------------------------------------------------------------------------
# The protocol's edge


def check_fails(message, code):
    with pytest.raises(MgpuError) as caught:
        protocol.check_request(message)
    assert caught.value.code == code, caught.value.message
    assert "\n" not in caught.value.message
    return caught.value.message


def test_drain_and_resume_are_declared_requests():
    assert protocol.check_request(protocol.request("drain", node="n1", reason="fan")) == (
        "drain", {"node": "n1", "reason": "fan"})
    assert protocol.check_request(protocol.request("drain", node="n1")) == ("drain", {"node": "n1"})
    assert protocol.check_request(protocol.request("resume", node="n1", extra=1)) == ("resume", {"node": "n1"})


@pytest.mark.parametrize("type_", ["drain", "resume"])
@pytest.mark.parametrize("node", [5, None, True, ["n1"], {"n": 1}, 1.5])
def test_a_node_that_is_not_a_string_is_a_bad_request(type_, node):
    check_fails(protocol.request(type_, node=node), errors.BAD_REQUEST)


@pytest.mark.parametrize("type_", ["drain", "resume"])
def test_the_node_is_required(type_):
    assert "node" in check_fails(protocol.request(type_), errors.BAD_REQUEST)


@pytest.mark.parametrize("type_", ["drain", "resume"])
def test_a_node_name_has_a_size(type_):
    protocol.check_request(protocol.request(type_, node="n" * protocol.MAX_NODE_NAME))
    check_fails(protocol.request(type_, node="n" * (protocol.MAX_NODE_NAME + 1)), errors.INVALID_ARGUMENT)
    check_fails(protocol.request(type_, node="n" * 10_000_000), errors.INVALID_ARGUMENT)


def test_a_reason_has_a_size():
    protocol.check_request(protocol.request("drain", node="n1", reason="r" * protocol.MAX_DRAIN_REASON))
    text = check_fails(protocol.request("drain", node="n1", reason="r" * (protocol.MAX_DRAIN_REASON + 1)),
                       errors.INVALID_ARGUMENT)
    assert "256" in text
    check_fails(protocol.request("drain", node="n1", reason="r" * 900_000), errors.INVALID_ARGUMENT)


@pytest.mark.parametrize("fields", [{"node": "n1\0"}, {"node": "n1", "reason": "fan\0"}])
def test_nul_is_refused(fields):
    assert "NUL" in check_fails(protocol.request("drain", **fields), errors.BAD_REQUEST)


def test_nul_in_resume_is_refused():
    assert "NUL" in check_fails(protocol.request("resume", node="\0"), errors.BAD_REQUEST)


@pytest.mark.parametrize("reason", ["a\nb", "\x1b[31mred", "tab\there", "\x7f", "\x85"])
def test_a_reason_has_no_control_characters(reason):
    check_fails(protocol.request("drain", node="n1", reason=reason), errors.INVALID_ARGUMENT)


@pytest.mark.parametrize("reason", [5, ["x"], {"a": "b"}, True])
def test_a_reason_that_is_not_text_is_a_bad_request(reason):
    check_fails(protocol.request("drain", node="n1", reason=reason), errors.BAD_REQUEST)


def test_a_lone_surrogate_in_a_node_name_is_a_malformed_frame():
    with pytest.raises(MgpuError) as caught:
        protocol.decode(b'{"v":1,"type":"drain","node":"\\ud800"}')
    assert caught.value.code == errors.BAD_REQUEST


# ---------------------------------------------------------------------------------------------
# The controller


def test_a_drained_node_takes_no_new_job_and_its_running_job_goes_on():
    c = make(gpus=2)
    first = running_job(c, gpus=1)
    actions = drain(c, reason="maintenance")
    assert actions == [SaveDrain("n1", "maintenance"), Logged("drain node n1 by root: maintenance"),
                       Reply("tok", {"ok": True, "result": {"node": "n1", "reason": "maintenance", "running": 1}})]
    assert c.nodes["n1"].state == NodeState.DRAINED
    waiting = submitted(c, gpus=1)
    assert started(c.schedule(T0 + 1)) == []
    assert c.jobs[waiting].state == PENDING
    assert c.jobs[first].state == RUNNING
    row = next(r for r in queue(c)["jobs"] if r["id"] == waiting)
    assert "drained: n1" in row["reason"]
    # The running job ends normally; its GPUs free up, but nothing starts there.
    ended = exited(c, first, T0 + 2)
    assert [a for a in ended if isinstance(a, Log)] == [Logged("end job %d COMPLETED" % first)]
    assert started(c.schedule(T0 + 2)) == []
    assert c.jobs[waiting].state == PENDING


def test_the_node_row_says_drained_and_why():
    c = make(gpus=2)
    assert node_row(c)["state"] == "idle" and node_row(c)["drain_reason"] is None
    job = running_job(c, gpus=1)
    assert node_row(c)["state"] == "mixed"
    reply(drain(c, reason="new fans"))
    row = node_row(c)  # with a job still running there
    assert row["state"] == "drained" and row["drain_reason"] == "new fans"
    assert [gpu["jobs"] for gpu in row["gpus"]] == [[job], []]
    reply(resume(c))
    assert node_row(c)["state"] == "mixed" and node_row(c)["drain_reason"] is None


def test_a_drain_without_a_reason_names_who_drained_it():
    c = make(operator_uids=[OPERATOR["uid"]])
    assert reply(drain(c, peer=OPERATOR))["result"]["reason"] == "drained by oper"


def test_resume_lets_the_pending_job_start():
    c = make(gpus=1)
    reply(drain(c))
    job = submitted(c)
    assert started(c.schedule(T0)) == []
    actions = resume(c, now=T0 + 1)
    assert actions == [SaveDrain("n1", None), Logged("resume node n1 by root"),
                       Reply("tok", {"ok": True, "result": {"node": "n1", "was_drained": True}})]
    assert started(c.schedule(T0 + 1)) == [job]
    assert c.nodes["n1"].state == NodeState.UP


def test_resume_of_a_node_that_is_not_drained_changes_nothing():
    c = make()
    assert resume(c) == [Reply("tok", {"ok": True, "result": {"node": "n1", "was_drained": False}})]


def test_a_job_only_a_drained_node_can_run_is_accepted_and_waits():
    c = make(nodes={"small": 1, "big": 4})
    reply(drain(c, "big"))
    job = submitted(c, gpus=4)  # not refused as unsatisfiable
    c.schedule(T0)
    assert c.jobs[job].state == PENDING
    row = next(r for r in queue(c)["jobs"] if r["id"] == job)
    assert "drained: big" in row["reason"]
    # Other nodes keep working.
    small = submitted(c, gpus=1)
    assert started(c.schedule(T0 + 1)) == [small]
    assert c.jobs[small].node == "small"
    reply(resume(c, "big"))
    assert started(c.schedule(T0 + 2)) == [job]
    assert c.jobs[job].node == "big"


def test_only_root_and_operators_drain_or_resume():
    c = make(operator_uids=[OPERATOR["uid"]])
    for peer in (ALICE, BOB):
        assert "only root and operators" in refused(drain(c, peer=peer), errors.PERMISSION_DENIED)
        assert "only root and operators" in refused(resume(c, peer=peer), errors.PERMISSION_DENIED)
    assert c.nodes["n1"].state == NodeState.UP and not c.drained
    assert reply(drain(c, peer=OPERATOR))["ok"]
    assert "only root" in refused(resume(c, peer=ALICE), errors.PERMISSION_DENIED)
    assert c.nodes["n1"].state == NodeState.DRAINED
    assert reply(resume(c, peer=OPERATOR))["ok"]


def test_the_owner_of_a_single_user_master_may_drain():
    c = make(owner_uid=ALICE["uid"], owner_name="alice")
    assert reply(drain(c, peer=ALICE))["ok"]


@pytest.mark.parametrize("name", ["n2", "-x", "/", "a" * 64, "\x1b[2J"])
def test_an_unknown_node_is_refused(name):
    c = make()
    for actions in (drain(c, name), resume(c, name)):
        text = refused(actions, errors.NOT_FOUND)
        assert "no such node" in text and "n1" in text and "\x1b" not in text
    assert not c.drained


def test_an_unprivileged_user_learns_nothing_about_node_names():
    c = make()
    refused(drain(c, "n2", peer=ALICE), errors.PERMISSION_DENIED)


def test_a_drained_node_that_goes_down_and_comes_back_stays_drained():
    c = make(gpus=1)
    reply(drain(c, reason="disk"))
    assert c.handle({"kind": "node_down", "name": "n1", "reason": "no heartbeat"}, T0) == [Logged("n1 is down")]
    assert node_row(c)["state"] == "down" and node_row(c)["drain_reason"] == "disk"
    assert c.handle(node_up("n1", 1), T0 + 1) == [Logged("node n1 up", "drained: disk")]
    assert node_row(c)["state"] == "drained"
    job = submitted(c)
    assert started(c.schedule(T0 + 1)) == []
    # A down node can be resumed; it comes back up taking jobs.
    c.handle({"kind": "node_down", "name": "n1"}, T0 + 2)
    reply(resume(c, now=T0 + 2))
    assert c.nodes["n1"].state == NodeState.DOWN
    c.handle(node_up("n1", 1), T0 + 3)
    assert started(c.schedule(T0 + 3)) == [job]


def test_a_rebuilt_controller_applies_the_stored_drains_when_the_node_comes_up():
    c = Controller(Settings(), drained={"n1": "maintenance", "gone": "retired"})
    assert c.handle(node_up("n1", 2), 0.0) == [Logged("node n1 up", "drained: maintenance")]
    assert c.nodes["n1"].state == NodeState.DRAINED
    job = submitted(c)
    assert started(c.schedule(T0)) == []
    # A drained node that has not registered (yet) may be resumed or drained again by name.
    assert reply(drain(c, "gone", reason="really retired"))["ok"]
    assert reply(resume(c, "gone"))["result"]["was_drained"] is True
    assert "gone" not in c.drained
    reply(resume(c, "n1"))
    assert started(c.schedule(T0 + 1)) == [job]


def test_a_reason_with_unprintable_characters_is_escaped_in_the_log():
    c = make()
    _, fields = protocol.check_request(protocol.request("drain", node="n1", reason="x\u202ey"))
    actions = c.handle({"kind": "request", "type": "drain", "token": "tok", "fields": fields, "peer": ROOT}, T0)
    line = next(a.line for a in actions if isinstance(a, Log))
    assert "\u202e" not in line and "\\u202e" in line


# ---------------------------------------------------------------------------------------------
# The store


def test_the_store_keeps_drained_nodes_across_a_restart(tmp_path):
    state = str(tmp_path / "state")
    store = Store(state)
    assert store.load_drained() == {}
    store.save_drained({"n1": "maintenance", "n2": "fans"})
    store.write([], [], [], 5, 6, drained={"n2": None})
    store.close()
    store = Store(state)
    assert store.load_drained() == {"n1": "maintenance"}
    active, finished, next_id, next_seq = store.load(10)
    assert (next_id, next_seq) == (5, 6)  # the counters are left alone by save_drained
    store.save_drained({"n1": None})
    assert store.load_drained() == {}
    store.close()


def test_an_implausible_stored_drain_is_ignored(tmp_path):
    store = Store(str(tmp_path / "state"))
    store.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("drained:" + "x" * 500, "r"))
    store.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("drained:n1", "a\0b"))
    store.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("drained:", "r"))
    store.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("drained:ok", "fine"))
    assert store.load_drained() == {"ok": "fine"}
    store.close()
