"""`mgpu drain` / `mgpu resume` on one host (the master's own node, fake GPUs): a drained node
finishes its running job and starts no new one, only root may drain it, it stays drained across a
restart of the master, and a resume lets the waiting job run."""

import os
import pwd
import time

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def node_of(cluster):
    nodes = cluster.queue()["nodes"]
    assert len(nodes) == 1, nodes
    return nodes[0]


def one_line_refusal(result, *fragments):
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgpu: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_drain_resume_and_a_restart_in_between(cluster):
    name = node_of(cluster)["name"]
    go = os.path.join(pwd.getpwnam(ALICE).pw_dir, "drain-go")
    if os.path.exists(go):
        os.unlink(go)
    running = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c",
                             "while [ ! -e %s ]; do sleep 0.05; done; echo done" % go)
    cluster.wait_state(running, "RUNNING")

    # Others may not drain or resume; an unknown node is one line too.
    one_line_refusal(cluster.run(ALICE, "drain", name), "permission denied", "root and operators")
    one_line_refusal(cluster.run(ALICE, "resume", name), "permission denied")
    one_line_refusal(cluster.run(None, "drain", "no-such-node"), "no such node", name)
    one_line_refusal(cluster.run(None, "drain", name, "--reason", "x" * 257), "reason", "256")
    assert node_of(cluster)["state"] != "drained"

    drained = cluster.run(None, "drain", name, "--reason", "maintenance")
    assert drained.returncode == 0, drained.stderr
    assert "node %s drained (maintenance)" % name in drained.stdout
    assert "1 running job finishing there" in drained.stdout
    assert "drain node %s by root: maintenance" % name in cluster.master.log
    node = node_of(cluster)
    assert node["state"] == "drained" and node["drain_reason"] == "maintenance"

    waiting = cluster.submit(BOB, "--gpus", "1", "--", "echo", "ran")
    time.sleep(0.5)
    job = cluster.job(waiting)
    assert job["state"] == "PENDING" and "drained: %s" % name in job["reason"], job
    assert cluster.job(running)["state"] == "RUNNING"

    # The running job finishes normally; the waiting one still does not start.
    open(go, "w").close()
    cluster.wait_state(running, "COMPLETED")
    assert cluster.read_output(ALICE, running) == "done\n"
    time.sleep(0.5)
    assert cluster.job(waiting)["state"] == "PENDING"

    # A drain outlasts a restart of the master.
    assert cluster.master.stop() == 0
    cluster.master.start()
    node = node_of(cluster)
    assert node["state"] == "drained" and node["drain_reason"] == "maintenance", node
    time.sleep(0.5)
    assert cluster.job(waiting)["state"] == "PENDING"

    resumed = cluster.run(None, "resume", name)
    assert resumed.returncode == 0, resumed.stderr
    assert "node %s resumed" % name in resumed.stdout
    assert "resume node %s by root" % name in cluster.master.log
    cluster.wait_state(waiting, "COMPLETED")
    assert cluster.read_output(BOB, waiting) == "ran\n"
    assert node_of(cluster)["state"] == "idle" and node_of(cluster)["drain_reason"] is None

    # Resumed for good: a further restart keeps it in service.
    assert cluster.master.stop() == 0
    cluster.master.start()
    assert node_of(cluster)["state"] == "idle"
    again = cluster.run(None, "resume", name)
    assert again.returncode == 0 and "was not drained" in again.stdout
