"""The master's logic: `handle(event, now) -> actions`.

Owns: the queue and the running jobs in memory, authorisation of requests (identity comes in
the event, read by the kernel), validation of submissions against the cluster, time limits,
warning signals, two-stage stops, the time-slice context switch, job dependencies (a pending job
whose --dependency does not hold yet takes no part in passes; one that can never hold is
cancelled, and its dependants in turn), and the decision of what each
job end means (COMPLETED, FAILED, TIMEOUT, CANCELLED, requeue). Must not: do I/O, read a clock,
start threads, or call a node: it returns actions and the master carries them out, writing the
store before anything that depends on it.

Events are dicts with a `kind`: `request` (a client's request, with the peer's identity),
`node_up`, `gpu_usage`, `job_started`, `job_exited`, `job_lost`, `job_port`, and `history_read`
(finished jobs the master read from the store for a ReadHistory: `history`, and `show` of a job
no longer kept in memory). Drained nodes
(`drain`, `resume`: root and operators) are kept by name, whether they are up or not, and given
at construction after a restart; a drained node keeps its running jobs and takes no new ones.
Time passes through `advance(now)`; a scheduler pass runs through `schedule(now)` and only when
something changed.
Remote nodes that joined are recorded (`SaveNode`) and given at construction after a restart
(`known_nodes`): until they reconnect they are unreachable (no new jobs), and --nodelist, admission
and the node table know them.

A job on several hosts (a gang: `job.parts`, one part per host in rank order) is launched in two
steps: rank 0 first, the other ranks once rank 0's host reported the MASTER_PORT it chose
(`job_port`). Each part reports its own start and end (`node` names the part); the job runs
until every part has ended, the first part to fail stops the others, a part that could not start
puts the whole job back in the queue (FAILED after MAX_LAUNCH_FAILURES tries in a row), and a
part lost with its host ends the whole job (NODE_FAIL, or a requeue). Stops, warnings and
releases reach every part.
"""

import collections
import re
import signal as _signal

from . import cells, errors, protocol, scheduler
from .errors import MgpuError
from .model import (DEFAULT_WARN_SECONDS, MAX_ARRAY_TASK_ID, MAX_JOB_ID, MAX_PATH, ArrayTasks, Gpu, Job, JobArray,
                    JobState, Node, NodeState, ResourceRequest, Transition, dependency_outcome, dependency_waits,
                    format_array_runs, format_dependency, format_duration)

SIGTERM = int(_signal.SIGTERM)
SIGKILL = int(_signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Actions


class Action:
    __slots__ = ()

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % (name, getattr(self, name)) for name in self.__slots__))

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__)


class Reply(Action):
    """Answer the request identified by `token`."""
    __slots__ = ("token", "message")

    def __init__(self, token, message):
        self.token, self.message = token, message


class Save(Action):
    """Write the job (and its new environment, and the transition) to the store. env_from: a
    new task of a job array, whose environment is a copy of the array's (that array's id)."""
    __slots__ = ("job", "transition", "env", "env_from")

    def __init__(self, job, transition=None, env=None, env_from=None):
        self.job, self.transition, self.env, self.env_from = job, transition, env, env_from


class SaveArray(Action):
    """Write a job array's record: whole (its template too: when it is submitted or its
    dependencies change) or only its progress (tasks started, ended, cancelled). `env` and
    `transition` with its submission. done: no task is left to start or running: its record and
    environment are deleted."""
    __slots__ = ("array", "whole", "env", "transition", "done")

    def __init__(self, array, whole=False, env=None, transition=None, done=False):
        self.array, self.whole, self.env, self.transition, self.done = array, whole, env, transition, done


class Launch(Action):
    """Start the job's current attempt on its node; for a job on several hosts, the part of
    `rank` on that rank's host (rank None: a job on one host)."""
    __slots__ = ("job", "rank")

    def __init__(self, job, rank=None):
        self.job, self.rank = job, rank


class SignalJob(Action):
    __slots__ = ("node", "job_id", "attempt", "signum")

    def __init__(self, node, job_id, attempt, signum):
        self.node, self.job_id, self.attempt, self.signum = node, job_id, attempt, signum


class Release(Action):
    """The end of this attempt is recorded: the node may forget it."""
    __slots__ = ("node", "job_id", "attempt")

    def __init__(self, node, job_id, attempt):
        self.node, self.job_id, self.attempt = node, job_id, attempt


class SaveDrain(Action):
    """Record that a node is drained (with its reason), or no longer (reason None)."""
    __slots__ = ("node", "reason")

    def __init__(self, node, reason):
        self.node, self.reason = node, reason


class SaveNode(Action):
    """Record a remote node's inventory (what it registered with), to know it after a restart."""
    __slots__ = ("node", "record")

    def __init__(self, node, record):
        self.node, self.record = node, record


class ReadHistory(Action):
    """Read finished jobs from the store, off the loop, then hand them back as a `history_read`
    event: {"read": this action, "jobs": [Job, ...], "more": bool} or {"read": ..., "error":
    (code, message)}. `filters`: user, states, ids, since, limit (HistoryReader.finished_jobs).
    `show`: the id of the one job `mgpu show` asked for (None for `mgpu history`)."""
    __slots__ = ("token", "peer", "filters", "show")

    def __init__(self, token, peer, filters, show=None):
        self.token = token
        self.peer = peer
        self.filters = filters
        self.show = show


class Log(Action):
    __slots__ = ("line",)

    def __init__(self, line):
        self.line = line


# ---------------------------------------------------------------------------------------------


class Settings:
    """What the controller needs of the configuration."""

    def __init__(self, policy="fill_first", max_user_priority=100, max_job_time=None, kill_grace=10.0,
                 operator_uids=(), allow_root_jobs=False, owner_uid=None, owner_name=None,
                 keep_finished=10000, max_requeues=5):
        self.policy = policy
        self.max_user_priority = max_user_priority
        self.max_job_time = max_job_time
        self.kill_grace = kill_grace
        self.operator_uids = frozenset(operator_uids)
        self.allow_root_jobs = allow_root_jobs
        self.owner_uid = owner_uid      # set in single-user mode
        self.owner_name = owner_name
        self.keep_finished = keep_finished
        self.max_requeues = max_requeues  # a --requeue job restarted this often ends TIMEOUT at its limit


def ok(result=None):
    return {"ok": True, "result": result}


def error_reply(code, message):
    return {"ok": False, "error": code, "message": message}


def warning_lead(lead, time_limit):
    """Seconds before the time limit at which --signal warns a job: the lead asked for, which
    must be shorter than the limit; without one DEFAULT_WARN_SECONDS, cut to half a limit
    shorter than twice that. MgpuError when no lead fits."""
    if lead is None:
        lead = min(DEFAULT_WARN_SECONDS, time_limit // 2)
        if lead < 1:
            raise MgpuError(errors.INVALID_ARGUMENT, "--signal: a time limit of %d s leaves no time to warn "
                            "the job before it" % time_limit)
    elif lead >= time_limit:
        raise MgpuError(errors.INVALID_ARGUMENT, "--signal @%d warns %d s before the time limit, but the limit "
                        "is %d s: give a lead shorter than the limit (e.g. @%d)"
                        % (lead, lead, time_limit, max(1, time_limit // 2)))
    return lead


def _plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def describe_command(command):
    text = " ".join(command)
    return text if len(text) <= 80 else text[:77] + "..."


# The events the master feeds to handle(), besides requests; each has a handler `_on_<kind>`.
EVENTS = frozenset(("node_up", "node_heartbeat", "node_unreachable", "node_down", "gpu_usage", "job_started",
                    "job_exited", "job_lost", "job_port", "history_read"))

# Failed launches in a row of a job on several hosts (a part could not start) before it ends
# FAILED instead of going back to the queue: a host that refuses it (no such user there) would
# otherwise requeue it forever.
MAX_LAUNCH_FAILURES = 3

# Scheduler passes run back to back by one schedule() call while the starts of a pass let jobs
# that wait for them (--dependency after:ID) join the queue; beyond that the next loop does.
MAX_DEPENDENCY_PASSES = 8

# What stops a running job (job.stop_cause) -> the word its log line uses. For a job on several
# hosts, "part_failed": a part failed, the others get the two-stage stop and the job ends FAILED;
# "launch_failed": a part could not start, the others get SIGKILL and the job goes back to the
# queue (see _launch_failed).
# "mpi_done": the command of an --mpi job (rank 0) ended with 0; the parts that only held their
# hosts' GPUs are stopped and the job ends COMPLETED.
STOP_VERBS = {"cancel": "cancel", "timeout": "time limit", "slice": "time slice", "part_failed": "stop",
              "mpi_done": "stop"}


# Job arrays: a pass sees at most this many tasks of one array at once (the next to start), fewer
# when the cluster has fewer free GPUs for them; ARRAY_PASSES passes run back to back while an
# array has more tasks that could start (see schedule).
MAX_ARRAY_CANDIDATES = 256
ARRAY_PASSES = 8
ARRAY_LIMIT_REASON = "JobArrayTaskLimit: %d of its tasks run at once (%%%d)"
MAX_ARRAYS_REMEMBERED = 10_000  # arrays whose tasks all ended, for --dependency on them
MAX_ARRAY_CANCEL_STRIDED = 100_000  # task ids of one FIRST-LAST:STEP run a cancel looks at one by one


class Controller:
    def __init__(self, settings, jobs=(), next_id=1, next_seq=1, drained=None, known_nodes=None, arrays=()):
        self.settings = settings
        self.nodes = {}
        self._node_records = {}  # remote node name -> the record last saved of it
        for name, record in (known_nodes or {}).items():
            try:
                gpus = [Gpu.from_dict(g) for g in record["gpus"]]
                address = record.get("address")
                node = Node(name, gpus, state=NodeState.UNREACHABLE,
                            address=address if isinstance(address, str) else None,
                            submit_only=record.get("submit_only") is True)
            except (KeyError, TypeError, ValueError):
                continue  # not plausible: the node is known again when it reconnects
            self.nodes[name] = node
            self._node_records[name] = record
        self.drained = dict(drained or {})  # node name -> why it is drained (up, down or unknown)
        self.jobs = {}
        self.pending = {}
        self.running = {}
        self.finished = collections.deque()
        self.next_id = next_id
        self.next_seq = next_seq
        # A full scheduler pass is due when resources were freed or the queue changed other
        # than by new submissions; new submissions alone need a pass over themselves and the
        # head (whose reservation they must respect): the rest of the queue still cannot start.
        self.dirty = True
        self._new_jobs = []
        self._head = None    # the job holding the backfill reservation after the last pass
        self.waiting = {}    # job id -> why it waits, from the scheduler passes
        self._positions = {}
        self._positions_valid = False
        # Pending job id -> (what its row shows that can change, its table cells as JSON): the
        # compact queue reply (`brief`) makes a pending job's cells again only when it changed.
        self._cells = {}
        self._over_slice = set()  # running jobs past the time slice (checked on each pass)
        self.held = {}            # pending job id -> why no pass considers it (an internal error)
        self._advance_failed = {}  # running job id -> attempt whose error advance() logged
        # --dependency: pending jobs some of whose dependencies do not hold yet (no pass
        # considers them), the job ids they wait on (-> their ids), and the jobs that started or
        # ended since their dependants were last looked at: (id, state, started), see
        # _settle_dependencies.
        self.blocked = {}
        self._waiting_on = {}
        self._resolved = collections.deque()
        # Job arrays: array job id -> JobArray while a task is to start or runs; the tasks kept in
        # memory (array id -> {task id: job id}); the active tasks' job ids (array id -> set);
        # arrays changed since their record was last saved; arrays whose tasks all ended (id ->
        # (final state, started)); the candidate tasks of the last full pass (id "N_T" -> Job).
        self.arrays = {}
        self.array_tasks = {}
        self._array_active = {}
        self._arrays_changed = set()
        self._arrays_over = collections.OrderedDict()
        self._new_arrays = []
        self._candidates = {}
        self._array_reasons = {}
        for array in sorted(arrays, key=lambda a: a.id):
            self._track_array(array)
        for job in sorted(jobs, key=lambda j: j.id):
            self._track(job)
        for array_id in list(self.arrays):
            self._arrays_changed.add(array_id)  # one with nothing left is cleared by the first flush
        # After a restart: look at every dependency again (one that is no longer known can never
        # hold); the first handle() or schedule() settles them.
        for dep_id in sorted(self._waiting_on):
            dep = self.jobs.get(dep_id)
            array = self.arrays.get(dep_id)
            if array is not None:
                self._resolved.append((dep_id, JobState.RUNNING if array.started else JobState.PENDING,
                                       array.started))
                continue
            self._resolved.append((dep_id, None, False) if dep is None else (dep_id, dep.state, dep.attempt > 0))

    # -- bookkeeping ------------------------------------------------------------------------

    def _track(self, job):
        self.jobs[job.id] = job
        if job.array_job_id is not None:
            self._track_task(job)
        if job.state == JobState.PENDING:
            self.pending[job.id] = job
            self._block(job.id, job)
        elif job.state == JobState.RUNNING:
            self.running[job.id] = job
        else:
            self.finished.append(job.id)
            while len(self.finished) > self.settings.keep_finished:
                gone = self.jobs.pop(self.finished.popleft(), None)
                if gone is not None and gone.array_job_id is not None and gone.id not in self.jobs:
                    tasks = self.array_tasks.get(gone.array_job_id)
                    if tasks is not None and tasks.get(gone.array_task_id) == gone.id:
                        del tasks[gone.array_task_id]
                        if not tasks:
                            del self.array_tasks[gone.array_job_id]

    def _track_task(self, job):
        """A task of a job array: indexed by its array and task id; counted while active."""
        array_id = job.array_job_id
        self.array_tasks.setdefault(array_id, {})[job.array_task_id] = job.id
        active = self._array_active.get(array_id)
        if job.state in JobState.ACTIVE:
            if active is None:
                active = self._array_active[array_id] = set()
            active.add(job.id)
        elif active is not None:
            active.discard(job.id)
            if not active:
                del self._array_active[array_id]

    def _track_array(self, array):
        """A job array with tasks to start or running: kept, and blocked while its dependencies
        do not hold."""
        self.arrays[array.id] = array
        self._block(array.id, array.template)

    def _block(self, key, job):
        """Keep `job` (a pending job, or a job array's template under the array's id `key`) out
        of the passes while some of its dependencies do not hold, noting what it waits on."""
        if job.dependency and not all(met for _, _, met in job.dependency):
            self.blocked[key] = job
            for _, dep_id, met in job.dependency:
                if not met:
                    self._waiting_on.setdefault(dep_id, set()).add(key)

    def _move(self, job, new, now, reason, cause):
        """Change a job's state (the one transition function, in model.Job) and its place in
        the controller's tables; returns the Save action that records it."""
        old = job.state
        transition = job.transition(new, now, reason, cause)
        if old == JobState.PENDING:
            self.pending.pop(job.id, None)
            self._forget_dependencies(job)
        elif old == JobState.RUNNING:
            self.running.pop(job.id, None)
            self._over_slice.discard(job.id)
        if (new == JobState.RUNNING or new in JobState.FINAL) and job.id in self._waiting_on:
            self._resolved.append((job.id, new, new == JobState.RUNNING or job.attempt > 0))
        if job.array_job_id is not None:
            self._task_moved(job, new)
        if new == JobState.PENDING:
            job.queue_seq = self.next_seq  # back of the queue
            self.next_seq += 1
            job.parts = job.part_status = job.master_port = None  # it holds no host while it waits
        if new in JobState.FINAL:
            self.jobs.pop(job.id, None)
        self._track(job)
        self._positions_valid = False
        if new != JobState.RUNNING:  # a start is decided by a pass and frees nothing
            self.dirty = True
        return Save(job, transition)

    def _task_moved(self, job, new):
        """A task of a job array changed state: its array's progress changes with it."""
        array = self.arrays.get(job.array_job_id)
        if array is None:
            return
        if new == JobState.RUNNING:
            if not array.started:
                array.started = True
                self._arrays_changed.add(array.id)
            if array.id in self._waiting_on:
                self._resolved.append((array.id, JobState.RUNNING, True))
        elif new in JobState.FINAL:
            array.ended[new] = array.ended.get(new, 0) + 1
            self._arrays_changed.add(array.id)

    def _flush_arrays(self):
        """SaveArray for every array changed since the last flush; an array with no task left to
        start or running is done: forgotten, its end told to the jobs that depend on it."""
        actions = []
        for array_id in sorted(self._arrays_changed):
            array = self.arrays.get(array_id)
            if array is None:
                continue
            if array.pending or self._array_active.get(array_id):
                actions.append(SaveArray(array))
                continue
            del self.arrays[array_id]
            self._forget_dependencies(array.template)
            self._candidates = {}
            outcome = array.outcome()
            self._arrays_over[array_id] = (outcome, array.started)
            while len(self._arrays_over) > MAX_ARRAYS_REMEMBERED:
                self._arrays_over.popitem(last=False)
            if array_id in self._waiting_on:
                self._resolved.append((array_id, outcome, array.started))
            done = sum(array.ended.values())
            actions.append(SaveArray(array, done=True))
            actions.append(Log("array %d ended %s: %s" % (array_id, outcome, ", ".join(
                "%d %s" % (n, state) for state, n in sorted(array.ended.items())) or "%d tasks" % done)))
        self._arrays_changed.clear()
        self._positions_valid = False
        return actions

    def _forget_dependencies(self, job):
        """A job that no longer waits in the queue (started, cancelled, withdrawn) waits on
        nothing."""
        if self.blocked.pop(job.id, None) is None:
            return
        for _, dep_id, _ in job.dependency:
            self._stop_waiting(dep_id, job.id)

    def _stop_waiting(self, dep_id, key):
        """Job (or array) `key` no longer waits on `dep_id`."""
        waiting = self._waiting_on.get(dep_id)
        if waiting is not None:
            waiting.discard(key)
            if not waiting:
                del self._waiting_on[dep_id]

    def _settle_dependencies(self, now):
        """What the jobs that started or ended since the last call mean for the jobs that depend
        on them: a dependency that now holds is marked so (and saved); once all of a job's hold
        it joins the queue; one that can never hold cancels the job, and that job's end is
        looked at in turn (a chain cancels whole)."""
        actions = []
        resolved = self._resolved
        while resolved:
            dep_id, state, started = resolved.popleft()
            for job_id in sorted(self._waiting_on.get(dep_id, ())):
                job = self.blocked.get(job_id)
                if job is not None:
                    actions.extend(self._dependency_resolved(job, dep_id, state, started, now))
        return actions

    def _dependency_resolved(self, job, dep_id, state, started, now):
        """Job `dep_id` is now in `state` (None: no longer known) and has `started` or not: mark
        what of `job`'s dependencies on it holds, or cancel `job` when one never can."""
        changed = False
        for entry in job.dependency:
            kind, other, met = entry
            if met or other != dep_id:
                continue
            outcome = False if state is None else dependency_outcome(kind, state, started)
            if outcome is False:
                why = "is no longer known" if state is None else "ended " + state
                reason = "dependency never satisfied: job %d %s (%s:%d)" % (dep_id, why, kind, dep_id)
                if job.id in self.arrays and job is self.arrays[job.id].template:
                    return self._cancel_array_pending(self.arrays[job.id], reason, now) + [
                        Log("cancel array %d (pending): %s" % (job.id, reason))]
                return [self._move(job, JobState.CANCELLED, now, reason, "dependency"),
                        Log("cancel job %d (pending): %s" % (job.id, reason))]
            if outcome:
                entry[2] = changed = True
        if not changed:
            return []
        if all(other != dep_id or met for _, other, met in job.dependency):
            self._stop_waiting(dep_id, job.id)
        array = self.arrays.get(job.id)
        if array is not None and job is not array.template:
            array = None  # a job of that id, not the array
        save = Save(job) if array is None else SaveArray(array, whole=True)
        if not all(met for _, _, met in job.dependency):
            return [save]
        del self.blocked[job.id]
        self.dirty = True
        self._positions_valid = False
        return [save, Log("%s %d: its dependencies are satisfied (%s)" % (
            "job" if array is None else "array", job.id, _dependency_spec(job)))]

    def _dependency(self, pairs):
        """[[type, job id, met], ...] of a submission's dependency pairs, each pair once; refused
        when a job it names is not known (a future id, or one that ended too long ago to know
        how) or when one can already never hold. None without dependencies."""
        if not pairs:
            return None
        entries, seen = [], set()
        for kind, dep_id in pairs:
            if (kind, dep_id) in seen:
                continue
            seen.add((kind, dep_id))
            spec = "%s:%d" % (kind, dep_id)
            dep = self.jobs.get(dep_id)
            array_state = self._array_state(dep_id) if dep is None else None
            if array_state is not None:  # a job array: all of its tasks (Slurm's meaning)
                state, started = array_state
                outcome = dependency_outcome(kind, state, started)
                if outcome is False:
                    raise MgpuError(errors.INVALID_ARGUMENT, "--dependency %s can never be satisfied: job "
                                    "array %d ended %s" % (spec, dep_id, state))
                entries.append([kind, dep_id, bool(outcome)])
                continue
            if dep is None and dep_id >= self.next_id:
                raise MgpuError(errors.NOT_FOUND, "--dependency %s: no job %d" % (spec, dep_id))
            if dep is None:
                raise MgpuError(errors.NOT_FOUND, "--dependency %s: job %d ended too long ago to depend on (the "
                                "master keeps the newest %d finished jobs)" % (spec, dep_id,
                                                                              self.settings.keep_finished))
            outcome = dependency_outcome(kind, dep.state, dep.attempt > 0)
            if outcome is False:
                raise MgpuError(errors.INVALID_ARGUMENT, "--dependency %s can never be satisfied: job %d ended %s"
                                % (spec, dep_id, dep.state))
            entries.append([kind, dep_id, bool(outcome)])
        return entries

    def _array_state(self, array_id):
        """(state, started) of a job array as a dependency sees it: RUNNING once a task has
        started, PENDING before, its final state once every task has ended; None when
        `array_id` is no array known."""
        array = self.arrays.get(array_id)
        if array is not None:
            return (JobState.RUNNING if array.started else JobState.PENDING), array.started
        return self._arrays_over.get(array_id)

    def _dependency_reason(self, job):
        """Why a job with dependencies that do not hold yet waits: the first of them."""
        for kind, dep_id, met in job.dependency:
            if not met:
                return "Dependency: " + dependency_waits(kind, dep_id)
        return "Dependency"

    def privileged(self, uid):
        s = self.settings
        return uid == 0 or uid in s.operator_uids or (s.owner_uid is not None and uid == s.owner_uid)

    # -- events -----------------------------------------------------------------------------

    def handle(self, event, now):
        actions = self._dispatch(event, now)
        if self._arrays_changed or self._resolved:
            actions = actions + self._settle(now)
        return actions

    def _settle(self, now):
        """The arrays changed (saved; those with no task left forgotten) and the dependencies
        that jobs' starts and ends decide, until neither leads to more."""
        actions = []
        while self._arrays_changed or self._resolved:
            if self._arrays_changed:
                actions.extend(self._flush_arrays())
            if self._resolved:
                actions.extend(self._settle_dependencies(now))
        return actions

    def _dispatch(self, event, now):
        kind = event.get("kind")
        if kind == "request":
            return self._request(event, now)
        if kind not in EVENTS:
            return [Log("ignored unknown event %r" % (kind,))]
        return getattr(self, "_on_" + kind)(event, now)

    def _request(self, event, now):
        token, peer, type_ = event["token"], event["peer"], event["type"]
        s = self.settings
        if s.owner_uid is not None and peer["uid"] != s.owner_uid:
            return [Reply(token, error_reply(
                errors.PERMISSION_DENIED,
                "this mgpu master runs in single-user mode for %s (it was started without root); "
                "it serves only %s" % (s.owner_name, s.owner_name)))]
        try:
            return getattr(self, "_" + type_)(token, event["fields"], peer, now)
        except MgpuError as e:
            return [Reply(token, error_reply(e.code, e.message))]

    def _ping(self, token, fields, peer, now):
        return [Reply(token, ok({"time": now}))]

    def _submit(self, token, fields, peer, now):
        s = self.settings
        uid = peer["uid"]
        if uid == 0 and not s.allow_root_jobs and s.owner_uid is None:
            raise MgpuError(errors.PERMISSION_DENIED,
                            "jobs do not run as root: submit as your own user, or set "
                            "allow_root_jobs: true in the master's config")
        priority = fields.get("priority")
        priority = 0 if priority is None else priority
        if not self.privileged(uid) and not 0 <= priority <= s.max_user_priority:
            raise MgpuError(errors.INVALID_ARGUMENT, "priority must be between 0 and %d (higher "
                            "runs first); only root and operators may go beyond" % s.max_user_priority)
        gpu_ids = fields.get("gpu_ids")
        if gpu_ids is not None and len(set(gpu_ids)) != len(gpu_ids):
            raise MgpuError(errors.INVALID_ARGUMENT, "GPU ids must be distinct")
        gpus = fields.get("gpus", 1)
        nodelist = self._known_nodes(fields.get("nodelist"), "--nodelist")
        nnodes, node_gpu_ids = fields.get("nnodes"), self._node_gpu_ids(fields.get("node_gpu_ids"))
        if node_gpu_ids is not None:
            if gpu_ids is not None or fields.get("nnodes", len(node_gpu_ids)) != len(node_gpu_ids):
                raise MgpuError(errors.INVALID_ARGUMENT, "node_gpu_ids says which GPUs of each host: "
                                "give neither gpu_ids nor another nnodes")
            if len(node_gpu_ids) == 1:  # one host: that host's GPUs, as --nodelist with --gpu-ids
                (host, gpu_ids), = node_gpu_ids
                nodelist, node_gpu_ids = (host,), None
            gpus = max(len(ids) for _, ids in node_gpu_ids) if node_gpu_ids else len(gpu_ids)
            nnodes = len(node_gpu_ids) if node_gpu_ids else None
        if nnodes is not None and nnodes < 2:
            nnodes = None
        if fields.get("mpi") and not nnodes:
            raise MgpuError(errors.INVALID_ARGUMENT, "--mpi runs mpirun on the first of several hosts: "
                            "give --nodes (or --node-gpu-ids of several hosts)")
        if nnodes and gpu_ids is not None:
            raise MgpuError(errors.INVALID_ARGUMENT, "a job on several hosts gives its GPUs per host "
                            "(gpus, or node_gpu_ids), not gpu_ids")
        runs = fields.get("array")
        if runs is not None:
            if fields.get("interactive") or fields.get("stdin"):
                raise MgpuError(errors.INVALID_ARGUMENT, "srun -i cannot follow a job array: submit it "
                                "without -i and watch its tasks with 'mgpu queue'")
            if nnodes or fields.get("mpi"):
                raise MgpuError(errors.INVALID_ARGUMENT, "--array with --nodes is not supported: each task "
                                "of a job array runs on one host")
        request = ResourceRequest(gpus if gpus is not None else 1, gpu_ids, fields.get("mem_mb"), nodelist,
                                  self._known_nodes(fields.get("exclude"), "--exclude"), nnodes, node_gpu_ids)
        why = self.unsatisfiable(request)
        if why:
            raise MgpuError(errors.UNSATISFIABLE, "cannot ever run: " + why)
        dependency = self._dependency(fields.get("dependency"))
        time_limit = fields.get("time_limit")
        warn_signal = fields.get("warn_signal")
        warn_seconds = fields.get("warn_seconds")
        if warn_signal is not None and not time_limit:
            raise MgpuError(errors.INVALID_ARGUMENT, "--signal warns before the time limit: give --time-limit too")
        if warn_signal is not None:
            warn_seconds = warning_lead(warn_seconds, time_limit)
        job_id = self.next_id
        user = peer["user"]
        cwd = fields["cwd"]
        if not cwd.startswith("/"):
            raise MgpuError(errors.INVALID_ARGUMENT, "the working directory must be an absolute path")
        logs = peer["home"].rstrip("/") + "/.mgpu/logs/"
        if runs is not None:  # each task fills in %j and %a when it starts
            output = self._array_path(fields.get("output") or logs + "%A_%a.out", job_id, user,
                                      fields.get("name"), cwd, "--output")
            error = fields.get("error")
            error = self._array_path(error, job_id, user, fields.get("name"), cwd, "--error") if error else None
            return self._submit_array(token, fields, peer, now, runs, dict(
                id=job_id, user=user, uid=uid, gid=peer["gid"], name=fields.get("name"),
                command=fields["command"], cwd=cwd, output=output.replace("%r", "0"),
                error=error and error.replace("%r", "0"), env_setup=fields.get("env_setup"), gpus=request.gpus,
                gpu_ids=request.gpu_ids, mem_mb=request.mem_mb, nodelist=request.nodelist,
                exclude=request.exclude, distributed=bool(fields.get("distributed")) or None,
                time_limit=time_limit, priority=priority, requeue=bool(fields.get("requeue")),
                warn_signal=warn_signal, warn_seconds=warn_seconds, submit_time=now, queue_seq=self.next_seq,
                state=JobState.PENDING, reason="submitted", umask=fields.get("umask"), dependency=dependency))
        output = self._expand(fields.get("output") or logs + "%j.out", job_id, user, fields.get("name"),
                              cwd, "--output")
        error = fields.get("error")
        if error is None and fields.get("interactive") and fields.get("stdin") != "pty":
            error = logs + "%j.err"  # with a pty, stdout and stderr are one stream: the terminal
        error = self._expand(error, job_id, user, fields.get("name"), cwd, "--error") if error else None
        if not request.nnodes:  # %r is the rank of a part: a job on one host is rank 0
            output, error = output.replace("%r", "0"), error and error.replace("%r", "0")
        job = Job(id=job_id, user=user, uid=uid, gid=peer["gid"], name=fields.get("name"),
                  command=fields["command"], cwd=cwd, output=output, error=error,
                  env_setup=fields.get("env_setup"), gpus=request.gpus, gpu_ids=request.gpu_ids,
                  mem_mb=request.mem_mb, nodelist=request.nodelist, exclude=request.exclude,
                  nnodes=request.nnodes, node_gpu_ids=request.node_gpu_ids,
                  distributed=bool(fields.get("distributed")) or None, mpi=bool(fields.get("mpi")) or None,
                  time_limit=time_limit, priority=priority,
                  requeue=bool(fields.get("requeue")), warn_signal=warn_signal,
                  warn_seconds=warn_seconds, submit_time=now,
                  queue_seq=self.next_seq, state=JobState.PENDING, reason="submitted",
                  umask=fields.get("umask"), dependency=dependency, stdin=fields.get("stdin"))
        self.next_id += 1
        self.next_seq += 1
        self._track(job)
        self._new_jobs.append(job)
        self._positions_valid = False
        what = "%s" % _plural(job.gpus, "GPU") if not job.gpu_ids else "GPUs " + ",".join(map(str, job.gpu_ids))
        if job.mem_mb:
            what += " x %d MB" % job.mem_mb
        if job.node_gpu_ids:
            what = " ".join("%s:%s" % (host, ",".join(map(str, ids))) for host, ids in job.node_gpu_ids)
        elif job.nnodes:
            what = "%d hosts x %s" % (job.nnodes, what)
        if job.nodelist:
            what += " on %s" % ",".join(job.nodelist)
        if job.exclude:
            what += " not on %s" % ",".join(job.exclude)
        if job.dependency:
            what += " dependency=%s" % _dependency_spec(job)
        return [
            Save(job, Transition(job.id, now, "", JobState.PENDING, "submitted", "submit by %s" % user),
                 fields["env"]),
            Log("submit job %d user=%s %s priority=%d: %s" % (job.id, user, what, priority,
                                                             describe_command(job.command))),
            Reply(token, ok({"job_id": job.id, "output": job.output, "error": job.error})),
        ]

    def _submit_array(self, token, fields, peer, now, runs, template_fields):
        """A job array: one record (its template and the task ids to start), no job per task
        until that task starts."""
        template = Job(**template_fields)
        array = JobArray(template.id, template, ArrayTasks(runs), fields.get("array_throttle"))
        self.next_id += 1
        self.next_seq += 1
        self._track_array(array)
        self._new_arrays.append(array)
        self._positions_valid = False
        env = {k: v for k, v in fields["env"].items() if not k.startswith("MGPU_ARRAY_")}
        env.update(MGPU_ARRAY_JOB_ID=str(array.id), MGPU_ARRAY_TASK_COUNT=str(array.task_count),
                   MGPU_ARRAY_TASK_MIN=str(array.task_min), MGPU_ARRAY_TASK_MAX=str(array.task_max))
        what = _plural(template.gpus, "GPU") if not template.gpu_ids else "GPUs " + ",".join(map(str, template.gpu_ids))
        if template.mem_mb:
            what += " x %d MB" % template.mem_mb
        if template.dependency:
            what += " dependency=%s" % _dependency_spec(template)
        spec = format_array_runs(runs, array.throttle)
        return [
            SaveArray(array, whole=True, env=env, transition=Transition(
                array.id, now, "", JobState.PENDING, "submitted", "submit by %s" % template.user)),
            Log("submit array %d user=%s %s (%s) %s priority=%d: %s" % (
                array.id, template.user, _plural(array.task_count, "task"), spec if len(spec) <= 200
                else spec[:197] + "...", what, template.priority, describe_command(template.command))),
            Reply(token, ok({"job_id": array.id, "array_job_id": array.id, "array_tasks": array.task_count,
                             "array": array.spec, "array_throttle": array.throttle,
                             "output": template.output, "error": template.error})),
        ]

    @staticmethod
    def _array_path(path, array_id, user, name, cwd, what):
        """The path of a job array's tasks under `cwd` when relative, refused when it could be
        over PATH_MAX bytes once %A (array id), %a (task id), %j (a task's job id), %u and %x
        are filled in. They are filled in as each task starts (task_path)."""
        name = name or "job"
        longest = len(path.encode("utf-8", "surrogateescape")) if len(path) <= MAX_PATH else len(path)
        longest += (path.count("%j") * (len(str(MAX_JOB_ID)) - 2) + path.count("%a") * (len(str(MAX_ARRAY_TASK_ID)) - 2)
                    + path.count("%A") * (len(str(array_id)) - 2) + path.count("%u") * (len(user.encode()) - 2)
                    + path.count("%x") * (len(name.encode("utf-8", "surrogateescape")) - 2)
                    + (0 if path.startswith("/") else len(cwd.encode("utf-8", "surrogateescape")) + 1))
        if longest > MAX_PATH:
            raise MgpuError(errors.INVALID_ARGUMENT, "%s is too long once %%A, %%a, %%j, %%u and %%x are "
                            "filled in: at most %d bytes" % (what, MAX_PATH))
        return path if path.startswith("/") else cwd.rstrip("/") + "/" + path

    @staticmethod
    def _expand(path, job_id, user, name, cwd, what="--output"):
        """The path with %j, %u and %x filled in, under `cwd` when relative; refused when it
        would be over PATH_MAX bytes, and before it is built when it would be over that many
        characters (a long name times many %x must not grow the master)."""
        from .model import MAX_PATH
        name = name or "job"
        chars = (len(path) + path.count("%j") * (len(str(job_id)) - 2)
                 + path.count("%u") * (len(user) - 2) + path.count("%x") * (len(name) - 2)
                 + (0 if path.startswith("/") else len(cwd) + 1))
        if chars <= MAX_PATH:
            path = path.replace("%j", str(job_id)).replace("%u", user).replace("%x", name)
            path = path if path.startswith("/") else cwd.rstrip("/") + "/" + path
        if chars > MAX_PATH or len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
            raise MgpuError(errors.INVALID_ARGUMENT, "%s is too long once %%j, %%u and %%x are "
                            "filled in: at most %d bytes" % (what, MAX_PATH))
        return path

    def _node_gpu_ids(self, pairs):
        """((host, (ids...)), ...) of a node_gpu_ids request, each host known and once, each
        host's GPU ids distinct; None without one."""
        if not pairs:
            return None
        hosts = self._known_nodes([host for host, _ in pairs], "--node-gpu-ids")
        if len(hosts) != len(pairs):
            raise MgpuError(errors.INVALID_ARGUMENT, "--node-gpu-ids names a host twice")
        for host, ids in pairs:
            if len(set(ids)) != len(ids):
                raise MgpuError(errors.INVALID_ARGUMENT, "--node-gpu-ids: the GPU ids of %s must be distinct" % host)
        return tuple((host, tuple(ids)) for host, ids in pairs)

    def _known_nodes(self, names, option):
        """The node names of a --nodelist or --exclude, each once, in the order given; refused
        when one is not a node of this cluster (one that registered, or is drained)."""
        if not names:
            return None
        known = self.nodes.keys() | self.drained.keys()
        for name in names:
            if name not in known:
                listed = sorted(known)
                raise MgpuError(errors.INVALID_ARGUMENT, "%s: no node is called %s (nodes: %s%s)" % (
                    option, _shown(name), ", ".join(listed[:20]), ", ..." if len(listed) > 20 else ""))
        return tuple(dict.fromkeys(names))

    def unsatisfiable(self, request):
        if request.gpus and not any(node.gpus for node in self.nodes.values()):
            return ("this cluster has no GPUs (NVML found none and no fake GPUs are configured); "
                    "submit with --gpus 0")
        return scheduler.unsatisfiable_reason(request, list(self.nodes.values()))

    def _queue(self, token, fields, peer, now):
        user = _user_filter(fields, peer)
        wanted = _wanted_states(fields.get("state"))
        ids = fields.get("ids")
        include_finished = (fields.get("all") or ids is not None
                            or (wanted is not None and bool(wanted & JobState.FINAL)))
        selected = list(self.running.values())
        selected.sort(key=lambda j: (j.start_time or 0, j.id))
        pending = list(self.pending.values())
        pending.extend(array.template for array in self.arrays.values() if array.pending)
        pending.sort(key=scheduler.queue_order_key)
        selected.extend(pending)
        if include_finished:
            selected.extend(self.jobs[i] for i in self.finished if i in self.jobs)
        if ids is not None:
            ids = set(ids)
            selected = [job for job in selected if job.id in ids or job.array_job_id in ids]
        selected = [job for job in selected
                    if (user is None or job.user == user) and (wanted is None or _shown_state(job) in wanted)]
        if fields.get("brief"):
            return [Reply(token, ok({"cells": self._table_cells(selected, now), "nodes": self.node_rows(),
                                     "time": now}))]
        return [Reply(token, ok({"jobs": [self._row(job) for job in selected], "nodes": self.node_rows(),
                                 "time": now}))]

    def _table_cells(self, jobs, now):
        """The jobs' table rows (cells.queue_line), as a JSON list of strings in a
        protocol.Encoded. A plain pending job's (not an array's, not one waiting on others) are
        kept, with what they show that can change (its reason, priority, restarts, limit), and
        made again only when that changed: ten thousand pending jobs cost a lookup each."""
        kept, fresh = self._cells, {}
        encode = protocol.encode_value
        out = []
        for job in jobs:
            if (job.state == JobState.PENDING and job.array_job_id is None and job.id not in self.arrays
                    and job.id not in self.blocked):
                key = (self.waiting.get(job.id, job.reason), job.priority, job.restarts, job.time_limit)
                entry = kept.get(job.id)
                if entry is None or entry[0] != key:
                    entry = (key, encode(cells.queue_line(self.job_row(job), now)))
                fresh[job.id] = entry
                out.append(entry[1])
            else:
                out.append(encode(cells.queue_line(self._row(job), now)))
        # Kept: the rows of this reply, and those of an earlier one still pending.
        for job_id, entry in kept.items():
            if job_id not in fresh and job_id in self.pending:
                fresh[job_id] = entry
        self._cells = fresh
        return protocol.Encoded("[" + ",".join(out) + "]")

    def _history(self, token, fields, peer, now):
        """Finished jobs from the store (all of them, not only those kept in memory): the
        store is read off the loop (ReadHistory), the rows are made in `_on_history_read`.
        Everyone sees every user's finished jobs, as `mgpu queue --all` shows them."""
        wanted = _wanted_states(fields.get("state"))
        if wanted is not None and wanted - JobState.FINAL:
            raise MgpuError(errors.INVALID_ARGUMENT, "history shows finished jobs: %s is not a final state "
                            "(final states: %s; 'mgpu queue' shows pending and running jobs)"
                            % (sorted(wanted - JobState.FINAL)[0], ", ".join(_FINAL_ORDER)))
        ids = fields.get("ids")
        filters = {"user": _user_filter(fields, peer), "states": None if wanted is None else sorted(wanted),
                   "ids": None if ids is None else sorted(set(ids)), "since": fields.get("since"),
                   "limit": fields.get("limit") or HISTORY_LIMIT}
        return [ReadHistory(token, peer, filters)]

    def _show(self, token, fields, peer, now):
        """Every field of one job: from memory when it is kept there, else from the store. For a
        job array: its tasks not started yet (`show N`), or one task (`show N_T`)."""
        job_id, task_id = fields["job_id"], fields.get("array_task_id")
        array = self.arrays.get(job_id)
        if task_id is not None:
            task = self.jobs.get(self.array_tasks.get(job_id, {}).get(task_id))
            if task is not None:
                return [Reply(token, ok({"job": self.job_detail(task, peer), "time": now}))]
            if array is not None and task_id in array.pending:
                row = self._array_row(array)
                row.update(array_task_id=task_id, array_tasks=str(task_id), array_pending=1)
                return [Reply(token, ok({"job": self.job_detail(array.template, peer, row), "time": now}))]
            raise MgpuError(errors.NOT_FOUND, "no task %d_%d in the queue (tasks that ended: 'mgpu history -j %d')"
                            % (job_id, task_id, job_id))
        if array is not None:
            return [Reply(token, ok({"job": self.job_detail(array.template, peer, self._array_row(array)),
                                     "time": now}))]
        job = self.jobs.get(job_id)
        if job is None and (job_id in self._arrays_over or job_id in self.array_tasks):
            raise MgpuError(errors.NOT_FOUND, "job %d is a job array whose tasks have all ended: see 'mgpu "
                            "history -j %d'" % (job_id, job_id))
        if job is None:
            filters = {"user": None, "states": None, "ids": [fields["job_id"]], "since": None, "limit": 1}
            return [ReadHistory(token, peer, filters, show=fields["job_id"])]
        return [Reply(token, ok({"job": self.job_detail(job, peer), "time": now}))]

    def _on_history_read(self, event, now):
        read = event["read"]
        if event.get("error"):
            code, message = event["error"]
            return [Reply(read.token, error_reply(code, message))]
        # A job still kept in memory is shown as the controller has it (it may be newer than
        # what the store held when it was read, while the store cannot be written).
        jobs = [self.jobs.get(job.id) or job for job in event["jobs"]]
        if read.show is not None:
            job = self.jobs.get(read.show) or next((j for j in jobs if j.id == read.show), None)
            if job is None:
                return [Reply(read.token, error_reply(errors.NOT_FOUND, "no such job %d" % read.show))]
            return [Reply(read.token, ok({"job": self.job_detail(job, read.peer), "time": now}))]
        rows = [self.job_row(job) for job in jobs if job.state in JobState.FINAL]
        return [Reply(read.token, ok({"jobs": rows, "more": bool(event.get("more")), "time": now}))]

    def _cancel(self, token, fields, peer, now):
        uid, name = peer["uid"], peer["user"]
        privileged = self.privileged(uid)
        ids = list(fields.get("ids") or ())
        user = fields.get("user")
        if user is not None:
            if not privileged and user != name:
                raise MgpuError(errors.PERMISSION_DENIED,
                                "permission denied: you may cancel only your own jobs")
            named = set(ids)
            arrays = [array.id for array in self.arrays.values()
                      if array.template.user == user and array.id not in named]
            ids.extend(arrays)
            named.update(arrays)
            ids.extend(job.id for job in list(self.running.values()) + list(self.pending.values())
                       if job.user == user and job.id not in named and job.array_job_id not in named)
        actions, results = [], []
        for array_id, runs in fields.get("tasks") or ():
            actions.extend(self._cancel_tasks(array_id, runs, peer, privileged, now, results))
        for job_id in ids:
            job = self.jobs.get(job_id)
            if job is None and (job_id in self.arrays or job_id in self.array_tasks):
                actions.extend(self._cancel_tasks(job_id, None, peer, privileged, now, results))
                continue
            if job is None:
                results.append({"id": job_id, "result": "not_found", "message": "no such job"})
            elif not privileged and job.uid != uid:
                results.append({"id": job_id, "result": "permission_denied",
                                "message": "permission denied: job %d belongs to %s" % (job_id, job.user)})
            elif job.state in JobState.FINAL:
                results.append({"id": job_id, "result": "finished",
                                "message": "already ended (%s)" % job.state})
            elif job.state == JobState.PENDING:
                actions.append(self._move(job, JobState.CANCELLED, now, "cancelled by %s" % name,
                                          "cancel by %s" % name))
                actions.append(Log("cancel job %d (pending) by %s" % (job_id, name)))
                results.append({"id": job_id, "result": "cancelled", "message": "cancelled"})
            else:
                actions.extend(self._stop(job, "cancel", now, "cancelled by %s" % name))
                results.append({"id": job_id, "result": "stopping",
                                "message": "stopping (SIGTERM sent, SIGKILL after %gs)" % self.settings.kill_grace})
        actions.append(Reply(token, ok({"results": results})))
        return actions

    def _cancel_tasks(self, array_id, runs, peer, privileged, now, results):
        """Cancel tasks of a job array: those in `runs` ([[first, last, step], ...]), or all of
        them (runs None): the ones not started leave the array, pending ones are cancelled,
        running ones stopped. One result for the array (or for each run named)."""
        name = peer["user"]
        array = self.arrays.get(array_id)
        known = self.array_tasks.get(array_id, {})
        label = "%d" % array_id if runs is None else "%d_%s" % (
            array_id, format_array_runs(runs) if len(runs) == 1 and runs[0][0] == runs[0][1]
            else "[%s]" % format_array_runs(runs))
        result = {"id": array_id, "task": label}
        if array is None and not known:
            results.append(dict(result, result="not_found", message="no such job array"))
            return []
        owner = array.template if array is not None else self.jobs[next(iter(known.values()))]
        if not privileged and owner.uid != peer["uid"]:
            results.append(dict(result, result="permission_denied",
                                message="permission denied: job %d belongs to %s" % (array_id, owner.user)))
            return []
        actions, cancelled, pending_jobs, stopping, problem = [], 0, 0, 0, None
        reason = "cancelled by %s" % name
        if runs is None:
            if array is not None:
                cancelled = len(array.pending)
                actions.extend(self._cancel_array_pending(array, reason, now))
            chosen = list(known.values())
        else:
            chosen = []
            for first, last, step in runs:
                if array is not None and array.pending:
                    try:
                        if step == 1:
                            cancelled += array.pending.remove_interval(first, last)
                        elif (last - first) // step < MAX_ARRAY_CANCEL_STRIDED:
                            cancelled += sum(1 for task_id in range(first, last + 1, step)
                                             if array.pending.remove(task_id))
                        else:
                            problem = ("cancel tasks with a step above 1 in ranges of fewer than %d tasks"
                                       % MAX_ARRAY_CANCEL_STRIDED)
                    except ValueError as e:
                        problem = str(e)
                chosen.extend(job_id for task_id, job_id in known.items()
                              if first <= task_id <= last and (task_id - first) % step == 0)
            if cancelled and array is not None:
                array.ended[JobState.CANCELLED] = array.ended.get(JobState.CANCELLED, 0) + cancelled
                self._arrays_changed.add(array_id)
                self._positions_valid = False
                self.dirty = True
                actions.append(Log("cancel %s of array %d not started yet by %s" % (
                    _plural(cancelled, "task"), array_id, name)))
        ended = 0
        for job_id in sorted(set(chosen)):
            job = self.jobs.get(job_id)
            if job is None or job.state in JobState.FINAL:
                ended += 1
            elif job.state == JobState.PENDING:
                actions.append(self._move(job, JobState.CANCELLED, now, reason, "cancel by %s" % name))
                actions.append(Log("cancel job %d (task %s, pending) by %s" % (job.id, array_task_label(job), name)))
                pending_jobs += 1
            else:
                actions.extend(self._stop(job, "cancel", now, reason))
                stopping += 1
        said = []
        if cancelled or pending_jobs:
            said.append("%s cancelled" % _plural(cancelled + pending_jobs, "pending task"))
        if stopping:
            said.append("%s stopping (SIGTERM sent, SIGKILL after %gs)" % (
                _plural(stopping, "running task"), self.settings.kill_grace))
        if problem is not None:
            results.append(dict(result, result="invalid", message="; ".join(said + [problem])))
        elif said:
            results.append(dict(result, result="stopping" if stopping else "cancelled", message="; ".join(said)))
        elif ended:
            results.append(dict(result, result="finished", message="already ended"))
        else:
            results.append(dict(result, result="not_found", message="no such task"))
        return actions

    def _attach(self, token, fields, peer, now):
        job = self.jobs.get(fields["job_id"])
        if job is None:
            raise MgpuError(errors.NOT_FOUND, "no such job %d" % fields["job_id"])
        if not self.privileged(peer["uid"]) and job.uid != peer["uid"]:
            raise MgpuError(errors.PERMISSION_DENIED, "permission denied: job %d belongs to %s" % (job.id, job.user))
        return [Reply(token, ok(self.job_row(job)))]

    def _drain(self, token, fields, peer, now):
        name, user = fields["node"], peer["user"]
        node = self._node_to_operate(name, peer, "drain")
        reason = fields.get("reason") or "drained by %s" % user
        self.drained[name] = reason
        if node is not None and node.state == NodeState.UP:
            node.state = NodeState.DRAINED
        self.dirty = True  # the waiting jobs' reasons change
        running = sum(1 for job in self.running.values() if name in _hosts(job))
        return [SaveDrain(name, reason), Log("drain node %s by %s: %s" % (name, user, _shown(reason))),
                Reply(token, ok({"node": name, "reason": reason, "running": running}))]

    def _resume(self, token, fields, peer, now):
        name, user = fields["node"], peer["user"]
        node = self._node_to_operate(name, peer, "resume")
        if name not in self.drained:
            return [Reply(token, ok({"node": name, "was_drained": False}))]
        del self.drained[name]
        if node is not None and node.state == NodeState.DRAINED:
            node.state = NodeState.UP
        self.dirty = True
        return [SaveDrain(name, None), Log("resume node %s by %s" % (name, user)),
                Reply(token, ok({"node": name, "was_drained": True}))]

    def _node_to_operate(self, name, peer, verb):
        """The node root or an operator may `verb` (None when it is drained but not up now);
        MgpuError for anyone else (checked first: others learn no node names) or an unknown node."""
        if not self.privileged(peer["uid"]):
            raise MgpuError(errors.PERMISSION_DENIED, "permission denied: only root and operators may %s a node" % verb)
        node = self.nodes.get(name)
        if node is None and name not in self.drained:
            raise MgpuError(errors.NOT_FOUND, self._no_such_node(name))
        return node

    def _no_such_node(self, name):
        known = sorted(self.nodes)
        shown = name if len(name) <= 64 else name[:61] + "..."
        return "no such node %s (nodes: %s)" % (_shown(shown), ", ".join(known[:20]) + (
            ", ..." if len(known) > 20 else "") if known else "none")

    # -- node events ------------------------------------------------------------------------

    def _on_node_up(self, event, now):
        gpus = [Gpu.from_dict(g) for g in event["gpus"]]
        name, address = event["name"], event.get("address")
        submit_only = bool(event.get("submit_only"))
        drained = self.drained.get(name)
        self.nodes[name] = Node(name, gpus, state=NodeState.UP if drained is None else NodeState.DRAINED,
                                address=address, last_heartbeat=now, submit_only=submit_only)
        self.dirty = True
        where = " from %s" % address if address else ""
        still = "" if drained is None else " (drained: %s)" % _shown(drained)
        what = "submit only (runs no jobs)" if submit_only else _plural(len(gpus), "GPU")
        actions = [Log("node %s up%s with %s%s" % (name, where, what, still))]
        # A stop of a job there may have been lost with the link: say it again (SIGKILL once
        # its grace is over). A signal for an attempt the node no longer has is ignored there.
        for job in self.running.values():
            if job.stop_cause is not None and name in _open_hosts(job):
                signum = SIGKILL if job.stop_deadline is None else SIGTERM
                actions.append(SignalJob(name, job.id, job.attempt, signum))
        if address is not None:
            record = {"gpus": [g.to_dict() for g in gpus], "address": address, "submit_only": submit_only}
            for g in record["gpus"]:
                g["external_mb"] = 0  # what others use changes all the time: not part of the record
            if self._node_records.get(name) != record:
                self._node_records[name] = record
                actions.insert(0, SaveNode(name, record))
        return actions

    def _on_node_heartbeat(self, event, now):
        node = self.nodes.get(event["name"])
        if node is not None:
            node.last_heartbeat = now
        return []

    def _on_node_unreachable(self, event, now):
        """Its link is lost: no new job goes there (a launch could not reach it); its running
        jobs stay until it returns or node_timeout declares it down."""
        node = self.nodes.get(event["name"])
        if node is not None and node.state in (NodeState.UP, NodeState.DRAINED):
            node.state = NodeState.UNREACHABLE
            self.dirty = True
        return []

    def _on_node_down(self, event, now):
        """A node stopped answering: its GPUs leave the pool and its running jobs end NODE_FAIL
        (or go back to the queue when they allow a requeue); so do the jobs on several hosts
        that have a part running there (their other parts are killed)."""
        name, reason = event["name"], "node %s is down: %s" % (event["name"], event.get("reason") or "no heartbeat")
        actions = []
        node = self.nodes.get(name)
        if node is not None:
            if node.state == NodeState.DOWN:
                return []
            node.state = NodeState.DOWN
            actions.append(Log(reason))
        self.dirty = True
        for job in [j for j in self.running.values() if name in _open_hosts(j)]:
            actions.extend(self._on_job_lost({"node": name, "job_id": job.id, "attempt": job.attempt,
                                              "started": True, "reason": reason}, now))
        return actions

    def attempts_to_keep(self, name, reported):
        """Reconciliation with a node that (re)registers: of the attempts it reports
        [(job_id, attempt)], those this master still considers running there (for a job on
        several hosts: a part there was launched and has not ended). The node kills the others
        (fenced by attempt number). Running jobs (parts) it does not report never started there
        (no record of even an intent): the caller reports them lost, not started."""
        reported = set(reported)
        here = [j for j in self.running.values() if name in _open_hosts(j)]
        keep = [[j.id, j.attempt] for j in here if (j.id, j.attempt) in reported]
        missing = [j for j in here if (j.id, j.attempt) not in reported]
        return keep, missing

    def _on_gpu_usage(self, event, now):
        node = self.nodes.get(event["node"])
        if node is not None:
            for gpu in node.gpus:
                used = int(event["usage"].get(gpu.index, event["usage"].get(str(gpu.index), 0)))
                if used != gpu.external_mb:  # a pass only when what a job may get changed
                    gpu.external_mb = used
                    self.dirty = True
        return []

    def _current(self, event):
        """(job, rank) a report from a node is about: the running job, if the report is about its
        current attempt and comes from its node; for a job on several hosts, from the host of a
        part that was launched, whose rank it returns (None for a job on one host). (None, None)
        for a report to ignore: about an older attempt, a job that ended, or from a host that
        holds no part of this attempt."""
        job = self.running.get(event.get("job_id"))
        if job is None or job.attempt != event.get("attempt"):
            return None, None  # a report about an older attempt, or a job that ended: ignore it
        node = event.get("node")
        if job.parts is None:
            return (job, None) if job.node == node else (None, None)
        for rank, (host, _) in enumerate(job.parts):
            if host == node and _launched(job, rank):
                return job, rank
        return None, None

    def _on_job_started(self, event, now):
        job, rank = self._current(event)
        if job is None:
            return []
        if rank is not None:
            return self._part_started(job, rank, event)
        job.sup_pid, job.sup_start, job.pgid = event["sup_pid"], event["sup_start"], event["pgid"]
        return [Save(job)]

    def _on_job_exited(self, event, now):
        job, rank = self._current(event)
        if job is None:
            return []
        if rank is not None:
            return self._part_exited(job, rank, event, now)
        exit_code, error = event.get("exit_code"), event.get("error")
        signum = event.get("signal")
        ran = format_duration(now - job.start_time) if job.start_time is not None else "?"
        cause = job.stop_cause
        stopped = self._stopped_outcome(job)
        if stopped is not None:
            new, reason = stopped
        elif error:
            new, reason = JobState.FAILED, error
        elif exit_code == 0:
            new, reason = JobState.COMPLETED, ""
        elif signum:
            new, reason = JobState.FAILED, "killed by signal %d (%s)" % (signum, _signal_name(signum))
        else:
            new, reason = JobState.FAILED, "exit code %s" % exit_code
        node, attempt = job.node, job.attempt
        save = self._move(job, new, now, reason, "exit" if not cause else cause)
        if new == JobState.PENDING:
            job.restarts += 1
            line = "requeue job %d (%s) after %s, restart %d" % (job.id, reason, ran, job.restarts)
        else:
            job.exit_code = exit_code
            line = "end job %d %s exit=%s after %s%s" % (job.id, new, exit_code, ran,
                                                          (": " + reason) if reason else "")
        return [save, Release(node, job.id, attempt), Log(line)]

    def _on_job_lost(self, event, now):
        job, rank = self._current(event)
        if job is None:
            return []
        if rank is not None:
            return self._part_lost(job, rank, event, now)
        node, attempt = job.node, job.attempt
        if job.stop_cause == "cancel":
            save = self._move(job, JobState.CANCELLED, now, job.reason or "cancelled", "lost while cancelling")
            line = "end job %d CANCELLED (%s)" % (job.id, event.get("reason"))
        elif job.stop_cause == "timeout" and not self._requeued_at_limit(job):
            save = self._move(job, JobState.TIMEOUT, now, self._timeout_reason(job), "lost while stopping")
            line = "end job %d TIMEOUT (%s)" % (job.id, event.get("reason"))
        elif not event.get("started") or job.requeue or job.stop_cause == "slice":
            save = self._move(job, JobState.PENDING, now, "requeued: %s" % event.get("reason"), "lost")
            if event.get("started"):
                job.restarts += 1
            line = "requeue job %d: %s" % (job.id, event.get("reason"))
        else:
            save = self._move(job, JobState.NODE_FAIL, now, event.get("reason") or "lost", "lost")
            line = "end job %d NODE_FAIL: %s" % (job.id, event.get("reason"))
        return [save, Release(node, job.id, attempt), Log(line)]

    def _requeued_at_limit(self, job):
        """Whether a job reaching its time limit goes back to the queue: with --requeue, until
        it has restarted max_requeues times."""
        return job.requeue and job.restarts < self.settings.max_requeues

    def _timeout_reason(self, job):
        reason = "reached its time limit of %s" % format_duration(job.time_limit)
        if job.requeue:
            reason += "; not requeued again after %s (max_requeues)" % _plural(job.restarts, "restart")
        return reason

    def _stopped_outcome(self, job):
        """(new state, reason) of a job whose attempt ended while a cancel, time limit or time
        slice stopped it; None without such a stop."""
        cause = job.stop_cause
        if cause == "cancel":
            return JobState.CANCELLED, job.reason or "cancelled"
        if cause == "timeout" and not self._requeued_at_limit(job):
            return JobState.TIMEOUT, self._timeout_reason(job)
        if cause == "timeout":
            return JobState.PENDING, "requeued: reached its time limit"
        if cause == "slice":
            return JobState.PENDING, "requeued: ran past the %s time slice while others waited" % (
                format_duration(self.settings.max_job_time))
        return None

    # -- jobs on several hosts --------------------------------------------------------------

    def _on_job_port(self, event, now):
        """Rank 0's host chose the job's MASTER_PORT: record it (once; it is part of every other
        rank's environment), then launch every other rank. Not while the job is stopping: its
        other ranks are then never launched, and it ends with rank 0."""
        job, rank = self._current(event)
        if job is None or rank != 0 or job.master_port is not None:
            return []
        if job.stop_cause is not None:
            return [Log("job %d: rank 0 chose port %s, but the job is stopping: its other ranks are "
                        "not launched" % (job.id, event.get("port")))]
        job.master_port = event["port"]
        others = range(1, len(job.parts))
        return ([Save(job)] + [Launch(job, rank=r) for r in others]
                + [Log("launch job %d ranks 1-%d: MASTER_PORT %s on %s"
                       % (job.id, len(job.parts) - 1, job.master_port, job.parts[0][0]))])

    def _part_started(self, job, rank, event):
        """A part's supervisor runs; rank 0's is the job's (sup_pid, sup_start, pgid). Once every
        part runs, the job's failed launches in a row start again from zero."""
        if _ended(job.part_status[rank]):
            return []  # its start reported again after its end
        before = all(s == "started" for s in job.part_status)
        job.part_status[rank] = "started"
        if rank == 0:
            job.sup_pid, job.sup_start, job.pgid = event["sup_pid"], event["sup_start"], event["pgid"]
        actions = [Save(job)]
        if not before and all(s == "started" for s in job.part_status):
            job.launch_failures = 0
            actions.append(Log("job %d runs on every host (%s)" % (job.id, ", ".join(_hosts(job)))))
        return actions

    def _part_exited(self, job, rank, event, now):
        """A part ended. An exit 0 waits for the others. The first failure while no stop is under
        way decides: a part whose launch was refused (an error before it started) is a failed
        launch (see _launch_failed); a part that ran and failed stops the others (two-stage) and
        the job will end FAILED with its exit code. With --mpi, rank 0 (the one that runs the
        command) ending with 0 stops the parts that hold GPUs for it, and the job completes. Rank 0 ending with 0 before the other ranks
        were launched is a failed launch too: they can no longer be. Once no part runs, the job
        ends (see _end_gang)."""
        status = job.part_status[rank]
        if _ended(status):
            return []  # its end reported again
        exit_code, signum, error = event.get("exit_code"), event.get("signal"), event.get("error")
        job.part_status[rank] = [exit_code, signum]
        actions = []
        if job.stop_cause is None:
            if error and status is None:
                actions = self._launch_failed(job, rank, error)
            elif error or signum or exit_code != 0:
                job.exit_code = exit_code
                failure = _part_failure(rank, job.parts[rank][0], exit_code, signum, error)
                if _open_parts(job):
                    actions = self._stop(job, "part_failed", now, failure)
                else:
                    job.stop_cause, job.reason = "part_failed", failure
            elif job.mpi and rank == 0:
                # The command (rank 0) is done: the other parts only held GPUs for it.
                if _open_parts(job):
                    actions = self._stop(job, "mpi_done", now, "")
            elif job.master_port is None:
                actions = self._launch_failed(job, rank, "it exited before the other ranks were launched")
        if _open_parts(job):
            return actions or [Save(job)]
        return self._end_gang(job, now)

    def _part_lost(self, job, rank, event, now):
        """A part's host lost it. One that never started (its host has no record of it, or its
        launch could not be sent) is a failed launch, as a refused one. One that started (its
        supervisor vanished, or its host is down) ends the whole job at once, as a job on one
        host would end (NODE_FAIL, or a requeue with --requeue); its other parts are killed."""
        status = job.part_status[rank]
        if _ended(status):
            return []
        why = "rank %d on %s: %s" % (rank, job.parts[rank][0], event.get("reason") or "lost")
        job.part_status[rank] = [None, None]
        if event.get("started") or status == "started":
            return self._end_gang(job, now, lost=why)
        actions = []
        if job.stop_cause is None:
            actions = self._launch_failed(job, rank, event.get("reason") or "lost")
        if _open_parts(job):
            return actions or [Save(job)]
        return self._end_gang(job, now)

    def _launch_failed(self, job, rank, why):
        """A part could not start: this attempt cannot run on every host. The parts that were
        launched are killed at once (SIGKILL, no grace: the job never ran whole); once they have
        ended the job goes back to the queue (see _end_gang). Returns the kills, or nothing when
        no part runs."""
        job.stop_cause = "launch_failed"
        job.reason = "could not start on every host: rank %d on %s: %s" % (rank, job.parts[rank][0], why)
        job.stop_deadline = None
        kills = _signal_parts(job, SIGKILL)
        if not kills:
            return []
        return kills + [Save(job), Log("job %d %s; SIGKILL to the parts on %s" % (
            job.id, job.reason, ", ".join(a.node for a in kills)))]

    def _end_gang(self, job, now, lost=None):
        """The attempt of a job on several hosts is over: every part has ended, or one was lost
        with its host (`lost` says which and why; the others are killed now). What it means:
        cancel: CANCELLED; time limit: TIMEOUT, or back to the queue with --requeue; time slice:
        back to the queue; a part's failure: FAILED with that part's exit code; a failed launch:
        back to the queue with its restarts unchanged (it never ran whole), FAILED on the
        MAX_LAUNCH_FAILURES-th in a row; a part lost: NODE_FAIL, or back to the queue with
        --requeue; every part exited 0: COMPLETED. Saved before the host of every part that was
        launched is told to forget the attempt (Release)."""
        cause = job.stop_cause
        kills = _signal_parts(job, SIGKILL) if lost is not None else []
        hosts = [host for rank, (host, _) in enumerate(job.parts) if _launched(job, rank)]
        attempt, first = job.attempt, job.part_status[0]
        ran = format_duration(now - job.start_time) if job.start_time is not None else "?"
        if cause == "launch_failed":
            job.launch_failures += 1
            if job.launch_failures >= MAX_LAUNCH_FAILURES:
                new, reason = JobState.FAILED, job.reason
            else:
                new, reason = JobState.PENDING, "requeued: %s (failed launch %d of %d)" % (
                    job.reason, job.launch_failures, MAX_LAUNCH_FAILURES)
        elif cause == "part_failed":
            new, reason = JobState.FAILED, job.reason
        elif lost is None:
            new, reason = self._stopped_outcome(job) or (JobState.COMPLETED, "")
        elif cause == "cancel" or (cause == "timeout" and not self._requeued_at_limit(job)):
            new, reason = self._stopped_outcome(job)
        elif job.requeue or cause is not None:
            new, reason = JobState.PENDING, "requeued: " + lost
        else:
            new, reason = JobState.NODE_FAIL, lost
        save = self._move(job, new, now, reason, cause or ("lost" if lost is not None else "exit"))
        if new == JobState.PENDING:
            if cause != "launch_failed":
                job.restarts += 1
            line = "requeue job %d (%s) after %s, restart %d" % (job.id, reason, ran, job.restarts)
        else:
            if new == JobState.COMPLETED:
                job.exit_code = 0
            elif new in (JobState.CANCELLED, JobState.TIMEOUT) and _ended(first):
                job.exit_code = first[0]  # rank 0's, as a job on one host reports its own
            line = "end job %d %s exit=%s after %s on %s%s" % (
                job.id, new, job.exit_code, ran, _plural(len(hosts), "host"), (": " + reason) if reason else "")
        return [save] + kills + [Release(host, job.id, attempt) for host in hosts] + [Log(line)]

    # -- time -------------------------------------------------------------------------------

    def _stop(self, job, cause, now, reason):
        """Begin the two-stage stop: SIGTERM now, SIGKILL after the grace (see advance), to the
        job or to every part of it still running. A cancel wins over a stop that would requeue
        the job (or end it TIMEOUT), not over a part's failure: the job has failed already."""
        if job.stop_cause is not None:
            if cause == "cancel" and job.stop_cause not in ("cancel", "part_failed"):
                job.stop_cause, job.reason = "cancel", reason
                return [Save(job), Log("cancel job %d (already stopping)" % job.id)]
            return []
        job.stop_cause = cause
        job.reason = reason
        job.stop_deadline = now + self.settings.kill_grace
        signals = _signal_parts(job, SIGTERM)
        if job.parts is None:
            where = "running"
        else:
            where = "%s on %s" % (_plural(len(signals), "part"), ", ".join(a.node for a in signals))
        line = "%s job %d (%s): SIGTERM, SIGKILL in %gs" % (STOP_VERBS[cause], job.id, where,
                                                            self.settings.kill_grace)
        if cause == "part_failed":
            line += ": " + reason
        return signals + [Save(job), Log(line)]

    def next_deadline(self, now):
        """The earliest time at which advance() has something to do, or None."""
        earliest = None
        slice_ = self.settings.max_job_time
        for job in self.running.values():
            try:
                if job.stop_cause is not None:
                    due = job.stop_deadline
                else:
                    due = job.end_estimate
                    if due is not None and job.warn_signal and not job.warned:
                        due -= job.warn_seconds or 0
                    if slice_ and job.id not in self._over_slice:
                        crossing = job.start_time + slice_
                        if due is None or crossing < due:
                            due = crossing
                due = None if due is None else float(due)
            except Exception:  # advance() reports it, once
                continue
            if due is not None and (earliest is None or due < earliest):
                earliest = due
        return earliest

    def advance(self, now):
        """Carry out everything that is due at `now`. An error about one job is contained to it
        (one log line per attempt): the others advance."""
        actions = []
        slice_ = self.settings.max_job_time
        crossed = False
        failed = self._advance_failed
        for job in list(self.running.values()):
            done = len(actions)
            try:
                if job.stop_cause is not None:
                    if job.stop_deadline is not None and now >= job.stop_deadline:
                        job.stop_deadline = None
                        actions.extend(_signal_parts(job, SIGKILL))
                        actions.append(Save(job))
                        actions.append(Log("kill job %d: still running after the %gs grace, SIGKILL"
                                           % (job.id, self.settings.kill_grace)))
                    continue
                end = job.end_estimate
                if end is not None and now >= end:
                    actions.extend(self._stop(job, "timeout", now, "reached its time limit"))
                    continue
                if (end is not None and job.warn_signal and not job.warned
                        and now >= end - (job.warn_seconds or 0)):
                    job.warned = True
                    actions.extend(_signal_parts(job, job.warn_signal))
                    actions.append(Save(job))
                    actions.append(Log("warn job %d: signal %s, %s before its time limit" % (
                        job.id, _signal_name(job.warn_signal), format_duration(end - now))))
                if slice_ and job.id not in self._over_slice and now >= job.start_time + slice_:
                    self._over_slice.add(job.id)
                    crossed = True
            except Exception as e:
                del actions[done:]
                if failed.get(job.id) != job.attempt:
                    failed[job.id] = job.attempt
                    actions.append(Log("internal error advancing job %s: %s: %s"
                                       % (job.id, type(e).__name__, e)))
        for job_id in [i for i in failed if i not in self.running]:
            del failed[job_id]
        if crossed:
            self.dirty = True  # the next pass looks for jobs to switch out
        return actions

    # -- scheduling -------------------------------------------------------------------------

    def schedule(self, now):
        """A scheduler pass (see _pass), and the dependencies its starts satisfy: while they let
        more jobs join the queue, or a job array has more tasks that could start, another pass,
        up to MAX_DEPENDENCY_PASSES."""
        actions = self._settle(now) if self._resolved or self._arrays_changed else []
        for _ in range(MAX_DEPENDENCY_PASSES):
            actions.extend(self._pass(now))
            if self._resolved or self._arrays_changed:
                actions.extend(self._settle(now))
            if not self.dirty:
                break
        return actions

    def _pass(self, now):
        """One scheduler pass, if anything changed since the last one. Jobs whose dependencies
        do not hold yet (self.blocked) take no part.

        A pass that raises is retried job by job: a job that makes it raise on its own is held
        (it stays PENDING, out of later passes, its reason says why; one log line) and the pass
        goes on for everyone else."""
        held = self.held
        full = self.dirty
        if full:
            candidates = list(self.pending.values())
            arrays = list(self.arrays.values())
        elif self._new_jobs or self._new_arrays:
            candidates = [job for job in self._new_jobs if job.state == JobState.PENDING]
            arrays = list(self._new_arrays)
            head = self.pending.get(self._head)
            if head is not None:
                candidates.append(head)
            elif self._head in self._candidates:  # a task of an array: that array's next tasks
                array = self.arrays.get(self._candidates[self._head].array_job_id)
                if array is not None and array not in arrays:
                    arrays.append(array)
        else:
            return []
        self.dirty = False
        self._new_jobs = []
        self._new_arrays = []
        for job_id in [i for i in held if i not in self.pending]:
            del held[job_id]
        if held:
            candidates = [job for job in candidates if job.id not in held]
        if self.blocked:
            candidates = [job for job in candidates if job.id not in self.blocked]
        nodes = list(self.nodes.values())
        running = list(self.running.values())
        policy = self.settings.policy
        actions = []
        offered, limited = None, {}
        if arrays or self._array_active:
            candidates, offered, limited = self._array_candidates(candidates, arrays, nodes, full)
        try:
            result = scheduler.schedule(candidates, nodes, running, now, policy)
        except Exception as e:
            failure = e
            scheduler.schedule([], nodes, running, now, policy)  # raises if no job is to blame
            for job in candidates:
                try:
                    if not (isinstance(job.priority, int) and isinstance(job.queue_seq, int)):
                        raise TypeError("priority %r, queue_seq %r" % (job.priority, job.queue_seq))
                    scheduler.schedule([job], nodes, running, now, policy)
                except Exception as e:
                    held[job.id] = reason = "held: internal error while scheduling: %s: %s" % (
                        type(e).__name__, e)
                    job.reason = reason
                    actions.append(Log("hold job %s: internal error while scheduling: %s: %s"
                                       % (job.id, type(e).__name__, e)))
            if not actions:
                raise failure
            self._positions_valid = False
            candidates = [job for job in candidates if job.id not in held]
            result = scheduler.schedule(candidates, nodes, running, now, policy)
        self._head = result.head
        for job, allocation in result.starts:
            if isinstance(allocation, tuple):
                actions.extend(self._start_gang(job, allocation, now))
                continue
            if job.array_job_id is not None and isinstance(job.id, str):
                actions.append(self._materialize(job, now))
            actions.append(self._start(job, allocation, now))
            actions.append(Launch(job))
            task = "" if job.array_job_id is None else " (task %d_%d)" % (job.array_job_id, job.array_task_id)
            actions.append(Log("start job %d%s on %s GPUs %s" % (
                job.id, task, allocation.node, ",".join(map(str, allocation.gpu_ids)) or "none")))
        if offered is not None:
            self._array_pass_done(offered, result.waiting, full)
        if self.drained:
            self._say_drained(result.waiting)
        if full:
            self.waiting = result.waiting
        else:
            self.waiting.update(result.waiting)
        self.waiting.update(held)
        if limited:
            self.waiting.update(limited)
        if self.settings.max_job_time and self.pending:
            try:
                actions.extend(self._switch_out(now, nodes))
            except Exception as e:  # the starts above stand: they are already decided
                actions.append(Log("internal error choosing jobs to switch out: %s: %s"
                                   % (type(e).__name__, e)))
        return actions

    # -- job arrays ---------------------------------------------------------------------------

    def _array_candidates(self, candidates, arrays, nodes, full):
        """The jobs a pass looks at, with the next tasks of each array in `arrays` that may start:
        no more than its throttle leaves room for (tasks of it that went back to the queue count
        against that room too), nor than the free GPUs could take. (candidates, offered,
        limited): offered maps an array id to the candidate tasks made for it (ids "N_T"),
        limited a task that went back to the queue to why it waits for its array's throttle."""
        room = {}
        kept = []
        limited = {}
        for job in candidates:
            array = self.arrays.get(job.array_job_id) if job.array_job_id is not None else None
            if array is not None and array.throttle:
                left = room.get(array.id)
                if left is None:
                    left = array.throttle - self._running_tasks(array.id)
                if left <= 0:
                    limited[job.id] = ARRAY_LIMIT_REASON % (array.throttle, array.throttle)
                    continue
                room[array.id] = left - 1
            kept.append(job)
        offered = {}
        free = whole = None
        for array in arrays:
            if not array.pending or array.id in self.blocked or array.id not in self.arrays:
                continue
            most = len(array.pending)
            if array.throttle:
                left = room.get(array.id)
                if left is None:
                    left = array.throttle - self._running_tasks(array.id)
                most = min(most, left)
                if most <= 0:
                    offered[array.id] = []
                    limited[array.id] = ARRAY_LIMIT_REASON % (array.throttle, array.throttle)
                    continue
            most = min(most, MAX_ARRAY_CANDIDATES)
            if array.template.mem_mb is None and (array.template.gpus or array.template.gpu_ids):
                if whole is None:
                    whole = _free_gpus(nodes, self.running.values())
                count = len(array.template.gpu_ids) if array.template.gpu_ids else array.template.gpus
                most = min(most, whole // count + 1)
            elif array.template.mem_mb is not None:
                if free is None:
                    free = _free_capacity(nodes, self.running.values())
                most = min(most, _tasks_that_fit(array.template, free))
            tasks = [array.task(task_id, "%d_%d" % (array.id, task_id)) for task_id in array.pending.first_ids(most)]
            offered[array.id] = tasks
            kept.extend(tasks)
        if full:
            self._array_reasons = {}
            self._candidates = {}
        self._array_reasons.update((key, reason) for key, reason in limited.items() if key in self.arrays)
        for tasks in offered.values():
            for task in tasks:
                self._candidates[task.id] = task
        return kept, offered, {key: reason for key, reason in limited.items() if key not in self.arrays}

    def _array_pass_done(self, offered, waiting, full):
        """After a pass: each array's reason (that of its first task that did not start), and
        another pass when an array started every task offered and has more that could start."""
        for array_id, tasks in offered.items():
            array = self.arrays.get(array_id)
            if array is None or not tasks:
                continue
            left = [task for task in tasks if isinstance(task.id, str)]
            if left:
                self._array_reasons[array_id] = waiting.get(left[0].id, "")
            elif array.pending and array.throttle and self._running_tasks(array_id) >= array.throttle:
                self._array_reasons[array_id] = ARRAY_LIMIT_REASON % (array.throttle, array.throttle)
            elif array.pending:
                self.dirty = True  # all started: the next tasks may start too
            for task in tasks:
                if not isinstance(task.id, str):
                    self._candidates.pop("%d_%d" % (array_id, task.array_task_id), None)
        if self.dirty:
            self._positions_valid = False

    def _running_tasks(self, array_id):
        jobs = self.jobs
        return sum(1 for job_id in self._array_active.get(array_id, ())
                   if jobs[job_id].state == JobState.RUNNING)

    def _materialize(self, task, now):
        """A candidate task a pass starts becomes a job of its own: its job id, its output paths,
        out of the array's pending set. Its environment is a copy of the array's."""
        array = self.arrays[task.array_job_id]
        array.pending.take(task.array_task_id)
        task.id = self.next_id
        self.next_id += 1
        task.output = task_path(task.output, task)
        task.error = task_path(task.error, task) if task.error else None
        task.reason = ""
        self._track(task)
        self._arrays_changed.add(array.id)
        return Save(task, Transition(task.id, now, "", JobState.PENDING, "task %d_%d of array %d" % (
            array.id, task.array_task_id, array.id), "array %d" % array.id), env_from=array.id)

    def _cancel_array_pending(self, array, reason, now):
        """Every task of the array that has not started is cancelled (counted as CANCELLED)."""
        count = len(array.pending)
        if not count:
            return []
        array.pending = ArrayTasks()
        array.ended[JobState.CANCELLED] = array.ended.get(JobState.CANCELLED, 0) + count
        self._arrays_changed.add(array.id)
        self._array_reasons.pop(array.id, None)
        self._positions_valid = False
        self.dirty = True
        return [Log("cancel %s of array %d not started yet: %s" % (_plural(count, "task"), array.id, reason))]

    def _say_drained(self, waiting):
        """Reasons of jobs that wait for want of an up node name the drained ones (for a job
        limited to some nodes, the drained ones among those)."""
        names = sorted(name for name, node in self.nodes.items() if node.state == NodeState.DRAINED)
        if not names:
            return
        suffix = " (drained: %s)" % ", ".join(names[:10])
        for job_id, reason in waiting.items():
            if reason == scheduler.NO_NODE_UP:
                waiting[job_id] = "Resources: no node takes jobs" + suffix
            elif reason.startswith("Resources: no node that is up"):
                waiting[job_id] = reason + suffix
            else:
                job = self.pending.get(job_id)
                if job is None or not (reason == scheduler.NO_ALLOWED_NODE_UP
                                       or reason.startswith("Resources: no node it may use")
                                       or _short_of_hosts(job, reason)):
                    continue
                mine = [n for n in names if (not job.nodelist or n in job.nodelist)
                        and not (job.exclude and n in job.exclude)]
                if mine:
                    waiting[job_id] = reason + " (drained: %s)" % ", ".join(mine[:10])

    def positions(self):
        """Job id -> place in the queue (1 = next to start), for pending jobs and job arrays with
        tasks to start (by the array job id)."""
        if not self._positions_valid:
            waiting = [job for job in self.pending.values() if job.id not in self.blocked]
            waiting.extend(array.template for array in self.arrays.values()
                           if array.pending and array.id not in self.blocked)
            ordered = sorted(waiting, key=scheduler.queue_order_key)
            self._positions = {job.id: i for i, job in enumerate(ordered, 1)}
            self._positions_valid = True
        return self._positions

    def _start(self, job, allocation, now):
        save = self._move(job, JobState.RUNNING, now, "", "scheduled")
        job.node = allocation.node
        job.alloc = allocation.gpu_ids
        job.attempt += 1
        return save

    def _start_gang(self, job, allocations, now):
        """Start a job on several hosts (one Allocation per host, rank order): saved with its
        parts, then only rank 0 is launched; the others follow once its host reported the
        MASTER_PORT it chose (see _on_job_port)."""
        save = self._start(job, allocations[0], now)
        job.parts = tuple((a.node, a.gpu_ids) for a in allocations)
        job.part_status = [None] * len(allocations)
        job.master_port = None
        where = ", ".join("rank %d on %s GPUs %s" % (rank, a.node, ",".join(map(str, a.gpu_ids)) or "none")
                          for rank, a in enumerate(allocations))
        return [save, Launch(job, rank=0),
                Log("start job %d on %d hosts: %s (rank 0 first)" % (job.id, len(allocations), where))]

    def _switch_out(self, now, nodes):
        slice_ = self.settings.max_job_time
        over = [j for j in self.running.values()
                if j.stop_cause is None and j.start_time is not None and now - j.start_time >= slice_]
        if not over:
            return []
        victims = scheduler.time_slice_victims([j for j in self.pending.values() if j.id not in self.blocked], nodes,
                                               list(self.running.values()), over, now)
        actions = []
        for job_id in victims:
            job = self.running[job_id]
            actions.extend(self._stop(job, "slice", now, "time slice of %s used up while others wait"
                                      % format_duration(slice_)))
        return actions

    # -- views ------------------------------------------------------------------------------

    def job_row(self, job):
        state = _shown_state(job)
        if job.id in self.blocked:
            reason = self._dependency_reason(job)
            gpu_ids = list(job.gpu_ids or ())
        elif job.state == JobState.PENDING:
            reason = self.waiting.get(job.id, job.reason)
            gpu_ids = list(job.gpu_ids or ())
        elif state == JobState.PENDING:
            reason = _starting_reason(job)
            gpu_ids = list(job.alloc)
        else:
            reason = job.reason
            gpu_ids = list(job.alloc)
        return {
            "id": job.id, "user": job.user, "uid": job.uid, "state": state, "priority": job.priority,
            "gpus": job.gpus, "gpu_ids": gpu_ids, "mem_mb": job.mem_mb, "node": job.node,
            "nodelist": list(job.nodelist or ()), "exclude": list(job.exclude or ()), "nnodes": job.nnodes or 1,
            "name": job.name, "command": job.command, "exit_code": job.exit_code,
            "reason": reason, "restarts": job.restarts, "submit_time": job.submit_time,
            "start_time": job.start_time, "end_time": job.end_time, "time_limit": job.time_limit,
            "position": self.positions().get(job.id) if job.state == JobState.PENDING else None,
            "stopping": job.stop_cause is not None, "output": job.output, "error": job.error,
            "started": job.pgid is not None if job.parts is None else (
                job.state == JobState.RUNNING and _every_part_started(job)),
            "nodes": _placement(job), "attempt": job.attempt, "stdin": job.stdin,
            "dependency": format_dependency(job.dependency) or None,
            "array_job_id": job.array_job_id, "array_task_id": job.array_task_id,
        }

    def _array_row(self, array):
        """The queue row of a job array's tasks that have not started: `N_[5-1000%8]`."""
        row = self.job_row(array.template)
        if array.id not in self.blocked:
            row["reason"] = self._array_reasons.get(array.id) or array.template.reason
        row.update(array_job_id=array.id, array_task_id=None, array_tasks=array.pending.spec(),
                   array_throttle=array.throttle, array_pending=len(array.pending),
                   array_task_count=array.task_count)
        return row

    def _row(self, job):
        """A queue row: a job's, or the pending tasks' of a job array (its template)."""
        array = self.arrays.get(job.id) if job.array_job_id is None else None
        if array is not None and array.template is job:
            return self._array_row(array)
        return self.job_row(job)

    def job_detail(self, job, peer, row=None):
        """What `mgpu show` tells `peer` of a job: its queue row and the rest of its request.
        Its --env-setup-cmd (shell code that may hold secrets, like the environment, which is
        never shown) only to its owner, root and operators."""
        row = self.job_row(job) if row is None else row
        row.update({
            "cwd": job.cwd, "requeue": bool(job.requeue), "warn_signal": job.warn_signal,
            "warn_seconds": job.warn_seconds, "attempt": job.attempt, "distributed": bool(job.distributed),
            "mpi": bool(job.mpi), "node_gpu_ids": [[host, list(ids)] for host, ids in job.node_gpu_ids or ()],
        })
        if job.uid == peer["uid"] or self.privileged(peer["uid"]):
            row["env_setup"] = job.env_setup
        return row

    def node_rows(self):
        holders = {}
        for job in self.running.values():
            for host, gpu_ids in job.parts or ((job.node, job.alloc),):
                for index in gpu_ids:
                    holders.setdefault((host, index), []).append(job)
        rows = []
        for node in self.nodes.values():
            gpus = []
            for gpu in node.gpus:
                jobs = holders.get((node.name, gpu.index), [])
                reserved = sum(gpu.memory_mb if j.mem_mb is None else j.mem_mb for j in jobs)
                gpus.append({"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name,
                             "memory_mb": gpu.memory_mb, "reserved_mb": min(reserved, gpu.memory_mb),
                             "external_mb": gpu.external_mb, "jobs": [j.id for j in jobs]})
            rows.append({"name": node.name, "state": self._node_state(node, holders), "gpus": gpus,
                         "address": node.address, "last_heartbeat": node.last_heartbeat,
                         "drain_reason": self.drained.get(node.name), "submit_only": node.submit_only})
        return rows

    @staticmethod
    def _node_state(node, holders):
        """down, drained, unreachable, or by its GPUs: idle (none held), allocated (all held),
        mixed."""
        if node.state == NodeState.DOWN:
            return "down"
        if node.state == NodeState.DRAINED:
            return "drained"
        if node.state == NodeState.UNREACHABLE:
            return "unreachable"
        held = sum(1 for gpu in node.gpus if (node.name, gpu.index) in holders)
        if not held:
            return "idle"
        return "allocated" if held == len(node.gpus) else "mixed"

    # -- recovery ---------------------------------------------------------------------------

    def rehome(self, job_ids, node, now):
        """Running jobs whose supervisors are on this host, which had another name when they
        started: they run on `node` now."""
        actions = []
        for job_id in job_ids:
            job = self.running.get(job_id)
            if job is not None and job.parts is not None:
                actions.extend(self._rehome_part(job, node))
            elif job is not None and job.node != node:
                actions.append(Log("job %d ran on node %s: this host is now called %s" % (job.id, job.node, node)))
                job.node = node
                actions.append(Save(job))
        self.dirty = True
        return actions

    def _rehome_part(self, job, node):
        """A job on several hosts, one of whose parts runs on this host under its new name: the
        part whose host is no known node is that one. When that is not a single part (or a part
        is already on `node`), nothing can be told and nothing changes."""
        hosts = [host for host, _ in job.parts]
        if node in hosts:
            return []
        unknown = [rank for rank, host in enumerate(hosts) if host not in self.nodes]
        if len(unknown) != 1:
            return [Log("job %d runs on several hosts (%s): cannot tell which part ran on this host, "
                        "now called %s" % (job.id, ", ".join(hosts), node))]
        rank = unknown[0]
        old, gpu_ids = job.parts[rank]
        job.parts = job.parts[:rank] + ((node, gpu_ids),) + job.parts[rank + 1:]
        if rank == 0:
            job.node = node
        return [Log("job %d rank %d ran on node %s: this host is now called %s" % (job.id, rank, old, node)),
                Save(job)]

    def withdraw(self, job_id):
        """Forget a submission that could not be stored (its submitter is told so)."""
        array = self.arrays.pop(job_id, None)
        if array is not None:
            self._forget_dependencies(array.template)
            self._new_arrays = [a for a in self._new_arrays if a.id != job_id]
            self._arrays_changed.discard(job_id)
            self._positions_valid = False
            return
        job = self.pending.pop(job_id, None)
        if job is not None:
            self._forget_dependencies(job)
            self.jobs.pop(job_id, None)
            self._new_jobs = [j for j in self._new_jobs if j.id != job_id]
            self._positions_valid = False
            self.waiting.pop(job_id, None)

    def unstart(self, job_id, now, reason):
        """Take back a start whose record could not be stored: the job was not launched and
        waits again, at its place in the queue."""
        job = self.running.get(job_id)
        if job is None:
            return []
        seq = job.queue_seq
        save = self._move(job, JobState.PENDING, now, reason, "store")
        job.queue_seq = seq
        return [save, Log("job %d not started: %s" % (job.id, reason))]


def _free_gpus(nodes, running):
    """About how many GPUs no mgpu job holds on the up nodes that run jobs (jobs on nodes that
    are not up count too: fewer, never more)."""
    total = sum(len(node.gpus) for node in nodes if node.state == NodeState.UP and not node.submit_only)
    held = 0
    for job in running:
        parts = job.parts
        held += len(job.alloc) if parts is None else sum(len(gpu_ids) for _, gpu_ids in parts)
    return max(0, total - held)


def _free_capacity(nodes, running):
    """(GPUs no mgpu job holds, [MB a --mem job could still get on each GPU that is not held
    exclusively]) on the up nodes that run jobs: how many tasks of an array a pass may look at."""
    exclusive, shared = set(), {}
    for job in running:
        for host, gpu_ids in job.parts or ((job.node, job.alloc),):
            for index in gpu_ids:
                if job.mem_mb is None:
                    exclusive.add((host, index))
                else:
                    shared[(host, index)] = shared.get((host, index), 0) + job.mem_mb
    whole, free_mb = 0, []
    for node in nodes:
        if node.state != NodeState.UP or node.submit_only:
            continue
        for gpu in node.gpus:
            key = (node.name, gpu.index)
            if key in exclusive:
                continue
            used = shared.get(key, 0)
            if not used:
                whole += 1
            free_mb.append(gpu.memory_mb - (gpu.external_mb or 0) - used)
    return whole, free_mb


def _tasks_that_fit(template, free):
    """How many tasks like `template` the free capacity could take now, plus one (the next
    to wait holds the backfill reservation when it is the head of the queue)."""
    whole, free_mb = free
    count = len(template.gpu_ids) if template.gpu_ids else (template.gpus or 0)
    if count == 0:
        return MAX_ARRAY_CANDIDATES
    if template.mem_mb is None:
        return whole // count + 1
    return sum(mb // template.mem_mb for mb in free_mb if mb > 0) // count + 1


_TASK_PATH = re.compile(r"%[jAaux]")


def task_path(path, task):
    """A task's output or error path: %j its job id, %A its array's id, %a its task id, %u its
    user, %x its name, filled in at once (a name holding %j stays as it is)."""
    values = {"%j": str(task.id), "%A": str(task.array_job_id), "%a": str(task.array_task_id),
              "%u": task.user, "%x": task.name or "job"}
    return _TASK_PATH.sub(lambda m: values[m.group(0)], path)


def array_task_label(job):
    """`12_7` for a task of a job array, else the job id."""
    if job.array_job_id is None:
        return str(job.id)
    return "%d_%d" % (job.array_job_id, job.array_task_id)


HISTORY_LIMIT = 1000  # finished jobs in a history reply when the request names no limit
_FINAL_ORDER = [state for state in JobState.ALL if state in JobState.FINAL]


def _wanted_states(states):
    """The set of states named in "S[,S]" (any case), or None without a filter; MgpuError for
    a name that is not a state."""
    if not states:
        return None
    wanted = {s.strip().upper() for s in states.split(",") if s.strip()}
    unknown = wanted - set(JobState.ALL)
    if unknown:
        raise MgpuError(errors.INVALID_ARGUMENT, "unknown state %s (states: %s)"
                        % (_shown(sorted(unknown)[0]), ", ".join(JobState.ALL)))
    return wanted


def _user_filter(fields, peer):
    """The user whose jobs a queue or history request wants: `user`, or the peer with `mine`."""
    user = fields.get("user")
    if fields.get("mine"):
        if user is not None and user != peer["user"]:
            raise MgpuError(errors.INVALID_ARGUMENT, "give either --me or --user, not both")
        return peer["user"]
    return user


def _dependency_spec(job, limit=200):
    """A job's --dependency for a log line, cut short past `limit` characters."""
    spec = format_dependency(job.dependency)
    return spec if len(spec) <= limit else spec[:limit - 3] + "..."


def _launched(job, rank):
    """Whether the part of `rank` of a job on several hosts was sent its launch: rank 0 at the
    start, the others once rank 0's host reported the port (master_port)."""
    return rank == 0 or job.master_port is not None


def _shown_state(job):
    """The state users see: a job on several hosts is RUNNING only once every part runs; while
    its parts start (its GPUs held on every host) it shows PENDING, saying so in its reason."""
    if (job.state == JobState.RUNNING and job.parts is not None and job.stop_cause is None
            and not _every_part_started(job)):
        return JobState.PENDING
    return job.state


def _starting_reason(job):
    running = sum(1 for status in job.part_status or () if status == "started")
    return "starting on %s: %d of %d parts running" % (", ".join(host for host, _ in job.parts), running,
                                                          len(job.parts))


def _short_of_hosts(job, reason):
    """Whether a job on several hosts waits because too few of its hosts are up."""
    return (job.multi_host and reason.startswith("Resources:")
            and ("not up" in reason or reason.startswith(("Resources: fewer than", "Resources: no "))))


def _ended(status):
    """Whether a part's status (job.part_status) is its end: [exit_code, signal]."""
    return isinstance(status, (list, tuple))


def _open_parts(job):
    """(rank, host) of every part of the job's attempt that was launched and has not ended:
    those a signal must reach. [(None, node)] for a job on one host."""
    if job.parts is None:
        return [(None, job.node)]
    return [(rank, host) for rank, (host, _) in enumerate(job.parts)
            if _launched(job, rank) and not _ended(job.part_status[rank])]


def _open_hosts(job):
    return [host for _, host in _open_parts(job)]


def _signal_parts(job, signum):
    """One SignalJob per part of the job still running (the job itself on one host)."""
    return [SignalJob(host, job.id, job.attempt, signum) for host in _open_hosts(job)]


def _hosts(job):
    """Every host the job's attempt holds GPUs on, in rank order."""
    return [host for host, _ in job.parts] if job.parts is not None else [job.node]


def _every_part_started(job):
    """Whether every part of a job on several hosts has started (or already ended)."""
    return all(status is not None for status in job.part_status)


def _placement(job):
    """[{"name", "gpu_ids"}, ...] in rank order: where the job runs or ran; [] while it waits."""
    if job.state == JobState.PENDING:
        return []
    if job.parts is not None:
        return [{"name": host, "gpu_ids": list(gpu_ids)} for host, gpu_ids in job.parts]
    if job.node is None:
        return []
    return [{"name": job.node, "gpu_ids": list(job.alloc)}]


def _part_failure(rank, host, exit_code, signum, error):
    """Why a job on several hosts failed, naming the part that failed first."""
    who = "rank %d on %s" % (rank, host)
    if error:
        return "%s failed: %s" % (who, error)
    if signum:
        return "%s was killed by signal %d (%s)" % (who, signum, _signal_name(signum))
    return "%s exited with code %s" % (who, exit_code)


def _shown(text):
    """Text for a log line: control and other unprintable characters escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _signal_name(signum):
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return str(signum)


__all__ = ["Controller", "Settings", "Reply", "Save", "SaveDrain", "SaveNode", "Launch", "SignalJob", "Release",
           "ReadHistory", "Log"]
