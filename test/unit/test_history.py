"""`mgpu history`, `mgpu show` and the new `mgpu queue` filters: the store's read-only queries
(filters, order, limits, a deadline), the requests' validation against hostile input, what the
controller answers (and to whom), the command line's parsing of times and ids, and the tables."""

import datetime
import json
import sqlite3
import time

import pytest

from mgpu import errors, protocol
from mgpu.cli import history as history_cli
from mgpu.cli import render
from mgpu.cli.common import parse_job_ids
from mgpu.controller import Controller, ReadHistory, Reply, Settings
from mgpu.errors import MgpuError
from mgpu.model import MAX_JOB_ID, Job, JobState
from mgpu.store import HistoryReader, QueryTooSlow, Store

ALICE = {"uid": 1000, "gid": 1000, "user": "alice", "home": "/home/alice"}
BOB = {"uid": 1001, "gid": 1001, "user": "bob", "home": "/home/bob"}
ROOT = {"uid": 0, "gid": 0, "user": "root", "home": "/root"}
T0 = 1000.0


def job(job_id, state=JobState.COMPLETED, user="alice", end=None, **fields):
    final = state in JobState.FINAL
    fields.setdefault("exit_code", 0 if final else None)
    return Job(id=job_id, state=state, user=user, uid=1000 if user == "alice" else 1001, gid=1000,
               command=["python", "t.py"], cwd="/home/%s" % user, gpus=1, priority=0, queue_seq=job_id,
               submit_time=100.0 + job_id, start_time=200.0 + job_id if state != JobState.PENDING else None,
               end_time=(300.0 + job_id if end is None else end) if final else None,
               node="n1" if state != JobState.PENDING else None, alloc=(0,) if state != JobState.PENDING else (),
               **fields)


# ---------------------------------------------------------------------------------------------
# The store


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "state"))
    yield s
    s.close()


@pytest.fixture
def reader(store):
    r = HistoryReader(store.path)
    yield r
    r.close()


def ids(jobs):
    return [j.id for j in jobs]


def test_history_reads_finished_jobs_only_oldest_first(store, reader):
    store.write([job(1), job(2, JobState.RUNNING), job(3, JobState.FAILED, exit_code=2), job(4, JobState.PENDING),
                 job(5, JobState.CANCELLED, exit_code=None), job(6, JobState.TIMEOUT), job(7, JobState.NODE_FAIL)],
                [], [], 8, 8)
    jobs, more = reader.finished_jobs()
    assert ids(jobs) == [1, 3, 5, 6, 7] and more is False
    assert jobs[1].exit_code == 2 and jobs[1].state == JobState.FAILED


def test_history_filters_by_user_state_ids_and_end_time(store, reader):
    store.write([job(1), job(2, user="bob"), job(3, JobState.FAILED), job(4, end=50.0), job(5, user="bob")],
                [], [], 6, 6)
    assert ids(reader.finished_jobs(user="bob")[0]) == [2, 5]
    assert ids(reader.finished_jobs(states=["FAILED"])[0]) == [3]
    assert ids(reader.finished_jobs(states=["FAILED", "COMPLETED"], user="alice")[0]) == [1, 3, 4]
    assert ids(reader.finished_jobs(ids=[5, 1, 99])[0]) == [1, 5]
    assert ids(reader.finished_jobs(since=302.0)[0]) == [2, 3, 5]   # ended at 300 + id; job 4 at 50
    assert ids(reader.finished_jobs(since=302.0, user="alice", ids=[3, 4])[0]) == [3]
    assert reader.finished_jobs(user="nobody") == ([], False)
    assert reader.finished_jobs(ids=[]) == ([], False)
    assert reader.finished_jobs(states=[]) == ([], False)
    assert reader.finished_jobs(states=["RUNNING"]) == ([], False)  # only final states are history


def test_history_keeps_the_newest_jobs_within_the_limit_and_says_more_match(store, reader):
    store.write([job(i) for i in range(1, 21)], [], [], 21, 21)
    jobs, more = reader.finished_jobs(limit=5)
    assert ids(jobs) == [16, 17, 18, 19, 20] and more is True
    assert reader.finished_jobs(limit=20)[1] is False


def test_history_sees_what_the_master_writes_after_the_reader_opened(store, reader):
    assert reader.finished_jobs() == ([], False)
    store.write([job(1)], [], [], 2, 2)
    assert ids(reader.finished_jobs()[0]) == [1]


def test_history_skips_a_record_that_cannot_be_loaded(store, reader):
    store.write([job(1), job(2)], [], [], 3, 3)
    store.db.execute("UPDATE jobs SET record = '{not json' WHERE id = 1")
    assert ids(reader.finished_jobs()[0]) == [2]


def test_the_reader_cannot_write(store, reader):
    with pytest.raises(sqlite3.OperationalError):
        reader.db.execute("DELETE FROM jobs")


def test_a_query_over_its_deadline_is_interrupted(store):
    store.write([job(i) for i in range(1, 3001)], [], [], 3001, 3001)
    ticks = iter(range(1000000))
    slow = HistoryReader(store.path, deadline=2)
    try:
        with pytest.raises(QueryTooSlow):
            slow.finished_jobs(user="nobody", clock=lambda: next(ticks))
        assert ids(slow.finished_jobs(ids=[7])[0]) == [7]  # the next query runs normally
    finally:
        slow.close()


# ---------------------------------------------------------------------------------------------
# Requests


def check(type_, **fields):
    return protocol.check_request(protocol.request(type_, **fields))


def test_well_formed_history_show_and_queue_requests():
    assert check("history", user="bob", mine=False, state="FAILED", ids=[1, 2], since=0, limit=10) == (
        "history", {"user": "bob", "mine": False, "state": "FAILED", "ids": [1, 2], "since": 0, "limit": 10})
    assert check("history") == ("history", {})
    assert check("show", job_id=MAX_JOB_ID) == ("show", {"job_id": MAX_JOB_ID})
    assert check("queue", ids=[3], mine=True) == ("queue", {"ids": [3], "mine": True})


@pytest.mark.parametrize("type_,fields", [
    ("history", {"since": "yesterday"}), ("history", {"since": 1.5}), ("history", {"since": True}),
    ("history", {"limit": "10"}), ("history", {"limit": False}), ("history", {"limit": [10]}),
    ("history", {"ids": "1,2"}), ("history", {"ids": {"1": 2}}), ("history", {"ids": [1.0]}),
    ("history", {"ids": [True]}), ("history", {"ids": ["1"]}), ("history", {"ids": [[1]]}),
    ("history", {"user": 5}), ("history", {"user": ["alice"]}), ("history", {"state": {"a": 1}}),
    ("history", {"mine": "yes"}), ("history", {"mine": 1}), ("history", {"user": "al\0ice"}),
    ("queue", {"ids": [None]}), ("queue", {"mine": "true"}), ("queue", {"ids": "7"}),
    ("show", {}), ("show", {"job_id": "7"}), ("show", {"job_id": 7.0}), ("show", {"job_id": None}),
    ("show", {"job_id": True}),
])
def test_ill_typed_fields_are_bad_requests(type_, fields):
    with pytest.raises(MgpuError) as e:
        check(type_, **fields)
    assert e.value.code == errors.BAD_REQUEST and "\n" not in e.value.message


@pytest.mark.parametrize("type_,fields", [
    ("history", {"since": -1}), ("history", {"since": 1 << 41}), ("history", {"since": 10 ** 30}),
    ("history", {"limit": 0}), ("history", {"limit": -5}), ("history", {"limit": protocol.MAX_HISTORY_LIMIT + 1}),
    ("history", {"limit": 10 ** 100}), ("history", {"ids": [0]}), ("history", {"ids": [-1]}),
    ("history", {"ids": [MAX_JOB_ID + 1]}), ("history", {"ids": list(range(1, protocol.MAX_IDS_NAMED + 2))}),
    ("history", {"user": "a" * (protocol.MAX_FILTER + 1)}), ("history", {"state": "F" * 100000}),
    ("queue", {"ids": [2 ** 64]}), ("queue", {"ids": list(range(1, 5000))}),
    ("show", {"job_id": 0}), ("show", {"job_id": -7}), ("show", {"job_id": MAX_JOB_ID + 1}),
])
def test_out_of_range_fields_are_invalid_arguments(type_, fields):
    with pytest.raises(MgpuError) as e:
        check(type_, **fields)
    assert e.value.code == errors.INVALID_ARGUMENT and "\n" not in e.value.message


def test_a_history_request_of_huge_numbers_on_the_wire_is_refused_in_one_line():
    frame = b'{"v": 1, "type": "history", "limit": 1' + b"0" * 5000 + b"}\n"
    with pytest.raises(MgpuError) as e:
        protocol.check_request(protocol.decode(frame))
    assert e.value.code in (errors.BAD_REQUEST, errors.INVALID_ARGUMENT) and "\n" not in e.value.message


# ---------------------------------------------------------------------------------------------
# The controller


def controller(jobs=(), keep_finished=10000, **settings):
    c = Controller(Settings(keep_finished=keep_finished, **settings), jobs, next_id=100, next_seq=100)
    c.handle({"kind": "node_up", "name": "n1", "gpus": [
        {"index": 0, "uuid": "u0", "name": "G", "memory_mb": 16000}]}, 0.0)
    return c


def request(c, type_, peer=ALICE, **fields):
    _, checked = protocol.check_request(protocol.request(type_, **fields))
    return c.handle({"kind": "request", "type": type_, "token": "tok", "fields": checked, "peer": peer}, T0)


def one_reply(actions):
    assert len(actions) == 1 and isinstance(actions[0], Reply) and actions[0].token == "tok", actions
    return actions[0].message


def read_back(c, read, jobs, more=False):
    return one_reply(c.handle({"kind": "history_read", "read": read, "jobs": jobs, "more": more}, T0))


def test_history_asks_the_store_with_the_filters_then_replies_with_queue_rows():
    c = controller()
    [read] = request(c, "history", user="bob", state="failed,Timeout", ids=[3, 1, 3], since=50, limit=7)
    assert isinstance(read, ReadHistory) and read.token == "tok" and read.show is None
    assert read.filters == {"user": "bob", "states": ["FAILED", "TIMEOUT"], "ids": [1, 3], "since": 50, "limit": 7}
    message = read_back(c, read, [job(1, JobState.FAILED, user="bob", exit_code=3)], more=True)
    assert message["ok"] and message["result"]["more"] is True and message["result"]["time"] == T0
    [row] = message["result"]["jobs"]
    assert (row["id"], row["user"], row["state"], row["exit_code"], row["start_time"], row["end_time"]) == (
        1, "bob", "FAILED", 3, 201.0, 301.0)
    assert row["nodes"] == [{"name": "n1", "gpu_ids": [0]}] and row["command"] == ["python", "t.py"]
    assert "env" not in row and "env_setup" not in row


def test_history_defaults_and_me():
    c = controller()
    [read] = request(c, "history", mine=True)
    assert read.filters == {"user": "alice", "states": None, "ids": None, "since": None, "limit": 1000}
    [read] = request(c, "history", mine=True, user="alice")
    assert read.filters["user"] == "alice"


@pytest.mark.parametrize("fields,fragment", [
    ({"state": "RUNNING"}, "RUNNING is not a final state"),
    ({"state": "COMPLETED,PENDING"}, "PENDING is not a final state"),
    ({"state": "SLEEPING"}, "unknown state SLEEPING"),
    ({"state": "\x1b[2J"}, "unknown state \\x1b[2J"),
    ({"mine": True, "user": "bob"}, "either --me or --user"),
])
def test_history_refuses_bad_filters_in_one_line(fields, fragment):
    message = one_reply(request(controller(), "history", **fields))
    assert message["error"] == errors.INVALID_ARGUMENT and fragment in message["message"]
    assert "\n" not in message["message"] and "\x1b" not in message["message"]


def test_a_store_error_reaches_the_client_as_one_line():
    c = controller()
    [read] = request(c, "history")
    message = one_reply(c.handle({"kind": "history_read", "read": read,
                                  "error": (errors.TIMEOUT, "took too long")}, T0))
    assert message == {"ok": False, "error": errors.TIMEOUT, "message": "took too long"}


def test_show_answers_from_memory_for_a_kept_job_and_from_the_store_otherwise():
    c = controller([job(5, env_setup="source venv/bin/activate", requeue=True, warn_signal=10, warn_seconds=60,
                        time_limit=600)])
    message = one_reply(request(c, "show", job_id=5))
    detail = message["result"]["job"]
    assert detail["id"] == 5 and detail["cwd"] == "/home/alice" and detail["requeue"] is True
    assert detail["env_setup"] == "source venv/bin/activate" and detail["warn_signal"] == 10
    assert detail["output"] is None and detail["time_limit"] == 600 and detail["attempt"] == 0
    [read] = request(c, "show", job_id=6)
    assert read.show == 6 and read.filters["ids"] == [6] and read.filters["limit"] == 1
    assert read_back(c, read, []) == {"ok": False, "error": errors.NOT_FOUND, "message": "no such job 6"}
    [read] = request(c, "show", job_id=6)
    found = read_back(c, read, [job(6, JobState.FAILED, exit_code=1)])
    assert found["result"]["job"]["id"] == 6 and found["result"]["job"]["exit_code"] == 1


def test_show_of_a_running_job_has_its_placement_and_live_state():
    c = controller()
    _, fields = protocol.check_request(protocol.request("submit", command=["sleep", "9"], cwd="/home/alice",
                                                        env={"SECRET": "x"}, gpus=1))
    c.handle({"kind": "request", "type": "submit", "token": "s", "fields": fields, "peer": ALICE}, T0)
    c.schedule(T0)
    detail = one_reply(request(c, "show", job_id=100))["result"]["job"]
    assert detail["state"] == JobState.RUNNING and detail["nodes"] == [{"name": "n1", "gpu_ids": [0]}]
    assert detail["start_time"] == T0 and "SECRET" not in json.dumps(detail)


def test_env_setup_is_shown_to_its_owner_root_and_operators_only():
    c = controller([job(5, env_setup="export TOKEN=s3cret")], operator_uids=[1500])
    operator = {"uid": 1500, "gid": 1500, "user": "oper", "home": "/home/oper"}
    for peer in (ALICE, ROOT, operator):
        assert one_reply(request(c, "show", peer, job_id=5))["result"]["job"]["env_setup"] == "export TOKEN=s3cret"
    other = one_reply(request(c, "show", BOB, job_id=5))["result"]["job"]
    assert "env_setup" not in other and "s3cret" not in json.dumps(other)
    assert other["command"] == ["python", "t.py"]  # what queue shows everyone


def test_a_job_dropped_from_memory_by_keep_finished_is_shown_from_the_store():
    c = controller([job(1), job(2), job(3)], keep_finished=2)
    assert 1 not in c.jobs
    [read] = request(c, "show", job_id=1)
    assert isinstance(read, ReadHistory)
    assert read_back(c, read, [job(1)])["result"]["job"]["id"] == 1


def test_single_user_mode_refuses_history_and_show_of_others():
    c = controller(owner_uid=1000, owner_name="alice")
    for type_, fields in (("history", {}), ("show", {"job_id": 1})):
        message = one_reply(request(c, type_, BOB, **fields))
        assert message["error"] == errors.PERMISSION_DENIED


def test_queue_filters_by_ids_and_me_and_names_finished_jobs_by_id():
    c = controller([job(1), job(2, JobState.PENDING, user="bob"), job(3, JobState.PENDING)])
    rows = one_reply(request(c, "queue", ids=[1, 2, 99]))["result"]["jobs"]
    assert [r["id"] for r in rows] == [2, 1]  # pending, then finished
    assert [r["id"] for r in one_reply(request(c, "queue", mine=True))["result"]["jobs"]] == [3]
    assert [r["id"] for r in one_reply(request(c, "queue", BOB, mine=True))["result"]["jobs"]] == [2]
    assert [r["id"] for r in one_reply(request(c, "queue", mine=True, ids=[1]))["result"]["jobs"]] == [1]
    refused = one_reply(request(c, "queue", mine=True, user="bob"))
    assert refused["error"] == errors.INVALID_ARGUMENT


# ---------------------------------------------------------------------------------------------
# The command line


NOW = datetime.datetime(2024, 5, 10, 15, 30, 0).timestamp()


@pytest.mark.parametrize("text,expected", [
    ("2024-05-01", datetime.datetime(2024, 5, 1).timestamp()),
    ("2024-05-01T08:15", datetime.datetime(2024, 5, 1, 8, 15).timestamp()),
    ("2024-05-01T08:15:42", datetime.datetime(2024, 5, 1, 8, 15, 42).timestamp()),
    ("2024-05-01 08:15", datetime.datetime(2024, 5, 1, 8, 15).timestamp()),
    ("30m", NOW - 1800), ("2h", NOW - 7200), ("3d", NOW - 3 * 86400), ("1w", NOW - 7 * 86400), ("45s", NOW - 45),
    ("today", datetime.datetime(2024, 5, 10).timestamp()), (" 2h ", NOW - 7200), ("9999999d", 0),
    ("1969-01-01", 0),
])
def test_since_accepts_dates_times_and_times_ago(text, expected):
    assert history_cli.parse_when(text, NOW) == int(expected)


def test_since_all_means_no_filter():
    assert history_cli.parse_when("all", NOW) is None


@pytest.mark.parametrize("text", [
    "", "yesterday", "2024-13-01", "2024-02-30", "2024-1-1", "2024-05-01T25:00", "2024-05-01T10:61",
    "0000-01-01", "10000-01-01", "2h30m", "-2h", "2.5h", "99999999m", "٢h", "2024-05-01\n01", "30m\n1", "\x1b[2J",
    "2024-05-01T08", "2024-05-01T08:15:60", "x" * 10000,
])
def test_since_refuses_bad_dates_in_one_line(text):
    with pytest.raises(ValueError) as e:
        history_cli.parse_when(text, NOW)
    message = str(e.value)
    assert "\n" not in message and len(message) < 200


def args_of(*argv):
    parser = history_cli.build_parser()
    return history_cli.build_request(parser.parse_args(list(argv)), parser, NOW)


def test_history_defaults_to_jobs_that_ended_since_midnight():
    assert args_of() == {"since": int(datetime.datetime(2024, 5, 10).timestamp())}
    assert args_of("-j", "4,5") == {"ids": [4, 5]}  # named jobs: whenever they ended
    assert args_of("--since", "all", "--me", "--state", "FAILED", "-n", "50") == {
        "mine": True, "state": "FAILED", "limit": 50}


@pytest.mark.parametrize("argv", [
    ["--limit", "0"], ["--limit", "10001"], ["--limit", "ten"], ["--limit", "1" * 100], ["-j", "1,x"],
    ["-j", "0"], ["-j", ""], ["--since", "soon"], ["--me", "--user", "bob"],
])
def test_bad_history_options_are_one_usage_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        args_of(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mgpu history: ")


def test_job_id_lists():
    assert parse_job_ids("3, 1,3", 10) == [3, 1]
    for bad in ("", "1,,2", "a", "-1", "0", str(MAX_JOB_ID + 1), "1" * 30, "١"):
        with pytest.raises(ValueError):
            parse_job_ids(bad, 10)
    with pytest.raises(ValueError):
        parse_job_ids(",".join(["1"] * 11), 10)


# ---------------------------------------------------------------------------------------------
# Rendering

HOSTILE = "\x1b[2J\x1b]0;pwn\x07evil\nline"


def raw_controls(text):
    return [ch for ch in text if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F]


def row(**fields):
    c = controller()
    base = job(fields.pop("id", 7), fields.pop("state", JobState.FAILED), **{k: v for k, v in fields.items()
                                                                         if k in ("user", "end")})
    result = c.job_row(base)
    result.update({k: v for k, v in fields.items() if k not in ("user", "end")})
    return result


def test_the_history_table_has_one_line_per_job_and_escapes_what_users_chose():
    now = 500.0
    jobs = [row(id=1, name=HOSTILE, exit_code=3), row(id=2, state=JobState.CANCELLED, command=["echo", "\x9b"]),
            row(id=3, user="b\x1bob", nodes=[{"name": "gpu\x1b1", "gpu_ids": [0, 1]}])]
    table = render.history_table(jobs, now)
    assert not raw_controls(table)
    lines = table.split("\n")
    assert len(lines) == 4
    assert lines[0].split() == ["JOBID", "USER", "NAME", "STATE", "EXIT", "SUBMIT", "START", "END", "ELAPSED",
                                "GPUS", "NODE:GPUS"]
    assert "\\x1b[2J" in lines[1] and " 3 " in lines[1] and "FAILED" in lines[1]
    assert "echo \\u009b" in lines[2] and "b\\x1bob" in lines[3] and "gpu\\x1b1:0,1" in lines[3]
    assert render.clock(201.0, now) in lines[1] and "1:40" in lines[1]  # start 201, end 301


def test_clock_is_compact_and_has_no_spaces():
    now = datetime.datetime(2024, 5, 10, 15, 30).timestamp()
    assert render.clock(datetime.datetime(2024, 5, 10, 9, 5, 7).timestamp(), now) == "09:05:07"
    assert render.clock(datetime.datetime(2024, 1, 2, 9, 5).timestamp(), now) == "01-02T09:05"
    assert render.clock(datetime.datetime(2023, 12, 31, 23, 0).timestamp(), now) == "2023-12-31"
    assert render.clock(None, now) == "-" and render.clock(1e300, now) == "-"
    assert render.timestamp(datetime.datetime(2024, 1, 2, 9, 5, 1).timestamp()) == "2024-01-02T09:05:01"
    assert render.timestamp(None) == "None"


def test_the_queue_table_has_start_and_restarts_columns():
    now = time.time()
    jobs = [row(id=1, state=JobState.RUNNING, end_time=None, exit_code=None, start_time=now - 65, restarts=2,
                gpu_ids=[]),
            row(id=2, state=JobState.PENDING, start_time=None, end_time=None, exit_code=None, restarts=0)]
    lines = render.jobs_table(jobs, now, False).split("\n")
    headers = lines[0].split()
    assert headers[:9] == ["JOBID", "USER", "STATE", "PRI", "GPUS", "START", "TIME", "LIMIT", "RESTARTS"]
    running = lines[1].split()
    assert running[5] == render.clock(now - 65, now) and running[6] == "1:05" and running[8] == "2"
    pending = lines[2].split()
    assert pending[5] == "-" and pending[8] == "0"


def test_show_prints_every_field_escaped():
    c = controller([job(5, name=HOSTILE, env_setup="echo \x1b[31m", time_limit=3600, warn_signal=10,
                        warn_seconds=60, requeue=True, restarts=2, output="/home/alice/o\n.out")])
    detail = one_reply(request(c, "show", job_id=5))["result"]["job"]
    text = render.job_detail(detail, T0)
    assert not raw_controls(text)
    for fragment in ("JobId=5 JobName=\\x1b[2J", "UserId=alice(1000)", "JobState=COMPLETED", "ExitCode=0",
                     "RestartCnt=2", "Requeue=1", "SubmitTime=%s" % render.timestamp(105.0),
                     "StartTime=%s" % render.timestamp(205.0), "EndTime=%s" % render.timestamp(305.0),
                     "RunTime=1:40", "TimeLimit=1:00:00", "Signal=USR1@60", "Gpus=1", "GpuIds=0",
                     "Mem=exclusive", "NodeList=n1:0", "WorkDir=/home/alice", "StdOut=/home/alice/o\\n.out",
                     "StdErr=/home/alice/o\\n.out", "Command=python t.py", "EnvSetup=echo \\x1b[31m"):
        assert fragment in text, (fragment, text)
    assert text.split("\n")[0].startswith("JobId=5 ") and all(line.startswith("   ") for line in text.split("\n")[1:])
    hidden = render.job_detail(one_reply(request(c, "show", BOB, job_id=5))["result"]["job"], T0)
    assert "EnvSetup" not in hidden


def test_show_json_is_exact():
    detail = row(name=HOSTILE)
    assert json.loads(render.json_of(detail))["name"] == HOSTILE and "\x1b" not in render.json_of(detail)


# ---------------------------------------------------------------------------------------------
# The master's reader threads


class _Token:
    def __init__(self):
        import queue

        self.queue = queue.SimpleQueue()
        self.type = "history"


def test_the_master_reads_history_off_its_loop_and_posts_the_result_back(store):
    import queue

    from mgpu.master import _HistoryReaders

    store.write([job(1), job(2, user="bob"), job(3, JobState.RUNNING)], [], [], 4, 4)
    events = queue.SimpleQueue()
    readers = _HistoryReaders(store.path, events.put)
    try:
        c = controller()
        token = _Token()
        [read] = c.handle({"kind": "request", "type": "history", "token": token, "fields": {"user": "bob"},
                           "peer": ALICE}, T0)
        readers.submit(read)
        event = events.get(timeout=10)
        assert event["kind"] == "history_read" and event["read"] is read and "error" not in event
        assert ids(event["jobs"]) == [2] and event["more"] is False
        [answer] = c.handle(event, T0)
        assert answer.token is token and [r["id"] for r in answer.message["result"]["jobs"]] == [2]
    finally:
        readers.stop()
