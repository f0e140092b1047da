"""`mgpu sbatch` without a daemon: a script's directives and sbatch's own options become srun's
arguments (and, through srun's build_request, the submit request), or one clear refusal."""

import os
import stat

import pytest

from mgpu.cli import sbatch
from mgpu.cli.sbatch import SbatchError, plan, read_directives, slurm_time, split_directive
from mgpu.errors import EXIT_USAGE, MgpuError

SRUN = sbatch.srun_option_strings()          # what srun's parser has today
WITH_ALL = SRUN | {"--array", "--dependency"}  # as if srun had arrays and dependencies
WITHOUT = SRUN - {"--array", "--dependency"}   # as if it had neither


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return str(path)


def write(tmp_path, text, name="job.sh"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def settings_of(text):
    """(option name, value, line) of each setting in a script's directives, in order."""
    return [(s.option.name, s.value, s.origin.line) for s in read_directives(text.encode(), "job.sh")]


def srun_argv(tmp_path, home, script, *argv, srun_options=SRUN):
    """srun's options (sorted) for `script` and sbatch's own `argv`, and the Batch."""
    batch = plan(list(argv) + [write(tmp_path, script)], srun_options, home=home)
    return batch.srun_argv[:batch.srun_argv.index("--")], batch


# --- reading directives ----------------------------------------------------------------------

def test_directives_stop_at_the_first_command_as_in_slurm():
    script = ("#!/bin/bash\n"
              "\n"
              "# a comment\n"
              "#SBATCH --gpus=2\n"
              "   # an indented comment\n"
              "  #SBATCH --job-name=indented   (a comment: a directive starts in column 1)\n"
              "# SBATCH --time=5   (disabled, as Slurm users do)\n"
              "#SBATCHX --time=6\n"
              "#MGPU --mpi\n"
              "echo start\n"
              "#SBATCH --job-name=late\n")
    assert settings_of(script) == [("gpus", "2", 4), ("mpi", None, 9)]


def test_equals_and_space_forms_short_options_and_several_options_on_a_line():
    script = ("#!/bin/sh\n"
              "#SBATCH --gpus 2 -J train --time=1:00:00\n"
              "#SBATCH -t 30 -Jother -o 'out %j.log'\n"
              "#SBATCH\t--output=a#b.log  # a trailing comment --gpus=7\n"
              "true\n")
    assert settings_of(script) == [
        ("gpus", "2", 2), ("job-name", "train", 2), ("time", "1:00:00", 2),
        ("time", "30", 3), ("job-name", "other", 3), ("output", "out %j.log", 3),
        ("output", "a#b.log", 4)]


@pytest.mark.parametrize("text,words", [
    ("--gpus=2 -J x", ["--gpus=2", "-J", "x"]),
    ("-J 'a b' --x=\"c d\"", ["-J", "a b", "--x=c d"]),
    ("--a=x#y # comment", ["--a=x#y"]),
    ("# only a comment", []),
    ("-J \"# not a comment\"", ["-J", "# not a comment"]),
    ("-J a\\ b \"q\\\"q\"", ["-J", "a b", 'q"q']),
    ("", []),
])
def test_directive_lines_split_like_a_shell(text, words):
    assert split_directive(text) == words


def test_an_unterminated_quote_is_refused_with_its_line():
    with pytest.raises(SbatchError, match=r"job.sh line 2: unterminated ' quote"):
        settings_of("#!/bin/sh\n#SBATCH -J 'oops\ntrue\n")


def test_an_unknown_directive_is_refused_with_its_line_number():
    script = "#!/bin/sh\n#SBATCH --gpus=1\n\n#SBATCH --gpus=1 --frobnicate=3\ntrue\n"
    with pytest.raises(SbatchError) as caught:
        settings_of(script)
    message = str(caught.value)
    assert message.startswith("job.sh line 4: unknown option --frobnicate in #SBATCH")
    assert "\n" not in message and caught.value.code == 1


@pytest.mark.parametrize("line,message", [
    ("#SBATCH -Z 1", "line 2: unknown option -Z"),
    ("#SBATCH --gpus", "line 2: --gpus needs a value"),
    ("#SBATCH -J", "line 2: -J needs a value"),
    ("#SBATCH --requeue=yes", "line 2: --requeue takes no value"),
    ("#SBATCH --gpus=1 stray", "line 2: unexpected word stray in #SBATCH"),
    ("#SBATCH --help", "line 2: unknown option --help"),
    ("#SBATCH --interactive", "line 2: unknown option --interactive"),
    ("#MGPU --time-limit=10", "line 2: unknown option --time-limit in #MGPU"),
])
def test_bad_directives_are_refused_with_one_line(line, message):
    with pytest.raises(SbatchError, match=message):
        settings_of("#!/bin/sh\n%s\ntrue\n" % line)


def test_directive_lines_are_bounded():
    with pytest.raises(SbatchError, match="line 2: directive longer than 4096 characters"):
        settings_of("#!/bin/sh\n#SBATCH -J %s\n" % ("x" * 5000))
    many = "#!/bin/sh\n" + "#SBATCH -J x\n" * (sbatch.MAX_DIRECTIVES + 1)
    with pytest.raises(SbatchError, match="line %d: more than %d directive lines"
                       % (sbatch.MAX_DIRECTIVES + 2, sbatch.MAX_DIRECTIVES)):
        settings_of(many)
    with pytest.raises(SbatchError, match="line 2: directive is not valid UTF-8"):
        read_directives(b"#!/bin/sh\n#SBATCH -J \xff\xfe\n", "job.sh")


# --- Slurm's values ----------------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [
    ("30", 30 * 60),                 # minutes, as in Slurm (not seconds)
    ("1", 60),
    ("90", 90 * 60),
    ("30:15", 30 * 60 + 15),         # minutes:seconds
    ("1:00:00", 3600),               # hours:minutes:seconds
    ("48:00:00", 48 * 3600),
    ("2-0", 2 * 86400),              # days-hours
    ("1-2", 86400 + 2 * 3600),
    ("1-2:30", 86400 + 2 * 3600 + 30 * 60),  # days-hours:minutes
    ("1-2:30:40", 86400 + 2 * 3600 + 30 * 60 + 40),
    ("0", None),                     # Slurm: zero is no limit
    ("UNLIMITED", None),
    ("infinite", None),
])
def test_slurm_time_formats(text, seconds):
    assert slurm_time(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "1-25", "0:60", "1:60:00", "-5", "1-",
                                  "1.5", "400-0", "1--2", "1-2:3:4:5", "9999999999"])
def test_bad_slurm_times_are_refused(text):
    with pytest.raises(ValueError):
        slurm_time(text)


def test_time_becomes_srun_seconds(tmp_path, home):
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --time=1-00:00:00\ntrue\n")
    assert "--time-limit=86400" in argv
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH -t 30\ntrue\n")
    assert "--time-limit=1800" in argv


def test_a_bad_time_in_a_directive_names_its_line(tmp_path, home):
    with pytest.raises(SbatchError, match=r"job.sh line 3: bad time '?1:99'?"):
        srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH -J x\n#SBATCH --time=1:99\ntrue\n")


@pytest.mark.parametrize("gres,count,warned", [
    ("gpu", "1", False),
    ("gpu:2", "2", False),
    ("gpu:a100:2", "2", True),
    ("gpu:a100", "1", True),
    ("gres/gpu:4", "4", False),
    ("none", "0", False),
])
def test_gres_gives_gpus_per_host_and_warns_about_a_type(tmp_path, home, gres, count, warned):
    argv, batch = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --gres=%s\ntrue\n" % gres)
    assert "--gpus-per-node=%s" % count in argv
    type_warnings = [w for w in batch.warnings if "GPU type" in w]
    assert bool(type_warnings) == warned
    if warned:
        assert type_warnings == ["job.sh line 2: ignoring the GPU type a100 in --gres=%s "
                                 "(mgpu has no GPU types)" % gres]


@pytest.mark.parametrize("gres", ["shard:2", "gpu:2,shard:1", "gpu:a:b:c", "gpu:a100:x", "mps:100"])
def test_other_gres_are_refused(tmp_path, home, gres):
    with pytest.raises(SbatchError, match="job.sh line 2: "):
        srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --gres=%s\ntrue\n" % gres)


def test_gpus_with_a_type_warns_and_keeps_the_count(tmp_path, home):
    argv, batch = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH -G a100:2\ntrue\n")
    assert "--gpus=2" in argv
    assert batch.warnings == ["job.sh line 2: ignoring the GPU type a100 in a100:2 (mgpu has no GPU types)"]


def test_gpus_of_a_job_on_several_hosts_are_split_per_host(tmp_path, home):
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH -N 2 --gpus=8\ntrue\n")
    assert "--nodes=2" in argv and "--gpus-per-node=4" in argv and not any(a.startswith("--gpus=") for a in argv)
    with pytest.raises(SbatchError, match="--gpus=3 does not divide over --nodes=2"):
        srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH -N 2 --gpus=3\ntrue\n")
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --nodes=2-2 --gres=gpu:2\ntrue\n")
    assert "--nodes=2" in argv and "--gpus-per-node=2" in argv
    with pytest.raises(SbatchError, match="exact number of hosts"):
        srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --nodes=1-4\ntrue\n")


@pytest.mark.parametrize("size,mb", [("20000", 20000), ("20G", 20480), ("20gb", 20480), ("512K", 1),
                                     ("1T", 1024 * 1024), ("300M", 300)])
def test_mem_per_gpu_becomes_srun_mem_in_mb(tmp_path, home, size, mb):
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --mem-per-gpu=%s\ntrue\n" % size)
    assert "--mem=%d" % mb in argv


def test_signal_and_requeue(tmp_path, home):
    argv, batch = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --signal=B:USR1@120 --requeue\ntrue\n")
    assert "--signal=USR1@120" in argv and "--requeue" in argv
    assert batch.warnings == ["job.sh line 2: ignoring B: in --signal=B:USR1@120 "
                              "(mgpu signals every process of the job)"]
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --requeue\ntrue\n", "--no-requeue")
    assert "--requeue" not in argv


@pytest.mark.parametrize("path", ["out-%N.log", "100%%.log"])
def test_output_patterns_mgpu_does_not_fill_in_are_refused(tmp_path, home, path):
    with pytest.raises(SbatchError, match=r"line 2: --output=.*: mgpu fills in %j \(job id\), %u \(user\), "
                                          r"%x \(job name\), %A \(array job id\) and %a \(array task id\) only"):
        srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --output=%s\ntrue\n" % path)


def test_array_output_patterns_are_passed_on(tmp_path, home):
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --array=1-3\n#SBATCH --output=%A_%a.out\ntrue\n",
                        srun_options=WITH_ALL)
    assert "--array=1-3" in argv and "--output=%A_%a.out" in argv


def test_arrays_and_dependencies_follow_what_srun_has(tmp_path, home):
    script = "#!/bin/sh\n#SBATCH --gpus=1\n#SBATCH --dependency=afterok:12\ntrue\n"
    with pytest.raises(SbatchError, match="^job.sh line 3: job dependencies are not supported yet$"):
        srun_argv(tmp_path, home, script, srun_options=WITHOUT)
    argv, _ = srun_argv(tmp_path, home, script, srun_options=WITH_ALL)
    assert "--dependency=afterok:12" in argv
    with pytest.raises(SbatchError, match="^job arrays are not supported yet$"):
        srun_argv(tmp_path, home, "#!/bin/sh\ntrue\n", "--array=1-4", srun_options=WITHOUT)
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH -a 1-4\ntrue\n", srun_options=WITH_ALL)
    assert "--array=1-4" in argv


@pytest.mark.skipif("--dependency" not in SRUN, reason="srun has no --dependency")
def test_a_dependency_reaches_the_request(tmp_path, home):
    path = write(tmp_path, "#!/bin/sh\n#SBATCH -d afterok:12\ntrue\n")
    batch = plan([path], SRUN, home=home)
    sbatch.save_copy(batch.content, batch.copy_path)
    assert sbatch.srun_fields(batch)["dependency"]


# --- ignored options ---------------------------------------------------------------------------

def test_harmless_slurm_options_are_ignored_with_one_warning_each(tmp_path, home):
    script = ("#!/bin/sh\n"
              "#SBATCH --partition=gpu\n"
              "#SBATCH -A lab -q high --mail-type=END,FAIL --mail-user=me@example.org\n"
              "#SBATCH -n 4 --ntasks-per-node=4 -c 8 --mem=64G --exclusive --export=ALL -C a100\n"
              "#SBATCH --gpus=1\n"
              "true\n")
    argv, batch = srun_argv(tmp_path, home, script, "-p", "debug")
    assert batch.warnings == [
        "ignoring #SBATCH --partition=gpu (mgpu has no partitions)",
        "ignoring #SBATCH --account=lab (mgpu has no accounts)",
        "ignoring #SBATCH --qos=high (mgpu has no QOS)",
        "ignoring #SBATCH --mail-type=END,FAIL (mgpu sends no mail)",
        "ignoring #SBATCH --mail-user=me@example.org (mgpu sends no mail)",
        "ignoring #SBATCH --ntasks=4 (mgpu runs the script once on each host of the job)",
        "ignoring #SBATCH --ntasks-per-node=4 (mgpu runs the script once on each host of the job)",
        "ignoring #SBATCH --cpus-per-task=8 (mgpu does not allocate CPUs)",
        "ignoring #SBATCH --mem=64G (host memory is not reserved by mgpu; --mem-per-gpu reserves GPU memory)",
        "ignoring #SBATCH --exclusive (a job's GPUs are its own unless it gives --mem-per-gpu)",
        "ignoring #SBATCH --export=ALL (the job gets the environment of mgpu sbatch, as with --export=ALL)",
        "ignoring #SBATCH --constraint=a100 (mgpu has no node features)",
        "ignoring --partition=debug (mgpu has no partitions)",
    ]
    assert argv == ["--gpus=1", "--name=job.sh"]  # --mem is host memory: never srun's --mem


# --- precedence --------------------------------------------------------------------------------

def test_the_command_line_wins_over_directives(tmp_path, home):
    script = "#!/bin/sh\n#SBATCH -J from-script --gpus=2 --time=10 --output=script.out\ntrue\n"
    argv, _ = srun_argv(tmp_path, home, script, "--job-name", "from-cli", "-G", "1", "--time=0")
    assert argv == ["--gpus=1", "--name=from-cli", "--output=script.out"]  # --time=0: no limit


def test_mgpu_lines_win_over_sbatch_lines_and_later_lines_over_earlier(tmp_path, home):
    script = ("#!/bin/sh\n"
              "#MGPU --time=20\n"
              "#SBATCH --time=10 -J first\n"
              "#SBATCH -J second\n"
              "true\n")
    argv, _ = srun_argv(tmp_path, home, script)
    assert argv == ["--name=second", "--time-limit=1200"]


def test_any_gpu_count_option_replaces_another(tmp_path, home):
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\n#SBATCH --gres=gpu:2\ntrue\n", "--gpus=1")
    assert argv == ["--gpus=1", "--name=job.sh"] and not any(a.startswith("--gpus-per-node") for a in argv)


def test_the_job_name_defaults_to_the_script_name(tmp_path, home):
    argv, _ = srun_argv(tmp_path, home, "#!/bin/sh\ntrue\n")
    assert argv == ["--name=job.sh"]


# --- the command line --------------------------------------------------------------------------

def test_arguments_after_the_script_go_to_the_script(tmp_path, home):
    path = write(tmp_path, "#!/bin/sh\ntrue\n")
    batch = plan(["-J", "x", path, "--help", "-J", "y"], SRUN, home=home)
    copy = batch.copy_path
    assert batch.srun_argv == ["--name=x", "--", copy, "--help", "-J", "y"]
    assert copy.startswith(os.path.join(home, ".mgpu", "scripts") + "/") and copy.endswith("-job.sh")
    batch = plan(["--", path, "a"], SRUN, home=home)
    assert batch.srun_argv[-2:] == [copy, "a"]


def test_command_line_usage_errors(tmp_path, home):
    with pytest.raises(SbatchError, match="no script given") as caught:
        plan([], SRUN, home=home)
    assert caught.value.code == EXIT_USAGE
    with pytest.raises(SbatchError, match="^unknown option --bogus$") as caught:
        plan(["--bogus", "x.sh"], SRUN, home=home)
    assert caught.value.code == EXIT_USAGE
    with pytest.raises(SbatchError, match="^-J needs a value$"):
        plan(["-J"], SRUN, home=home)
    assert plan(["--gpus=1", "--help", "x.sh"], SRUN, home=home) is None
    assert plan(["-h"], SRUN, home=home) is None


def test_parsable(tmp_path, home):
    path = write(tmp_path, "#!/bin/sh\n#SBATCH --parsable\ntrue\n")
    assert plan([path], SRUN, home=home).parsable
    assert not plan([write(tmp_path, "#!/bin/sh\ntrue\n", "b.sh")], SRUN, home=home).parsable


# --- the request srun builds -------------------------------------------------------------------

def test_srun_builds_the_request(tmp_path, home):
    script = ("#!/bin/bash\n"
              "#SBATCH --gpus=2 -J train --time=1:30:00 --output=run-%j.out\n"
              "#SBATCH --mem-per-gpu=10G --priority=5 --signal=USR1@60 -w gpu1,gpu2 -x gpu3\n"
              "#MGPU --env-setup-cmd='source venv/bin/activate'\n"
              "python train.py\n")
    path = write(tmp_path, script)
    batch = plan(["-D", str(tmp_path), path, "--epochs", "3"], SRUN, home=home)
    sbatch.save_copy(batch.content, batch.copy_path)
    fields = sbatch.srun_fields(batch)
    assert fields["command"] == [batch.copy_path, "--epochs", "3"]
    assert fields["gpus"] == 2 and fields["name"] == "train" and fields["time_limit"] == 5400
    assert fields["mem_mb"] == 10240 and fields["priority"] == 5
    assert fields["nodelist"] == ["gpu1", "gpu2"] and fields["exclude"] == ["gpu3"]
    assert fields["cwd"] == str(tmp_path) and fields["output"] == os.path.join(str(tmp_path), "run-%j.out")
    assert fields["env_setup"] == "source venv/bin/activate" and fields["interactive"] is False
    assert fields["warn_signal"] == 10


def test_a_value_srun_refuses_names_the_directive_it_came_from(tmp_path, home):
    path = write(tmp_path, "#!/bin/sh\n#SBATCH -J x\n#SBATCH --nodes=two\ntrue\n")
    with pytest.raises(MgpuError, match=r"--nodes.*\(from #SBATCH line 3 of job.sh\)$"):
        sbatch.srun_fields(plan([path], SRUN, home=home))
    path = write(tmp_path, "#!/bin/sh\n#SBATCH --chdir=/no/such/dir\ntrue\n", "c.sh")
    with pytest.raises(MgpuError, match=r"no such directory \(from #SBATCH line 2 of c.sh\)$"):
        sbatch.srun_fields(plan([path], SRUN, home=home))


# --- the script file and its copy ---------------------------------------------------------------

def test_scripts_that_cannot_be_batch_scripts_are_refused(tmp_path, monkeypatch):
    with pytest.raises(SbatchError, match="nope.sh: no such file$"):
        sbatch.read_script(str(tmp_path / "nope.sh"))
    with pytest.raises(SbatchError, match="is a directory, not a batch script$"):
        sbatch.read_script(str(tmp_path))
    with pytest.raises(SbatchError, match="This does not look like a batch script. The first line must "
                                          "start with #! followed by the path to an interpreter.$"):
        sbatch.read_script(write(tmp_path, "echo hi\n"))
    with pytest.raises(SbatchError, match="is empty$"):
        sbatch.read_script(write(tmp_path, ""))
    binary = tmp_path / "a.out"
    binary.write_bytes(b"#!\x7fELF\x00\x01\x02")
    with pytest.raises(SbatchError, match="a.out is a binary file, not a batch script$"):
        sbatch.read_script(str(binary))
    with pytest.raises(SbatchError, match="DOS line breaks"):
        sbatch.read_script(write(tmp_path, "#!/bin/sh\r\ntrue\r\n"))
    os.mkfifo(str(tmp_path / "fifo"))
    with pytest.raises(SbatchError, match="fifo is not a regular file$"):
        sbatch.read_script(str(tmp_path / "fifo"))
    monkeypatch.setattr(sbatch, "MAX_SCRIPT_BYTES", 100)
    with pytest.raises(SbatchError, match="too large for a batch script"):
        sbatch.read_script(write(tmp_path, "#!/bin/sh\n" + "true\n" * 50))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_script_is_refused(tmp_path):
    path = write(tmp_path, "#!/bin/sh\ntrue\n")
    os.chmod(path, 0)
    with pytest.raises(SbatchError, match="permission denied"):
        sbatch.read_script(path)


def test_the_copy_is_private_and_keeps_the_content(tmp_path, home):
    path = write(tmp_path, "#!/bin/sh\necho one\n")
    batch = plan([path], SRUN, home=home)
    sbatch.save_copy(batch.content, batch.copy_path)
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\necho two\n")
    with open(batch.copy_path) as handle:
        assert handle.read() == "#!/bin/sh\necho one\n"
    assert stat.S_IMODE(os.stat(batch.copy_path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.dirname(batch.copy_path)).st_mode) == 0o700
    assert os.listdir(os.path.dirname(batch.copy_path)) == [os.path.basename(batch.copy_path)]
    again = plan([path], SRUN, home=home)
    assert again.copy_path != batch.copy_path  # another content, another copy
    sbatch.save_copy(batch.content, batch.copy_path)  # the same again: replaced in place
    assert len(os.listdir(os.path.dirname(batch.copy_path))) == 1


def test_a_scripts_directory_that_is_not_a_directory_is_refused(tmp_path, home):
    os.makedirs(os.path.join(home, ".mgpu"))
    os.symlink("/tmp", os.path.join(home, ".mgpu", "scripts"))
    with pytest.raises(SbatchError, match="is not a directory of yours"):
        sbatch.save_copy(b"#!/bin/sh\n", os.path.join(home, ".mgpu", "scripts", "x-job.sh"))


def test_main_says_one_line_for_a_bad_script(tmp_path, capsys):
    path = write(tmp_path, "#!/bin/sh\n#SBATCH --gpus=1\n#SBATCH --wat\ntrue\n")
    assert sbatch.main([path]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "mgpu sbatch: job.sh line 3: unknown option --wat in #SBATCH " \
                                "(see 'mgpu sbatch --help' for the options mgpu takes)\n"
    assert sbatch.main(["--help"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("usage: mgpu sbatch") and "#SBATCH --gpus=2" in out
