"""The one-file binary's unpack-once cache (build-config/launcher.sh): the first run of a build
unpacks it into a private cache directory, later runs exec() the unpacked program directly; a
cache directory that another user owns, or that group or others may write, is refused, also once
filled (the fast path); the archive is never unpacked unchecked, whichever sha256 tool the host
has or lacks; racing first runs all succeed; an upgrade unpacks beside a running daemon. Runs
only against the binary (MGPU_BIN), as root with the real test users."""

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile

import pytest

from harness import MGPU_BIN, Cluster, Installation, Master, popen_as

pytestmark = pytest.mark.skipif(not MGPU_BIN, reason="tests the binary: set MGPU_BIN=dist/mgpu")

ALICE = "mgpu-alice"


# --- helpers -------------------------------------------------------------------------------------

def header_value(binary, name):
    """A value the build wrote into the binary's sh header (_mgpu_hash, _mgpu_offset, ...)."""
    with open(binary, "rb") as handle:
        head = handle.read(65536).decode("latin-1")
    match = re.search(r"^_mgpu_%s=(\S+)$" % name, head, re.M)
    assert match, "no _mgpu_%s= in the header of %s" % (name, binary)
    return match.group(1)


def start_bare(user, binary, *args, env=None, cwd="/"):
    """Start the binary with an empty environment plus `env`, as `user` (None: root)."""
    argv = (["/usr/bin/env", "-i"] + ["%s=%s" % kv for kv in (env or {}).items()]
            + [binary] + [str(a) for a in args])
    return popen_as(user, argv, env={}, cwd=cwd, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_bare(user, binary, *args, env=None, cwd="/"):
    process = start_bare(user, binary, *args, env=env, cwd=cwd)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def private_dir(owner=None, mode=0o700):
    """A new directory owned by `owner` (None: root) inside a fresh world-traversable one."""
    parent = tempfile.mkdtemp(prefix="mgpu-cache-test-", dir="/tmp")
    os.chmod(parent, 0o755)
    path = os.path.join(parent, "cache")
    os.mkdir(path)
    if owner:
        account = pwd.getpwnam(owner)
        os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(path, mode)
    return path


def remove(path):
    shutil.rmtree(os.path.dirname(path) if os.path.basename(path) == "cache" else path,
                  ignore_errors=True)


def assert_refused(code, out, err, path):
    assert code == 1, (code, out, err)
    assert out == ""  # mgpu itself never ran
    line = err.strip()
    assert line and "\n" not in line, err
    assert line.startswith("mgpu: ") and path in line and "MGPU_CACHE_DIR" in line, line


def owner_and_mode(path):
    info = os.lstat(path)
    return info.st_uid, stat.S_IMODE(info.st_mode)


@pytest.fixture
def binary(installation):
    """The installed binary, as users meet it: a symbolic link on a PATH directory."""
    return installation.user_command[0]


@pytest.fixture
def digest(binary):
    return header_value(binary, "hash")


# --- first run, later runs -----------------------------------------------------------------------

@pytest.mark.parametrize("user", [None, ALICE], ids=["root", "alice"])
def test_first_run_unpacks_and_later_runs_reuse_it(users, binary, digest, user):
    base = private_dir(user)
    uid = pwd.getpwnam(user).pw_uid if user else 0
    try:
        cache = os.path.join(base, "mgpu")  # created by the binary itself
        code, out, err = run_bare(user, binary, "--version", env={"MGPU_CACHE_DIR": cache})
        assert code == 0 and out.startswith("mgpu "), err
        assert os.listdir(cache) == [digest]
        program = os.path.join(cache, digest, "mgpu")
        assert owner_and_mode(cache) == (uid, 0o700)
        assert owner_and_mode(os.path.join(cache, digest)) == (uid, 0o700)
        assert os.stat(program).st_uid == uid and os.access(program, os.X_OK)
        before = (os.stat(os.path.join(cache, digest)).st_ino, os.stat(program).st_ino,
                  os.stat(program).st_mtime_ns)
        for _ in range(2):
            code, out2, err = run_bare(user, binary, "--version", env={"MGPU_CACHE_DIR": cache})
            assert code == 0 and out2 == out, err
        assert os.listdir(cache) == [digest]
        assert (os.stat(os.path.join(cache, digest)).st_ino, os.stat(program).st_ino,
                os.stat(program).st_mtime_ns) == before
    finally:
        remove(base)


def test_later_runs_do_not_read_the_archive_and_a_damaged_copy_is_never_unpacked(users, binary, digest):
    """A copy of the header alone (the archive cut off) runs from a filled cache, and is refused
    with one line by an empty one, leaving nothing behind."""
    base = private_dir(ALICE)
    workdir = tempfile.mkdtemp(prefix="mgpu-cut-", dir="/tmp")
    os.chmod(workdir, 0o755)
    try:
        offset = int(header_value(binary, "offset"))
        cut = os.path.join(workdir, "mgpu")
        with open(binary, "rb") as source, open(cut, "wb") as target:
            target.write(source.read(offset - 1 + 4096))  # the header and a bit of the archive
        os.chmod(cut, 0o755)
        empty = os.path.join(base, "empty")
        code, out, err = run_bare(ALICE, cut, "--version", env={"MGPU_CACHE_DIR": empty})
        assert code == 1 and out == "", (code, out, err)
        assert len(err.strip().splitlines()) == 1 and "damaged" in err and "copy it again" in err, err
        assert os.listdir(empty) == []  # no <hash>, no .partial.*

        filled = os.path.join(base, "filled")
        code, out, err = run_bare(ALICE, binary, "--version", env={"MGPU_CACHE_DIR": filled})
        assert code == 0, err
        code, out_cut, err = run_bare(ALICE, cut, "--version", env={"MGPU_CACHE_DIR": filled})
        assert code == 0 and out_cut == out, err
        assert os.listdir(filled) == [digest]
    finally:
        remove(base)
        shutil.rmtree(workdir, ignore_errors=True)


# --- refusals ------------------------------------------------------------------------------------

def test_a_cache_of_another_user_is_refused_and_never_run(users, binary, digest):
    alice_cache = private_dir(ALICE)
    root_cache = private_dir(None)
    try:
        # Both filled by their owners first, so that only the ownership check stands in the way.
        for user, cache in ((ALICE, alice_cache), (None, root_cache)):
            code, _, err = run_bare(user, binary, "--version", env={"MGPU_CACHE_DIR": cache})
            assert code == 0, err
        for path in (root_cache, os.path.join(root_cache, digest)):
            os.chmod(path, 0o755)  # alice could even run root's copy: the owner check refuses it

        code, out, err = run_bare(None, binary, "--version", env={"MGPU_CACHE_DIR": alice_cache})
        assert_refused(code, out, err, alice_cache)
        assert "another user" in err
        code, out, err = run_bare(ALICE, binary, "--version", env={"MGPU_CACHE_DIR": root_cache})
        assert_refused(code, out, err, root_cache)
        assert "another user" in err
        # Also when the cache does not hold this build yet.
        shutil.rmtree(os.path.join(alice_cache, digest))
        code, out, err = run_bare(None, binary, "--version", env={"MGPU_CACHE_DIR": alice_cache})
        assert_refused(code, out, err, alice_cache)
        assert os.listdir(alice_cache) == []
    finally:
        remove(alice_cache)
        remove(root_cache)


def test_a_hash_directory_that_is_a_symbolic_link_is_refused(users, binary, digest):
    cache = private_dir(ALICE)
    elsewhere = private_dir(ALICE)
    try:
        code, _, err = run_bare(ALICE, binary, "--version", env={"MGPU_CACHE_DIR": elsewhere})
        assert code == 0, err
        account = pwd.getpwnam(ALICE)
        link = os.path.join(cache, digest)
        os.symlink(os.path.join(elsewhere, digest), link)
        os.lchown(link, account.pw_uid, account.pw_gid)
        code, out, err = run_bare(ALICE, binary, "--version", env={"MGPU_CACHE_DIR": cache})
        assert_refused(code, out, err, link)
    finally:
        remove(cache)
        remove(elsewhere)


@pytest.mark.parametrize("user,mode", [(ALICE, 0o777), (ALICE, 0o770), (None, 0o757), (None, 0o1777)],
                         ids=["alice-0777", "alice-0770", "root-0757", "root-1777"])
def test_a_cache_writable_by_group_or_others_is_refused(users, binary, user, mode):
    cache = private_dir(user, mode)
    try:
        code, out, err = run_bare(user, binary, "--version", env={"MGPU_CACHE_DIR": cache})
        assert_refused(code, out, err, cache)
        assert "writable by group or others" in err
        assert os.listdir(cache) == []
        assert owner_and_mode(cache)[1] == mode  # left as it was
    finally:
        remove(cache)


@pytest.mark.parametrize("user", [None, ALICE], ids=["root", "alice"])
@pytest.mark.parametrize("target", ["cache", "hash", "program"])
@pytest.mark.parametrize("bits", [0o020, 0o002], ids=["g+w", "o+w"])
def test_a_filled_cache_made_writable_by_group_or_others_is_refused(users, binary, digest, user,
                                                                     target, bits):
    """The fast path (the build already unpacked) checks the permission bits too: of the cache,
    of its HASH directory and of the program; nothing is run, removed or unpacked again."""
    base = private_dir(user)
    try:
        cache = os.path.join(base, "mgpu")
        env = {"MGPU_CACHE_DIR": cache}
        code, before, err = run_bare(user, binary, "--version", env=env)
        assert code == 0, err
        program = os.path.join(cache, digest, "mgpu")
        path = {"cache": cache, "hash": os.path.join(cache, digest), "program": program}[target]
        inode = os.stat(program).st_ino
        mode = owner_and_mode(path)[1]
        os.chmod(path, mode | bits)
        code, out, err = run_bare(user, binary, "--version", env=env)
        assert_refused(code, out, err, path)
        assert "writable by group or others" in err and "chmod go-w" in err
        assert os.listdir(cache) == [digest] and os.stat(program).st_ino == inode
        assert owner_and_mode(path)[1] == mode | bits  # left as it was

        os.chmod(path, mode)  # as the message says
        code, out, err = run_bare(user, binary, "--version", env=env)
        assert code == 0 and out == before, err
    finally:
        remove(base)


@pytest.mark.parametrize("target", ["hash", "program"])
def test_a_filled_hash_directory_or_program_of_another_user_is_refused(users, binary, digest, target):
    """In root's own cache, the HASH directory or the program handed to alice: refused, never run."""
    cache = private_dir(None)
    try:
        code, _, err = run_bare(None, binary, "--version", env={"MGPU_CACHE_DIR": cache})
        assert code == 0, err
        path = os.path.join(cache, digest) if target == "hash" else os.path.join(cache, digest, "mgpu")
        account = pwd.getpwnam(ALICE)
        os.chown(path, account.pw_uid, account.pw_gid)
        code, out, err = run_bare(None, binary, "--version", env={"MGPU_CACHE_DIR": cache})
        assert_refused(code, out, err, path)
        assert "another user" in err
        assert os.listdir(cache) == [digest]
    finally:
        remove(cache)


def with_tool_path(binary, target, tool_dir):
    """A copy of the binary whose unpacking finds its commands in `tool_dir` only: the header's
    PATH for the unpacking subshell rewritten in place (same length, padded with slashes)."""
    offset = int(header_value(binary, "offset"))
    with open(binary, "rb") as handle:
        data = handle.read()
    header, archive = data[:offset - 1], data[offset - 1:]
    match = re.search(rb"^ +PATH=(\S+)$", header, re.M)
    assert match, "no PATH= line for the unpacking in the header of %s" % binary
    old = match.group(1)
    new = tool_dir.encode().ljust(len(old), b"/")
    assert len(new) == len(old), (old, new)
    header = header[:match.start(1)] + new + header[match.end(1):]
    with open(target, "wb") as handle:
        handle.write(header + archive)
    os.chmod(target, 0o755)


# What the unpacking runs, besides a sha256 tool.
UNPACK_TOOLS = ("mkdir", "find", "mktemp", "rm", "tail", "wc", "tar", "chmod", "mv")


@pytest.mark.parametrize("checker", ["sha256sum", "shasum", "openssl", None],
                         ids=["sha256sum", "shasum", "openssl", "none"])
def test_the_archive_is_never_unpacked_unchecked(users, binary, digest, checker):
    """With sha256sum, or without it through shasum or openssl: an intact copy unpacks and a copy
    with one byte of its archive changed (same size, still a valid tar) is refused. With none of
    them both are refused with one line naming what to install, and nothing is unpacked."""
    if checker and not shutil.which(checker, path="/usr/local/bin:/usr/bin:/bin"):
        pytest.skip("%s is not installed on this host" % checker)
    workdir = tempfile.mkdtemp(prefix="mgpu-tools-", dir="/tmp")
    os.chmod(workdir, 0o755)
    base = private_dir(ALICE)
    try:
        tools = os.path.join(workdir, "bin")
        os.mkdir(tools)
        for name in UNPACK_TOOLS + ((checker,) if checker else ()):
            found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
            assert found, "the unpacking needs %s" % name
            os.symlink(found, os.path.join(tools, name))
        assert not os.path.exists(os.path.join(tools, "sha256sum")) or checker == "sha256sum"
        intact = os.path.join(workdir, "mgpu")
        with_tool_path(binary, intact, tools)
        damaged = os.path.join(workdir, "mgpu-damaged")
        with_tool_path(binary, damaged, tools)
        offset, size = int(header_value(binary, "offset")), int(header_value(binary, "size"))
        with open(damaged, "r+b") as handle:
            handle.seek(offset - 1 + size // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))

        for copy, intact_copy in ((damaged, False), (intact, True)):
            cache = os.path.join(base, os.path.basename(copy))
            code, out, err = run_bare(ALICE, copy, "--version", env={"MGPU_CACHE_DIR": cache})
            if checker and intact_copy:
                assert code == 0 and out.startswith("mgpu ") and err == "", (code, out, err)
                assert os.listdir(cache) == [digest]
                continue
            assert code == 1 and out == "", (copy, code, out, err)
            line = err.strip()
            assert line.startswith("mgpu: ") and "\n" not in line, err
            if checker:
                assert "damaged (sha256 mismatch)" in line, line
            else:
                assert "sha256sum" in line and "install coreutils" in line, line
            assert os.listdir(cache) == []  # no HASH, no .partial.*
    finally:
        remove(base)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_relative_cache_path_is_refused(users, binary):
    code, out, err = run_bare(ALICE, binary, "--version", env={"MGPU_CACHE_DIR": "relative/cache"})
    assert code == 1 and out == "" and "absolute" in err and len(err.strip().splitlines()) == 1, err


# --- races, environments, invocations ------------------------------------------------------------

@pytest.mark.parametrize("user", [None, ALICE], ids=["root", "alice"])
def test_concurrent_first_runs_all_succeed_and_leave_one_copy(users, binary, digest, user):
    base = private_dir(user)
    try:
        cache = os.path.join(base, "new", "mgpu")  # not there yet: the runs race to create it
        runs = [start_bare(user, binary, "--version", env={"MGPU_CACHE_DIR": cache}) for _ in range(4)]
        results = [run.communicate(timeout=120) + (run.returncode,) for run in runs]
        for out, err, code in results:
            assert code == 0 and out.startswith("mgpu ") and err == "", (code, out, err)
        assert sorted(os.listdir(cache)) == [digest]  # one copy, no .partial.* left
        code, out, err = run_bare(user, binary, "--version", env={"MGPU_CACHE_DIR": cache})
        assert code == 0, err
    finally:
        remove(base)


def test_empty_environment_without_home_as_root_and_as_a_user(users, binary, digest):
    alice_uid = pwd.getpwnam(ALICE).pw_uid
    alice_cache = "/tmp/mgpu-cache-%d" % alice_uid
    try:
        for user, cache, uid in ((None, "/var/cache/mgpu", 0), (ALICE, alice_cache, alice_uid)):
            for cwd in ("/", "/tmp"):
                code, out, err = run_bare(user, binary, "--version", cwd=cwd)
                assert code == 0 and out.startswith("mgpu ") and err == "", (user, code, out, err)
            assert os.path.isfile(os.path.join(cache, digest, "mgpu"))
            uid_found, mode = owner_and_mode(cache)
            assert uid_found == uid and not mode & 0o022
            assert owner_and_mode(os.path.join(cache, digest)) == (uid, 0o700)
        # With HOME: ~/.cache/mgpu (XDG), as the user's own.
        home = pwd.getpwnam(ALICE).pw_dir
        code, out, err = run_bare(ALICE, binary, "--version", env={"HOME": home})
        assert code == 0, err
        assert os.path.isfile(os.path.join(home, ".cache", "mgpu", digest, "mgpu"))
        assert owner_and_mode(os.path.join(home, ".cache", "mgpu"))[0] == alice_uid
        # A HOME that is not the user's own (kept by `sudo -u`): the per-uid cache in /tmp.
        shutil.rmtree(alice_cache, ignore_errors=True)
        code, out, err = run_bare(ALICE, binary, "--version", env={"HOME": "/root"})
        assert code == 0 and err == "", (code, out, err)
        assert os.path.isfile(os.path.join(alice_cache, digest, "mgpu"))
    finally:
        # The test user's cache outside its home (userdel removes the home): test_binary.py's
        # empty-environment runs as alice fill it as well.
        if os.path.isdir(alice_cache) and os.lstat(alice_cache).st_uid == alice_uid:
            shutil.rmtree(alice_cache, ignore_errors=True)


def test_runs_through_path_and_a_symbolic_link_from_any_directory(users, installation, binary):
    # bin/mgpu is a symbolic link to the binary; PATH entries absolute and relative.
    for path_value, cwd in (("%s:/usr/bin:/bin" % installation.bin_dir, "/"),
                            ("bin:/usr/bin:/bin", installation.root)):
        for user in (None, ALICE):
            home = pwd.getpwnam(user or "root").pw_dir
            process = popen_as(user, ["/usr/bin/env", "-i", "HOME=" + home, "PATH=" + path_value,
                                      "/bin/sh", "-c", "mgpu --version"], env={}, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0 and out.startswith("mgpu "), (path_value, user, err)


def test_the_header_adds_nothing_to_what_jobs_see(cluster, binary):
    home = pwd.getpwnam(ALICE).pw_dir
    code, out, err = run_bare(ALICE, binary, "srun", "-i", "-q", "--gpus", "0", "--", "/usr/bin/env",
                              env={"HOME": home, "MGPU_SOCKET": cluster.master.socket,
                                   "FOO": "bar baz"}, cwd=home)
    assert code == 0, err
    names = [line.split("=", 1)[0] for line in out.splitlines() if "=" in line]
    assert "FOO=bar baz" in out.splitlines()
    assert "PATH" not in names  # the header's own PATH stays in the header
    assert not [n for n in names if n.startswith(("_mgpu", "_PYI", "_MEI", "PYINSTALLER", "LD_LIBRARY"))]
    # What a POSIX sh sets by itself is all the header may add: PWD (the job's directory anyway).
    added = set(names) - {"FOO", "HOME", "MGPU_SOCKET", "USER", "LOGNAME", "PWD"}
    assert all(n.startswith(("MGPU_", "CUDA_")) for n in added), added


# --- upgrade -------------------------------------------------------------------------------------

class CachedInstallation(Installation):
    """A private copy of the binary whose runs use per-user cache directories."""

    def __init__(self, caches):
        super().__init__()
        self.caches = caches
        self.binary = os.path.join(self.root, "mgpu-binary")

    def env(self, socket_path, user=None, extra=None):
        env = super().env(socket_path, user, extra)
        env["MGPU_CACHE_DIR"] = self.caches[user]
        return env


def another_build(binary, target):
    """The same program with another content hash: zero blocks appended to the tar (still the same
    archive for tar) and the header's hash, sha256 and size updated in place (same lengths)."""
    import hashlib

    offset = int(header_value(binary, "offset"))
    with open(binary, "rb") as handle:
        data = handle.read()
    header, archive = data[:offset - 1], data[offset - 1:] + b"\0" * 10240
    sha = hashlib.sha256(archive).hexdigest()
    old = {name: header_value(binary, name) for name in ("hash", "sha256", "size")}
    new = {"hash": sha[:len(old["hash"])], "sha256": sha, "size": str(len(archive))}
    assert len(new["size"]) == len(old["size"])
    for name in old:
        header = header.replace(("_mgpu_%s=%s\n" % (name, old[name])).encode(),
                                ("_mgpu_%s=%s\n" % (name, new[name])).encode())
    assert len(header) == offset - 1
    temporary = target + ".new"
    with open(temporary, "wb") as handle:
        handle.write(header + archive)
    os.chmod(temporary, 0o755)
    os.replace(temporary, target)  # as `make install` does
    return new["hash"]


def test_an_upgrade_unpacks_beside_a_running_daemon_which_keeps_working(users, digest):
    caches = {None: private_dir(None), ALICE: private_dir(ALICE)}
    installation = CachedInstallation(caches)
    workdir = tempfile.mkdtemp(prefix="master-", dir="/tmp")
    os.chmod(workdir, 0o755)
    master = Master(installation, workdir)
    try:
        master.start()
        cluster = Cluster(installation, master, users)
        assert os.listdir(caches[None]) == [digest]
        old_program = os.path.join(caches[None], digest, "mgpu")
        assert os.readlink("/proc/%d/exe" % master.process.pid) == old_program

        new_digest = another_build(installation.binary, installation.binary)
        assert new_digest != digest
        assert cluster.run(None, "--version").returncode == 0
        assert sorted(os.listdir(caches[None])) == sorted([digest, new_digest])
        # The old master, from the old directory, still serves the new clients and runs jobs.
        job = cluster.submit(ALICE, "--gpus", "1", "--", "sh", "-c", "exit 3")
        done = cluster.wait_state(job, ("COMPLETED", "FAILED"))
        assert done["state"] == "FAILED" and done["exit_code"] == 3
        assert os.listdir(caches[ALICE]) == [new_digest]
        assert master.stop() == 0, master.log
    finally:
        master.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        installation.remove()
        for cache in caches.values():
            remove(cache)
