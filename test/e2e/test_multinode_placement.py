"""Placement across hosts, as users and operators see it: --nodelist and --exclude (and
--gpu-ids on one named host), unknown node names refused at submit, a drained host named in the
reason of a job that waits for it, a submit-only host (its users submit, no job runs there), a
restarted master that knows its hosts before they reconnect, and a client on a host without any
mgpu daemon. The master and nodes run in network namespaces (see test_multinode.py)."""

import functools
import os
import subprocess
import tempfile

from harness import Node, popen_as, wait_for
from test_multinode import ALICE, BOB, BUSY, HEARTBEAT, TERMINAL, lab, needs_node, network  # noqa: F401


def job_row(cluster, job_id):
    return next(j for j in cluster.queue()["jobs"] if j["id"] == job_id)


def start_submit_only_node(lab, name, host):
    workdir = os.path.join(lab.workdir, name)
    os.mkdir(workdir)
    os.chmod(workdir, 0o755)
    node = Node(lab.installation, workdir, functools.partial(lab.network.run_in, host), name,
                lab.master_address, lab.key, fake_gpus=None, heartbeat_interval=HEARTBEAT,
                args=["--submit-only"])
    lab.nodes[name] = node
    lab.node_hosts[name] = host
    return node.start(wait=True)


@needs_node
def test_nodelist_exclude_and_gpu_ids_place_jobs_and_unknown_nodes_are_refused(lab):
    cluster = lab.start_cluster()
    on_n2 = cluster.submit(ALICE, "--gpus", "1", "--nodelist", "n2", "--", "true")
    not_n1 = cluster.submit(ALICE, "--gpus", "1", "--exclude", "n1", "--", "true")
    pinned = cluster.submit(BOB, "--nodelist", "n1", "--gpu-ids", "1", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    ends = {job: cluster.wait_state(job, TERMINAL) for job in (on_n2, not_n1, pinned)}
    assert [(ends[j]["state"], ends[j]["node"]) for j in (on_n2, not_n1, pinned)] == [
        ("COMPLETED", "n2"), ("COMPLETED", "n2"), ("COMPLETED", "n1")], ends
    assert ends[pinned]["gpu_ids"] == [1]
    assert ends[on_n2]["nodelist"] == ["n2"] and ends[not_n1]["exclude"] == ["n1"]

    unknown = cluster.run(ALICE, "srun", "--nodelist", "n1,n9", "--", "true")
    assert (unknown.returncode, unknown.stderr) == (
        1, "mgpu: --nodelist: no node is called n9 (nodes: head, n1, n2)\n")
    too_big = cluster.run(ALICE, "srun", "--nodelist", "n1", "--gpus", "3", "--", "true")
    assert too_big.returncode == 1 and too_big.stderr.startswith("mgpu: cannot ever run: ") \
        and "n1" in too_big.stderr and "\n" not in too_big.stderr.rstrip("\n")
    bad_name = cluster.run(ALICE, "srun", "--exclude", "n1,\x1b[2J", "--", "true")
    assert bad_name.returncode == 1 and "\x1b" not in bad_name.stderr and "not a node name" in bad_name.stderr
    everything = cluster.run(ALICE, "srun", "--exclude", "head,n1,n2", "--gpus", "0", "--", "true")
    assert everything.returncode == 1 and "cannot ever run" in everything.stderr
    assert {j["id"] for j in cluster.queue()["jobs"]} == {on_n2, not_n1, pinned}


@needs_node
def test_a_job_for_a_drained_host_waits_and_says_so(lab):
    cluster = lab.start_cluster()
    assert cluster.run(None, "drain", "n2", "--reason", "new fans").returncode == 0
    waiting = cluster.submit(ALICE, "--gpus", "1", "--nodelist", "n2", "--", "true")
    elsewhere = cluster.submit(ALICE, "--gpus", "1", "--", "true")
    assert cluster.wait_state(elsewhere, TERMINAL)["node"] == "n1"
    row = wait_for(lambda: (lambda r: r if "drained" in (r["reason"] or "") else None)(job_row(cluster, waiting)),
                   what="the waiting job's reason to name the drained host")
    assert row["state"] == "PENDING"
    assert row["reason"] == "Resources: none of the nodes it may use is up (drained: n2)"
    assert cluster.run(None, "resume", "n2").returncode == 0
    ended = cluster.wait_state(waiting, TERMINAL)
    assert (ended["state"], ended["node"]) == ("COMPLETED", "n2")


@needs_node
def test_a_submit_only_host_relays_its_users_and_runs_nothing(lab):
    cluster = lab.start_master()
    lab.start_node("n1", "h1")
    login = start_submit_only_node(lab, "login", "h2")
    table = lab.wait_nodes({"n1": ("idle",), "login": BUSY})
    assert table["login"]["gpus"] == [] and table["login"]["submit_only"] is True
    shown = cluster.run(ALICE, "queue")
    assert "submit only" in shown.stdout, shown.stdout
    assert "submit only (runs no jobs)" in lab.master.log

    via_login = {"MGPU_SOCKET": login.socket}
    submitted = cluster.run(ALICE, "srun", "--parsable", "--gpus", "0", "--", "sh", "-c", "echo $MGPU_NODE",
                            env=via_login)
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout)
    ended = cluster.wait_state(job, TERMINAL)
    assert (ended["state"], ended["user"]) == ("COMPLETED", ALICE) and ended["node"] in ("head", "n1"), ended
    there = cluster.run(ALICE, "srun", "--nodelist", "login", "--gpus", "0", "--", "true", env=via_login)
    assert there.returncode == 1 and "cannot ever run" in there.stderr and "login" in there.stderr
    assert "launch" not in login.log


@needs_node
def test_a_restarted_master_knows_its_hosts_before_they_reconnect(lab):
    cluster = lab.start_cluster(node_timeout=4)
    n2 = lab.nodes.pop("n2")  # stopped for a while: not among the nodes wait_nodes expects alive
    n2.stop()
    lab.master.kill()
    lab.master.start()
    table = lab.node_table()
    assert table["n2"]["state"] in ("unreachable", "down") and len(table["n2"]["gpus"]) == 2, table["n2"]
    waiting = cluster.submit(ALICE, "--gpus", "2", "--nodelist", "n2", "--", "true")  # known, though away
    lab.wait_nodes({"n1": BUSY, "n2": ("down",)}, timeout=15)
    assert job_row(cluster, waiting)["state"] == "PENDING"
    assert job_row(cluster, waiting)["reason"] == "Resources: none of the nodes it may use is up"
    lab.nodes["n2"] = n2.start()
    ended = cluster.wait_state(waiting, TERMINAL, timeout=20)
    assert (ended["state"], ended["node"]) == ("COMPLETED", "n2")


def test_a_client_on_a_host_without_a_daemon_is_told_where_to_run(installation, users):
    directory = tempfile.mkdtemp(prefix="no-daemon-", dir="/tmp")
    os.chmod(directory, 0o755)  # the user may look: there is simply no socket
    nowhere = os.path.join(directory, "mgpu.sock")
    command = list(installation.command(ALICE)) + ["queue"]
    env = installation.env(nowhere, ALICE, {"MGPU_MASTER_HOST": "gpu-head", "MGPU_MASTER_PORT": "9000"})
    process = popen_as(ALICE, command, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=60)
    os.rmdir(directory)
    assert process.returncode == 1 and out == b""
    assert err.decode() == (
        "mgpu: cannot reach the mgpu master at %s: no such socket; this host runs no mgpu daemon: run it on "
        "gpu-head (the master) or on a host running 'mgpu node', or join this host with 'sudo mgpu node "
        "--master gpu-head:9000' (--submit-only on a host without GPUs)\n" % nowhere)
