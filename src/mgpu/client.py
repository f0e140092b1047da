"""The client side: find and verify the daemon, send requests, read replies and streams.

Owns: the choice of endpoint (MGPU_SOCKET, else the user's own single-user master, else the
system master), the checks that it is trustworthy before anything is sent (a per-user socket
directory of the user's own; a daemon run by root or by the user, from SO_PEERCRED), waiting
for a busy daemon within a deadline, and the one-line errors when none answers. Must not:
render anything.
"""

import errno
import os
import time

from . import errors, paths, protocol, transport
from .errors import MgpuError

CONNECT_DEADLINE = 5.0  # seconds a client keeps trying a busy master (full backlog, connection cap)
RETRY_PAUSE = 0.05
REFUSED_GRACE = 0.5     # a present socket that refuses: perhaps a master taking over; retried this long


class Client:
    """One kept connection to the local daemon."""

    def __init__(self, connection, path):
        self.connection = connection
        self.path = path

    @classmethod
    def connect(cls):
        deadline = time.monotonic() + CONNECT_DEADLINE
        candidates = paths.client_socket_candidates()
        uid = os.getuid()
        own_dirs = [os.path.abspath(d) for d in paths.user_socket_dirs(uid)]
        failure, rank = None, 0
        for index, path in enumerate(candidates):
            directory = os.path.abspath(os.path.dirname(path))
            if directory in own_dirs:
                problem = paths.socket_directory_problem(directory, uid, per_user=True)
                if problem:
                    # Skipped unsent; reported only if no other daemon answers.
                    failure, rank = (path, problem), 3
                    continue
            try:
                connection = _connect(path, deadline, retry_refused=index == len(candidates) - 1)
            except OSError as e:
                this_rank = 1 if e.errno in (errno.ENOENT, errno.ECONNREFUSED) else 2
                if this_rank > rank:
                    failure, rank = (path, e), this_rank
                continue
            _verify_server(connection, path)
            return cls(connection, path)
        raise _unreachable(candidates, *failure)

    def call(self, type_, **fields):
        """Send one request and return its result (MgpuError for an error reply). A master
        over its connection cap refuses before reading anything: then wait and ask again."""
        deadline = time.monotonic() + CONNECT_DEADLINE
        message = protocol.request(type_, **fields)
        while True:
            reply = self._exchange(message)
            if not transport.is_busy_refusal(reply) or time.monotonic() + RETRY_PAUSE >= deadline:
                return protocol.raise_for(reply)
            time.sleep(RETRY_PAUSE)
            self._reconnect(deadline)

    def send(self, type_, **fields):
        try:
            self.connection.send(protocol.request(type_, **fields))
        except OSError as e:
            raise _lost(e) from None

    def read(self, timeout):
        message = self.connection.read(timeout)
        if message is None:
            raise MgpuError(errors.UNAVAILABLE, "the master closed the connection")
        return message

    def close(self):
        self.connection.close()

    def _exchange(self, message):
        try:
            self.connection.send(message)
        except OSError as e:
            # A master that refuses without reading (over its cap, a frame too large) has
            # closed; its error frame may still be there to read.
            try:
                reply = self.connection.read(1.0)
            except (MgpuError, OSError):
                reply = None
            if isinstance(reply, dict) and reply.get("ok") is False:
                return reply
            raise _lost(e) from None
        return self.read(transport.REPLY_TIMEOUT)

    def _reconnect(self, deadline):
        self.connection.close()
        try:
            self.connection = _connect(self.path, deadline, retry_refused=True)
        except OSError as e:
            raise _unreachable([self.path], self.path, e) from None
        _verify_server(self.connection, self.path)


def _connect(path, deadline, retry_refused):
    """A connection to `path`, waiting within `deadline` while its backlog is full (EAGAIN)
    and, when `retry_refused`, briefly while a present socket refuses."""
    started = time.monotonic()
    while True:
        remaining = deadline - time.monotonic()
        try:
            return transport.connect_unix(path, timeout=max(0.01, min(remaining, transport.CONNECT_TIMEOUT)))
        except OSError as e:
            now = time.monotonic()
            if e.errno == errno.EAGAIN:
                pass
            elif not (e.errno == errno.ECONNREFUSED and retry_refused and now - started < REFUSED_GRACE
                      and os.path.exists(path)):
                raise
            if now + RETRY_PAUSE >= deadline:
                raise
            time.sleep(RETRY_PAUSE)


def _verify_server(connection, path):
    """Refuse, before anything is sent, a daemon run by anyone but root or this user."""
    try:
        server = transport.peer_credentials(connection.sock)
    except OSError as e:
        connection.close()
        raise _lost(e) from None
    uid = os.getuid()
    if server.uid in (0, uid):
        return
    connection.close()
    hint = ("check MGPU_SOCKET" if os.environ.get("MGPU_SOCKET")
            else "ask its owner or your admin to remove it")
    raise MgpuError(errors.PERMISSION_DENIED,
                    "refusing to use the mgpu socket %s: it is served by %s, not by root or by you "
                    "(a master started by a user serves only that user); nothing was sent to it; %s"
                    % (path, paths.describe_uid(server.uid), hint))


def _lost(e):
    return MgpuError(errors.UNAVAILABLE, "lost the connection to the master: %s" % (e.strerror or e))


def _unreachable(candidates, path, failure):
    others = [c for c in candidates if c != path]
    if isinstance(failure, str):
        message = "refusing to use %s: %s; remove it or set MGPU_SOCKET" % (path, failure)
        if others:
            message += " (and no master answers at %s)" % ", ".join(others)
        return MgpuError(errors.PERMISSION_DENIED, message)
    e = failure
    if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
        why = "no mgpu master is running there" if e.errno == errno.ECONNREFUSED else "no such socket"
        hint = _where_to_run()
    elif e.errno == errno.EACCES:
        why, hint = "permission denied", "ask the admin to make the socket reachable, or set MGPU_SOCKET"
    elif e.errno == errno.EAGAIN:
        why = "the master is too busy (its queue of new connections stayed full for %.0f s)" % CONNECT_DEADLINE
        hint = "try again in a moment"
    else:
        why, hint = e.strerror or str(e), "check that the master is running"
    tried = path if len(candidates) == 1 else "%s (tried %s)" % (path, ", ".join(candidates))
    return MgpuError(errors.UNAVAILABLE, "cannot reach the mgpu master at %s: %s; %s" % (tried, why, hint))


def _where_to_run():
    """What to do on a host where no mgpu daemon answers: where the master is, when this host
    knows (then the command belongs on a host of the cluster, or this host joins it)."""
    from . import config  # only on this error path: it reads the system config

    master = config.configured_master()
    if master is None:
        return ("run it on a host of the cluster (where 'mgpu master' or 'mgpu node' runs), start a master "
                "with 'sudo mgpu master' (or 'mgpu master' for yourself), or set MGPU_SOCKET")
    host = config.parse_address(master, "master")[0]
    return ("this host runs no mgpu daemon: run it on %s (the master) or on a host running 'mgpu node', "
            "or join this host with 'sudo mgpu node --master %s' (--submit-only on a host without GPUs)"
            % (host, master))


def call(type_, **fields):
    client = Client.connect()
    try:
        return client.call(type_, **fields)
    finally:
        client.close()
