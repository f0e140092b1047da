"""The cluster key and the authenticated, encrypted link between mgpu daemons.

Owns: reading and checking the cluster key file, the TLS settings of every master<->node link,
the pinning of the cluster certificate, and the handshake (with its deadline) on a connected
stream socket. Must not: open, accept or connect sockets (transport.py does), spawn (keygen's
`openssl` run is launcher.py's), start threads or read the clock; it knows nothing about
messages.

The cluster key file (made once per cluster by `mgpu keygen`, copied to every host, 0600) is one
PEM private key followed by a PEM self-signed X.509 certificate of that key (CN=mgpu-cluster).
Every daemon presents that certificate and accepts a peer only if it presents the very same
certificate and proves, in the TLS 1.3 handshake, that it holds the private key:

- TLS 1.3 only, on both sides (minimum = maximum version); a TLS 1.2 peer or a plain-TCP one
  is refused in the handshake.
- Mutual authentication: CERT_REQUIRED on the server and on the client; the only trust anchor is
  the cluster certificate itself (no system CAs). check_hostname is off: peers are
  authenticated by the cluster key, not by names, so a node may reach the master by any address.
- Pinning: after the handshake `check_peer` compares the sha256 of the peer's certificate with
  the cluster certificate's; anything else is refused, even a certificate that chains to it.
- Validity dates are not checked (X509_V_FLAG_NO_CHECK_TIME): trust comes from the pinned
  certificate in the key file, not from a CA's dates, and a host whose clock is wrong (a node
  booting before NTP) must not be locked out. A key is retired by replacing it on every host.
- No session tickets and no resumption (the server issues none): every connection runs a
  full handshake with certificates and fresh ephemeral keys (forward secrecy).

What TLS 1.3 gives each link: confidentiality and integrity of every record (AEAD), and replay,
reordering and deletion protection within a connection (per-record sequence numbers in the
nonce); a recording of a whole connection replayed later fails, because each handshake derives
fresh keys from both sides' random values. It does not say whether a message sent on one
connection was already acted on after a reconnect: that application-level replay (a launch
resent after a cut) is the node link's job, with message ids and attempt numbers, as the
design's outbox describes.

The pure part (PEM parsing, fingerprints, the description of a TLS failure) does no I/O; the
rest reads the key file and drives handshakes on objects it is given (a connected socket, or
two in-memory ends for tests and benchmarks).
"""

import base64
import binascii
import errno
import hashlib
import os
import re
import ssl
import stat

from . import errors
from .errors import MgpuError

DEFAULT_KEY_FILE = "/etc/mgpu/cluster.key"
CLUSTER_COMMON_NAME = "mgpu-cluster"
HANDSHAKE_TIMEOUT = 10.0     # seconds for the whole TLS handshake on a new link
MAX_KEY_FILE = 64 * 1024     # a key file is about 1 KB; anything far larger is not one
KEY_LABELS = ("PRIVATE KEY", "EC PRIVATE KEY")
CERTIFICATE_LABEL = "CERTIFICATE"
_X509_V_FLAG_NO_CHECK_TIME = 0x200000   # OpenSSL >= 1.1.0; not named by the ssl module

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----(.*?)-----END ([A-Z0-9 ]{1,64})-----", re.S)


# ---------------------------------------------------------------------------------------------
# Pure: the key file's contents


class KeyFileProblem(ValueError):
    """What is wrong with the contents of a key file (without its path)."""


def pem_blocks(data):
    """[(label, der bytes)] of every PEM block in `data` (bytes), in order. KeyFileProblem on a
    block whose BEGIN and END differ or whose body is not base64."""
    blocks = []
    for match in _PEM_BLOCK.finditer(data):
        label, body, end_label = match.group(1), match.group(2), match.group(3)
        if label != end_label:
            raise KeyFileProblem("a PEM block begins as %s and ends as %s"
                                 % (label.decode("ascii"), end_label.decode("ascii")))
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileProblem("the %s block is not valid base64" % label.decode("ascii")) from None
        if not der:
            raise KeyFileProblem("the %s block is empty" % label.decode("ascii"))
        blocks.append((label.decode("ascii"), der))
    return blocks


def parse_key_file(data):
    """The certificate (DER) of a cluster key file's contents; KeyFileProblem unless they are
    exactly one unencrypted private key and one certificate."""
    blocks = pem_blocks(data)
    keys = [der for label, der in blocks if label in KEY_LABELS]
    certificates = [der for label, der in blocks if label == CERTIFICATE_LABEL]
    others = sorted({label for label, _ in blocks if label not in KEY_LABELS and label != CERTIFICATE_LABEL})
    if "ENCRYPTED PRIVATE KEY" in others:
        raise KeyFileProblem("its private key is encrypted; a cluster key has no passphrase "
                             "(daemons start unattended)")
    if others:
        raise KeyFileProblem("it holds a %s block; a cluster key holds one private key and one "
                             "certificate only" % others[0])
    if not keys and not certificates:
        raise KeyFileProblem("it is not a cluster key (no PEM private key or certificate in it)")
    if len(keys) != 1:
        raise KeyFileProblem("it holds %s private keys; a cluster key holds exactly one"
                             % (len(keys) or "no"))
    if len(certificates) != 1:
        raise KeyFileProblem("it holds %s certificates; a cluster key holds exactly one"
                             % (len(certificates) or "no"))
    return certificates[0]


def fingerprint(certificate_der):
    """The sha256 of a certificate, as `openssl x509 -fingerprint -sha256` writes it."""
    digest = hashlib.sha256(certificate_der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def certificate_pem(certificate_der):
    return ssl.DER_cert_to_PEM_cert(certificate_der)


def same_certificate(peer_der, key):
    """True when `peer_der` is exactly the cluster certificate of `key`."""
    return peer_der is not None and hashlib.sha256(peer_der).digest() == key.certificate_sha256


# The OpenSSL reasons a refused link shows most, in words a sysadmin can act on.
_FAILURE_REASONS = {
    "CERTIFICATE_VERIFY_FAILED": "the peer's certificate is not this cluster's (a different cluster key?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer refused our certificate (its cluster key differs from ours?)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused our certificate (its cluster key differs from ours?)",
    "TLSV1_ALERT_DECRYPT_ERROR": "the peer refused our handshake (a different cluster key?)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer presented no certificate (not an mgpu daemon with the cluster key)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer wanted our certificate and got none",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS 1.3 (plain TCP, or not an mgpu daemon?)",
    "UNSUPPORTED_PROTOCOL": "the peer offered only a TLS version older than 1.3",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the peer does not accept TLS 1.3 (an older TLS client or server?)",
    "HTTP_REQUEST": "the peer sent an HTTP request, not a TLS handshake",
    "PACKET_LENGTH_TOO_LONG": "the peer does not speak TLS (plain TCP?)",
    "RECORD_LAYER_FAILURE": "the peer sent data that is not TLS",
    "DECRYPTION_FAILED_OR_BAD_RECORD_MAC": "a record failed its integrity check (altered or replayed data)",
    "BAD_RECORD_MAC": "a record failed its integrity check (altered or replayed data)",
    "SSLV3_ALERT_BAD_RECORD_MAC": "the peer found a record altered (data changed on the way)",
    "BAD_SIGNATURE": "the peer's handshake signature is wrong (it does not hold the cluster key)",
    "DIGEST_CHECK_FAILED": "the handshake's integrity check failed (altered or replayed data)",
}


def describe_tls_failure(reason, message):
    """One phrase for an ssl.SSLError's `reason` (or, failing that, its message)."""
    if reason in _FAILURE_REASONS:
        return _FAILURE_REASONS[reason]
    text = (reason or message or "unknown error").replace("_", " ").lower()
    return "TLS error: %s" % text


# ---------------------------------------------------------------------------------------------
# The key file


class ClusterKey:
    """A checked cluster key file: its path, the cluster certificate and its fingerprint.
    The private key stays in the file; contexts load it from there (the same bytes, checked
    again)."""

    __slots__ = ("path", "certificate_der", "certificate_sha256", "fingerprint", "file_sha256")

    def __init__(self, path, certificate_der, file_sha256):
        self.path = path
        self.certificate_der = certificate_der
        self.certificate_sha256 = hashlib.sha256(certificate_der).digest()
        self.fingerprint = fingerprint(certificate_der)
        self.file_sha256 = file_sha256

    def __repr__(self):
        return "ClusterKey(%r, sha256 %s)" % (self.path, self.fingerprint)


def _key_error(path, why):
    return MgpuError(errors.INVALID_ARGUMENT, "cluster key %s: %s" % (path, why))


def _open_key_file(path):
    """(fd, bytes) of the key file, opened without following a symlink and checked on the open
    file (no window between the check and the read). MgpuError naming the file otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise _key_error(path, "no such file; make one with 'mgpu keygen --output %s' on one host "
                               "and copy it to every host (same path, mode 0600)" % path) from None
    except PermissionError:
        raise _key_error(path, "permission denied; the key is readable by its owner only "
                               "(run the daemon as root, or as the key's owner)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise _key_error(path, "is a symbolic link; put the key file itself at that path "
                                   "(a link could be redirected)") from None
        raise _key_error(path, "cannot open it: %s" % (e.strerror or e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _key_error(path, "not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise _key_error(path, "belongs to uid %d; it must belong to root (or to the user "
                                   "running this daemon): chown root:root %s" % (st.st_uid, path))
        if st.st_mode & 0o077:
            raise _key_error(path, "mode %04o lets group or others at it; chmod 600 %s (if others "
                                   "could read it, it may have leaked: make a new key with mgpu "
                                   "keygen and copy it to every host)"
                             % (stat.S_IMODE(st.st_mode), path))
        if st.st_size > MAX_KEY_FILE:
            raise _key_error(path, "%d bytes is too large for a cluster key" % st.st_size)
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, MAX_KEY_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_KEY_FILE:
                raise _key_error(path, "too large for a cluster key")
        return fd, b"".join(chunks)
    except BaseException:
        os.close(fd)
        raise


def load_key(path=DEFAULT_KEY_FILE):
    """The ClusterKey at `path`, or MgpuError with one line naming the file and what to do."""
    path = os.path.abspath(path)
    fd, data = _open_key_file(path)
    os.close(fd)
    try:
        certificate = parse_key_file(data)
    except KeyFileProblem as e:
        raise _key_error(path, "%s; make a new one with mgpu keygen" % e) from None
    return ClusterKey(path, certificate, hashlib.sha256(data).digest())


# ---------------------------------------------------------------------------------------------
# TLS contexts


def _context(key, protocol):
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= _X509_V_FLAG_NO_CHECK_TIME
    context.load_verify_locations(cadata=certificate_pem(key.certificate_der))
    # Load the private key from the bytes that were checked: the same open file, compared
    # with what load_key read (a file replaced since is refused, not trusted).
    fd, data = _open_key_file(key.path)
    try:
        if hashlib.sha256(data).digest() != key.file_sha256:
            raise _key_error(key.path, "changed since it was loaded; restart the daemon to use the new key")
        source = "/proc/self/fd/%d" % fd
        if not os.path.exists(source):  # no /proc: the path, just checked
            source = key.path
        try:
            context.load_cert_chain(source)
        except ssl.SSLError as e:
            raise _key_error(key.path, "its private key and certificate do not go together or "
                                       "cannot be used (%s); make a new one with mgpu keygen"
                             % describe_tls_failure(e.reason, e.strerror)) from None
    finally:
        os.close(fd)
    return context


def server_context(key):
    """The master's side of a link: TLS 1.3, the cluster certificate, a client certificate
    required and checked against the cluster certificate; no session tickets."""
    context = _context(key, ssl.PROTOCOL_TLS_SERVER)
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    return context


def client_context(key):
    """A node's side of a link: TLS 1.3, the cluster certificate, the server's certificate
    required and checked against the cluster certificate; no names."""
    return _context(key, ssl.PROTOCOL_TLS_CLIENT)


def check_peer(tls, key, peer="the peer"):
    """Refuse (MgpuError) unless the peer of a finished handshake (an SSLSocket or SSLObject)
    presented exactly the cluster certificate."""
    der = tls.getpeercert(binary_form=True)
    if der is None:
        raise MgpuError(errors.PERMISSION_DENIED, "link with %s refused: it presented no certificate" % peer)
    if not same_certificate(der, key):
        raise MgpuError(errors.PERMISSION_DENIED,
                        "link with %s refused: its certificate (sha256 %s) is not the cluster "
                        "certificate of %s (sha256 %s)" % (peer, fingerprint(der), key.path, key.fingerprint))


# ---------------------------------------------------------------------------------------------
# Handshakes on a connected socket


def _peer_name(sock):
    try:
        address = sock.getpeername()
    except OSError:
        return "a peer that went away"
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return "[%s]:%s" % (host, address[1]) if ":" in str(host) else "%s:%s" % (host, address[1])
    return str(address) or "a peer"


def _handshake(sock, context, key, timeout, server_side):
    """The SSLSocket over connected `sock` once the handshake (bounded by `timeout` in all:
    CPython's do_handshake keeps one deadline across its waits) and the pinning check passed.
    `sock` is consumed: closed on failure."""
    peer = _peer_name(sock)
    sock.settimeout(timeout)
    try:
        tls = context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)
    except OSError as e:
        sock.close()
        raise MgpuError(errors.UNAVAILABLE, "link with %s failed: %s" % (peer, e.strerror or e)) from None
    try:
        try:
            tls.do_handshake()
        except TimeoutError:
            raise MgpuError(errors.TIMEOUT, "link with %s refused: no TLS handshake within %g s"
                            % (peer, timeout)) from None
        except ssl.SSLError as e:
            raise MgpuError(errors.PERMISSION_DENIED, "link with %s refused: %s"
                            % (peer, describe_tls_failure(e.reason, e.strerror))) from None
        except OSError as e:  # reset, or closed before the handshake finished
            raise MgpuError(errors.UNAVAILABLE, "link with %s refused: the connection closed during "
                            "the TLS handshake (%s)" % (peer, e.strerror or type(e).__name__)) from None
        check_peer(tls, key, peer)
    except BaseException:
        tls.close()
        raise
    return tls


def wrap_server(sock, context, key, timeout=HANDSHAKE_TIMEOUT):
    """The master's end of an accepted connection, authenticated: an SSLSocket on which
    transport.Connection runs. MgpuError (one line naming the peer) when refused."""
    return _handshake(sock, context, key, timeout, server_side=True)


def wrap_client(sock, context, key, timeout=HANDSHAKE_TIMEOUT):
    """A node's end of a connection it opened, authenticated. In TLS 1.3 the client finishes
    its handshake before the server has checked the client's certificate: a server that refuses
    it is seen at the first read (an ssl.SSLError alert), which the link's first exchange does."""
    return _handshake(sock, context, key, timeout, server_side=False)


# ---------------------------------------------------------------------------------------------
# Two ends in memory (tests, benchmarks): the same contexts, no sockets


class HandshakeFailed(Exception):
    """An in-memory handshake failed; the error each side saw (None for a side that did not)."""

    def __init__(self, client_error, server_error):
        super().__init__("client: %s; server: %s" % (client_error, server_error))
        self.client_error = client_error
        self.server_error = server_error


class MemoryLink:
    """A client and a server SSLObject joined through memory BIOs. `tamper(bytes) -> bytes`,
    when given, sees (and may change) everything on its way from the client to the server."""

    def __init__(self, client_context, server_context, tamper=None):
        self.client_in, self.client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server_in, self.server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_context.wrap_bio(self.client_in, self.client_out, server_side=False)
        self.server = server_context.wrap_bio(self.server_in, self.server_out, server_side=True)
        self.tamper = tamper
        self.client_to_server = bytearray()   # every byte the client sent (for replays)

    def flow(self):
        """Move what each side wrote to the other; True when something moved."""
        moved = False
        data = self.client_out.read()
        if data:
            self.client_to_server += data
            self.server_in.write(self.tamper(data) if self.tamper else data)
            moved = True
        data = self.server_out.read()
        if data:
            self.client_in.write(data)
            moved = True
        return moved

    def handshake(self, max_rounds=20):
        """Run both handshakes to the end; HandshakeFailed with each side's error."""
        errors_seen = {"client": None, "server": None}
        done = {"client": False, "server": False}
        for _ in range(max_rounds):
            for side, end in (("client", self.client), ("server", self.server)):
                if done[side] or errors_seen[side]:
                    continue
                try:
                    end.do_handshake()
                    done[side] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except ssl.SSLError as e:
                    errors_seen[side] = e
            moved = self.flow()
            if done["client"] and done["server"]:
                break
            if not moved and (errors_seen["client"] or errors_seen["server"]):
                break
        if errors_seen["client"] or errors_seen["server"]:
            # A client that finished before the server refused it learns of it at its first read.
            if done["client"] and errors_seen["server"]:
                try:
                    self.client.read(1)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
                except ssl.SSLError as e:
                    errors_seen["client"] = e
            raise HandshakeFailed(errors_seen["client"], errors_seen["server"])
        if not (done["client"] and done["server"]):
            raise HandshakeFailed(None, None)
        return self

    def send(self, side, data):
        """Write `data` on `side` ("client" or "server") and carry it across."""
        (self.client if side == "client" else self.server).write(data)
        self.flow()

    def receive(self, side, size=65536):
        """What arrived at `side`: bytes (b"" when nothing yet); ssl.SSLError when a record
        fails its checks."""
        end = self.client if side == "client" else self.server
        try:
            return end.read(size)
        except ssl.SSLWantReadError:
            return b""


def handshake_in_memory(client_ctx, server_ctx, key=None, tamper=None):
    """A MemoryLink after a full handshake (and, given `key`, the pinning check on both ends)."""
    link = MemoryLink(client_ctx, server_ctx, tamper).handshake()
    if key is not None:
        check_peer(link.client, key, "the server")
        check_peer(link.server, key, "the client")
    return link
