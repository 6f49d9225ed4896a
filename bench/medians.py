"""Medians of several `load` runs: the figures the targets are judged on, median (min–max) per system.

    python -m bench medians bench/results/run1 bench/results/run2 bench/results/run3

Each argument is a load.json or the directory holding one (`load --out DIR`). The targets are
medians of at least three runs: one run of `load` reports one value, this puts several side by
side, with each baseline's ratio to the gateway taken within each run before the median (ratios are
only comparable within a run: the host's speed drifts between runs). Prints a table and writes
DIR/medians.json (--out).
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .loadplan import PHASE_REBARGE
from .loadreport import added_outbound
from .report import RESULTS, fmt, render_table, write_json

Run = dict[str, Any]


def _get(*path: str) -> Callable[[Run], Any]:
    def get(run: Run) -> Any:
        value: Any = run
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value
    return get


def _worse_p99(run: Run) -> float | None:
    values = [x["p99"] for x in (run["latency_ms"]["inbound"], added_outbound(run)) if x["p99"] is not None]
    return max(values) if values else None


def _calls_with_problems(run: Run) -> int:
    return int(run["correctness"]["calls_with_problems"])


# (label, figure of one system's run, decimals)
FIGURES: tuple[tuple[str, Callable[[Run], Any], int], ...] = (
    ("CPU per call-second (ms)", _get("cpu", "per_call_second_ms"), 3),
    ("  relative to the simulators' CPU", _get("cpu", "vs_simulators"), 3),
    ("  of which in the kernel (share)", _get("cpu", "kernel_share"), 2),
    ("memory per call (KiB)", _get("memory", "per_call_kib"), 1),
    ("p99 added latency, worse direction (ms)", _worse_p99, 2),
    ("truncate error p99 (ms)", _get("truncate_error_ms", "p99"), 1),
    ("  2nd barge-in 0.5 s into the next reply p99 (ms)",
     _get("truncate_error_ms", "by_phase", PHASE_REBARGE, "p99"), 1),
    ("caller speech -> audio stopped p50 (ms)", _get("stop_ms", "p50"), 0),
    ("caller speech -> audio stopped p99 (ms)", _get("stop_ms", "p99"), 0),
    ("messages in per call-s", _get("messages_per_call_second", "in"), 1),
    ("messages out per call-s", _get("messages_per_call_second", "out"), 1),
    ("read/write-family syscalls per call-s (no send/recv)", _get("syscalls_per_call_second", "read_write"), 1),
    ("every syscall per call-s (perf)", _get("syscalls_per_call_second", "all"), 1),
    ("voluntary context switches per call-s", _get("syscalls_per_call_second", "context_switches_voluntary"), 1),
    ("calls with problems", _calls_with_problems, 0),
    ("underruns", _get("correctness", "underruns"), 0),
    ("machine CPU busy (share)", _get("cpu", "machine_busy_share"), 2),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, help="load.json files or `load --out` directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "medians",
                        help="output directory (bench/results/medians)")


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        file = path / "load.json" if path.is_dir() else path
        out.append(json.loads(file.read_text(encoding="utf-8")))
    return out


def _summary(values: list[Any]) -> dict[str, Any]:
    nums = [float(v) for v in values if v is not None]
    if not nums:
        return {"median": None, "min": None, "max": None, "n": 0, "values": values}
    return {"median": statistics.median(nums), "min": min(nums), "max": max(nums), "n": len(nums), "values": values}


def medians(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """{"figures": {system: {label: summary}}, "ratios": {baseline: {figure: summary}}}: per figure the
    median, min, max over the runs that have the system; ratios taken within each run."""
    systems: list[str] = []
    for data in loads:
        systems += [name for name in data["runs"] if name not in systems]
    figures = {name: {label: _summary([get(d["runs"][name]) for d in loads if name in d["runs"]])
                      for label, get, _ in FIGURES} for name in systems}
    ratios: dict[str, dict[str, Any]] = {}
    for name in systems:
        if name == "gateway":
            continue
        keys = sorted({k for d in loads for k in d.get("ratios", {}).get(name, {})})
        ratios[name] = {k: _summary([d["ratios"][name].get(k) for d in loads if name in d.get("ratios", {})])
                        for k in keys}
    return {"runs": len(loads), "figures": figures, "ratios": ratios}


def _cell(s: dict[str, Any], digits: int) -> str:
    if s["median"] is None:
        return "-"
    if s["n"] == 1:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})"


def render(result: dict[str, Any]) -> str:
    figures = result["figures"]
    rows = [[label, *(_cell(figures[name][label], digits) for name in figures)] for label, _, digits in FIGURES]
    lines = [f"medians of {result['runs']} runs: median (min–max)", render_table(["figure", *figures], rows)]
    for name, rat in result["ratios"].items():
        parts = [f"{key.replace('_', ' ')} {_cell(s, 2)}×" for key, s in rat.items()]
        lines.append(f"{name} over the gateway, within each run: " + "; ".join(parts))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = medians(load_runs(args.runs))
    print(render(result))
    path = write_json(args.out / "medians.json", {"bench": "medians", "inputs": [str(p) for p in args.runs],
                                                  **result})
    print(f"\nwrote {path}")
    return 0
