"""Trusted endpoints, connection limits and safe text: what a hostile local user can and
cannot do to another user's client and to the shared master.

The first tests run in-process without root (fake servers on temporary sockets); the others
use real daemons and the test users."""

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from harness import USER_PYTHON, popen_as, user_ids, wait_for
from mgpu import client, errors, transport
from mgpu.errors import MgpuError

ALICE, BOB = "mgpu-alice", "mgpu-bob"
HOSTILE_NAME = "\x1b[2J\x1b]0;pwn\x07evil\nline"


# ---------------------------------------------------------------------------------------------
# Connecting to a busy master (in-process)


def listener(path, backlog):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(backlog)
    return server


def fill_backlog(path):
    """Connections that fill a never-accepting listener's queue; the caller closes them."""
    held = []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            return held
        held.append(sock)
        assert len(held) < 1000


@pytest.fixture
def busy_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "busy.sock")
    server = listener(path, 0)
    held = fill_backlog(path)
    monkeypatch.setenv("MGPU_SOCKET", path)
    monkeypatch.setattr(client, "CONNECT_DEADLINE", 0.6)
    yield path, server
    for sock in held:
        sock.close()
    server.close()


def test_a_full_backlog_is_waited_for_then_one_clear_line(busy_socket):
    path, _ = busy_socket
    started = time.monotonic()
    with pytest.raises(MgpuError) as raised:
        client.Client.connect()
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 3.0, elapsed  # waited for the deadline, not EAGAIN at once
    message = raised.value.message
    assert raised.value.code == errors.UNAVAILABLE
    assert "\n" not in message and path in message and "too busy" in message, message


def test_a_client_waiting_on_a_full_backlog_gets_in_when_room_is_made(busy_socket, monkeypatch):
    path, server = busy_socket
    monkeypatch.setattr(client, "CONNECT_DEADLINE", 5.0)
    accepted = []
    timer = threading.Timer(0.3, lambda: accepted.append(server.accept()[0]))
    timer.start()
    started = time.monotonic()
    connected = client.Client.connect()
    elapsed = time.monotonic() - started
    timer.join()
    connected.close()
    for sock in accepted:
        sock.close()
    assert 0.2 <= elapsed < 4.0, elapsed


def fake_server(path, replies):
    """A server that answers each connection with the next frame of `replies` (the last one
    repeats), without reading; the number of connections so far."""
    server = listener(path, 16)
    count = [0]

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            frame = replies[min(count[0], len(replies) - 1)]
            count[0] += 1
            if not frame.startswith(b'{"ok": false'):  # a refusal is sent without reading
                conn.settimeout(2)
                conn.recv(65536)
            conn.sendall(frame)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, count


def test_a_master_over_its_connection_cap_is_asked_again(tmp_path, monkeypatch):
    path = str(tmp_path / "capped.sock")
    busy = (json.dumps({"ok": False, "error": "unavailable",
                        "message": "%s from your user (128 open); close some and try again" % transport.BUSY})
            + "\n").encode()
    server, count = fake_server(path, [busy, busy, b'{"ok": true, "result": {"pong": true}}\n'])
    monkeypatch.setenv("MGPU_SOCKET", path)
    try:
        assert client.call("ping") == {"pong": True}
        assert count[0] == 3
    finally:
        server.close()


def test_a_master_that_stays_over_its_cap_is_one_line_within_the_deadline(tmp_path, monkeypatch):
    path = str(tmp_path / "full.sock")
    busy = (json.dumps({"ok": False, "error": "unavailable", "message": "%s (1024 open); try again"
                        % transport.BUSY}) + "\n").encode()
    server, count = fake_server(path, [busy])
    monkeypatch.setenv("MGPU_SOCKET", path)
    monkeypatch.setattr(client, "CONNECT_DEADLINE", 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(MgpuError) as raised:
            client.call("queue")
    finally:
        server.close()
    assert time.monotonic() - started < 3.0
    assert raised.value.message.startswith(transport.BUSY) and count[0] >= 2


# ---------------------------------------------------------------------------------------------
# Sockets another user controls


FAKE_SERVER = r"""
import json, os, select, socket, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
os.chmod(os.path.dirname(path), 0o755)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
os.chmod(path, 0o777)
server.listen(16)
print("ready", flush=True)
received, connections = b"", 0
while True:
    ready, _, _ = select.select([server, sys.stdin], [], [], 60)
    if sys.stdin in ready or not ready:
        break
    conn, _ = server.accept()
    connections += 1
    conn.settimeout(1.0)
    try:
        data = conn.recv(65536)
    except OSError:
        data = b""
    received += data
    try:
        conn.sendall(b'{"ok": true, "result": {"job_id": 666}}\n')
    except OSError:
        pass
    conn.close()
print(json.dumps({"received": received.decode("latin-1"), "connections": connections}), flush=True)
"""


class FakeServer:
    """A listening socket of `user` at `path` that answers every request `Submitted job 666`
    and records what it was sent."""

    def __init__(self, user, path):
        self.process = popen_as(user, [USER_PYTHON, "-c", FAKE_SERVER, path], {"PATH": "/usr/bin:/bin"},
                                cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def finish(self):
        """{"received": what it read, "connections": how many it accepted}."""
        out, _ = self.process.communicate("", timeout=20)
        return json.loads(out)


def user_env(installation, user, **changes):
    """The environment of `user`'s shell: no MGPU_SOCKET, no XDG_RUNTIME_DIR (so the client's
    first candidate is /tmp/mgpu-UID/mgpu.sock)."""
    env = installation.env("", user)
    env.pop("MGPU_SOCKET", None)
    env.pop("XDG_RUNTIME_DIR", None)
    env.update(changes)
    return env


def run_as(installation, user, args, env, timeout=60):
    process = popen_as(user, list(installation.command(user)) + list(args), env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


@pytest.fixture
def alice_socket_dir(users):
    """/tmp/mgpu-<alice's uid>, absent at the start and removed at the end."""
    if os.path.exists("/run/mgpu/mgpu.sock") or os.path.exists("/etc/mgpu/mgpu.yaml"):
        pytest.skip("a system mgpu is installed on this host: the client would reach it")
    path = "/tmp/mgpu-%d" % pwd.getpwnam(ALICE).pw_uid
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def describe(user):
    return "%s (uid %d)" % (user, pwd.getpwnam(user).pw_uid)


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, (result.returncode, result.stderr)
    return lines[0]


def test_a_socket_squatted_at_the_users_default_path_gets_nothing(installation, alice_socket_dir):
    squatted = os.path.join(alice_socket_dir, "mgpu.sock")
    fake = FakeServer(BOB, squatted)
    env = user_env(installation, ALICE)
    default = run_as(installation, ALICE, ["srun", "--", "true"], env)
    explicit = run_as(installation, ALICE, ["srun", "--", "true"], dict(env, MGPU_SOCKET=squatted))
    seen = fake.finish()
    assert seen == {"received": "", "connections": 0}  # not even connected to
    for result in (default, explicit):
        line = one_line(result)
        assert "666" not in result.stdout + line
        assert squatted in line and describe(BOB) in line and "belongs to" in line, line


def test_a_socket_served_by_another_user_is_refused_before_anything_is_sent(installation, users, tmp_path):
    bob_dir = "/tmp/mgpu-test-bob-%d" % os.getpid()
    shutil.rmtree(bob_dir, ignore_errors=True)
    path = os.path.join(bob_dir, "mgpu.sock")
    fake = FakeServer(BOB, path)
    try:
        env = user_env(installation, ALICE, MGPU_SOCKET=path)
        submit = run_as(installation, ALICE, ["srun", "--", "true"], env)
        queue = run_as(installation, ALICE, ["queue"], env)
        seen = fake.finish()
    finally:
        shutil.rmtree(bob_dir, ignore_errors=True)
    assert seen["received"] == "" and seen["connections"] == 2  # connected, checked, sent nothing
    for result in (submit, queue):
        line = one_line(result)
        assert "Submitted" not in result.stdout and "666" not in line
        assert line.startswith("mgpu: refusing to use the mgpu socket %s: it is served by %s" % (path, describe(BOB)))


@pytest.mark.parametrize("owner,mode", [(BOB, 0o755), (ALICE, 0o777)])
def test_a_per_user_directory_that_others_control_is_refused_by_client_and_master(
        installation, alice_socket_dir, owner, mode):
    why = "belongs to %s" % describe(BOB) if owner == BOB else "writable by others"
    os.mkdir(alice_socket_dir)
    uid, gid, _ = user_ids(owner)
    os.chown(alice_socket_dir, uid, gid)
    os.chmod(alice_socket_dir, mode)
    env = user_env(installation, ALICE)
    refused = one_line(run_as(installation, ALICE, ["queue"], env))
    assert alice_socket_dir in refused and why in refused, refused
    state = tempfile.mkdtemp(prefix="mgpu-state-", dir="/tmp")
    try:
        os.chown(state, *user_ids(ALICE)[:2])
        master = run_as(installation, ALICE, ["master", "--fake-gpus", "1", "--state-dir", state], env, timeout=60)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    line = one_line(master)
    assert line.startswith("mgpu: refusing to serve on %s/mgpu.sock: " % alice_socket_dir) and why in line, line
    assert os.listdir(alice_socket_dir) == []


def test_a_file_in_the_way_of_the_socket_is_never_removed(make_cluster, tmp_path):
    cluster = make_cluster(start=False)
    master = cluster.master
    os.makedirs(os.path.dirname(master.socket))
    with open(master.socket, "w") as handle:
        handle.write("precious\n")
    master.start(wait=False)
    master.expect_exit(1)
    assert master.process.wait(30) == 1
    assert "refusing to serve on %s: a regular file of root (uid 0) is there, not a stale socket" % master.socket \
        in master.log, master.log
    with open(master.socket) as handle:
        assert handle.read() == "precious\n"
    # A symlink is not followed or removed either.
    target = tmp_path / "target"
    target.write_text("kept\n")
    os.unlink(master.socket)
    os.symlink(str(target), master.socket)
    master.start(wait=False)
    master.expect_exit(1)
    assert master.process.wait(30) == 1
    assert "a symlink of root (uid 0) is there" in master.log
    assert os.path.islink(master.socket) and target.read_text() == "kept\n"


def test_the_master_refuses_a_socket_directory_another_user_controls(make_cluster):
    cluster = make_cluster(start=False)
    master = cluster.master
    os.makedirs(os.path.dirname(master.socket))
    os.chown(os.path.dirname(master.socket), *user_ids(BOB)[:2])
    master.start(wait=False)
    master.expect_exit(1)
    assert master.process.wait(30) == 1
    assert "refusing to serve on %s: its directory %s belongs to %s, not to root;" % (
        master.socket, os.path.dirname(master.socket), describe(BOB)) in master.log, master.log


# ---------------------------------------------------------------------------------------------
# What other users see


def test_control_characters_in_a_job_are_escaped_for_other_users(cluster):
    job = cluster.submit(ALICE, "--gpus", "0", "--name", HOSTILE_NAME, "--", "echo", "\x1b[31mred\x9b")
    cluster.wait_state(job, ("COMPLETED", "FAILED"))
    shown = cluster.run(BOB, "queue", "--all")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert not [ch for ch in out if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F], repr(out)
    row = [line for line in out.splitlines() if line.startswith("%d " % job)]
    assert len(row) == 1 and "\\x1b[2J\\x1b]0;pwn\\x07evil\\nline" in row[0], out
    exact = json.loads(cluster.run(BOB, "queue", "--all", "--json").stdout)
    mine = [j for j in exact["jobs"] if j["id"] == job][0]
    assert mine["name"] == HOSTILE_NAME and mine["command"] == ["echo", "\x1b[31mred\x9b"]
    unnamed = cluster.submit(ALICE, "--gpus", "0", "--", "echo", "\x1b]0;title\x07")
    cluster.wait_state(unnamed, ("COMPLETED", "FAILED"))
    out = cluster.run(BOB, "queue", "--all").stdout
    assert "\x1b" not in out and "echo \\x1b]0;title\\x07" in out


# ---------------------------------------------------------------------------------------------
# Connection limits


HOLDER = r"""
import json, socket, sys
path, hold, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ping = b'{"v": 1, "type": "ping"}\n'

def reply(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data) if data else None

held, served = [], 0
for _ in range(hold):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(ping)  # served: from now on held for the idle timeout
    served += bool((reply(sock) or {}).get("ok"))
    held.append(sock)
refusals = []
for _ in range(extra):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(path)
    refusals.append(reply(sock))
    sock.close()
print(json.dumps({"served": served, "refusals": refusals}), flush=True)
sys.stdin.read()
"""


def threads_of(pid):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_one_users_connection_flood_is_capped_and_others_are_still_served(make_cluster):
    cap = 16
    cluster = make_cluster(config="max_connections_per_user: %d\n" % cap)
    pid = cluster.master.process.pid
    assert cluster.run(BOB, "queue").returncode == 0
    idle_threads = threads_of(pid)
    holder = popen_as(ALICE, [USER_PYTHON, "-c", HOLDER, cluster.master.socket, str(cap), "100"],
                      {"PATH": "/usr/bin:/bin"}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        report = json.loads(holder.stdout.readline())
        assert report["served"] == cap
        assert len(report["refusals"]) == 100
        for refusal in report["refusals"]:
            assert refusal["ok"] is False and refusal["error"] == "unavailable", refusal
            assert refusal["message"].startswith("too many connections to the master"), refusal
        threads = threads_of(pid)
        assert threads <= idle_threads + cap + 2, (idle_threads, threads)
        other = cluster.run(BOB, "queue")
        assert other.returncode == 0, other.stderr
        started = time.monotonic()
        mine = cluster.run(ALICE, "queue")
        waited = time.monotonic() - started
        assert mine.returncode == 1 and "too many connections to the master" in one_line(mine)
        assert 3 <= waited < 20, waited  # retried for a few seconds first
    finally:
        holder.communicate("", timeout=20)
    wait_for(lambda: cluster.run(ALICE, "queue").returncode == 0, timeout=20,
             what="alice to be served again once her connections closed")
    assert "connection limit: refused" in cluster.master.log
    assert cluster.master.process.poll() is None
