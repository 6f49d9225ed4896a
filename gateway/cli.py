"""``gateway serve`` (production entry point) and ``gateway demo`` (self-contained tour)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop

from .config import Settings
from .errors import ConfigError
from .logs import setup_logging

log = logging.getLogger("gateway")


async def _serve(settings: Settings, host: str | None, port: int | None) -> None:
    from .server import Gateway

    gateway = Gateway(settings)
    await gateway.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: stopping")
    await gateway.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    log.info("starting", extra={})
    log.info("settings %s", settings.public())
    uvloop.run(_serve(settings, args.host, args.port))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return uvloop.run(run_demo(verbose=args.verbose, audio_mode=args.audio_mode))


def cmd_run(args: argparse.Namespace) -> int:
    """The README's run command: serve with real keys, else the self-contained demo."""
    import os

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
    serve.set_defaults(func=cmd_serve)
    run = sub.add_parser("run", help="serve if OPENAI_API_KEY is set, else run the demo")
    run.add_argument("--host", default=None)
    run.add_argument("--port", type=int, default=None)
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="gateway + Twilio and OpenAI simulators on loopback, every barge-in phase")
    demo.add_argument("--audio-mode", choices=("passthrough", "pcm16"), default="passthrough")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the gateway's JSON logs")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
