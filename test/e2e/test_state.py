"""The master's state directory: one master per directory, durable and private records, a host
renamed between two runs, records that cannot be loaded, and a full disk."""

import json
import os
import sqlite3
import subprocess

import pytest

from harness import Master, wait_for

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def _db(cluster):
    return sqlite3.connect(os.path.join(cluster.master.state_dir, "mgpu.db"))


def test_a_second_master_on_the_same_state_directory_is_refused(cluster):
    job = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "30")
    cluster.wait_state(job, "RUNNING")
    cluster.wait_supervised(job)
    records = sorted(os.listdir(os.path.join(cluster.master.state_dir, "jobs")))
    second = Master(cluster.installation, cluster.master.workdir)
    second.socket = os.path.join(cluster.master.workdir, "other.sock")
    second.log_path = os.path.join(cluster.master.workdir, "second.log")
    second.argv[second.argv.index("--socket") + 1] = second.socket
    second.start(wait=False)
    try:
        assert second.process.wait(20) == 1
    finally:
        second.stop()
    lines = second.log.strip().splitlines()
    assert lines == ["mgpu: the state directory %s is in use by another mgpu daemon (pid %d): one daemon "
                     "per state directory; stop it first or use another --state-dir"
                     % (cluster.master.state_dir, cluster.master.process.pid)], second.log
    assert not os.path.exists(second.socket)
    # The first master and its job are untouched.
    assert sorted(os.listdir(os.path.join(cluster.master.state_dir, "jobs"))) == records
    assert cluster.job(job)["state"] == "RUNNING"
    cluster.run(ALICE, "cancel", job)
    cluster.wait_state(job, "CANCELLED")


def test_a_restart_under_another_node_name_keeps_the_running_jobs(cluster):
    argv = cluster.master.argv
    argv += ["--node-name", "old-name"]
    cluster.master.stop()
    cluster.master.start()
    job = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "60")
    assert cluster.wait_state(job, "RUNNING")["node"] == "old-name"
    cluster.wait_supervised(job)
    pending = cluster.submit(BOB, "--gpus", "2", "--", "true")
    cluster.master.kill()
    argv[argv.index("old-name")] = "new-name"
    cluster.master.start()
    running = cluster.job(job)
    assert (running["state"], running["node"]) == ("RUNNING", "new-name")
    assert "job %d ran on node old-name: this host is now called new-name" % job in cluster.master.log
    assert cluster.job(pending)["state"] == "PENDING"  # its GPUs are still held by the job
    cluster.run(ALICE, "cancel", job)
    assert cluster.wait_state(job, "CANCELLED")["node"] == "new-name"
    assert cluster.wait_state(pending, "COMPLETED")["node"] == "new-name"
    assert "internal error" not in cluster.master.log


def test_job_environments_are_deleted_when_the_job_ends(cluster):
    holder = cluster.submit(BOB, "--gpus", "2", "--", "sleep", "60")
    cluster.wait_state(holder, "RUNNING")
    pending = cluster.submit(BOB, "--gpus", "1", "--", "true")  # waits for the holder's GPUs
    cluster.run(BOB, "cancel", pending)
    ended = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--", "sh", "-c", "echo $SECRET_TOKEN",
                        env={"SECRET_TOKEN": "s3cret"})
    assert ended.stdout == "s3cret\n"
    waiting = cluster.run(ALICE, "srun", "--parsable", "--gpus", "1", "--", "true", env={"OTHER": "kept"})
    waiting = int(waiting.stdout)
    with _db(cluster) as db:
        envs = dict(db.execute("SELECT id, env FROM job_env").fetchall())
    assert pending not in envs and "s3cret" not in " ".join(envs.values())
    assert json.loads(envs[waiting])["OTHER"] == "kept"  # needed until it has run
    state_dir = cluster.master.state_dir
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    for name in os.listdir(state_dir):
        if name.startswith("mgpu.db"):
            assert os.stat(os.path.join(state_dir, name)).st_mode & 0o077 == 0, name


def test_records_that_cannot_be_loaded_are_set_aside_and_the_master_starts(cluster):
    holder = cluster.submit(BOB, "--gpus", "2", "--", "sleep", "60")
    cluster.wait_state(holder, "RUNNING")
    good = cluster.submit(ALICE, "--gpus", "1", "--", "true")  # waits for the holder's GPUs
    cluster.master.stop()
    with _db(cluster) as db:
        (record,) = db.execute("SELECT record FROM jobs WHERE id = ?", (good,)).fetchone()
        fields = json.loads(record)
        surrogate = dict(fields, id=good + 1, name="\ud800")
        huge = dict(fields, id=good + 2, time_limit=10 ** 400)
        db.executemany("INSERT INTO jobs (id, state, record) VALUES (?, 'PENDING', ?)",
                       [(good + 1, json.dumps(surrogate)), (good + 2, json.dumps(huge)),
                        (good + 3, "{not json")])
    cluster.master.start()
    log = cluster.master.log
    for job_id in (good + 1, good + 2, good + 3):
        assert "job %d: its stored record cannot be loaded" % job_id in log
    listed = cluster.queue(BOB)
    assert [j["id"] for j in listed["jobs"]] == [holder, good]
    table = cluster.run(BOB, "queue", "--all")
    assert table.returncode == 0 and str(good) in table.stdout
    with _db(cluster) as db:
        assert sorted(i for (i,) in db.execute("SELECT id FROM set_aside")) == [good + 1, good + 2, good + 3]
    cluster.master.stop()
    cluster.master.start()  # once set aside, they are not reported again
    assert cluster.master.log.count("job %d: its stored record cannot be loaded" % (good + 1)) == 1
    new = cluster.submit(BOB, "--gpus", "0", "--", "true")
    assert new > good + 3


@pytest.fixture
def small_state_disk(make_cluster):
    """A cluster whose state directory is a 2 MB tmpfs; unmounted afterwards."""
    if subprocess.run(["which", "mount"], capture_output=True).returncode != 0:
        pytest.skip("needs mount")
    mounted = []

    def make():
        cluster = make_cluster(start=False, fake_gpus="1:16000")
        os.makedirs(cluster.master.state_dir)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                               cluster.master.state_dir], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here: %s" % done.stderr.strip())
        mounted.append(cluster)
        cluster.master.start()
        return cluster

    yield make
    for cluster in mounted:
        cluster.master.stop()
        subprocess.run(["umount", "-l", cluster.master.state_dir], capture_output=True)


def test_a_full_disk_refuses_submits_and_keeps_serving_queue_and_cancel(small_state_disk):
    cluster = small_state_disk()
    holder = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "120")
    cluster.wait_state(holder, "RUNNING")
    cluster.wait_supervised(holder)
    acknowledged = [cluster.submit(BOB, "--gpus", "1", "--", "true") for _ in range(3)]
    filler = os.path.join(cluster.master.state_dir, "filler")
    subprocess.run(["dd", "if=/dev/zero", "of=%s" % filler, "bs=64k"], capture_output=True)
    refused = None
    for _ in range(300):  # SQLite may still have room in pages it allocated before
        result = cluster.run(BOB, "srun", "--parsable", "--gpus", "1", "--name", "x" * 200, "--", "true")
        if result.returncode != 0:
            refused = result
            break
        acknowledged.append(int(result.stdout))
    assert refused is not None, "the disk never filled up"
    assert refused.returncode == 1
    assert refused.stderr == ("mgpu: the master cannot write its state database in %s (disk full?): new jobs "
                              "are refused until it can; queue and cancel still work\n" % cluster.master.state_dir)
    assert cluster.master.process.poll() is None, cluster.master.log
    # queue and cancel keep working
    listed = [j["id"] for j in cluster.queue(BOB)["jobs"]]
    assert listed == [holder] + acknowledged
    assert cluster.run(BOB, "cancel", acknowledged[0]).returncode == 0
    cluster.wait_state(acknowledged[0], "CANCELLED")
    again = cluster.run(BOB, "srun", "--gpus", "1", "--", "true")
    assert again.returncode == 1 and "disk full" in again.stderr
    # Space returns: everything is written, and the queue moves again.
    os.unlink(filler)
    wait_for(lambda: "can be written again" in cluster.master.log, timeout=10, what="the store to recover")
    later = cluster.submit(BOB, "--gpus", "1", "--", "true")
    cluster.run(ALICE, "cancel", holder)
    cluster.wait_state(holder, "CANCELLED")
    for job_id in acknowledged[1:] + [later]:
        cluster.wait_state(job_id, "COMPLETED", timeout=60)
    cluster.master.kill()
    cluster.master.start()
    states = {j["id"]: j["state"] for j in cluster.queue(BOB)["jobs"]}
    assert states[acknowledged[0]] == "CANCELLED"
    assert all(states[job_id] == "COMPLETED" for job_id in acknowledged[1:] + [later])
    assert "internal error" not in cluster.master.log
