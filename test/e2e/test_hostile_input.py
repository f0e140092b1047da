"""The submits that used to crash or freeze the master, sent as an ordinary user through the CLI
and as raw frames: each is refused with one line, nothing is stored, and the master keeps
serving every user, also after a restart."""

import json
import os

import pytest

from harness import send_as

ALICE, BOB = "mgpu-alice", "mgpu-bob"
HUGE = "9" * 400


@pytest.mark.parametrize("args, message", [
    (("--time-limit", HUGE), "mgpu: time %s... is too long: at most 31536000 seconds (365 days)" % HUGE[:40]),
    (("--time-limit", "1:00:00", "--signal", "USR1@" + HUGE), None),
    (("--priority", "1" + "0" * 20), None),
    (("--gpus", "99999"), None),
    (("--mem", HUGE), None),
])
def test_out_of_range_options_are_refused_with_one_line(cluster, args, message):
    result = cluster.run(ALICE, "srun", *args, "--", "true")
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgpu: ") and "Traceback" not in result.stderr
    if message:
        assert lines[0] == message
    assert cluster.queue(ALICE)["jobs"] == []


SUBMIT = {"v": 1, "type": "submit", "command": ["true"], "cwd": "/tmp", "env": {"PATH": "/usr/bin:/bin"},
          "gpus": 0}

def _frame(**fields):
    return json.dumps(dict(SUBMIT, **fields)) + "\n"


def test_raw_frames_that_used_to_break_the_master_are_refused(cluster):
    frames = [
        _frame(time_limit=int(HUGE)),
        _frame(time_limit=3600, warn_signal=10, warn_seconds=int(HUGE)),
        _frame(time_limit=3600, warn_signal=999),
        _frame(time_limit=3600, warn_signal=-1),
        _frame(command=["true", "\ud800"]),
        _frame(name="\udfff"),
        _frame(env={"A\ud800": "x"}),
        _frame(env={"A": "\ud800"}),
        _frame(name="n" * 200000, output="/tmp/" + "%x" * 1400),
        json.dumps({"v": 1, "type": ["submit"]}) + "\n",
        json.dumps({"v": 1, "type": {"a": 1}}) + "\n",
    ]
    replies = send_as(cluster, ALICE, frames)
    for frame, reply in zip(frames, replies):
        assert reply is not None and reply["ok"] is False, (frame[:120], reply)
        assert reply["error"] in ("bad_request", "invalid_argument"), (frame[:120], reply)
        assert "\n" not in reply["message"] and len(reply["message"]) < 300
    # Nothing was stored; every user's queue works, also after a restart.
    assert cluster.queue(BOB)["jobs"] == []
    for _ in range(2):
        table = cluster.run(BOB, "queue", "--all")
        assert table.returncode == 0, table.stderr
        ok = cluster.run(BOB, "srun", "-i", "-q", "--gpus", "0", "--", "echo", "still-serving")
        assert (ok.returncode, ok.stdout) == (0, "still-serving\n"), ok.stderr
        cluster.master.kill()
        cluster.master.start()
    assert [j["command"] for j in cluster.queue(BOB)["jobs"]] == [["echo", "still-serving"]] * 2
    assert os.path.getsize(os.path.join(cluster.master.state_dir, "mgpu.db")) < 10 * 1024 * 1024
