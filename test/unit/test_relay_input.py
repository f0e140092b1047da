"""Input of a client on a node's host (`srun -i`, `srun --pty` there): the node passes the input
frames of an attach the master granted input on to the master as relay_input, at most a window
of bytes and frames ahead of the master's relay_input_done; the master's end of the stream
(nodelink.RelayStream) gives them to the stream's thread as a local client's connection would.
The messages' limits and what a hostile or confused peer sends: input for an unknown request id,
for a stream not granted input, beyond the window, oversize data, bad window sizes."""

import queue
import shutil
import threading
import time

import pytest

from mgpu import errors, nodelink, protocol, transport
from mgpu.errors import MgpuError

from test_node import cluster, key_files, tcp_connect  # noqa: F401 (fixtures)
from test_node_stream import job_row, linked_node, nothing_of, read_all

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


# --- the messages ---------------------------------------------------------------------------

def relay_input(**fields):
    return protocol.node_message("relay_input", **fields)


def check(message, allowed=protocol.NODE_TO_MASTER):
    return protocol.check_node_message(message, allowed)


def test_a_well_formed_relay_input_and_its_answer():
    data = bytes(range(256)).decode("latin-1")
    assert check(relay_input(request_id=4, data=data, rows=24, cols=80, eof=True, extra=1)) == (
        "relay_input", {"request_id": 4, "data": bytes(range(256)), "rows": 24, "cols": 80, "eof": True})
    assert check(relay_input(request_id=4, data="x" * protocol.MAX_INPUT_DATA))[1]["data"] == b"x" * 65536
    assert check(relay_input(request_id=1, rows=1, cols=protocol.MAX_WINDOW))[1] == {
        "request_id": 1, "rows": 1, "cols": 65535}
    done = protocol.node_message("relay_input_done", request_id=4, frames=2, bytes=10)
    assert check(done, protocol.MASTER_TO_NODE) == ("relay_input_done", {"request_id": 4, "frames": 2, "bytes": 10})


@pytest.mark.parametrize("message, allowed", [
    (relay_input(request_id=1, data="x" * (protocol.MAX_INPUT_DATA + 1)), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, data="\u0100"), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, data=5), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, rows=0, cols=80), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, rows=24, cols=protocol.MAX_WINDOW + 1), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, rows=24), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, cols=80), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, rows=-1, cols=-1), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, rows="24", cols="80"), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, eof=False), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, eof=1), protocol.NODE_TO_MASTER),
    (relay_input(request_id=0, data="x"), protocol.NODE_TO_MASTER),
    (relay_input(data="x"), protocol.NODE_TO_MASTER),
    (relay_input(request_id=1, data="x"), protocol.MASTER_TO_NODE),
    (protocol.node_message("relay_input_done", request_id=1, frames=1, bytes=1), protocol.NODE_TO_MASTER),
    (protocol.node_message("relay_input_done", request_id=1, frames=-1, bytes=1), protocol.MASTER_TO_NODE),
    (protocol.node_message("relay_input_done", request_id=1, frames=1), protocol.MASTER_TO_NODE),
    (protocol.node_message("relay_input_done", request_id=1, frames=1, bytes=True), protocol.MASTER_TO_NODE),
])
def test_malformed_input_messages_are_refused(message, allowed):
    with pytest.raises(MgpuError) as refused:
        check(message, allowed)
    assert refused.value.code in (errors.BAD_REQUEST, errors.INVALID_ARGUMENT)


def test_the_relay_window_is_the_job_input_window():
    # A node holds back no less than the master lets through to a job's host.
    assert protocol.RELAY_INPUT_WINDOW >= protocol.MAX_INPUT_DATA * 2
    assert protocol.MAX_RELAY_INPUT_FRAMES >= 2


# --- the master's end: nodelink.RemoteNodeLink / RelayStream (no socket needed) ---------------

class _NobodyReads:
    sock = None

    def close(self):
        pass


@pytest.fixture
def link():
    lines = []
    link = nodelink.RemoteNodeLink("n1", _NobodyReads(), "127.0.0.1", log=lines.append)
    link.lines = lines
    yield link
    link.dispose()


def sent(link, type_=None):
    return [m for m in (protocol.decode(frame) for frame in link._outbox) if type_ in (None, m["type"])]


def fields(data=None, request_id=1, **more):
    """A relay_input's fields as check_node_message gives them (data as bytes)."""
    if data is not None:
        more["data"] = data
    return dict(more, request_id=request_id)


def test_input_for_an_unknown_request_id_is_ignored(link):
    stream = link.open_stream(1)
    stream.accept_input()
    link.relay_input(fields(b"stray", request_id=2))
    assert not stream.readable(0) and sent(link) == [] and link.lines == []


def test_input_for_a_stream_not_granted_input_is_ignored(link):
    stream = link.open_stream(1)  # an attach without input (or refused it)
    link.relay_input(fields(b"typed"))
    assert not stream.readable(0.05)
    with pytest.raises(MgpuError) as nothing:
        stream.read(0.05)
    assert nothing.value.code == errors.TIMEOUT
    stream.accept_input()  # what came before the grant stays dropped
    assert not stream.readable(0)
    assert sent(link) == [] and link.lines == []


def test_granted_input_is_read_like_a_clients_and_answered_as_it_is_taken(link):
    stream = link.open_stream(7)
    stream.accept_input()
    link.relay_input(fields(b"a\n", request_id=7))
    link.relay_input(fields(request_id=7, rows=30, cols=100))
    link.relay_input(fields(b"\x00\xff", request_id=7, eof=True))
    assert stream.readable(0)
    frames = [protocol.check_input(stream.read(1)) for _ in range(3)]
    assert frames == [{"data": b"a\n", "eof": False, "rows": None, "cols": None},
                      {"data": None, "eof": False, "rows": 30, "cols": 100},
                      {"data": b"\x00\xff", "eof": True, "rows": None, "cols": None}]
    answers = [(m["request_id"], m["frames"], m["bytes"]) for m in sent(link, "relay_input_done")]
    assert answers == [(7, 1, 2), (7, 2, 2), (7, 3, 4)]  # cumulative
    assert not stream.readable(0)


def test_input_waits_wake_on_arrival(link):
    stream = link.open_stream(1)
    stream.accept_input()
    threading.Timer(0.2, link.relay_input, args=(fields(b"late"),)).start()
    started = time.monotonic()
    assert stream.readable(10)
    assert time.monotonic() - started < 5
    assert protocol.check_input(stream.read(1))["data"] == b"late"


def waiting_for_input(link):
    """A stream granted input and a thread in its readable(30): (stream, queue of what it returns)."""
    stream = link.open_stream(1)
    stream.accept_input()
    outcome = queue.Queue()
    threading.Thread(target=lambda: outcome.put(stream.readable(30)), daemon=True).start()
    time.sleep(0.2)
    return stream, outcome


def test_a_job_update_ends_a_wait_for_input_without_input(link):
    stream, outcome = waiting_for_input(link)
    stream.wake()  # what the master's watcher does on each update of the job
    assert outcome.get(timeout=5) is False  # woken, and no input to read
    stream.wake()  # a wake-up before the wait: the wait does not start
    started = time.monotonic()
    assert stream.readable(30) is False and time.monotonic() - started < 5
    assert stream.readable(0.05) is False  # one wake-up, one wait ended
    link.relay_input(fields(b"typed"))
    assert stream.readable(0) and protocol.check_input(stream.read(1))["data"] == b"typed"


@pytest.mark.parametrize("end", ["cancel", "close"])
def test_a_cancelled_stream_or_a_closed_link_ends_the_input(link, end):
    stream = link.open_stream(1)
    stream.accept_input()
    link.relay_input(fields(b"queued"))
    if end == "cancel":
        link.cancel_stream(1)
    else:
        link.close()
    assert stream.readable(0)
    assert protocol.check_input(stream.read(1))["data"] == b"queued"  # what arrived still goes on
    assert stream.read(1) is None
    link.relay_input(fields(b"late"))  # after the end: ignored
    assert stream.read(1) is None


def test_a_thread_waiting_for_input_wakes_when_the_stream_is_cancelled(link):
    _, outcome = waiting_for_input(link)
    link.cancel_stream(1)
    assert outcome.get(timeout=5) is True


def test_input_beyond_the_byte_window_ends_the_streams_input_with_one_line(link):
    stream = link.open_stream(1)
    stream.accept_input()
    chunk = b"x" * protocol.MAX_INPUT_DATA
    for _ in range(protocol.RELAY_INPUT_WINDOW // protocol.MAX_INPUT_DATA):
        link.relay_input(fields(chunk))
    assert link.lines == []
    link.relay_input(fields(b"y"))  # one byte beyond what the node may send unanswered
    assert len(link.lines) == 1 and "more input for stream 1 than the window allows" in link.lines[0]
    assert stream.readable(0)
    with pytest.raises(MgpuError) as refused:
        stream.read(1)
    assert refused.value.code == errors.BAD_REQUEST and "more input than its window allows" in refused.value.message
    link.relay_input(fields(b"more"))  # after that: dropped, said once
    assert len(link.lines) == 1
    assert sent(link, "relay_input_done") == []


def test_input_beyond_the_frame_window_ends_the_streams_input(link):
    stream = link.open_stream(1)
    stream.accept_input()
    for _ in range(protocol.MAX_RELAY_INPUT_FRAMES):
        link.relay_input(fields(request_id=1, rows=24, cols=80))
    assert link.lines == []
    protocol.check_input(stream.read(1))  # one taken: room for one more
    link.relay_input(fields(request_id=1, rows=25, cols=80))
    assert link.lines == []
    link.relay_input(fields(request_id=1, rows=26, cols=80))
    assert len(link.lines) == 1
    with pytest.raises(MgpuError):
        stream.read(1)


# --- the node's side: relaying its client's input (the fake master of test_node.py) -----------

def attach_with_input(node, job_id=5):
    client = transport.connect_unix(node.daemon.socket_path)
    client.send(protocol.request("attach", job_id=job_id, input=True))
    return client


def granted(row=None):
    return protocol.ok(dict(row or job_row("RUNNING"), input=True, input_refused=None))


def granted_attach(node, link):
    """A client's attach with input through `node`, granted by the (test's) master: (client,
    the relay's request id)."""
    client = attach_with_input(node)
    request_id = link.expect("relay")["request_id"]
    link.send("relay_reply", request_id=request_id, reply=granted())
    reply = client.read(10)
    assert reply["ok"] is True and reply["result"]["input"] is True, reply
    return client, request_id


def send_quietly(client, frames):
    """Send input frames from a thread of its own until the connection is closed."""
    try:
        for frame in frames:
            client.send(frame)
    except OSError:
        pass


def relayed_input(link, request_id, timeout=10):
    return link.expect("relay_input", timeout=timeout, request_id=request_id)


@needs_openssl
def test_a_node_relays_submit_stdin_and_the_attachs_input_request_as_they_are(cluster):
    node, link = linked_node(cluster)
    client = transport.connect_unix(node.daemon.socket_path)
    submit = protocol.request("submit", command=["sh"], cwd="/", env={}, interactive=True, stdin="pty")
    client.send(submit)
    relayed = link.expect("relay")
    assert relayed["request"]["stdin"] == "pty"
    link.send("relay_reply", request_id=relayed["request_id"], reply=protocol.ok({"job_id": 5}))
    assert client.read(10) == protocol.ok({"job_id": 5})
    client.close()
    client = attach_with_input(node)
    assert link.expect("relay")["request"] == protocol.request("attach", job_id=5, input=True)
    client.close()


@needs_openssl
def test_granted_input_goes_to_the_master_in_order_and_the_end_follows(cluster):
    node, link = linked_node(cluster)
    client, request_id = granted_attach(node, link)
    client.send(protocol.input_frame(rows=30, cols=100))
    client.send(protocol.input_frame(b"a\nb\n"))
    client.send(protocol.input_frame(b"\x00\xfe", eof=True))
    client.send(protocol.input_frame(b"after the end"))  # dropped: the input has ended
    assert relayed_input(link, request_id) == {"request_id": request_id, "rows": 30, "cols": 100}
    assert relayed_input(link, request_id) == {"request_id": request_id, "data": b"a\nb\n"}
    assert relayed_input(link, request_id) == {"request_id": request_id, "data": b"\x00\xfe", "eof": True}
    assert nothing_of(link, "relay_input", within=0.5)
    link.send("relay_frame", request_id=request_id, frame={"type": "end", "job": job_row("COMPLETED", 0)})
    assert read_all(client) == [{"type": "end", "job": job_row("COMPLETED", 0)}]
    assert nothing_of(link, "relay_cancel", within=0.3)


@needs_openssl
def test_output_still_flows_while_the_window_is_full_and_input_resumes_when_answered(cluster):
    node, link = linked_node(cluster)
    client, request_id = granted_attach(node, link)
    chunk = b"z" * protocol.MAX_INPUT_DATA
    total = 12
    sender = threading.Thread(target=lambda: [client.send(protocol.input_frame(chunk)) for _ in range(total)],
                              daemon=True)
    sender.start()
    window = protocol.RELAY_INPUT_WINDOW // protocol.MAX_INPUT_DATA
    got = [relayed_input(link, request_id) for _ in range(window)]
    assert all(f["data"] == chunk for f in got)
    assert nothing_of(link, "relay_input", within=1.0)  # the window is full: the node waits
    link.send("relay_frame", request_id=request_id, frame={"type": "output", "stream": "stdout", "data": "out\n"})
    assert client.read(10) == {"type": "output", "stream": "stdout", "data": "out\n"}
    taken = 0
    for frames in range(1, total + 1):  # the master takes them one by one
        taken += protocol.MAX_INPUT_DATA
        link.send("relay_input_done", request_id=request_id, frames=frames, bytes=taken)
        if len(got) < total:
            got.append(relayed_input(link, request_id))
        unanswered = len(got) - frames
        assert unanswered * protocol.MAX_INPUT_DATA <= protocol.RELAY_INPUT_WINDOW
    assert len(got) == total
    sender.join(10)
    client.close()
    assert link.expect("relay_cancel", timeout=5) == {"request_id": request_id}


@needs_openssl
def test_input_is_not_read_when_the_master_did_not_grant_it(cluster):
    node, link = linked_node(cluster)
    client = attach_with_input(node)
    request_id = link.expect("relay")["request_id"]
    refused = protocol.ok(dict(job_row("RUNNING"), input=False, input_refused="job 5 has ended"))
    link.send("relay_reply", request_id=request_id, reply=refused)
    assert client.read(10) == refused
    client.send(protocol.input_frame(b"typed anyway"))
    assert nothing_of(link, "relay_input", within=0.5)
    link.send("relay_frame", request_id=request_id, frame={"type": "end", "job": job_row("COMPLETED", 0)})
    assert read_all(client)[-1]["type"] == "end"


@needs_openssl
def test_a_client_that_sends_what_is_not_input_gets_one_line_and_the_stream_is_cancelled(cluster):
    node, link = linked_node(cluster)
    client, request_id = granted_attach(node, link)
    client.send(protocol.request("input", rows=0, cols=80))
    frames = read_all(client)
    assert len(frames) == 1 and frames[0]["ok"] is False and "rows must be from 1 to 65535" in frames[0]["message"]
    assert link.expect("relay_cancel", timeout=5) == {"request_id": request_id}
    assert nothing_of(link, "relay_input", within=0.3)


@needs_openssl
def test_answers_for_unknown_request_ids_are_ignored(cluster):
    node, link = linked_node(cluster)
    link.send("relay_input_done", request_id=4242, frames=10 ** 6, bytes=10 ** 9)
    client, request_id = granted_attach(node, link)
    # An answer claiming more than was sent does not open the window wider.
    link.send("relay_input_done", request_id=request_id, frames=10 ** 6, bytes=10 ** 9)
    chunk = b"q" * protocol.MAX_INPUT_DATA
    sender = threading.Thread(target=send_quietly, args=(client, [protocol.input_frame(chunk)] * 8), daemon=True)
    sender.start()
    window = protocol.RELAY_INPUT_WINDOW // protocol.MAX_INPUT_DATA
    for _ in range(window):
        relayed_input(link, request_id)
    assert nothing_of(link, "relay_input", within=1.0)
    assert not [line for line in node.lines if "link lost" in line], node.lines
    client.close()
    sender.join(10)


@needs_openssl
def test_a_lost_link_ends_an_input_stream_with_one_line_and_drops_its_queued_input(cluster):
    node, link = linked_node(cluster)
    master, _ = cluster
    client, request_id = granted_attach(node, link)
    link.connection.close()
    frames = read_all(client, timeout=20)
    assert len(frames) == 1 and frames[0]["ok"] is False
    assert "the link to the master" in frames[0]["message"] and "was lost" in frames[0]["message"]
    again = master.next_link()
    assert nothing_of(again, "relay_input", within=0.5)
    client.close()


@needs_openssl
def test_a_client_that_goes_away_with_input_held_back_cancels_the_stream(cluster):
    node, link = linked_node(cluster)
    client, request_id = granted_attach(node, link)
    chunk = b"w" * protocol.MAX_INPUT_DATA
    window = protocol.RELAY_INPUT_WINDOW // protocol.MAX_INPUT_DATA
    for _ in range(window):
        client.send(protocol.input_frame(chunk))
    client.send(protocol.input_frame(b"tail"))  # waits, unread, in the connection
    for _ in range(window):
        relayed_input(link, request_id)
    client.close()  # Ctrl+C while the job reads nothing
    assert link.expect("relay_cancel", timeout=10) == {"request_id": request_id}
    assert nothing_of(link, "relay_input", within=0.3)
