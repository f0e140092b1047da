"""The wire protocol: message types and their fields, framing, size limit, version.

Framing: one JSON object per line (UTF-8, `\\n`-terminated; JSON never contains a raw newline).
Every request carries `v` (the protocol version) and `type`; every reply carries `ok` and either
`result` or `error` (a stable code from errors.py) with a human `message`. A stream (attach) is a
sequence of frames, each with a `type`, ending with an `end` frame.

Owns: encoding, decoding and field validation of every message. Must not: touch sockets.
"""

import json

from . import errors
from .errors import MgpuError

VERSION = 1
MAX_FRAME = 1 << 20   # bytes, newline included: the most a daemon reads in one frame
MAX_REPLY = 1 << 28   # the most a client reads in one frame (a queue of many jobs is large)

_decoder = json.JSONDecoder()
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(message):
    """One frame: the message as a JSON line."""
    data = (_encoder.encode(message) + "\n").encode("utf-8", "surrogateescape")
    if len(data) > MAX_REPLY:
        raise MgpuError(errors.TOO_LARGE, "message of %d bytes is over the %d-byte limit"
                        % (len(data), MAX_REPLY))
    return data


def decode(line):
    """The JSON object in one frame; MgpuError(BAD_REQUEST) for anything else."""
    try:
        message = _decoder.decode(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MgpuError(errors.BAD_REQUEST, "malformed frame: %s" % type(e).__name__
                        if isinstance(e, RecursionError) else "malformed frame: %s" % e) from None
    if not isinstance(message, dict):
        raise MgpuError(errors.BAD_REQUEST, "malformed frame: expected a JSON object")
    return message


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
        "interactive": ((bool,), False),
    },
    "queue": {"all": ((bool,), False), "user": (_OPT_STR, False), "state": (_OPT_STR, False)},
    "cancel": {"ids": ((list,), False), "user": (_OPT_STR, False)},
    "attach": {"job_id": (_INT, True)},
    "ping": {},
}


def check_request(message):
    """(type, fields) of a well-formed request; MgpuError otherwise."""
    version = message.get("v")
    if version != VERSION:
        raise MgpuError(errors.VERSION_MISMATCH,
                        "protocol version mismatch: the daemon speaks %d, the client %s "
                        "(use the same mgpu version on both sides)" % (VERSION, version))
    type_ = message.get("type")
    spec = REQUESTS.get(type_)
    if spec is None:
        raise MgpuError(errors.UNKNOWN_TYPE, "unknown request type %r" % (type_,))
    fields = {}
    for name, (types, required) in spec.items():
        if name not in message:
            if required:
                raise MgpuError(errors.BAD_REQUEST, "%s: missing field %r" % (type_, name))
            continue
        value = message[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise MgpuError(errors.BAD_REQUEST, "%s: field %r has the wrong type" % (type_, name))
        fields[name] = value
    if type_ == "submit":
        _check_submit(fields)
    elif type_ == "cancel":
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in fields.get("ids", ())):
            raise MgpuError(errors.BAD_REQUEST, "cancel: ids must be job numbers")
    return type_, fields


def _check_submit(fields):
    command = fields["command"]
    if not command or not all(isinstance(arg, str) for arg in command):
        raise MgpuError(errors.BAD_REQUEST, "submit: command must be a non-empty list of strings")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in fields["env"].items()):
        raise MgpuError(errors.BAD_REQUEST, "submit: env must map strings to strings")
    if any("\0" in k or "\0" in v for k, v in fields["env"].items()):
        raise MgpuError(errors.BAD_REQUEST, "submit: env contains a NUL byte")
    ids = fields.get("gpu_ids")
    if ids is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise MgpuError(errors.BAD_REQUEST, "submit: gpu_ids must be GPU indices")
    for name in ("gpus", "mem_mb", "time_limit", "warn_seconds"):
        value = fields.get(name)
        if value is not None and value < (0 if name == "gpus" else 1):
            raise MgpuError(errors.INVALID_ARGUMENT, "submit: %s must be %s" % (
                name, "0 or more" if name == "gpus" else "above 0"))
    for name in ("command", "cwd", "output", "error", "env_setup", "name"):
        value = fields.get(name)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "\0" in v for v in values):
            raise MgpuError(errors.BAD_REQUEST, "submit: %s contains a NUL byte" % name)
