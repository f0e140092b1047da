"""`mgpu resume NODE`: a drained node takes jobs again (see drain.py)."""

from mgpu.cli.drain import resume_main as main

__all__ = ["main"]
