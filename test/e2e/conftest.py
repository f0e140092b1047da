import os
import shutil
import subprocess
import tempfile

import pytest

from harness import MGPU_BIN, TEST_USERS, USER_PYTHON, Cluster, Installation, Master, ensure_users, remove_users


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


@pytest.fixture(scope="session")
def users():
    _needs_root()
    names = ensure_users()
    yield names
    remove_users()


@pytest.fixture
def make_cluster(installation, users, tmp_path_factory):
    """make_cluster(fake_gpus="2:16000", args=(), user=None, config=None) -> a Cluster with a
    running master; everything it started is stopped afterwards."""
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
    for master in masters:
        master.stop()
    for name in TEST_USERS:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    for master in masters:
        shutil.rmtree(master.workdir, ignore_errors=True)


@pytest.fixture
def cluster(make_cluster):
    return make_cluster()
