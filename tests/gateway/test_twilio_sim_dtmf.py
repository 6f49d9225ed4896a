"""Caller key presses: ``CallScript.dtmf`` schedules Twilio ``dtmf`` messages at given stream times
(twilio.md#message-shapes), interleaved with the media frames in one sequence."""
from __future__ import annotations

import asyncio
import json

import picows
import pytest
from aiohttp import web
from picows import WSCloseCode, WSMsgType

from gateway.sim.twilio_script import CallScript, Dtmf
from gateway.sim.twilio_sim import Outcome, TwilioSim, TwilioSimConfig

TWIML = '<Response><Connect><Stream url="wss://media.example.test/twilio/media"/></Connect></Response>'


class Conn(picows.WSListener):
    def __init__(self, sink: list) -> None:
        super().__init__()
        self.raw: list[tuple[float, bytes]] = []
        sink.append(self)

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        self.raw.append((asyncio.get_running_loop().time(), frame.get_payload_as_bytes()))


async def place(script: CallScript, during=None):
    conns: list[Conn] = []

    async def voice(_request: web.Request) -> web.Response:
        return web.Response(text=TWIML, content_type="text/xml")
    app = web.Application()
    app.router.add_post("/twilio/voice", voice)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    ws = await picows.ws_create_server(lambda _request: Conn(conns), "127.0.0.1", 0)
    routes = {"gw.example.test": f"http://127.0.0.1:{runner.addresses[0][1]}",
              "media.example.test": f"http://127.0.0.1:{ws.sockets[0].getsockname()[1]}"}
    try:
        async with TwilioSim(TwilioSimConfig(webhook_url="https://gw.example.test/twilio/voice", connect_to=routes,
                                             latency_ms=10.0, jitter_ms=0.0)) as sim:
            call = sim.start_call(script)
            if during is not None:
                await call.wait_started()
                await during(call)
            record = await call.wait()
    finally:
        ws.close()
        await ws.wait_closed()
        await runner.cleanup()
    return record, conns[0]


def test_scripted_dtmf_messages_shape_and_timing(run):
    script = CallScript(duration_ms=1500, dtmf=(Dtmf(400, "12#", interval_ms=200), Dtmf(1000, "*")))
    record, conn = run(place(script))
    assert record.outcome is Outcome.COMPLETED and record.violations == []
    sid = record.stream_sid
    dtmf = [(t, raw) for t, raw in conn.raw if b'"dtmf"' in raw[:20]]
    digits = "12#*"
    assert len(dtmf) == 4
    for (_, raw), digit in zip(dtmf, digits, strict=True):
        msg = json.loads(raw)
        assert list(msg) == ["event", "streamSid", "sequenceNumber", "dtmf"]  # the order of Twilio's example
        assert msg["event"] == "dtmf" and msg["streamSid"] == sid
        assert msg["dtmf"] == {"track": "inbound_track", "digit": digit}
    # pressed at stream start + at_ms (+ i × interval), delivered after the 10 ms latency
    offsets = [(t - record.stream_started_at) * 1000 for t, _ in dtmf]
    assert offsets == pytest.approx([410, 610, 810, 1010], abs=8)
    assert [(round((d.at - record.stream_started_at) * 1000), d.digit) for d in record.dtmf] == [
        (400, "1"), (600, "2"), (800, "#"), (1000, "*")]
    # one sequence for every message after connected: no gap, no repeat, dtmf in between the media
    seqs = [int(json.loads(raw)["sequenceNumber"]) for _, raw in conn.raw[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    events = [json.loads(raw)["event"] for _, raw in conn.raw]
    first = events.index("dtmf")
    assert events[first - 1] == events[first + 1] == "media" and record.media_sent == 75


def test_send_dtmf_now_and_invalid_keys(run):
    async def press(call):
        call.send_dtmf("5")
        with pytest.raises(ValueError, match="one DTMF key"):
            call.send_dtmf("12")
        call.hangup()

    record, conn = run(place(CallScript(duration_ms=5000), during=press))
    assert [d.digit for d in record.dtmf] == ["5"] and record.outcome is Outcome.COMPLETED
    assert [json.loads(raw)["event"] for _, raw in conn.raw][-2:] == ["dtmf", "stop"]
    for bad in ("", "x", "1a"):
        with pytest.raises(ValueError, match="DTMF digits"):
            Dtmf(0, bad)
