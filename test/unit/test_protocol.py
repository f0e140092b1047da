"""The wire protocol pinned: framing (one JSON object per line, UTF-8), the size limit, request
validation with stable error codes; and transport.Connection's framed, timed reads over a real
socket pair."""

import json
import socket
import threading
import time

import pytest

from mgpu import errors, protocol, transport
from mgpu.errors import MgpuError


def code_of(raised):
    assert isinstance(raised.value, MgpuError), raised.value
    return raised.value.code


# ---------------------------------------------------------------------------------------------
# Framing


def test_encode_is_one_json_object_and_one_newline_in_utf8():
    message = {"type": "submit", "text": "héllo ✓", "multi": "line1\nline2", "n": 3}
    frame = protocol.encode(message)
    assert isinstance(frame, bytes)
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert "héllo ✓".encode("utf-8") in frame  # not \u-escaped
    assert json.loads(frame.decode("utf-8")) == message
    assert protocol.decode(frame) == message


def test_decode_accepts_a_frame_without_its_newline_and_with_whitespace():
    assert protocol.decode(b'{"a":1}') == {"a": 1}
    assert protocol.decode(b' {"a": [1, 2]} \n') == {"a": [1, 2]}


@pytest.mark.parametrize("frame", [
    b'{"a":', b"{'a': 1}\n", b"nonsense\n", b"", b"\n", b'{"a":1}{"b":2}\n',  # malformed JSON
    b"[1, 2]\n", b'"text"\n', b"42\n", b"null\n",                             # not an object
    b'{"a":"\xff\xfe"}\n', b"\xc3\x28\n",                                     # not UTF-8
])
def test_decode_refuses_anything_but_a_json_object(frame):
    with pytest.raises(MgpuError) as raised:
        protocol.decode(frame)
    assert code_of(raised) == errors.BAD_REQUEST
    assert "\n" not in raised.value.message


def test_decode_refuses_deeply_nested_json_as_a_bad_request():
    with pytest.raises(MgpuError) as raised:
        protocol.decode(b"[" * 100000 + b"\n")  # 100 kB: well inside the frame limit
    assert code_of(raised) == errors.BAD_REQUEST


@pytest.fixture
def small_limit(monkeypatch):
    """Frame limits of 1000 bytes, so that oversize messages are cheap to build."""
    monkeypatch.setattr(protocol, "MAX_FRAME", 1000)
    monkeypatch.setattr(protocol, "MAX_REPLY", 1000, raising=False)
    return 1000


def test_encode_refuses_an_oversize_message(small_limit):
    overhead = len(protocol.encode({"x": ""}))
    exactly = {"x": "a" * (small_limit - overhead)}
    assert len(protocol.encode(exactly)) == small_limit  # the limit counts the newline, inclusive
    with pytest.raises(MgpuError) as raised:
        protocol.encode({"x": "a" * (small_limit - overhead + 1)})
    assert code_of(raised) == errors.TOO_LARGE
    assert str(small_limit) in raised.value.message


def test_the_limits_are_sane():
    assert protocol.MAX_FRAME >= 1 << 16
    assert getattr(protocol, "MAX_REPLY", protocol.MAX_FRAME) >= protocol.MAX_FRAME


def test_replies():
    assert protocol.ok({"a": 1}) == {"ok": True, "result": {"a": 1}}
    assert protocol.error(errors.NOT_FOUND, "no such job 3") == {
        "ok": False, "error": "not_found", "message": "no such job 3"}
    assert protocol.error_from(MgpuError(errors.TIMEOUT, "slow")) == {
        "ok": False, "error": "timeout", "message": "slow"}
    assert protocol.request("ping") == {"v": protocol.VERSION, "type": "ping"}


def test_raise_for_returns_the_result_or_raises_the_error():
    assert protocol.raise_for({"ok": True, "result": [1]}) == [1]
    assert protocol.raise_for({"ok": True}) is None
    with pytest.raises(MgpuError) as raised:
        protocol.raise_for({"ok": False, "error": errors.PERMISSION_DENIED, "message": "not yours"})
    assert (raised.value.code, raised.value.message, str(raised.value)) == (
        errors.PERMISSION_DENIED, "not yours", "not yours")
    with pytest.raises(MgpuError) as raised:
        protocol.raise_for({"ok": False})
    assert raised.value.code == errors.INTERNAL


@pytest.mark.parametrize("reply", [None, [], "ok", {"result": 1}])
def test_raise_for_refuses_a_malformed_reply(reply):
    with pytest.raises(MgpuError) as raised:
        protocol.raise_for(reply)
    assert code_of(raised) == errors.BAD_REQUEST


# ---------------------------------------------------------------------------------------------
# Requests


def submit(**fields):
    base = {"command": ["python", "train.py"], "cwd": "/home/alice", "env": {"A": "1"}}
    base.update(fields)
    return protocol.request("submit", **base)


def check_fails(message, code):
    with pytest.raises(MgpuError) as raised:
        protocol.check_request(message)
    assert code_of(raised) == code, raised.value.message
    assert "\n" not in raised.value.message
    return raised.value.message


def test_a_well_formed_request_gives_its_type_and_known_fields_only():
    type_, fields = protocol.check_request(submit(gpus=2, mem_mb=1000, requeue=True, priority=-3,
                                                  surprise="ignored"))
    assert type_ == "submit"
    assert fields == {"command": ["python", "train.py"], "cwd": "/home/alice", "env": {"A": "1"},
                      "gpus": 2, "mem_mb": 1000, "requeue": True, "priority": -3}
    assert protocol.check_request(protocol.request("ping")) == ("ping", {})
    assert protocol.check_request(protocol.request("cancel", ids=[1, 2])) == ("cancel", {"ids": [1, 2]})


@pytest.mark.parametrize("version", [0, 2, "1", None, 1.5])
def test_a_version_mismatch_names_both_versions(version):
    message = dict(protocol.request("ping"), v=version)
    if version is None:
        del message["v"]
    text = check_fails(message, errors.VERSION_MISMATCH)
    assert str(protocol.VERSION) in text and str(version) in text


@pytest.mark.parametrize("type_", ["reboot", "", None, "_submit", "__class__"])
def test_unknown_types_are_refused(type_):
    message = {"v": protocol.VERSION}
    if type_ is not None:
        message["type"] = type_
    check_fails(message, errors.UNKNOWN_TYPE)


@pytest.mark.parametrize("missing", ["command", "cwd", "env"])
def test_missing_required_fields_are_named(missing):
    message = submit()
    del message[missing]
    assert missing in check_fails(message, errors.BAD_REQUEST)


@pytest.mark.parametrize("message", [
    submit(command="python train.py"), submit(command=[]), submit(command=["a", 1]),
    submit(cwd=5), submit(cwd=None), submit(env=[]), submit(env={"A": 1}), submit(env={"A": None}),
    submit(gpus="2"), submit(gpus=None), submit(gpus=1.0), submit(mem_mb="1000"),
    submit(gpu_ids="0,1"), submit(gpu_ids=[0, "1"]), submit(gpu_ids=[-1]), submit(gpu_ids=[1.0]),
    submit(requeue="yes"), submit(requeue=1), submit(name=3), submit(priority=1.5),
    protocol.request("cancel", ids=["1"]), protocol.request("cancel", ids=5),
    protocol.request("queue", all="yes"), protocol.request("queue", state=["RUNNING"]),
    protocol.request("queue", brief="yes"), protocol.request("queue", brief=1),
    protocol.request("attach"), protocol.request("attach", job_id="3"),
], ids=lambda m: json.dumps({k: v for k, v in m.items() if k not in ("v", "cwd", "env", "command")}
                            or m)[:60])
def test_ill_typed_fields_are_bad_requests(message):
    check_fails(message, errors.BAD_REQUEST)


@pytest.mark.parametrize("message", [
    submit(gpus=True), submit(mem_mb=True), submit(time_limit=True), submit(priority=False),
    submit(gpu_ids=[True]), submit(umask=True),
    protocol.request("cancel", ids=[True]), protocol.request("attach", job_id=True),
], ids=lambda m: json.dumps({k: v for k, v in m.items() if k not in ("v", "cwd", "env", "command")})[:60])
def test_a_bool_is_not_an_int(message):
    check_fails(message, errors.BAD_REQUEST)


@pytest.mark.parametrize("field,value", [("gpus", -1), ("mem_mb", 0), ("time_limit", 0),
                                         ("time_limit", -60), ("warn_seconds", 0)])
def test_out_of_range_numbers_are_invalid_arguments(field, value):
    text = check_fails(submit(**{field: value}), errors.INVALID_ARGUMENT)
    assert field in text


def test_attach_takes_follow_and_one_of_its_output_streams():
    attach = lambda **fields: protocol.request("attach", job_id=5, **fields)  # noqa: E731
    assert protocol.check_request(attach(follow=False, stream="stderr"))[1] == {
        "job_id": 5, "follow": False, "stream": "stderr"}
    assert protocol.check_request(attach(stream="stdout"))[1]["stream"] == "stdout"
    text = check_fails(attach(stream="both"), errors.INVALID_ARGUMENT)
    assert text == "attach: stream must be one of stdout, stderr"
    check_fails(attach(stream="x" * 17), errors.INVALID_ARGUMENT)   # over its 16 characters
    check_fails(attach(stream="/etc/shadow"), errors.INVALID_ARGUMENT)
    for bad in ({"follow": 1}, {"follow": "yes"}, {"stream": 1}, {"stream": ["stdout"]}):
        check_fails(attach(**bad), errors.BAD_REQUEST)


def test_zero_gpus_is_a_valid_request():
    assert protocol.check_request(submit(gpus=0))[1]["gpus"] == 0


@pytest.mark.parametrize("fields", [
    {"command": ["python", "a\0b"]}, {"cwd": "/home/alice\0/x"}, {"name": "n\0"},
    {"output": "/tmp/o\0"}, {"error": "/tmp/e\0"}, {"env_setup": "module load\0 cuda"},
])
def test_nul_bytes_are_refused(fields):
    text = check_fails(submit(**fields), errors.BAD_REQUEST)
    assert "NUL" in text


@pytest.mark.parametrize("env", [{"A": "x\0y"}, {"A\0B": "x"}])
def test_nul_bytes_in_the_environment_are_refused(env):
    check_fails(submit(env=env), errors.BAD_REQUEST)


# ---------------------------------------------------------------------------------------------
# transport.Connection over a real socket pair


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    connection = transport.Connection(ours)
    yield connection, theirs
    connection.close()
    theirs.close()


def test_wake_ends_a_wait_for_the_clients_next_frame(pair):
    connection, theirs = pair
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(connection.readable(30)), daemon=True)
    waiter.start()
    time.sleep(0.2)
    connection.wake()  # what the master's watcher does on each update of the job
    waiter.join(5)
    assert outcome == [False]  # woken, and nothing from the client
    connection.wake()  # a wake-up before the wait: the wait does not start
    started = time.monotonic()
    assert connection.readable(30) is False and time.monotonic() - started < 5
    assert connection.readable(0.05) is False  # one wake-up, one wait ended
    theirs.sendall(b'{"type":"input"}\n')
    assert connection.readable(5) is True
    connection.close()
    connection.wake()  # after close: nothing (its pipe is gone, no descriptor is written)


def send_later(sock, pieces, gap=0.01):
    """Send `pieces` from a thread, `gap` seconds apart (the reader must reassemble them)."""
    def run():
        try:
            for piece in pieces:
                time.sleep(gap)
                sock.sendall(piece)
        except OSError:
            pass  # the reader gave up and closed: fine

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_read_reassembles_messages_split_across_sends(pair):
    connection, peer = pair
    thread = send_later(peer, [b'{"type":', b'"ping","n"', b':1}\n{"n":2}', b'\n{"n"', b':3}\n'])
    assert connection.read(2.0) == {"type": "ping", "n": 1}
    assert connection.read(2.0) == {"n": 2}
    assert connection.read(2.0) == {"n": 3}
    thread.join(2.0)


def test_read_returns_each_message_of_one_chunk_in_turn(pair):
    connection, peer = pair
    peer.sendall(protocol.encode({"n": 1}) + protocol.encode({"n": 2}))
    peer.close()
    assert connection.read(1.0) == {"n": 1}
    assert connection.read(1.0) == {"n": 2}
    assert connection.read(1.0) is None


def test_send_and_read_round_trip(pair):
    connection, peer = pair
    other = transport.Connection(peer)
    connection.send({"type": "ping", "text": "ünïcode"})
    assert other.read(1.0) == {"type": "ping", "text": "ünïcode"}


def test_read_returns_none_at_a_clean_end_of_stream(pair):
    connection, peer = pair
    peer.close()
    assert connection.read(1.0) is None


def test_read_raises_on_a_frame_cut_midway(pair):
    connection, peer = pair
    peer.sendall(b'{"type":"pi')
    peer.close()
    with pytest.raises(MgpuError) as raised:
        connection.read(1.0)
    assert code_of(raised) == errors.BAD_REQUEST


def test_read_raises_on_a_malformed_frame(pair):
    connection, peer = pair
    peer.sendall(b"hello\n")
    with pytest.raises(MgpuError) as raised:
        connection.read(1.0)
    assert code_of(raised) == errors.BAD_REQUEST


def test_read_refuses_a_frame_over_the_limit_without_a_newline(pair):
    connection, peer = pair
    thread = send_later(peer, [b"x" * 65536] * (protocol.MAX_FRAME // 65536 + 2), gap=0)
    started = time.monotonic()
    with pytest.raises(MgpuError) as raised:
        connection.read(5.0)
    assert code_of(raised) == errors.TOO_LARGE
    assert time.monotonic() - started < 3.0
    connection.close()
    thread.join(2.0)


def test_read_times_out_when_nothing_arrives(pair):
    connection, peer = pair
    started = time.monotonic()
    with pytest.raises(MgpuError) as raised:
        connection.read(0.2)
    elapsed = time.monotonic() - started
    assert code_of(raised) == errors.TIMEOUT
    assert 0.15 <= elapsed < 1.0


def test_peer_closed_answers_at_once_even_with_a_long_socket_timeout(pair):
    connection, peer = pair
    connection.sock.settimeout(60)
    started = time.monotonic()
    assert connection.peer_closed() is False
    assert time.monotonic() - started < 0.5
    peer.sendall(protocol.encode({"n": 1}))
    started = time.monotonic()
    assert connection.peer_closed() is False  # data waiting is not a close...
    assert time.monotonic() - started < 0.5
    assert connection.read(1.0) == {"n": 1}   # ...and was not consumed
    connection.sock.settimeout(60)
    peer.close()
    started = time.monotonic()
    assert connection.peer_closed() is True
    assert time.monotonic() - started < 0.5


class ChunkSocket:
    """A stand-in for a socket whose recv returns the given chunks, in order (each no larger
    than asked for), then end of stream."""

    def __init__(self, chunks):
        self.chunks = list(chunks)

    def settimeout(self, timeout):
        pass

    def recv(self, size, flags=0):
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        assert len(chunk) <= size
        return chunk

    def close(self):
        pass


def test_read_refuses_a_frame_over_the_limit_even_when_its_newline_arrives_with_it():
    limit = 1000
    frame = b'{"x":"' + b"a" * (limit + 400) + b'"}\n'
    connection = transport.Connection(ChunkSocket([frame[:limit - 1], frame[limit - 1:]]))
    connection.max_frame = limit
    with pytest.raises(MgpuError) as raised:
        connection.read(1.0)
    assert code_of(raised) == errors.TOO_LARGE


def test_a_frame_trickled_slower_than_the_timeout_times_out(pair):
    connection, peer = pair
    frame = protocol.encode({"x": "a" * 12})
    thread = send_later(peer, [frame[i:i + 1] for i in range(len(frame))], gap=0.03)  # ~0.65 s in all
    started = time.monotonic()
    try:
        with pytest.raises(MgpuError) as raised:
            connection.read(0.3)
        assert code_of(raised) == errors.TIMEOUT
        assert time.monotonic() - started < 0.9
    finally:
        connection.close()
        thread.join(2.0)


# ---------------------------------------------------------------------------------------------
# Bounds: every number has a range, every string a size, every string valid Unicode without NUL


@pytest.mark.parametrize("field,low,high", [
    ("gpus", 0, protocol.MAX_GPUS), ("mem_mb", 1, protocol.MAX_MEM_MB),
    ("time_limit", 1, protocol.MAX_SECONDS), ("warn_seconds", 1, protocol.MAX_SECONDS),
    ("priority", -protocol.MAX_PRIORITY, protocol.MAX_PRIORITY), ("umask", 0, 0o777),
])
def test_every_submit_number_has_a_range(field, low, high):
    assert protocol.check_request(submit(**{field: low}))[1][field] == low
    assert protocol.check_request(submit(**{field: high}))[1][field] == high
    for value in (low - 1, high + 1, 10 ** 400, -10 ** 400):
        text = check_fails(submit(**{field: value}), errors.INVALID_ARGUMENT)
        assert field in text and len(text) < 200


def test_time_limits_and_signal_leads_stop_at_365_days():
    assert protocol.MAX_SECONDS == 365 * 86400


@pytest.mark.parametrize("field", ["gpus", "mem_mb", "time_limit", "priority", "umask", "warn_seconds",
                                   "warn_signal"])
@pytest.mark.parametrize("value", [1.0, 1e400, float("nan"), "1", [1], {"a": 1}, True])
def test_a_float_or_anything_else_where_an_int_is_expected_is_refused(field, value):
    check_fails(submit(**{field: value}), errors.BAD_REQUEST)


@pytest.mark.parametrize("frame", [b'{"v":1,"type":"ping","x":NaN}\n', b'{"v":1,"type":"ping","x":Infinity}\n',
                                   b'{"v":1,"type":"ping","x":-Infinity}\n', b'{"v":NaN}\n'])
def test_nan_and_infinity_are_not_json(frame):
    with pytest.raises(MgpuError) as raised:
        protocol.decode(frame)
    assert code_of(raised) == errors.BAD_REQUEST


def test_1e400_is_a_float_not_a_number_of_seconds():
    message = protocol.decode(b'{"v":1,"type":"submit","command":["true"],"cwd":"/","env":{},"time_limit":1e400}\n')
    check_fails(message, errors.BAD_REQUEST)


def test_a_number_with_thousands_of_digits_is_a_malformed_frame_or_out_of_range():
    for digits in (400, 5000):
        frame = b'{"v":1,"type":"submit","command":["true"],"cwd":"/","env":{},"time_limit":%s}\n' % (
            b"9" * digits)
        try:
            message = protocol.decode(frame)
        except MgpuError as e:
            assert e.code == errors.BAD_REQUEST and len(e.message) < 300
            continue
        check_fails(message, errors.INVALID_ARGUMENT)


@pytest.mark.parametrize("signum", [0, -1, 32, 33, 35, 63, 65, 999, 2 ** 63])
def test_warn_signal_must_be_a_real_signal(signum):
    text = check_fails(submit(time_limit=60, warn_signal=signum), errors.INVALID_ARGUMENT)
    assert "signal" in text


@pytest.mark.parametrize("signum", [1, 9, 10, 12, 15, 34, 64])
def test_real_signals_are_accepted(signum):
    assert protocol.check_request(submit(time_limit=60, warn_signal=signum))[1]["warn_signal"] == signum


def test_gpu_ids_are_bounded_in_value_and_number():
    ids = list(range(protocol.MAX_GPUS))
    assert protocol.check_request(submit(gpu_ids=ids))[1]["gpu_ids"] == ids
    check_fails(submit(gpu_ids=ids + [0]), errors.INVALID_ARGUMENT)
    check_fails(submit(gpu_ids=[protocol.MAX_GPU_INDEX + 1]), errors.INVALID_ARGUMENT)
    check_fails(submit(gpu_ids=[10 ** 30]), errors.INVALID_ARGUMENT)
    check_fails(submit(gpu_ids=[-1]), errors.BAD_REQUEST)


def test_cancel_ids_are_bounded_in_value_and_number():
    assert protocol.check_request(protocol.request("cancel", ids=[1, protocol.MAX_JOB_ID]))[1]["ids"] == [
        1, protocol.MAX_JOB_ID]
    for ids in ([0], [-1], [protocol.MAX_JOB_ID + 1], [10 ** 400], list(range(1, protocol.MAX_CANCEL_IDS + 2))):
        check_fails(protocol.request("cancel", ids=ids), errors.INVALID_ARGUMENT)
    check_fails(protocol.request("cancel", ids=[1.5]), errors.BAD_REQUEST)


@pytest.mark.parametrize("job_id", [0, -1, protocol.MAX_JOB_ID + 1, 10 ** 400])
def test_attach_job_id_is_bounded(job_id):
    check_fails(protocol.request("attach", job_id=job_id), errors.INVALID_ARGUMENT)


@pytest.mark.parametrize("field,most,unit", [
    ("name", protocol.MAX_NAME, "c"), ("cwd", protocol.MAX_PATH, "b"), ("output", protocol.MAX_PATH, "b"),
    ("error", protocol.MAX_PATH, "b"), ("env_setup", protocol.MAX_ENV_SETUP, "b"),
])
def test_every_submit_string_has_a_size(field, most, unit):
    fill = "é" if unit == "c" else "a"
    value = "/" + fill * (most - 1)
    assert protocol.check_request(submit(**{field: value}))[1][field] == value
    text = check_fails(submit(**{field: value + "a"}), errors.INVALID_ARGUMENT)
    assert field in text and str(most) in text
    if unit == "b":  # bytes, not characters: 2-byte characters count twice
        check_fails(submit(**{field: "/" + "é" * (most // 2)}), errors.INVALID_ARGUMENT)


@pytest.mark.parametrize("field", ["user", "state"])
def test_queue_filters_have_a_size(field):
    assert protocol.check_request(protocol.request("queue", **{field: "a" * protocol.MAX_FILTER}))
    check_fails(protocol.request("queue", **{field: "a" * (protocol.MAX_FILTER + 1)}), errors.INVALID_ARGUMENT)
    check_fails(protocol.request("cancel", user="a" * (protocol.MAX_FILTER + 1)), errors.INVALID_ARGUMENT)


def test_the_command_is_bounded_in_arguments_and_bytes():
    assert protocol.check_request(submit(command=["a"] * protocol.MAX_COMMAND_ARGS))
    check_fails(submit(command=["a"] * (protocol.MAX_COMMAND_ARGS + 1)), errors.INVALID_ARGUMENT)
    big = "a" * (protocol.MAX_COMMAND_BYTES // 2)
    check_fails(submit(command=[big, big]), errors.INVALID_ARGUMENT)
    assert protocol.check_request(submit(command=[big[:-1], big[:-1]]))


def test_the_environment_is_bounded():
    env = {"V%d" % i: "x" for i in range(protocol.MAX_ENV_ENTRIES)}
    assert protocol.check_request(submit(env=env))
    env["ONE_MORE"] = "x"
    check_fails(submit(env=env), errors.INVALID_ARGUMENT)
    assert protocol.check_request(submit(env={"K" * protocol.MAX_ENV_KEY: "x"}))
    for key in ("K" * (protocol.MAX_ENV_KEY + 1), "A=B", ""):
        check_fails(submit(env={key: "x"}), errors.INVALID_ARGUMENT)


SURROGATE_FRAMES = [
    b'{"v":1,"type":"submit","command":["true","\\ud800"],"cwd":"/","env":{}}',
    b'{"v":1,"type":"submit","command":["true"],"cwd":"/","env":{},"name":"a\\udfffb"}',
    b'{"v":1,"type":"submit","command":["true"],"cwd":"/","env":{"\\udc80":"x"}}',
    b'{"v":1,"type":"submit","command":["true"],"cwd":"/","env":{"K":"\\ud83d"}}',
    b'{"v":1,"type":"queue","user":"\\ud800"}',
    b'{"v":1,"type":"ping","extra":[[{"deep":["\\udbff"]}]]}',
    b'{"v":1,"type":"ping","\\ud800":1}',
]


@pytest.mark.parametrize("frame", SURROGATE_FRAMES)
def test_a_lone_surrogate_anywhere_is_a_malformed_frame(frame):
    with pytest.raises(MgpuError) as raised:
        protocol.decode(frame + b"\n")
    assert code_of(raised) == errors.BAD_REQUEST and "Unicode" in raised.value.message


def test_escaped_but_valid_unicode_is_fine():
    message = protocol.decode(b'{"v":1,"type":"submit","command":["echo","\\ud83d\\ude00","\\u00e9"],'
                              b'"cwd":"/","env":{},"name":"\\\\ud800"}\n')
    assert message["command"] == ["echo", "\U0001F600", "é"] and message["name"] == "\\ud800"
    assert protocol.check_request(message)


@pytest.mark.parametrize("fields", [{"user": "a\0b"}, {"state": "RUNNING\0"}])
def test_nul_in_queue_filters_is_refused(fields):
    check_fails(protocol.request("queue", **fields), errors.BAD_REQUEST)


def test_valid_text_checks_every_string_keys_included():
    assert protocol.valid_text({"a": ["b", {"c": "d"}], "n": 1, "f": None})
    assert protocol.valid_text("plain ✓")
    assert protocol.valid_text(None) and protocol.valid_text(3)
    for bad in ("a\0", "\ud800", ["ok", "\udfff"], {"\ud800": 1}, {"k": {"k": ["\0"]}}, ("x", "\0")):
        assert not protocol.valid_text(bad), bad
    deep = "ok"
    for _ in range(100000):
        deep = [deep]
    assert protocol.valid_text(deep)  # iterative: no recursion limit


@pytest.mark.parametrize("type_", [3, 1.5, True, [], ["submit"], {}, {"a": 1}])
def test_a_type_that_is_not_a_string_is_a_bad_request(type_):
    message = {"v": protocol.VERSION, "type": type_}
    text = check_fails(message, errors.BAD_REQUEST)
    assert "type" in text


def test_error_messages_quote_wire_values_briefly():
    text = check_fails({"v": protocol.VERSION, "type": "x" * 100000}, errors.UNKNOWN_TYPE)
    assert len(text) < 200
    text = check_fails({"v": "x" * 100000, "type": "ping"}, errors.VERSION_MISMATCH)
    assert len(text) < 300
    text = check_fails({"v": [[1] * 1000], "type": "ping"}, errors.VERSION_MISMATCH)
    assert len(text) < 300


@pytest.mark.parametrize("version", [1.0, True])
def test_the_version_is_the_integer_one_only(version):
    check_fails({"v": version, "type": "ping"}, errors.VERSION_MISMATCH)


def test_check_request_refuses_a_non_object():
    check_fails([1, 2], errors.BAD_REQUEST)


def test_an_encoded_value_goes_into_the_frame_as_it_is():
    rows = protocol.Encoded('["1\\talice","2\\tbob"]')
    frame = protocol.encode(protocol.ok({"cells": rows, "time": 5.0, "nodes": [{"name": "n\u00e9"}]}))
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert protocol.decode(frame) == {"ok": True, "result": {"cells": ["1\talice", "2\tbob"], "time": 5.0,
                                                             "nodes": [{"name": "n\u00e9"}]}}
    with pytest.raises(TypeError):  # only as a value of a reply's result: anywhere else it is no JSON
        protocol.encode({"type": "relay_reply", "reply": protocol.ok({"cells": rows})})
