"""No data lost: the master killed with SIGKILL and restarted keeps every job, and re-adopts
jobs that kept running under their supervisors."""

import os
import pwd
import signal

from harness import wait_for

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def test_sigkill_and_restart_loses_nothing(cluster):
    home = pwd.getpwnam(ALICE).pw_dir
    go = os.path.join(home, "go-on")
    done = cluster.submit(BOB, "--gpus", "0", "--", "sh", "-c", "exit 5")
    cluster.wait_state(done, "FAILED")
    # Runs across the restart and ends with a code of its own once told to.
    survivor = cluster.submit(ALICE, "--gpus", "2", "--", "sh", "-c",
                              "while [ ! -e %s ]; do sleep 0.1; done; echo finished; exit 7" % go)
    running = cluster.wait_state(survivor, "RUNNING")
    cluster.wait_supervised(survivor)
    queued = [cluster.submit(BOB, "--gpus", "1", "--priority", str(p), "--", "true") for p in (0, 5, 0)]
    before = {j["id"]: j for j in cluster.queue()["jobs"]}
    order_before = [j["id"] for j in sorted((j for j in before.values() if j["state"] == "PENDING"),
                                            key=lambda j: j["position"])]
    assert order_before == [queued[1], queued[0], queued[2]]

    cluster.master.kill()
    assert cluster.master.process.returncode == -signal.SIGKILL
    cluster.master.start()

    after = {j["id"]: j for j in cluster.queue()["jobs"]}
    assert after[done]["state"] == "FAILED" and after[done]["exit_code"] == 5
    assert after[survivor]["state"] == "RUNNING"
    assert after[survivor]["gpu_ids"] == running["gpu_ids"] == [0, 1]
    assert after[survivor]["start_time"] == running["start_time"]
    order_after = [j["id"] for j in sorted((j for j in after.values() if j["state"] == "PENDING"),
                                           key=lambda j: j["position"])]
    assert order_after == order_before
    for job_id in queued:
        assert after[job_id]["submit_time"] == before[job_id]["submit_time"]

    new = cluster.submit(BOB, "--gpus", "0", "--", "true")
    assert new > max(before)  # ids keep increasing

    open(go, "w").close()
    ended = cluster.wait_state(survivor, "FAILED")
    assert ended["exit_code"] == 7
    assert cluster.read_output(ALICE, survivor) == "finished\n"
    for job_id in queued:
        cluster.wait_state(job_id, "COMPLETED")
    assert "restored" in cluster.master.log


def test_a_job_that_ends_while_the_master_is_down_gets_its_exit_code(cluster):
    home = pwd.getpwnam(ALICE).pw_dir
    go = os.path.join(home, "end-now")
    job = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c",
                         "while [ ! -e %s ]; do sleep 0.05; done; exit 3" % go)
    cluster.wait_state(job, "RUNNING")
    cluster.wait_supervised(job)
    cluster.master.kill()
    open(go, "w").close()
    wait_for(lambda: '"exit_code"' in open(cluster.record_path(job)).read(),
             what="the supervisor to record the exit")
    cluster.master.start()
    ended = cluster.wait_state(job, "FAILED")
    assert ended["exit_code"] == 3


def test_graceful_stop_leaves_jobs_running(cluster):
    job = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "30")
    cluster.wait_state(job, "RUNNING")
    assert cluster.master.stop() == 0
    assert "1 running job carries on under its supervisor" in cluster.master.log
    cluster.master.start()
    assert cluster.job(job)["state"] == "RUNNING"
    cluster.run(ALICE, "cancel", job)
    cluster.wait_state(job, "CANCELLED")
