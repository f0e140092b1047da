"""The master's shell: the socket server, the one loop that feeds events to the controller,
writes the store, then carries out the controller's actions; and the streams of `srun -i`.

Owns: threads, the clock, the order "store first, then act", and resolving a peer's uid to a
user. Must not: make decisions (the controller does) or speak SQL, spawn or signal (store,
launcher via the node agent).

One master per state directory: an exclusive flock on `STATE/master.lock`, held for the master's
life and inherited by its launcher helper (so a restarted master waits until the old helper has
handed every queued launch to a supervisor, which records its intent before it lets go).

When the store cannot be written (a full disk), the master degrades instead of exiting: new
submits are refused with one line, no job is started, `queue` and `cancel` keep working, changes
are kept in memory and written as soon as the database accepts them again.

Threads: the main thread runs the loop and alone touches the controller and the store. One
thread per connection reads requests, posts them to the loop and waits for the reply; a stream
(attach) thread receives job updates from the loop through its own queue and reads the job's
output files. The node agent's threads post supervisor events to the same loop. `mgpu history`
(and `mgpu show` of a job no longer kept in memory) is read from the database by a few reader
threads on read-only connections of their own (WAL: they read a committed snapshot while the
loop writes), each read bounded in time; their results go back through the loop, where the
controller makes the reply.

An attach relayed by a node (`srun -i` of a client on the node's host) is checked by the
controller like a local one, with the relayed identity; when granted, the same stream runs on a
thread of its own and goes back through that node's link as relay_frames (nodelink.RelayStream:
at most protocol.MAX_RELAY_STREAMS per link, flow-controlled by the link's outbox). It ends with
the job, when the node cancels it (relay_cancel), or with the link. Its input (relay_input, read
through the RelayStream like a local client's connection, within the relay's window) goes to the
job's host under the same rules and by the same _InputFeed as a local client's.
"""

import os
import pwd
import queue
import signal
import sys
import threading
import time

from . import controller as ctl
from . import errors, paths, protocol, transport
from .errors import MgpuError
from .gpus import open_inventory
from .model import Job, JobState
from .nodeagent import NodeAgent
from .nodelink import LocalNodeLink, RemoteNodeLink
from .statelock import lock_state_dir
from .store import HistoryReader, QueryTooSlow, Store, StoreError

MAX_BATCH = 512            # events handled before one commit and one scheduler pass
MAX_WAIT = 1.0             # the loop wakes at least this often (clock changes, slow timers)
STREAM_POLL_RUNNING = 0.05  # how often a stream looks for new output
STREAM_POLL_TERMINAL = 0.02  # ... of a job with a pty: what is typed comes back as its echo
INPUT_READ_TIMEOUT = 5.0    # the rest of an input frame a client has begun to send
INPUT_FRAMES_AT_ONCE = 64   # input frames a stream forwards before it looks at the output again
STREAM_POLL_PENDING = 0.5
STREAM_KEEPALIVE = 30.0     # a waiting stream sends a frame at least this often
OUTPUT_CHUNK = 65536

STORE_RETRY = 1.0           # how often a degraded master tries to write its state again

HISTORY_READERS = 2         # threads reading finished jobs for `mgpu history` and `mgpu show`
HISTORY_BACKLOG = 64        # reads waiting for them; beyond that a client is told to retry
HISTORY_DEADLINE = 10.0     # seconds one read of the database may take

NODE_HANDSHAKE_TIMEOUT = 10.0  # TLS handshake and registration of a node agent
NODE_LINK_EVENTS = frozenset(("node_register", "node_report", "node_link_lost"))
# Optional fields of a node's job reports, as the controller reads them.
NODE_REPORT_DEFAULTS = {
    "job_started": {"sup_pid": None, "sup_start": None, "pgid": None},
    "job_exited": {"exit_code": None, "signal": None, "error": None},
    "job_lost": {"reason": None},
}

_SHUTDOWN = {"kind": "shutdown"}


def log(*lines):
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write("".join("%s %s\n" % (stamp, line) for line in lines))
    sys.stderr.flush()


class _PendingReply:
    __slots__ = ("queue", "type")

    def __init__(self, type_=None):
        self.queue = queue.SimpleQueue()
        self.type = type_


class _Watcher:
    """One `srun -i` stream's inbox of job updates. `wake`, for a stream that also waits on its
    client's input: its connection's wake(), which ends that wait (transport.Connection,
    nodelink.RelayStream)."""

    __slots__ = ("job_id", "updates", "closed", "wake")

    def __init__(self, job_id, wake=None):
        self.job_id = job_id
        self.updates = queue.SimpleQueue()
        self.closed = False
        self.wake = wake

    def put(self, row):
        self.updates.put(row)
        if self.wake is not None:
            self.wake()


class Master:
    def __init__(self, config):
        self.config = config
        self.events = queue.SimpleQueue()
        uid = os.getuid()
        self.single_user = uid != 0
        self.lock_fd = lock_state_dir(config.state_dir)
        inventory, self.inventory_line = open_inventory(config.fake_gpus)
        # Forks the launcher helper: before any thread and before the database is opened.
        self.agent = NodeAgent(config.node_name, inventory, config.state_dir, self.events.put,
                               lock_fd=self.lock_fd)
        self.links = {self.agent.name: LocalNodeLink(self.agent)}
        try:
            self.store = Store(config.state_dir)
        except StoreError as e:
            raise MgpuError(errors.INTERNAL, str(e)) from None
        active, finished, next_id, next_seq = self.store.load(config.keep_finished)
        arrays = self.store.load_arrays()
        self.set_aside = list(self.store.set_aside)  # what load() and load_arrays() could not use
        owner = _account(uid) if self.single_user else None
        settings = ctl.Settings(
            policy=config.policy, max_user_priority=config.max_user_priority,
            max_job_time=config.max_job_time, kill_grace=config.kill_grace,
            operator_uids=self._operator_uids(config.operators),
            allow_root_jobs=config.allow_root_jobs,
            owner_uid=uid if self.single_user else None,
            owner_name=owner[0] if owner else None, keep_finished=config.keep_finished,
            max_requeues=config.max_requeues)
        self.controller = ctl.Controller(settings, finished + active, next_id, next_seq,
                                         drained=self.store.load_drained(),
                                         known_nodes=self.store.load_nodes(), arrays=arrays)
        self.server = transport.unix_server(config.socket, self._serve_connection, log,
                                            max_connections=config.max_connections,
                                            max_connections_per_user=config.max_connections_per_user)
        self.node_server = None
        if config.listen:
            self._open_node_listener(config)
        self.node_seen = {}       # remote node name -> monotonic time it was last heard from
        self.node_grace = {}      # remote node name -> monotonic deadline to re-register after our start
        self.watchers = {}
        self._input_jobs = set()  # ids of the jobs an attach sends input to (one client each)
        self._input_lock = threading.Lock()
        self.history = _HistoryReaders(self.store.path, self.events.put)
        self.counts = (len(active), len(finished), len(arrays))
        # Degraded mode (the store cannot be written): what is not stored yet.
        self.degraded = False
        self._unsaved = {}
        self._unsaved_envs = {}
        self._unsaved_transitions = []
        self._unsaved_drains = {}  # node name -> drain reason, or None when resumed
        self._unsaved_nodes = {}   # remote node name -> its record
        self._unsaved_arrays = {}  # array job id -> [JobArray, whole, done]
        self._unsaved_env_copies = {}  # a new array task's job id -> its array's id
        self._held_releases = []
        self._next_store_retry = 0.0

    @staticmethod
    def _operator_uids(names):
        uids = []
        for name in names:
            try:
                uids.append(pwd.getpwnam(name).pw_uid)
            except KeyError:
                log("operator %r is not a user on this host: ignored" % name)
        return uids

    def _warn_if_system_master_runs(self):
        """Clients prefer the system master: a user's own master next to it serves only those
        who point MGPU_SOCKET at it, which its user should hear at once."""
        system = paths.configured_socket() or paths.SYSTEM_SOCKET
        if os.path.abspath(system) == os.path.abspath(self.config.socket):
            return
        try:
            probe = transport.connect_unix(system, timeout=1.0)
        except OSError:
            return
        try:
            server_uid = transport.peer_credentials(probe.sock).uid
        except OSError:
            server_uid = None
        finally:
            probe.close()
        if server_uid == 0:
            log("warning: the system master runs on %s: mgpu clients use it, not this single-user master; "
                "to reach this one, set MGPU_SOCKET=%s" % (system, self.config.socket))

    # -- running ----------------------------------------------------------------------------

    def run(self):
        c = self.config
        mode = ("single-user mode for %s: runs that user's jobs only" % self.controller.settings.owner_name
                if self.single_user else "jobs run as the users who submit them")
        log("mgpu master on %s: socket %s, state %s, %s" % (c.node_name, c.socket, c.state_dir, mode))
        log("GPUs: %s" % self.inventory_line)
        if self.single_user:
            self._warn_if_system_master_runs()
        active, finished, arrays = self.counts
        if active or finished or arrays:
            log("restored %d active and %d finished jobs%s; next job id %d"
                % (active, finished, " and %d job arrays" % arrays if arrays else "", self.controller.next_id))
        if self.set_aside:
            log(*self.set_aside)
        self.events.put(dict(self.agent.info(), kind="node_up"))
        self._adopt_running()
        self.agent.start()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: self.events.put(_SHUTDOWN))
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="server", daemon=True).start()
        if self.node_server is not None:
            threading.Thread(target=self.node_server.serve_forever, kwargs={"poll_interval": 0.5},
                             name="node-server", daemon=True).start()
            log("accepting node agents on %s (TLS 1.3, cluster key %s)" % (c.listen, c.key_file))
        try:
            self._loop()
        finally:
            self.server.shutdown()
            if self.node_server is not None:
                self.node_server.shutdown()
                self.node_server.server_close()
                for link in list(self.links.values()):
                    if isinstance(link, RemoteNodeLink):
                        link.close()
            self.server.server_close()
            self.server.remove()
            self.agent.stop()
            self.history.stop()
            self.store.close()
        running = len(self.controller.running)
        if running == 1:
            log("master stopped; 1 running job carries on under its supervisor")
        elif running:
            log("master stopped; %d running jobs carry on under their supervisors" % running)
        else:
            log("master stopped")
        return 0

    def _adopt_running(self):
        """Hand the jobs the store says are running to the node that runs them. A job whose
        supervisor's record lies in this host's state directory runs here, even if the host
        had another name when it started (the master was restarted with another --node-name)."""
        c, here, elsewhere = self.controller, [], []
        renamed = []
        for job in list(c.running.values()):
            if job.node == self.agent.name:
                here.append(job)
            elif os.path.exists(self.agent.record_path(job.id, job.attempt)):
                renamed.append(job)
                here.append(job)
            else:
                elsewhere.append(job)
        if renamed:
            self._carry_out(c.rehome([j.id for j in renamed], self.agent.name, time.time()))
        self.agent.adopt(here)
        remote = [name for name, node in c.nodes.items() if node.address is not None]
        if self.node_server is not None:
            # Their nodes reconnect by themselves: wait node_timeout before declaring them down.
            deadline = time.monotonic() + self.config.node_timeout
            for name in remote + [job.node for job in elsewhere]:
                self.node_grace.setdefault(name, deadline)
            return
        for name in remote:
            self.events.put({"kind": "node_down", "name": name,
                             "reason": "this master does not listen for nodes (no --listen)"})
        for job in elsewhere:
            self.events.put({"kind": "job_lost", "node": job.node, "job_id": job.id, "attempt": job.attempt,
                             "started": True, "reason": "its node %s is not part of this cluster" % job.node})

    def _loop(self):
        c = self.controller
        events = self.events
        while True:
            due = c.next_deadline(time.time())
            wait = MAX_WAIT if due is None else min(MAX_WAIT, max(0.0, due - time.time()))
            batch = []
            try:
                batch.append(events.get(timeout=wait))
                while len(batch) < MAX_BATCH:
                    batch.append(events.get_nowait())
            except queue.Empty:
                pass
            now = time.time()
            actions = []
            for event in batch:
                if event is _SHUTDOWN:
                    self._carry_out(actions)
                    return
                kind = event.get("kind")
                if kind == "watch":
                    self._add_watcher(event["watcher"])
                    continue
                if kind in NODE_LINK_EVENTS:
                    try:
                        event = self._node_link_event(event, now)
                    except Exception as e:  # one node's message must not take the queue down
                        log("internal error handling %s: %s: %s" % (kind, type(e).__name__, e))
                        continue
                    if event is None:
                        continue
                    kind = event.get("kind")
                if self.degraded and kind == "request" and event["type"] == "submit":
                    event["token"].queue.put(protocol.error(errors.UNAVAILABLE, self._degraded_line()))
                    continue
                try:
                    actions.extend(c.handle(event, now))
                except Exception as e:  # a bug must not take the queue down
                    log("internal error handling %s: %s: %s" % (kind, type(e).__name__, e))
                    if kind == "request":
                        actions.append(ctl.Reply(event["token"], protocol.error(
                            errors.INTERNAL, "internal error: %s" % e)))
            if self.node_seen or self.node_grace:
                for event in self._nodes_gone_silent():
                    try:
                        actions.extend(c.handle(event, now))
                    except Exception as e:
                        log("internal error handling node_down: %s: %s" % (type(e).__name__, e))
            steps = (c.advance,) if self.degraded else (c.advance, c.schedule)  # no starts unstored
            for step in steps:
                try:
                    actions.extend(step(now))
                except Exception as e:  # keep serving; the next change retries the pass
                    c.dirty = False
                    log("internal error in %s: %s: %s" % (step.__name__, type(e).__name__, e))
            if actions or batch or (self._unsaved and time.monotonic() >= self._next_store_retry):
                self._carry_out(actions)

    def _carry_out(self, actions):
        """Store what the actions change (one transaction), then carry them out. Nothing that
        depends on a change is done before the change is stored."""
        for action in actions:
            if type(action) is ctl.Save:
                job = action.job
                self._unsaved[job.id] = job
                if action.env is not None:
                    self._unsaved_envs[job.id] = action.env
                if action.transition is not None:
                    self._unsaved_transitions.append(action.transition)
                if action.env_from is not None:
                    self._unsaved_env_copies[job.id] = action.env_from
            elif type(action) is ctl.SaveArray:
                self._keep_array(action)
            elif type(action) is ctl.SaveDrain:
                self._unsaved_drains[action.node] = action.reason
            elif type(action) is ctl.SaveNode:
                self._unsaved_nodes[action.node] = action.record
        stored = True
        if (self._unsaved or self._unsaved_transitions or self._unsaved_drains or self._unsaved_nodes
                or self._unsaved_arrays):
            stored = self._write_unsaved()
        if not stored:
            actions = self._hold_back(actions)
        # The log lines first: what the log says was done is there when a client hears it was.
        lines = [action.line for action in actions if type(action) is ctl.Log]
        if lines:
            log(*lines)
        envs = {}  # job id -> its stored environment, read once for all the parts launched here
        for action in actions:
            kind = type(action)
            if kind is ctl.Reply:
                action.token.queue.put(action.message)
            elif kind is ctl.Launch:
                self._launch(action.job, action.rank, envs)
            elif kind is ctl.SignalJob:
                link = self.links.get(action.node)
                if link is not None:
                    link.signal_job(action.job_id, action.attempt, action.signum)
            elif kind is ctl.Release:
                link = self.links.get(action.node)
                if link is not None:
                    link.release(action.job_id, action.attempt)
            elif kind is ctl.ReadHistory:
                self.history.submit(action)
        if self.watchers and actions:
            self._update_watchers()

    def _keep_array(self, action):
        """A job array's record to write with the next batch (merged with what waits already)."""
        array = action.array
        entry = self._unsaved_arrays.get(array.id)
        if entry is None:
            entry = self._unsaved_arrays[array.id] = [array, False, False]
        entry[0] = array
        entry[1] = entry[1] or action.whole
        entry[2] = action.done
        if action.env is not None:
            self._unsaved_envs[array.id] = action.env
        if action.transition is not None:
            self._unsaved_transitions.append(action.transition)

    def _launch(self, job, rank, envs):
        """Send one launch: a one-host job (rank None), or one part of a job on several hosts,
        with that part's GPUs, output files and environment (rank 0 chooses MASTER_PORT).
        `envs` keeps the environments read from the store for this batch of actions."""
        node = job.node if rank is None else job.parts[rank][0]
        link = self.links.get(node)
        if link is None:  # its node's link went away since the pass: never started
            self.events.put({"kind": "job_lost", "node": node, "job_id": job.id, "attempt": job.attempt,
                             "started": False, "reason": "the link to node %s was lost" % node})
            return
        env = envs.get(job.id)
        if env is None:
            env = envs[job.id] = self.store.job_env(job.id)
        if job.array_job_id is not None:
            env = dict(env or {}, MGPU_ARRAY_JOB_ID=str(job.array_job_id), MGPU_ARRAY_TASK_ID=str(job.array_task_id))
        if rank is None:
            if job.distributed:  # torchrun on this host alone: its defaults, a port chosen there
                env = dict(env or {}, MASTER_ADDR="127.0.0.1", PET_NNODES="1", PET_NODE_RANK="0",
                           PET_NPROC_PER_NODE=str(max(len(job.alloc), 1)), PET_MASTER_ADDR="127.0.0.1")
            link.start_job(job, env, choose_port=bool(job.distributed))
            return
        env = dict(env or {}, **gang_environment(job, rank, self._rank0_address(job)))
        link.start_job(part_record(job, rank), env, choose_port=rank == 0)

    def _rank0_address(self, job):
        """MASTER_ADDR: the rank-0 host's address as the other hosts reach it. A node's is the
        address its link comes from; the master's own host's is the address rank 1's node
        connected to (the master listens on all of them alike)."""
        first = self.links.get(job.parts[0][0])
        if getattr(first, "address", None):
            return first.address
        second = self.links.get(job.parts[1][0])
        return getattr(second, "local_address", None) or self.config.node_name

    # -- node agents on other hosts ----------------------------------------------------------

    def _open_node_listener(self, config):
        from . import auth
        from .config import parse_address

        self.cluster_key = auth.load_key(config.key_file)
        self.tls_context = auth.server_context(self.cluster_key)
        host, port = parse_address(config.listen, "listen")
        self.node_server = transport.tcp_server(host, port, self._serve_node, log)

    def _serve_node(self, sock, address):
        """One node agent's connection (a thread of the TCP server): TLS with the cluster key,
        registration, then its reports, each posted to the loop as an event."""
        from . import auth

        peer = address[0]
        try:
            tls = auth.wrap_server(sock, self.tls_context, self.cluster_key, NODE_HANDSHAKE_TIMEOUT)
        except Exception as e:
            log("refused a node link from %s: %s" % (peer, getattr(e, "message", None) or "%s: %s" % (
                type(e).__name__, e)))
            _close_quietly(sock)
            return
        connection = transport.Connection(tls, protocol.MAX_NODE_FRAME)
        link = None
        try:
            try:
                message = connection.read(NODE_HANDSHAKE_TIMEOUT)
                if message is None:
                    return
                _, fields = protocol.check_node_message(message, ("node_register",))
            except MgpuError as e:
                log("refused a node link from %s: %s" % (peer, e.message))
                connection.reply(protocol.error_from(e))
                return
            link = RemoteNodeLink(fields["name"], connection, peer, log)
            try:
                link.local_address = sock.getsockname()[0]  # this host as that node reaches it
            except OSError:
                pass
            token = _PendingReply("node_register")
            self.events.put({"kind": "node_register", "link": link, "fields": fields, "token": token})
            try:
                reply = token.queue.get(timeout=transport.REPLY_TIMEOUT)
            except queue.Empty:
                reply = protocol.error(errors.TIMEOUT, "the master did not answer in time")
            if not connection.reply(reply) or not reply.get("ok"):
                return
            reason = link.serve(lambda message: self._node_message(link, message), self.config.node_timeout)
            self.events.put({"kind": "node_link_lost", "link": link, "reason": reason})
        finally:
            if link is not None:
                link.dispose()
            else:
                connection.close()

    def _node_message(self, link, message):
        """One message from a registered node (its link's thread): checked, then an event for
        the loop; output_data goes straight to the stream waiting for it. A bad message ends
        the link (MgpuError)."""
        try:
            type_, fields = protocol.check_node_message(message, protocol.NODE_TO_MASTER - {"node_register"})
        except MgpuError as e:
            raise MgpuError(e.code, "bad message: %s" % e.message) from None
        if type_ == "output_data":
            link.output_data(fields)
            return
        if type_ == "job_input_done":
            link.input_done(fields)
            return
        if type_ == "relay_input":  # to the stream's thread, which opened it in the loop before
            link.relay_input(fields)
            return
        self.events.put({"kind": "node_report", "link": link, "type": type_, "fields": fields})

    def _node_link_event(self, event, now):
        """A node-link event, handled here (links are the master's); returns the controller
        event it becomes, or None."""
        kind, link = event["kind"], event["link"]
        if kind == "node_register":
            return self._register_node(event, now)
        if self.links.get(link.name) is not link:
            return None  # a report from a link that was replaced or lost: stale
        if kind == "node_link_lost":
            del self.links[link.name]
            log("node %s: link lost (%s); it is declared down in %gs unless it reconnects"
                % (link.name, event["reason"], self.config.node_timeout))
            return {"kind": "node_unreachable", "name": link.name}
        self.node_seen[link.name] = time.monotonic()
        type_, fields = event["type"], event["fields"]
        if type_ == "node_heartbeat":
            if fields.get("usage"):
                self.events.put({"kind": "gpu_usage", "node": link.name, "usage": fields["usage"]})
            return {"kind": "node_heartbeat", "name": link.name}
        if type_ == "relay":
            return self._relayed_request(link, fields)
        if type_ == "relay_cancel":  # through the loop: after the relay it cancels
            link.cancel_stream(fields["request_id"])
            return None
        report = dict(NODE_REPORT_DEFAULTS.get(type_, {}), **fields)
        report.update(kind=type_, node=link.name)
        return report

    def _relayed_request(self, link, fields):
        """A request a node relays for one of its local clients, with the identity the node
        read from the kernel: a request event whose reply goes back over the link."""
        token = _RelayedReply(link, fields["request_id"])
        peer = fields["peer"]
        account = _account_by_name(peer["user"])
        if account is not None:  # the same user name on the master's host: its ids and home here
            peer = {"user": peer["user"], "uid": account[0], "gid": account[1], "home": peer["home"]}
        try:
            type_, request = protocol.check_request(fields["request"])
            if type_ == "attach":
                token = self._relayed_attach(link, fields["request_id"], request, peer["uid"])
        except MgpuError as e:
            token.queue.put(protocol.error_from(e))
            return None
        token.type = type_
        return {"kind": "request", "type": type_, "fields": request, "token": token, "peer": dict(peer)}

    def _relayed_attach(self, link, request_id, request, uid):
        """The token of a relayed attach: a thread of its own waits for the controller's answer
        and streams the job back through the link (with the client's input, when it asked for
        it and may send it: `uid` is the client's). MgpuError when the link has as many streams
        open as it may."""
        stream = link.open_stream(request_id)
        if stream is None:
            raise MgpuError(errors.UNAVAILABLE, "node %s already streams %d jobs (srun -i) through the master, "
                            "the most it may; try again later" % (link.name, protocol.MAX_RELAY_STREAMS))
        token = _PendingReply("attach")
        try:
            threading.Thread(target=self._serve_relayed_stream, args=(stream, token, request, uid),
                             name="relay-stream-%s-%d" % (link.name, request_id), daemon=True).start()
        except RuntimeError:  # the host cannot start another thread
            stream.close()
            raise MgpuError(errors.UNAVAILABLE, "the master cannot stream another job right now; try again") from None
        return token

    def _serve_relayed_stream(self, stream, token, request, uid):
        """A relayed attach (its own thread): the controller's answer goes back to the node and,
        when granted, the job's stream follows, as for a client on this host; so does its
        input (relay_input, through the stream), under the same rules."""
        feed = None
        try:
            try:
                reply = token.queue.get(timeout=transport.REPLY_TIMEOUT)
            except queue.Empty:
                reply = protocol.error(errors.TIMEOUT, "the master did not answer within %.0f s"
                                       % transport.REPLY_TIMEOUT)
            feed = self._grant_input(stream, reply, uid, request)
            if feed is not None:
                stream.accept_input()  # before the reply: the node sends input only after it
            stream.reply(reply)
            if reply.get("ok") and not stream.peer_closed():
                self._stream(stream, reply["result"], request, feed)
        except Exception as e:  # a bug in one stream must not leave a traceback behind
            log("internal error streaming through node %s: %s: %s" % (stream.link.name, type(e).__name__, e))
        finally:
            if feed is not None:
                feed.end()
            stream.close()

    def _register_node(self, event, now):
        link, fields, token = event["link"], event["fields"], event["token"]
        name = link.name
        if name == self.agent.name:
            token.queue.put(protocol.error(errors.PERMISSION_DENIED, "the name %s is the master's own node: "
                                           "start the node with another --name" % name))
            log("refused node %s from %s: the name is the master's own node" % (name, link.address))
            return None
        old = self.links.get(name)
        if old is not None:
            log("node %s reconnected from %s: the previous link is closed" % (name, link.address))
            old.close()
        self.links[name] = link
        self.node_seen[name] = time.monotonic()
        self.node_grace.pop(name, None)
        c = self.controller
        reported = [(a["job_id"], a["attempt"]) for a in fields["attempts"]]
        keep, missing = c.attempts_to_keep(name, reported)
        token.queue.put(protocol.ok({"keep": keep, "heartbeat_interval": self.config.heartbeat_interval}))
        for job in missing:
            self.events.put({"kind": "job_lost", "node": name, "job_id": job.id, "attempt": job.attempt,
                             "started": False, "reason": "node %s has no record of it" % name})
        if keep:
            log("node %s: keeping %d running job%s" % (name, len(keep), "" if len(keep) == 1 else "s"))
        return {"kind": "node_up", "name": name, "gpus": fields["gpus"], "address": link.address,
                "submit_only": bool(fields.get("submit_only"))}

    def _nodes_gone_silent(self):
        """node_down events for remote nodes not heard from for node_timeout (or not back within
        the grace after our own start)."""
        now, timeout, events = time.monotonic(), self.config.node_timeout, []
        for name, seen in list(self.node_seen.items()):
            if now - seen > timeout:
                del self.node_seen[name]
                link = self.links.pop(name, None)
                if link is not None:
                    link.close()
                events.append({"kind": "node_down", "name": name,
                               "reason": "no heartbeat for %gs" % timeout})
        for name, deadline in list(self.node_grace.items()):
            if now > deadline:
                del self.node_grace[name]
                events.append({"kind": "node_down", "name": name,
                               "reason": "it did not reconnect within %gs of the master's start" % timeout})
        return events

    # -- a store that cannot be written -------------------------------------------------------

    def _write_unsaved(self):
        c = self.controller
        try:
            self.store.write(list(self._unsaved.values()), list(self._unsaved_envs.items()),
                             self._unsaved_transitions, c.next_id, c.next_seq, drained=self._unsaved_drains,
                             nodes=self._unsaved_nodes, arrays=[tuple(e) for e in self._unsaved_arrays.values()],
                             env_copies=list(self._unsaved_env_copies.items()))
        except StoreError as e:
            self._next_store_retry = time.monotonic() + STORE_RETRY
            if not self.degraded:
                self.degraded = True
                log("%s; new jobs are refused and none is started until it can be written "
                    "(queue and cancel keep working)" % e)
            return False
        self._unsaved, self._unsaved_envs, self._unsaved_transitions = {}, {}, []
        self._unsaved_drains = {}
        self._unsaved_nodes = {}
        self._unsaved_arrays = {}
        self._unsaved_env_copies = {}
        if self.degraded:
            self.degraded = False
            c.dirty = True
            log("the state database can be written again: accepting and starting jobs")
            for node, job_id, attempt in self._held_releases:
                link = self.links.get(node)
                if link is not None:
                    link.release(job_id, attempt)
            self._held_releases = []
        return True

    def _hold_back(self, actions):
        """The actions that may go ahead while their changes are not stored: no acknowledged
        submit, no launch, no release of a job's record (it speaks for the job after a restart);
        signals (cancel, time limits) still reach the jobs."""
        c, now, kept = self.controller, time.time(), []
        for action in actions:
            kind = type(action)
            if kind is ctl.Reply and action.token.type == "submit" and action.message.get("ok"):
                job_id = action.message["result"]["job_id"]
                c.withdraw(job_id)
                self._unsaved.pop(job_id, None)
                self._unsaved_envs.pop(job_id, None)
                self._unsaved_arrays.pop(job_id, None)
                self._unsaved_transitions = [t for t in self._unsaved_transitions if t.job_id != job_id]
                kept.append(ctl.Reply(action.token, protocol.error(errors.UNAVAILABLE, self._degraded_line())))
            elif kind is ctl.Launch and action.rank:
                # A further part of a job whose rank 0 runs: that part fails to launch, so the
                # job's other parts are stopped and it goes back to the queue whole.
                job = action.job
                self.events.put({"kind": "job_lost", "node": job.parts[action.rank][0], "job_id": job.id,
                                 "attempt": job.attempt, "started": False,
                                 "reason": "not started: the state database cannot be written"})
            elif kind is ctl.Launch:
                for step in c.unstart(action.job.id, now, "not started: the state database cannot be written"):
                    if type(step) is ctl.Save:
                        self._unsaved[step.job.id] = step.job
                        if step.transition is not None:
                            self._unsaved_transitions.append(step.transition)
                    else:
                        kept.append(step)
            elif kind is ctl.Release:
                self._held_releases.append((action.node, action.job_id, action.attempt))
            else:
                kept.append(action)
        return kept

    def _degraded_line(self):
        return ("the master cannot write its state database in %s (disk full?): new jobs are refused "
                "until it can; queue and cancel still work" % self.config.state_dir)

    # -- streams ----------------------------------------------------------------------------

    def _add_watcher(self, watcher):
        self.watchers.setdefault(watcher.job_id, []).append(watcher)
        self._push(watcher)

    def _push(self, watcher):
        job = self.controller.jobs.get(watcher.job_id)
        if job is not None:
            watcher.put(self.controller.job_row(job))

    def _update_watchers(self):
        for job_id in list(self.watchers):
            alive = [w for w in self.watchers[job_id] if not w.closed]
            if not alive:
                del self.watchers[job_id]
                continue
            self.watchers[job_id] = alive
            for watcher in alive:
                self._push(watcher)

    # -- connections ------------------------------------------------------------------------

    def _serve_connection(self, connection, peer):
        for type_, fields, _ in connection.requests():
            reply = self._call(type_, fields, peer)
            feed = self._grant_input(connection, reply, peer.uid, fields) if type_ == "attach" else None
            try:
                if not connection.reply(reply):
                    return
                if type_ == "attach" and reply.get("ok"):
                    self._stream(connection, reply["result"], fields, feed)
                    return
            finally:
                if feed is not None:
                    feed.end()

    def _call(self, type_, fields, peer):
        account = _account(peer.uid)
        if account is None:
            return protocol.error(errors.PERMISSION_DENIED,
                                  "your uid %d has no account on this host (not in the passwd database)" % peer.uid)
        token = _PendingReply(type_)
        self.events.put({"kind": "request", "type": type_, "fields": fields, "token": token,
                         "peer": {"uid": peer.uid, "gid": account[1], "user": account[0], "home": account[2]}})
        try:
            return token.queue.get(timeout=transport.REPLY_TIMEOUT)
        except queue.Empty:
            return protocol.error(errors.TIMEOUT, "the master did not answer within %.0f s" % transport.REPLY_TIMEOUT)

    def _grant_input(self, connection, reply, uid, request):
        """The _InputFeed of an attach that asked to send input and may (None otherwise); the
        reply to the attach then says whether it may, and why not."""
        if not (reply.get("ok") and request.get("input")):
            return None
        feed, refusal = self._input_feed(connection, reply["result"], uid, request)
        reply["result"] = dict(reply["result"], input=feed is not None, input_refused=refusal)
        return feed

    def _input_feed(self, connection, row, uid, fields):
        """(an _InputFeed, None) when this attach (of the client with `uid`, on this host or
        relayed by a node) may send the job input, else (None, why). Only the job's owner may,
        one client at a time, and only to a job submitted with -i."""
        if row["uid"] != uid:
            return None, "only its owner %s may send job %d input" % (row["user"], row["id"])
        if row.get("stdin") not in protocol.STDIN_MODES:
            return None, "job %d was not submitted with -i: its stdin is /dev/null" % row["id"]
        if not fields.get("follow", True) or row["state"] in JobState.FINAL:
            return None, "job %d has ended" % row["id"]
        with self._input_lock:
            if row["id"] in self._input_jobs:
                return None, "another client is sending job %d its input" % row["id"]
            self._input_jobs.add(row["id"])
        return _InputFeed(self, connection, row), None

    def _stream(self, connection, row, request, feed=None):
        """Stream a job to an `srun -i`, `mgpu attach` or `mgpu logs` (`request`: the attach's
        fields): status while it waits, its output while it runs, and a last frame with its
        final state. Ends when the job ends or the client goes away; without `follow`, once the
        output written so far is sent. `connection`: anything with send(frame) and
        peer_closed(): a client's Connection, or a nodelink.RelayStream for a client on a node's
        host. A job on several hosts streams its rank 0; with `label`, every part, each line
        prefixed with its rank. `stream`: "stdout" or "stderr", that output file alone. Files
        are read as the job's user, never as root."""
        label, follow, only = bool(request.get("label")), request.get("follow", True), request.get("stream")
        watcher = _Watcher(row["id"], wake=connection.wake if feed is not None else None)
        self.events.put({"kind": "watch", "watcher": watcher})
        files, partial = {}, {}
        last_status = None
        uid = row["uid"]
        last_sent = time.monotonic()
        try:
            while True:
                poll = STREAM_POLL_RUNNING if row["state"] == JobState.RUNNING else STREAM_POLL_PENDING
                if feed is not None and feed.waits_on_client(row):
                    # Input and job updates wake the stream at once.
                    connection.readable(STREAM_POLL_TERMINAL if row.get("stdin") == "pty" else poll)
                    poll = 0
                try:
                    row = watcher.updates.get(timeout=poll) if poll else watcher.updates.get_nowait()
                    while True:
                        row = watcher.updates.get_nowait()
                except queue.Empty:
                    pass
                if feed is not None and not feed.pump(row):
                    return  # the client has gone away (or sent what is not input)
                state = row["state"]
                status = (state, row.get("position"), row.get("reason"), row.get("node"), tuple(row["gpu_ids"]))
                if status != last_status and state in JobState.ACTIVE:
                    last_status = status
                    connection.send({"type": "status", "job": row})
                    last_sent = time.monotonic()
                # Read output only once the job has opened (and truncated) its files.
                final = state in JobState.FINAL or not follow
                if row["started"] or state in JobState.FINAL:
                    self._pump_output(connection, row, uid, files, final, label, partial, only)
                if final:
                    connection.send({"type": "end", "job": row})
                    return
                if connection.peer_closed():
                    return
                if time.monotonic() - last_sent > STREAM_KEEPALIVE:
                    connection.send({"type": "alive"})
                    last_sent = time.monotonic()
        except OSError:
            return
        finally:
            watcher.closed = True
            for output in files.values():
                if output is not None:
                    output.close()

    def _pump_output(self, connection, row, uid, files, final, label=False, partial=None, only=None):
        """Send what the job's output files (of rank 0, or of every part with `label`) hold
        beyond what was sent. Labelled output goes line by line ("1: text"): the end of a line
        cut short by a read waits in `partial` for the rest (or for the job's end)."""
        parts = row.get("nodes") or [{"name": row["node"]}]
        labelled = label and len(parts) > 1
        for rank in range(len(parts)) if labelled else (0,):
            link = self.links.get(parts[rank]["name"])
            if link is None:
                if final:
                    connection.send({"type": "notice", "text": "the output is on host %s, which is not connected "
                                     "to the master" % parts[rank]["name"]})
                continue
            streams = [("stdout", part_path(row["output"], rank, len(parts)))]
            if row.get("error") and row["error"] != row["output"]:
                streams.append(("stderr", part_path(row["error"], rank, len(parts))))
            for stream, path in streams:
                if only is not None and stream != only:
                    continue
                key = (rank, stream)
                output = files.get(key)
                if output is None:
                    output = files[key] = link.open_output(path, uid, row["user"])
                    if output is None:
                        if final:
                            connection.send({"type": "notice", "text": "cannot read %s on %s: no such file, or "
                                             "not a regular file of %s" % (path, parts[rank]["name"], row["user"])})
                        continue
                while True:
                    chunk = output.read(OUTPUT_CHUNK)
                    last = not chunk or (len(chunk) < OUTPUT_CHUNK and not final)
                    if labelled:
                        chunk = _labelled(partial, key, chunk, final and not chunk)
                    if chunk:
                        connection.send({"type": "output", "stream": stream, "data": chunk.decode("latin-1")})
                    if last:
                        break


class _HistoryReaders:
    """Threads that read finished jobs from the state database for `mgpu history` and `mgpu
    show`, each on a read-only connection of its own (store.HistoryReader), so that reading a
    large database never stalls the loop. Each result goes back to the loop as a
    `history_read` event, where the controller makes the reply. Started on first use."""

    def __init__(self, path, post):
        self.path = path
        self.post = post
        self.reads = queue.Queue(HISTORY_BACKLOG)
        self.threads = []

    def submit(self, read):
        try:
            while len(self.threads) < HISTORY_READERS:
                thread = threading.Thread(target=self._serve, name="history-%d" % len(self.threads), daemon=True)
                thread.start()
                self.threads.append(thread)
        except RuntimeError:  # the host cannot start another thread: those started serve
            pass
        if not self.threads:
            read.token.queue.put(protocol.error(errors.UNAVAILABLE, "the master cannot start a thread to read "
                                                "its job history right now; try again in a moment"))
            return
        try:
            self.reads.put_nowait(read)
        except queue.Full:
            read.token.queue.put(protocol.error(errors.UNAVAILABLE, "the master is busy reading its job "
                                                "history for other requests; try again in a moment"))

    def _serve(self):
        reader = None
        while True:
            read = self.reads.get()
            if read is None:
                break
            event = {"kind": "history_read", "read": read}
            try:
                if reader is None:
                    reader = HistoryReader(self.path, HISTORY_DEADLINE)
                event["jobs"], event["more"] = reader.finished_jobs(**read.filters)
            except QueryTooSlow:
                event["error"] = (errors.TIMEOUT, "reading the job history took longer than %g s: narrow it "
                                  "with --since, --user, -j or --limit" % HISTORY_DEADLINE)
            except StoreError as e:
                event["error"] = (errors.INTERNAL, str(e))
                if reader is not None:  # opened again for the next read
                    reader.close()
                    reader = None
            except Exception as e:  # a bug must not leave the client without an answer
                log("internal error reading the job history: %s: %s" % (type(e).__name__, e))
                event["error"] = (errors.INTERNAL, "internal error reading the job history: %s" % e)
            self.post(event)
        if reader is not None:
            reader.close()

    def stop(self):
        for _ in self.threads:
            try:
                self.reads.put_nowait(None)
            except queue.Full:
                pass


class _InputFeed:
    """A client's input for the job it attaches to (srun -i, --pty), read from its connection
    by the stream's thread while the job runs and passed to the job's host (nodelink), at the
    job's pace: one frame waits here while the host is busy, and nothing more is read from the
    client meanwhile (its own socket buffer holds it back). The first time the job runs it
    opens the attempt's input; a new attempt (requeued) gets the input from then on; the end of
    the stream hangs the input up."""

    def __init__(self, master, connection, row):
        self.master, self.connection = master, connection
        self.job_id = row["id"]
        self.link = self.attempt = None
        self.frame = None       # a checked input frame the job's host has not taken yet
        self.taking = True      # the job takes input (False: what the client sends is dropped)
        self.finished = False   # the client's stdin ended (eof sent on)

    @staticmethod
    def _running(row):
        return row["state"] == JobState.RUNNING and row["started"]

    def waits_on_client(self, row):
        """The stream waits on the client's next frame, not only on job updates: while the job
        runs, takes input and the client's input has not ended."""
        return self._running(row) and self.frame is None and not self.finished

    def pump(self, row):
        """Forward what the client has sent, as far as the job takes it; False when the client
        has closed its connection or sent a bad frame (it got one error line)."""
        if not self._running(row):
            return True
        if row["attempt"] != self.attempt:
            self._hang_up()
            self.attempt = row["attempt"]
            node = (row.get("nodes") or [{"name": row["node"]}])[0]["name"]
            self.link = self.master.links.get(node)
            self.frame = None
            self.taking = not self.finished and self.link is not None and self.link.send_input(
                self.job_id, self.attempt) != "closed"
        for _ in range(INPUT_FRAMES_AT_ONCE):
            if self.frame is None:
                if not self.connection.readable(0):
                    return True
                try:
                    message = self.connection.read(INPUT_READ_TIMEOUT)
                    if message is None:
                        return False
                    frame = protocol.check_input(message)
                except MgpuError as e:
                    if e.code == errors.TIMEOUT:
                        return True
                    self.connection.send(protocol.error_from(e))
                    return False
                if not self.taking:
                    continue
                self.frame = frame
            result = self.link.send_input(self.job_id, self.attempt, **self.frame)
            if result == "busy":
                return True
            if result == "closed" or self.frame["eof"]:
                self.taking = False
                self.finished = self.frame["eof"]
            self.frame = None
        return True

    def _hang_up(self):
        if self.link is not None and self.taking:
            self.link.end_input(self.job_id, self.attempt)
        self.taking = False

    def end(self):
        self._hang_up()
        with self.master._input_lock:
            self.master._input_jobs.discard(self.job_id)


class _RelayedReply:
    """The token of a relayed request: its reply goes back to the node that relayed it."""
    __slots__ = ("queue", "type")

    def __init__(self, link, request_id):
        self.queue = _ReplyToLink(link, request_id)
        self.type = None


class _ReplyToLink:
    __slots__ = ("link", "request_id")

    def __init__(self, link, request_id):
        self.link, self.request_id = link, request_id

    def put(self, message):
        self.link.relay_reply(self.request_id, protocol.plain(message))


def _account_by_name(name):
    """(uid, gid) of a user name on this host, or None."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _close_quietly(sock):
    try:
        sock.close()
    except OSError:
        pass


_accounts = {}


def _account(uid):
    """(name, gid, home) of a uid, or None; cached (passwd rarely changes under a daemon)."""
    account = _accounts.get(uid)
    if account is None:
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return None
        account = _accounts[uid] = (entry.pw_name, entry.pw_gid, entry.pw_dir)
    return account


def gang_environment(job, rank, master_addr):
    """What every part of a job on several hosts finds in its environment besides the job's
    own variables (CUDA_VISIBLE_DEVICES is set on its host): the hosts in rank order, its rank,
    the rank-0 host's address; with --distributed also torchrun's defaults, so that
    `torchrun script.py` needs no arguments. MASTER_PORT is added on the rank-0 host, which
    chooses it, and sent with the launches of the other parts."""
    hosts = [name for name, _ in job.parts]
    per_node = len(job.parts[rank][1])
    env = {"MGPU_NODELIST": ",".join(hosts), "MGPU_NNODES": str(len(hosts)), "MGPU_NODE_RANK": str(rank),
           "MGPU_GPUS_PER_NODE": str(per_node), "MASTER_ADDR": master_addr}
    if job.master_port:
        env["MASTER_PORT"] = str(job.master_port)
    if job.distributed:
        env.update(PET_NNODES=str(len(hosts)), PET_NODE_RANK=str(rank), PET_NPROC_PER_NODE=str(max(per_node, 1)),
                   PET_MASTER_ADDR=master_addr)
        if job.master_port:
            env["PET_MASTER_PORT"] = str(job.master_port)
    return env


def part_path(path, rank, parts=2):
    """Where part `rank` of a job writes what the job's --output or --error names: %r is the
    rank; without it, rank N > 0 writes to NAME.rankN (a one-host job: the path itself)."""
    if not path or parts < 2:
        return path
    if "%r" in path:
        return path.replace("%r", str(rank))
    return "%s.rank%d" % (path, rank) if rank else path


def _labelled(partial, key, chunk, flush):
    """`chunk` of part key[0]'s output as whole lines, each prefixed with the rank; the end of
    a line cut short waits in `partial` until its newline comes, or `flush`."""
    lines = (partial.get(key, b"") + chunk).split(b"\n")
    rest = lines.pop()
    if flush and rest:
        lines.append(rest)
        rest = b""
    partial[key] = rest
    return b"".join(b"%d: " % key[0] + line + b"\n" for line in lines)


MPI_HOLDER = ("sleep", "infinity")  # what a part of an --mpi job other than rank 0 runs


def part_record(job, rank):
    """The job as the host of part `rank` runs it: that part's GPUs, and its own output files
    (%r in --output/--error is the rank; without it, rank N > 0 writes to NAME.rankN). With
    --mpi only rank 0 runs the command; the others hold their GPUs until it ends."""
    part = Job.from_dict(job.to_dict())
    part.node, part.alloc = job.parts[rank][0], tuple(job.parts[rank][1])
    part.output, part.error = part_path(job.output, rank), part_path(job.error, rank)
    if rank:
        part.stdin = None  # srun -i's input goes to rank 0, as Slurm's to task 0
    if job.mpi and rank:  # mpirun on rank 0 starts the processes: this part holds the GPUs
        part.command, part.env_setup = list(MPI_HOLDER), None
    return part
