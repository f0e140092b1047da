"""Default locations of the socket and the state directory, for daemons and clients alike.

Owns: where things live when nothing is configured. Must not: import anything from mgpu,
create anything, or do more I/O than reading the environment, one small config file, and the
owner and mode of a socket's directories.
"""

import os
import pwd
import stat

SYSTEM_SOCKET = "/run/mgpu/mgpu.sock"
SYSTEM_STATE_DIR = "/var/lib/mgpu"
SYSTEM_CONFIG = "/etc/mgpu/mgpu.yaml"


def user_socket(uid=None):
    """The socket of a single-user master started by `uid`."""
    uid = os.getuid() if uid is None else uid
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == uid:
        return os.path.join(runtime, "mgpu", "mgpu.sock")
    return "/tmp/mgpu-%d/mgpu.sock" % uid


def user_socket_dirs(uid=None):
    """The directories that may hold the socket of `uid`'s single-user master; each must belong
    to that user alone."""
    uid = os.getuid() if uid is None else uid
    dirs = ["/tmp/mgpu-%d" % uid]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.insert(0, os.path.join(runtime, "mgpu"))
    return dirs


def describe_uid(uid):
    """'alice (uid 1000)', or 'uid 1000' for a uid without an account."""
    try:
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid)
    except KeyError:
        return "uid %d" % uid


def _writable_by_others(mode):
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH)) and not mode & stat.S_ISVTX


def socket_directory_problem(directory, uid, per_user):
    """Why a socket in `directory` could be replaced by someone other than root or `uid`, in
    words ("its directory ... belongs to bob (uid 1001)"), or None when it cannot (or does not
    exist yet). A per-user directory must be a real directory of `uid` writable by nobody else;
    any other directory, and every directory above, must belong to root or `uid` and be
    writable by nobody else unless it is sticky (/tmp). A symlink on the way must belong to
    root or `uid` too."""
    directory = os.path.abspath(directory)
    try:
        own = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as e:
        return "its directory %s cannot be examined: %s" % (directory, e.strerror)
    trusted = (0, uid)
    if per_user:
        if not stat.S_ISDIR(own.st_mode):
            return "%s is not a directory (a %s)" % (directory, "symlink" if stat.S_ISLNK(own.st_mode) else "file")
        if own.st_uid != uid:
            return "its directory %s belongs to %s, not to %s" % (directory, describe_uid(own.st_uid), describe_uid(uid))
        if own.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return "its directory %s is writable by %s (mode %04o)" % (
                directory, "others" if own.st_mode & stat.S_IWOTH else "its group", stat.S_IMODE(own.st_mode))
    # Symlinks on the way: whoever owns one can point it elsewhere.
    prefix = "/"
    for part in directory.strip("/").split("/"):
        prefix = os.path.join(prefix, part)
        try:
            link = os.lstat(prefix)
        except OSError:
            break
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted:
            return "%s on the way to it is a symlink of %s" % (prefix, describe_uid(link.st_uid))
    # The real directory and every one above it.
    current = os.path.realpath(directory)
    while True:
        try:
            st = os.stat(current)
        except OSError as e:
            return "%s cannot be examined: %s" % (current, e.strerror)
        which = ("its directory %s" % current if current == os.path.realpath(directory)
                 else "%s (above its directory)" % current)
        if st.st_uid not in trusted:
            return "%s belongs to %s, not to %s" % (
                which, describe_uid(st.st_uid), "root" if uid == 0 else "root or " + describe_uid(uid))
        if _writable_by_others(st.st_mode):
            return "%s is writable by others and not sticky (mode %04o)" % (which, stat.S_IMODE(st.st_mode))
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def default_socket(uid=None):
    uid = os.getuid() if uid is None else uid
    return SYSTEM_SOCKET if uid == 0 else user_socket(uid)


def default_state_dir(uid=None):
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "mgpu")


def configured_socket(config_path=SYSTEM_CONFIG):
    """The `socket:` value of the system config, read without a YAML parser (clients start
    fast and must not import yaml); None when the file or the key is absent."""
    try:
        with open(config_path, encoding="utf-8") as config:
            for line in config:
                if line.startswith("socket:"):
                    value = line.split(":", 1)[1].split(" #", 1)[0].strip().strip("'\"")
                    return value or None
    except OSError:
        return None
    return None


def client_socket_candidates():
    """Sockets a client tries, in order: MGPU_SOCKET alone when set; otherwise the system
    master (as configured, else its default path), then the user's own single-user master (a
    try-out started by the user never takes over from the shared master). The client checks
    each one (its directory, and who serves it) before it sends anything."""
    explicit = os.environ.get("MGPU_SOCKET")
    if explicit:
        return [explicit]
    candidates = [configured_socket() or SYSTEM_SOCKET]
    if os.getuid() != 0:
        candidates.append(user_socket())
    return candidates
