"""The wire protocol: message types and their fields, framing, size limit, version.

Framing: one JSON object per line (UTF-8, `\\n`-terminated; JSON never contains a raw newline).
Every request carries `v` (the protocol version) and `type`; every reply carries `ok` and either
`result` or `error` (a stable code from errors.py) with a human `message`. A stream (attach) is a
sequence of frames, each with a `type`, ending with an `end` frame.

Input is bounded and validated here, before the daemon sees it: a frame is strict UTF-8 JSON
(no NaN or Infinity, no lone surrogates in any string); a request keeps only the fields its type
declares, each of its declared type (a bool is not an int, a float is never an int), every
string in them free of NUL, and every number and size within its limit:

    time_limit, warn_seconds   1 .. MAX_SECONDS (365 days)
    priority                   -MAX_PRIORITY .. MAX_PRIORITY (users: the config's 0..max)
    gpus                       0 .. MAX_GPUS
    gpu_ids                    at most MAX_GPUS ids, each 0 .. MAX_GPU_INDEX (distinct:
                               the controller)
    mem_mb                     1 .. MAX_MEM_MB (16 TiB)
    warn_signal                a real signal (model.is_signal)
    umask                      0 .. 0o777
    name                       at most MAX_NAME characters
    command                    1 .. MAX_COMMAND_ARGS arguments, MAX_COMMAND_BYTES in all
    env                        at most MAX_ENV_ENTRIES, keys non-empty, without '=', at most
                               MAX_ENV_KEY characters
    cwd, output, error         at most MAX_PATH bytes of UTF-8 (PATH_MAX), also after the
                               master expands %j %u %x in output and error
    env_setup                  at most MAX_ENV_SETUP bytes
    queue user, state          at most MAX_FILTER characters
    queue, history ids         at most MAX_IDS_NAMED, each 1 .. MAX_JOB_ID
    history user, state        at most MAX_FILTER characters (states: final ones)
    history since              0 .. MAX_TIME (epoch seconds: jobs that ended since then)
    history limit              1 .. MAX_HISTORY_LIMIT jobs
    show job_id                1 .. MAX_JOB_ID
    cancel ids                 at most MAX_CANCEL_IDS, each 1 .. MAX_JOB_ID
    attach job_id              1 .. MAX_JOB_ID
    submit stdin               "pipe" (srun -i: the client's stdin) or "pty" (srun --pty)
    input frames (after an attach that asked for input): data at most MAX_INPUT_DATA
                               characters, each U+0000..U+00FF (bytes as latin-1); rows and
                               cols 1 .. MAX_WINDOW, both or neither; eof true or absent
    nnodes                     1 .. MAX_JOB_HOSTS (hosts of one job; with gpus per host)
    node_gpu_ids               at most MAX_JOB_HOSTS [host, [GPU ids]] pairs: a valid node
                               name each, GPU ids as gpu_ids
    nodelist, exclude          at most MAX_NODES_NAMED node names, each a valid node name
                               (valid_node_name; known to the master: the controller)
    drain, resume node         1 .. MAX_NODE_NAME characters (the controller: valid_node_name)
    drain reason               at most MAX_DRAIN_REASON characters, no control characters
    dependency                 at most MAX_DEPENDENCIES [type, job id] pairs: a type of
                               DEPENDENCY_TYPES, an id 1 .. MAX_JOB_ID (known to the master,
                               and satisfiable: the controller)
    array                      a job array's task ids: at most MAX_ARRAY_RUNS runs [first,
                               last, step], sorted, not overlapping, ids 0 ..
                               MAX_ARRAY_TASK_ID, at most MAX_ARRAY_TASKS in all
                               (model.check_array_runs)
    array_throttle             1 .. MAX_ARRAY_TASKS (tasks of the array running at once)
    cancel tasks               at most MAX_CANCEL_IDS [array job id, runs] pairs (runs as
                               for array)
    show array_task_id         0 .. MAX_ARRAY_TASK_ID (a task of the array job_id)

Owns: encoding, decoding and field validation of every message. Must not: touch sockets.
"""

from . import errors
from .errors import MgpuError
from .model import (DEPENDENCY_TYPES, MAX_ARRAY_TASK_ID, MAX_ARRAY_TASKS, MAX_DEPENDENCIES, MAX_GPU_INDEX, MAX_GPUS, MAX_JOB_ID, MAX_MEM_MB, MAX_PATH, MAX_PRIORITY, MAX_SIGNAL,
                    MAX_SECONDS, check_array_runs, is_signal)

VERSION = 1
MAX_FRAME = 1 << 20   # bytes, newline included: the most a daemon reads in one frame
MAX_REPLY = 1 << 28   # the most a client reads in one frame (a queue of many jobs is large)

# Sizes of request fields (see the module docstring). Bounded so that nothing a user sends can
# grow in the master (path expansion, the store, the launcher's input) beyond a few MB per job.
# The number ranges (MAX_SECONDS, MAX_PATH, MAX_PRIORITY, MAX_GPUS, MAX_GPU_INDEX, MAX_MEM_MB, MAX_JOB_ID)
# live in model.py, where the command line's parsers check them too.
MAX_NAME = 256                   # characters of a job name
MAX_COMMAND_ARGS = 4096          # arguments of a command
MAX_COMMAND_BYTES = 256 * 1024   # UTF-8 bytes of a command, a NUL after each argument
MAX_ENV_ENTRIES = 4096           # variables in a job's environment
MAX_ENV_KEY = 1024               # characters of a variable's name
# MAX_PATH (model.py): UTF-8 bytes of cwd, output and error (PATH_MAX), also once expanded.
MAX_ENV_SETUP = 64 * 1024        # UTF-8 bytes of --env-setup-cmd
MAX_FILTER = 256                 # characters of queue's user and state filters
MAX_CANCEL_IDS = 10_000          # job ids in one cancel
MAX_UMASK = 0o777
MAX_NODE_NAME = 64               # characters of a node name (see valid_node_name)
MAX_NODES_NAMED = 1024           # node names in one --nodelist or --exclude
MAX_JOB_HOSTS = 1024             # hosts of one job (--nodes, --node-gpu-ids)
MAX_DRAIN_REASON = 256           # characters of drain's reason
MAX_INPUT_DATA = 64 * 1024       # bytes of a job's input in one input frame (latin-1 characters)
MAX_WINDOW = 65535               # rows or columns of a terminal window
STDIN_MODES = ("pipe", "pty")    # a job's stdin besides /dev/null: the client's input, or a terminal
MAX_IDS_NAMED = 1000             # job ids in one queue -j or history -j
MAX_HISTORY_LIMIT = 10_000       # finished jobs in one history reply
DEFAULT_HISTORY_LIMIT = 1000
MAX_TIME = 1 << 40               # epoch seconds (far beyond any real date)

class Encoded:
    """A value already encoded as JSON text (e.g. rows kept encoded between replies), sent as it
    is: only as a value of a reply's `result` object."""
    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


def _dumps_result(message):
    """`message` as JSON, with the text of each Encoded value of its result put in as it is."""
    result = ",".join("%s:%s" % (_dumps(key), value.text if type(value) is Encoded else _dumps(value))
                      for key, value in message["result"].items())
    rest = "".join(",%s:%s" % (_dumps(key), _dumps(value)) for key, value in message.items() if key != "result")
    return '{"result":{%s}%s}' % (result, rest)


def encode_value(value):
    """A JSON value as text (for an Encoded)."""
    return _dumps(value)


def _has_encoded(message):
    result = message.get("result")
    return type(result) is dict and any(type(value) is Encoded for value in result.values())


def plain(message):
    """`message` with each Encoded value of its result decoded again (to put it inside another
    message, e.g. a relayed reply)."""
    if not _has_encoded(message):
        return message
    result = {key: _loads(value.text) if type(value) is Encoded else value for key, value in message["result"].items()}
    return dict(message, result=result)


def encode(message):
    """One frame: the message as a JSON line."""
    text = _dumps_result(message) if _has_encoded(message) else _dumps(message)
    data = (text + "\n").encode("utf-8", "surrogateescape")
    if len(data) > MAX_REPLY:
        raise MgpuError(errors.TOO_LARGE, "message of %d bytes is over the %d-byte limit"
                        % (len(data), MAX_REPLY))
    return data


def _refuse_constant(name):
    raise ValueError("%s is not JSON" % name)


# JSON through json's own C accelerator, _json, as json.JSONEncoder(ensure_ascii=False,
# separators=(",", ":")) and json.JSONDecoder(parse_constant=_refuse_constant) use it: `import
# json` also loads re and enum (its pure-Python fallbacks), which a client command does not need.
# Without _json (another Python implementation), json itself.
class _ScannerContext:
    """The attributes _json.make_scanner reads from a json.JSONDecoder."""

    def __init__(self):
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = None
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = _refuse_constant
        self.memo = {}


def _not_serializable(value):
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def _c_encoder():
    """A fresh encoder (its circular-reference markers start empty, as each json.dumps's)."""
    return _json.make_encoder({}, _not_serializable, _json.encode_basestring, None, ":", ",", False, False, True)


try:
    import _json

    _scan_once = _json.make_scanner(_ScannerContext())
    _c_encoder()
except (ImportError, AttributeError, TypeError):
    _json = None


def _json_error(message, text, position):
    from json.decoder import JSONDecodeError  # only for a malformed frame

    return JSONDecodeError(message, text, position)


def _dumps(message):
    if _json is None:
        import json

        return json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    if isinstance(message, str):
        return _json.encode_basestring(message)
    return "".join(_c_encoder()(message, 0))


def _loads(text):
    if _json is None:
        import json

        return json.JSONDecoder(parse_constant=_refuse_constant).decode(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _scan_once(text, start)
    except StopIteration as e:
        raise _json_error("Expecting value", text, e.value) from None
    rest = text[end:].lstrip(" \t\n\r")
    if rest:
        raise _json_error("Extra data", text, len(text) - len(rest))
    return value


def decode(line):
    """The JSON object in one frame; MgpuError(BAD_REQUEST) for anything else, including a
    string anywhere in it that is not valid Unicode (a lone surrogate)."""
    try:
        message = _loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MgpuError(errors.BAD_REQUEST, "malformed frame: %s" % type(e).__name__
                        if isinstance(e, RecursionError) else "malformed frame: %s" % _one_line(e)) from None
    if not isinstance(message, dict):
        raise MgpuError(errors.BAD_REQUEST, "malformed frame: expected a JSON object")
    # Strict UTF-8 never decodes to a surrogate: only a \u escape can make one, so only frames
    # with one need the walk.
    if b"\\u" in line and not _strings_are(message, _no_surrogate):
        raise MgpuError(errors.BAD_REQUEST, "malformed frame: a string is not valid Unicode "
                        "(lone surrogate)")
    return message


def _one_line(value, limit=200):
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _show(value, limit=40):
    """A value from the wire, short enough to quote in an error message."""
    text = repr(value) if isinstance(value, str) else _one_line(type(value).__name__ if isinstance(
        value, (dict, list)) else value, limit)
    return text if len(text) <= limit else text[:limit] + "..."


def _no_surrogate(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(text):
    return "\0" not in text and _no_surrogate(text)


def _strings_are(value, good):
    """True when `good(s)` holds for every string in a JSON value, keys included. Iterative: a
    deeply nested value cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not good(item):
                return False
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not good(key):
                    return False
                stack.append(child)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return True


def valid_text(value):
    """True when every string in `value` (any JSON value: str, list, dict keys and values) is
    valid Unicode without NUL: what a request may store, and what a loaded record must hold."""
    return _strings_are(value, _plain)


def request(type_, **fields):
    fields["v"] = VERSION
    fields["type"] = type_
    return fields


def ok(result=None):
    return {"ok": True, "result": result}


def error(code, message):
    return {"ok": False, "error": code, "message": message}


def error_from(exc):
    return error(exc.code, exc.message)


def raise_for(reply):
    """The result of a reply, or MgpuError carrying its error."""
    if not isinstance(reply, dict) or "ok" not in reply:
        raise MgpuError(errors.BAD_REQUEST, "the daemon sent a malformed reply")
    if not reply["ok"]:
        raise MgpuError(reply.get("error", errors.INTERNAL), reply.get("message", "request failed"))
    return reply.get("result")


# ---------------------------------------------------------------------------------------------
# Requests and their fields: name -> (type or tuple of types, required). `None` means null is
# accepted. Checked here so the daemon's handlers see well-typed values only.

_STR = (str,)
_INT = (int,)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))

REQUESTS = {
    "submit": {
        "command": (list, True), "cwd": (_STR, True), "env": (dict, True),
        "gpus": (_INT, False), "gpu_ids": ((list, type(None)), False), "mem_mb": (_OPT_INT, False),
        "time_limit": (_OPT_INT, False), "priority": (_OPT_INT, False), "name": (_OPT_STR, False),
        "output": (_OPT_STR, False), "error": (_OPT_STR, False), "env_setup": (_OPT_STR, False),
        "requeue": ((bool,), False), "warn_signal": (_OPT_INT, False),
        "warn_seconds": (_OPT_INT, False), "umask": (_OPT_INT, False),
        "interactive": ((bool,), False), "stdin": (_OPT_STR, False), "nodelist": ((list, type(None)), False),
        "exclude": ((list, type(None)), False), "nnodes": (_INT, False),
        "node_gpu_ids": ((list, type(None)), False), "distributed": ((bool,), False), "mpi": ((bool,), False),
        "dependency": ((list, type(None)), False), "array": ((list, type(None)), False),
        "array_throttle": (_OPT_INT, False),
    },
    "queue": {"all": ((bool,), False), "user": (_OPT_STR, False), "state": (_OPT_STR, False),
              "ids": ((list, type(None)), False), "mine": ((bool,), False), "brief": ((bool,), False)},
    "history": {"user": (_OPT_STR, False), "mine": ((bool,), False), "state": (_OPT_STR, False),
                "ids": ((list, type(None)), False), "since": (_OPT_INT, False), "limit": (_OPT_INT, False)},
    "show": {"job_id": (_INT, True), "array_task_id": (_OPT_INT, False)},
    "cancel": {"ids": ((list,), False), "user": (_OPT_STR, False), "tasks": ((list,), False)},
    "attach": {"job_id": (_INT, True), "label": ((bool,), False), "input": ((bool,), False),
               "follow": ((bool,), False), "stream": (_OPT_STR, False)},
    "drain": {"node": (_STR, True), "reason": (_OPT_STR, False)},
    "resume": {"node": (_STR, True)},
    "ping": {},
}

# Integer fields: name -> (lowest, highest), both inclusive.
INT_RANGES = {
    "gpus": (0, MAX_GPUS),
    "mem_mb": (1, MAX_MEM_MB),
    "time_limit": (1, MAX_SECONDS),
    "warn_seconds": (1, MAX_SECONDS),
    "priority": (-MAX_PRIORITY, MAX_PRIORITY),
    "umask": (0, MAX_UMASK),
    "job_id": (1, MAX_JOB_ID),
    "nnodes": (1, MAX_JOB_HOSTS),
    "since": (0, MAX_TIME),
    "limit": (1, MAX_HISTORY_LIMIT),
    "array_throttle": (1, MAX_ARRAY_TASKS),
    "array_task_id": (0, MAX_ARRAY_TASK_ID),
}

# String fields: name -> (most, unit): characters ("chars") or UTF-8 bytes ("bytes").
STR_LIMITS = {
    "name": (MAX_NAME, "chars"),
    "cwd": (MAX_PATH, "bytes"),
    "output": (MAX_PATH, "bytes"),
    "error": (MAX_PATH, "bytes"),
    "env_setup": (MAX_ENV_SETUP, "bytes"),
    "user": (MAX_FILTER, "chars"),
    "state": (MAX_FILTER, "chars"),
    "node": (MAX_NODE_NAME, "chars"),
    "reason": (MAX_DRAIN_REASON, "chars"),
    "stream": (16, "chars"),
}

ATTACH_STREAMS = ("stdout", "stderr")  # attach's `stream`: only that output file (mgpu logs --err)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(type_, text):
    raise MgpuError(errors.BAD_REQUEST, "%s: %s" % (type_, text))


def _invalid(type_, text):
    raise MgpuError(errors.INVALID_ARGUMENT, "%s: %s" % (type_, text))


CLIENT_VERSIONS = "the daemon speaks %d, the client %s (use the same mgpu version on both sides)"
NODE_VERSIONS = "this side speaks %d, the other %s (use the same mgpu version on every host)"


def _check_envelope(message, versions):
    """MgpuError unless `message` is a JSON object of this protocol version; `versions` names
    both sides in the mismatch's line."""
    if not isinstance(message, dict):
        raise MgpuError(errors.BAD_REQUEST, "malformed frame: expected a JSON object")
    version = message.get("v")
    if not _is_int(version) or version != VERSION:
        raise MgpuError(errors.VERSION_MISMATCH, "protocol version mismatch: " + versions % (VERSION, _show(version)))


def check_request(message):
    """(type, fields) of a well-formed request; MgpuError otherwise."""
    _check_envelope(message, CLIENT_VERSIONS)
    type_ = message.get("type")
    if type_ is not None and not isinstance(type_, str):
        raise MgpuError(errors.BAD_REQUEST, "malformed request: its type must be a string, not %s"
                        % type(type_).__name__)
    spec = REQUESTS.get(type_)
    if spec is None:
        raise MgpuError(errors.UNKNOWN_TYPE, "unknown request type %s" % _show(type_))
    fields = {}
    for name, (types, required) in spec.items():
        if name not in message:
            if required:
                _bad(type_, "missing field %r" % name)
            continue
        value = message[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            _bad(type_, "field %r has the wrong type" % name)
        if isinstance(value, str):
            _check_text(type_, name, value)
        if _is_int(value) and name in INT_RANGES:
            low, high = INT_RANGES[name]
            if not low <= value <= high:
                _invalid(type_, "%s must be from %d to %d" % (name, low, high))
        fields[name] = value
    if type_ == "submit":
        _check_submit(fields)
    elif type_ == "cancel":
        _check_cancel(fields)
    elif type_ == "drain":
        _check_drain(fields)
    elif type_ == "attach" and fields.get("stream") not in (None,) + ATTACH_STREAMS:
        _invalid(type_, "stream must be one of %s" % ", ".join(ATTACH_STREAMS))
    if type_ in ("queue", "history") and fields.get("ids") is not None:
        _check_ids_named(type_, fields["ids"])
    return type_, fields


def _check_text(type_, name, value):
    if "\0" in value:
        _bad(type_, "%s contains a NUL byte" % name)
    if not _no_surrogate(value):
        _bad(type_, "%s is not valid Unicode" % name)
    limit = STR_LIMITS.get(name)
    if limit is not None:
        most, unit = limit
        size = len(value) if unit == "chars" else _utf8_size(value, most)
        if size > most:
            _invalid(type_, "%s is too long: at most %d %s" % (
                name, most, "characters" if unit == "chars" else "bytes"))


def _utf8_size(text, most):
    # A string of more than `most` characters has more than `most` bytes: no need to encode it.
    return len(text) if len(text) > most else len(text.encode("utf-8"))


def _check_cancel(fields):
    ids = fields.get("ids", ())
    if len(ids) > MAX_CANCEL_IDS:
        _invalid("cancel", "at most %d job ids at once" % MAX_CANCEL_IDS)
    if not all(_is_int(i) for i in ids):
        _bad("cancel", "ids must be job numbers")
    if not all(1 <= i <= MAX_JOB_ID for i in ids):
        _invalid("cancel", "job ids go from 1 to %d" % MAX_JOB_ID)
    tasks = fields.get("tasks", ())
    if len(tasks) > MAX_CANCEL_IDS:
        _invalid("cancel", "at most %d array tasks at once" % MAX_CANCEL_IDS)
    for pair in tasks:
        if not (isinstance(pair, list) and len(pair) == 2 and _is_int(pair[0]) and isinstance(pair[1], list)):
            _bad("cancel", "tasks must be [array job id, [[first, last, step], ...]] pairs")
        if not 1 <= pair[0] <= MAX_JOB_ID:
            _invalid("cancel", "job ids go from 1 to %d" % MAX_JOB_ID)
        why = check_array_runs(pair[1])
        if why is not None or not pair[1]:
            _invalid("cancel", why or "tasks: name at least one task id")


def _check_ids_named(type_, ids):
    if len(ids) > MAX_IDS_NAMED:
        _invalid(type_, "at most %d job ids at once" % MAX_IDS_NAMED)
    if not all(_is_int(i) for i in ids):
        _bad(type_, "ids must be job numbers")
    if not all(1 <= i <= MAX_JOB_ID for i in ids):
        _invalid(type_, "job ids go from 1 to %d" % MAX_JOB_ID)


def _check_drain(fields):
    reason = fields.get("reason")
    if reason is not None and any(ord(ch) < 32 or 0x7f <= ord(ch) < 0xa0 for ch in reason):
        _invalid("drain", "reason must be one line without control characters")


def _check_submit(fields):
    command = fields["command"]
    if not command or not all(isinstance(arg, str) for arg in command):
        _bad("submit", "command must be a non-empty list of strings")
    if len(command) > MAX_COMMAND_ARGS:
        _invalid("submit", "command has %d arguments: at most %d" % (len(command), MAX_COMMAND_ARGS))
    if any("\0" in arg for arg in command):
        _bad("submit", "command contains a NUL byte")
    if not all(_no_surrogate(arg) for arg in command):
        _bad("submit", "command is not valid Unicode")
    if sum(_utf8_size(arg, MAX_COMMAND_BYTES) + 1 for arg in command) > MAX_COMMAND_BYTES:
        _invalid("submit", "command is too long: at most %d bytes" % MAX_COMMAND_BYTES)
    env = fields["env"]
    if not all(isinstance(v, str) for v in env.values()):  # keys are strings in JSON
        _bad("submit", "env must map strings to strings")
    if len(env) > MAX_ENV_ENTRIES:
        _invalid("submit", "env has %d variables: at most %d" % (len(env), MAX_ENV_ENTRIES))
    if any("\0" in k or "\0" in v for k, v in env.items()):
        _bad("submit", "env contains a NUL byte")
    if not all(_no_surrogate(k) and _no_surrogate(v) for k, v in env.items()):
        _bad("submit", "env is not valid Unicode")
    for key in env:
        if not key or "=" in key or len(key) > MAX_ENV_KEY:
            _invalid("submit", "env: bad variable name %s (non-empty, no '=', at most %d "
                     "characters)" % (_show(key), MAX_ENV_KEY))
    ids = fields.get("gpu_ids")
    if ids is not None:
        if len(ids) > MAX_GPUS:
            _invalid("submit", "at most %d gpu_ids" % MAX_GPUS)
        if not all(_is_int(i) and i >= 0 for i in ids):
            _bad("submit", "gpu_ids must be GPU indices")
        if not all(i <= MAX_GPU_INDEX for i in ids):
            _invalid("submit", "gpu_ids go from 0 to %d" % MAX_GPU_INDEX)
        # Distinct ids: the controller checks (and says so) along with the rest of the request.
    stdin = fields.get("stdin")
    if stdin is not None and stdin not in STDIN_MODES:
        _invalid("submit", "stdin must be one of %s, not %s" % (", ".join(STDIN_MODES), _show(stdin)))
    signum = fields.get("warn_signal")
    if signum is not None and not is_signal(signum):
        _invalid("submit", "warn_signal %s is not a signal" % _show(signum))
    pairs = fields.get("node_gpu_ids")
    if pairs is not None:
        if len(pairs) > MAX_JOB_HOSTS:
            _invalid("submit", "node_gpu_ids names %d hosts: at most %d" % (len(pairs), MAX_JOB_HOSTS))
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], list)):
                _bad("submit", "node_gpu_ids must be [host, [GPU ids]] pairs")
            host, ids = pair
            if not valid_node_name(host):
                _invalid("submit", "node_gpu_ids: %s is not a node name" % _show(host))
            if not ids or len(ids) > MAX_GPUS or not all(_is_int(i) and 0 <= i <= MAX_GPU_INDEX for i in ids):
                _invalid("submit", "node_gpu_ids: GPU ids on %s go from 0 to %d, at least one" % (host, MAX_GPU_INDEX))
    dependency = fields.get("dependency")
    if dependency is not None:
        if len(dependency) > MAX_DEPENDENCIES:
            _invalid("submit", "dependency names %d jobs: at most %d" % (len(dependency), MAX_DEPENDENCIES))
        for pair in dependency:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and _is_int(pair[1])):
                _bad("submit", "dependency must be [type, job id] pairs")
            if pair[0] not in DEPENDENCY_TYPES:
                _invalid("submit", "dependency type %s is not supported (types: %s)"
                         % (_show(pair[0]), ", ".join(DEPENDENCY_TYPES)))
            if not 1 <= pair[1] <= MAX_JOB_ID:
                _invalid("submit", "dependency: job ids go from 1 to %d" % MAX_JOB_ID)
    runs = fields.get("array")
    if runs is not None:
        why = check_array_runs(runs)
        if why is not None or not runs:
            _invalid("submit", why or "array: give at least one task id")
    elif fields.get("array_throttle") is not None:
        _invalid("submit", "array_throttle limits the tasks of an array: give array too")
    for name in ("nodelist", "exclude"):
        names = fields.get(name)
        if names is None:
            continue
        if len(names) > MAX_NODES_NAMED:
            _invalid("submit", "%s names %d nodes: at most %d" % (name, len(names), MAX_NODES_NAMED))
        for node in names:
            if not valid_node_name(node):
                _invalid("submit", "%s: %s is not a node name (letters, digits, '.', '_', '-'; at most "
                         "%d characters)" % (name, _show(node), MAX_NODE_NAME))


# ---------------------------------------------------------------------------------------------
# A job's input: after an attach that asked for input (`input: true`) was granted, the client
# may send `input` frames on the same connection while the stream's frames come back. Each
# carries some of: data (bytes of the client's stdin as latin-1 text), rows + cols (its
# terminal's window size, for a job with a pty), eof (the client's stdin has ended; nothing
# follows). The daemon reads them at the job's pace: a client that sends faster than the job
# reads waits (its socket fills), nothing piles up in between.

INPUT_FIELDS = {"data": (_STR, False), "eof": ((bool,), False), "rows": (_INT, False), "cols": (_INT, False)}


def input_frame(data=None, eof=False, rows=None, cols=None):
    """An input frame (bytes `data`, `eof`, the window size): what the client sends."""
    fields = {}
    if data:
        fields["data"] = data.decode("latin-1")
    if rows is not None and cols is not None:
        fields["rows"], fields["cols"] = rows, cols
    if eof:
        fields["eof"] = True
    return request("input", **fields)


def check_input(message):
    """{data: bytes or None, eof: bool, rows, cols (None when not sent)} of a well-formed input
    frame; MgpuError otherwise (one line; the daemon then stops reading input from that client)."""
    _check_envelope(message, CLIENT_VERSIONS)
    if message.get("type") != "input":
        _bad("input", "expected an input frame after the attach, not %s" % _show(message.get("type")))
    fields = {}
    for name, (types, _) in INPUT_FIELDS.items():
        if name in message:
            value = message[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                _bad("input", "field %r has the wrong type" % name)
            fields[name] = value
    data = fields.get("data")
    if data is not None:
        data = _latin1(data, "input")
    rows, cols = fields.get("rows"), fields.get("cols")
    _check_window("input", rows, cols)
    if fields.get("eof") is False:
        _bad("input", "eof is true or absent")
    return {"data": data or None, "eof": bool(fields.get("eof")), "rows": rows, "cols": cols}


def _latin1(text, type_):
    """The bytes a latin-1 string carries; MgpuError when it is too long or holds a character
    above U+00FF."""
    if len(text) > MAX_INPUT_DATA:
        _invalid(type_, "data is too long: at most %d bytes per frame" % MAX_INPUT_DATA)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        _bad(type_, "data must be bytes as latin-1 text (characters U+0000..U+00FF)")


def _check_window(type_, rows, cols):
    if (rows is None) != (cols is None):
        _bad(type_, "rows and cols come together")
    for name, value in (("rows", rows), ("cols", cols)):
        if value is not None and not 1 <= value <= MAX_WINDOW:
            _invalid(type_, "%s must be from 1 to %d" % (name, MAX_WINDOW))


# ---------------------------------------------------------------------------------------------
# The node link: messages between the master and a node agent, over TLS (auth.py), after the
# node proved it holds the cluster key. Each message type is declared once here with its
# fields and their limits; `check_node_message` refuses anything else. Node names come from
# registration, never from a later message; job reports carry the attempt they are about, so a
# late or repeated report about an older attempt is recognised and ignored by the controller.
# `job_input` carries a client's input (srun -i / --pty) for one attempt of a job on that node:
# data, window size, eof (the client's stdin ended) or hangup (the client went away); the channel
# closes after either; input for an attempt the node does not
# run, or whose channel has closed, is dropped. The node answers `job_input_done` with the bytes
# it has handed to the job so far (the master keeps at most INPUT_WINDOW bytes unanswered, so a
# job that reads slowly slows its client down instead of growing either daemon's memory) and
# `closed` once the channel is gone (the job ended, or it closed its input).
# `relay` carries a local client's request with the identity the node read from SO_PEERCRED;
# the master checks the request like any other and trusts that identity only on this link.
# `output_read` asks a node for a piece of a job's output file (read there as the job's user,
# regular files of that user only), for `srun -i` of a job on that node; `output_data` answers
# it (bytes as latin-1 text).
# A relayed `attach` (srun -i of a client on a node's host) is answered with one `relay_reply`
# and, when granted, followed by `relay_frame`s for the same request_id: the stream frames a
# local client gets (status, output, alive), up to and including `end` (or an error reply when
# the master gives the stream up). The node sends `relay_cancel` when its client goes away,
# cannot keep up, or hears nothing of the stream for too long; the master ends that stream. At most MAX_RELAY_STREAMS are open per link
# (a further attach gets one error line); frames or cancels for a request id that has no open
# stream are ignored, and every stream of a link ends with the link.
# When the master granted a relayed attach input (its reply's result says `input: true`), the
# node passes its client's input frames on as `relay_input` (the limits of an input frame: data
# at most MAX_INPUT_DATA bytes, rows and cols 1 .. MAX_WINDOW, both or neither, eof true or
# absent), and the master treats them as a local client's input. The master answers each frame
# it has taken with `relay_input_done` (cumulative frames and bytes of that stream taken so far);
# the node keeps at most RELAY_INPUT_WINDOW bytes and MAX_RELAY_INPUT_FRAMES frames unanswered
# and reads no more from its client meanwhile. Input beyond that window ends the stream (one
# error line); input for a request id without an open stream, or for a stream not granted
# input, is ignored, as are answers for a request id the node does not follow.

MAX_NODE_FRAME = 4 << 20   # a launch carries a job's environment and command
# MAX_NODE_NAME (above, with the request limits): characters of a node name.
MAX_REASON = 1000
MAX_ATTEMPTS_REPORTED = 100_000
MAX_OUTPUT_READ = 256 * 1024  # bytes of a job's output in one output_read / output_data
MAX_RELAY_STREAMS = 256       # relayed attach streams open at once on one node link
INPUT_WINDOW = 256 * 1024     # bytes of job_input the master sends ahead of the node's job_input_done
RELAY_INPUT_WINDOW = 256 * 1024  # bytes of relay_input a node sends ahead of the master's relay_input_done
MAX_RELAY_INPUT_FRAMES = 128     # ... and relay_input frames
PHASES = ("intent", "launched", "started", "exited")

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def valid_node_name(name):
    return (isinstance(name, str) and 0 < len(name) <= MAX_NODE_NAME and name[0] != "-"
            and set(name) <= _NAME_CHARS)


# Field kinds: ("int", low, high), ("str", most characters), ("latin1", most bytes), ("bool",), ("list", most, kind),
# ("obj", {field: (kind, required)}), ("map", most, value kind) with string keys, ("any_job",)
# for a launch's job record (checked by the node as a Job). A trailing "?" on a kind's name
# accepts null.
_JOB_ID = ("int", 1, MAX_JOB_ID)
_ATTEMPT = ("int", 1, 1 << 31)
_GPU = ("obj", {"index": (("int", 0, MAX_GPU_INDEX), True), "uuid": (("str", 128), False),
                "name": (("str", 128), False), "memory_mb": (("int", 1, MAX_MEM_MB), True),
                "external_mb": (("int", 0, MAX_MEM_MB), False)})
_REPORTED = ("obj", {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True),
                     "phase": (("str", 16), True)})

NODE_MESSAGES = {
    # node -> master
    "node_register": {"name": (("str", MAX_NODE_NAME), True), "gpus": (("list", MAX_GPUS, _GPU), True),
                      "attempts": (("list", MAX_ATTEMPTS_REPORTED, _REPORTED), True),
                      "boot_id": (("str?", 64), False), "submit_only": (("bool",), False)},
    "node_heartbeat": {"usage": (("map", MAX_GPUS, ("int", 0, MAX_MEM_MB)), False)},
    "job_started": {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True),
                    "sup_pid": (("int?", 0, 1 << 31), False), "sup_start": (("int?", 0, 1 << 62), False),
                    "pgid": (("int?", 0, 1 << 31), False)},
    "job_exited": {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True),
                   "exit_code": (("int?", 0, 1 << 16), False), "signal": (("int?", 0, MAX_SIGNAL), False),
                   "error": (("str?", MAX_REASON), False)},
    "job_lost": {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True), "started": (("bool",), True),
                 "reason": (("str?", MAX_REASON), False)},
    "relay": {"request_id": (_JOB_ID, True),
              "peer": (("obj", {"user": (("str", 256), True), "uid": (("int", 0, (1 << 32) - 2), True),
                                "gid": (("int", 0, (1 << 32) - 2), True), "home": (("str", MAX_PATH), True)}), True),
              "request": (("obj", None), True)},
    "output_data": {"request_id": (_JOB_ID, True), "data": (("str", MAX_OUTPUT_READ), True),
                    "state": (("str", 16), True)},
    "relay_cancel": {"request_id": (_JOB_ID, True)},
    "relay_input": {"request_id": (_JOB_ID, True), "data": (("latin1", MAX_INPUT_DATA), False),
                    "eof": (("bool",), False), "rows": (("int", 1, MAX_WINDOW), False),
                    "cols": (("int", 1, MAX_WINDOW), False)},
    "job_port": {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True), "port": (("int", 1, 65535), True)},
    # master -> node
    "output_read": {"request_id": (_JOB_ID, True), "path": (("str", MAX_PATH), True),
                    "user": (("str", 256), True), "offset": (("int", 0, 1 << 62), True),
                    "max_bytes": (("int", 1, MAX_OUTPUT_READ), True)},
    "relay_reply": {"request_id": (_JOB_ID, True), "reply": (("obj", None), True)},
    "relay_frame": {"request_id": (_JOB_ID, True), "frame": (("obj", None), True)},
    "relay_input_done": {"request_id": (_JOB_ID, True), "frames": (("int", 0, 1 << 62), True),
                         "bytes": (("int", 0, 1 << 62), True)},
    "launch": {"job": (("obj", None), True), "env": (("map", MAX_ENV_ENTRIES, ("str", MAX_COMMAND_BYTES)), True),
               "choose_port": (("bool",), False)},
    "signal": {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True), "signum": (("int", 1, MAX_SIGNAL), True)},
    "release": {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True)},
    "kill": {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True)},
    "job_input": {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True),
                  "data": (("latin1", MAX_INPUT_DATA), False), "eof": (("bool",), False),
                  "rows": (("int", 1, MAX_WINDOW), False), "cols": (("int", 1, MAX_WINDOW), False),
                  "hangup": (("bool",), False)},
    "job_input_done": {"job_id": (_JOB_ID, True), "attempt": (_ATTEMPT, True), "written": (("int", 0, 1 << 62), True),
                       "closed": (("bool",), False)},
}
NODE_TO_MASTER = frozenset(("node_register", "node_heartbeat", "job_started", "job_exited", "job_lost",
                            "job_port", "relay", "relay_cancel", "relay_input", "output_data",
                            "job_input_done"))
MASTER_TO_NODE = frozenset(("launch", "signal", "release", "kill", "relay_reply", "relay_frame",
                            "relay_input_done", "output_read", "job_input"))
OUTPUT_STATES = ("ok", "missing", "refused")  # output_data: read, no such file yet, not readable


def node_message(type_, **fields):
    fields["v"] = VERSION
    fields["type"] = type_
    return fields


def check_node_message(message, allowed):
    """(type, fields) of a well-formed node-link message whose type is in `allowed`;
    MgpuError(BAD_REQUEST or VERSION_MISMATCH) otherwise. Unknown fields are dropped."""
    _check_envelope(message, NODE_VERSIONS)
    type_ = message.get("type")
    if not isinstance(type_, str) or type_ not in allowed:
        raise MgpuError(errors.BAD_REQUEST, "unexpected node-link message %s" % _show(type_))
    fields = _check_fields(type_, NODE_MESSAGES[type_], message)
    if type_ == "node_register":
        if not valid_node_name(fields["name"]):
            _bad(type_, "a node name is 1 to %d letters, digits, '.', '_' or '-'" % MAX_NODE_NAME)
        if any(r["phase"] not in PHASES for r in fields["attempts"]):
            _bad(type_, "unknown attempt phase")
        if fields.get("submit_only") and fields["gpus"]:
            _bad(type_, "a submit-only node registers no GPUs")
    elif type_ in ("job_input", "relay_input"):
        _check_window(type_, fields.get("rows"), fields.get("cols"))
        if type_ == "relay_input" and fields.get("eof") is False:
            _bad(type_, "eof is true or absent")
    return type_, fields


def _check_fields(type_, spec, message):
    fields = {}
    for name, (kind, required) in spec.items():
        if name not in message:
            if required:
                _bad(type_, "missing field %r" % name)
            continue
        fields[name] = _check_kind(type_, name, kind, message[name])
    return fields


def _check_kind(type_, name, kind, value):
    tag = kind[0]
    if tag.endswith("?"):
        if value is None:
            return None
        tag = tag[:-1]
    if tag == "int":
        if not _is_int(value) or not kind[1] <= value <= kind[2]:
            _bad(type_, "%s must be a whole number from %d to %d" % (name, kind[1], kind[2]))
    elif tag == "bool":
        if not isinstance(value, bool):
            _bad(type_, "%s must be true or false" % name)
    elif tag == "str":
        if not isinstance(value, str) or len(value) > kind[1] or not _plain(value):
            _bad(type_, "%s must be text of at most %d characters without NUL" % (name, kind[1]))
    elif tag == "latin1":  # bytes (NUL included) as latin-1 text: the bytes
        if not isinstance(value, str):
            _bad(type_, "%s must be bytes as latin-1 text" % name)
        value = _latin1(value, type_)
    elif tag == "list":
        if not isinstance(value, list) or len(value) > kind[1]:
            _bad(type_, "%s must be a list of at most %d items" % (name, kind[1]))
        value = [_check_kind(type_, name, kind[2], item) for item in value]
    elif tag == "map":
        if not isinstance(value, dict) or len(value) > kind[1]:
            _bad(type_, "%s must be a mapping of at most %d entries" % (name, kind[1]))
        if not all(isinstance(k, str) and _plain(k) and len(k) <= MAX_ENV_KEY for k in value):
            _bad(type_, "%s has a bad key" % name)
        value = {k: _check_kind(type_, name, kind[2], v) for k, v in value.items()}
    elif tag == "obj":
        if not isinstance(value, dict):
            _bad(type_, "%s must be an object" % name)
        if kind[1] is not None:
            value = _check_fields(type_, kind[1], value)
    return value
