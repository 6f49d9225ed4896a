"""Load test: N concurrent simulated phone calls through the real gateway (`gateway serve`).

Three kinds of processes, all on this machine:
  * the OpenAI Realtime simulator (uvloop; TLS with a throw-away CA unless --no-tls),
  * the system under test: `gateway serve --workers W` configured by environment variables
    (--baseline burst: the same with GATEWAY_PLAYOUT=burst; pure: with GATEWAY_NO_EXTENSIONS=1;
    naive: the bridge in bench/baselines/naive_bridge.py; sdk: the OpenAI Agents SDK's
    TwilioRealtimeTransportLayer on Node, bench/baselines/sdk/, npm ci on first use; each
    baseline runs after the gateway, under the same load),
  * Twilio simulators as load generators (uvloop; one process per ~250 calls).
A few warm-up calls run first, then N calls ramp up (--ramp-rate per second), the system settles
(--settle s) and the steady state is measured for --duration s with all N calls up; then every
caller hangs up. Each caller really talks (a 20 ms frame every 20 ms); the model answers with
multi-second responses in --delta-ms deltas (40 ms) streamed 5× faster than real time (first
audio after 300 ms); a share of the caller's turns barge in at a random moment, during generation
or after it while Twilio still plays (--barge-in-share), and after a barge-in some callers barge in
again half a second into the next reply (--rebarge-share); the others wait until the answer has
played.

Measured: CPU of the gateway's process tree (supervisor + workers, /proc, sampled at the edges of
the steady-state window) per call-second and calls per core; RSS per call (peak - idle) / N;
messages per call-second on each leg, by kind (counted by the simulators); system calls per
call-second (read/write family from /proc/<pid>/io; every call by name with --syscalls perf);
latency added in each direction (Twilio sim socket -> OpenAI sim socket and back, joined on
CLOCK_MONOTONIC stamps); interrupt latency (model's speech_started sent -> Twilio's clear
received, and the gateway's own gateway_interrupt_to_clear_seconds); truncation error vs what the
caller heard; loss, duplication, underruns, errors and protocol violations on both sides (all must
be zero); the gateway's event-loop lag; whether the load generators kept up. Correctness verdicts
come from the simulators' records only (the rules of gateway.sim.harness.Stack.judge).

Output: progress while running, a table at the end (with the targets and by how much a missed one
is missed), DIR/load.json (every figure, the options and the environment) and PNG plots.
--profile: py-spy samples every gateway worker during the gateway run's window (bench/profile.py):
DIR/profile-worker-<pid>.txt and, in the report and load.json, where the busy time goes.
Exit status 1 if the gateway under test lost, duplicated or altered audio or provoked any error.
"""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from .baselines import sdk_setup
from .loadfigures import RunOutput
from .loadreport import evaluate_targets, json_run, ratios, render_report
from .loadrun import run_target
from .profile import DEFAULT_RATE_HZ as DEFAULT_PROFILE_RATE_HZ
from .report import RESULTS, environment, write_json
from .settings import Settings, add_common_arguments, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=positive_int, default=200, help="concurrent calls (default 200)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of steady state with all calls up (default 20); each call lasts from "
                             "its start through the end of this window")
    add_common_arguments(parser)
    parser.add_argument("--profile", action="store_true",
                        help="sample every gateway worker with py-spy (--native --idle) during the gateway run's "
                             "measurement window: DIR/profile-worker-<pid>.txt (collapsed stacks) and a breakdown "
                             "of where the busy time goes (idle, send, receive, TLS, fast path, ...)")
    parser.add_argument("--profile-rate", type=positive_int, default=DEFAULT_PROFILE_RATE_HZ,
                        help=f"py-spy samples per second with --profile (default {DEFAULT_PROFILE_RATE_HZ})")
    parser.add_argument("--out", type=Path, default=RESULTS / "load", help="output directory (bench/results/load)")


def run(args: argparse.Namespace) -> int:
    """``python -m bench load``: the gateway run, then each baseline's; the report; load.json and plots.
    Exit status 1 if the gateway run had calls with problems."""
    st = Settings.from_args(args, args.calls, args.duration)
    targets = ["gateway", *[b for b in args.baseline if b != "gateway"]]
    if "sdk" in targets:
        problem = sdk_problem(st)
        if problem is not None:
            print(f"bench load: --baseline sdk: {problem}")
            return 2
    print(headline(st, targets), flush=True)
    outputs = asyncio.run(run_targets(st, targets))
    runs = {name: json_run(o) for name, o in outputs.items()}
    goals = evaluate_targets(st, runs)
    rat = ratios(runs)
    print()
    print(render_report(runs, goals, rat))
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "run"}
    data: dict[str, Any] = {"bench": "load", "options": options, "environment": environment(),
                            "settings": st.__dict__, "runs": runs, "ratios": rat, "targets": goals}
    path = write_results(data, outputs, args.out, plots=not args.no_plots)
    print(f"\nwrote {path}" + "".join(f"\n      {p}" for p in data.get("plots", [])))
    return 0 if runs["gateway"]["correctness"]["calls_with_problems"] == 0 else 1


def sdk_problem(st: Settings) -> str | None:
    """Why the sdk baseline cannot run with these settings on this machine (None: it can)."""
    if st.mode != "passthrough":
        return ("the SDK's TwilioRealtimeTransportLayer forwards μ-law both ways (g711_ulaw): "
                "run it with --mode passthrough")
    return sdk_setup.unavailable()


def headline(st: Settings, targets: list[str]) -> str:
    return (f"bench load: {st.calls} calls × {st.duration:g} s steady state, {st.mode}"
            f"{' + TLS' if st.tls else ''}, coalesce {st.coalesce}, {st.playout} playout, {st.delta_ms} ms deltas, "
            f"Twilio latency "
            f"{st.latency_ms:g} ± {st.jitter_ms:g} ms, barge-in share {st.barge_in_share:g} (again 0.5 s into the "
            f"next reply: {st.rebarge_share:g} of them), {st.n_generators()} load generator(s), "
            f"targets: {', '.join(targets)}")


async def run_targets(st: Settings, targets: list[str]) -> dict[str, RunOutput]:
    """One run per target, one after the other (fresh processes each); the sdk baseline's Node
    packages are installed first if they are not yet (npm ci)."""
    def progress(msg: str) -> None:
        print(msg, flush=True)

    if "sdk" in targets:
        await asyncio.to_thread(sdk_setup.ensure_installed, progress)
    return {target: await run_target(st, target, progress) for target in targets}


def write_results(data: dict[str, Any], outputs: dict[str, RunOutput], out_dir: Path, plots: bool) -> Path:
    """The plots (their paths go into ``data["plots"]``), then load.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        from .plots import load_plots

        data["plots"] = [str(p) for p in load_plots(outputs, out_dir)]
    return write_json(out_dir / "load.json", data)
