"""`mgpu keygen` through the real command line, and the authenticated link on real loopback TCP:
the right key links and carries frames; a wrong key, no certificate, plain TCP, an altered
record and a replayed connection are refused."""

import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time

import pytest

from harness import MGPU_BIN, REPO, SRC
from mgpu import auth, errors, protocol, transport
from mgpu.errors import MgpuError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

DEADLINE = 2.0  # the handshake deadline these links use


def mgpu(*args):
    if MGPU_BIN:
        binary = MGPU_BIN if os.path.isabs(MGPU_BIN) else os.path.join(REPO, MGPU_BIN)
        command = [binary]
    else:
        command = [sys.executable, "-m", "mgpu"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    if not MGPU_BIN:
        env["PYTHONPATH"] = SRC
    return subprocess.run(command + list(args), capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def key(key_dir):
    path = str(key_dir / "cluster.key")
    result = mgpu("keygen", "--output", path)
    assert result.returncode == 0, result.stderr
    return auth.load_key(path)


@pytest.fixture(scope="module")
def other_key(key_dir):
    path = str(key_dir / "other.key")
    assert mgpu("keygen", "--output", path).returncode == 0
    return auth.load_key(path)


# ---------------------------------------------------------------------------------------------
# keygen


def test_keygen_writes_a_0600_key_and_says_where_to_copy_it(tmp_path):
    path = str(tmp_path / "cluster.key")
    result = mgpu("keygen", "--output", path)
    assert result.returncode == 0, result.stderr
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    key = auth.load_key(path)
    assert key.fingerprint in result.stdout
    assert "scp -p" in result.stdout and "--key %s" % path in result.stdout
    out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-subject", "-enddate", "-text"],
                         capture_output=True, text=True, check=True).stdout
    assert "CN = mgpu-cluster" in out and "CA:FALSE" in out
    end_year = int(out.split("notAfter=")[1].split("\n")[0].split()[3])
    assert end_year >= time.gmtime().tm_year + 99


def test_keygen_refuses_to_overwrite_a_key(tmp_path):
    path = str(tmp_path / "cluster.key")
    assert mgpu("keygen", "-o", path).returncode == 0
    with open(path, "rb") as handle:
        before = handle.read()
    result = mgpu("keygen", "-o", path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "already exists" in result.stderr and path in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    with open(path, "rb") as handle:
        assert handle.read() == before


@pytest.mark.parametrize("target_exists", [True, False])
def test_keygen_refuses_a_symbolic_link_at_the_output_path(tmp_path, target_exists):
    target = tmp_path / "target"
    if target_exists:
        target.write_text("keep me\n")
    link = tmp_path / "cluster.key"
    os.symlink(str(target), str(link))
    result = mgpu("keygen", "-o", str(link))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "symbolic link" in result.stderr
    assert os.path.islink(str(link))
    if target_exists:
        assert target.read_text() == "keep me\n"
    else:
        assert not target.exists()


def test_keygen_creates_missing_directories(tmp_path):
    path = tmp_path / "etc" / "mgpu" / "cluster.key"
    result = mgpu("keygen", "--output", str(path))
    assert result.returncode == 0, result.stderr
    for directory in (tmp_path / "etc", tmp_path / "etc" / "mgpu"):
        assert stat.S_IMODE(os.stat(str(directory)).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o600


def test_keygen_help_has_examples_and_mgpu_help_lists_it():
    result = mgpu("keygen", "--help")
    assert result.returncode == 0 and "examples:" in result.stdout and "--output" in result.stdout
    assert "keygen" in mgpu("--help").stdout


# ---------------------------------------------------------------------------------------------
# The link on loopback


class LinkServer:
    """One accept on 127.0.0.1 (port 0) in a thread: authenticate, then echo frames with a
    reply until the peer closes. What happened is in `frames` and `error`."""

    def __init__(self, key, timeout=DEADLINE):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.key, self.timeout = key, timeout
        self.context = auth.server_context(key)
        self.frames, self.error, self.handshake_seconds = [], None, None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            sock, _ = self.listener.accept()
            started = time.monotonic()
            try:
                tls = auth.wrap_server(sock, self.context, self.key, self.timeout)
            finally:
                self.handshake_seconds = time.monotonic() - started
            connection = transport.Connection(tls)
            while True:
                message = connection.read(5)
                if message is None:
                    break
                self.frames.append(message)
                connection.send({"ok": True, "echo": message.get("n")})
            connection.close()
        except Exception as e:  # what a daemon would log as one line
            self.error = e
        finally:
            self.listener.close()

    def join(self):
        self.thread.join(15)
        assert not self.thread.is_alive(), "the server side hung"
        return self


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_frames_go_through_an_authenticated_link(key):
    server = LinkServer(key)
    tls = auth.wrap_client(connect(server.port), auth.client_context(key), key, DEADLINE)
    assert tls.version() == "TLSv1.3"
    connection = transport.Connection(tls)
    for n in range(3):
        connection.send({"v": protocol.VERSION, "type": "heartbeat", "n": n})
        assert connection.read(5) == {"ok": True, "echo": n}
    # The frame size limit holds over TLS too.
    connection.send({"type": "heartbeat", "pad": "x" * (protocol.MAX_FRAME + 10)})
    connection.close()
    server.join()
    assert [f["n"] for f in server.frames] == [0, 1, 2]
    assert isinstance(server.error, MgpuError) and server.error.code == errors.TOO_LARGE


def refused_on_the_server(server):
    server.join()
    assert isinstance(server.error, MgpuError), repr(server.error)
    assert "\n" not in server.error.message and "127.0.0.1:" in server.error.message
    assert server.frames == []
    assert server.handshake_seconds < DEADLINE + 1
    return server.error


def test_a_client_with_another_cluster_key_is_refused_on_both_sides(key, other_key):
    server = LinkServer(key)
    with pytest.raises(MgpuError) as caught:
        auth.wrap_client(connect(server.port), auth.client_context(other_key), other_key, DEADLINE)
    assert caught.value.code == errors.PERMISSION_DENIED and "not this cluster's" in caught.value.message
    error = refused_on_the_server(server)
    assert error.code == errors.PERMISSION_DENIED and "cluster key" in error.message


def test_a_client_without_a_certificate_is_refused(key):
    server = LinkServer(key)
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=auth.certificate_pem(key.certificate_der))
    tls = bare.wrap_socket(connect(server.port))
    with pytest.raises(ssl.SSLError):  # its handshake ends; the server's refusal comes first
        tls.sendall(protocol.encode({"type": "register"}))
        tls.settimeout(DEADLINE + 1)
        tls.recv(100)
    tls.close()
    error = refused_on_the_server(server)
    assert "presented no certificate" in error.message


def test_a_plain_tcp_client_sending_json_is_refused(key):
    server = LinkServer(key)
    plain = connect(server.port)
    plain.sendall(protocol.encode({"v": protocol.VERSION, "type": "register", "name": "gpu9"}))
    plain.settimeout(DEADLINE + 1)
    try:
        reply = plain.recv(100)  # a TLS alert record (type 21), the end or a reset; never a frame
    except ConnectionResetError:
        reply = b""
    assert reply == b"" or reply[:1] == b"\x15"
    plain.close()
    error = refused_on_the_server(server)
    assert error.code == errors.PERMISSION_DENIED and "TLS" in error.message


def test_a_silent_client_is_cut_at_the_handshake_deadline(key):
    server = LinkServer(key, timeout=0.5)
    silent = connect(server.port)
    silent.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    server.join()
    silent.close()
    assert isinstance(server.error, MgpuError) and server.error.code == errors.TIMEOUT
    assert 0.4 < server.handshake_seconds < 1.5


class Relay:
    """A man in the middle on loopback: forwards both ways, records what the client sent, and
    flips one byte in the first application-data record from the client once `armed`."""

    def __init__(self, target_port):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.armed = threading.Event()
        self.recording = bytearray()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        client, _ = self.listener.accept()
        upstream = connect(self.target_port)
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, source, sink, from_client):
        pending = bytearray()
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                if not from_client:
                    sink.sendall(chunk)
                    continue
                self.recording += chunk
                pending += chunk
                # Forward whole TLS records, so one can be altered on its way.
                while len(pending) >= 5:
                    length = int.from_bytes(pending[3:5], "big")
                    if len(pending) < 5 + length:
                        break
                    record = bytearray(pending[:5 + length])
                    del pending[:5 + length]
                    if self.armed.is_set() and record[0] == 0x17:
                        record[5 + length // 2] ^= 0x01
                        self.armed.clear()
                    sink.sendall(bytes(record))
        except OSError:
            pass
        finally:
            for s in (sink, source):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_an_altered_record_fails_the_receiver_and_is_never_delivered(key):
    server = LinkServer(key)
    relay = Relay(server.port)
    tls = auth.wrap_client(connect(relay.port), auth.client_context(key), key, DEADLINE)
    connection = transport.Connection(tls)
    connection.send({"type": "heartbeat", "n": 1})
    assert connection.read(5) == {"ok": True, "echo": 1}
    relay.armed.set()
    connection.send({"type": "launch", "n": 2, "env": {"TOKEN": "secret"}})
    server.join()
    tls.close()
    assert [f["n"] for f in server.frames] == [1]
    assert isinstance(server.error, ssl.SSLError), repr(server.error)
    assert "integrity" in auth.describe_tls_failure(server.error.reason, server.error.strerror)


def test_a_replayed_connection_gets_no_frame_through(key):
    first = LinkServer(key)
    relay = Relay(first.port)
    tls = auth.wrap_client(connect(relay.port), auth.client_context(key), key, DEADLINE)
    connection = transport.Connection(tls)
    connection.send({"type": "launch", "n": 7})
    assert connection.read(5) == {"ok": True, "echo": 7}
    connection.close()
    first.join()
    assert [f["n"] for f in first.frames] == [7]
    recording = bytes(relay.recording)
    assert b"launch" not in recording  # encrypted on the wire

    second = LinkServer(key)
    replayer = connect(second.port)
    replayer.sendall(recording)
    replayer.settimeout(DEADLINE + 1)
    try:
        while replayer.recv(65536):
            pass
    except OSError:
        pass
    replayer.close()
    error = refused_on_the_server(second)
    assert error.code == errors.PERMISSION_DENIED, error.message
