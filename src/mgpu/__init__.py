"""mgpu: a multi-GPU job scheduler for labs and GPU servers."""

__version__ = "0.1.0"
