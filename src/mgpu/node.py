"""The node daemon's shell (`mgpu node`): one further GPU host of a cluster.

Owns: the node's side of the link to the master (connect with backoff, TLS handshake with the
cluster key, registration and reconciliation, heartbeats, the outbox of reports), turning the
master's messages into calls on the NodeAgent, and the node's threads, clock and log. Must not:
decide what runs where (the master does), spawn or signal (the agent's launcher does), open
sockets itself (transport.py does) or speak TLS details (auth.py does).

The link, as the node sees it:
- connect (backoff 0.5 s doubling to 10 s; one log line per change of what goes wrong, not per
  try), TLS 1.3 handshake pinned to the cluster certificate, then `node_register` with the GPUs
  and every attempt this node supervises or has a record of. The master answers `keep`: the
  attempts it still considers running here. Every other attempt is ended, fenced, and forgotten;
  kept attempts that ended meanwhile are reported again from their records.
- then one thread does all the link's I/O (an SSL socket is not for two threads at once): it
  sends the outbox (job_started / job_exited / job_lost, posted by any thread, kept across
  reconnects, bounded) and a heartbeat every heartbeat_interval, and reads the master's
  `launch`, `signal`, `release` and `kill`. A frame that fails protocol.check_node_message
  gets one log line and the link is dropped and made again.
- reports may reach the master twice (a report resent after a cut); the controller ignores
  reports about attempts that are not current, and a repeated launch of an attempt the node
  already has is ignored here (its record exists).

Local clients: the node serves `mgpu srun/queue/cancel` of its host's users on its UNIX socket and
relays each request to the master (`relay`), with the user name, uid, gid and home it read from
the kernel (SO_PEERCRED) and this host's passwd; the master answers through the link
(`relay_reply`). While the link is down such a request gets one line saying so.

`srun -i` from this host: its `attach` is relayed the same way; when the master grants it, the
link thread queues the stream's `relay_frame`s for that request on a bounded per-stream queue
and the client's thread forwards them in order until the `end` frame or an error. When the client
goes away (Ctrl+C detaches), reads too slowly (its queue overflows: one error line) or nothing
comes for STREAM_IDLE_TIMEOUT, the node sends `relay_cancel` and the master stops that stream.
When the link is lost every waiting client gets one error line, and what was queued for the
lost link's requests and streams is not sent to the next one. Frames for a request id this node
does not follow are dropped.

Its input (`srun -i`, `--pty`): when the master's reply grants the attach input, the client's
thread also reads the client's input frames (checked as the master checks a local client's) and
posts each as `relay_input`, at most protocol.RELAY_INPUT_WINDOW bytes and MAX_RELAY_INPUT_FRAMES
frames ahead of the master's `relay_input_done`; while the window is full it reads nothing more
from its client (whose own socket then holds it back), and output keeps flowing. A client that
sends what is not an input frame gets one error line and its stream is cancelled.

Jobs do not depend on this daemon: SIGTERM/SIGINT stop it, running jobs carry on under their
supervisors, and the next start re-adopts them from their records.
"""

import collections
import errno
import os
import pwd
import queue
import select
import signal
import ssl
import sys
import threading
import time

from . import auth, config as configuration, errors, protocol, transport
from .errors import MgpuError
from .gpus import FakeInventory, open_inventory
from .launcher import boot_id
from .model import MAX_GPU_INDEX, MAX_JOB_ID, Job
from .nodeagent import NodeAgent
from .statelock import lock_state_dir

CONNECT_TIMEOUT = 5.0
REGISTER_TIMEOUT = 30.0     # the master's answer to node_register
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
READ_SLICE = 0.5            # the link thread looks at its outbox at least this often
MAX_OUTBOX = 100_000        # reports kept while the master is out of reach; the oldest go first
MAX_RELAYED = 4096          # relayed requests waiting for the master's answer at once
MAX_STREAM_BACKLOG = 1 << 20  # about the bytes of frames one relayed stream holds for its client
FRAME_COST = 1024             # what a frame counts for in that backlog, besides its output data
STREAM_IDLE_TIMEOUT = 90.0    # a relayed stream with no frame this long is over (the master sends
                              # one every 30 s; srun waits 120 s)
CLIENT_POLL = 0.5             # a streaming client's thread looks this often whether it went away
INPUT_READ_TIMEOUT = 5.0      # the rest of an input frame a client has begun to send


def log(*lines):
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write("".join("%s %s\n" % (stamp, line) for line in lines))
    sys.stderr.flush()


class LinkDown(Exception):
    """Why a link could not be made or was lost: one line for the log."""


def _plural(count, word):
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


def _clip(text, limit=protocol.MAX_REASON):
    return None if text is None else str(text)[:limit]


# ---------------------------------------------------------------------------------------------
# What crosses the link


def report_message(event):
    """The node-link message for one of the agent's events, or None (gpu_usage is sent with
    the heartbeats)."""
    kind = event.get("kind")
    if kind == "job_started":
        return protocol.node_message("job_started", job_id=event["job_id"], attempt=event["attempt"],
                                     sup_pid=event.get("sup_pid"), sup_start=event.get("sup_start"),
                                     pgid=event.get("pgid"))
    if kind == "job_exited":
        return protocol.node_message("job_exited", job_id=event["job_id"], attempt=event["attempt"],
                                     exit_code=event.get("exit_code"), signal=event.get("signal"),
                                     error=_clip(event.get("error")))
    if kind == "job_lost":
        return protocol.node_message("job_lost", job_id=event["job_id"], attempt=event["attempt"],
                                     started=bool(event.get("started")), reason=_clip(event.get("reason")))
    if kind == "job_port":
        return protocol.node_message("job_port", job_id=event["job_id"], attempt=event["attempt"],
                                     port=event["port"])
    return None


def job_from_launch(record):
    """A model.Job from a launch's job record, checked as far as this node relies on it;
    ValueError with one phrase otherwise."""
    def need(name, test, what):
        if not test(record.get(name)):
            raise ValueError("job field %s must be %s" % (name, what))

    def is_int(value, low=0, high=1 << 62):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    def is_text(value):
        return isinstance(value, str) and "\0" not in value

    def optional(test):
        return lambda value: value is None or test(value)

    need("id", lambda v: is_int(v, 1, MAX_JOB_ID), "a job id")
    need("attempt", lambda v: is_int(v, 1, 1 << 31), "an attempt number")
    need("user", lambda v: is_text(v) and 0 < len(v) <= 256, "a user name")
    need("uid", optional(lambda v: is_int(v, 0, 1 << 32)), "a user id")
    need("gid", optional(lambda v: is_int(v, 0, 1 << 32)), "a group id")
    need("command", lambda v: isinstance(v, list) and v and all(is_text(a) for a in v), "a command")
    need("cwd", lambda v: is_text(v) and v.startswith("/"), "an absolute path")
    need("output", lambda v: is_text(v) and v.startswith("/"), "an absolute path")
    need("error", optional(lambda v: is_text(v) and v.startswith("/")), "an absolute path")
    need("env_setup", optional(is_text), "text")
    need("name", optional(is_text), "text")
    need("alloc", lambda v: isinstance(v, list) and all(is_int(g, 0, MAX_GPU_INDEX) for g in v),
         "a list of GPU indices")
    need("umask", optional(lambda v: is_int(v, 0, 0o777)), "a umask")
    need("restarts", optional(is_int), "a count")
    number = optional(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0)
    need("time_limit", number, "a number of seconds")
    need("start_time", number, "a time")
    for name in ("nodelist", "exclude"):
        need(name, optional(lambda v: isinstance(v, list) and all(is_text(n) for n in v)), "a list of node names")

    def host_gpus(v):
        return isinstance(v, list) and all(
            isinstance(p, list) and len(p) == 2 and is_text(p[0]) and isinstance(p[1], list)
            and all(is_int(g, 0, MAX_GPU_INDEX) for g in p[1]) for p in v)

    for name in ("parts", "node_gpu_ids"):
        need(name, optional(host_gpus), "a list of [host, [GPU ids]]")
    need("part_status", optional(lambda v: isinstance(v, list)), "a list")
    return Job.from_dict(record)


def _keep_pairs(result):
    """{(job_id, attempt)} from a registration reply's result; ValueError when malformed."""
    if not isinstance(result, dict) or not isinstance(result.get("keep"), list):
        raise ValueError("its registration reply has no keep list")
    keep = set()
    for pair in result["keep"]:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
            raise ValueError("its keep list holds %r, not [job_id, attempt]" % (pair,))
        keep.add((pair[0], pair[1]))
    return keep


# ---------------------------------------------------------------------------------------------
# The daemon


class NodeDaemon:
    def __init__(self, config, log=log):
        self.config = config
        self.log = log
        if not config.master:
            raise configuration.ConfigError("no master to join: give --master HOST:PORT (or MGPU_MASTER_HOST, "
                                            "or 'master' in the config file)")
        if not protocol.valid_node_name(config.node_name):
            raise configuration.ConfigError(
                "node name %r: use 1 to %d letters, digits, '.', '_' or '-' (--name NAME)"
                % (config.node_name, protocol.MAX_NODE_NAME))
        self.name = config.node_name
        self.master_host, self.master_port = configuration.parse_address(config.master, "master")
        self.master_address = ("[%s]:%d" if ":" in self.master_host else "%s:%d") % (
            self.master_host, self.master_port)
        # The key is read and checked once: a bad file stops the node here, with one line.
        self.key = auth.load_key(config.key_file)
        self.tls_context = auth.client_context(self.key)
        self.heartbeat_interval = config.heartbeat_interval
        self.lock_fd = lock_state_dir(config.state_dir)
        self.submit_only = config.submit_only
        if self.submit_only:
            inventory = FakeInventory([])
            self.inventory_line = "none: a submit-only node relays its host's clients and runs no job"
        else:
            inventory, self.inventory_line = open_inventory(config.fake_gpus)
        # Forks the launcher helper: before any thread of this daemon.
        self.agent = NodeAgent(self.name, inventory, config.state_dir, self._on_agent_event,
                               lock_fd=self.lock_fd, remote=True)
        self._stopping = threading.Event()
        self._outbox = collections.deque()
        self._outbox_lock = threading.Lock()
        self._dropped = 0
        self._usage = None            # {"index": MB used outside mgpu}, once measured
        self._usage_changed = False
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._link_thread = None
        self.connected = threading.Event()   # registered with the master (for tests)
        self._relayed = {}                   # request id -> the queue its client thread waits on
        self._streams = {}                   # request id -> the _RelayedStream of a relayed attach
        self._relay_lock = threading.Lock()
        self._next_relay = 1
        self.socket_path = config.socket
        self.server = transport.unix_server(config.socket, self._serve_client, self.log,
                                            max_connections=config.max_connections,
                                            max_connections_per_user=config.max_connections_per_user)

    # -- running ----------------------------------------------------------------------------

    def run(self, install_signals=True):
        c = self.config
        self.log("mgpu node %s: master %s, state %s, key %s (sha256 %s...)"
                 % (self.name, self.master_address, c.state_dir, self.key.path, self.key.fingerprint[:23]))
        self.log("GPUs: %s" % self.inventory_line)
        self.agent.adopt_records()
        self.agent.start()
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, lambda *_: self.stop())
        self._link_thread = threading.Thread(target=self._link, name="master-link", daemon=True)
        self._link_thread.start()
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="server", daemon=True).start()
        self.log("serving this host's clients on %s (relayed to the master)" % self.socket_path)
        try:
            while not self._stopping.wait(0.5):
                pass
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.server.remove()
            self._fail_relayed("the node is stopping")
            self._link_thread.join(timeout=2.0)
            self.agent.stop()
            os.close(self.lock_fd)  # the launcher helper keeps its copy until it has handed over
        running = self.agent.running_count()
        if running:
            self.log("node stopped; %s carr%s on under %s supervisor%s"
                     % (_plural(running, "running job"), "ies" if running == 1 else "y",
                        "its" if running == 1 else "their", "" if running == 1 else "s"))
        else:
            self.log("node stopped")
        return 0

    def stop(self):
        """Ask the daemon to stop (signal handlers call this: it only sets and wakes)."""
        self._stopping.set()
        self._wake()

    # -- reports ----------------------------------------------------------------------------

    def _on_agent_event(self, event):
        """The agent's emit(): from its threads and, for a launch refused before it started,
        from the link thread. Never blocks on the network."""
        if event.get("kind") == "gpu_usage":
            usage = {str(index): int(mb) for index, mb in (event.get("usage") or {}).items()}
            with self._outbox_lock:
                self._usage, self._usage_changed = usage, True
            self._wake()
            return
        message = report_message(event)
        if message is not None:
            self._post(message)

    def _post(self, message):
        with self._outbox_lock:
            if len(self._outbox) >= MAX_OUTBOX:
                self._outbox.popleft()
                self._dropped += 1
            self._outbox.append(message)
        self._wake()

    def _wake(self):
        _poke(self._wake_write)

    def _drain_wake(self):
        _drain(self._wake_read)

    # -- the link ---------------------------------------------------------------------------

    def _link(self):
        backoff = BACKOFF_FIRST
        last_problem = None
        while not self._stopping.is_set():
            try:
                connection, keep_count = self._join()
            except LinkDown as e:
                problem = str(e)
                if problem != last_problem:
                    self.log("node %s: cannot join master %s: %s; retrying (every %g s at most)"
                             % (self.name, self.master_address, problem, BACKOFF_MAX))
                    last_problem = problem
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff, last_problem = BACKOFF_FIRST, None
            self.connected.set()
            try:
                self._serve(connection)
                reason = None
            except LinkDown as e:
                reason = str(e)
            finally:
                self.connected.clear()
                connection.close()
                self._fail_relayed("the link to the master %s was lost; try again shortly" % self.master_address)
                self.agent.close_all_input()  # its jobs' input came through this link: it has ended
            if reason is not None and not self._stopping.is_set():
                self.log("node %s: link lost: %s; reconnecting" % (self.name, reason))

    def _join(self):
        """Connect, authenticate, register and reconcile: the registered Connection, or
        LinkDown."""
        try:
            sock = transport.connect_tcp(self.master_host, self.master_port, CONNECT_TIMEOUT)
        except OSError as e:
            raise LinkDown("connection failed: %s" % (e.strerror or e)) from None
        try:
            tls = auth.wrap_client(sock, self.tls_context, self.key, auth.HANDSHAKE_TIMEOUT)
        except MgpuError as e:
            raise LinkDown(e.message) from None
        connection = transport.Connection(tls, protocol.MAX_NODE_FRAME)
        try:
            reported = self.agent.attempts()
            info = self.agent.info()
            connection.send(protocol.node_message(
                "node_register", name=self.name, gpus=info["gpus"], attempts=reported, boot_id=boot_id(),
                submit_only=self.submit_only))
            try:
                reply = self._read(connection, REGISTER_TIMEOUT)
            except _EndOfStream:
                raise LinkDown("the master closed the link before it answered our registration") from None
            if reply is None:
                raise LinkDown("the master did not answer our registration within %g s" % REGISTER_TIMEOUT)
            if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
                raise LinkDown("the master's answer to our registration is not a reply")
            if not reply["ok"]:
                raise LinkDown("the master refused us: %s" % _clip(reply.get("message") or reply.get("error"), 300))
            try:
                keep = _keep_pairs(reply.get("result"))
            except ValueError as e:
                raise LinkDown("the master's answer is malformed: %s" % e) from None
            interval = reply["result"].get("heartbeat_interval")
            if isinstance(interval, (int, float)) and not isinstance(interval, bool) and 0.1 <= interval <= 86400:
                self.heartbeat_interval = float(interval)
        except LinkDown:
            connection.close()
            raise
        except (OSError, MgpuError) as e:
            connection.close()
            raise LinkDown(self._describe(e)) from None
        self._reconcile(reported, keep)
        gpus = len(info["gpus"])
        self.log("node %s: connected to master %s" % (self.name, self.master_address))
        self.log("node %s: registered with %s; keeping %s"
                 % (self.name, _plural(gpus, "GPU"), _plural(len(keep), "running job")))
        return connection, len(keep)

    def _reconcile(self, reported, keep):
        """After the master's keep: end (fenced) and forget every attempt it does not keep;
        report again the start or end of kept attempts that started or ended (a report sent
        before a cut may not have arrived; duplicates are ignored)."""
        killed = 0
        for item in reported:
            pair = (item["job_id"], item["attempt"])
            if pair not in keep:
                if item["phase"] != "exited":
                    killed += 1
                self.agent.kill_attempt(*pair)
            elif item["phase"] in ("started", "exited"):
                event = self.agent.recorded_report(*pair)
                if event is not None:
                    self._post(report_message(event))
        if killed:
            self.log("node %s: ending %s the master no longer runs here"
                     % (self.name, _plural(killed, "attempt")))

    def _serve(self, connection):
        """The link's one I/O thread: send reports and heartbeats, read the master's orders."""
        tls = connection.sock
        next_heartbeat = time.monotonic() + self.heartbeat_interval
        while not self._stopping.is_set():
            self._drain_wake()
            now = time.monotonic()
            heartbeat = now >= next_heartbeat
            with self._outbox_lock:
                if self._usage_changed:
                    heartbeat, self._usage_changed = True, False
                usage = self._usage
                dropped, self._dropped = self._dropped, 0
            if dropped:
                self.log("node %s: the outbox was full: the %s oldest reports were dropped"
                         % (self.name, dropped))
            try:
                if heartbeat:
                    fields = {} if usage is None else {"usage": usage}
                    connection.send(protocol.node_message("node_heartbeat", **fields))
                    next_heartbeat = now + self.heartbeat_interval
                self._send_outbox(connection)
                wait = max(0.0, min(READ_SLICE, next_heartbeat - time.monotonic()))
                if not tls.pending():
                    readable, _, _ = select.select([tls, self._wake_read], [], [], wait)
                    if tls not in readable:
                        continue
                message = self._read(connection, READ_SLICE)
                while message is not None:
                    self._handle(message)
                    message = self._read(connection, 0)  # frames already buffered
            except (OSError, MgpuError) as e:
                raise LinkDown(self._describe(e)) from None
            except _EndOfStream:
                raise LinkDown("the master closed the link") from None

    def _send_outbox(self, connection):
        while True:
            with self._outbox_lock:
                if not self._outbox:
                    return
                message = self._outbox[0]
            connection.send(message)  # on failure it stays first in the outbox
            with self._outbox_lock:
                if self._outbox and self._outbox[0] is message:
                    self._outbox.popleft()

    @staticmethod
    def _read(connection, timeout):
        """The next message; None when none is complete within `timeout` (what arrived of it
        stays buffered). _EndOfStream at the master's end of stream."""
        try:
            message = connection.read(timeout)
        except MgpuError as e:
            if e.code == errors.TIMEOUT:
                return None
            raise
        if message is None:
            raise _EndOfStream()
        return message

    @staticmethod
    def _describe(error):
        if isinstance(error, MgpuError):
            return error.message
        if isinstance(error, ssl.SSLError):
            return "link refused: %s" % auth.describe_tls_failure(error.reason, error.strerror)
        if isinstance(error, OSError):
            if error.errno in (errno.EPIPE, errno.ECONNRESET):
                return "the master closed the link"
            return error.strerror or str(error) or type(error).__name__
        return str(error)

    # -- the master's orders ----------------------------------------------------------------

    def _handle(self, message):
        try:
            type_, fields = protocol.check_node_message(message, protocol.MASTER_TO_NODE)
        except MgpuError as e:
            raise LinkDown("bad frame from the master: %s" % e.message) from None
        if type_ == "launch":
            self._launch(fields["job"], fields["env"], bool(fields.get("choose_port")))
        elif type_ == "signal":
            self.agent.signal_job(fields["job_id"], fields["attempt"], fields["signum"])
        elif type_ == "release":
            self.agent.release(fields["job_id"], fields["attempt"])
        elif type_ == "output_read":
            self._post(self._read_output(fields))
        elif type_ == "relay_reply":
            with self._relay_lock:
                waiting = self._relayed.pop(fields["request_id"], None)
            if waiting is not None:
                waiting.put(fields["reply"])
            else:
                self._to_stream(fields["request_id"], fields["reply"])
        elif type_ == "relay_frame":
            self._to_stream(fields["request_id"], fields["frame"])
        elif type_ == "relay_input_done":
            with self._relay_lock:
                stream = self._streams.get(fields["request_id"])
            if stream is not None:  # else: a stream this node no longer follows
                stream.input_taken(fields["frames"], fields["bytes"])
        elif type_ == "job_input":
            self._job_input(fields)
        elif type_ == "kill":
            self.log("node %s: kill job %d attempt %d (the master does not run it)"
                     % (self.name, fields["job_id"], fields["attempt"]))
            self.agent.kill_attempt(fields["job_id"], fields["attempt"])

    def _job_input(self, fields):
        """A client's input for a job running here (the link thread): to its supervisor,
        through the agent's bounded channel. The master sends at most protocol.INPUT_WINDOW
        bytes ahead of our job_input_done; a master that sends more has the input closed."""
        job_id, attempt = fields["job_id"], fields["attempt"]

        def progress(written, closed):
            self._post(protocol.node_message("job_input_done", job_id=job_id, attempt=attempt,
                                             written=written, closed=closed))

        result = self.agent.send_input(job_id, attempt, fields.get("data"), bool(fields.get("eof")),
                                       fields.get("rows"), fields.get("cols"), bool(fields.get("hangup")),
                                       on_progress=progress)
        if result == "busy":
            self.log("node %s: job %d: more input than the master may send at once: its input is closed"
                     % (self.name, job_id))
            self.agent.close_input(job_id, attempt)
            progress(0, True)
        elif result == "closed" and not fields.get("hangup"):
            progress(0, True)

    def _refuse_launch(self, job_id, attempt, why, error):
        """A launch this node will not carry out: one log line, and the job's end (never started,
        with `error` as its reason) reported to the master."""
        self.log("node %s: refused launch of job %s attempt %s: %s" % (self.name, job_id, attempt, why))
        self._post(protocol.node_message("job_exited", job_id=job_id, attempt=attempt, exit_code=None,
                                         signal=None, error=_clip(error)))

    def _launch(self, record, env, choose_port=False):
        try:
            job = job_from_launch(record)
        except ValueError as e:
            job_id, attempt = record.get("id"), record.get("attempt")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (job_id, attempt)):
                raise LinkDown("bad frame from the master: launch: %s" % e) from None
            self._refuse_launch(job_id, attempt, e, "bad launch request: %s" % e)
            return
        if self.submit_only:
            self._refuse_launch(job.id, job.attempt, "this is a submit-only node",
                                "node %s is a submit-only node: it runs no job" % self.name)
            return
        gpus = ",".join(str(g) for g in job.alloc) or "none"
        self.log("node %s: launch job %d attempt %d as %s on GPUs %s"
                 % (self.name, job.id, job.attempt, job.user, gpus))
        self.agent.start_job(job, dict(env), choose_port)


    def _read_output(self, fields):
        """An output_data answering the master's output_read: the piece of a job's output file
        asked for, read as the job's user on this host (regular files of that user only)."""
        answer = {"request_id": fields["request_id"], "data": "", "state": "refused"}
        try:
            uid = pwd.getpwnam(fields["user"]).pw_uid
        except KeyError:
            return protocol.node_message("output_data", **answer)
        fd = self.agent.open_output(fields["path"], uid)
        if fd is None:
            answer["state"] = "missing"
            return protocol.node_message("output_data", **answer)
        try:
            data = os.pread(fd, fields["max_bytes"], fields["offset"])
            answer.update(state="ok", data=data.decode("latin-1"))
        except OSError:
            pass
        finally:
            os.close(fd)
        return protocol.node_message("output_data", **answer)

    # -- this host's clients ------------------------------------------------------------------

    def _serve_client(self, connection, peer):
        """One local client's connection (a server thread): each request is relayed to the
        master with the identity the kernel gave, and its reply passed back. An attach streams
        the job and ends the connection, as on the master."""
        for type_, _, message in connection.requests():
            if type_ == "attach":
                self._relay_stream(connection, message, peer)
                return
            try:
                reply = self._relay(message, peer)
            except MgpuError as e:
                reply = protocol.error_from(e)
            if not connection.reply(reply):
                return

    def _relay(self, request, peer):
        identity = self._relayed_identity(peer)
        waiting = queue.SimpleQueue()
        with self._relay_lock:
            if len(self._relayed) >= MAX_RELAYED:
                raise MgpuError(errors.UNAVAILABLE, "node %s has too many requests waiting for the master; "
                                "try again" % self.name)
            request_id = self._post_relay(request, identity)
            self._relayed[request_id] = waiting
        try:
            return waiting.get(timeout=transport.REPLY_TIMEOUT)
        except queue.Empty:
            with self._relay_lock:
                self._relayed.pop(request_id, None)
            raise MgpuError(errors.TIMEOUT, "the master did not answer within %.0f s" % transport.REPLY_TIMEOUT) from None

    def _relayed_identity(self, peer):
        """The identity a relayed request carries: the client's account on this host, from the
        uid the kernel gave. MgpuError when it has none, or when the master is out of reach."""
        try:
            account = pwd.getpwuid(peer.uid)
        except KeyError:
            raise MgpuError(errors.PERMISSION_DENIED, "your uid %d has no account on this host" % peer.uid) from None
        if not self.connected.is_set():
            raise MgpuError(errors.UNAVAILABLE, "node %s is not connected to its master %s right now; try "
                            "again shortly" % (self.name, self.master_address))
        return {"user": account.pw_name, "uid": account.pw_uid, "gid": account.pw_gid, "home": account.pw_dir}

    def _post_relay(self, request, identity):
        """Queue a relay for the master; its request id. Called with the relay lock held, so that
        a lost link's _fail_relayed cannot come between the caller's registration and this."""
        request_id = self._next_relay
        self._next_relay += 1
        self._post(protocol.node_message("relay", request_id=request_id, request=request, peer=identity))
        return request_id

    def _fail_relayed(self, why):
        """The link is lost (or the node stops): every client waiting on it gets one error line,
        and the relays and cancels still queued for it are dropped (their clients have their
        answer; the master's streams ended with the link)."""
        failure = protocol.error(errors.UNAVAILABLE, why)
        with self._relay_lock:
            waiting, self._relayed = list(self._relayed.values()), {}
            streams, self._streams = list(self._streams.values()), {}
            with self._outbox_lock:
                kept = [m for m in self._outbox if m["type"] not in ("relay", "relay_cancel", "relay_input")]
                self._outbox.clear()
                self._outbox.extend(kept)
        for each in waiting:
            each.put(failure)
        for stream in streams:
            stream.fail(failure)

    # -- srun -i from this host ---------------------------------------------------------------

    def _relay_stream(self, connection, request, peer):
        """A local client's attach: relayed, then its reply and the stream's frames passed on
        until the `end` frame or an error; when the master granted the attach input, the
        client's input frames go to the master meanwhile (relay_input). A client that goes
        away, sends what is not input, or a stream that falls silent, makes the master stop the
        stream (relay_cancel)."""
        try:
            request_id, stream = self._open_stream(request, peer)
        except MgpuError as e:
            connection.reply(protocol.error_from(e))
            return
        ended = False  # by the master (its end frame or an error) or by the link: nothing to cancel
        try:
            timeout = transport.REPLY_TIMEOUT
            replied = False
            while True:
                item = self._next_in_stream(connection, stream, timeout, request_id)
                if item is None:
                    return  # the client went away (srun detached)
                connection.send(item)
                if not replied:  # the attach's reply: input granted?
                    replied = True
                    result = item.get("result")
                    if request.get("input") and item.get("ok") and isinstance(result, dict) and result.get("input"):
                        stream.accept_input()
                timeout = STREAM_IDLE_TIMEOUT
                if item.get("type") == "end" or item.get("ok") is False:
                    ended = True
                    return
        except OSError:
            return  # the client went away
        except MgpuError as e:
            connection.reply(protocol.error_from(e))
        finally:
            self._close_stream(request_id, stream, cancel=not ended)

    def _open_stream(self, request, peer):
        """(request id, _RelayedStream) of a relayed attach; MgpuError when it cannot be
        relayed or this node streams as many jobs as it may."""
        identity = self._relayed_identity(peer)
        stream = _RelayedStream()
        with self._relay_lock:
            if len(self._streams) >= protocol.MAX_RELAY_STREAMS:
                raise MgpuError(errors.UNAVAILABLE, "node %s already streams %d jobs (srun -i), the most it "
                                "may; try again later" % (self.name, protocol.MAX_RELAY_STREAMS))
            request_id = self._post_relay(request, identity)
            self._streams[request_id] = stream
        return request_id, stream

    def _next_in_stream(self, connection, stream, timeout, request_id=None):
        """The stream's next reply or frame (relaying the client's input meanwhile, once it is
        granted); None when the client went away first; MgpuError when nothing comes within
        `timeout`, or when the client sent what is not input."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MgpuError(errors.TIMEOUT, "the master sent nothing about this job for %.0f s: stopped "
                                "following it; the job itself is not affected (see 'mgpu queue')" % timeout)
            if stream.takes_input():
                stream.clear_wake()
                item = stream.get(0)
                if item is not None:
                    return item
                if not self._pass_input(connection, stream, request_id, min(left, CLIENT_POLL)):
                    return None
                continue
            item = stream.get(min(left, CLIENT_POLL))
            if item is not None:
                return item
            if connection.peer_closed():
                return None

    def _pass_input(self, connection, stream, request_id, wait):
        """Wait up to `wait` for the client's next input frame (while fewer than the window's
        bytes and frames wait for the master's relay_input_done), the master's next item or
        its answer; relay that input frame. False when the client went away. MgpuError (one
        line for the client) when it sent what is not an input frame."""
        if not stream.input_room():
            select.select([stream.fileno()], [], [], wait)
            return not (connection.peer_closed() or _hung_up(connection.sock))
        if not connection.readable(0):
            readable, _, _ = select.select([connection.sock, stream.fileno()], [], [], wait)
            if connection.sock not in readable:
                return True
        try:
            message = connection.read(INPUT_READ_TIMEOUT)
        except MgpuError as e:
            if e.code == errors.TIMEOUT:
                return True  # the rest of the frame is on its way: what came stays buffered
            raise
        if message is None:
            return False
        frame = protocol.check_input(message)
        if stream.input_sent(len(frame["data"] or b""), frame["eof"]):
            fields = {"request_id": request_id}
            if frame["data"]:
                fields["data"] = frame["data"].decode("latin-1")
            if frame["rows"] is not None:
                fields.update(rows=frame["rows"], cols=frame["cols"])
            if frame["eof"]:
                fields["eof"] = True
            self._post(protocol.node_message("relay_input", **fields))
        return True

    def _close_stream(self, request_id, stream, cancel):
        """Forget a stream this node followed; tell the master to stop it when it may still
        run there."""
        with self._relay_lock:
            current = self._streams.get(request_id) is stream
            if current:
                del self._streams[request_id]
        stream.close()
        if current and cancel:
            self._post(protocol.node_message("relay_cancel", request_id=request_id))

    def _to_stream(self, request_id, item):
        """A reply or frame for a relayed stream (the link thread): queued for its client. One
        for a request this node does not follow is dropped; one that overflows the stream's
        queue drops the stream: its client gets one error line and the master is told to stop."""
        with self._relay_lock:
            stream = self._streams.get(request_id)
        if stream is None or stream.put(item):
            return
        with self._relay_lock:
            if self._streams.get(request_id) is not stream:
                return
            del self._streams[request_id]
        self._post(protocol.node_message("relay_cancel", request_id=request_id))
        stream.fail(protocol.error(errors.UNAVAILABLE, "stopped streaming the job: its output came faster than "
                                   "it was read (over %d KB waiting); the job itself is not affected (see "
                                   "'mgpu queue')" % (MAX_STREAM_BACKLOG // 1024)), discard=True)


def _hung_up(sock):
    """Whether a local client has closed its connection although input it sent is still unread
    there (peer_closed() sees that input first): POLLHUP, which a half-close does not raise."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLHUP)
        return any(events & select.POLLHUP for _, events in poller.poll(0))
    except (OSError, ValueError):
        return True


class _EndOfStream(Exception):
    pass


class _RelayedStream:
    """What arrived for one relayed attach (the master's reply, then the stream's frames), from
    the link thread to the client's thread, in order; at most about MAX_STREAM_BACKLOG bytes of
    it. A failure (one error reply) ends it after what is queued, or at once with `discard`."""

    def __init__(self):
        self._items = collections.deque()
        self._size = 0
        self._failure = None
        self._ready = threading.Condition()
        # Once the master granted input: a pipe that wakes the client's thread (waiting in
        # select() on its client's socket too) for each item and answer, and the input relayed
        # and taken so far, [frames, bytes].
        self._wake_read = self._wake_write = None
        self._sent = [0, 0]
        self._taken = [0, 0]
        self._input_over = False  # the client's input ended (eof): what follows is dropped
        self._closed = False

    def accept_input(self):
        with self._ready:
            if self._wake_read is None and not self._closed:
                self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def takes_input(self):
        return self._wake_read is not None

    def fileno(self):
        return self._wake_read

    def _wake(self):
        """(the lock held)"""
        if self._wake_write is not None:
            _poke(self._wake_write)

    def clear_wake(self):
        _drain(self._wake_read)

    def input_room(self):
        """Whether another input frame may go to the master: fewer than the window's bytes (a
        whole frame's worth) and frames wait for its relay_input_done."""
        with self._ready:
            return (self._sent[1] - self._taken[1] + protocol.MAX_INPUT_DATA <= protocol.RELAY_INPUT_WINDOW
                    and self._sent[0] - self._taken[0] < protocol.MAX_RELAY_INPUT_FRAMES)

    def input_sent(self, size, eof):
        """Count an input frame of `size` bytes about to be relayed; False when the client's
        input has ended already (the frame is dropped)."""
        with self._ready:
            if self._input_over:
                return False
            self._sent[0] += 1
            self._sent[1] += size
            self._input_over = eof
            return True

    def input_taken(self, frames, size):
        """The master's relay_input_done (the link thread): frames and bytes taken so far (never
        more than was sent, whatever it says)."""
        with self._ready:
            self._taken[0] = max(self._taken[0], min(frames, self._sent[0]))
            self._taken[1] = max(self._taken[1], min(size, self._sent[1]))
            self._wake()

    def close(self):
        """The client's thread is done with the stream: free the pipe."""
        with self._ready:
            self._closed = True
            fds, self._wake_read, self._wake_write = (self._wake_read, self._wake_write), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    @staticmethod
    def _cost(item):
        data = item.get("data")
        return FRAME_COST + (len(data) if isinstance(data, str) else 0)

    def put(self, item):
        """Queue a reply or frame; False when the backlog would grow past its bound."""
        cost = self._cost(item)
        with self._ready:
            if self._size and self._size + cost > MAX_STREAM_BACKLOG:
                return False
            self._items.append(item)
            self._size += cost
            self._ready.notify()
            self._wake()
        return True

    def fail(self, reply, discard=False):
        with self._ready:
            if self._failure is None:
                self._failure = reply
            if discard:
                self._items.clear()
                self._size = 0
            self._ready.notify()
            self._wake()

    def get(self, timeout):
        """The next item (the failure once nothing else is queued), or None after `timeout`."""
        with self._ready:
            if not self._items and self._failure is None:
                self._ready.wait(timeout)
            if self._items:
                item = self._items.popleft()
                self._size -= self._cost(item)
                return item
            return self._failure


def _poke(wake_write):
    """Wake whoever waits on a wake-up pipe (non-blocking)."""
    try:
        os.write(wake_write, b"x")
    except OSError:
        pass  # full: a wake-up is pending already


def _drain(wake_read):
    """Empty a wake-up pipe (non-blocking)."""
    try:
        while os.read(wake_read, 4096):
            pass
    except OSError:
        pass
