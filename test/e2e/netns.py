"""Several hosts on one machine for end-to-end tests: one network namespace per host.

    with Network(hosts=3) as net:          # h0, h1, h2 at 10.213.7.10, .11, .12
        net.run_in("h1", ["mgpu", "node", ...], stdout=log)
        net.cut("h1"); ...; net.restore("h1")

Layout: a bridge `br0` in a namespace of its own (`mgpu-t-TAG-br`), one namespace per host
(`mgpu-t-TAG-hN`) with `lo` and `eth0` up and 10.213.7.(10+N)/24 on `eth0`; `eth0` is one end of
a veth pair whose other end (`hN`) is a port of the bridge. The veth pairs are created inside
the bridge's namespace with their peer placed straight into the host's, so no test interface
ever exists in the root namespace.

Safety: the test addresses exist only inside these namespaces and are reached only from inside
one (`ip netns exec`). From the root namespace they would be routed off the machine, so while a
Network lives the root namespace holds `blackhole 10.213.7.0/24`; several Networks (even in
several processes) share that route, and the last one to go removes it. A /24 routed in the root
namespace by anything else is refused.

What the namespaces do not separate: the filesystem, pids, users and the host name. Give each
host its own state directory, socket path and node name. `ip netns exec` also runs the command
in a mount namespace of its own where /sys is the network namespace's sysfs: the cgroup
hierarchies mounted under /sys/fs/cgroup are not visible there, so a daemon started with
run_in() finds no cgroup v2 hierarchy and falls back to what it does without one.

A cut (`cut(host)`) sets the bridge's end of the host's veth down: the host keeps its address
and its sockets, sends fail silently and nothing arrives, as when a cable or a switch port dies;
an open TCP connection survives the cut and carries on after `restore(host)` unless an end
gave up on it meanwhile.
"""

import atexit
import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

SUBNET = "10.213.7.0/24"
ADDRESS_PREFIX = "10.213.7."
FIRST_HOST_OCTET = 10  # hN is 10.213.7.(10+N)
NAMESPACE_PREFIX = "mgpu-t-"

# Who holds the blackhole route: one line "pid token" per live Network, under an flock.
ROUTE_HOLDERS = "/run/mgpu-test-netns-route.holders"

_live_networks = set()


def unavailable():
    """Why namespaces cannot be made here (a line for pytest.skip), or None."""
    if os.getuid() != 0:
        return "needs root (creates network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (the ip command)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "ip netns is not available: %s" % (probe.stderr.strip() or "exit %d" % probe.returncode)
    route = _root_route()
    if route and not route.startswith("blackhole"):
        return "%s is routed in the root namespace (%s): refusing to use it for tests" % (SUBNET, route)
    return None


def _ip(*args, check=True):
    result = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), result.stderr.strip() or "exit %d" % result.returncode))
    return result


def _root_route():
    """The root namespace's route for exactly SUBNET ('' when none)."""
    return _ip("route", "show", "exact", SUBNET, check=False).stdout.strip()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _change_route_holders(token, add):
    """Add or remove `token` as a holder of the blackhole route, adding the route for the first
    holder and deleting it after the last. Holders whose process is gone do not count."""
    with open(ROUTE_HOLDERS, "a+") as handle:
        os.chmod(ROUTE_HOLDERS, 0o600)
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        holders = []
        for line in handle.read().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and _pid_alive(int(parts[0])) and parts[1] != token:
                holders.append(line)
        route = _root_route()
        if add:
            if not route:
                _ip("route", "add", "blackhole", SUBNET)
            elif not route.startswith("blackhole"):
                raise RuntimeError("%s is routed in the root namespace (%s)" % (SUBNET, route))
            holders.append("%d %s" % (os.getpid(), token))
        elif not holders and route.startswith("blackhole"):
            _ip("route", "del", "blackhole", SUBNET)
        handle.seek(0)
        handle.truncate()
        handle.write("".join(line + "\n" for line in holders))


def route_holders():
    """The live holders of the blackhole route, as "pid token" lines."""
    try:
        with open(ROUTE_HOLDERS) as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if line.split()[:1] and line.split()[0].isdigit() and _pid_alive(int(line.split()[0]))]


def blackhole_route():
    """The root namespace's blackhole route for the test subnet ('' when none)."""
    route = _root_route()
    return route if route.startswith("blackhole") else ""


# Sends one ICMP echo request and waits for its reply; run inside a namespace (root only).
_PING = r"""
import os, socket, struct, sys, time
def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
target, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
ident, payload = os.getpid() & 0xFFFF, b"mgpu-netns-ping"
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sequence = 0
while time.monotonic() < deadline:
    sequence += 1
    header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
    sock.sendto(struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, sequence) + payload, (target, 0))
    sock.settimeout(0.3)
    try:
        while True:
            data, peer = sock.recvfrom(2048)
            start = (data[0] & 15) * 4
            kind, _, _, got_ident, _ = struct.unpack("!BBHHH", data[start:start + 8])
            if kind == 0 and got_ident == ident and peer[0] == target:
                sys.exit(0)
    except (socket.timeout, OSError):
        pass
sys.exit(1)
"""


class Network:
    """Hosts h0..h(N-1), each in its own network namespace, on one bridge (see the module's
    docstring). setup() and teardown() (or `with`); teardown removes everything setup made,
    also after a failed setup, and is idempotent."""

    def __init__(self, hosts=3, tag=None):
        if not 1 <= hosts <= 200:
            raise ValueError("hosts must be 1..200")
        self.tag = tag or secrets.token_hex(3)
        self.hosts = ["h%d" % n for n in range(hosts)]
        self.bridge_namespace = "%s%s-br" % (NAMESPACE_PREFIX, self.tag)
        self.created = []  # namespaces made so far, in order
        self.processes = []  # what run_in started
        self.setup_seconds = None
        self.teardown_seconds = None
        self._route_token = None
        self._torn_down = False

    # --- naming -----------------------------------------------------------------------------

    def _index(self, host):
        name = host if isinstance(host, str) else "h%d" % host
        if name not in self.hosts:
            raise KeyError("no host %r in this network (hosts: %s)" % (host, ", ".join(self.hosts)))
        return int(name[1:])

    def namespace(self, host):
        return "%s%s-h%d" % (NAMESPACE_PREFIX, self.tag, self._index(host))

    def address(self, host):
        return "%s%d" % (ADDRESS_PREFIX, FIRST_HOST_OCTET + self._index(host))

    def bridge_port(self, host):
        """The bridge's end of the host's veth (in the bridge's namespace)."""
        return "h%d" % self._index(host)

    # --- life cycle ---------------------------------------------------------------------------

    def __enter__(self):
        return self.setup()

    def __exit__(self, *exc):
        problems = self.teardown()
        if problems and exc[0] is None:
            raise RuntimeError("network teardown: " + "; ".join(problems))

    def setup(self):
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        started = time.monotonic()
        _live_networks.add(self)
        try:
            self._route_token = "%s-%s" % (self.tag, secrets.token_hex(4))
            _change_route_holders(self._route_token, add=True)
            bridge = self.bridge_namespace
            self._add_namespace(bridge)
            _ip("-n", bridge, "link", "set", "lo", "up")
            _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", bridge, "link", "set", "br0", "up")
            for host in self.hosts:
                namespace, port = self.namespace(host), self.bridge_port(host)
                self._add_namespace(namespace)
                _ip("-n", bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
                _ip("-n", bridge, "link", "set", port, "master", "br0", "up")
                _ip("-n", namespace, "link", "set", "lo", "up")
                _ip("-n", namespace, "addr", "add", self.address(host) + "/24", "dev", "eth0")
                _ip("-n", namespace, "link", "set", "eth0", "up")
        except BaseException:
            self.teardown()
            raise
        self.setup_seconds = time.monotonic() - started
        return self

    def _add_namespace(self, name):
        _ip("netns", "add", name)
        self.created.append(name)

    def teardown(self):
        """Kill what runs in the namespaces, delete them (and with them the veths and the
        bridge), release the blackhole route. A list of what could not be undone (empty when
        all went well)."""
        if self._torn_down:
            return []
        self._torn_down = True
        started = time.monotonic()
        problems = []
        for process in self.processes:
            if process.poll() is None:
                try:
                    process.kill()
                except OSError:
                    pass
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                problems.append("pid %d (started in a namespace) did not die" % process.pid)
        # Processes our daemons started in a namespace (jobs, supervisors) live on in it.
        for namespace in self.created:
            deadline = time.monotonic() + 5
            while True:
                pids = self._namespace_pids(namespace)
                if not pids:
                    break
                if time.monotonic() > deadline:
                    problems.append("processes %s still run in %s" % (sorted(pids), namespace))
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.05)
        for namespace in reversed(self.created):
            result = _ip("netns", "del", namespace, check=False)
            if result.returncode != 0:
                problems.append("ip netns del %s: %s" % (namespace, result.stderr.strip()))
        self.created = []
        if self._route_token:
            try:
                _change_route_holders(self._route_token, add=False)
            except (OSError, RuntimeError) as error:
                problems.append("blackhole route: %s" % error)
            self._route_token = None
        _live_networks.discard(self)
        self.teardown_seconds = time.monotonic() - started
        return problems

    @staticmethod
    def _namespace_pids(namespace):
        result = _ip("netns", "pids", namespace, check=False)
        return {int(word) for word in result.stdout.split() if word.isdigit() and int(word) != os.getpid()}

    # --- using it -----------------------------------------------------------------------------

    def command(self, host, argv):
        """`argv` prefixed to run inside the host's namespace."""
        return ["ip", "netns", "exec", self.namespace(host)] + [str(a) for a in argv]

    def run_in(self, host, argv, **popen_kwargs):
        """Start `argv` inside the host's namespace: a Popen whose pid is the command's own
        (`ip netns exec` execs it), killed at teardown if still alive."""
        process = subprocess.Popen(self.command(host, argv), **popen_kwargs)
        self.processes.append(process)
        return process

    def run(self, host, argv, timeout=30, **kwargs):
        """Run `argv` in the host's namespace to the end: a CompletedProcess (text output)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(host, argv), timeout=timeout, **kwargs)

    def pids(self, host):
        """Pids of every process in the host's network namespace."""
        return self._namespace_pids(self.namespace(host))

    def ping(self, source, target, timeout=2.0):
        """True when an ICMP echo from inside `source` to `target`'s address is answered
        within `timeout` seconds."""
        result = self.run(source, [sys.executable, "-S", "-c", _PING, self.address(target), str(timeout)],
                          timeout=timeout + 10)
        return result.returncode == 0

    def cut(self, host):
        """Cut the host off the network (its bridge port down); restore() undoes it."""
        _ip("-n", self.bridge_namespace, "link", "set", self.bridge_port(host), "down")

    def restore(self, host):
        _ip("-n", self.bridge_namespace, "link", "set", self.bridge_port(host), "up")


@atexit.register
def _teardown_forgotten_networks():
    for network in list(_live_networks):
        network.teardown()
