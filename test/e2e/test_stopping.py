"""Ending jobs: cancel and its permissions, whole process trees, the grace period, time limits
with the warning signal, requeue, and the time-slice context switch."""

import os
import pwd
import uuid

from harness import process_alive, wait_for

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def test_users_cancel_only_their_own_jobs(cluster):
    pending_blocker = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    mine = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    denied = cluster.run(BOB, "cancel", mine)
    assert denied.returncode == 1
    assert "permission denied" in denied.stderr and "belongs to %s" % ALICE in denied.stderr
    assert cluster.job(mine)["state"] == "PENDING"
    denied_user = cluster.run(BOB, "cancel", "--user", ALICE)
    assert denied_user.returncode == 1 and "permission denied" in denied_user.stderr
    assert cluster.job(pending_blocker)["state"] in ("PENDING", "RUNNING")
    ok = cluster.run(ALICE, "cancel", mine)
    assert ok.returncode == 0 and "cancelled" in ok.stdout
    job = cluster.job(mine)
    assert job["state"] == "CANCELLED" and job["exit_code"] is None
    missing = cluster.run(ALICE, "cancel", "9999")
    assert missing.returncode == 1 and "no such job" in missing.stderr
    bad = cluster.run(ALICE, "cancel", "abc")
    assert bad.returncode == 2 and "bad job id" in bad.stderr
    by_root = cluster.run(None, "cancel", "--user", ALICE)
    assert by_root.returncode == 0
    cluster.wait_state(pending_blocker, "CANCELLED")


def test_cancel_ends_the_whole_process_tree(cluster):
    marker = "sleep 300.%d" % (uuid.uuid4().int % 10**9)  # unique command lines to look for
    # A child in the job's group, and a grandchild that leaves it (setsid) to escape.
    script = "%s1 & setsid %s2 & wait" % (marker, marker)
    job = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c", script)
    cluster.wait_state(job, "RUNNING")
    # Whole command lines: the shell's own command line names both sleeps.
    child, escaped = "^%s1$" % marker, "^%s2$" % marker
    wait_for(lambda: process_alive(child) and process_alive(escaped), what="job processes")
    cluster.run(ALICE, "cancel", job)
    ended = cluster.wait_state(job, "CANCELLED")
    assert ended["exit_code"] is not None
    assert not process_alive(child)
    assert not process_alive(escaped)
    assert not process_alive(marker)  # nor the shell
    assert cluster.queue()["nodes"][0]["gpus"][0]["jobs"] == []


def test_gpus_stay_reserved_until_a_stubborn_job_is_killed(make_cluster):
    cluster = make_cluster(args=["--kill-grace", "3"])
    home = pwd.getpwnam(ALICE).pw_dir
    flag = os.path.join(home, "got-term")
    job = cluster.submit(ALICE, "--gpus", "2", "--", "sh", "-c",
                         "trap 'touch %s' TERM; while true; do sleep 0.1; done" % flag)
    cluster.wait_state(job, "RUNNING")
    waiting = cluster.submit(BOB, "--gpus", "1", "--", "true")
    assert cluster.run(ALICE, "cancel", job).returncode == 0
    wait_for(lambda: os.path.exists(flag), what="SIGTERM to reach the job")
    stopping = cluster.job(job)
    assert stopping["state"] == "RUNNING" and stopping["stopping"]
    assert cluster.job(waiting)["state"] == "PENDING"  # its GPUs are not free yet
    ended = cluster.wait_state(job, "CANCELLED", timeout=15)
    assert ended["exit_code"] == 128 + 9
    cluster.wait_state(waiting, "COMPLETED")
    assert "SIGKILL" in cluster.master.log


def test_time_limit_with_warning_signal(cluster):
    home = pwd.getpwnam(ALICE).pw_dir
    script = ("trap 'echo warned-at-$(date +%s)' USR2; trap 'echo got-term; exit 143' TERM; "
              "echo start-at-$(date +%s); while true; do sleep 0.1; done")
    job = cluster.submit(ALICE, "--gpus", "1", "--time-limit", "4", "--signal", "USR2@2", "--chdir", home,
                         "--", "sh", "-c", script)
    ended = cluster.wait_state(job, "TIMEOUT", timeout=20)
    output = cluster.read_output(ALICE, job)
    assert "got-term" in output
    start = int(output.split("start-at-")[1].split()[0])
    warned = int(output.split("warned-at-")[1].split()[0])
    assert 1 <= warned - start <= 3
    assert ended["end_time"] - ended["start_time"] >= 4
    assert "reached its time limit" in ended["reason"]


def test_no_warning_signal_unless_asked(cluster):
    # SIGUSR1 would kill a job that does not handle it: without --signal, none is sent.
    job = cluster.submit(ALICE, "--gpus", "0", "--time-limit", "2", "--", "sh", "-c",
                         "trap 'echo term; exit 0' TERM; while true; do sleep 0.1; done")
    cluster.wait_state(job, "TIMEOUT", timeout=15)
    output = cluster.read_output(ALICE, job)
    assert output.endswith("term\n") and "User defined signal" not in output


def test_requeue_on_time_limit_goes_back_to_the_queue(cluster):
    job = cluster.submit(ALICE, "--gpus", "1", "--time-limit", "2", "--requeue", "--", "sh", "-c",
                         "echo attempt restart=$MGPU_RESTART_COUNT; sleep 30")
    wait_for(lambda: cluster.job(job)["restarts"] >= 1, timeout=20, what="a requeue")
    assert cluster.job(job)["state"] in ("PENDING", "RUNNING")
    cluster.wait_state(job, "RUNNING")
    wait_for(lambda: "restart=1" in cluster.read_output(ALICE, job), what="second attempt output")
    assert "restart=0" in cluster.read_output(ALICE, job)  # the first attempt's output is kept
    assert "requeue job %d" % job in cluster.master.log
    cluster.run(ALICE, "cancel", job)
    cluster.wait_state(job, "CANCELLED")


def test_time_slice_switches_out_a_long_job_while_others_wait(make_cluster):
    cluster = make_cluster(args=["--max-job-time", "2"])
    long_job = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "60")
    cluster.wait_state(long_job, "RUNNING")
    alone = cluster.job(long_job)
    waiting = cluster.submit(BOB, "--gpus", "2", "--", "sleep", "60")
    cluster.wait_state(waiting, "RUNNING", timeout=20)
    switched = cluster.job(long_job)
    assert switched["state"] == "PENDING" and switched["restarts"] == 1
    assert "requeue job %d (requeued: ran past the 0:02 time slice" % long_job in cluster.master.log
    assert alone["restarts"] == 0


def test_time_slice_leaves_a_job_alone_when_nobody_waits(make_cluster):
    cluster = make_cluster(args=["--max-job-time", "1"])
    job = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "4")
    other = cluster.submit(BOB, "--gpus", "1", "--", "sleep", "4")  # fits beside it
    done = cluster.wait_state(job, "COMPLETED", timeout=20)
    assert done["restarts"] == 0
    assert cluster.wait_state(other, "COMPLETED")["restarts"] == 0
