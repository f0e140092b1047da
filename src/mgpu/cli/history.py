"""`mgpu history`: finished jobs from the master's database, with exit codes and times."""

import datetime
import sys
import time

from mgpu.cli.common import Parser, job_filters
from mgpu.client import call

MAX_LIMIT = 10_000       # protocol.MAX_HISTORY_LIMIT
DEFAULT_LIMIT = 1000     # protocol.DEFAULT_HISTORY_LIMIT
MAX_TIME = 1 << 40       # protocol.MAX_TIME

DESCRIPTION = """Show finished jobs (COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL) from the
master's database, oldest first, with exit codes and times. Without --since or -j: the jobs
that ended since midnight today (local time), the newest 1000 of them."""

EXAMPLES = """examples:
  mgpu history                        jobs that ended since midnight (newest 1000)
  mgpu history --since 2h             ... in the last two hours (also 30m, 3d, 1w)
  mgpu history --since 2024-05-01 --user alice --state FAILED,TIMEOUT
  mgpu history --me --since all       all your finished jobs (newest 1000)
  mgpu history -j 42,43               these jobs, whenever they ended
  mgpu history --json | jq '.jobs[] | select(.exit_code != 0) | .id'

Finished jobs stay in the master's database after they leave 'mgpu queue --all'. Times are
local: HH:MM:SS today, MM-DDTHH:MM this year, YYYY-MM-DD before; --json gives epoch seconds."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _digits(text, low, high):
    return low <= len(text) <= high and text.isascii() and text.isdigit()


def _date_numbers(value):
    """[year, month, day, hour, minute, second] of `YYYY-MM-DD[(T| )HH:MM[:SS]]`, or None."""
    date, clock = value[:10].split("-"), value[11:].split(":")
    if len(date) != 3 or not all(_digits(part, size, size) for part, size in zip(date, (4, 2, 2))):
        return None
    if len(value) == 10:
        clock = []
    elif value[10] not in ("T", " ") or len(clock) not in (2, 3) or not all(_digits(part, 2, 2) for part in clock):
        return None
    return [int(part) for part in date + clock] + [0] * (3 - len(clock))


def parse_when(text, now):
    """Epoch seconds from `YYYY-MM-DD` (local midnight), `YYYY-MM-DDTHH:MM[:SS]` (local time),
    a time ago (`30m`, `2h`, `3d`, `1w`, `45s`), `today` (midnight), or None for `all`;
    ValueError (one line) otherwise."""
    value = str(text).strip()
    if value.lower() == "all":
        return None
    if value.lower() == "today":
        return midnight(now)
    if value[-1:] in _UNITS and _digits(value[:-1], 1, 7):
        return max(0, int(now - int(value[:-1]) * _UNITS[value[-1]]))
    numbers = _date_numbers(value)
    if numbers:
        try:
            moment = datetime.datetime(*numbers).timestamp()
        except (ValueError, OverflowError, OSError):
            moment = None
        if moment is not None:
            return min(max(0, int(moment)), MAX_TIME)
    raise ValueError("bad time %r: use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS], a time ago like 30m, 2h, 3d, "
                     "or 'all'" % value[:40])


def midnight(now):
    """The start of the local day of `now`, in epoch seconds."""
    day = datetime.datetime.fromtimestamp(now).date()
    return int(datetime.datetime(day.year, day.month, day.day).timestamp())


def build_parser():
    p = Parser(prog="mgpu history", description=DESCRIPTION,
               epilog=EXAMPLES)
    p.add_argument("--user", "-u", metavar="USER", help="only this user's jobs")
    p.add_argument("--me", action="store_true", help="only your own jobs")
    p.add_argument("--since", "-S", metavar="WHEN", help="jobs that ended since WHEN: YYYY-MM-DD, "
                   "YYYY-MM-DDTHH:MM[:SS], 30m, 2h, 3d, 1w, today (default), or all")
    p.add_argument("--state", "-t", metavar="STATE[,STATE]", help="only these final states (e.g. FAILED,TIMEOUT)")
    p.add_argument("--jobs", "-j", metavar="ID[,ID]", help="only these jobs (then no default --since)")
    p.add_argument("--limit", "-n", metavar="N", help="at most the newest N jobs (default %d, at most %d)"
                   % (DEFAULT_LIMIT, MAX_LIMIT))
    p.add_argument("--json", action="store_true", help='print {"jobs": [...], "more": bool} as JSON')
    return p


def build_request(args, parser, now):
    fields = job_filters(args, parser)
    try:
        since = parse_when(args.since, now) if args.since is not None else (
            None if args.jobs is not None else midnight(now))
    except ValueError as e:
        parser.error("--since: %s" % e)
    if since is not None:
        fields["since"] = since
    if args.limit is not None:
        text = args.limit.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 9 or not 1 <= int(text) <= MAX_LIMIT:
            parser.error("--limit: expected a whole number from 1 to %d, not %r" % (MAX_LIMIT, args.limit[:40]))
        fields["limit"] = int(text)
    return fields


def main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = build_request(args, parser, time.time())
    result = call("history", **fields)
    from mgpu.cli import render

    if args.json:
        print(render.json_of({"jobs": result["jobs"], "more": result.get("more", False)}))
        return 0
    jobs = result["jobs"]
    now = render.now_of(result)
    if jobs:
        print(render.history_table(jobs, now))
    else:
        print("no finished jobs match%s" % ("" if "since" not in fields or args.since is not None
                                             else " since midnight (see --since)"))
    if result.get("more"):
        sys.stderr.write("mgpu: more jobs match: these are the newest %d (use --limit, --since or --state)\n"
                         % len(jobs))
    return 0
