"""Start jobs as their users, supervise them, stop them.

Owns: every fork, exec, change of uid and signal of mgpu. Must not: import anything from mgpu
or know about queues and scheduling.

Shape: at daemon start-up, before any thread exists, `Launcher()` forks a small single-threaded
helper. For each job the helper forks a supervisor, which leaves the daemon's session
(`setsid`), becomes a child subreaper so no descendant of the job escapes it, and forks the job:
own process group, `initgroups`/`setgid`/`setuid` (uid last), chdir, output opened after the
drop, exec. The supervisor writes a record (its pid and start time, then the exit status) to the
state directory and reports over the helper's event pipe. When the daemon that started it is gone,
the record waits on disk for the next daemon, which finds it when it re-adopts its jobs or
notices the supervisor has exited. A job therefore never depends on the daemon staying alive.
Forking from the helper costs about a millisecond, where starting a fresh interpreter per job
would cost 20-150 ms.
"""

import errno
import json
import os
import signal
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
_CHILD_SIGNALS = ("SIGPIPE", "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGCHLD", "SIGUSR1",
                  "SIGUSR2", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGXFSZ")
MAX_EVENT = 3800  # below PIPE_BUF: one write of an event line is atomic


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (which may hold spaces or
    parentheses), or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as stat_file:
            stat = stat_file.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()


def process_start_time(pid):
    """The start time of `pid` in clock ticks since boot (identifies a process across pid
    reuse), or None when there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _parent_of(pid):
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def children(pid):
    """Pids whose parent is `pid`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _parent_of(int(name)) == pid:
            found.append(int(name))
    return found


def descendants(pid):
    result, frontier = [], [pid]
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = _parent_of(int(name))
            if parent is not None:
                parents.setdefault(parent, []).append(int(name))
    while frontier:
        current = frontier.pop()
        for child in parents.get(current, ()):
            result.append(child)
            frontier.append(child)
    return result


def supervisor_alive(sup_pid, sup_start):
    return sup_pid is not None and process_start_time(sup_pid) == sup_start


def signal_job(sup_pid, sup_start, pgid, signum):
    """Send `signum` to a job's whole process tree: its process group, and any descendant of
    its supervisor that left the group. False when the job is gone."""
    delivered = False
    if pgid:
        try:
            os.killpg(pgid, signum)
            delivered = True
        except ProcessLookupError:
            pass
        except PermissionError:
            pass
    if supervisor_alive(sup_pid, sup_start):
        for pid in descendants(sup_pid):
            try:
                if os.getpgid(pid) != pgid:
                    os.kill(pid, signum)
                    delivered = True
            except (ProcessLookupError, PermissionError):
                pass
    return delivered


def read_record(path):
    """A supervisor's record of one job attempt, or None."""
    try:
        with open(path, encoding="utf-8") as record:
            return json.load(record)
    except (OSError, ValueError):
        return None


def _write_record(path, record):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    os.rename(tmp, path)


# ---------------------------------------------------------------------------------------------
# Daemon side


class HelperGone(Exception):
    pass


class Launcher:
    """The daemon's handle on its helper process. Create it before starting any thread."""

    def __init__(self):
        command_read, self._command_write = os.pipe()
        events_read, events_write = os.pipe()
        self.helper_pid = os.fork()
        if self.helper_pid == 0:  # the helper: single-threaded from here on
            status = 0
            try:
                os.close(self._command_write)
                os.close(events_read)
                _helper_main(command_read, events_write)
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        os.close(command_read)
        os.close(events_write)
        self._events = os.fdopen(events_read, "rb")
        self._lock = threading.Lock()

    def launch(self, spec):
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


def _helper_main(command_fd, event_fd):
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
    except Exception:
        libc = None
    pending = b""
    while True:
        chunk = os.read(command_fd, 1 << 16)
        if not chunk:
            return  # the daemon is gone; running supervisors carry on alone
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line:
                continue
            spec = json.loads(line)
            try:
                pid = os.fork()
            except OSError as e:
                _emit(event_fd, {"event": "exited", "job_id": spec["job_id"], "attempt": spec["attempt"],
                                 "exit_code": None, "error": "cannot start a supervisor: %s" % e.strerror})
                continue
            if pid == 0:
                status = 1
                try:
                    os.close(command_fd)
                    _supervise(spec, event_fd, libc)
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


def _supervise(spec, event_fd, libc):
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    if libc is not None:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    error_read, error_write = os.pipe2(os.O_CLOEXEC)
    job_pid = os.fork()
    if job_pid == 0:
        _exec_job(spec, error_write)  # never returns
    os.close(error_write)
    try:
        os.setpgid(job_pid, job_pid)  # also done by the child; whichever runs first wins
    except OSError:
        pass
    failure = b""
    while True:
        chunk = os.read(error_read, 4096)
        if not chunk:
            break
        failure += chunk
    os.close(error_read)
    me = os.getpid()
    record = {"job_id": spec["job_id"], "attempt": spec["attempt"], "sup_pid": me,
              "sup_start": process_start_time(me), "pgid": job_pid}
    _write_record(spec["record"], record)
    if not failure:
        _emit(event_fd, dict(record, event="started"))
    status = _wait_for(job_pid)
    _kill_leftovers(job_pid)
    if os.WIFSIGNALED(status):
        exit_code, signum = 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    else:
        exit_code, signum = os.WEXITSTATUS(status), None
    record.update(exit_code=exit_code, signal=signum, end_time=time.time(),
                  error=failure.decode("utf-8", "replace")[:300] or None)
    _write_record(spec["record"], record)
    _emit(event_fd, dict(record, event="exited"))


def _wait_for(job_pid):
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == job_pid:
            return status


def _kill_leftovers(job_pid):
    """The job is over when its main process exits: end whatever it left behind (in its group
    or adopted by us as subreaper), so its GPUs are free only when its processes are gone."""
    deadline = time.monotonic() + 30
    while True:
        group_left = True
        try:
            os.killpg(job_pid, signal.SIGKILL)
        except ProcessLookupError:
            group_left = False
        except PermissionError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
            has_children = True
        except ChildProcessError:
            has_children = False
        if not group_left and not has_children:
            return
        for pid in children(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if time.monotonic() > deadline:
            return  # unkillable (uninterruptible sleep): report anyway
        time.sleep(0.01)


def _exec_job(spec, error_write):
    stage = "start"
    try:
        os.setpgid(0, 0)
        for name in _CHILD_SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if spec["drop"]:
            stage = "switching to user %s" % spec["user"]
            os.initgroups(spec["user"], spec["gid"])
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])
        os.umask(spec["umask"])
        stage = "cannot change to directory %s" % spec["cwd"]
        os.chdir(spec["cwd"])
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
        stage = "cannot open /dev/null"
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.closerange(3, error_write)
        os.closerange(error_write + 1, 1 << 20)
        argv = spec["argv"]
        if spec.get("env_setup"):
            shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
            argv = [shell, "-c", "set -e\n%s\nset +e\nexec \"$@\"" % spec["env_setup"], "mgpu-job"] + argv
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
