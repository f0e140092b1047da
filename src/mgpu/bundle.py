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
