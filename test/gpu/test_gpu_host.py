"""On a host with NVIDIA GPUs: the NVML inventory, memory-aware allocation beside processes
outside mgpu, and real CUDA jobs. Skipped where there is no GPU (CI has none)."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e"))
from harness import Cluster, Installation, Master, popen_as, wait_for  # noqa: E402

pytestmark = [
    pytest.mark.skipif(shutil.which("nvidia-smi") is None or not os.path.exists("/dev/nvidiactl"),
                       reason="needs an NVIDIA GPU and driver"),
    pytest.mark.skipif(os.getuid() != 0, reason="needs root"),
]

HOLD_MEMORY = """
import sys, time, torch
mb = int(sys.argv[1])
block = torch.empty(mb * 1024 * 1024, dtype=torch.uint8, device="cuda")
print("holding", mb, flush=True)
time.sleep(float(sys.argv[2]))
"""


def nvidia_smi_gpus():
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,uuid", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.strip().splitlines():
        index, name, memory, uuid = [part.strip() for part in line.split(",")]
        rows.append({"index": int(index), "name": name, "memory_mb": int(memory), "uuid": uuid})
    return rows


def has_torch():
    return subprocess.run([sys.executable, "-c", "import torch; assert torch.cuda.is_available()"],
                          capture_output=True).returncode == 0


@pytest.fixture
def gpu_cluster():
    installation = Installation()
    workdir = tempfile.mkdtemp(prefix="gpu-master-", dir="/tmp")
    os.chmod(workdir, 0o755)
    master = Master(installation, workdir, fake_gpus=None, args=["--allow-root-jobs"]).start()
    yield Cluster(installation, master, ())
    master.stop()
    installation.remove()
    shutil.rmtree(workdir, ignore_errors=True)


def test_nvml_inventory_matches_nvidia_smi(gpu_cluster):
    expected = nvidia_smi_gpus()
    assert "NVIDIA GPU" in gpu_cluster.master.log and "via NVML" in gpu_cluster.master.log
    gpus = gpu_cluster.queue()["nodes"][0]["gpus"]
    assert [(g["index"], g["name"], g["uuid"]) for g in gpus] == [(e["index"], e["name"], e["uuid"]) for e in expected]
    for gpu, real in zip(gpus, expected):
        assert abs(gpu["memory_mb"] - real["memory_mb"]) <= 1
    table = gpu_cluster.run(None, "queue").stdout
    assert expected[0]["name"] in table
    print(table)


def test_job_sees_its_gpu_by_physical_index(gpu_cluster):
    last = nvidia_smi_gpus()[-1]
    result = gpu_cluster.run(None, "srun", "-i", "-q", "--gpu-ids", str(last["index"]), "--", "sh", "-c",
                             "echo CVD=$CUDA_VISIBLE_DEVICES ORDER=$CUDA_DEVICE_ORDER; nvidia-smi -L")
    assert result.returncode == 0, result.stderr
    assert "CVD=%d ORDER=PCI_BUS_ID" % last["index"] in result.stdout
    assert last["uuid"] in result.stdout  # nvidia-smi inside the job sees exactly that GPU
    print(result.stdout)


@pytest.mark.skipif(not has_torch(), reason="needs torch with CUDA")
def test_real_cuda_job(gpu_cluster):
    code = ("import os, torch; x = torch.randn(4096, 4096, device='cuda'); y = x @ x; torch.cuda.synchronize(); "
            "print(torch.cuda.device_count(), torch.cuda.get_device_name(0), float(y.abs().sum()) > 0)")
    result = gpu_cluster.run(None, "srun", "-i", "-q", "--gpus", "1", "--", sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    count, *name, nonzero = result.stdout.split()
    assert count == "1" and nonzero == "True"
    print(result.stdout)


@pytest.mark.skipif(not has_torch(), reason="needs torch with CUDA")
def test_memory_used_outside_mgpu_is_respected(gpu_cluster):
    total = nvidia_smi_gpus()[0]["memory_mb"]
    outside_mb = int(total * 0.6)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_MEMORY, str(outside_mb), "120"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().startswith("holding")
        gpu = wait_for(lambda: (lambda g: g if g["external_mb"] >= outside_mb * 0.95 else None)(
            gpu_cluster.queue()["nodes"][0]["gpus"][0]), timeout=20, interval=0.5, what="NVML to see the outside process")
        print("external_mb seen by mgpu: %d (outside process holds %d MB of %d)" % (gpu["external_mb"], outside_mb, total))
        too_big = gpu_cluster.submit(None, "--gpu-ids", "0", "--mem", str(int(total * 0.5)), "--", "sleep", "60")
        fits = gpu_cluster.submit(None, "--gpu-ids", "0", "--mem", str(int(total * 0.2)), "--", sys.executable, "-c",
                                  HOLD_MEMORY, str(int(total * 0.15)), "60")
        gpu_cluster.wait_state(fits, "RUNNING")
        assert gpu_cluster.job(too_big)["state"] == "PENDING"
        assert gpu_cluster.job(too_big)["reason"].startswith("Resources")
        # The mgpu job's own memory is not counted as used outside mgpu.
        wait_for(lambda: "holding" in open(gpu_cluster.job(fits)["output"]).read(), timeout=60, what="job allocation")
        import time
        time.sleep(4)  # two NVML usage readings
        gpu = gpu_cluster.queue()["nodes"][0]["gpus"][0]
        assert gpu["external_mb"] < outside_mb * 1.05, gpu
        assert gpu["reserved_mb"] == int(total * 0.2)
        holder.kill()
        holder.wait()
        gpu_cluster.wait_state(too_big, "RUNNING", timeout=30)
    finally:
        holder.kill()
        gpu_cluster.run(None, "cancel", "--user", "root")


def test_job_of_an_ordinary_user_can_use_the_gpu(gpu_cluster):
    user = "mgpu-gpuuser"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        if subprocess.run(["useradd", "--create-home", user], capture_output=True).returncode != 0:
            pytest.skip("cannot create a user here")
    try:
        job = gpu_cluster.run(None, "srun", "--gpus", "0", "--", "true")  # the master serves root
        assert job.returncode == 0
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None
        if python is None:
            pytest.skip("no interpreter the user can run")
        argv = [python, "-m", "mgpu", "srun", "-i", "-q", "--gpus", "1", "--", "sh", "-c", "id -un; nvidia-smi -L"]
        env = gpu_cluster.installation.env(gpu_cluster.master.socket, user)
        process = popen_as(user, argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert out.splitlines()[0] == user and "GPU 0" in out
        print(out)
    finally:
        subprocess.run(["userdel", "--remove", user], capture_output=True)
