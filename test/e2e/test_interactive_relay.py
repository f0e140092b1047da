"""`srun -i` and `srun -i --pty` from a node's host: the client talks to the node on its own host
(a submit-only login host, or an ordinary node), which relays its input to the master over its
link (relay_input), and the master passes it on to the job's host (the master's own host, the
same node, or a third one). What a user sees: their stdin reaches the job and its end is the
job's EOF, a large piped input arrives whole (the relay's flow control), a terminal session
behaves as on the master's host, and a lost link ends srun with one line while the job's stdin
ends. Hosts are network namespaces (netns.py), as in test_multinode.py."""

import os
import re
import secrets
import signal
import subprocess
import time

import pytest

from harness import popen_as, wait_for
from test_interactive import Terminal, pids_of
from test_multinode import ALICE, lab, namespaced_hosts, needs_node, unique_sleep  # noqa: F401 (fixtures)
from test_multinode_placement import start_submit_only_node


@pytest.fixture
def network():
    """Hosts h0 (the master), h1, h2 (nodes with GPUs) and h3 (a submit-only login host)."""
    yield from namespaced_hosts(4)


def start_login_host(lab, name="login", host="h3"):
    """A submit-only node on `host`: it relays its users' requests and runs no job."""
    node = start_submit_only_node(lab, name, host)
    lab.wait_nodes({name: ("idle", "mixed", "allocated")})
    return node


def via(lab, name):
    """The environment of a client on the host of node `name`."""
    return {"MGPU_SOCKET": lab.nodes[name].socket}


def job_of(stderr):
    found = re.search(r"job (\d+)", stderr)
    assert found, stderr
    return int(found.group(1))


def until_shown(terminal, keys, text, at, timeout=30):
    """Type `keys` until `text` appears past `at`: a new window size travels beside what is
    typed, not before it, as on any terminal; the offset just past it."""
    deadline = time.monotonic() + timeout
    while True:
        terminal.type(keys)
        try:
            return terminal.wait_for(text, at, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        except AssertionError:
            if time.monotonic() >= deadline:
                raise


@needs_node
@pytest.mark.parametrize("job_host", ["n1", "head"])
def test_piped_stdin_from_a_login_host_reaches_a_job_on_another_host(lab, job_host):
    cluster = lab.start_cluster()
    start_login_host(lab)
    script = "while read l; do echo got $l on $MGPU_NODE; done; exit 4"
    gpus = "1" if job_host != "head" else "0"
    result = cluster.run(ALICE, "srun", "-i", "--gpus", gpus, "--nodelist", job_host, "--", "sh", "-c", script,
                         input="a\nb\n", env=via(lab, "login"), timeout=90)
    assert result.returncode == 4, (result.stdout, result.stderr, lab.master.log[-2000:])
    assert result.stdout == "got a on %s\ngot b on %s\n" % (job_host, job_host), result.stderr
    assert "not forwarded" not in result.stderr and "Traceback" not in result.stderr
    job = cluster.job(job_of(result.stderr))
    assert (job["state"], job["exit_code"], job["node"]) == ("FAILED", 4, job_host)


@needs_node
def test_a_large_piped_input_arrives_whole_through_the_relay(lab):
    cluster = lab.start_cluster()
    start_login_host(lab)
    data = "".join("line %d\n" % i for i in range(100_000))  # many windows of the relay's flow control
    script = "read first; echo first=$first; sleep 1; wc -lc; exit 5"
    for client, job_host in (("login", "n2"), ("n1", "n1")):  # a third host, and the relaying node itself
        result = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "1", "--nodelist", job_host, "--", "sh", "-c",
                             script, input=data, env=via(lab, client), timeout=180)
        assert result.returncode == 5, (client, job_host, result.stdout, result.stderr, lab.master.log[-2000:])
        lines = result.stdout.split("\n")
        assert lines[0] == "first=line 0", result.stdout
        assert lines[1].split() == ["99999", str(len(data) - len("line 0\n"))], result.stdout


@needs_node
def test_a_pty_session_from_a_node_host_to_a_job_on_another_host(lab):
    cluster = lab.start_cluster()
    terminal = Terminal(rows=37, cols=111)
    before = terminal.attributes()
    sleep = unique_sleep()
    client = None
    try:
        client = terminal.start_via(cluster, lab.nodes["n1"].socket, ALICE, "srun", "-i", "--pty", "-q",
                                    "--gpus", "1", "--nodelist", "n2", "--", "sh")
        at = terminal.wait_for("$ ", timeout=60)
        terminal.type("echo on-$MGPU_NODE; tty\r")
        at = terminal.wait_for("/dev/pts/", terminal.wait_for("on-n2", at))
        terminal.type("stty size\r")
        at = terminal.wait_for("37 111", at)
        terminal.resize(40, 120)
        client.send_signal(signal.SIGWINCH)  # what the kernel does for the terminal's foreground
        at = until_shown(terminal, "stty size\r", "40 120", at)
        terminal.type("sleep %s\r" % sleep)
        wait_for(lambda: pids_of("^sleep %s" % sleep), what="sleep to run in the job's shell")
        assert lab.job_pids("sleep %s" % sleep, "h2"), "the job runs on n2's host"
        terminal.type("\x03")  # Ctrl+C: to the job's foreground process, through its pty
        wait_for(lambda: not pids_of("^sleep %s" % sleep), what="Ctrl+C to end sleep")
        terminal.type("echo still-$((20+22))\r")
        at = terminal.wait_for("still-42", at)
        terminal.type("exit 3\r")
        assert client.wait(timeout=30) == 3, terminal.text()
        assert terminal.attributes() == before  # raw mode was undone
        assert "not forwarded" not in terminal.text() and "Traceback" not in terminal.text()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        terminal.close()


@needs_node
def test_a_lost_link_ends_srun_with_one_line_and_the_jobs_stdin(lab):
    cluster = lab.start_cluster()
    marker = os.path.join(os.path.expanduser("~%s" % ALICE), "stdin-ended-%s" % secrets.token_hex(4))
    flowing = marker + ".flowing"
    argv = list(cluster.installation.command(ALICE)) + [
        "srun", "-i", "--gpus", "1", "--nodelist", "n2", "--", "sh", "-c",
        "echo reading; read line; echo \"$line\" > %s; cat >/dev/null; echo eof > %s; sleep %s"
        % (flowing, marker, unique_sleep())]
    client = popen_as(ALICE, argv, cluster.installation.env(lab.nodes["n1"].socket, ALICE),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client.stdin.write(b"some input\n")
        client.stdin.flush()
        # The link goes while input flows (the job has read a line): not before its input was
        # opened, when the job's stdin would end only after the supervisor's INPUT_WAIT.
        wait_for(lambda: os.path.exists(flowing), timeout=30, what="the job reading its first line")
        assert not os.path.exists(marker)
        lab.master.kill()  # every link is lost: n1's client, and n2's job's input
        assert client.wait(timeout=60) == 1
        err = client.stderr.read()
        last = err.decode().splitlines()[-1]
        assert last.startswith("mgpu: the link to the master ") and last.endswith(" was lost; try again shortly"), err
        assert b"Traceback" not in err
        wait_for(lambda: os.path.exists(marker), timeout=30, what="the job to see the end of its stdin")
    finally:
        if client.poll() is None:
            client.kill()
        client.wait()
        client.stdin.close()


@needs_node
def test_detaching_from_a_node_host_ends_the_jobs_stdin_and_the_job_runs_on(lab):
    cluster = lab.start_cluster()
    start_login_host(lab)
    marker = os.path.join(os.path.expanduser("~%s" % ALICE), "stdin-ended-%s" % secrets.token_hex(4))
    argv = list(cluster.installation.command(ALICE)) + [
        "srun", "-i", "--gpus", "1", "--nodelist", "n1", "--", "sh", "-c",
        "cat >/dev/null; echo eof > %s; sleep %s" % (marker, unique_sleep())]
    client = popen_as(ALICE, argv, cluster.installation.env(lab.nodes["login"].socket, ALICE),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    job = None
    try:
        job = wait_for(lambda: next((j["id"] for j in cluster.queue()["jobs"]
                                     if j["state"] == "RUNNING" and j["user"] == ALICE), None),
                       timeout=30, what="the job running")
        client.stdin.write(b"some input\n")
        client.stdin.flush()
        assert not os.path.exists(marker)
        client.send_signal(signal.SIGINT)  # Ctrl+C: detach; the pipe to the client stays open
        assert client.wait(timeout=30) == 130
        assert b"detached from job %d" % job in client.stderr.read()
        wait_for(lambda: os.path.exists(marker), timeout=30, what="the job to see the end of its stdin")
        assert cluster.job(job)["state"] == "RUNNING"
    finally:
        if client.poll() is None:
            client.kill()
        client.wait()
        client.stdin.close()
        if job:
            cluster.run(None, "cancel", str(job))
