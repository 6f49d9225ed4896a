"""``gateway serve`` (production entry point) and ``gateway demo`` (self-contained tour)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

import uvloop

from .config import Settings
from .errors import ConfigError
from .logs import setup_logging

log = logging.getLogger("gateway")


def _workers_arg(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0 (0 = one per CPU core)")
    return n


def cmd_serve(args: argparse.Namespace) -> int:
    """Supervisor + N worker processes on one port (see ``gateway.runtime``); also for N = 1."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    workers = getattr(args, "workers", None)
    workers = settings.workers if workers is None else workers
    workers = workers or os.cpu_count() or 1
    host = args.host if args.host is not None else settings.host
    port = args.port if args.port is not None else settings.port
    if not 0 <= port < 65536:
        print(f"gateway: port {port} out of range", file=sys.stderr)
        return 2
    if port == 0 and workers > 1:
        print(f"gateway: port 0 cannot be shared by {workers} workers (each would get its own random port); "
              "pick a port or use --workers 1", file=sys.stderr)
        return 2
    from .agents.profiles import load as load_agents

    try:
        agents = load_agents(settings)  # a bad agents file stops here, in one line
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, worker="supervisor")
    log.info("agents from %s: %s", agents.source, ", ".join(agents.agents))
    log.info("settings %s", settings.public())
    from .runtime.supervisor import Supervisor

    return Supervisor(workers, host, port, drain_timeout_s=settings.drain_timeout_s).run()


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return uvloop.run(run_demo(verbose=args.verbose, audio_mode=args.audio_mode))


def cmd_run(args: argparse.Namespace) -> int:
    """The README's run command: serve with real keys, else the self-contained demo."""
    if os.environ.get("OPENAI_API_KEY"):
        return cmd_serve(args)
    print("OPENAI_API_KEY is not set: running the self-contained demo (gateway + simulators).", flush=True)
    args.verbose, args.audio_mode = False, os.environ.get("GATEWAY_AUDIO_MODE", "passthrough")
    return cmd_demo(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (configuration from environment variables)")
    serve.add_argument("--host", default=None, help="overrides GATEWAY_HOST")
    serve.add_argument("--port", type=int, default=None, help="overrides GATEWAY_PORT")
    serve.add_argument("--workers", type=_workers_arg, default=None,
                       help="worker processes (overrides GATEWAY_WORKERS; 0 = one per CPU core)")
    serve.set_defaults(func=cmd_serve)
    run = sub.add_parser("run", help="serve if OPENAI_API_KEY is set, else run the demo")
    run.add_argument("--host", default=None)
    run.add_argument("--port", type=int, default=None)
    run.add_argument("--workers", type=_workers_arg, default=None)
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="gateway + Twilio and OpenAI simulators on loopback, every barge-in phase")
    demo.add_argument("--audio-mode", choices=("passthrough", "pcm16"), default="passthrough")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the gateway's JSON logs")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
