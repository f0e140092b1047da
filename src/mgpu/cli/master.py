"""`mgpu master`: run the scheduler daemon in the foreground."""

from mgpu.cli.common import Parser

DESCRIPTION = """Run the mgpu scheduler on this host, in the foreground, logging one line per event
to stderr. As root it serves every local user and runs each job as the user who submitted it;
started by an ordinary user it runs in single-user mode (that user's jobs only, no sudo needed).
Each option can also be set in the YAML config (same name, '-' written '_')."""

EXAMPLES = """examples:
  sudo mgpu master                               GPUs from NVML, /run/mgpu/mgpu.sock, /var/lib/mgpu
  sudo mgpu master --max-job-time 4:00:00         requeue jobs past 4 h while others wait for their GPUs
  mgpu master --fake-gpus 4:81920                 try it without GPUs or root (single-user mode)
  sudo mgpu master --config /etc/mgpu/mgpu.yaml   options from a file (the default when present)
  sudo mgpu master --listen 10.0.0.1:8080 --key /etc/mgpu/cluster.key
                                                 also schedule the GPUs of node agents (mgpu node)
"""


def build_parser():
    parser = Parser(prog="mgpu master", description=DESCRIPTION, epilog=EXAMPLES)
    parser.add_argument("--config", metavar="PATH", help="YAML config (default /etc/mgpu/mgpu.yaml when present, as root)")
    parser.add_argument("--socket", metavar="PATH", help="UNIX socket (also MGPU_SOCKET; default /run/mgpu/mgpu.sock as root)")
    parser.add_argument("--state-dir", metavar="DIR", help="state database directory (default /var/lib/mgpu as root)")
    parser.add_argument("--fake-gpus", metavar="N[:MB]", help="declare N fake GPUs of MB memory instead of NVML (e.g. 4:81920)")
    parser.add_argument("--max-job-time", metavar="TIME", help="time slice (seconds or [D-]HH:MM:SS): longer jobs are requeued while others wait for their GPUs")
    parser.add_argument("--kill-grace", metavar="SECONDS", type=float, help="seconds from SIGTERM to SIGKILL when stopping a job (default 10)")
    parser.add_argument("--policy", choices=("fill_first", "spread"), help="GPU choice (default fill_first)")
    parser.add_argument("--max-user-priority", metavar="P", type=int, help="highest --priority for ordinary users (default 100)")
    parser.add_argument("--node-name", metavar="NAME", help="this host's name in the cluster (default: host name)")
    parser.add_argument("--allow-root-jobs", action="store_true", default=None, help="run jobs submitted by root as root")
    parser.add_argument("--listen", metavar="HOST[:PORT]", help="accept node agents of other GPU hosts here (TLS; port 8080 by default)")
    parser.add_argument("--key", metavar="PATH", help="the cluster key made by 'mgpu keygen' (default /etc/mgpu/cluster.key)")
    parser.add_argument("--node-timeout", metavar="SECONDS", type=float, help="a node silent this long is down (default 60)")
    parser.add_argument("--heartbeat-interval", metavar="SECONDS", type=float, help="heartbeat period told to node agents (default 30)")
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    from mgpu import bundle, config
    from mgpu.master import Master

    bundle.prepare_daemon()  # before the launcher helper is forked

    overrides = {"socket": args.socket, "state_dir": args.state_dir, "fake_gpus": args.fake_gpus,
                 "max_job_time": args.max_job_time, "kill_grace": args.kill_grace, "policy": args.policy,
                 "max_user_priority": args.max_user_priority, "node_name": args.node_name,
                 "allow_root_jobs": args.allow_root_jobs, "listen": args.listen, "key_file": args.key,
                 "node_timeout": args.node_timeout, "heartbeat_interval": args.heartbeat_interval}
    settings = config.load(args.config, overrides)
    return Master(settings).run()
