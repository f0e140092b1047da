"""Endpoints and connections: UNIX sockets, peer credentials, framed reads with limits.

Owns: every socket of mgpu, the read timeout and size limit on each frame, and the threaded
server that hands each connection to a handler, within a cap on open connections (in all and
per user). Must not: know what messages mean.
"""

import _socket
import _thread
import os
import stat
import sys
import time

from . import errors, paths, protocol
from .errors import MgpuError

# A client's own sockets are _socket's: the `socket` module brings enum and selectors, which a
# client command does not need. The daemons' come from socketserver (socket.socket, a subclass).
# select is imported where it is used, for the same reason.
CONNECT_TIMEOUT = 5.0
SEND_TIMEOUT = 60.0         # the most one frame may take to go out to a slow reader
LISTEN_BACKLOG = 256        # connections waiting for accept(); clients wait for room (see connect_unix)
BUSY = "too many connections to the master"   # how a refusal over the cap starts
REFUSAL_LOG_INTERVAL = 10.0  # seconds between log lines about refused connections
FIRST_READ_TIMEOUT = 10.0   # a client must say something this soon after connecting
IDLE_READ_TIMEOUT = 60.0    # between requests on a kept connection
REPLY_TIMEOUT = 60.0        # a client waits this long for a reply


class PeerCredentials:
    __slots__ = ("pid", "uid", "gid")

    def __init__(self, pid, uid, gid):
        self.pid, self.uid, self.gid = pid, uid, gid


def peer_credentials(sock):
    """Who is at the other end of a UNIX stream socket, from the kernel (SO_PEERCRED): three
    native C ints."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return PeerCredentials(*(int.from_bytes(creds[i:i + 4], sys.byteorder, signed=True) for i in (0, 4, 8)))


# Guards every Connection's wake-up pipe: made, written and closed by different threads.
_WAKE_LOCK = _thread.allocate_lock()


class Connection:
    """A framed, size-limited, timed connection over a stream socket."""

    def __init__(self, sock, max_frame=protocol.MAX_FRAME):
        self.sock = sock
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._wake = None      # (read end, write end) of the wake-up pipe, made by readable() or wake()
        self._closed = False

    def send(self, message):
        self.send_raw(protocol.encode(message))

    def reply(self, message):
        """Send a reply; False when the peer is gone. A reply too large to send becomes an
        error reply."""
        try:
            try:
                self.send(message)
            except MgpuError as e:
                self.send(protocol.error_from(e))
            return True
        except OSError:
            return False

    def requests(self):
        """Yield (type, fields, message) for each well-formed request a client sends, the first
        within FIRST_READ_TIMEOUT, the next ones within IDLE_READ_TIMEOUT. A malformed request
        gets its error reply and the next one is read; an unreadable or oversize frame gets its
        error reply and ends the connection (the stream is no longer trustworthy)."""
        timeout = FIRST_READ_TIMEOUT
        while True:
            try:
                message = self.read(timeout)
            except MgpuError as e:
                self.reply(protocol.error_from(e))
                return
            if message is None:
                return
            timeout = IDLE_READ_TIMEOUT
            try:
                type_, fields = protocol.check_request(message)
            except MgpuError as e:
                if not self.reply(protocol.error_from(e)):
                    return
                continue
            yield type_, fields, message

    def send_raw(self, frame):
        # A read leaves the socket's timeout at what was left of its deadline; a send gets its own.
        self.sock.settimeout(SEND_TIMEOUT)
        self.sock.sendall(frame)

    def read(self, timeout):
        """The next message, or None at a clean end of stream. MgpuError on a timeout, an
        oversize or malformed frame, or a stream cut mid-frame."""
        line = self.read_line(timeout)
        return None if line is None else protocol.decode(line)

    def read_line(self, timeout):
        """One frame; `timeout` bounds the whole frame, not each piece of it (a peer trickling
        a byte at a time must not hold a thread)."""
        deadline = time.monotonic() + timeout
        buffer = self._buffer
        searched = 0
        while True:
            end = buffer.find(b"\n", searched)
            if end >= 0:
                if end + 1 > self.max_frame:
                    raise MgpuError(errors.TOO_LARGE, "frame over the %d-byte limit" % self.max_frame)
                line = bytes(buffer[:end + 1])
                del buffer[:end + 1]
                return line
            searched = len(buffer)
            if searched >= self.max_frame:
                raise MgpuError(errors.TOO_LARGE, "frame over the %d-byte limit" % self.max_frame)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MgpuError(errors.TIMEOUT, "no message within %.0f s" % timeout)
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(262144)
            except TimeoutError:
                raise MgpuError(errors.TIMEOUT, "no message within %.0f s" % timeout) from None
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                if buffer:
                    raise MgpuError(errors.BAD_REQUEST, "connection closed in the middle of a frame")
                return None
            buffer += chunk

    def _wake_pipe(self):
        """The wake-up pipe, made on first use (under _WAKE_LOCK); None once closed."""
        if self._wake is None and not self._closed:
            self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        return self._wake

    def wake(self):
        """End a wait in readable() now, or the next one at once (False): for a thread that also
        waits on something else (a job's updates). Any thread; after close() it does nothing."""
        with _WAKE_LOCK:
            wake = self._wake_pipe()
            if wake is not None:
                try:
                    os.write(wake[1], b"w")
                except OSError:
                    pass  # full: a wake-up is pending already

    def readable(self, timeout):
        """True when a frame (or a piece of one, or the end of the stream) can be read now or
        arrives within `timeout` seconds; False at once after wake()."""
        if b"\n" in self._buffer:
            return True
        import select

        with _WAKE_LOCK:
            wake = self._wake_pipe()
        waited = [self.sock] if wake is None else [self.sock, wake[0]]
        try:
            readable, _, _ = select.select(waited, [], [], max(0.0, timeout))
        except (OSError, ValueError):
            return True  # closed: the read says so
        if wake is not None and wake[0] in readable:
            try:
                os.read(wake[0], 4096)  # taken: later wake-ups are new ones
            except OSError:
                pass
        return self.sock in readable

    def peer_closed(self):
        """True when the peer has closed its end (checked without blocking or consuming)."""
        import select

        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            # Readable: data or end of stream. (A Python socket timeout would make even
            # MSG_DONTWAIT wait for readability, hence the select.)
            data = self.sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return data == b""

    def close(self):
        with _WAKE_LOCK:
            self._closed = True
            wake, self._wake = self._wake, None
        for fd in wake or ():
            os.close(fd)
        try:
            self.sock.close()
        except OSError:
            pass


def send_patiently(sock, data, stopped, slice_=0.5):
    """Send all of `data` on a socket other threads also use, waiting for room without a
    deadline (a job's input goes at the pace the job reads it) until `stopped()` is true.
    OSError when the peer has gone, or when stopped."""
    import select

    sock.settimeout(0.0)  # non-blocking: the descriptor's other user keeps its own timeouts
    view = memoryview(data)
    while view:
        if stopped():
            raise ConnectionAbortedError("stopped")
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            select.select([], [sock], [], slice_)


def connect_unix(path, timeout=CONNECT_TIMEOUT):
    """A client's connection: it reads replies up to protocol.MAX_REPLY.

    The connect blocks, bounded by SO_SNDTIMEO: with a Python socket timeout the socket would
    connect non-blocking, and a UNIX socket whose listen backlog is full then fails at once
    with EAGAIN instead of waiting for room. After `timeout` it fails with EAGAIN."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        seconds = max(float(timeout), 0.001)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO,
                        _timeval(int(seconds), int((seconds % 1) * 1e6)))
        sock.connect(path)
        sock.settimeout(timeout)  # every later operation has a deadline too
    except OSError:
        sock.close()
        raise
    return Connection(sock, protocol.MAX_REPLY)


_C_LONG = 8 if sys.maxsize > 2 ** 32 else 4  # Linux: a C long is as wide as a pointer


def _timeval(seconds, microseconds):
    """A struct timeval (two native C longs), as struct.pack("ll", ...) makes it."""
    return b"".join(n.to_bytes(_C_LONG, sys.byteorder, signed=True) for n in (seconds, microseconds))


def duplicate(sock):
    """A second socket object on a new descriptor of `sock`'s connection (its own timeouts)."""
    return _socket.socket(fileno=_socket.dup(sock.fileno()))


def is_busy_refusal(reply):
    """True for the frame a server sends instead of serving a connection over its cap."""
    return (isinstance(reply, dict) and reply.get("ok") is False and reply.get("error") == errors.UNAVAILABLE
            and str(reply.get("message", "")).startswith(BUSY))


def socket_in_use(path):
    """True when a daemon answers on `path`."""
    try:
        connect_unix(path, timeout=1.0).close()
        return True
    except OSError:
        return False


def unix_server(path, serve_connection, log, max_connections=1024, max_connections_per_user=128):
    """A threaded UNIX socket server any local user can connect to; authorisation is by the
    peer's uid, read from the kernel, never by the socket's permissions. `serve_connection(
    connection, peer)` runs in a thread per connection, for at most `max_connections` at once
    and `max_connections_per_user` of one uid (root's count against the first only); a
    connection over the cap gets one `unavailable` frame and is closed, without a thread.
    (socketserver and threading are imported here, not at module level: client roles never
    pay for them.)"""
    import socketserver
    import threading

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            connection = Connection(self.request)
            try:
                # client_address carries the peer's credentials, read once at accept time.
                self.server.serve_connection(connection, self.client_address)
            except Exception as e:  # never let one connection take the server down
                self.server.log_error_line("connection error: %s: %s" % (type(e).__name__, e))
            finally:
                connection.close()

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        request_queue_size = max(16, min(LISTEN_BACKLOG, max_connections))

        def __init__(self, *args):
            self.limits_lock = threading.Lock()
            self.open_connections = 0
            self.open_by_uid = {}
            self.refused_since_log = 0
            self.last_refusal_log = 0.0
            super().__init__(*args)

        def process_request(self, request, client_address):
            """At accept time, before any thread: admit the connection or refuse it."""
            try:
                peer = peer_credentials(request)
            except OSError:
                self.shutdown_request(request)
                return
            refusal = self.admit(peer.uid)
            if refusal is None:
                try:
                    threading.Thread(target=self.process_request_thread, args=(request, peer),
                                     daemon=True).start()
                    return
                except RuntimeError:  # the host cannot start another thread
                    self.release(peer.uid)
                    refusal = "%s (no thread could be started); try again" % BUSY
            self.refuse(request, peer, refusal)

        def process_request_thread(self, request, peer):
            try:
                super().process_request_thread(request, peer)
            finally:
                self.release(peer.uid)

        def admit(self, uid):
            with self.limits_lock:
                if self.open_connections >= max_connections:
                    return "%s (%d open); try again" % (BUSY, self.open_connections)
                mine = self.open_by_uid.get(uid, 0)
                if uid != 0 and mine >= max_connections_per_user:
                    return "%s from your user (%d open); close some and try again" % (BUSY, mine)
                self.open_connections += 1
                self.open_by_uid[uid] = mine + 1
                return None

        def release(self, uid):
            with self.limits_lock:
                self.open_connections -= 1
                left = self.open_by_uid[uid] - 1
                if left:
                    self.open_by_uid[uid] = left
                else:
                    del self.open_by_uid[uid]

        def refuse(self, request, peer, message):
            try:  # a new connection's send buffer is empty: one small frame never blocks
                request.send(protocol.encode(protocol.error(errors.UNAVAILABLE, message)), _socket.MSG_DONTWAIT)
            except OSError:
                pass
            self.shutdown_request(request)
            self.refused_since_log += 1
            now = time.monotonic()
            if now - self.last_refusal_log >= REFUSAL_LOG_INTERVAL:
                log("connection limit: refused %d connection(s), the last from %s: %s"
                    % (self.refused_since_log, paths.describe_uid(peer.uid), message))
                self.refused_since_log = 0
                self.last_refusal_log = now

        def handle_error(self, request, client_address):
            pass  # handled and logged in Handler

        def remove(self):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    _prepare_socket_path(path)
    _allow_open_files(max_connections)
    server = UnixServer(path, Handler)
    server.path = path
    server.serve_connection = serve_connection
    server.log_error_line = log
    os.chmod(path, 0o666)
    return server


def _prepare_socket_path(path):
    """Make sure no one but root or this daemon's user can replace the socket at `path`, and
    clear a stale socket there; MgpuError with one line otherwise. Never removes anything
    but a socket nobody serves."""
    uid = os.getuid()
    directory = os.path.abspath(os.path.dirname(path) or ".")
    per_user = uid != 0 and directory in [os.path.abspath(d) for d in paths.user_socket_dirs(uid)]
    if not os.path.lexists(directory):
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o711 if per_user else 0o755)
        except FileExistsError:
            pass  # someone else's: examined below
    problem = paths.socket_directory_problem(directory, uid, per_user)
    if problem:
        raise MgpuError(errors.PERMISSION_DENIED, "refusing to serve on %s: %s; fix or remove it, or choose "
                        "another --socket" % (path, problem))
    if os.stat(directory).st_uid == uid:
        # Other users must reach the socket to be told who may use this daemon.
        os.chmod(directory, stat.S_IMODE(os.stat(directory).st_mode) | 0o111)
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        kind = ("symlink" if stat.S_ISLNK(found.st_mode) else "directory" if stat.S_ISDIR(found.st_mode)
                else "regular file" if stat.S_ISREG(found.st_mode) else "file that is not a socket")
        raise MgpuError(errors.UNAVAILABLE, "refusing to serve on %s: a %s of %s is there, not a stale socket; "
                        "remove it if it is not needed, or choose another --socket"
                        % (path, kind, paths.describe_uid(found.st_uid)))
    if socket_in_use(path):
        raise MgpuError(errors.UNAVAILABLE, "another daemon is already serving on %s" % path)
    os.unlink(path)


def _allow_open_files(max_connections):
    """Raise the soft limit on open files to fit the connection cap (the hard limit allowing):
    at the limit accept() would fail and the server spin instead of refusing politely."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
        except (ValueError, OSError):
            pass


# ---------------------------------------------------------------------------------------------
# TCP, for the node link (the TLS layer on top is auth.py's)

MAX_NODE_CONNECTIONS = 4096  # node links (and handshakes in progress) served at once


def connect_tcp(host, port, timeout=CONNECT_TIMEOUT):
    """A connected TCP socket to (host, port), with `timeout` on the connect; OSError."""
    import socket

    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames, sent at once
    return sock


def tcp_server(host, port, serve_connection, log, max_connections=MAX_NODE_CONNECTIONS):
    """A threaded TCP server on (host, port): `serve_connection(sock, address)` runs in a thread
    per connection (it owns the socket: the TLS handshake comes first), for at most
    `max_connections` at once; over that, the connection is closed at accept time."""
    import socket
    import socketserver
    import threading

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            try:
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.server.serve_connection(self.request, self.client_address)
            except Exception as e:  # never let one connection take the server down
                log("node link from %s: %s: %s" % (self.client_address[0], type(e).__name__, e))

    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

        def __init__(self, *args):
            self.open_connections = 0
            self.limits_lock = threading.Lock()
            super().__init__(*args)

        def process_request(self, request, client_address):
            with self.limits_lock:
                full = self.open_connections >= max_connections
                if not full:
                    self.open_connections += 1
            if full:
                log("node link from %s refused: %d connections open" % (client_address[0], max_connections))
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                with self.limits_lock:
                    self.open_connections -= 1

        def handle_error(self, request, client_address):
            pass  # logged in Handler

    try:
        server = TcpServer((host, port), Handler)
    except OSError as e:
        raise MgpuError(errors.UNAVAILABLE, "cannot listen on %s:%d: %s" % (host, port, e.strerror or e)) from None
    server.serve_connection = serve_connection
    return server
