"""The domain model: the table of allowed transitions, the one function that changes a job's
state, the user-facing value formats, and the persisted form of a Job."""

import itertools
import json
import signal

import pytest

from mgpu.model import (DEFAULT_WARN_SECONDS, JOB_FIELDS, TRANSITIONS, Allocation, Gpu,
                        InvalidTransition, Job, JobState, ResourceRequest, Transition,
                        format_duration, parse_duration, parse_gpu_ids, parse_signal_spec,
                        signal_number)

ALLOWED = {
    ("PENDING", "RUNNING"), ("PENDING", "CANCELLED"),
    ("RUNNING", "COMPLETED"), ("RUNNING", "FAILED"), ("RUNNING", "CANCELLED"),
    ("RUNNING", "TIMEOUT"), ("RUNNING", "NODE_FAIL"), ("RUNNING", "PENDING"),
}
FORBIDDEN = sorted(set(itertools.product(JobState.ALL, JobState.ALL)) - ALLOWED)


def job_in(state, **fields):
    return Job(id=7, state=state, command=["true"], **fields)


# ---------------------------------------------------------------------------------------------
# States and transitions


def test_states_follow_slurm_names_and_split_into_active_and_final():
    assert JobState.ALL == ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
    assert JobState.ACTIVE == {"PENDING", "RUNNING"}
    assert JobState.FINAL == set(JobState.ALL) - JobState.ACTIVE


def test_the_transition_table_is_exactly_the_designed_one():
    table = {(old, new) for old, targets in TRANSITIONS.items() for new in targets}
    assert table == ALLOWED
    assert all(state not in TRANSITIONS or not TRANSITIONS[state] for state in JobState.FINAL)


@pytest.mark.parametrize("old,new", sorted(ALLOWED))
def test_every_allowed_transition_is_recorded_with_time_reason_and_cause(old, new):
    job = job_in(old)
    record = job.transition(new, 123.5, reason="why", cause="what")
    assert isinstance(record, Transition)
    assert (record.job_id, record.time, record.old, record.new, record.reason, record.cause) == (
        7, 123.5, old, new, "why", "what")
    assert job.state == new and job.reason == "why"


@pytest.mark.parametrize("old,new", FORBIDDEN)
def test_every_other_transition_raises_and_changes_nothing(old, new):
    job = job_in(old, reason="before", start_time=5.0, node="n1", alloc=(0,))
    before = job.to_dict()
    with pytest.raises(InvalidTransition) as raised:
        job.transition(new, 200.0, "after", "test")
    assert old in str(raised.value) and new in str(raised.value) and "7" in str(raised.value)
    assert job.to_dict() == before


def test_starting_sets_the_start_and_clears_the_last_end():
    job = job_in("PENDING", end_time=50.0, exit_code=3)
    job.transition("RUNNING", 100.0)
    assert (job.start_time, job.end_time, job.exit_code) == (100.0, None, None)


def test_requeue_clears_the_placement_and_the_stop():
    job = job_in("RUNNING", start_time=100.0, node="n1", alloc=(0, 1), sup_pid=10, sup_start=11, pgid=12,
                 stop_cause="slice", stop_deadline=130.0, warned=True, attempt=1)
    job.transition("PENDING", 120.0, "requeued", "slice")
    assert (job.start_time, job.node, job.alloc) == (None, None, ())
    assert (job.sup_pid, job.sup_start, job.pgid) == (None, None, None)
    assert (job.stop_cause, job.stop_deadline, job.warned) == (None, None, None)
    assert job.attempt == 1  # the next start counts the attempt, not the requeue
    assert not job.stopping


@pytest.mark.parametrize("final", sorted(JobState.FINAL))
def test_ending_records_the_end_time(final):
    job = job_in("RUNNING", start_time=100.0, node="n1", alloc=(0,), pgid=12, stop_cause="cancel")
    job.transition(final, 160.0)
    assert job.end_time == 160.0 and job.start_time == 100.0
    assert job.alloc == (0,) and job.node == "n1"  # what it ran on stays visible
    assert job.pgid is None and not job.stopping


def test_cancelling_a_pending_job_ends_it_now():
    job = job_in("PENDING")
    job.transition("CANCELLED", 42.0, "cancelled by alice", "cancel")
    assert (job.state, job.end_time, job.start_time) == ("CANCELLED", 42.0, None)


# ---------------------------------------------------------------------------------------------
# Jobs, requests, GPUs


def test_a_new_job_has_safe_defaults():
    job = Job(id=1)
    assert (job.state, job.reason, job.attempt, job.restarts, job.alloc, job.command) == (
        "PENDING", "", 0, 0, (), [])
    assert job.end_estimate is None and not job.stopping


def test_gpu_ids_decide_the_gpu_count():
    job = Job(id=1, gpus=5, gpu_ids=[0, 2])
    assert (job.gpus, job.gpu_ids) == (2, (0, 2))
    request = job.request
    assert (request.gpus, request.gpu_ids, request.mem_mb, request.exclusive) == (2, (0, 2), None, True)
    assert ResourceRequest(3, None, 1000).exclusive is False


def test_end_estimate_is_start_plus_limit():
    assert Job(id=1, start_time=100.0, time_limit=60).end_estimate == 160.0
    assert Job(id=1, start_time=100.0).end_estimate is None
    assert Job(id=1, time_limit=60).end_estimate is None


def test_job_round_trips_through_its_stored_form():
    job = Job(id=3, user="alice", uid=1000, gid=1000, name="train", command=["python", "t.py"],
              cwd="/home/alice", output="/home/alice/3.out", error=None, env_setup="module load cuda",
              gpus=2, gpu_ids=[1, 3], mem_mb=4000, time_limit=3600, priority=5, requeue=True,
              warn_signal=10, warn_seconds=60, submit_time=1.5, queue_seq=9, state="RUNNING",
              reason="", exit_code=None, start_time=2.5, end_time=None, node="n1", alloc=[1, 3],
              attempt=2, restarts=1, sup_pid=100, sup_start=12345, pgid=101, stop_cause="timeout",
              stop_deadline=99.0, warned=True, umask=0o22)
    stored = json.loads(json.dumps(job.to_dict()))
    assert list(stored) == list(JOB_FIELDS)
    back = Job.from_dict(stored)
    assert back.to_dict() == job.to_dict()
    assert back.gpu_ids == (1, 3) and back.alloc == (1, 3) and back.command == ["python", "t.py"]


def test_from_dict_ignores_unknown_fields_and_fills_missing_ones():
    job = Job.from_dict({"id": 4, "state": "PENDING", "from_a_newer_version": 1})
    assert job.id == 4 and job.attempt == 0 and job.restarts == 0 and job.alloc == ()


def test_gpu_and_allocation_values():
    gpu = Gpu.from_dict({"index": "1", "memory_mb": "16000"})
    assert (gpu.index, gpu.uuid, gpu.name, gpu.memory_mb, gpu.external_mb) == (1, "", "", 16000, 0)
    full = Gpu(0, "u0", "A100", 81920, 100)
    assert Gpu.from_dict(full.to_dict()).to_dict() == full.to_dict()
    assert Allocation("n1", [0, 1]) == Allocation("n1", (0, 1))
    assert Allocation("n1", [0, 1]) != Allocation("n2", (0, 1))
    assert Allocation("n1", [0], 100) != Allocation("n1", [0])


# ---------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize("text,seconds", [
    ("1", 1), ("90", 90), (" 600 ", 600), (3600, 3600),
    ("1:30", 90), ("0:59", 59), ("90:00", 5400),
    ("1:00:00", 3600), ("01:02:03", 3723), ("0:00:01", 1), ("100:00:00", 360000),
    ("1-00:00:00", 86400), ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5), ("0-00:00:30", 30),
])
def test_parse_duration_accepts_seconds_and_slurm_forms(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "0", "00", "0:00", "0:00:00", "0-00:00:00",        # zero
    "-5", "-1:00",                                     # negative
    "", " ", "abc", "1h", "1.5", "1e3", "1:2:3:4", ":30", "1:", "1-", "1-2", "1--00:00:00",
    "1:60", "1:60:00", "1:00:60", "1:99:00", "1-00:60:00",  # minutes or seconds over 59
])
def test_parse_duration_rejects_bad_values(text):
    with pytest.raises(ValueError) as raised:
        parse_duration(text)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("seconds,text", [
    (None, "UNLIMITED"), (0, "0:00"), (5, "0:05"), (59, "0:59"), (60, "1:00"), (3599, "59:59"),
    (3600, "1:00:00"), (86399, "23:59:59"), (86400, "1-00:00:00"), (90061, "1-01:01:01"),
    (61.9, "1:01"), (-5, "0:00"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [1, 59, 60, 3599, 3600, 86399, 86400, 1234567])
def test_format_then_parse_gives_the_same_seconds(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


# ---------------------------------------------------------------------------------------------
# Signals


@pytest.mark.parametrize("text,expected", [
    (None, (int(signal.SIGUSR1), DEFAULT_WARN_SECONDS)),
    ("", (int(signal.SIGUSR1), 60)),
    ("USR1@60", (int(signal.SIGUSR1), 60)),
    ("TERM", (int(signal.SIGTERM), 60)),
    ("SIGTERM", (int(signal.SIGTERM), 60)),
    ("term", (int(signal.SIGTERM), 60)),
    ("@30", (int(signal.SIGUSR1), 30)),
    ("USR2@5", (int(signal.SIGUSR2), 5)),
    ("10", (10, 60)),
    ("15@120", (15, 120)),
])
def test_parse_signal_spec(text, expected):
    assert parse_signal_spec(text) == expected


@pytest.mark.parametrize("text", ["FOO", "SIGFOO", "USR1@0", "USR1@-5", "USR1@abc", "USR1@1.5", "999",
                                  "0", "-1", "USR1@@5", "USR 1"])
def test_parse_signal_spec_rejects_bad_values(text):
    with pytest.raises(ValueError):
        parse_signal_spec(text)


def test_signal_number_knows_names_with_and_without_sig():
    assert signal_number("usr1") == signal_number("SIGUSR1") == signal_number(str(int(signal.SIGUSR1)))


# ---------------------------------------------------------------------------------------------
# GPU id lists


@pytest.mark.parametrize("text,ids", [("0", (0,)), ("0,2", (0, 2)), (" 3 , 1 ", (3, 1)), ("10,11", (10, 11))])
def test_parse_gpu_ids(text, ids):
    assert parse_gpu_ids(text) == ids


@pytest.mark.parametrize("text", ["", ",", "0,", "a", "0,a", "-1", "1.5", "0,0", "1, 2, 1", "0;1"])
def test_parse_gpu_ids_rejects_bad_lists(text):
    with pytest.raises(ValueError):
        parse_gpu_ids(text)


# ---------------------------------------------------------------------------------------------
# Ranges: every parser refuses what protocol.py would refuse, with one line

from mgpu import model  # noqa: E402


def test_the_ranges():
    assert model.MAX_SECONDS == 365 * 86400
    assert model.MAX_GPUS == 4096 and model.MAX_GPU_INDEX == 4095
    assert model.MAX_MEM_MB == 16 * 1024 * 1024 and model.MAX_JOB_ID == 2 ** 63 - 1
    assert model.MAX_PRIORITY == 1_000_000 and model.MAX_PATH == 4096


@pytest.mark.parametrize("text", [
    "9" * 400, "9" * 13, str(model.MAX_SECONDS + 1), "366-00:00:00", "365-00:00:01",
    "8761:00:00", "525601:00", "999999-00:00:00", "99999999:00:00",
])
def test_parse_duration_refuses_more_than_365_days(text):
    with pytest.raises(ValueError) as raised:
        parse_duration(text)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 200


@pytest.mark.parametrize("text", [str(model.MAX_SECONDS), "365-00:00:00", "8760:00:00", "525600:00"])
def test_parse_duration_accepts_365_days(text):
    assert parse_duration(text) == model.MAX_SECONDS


@pytest.mark.parametrize("text", ["１２", "²", "١٢", "1:٣٠", "1_000", "+5"])
def test_parse_duration_wants_ascii_digits(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["USR1@" + "9" * 400, "USR1@%d" % (model.MAX_SECONDS + 1), "USR1@00",
                                  "USR1@²", "USR1@" + "9" * 5000, "9" * 400, "64" + "0" * 10])
def test_parse_signal_spec_refuses_huge_or_odd_values(text):
    with pytest.raises(ValueError) as raised:
        parse_signal_spec(text)
    assert len(str(raised.value)) < 200


def test_parse_signal_spec_accepts_the_longest_lead():
    assert parse_signal_spec("USR1@%d" % model.MAX_SECONDS) == (int(signal.SIGUSR1), model.MAX_SECONDS)


@pytest.mark.parametrize("number,real", [
    (1, True), (10, True), (15, True), (34, True), (64, True), (0, False), (-1, False),
    (32, False), (35, False), (65, False), (999, False), (True, False), (10.0, False), ("10", False),
    (None, False), (2 ** 70, False),
])
def test_is_signal(number, real):
    assert model.is_signal(number) is real


@pytest.mark.parametrize("name", ["SIGRTMIN", "RTMAX", "SIGIGNORE", "SIG_DFL", "DFL", "NSIG", "CTRL_C_EVENT"])
def test_signal_number_knows_only_signals(name):
    number = None
    try:
        number = signal_number(name)
    except ValueError:
        return
    assert model.is_signal(number)


@pytest.mark.parametrize("text", ["4096", "0,4096", ",".join(["1"] * 5000), "99999999999999999999",
                                  ",".join(str(i) for i in range(4097)), "１"])
def test_parse_gpu_ids_refuses_out_of_range_lists(text):
    with pytest.raises(ValueError) as raised:
        parse_gpu_ids(text)
    assert len(str(raised.value)) < 200


def test_parse_gpu_ids_accepts_the_largest_index_and_list():
    assert parse_gpu_ids("4095") == (4095,)
    assert len(parse_gpu_ids(",".join(str(i) for i in range(4096)))) == 4096


@pytest.mark.parametrize("text,low,high,value", [
    ("0", 0, 10, 0), ("10", 0, 10, 10), (" 5 ", 0, 10, 5), ("-3", -5, 5, -3), ("+3", -5, 5, 3),
])
def test_parse_int(text, low, high, value):
    assert model.parse_int(text, "--x", low, high) == value


@pytest.mark.parametrize("text", ["11", "-1", "1.0", "1e3", "", "x", "9" * 400, "１", "1_0", "0x1"])
def test_parse_int_refuses_with_one_short_line(text):
    with pytest.raises(ValueError) as raised:
        model.parse_int(text, "--x", 0, 10)
    message = str(raised.value)
    assert "--x" in message and "\n" not in message and len(message) < 200
