"""The Twilio REST simulator: driven with the official ``twilio`` package (async client pointed at the
simulator) for updates and creates, and with raw aiohttp for authentication and error cases.

A tiny fake gateway (aiohttp webhook + picows media socket) plays the gateway's part.
"""
from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import picows
import pytest
from aiohttp import web
from picows import WSCloseCode, WSMsgType
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from gateway.sim.twilio_record import Outcome
from gateway.sim.twilio_rest import DEFAULT_API_KEY_SECRET, DEFAULT_API_KEY_SID, TwilioRestConfig, TwilioRestSim
from gateway.sim.twilio_script import CallScript
from gateway.sim.twilio_sim import TwilioSim, TwilioSimConfig
from gateway.twilio.signature import validate_signature

# twilio's AsyncTwilioHttpClient uses aiohttp's deprecated BasicAuth / `auth=`: theirs to fix, not this test's
pytestmark = [pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")]
TOKEN = "test-auth-token"
PUBLIC = "https://gw.example.test"
STREAM_URL = "wss://gw.example.test/twilio/media"
STREAM_TWIML = f'<Response><Connect><Stream url="{STREAM_URL}"/></Connect></Response>'
TRANSFER_TWIML = "<Response><Dial><Sip>sip:desk@example.com</Sip></Dial></Response>"


class Conn(picows.WSListener):
    def __init__(self, gw: FakeGateway) -> None:
        super().__init__()
        self.gw = gw
        self.msgs: list[tuple[float, object]] = []
        self.sid: str | None = None
        self.transport = None
        self.closed_at: float | None = None
        self.marks: asyncio.Queue[str] = asyncio.Queue()

    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        self.gw.conns.append(self)

    def on_ws_frame(self, transport, frame) -> None:
        now = asyncio.get_running_loop().time()
        if frame.msg_type == WSMsgType.CLOSE:
            self.closed_at = now
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        msg = json.loads(frame.get_payload_as_bytes())
        self.msgs.append((now, msg))
        if msg["event"] == "start":
            self.sid = msg["streamSid"]
            self.gw.started.put_nowait(self)
        elif msg["event"] == "mark":
            self.marks.put_nowait(msg["mark"]["name"])

    def events(self) -> list[str]:
        return [m["event"] for _, m in self.msgs if isinstance(m, dict)]

    def play(self, ms: int, mark: str) -> None:
        audio = bytes((i * 7) % 254 for i in range(8 * ms))
        for name, data in (("media", {"payload": base64.b64encode(audio).decode()}), ("mark", {"name": mark})):
            self.transport.send(WSMsgType.TEXT, json.dumps({"event": name, "streamSid": self.sid, name: data}))


class FakeGateway:
    """Webhook (stream TwiML), a transfer TwiML URL, a call status endpoint and the media socket."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.started: asyncio.Queue[Conn] = asyncio.Queue()
        self.requests: list[tuple[str, object, object]] = []  # (path, headers, form)

    async def __aenter__(self) -> FakeGateway:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._ws = await picows.ws_create_server(lambda _request: Conn(self), "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        for conn in self.conns:
            conn.transport.disconnect()
        self._ws.close()
        await self._ws.wait_closed()
        await self._runner.cleanup()

    def sim_config(self) -> TwilioSimConfig:
        http = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        ws = f"http://127.0.0.1:{self._ws.sockets[0].getsockname()[1]}"
        return TwilioSimConfig(webhook_url=PUBLIC + "/twilio/voice", auth_token=TOKEN, latency_ms=5.0, jitter_ms=0.0,
                               connect_to={"gw.example.test": http, "media.example.test": ws})

    async def _post(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append((request.path, request.headers.copy(), form))
        if request.path == "/twilio/transfer":
            return web.Response(text=TRANSFER_TWIML, content_type="text/xml")
        if request.path == "/twilio/voice":
            return web.Response(text=STREAM_TWIML.replace("gw.example.test", "media.example.test"),
                                content_type="text/xml")
        return web.Response()

    def posts(self, path: str) -> list[dict[str, str]]:
        return [dict(form) for p, _, form in self.requests if p == path]


class SimHttpClient(AsyncTwilioHttpClient):
    """The twilio package's async HTTP client with https://api.twilio.com rewritten to the simulator."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    async def request(self, method, url, *args, **kwargs):
        return await super().request(method, url.replace("https://api.twilio.com", self.base_url, 1), *args, **kwargs)


class Rig:
    """Fake gateway + TwilioSim + TwilioRestSim + a twilio Client (account SID and auth token)."""

    def __init__(self, rest_config: TwilioRestConfig | None = None) -> None:
        self.rest_config = rest_config

    async def __aenter__(self) -> Rig:
        self.gw = await FakeGateway().__aenter__()
        self.twilio = TwilioSim(self.gw.sim_config())
        self.rest = TwilioRestSim(self.twilio, self.rest_config)
        await self.rest.start()
        self.http = SimHttpClient(self.rest.base_url)
        self.client = Client(self.rest.account_sid, self.rest.auth_token, http_client=self.http)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.close()
        for call in self.twilio.calls.values():
            await call.wait()
        await self.rest.stop()
        await self.twilio.close()
        await self.gw.__aexit__()


# ---------------------------------------------------------------------------------------------- update


def test_hang_up_after_playout_with_the_twilio_package(run):
    async def scenario():
        async with Rig() as rig:
            call = rig.twilio.start_call(CallScript(duration_ms=10_000))
            conn = await rig.gw.started.get()
            conn.play(300, "last")
            await conn.marks.get()  # everything the caller should hear has played
            echoed = asyncio.get_running_loop().time()
            result = await rig.client.calls(call.record.call_sid).update_async(status="completed")
            assert (result.sid, result.status, result.direction) == (call.record.call_sid, "completed", "inbound")
            record = await call.wait()
            assert record.outcome is Outcome.REST_COMPLETED and record.hung_up_by_rest
            assert record.closed_by == "twilio" and record.status == "completed"
            assert conn.events()[-1] == "stop" and conn.closed_at is not None
            assert record.heard_ms == 300 and record.unplayed_bytes == 0  # heard everything before the end
            assert record.ended_at >= echoed
            action = record.rest_actions[0]
            assert action.kind == "hangup" and action.effect_at == pytest.approx(record.ended_at)
            req = rig.rest.requests[-1]
            assert (req.method, req.form, req.auth_user, req.status, req.call_sid) == (
                "POST", {"Status": "completed"}, rig.rest.account_sid, 200, record.call_sid)
            assert req.path == f"/2010-04-01/Accounts/{rig.rest.account_sid}/Calls/{record.call_sid}.json"

            with pytest.raises(TwilioRestException) as info:  # the call is over
                await rig.client.calls(record.call_sid).update_async(twiml="<Response/>")
            assert (info.value.status, info.value.code) == (400, 21220)
            fetched = await rig.client.calls(record.call_sid).fetch_async()
            assert fetched.status == "completed" and fetched.duration is not None
    run(scenario())


def test_rest_hang_up_cuts_audio_still_buffered(run):
    """The stop happens at Twilio time: what played before it counts, the rest is never heard."""
    async def scenario():
        async with Rig(TwilioRestConfig(end_delay_ms=100)) as rig:
            call = rig.twilio.start_call(CallScript(duration_ms=10_000))
            conn = await rig.gw.started.get()
            conn.play(2000, "end")
            await asyncio.sleep(0.3)
            await rig.client.calls(call.record.call_sid).update_async(status="completed")
            record = await call.wait()
            assert record.outcome is Outcome.REST_COMPLETED
            assert 300 < record.heard_ms < 600 and record.unplayed_bytes == 2000 * 8 - record.heard_ms * 8
            assert record.marks == []  # never played: no echo (after stop Twilio sends nothing)
    run(scenario())


def test_redirect_with_twiml_and_url(run):
    async def scenario():
        async with Rig() as rig:
            first = rig.twilio.start_call(CallScript(duration_ms=10_000))
            await rig.gw.started.get()
            dial = "<Response><Dial><Number>+15550100</Number></Dial></Response>"
            result = await rig.client.calls(first.record.call_sid).update_async(twiml=dial)
            assert result.status == "in-progress"
            record = await first.wait()
            assert record.outcome is Outcome.REDIRECTED and record.transferred_to == "+15550100"
            assert record.rest_actions[0].twiml == dial and record.status == "completed"
            assert rig.gw.conns[0].events()[-1] == "stop"

            second = rig.twilio.start_call(CallScript(duration_ms=10_000))
            await rig.gw.started.get()
            transfer = PUBLIC + "/twilio/transfer"
            await rig.client.calls(second.record.call_sid).update_async(url=transfer, method="POST")
            record = await second.wait()
            await rig.rest.stop()  # the background TwiML fetch is done
            action = record.rest_actions[0]
            assert (action.kind, action.url, action.method, action.twiml) == ("redirect", transfer, "POST",
                                                                               TRANSFER_TWIML)
            assert record.transferred_to == "sip:desk@example.com" and action.error is None
            _, headers, form = next(r for r in rig.gw.requests if r[0] == "/twilio/transfer")
            assert validate_signature(TOKEN, transfer, dict(form), headers["X-Twilio-Signature"])
            assert (form["CallSid"], form["CallStatus"]) == (record.call_sid, "in-progress")
    run(scenario())


# ---------------------------------------------------------------------------------------------- create


def test_create_outbound_call_with_an_api_key(run):
    async def scenario():
        callee = CallScript(duration_ms=600)
        async with Rig(TwilioRestConfig(default_script=callee, ring_ms=50)) as rig:
            client = Client(DEFAULT_API_KEY_SID, DEFAULT_API_KEY_SECRET, rig.rest.account_sid, http_client=rig.http)
            status_url = PUBLIC + "/status"
            created = await client.calls.create_async(
                to="+15550123", from_="+18005550199", url=PUBLIC + "/twilio/voice", status_callback=status_url,
                status_callback_event=["initiated", "ringing", "answered", "completed"])
            assert (created.status, created.direction, created.to, created._from) == (
                "queued", "outbound-api", "+15550123", "+18005550199")
            assert created.sid.startswith("CA") and len(created.sid) == 34 and rig.rest.created == [created.sid]
            req = rig.rest.requests[-1]
            assert req.status == 201 and req.auth_user == DEFAULT_API_KEY_SID
            assert req.form_multi["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
            record = await rig.twilio.calls[created.sid].wait()
            assert record.outcome is Outcome.COMPLETED and record.media_sent == 30  # the callee's script
            webhook = rig.gw.posts("/twilio/voice")[0]
            assert {k: webhook[k] for k in ("CallSid", "Direction", "CallStatus", "From", "To")} == {
                "CallSid": created.sid, "Direction": "outbound-api", "CallStatus": "in-progress",
                "From": "+18005550199", "To": "+15550123"}
            # Separate HTTP requests may arrive out of order; SequenceNumber orders them (as Twilio's).
            posts = sorted(rig.gw.posts("/status"), key=lambda form: int(form["SequenceNumber"]))
            assert [form["SequenceNumber"] for form in posts] == ["0", "1", "2", "3"]
            statuses = [form["CallStatus"] for form in posts]
            assert statuses == ["queued", "ringing", "in-progress", "completed"]
            assert sorted(s for s, _ in record.call_status_callbacks) == sorted(statuses)
            assert posts[-1]["CallDuration"] == "0"
            fetched = await client.calls(created.sid).fetch_async()
            assert fetched.status == "completed" and fetched.start_time is not None

            with_twiml = await client.calls.create_async(to="sip:bob@example.com", from_="+18005550199",
                                                         twiml=STREAM_TWIML.replace("gw.", "media."))
            record = await rig.twilio.calls[with_twiml.sid].wait()
            assert record.outcome is Outcome.COMPLETED and len(rig.gw.posts("/twilio/voice")) == 1  # no webhook
    run(scenario())


def test_unanswered_and_canceled_outbound_calls(run):
    async def scenario():
        config = TwilioRestConfig(answers={"+15550001": "busy"}, ring_ms=300)
        async with Rig(config) as rig:
            busy = await rig.client.calls.create_async(to="+15550001", from_="+18005550199", twiml=STREAM_TWIML)
            ringing = await rig.client.calls.create_async(to="+15550002", from_="+18005550199", twiml=STREAM_TWIML)
            await asyncio.sleep(0.05)
            canceled = await rig.client.calls(ringing.sid).update_async(status="canceled")
            assert canceled.status == "canceled"
            assert (await rig.twilio.calls[busy.sid].wait()).status == "busy"
            record = await rig.twilio.calls[ringing.sid].wait()
            assert (record.outcome, record.status, record.media_sent) == (Outcome.CANCELED, "canceled", 0)
            assert rig.gw.conns == []
    run(scenario())


# ---------------------------------------------------------------------------------------------- raw HTTP


def test_auth_and_error_json(run):
    async def scenario():
        async with Rig(TwilioRestConfig(numbers=("+18005550199",))) as rig:
            rest, account = rig.rest, rig.rest.account_sid
            base = f"{rest.base_url}/2010-04-01/Accounts/{account}"
            good = (account, TOKEN)

            def basic(auth):
                return {} if auth is None else {"Authorization": "Basic " + base64.b64encode(
                    ":".join(auth).encode()).decode()}
            async with aiohttp.ClientSession() as http:
                async def post(path, data, auth=good, status=400):
                    async with http.post(base + path, data=data, headers=basic(auth)) as resp:
                        body = await resp.json()
                        assert resp.status == status, body
                        assert body["status"] == status and body["more_info"].endswith(str(body["code"]))
                        return body, resp.headers

                wrong = [None, (account, "wrong"), (DEFAULT_API_KEY_SID, TOKEN), ("SKnope", DEFAULT_API_KEY_SECRET)]
                for auth in wrong:
                    body, headers = await post("/Calls.json", {"To": "+15550123"}, auth=auth, status=401)
                    assert (body["code"], body["message"]) == (20003, "Authenticate")
                    assert headers["WWW-Authenticate"] == 'Basic realm="Twilio API"'
                other = f"{rest.base_url}/2010-04-01/Accounts/AC{'0' * 32}/Calls.json"
                async with http.post(other, data={}, headers=basic(good)) as resp:  # someone else's account
                    assert resp.status == 401 and (await resp.json())["code"] == 20003

                body, _ = await post("/Calls/CA" + "1" * 32 + ".json", {"Status": "completed"}, status=404)
                assert body == {"code": 20404, "status": 404,
                                "message": f"The requested resource /2010-04-01/Accounts/{account}/Calls/CA"
                                           f"{'1' * 32}.json was not found",
                                "more_info": "https://www.twilio.com/docs/errors/20404"}
                cases = [({"From": "+18005550199", "Url": "https://x.test/a"}, 21201),
                         ({"To": "+15550123", "Url": "https://x.test/a"}, 21213),
                         ({"To": "+15550123", "From": "+18005550199"}, 21205),
                         ({"To": "+15550123", "From": "+18005550199", "Url": "/relative"}, 21205),
                         ({"To": "12345", "From": "+18005550199", "Url": "https://x.test/a"}, 21211),
                         ({"To": "+15550123", "From": "+18005559999", "Url": "https://x.test/a"}, 21210),
                         ({"To": "+15550123", "From": "+18005550199", "Twiml": "<Response>" + "x" * 4000}, 32018),
                         ({"To": "+15550123", "From": "+18005550199", "Url": "https://x.test/a", "Method": "PUT"},
                          20001)]
                for data, code in cases:
                    assert (await post("/Calls.json", data))[0]["code"] == code, data

                live = rig.twilio.start_call(CallScript(duration_ms=10_000))
                await rig.gw.started.get()
                path = f"/Calls/{live.record.call_sid}.json"
                assert (await post(path, {"Status": "busy"}))[0]["code"] == 20001
                assert (await post(path, {"Twiml": "<Response/>", "Url": "https://x.test/a"}))[0]["code"] == 20001
                async with http.get(base + path, headers=basic(good)) as resp:
                    assert resp.status == 200 and (await resp.json())["status"] == "in-progress"
                async with http.post(base + path, data={"Status": "canceled"}, headers=basic(good)) as resp:
                    assert (await resp.json())["status"] == "in-progress"  # canceled: only before an answer
                async with http.post(base + path, data={"Status": "completed"}, headers=basic(good)) as resp:
                    assert resp.status == 200
                await live.wait()
            assert [r.status for r in rest.requests][:5] == [401] * 5
            assert all(r.auth_user in (None, account) for r in rest.requests)
            assert rest.requests[-1].form == {"Status": "completed"} and rest.requests[-1].error_code is None
            assert rest.requests[0].error_code == 20003
    run(scenario())


# ---------------------------------------------------------------------------------------------- Stack


def test_stack_runs_the_rest_sim_beside_the_gateway(run):
    """Stack exposes the REST simulator (same account and token as the media side); a REST hang-up
    of a gateway call once the greeting has played ends it cleanly, and the judge agrees."""
    from gateway.sim.harness import Stack, StackConfig
    from gateway.sim.openai_sim import OpenAISimConfig, SimTurn

    seen: list[str] = []

    def rest_settings(rest: TwilioRestSim) -> dict[str, object]:
        seen.append(rest.base_url)
        return {}

    async def scenario():
        config = StackConfig(tls=False, rest_settings=rest_settings, settings={"greeting": "Greet the caller."},
                             openai=OpenAISimConfig(script=(SimTurn.say("Hello!", audio_ms=400),), pace=5.0))
        async with Stack(config) as st:
            rest = st.twilio_rest
            assert rest is not None and seen == [rest.base_url] and rest.base_url.startswith("http://127.0.0.1:")
            assert (rest.account_sid, rest.auth_token) == (st.twilio.config.account_sid, st.twilio.config.auth_token)
            assert rest.api_key_sid.startswith("SK") and rest.api_key_secret
            call = st.start_call(CallScript(duration_ms=10_000))
            rec = call.record

            def played_out() -> bool:  # the whole greeting reached Twilio and every mark came back
                return sum(c.size for c in rec.heard) >= 3200 and len(rec.marks) == len(rec.events("mark"))
            await st.openai.wait_for(played_out, timeout=5)
            async with SimHttpClient(rest.base_url) as http:
                client = Client(rest.account_sid, rest.auth_token, http_client=http)
                await client.calls(call.record.call_sid).update_async(status="completed")
            record = await call.wait()
            report = st.judge(record)
            assert record.outcome is Outcome.REST_COMPLETED and report.problems == []
            assert report.unplayed_at_end_ms == 0 and record.heard_ms == 400
    run(scenario())
