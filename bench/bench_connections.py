"""Connection floods against a real master with fake GPUs (no pass/fail; prints what it measured).

  1. 1,000 idle connections plus 200 that send half a frame and stall, all held at once from one
     user (a test user when one exists, else root): how many the master served and how many it
     refused (its caps: max_connections, max_connections_per_user; root counts against the
     first only).
  2. While they are held: a normal `mgpu queue` from another user (median latency), and the
     master's thread count and RSS.
  3. 32 concurrent `mgpu queue` during a connect flood (processes of ours connecting and
     closing without waiting, as fast as they can): how many succeeded, and the slowest.

Usage: PYTHONPATH=src python bench/bench_connections.py (as root it floods as one ordinary user
and queries as another: the test users mgpu-alice and mgpu-bob when they exist, else two users
it creates and removes, mgpu-bench-a and mgpu-bench-b). Everything it starts is stopped by pid
at the end.
"""

import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

IDLE, STALLED, CONCURRENT_QUEUES, FLOODERS = 1000, 200, 32, 8

HOLDER = r"""
import json, resource, select, socket, sys, time
path, idle, stalled = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, idle + stalled + 256), hard))
socks, failed = [], 0
for i in range(idle + stalled):
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(path)
    except OSError:
        failed += 1
        sock.close()
        continue
    if i >= idle:
        try:
            sock.sendall(b'{"v": 1, "type": "que')  # half a frame, then nothing
        except OSError:
            pass  # refused and closed already: counted below
    socks.append(sock)
time.sleep(1.0)  # refusals are sent at accept: give the master time to reach every one
poller = select.poll()
for sock in socks:
    poller.register(sock, select.POLLIN)
refused = len(poller.poll(0))
print(json.dumps({"opened": len(socks), "connect_failed": failed, "refused": refused}), flush=True)
sys.stdin.read()
"""

FLOODER = r"""
import socket, sys, time
path, until = sys.argv[1], time.monotonic() + float(sys.argv[2])
count = 0
while time.monotonic() < until:
    sock = socket.socket(socket.AF_UNIX)
    sock.setblocking(False)
    try:
        sock.connect(path)
        count += 1
    except OSError:
        pass
    sock.close()
print(count, flush=True)
"""


def account(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def as_user(user):
    """Popen keyword arguments to run as `user` (a pwd entry, or None for ourselves)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def threads_and_rss(pid):
    threads = rss = None
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024.0
    return threads, rss


def timed_queue(argv, env, user):
    started = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd="/", **as_user(user))
    return time.monotonic() - started, result


def ensure_user(name, fallback, created):
    """The pwd entry of `name`, else of `fallback` (created with useradd; remembered in
    `created` for removal), else None."""
    user = account(name) or account(fallback)
    if user is None and shutil.which("useradd"):
        if subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", fallback],
                          capture_output=True).returncode == 0:
            created.append(fallback)
            user = account(fallback)
    return user


def main():
    root = os.getuid() == 0
    created_users = []
    try:
        holder_user = ensure_user("mgpu-alice", "mgpu-bench-a", created_users) if root else None
        queue_user = ensure_user("mgpu-bob", "mgpu-bench-b", created_users) if root else None
        return flood(root, holder_user, queue_user)
    finally:
        for name in created_users:
            subprocess.run(["userdel", name], capture_output=True)


def flood(root, holder_user, queue_user):
    workdir = tempfile.mkdtemp(prefix="mgpu-bench-conn-", dir="/tmp")
    os.chmod(workdir, 0o755)
    started = []  # every process we start, stopped by pid at the end
    master = None
    try:
        src = os.path.join(workdir, "src")  # a copy other users can read
        shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, dirnames, filenames in os.walk(src):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        socket_path = os.path.join(workdir, "run", "mgpu.sock")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": src,
               "MGPU_SOCKET": socket_path, "HOME": workdir}
        python = sys.executable if not root else "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) \
            else sys.executable
        log = open(os.path.join(workdir, "master.log"), "wb")
        master = subprocess.Popen([sys.executable, "-m", "mgpu", "master", "--socket", socket_path,
                                   "--state-dir", os.path.join(workdir, "state"), "--fake-gpus", "2:16000"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append(master)
        queue_argv = [python, "-m", "mgpu", "queue"]
        deadline = time.monotonic() + 20
        while subprocess.run(queue_argv, env=env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline or master.poll() is not None:
                raise SystemExit("master did not start; see %s/master.log" % workdir)
            time.sleep(0.1)
        threads, rss = threads_and_rss(master.pid)
        print("master idle: %d threads, RSS %.1f MB" % (threads, rss))

        # 1. A held flood.
        who = holder_user.pw_name if holder_user else "root"
        holder = subprocess.Popen([python, "-c", HOLDER, socket_path, str(IDLE), str(STALLED)], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
                                  **as_user(holder_user))
        started.append(holder)
        t0 = time.monotonic()
        line = holder.stdout.readline()
        if not line:
            raise SystemExit("the flood's process (as %s) ended early with %s: killed from outside? run again"
                             % (who, holder.wait(10)))
        report = json.loads(line)
        print("%d idle + %d half-frame connections from %s (opened in %.1f s): %d served, %d refused at "
              "once, %d could not connect" % (IDLE, STALLED, who, time.monotonic() - t0 - 1.0,
                                             report["opened"] - report["refused"], report["refused"],
                                             report["connect_failed"]))

        threads, rss = threads_and_rss(master.pid)
        print("master while they are held: %d threads, RSS %.1f MB" % (threads, rss))

        # 2. Another user's `mgpu queue` while the flood is held (idle ones are dropped after 10 s).
        latencies, failures = [], 0
        for _ in range(5):
            seconds, result = timed_queue(queue_argv, env, queue_user)
            latencies.append(seconds)
            failures += result.returncode != 0
        print("`mgpu queue` as %s during the held flood: median %.0f ms, %d of 5 failed%s" % (
            queue_user.pw_name if queue_user else "root", statistics.median(latencies) * 1000, failures,
            "" if queue_user else " (root's connections count against max_connections only, which the flood fills)"))
        holder.stdin.close()
        holder.wait(20)

        # 3. 32 concurrent `mgpu queue` during a connect flood.
        flooders = [subprocess.Popen([python, "-c", FLOODER, socket_path, "6"], env=env, stdout=subprocess.PIPE,
                                     text=True, cwd="/") for _ in range(FLOODERS)]
        started.extend(flooders)
        time.sleep(0.5)
        t0 = time.monotonic()
        queues = [subprocess.Popen(queue_argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, cwd="/", **as_user(queue_user)) for _ in range(CONCURRENT_QUEUES)]
        started.extend(queues)
        ok, killed, slowest, errors = 0, 0, 0.0, []
        for process in queues:
            _, err = process.communicate(timeout=60)
            slowest = max(slowest, time.monotonic() - t0)
            if process.returncode == 0:
                ok += 1
            elif process.returncode < 0:
                killed += 1  # a signal from outside (another session's clean-up of the test users)
            else:
                errors.append(err.strip() or "exit status %d" % process.returncode)
        floods = sum(int(p.communicate(timeout=30)[0] or 0) for p in flooders)
        print("%d concurrent `mgpu queue` during a connect flood (%d processes, %d connections): %d succeeded, "
              "%d failed, all done in %.2f s%s" % (CONCURRENT_QUEUES, FLOODERS, floods, ok, len(errors), slowest,
                                                   "; %d killed by a signal from outside" % killed if killed else ""))
        for line in sorted(set(errors))[:3]:
            print("  failure: %s" % line)
        threads, rss = threads_and_rss(master.pid)
        print("master after the floods: %d threads, RSS %.1f MB" % (threads, rss))
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM if process is master else signal.SIGKILL)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
