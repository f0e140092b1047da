"""A job as its user sees it: identity, environment, output files, exit codes, streaming."""

import json
import os
import pwd
import signal
import subprocess
import time

from harness import TEST_GROUP, read_line, send_as, wait_for, user_ids

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def test_job_runs_as_submitter_with_granted_gpus(cluster):
    script = ("id -u; id -g; id -G; echo HOME=$HOME USER=$USER LOGNAME=$LOGNAME; pwd; "
              "echo CVD=$CUDA_VISIBLE_DEVICES ORDER=$CUDA_DEVICE_ORDER ID=$MGPU_JOB_ID GPUS=$MGPU_GPU_IDS; "
              "echo END=${MGPU_JOB_END_TIME:-none} MINE=$MY_VAR")
    result = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "2", "--", "sh", "-c", script,
                         env={"MY_VAR": "from-srun"}, cwd="/tmp")
    assert result.returncode == 0, result.stderr
    uid, gid, groups = user_ids(ALICE)
    lines = result.stdout.splitlines()
    assert lines[0] == str(uid)
    assert lines[1] == str(gid)
    job_groups = set(map(int, lines[2].split()))
    extra_gid = group_id(TEST_GROUP)
    assert extra_gid in job_groups, "the job of %s lacks its supplementary group %s (%d): id -G says %s" % (
        ALICE, TEST_GROUP, extra_gid, lines[2])
    assert job_groups == {gid} | set(groups)  # initgroups: the user's groups, none of root's
    home = pwd.getpwnam(ALICE).pw_dir
    assert lines[3] == "HOME=%s USER=%s LOGNAME=%s" % (home, ALICE, ALICE)
    assert lines[4] == "/tmp"
    job_id = int(lines[5].split("ID=")[1].split()[0])
    assert lines[5] == "CVD=0,1 ORDER=PCI_BUS_ID ID=%d GPUS=0,1" % job_id
    assert lines[6] == "END=none MINE=from-srun"
    job = cluster.job(job_id)
    assert job["state"] == "COMPLETED" and job["exit_code"] == 0 and job["user"] == ALICE


def group_id(name):
    """The gid of a group, as the system's name service says (getent, not only /etc/group)."""
    entry = subprocess.run(["getent", "group", name], capture_output=True, text=True, check=True).stdout
    return int(entry.split(":")[2])


def test_a_job_gets_its_own_users_groups_only(cluster):
    # bob is not in TEST_GROUP: his job must not get it (nor any group of root's or alice's).
    extra_gid = group_id(TEST_GROUP)
    uid, gid, groups = user_ids(BOB)
    assert extra_gid not in groups
    result = cluster.run(BOB, "srun", "-i", "-q", "--gpus", "0", "--", "id", "-G")
    assert result.returncode == 0, result.stderr
    assert set(map(int, result.stdout.split())) == {gid} | set(groups)


def test_background_submit_writes_output_as_user(cluster):
    result = cluster.run(ALICE, "srun", "--gpus", "1", "--time-limit", "1:00", "--",
                         "sh", "-c", "echo out; echo err >&2; echo END=$MGPU_JOB_END_TIME")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Submitted job ")
    job_id = int(result.stdout.split()[2])
    home = pwd.getpwnam(ALICE).pw_dir
    assert result.stdout == "Submitted job %d (output: %s/.mgpu/logs/%d.out)\n" % (job_id, home, job_id)
    job = cluster.wait_state(job_id, "COMPLETED")
    path = os.path.join(pwd.getpwnam(ALICE).pw_dir, ".mgpu", "logs", "%d.out" % job_id)
    info = os.stat(path)
    assert info.st_uid == pwd.getpwnam(ALICE).pw_uid
    text = cluster.read_output(ALICE, job_id)
    assert "out\n" in text and "err\n" in text
    end = int(text.split("END=")[1])
    assert abs(end - (job["start_time"] + 60)) <= 1


def test_output_path_with_job_id_and_chdir(cluster):
    home = pwd.getpwnam(BOB).pw_dir
    job_id = cluster.submit(BOB, "--gpus", "0", "--chdir", home, "--output", "run-%j.log", "--", "pwd")
    cluster.wait_state(job_id, "COMPLETED")
    with open(os.path.join(home, "run-%d.log" % job_id)) as handle:
        assert handle.read() == home + "\n"


def test_output_file_is_opened_after_dropping_privileges(cluster):
    # /root is not writable by alice: srun refuses at once, and a request sent past srun's
    # check makes the job fail to open it rather than root creating it.
    result = cluster.run(ALICE, "srun", "-i", "--gpus", "0", "--output", "/root/owned-by-root-%j.log",
                         "--", "true")
    assert (result.returncode, result.stderr) == (1, "mgpu: --output /root/owned-by-root-%j.log: permission "
                                                     "denied (you cannot write in /root)\n")
    assert cluster.queue(ALICE)["jobs"] == []
    frame = {"v": 1, "type": "submit", "command": ["true"], "cwd": "/tmp", "env": {"PATH": "/usr/bin:/bin"},
             "gpus": 0, "output": "/root/owned-by-root-%j.log"}
    reply, = send_as(cluster, ALICE, [json.dumps(frame) + "\n"])
    job = cluster.wait_state(reply["result"]["job_id"], "FAILED")
    assert "cannot open output /root/owned-by-root-" in job["reason"]
    assert not any(name.startswith("owned-by-root-") for name in os.listdir("/root"))


def test_exit_codes_and_signals_as_slurm_reports_them(cluster):
    failed = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3
    killed = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 128 + 9
    assert "killed by signal 9" in killed.stderr
    missing = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--env-setup-cmd", "true", "--",
                          "no-such-program-xyz")  # past the client's check: the setup might provide it
    assert missing.returncode == 127
    assert "no-such-program-xyz: not found" in missing.stderr
    jobs = {j["command"][-1]: j for j in cluster.queue(ALICE)["jobs"]}
    assert jobs["exit 3"]["state"] == "FAILED" and jobs["exit 3"]["exit_code"] == 3
    assert jobs["kill -9 $$"]["state"] == "FAILED" and jobs["kill -9 $$"]["exit_code"] == 137
    ok = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--", "true")
    assert ok.returncode == 0


def test_interactive_streams_stdout_and_stderr_live(cluster):
    process = cluster.start(ALICE, "srun", "-i", "--gpus", "1", "--", "sh", "-c",
                            "echo first; echo to-stderr >&2; sleep 30; echo never")
    first = read_line(process.stdout, what="the job's first line")
    assert first == "first\n"  # arrives while the job is still running
    job_id = wait_for(lambda: [j["id"] for j in cluster.queue(ALICE)["jobs"] if j["state"] == "RUNNING"])[0]
    cluster.run(ALICE, "cancel", job_id)
    out, err = process.communicate(timeout=20)
    assert "never" not in out
    assert "to-stderr" in err
    assert "running on" in err and "CANCELLED" in err
    assert process.returncode == 128 + signal.SIGTERM


def test_interactive_reports_queue_position_then_runs(cluster):
    blocker = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    cluster.wait_state(blocker, "RUNNING")
    process = cluster.start(BOB, "srun", "-i", "--gpus", "2", "--", "echo", "got-gpus")
    waiting = read_line(process.stderr, what="srun -i to report the queue position")
    assert "queued (position 1)" in waiting and "Resources" in waiting
    cluster.run(ALICE, "cancel", blocker)
    out, err = process.communicate(timeout=20)
    assert out == "got-gpus\n"
    assert process.returncode == 0


def test_ctrl_c_detaches_and_leaves_the_job_running(cluster):
    process = cluster.start(ALICE, "srun", "-i", "--gpus", "1", "--", "sh", "-c", "echo started; sleep 30")
    assert read_line(process.stdout, what="the job's first line") == "started\n"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    assert "detached from job" in err and "it keeps running" in err and "mgpu cancel" in err
    job_id = int(err.split("detached from job ")[1].split(";")[0])
    time.sleep(0.3)
    assert cluster.job(job_id)["state"] == "RUNNING"
    assert cluster.run(ALICE, "cancel", job_id).returncode == 0
    cluster.wait_state(job_id, "CANCELLED")


def test_ctrl_c_while_queued_detaches_and_leaves_the_job_queued(cluster):
    blocker = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    cluster.wait_state(blocker, "RUNNING")
    process = cluster.start(BOB, "srun", "-i", "--gpus", "1", "--", "echo", "later")
    assert "queued (position 1)" in read_line(process.stderr, what="srun -i to report the queue position")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    job_id = int(err.split("detached from job ")[1].split(";")[0])
    assert "it stays in the queue" in err and "mgpu cancel %d" % job_id in err
    assert cluster.job(job_id)["state"] == "PENDING"
    cluster.run(ALICE, "cancel", blocker)
    cluster.wait_state(job_id, "COMPLETED")


def test_env_setup_cmd_runs_in_the_jobs_shell_first(cluster):
    home = pwd.getpwnam(ALICE).pw_dir
    result = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--env-setup-cmd",
                         "export GREETING=hello-from-setup; cd %s" % home, "--", "sh", "-c", "echo $GREETING; pwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello-from-setup", home]
    failing = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--env-setup-cmd", "false", "--", "echo", "ran")
    assert failing.returncode != 0 and "ran" not in failing.stdout


def test_a_job_can_run_mgpu_itself(cluster):
    result = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "1", "--", "sh", "-c",
                         "mgpu queue --json; env")
    assert result.returncode == 0, result.stderr
    assert '"state": "RUNNING"' in result.stdout
    names = [line.split("=", 1)[0] for line in result.stdout.splitlines() if "=" in line]
    assert not [n for n in names if n.startswith(("_PYI", "_MEI", "PYINSTALLER"))]
