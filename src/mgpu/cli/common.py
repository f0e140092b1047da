"""What every role's command line shares: an argument parser whose errors are one line.

The parser is mgpu's own, not argparse: a client role (srun, queue, ...) starts in the time of
the modules it needs, and argparse brings re, enum, gettext, shutil and textwrap. It takes the
subset of argparse's interface the roles use (`add_argument` with long and short flags,
metavar, help, dest, default, type, choices, action="store_true", nargs "?" with const, "*"
and REMAINDER) and parses as argparse does: `--opt=value`, `--opt value`, `-Xvalue`, short
flags grouped (`-iq`), the last of a repeated option wins, a word starting with '-' is an
option unless it is a negative number or holds a space, `--` ends the options. Options must be
spelled out: no prefix matching (with it `--env FOO=bar` would silently be `--env-setup-cmd
FOO=bar`). Errors are argparse's texts on one line: `mgpu srun: MESSAGE (see 'mgpu srun
--help')`, exit code 2.
"""

import os
import sys

from mgpu.errors import EXIT_USAGE

SUPPRESS = "==SUPPRESS=="  # as help: the argument is left out of --help
REMAINDER = "..."          # as nargs of the last positional: every word from the first positional on

_NO_VALUE = object()


class Namespace:
    """The parsed arguments, as attributes."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __eq__(self, other):
        return isinstance(other, Namespace) and vars(self) == vars(other)

    def __contains__(self, name):
        return name in self.__dict__

    def __repr__(self):
        return "Namespace(%s)" % ", ".join("%s=%r" % item for item in sorted(vars(self).items()))


class _Argument:
    __slots__ = ("option_strings", "dest", "nargs", "const", "default", "type", "choices", "help",
                 "metavar", "flag")

    def __init__(self, option_strings, dest, action=None, nargs=None, const=None, default=_NO_VALUE, type=None,
                 choices=None, help=None, metavar=None):
        if action not in (None, "store", "store_true"):
            raise ValueError("unsupported action %r" % (action,))
        self.flag = action == "store_true"
        if self.flag and (nargs is not None or const is not None or type is not None):
            raise ValueError("store_true takes no nargs, const or type")
        if nargs not in (None, "?", "*", REMAINDER):
            raise ValueError("unsupported nargs %r" % (nargs,))
        if option_strings and nargs in ("*", REMAINDER):
            raise ValueError("nargs %r is for positionals only" % (nargs,))
        self.option_strings = option_strings
        self.dest = dest
        self.nargs = nargs
        self.const = const
        if default is _NO_VALUE:  # as argparse: a flag is False unless given, anything else None
            default = False if self.flag else None
        self.default = default
        self.type = type
        self.choices = choices
        self.help = help
        self.metavar = metavar

    @property
    def name(self):
        """How an error names it: `--gpus/-G`, or the positional's metavar."""
        if self.option_strings:
            return "/".join(self.option_strings)
        return self.metavar or self.dest

    def value_metavar(self):
        if self.metavar is not None:
            return self.metavar
        if self.choices is not None:
            return "{%s}" % ",".join(str(choice) for choice in self.choices)
        return self.dest if not self.option_strings else self.dest.upper()


class UsageError(Exception):
    """A command line that does not parse (the one-line message, argparse's wording)."""


class Parser:
    """A command line parser with argparse's interface, as far as mgpu's roles use it."""

    def __init__(self, prog, usage=None, description=None, epilog=None, add_help=True):
        self.prog = prog
        self.usage = usage
        self.description = description
        self.epilog = epilog
        self._options = {}      # option string -> _Argument
        self._arguments = []    # every _Argument, in the order added
        self._positionals = []
        if add_help:
            self.add_argument("-h", "--help", action="store_true", help="show this help message and exit")
            self._help = self._arguments[-1]
        else:
            self._help = None

    # --- building -----------------------------------------------------------------------------

    def add_argument(self, *names, dest=None, **kwargs):
        if not names:
            raise ValueError("add_argument needs a name")
        if names[0].startswith("-"):
            for name in names:
                if not name.startswith("-") or name in ("-", "--") or " " in name:
                    raise ValueError("bad option string %r" % name)
                if name in self._options:
                    raise ValueError("option %s given twice" % name)
            if dest is None:
                long_names = [name for name in names if name.startswith("--")]
                dest = (long_names or names)[0].lstrip("-").replace("-", "_")
            argument = _Argument(list(names), dest, **kwargs)
            for name in names:
                self._options[name] = argument
        else:
            if len(names) != 1 or dest is not None:
                raise ValueError("a positional has one name and no dest")
            if self._positionals and self._positionals[-1].nargs in ("*", REMAINDER):
                raise ValueError("no positional may follow one with nargs %r" % self._positionals[-1].nargs)
            argument = _Argument([], names[0], **kwargs)
            if argument.flag or argument.nargs == "?":
                raise ValueError("unsupported positional %r" % names[0])
            self._positionals.append(argument)
        self._arguments.append(argument)
        return argument

    def option_strings(self):
        """Every option string this parser knows (`--gpus`, `-G`, ...)."""
        return frozenset(self._options)

    # --- parsing ------------------------------------------------------------------------------

    def parse_args(self, args=None):
        """A Namespace of `args` (default sys.argv[1:]); one line and exit 2 when they do not
        parse, the help and exit 0 for -h/--help."""
        args = list(sys.argv[1:] if args is None else args)
        try:
            return self._parse(args)
        except UsageError as e:
            self.error(str(e))

    def error(self, message):
        sys.stderr.write("%s: %s (see '%s --help')\n" % (self.prog, message, self.prog))
        sys.exit(EXIT_USAGE)

    def _parse(self, args):
        values = {}
        for argument in self._arguments:
            if argument is not self._help:
                if argument.nargs in ("*", REMAINDER) and argument.default is None:
                    values[argument.dest] = []
                else:
                    values[argument.dest] = argument.default
        positional_words = []
        extras = []
        remainder = None
        slots = [p for p in self._positionals if p.nargs != REMAINDER]
        takes_rest = bool(self._positionals) and self._positionals[-1].nargs == REMAINDER
        gathers = any(p.nargs == "*" for p in slots)
        index, count = 0, len(args)
        only_positionals = False
        filled_at = None
        while index < count:
            word = args[index]
            index += 1
            if not only_positionals and word == "--":
                if takes_rest and len(positional_words) >= len(slots):
                    remainder = args[index - 1:]
                    break
                only_positionals = True
                # As argparse: a `--` no positional takes along (none left, and it does not
                # follow the word that filled the last one) is reported too.
                if not slots or (not gathers and len(positional_words) >= len(slots) and filled_at != index - 1):
                    extras.append((index, word))
                continue
            found = None if only_positionals else self._split_option(word)
            if found is None:
                if takes_rest and len(positional_words) >= len(slots):
                    remainder = args[index - 1:]
                    break
                positional_words.append((index, word))
                if len(positional_words) == len(slots):
                    filled_at = index
                continue
            argument, option, explicit = found
            if argument is None:
                extras.append((index, word))
                continue
            index = self._consume(argument, option, explicit, args, index, values)
        extras += self._assign_positionals(slots, positional_words, values)
        if takes_rest:
            values[self._positionals[-1].dest] = remainder or []
        if extras:
            raise UsageError("unrecognized arguments: %s" % " ".join(word for _, word in sorted(extras)))
        return Namespace(**values)

    def _assign_positionals(self, slots, words, values):
        """Give the positional words (index, word) to the positionals in order; those left over."""
        missing = []
        words = list(words)
        for argument in slots:
            if argument.nargs == "*":
                taken, words = words, []
                values[argument.dest] = [self._convert(argument, word) for _, word in taken] if taken else (
                    argument.default if argument.default is not None else [])
            elif words:
                values[argument.dest] = self._convert(argument, words.pop(0)[1])
            else:
                missing.append(argument.metavar or argument.dest)
        if missing:
            raise UsageError("the following arguments are required: %s" % ", ".join(missing))
        return words

    def _looks_like_option(self, word):
        """argparse's rule: a word starting with '-' is an option (known or not), unless it is
        '-' alone, a negative number, or holds a space and is no known option."""
        if not word or word[0] != "-" or word == "-":
            return False
        if word == "--":
            return True
        return self._split_option(word) is not None

    def _split_option(self, word):
        """(argument or None when unknown, option string, explicit value or None) for an
        option word; None for a word that is a positional."""
        if not word or word[0] != "-" or len(word) == 1:
            return None
        argument = self._options.get(word)
        if argument is not None:
            return argument, word, None
        if "=" in word:
            option, value = word.split("=", 1)
            argument = self._options.get(option)
            if argument is not None:
                return argument, option, value
        if word[1] != "-":
            argument = self._options.get(word[:2])
            if argument is not None:
                return argument, word[:2], word[2:]
        if _negative_number(word) or " " in word:
            return None
        return None, word, None

    def _consume(self, argument, option, explicit, args, index, values):
        """Take `argument`'s value (from `explicit` or the words at args[index]); the index of
        the next word."""
        while True:
            if argument is self._help:
                if explicit is not None and option[1] == "-":
                    raise UsageError("argument %s: ignored explicit argument %r" % (argument.name, explicit))
                self.print_help()
                sys.exit(0)
            if argument.flag:
                if explicit is None:
                    values[argument.dest] = True
                    return index
                if option[1] == "-" or explicit == "":
                    raise UsageError("argument %s: ignored explicit argument %r" % (argument.name, explicit))
                # Grouped short flags: -iq is -i -q; -iG2 is -i -G 2.
                values[argument.dest] = True
                following = "-" + explicit[0]
                nxt = self._options.get(following)
                if nxt is None:
                    raise UsageError("argument %s: ignored explicit argument %r" % (argument.name, explicit))
                argument, option, explicit = nxt, following, explicit[1:] or None
                continue
            if explicit is not None:
                values[argument.dest] = self._convert(argument, explicit)
                return index
            if index < len(args) and not self._looks_like_option(args[index]):
                values[argument.dest] = self._convert(argument, args[index])
                return index + 1
            if argument.nargs == "?":
                values[argument.dest] = argument.const
                return index
            raise UsageError("argument %s: expected one argument" % argument.name)

    def _convert(self, argument, word):
        value = word
        if argument.type is not None:
            try:
                value = argument.type(word)
            except (TypeError, ValueError):
                raise UsageError("argument %s: invalid %s value: %r" % (
                    argument.name, getattr(argument.type, "__name__", repr(argument.type)), word)) from None
        if argument.choices is not None and value not in argument.choices:
            raise UsageError("argument %s: invalid choice: %r (choose from %s)" % (
                argument.name, value, ", ".join(repr(choice) for choice in argument.choices)))
        return value

    # --- help ---------------------------------------------------------------------------------

    def format_usage(self):
        if self.usage is not None:
            return "usage: %s\n" % (self.usage % {"prog": self.prog})
        words = []
        for argument in self._arguments:
            if argument.help == SUPPRESS:
                continue
            if argument.option_strings:
                word = argument.option_strings[0]
                if not argument.flag:
                    word += " " + _value_form(argument)
                words.append("[%s]" % word)
            elif argument.nargs == "*":
                words.append("[%s ...]" % argument.value_metavar())
            elif argument.nargs == REMAINDER:
                words.append("...")
            else:
                words.append(argument.value_metavar())
        prefix = "usage: %s " % self.prog
        lines = _wrap_words(words, max(_width() - len(prefix), 20))
        return prefix + ("\n" + " " * len(prefix)).join(lines) + "\n"

    def format_help(self):
        width = _width()
        shown = [argument for argument in self._arguments if argument.help != SUPPRESS]
        invocations = [(argument, _invocation(argument)) for argument in shown]
        longest = max([len(text) + 2 for _, text in invocations] or [0])
        help_position = min(longest + 2, min(24, max(width - 20, 4)))
        parts = [self.format_usage()]
        if self.description:
            parts.append("\n" + self.description.rstrip("\n") + "\n")
        for title, positional in (("positional arguments", True), ("options", False)):
            section = [(argument, text) for argument, text in invocations
                       if bool(argument.option_strings) != positional]
            if not section:
                continue
            parts.append("\n%s:\n" % title)
            for argument, text in section:
                parts.append(_format_entry(argument, text, help_position, width, self.prog))
        if self.epilog:
            parts.append("\n" + self.epilog.rstrip("\n") + "\n")
        return "".join(parts)

    def print_help(self, file=None):
        (file or sys.stdout).write(self.format_help())



def _negative_number(word):
    """argparse's negative number: -5, -1.5, -.5."""
    body = word[1:]
    whole, dot, fraction = body.partition(".")
    if dot:
        return fraction.isascii() and fraction.isdigit() and (not whole or (whole.isascii() and whole.isdigit()))
    return body.isascii() and body.isdigit()


def _value_form(argument):
    metavar = argument.value_metavar()
    return "[%s]" % metavar if argument.nargs == "?" else metavar


def _invocation(argument):
    if not argument.option_strings:
        return argument.value_metavar()
    if argument.flag:
        return ", ".join(argument.option_strings)
    return ", ".join("%s %s" % (option, _value_form(argument)) for option in argument.option_strings)


def _format_entry(argument, invocation, help_position, width, prog):
    action_width = help_position - 4
    text = argument.help
    if text:
        text = text % dict({name: getattr(argument, name) for name in _Argument.__slots__}, prog=prog)
    if not text or not text.strip():
        return "  %s\n" % invocation
    lines = _wrap_words(text.split(), max(width - help_position, 11))
    if len(invocation) <= action_width:
        head = "  %-*s  %s\n" % (action_width, invocation, lines[0])
    else:
        head = "  %s\n%*s%s\n" % (invocation, help_position, "", lines[0])
    return head + "".join("%*s%s\n" % (help_position, "", line) for line in lines[1:])


def _wrap_words(words, width):
    lines, line = [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = "%s %s" % (line, word) if line else word
    lines.append(line)
    return lines


def _width():
    """Columns for --help, as argparse counts them (COLUMNS, else the terminal, else 80; less 2)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


MAX_IDS_NAMED = 1000  # job ids in one -j (protocol.MAX_IDS_NAMED)


def job_filters(args, parser):
    """The request fields of the filters `queue` and `history` share: --user or --me,
    --state, -j (usage errors through `parser`)."""
    fields = {}
    if args.user and args.me:
        parser.error("give either --me or --user, not both")
    if args.user:
        fields["user"] = args.user
    if args.me:
        fields["mine"] = True
    if args.state:
        fields["state"] = args.state
    if args.jobs is not None:
        try:
            fields["ids"] = parse_job_ids(args.jobs, MAX_IDS_NAMED)
        except ValueError as e:
            parser.error(str(e))
    return fields


def parse_job_ids(text, most):
    """Job ids from `-j 12,13`: distinct whole numbers from 1 to MAX_JOB_ID, at most `most`
    of them; ValueError (one line) otherwise."""
    from mgpu.model import MAX_JOB_ID

    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) > most:
        raise ValueError("too many job ids: at most %d at once" % most)
    ids, seen = [], set()
    for part in parts:
        if not (part.isascii() and part.isdigit()) or len(part) > 19 or not 1 <= int(part) <= MAX_JOB_ID:
            raise ValueError("bad job id %r: job ids are numbers from 1 to %d, comma-separated"
                             % (part[:40], MAX_JOB_ID))
        if int(part) not in seen:
            seen.add(int(part))
            ids.append(int(part))
    return ids
