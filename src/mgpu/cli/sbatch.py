"""`mgpu sbatch`: submit a batch script whose `#SBATCH` / `#MGPU` lines hold its options.

Owns: reading a script's directives as Slurm's sbatch does, turning Slurm's options into
`mgpu srun`'s, and the private copy of the script the job runs. Must not: build a submit
request itself (srun's build_parser and build_request do, from the argv made here) or wait for
the job.
"""

import hashlib
import os
import pwd
import stat
import sys

from mgpu.errors import EXIT_ERROR, EXIT_USAGE, MgpuError
from mgpu.model import MAX_SECONDS

PROG = "mgpu sbatch"
MAX_SCRIPT_BYTES = 4 * 1024 * 1024   # a batch script, not a data file
MAX_DIRECTIVE_CHARS = 4096           # one #SBATCH / #MGPU line
MAX_DIRECTIVES = 256                 # directive lines in one script
MAX_SHOWN = 80                       # characters of a value quoted in a message
SCRIPTS_DIR = os.path.join(".mgpu", "scripts")  # under the user's home

USAGE = "usage: mgpu sbatch [options] SCRIPT [ARGS...]\n"

HELP = USAGE + """
Submit SCRIPT as a batch job and print 'Submitted batch job N'; sbatch never waits (use
'mgpu srun -i' for that). The options come from the command line and from '#SBATCH' and
'#MGPU' lines at the top of the script: after the '#!' line, until the first line that is
neither blank nor a comment. Each such line holds options exactly as on the command line; text
after ' #' is a comment. The command line wins over '#MGPU' lines, which win over '#SBATCH' lines
(a script can keep its Slurm options in '#SBATCH' lines and give mgpu's in '#MGPU' lines, which
Slurm ignores); among lines of one kind the later wins.

The script is copied when it is submitted, to ~/.mgpu/scripts/ (0700), and the job runs that
copy with ARGS: editing the script afterwards does not change the job. The job's host must see
your home directory (a shared home, as on most clusters). The job runs as you in --chdir
(default: here), with CUDA_VISIBLE_DEVICES set to its GPUs, like 'mgpu srun'.

options (Slurm's names):
  -G, --gpus=[TYPE:]N          number of GPUs (default 1; 0 for none); a TYPE is ignored
  --gres=gpu[:TYPE][:N]        N GPUs on each host (default 1); a TYPE is ignored
  --gpus-per-node=[TYPE:]N     GPUs on each host of a job with --nodes
  -N, --nodes=N                run on N hosts at once (the script runs on each, MGPU_NODE_RANK
                               tells them apart; with --mpi on the first only)
  -t, --time=TIME              time limit: MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS,
                               DAYS-HOURS, DAYS-HOURS:MINUTES, DAYS-HOURS:MINUTES:SECONDS;
                               0 or UNLIMITED for none
  -J, --job-name=NAME          job name (default: the script's file name)
  -o, --output=PATH            output file; %j job id, %u user, %x job name, %A array
                               job id, %a array task id (default ~/.mgpu/logs/%j.out,
                               for an array ~/.mgpu/logs/%A_%a.out)
  -e, --error=PATH             separate file for stderr (default: with the output)
  -D, --chdir=DIR              working directory (default: the current one)
  --mem-per-gpu=SIZE           GPU memory per GPU (MB, or with a K, M, G or T suffix); a GPU
                               may then be shared
  --signal=[B:]SIG[@SECONDS]   send SIG this long before the time limit (default @60)
  --requeue, --no-requeue      at the time limit go back to the queue (or not)
  -w, --nodelist=NODES         run on one of these hosts
  -x, --exclude=NODES          never run on these hosts
  --priority=P                 higher runs first
  -d, --dependency=LIST        start after other jobs: afterok:ID[:ID...], afternotok:,
                               afterany:, after: (as 'mgpu srun --dependency')
  -a, --array=LIST             a job array: 1-100, 0-30:3, 1,4,9, 1-1000%8 (at most 8
                               running at once); each task runs the script with
                               MGPU_ARRAY_TASK_ID set (as 'mgpu srun --array')
  --parsable                   print only the job id
options (mgpu's own, best in #MGPU lines):
  --gpu-ids=LIST, --node-gpu-ids=SPEC, --distributed, --mpi, --env-setup-cmd=CMD
                               as in 'mgpu srun'
ignored with a warning:
  -p/--partition, -A/--account, -q/--qos, --mail-type, --mail-user, -n/--ntasks,
  --ntasks-per-node, -c/--cpus-per-task, --cpus-per-gpu, --mem (host memory, not GPU
  memory), --mem-per-cpu, --exclusive, --export, -C/--constraint
Any other option is refused, naming it (and its line in the script).

example script (train.sh):
  #!/bin/bash
  #SBATCH --job-name=train
  #SBATCH --gpus=2
  #SBATCH --time=2:00:00            # two hours
  #SBATCH --output=train-%j.out
  #SBATCH --partition=gpu           # ignored by mgpu, with a warning
  #MGPU --env-setup-cmd='source venv/bin/activate'
  python train.py "$@"

examples:
  mgpu sbatch train.sh --epochs 10        submit it; ARGS go to the script
  mgpu sbatch -J short --time=30 train.sh the command line wins: 30 minutes
  mgpu sbatch --parsable train.sh         print only the job id
  mgpu sbatch --array=1-10%2 sweep.sh     10 tasks, at most 2 at once
"""

NOT_A_SCRIPT = ("This does not look like a batch script. The first line must start with #! "
                "followed by the path to an interpreter.")

# How an option takes its value.
REQUIRED, NONE, OPTIONAL = "required", "none", "optional"


class SbatchError(Exception):
    """One line for the user and the exit code."""

    def __init__(self, message, code=EXIT_ERROR):
        super().__init__(message)
        self.code = code


class HelpRequested(Exception):
    """-h or --help among sbatch's own options."""


class Setting:
    """One option as given: its canonical name, its value and where it was written."""

    __slots__ = ("option", "value", "origin")

    def __init__(self, option, value, origin):
        self.option = option  # an Option
        self.value = value    # a string, or None for a flag
        self.origin = origin  # an Origin


class Origin:
    """Where a setting comes from: the command line, or a line of the script."""

    COMMAND_LINE, MGPU, SBATCH = 2, 1, 0  # precedence: higher wins

    def __init__(self, rank, script=None, line=None):
        self.rank = rank
        self.script = script
        self.line = line

    @property
    def prefix(self):
        """What a setting from here is shown with: '', '#SBATCH ' or '#MGPU '."""
        return {self.SBATCH: "#SBATCH ", self.MGPU: "#MGPU "}.get(self.rank, "")

    def where(self):
        """'train.sh line 4: ' for a directive, '' for the command line."""
        if self.line is None:
            return ""
        return "%s line %d: " % (shown(self.script), self.line)

    def describe(self):
        if self.line is None:
            return "the command line"
        return "%sline %d of %s" % (self.prefix, self.line, shown(self.script))


def shown(value):
    """A value as it may appear in a one-line message: escaped and clipped."""
    from mgpu.cli.render import text
    value = str(value)
    if len(value) > MAX_SHOWN:
        value = value[:MAX_SHOWN] + "..."
    return text(value)


# --- option conversions: value -> {srun option: value, True (a flag) or None (unset)} ---------

GPU_COUNT = "gpu count"  # --gpus, --gpus-per-node and --gres set one count: the last one wins


def convert_gpus(srun_option):
    def convert(value, warn):
        type_, colon, count = value.rpartition(":")
        if "," in value:
            raise ValueError("give one GPU count, e.g. 2 (mgpu has no GPU types)")
        if colon:
            warn("ignoring the GPU type %s in %s (mgpu has no GPU types)" % (shown(type_), shown(value)))
        return {GPU_COUNT: (srun_option, count)}
    return convert


def convert_gres(value, warn):
    """Slurm's `gpu`, `gpu:N`, `gpu:TYPE`, `gpu:TYPE:N` (per host) -> --gpus-per-node N."""
    items = [item.strip() for item in value.split(",")]
    if items == ["none"]:
        return {GPU_COUNT: ("--gpus-per-node", "0")}
    if len(items) != 1:
        raise ValueError("mgpu knows one GRES, gpu: give one entry, e.g. --gres=gpu:2")
    fields = items[0].split(":")
    name = fields[0]
    if name.startswith("gres/"):
        name = name[len("gres/"):]
    if name != "gpu" or len(fields) > 3:
        raise ValueError("mgpu knows one GRES, gpu: write --gres=gpu:N or --gres=gpu:TYPE:N")
    count = "1"
    if len(fields) == 3:
        type_, count = fields[1], fields[2]
    elif len(fields) == 2 and fields[1].isascii() and fields[1].isdigit():
        type_, count = None, fields[1]
    else:
        type_ = fields[1] if len(fields) == 2 else None
    if type_ is not None:
        warn("ignoring the GPU type %s in --gres=%s (mgpu has no GPU types)" % (shown(type_), shown(value)))
    if not (count.isascii() and count.isdigit()):
        raise ValueError("bad GPU count %s in --gres=%s: a whole number" % (shown(count), shown(value)))
    return {GPU_COUNT: ("--gpus-per-node", count)}


def _time_number(text):
    """1 to 9 ASCII digits."""
    return 0 < len(text) <= 9 and text.isascii() and text.isdigit()


def slurm_time(text):
    """Seconds from Slurm's time formats, or None for no limit (0, UNLIMITED, INFINITE):
    MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES,
    DAYS-HOURS:MINUTES:SECONDS. ValueError otherwise."""
    value = text.strip()
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, dash, rest = value.partition("-")
    if not dash:
        days, rest = None, value
    parts = rest.split(":")
    numbers = [days] + parts if dash else parts
    if not all(_time_number(part or "") for part in numbers) or len(parts) > 3:
        raise ValueError("bad time %s: use MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, "
                         "DAYS-HOURS:MINUTES or DAYS-HOURS:MINUTES:SECONDS" % shown(text))
    parts = [int(part) for part in parts]
    if dash:
        hours, minutes, seconds = (parts + [0, 0])[:3]
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ValueError("bad time %s: after DAYS-, hours below 24, minutes and seconds below 60" % shown(text))
        total = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif len(parts) == 1:
        total = parts[0] * 60
    elif len(parts) == 2:
        if parts[1] > 59:
            raise ValueError("bad time %s: seconds below 60 in MINUTES:SECONDS" % shown(text))
        total = parts[0] * 60 + parts[1]
    else:
        if parts[1] > 59 or parts[2] > 59:
            raise ValueError("bad time %s: minutes and seconds below 60 in HOURS:MINUTES:SECONDS" % shown(text))
        total = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    if total == 0:
        return None  # Slurm: a time limit of zero is no limit
    if total > MAX_SECONDS:
        raise ValueError("time %s is too long: at most 365 days" % shown(text))
    return total


def convert_time(value, warn):
    seconds = slurm_time(value)
    return {"--time-limit": None if seconds is None else str(seconds)}


_MEM_FACTORS = {"K": 1.0 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def convert_mem_per_gpu(value, warn):
    """Slurm's size (MB by default; K, M, G, T suffixes) -> srun --mem in whole MB."""
    amount = value.strip()
    if amount[-1:] in ("B", "b"):
        amount = amount[:-1]
    unit = amount[-1:].upper()
    if unit in ("K", "M", "G", "T"):
        amount = amount[:-1]
    else:
        unit = ""
    if not (0 < len(amount) <= 15 and amount.isascii() and amount.isdigit()):
        raise ValueError("bad --mem-per-gpu %s: a size in MB, or with a K, M, G or T suffix (e.g. 20G)"
                         % shown(value))
    amount = int(amount)
    mb = -(-amount // 1024) if unit == "K" else amount * _MEM_FACTORS[unit]
    return {"--mem": str(mb)}


def convert_signal(value, warn):
    """Slurm's [{R|B}:]SIG[@SECONDS] -> srun --signal SIG[@SECONDS]."""
    prefix, colon, rest = value.partition(":")
    if colon and prefix.upper() in ("B", "R", "RB", "BR"):
        warn("ignoring %s: in --signal=%s (mgpu signals every process of the job)"
             % (shown(prefix), shown(value)))
        value = rest
    if not value.strip():
        raise ValueError("--signal needs a signal, e.g. --signal=USR1@300")
    return {"--signal": value}


def convert_nodes(value, warn):
    low, dash, high = value.partition("-")
    if dash:
        if low != high:
            raise ValueError("mgpu runs a job on an exact number of hosts: give --nodes=N, not %s"
                             % shown(value))
        value = low
    return {"--nodes": value}


def _path_patterns(value):
    """The character after each '%' of `value` ('' for a '%' at its end), left to right."""
    letters = []
    at = value.find("%")
    while at >= 0:
        letters.append(value[at + 1:at + 2])
        at = value.find("%", at + 2)
    return letters


def convert_path(srun_option):
    def convert(value, warn):
        for letter in _path_patterns(value):
            if letter not in ("j", "u", "x", "r", "A", "a"):
                raise ValueError("%s=%s: mgpu fills in %%j (job id), %%u (user), %%x (job name), %%A (array "
                                 "job id) and %%a (array task id) only" % (srun_option, shown(value)))
        return {srun_option: value}
    return convert


def same(srun_option):
    return lambda value, warn: {srun_option: value}


def flag(srun_option, setting):
    return lambda value, warn: {srun_option: setting}


def unless_srun_lacks(srun_option, what):
    """An option mapped to srun's `srun_option` when srun has it; refused otherwise."""
    def convert(value, warn, srun_options):
        if srun_option not in srun_options:
            raise ValueError("%s not supported yet" % what)
        return {srun_option: value}
    convert.needs_srun_options = True
    return convert


class Option:
    __slots__ = ("name", "short", "takes", "convert", "ignored")

    def __init__(self, name, short=None, takes=REQUIRED, convert=None, ignored=None):
        self.name = name          # the long name, without "--"
        self.short = short        # the short letter, or None
        self.takes = takes        # REQUIRED, NONE or OPTIONAL (only as --name=VALUE)
        self.convert = convert    # for a mapped option
        self.ignored = ignored    # for an ignored one: why mgpu has no use for it


OPTIONS = [
    # Slurm's options that mgpu maps.
    Option("gpus", "G", convert=convert_gpus("--gpus")),
    Option("gpus-per-node", convert=convert_gpus("--gpus-per-node")),
    Option("gres", convert=convert_gres),
    Option("job-name", "J", convert=same("--name")),
    Option("time", "t", convert=convert_time),
    Option("output", "o", convert=convert_path("--output")),
    Option("error", "e", convert=convert_path("--error")),
    Option("chdir", "D", convert=same("--chdir")),
    Option("array", "a", convert=unless_srun_lacks("--array", "job arrays are")),
    Option("dependency", "d", convert=unless_srun_lacks("--dependency", "job dependencies are")),
    Option("nodes", "N", convert=convert_nodes),
    Option("mem-per-gpu", convert=convert_mem_per_gpu),
    Option("signal", convert=convert_signal),
    Option("requeue", takes=NONE, convert=flag("--requeue", True)),
    Option("no-requeue", takes=NONE, convert=flag("--requeue", None)),
    Option("nodelist", "w", convert=same("--nodelist")),
    Option("exclude", "x", convert=same("--exclude")),
    Option("priority", convert=same("--priority")),
    Option("parsable", takes=NONE, convert=flag("parsable", True)),
    # mgpu's own (srun's names), for #MGPU lines and the command line.
    Option("gpu-ids", convert=same("--gpu-ids")),
    Option("node-gpu-ids", convert=same("--node-gpu-ids")),
    Option("distributed", takes=NONE, convert=flag("--distributed", True)),
    Option("mpi", takes=NONE, convert=flag("--mpi", True)),
    Option("env-setup-cmd", convert=same("--env-setup-cmd")),
    # Slurm's options that do not apply to mgpu: a warning each.
    Option("partition", "p", ignored="mgpu has no partitions"),
    Option("account", "A", ignored="mgpu has no accounts"),
    Option("qos", "q", ignored="mgpu has no QOS"),
    Option("mail-type", ignored="mgpu sends no mail"),
    Option("mail-user", ignored="mgpu sends no mail"),
    Option("ntasks", "n", ignored="mgpu runs the script once on each host of the job"),
    Option("ntasks-per-node", ignored="mgpu runs the script once on each host of the job"),
    Option("cpus-per-task", "c", ignored="mgpu does not allocate CPUs"),
    Option("cpus-per-gpu", ignored="mgpu does not allocate CPUs"),
    Option("mem", ignored="host memory is not reserved by mgpu; --mem-per-gpu reserves GPU memory"),
    Option("mem-per-cpu", ignored="host memory is not reserved by mgpu; --mem-per-gpu reserves GPU memory"),
    Option("exclusive", takes=OPTIONAL,
           ignored="a job's GPUs are its own unless it gives --mem-per-gpu"),
    Option("export", ignored="the job gets the environment of mgpu sbatch, as with --export=ALL"),
    Option("constraint", "C", ignored="mgpu has no node features"),
]
LONG = {option.name: option for option in OPTIONS}
SHORT = {option.short: option for option in OPTIONS if option.short}


# --- splitting and parsing -------------------------------------------------------------------

def split_directive(text):
    """Shell-like words of a directive line; an unquoted '#' starting a word begins a comment
    (as in Slurm: `--output=a#b` is one word). ValueError on an unterminated quote."""
    words = []
    word = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\v\f":
            if word is not None:
                words.append(word)
                word = None
            i += 1
            continue
        if ch == "#" and word is None:
            break
        word = word or ""
        if ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("unterminated ' quote")
            word += text[i + 1:end]
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise ValueError('unterminated " quote')
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < n and text[i + 1] in '"\\$`':
                    ch = text[i + 1]
                    i += 1
                word += ch
                i += 1
        elif ch == "\\":
            if i + 1 < n:
                word += text[i + 1]
            i += 2
        else:
            word += ch
            i += 1
    if word is not None:
        words.append(word)
    return words


def parse_options(words, origin, operands_allowed=False):
    """Settings from `words`. On the command line (operands_allowed) parsing stops at the first
    operand (SCRIPT) or after `--`; the rest of the words is returned with the settings.
    SbatchError for an unknown option, a missing value or a stray word."""
    where = origin.where()
    code = EXIT_USAGE if origin.line is None else EXIT_ERROR
    hint = "" if origin.line is None else " in %s(see 'mgpu sbatch --help' for the options mgpu takes)" % origin.prefix
    settings = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--" and operands_allowed:
            return settings, words[i + 1:]
        if word in ("-h", "--help") and operands_allowed:
            raise HelpRequested()
        if not word.startswith("-") or word == "-":
            if operands_allowed:
                return settings, words[i:]
            raise SbatchError("%sunexpected word %s in %s (directives hold options only)"
                              % (where, shown(word), origin.prefix.strip()), code)
        i += 1
        if word.startswith("--"):
            name, equals, value = word[2:].partition("=")
            option = LONG.get(name)
            spelling = "--" + name
            if option is None:
                raise SbatchError("%sunknown option %s%s" % (where, shown(spelling), hint), code)
            if option.takes == NONE and equals:
                raise SbatchError("%s%s takes no value" % (where, spelling), code)
            if not equals:
                value = None
                if option.takes == REQUIRED:
                    if i >= len(words):
                        raise SbatchError("%s%s needs a value" % (where, spelling), code)
                    value = words[i]
                    i += 1
        else:
            letter = word[1]
            option = SHORT.get(letter)
            spelling = "-" + letter
            if option is None:
                raise SbatchError("%sunknown option %s%s" % (where, shown(word[:2]), hint), code)
            if option.takes != REQUIRED:
                value = None
                if len(word) > 2:
                    raise SbatchError("%s%s takes no value" % (where, spelling), code)
            elif len(word) > 2:
                value = word[2:]
            elif i < len(words):
                value = words[i]
                i += 1
            else:
                raise SbatchError("%s%s needs a value" % (where, spelling), code)
        settings.append(Setting(option, value, origin))
    return settings, []


def read_directives(content, script):
    """Settings from the `#SBATCH` and `#MGPU` lines of `content` (bytes) that come before its
    first command. SbatchError naming the line for anything wrong in them."""
    settings = []
    count = 0
    lines = content.split(b"\n")
    for number, line in enumerate(lines, 1):
        if number == 1 and line.startswith(b"#!"):
            continue
        kind = None
        for magic, rank in ((b"#SBATCH", Origin.SBATCH), (b"#MGPU", Origin.MGPU)):
            if line.startswith(magic) and (len(line) == len(magic) or line[len(magic):len(magic) + 1] in (b" ", b"\t")):
                kind = (magic, rank)
        if kind is None:
            stripped = line.strip()
            if stripped and not stripped.startswith(b"#"):
                break  # the first command: later #SBATCH lines are comments, as in Slurm
            continue
        magic, rank = kind
        origin = Origin(rank, script, number)
        count += 1
        if count > MAX_DIRECTIVES:
            raise SbatchError("%smore than %d directive lines" % (origin.where(), MAX_DIRECTIVES))
        body = line[len(magic):]
        if len(body) > MAX_DIRECTIVE_CHARS:
            raise SbatchError("%sdirective longer than %d characters" % (origin.where(), MAX_DIRECTIVE_CHARS))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SbatchError("%sdirective is not valid UTF-8" % origin.where()) from None
        try:
            words = split_directive(text)
        except ValueError as e:
            raise SbatchError("%s%s" % (origin.where(), e)) from None
        found, _ = parse_options(words, origin)
        settings.extend(found)
    return settings


def parse_command_line(argv):
    """(settings, script path, script arguments, help wanted) from sbatch's own arguments."""
    try:
        settings, rest = parse_options(list(argv), Origin(Origin.COMMAND_LINE), operands_allowed=True)
    except HelpRequested:
        return [], None, [], True
    if not rest:
        raise SbatchError("no script given: %s" % USAGE.strip(), EXIT_USAGE)
    return settings, rest[0], rest[1:], False


# --- the script and its copy -----------------------------------------------------------------

def read_script(path):
    """The bytes of the batch script at `path`: a regular file, at most MAX_SCRIPT_BYTES, text
    with a '#!' line and Unix line breaks. SbatchError otherwise."""
    name = shown(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SbatchError("%s: no such file" % name) from None
    except PermissionError:
        raise SbatchError("cannot read %s: permission denied" % name) from None
    except OSError as e:
        raise SbatchError("cannot read %s: %s" % (name, e.strerror or e)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SbatchError("%s is a directory, not a batch script" % name)
        if not stat.S_ISREG(info.st_mode):
            raise SbatchError("%s is not a regular file" % name)
        if info.st_size > MAX_SCRIPT_BYTES:
            raise SbatchError("%s is too large for a batch script: %d bytes, at most %d (4 MiB)"
                              % (name, info.st_size, MAX_SCRIPT_BYTES))
        chunks = []
        size = 0
        while size <= MAX_SCRIPT_BYTES:
            chunk = os.read(fd, MAX_SCRIPT_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise SbatchError("cannot read %s: %s" % (name, e.strerror or e)) from None
    finally:
        os.close(fd)
    content = b"".join(chunks)
    if len(content) > MAX_SCRIPT_BYTES:
        raise SbatchError("%s is too large for a batch script: at most %d bytes (4 MiB)" % (name, MAX_SCRIPT_BYTES))
    check_script(content, name)
    return content


def check_script(content, name):
    if not content:
        raise SbatchError("%s is empty" % name)
    if b"\0" in content:
        raise SbatchError("%s is a binary file, not a batch script" % name)
    if not content.startswith(b"#!"):
        raise SbatchError("%s: %s" % (name, NOT_A_SCRIPT))
    if b"\r\n" in content:
        raise SbatchError("%s has DOS line breaks (\\r\\n): convert it, e.g. with dos2unix" % name)


_NAME_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def copy_name(content, script):
    """`<sha256 prefix>-<file name>`: one copy per content and name, the name kept readable."""
    digest = hashlib.sha256(content).hexdigest()[:32]
    base = "".join(c if c in _NAME_CHARACTERS else "_" for c in os.path.basename(script))[:64].lstrip(".") or "script"
    return "%s-%s" % (digest, base)


def scripts_dir(home=None):
    if home is None:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = os.path.expanduser("~")
    return os.path.join(home, SCRIPTS_DIR)


def save_copy(content, path):
    """Write `content` to `path` (in a private directory of the user's), mode 0700, atomically.
    SbatchError when that is impossible."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(os.path.dirname(directory), mode=0o700, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise SbatchError("%s is not a directory of yours: move it away and submit again" % shown(directory))
        if info.st_mode & 0o077:
            os.chmod(directory, 0o700)
        temporary = "%s.%d.%s.tmp" % (path, os.getpid(), os.urandom(4).hex())
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o700)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o700)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(temporary, path)
        except OSError:
            os.unlink(temporary)
            raise
    except OSError as e:
        raise SbatchError("cannot copy the script to %s: %s" % (shown(directory), e.strerror or e)) from None


# --- from settings to srun's arguments -------------------------------------------------------

class Batch:
    """What `mgpu sbatch ARGV` submits: srun's arguments, the warnings to show first, and the
    script's copy to write before submitting."""

    def __init__(self, srun_argv, warnings, parsable, content, copy_path, origins):
        self.srun_argv = srun_argv
        self.warnings = warnings
        self.parsable = parsable
        self.content = content
        self.copy_path = copy_path
        self.origins = origins  # srun option -> the Origin of its value


def srun_settings(settings, srun_options):
    """{srun option: value} from settings (the higher origin, then the later, wins), the
    warnings, and {srun option: Origin}. SbatchError naming the line of a bad value."""
    warnings = []
    chosen = {}
    origins = {}
    for setting in sorted(settings, key=lambda s: s.origin.rank):  # stable: file order kept
        option, origin = setting.option, setting.origin
        written = "--" + option.name + ("" if setting.value is None else "=" + setting.value)
        if option.ignored:
            warnings.append("ignoring %s%s (%s)" % (origin.prefix, shown(written), option.ignored))
            continue
        warn = lambda line, origin=origin: warnings.append(origin.where() + line)
        try:
            if getattr(option.convert, "needs_srun_options", False):
                values = option.convert(setting.value, warn, srun_options)
            else:
                values = option.convert(setting.value, warn)
        except ValueError as e:
            raise SbatchError("%s%s" % (origin.where(), e), EXIT_USAGE if origin.line is None else EXIT_ERROR)
        for key, value in values.items():
            chosen[key] = value
            origins[key] = origin
    return chosen, warnings, origins


def plan(argv, srun_options, home=None, read=read_script):
    """The Batch for `mgpu sbatch ARGV`, or None for --help. Reads the script (with `read`)
    but writes nothing. SbatchError for anything wrong, naming the script's line."""
    cli, script, script_args, want_help = parse_command_line(argv)
    if want_help:
        return None
    content = read(script)
    settings = read_directives(content, os.path.basename(script)) + cli
    chosen, warnings, origins = srun_settings(settings, srun_options)
    parsable = bool(chosen.pop("parsable", None))
    count = chosen.pop(GPU_COUNT, None)
    if count is not None:
        option, value = count
        nodes = chosen.get("--nodes")
        if option == "--gpus" and nodes and nodes.isdigit() and int(nodes) > 1 and value.isdigit():
            # Slurm's --gpus is the job's total; mgpu gives a job on several hosts GPUs per host
            if int(value) % int(nodes):
                raise SbatchError("%s--gpus=%s does not divide over --nodes=%s: give --gpus-per-node"
                                  % (origins[GPU_COUNT].where(), value, nodes))
            option, value = "--gpus-per-node", str(int(value) // int(nodes))
        chosen[option] = value
        origins[option] = origins.pop(GPU_COUNT)
    if chosen.get("--name") is None:
        chosen["--name"] = os.path.basename(script)[:256] or "script"  # Slurm's default name
    copy_path = os.path.join(scripts_dir(home), copy_name(content, script))
    srun_argv = []
    for key, value in sorted(chosen.items()):
        if value is True:
            srun_argv.append(key)
        elif value is not None:
            srun_argv.append("%s=%s" % (key, value))
    srun_argv += ["--", copy_path] + list(script_args)
    return Batch(srun_argv, warnings, parsable, content, copy_path, origins)


def srun_fields(batch):
    """The submit request of `batch`, built by srun's own parser and build_request; an
    MgpuError names the directive line a bad value came from."""
    from mgpu.cli import srun
    parser = srun.build_parser()
    args = parser.parse_args(batch.srun_argv)
    try:
        return srun.build_request(args, parser)
    except MgpuError as e:
        raise MgpuError(e.code, e.message + blame(e.message, batch.origins)) from None


def blame(message, origins):
    """' (from #SBATCH line 4 of train.sh)' when `message` names an srun option whose value came
    from a directive; '' otherwise."""
    for option, origin in origins.items():
        if origin.line is not None and _names(message, option):
            return " (from %s)" % origin.describe()
    return ""


def _names(message, option):
    """True when `option` occurs in `message` as a whole option (not followed by a letter,
    digit, '_' or '-': --gpus is not named by --gpus-per-node)."""
    at = message.find(option)
    while at >= 0:
        after = message[at + len(option):at + len(option) + 1]
        if not (after.isalnum() or after in ("_", "-")):
            return True
        at = message.find(option, at + 1)
    return False


def srun_option_strings():
    from mgpu.cli import srun
    return srun.build_parser().option_strings()


def main(argv):
    try:
        batch = plan(argv, srun_option_strings())
    except SbatchError as e:
        if e.code == EXIT_USAGE:
            sys.stderr.write("%s: %s (see '%s --help')\n" % (PROG, e, PROG))
        else:
            sys.stderr.write("%s: %s\n" % (PROG, e))
        return e.code
    if batch is None:
        sys.stdout.write(HELP)
        return 0
    try:
        save_copy(batch.content, batch.copy_path)  # first: srun checks that the command exists
    except SbatchError as e:
        sys.stderr.write("%s: %s\n" % (PROG, e))
        return e.code
    fields = srun_fields(batch)
    for line in batch.warnings:
        sys.stderr.write("%s: warning: %s\n" % (PROG, line))
    sys.stderr.flush()
    from mgpu.client import Client
    client = Client.connect()
    try:
        job_id = client.call("submit", **fields)["job_id"]
    finally:
        client.close()
    print(job_id if batch.parsable else "Submitted batch job %d" % job_id)
    return 0
