import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from harness import MGPU_BIN, TEST_USERS, USER_PYTHON, Cluster, Installation, Master, ensure_users, remove_users


# useradd, groupadd, ip live in the sbin directories, which a plain PATH (cron, env -i) lacks.
for _sbin in ("/usr/sbin", "/sbin"):
    if _sbin not in os.environ.get("PATH", "").split(":"):
        os.environ["PATH"] = os.environ.get("PATH", "/usr/bin:/bin") + ":" + _sbin


def _needs_root():
    if os.getuid() != 0:
        pytest.skip("needs root (creates users and runs jobs as them)")
    if not shutil.which("useradd"):
        pytest.skip("needs useradd")
    if not MGPU_BIN and not os.access(USER_PYTHON, os.X_OK):
        pytest.skip("needs %s for the test users' side" % USER_PYTHON)


@pytest.fixture(scope="session")
def installation():
    inst = Installation()
    yield inst
    inst.remove()


# The test users are shared by every e2e session on this host, and each session kills their
# processes after every test and deletes them at its end: two sessions at once would break each
# other's jobs. One session at a time holds this lock; the others wait for it.
SESSION_LOCK = "/tmp/mgpu-e2e-session.lock"
SESSION_LOCK_WAIT = 1800


def _lock_the_test_users():
    handle = open(SESSION_LOCK, "a+")
    os.chmod(SESSION_LOCK, 0o600)
    deadline = time.monotonic() + SESSION_LOCK_WAIT
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                pytest.fail("another e2e session held %s for %d s" % (SESSION_LOCK, SESSION_LOCK_WAIT))
            if not told:
                sys.__stderr__.write("\nwaiting for another e2e session on this host (lock %s)\n" % SESSION_LOCK)
                told = True
            time.sleep(0.5)
    handle.seek(0)
    handle.truncate()
    handle.write("%d\n" % os.getpid())
    handle.flush()
    return handle


@pytest.fixture(scope="session")
def users():
    _needs_root()
    lock = _lock_the_test_users()
    try:
        names = ensure_users()
        yield names
        remove_users()
    finally:
        lock.close()


@pytest.fixture
def make_cluster(installation, users, tmp_path_factory):
    """make_cluster(fake_gpus="2:16000", args=(), user=None, config=None) -> a Cluster with a
    running master; everything it started is stopped afterwards.

    A master that crashed fails the test: one that exited by itself (unless the test said
    `master.expect_exit()`), did not exit with 0 on SIGTERM at the end, or logged a traceback or
    an internal error (unless `master.expect_log_errors()`). Stopping it with `master.kill()` or
    `master.stop()` is expected."""
    masters = []

    def make(fake_gpus="2:16000", args=(), user=None, config=None, start=True):
        workdir = tempfile.mkdtemp(prefix="master-", dir="/tmp")
        os.chmod(workdir, 0o755)
        master = Master(installation, workdir, fake_gpus=fake_gpus, args=args, user=user, config=config)
        masters.append(master)
        if start:
            master.start()
        return Cluster(installation, master, users)

    yield make
    report = []
    for master in masters:
        master.stop()
        problems = master.health()
        if problems:
            report.append("master in %s:\n  %s\nits log (tail):\n%s" % (
                master.workdir, "\n  ".join(problems), master.log[-3000:]))
    for name in TEST_USERS:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    for master in masters:
        _remove_job_cgroups(master.state_dir)
        shutil.rmtree(master.workdir, ignore_errors=True)
    if report:
        pytest.fail("a master crashed or stopped badly\n" + "\n".join(report), pytrace=False)


def _remove_job_cgroups(state_dir):
    """Remove the cgroup directory of a master's jobs (left behind by a master killed with
    SIGKILL), once its job groups are empty."""
    from mgpu.launcher import cgroup_base_path

    base = cgroup_base_path(state_dir)
    if base is None:
        return
    if not os.path.isdir(base):
        return
    deadline = time.monotonic() + 5
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if os.path.isdir(path):
            while True:
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
    try:
        os.rmdir(base)
    except OSError:
        pass


@pytest.fixture
def cluster(make_cluster):
    return make_cluster()
