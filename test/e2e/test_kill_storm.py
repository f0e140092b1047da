"""No acknowledged job lost, none run twice, none stuck, while the master is SIGKILLed again and
again under a stream of submits; and a job whose supervisor or launcher helper is killed keeps
its GPUs until its processes are gone (no double booking)."""

import collections
import os
import pwd
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid

from harness import process_alive, wait_for

ALICE, BOB = "mgpu-alice", "mgpu-bob"
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")

STORM_SEED = 20240607
STORM_KILLS = 12
SUBMITTERS_PER_USER = 2
SETTLE_DEADLINE = 60


class Submitter(threading.Thread):
    """One user's stream of `mgpu srun` calls until told to stop; every acknowledgment kept."""

    def __init__(self, cluster, user, ran_file, seed, stop):
        super().__init__(daemon=True)
        self.cluster, self.user, self.ran_file, self.stop = cluster, user, ran_file, stop
        self.rng = random.Random(seed)
        self.acknowledged = []  # job ids srun reported with exit 0
        self.refused = 0  # srun calls that failed (the master was down or went down mid-call)
        self.hung = []  # srun calls that did not return in time

    def run(self):
        while not self.stop.is_set():
            gpus = "0" if self.rng.random() < 0.3 else "1"
            pause = self.rng.choice(("0.05", "0.1", "0.2", "0.3"))
            script = "echo $MGPU_JOB_ID >> %s; sleep %s" % (self.ran_file, pause)
            try:
                result = self.cluster.run(self.user, "srun", "--parsable", "--gpus", gpus, "--",
                                          "sh", "-c", script, timeout=30)
            except AssertionError as e:  # cluster.run's timeout
                self.hung.append(str(e)[:300])
                continue
            if result.returncode == 0 and result.stdout.strip().isdigit():
                self.acknowledged.append(int(result.stdout.strip()))
            else:
                self.refused += 1


def _ran_ids(path):
    with open(path) as handle:
        return [int(line) for line in handle.read().split()]


def test_kill_storm_loses_nothing_and_runs_nothing_twice(make_cluster):
    cluster = make_cluster(fake_gpus="4:16000")
    ran_dir = tempfile.mkdtemp(prefix="mgpu-storm-", dir="/tmp")
    os.chmod(ran_dir, 0o755)
    ran_files = {}
    for user in (ALICE, BOB):
        path = ran_files[user] = os.path.join(ran_dir, "ran-" + user)
        open(path, "w").close()
        account = pwd.getpwnam(user)
        os.chown(path, account.pw_uid, account.pw_gid)
    stop = threading.Event()
    submitters = [Submitter(cluster, user, ran_files[user], STORM_SEED + 100 * n + i, stop)
                  for n, user in enumerate((ALICE, BOB)) for i in range(SUBMITTERS_PER_USER)]
    rng = random.Random(STORM_SEED)
    started = time.monotonic()
    try:
        for submitter in submitters:
            submitter.start()
        time.sleep(1.0)
        for _ in range(STORM_KILLS):
            time.sleep(rng.uniform(0.2, 0.9))
            cluster.master.kill()
            time.sleep(rng.uniform(0.0, 0.3))
            cluster.master.start()
        time.sleep(rng.uniform(0.3, 0.8))
    finally:
        stop.set()
        for submitter in submitters:
            submitter.join(60)
    storm_seconds = time.monotonic() - started

    # Once more, after the storm: then everything acknowledged must reach a final state.
    cluster.master.kill()
    cluster.master.start()
    acknowledged = {}
    for submitter in submitters:
        for job_id in submitter.acknowledged:
            acknowledged[job_id] = submitter.user

    def settled():
        jobs = {j["id"]: j for j in cluster.queue()["jobs"]}
        if all(jobs.get(i, {}).get("state") in FINAL for i in acknowledged):
            return jobs
        return None

    try:
        jobs = wait_for(settled, timeout=SETTLE_DEADLINE, interval=0.5, what="every acknowledged job to end")
    except AssertionError:
        jobs = {j["id"]: j for j in cluster.queue()["jobs"]}

    ran = {user: collections.Counter(_ran_ids(path)) for user, path in ran_files.items()}
    ran_anywhere = collections.Counter()
    for counts in ran.values():
        ran_anywhere.update(counts)
    lost = sorted(i for i in acknowledged if i not in jobs)
    stuck = sorted(i for i in acknowledged if i in jobs and jobs[i]["state"] not in FINAL)
    duplicated = sorted(i for i, n in ran_anywhere.items() if n > 1)
    wrong_user = sorted(i for user, counts in ran.items() for i in counts
                        if i in jobs and jobs[i]["user"] != user)
    completed = [i for i in acknowledged if i in jobs and jobs[i]["state"] == "COMPLETED"]
    completed_not_once = sorted(i for i in completed if ran[acknowledged[i]][i] != 1)
    not_completed = sorted(i for i in acknowledged if i in jobs and jobs[i]["state"] in FINAL
                           and jobs[i]["state"] != "COMPLETED")
    states = collections.Counter(jobs[i]["state"] for i in acknowledged if i in jobs)
    hung = [h for s in submitters for h in s.hung]
    figures = ("kill storm: %d SIGKILLs in %.1f s; %d acknowledged, %d refused while down, %d srun hung; "
               "%d completed; lost %d, duplicated %d, stuck %d, completed-not-once %d, not completed %d, "
               "in the wrong user's file %d; final states %s" % (
                   STORM_KILLS + 1, storm_seconds, len(acknowledged), sum(s.refused for s in submitters),
                   len(hung), len(completed), len(lost), len(duplicated), len(stuck), len(completed_not_once),
                   len(not_completed), len(wrong_user), dict(states)))
    print("\n" + figures)
    details = []
    for name, ids in (("lost", lost), ("duplicated", duplicated), ("stuck", stuck),
                      ("completed but not run exactly once", completed_not_once),
                      ("not completed", not_completed), ("in the wrong user's file", wrong_user)):
        if ids:
            details.append("%s: %s" % (name, ", ".join(
                "%d (%s%s)" % (i, jobs[i]["state"], ": " + jobs[i]["reason"] if jobs[i].get("reason") else "")
                if i in jobs else str(i) for i in ids[:20])))
    shutil.rmtree(ran_dir, ignore_errors=True)
    message = figures + "\n" + "\n".join(details + hung[:3]) + "\nmaster log (tail):\n" + cluster.master.log[-3000:]
    assert len(acknowledged) >= 50, message  # the storm must have had something to lose
    assert not lost, message
    assert not duplicated, message
    assert not stuck, message
    assert not completed_not_once, message
    assert not wrong_user, message
    assert not not_completed, message  # only the master died: every job's supervisor carried on
    assert not hung, message


# ---------------------------------------------------------------------------------------------
# A job's supervisor or the launcher helper killed mid-job


def _marker():
    """A command line unique to one test (`sleep 300.N`) and a pgrep pattern for it that does
    not match a shell command line quoting the pattern."""
    number = "%09d" % (uuid.uuid4().int % 10**9)
    return "sleep 300.%s" % number, "sleep [3]00.%s" % number


def _parent(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def _descends_from(pid, ancestor):
    while pid and pid > 1:
        if pid == ancestor:
            return True
        pid = _parent(pid)
    return False


def _supervisor_pid(cluster, job_id, attempt=1):
    cluster.wait_supervised(job_id, attempt)
    record = wait_for(lambda: _read_json(cluster.record_path(job_id, attempt)), what="a readable record")
    sup_pid = record.get("sup_pid")
    assert sup_pid, "no supervisor pid in the record of job %d: %r" % (job_id, record)
    return sup_pid


def _read_json(path):
    import json
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _launcher_helper_pid(cluster, sup_pid):
    """The launcher helper of the master: the supervisor's parent when that is the master's
    descendant (forked by the helper), else the master's only child process."""
    master_pid = cluster.master.pid
    parent = _parent(sup_pid)
    if parent and parent != master_pid and _descends_from(parent, master_pid):
        return parent
    children = [int(n) for n in os.listdir("/proc") if n.isdigit() and _parent(int(n)) == master_pid]
    assert len(children) == 1, "cannot tell the launcher helper among the master's children %s" % children
    return children[0]


def _guarded_job(cluster, user, pattern):
    """A job on one GPU that reports whether the other job's processes still run when it starts."""
    return cluster.submit(user, "--gpus", "1", "--", "sh", "-c",
                          "if pgrep -f '%s' >/dev/null; then echo DOUBLE-BOOKED; else echo alone; fi" % pattern)


def _job_or_none(cluster, job_id):
    try:
        return cluster.job(job_id)
    except AssertionError:  # the master is not answering
        return None


def _one_gpu_held(make_cluster):
    """A one-GPU cluster whose GPU a job of alice's holds: (cluster, job id, its supervisor's pid,
    a pattern matching the job's process)."""
    cluster = make_cluster(fake_gpus="1:16000")
    marker, pattern = _marker()
    first = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c", "%s & wait" % marker)
    cluster.wait_state(first, "RUNNING")
    sup_pid = _supervisor_pid(cluster, first)
    wait_for(lambda: process_alive(pattern), what="the job's process")
    return cluster, first, sup_pid, pattern


def test_a_killed_supervisor_does_not_free_the_gpu_while_its_job_runs(make_cluster):
    cluster, first, sup_pid, pattern = _one_gpu_held(make_cluster)
    second = _guarded_job(cluster, BOB, pattern)
    assert cluster.job(second)["state"] == "PENDING"

    os.kill(sup_pid, signal.SIGKILL)
    # The first job may be ended (its processes stopped first) or kept running under the
    # master's own tracking; the second job must not start while a process of the first runs.
    wait_for(lambda: cluster.job(first)["state"] in FINAL or cluster.job(second)["state"] != "PENDING",
             timeout=10, what="the master to notice the supervisor's end")
    if cluster.job(first)["state"] not in FINAL:
        assert cluster.job(second)["state"] == "PENDING"
        assert cluster.run(ALICE, "cancel", first).returncode == 0
        cluster.wait_state(first, FINAL, timeout=20)
    ended = cluster.wait_state(second, FINAL, timeout=20)
    assert ended["state"] == "COMPLETED", ended
    output = cluster.read_output(BOB, second)
    assert output == "alone\n", "the GPU of job %d went to job %d while the first job's processes ran (%s)" % (
        first, second, cluster.job(first))
    assert not process_alive(pattern), "job %d's process outlived it (state %s)" % (first, cluster.job(first))


def test_a_killed_launcher_helper_loses_no_job_and_double_books_no_gpu(make_cluster):
    cluster, first, sup_pid, pattern = _one_gpu_held(make_cluster)
    helper = _launcher_helper_pid(cluster, sup_pid)
    assert helper != sup_pid

    os.kill(helper, signal.SIGKILL)
    second = _guarded_job(cluster, BOB, pattern)
    cpu_job = cluster.submit(BOB, "--gpus", "0", "--", "true")  # needs a launch

    # The master either starts a new helper, or stops with one line (non-zero) so that its
    # service manager restarts it; it never launches through a dead helper and carries on.
    def settled():
        if cluster.master.process.poll() is not None:
            return "master exited"
        job = _job_or_none(cluster, cpu_job)
        return "ran" if job and job["state"] in FINAL else None

    outcome = wait_for(settled, timeout=20, what="the master to launch again or stop")
    if outcome == "master exited":
        cluster.master.expect_exit()
        assert cluster.master.process.returncode > 0, cluster.master.log[-2000:]
        cluster.master.start()
    assert cluster.wait_state(cpu_job, FINAL)["state"] == "COMPLETED"
    assert cluster.job(first)["state"] == "RUNNING" and process_alive(pattern)  # its supervisor lives on
    assert cluster.job(second)["state"] == "PENDING"
    assert cluster.run(ALICE, "cancel", first).returncode == 0
    cluster.wait_state(first, "CANCELLED")
    ended = cluster.wait_state(second, FINAL)
    assert ended["state"] == "COMPLETED", ended
    assert cluster.read_output(BOB, second) == "alone\n"
    assert not process_alive(pattern)
