"""Placement across hosts at the controller: --nodelist and --exclude at the protocol's edge
(hostile input) and at submit (unknown nodes refused, names kept once), the jobs' reasons when
their nodes are drained, submit-only nodes, and remote nodes known again after a restart (their
record in the store)."""

import pytest

from mgpu import errors, protocol
from mgpu.controller import Controller, Launch, SaveNode, Settings
from mgpu.errors import MgpuError
from mgpu.model import JobState, NodeState
from mgpu.store import Store

from test_controller import ALICE, ROOT, T0, gpu_dicts, make, queue, refused, request, submit, submitted
from test_controller_drain import check_fails


def started(actions):
    return [(a.job.id, a.job.node) for a in actions if isinstance(a, Launch)]


def remote_up(c, name, gpus=2, address="10.0.0.5", submit_only=False, now=T0):
    return c.handle({"kind": "node_up", "name": name, "gpus": [] if submit_only else gpu_dicts(gpus),
                     "address": address, "submit_only": submit_only}, now)


def reason(c, job_id):
    return next(row["reason"] for row in queue(c)["jobs"] if row["id"] == job_id)


# -- the protocol's edge ------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["nodelist", "exclude"])
@pytest.mark.parametrize("value", ["n1", 5, {"n1": 1}, True])
def test_a_node_list_that_is_not_a_list_is_a_bad_request(field, value):
    check_fails(protocol.request("submit", command=["true"], cwd="/", env={}, **{field: value}),
                errors.BAD_REQUEST)


@pytest.mark.parametrize("field", ["nodelist", "exclude"])
@pytest.mark.parametrize("names", [[""], ["-n1"], ["a b"], ["x" * 65], [5], [None], ["n\x1b[2J"], ["n1\0"]])
def test_a_name_that_cannot_be_a_node_is_refused_at_the_edge(field, names):
    message = check_fails(protocol.request("submit", command=["true"], cwd="/", env={}, **{field: names}),
                          errors.INVALID_ARGUMENT)
    assert "\x1b" not in message and "\0" not in message


def test_a_node_list_is_bounded():
    names = ["n%d" % i for i in range(protocol.MAX_NODES_NAMED + 1)]
    message = check_fails(protocol.request("submit", command=["true"], cwd="/", env={}, nodelist=names),
                          errors.INVALID_ARGUMENT)
    assert "at most %d" % protocol.MAX_NODES_NAMED in message
    _, fields = protocol.check_request(protocol.request("submit", command=["true"], cwd="/", env={},
                                                        nodelist=names[:-1]))
    assert len(fields["nodelist"]) == protocol.MAX_NODES_NAMED


# -- at submit --------------------------------------------------------------------------------

def test_an_unknown_node_is_refused_naming_the_known_ones():
    c = make(nodes={"n1": 2, "n2": 2})
    message = refused(submit(c, nodelist=["n3"]), errors.INVALID_ARGUMENT)
    assert message == "--nodelist: no node is called n3 (nodes: n1, n2)"
    message = refused(submit(c, exclude=["n1", "gpu9"]), errors.INVALID_ARGUMENT)
    assert message == "--exclude: no node is called gpu9 (nodes: n1, n2)"
    assert not queue(c)["jobs"]


def test_the_job_keeps_its_node_lists_each_name_once():
    c = make(nodes={"n1": 2, "n2": 2, "n3": 2})
    job_id = submitted(c, nodelist=["n2", "n3", "n2"], exclude=["n3"])
    row = next(r for r in queue(c)["jobs"] if r["id"] == job_id)
    assert (row["nodelist"], row["exclude"]) == (["n2", "n3"], ["n3"])
    assert started(c.schedule(T0)) == [(job_id, "n2")]


def test_a_job_placed_on_one_node_waits_for_it_while_others_are_free():
    c = make(nodes={"n1": 1, "n2": 1})
    first = submitted(c, nodelist=["n1"])
    second = submitted(c, nodelist=["n1"])
    third = submitted(c)
    assert started(c.schedule(T0)) == [(first, "n1"), (third, "n2")]
    assert reason(c, second).startswith("Resources:")


def test_exclude_every_node_cannot_ever_run():
    c = make(nodes={"n1": 2, "n2": 2})
    message = refused(submit(c, exclude=["n1", "n2"]), errors.UNSATISFIABLE)
    assert message.startswith("cannot ever run:")


def test_more_gpus_than_the_listed_node_has_cannot_ever_run():
    c = make(nodes={"n1": 2, "n2": 8})
    message = refused(submit(c, nodelist=["n1"], gpus=4), errors.UNSATISFIABLE)
    assert "cannot ever run" in message and "n1" in message
    assert submitted(c, nodelist=["n2"], gpus=4)


def test_a_job_waiting_for_a_drained_node_says_so():
    c = make(nodes={"n1": 2, "n2": 2})
    job_id = submitted(c, nodelist=["n2"])
    request(c, "drain", {"node": "n2", "reason": "fan"}, ROOT)
    free = submitted(c)
    assert started(c.schedule(T0)) == [(free, "n1")]
    assert reason(c, job_id) == "Resources: none of the nodes it may use is up (drained: n2)"
    request(c, "resume", {"node": "n2"}, ROOT)
    assert started(c.schedule(T0 + 1)) == [(job_id, "n2")]


# -- submit-only nodes ------------------------------------------------------------------------

def test_a_submit_only_node_takes_no_job_and_shows_as_such():
    c = Controller(Settings())
    actions = remote_up(c, "login", submit_only=True)
    assert any("submit only" in getattr(a, "line", "") for a in actions)
    message = refused(submit(c, gpus=1), errors.UNSATISFIABLE)
    assert "no GPUs" in message
    job_id = submitted(c, gpus=0)
    assert started(c.schedule(T0)) == []
    row = next(r for r in queue(c)["nodes"] if r["name"] == "login")
    assert row["submit_only"] is True and row["gpus"] == []
    remote_up(c, "gpu1", gpus=2)
    assert started(c.schedule(T0 + 1)) == [(job_id, "gpu1")]


def test_nodelist_of_a_submit_only_node_cannot_ever_run():
    c = make(nodes={"n1": 2})
    remote_up(c, "login", submit_only=True)
    message = refused(submit(c, nodelist=["login"], gpus=0), errors.UNSATISFIABLE)
    assert "login" in message


def test_a_submit_only_registration_with_gpus_is_refused_at_the_edge():
    message = protocol.node_message("node_register", name="login", gpus=gpu_dicts(1), attempts=[],
                                    submit_only=True)
    with pytest.raises(MgpuError) as caught:
        protocol.check_node_message(message, protocol.NODE_TO_MASTER)
    assert "submit-only" in caught.value.message


# -- remote nodes known across a restart ------------------------------------------------------

def test_a_remote_node_is_recorded_when_it_joins_or_changes_only():
    c = make()
    actions = remote_up(c, "gpu7", gpus=2)
    saves = [a for a in actions if isinstance(a, SaveNode)]
    assert [(a.node, len(a.record["gpus"]), a.record["address"]) for a in saves] == [("gpu7", 2, "10.0.0.5")]
    assert not [a for a in remote_up(c, "gpu7", gpus=2) if isinstance(a, SaveNode)]
    assert [a.node for a in remote_up(c, "gpu7", gpus=4) if isinstance(a, SaveNode)] == ["gpu7"]
    assert not [a for a in c.handle({"kind": "node_up", "name": "n1", "gpus": gpu_dicts(2)}, T0)
                if isinstance(a, SaveNode)]  # the master's own host: never recorded


def test_after_a_restart_known_nodes_are_unreachable_until_they_return(tmp_path):
    store = Store(str(tmp_path))
    c = make()
    save = next(a for a in remote_up(c, "gpu7", gpus=4) if isinstance(a, SaveNode))
    store.write((), (), (), None, None, nodes={save.node: save.record})
    store.close()

    store = Store(str(tmp_path))
    c = Controller(Settings(), known_nodes=store.load_nodes())
    c.handle({"kind": "node_up", "name": "n1", "gpus": gpu_dicts(2)}, T0)
    assert c.nodes["gpu7"].state == NodeState.UNREACHABLE
    row = next(r for r in queue(c)["nodes"] if r["name"] == "gpu7")
    assert row["state"] == "unreachable" and len(row["gpus"]) == 4
    job_id = submitted(c, nodelist=["gpu7"], gpus=4)  # known and able, though not back yet
    assert started(c.schedule(T0)) == []
    remote_up(c, "gpu7", gpus=4, now=T0 + 5)
    assert started(c.schedule(T0 + 5)) == [(job_id, "gpu7")]
    c.handle({"kind": "node_down", "name": "gpu7", "reason": "gone"}, T0 + 9)
    assert next(r for r in queue(c)["nodes"] if r["name"] == "gpu7")["state"] == "down"


def test_implausible_node_records_are_ignored(tmp_path):
    store = Store(str(tmp_path))
    store.write((), (), (), None, None, nodes={"good": {"gpus": gpu_dicts(1), "address": "h"},
                                               "nogpus": {"address": "h"},
                                               "badgpu": {"gpus": [{"index": "x"}], "address": "h"}})
    store.db.execute("INSERT INTO meta (key, value) VALUES ('node:junk', '{not json')")
    store.db.execute("INSERT INTO meta (key, value) VALUES ('node:' || ?, '{}')", ("x" * 500,))
    loaded = store.load_nodes()
    assert set(loaded) == {"good", "badgpu"}
    c = Controller(Settings(), known_nodes=loaded)
    assert set(c.nodes) == {"good"}
    store.close()


def test_a_job_with_node_lists_survives_the_store(tmp_path):
    store = Store(str(tmp_path))
    c = make(nodes={"n1": 2, "n2": 2})
    actions = submit(c, nodelist=["n2"], exclude=["n1"])
    save = next(a for a in actions if type(a).__name__ == "Save")
    store.write([save.job], [(save.job.id, {})], [], c.next_id, c.next_seq)
    store.close()
    store = Store(str(tmp_path))
    active, _, _, _ = store.load(10)
    assert (active[0].nodelist, active[0].exclude) == (("n2",), ("n1",))
    store.close()


# -- a stop lost with a node's link -------------------------------------------------------------

def test_a_stop_lost_with_the_link_is_sent_again_when_the_node_returns():
    from mgpu.controller import SignalJob
    c = Controller(Settings(kill_grace=10))
    remote_up(c, "gpu7", gpus=1)
    job_id = submitted(c)
    assert started(c.schedule(T0)) == [(job_id, "gpu7")]
    c.handle({"kind": "job_started", "node": "gpu7", "job_id": job_id, "attempt": 1,
              "sup_pid": 10, "sup_start": 1, "pgid": 11}, T0)
    request(c, "cancel", {"ids": [job_id]}, ALICE, T0 + 1)
    c.handle({"kind": "node_unreachable", "name": "gpu7"}, T0 + 2)  # the SIGTERM may be lost
    again = [a for a in remote_up(c, "gpu7", gpus=1, now=T0 + 3) if isinstance(a, SignalJob)]
    assert [(a.node, a.job_id, a.attempt, a.signum) for a in again] == [("gpu7", job_id, 1, 15)]
    c.advance(T0 + 12)  # the grace is over: SIGKILL (lost too)
    again = [a for a in remote_up(c, "gpu7", gpus=1, now=T0 + 13) if isinstance(a, SignalJob)]
    assert [a.signum for a in again] == [9]
    c.handle({"kind": "job_exited", "node": "gpu7", "job_id": job_id, "attempt": 1, "exit_code": 137,
              "signal": 9}, T0 + 14)
    assert next(r for r in queue(c, all=True)["jobs"] if r["id"] == job_id)["state"] == JobState.CANCELLED
    assert not [a for a in remote_up(c, "gpu7", gpus=1, now=T0 + 15) if isinstance(a, SignalJob)]
