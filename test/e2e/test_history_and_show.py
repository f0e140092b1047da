"""`mgpu history`, `mgpu show` and `mgpu queue -j/--me` with a real master and real users: what
each user sees of finished jobs (also after a restart and beyond keep_finished), every field
of one job, and the RESTARTS column after a requeue."""

import json

from harness import request, wait_for

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def history(cluster, user, *args):
    if "--since" not in args and "-j" not in args:
        args += ("--since", "1d")  # the default, since midnight, would miss jobs of a test run across it
    result = cluster.run(user, "history", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def history_ids(cluster, user, *args):
    return [job["id"] for job in history(cluster, user, *args)["jobs"]]


def finished(cluster, user, *args):
    job_id = cluster.submit(user, "--gpus", "0", *args)
    cluster.wait_state(job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    return job_id


def cell(lines, line, header):
    """The cell of column `header` in one line of a table (columns are left-aligned under their
    headers; a cell may hold spaces)."""
    head = lines[0]
    start = head.index(header)
    rest = head[start + len(header):]
    width = len(header) + len(rest) - len(rest.lstrip())
    return line[start:start + width].strip() if rest.strip() else line[start:].strip()


def one_line_error(result, code=1):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def test_history_lists_finished_jobs_with_exit_codes_and_times(cluster):
    ok = finished(cluster, ALICE, "--name", "fine", "--", "true")
    bad = finished(cluster, ALICE, "--", "sh", "-c", "exit 3")
    running = cluster.submit(BOB, "--gpus", "1", "--", "sleep", "30")
    cluster.wait_state(running, "RUNNING")
    jobs = {job["id"]: job for job in history(cluster, ALICE)["jobs"]}
    assert sorted(jobs) == [ok, bad]  # finished jobs only: not the running one
    assert (jobs[ok]["state"], jobs[ok]["exit_code"], jobs[ok]["name"]) == ("COMPLETED", 0, "fine")
    assert (jobs[bad]["state"], jobs[bad]["exit_code"]) == ("FAILED", 3)
    for job in jobs.values():
        assert job["submit_time"] <= job["start_time"] <= job["end_time"], job
        assert job["user"] == ALICE and job["nodes"] and "env" not in job
    table = cluster.run(ALICE, "history", "--since", "1d")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["JOBID", "USER", "NAME", "STATE", "EXIT"]
    rows = {int(line.split()[0]): [cell(lines, line, h) for h in ("NAME", "STATE", "EXIT")] for line in lines[1:]}
    assert rows == {ok: ["fine", "COMPLETED", "0"], bad: ["sh -c exit 3", "FAILED", "3"]}, lines
    # Other users see them as `mgpu queue --all` shows them: command included.
    seen_by_bob = {job["id"]: job for job in history(cluster, BOB)["jobs"]}
    assert seen_by_bob[bad]["command"] == ["sh", "-c", "exit 3"]
    assert history_ids(cluster, BOB, "--me") == []
    assert history_ids(cluster, ALICE, "--me") == [ok, bad]


def test_history_filters(cluster):
    first = finished(cluster, ALICE, "--", "true")
    failed = finished(cluster, ALICE, "--", "false")
    bobs = finished(cluster, BOB, "--", "true")
    assert history_ids(cluster, BOB) == [first, failed, bobs]
    assert history_ids(cluster, BOB, "--user", ALICE) == [first, failed]
    assert history_ids(cluster, BOB, "--state", "failed") == [failed]
    assert history_ids(cluster, BOB, "--state", "COMPLETED,FAILED", "--user", BOB) == [bobs]
    assert history_ids(cluster, BOB, "-j", "%d,%d" % (bobs, first)) == [first, bobs]
    assert history_ids(cluster, BOB, "--since", "1h") == [first, failed, bobs]
    assert history_ids(cluster, BOB, "--since", "2999-01-01") == []
    assert history_ids(cluster, BOB, "--since", "all", "-j", str(failed)) == [failed]
    newest = history(cluster, BOB, "--limit", "2")
    assert [job["id"] for job in newest["jobs"]] == [failed, bobs] and newest["more"] is True
    limited = cluster.run(BOB, "history", "--limit", "1")
    assert limited.returncode == 0 and "more jobs match" in limited.stderr
    assert "no finished jobs match" in cluster.run(BOB, "history", "--since", "2999-01-01").stdout
    # Bad input: one line each, no traceback.
    assert "bad time" in one_line_error(cluster.run(BOB, "history", "--since", "2024-02-30"), 2)
    assert "--limit" in one_line_error(cluster.run(BOB, "history", "--limit", "99999999"), 2)
    assert "not a final state" in one_line_error(cluster.run(BOB, "history", "--state", "RUNNING"))
    assert "unknown state" in one_line_error(cluster.run(BOB, "history", "--state", "\x1b[2J"))
    assert "\x1b" not in cluster.run(BOB, "history", "--state", "\x1b[2J").stderr


CONFIG = "keep_finished: 2\n"


def test_history_and_show_reach_beyond_keep_finished_and_a_restart(make_cluster):
    cluster = make_cluster(config=CONFIG)
    ids = [finished(cluster, ALICE, "--", "sh", "-c", "exit %d" % code) for code in (0, 1, 2, 3)]
    wait_for(lambda: [j["id"] for j in cluster.queue(ALICE)["jobs"]] == ids[2:],
             what="queue --all to keep the last 2 finished jobs")
    assert [(j["id"], j["exit_code"]) for j in history(cluster, ALICE)["jobs"]] == list(zip(ids, (0, 1, 2, 3)))
    shown = cluster.run(BOB, "show", ids[0])
    assert shown.returncode == 0, shown.stderr
    assert "JobId=%d " % ids[0] in shown.stdout and "JobState=COMPLETED" in shown.stdout
    cluster.master.stop()
    cluster.master.start()
    assert [(j["id"], j["exit_code"]) for j in history(cluster, BOB)["jobs"]] == list(zip(ids, (0, 1, 2, 3)))
    detail = json.loads(cluster.run(ALICE, "show", ids[1], "--json").stdout)
    assert (detail["id"], detail["state"], detail["exit_code"], detail["user"]) == (ids[1], "FAILED", 1, ALICE)
    assert cluster.queue(ALICE, "-j", str(ids[0]))["jobs"] == []  # not in memory: queue does not show it


def test_show_of_a_running_and_a_finished_job(cluster):
    running = cluster.submit(ALICE, "--gpus", "1", "--name", "train", "--time-limit", "600",
                             "--env-setup-cmd", "export TOKEN=s3cret", "--", "sleep", "30")
    cluster.wait_state(running, "RUNNING")
    shown = cluster.run(ALICE, "show", running)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    for fragment in ("JobId=%d JobName=train" % running, "UserId=%s(" % ALICE, "JobState=RUNNING",
                     "RestartCnt=0", "TimeLimit=10:00", "Gpus=1", "GpuIds=0", "Command=sleep 30",
                     "StdOut=/home/%s/.mgpu/logs/%d.out" % (ALICE, running), "EnvSetup=export TOKEN=s3cret",
                     "EndTime=None"):
        assert fragment in text, (fragment, text)
    assert "StartTime=None" not in text and "NodeList=" in text
    # Another user sees what queue shows, not the env-setup command.
    other = cluster.run(BOB, "show", running)
    assert other.returncode == 0 and "JobState=RUNNING" in other.stdout and "s3cret" not in other.stdout
    assert "s3cret" not in cluster.run(BOB, "show", running, "--json").stdout
    cluster.run(ALICE, "cancel", running)
    cluster.wait_state(running, "CANCELLED")
    detail = json.loads(cluster.run(BOB, "show", running, "--json").stdout)
    assert detail["state"] == "CANCELLED" and detail["end_time"] >= detail["start_time"]
    done = finished(cluster, BOB, "--", "sh", "-c", "exit 4")
    assert "ExitCode=4" in cluster.run(ALICE, "show", done).stdout
    # Unknown or bad ids: one line.
    assert "no such job 999999" in one_line_error(cluster.run(ALICE, "show", "999999"))
    one_line_error(cluster.run(ALICE, "show", "abc"), 2)
    one_line_error(cluster.run(ALICE, "show", "9" * 40))


def test_queue_jobs_me_and_restarts(cluster):
    mine = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "30")
    theirs = cluster.submit(BOB, "--gpus", "0", "--", "sleep", "30")
    cluster.wait_state(mine, "RUNNING")
    cluster.wait_state(theirs, "RUNNING")
    assert [j["id"] for j in cluster.queue(ALICE, "--me")["jobs"]] == [mine]
    assert [j["id"] for j in cluster.queue(BOB, "--me")["jobs"]] == [theirs]
    assert [j["id"] for j in cluster.queue(BOB, "-j", str(mine))["jobs"]] == [mine]
    assert [j["id"] for j in cluster.queue(BOB, "--jobs", "%d,%d" % (theirs, mine))["jobs"]] == [mine, theirs]
    one_line_error(cluster.run(BOB, "queue", "-j", "x"), 2)
    one_line_error(cluster.run(BOB, "queue", "--me", "--user", ALICE), 2)
    # A job requeued at its time limit shows its restarts.
    requeued = cluster.submit(ALICE, "--gpus", "1", "--time-limit", "1", "--requeue", "--", "sleep", "30")
    wait_for(lambda: (cluster.job(requeued) or {}).get("restarts", 0) >= 1, timeout=30,
             what="job %d to be requeued at its time limit\n%s" % (requeued, cluster.master.log[-2000:]))
    table = cluster.run(ALICE, "queue", "-j", str(requeued)).stdout.splitlines()
    assert table[1].startswith("%d " % requeued) and int(cell(table, table[1], "RESTARTS")) >= 1, table
    assert "RestartCnt=0" not in cluster.run(ALICE, "show", requeued).stdout
    running = cluster.run(ALICE, "queue", "--me").stdout.splitlines()
    start = [cell(running, line, "START") for line in running[1:] if line.startswith("%d " % mine)]
    assert start and start[0] != "-" and ":" in start[0], running
    cluster.run(ALICE, "cancel", requeued)


def test_hostile_history_and_show_requests_get_one_error_reply_each(cluster):
    done = finished(cluster, ALICE, "--", "true")
    hostile = [
        {"type": "history", "since": "yesterday"}, {"type": "history", "since": 1 << 60},
        {"type": "history", "limit": 10 ** 40}, {"type": "history", "limit": 0}, {"type": "history", "limit": 1.5},
        {"type": "history", "ids": list(range(1, 5000))}, {"type": "history", "ids": [0]},
        {"type": "history", "ids": "1,2"}, {"type": "history", "user": "x" * 100000},
        {"type": "history", "state": "RUNNING"}, {"type": "history", "mine": "yes"},
        {"type": "show"}, {"type": "show", "job_id": -1}, {"type": "show", "job_id": "1"},
        {"type": "show", "job_id": 2 ** 70}, {"type": "queue", "ids": [[1]]}, {"type": "queue", "mine": 1},
    ]
    for message in hostile:
        reply = request(cluster.master.socket, dict(message, v=1))
        assert reply.get("ok") is False and reply.get("error") in ("bad_request", "invalid_argument", "too_large"), (
            message, reply)
        assert "\n" not in reply["message"]
    good = request(cluster.master.socket, {"v": 1, "type": "history", "ids": [done, 10 ** 15]})
    assert good["ok"] and [job["id"] for job in good["result"]["jobs"]] == [done]
    missing = request(cluster.master.socket, {"v": 1, "type": "show", "job_id": 10 ** 15})
    assert missing == {"ok": False, "error": "not_found", "message": "no such job %d" % 10 ** 15}
