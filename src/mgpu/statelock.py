"""One daemon per state directory: an exclusive flock on `STATE/master.lock`.

Owns: taking the lock (and waiting a little for a stopped daemon's launcher helper to hand it
over) and naming the holder when another daemon has it. The lock fd is inherited by the
launcher helper, which keeps it while it may still start jobs (see launcher.py). Must not:
import anything from mgpu but errors.
"""

import errno
import fcntl
import os
import time

from . import errors
from .errors import MgpuError

LOCK_WAIT = 15.0  # how long a starting daemon waits for a stopped daemon's helper


def lock_state_dir(state_dir, wait=LOCK_WAIT):
    """An fd holding the exclusive lock of `state_dir` (created 0700), with our pid written in
    it; MgpuError naming the holder when another daemon has it."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, "master.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
        holder = _lock_holder(fd)
        holder_runs = holder is not None and _alive(holder)
        if holder_runs or time.monotonic() > deadline:
            os.close(fd)
            who = ("another mgpu daemon (pid %d)" % holder if holder_runs
                   else "a process left by a stopped daemon (pid %s)" % holder)
            raise MgpuError(errors.UNAVAILABLE, "the state directory %s is in use by %s: one daemon per "
                            "state directory; stop it first or use another --state-dir" % (state_dir, who))
        time.sleep(0.05)  # the previous daemon's launcher helper is handing over its last jobs
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def _lock_holder(fd):
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid):
    return os.path.exists("/proc/%d" % pid)
