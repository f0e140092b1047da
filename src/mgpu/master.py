"""The master's shell: the socket server, the one loop that feeds events to the controller,
writes the store, then carries out the controller's actions; and the streams of `srun -i`.

Owns: threads, the clock, the order "store first, then act", and resolving a peer's uid to a
user. Must not: make decisions (the controller does) or speak SQL, spawn or signal (store,
launcher via the node agent).

Threads: the main thread runs the loop and alone touches the controller and the store. One
thread per connection reads requests, posts them to the loop and waits for the reply; a stream
(attach) thread receives job updates from the loop through its own queue and reads the job's
output files. The node agent's threads post supervisor events to the same loop.
"""

import os
import pwd
import queue
import signal
import sys
import threading
import time

from . import controller as ctl
from . import errors, protocol, transport
from .errors import MgpuError
from .gpus import open_inventory
from .model import JobState
from .nodeagent import NodeAgent
from .nodelink import LocalNodeLink
from .store import Store, StoreError

MAX_BATCH = 512            # events handled before one commit and one scheduler pass
MAX_WAIT = 1.0             # the loop wakes at least this often (clock changes, slow timers)
STREAM_POLL_RUNNING = 0.05  # how often a stream looks for new output
STREAM_POLL_PENDING = 0.5
STREAM_KEEPALIVE = 30.0     # a waiting stream sends a frame at least this often
OUTPUT_CHUNK = 65536

_SHUTDOWN = {"kind": "shutdown"}


def log(*lines):
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write("".join("%s %s\n" % (stamp, line) for line in lines))
    sys.stderr.flush()


class _PendingReply:
    __slots__ = ("queue",)

    def __init__(self):
        self.queue = queue.SimpleQueue()


class _Watcher:
    """One `srun -i` stream's inbox of job updates."""

    __slots__ = ("job_id", "updates", "closed")

    def __init__(self, job_id):
        self.job_id = job_id
        self.updates = queue.SimpleQueue()
        self.closed = False


class Master:
    def __init__(self, config):
        self.config = config
        self.events = queue.SimpleQueue()
        uid = os.getuid()
        self.single_user = uid != 0
        inventory, self.inventory_line = open_inventory(config.fake_gpus)
        # Forks the launcher helper: before any thread and before the database is opened.
        self.agent = NodeAgent(config.node_name, inventory, config.state_dir, self.events.put)
        self.links = {self.agent.name: LocalNodeLink(self.agent)}
        try:
            self.store = Store(config.state_dir)
        except StoreError as e:
            raise MgpuError(errors.INTERNAL, str(e)) from None
        active, finished, next_id, next_seq = self.store.load(config.keep_finished)
        owner = _account(uid) if self.single_user else None
        settings = ctl.Settings(
            policy=config.policy, max_user_priority=config.max_user_priority,
            max_job_time=config.max_job_time, kill_grace=config.kill_grace,
            operator_uids=self._operator_uids(config.operators),
            allow_root_jobs=config.allow_root_jobs,
            owner_uid=uid if self.single_user else None,
            owner_name=owner[0] if owner else None, keep_finished=config.keep_finished)
        self.controller = ctl.Controller(settings, finished + active, next_id, next_seq)
        self.server = transport.unix_server(config.socket, self._serve_connection, log)
        self.watchers = {}
        self.counts = (len(active), len(finished))

    @staticmethod
    def _operator_uids(names):
        uids = []
        for name in names:
            try:
                uids.append(pwd.getpwnam(name).pw_uid)
            except KeyError:
                log("operator %r is not a user on this host: ignored" % name)
        return uids

    # -- running ----------------------------------------------------------------------------

    def run(self):
        c = self.config
        mode = ("single-user mode for %s: runs that user's jobs only" % self.controller.settings.owner_name
                if self.single_user else "jobs run as the users who submit them")
        log("mgpu master on %s: socket %s, state %s, %s" % (c.node_name, c.socket, c.state_dir, mode))
        log("GPUs: %s" % self.inventory_line)
        active, finished = self.counts
        if active or finished:
            log("restored %d active and %d finished jobs; next job id %d"
                % (active, finished, self.controller.next_id))
        self.events.put(dict(self.agent.info(), kind="node_up"))
        here = [j for j in self.controller.running.values() if j.node == self.agent.name]
        elsewhere = [j for j in self.controller.running.values() if j.node != self.agent.name]
        self.agent.adopt(here)
        for job in elsewhere:
            self.events.put({"kind": "job_lost", "node": job.node, "job_id": job.id, "attempt": job.attempt,
                             "started": True, "reason": "its node %s is not part of this cluster" % job.node})
        self.agent.start()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: self.events.put(_SHUTDOWN))
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="server", daemon=True).start()
        try:
            self._loop()
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.server.remove()
            self.agent.stop()
            self.store.close()
        running = len(self.controller.running)
        if running == 1:
            log("master stopped; 1 running job carries on under its supervisor")
        elif running:
            log("master stopped; %d running jobs carry on under their supervisors" % running)
        else:
            log("master stopped")
        return 0

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
                try:
                    actions.extend(c.handle(event, now))
                except Exception as e:  # a bug must not take the queue down
                    log("internal error handling %s: %s: %s" % (kind, type(e).__name__, e))
                    if kind == "request":
                        actions.append(ctl.Reply(event["token"], protocol.error(
                            errors.INTERNAL, "internal error: %s" % e)))
            for step in (c.advance, c.schedule):
                try:
                    actions.extend(step(now))
                except Exception as e:  # keep serving; the next change retries the pass
                    c.dirty = False
                    log("internal error in %s: %s: %s" % (step.__name__, type(e).__name__, e))
            if actions or batch:
                self._carry_out(actions)

    def _carry_out(self, actions):
        saves = {}
        envs, transitions = [], []
        for action in actions:
            if type(action) is ctl.Save:
                saves[action.job.id] = action.job
                if action.env is not None:
                    envs.append((action.job.id, action.env))
                if action.transition is not None:
                    transitions.append(action.transition)
        if saves or envs or transitions:
            c = self.controller
            self.store.write(list(saves.values()), envs, transitions, c.next_id, c.next_seq)
        lines = []
        for action in actions:
            kind = type(action)
            if kind is ctl.Reply:
                action.token.queue.put(action.message)
            elif kind is ctl.Launch:
                job = action.job
                self.links[job.node].start_job(job, self.store.job_env(job.id))
            elif kind is ctl.SignalJob:
                self.links[action.node].signal_job(action.job_id, action.attempt, action.signum)
            elif kind is ctl.Release:
                self.links[action.node].release(action.job_id, action.attempt)
            elif kind is ctl.Log:
                lines.append(action.line)
        if lines:
            log(*lines)
        if self.watchers and actions:
            self._update_watchers()

    # -- streams ----------------------------------------------------------------------------

    def _add_watcher(self, watcher):
        self.watchers.setdefault(watcher.job_id, []).append(watcher)
        self._push(watcher)

    def _push(self, watcher):
        job = self.controller.jobs.get(watcher.job_id)
        if job is not None:
            watcher.updates.put(self.controller.job_row(job))

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
        timeout = transport.FIRST_READ_TIMEOUT
        while True:
            try:
                message = connection.read(timeout)
            except MgpuError as e:
                _send_quietly(connection, protocol.error_from(e))
                return  # after a bad or oversize frame the stream is not trustworthy
            if message is None:
                return
            timeout = transport.IDLE_READ_TIMEOUT
            try:
                type_, fields = protocol.check_request(message)
            except MgpuError as e:
                if not _send_quietly(connection, protocol.error_from(e)):
                    return
                continue
            reply = self._call(type_, fields, peer)
            if not _send_quietly(connection, reply):
                return
            if type_ == "attach" and reply.get("ok"):
                self._stream(connection, reply["result"])
                return

    def _call(self, type_, fields, peer):
        account = _account(peer.uid)
        if account is None:
            return protocol.error(errors.PERMISSION_DENIED,
                                  "your uid %d has no account on this host (not in the passwd database)" % peer.uid)
        token = _PendingReply()
        self.events.put({"kind": "request", "type": type_, "fields": fields, "token": token,
                         "peer": {"uid": peer.uid, "gid": account[1], "user": account[0], "home": account[2]}})
        try:
            return token.queue.get(timeout=transport.REPLY_TIMEOUT)
        except queue.Empty:
            return protocol.error(errors.TIMEOUT, "the master did not answer within %.0f s" % transport.REPLY_TIMEOUT)

    def _stream(self, connection, row):
        """Stream a job to an `srun -i`: status while it waits, its output while it runs, and a
        last frame with its final state. Ends when the job ends or the client goes away."""
        watcher = _Watcher(row["id"])
        self.events.put({"kind": "watch", "watcher": watcher})
        files = {}
        last_status = None
        uid = row["uid"]
        last_sent = time.monotonic()
        try:
            while True:
                poll = STREAM_POLL_RUNNING if row["state"] == JobState.RUNNING else STREAM_POLL_PENDING
                try:
                    row = watcher.updates.get(timeout=poll)
                    while True:
                        row = watcher.updates.get_nowait()
                except queue.Empty:
                    pass
                state = row["state"]
                status = (state, row.get("position"), row.get("reason"), row.get("node"), tuple(row["gpu_ids"]))
                if status != last_status and state in JobState.ACTIVE:
                    last_status = status
                    connection.send({"type": "status", "job": row})
                    last_sent = time.monotonic()
                # Read output only once the job has opened (and truncated) its files.
                if row["started"] or state in JobState.FINAL:
                    self._pump_output(connection, row, uid, files, final=state in JobState.FINAL)
                if state in JobState.FINAL:
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
            for fd in files.values():
                if fd is not None:
                    os.close(fd)

    def _pump_output(self, connection, row, uid, files, final):
        link = self.links.get(row["node"])
        if link is None:
            return
        streams = [("stdout", row["output"])]
        if row.get("error") and row["error"] != row["output"]:
            streams.append(("stderr", row["error"]))
        for stream, path in streams:
            fd = files.get(stream)
            if fd is None:
                fd = files[stream] = link.open_output(path, uid)
                if fd is None:
                    continue
            while True:
                try:
                    chunk = os.read(fd, OUTPUT_CHUNK)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                connection.send({"type": "output", "stream": stream, "data": chunk.decode("latin-1")})
                if len(chunk) < OUTPUT_CHUNK and not final:
                    break


def _send_quietly(connection, message):
    try:
        connection.send(message)
        return True
    except OSError:
        return False


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
