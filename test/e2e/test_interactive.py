"""`srun -i` forwards the client's stdin to the job, `srun -i --pty` gives the job a terminal:
what a user sees at their terminal, with a real master (root), real users, and the client driven
through a pipe or a real pseudo-terminal (Python's pty module)."""

import fcntl
import json
import os
import pty
import secrets
import signal
import struct
import subprocess
import termios
import threading

from harness import popen_as, request, wait_for

ALICE = "mgpu-alice"


def unique_sleep():
    """A `sleep` argument no other process uses, to find the job's process (pgrep -f)."""
    return "300.%d" % (secrets.randbelow(900000) + 100000)


def pids_of(pattern):
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


class Terminal:
    """A pseudo-terminal whose slave is the client's stdin, stdout and stderr: what the test
    types goes in at the master end, and everything the client prints is collected there."""

    def __init__(self, rows=37, cols=111):
        self.master, self.slave = pty.openpty()
        self.resize(rows, cols)
        self.seen = b""
        self.lock = threading.Lock()
        self.reader = None

    def resize(self, rows, cols):
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def start(self, cluster, user, *args):
        return self.start_via(cluster, cluster.master.socket, user, *args)

    def start_via(self, cluster, socket, user, *args):
        """start() with the client talking to the daemon at `socket` (a node's, on its host)."""
        argv = list(cluster.installation.command(user)) + [str(a) for a in args]
        env = cluster.installation.env(socket, user, {"TERM": "xterm"})
        self.process = popen_as(user, argv, env, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                start_new_session=True)
        os.close(self.slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self.process

    def _read(self):
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.seen += chunk

    def type(self, text):
        os.write(self.master, text.encode() if isinstance(text, str) else text)

    def text(self):
        with self.lock:
            return self.seen.decode(errors="replace")

    def wait_for(self, text, after=0, timeout=30):
        """Wait until `text` appears past offset `after` of what the client printed; the
        offset just past it."""
        def found():
            position = self.text().find(text, after)
            return position + len(text) if position >= 0 else None
        try:
            return wait_for(found, timeout=timeout, what=repr(text))
        except AssertionError:
            raise AssertionError("%r never appeared; the terminal shows %r" % (text, self.text()[after:])) from None

    def attributes(self):
        """The terminal's settings as the client left them."""
        return termios.tcgetattr(self.master)

    def close(self):
        try:
            os.close(self.master)
        except OSError:
            pass


def test_stdin_is_forwarded_and_its_end_reaches_the_job(cluster):
    script = "while read l; do echo got $l; done; exit 4"
    result = cluster.run(ALICE, "srun", "-i", "-q", "--", "sh", "-c", script, input="a\nb\n")
    assert result.stdout == "got a\ngot b\n", result.stderr
    assert result.returncode == 4


def test_a_closed_stdin_is_an_empty_input(cluster):
    # The client's stdin is /dev/null: the job reads EOF at once.
    result = cluster.run(ALICE, "srun", "-i", "-q", "--", "sh", "-c", "cat; echo done")
    assert (result.returncode, result.stdout) == (0, "done\n"), result.stderr


def test_input_larger_than_every_buffer_arrives_whole(cluster):
    # More than the daemon, the node agent and the pipes hold: the client waits for the job.
    data = "".join("line %d\n" % i for i in range(200_000))
    result = cluster.run(ALICE, "srun", "-i", "-q", "--", "sh", "-c", "sleep 1; wc -c", input=data, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(data))


def test_a_background_job_still_reads_dev_null(cluster):
    job = cluster.submit(ALICE, "--", "sh", "-c", "readlink /proc/self/fd/0")
    cluster.wait_state(job, "COMPLETED")
    assert cluster.read_output(ALICE, job).strip() == "/dev/null"


def test_detaching_ends_the_jobs_stdin_and_the_job_runs_on(cluster, tmp_path):
    marker = os.path.join(cluster.home(ALICE), "stdin-ended-%s" % secrets.token_hex(4))
    argv = list(cluster.installation.command(ALICE)) + [
        "srun", "-i", "--", "sh", "-c", "cat >/dev/null; echo eof > %s; sleep %s" % (marker, unique_sleep())]
    client = popen_as(ALICE, argv, cluster.installation.env(cluster.master.socket, ALICE),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job = wait_for(lambda: next((j["id"] for j in cluster.queue()["jobs"]
                                     if j["state"] == "RUNNING" and j["user"] == ALICE), None), what="the job running")
        client.stdin.write(b"some input\n")
        client.stdin.flush()
        assert not os.path.exists(marker)
        client.send_signal(signal.SIGINT)  # Ctrl+C: detach; the pipe to the client stays open
        _, err = client.communicate(timeout=30)
        assert client.returncode == 130
        assert b"detached from job %d" % job in err
        wait_for(lambda: os.path.exists(marker), what="the job to see the end of its stdin")
        assert cluster.job(job)["state"] == "RUNNING"
        cluster.run(None, "cancel", str(job))
    finally:
        client.kill()
        client.wait()


def test_only_the_owner_may_send_input(cluster):
    job = None
    argv = list(cluster.installation.command(ALICE)) + ["srun", "-i", "-q", "--", "sleep", unique_sleep()]
    client = popen_as(ALICE, argv, cluster.installation.env(cluster.master.socket, ALICE),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job = wait_for(lambda: next((j["id"] for j in cluster.queue()["jobs"]
                                     if j["state"] == "RUNNING" and j["user"] == ALICE), None), what="the job running")
        # root may follow anyone's job, but not type into it
        reply = request(cluster.master.socket, {"v": 1, "type": "attach", "job_id": job, "input": True})
        assert reply["ok"] and reply["result"]["input"] is False
        assert reply["result"]["input_refused"] == "only its owner %s may send job %d input" % (ALICE, job)
    finally:
        client.kill()
        client.wait()
        if job:
            cluster.run(None, "cancel", str(job))


def test_a_second_client_of_the_owner_is_not_given_the_input(cluster):
    argv = list(cluster.installation.command(ALICE)) + ["srun", "-i", "-q", "--", "sleep", unique_sleep()]
    client = popen_as(ALICE, argv, cluster.installation.env(cluster.master.socket, ALICE),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    job = None
    try:
        job = wait_for(lambda: next((j["id"] for j in cluster.queue()["jobs"]
                                     if j["state"] == "RUNNING" and j["user"] == ALICE), None), what="the job running")
        frames = json.dumps({"v": 1, "type": "attach", "job_id": job, "input": True})
        sender = ("import socket,sys\ns=socket.socket(socket.AF_UNIX);s.settimeout(10);s.connect(sys.argv[1])\n"
                  "s.sendall(sys.argv[2].encode()+b'\\n');print(s.makefile().readline())")
        probe = popen_as(ALICE, ["/usr/bin/python3", "-c", sender, cluster.master.socket, frames],
                         {"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = probe.communicate(timeout=30)
        reply = json.loads(out)
        assert reply["ok"] and reply["result"]["input"] is False, err
        assert reply["result"]["input_refused"] == "another client is sending job %d its input" % job
    finally:
        client.kill()
        client.wait()
        if job:
            cluster.run(None, "cancel", str(job))


def test_a_pty_session(cluster):
    terminal = Terminal(rows=37, cols=111)
    before = terminal.attributes()
    sleep = unique_sleep()
    try:
        client = terminal.start(cluster, ALICE, "srun", "-i", "--pty", "-q", "--", "sh")
        at = terminal.wait_for("$ ")
        terminal.type("tty\r")
        at = terminal.wait_for("/dev/pts/", at)
        terminal.type("stty size\r")
        at = terminal.wait_for("37 111", at)
        terminal.resize(40, 120)
        client.send_signal(signal.SIGWINCH)  # what the kernel does for the terminal's foreground
        terminal.type("stty size\r")
        at = terminal.wait_for("40 120", at)
        terminal.type("sleep %s\r" % sleep)
        wait_for(lambda: pids_of("^sleep %s" % sleep), what="sleep to run in the job's shell")
        terminal.type("\x03")  # Ctrl+C: to the job's foreground process, through its pty
        wait_for(lambda: not pids_of("^sleep %s" % sleep), what="Ctrl+C to end sleep")
        terminal.type("echo still-$((20+22))\r")
        at = terminal.wait_for("still-42", at)
        terminal.type("exit 3\r")
        assert client.wait(timeout=30) == 3
        assert terminal.attributes() == before  # raw mode was undone
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        terminal.close()


def test_pty_output_is_the_jobs_output_file(cluster):
    terminal = Terminal()
    try:
        client = terminal.start(cluster, ALICE, "srun", "--pty", "-q", "--", "sh", "-c",
                                "echo out-line; echo err-line >&2; exit 5")
        assert client.wait(timeout=60) == 5
        terminal.wait_for("err-line")
        assert "out-line" in terminal.text()
        job = max(j["id"] for j in cluster.queue()["jobs"] if j["user"] == ALICE)
        with open(os.path.join(cluster.home(ALICE), ".mgpu", "logs", "%d.out" % job), "rb") as output:
            assert output.read() == b"out-line\r\nerr-line\r\n"  # a terminal's lines, one stream
        assert cluster.job(job)["error"] is None
    finally:
        terminal.close()


def test_a_pty_session_ended_by_a_signal_restores_the_terminal(cluster):
    terminal = Terminal()
    before = terminal.attributes()
    try:
        client = terminal.start(cluster, ALICE, "srun", "-i", "--pty", "-q", "--", "sh")
        terminal.wait_for("$ ")
        wait_for(lambda: terminal.attributes() != before, what="raw mode")
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=30) == 128 + signal.SIGTERM
        assert terminal.attributes() == before
        # The job's terminal hangs up: its shell ends.
        job = max(j["id"] for j in cluster.queue()["jobs"] if j["user"] == ALICE)
        cluster.wait_state(job, ("COMPLETED", "FAILED"))
    finally:
        terminal.close()


# -- a job on another host (network namespaces, as in test_multinode.py) ----------------------

from test_multinode import lab, needs_node, network  # noqa: E402,F401 (fixtures)


@needs_node
def test_stdin_reaches_a_job_on_a_node(lab):
    cluster = lab.start_cluster()
    data = "".join("line %d\n" % i for i in range(100_000))  # several windows of the node link's flow control
    script = "read first; echo first=$first on $MGPU_NODE; sleep 1; wc -l; exit 4"
    result = cluster.run(ALICE, "srun", "-i", "-q", "--", "sh", "-c", script, input=data, timeout=120)
    assert result.returncode == 4, (result.stdout, result.stderr, lab.master.log[-2000:])
    lines = result.stdout.split("\n")
    assert lines[0] in ("first=line 0 on n1", "first=line 0 on n2"), result.stdout
    assert lines[1].strip() == "99999"


@needs_node
def test_a_pty_session_on_a_node(lab):
    cluster = lab.start_cluster()
    terminal = Terminal(rows=33, cols=99)
    try:
        client = terminal.start(cluster, ALICE, "srun", "--pty", "-q", "--", "sh")
        at = terminal.wait_for("$ ")
        terminal.type("echo on-$MGPU_NODE; stty size; tty\r")
        at = terminal.wait_for("33 99", terminal.wait_for("on-n", at))
        terminal.wait_for("/dev/pts/", at)
        terminal.type("exit 6\r")
        assert client.wait(timeout=30) == 6
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        terminal.close()
