"""What one load run is asked to do: ``Settings``, and the command-line options ``load`` and
``sweep`` share to build it."""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

from .loadplan import DEFAULT_DELTA_MS, REBARGE_SHARE
from .profile import DEFAULT_RATE_HZ as DEFAULT_PROFILE_RATE_HZ

CALLS_PER_GENERATOR = 250
BASELINES = ("burst", "pure", "naive", "sdk")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _baselines(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name != "none" and name not in BASELINES:
            raise argparse.ArgumentTypeError(f"unknown baseline {name!r} (none, {', '.join(BASELINES)})")
    return list(dict.fromkeys(n for n in names if n != "none"))


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, baseline: bool = True) -> None:
    """Options shared by `load` and `sweep`."""
    parser.add_argument("--workers", type=positive_int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--mode", choices=("passthrough", "pcm16"), default="passthrough",
                        help="GATEWAY_AUDIO_MODE (default passthrough)")
    parser.add_argument("--coalesce", type=positive_int, default=1, help="GATEWAY_COALESCE_FRAMES (default 1)")
    parser.add_argument("--playout", choices=("paced", "burst"), default="paced",
                        help="GATEWAY_PLAYOUT of the gateway run (default paced; --baseline burst runs the other)")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="simulated one-way Twilio latency (40)")
    parser.add_argument("--jitter-ms", type=float, default=10.0, help="± jitter on it (10)")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                        help="TLS between the gateway and the OpenAI simulator (default on, as in production)")
    if baseline:
        parser.add_argument("--baseline", type=_baselines, default=[],
                            help="also run, under the same load: none (default), burst (the gateway with "
                                 "GATEWAY_PLAYOUT=burst: every delta to Twilio at once), pure (the gateway with "
                                 "GATEWAY_NO_EXTENSIONS=1), naive (bench/baselines/naive_bridge.py), sdk (the "
                                 "OpenAI Agents SDK's TwilioRealtimeTransportLayer on Node: bench/baselines/sdk/, "
                                 "installed with npm ci on first use) or a comma list such as sdk,naive; reported "
                                 "as ratios")
    parser.add_argument("--delta-ms", type=positive_int, default=DEFAULT_DELTA_MS,
                        help=f"audio per response.output_audio.delta of the OpenAI simulator (its chunk_ms; "
                             f"default {DEFAULT_DELTA_MS}: real deltas are small)")
    parser.add_argument("--barge-in-share", type=_share, default=0.5,
                        help="share of caller turns that interrupt the answer (default 0.5)")
    parser.add_argument("--rebarge-share", type=_share, default=REBARGE_SHARE,
                        help="share of barge-ins after which the caller barges in again half a second into the "
                             f"model's next reply (default {REBARGE_SHARE}; its own phase in the truncation figures)")
    parser.add_argument("--ramp-rate", type=float, default=50.0, help="new calls per second while ramping (50)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between the last call starting and the measurement window (2)")
    parser.add_argument("--generators", type=int, default=0,
                        help=f"Twilio load-generator processes (0 = one per {CALLS_PER_GENERATOR} calls, "
                             "at most one per CPU)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the conversations and simulators")
    parser.add_argument("--log-level", default="INFO", help="GATEWAY_LOG_LEVEL of the gateway (INFO, its default)")
    parser.add_argument("--syscalls", choices=("proc", "perf"), default="proc",
                        help="proc (default): read/write-family system calls from /proc/<pid>/io (syscr, syscw) "
                             "and context switches, free; perf: also every system call, by name, counted by "
                             "`perf stat` on the syscall tracepoints in the window (exact, but every system call "
                             "on the machine gets slower while it counts: take CPU figures from other runs)")
    parser.add_argument("--keep-work", action="store_true", help="keep the raw records and process logs")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


@dataclass
class Settings:
    """Everything one run needs (``load`` and ``sweep`` build it from their options)."""

    calls: int
    duration: float
    workers: int = 1
    mode: str = "passthrough"
    coalesce: int = 1
    playout: str = "paced"
    latency_ms: float = 40.0
    jitter_ms: float = 10.0
    tls: bool = True
    delta_ms: int = DEFAULT_DELTA_MS
    barge_in_share: float = 0.5
    rebarge_share: float = REBARGE_SHARE
    ramp_rate: float = 50.0
    settle: float = 2.0
    generators: int = 0
    seed: int = 1
    log_level: str = "INFO"
    syscalls: str = "proc"
    keep_work: bool = False
    profile_dir: str | None = None  # --profile: py-spy the gateway's workers in the window, files here
    profile_rate: int = DEFAULT_PROFILE_RATE_HZ

    @classmethod
    def from_args(cls, args: argparse.Namespace, calls: int, duration: float) -> Settings:
        return cls(calls=calls, duration=duration, workers=args.workers, mode=args.mode, coalesce=args.coalesce,
                   playout=args.playout,
                   latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, tls=args.tls, delta_ms=args.delta_ms,
                   barge_in_share=args.barge_in_share, rebarge_share=args.rebarge_share, ramp_rate=args.ramp_rate,
                   settle=args.settle, generators=args.generators, seed=args.seed, log_level=args.log_level,
                   syscalls=args.syscalls, keep_work=args.keep_work,
                   profile_dir=str(args.out) if getattr(args, "profile", False) else None,
                   profile_rate=getattr(args, "profile_rate", DEFAULT_PROFILE_RATE_HZ))

    def n_generators(self) -> int:
        if self.generators > 0:
            return self.generators
        return max(1, min(os.cpu_count() or 1, math.ceil(self.calls / CALLS_PER_GENERATOR)))
