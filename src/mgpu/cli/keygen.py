"""`mgpu keygen`: write a new cluster key (once per cluster), never over an existing file."""

import os
import sys

from mgpu.cli.common import Parser
from mgpu.errors import EXIT_ERROR

DEFAULT_OUTPUT = "/etc/mgpu/cluster.key"
KEY_DAYS = 36500  # 100 years: a cluster key is retired by replacing it, not by a date

DESCRIPTION = """Write a new cluster key: a private key (EC P-256) and a self-signed certificate
for it (CN=mgpu-cluster), in one file of mode 0600. Every master<->node link proves that both
ends hold this file (TLS 1.3, mutual authentication, the certificate pinned) and is encrypted
with it. Make it once per cluster, on one host, and copy it to every host. An existing file is
never overwritten. Needs the openssl command (OpenSSL 1.1.1 or newer)."""

EXAMPLES = """examples:
  sudo mgpu keygen                            write /etc/mgpu/cluster.key
  mgpu keygen --output ./cluster.key          elsewhere (the directory is created if missing)
  sudo scp -p /etc/mgpu/cluster.key root@gpu2:/etc/mgpu/cluster.key
                                              copy it to another host, keeping its mode
"""

NEXT_STEPS = """Wrote the cluster key %(path)s (mode 0600, certificate sha256 %(fingerprint)s).
Copy it to every host of the cluster, at the same path and with the same mode, for example:
  ssh root@HOST install -d -m 0755 %(directory)s && scp -p %(path)s root@HOST:%(path)s
The master uses it to accept nodes (mgpu master --listen HOST:PORT --key %(path)s) and each node
to join (mgpu node --master HOST:PORT --key %(path)s). Anyone who holds it can join the cluster:
keep it 0600, owned by root.
"""


def build_parser():
    parser = Parser(prog="mgpu keygen", usage="mgpu keygen [--output PATH]", description=DESCRIPTION,
                    epilog=EXAMPLES)
    parser.add_argument("--output", "-o", metavar="PATH", default=DEFAULT_OUTPUT,
                        help="where to write the key (default %s); must not exist" % DEFAULT_OUTPUT)
    return parser


def openssl_arguments():
    """`openssl req` arguments that print a new key and its certificate, PEM, on stdout."""
    return ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", str(KEY_DAYS), "-subj", "/CN=mgpu-cluster",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature",
            "-addext", "extendedKeyUsage=serverAuth,clientAuth",
            "-keyout", "/dev/stdout", "-out", "/dev/stdout"]


def _refuse(message):
    sys.stderr.write("mgpu keygen: %s\n" % message)
    return EXIT_ERROR


def _make_directory(directory):
    """Create `directory` and missing parents, 0755 (what /etc/mgpu is); they hold no secret."""
    missing = []
    while directory and not os.path.lexists(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # whatever the umask


def _write_new(path, data):
    """Write `data` to a new file at `path`, 0600 from the moment it exists; FileExistsError
    when anything (a file, a symbolic link, even a dangling one) is there."""
    old_umask = os.umask(0o077)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    finally:
        os.umask(old_umask)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)  # ours (O_EXCL): a half-written key must not stay behind
        raise
    os.close(fd)
    try:
        directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


def main(argv):
    args = build_parser().parse_args(argv)
    path = os.path.abspath(args.output)
    exists = "%s already exists; keygen never overwrites a cluster key (to replace the key, " \
             "remove it first, then copy the new one to every host)" % path
    if os.path.islink(path):
        return _refuse("%s is a symbolic link; keygen writes a new file, never through a link "
                       "(remove the link or choose another --output)" % path)
    if os.path.lexists(path):
        return _refuse(exists)

    from mgpu import auth, launcher  # here, not at the top: `mgpu --help` stays fast

    try:
        pem = launcher.run_openssl(openssl_arguments())
    except FileNotFoundError:
        return _refuse("the openssl command is needed to make a key and is not installed: install "
                       "openssl (e.g. apt install openssl), or run mgpu keygen on a host that has it "
                       "and copy the file")
    except (RuntimeError, OSError) as e:
        return _refuse("openssl failed to make the key: %s" % e)
    try:
        certificate = auth.parse_key_file(pem)
    except auth.KeyFileProblem as e:
        return _refuse("openssl's output is not a usable key (%s); is it OpenSSL 1.1.1 or newer?" % e)
    directory = os.path.dirname(path)
    try:
        _make_directory(directory)
    except OSError as e:
        return _refuse("cannot create the directory %s: %s" % (directory, e.strerror or e))
    if not os.path.isdir(directory):
        return _refuse("%s is not a directory" % directory)
    try:
        _write_new(path, pem)
    except FileExistsError:
        return _refuse(exists)
    except OSError as e:
        return _refuse("cannot write %s: %s" % (path, e.strerror or e))
    sys.stdout.write(NEXT_STEPS % {"path": path, "directory": directory,
                                   "fingerprint": auth.fingerprint(certificate)})
    return 0
