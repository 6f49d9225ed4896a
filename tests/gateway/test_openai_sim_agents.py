"""The OpenAI simulator as an agent backend: scripted turns, function calls and their outputs, user
text items, out-of-band responses, input transcription, usage, and truncation while generating.

Every server event read is checked against the official openai-python schema.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import warnings

import numpy as np
import pytest
import websockets

from gateway.sim.openai_schema import validate_server_event
from gateway.sim.openai_sim import OpenAIRealtimeSim, OpenAISimConfig, SimFunctionCall, SimTurn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

DELTA = "response.output_audio.delta"
TDELTA = "response.output_audio_transcript.delta"
ADELTA = "response.function_call_arguments.delta"
TOOLS = [{"type": "function", "name": "lookup_order", "description": "Look up an order",
          "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}},
         {"type": "function", "name": "end_call", "description": "Hang up",
          "parameters": {"type": "object", "properties": {}}}]
SESSION = {"type": "session.update", "session": {
    "type": "realtime", "instructions": "You are a phone agent.", "tools": TOOLS, "tool_choice": "auto",
    "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}}
SCRIPT = (
    SimTurn.say("Hello, thanks for calling. How can I help?", audio_ms=600),
    SimTurn.call("lookup_order", {"order_id": "42"}, say="One moment.", audio_ms=300),
    SimTurn.say("Order 42 shipped yesterday.", audio_ms=500),
    SimTurn.call("end_call", {}, say="Goodbye!", audio_ms=200),
)
MESSAGE_EVENTS = ["response.output_item.added", "conversation.item.added", "response.content_part.added", "deltas",
                  "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
                  "response.output_item.done", "conversation.item.done"]
CALL_EVENTS = ["response.output_item.added", "conversation.item.added", "args",
               "response.function_call_arguments.done", "response.output_item.done", "conversation.item.done"]


def speech(ms: int, seed: int = 1) -> bytes:
    pcm = (np.random.default_rng(seed).standard_normal(8 * ms) * 3000).astype("<i2").tobytes()
    return audioop.lin2ulaw(pcm, 2)


def silence(ms: int) -> bytes:
    return b"\xff" * (8 * ms)


class Client:
    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []

    async def send(self, event: dict) -> None:
        await self.ws.send(json.dumps(event))

    async def send_audio(self, audio: bytes, frame: int = 160) -> None:
        for i in range(0, len(audio), frame):
            chunk = base64.b64encode(audio[i:i + frame]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": chunk})

    async def recv(self, timeout: float = 5.0) -> dict:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        assert validate_server_event(event) == [], event
        self.events.append(event)
        return event

    async def until(self, type_: str, timeout: float = 5.0) -> list[dict]:
        got: list[dict] = []
        while not got or got[-1]["type"] != type_:
            got.append(await self.recv(timeout))
        return got

    async def quiet(self, seconds: float = 0.2) -> list[dict]:
        """Everything that arrives within ``seconds`` (expects the stream to go quiet)."""
        got: list[dict] = []
        while True:
            try:
                got.append(await self.recv(seconds))
            except TimeoutError:
                return got


async def started(**config) -> OpenAIRealtimeSim:
    sim = OpenAIRealtimeSim(OpenAISimConfig(**{"pace": 20.0, "transcription_delay_ms": 0, **config}))
    await sim.start()
    return sim


async def opened(sim: OpenAIRealtimeSim, update: dict | None = SESSION) -> Client:
    client = Client(await websockets.connect(sim.url, additional_headers={"Authorization": "Bearer sk-sim"},
                                             max_size=None))
    await client.until("conversation.created")
    if update is not None:
        await client.send(update)
        await client.until("session.updated")
    return client


def types(events: list[dict]) -> list[str]:
    """Types with runs of audio/transcript deltas collapsed to 'deltas' and argument deltas to 'args'."""
    out: list[str] = []
    for event in events:
        t = event["type"]
        t = "deltas" if t in (DELTA, TDELTA) else "args" if t == ADELTA else t
        if not (t in ("deltas", "args") and out and out[-1] == t):
            out.append(t)
    return out


def response_of(events: list[dict]) -> list[dict]:
    """The events from the last response.created on."""
    at = max(i for i, e in enumerate(events) if e["type"] == "response.created")
    return events[at:]


async def close(client: Client, sim: OpenAIRealtimeSim) -> None:
    await client.ws.close()
    await sim.stop()


# ---------------------------------------------------------------------------------------------- the script


def test_scripted_agent_call_flow(run):
    """Greeting, caller turn → 'one moment' + lookup_order, tool result → answer, goodbye + end_call."""
    async def scenario():
        sim = await started(script=SCRIPT)
        client = await opened(sim)
        s = sim.sessions[0]

        await client.send({"type": "response.create", "response": {"instructions": "Greet the caller."}})
        greeting = await client.until("response.done")
        assert types(greeting) == ["response.created", "rate_limits.updated", *MESSAGE_EVENTS, "response.done"]
        transcript = "".join(e["delta"] for e in greeting if e["type"] == TDELTA)
        assert transcript == "Hello, thanks for calling. How can I help?"
        assert sum(e["type"] == TDELTA for e in greeting) > 2  # spread over the audio, not one lump
        assert s.assistant_items[0].generated_ms == 600 and s.responses[0].instructions == "Greet the caller."
        assert s.responses[0].script_index == 0

        await client.send_audio(silence(200) + speech(400) + silence(600))  # the caller asks
        events = await client.until("response.done")
        response = response_of(events)
        assert types(response) == ["response.created", "rate_limits.updated", *MESSAGE_EVENTS, *CALL_EVENTS,
                                   "response.done"]
        rid = response[0]["response"]["id"]
        added = [e for e in response if e["type"] == "response.output_item.added"][1]
        call_item = added["item"]
        assert call_item["type"] == "function_call" and call_item["name"] == "lookup_order"
        assert (call_item["arguments"], call_item["status"], added["output_index"]) == ("", "in_progress", 1)
        assert call_item["call_id"].startswith("call_") and len(call_item["call_id"]) == 21
        deltas = [e for e in response if e["type"] == ADELTA]
        assert "".join(d["delta"] for d in deltas) == '{"order_id":"42"}' and len(deltas) == 2
        assert all((d["item_id"], d["call_id"], d["output_index"], d["response_id"]) ==
                   (call_item["id"], call_item["call_id"], 1, rid) for d in deltas)
        args_done = next(e for e in response if e["type"] == "response.function_call_arguments.done")
        assert {k: args_done[k] for k in ("item_id", "call_id", "name", "arguments", "output_index", "response_id")} \
            == {"item_id": call_item["id"], "call_id": call_item["call_id"], "name": "lookup_order",
                "arguments": '{"order_id":"42"}', "output_index": 1, "response_id": rid}
        item_done = [e for e in response if e["type"] == "response.output_item.done"][1]["item"]
        assert (item_done["status"], item_done["arguments"]) == ("completed", '{"order_id":"42"}')
        done = response[-1]["response"]
        assert done["status"] == "completed"
        assert [(o["type"], o["status"]) for o in done["output"]] == [("message", "completed"),
                                                                      ("function_call", "completed")]
        assert done["output"][0]["content"][0]["transcript"] == "One moment."
        assert done["output"][1]["call_id"] == call_item["call_id"]
        assert [(c.name, c.arguments, c.status, c.declared) for c in s.function_calls] == [
            ("lookup_order", '{"order_id":"42"}', "completed", True)]
        assert s.responses[1].call_ids == [call_item["call_id"]] and s.responses[1].trigger == "vad"

        await client.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_item["call_id"], "output": '{"status":"shipped"}'}})
        created = await client.until("conversation.item.done")
        assert types(created) == ["conversation.item.added", "conversation.item.done"]
        assert created[0]["previous_item_id"] == call_item["id"]
        assert created[1]["item"]["type"] == "function_call_output" and created[1]["item"]["status"] == "completed"
        assert [(o.call_id, o.name, o.output) for o in s.function_outputs] == [
            (call_item["call_id"], "lookup_order", '{"status":"shipped"}')]
        await client.send({"type": "response.create"})
        answer = await client.until("response.done")
        assert "".join(e["delta"] for e in answer if e["type"] == TDELTA) == "Order 42 shipped yesterday."

        await client.send({"type": "response.create"})
        bye = await client.until("response.done")
        assert [o["type"] for o in bye[-1]["response"]["output"]] == ["message", "function_call"]
        assert s.function_calls[-1].name == "end_call" and s.function_calls[-1].arguments == "{}"
        assert s.script_pos == 4

        await client.send({"type": "response.create"})  # the script is over: the default answer
        default = await client.until("response.done")
        assert [o["type"] for o in default[-1]["response"]["output"]] == ["message"]
        assert s.assistant_items[-1].generated_ms == 3000 and s.responses[-1].script_index is None
        assert sim.violations() == []
        await close(client, sim)
    run(scenario())


def test_turn_shapes_call_only_empty_and_several_calls(run):
    script = (SimTurn(calls=(SimFunctionCall("lookup_order", '{"order_id":"7"}', call_id="call_fixed"),
                             SimFunctionCall("end_call"))),
              SimTurn(),
              SimTurn(text="Sure.", audio_ms=0, calls=(SimFunctionCall("end_call"),)))

    async def scenario():
        sim = await started(script=script)
        client = await opened(sim)
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        assert types(events) == ["response.created", "rate_limits.updated", *CALL_EVENTS, *CALL_EVENTS,
                                 "response.done"]
        done = events[-1]["response"]
        assert (done["output"][0]["name"], done["output"][0]["call_id"]) == ("lookup_order", "call_fixed")
        assert [o["output_index"] for o in events if o["type"] == "response.output_item.added"] == [0, 1]
        await client.send({"type": "response.create"})
        empty = await client.until("response.done")
        assert types(empty) == ["response.created", "rate_limits.updated", "response.done"]
        assert empty[-1]["response"]["output"] == [] and empty[-1]["response"]["status"] == "completed"
        await client.send({"type": "response.create"})
        third = await client.until("response.done")
        assert [o["type"] for o in third[-1]["response"]["output"]] == ["function_call"]  # audio_ms=0: no message
        s = sim.sessions[0]
        assert [r.item_ids for r in s.responses][1] == [] and s.assistant_items == []
        assert sim.violations() == []
        await close(client, sim)
    run(scenario())


def test_script_per_session_and_text_modality(run):
    async def scenario():
        sim = await started(script=(SimTurn.say("First."),))
        sim.on_session = lambda session: setattr(session, "script", (SimTurn.say("Overridden, hi."),)) \
            if session.index == 1 else None
        one, two = await opened(sim), await opened(sim)
        await one.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        text = await one.until("response.done")
        assert "".join(e["delta"] for e in text if e["type"] == "response.output_text.delta") == "First."
        assert text[-1]["response"]["output"][0]["content"][0] == {"type": "output_text", "text": "First."}
        await two.send({"type": "response.create"})
        said = await two.until("response.done")
        assert said[-1]["response"]["output"][0]["content"][0]["transcript"] == "Overridden, hi."
        assert sim.sessions[1].assistant_items[0].generated_ms == 65 * len("Overridden, hi.")  # estimated length
        await one.ws.close()
        await close(two, sim)
    run(scenario())


def test_undeclared_tool_and_tool_choice_are_violations(run):
    async def scenario():
        sim = await started(script=(SimTurn.call("transfer", {"to": "+15550100"}),
                                    SimTurn.call("lookup_order", {"order_id": "1"}),
                                    SimTurn.call("lookup_order", {"order_id": "2"})))
        client = await opened(sim)
        await client.send({"type": "response.create"})
        await client.until("response.done")
        assert "'transfer' is not a declared function tool" in sim.violations()[0]
        await client.send({"type": "response.create", "response": {"tool_choice": "none"}})
        await client.until("response.done")
        assert "tool_choice is 'none'" in sim.violations()[1]
        await client.send({"type": "response.create", "response": {"tools": [TOOLS[1]]}})  # per-response tools
        await client.until("response.done")
        assert "'lookup_order' is not a declared function tool (declared: ['end_call'])" in sim.violations()[2]
        assert [c.declared for c in sim.sessions[0].function_calls] == [False, False, False]
        await close(client, sim)
    run(scenario())


# ---------------------------------------------------------------------------------------------- tool outputs


def test_function_call_output_unknown_call_id_and_user_text(run):
    async def scenario():
        sim = await started(script=(SimTurn.say("Press one for sales."), SimTurn.say("Sales it is.")))
        client = await opened(sim)
        await client.send({"type": "conversation.item.create", "event_id": "out1", "item": {
            "type": "function_call_output", "call_id": "call_nope", "output": "{}"}})
        error = (await client.until("error"))[-1]["error"]
        assert (error["type"], error["code"], error["event_id"]) == ("invalid_request_error", "invalid_tool_call_id",
                                                                     "out1")
        assert error["message"] == "Tool call ID 'call_nope' not found in conversation."
        s = sim.sessions[0]
        assert s.function_outputs == [] and s.errors[-1].code == "invalid_tool_call_id"

        await client.send({"type": "response.create"})
        await client.until("response.done")
        await client.send({"type": "conversation.item.create", "item": {  # DTMF, as the gateway forwards it
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "DTMF: 1"}]}})
        added = await client.until("conversation.item.done")
        assert added[0]["previous_item_id"] == s.assistant_items[0].item_id
        assert await client.quiet(0.1) == []  # a text item alone does not start a response
        assert [(t.role, t.text) for t in s.text_inputs] == [("user", "DTMF: 1")]
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "Sales it is."
        assert sim.violations() == []
        await close(client, sim)
    run(scenario())


@pytest.mark.parametrize("how", ["client", "vad"])
def test_cancel_while_arguments_stream(run, how):
    long_args = {"order_id": "4" * 60}

    async def scenario():
        sim = await started(script=(SimTurn.call("lookup_order", long_args),), pace=2.0, args_chunk_chars=8,
                            inflight_deltas_after_cancel=1)
        client = await opened(sim)
        await client.send({"type": "response.create"})
        events = await client.until(ADELTA)
        if how == "client":
            await client.send({"type": "response.cancel"})
        else:
            await client.send_audio(speech(60))  # speech start: interrupt_response cancels it
        events += await client.until("response.done")
        assert types(events)[-4:] == ["response.function_call_arguments.done", "response.output_item.done",
                             "conversation.item.done", "response.done"]
        args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        streamed = "".join(e["delta"] for e in events if e["type"] == ADELTA)
        assert args_done["arguments"] == streamed and len(streamed) < len(json.dumps(long_args))
        done = events[-1]["response"]
        reason = "client_cancelled" if how == "client" else "turn_detected"
        assert (done["status"], done["status_details"]["reason"]) == ("cancelled", reason)
        assert done["output"][0]["status"] == "incomplete" and done["output"][0]["arguments"] == streamed
        call = sim.sessions[0].function_calls[0]
        assert (call.status, call.arguments) == ("incomplete", streamed)
        # the incomplete call is still in the conversation: its output is accepted
        await client.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call.call_id, "output": "cancelled"}})
        await client.until("conversation.item.done")
        assert sim.violations() == []
        await close(client, sim)
    run(scenario())


# ---------------------------------------------------------------------------------------------- out of band


def test_out_of_band_response(run):
    async def scenario():
        sim = await started(script=(SimTurn.say("In band."),), filler_ms=400, filler_text="Just a second.")
        client = await opened(sim)
        await client.send({"type": "response.create", "response": {
            "conversation": "none", "metadata": {"purpose": "filler"}, "output_modalities": ["audio"],
            "instructions": "Say you are checking.", "input": []}})
        events = await client.until("response.done")
        assert "conversation.item.added" not in types(events) and "conversation.item.done" not in types(events)
        created, done = events[0]["response"], events[-1]["response"]
        assert created["metadata"] == done["metadata"] == {"purpose": "filler"}
        assert created["conversation_id"] is None and done["conversation_id"] is None
        assert done["output"][0]["content"][0]["transcript"] == "Just a second."
        s = sim.sessions[0]
        item = s.assistant_items[0]
        assert item.generated_ms == 400 and not item.conversation and not s.responses[0].conversation
        assert s.script_pos == 0 and s.responses[0].script_index is None
        await client.send({"type": "conversation.item.truncate", "event_id": "t1", "item_id": item.item_id,
                           "content_index": 0, "audio_end_ms": 100})
        error = (await client.until("error"))[-1]["error"]
        assert (error["code"], error["event_id"]) == ("invalid_value", "t1")
        assert error["message"] == f"Item with item_id '{item.item_id}' not found."
        await client.send({"type": "response.create"})  # the script is untouched
        answer = await client.until("response.done")
        assert answer[-1]["response"]["output"][0]["content"][0]["transcript"] == "In band."
        assert answer[-1]["response"]["conversation_id"] == s.conversation_id
        assert sim.violations() == []
        await close(client, sim)
    run(scenario())


def test_out_of_band_runs_beside_the_default_response(run):
    async def scenario():
        sim = await started(response_ms=(2000,), pace=5.0, filler_ms=300)
        client = await opened(sim)
        await client.send({"type": "response.create"})
        await client.until(DELTA)
        await client.send({"type": "response.create", "response": {"conversation": "none",
                                                                   "metadata": {"k": "oob"}}})
        events = await client.until("response.done")
        assert events[-1]["response"]["metadata"] == {"k": "oob"}  # the short filler ends first
        s = sim.sessions[0]
        assert [r.status for r in s.responses] == ["in_progress", "completed"]
        await client.send({"type": "response.cancel"})  # cancels the default one, not an out-of-band one
        done = (await client.until("response.done"))[-1]["response"]
        assert done["id"] == s.responses[0].response_id and done["status"] == "cancelled"
        await close(client, sim)
    run(scenario())


# ---------------------------------------------------------------------------------------------- transcription


def test_input_transcription_events(run):
    transcribed = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcmu"}, "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"}}}}}

    async def scenario():
        sim = await started(caller_transcripts=("Where is my order?", "Thanks, bye."), transcription_delay_ms=150,
                            response_ms=(300,))
        client = await opened(sim, transcribed)
        for turn in range(3):
            await client.send_audio(speech(300, seed=turn) + silence(600))
            events = await client.until("conversation.item.input_audio_transcription.completed")
            completed = events[-1]
            user = sim.sessions[0].user_items[turn]
            assert completed["item_id"] == user.item_id and completed["content_index"] == 0
            expected = ("Where is my order?", "Thanks, bye.")[turn % 2]
            assert completed["transcript"] == user.transcript == expected
            deltas = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
            assert "".join(d["delta"] for d in deltas) == expected and {d["item_id"] for d in deltas} == {user.item_id}
            usage = completed["usage"]
            assert usage["type"] == "tokens" and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
            # asynchronous: the ASR result comes after the response has started
            assert types(events).index("response.created") < types(events).index(
                "conversation.item.input_audio_transcription.delta")
            if "response.done" not in types(events):
                await client.until("response.done")
        await client.send({"type": "conversation.item.retrieve", "item_id": sim.sessions[0].user_items[0].item_id})
        item = (await client.until("conversation.item.retrieved"))[-1]["item"]
        assert item["content"][0]["transcript"] == "Where is my order?"
        assert sim.violations() == []
        await close(client, sim)
    run(scenario())


def test_transcription_only_when_configured(run):
    whisper = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}}}}}

    async def scenario():
        sim = await started(response_ms=(200,))
        client = await opened(sim)  # no transcription configured
        await client.send_audio(speech(300) + silence(600))
        events = await client.until("response.done")
        events += await client.quiet(0.1)
        assert not [e for e in events if "input_audio_transcription" in e["type"]]
        assert sim.sessions[0].user_items[0].transcript is None
        await client.send(whisper)
        await client.until("session.updated")
        await client.send_audio(speech(300) + silence(600))
        events = await client.until("conversation.item.input_audio_transcription.completed")
        assert "conversation.item.input_audio_transcription.delta" not in types(events)  # whisper-1: no deltas
        assert events[-1]["transcript"] == "caller turn 1"
        user = sim.sessions[0].user_items[1]
        assert events[-1]["usage"] == {"type": "duration", "seconds": (user.end_ms - user.start_ms) / 1000}
        await close(client, sim)
    run(scenario())


# ---------------------------------------------------------------------------------------------- usage


def test_usage_shape_and_formula(run):
    async def scenario():
        sim = await started(script=(SimTurn.say("Hello there.", audio_ms=500),
                                    SimTurn.call("lookup_order", {"order_id": "42"}, say="Checking.", audio_ms=300)))
        client = await opened(sim)
        await client.send({"type": "response.create"})
        first = (await client.until("response.done"))[-1]["response"]["usage"]
        tools_tokens = math.ceil(len(json.dumps(TOOLS, separators=(",", ":"))) / 4)
        instructions = math.ceil(len("You are a phone agent.") / 4)
        assert first == {
            "total_tokens": first["input_tokens"] + first["output_tokens"],
            "input_tokens": instructions + tools_tokens, "output_tokens": 3 + 10,
            "input_token_details": {"text_tokens": instructions + tools_tokens, "audio_tokens": 0, "image_tokens": 0,
                                    "cached_tokens": 0, "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0,
                                                                                  "image_tokens": 0}},
            "output_token_details": {"text_tokens": 3, "audio_tokens": 10}}  # ceil(12/4), 500 ms / 50
        await client.send_audio(speech(400) + silence(600))
        second = (await client.until("response.done"))[-1]["response"]["usage"]
        user = sim.sessions[0].user_items[0]
        user_ms = user.end_ms - user.start_ms  # the committed turn (with the silence window)
        details = second["input_token_details"]
        assert details["audio_tokens"] == 10 + math.ceil(user_ms / 100)  # the greeting's audio is input now
        assert details["text_tokens"] == instructions + tools_tokens  # an audio item counts as audio only
        assert details["cached_tokens_details"] == {"text_tokens": instructions + tools_tokens, "audio_tokens": 0,
                                                    "image_tokens": 0}
        assert second["output_token_details"] == {"text_tokens": math.ceil(len("Checking.") / 4)
                                                  + math.ceil(len('{"order_id":"42"}') / 4), "audio_tokens": 6}
        s = sim.sessions[0]
        assert [r.usage for r in s.responses] == [first, second]
        assert sum(r.usage["total_tokens"] for r in s.responses) == first["total_tokens"] + second["total_tokens"]
        await close(client, sim)
    run(scenario())


# ---------------------------------------------------------------------------------------------- truncation


def test_truncate_while_generating_stays_truncated(run):
    """A truncate that lands while in-flight deltas of a cancelled item are still being generated is
    accepted, and finishing the item must not bring the unheard transcript back."""
    async def scenario():
        sim = await started(script=(SimTurn.say("one two three four five six seven eight nine ten", audio_ms=3000),),
                            pace=1.0, inflight_deltas_after_cancel=3)
        client = await opened(sim)
        await client.send({"type": "response.create"})
        await client.until(DELTA)
        await client.until(DELTA)
        await client.send_audio(speech(60))  # barge-in: cancelled after 3 more deltas
        await client.until("input_audio_buffer.speech_started")
        item = sim.sessions[0].assistant_items[0]
        assert item.status == "in_progress"
        await client.send({"type": "conversation.item.truncate", "item_id": item.item_id, "content_index": 0,
                           "audio_end_ms": 150})
        events = await client.until("response.done")
        assert "conversation.item.truncated" in types(events)
        conv_done = next(e for e in events if e["type"] == "conversation.item.done")["item"]
        assert conv_done["content"][0]["transcript"] == ""  # the conversation's view
        out_done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
        assert out_done["content"][0]["transcript"]  # what the model generated
        assert item.status == "incomplete" and item.truncated_ms == 150 and item.audio_ms == 150
        await client.send({"type": "conversation.item.retrieve", "item_id": item.item_id})
        retrieved = (await client.until("conversation.item.retrieved"))[-1]["item"]
        assert retrieved["content"][0]["transcript"] == ""
        assert base64.b64decode(retrieved["content"][0]["audio"]) == item.audio[:150 * 8]
        await client.send({"type": "conversation.item.truncate", "event_id": "t2", "item_id": item.item_id,
                           "content_index": 0, "audio_end_ms": 151})
        error = (await client.until("error"))[-1]["error"]
        assert error["message"] == "Audio content of 150ms is already shorter than 151ms"
        await close(client, sim)
    run(scenario())
