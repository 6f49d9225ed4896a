"""``gateway demo``: the real gateway between the two protocol simulators, every barge-in phase.

Everything runs on loopback in this process: the OpenAI Realtime simulator (TLS, self-signed CA
the gateway is told to trust), the gateway in secure mode (Twilio signatures and per-call tokens
checked), and the Twilio simulator playing callers with 40 ± 10 ms of one-way latency. Verdicts
come from what the simulators recorded (``harness.Stack.judge``), not from the gateway.
"""
from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from . import demo_agents
from .sim.harness import CallReport, Stack, StackConfig, TruncateCheck
from .sim.openai_sim import OpenAISimConfig
from .sim.twilio_record import CallRecord
from .sim.twilio_script import CallScript, Turn

TOLERANCE_MS = 20.0


@dataclass
class Expect:
    clears: int
    truncates: int
    cancels: int = 0


@dataclass
class Scenario:
    name: str
    explain: str
    script: CallScript
    expect: Expect
    during: Callable[[Stack, str], Awaitable[None]] | None = None  # runs alongside the call


@dataclass
class Outcome:
    scenario: Scenario
    record: CallRecord
    report: CallReport
    gateway_clear_us: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def _double_control_interrupt(stack: Stack, call_sid: str) -> None:
    """As soon as the caller's speech interrupted, fire the control API twice at once."""
    gateway = stack.gateway
    assert gateway is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        call = gateway.calls_by_sid.get(call_sid)
        if call is not None and call.stats.interrupts:
            break
        await asyncio.sleep(0.005)
    url = f"{stack.base_url}/calls/{call_sid}/interrupt"
    headers = {"Authorization": f"Bearer {stack.settings.control_token}"}  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http:
        async def post() -> int:
            async with http.post(url, headers=headers) as resp:
                return resp.status
        await asyncio.gather(post(), post())


def scenarios(two_items: bool) -> list[Scenario]:
    if two_items:
        return [Scenario(
            "two items back to back",
            "a 1.5 s item then a 3 s item queued at Twilio; caller interrupts 800 ms into the first: "
            "first truncated where heard, second truncated at 0 ms (never heard)",
            CallScript(duration_ms=4000, turns=(Turn(after_heard_ms=800, speech_ms=500),)),
            Expect(clears=1, truncates=2),
        )]
    return [
        Scenario(
            "barge-in during generation",
            "caller interrupts 300 ms into the greeting while the model is still generating it",
            CallScript(duration_ms=3500, turns=(Turn(after_heard_ms=300, speech_ms=500),)),
            Expect(clears=1, truncates=1),
        ),
        Scenario(
            "barge-in after generation (the classic bug)",
            "the model finished generating long ago; Twilio is still playing its buffer at 2.5 s",
            CallScript(duration_ms=4500, turns=(Turn(after_heard_ms=2500, speech_ms=500),)),
            Expect(clears=1, truncates=1),
        ),
        Scenario(
            "caller speaks after playback finished",
            "nothing left at Twilio: no clear, no truncate, no cancel, no upstream error",
            CallScript(duration_ms=8500, turns=(Turn(after_quiet_ms=400, speech_ms=500),)),
            Expect(clears=0, truncates=0),
        ),
        Scenario(
            "two interrupts in quick succession",
            "speech interrupts at 1 s and the control API fires twice within milliseconds: "
            "one clear, one truncate, nothing provoked upstream",
            CallScript(duration_ms=3500, turns=(Turn(after_heard_ms=1000, speech_ms=500),)),
            Expect(clears=1, truncates=1),
            during=_double_control_interrupt,
        ),
    ]


def _check(outcome: Outcome) -> None:
    r, e, f = outcome.report, outcome.scenario.expect, outcome.failures
    f.extend(r.problems)
    if len(outcome.record.turns) != len(outcome.scenario.script.turns):
        f.append(f"only {len(outcome.record.turns)} of {len(outcome.scenario.script.turns)} caller turns happened")
    if r.clears != e.clears:
        f.append(f"{r.clears} clears at Twilio, expected {e.clears}")
    if len(r.truncates) != e.truncates:
        f.append(f"{len(r.truncates)} truncates, expected {e.truncates}")
    if r.cancels != e.cancels:
        f.append(f"{r.cancels} response.cancel sent, expected {e.cancels}")
    for t in r.truncates:
        if abs(t.error_ms) > TOLERANCE_MS:
            f.append(f"truncate {t.audio_end_ms} ms vs heard {t.heard_ms:.0f} ms: off by {t.error_ms:+.0f} ms")


async def _run_stack(two_items: bool, audio_mode: str, log: Callable[[str], None]) -> list[Outcome]:
    openai = OpenAISimConfig(response_ms=(1500, 3000) if two_items else (6000,), pace=5.0, first_audio_ms=400)
    if two_items:
        openai.items_per_response = 2
    config = StackConfig(audio_mode=audio_mode, openai=openai,
                         settings={"greeting": "Greet the caller and explain the service."})
    outcomes: list[Outcome] = []
    async with Stack(config) as stack:
        gateway_stats: dict[str, list[float]] = {}
        stack.gateway.call_end_hooks.append(  # type: ignore[union-attr]
            lambda c: gateway_stats.__setitem__(c.call_sid or "", [s * 1e6 for s in c.stats.clear_latency_s]))

        async def one(sc: Scenario, i: int) -> Outcome:
            sid = "CA%032x" % (0xDE40 * 1000 + i + (500 if two_items else 0))
            handle = stack.start_call(sc.script, sid)
            side = asyncio.ensure_future(sc.during(stack, sid)) if sc.during else None
            record = await handle.wait()
            if side is not None:
                await side
            out = Outcome(sc, record, stack.judge(record))
            out.gateway_clear_us = gateway_stats.get(sid, [])
            _check(out)
            return out

        # The calls run at once; their verdicts are printed in table order, each as soon as it and
        # every call above it have ended.
        tasks = [asyncio.ensure_future(one(sc, i)) for i, sc in enumerate(scenarios(two_items))]
        try:
            for task in tasks:
                out = await task
                log(f"  {'PASS' if not out.failures else 'FAIL'}  {out.scenario.name}")
                outcomes.append(out)
        finally:
            for task in tasks:
                task.cancel()
    return outcomes


def _summary(outcomes: list[Outcome]) -> str:
    header = (f"{'scenario':46} {'clear':>5} {'cancel':>6} {'truncate ms':>12} {'heard ms':>9} "
              f"{'error':>7} {'stop ms':>8} {'gw µs':>6}  verdict")
    lines = ["", header, "-" * 118]
    for o in outcomes:
        r = o.report
        truncs: list[TruncateCheck | None] = [*r.truncates] or [None]
        for k, t in enumerate(truncs):
            name = o.scenario.name if k == 0 else f"  └ item {k + 1} of the same barge-in"
            trunc = f"{t.audio_end_ms}" if t else "-"
            heard = f"{t.heard_ms:.0f}" if t else "-"
            err = f"{t.error_ms:+.1f}" if t else "-"
            stop = f"{r.stop_latency_ms[0]:.0f}" if (k == 0 and r.stop_latency_ms) else ""
            gw = f"{max(o.gateway_clear_us):.1f}" if (k == 0 and o.gateway_clear_us) else ""
            verdict = ("PASS" if not o.failures else "FAIL") if k == 0 else ""
            clears = str(r.clears) if k == 0 else ""
            cancels = str(r.cancels) if k == 0 else ""
            lines.append(f"{name:46} {clears:>5} {cancels:>6} {trunc:>12} {heard:>9} {err:>7} {stop:>8} "
                         f"{gw:>6}  {verdict}".rstrip())
        lines.extend(f"      ! {failure}" for failure in o.failures)
    lines += [
        "",
        "clear/cancel: messages the gateway sent (Twilio clear, upstream response.cancel). truncate ms: the",
        "audio_end_ms sent upstream; heard ms: what the simulated caller actually heard of that item (one",
        "row per truncated item: └ rows are further items of the same barge-in); error: truncate - heard;",
        "stop ms: caller's first syllable -> assistant audio stopped at the caller's ear (VAD detection +",
        "2 network legs of 40±10 ms); gw µs: trigger -> clear handed to the socket inside the gateway.",
    ]
    return "\n".join(lines)


def _scenario_list(first: int, listed: list[Scenario]) -> list[str]:
    return [f"  {first + i}. {sc.name}: {sc.explain}" for i, sc in enumerate(listed)]


async def run_demo(verbose: bool = False, audio_mode: str = "passthrough") -> int:
    def log(msg: str) -> None:
        print(msg, flush=True)

    from .logs import setup_logging

    # The gateway's JSON log lines with -v; otherwise only errors (a demo scenario may provoke warnings).
    setup_logging("INFO" if verbose else "ERROR")
    import _fastpath

    log(f"gateway demo: OpenAI simulator (TLS) <-> gateway ({audio_mode}, fast path "
        f"{'compiled' if _fastpath.COMPILED else 'pure Python'}) <-> Twilio simulator, 40±10 ms latency")
    phases, pair = scenarios(False), scenarios(True)
    log(f"{len(phases)} calls at once (every barge-in phase), then {len(pair)} call with two items back to back:")
    for line in _scenario_list(1, phases) + _scenario_list(len(phases) + 1, pair):
        log(line)
    agent_scenarios = demo_agents.scenarios()
    log(f"then {len(agent_scenarios)} phone-agent calls at once (tools, keypad, hang-up, transfer; Twilio REST "
        "simulator, a signed tool server):")
    log("\n".join(f"  {i + 1}. {sc.name}: {sc.explain}" for i, sc in enumerate(agent_scenarios)))
    log("")
    t0 = time.monotonic()
    outcomes = await _run_stack(False, audio_mode, log)
    outcomes += await _run_stack(True, audio_mode, log)
    runs = await demo_agents.run_agents(log)
    log(_summary(outcomes))
    log(demo_agents.summary(runs))
    log(demo_agents.sample_record(runs))
    failed = [o for o in outcomes if o.failures]
    failed_agents = [r for r in runs if r.problems]
    errors = [t for o in outcomes for t in o.report.truncates]
    worst = max((abs(t.error_ms) for t in errors), default=0.0)
    problems = sum(len(o.report.problems) for o in outcomes)
    total = len(outcomes) + len(runs)
    log(f"\n{total - len(failed) - len(failed_agents)}/{total} scenarios correct in "
        f"{time.monotonic() - t0:.1f} s; worst truncate error {worst:.1f} ms (target ≤ {TOLERANCE_MS:.0f} ms); "
        f"audio lost/duplicated, late audio played, protocol violations, upstream errors: "
        f"{problems or 'none'}")
    return 1 if failed or failed_agents else 0


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(run_demo()))
