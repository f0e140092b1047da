"""Entry point of `python -m mgpu` and of the one-file binary."""

import sys

from mgpu.cli import finish, main

if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as e:  # e.g. --help or a usage error: printed already
        code = e.code
    finish(code)
