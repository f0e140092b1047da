"""A master scheduling the GPUs of several hosts, on loopback (no pass/fail; prints what it
measured and how). Under about 90 s on 2 CPUs.

  1. 1,000 `true` jobs with --gpus 1 over 4 real `mgpu node` agents (2 fake GPUs each) joined to
     a master with no GPUs of its own: end to end jobs/s (first submit to last completion,
     submitted from 4 client processes on kept connections through the master's socket), and how
     the jobs spread over the nodes.
  2. Heartbeat bytes per idle node: the frame `mgpu node` sends, its TLS 1.3 size (frame + 22 B
     per record), and what one of the real nodes above actually sent, counted by a loopback
     relay between it and the master (TCP payload, i.e. TLS records; IP/TCP headers and ACKs
     not counted).
  3. 64 then 256 connected simulated nodes (8 fake GPUs each; threads of this process, each on
     its own TLS link: register, heartbeat every 1 s, answer each launch with job_started and
     keep the job "running") with every GPU busy and 10,000 jobs pending: the master's RSS, its
     CPU share while only heartbeats arrive, `mgpu queue` latency, and the time from a simulated
     node's job_exited to the launch of the next job at that node (the master's read, one
     scheduler pass over the 10,000 pending jobs, the database write, the send), median of 20;
     also to the release of the ended job, which the master sends just before that launch: the
     gap between the two is the link's delivery of the launch, not the master's work. First a
     baseline with 20 to 1 jobs pending; last the master's CPU share when every heartbeat
     carries GPU usage, as an NVML node's do.

Run: PYTHONPATH=src python3 bench/bench_nodes.py [--jobs N] [--pending N] [--sim-nodes 64,256]
"""

import argparse
import collections
import multiprocessing
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
sys.path.insert(0, SRC)

from mgpu import auth, client as mgpu_client, errors, protocol, transport  # noqa: E402
from mgpu.errors import MgpuError  # noqa: E402

CLI = [sys.executable, "-m", "mgpu"]
TLS13_RECORD_OVERHEAD = 22  # 5 B record header + 1 B inner content type + 16 B AEAD tag
SMALL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


def cli_env(socket_path):
    env = dict(os.environ, MGPU_SOCKET=socket_path)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(test, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = test()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit("bench_nodes: timed out waiting for %s" % what)
        time.sleep(interval)


def proc_status(pid, field):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemon:
    """A process this bench started (master or node agent), stopped by its pid."""

    def __init__(self, argv, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def alive(self):
        return self.process.poll() is None

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Master(Daemon):
    def __init__(self, workdir, key_path, port):
        os.makedirs(workdir, exist_ok=True)
        self.socket = os.path.join(workdir, "mgpu.sock")
        self.env = cli_env(self.socket)
        argv = CLI + ["master", "--socket", self.socket, "--state-dir", os.path.join(workdir, "state"),
                      "--fake-gpus", "0", "--listen", "127.0.0.1:%d" % port, "--key", key_path,
                      "--heartbeat-interval", "1", "--node-timeout", "30", "--kill-grace", "1"]
        if os.getuid() == 0:
            argv.append("--allow-root-jobs")
        super().__init__(argv, self.env, os.path.join(workdir, "master.log"))
        os.environ["MGPU_SOCKET"] = self.socket

        def up():
            if not self.alive():
                raise SystemExit("master did not start; see %s" % self.log_path)
            try:
                return mgpu_client.call("ping") or True
            except Exception:
                return False
        wait_until(up, 30, "the master to start")

    @property
    def pid(self):
        return self.process.pid

    def rss_mb(self):
        return proc_status(self.pid, "VmRSS") / 1024.0

    def remote_nodes(self):
        return [n for n in mgpu_client.call("queue", state="RUNNING")["nodes"] if n.get("address")]


# ---------------------------------------------------------------------------------------------
# Submitting (client processes on kept connections, as bench_e2e.py)


def submit_fields(command, output_dir, env, gpus=1):
    return {"command": command, "cwd": "/tmp", "env": env, "gpus": gpus,
            "output": os.path.join(output_dir, "%j.out"), "umask": 0o022}


def _submit_worker(args):
    socket_path, count, fields = args
    os.environ["MGPU_SOCKET"] = socket_path
    connection = mgpu_client.Client.connect()
    for _ in range(count):
        connection.call("submit", **fields)
    connection.close()
    return count


def submit_concurrently(pool, clients, socket_path, total, fields):
    """Submit `total` jobs from the pool's `clients` processes; (seconds taken, start time)."""
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    start = time.perf_counter()
    pool.map(_submit_worker, [(socket_path, n, fields) for n in per_client if n])
    return time.perf_counter() - start, start


def active_jobs():
    return mgpu_client.call("queue", state="PENDING,RUNNING")["jobs"]


# ---------------------------------------------------------------------------------------------
# A loopback relay that counts the bytes crossing it


class CountingRelay:
    """Accepts one connection on a loopback port and pipes it to (host, port), counting the TCP
    payload bytes each way."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.up = 0      # node -> master
        self.down = 0    # master -> node
        self.reads_up = 0
        self.lock = threading.Lock()
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return
            outer = socket.create_connection(("127.0.0.1", self.target_port))
            for sock in (inner, outer):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [inner, outer]
            threading.Thread(target=self._pump, args=(inner, outer, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(outer, inner, "down"), daemon=True).start()

    def _pump(self, source, sink, direction):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                with self.lock:
                    if direction == "up":
                        self.up += len(data)
                        self.reads_up += 1
                    else:
                        self.down += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def counts(self):
        with self.lock:
            return self.up, self.down, self.reads_up

    def close(self):
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Simulated node agents: one thread and one TLS link each


class SimNode(threading.Thread):
    """Speaks the node link as `mgpu node` does: registers 8 fake GPUs, heartbeats every
    `interval` seconds, answers each launch with job_started and keeps the job "running" until
    told to end it (end_one), which sends job_exited exit 0 and times the next launch."""

    def __init__(self, key, context, port, name, gpus=8, interval=1.0):
        super().__init__(name="sim-" + name, daemon=True)
        self.key, self.context, self.port, self.node_name = key, context, port, name
        self.gpus, self.interval = gpus, interval
        self.running = collections.OrderedDict()  # (job_id, attempt) -> True
        self.launches = 0
        self.registered = threading.Event()
        self.failed = None
        self.drops = 0              # links the master dropped (this node joined again)
        self.last_drop = None
        self.connection = None
        self.stopping = False
        self.usage = False                   # heartbeats carry GPU usage, as an NVML node's do
        self._orders = collections.deque()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._timing = None                  # [sent_at, launched_at, done Event]

    def end_one(self, timeout=10):
        """End one running job; seconds from sending job_exited to the next launch here."""
        done = threading.Event()
        timing = [None, None, done, None]  # job_exited sent, launch read, done, release read
        self._orders.append(timing)
        os.write(self._wake_write, b"x")
        if not done.wait(timeout):
            if self.failed:
                raise SystemExit("bench_nodes: simulated node %s: %s" % (self.node_name, self.failed))
            return None  # lost with a dropped link: left out of the figures, counted
        released = timing[3] if timing[3] is not None else timing[1]
        return timing[1] - timing[0], released - timing[0]

    def stop(self):
        self.stopping = True
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass

    def run(self):
        try:
            while not self.stopping:
                try:
                    self._run()
                    return
                except (EOFError, OSError, MgpuError) as e:
                    # The link broke: join again at once, reporting the jobs kept running, as
                    # `mgpu node` does (with a backoff there). Counted and printed by the bench.
                    if self.stopping or not self.registered.is_set():
                        raise
                    self.drops += 1
                    self.last_drop = "%s: %s" % (type(e).__name__, e)
                    self.connection.close()
                    time.sleep(0.1)
        except Exception as e:  # the master stopped, or a bug: reported by the bench
            if not self.stopping:
                import traceback
                self.failed = "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc())
        finally:
            self.registered.set()

    def _send(self, type_, **fields):
        self.connection.send(protocol.node_message(type_, **fields))

    def _run(self):
        sock = transport.connect_tcp("127.0.0.1", self.port, timeout=30)
        tls = auth.wrap_client(sock, self.context, self.key, 30)
        self.connection = transport.Connection(tls, protocol.MAX_NODE_FRAME)
        attempts = [{"job_id": j, "attempt": a, "phase": "started"} for j, a in self.running]
        self._send("node_register", name=self.node_name, attempts=attempts,
                   gpus=[{"index": i, "uuid": "GPU-%s-%d" % (self.node_name, i), "name": "Fake",
                          "memory_mb": 81920} for i in range(self.gpus)])
        reply = self.connection.read(30)
        if not (reply and reply.get("ok")):
            raise RuntimeError("registration refused: %r" % (reply,))
        keep = {tuple(pair) for pair in reply["result"]["keep"]}
        for pair in [p for p in self.running if p not in keep]:
            del self.running[pair]
        self.registered.set()
        next_heartbeat = time.monotonic() + self.interval
        poller = select.poll()  # not select(): this process may hold over 1,024 descriptors
        poller.register(tls.fileno(), select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self.stopping:
            now = time.monotonic()
            if now >= next_heartbeat:
                fields = {"usage": {str(i): 0 for i in range(self.gpus)}} if self.usage else {}
                self._send("node_heartbeat", **fields)
                next_heartbeat = now + self.interval
            while self._orders:
                timing = self._orders.popleft()
                job_id, attempt = next(iter(self.running))
                del self.running[(job_id, attempt)]
                self._timing = timing
                timing[0] = time.perf_counter()
                self._send("job_exited", job_id=job_id, attempt=attempt, exit_code=0, signal=None, error=None)
            if not tls.pending():
                wait_ms = max(0.0, next_heartbeat - time.monotonic()) * 1000
                readable = [fd for fd, _ in poller.poll(wait_ms)]
                if self._wake_read in readable:
                    try:
                        os.read(self._wake_read, 4096)
                    except OSError:
                        pass
                if tls.fileno() not in readable:
                    continue
            message = self._read(5)
            while message is not None:
                self._handle(message)
                message = self._read(0)  # frames already buffered

    def _read(self, timeout):
        """The next message; None when none is complete within `timeout`. EOFError when the
        master closed the link."""
        try:
            message = self.connection.read(timeout)
        except MgpuError as e:
            if e.code == errors.TIMEOUT:
                return None
            raise
        if message is None:
            raise EOFError("the master closed the link")
        return message

    def _handle(self, message):
        type_, fields = protocol.check_node_message(message, protocol.MASTER_TO_NODE)
        if type_ == "release":
            if self._timing is not None and self._timing[3] is None:
                self._timing[3] = time.perf_counter()
        elif type_ == "launch":
            job = fields["job"]
            if self._timing is not None:
                self._timing[1] = time.perf_counter()
            self.launches += 1
            self.running[(job["id"], job["attempt"])] = True
            self._send("job_started", job_id=job["id"], attempt=job["attempt"], sup_pid=1, sup_start=1, pgid=1)
            if self._timing is not None:
                timing, self._timing = self._timing, None
                timing[2].set()


def print_end_to_launch(times, sims):
    lost = sum(1 for t in times if t is None)
    times = [t for t in times if t is not None] or [(float("nan"), float("nan"))]
    launch = [t[0] * 1000 for t in times]
    release = [t[1] * 1000 for t in times]
    print("       job_exited -> next launch at that node, %d runs    %7.1f ms median (min %.1f, max %.1f)%s"
          % (len(times), statistics.median(launch), min(launch), max(launch),
             "; %d more had no launch within 10 s" % lost if lost else ""))
    print("       job_exited -> its release (sent just before that launch) %5.1f ms median (min %.1f, max %.1f)"
          % (statistics.median(release), min(release), max(release)))
    drops = [sim for sim in sims if sim.drops]
    if drops:
        print("       node links the master dropped so far (each node joined again): %d, on %d nodes; last: %s"
              % (sum(sim.drops for sim in drops), len(drops), drops[-1].last_drop))


def all_launched(sims, gpus):
    for sim in sims:
        if sim.failed:
            raise SystemExit("bench_nodes: simulated node %s: %s" % (sim.node_name, sim.failed))
    return sum(sim.launches for sim in sims) >= gpus


def start_sim_nodes(count, first, key, port, existing):
    context = auth.client_context(key)
    nodes = []
    for i in range(first, first + count):
        node = SimNode(key, context, port, "sim%03d" % i)
        node.start()
        nodes.append(node)
        if len(nodes) % 16 == 0:  # keep the master's accept backlog and handshakes in step
            for each in nodes[-16:]:
                each.registered.wait(30)
    for node in nodes:
        node.registered.wait(30)
        if node.failed:
            raise SystemExit("bench_nodes: simulated node %s: %s" % (node.node_name, node.failed))
    wait_until(lambda: len(mgpu_client.call("queue", state="RUNNING")["nodes"]) >= existing + count + 1,
               30, "%d simulated nodes to be up" % count)
    return nodes


# ---------------------------------------------------------------------------------------------


def keygen(workdir):
    path = os.path.join(workdir, "cluster.key")
    done = subprocess.run(CLI + ["keygen", "--output", path], env=cli_env("/nonexistent"),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit("bench_nodes: keygen failed: %s" % (done.stderr.strip() or done.stdout.strip()))
    return path


def real_nodes(args, workdir, pool, output_dir):
    """Sections 1 and 2."""
    key_path = os.path.join(workdir, "cluster.key")
    port = free_port()
    master = Master(os.path.join(workdir, "m1"), key_path, port)
    relay = CountingRelay(port)
    nodes = []
    try:
        for i in range(args.real_nodes):
            home = os.path.join(workdir, "node%d" % i)
            os.makedirs(home)
            # The last node reaches the master through the counting relay (section 2).
            target = relay.port if i == args.real_nodes - 1 else port
            argv = CLI + ["node", "--master", "127.0.0.1:%d" % target, "--key", key_path,
                          "--name", "node%d" % i, "--socket", os.path.join(home, "mgpu.sock"),
                          "--state-dir", os.path.join(home, "state"), "--fake-gpus", "2",
                          "--heartbeat-interval", "1"]
            nodes.append(Daemon(argv, cli_env(os.path.join(home, "mgpu.sock")), os.path.join(home, "node.log")))

        def all_up():
            for node in nodes:
                if not node.alive():
                    raise SystemExit("bench_nodes: a node agent exited; see %s" % node.log_path)
            return len(master.remote_nodes()) == len(nodes)
        wait_until(all_up, 30, "the node agents to join")

        fields = submit_fields(["true"], output_dir, dict(os.environ), gpus=1)
        taken, start = submit_concurrently(pool, args.clients, master.socket, args.jobs, fields)
        wait_until(lambda: not active_jobs(), 300, "the jobs to finish", interval=0.1)
        done = time.perf_counter()
        finished = mgpu_client.call("queue", all=True)["jobs"]
        by_node = collections.Counter(j["node"] for j in finished if j["state"] == "COMPLETED")
        other = collections.Counter(j["state"] for j in finished if j["state"] != "COMPLETED")
        print("  1. %d x 'true' --gpus 1 over %d mgpu node agents x 2 fake GPUs (master: 0 GPUs), "
              "%d clients on kept connections:" % (args.jobs, len(nodes), args.clients))
        print("     submit rate at the master                  %7.0f jobs/s" % (args.jobs / taken))
        print("     end to end (first submit to last end)      %7.1f jobs/s  (%d completed%s)"
              % (args.jobs / (done - start), sum(by_node.values()),
                 "".join(", %d %s" % (n, s) for s, n in sorted(other.items()))))
        print("     jobs per node (policy fill_first):          %s"
              % ", ".join("%s %d" % (n, by_node.get(n, 0)) for n in ("node%d" % i for i in range(len(nodes)))))

        # 2. The idle node's heartbeats, through the relay.
        frame = len(protocol.encode(protocol.node_message("node_heartbeat")))
        with_usage = len(protocol.encode(protocol.node_message("node_heartbeat", usage={"0": 0, "1": 0})))
        time.sleep(1.0)
        up0, down0, reads0 = relay.counts()
        t0 = time.perf_counter()
        time.sleep(args.heartbeat_window)
        up1, down1, reads1 = relay.counts()
        elapsed = time.perf_counter() - t0
        print("  2. heartbeats of an idle node (interval 1 s here; 30 s by default):")
        print("     frame node_heartbeat (fake GPUs send no usage)  %4d B; with usage of 2 GPUs %d B"
              % (frame, with_usage))
        print("     TLS 1.3: frame + %d B per record (5 header, 1 type, 16 tag)  %4d B per heartbeat"
              % (TLS13_RECORD_OVERHEAD, frame + TLS13_RECORD_OVERHEAD))
        print("     counted by a relay between node%d and the master over %.1f s idle: node->master %.1f B/s "
              "(%d reads), master->node %.1f B/s" % (len(nodes) - 1, elapsed, (up1 - up0) / elapsed,
                                                    reads1 - reads0, (down1 - down0) / elapsed))
        print("     per node at the default 30 s interval: %.1f B/s of TLS records (plus TCP/IP headers, "
              "about 52 B per segment and its ACK)" % ((frame + TLS13_RECORD_OVERHEAD) / 30.0))
    finally:
        for node in nodes:
            node.stop()
        relay.close()
        master.stop()


def simulated_nodes(args, workdir, pool, output_dir):
    """Section 3."""
    key_path = os.path.join(workdir, "cluster.key")
    key = auth.load_key(key_path)
    port = free_port()
    master = Master(os.path.join(workdir, "m2"), key_path, port)
    sims = []
    try:
        time.sleep(0.3)
        idle_rss = master.rss_mb()
        print("  3. simulated nodes (8 fake GPUs each, heartbeat 1 s, jobs kept running), every GPU busy, "
              "%d jobs pending; master RSS idle with no node %.1f MB" % (args.pending, idle_rss))
        fields = submit_fields(["sleep", "3600"], output_dir, SMALL_ENV, gpus=1)
        submitted = 0
        for count in args.sim_nodes:
            added = count - len(sims)
            sims += start_sim_nodes(added, len(sims), key, port, len(sims))
            gpus = 8 * len(sims)
            if not submitted:
                # A baseline: the same job end with a short queue (from `samples` pending jobs down).
                taken, _ = submit_concurrently(pool, args.clients, master.socket, gpus + args.samples, fields)
                wait_until(lambda: all_launched(sims, gpus), 120, "%d launches at the simulated nodes" % gpus, 0.2)
                time.sleep(1.0)
                times = [sims[(i * 7) % len(sims)].end_one() for i in range(args.samples)]
                submitted = gpus
                print("     %d nodes, every GPU busy, %d to 1 jobs pending (baseline):" % (len(sims), args.samples))
                print_end_to_launch(times, sims)
            # Top the queue up to `pending` jobs waiting beyond the GPUs of every node.
            more = gpus + args.pending - submitted
            taken, _ = submit_concurrently(pool, args.clients, master.socket, more, fields)
            submitted += more
            wait_until(lambda: all_launched(sims, gpus), 120, "%d launches at the simulated nodes" % gpus, 0.2)
            time.sleep(1.5)  # the job_started reports land; heartbeats go on
            jobs = active_jobs()
            states = collections.Counter(j["state"] for j in jobs)
            rss = master.rss_mb()
            threads = proc_status(master.pid, "Threads")
            c0, t0 = cpu_seconds(master.pid), time.perf_counter()
            time.sleep(args.cpu_window)
            idle_cpu = (cpu_seconds(master.pid) - c0) / (time.perf_counter() - t0) * 100
            times = [sims[(i * 7) % len(sims)].end_one() for i in range(args.samples)]
            queue_ms = []
            for _ in range(args.queue_runs):
                t = time.perf_counter()
                subprocess.run(CLI + ["queue"], env=master.env, stdout=subprocess.DEVNULL, check=True)
                queue_ms.append((time.perf_counter() - t) * 1000)
            print("     %d nodes (%d GPUs), %d running, %d pending (%d submitted at %.0f jobs/s):"
                  % (len(sims), gpus, states["RUNNING"], states["PENDING"], more, more / taken))
            print("       master RSS                                       %7.1f MB  (%d threads)" % (rss, threads))
            print("       master CPU, heartbeats only (%.0f s)               %7.1f %% of one core"
                  % (args.cpu_window, idle_cpu))
            print_end_to_launch(times, sims)
            print("       mgpu queue (all %d active jobs, CLI process), %d runs %7.0f ms median"
                  % (len(jobs), len(queue_ms), statistics.median(queue_ms)))
            if args.usage_window and count == args.sim_nodes[-1]:
                # An NVML node's heartbeat carries its GPUs' usage, which marks the queue for a
                # full pass: what that costs the master with this many nodes.
                for sim in sims:
                    sim.usage = True
                time.sleep(1.2)
                c0, t0 = cpu_seconds(master.pid), time.perf_counter()
                time.sleep(args.usage_window)
                usage_cpu = (cpu_seconds(master.pid) - c0) / (time.perf_counter() - t0) * 100
                for sim in sims:
                    sim.usage = False
                print("       master CPU, heartbeats with GPU usage (as NVML nodes send) %5.1f %% of one core"
                      % usage_cpu)
            submitted -= len(times)  # each job end above let a pending job start
    finally:
        for sim in sims:
            sim.stop()
        master.stop()
        for sim in sims:
            sim.join(5)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--real-nodes", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--pending", type=int, default=10000)
    parser.add_argument("--sim-nodes", default="64,256")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--queue-runs", type=int, default=3)
    parser.add_argument("--heartbeat-window", type=float, default=3.0)
    parser.add_argument("--cpu-window", type=float, default=2.0)
    parser.add_argument("--usage-window", type=float, default=2.0)
    args = parser.parse_args()
    args.sim_nodes = [int(n) for n in args.sim_nodes.split(",")]
    if shutil.which("openssl") is None:
        print("bench_nodes: needs the openssl command to make a cluster key")
        return 0
    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="mgpu-bench-nodes-")
    output_dir = os.path.join(workdir, "out")
    os.makedirs(output_dir)
    os.chmod(workdir, 0o755)
    print("mgpu several-hosts bench (python -m mgpu, loopback), %d CPUs" % os.cpu_count())
    # The client processes are forked now, before this process has any thread.
    pool = multiprocessing.get_context("fork").Pool(args.clients)
    try:
        pool.map(abs, range(args.clients))
        keygen(workdir)
        real_nodes(args, workdir, pool, output_dir)
        simulated_nodes(args, workdir, pool, output_dir)
    finally:
        pool.terminate()
        pool.join()
        shutil.rmtree(workdir, ignore_errors=True)
    print("  (%.0f s in all)" % (time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
