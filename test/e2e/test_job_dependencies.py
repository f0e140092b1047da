"""`mgpu srun --dependency` with a real master and real users: each type (afterok, afternotok,
afterany, after), one that can never hold ending CANCELLED with its reason in `mgpu queue --all`,
a chain cancelled whole, bad specs refused with one line, and a dependency that outlasts a
restart of the master. Jobs are gated on files the test creates; every wait polls against a
deadline."""

import os
import pwd
import signal

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def gate_path(user, name):
    path = os.path.join(pwd.getpwnam(user).pw_dir, name)
    if os.path.exists(path):
        os.unlink(path)
    return path


def gated(cluster, user, gate, *options, exit_code=0):
    """A job that runs until `gate` exists, then exits with `exit_code`."""
    return cluster.submit(user, *options, "--", "sh", "-c",
                          "while [ ! -e %s ]; do sleep 0.05; done; exit %d" % (gate, exit_code))


def open_gate(path):
    open(path, "w").close()


def reason(cluster, job_id):
    return cluster.job(job_id)["reason"]


def test_afterok_runs_after_a_success(cluster):
    gate = gate_path(ALICE, "dep-ok")
    first = gated(cluster, ALICE, gate, "--gpus", "1")
    second = cluster.submit(ALICE, "--gpus", "1", "--dependency", "afterok:%d" % first, "--", "echo", "second ran")
    cluster.wait_state(first, "RUNNING")
    waiting = cluster.job(second)
    # A GPU is free, but the job waits for the other one to complete.
    assert waiting["state"] == "PENDING"
    assert waiting["reason"] == "Dependency: waits for job %d to complete (afterok:%d)" % (first, first)
    assert waiting["dependency"] == "afterok:%d" % first
    assert waiting["position"] is None
    open_gate(gate)
    done = cluster.wait_state(second, ("COMPLETED", "FAILED", "CANCELLED"))
    assert done["state"] == "COMPLETED", done
    ended = cluster.job(first)
    assert ended["state"] == "COMPLETED" and done["start_time"] >= ended["end_time"]
    assert cluster.read_output(ALICE, second) == "second ran\n"


def test_afternotok_runs_after_a_failure(cluster):
    gate = gate_path(ALICE, "dep-notok")
    first = gated(cluster, ALICE, gate, "--gpus", "0", exit_code=3)
    second = cluster.submit(ALICE, "--gpus", "0", "-d", "afternotok:%d" % first, "--", "true")
    cluster.wait_state(first, "RUNNING")
    assert reason(cluster, second) == "Dependency: waits for job %d to fail (afternotok:%d)" % (first, first)
    open_gate(gate)
    assert cluster.wait_state(second, ("COMPLETED", "FAILED", "CANCELLED"))["state"] == "COMPLETED"
    assert cluster.job(first)["state"] == "FAILED"


def test_afterany_runs_after_either_end(cluster):
    gate = gate_path(BOB, "dep-any")
    failing = gated(cluster, BOB, gate, "--gpus", "0", exit_code=1)
    succeeding = gated(cluster, BOB, gate, "--gpus", "0")
    after_both = cluster.submit(BOB, "--gpus", "0", "-d", "afterany:%d:%d" % (failing, succeeding), "--", "true")
    cluster.wait_state(succeeding, "RUNNING")
    assert reason(cluster, after_both).startswith("Dependency: waits for job %d to end" % failing)
    open_gate(gate)
    assert cluster.wait_state(after_both, ("COMPLETED", "FAILED", "CANCELLED"))["state"] == "COMPLETED"
    assert [cluster.job(i)["state"] for i in (failing, succeeding)] == ["FAILED", "COMPLETED"]


def test_after_starts_once_the_other_started(cluster):
    gate = gate_path(ALICE, "dep-after")
    holder = gated(cluster, ALICE, gate, "--gpus", "2")           # takes every GPU
    cluster.wait_state(holder, "RUNNING")
    gate2 = gate_path(ALICE, "dep-after-2")
    first = gated(cluster, ALICE, gate2, "--gpus", "1")            # waits for the holder
    follower = cluster.submit(ALICE, "--gpus", "0", "-d", "after:%d" % first, "--", "true")
    assert cluster.job(first)["state"] == "PENDING"
    assert reason(cluster, follower) == "Dependency: waits for job %d to start (after:%d)" % (first, first)
    assert cluster.job(follower)["state"] == "PENDING"
    open_gate(gate)
    # The follower runs to its end while the job it waited for still runs.
    assert cluster.wait_state(follower, ("COMPLETED", "FAILED", "CANCELLED"))["state"] == "COMPLETED"
    assert cluster.job(first)["state"] == "RUNNING"
    open_gate(gate2)
    cluster.wait_state(first, "COMPLETED")


def test_a_dependency_never_satisfied_ends_cancelled_with_its_reason_shown(cluster):
    gate = gate_path(ALICE, "dep-never")
    first = gated(cluster, ALICE, gate, "--gpus", "1", exit_code=4)
    second = cluster.submit(ALICE, "--gpus", "1", "-d", "afterok:%d" % first, "--", "true")
    cluster.wait_state(first, "RUNNING")
    open_gate(gate)
    cancelled = cluster.wait_state(second, ("CANCELLED", "COMPLETED", "FAILED"))
    why = "dependency never satisfied: job %d ended FAILED (afterok:%d)" % (first, first)
    assert cancelled["state"] == "CANCELLED" and cancelled["reason"] == why
    assert cancelled["start_time"] is None
    table = cluster.run(ALICE, "queue", "--all")
    assert table.returncode == 0, table.stderr
    line = [l for l in table.stdout.splitlines() if l.split()[:1] == [str(second)]]
    assert line and "CANCELLED" in line[0] and why in line[0], table.stdout
    # Now that it ended FAILED, a new afterok on it is refused at once.
    refused = cluster.run(ALICE, "srun", "-d", "afterok:%d" % first, "--", "true")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "mgpu: --dependency afterok:%d can never be satisfied: job %d ended FAILED" % (first, first)]


def test_a_chain_is_cancelled_whole(cluster):
    gate = gate_path(BOB, "dep-chain")
    first = gated(cluster, BOB, gate, "--gpus", "1")
    second = cluster.submit(BOB, "--gpus", "1", "-d", "afterok:%d" % first, "--", "true")
    third = cluster.submit(BOB, "--gpus", "1", "-d", "afterok:%d" % second, "--", "true")
    cleanup = cluster.submit(BOB, "--gpus", "0", "-d", "afterany:%d" % third, "--", "true")
    cluster.wait_state(first, "RUNNING")
    assert reason(cluster, third) == "Dependency: waits for job %d to complete (afterok:%d)" % (second, second)
    result = cluster.run(BOB, "cancel", first)
    assert result.returncode == 0, result.stderr
    cluster.wait_state(first, "CANCELLED")
    for job_id, before in ((second, first), (third, second)):
        job = cluster.wait_state(job_id, "CANCELLED")
        assert job["reason"] == "dependency never satisfied: job %d ended CANCELLED (afterok:%d)" % (before, before)
    assert cluster.wait_state(cleanup, ("COMPLETED", "FAILED", "CANCELLED"))["state"] == "COMPLETED"


def test_bad_dependencies_are_refused_with_one_line(cluster):
    existing = cluster.submit(ALICE, "--gpus", "0", "--", "true")
    for spec, words in (("afterok:%d" % (existing + 1000), "no job %d" % (existing + 1000)),
                        ("singleton", "singleton is not supported"),
                        ("afterok:%d?afterany:%d" % (existing, existing), "'?' (any one of) is not supported"),
                        ("afterok:x", "bad job id 'x'"),
                        ("afterok:" + ":".join(str(i) for i in range(1, 1200)), "more than 1000 job ids")):
        result = cluster.run(ALICE, "srun", "--dependency", spec, "--", "true")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and words in lines[0], (spec, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_dependency_outlasts_a_restart_of_the_master(cluster):
    gate = gate_path(ALICE, "dep-restart")
    first = gated(cluster, ALICE, gate, "--gpus", "1")
    cluster.wait_state(first, "RUNNING")
    cluster.wait_supervised(first)
    second = cluster.submit(ALICE, "--gpus", "1", "-d", "afterok:%d" % first, "--", "echo", "after restart")
    failed_chain = cluster.submit(ALICE, "--gpus", "1", "-d", "afternotok:%d" % first, "--", "true")
    cluster.master.kill()
    assert cluster.master.process.returncode == -signal.SIGKILL
    cluster.master.start()
    waiting = cluster.job(second)
    assert waiting["state"] == "PENDING" and waiting["dependency"] == "afterok:%d" % first
    assert waiting["reason"] == "Dependency: waits for job %d to complete (afterok:%d)" % (first, first)
    assert cluster.job(first)["state"] == "RUNNING"
    open_gate(gate)
    assert cluster.wait_state(second, ("COMPLETED", "FAILED", "CANCELLED"))["state"] == "COMPLETED"
    assert cluster.read_output(ALICE, second) == "after restart\n"
    never = cluster.wait_state(failed_chain, "CANCELLED")
    assert never["reason"] == "dependency never satisfied: job %d ended COMPLETED (afternotok:%d)" % (first, first)
