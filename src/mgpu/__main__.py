"""Entry point of `python -m mgpu` and of the one-file binary."""

import sys

from mgpu.cli import finish, main

if __name__ == "__main__":
    finish(main())
