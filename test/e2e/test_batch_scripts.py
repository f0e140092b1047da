"""`mgpu sbatch` as a user sees it: a script's #SBATCH lines become the job's options, the job
runs a copy taken at submit, and what mgpu cannot honour is refused or warned about."""

import os
import pwd
import re

from harness import user_ids

ALICE, BOB = "mgpu-alice", "mgpu-bob"


def write_script(user, name, text, mode=0o755):
    """A script file owned by `user` in their home; its path."""
    path = os.path.join(pwd.getpwnam(user).pw_dir, name)
    with open(path, "w") as handle:
        handle.write(text)
    uid, gid, _ = user_ids(user)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def submitted(result):
    """The job id of `Submitted batch job N`."""
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"Submitted batch job (\d+)\n", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def job_count(cluster):
    return len(cluster.queue()["jobs"])


def test_a_batch_script_runs_as_its_user_with_its_directives(cluster):
    home = pwd.getpwnam(ALICE).pw_dir
    script = write_script(ALICE, "train.sh", (
        "#!/bin/sh\n"
        "# train on one GPU\n"
        "#SBATCH --gpus=1 -J named --output=batch-%j.out --time=1\n"
        "\n"
        "echo uid=$(id -u) cvd=$CUDA_VISIBLE_DEVICES arg=$1 cwd=$(pwd)\n"
        "#SBATCH --gpus=2   (after the first command: a comment)\n"))
    result = cluster.run(ALICE, "sbatch", script, "hello")
    job_id = submitted(result)
    assert result.stderr == ""
    job = cluster.wait_state(job_id, "COMPLETED")
    assert job["name"] == "named" and job["gpus"] == 1 and job["time_limit"] == 60
    assert job["command"][0].startswith(os.path.join(home, ".mgpu", "scripts") + "/")
    assert job["command"][1:] == ["hello"]
    output = os.path.join(home, "batch-%d.out" % job_id)
    assert os.stat(output).st_uid == pwd.getpwnam(ALICE).pw_uid
    with open(output) as handle:
        text = handle.read()
    assert re.fullmatch(r"uid=%d cvd=[01] arg=hello cwd=%s\n" % (pwd.getpwnam(ALICE).pw_uid, re.escape(home)),
                        text), text


def test_the_command_line_beats_the_directives(cluster):
    script = write_script(BOB, "named.sh", "#!/bin/sh\n#SBATCH --job-name=from-script --gpus=2\ntrue\n")
    result = cluster.run(BOB, "sbatch", "--job-name", "from-cli", "-G", "0", "--parsable", script)
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.strip())
    job = cluster.wait_state(job_id, "COMPLETED")
    assert job["name"] == "from-cli" and job["gpus"] == 0


def test_editing_the_script_after_submit_does_not_change_the_job(cluster):
    holder = cluster.submit(ALICE, "--gpus", "2", "--", "sleep", "60")
    cluster.wait_state(holder, "RUNNING")
    script = write_script(ALICE, "edit.sh", "#!/bin/sh\n#SBATCH --gpus=1 --output=edit-%j.out\necho version-one\n")
    job_id = submitted(cluster.run(ALICE, "sbatch", script))
    assert cluster.job(job_id)["state"] == "PENDING"  # both GPUs are held
    write_script(ALICE, "edit.sh", "#!/bin/sh\n#SBATCH --gpus=1 --output=edit-%j.out\necho version-two\n")
    cluster.run(ALICE, "cancel", holder)
    cluster.wait_state(job_id, "COMPLETED")
    with open(os.path.join(pwd.getpwnam(ALICE).pw_dir, "edit-%d.out" % job_id)) as handle:
        assert handle.read() == "version-one\n"


def test_an_unknown_directive_is_refused_with_its_line_number(cluster):
    before = job_count(cluster)
    script = write_script(ALICE, "unknown.sh", "#!/bin/sh\n#SBATCH --gpus=1\n#SBATCH --frobnicate=3\ntrue\n")
    result = cluster.run(ALICE, "sbatch", script)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "unknown.sh line 3" in result.stderr and "--frobnicate" in result.stderr
    assert job_count(cluster) == before


def test_an_ignored_option_warns_and_the_job_still_runs(cluster):
    script = write_script(ALICE, "partition.sh", "#!/bin/sh\n#SBATCH --partition=gpu\n#SBATCH --gpus=1\necho ran\n")
    result = cluster.run(ALICE, "sbatch", script)
    job_id = submitted(result)
    assert result.stderr == "mgpu sbatch: warning: ignoring #SBATCH --partition=gpu (mgpu has no partitions)\n"
    cluster.wait_state(job_id, "COMPLETED")
    assert cluster.read_output(ALICE, job_id) == "ran\n"


def test_scripts_that_cannot_be_submitted_get_one_line(cluster):
    before = job_count(cluster)
    private = write_script(BOB, "private.sh", "#!/bin/sh\ntrue\n", mode=0o600)
    no_shebang = write_script(ALICE, "plain.sh", "echo hi\n")
    home = pwd.getpwnam(ALICE).pw_dir
    for argv, expected in ((["sbatch", private], "permission denied"),
                           (["sbatch", no_shebang], "This does not look like a batch script."),
                           (["sbatch", os.path.join(home, "missing.sh")], "missing.sh: no such file"),
                           (["sbatch", home], "is a directory")):
        result = cluster.run(ALICE, *argv)
        assert result.returncode != 0, argv
        assert result.stderr.count("\n") == 1 and expected in result.stderr, (argv, result.stderr)
    assert job_count(cluster) == before
