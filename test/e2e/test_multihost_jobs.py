"""Jobs on several hosts at once, as a user sees them: `srun --nodes 2 --gpus-per-node 1` on two
node hosts (network namespaces, see test_multinode.py): the environment of each part (hosts,
rank, MASTER_ADDR and a MASTER_PORT chosen on the rank-0 host that the other host really
reaches), output per rank, gang start (nothing starts while one host is short), gang failure (a
part exits 3: the other is stopped, the job FAILED with exit 3), cancel reaching every part,
requests no cluster could satisfy, and `srun -i` of such a job."""

import json
import os
import re
import secrets
import time

from harness import pids_matching, wait_for
from test_multinode import ALICE, TERMINAL, home, lab, needs_node, network  # noqa: F401

ENV_NAMES = ("MGPU_NODELIST", "MGPU_NNODES", "MGPU_NODE_RANK", "MGPU_GPUS_PER_NODE", "MGPU_NODE", "MASTER_ADDR",
             "MASTER_PORT", "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "PET_MASTER_ADDR",
             "PET_MASTER_PORT", "CUDA_VISIBLE_DEVICES")


def read_env(path):
    with open(path) as handle:
        return dict(line.split("=", 1) for line in handle.read().splitlines() if "=" in line)


@needs_node
def test_each_part_gets_its_hosts_rank_and_a_rendezvous_the_other_host_reaches(lab):
    cluster = lab.start_cluster()
    output = os.path.join(home(ALICE), "mh-%j.out")
    dump = "env | grep -E '^(%s)=' | sort" % "|".join(ENV_NAMES)
    job = cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "1", "--distributed", "--output", output,
                         "--", "sh", "-c", dump)
    ended = cluster.wait_state(job, TERMINAL)
    assert ended["state"] == "COMPLETED", ended
    assert [part["name"] for part in ended["nodes"]] in (["n1", "n2"], ["n2", "n1"]), ended
    rank0 = read_env(output.replace("%j", str(job)))
    rank1 = read_env(output.replace("%j", str(job)) + ".rank1")
    hosts = [part["name"] for part in ended["nodes"]]
    address = {name: lab.network.address(host) for name, host in lab.node_hosts.items()}
    for rank, env in enumerate((rank0, rank1)):
        assert env["MGPU_NODELIST"] == ",".join(hosts) and env["MGPU_NNODES"] == "2", env
        assert env["MGPU_NODE_RANK"] == str(rank) and env["MGPU_NODE"] == hosts[rank], env
        assert env["MGPU_GPUS_PER_NODE"] == "1" and env["CUDA_VISIBLE_DEVICES"] in ("0", "1"), env
        assert env["MASTER_ADDR"] == address[hosts[0]], env
        assert re.fullmatch(r"[0-9]{1,5}", env["MASTER_PORT"]) and env["MASTER_PORT"] == rank0["MASTER_PORT"], env
        assert (env["PET_NNODES"], env["PET_NODE_RANK"], env["PET_NPROC_PER_NODE"]) == ("2", str(rank), "1"), env
        assert (env["PET_MASTER_ADDR"], env["PET_MASTER_PORT"]) == (env["MASTER_ADDR"], env["MASTER_PORT"]), env

    # The rendezvous is real: rank 0 listens on MASTER_PORT, rank 1 on the other host connects.
    rendezvous = (
        "import os, socket, sys\n"
        "addr, port, rank = os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), os.environ['MGPU_NODE_RANK']\n"
        "if rank == '0':\n"
        "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', port)); s.listen(1)\n"
        "    s.settimeout(30); c, _ = s.accept(); print('rank 0 got', c.recv(100).decode())\n"
        "else:\n"
        "    import time\n"
        "    for _ in range(100):\n"
        "        try:\n"
        "            c = socket.create_connection((addr, port), timeout=2); break\n"
        "        except OSError: time.sleep(0.2)\n"
        "    c.sendall(b'hello from rank ' + rank.encode() + b' on ' + os.environ['MGPU_NODE'].encode()); print('sent')\n")
    job = cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "1", "--output", output,
                         "--", "python3", "-c", rendezvous)
    ended = cluster.wait_state(job, TERMINAL, timeout=60)
    assert ended["state"] == "COMPLETED", ended
    with open(output.replace("%j", str(job))) as handle:
        assert handle.read().strip() == "rank 0 got hello from rank 1 on %s" % ended["nodes"][1]["name"]


@needs_node
def test_nothing_starts_until_every_host_has_room(lab):
    cluster = lab.start_cluster()
    blocker = cluster.submit(ALICE, "--nodelist", "n1", "--gpus", "2", "--", "sleep", "300.%d" % secrets.randbelow(10**6))
    cluster.wait_state(blocker, "RUNNING")
    gang = cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "1", "--", "true")
    row = wait_for(lambda: (lambda j: j if j["reason"].startswith("Resources") else None)(cluster.job(gang)),
                   what="the gang job's reason")
    assert row["state"] == "PENDING" and "2 hosts" in row["reason"], row
    assert lab.node_table()["n2"]["state"] == "idle"  # no part started early on the free host
    assert cluster.run(ALICE, "cancel", blocker).returncode == 0
    ended = cluster.wait_state(gang, TERMINAL)
    assert ended["state"] == "COMPLETED" and len(ended["nodes"]) == 2, ended


@needs_node
def test_a_failing_part_stops_the_others_and_the_job_fails_with_its_code(lab):
    cluster = lab.start_cluster()
    marker = "300.%d" % secrets.randbelow(10**6)
    job = cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "1", "--", "sh", "-c",
                         'if [ "$MGPU_NODE_RANK" = 1 ]; then sleep 1; exit 3; fi; sleep %s' % marker)
    ended = cluster.wait_state(job, TERMINAL, timeout=30)
    assert (ended["state"], ended["exit_code"]) == ("FAILED", 3), ended
    assert "rank 1" in ended["reason"] and ended["nodes"][1]["name"] in ended["reason"], ended
    wait_for(lambda: not pids_matching("sleep " + marker), timeout=15, what="rank 0 to be stopped")
    assert {n["state"] for n in lab.node_table().values() if n["name"] != "head"} == {"idle"}


@needs_node
def test_cancel_reaches_every_part(lab):
    cluster = lab.start_cluster()
    marker = "300.%d" % secrets.randbelow(10**6)
    job = cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "1", "--", "sleep", marker)
    running = cluster.wait_state(job, "RUNNING")
    wait_for(lambda: len(lab.job_pids("sleep " + marker, lab.node_hosts["n1"]) |
                         lab.job_pids("sleep " + marker, lab.node_hosts["n2"])) == 2,
             what="both parts running")
    shown = cluster.run(ALICE, "queue")
    assert re.search(r"\b2x1\b", shown.stdout) and re.search(r"n[12]:[01] n[12]:[01]", shown.stdout), shown.stdout
    assert cluster.run(ALICE, "cancel", job).returncode == 0
    assert cluster.wait_state(job, TERMINAL)["state"] == "CANCELLED"
    wait_for(lambda: not pids_matching("sleep " + marker), timeout=15, what="every part to end")
    assert len(running["nodes"]) == 2


@needs_node
def test_requests_no_cluster_could_run_are_refused_and_srun_i_streams_rank_0(lab):
    cluster = lab.start_cluster()
    too_many = cluster.run(ALICE, "srun", "--nodes", "3", "--gpus-per-node", "1", "--", "true")
    assert too_many.returncode == 1 and too_many.stderr.startswith("mgpu: cannot ever run: "), too_many.stderr
    unknown = cluster.run(ALICE, "srun", "--node-gpu-ids", "n1:0;n9:0", "--", "true")
    assert unknown.returncode == 1 and "n9" in unknown.stderr, unknown.stderr
    mixed = cluster.run(ALICE, "srun", "--nodes", "2", "--gpus", "2", "--", "true")
    assert mixed.returncode == 1 and "--gpus-per-node" in mixed.stderr
    streamed = cluster.run(ALICE, "srun", "-i", "-q", "--node-gpu-ids", "n2:1;n1:0", "--", "sh", "-c",
                           'echo "rank $MGPU_NODE_RANK on $MGPU_NODE gpus $CUDA_VISIBLE_DEVICES"; [ "$MGPU_NODE_RANK" = 0 ] && exit 4; exit 0')
    assert streamed.returncode == 4, (streamed.stdout, streamed.stderr)
    assert streamed.stdout == "rank 0 on n2 gpus 1\n", streamed.stdout
    jobs = json.loads(cluster.run(ALICE, "queue", "--json", "--all").stdout)["jobs"]
    last = max(jobs, key=lambda j: j["id"])
    assert [(p["name"], p["gpu_ids"]) for p in last["nodes"]] == [("n2", [1]), ("n1", [0])]
    assert (last["state"], last["exit_code"]) == ("FAILED", 4), last
    verbose = cluster.run(ALICE, "srun", "-i", "--node-gpu-ids", "n1:1;n2:0", "--", "sleep", "1")
    assert verbose.returncode == 0 and re.search(r"running on n1:1 n2:0$", verbose.stderr, re.M), verbose.stderr


@needs_node
def test_label_streams_every_part_and_percent_r_names_each_parts_file(lab):
    cluster = lab.start_cluster()
    output = os.path.join(home(ALICE), "label-%j-%r.out")
    script = 'echo "hello from $MGPU_NODE_RANK"; sleep 0.3; printf "no newline $MGPU_NODE_RANK"'
    labelled = cluster.run(ALICE, "srun", "-i", "-q", "--parsable", "--label", "--nodes", "2", "--gpus-per-node", "1",
                           "--output", output, "--", "sh", "-c", script)
    assert labelled.returncode == 0, labelled.stderr
    assert sorted(labelled.stdout.splitlines()) == ["0: hello from 0", "0: no newline 0", "1: hello from 1",
                                                    "1: no newline 1"], labelled.stdout
    job = int(labelled.stderr.split()[0])
    for rank in (0, 1):
        with open(output.replace("%j", str(job)).replace("%r", str(rank))) as handle:
            assert handle.read() == "hello from %d\nno newline %d" % (rank, rank)
    plain = cluster.run(ALICE, "srun", "-i", "-q", "--nodes", "2", "--gpus-per-node", "1", "--output", output,
                        "--", "sh", "-c", script)
    assert (plain.returncode, plain.stdout) == (0, "hello from 0\nno newline 0"), plain
    alone = cluster.run(ALICE, "srun", "--label", "--", "true")
    assert alone.returncode == 2 and "give -i too" in alone.stderr


@needs_node
def test_mpi_runs_the_command_on_rank_0_with_a_hostfile_while_the_others_hold_their_gpus(lab):
    cluster = lab.start_cluster()
    output = os.path.join(home(ALICE), "mpi-%j.out")
    script = 'cat "$MGPU_HOSTFILE"; echo "rank=$MGPU_NODE_RANK file=$MGPU_HOSTFILE"; sleep 1'
    job = cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "1", "--mpi", "--output", output,
                         "--", "sh", "-c", script)
    running = cluster.wait_state(job, "RUNNING")
    wait_for(lambda: pids_matching("sleep infinity") & lab.network.pids(lab.node_hosts[running["nodes"][1]["name"]]),
             what="the holder of rank 1's GPUs")
    ended = cluster.wait_state(job, TERMINAL, timeout=30)
    assert (ended["state"], ended["exit_code"]) == ("COMPLETED", 0), ended
    hosts = [part["name"] for part in ended["nodes"]]
    with open(output.replace("%j", str(job))) as handle:
        lines = handle.read().splitlines()
    assert lines[:2] == ["%s slots=1" % hosts[0], "%s slots=1" % hosts[1]], lines
    assert lines[2].startswith("rank=0 file=%s/.mgpu/hostfiles/" % home(ALICE)), lines
    hostfile = lines[2].split("file=", 1)[1]
    info = os.stat(hostfile)
    assert (info.st_mode & 0o777, info.st_uid) == (0o600, running["uid"])
    wait_for(lambda: not (pids_matching("sleep infinity") & lab.network.pids(lab.node_hosts[hosts[1]])),
             timeout=15, what="the holder to be stopped")

    failed = cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "1", "--mpi", "--", "sh", "-c", "exit 3")
    ended = cluster.wait_state(failed, TERMINAL, timeout=30)
    assert (ended["state"], ended["exit_code"]) == ("FAILED", 3), ended
    alone = cluster.run(ALICE, "srun", "--mpi", "--", "true")
    assert alone.returncode == 1 and "--nodes" in alone.stderr


@needs_node
def test_a_time_limit_reaches_every_part(lab):
    cluster = lab.start_cluster()
    marker = "300.%d" % secrets.randbelow(10**6)
    job = cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "1", "--time-limit", "2", "--", "sleep", marker)
    ended = cluster.wait_state(job, TERMINAL, timeout=20)
    assert ended["state"] == "TIMEOUT", ended
    wait_for(lambda: not pids_matching("sleep " + marker), timeout=10, what="every part to end")


@needs_node
def test_a_host_lost_past_the_timeout_ends_the_whole_job_and_its_leftover_part_is_killed(lab):
    node_timeout = 3
    cluster = lab.start_cluster(node_timeout=node_timeout)
    marker = "300.%d" % secrets.randbelow(10**6)
    job = cluster.submit(ALICE, "--node-gpu-ids", "n1:0;n2:0", "--", "sleep", marker)
    cluster.wait_state(job, "RUNNING")
    for host in ("h1", "h2"):
        wait_for(lambda: lab.job_pids("sleep " + marker, host), what="the part in %s" % host)
    lab.network.cut("h2")
    ended = cluster.wait_state(job, TERMINAL, timeout=node_timeout + 10)
    assert ended["state"] == "NODE_FAIL" and "rank 1 on n2" in ended["reason"], ended
    wait_for(lambda: not lab.job_pids("sleep " + marker, "h1"), timeout=10, what="rank 0 on n1 to be killed")
    time.sleep(1)
    lab.network.restore("h2")
    lab.wait_nodes({"n2": ("idle",)}, timeout=15)
    wait_for(lambda: not lab.job_pids("sleep " + marker, "h2"), timeout=10,
             what="n2 to kill the part the master ended\nn2 log:\n" + lab.nodes["n2"].log[-2000:])
    assert cluster.job(job)["state"] == "NODE_FAIL"


@needs_node
def test_nodelist_exclude_and_mem_for_a_job_on_several_hosts(lab):
    cluster = lab.start_cluster()
    listed = cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "1", "--nodelist", "n2,n1", "--", "true")
    ended = cluster.wait_state(listed, TERMINAL)
    assert ended["state"] == "COMPLETED" and sorted(p["name"] for p in ended["nodes"]) == ["n1", "n2"], ended
    excluded = cluster.run(ALICE, "srun", "--nodes", "2", "--gpus-per-node", "1", "--exclude", "n2", "--", "true")
    assert excluded.returncode == 1 and excluded.stderr.startswith("mgpu: cannot ever run: "), excluded.stderr
    # --mem is per GPU on every host: two such jobs share the GPUs of both hosts at once.
    markers = ["300.%d" % secrets.randbelow(10**6) for _ in range(2)]
    shared = [cluster.submit(ALICE, "--nodes", "2", "--gpus-per-node", "2", "--mem", "8000", "--", "sleep", m)
              for m in markers]
    rows = [cluster.wait_state(job, "RUNNING") for job in shared]
    assert all(len(row["nodes"]) == 2 and all(len(p["gpu_ids"]) == 2 for p in row["nodes"]) for row in rows), rows
    assert {g["reserved_mb"] for n in lab.node_table().values() if n["name"] != "head" for g in n["gpus"]} == {16000}
    assert cluster.run(ALICE, "cancel", *shared).returncode == 0
    for job in shared:
        assert cluster.wait_state(job, TERMINAL)["state"] == "CANCELLED"
