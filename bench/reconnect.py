"""Upstream reconnect: how long a call is without a model after its session fails, by failure kind.

`python -m bench reconnect --calls 40 --concurrency 20` places calls through the real `Gateway`
(in this process, uvloop) between the protocol simulators (`gateway.sim.harness.Stack`: OpenAI over
TLS, Twilio with 40 ± 10 ms latency). Each call talks (a greeting, caller turns, answers); once its
first session is 2–5 s old (drawn per call) the OpenAI simulator fails that session in one of four
ways, in turn per call:
  * close: a CLOSE frame (1011), as a server shutting a session;
  * reset: the TCP connection reset, no CLOSE frame (a crashed server or a middlebox);
  * freeze: a half-open socket: nothing read, nothing sent, no pong (found by the keepalive);
  * expire: `error` `session_expired` then CLOSE 1001, as at the 60-minute cap.
The gateway reconnects each call (GATEWAY_UPSTREAM_RECONNECT_*) with the conversation replayed.

Measured per kind:
  * reconnect: the gateway's own figure (`gateway_upstream_reconnect_seconds`, read exactly from
    its "upstream reconnected after" log record): from the failure being known to the new session
    taking over (connect, TLS, `session.update`, the replay sent);
  * detection: from the injection to the failure being known (close/reset/expire: the socket says
    so; freeze: the keepalive's ping idle + timeout, --ping-idle-s/--ping-timeout-s here);
  * caller audio that reached no session (sent by the caller, in neither session's input audio:
    held beyond GATEWAY_MAX_PENDING_AUDIO_MS or lost in flight), in ms;
  * the call's outcome (every call must complete) and the items replayed.
Output: progress, a table, --out (reconnect.json: the figures, the samples, the options, the
environment) and reconnect.png beside it. Exit status 1 if a call did not complete, did not
reconnect exactly once, or lost more caller audio than the documented bound.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.sim.harness import Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig, SimSession
from gateway.sim.twilio_script import CallScript, Turn

from .report import RESULTS, environment, fmt, render_table, write_json

KINDS = ("close", "reset", "freeze", "expire")
FRAME_MS = 20


@dataclass
class CallRun:
    call_sid: str
    kind: str
    inject_after_s: float
    injected_at: float | None = None  # monotonic
    reconnects: list[tuple[float, float]] = field(default_factory=list)  # (took s, known at monotonic)
    outcome: str = ""
    sessions: int = 0
    replayed_items: int = 0
    caller_sent: int = 0
    caller_got: int = 0


class _Reconnects(logging.Handler):
    """The gateway's "upstream reconnected after %.2f s" records, with the exact float and call."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.by_call: dict[str, list[tuple[float, float]]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("upstream reconnected after") and isinstance(record.args, tuple):
            took = record.args[0]
            assert isinstance(took, float), record.args
            self.by_call.setdefault(getattr(record, "call_sid", ""), []).append((took, time.monotonic()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=40, help="calls in all (default 40: 10 per failure kind)")
    parser.add_argument("--concurrency", type=int, default=20, help="calls up at once (default 20)")
    parser.add_argument("--duration-s", type=float, default=12.0, help="each call's length (default 12 s)")
    parser.add_argument("--ping-idle-s", type=float, default=1.0,
                        help="GATEWAY_UPSTREAM_PING_IDLE_S for the run (default 1; the service default is 10)")
    parser.add_argument("--ping-timeout-s", type=float, default=1.0,
                        help="GATEWAY_UPSTREAM_PING_TIMEOUT_S for the run (default 1; the service default is 5)")
    parser.add_argument("--seed", type=int, default=1, help="draws of the injection times (default 1)")
    parser.add_argument("--no-plots", action="store_true", help="skip reconnect.png")
    parser.add_argument("--out", default=str(RESULTS / "reconnect" / "reconnect.json"),
                        help="the JSON report; reconnect.png goes beside it (bench/results/reconnect/reconnect.json)")


def run(args: argparse.Namespace) -> int:
    import uvloop

    calls = uvloop.run(run_calls(args, lambda line: print(line, flush=True)))
    result = summarise(calls, args)
    print()
    print(table(result))
    out = write_json(args.out, {**result, "environment": environment()})
    print(f"\nJSON: {out}")
    if not args.no_plots:
        print(f"plot: {plot(calls, out.with_suffix('.png'))}")
    problems = result["problems"]
    for line in problems:
        print(f"PROBLEM: {line}")
    print(f"\n{len(calls)} calls, {sum(len(c.reconnects) for c in calls)} reconnects, "
          f"{'no problems' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _script(duration_s: float) -> CallScript:
    turns = tuple(Turn(after_quiet_ms=500, speech_ms=900) for _ in range(int(duration_s // 3)))
    return CallScript(duration_ms=int(duration_s * 1000), turns=turns)


def _call_of(session: SimSession) -> str | None:
    for event in session.client_events:
        if event.type == "session.update":
            sid, _, what = str(event.event.get("event_id", "")).rpartition(":")
            return sid if what == "session" else None
    return None


def _inject(session: SimSession, kind: str) -> None:
    if kind == "close":
        session.close(1011, "injected failure")
    elif kind == "reset":
        session.reset()
    elif kind == "freeze":
        session.freeze()
    else:
        session.expire()


async def run_calls(args: argparse.Namespace, progress: Any) -> list[CallRun]:
    handler = _Reconnects()
    logger = logging.getLogger("gateway.continuity")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    rng = random.Random(args.seed)
    openai = OpenAISimConfig(response_ms=(2500,), pace=1.0, first_audio_ms=300)
    config = StackConfig(openai=openai, settings={
        "greeting": "Greet the caller.", "upstream_ping_idle_s": args.ping_idle_s,
        "upstream_ping_timeout_s": args.ping_timeout_s})
    runs: dict[str, CallRun] = {}
    try:
        async with Stack(config) as st:
            gate = asyncio.Semaphore(args.concurrency)
            first_session: dict[str, SimSession] = {}

            async def one(i: int) -> None:
                async with gate:
                    handle = st.start_call(_script(args.duration_s))
                    sid = handle.record.call_sid
                    runs[sid] = CallRun(sid, KINDS[i % len(KINDS)], rng.uniform(2.0, 5.0))
                    record = await handle.wait()
                    runs[sid].outcome = str(record.outcome)
                    sessions = [s for s in st.openai.sessions if _call_of(s) == sid]
                    runs[sid].sessions = len(sessions)
                    runs[sid].caller_sent = len(record.caller_audio())
                    runs[sid].caller_got = sum(len(s.input_audio) for s in sessions)
                    if len(sessions) > 1:
                        runs[sid].replayed_items = sum(1 for e in sessions[1].client_events
                                                       if e.type == "conversation.item.create")
                    done = sum(1 for r in runs.values() if r.outcome)
                    if done % max(1, args.calls // 10) == 0 or done == args.calls:
                        progress(f"  {done}/{args.calls} calls done")

            async def injector() -> None:
                loop = asyncio.get_running_loop()
                while True:
                    now = loop.time()  # the simulator's clock (connected_at)
                    for session in list(st.openai.sessions):
                        sid = _call_of(session)
                        if sid is None or sid not in runs:
                            continue
                        first = first_session.setdefault(sid, session)
                        r = runs[sid]
                        if (first is session and r.injected_at is None and session.connected_at is not None
                                and now - session.connected_at >= r.inject_after_s):
                            r.injected_at = time.monotonic()
                            _inject(session, r.kind)
                    await asyncio.sleep(0.01)

            progress(f"reconnect: {args.calls} calls, {args.concurrency} at once, {args.duration_s:g} s each, "
                     f"failures {', '.join(KINDS)} in turn")
            task = asyncio.create_task(injector())
            try:
                await asyncio.gather(*(one(i) for i in range(args.calls)))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    for sid, r in runs.items():
        r.reconnects = handler.by_call.get(sid, [])
    return list(runs.values())


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    v = np.asarray(values)
    return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
            "max": float(v.max())}


def summarise(calls: list[CallRun], args: argparse.Namespace) -> dict[str, Any]:
    from gateway.config import Settings

    bound_ms = Settings().max_pending_audio_ms + 200  # the held bound + what may be in flight
    kinds: dict[str, Any] = {}
    problems = []
    for kind in (*KINDS, "all"):
        mine = [c for c in calls if kind in ("all", c.kind)]
        took = [t * 1000 for c in mine for t, _ in c.reconnects]
        detect = [(c.reconnects[0][1] - c.reconnects[0][0] - c.injected_at) * 1000
                  for c in mine if c.reconnects and c.injected_at is not None]
        lost = [(c.caller_sent - c.caller_got) / 8.0 for c in mine]
        kinds[kind] = {"calls": len(mine), "reconnect_ms": _stats(took), "detection_ms": _stats(detect),
                       "caller_audio_unsent_ms": _stats(lost),
                       "replayed_items": _stats([float(c.replayed_items) for c in mine])}
    for c in calls:
        if c.outcome != "completed":
            problems.append(f"{c.call_sid} ({c.kind}): outcome {c.outcome}")
        if c.injected_at is None:
            problems.append(f"{c.call_sid} ({c.kind}): the failure was never injected (call too short?)")
        elif len(c.reconnects) != 1 or c.sessions != 2:
            problems.append(f"{c.call_sid} ({c.kind}): {len(c.reconnects)} reconnects, {c.sessions} sessions")
        if (c.caller_sent - c.caller_got) / 8.0 > bound_ms:
            problems.append(f"{c.call_sid} ({c.kind}): {(c.caller_sent - c.caller_got) / 8.0:.0f} ms of caller "
                            f"audio reached no session (bound {bound_ms} ms)")
    return {"options": {k: v for k, v in vars(args).items() if k != "run"}, "kinds": kinds,
            "samples": [{"call_sid": c.call_sid, "kind": c.kind, "outcome": c.outcome, "sessions": c.sessions,
                         "reconnect_s": [t for t, _ in c.reconnects], "replayed_items": c.replayed_items,
                         "caller_unsent_ms": (c.caller_sent - c.caller_got) / 8.0} for c in calls],
            "problems": problems}


def table(result: dict[str, Any]) -> str:
    rows = []
    for kind, k in result["kinds"].items():
        r, d, u = k["reconnect_ms"], k["detection_ms"], k["caller_audio_unsent_ms"]
        rows.append([kind, str(k["calls"]), str(r.get("n", 0)), fmt(r.get("p50")), fmt(r.get("p99")), fmt(r.get("max")),
                     fmt(d.get("p50")), fmt(d.get("p99")), fmt(u.get("p50"), 0), fmt(u.get("max"), 0),
                     fmt(k["replayed_items"].get("p50"), 0)])
    return render_table(["failure", "calls", "reconnects", "reconnect p50 ms", "p99", "max",
                         "detection p50 ms", "p99", "caller audio unsent p50 ms", "max", "items replayed p50"], rows)


def plot(calls: list[CallRun], path: Path) -> Path:
    from .plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for kind in KINDS:
        v = np.sort([t * 1000 for c in calls if c.kind == kind for t, _ in c.reconnects])
        if v.size:
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=f"{kind} (n={v.size})")
    ax.set_xlabel("failure known -> new session took over (ms)")
    ax.set_ylabel("share of reconnects done")
    ax.set_title("upstream reconnect time by failure kind")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
