"""What `mgpu queue` shows other users: every text a user chose is one line of visible,
harmless characters; --json stays exact."""

import json

import pytest

from mgpu.cli import render

HOSTILE = "\x1b[2J\x1b]0;pwn\x07evil\nline"


def job(**fields):
    base = {"id": 7, "user": "alice", "state": "PENDING", "priority": 0, "gpus": 1, "gpu_ids": [],
            "mem_mb": None, "start_time": None, "end_time": None, "time_limit": None, "exit_code": None,
            "name": None, "command": ["python", "train.py"], "reason": "waiting for GPUs", "node": None}
    base.update(fields)
    return base


def raw_controls(text):
    return [ch for ch in text if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F]


@pytest.mark.parametrize("raw,shown", [
    ("plain name", "plain name"),
    ("\x1b[2J", "\\x1b[2J"),
    ("\x1b]0;pwn\x07", "\\x1b]0;pwn\\x07"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("\x00\x7f", "\\x00\\x7f"),
    ("\x85\x9b", "\\u0085\\u009b"),                  # C1 controls (NEL, CSI)
    ("\u2028\u202e\u200b", "\\u2028\\u202e\\u200b"),  # line separator, bidi override, zero width
    ("\ud800", "\\ud800"),                            # a lone surrogate would not even encode
    ("été 日本 🚀", "été 日本 🚀"),
])
def test_text_escapes_controls_and_keeps_printable_text(raw, shown):
    assert render.text(raw) == shown


def test_a_hostile_name_and_command_are_escaped_in_the_jobs_table():
    jobs = [job(name=HOSTILE), job(id=8, command=["echo", "\x1b[31mred\x9b"], reason="\x1b[1Areason\n"),
            job(id=9, state="RUNNING", node="gpu\x1b1", gpu_ids=[0], start_time=0)]
    table = render.jobs_table(jobs, 100, False)
    assert not raw_controls(table)
    lines = table.split("\n")
    assert len(lines) == 4  # header + one line per job: no newline inside a cell
    assert "\\x1b[2J\\x1b]0;pwn\\x07evil\\nline" in lines[1]
    assert "echo \\x1b[31mred\\u009b" in lines[2] and "(\\x1b[1Areason\\n)" in lines[2]
    assert "gpu\\x1b1:0" in lines[3]


def test_a_long_escaped_name_is_cut_without_raw_controls():
    table = render.jobs_table([job(name="\x1b" * 100)], 100, False)
    assert not raw_controls(table) and "\\x1b\\x1b" in table and "..." in table


def test_user_node_and_gpu_names_are_escaped_in_the_gpus_table():
    nodes = [{"name": "n\x1b]0;x\x07", "state": "idle", "gpus": [
        {"index": 0, "name": "GPU\n\x1b[2J", "reserved_mb": 0, "memory_mb": 100, "external_mb": 0, "jobs": []}]},
        {"name": "down\x85", "state": "down", "gpus": []}]
    table = render.gpus_table(nodes)
    assert not raw_controls(table)
    assert "n\\x1b]0;x\\x07" in table and "GPU\\n\\x1b[2J" in table and "down\\u0085" in table
    assert len(table.split("\n")) == 3
    assert "\\x1b" in render.jobs_table([job(user="bad\x1buser")], 0, False)


def test_json_is_exact_and_has_no_raw_controls():
    jobs = [job(name=HOSTILE + "\x85\ud800", command=["echo", "\x1b"])]
    out = render.as_json({"jobs": jobs, "nodes": []})
    assert not raw_controls(out) and "\x1b" not in out
    assert json.loads(out)["jobs"][0]["name"] == HOSTILE + "\x85\ud800"
    assert json.loads(out)["jobs"][0]["command"] == ["echo", "\x1b"]


def test_the_node_table_shows_state_address_use_and_last_heartbeat():
    nodes = [{"name": "gpu1", "state": "mixed", "address": "10.0.0.2", "last_heartbeat": 95.0, "gpus": [
        {"index": 0, "jobs": [3]}, {"index": 1, "jobs": []}]},
        {"name": "head", "state": "idle", "address": None, "last_heartbeat": None, "gpus": []},
        {"name": "n\x1b[2J", "state": "down", "address": "10.0.0.3\n", "last_heartbeat": 40.0, "gpus": []}]
    lines = render.nodes_table(nodes, 100.0).split("\n")
    assert lines[0].split() == ["NODE", "STATE", "ADDRESS", "GPUS", "(USED/TOTAL)", "LAST", "HEARTBEAT"]
    assert lines[1].split() == ["gpu1", "mixed", "10.0.0.2", "1/2", "0:05", "ago"]
    assert lines[2].split() == ["head", "idle", "(master)", "0/0", "-"]
    assert lines[3].split() == ["n\\x1b[2J", "down", "10.0.0.3\\n", "0/0", "1:00", "ago"]


def test_the_gpus_table_names_a_node_out_of_service():
    gpu = {"index": 0, "name": "G", "reserved_mb": 0, "memory_mb": 100, "external_mb": 0, "jobs": []}
    table = render.gpus_table([{"name": "a", "state": "drained", "gpus": [gpu]},
                               {"name": "b", "state": "mixed", "gpus": [gpu]}])
    assert table.split("\n")[1].split()[:2] == ["a", "(drained)"] and table.split("\n")[2].split()[0] == "b"


def test_the_exit_column_shows_when_asked_or_when_a_listed_job_has_ended():
    from mgpu import cells

    pending = cells.queue_line(job(), 100)
    ended = cells.queue_line(job(id=8, state="FAILED", exit_code=3, start_time=50, end_time=60), 100)
    assert render.cells_table([pending], 100).split("\n")[0].split() == [
        "JOBID", "USER", "STATE", "PRI", "GPUS", "START", "TIME", "LIMIT", "RESTARTS", "NAME", "NODE:GPUS", "(REASON)"]
    assert "EXIT" in render.cells_table([pending], 100, show_exit=True).split("\n")[0]
    shown = render.cells_table([pending, ended], 100).split("\n")
    assert "EXIT" in shown[0] and shown[2].split()[:3] == ["8", "alice", "FAILED"] and " 3 " in shown[2]
    with pytest.raises(ValueError):
        render.cells_table([pending + cells.SEPARATOR + "extra"], 100)
