"""`mgpu node`: run a node agent in the foreground, joining this host's GPUs to a master."""

from mgpu.cli.common import Parser

DESCRIPTION = """Join this host's GPUs to an mgpu master, in the foreground, logging one line per
event to stderr. The node connects to the master over TLS 1.3, both ends proving they hold the
cluster key (made once with 'mgpu keygen', copied to every host), registers its GPUs, sends a
heartbeat every --heartbeat-interval seconds, and runs the jobs the master places here, each as
the same user name on this host, under the same supervisors as on the master's host. When the
link breaks it reconnects by itself; running jobs do not depend on this daemon (a restarted node
takes them over again). Run it as root. Flags win over the environment (MGPU_MASTER_HOST,
MGPU_MASTER_PORT), which wins over the YAML config (same names, '-' written '_')."""

EXAMPLES = """examples:
  sudo mgpu node --master 10.0.0.1:8080 --key /etc/mgpu/cluster.key
                                                  join the master at 10.0.0.1, GPUs from NVML
  sudo MGPU_MASTER_HOST=gpu1 mgpu node            the master's address from the environment (port 8080)
  sudo mgpu node --config /etc/mgpu/mgpu.yaml     options from a file (the default when present)
  sudo mgpu node --master gpu1 --name gpu7 --fake-gpus 2:24000
                                                  try it without GPUs: two fake 24 GB GPUs
  sudo mgpu node --master gpu1 --submit-only      a login host: its users submit from here, no job runs here
"""


def build_parser():
    parser = Parser(prog="mgpu node", description=DESCRIPTION, epilog=EXAMPLES)
    parser.add_argument("--config", metavar="PATH", help="YAML config (default /etc/mgpu/mgpu.yaml when present, as root)")
    parser.add_argument("--master", metavar="HOST:PORT", help="where the master listens (also MGPU_MASTER_HOST and MGPU_MASTER_PORT; port 8080 by default)")
    parser.add_argument("--key", metavar="PATH", help="the cluster key (default /etc/mgpu/cluster.key)")
    parser.add_argument("--name", metavar="NAME", help="this host's name in the cluster (default: host name)")
    parser.add_argument("--socket", metavar="PATH", help="UNIX socket for this host's clients, relayed to the master (also MGPU_SOCKET; default /run/mgpu/mgpu.sock as root)")
    parser.add_argument("--state-dir", metavar="DIR", help="where job records are kept (default /var/lib/mgpu as root)")
    parser.add_argument("--fake-gpus", metavar="N[:MB]", help="declare N fake GPUs of MB memory instead of NVML (e.g. 4:81920)")
    parser.add_argument("--submit-only", action="store_true", default=None,
                        help="a host without GPUs whose users submit from here: relay their requests, run no job")
    parser.add_argument("--heartbeat-interval", metavar="SECONDS", type=float,
                        help="seconds between heartbeats (default 30; the master's value wins once joined)")
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    from mgpu import bundle, config
    from mgpu.node import NodeDaemon

    bundle.prepare_daemon()  # before the launcher helper is forked

    overrides = {"master": args.master, "key_file": args.key, "node_name": args.name, "socket": args.socket,
                 "state_dir": args.state_dir, "fake_gpus": args.fake_gpus,
                 "heartbeat_interval": args.heartbeat_interval, "submit_only": args.submit_only}
    settings = config.load(args.config, overrides)
    return NodeDaemon(settings).run()
