"""A researcher's day as they see it: output after the fact (logs, attach), mistakes caught
before a job is queued, options spelled out, a warning signal that fits its time limit, a
requeue that stops, and a client that finds the shared master first."""

import os
import pwd
import json
import signal

import pytest

from harness import read_line, wait_for

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def _home(user):
    return pwd.getpwnam(user).pw_dir


def _gate(user, name):
    """A file path the test creates to let a job go on (in the user's home, which they own)."""
    path = os.path.join(_home(user), name)
    if os.path.exists(path):
        os.unlink(path)
    return path


def _one_line(result, code=1):
    assert result.returncode == code, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# -- logs and attach ----------------------------------------------------------------------------


def test_logs_prints_a_finished_jobs_output_and_follows_a_running_one(cluster):
    done = cluster.submit(ALICE, "--gpus", "0", "--", "sh", "-c", "echo one; echo two >&2")
    cluster.wait_state(done, "COMPLETED")
    result = cluster.run(ALICE, "logs", done)
    assert (result.returncode, result.stdout, result.stderr) == (0, "one\ntwo\n", "")

    gate = _gate(ALICE, "logs-gate")
    running = cluster.submit(ALICE, "--gpus", "0", "--", "sh", "-c",
                             "echo first; while [ ! -e %s ]; do sleep 0.05; done; echo second" % gate)
    follower = cluster.start(ALICE, "logs", "-f", running)
    try:
        assert read_line(follower.stdout, what="the first line") == "first\n"
        so_far = cluster.run(ALICE, "logs", running)  # without -f: what is there, at once
        assert (so_far.returncode, so_far.stdout) == (0, "first\n")
        open(gate, "w").close()
        assert read_line(follower.stdout, what="the second line") == "second\n"
        assert follower.wait(timeout=20) == 0
    finally:
        follower.kill()
        follower.wait()


def test_logs_err_reads_the_separate_error_file_and_says_when_there_is_none(cluster):
    home = _home(ALICE)
    split = cluster.submit(ALICE, "--gpus", "0", "--output", "split-%j.out", "--error", "split-%j.err",
                           "--chdir", home, "--", "sh", "-c", "echo to-out; echo to-err >&2")
    cluster.wait_state(split, "COMPLETED")
    assert cluster.run(ALICE, "logs", split).stdout == "to-out\n"
    assert cluster.run(ALICE, "logs", "--err", split).stdout == "to-err\n"
    merged = cluster.submit(ALICE, "--gpus", "0", "--", "true")
    cluster.wait_state(merged, "COMPLETED")
    line = _one_line(cluster.run(ALICE, "logs", "--err", merged))
    assert line == "mgpu: job %d writes its stderr into its output file %s/.mgpu/logs/%d.out: see 'mgpu logs %d'" % (
        merged, home, merged, merged)


def test_logs_of_someone_elses_job_is_refused_and_never_read_as_root(cluster):
    home = _home(ALICE)
    job_id = cluster.submit(ALICE, "--gpus", "0", "--output", "secret-%j.log", "--chdir", home, "--",
                            "echo", "alice-secret")
    cluster.wait_state(job_id, "COMPLETED")
    line = _one_line(cluster.run(BOB, "logs", job_id))
    assert line == "mgpu: permission denied: job %d belongs to %s" % (job_id, ALICE)
    assert cluster.run(None, "logs", job_id).stdout == "alice-secret\n"  # root may: read as alice
    # Alice points her finished job's log at a file only root may read: nobody gets it through mgpu.
    path = os.path.join(home, "secret-%d.log" % job_id)
    os.unlink(path)
    os.symlink("/etc/shadow", path)
    for user in (ALICE, None):
        result = cluster.run(user, "logs", job_id)
        assert result.returncode == 1 and result.stdout == "", result
        assert "cannot read %s" % path in result.stderr and "root:" not in result.stderr


def test_logs_of_jobs_that_have_no_output(cluster):
    blocker = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    cluster.wait_state(blocker, "RUNNING")
    waiting = cluster.submit(ALICE, "--gpus", "1", "--", "true")
    line = _one_line(cluster.run(ALICE, "logs", waiting), code=0)
    assert line == "mgpu: job %d has not started yet: no output so far ('mgpu logs -f %d' waits for it)" % (
        waiting, waiting)
    assert cluster.run(ALICE, "cancel", waiting).returncode == 0
    line = _one_line(cluster.run(ALICE, "logs", waiting))
    assert line == "mgpu: job %d never started (CANCELLED): it has no output" % waiting
    assert _one_line(cluster.run(ALICE, "logs", 999)) == "mgpu: no such job 999"
    assert _one_line(cluster.run(ALICE, "logs", "abc"), code=1).startswith("mgpu: bad job id 'abc'")


def test_attach_after_detach_streams_the_rest_and_exits_with_the_jobs_code(cluster):
    gate = _gate(ALICE, "attach-gate")
    srun = cluster.start(ALICE, "srun", "-i", "--gpus", "1", "--", "sh", "-c",
                         "echo before; while [ ! -e %s ]; do sleep 0.05; done; echo after; exit 3" % gate)
    try:
        assert read_line(srun.stdout, what="the job's first line") == "before\n"
        job_id = max(job["id"] for job in cluster.queue(ALICE)["jobs"])
        srun.send_signal(signal.SIGINT)
        assert srun.wait(timeout=20) == 130
        detached = srun.stderr.read()
    finally:
        srun.kill()
        srun.wait()
    output = "%s/.mgpu/logs/%d.out" % (_home(ALICE), job_id)
    assert ("mgpu: detached from job %d; it keeps running, its output goes to %s. See its output with "
            "'mgpu logs -f %d' or 'mgpu attach %d'; cancel it with 'mgpu cancel %d'" % (
                job_id, output, job_id, job_id, job_id)) in detached
    assert cluster.job(job_id)["state"] == "RUNNING"
    attach = cluster.start(ALICE, "attach", job_id)
    try:
        assert read_line(attach.stdout, what="the output so far") == "before\n"
        open(gate, "w").close()
        assert read_line(attach.stdout, what="the rest") == "after\n"
        assert attach.wait(timeout=20) == 3
    finally:
        attach.kill()
        attach.wait()
    refused = _one_line(cluster.run(BOB, "attach", job_id))
    assert refused == "mgpu: permission denied: job %d belongs to %s" % (job_id, ALICE)


# -- mistakes caught before a job is queued ---------------------------------------------------


def test_the_client_refuses_what_would_fail_later_and_queues_nothing(cluster):
    home = _home(ALICE)
    cases = [
        (("--output", "/root/nope/%j.out", "--", "true"),
         "mgpu: --output /root/nope/%j.out: the directory /root/nope does not exist, and you cannot create it in /root"),
        (("--chdir", "/no/such/dir", "--", "true"), "mgpu: --chdir /no/such/dir: no such directory"),
        (("--chdir", "/root", "--", "true"), "mgpu: --chdir /root: permission denied (you cannot enter it)"),
        (("--", "no-such-program-xyz", "--flag"),
         "mgpu: no-such-program-xyz: command not found on the job's PATH (your PATH); give its full path, or "
         "prepare it with --env-setup-cmd (e.g. 'source venv/bin/activate')"),
        (("--", "./not-there.sh"), "mgpu: ./not-there.sh: no such file (relative paths start in %s)" % home),
    ]
    for args, expected in cases:
        assert _one_line(cluster.run(ALICE, "srun", "--gpus", "0", *args, cwd=home)) == expected
    script = os.path.join(home, "plain.sh")
    with open(script, "w") as handle:
        handle.write("echo hi\n")
    os.chown(script, *pwd.getpwnam(ALICE)[2:4])
    os.chmod(script, 0o644)
    line = _one_line(cluster.run(ALICE, "srun", "--gpus", "0", "--", "./plain.sh", cwd=home))
    assert line == ("mgpu: ./plain.sh: not an executable file (chmod +x it, or run it through its interpreter, "
                    "e.g. 'sh ./plain.sh')")
    assert cluster.queue(ALICE)["jobs"] == []
    # A directory that does not exist yet but can be made: accepted, and the job makes it.
    job_id = cluster.submit(ALICE, "--gpus", "0", "--output", "%s/new-dir/%%j.out" % home, "--", "echo", "made")
    cluster.wait_state(job_id, "COMPLETED")
    with open("%s/new-dir/%d.out" % (home, job_id)) as handle:
        assert handle.read() == "made\n"


def test_options_must_be_spelled_out_and_partitions_do_not_exist(cluster):
    for args, expected in [
        (("--gpu", "1"), "mgpu srun: unrecognized arguments: --gpu (see 'mgpu srun --help')"),
        (("--env", "FOO=bar"), "mgpu srun: unrecognized arguments: --env (see 'mgpu srun --help')"),
        (("--prio", "5"), "mgpu srun: unrecognized arguments: --prio (see 'mgpu srun --help')"),
        (("-p", "5"), "mgpu srun: -p/--partition: mgpu has no partitions (a job may use any GPU of the cluster); "
                      "for a job's priority write --priority in full (see 'mgpu srun --help')"),
        (("--partition", "gpu"), None),
    ]:
        result = cluster.run(ALICE, "srun", *args, "--", "true")
        line = _one_line(result, code=2)
        if expected:
            assert line == expected
        else:
            assert "mgpu has no partitions" in line
    assert _one_line(cluster.run(ALICE, "queue", "--al"), code=2).startswith("mgpu queue: unrecognized arguments")
    assert cluster.queue(ALICE)["jobs"] == []


# -- time limits: the warning fits, the requeue stops ------------------------------------------


def test_the_default_warning_lead_is_cut_to_half_a_short_limit_and_a_longer_one_is_refused(cluster):
    job_id = cluster.submit(ALICE, "--gpus", "0", "--time-limit", "6", "--signal", "--", "sh", "-c",
                            "trap 'echo warned at $(( $(date +%s) - START )); exit 0' USR1; START=$(date +%s); "
                            "sleep 20 & wait")
    job = cluster.wait_state(job_id, ("COMPLETED", "FAILED", "TIMEOUT"))
    assert job["state"] == "COMPLETED", job
    said = cluster.read_output(ALICE, job_id)
    assert said.startswith("warned at "), said
    assert 2 <= int(said.split()[-1]) <= 4  # 3 s before the limit of 6 s, not at the start
    line = _one_line(cluster.run(ALICE, "srun", "--gpus", "0", "--time-limit", "6", "--signal", "USR1@60", "--",
                                 "true"))
    assert line == ("mgpu: --signal @60 warns 60 s before the time limit, but the limit is 6 s: give a lead "
                    "shorter than the limit (e.g. @3)")


def test_requeue_at_the_time_limit_stops_after_max_requeues(make_cluster):
    cluster = make_cluster(config="max_requeues: 1\n")
    job_id = cluster.submit(ALICE, "--gpus", "0", "--time-limit", "1", "--requeue", "--", "sleep", "30")
    job = cluster.wait_state(job_id, "TIMEOUT", timeout=40)
    assert job["restarts"] == 1
    assert job["reason"] == "reached its time limit of 0:01; not requeued again after 1 restart (max_requeues)"
    table = cluster.run(ALICE, "queue", "--all").stdout
    assert "TIMEOUT" in table


# -- which master a client talks to ---------------------------------------------------------------

SYSTEM_SOCKET = "/run/mgpu/mgpu.sock"


@pytest.fixture
def system_socket_free():
    if os.path.exists(SYSTEM_SOCKET) or os.path.exists("/etc/mgpu/mgpu.yaml"):
        pytest.skip("a system master is installed on this machine: its socket is not for tests")
    made = not os.path.isdir("/run/mgpu")
    os.makedirs("/run/mgpu", mode=0o755, exist_ok=True)
    yield
    if os.path.exists(SYSTEM_SOCKET):
        os.unlink(SYSTEM_SOCKET)
    if made:
        os.rmdir("/run/mgpu")


def test_clients_prefer_the_system_master_and_name_every_socket_tried(make_cluster, system_socket_free):
    uid = pwd.getpwnam(ALICE).pw_uid
    own_socket = "/tmp/mgpu-%d/mgpu.sock" % uid
    system = make_cluster(fake_gpus="3:16000", args=["--socket", SYSTEM_SOCKET], start=False)
    system.master.socket = SYSTEM_SOCKET
    system.master.start()
    own = make_cluster(fake_gpus="1:16000", user=ALICE, args=["--socket", own_socket], start=False)
    own.master.socket = own_socket
    own.master.start()
    wait_for(lambda: "warning: the system master runs on %s" % SYSTEM_SOCKET in own.master.log,
             what="the single-user master's warning")
    assert "set MGPU_SOCKET=%s" % own_socket in own.master.log
    plain = {"MGPU_SOCKET": ""}  # as a user's shell has it: no MGPU_SOCKET

    def gpus_seen():
        result = own.run(ALICE, "queue", "--json", env=plain)
        assert result.returncode == 0, result.stderr
        return sum(len(node["gpus"]) for node in json.loads(result.stdout)["nodes"])

    assert gpus_seen() == 3  # the shared master, though her own one runs
    system.master.stop()
    assert gpus_seen() == 1  # no system master: her own
    own.master.stop()
    line = _one_line(own.run(ALICE, "queue", env=plain))
    assert line.startswith("mgpu: cannot reach an mgpu master: tried %s: " % SYSTEM_SOCKET), line
    assert "; %s: " % own_socket in line
    for stale in (SYSTEM_SOCKET, own_socket):
        assert stale in line


# -- --debug ----------------------------------------------------------------------------------------


def test_debug_shows_a_traceback_and_nothing_after_it(cluster):
    result = cluster.run(ALICE, "--debug", "queue", env={"MGPU_SOCKET": "/tmp/no-such-dir/mgpu.sock"})
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("mgpu.errors.MgpuError: cannot reach the mgpu master at /tmp/no-such-dir/mgpu.sock")
    # (the last line is the exception's: the binary's bootloader adds none of its own)


# -- a failed --env-setup-cmd says why --------------------------------------------------------------


def test_a_failed_env_setup_puts_the_end_of_its_stderr_in_the_reason(cluster):
    failed = cluster.submit(ALICE, "--gpus", "0", "--env-setup-cmd", "echo preparing >&2; . /no/venv/bin/activate",
                            "--", "echo", "never")
    job = cluster.wait_state(failed, ("FAILED", "COMPLETED"))
    assert job["state"] == "FAILED" and job["exit_code"] not in (None, 0), job
    assert job["reason"].startswith("--env-setup-cmd failed (exit code %d): " % job["exit_code"]), job
    assert "preparing / " in job["reason"] and "/no/venv/bin/activate" in job["reason"]
    output = cluster.read_output(ALICE, failed)
    assert output.startswith("preparing\n") and "/no/venv/bin/activate" in output and "never" not in output
    table = cluster.run(ALICE, "queue", "--all").stdout
    assert "--env-setup-cmd failed" in table
    # A setup that works: its stderr still reaches the log, before the command's output; the
    # command sees what it set, and nothing of the setup's plumbing.
    ok = cluster.submit(ALICE, "--gpus", "0", "--env-setup-cmd", "echo set up >&2; export GREETING=hello", "--",
                        "sh", "-c", "echo $GREETING; ls /proc/$$/fd")
    job = cluster.wait_state(ok, ("FAILED", "COMPLETED"))
    assert job["state"] == "COMPLETED", job
    lines = cluster.read_output(ALICE, ok).split()
    assert lines[:2] == ["set", "up"] and lines[2] == "hello"
    assert sorted(lines[3:]) == ["0", "1", "2"]  # no descriptor of the setup's left open
