"""Daemon configuration: YAML file, then environment, then flags -> one validated, frozen Config.

Owns: every option a daemon takes, its default, its validation and its one-line error.
Must not: open sockets, start anything, or touch GPUs.
"""

import os

from . import paths
from .errors import INVALID_ARGUMENT, MgpuError
from .model import parse_duration

POLICIES = ("fill_first", "spread")


class ConfigError(MgpuError):
    def __init__(self, message):
        super().__init__(INVALID_ARGUMENT, message)


# name -> (default, description). The default of a path depends on who runs the daemon and is
# filled in by load(). The example config in build-config/ lists every one of these.
OPTIONS = {
    "socket": (None, "UNIX socket path clients connect to"),
    "state_dir": (None, "directory of the SQLite state database and job records"),
    "fake_gpus": (None, "declare fake GPUs instead of NVML: 'N[:MB]' or a list of {name, memory_mb, external_mb}"),
    "max_job_time": (None, "time slice in seconds or [D-]HH:MM:SS: a longer job is requeued while others wait for its GPUs"),
    "max_user_priority": (100, "highest --priority an ordinary user may ask for"),
    "kill_grace": (10, "seconds between SIGTERM and SIGKILL when a job is stopped"),
    "policy": ("fill_first", "GPU choice: fill_first (pack) or spread"),
    "operators": ([], "users who may cancel any job, like root"),
    "allow_root_jobs": (False, "run jobs submitted by root as root (refused otherwise)"),
    "node_name": (None, "this host's name in the cluster (default: the host name)"),
    "max_requeues": (5, "times a --requeue job goes back to the queue at its time limit; then it ends TIMEOUT"),
    "keep_finished": (10000, "finished jobs kept in memory for 'mgpu queue --all' (all stay in the database)"),
    "max_connections": (1024, "client connections served at once; more are refused until some close"),
    "max_connections_per_user": (128, "client connections of one user served at once (root: only max_connections)"),
    "listen": (None, "HOST:PORT (or HOST, port 8080) where the master accepts node agents; none: single host"),
    "key_file": ("/etc/mgpu/cluster.key", "the cluster key (mgpu keygen) every master and node shares"),
    "master": (None, "HOST:PORT of the master, for a node agent (also MGPU_MASTER_HOST, MGPU_MASTER_PORT)"),
    "heartbeat_interval": (30, "seconds between a node agent's heartbeats"),
    "node_timeout": (60, "seconds without a heartbeat after which the master declares a node down"),
    "submit_only": (False, "a node agent that only relays its host's clients to the master: no GPUs, no jobs"),
}


class Config:
    """A frozen set of validated options."""

    __slots__ = tuple(OPTIONS) + ("source",)

    def __init__(self, values, source):
        for name in OPTIONS:
            object.__setattr__(self, name, values[name])
        object.__setattr__(self, "source", source)

    def __setattr__(self, name, value):
        raise AttributeError("Config is frozen")

    def __delattr__(self, name):
        raise AttributeError("Config is frozen")

    def as_dict(self):
        return {name: getattr(self, name) for name in OPTIONS}


def _positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise ConfigError("%s must be a whole number, not %r" % (name, value)) from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError("%s must be %s, not %d" % (name, "0 or more" if allow_zero else "above 0", value))
    return value


def parse_fake_gpus(value):
    """'N[:MB]' or a list of {name, memory_mb, external_mb} -> a list of GPU dicts."""
    if value is None:
        return None
    if isinstance(value, list):
        gpus = []
        for i, entry in enumerate(value):
            if not isinstance(entry, dict) or "memory_mb" not in entry:
                raise ConfigError("fake_gpus[%d] must be a mapping with memory_mb" % i)
            unknown = set(entry) - {"name", "memory_mb", "external_mb", "uuid"}
            if unknown:
                raise ConfigError("fake_gpus[%d]: unknown key %s" % (i, sorted(unknown)[0]))
            memory = _positive_int("fake_gpus[%d].memory_mb" % i, entry["memory_mb"])
            external = _positive_int("fake_gpus[%d].external_mb" % i, entry.get("external_mb", 0), True)
            gpus.append({"index": i, "name": str(entry.get("name", "Fake GPU")),
                         "uuid": str(entry.get("uuid", "GPU-fake-%04d" % i)),
                         "memory_mb": memory, "external_mb": min(external, memory)})
        return gpus
    text = str(value).strip()
    count, _, memory = text.partition(":")
    try:
        count = int(count)
        memory = int(memory) if memory else 81920
    except ValueError:
        raise ConfigError("fake_gpus must look like N or N:MB (e.g. 4:81920), not %r" % text) from None
    if count < 0 or memory <= 0:
        raise ConfigError("fake_gpus must look like N or N:MB with N >= 0 and MB > 0, not %r" % text)
    return [{"index": i, "name": "Fake GPU", "uuid": "GPU-fake-%04d" % i,
             "memory_mb": memory, "external_mb": 0} for i in range(count)]


def read_file(path):
    """The mapping in a YAML config file; {} for an empty file."""
    import yaml  # daemons only: clients never load the YAML parser

    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except OSError as e:
        raise ConfigError("cannot read config %s: %s" % (path, e.strerror)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = " line %d" % (mark.line + 1) if mark else ""
        raise ConfigError("config %s%s is not valid YAML: %s" % (
            path, where, getattr(e, "problem", None) or e)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError("config %s must be a mapping of option: value" % path)
    return loaded


def validate(raw, uid, source="defaults"):
    unknown = [key for key in raw if key not in OPTIONS]
    if unknown:
        raise ConfigError("%s: unknown option %r (known: %s)" % (source, unknown[0], ", ".join(OPTIONS)))
    values = {name: default for name, (default, _) in OPTIONS.items()}
    values.update({k: v for k, v in raw.items() if v is not None})
    values["socket"] = str(values["socket"] or paths.default_socket(uid))
    values["state_dir"] = str(values["state_dir"] or paths.default_state_dir(uid))
    values["fake_gpus"] = parse_fake_gpus(values["fake_gpus"])
    if values["max_job_time"] is not None:
        try:
            values["max_job_time"] = parse_duration(values["max_job_time"])
        except ValueError as e:
            raise ConfigError("max_job_time: %s" % e) from None
    values["max_user_priority"] = _positive_int("max_user_priority", values["max_user_priority"], True)
    values["keep_finished"] = _positive_int("keep_finished", values["keep_finished"], True)
    values["max_requeues"] = _positive_int("max_requeues", values["max_requeues"], True)
    values["max_connections"] = _positive_int("max_connections", values["max_connections"])
    values["max_connections_per_user"] = _positive_int("max_connections_per_user",
                                                       values["max_connections_per_user"])
    try:
        values["kill_grace"] = float(values["kill_grace"])
    except (TypeError, ValueError):
        raise ConfigError("kill_grace must be a number of seconds, not %r" % values["kill_grace"]) from None
    if values["kill_grace"] < 0:
        raise ConfigError("kill_grace must be 0 or more seconds")
    if values["policy"] not in POLICIES:
        raise ConfigError("policy must be one of %s, not %r" % (", ".join(POLICIES), values["policy"]))
    operators = values["operators"]
    if isinstance(operators, str):
        operators = [o for o in operators.replace(",", " ").split() if o]
    if not isinstance(operators, list) or not all(isinstance(o, str) for o in operators):
        raise ConfigError("operators must be a list of user names")
    values["operators"] = tuple(operators)
    for name in ("allow_root_jobs", "submit_only"):
        if not isinstance(values[name], bool):
            raise ConfigError("%s must be true or false" % name)
    values["node_name"] = str(values["node_name"] or os.uname().nodename.split(".")[0])
    for name in ("listen", "master"):
        if values[name] is not None:
            values[name] = format_address(*parse_address(values[name], name))
    values["key_file"] = str(values["key_file"])
    for name in ("heartbeat_interval", "node_timeout"):
        try:
            values[name] = float(values[name])
        except (TypeError, ValueError):
            raise ConfigError("%s must be a number of seconds, not %r" % (name, values[name])) from None
        if not 0.1 <= values[name] <= 86400:
            raise ConfigError("%s must be from 0.1 to 86400 seconds" % name)
    if values["node_timeout"] <= values["heartbeat_interval"]:
        raise ConfigError("node_timeout (%gs) must be longer than heartbeat_interval (%gs)"
                          % (values["node_timeout"], values["heartbeat_interval"]))
    return Config(values, source)


DEFAULT_PORT = 8080


def format_address(host, port):
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def parse_address(text, what="address"):
    """(host, port) from 'HOST:PORT', 'HOST' (port 8080) or '[IPv6]:PORT'; ConfigError otherwise."""
    text = str(text).strip()
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError("%s %r: a bracketed IPv6 address needs its ']'" % (what, text))
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError("%s %r: use [IPV6]:PORT" % (what, text))
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        port = int(port)
    except ValueError:
        raise ConfigError("%s %r: the port must be a number" % (what, text)) from None
    if not host or not 1 <= port <= 65535 or any(c.isspace() for c in host) or len(host) > 255:
        raise ConfigError("%s %r: use HOST:PORT with a port from 1 to 65535" % (what, text))
    return host, port


def load(path=None, overrides=None, uid=None, environ=None):
    """The daemon's Config: `path` (or the system config when present), then MGPU_SOCKET,
    then `overrides` (flags; None values are ignored)."""
    uid = os.getuid() if uid is None else uid
    environ = os.environ if environ is None else environ
    raw = {}
    source = "defaults"
    if path is None and os.path.exists(paths.SYSTEM_CONFIG) and uid == 0:
        path = paths.SYSTEM_CONFIG
    if path is not None:
        raw = dict(read_file(path))
        source = path
        try:
            validate(raw, uid, source)
        except ConfigError as e:  # name the file in errors about its own values
            message = e.message if e.message.startswith(path) else "%s: %s" % (path, e.message)
            raise ConfigError(message) from None
    if environ.get("MGPU_SOCKET"):
        raw["socket"] = environ["MGPU_SOCKET"]
    if environ.get("MGPU_MASTER_HOST"):
        raw["master"] = "%s:%s" % (environ["MGPU_MASTER_HOST"], environ.get("MGPU_MASTER_PORT") or DEFAULT_PORT)
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return validate(raw, uid, source)


def configured_master(environ=None):
    """Where the master is, as this host's users would be told (MGPU_MASTER_HOST and _PORT, or
    `master` in the system config), or None; never raises (it only shapes an error message)."""
    environ = os.environ if environ is None else environ
    text = None
    if environ.get("MGPU_MASTER_HOST"):
        text = "%s:%s" % (environ["MGPU_MASTER_HOST"], environ.get("MGPU_MASTER_PORT") or DEFAULT_PORT)
    else:
        try:
            text = read_file(paths.SYSTEM_CONFIG).get("master")
        except (ConfigError, OSError):
            return None
    if not isinstance(text, str):
        return None
    try:
        return format_address(*parse_address(text, "master"))
    except ConfigError:
        return None
