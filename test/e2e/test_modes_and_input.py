"""Single-user mode, a host without GPUs, root's jobs, and bad input of every kind."""

import json
import os
import socket
import subprocess

import pytest

from harness import request, user_ids

ALICE, BOB = "mgpu-alice", "mgpu-bob"
MAX_FRAME = 1 << 20


def test_single_user_mode_runs_the_owners_jobs_and_refuses_others(make_cluster):
    cluster = make_cluster(user=ALICE)
    assert "single-user mode for %s" % ALICE in cluster.master.log
    result = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "1", "--", "id", "-u")
    assert result.returncode == 0, result.stderr + cluster.master.log
    assert result.stdout.strip() == str(user_ids(ALICE)[0])
    # Bob's client sees that the socket is served by alice, not root, and sends it nothing.
    for args in (("srun", "--", "true"), ("queue",), ("cancel", "1")):
        refused = cluster.run(BOB, *args)
        assert refused.returncode == 1
        assert refused.stderr.startswith(
            "mgpu: refusing to use the mgpu socket %s: it is served by %s (uid %d), not by root or by you"
            % (cluster.master.socket, ALICE, user_ids(ALICE)[0])), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert [j["user"] for j in cluster.queue(ALICE)["jobs"]] == [ALICE]


def test_without_nvml_or_fake_gpus_only_cpu_jobs_run(make_cluster):
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this host has an NVIDIA GPU")
    cluster = make_cluster(fake_gpus=None)
    assert "NVML" in cluster.master.log and "only --gpus 0 jobs will run" in cluster.master.log
    refused = cluster.run(ALICE, "srun", "--gpus", "1", "--", "true")
    assert refused.returncode == 1 and "submit with --gpus 0" in refused.stderr
    ok = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--", "echo", "cpu-only")
    assert ok.returncode == 0 and ok.stdout == "cpu-only\n"


def test_root_jobs_need_the_config_switch(make_cluster):
    cluster = make_cluster()
    refused = cluster.run(None, "srun", "--", "true")
    assert refused.returncode == 1 and "jobs do not run as root" in refused.stderr
    allowed = make_cluster(args=["--allow-root-jobs"])
    result = allowed.run(None, "srun", "-i", "-q", "--gpus", "0", "--", "id", "-u")
    assert result.returncode == 0 and result.stdout.strip() == "0"


def test_bad_frames_get_an_error_and_the_master_keeps_serving(cluster):
    path = cluster.master.socket
    garbage = request(path, None, raw=b"this is not json\n")
    assert garbage["ok"] is False and garbage["error"] == "bad_request"
    not_object = request(path, None, raw=b"[1, 2]\n")
    assert not_object["error"] == "bad_request"
    unknown = request(path, {"v": 1, "type": "format_disk"})
    assert unknown["error"] == "unknown_type"
    old = request(path, {"v": 0, "type": "queue"})
    assert old["error"] == "version_mismatch"
    assert "the daemon speaks 1, the client 0" in old["message"]
    wrong_type = request(path, {"v": 1, "type": "submit", "command": "rm -rf /", "cwd": "/", "env": {}})
    assert wrong_type["error"] == "bad_request"
    bad_utf8 = request(path, None, raw=b'{"v": 1, "type": "\xff"}\n')
    assert bad_utf8["error"] == "bad_request"
    oversize = send_and_read_reply(path, b"x" * (MAX_FRAME + 10))
    assert oversize["ok"] is False and oversize["error"] == "too_large", oversize
    # Half a frame, then gone.
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.sendall(b'{"v": 1, "type": "que')
    sock.close()
    # A client that says nothing does not hold anybody else up.
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(path)
    assert request(path, {"v": 1, "type": "ping"})["ok"] is True
    silent.close()
    assert cluster.run(ALICE, "queue").returncode == 0
    assert cluster.master.process.poll() is None
    assert "Traceback" not in cluster.master.log


def send_and_read_reply(path, frame, timeout=10.0):
    """Send `frame` and read the one reply line, even when the daemon answers and closes before
    it has read all of the frame (an oversize one): the reply is what counts, not the send."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    sock.connect(path)
    try:
        sock.sendall(frame)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert data.endswith(b"\n"), "no reply line, only %r" % data[:200]
    return json.loads(data)


def test_several_requests_on_one_kept_connection(cluster):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)  # a reply that never comes fails the test instead of hanging it
    sock.connect(cluster.master.socket)
    reader = sock.makefile("rb")
    for _ in range(3):
        sock.sendall(b'{"v": 1, "type": "ping"}\n')
        assert json.loads(reader.readline())["ok"] is True
    sock.close()


def test_client_errors_are_one_line(make_cluster, tmp_path):
    cluster = make_cluster()
    missing = cluster.run(ALICE, "queue", env={"MGPU_SOCKET": "/tmp/no-such-dir/mgpu.sock"})
    assert missing.returncode == 1
    assert missing.stderr.startswith("mgpu: cannot reach the mgpu master at /tmp/no-such-dir/mgpu.sock")
    assert len(missing.stderr.strip().splitlines()) == 1
    usage = cluster.run(ALICE, "srun")
    assert usage.returncode == 2 and "no command given" in usage.stderr
    unknown = cluster.run(ALICE, "frobnicate")
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr
    nodir = cluster.run(ALICE, "srun", "--chdir", "/no/such/dir", "--", "true")
    assert nodir.returncode == 1 and "no such directory" in nodir.stderr
    state = cluster.run(ALICE, "queue", "--state", "SLEEPING")
    assert state.returncode == 1 and "unknown state SLEEPING" in state.stderr


def test_master_refuses_bad_config_and_a_second_master(cluster, installation, tmp_path):
    os.chmod(tmp_path, 0o755)
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: random\n")
    env = installation.env(str(tmp_path / "s.sock"))
    result = subprocess.run(installation.command(None) + ["master", "--config", str(bad), "--state-dir",
                                                          str(tmp_path / "state"), "--fake-gpus", "1"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == "mgpu: %s: policy must be one of fill_first, spread, not 'random'" % bad
    second = subprocess.run(installation.command(None) + ["master", "--socket", cluster.master.socket,
                                                          "--state-dir", str(tmp_path / "state2"),
                                                          "--fake-gpus", "1"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "another daemon is already serving on %s" % cluster.master.socket in second.stderr
    assert cluster.master.process.poll() is None
