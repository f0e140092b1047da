"""One node's logic: its GPU inventory, launching and supervising jobs, reporting to the master.

Owns: the job environment (the user's, scrubbed of the bundle's variables, plus the GPU and job
variables), the supervisors' records in the state directory, re-adoption of jobs that outlived a
daemon restart, and reading job output for streams. Must not: decide what runs where (the
master does), or spawn and signal processes itself (launcher.py does).

Events go to the master through `emit(dict)`; each names its kind, node, job and attempt.
"""

import os
import pwd
import queue
import stat
import threading
import time

from . import bundle, errors, launcher
from .errors import MgpuError

WATCH_INTERVAL = 2.0  # seconds between liveness checks of supervisors and GPU usage reads


class _Supervised:
    __slots__ = ("attempt", "sup_pid", "sup_start", "pgid", "signals")

    def __init__(self, attempt):
        self.attempt = attempt
        self.sup_pid = self.sup_start = self.pgid = None
        self.signals = []  # asked for before the supervisor reported the job's start


class NodeAgent:
    def __init__(self, name, inventory, state_dir, emit):
        # The launcher forks its helper: this must run before the daemon starts any thread.
        self.launcher = launcher.Launcher()
        self.name = name
        self.inventory = inventory
        self.records_dir = os.path.join(state_dir, "jobs")
        os.makedirs(self.records_dir, mode=0o700, exist_ok=True)
        self.emit = emit
        self.drop_privileges = os.getuid() == 0
        self._supervised = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._usage = {}
        self._obsolete_records = queue.SimpleQueue()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self):
        threading.Thread(target=self._read_events, name="supervisor-events", daemon=True).start()
        threading.Thread(target=self._watch, name="node-watch", daemon=True).start()
        threading.Thread(target=self._delete_records, name="record-cleaner", daemon=True).start()

    def stop(self):
        self._stopping.set()
        self.launcher.close()
        self.inventory.close()

    def info(self):
        gpus = self.inventory.gpus()
        for gpu in gpus:
            gpu["external_mb"] = self._usage.get(gpu["index"], gpu.get("external_mb", 0))
        return {"name": self.name, "gpus": gpus}

    # -- jobs -------------------------------------------------------------------------------

    def record_path(self, job_id, attempt):
        return os.path.join(self.records_dir, "%d.%d.json" % (job_id, attempt))

    def start_job(self, job, env):
        """Launch one attempt of `job` (a model.Job in RUNNING) with the user's `env`."""
        try:
            account = pwd.getpwuid(job.uid)
            user, home = account.pw_name, account.pw_dir
        except KeyError:
            self.emit({"kind": "job_exited", "node": self.name, "job_id": job.id,
                       "attempt": job.attempt, "exit_code": None, "signal": None,
                       "error": "user id %d no longer exists" % job.uid})
            return
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
        spec = {
            "job_id": job.id, "attempt": job.attempt, "uid": job.uid, "gid": job.gid,
            "user": user, "drop": self.drop_privileges, "umask": job.umask if job.umask is not None else 0o022,
            "cwd": job.cwd, "argv": list(job.command), "env": env, "env_setup": job.env_setup,
            "output": job.output, "error": job.error or job.output, "truncate": job.attempt <= 1,
            "record": self.record_path(job.id, job.attempt),
        }
        with self._lock:
            self._supervised[job.id] = _Supervised(job.attempt)
        try:
            self.launcher.launch(spec)
        except launcher.HelperGone as e:
            # No way to start jobs: stop, so the service manager restarts the daemon.
            raise MgpuError(errors.INTERNAL, str(e)) from None

    def signal_job(self, job_id, attempt, signum):
        with self._lock:
            entry = self._supervised.get(job_id)
            if entry is None or entry.attempt != attempt:
                return
            if entry.pgid is None:
                entry.signals.append(signum)
                return
            target = (entry.sup_pid, entry.sup_start, entry.pgid)
        launcher.signal_job(*target, signum)

    def release(self, job_id, attempt):
        """The master has recorded the end of this attempt: forget it. (The record is deleted
        by a thread of its own: an unlink can take a millisecond, and the master's loop must
        not wait for it.)"""
        with self._lock:
            entry = self._supervised.get(job_id)
            if entry is not None and entry.attempt == attempt:
                del self._supervised[job_id]
        self._obsolete_records.put(self.record_path(job_id, attempt))

    def adopt(self, jobs):
        """After a restart: take over the jobs the store says run here. Each is still running
        (watched again), has ended (its recorded exit is reported), or is lost."""
        keep = set()
        for job in jobs:
            keep.add("%d.%d.json" % (job.id, job.attempt))
            self._adopt_one(job.id, job.attempt)
        for name in os.listdir(self.records_dir):
            if name not in keep:
                try:
                    os.unlink(os.path.join(self.records_dir, name))
                except OSError:
                    pass

    def _adopt_one(self, job_id, attempt):
        record = launcher.read_record(self.record_path(job_id, attempt))
        if record is None:
            self.emit({"kind": "job_lost", "node": self.name, "job_id": job_id, "attempt": attempt,
                       "started": False, "reason": "the daemon stopped before the job started"})
            return
        if "exit_code" in record:
            self.emit(dict(record, kind="job_exited", node=self.name))
            return
        if launcher.supervisor_alive(record["sup_pid"], record["sup_start"]):
            entry = _Supervised(attempt)
            entry.sup_pid, entry.sup_start, entry.pgid = record["sup_pid"], record["sup_start"], record["pgid"]
            with self._lock:
                self._supervised[job_id] = entry
            self.emit(dict(record, kind="job_started", node=self.name))
            return
        # The supervisor died without recording an exit: end whatever is left of the job.
        launcher.signal_job(None, None, record.get("pgid"), 9)
        self.emit({"kind": "job_lost", "node": self.name, "job_id": job_id, "attempt": attempt,
                   "started": True, "reason": "its supervisor disappeared"})

    # -- output -----------------------------------------------------------------------------

    @staticmethod
    def open_output(path, uid):
        """A read-only descriptor on a job's output file, or None. The path is the user's
        choice and we are root: never follow a final symlink, and read only a regular file the
        job's user owns."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
            os.close(fd)
            return None
        return fd

    # -- threads ----------------------------------------------------------------------------

    def _read_events(self):
        for event in self.launcher.events():
            kind = event.pop("event", None)
            job_id, attempt = event.get("job_id"), event.get("attempt")
            with self._lock:
                entry = self._supervised.get(job_id)
                if entry is None or entry.attempt != attempt:
                    continue
                if kind == "started":
                    entry.sup_pid, entry.sup_start, entry.pgid = event["sup_pid"], event["sup_start"], event["pgid"]
                    pending, entry.signals = entry.signals, []
                else:
                    # Ended: no signal may reach a process group id the kernel can reuse.
                    del self._supervised[job_id]
                    pending = []
            for signum in pending:
                launcher.signal_job(entry.sup_pid, entry.sup_start, entry.pgid, signum)
            event["kind"] = "job_started" if kind == "started" else "job_exited"
            event["node"] = self.name
            self.emit(event)

    def _delete_records(self):
        while True:
            path = self._obsolete_records.get()
            try:
                os.unlink(path)
            except OSError:
                pass

    def _watch(self):
        while not self._stopping.wait(WATCH_INTERVAL):
            with self._lock:
                watched = [(job_id, e.attempt, e.sup_pid, e.sup_start) for job_id, e in self._supervised.items()
                           if e.sup_pid is not None]
            sessions = set()
            for job_id, attempt, sup_pid, sup_start in watched:
                if launcher.supervisor_alive(sup_pid, sup_start):
                    sessions.add(sup_pid)
                    continue
                time.sleep(0.2)  # its exit event may be on its way through the pipe
                with self._lock:
                    entry = self._supervised.get(job_id)
                    if entry is None or entry.attempt != attempt:
                        continue
                    del self._supervised[job_id]
                record = launcher.read_record(self.record_path(job_id, attempt))
                if record is not None and "exit_code" in record:
                    self.emit(dict(record, kind="job_exited", node=self.name))
                else:
                    self.emit({"kind": "job_lost", "node": self.name, "job_id": job_id,
                               "attempt": attempt, "started": True, "reason": "its supervisor disappeared"})
            if self.inventory.kind == "nvml":
                usage = self.inventory.external_usage(sessions)
                if usage != self._usage:
                    self._usage = usage
                    self.emit({"kind": "gpu_usage", "node": self.name, "usage": usage})
