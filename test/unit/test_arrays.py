"""Job arrays: the --array spec, the compact set of task ids, the wire's checks, and the
controller (tasks made as they start, the %N throttle, cancel, queue rows, dependencies) with a
restart through the store."""

import pytest

from mgpu import cells, errors, protocol
from mgpu.cli import cancel as cancel_cli
from mgpu.cli import render
from mgpu.cli import srun as srun_cli
from mgpu.controller import Controller, Launch, Save, SaveArray, Settings, SignalJob
from mgpu.errors import MgpuError
from mgpu.model import (MAX_ARRAY_TASK_ID, MAX_ARRAY_TASKS, ArrayTasks, JobState, check_array_runs,
                        format_array_runs, parse_array_spec)
from mgpu.store import Store

from test_controller import (ALICE, BOB, T0, exited, lost, make, node_up, queue, refused, reply, request, submit)

PENDING, RUNNING, COMPLETED, CANCELLED = JobState.PENDING, JobState.RUNNING, JobState.COMPLETED, JobState.CANCELLED


# ---------------------------------------------------------------------------------------------
# The spec


@pytest.mark.parametrize("spec, runs, throttle", [
    ("1-1000", [[1, 1000, 1]], None),
    ("0-30:3", [[0, 30, 3]], None),
    ("0-31:3", [[0, 30, 3]], None),
    ("1,4,9", [[1, 4, 3], [9, 9, 1]], None),
    ("1-5,10,20-30:5", [[1, 5, 1], [10, 10, 1], [20, 30, 5]], None),
    ("1-1000%8", [[1, 1000, 1]], 8),
    (" 9,1-3 ", [[1, 3, 1], [9, 9, 1]], None),
    ("1-10,3-5,12", [[1, 10, 1], [12, 12, 1]], None),
    ("0-10:2,1-9:2", [[0, 10, 1]], None),
    ("7", [[7, 7, 1]], None),
    ("0-%d" % (MAX_ARRAY_TASKS - 1), [[0, MAX_ARRAY_TASKS - 1, 1]], None),
    ("%d" % MAX_ARRAY_TASK_ID, [[MAX_ARRAY_TASK_ID, MAX_ARRAY_TASK_ID, 1]], None),
])
def test_array_specs_as_slurm_writes_them(spec, runs, throttle):
    assert parse_array_spec(spec) == (runs, throttle)
    assert check_array_runs(runs) is None


@pytest.mark.parametrize("spec, why", [
    ("", "give task ids"),
    ("%4", "give task ids"),
    ("5-1", "ends before it begins"),
    ("1-3:0", "step after ':' must be at least 1"),
    ("a-b", "is not ID, FIRST-LAST or FIRST-LAST:STEP"),
    ("-1", "is not ID"),
    ("1,,2", "is not ID"),
    ("1-2%0", "the limit after % goes from 1 to"),
    ("1-2%x", "after % give the most tasks"),
    ("1-2%3%4", "after % give the most tasks"),
    ("0-%d" % MAX_ARRAY_TASKS, "at most 1000000 tasks"),
    ("1-%d" % (MAX_ARRAY_TASK_ID + 1), "task ids go from 0 to 3999999"),
    ("99999999", "is not ID"),
    ("１-3", "is not ID"),
    ("1-3\n", None),
])
def test_bad_array_specs_are_one_line(spec, why):
    if why is None:  # surrounding blanks are fine
        assert parse_array_spec(spec)[0] == [[1, 3, 1]]
        return
    with pytest.raises(ValueError) as caught:
        parse_array_spec(spec)
    message = str(caught.value)
    assert message.startswith("bad --array '") and why in message and "\n" not in message


def test_a_spec_is_bounded_in_length_and_parts():
    with pytest.raises(ValueError, match="^bad --array: at most 10000 characters$"):
        parse_array_spec("1," * 6000)
    runs, _ = parse_array_spec(",".join(str(i * 2) for i in range(2000)))
    assert runs == [[0, 3998, 2]]  # joined into one run
    assert parse_array_spec("1,2,3,5-9:2,11,20")[0] == [[1, 3, 1], [5, 11, 2], [20, 20, 1]]


def test_format_array_runs():
    assert format_array_runs([[1, 5, 1], [10, 10, 1], [20, 30, 5], [40, 42, 2]], 3) == "1-5,10,20-30:5,40,42%3"


def test_array_tasks_take_remove_and_intervals():
    tasks = ArrayTasks([[1, 10, 1], [20, 30, 5]])
    assert len(tasks) == 13 and 25 in tasks and 26 not in tasks and 11 not in tasks
    assert tasks.first_ids(3) == [1, 2, 3]
    assert tasks.take(1) and tasks.runs[0] == [2, 10, 1]
    assert tasks.remove(5) and not tasks.remove(5)
    assert tasks.runs == [[2, 4, 1], [6, 10, 1], [20, 30, 5]]
    assert tasks.remove_interval(3, 21) == 8
    assert tasks.runs == [[2, 2, 1], [25, 30, 5]] and len(tasks) == 3
    assert tasks.spec() == "2,25,30"
    assert tasks.remove(25) and tasks.runs == [[2, 2, 1], [30, 30, 1]]


# ---------------------------------------------------------------------------------------------
# The wire


def checked(type_, **fields):
    return protocol.check_request(protocol.request(type_, **fields))[1]


BASE = {"command": ["true"], "cwd": "/tmp", "env": {}}


@pytest.mark.parametrize("fields, code", [
    ({"array": "1-5"}, errors.BAD_REQUEST),
    ({"array": [[1, 5]]}, errors.INVALID_ARGUMENT),
    ({"array": [[5, 1, 1]]}, errors.INVALID_ARGUMENT),
    ({"array": [[1, 5, 0]]}, errors.INVALID_ARGUMENT),
    ({"array": [[1, 6, 2]]}, errors.INVALID_ARGUMENT),  # last is not first + k * step
    ({"array": [[-1, 5, 1]]}, errors.INVALID_ARGUMENT),
    ({"array": [[True, 5, 1]]}, errors.INVALID_ARGUMENT),
    ({"array": [[1.0, 5, 1]]}, errors.INVALID_ARGUMENT),
    ({"array": [[1, 5, 1], [3, 8, 1]]}, errors.INVALID_ARGUMENT),  # overlapping
    ({"array": [[10, 12, 1], [1, 5, 1]]}, errors.INVALID_ARGUMENT),  # unsorted
    ({"array": [[0, MAX_ARRAY_TASK_ID, 1]]}, errors.INVALID_ARGUMENT),  # too many tasks
    ({"array": [[0, MAX_ARRAY_TASK_ID + 1, MAX_ARRAY_TASK_ID + 1]]}, errors.INVALID_ARGUMENT),
    ({"array": [[i, i, 1] for i in range(0, 20002, 2)]}, errors.INVALID_ARGUMENT),  # too many runs
    ({"array": []}, errors.INVALID_ARGUMENT),
    ({"array_throttle": 2}, errors.INVALID_ARGUMENT),  # without an array
    ({"array": [[1, 5, 1]], "array_throttle": 0}, errors.INVALID_ARGUMENT),
    ({"array": [[1, 5, 1]], "array_throttle": "2"}, errors.BAD_REQUEST),
])
def test_hostile_array_fields_are_refused_at_the_edge(fields, code):
    with pytest.raises(MgpuError) as caught:
        checked("submit", **dict(BASE, **fields))
    assert caught.value.code == code


@pytest.mark.parametrize("tasks", [[[1]], [["1", [[1, 1, 1]]]], [[1, [[2, 1, 1]]]], [[0, [[1, 1, 1]]]], [[1, []]],
                                   [[1, "1-3"]]])
def test_hostile_cancel_tasks_are_refused(tasks):
    with pytest.raises(MgpuError):
        checked("cancel", ids=[], tasks=tasks)


# ---------------------------------------------------------------------------------------------
# The controller


def array_submitted(c, spec="1-6", peer=ALICE, **fields):
    runs, throttle = parse_array_spec(spec)
    if throttle:
        fields["array_throttle"] = throttle
    message = reply(submit(c, peer, array=runs, **fields))
    assert message["ok"], message
    return message["result"]["job_id"]


def tasks_of(c, array_id, states=(RUNNING,)):
    return sorted((job.array_task_id, job.id) for job in c.jobs.values()
                  if job.array_job_id == array_id and job.state in states)


def test_an_array_is_one_record_until_its_tasks_start():
    c = make(gpus=2)
    actions = submit(c, array=[[1, 100000, 1]], array_throttle=8, output="/o/%A_%a-%j.%x.out", name="sweep",
                     env={"PATH": "/usr/bin", "MGPU_ARRAY_TASK_ID": "3"})
    save = actions[0]
    assert isinstance(save, SaveArray) and save.whole and not save.done
    assert save.env == {"PATH": "/usr/bin", "MGPU_ARRAY_JOB_ID": "1", "MGPU_ARRAY_TASK_COUNT": "100000",
                        "MGPU_ARRAY_TASK_MIN": "1", "MGPU_ARRAY_TASK_MAX": "100000"}
    result = reply(actions)["result"]
    assert (result["job_id"], result["array_tasks"], result["array"], result["array_throttle"]) == (1, 100000, "1-100000", 8)
    assert c.jobs == {} and c.pending == {} and len(c.arrays[1].pending) == 100000
    actions = c.schedule(T0)
    launched = [a.job for a in actions if isinstance(a, Launch)]
    assert [(j.id, j.array_job_id, j.array_task_id) for j in launched] == [(2, 1, 1), (3, 1, 2)]
    assert launched[0].output == "/o/1_1-2.sweep.out" and launched[1].output == "/o/1_2-3.sweep.out"
    first = [a for a in actions if isinstance(a, Save) and a.job.id == 2]
    assert first[0].env_from == 1 and first[0].transition.new == PENDING and first[1].transition.new == RUNNING
    assert [a for a in actions if isinstance(a, SaveArray)] == [SaveArray(c.arrays[1])]
    assert len(c.arrays[1].pending) == 99998 and c.arrays[1].pending.lowest == 3
    assert len(c.jobs) == 2  # no record for the tasks that wait


def test_the_throttle_is_never_exceeded_and_every_task_runs_once():
    c = make(gpus=8)
    array_id = array_submitted(c, "1-20%3")
    ran = []
    now = T0
    while c.arrays or c.running:
        c.schedule(now)
        running = tasks_of(c, array_id)
        assert len(running) <= 3
        if not running:
            break
        ran.append(running[0][0])
        exited(c, running[0][1], now)
        now += 1
    assert sorted(ran) == list(range(1, 21))
    assert array_id not in c.arrays and c._arrays_over[array_id] == (COMPLETED, True)


def test_a_requeued_task_counts_against_the_throttle():
    c = make(gpus=4)
    array_id = array_submitted(c, "1-10%2", requeue=True)
    c.schedule(T0)
    (t1, j1), (t2, j2) = tasks_of(c, array_id)
    lost(c, j1, T0 + 1, started=True)
    assert c.jobs[j1].state == PENDING and c.jobs[j1].array_task_id == t1
    for step in range(3):
        c.schedule(T0 + 2 + step)
        assert len(tasks_of(c, array_id)) == 2
    assert c.jobs[j1].state == RUNNING  # went back to the queue, ran again under the same limit
    rows = {(r["array_job_id"], r["array_task_id"]): r for r in queue(c)["jobs"]}
    assert rows[(array_id, None)]["reason"].startswith("JobArrayTaskLimit")


def test_queue_rows_of_an_array():
    c = make(gpus=2)
    array_id = array_submitted(c, "1-1000%8")
    other = reply(submit(c))["result"]["job_id"]
    c.schedule(T0)
    rows = queue(c)["jobs"]
    labels = [render.job_label(row) for row in rows]
    assert labels == ["1_1", "1_2", "1_[3-1000%8]", str(other)]
    pending = rows[2]
    assert (pending["state"], pending["array_pending"], pending["array_task_count"], pending["position"]) == (
        PENDING, 998, 1000, 1)
    assert rows[0]["array_job_id"] == array_id and rows[0]["array_task_id"] == 1
    assert [render.job_label(r) for r in queue(c, ids=[array_id])["jobs"]] == ["1_1", "1_2", "1_[3-1000%8]"]
    # The table's compact reply: the same rows, the array's pending tasks as one, twice (kept rows).
    for _ in range(2):
        brief = protocol.decode(protocol.encode(reply(request(c, "queue", {"brief": True}))))["result"]["cells"]
        table = [line.split(cells.SEPARATOR) for line in brief]
        assert [row[0] for row in table] == ["1_1", "1_2", "1_[3-1000%8]", str(other)]
        assert table[2][11] == "(%s)" % pending["reason"] and table[2][11] != "(submitted)"


def test_cancel_one_task_a_range_and_the_whole_array():
    c = make(gpus=2)
    array_id = array_submitted(c, "1-10")
    c.schedule(T0)
    (t1, j1), (t2, j2) = tasks_of(c, array_id)
    results = reply(request(c, "cancel", {"ids": [], "tasks": [[array_id, [[5, 5, 1]]], [array_id, [[7, 9, 1]]],
                                                                  [array_id, [[1, 1, 1]]], [array_id, [[50, 50, 1]]]]}))
    assert [(r["task"], r["result"], r["message"]) for r in results["result"]["results"]] == [
        ("1_5", "cancelled", "1 pending task cancelled"),
        ("1_[7-9]", "cancelled", "3 pending tasks cancelled"),
        ("1_1", "stopping", "1 running task stopping (SIGTERM sent, SIGKILL after 10s)"),
        ("1_50", "not_found", "no such task")]
    assert c.arrays[array_id].pending.spec() == "3-4,6,10"
    refused_by_bob = reply(request(c, "cancel", {"ids": [array_id]}, BOB))["result"]["results"]
    assert refused_by_bob[0]["result"] == "permission_denied"
    actions = request(c, "cancel", {"ids": [array_id]})
    results = reply(actions)["result"]["results"]
    assert [(r["task"], r["result"]) for r in results] == [("1", "stopping")]
    assert "4 pending tasks cancelled; 2 running tasks stopping" in results[0]["message"]
    assert SignalJob("n1", j2, 1, 15) in actions
    assert not c.arrays[array_id].pending
    exited(c, j1, T0 + 1, signum=15)
    actions = exited(c, j2, T0 + 1, signum=15)
    assert any(isinstance(a, SaveArray) and a.done for a in actions)
    assert array_id not in c.arrays and c._arrays_over[array_id] == (CANCELLED, True)
    results = reply(request(c, "cancel", {"ids": [array_id]}))["result"]["results"]
    assert results[0]["result"] == "finished"


def test_show_an_array_and_its_tasks():
    c = make(gpus=1)
    array_id = array_submitted(c, "3-5")
    c.schedule(T0)
    shown = reply(request(c, "show", {"job_id": array_id}))["result"]["job"]
    assert (shown["id"], shown["array_tasks"], shown["state"]) == (array_id, "4-5", PENDING)
    shown = reply(request(c, "show", {"job_id": array_id, "array_task_id": 3}))["result"]["job"]
    assert (shown["array_task_id"], shown["state"]) == (3, RUNNING) and shown["id"] != array_id
    shown = reply(request(c, "show", {"job_id": array_id, "array_task_id": 5}))["result"]["job"]
    assert (shown["array_task_id"], shown["state"]) == (5, PENDING)
    assert "no task 1_9" in refused(request(c, "show", {"job_id": array_id, "array_task_id": 9}), errors.NOT_FOUND)


def test_arrays_are_refused_with_srun_i_and_on_several_hosts():
    c = make(nodes={"n1": 2, "n2": 2})
    assert "srun -i cannot follow a job array" in refused(submit(c, array=[[1, 3, 1]], interactive=True, stdin="pipe"),
                                                          errors.INVALID_ARGUMENT)
    assert "--array with --nodes is not supported" in refused(submit(c, array=[[1, 3, 1]], nnodes=2),
                                                             errors.INVALID_ARGUMENT)


def test_an_output_path_too_long_once_filled_in_is_refused():
    c = make()
    message = refused(submit(c, array=[[1, 3, 1]], output="/" + "x" * 4060 + "%a%a%a%a%j"), errors.INVALID_ARGUMENT)
    assert "--output is too long once %A, %a, %j, %u and %x are filled in" in message


def test_a_dependency_on_an_array_means_all_its_tasks():
    c = make(gpus=2)
    array_id = array_submitted(c, "1-3")
    after = reply(submit(c, dependency=[["afterok", array_id]]))["result"]["job_id"]
    c.schedule(T0)
    assert c.jobs[after].state == PENDING and after in c.blocked
    for task_id, job_id in tasks_of(c, array_id):
        exited(c, job_id, T0 + 1)
    c.schedule(T0 + 1)
    assert after in c.blocked  # task 3 has not run yet
    (task_id, job_id), = tasks_of(c, array_id)
    exited(c, job_id, T0 + 2)
    c.schedule(T0 + 2)
    assert after not in c.blocked and c.jobs[after].state == RUNNING
    failing = array_submitted(c, "1-2")
    doomed = reply(submit(c, dependency=[["afterok", failing]]))["result"]["job_id"]
    exited(c, after, T0 + 3)
    c.schedule(T0 + 3)
    first, second = tasks_of(c, failing)
    exited(c, first[1], T0 + 4, exit_code=1)
    exited(c, second[1], T0 + 4)
    assert c.jobs[doomed].state == CANCELLED and "ended FAILED" in c.jobs[doomed].reason
    assert "can never be satisfied" in refused(submit(c, dependency=[["afterok", failing]]), errors.INVALID_ARGUMENT)


def test_an_array_waits_for_its_own_dependency():
    c = make(gpus=2)
    first = reply(submit(c))["result"]["job_id"]
    array_id = array_submitted(c, "1-2", dependency=[["afterok", first]])
    c.schedule(T0)
    assert not tasks_of(c, array_id) and array_id in c.blocked
    row = [r for r in queue(c)["jobs"] if r["array_job_id"] == array_id][0]
    assert row["reason"].startswith("Dependency")
    exited(c, first, T0 + 1)
    c.schedule(T0 + 1)
    assert len(tasks_of(c, array_id)) == 2


# ---------------------------------------------------------------------------------------------
# A restart: the store round trip


def persist(store, c, actions):
    """What the master stores of `actions` (one transaction), as master._carry_out does."""
    jobs, envs, transitions, arrays, copies = {}, {}, [], {}, {}
    for action in actions:
        if type(action) is Save:
            jobs[action.job.id] = action.job
            if action.env is not None:
                envs[action.job.id] = action.env
            if action.transition is not None:
                transitions.append(action.transition)
            if action.env_from is not None:
                copies[action.job.id] = action.env_from
        elif type(action) is SaveArray:
            entry = arrays.setdefault(action.array.id, [action.array, False, False])
            entry[1] = entry[1] or action.whole
            entry[2] = action.done
            if action.env is not None:
                envs[action.array.id] = action.env
            if action.transition is not None:
                transitions.append(action.transition)
    store.write(list(jobs.values()), list(envs.items()), transitions, c.next_id, c.next_seq,
                arrays=[tuple(entry) for entry in arrays.values()], env_copies=list(copies.items()))


def restarted(state_dir):
    store = Store(state_dir)
    active, finished, next_id, next_seq = store.load(1000)
    c = Controller(Settings(), finished + active, next_id, next_seq, arrays=store.load_arrays())
    c.handle(node_up("n1", 2), T0)
    return store, c


def test_a_half_finished_array_continues_after_a_restart(tmp_path):
    state = str(tmp_path / "state")
    store = Store(state)
    c = make(gpus=2)
    persist(store, c, submit(c, array=[[1, 9, 1]], array_throttle=2, env={"PATH": "/bin", "SEED": "4"}))
    ran = []
    persist(store, c, c.schedule(T0))
    for step in range(2):  # tasks 1 to 4 end, 5 and 6 run
        for task_id, job_id in tasks_of(c, 1):
            ran.append(task_id)
            persist(store, c, exited(c, job_id, T0 + step))
        persist(store, c, c.schedule(T0 + step))
    persist(store, c, reply_actions := request(c, "cancel", {"ids": [], "tasks": [[1, [[8, 8, 1]]]]}))
    assert reply(reply_actions)["ok"]
    running = tasks_of(c, 1)
    assert [t for t, _ in running] == [5, 6]
    assert store.job_env(running[0][1])["SEED"] == "4" and store.job_env(running[0][1])["MGPU_ARRAY_TASK_MAX"] == "9"
    store.close()

    store, c = restarted(state)  # the master died here
    array = c.arrays[1]
    assert array.pending.spec() == "7,9" and array.throttle == 2 and array.started
    assert array.ended == {COMPLETED: 4, CANCELLED: 1}
    assert tasks_of(c, 1) == running
    assert sorted(t for t, _ in tasks_of(c, 1, (COMPLETED,))) == [1, 2, 3, 4]
    persist(store, c, c.schedule(T0 + 5))
    assert tasks_of(c, 1) == running  # the throttle holds across the restart
    now = T0 + 10
    while c.arrays:
        for task_id, job_id in tasks_of(c, 1):
            ran.append(task_id)
            persist(store, c, exited(c, job_id, now))
        persist(store, c, c.schedule(now))
        now += 1
    assert sorted(ran) == [1, 2, 3, 4, 5, 6, 7, 9]  # none twice, none lost, 8 cancelled
    assert store.db.execute("SELECT COUNT(*) FROM arrays").fetchone()[0] == 0
    assert store.db.execute("SELECT COUNT(*) FROM job_env").fetchone()[0] == 0
    store.close()
    store, c = restarted(state)
    assert c.arrays == {} and c.next_id > max(job_id for job_id in c.jobs)
    store.close()


def test_a_damaged_array_record_is_set_aside(tmp_path):
    store = Store(str(tmp_path))
    store.db.execute("INSERT INTO arrays (id, record, progress) VALUES (5, '{}', '{\"pending\": [[3, 1, 1]]}')")
    assert store.load_arrays() == []
    assert "job array 5" in store.set_aside[0]
    store.close()


# ---------------------------------------------------------------------------------------------
# The command line


def test_srun_array_fields_and_refusals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = srun_cli.build_parser()
    fields = srun_cli.build_request(parser.parse_args(["-a", "1-5,10%2", "--gpus", "0", "--", "true"]), parser)
    assert fields["array"] == [[1, 5, 1], [10, 10, 1]] and fields["array_throttle"] == 2
    for argv, why in ((["--array", "5-1", "--", "true"], "bad --array '5-1': 5-1 ends before it begins"),
                      (["-i", "--array", "1-3", "--", "true"], "srun -i cannot follow a job array"),
                      (["--pty", "--array", "1-3", "--", "true"], "--pty cannot follow a job array"),
                      (["--array", "1-3", "--nodes", "2", "--", "true"], "--array with --nodes is not supported")):
        with pytest.raises(MgpuError) as caught:
            srun_cli.build_request(parser.parse_args(argv), parser)
        assert why in caught.value.message


def test_cancel_task_ids_on_the_command_line():
    parser = cancel_cli.build_parser()
    assert cancel_cli.parse_task_spec("12_7", parser) == [12, [[7, 7, 1]]]
    assert cancel_cli.parse_task_spec("12_[1-5,9]", parser) == [12, [[1, 5, 1], [9, 9, 1]]]
    for bad in ("x_1", "12_", "12_[1-5%2]", "12_a"):
        with pytest.raises(SystemExit):
            cancel_cli.parse_task_spec(bad, parser)
