"""The one interface through which the master reaches a node.

Owns: what the master may ask of a node (describe itself, start, signal and release a job,
re-adopt jobs after a restart, open a job's output), and the streams the master sends back
through a remote node for its local clients (relayed `srun -i`), with their input. The master's own host is a
LocalNodeLink to an in-process NodeAgent; a remote host gets the same interface over TLS
(RemoteNodeLink), so the controller and the master treat both alike. Must not: decide anything.
"""

import collections
import os
import queue
import select
import threading
import time

from . import errors, protocol
from .errors import MgpuError

OUTPUT_READ_TIMEOUT = 10.0  # a node's answer to output_read
LINK_SLICE = 0.5            # a link's thread looks at its outbox at least this often
# Flow control of relayed streams: a stream's next frame waits while the link's outbox holds
# STREAM_OUTBOX_BYTES (a slow link or node slows the streams down instead of growing the
# master's memory), and the stream is given up when it found no room for STREAM_SEND_TIMEOUT.
STREAM_OUTBOX_BYTES = 4 << 20
STREAM_SEND_TIMEOUT = 60.0


class NodeLink:
    name = None

    def info(self):
        raise NotImplementedError

    def start_job(self, job, env, choose_port=False):
        """Launch one attempt of `job` (for a part of a job on several hosts: a record with
        that part's GPUs and output). `choose_port`: the rank-0 part picks MASTER_PORT on its
        host and reports it (job_port)."""
        raise NotImplementedError

    def signal_job(self, job_id, attempt, signum):
        raise NotImplementedError

    def release(self, job_id, attempt):
        raise NotImplementedError

    def adopt(self, jobs):
        raise NotImplementedError

    def open_output(self, path, uid, user):
        """A job's output file opened for reading as its user (an object with read(n) and
        close()), or None when it cannot be read (yet)."""
        raise NotImplementedError

    def send_input(self, job_id, attempt, data=None, eof=False, rows=None, cols=None):
        """Pass a client's input (bytes, its end, its window size) to an attempt's supervisor;
        the first call opens the attempt's input. "ok", "busy" (nothing was taken: try again
        shortly) or "closed" (the attempt takes no more input)."""
        raise NotImplementedError

    def end_input(self, job_id, attempt):
        """The client that sent input is gone: the attempt's input hangs up."""
        raise NotImplementedError


class LocalOutput:
    """A job's output file on the master's own host: a descriptor opened as the user."""

    def __init__(self, fd):
        self.fd = fd

    def read(self, size):
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return b""

    def close(self):
        os.close(self.fd)


class RemoteOutput:
    """A job's output file on a node, read piece by piece through the link (output_read)."""

    def __init__(self, link, path, user):
        self.link, self.path, self.user = link, path, user
        self.offset = 0

    def read(self, size):
        data = self.link.read_output(self.path, self.user, self.offset, min(size, protocol.MAX_OUTPUT_READ))
        self.offset += len(data)
        return data

    def close(self):
        pass


class LocalNodeLink(NodeLink):
    """The master's own host, in process."""

    def __init__(self, agent):
        self.agent = agent
        self.name = agent.name

    def info(self):
        return self.agent.info()

    def start_job(self, job, env, choose_port=False):
        self.agent.start_job(job, env, choose_port)

    def signal_job(self, job_id, attempt, signum):
        self.agent.signal_job(job_id, attempt, signum)

    def release(self, job_id, attempt):
        self.agent.release(job_id, attempt)

    def adopt(self, jobs):
        self.agent.adopt(jobs)

    def open_output(self, path, uid, user):
        fd = self.agent.open_output(path, uid)
        return None if fd is None else LocalOutput(fd)

    def send_input(self, job_id, attempt, data=None, eof=False, rows=None, cols=None):
        return self.agent.send_input(job_id, attempt, data, eof, rows, cols)

    def end_input(self, job_id, attempt):
        self.agent.close_input(job_id, attempt)


class RemoteNodeLink(NodeLink):
    """A node agent on another host, over its authenticated TLS connection. One thread (the
    connection's, in serve()) does all of the link's I/O: an SSL socket is not for two threads
    at once. Others queue messages in the outbox and wake it through a pipe, so a slow or
    vanished host never blocks the master's loop; a send that fails ends the link (the master
    then waits for the node to reconnect, or declares it down after node_timeout). Relayed
    streams (RelayStream, each on a thread of its own) are the one sender that waits: for room
    in the outbox, so that their output cannot pile up in the master."""

    def __init__(self, name, connection, address, log):
        self.name = name
        self.connection = connection
        self.address = address
        self.local_address = None  # the master's address as this node reaches it (set by the master)
        self.log = log
        self.closed = False
        self._reads = {}  # output_read request id -> the queue its stream waits on
        self._reads_lock = threading.Lock()
        self._next_read = 1
        self._streams = {}  # relay request id -> its RelayStream, while open
        self._inputs = {}   # (job_id, attempt) -> [bytes sent, bytes the node wrote, closed]
        self._outbox = collections.deque()   # encoded frames, oldest first
        self._outbox_bytes = 0
        self._outbox_lock = threading.Lock()
        self._room = threading.Condition(self._outbox_lock)  # notified as the outbox empties
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def _send(self, type_, **fields):
        if self.closed:
            return
        try:
            frame = protocol.encode(protocol.node_message(type_, **fields))
        except MgpuError as e:  # too large to send: the link could not carry it either
            self.log("node %s: cannot send %s: %s; closing its link" % (self.name, type_, e.message))
            self.close()
            return
        with self._outbox_lock:
            self._enqueue(frame)
        self._wake()

    def _enqueue(self, frame):
        """Append an encoded frame to the outbox (the outbox lock held)."""
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)

    def _wake(self):
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass  # full (a wake-up is pending) or closed

    def serve(self, on_message, silence_limit):
        """Send what is queued and pass each message the node sends to `on_message`, until the
        link ends; returns why. `silence_limit`: seconds without a frame from the node."""
        tls = self.connection.sock
        last_heard = time.monotonic()
        while not self.closed:
            try:
                while True:
                    with self._outbox_lock:
                        if not self._outbox:
                            break
                        frame = self._outbox.popleft()
                        self._outbox_bytes -= len(frame)
                        self._room.notify_all()
                    self.connection.send_raw(frame)
                wait = silence_limit - (time.monotonic() - last_heard)
                if wait <= 0:
                    return "no message for %gs" % silence_limit
                if not tls.pending():
                    readable, _, _ = select.select([tls, self._wake_read], [], [], min(wait, LINK_SLICE))
                    if self._wake_read in readable:
                        try:
                            while os.read(self._wake_read, 4096):
                                pass
                        except OSError:
                            pass
                    if tls not in readable:
                        continue
                message = self.connection.read(LINK_SLICE)
                if message is None:
                    return "the node closed the link"
                while message is not None:
                    last_heard = time.monotonic()
                    on_message(message)
                    message = self._buffered()
            except MgpuError as e:
                if e.code == errors.TIMEOUT:
                    continue  # a frame still on its way
                return e.message
            except Exception as e:  # OSError, ssl.SSLError (an altered record), a reset
                return "%s: %s" % (type(e).__name__, e)
        return "the link was closed"

    def _buffered(self):
        """A frame already received whole, or None."""
        try:
            return self.connection.read(0)
        except MgpuError as e:
            if e.code == errors.TIMEOUT:
                return None
            raise

    def info(self):
        return None

    def start_job(self, job, env, choose_port=False):
        if choose_port:
            self._send("launch", job=job.to_dict(), env=env, choose_port=True)
        else:
            self._send("launch", job=job.to_dict(), env=env)

    def signal_job(self, job_id, attempt, signum):
        self._send("signal", job_id=job_id, attempt=attempt, signum=signum)

    def release(self, job_id, attempt):
        self._send("release", job_id=job_id, attempt=attempt)

    def kill(self, job_id, attempt):
        self._send("kill", job_id=job_id, attempt=attempt)

    def relay_reply(self, request_id, reply):
        self._send("relay_reply", request_id=request_id, reply=reply)

    def adopt(self, jobs):
        pass  # a remote node adopts its jobs itself and reports them when it registers

    def open_output(self, path, uid, user):
        return RemoteOutput(self, path, user)

    def send_input(self, job_id, attempt, data=None, eof=False, rows=None, cols=None):
        """Input goes out as job_input, at most protocol.INPUT_WINDOW bytes ahead of what the
        node says it has handed to the job (job_input_done), and only while the outbox has
        room: "busy" otherwise."""
        key = (job_id, attempt)
        with self._outbox_lock:
            if self.closed:
                return "closed"
            progress = self._inputs.setdefault(key, [0, 0, False])
            if progress[2]:
                return "closed"
            size = len(data or b"")
            if size and (progress[0] - progress[1] + size > protocol.INPUT_WINDOW
                         or self._outbox_bytes > STREAM_OUTBOX_BYTES):
                return "busy"
            progress[0] += size
        fields = {"job_id": job_id, "attempt": attempt}
        if data:
            fields["data"] = data.decode("latin-1")
        if rows is not None and cols is not None:
            fields.update(rows=rows, cols=cols)
        if eof:
            fields["eof"] = True
        self._send("job_input", **fields)
        if eof:
            self._forget_input(key)
        return "ok"

    def end_input(self, job_id, attempt):
        with self._outbox_lock:
            known = self._inputs.pop((job_id, attempt), None)
        if known is not None and not known[2]:
            self._send("job_input", job_id=job_id, attempt=attempt, hangup=True)

    def input_done(self, fields):
        """The node's job_input_done (its reader thread): how much of an attempt's input the
        job has been handed, or that it takes no more."""
        with self._outbox_lock:
            progress = self._inputs.get((fields["job_id"], fields["attempt"]))
            if progress is not None:
                progress[1] = max(progress[1], fields["written"])
                progress[2] = progress[2] or bool(fields.get("closed"))

    def _forget_input(self, key):
        with self._outbox_lock:
            self._inputs.pop(key, None)

    def read_output(self, path, user, offset, max_bytes, timeout=OUTPUT_READ_TIMEOUT):
        """Bytes of a job's output file on this node from `offset` (b"" when there is nothing
        new, the file is not there yet, the node does not answer in time, or the link ends)."""
        if self.closed:
            return b""
        waiting = queue.SimpleQueue()
        with self._reads_lock:
            request_id = self._next_read
            self._next_read += 1
            self._reads[request_id] = waiting
        self._send("output_read", request_id=request_id, path=path, user=user, offset=offset, max_bytes=max_bytes)
        try:
            answer = waiting.get(timeout=timeout)
        except queue.Empty:
            answer = None
        with self._reads_lock:
            self._reads.pop(request_id, None)
        if answer is None or answer["state"] != "ok":
            return b""
        return answer["data"].encode("latin-1", "replace")

    def output_data(self, fields):
        """An output_data from the node (its reader thread): to the stream waiting for it."""
        with self._reads_lock:
            waiting = self._reads.get(fields["request_id"])
        if waiting is not None:
            waiting.put(fields)

    # -- relayed streams (srun -i of a client on the node's host) ---------------------------

    def open_stream(self, request_id):
        """A RelayStream for a relayed attach, or None when MAX_RELAY_STREAMS are open on this
        link already (or it is closed, or the id is taken)."""
        with self._outbox_lock:
            if self.closed or request_id in self._streams or len(self._streams) >= protocol.MAX_RELAY_STREAMS:
                return None
            stream = self._streams[request_id] = RelayStream(self, request_id)
        return stream

    def cancel_stream(self, request_id):
        """The node's relay_cancel (its reader thread): that stream ends; an id without an open
        stream is ignored."""
        with self._outbox_lock:
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                stream.cancelled = True
                self._room.notify_all()
        if stream is not None:
            stream.wake_input()

    def relay_input(self, fields):
        """The node's relay_input (its reader thread): its client's input frame, for the stream's
        thread to pass on. Input for a request id without an open stream, or for a stream not
        granted input, is ignored; input beyond the window ends the stream's input (see
        RelayStream.put_input)."""
        with self._outbox_lock:
            stream = None if self.closed else self._streams.get(fields["request_id"])
        if stream is not None and not stream.put_input(fields):
            self.log("node %s: more input for stream %d than the window allows (%d bytes, %d frames): "
                     "its input is ended" % (self.name, stream.request_id, protocol.RELAY_INPUT_WINDOW,
                                             protocol.MAX_RELAY_INPUT_FRAMES))

    def send_frame(self, stream, frame):
        """Queue one frame of a relayed stream, waiting while the outbox is full (see
        STREAM_OUTBOX_BYTES). ConnectionError once the stream is over: cancelled by the node,
        the link closed, or no room for STREAM_SEND_TIMEOUT (then `stream.given_up` says so)."""
        data = protocol.encode(protocol.node_message("relay_frame", request_id=stream.request_id, frame=frame))
        deadline = time.monotonic() + STREAM_SEND_TIMEOUT
        with self._room:
            while True:
                if stream.cancelled or self.closed:
                    raise ConnectionError("the stream through node %s has ended" % self.name)
                if not self._outbox_bytes or self._outbox_bytes + len(data) <= STREAM_OUTBOX_BYTES:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    stream.given_up = "the link to node %s stayed full for %g s" % (self.name, STREAM_SEND_TIMEOUT)
                    raise ConnectionError(stream.given_up)
                self._room.wait(left)
            self._enqueue(data)
        self._wake()

    def end_stream(self, stream):
        """Forget a stream that has ended; one that was given up tells the node why (one small
        frame, past the flow control: the node's client must not wait for a frame that never
        comes)."""
        with self._outbox_lock:
            if self._streams.get(stream.request_id) is stream:
                del self._streams[stream.request_id]
        if stream.given_up and not stream.cancelled:
            self._send("relay_frame", request_id=stream.request_id, frame=protocol.error(
                errors.UNAVAILABLE, "the master stopped streaming this job: %s; the job itself is not "
                "affected (see 'mgpu queue')" % stream.given_up))

    def close(self):
        """End the link (any thread): serve() returns, its streams end and the reads waiting
        for it return at once; dispose() frees the pipe."""
        if not self.closed:
            self.closed = True
            self._wake()
            self.connection.close()
            with self._outbox_lock:
                self._room.notify_all()
                streams = list(self._streams.values())
            for stream in streams:
                stream.wake_input()
            with self._reads_lock:
                waiting = list(self._reads.values())
            for each in waiting:
                each.put(None)

    def dispose(self):
        """After serve() has returned: free the wake-up pipe."""
        self.close()
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass


class RelayStream:
    """The master's end of one relayed attach, connection-like for Master._stream: send(frame)
    goes to the node as a relay_frame for this request (flow-controlled by the link), and
    peer_closed() is true once the node cancelled the stream or the link ended. Once granted
    input (accept_input()), readable(timeout) and read(timeout) give the client's input frames
    as a local client's connection does: each one the node relayed (relay_input), answered with
    relay_input_done as it is taken; at most protocol.RELAY_INPUT_WINDOW bytes and
    MAX_RELAY_INPUT_FRAMES frames wait here."""

    def __init__(self, link, request_id):
        self.link = link
        self.request_id = request_id
        self.cancelled = False
        self.given_up = None  # why the master gave the stream up (one phrase), or None
        self._input = None    # a deque of input frames once input is granted, else None
        self._input_bytes = 0
        self._taken = [0, 0]  # frames and bytes taken so far (what relay_input_done says)
        self._overflow = False
        self._woken = False   # a job update came: the next (or current) readable() returns at once
        self._arrived = threading.Condition()

    def accept_input(self):
        """Input is granted to this stream: relay_input for it is queued from now on."""
        with self._arrived:
            if self._input is None:
                self._input = collections.deque()

    def put_input(self, fields):
        """Queue a relay_input's frame (the link's reader thread); False when it goes beyond the
        window (the stream's input then ends with an error). Ignored without accept_input()."""
        size = len(fields.get("data") or b"")
        with self._arrived:
            if self._input is None or self._overflow or self.peer_closed():
                return True
            if (self._input_bytes + size > protocol.RELAY_INPUT_WINDOW
                    or len(self._input) >= protocol.MAX_RELAY_INPUT_FRAMES):
                self._overflow = True
                self._input.clear()
                self._input_bytes = 0
                self._arrived.notify_all()
                return False
            self._input.append(fields)
            self._input_bytes += size
            self._arrived.notify_all()
        return True

    def wake_input(self):
        """The stream has ended (cancelled, or its link closed): a thread waiting for input
        looks again at once."""
        with self._arrived:
            self._arrived.notify_all()

    def wake(self):
        """A job update for the stream: a wait in readable() ends now (or the next one does not
        wait), as transport.Connection.wake() does for a local client."""
        with self._arrived:
            self._woken = True
            self._arrived.notify_all()

    def readable(self, timeout):
        """True when an input frame is queued, or the stream's input is over (read() says how),
        now or within `timeout` seconds; False at once after wake()."""
        with self._arrived:
            if not self._ready() and not self._woken:
                self._arrived.wait(max(0.0, timeout))
            self._woken = False
            return self._ready()

    def _ready(self):
        return bool(self._input) or self._overflow or self.peer_closed()

    def read(self, timeout):
        """The next input frame as a client's connection gives it (protocol.check_input reads
        it); None once the stream has ended and nothing is queued. MgpuError(TIMEOUT) when none
        comes within `timeout`; MgpuError(BAD_REQUEST) after the node sent beyond the window."""
        with self._arrived:
            if not self._ready():
                self._arrived.wait(max(0.0, timeout))
            if self._overflow:
                raise MgpuError(errors.BAD_REQUEST, "node %s sent more input than its window allows (%d bytes, "
                                "%d frames): the job's input is ended"
                                % (self.link.name, protocol.RELAY_INPUT_WINDOW, protocol.MAX_RELAY_INPUT_FRAMES))
            if not self._input:
                if self.peer_closed():
                    return None
                raise MgpuError(errors.TIMEOUT, "no input within %.0f s" % timeout)
            fields = self._input.popleft()
            size = len(fields.get("data") or b"")
            self._input_bytes -= size
            self._taken[0] += 1
            self._taken[1] += size
            frames, taken = self._taken
        self.link._send("relay_input_done", request_id=self.request_id, frames=frames, bytes=taken)
        return protocol.input_frame(fields.get("data"), bool(fields.get("eof")), fields.get("rows"),
                                    fields.get("cols"))

    def reply(self, message):
        """The attach's answer, before any frame."""
        self.link.relay_reply(self.request_id, message)

    def send(self, frame):
        self.link.send_frame(self, frame)

    def peer_closed(self):
        return self.cancelled or self.link.closed

    def close(self):
        self.link.end_stream(self)
