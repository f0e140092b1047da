"""What the master asks of the controller when its store cannot be written (take back a
submission, take back a start) and when the host was renamed between two runs."""

from mgpu.controller import Launch, Save
from mgpu.model import JobState

from test_controller import ALICE, BOB, T0, Logged, Saved, make, queue, running_job, submitted

PENDING, RUNNING = JobState.PENDING, JobState.RUNNING


def test_withdraw_forgets_a_submission_that_was_not_stored():
    c = make(gpus=1)
    kept = submitted(c, ALICE)
    gone = submitted(c, BOB)
    c.withdraw(gone)
    assert [row["id"] for row in queue(c, all=True)["jobs"]] == [kept]
    started = [a.job.id for a in c.schedule(T0) if isinstance(a, Launch)]
    assert started == [kept]
    assert gone not in c.jobs and gone not in c.pending


def test_unstart_puts_a_job_back_at_its_place_in_the_queue():
    c = make(gpus=1)
    first = submitted(c, ALICE)
    second = submitted(c, BOB)
    launches = [a for a in c.schedule(T0) if isinstance(a, Launch)]
    assert [a.job.id for a in launches] == [first]
    actions = c.unstart(first, T0 + 1, "not started: the state database cannot be written")
    assert actions == [Saved(first, PENDING, (RUNNING, PENDING, "not started: the state database cannot be "
                                              "written", "store"), at=T0 + 1),
                       Logged("job %d not started" % first)]
    rows = queue(c)["jobs"]
    assert [(r["id"], r["state"], r["position"]) for r in rows] == [(first, PENDING, 1), (second, PENDING, 2)]
    assert rows[0]["gpu_ids"] == [] and rows[0]["node"] is None
    # It starts again first, with a new attempt number.
    launches = [a for a in c.schedule(T0 + 2) if isinstance(a, Launch)]
    assert [(a.job.id, a.job.attempt) for a in launches] == [(first, 2)]
    assert c.unstart(12345, T0, "x") == []


def test_rehome_moves_running_jobs_to_the_hosts_new_name():
    c = make(nodes={"old": 1, "new": 1})
    job_id = running_job(c)
    job = c.jobs[job_id]
    old = job.node
    new = "new" if old == "old" else "old"
    actions = c.rehome([job_id], new, T0)
    assert actions == [Logged("job %d ran on node %s: this host is now called %s" % (job_id, old, new)),
                       Saved(job_id, RUNNING)]
    assert job.node == new
    assert c.rehome([job_id], new, T0) == []
    assert all(not isinstance(a, Save) for a in c.rehome([999], new, T0))
