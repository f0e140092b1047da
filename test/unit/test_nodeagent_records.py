"""A restarted daemon's clean-up of the supervisors' records never takes away a record a live
supervisor is still writing (its `NAME.json.tmp`, renamed into place when the write is
complete): the job would otherwise end with no recorded exit and be reported lost."""

import json
import os
import time

import pytest

from mgpu import gpus, launcher
from mgpu.model import Job
from mgpu.nodeagent import NodeAgent


@pytest.fixture
def agent(tmp_path):
    events = []
    made = []

    def make(remote=False):
        node = NodeAgent("here", gpus.FakeInventory([]), str(tmp_path / "state"), events.append,
                         remote=remote)
        made.append(node)
        return node

    yield make, events
    for node in made:
        node.stop()


def _write(path, record):
    with open(path, "w") as handle:
        json.dump(record, handle)


def _live_started_record(job_id, attempt):
    """A record whose supervisor is alive (this test process stands in for it)."""
    me = os.getpid()
    return {"job_id": job_id, "attempt": attempt, "phase": "started", "sup_pid": me,
            "sup_start": launcher.process_start_time(me), "boot_id": launcher.boot_id()}


def _job(job_id, attempt):
    job = Job(id=job_id, user="nobody", uid=65534, gid=65534, command=["true"], cwd="/")
    job.attempt = attempt
    return job


def test_master_restart_keeps_the_write_a_live_supervisor_is_making(agent):
    make, events = agent
    node = make()
    path = node.record_path(7, 1)
    _write(path, _live_started_record(7, 1))
    # The supervisor has written its exit into NAME.json.tmp and is about to rename it.
    _write(path + ".tmp", dict(_live_started_record(7, 1), phase="exited", exit_code=0, signal=None))
    stale = node.record_path(3, 1)
    _write(stale, _live_started_record(3, 1))
    _write(stale + ".tmp", _live_started_record(3, 1))

    node.adopt([_job(7, 1)])

    assert os.path.exists(path + ".tmp"), "the live supervisor's next record was deleted"
    os.rename(path + ".tmp", path)  # what the supervisor does next: it must succeed
    assert launcher.record_phase(launcher.read_record(path)) == "exited"
    assert not os.path.exists(stale) and not os.path.exists(stale + ".tmp")  # not the store's: gone
    assert not [e for e in events if e.get("kind") == "job_lost"]


def test_node_restart_keeps_the_write_a_live_supervisor_is_making(agent):
    make, events = agent
    node = make(remote=True)
    path = node.record_path(9, 2)
    _write(path, _live_started_record(9, 2))
    _write(path + ".tmp", dict(_live_started_record(9, 2), phase="exited", exit_code=0, signal=None))

    node.adopt_records()

    assert os.path.exists(path + ".tmp")
    assert [a["job_id"] for a in node.attempts()] == [9]


def test_a_release_deletes_the_record_and_an_unfinished_write(agent):
    make, _ = agent
    node = make()
    path = node.record_path(5, 1)
    _write(path, _live_started_record(5, 1))
    _write(path + ".tmp", _live_started_record(5, 1))
    node.start()
    node.release(5, 1)
    for _ in range(200):
        if not os.path.exists(path) and not os.path.exists(path + ".tmp"):
            break
        time.sleep(0.01)
    assert not os.path.exists(path) and not os.path.exists(path + ".tmp")


def test_a_record_write_survives_its_temporary_file_being_taken(tmp_path, monkeypatch):
    path = str(tmp_path / "1.1.json")
    real_rename = os.rename
    taken = []

    def rename_after_cleanup(source, target):
        if not taken:  # a concurrent clean-up removes the file once, just before the rename
            taken.append(source)
            os.unlink(source)
        return real_rename(source, target)

    monkeypatch.setattr(launcher.os, "rename", rename_after_cleanup)
    launcher.write_record(path, {"job_id": 1, "attempt": 1, "exit_code": 0})
    assert taken and launcher.record_phase(launcher.read_record(path)) == "exited"
