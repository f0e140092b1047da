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
        failures = []  # (path, OSError or the problem of its directory), reported if none answers
        for index, path in enumerate(candidates):
            directory = os.path.abspath(os.path.dirname(path))
            if directory in own_dirs:
                problem = paths.socket_directory_problem(directory, uid, per_user=True)
                if problem:
                    failures.append((path, problem))  # skipped unsent
                    continue
            try:
                connection = _connect(path, deadline, retry_refused=index == len(candidates) - 1)
            except OSError as e:
                failures.append((path, e))
                continue
            _verify_server(connection, path)
            return cls(connection, path)
        raise _unreachable(failures)

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

    def input_sender(self):
        """A second handle on this connection (its own timeouts) for the thread that sends a
        job's input (srun -i) while this one reads the stream."""
        return InputSender(transport.duplicate(self.connection.sock))

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
            raise _unreachable([(self.path, e)]) from None
        _verify_server(self.connection, self.path)


class InputSender:
    """Sends input frames (protocol.input_frame) on an attach connection; OSError once the
    daemon has closed it."""

    def __init__(self, sock):
        self.sock = sock
        self.stopped = False  # set by another thread: a send waiting for room gives up

    def send(self, data=None, eof=False, rows=None, cols=None):
        """Send one frame, waiting as long as the job takes to read what came before (the
        daemon reads input at the job's pace), until the daemon closes or `stopped` is set."""
        transport.send_patiently(self.sock, protocol.encode(protocol.input_frame(data, eof, rows, cols)),
                                 lambda: self.stopped)

    def close(self):
        self.sock.close()


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


def _unreachable(failures):
    """One line naming every socket tried and why each failed, then what to do about the
    failure that matters most (a refused directory, then a busy or forbidden master, then none
    running)."""
    tried, hints, rank = [], None, -1
    for path, failure in failures:
        if isinstance(failure, str):
            why, hint, this_rank = ("refused: %s" % failure, "remove it or set MGPU_SOCKET", 3)
        elif failure.errno in (errno.ENOENT, errno.ECONNREFUSED):
            why = ("no mgpu master is running there (connection refused)" if failure.errno == errno.ECONNREFUSED
                   else "no such socket")
            hint, this_rank = None, 0
        elif failure.errno == errno.EACCES:
            why, hint, this_rank = ("permission denied", "ask the admin to make the socket reachable, or set "
                                    "MGPU_SOCKET", 2)
        elif failure.errno == errno.EAGAIN:
            why = "too busy (its queue of new connections stayed full for %.0f s)" % CONNECT_DEADLINE
            hint, this_rank = "try again in a moment", 2
        else:
            why, hint, this_rank = failure.strerror or str(failure), "check that the master is running", 1
        tried.append("%s: %s" % (path, why))
        if this_rank > rank:
            hints, rank = hint, this_rank
    code = errors.PERMISSION_DENIED if rank == 3 else errors.UNAVAILABLE
    what = "the mgpu master at " if len(tried) == 1 else "an mgpu master: tried "
    return MgpuError(code, "cannot reach %s%s; %s" % (what, "; ".join(tried), hints or _where_to_run()))


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
