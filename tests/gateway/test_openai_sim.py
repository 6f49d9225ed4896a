"""The OpenAI Realtime simulator, driven over real loopback WebSockets (websockets, picows, the openai SDK).

Every scenario runs under both asyncio and uvloop. Server events are checked against the official
openai-python schema (``validate_server_event``), so the simulator cannot drift from the GA shapes.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import warnings

import numpy as np
import openai
import pytest
import uvloop
import websockets
from picows import WSListener, WSMsgType, ws_connect

from gateway.sim.openai_audio import AudioBank, frame_rms
from gateway.sim.openai_schema import validate_client_event, validate_server_event
from gateway.sim.openai_sim import OpenAIRealtimeSim, OpenAISimConfig
from gateway.sim.openai_tls import make_self_signed_tls

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
PCMU = {"type": "session.update", "session": {"type": "realtime", "audio": {
    "input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}}
DELTA = "response.output_audio.delta"


def run(loop: str, coro) -> None:
    (asyncio.run if loop == "asyncio" else uvloop.run)(coro)


def speech(ms: int, seed: int = 1) -> bytes:
    """Loud μ-law noise (≈ -21 dBFS): well above the VAD threshold."""
    pcm = (np.random.default_rng(seed).standard_normal(8 * ms) * 3000).astype("<i2").tobytes()
    return audioop.lin2ulaw(pcm, 2)


def silence(ms: int) -> bytes:
    return b"\xff" * (8 * ms)


def append(audio: bytes) -> dict:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}


class Client:
    """A websockets client that keeps every server event it read, checked against the SDK schema."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []

    async def send(self, event) -> None:
        await self.ws.send(event if isinstance(event, (str, bytes)) else json.dumps(event))

    async def send_audio(self, audio: bytes, frame: int = 160) -> None:
        for i in range(0, len(audio), frame):
            await self.send(append(audio[i:i + frame]))

    async def recv(self, timeout: float = 5.0) -> dict:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        assert validate_server_event(event) == [], event
        self.events.append(event)
        return event

    async def until(self, type_: str, timeout: float = 5.0) -> list[dict]:
        """Events read up to and including the first one of ``type_``."""
        got = []
        while not got or got[-1]["type"] != type_:
            got.append(await self.recv(timeout))
        return got


async def connect(sim: OpenAIRealtimeSim, key: str = "sk-sim", **headers: str) -> Client:
    ws = await websockets.connect(sim.url, additional_headers={"Authorization": f"Bearer {key}", **headers},
                                  max_size=None)
    return Client(ws)


async def started(config: OpenAISimConfig | None = None) -> OpenAIRealtimeSim:
    sim = OpenAIRealtimeSim(config or OpenAISimConfig(response_ms=(600,), pace=20))
    await sim.start()
    return sim


async def opened(sim: OpenAIRealtimeSim, update: dict | None = PCMU) -> Client:
    """Connected client past session.created/conversation.created (and the update, if any)."""
    client = await connect(sim)
    assert [(await client.recv())["type"] for _ in range(2)] == ["session.created", "conversation.created"]
    if update is not None:
        await client.send(update)
        await client.until("session.updated")
    return client


def types(events: list[dict]) -> list[str]:
    """Event types with runs of audio/transcript deltas collapsed to one 'deltas' entry."""
    out: list[str] = []
    for event in events:
        t = "deltas" if event["type"] in (DELTA, "response.output_audio_transcript.delta") else event["type"]
        if not (t == "deltas" and out and out[-1] == "deltas"):
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------- connection


@LOOPS
def test_connect_session_created_defaults(loop):
    async def scenario():
        sim = await started()
        client = await opened(sim, update=None)
        created, conv = client.events
        session = created["session"]
        assert session["id"].startswith("sess_") and session["object"] == "realtime.session"
        assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert session["audio"]["output"]["voice"] == "marin"
        td = session["audio"]["input"]["turn_detection"]
        assert td["type"] == "server_vad" and td["create_response"] and td["interrupt_response"]
        assert conv["conversation"]["object"] == "realtime.conversation"
        assert created["event_id"] != conv["event_id"]
        s = sim.sessions[0]
        assert s.model == "gpt-realtime" and s.session_id == session["id"] and s.transport is not None
        await client.ws.close()
        await sim.wait_for(lambda: s.disconnected_at is not None)
        assert s.client_closed and s.client_close_code == 1000
        assert sim.violations() == []
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_auth_rejected_with_401(loop):
    async def scenario():
        sim = await started()
        for headers in ({"Authorization": "Bearer sk-wrong"}, {}):
            with pytest.raises(websockets.exceptions.InvalidStatus) as info:
                await websockets.connect(sim.url, additional_headers=headers)
            assert info.value.response.status_code == 401
            assert json.loads(info.value.response.body)["error"]["type"] == "invalid_request_error"
        assert [r.status for r in sim.rejected] == [401, 401] and sim.sessions == []
        assert len(sim.violations()) == 2
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_beta_header_rejected_then_closed(loop):
    async def scenario():
        sim = await started()
        client = await connect(sim, **{"OpenAI-Beta": "realtime=v1"})
        error = await client.recv()
        assert error["type"] == "error" and error["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            await client.recv()
        assert info.value.rcvd.code == 1008
        assert "OpenAI-Beta" in sim.violations()[0]
        await sim.stop()

        tolerant = await started(OpenAISimConfig(reject_beta_header=False))
        client = await connect(tolerant, **{"OpenAI-Beta": "realtime=v1"})
        assert (await client.recv())["type"] == "session.created"
        assert len(tolerant.violations()) == 1  # still recorded
        await client.ws.close()
        await tolerant.stop()
    run(loop, scenario())


@LOOPS
def test_tls_with_generated_ca(loop, tmp_path):
    server_ctx, ca_file = make_self_signed_tls(str(tmp_path))

    class Collect(WSListener):
        def __init__(self):
            self.events: asyncio.Queue = asyncio.Queue()

        def on_ws_frame(self, transport, frame):
            if frame.msg_type == WSMsgType.TEXT:
                self.events.put_nowait(json.loads(frame.get_payload_as_bytes()))

    async def scenario():
        sim = OpenAIRealtimeSim()
        url = await sim.start(ssl_context=server_ctx)
        assert url.startswith("wss://127.0.0.1:")
        with pytest.raises(ssl.SSLCertVerificationError):  # the system trust store does not know our CA
            await ws_connect(Collect, url, extra_headers={"Authorization": "Bearer sk-sim"})
        transport, listener = await ws_connect(Collect, url, ssl_context=ssl.create_default_context(cafile=ca_file),
                                               extra_headers={"Authorization": "Bearer sk-sim"})
        event = await asyncio.wait_for(listener.events.get(), 5)
        assert event["type"] == "session.created" and validate_server_event(event) == []
        transport.send_close()
        await transport.wait_disconnected()
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_official_sdk_client_parses_every_event(loop):
    async def scenario():
        sim = await started()
        client = openai.AsyncOpenAI(api_key="sk-sim", websocket_base_url=sim.websocket_base_url)
        seen = []
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(session=PCMU["session"])
            await conn.response.create()
            async for event in conn:
                seen.append(type(event).__name__)
                if event.type == "response.done":
                    assert event.response.status == "completed"
                    break
        assert seen[:3] == ["SessionCreatedEvent", "ConversationCreatedEvent", "SessionUpdatedEvent"]
        assert "ResponseAudioDeltaEvent" in seen and sim.violations() == []
        await sim.stop()
    run(loop, scenario())


# ---------------------------------------------------------------------------------------------- session


@LOOPS
def test_session_update_partial_merge(loop):
    async def scenario():
        sim = await started()
        client = await opened(sim)
        pcmu = client.events[-1]["session"]
        assert pcmu["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert pcmu["audio"]["output"]["voice"] == "marin"  # untouched by the partial update
        await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief.",
                           "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}}})
        session = (await client.until("session.updated"))[-1]["session"]
        td = session["audio"]["input"]["turn_detection"]
        assert td["silence_duration_ms"] == 300 and td["prefix_padding_ms"] == 300 and td["create_response"]
        assert session["instructions"] == "Be brief." and session["audio"]["input"]["format"]["type"] == "audio/pcmu"
        await client.send({"type": "session.update", "session": {"type": "realtime",
                           "audio": {"input": {"turn_detection": None}}}})
        session = (await client.until("session.updated"))[-1]["session"]
        assert session["audio"]["input"]["turn_detection"] is None
        assert sim.sessions[0].session_config == session
        assert [e.type for e in sim.sessions[0].client_events] == ["session.update"] * 3
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_schema_and_protocol_violations(loop):
    cases = [  # (event, code, param, message regex)
        ({"type": "session.update", "event_id": "ev1", "session": {"type": "realtime", "audio": {"input": {
            "turn_detecton": {"type": "server_vad"}}}}}, "unknown_parameter", "session.audio.input.turn_detecton",
         r"^Unknown parameter: 'session\.audio\.input\.turn_detecton'\.$"),
        ({"type": "session.update", "event_id": "ev2", "session": {"modalities": ["audio"]}},
         "missing_required_parameter", "session.type", r"^Missing required parameter: 'session\.type'\.$"),
        ({"type": "conversation.item.truncate", "event_id": "ev3", "item_id": "item_x", "content_index": 0,
          "audio_end_ms": "100"}, "invalid_type", "audio_end_ms", r"expected an integer, but got a string"),
        ({"type": "response.audio.delta", "event_id": "ev4"}, "invalid_value", "type", r"^Invalid value: "),
        ({"type": "input_audio_buffer.append", "event_id": "ev5", "audio": "AAAA", "format": "g711_ulaw"},
         "unknown_parameter", "format", r"format"),
        ({"type": "input_audio_buffer.append", "event_id": "ev6", "audio": "not base64!"}, "invalid_value",
         "audio", r"base64"),
        ({"type": "output_audio_buffer.clear", "event_id": "ev7"}, "invalid_value", "type", r"WebRTC"),
    ]

    async def scenario():
        sim = await started()
        client = await opened(sim)
        for event, code, param, message in cases:
            await client.send(event)
            error = (await client.until("error"))[-1]["error"]
            assert (error["code"], error["param"], error["event_id"]) == (code, param, event["event_id"]), error
            assert re.search(message, error["message"]), error["message"]
        await client.send("{not json")
        assert (await client.until("error"))[-1]["error"]["code"] == "invalid_json"
        await client.send(b"\x00\x01")
        assert (await client.until("error"))[-1]["type"] == "error"
        await client.send(PCMU)  # the session survives all of that
        await client.until("session.updated")
        assert len(sim.violations()) == len(cases) + 2
        assert "turn_detecton" in sim.violations()[0]
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


def test_validator_accepts_every_documented_ga_event():
    recommended = {"type": "session.update", "session": {
        "type": "realtime", "model": "gpt-realtime", "instructions": "You are a phone agent.",
        "output_modalities": ["audio"],
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "noise_reduction": {"type": "near_field"},
                            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                               "silence_duration_ms": 500, "create_response": True,
                                               "interrupt_response": True}},
                  "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0}},
        "tools": [{"type": "function", "name": "lookup_order", "description": "Look up an order",
                   "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                                  "required": ["order_id"]}}],
        "tool_choice": "auto", "max_output_tokens": "inf"}}
    valid = [
        recommended,
        {"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": None},
        {"type": "input_audio_buffer.commit"}, {"type": "input_audio_buffer.clear"},
        {"type": "conversation.item.create", "previous_item_id": None, "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}},
        {"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "call_1",
                                                      "output": "{}"}},
        {"type": "conversation.item.delete", "item_id": "item_1"},
        {"type": "conversation.item.retrieve", "item_id": "item_1"},
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1234},
        {"type": "response.create"},
        {"type": "response.create", "response": {"instructions": "Greet the caller.", "output_modalities": ["audio"],
                                                 "conversation": "auto", "tool_choice": "auto",
                                                 "metadata": {"k": "v"}}},
        {"type": "response.cancel"}, {"type": "response.cancel", "response_id": "resp_1"},
        {"type": "output_audio_buffer.clear"},
    ]
    for event in valid:
        assert validate_client_event(event)[1] == [], event
    beta = {"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}}
    assert [e.param for e in validate_client_event(beta)[1]] == ["session.input_audio_format"]
    pcm8k = {"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 8000}}}}}
    assert validate_client_event(pcm8k)[1][0].param == "session.audio.input.format.rate"


# ---------------------------------------------------------------------------------------------- VAD + responses


@LOOPS
def test_vad_speech_gives_full_response_event_order(loop):
    async def scenario():
        sim = await started()
        client = await opened(sim)
        await client.send_audio(silence(500) + speech(400) + silence(600))
        events = await client.until("response.done")
        assert types(events) == [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
            "conversation.item.added", "conversation.item.done", "response.created", "rate_limits.updated",
            "response.output_item.added", "conversation.item.added", "response.content_part.added", "deltas",
            "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
            "response.output_item.done", "conversation.item.done", "response.done"]
        started_, stopped, committed = events[:3]
        assert started_["audio_start_ms"] == 500 - 300  # speech onset minus prefix_padding_ms
        assert stopped["audio_end_ms"] == 500 + 400 + 500  # includes the silence window
        assert started_["item_id"] == stopped["item_id"] == committed["item_id"]
        assert committed["previous_item_id"] is None
        done = events[-1]["response"]
        assert done["status"] == "completed" and done["usage"]["output_tokens"] > 0
        assert done["output"][0]["status"] == "completed" and done["output"][0]["content"][0]["type"] == "output_audio"
        deltas = [e for e in events if e["type"] == DELTA]
        audio = b"".join(base64.b64decode(e["delta"]) for e in deltas)
        assert len(deltas) == 6 and all(len(base64.b64decode(e["delta"])) == 800 for e in deltas)  # 100 ms chunks
        transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
        assert transcript and transcript == events[-5]["transcript"]

        s = sim.sessions[0]
        item = s.assistant_items[0]
        assert item.audio == audio and item.generated_ms == item.delivered_ms == 600 and item.status == "completed"
        assert item.item_id == deltas[0]["item_id"] and s.responses[0].status == "completed"
        assert s.responses[0].trigger == "vad" and len(s.speech_started_at) == len(s.speech_stopped_at) == 1
        assert s.input_ms == 1500 and bytes(s.input_audio) == silence(500) + speech(400) + silence(600)
        assert (s.user_items[0].start_ms, s.user_items[0].end_ms) == (200, 1400)
        assert len({e["event_id"] for e in client.events}) == len(client.events)
        assert sim.violations() == []
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


@LOOPS
@pytest.mark.parametrize("inflight", [0, 1, 3])
def test_barge_in_cancels_after_inflight_deltas(loop, inflight):
    async def scenario():
        sim = await started(OpenAISimConfig(response_ms=(3000,), pace=5.0, inflight_deltas_after_cancel=inflight))
        client = await opened(sim)
        await client.send_audio(speech(300) + silence(500))
        events = await client.until(DELTA)
        events += [await client.recv(), await client.recv()]
        await client.send(append(speech(60)))  # 3 loud windows = vad_min_speech_ms
        events += await client.until("response.done")
        names = [e["type"] for e in events]
        at = len(names) - 1 - names[::-1].index("input_audio_buffer.speech_started")  # the barge-in
        after = names[at:]
        assert names[:at].count(DELTA) >= 2 and after.count(DELTA) == inflight
        tail = [t for t in after if t not in (DELTA, "response.output_audio_transcript.delta")]
        assert tail == ["input_audio_buffer.speech_started", "response.output_audio.done",
                        "response.output_audio_transcript.done", "response.content_part.done",
                        "response.output_item.done", "conversation.item.done", "response.done"]
        done = events[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        assert done["output"][0]["status"] == "incomplete"

        s = sim.sessions[0]
        item = s.assistant_items[0]
        received = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == DELTA)
        assert item.audio == received == item.delivered_audio and item.status == "incomplete"
        assert (s.responses[0].status, s.responses[0].reason) == ("cancelled", "turn_detected")
        assert s.truncates == []  # a WebSocket server never truncates by itself

        have = len(received) // 8
        await client.send({"type": "conversation.item.truncate", "event_id": "t1", "item_id": item.item_id,
                           "content_index": 0, "audio_end_ms": have + 1})
        error = (await client.until("error"))[-1]["error"]
        assert error["message"] == f"Audio content of {have}ms is already shorter than {have + 1}ms"
        assert (error["code"], error["event_id"]) == ("invalid_value", "t1")
        await client.send({"type": "conversation.item.truncate", "item_id": item.item_id, "content_index": 0,
                           "audio_end_ms": have - 50})
        truncated = (await client.until("conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["content_index"], truncated["audio_end_ms"]) == \
            (item.item_id, 0, have - 50)
        assert [(t.audio_end_ms, t.accepted) for t in s.truncates] == [(have + 1, False), (have - 50, True)]
        assert item.truncated_ms == have - 50 and sim.violations() == []
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_cancel_and_active_response_errors(loop):
    async def scenario():
        sim = await started(OpenAISimConfig(response_ms=(3000,), pace=5.0))
        client = await opened(sim)
        await client.send({"type": "response.cancel", "event_id": "c0"})
        error = (await client.until("error"))[-1]["error"]
        assert (error["code"], error["message"], error["event_id"]) == (
            "response_cancel_not_active", "Cancellation failed: no active response found", "c0")
        await client.send({"type": "response.create"})
        rid = (await client.until("response.created"))[-1]["response"]["id"]
        await client.send({"type": "response.create", "event_id": "r2"})
        error = (await client.until("error"))[-1]["error"]
        assert error["code"] == "conversation_already_has_active_response" and error["event_id"] == "r2"
        assert error["message"] == (f"Conversation already has an active response in progress: {rid}. "
                                    "Wait until the response is finished before creating a new one.")
        await client.send({"type": "response.cancel"})
        done = (await client.until("response.done"))[-1]["response"]
        assert done["id"] == rid and done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        s = sim.sessions[0]
        assert [(c.response_id, c.cancelled_response_id) for c in s.cancels] == [(None, None), (None, rid)]
        assert [e.code for e in s.errors] == ["response_cancel_not_active", "conversation_already_has_active_response"]
        assert s.responses[0].trigger == "client" and s.assistant_items[0].delivered_ms < 3000
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_manual_commit_clear_and_items(loop):
    manual = {"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None}}}}

    async def scenario():
        sim = await started()
        client = await opened(sim, manual)
        await client.send_audio(speech(50))
        await client.send({"type": "input_audio_buffer.commit"})
        error = (await client.until("error"))[-1]["error"]
        assert error["code"] == "input_audio_buffer_commit_empty"
        assert error["message"].endswith("but buffer only has 50.00ms of audio.")
        await client.send_audio(speech(200))
        await client.send({"type": "input_audio_buffer.commit"})
        events = await client.until("conversation.item.done")
        assert types(events) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
        user_id = events[0]["item_id"]
        assert "input_audio_buffer.speech_started" not in types(client.events)  # no VAD without turn_detection
        await client.send({"type": "input_audio_buffer.clear"})
        await client.until("input_audio_buffer.cleared")

        await client.send({"type": "conversation.item.truncate", "item_id": user_id, "content_index": 0,
                           "audio_end_ms": 10})
        assert (await client.until("error"))[-1]["error"]["message"] == \
            "Only model output audio messages can be truncated"
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}})
        added = (await client.until("conversation.item.done"))[-2]
        assert added["type"] == "conversation.item.added" and added["previous_item_id"] == user_id
        await client.send({"type": "conversation.item.retrieve", "item_id": user_id})
        retrieved = (await client.until("conversation.item.retrieved"))[-1]["item"]
        assert base64.b64decode(retrieved["content"][0]["audio"]) == speech(50) + speech(200)
        await client.send({"type": "conversation.item.delete", "item_id": user_id})
        assert (await client.until("conversation.item.deleted"))[-1]["item_id"] == user_id
        await client.send({"type": "conversation.item.delete", "item_id": user_id})
        assert (await client.until("error"))[-1]["error"]["param"] == "item_id"
        assert sim.sessions[0].user_items[0].by_vad is False and sim.violations() == []
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_session_expiry_and_failure_injection(loop):
    async def scenario():
        sim = await started(OpenAISimConfig(session_max_s=0.2))
        client = await opened(sim, update=None)
        error = (await client.until("error", timeout=2))[-1]["error"]
        assert error["code"] == "session_expired" and error["message"].startswith(
            "Your session hit the maximum duration of")
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            await client.recv()
        assert info.value.rcvd.code == 1001
        s = sim.sessions[0]
        assert s.server_close_code == 1001 and not s.client_closed
        await sim.stop()

        sim = await started()
        sim.on_session = lambda session: session.send_event({"type": "error", "error": {
            "type": "server_error", "code": None, "message": "injected", "param": None, "event_id": None}})
        client = await opened(sim, update=None)
        assert (await client.recv())["error"]["message"] == "injected"
        sim.sessions[0].close(1011, "boom")
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            await client.recv()
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1011, "boom")
        await sim.stop()
    run(loop, scenario())


# ---------------------------------------------------------------------------------------------- audio


def test_generated_audio_is_speech_like_and_unique():
    pcm = AudioBank("audio/pcm", seed=3, chunk_ms=100, seconds=4)
    x = np.frombuffer(pcm.data, "<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 24000)
    assert spectrum[freqs > 3600].sum() < 1e-4 * spectrum.sum()  # survives 24 kHz → 8 kHz
    for bank in (pcm, AudioBank("audio/pcmu", seed=3, chunk_ms=100, seconds=4)):
        window = 20 * (48 if bank.format == "audio/pcm" else 8)
        levels = [frame_rms(bank.format, bank.data[i:i + window]) for i in range(0, len(bank.data), window)]
        assert min(levels) > 32768 * 10 ** (-35 / 20)  # never silence: every 20 ms is above the VAD threshold

    async def three_items():
        sim = await started(OpenAISimConfig(response_ms=(600, 300, 700), pace=50))
        client = await opened(sim)
        for _ in range(3):
            await client.send({"type": "response.create"})
            await client.until("response.done")
        await client.ws.close()
        await sim.stop()
        return sim.sessions[0]

    session = asyncio.run(three_items())
    items = session.assistant_items
    assert [len(i.audio) for i in items] == [4800, 2400, 5600]
    windows = [i.audio[k:k + 40] for i in items for k in range(len(i.audio) - 39)]
    assert len(set(windows)) == len(windows)  # any 40-byte μ-law slice locates one item and offset
    assert session.locate(items[2].audio[1000:1040]) == (items[2], 1000)


@LOOPS
def test_no_interrupt_queues_the_vad_response(loop):
    no_interrupt = {"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad",
                                                                       "interrupt_response": False}}}}}

    async def scenario():
        sim = await started(OpenAISimConfig(response_ms=(1000,), pace=10.0))
        client = await opened(sim, no_interrupt)
        await client.send({"type": "response.create"})
        await client.until(DELTA)
        await client.send_audio(speech(200) + silence(500))  # the caller talks over the assistant
        events = await client.until("response.done")
        assert events[-1]["response"]["status"] == "completed"  # not interrupted
        assert "input_audio_buffer.committed" in types(events)
        second = (await client.until("response.created"))[-1]["response"]
        assert second["id"] != events[-1]["response"]["id"]
        s = sim.sessions[0]
        assert [(r.trigger, r.status) for r in s.responses] == [("client", "completed"), ("vad", "in_progress")]
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_text_response_transcription_and_modalities(loop):
    with_transcription = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcmu"}, "transcription": {"model": "gpt-4o-mini-transcribe"}}}}}

    async def scenario():
        sim = await started()
        client = await opened(sim, with_transcription)
        await client.send({"type": "response.create", "event_id": "both",
                           "response": {"output_modalities": ["text", "audio"]}})
        error = (await client.until("error"))[-1]["error"]
        assert (error["param"], error["event_id"]) == ("response.output_modalities", "both")
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"],
                                                                   "metadata": {"k": "v"}}})
        events = await client.until("response.done")
        assert [t for t in types(events) if t != "response.output_text.delta"] == [
            "response.created", "rate_limits.updated", "response.output_item.added", "conversation.item.added",
            "response.content_part.added", "response.output_text.done",
            "response.content_part.done", "response.output_item.done", "conversation.item.done", "response.done"]
        assert types(events).count("response.output_text.delta") == 1  # 600 ms → one word
        done = events[-1]["response"]
        assert done["metadata"] == {"k": "v"} and done["output"][0]["content"][0]["type"] == "output_text"
        text_item = sim.sessions[0].assistant_items[0]
        assert text_item.audio == b"" and text_item.transcript == events[-5]["text"]
        await client.send({"type": "conversation.item.truncate", "item_id": text_item.item_id, "content_index": 0,
                           "audio_end_ms": 0})
        assert (await client.until("error"))[-1]["error"]["message"] == \
            "Only model output audio messages can be truncated"
        await client.send_audio(speech(200) + silence(500))
        transcribed = (await client.until("conversation.item.input_audio_transcription.completed"))[-1]
        assert transcribed["item_id"] == sim.sessions[0].user_items[0].item_id
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


# ---------------------------------------------------------------------------------------------- multi-item responses

ITEM_EVENTS = ["response.output_item.added", "conversation.item.added", "response.content_part.added", "deltas",
               "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
               "response.output_item.done", "conversation.item.done"]


def audio_by_item(events: list[dict]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for e in events:
        if e["type"] == DELTA:
            out[e["item_id"]] = out.get(e["item_id"], b"") + base64.b64decode(e["delta"])
    return out


@LOOPS
def test_two_items_per_response_in_order(loop):
    async def scenario():
        sim = await started(OpenAISimConfig(response_ms=(600, 400, 200), items_per_response=2, pace=20))
        client = await opened(sim)
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        assert types(events) == ["response.created", "rate_limits.updated", *ITEM_EVENTS, *ITEM_EVENTS,
                                 "response.done"]
        rid = events[0]["response"]["id"]
        added = [e for e in events if e["type"] == "response.output_item.added"]
        first, second = (e["item"]["id"] for e in added)
        assert [e["output_index"] for e in added] == [0, 1] and first != second
        for e in events:  # every per-item event carries its item's output index and the response id
            if "output_index" in e:
                item_id = e.get("item_id") or e["item"]["id"]
                assert (e["response_id"], e["output_index"]) == (rid, [first, second].index(item_id)), e
        conv_added = [e for e in events if e["type"] == "conversation.item.added"]
        assert conv_added[1]["previous_item_id"] == first  # the second item follows the first
        firsts = [i for i, e in enumerate(events) if e.get("item_id", e.get("item", {}).get("id")) == second]
        lasts = [i for i, e in enumerate(events) if e.get("item_id", e.get("item", {}).get("id")) == first]
        assert max(lasts) < min(firsts)  # one after another, never interleaved
        done = events[-1]["response"]
        assert done["id"] == rid and done["status"] == "completed"
        assert [(o["id"], o["status"]) for o in done["output"]] == [(first, "completed"), (second, "completed")]
        transcripts = [e["transcript"] for e in events if e["type"] == "response.output_audio_transcript.done"]
        assert [o["content"][0]["transcript"] for o in done["output"]] == transcripts

        s = sim.sessions[0]
        audio = audio_by_item(events)
        items = s.assistant_items
        assert [i.item_id for i in items] == [first, second] and s.responses[0].item_ids == [first, second]
        assert all(i.response_id == rid and i.status == "completed" for i in items)
        assert [i.generated_ms for i in items] == [600, 400]  # the response_ms cycle, one step per item
        assert [i.audio for i in items] == [audio[first], audio[second]] and audio[first] != audio[second]
        assert [i.transcript for i in items] == transcripts

        await client.send_audio(speech(200) + silence(500))  # a VAD-triggered response: 2 items as well
        events = await client.until("response.done")
        done = events[-1]["response"]
        assert len(done["output"]) == 2 and done["status"] == "completed"
        assert [r.trigger for r in s.responses] == ["client", "vad"]
        assert [i.generated_ms for i in s.assistant_items] == [600, 400, 200, 600]
        assert [i.response_id for i in s.assistant_items[2:]] == [done["id"]] * 2
        all_audio = [i.audio for i in s.assistant_items]
        windows = [a[k:k + 40] for a in all_audio for k in range(len(a) - 39)]
        assert len(set(windows)) == len(windows)  # unique within the session, across items and responses
        assert s.locate(s.assistant_items[3].audio[800:840]) == (s.assistant_items[3], 800)
        assert sim.violations() == []
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_barge_in_during_first_item_cancels_whole_response(loop):
    async def scenario():
        sim = await started(OpenAISimConfig(response_ms=(3000, 2000), items_per_response=2, pace=5.0))
        client = await opened(sim)
        await client.send_audio(speech(300) + silence(500))
        events = await client.until(DELTA)
        events += [await client.recv(), await client.recv()]
        await client.send(append(speech(60)))  # barge-in while the first item streams
        events += await client.until("response.done")
        names = [e["type"] for e in events]
        at = names.index("input_audio_buffer.speech_started", names.index("response.created"))
        tail = [t for t in names[at:] if t not in (DELTA, "response.output_audio_transcript.delta")]
        assert tail == ["input_audio_buffer.speech_started", "response.output_audio.done",
                        "response.output_audio_transcript.done", "response.content_part.done",
                        "response.output_item.done", "conversation.item.done", "response.done"]
        assert names.count("response.output_item.added") == 1
        assert {e["output_index"] for e in events if "output_index" in e} == {0}
        done = events[-1]["response"]
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        assert [o["status"] for o in done["output"]] == ["incomplete"]

        s = sim.sessions[0]
        item = s.assistant_items[0]
        assert len(s.assistant_items) == 1 and s.responses[0].item_ids == [item.item_id]
        assert (s.responses[0].status, s.responses[0].reason) == ("cancelled", "turn_detected")
        assert item.status == "incomplete" and item.audio == audio_by_item(events)[item.item_id]
        await asyncio.sleep(0.3)  # the second item never comes, not even late
        await client.send({"type": "response.cancel", "event_id": "c1"})  # nothing is left active
        later = await client.until("error")
        assert later[-1]["error"]["code"] == "response_cancel_not_active"
        assert not {"response.output_item.added", DELTA, "response.done"} & set(types(later))
        assert len(s.assistant_items) == 1 and sim.violations() == []
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_client_cancel_during_second_item(loop):
    async def scenario():
        sim = await started(OpenAISimConfig(response_ms=(300, 3000), items_per_response=3, pace=5.0))
        client = await opened(sim)
        await client.send({"type": "response.create"})
        events = await client.until("response.output_item.added")
        events += await client.until("response.output_item.added")  # the second item has started
        events += await client.until(DELTA)
        await client.send({"type": "response.cancel"})
        events += await client.until("response.done")
        done = events[-1]["response"]
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert [o["status"] for o in done["output"]] == ["completed", "incomplete"]  # the third never started
        s = sim.sessions[0]
        assert [i.status for i in s.assistant_items] == ["completed", "incomplete"]
        assert s.responses[0].item_ids == [o["id"] for o in done["output"]]
        assert [i.audio for i in s.assistant_items] == [audio_by_item(events)[o["id"]] for o in done["output"]]
        assert sim.violations() == []
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())


@LOOPS
def test_truncate_second_item_after_response_done(loop):
    async def scenario():
        sim = await started(OpenAISimConfig(response_ms=(600, 800), items_per_response=2, pace=20))
        client = await opened(sim)
        await client.send({"type": "response.create"})
        await client.until("response.done")
        s = sim.sessions[0]
        first, second = s.assistant_items
        assert (first.generated_ms, second.generated_ms) == (600, 800)
        await client.send({"type": "conversation.item.truncate", "event_id": "t1", "item_id": second.item_id,
                           "content_index": 0, "audio_end_ms": 801})
        error = (await client.until("error"))[-1]["error"]
        assert error["message"] == "Audio content of 800ms is already shorter than 801ms"
        assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "audio_end_ms", "t1")
        await client.send({"type": "conversation.item.truncate", "item_id": second.item_id, "content_index": 0,
                           "audio_end_ms": 700})  # beyond the first item's 600 ms, within the second's 800
        truncated = (await client.until("conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (second.item_id, 700)
        await client.send({"type": "conversation.item.truncate", "event_id": "t3", "item_id": second.item_id,
                           "content_index": 0, "audio_end_ms": 701})
        error = (await client.until("error"))[-1]["error"]
        assert error["message"] == "Audio content of 700ms is already shorter than 701ms"
        await client.send({"type": "conversation.item.truncate", "event_id": "t4", "item_id": first.item_id,
                           "content_index": 0, "audio_end_ms": 700})
        error = (await client.until("error"))[-1]["error"]
        assert error["message"] == "Audio content of 600ms is already shorter than 700ms"
        assert [(t.item_id, t.audio_end_ms, t.accepted) for t in s.truncates] == [
            (second.item_id, 801, False), (second.item_id, 700, True), (second.item_id, 701, False),
            (first.item_id, 700, False)]
        assert (first.truncated_ms, second.truncated_ms) == (None, 700)
        await client.send({"type": "conversation.item.retrieve", "item_id": second.item_id})
        retrieved = (await client.until("conversation.item.retrieved"))[-1]["item"]
        assert base64.b64decode(retrieved["content"][0]["audio"]) == second.audio[:700 * 8]
        assert sim.violations() == []
        await client.ws.close()
        await sim.stop()
    run(loop, scenario())
