"""What a load run reports: the JSON of each run, the issue's targets, the ratios to the
baselines and the text table (one column per run). Pure functions of the runs' figures."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .loadfigures import RunOutput
from .loadplan import PHASE_GENERATING, PHASE_PLAYING, PHASE_QUIET, PHASE_REBARGE
from .profile import render as render_profile
from .report import fmt, render_table
from .settings import Settings

# Targets (reported against, never asserted): at 200 and 500 calls, one worker, 40 ms deltas, TLS
# upstream, the barge-in mix of bench.loadplan; medians of >= 3 runs, ratios within one run.
CPU_TARGET_MS = {("passthrough", False): 0.5, ("passthrough", True): 0.7, ("pcm16", False): 1.0, ("pcm16", True): 1.0}
TARGET_CALLS = (200, 500)
P99_LATENCY_TARGET_MS = 5.0
INTERRUPT_P99_TARGET_MS = 5.0
TRUNCATE_P99_TARGET_MS = 20.0
MEMORY_TARGET_KIB = 64.0
BASELINE_RATIO_TARGET = 5.0  # the gateway needs at least this many times less CPU per call (naive, sdk)
CARRIED_MIN = 0.95  # a baseline that handled fewer of the gateway's messages did less work
RATIO_TARGET_BASELINES = {"sdk": "SDK baseline", "naive": "naive baseline"}
PHASE_LABELS = {PHASE_GENERATING: "while the model generates", PHASE_PLAYING: "after generation, still playing",
                PHASE_REBARGE: "again 0.5 s into the next reply", PHASE_QUIET: "after the answer played"}

Run = dict[str, Any]  # one run's JSON (``json_run``)


# ==================================================================================== JSON
def latency_histogram(values: np.ndarray) -> dict[str, Any]:
    """Counts over log-spaced bins from 10 µs to 10 s (for the JSON)."""
    edges = np.logspace(-2, 4, 61)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges) if values.size else (np.zeros(60), None)
    return {"edges_ms": [round(float(e), 5) for e in edges], "counts": [int(c) for c in counts]}


def json_run(out: RunOutput) -> Run:
    raw = out.raw
    return {
        **out.summary,
        "distributions": {
            "inbound_latency": latency_histogram(raw["lat_in"]),
            "outbound_latency": latency_histogram(raw["lat_out"]),
            "truncate_error_ms": [round(float(x), 2) for x in raw["truncate_err"]],
            "truncate_error_phase": list(raw.get("truncate_phase", [])),
            "speech_started_to_clear_ms": [round(float(x), 3) for x in raw["interrupt"]],
        },
        "samples": [[round(s.t, 2), s.up, round(s.cpu_s, 3), s.rss] for s in out.samples],
    }


# ==================================================================================== targets, ratios
def cpu_target_ms(st: Settings) -> float:
    return CPU_TARGET_MS[(st.mode, st.tls)]


def _miss(value: float, target: float, higher_is_better: bool, unit: str) -> str:
    if higher_is_better:
        return f"short by {target - value:.3g}{unit} ({(target - value) / target:.0%})"
    if not target:  # a count that must be zero (underruns, lost audio)
        return f"over by {value - target:.3g}{unit}"
    return f"over by {value - target:.3g}{unit} (+{(value - target) / target:.0%})"


def _target(name: str, value: float | None, target: float, higher: bool, unit: str, note: str = "") -> dict[str, Any]:
    if value is None:
        return {"name": name, "value": None, "target": target, "met": None, "note": note or "not measured"}
    met = value >= target if higher else value <= target
    return {"name": name, "value": value, "target": target, "higher_is_better": higher, "unit": unit,
            "met": met, "miss": None if met else _miss(value, target, higher, unit), "note": note}


def correctness_failures(run: Run) -> str | None:
    """What the simulators found wrong with a run, in a few words (None: nothing): calls with
    problems (late audio after a clear, loss, errors, ...) and truncations off by more than the
    truncation target, when the p99 misses it."""
    c = run["correctness"]
    out = []
    if c["calls_with_problems"]:
        kinds = "; ".join(f"{k} ×{v}" for k, v in list(c["problem_kinds"].items())[:3])
        out.append(f"{c['calls_with_problems']}/{run['calls_judged']} calls with problems ({kinds})")
    tr = run["truncate_error_ms"]
    if tr["p99"] is not None and tr["p99"] > TRUNCATE_P99_TARGET_MS:
        out.append(f"truncation error p99 {tr['p99']:.0f} ms > {TRUNCATE_P99_TARGET_MS:g} ms "
                   f"({c.get('truncates_off_over_20ms', '?')} of {tr['n']} truncations off by more, "
                   f"on {c.get('calls_with_truncate_off_over_20ms', '?')}/{run['calls_judged']} calls)")
    return "; ".join(out) or None


def evaluate_targets(st: Settings, runs: dict[str, Run]) -> list[dict[str, Any]]:
    """The issue's targets against the gateway run (reported, never asserted)."""
    g = runs.get("gateway")
    if g is None:
        return []
    cpu_t = cpu_target_ms(st)
    label = f"{st.mode}{' + TLS' if st.tls else ' plain'}"
    lat = g["latency_ms"]
    p99 = max((x["p99"] for x in (lat["inbound"], added_outbound(g)) if x["p99"] is not None), default=None)
    shape = "target is at " + " and ".join(map(str, TARGET_CALLS)) + " calls on one worker, 40 ms deltas"
    off_shape = st.calls not in TARGET_CALLS or st.workers != 1 or st.delta_ms != 40
    note = shape if off_shape else ""
    gm = g.get("gateway_metrics", {}).get("interrupt_to_clear_ms", {})
    tr = g["truncate_error_ms"]
    at = f"at {st.latency_ms:g} ± {st.jitter_ms:g} ms" + ("" if (st.latency_ms, st.jitter_ms) == (40, 10)
                                                          else "; target is at 40 ± 10 ms")
    rebarge = tr.get("by_phase", {}).get(PHASE_REBARGE, {})
    c = g["correctness"]
    out = [
        _target(f"CPU per call-second, {label} (ms)", g["cpu"]["per_call_second_ms"], cpu_t, False, " ms", note),
        _target("calls per core", g["cpu"]["calls_per_core"], 1 / cpu_t * 1000, True, ""),
        _target("p99 added latency, worse direction (ms)", p99, P99_LATENCY_TARGET_MS, False, " ms", note),
        _target("interrupt latency p99 inside the gateway (ms)", gm.get("p99"), INTERRUPT_P99_TARGET_MS, False, " ms",
                "gateway_interrupt_to_clear_seconds (bucket interpolation)"),
        _target("truncate error p99 (ms)", tr["p99"], TRUNCATE_P99_TARGET_MS, False, " ms", at),
        _target("  2nd barge-in 0.5 s into the next reply (ms)", rebarge.get("p99"), TRUNCATE_P99_TARGET_MS, False,
                " ms", f"truncate error p99 of that phase, n={rebarge.get('n', 0)}"),
        _target("underruns", c["underruns"], 0, False, ""),
        _target("audio lost (calls) + gaps + duplicates", c["inbound_lost_calls_over_tolerance"]
                + c["outbound_gaps"] + c["outbound_duplicates"], 0, False, ""),
        _target("memory per call (KiB)", g["memory"]["per_call_kib"], MEMORY_TARGET_KIB, False, " KiB",
                "" if st.tls else "target is with TLS"),
    ]
    for name, label_b in RATIO_TARGET_BASELINES.items():
        base = runs.get(name)
        if base is None:
            continue
        a, b = g["cpu"]["per_call_second_ms"], base["cpu"]["per_call_second_ms"]
        failed = correctness_failures(base)
        notes = [f"{name}: {n}" for n in (carried_note(ratios({"gateway": g, name: base})[name]),) if n]
        if failed:
            notes.append(f"{name} fails correctness: {failed}")
        out.append(_target(f"CPU per call vs {label_b} (×less)", b / a if a and b else None, BASELINE_RATIO_TARGET,
                           True, "×", "; ".join(notes)))
    return out


def added_outbound(run: Run) -> dict[str, Any]:
    """The outbound latency a caller can hear: of the media messages Twilio had to play at once
    (its buffer was empty) when the run paced its playout (everything else it held back on
    purpose, with no underrun), else of every media message."""
    lat = run["latency_ms"]
    first = lat.get("outbound_first")
    return first if run.get("playout") == "paced" and first else lat["outbound"]


def ratios(runs: dict[str, Run]) -> dict[str, dict[str, float | None]]:
    """Each baseline's figures over the gateway's (> 1: the gateway is cheaper or faster)."""
    g = runs.get("gateway")
    out = {}
    for name, r in runs.items():
        if name == "gateway" or g is None:
            continue
        a, b = g["cpu"]["per_call_second_ms"], r["cpu"]["per_call_second_ms"]
        ma, mb = g["memory"]["per_call_kib"], r["memory"]["per_call_kib"]
        la = g["latency_ms"]["inbound"]["p99"], added_outbound(g)["p99"]
        lb = r["latency_ms"]["inbound"]["p99"], added_outbound(r)["p99"]
        na, nb = _messages_handled(g), _messages_handled(r)
        carried = nb / na if na and nb is not None else None
        out[name] = {
            "cpu_per_call_second": b / a if a and b else None,  # > 1: the gateway is cheaper
            "memory_per_call": mb / ma if ma and mb else None,
            "p99_inbound_latency": lb[0] / la[0] if la[0] and lb[0] else None,
            "p99_outbound_latency": lb[1] / la[1] if la[1] and lb[1] else None,
            # the load the baseline took over the gateway's (caller frames and model deltas it
            # received): < 1 when it lost calls or fell behind, and then its CPU per call-second
            # is for less work
            "messages_handled": carried,
            "cpu_per_message": b / a / carried if a and b and carried else None,
        }
    return out


def _messages_handled(run: Run) -> float | None:
    """Caller frames + model deltas received per call-second: the load offered, which a bridge
    takes in full unless it lost calls or fell behind (what it sends depends on its own design:
    paced playout sends fewer, larger media messages)."""
    m = run.get("messages_per_call_second") or {}
    try:
        return float(m["twilio_to_system"]["media"] + m["openai_to_system"]["delta"])
    except (KeyError, TypeError):
        return None


def carried_note(x: dict[str, float | None]) -> str | None:
    """Why a baseline's CPU ratio is not comparable: it handled a smaller share of the load."""
    carried = x.get("messages_handled")
    if carried is None or carried >= CARRIED_MIN:
        return None
    return (f"it handled only {carried:.0%} of the gateway's load (caller frames and model deltas: calls failed "
            f"or it fell behind): compare per message ({fmt(x['cpu_per_message'])}×)")


# ==================================================================================== the table
def _joined(get: Callable[[Run], dict[str, Any]], keys: tuple[str, ...], digits: int) -> Callable[[Run], str]:
    """A cell showing several fields of one dict of the run, ``/``-separated."""
    return lambda r: "/".join(fmt(get(r)[q], digits) for q in keys)


def _kernel_share_pct(r: Run) -> float | None:
    return r["cpu"]["kernel_share"] * 100 if r["cpu"].get("kernel_share") is not None else None


def _verdict(r: Run) -> str:
    c = r["correctness"]
    tr = r["truncate_error_ms"]
    out = []
    if c["calls_with_problems"]:
        out.append(f"{c['calls_with_problems']}/{r['calls_judged']} calls")
    if tr["p99"] is not None and tr["p99"] > TRUNCATE_P99_TARGET_MS:
        out.append(f"truncation p99 {tr['p99']:.0f} ms")
    return "FAILS: " + ", ".join(out) if out else "ok"


def _messages(leg: str, kinds: tuple[str, ...]) -> Callable[[Run], str]:
    return _joined(lambda r: r["messages_per_call_second"][leg], kinds, 1)


def _phase(phase: str) -> Callable[[Run], str]:
    """Truncation error of one phase: p50/p99/max, and how many were judged."""
    def cell(r: Run) -> str:
        x = r["truncate_error_ms"]["by_phase"][phase]
        return "/".join(fmt(x[q], 1) for q in ("p50", "p99", "max")) + f" ({x['n']})"
    return cell


# (label, the figure of one run, decimals of a float figure): one row each, in this order
ROWS: tuple[tuple[str, Callable[[Run], Any], int], ...] = (
    ("concurrent calls", lambda r: r["calls"], 2),
    ("CPU per call-second (ms)", lambda r: r["cpu"]["per_call_second_ms"], 3),
    ("  correctness (the simulators' verdict)", _verdict, 2),
    ("calls per core", lambda r: r["cpu"]["calls_per_core"], 0),
    ("  net of idle CPU (ms per call-s)", lambda r: r["cpu"]["per_call_second_ms_net_of_idle"], 3),
    ("  idle CPU (% of a core)", lambda r: r["cpu"]["idle_cpu_share"] * 100, 1),
    ("CPU in window (s)", lambda r: r["cpu"]["window_cpu_s"], 2),
    ("  relative to the simulators' CPU", lambda r: r["cpu"]["vs_simulators"], 3),
    ("  of which in the kernel (%)", _kernel_share_pct, 0),
    ("RSS idle -> peak (MiB)", lambda r: f"{r['memory']['idle_rss_mib']:.1f} -> {r['memory']['peak_rss_mib']:.1f}", 2),
    ("memory per call (KiB)", lambda r: r["memory"]["per_call_kib"], 1),
    ("msgs per call-s Twilio->sys media/mark/other", _messages("twilio_to_system", ("media", "mark", "other")), 2),
    ("  sys->Twilio media/mark/clear/other",
     _messages("system_to_twilio", ("media", "mark", "clear", "other")), 2),
    ("  sys->OpenAI append/other", _messages("system_to_openai", ("append", "other")), 2),
    ("  OpenAI->sys delta/other", _messages("openai_to_system", ("delta", "other")), 2),
    ("  all in / out of the system", _joined(lambda r: r["messages_per_call_second"], ("in", "out"), 1), 2),
    ("syscalls/call-s: read/write (no send/recv)",
     _joined(lambda r: r["syscalls_per_call_second"], ("read_family", "write_family"), 1), 2),
    ("  every syscall (--syscalls perf)", lambda r: r["syscalls_per_call_second"]["all"], 1),
    ("  context switches voluntary/involuntary",
     _joined(lambda r: r["syscalls_per_call_second"], ("context_switches_voluntary",
                                                        "context_switches_involuntary"), 1), 2),
    ("inbound latency p50/p99/max (ms)", _joined(lambda r: r["latency_ms"]["inbound"], ("p50", "p99", "max"), 2), 2),
    ("outbound latency p50/p99/max (ms)", _joined(lambda r: r["latency_ms"]["outbound"], ("p50", "p99", "max"), 2), 2),
    ("  first audio of a playback run (ms)",
     _joined(lambda r: r["latency_ms"].get("outbound_first") or {}, ("p50", "p99", "max"), 2), 2),
    ("speech_started->clear p50/p99 (ms)", _joined(lambda r: r["interrupt_ms_sims"], ("p50", "p99"), 2), 2),
    ("gateway interrupt->clear p50/p99 (ms)",
     _joined(lambda r: r["gateway_metrics"]["interrupt_to_clear_ms"], ("p50", "p99"), 3), 2),
    ("truncate error |ms| p50/p99/max", _joined(lambda r: r["truncate_error_ms"], ("p50", "p99", "max"), 1), 2),
    *((f"  {PHASE_LABELS[p]} (n)", _phase(p), 2) for p in (PHASE_GENERATING, PHASE_PLAYING, PHASE_REBARGE)),
    ("caller speech -> audio stopped p50/p99 (ms)", _joined(lambda r: r["stop_ms"], ("p50", "p99"), 0), 2),
    ("event-loop lag p99 (ms, buckets)", lambda r: r["gateway_metrics"]["event_loop_lag_ms"]["p99"], 1),
    ("turns / barge-ins (clears) / truncates",
     lambda r: f"{r['conversation']['turns']} / {r['conversation']['clears']} / {r['conversation']['truncates']}", 2),
    ("calls with problems", lambda r: f"{r['correctness']['calls_with_problems']}/{r['calls_judged']}", 2),
    ("audio lost (calls) / gaps / dups", lambda r: f"{r['correctness']['inbound_lost_calls_over_tolerance']} / "
                                                   f"{r['correctness']['outbound_gaps']} / "
                                                   f"{r['correctness']['outbound_duplicates']}", 2),
    ("underruns", lambda r: r["correctness"]["underruns"], 2),
    ("upstream errors / violations", lambda r: f"{sum(r['correctness']['upstream_errors'].values())} / "
                                               f"{r['correctness']['upstream_violations']}", 2),
    ("Twilio violations", lambda r: r["correctness"]["twilio_violations"], 2),
    ("Twilio sims: frame lag p99/max (ms)",
     _joined(lambda r: r["generators"]["window_frame_lag_ms"], ("p99", "max"), 1), 2),
    ("  CallRecord late sends / max lag (ms)",
     lambda r: f"{r['generators']['late_sends']} / {r['generators']['max_lag_ms']:.1f}", 2),
    ("OpenAI sim: delta lag p99/max (ms)",
     _joined(lambda r: r["openai_sim"]["window_delta_lag_ms"], ("p99", "max"), 1), 2),
    ("machine CPU busy in window", lambda r: f"{r['cpu']['machine_busy_share']:.0%} of {r['cpu']['cpus']} CPUs", 2),
    ("waiting for a CPU: system / sims", lambda r: "{:.1%} / {:.1%}".format(
        r["cpu"]["contention"]["system_under_test"]["runqueue_wait_share"],
        r["cpu"]["contention"]["simulators"]["runqueue_wait_share"]), 2),
    ("  per wake-up, system (ms)", lambda r: r["cpu"]["contention"]["system_under_test"]["runqueue_wait_per_wakeup_ms"],
     3),
)


def _cell(run: Run, get: Callable[[Run], Any], digits: int) -> str:
    try:
        return fmt(get(run), digits)
    except (KeyError, TypeError):
        return "-"


def figures_table(runs: dict[str, Run]) -> str:
    """One row per figure (``ROWS``), one column per run."""
    rows = [[label, *(_cell(r, get, digits) for r in runs.values())] for label, get, digits in ROWS]
    return render_table(["figure", *runs], rows)


def warning_lines(runs: dict[str, Run]) -> list[str]:
    """``!`` lines: runs whose figures the machine distorted, and runs with problems."""
    lines = []
    for n, r in runs.items():
        if r["generators"]["fell_behind"] or r["openai_sim"]["fell_behind"]:
            g, o = r["generators"], r["openai_sim"]
            lines.append(f"! {n}: the simulators fell behind in the window (Twilio frames: max "
                         f"{fmt(g['window_frame_lag_ms']['max'], 0)} ms late, {g['window_late_share']:.2%} > 20 ms; "
                         f"OpenAI deltas: max {fmt(o['window_delta_lag_ms']['max'], 0)} ms late, "
                         f"{o['window_late_share']:.2%} > 20 ms): latencies include their delay")
        if r["cpu"]["machine_saturated"]:
            lines.append(f"! {n}: the machine was saturated ({r['cpu']['machine_busy_share']:.0%} of "
                         f"{r['cpu']['cpus']} CPUs busy; {n} waited for a CPU "
                         f"{r['cpu']['contention']['system_under_test']['runqueue_wait_share']:.0%} of the time, the "
                         f"simulators {r['cpu']['contention']['simulators']['runqueue_wait_share']:.0%}): latencies "
                         f"include CPU run-queue waits")
        if r["correctness"]["calls_with_problems"]:
            lines.append(f"! {n}: {r['correctness']['calls_with_problems']} calls with problems: "
                         + "; ".join(f"{k} ×{v}" for k, v in list(r["correctness"]["problem_kinds"].items())[:6]))
    return lines


def ratio_lines(rat: dict[str, dict[str, float | None]], runs: dict[str, Run] | None = None) -> list[str]:
    """One line per baseline: its figures over the gateway's, and whether it passed the
    simulators' correctness checks (a baseline's CPU is only comparable if it does the same job)."""
    lines = []
    for name, x in rat.items():
        line = (f"vs {name}: {name} uses {fmt(x['cpu_per_call_second'])}× the gateway's CPU per call-second, "
                f"{fmt(x['memory_per_call'])}× its memory per call; p99 latency in/out "
                f"{fmt(x['p99_inbound_latency'])}×/{fmt(x['p99_outbound_latency'])}×")
        note = carried_note(x)
        if note is not None:
            line += f"\n    ! not the same work: {note}"
        run = (runs or {}).get(name)
        if run is not None:
            failed = correctness_failures(run)
            tr = run["truncate_error_ms"]
            line += (f"\n    {name} FAILS the correctness checks: {failed}" if failed
                     else f"\n    {name} passes the correctness checks (truncate error p99 {fmt(tr['p99'], 1)} ms)")
        lines.append(line)
    return lines


def target_lines(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["targets (gateway run; reported, not asserted):"]
    for t in targets:
        if t["met"] is None:
            verdict = f"n/a  ({t['note']})"
        else:
            verdict = "MET" if t["met"] else f"NOT MET, {t['miss']}"
            if t.get("note"):
                verdict += f"  [{t['note']}]"
        value = fmt(t["value"], 3) if t["value"] is not None else "-"
        cmp = "≥" if t.get("higher_is_better") else "≤"
        lines.append(f"  {t['name']:<46} {value:>10}  target {cmp} {fmt(float(t['target']), 3):<8} {verdict}")
    return lines


def render_report(runs: dict[str, Run], targets: list[dict[str, Any]], rat: dict[str, dict[str, float | None]]) -> str:
    """The table, its warnings, the ratios to the baselines, the targets and the profile."""
    lines = [figures_table(runs), *warning_lines(runs)]
    if rat:
        lines += ["", *ratio_lines(rat, runs)]
    if targets:
        lines += ["", *target_lines(targets)]
    profile = runs.get("gateway", {}).get("profile")
    if profile is not None:
        lines += ["", render_profile(profile)]
    return "\n".join(lines)
