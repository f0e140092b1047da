"""Persistence in SQLite under a temporary state directory: what is written is what a restarted
master loads, counters never go backwards, and the database is private to its owner."""

import os
import sqlite3
import stat

import pytest

from mgpu.model import Job, JobState, Transition
from mgpu.store import SCHEMA_VERSION, Store, StoreError


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")


@pytest.fixture
def store(state_dir):
    s = Store(state_dir)
    yield s
    s.close()


def job(job_id, state=JobState.PENDING, **fields):
    fields.setdefault("queue_seq", job_id)
    return Job(id=job_id, state=state, user="alice", uid=1000, gid=1000, command=["python", "t.py"],
               cwd="/home/alice", gpus=1, priority=0, submit_time=100.0 + job_id, **fields)


def finished(job_id, state=JobState.COMPLETED):
    return job(job_id, state, exit_code=0, start_time=200.0, end_time=300.0 + job_id, node="n1", alloc=(0,))


def ids(jobs):
    return [j.id for j in jobs]


# ---------------------------------------------------------------------------------------------


def test_a_new_store_is_empty(store):
    assert store.load(100) == ([], [], 1, 1)
    assert store.job_env(1) == {}
    assert store.transitions(1) == []


def test_jobs_round_trip_split_into_active_and_finished(store):
    running = job(2, JobState.RUNNING, node="n1", alloc=(0, 1), attempt=1, start_time=150.0, pgid=42,
                  gpu_ids=(0, 1), mem_mb=4000, time_limit=3600, requeue=True)
    written = [job(1), running, finished(3), finished(4, JobState.FAILED), job(5, JobState.PENDING)]
    store.write(written, [], [], 6, 6)
    active, done, next_id, next_seq = store.load(100)
    assert ids(active) == [1, 2, 5]
    assert ids(done) == [3, 4]
    assert {j.id: j.to_dict() for j in active + done} == {j.id: j.to_dict() for j in written}
    back = active[1]
    assert (back.state, back.alloc, back.gpu_ids, back.attempt, back.pgid) == (
        JobState.RUNNING, (0, 1), (0, 1), 1, 42)
    assert (next_id, next_seq) == (6, 6)


def test_a_rewrite_replaces_the_job(store):
    j = job(1)
    store.write([j], [], [], 2, 2)
    j.transition(JobState.RUNNING, 150.0, "", "scheduled")
    j.node, j.alloc, j.attempt = "n1", (0,), 1
    store.write([j], [], [], 2, 2)
    active, done, _, _ = store.load(100)
    assert [(x.id, x.state, x.node, x.attempt) for x in active] == [(1, JobState.RUNNING, "n1", 1)]
    j.transition(JobState.COMPLETED, 160.0, "", "exit")
    store.write([j], [], [], 2, 2)
    active, done, _, _ = store.load(100)
    assert active == [] and [(x.id, x.state, x.end_time) for x in done] == [(1, JobState.COMPLETED, 160.0)]


def test_only_the_newest_finished_jobs_are_loaded(store):
    store.write([finished(i) for i in range(1, 8)] + [job(8)], [], [], 9, 9)
    active, done, _, _ = store.load(3)
    assert ids(active) == [8]
    assert ids(done) == [5, 6, 7]  # newest kept, oldest first
    assert store.load(0)[1] == []
    assert ids(store.load(100)[1]) == list(range(1, 8))


def test_the_environment_is_stored_once_and_read_back(store):
    env = {"PATH": "/usr/bin", "UNICODE": "héllo ✓", "EMPTY": ""}
    j = job(1)
    store.write([j], [(1, env)], [], 2, 2)
    j.transition(JobState.RUNNING, 150.0)
    store.write([j], [], [], 2, 2)  # a state change does not touch the environment
    assert store.job_env(1) == env
    assert store.job_env(2) == {}


def test_transitions_are_recorded_in_order(store):
    j = job(1)
    records = [Transition(1, 100.0, "", JobState.PENDING, "submitted", "submit by alice")]
    store.write([j], [], records, 2, 2)
    records = [j.transition(JobState.RUNNING, 150.0, "", "scheduled")]
    store.write([j], [], records, 2, 2)
    records = [j.transition(JobState.PENDING, 170.0, "requeued: time slice", "slice"),
               j.transition(JobState.RUNNING, 171.0, "", "scheduled")]
    store.write([j], [], records, 2, 3)
    assert store.transitions(1) == [
        (100.0, "", "PENDING", "submitted", "submit by alice"),
        (150.0, "PENDING", "RUNNING", "", "scheduled"),
        (170.0, "RUNNING", "PENDING", "requeued: time slice", "slice"),
        (171.0, "PENDING", "RUNNING", "", "scheduled"),
    ]
    assert store.transitions(2) == []


def test_counters_are_persisted(store):
    store.write([], [], [], 17, 42)
    assert store.load(10)[2:] == (17, 42)


def test_the_next_id_is_never_below_a_stored_job(store):
    store.write([finished(7), job(3, queue_seq=30)], [], [], 2, 5)  # stale counters
    _, _, next_id, next_seq = store.load(10)
    assert next_id == 8   # max id + 1, even from a finished job
    assert next_seq == 31  # max queue place of an active job + 1


def test_the_counters_take_the_larger_of_meta_and_jobs(store):
    store.write([job(3, queue_seq=4)], [], [], 50, 60)
    assert store.load(10)[2:] == (50, 60)


def test_a_second_store_on_the_same_directory_sees_committed_data(state_dir):
    first = Store(state_dir)
    first.write([job(1), finished(2)], [(1, {"A": "1"})],
                [Transition(1, 100.0, "", "PENDING", "submitted", "submit by alice")], 3, 4)
    # as after a restart (the first one may still be open: a crash leaves no chance to close)
    second = Store(state_dir)
    active, done, next_id, next_seq = second.load(10)
    assert (ids(active), ids(done), next_id, next_seq) == ([1], [2], 3, 4)
    assert second.job_env(1) == {"A": "1"}
    assert second.transitions(1) == [(100.0, "", "PENDING", "submitted", "submit by alice")]
    first.close()
    second.close()
    third = Store(state_dir)
    assert ids(third.load(10)[0]) == [1]
    third.close()


def test_a_failed_write_leaves_nothing_behind(store):
    store.write([job(1)], [], [], 2, 2)
    bad = Transition(2, object(), "", "PENDING", "submitted", "x")  # not storable
    with pytest.raises(Exception):
        store.write([job(2)], [(2, {"A": "1"})], [bad], 3, 3)
    active, _, next_id, _ = store.load(10)
    assert ids(active) == [1] and next_id == 2
    assert store.job_env(2) == {}
    store.write([job(3)], [], [], 4, 4)  # the store is usable afterwards
    assert ids(store.load(10)[0]) == [1, 3]


def test_the_database_file_is_private(store):
    mode = stat.S_IMODE(os.stat(store.path).st_mode)
    assert mode == 0o600, oct(mode)
    assert os.path.dirname(store.path) and stat.S_IMODE(os.stat(os.path.dirname(store.path)).st_mode) & 0o077 == 0


def test_every_database_file_is_private_in_an_existing_open_directory(tmp_path):
    state_dir = tmp_path / "var-lib-mgpu"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    old_umask = os.umask(0o022)
    try:
        s = Store(str(state_dir))
        s.write([job(1)], [(1, {"API_TOKEN": "secret"})], [], 2, 2)
        modes = {name: stat.S_IMODE(os.stat(state_dir / name).st_mode) for name in os.listdir(state_dir)}
        s.close()
    finally:
        os.umask(old_umask)
    assert "mgpu.db" in modes
    assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}


def test_a_corrupt_database_is_one_clear_error(state_dir):
    os.makedirs(state_dir)
    with open(os.path.join(state_dir, "mgpu.db"), "wb") as f:
        f.write(b"this is not a database" * 100)
    with pytest.raises(StoreError) as raised:
        Store(state_dir)
    assert "mgpu.db" in str(raised.value) and "\n" not in str(raised.value)


def test_a_database_from_a_newer_mgpu_is_refused(state_dir):
    Store(state_dir).close()
    db = sqlite3.connect(os.path.join(state_dir, "mgpu.db"))
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError) as raised:
        Store(state_dir)
    assert "newer" in str(raised.value)


def test_commits_are_durable_and_ended_jobs_lose_their_environment(store):
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync at each commit
    store.write([job(1), job(2)], [(1, {"TOKEN": "a"}), (2, {"TOKEN": "b"})], [], 3, 3)
    store.write([finished(1, JobState.CANCELLED)], [], [], 3, 3)
    assert store.job_env(1) == {} and store.job_env(2) == {"TOKEN": "b"}


def test_a_failed_write_stores_nothing_and_says_so(store):
    store.write([job(1)], [], [], 2, 2)
    store.db.execute("CREATE TRIGGER refuse BEFORE INSERT ON transitions BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(StoreError, match="cannot write the state database .*disk full"):
        store.write([job(2)], [(2, {"A": "1"})], [Transition(2, 1.0, "", "PENDING", "submitted", "submit")], 3, 3)
    assert not store.db.in_transaction
    active, _, next_id, _ = store.load(100)
    assert ids(active) == [1] and next_id == 2 and store.job_env(2) == {}
