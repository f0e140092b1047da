"""Submitting a job on several hosts: the request's new fields at the protocol's edge (hostile
input), the controller's checks at submit, the node-link messages of a gang launch (job_port,
launch with choose_port), srun's options, the environment and output files of each part."""

import pytest

from mgpu import errors, protocol
from mgpu.cli import srun
from mgpu.master import gang_environment, part_record
from mgpu.model import Job

from test_controller import make, queue, refused, submit, submitted
from test_controller_drain import check_fails


def submit_message(**fields):
    return protocol.request("submit", command=["true"], cwd="/", env={}, **fields)


# -- the protocol's edge ------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, -1, protocol.MAX_JOB_HOSTS + 1, 10**30])
def test_nnodes_out_of_range_is_refused(value):
    assert "nnodes" in check_fails(submit_message(nnodes=value), errors.INVALID_ARGUMENT)


@pytest.mark.parametrize("value", ["2", 2.0, True, None, [2]])
def test_nnodes_of_the_wrong_type_is_a_bad_request(value):
    check_fails(submit_message(nnodes=value), errors.BAD_REQUEST)


@pytest.mark.parametrize("pairs", [[["n1"]], [["n1", 0]], [[5, [0]]], ["n1:0"], [["n1", [0], "x"]]])
def test_malformed_node_gpu_ids_are_a_bad_request(pairs):
    code = errors.BAD_REQUEST if pairs != [[5, [0]]] else errors.INVALID_ARGUMENT
    check_fails(submit_message(node_gpu_ids=pairs), code)


@pytest.mark.parametrize("pairs", [[["n1", []]], [["n1", [-1]]], [["n1", [4096]]], [["-x", [0]]],
                                   [["n\x1b[2J", [0]]], [["n%d" % i, [0]] for i in range(1025)]])
def test_node_gpu_ids_out_of_bounds_are_refused_with_one_clean_line(pairs):
    message = check_fails(submit_message(node_gpu_ids=pairs), errors.INVALID_ARGUMENT)
    assert "\x1b" not in message


def test_the_gang_messages_are_declared_with_their_limits():
    message = protocol.node_message("job_port", job_id=3, attempt=1, port=29500)
    assert protocol.check_node_message(message, protocol.NODE_TO_MASTER)[0] == "job_port"
    for port in (0, 65536, "29500", None):
        with pytest.raises(protocol.MgpuError):
            protocol.check_node_message(protocol.node_message("job_port", job_id=3, attempt=1, port=port),
                                        protocol.NODE_TO_MASTER)
    with pytest.raises(protocol.MgpuError):  # a node may not send what only the master sends
        protocol.check_node_message(protocol.node_message("launch", job={}, env={}), protocol.NODE_TO_MASTER)
    launch = protocol.node_message("launch", job={"id": 1}, env={}, choose_port=True)
    assert protocol.check_node_message(launch, protocol.MASTER_TO_NODE)[1]["choose_port"] is True
    with pytest.raises(protocol.MgpuError):
        protocol.check_node_message(protocol.node_message("launch", job={}, env={}, choose_port="yes"),
                                    protocol.MASTER_TO_NODE)


# -- at submit ----------------------------------------------------------------------------------

def test_a_job_on_two_hosts_is_accepted_and_shown_as_such():
    c = make(nodes={"n1": 2, "n2": 2})
    job_id = submitted(c, nnodes=2, gpus=1, distributed=True)
    row = next(r for r in queue(c)["jobs"] if r["id"] == job_id)
    assert (row["nnodes"], row["gpus"], row["nodes"]) == (2, 1, [])
    assert c.jobs[job_id].distributed is True


def test_more_hosts_than_the_cluster_has_cannot_ever_run():
    c = make(nodes={"n1": 2, "n2": 2})
    assert refused(submit(c, nnodes=3, gpus=1), errors.UNSATISFIABLE).startswith("cannot ever run: ")


def test_node_gpu_ids_name_known_hosts_once_with_distinct_ids():
    c = make(nodes={"n1": 2, "n2": 2})
    assert "n9" in refused(submit(c, node_gpu_ids=[["n1", [0]], ["n9", [0]]]), errors.INVALID_ARGUMENT)
    assert "twice" in refused(submit(c, node_gpu_ids=[["n1", [0]], ["n1", [1]]]), errors.INVALID_ARGUMENT)
    assert "distinct" in refused(submit(c, node_gpu_ids=[["n1", [0, 0]], ["n2", [0]]]), errors.INVALID_ARGUMENT)
    assert refused(submit(c, node_gpu_ids=[["n1", [0]], ["n2", [0]]], gpu_ids=[0]), errors.INVALID_ARGUMENT)
    job_id = submitted(c, node_gpu_ids=[["n2", [1]], ["n1", [0, 1]]])
    job = c.jobs[job_id]
    assert (job.nnodes, job.node_gpu_ids, job.gpus) == (2, (("n2", (1,)), ("n1", (0, 1))), 2)


def test_node_gpu_ids_of_one_host_is_a_one_host_job_pinned_there():
    c = make(nodes={"n1": 2, "n2": 2})
    job = c.jobs[submitted(c, node_gpu_ids=[["n2", [1]]])]
    assert (job.nnodes, job.node_gpu_ids, job.nodelist, job.gpu_ids) == (None, None, ("n2",), (1,))


def test_gpu_ids_do_not_mix_with_several_hosts():
    c = make(nodes={"n1": 2, "n2": 2})
    assert "per host" in refused(submit(c, nnodes=2, gpu_ids=[0]), errors.INVALID_ARGUMENT)


# -- srun's options -------------------------------------------------------------------------------

def build(*argv):
    parser = srun.build_parser()
    return srun.build_request(parser.parse_args(list(argv) + ["--", "true"]), parser)


def test_srun_options_for_several_hosts():
    fields = build("--nodes", "2", "--gpus-per-node", "4", "--distributed")
    assert (fields["nnodes"], fields["gpus"], fields["distributed"]) == (2, 4, True)
    assert build("--node-gpu-ids", "a:0,1; b:3")["node_gpu_ids"] == [["a", [0, 1]], ["b", [3]]]
    assert "nnodes" not in build("--nodes", "1", "--gpus-per-node", "2")


@pytest.mark.parametrize("argv, words", [
    (("--nodes", "2", "--gpus", "2"), "--gpus-per-node"),
    (("--nodes", "2", "--gpu-ids", "0"), "--gpus-per-node"),
    (("--nodes", "0"), "--nodes"),
    (("--nodes", "99999"), "--nodes"),
    (("--gpus", "1", "--gpus-per-node", "2"), "either"),
    (("--node-gpu-ids", "a:0", "--gpus", "1"), "leave out --gpus"),
    (("--node-gpu-ids", "a:0;b:0", "--nodes", "3"), "does not match"),
    (("--node-gpu-ids", "a"), "HOST:IDS"),
    (("--node-gpu-ids", "a:0;a:1"), "twice"),
    (("--node-gpu-ids", "a:x"), "GPU"),
])
def test_srun_refuses_contradictory_host_options(argv, words):
    with pytest.raises(protocol.MgpuError) as caught:
        build(*argv)
    assert words in caught.value.message and "\n" not in caught.value.message


# -- each part's environment and files ------------------------------------------------------------

def placed(**fields):
    job = Job(id=7, user="alice", uid=1000, gid=1000, command=["true"], cwd="/w", output="/w/o-%r.log",
              error="/w/e.log", gpus=2, nnodes=2, **fields)
    job.parts = (("n2", (1, 3)), ("n1", (0, 1)))
    job.node, job.alloc, job.master_port = "n2", (1, 3), 29501
    return job


def test_each_part_gets_its_rank_hosts_and_the_rendezvous():
    env = gang_environment(placed(distributed=True), 1, "10.0.0.2")
    assert env == {"MGPU_NODELIST": "n2,n1", "MGPU_NNODES": "2", "MGPU_NODE_RANK": "1", "MGPU_GPUS_PER_NODE": "2",
                   "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "29501", "PET_NNODES": "2", "PET_NODE_RANK": "1",
                   "PET_NPROC_PER_NODE": "2", "PET_MASTER_ADDR": "10.0.0.2", "PET_MASTER_PORT": "29501"}
    job = placed()
    job.master_port = None  # rank 0 is launched first: its host chooses the port
    assert "MASTER_PORT" not in gang_environment(job, 0, "10.0.0.2")
    assert not [k for k in gang_environment(job, 0, "10.0.0.2") if k.startswith("PET_")]


def test_each_part_writes_its_own_output_files():
    job = placed()
    first, second = part_record(job, 0), part_record(job, 1)
    assert (first.node, first.alloc, first.output, first.error) == ("n2", (1, 3), "/w/o-0.log", "/w/e.log")
    assert (second.node, second.alloc, second.output, second.error) == ("n1", (0, 1), "/w/o-1.log", "/w/e.log.rank1")
    assert (job.node, job.alloc, job.output) == ("n2", (1, 3), "/w/o-%r.log")  # the job itself is unchanged


def test_mpi_parts_other_than_rank_0_hold_their_gpus():
    job = placed(mpi=True, env_setup="source venv/bin/activate")
    assert part_record(job, 0).command == ["true"] and part_record(job, 0).env_setup == "source venv/bin/activate"
    assert (part_record(job, 1).command, part_record(job, 1).env_setup) == (["sleep", "infinity"], None)


def test_mpi_needs_several_hosts():
    c = make(nodes={"n1": 2, "n2": 2})
    assert "--nodes" in refused(submit(c, mpi=True), errors.INVALID_ARGUMENT)
    assert c.jobs[submitted(c, mpi=True, nnodes=2, gpus=1)].mpi is True


def test_the_hostfile_is_written_as_a_private_file_never_through_a_link(tmp_path):
    from mgpu import launcher
    path = tmp_path / "hostfiles" / "7.1.hosts"
    launcher._write_private_file(str(path), "n1 slots=2\nn2 slots=2\n")
    assert path.read_text() == "n1 slots=2\nn2 slots=2\n"
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    path.unlink()
    target = tmp_path / "elsewhere"
    path.symlink_to(target)
    with pytest.raises(OSError):
        launcher._write_private_file(str(path), "x")
    assert not target.exists()


def test_a_job_on_several_hosts_waiting_for_a_drained_one_says_so():
    from test_controller import request, ROOT
    c = make(nodes={"n1": 2, "n2": 2})
    request(c, "drain", {"node": "n2", "reason": "fans"}, ROOT)
    exact = submitted(c, node_gpu_ids=[["n1", [0]], ["n2", [0]]])
    counted = submitted(c, nnodes=2, gpus=1)
    c.schedule(1000.0)
    reasons = {r["id"]: r["reason"] for r in queue(c)["jobs"]}
    assert reasons[exact].startswith("Resources:") and reasons[exact].endswith("(drained: n2)"), reasons
    assert reasons[counted].startswith("Resources:") and reasons[counted].endswith("(drained: n2)"), reasons
