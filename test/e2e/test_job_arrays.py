"""`mgpu srun --array` with a real master and real users: the tasks' variables and output files,
the %N throttle (checked with marker files the tasks keep, not with timing), step and list specs,
the queue's rows (`N_[...]` for the tasks not started, `N_T` for each task that did), cancel of a
whole array and of one task, a master killed with SIGKILL and restarted half-way through (no task
lost, none run twice), bad specs refused with one line, and `#SBATCH --array`. Tasks are gated on
files the test creates; every wait polls against a deadline."""

import os
import pwd
import re
import shutil

from harness import user_ids, wait_for

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def workdir(user, name):
    """A fresh directory of `user`'s, for a test's marker and gate files."""
    path = os.path.join(pwd.getpwnam(user).pw_dir, name)
    shutil.rmtree(path, ignore_errors=True)
    os.mkdir(path)
    uid, gid, _ = user_ids(user)
    os.chown(path, uid, gid)
    return path


def gated_task(directory):
    """A task that says what it is, marks itself running (and writes how many tasks are marked
    running now), records its start, waits for gate-T, then unmarks itself."""
    return ("d=%s; t=$MGPU_ARRAY_TASK_ID; touch $d/running-$t; ls $d | grep -c '^running-' >> $d/seen; "
            "echo $t >> $d/starts; "
            "echo $MGPU_ARRAY_JOB_ID $t $MGPU_ARRAY_TASK_COUNT $MGPU_ARRAY_TASK_MIN $MGPU_ARRAY_TASK_MAX $MGPU_JOB_ID; "
            "while [ ! -e $d/gate-$t ]; do sleep 0.05; done; rm $d/running-$t" % directory)


def open_gate(directory, task_id):
    open(os.path.join(directory, "gate-%d" % task_id), "w").close()


def array_rows(cluster, array_id, user=None):
    """{task id (None: the row of the tasks not started): row} of one array, finished tasks too."""
    return {row["array_task_id"]: row for row in cluster.queue(user, "-j", str(array_id))["jobs"]
            if row.get("array_job_id") == array_id}


def wait_tasks(cluster, array_id, states, task_ids, timeout=30):
    """Wait until every task of task_ids is in one of `states`; the array's rows."""
    states = (states,) if isinstance(states, str) else tuple(states)

    def settled():
        rows = array_rows(cluster, array_id)
        return rows if all(t in rows and rows[t]["state"] in states for t in task_ids) else None
    return wait_for(settled, timeout=timeout, interval=0.1, what="tasks %s of array %d to be %s\n%s" % (
        task_ids, array_id, "/".join(states), cluster.master.log[-3000:]))


def running_tasks(cluster, array_id):
    return sorted(t for t, row in array_rows(cluster, array_id).items() if t is not None and row["state"] == "RUNNING")


def read(path):
    with open(path) as handle:
        return handle.read()


def test_a_throttled_array_runs_its_tasks_two_at_a_time(cluster):
    d = workdir(ALICE, "arr-throttle")
    array_id = cluster.submit(ALICE, "--array", "1-6%2", "--gpus", "0", "-o", d + "/out-%A_%a.txt",
                              "--", "sh", "-c", gated_task(d))
    rows = wait_tasks(cluster, array_id, "RUNNING", [1, 2])
    assert rows[None]["state"] == "PENDING" and rows[None]["array_tasks"] == "3-6" and rows[None]["array_throttle"] == 2
    assert rows[None]["reason"].startswith("JobArrayTaskLimit")
    table = cluster.run(ALICE, "queue").stdout
    assert re.search(r"^%d_\[3-6%%2\] +mgpu-alice +PENDING" % array_id, table, re.M), table
    assert re.search(r"^%d_1 +mgpu-alice +RUNNING" % array_id, table, re.M), table
    assert re.search(r"^%d_2 +mgpu-alice +RUNNING" % array_id, table, re.M), table
    assert rows[1]["id"] != array_id and rows[2]["id"] != array_id and rows[1]["id"] != rows[2]["id"]
    for task_id in range(1, 7):
        wait_for(lambda: task_id in running_tasks(cluster, array_id), timeout=30,
                 what="task %d to run\n%s" % (task_id, cluster.master.log[-2000:]))
        assert len(running_tasks(cluster, array_id)) <= 2
        open_gate(d, task_id)
    rows = wait_tasks(cluster, array_id, "COMPLETED", range(1, 7))
    assert None not in rows  # no task left to start
    counts = [int(line) for line in read(os.path.join(d, "seen")).split()]
    assert len(counts) == 6 and max(counts) <= 2, counts
    assert sorted(int(t) for t in read(os.path.join(d, "starts")).split()) == [1, 2, 3, 4, 5, 6]
    for task_id in range(1, 7):
        job_id = rows[task_id]["id"]
        assert read(os.path.join(d, "out-%d_%d.txt" % (array_id, task_id))) == "%d %d 6 1 6 %d\n" % (
            array_id, task_id, job_id)
        assert rows[task_id]["array_job_id"] == array_id


def test_step_and_list_specs_with_their_output_files(cluster):
    d = workdir(BOB, "arr-specs")
    stepped = cluster.submit(BOB, "-a", "0-6:3", "--gpus", "0", "-o", d + "/s-%A_%a.out",
                             "--", "sh", "-c", "echo $MGPU_ARRAY_TASK_ID of $MGPU_ARRAY_TASK_COUNT")
    listed = cluster.submit(BOB, "--array", "1,4,9", "--gpus", "1", "--output", d + "/l-%a-%j.out",
                            "--", "sh", "-c", "echo $MGPU_ARRAY_TASK_MIN-$MGPU_ARRAY_TASK_MAX")
    steps = wait_tasks(cluster, stepped, "COMPLETED", [0, 3, 6])
    lists = wait_tasks(cluster, listed, "COMPLETED", [1, 4, 9])
    assert sorted(steps) == [0, 3, 6] and sorted(lists) == [1, 4, 9]
    for task_id in (0, 3, 6):
        assert read(os.path.join(d, "s-%d_%d.out" % (stepped, task_id))) == "%d of 3\n" % task_id
    for task_id in (1, 4, 9):
        assert read(os.path.join(d, "l-%d-%d.out" % (task_id, lists[task_id]["id"]))) == "1-9\n"
        assert os.stat(os.path.join(d, "l-%d-%d.out" % (task_id, lists[task_id]["id"]))).st_uid == \
            pwd.getpwnam(BOB).pw_uid
    shown = cluster.run(BOB, "show", "%d_4" % listed)
    assert shown.returncode == 0 and "ArrayJobId=%d ArrayTaskId=4" % listed in shown.stdout
    history = cluster.run(BOB, "history", "-j", str(stepped))
    assert history.returncode == 0
    assert [line.split()[0] for line in history.stdout.splitlines()[1:]] == ["%d_%d" % (stepped, t) for t in (0, 3, 6)]


def test_cancel_one_task_then_the_whole_array(cluster):
    d = workdir(ALICE, "arr-cancel")
    array_id = cluster.submit(ALICE, "--array", "1-5", "--gpus", "1", "--", "sh", "-c", gated_task(d))
    wait_tasks(cluster, array_id, "RUNNING", [1, 2])
    result = cluster.run(ALICE, "cancel", "%d_4" % array_id)
    assert (result.returncode, result.stdout, result.stderr) == (0, "job %d_4: 1 pending task cancelled\n" % array_id, "")
    result = cluster.run(ALICE, "cancel", "%d_1" % array_id)
    assert result.returncode == 0 and result.stdout.startswith("job %d_1: 1 running task stopping" % array_id)
    rows = wait_tasks(cluster, array_id, "CANCELLED", [1])
    assert rows[None]["array_tasks"] in ("3,5", "5")  # task 3 may have taken task 1's GPU
    refused = cluster.run(BOB, "cancel", str(array_id))
    assert refused.returncode != 0 and "permission denied" in refused.stderr
    result = cluster.run(ALICE, "cancel", str(array_id))
    assert result.returncode == 0 and result.stdout.startswith("job %d: " % array_id), result
    rows = wait_for(lambda: (lambda r: r if None not in r and all(
        row["state"] == "CANCELLED" for row in r.values()) else None)(array_rows(cluster, array_id)),
        timeout=30, what="array %d to end" % array_id)
    started = sorted(int(t) for t in read(os.path.join(d, "starts")).split())
    assert sorted(rows) == started and 4 not in started and 5 not in started
    assert "array %d ended CANCELLED" % array_id in cluster.master.log
    result = cluster.run(ALICE, "cancel", str(array_id))
    assert result.returncode != 0 and result.stderr == "mgpu: cannot cancel job %d: already ended\n" % array_id


def test_a_half_finished_array_survives_a_master_sigkill(cluster):
    d = workdir(ALICE, "arr-restart")
    array_id = cluster.submit(ALICE, "--array", "1-6%2", "--gpus", "0", "--", "sh", "-c", gated_task(d))
    wait_tasks(cluster, array_id, "RUNNING", [1, 2])
    open_gate(d, 1)
    open_gate(d, 2)
    rows = wait_tasks(cluster, array_id, ("COMPLETED", "RUNNING"), [1, 2, 3, 4])
    rows = wait_tasks(cluster, array_id, "RUNNING", [3, 4])
    for task_id in (3, 4):
        cluster.wait_supervised(rows[task_id]["id"])
    before = array_rows(cluster, array_id)

    cluster.master.kill()
    cluster.master.start()

    after = array_rows(cluster, array_id)
    assert [after[t]["state"] for t in (1, 2)] == ["COMPLETED", "COMPLETED"]
    assert [(after[t]["state"], after[t]["id"]) for t in (3, 4)] == [("RUNNING", before[t]["id"]) for t in (3, 4)]
    assert after[None]["array_tasks"] == "5-6" and after[None]["state"] == "PENDING"
    for task_id in (3, 4, 5, 6):
        wait_for(lambda: task_id in running_tasks(cluster, array_id), timeout=30,
                 what="task %d to run\n%s" % (task_id, cluster.master.log[-2000:]))
        assert len(running_tasks(cluster, array_id)) <= 2
        open_gate(d, task_id)
    wait_tasks(cluster, array_id, "COMPLETED", range(1, 7))
    assert sorted(int(t) for t in read(os.path.join(d, "starts")).split()) == [1, 2, 3, 4, 5, 6]  # each once
    assert max(int(line) for line in read(os.path.join(d, "seen")).split()) <= 2
    new = cluster.submit(ALICE, "--gpus", "0", "--", "true")
    assert new > max(row["id"] for row in after.values())


def test_bad_specs_and_srun_i_are_refused_with_one_line(cluster):
    for spec, why in (("5-1", "5-1 ends before it begins"),
                      ("1-5000000", "task ids go from 0 to 3999999"),
                      ("1-3%0", "the limit after % goes from 1 to 1000000"),
                      ("x", "'x' is not ID, FIRST-LAST or FIRST-LAST:STEP")):
        result = cluster.run(ALICE, "srun", "--array", spec, "--", "true")
        assert result.returncode != 0 and result.stdout == ""
        assert result.stderr == "mgpu: bad --array '%s': %s\n" % (spec, why), result.stderr
    result = cluster.run(ALICE, "srun", "-i", "--array", "1-3", "--", "true")
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("mgpu: srun -i cannot follow a job array")
    result = cluster.run(ALICE, "srun", "--array", "1-3", "--nodes", "2", "--", "true")
    assert result.returncode != 0 and result.stderr.count("\n") == 1 and "--array with --nodes" in result.stderr
    assert "Traceback" not in cluster.master.log
    assert not [row for row in cluster.queue()["jobs"] if row["user"] == ALICE]


def test_sbatch_array_runs_three_tasks(cluster):
    home = pwd.getpwnam(BOB).pw_dir
    d = workdir(BOB, "arr-sbatch")
    script = os.path.join(d, "sweep.sh")
    with open(script, "w") as handle:
        handle.write("#!/bin/sh\n#SBATCH --array=1-3\n#SBATCH --gpus=0\n#SBATCH --output=%s/sb-%%A_%%a.out\n"
                     "echo task $MGPU_ARRAY_TASK_ID arg $1\n" % d)
    uid, gid, _ = user_ids(BOB)
    os.chown(script, uid, gid)
    os.chmod(script, 0o755)
    result = cluster.run(BOB, "sbatch", script, "x", cwd=home)
    assert result.returncode == 0, result.stderr
    array_id = int(re.fullmatch(r"Submitted batch job (\d+)\n", result.stdout).group(1))
    wait_tasks(cluster, array_id, "COMPLETED", [1, 2, 3])
    for task_id in (1, 2, 3):
        assert read(os.path.join(d, "sb-%d_%d.out" % (array_id, task_id))) == "task %d arg x\n" % task_id
