"""`srun -i` from a node's host: the node in process against a fake master on loopback
(test_node.py's). The node relays the attach, forwards the stream's relay_frames in order to its
local client until `end`, tells the master to stop (relay_cancel) when the client goes away,
falls silent or cannot keep up, gives its client one error line when the link is lost, drops
frames for request ids it does not follow, and streams at most MAX_RELAY_STREAMS jobs at once.
At the end, the master's side of such streams on a RemoteNodeLink: the limit per link and the
flow control that keeps a slow link from growing the master's memory."""

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from mgpu import errors, node as node_module, nodelink, protocol, transport
from mgpu.errors import MgpuError

from test_node import SRC, cluster, key_files, tcp_connect  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def job_row(state, exit_code=None, reason=None):
    """A job row as the master's stream frames carry it (the fields srun reads)."""
    return {"id": 5, "state": state, "position": 1 if state == "PENDING" else None, "node": "n2",
            "gpu_ids": [] if state == "PENDING" else [0], "reason": reason, "exit_code": exit_code,
            "user": "someone", "started": state != "PENDING"}


def linked_node(cluster):
    """The node n1 registered with the fake master: (node, link)."""
    master, start = cluster
    node = start()
    link = master.next_link()
    deadline = time.monotonic() + 10
    while not node.daemon.connected.is_set():
        assert time.monotonic() < deadline, "the node did not finish registering"
        time.sleep(0.02)
    return node, link


def attach(node, job_id=5):
    """A local client that sent an attach to the node (a raw connection)."""
    client = transport.connect_unix(node.daemon.socket_path)
    client.send(protocol.request("attach", job_id=job_id))
    return client


def read_all(client, timeout=10):
    """Every frame the node sends the client until it closes the connection."""
    frames = []
    while True:
        frame = client.read(timeout)
        if frame is None:
            return frames
        frames.append(frame)


def nothing_of(link, type_, within=1.0):
    """True when no message of `type_` arrives on the link within `within` seconds."""
    try:
        link.expect(type_, timeout=within)
    except AssertionError:
        return True
    return False


class Srun:
    """`mgpu srun -i` run as a process against the node's socket; its stderr lines are collected
    as they come."""

    def __init__(self, node, *args):
        env = dict(os.environ, PYTHONPATH=SRC, MGPU_SOCKET=node.daemon.socket_path)
        self.process = subprocess.Popen([sys.executable, "-m", "mgpu", "srun", "-i", *args], env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.lines = queue.Queue()
        self.stderr = []
        self.stdout = []
        threading.Thread(target=self._collect, args=(self.process.stderr, self.stderr, self.lines), daemon=True).start()
        threading.Thread(target=self._collect, args=(self.process.stdout, self.stdout, None), daemon=True).start()

    @staticmethod
    def _collect(pipe, into, lines):
        for line in pipe:
            into.append(line)
            if lines is not None:
                lines.put(line)

    def wait_line(self, text, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("srun wrote no line with %r (stderr %r)" % (text, self.stderr)) from None
            if text in line:
                return line

    def finish(self, timeout=30):
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("srun did not end; stderr %r" % self.stderr) from None
        time.sleep(0.1)  # the collecting threads read what is left
        return code, "".join(self.stdout), "".join(self.stderr)


def submitted_and_attached(link, job_id=5):
    """Answer srun's relayed submit; the request id of the attach that follows."""
    submit = link.expect("relay")
    assert submit["request"]["type"] == "submit" and submit["request"]["interactive"] is True
    link.send("relay_reply", request_id=submit["request_id"], reply=protocol.ok({"job_id": job_id}))
    attach = link.expect("relay")
    assert attach["request"]["type"] == "attach" and attach["request"]["job_id"] == job_id
    return attach["request_id"]


def test_frames_reach_srun_in_order_until_end_and_it_exits_with_the_code(cluster):
    node, link = linked_node(cluster)
    srun = Srun(node, "--gpus", "0", "--", "sh", "-c", "echo one; sleep 1; echo two; exit 7")
    request_id = submitted_and_attached(link)
    link.send("relay_reply", request_id=request_id, reply=protocol.ok(job_row("PENDING")))
    frames = [{"type": "status", "job": job_row("PENDING")},
              {"type": "status", "job": job_row("RUNNING")},
              {"type": "output", "stream": "stdout", "data": "one\n"},
              {"type": "alive"},
              {"type": "output", "stream": "stderr", "data": "warned\n"},
              {"type": "output", "stream": "stdout", "data": "two\n"},
              {"type": "end", "job": job_row("FAILED", exit_code=7, reason="exit code 7")}]
    for frame in frames:
        link.send("relay_frame", request_id=request_id, frame=frame)
    code, out, err = srun.finish()
    assert code == 7, err
    assert out == "one\ntwo\n"
    assert err.splitlines() == ["mgpu: job 5 queued (position 1): waiting", "mgpu: job 5 running on n2, GPUs 0",
                                "warned"]
    # The master ended the stream: nothing to cancel, and a late frame for it is dropped.
    link.send("relay_frame", request_id=request_id, frame={"type": "alive"})
    assert nothing_of(link, "relay_cancel")


def test_a_raw_client_gets_the_reply_then_every_frame_in_order(cluster):
    node, link = linked_node(cluster)
    client = attach(node)
    request_id = link.expect("relay")["request_id"]
    link.send("relay_reply", request_id=request_id, reply=protocol.ok(job_row("RUNNING")))
    sent = [{"type": "output", "stream": "stdout", "data": "line %d\n" % i} for i in range(200)]
    sent.append({"type": "end", "job": job_row("COMPLETED", exit_code=0)})
    for frame in sent:
        link.send("relay_frame", request_id=request_id, frame=frame)
    got = read_all(client)
    assert got[0] == protocol.ok(job_row("RUNNING"))
    assert got[1:] == sent
    client.close()


def test_srun_detached_with_ctrl_c_makes_the_node_cancel_the_stream(cluster):
    node, link = linked_node(cluster)
    srun = Srun(node, "--gpus", "0", "--", "sleep", "100")
    request_id = submitted_and_attached(link)
    link.send("relay_reply", request_id=request_id, reply=protocol.ok(job_row("PENDING")))
    link.send("relay_frame", request_id=request_id, frame={"type": "status", "job": job_row("PENDING")})
    srun.wait_line("job 5 queued")
    srun.process.send_signal(signal.SIGINT)
    code, _, err = srun.finish()
    assert code == 130 and "detached from job 5" in err
    assert link.expect("relay_cancel", timeout=5) == {"request_id": request_id}
    # Frames the master sent before it stopped are dropped; the link carries on.
    link.send("relay_frame", request_id=request_id, frame={"type": "alive"})
    client = attach(node, job_id=6)
    assert link.expect("relay")["request"] == protocol.request("attach", job_id=6)
    client.close()


def test_a_client_that_closes_its_connection_cancels_the_stream(cluster):
    node, link = linked_node(cluster)
    client = attach(node)
    request_id = link.expect("relay")["request_id"]
    link.send("relay_reply", request_id=request_id, reply=protocol.ok(job_row("RUNNING")))
    link.send("relay_frame", request_id=request_id, frame={"type": "status", "job": job_row("RUNNING")})
    assert client.read(10)["ok"] is True
    assert client.read(10)["type"] == "status"
    client.close()
    assert link.expect("relay_cancel", timeout=5) == {"request_id": request_id}
    assert nothing_of(link, "relay_cancel")  # once


def test_a_lost_link_ends_srun_with_one_error_line_and_nothing_is_resent(cluster):
    node, link = linked_node(cluster)
    master, _ = cluster
    srun = Srun(node, "--gpus", "0", "--", "sleep", "100")
    request_id = submitted_and_attached(link)
    link.send("relay_reply", request_id=request_id, reply=protocol.ok(job_row("RUNNING")))
    link.send("relay_frame", request_id=request_id, frame={"type": "status", "job": job_row("RUNNING")})
    srun.wait_line("job 5 running")
    link.connection.close()
    code, _, err = srun.finish()
    assert code == 1
    assert err.splitlines()[-1] == ("mgpu: the link to the master 127.0.0.1:%d was lost; try again shortly"
                                    % master.port)
    assert "Traceback" not in err and len(err.splitlines()) == 2, err
    # The node joins again; the lost link's relays and cancels are not sent on the new one.
    again = master.next_link()
    assert nothing_of(again, "relay") and nothing_of(again, "relay_cancel", within=0.2)
    # Frames of the old stream's id are dropped on the new link; relaying still works.
    again.send("relay_frame", request_id=request_id, frame={"type": "alive"})
    client = attach(node, job_id=8)
    assert again.expect("relay")["request"]["job_id"] == 8
    client.close()


def test_frames_and_replies_for_unknown_request_ids_are_dropped(cluster):
    node, link = linked_node(cluster)
    link.send("relay_frame", request_id=777, frame={"type": "output", "stream": "stdout", "data": "x"})
    link.send("relay_frame", request_id=10 ** 9, frame={"type": "end", "job": {}})
    link.send("relay_reply", request_id=778, reply=protocol.ok(None))
    # The same link still carries a stream, and nothing of the above reaches its client.
    client = attach(node)
    request_id = link.expect("relay")["request_id"]
    link.send("relay_reply", request_id=request_id, reply=protocol.ok(job_row("RUNNING")))
    link.send("relay_frame", request_id=request_id, frame={"type": "end", "job": job_row("COMPLETED", 0)})
    assert [f.get("type", f.get("ok")) for f in read_all(client)] == [True, "end"]
    assert not [line for line in node.lines if "link lost" in line], node.lines
    assert nothing_of(link, "relay_cancel", within=0.3)


def test_at_most_max_relay_streams_and_the_next_one_gets_one_line(cluster, monkeypatch):
    monkeypatch.setattr(protocol, "MAX_RELAY_STREAMS", 2)
    node, link = linked_node(cluster)
    first, second = attach(node, 1), attach(node, 2)
    assert {link.expect("relay")["request"]["job_id"] for _ in range(2)} == {1, 2}
    third = attach(node, 3)
    assert read_all(third) == [protocol.error(errors.UNAVAILABLE, "node n1 already streams 2 jobs (srun -i), "
                                              "the most it may; try again later")]
    assert nothing_of(link, "relay", within=0.5)
    first.close()
    link.expect("relay_cancel", timeout=5)
    fourth = attach(node, 4)
    assert link.expect("relay")["request"]["job_id"] == 4
    for client in (second, third, fourth):
        client.close()


def test_a_client_that_does_not_read_loses_its_stream_with_one_line(cluster, monkeypatch):
    monkeypatch.setattr(node_module, "MAX_STREAM_BACKLOG", 64 * 1024)
    node, link = linked_node(cluster)
    client = attach(node)
    request_id = link.expect("relay")["request_id"]
    link.send("relay_reply", request_id=request_id, reply=protocol.ok(job_row("RUNNING")))
    assert client.read(10)["ok"] is True  # then it reads no more
    chunk = "x" * 60000 + "\n"
    for _ in range(60):  # far more than the client's socket and the stream's backlog hold
        link.send("relay_frame", request_id=request_id, frame={"type": "output", "stream": "stdout", "data": chunk})
    assert link.expect("relay_cancel", timeout=10) == {"request_id": request_id}
    frames = read_all(client, timeout=30)
    failures = [f for f in frames if f.get("ok") is False]
    assert len(failures) == 1 and frames[-1] is failures[0]
    assert "faster than it was read" in failures[0]["message"]
    assert all(f == {"type": "output", "stream": "stdout", "data": chunk} for f in frames[:-1])
    assert len(frames) - 1 < 60
    assert nothing_of(link, "relay_cancel", within=0.3)  # once
    client.close()


def test_a_stream_that_falls_silent_ends_with_one_line_and_a_cancel(cluster, monkeypatch):
    monkeypatch.setattr(node_module, "STREAM_IDLE_TIMEOUT", 1.0)
    node, link = linked_node(cluster)
    client = attach(node)
    request_id = link.expect("relay")["request_id"]
    link.send("relay_reply", request_id=request_id, reply=protocol.ok(job_row("RUNNING")))
    frames = read_all(client)
    assert frames[0]["ok"] is True and len(frames) == 2
    assert frames[1]["ok"] is False and frames[1]["error"] == errors.TIMEOUT
    assert "nothing about this job for 1 s" in frames[1]["message"]
    assert link.expect("relay_cancel", timeout=5) == {"request_id": request_id}
    client.close()


def test_an_attach_the_master_refuses_reaches_the_client_and_is_not_cancelled(cluster):
    node, link = linked_node(cluster)
    client = attach(node, 9)
    request_id = link.expect("relay")["request_id"]
    refusal = protocol.error(errors.PERMISSION_DENIED, "permission denied: job 9 belongs to someone")
    link.send("relay_reply", request_id=request_id, reply=refusal)
    assert read_all(client) == [refusal]
    assert nothing_of(link, "relay_cancel")
    client.close()


@pytest.mark.parametrize("message, allowed", [
    ({"type": "relay_cancel"}, protocol.NODE_TO_MASTER),
    ({"type": "relay_cancel", "request_id": 0}, protocol.NODE_TO_MASTER),
    ({"type": "relay_cancel", "request_id": "1"}, protocol.NODE_TO_MASTER),
    ({"type": "relay_cancel", "request_id": 1}, protocol.MASTER_TO_NODE),
    ({"type": "relay_frame", "request_id": 1, "frame": "end"}, protocol.MASTER_TO_NODE),
    ({"type": "relay_frame", "request_id": 1}, protocol.MASTER_TO_NODE),
    ({"type": "relay_frame", "request_id": True, "frame": {}}, protocol.MASTER_TO_NODE),
    ({"type": "relay_frame", "request_id": 1, "frame": {}}, protocol.NODE_TO_MASTER),
])
def test_malformed_stream_messages_are_refused(message, allowed):
    with pytest.raises(MgpuError) as refused:
        protocol.check_node_message(dict(message, v=protocol.VERSION), allowed)
    assert refused.value.code == errors.BAD_REQUEST


def test_well_formed_stream_messages_keep_only_their_fields():
    assert protocol.check_node_message(protocol.node_message("relay_cancel", request_id=3, extra=1),
                                       protocol.NODE_TO_MASTER) == ("relay_cancel", {"request_id": 3})
    assert protocol.check_node_message(protocol.node_message("relay_frame", request_id=3, frame={"type": "alive"}),
                                       protocol.MASTER_TO_NODE) == ("relay_frame", {"request_id": 3,
                                                                                    "frame": {"type": "alive"}})


# --- the master's end of relayed streams (nodelink.RemoteNodeLink, no socket needed) ----------

class _NobodyReads:
    """A link's connection whose outbox is never sent: serve() does not run."""
    sock = None

    def close(self):
        pass


@pytest.fixture
def unsent_link():
    link = nodelink.RemoteNodeLink("n1", _NobodyReads(), "127.0.0.1", log=lambda *lines: None)
    yield link
    link.dispose()


def queued(link):
    return [protocol.decode(frame) for frame in link._outbox]


def test_a_link_opens_at_most_max_relay_streams(unsent_link, monkeypatch):
    monkeypatch.setattr(protocol, "MAX_RELAY_STREAMS", 3)
    streams = [unsent_link.open_stream(i) for i in (1, 2, 3)]
    assert all(streams) and unsent_link.open_stream(4) is None
    assert unsent_link.open_stream(1) is None  # an id in use
    unsent_link.cancel_stream(99)  # unknown: ignored
    assert unsent_link.open_stream(4) is None
    unsent_link.cancel_stream(2)
    assert streams[1].peer_closed() and not streams[0].peer_closed()
    assert unsent_link.open_stream(4) is not None
    unsent_link.close()
    assert all(stream.peer_closed() for stream in streams) and unsent_link.open_stream(5) is None


def test_a_stream_waits_for_room_in_the_outbox_then_gives_up_and_says_so(unsent_link, monkeypatch):
    monkeypatch.setattr(nodelink, "STREAM_OUTBOX_BYTES", 10_000)
    monkeypatch.setattr(nodelink, "STREAM_SEND_TIMEOUT", 0.5)
    stream = unsent_link.open_stream(1)
    frame = {"type": "output", "stream": "stdout", "data": "x" * 4000}
    stream.send(frame)
    stream.send(frame)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        stream.send(frame)  # a third would pass the bound: it waits, then gives up
    assert time.monotonic() - started >= 0.5
    assert sum(len(f) for f in unsent_link._outbox) <= 10_000
    stream.close()
    last = queued(unsent_link)[-1]
    assert (last["type"], last["request_id"], last["frame"]["ok"]) == ("relay_frame", 1, False)
    assert "the link to node n1 stayed full for 0.5 s" in last["frame"]["message"]


@pytest.mark.parametrize("end", ["cancel", "close"])
def test_a_waiting_stream_ends_at_once_when_cancelled_or_its_link_closes(unsent_link, monkeypatch, end):
    monkeypatch.setattr(nodelink, "STREAM_OUTBOX_BYTES", 10_000)
    stream = unsent_link.open_stream(1)
    frame = {"type": "output", "stream": "stdout", "data": "x" * 6000}
    stream.send(frame)
    outcome = queue.Queue()

    def send():
        try:
            stream.send(frame)
            outcome.put("sent")
        except ConnectionError:
            outcome.put("ended")

    threading.Thread(target=send, daemon=True).start()
    time.sleep(0.3)
    assert outcome.empty()  # waiting for room
    if end == "cancel":
        unsent_link.cancel_stream(1)
    else:
        unsent_link.close()
    assert outcome.get(timeout=2) == "ended"
    stream.close()
    assert [m["type"] for m in queued(unsent_link)] == ["relay_frame"]  # nothing said after a cancel
