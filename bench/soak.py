"""Soak: N calls kept up for M minutes through the real gateway, calls ending and new ones starting; leaks?

The processes of `load` (bench/loadrun.py: the same `gateway serve`, configured the same way), but
simulators that forget a call once it is summarised, so they can run for hours:
  * the OpenAI Realtime simulator (`python -m bench.soak openai`, uvloop, TLS unless --no-tls),
  * Twilio load generators (`python -m bench.soak twilio`, one per ~250 calls).
Every caller slot runs calls back to back: each call lasts a random --min-call-s..--max-call-s, the
caller talks and barges in as in `load` (--barge-in-share), hangs up, and the slot's next call
starts about a second later; so about N calls are up at any time and thousands start and end.

Every --sample-every seconds: RSS, open file descriptors and threads of the gateway's workers and of
its supervisor (/proc), the calls up (the simulators' count and the gateway's gateway_active_calls),
CPU. After a warm-up (--warmup-min) a least-squares fit of RSS against time, with the number of
calls up as a second variable (RSS follows the call count; the trend is what is left), gives the
slope in KiB per minute and the verdict: "flat within noise" or "growing: X KiB/min". The same
for file descriptors. Per-call memory = (workers' RSS - their idle RSS) / calls up.
Every call is judged from the simulators' records: completed by the caller at its scripted end, no
protocol violation on either side, no upstream error, every truncate accepted, the caller's audio
all delivered upstream (byte counts).

Output: a progress line per sample, a summary at the end, DIR/soak.json and DIR/soak.png.
Exit status: 0; 1 if any call had a problem; 3 if memory or file descriptors grow.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .children import Child, child_env, free_port

SLOTS_PER_GENERATOR = 250
GAP_S = (0.5, 1.5)  # a slot's next call starts this long after the previous one's planned end
SETUP_S = 0.5  # webhook + upgrade + start, before the scripted call time begins
MIN_TAIL_S = 5.0  # no call starts that would have less than this before the end of the soak
FLAT = "flat within noise"
# GATEWAY_MAX_PENDING_AUDIO_MS of the gateway under test (its default; bench.loadrun does not set it):
# caller audio beyond this much, while the upstream session is still opening, is dropped by design
# (and counted in gateway_caller_audio_dropped_seconds_total).
PENDING_AUDIO_S = 2.0


# ==================================================================================== options
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .report import RESULTS
    from .settings import positive_int

    parser.add_argument("--calls", type=positive_int, default=200, help="calls kept up (default 200)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument("--min-call-s", type=float, default=20.0, help="shortest call (default 20 s)")
    parser.add_argument("--max-call-s", type=float, default=90.0, help="longest call (default 90 s)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--warmup-min", type=float, default=None,
                        help="minutes after the ramp left out of the fit (default: a fifth of the soak, at most 5)")
    parser.add_argument("--workers", type=positive_int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--mode", choices=("passthrough", "pcm16"), default="passthrough",
                        help="GATEWAY_AUDIO_MODE (default passthrough)")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                        help="TLS between the gateway and the OpenAI simulator (default on)")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="simulated one-way Twilio latency (40)")
    parser.add_argument("--jitter-ms", type=float, default=10.0, help="± jitter on it (10)")
    parser.add_argument("--barge-in-share", type=float, default=0.5,
                        help="share of caller turns that interrupt the answer (default 0.5)")
    parser.add_argument("--ramp-rate", type=float, default=20.0, help="first calls started per second (20)")
    parser.add_argument("--generators", type=int, default=0,
                        help=f"Twilio load-generator processes (0 = one per {SLOTS_PER_GENERATOR} calls, "
                             "at most one per CPU)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the plan and the simulators")
    parser.add_argument("--log-level", default="INFO", help="GATEWAY_LOG_LEVEL of the gateway (INFO)")
    parser.add_argument("--keep-work", action="store_true", help="keep the simulators' outputs and process logs")
    parser.add_argument("--no-plots", action="store_true", help="skip soak.png")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak", help="output directory (bench/results/soak)")
    parser.add_argument("--report-only", type=Path, metavar="SOAK_JSON",
                        help="no run: fit, judge trends and report again from the samples of a soak.json")


@dataclass
class SoakSettings:
    calls: int
    minutes: float
    min_call_s: float = 20.0
    max_call_s: float = 90.0
    sample_every: float = 10.0
    warmup_min: float = 5.0
    workers: int = 1
    mode: str = "passthrough"
    tls: bool = True
    latency_ms: float = 40.0
    jitter_ms: float = 10.0
    barge_in_share: float = 0.5
    ramp_rate: float = 20.0
    generators: int = 0
    seed: int = 1
    log_level: str = "INFO"
    keep_work: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SoakSettings:
        if not 0 < args.min_call_s <= args.max_call_s:
            raise SystemExit("bench soak: need 0 < --min-call-s <= --max-call-s")
        warmup = args.warmup_min if args.warmup_min is not None else min(5.0, args.minutes / 5)
        return cls(calls=args.calls, minutes=args.minutes, min_call_s=args.min_call_s, max_call_s=args.max_call_s,
                   sample_every=args.sample_every, warmup_min=warmup, workers=args.workers, mode=args.mode,
                   tls=args.tls, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms,
                   barge_in_share=args.barge_in_share, ramp_rate=args.ramp_rate, generators=args.generators,
                   seed=args.seed, log_level=args.log_level, keep_work=args.keep_work)

    @property
    def ramp_s(self) -> float:
        return (self.calls - 1) / self.ramp_rate

    @property
    def end_s(self) -> float:
        return self.minutes * 60.0

    def n_generators(self) -> int:
        if self.generators > 0:
            return self.generators
        return max(1, min(os.cpu_count() or 1, math.ceil(self.calls / SLOTS_PER_GENERATOR)))


def run(args: argparse.Namespace) -> int:
    """``python -m bench soak``: the run, the summary, soak.json and soak.png."""
    from .report import environment, write_json

    if args.report_only is not None:
        return report_again(args.report_only, args.out, plots=not args.no_plots)
    st = SoakSettings.from_args(args)
    plan = build_plan(st)
    print(f"bench soak: {st.calls} calls kept up for {st.minutes:g} min ({len(plan):,} calls of "
          f"{st.min_call_s:g}-{st.max_call_s:g} s), {st.mode}{' + TLS' if st.tls else ''}, {st.workers} worker(s), "
          f"barge-in share {st.barge_in_share:g}, sample every {st.sample_every:g} s, fit after "
          f"{st.warmup_min:g} min of warm-up, {st.n_generators()} load generator(s)", flush=True)
    result = asyncio.run(soak(st, plan, lambda line: print(line, flush=True)))
    result = {"bench": "soak", "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                           if k != "run"},
              "environment": environment(), "settings": asdict(st), **result}
    print()
    print(render_summary(result))
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        result["plots"] = [str(plot(result, args.out / "soak.png"))]
    path = write_json(args.out / "soak.json", result)
    print(f"\nwrote {path}" + "".join(f"\n      {p}" for p in result.get("plots", [])))
    if result["calls"]["with_problems"]:
        return 1
    return 3 if any(not v.startswith(FLAT) for v in result["verdicts"].values()) else 0


def report_again(path: Path, out: Path, plots: bool) -> int:
    """The trend, verdicts and summary recomputed from the samples a soak recorded."""
    from .report import write_json

    result = json.loads(path.read_text())
    st = SoakSettings(**result["settings"])
    result.update(analyse(st, result["samples"], result["idle"]))
    print(render_summary(result))
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        result["plots"] = [str(plot(result, out / "soak.png"))]
    written = write_json(out / "soak.json", result)
    print(f"\nwrote {written}" + "".join(f"\n      {p}" for p in result.get("plots", [])))
    return 3 if any(not v.startswith(FLAT) for v in result["verdicts"].values()) else 0


# ==================================================================================== the plan
def build_plan(st: SoakSettings) -> list[dict[str, Any]]:
    """Every call of the soak: ``{sid, slot, start, duration_ms, seed}``, start in seconds from T0.

    Slot k starts its first call during the ramp, then one call after another; a call that would end
    after the soak is shortened to end with it (none starts with less than MIN_TAIL_S left)."""
    rng = random.Random(st.seed)
    nonce = rng.getrandbits(63) ^ int(time.time() * 1000)
    calls: list[dict[str, Any]] = []
    for slot in range(st.calls):
        start = slot / st.ramp_rate
        while start + SETUP_S + MIN_TAIL_S <= st.end_s:
            duration = min(rng.uniform(st.min_call_s, st.max_call_s), st.end_s - start - SETUP_S)
            calls.append({"sid": f"CA{nonce & (2**64 - 1):016x}{len(calls):016x}", "slot": slot,
                          "start": round(start, 3), "duration_ms": int(duration * 1000),
                          "seed": rng.getrandbits(32)})
            start += SETUP_S + duration + rng.uniform(*GAP_S)
    calls.sort(key=lambda c: c["start"])
    return calls


# ==================================================================================== the run (bench side)
async def soak(st: SoakSettings, plan: list[dict[str, Any]], progress: Any) -> dict[str, Any]:
    """Start everything, follow the soak while sampling, stop, collect, judge, fit."""
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    children: list[Child] = []
    try:
        openai, upstream = await _start_openai(st, work, children)
        port = free_port()
        sut = await _start_gateway(st, port, upstream, work, children, progress)
        generators = await _start_generators(st, plan, port, work, children)
        sampler = Sampler(st, sut.proc.pid, port, generators, openai, progress)
        await asyncio.sleep(1.0)
        sampler.idle = await sampler.read(-1.0)
        t0 = time.monotonic() + 0.3
        for child in generators:
            child.send(f"go {t0!r}")
        sampler.t0 = t0
        await sampler.follow(st.end_s + st.max_call_s + 60)
        after = await sampler.after_the_end()
        await sut.stop(signal.SIGTERM, 20.0)
        openai.send("dump")
        await openai.expect("done", 120)
        calls = [c for g in range(len(generators)) for c in _read(work / f"twilio{g}.out.json")["calls"]]
        sessions = _read(work / "openai.out.json")["sessions"]
        judged = judge(st, plan, calls, sessions)
        return {"samples": sampler.rows, "idle": sampler.idle, "after": after,
                **analyse(st, sampler.rows, sampler.idle), "calls": judged,
                "generators": [g.status for g in generators], "openai_sim": openai.status}
    finally:
        await asyncio.gather(*(c.stop(signal.SIGKILL, 5.0) for c in children), return_exceptions=True)
        if st.keep_work:
            progress(f"[soak] simulators' outputs and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _read(path: Path) -> Any:
    return json.loads(path.read_bytes())


async def _start_openai(st: SoakSettings, work: Path, children: list[Child]) -> tuple[Child, dict[str, Any]]:
    config = {"tls": st.tls, "tls_dir": str(work), "seed": st.seed}
    (work / "openai.json").write_text(json.dumps(config))
    openai = await Child.spawn("openai-sim", [sys.executable, "-m", "bench.soak", "openai",
                                                 str(work / "openai.json"), str(work / "openai.out.json")],
                                   child_env({}), work)
    children.append(openai)
    return openai, await openai.expect("ready", 60)


async def _start_gateway(st: SoakSettings, port: int, upstream: dict[str, Any], work: Path,
                         children: list[Child], progress: Any) -> Child:
    """``gateway serve`` exactly as `load` starts it (bench.loadrun), with this soak's options."""
    from .loadrun import start_system_under_test, sut_command
    from .settings import Settings

    load_st = Settings(calls=st.calls, duration=st.end_s, workers=st.workers, mode=st.mode,
                       latency_ms=st.latency_ms, jitter_ms=st.jitter_ms, tls=st.tls, seed=st.seed,
                       log_level=st.log_level)
    spec = sut_command(load_st, "gateway", port, upstream)
    sut, _ = await start_system_under_test("gateway", spec, port, work, children,
                                           lambda line: progress(line.replace("[gateway]", "[soak]", 1)))
    return sut


async def _start_generators(st: SoakSettings, plan: list[dict[str, Any]], port: int, work: Path,
                            children: list[Child]) -> list[Child]:
    from .loadrun import AUTH_TOKEN, PUBLIC_URL

    n_gen = st.n_generators()
    sim = {"webhook_url": PUBLIC_URL + "/twilio/voice", "connect_to": f"http://127.0.0.1:{port}",
           "auth_token": AUTH_TOKEN, "latency_ms": st.latency_ms, "jitter_ms": st.jitter_ms, "timeout_s": 30.0}
    generators = []
    for g in range(n_gen):
        mine = [c for c in plan if c["slot"] % n_gen == g]
        (work / f"plan{g}.json").write_text(json.dumps({"sim": {**sim, "seed": st.seed * 7919 + g},
                                                        "barge_in_share": st.barge_in_share, "calls": mine}))
        argv = [sys.executable, "-m", "bench.soak", "twilio", str(work / f"plan{g}.json"),
                str(work / f"twilio{g}.out.json")]
        child = await Child.spawn(f"twilio-gen{g}", argv, child_env({}), work)
        children.append(child)
        generators.append(child)
    for child in generators:
        await child.expect("ready", 60)
    return generators


def proc_reading(pid: int) -> dict[str, int] | None:
    """RSS (bytes), open file descriptors and threads of one process, from /proc."""
    from .procstat import read_stat

    stat = read_stat(pid)
    if stat is None:
        return None
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            threads = next((int(line.split()[1]) for line in f if line.startswith("Threads:")), 0)
    except OSError:
        return None
    return {"rss": stat.rss, "fds": fds, "threads": threads}


class Sampler:
    """Samples the gateway every ``sample_every`` s until every generator is done; prints progress."""

    def __init__(self, st: SoakSettings, root: int, port: int, generators: list[Child], openai: Child,
                 progress: Any) -> None:
        self.st, self.root, self.port, self.generators, self.openai = st, root, port, generators, openai
        self.progress = progress
        self.t0 = 0.0
        self.idle: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self._machine: tuple[float, float] | None = None

    async def read(self, t: float) -> dict[str, Any]:
        """One sample: workers (every descendant of the supervisor) summed, the supervisor alone."""
        from .metrics import scrape
        from .procstat import descendants, machine_cpu, tree_sample

        workers = [r for r in map(proc_reading, descendants(self.root)) if r is not None]
        sup = proc_reading(self.root) or {"rss": 0, "fds": 0, "threads": 0}
        tree = tree_sample(self.root)
        metrics = await scrape(self.port)
        gateway_calls = None if metrics is None else metrics.get(("gateway_active_calls", ()))
        status = [g.status for g in self.generators]
        sims = [proc_reading(c.proc.pid) for c in (self.openai, *self.generators)]
        machine, before = machine_cpu(), self._machine
        self._machine = machine
        busy = None
        if before is not None and machine[1] > before[1]:
            busy = round((machine[0] - before[0]) / (machine[1] - before[1]), 3)
        return {
            "t": round(t, 2), "calls_up": sum(s.get("up", 0) for s in status),
            "gateway_active_calls": None if gateway_calls is None else int(gateway_calls),
            "started": sum(s.get("started", 0) for s in status), "ended": sum(s.get("ended", 0) for s in status),
            "problems": sum(s.get("problems", 0) for s in status),
            "gen_lag_ms": max((s.get("lag_ms", 0.0) for s in status), default=0.0),
            "rss_workers": sum(w["rss"] for w in workers), "fds_workers": sum(w["fds"] for w in workers),
            "threads_workers": sum(w["threads"] for w in workers), "workers": len(workers),
            "rss_supervisor": sup["rss"], "fds_supervisor": sup["fds"],
            "cpu_s": round(tree.cpu_s, 2) if tree is not None else None,
            "rss_simulators": sum(r["rss"] for r in sims if r is not None), "machine_busy": busy,
        }

    async def follow(self, timeout: float) -> None:
        """Sample until every generator printed ``done`` (each caller's last call is over)."""
        done = [asyncio.ensure_future(g.expect("done", timeout)) for g in self.generators]
        try:
            next_at = self.t0
            while not all(d.done() for d in done):
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += self.st.sample_every
                for d in done:
                    if d.done() and (exc := d.exception()) is not None:
                        raise exc
                row = await self.read(time.monotonic() - self.t0)
                self.rows.append(row)
                self.progress(self.line(row))
        finally:
            for d in done:
                d.cancel()

    async def after_the_end(self) -> dict[str, Any]:
        """Once every call ended: a few samples over 10 s (what the gateway keeps with no call),
        and the gateway's own counters over the whole soak."""
        from .metrics import counter_sum, histogram_diff, scale_ms, scrape

        rows: list[dict[str, Any]] = []
        for _ in range(3):
            await asyncio.sleep(5.0 if rows else 2.0)
            rows.append(await self.read(time.monotonic() - self.t0))
        final = await scrape(self.port)
        counters: dict[str, Any] = {}
        if final is not None:
            counters = {name: counter_sum(final, f"gateway_{name}_total") for name in (
                "calls_started", "calls_ended", "rejected_calls", "upstream_errors", "protocol_errors",
                "interrupts", "caller_audio_dropped_seconds", "late_audio_dropped")}
            connect = scale_ms(histogram_diff({}, final, "gateway_upstream_connect_seconds"))
            counters["upstream_connect_ms"] = {k: connect.get(k) for k in ("n", "p50", "p99", "max_bucket")}
        return rows[-1] | {"samples": rows, "gateway_metrics": counters}

    def line(self, row: dict[str, Any]) -> str:
        st, idle = self.st, self.idle
        t = row["t"]
        phase = "ramp" if t < st.ramp_s else ("warm-up" if t < st.ramp_s + st.warmup_min * 60 else
                                              ("soak" if t <= st.end_s else "ending"))
        calls = row["gateway_active_calls"] if row["gateway_active_calls"] is not None else row["calls_up"]
        per_call = (row["rss_workers"] - idle.get("rss_workers", 0)) / calls / 1024 if calls else None
        return (f"[soak] {_mmss(t)}/{_mmss(st.end_s)} {phase:<7} calls up {row['calls_up']:>5} "
                f"(gateway {row['gateway_active_calls']}, ended {row['ended']:,}, problems {row['problems']})  "
                f"RSS workers {row['rss_workers'] / 2**20:6.1f} MiB, "
                f"supervisor {row['rss_supervisor'] / 2**20:5.1f} MiB"
                f"  fds {row['fds_workers']:>5}  KiB/call {'-' if per_call is None else f'{per_call:.0f}'}"
                f"  gen lag {row['gen_lag_ms']:.0f} ms")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _mmss(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


# ==================================================================================== judging
def judge(st: SoakSettings, plan: list[dict[str, Any]], calls: list[dict[str, Any]],
          sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Each call from both simulators' summaries (the rules of ``Stack.judge`` that need no audio)."""
    by_sid = {s["sid"]: s for s in sessions if s.get("sid")}
    planned = {c["sid"]: c["duration_ms"] for c in plan}
    problems: dict[str, list[str]] = {}
    late_upstream: dict[str, str] = {}  # calls that lost caller audio because their upstream opened late
    outcomes: dict[str, int] = {}
    opened: list[float] = []
    totals = {"barge_ins_cleared": 0, "truncates": 0, "turns": 0, "call_seconds": 0.0}
    for call in calls:
        sid = call["sid"]
        outcomes[call["outcome"]] = outcomes.get(call["outcome"], 0) + 1
        session = by_sid.get(sid) or {}
        delay = None
        if session.get("connected_mono") is not None and call.get("stream_started_mono") is not None:
            delay = session["connected_mono"] - call["stream_started_mono"]
            opened.append(delay)
        found = _call_problems(st, call, by_sid.get(sid), planned.get(sid, 0))
        audio = [p for p in found if p.startswith("caller audio")]
        if audio and delay is not None and delay > PENDING_AUDIO_S - 0.2 and len(audio) == len(found):
            late_upstream[sid] = f"{audio[0]}; upstream session opened {delay:.2f} s after the stream started"
        elif found:
            problems[sid] = found
        totals["barge_ins_cleared"] += call.get("clears", 0)
        totals["truncates"] += session.get("truncates", 0)
        totals["turns"] += call.get("turns", 0)
        if call.get("ended_at") is not None and call.get("stream_started_at") is not None:
            totals["call_seconds"] += call["ended_at"] - call["stream_started_at"]
    missing = len(plan) - len(calls)
    kinds: dict[str, int] = {}
    for found in problems.values():
        for p in found:
            kind = p.split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    return {"planned": len(plan), "placed": len(calls), "missing": missing, "outcomes": outcomes,
            "with_problems": len(problems) + max(0, missing), "problem_kinds": kinds,
            "examples": dict(list(problems.items())[:10]),
            "caller_audio_beyond_pending_limit": len(late_upstream),
            "late_upstream_examples": dict(list(late_upstream.items())[:5]),
            "upstream_opened_after_stream_start_s": _quantiles(opened),
            "upstream_sessions": len(sessions), **{k: round(v, 1) for k, v in totals.items()}}


def _quantiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    s = sorted(values)

    def q(f: float) -> float:
        return round(s[min(len(s) - 1, int(f * len(s)))], 3)
    return {"n": len(s), "p50": q(0.5), "p99": q(0.99), "max": round(s[-1], 3),
            "over_pending_limit": sum(1 for v in s if v > PENDING_AUDIO_S - 0.2)}


def _call_problems(st: SoakSettings, call: dict[str, Any], session: dict[str, Any] | None,
                   planned_ms: int) -> list[str]:
    out = []
    if call["outcome"] != "completed" or call["closed_by"] != "twilio":
        out.append(f"not completed by the caller: {call['outcome']} (closed by {call['closed_by']}, "
                   f"{call['close_code']} {call['close_reason']})")
    out += [f"twilio violation: {v}" for v in call.get("violations", [])]
    if call.get("sim_error"):
        out.append(f"simulator error: {call['sim_error']}")
    started, ended = call.get("stream_started_at"), call.get("ended_at")
    if started is not None and ended is not None and ended - started < planned_ms / 1000 - 0.1:
        out.append(f"short: {ended - started:.1f} of {planned_ms / 1000:.1f} s")
    if session is None:
        return [*out, "no upstream session"]
    out += [f"upstream error provoked: {e}" for e in session.get("errors", [])]
    out += [f"upstream violation: {v}" for v in session.get("violations", [])]
    if session.get("truncates_rejected"):
        out.append(f"truncate rejected: {session['truncates_rejected']}")
    sent, got = call.get("caller_bytes_sent", 0), session.get("append_bytes", 0)
    factor = 6 if st.mode == "pcm16" else 1  # 8 kHz μ-law -> 24 kHz PCM16
    if got > sent * factor + 48 * factor or sent * factor - got > 800 * factor:
        out.append(f"caller audio: {sent} B sent, {got / factor:.0f} B (μ-law) arrived upstream")
    return out


# ==================================================================================== the trend
def analyse(st: SoakSettings, rows: list[dict[str, Any]], idle: dict[str, Any]) -> dict[str, Any]:
    """Fits after the warm-up and the verdicts; per-call memory over time."""
    fit_from, fit_to = st.ramp_s + st.warmup_min * 60, st.end_s - 5.0  # before the last calls hang up together
    window = [r for r in rows if fit_from <= r["t"] <= fit_to]
    fits = {
        "rss_workers_kib": fit_trend(window, lambda r: r["rss_workers"] / 1024),
        "rss_supervisor_kib": fit_trend(window, lambda r: r["rss_supervisor"] / 1024),
        "fds_workers": fit_trend(window, lambda r: r["fds_workers"]),
    }
    units = {"rss_workers_kib": "KiB", "rss_supervisor_kib": "KiB", "fds_workers": "fds"}
    verdicts = {name: verdict(fit, units[name]) for name, fit in fits.items()}
    per_call = [(r["rss_workers"] - idle.get("rss_workers", 0)) / 1024 / _calls(r) for r in window if _calls(r)]
    fds_per_call = [(r["fds_workers"] - idle.get("fds_workers", 0)) / _calls(r) for r in window if _calls(r)]
    ended_per_min = None
    if len(window) >= 2 and window[-1]["t"] > window[0]["t"]:
        ended_per_min = (window[-1]["ended"] - window[0]["ended"]) / ((window[-1]["t"] - window[0]["t"]) / 60)
    busy = [r["machine_busy"] for r in window if r.get("machine_busy") is not None]
    return {"fit_window_s": [round(fit_from, 1), fit_to], "fits": fits, "verdicts": verdicts,
            "per_call_kib": _spread(per_call), "fds_per_call": _spread(fds_per_call),
            "calls_ended_per_min": None if ended_per_min is None else round(ended_per_min, 1),
            "machine_busy": _spread(busy)}


def _calls(row: dict[str, Any]) -> int:
    g = row.get("gateway_active_calls")
    return int(g) if g is not None else int(row["calls_up"])


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    s = sorted(values)
    return {"n": len(s), "min": round(s[0], 2), "median": round(s[len(s) // 2], 2), "max": round(s[-1], 2),
            "first": round(values[0], 2), "last": round(values[-1], 2)}


def fit_trend(rows: list[dict[str, Any]], value: Any, halves: bool = True) -> dict[str, Any]:
    """Least squares ``y = a + b·t + c·calls``: the slope ``b`` per minute, its standard error, the
    residual standard deviation (the noise band), the drift ``b`` × the window; as plain
    cross-checks the mean of the last third minus the mean of the first third, and the slope of
    each half of the window (a leak grows with the calls that ended, steadily; a heap settling
    into its working size grows ever more slowly)."""
    import numpy as np

    if len(rows) < 6:
        return {"n": len(rows)}
    split: dict[str, Any] = {}
    if halves and len(rows) >= 12:
        first, second = fit_trend(rows[:len(rows) // 2], value, False), fit_trend(rows[len(rows) // 2:], value, False)
        split = {"slope_first_half": first.get("slope_per_min"), "late": second}
    t = np.array([r["t"] / 60.0 for r in rows])
    calls = np.array([_calls(r) for r in rows], dtype=float)
    y = np.array([float(value(r)) for r in rows])
    columns = [np.ones_like(t), t]
    if np.ptp(calls) > 0:
        columns.append(calls - calls.mean())
    x = np.column_stack(columns)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    dof = max(1, len(y) - x.shape[1])
    sigma = float(math.sqrt(float(resid @ resid) / dof))
    cov = sigma ** 2 * np.linalg.pinv(x.T @ x)
    slope, se = float(coef[1]), float(math.sqrt(max(0.0, float(cov[1, 1]))))
    span = float(t[-1] - t[0])
    third = max(1, len(y) // 3)
    return {"n": len(rows), "minutes": round(span, 2), "slope_per_min": slope, "slope_se": se,
            "per_call": float(coef[2]) if len(coef) > 2 else None, "noise_sd": sigma,
            "drift": slope * span, "last_minus_first_third": float(y[-third:].mean() - y[:third].mean()),
            "start": float(y[0]), "end": float(y[-1]), "min": float(y.min()), "max": float(y.max()), **split}


# The smallest step each quantity moves in: pymalloc takes memory from the system in 256 KiB arenas,
# and a call holds two file descriptors. A "trend" smaller than one step is no trend.
GRAIN = {"KiB": 256.0, "fds": 2.0}


def verdict(fit: dict[str, Any], unit: str) -> str:
    """Is the value still growing at the end of the soak?

    Judged on the LATER HALF of the fit window (``fit["late"]``; the whole window if it is too
    short): growing if that half's slope is both significant (beyond 2 standard errors) and
    material (its drift over the half exceeds the noise band: 2 residual standard deviations, or
    one grain of the quantity, GRAIN, if larger). A leak grows with every call that ends, so it
    grows in both halves; a heap settling into its working size (allocator fragmentation reaching
    its equilibrium) grows ever more slowly and is flat by then. The whole window's slope is
    reported too, and the smallest slope the later half could have shown (its detection limit)."""
    late = fit.get("late") or fit
    if "slope_per_min" not in late:
        return f"{FLAT} (too few samples to fit: {fit.get('n', 0)})"
    slope, se, drift = late["slope_per_min"], late["slope_se"], late["drift"]
    band = max(2 * late["noise_sd"], GRAIN.get(unit, 0.0))
    limit = max(2 * se, band / late["minutes"]) if late["minutes"] else float("nan")
    detail = (f"later half ({late['minutes']:.0f} min): {slope:+.1f} ± {2 * se:.1f} {unit}/min (2 SE), drift "
              f"{drift:+.0f} {unit} vs noise band ± {band:.0f} {unit}, detection limit {limit:.1f} {unit}/min")
    if fit is not late:
        detail += (f"; whole window ({fit['minutes']:.0f} min): {fit['slope_per_min']:+.1f} {unit}/min, "
                   f"first half {fit['slope_first_half']:+.1f} {unit}/min")
    if abs(slope) <= 2 * se or abs(drift) <= band:
        settled = fit is not late and fit["drift"] > band and fit["slope_per_min"] > 2 * fit["slope_se"]
        return f"{FLAT}{' (settled: grew early in the window, flat in its later half)' if settled else ''}: {detail}"
    if slope > 0:
        per_day = f"{slope * 1440 / 1024:.1f} MiB" if unit == "KiB" else f"{slope * 1440:.0f} {unit}"
        return f"growing: {slope:.1f} {unit}/min (≈ {per_day}/day); {detail}"
    return f"{FLAT} (falling): {detail}"


# ==================================================================================== report
def render_summary(result: dict[str, Any]) -> str:
    from .report import fmt, render_table

    rows, idle, after = result["samples"], result["idle"], result["after"]
    st, calls = result["settings"], result["calls"]
    lines = [(f"soak: {st['calls']} calls kept up for {st['minutes']:g} min; {calls['placed']:,} calls placed of "
              f"{calls['planned']:,} planned, {calls['call_seconds'] / 3600:.1f} call-hours, "
              f"{calls['barge_ins_cleared']:,} barge-ins cleared, {calls['truncates']:,} truncations")]
    lines.append(f"calls: outcomes {calls['outcomes']}; with problems: {calls['with_problems']}"
                 + (f" {calls['problem_kinds']}" if calls["with_problems"] else ""))
    marks = _milestones(rows, st)
    table = [["idle (before)", "0", fmt(idle["rss_workers"] / 2**20, 1), fmt(idle["rss_supervisor"] / 2**20, 1),
              str(idle["fds_workers"]), str(idle["threads_workers"]), "-"]]
    for label, r in marks:
        c = _calls(r)
        kib = (r["rss_workers"] - idle["rss_workers"]) / 1024 / c if c else None
        table.append([label, str(c), fmt(r["rss_workers"] / 2**20, 1), fmt(r["rss_supervisor"] / 2**20, 1),
                      str(r["fds_workers"]), str(r["threads_workers"]), fmt(kib, 0)])
    table.append(["after the last call", str(after.get("gateway_active_calls")), fmt(after["rss_workers"] / 2**20, 1),
                  fmt(after["rss_supervisor"] / 2**20, 1), str(after["fds_workers"]), str(after["threads_workers"]),
                  "-"])
    lines += ["", render_table(["when", "calls (gateway)", "RSS workers MiB", "RSS supervisor MiB", "fds workers",
                                "threads", "KiB/call"], table)]
    lines.append("")
    window = result["fit_window_s"]
    lines.append(f"trend over {_mmss(window[0])}-{_mmss(window[1])} (after the ramp and warm-up), least squares "
                 "on time and calls up:")
    names = {"rss_workers_kib": "workers' RSS", "rss_supervisor_kib": "supervisor's RSS", "fds_workers": "workers' fds"}
    lines += [f"  {names[k]:<18} {v}" for k, v in result["verdicts"].items()]
    late = result["fits"]["rss_workers_kib"].get("late") or result["fits"]["rss_workers_kib"]
    if late.get("slope_per_min") is not None and result.get("calls_ended_per_min"):
        rate = result["calls_ended_per_min"]
        lines.append(f"  workers' RSS per call ended, later half: {late['slope_per_min'] / rate * 1024:+.0f} B "
                     f"({rate:.0f} calls ended per minute)")
    pc, fpc = result["per_call_kib"], result["fds_per_call"]
    if pc.get("n"):
        lines.append(f"  per-call memory    median {pc['median']:.0f} KiB (range {pc['min']:.0f}-{pc['max']:.0f}; "
                     f"first {pc['first']:.0f}, last {pc['last']:.0f}); fds per call median {fpc['median']:.2f}")
    busy = result.get("machine_busy", {})
    if busy.get("n"):
        lines.append(f"  machine CPU busy in the window: median {busy['median'] * 100:.0f} % "
                     f"(max {busy['max'] * 100:.0f} %); simulators' RSS "
                     f"{rows[-1]['rss_simulators'] / 2**20:.0f} MiB at the end")
    gm = after.get("gateway_metrics") or {}
    if gm:
        dropped = sum(gm.get("caller_audio_dropped_seconds", {}).values())
        lines.append(f"  the gateway's counters: calls ended {gm.get('calls_ended')}, rejected "
                     f"{gm.get('rejected_calls') or 0}, upstream errors {gm.get('upstream_errors') or 0}, protocol "
                     f"errors {gm.get('protocol_errors') or 0}, caller audio dropped while upstream opened "
                     f"{dropped:.1f} s, upstream connect p50/p99 {_ms(gm['upstream_connect_ms'].get('p50'))}/"
                     f"{_ms(gm['upstream_connect_ms'].get('p99'))} ms")
    opened = calls.get("upstream_opened_after_stream_start_s", {})
    if opened.get("n"):
        lines.append(f"  upstream session opened after the stream started: p50 {opened['p50']:.2f} s, p99 "
                     f"{opened['p99']:.2f} s, max {opened['max']:.2f} s; {calls['caller_audio_beyond_pending_limit']} "
                     f"calls lost caller audio because of it (> GATEWAY_MAX_PENDING_AUDIO_MS, by design)")
    leftover = after.get("gateway_active_calls")
    if leftover:
        lines.append(f"! the gateway still counts {leftover} active calls after every caller hung up")
    if after["fds_workers"] > idle["fds_workers"] + 2 * max(1, idle["workers"]):
        lines.append(f"! the workers hold {after['fds_workers'] - idle['fds_workers']} more file descriptors than "
                     "before the first call")
    lines.append("  (asyncio tasks: not observable from outside; the gateway has no debug endpoint and "
                 "prometheus-client exports no process metrics in multiprocess mode)")
    return "\n".join(lines)


def _milestones(rows: list[dict[str, Any]], st: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Samples at the end of the warm-up, then at each quarter of what follows, up to the end."""
    start = (st["calls"] - 1) / st["ramp_rate"] + st["warmup_min"] * 60
    end = st["minutes"] * 60
    out: list[tuple[str, dict[str, Any]]] = []
    for k, frac in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
        target = start + (end - start) * frac
        candidates = [r for r in rows if r["t"] <= target + 1e-6 and _calls(r)]
        if candidates:
            r = candidates[-1]
            label = "end of warm-up" if k == 0 else f"{_mmss(r['t'])}"
            if not out or out[-1][1] is not r:
                out.append((label, r))
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    """Calls up, RSS (workers with the fitted trend, supervisor), fds, KiB per call over time."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, idle = result["samples"], result["idle"]
    t = np.array([r["t"] / 60 for r in rows])
    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    lo, hi = (w / 60 for w in result["fit_window_s"])
    for ax in axes:
        ax.axvspan(lo, hi, color="0.93", zorder=0)
        ax.grid(True, alpha=0.3)
    axes[0].plot(t, [r["calls_up"] for r in rows], label="calls up (simulators)")
    axes[0].plot(t, [r["gateway_active_calls"] for r in rows], ls="--", label="gateway_active_calls")
    axes[0].set_ylabel("calls")
    rss = np.array([r["rss_workers"] / 2**20 for r in rows])
    axes[1].plot(t, rss, label="workers")
    calls = np.array([_calls(r) for r in rows], dtype=float)
    whole = result["fits"]["rss_workers_kib"]
    for fit, style, name in ((whole, ":", "whole window"), (whole.get("late") or {}, "-", "later half (the verdict)")):
        if "slope_per_min" not in fit:
            continue
        sel = (t >= hi - fit["minutes"] - 1e-9) & (t <= hi)
        per_call = fit["per_call"] or 0.0
        # the fitted line at the window's mean call count (the call-count term removed)
        level = rss[sel] * 1024 - per_call * (calls[sel] - calls[sel].mean())
        intercept = float(np.mean(level - fit["slope_per_min"] * t[sel]))
        trend = (intercept + fit["slope_per_min"] * t[sel]) / 1024
        axes[1].plot(t[sel], trend, color="k", lw=1, ls=style,
                     label=f"trend, {name}: {fit['slope_per_min']:+.0f} KiB/min")
        if style == "-":
            band = max(2 * fit["noise_sd"], GRAIN["KiB"]) / 1024
            axes[1].fill_between(t[sel], trend - band, trend + band, color="k", alpha=0.12, label="noise band")
    axes[1].set_title(result["verdicts"]["rss_workers_kib"].split(";")[0], fontsize=9)
    axes[1].plot(t, [r["rss_supervisor"] / 2**20 for r in rows], label="supervisor")
    axes[1].set_ylabel("RSS (MiB)")
    axes[2].plot(t, [r["fds_workers"] for r in rows], label="workers' open fds")
    axes[2].plot(t, [2 * _calls(r) + idle["fds_workers"] for r in rows], ls=":", label="idle + 2 per call")
    axes[2].set_ylabel("file descriptors")
    steady = [st_calls * 0.5 <= _calls(r) and r["t"] <= hi * 60 for r in rows
              for st_calls in [result["settings"]["calls"]]]  # leave out the ramp and the final hang-up
    axes[3].plot(t, [(r["rss_workers"] - idle["rss_workers"]) / 1024 / _calls(r) if ok else np.nan
                     for r, ok in zip(rows, steady, strict=True)])
    axes[3].set_ylabel("KiB per call (RSS over idle / calls)")
    axes[3].set_xlabel("minutes since the first call (shaded: the fit window)")
    for ax in axes[:3]:
        ax.legend(fontsize=8, loc="center right")
    st = result["settings"]
    fig.suptitle(f"bench soak: {st['calls']} calls × {st['minutes']:g} min, {result['calls']['placed']:,} calls")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ==================================================================================== child processes
# ``python -m bench.soak openai CONFIG OUT`` / ``python -m bench.soak twilio PLAN OUT``: the simulators
# of gateway.sim on uvloop, reporting over stdout (JSON lines: ready, status every second, done) and
# forgetting each call once summarised, so that their own memory stays flat for hours.

def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _commands() -> asyncio.Queue[str]:
    """Lines from stdin; EOF (the bench is gone) ends the process at once."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    lines: asyncio.Queue[str] = asyncio.Queue()

    async def pump() -> None:
        while True:
            line = await reader.readline()
            if not line:
                os._exit(3)
            await lines.put(line.decode().strip())

    task = asyncio.ensure_future(pump())
    _KEEP.append(task)
    return lines


_KEEP: list[Any] = []  # background tasks of a child (a reference keeps them alive)


def _session_summary(s: Any, offset: float) -> dict[str, Any]:
    """What the judge needs of one finished session; times on CLOCK_MONOTONIC (``offset``: this
    loop's time minus it), comparable with the Twilio generators'."""
    sid = None
    for event in s.client_events:
        event_id = event.event.get("event_id")
        if event.type == "session.update" and isinstance(event_id, str) and event_id.endswith(":session"):
            sid = event_id[:-len(":session")]
            break
    return {"sid": sid, "append_bytes": s.append_bytes, "errors": [f"{e.code}: {e.message[:120]}" for e in s.errors],
            "violations": s.violations[:5], "truncates": len(s.truncates),
            "truncates_rejected": sum(1 for t in s.truncates if not t.accepted), "cancels": len(s.cancels),
            "responses": len(s.responses), "items": len(s.assistant_items), "client_closed": s.client_closed,
            "close_reason": s.close_reason, "connected_mono": s.connected_at - offset}


def _forget(s: Any) -> None:
    """Drop what a finished session recorded (the simulator keeps the object in its list)."""
    for name in ("client_events", "assistant_items", "user_items", "responses", "truncates", "cancels", "errors",
                 "violations", "server_events", "speech_started_at", "speech_stopped_at", "function_calls",
                 "function_outputs"):
        if isinstance(getattr(s, name, None), list):
            setattr(s, name, [])
    for name in ("_conversation", "_assistant", "_user"):
        if isinstance(getattr(s, name, None), dict):
            setattr(s, name, {})
    s.input_audio = bytearray()


async def openai_main(config: dict[str, Any]) -> dict[str, Any]:
    from gateway.sim.openai_sim import OpenAIRealtimeSim, OpenAISimConfig
    from gateway.sim.openai_tls import make_self_signed_tls

    from .loadplan import DEFAULT_DELTA_MS, FIRST_AUDIO_MS, PACE, RESPONSE_MS

    sim = OpenAIRealtimeSim(OpenAISimConfig(response_ms=RESPONSE_MS, chunk_ms=DEFAULT_DELTA_MS, pace=PACE,
                                            first_audio_ms=FIRST_AUDIO_MS, seed=config["seed"],
                                            record_audio=False, record_server_events=False))
    ssl_ctx, ca_file = make_self_signed_tls(config["tls_dir"]) if config["tls"] else (None, "")
    commands = await _commands()
    url = await sim.start("127.0.0.1", 0, ssl_ctx)
    offset = asyncio.get_running_loop().time() - time.monotonic()
    _emit({"ready": True, "url": url, "ca_file": ca_file, "api_key": sim.config.api_key, "pid": os.getpid()})
    summaries: list[dict[str, Any]] = []
    pending: set[int] = set()
    seen = 0

    def sweep() -> None:
        nonlocal seen
        pending.update(range(seen, len(sim.sessions)))
        seen = len(sim.sessions)
        for i in sorted(pending):
            s = sim.sessions[i]
            if s.disconnected_at is not None:
                summaries.append(_session_summary(s, offset))
                _forget(s)
                pending.discard(i)

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            sweep()
            _emit({"status": {"sessions": seen, "live": len(pending),
                              "errors": sum(len(x["errors"]) for x in summaries),
                              "violations": sum(len(x["violations"]) for x in summaries)}})

    reporter = asyncio.ensure_future(report())
    while await commands.get() != "dump":
        pass
    reporter.cancel()
    await sim.stop()
    sweep()
    return {"sessions": summaries, "rejected": [[r.status, r.path, r.reason] for r in sim.rejected]}


def _call_summary(call: Any, planned_ms: int, error: BaseException | None, offset: float) -> dict[str, Any]:
    rec = call.record
    started = None if rec.stream_started_at is None else rec.stream_started_at - offset  # CLOCK_MONOTONIC
    return {"sid": rec.call_sid, "outcome": str(rec.outcome), "closed_by": rec.closed_by,
            "close_code": rec.close_code, "close_reason": rec.close_reason,
            "violations": [f"{c} {d[:120]}" for c, d in rec.violations[:5]], "late_sends": rec.late_sends,
            "max_lag_ms": round(rec.max_lag_ms, 1), "caller_bytes_sent": rec.caller_bytes_sent,
            "stream_started_at": rec.stream_started_at, "ended_at": rec.ended_at, "planned_ms": planned_ms,
            "turns": len(rec.turns), "clears": len(rec.clears), "heard_ms": round(rec.heard_ms),
            "sim_error": None if error is None else repr(error)[:300], "stream_started_mono": started}


def _quick_problem(summary: dict[str, Any]) -> bool:
    """What the generator can tell alone (the full judgement joins the OpenAI side at the end)."""
    return (summary["outcome"] != "completed" or summary["closed_by"] != "twilio" or bool(summary["violations"])
            or summary["sim_error"] is not None)


async def twilio_main(plan: dict[str, Any]) -> dict[str, Any]:
    from gateway.sim.twilio_script import CallScript, Turn
    from gateway.sim.twilio_sim import TwilioSim, TwilioSimConfig

    from .loadplan import RESPONSE_MS, conversation

    s = plan["sim"]
    sim = TwilioSim(TwilioSimConfig(webhook_url=s["webhook_url"], connect_to=s["connect_to"],
                                    auth_token=s["auth_token"], latency_ms=s["latency_ms"], jitter_ms=s["jitter_ms"],
                                    seed=s["seed"], record_payloads=False, timeout_s=s["timeout_s"]))
    calls = plan["calls"]
    commands = await _commands()
    _emit({"ready": True, "pid": os.getpid(), "calls": len(calls)})
    while not (line := await commands.get()).startswith("go "):
        pass
    loop = asyncio.get_running_loop()
    offset = loop.time() - time.monotonic()
    t0 = float(line.split()[1]) + offset
    summaries: list[dict[str, Any]] = []
    live: set[Any] = set()
    counts = {"started": 0, "ended": 0, "problems": 0}
    lag = [0.0]
    all_done = loop.create_future()

    def script(spec: dict[str, Any]) -> Any:
        turns_needed = int(spec["duration_ms"] / min(RESPONSE_MS)) + 2
        turns = []
        turn_plan = conversation(random.Random(spec["seed"]), plan["barge_in_share"], turns_needed)
        for kind, value, speech_ms, _phase in turn_plan:
            if kind == "heard":
                turns.append(Turn(after_heard_ms=value, speech_ms=speech_ms))
            else:
                turns.append(Turn(after_quiet_ms=value, speech_ms=speech_ms))
        return CallScript(duration_ms=spec["duration_ms"], turns=tuple(turns))

    def finished(call: Any, spec: dict[str, Any], task: asyncio.Task[Any]) -> None:
        error = None if task.cancelled() else task.exception()
        summary = _call_summary(call, spec["duration_ms"], error, offset)
        summaries.append(summary)
        counts["ended"] += 1
        counts["problems"] += _quick_problem(summary)
        lag[0] = max(lag[0], summary["max_lag_ms"])
        live.discard(call)
        sim.calls.pop(call.record.call_sid, None)  # forget it: the summary is all we keep
        if counts["ended"] == len(calls) and not all_done.done():
            all_done.set_result(None)

    def start(spec: dict[str, Any]) -> None:
        call = sim.start_call(script(spec), spec["sid"])
        counts["started"] += 1
        live.add(call)
        assert call.task is not None
        call.task.add_done_callback(lambda task: finished(call, spec, task))

    for spec in calls:
        loop.call_at(t0 + spec["start"], start, spec)
    if not calls:
        all_done.set_result(None)

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            up = sum(1 for c in live if c.record.stream_started_at is not None)
            _emit({"status": {**counts, "up": up, "lag_ms": round(lag[0], 1)}})
            lag[0] = 0.0

    reporter = asyncio.ensure_future(report())
    await all_done
    reporter.cancel()
    await sim.close()
    return {"calls": summaries}


def main(argv: list[str]) -> int:
    import gc

    import uvloop

    import gateway.sim.openai_sim
    import gateway.sim.twilio_sim  # noqa: F401 - imported before the freeze below

    role, config_path, out_path = argv
    gc.freeze()  # the modules are never collected: full collections stay short for hours
    mains = {"openai": openai_main, "twilio": twilio_main}
    if role not in mains:
        raise SystemExit(f"unknown role {role!r}")
    out = uvloop.run(mains[role](json.loads(Path(config_path).read_text())))
    Path(out_path).write_text(json.dumps(out))
    _emit({"done": True})
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
