"""What every role's command line shares: an argument parser whose errors are one line."""

import argparse
import sys

from mgpu.errors import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    """Options must be spelled out: with prefix matching `--env FOO=bar` would silently be
    `--env-setup-cmd FOO=bar`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.stderr.write("%s: %s (see '%s --help')\n" % (self.prog, message, self.prog))
        sys.exit(EXIT_USAGE)


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
