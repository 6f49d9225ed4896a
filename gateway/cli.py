"""The ``gateway`` command: run, serve, demo, check."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import ConfigError

log = logging.getLogger("gateway")

DESCRIPTION = """\
Twilio Media Streams <-> OpenAI Realtime gateway.

  gateway demo     everything on loopback (gateway + Twilio and OpenAI simulators), no keys needed
  gateway serve    serve real calls; configuration from environment variables
  gateway check    validate the configuration, connect to the upstream, test the public URL
                   (also: gateway doctor)
  gateway run      serve when the configuration is complete, else the demo (says which and why)
"""
EPILOG = """\
Configuration: every setting is an environment variable; `python -m gateway.config` prints them all
with their defaults and allowed values. First call from a real phone: README.md, "Connect a real
Twilio number in 5 minutes".
"""
SERVE_EPILOG = """\
Configuration comes from environment variables (OPENAI_API_KEY, TWILIO_AUTH_TOKEN,
GATEWAY_PUBLIC_URL, GATEWAY_PORT, ...); `python -m gateway.config` prints the table of all of them
with defaults and allowed values. --host, --port and --workers override their variables. Startup
prints the configuration in force (a table on a terminal, one JSON log line otherwise) and a
warning for each setting that would make every call fail. Run `gateway check` before pointing a
real number at it; `gateway demo` tries everything without keys.
"""
RUN_DESCRIPTION = """\
Serve when the configuration is complete, otherwise run the demo; one line says which and why.

  * serves when OPENAI_API_KEY and TWILIO_AUTH_TOKEN (or GATEWAY_INSECURE_DEV=1) are set;
  * refuses (exit 2, naming what is missing) when serving is asked for (--host, --port,
    --workers, or one of GATEWAY_PUBLIC_URL, GATEWAY_HOST, GATEWAY_PORT, GATEWAY_WORKERS,
    TWILIO_AUTH_TOKEN, GATEWAY_INSECURE_DEV) but the configuration is incomplete: it never
    switches to the demo behind your back;
  * otherwise runs the demo. An exported OPENAI_API_KEY alone does not serve: nothing would let
    Twilio reach the gateway yet, and the demo uses simulators, not the key.

--serve or --demo decides explicitly (the same as `gateway serve` / `gateway demo`).
"""
CHECK_DESCRIPTION = """\
Is this configuration ready for a real call? Prints what is right and what is wrong; exit 0 when
nothing is wrong, 1 when something is, 2 when the configuration itself is invalid.

  configuration   every setting validated (all wrong settings listed), fast path, security mode,
                  settings that would make every call fail
  upstream        resolves GATEWAY_UPSTREAM_URL's host, connects (TCP, TLS with the trusted CAs
                  plus GATEWAY_UPSTREAM_CA_FILE), upgrades to a WebSocket with OPENAI_API_KEY,
                  waits for session.created and closes at once, sending no event and no audio.
                  The Realtime API creates a session on every upgrade and has no cheaper way to
                  test this path with the key (GET /v1/models would check the key, not the
                  WebSocket), so the check costs one empty session.
  public URL      needs `gateway serve` running behind GATEWAY_PUBLIC_URL: GET /healthz, then a
                  POST to /twilio/voice signed with TWILIO_AUTH_TOKEN as Twilio signs it,
                  expecting TwiML whose stream URL is wss://<public host>/twilio/media. No call is
                  placed.
"""


def _option_type(field: str, flag: str) -> Any:
    """argparse type for an option that overrides a setting: parsed and checked by its ``Var``."""
    from .config import BY_FIELD

    var = BY_FIELD[field]

    def convert(text: str) -> Any:
        try:
            value = var.parse(text)
        except ValueError as exc:
            problem: str | None = str(exc)
        else:
            problem = var.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{text}: {problem}; allowed: {var.describe().replace('`', '')}")
        return value

    convert.__name__ = flag  # argparse names the type in "invalid <name> value"
    return convert


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", type=_option_type("host", "host"), default=None,
                        help="listening address (overrides GATEWAY_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=_option_type("port", "port"), default=None,
                        help="the one public port (overrides GATEWAY_PORT, default 8080)")
    parser.add_argument("--workers", type=_option_type("workers", "workers"), default=None,
                        help="worker processes (overrides GATEWAY_WORKERS; 0 = one per CPU core)")


def print_config_error(command: str, exc: ConfigError) -> None:
    from .config import TRY_THE_DEMO

    n = len(exc.problems)
    print(f"{command}: configuration error ({n} problem{'s' if n != 1 else ''}):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    demo = "" if any("`gateway demo`" in p for p in exc.problems) else f"; {TRY_THE_DEMO}"
    print(f"Every setting and its allowed values: `python -m gateway.config`{demo}.", file=sys.stderr, flush=True)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in ("host", "port", "workers") if getattr(args, name, None) is not None}


def cmd_serve(args: argparse.Namespace) -> int:
    """Supervisor + N worker processes on one port (see ``gateway.runtime``); also for N = 1."""
    from .config import Settings
    from .errors import ConfigError
    from .startup import Summary, fast_path, fast_path_refusal

    fast = fast_path()
    try:
        settings = Settings.from_env(**_overrides(args))
    except ConfigError as exc:
        print_config_error("gateway serve", exc)
        return 2
    if args.workers is not None:
        origin = "--workers"
    elif settings.workers:
        origin = "GATEWAY_WORKERS"
    else:
        origin = "one per CPU core"
    workers = settings.workers or os.cpu_count() or 1
    if settings.port == 0 and workers > 1:
        print(f"gateway serve: port 0 cannot be shared by {workers} workers (each would get its own random port); "
              "pick a port or use --workers 1", file=sys.stderr)
        return 2
    refusal = fast_path_refusal(fast)
    if refusal is not None:
        print(f"gateway serve: refusing to start: {refusal}", file=sys.stderr, flush=True)
        return 2
    from .agents.profiles import load as load_agents

    try:
        agents = load_agents(settings)  # a bad agents file stops here, in one line
    except ConfigError as exc:
        print_config_error("gateway serve", exc)
        return 2
    from .logs import setup_logging

    setup_logging(settings.log_level, worker="supervisor")
    Summary.build(settings, workers, origin, fast, agents).emit(log)
    from .control.hub import pod_name
    from .runtime.supervisor import Supervisor

    return Supervisor(workers, settings.host, settings.port, drain_timeout_s=settings.drain_timeout_s,
                      max_calls=settings.max_calls, pod=pod_name(settings)).run()


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from .demo import run_demo
    except ImportError as exc:  # the simulators validate events with the openai SDK (extra "sim")
        print(f"gateway demo: the simulators need the `sim` extra ({exc}): pip install 'voice-gateway[sim]' "
              "(in a checkout: pip install -e '.[sim]')", file=sys.stderr)
        return 2
    import uvloop

    return uvloop.run(run_demo(verbose=args.verbose, audio_mode=args.audio_mode))


def cmd_check(args: argparse.Namespace) -> int:
    from .check import run_check

    return run_check(timeout_s=args.timeout)


_SERVE_ENV = ("GATEWAY_PUBLIC_URL", "GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_WORKERS", "TWILIO_AUTH_TOKEN")


def choose_run_mode(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, str]:
    """``gateway run``: ("serve" | "demo" | "refuse", the reason in words)."""
    from .config import parse_bool

    if args.demo:
        return "demo", "--demo"
    if args.serve:
        return "serve", "--serve"
    try:
        insecure = parse_bool(env.get("GATEWAY_INSECURE_DEV", ""))
    except ValueError:
        insecure = True  # asked for something: serve's validation will name the bad value
    key = bool(env.get("OPENAI_API_KEY"))
    twilio = bool(env.get("TWILIO_AUTH_TOKEN")) or insecure
    if key and twilio:
        which = "TWILIO_AUTH_TOKEN" if env.get("TWILIO_AUTH_TOKEN") else "GATEWAY_INSECURE_DEV=1"
        return "serve", f"OPENAI_API_KEY and {which} are set"
    asked = [f"--{name}" for name in ("host", "port", "workers") if getattr(args, name, None) is not None]
    asked += [name for name in _SERVE_ENV if env.get(name)]
    asked += ["GATEWAY_INSECURE_DEV=1"] if insecure else []
    if asked:
        missing = [] if key else ["OPENAI_API_KEY"]
        missing += [] if twilio else ["TWILIO_AUTH_TOKEN (or GATEWAY_INSECURE_DEV=1 for local tests)"]
        return "refuse", (f"{', '.join(asked)} ask{'s' if len(asked) == 1 else ''} to serve, but "
                          f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
    if key:
        return "demo", ("OPENAI_API_KEY is set but TWILIO_AUTH_TOKEN is not, so no Twilio number can reach a "
                        "gateway yet (the demo uses simulators, not your key)")
    return "demo", "no OPENAI_API_KEY and no Twilio setting is set"


def cmd_run(args: argparse.Namespace) -> int:
    """The README's run command: serve a complete configuration, else the demo; says which and why."""
    if args.demo and _overrides(args):
        print("gateway run: --host, --port and --workers are serving options; the demo runs on loopback "
              "(drop them, or use --serve)", file=sys.stderr)
        return 2
    mode, reason = choose_run_mode(args, os.environ)
    if mode == "refuse":
        print(f"gateway run: not serving: {reason}. Set what is missing (README: \"Connect a real Twilio number "
              "in 5 minutes\"), or run `gateway demo` to try the gateway without any keys.", file=sys.stderr)
        return 2
    if mode == "serve":
        print(f"gateway run: serving, because {reason} (`gateway demo` runs the self-contained demo instead)",
              file=sys.stderr, flush=True)
        return cmd_serve(args)
    print(f"gateway run: running the demo, because {reason}. To serve real calls: `gateway run --serve`, "
          "or README \"Connect a real Twilio number in 5 minutes\".", flush=True)
    if args.audio_mode is None:
        from .config import BY_FIELD

        var = BY_FIELD["audio_mode"]
        raw = os.environ.get(var.env, var.default)
        if raw not in var.choices:
            print(f"gateway run: {var.message('unknown value', raw, raw)}", file=sys.stderr)
            return 2
        args.audio_mode = raw
    args.verbose = False
    return cmd_demo(args)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="gateway", description=DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,serve,check,run}")

    demo = sub.add_parser("demo", help="gateway + Twilio and OpenAI simulators on loopback, every barge-in phase",
                          description="Start the OpenAI Realtime simulator (TLS), the gateway (secure mode) and "
                                      "the Twilio simulator on loopback in this process, place five calls that "
                                      "cover every barge-in phase and print a verdict per call from what the "
                                      "simulators recorded. No keys, no network.")
    demo.add_argument("--audio-mode", choices=("passthrough", "pcm16"), default="passthrough",
                      help="passthrough: mu-law both ways, no transcoding (default); pcm16: PCM16 24 kHz to the "
                           "model, transcoded by the gateway (GATEWAY_AUDIO_MODE)")
    demo.add_argument("-v", "--verbose", action="store_true", help="also show the gateway's JSON logs")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="serve real calls (configuration from environment variables)",
                           description="Run the gateway: a supervisor and N worker processes sharing one port "
                                       "(webhook, media socket, control API, health, metrics).",
                           epilog=SERVE_EPILOG, formatter_class=raw)
    _serve_options(serve)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", aliases=["doctor"],
                           help="validate the configuration, connect to the upstream, test the public URL",
                           description=CHECK_DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    check.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help="per step (default: GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S)")
    check.set_defaults(func=cmd_check)

    run = sub.add_parser("run", help="serve when the configuration is complete, else the demo (says which and why)",
                         description=RUN_DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    which = run.add_mutually_exclusive_group()
    which.add_argument("--serve", action="store_true", help="serve, whatever the configuration (= gateway serve)")
    which.add_argument("--demo", action="store_true", help="run the demo, whatever the configuration (= gateway demo)")
    _serve_options(run)
    run.add_argument("--audio-mode", choices=("passthrough", "pcm16"), default=None,
                     help="audio mode of the demo (default: GATEWAY_AUDIO_MODE, else passthrough)")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before anything imports _fastpath: serve, check and demo say which fast path runs themselves
    # (startup.PURE_TWIN_WARNING; the worker does the same).
    warnings.filterwarnings("ignore", message="_fastpath: compiled extension not available", category=RuntimeWarning)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
