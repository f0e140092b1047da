"""Who gets GPUs when: queueing, priority, backfill, memory sharing, placement policy."""


ALICE, BOB = "mgpu-alice", "mgpu-bob"


def states(cluster, *ids):
    jobs = {j["id"]: j for j in cluster.queue()["jobs"]}
    return [jobs[i]["state"] for i in ids]


def test_jobs_queue_when_gpus_are_busy_and_start_when_freed(cluster):
    first = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    cluster.wait_state(first, "RUNNING")
    second = cluster.submit(BOB, "--gpus", "1", "--", "sleep", "30")
    job = cluster.job(second)
    assert job["state"] == "PENDING"
    assert job["reason"].startswith("Resources")
    table = cluster.run(BOB, "queue").stdout
    assert "PENDING" in table and "(Resources" in table and "RUNNING" in table
    assert "16000/16000" in table  # the GPU table shows the busy GPUs' memory as reserved
    cluster.run(ALICE, "cancel", first)
    running = cluster.wait_state(second, "RUNNING")
    assert running["gpu_ids"] == [0]


def test_priority_then_submit_order(cluster):
    blocker = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    cluster.wait_state(blocker, "RUNNING")
    low = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    high = cluster.submit(BOB, "--gpus", "2", "--priority", "10", "--", "sleep", "30")
    later_low = cluster.submit(BOB, "--gpus", "2", "--", "sleep", "30")
    positions = {j["id"]: j["position"] for j in cluster.queue()["jobs"] if j["state"] == "PENDING"}
    assert positions == {high: 1, low: 2, later_low: 3}
    assert cluster.job(low)["reason"].startswith("Priority")
    cluster.run(ALICE, "cancel", blocker)
    cluster.wait_state(high, "RUNNING")
    assert states(cluster, low, later_low) == ["PENDING", "PENDING"]


def test_user_priority_is_bounded_and_root_may_exceed_it(make_cluster):
    cluster = make_cluster(config="max_user_priority: 5\noperators: [%s]\nallow_root_jobs: true\n" % BOB)
    refused = cluster.run(ALICE, "srun", "--priority", "6", "--", "true")
    assert refused.returncode == 1
    assert "priority must be between 0 and 5" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    holder = cluster.submit(ALICE, "--priority", "5", "--gpus", "2", "--", "sleep", "30")  # the bound itself
    cluster.wait_state(holder, "RUNNING")
    blocker = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    by_root = cluster.submit(None, "--priority", "50", "--gpus", "2", "--", "true")
    by_operator = cluster.submit(BOB, "--priority", "20", "--gpus", "2", "--", "true")
    jobs = {j["id"]: j for j in cluster.queue()["jobs"]}
    assert (jobs[by_root]["user"], jobs[by_root]["priority"]) == ("root", 50)
    assert (jobs[by_operator]["user"], jobs[by_operator]["priority"]) == (BOB, 20)
    positions = {i: j["position"] for i, j in jobs.items() if j["state"] == "PENDING"}
    assert positions[by_root] < positions[by_operator] < positions[blocker]
    assert len([j for j in cluster.queue()["jobs"] if j["user"] == ALICE]) == 2  # the refused one is not stored


def test_backfill_lets_short_jobs_in_without_delaying_the_waiting_job(make_cluster):
    cluster = make_cluster(fake_gpus="4:16000")
    holder = cluster.submit(ALICE, "--gpus", "3", "--time-limit", "60", "--", "sleep", "60")
    cluster.wait_state(holder, "RUNNING")
    head = cluster.submit(BOB, "--gpus", "4", "--priority", "50", "--", "sleep", "30")
    short = cluster.submit(ALICE, "--gpus", "1", "--time-limit", "30", "--", "sleep", "30")
    endless = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "30")
    too_long = cluster.submit(ALICE, "--gpus", "1", "--time-limit", "120", "--", "sleep", "30")
    cluster.wait_state(short, "RUNNING")  # ends before the holder's limit: cannot delay the head
    assert states(cluster, head, endless, too_long) == ["PENDING", "PENDING", "PENDING"]
    assert cluster.job(head)["reason"].startswith("Resources")
    assert cluster.job(endless)["reason"].startswith("Priority")


def test_memory_sharing_packs_jobs_onto_one_gpu(make_cluster):
    cluster = make_cluster(fake_gpus="1:16000")
    a = cluster.submit(ALICE, "--mem", "8000", "--", "sleep", "30")
    b = cluster.submit(BOB, "--mem", "6000", "--", "sleep", "30")
    cluster.wait_state(a, "RUNNING")
    cluster.wait_state(b, "RUNNING")
    too_big = cluster.submit(BOB, "--mem", "4000", "--", "sleep", "30")
    exclusive = cluster.submit(ALICE, "--gpus", "1", "--", "sleep", "30")
    assert states(cluster, too_big, exclusive) == ["PENDING", "PENDING"]
    gpu = cluster.queue()["nodes"][0]["gpus"][0]
    assert gpu["reserved_mb"] == 14000 and sorted(gpu["jobs"]) == [a, b]
    cluster.run(ALICE, "cancel", a)
    cluster.wait_state(too_big, "RUNNING")
    assert cluster.job(exclusive)["state"] == "PENDING"


def test_memory_used_outside_mgpu_is_left_free(make_cluster):
    config = ("fake_gpus:\n"
              "  - {name: Busy GPU, memory_mb: 16000, external_mb: 10000}\n"
              "  - {name: Idle GPU, memory_mb: 16000}\n")
    cluster = make_cluster(fake_gpus=None, config=config)
    job = cluster.submit(ALICE, "--mem", "8000", "--", "sleep", "30")
    assert cluster.wait_state(job, "RUNNING")["gpu_ids"] == [1]
    second = cluster.submit(ALICE, "--mem", "6000", "--", "sleep", "30")
    assert cluster.wait_state(second, "RUNNING")["gpu_ids"] == [1]  # fill_first: pack the shared GPU
    third = cluster.submit(ALICE, "--mem", "6000", "--", "sleep", "30")
    assert cluster.wait_state(third, "RUNNING")["gpu_ids"] == [0]  # exactly what is left beside 10000
    fourth = cluster.submit(ALICE, "--mem", "3000", "--", "sleep", "30")
    assert cluster.job(fourth)["state"] == "PENDING"
    nodes = cluster.queue()["nodes"]
    assert nodes[0]["gpus"][0]["name"] == "Busy GPU" and nodes[0]["gpus"][0]["external_mb"] == 10000
    assert "used outside mgpu" in cluster.run(ALICE, "queue").stdout


def test_exact_gpu_ids_and_spread_policy(make_cluster):
    cluster = make_cluster(fake_gpus="4:16000", args=["--policy", "spread"])
    exact = cluster.submit(ALICE, "--gpu-ids", "1,3", "--", "sleep", "30")
    assert cluster.wait_state(exact, "RUNNING")["gpu_ids"] == [1, 3]
    busy = cluster.submit(BOB, "--gpu-ids", "3", "--", "sleep", "30")
    assert cluster.job(busy)["state"] == "PENDING"
    shared = [cluster.submit(BOB, "--mem", "1000", "--", "sleep", "30") for _ in range(2)]
    gpus = [cluster.wait_state(j, "RUNNING")["gpu_ids"][0] for j in shared]
    assert sorted(gpus) == [0, 2]  # spread: each on its own free GPU


def test_gpus_zero_runs_without_gpus(cluster):
    blocker = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "30")
    cluster.wait_state(blocker, "RUNNING")
    result = cluster.run(BOB, "srun", "-i", "-q", "--gpus", "0", "--", "sh", "-c", "echo CVD=[$CUDA_VISIBLE_DEVICES]")
    assert result.returncode == 0 and result.stdout == "CVD=[]\n"


def test_unsatisfiable_requests_are_refused_at_submit(cluster):
    for args, message in ((["--gpu-ids", "7"], "GPU 7"), (["--gpus", "5"], "5 GPUs"),
                          (["--mem", "99999"], "99999 MB"), (["--time-limit", "1:2:3:4"], "bad time"),
                          (["--time-limit", "0"], "above zero"), (["--gpu-ids", "a,b"], "bad GPU id list"),
                          (["--signal", "NOPE@10", "--time-limit", "60"], "unknown signal")):
        result = cluster.run(ALICE, "srun", *args, "--", "true")
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert cluster.queue()["jobs"] == []
