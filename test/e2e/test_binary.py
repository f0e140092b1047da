"""The one-file binary as a user meets it: any directory, an empty environment, no Python on
PATH; and nothing of the bundle reaches a job. Runs only against the binary (MGPU_BIN)."""

import pwd
import subprocess

import pytest

from harness import MGPU_BIN, popen_as

pytestmark = pytest.mark.skipif(not MGPU_BIN, reason="tests the binary: set MGPU_BIN=dist/mgpu")

ALICE = "mgpu-alice"


def run_bare(user, binary, *args, env=None):
    """Run the binary with an empty environment (plus `env`), from /, as `user`."""
    process = popen_as(user, ["/usr/bin/env", "-i"] + ["%s=%s" % kv for kv in (env or {}).items()]
                       + [binary] + list(args), env={}, cwd="/",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_binary_runs_with_an_empty_environment_as_root_and_as_a_user(cluster):
    binary = cluster.installation.user_command[0]
    for user in (None, ALICE):
        code, out, err = run_bare(user, binary, "--version")
        assert code == 0 and out.startswith("mgpu "), err
        code, out, err = run_bare(user, binary, "queue", env={"MGPU_SOCKET": cluster.master.socket})
        assert code == 0, err
        assert "NODE  GPU" in out
        code, out, err = run_bare(user, binary, "srun", "--help")
        assert code == 0 and "examples:" in out


def test_job_environment_carries_nothing_of_the_bundle(cluster):
    home = pwd.getpwnam(ALICE).pw_dir
    result = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--", "sh", "-c",
                         "env; echo LDPATH=[${LD_LIBRARY_PATH:-unset}]; mgpu --version",
                         env={"LD_LIBRARY_PATH": "/opt/user/lib"}, cwd=home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    names = [line.split("=", 1)[0] for line in lines if "=" in line]
    assert not [n for n in names if n.startswith(("_PYI", "_MEI", "PYINSTALLER"))]
    assert "LDPATH=[/opt/user/lib]" in lines  # the user's own value, not the unpack folder
    assert lines[-1].startswith("mgpu ")  # a job can run the binary again


def test_master_from_the_binary_dies_with_its_visible_pid(make_cluster):
    cluster = make_cluster()
    bootloader = cluster.master.process.pid
    children = subprocess.run(["pgrep", "-P", str(bootloader)], capture_output=True, text=True).stdout.split()
    # The interpreter under a one-file bootloader, or the launcher helper under the master.
    assert children
    cluster.master.kill()
    for pid in children:
        subprocess.run(["sh", "-c", "while kill -0 %s 2>/dev/null; do sleep 0.05; done" % pid], timeout=10)
    cluster.master.start()  # a second master can take over the socket: nothing was orphaned
    assert cluster.run(ALICE, "queue").returncode == 0
