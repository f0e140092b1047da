"""The master's side of the node link, on loopback: a node agent played by this test (TLS with the
cluster key, registration, reports) against a real master. What a node must see (launch, signal,
release, kill of attempts the master no longer runs) and what the master must do (schedule on the
node's GPUs, end its jobs NODE_FAIL when it falls silent, refuse bad links with one log line)."""

import os
import socket
import subprocess
import sys
import time

import pytest

from harness import REPO, wait_for

from mgpu import auth, protocol, transport

ALICE = "mgpu-alice"


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path):
    done = subprocess.run([sys.executable, "-m", "mgpu", "keygen", "--output", path], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "src")))
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def linked(make_cluster, tmp_path):
    """A master with no GPUs of its own that accepts node agents on a loopback port."""
    key_path = _keygen(str(tmp_path / "cluster.key"))
    port = _free_port()
    cluster = make_cluster(fake_gpus="0", args=["--listen", "127.0.0.1:%d" % port, "--key", key_path,
                                                "--node-timeout", "3", "--heartbeat-interval", "1"])
    return cluster, key_path, port


class FakeNode:
    """A node agent: TLS with the cluster key, registration, then messages both ways."""

    def __init__(self, key_path, port, name="n1", gpus=2, attempts=()):
        key = auth.load_key(key_path)
        sock = transport.connect_tcp("127.0.0.1", port, timeout=5)
        self.connection = transport.Connection(auth.wrap_client(sock, auth.client_context(key), key, 5),
                                               protocol.MAX_NODE_FRAME)
        self.connection.send(protocol.node_message(
            "node_register", name=name, attempts=[{"job_id": j, "attempt": a, "phase": "started"} for j, a in attempts],
            gpus=[{"index": i, "uuid": "GPU-%s-%d" % (name, i), "name": "Fake", "memory_mb": 16000}
                  for i in range(gpus)]))
        self.reply = self.connection.read(10)

    def send(self, type_, **fields):
        self.connection.send(protocol.node_message(type_, **fields))

    def read(self, timeout=10):
        message = self.connection.read(timeout)
        assert message is not None, "the master closed the link"
        return protocol.check_node_message(message, protocol.MASTER_TO_NODE)

    def close(self):
        self.connection.close()


def test_a_job_runs_on_a_registered_node_and_its_end_is_recorded(linked):
    cluster, key_path, port = linked
    node = FakeNode(key_path, port)
    try:
        assert node.reply == {"ok": True, "result": {"keep": [], "heartbeat_interval": 1.0}}
        nodes = {n["name"]: n for n in cluster.queue()["nodes"]}
        assert nodes["n1"]["state"] == "idle" and nodes["n1"]["address"] == "127.0.0.1"
        assert len(nodes["n1"]["gpus"]) == 2
        assert "node n1 up from 127.0.0.1 with 2 GPUs" in cluster.master.log

        job_id = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c", "exit 3")
        type_, launch = node.read()
        assert type_ == "launch"
        job = launch["job"]
        assert (job["id"], job["attempt"], job["user"], job["node"], job["command"]) == (
            job_id, 1, ALICE, "n1", ["sh", "-c", "exit 3"])
        assert launch["env"]["PATH"]
        node.send("job_started", job_id=job_id, attempt=1, sup_pid=4242, sup_start=1, pgid=4243)
        assert cluster.wait_state(job_id, "RUNNING")["node"] == "n1"
        node.send("node_heartbeat", usage={"0": 0})
        node.send("job_exited", job_id=job_id, attempt=1, exit_code=3, signal=None, error=None)
        ended = cluster.wait_state(job_id, "FAILED")
        assert ended["exit_code"] == 3 and ended["node"] == "n1"
        assert node.read() == ("release", {"job_id": job_id, "attempt": 1})
        # A late or repeated report about that attempt changes nothing.
        node.send("job_exited", job_id=job_id, attempt=1, exit_code=0, signal=None, error=None)
        node.send("node_heartbeat")
        time.sleep(0.3)
        assert cluster.job(job_id)["state"] == "FAILED"
    finally:
        node.close()


def test_cancel_reaches_the_node_and_a_silent_node_goes_down(linked):
    cluster, key_path, port = linked
    node = FakeNode(key_path, port)
    try:
        stays = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "300")
        assert node.read()[0] == "launch"
        requeued = cluster.submit(ALICE, "--gpus", "1", "--requeue", "--", "sleep", "300")
        assert node.read()[0] == "launch"
        for job_id in (stays, requeued):
            node.send("job_started", job_id=job_id, attempt=1, sup_pid=1, sup_start=1, pgid=1)
        cluster.wait_state(stays, "RUNNING")
        assert cluster.run(ALICE, "cancel", stays).returncode == 0
        assert node.read() == ("signal", {"job_id": stays, "attempt": 1, "signum": 15})
        # The node falls silent: no heartbeat, no end report.
        down = wait_for(lambda: (lambda n: n if n["state"] == "down" else None)(
            {n["name"]: n for n in cluster.queue()["nodes"]}["n1"]), timeout=15, what="node n1 down")
        assert down["state"] == "down"
        assert cluster.job(stays)["state"] == "CANCELLED"  # it was being cancelled
        back = cluster.job(requeued)
        assert (back["state"], back["restarts"]) == ("PENDING", 1)
        assert "node n1 is down: no heartbeat for 3s" in cluster.master.log
    finally:
        node.close()


def test_a_rejoining_node_keeps_what_runs_and_kills_what_ended(linked):
    cluster, key_path, port = linked
    node = FakeNode(key_path, port)
    running = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "300")
    assert node.read()[0] == "launch"
    node.send("job_started", job_id=running, attempt=1, sup_pid=1, sup_start=1, pgid=1)
    cluster.wait_state(running, "RUNNING")
    node.close()  # the link breaks; the node comes back before node_timeout
    again = FakeNode(key_path, port, attempts=[(running, 1), (running + 100, 1)])
    try:
        assert again.reply["ok"] and again.reply["result"]["keep"] == [[running, 1]]
        assert "node n1 reconnected" in cluster.master.log or "keeping 1 running job" in cluster.master.log
        for _ in range(8):  # past node_timeout: the heartbeats of the new link count
            again.send("node_heartbeat")
            time.sleep(0.5)
        assert cluster.job(running)["state"] == "RUNNING"
        assert {n["name"]: n["state"] for n in cluster.queue()["nodes"]}["n1"] == "mixed"
    finally:
        again.close()


def test_bad_links_are_refused_with_one_line(linked, tmp_path):
    cluster, key_path, port = linked
    other = auth.load_key(_keygen(str(tmp_path / "other.key")))
    sock = transport.connect_tcp("127.0.0.1", port, timeout=5)
    with pytest.raises(Exception):
        tls = auth.wrap_client(sock, auth.client_context(other), other, 5)
        transport.Connection(tls).read(5)
    sock.close()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(b'{"v": 1, "type": "node_register", "name": "evil", "gpus": [], "attempts": []}\n')
        plain.settimeout(10)
        try:
            assert plain.recv(100) == b""
        except OSError:
            pass
    name_taken = FakeNode(key_path, port, name=cluster.queue()["nodes"][0]["name"])
    assert name_taken.reply["ok"] is False and "master's own node" in name_taken.reply["message"]
    name_taken.close()
    wait_for(lambda: cluster.master.log.count("refused a node link from 127.0.0.1") >= 2,
             what="one log line per refused link\n" + cluster.master.log[-2000:])
    assert [n["name"] for n in cluster.queue()["nodes"]] == [cluster.queue()["nodes"][0]["name"]]
    # A registered node that sends garbage loses its link; the master keeps serving.
    node = FakeNode(key_path, port)
    node.connection.send_raw(b'{"v": 1, "type": "launch", "job": {}, "env": {}}\n')
    wait_for(lambda: "node n1: link lost (bad message" in cluster.master.log, what="the link to be dropped")
    node.close()
    assert cluster.run(ALICE, "queue").returncode == 0


def test_requests_relayed_by_a_node_carry_its_users_identity(linked):
    cluster, key_path, port = linked
    node = FakeNode(key_path, port)
    try:
        bobs = cluster.submit("mgpu-bob", "--gpus", "0", "--", "sleep", "300")
        alice = {"user": ALICE, "uid": 4242, "gid": 4242, "home": "/home/elsewhere/alice"}
        submit = protocol.request("submit", command=["true"], cwd="/tmp", env={"PATH": "/usr/bin:/bin"}, gpus=1)
        node.send("relay", request_id=1, peer=alice, request=submit)
        node.send("relay", request_id=2, peer=alice, request=protocol.request("cancel", ids=[bobs]))
        node.send("relay", request_id=3, peer=alice, request={"v": 1, "type": "submit", "command": ["a\x00b"], "cwd": "/", "env": {}})
        node.send("relay", request_id=4, peer=alice, request=protocol.request("attach", job_id=bobs))
        replies = {}
        while len(replies) < 4:
            type_, fields = node.read()
            if type_ == "relay_reply":
                replies[fields["request_id"]] = fields["reply"]
        assert replies[1]["ok"], replies[1]
        job = cluster.job(replies[1]["result"]["job_id"])
        import pwd
        assert (job["user"], job["uid"]) == (ALICE, pwd.getpwnam(ALICE).pw_uid)  # her uid on the master's host
        assert replies[1]["result"]["output"] == "/home/elsewhere/alice/.mgpu/logs/%d.out" % job["id"]
        result = replies[2]["result"]["results"][0]
        assert result["result"] == "permission_denied" and cluster.job(bobs)["state"] == "RUNNING"
        assert replies[3]["ok"] is False and replies[3]["error"] == "bad_request"
        # attach (srun -i) is checked like any request: not someone else's job
        assert replies[4] == {"ok": False, "error": "permission_denied",
                              "message": "permission denied: job %d belongs to mgpu-bob" % bobs}
    finally:
        node.close()


def _stream_of(node, request_id, output=b"", until="end", timeout=20):
    """The relay_reply and relay_frames the master sends `node` for `request_id`, up to the
    first frame of type `until`; output_read requests are answered from `output` meanwhile."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no %s frame for request %d: %r" % (until, request_id, got)
        type_, fields = node.read(left)
        if type_ == "output_read":
            data = output[fields["offset"]:fields["offset"] + fields["max_bytes"]]
            node.send("output_data", request_id=fields["request_id"], data=data.decode("latin-1"), state="ok")
        elif type_ == "relay_reply" and fields["request_id"] == request_id:
            got.append(fields["reply"])
            if not fields["reply"]["ok"]:
                return got
        elif type_ == "relay_frame" and fields["request_id"] == request_id:
            got.append(fields["frame"])
            if fields["frame"].get("type") == until or fields["frame"].get("ok") is False:
                return got


def test_a_relayed_attach_streams_the_job_back_through_the_link(linked):
    cluster, key_path, port = linked
    node = FakeNode(key_path, port)
    try:
        alice = {"user": ALICE, "uid": 4242, "gid": 4242, "home": "/home/elsewhere/alice"}
        job_id = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c", "echo hello")
        assert node.read()[0] == "launch"
        node.send("relay_cancel", request_id=99)  # no such stream: ignored
        node.send("relay", request_id=7, peer=alice, request=protocol.request("attach", job_id=job_id))
        node.send("job_started", job_id=job_id, attempt=1, sup_pid=4242, sup_start=1, pgid=4243)
        running = _stream_of(node, 7, until="status")
        assert running[0]["ok"] and running[0]["result"]["id"] == job_id
        # status frames until it runs (the first may show it starting)
        while running[-1]["job"]["state"] != "RUNNING":
            running += _stream_of(node, 7, until="status")
        rest = _stream_of(node, 7, output=b"hello\n", until="output")
        assert rest[-1] == {"type": "output", "stream": "stdout", "data": "hello\n"}
        node.send("job_exited", job_id=job_id, attempt=1, exit_code=0, signal=None, error=None)
        end = _stream_of(node, 7, output=b"hello\n")[-1]
        assert end["type"] == "end" and end["job"]["state"] == "COMPLETED" and end["job"]["exit_code"] == 0
        node.send("relay_cancel", request_id=7)  # after its end: nothing left to cancel
        node.send("node_heartbeat")
        assert cluster.run(ALICE, "queue").returncode == 0
        assert "link lost" not in cluster.master.log
    finally:
        node.close()


def _threads(pid):
    """Threads of a process and its descendants (a one-file binary runs the master in a child)."""
    children = {}
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % entry) as stat:
                children.setdefault(int(stat.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open("/proc/%d/status" % current) as status:
                total += int(next(line for line in status if line.startswith("Threads:")).split()[1])
        except (OSError, StopIteration):
            continue
        todo.extend(children.get(current, []))
    return total


def test_relayed_streams_are_bounded_cancelled_and_end_with_their_link(linked):
    cluster, key_path, port = linked
    node = FakeNode(key_path, port)
    limit = protocol.MAX_RELAY_STREAMS
    try:
        alice = {"user": ALICE, "uid": 4242, "gid": 4242, "home": "/home/elsewhere/alice"}
        cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "300")
        assert node.read()[0] == "launch"
        waiting = cluster.submit(ALICE, "--gpus", "2", "--", "true")  # pending behind the first
        before = _threads(cluster.master.pid)
        for request_id in range(1, limit + 2):
            node.send("relay", request_id=request_id, peer=alice, request=protocol.request("attach", job_id=waiting))
        replies = {}
        while len(replies) < limit + 1:
            type_, fields = node.read()
            if type_ == "relay_reply":
                replies[fields["request_id"]] = fields["reply"]
        refused = [r for r in replies.values() if not r["ok"]]
        assert len(refused) == 1 and refused[0] == {
            "ok": False, "error": "unavailable",
            "message": "node n1 already streams %d jobs (srun -i) through the master, the most it may; "
                       "try again later" % limit}
        assert _threads(cluster.master.pid) >= before + limit - 1
        # Cancelled streams make room at once.
        for request_id, reply in replies.items():
            if reply["ok"]:
                node.send("relay_cancel", request_id=request_id)
                break
        node.send("relay", request_id=limit + 100, peer=alice, request=protocol.request("attach", job_id=waiting))
        assert _stream_of(node, limit + 100, until="status")[0]["ok"]
        # The link ends: so do its streams (and their threads).
        node.close()
        wait_for(lambda: _threads(cluster.master.pid) <= before + 2, timeout=15,
                 what="the master's stream threads to end with the link (%d threads, %d before)"
                      % (_threads(cluster.master.pid), before))
    finally:
        node.close()
