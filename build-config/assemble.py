"""Assemble the one-file `mgpu`: the sh header build-config/launcher.sh, then an uncompressed tar
of PyInstaller's one-dir build (`make build`).

    python build-config/assemble.py build/onedir/mgpu build-config/launcher.sh dist/mgpu

The tar holds the one-dir tree's contents (`mgpu`, `_internal/...`) in sorted order, owned by
0:0 with no names, without group/other write or set-id bits, every time stamp SOURCE_DATE_EPOCH
(default 0): with PyInstaller run under PYTHONHASHSEED=0 (the Makefile does), the same sources
and build venv give the same bytes, hence the same hash and cache directory. The header gets the archive's
sha256 (the cache directory is named after its first 16 hex digits), its size, and the byte at
which it starts (for `tail -c +OFFSET`); the header is padded to a multiple of 512 bytes.
The output is written under a temporary name and renamed into place.
"""

import hashlib
import io
import os
import sys
import tarfile

HASH_DIGITS = 16
MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
PLACEHOLDERS = ("@MGPU_HASH@", "@MGPU_SHA256@", "@MGPU_OFFSET@", "@MGPU_SIZE@")


def _normalise(info):
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode &= 0o755  # no set-id, sticky, group or other write bits
    info.mtime = MTIME
    return info


def build_archive(tree):
    """The uncompressed tar (bytes) of the contents of `tree`, deterministic in order."""
    if not os.path.isfile(os.path.join(tree, "mgpu")):
        raise SystemExit("assemble.py: %s/mgpu is missing (PyInstaller's one-dir build)" % tree)
    paths = [os.path.join(folder, name) for folder, dirs, files in os.walk(tree) for name in dirs + files]
    paths.sort(key=lambda p: os.path.relpath(p, tree).split(os.sep))  # a folder before its contents
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in paths:
            archive.add(path, arcname=os.path.relpath(path, tree), recursive=False, filter=_normalise)
    return buffer.getvalue()


def render_header(template, digest, size):
    for placeholder in PLACEHOLDERS:
        if placeholder not in template:
            raise SystemExit("assemble.py: the launcher template lacks %s" % placeholder)
    offset = 1
    while True:
        text = (template.replace("@MGPU_HASH@", digest[:HASH_DIGITS])
                .replace("@MGPU_SHA256@", digest)
                .replace("@MGPU_SIZE@", str(size))
                .replace("@MGPU_OFFSET@", str(offset)))
        if not text.endswith("\n"):
            text += "\n"
        data = text.encode("ascii")
        padded = -(-(len(data) + 2) // 512) * 512  # room for "#\n" at least
        if padded + 1 == offset:
            # A comment line of spaces pads the header; sh never reads past the final exit.
            return data + b"#" + b" " * (padded - len(data) - 2) + b"\n"
        offset = padded + 1


def main(argv):
    if len(argv) != 4:
        raise SystemExit("usage: assemble.py ONEDIR_TREE LAUNCHER_TEMPLATE OUTPUT")
    tree, template_path, output = argv[1:]
    with open(template_path, encoding="ascii") as handle:
        template = handle.read()
    archive = build_archive(tree)
    digest = hashlib.sha256(archive).hexdigest()
    header = render_header(template, digest, len(archive))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    temporary = output + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(header)
        handle.write(archive)
    os.chmod(temporary, 0o755)
    os.replace(temporary, output)
    print("assembled %s: %d-byte header + %d-byte archive, cache directory %s"
          % (output, len(header), len(archive), digest[:HASH_DIGITS]))


if __name__ == "__main__":
    main(sys.argv)
