"""Real daemons and real users for end-to-end tests.

The mgpu under test is `python -m mgpu` from this checkout, or the binary named by MGPU_BIN.
Test users cannot read a checkout or an interpreter under /root, so both are copied into a
world-readable directory, and user-side commands run with Debian's /usr/bin/python3 (the
client roles need only the standard library) or with the copied binary.
"""

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(REPO, "src")
USER_PYTHON = "/usr/bin/python3"
MGPU_BIN = os.environ.get("MGPU_BIN")

TEST_USERS = ("mgpu-alice", "mgpu-bob")
TEST_GROUP = "mgpu-extra"


def wait_for(predicate, timeout=15.0, interval=0.02, what="condition"):
    """Poll `predicate` until it returns something truthy; its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def read_line(pipe, timeout=20.0, what="a line"):
    """`pipe.readline()` with a deadline: the line ('' at end of file), or AssertionError.

    A thread does the read, so lines already buffered in a text pipe count (a select() on the
    descriptor would not see them); on a timeout the thread stays blocked until the pipe closes,
    which the test's teardown does."""
    result = []
    reader = threading.Thread(target=lambda: result.append(pipe.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
    return result[0]


class Installation:
    """A world-readable copy of what users run: the source tree or the binary, and an `mgpu`
    command on a PATH directory."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="mgpu-test-")
        os.chmod(self.root, 0o755)
        self.bin_dir = os.path.join(self.root, "bin")
        os.mkdir(self.bin_dir)
        wrapper = os.path.join(self.bin_dir, "mgpu")
        if MGPU_BIN:
            binary = os.path.join(self.root, "mgpu-binary")
            shutil.copy2(os.path.join(REPO, MGPU_BIN) if not os.path.isabs(MGPU_BIN) else MGPU_BIN, binary)
            os.chmod(binary, 0o755)
            os.symlink(binary, wrapper)
            self.user_command = [wrapper]
            self.root_command = [wrapper]
        else:
            src = os.path.join(self.root, "src")
            shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
            for dirpath, dirnames, filenames in os.walk(self.root):
                for name in dirnames:
                    os.chmod(os.path.join(dirpath, name), 0o755)
                for name in filenames:
                    os.chmod(os.path.join(dirpath, name), 0o644)
            with open(wrapper, "w") as handle:
                handle.write("#!/bin/sh\nPYTHONPATH=%s exec %s -m mgpu \"$@\"\n" % (src, USER_PYTHON))
            os.chmod(wrapper, 0o755)
            self.user_command = [USER_PYTHON, "-m", "mgpu"]
            self.root_command = [sys.executable, "-m", "mgpu"]
            self.pythonpath = src
        self.src_copy = None if MGPU_BIN else os.path.join(self.root, "src")

    def env(self, socket_path, user=None, extra=None):
        env = {"PATH": "%s:/usr/local/bin:/usr/bin:/bin" % self.bin_dir, "LANG": "C.UTF-8",
               "MGPU_SOCKET": socket_path}
        if not MGPU_BIN:
            env["PYTHONPATH"] = self.src_copy if user else SRC
        if user:
            account = pwd.getpwnam(user)
            env.update(HOME=account.pw_dir, USER=user, LOGNAME=user)
        else:
            env.update(HOME=os.environ.get("HOME", "/root"), USER="root", LOGNAME="root")
        env.update(extra or {})
        return env

    def command(self, user):
        return self.user_command if user else self.root_command

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)


def ensure_users():
    """Create the test users (and a supplementary group for the first); their names."""
    if subprocess.run(["getent", "group", TEST_GROUP], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", TEST_GROUP], check=True)
    for name in TEST_USERS:
        if subprocess.run(["id", name], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    subprocess.run(["usermod", "-a", "-G", TEST_GROUP, TEST_USERS[0]], check=True)
    return TEST_USERS


def remove_users():
    for name in TEST_USERS:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            uid = None
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        if uid is not None:  # the binary's cache of a user without a home (build-config/launcher.sh)
            shutil.rmtree("/tmp/mgpu-cache-%d" % uid, ignore_errors=True)
    subprocess.run(["groupdel", TEST_GROUP], capture_output=True)


def user_ids(user):
    account = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    return account.pw_uid, account.pw_gid, groups


def popen_as(user, argv, env, cwd=None, **kwargs):
    """Start `argv` as `user` (None: as ourselves), with its uid, gid and groups."""
    if user:
        uid, gid, groups = user_ids(user)
        kwargs.update(user=uid, group=gid, extra_groups=groups)
        cwd = cwd or pwd.getpwnam(user).pw_dir
    return subprocess.Popen(argv, env=env, cwd=cwd or REPO, **kwargs)


class Master:
    """A real `mgpu master` on a temporary socket and state directory."""

    def __init__(self, installation, workdir, fake_gpus="2:16000", args=(), user=None, config=None):
        self.installation = installation
        self.workdir = workdir
        self.socket = os.path.join(workdir, "run", "mgpu.sock")
        self.state_dir = os.path.join(workdir, "state")
        self.log_path = os.path.join(workdir, "master.log")
        self.user = user
        self.argv = list(installation.command(user)) + [
            "master", "--socket", self.socket, "--state-dir", self.state_dir, "--kill-grace", "1"]
        if fake_gpus is not None:
            self.argv += ["--fake-gpus", fake_gpus]
        if config:
            config_path = os.path.join(workdir, "mgpu.yaml")
            with open(config_path, "w") as handle:
                handle.write(config)
            os.chmod(config_path, 0o644)
            self.argv += ["--config", config_path]
        self.argv += list(args)
        self.process = None
        self.problems = []  # what went wrong with earlier processes of this master (see health)
        self._expected_exit = None  # for the current process: None, or (code or None,)
        self._signal_sent = None  # the signal stop() sent the current process
        self._judged = None  # the process whose end has been judged
        self._log_errors_expected = False

    def expect_exit(self, code=None):
        """The current process is meant to exit by itself (a refused start, a test that kills
        it from outside): with `code` (None: any code or signal). Without this, a master that
        exits on its own during a test fails it."""
        self._expected_exit = (code,)

    def expect_log_errors(self):
        """This master's log may contain tracebacks or internal errors (a test that provokes
        them on purpose); without this, either fails the test."""
        self._log_errors_expected = True

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def _judge_end(self):
        """Record, once per process, why its end was wrong: exited by itself without
        expect_exit(), or not with 0 after SIGTERM/SIGINT."""
        process = self.process
        if process is None or process.returncode is None or self._judged is process:
            return
        self._judged = process
        code = process.returncode
        what = "signal %d" % -code if code < 0 else "code %d" % code
        if self._expected_exit is not None:
            wanted = self._expected_exit[0]
            if wanted is not None and code != wanted:
                self.problems.append("master pid %d exited with %s, expected %s" % (process.pid, what, wanted))
        elif self._signal_sent is None:
            self.problems.append("master pid %d ended during the test with %s (not through Master.stop/kill, no expect_exit)" % (process.pid, what))
        elif self._signal_sent in (signal.SIGTERM, signal.SIGINT) and code != 0:
            self.problems.append("master pid %d exited with %s after %s (expected 0)" % (
                process.pid, what, signal.Signals(self._signal_sent).name))

    def log_problems(self):
        """Lines of the log that show a crash: a traceback or an internal error."""
        if self._log_errors_expected:
            return []
        return [line for line in self.log.splitlines() if "Traceback" in line or "internal error" in line]

    def health(self):
        """Everything that went wrong with this master so far (empty when all is well): a
        process that exited by itself or badly after SIGTERM, tracebacks and internal errors in
        its log. The make_cluster fixture fails a test whose masters are not healthy."""
        self._judge_end()
        problems = list(self.problems)
        crash_lines = self.log_problems()
        if crash_lines:
            problems.append("master log shows a crash:\n    " + "\n    ".join(crash_lines[:10]))
        return problems

    def start(self, wait=True):
        if self.process is not None:
            if self.process.poll() is not None:
                self._judge_end()
            self.process = None
        self._expected_exit = self._signal_sent = None
        os.makedirs(os.path.dirname(self.socket), exist_ok=True)
        if self.user:
            uid, gid, _ = user_ids(self.user)
            for path in (self.workdir, os.path.dirname(self.socket)):
                os.chown(path, uid, gid)
        self.log_file = open(self.log_path, "ab")
        self.process = self._spawn(stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait:
            wait_for(self.answers, timeout=20, what="the master to answer on %s\n%s" % (self.socket, self.log))
        return self

    def _spawn(self, **popen_kwargs):
        env = self.installation.env(self.socket, self.user)
        return popen_as(self.user, self.argv, env, cwd=self.workdir, **popen_kwargs)

    def answers(self):
        if self.process.poll() is not None:
            raise AssertionError("master exited with %s:\n%s" % (self.process.returncode, self.log))
        return request(self.socket, {"v": 1, "type": "ping"}, quiet=True) is not None

    @property
    def log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.process and self.process.poll() is None:
            self._signal_sent = sig
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.problems.append("master pid %d did not exit within %d s of %s" % (
                    self.process.pid, timeout, signal.Signals(sig).name))
                self._signal_sent = signal.SIGKILL
                self.process.kill()
                self.process.wait()
        self._judge_end()
        if getattr(self, "log_file", None):
            self.log_file.close()
        return self.process.returncode if self.process else None

    def kill(self):
        return self.stop(signal.SIGKILL)


def request(socket_path, message, timeout=10.0, quiet=False, raw=None):
    """Send one frame (a dict, or raw bytes) and return the decoded reply (None on failure when
    quiet)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(raw if raw is not None else (json.dumps(message) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.close()
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        if quiet:
            return None
        raise


# Sent by a small client running as a test user: the master must see that user's uid.
_SENDER = r"""
import json, socket, sys
frames = json.loads(sys.stdin.read())
replies = []
for frame in frames:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(sys.argv[1])
    sock.sendall(frame.encode("utf-8", "surrogatepass"))
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    replies.append(json.loads(data) if data else None)
print(json.dumps(replies))
"""


def send_as(cluster, user, frames):
    """Raw frames (strings, one request each, newline included) sent as `user` past the
    client's own checks, one connection each; the decoded replies."""
    process = popen_as(user, [USER_PYTHON, "-c", _SENDER, cluster.master.socket], env={"PATH": "/usr/bin:/bin"},
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(json.dumps(frames).encode(), timeout=60)
    assert process.returncode == 0, err
    return json.loads(out)


class Cluster:
    """What a test drives: a master, the installation and the users."""

    def __init__(self, installation, master, users):
        self.installation = installation
        self.master = master
        self.users = users

    def run(self, user, *args, input=None, timeout=60, env=None, cwd=None):
        """Run `mgpu ARGS` as `user` (None: root); a CompletedProcess with text output."""
        argv = list(self.installation.command(user)) + [str(a) for a in args]
        process = popen_as(user, argv, self.installation.env(self.master.socket, user, env), cwd=cwd,
                           stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = process.communicate(input.encode() if input is not None else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise AssertionError("mgpu %s timed out; stdout=%r stderr=%r" % (" ".join(map(str, args)), out, err))
        return subprocess.CompletedProcess(argv, process.returncode, out.decode(errors="replace"),
                                           err.decode(errors="replace"))

    def start(self, user, *args, cwd=None, env=None):
        """Start `mgpu ARGS` as `user` without waiting (a Popen with text pipes)."""
        argv = list(self.installation.command(user)) + [str(a) for a in args]
        return popen_as(user, argv, self.installation.env(self.master.socket, user, env), cwd=cwd,
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def submit(self, user, *args):
        result = self.run(user, "srun", "--parsable", *args)
        assert result.returncode == 0, "submit failed: %s%s" % (result.stderr, self.master.log[-2000:])
        return int(result.stdout.strip())

    def queue(self, user=None, *args):
        result = self.run(user, "queue", "--json", "--all", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def job(self, job_id, user=None):
        for job in self.queue(user)["jobs"]:
            if job["id"] == job_id:
                return job
        return None

    def wait_state(self, job_id, states, timeout=20):
        states = (states,) if isinstance(states, str) else tuple(states)
        return wait_for(lambda: (lambda j: j if j and j["state"] in states else None)(self.job(job_id)),
                        timeout=timeout, interval=0.05, what="job %d to be %s\nmaster log:\n%s" % (
                            job_id, "/".join(states), self.master.log[-3000:]))

    def record_path(self, job_id, attempt=1):
        """The supervisor's record of a job attempt, in the master's state directory."""
        return os.path.join(self.master.state_dir, "jobs", "%d.%d.json" % (job_id, attempt))

    def wait_supervised(self, job_id, attempt=1):
        """Wait until the job's supervisor exists (its record is on disk). RUNNING is stored
        before the launch: a master killed in between never started the job, and requeues it."""
        wait_for(lambda: os.path.exists(self.record_path(job_id, attempt)),
                 what="the supervisor of job %d to record its start" % job_id)

    def home(self, user):
        return pwd.getpwnam(user).pw_dir if user else os.environ.get("HOME", "/root")

    def read_output(self, user, job_id, suffix="out"):
        path = os.path.join(self.home(user), ".mgpu", "logs", "%d.%s" % (job_id, suffix))
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()


def process_alive(pattern):
    """True when a process whose command line contains `pattern` exists."""
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


class SpawnedMaster(Master):
    """A `mgpu master` run as root through `spawn(argv, **popen_kwargs)`, for instance inside a
    network namespace (netns.Network.run_in with its host bound); otherwise a Master."""

    def __init__(self, installation, workdir, spawn, fake_gpus="2:16000", args=(), config=None):
        super().__init__(installation, workdir, fake_gpus=fake_gpus, args=args, config=config)
        self.spawn = spawn

    def _spawn(self, **popen_kwargs):
        return self.spawn(self.argv, env=self.installation.env(self.socket), cwd=self.workdir, **popen_kwargs)


class Node(SpawnedMaster):
    """A real `mgpu node` (as root, through `spawn`) with its own socket, state directory and
    log under `workdir`. The same life cycle and health checks as a Master: a node that exits
    by itself without expect_exit(), or logs a traceback, is unhealthy."""

    def __init__(self, installation, workdir, spawn, name, master_address, key, fake_gpus="2:16000",
                 heartbeat_interval=1, args=()):
        super().__init__(installation, workdir, spawn, fake_gpus=None)
        self.name = name
        self.socket = os.path.join(workdir, "run", "node.sock")
        self.log_path = os.path.join(workdir, "node.log")
        self.argv = list(installation.command(None)) + [
            "node", "--master", master_address, "--key", key, "--name", name, "--socket", self.socket,
            "--state-dir", self.state_dir, "--heartbeat-interval", str(heartbeat_interval)]
        if fake_gpus is not None:
            self.argv += ["--fake-gpus", fake_gpus]
        self.argv += list(args)

    def start(self, wait=False):
        """Start the node; with `wait`, until its UNIX socket exists (registration with the
        master is the test's to wait for)."""
        super().start(wait=False)
        if wait:
            wait_for(lambda: os.path.exists(self.socket) or self.process.poll() is not None,
                     timeout=20, what="node %s to open %s" % (self.name, self.socket))
            if self.process.poll() is not None:
                raise AssertionError("node %s exited with %s:\n%s" % (self.name, self.process.returncode, self.log))
        return self

    def health(self):
        return [problem.replace("master pid", "node %s pid" % self.name).replace("master log", "node log")
                for problem in super().health()]

    def record_path(self, job_id, attempt=1):
        """The supervisor's record of a job attempt, in this node's state directory."""
        return os.path.join(self.state_dir, "jobs", "%d.%d.json" % (job_id, attempt))


def pids_matching(pattern):
    """Pids of the processes whose command line contains `pattern` (pgrep -f)."""
    result = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return {int(word) for word in result.stdout.split()} - {os.getpid()}
