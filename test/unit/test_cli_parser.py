"""The command line parser of every role (cli/common.py): argparse's way of reading a command
line, without prefix matching, with one-line errors."""

import os
import subprocess
import sys

import pytest

from mgpu.cli import cancel as cancel_cli
from mgpu.cli import common
from mgpu.cli import logs as logs_cli
from mgpu.cli import queue as queue_cli
from mgpu.cli import srun as srun_cli
from mgpu.errors import EXIT_USAGE

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


def srun(*argv):
    return srun_cli.build_parser().parse_args(list(argv))


def refused(parser, argv, capsys):
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(list(argv))
    assert caught.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


def test_values_separate_attached_with_equals_and_short_forms():
    args = srun("--gpus", "2", "--name=train", "-t1:00:00", "-D", "/tmp", "--", "python", "x.py")
    assert (args.gpus, args.name, args.time_limit, args.chdir) == ("2", "train", "1:00:00", "/tmp")
    assert args.command == ["--", "python", "x.py"]  # build_request drops the `--`
    assert srun("-G=3", "true").gpus == "3"
    assert srun("--name=", "true").name == ""
    assert srun("--name", "x y", "true").name == "x y"


def test_repeated_options_last_wins_and_flags_group():
    args = srun("--gpus", "1", "-G", "4", "-iq", "true")
    assert args.gpus == "4" and args.interactive and args.quiet
    args = srun("-iG2", "true")
    assert args.interactive and args.gpus == "2"
    assert srun("true").interactive is False and srun("true").gpus is None


def test_the_command_starts_at_the_first_word_that_is_not_an_option():
    args = srun("-i", "python", "train.py", "--gpus", "8", "--", "x")
    assert args.command == ["python", "train.py", "--gpus", "8", "--", "x"] and args.gpus is None
    assert srun("--gpus", "1").command == []
    assert srun("--", "--", "x").command == ["--", "--", "x"]


def test_negative_numbers_and_a_lone_dash_are_values():
    assert srun("--priority", "-5", "true").priority == "-5"
    assert srun("--name", "-", "true").name == "-"


def test_optional_value_takes_its_const_before_an_option_or_the_end_of_options():
    assert srun("--signal", "--", "true").signal == ""
    assert srun("--signal", "USR1@30", "--", "true").signal == "USR1@30"
    assert srun("--signal=", "true").signal == ""
    assert srun("true").signal is None


@pytest.mark.parametrize("argv, message", [
    (["--env", "FOO=bar", "--", "true"], "unrecognized arguments: --env"),
    (["--gpu", "1", "--", "true"], "unrecognized arguments: --gpu"),
    (["--prio", "5", "--", "true"], "unrecognized arguments: --prio"),
    (["--gpu=1", "--nam", "--", "true"], "unrecognized arguments: --gpu=1 --nam"),
    (["--name"], "argument --name/-J: expected one argument"),
    (["--name", "--", "true"], "argument --name/-J: expected one argument"),
    (["--name", "--gpus", "1"], "argument --name/-J: expected one argument"),
    (["--parsable=1", "true"], "argument --parsable: ignored explicit argument '1'"),
    (["-iz", "true"], "argument --interactive/-i: ignored explicit argument 'z'"),
])
def test_errors_are_one_line_in_argparse_words(argv, message, capsys):
    line = refused(srun_cli.build_parser(), argv, capsys)
    assert line == "mgpu srun: %s (see 'mgpu srun --help')" % message


def test_no_prefix_matching_anywhere(capsys):
    assert refused(queue_cli.build_parser(), ["--al"], capsys).startswith("mgpu queue: unrecognized arguments: --al")
    assert refused(queue_cli.build_parser(), ["--js"], capsys).endswith("--js (see 'mgpu queue --help')")
    assert queue_cli.build_parser().parse_args(["--all", "--json"]).json is True


def test_positionals(capsys):
    logs = logs_cli.build_parser()
    assert logs.parse_args(["-f", "42"]).job_id == "42"
    assert logs.parse_args(["42", "--err"]).err is True
    assert logs.parse_args(["--", "-1"]).job_id == "-1"
    assert refused(logs, [], capsys) == "mgpu logs: the following arguments are required: JOB_ID (see 'mgpu logs --help')"
    assert refused(logs, ["1", "2"], capsys) == "mgpu logs: unrecognized arguments: 2 (see 'mgpu logs --help')"
    cancel = cancel_cli.build_parser()
    assert cancel.parse_args([]).ids == []
    args = cancel.parse_args(["1", "2", "--user", "bob", "3"])
    assert args.ids == ["1", "2", "3"] and args.user == "bob"


def test_type_choices_and_defaults():
    parser = common.Parser(prog="mgpu test")
    parser.add_argument("--grace", type=float, metavar="S")
    parser.add_argument("--policy", choices=("fill_first", "spread"))
    parser.add_argument("--root", action="store_true", default=None)
    parser.add_argument("--out", "-o", default="/x")
    args = parser.parse_args(["--grace", "1.5", "--policy=spread"])
    assert (args.grace, args.policy, args.root, args.out) == (1.5, "spread", None, "/x")
    assert parser.parse_args(["-o/y", "--root"]).out == "/y"
    with pytest.raises(SystemExit):
        parser.parse_args(["--grace", "soon"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--policy", "random"])


def test_help_shows_usage_description_options_and_examples(capsys):
    with pytest.raises(SystemExit) as caught:
        srun("--gpus", "1", "--help")
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mgpu srun [options] -- COMMAND [ARGS...]\n\nSubmit COMMAND as a job.")
    assert "\noptions:\n  -h, --help" in out and "  --gpus N, -G N" in out
    assert "%N runs at most N tasks at once" in out  # %% in a help text is one %
    assert "--partition" not in out and out.rstrip().endswith("every task of array 12 has COMPLETED")
    assert srun("--", "python", "-h").command == ["--", "python", "-h"]  # the command's own -h
    with pytest.raises(SystemExit):
        queue_cli.build_parser().parse_args(["-h"])
    out = capsys.readouterr().out
    assert out.startswith("usage: mgpu queue [-h] [--all] [--user USER]") and "\nexamples:\n" in out


def test_the_option_strings_of_srun_are_listed_for_sbatch():
    names = srun_cli.build_parser().option_strings()
    assert {"--gpus", "-G", "--partition", "-p", "--help"} <= names and "--gpu" not in names


def _run_cli(*argv, stdout=subprocess.PIPE):
    env = dict(os.environ, PYTHONPATH=SRC, MGPU_SOCKET="/nonexistent/mgpu.sock")
    env.pop("PYTHONUNBUFFERED", None)  # stdout buffered, as in a plain shell
    return subprocess.run([sys.executable, "-m", "mgpu", *argv], env=env, stdout=stdout,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)


def test_a_client_command_exits_with_its_code_and_its_output_flushed():
    done = _run_cli("queue", "--help")
    assert done.returncode == 0 and done.stdout.decode().startswith("usage: mgpu queue") and not done.stderr
    assert done.stdout.endswith(b"\n") and b"examples:" in done.stdout
    refused = _run_cli("queue")  # no master: one line on stderr, exit 1
    assert refused.returncode == 1 and refused.stderr.decode().count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(b"mgpu: ")
    assert _run_cli("nosuch").returncode == 2


def test_a_client_whose_reader_went_away_exits_quietly():
    reader, writer = os.pipe()
    os.close(reader)  # `mgpu ... | head` after head has gone
    try:
        done = _run_cli("queue", "--help", stdout=writer)
    finally:
        os.close(writer)
    assert done.returncode in (0, 1) and done.stderr == b"", done.stderr
