"""Sweep: raise the number of concurrent calls until a service level breaks.

Runs `python -m bench load` steps (fresh processes each step: OpenAI simulator, `gateway serve`,
Twilio load generators) at --start, --start + --step, ... up to --max concurrent calls, each with
--duration s of steady state, and stops at the first step that breaks the service level:
  * p99 added latency above --slo-p99-ms (20 ms) in either direction, or
  * any audio lost, duplicated, altered or played late, any playback underrun, any call that did
    not complete, any upstream error or protocol violation on either side.
A step where the machine, not the gateway, was the limit is not the gateway's verdict: if the
simulators fell behind (a caller frame or a model delta > 50 ms late, or > 0.1% of them > 20 ms
late) or the machine's CPUs were ≥ 80% busy (everything then waits in the run queue), the sweep
stops there as "inconclusive" unless --ignore-machine-limits. The highest passing count and the
CPU per call-second of every step are reported (table, DIR/sweep.json, DIR/sweep.png).
"""
from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .loadreport import Run, added_outbound, cpu_target_ms, json_run
from .loadrun import run_target
from .report import RESULTS, environment, fmt, render_table, write_json
from .settings import Settings, add_common_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=int, default=100, help="first call count (100)")
    parser.add_argument("--step", type=int, default=100, help="increment (100)")
    parser.add_argument("--max", type=int, default=3000, help="last call count tried (3000)")
    parser.add_argument("--duration", type=float, default=20.0, help="steady-state seconds per step (20)")
    parser.add_argument("--slo-p99-ms", type=float, default=20.0, help="p99 added latency service level (20 ms)")
    parser.add_argument("--ignore-machine-limits", action="store_true",
                        help="keep going when the simulators fall behind or the machine is saturated")
    add_common_arguments(parser, baseline=False)
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep", help="output directory (bench/results/sweep)")


def verdict(run: Run, slo_p99_ms: float) -> tuple[bool, list[str]]:
    """(passed, reasons it failed) for one step."""
    reasons = []
    lat = {"inbound": run["latency_ms"]["inbound"], "outbound": added_outbound(run)}
    for key in ("inbound", "outbound"):
        p99 = lat[key]["p99"]
        if p99 is None:
            reasons.append(f"no {key} latency measured")
        elif p99 > slo_p99_ms:
            reasons.append(f"p99 {key} latency {p99:.1f} ms > {slo_p99_ms:g} ms")
    c = run["correctness"]
    if c["calls_with_problems"]:
        kinds = "; ".join(f"{k} ×{v}" for k, v in list(c["problem_kinds"].items())[:4])
        reasons.append(f"{c['calls_with_problems']} calls with problems ({kinds})")
    if c["underruns"]:
        reasons.append(f"{c['underruns']} playback underruns")
    return not reasons, reasons


def step_row(run: Run, passed: bool, reasons: list[str]) -> dict[str, Any]:
    lat = {"inbound": run["latency_ms"]["inbound"], "outbound": added_outbound(run)}
    return {
        "calls": run["calls"],
        "passed": passed,
        "reasons": reasons,
        "generator_fell_behind": run["generators"]["fell_behind"] or run["openai_sim"]["fell_behind"],
        "machine_saturated": run["cpu"]["machine_saturated"],
        "cpu_per_call_second_ms": run["cpu"]["per_call_second_ms"],
        "calls_per_core": run["cpu"]["calls_per_core"],
        "p99_inbound_ms": lat["inbound"]["p99"],
        "p99_outbound_ms": lat["outbound"]["p99"],
        "max_inbound_ms": lat["inbound"]["max"],
        "max_outbound_ms": lat["outbound"]["max"],
        "interrupt_p99_ms": run["interrupt_ms_sims"]["p99"],
        "truncate_error_p99_ms": run["truncate_error_ms"]["p99"],
        "memory_per_call_kib": run["memory"]["per_call_kib"],
        "event_loop_lag_p99_ms": run.get("gateway_metrics", {}).get("event_loop_lag_ms", {}).get("p99"),
        "generator_max_lag_ms": max(run["generators"]["window_frame_lag_ms"]["max"] or 0.0,
                                    run["openai_sim"]["window_delta_lag_ms"]["max"] or 0.0),
        "machine_busy_share": run["cpu"]["machine_busy_share"],
        "cpu_vs_simulators": run["cpu"]["vs_simulators"],
    }


@dataclass
class Sweep:
    steps: list[dict[str, Any]] = field(default_factory=list)  # step_row of each step
    runs: list[Run] = field(default_factory=list)  # json_run of each step
    best: int | None = None  # highest passing call count
    stopped: str = "reached --max"  # why the sweep stopped


def run(args: argparse.Namespace) -> int:
    counts = list(range(args.start, args.max + 1, args.step)) if args.step > 0 else [args.start]
    print(f"bench sweep: {counts[0]} .. {counts[-1]} calls step {args.step}, {args.duration:g} s each; service "
          f"level p99 ≤ {args.slo_p99_ms:g} ms, no loss/underrun/error", flush=True)
    sweep = asyncio.run(run_steps(args, counts))
    print()
    print(steps_table(sweep.steps))
    print(f"\nhighest passing: {sweep.best if sweep.best is not None else 'none'} concurrent calls on {args.workers} "
          f"worker(s) ({sweep.stopped})")
    cpu_target = cpu_target_ms(Settings.from_args(args, counts[0], args.duration))
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "run"}
    data: dict[str, Any] = {"bench": "sweep", "options": options, "environment": environment(),
                            "highest_passing_calls": sweep.best, "stopped": sweep.stopped,
                            "cpu_target_ms": cpu_target, "steps": sweep.steps, "runs": sweep.runs}
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        from .plots import sweep_plots

        data["plots"] = [str(p) for p in sweep_plots(sweep.steps, out_dir, cpu_target)]
    path = write_json(out_dir / "sweep.json", data)
    print(f"wrote {path}" + "".join(f"\n      {p}" for p in data.get("plots", [])))
    return 0


async def run_steps(args: argparse.Namespace, counts: list[int]) -> Sweep:
    """One gateway run per call count until one breaks the service level or the machine's limits."""
    def progress(msg: str) -> None:
        print(msg, flush=True)

    sweep = Sweep()
    for n in counts:
        st = Settings.from_args(args, n, args.duration)
        r = json_run(await run_target(st, "gateway", progress))
        sweep.runs.append(r)
        passed, reasons = verdict(r, args.slo_p99_ms)
        row = step_row(r, passed, reasons)
        sweep.steps.append(row)
        print(f"  {n} calls: {'PASS' if passed else 'FAIL'}  CPU {fmt(row['cpu_per_call_second_ms'], 3)} ms/call-s  "
              f"p99 in/out {fmt(row['p99_inbound_ms'])}/{fmt(row['p99_outbound_ms'])} ms"
              + ("" if passed else "  <- " + "; ".join(reasons)), flush=True)
        limited = machine_limits(row)
        if limited and not args.ignore_machine_limits:
            sweep.stopped = (f"inconclusive at {n} calls: {' and '.join(limited)}; this machine cannot drive more "
                             "load without distorting the measurement")
            if passed:
                sweep.best = n
            break
        if not passed:
            sweep.stopped = f"service level broken at {n} calls"
            break
        sweep.best = n
    return sweep


def machine_limits(row: dict[str, Any]) -> list[str]:
    """Why the machine, not the system under test, may have limited this step (empty: it did not)."""
    limited = []
    if row["generator_fell_behind"]:
        limited.append(f"the simulators fell behind (max lag {row['generator_max_lag_ms']:.0f} ms)")
    if row["machine_saturated"]:
        limited.append(f"the machine was saturated ({row['machine_busy_share']:.0%} CPU busy)")
    return limited


def steps_table(steps: list[dict[str, Any]]) -> str:
    return render_table(
        ["calls", "CPU ms/call-s", "calls/core", "p99 in ms", "p99 out ms", "interrupt p99", "trunc p99",
         "KiB/call", "sim lag ms", "machine", "vs sims", "verdict"],
        [[str(s["calls"]), fmt(s["cpu_per_call_second_ms"], 3), fmt(s["calls_per_core"], 0),
          fmt(s["p99_inbound_ms"]), fmt(s["p99_outbound_ms"]), fmt(s["interrupt_p99_ms"]),
          fmt(s["truncate_error_p99_ms"], 1), fmt(s["memory_per_call_kib"], 1), fmt(s["generator_max_lag_ms"], 0),
          f"{s['machine_busy_share']:.0%}" if s["machine_busy_share"] is not None else "-",
          fmt(s["cpu_vs_simulators"], 3),
          ("PASS" if s["passed"] else "FAIL") + (" (sim lag)" if s["generator_fell_behind"] else "")
          + (" (saturated)" if s["machine_saturated"] else "")]
         for s in steps])
