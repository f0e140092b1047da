"""The cluster key file and the link's authentication, with both ends paired in memory."""

import os
import pwd
import shutil
import ssl
import subprocess

import pytest

from mgpu import auth, errors, launcher
from mgpu.cli import keygen
from mgpu.errors import MgpuError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def write_key(path, data, mode=0o600):
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(str(path), mode)
    return str(path)


@pytest.fixture(scope="module")
def pems():
    """Two cluster keys (PEM bytes), made as `mgpu keygen` makes them."""
    return [launcher.run_openssl(keygen.openssl_arguments()) for _ in range(2)]


@pytest.fixture
def key_paths(tmp_path, pems):
    return [write_key(tmp_path / ("cluster%d.key" % i), pem) for i, pem in enumerate(pems)]


@pytest.fixture
def keys(key_paths):
    return [auth.load_key(path) for path in key_paths]


def refusal(path):
    with pytest.raises(MgpuError) as caught:
        auth.load_key(path)
    message = caught.value.message
    assert message.startswith("cluster key %s: " % os.path.abspath(str(path))), message
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# The key file


def test_a_key_made_by_keygen_loads_with_its_certificate_fingerprint(keys, pems):
    key = keys[0]
    cert_der = [der for label, der in auth.pem_blocks(pems[0]) if label == "CERTIFICATE"][0]
    assert key.certificate_der == cert_der
    assert key.fingerprint == auth.fingerprint(cert_der)
    assert len(key.fingerprint) == 95 and key.fingerprint.count(":") == 31
    assert keys[0].fingerprint != keys[1].fingerprint
    assert "PRIVATE" not in repr(key)


def test_the_fingerprint_is_what_openssl_prints(key_paths, keys):
    out = subprocess.run(["openssl", "x509", "-in", key_paths[0], "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().split("=", 1)[1] == keys[0].fingerprint


def test_missing_key_file_says_how_to_make_one(tmp_path):
    message = refusal(tmp_path / "none.key")
    assert "mgpu keygen" in message


def test_a_symbolic_link_is_refused(tmp_path, key_paths):
    link = tmp_path / "link.key"
    os.symlink(key_paths[0], str(link))
    assert "symbolic link" in refusal(link)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o660])
def test_a_key_open_to_group_or_others_is_refused(tmp_path, pems, mode):
    path = write_key(tmp_path / "open.key", pems[0], mode)
    message = refusal(path)
    assert "chmod 600" in message and ("%04o" % mode) in message


def test_a_key_owned_by_another_user_is_refused(tmp_path, pems):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    path = write_key(tmp_path / "theirs.key", pems[0])
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(path, nobody, -1)
    assert "belongs to uid %d" % nobody in refusal(path)


def test_a_directory_is_refused(tmp_path):
    path = tmp_path / "dir.key"
    path.mkdir(mode=0o700)
    assert "not a regular file" in refusal(path)


def test_garbage_is_refused(tmp_path):
    path = write_key(tmp_path / "garbage.key", os.urandom(700))
    assert "not a cluster key" in refusal(path)


def test_a_key_without_certificate_is_refused(tmp_path, pems):
    key_only = pems[0][:pems[0].index(b"-----BEGIN CERTIFICATE-----")]
    assert "no certificates" in refusal(write_key(tmp_path / "k.key", key_only))


def test_a_certificate_without_key_is_refused(tmp_path, pems):
    cert_only = pems[0][pems[0].index(b"-----BEGIN CERTIFICATE-----"):]
    assert "no private keys" in refusal(write_key(tmp_path / "c.key", cert_only))


def test_two_certificates_or_two_keys_are_refused(tmp_path, pems):
    cert = pems[1][pems[1].index(b"-----BEGIN CERTIFICATE-----"):]
    key = pems[1][:pems[1].index(b"-----BEGIN CERTIFICATE-----")]
    assert "holds 2 certificates" in refusal(write_key(tmp_path / "2c.key", pems[0] + cert))
    assert "holds 2 private keys" in refusal(write_key(tmp_path / "2k.key", pems[0] + key))


def test_an_encrypted_key_or_another_block_is_refused(tmp_path, pems):
    cert = pems[0][pems[0].index(b"-----BEGIN CERTIFICATE-----"):]
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    assert "passphrase" in refusal(write_key(tmp_path / "e.key", encrypted + cert))
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    assert "EC PARAMETERS block" in refusal(write_key(tmp_path / "p.key", params + pems[0]))


def test_a_damaged_block_is_refused(tmp_path, pems):
    damaged = pems[0].replace(b"-----END CERTIFICATE-----", b"-----END PRIVATE KEY-----")
    assert "begins as CERTIFICATE" in refusal(write_key(tmp_path / "d1.key", damaged))
    lines = pems[0].split(b"\n")
    lines[2] = b"!!!!" + lines[2][4:]
    assert "not valid base64" in refusal(write_key(tmp_path / "d2.key", b"\n".join(lines)))


def test_a_huge_file_is_refused(tmp_path, pems):
    assert "too large" in refusal(write_key(tmp_path / "big.key", pems[0] + b"#" * (auth.MAX_KEY_FILE + 1)))


def test_a_certificate_that_does_not_match_its_key_is_refused_when_loaded_into_a_context(tmp_path, pems):
    cert_b = pems[1][pems[1].index(b"-----BEGIN CERTIFICATE-----"):]
    key_a = pems[0][:pems[0].index(b"-----BEGIN CERTIFICATE-----")]
    key = auth.load_key(write_key(tmp_path / "mixed.key", key_a + cert_b))
    with pytest.raises(MgpuError, match="do not go together"):
        auth.server_context(key)


def test_a_key_file_replaced_after_loading_is_not_used(tmp_path, pems):
    path = write_key(tmp_path / "k.key", pems[0])
    key = auth.load_key(path)
    os.unlink(path)
    write_key(path, pems[1])
    with pytest.raises(MgpuError, match="changed since it was loaded"):
        auth.client_context(key)


# ---------------------------------------------------------------------------------------------
# Contexts and handshakes


def test_contexts_are_tls13_only_mutual_and_pinned_to_the_cluster_certificate(keys):
    for context in (auth.server_context(keys[0]), auth.client_context(keys[0])):
        assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is False
        assert context.verify_flags & 0x200000  # validity dates: trust is the pinned certificate
        assert context.cert_store_stats()["x509"] == 1  # the cluster certificate, no system CAs
    assert auth.server_context(keys[0]).num_tickets == 0


def test_the_same_key_on_both_ends_links_and_carries_data_both_ways(keys):
    link = auth.handshake_in_memory(auth.client_context(keys[0]), auth.server_context(keys[0]), keys[0])
    assert link.client.version() == link.server.version() == "TLSv1.3"
    link.send("client", b"register\n")
    assert link.receive("server") == b"register\n"
    link.send("server", b"ok\n")
    assert link.receive("client") == b"ok\n"
    assert link.client.session_reused is False


@pytest.mark.parametrize("client_index,server_index", [(1, 0), (0, 1)])
def test_a_different_cluster_key_on_either_end_is_refused_by_both(keys, client_index, server_index):
    with pytest.raises(auth.HandshakeFailed) as caught:
        auth.handshake_in_memory(auth.client_context(keys[client_index]),
                                 auth.server_context(keys[server_index]))
    failure = caught.value
    # The client checks the server's certificate first; the server hears of it by an alert.
    assert failure.client_error.reason == "CERTIFICATE_VERIFY_FAILED"
    assert failure.server_error is not None
    assert "cluster key" in auth.describe_tls_failure(failure.server_error.reason, "")


def test_a_client_without_a_certificate_is_refused(keys):
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=auth.certificate_pem(keys[0].certificate_der))
    with pytest.raises(auth.HandshakeFailed) as caught:
        auth.handshake_in_memory(bare, auth.server_context(keys[0]))
    assert caught.value.server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert caught.value.client_error is not None  # told at its first read
    assert "no certificate" in auth.describe_tls_failure(caught.value.server_error.reason, "")


def test_a_tls12_client_is_refused(keys, key_paths):
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(cadata=auth.certificate_pem(keys[0].certificate_der))
    old.load_cert_chain(key_paths[0])
    with pytest.raises(auth.HandshakeFailed) as caught:
        auth.handshake_in_memory(old, auth.server_context(keys[0]))
    assert caught.value.server_error.reason == "UNSUPPORTED_PROTOCOL"


def test_a_certificate_signed_with_the_cluster_key_is_not_the_cluster_certificate(tmp_path, key_paths, keys):
    # Someone with the cluster key could issue other certificates: the cluster certificate is
    # not a CA (CA:FALSE), so they do not verify, and the pinning would refuse them anyway.
    workdir = str(tmp_path)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OPENSSL_CONF": "/dev/null"}
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-subj", "/CN=mgpu-cluster", "-keyout", "leaf.pem", "-out", "leaf.csr"],
                   cwd=workdir, env=env, check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", "leaf.csr", "-CA", key_paths[0], "-CAkey", key_paths[0],
                    "-CAcreateserial", "-days", "2", "-out", "leaf.crt"],
                   cwd=workdir, env=env, check=True, capture_output=True)
    with open(os.path.join(workdir, "leaf.pem"), "rb") as k, open(os.path.join(workdir, "leaf.crt"), "rb") as c:
        leaf_path = write_key(tmp_path / "leaf.key", k.read() + c.read())
    leaf = auth.load_key(leaf_path)
    assert leaf.fingerprint != keys[0].fingerprint
    server = auth.server_context(keys[0])
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    impostor.check_hostname = False
    impostor.load_verify_locations(cadata=auth.certificate_pem(keys[0].certificate_der))
    impostor.load_cert_chain(leaf_path)
    with pytest.raises(auth.HandshakeFailed) as caught:
        auth.handshake_in_memory(impostor, server)
    assert caught.value.server_error.reason == "CERTIFICATE_VERIFY_FAILED"


def test_pinning_refuses_a_peer_whose_certificate_is_not_the_cluster_certificate(keys):
    # A handshake between two ends of the other cluster succeeds; pinned to ours, it is refused.
    link = auth.handshake_in_memory(auth.client_context(keys[1]), auth.server_context(keys[1]))
    for end in (link.client, link.server):
        with pytest.raises(MgpuError) as caught:
            auth.check_peer(end, keys[0], "10.0.0.2:8080")
        assert caught.value.code == errors.PERMISSION_DENIED
        assert keys[1].fingerprint in caught.value.message and keys[0].fingerprint in caught.value.message
        auth.check_peer(end, keys[1])
    assert not auth.same_certificate(None, keys[0])
    assert not auth.same_certificate(keys[1].certificate_der, keys[0])
    assert auth.same_certificate(keys[0].certificate_der, keys[0])


def test_an_altered_record_is_refused_and_never_delivered(keys):
    armed = []

    def flip_one_byte(data):
        if armed and data[:1] == b"\x17":  # an application-data record
            data = data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:]
            armed.clear()
        return data

    link = auth.handshake_in_memory(auth.client_context(keys[0]), auth.server_context(keys[0]),
                                    keys[0], tamper=flip_one_byte)
    armed.append(True)
    link.send("client", b'{"type": "launch"}\n')
    with pytest.raises(ssl.SSLError) as caught:
        link.receive("server")
    assert "integrity" in auth.describe_tls_failure(caught.value.reason, "")


def test_a_recorded_connection_replayed_to_the_server_gets_nothing_through(keys):
    client, server = auth.client_context(keys[0]), auth.server_context(keys[0])
    original = auth.handshake_in_memory(client, server, keys[0])
    original.send("client", b'{"type": "launch"}\n')
    assert original.receive("server") == b'{"type": "launch"}\n'
    recording = bytes(original.client_to_server)

    replay = auth.MemoryLink(client, server)
    replay.server_in.write(recording)
    with pytest.raises(ssl.SSLError):
        replay.server.do_handshake()
        replay.server.read(1024)


def test_describe_tls_failure_is_one_phrase():
    assert auth.describe_tls_failure("WRONG_VERSION_NUMBER", "x").startswith("the peer does not speak TLS")
    assert auth.describe_tls_failure("SOMETHING_NEW", None) == "TLS error: something new"
    assert auth.describe_tls_failure(None, "eof") == "TLS error: eof"


def test_pem_blocks_reads_labels_and_der():
    pem = ssl.DER_cert_to_PEM_cert(b"\x30\x03\x02\x01\x01")
    assert auth.pem_blocks(b"text before\n" + pem.encode()) == [("CERTIFICATE", b"\x30\x03\x02\x01\x01")]
    with pytest.raises(auth.KeyFileProblem):
        auth.pem_blocks(b"-----BEGIN CERTIFICATE-----\n\n-----END CERTIFICATE-----\n")
