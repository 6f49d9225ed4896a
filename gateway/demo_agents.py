"""``gateway demo``, second part: phone agents (tools, filler, keypad, hang-up, transfer, call records).

The same stack as the barge-in part, plus the Twilio REST simulator (hang-up and transfer go
through Twilio's REST API, with the official ``twilio`` package) and a small tool server that
verifies each request's signature. Each call reaches its own agent by the number it calls; the
OpenAI simulator plays a scripted model for it (GA function calling). Verdicts come from what the
simulators, the tool server and the gateway's call records show.
"""
from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .sim.harness import Stack, StackConfig
from .sim.openai_script import SimTurn
from .sim.openai_sim import OpenAISimConfig, SimSession
from .sim.tool_server import ToolServer
from .sim.twilio_record import CallRecord
from .sim.twilio_rest import TwilioRestSim
from .sim.twilio_script import CallScript, Dtmf, Turn

SECRET = "demo-tool-secret"  # noqa: S105 - the demo tool server's loopback key
GREET = SimTurn.say("Hello, this is Example support. How can I help?")
ASK = Turn(after_quiet_ms=300, speech_ms=800)


@dataclass
class AgentScenario:
    name: str
    explain: str
    agent: str  # reached by calling NUMBERS[agent]
    model: tuple[SimTurn, ...]  # what the scripted model does, response by response
    call: CallScript
    check: Callable[[AgentRun], list[str]]


@dataclass
class AgentRun:
    scenario: AgentScenario
    record: CallRecord
    session: SimSession | None
    call_record: dict[str, Any]
    tools: ToolServer
    rest: TwilioRestSim
    problems: list[str] = field(default_factory=list)
    summary: str = ""


def _agents_file(tool_base: str) -> str:
    agent = """
[agents.{name}]
instructions = "{name}: you are the support line of Example Inc."
greeting = "Greet the caller."
tools = ["lookup_order", "end_call", "transfer_call"]
transfer_targets = ["+15550100", "sip:desk@example.com"]
dtmf = "forward"
transcripts = true
[agents.{name}.filler]
after_ms = 600
"""
    routes = "\n".join(f'"{NUMBERS[n]}" = "{n}"' for n in NUMBERS)
    return "".join(agent.format(name=n) for n in NUMBERS) + f"""
[tools.lookup_order]
description = "Look up an order by its number."
parameters = {{ type = "object", properties = {{ order_id = {{ type = "string" }} }}, required = ["order_id"] }}
url = "{tool_base}/lookup-order"
timeout_s = 5.0

[routes]
default = "tool"
{routes}
"""


NUMBERS = {"tool": "+18005550101", "keypad": "+18005550102", "goodbye": "+18005550103", "transfer": "+18005550104"}


def _check_tool(run: AgentRun) -> list[str]:
    out = []
    s, tools = run.session, run.tools
    if len(tools.requests) != 1 or not tools.requests[0].signed:
        out.append(f"expected one signed tool request, got {[(r.path, r.signed) for r in tools.requests]}")
    outputs = s.function_outputs if s else []
    if len(outputs) != 1 or "shipped" not in outputs[0].output:
        out.append("the tool's answer did not reach the model")
    fillers = [r for r in (s.responses if s else []) if (r.metadata or {}).get("gateway") == "filler"]
    if len(fillers) != 1:
        out.append(f"expected one spoken filler, got {len(fillers)}")
    if not run.record.clears:
        out.append("the filler was not cut when the tool answered")
    latency = run.call_record["tool_calls"][0]["latency_ms"] if run.call_record.get("tool_calls") else 0
    run.summary = f"tool answered in {latency:.0f} ms; filler spoken, cut at the answer"
    return out


def _check_keypad(run: AgentRun) -> list[str]:
    texts = [t.text for t in run.session.text_inputs] if run.session else []
    run.summary = "model got: " + "; ".join(repr(t) for t in texts)
    return [] if texts == ["The caller pressed 4 2 #"] else [f"keypad text items: {texts}"]


def _check_goodbye(run: AgentRun) -> list[str]:
    out = []
    if str(run.record.outcome) != "rest_completed":
        out.append(f"call ended as {run.record.outcome}, expected a REST hang-up")
    if run.record.unplayed_bytes:
        out.append(f"{run.record.unplayed_bytes / 8:.0f} ms of the goodbye were never heard")
    updates = [r.form.get("Status") for r in run.rest.requests if r.call_sid == run.record.call_sid]
    if updates != ["completed"]:
        out.append(f"REST updates: {updates}")
    run.summary = f"goodbye heard in full; REST Status=completed; outcome {run.call_record.get('outcome')}"
    return out


def _check_transfer(run: AgentRun) -> list[str]:
    out = []
    outputs = [orjson.loads(o.output) for o in run.session.function_outputs] if run.session else []
    if not outputs or "error" not in outputs[0]:
        out.append("the refused target did not come back to the model as an error")
    if run.record.transferred_to != "sip:desk@example.com":
        out.append(f"transferred to {run.record.transferred_to!r}")
    run.summary = f"+19995550000 refused; redirected to {run.record.transferred_to} (<Dial><Sip>)"
    return out


def scenarios() -> list[AgentScenario]:
    return [
        AgentScenario(
            "tool call, slow answer, spoken filler", "lookup_order answers after 1.5 s: a filler fills the gap",
            "tool", (GREET, SimTurn.call("lookup_order", {"order_id": "42"}, say="Let me check."),
                     SimTurn.say("Order 42 has shipped and arrives tomorrow.")),
            CallScript(duration_ms=9000, turns=(ASK,), called=NUMBERS["tool"]), _check_tool),
        AgentScenario(
            "keypad digits forwarded", "the caller presses 4, 2, # within 1.5 s: one text item for the model",
            "keypad", (GREET, SimTurn.say("Thank you.")),
            CallScript(duration_ms=6000, called=NUMBERS["keypad"], dtmf=(Dtmf(2500, "42#", interval_ms=300),)),
            _check_keypad),
        AgentScenario(
            "end_call after the goodbye", "the model says goodbye and calls end_call: hang-up once it has played",
            "goodbye", (GREET, SimTurn.call("end_call", {"reason": "resolved"}, say="Thanks for calling. Goodbye!")),
            CallScript(duration_ms=20_000, turns=(ASK,), called=NUMBERS["goodbye"]), _check_goodbye),
        AgentScenario(
            "transfer_call: refused, then allowed", "a target off the allow-list is refused; sip:desk is dialled",
            "transfer", (GREET, SimTurn.call("transfer_call", {"target": "+19995550000"}, say="Let me transfer you."),
                         SimTurn.call("transfer_call", {"target": "sip:desk@example.com"}, say="Transferring now.")),
            CallScript(duration_ms=20_000, turns=(ASK,), called=NUMBERS["transfer"]), _check_transfer),
    ]


async def run_agents(log: Callable[[str], None]) -> list[AgentRun]:
    listed = scenarios()
    by_agent = {sc.agent: sc for sc in listed}
    tools = ToolServer(SECRET, delay_s=1.5)
    base = await tools.start()
    runs: list[AgentRun] = []
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as work:
        path = Path(work) / "agents.toml"
        path.write_text(_agents_file(base))

        def rest_settings(rest: TwilioRestSim) -> dict[str, Any]:
            return {"twilio_account_sid": rest.account_sid, "twilio_api_base_url": rest.base_url}

        config = StackConfig(openai=OpenAISimConfig(response_ms=(1500,), pace=5.0, first_audio_ms=300),
                             rest_settings=rest_settings, settings={
                                 "agents_file": str(path), "tool_secret": SECRET, "call_records_dir": work})
        try:
            async with Stack(config) as stack:
                def pick_script(session: SimSession) -> None:  # the model of the agent that answers
                    agent = str(session.session_config.get("instructions", "")).split(":")[0]
                    if agent in by_agent and session.script_pos == 0:
                        session.script = by_agent[agent].model

                stack.openai.on_session_update = pick_script
                records = await asyncio.gather(*(stack.start_call(sc.call).wait() for sc in listed))
                rest = stack.twilio_rest
                assert rest is not None and stack.gateway is not None
                await stack.gateway.agents.records.flush()  # the file sink writes on its own thread
                call_records = _read_records(Path(work))
                for sc, record in zip(listed, records, strict=True):
                    run = AgentRun(sc, record, stack.session_for(record.call_sid),
                                   call_records.get(record.call_sid, {}), tools, rest)
                    run.problems = [*stack.judge(record).problems, *sc.check(run)]
                    if not run.call_record:
                        run.problems.append("no call record written")
                    log(f"  {'PASS' if not run.problems else 'FAIL'}  {sc.name}")
                    runs.append(run)
        finally:
            await tools.stop()
    return runs


def _read_records(directory: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in directory.glob("calls-*.jsonl"):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            out[record["call_sid"]] = record
    return out


def summary(runs: list[AgentRun]) -> str:
    lines = ["", f"{'agent scenario':40} {'outcome':14} {'tools':24} verdict", "-" * 100]
    for run in runs:
        tools = ", ".join(f"{t['name']}:{t['status']}" for t in run.call_record.get("tool_calls", [])) or "-"
        lines.append(f"{run.scenario.name:40} {run.call_record.get('outcome', '?'):14} {tools:24} "
                     f"{'PASS' if not run.problems else 'FAIL'}")
        lines.append(f"  {run.summary}")
        lines.extend(f"      ! {p}" for p in run.problems)
    return "\n".join(lines)


def sample_record(runs: list[AgentRun]) -> str:
    """The first call's record, as the JSONL sink wrote it (pretty-printed, transcript shortened)."""
    record = dict(runs[0].call_record) if runs else {}
    return "\ncall record of the first call (GATEWAY_CALL_RECORDS_DIR, one JSON line per call):\n" + \
        orjson.dumps(record, option=orjson.OPT_INDENT_2).decode()
