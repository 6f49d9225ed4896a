"""Phone agents end to end over real sockets: tools, filler, keypad, hang-up, transfer, routing, records.

OpenAI simulator (scripted model turns, GA function calling) ⇄ gateway ⇄ Twilio simulator and its
REST API, plus a tool server that verifies every request's signature. Verdicts come from what the
simulators and the tool server recorded, and from the call records the gateway wrote.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from aiohttp import web

from gateway.agents.signing import HEADER, verify
from gateway.sim.harness import AUTH_TOKEN, PUBLIC_URL, Stack, StackConfig
from gateway.sim.openai_script import SimTurn
from gateway.sim.openai_sim import OpenAISimConfig
from gateway.sim.tool_server import ToolServer
from gateway.sim.twilio_rest import TwilioRestSim
from gateway.sim.twilio_script import CallScript, Dtmf, Turn
from gateway.twilio.signature import compute_signature

# Scenario tests of the agent behaviour, 8-10 s each: under the production loop only (CI time).
pytestmark = pytest.mark.uvloop_only

SECRET = "tool-secret-for-tests"


def agents_toml(tool_base: str, *, filler: str = "speech", after_ms: int = 300, tool_path: str = "lookup-order",
                timeout_s: float = 4.0) -> str:
    return f"""
[agents.support]
instructions = "You are the support line."
greeting = "Greet the caller."
tools = ["lookup_order", "end_call", "transfer_call"]
transfer_targets = ["+15550100", "sip:desk@example.com"]
dtmf = "forward"
transcripts = true
[agents.support.filler]
kind = "{filler}"
after_ms = {after_ms}

[agents.sales]
instructions = "You are the sales line."
greeting = "Greet the caller."

[tools.lookup_order]
description = "Look up an order by its number."
parameters = {{ type = "object", properties = {{ order_id = {{ type = "string" }} }}, required = ["order_id"] }}
url = "{tool_base}/{tool_path}"
timeout_s = {timeout_s}

[routes]
default = "support"
"+18005550177" = "sales"
"""


def rest_settings(rest: TwilioRestSim) -> dict[str, Any]:
    return {"twilio_account_sid": rest.account_sid, "twilio_api_base_url": rest.base_url}


@contextlib.asynccontextmanager
async def agent_stack(tmp_path: Path, script: tuple[SimTurn, ...], *, tool_delay_s: float = 0.0,
                      record_webhook: str = "", **toml: Any) -> AsyncIterator[tuple[Stack, ToolServer]]:
    tools = ToolServer(SECRET, delay_s=tool_delay_s)
    base = await tools.start()
    path = tmp_path / "agents.toml"
    path.write_text(agents_toml(base, **toml))
    openai = OpenAISimConfig(response_ms=(1500,), pace=5.0, first_audio_ms=300, script=script)
    config = StackConfig(openai=openai, rest_settings=rest_settings, settings={
        "agents_file": str(path), "tool_secret": SECRET, "call_records_dir": str(tmp_path / "records"),
        "call_record_webhook": record_webhook})
    try:
        async with Stack(config) as stack:
            yield stack, tools
    finally:
        await tools.stop()


def records(tmp_path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in (tmp_path / "records").glob("calls-*.jsonl"):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            out[record["call_sid"]] = record
    return out


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


GREET = SimTurn.say("Hello, this is support. What is your order number?")
LOOKUP = SimTurn.call("lookup_order", {"order_id": "42"}, say="Let me check.")
ANSWER = SimTurn.say("Order 42 has shipped and arrives tomorrow.")
ASK_CALLER = Turn(after_quiet_ms=300, speech_ms=800)


def test_tool_call_with_a_filler_while_it_is_slow(run, tmp_path):
    async def scenario() -> None:
        async with agent_stack(tmp_path, (GREET, LOOKUP, ANSWER), tool_delay_s=1.2) as (st, tools):
            record, report = await st.call(CallScript(duration_ms=9000, turns=(ASK_CALLER,)))
            session = st.session_for(record.call_sid)
            assert session is not None
        assert report.problems == []
        assert len(tools.requests) == 1 and tools.requests[0].signed
        request = tools.requests[0].body
        assert request["name"] == "lookup_order" and request["arguments"] == {"order_id": "42"}
        assert request["call"]["call_sid"] == record.call_sid and request["call"]["agent"] == "support"
        assert request["call"]["from"] == "+14155550123" and request["call"]["to"] == "+18005550199"
        outputs = session.function_outputs
        assert [orjson.loads(o.output)["status"] for o in outputs] == ["shipped"]
        fillers = [r for r in session.responses if (r.metadata or {}).get("gateway") == "filler"]
        assert len(fillers) == 1 and fillers[0].conversation is False  # out of band
        # it stopped the moment the tool answered: cancelled if still generating, and what Twilio
        # still held of it cleared (the caller hears the answer, not the rest of the filler)
        assert report.clears == 1 and record.clears[0].bytes_dropped > 0
        answers = [r for r in session.responses if r.script_index == 2]
        assert answers and answers[0].status == "completed"  # the model spoke the answer after the output
        rec = records(tmp_path)[record.call_sid]
        assert [(t["name"], t["status"]) for t in rec["tool_calls"]] == [("lookup_order", "ok")]
        assert rec["tool_calls"][0]["latency_ms"] >= 1200

    run(scenario())


def test_tool_failures_become_error_outputs(run, tmp_path):
    async def one(path: str, expected: str) -> None:
        work = tmp_path / path
        work.mkdir()
        async with agent_stack(work, (GREET, LOOKUP, ANSWER), tool_path=path, timeout_s=0.5,
                               filler="none") as (st, _tools):
            record, report = await st.call(CallScript(duration_ms=7000, turns=(ASK_CALLER,)))
            session = st.session_for(record.call_sid)
            assert session is not None
        assert report.problems == [], path
        assert list(orjson.loads(session.function_outputs[0].output)) == ["error"], path
        assert any(r.script_index == 2 for r in session.responses), path  # the model could apologise
        assert records(work)[record.call_sid]["tool_calls"][0]["status"] == expected

    async def scenario() -> None:  # three independent stacks, side by side
        await asyncio.gather(one("fail", "http_error"), one("garbage", "invalid_json"), one("slow", "timeout"))

    run(scenario(), timeout=120)


def test_calls_of_an_interrupted_response_are_not_executed(run, tmp_path):
    long_call = SimTurn.call("lookup_order", {"order_id": "4" * 400})

    async def scenario() -> None:
        async with agent_stack(tmp_path, (GREET, long_call, ANSWER), filler="none") as (st, tools):
            handle = st.start_call(CallScript(duration_ms=6000, turns=(ASK_CALLER,)))
            await wait_for(lambda: any(s.function_calls for s in st.openai.sessions))
            st.gateway.calls_by_sid[handle.record.call_sid].interrupt()  # type: ignore[union-attr]
            record = await handle.wait()
            session = st.session_for(record.call_sid)
            assert session is not None
        assert session.function_calls[0].status == "incomplete"
        assert tools.requests == [] and session.function_outputs == []
        assert [t["status"] for t in records(tmp_path)[record.call_sid]["tool_calls"]] == ["skipped"]

    run(scenario())


def test_barge_in_during_the_filler(run, tmp_path):
    async def scenario() -> None:
        async with agent_stack(tmp_path, (GREET, LOOKUP, ANSWER), tool_delay_s=3.0, after_ms=200) as (st, tools):
            st.openai.config.filler_ms = 3000
            # the caller asks, then talks over the filler 400 ms into it
            script = CallScript(duration_ms=10_000, turns=(ASK_CALLER, Turn(after_heard_ms=400, speech_ms=600)))
            record, report = await st.call(script)
            session = st.session_for(record.call_sid)
            assert session is not None
        assert report.problems == []  # no truncate of the out-of-band item provoked an error
        assert any((r.metadata or {}).get("gateway") == "filler" for r in session.responses)
        assert report.clears >= 1
        assert len(tools.requests) == 1 and len(session.function_outputs) == 1  # the tool still answered

    run(scenario())


def test_hold_tone_filler(run, tmp_path):
    async def scenario() -> None:
        async with agent_stack(tmp_path, (GREET, LOOKUP, ANSWER), tool_delay_s=2.0, filler="tone",
                               after_ms=200) as (st, _tools):
            record, report = await st.call(CallScript(duration_ms=9000, turns=(ASK_CALLER,)))
            session = st.session_for(record.call_sid)
            assert session is not None
        unknown = [p for p in report.problems if "matching no assistant item" in p]
        assert unknown, "the hold tone (local audio) should have reached Twilio"
        assert [p for p in report.problems if "matching no assistant item" not in p] == []
        assert not session.truncates  # local audio is never truncated upstream

    run(scenario())


def test_end_call_after_the_goodbye_played_in_full(run, tmp_path):
    goodbye = SimTurn.call("end_call", {"reason": "done"}, say="Thank you for calling, goodbye!")

    async def scenario() -> None:
        async with agent_stack(tmp_path, (GREET, goodbye)) as (st, _tools):
            record, report = await st.call(CallScript(duration_ms=20_000, turns=(ASK_CALLER,)))
            rest = st.twilio_rest
            assert rest is not None
            gw_ended = dict(st.gateway.ended)  # type: ignore[union-attr]
        assert str(record.outcome) == "rest_completed" and report.problems == []
        assert record.unplayed_bytes == 0  # the caller heard all of the goodbye
        updates = [r for r in rest.requests if r.call_sid == record.call_sid and r.method == "POST"]
        assert [u.form.get("Status") for u in updates] == ["completed"]
        assert gw_ended == {"agent_hangup": 1}
        rec = records(tmp_path)[record.call_sid]
        assert rec["outcome"] == "agent_hangup" and rec["tool_calls"][0]["name"] == "end_call"

    run(scenario())


def test_transfer_to_an_allowed_target_and_a_refused_one(run, tmp_path):
    refused = SimTurn.call("transfer_call", {"target": "+19995550000"}, say="Let me transfer you.")
    allowed = SimTurn.call("transfer_call", {"target": "sip:desk@example.com"}, say="Transferring you now.")

    async def scenario() -> None:
        async with agent_stack(tmp_path, (GREET, refused, allowed)) as (st, _tools):
            record, report = await st.call(CallScript(duration_ms=20_000, turns=(ASK_CALLER,)))
            session = st.session_for(record.call_sid)
            assert session is not None
        assert str(record.outcome) == "redirected" and report.problems == []
        assert record.transferred_to == "sip:desk@example.com"
        assert "not an allowed transfer target" in orjson.loads(session.function_outputs[0].output)["error"]
        statuses = [t["status"] for t in records(tmp_path)[record.call_sid]["tool_calls"]]
        assert statuses == ["refused", "ok"]
        assert records(tmp_path)[record.call_sid]["outcome"] == "transferred"

    run(scenario())


def test_keypad_digits_are_batched(run, tmp_path):
    async def scenario() -> None:
        async with agent_stack(tmp_path, (GREET, ANSWER)) as (st, _tools):
            script = CallScript(duration_ms=8000, dtmf=(Dtmf(2500, "42#", interval_ms=300), Dtmf(5500, "7")))
            record, report = await st.call(script)
            session = st.session_for(record.call_sid)
            assert session is not None
        assert report.problems == []
        assert [t.text for t in session.text_inputs] == ["The caller pressed 4 2 #", "The caller pressed 7"]
        assert records(tmp_path)[record.call_sid]["dtmf_digits"] == 4

    run(scenario())


def test_agent_routing_by_called_number_and_by_query(run, tmp_path):
    def instructions(st: Stack, sid: str) -> str:
        session = st.session_for(sid)
        assert session is not None
        update = next(e for e in session.client_events if e.type == "session.update")
        return str(update.event["session"]["instructions"])

    async def scenario() -> None:
        async with agent_stack(tmp_path, ()) as (st, _tools):
            by_to, _ = await st.call(CallScript(duration_ms=1500, called="+18005550177"))
            default, _ = await st.call(CallScript(duration_ms=1500))
            assert st.twilio is not None
            st.twilio.config.webhook_url = PUBLIC_URL + "/twilio/voice?agent=sales"
            by_query, _ = await st.call(CallScript(duration_ms=1500))
            st.twilio.config.webhook_url = PUBLIC_URL + "/twilio/voice?agent=nobody"
            unknown, _ = await st.call(CallScript(duration_ms=1500))
            assert instructions(st, by_to.call_sid) == "You are the sales line."
            assert instructions(st, default.call_sid) == "You are the support line."
            assert instructions(st, by_query.call_sid) == "You are the sales line."
            assert instructions(st, unknown.call_sid) == "You are the support line."

    run(scenario())


def test_a_forged_agent_parameter_is_ignored(run, tmp_path):
    """The agent travels in the signed token; a `<Parameter name="agent">` changes nothing."""

    async def scenario() -> None:
        async with agent_stack(tmp_path, ()) as (st, _tools):
            form = {"CallSid": "CA" + "f" * 32, "From": "+14155550123", "To": "+18005550177", "AccountSid": "AC1"}
            url = PUBLIC_URL + "/twilio/voice"
            headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}
            async with aiohttp.ClientSession() as http, \
                    http.post(st.base_url + "/twilio/voice", data=form, headers=headers) as resp:
                twiml = await resp.text()
            token = twiml.split('name="call_token" value="')[1].split('"')[0]
            ws_url = st.base_url.replace("http", "ws") + "/twilio/media"
            async with websockets.connect(ws_url, subprotocols=["audio.twilio.com"]) as ws:  # type: ignore[list-item]
                await ws.send(orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode())
                start = {"accountSid": "AC1", "streamSid": "MZ" + "f" * 32, "callSid": form["CallSid"],
                         "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                                 "channels": 1},
                         "customParameters": {"call_token": token, "agent": "support"}}
                await ws.send(orjson.dumps({"event": "start", "sequenceNumber": "1", "start": start,
                                            "streamSid": start["streamSid"]}).decode())
                await wait_for(lambda: st.session_for(form["CallSid"]) is not None)
            session = st.session_for(form["CallSid"])
            assert session is not None
            update = next(e for e in session.client_events if e.type == "session.update")
            assert update.event["session"]["instructions"] == "You are the sales line."  # routed by To, signed

    run(scenario())


def test_call_record_transcript_is_cut_where_the_caller_stopped_hearing(run, tmp_path):
    long_answer = SimTurn.say(" ".join(f"word{i}" for i in range(60)), audio_ms=6000)

    async def scenario() -> None:
        delivered: list[tuple[bool, dict[str, Any]]] = []

        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            delivered.append((verify(SECRET, request.headers.get(HEADER, ""), body), orjson.loads(body)))
            return web.Response(status=204)

        receiver = web.Application()
        receiver.router.add_post("/records", receive)
        runner = web.AppRunner(receiver, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        webhook = f"http://127.0.0.1:{runner.addresses[0][1]}/records"
        try:
            async with agent_stack(tmp_path, (long_answer, SimTurn.say("Sure.")), record_webhook=webhook) as (st, _):
                st.openai.config.caller_transcripts = ("Wait, stop.",)
                script = CallScript(duration_ms=9000, turns=(Turn(after_heard_ms=2000, speech_ms=700),))
                record, report = await st.call(script)
                session = st.session_for(record.call_sid)
                assert session is not None
        finally:
            await runner.cleanup()
        assert report.problems == [] and len(report.truncates) == 1
        rec = records(tmp_path)[record.call_sid]
        assert delivered == [(True, rec)]  # the webhook got the same record, signed
        assistant = [t for t in rec["transcript"] if t["role"] == "assistant"]
        cut = assistant[0]
        assert cut["truncated"] and cut["heard_ms"] == report.truncates[0].audio_end_ms
        heard_words = len(cut["text"].split())
        expected = 60 * cut["heard_ms"] / cut["audio_ms"]
        assert abs(heard_words - expected) <= 1
        assert any(t["role"] == "caller" and t["text"] == "Wait, stop." for t in rec["transcript"])
        usage = [r.usage for r in session.responses if r.usage]
        summed = sum(u["output_token_details"]["audio_tokens"] for u in usage)
        assert rec["usage"]["tokens"]["output_audio"] == summed and rec["cost_usd"] > 0

    run(scenario())
