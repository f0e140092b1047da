"""`srun -i` from a node's host: a user on a host that runs `mgpu node` (a client in the root
namespace against that node's UNIX socket, as in test_multinode.py) follows a job that runs on
another host, through the node's link to the master: output, exit code, Ctrl+C, a lost master,
and an attach to someone else's job refused as on the master's host."""

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time

import pytest

from harness import USER_PYTHON, popen_as, wait_for
from test_multinode import ALICE, BOB, lab, needs_node, network, unique_sleep  # noqa: F401 (fixtures)


def fill_a_node(cluster, user=ALICE):
    """Occupy both GPUs of one node with a sleeping job; (job id, that node's name)."""
    job = cluster.submit(user, "--gpus", "2", "--", "sleep", unique_sleep())
    return job, cluster.wait_state(job, "RUNNING")["node"]


def other_node(name):
    return {"n1": "n2", "n2": "n1"}[name]


class Lines:
    """A text pipe read line by line on a thread of its own, so that a test can wait for a line
    within a deadline."""

    def __init__(self, pipe):
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe):
        for line in pipe:
            self.lines.put(line)

    def wait_for(self, text, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no line with %r; saw %r" % (text, self.seen)) from None
            self.seen.append(line)
            if text in line:
                return line

    def rest(self, timeout=5):
        """What else comes before the pipe is closed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.seen.append(self.lines.get(timeout=0.1))
            except queue.Empty:
                continue
        return "".join(self.seen)


@needs_node
def test_srun_i_on_a_node_host_streams_a_job_on_another_host_and_exits_with_its_code(lab):
    cluster = lab.start_cluster()
    blocker, here = fill_a_node(cluster)
    elsewhere = other_node(here)
    via_here = {"MGPU_SOCKET": lab.nodes[here].socket}
    result = cluster.run(ALICE, "srun", "-i", "--gpus", "1", "--", "sh", "-c", "echo one; sleep 1; echo two; exit 7",
                         env=via_here)
    assert result.returncode == 7, (result.stdout, result.stderr, lab.master.log[-2000:])
    assert result.stdout == "one\ntwo\n", (result.stdout, result.stderr)
    running = re.search(r"job (\d+) running on %s, GPUs \d+$" % elsewhere, result.stderr, re.M)
    assert running, result.stderr
    assert "Traceback" not in result.stderr
    ended = cluster.job(int(running.group(1)))
    assert (ended["state"], ended["exit_code"], ended["node"], ended["user"]) == ("FAILED", 7, elsewhere, ALICE)
    assert cluster.run(ALICE, "cancel", str(blocker)).returncode == 0


@needs_node
def test_a_relayed_attach_to_someone_elses_job_is_refused_as_on_the_master(lab):
    if not os.access(USER_PYTHON, os.X_OK):
        pytest.skip("needs %s to send a raw attach as a test user" % USER_PYTHON)
    cluster = lab.start_cluster()
    alices, here = fill_a_node(cluster)
    script = ("import json, socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              "s.settimeout(30)\n"
              "s.connect(sys.argv[1])\n"
              "s.sendall(json.dumps({'v': 1, 'type': 'attach', 'job_id': int(sys.argv[2])}).encode() + b'\\n')\n"
              "data = b''\n"
              "while not data.endswith(b'\\n'):\n"
              "    chunk = s.recv(65536)\n"
              "    if not chunk:\n"
              "        break\n"
              "    data += chunk\n"
              "sys.stdout.write(data.decode())\n")
    for via in (lab.nodes[here].socket, lab.nodes[other_node(here)].socket, lab.master.socket):
        process = popen_as(BOB, [USER_PYTHON, "-c", script, via, str(alices)], {"PATH": "/usr/bin:/bin"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert json.loads(out) == {"ok": False, "error": "permission_denied",
                                   "message": "permission denied: job %d belongs to %s" % (alices, ALICE)}, via
    # srun -i of BOB's own job through the same node works at the same time.
    mine = cluster.run(BOB, "srun", "-i", "-q", "--gpus", "0", "--", "sh", "-c", "echo mine",
                       env={"MGPU_SOCKET": lab.nodes[here].socket})
    assert (mine.returncode, mine.stdout) == (0, "mine\n"), mine.stderr
    assert cluster.job(alices)["state"] == "RUNNING"


@needs_node
def test_ctrl_c_detaches_and_a_lost_master_ends_srun_with_one_line(lab):
    cluster = lab.start_cluster()
    blocker, here = fill_a_node(cluster)
    via_here = {"MGPU_SOCKET": lab.nodes[here].socket}
    marker = unique_sleep()

    srun = cluster.start(ALICE, "srun", "-i", "--gpus", "1", "--", "sh", "-c", "echo started; sleep %s" % marker,
                         env=via_here)
    out, err = Lines(srun.stdout), Lines(srun.stderr)
    job = int(re.search(r"job (\d+) running on", err.wait_for("running on %s" % other_node(here))).group(1))
    out.wait_for("started")
    srun.send_signal(signal.SIGINT)
    assert srun.wait(20) == 130
    assert "detached from job %d" % job in err.rest(timeout=1)
    assert cluster.job(job)["state"] == "RUNNING"  # detaching does not stop the job
    assert cluster.run(ALICE, "cancel", str(job), str(blocker)).returncode == 0

    again = cluster.start(ALICE, "srun", "-i", "--gpus", "0", "--", "sleep", unique_sleep(), env=via_here)
    err = Lines(again.stderr)
    err.wait_for("running on")
    lab.master.kill()
    assert again.wait(30) == 1
    told = err.rest(timeout=1)
    last = told.splitlines()[-1]
    assert last.startswith("mgpu: the link to the master ") and last.endswith(" was lost; try again shortly"), told
    assert "Traceback" not in told
    wait_for(lambda: "link lost" in lab.nodes[here].log, what="node %s to log the lost link" % here)
