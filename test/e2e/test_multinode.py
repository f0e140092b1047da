"""Several GPU hosts: a master and `mgpu node`s, each in its own network namespace (netns.py),
talking over the test subnet; clients run in the root namespace against the master's UNIX
socket. What a user and an operator see: registration and heartbeats, jobs on remote hosts as
their user, cancel, a node agent killed and restarted, a network cut past the node timeout, a
wrong cluster key, a master killed and restarted.

Timeouts are short (heartbeat 1 s, node timeout 3-6 s) so the file runs in about two minutes.
"""

import functools
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import netns
from harness import MGPU_BIN, REPO, SRC, TEST_USERS, Cluster, Node, SpawnedMaster, pids_matching, wait_for

ALICE, BOB = "mgpu-alice", "mgpu-bob"
PORT = 8080
HEARTBEAT = 1
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
BUSY = ("idle", "mixed", "allocated")  # a node that is up
# What a log line about a refused link is expected to speak of.
REFUSAL = re.compile(r"(?i)refus|reject|denied|not this cluster|differ|wrong key|handshake|certificate")


@functools.lru_cache(maxsize=None)
def node_role_built():
    """Whether `mgpu node --help` succeeds (checked once)."""
    if MGPU_BIN:
        command = [MGPU_BIN if os.path.isabs(MGPU_BIN) else os.path.join(REPO, MGPU_BIN)]
    else:
        command = [sys.executable, "-m", "mgpu"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    if not MGPU_BIN:
        env["PYTHONPATH"] = SRC
    try:
        return subprocess.run(command + ["node", "--help"], capture_output=True, env=env, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_node = pytest.mark.skipif(not node_role_built(), reason="mgpu node is not built yet")


def home(user):
    return pwd.getpwnam(user).pw_dir


def gated_job(cluster, exit_code):
    """A job of ALICE that waits for a file, then exits `exit_code`; once it runs: (its id, the
    file that lets it go on, a word of its command line to find its process by, its row)."""
    token = secrets.token_hex(4)
    go = os.path.join(home(ALICE), "go-" + token)
    marker = "mn-job-" + token
    job = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c",
                         "while [ ! -e %s ]; do sleep 0.1; done; exit %d" % (go, exit_code), marker)
    return job, go, marker, cluster.wait_state(job, "RUNNING")


def unique_sleep():
    """A `sleep` argument no other process uses, to find the job's process by (pgrep -f)."""
    return "300.%d" % (secrets.randbelow(900000) + 100000)


# --- fixtures --------------------------------------------------------------------------------

def namespaced_hosts(hosts):
    """A fixture's body: `hosts` network namespaces (h0, h1, ...), yielded, then removed (the
    test fails if they cannot be); skipped where namespaces are not available."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    net = netns.Network(hosts=hosts).setup()
    yield net
    problems = net.teardown()
    if problems:
        pytest.fail("network teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def network():
    """Hosts h0 (the master), h1, h2 in network namespaces; removed after the test."""
    yield from namespaced_hosts(3)


class Lab:
    """A master in h0 with no GPUs of its own, listening on h0's address, and nodes in the
    other hosts; each daemon has its own directory under one temporary directory."""

    def __init__(self, installation, users, network):
        self.installation = installation
        self.users = users
        self.network = network
        self.workdir = tempfile.mkdtemp(prefix="multinode-", dir="/tmp")
        os.chmod(self.workdir, 0o755)
        self.key = self.keygen("cluster.key")
        self.master = None
        self.cluster = None
        self.nodes = {}
        self.node_hosts = {}

    @property
    def master_address(self):
        return "%s:%d" % (self.network.address("h0"), PORT)

    def keygen(self, name):
        path = os.path.join(self.workdir, name)
        result = subprocess.run(list(self.installation.command(None)) + ["keygen", "--output", path],
                                env=self.installation.env(os.path.join(self.workdir, "none.sock")),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, "mgpu keygen failed: %s%s" % (result.stdout, result.stderr)
        return path

    def start_master(self, node_timeout=6):
        workdir = os.path.join(self.workdir, "master")
        os.mkdir(workdir)
        os.chmod(workdir, 0o755)
        self.master = SpawnedMaster(
            self.installation, workdir, functools.partial(self.network.run_in, "h0"), fake_gpus="0",
            args=["--listen", self.master_address, "--key", self.key, "--node-timeout", str(node_timeout),
                  "--heartbeat-interval", str(HEARTBEAT), "--node-name", "head"])
        self.master.start()
        self.cluster = Cluster(self.installation, self.master, self.users)
        return self.cluster

    def start_node(self, name, host, key=None, fake_gpus="2:16000"):
        workdir = os.path.join(self.workdir, name)
        os.mkdir(workdir)
        os.chmod(workdir, 0o755)
        node = Node(self.installation, workdir, functools.partial(self.network.run_in, host), name,
                    self.master_address, key or self.key, fake_gpus=fake_gpus, heartbeat_interval=HEARTBEAT)
        self.nodes[name] = node
        self.node_hosts[name] = host
        return node.start()

    def start_cluster(self, node_timeout=6):
        """The master and n1 (h1), n2 (h2) with two GPUs each, both registered."""
        cluster = self.start_master(node_timeout)
        self.start_node("n1", "h1")
        self.start_node("n2", "h2")
        self.wait_nodes({"n1": ("idle",), "n2": ("idle",)})
        return cluster

    def node_table(self):
        return {node["name"]: node for node in self.cluster.queue()["nodes"]}

    def _node_table_or_why(self):
        try:
            return self.node_table()
        except AssertionError as error:  # what `mgpu queue` said
            return "(mgpu queue failed: %s)" % error

    def wait_nodes(self, wanted, timeout=10):
        """Wait until each named node is in one of its states: {name: (state, ...)}. A node
        process that exits meanwhile (without expect_exit) fails at once, with its log."""
        def ready():
            for name, node in self.nodes.items():
                if node.process.poll() is not None and node._expected_exit is None:
                    raise AssertionError("node %s exited with %s:\n%s" % (name, node.process.returncode, node.log[-3000:]))
            table = self.node_table()
            if all(name in table and table[name].get("state") in states for name, states in wanted.items()):
                return table
            return None
        try:
            return wait_for(ready, timeout=timeout, interval=0.1, what="nodes %s" % ", ".join(
                "%s %s" % (name, "/".join(states)) for name, states in wanted.items()))
        except AssertionError as error:
            raise AssertionError("%s\nnode table: %s\nmaster log:\n%s%s" % (
                error, self._node_table_or_why(),
                self.master.log[-3000:],
                "".join("\n%s log:\n%s" % (n, node.log[-1500:]) for n, node in self.nodes.items()))) from None

    def job_pids(self, pattern, host):
        """Pids of processes whose command line contains `pattern`, running in `host`."""
        return pids_matching(pattern) & self.network.pids(host)

    def close(self):
        """Stop every daemon, kill the test users' processes; what went wrong, as text."""
        report = []
        for node in self.nodes.values():
            node.stop()
        if self.master:
            self.master.stop()
        for name in TEST_USERS:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        for name, daemon in list(self.nodes.items()) + [("master", self.master)]:
            if daemon is None:
                continue
            problems = daemon.health()
            if problems:
                report.append("%s in %s:\n  %s\nits log (tail):\n%s" % (
                    name, daemon.workdir, "\n  ".join(problems), daemon.log[-3000:]))
        shutil.rmtree(self.workdir, ignore_errors=True)
        return report


@pytest.fixture
def lab(installation, users, network):
    lab = Lab(installation, users, network)
    yield lab
    report = lab.close()
    if report:
        pytest.fail("a daemon crashed or stopped badly\n" + "\n".join(report), pytrace=False)


# --- the harness itself ----------------------------------------------------------------------

def test_the_network_harness(record_property):
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    network = netns.Network(hosts=3)
    with network:
        assert network.namespace("h1") == "mgpu-t-%s-h1" % network.tag
        assert network.address("h2") == "10.213.7.12"
        assert netns.blackhole_route(), "no blackhole route for %s in the root namespace" % netns.SUBNET
        assert network.ping("h1", "h2") and network.ping("h2", "h1") and network.ping("h0", "h2")
        root_addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert netns.ADDRESS_PREFIX not in root_addresses  # test addresses exist only inside
        network.cut("h1")
        assert not network.ping("h0", "h1", timeout=1)
        assert network.ping("h0", "h2")
        network.restore("h1")
        assert network.ping("h0", "h1", timeout=5)
        sleeper = network.run_in("h2", ["sleep", unique_sleep()])
        deadline = time.monotonic() + 10  # `ip netns exec` enters the namespace, then execs sleep
        while network.pids("h2") != {sleeper.pid} and time.monotonic() < deadline:
            time.sleep(0.02)
        assert network.pids("h2") == {sleeper.pid}
        created = list(network.created)
    assert sleeper.poll() is not None  # killed at teardown
    remaining = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not set(created) & set(remaining)
    if not netns.route_holders():  # another test session on this machine may hold it
        assert not netns.blackhole_route()
    record_property("netns_setup_s", round(network.setup_seconds, 4))
    record_property("netns_teardown_s", round(network.teardown_seconds, 4))
    print("3 hosts: setup %.0f ms, teardown %.0f ms" % (network.setup_seconds * 1000, network.teardown_seconds * 1000))


# --- the cluster ------------------------------------------------------------------------------

@needs_node
def test_nodes_register_and_heartbeat(lab):
    lab.start_master(node_timeout=6)
    lab.start_node("n1", "h1")
    lab.start_node("n2", "h2")
    nodes = lab.wait_nodes({"n1": ("idle",), "n2": ("idle",)}, timeout=10)
    for name, host in (("n1", "h1"), ("n2", "h2")):
        node = nodes[name]
        assert len(node["gpus"]) == 2, node
        assert str(node["address"]).startswith(lab.network.address(host)), node
        assert node["last_heartbeat"], node
    first = {name: nodes[name]["last_heartbeat"] for name in ("n1", "n2")}
    wait_for(lambda: all(lab.node_table()[name]["last_heartbeat"] != seen for name, seen in first.items()),
             timeout=3 * HEARTBEAT + 2, interval=0.2, what="the nodes' last_heartbeat to advance")
    for name in ("n1", "n2"):
        up = [line for line in lab.master.log.splitlines()
              if re.search(r"\b%s\b" % name, line) and re.search(r"(?i)\b(up|registered|joined)\b", line)]
        assert len(up) == 1, "expected one line saying node %s is up, got %r\nmaster log:\n%s" % (
            name, up, lab.master.log[-3000:])


@needs_node
def test_a_job_runs_on_a_node_as_its_user(lab):
    cluster = lab.start_cluster()
    output = os.path.join(home(ALICE), "multinode-%j.out")
    job = cluster.submit(ALICE, "--gpus", "1", "--output", output, "--",
                         "sh", "-c", 'echo "$MGPU_NODE $CUDA_VISIBLE_DEVICES $(id -un)"')
    ended = cluster.wait_state(job, TERMINAL)
    assert ended["state"] == "COMPLETED", ended
    assert ended["node"] in ("n1", "n2"), ended
    path = output.replace("%j", str(job))
    with open(path) as handle:
        assert handle.read().split() == [ended["node"], str(ended["gpu_ids"][0]), ALICE]
    assert os.stat(path).st_uid == pwd.getpwnam(ALICE).pw_uid


@needs_node
def test_srun_i_streams_a_remote_job_and_exits_with_its_code(lab):
    cluster = lab.start_cluster()
    result = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "1", "--", "sh", "-c", "echo on-$MGPU_NODE; exit 7")
    assert result.returncode == 7, (result.stdout, result.stderr, lab.master.log[-2000:])
    assert re.search(r"^on-n[12]$", result.stdout, re.M), "srun -i showed %r (stderr %r)" % (result.stdout, result.stderr)


@needs_node
def test_cancel_stops_a_remote_job(lab):
    cluster = lab.start_cluster()
    marker = "sleep " + unique_sleep()
    job = cluster.submit(ALICE, "--gpus", "1", "--", *marker.split())
    running = cluster.wait_state(job, "RUNNING")
    host = lab.node_hosts[running["node"]]
    wait_for(lambda: lab.job_pids(marker, host), what="the job's process in %s" % host)
    result = cluster.run(ALICE, "cancel", job)
    assert result.returncode == 0, result.stderr
    cluster.wait_state(job, "CANCELLED")
    wait_for(lambda: not pids_matching(marker), timeout=5, what="the cancelled job's process to end")


@needs_node
def test_node_agent_killed_and_back_within_the_timeout_loses_nothing(lab):
    cluster = lab.start_cluster(node_timeout=6)
    job, go, marker, running = gated_job(cluster, 5)
    name = running["node"]
    node, host = lab.nodes[name], lab.node_hosts[name]
    wait_for(lambda: lab.job_pids(marker, host), what="the job's process in %s" % host)

    node.kill()
    killed_at = time.monotonic()
    time.sleep(1.5)
    assert lab.job_pids(marker, host), "the job died with its node agent"
    assert cluster.job(job)["state"] == "RUNNING"
    node.start()
    lab.wait_nodes({name: ("mixed", "allocated")}, timeout=6)
    assert time.monotonic() - killed_at < 6, "the node took longer than node_timeout to come back"
    back = cluster.job(job)
    assert back["state"] == "RUNNING" and back["node"] == name and back["restarts"] == 0, back

    open(go, "w").close()
    ended = cluster.wait_state(job, TERMINAL)
    assert (ended["state"], ended["exit_code"]) == ("FAILED", 5), ended
    assert lab.node_table()[name]["state"] == "idle"


@needs_node
def test_network_cut_past_the_timeout_fails_or_requeues_and_the_node_rejoins(lab):
    node_timeout = 3
    cluster = lab.start_master(node_timeout=node_timeout)
    lab.start_node("n1", "h1")
    lab.wait_nodes({"n1": ("idle",)})
    plain, requeued = "sleep " + unique_sleep(), "sleep " + unique_sleep()
    job = cluster.submit(ALICE, "--gpus", "1", "--", *plain.split())
    again = cluster.submit(BOB, "--gpus", "1", "--requeue", "--", *requeued.split())
    for job_id, marker in ((job, plain), (again, requeued)):
        assert cluster.wait_state(job_id, "RUNNING")["node"] == "n1"
        wait_for(lambda: lab.job_pids(marker, "h1"), what="job %d's process in h1" % job_id)
    lab.start_node("n2", "h2")
    lab.wait_nodes({"n2": ("idle",)})

    lab.network.cut("h1")
    cut_at = time.monotonic()
    lab.wait_nodes({"n1": ("down",)}, timeout=node_timeout + 3)
    failed = cluster.wait_state(job, TERMINAL, timeout=5)
    assert failed["state"] == "NODE_FAIL", failed
    moved = wait_for(lambda: (lambda j: j if j["state"] == "RUNNING" and j["node"] == "n2" else None)(cluster.job(again)),
                     timeout=10, interval=0.1, what="the requeued job to run on n2\n" + lab.master.log[-3000:])
    assert moved["restarts"] == 1, moved
    wait_for(lambda: lab.job_pids(requeued, "h2"), what="the requeued job's process in h2")

    time.sleep(max(0.0, cut_at + node_timeout + 3 - time.monotonic()))
    lab.network.restore("h1")
    lab.wait_nodes({"n1": ("idle",)}, timeout=15)
    # The attempts n1 still ran are over for the master: killed there, so nothing runs twice.
    wait_for(lambda: not lab.job_pids(plain, "h1") and not lab.job_pids(requeued, "h1"), timeout=10,
             what="n1 to kill the attempts the master ended or moved\nn1 log:\n" + lab.nodes["n1"].log[-2000:])
    assert lab.job_pids(requeued, "h2"), "the requeued job's attempt on n2 was killed"
    assert cluster.job(again)["state"] == "RUNNING" and cluster.job(again)["node"] == "n2"
    assert cluster.job(job)["state"] == "NODE_FAIL"
    assert cluster.run(BOB, "cancel", again).returncode == 0
    cluster.wait_state(again, "CANCELLED")


@needs_node
def test_a_node_with_the_wrong_key_is_refused(lab):
    lab.start_master(node_timeout=6)
    lab.start_node("n1", "h1")
    impostor = lab.start_node("nbad", "h2", key=lab.keygen("other.key"))
    impostor.expect_exit()  # giving up on a refused key, or retrying: both are fine
    lab.wait_nodes({"n1": ("idle",)})
    address = lab.network.address("h2")
    refused = wait_for(lambda: [line for line in lab.master.log.splitlines() if address in line], timeout=10,
                       what="a master log line naming the refused link from %s\n%s" % (address, lab.master.log[-3000:]))
    assert REFUSAL.search(refused[0]), refused
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert "nbad" not in lab.node_table()
        time.sleep(0.2)
    # One line per refused link (the node may retry: each attempt comes from a port of its own).
    refused = [line for line in lab.master.log.splitlines() if address in line]
    ports = [match.group(1) for match in (re.search(re.escape(address) + r":(\d+)", line) for line in refused) if match]
    assert len(ports) == len(set(ports)), "more than one line per refused link:\n" + "\n".join(refused)
    assert [line for line in impostor.log.splitlines() if REFUSAL.search(line)], \
        "the refused node logged nothing about it:\n" + impostor.log[-2000:]


@needs_node
def test_master_killed_and_restarted_keeps_remote_jobs(lab):
    cluster = lab.start_cluster(node_timeout=6)
    job, go, marker, running = gated_job(cluster, 3)
    host = lab.node_hosts[running["node"]]
    wait_for(lambda: lab.job_pids(marker, host), what="the job's process in %s" % host)
    node_pids = {name: node.pid for name, node in lab.nodes.items()}

    lab.master.kill()
    time.sleep(0.5)
    lab.master.start()
    lab.wait_nodes({"n1": BUSY, "n2": BUSY}, timeout=15)
    assert {name: node.pid for name, node in lab.nodes.items()} == node_pids
    assert all(node.process.poll() is None for node in lab.nodes.values()), "a node exited with the master"
    kept = cluster.job(job)
    assert kept["state"] == "RUNNING" and kept["node"] == running["node"], kept
    assert kept["start_time"] == running["start_time"] and kept["restarts"] == 0, kept
    assert lab.job_pids(marker, host)

    open(go, "w").close()
    ended = cluster.wait_state(job, TERMINAL)
    assert (ended["state"], ended["exit_code"]) == ("FAILED", 3), ended
    after = cluster.submit(BOB, "--gpus", "1", "--", "true")
    assert cluster.wait_state(after, TERMINAL)["state"] == "COMPLETED"


@needs_node
def test_clients_on_a_node_host_are_relayed_with_their_own_identity(lab):
    cluster = lab.start_cluster()
    via_n1 = {"MGPU_SOCKET": lab.nodes["n1"].socket}
    via_n2 = {"MGPU_SOCKET": lab.nodes["n2"].socket}
    submitted = cluster.run(ALICE, "srun", "--parsable", "--gpus", "1", "--", "sleep", unique_sleep(), env=via_n1)
    assert submitted.returncode == 0, submitted.stderr + lab.master.log[-2000:]
    job = int(submitted.stdout)
    running = cluster.wait_state(job, "RUNNING")
    assert running["user"] == ALICE and running["uid"] == pwd.getpwnam(ALICE).pw_uid
    listed = cluster.run(BOB, "queue", "--json", env=via_n2)
    assert listed.returncode == 0 and job in [j["id"] for j in json.loads(listed.stdout)["jobs"]]
    table = cluster.run(BOB, "queue", env=via_n2)  # the table's compact reply, relayed
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("%d " % job))
    assert row[1:3] == [ALICE, "RUNNING"], table.stdout
    refused = cluster.run(BOB, "cancel", str(job), env=via_n2)
    assert refused.returncode == 1
    assert refused.stderr == "mgpu: cannot cancel job %d: permission denied: job %d belongs to %s\n" % (job, job, ALICE)
    assert cluster.job(job)["state"] == "RUNNING"
    streamed = cluster.run(ALICE, "srun", "-i", "-q", "--gpus", "0", "--", "sh", "-c", "echo via-n1; exit 3",
                           env=via_n1)
    assert (streamed.returncode, streamed.stdout) == (3, "via-n1\n"), streamed.stderr + lab.master.log[-2000:]
    assert [(j["user"], j["exit_code"]) for j in cluster.queue()["jobs"] if j["id"] != job] == [(ALICE, 3)]
    assert cluster.run(ALICE, "cancel", str(job), env=via_n1).returncode == 0
    cluster.wait_state(job, "CANCELLED")
