"""`mgpu node` in process, against a fake master on loopback: registration, launch, signal,
reconciliation, a bad frame and a wrong key."""

import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from mgpu import auth, config, protocol, transport
from mgpu.errors import MgpuError
from mgpu.model import Job
from mgpu.node import NodeDaemon

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src")


def make_key(path):
    env = dict(os.environ, PYTHONPATH=SRC)
    subprocess.run([sys.executable, "-m", "mgpu", "keygen", "--output", str(path)], env=env,
                   check=True, capture_output=True)
    return str(path)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    return make_key(directory / "cluster.key"), make_key(directory / "other.key")


@pytest.fixture(autouse=True)
def tcp_connect(monkeypatch):
    if not hasattr(transport, "connect_tcp"):  # stand-in until transport.py has it
        monkeypatch.setattr(transport, "connect_tcp",
                            lambda host, port, timeout: socket.create_connection((host, port), timeout),
                            raising=False)


class FakeMaster:
    """Accepts node links on 127.0.0.1, answers each registration with `keep`; each link is
    handed to the test."""

    def __init__(self, key_path):
        self.key = auth.load_key(key_path)
        self.context = auth.server_context(self.key)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.keep = []
        self.links = queue.Queue()
        self.refused = queue.Queue()
        self.attempts = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.attempts += 1
            try:
                tls = auth.wrap_server(sock, self.context, self.key, 5.0)
            except MgpuError as e:
                self.refused.put(e.message)
                continue
            connection = transport.Connection(tls, protocol.MAX_NODE_FRAME)
            try:
                type_, fields = protocol.check_node_message(connection.read(10), protocol.NODE_TO_MASTER)
                assert type_ == "node_register"
                connection.send({"ok": True, "result": {"keep": [list(k) for k in self.keep],
                                                        "heartbeat_interval": 0.3}})
            except Exception as e:  # shown by the test waiting for a link
                self.refused.put("fake master: %s" % e)
                connection.close()
                continue
            self.links.put(Link(connection, fields))

    def next_link(self, timeout=15):
        return self.links.get(timeout=timeout)

    def close(self):
        self.closed = True
        self.listener.close()


class Link:
    def __init__(self, connection, registration):
        self.connection = connection
        self.registration = registration
        self.received = []

    def send(self, type_, **fields):
        self.connection.send(protocol.node_message(type_, **fields))

    def expect(self, type_, timeout=15, **match):
        """The first message of `type_` with fields `match`, received earlier or within
        `timeout` (reports about different jobs may come in any order)."""
        def matches(got, fields):
            return got == type_ and all(fields.get(k) == v for k, v in match.items())

        for i, (got, fields) in enumerate(self.received):
            if matches(got, fields):
                del self.received[i]
                return fields
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no %s %r within %g s (got %r)" % (type_, match, timeout, self.received)
            try:
                message = self.connection.read(left)
            except MgpuError:
                continue
            assert message is not None, "the node closed the link"
            got, fields = protocol.check_node_message(message, protocol.NODE_TO_MASTER)
            if matches(got, fields):
                return fields
            if got != "node_heartbeat":
                self.received.append((got, fields))


def job_record(tmp_path, job_id, command, user="root", attempt=1, alloc=(0,)):
    return Job(id=job_id, user=user, uid=os.getuid(), gid=os.getgid(), command=list(command),
               cwd=str(tmp_path), output=str(tmp_path / ("job-%d.out" % job_id)), error=None,
               alloc=alloc, attempt=attempt, restarts=0, state="RUNNING", umask=0o022).to_dict()


class Node:
    def __init__(self, tmp_path, key_path, port, name="n1"):
        self.lines = []
        settings = config.validate({"master": "127.0.0.1:%d" % port, "key_file": key_path, "node_name": name,
                                    "state_dir": str(tmp_path / "state"), "fake_gpus": "2:1000",
                                    "socket": str(tmp_path / "node.sock"), "heartbeat_interval": 5},
                                   os.getuid())
        self.daemon = NodeDaemon(settings, log=self.lines.append)
        self.thread = threading.Thread(target=self.daemon.run, kwargs={"install_signals": False}, daemon=True)
        self.thread.start()

    def stop(self):
        self.daemon.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        helper = self.daemon.agent.launcher.helper_pid
        deadline = time.monotonic() + 10
        while process_alive(helper) and time.monotonic() < deadline:
            time.sleep(0.02)  # it holds the state lock until it has handed over its launches
        try:
            os.waitpid(helper, os.WNOHANG)
        except ChildProcessError:
            pass

    def wait_line(self, text, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            time.sleep(0.05)
        raise AssertionError("no log line with %r in %r" % (text, self.lines))


@pytest.fixture
def cluster(tmp_path, key_files):
    master = FakeMaster(key_files[0])
    nodes = []

    def start(key=key_files[0], name="n1"):
        node = Node(tmp_path, key, master.port, name)
        nodes.append(node)
        return node

    yield master, start
    for node in nodes:
        node.stop()
    master.close()


def process_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_registers_runs_a_job_and_reports_its_exit(cluster, tmp_path):
    master, start = cluster
    node = start()
    link = master.next_link()
    assert link.registration["name"] == "n1"
    assert [g["index"] for g in link.registration["gpus"]] == [0, 1]
    assert link.registration["attempts"] == []
    link.send("launch", job=job_record(tmp_path, 5, ["sh", "-c", "echo hi $CUDA_VISIBLE_DEVICES; exit 3"]),
              env={"PATH": os.environ["PATH"]})
    started = link.expect("job_started", job_id=5, attempt=1)
    assert started["sup_pid"] and started["pgid"]
    exited = link.expect("job_exited", job_id=5, attempt=1)
    assert exited["exit_code"] == 3 and exited["error"] is None
    assert (tmp_path / "job-5.out").read_text() == "hi 0\n"
    link.expect("node_heartbeat", timeout=5)  # the master's interval (0.3 s) is used
    record = tmp_path / "state" / "jobs" / "5.1.json"
    assert record.exists()
    link.send("release", job_id=5, attempt=1)
    deadline = time.monotonic() + 5
    while record.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not record.exists()
    node.wait_line("connected to master 127.0.0.1:%d" % master.port)
    node.wait_line("registered with 2 GPUs; keeping 0 running jobs")
    node.wait_line("launch job 5 attempt 1 as root on GPUs 0")


def test_a_signal_reaches_a_running_job(cluster, tmp_path):
    master, start = cluster
    start()
    link = master.next_link()
    link.send("launch", job=job_record(tmp_path, 7, ["sleep", "30"]), env={"PATH": os.environ["PATH"]})
    link.expect("job_started", job_id=7, attempt=1)
    link.send("signal", job_id=7, attempt=1, signum=15)
    exited = link.expect("job_exited", job_id=7, attempt=1, timeout=10)
    assert exited["signal"] == 15


def test_a_user_missing_on_this_host_fails_the_job_before_launch(cluster, tmp_path):
    master, start = cluster
    start()
    link = master.next_link()
    link.send("launch", job=job_record(tmp_path, 8, ["true"], user="no-such-user-here"), env={})
    exited = link.expect("job_exited", job_id=8, attempt=1)
    assert exited["error"] == "user no-such-user-here does not exist on host n1"
    assert exited["exit_code"] is None


def test_a_bad_frame_drops_the_link_and_the_node_reconnects(cluster, tmp_path):
    master, start = cluster
    node = start()
    link = master.next_link()
    link.connection.send({"v": protocol.VERSION, "type": "launch", "job": {"id": "x"}})
    again = master.next_link()
    assert again.registration["name"] == "n1"
    node.wait_line("link lost: bad frame from the master")
    link.connection.close()
    # The new link works.
    again.send("launch", job=job_record(tmp_path, 9, ["true"]), env={"PATH": os.environ["PATH"]})
    assert again.expect("job_exited", job_id=9, attempt=1)["exit_code"] == 0


def test_reports_made_while_disconnected_are_sent_and_unkept_attempts_are_killed(cluster, tmp_path):
    master, start = cluster
    node = start()
    link = master.next_link()
    link.send("launch", job=job_record(tmp_path, 11, ["sleep", "30"]), env={"PATH": os.environ["PATH"]})
    link.send("launch", job=job_record(tmp_path, 12, ["sh", "-c", "sleep 1; exit 4"]),
              env={"PATH": os.environ["PATH"]})
    long_job = link.expect("job_started", job_id=11, attempt=1)
    link.expect("job_started", job_id=12, attempt=1)
    master.keep = [(12, 1)]          # the master no longer runs job 11 here
    link.connection.close()          # a cut: job 12 ends while the node is away
    time.sleep(1.5)
    again = master.next_link()
    reported = {(a["job_id"], a["attempt"]): a["phase"] for a in again.registration["attempts"]}
    assert reported[(11, 1)] == "started" and (12, 1) in reported
    assert again.expect("job_exited", job_id=12, attempt=1)["exit_code"] == 4
    deadline = time.monotonic() + 10
    while process_alive(long_job["pgid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(long_job["pgid"])
    record = tmp_path / "state" / "jobs" / "11.1.json"
    while record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not record.exists()
    node.wait_line("keeping 1 running job")


def test_a_restarted_node_adopts_its_running_job_and_reports_it(cluster, tmp_path):
    master, start = cluster
    node = start()
    link = master.next_link()
    link.send("launch", job=job_record(tmp_path, 21, ["sh", "-c", "sleep 1.5; exit 6"]),
              env={"PATH": os.environ["PATH"]})
    link.expect("job_started", job_id=21, attempt=1)
    node.stop()
    link.connection.close()
    master.keep = [(21, 1)]
    start()
    again = master.next_link()
    assert [(a["job_id"], a["phase"]) for a in again.registration["attempts"]] == [(21, "started")]
    assert again.expect("job_exited", job_id=21, attempt=1, timeout=15)["exit_code"] == 6


def test_after_a_cut_link_a_kept_job_is_reported_started_again(cluster, tmp_path):
    master, start = cluster
    start()
    link = master.next_link()
    link.send("launch", job=job_record(tmp_path, 22, ["sh", "-c", "sleep 2; exit 4"]),
              env={"PATH": os.environ["PATH"]})
    first = link.expect("job_started", job_id=22, attempt=1)
    master.keep = [(22, 1)]
    link.connection.close()  # the report may have been lost with this link: it is sent again
    again = master.next_link()
    assert [(a["job_id"], a["phase"]) for a in again.registration["attempts"]] == [(22, "started")]
    started = again.expect("job_started", job_id=22, attempt=1, timeout=5)
    assert (started["pgid"], started["sup_pid"]) == (first["pgid"], first["sup_pid"])
    assert again.expect("job_exited", job_id=22, attempt=1, timeout=15)["exit_code"] == 4


def test_a_wrong_key_is_logged_once_and_retried(cluster, key_files):
    master, start = cluster
    node = start(key=key_files[1])
    first = master.refused.get(timeout=15)
    assert "refused" in first
    master.refused.get(timeout=15)  # it tries again
    node.wait_line("cannot join master")
    time.sleep(1.0)
    assert len([line for line in node.lines if "cannot join" in line]) == 1, node.lines
    assert master.links.empty()


def test_kill_ends_an_attempt_fenced_and_forgets_it(cluster, tmp_path):
    master, start = cluster
    start()
    link = master.next_link()
    link.send("launch", job=job_record(tmp_path, 31, ["sleep", "30"]), env={"PATH": os.environ["PATH"]})
    started = link.expect("job_started", job_id=31, attempt=1)
    link.send("kill", job_id=31, attempt=1)
    record = tmp_path / "state" / "jobs" / "31.1.json"
    deadline = time.monotonic() + 10
    while (process_alive(started["pgid"]) or record.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(started["pgid"]) and not record.exists()
    # Forgotten: its end is not reported (a later job's report shows the link still carries them).
    link.send("launch", job=job_record(tmp_path, 32, ["true"]), env={"PATH": os.environ["PATH"]})
    link.expect("job_exited", job_id=32, attempt=1)
    assert not [f for t, f in link.received if t == "job_exited" and f["job_id"] == 31]
