"""What a PyInstaller build adds to the process environment, and how to take it out.

Owns: the list of variables the bundle sets for itself. Must not: import anything from mgpu.
A job, or a process a job starts, must see the environment its user submitted: the bundle's
library path points into the unpacked program (root's private cache), and its `_PYI_*`/`_MEI*`
markers would make a child `mgpu` take itself for a part of this process.

dist/mgpu is a PyInstaller one-dir program packed behind a small sh header
(build-config/launcher.sh) that unpacks it once per user and build and exec()s it: one process.
A plain PyInstaller one-file build (two processes: an unpacking bootloader and Python) is
handled too, so that either kind of build stays correct.
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
# handling). A frozen program imports from files it reopens by path; with a one-file build they
# live in a folder deleted when the daemon exits (under still-running supervisors), or in the
# executable itself (replaced by an upgrade): a first import would then fail. Import them up
# front instead; it costs a few milliseconds at a daemon's start only.
DAEMON_PRELOAD = ("traceback", "linecache", "tokenize", "_strptime", "encodings.idna", "stringprep",
                  "unicodedata")
PR_SET_PDEATHSIG = 1


def _under_one_file_bootloader():
    """True in the Python process of a PyInstaller one-FILE build, whose files are unpacked into
    a temporary _MEIxxxxxx folder by a parent bootloader process. A one-dir program (ours) runs
    from its own folder, as one process, with _MEIPASS its `_internal` folder or its own."""
    meipass = getattr(sys, "_MEIPASS", None)
    if not meipass:
        return False
    home = os.path.dirname(os.path.realpath(sys.executable))
    return os.path.realpath(meipass) not in (home, os.path.join(home, "_internal"))


def prepare_daemon():
    """For a daemon started from the frozen binary: preload late imports; under a one-file
    bootloader, also die with it. A one-file build runs as two processes, and a SIGKILL (by an
    admin, or by a service manager at its stop timeout) reaches only the bootloader, whose pid
    is the one shown; without this its Python child would go on serving as an orphan. A one-dir
    program is a single process and never ties its life to its parent."""
    if not FROZEN:
        return
    import importlib
    import signal

    for name in DAEMON_PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if not _under_one_file_bootloader():
        return
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
