"""Start jobs as their users, supervise them, stop them.

Owns: every fork, exec, change of uid (including the per-thread filesystem ids used to open a
user's file) and signal of mgpu. Must not: import anything from mgpu or know about queues and
scheduling.

Shape: at daemon start-up, before any thread exists, `Launcher()` forks a small single-threaded
helper. For each job the helper forks a supervisor, which leaves the daemon's session
(`setsid`), becomes a child subreaper so no descendant of the job escapes it, and forks the job:
signal dispositions reset, own process group, then it waits for the supervisor's go-ahead, and
only then `initgroups`/`setgid`/`setuid` (uid last), chdir, output opened after the drop, exec.
Forking from the helper costs about a millisecond, where starting a fresh interpreter per job
would cost 20-150 ms.

No double runs. The supervisor keeps a record of the attempt at `STATE/jobs/ID.ATTEMPT.json`,
each step replaced atomically (temporary file renamed over it); `launched` and `exited` are
also durable (the file and the directory fsynced) before anything depends on them:
`intent` (the supervisor's pid and start time, written before it forks the job) → `launched`
(the job's pid, which is its process group, the job's start time and its cgroup, written
before the job may go on: it blocks on a go-ahead pipe and exits without exec if the pipe
closes unanswered, i.e. the supervisor died) → `started` (exec succeeded, or the job died
before it could fail) → `exited` (exit code, signal, end time, error). So an attempt with no
record, or one at `intent` whose supervisor is dead, provably never ran its command and may be
started again; any later phase may have run and is never started twice. The daemon's state
lock (an flock fd, passed as `lock_fd`) is inherited by the helper, kept while the helper may
still fork supervisors from specs left in its command pipe (it drains the pipe on EOF), and
closed by each supervisor once its intent is written: a new daemon that holds the lock finds
every launch of the old one in the state directory. The job never holds that fd.

Fencing: no signal reaches a process not proven to be the job's.
- cgroup v2, where the host offers a writable hierarchy (root, or a delegated subtree): each
  attempt gets `<daemon's cgroup>/mgpu-<hash of the state dir>/job-ID.ATTEMPT`; the supervisor
  creates it and moves the job into it before the go-ahead (the supervisor stays outside), so
  nothing the job forks, double-forks or `setsid`s can leave it. Signals go to each pid listed
  in `cgroup.procs`; SIGKILL writes `cgroup.kill`; after the main process exits the rest is
  killed, the group waited on until `populated 0`, and removed.
- Fallback (no writable cgroup2: a single-user daemon, old hosts): the job's session. Its
  processes are those whose session id is the supervisor's pid and that started no earlier
  than the job (a session id cannot be reused while a process of the session lives), plus,
  while the supervisor is alive with its recorded start time, its descendants (it is their
  subreaper). A process that left both (setsid and lost its parent) can escape here.
Each pid is opened as a pidfd, checked again, and signalled through the pidfd, so a pid reused
between the check and the signal is never hit. A supervisor that dies (SIGKILL, OOM) leaves its
job to the daemon, which kills what is left through the same proofs and waits until it is gone
before it reports the job lost, so its GPUs are reused only after.
"""

import ctypes
import errno
import gc
import hashlib
import json
import os
import pwd
import re
import select
import signal
import socket
import stat
import struct
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
_CHILD_SIGNALS = ("SIGPIPE", "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGCHLD", "SIGUSR1",
                  "SIGUSR2", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGXFSZ")
MAX_EVENT = 3800  # below PIPE_BUF: one write of an event line is atomic
MAX_SPEC = 8 << 20  # a launch request larger than this is refused, not buffered
STOP_TIMEOUT = 30.0  # how long to wait for a killed job's processes to be gone
GO_AHEAD = b"g"
# A job's input (srun -i, --pty): records the daemon writes into the supervisor's FIFO, each one
# write of at most PIPE_BUF bytes (atomic): a type byte, a 2-byte length, the payload.
INPUT_OPEN, INPUT_DATA, INPUT_WINDOW, INPUT_EOF = b"o", b"d", b"w", b"e"
INPUT_RECORD_DATA = 4096 - 3     # payload bytes of one data record
INPUT_WAIT = 60.0                # no daemon opened the input this long after the start: EOF / hang up
INPUT_PENDING = 64 * 1024        # bytes read from the FIFO and not yet taken by the job

_libc = None


def _c_library():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


# ---------------------------------------------------------------------------------------------
# Processes


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (which may hold spaces or
    parentheses), or None when there is no such process. Index 0 is the state, 1 the parent,
    2 the process group, 3 the session, 19 the start time."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as stat_file:
            data = stat_file.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def process_start_time(pid):
    """The start time of `pid` in clock ticks since boot (identifies a process across pid
    reuse), or None when there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _processes():
    """(pid, parent, pgid, sid, start) of every process, zombies left out."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None or fields[0] in (b"Z", b"X"):
            continue
        found.append((int(name), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])))
    return found


def children(pid):
    """Pids whose parent is `pid`."""
    return [p for p, parent, _, _, _ in _processes() if parent == pid]


_boot_id = None


def boot_id():
    """This boot's random id: pids and start times recorded in another boot prove nothing.
    Read once per process (it cannot change while the process lives); the helper reads it
    before it forks, so no supervisor reads the file (or loads a text codec) again."""
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as boot:
                _boot_id = boot.read().strip().decode("ascii", "replace")
        except OSError:
            return None
    return _boot_id


def supervisor_alive(sup_pid, sup_start):
    """True when the process `sup_pid` that started at `sup_start` still runs (a zombie, which
    nobody may reap where init does not, has stopped supervising)."""
    if sup_pid is None or sup_start is None:
        return False
    fields = _stat_fields(sup_pid)
    return fields is not None and fields[0] not in (b"Z", b"X") and int(fields[19]) == sup_start


def _signal_if(pid, signum, still_ours):
    """Signal `pid` only if `still_ours(pid)` holds once a pidfd pins the process (a pid freed
    and reused after the check cannot be hit). True when delivered."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (OSError, AttributeError):
        pidfd = None  # no pidfd on this kernel: check, then signal by pid
    try:
        if not still_ours(pid):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def free_port():
    """A TCP port no socket on this host is bound to now (the kernel's choice), for the
    rendezvous of a job on several hosts: its rank 0 binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def run_openssl(arguments, timeout=60.0):
    """Run the `openssl` command (for `mgpu keygen`) with `arguments`, a minimal environment
    (a fixed PATH, the C locale, no configuration file) and a deadline; its stdout as bytes. FileNotFoundError when no openssl is
    installed, RuntimeError with its last stderr line when it fails or runs out of time."""
    import shutil
    import subprocess

    search = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    program = shutil.which("openssl", path=search)
    if program is None:
        raise FileNotFoundError("openssl")
    # OPENSSL_CONF=/dev/null: the certificate gets the extensions asked for and nothing a
    # host's openssl.cnf adds.
    env = {"PATH": search, "LANG": "C", "LC_ALL": "C", "OPENSSL_CONF": "/dev/null"}
    try:
        done = subprocess.run([program] + list(arguments), stdin=subprocess.DEVNULL,
                              capture_output=True, env=env, timeout=timeout, close_fds=True)
    except subprocess.TimeoutExpired:
        raise RuntimeError("openssl did not finish within %g s" % timeout) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip("- ")]
        raise RuntimeError("openssl exited with status %d: %s"
                           % (done.returncode, lines[-1].strip() if lines else "no message"))
    return done.stdout


# ---------------------------------------------------------------------------------------------
# cgroup v2


def _cgroup2_mount():
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1].replace("\\040", " ")
    except OSError:
        pass
    return None


def _own_cgroup():
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as own:
            for line in own:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def cgroup_base_path(state_dir):
    """Where the daemon instance of `state_dir` keeps its jobs' cgroups, or None without a
    cgroup v2 hierarchy (nothing is created)."""
    mount, own = _cgroup2_mount(), _own_cgroup()
    if mount is None or own is None:
        return None
    tag = hashlib.sha256(os.path.realpath(state_dir).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return os.path.join(mount, own.lstrip("/"), "mgpu-" + tag)


def cgroup_base(state_dir):
    """The directory under which this daemon instance creates one cgroup per job attempt, or
    None where no writable cgroup v2 hierarchy is offered. It is made here to check that, then
    removed again unless jobs' groups are in it: the first job's supervisor makes it (see
    _make_job_cgroup) and the last job's end removes it, so a daemon killed while it runs no
    job leaves nothing behind."""
    base = cgroup_base_path(state_dir)
    if base is None:
        return None
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        return None
    usable = os.access(os.path.join(base, "cgroup.procs"), os.W_OK) and os.access(base, os.W_OK)
    remove_cgroup_base(base)
    return base if usable else None


def job_cgroup(base, job_id, attempt):
    return None if base is None else os.path.join(base, "job-%d.%d" % (job_id, attempt))


def remove_cgroup_base(base):
    """Remove the instance directory when no job cgroup is left in it."""
    if base:
        try:
            os.rmdir(base)
        except OSError:
            pass


def _cgroup_pids(path):
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as procs:
            return [int(p) for p in procs.read().split()]
    except (OSError, ValueError):
        return []


def _cgroup_populated(path):
    """True/False from cgroup.events, None when the group does not exist."""
    try:
        with open(os.path.join(path, "cgroup.events"), "rb") as events:
            for line in events:
                if line.startswith(b"populated "):
                    return line.split()[1] == b"1"
    except OSError:
        return None
    return bool(_cgroup_pids(path))


def _in_cgroup(pid, path, base_mount):
    try:
        with open("/proc/%d/cgroup" % pid, encoding="utf-8", errors="replace") as own:
            for line in own:
                if line.startswith("0::"):
                    return os.path.join(base_mount, line[3:].strip().lstrip("/")) == path
    except OSError:
        pass
    return False


def _cgroup_signal(path, signum):
    """Signal every process in the job's cgroup; True when some process was in it."""
    if signum == signal.SIGKILL:
        try:
            with open(os.path.join(path, "cgroup.kill"), "w") as kill:
                kill.write("1")
            return bool(_cgroup_populated(path))
        except OSError:
            pass  # no cgroup.kill before Linux 5.14: one by one
    mount = _cgroup2_mount()
    delivered = False
    for pid in _cgroup_pids(path):
        delivered |= _signal_if(pid, signum, lambda p: _in_cgroup(p, path, mount))
    return delivered


def _make_job_cgroup(path):
    """Create a job's cgroup (and the daemon's directory above it, which the end of the last
    job removes); the path, or None when it cannot be made."""
    for _ in range(3):  # another job's end may remove the parent between the two calls
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, 0o755)
            return path
        except FileExistsError:
            return path
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def _cgroup_remove(path, deadline):
    """Kill what is left in the job's cgroup, wait until it is empty, remove it. True when it
    is gone (or never existed)."""
    while True:
        populated = _cgroup_populated(path)
        if populated is None:
            return True
        if not populated:
            try:
                os.rmdir(path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                pass
        else:
            _cgroup_signal(path, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# A job's processes, proven


class JobHandle:
    """What proves a process belongs to one job attempt: its supervisor (pid and start time),
    its process group (= the job's pid) and the job's start time, and its cgroup. A job with a
    pty (srun --pty) leads a session of its own (`session`, = the job's pid): its terminal's."""

    __slots__ = ("sup_pid", "sup_start", "pgid", "job_start", "cgroup", "boot", "session")

    def __init__(self, sup_pid=None, sup_start=None, pgid=None, job_start=None, cgroup=None, boot=None,
                 session=None):
        self.sup_pid, self.sup_start, self.pgid = sup_pid, sup_start, pgid
        self.job_start, self.cgroup, self.boot = job_start, cgroup, boot
        self.session = session

    @classmethod
    def from_record(cls, record):
        return cls(record.get("sup_pid"), record.get("sup_start"), record.get("pgid"),
                   record.get("job_start"), record.get("cgroup"), record.get("boot_id"), record.get("session"))

    def _this_boot(self):
        return self.boot is None or self.boot == boot_id()

    def supervisor_alive(self):
        return self._this_boot() and supervisor_alive(self.sup_pid, self.sup_start)

    def _fallback_pids(self):
        """(pid, start) of the processes proven to be the job's without a cgroup. With its
        supervisor alive: every other process of the supervisor's session, and its descendants
        (it is their subreaper). Without: the processes of the job's process group in the
        supervisor's session that started no earlier than the job; none at all when a process
        now has the supervisor's pid (the old session is then gone: the kernel does not reuse
        a pid while a process of its session or group lives)."""
        if not self._this_boot() or self.sup_pid is None:
            return {}  # recorded before a reboot, every pid in it may now be a stranger's
        procs = _processes()
        found = {}
        if supervisor_alive(self.sup_pid, self.sup_start):
            by_parent = {}
            for pid, parent, _, sid, start in procs:
                by_parent.setdefault(parent, []).append((pid, start))
                if (sid == self.sup_pid and pid != self.sup_pid) or (
                        self.session and sid == self.session and self.job_start is not None
                        and start >= self.job_start):
                    found[pid] = start
            frontier = [self.sup_pid]
            while frontier:
                for pid, start in by_parent.get(frontier.pop(), ()):
                    found.setdefault(pid, start)
                    frontier.append(pid)
            return found
        now_at_sup_pid = process_start_time(self.sup_pid)  # our supervisor's zombie, or a stranger
        if self.pgid is None or self.job_start is None or now_at_sup_pid not in (None, self.sup_start):
            return {}
        # The pty's session: its leader is the job or gone (the kernel reuses no session's id
        # while a process of it lives); a stranger at that pid means the session is over.
        session = self.session if self.session and process_start_time(self.session) in (
            None, self.job_start) else None
        for pid, _, pgid, sid, start in procs:
            if start >= self.job_start and ((sid == self.sup_pid and pgid == self.pgid)
                                            or (session and sid == session)):
                found[pid] = start
        return found

    def signal(self, signum):
        """Send `signum` to every process proven to be the job's. False when none is left."""
        if not self._this_boot():
            return False
        if self.cgroup and _cgroup_populated(self.cgroup) is not None:
            return _cgroup_signal(self.cgroup, signum)
        delivered = False
        for pid, start in self._fallback_pids().items():
            delivered |= _signal_if(pid, signum, lambda p, s=start: process_start_time(p) == s)
        return delivered

    def alive(self):
        if not self._this_boot():
            return False
        if self.cgroup and _cgroup_populated(self.cgroup) is not None:
            return bool(_cgroup_populated(self.cgroup))
        return bool(self._fallback_pids())

    def end(self, timeout=STOP_TIMEOUT):
        """SIGKILL whatever is left of the job and wait until it is gone (the cgroup removed).
        True when nothing is left; False when something would not die within `timeout`."""
        deadline = time.monotonic() + timeout
        if not self._this_boot():
            return True  # nothing of a job outlives a reboot
        if self.cgroup:
            return _cgroup_remove(self.cgroup, deadline)
        while self.signal(signal.SIGKILL) or self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def signal_job(handle, signum):
    return handle.signal(signum)


# ---------------------------------------------------------------------------------------------
# Records


def read_record(path):
    """A supervisor's record of one job attempt, or None."""
    try:
        with open(path, encoding="utf-8") as record:
            value = json.load(record)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def record_phase(record):
    """intent, launched, started or exited (records of older versions: started or exited)."""
    if record is None:
        return None
    if "exit_code" in record:
        return "exited"
    return record.get("phase", "started")


def write_record(path, record, dir_fd=None, durable=True):
    """Replace the record atomically (a temporary file renamed over it) and, when `durable`,
    so that it survives a power loss: the file and its directory are fsynced. A phase whose
    loss in a power cut changes nothing (see _supervise) is written without the two fsyncs."""
    tmp = path + ".tmp"
    data = json.dumps(record, separators=(",", ":")).encode()
    for tries_left in (2, 1, 0):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, path)
            break
        except FileNotFoundError:
            if not tries_left:  # someone else's cleanup took the file away: write it again
                raise
    if not durable:
        return
    own = dir_fd is None
    if own:
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        if own:
            os.close(dir_fd)


# ---------------------------------------------------------------------------------------------
# Opening a user's file as that user


def open_as_user(path, uid):
    """A read-only, non-blocking descriptor on `path` when it is a regular file owned by `uid`
    and `uid` may read it, else None. As root the path is resolved and opened with this
    thread's filesystem ids set to the user's (per thread on Linux), so root's privileges
    never apply to a path a user chose; O_PATH never runs a device's or FIFO's open."""
    as_root = os.geteuid() == 0
    switched = False
    if as_root:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            return None
        libc = _c_library()
        libc.setfsgid(gid)
        libc.setfsuid(uid)
        switched = True
    try:
        if as_root and (libc.setfsuid(-1) != uid or libc.setfsgid(-1) != gid):
            return None  # the switch did not take: open nothing
        try:
            anchor = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            info = os.fstat(anchor)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
                return None
            fd = os.open("/proc/self/fd/%d" % anchor,
                         os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return None
        finally:
            os.close(anchor)
        reopened = os.fstat(fd)
        if (reopened.st_dev, reopened.st_ino) != (info.st_dev, info.st_ino):
            os.close(fd)
            return None
        return fd
    finally:
        if switched:
            libc.setfsuid(0)
            libc.setfsgid(0)


# ---------------------------------------------------------------------------------------------
# Daemon side


class HelperGone(Exception):
    pass


def fork_helper(lock_fd=None):
    """Fork the helper: (its pid, the fd of its command pipe, the fd of its event pipe)."""
    command_read, command_write = os.pipe2(os.O_CLOEXEC)
    events_read, events_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the helper: single-threaded from here on
        status = 0
        try:
            os.close(command_write)
            os.close(events_read)
            _helper_main(command_read, events_write, lock_fd)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(command_read)
    os.close(events_write)
    return pid, command_write, events_read


class Launcher:
    """The daemon's handle on its helper process. Create it before starting any thread.
    `lock_fd`, when given, is the daemon's state lock: the helper keeps it while it may still
    start jobs (see the module docstring)."""

    def __init__(self, lock_fd=None):
        self.helper_pid, self._command_write, events_read = fork_helper(lock_fd)
        self._events = os.fdopen(events_read, "rb")
        self._lock = threading.Lock()

    def launch(self, spec):
        # job_id and attempt lead the line: the helper names the job of a line it refuses.
        spec = dict({"job_id": spec["job_id"], "attempt": spec["attempt"]}, **spec)
        line = (json.dumps(spec, separators=(",", ":")) + "\n").encode("utf-8", "surrogateescape")
        with self._lock:
            view = memoryview(line)
            while view:
                try:
                    written = os.write(self._command_write, view)
                except BrokenPipeError:
                    raise HelperGone("the job launcher helper (pid %d) has exited; restart the master "
                                     "(running jobs carry on and are re-adopted)" % self.helper_pid) from None
                view = view[written:]

    def events(self):
        """Yield the supervisors' event dicts until the helper and every supervisor it started
        are gone (blocking; run it in its own thread)."""
        for line in self._events:
            try:
                yield json.loads(line)
            except ValueError:
                continue

    def close(self):
        try:
            os.close(self._command_write)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Helper and supervisor (forked processes; single-threaded)

_LINE_HEAD = re.compile(rb'\{"job_id":(\d+),"attempt":(\d+)')


def _helper_main(command_fd, event_fd, lock_fd):
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a Ctrl+C or stop of the daemon is not ours
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        libc = _c_library()
    except Exception:
        libc = None
    boot_id()  # read once here: every supervisor inherits it
    # What the daemon had allocated before the fork is never collected here: frozen, a
    # collection in a supervisor does not walk (and so copy, page by page) the inherited heap.
    gc.freeze()
    pending = bytearray()
    scanned = 0          # no newline in pending[:scanned]
    skipping = False     # the rest of an oversize line is being read and dropped
    while True:
        chunk = os.read(command_fd, 1 << 16)
        if not chunk:
            # The daemon is gone. Lines it wrote before it went are jobs it stored as running:
            # they were all launched above (a last line without its newline is a torn write of
            # a job the next daemon requeues). Running supervisors carry on alone.
            if lock_fd is not None:
                os.close(lock_fd)
            return
        pending += chunk
        while True:
            newline = pending.find(b"\n", scanned)
            if newline < 0:
                if skipping:
                    pending.clear()
                elif len(pending) > MAX_SPEC:
                    _refuse(event_fd, bytes(pending[:64]))
                    pending.clear()
                    skipping = True
                scanned = len(pending)
                break
            line = bytes(pending[:newline])
            del pending[:newline + 1]
            scanned = 0
            if skipping:
                skipping = False
                continue
            if len(line) > MAX_SPEC:
                _refuse(event_fd, line[:64])
                continue
            if line:
                _start_supervisor(line, command_fd, event_fd, lock_fd, libc)


def _refuse(event_fd, head):
    match = _LINE_HEAD.match(head)
    if match:
        _emit(event_fd, {"event": "exited", "job_id": int(match.group(1)), "attempt": int(match.group(2)),
                         "exit_code": None, "signal": None,
                         "error": "the launch request is larger than %d MiB" % (MAX_SPEC >> 20)})


def _start_supervisor(line, command_fd, event_fd, lock_fd, libc):
    try:
        spec = json.loads(line)
    except ValueError:
        _refuse(event_fd, line[:64])
        return
    try:
        pid = os.fork()
    except OSError as e:
        _emit(event_fd, {"event": "exited", "job_id": spec["job_id"], "attempt": spec["attempt"],
                         "exit_code": None, "signal": None,
                         "error": "cannot start a supervisor: %s" % e.strerror})
        return
    if pid == 0:
        status = 1
        gc.disable()  # short-lived, makes no garbage cycles worth a pass over the heap
        try:
            _supervise(spec, event_fd, lock_fd, libc)
            status = 0
        except BaseException:
            pass
        finally:
            os._exit(status)


def _emit(event_fd, event):
    """Report to the daemon that started us. If it is gone (EPIPE), the record on disk speaks
    for us to the next one."""
    line = json.dumps(event, separators=(",", ":"))
    if len(line) > MAX_EVENT:
        event["error"] = (event.get("error") or "")[:200]
        line = json.dumps(event, separators=(",", ":"))
    try:
        os.write(event_fd, (line + "\n").encode())
    except OSError:
        pass


def _close_all_but(*keep):
    """Close every descriptor from 3 up except `keep`: a supervisor holds none of the daemon's
    files, sockets or locks."""
    low = 3
    for fd in sorted(k for k in keep if k is not None and k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _supervise(spec, event_fd, lock_fd, libc):
    _close_all_but(event_fd, lock_fd)
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    if libc is not None:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    path = spec["record"]
    me = os.getpid()
    record = {"job_id": spec["job_id"], "attempt": spec["attempt"], "phase": "intent",
              "sup_pid": me, "sup_start": process_start_time(me), "boot_id": boot_id()}
    try:
        dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Not fsynced: a daemon of this boot reads it from the page cache, and after a power
        # loss an intent whose supervisor is dead says what no record says (never ran).
        write_record(path, record, dir_fd, durable=False)
    except OSError as e:
        if lock_fd is not None:
            os.close(lock_fd)
        _emit(event_fd, {"event": "exited", "job_id": spec["job_id"], "attempt": spec["attempt"],
                         "exit_code": None, "signal": None,
                         "error": "cannot record the job's start in %s: %s" % (path, e.strerror or e)})
        return
    if lock_fd is not None:
        os.close(lock_fd)  # our intent is on disk: a new daemon may take over
    job_input = None
    if spec.get("stdin") in ("pipe", "pty"):
        try:
            job_input = _JobInput(spec)
        except OSError as e:
            _emit(event_fd, {"event": "exited", "job_id": spec["job_id"], "attempt": spec["attempt"],
                             "exit_code": None, "signal": None,
                             "error": "cannot set up the job's input (%s): %s" % (spec["stdin"], e.strerror or e)})
            record.update(phase="exited", exit_code=None, signal=None, end_time=time.time(),
                          error="cannot set up the job's input: %s" % (e.strerror or e))
            try:
                write_record(path, record, dir_fd)
            except OSError:
                pass
            return
    go_read, go_write = os.pipe2(os.O_CLOEXEC)
    error_read, error_write = os.pipe2(os.O_CLOEXEC)
    setup_read = setup_write = None
    if spec.get("env_setup"):  # the job's shell reports a failed --env-setup-cmd here
        setup_read, setup_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    job_pid = os.fork()
    if job_pid == 0:
        os.close(go_write)
        _exec_job(spec, go_read, error_write, job_input, setup_write)  # never returns
    os.close(go_read)
    os.close(error_write)
    if setup_write is not None:
        os.close(setup_write)
    if job_input is not None:
        job_input.forked()
    if job_input is None or not job_input.pty:
        try:
            os.setpgid(job_pid, job_pid)  # also done by the child; whichever runs first wins
        except OSError:
            pass  # (a job with a pty makes a session of its own: setsid, which a group leader cannot)
    cgroup = spec.get("cgroup")
    if cgroup:
        cgroup = _make_job_cgroup(cgroup)
        if cgroup:
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                    procs.write(str(job_pid))
            except OSError:
                _rmdir_quietly(cgroup)
                cgroup = None
    record.update(phase="launched", pgid=job_pid, job_start=process_start_time(job_pid), cgroup=cgroup)
    if job_input is not None and job_input.pty:
        record["session"] = job_pid
    handle = JobHandle.from_record(record)
    try:
        write_record(path, record, dir_fd)
    except OSError as e:
        # Without a durable record the job must not run: the child exits without the go-ahead.
        os.close(go_write)
        status = _wait_for(job_pid)
        _end_leftovers(job_pid, handle)
        if job_input is not None:
            job_input.finish()
        _emit(event_fd, {"event": "exited", "job_id": spec["job_id"], "attempt": spec["attempt"],
                         "exit_code": None, "signal": None,
                         "error": "cannot record the job's start in %s: %s" % (path, e.strerror or e)})
        return
    _emit(event_fd, dict(record, event="launched"))
    try:
        os.write(go_write, GO_AHEAD)
    except OSError:
        pass  # the job is already gone (a signal before exec): its exit status says so
    os.close(go_write)
    failure = b""
    while True:
        chunk = os.read(error_read, 4096)
        if not chunk:
            break
        failure += chunk
    os.close(error_read)
    if not failure:
        record["phase"] = "started"
        try:
            # Not fsynced: after a power loss "launched" says the same (it may have run).
            write_record(path, record, dir_fd, durable=False)
        except OSError:
            pass  # "launched" already forbids a second start
        _emit(event_fd, dict(record, event="started"))
    if job_input is None:
        status = _wait_for(job_pid)
    else:
        if job_input.pty and not failure:
            job_input.open_output(spec)
        status = job_input.serve(job_pid)
    _end_leftovers(job_pid, handle)
    if job_input is not None:
        job_input.finish()
    if os.WIFSIGNALED(status):
        exit_code, signum = 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    else:
        exit_code, signum = os.WEXITSTATUS(status), None
    error = failure.decode("utf-8", "replace")[:300] or None
    if setup_read is not None:
        setup_failure = _env_setup_failure(setup_read, exit_code)
        os.close(setup_read)
        error = error or setup_failure
    record.update(phase="exited", exit_code=exit_code, signal=signum, end_time=time.time(), error=error)
    try:
        write_record(path, record, dir_fd)
    except OSError:
        pass
    _emit(event_fd, dict(record, event="exited"))


class _JobInput:
    """A job's input, in its supervisor (single-threaded): a FIFO in the root-only records
    directory (`spec["input"]`) that the daemon opens and writes records into, and either a pipe
    that is the job's stdin ("pipe") or a pseudo-terminal whose slave is the job's stdin, stdout,
    stderr and controlling terminal ("pty"; the supervisor copies what the job writes to it into
    the job's output file, opened as the user). The FIFO is one-shot: when the daemon that opened
    it closes it (the client is gone, the daemon restarted) or no daemon opens it within
    INPUT_WAIT, the job's stdin gets EOF, or its terminal hangs up (SIGHUP, as when an ssh
    connection drops) unless the client's stdin had ended first (then ^D was typed). The job's
    end never waits for any of it."""

    def __init__(self, spec):
        self.pty = spec["stdin"] == "pty"
        self.fifo_path = spec["input"]
        self.fifo = self.input_fd = self.master = self.child_fd = self.output = self.pidfd = None
        self.pending = bytearray()       # input read from the FIFO, not yet taken by the job
        self.records = bytearray()       # FIFO bytes not yet parsed into records
        self.opened = False              # a daemon has opened the FIFO
        self.ended = False               # the client's stdin ended (an eof record came)
        self.eof = False                 # EOF / ^D to deliver once `pending` is taken
        self.master_idle = False         # no process has the terminal open (EIO): read it now and then
        _unlink_quietly(self.fifo_path)
        os.mkfifo(self.fifo_path, 0o600)
        try:
            self.fifo = os.open(self.fifo_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            if self.pty:
                import fcntl
                import termios
                self.master, self.child_fd = os.openpty()
                os.set_blocking(self.master, False)
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
                if spec["drop"]:
                    os.fchown(self.child_fd, spec["uid"], -1)  # the user's terminal, as login makes it
                    os.fchmod(self.child_fd, 0o620)
                self.input_fd = self.master
            else:
                self.child_fd, self.input_fd = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(self.input_fd, False)
        except OSError:
            self.finish()
            raise

    def forked(self):
        """The job has its end: drop ours, so that EOF and hang-ups reach the right side."""
        os.close(self.child_fd)
        self.child_fd = None

    def open_output(self, spec):
        """The job's output file, opened with the user's ids (it has just been opened and
        truncated by the job itself), for the terminal's output; None when it cannot be."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC
        if not spec["drop"]:
            try:
                self.output = os.open(spec["output"], flags)
            except OSError:
                pass
            return
        groups = os.getgroups()
        try:
            os.setgroups(os.getgrouplist(spec["user"], spec["gid"]))
            os.setegid(spec["gid"])
            os.seteuid(spec["uid"])
            self.output = os.open(spec["output"], flags)
        except OSError:
            pass
        finally:
            os.seteuid(0)
            os.setegid(0)
            os.setgroups(groups)

    def serve(self, job_pid):
        """Carry input to the job and its terminal's output to the file until the job's main
        process exits; its wait status."""
        try:
            self.pidfd = os.pidfd_open(job_pid)
        except (OSError, AttributeError):
            self.pidfd = None  # no pidfd here: look for the job's end every 0.1 s
        wait_until = time.monotonic() + INPUT_WAIT
        while True:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return 0
                if pid == 0:
                    break
                if pid == job_pid:
                    return status
            if self.fifo is not None and not self.opened and time.monotonic() > wait_until:
                self._input_ended(hangup=True)
            watched = {}
            if self.fifo is not None and len(self.pending) < INPUT_PENDING:
                watched[self.fifo] = select.POLLIN
            if self.pending and self.input_fd is not None:
                watched[self.input_fd] = watched.get(self.input_fd, 0) | select.POLLOUT
            if self.master is not None and not self.master_idle:
                watched[self.master] = watched.get(self.master, 0) | select.POLLIN
            if self.pidfd is not None:
                watched[self.pidfd] = select.POLLIN
            poller = select.poll()
            for fd, mask in watched.items():
                poller.register(fd, mask)
            try:
                ready = dict(poller.poll(100 if self.pidfd is None else 1000))
            except InterruptedError:
                continue
            if self.master is not None and (self.master_idle or ready.get(self.master, 0)):
                self._copy_output()
            if self.fifo is not None and self.fifo in ready:
                self._read_fifo()
            if self.pending and self.input_fd is not None:
                self._write_input()
            if not self.pending and self.eof and self.input_fd is not None:
                self._deliver_eof()

    def _read_fifo(self):
        try:
            chunk = os.read(self.fifo, INPUT_PENDING)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._input_ended(hangup=True)
            return
        self.opened = True
        self.records += chunk
        while len(self.records) >= 3:
            size = struct.unpack(">H", self.records[1:3])[0]
            if len(self.records) < 3 + size:
                break
            kind, payload = bytes(self.records[:1]), bytes(self.records[3:3 + size])
            del self.records[:3 + size]
            if kind == INPUT_DATA and not self.eof:
                self.pending += payload
            elif kind == INPUT_WINDOW and self.pty and size == 4:
                import fcntl
                import termios
                rows, cols = struct.unpack(">HH", payload)
                try:
                    fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                except OSError:
                    pass
            elif kind == INPUT_EOF:
                self.ended = self.eof = True

    def _input_ended(self, hangup):
        """The FIFO's writer is gone (or never came): no more input, ever. A hang-up unless
        the client's stdin had ended first."""
        os.close(self.fifo)
        self.fifo = None
        _unlink_quietly(self.fifo_path)
        if hangup and not self.ended:
            self.pending.clear()
            if self.pty:
                self._copy_output()
                self._close_master()  # the kernel hangs the terminal up: SIGHUP to the job
            else:
                self._close_input()
        else:
            self.ended = self.eof = True

    def _write_input(self):
        try:
            written = os.write(self.input_fd, self.pending)
        except BlockingIOError:
            return
        except OSError:  # the job closed its stdin (EPIPE), or its terminal is gone
            self.pending.clear()
            if not self.pty:
                self._close_input()
            return
        del self.pending[:written]

    def _deliver_eof(self):
        if self.pty:
            try:
                os.write(self.master, b"\x04")  # ^D: end of input to the terminal's reader
            except OSError:
                pass
            self.eof = False
            self.input_fd = None  # nothing more is typed into the terminal
        else:
            self._close_input()

    def _close_input(self):
        if self.input_fd is not None and not self.pty:
            os.close(self.input_fd)
        self.input_fd = None

    def _copy_output(self):
        """What the job wrote to its terminal, into its output file; at most a few reads, so
        input keeps flowing. At EIO (no process has the terminal open now) it stops looking
        until the job's end."""
        for _ in range(16):
            try:
                chunk = os.read(self.master, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.master_idle = True
                return
            self.master_idle = False
            if self.output is not None:
                view = memoryview(chunk)
                try:
                    while view:
                        view = view[os.write(self.output, view):]
                except OSError:
                    pass  # a full disk: the job's terminal is not held up for it

    def _close_master(self):
        if self.master is not None:
            os.close(self.master)
            if self.input_fd == self.master:
                self.input_fd = None
            self.master = None

    def finish(self):
        """After the job and everything it left are gone: the rest of its terminal's output
        into the file, and every descriptor and the FIFO released."""
        if self.master is not None:
            self._copy_output()
            self._close_master()
        if self.fifo is not None:
            os.close(self.fifo)
            self.fifo = None
        _unlink_quietly(self.fifo_path)
        self._close_input()
        for name in ("child_fd", "output", "pidfd"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _rmdir_quietly(path):
    try:
        os.rmdir(path)
    except OSError:
        pass


def _wait_for(job_pid):
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == job_pid:
            return status


def _descendants(root):
    """Pids of every descendant of `root` (a live, single-threaded process: a supervisor),
    from the kernel's lists of each task's children."""
    found = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = [str(pid)] if pid == root else os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue  # gone meanwhile: its children are re-parented, found in the next pass
        for task in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (pid, task), "rb") as listing:
                    pids = [int(child) for child in listing.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(pids)
            frontier.extend(pids)
    return found


def _end_leftovers(job_pid, handle):
    """The job is over when its main process exits: end whatever it left behind (its cgroup;
    else our session and the orphans we adopted as subreaper), so its GPUs are free only when
    its processes are gone. We are alive, so every process in our session but us, and every
    child of ours (not reaped in between: we alone reap them), is the job's.

    Those are all our descendants: a process joins a session only by being forked in it, and
    an orphan of the job is re-parented to its nearest living subreaper, us or a descendant.
    So where the kernel lists each task's children (/proc/PID/task/TID/children) the tree
    below us is walked (a file or two when nothing is left) instead of reading every process
    of the host."""
    deadline = time.monotonic() + STOP_TIMEOUT
    me = os.getpid()
    if handle.cgroup:
        _cgroup_remove(handle.cgroup, deadline)
        remove_cgroup_base(os.path.dirname(handle.cgroup))  # the last job's end leaves nothing behind
    walk = os.path.exists("/proc/%d/task/%d/children" % (me, me))
    while True:
        if walk:
            left = _descendants(me)
        else:
            left = [pid for pid, parent, _, sid, _ in _processes()
                    if pid != me and (sid == me or parent == me or (handle.session and sid == handle.session))]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
            has_children = True
        except ChildProcessError:
            has_children = False
        if not left and not has_children:
            return
        if time.monotonic() > deadline:
            return  # unkillable (uninterruptible sleep): report anyway
        time.sleep(0.01)


# The job's shell with --env-setup-cmd: the setup runs in the shell that then execs the command
# (so `source venv/bin/activate` holds for it), with `set -e`. Its stderr goes to a private
# temporary file first, copied to the job's stderr once the setup is over; when the setup fails,
# "F" and the end of that stderr go to SETUP_FD, a pipe the supervisor reads: the job's reason
# then says why. Written for any POSIX sh.
SETUP_FD = 3
SETUP_REPORT = 600  # bytes of a failed setup's stderr sent to the supervisor
_SETUP_SCRIPT = """__mgpu_log=$(mktemp "${TMPDIR:-/tmp}/mgpu-setup.XXXXXX" 2>/dev/null) && exec 4>&2 2>"$__mgpu_log" || __mgpu_log=
trap '__mgpu_rc=$?; set +e; if [ -n "$__mgpu_log" ]; then exec 2>&4; cat "$__mgpu_log" >&2; { printf F; tail -c %(report)d "$__mgpu_log"; } >&%(fd)d; rm -f "$__mgpu_log"; else printf F >&%(fd)d; fi; exit $__mgpu_rc' EXIT
set -e
%(setup)s
set +e
trap - EXIT
if [ -n "$__mgpu_log" ]; then exec 2>&4 4>&-; cat "$__mgpu_log" >&2; rm -f "$__mgpu_log"; fi
exec %(fd)d>&-
unset __mgpu_log
exec "$@"
"""


def _env_setup_failure(setup_read, exit_code):
    """The reason of a job whose --env-setup-cmd failed (its shell's report on the setup pipe),
    or None: `--env-setup-cmd failed (exit code N): LAST LINES OF ITS STDERR`."""
    try:
        report = os.read(setup_read, SETUP_REPORT + 64)
    except OSError:  # nothing written (EAGAIN): the setup went through
        return None
    if not report.startswith(b"F") or not exit_code:
        return None
    lines = [line.strip() for line in report[1:].decode("utf-8", "replace").splitlines() if line.strip()]
    tail = " / ".join(lines[-3:])[-240:]
    return "--env-setup-cmd failed (exit code %s)%s" % (exit_code, (": " + tail) if tail else "")


def _exec_job(spec, go_read, error_write, job_input=None, setup_write=None):
    stage = "start"
    code = 1
    try:
        # First, before waiting on anything: default signal dispositions, so a cancel or a time
        # limit ends the job even while it waits for the go-ahead or blocks in an open().
        for name in _CHILD_SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if job_input is not None and job_input.pty:
            # The job leads a session whose controlling terminal is its pty: Ctrl+C, Ctrl+Z and
            # window changes reach its foreground process group through the line discipline.
            os.setsid()
            import fcntl
            import termios
            fcntl.ioctl(job_input.child_fd, termios.TIOCSCTTY, 0)
        else:
            os.setpgid(0, 0)
        if os.read(go_read, 1) != GO_AHEAD:
            os._exit(1)  # the supervisor died before recording us: never run the command
        os.close(go_read)
        if spec["drop"]:
            stage = "switching to user %s" % spec["user"]
            os.initgroups(spec["user"], spec["gid"])
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])
        os.umask(spec["umask"])
        stage = "cannot change to directory %s" % spec["cwd"]
        os.chdir(spec["cwd"])
        log_dir = spec.get("log_dir")
        if log_dir:
            stage = "cannot create the log directory %s" % log_dir
            _private_log_dir(log_dir)
        hostfile = spec.get("hostfile")
        if hostfile:
            stage = "cannot write the MPI hostfile %s" % hostfile["path"]
            _write_private_file(hostfile["path"], hostfile["content"])
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOCTTY | os.O_CLOEXEC
        flags |= os.O_TRUNC if spec["truncate"] else os.O_APPEND
        stage = "cannot open output %s" % spec["output"]
        os.makedirs(os.path.dirname(spec["output"]), exist_ok=True)
        out = os.open(spec["output"], flags, 0o666)
        err = out
        if spec["error"] and spec["error"] != spec["output"]:
            stage = "cannot open error output %s" % spec["error"]
            os.makedirs(os.path.dirname(spec["error"]), exist_ok=True)
            err = os.open(spec["error"], flags, 0o666)
        if job_input is None:
            stage = "cannot open /dev/null"
            os.dup2(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), 0)
        else:
            os.dup2(job_input.child_fd, 0)
        if job_input is not None and job_input.pty:
            os.dup2(job_input.child_fd, 1)  # the terminal; the supervisor copies it to the output
            os.dup2(job_input.child_fd, 2)
        else:
            os.dup2(out, 1)
            os.dup2(err, 2)
        lowest = 3
        if setup_write is not None:
            if error_write == SETUP_FD:
                error_write = os.dup(error_write)
            os.dup2(setup_write, SETUP_FD)  # inherited by the job's shell, which closes it
            lowest = SETUP_FD + 1
        os.closerange(lowest, error_write)
        os.closerange(error_write + 1, 1 << 20)
        argv = spec["argv"]
        if spec.get("env_setup"):
            shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
            script = _SETUP_SCRIPT % {"setup": spec["env_setup"], "fd": SETUP_FD, "report": SETUP_REPORT}
            argv = [shell, "-c", script, "mgpu-job"] + argv
        stage = "cannot run %s" % argv[0]
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        message = "%s: %s" % (stage, e.strerror or e)
        code = 127 if (stage.startswith("cannot run") and e.errno == errno.ENOENT) else 126 if stage.startswith("cannot run") else 1
    except BaseException as e:
        message, code = "%s: %s" % (stage, e), 1
    try:
        os.write(error_write, message.encode("utf-8", "replace")[:1000])
    finally:
        os._exit(code)


def _write_private_file(path, content):
    """Write a file of the job's own (its directory made 0700 if missing), as the user: never
    through a symbolic link."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, content.encode("utf-8"))
    finally:
        os.close(fd)


def _private_log_dir(log_dir):
    """The default log directory (HOME/.mgpu/logs) holds what jobs print: only its user may
    read it. Runs as the user."""
    os.makedirs(log_dir, mode=0o700, exist_ok=True)
    info = os.lstat(log_dir)
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077:
        os.chmod(log_dir, 0o700)
