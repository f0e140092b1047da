"""What every role's command line shares: an argument parser whose errors are one line."""

import argparse
import sys

from mgpu.errors import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write("%s: %s (see '%s --help')\n" % (self.prog, message, self.prog))
        sys.exit(EXIT_USAGE)
