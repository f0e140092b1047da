"""The cost of an authenticated master<->node link on loopback: the TLS 1.3 handshake with the
cluster key (new TCP connection, handshake, pinning check on both ends), and framed round trips
over one kept TLS connection against plain TCP. Figures only, no pass/fail; under 30 s.

Run: PYTHONPATH=src python3 bench/bench_link.py
"""

import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from mgpu import auth, launcher, transport  # noqa: E402
from mgpu.cli import keygen  # noqa: E402

HANDSHAKES = 300
ROUND_TRIPS = 5000
MESSAGE = {"v": 1, "type": "heartbeat", "node": "gpu7", "gpus": [{"index": i, "used_mb": 1234} for i in range(8)]}


def make_key(directory):
    path = os.path.join(directory, "cluster.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(launcher.run_openssl(keygen.openssl_arguments()))
    return auth.load_key(path)


def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def handshake_server(sock, key, count):
    context = auth.server_context(key)
    for _ in range(count):
        conn, _ = sock.accept()
        try:
            tls = auth.wrap_server(conn, context, key)
            tls.close()
        except Exception as e:
            print("server: %s" % e, file=sys.stderr)


def bench_handshakes(key):
    sock = listener()
    port = sock.getsockname()[1]
    server = threading.Thread(target=handshake_server, args=(sock, key, HANDSHAKES), daemon=True)
    server.start()
    context = auth.client_context(key)
    times = []
    for _ in range(HANDSHAKES):
        started = time.perf_counter()
        tls = auth.wrap_client(socket.create_connection(("127.0.0.1", port)), context, key)
        times.append(time.perf_counter() - started)
        tls.close()
    server.join()
    sock.close()
    return times


def echo_server(sock, key):
    conn, _ = sock.accept()
    if key is not None:
        conn = auth.wrap_server(conn, auth.server_context(key), key)
    connection = transport.Connection(conn)
    while True:
        line = connection.read_line(10)
        if line is None:
            break
        connection.send_raw(line)
    connection.close()


def bench_round_trips(key):
    sock = listener()
    server = threading.Thread(target=echo_server, args=(sock, key), daemon=True)
    server.start()
    conn = socket.create_connection(("127.0.0.1", sock.getsockname()[1]))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if key is not None:
        conn = auth.wrap_client(conn, auth.client_context(key), key)
    connection = transport.Connection(conn)
    started = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        connection.send(MESSAGE)
        connection.read(10)
    elapsed = time.perf_counter() - started
    connection.close()
    server.join()
    sock.close()
    return ROUND_TRIPS / elapsed


def bench_in_memory(key):
    client, server = auth.client_context(key), auth.server_context(key)
    times = []
    for _ in range(HANDSHAKES):
        started = time.perf_counter()
        auth.handshake_in_memory(client, server, key)
        times.append(time.perf_counter() - started)
    return times


def main():
    if shutil.which("openssl") is None:
        print("bench_link: needs the openssl command to make a cluster key")
        return 0
    directory = tempfile.mkdtemp(prefix="bench-link-")
    try:
        started = time.perf_counter()
        key = make_key(directory)
        keygen_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        auth.server_context(key)
        context_ms = (time.perf_counter() - started) * 1000
        handshakes = bench_handshakes(key)
        in_memory = bench_in_memory(key)
        tls_rate = bench_round_trips(key)
        plain_rate = bench_round_trips(None)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    ms = lambda values, q: statistics.quantiles(values, n=100)[q - 1] * 1000  # noqa: E731
    print("link (TLS 1.3, EC P-256 cluster key, mutual authentication, pinned), loopback:")
    print("  keygen (openssl)                         %8.1f ms" % keygen_ms)
    print("  one TLS context (key file read, checked) %8.2f ms" % context_ms)
    print("  connect + handshake + pinning, %d links: median %.2f ms, p90 %.2f ms, p99 %.2f ms"
          % (HANDSHAKES, statistics.median(handshakes) * 1000, ms(handshakes, 90), ms(handshakes, 99)))
    print("  handshake in memory (crypto only, both ends in one thread): median %.2f ms"
          % (statistics.median(in_memory) * 1000))
    print("  framed round trips (%d B heartbeat-sized frame), one kept connection:" % len(
        transport.protocol.encode(MESSAGE)))
    print("    TLS 1.3     %8.0f /s" % tls_rate)
    print("    plain TCP   %8.0f /s   (TLS costs %.0f%%)" % (plain_rate, (plain_rate / tls_rate - 1) * 100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
