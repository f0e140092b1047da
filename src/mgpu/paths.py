"""Default locations of the socket and the state directory, for daemons and clients alike.

Owns: where things live when nothing is configured. Must not: import anything from mgpu,
create anything, or do more I/O than reading the environment and one small config file.
"""

import os

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
    """Sockets a client tries, in order: MGPU_SOCKET alone when set; otherwise the user's own
    single-user master, then the system master (as configured, else its default path)."""
    explicit = os.environ.get("MGPU_SOCKET")
    if explicit:
        return [explicit]
    candidates = []
    if os.getuid() != 0:
        candidates.append(user_socket())
    candidates.append(configured_socket() or SYSTEM_SOCKET)
    return candidates
