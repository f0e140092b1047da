"""One node's logic: its GPU inventory, launching and supervising jobs, reporting to the master.

Owns: the job environment (the user's, scrubbed of the bundle's variables, plus the GPU and job
variables), the supervisors' records in the state directory, re-adoption of jobs that outlived a
daemon restart, and reading job output for streams. Must not: decide what runs where (the
master does), or spawn and signal processes itself (launcher.py does).

Events go to the master through `emit(dict)`; each names its kind, node, job and attempt.

The master's own host runs an agent in process (users resolved by the uid the master read from
the kernel); a further host runs one under `mgpu node` (`remote=True`): there a job runs as the
same user NAME, resolved on this host, a launch repeated after a reconnect is recognised by its
record and not started twice, and at start every record in the state directory is re-adopted
(`adopt_records`), since the node has no store of its own.
"""

import collections
import os
import pwd
import queue
import select
import struct
import threading
import time

from . import bundle, errors, launcher, protocol
from .errors import MgpuError

INPUT_BACKLOG = protocol.INPUT_WINDOW  # bytes of a job's input held here for its supervisor's FIFO
INPUT_WRITE_SLICE = 1.0     # an input channel's thread looks whether it was closed this often
WATCH_INTERVAL = 2.0  # seconds between liveness checks of supervisors and GPU usage reads
KILL_RECORD_WAIT = 5.0  # how long a killed attempt's launch may take to reach its supervisor


def _unlink_record(path):
    """Delete an attempt's record, any write of it a supervisor left unfinished, and the FIFO
    of its input."""
    for name in (path, path + ".tmp", input_path(path)):
        try:
            os.unlink(name)
        except OSError:
            pass


def input_path(record_path):
    """The FIFO through which an attempt's supervisor takes its input (srun -i, --pty)."""
    return record_path[:-len(".json")] + ".in" if record_path.endswith(".json") else record_path + ".in"


class InputChannel:
    """One attempt's input on its way to its supervisor's FIFO: records queued by the stream
    that carries a client's input (the master's, or the node link's), written by a thread of its
    own so that a job that does not read never blocks the caller. At most INPUT_BACKLOG bytes
    wait here: put() says "busy" beyond that, and the caller waits (the master) or drops the
    input (a node whose master sent more than the window allows)."""

    def __init__(self, fd, on_progress=None):
        self.fd = fd
        self.on_progress = on_progress    # called (written, closed) from the thread
        self.records = collections.deque()
        self.size = 0                     # bytes of data (record payloads) waiting here
        self.written = 0                  # bytes of data handed to the supervisor
        self.closing = False
        self.closed = False
        self.lock = threading.Condition()
        self.thread = threading.Thread(target=self._write, name="job-input", daemon=True)

    def put(self, data=None, eof=False, rows=None, cols=None, hangup=False):
        """"ok", "busy" (the backlog is full: try again) or "closed"."""
        records = []
        if rows is not None and cols is not None:
            records.append(launcher.INPUT_WINDOW + struct.pack(">HHH", 4, rows, cols))
        for start in range(0, len(data or b""), launcher.INPUT_RECORD_DATA):
            piece = data[start:start + launcher.INPUT_RECORD_DATA]
            records.append(launcher.INPUT_DATA + struct.pack(">H", len(piece)) + piece)
        if eof:
            records.append(launcher.INPUT_EOF + b"\0\0")
        with self.lock:
            if self.closed or self.closing:
                return "closed"
            if data and self.size and self.size + len(data) > INPUT_BACKLOG:
                return "busy"
            for record in records:
                self.records.append(record)
            self.size += len(data or b"")
            if eof or hangup:
                self.closing = True
            self.lock.notify()
        return "ok"

    def close(self):
        """No more input: what is queued goes first, then the FIFO is closed (a hang-up, unless
        an eof was queued)."""
        with self.lock:
            self.closing = True
            self.lock.notify()

    def _write(self):
        try:
            while True:
                with self.lock:
                    while not self.records and not self.closing:
                        self.lock.wait(INPUT_WRITE_SLICE)
                    if not self.records:
                        return
                    record = self.records[0]
                try:
                    os.write(self.fd, record)
                except BlockingIOError:
                    select.select([], [self.fd], [], INPUT_WRITE_SLICE)
                    continue
                except OSError:
                    return  # the supervisor has closed its end: the job ended or its input did
                with self.lock:
                    self.records.popleft()
                    if record[:1] == launcher.INPUT_DATA:
                        self.size -= len(record) - 3
                        self.written += len(record) - 3
                    idle = not self.records
                if self.on_progress is not None and idle:
                    self.on_progress(self.written, False)
        finally:
            with self.lock:
                self.closed = True
                self.records.clear()
                self.size = 0
            try:
                os.close(self.fd)
            except OSError:
                pass
            if self.on_progress is not None:
                self.on_progress(self.written, True)


class _Supervised:
    """One attempt this node supervises. `handle` (the launcher's proof of which processes are
    the job's) is known from the supervisor's `launched` report or its record; signals asked
    for before that wait in `signals`."""

    __slots__ = ("attempt", "handle", "signals", "started", "orphaned", "adopted", "since")

    def __init__(self, attempt):
        self.attempt = attempt
        self.handle = None
        self.signals = []
        self.started = False      # job_started sent to the master
        self.orphaned = False     # adopted with a dead supervisor: to be fenced, then reported
        self.adopted = False      # its supervisor reports to an earlier daemon: read its record
        self.since = time.monotonic()


class NodeAgent:
    def __init__(self, name, inventory, state_dir, emit, lock_fd=None, remote=False):
        # The launcher forks its helper: this must run before the daemon starts any thread.
        self.launcher = launcher.Launcher(lock_fd=lock_fd)
        self.name = name
        self.inventory = inventory
        self.records_dir = os.path.join(state_dir, "jobs")
        os.makedirs(self.records_dir, mode=0o700, exist_ok=True)
        self.cgroup_base = launcher.cgroup_base(state_dir)  # None: no writable cgroup v2 here
        self.emit = emit
        self.drop_privileges = os.getuid() == 0
        self.remote = remote
        self._supervised = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._usage = {}
        self._obsolete_records = queue.SimpleQueue()
        self._inputs = {}  # (job_id, attempt) -> its InputChannel, while open
        self._inputs_used = set()  # (job_id, attempt) whose input was opened: never again

    # -- lifecycle --------------------------------------------------------------------------

    def start(self):
        threading.Thread(target=self._read_events, name="supervisor-events", daemon=True).start()
        threading.Thread(target=self._watch, name="node-watch", daemon=True).start()
        threading.Thread(target=self._delete_records, name="record-cleaner", daemon=True).start()

    def stop(self):
        self._stopping.set()
        self.launcher.close()
        self.inventory.close()
        launcher.remove_cgroup_base(self.cgroup_base)  # only when no job's cgroup is left

    def running_count(self):
        """How many attempts this agent supervises now."""
        with self._lock:
            return len(self._supervised)

    def info(self):
        gpus = self.inventory.gpus()
        for gpu in gpus:
            gpu["external_mb"] = self._usage.get(gpu["index"], gpu.get("external_mb", 0))
        return {"name": self.name, "gpus": gpus}

    # -- jobs -------------------------------------------------------------------------------

    def record_path(self, job_id, attempt):
        return os.path.join(self.records_dir, "%d.%d.json" % (job_id, attempt))

    def start_job(self, job, env, choose_port=False):
        """Launch one attempt of `job` (a model.Job in RUNNING) with the user's `env`. With
        `choose_port` (the rank-0 part of a job on several hosts) a port free on this host
        becomes MASTER_PORT (and PET_MASTER_PORT with --distributed) and is reported
        (job_port) for the other parts."""
        if self.remote:
            if self._already_launched(job.id, job.attempt):
                return  # a launch resent after a reconnect: this attempt is ours already
            try:
                account = pwd.getpwnam(job.user)
            except (KeyError, TypeError, ValueError):
                self.emit({"kind": "job_exited", "node": self.name, "job_id": job.id,
                           "attempt": job.attempt, "exit_code": None, "signal": None,
                           "error": "user %s does not exist on host %s" % (job.user, self.name)})
                return
            user, home, uid, gid = account.pw_name, account.pw_dir, account.pw_uid, account.pw_gid
            with self._lock:
                earlier = self._supervised.get(job.id)
            if earlier is not None:
                # The master has moved on to a new attempt: the old one must not run beside it.
                self.kill_attempt(job.id, earlier.attempt)
        else:
            try:
                account = pwd.getpwuid(job.uid)
                user, home = account.pw_name, account.pw_dir
            except KeyError:
                self.emit({"kind": "job_exited", "node": self.name, "job_id": job.id,
                           "attempt": job.attempt, "exit_code": None, "signal": None,
                           "error": "user id %d no longer exists" % job.uid})
                return
            uid, gid = job.uid, job.gid
        env = bundle.scrub(env)
        gpu_list = ",".join(str(i) for i in job.alloc)
        env.update(HOME=home, USER=user, LOGNAME=user, CUDA_VISIBLE_DEVICES=gpu_list,
                   CUDA_DEVICE_ORDER="PCI_BUS_ID", MGPU_JOB_ID=str(job.id), MGPU_GPU_IDS=gpu_list,
                   MGPU_NODE=self.name, MGPU_RESTART_COUNT=str(job.restarts))
        if job.name:
            env["MGPU_JOB_NAME"] = job.name
        if job.end_estimate is not None:
            env["MGPU_JOB_END_TIME"] = str(int(job.end_estimate))
        else:
            env.pop("MGPU_JOB_END_TIME", None)
        error = job.error or job.output
        log_dir = os.path.join(home, ".mgpu", "logs")
        spec = {
            "job_id": job.id, "attempt": job.attempt, "uid": uid, "gid": gid,
            "user": user, "drop": self.drop_privileges, "umask": job.umask if job.umask is not None else 0o022,
            "cwd": job.cwd, "argv": list(job.command), "env": env, "env_setup": job.env_setup,
            "output": job.output, "error": error, "truncate": job.attempt <= 1,
            # The default log directory is made private to its user (it holds what jobs print).
            "log_dir": log_dir if log_dir in (os.path.dirname(job.output), os.path.dirname(error)) else None,
            "record": self.record_path(job.id, job.attempt),
            "cgroup": launcher.job_cgroup(self.cgroup_base, job.id, job.attempt),
        }
        if job.stdin in ("pipe", "pty"):
            spec["stdin"] = job.stdin
            spec["input"] = input_path(spec["record"])
        if job.mpi and job.parts and job.node == job.parts[0][0]:
            # Rank 0 of an --mpi job runs mpirun: an Open MPI hostfile of the job's hosts, one
            # slot per GPU, written as the user before the command starts.
            path = os.path.join(home, ".mgpu", "hostfiles", "%d.%d.hosts" % (job.id, job.attempt))
            spec["hostfile"] = {"path": path, "content": "".join(
                "%s slots=%d\n" % (host, max(len(ids), 1)) for host, ids in job.parts)}
            env["MGPU_HOSTFILE"] = path
        port = None
        if choose_port:
            port = launcher.free_port()
            env["MASTER_PORT"] = str(port)
            if "PET_MASTER_ADDR" in env:
                env["PET_MASTER_PORT"] = str(port)
        with self._lock:
            self._supervised[job.id] = _Supervised(job.attempt)
        try:
            self.launcher.launch(spec)
        except launcher.HelperGone as e:
            # No way to start jobs: stop, so the service manager restarts the daemon.
            raise MgpuError(errors.INTERNAL, str(e)) from None
        if port is not None:
            self.emit({"kind": "job_port", "node": self.name, "job_id": job.id, "attempt": job.attempt,
                       "port": port})

    def signal_job(self, job_id, attempt, signum):
        with self._lock:
            entry = self._supervised.get(job_id)
            if entry is None or entry.attempt != attempt:
                return
            if entry.handle is None:
                entry.signals.append(signum)  # delivered as soon as the job's pid is known
                return
            handle = entry.handle
        handle.signal(signum)

    # -- input (srun -i, --pty) -----------------------------------------------------------------

    def send_input(self, job_id, attempt, data=None, eof=False, rows=None, cols=None, hangup=False,
                   on_progress=None):
        """Hand a client's input to the supervisor of this attempt: "ok", "busy" (its backlog is
        full: try again later) or "closed" (no such attempt here, it takes no input, or its
        input has ended). The first call opens the attempt's FIFO (once: a second client, or one
        after a restart of the supervisor's daemon, finds it closed)."""
        key = (job_id, attempt)
        with self._lock:
            channel = self._inputs.get(key)
            entry = self._supervised.get(job_id)
            if channel is None:
                if entry is None or entry.attempt != attempt or hangup or key in self._inputs_used:
                    return "closed"
                try:
                    fd = os.open(input_path(self.record_path(job_id, attempt)),
                                 os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
                except OSError:
                    return "closed"  # no FIFO (not interactive, or used up), or no reader any more
                try:
                    os.write(fd, launcher.INPUT_OPEN + b"\0\0")
                except OSError:
                    os.close(fd)
                    return "closed"
                channel = self._inputs[key] = InputChannel(fd, on_progress)
                self._inputs_used.add(key)
                channel.thread.start()
        result = channel.put(data, eof, rows, cols, hangup)
        if result == "closed" or eof or hangup:
            with self._lock:
                if self._inputs.get(key) is channel:
                    del self._inputs[key]
        return result

    def close_input(self, job_id, attempt):
        """The stream carrying this attempt's input is gone: hang its input up."""
        with self._lock:
            channel = self._inputs.pop((job_id, attempt), None)
        if channel is not None:
            channel.close()

    def close_all_input(self):
        """The link that carried every open input is lost (a node whose master went away)."""
        with self._lock:
            channels, self._inputs = list(self._inputs.values()), {}
        for channel in channels:
            channel.close()

    def release(self, job_id, attempt):
        """The master has recorded the end of this attempt: forget it. (The record is deleted
        by a thread of its own: an unlink can take a millisecond, and the master's loop must
        not wait for it.)"""
        with self._lock:
            entry = self._supervised.get(job_id)
            if entry is not None and entry.attempt == attempt:
                del self._supervised[job_id]
            channel = self._inputs.pop((job_id, attempt), None)
            self._inputs_used.discard((job_id, attempt))
        if channel is not None:
            channel.close()
        self._obsolete_records.put(self.record_path(job_id, attempt))

    def _already_launched(self, job_id, attempt):
        with self._lock:
            entry = self._supervised.get(job_id)
            if entry is not None and entry.attempt == attempt:
                return True
        return os.path.exists(self.record_path(job_id, attempt))

    def kill_attempt(self, job_id, attempt, wait=False):
        """End an attempt the master no longer considers running, fenced (only processes
        proven to be that attempt's: its cgroup, or its supervisor's session), forget it and
        delete its record; nothing is reported about it. The end can take up to
        launcher.STOP_TIMEOUT, so it runs on a thread of its own unless `wait`."""
        with self._lock:
            entry = self._supervised.get(job_id)
            if entry is not None and entry.attempt == attempt:
                del self._supervised[job_id]
            else:
                entry = None
        if entry is None and launcher.record_phase(launcher.read_record(self.record_path(job_id, attempt))) in (
                None, "exited"):
            wait = True  # nothing of it can run: only its record to delete
        if wait:
            self._end_attempt(job_id, attempt, entry)
        else:
            threading.Thread(target=self._end_attempt, args=(job_id, attempt, entry),
                             name="kill-%d.%d" % (job_id, attempt), daemon=True).start()

    def _end_attempt(self, job_id, attempt, entry):
        path = self.record_path(job_id, attempt)
        deadline = time.monotonic() + launcher.STOP_TIMEOUT
        record = launcher.read_record(path)
        # A launch still on its way to a supervisor: wait for its record to say which
        # processes are the job's (once "launched", the job may run; before, it cannot).
        while entry is not None and time.monotonic() < deadline:
            phase = launcher.record_phase(record)
            if phase in ("launched", "started", "exited"):
                break
            if phase == "intent" and not launcher.JobHandle.from_record(record).supervisor_alive():
                break
            if phase is None and time.monotonic() - entry.since > KILL_RECORD_WAIT:
                break  # never reached a supervisor (the helper refused it or is gone)
            time.sleep(0.02)
            record = launcher.read_record(path)
        handle = launcher.JobHandle.from_record(record) if record else (entry.handle if entry else None)
        if handle is not None:
            handle.end()
            # Its supervisor records the end and exits: wait, so that no record is written
            # after ours is deleted.
            while handle.supervisor_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        self._discard_cgroup(job_id, attempt)
        _unlink_record(path)

    def adopt_records(self):
        """At a node's start (it keeps no store): adopt every attempt that has a record in the
        state directory, as adopt() does for the master's jobs. Running ones are watched
        again, ended ones reported; each stays until the master releases or kills it."""
        for job_id, attempt in self._recorded_attempts():
            self._adopt_one(job_id, attempt)

    def _recorded_attempts(self):
        found = []
        for name in os.listdir(self.records_dir):
            parts = name.split(".")
            if len(parts) == 3 and parts[2] == "json" and parts[0].isdigit() and parts[1].isdigit():
                found.append((int(parts[0]), int(parts[1])))
            # A NAME.json.tmp is left alone: its supervisor may be about to rename it into
            # its record (its end). It goes with the record (_unlink_record).
        return sorted(found)

    def attempts(self):
        """[{job_id, attempt, phase}] of every attempt this node supervises or has a record
        of: what a node reports when it (re)registers with the master."""
        with self._lock:
            supervised = {(job_id, entry.attempt) for job_id, entry in self._supervised.items()}
        found = []
        for job_id, attempt in sorted(supervised | set(self._recorded_attempts())):
            phase = launcher.record_phase(launcher.read_record(self.record_path(job_id, attempt)))
            found.append({"job_id": job_id, "attempt": attempt, "phase": phase or "intent"})
        return found

    def recorded_report(self, job_id, attempt):
        """What an attempt's record says to report: its job_exited event when it ended, its
        job_started event when it started, else None."""
        record = launcher.read_record(self.record_path(job_id, attempt))
        phase = launcher.record_phase(record)
        if phase == "exited":
            return {"kind": "job_exited", "node": self.name, "job_id": job_id, "attempt": attempt,
                    "exit_code": record.get("exit_code"), "signal": record.get("signal"),
                    "error": record.get("error")}
        if phase == "started":
            return {"kind": "job_started", "node": self.name, "job_id": job_id, "attempt": attempt,
                    "sup_pid": record.get("sup_pid"), "sup_start": record.get("sup_start"),
                    "pgid": record.get("pgid")}
        return None

    def adopt(self, jobs):
        """After a restart: take over the jobs the store says run here. Each is still running
        (watched again), has ended (its recorded exit is reported), provably never started
        (requeued), or lost its supervisor (what is left of it is killed by the watch thread,
        then it is reported lost)."""
        keep = set()
        for job in jobs:
            # Also the supervisor's next record, which it may be writing right now.
            keep.update(("%d.%d.json" % (job.id, job.attempt), "%d.%d.json.tmp" % (job.id, job.attempt)))
            self._adopt_one(job.id, job.attempt)
        for name in os.listdir(self.records_dir):
            if name not in keep:
                try:
                    os.unlink(os.path.join(self.records_dir, name))
                except OSError:
                    pass

    def _adopt_one(self, job_id, attempt):
        record = launcher.read_record(self.record_path(job_id, attempt))
        phase = launcher.record_phase(record)
        if phase == "exited":
            self._report_exit(record)
            return
        if phase is None:
            # No intent on disk: the launch never reached a supervisor (the state lock waited
            # for the previous helper to hand over all it had), so the job never ran.
            self._discard_cgroup(job_id, attempt)
            self._lost(job_id, attempt, False, "the daemon stopped before the job started")
            return
        entry = _Supervised(attempt)
        entry.adopted = True
        handle = launcher.JobHandle.from_record(record)
        if handle.supervisor_alive():
            if phase != "intent":
                entry.handle = handle
            with self._lock:
                self._supervised[job_id] = entry
            if phase == "started":
                self._report_started(job_id, entry)
            return
        if phase == "intent":
            # Its supervisor died before it let the job go on: the job never ran its command.
            self._discard_cgroup(job_id, attempt)
            self._lost(job_id, attempt, False, "its supervisor disappeared before the job started")
            return
        entry.handle, entry.orphaned = handle, True  # the watch thread kills what is left, then reports
        with self._lock:
            self._supervised[job_id] = entry

    def _discard_cgroup(self, job_id, attempt):
        path = launcher.job_cgroup(self.cgroup_base, job_id, attempt)
        if path:
            launcher.JobHandle(cgroup=path).end()

    def _lost(self, job_id, attempt, started, reason):
        self.emit({"kind": "job_lost", "node": self.name, "job_id": job_id, "attempt": attempt,
                   "started": started, "reason": reason})

    def _report_started(self, job_id, entry):
        entry.started = True
        h = entry.handle
        self.emit({"kind": "job_started", "node": self.name, "job_id": job_id, "attempt": entry.attempt,
                   "sup_pid": h.sup_pid, "sup_start": h.sup_start, "pgid": h.pgid})

    def _report_exit(self, record):
        self.emit({"kind": "job_exited", "node": self.name, "job_id": record["job_id"],
                   "attempt": record["attempt"], "exit_code": record.get("exit_code"),
                   "signal": record.get("signal"), "error": record.get("error")})

    # -- output -----------------------------------------------------------------------------

    @staticmethod
    def open_output(path, uid):
        """A read-only descriptor on a job's output file, or None. The path is the user's
        choice: it is resolved and opened as that user, and only a regular file the user owns
        is read (never a device, a FIFO or a symlink)."""
        return launcher.open_as_user(path, uid)

    # -- threads ----------------------------------------------------------------------------

    def _read_events(self):
        for event in self.launcher.events():
            kind = event.get("event")
            job_id, attempt = event.get("job_id"), event.get("attempt")
            with self._lock:
                entry = self._supervised.get(job_id)
                if entry is None or entry.attempt != attempt:
                    continue
                pending = []
                if kind in ("launched", "started"):
                    if entry.handle is None and event.get("pgid"):
                        entry.handle = launcher.JobHandle.from_record(event)
                    pending, entry.signals = entry.signals, []
                elif kind == "exited":
                    # Ended: no signal may reach a process group id the kernel can reuse.
                    del self._supervised[job_id]
                else:
                    continue
            for signum in pending:
                entry.handle.signal(signum)
            if kind == "started":
                self._report_started(job_id, entry)
            elif kind == "exited":
                self._report_exit(event)

    def _delete_records(self):
        while True:
            _unlink_record(self._obsolete_records.get())

    def _watch(self):
        while True:
            sessions = set()
            with self._lock:
                watched = list(self._supervised.items())
            for job_id, entry in watched:
                alive = self._check(job_id, entry)
                if alive and entry.handle is not None:
                    sessions.add(entry.handle.sup_pid)
            if self.inventory.kind == "nvml":
                usage = self.inventory.external_usage(sessions)
                if usage != self._usage:
                    self._usage = usage
                    self.emit({"kind": "gpu_usage", "node": self.name, "usage": usage})
            if self._stopping.wait(WATCH_INTERVAL):
                return

    def _current(self, job_id, entry):
        with self._lock:
            return self._supervised.get(job_id) is entry

    def _forget(self, job_id, entry):
        with self._lock:
            if self._supervised.get(job_id) is not entry:
                return False
            del self._supervised[job_id]
            return True

    def _check(self, job_id, entry):
        """One look at a supervised attempt; True while its supervisor lives. A dead supervisor
        is answered with its recorded exit or, when it recorded none, by killing what is left of
        the job and waiting until it is gone before the job is reported lost (its GPUs are
        reused only then)."""
        if entry.orphaned:
            self._fence(job_id, entry)
            return False
        record = None
        if entry.handle is None or (entry.adopted and not entry.started):
            record = launcher.read_record(self.record_path(job_id, entry.attempt))
            if record is None:
                return True  # not yet at its supervisor (the helper is behind), or released
            handle = launcher.JobHandle.from_record(record)
            phase = launcher.record_phase(record)
            with self._lock:
                if self._supervised.get(job_id) is not entry:
                    return False
                if entry.handle is None and phase in ("launched", "started"):
                    entry.handle = handle
                    pending, entry.signals = entry.signals, []
                else:
                    pending = []
            for signum in pending:
                handle.signal(signum)
            if entry.adopted and phase == "started" and not entry.started:
                self._report_started(job_id, entry)
        else:
            handle = entry.handle
        if handle.supervisor_alive():
            return True
        time.sleep(0.2)  # its exit event may be on its way through the pipe
        if not self._current(job_id, entry):
            return False
        record = launcher.read_record(self.record_path(job_id, entry.attempt))
        phase = launcher.record_phase(record)
        if phase == "exited":
            if self._forget(job_id, entry):
                self._report_exit(record)
        elif phase == "intent":
            self._discard_cgroup(job_id, entry.attempt)
            if self._forget(job_id, entry):
                self._lost(job_id, entry.attempt, False, "its supervisor disappeared before the job started")
        else:
            entry.handle = launcher.JobHandle.from_record(record) if record else handle
            self._fence(job_id, entry)
        return False

    def _fence(self, job_id, entry):
        """Kill what is left of a job whose supervisor is gone; report it lost once nothing is
        left (or, if something cannot be killed, after trying for STOP_TIMEOUT)."""
        handle = entry.handle
        if handle is not None and not handle.end():
            if self._current(job_id, entry):
                return  # still alive: try again next time, its GPUs stay taken
        self._discard_cgroup(job_id, entry.attempt)  # named for this attempt: its own
        if self._forget(job_id, entry):
            self._lost(job_id, entry.attempt, True, "its supervisor disappeared")
