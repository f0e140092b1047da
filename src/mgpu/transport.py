"""Endpoints and connections: UNIX sockets, peer credentials, framed reads with limits.

Owns: every socket of mgpu, the read timeout and size limit on each frame, and the threaded
server that hands each connection to a handler. Must not: know what messages mean.
"""

import os
import select
import socket
import stat
import struct
import time

from . import errors, protocol
from .errors import MgpuError

CONNECT_TIMEOUT = 5.0
FIRST_READ_TIMEOUT = 10.0   # a client must say something this soon after connecting
IDLE_READ_TIMEOUT = 60.0    # between requests on a kept connection
REPLY_TIMEOUT = 60.0        # a client waits this long for a reply


class PeerCredentials:
    __slots__ = ("pid", "uid", "gid")

    def __init__(self, pid, uid, gid):
        self.pid, self.uid, self.gid = pid, uid, gid


def peer_credentials(sock):
    """Who is at the other end of a UNIX stream socket, from the kernel (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return PeerCredentials(*struct.unpack("3i", creds))


class Connection:
    """A framed, size-limited, timed connection over a stream socket."""

    def __init__(self, sock, max_frame=protocol.MAX_FRAME):
        self.sock = sock
        self.max_frame = max_frame
        self._buffer = bytearray()

    def send(self, message):
        self.sock.sendall(protocol.encode(message))

    def send_raw(self, frame):
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
            except socket.timeout:
                raise MgpuError(errors.TIMEOUT, "no message within %.0f s" % timeout) from None
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                if buffer:
                    raise MgpuError(errors.BAD_REQUEST, "connection closed in the middle of a frame")
                return None
            buffer += chunk

    def peer_closed(self):
        """True when the peer has closed its end (checked without blocking or consuming)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            # Readable: data or end of stream. (A Python socket timeout would make even
            # MSG_DONTWAIT wait for readability, hence the select.)
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return data == b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect_unix(path, timeout=CONNECT_TIMEOUT):
    """A client's connection: it reads replies up to protocol.MAX_REPLY."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return Connection(sock, protocol.MAX_REPLY)


def socket_in_use(path):
    """True when a daemon answers on `path`."""
    try:
        connect_unix(path, timeout=1.0).close()
        return True
    except OSError:
        return False


def unix_server(path, serve_connection, log):
    """A threaded UNIX socket server any local user can connect to; authorisation is by the
    peer's uid, read from the kernel, never by the socket's permissions. `serve_connection(
    connection, peer)` runs in a thread per connection. (socketserver and threading are
    imported here, not at module level: client roles never pay for them.)"""
    import socketserver

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            connection = Connection(self.request)
            try:
                self.server.serve_connection(connection, peer_credentials(self.request))
            except Exception as e:  # never let one connection take the server down
                self.server.log_error_line("connection error: %s: %s" % (type(e).__name__, e))
            finally:
                connection.close()

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        request_queue_size = 512

        def handle_error(self, request, client_address):
            pass  # handled and logged in Handler

        def remove(self):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    if os.getuid() == 0 or os.stat(directory).st_uid == os.getuid():
        # Other users must reach the socket to be told who may use this daemon.
        os.chmod(directory, stat.S_IMODE(os.stat(directory).st_mode) | 0o111)
    if os.path.exists(path) or os.path.islink(path):
        if socket_in_use(path):
            raise MgpuError(errors.UNAVAILABLE, "another daemon is already serving on %s" % path)
        os.unlink(path)
    server = UnixServer(path, Handler)
    server.path = path
    server.serve_connection = serve_connection
    server.log_error_line = log
    os.chmod(path, 0o666)
    return server
