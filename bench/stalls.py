"""Memory under stalls: what the gateway holds per call while a peer stops reading.

`python -m bench stalls --calls 20` runs the real `Gateway` in this process (uvloop) between the
simulators (`gateway.sim.harness.Stack`) with the service's default limits, in two scenarios of
--calls concurrent calls each:
  * twilio: the model streams a 10-minute answer 50x faster than real time (the worst producer)
    and then every caller's Twilio socket stops reading; the gateway must end each call
    (`twilio_stalled`, after GATEWAY_TWILIO_STALL_MS) and never buffer more than its bound;
  * upstream: the callers talk and the OpenAI simulator stops reading every session; the gateway
    holds caller audio (GATEWAY_MAX_PENDING_AUDIO_MS, oldest dropped) and replaces the session
    after GATEWAY_UPSTREAM_STALL_S.
Sampled every 20 ms per call, from the gateway's own objects: the user-space write buffer of the
Twilio socket and of the upstream socket, the model audio paced playout holds, the caller audio
held. Reported: the peak of each per call (max over calls) and of their sum, against the bound the
README states, and this process's RSS growth during the stall divided by the calls (an upper
bound: the simulators share the process). Kernel send buffers are capped at 64 KiB per socket
(`gateway.picows_adapter.SOCKET_SNDBUF`) on top. Output: a table, --out (stalls.json). Exit
status 1 if a call ended otherwise than expected or a peak exceeds its bound.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from gateway.call import Call
from gateway.config import Settings
from gateway.paced import MAX_HELD_BYTES
from gateway.server import twilio_stall_bytes
from gateway.sim.harness import Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig
from gateway.sim.twilio_script import CallScript, Turn

from .report import RESULTS, environment, fmt, render_table, write_json

SAMPLE_S = 0.02
KIB = 1024
BUFFERS = ("twilio_write", "upstream_write", "paced_held", "caller_held")
HIGH_WATER = 64 * KIB  # asyncio's and uvloop's default write-buffer high-water mark: writing pauses above it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls per scenario (default 20)")
    parser.add_argument("--out", default=str(RESULTS / "stalls" / "stalls.json"),
                        help="the JSON report (bench/results/stalls/stalls.json)")


def run(args: argparse.Namespace) -> int:
    import uvloop

    results = {name: uvloop.run(SCENARIOS[name](args.calls, lambda line: print(line, flush=True)))
               for name in SCENARIOS}
    problems = [f"{name}: {p}" for name, r in results.items() for p in r["problems"]]
    print()
    print(table(results))
    out = write_json(args.out, {"options": {"calls": args.calls}, "scenarios": results,
                                "environment": environment()})
    print(f"\nJSON: {out}")
    for line in problems:
        print(f"PROBLEM: {line}")
    print(f"\n{len(results)} scenarios x {args.calls} calls, "
          f"{'every peak within its bound' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * KIB for line in f if line.startswith("VmRSS:"))


def _write_buffer(sender: Any) -> int:
    return int(sender._transport.underlying_transport.get_write_buffer_size()) if sender is not None else 0


def _sample(call: Call) -> dict[str, int]:
    paced = call.playout.paced
    return {"twilio_write": _write_buffer(call._twilio), "upstream_write": _write_buffer(call._up),
            "paced_held": paced._held_bytes if paced is not None else 0, "caller_held": len(call.caller._pending)}


class Peaks:
    def __init__(self) -> None:
        self.per_call: dict[str, dict[str, int]] = {}
        self.rss_before = _rss()
        self.rss_peak = self.rss_before

    def sample(self, calls: dict[str, Call]) -> None:
        for sid, call in calls.items():
            peak = self.per_call.setdefault(sid, {**dict.fromkeys(BUFFERS, 0), "total": 0})
            now = _sample(call)
            for key, value in now.items():
                peak[key] = max(peak[key], value)
            peak["total"] = max(peak["total"], sum(now.values()))
        self.rss_peak = max(self.rss_peak, _rss())

    def result(self, n: int, bounds: dict[str, int]) -> dict[str, Any]:
        worst = {key: max((p[key] for p in self.per_call.values()), default=0) for key in (*BUFFERS, "total")}
        problems = [f"{key}: peak {worst[key]:,} B > bound {bound:,} B" for key, bound in bounds.items()
                    if worst[key] > bound]
        return {"peak_bytes": worst, "bounds_bytes": bounds, "calls_sampled": len(self.per_call),
                "rss_growth_per_call_bytes": (self.rss_peak - self.rss_before) / max(1, n), "problems": problems}


async def _sampling(st: Stack, peaks: Peaks, done: Any) -> None:
    gw = st.gateway
    assert gw is not None
    while not done():
        peaks.sample(dict(gw.calls_by_sid))
        await asyncio.sleep(SAMPLE_S)


async def twilio_stall(n: int, progress: Any) -> dict[str, Any]:
    settings = Settings()
    openai = OpenAISimConfig(response_ms=(600_000,), pace=50.0, first_audio_ms=1500)
    greeting = {"greeting": "Greet the caller."}  # the model speaks first: its answer is the 10 minutes
    async with Stack(StackConfig(openai=openai, record=False, settings=greeting)) as st:
        assert st.twilio is not None and st.gateway is not None
        st.twilio.config.rcvbuf_bytes = 4096
        handles = [st.start_call(CallScript(duration_ms=120_000)) for _ in range(n)]
        deadline = time.monotonic() + 30
        while not all(h.record.stream_sid for h in handles) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        progress(f"twilio: {n} calls up; every Twilio socket stops reading")
        peaks = Peaks()
        for h in handles:
            h.stop_reading()
        waits = asyncio.gather(*(h.wait() for h in handles))
        sampler = asyncio.create_task(_sampling(st, peaks, waits.done))
        started = time.monotonic()
        await asyncio.wait_for(waits, settings.twilio_stall_ms / 1000 + 60)
        await sampler
        ended = dict(st.gateway.ended)
        progress(f"twilio: every call ended after {time.monotonic() - started:.1f} s: {ended}")
    # The Twilio socket: the transport's high-water mark, then twilio_stall_bytes more at most, plus
    # the two writes that cross them (a write goes out whole: a chunk and its mark, ~1.4 KiB at
    # 100 ms); paced playout holds what the model sent ahead (at most 60 s of audio: MAX_HELD_BYTES).
    bounds = {"twilio_write": HIGH_WATER + twilio_stall_bytes(settings) + 8 * KIB, "paced_held": MAX_HELD_BYTES,
              "caller_held": settings.max_pending_audio_ms * 8}
    result = peaks.result(n, bounds)
    if ended != {"twilio_stalled": n}:
        result["problems"].append(f"calls ended {ended}, expected twilio_stalled for all {n}")
    return {**result, "ended": ended}


async def upstream_stall(n: int, progress: Any) -> dict[str, Any]:
    settings = Settings()
    openai = OpenAISimConfig(response_ms=(1000,), pace=5.0, first_audio_ms=200, rcvbuf_bytes=4096)
    turns = tuple(Turn(after_quiet_ms=300, speech_ms=2000) for _ in range(20))
    async with Stack(StackConfig(openai=openai, record=False, settings={"greeting": "Greet the caller."})) as st:
        assert st.gateway is not None
        gw = st.gateway
        handles = [st.start_call(CallScript(duration_ms=120_000, turns=turns)) for _ in range(n)]
        deadline = time.monotonic() + 30
        while len(st.openai.sessions) < n and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        first = list(st.openai.sessions)
        progress(f"upstream: {n} calls up; every OpenAI session stops reading")
        peaks = Peaks()
        for session in first:
            session.stop_reading()

        def replaced() -> bool:
            return len(st.openai.sessions) >= 2 * n

        sampler = asyncio.create_task(_sampling(st, peaks, replaced))
        started = time.monotonic()
        await asyncio.wait_for(sampler, settings.upstream_stall_s + 60)
        progress(f"upstream: every session replaced after {time.monotonic() - started:.1f} s")
        for h in handles:
            h.hangup()
        records = await asyncio.gather(*(h.wait() for h in handles))
        ended = dict(gw.ended)
    bounds = {"upstream_write": HIGH_WATER + 8 * KIB,  # appends stop at the pause: the mark + the write crossing it
              "caller_held": settings.max_pending_audio_ms * 8}
    result = peaks.result(n, bounds)
    if [str(r.outcome) for r in records] != ["completed"] * n:
        result["problems"].append(f"outcomes {[str(r.outcome) for r in records]}")
    return {**result, "ended": ended}


SCENARIOS = {"twilio": twilio_stall, "upstream": upstream_stall}


def table(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results.items():
        peak, bounds = r["peak_bytes"], r["bounds_bytes"]
        cells = [f"{peak[k] / KIB:,.1f}" + (f" (≤ {bounds[k] / KIB:,.0f})" if k in bounds else "") for k in BUFFERS]
        rows.append([name, *cells, f"{peak['total'] / KIB:,.1f}", fmt(r["rss_growth_per_call_bytes"] / KIB, 1)])
    return render_table(["stall", "Twilio write KiB", "upstream write KiB", "paced held KiB", "caller held KiB",
                         "sum KiB", "RSS growth/call KiB"], rows)
