"""Fenced process control and no double runs: a job is stoppable from the moment it is
launched, no signal reaches a process that is not proven to be the job's, a job whose supervisor
dies is gone before its GPUs are reused, every job runs exactly once across master crashes, and
root never opens an output path a user chose."""

import json
import os
import pwd
import random
import signal
import stat
import subprocess
import tempfile
import time
import uuid

from harness import process_alive, user_ids, wait_for

ALICE, BOB = "mgpu-alice", "mgpu-bob"
CGROUP2 = "/sys/fs/cgroup/unified"


def _record(cluster, job_id, attempt=1):
    try:
        with open(cluster.record_path(job_id, attempt)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _wait_phase(cluster, job_id, phases, attempt=1):
    return wait_for(lambda: (lambda r: r if r and r.get("phase") in phases else None)(_record(cluster, job_id, attempt)),
                    what="job %d's record to reach %s" % (job_id, "/".join(phases)))


def _state_of(pid):
    """The process state letter of `pid`, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
        return data[data.rindex(b")") + 2:].split()[0].decode()
    except OSError:
        return None


def _alive(pid):
    return _state_of(pid) not in (None, "Z", "X")


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _start_time(pid):
    with open("/proc/%d/stat" % pid, "rb") as handle:
        data = handle.read()
    return int(data[data.rindex(b")") + 2:].split()[19])


def _user_dir(user):
    """A fresh directory the user owns, in /tmp."""
    path = tempfile.mkdtemp(prefix="mgpu-fence-", dir="/tmp")
    uid, gid, _ = user_ids(user)
    os.chown(path, uid, gid)
    return path


def _as_user(user, *argv):
    uid, gid, groups = user_ids(user)
    return subprocess.run(list(argv), user=uid, group=gid, extra_groups=groups, check=True,
                          capture_output=True)


def _helper_pid(master_pid):
    """The master's launcher helper: its one child process."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            fields = data[data.rindex(b")") + 2:].split()
            if int(fields[1]) == master_pid and fields[0] not in (b"Z", b"X"):
                found.append(int(name))
    assert len(found) == 1, found
    return found[0]


# -- pid reuse --------------------------------------------------------------------------------


def test_a_stale_record_never_kills_a_stranger_that_reuses_its_pids(cluster):
    job = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "300")
    cluster.wait_state(job, "RUNNING")
    record = _wait_phase(cluster, job, ("started",))
    cluster.master.kill()
    _kill_quietly(record["sup_pid"])
    _kill_quietly(record["pgid"])
    wait_for(lambda: not _alive(record["pgid"]), what="the job to be gone")
    # A stranger (bob's, in a session of its own) now holds the pids the record names.
    uid, gid, groups = user_ids(BOB)
    stranger = subprocess.Popen(["setsid", "sh", "-c", "sleep 300 & wait"], user=uid, group=gid,
                                extra_groups=groups, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: _state_of(stranger.pid) is not None, what="the stranger")
        time.sleep(0.2)  # its child sleep exists too
        record.update(sup_pid=stranger.pid, sup_start=_start_time(stranger.pid) + 1, pgid=stranger.pid,
                      job_start=0, cgroup=None)
        with open(cluster.record_path(job), "w") as handle:
            json.dump(record, handle)
        cluster.master.start()
        ended = cluster.wait_state(job, ("NODE_FAIL", "PENDING"))
        assert ended["state"] == "NODE_FAIL"
        time.sleep(0.5)
        assert _alive(stranger.pid), "the stranger was killed"
        children = [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                    if _alive(p) and open("/proc/%d/stat" % p, "rb").read().split(b") ")[1].split()[1] == b"%d" % stranger.pid]
        assert children, "the stranger's child was killed"
    finally:
        stranger.kill()
        stranger.wait()


# -- a supervisor that dies ---------------------------------------------------------------------


def test_a_job_whose_supervisor_is_killed_is_gone_before_its_gpu_is_reused(make_cluster):
    cluster = make_cluster(fake_gpus="1:16000")
    first = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "300")
    cluster.wait_state(first, "RUNNING")
    record = _wait_phase(cluster, first, ("started",))
    job_pid = record["pgid"]
    assert _alive(job_pid)
    seen = _user_dir(BOB)
    marker = os.path.join(seen, "first-job-state")
    try:
        second = cluster.submit(BOB, "--gpus", "1", "--", "sh", "-c",
                                "s=$(cut -d' ' -f3 /proc/%d/stat 2>/dev/null); echo ${s:-gone} > %s"
                                % (job_pid, marker))
        assert cluster.job(second)["state"] == "PENDING"
        os.kill(record["sup_pid"], signal.SIGKILL)
        ended = cluster.wait_state(first, ("NODE_FAIL", "PENDING"))
        assert ended["state"] == "NODE_FAIL"
        assert "supervisor disappeared" in ended["reason"]
        cluster.wait_state(second, "COMPLETED")
        with open(marker) as handle:
            assert handle.read().strip() in ("gone", "Z")  # dead when the second job ran
        assert not _alive(job_pid)
    finally:
        subprocess.run(["rm", "-rf", seen])


# -- stoppable from launch: a job blocked before exec -----------------------------------------


def _fifo_job(cluster, *extra):
    """A job whose --output is a FIFO nobody reads: it blocks opening it, before exec. Its
    command would write a marker file."""
    where = _user_dir(ALICE)
    fifo = os.path.join(where, "out.fifo")
    _as_user(ALICE, "mkfifo", fifo)
    marker = os.path.join(where, "ran")
    job = cluster.submit(ALICE, "--gpus", "1", "--output", fifo, *extra, "--", "touch", marker)
    cluster.wait_state(job, "RUNNING")
    record = _wait_phase(cluster, job, ("launched",))
    assert _alive(record["pgid"])
    return job, marker, where


def test_a_job_blocked_before_exec_is_cancelled(cluster):
    job, marker, where = _fifo_job(cluster)
    try:
        started = time.monotonic()
        assert cluster.run(ALICE, "cancel", job).returncode == 0
        cluster.wait_state(job, "CANCELLED", timeout=10)
        assert time.monotonic() - started < 5
        assert not os.path.exists(marker)
    finally:
        subprocess.run(["rm", "-rf", where])


def test_a_job_blocked_before_exec_reaches_its_time_limit(cluster):
    job, marker, where = _fifo_job(cluster, "--time-limit", "2")
    try:
        ended = cluster.wait_state(job, "TIMEOUT", timeout=15)
        assert ended["end_time"] - ended["start_time"] < 8
        assert not os.path.exists(marker)
    finally:
        subprocess.run(["rm", "-rf", where])


def test_a_job_blocked_before_exec_survives_a_master_crash_and_is_still_cancelled(cluster):
    job, marker, where = _fifo_job(cluster)
    try:
        record = _record(cluster, job)
        cluster.master.kill()
        cluster.master.start()
        assert cluster.job(job)["state"] == "RUNNING"  # adopted, not requeued
        assert cluster.job(job)["restarts"] == 0
        assert _alive(record["pgid"])
        assert cluster.run(ALICE, "cancel", job).returncode == 0
        cluster.wait_state(job, "CANCELLED", timeout=10)
        assert not _alive(record["pgid"])
        assert not os.path.exists(marker)
    finally:
        subprocess.run(["rm", "-rf", where])


# -- exactly once across master crashes ----------------------------------------------------


def test_every_job_runs_exactly_once_when_the_master_is_killed_again_and_again(cluster):
    where = _user_dir(ALICE)
    ran = os.path.join(where, "ran")
    rng = random.Random(7)
    try:
        for round_ in range(4):
            clients = [cluster.start(ALICE, "srun", "--parsable", "--gpus", "0", "--", "sh", "-c",
                                     "echo $MGPU_JOB_ID >> %s" % ran) for _ in range(5)]
            time.sleep(rng.uniform(0.05, 0.6))
            cluster.master.kill()
            for client in clients:
                client.communicate(timeout=30)
            cluster.master.start()
        jobs = [j for j in cluster.queue()["jobs"]]
        assert jobs, "no job was accepted"
        for job in jobs:
            cluster.wait_state(job["id"], ("COMPLETED", "FAILED", "NODE_FAIL", "CANCELLED"), timeout=30)
        jobs = cluster.queue()["jobs"]
        assert all(j["state"] == "COMPLETED" for j in jobs), [(j["id"], j["state"], j["reason"]) for j in jobs]
        with open(ran) as handle:
            lines = handle.read().split()
        ids = sorted(int(x) for x in lines)
        assert ids == sorted(j["id"] for j in jobs), "some job ran twice or never"
    finally:
        subprocess.run(["rm", "-rf", where])


# -- the launcher helper killed ------------------------------------------------------------


def test_a_killed_launcher_helper_neither_loses_nor_double_books_a_job(make_cluster):
    cluster = make_cluster(fake_gpus="1:16000")
    where = _user_dir(ALICE)
    go = os.path.join(where, "go")
    try:
        first = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c",
                               "while [ ! -e %s ]; do sleep 0.05; done; exit 7" % go)
        cluster.wait_state(first, "RUNNING")
        _wait_phase(cluster, first, ("started",))
        os.kill(_helper_pid(cluster.master.process.pid), signal.SIGKILL)
        second = cluster.submit(BOB, "--gpus", "1", "--", "true")
        time.sleep(0.5)
        assert cluster.job(second)["state"] == "PENDING"  # the GPU is still the first job's
        cluster.master.stop()
        cluster.master.start()
        assert cluster.job(first)["state"] == "RUNNING"
        assert cluster.job(second)["state"] == "PENDING"
        _as_user(ALICE, "touch", go)
        ended = cluster.wait_state(first, "FAILED")
        assert ended["exit_code"] == 7
        after = cluster.wait_state(second, "COMPLETED")
        assert after["start_time"] >= ended["end_time"]
    finally:
        subprocess.run(["rm", "-rf", where])


# -- output paths -------------------------------------------------------------------------------


def test_streaming_refuses_devices_symlinks_and_files_of_others(cluster):
    where = _user_dir(ALICE)
    secret_dir = tempfile.mkdtemp(prefix="mgpu-secret-", dir="/tmp")
    try:
        secret = os.path.join(secret_dir, "secret")
        with open(secret, "w") as handle:
            handle.write("root-secret-%s\n" % uuid.uuid4().hex)
        os.chmod(secret, 0o644)
        link = os.path.join(where, "link.out")
        _as_user(ALICE, "ln", "-s", secret, link)
        # A symlink to a file of root's: the job cannot write it, and the stream does not read it.
        result = cluster.run(ALICE, "srun", "-i", "--gpus", "0", "--output", link, "--", "echo", "hi")
        assert "root-secret" not in result.stdout + result.stderr
        # A file of bob's that alice may write: her job writes it, but her stream does not read it.
        bobs = os.path.join(where, "bobs.out")
        open(bobs, "w").close()
        os.chown(bobs, user_ids(BOB)[0], user_ids(BOB)[1])
        os.chmod(bobs, 0o666)
        result = cluster.run(ALICE, "srun", "-i", "--gpus", "0", "--output", bobs, "--", "echo", "written-for-bob")
        assert "written-for-bob" not in result.stdout
        assert open(bobs).read() == "written-for-bob\n"
        # A device: the job writes to /dev/null; nothing is streamed and nothing hangs.
        result = cluster.run(ALICE, "srun", "-i", "--gpus", "0", "--output", "/dev/null", "--", "echo", "gone",
                             timeout=20)
        assert "gone" not in result.stdout
        # A regular file of her own is streamed.
        result = cluster.run(ALICE, "srun", "-i", "--gpus", "0", "--output", os.path.join(where, "mine.out"),
                             "--", "echo", "visible")
        assert "visible" in result.stdout
    finally:
        subprocess.run(["rm", "-rf", where, secret_dir])


def test_the_default_log_directory_is_private(cluster):
    logs = os.path.join(pwd.getpwnam(ALICE).pw_dir, ".mgpu", "logs")
    subprocess.run(["rm", "-rf", logs])
    job = cluster.submit(ALICE, "--gpus", "0", "--", "true")
    cluster.wait_state(job, "COMPLETED")
    assert stat.S_IMODE(os.stat(logs).st_mode) == 0o700
    os.chmod(logs, 0o755)
    job = cluster.submit(ALICE, "--gpus", "0", "--", "true")
    cluster.wait_state(job, "COMPLETED")
    assert stat.S_IMODE(os.stat(logs).st_mode) == 0o700


# -- cgroups --------------------------------------------------------------------------------


def _cgroup2_writable():
    try:
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[2] == "cgroup2" and os.access(line.split()[1], os.W_OK) for line in mounts)
    except OSError:
        return False


def test_cancel_reaches_a_process_that_left_the_job_session(cluster):
    if not _cgroup2_writable():
        import pytest
        pytest.skip("no writable cgroup v2 hierarchy here")
    tag = "sleep 300.%d" % (uuid.uuid4().int % 10**9)
    job = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c", "(setsid %s &) ; sleep 300" % tag)
    cluster.wait_state(job, "RUNNING")
    record = _wait_phase(cluster, job, ("started",))
    assert record["cgroup"] and os.path.isdir(record["cgroup"])
    wait_for(lambda: process_alive(tag), what="the escaped process")
    escaped = int(subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True).stdout.split()[0])
    with open("/proc/%d/cgroup" % escaped) as handle:
        assert os.path.basename(record["cgroup"]) in handle.read()
    cluster.run(ALICE, "cancel", job)
    cluster.wait_state(job, "CANCELLED")
    assert not _alive(escaped)
    wait_for(lambda: not os.path.exists(record["cgroup"]), what="the job's cgroup to be removed")
    # The daemon's directory above it goes with its last job (and a killed daemon leaves none).
    wait_for(lambda: not os.path.exists(os.path.dirname(record["cgroup"])), what="the master's cgroup directory to go")
