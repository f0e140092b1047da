"""A real distributed run across two hosts: `mgpu srun --nodes 2 --gpus-per-node 1 --distributed
-- torchrun allreduce.py` (PyTorch CPU build, gloo backend) in network namespaces, with no
torchrun argument: each process's all_reduce prints the right sum. PyTorch is installed once into
a virtualenv kept under /var/tmp (pip takes the wheel on this machine's disk, about 25 s); where
it cannot be installed the test says so and skips."""

import os
import subprocess

import pytest

from test_multinode import ALICE, TERMINAL, home, lab, needs_node, network  # noqa: F401

TORCH = "torch==2.13.0"
VENV = "/var/tmp/mgpu-test-torch-venv"
SYSTEM_PYTHON = "/usr/bin/python3"

ALLREDUCE = """\
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print("rank %d of %d: sum %g" % (dist.get_rank(), dist.get_world_size(), value.item()), flush=True)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def torchrun():
    """The torchrun of a virtualenv with PyTorch (made on first use, kept for later runs)."""
    path = os.path.join(VENV, "bin", "torchrun")
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs %s to make a virtualenv every user can run" % SYSTEM_PYTHON)
    if not os.path.exists(path):
        # Debian's python3: the default one may live under /root, which the job's user cannot enter.
        made = subprocess.run([SYSTEM_PYTHON, "-m", "venv", VENV], capture_output=True, text=True)
        if made.returncode == 0:
            made = subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "--quiet", TORCH],
                                  capture_output=True, text=True, timeout=900)
        if made.returncode != 0 or not os.path.exists(path):
            subprocess.run(["rm", "-rf", VENV])
            pytest.skip("cannot install %s here: %s" % (TORCH, (made.stderr or made.stdout).strip()[-300:]))
    return path


@needs_node
def test_torchrun_all_reduce_across_two_hosts_needs_no_arguments(lab, torchrun):
    cluster = lab.start_cluster()
    script = os.path.join(home(ALICE), "allreduce.py")
    with open(script, "w") as handle:
        handle.write(ALLREDUCE)
    os.chmod(script, 0o644)
    output = os.path.join(home(ALICE), "allreduce-%j.out")
    # The namespaces share one host name: gloo is told which interface to use, as on a
    # host with several network cards.
    job = cluster.run(ALICE, "srun", "--parsable", "--nodes", "2", "--gpus-per-node", "1", "--distributed",
                      "--output", output, "--", torchrun, script, env={"GLOO_SOCKET_IFNAME": "eth0"})
    assert job.returncode == 0, job.stderr
    job_id = int(job.stdout)
    ended = cluster.wait_state(job_id, TERMINAL, timeout=120)
    path = output.replace("%j", str(job_id))
    outputs = []
    for name in (path, path + ".rank1"):
        with open(name) as handle:
            outputs.append(handle.read())
    assert ended["state"] == "COMPLETED", (ended["reason"], ended["exit_code"], outputs)
    assert "rank 0 of 2: sum 3" in outputs[0], outputs
    assert "rank 1 of 2: sum 3" in outputs[1], outputs
