"""The domain: jobs, their states and allowed transitions, resource requests, nodes and GPUs.

Owns: `JobState` names, the one table of allowed transitions, `Job` (with the one function that
changes its state), `JobArray` (a job array's template and the set of its tasks not started
yet, `ArrayTasks`), `ResourceRequest`, `Gpu`, `Node`, `Allocation`, what each dependency type
means, and parsing of the user-facing value formats (durations, signal specs, GPU id lists,
dependency specs, array specs).
Must not: import sockets, threads, time, sqlite3, pynvml or anything else that does I/O.
"""

# Ranges of the numbers a job may ask for: the CLI's parsers and protocol.py's validation of
# every request both check against these, so no value outside them is ever stored.
MAX_SECONDS = 365 * 86400       # time limits and signal leads: 1 s .. 365 days
MAX_PRIORITY = 1_000_000        # |priority| for root and operators (users: config's range)
MAX_GPUS = 4096                 # GPUs a job may ask for: 0 .. MAX_GPUS
MAX_GPU_INDEX = MAX_GPUS - 1    # a GPU id: 0 .. MAX_GPU_INDEX
MAX_MEM_MB = 16 * 1024 * 1024   # memory per GPU: 1 MB .. 16 TiB
MAX_JOB_ID = 2 ** 63 - 1        # job ids: 1 .. MAX_JOB_ID (an SQLite integer)
MAX_SIGNAL = 64                 # signals: 1 .. 64, and only those this platform names
MAX_PATH = 4096                 # UTF-8 bytes of a path (PATH_MAX), also once %j %u %x are expanded
MAX_DEPENDENCIES = 1000         # job ids in one --dependency
MAX_DEPENDENCY_SPEC = 32768     # characters of a --dependency spec
MAX_ARRAY_TASKS = 1_000_000     # tasks in one job array
MAX_ARRAY_TASK_ID = 3_999_999   # array task ids: 0 .. MAX_ARRAY_TASK_ID (Slurm's MaxArraySize - 1)
MAX_ARRAY_SPEC = 10_000         # characters of an --array spec
MAX_ARRAY_RUNS = 10_000         # runs [first, last, step] that one array's task ids are kept in


class JobState:
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"

    ALL = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
    FINAL = frozenset(("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"))
    ACTIVE = frozenset(("PENDING", "RUNNING"))


# The one table of allowed transitions. RUNNING -> PENDING is a requeue (time-slice context
# switch, --requeue on reaching the time limit, or a failed node when the job allows requeue).
TRANSITIONS = {
    JobState.PENDING: frozenset((JobState.RUNNING, JobState.CANCELLED)),
    JobState.RUNNING: frozenset((JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED,
                                 JobState.TIMEOUT, JobState.NODE_FAIL, JobState.PENDING)),
}


class InvalidTransition(Exception):
    pass


class Transition:
    """A recorded change of state: when, from, to, why, and what caused it."""

    __slots__ = ("job_id", "time", "old", "new", "reason", "cause")

    def __init__(self, job_id, time, old, new, reason, cause):
        self.job_id = job_id
        self.time = time
        self.old = old
        self.new = new
        self.reason = reason
        self.cause = cause


class ResourceRequest:
    """What a job asks for: a GPU count or exact GPU ids, and optionally memory per GPU, on
    one host among `nodelist` (None: any) and not among `exclude` (None: none excluded).

    Without `mem_mb` the granted GPUs are exclusive; with it a GPU may be shared.
    """

    __slots__ = ("gpus", "gpu_ids", "mem_mb", "nodelist", "exclude", "nnodes", "node_gpu_ids")

    def __init__(self, gpus=1, gpu_ids=None, mem_mb=None, nodelist=None, exclude=None, nnodes=None,
                 node_gpu_ids=None):
        self.gpus = len(gpu_ids) if gpu_ids else gpus
        self.gpu_ids = tuple(gpu_ids) if gpu_ids else None
        self.mem_mb = mem_mb
        self.nodelist = tuple(nodelist) if nodelist else None
        self.exclude = tuple(exclude) if exclude else None
        # On several hosts: nnodes hosts with `gpus` each, or exact GPUs per host (rank order).
        self.node_gpu_ids = tuple((name, tuple(ids)) for name, ids in node_gpu_ids) if node_gpu_ids else None
        self.nnodes = len(self.node_gpu_ids) if self.node_gpu_ids else nnodes

    @property
    def exclusive(self):
        return self.mem_mb is None


class Allocation:
    """GPUs granted to one attempt of a job on one node."""

    __slots__ = ("node", "gpu_ids", "mem_mb")

    def __init__(self, node, gpu_ids, mem_mb=None):
        self.node = node
        self.gpu_ids = tuple(gpu_ids)
        self.mem_mb = mem_mb

    def __eq__(self, other):
        return (isinstance(other, Allocation) and self.node == other.node
                and self.gpu_ids == other.gpu_ids and self.mem_mb == other.mem_mb)

    def __repr__(self):
        return "Allocation(%r, %r, %r)" % (self.node, self.gpu_ids, self.mem_mb)


class Gpu:
    __slots__ = ("index", "uuid", "name", "memory_mb", "external_mb")

    def __init__(self, index, uuid, name, memory_mb, external_mb=0):
        self.index = index
        self.uuid = uuid
        self.name = name
        self.memory_mb = memory_mb
        self.external_mb = external_mb  # used by processes outside mgpu jobs

    def to_dict(self):
        return {"index": self.index, "uuid": self.uuid, "name": self.name,
                "memory_mb": self.memory_mb, "external_mb": self.external_mb}

    @classmethod
    def from_dict(cls, d):
        return cls(int(d["index"]), str(d.get("uuid", "")), str(d.get("name", "")),
                   int(d["memory_mb"]), int(d.get("external_mb", 0)))


class NodeState:
    UP = "UP"
    DOWN = "DOWN"
    DRAINED = "DRAINED"  # up, finishing its running jobs, taking no new ones (mgpu drain)
    UNREACHABLE = "UNREACHABLE"  # its link is lost: no new jobs; down after node_timeout unless it returns


class Node:
    __slots__ = ("name", "gpus", "state", "address", "last_heartbeat", "submit_only")

    def __init__(self, name, gpus, state=NodeState.UP, address=None, last_heartbeat=None, submit_only=False):
        self.name = name
        self.gpus = list(gpus)
        self.state = state
        self.address = address                # where a remote node connects from; None: the master's host
        self.last_heartbeat = last_heartbeat  # time of its last registration or heartbeat
        self.submit_only = submit_only        # relays its host's clients; runs no job (mgpu node --submit-only)

    def gpu(self, index):
        for gpu in self.gpus:
            if gpu.index == index:
                return gpu
        return None


# Fields of a Job that are persisted and reported, in a stable order.
JOB_FIELDS = (
    "id", "user", "uid", "gid", "name", "command", "cwd", "output", "error", "env_setup",
    "gpus", "gpu_ids", "mem_mb", "nodelist", "exclude", "nnodes", "node_gpu_ids", "parts", "part_status",
    "master_port", "launch_failures", "distributed", "mpi", "time_limit", "priority", "requeue", "warn_signal",
    "warn_seconds", "submit_time", "queue_seq", "state", "reason", "exit_code", "start_time",
    "end_time", "node", "alloc", "attempt", "restarts", "sup_pid", "sup_start", "pgid",
    "stop_cause", "stop_deadline", "warned", "umask", "dependency", "stdin",
    "array_job_id", "array_task_id",
)


class Job:
    __slots__ = JOB_FIELDS

    def __init__(self, **fields):
        for name in JOB_FIELDS:
            setattr(self, name, fields.get(name))
        if self.attempt is None:
            self.attempt = 0
        if self.restarts is None:
            self.restarts = 0
        if self.state is None:
            self.state = JobState.PENDING
        if self.reason is None:
            self.reason = ""
        self.alloc = tuple(self.alloc) if self.alloc else ()
        self.command = list(self.command or ())
        if self.gpu_ids:
            self.gpu_ids = tuple(self.gpu_ids)
            self.gpus = len(self.gpu_ids)
        self.nodelist = tuple(self.nodelist) if self.nodelist else None
        self.exclude = tuple(self.exclude) if self.exclude else None
        # A job on several hosts: nnodes hosts with `gpus` GPUs each, or exact GPUs per host
        # (node_gpu_ids: ((name, (ids...)), ...) in rank order); once placed, `parts` holds
        # ((name, (ids...)), ...) in rank order. None for a one-host job.
        if self.node_gpu_ids:
            self.node_gpu_ids = tuple((name, tuple(ids)) for name, ids in self.node_gpu_ids)
            self.nnodes = len(self.node_gpu_ids)
        else:
            self.node_gpu_ids = None
        self.parts = tuple((name, tuple(ids)) for name, ids in self.parts) if self.parts else None
        # Per part (rank order) of the current attempt: None (launch sent), "started", or
        # [exit_code, signal] once it ended. master_port: chosen on the rank-0 host at launch.
        self.part_status = list(self.part_status) if self.part_status else None
        if self.launch_failures is None:
            self.launch_failures = 0
        # --dependency: [[type, job id, met], ...] in the order given; `met` turns true once that
        # condition holds (it never turns false again: see dependency_outcome). None without.
        self.dependency = [list(entry) for entry in self.dependency] if self.dependency else None
        # A task of a job array: the array's job id and this task's id in it (None otherwise).

    @property
    def multi_host(self):
        """Whether this job runs on several hosts at once."""
        return bool(self.nnodes and self.nnodes > 1)

    @property
    def request(self):
        return ResourceRequest(self.gpus, self.gpu_ids, self.mem_mb, self.nodelist, self.exclude,
                               self.nnodes, self.node_gpu_ids)

    @property
    def end_estimate(self):
        """When a running job will have ended at the latest, or None without a time limit."""
        if self.start_time is None or not self.time_limit:
            return None
        return self.start_time + self.time_limit

    @property
    def stopping(self):
        return self.stop_cause is not None

    def transition(self, new, now, reason="", cause=""):
        """The one place a job's state changes: checked against TRANSITIONS and recorded."""
        old = self.state
        if new not in TRANSITIONS.get(old, ()):
            raise InvalidTransition("job %s: %s -> %s is not allowed" % (self.id, old, new))
        self.state = new
        self.reason = reason
        if new == JobState.RUNNING:
            self.start_time = now
            self.end_time = None
            self.exit_code = None
        elif new == JobState.PENDING:
            self.start_time = None
            self.node = None
            self.alloc = ()
        elif new in JobState.FINAL:
            self.end_time = now
        if new != JobState.RUNNING:
            self.sup_pid = self.sup_start = self.pgid = None
            self.stop_cause = self.stop_deadline = None
            self.warned = None
        return Transition(self.id, now, old, new, reason, cause)

    def to_dict(self):
        return {name: getattr(self, name) for name in JOB_FIELDS}

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: v for k, v in d.items() if k in JOB_FIELDS})


# ---------------------------------------------------------------------------------------------
# User-facing value formats

# Without `re` (client commands start faster without it). ASCII digits only: str.isdigit() alone
# also matches other scripts' digits and superscripts.
def _digits(text, most):
    """True for 1 to `most` ASCII digits."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def _clock_fields(text):
    """(days, hours, minutes, seconds) of `[D-]H:MM:SS` (D up to 6 digits, H up to 8, MM and
    SS 1 or 2), or None."""
    days, dash, clock = text.partition("-")
    if not dash:
        days, clock = "0", text
    elif not _digits(days, 6):
        return None
    parts = clock.split(":")
    if len(parts) != 3 or not (_digits(parts[0], 8) and _digits(parts[1], 2) and _digits(parts[2], 2)):
        return None
    return int(days), int(parts[0]), int(parts[1]), int(parts[2])


def parse_int(text, what, low, high):
    """An integer written in ASCII digits within [low, high]; ValueError (one line) otherwise."""
    text = str(text).strip()
    if not _digits(text[1:] if text[:1] in ("+", "-") else text, 30):
        raise ValueError("bad %s %r: expected a whole number from %d to %d"
                         % (what, _clip(text), low, high))
    value = int(text)
    if not low <= value <= high:
        raise ValueError("%s %s is out of range: use %d to %d" % (what, _clip(text), low, high))
    return value


def _clip(text, limit=40):
    return text if len(text) <= limit else text[:limit] + "..."


def parse_duration(text):
    """Seconds from `SECONDS`, `MM:SS`, `HH:MM:SS` or `D-HH:MM:SS`, 1 .. MAX_SECONDS;
    ValueError otherwise."""
    text = str(text).strip()
    if _digits(text, 12):
        seconds = int(text)
    else:
        fields = _clock_fields(text)
        if fields:
            days, hours, minutes, secs = fields
            if minutes > 59 or secs > 59:
                raise ValueError("bad time %r: minutes and seconds must be below 60" % _clip(text))
            seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
        else:
            minutes, colon, secs = text.partition(":")
            if not (colon and _digits(minutes, 10) and _digits(secs, 2)) or int(secs) > 59:
                if text.isascii() and text.isdigit():
                    raise ValueError("time %s is too long: at most %d seconds (365 days)"
                                     % (_clip(text), MAX_SECONDS))
                raise ValueError("bad time %r: use SECONDS or [D-]HH:MM:SS" % _clip(text))
            seconds = int(minutes) * 60 + int(secs)
    if seconds <= 0:
        raise ValueError("bad time %r: must be above zero" % _clip(text))
    if seconds > MAX_SECONDS:
        raise ValueError("time %s is too long: at most 365 days (%d seconds)"
                         % (_clip(text), MAX_SECONDS))
    return seconds


def format_duration(seconds):
    """`[D-]HH:MM:SS`, or `M:SS` below an hour, as squeue prints it."""
    if seconds is None:
        return "UNLIMITED"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return "%d-%02d:%02d:%02d" % (days, hours, minutes, secs)
    if hours:
        return "%d:%02d:%02d" % (hours, minutes, secs)
    return "%d:%02d" % (minutes, secs)


DEFAULT_WARN_SIGNAL = "USR1"
DEFAULT_WARN_SECONDS = 60


def is_signal(number):
    """True for a real signal: an int (not a bool) from 1 to MAX_SIGNAL that this platform names."""
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_SIGNAL:
        return False
    import signal as _signal  # here: `signal` brings enum, which most client commands never need

    try:
        _signal.Signals(number)
    except ValueError:
        return False
    return True


def signal_number(name):
    """A signal number from `USR1`, `SIGUSR1` or `10`; ValueError otherwise."""
    name = str(name).strip().upper()
    if name.isascii() and name.isdigit():
        if len(name) > 3 or not is_signal(int(name)):
            raise ValueError("unknown signal %s" % _clip(name))
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    import signal as _signal

    member = _signal.Signals.__members__.get(name)
    if member is None or not is_signal(int(member)):
        raise ValueError("unknown signal %s" % _clip(name))
    return int(member)


def parse_signal_spec(text):
    """`[SIG][@SECONDS]` (Slurm's --signal) -> (signal number, seconds before the limit)."""
    text = (text or "").strip()
    sig, _, secs = text.partition("@")
    number = signal_number(sig or DEFAULT_WARN_SIGNAL)
    if secs:
        if not (secs.isascii() and secs.isdigit()) or not secs.strip("0"):
            raise ValueError("bad --signal %r: the time after @ is whole seconds above zero" % _clip(text))
        if len(secs) > 12 or int(secs) > MAX_SECONDS:
            raise ValueError("bad --signal %r: the time after @ is at most %d seconds (365 days)"
                             % (_clip(text), MAX_SECONDS))
        seconds = int(secs)
    else:
        seconds = DEFAULT_WARN_SECONDS
    return number, seconds


def parse_gpu_ids(text):
    """`0,2` -> (0, 2): distinct integers from 0 to MAX_GPU_INDEX, at most MAX_GPUS of them."""
    ids = []
    seen = set()
    parts = str(text).split(",")
    if len(parts) > MAX_GPUS:
        raise ValueError("bad GPU id list: at most %d GPUs" % MAX_GPUS)
    for part in parts:
        part = part.strip()
        if not (part.isascii() and part.isdigit()):
            raise ValueError("bad GPU id list %r: use comma-separated indices like 0,2" % _clip(str(text)))
        if len(part) > 5 or int(part) > MAX_GPU_INDEX:
            raise ValueError("bad GPU id list %r: GPU ids go from 0 to %d" % (_clip(str(text)), MAX_GPU_INDEX))
        if int(part) in seen:
            raise ValueError("bad GPU id list %r: %s appears twice" % (_clip(str(text)), part))
        seen.add(int(part))
        ids.append(int(part))
    return tuple(ids)


# ---------------------------------------------------------------------------------------------
# Job dependencies (Slurm's --dependency): TYPE:ID[:ID...][,TYPE:ID...], all must hold.
#   after       the job has started (or ended without starting: cancelled while pending)
#   afterany    the job has ended, in any state
#   afterok     the job has ended COMPLETED
#   afternotok  the job has ended in a failed state (FAILED, TIMEOUT, NODE_FAIL, CANCELLED)
# A requeued job (RUNNING -> PENDING) has not ended; it has started.

DEPENDENCY_TYPES = ("after", "afterany", "afterok", "afternotok")
_UNSUPPORTED_DEPENDENCY_TYPES = ("singleton", "aftercorr", "afterburstbuffer", "expand")
_DEPENDENCY_WAITS_FOR = {"after": "start", "afterany": "end", "afterok": "complete",
                         "afternotok": "fail"}


def dependency_outcome(kind, state, started):
    """Whether a dependency of type `kind` on a job in `state` (which has `started`: ran at
    least once) holds: True, can never hold: False, or not yet: None."""
    if kind == "after":
        return True if started or state in JobState.FINAL else None
    if state not in JobState.FINAL:
        return None
    if kind == "afterok":
        return state == JobState.COMPLETED
    if kind == "afternotok":
        return state != JobState.COMPLETED
    return True  # afterany


def dependency_waits(kind, job_id):
    """How a job's reason says what it waits for: `waits for job 5 to complete (afterok:5)`."""
    return "waits for job %d to %s (%s:%d)" % (job_id, _DEPENDENCY_WAITS_FOR.get(kind, "end"), kind, job_id)


def parse_dependency(text):
    """`afterok:5:6,after:3` -> [["afterok", 5], ["afterok", 6], ["after", 3]] (each pair once,
    in the order given); ValueError (one line) otherwise."""
    text = str(text)
    if len(text) > MAX_DEPENDENCY_SPEC:
        raise ValueError("--dependency is too long: at most %d characters" % MAX_DEPENDENCY_SPEC)
    text = text.strip()
    if not text:
        raise ValueError("--dependency needs TYPE:JOBID[:JOBID...], e.g. afterok:5")
    if "?" in text:
        raise ValueError("--dependency %r: '?' (any one of) is not supported: join types with ',' "
                         "(all must hold)" % _clip(text))
    pairs, seen = [], set()
    for item in text.split(","):
        if not item.strip():
            raise ValueError("--dependency %r: an empty entry (write TYPE:JOBID[:JOBID...],TYPE:...)" % _clip(text))
        kind, colon, ids = item.strip().partition(":")
        kind = kind.strip().lower()
        if kind in _UNSUPPORTED_DEPENDENCY_TYPES:
            raise ValueError("--dependency: %s is not supported (types: %s)" % (kind, ", ".join(DEPENDENCY_TYPES)))
        if kind not in DEPENDENCY_TYPES:
            if kind.isascii() and kind.isdigit():
                raise ValueError("--dependency %r: give a type before the job id, e.g. afterok:%s"
                                 % (_clip(text), _clip(kind)))
            raise ValueError("--dependency: unknown type %r (types: %s)" % (_clip(kind), ", ".join(DEPENDENCY_TYPES)))
        if not colon or not ids.strip():
            raise ValueError("--dependency: %s needs job ids, e.g. %s:5" % (kind, kind))
        for part in ids.split(":"):
            part = part.strip()
            if "+" in part:
                raise ValueError("--dependency %r: a delay after '+' is not supported" % _clip(text))
            if not (part.isascii() and part.isdigit()) or len(part) > 19 or not 1 <= int(part) <= MAX_JOB_ID:
                raise ValueError("--dependency: bad job id %r (job ids go from 1 to %d)" % (_clip(part), MAX_JOB_ID))
            job_id = int(part)
            if (kind, job_id) not in seen:
                seen.add((kind, job_id))
                pairs.append([kind, job_id])
            if len(pairs) > MAX_DEPENDENCIES:
                raise ValueError("--dependency names more than %d job ids" % MAX_DEPENDENCIES)
    return pairs


def format_dependency(entries):
    """The spec of [[type, id, ...], ...]: consecutive ids of one type joined, e.g.
    `afterok:5:6,after:3`."""
    groups = []
    for entry in entries or ():
        kind, job_id = entry[0], entry[1]
        if groups and groups[-1][0] == kind:
            groups[-1][1].append(str(job_id))
        else:
            groups.append((kind, [str(job_id)]))
    return ",".join("%s:%s" % (kind, ":".join(ids)) for kind, ids in groups)



# ---------------------------------------------------------------------------------------------
# Job arrays (Slurm's --array): `1-1000`, `0-30:3`, `1,4,9`, mixes such as `1-5,10,20-30:5`,
# and `%N` to run at most N tasks at once. Task ids are kept as sorted runs [first, last, step]
# (last = first + k * step; a single id is [id, id, 1]) whose spans do not overlap, so an array
# of a million tasks costs a few numbers until its tasks start.

def _array_piece(piece):
    """(first, last or None, step or None) as text from `ID`, `FIRST-LAST` or `FIRST-LAST:STEP`
    (each 1 to 7 ASCII digits), or None."""
    first, dash, rest = piece.partition("-")
    if not _digits(first, 7):
        return None
    if not dash:
        return first, None, None
    last, colon, step = rest.partition(":")
    if not _digits(last, 7) or (colon and not _digits(step, 7)):
        return None
    return first, last, step if colon else None


def _bad_array(text, why):
    return ValueError("bad --array '%s': %s" % (_clip(str(text)), why))


def parse_array_spec(text):
    """`1-5,10,20-30:5%2` -> (runs, throttle): the task ids as sorted runs [first, last, step],
    and the most tasks that may run at once (None: no limit). ValueError (one line) otherwise."""
    text = str(text)
    if len(text) > MAX_ARRAY_SPEC:
        raise ValueError("bad --array: at most %d characters" % MAX_ARRAY_SPEC)
    spec, percent, limit = text.strip().partition("%")
    throttle = None
    if percent:
        if not (limit.isascii() and limit.isdigit()) or len(limit) > 7:
            raise _bad_array(text, "after % give the most tasks to run at once, e.g. 1-100%8")
        throttle = int(limit)
        if not 1 <= throttle <= MAX_ARRAY_TASKS:
            raise _bad_array(text, "the limit after %% goes from 1 to %d" % MAX_ARRAY_TASKS)
    if not spec.strip():
        raise _bad_array(text, "give task ids, e.g. 1-100, 0-30:3 or 1,4,9")
    pieces = spec.split(",")
    if len(pieces) > MAX_ARRAY_RUNS:
        raise _bad_array(text, "at most %d comma-separated parts" % MAX_ARRAY_RUNS)
    runs, total = [], 0
    for piece in pieces:
        m = _array_piece(piece.strip())
        if not m:
            raise _bad_array(text, "%r is not ID, FIRST-LAST or FIRST-LAST:STEP" % _clip(piece.strip()))
        first = int(m[0])
        last = first if m[1] is None else int(m[1])
        step = 1 if m[2] is None else int(m[2])
        if max(first, last) > MAX_ARRAY_TASK_ID:
            raise _bad_array(text, "task ids go from 0 to %d" % MAX_ARRAY_TASK_ID)
        if last < first:
            raise _bad_array(text, "%s ends before it begins" % piece.strip())
        if step < 1:
            raise _bad_array(text, "the step after ':' must be at least 1")
        last = first + (last - first) // step * step
        if first == last:
            step = 1
        runs.append([first, last, step])
        total += (last - first) // step + 1
        if total > MAX_ARRAY_TASKS:
            raise _bad_array(text, "at most %d tasks in one array" % MAX_ARRAY_TASKS)
    runs.sort()
    if any(runs[i][1] >= runs[i + 1][0] for i in range(len(runs) - 1)):
        # Parts that overlap or interleave: the ids once each, in order (at most a million).
        ids = set()
        for first, last, step in runs:
            ids.update(range(first, last + 1, step))
        runs = compress_task_ids(sorted(ids))
    else:
        runs = _joined(runs)
    if len(runs) > MAX_ARRAY_RUNS:
        raise _bad_array(text, "too many separate parts: at most %d" % MAX_ARRAY_RUNS)
    return runs, throttle


def _joined(runs):
    """Sorted runs whose spans do not overlap, each joined to the one before when it goes on
    with the same step (`1,3,5` -> [[1, 5, 2]])."""
    joined = []
    for first, last, step in runs:
        if joined:
            previous = joined[-1]
            gap = first - previous[1]
            if previous[0] == previous[1] and (first == last or step == gap):
                previous[1], previous[2] = last, gap
                continue
            if gap == previous[2] and (first == last or step == gap):
                previous[1] = last
                continue
        joined.append([first, last, step])
    return joined


def compress_task_ids(ids):
    """Sorted distinct ids -> runs [first, last, step], each as long as it can be."""
    runs = []
    i, n = 0, len(ids)
    while i < n:
        first = ids[i]
        if i + 1 == n:
            runs.append([first, first, 1])
            break
        step = ids[i + 1] - first
        j = i + 1
        while j + 1 < n and ids[j + 1] - ids[j] == step:
            j += 1
        runs.append([first, ids[j], step])
        i = j + 1
    return runs


def check_array_runs(runs):
    """None when `runs` (from the wire or the store) are well formed: at most MAX_ARRAY_RUNS
    runs [first, last, step] of whole numbers, ids 0 .. MAX_ARRAY_TASK_ID, last = first + k *
    step, sorted with spans that do not overlap, at most MAX_ARRAY_TASKS ids in all; else one
    line why."""
    if not isinstance(runs, list) or len(runs) > MAX_ARRAY_RUNS:
        return "array task ids must be at most %d runs [first, last, step]" % MAX_ARRAY_RUNS
    total, previous = 0, -1
    for run in runs:
        if not (isinstance(run, (list, tuple)) and len(run) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in run)):
            return "array task ids must be runs [first, last, step] of whole numbers"
        first, last, step = run
        if not (0 <= first <= last <= MAX_ARRAY_TASK_ID) or step < 1 or (last - first) % step:
            return "bad array run [%s, %s, %s]: ids 0 .. %d, last = first + k * step" % (
                first, last, step, MAX_ARRAY_TASK_ID)
        if first <= previous:
            return "array runs must be sorted and must not overlap"
        previous = last
        total += (last - first) // step + 1
    if total > MAX_ARRAY_TASKS:
        return "at most %d tasks in one array" % MAX_ARRAY_TASKS
    return None


def format_array_runs(runs, throttle=None):
    """`1-5,10,20-30:5` (with `%N` for a throttle) from runs."""
    parts = []
    for first, last, step in runs:
        if first == last:
            parts.append(str(first))
        elif step == 1:
            parts.append("%d-%d" % (first, last))
        elif last - first == step:
            parts.append("%d,%d" % (first, last))
        else:
            parts.append("%d-%d:%d" % (first, last, step))
    text = ",".join(parts)
    return text + ("%%%d" % throttle if throttle else "")


class ArrayTasks:
    """A set of array task ids as sorted runs [first, last, step] with spans that do not overlap.
    Taken in order from the front as tasks start; one id or an interval can leave from anywhere
    (a cancel), splitting a run."""

    __slots__ = ("runs", "count")

    def __init__(self, runs=()):
        self.runs = [list(run) for run in runs]
        self.count = sum((last - first) // step + 1 for first, last, step in self.runs)

    def __len__(self):
        return self.count

    def __bool__(self):
        return self.count > 0

    def _find(self, task_id):
        """Index of the run whose span holds task_id, or None."""
        runs = self.runs
        low, high = 0, len(runs)
        while low < high:
            mid = (low + high) // 2
            if runs[mid][0] <= task_id:
                low = mid + 1
            else:
                high = mid
        i = low - 1
        if i >= 0 and task_id <= runs[i][1]:
            return i
        return None

    def __contains__(self, task_id):
        i = self._find(task_id)
        return i is not None and (task_id - self.runs[i][0]) % self.runs[i][2] == 0

    def first_ids(self, most):
        """The first `most` ids, in order."""
        ids = []
        for first, last, step in self.runs:
            for task_id in range(first, last + 1, step):
                if len(ids) >= most:
                    return ids
                ids.append(task_id)
        return ids

    @property
    def lowest(self):
        return self.runs[0][0] if self.runs else None

    @property
    def highest(self):
        return self.runs[-1][1] if self.runs else None

    def remove(self, task_id):
        """Take one id out; False when it is not in the set (or the split would need more than
        MAX_ARRAY_RUNS runs: ValueError)."""
        i = self._find(task_id)
        if i is None:
            return False
        first, last, step = self.runs[i]
        if (task_id - first) % step:
            return False
        pieces = []
        if task_id > first:
            before = task_id - step
            pieces.append([first, before, step if before > first else 1])
        if task_id < last:
            after = task_id + step
            pieces.append([after, last, step if last > after else 1])
        if len(self.runs) - 1 + len(pieces) > MAX_ARRAY_RUNS:
            raise ValueError("the array's pending tasks would be split into more than %d parts: cancel "
                             "whole ranges or the whole array" % MAX_ARRAY_RUNS)
        self.runs[i:i + 1] = pieces
        self.count -= 1
        return True

    def remove_interval(self, low, high):
        """Take out every id from low to high (inclusive); how many left."""
        kept = []
        for first, last, step in self.runs:
            if last < low or first > high:
                kept.append([first, last, step])
                continue
            if first < low:  # the part below low
                end = first + (low - 1 - first) // step * step
                kept.append([first, end, step if end > first else 1])
            if last > high:  # the part above high
                start = last - (last - high - 1) // step * step
                kept.append([start, last, step if last > start else 1])
        if len(kept) > MAX_ARRAY_RUNS:
            raise ValueError("the array's pending tasks would be split into more than %d parts: cancel "
                             "whole ranges or the whole array" % MAX_ARRAY_RUNS)
        before = self.count
        self.runs = kept
        self.count = sum((last - first) // step + 1 for first, last, step in kept)
        return before - self.count

    def take(self, task_id):
        """Remove one id known to be the lowest (the next task to start), cheaply."""
        run = self.runs[0]
        if run[0] != task_id:
            return self.remove(task_id)
        if run[0] == run[1]:
            del self.runs[0]
        else:
            run[0] += run[2]
            if run[0] == run[1]:
                run[2] = 1
        self.count -= 1
        return True

    def spec(self):
        return format_array_runs(self.runs)

    def copy(self):
        return ArrayTasks(self.runs)


# Fields of a JobArray that are stored once (with its template) and those that change.
ARRAY_FIELDS = ("id", "throttle", "spec", "task_count", "task_min", "task_max")
ARRAY_PROGRESS = ("pending", "ended", "started")


class JobArray:
    """A job array while any of its tasks is to start or runs.

    id: the array job id (no task has it), template: a PENDING Job every task is made from
    (its output and error may hold %A, %a and %j), pending: the ids of the tasks not started
    yet (ArrayTasks), throttle: the most tasks that may run at once (None: no limit), spec: the
    task ids as submitted, task_count/task_min/task_max: of the whole array, ended: final
    state -> how many tasks ended so (tasks cancelled before they started count as
    CANCELLED), started: whether any task has started. A started task is a Job of its own with
    array_job_id and array_task_id."""

    __slots__ = ARRAY_FIELDS + ARRAY_PROGRESS + ("template",)

    def __init__(self, id, template, pending, throttle=None, spec=None, task_count=None, task_min=None,
                 task_max=None, ended=None, started=False):
        self.id = id
        self.template = template
        self.pending = pending if isinstance(pending, ArrayTasks) else ArrayTasks(pending)
        self.throttle = throttle
        self.spec = spec if spec is not None else self.pending.spec()
        self.task_count = task_count if task_count is not None else len(self.pending)
        self.task_min = task_min if task_min is not None else self.pending.lowest
        self.task_max = task_max if task_max is not None else self.pending.highest
        self.ended = dict(ended or {})
        self.started = bool(started)

    def task(self, task_id, job_id):
        """A new PENDING Job for task `task_id`, with its own job id; its output and error
        still hold the template's %-patterns (the controller fills them in)."""
        fields = self.template.to_dict()
        fields.update(id=job_id, array_job_id=self.id, array_task_id=task_id, state=JobState.PENDING)
        return Job(**fields)

    def pending_spec(self):
        """`5-1000` (with `%8` for a throttle), as `mgpu queue` shows the pending tasks."""
        return format_array_runs(self.pending.runs, self.throttle)

    def outcome(self):
        """The state the array ended in, once no task is left: COMPLETED when every task
        completed, else the first of FAILED, TIMEOUT, NODE_FAIL, CANCELLED that a task ended in."""
        for state in (JobState.FAILED, JobState.TIMEOUT, JobState.NODE_FAIL, JobState.CANCELLED):
            if self.ended.get(state):
                return state
        return JobState.COMPLETED

    def record(self):
        """What is stored once: the template's fields and the array's own."""
        return {"template": self.template.to_dict(),
                "array": {name: getattr(self, name) for name in ARRAY_FIELDS}}

    def progress(self):
        """What changes as tasks start and end."""
        return {"pending": self.pending.runs, "ended": self.ended, "started": self.started}
