"""The request edge under fuzz: thousands of generated frames from an ordinary user (every field
of every request type with every JSON type, numbers too large or negative, 1e400, NaN and
Infinity, lone surrogates, NUL, deep nesting, oversize and truncated frames, a type that is not a
string, no version, binary garbage). Every frame gets an error reply or a well-formed answer,
and after every batch other users' `queue` and `srun` still work; the master never logs an
internal error."""

import json
import os
import subprocess
import sys
import time

from harness import USER_PYTHON, popen_as

SEED = 20240607
BATCHES = 10
BATCH = 1000
SENDERS = 32

# Runs as mgpu-alice with the system Python: SO_PEERCRED says alice. Prints its counts as JSON.
SENDER = r'''
import json, random, socket, sys, threading

socket_path, seed, first, count, workdir, senders = sys.argv[1:7]
seed, first, count, senders = int(seed), int(first), int(count), int(senders)
MAX_FRAME = 1 << 20


class Raw:
    """JSON text written as is: tokens json.dumps would not write (NaN, 1e400, 400 digits)."""
    def __init__(self, text):
        self.text = text


def to_json(value):
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + to_json(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: lone surrogates and NUL go out as \u escapes


def text(rng):
    pick = rng.randrange(14)
    if pick == 0:
        return ""
    if pick == 1:
        return "\ud800" if rng.random() < 0.5 else "ok\udfff" + "x" * rng.randrange(5)
    if pick == 2:
        return "a\u0000b"
    if pick == 3:
        return "x" * rng.choice((255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097, 70000, 300000))
    if pick == 4:
        return "%x" * rng.randrange(1, 3000)
    if pick == 5:
        return "".join(chr(rng.randrange(0, 0x250)) for _ in range(rng.randrange(1, 40)))
    if pick == 6:
        return "\x1b[2J\x1b]0;pwned\x07\n\r\u0085\u202e"
    if pick == 7:
        return "\U0001F600" * rng.randrange(1, 3000)
    if pick == 8:
        return rng.choice(("PENDING", "RUNNING,COMPLETED", "mgpu-alice", "mgpu-bob", "root", "1", "0"))
    if pick == 9:
        return "=" + "K" * rng.randrange(3)
    return "".join(rng.choice("abcXYZ09_-./%ju ") for _ in range(rng.randrange(1, 30)))


def short(rng):
    """A short string, for fields repeated thousands of times (a frame stays near the limit)."""
    roll = rng.random()
    if roll < 0.01:
        return "\ud800"
    if roll < 0.02:
        return "\u0000"
    return "".join(rng.choice("abcXYZ09_-.%=") for _ in range(rng.randrange(0, 8)))


def number(rng):
    return rng.choice((
        0, 1, -1, 2, 3, 7, 9, 10, 15, 19, 32, 33, 34, 35, 63, 64, 65, 100, 101, 255, 511, 0o777, 0o1000,
        4095, 4096, 4097, 16000, 16 * 1024 * 1024, 16 * 1024 * 1024 + 1, 31536000, 31536001,
        10 ** 6, 10 ** 6 + 1, -10 ** 6 - 1, 2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, -2 ** 63, 2 ** 64,
        10 ** 20, -10 ** 20, rng.randrange(-1000, 1000), rng.randrange(1 << 62),
        Raw("9" * 400), Raw("-" + "9" * 400), Raw("9" * 5000), Raw("1" + "0" * 4299),
    ))


def any_value(rng, depth=0):
    pick = rng.randrange(13 if depth < 3 else 9)
    if pick <= 2:
        return number(rng)
    if pick == 3:
        return rng.choice((1.0, 0.5, -0.0, 1e308, 60.0, Raw("1e400"), Raw("-1e400"), Raw("1E999")))
    if pick == 4:
        return Raw(rng.choice(("NaN", "Infinity", "-Infinity")))
    if pick == 5:
        return rng.choice((True, False, None))
    if pick in (6, 7, 8):
        return text(rng)
    if pick == 9:
        return [any_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if pick == 10:
        return {text(rng): any_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}
    if pick == 11:
        n = rng.choice((10, 100, 900, 1000, 5000, 100000))
        return Raw("[" * n + "]" * n)
    n = rng.choice((1, 2, 5, 5000))
    return [text(rng) if n < 10 else short(rng) for _ in range(n)]


def base(rng, type_):
    if type_ == "submit":
        fields = {"command": ["true"], "cwd": workdir, "env": {"PATH": "/usr/bin:/bin"}, "gpus": 1,
                  "output": workdir + "/fuzz-%j.out"}
        if rng.random() < 0.3:
            fields.update(name="fuzz", time_limit=60, priority=rng.randrange(0, 101),
                          warn_signal=10, warn_seconds=5, umask=0o22, requeue=False)
        return fields
    if type_ == "queue":
        return {"all": rng.random() < 0.5}
    if type_ == "cancel":
        return {"ids": [rng.randrange(1, 50)]}
    if type_ == "attach":
        return {"job_id": rng.randrange(100000, 200000)}  # no such job: no stream to wait for
    return {}


FIELDS = {
    "submit": ["command", "cwd", "env", "gpus", "gpu_ids", "mem_mb", "time_limit", "priority", "name",
               "output", "error", "env_setup", "requeue", "warn_signal", "warn_seconds", "umask",
               "interactive"],
    "queue": ["all", "user", "state"], "cancel": ["ids", "user"], "attach": ["job_id"], "ping": [],
}


def field_value(rng, type_, name):
    """A fuzzed value for one field, kept harmless when it is valid: commands start with `true`,
    env_setup is a comment, paths stay in the work directory, attach never names a real job."""
    if name == "command" and rng.random() < 0.6:
        n = rng.choice((1, 2, 4096, 4097))
        return ["true"] + [text(rng) if n < 10 else short(rng) for _ in range(n)]
    if name == "env_setup" and rng.random() < 0.5:
        return "# " + text(rng).replace("\n", " ")
    if name in ("output", "error", "cwd") and rng.random() < 0.5:
        return workdir + "/" + text(rng).replace("/", "_")
    if name == "env" and rng.random() < 0.5:
        n = rng.choice((1, 3, 4096, 4097))
        return {(text(rng) if n < 10 else short(rng) + str(i)): (text(rng) if n < 10 else short(rng))
                for i in range(n)}
    if name in ("gpu_ids", "ids") and rng.random() < 0.5:
        return [number(rng) for _ in range(rng.choice((1, 2, 3, 4097, 10001)))]
    value = any_value(rng)
    if name == "job_id" and isinstance(value, int) and 0 < value < 100000:
        value = 100000 + value  # a job of alice's would start a stream, not a reply
    if name == "command" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ["true"] + value
    if name == "env_setup" and isinstance(value, str):
        value = "# " + value.replace("\n", " ")
    if name in ("cwd", "output", "error") and isinstance(value, str) and not value.startswith(("\ud800", "ok\udfff")):
        value = workdir + "/" + value.replace("/", "_")
    return value


def request_frame(rng):
    type_ = rng.choice(("submit",) * 6 + ("queue", "cancel", "attach", "ping"))
    message = {"v": 1, "type": type_}
    message.update(base(rng, type_))
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        roll = rng.random()
        if roll < 0.08 and len(message) > 2:
            del message[rng.choice([k for k in message if k not in ("v", "type")])]
        elif roll < 0.15:
            message[text(rng)] = any_value(rng)
        elif FIELDS[type_]:
            name = rng.choice(FIELDS[type_])
            message[name] = field_value(rng, type_, name)
    return to_json(message).encode("utf-8", "surrogatepass") + b"\n"


def frame(index):
    rng = random.Random(seed * 1000003 + index)
    kind = rng.randrange(100)
    if kind < 60:
        return "field", request_frame(rng)
    if kind < 66:
        return "type", to_json({"v": 1, "type": any_value(rng)}).encode() + b"\n"
    if kind < 70:
        message = {"type": rng.choice(("ping", "submit", "queue"))}
        if rng.random() < 0.7:
            message["v"] = any_value(rng)
        return "version", to_json(message).encode() + b"\n"
    if kind < 74:
        return "toplevel", to_json(any_value(rng)).encode() + b"\n"
    if kind < 80:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        return "garbage", data + b"\n"
    if kind < 86:
        whole = request_frame(rng)
        return "truncated", whole[:rng.randrange(1, max(2, len(whole) - 1))]  # no bytes is no frame
    if kind < 90:
        whole = request_frame(rng)
        at = whole.find(b'"', 1)
        return "utf8", whole[:at + 1] + rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf")) + whole[at + 1:]
    if kind < 93:
        inner = rng.choice((b"[" * 200000, b'{"a":' * 100000, b"[" * 500 + b"]" * 500))
        return "deep", b'{"v":1,"type":"ping","x":' + inner + b"}\n"
    if kind < 95:
        return "empty", rng.choice((b"\n", b"   \n", b"\r\n", b"\x00\n", b"{}\n", b'{"v":1}\n'))
    if kind < 97:
        return "multi", b'{"v":1,"type":"ping"}{"v":1,"type":"ping"}\n'
    if kind < 98 and rng.random() < 0.5:
        return "oversize", b'{"v":1,"type":"ping","x":"' + b"a" * (MAX_FRAME + rng.randrange(100)) + b'"}\n'
    return "tokens", rng.choice((b'{"v":1,"type":"ping","x":NaN}\n', b'{"v":Infinity,"type":"ping"}\n',
                                 b'{"v":1,"type":"submit","command":["true"],"cwd":"/","env":{},"time_limit":1e400}\n',
                                 b'{"v":1,"type":"attach","job_id":-Infinity}\n'))


counts = {"sent": 0, "ok": 0, "error": 0, "no_reply": 0, "busy_retries": 0, "codes": {}, "kinds": {},
          "no_reply_kinds": {}, "bad_replies": []}
lock = threading.Lock()


def send(index):
    kind, data = frame(index)
    for attempt in range(50):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        reply = b""
        try:
            sock.connect(socket_path)
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the master stopped reading (an oversize frame): its reply is waiting
            while not reply.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
        finally:
            sock.close()
        line = reply.split(b"\n", 1)[0]
        try:
            message = json.loads(line) if line else None
        except ValueError:
            message = "unparsable: %r" % line[:200]
        if isinstance(message, dict) and message.get("error") == "unavailable":
            with lock:
                counts["busy_retries"] += 1
            import time
            time.sleep(0.05)
            continue
        break
    with lock:
        counts["sent"] += 1
        counts["kinds"][kind] = counts["kinds"].get(kind, 0) + 1
        if message is None:
            counts["no_reply"] += 1
            counts["no_reply_kinds"][kind] = counts["no_reply_kinds"].get(kind, 0) + 1
        elif not isinstance(message, dict) or not isinstance(message.get("ok"), bool):
            counts["bad_replies"].append((index, kind, str(message)[:200]))
        elif message["ok"]:
            counts["ok"] += 1
        else:
            counts["error"] += 1
            code = str(message.get("error"))
            counts["codes"][code] = counts["codes"].get(code, 0) + 1
            text_ = message.get("message")
            if not isinstance(text_, str) or "\n" in text_ or len(text_) > 1000:
                counts["bad_replies"].append((index, kind, str(message)[:200]))


def worker(offset):
    for index in range(first + offset, first + count, senders):
        send(index)


threads = [threading.Thread(target=worker, args=(i,)) for i in range(senders)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(counts))
'''


def test_fuzzed_frames_from_a_user_never_break_the_master(cluster):
    master = cluster.master
    workdir = os.path.join(master.workdir, "fuzz")
    os.mkdir(workdir)
    os.chmod(workdir, 0o777)
    script = os.path.join(master.workdir, "fuzz_sender.py")
    with open(script, "w") as handle:
        handle.write(SENDER)
    os.chmod(script, 0o644)
    # Both GPUs stay busy, so the submits the fuzz gets accepted wait in the queue (those with
    # --gpus 0 run `true`).
    holder = cluster.submit("mgpu-alice", "--gpus", "2", "--", "sleep", "600")
    cluster.wait_state(holder, "RUNNING")

    totals = {"sent": 0, "ok": 0, "error": 0, "no_reply": 0, "busy_retries": 0}
    codes, kinds, no_reply_kinds, bad, timings = {}, {}, {}, [], []
    started = time.monotonic()
    env = cluster.installation.env(master.socket, "mgpu-alice")
    for batch in range(BATCHES):
        batch_start = time.monotonic()
        process = popen_as("mgpu-alice", [USER_PYTHON, script, master.socket, str(SEED), str(batch * BATCH),
                                          str(BATCH), workdir, str(SENDERS)],
                           env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate(timeout=120)
        sent_at = time.monotonic()
        assert process.returncode == 0, err.decode(errors="replace")[-3000:]
        counts = json.loads(out)
        for key in totals:
            totals[key] += counts[key]
        for into, part in ((codes, counts["codes"]), (kinds, counts["kinds"]),
                           (no_reply_kinds, counts["no_reply_kinds"])):
            for key, value in part.items():
                into[key] = into.get(key, 0) + value
        bad.extend(counts["bad_replies"])

        assert master.process.poll() is None, "the master died in batch %d:\n%s" % (batch, master.log[-3000:])
        listing = cluster.run("mgpu-bob", "queue", "--all", "--json")
        assert listing.returncode == 0, "queue failed after batch %d: %s" % (batch, listing.stderr)
        json.loads(listing.stdout)
        job = cluster.run("mgpu-bob", "srun", "-i", "-q", "--gpus", "0", "--", "echo", "ok")
        assert (job.returncode, job.stdout) == (0, "ok\n"), "batch %d: %r" % (batch, job)
        timings.append((round(sent_at - batch_start, 1), round(time.monotonic() - sent_at, 1)))
    elapsed = time.monotonic() - started

    summary = ("%d frames in %.1f s: %d ok replies, %d error replies, %d without a reply, %d busy "
               "retries; error codes %s; kinds %s; seconds per batch (frames, checks) %s" % (
                   totals["sent"], elapsed, totals["ok"], totals["error"], totals["no_reply"],
                   totals["busy_retries"], json.dumps(codes, sort_keys=True), json.dumps(kinds, sort_keys=True), timings))
    sys.stdout.write("\n" + summary + "\n")
    assert totals["sent"] == BATCHES * BATCH, summary
    assert not bad, "malformed replies: %s\n%s" % (bad[:10], summary)
    assert totals["no_reply"] == 0, "frames without a reply by kind: %s\n%s" % (no_reply_kinds, summary)
    assert totals["ok"] + totals["error"] == totals["sent"], summary
    assert totals["error"] > totals["sent"] // 2 and totals["ok"] > 0, summary
    assert master.process.poll() is None, master.log[-3000:]
    log = master.log
    assert "internal error" not in log and "Traceback" not in log, log[-5000:]
    cancel = cluster.run("mgpu-alice", "cancel", "--user", "mgpu-alice")
    assert cancel.returncode == 0, cancel.stderr
