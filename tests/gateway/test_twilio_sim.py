"""Twilio simulator against a tiny fake gateway (aiohttp webhook + picows media socket).

Every test runs under asyncio and uvloop (``loop`` fixture). Times on both sides are
``loop.time()`` of the same loop, so gateway-side and record-side timestamps compare directly.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import warnings

import picows
import pytest
import uvloop
from aiohttp import web
from picows import WSCloseCode, WSMsgType, WSUpgradeResponse, WSUpgradeResponseWithListener

from gateway.sim.twilio_sim import CallScript, Outcome, Turn, TwilioSim, TwilioSimConfig
from gateway.twilio.signature import validate_signature

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

TOKEN = "test-auth-token"
WEBHOOK_URL = "https://gw.example.test/twilio/voice"
STREAM_URL = "wss://media.example.test/twilio/media"
PARAMS = {"call_token": "tok-1", "tenant": "acme"}


def stream_twiml(url: str = STREAM_URL, attrs: str = "") -> str:
    params = "".join(f'<Parameter name="{k}" value="{v}"/>' for k, v in PARAMS.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{url}"{attrs}>'
            f"{params}</Stream></Connect><Say>bye</Say></Response>")


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request):
    """Run a coroutine to completion on a fresh asyncio or uvloop event loop (10 s cap)."""
    run = asyncio.run if request.param == "asyncio" else uvloop.run

    def runner(coro):
        async def capped():
            return await asyncio.wait_for(coro, 10)
        return run(capped())
    return runner


def pattern(n: int, seed: int = 0) -> bytes:
    """Distinct, non-silent μ-law bytes."""
    return bytes((i * 7 + seed) % 254 for i in range(n))


class Conn(picows.WSListener):
    """Gateway side of one media socket: records frames, offers send helpers."""

    def __init__(self, gw: FakeGateway, request) -> None:
        super().__init__()
        self.gw, self.request = gw, request
        self.msgs: list[tuple[float, object]] = []  # (arrival, dict | raw bytes)
        self.sid: str | None = None
        self.sent: dict[str, float] = {}
        self.close_payload: bytes | None = None
        self.transport = None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        self.gw.conns.append(self)

    def on_ws_frame(self, transport, frame) -> None:
        now = asyncio.get_running_loop().time()
        if frame.msg_type == WSMsgType.CLOSE:
            self.close_payload = frame.get_payload_as_bytes()
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        raw = frame.get_payload_as_bytes()
        try:
            msg = json.loads(raw) if frame.msg_type == WSMsgType.TEXT else raw
        except ValueError:
            msg = raw
        self.msgs.append((now, msg))
        if isinstance(msg, dict) and msg.get("event") == "start":
            self.sid = msg["streamSid"]
            if self.gw.on_start is not None:
                self.gw.on_start(self)

    def events(self, name: str) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.msgs if isinstance(m, dict) and m.get("event") == name]

    def send(self, obj) -> None:
        data = obj if isinstance(obj, (str, bytes)) else json.dumps(obj)
        kind = WSMsgType.BINARY if isinstance(data, bytes) else WSMsgType.TEXT
        self.transport.send(kind, data)

    def media(self, audio: bytes) -> None:
        self.send({"event": "media", "streamSid": self.sid,
                   "media": {"payload": base64.b64encode(audio).decode()}})

    def mark(self, name: str) -> None:
        self.sent[name] = asyncio.get_running_loop().time()
        self.send({"event": "mark", "streamSid": self.sid, "mark": {"name": name}})

    def clear(self) -> None:
        self.sent["clear"] = asyncio.get_running_loop().time()
        self.send({"event": "clear", "streamSid": self.sid})

    def later(self, delay: float, fn, *args) -> None:
        asyncio.get_running_loop().call_later(delay, fn, *args)


class FakeGateway:
    """aiohttp webhook + picows media socket on ephemeral 127.0.0.1 ports (two public hosts)."""

    def __init__(self, twiml: str | None = None, on_start=None, upgrade=None, webhook_status: int = 200):
        self.twiml = twiml or stream_twiml()
        self.on_start = on_start  # fn(conn) called when `start` arrives
        self.upgrade = upgrade  # fn(request, conn) -> picows factory result, to customise the upgrade
        self.webhook_status = webhook_status
        self.webhooks: list[tuple[object, object]] = []  # (headers, form)
        self.status: list[tuple[object, object]] = []  # stream statusCallback requests
        self.conns: list[Conn] = []

    async def __aenter__(self) -> FakeGateway:
        app = web.Application()
        app.router.add_post("/twilio/voice", self._voice)
        app.router.add_post("/twilio/stream-status", self._status)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._ws = await picows.ws_create_server(self._factory, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        for conn in self.conns:
            conn.transport.disconnect()
        self._ws.close()
        await self._runner.cleanup()

    def config(self, **kw) -> TwilioSimConfig:
        routes = {"gw.example.test": f"http://127.0.0.1:{self._runner.addresses[0][1]}",
                  "media.example.test": f"http://127.0.0.1:{self._ws.sockets[0].getsockname()[1]}"}
        kw.setdefault("latency_ms", 5.0)
        kw.setdefault("jitter_ms", 0.0)
        return TwilioSimConfig(webhook_url=WEBHOOK_URL, connect_to=routes, auth_token=TOKEN, **kw)

    async def _voice(self, request: web.Request) -> web.Response:
        self.webhooks.append((request.headers.copy(), await request.post()))
        if self.webhook_status != 200:
            return web.Response(status=self.webhook_status)
        return web.Response(text=self.twiml, content_type="text/xml")

    async def _status(self, request: web.Request) -> web.Response:
        self.status.append((request.headers.copy(), await request.post()))
        return web.Response()

    def _factory(self, request):
        conn = Conn(self, request)
        return self.upgrade(request, conn) if self.upgrade else conn


async def call(gw: FakeGateway, script: CallScript, **cfg):
    async with TwilioSim(gw.config(**cfg)) as sim:
        return await sim.place_call(script)


def loud_ranges(audio: bytes) -> list[tuple[int, int]]:
    """[start, end) byte ranges of non-silent (≠ 0xFF) μ-law, merging gaps < 40 bytes."""
    ranges: list[list[int]] = []
    for i, b in enumerate(audio):
        if b != 0xFF:
            if ranges and i - ranges[-1][1] < 40:
                ranges[-1][1] = i + 1
            else:
                ranges.append([i, i + 1])
    return [tuple(r) for r in ranges]


# --------------------------------------------------------------------------------------- tests

def test_signatures_message_shapes_and_cadence(loop):
    status_url = "https://gw.example.test/twilio/stream-status"
    gw = FakeGateway(twiml=stream_twiml(attrs=f' name="leg-1" statusCallback="{status_url}"'))
    script = CallScript(duration_ms=1000, turns=[Turn(at_ms=400, speech_ms=200)], extra_params={"X": "1"})

    async def main():
        async with gw:
            return await call(gw, script)
    rec = loop(main())
    assert rec.outcome == Outcome.COMPLETED and rec.violations == []

    # webhook: signed form POST over the public URL, public Host kept
    headers, form = gw.webhooks[0]
    assert validate_signature(TOKEN, WEBHOOK_URL, form, headers["X-Twilio-Signature"])
    assert not validate_signature("other-token", WEBHOOK_URL, form, headers["X-Twilio-Signature"])
    assert headers["Host"] == "gw.example.test"
    assert headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert {k: form[k] for k in ("CallSid", "AccountSid", "CallStatus", "Direction", "ApiVersion")} == {
        "CallSid": rec.call_sid, "AccountSid": rec.account_sid, "CallStatus": "ringing",
        "Direction": "inbound", "ApiVersion": "2010-04-01"}
    assert form["X"] == "1"
    assert rec.call_sid.startswith("CA") and len(rec.call_sid) == 34
    assert rec.account_sid.startswith("AC") and len(rec.account_sid) == 34

    # upgrade: signed over the wss URL exactly as in the TwiML, no subprotocol offered
    conn = gw.conns[0]
    up = conn.request.headers
    assert validate_signature(TOKEN, STREAM_URL, {}, up["X-Twilio-Signature"])
    assert up["Host"] == "media.example.test" and "Sec-WebSocket-Protocol" not in up
    assert conn.request.path == b"/twilio/media"

    sid = rec.stream_sid
    assert sid.startswith("MZ") and len(sid) == 34
    msgs = [m for _, m in conn.msgs]
    assert msgs[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert msgs[1] == {"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
        "accountSid": rec.account_sid, "streamSid": sid, "callSid": rec.call_sid, "tracks": ["inbound"],
        "customParameters": PARAMS,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
    assert rec.custom_parameters == PARAMS and rec.after_connect == ["Say"]
    media = msgs[2:-1]
    assert len(media) == 50 == rec.media_sent
    payloads = b""
    for k, m in enumerate(media):
        assert m.keys() == {"event", "sequenceNumber", "media", "streamSid"} and m["streamSid"] == sid
        assert m["media"].keys() == {"track", "chunk", "timestamp", "payload"}
        assert (m["event"], m["sequenceNumber"], m["media"]["track"]) == ("media", str(k + 2), "inbound")
        assert (m["media"]["chunk"], m["media"]["timestamp"]) == (str(k + 1), str(20 * k))
        audio = base64.b64decode(m["media"]["payload"], validate=True)
        assert len(audio) == 160
        payloads += audio
    assert msgs[-1] == {"event": "stop", "sequenceNumber": "52", "streamSid": sid,
                        "stop": {"accountSid": rec.account_sid, "callSid": rec.call_sid}}
    assert rec.caller_audio() == payloads and rec.caller_bytes_sent == 8000

    # the turn: speech-like noise at about -20 dBFS exactly over [400 ms, 600 ms), silence elsewhere
    assert loud_ranges(payloads) == [(3200, 4800)]
    rms = audioop.rms(audioop.ulaw2lin(payloads[3200:4800], 2), 2)
    assert -21.5 < 20 * math.log10(rms / 32768) < -18.5
    assert set(payloads[:3200] + payloads[4800:]) == {0xFF}
    assert [(t.index, round(t.stream_ms)) for t in rec.turns] == [(0, 400)]

    # cadence: 50 frames/s on an absolute grid, no drift
    arrivals = [t for t, m in conn.msgs[2:-1]]
    grid = [t - arrivals[0] - 0.020 * k for k, t in enumerate(arrivals)]
    assert max(map(abs, grid)) < 0.015
    assert abs(arrivals[0] - (rec.stream_started_at + 0.020 + 0.005)) < 0.015  # first frame after 20 ms + latency
    assert rec.close_code == 1000 and rec.closed_by == "twilio"
    assert conn.close_payload[:2] == (1000).to_bytes(2, "big")

    # stream status callbacks (docs/protocols/twilio.md#stream-status-callback): signed form POSTs
    assert [e for e, _ in rec.status_callbacks] == ["stream-started", "stream-stopped"]
    assert [status for _, status in rec.status_callbacks] == [200, 200]
    for (headers, form), event in zip(gw.status, ["stream-started", "stream-stopped"], strict=True):
        assert validate_signature(TOKEN, status_url, form, headers["X-Twilio-Signature"])
        assert (form["StreamEvent"], form["StreamSid"], form["StreamName"], form["CallSid"]) == (
            event, sid, "leg-1", rec.call_sid)


def test_mark_echo_timing_and_heard_audio(loop):
    audio = pattern(8000)  # 1 s

    def on_start(conn):
        conn.mark("empty")  # nothing buffered: echoed at once, i.e. after 2 x latency
        conn.media(audio)
        conn.mark("m1")  # echoed when the 1 s has played: 1 s + 2 x latency
    gw = FakeGateway(on_start=on_start)

    async def main():
        async with gw:
            return await call(gw, CallScript(duration_ms=1300), latency_ms=30)
    rec = loop(main())
    conn = gw.conns[0]
    echoes = {m["mark"]["name"]: (t, m) for t, m in conn.events("mark")}
    assert echoes["empty"][0] - conn.sent["empty"] == pytest.approx(0.060, abs=0.02)
    assert echoes["m1"][0] - conn.sent["m1"] == pytest.approx(1.060, abs=0.02)
    assert echoes["m1"][1] == {"event": "mark", "sequenceNumber": echoes["m1"][1]["sequenceNumber"],
                               "streamSid": rec.stream_sid, "mark": {"name": "m1"}}
    # one shared counter over every numbered message, in wire order
    seqs = [int(m["sequenceNumber"]) for _, m in conn.msgs[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [(m.name, m.cleared) for m in rec.marks] == [("empty", False), ("m1", False)]
    assert rec.marks[1].played_at - rec.heard[0].start_at == pytest.approx(1.0, abs=1e-6)
    assert rec.heard_bytes() == audio and rec.heard_ms == 1000
    assert rec.heard[0].start_at - rec.heard[0].received_at == pytest.approx(0.030, abs=1e-6)


def test_clear_drops_rest_and_flushes_marks(loop):
    chunks = [pattern(4000, seed) for seed in range(4)]  # 4 x 500 ms
    after = pattern(1600, 99)  # 200 ms sent right after the clear

    def on_start(conn):
        for i, chunk in enumerate(chunks, 1):
            conn.media(chunk)
            conn.mark(f"c{i}")

        def clear_and_continue():
            conn.clear()
            conn.media(after)
            conn.mark("c5")
        conn.later(0.7, clear_and_continue)
    gw = FakeGateway(on_start=on_start)

    async def main():
        async with gw:
            return await call(gw, CallScript(duration_ms=1400), latency_ms=20)
    rec = loop(main())
    conn = gw.conns[0]
    echoes = [(m["mark"]["name"], t) for t, m in conn.events("mark")]
    assert [name for name, _ in echoes] == ["c1", "c2", "c3", "c4", "c5"]
    t = dict(echoes)
    assert t["c1"] - conn.sent["c1"] == pytest.approx(0.540, abs=0.02)  # played
    for name in ("c2", "c3", "c4"):  # flushed by the clear, immediately, in order
        assert t[name] - conn.sent["clear"] == pytest.approx(0.040, abs=0.02)
    assert t["c5"] - conn.sent["c5"] == pytest.approx(0.240, abs=0.02)
    assert [(m.name, m.cleared) for m in rec.marks] == [
        ("c1", False), ("c2", True), ("c3", True), ("c4", True), ("c5", False)]

    (clear,) = rec.clears
    assert clear.marks_flushed == ["c2", "c3", "c4"]
    played = sum(c.played for c in rec.heard[:4])
    assert played == pytest.approx(5600, abs=160)  # ~700 ms played before the clear
    assert clear.bytes_dropped == 16000 - played
    assert rec.heard_bytes() == b"".join(chunks)[:played] + after
    assert rec.heard[4].start_at == pytest.approx(clear.effect_at, abs=0.005)  # new run right after the clear


def test_turn_triggers_and_hangup_turn(loop):
    answer = pattern(4800)  # 600 ms of assistant audio

    gw = FakeGateway(on_start=lambda conn: conn.media(answer))
    script = CallScript(duration_ms=3000, turns=[
        Turn(after_heard_ms=300, speech_ms=100),  # barge in 300 ms into the answer
        Turn(after_quiet_ms=200, speech_ms=100),  # speak 200 ms after playback finished
        Turn(at_ms=0, hangup=True),  # then hang up at once
    ])

    async def main():
        async with gw:
            return await call(gw, script, latency_ms=10)
    rec = loop(main())
    play = rec.heard[0].start_at
    t0, t1, t2 = rec.turns
    assert (t0.at - play, t0.heard_ms) == pytest.approx((0.3, 300), abs=1e-6)
    assert (t1.at - play, t1.heard_ms) == pytest.approx((0.8, 600), abs=1e-6)  # 200 ms < RUN_GAP_S: run still current
    assert t2.hangup and t2.at - play == pytest.approx(0.9, abs=1e-6)
    assert rec.outcome == Outcome.COMPLETED and rec.ended_at == pytest.approx(t2.at, abs=1e-9)
    # the speech is sample-accurate in the caller audio the gateway received (the hang-up cuts the
    # unfinished last frame)
    sent = b"".join(base64.b64decode(m["media"]["payload"]) for _, m in gw.conns[0].events("media"))
    assert sent == rec.caller_audio() and len(sent) == round(t2.stream_ms * 8) // 160 * 160
    starts = [round(t.stream_ms * 8) for t in (t0, t1)]
    assert loud_ranges(sent) == [(starts[0], starts[0] + 800), (starts[1], min(starts[1] + 800, len(sent)))]
    assert gw.conns[0].events("stop")[0][0] - t2.at == pytest.approx(0.010, abs=0.015)


def test_after_heard_counts_within_runs(loop):
    def on_start(conn):
        conn.media(pattern(800))  # run 1: 100 ms ...
        conn.later(0.2, conn.media, pattern(1600))  # ... a 100 ms underrun, 200 ms more: same run
        conn.later(0.8, conn.media, pattern(4000))  # run 2 (after a > RUN_GAP_S silence), 500 ms
    gw = FakeGateway(on_start=on_start)
    script = CallScript(duration_ms=1400, turns=[
        Turn(after_heard_ms=150, speech_ms=50),  # 100 ms + 50 ms into the second segment
        Turn(after_heard_ms=100, speech_ms=50),  # already heard 200 ms of this run: at once
        Turn(after_heard_ms=400, speech_ms=50),  # run 1 has only 300 ms: 400 ms into run 2
    ])

    async def main():
        async with gw:
            return await call(gw, script, latency_ms=5)
    rec = loop(main())
    seg1, seg2, run2 = (c.start_at for c in rec.heard)
    assert 0.05 < seg2 - (seg1 + 0.1) < 0.15 and seg2 + 0.2 + 0.3 < run2
    t0, t1, t2 = rec.turns
    assert (t0.at - seg2, t0.heard_ms) == pytest.approx((0.05, 150), abs=1e-6)
    assert (t1.at - t0.at, t1.heard_ms) == pytest.approx((0.05, 200), abs=1e-6)
    assert (t2.at - run2, t2.heard_ms) == pytest.approx((0.4, 400), abs=1e-6)


def test_gateway_violations_counted_not_fatal(loop):
    good = pattern(800)

    def on_start(conn):
        sid, b64 = conn.sid, base64.b64encode(good).decode()
        conn.send({"event": "media", "streamSid": "MZ" + "0" * 32, "media": {"payload": b64}})
        conn.send({"event": "stopit", "streamSid": sid})
        conn.send(b"\x01\x02binary")
        conn.send("{not json")
        conn.send({"event": "media", "streamSid": sid, "media": {"payload": b64, "track": "outbound"}})
        conn.send({"event": "mark", "streamSid": sid, "mark": {"name": "x"}, "sequenceNumber": "1"})
        conn.send({"event": "media", "streamSid": sid, "media": {"payload": "@@@="}})
        conn.send({"event": "clear", "streamSid": sid, "media": {}})
        conn.send({"event": "mark", "streamSid": sid, "mark": {"name": 7}})
        conn.media(good)
        conn.mark("ok")
    gw = FakeGateway(on_start=on_start)

    async def main():
        async with gw:
            sim_call = TwilioSim(gw.config(latency_ms=0))
            async with sim_call as sim:
                live = sim.start_call(CallScript(duration_ms=5000))
                assert await live.wait_started()
                live.send_raw('{"event": "bogus"}')
                live.send_raw(b"\x00\xff")
                live.send_dtmf("5")
                await asyncio.sleep(0.3)
                live.hangup()
                return await live.wait()
    rec = loop(main())
    assert [code for code, _ in rec.violations] == [31951, 31951, 31950] + [31951] * 6
    assert "wrong streamSid" in rec.violations[0][1]
    assert len(rec.received) == 11 and rec.received[2].raw == b"\x01\x02binary"
    assert rec.heard_bytes() == good and [m.name for m in rec.marks] == ["ok"]
    assert rec.outcome == Outcome.COMPLETED
    assert rec.ended_at - rec.stream_started_at == pytest.approx(0.3, abs=0.05)  # hangup() ends it now
    assert 12 <= rec.media_sent <= 17

    conn = gw.conns[0]
    assert {"event": "bogus"} in [m for _, m in conn.msgs]
    assert b"\x00\xff" in [m for _, m in conn.msgs]
    (_, dtmf), = conn.events("dtmf")
    assert dtmf.keys() == {"event", "streamSid", "sequenceNumber", "dtmf"}
    assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "5"} and dtmf["streamSid"] == rec.stream_sid


def test_gateway_closes_first(loop):
    def on_start(conn):
        conn.media(pattern(8000))
        conn.later(0.2, conn.transport.send_close, WSCloseCode.POLICY_VIOLATION, b"bad token")
    gw = FakeGateway(on_start=on_start)

    async def main():
        async with gw:
            return await call(gw, CallScript(duration_ms=2000), latency_ms=10)
    rec = loop(main())
    assert rec.outcome == Outcome.GATEWAY_CLOSED and rec.closed_by == "gateway"
    assert (rec.close_code, rec.close_reason) == (1008, "bad token")
    assert rec.heard[0].played == pytest.approx(1600, abs=160)  # playout stops with the socket
    assert gw.conns[0].events("stop") == []
    assert rec.media_sent < 20


def test_rejects_and_setup_failures(loop):
    async def main():
        async with FakeGateway(twiml='<Response><Reject reason="busy"/></Response>') as gw:
            busy = await call(gw, CallScript())
            assert gw.conns == []
        async with FakeGateway(twiml="<Response><Reject/></Response>") as gw:
            rejected = await call(gw, CallScript())
        async with FakeGateway(webhook_status=500) as gw:
            http500 = await call(gw, CallScript())
        async with FakeGateway(twiml="<Response><Connect>") as gw:
            bad_xml = await call(gw, CallScript())
        async with FakeGateway(twiml=stream_twiml("ws://media.example.test/twilio/media")) as gw:
            not_wss = await call(gw, CallScript())
        forbidden = lambda request, conn: WSUpgradeResponseWithListener(  # noqa: E731
            WSUpgradeResponse.create_error_response(403), None)
        async with FakeGateway(upgrade=forbidden) as gw:
            refused = await call(gw, CallScript())
        async with FakeGateway() as gw:
            dropped = await call(gw, CallScript(duration_ms=1000, hangup_at_ms=200))
            await asyncio.sleep(0.05)
            assert gw.conns[0].close_payload is None and gw.conns[0].events("stop") == []
        return busy, rejected, http500, bad_xml, not_wss, refused, dropped
    busy, rejected, http500, bad_xml, not_wss, refused, dropped = loop(main())
    assert busy.outcome == Outcome.REJECTED_BUSY and busy.stream_sid is None
    assert rejected.outcome == Outcome.REJECTED
    assert (http500.outcome, http500.http_status, http500.violations[0][0]) == (Outcome.WEBHOOK_FAILED, 500, 11200)
    assert (bad_xml.outcome, bad_xml.violations[0][0]) == (Outcome.WEBHOOK_FAILED, 12100)
    assert (not_wss.outcome, not_wss.violations[0][0]) == (Outcome.HANDSHAKE_FAILED, 31922)
    assert (refused.outcome, refused.http_status, refused.violations[0][0]) == (Outcome.HANDSHAKE_FAILED, 403, 31920)
    assert dropped.outcome == Outcome.DROPPED and dropped.media_sent == 10 and dropped.close_code is None


def test_subprotocol_and_unsigned_upgrade(loop):
    def echo_protocol(request, conn):
        offered = request.headers.get("Sec-WebSocket-Protocol")
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_101_response({"Sec-WebSocket-Protocol": "audio.twilio.com"}), conn) \
            if offered or conn.gw.force_protocol else conn

    async def main():
        async with FakeGateway(upgrade=echo_protocol) as gw:
            gw.force_protocol = False
            offered = await call(gw, CallScript(duration_ms=100), offer_subprotocol=True)
            plain = await call(gw, CallScript(duration_ms=100), sign_websocket=False)
            headers = [c.request.headers for c in gw.conns]
            gw.force_protocol = True  # echoing an un-offered subprotocol breaks the connection
            unoffered = await call(gw, CallScript(duration_ms=100))
        return offered, plain, headers, unoffered
    offered, plain, headers, unoffered = loop(main())
    assert headers[0]["Sec-WebSocket-Protocol"] == "audio.twilio.com" and offered.subprotocol == "audio.twilio.com"
    assert offered.outcome == plain.outcome == Outcome.COMPLETED and plain.subprotocol is None
    assert "X-Twilio-Signature" not in headers[1]
    assert unoffered.outcome == Outcome.HANDSHAKE_FAILED and unoffered.violations[0][0] == 31920


def test_latency_jitter_keeps_fifo_and_bounds(loop):
    gw = FakeGateway(on_start=lambda conn: conn.mark("m"))

    async def main():
        async with gw:
            return await call(gw, CallScript(duration_ms=600), latency_ms=25, jitter_ms=15, seed=7)
    rec = loop(main())
    conn = gw.conns[0]
    media = conn.events("media")
    assert [int(m["media"]["chunk"]) for _, m in media] == list(range(1, 31))
    delays = [t - (rec.stream_started_at + 0.020 * (k + 1)) for k, (t, _) in enumerate(media)]
    assert min(delays) > 0.010 - 0.003 and max(delays) < 0.040 + 0.015
    assert max(delays) - min(delays) > 0.010  # jitter is really applied
    (t_echo, _), = conn.events("mark")
    assert 0.020 - 0.003 < t_echo - conn.sent["m"] < 0.080 + 0.015
