"""launcher.py without daemons: durable records, proofs of which processes are a job's, opening a
user's file as that user, and the helper's bounded reading of launch requests."""

import json
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from mgpu import launcher

NOBODY = 65534


def test_records_are_replaced_whole_and_name_their_phase(tmp_path):
    path = str(tmp_path / "3.1.json")
    record = {"job_id": 3, "attempt": 1, "phase": "intent", "sup_pid": 10, "sup_start": 20}
    launcher.write_record(path, record)
    assert launcher.read_record(path) == record
    assert launcher.record_phase(record) == "intent"
    record.update(phase="exited", exit_code=0)
    launcher.write_record(path, record)
    assert launcher.record_phase(launcher.read_record(path)) == "exited"
    assert os.listdir(tmp_path) == ["3.1.json"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # Records written before phases existed: started, or exited.
    assert launcher.record_phase({"sup_pid": 1}) == "started"
    assert launcher.record_phase(None) is None
    (tmp_path / "bad.json").write_text("[1]")
    assert launcher.read_record(str(tmp_path / "bad.json")) is None


def test_a_record_written_without_fsync_is_still_replaced_whole(tmp_path):
    path = str(tmp_path / "4.1.json")
    record = {"job_id": 4, "attempt": 1, "phase": "intent", "sup_pid": 10, "sup_start": 20}
    launcher.write_record(path, record, durable=False)
    assert launcher.read_record(path) == record
    record["phase"] = "launched"
    launcher.write_record(path, record)
    record["phase"] = "started"
    launcher.write_record(path, record, durable=False)
    assert launcher.record_phase(launcher.read_record(path)) == "started"
    assert os.listdir(tmp_path) == ["4.1.json"]


@pytest.mark.skipif(not os.path.exists("/proc/self/task/%d/children" % os.getpid()),
                    reason="the kernel does not list each task's children")
def test_the_descendants_of_a_process_include_those_that_left_its_session():
    # sh (our child) -> setsid sh -> sleep: the grandchild leads a session of its own.
    tree = subprocess.Popen(["sh", "-c", "setsid sh -c 'sleep 30 & wait' & wait"], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            below = launcher._descendants(tree.pid)
            leaders = [pid for pid in below if launcher._stat_fields(pid) and int(launcher._stat_fields(pid)[3]) == pid]
            if len(below) >= 2 and leaders:
                break
            assert time.monotonic() < deadline, below
            time.sleep(0.01)
        assert tree.pid not in below
        found = launcher._descendants(os.getpid()) if threading.active_count() == 1 else None
        assert found is None or (tree.pid in found and set(below) <= set(found))
    finally:
        for pid in reversed(launcher._descendants(tree.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        tree.kill()
        tree.wait()


def _session_of_sleepers():
    """A process in a session of its own with a child: (leader Popen, child pid)."""
    leader = subprocess.Popen(["setsid", "sh", "-c", "sleep 30 & wait"], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while True:
        kids = launcher.children(leader.pid)
        if kids:
            return leader, kids[0]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_record_whose_supervisor_pid_now_belongs_to_a_stranger_proves_nothing():
    leader, child = _session_of_sleepers()
    try:
        start = launcher.process_start_time(leader.pid)
        stale = launcher.JobHandle(sup_pid=leader.pid, sup_start=start + 1, pgid=leader.pid, job_start=0)
        assert not stale.supervisor_alive()
        assert not stale.alive()
        assert not stale.signal(signal.SIGKILL)
        other_boot = launcher.JobHandle(sup_pid=leader.pid, sup_start=start, pgid=leader.pid, job_start=0,
                                        boot="not-this-boot")
        assert not other_boot.signal(signal.SIGKILL)
        assert other_boot.end()
        time.sleep(0.05)
        assert launcher.process_start_time(child) is not None and leader.poll() is None
    finally:
        leader.kill()
        leader.wait()


def test_a_live_supervisor_proves_its_session_and_descendants():
    leader, child = _session_of_sleepers()
    try:
        handle = launcher.JobHandle(sup_pid=leader.pid, sup_start=launcher.process_start_time(leader.pid),
                                    pgid=leader.pid, job_start=launcher.process_start_time(leader.pid))
        assert handle.supervisor_alive() and handle.alive()
        assert handle.signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while launcher.process_start_time(child) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert leader.wait(5) == 0  # the supervisor itself is not the job's: it ends on its own
    finally:
        leader.kill()
        leader.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="switches filesystem ids: needs root")
def test_output_is_opened_as_its_user_and_only_when_a_regular_file_of_theirs():
    tmp_path = pathlib.Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is not the user's to reach
    try:
        _check_open_as_user(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _check_open_as_user(tmp_path):
    os.chmod(tmp_path, 0o755)
    mine = tmp_path / "mine.out"
    mine.write_text("hello")
    os.chown(mine, NOBODY, NOBODY)
    fd = launcher.open_as_user(str(mine), NOBODY)
    assert fd is not None and os.read(fd, 100) == b"hello"
    os.close(fd)
    theirs = tmp_path / "root.out"
    theirs.write_text("secret")
    assert launcher.open_as_user(str(theirs), NOBODY) is None  # owned by another user
    link = tmp_path / "link.out"
    link.symlink_to(mine)
    assert launcher.open_as_user(str(link), NOBODY) is None  # a symlink is never followed
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    os.chown(fifo, NOBODY, NOBODY)
    assert launcher.open_as_user(str(fifo), NOBODY) is None  # and does not block
    assert launcher.open_as_user("/dev/null", 0) is None  # a device is never opened
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    inside = hidden / "mine.out"
    inside.write_text("x")
    os.chown(inside, NOBODY, NOBODY)
    assert launcher.open_as_user(str(inside), NOBODY) is None  # the user cannot reach it
    unreadable = tmp_path / "unreadable.out"
    unreadable.write_text("x")
    os.chown(unreadable, NOBODY, NOBODY)
    os.chmod(unreadable, 0o200)
    assert launcher.open_as_user(str(unreadable), NOBODY) is None  # the user cannot read it
    # The thread's filesystem ids are root's again.
    probe = tmp_path / "probe"
    probe.write_text("")
    assert os.stat(probe).st_uid == 0


def _run_helper(lines, lock_fd=None):
    """Feed `lines` to a helper process and return the events it emits."""
    pid, command_write, events_read = launcher.fork_helper(lock_fd)
    for line in lines:
        view = memoryview(line)
        while view:
            view = view[os.write(command_write, view):]
    os.close(command_write)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    with os.fdopen(events_read, "rb") as events:
        return [json.loads(line) for line in events]


def test_the_helper_refuses_an_oversize_launch_request_instead_of_buffering_it(monkeypatch):
    monkeypatch.setattr(launcher, "MAX_SPEC", 1000)
    big = b'{"job_id":7,"attempt":2,"argv":["' + b"x" * 5000 + b'"]}\n'
    events = _run_helper([big, b"\n", b"not json\n"])
    assert len(events) == 1
    assert events[0]["event"] == "exited" and (events[0]["job_id"], events[0]["attempt"]) == (7, 2)
    assert "launch request is larger than" in events[0]["error"]


def test_the_helper_starts_what_is_in_its_pipe_before_it_exits(tmp_path):
    spec = {"job_id": 1, "attempt": 1, "uid": os.getuid(), "gid": os.getgid(), "user": "x", "drop": False,
            "umask": 0o022, "cwd": str(tmp_path), "argv": ["sh", "-c", "echo ran"], "env": {"PATH": "/usr/bin:/bin"},
            "env_setup": None, "output": str(tmp_path / "out"), "error": str(tmp_path / "out"), "truncate": True,
            "log_dir": None, "record": str(tmp_path / "1.1.json"), "cgroup": None}
    line = (json.dumps(spec) + "\n").encode()
    events = _run_helper([line, b'{"job_id":2,"attempt":1'])  # the second line is torn: dropped
    deadline = time.monotonic() + 10
    while launcher.record_phase(launcher.read_record(spec["record"])) != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert (tmp_path / "out").read_text() == "ran\n"
    assert launcher.read_record(spec["record"])["exit_code"] == 0
    assert not (tmp_path / "2.1.json").exists()
    del events


def test_the_cgroup_directory_is_only_checked_at_start_and_left_to_the_jobs(tmp_path):
    base = launcher.cgroup_base(str(tmp_path))
    if base is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    assert base == launcher.cgroup_base_path(str(tmp_path))
    assert not os.path.exists(base)  # a daemon killed before its first job leaves nothing behind
    job = launcher._make_job_cgroup(launcher.job_cgroup(base, 1, 1))
    assert job and os.path.isdir(job)
    assert launcher._cgroup_remove(job, time.monotonic() + 5)
    launcher.remove_cgroup_base(base)
    assert not os.path.exists(base)
