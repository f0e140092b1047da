"""The client side: find the daemon, send requests, read replies and streams.

Owns: the choice of endpoint (MGPU_SOCKET, else the user's own single-user master, else the
system master) and the one-line errors when none answers. Must not: render anything.
"""

import errno

from . import errors, paths, protocol, transport
from .errors import MgpuError


class Client:
    """One kept connection to the local daemon."""

    def __init__(self, connection, path):
        self.connection = connection
        self.path = path

    @classmethod
    def connect(cls):
        candidates = paths.client_socket_candidates()
        failure = None
        for path in candidates:
            try:
                return cls(transport.connect_unix(path), path)
            except OSError as e:
                if failure is None or e.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    failure = (path, e)
        path, e = failure
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            why = "no mgpu master is running there" if e.errno == errno.ECONNREFUSED else "no such socket"
            hint = "start one with 'sudo mgpu master' (or 'mgpu master' for yourself), or set MGPU_SOCKET"
        elif e.errno == errno.EACCES:
            why, hint = "permission denied", "ask the admin to make the socket reachable, or set MGPU_SOCKET"
        else:
            why, hint = e.strerror or str(e), "check that the master is running"
        tried = path if len(candidates) == 1 else "%s (tried %s)" % (path, ", ".join(candidates))
        raise MgpuError(errors.UNAVAILABLE, "cannot reach the mgpu master at %s: %s; %s" % (tried, why, hint))

    def call(self, type_, **fields):
        """Send one request and return its result (MgpuError for an error reply)."""
        self.send(type_, **fields)
        return protocol.raise_for(self.read(transport.REPLY_TIMEOUT))

    def send(self, type_, **fields):
        try:
            self.connection.send(protocol.request(type_, **fields))
        except OSError as e:
            raise MgpuError(errors.UNAVAILABLE, "lost the connection to the master: %s" % (e.strerror or e)) from None

    def read(self, timeout):
        message = self.connection.read(timeout)
        if message is None:
            raise MgpuError(errors.UNAVAILABLE, "the master closed the connection")
        return message

    def close(self):
        self.connection.close()


def call(type_, **fields):
    client = Client.connect()
    try:
        return client.call(type_, **fields)
    finally:
        client.close()
