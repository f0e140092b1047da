"""A job's input (srun -i, --pty): the limits of the client's input frames and of the node
link's job_input, hostile values refused with one line, and input for an attempt a node does not
run (or that takes no input) dropped."""

import os
import tempfile

import pytest

from mgpu import errors, launcher, protocol
from mgpu.errors import MgpuError
from mgpu.nodeagent import InputChannel, NodeAgent, input_path


def frame(**fields):
    return dict({"v": protocol.VERSION, "type": "input"}, **fields)


def refused(message):
    with pytest.raises(MgpuError) as caught:
        protocol.check_input(message)
    assert "\n" not in caught.value.message
    return caught.value


# -- the client's input frames ----------------------------------------------------------------

def test_an_input_frame_carries_bytes_as_latin1():
    data = bytes(range(256))
    checked = protocol.check_input(protocol.input_frame(data, rows=40, cols=120))
    assert checked == {"data": data, "eof": False, "rows": 40, "cols": 120}
    assert protocol.check_input(protocol.input_frame(eof=True)) == {"data": None, "eof": True, "rows": None,
                                                                   "cols": None}


def test_data_over_the_limit_is_refused():
    assert protocol.check_input(frame(data="x" * protocol.MAX_INPUT_DATA))["data"] == b"x" * protocol.MAX_INPUT_DATA
    error = refused(frame(data="x" * (protocol.MAX_INPUT_DATA + 1)))
    assert error.code == errors.INVALID_ARGUMENT
    assert error.message == "input: data is too long: at most 65536 bytes per frame"


def test_data_that_is_not_bytes_is_refused():
    assert refused(frame(data="\u20ac")).message == (
        "input: data must be bytes as latin-1 text (characters U+0000..U+00FF)")
    assert refused(frame(data=["a"])).message == "input: field 'data' has the wrong type"


@pytest.mark.parametrize("rows, cols", [(0, 80), (24, 0), (65536, 80), (24, 65536), (-1, 80)])
def test_window_sizes_out_of_range_are_refused(rows, cols):
    error = refused(frame(rows=rows, cols=cols))
    assert error.code == errors.INVALID_ARGUMENT
    assert "must be from 1 to 65535" in error.message


def test_window_sizes_of_the_wrong_kind_are_refused():
    assert refused(frame(rows=24)).message == "input: rows and cols come together"
    assert refused(frame(rows=True, cols=80)).message == "input: field 'rows' has the wrong type"
    assert refused(frame(rows=24.0, cols=80)).message == "input: field 'rows' has the wrong type"
    assert refused(frame(rows="24", cols="80")).message == "input: field 'rows' has the wrong type"
    assert protocol.check_input(frame(rows=65535, cols=1))["rows"] == 65535


def test_eof_is_true_or_absent():
    assert refused(frame(eof=False)).message == "input: eof is true or absent"
    assert refused(frame(eof="yes")).message == "input: field 'eof' has the wrong type"


def test_frames_that_are_not_input_are_refused():
    assert refused({"v": protocol.VERSION, "type": "cancel", "ids": [1]}).message == (
        "input: expected an input frame after the attach, not 'cancel'")
    assert refused({"type": "input"}).code == errors.VERSION_MISMATCH
    assert refused(["input"]).code == errors.BAD_REQUEST


def test_submit_and_attach_declare_the_input():
    base = {"v": protocol.VERSION, "type": "submit", "command": ["sh"], "cwd": "/", "env": {}}
    for mode in ("pipe", "pty"):
        assert protocol.check_request(dict(base, stdin=mode))[1]["stdin"] == mode
    with pytest.raises(MgpuError) as caught:
        protocol.check_request(dict(base, stdin="tty"))
    assert caught.value.message == "submit: stdin must be one of pipe, pty, not 'tty'"
    with pytest.raises(MgpuError):
        protocol.check_request(dict(base, stdin=1))
    attach = {"v": protocol.VERSION, "type": "attach", "job_id": 3, "input": True}
    assert protocol.check_request(attach)[1]["input"] is True
    with pytest.raises(MgpuError):
        protocol.check_request(dict(attach, input="yes"))


# -- the node link ----------------------------------------------------------------------------

def node_input(**fields):
    return protocol.node_message("job_input", **dict({"job_id": 4, "attempt": 2}, **fields))


def test_job_input_on_the_node_link_is_checked():
    _, fields = protocol.check_node_message(node_input(data="\x00\xff", rows=10, cols=20), protocol.MASTER_TO_NODE)
    assert fields == {"job_id": 4, "attempt": 2, "data": b"\x00\xff", "rows": 10, "cols": 20}
    for bad in (node_input(data="x" * (protocol.MAX_INPUT_DATA + 1)), node_input(data="\u0100"),
                node_input(rows=0, cols=5), node_input(rows=5), node_input(attempt=0), node_input(job_id="4"),
                node_input(eof="true"), node_input(hangup=1)):
        with pytest.raises(MgpuError) as caught:
            protocol.check_node_message(bad, protocol.MASTER_TO_NODE)
        assert "\n" not in caught.value.message
    with pytest.raises(MgpuError):  # only the master sends input
        protocol.check_node_message(node_input(data="x"), protocol.NODE_TO_MASTER)


def test_job_input_done_goes_from_node_to_master():
    message = protocol.node_message("job_input_done", job_id=4, attempt=2, written=10, closed=True)
    assert protocol.check_node_message(message, protocol.NODE_TO_MASTER)[1]["written"] == 10
    with pytest.raises(MgpuError):
        protocol.check_node_message(dict(message, written=-1), protocol.NODE_TO_MASTER)


# -- the node agent ---------------------------------------------------------------------------

class _Inventory:
    kind = "fake"

    def gpus(self):
        return []

    def close(self):
        pass


@pytest.fixture
def agent():
    state = tempfile.mkdtemp(prefix="mgpu-input-")
    agent = NodeAgent("n1", _Inventory(), state, lambda event: None)
    yield agent
    agent.stop()


def test_input_for_an_unknown_job_or_attempt_is_dropped(agent):
    assert agent.send_input(7, 1, b"hello") == "closed"
    from mgpu.nodeagent import _Supervised
    agent._supervised[7] = _Supervised(2)
    assert agent.send_input(7, 1, b"hello") == "closed"   # an older attempt
    assert agent.send_input(7, 2, b"hello") == "closed"   # the current one takes no input (no FIFO)
    agent.close_input(7, 2)  # nothing open: nothing to do


def test_input_reaches_the_fifo_as_records_and_its_end_closes_it(agent):
    from mgpu.nodeagent import _Supervised
    agent._supervised[8] = _Supervised(1)
    fifo = input_path(agent.record_path(8, 1))
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert agent.send_input(8, 1, b"ab", rows=3, cols=4) == "ok"
        assert agent.send_input(8, 1, eof=True) == "ok"
        assert agent.send_input(8, 1, b"late") == "closed"  # the input has ended: never reopened
        data = b""
        while not data.endswith(launcher.INPUT_EOF + b"\0\0"):
            try:
                data += os.read(reader, 4096)
            except BlockingIOError:
                pass
        assert data == (launcher.INPUT_OPEN + b"\0\0" + launcher.INPUT_WINDOW + b"\0\x04\0\x03\0\x04"
                        + launcher.INPUT_DATA + b"\0\x02ab" + launcher.INPUT_EOF + b"\0\0")
    finally:
        os.close(reader)


def test_an_input_channel_holds_a_bounded_backlog():
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        channel = InputChannel(write)  # not started: nothing is written, the backlog only grows
        chunk = b"x" * protocol.MAX_INPUT_DATA
        results = [channel.put(chunk) for _ in range(16)]
        assert results.count("ok") * len(chunk) <= 256 * 1024 + len(chunk)
        assert results[-1] == "busy"
        assert channel.put(eof=True) == "ok"
        assert channel.put(b"more") == "closed"
    finally:
        os.close(read)
        os.close(write)
