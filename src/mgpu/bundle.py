"""What a PyInstaller one-file build adds to the process environment, and how to take it out.

Owns: the list of variables the bundle sets for itself. Must not: import anything from mgpu.
A job, or a process a job starts, must see the environment its user submitted: the bundle's
library path points into a root-owned unpack folder, and its `_PYI_*`/`_MEI*` markers would make
a child `mgpu` reuse that folder and die.
"""

import os
import sys

FROZEN = bool(getattr(sys, "frozen", False))


def scrub(env):
    """A copy of `env` without the bundle's own variables, with library paths restored."""
    clean = {}
    for key, value in env.items():
        if key.startswith(("_PYI_", "_MEI", "PYINSTALLER_")) or key in ("_MEIPASS2",):
            continue
        clean[key] = value
    for var in ("LD_LIBRARY_PATH", "LIBPATH", "DYLD_LIBRARY_PATH"):
        original = env.get(var + "_ORIG")
        clean.pop(var + "_ORIG", None)
        if original is not None:
            clean[var] = original
        elif FROZEN or env.get("_PYI_ARCHIVE_FILE") or env.get("_MEIPASS2"):
            # Set by the bootloader and not by the user: drop it.
            meipass = getattr(sys, "_MEIPASS", None)
            value = clean.get(var)
            if value is not None and (meipass is None or meipass in value):
                clean.pop(var)
    return clean


def clean_environ():
    return scrub(os.environ)


# Modules a daemon or its forked supervisors may import late (error paths, locale and host-name
# handling). A one-file binary imports from its own file, reopened by path, and from a folder
# it unpacks and deletes on exit: after an upgrade replaced the file, or after the daemon exited
# under a still-running supervisor, a first import would fail. Import them up front instead.
DAEMON_PRELOAD = ("traceback", "linecache", "tokenize", "_strptime", "encodings.idna", "stringprep",
                  "unicodedata")
PR_SET_PDEATHSIG = 1


def prepare_daemon():
    """For a daemon started from the one-file binary: preload late imports, and die with the
    bootloader process. The binary runs as two processes, and a SIGKILL (by an admin, or by a
    service manager at its stop timeout) reaches only the bootloader, whose pid is the one
    shown; without this its Python child would go on serving as an orphan."""
    if not FROZEN:
        return
    import importlib
    import signal

    for name in DAEMON_PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    bootloader = os.getppid()
    try:
        ours = os.readlink("/proc/%d/exe" % bootloader) == os.readlink("/proc/self/exe")
    except OSError:
        ours = False
    if not ours:
        return  # not started by a one-file bootloader of ours: never tie our life to a parent
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != bootloader:  # the bootloader died before prctl took effect
        os._exit(1)
