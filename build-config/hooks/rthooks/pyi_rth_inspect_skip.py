# Replaces PyInstaller's own run-time hook for `inspect` (pyi_rth_inspect.py), which runs in
# every start of the binary and imports `inspect` and `zipfile` (with ast, dis, tokenize,
# pathlib, urllib.parse, ipaddress ...) only to make inspect.getsourcefile() resolve the
# relative file names of frozen modules. That cost 30-40 ms on every `mgpu queue`, about a
# third of the whole start. mgpu never asks inspect for source files (`inspect` is in the
# bundle only because dataclasses mentions it), so this hook does nothing: the
# only effect is that inspect.getsource() on a frozen module may not find its source, which
# it could not show anyway since the bundle carries no .py files.
# Picked up through `hookspath` in build-config/mgpu.spec: a user hook directory's
# rthooks.dat takes precedence over PyInstaller's own for the same module.
