"""Signatures, call tokens, control API auth, and hostile input — each closing only its own call."""
from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from picows import WSHandshakeError, WSListener, WSMsgType, ws_connect

from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.sim.harness import AUTH_TOKEN, PUBLIC_URL, Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig
from gateway.sim.twilio_script import CallScript, Turn
from gateway.twilio.signature import compute_signature


def quiet_stack(**settings) -> Stack:
    return Stack(StackConfig(openai=OpenAISimConfig(response_ms=(1000,)), settings=settings))


def test_refuses_to_start_without_twilio_auth_token():
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        Settings.from_env({})
    assert Settings.from_env({"GATEWAY_INSECURE_DEV": "1"}).secure is False


def test_secrets_never_in_public_settings():
    s = Settings.from_env({"TWILIO_AUTH_TOKEN": "tw-xyzzy1", "OPENAI_API_KEY": "sk-xyzzy2",
                           "GATEWAY_CONTROL_TOKEN": "ctl-xyzzy3", "GATEWAY_CALL_TOKEN_SECRET": "xyzzy4"})
    shown = repr(s.public()) + repr(s)
    assert "xyzzy" not in shown
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TWILIO_AUTH_TOKEN": "tw-xyzzy1", "GATEWAY_PORT": "xyzzy5"})
    assert "xyzzy5" in str(info.value)  # non-secret values are shown to help the operator


def test_webhook_signature_required(run):
    async def scenario():
        async with quiet_stack() as st:
            form = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32}
            url = PUBLIC_URL + "/twilio/voice"
            async with aiohttp.ClientSession() as http:
                target = st.base_url + "/twilio/voice"
                async with http.post(target, data=form) as resp:
                    assert resp.status == 403
                bad = compute_signature("wrong-token", url, form)
                async with http.post(target, data=form, headers={"X-Twilio-Signature": bad}) as resp:
                    assert resp.status == 403
                good = compute_signature(AUTH_TOKEN, url, form)
                async with http.post(target, data=form, headers={"X-Twilio-Signature": good}) as resp:
                    assert resp.status == 200
                    body = await resp.text()
                    assert '<Stream url="wss://gateway.example.test/twilio/media">' in body
                    assert '<Parameter name="call_token"' in body
            assert st.gateway.rejected == {"bad_signature": 2}
    run(scenario())


class _Collect(WSListener):
    def __init__(self):
        self.frames: list[bytes] = []
        self.closed = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport, frame):
        if frame.msg_type is WSMsgType.CLOSE:
            if not self.closed.done():
                self.closed.set_result(int(frame.get_close_code().value))
            transport.disconnect()
        else:
            self.frames.append(frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport):
        if not self.closed.done():
            self.closed.set_result(None)


async def _raw_media_socket(st: Stack, headers=None):
    url = f"ws://127.0.0.1:{st.gateway.port}/twilio/media"
    return await ws_connect(_Collect, url, extra_headers=headers or {})


START = ('{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC%s","streamSid":"MZ%s",'
         '"callSid":"CA%s","tracks":["inbound"],"customParameters":{%s},'
         '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ%s"}')


def test_media_socket_bad_signature_rejected_at_upgrade(run):
    async def scenario():
        async with quiet_stack() as st:
            with pytest.raises(WSHandshakeError) as info:
                await _raw_media_socket(st, {"X-Twilio-Signature": "bm9wZQ=="})
            assert "403" in str(info.value)
            assert st.gateway.rejected.get("bad_signature") == 1
    run(scenario())


@pytest.mark.parametrize("params", ['', '"call_token":"123.abc"'])
def test_start_without_valid_token_closes_before_upstream(run, params):
    async def scenario():
        async with quiet_stack() as st:
            transport, listener = await _raw_media_socket(st)
            transport.send(WSMsgType.TEXT, b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
            transport.send(WSMsgType.TEXT, (START % ("a" * 32, "b" * 32, "c" * 32, params, "b" * 32)).encode())
            code = await asyncio.wait_for(listener.closed, 5)
            assert code == 1008
            await transport.wait_disconnected()
            assert st.openai.sessions == []  # no upstream session was ever opened
    run(scenario())


def test_control_api_auth(run):
    async def scenario():
        async with quiet_stack() as st, aiohttp.ClientSession() as http:
            url = st.base_url + "/calls/CA123/interrupt"
            async with http.post(url) as resp:
                assert resp.status == 401
            async with http.post(url, headers={"Authorization": "Bearer nope"}) as resp:
                assert resp.status == 401
            ok = {"Authorization": f"Bearer {st.settings.control_token}"}
            async with http.post(url, headers=ok) as resp:
                assert resp.status == 404
            async with http.get(st.base_url + "/healthz") as resp:
                assert resp.status == 200
    run(scenario())


HOSTILE = {
    "bad_json": '{"event":"media", nope',
    "bad_base64": '{"event":"media","sequenceNumber":"9","media":{"track":"inbound","chunk":"8",'
                  '"timestamp":"160","payload":"!!!not base64!!!"},"streamSid":"%s"}',
    "wrong_stream_sid": '{"event":"media","sequenceNumber":"9","media":{"track":"inbound","chunk":"8",'
                        '"timestamp":"160","payload":"/////w=="},"streamSid":"MZ0000"}',
    "binary_frame": b"\x00\x01\x02",
    "huge_frame": "x" * 200_000,
    "not_an_object": "[1,2,3]",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_input_closes_only_that_call(run, kind, caplog):
    """One call misbehaves mid-stream; it is closed with a log line, the other call is unharmed."""
    async def scenario():
        async with Stack(StackConfig(openai=OpenAISimConfig(response_ms=(2000,)),
                                     settings={"greeting": "hi"})) as st:
            good = st.start_call(CallScript(duration_ms=2500), "CA" + "1" * 32)
            bad = st.start_call(CallScript(duration_ms=2500), "CA" + "2" * 32)
            await bad.wait_started()
            await asyncio.sleep(0.3)
            payload = HOSTILE[kind]
            if isinstance(payload, str) and "%s" in payload:
                payload = payload % bad.record.stream_sid
            bad.send_raw(payload)
            bad_record = await bad.wait()
            good_record = await good.wait()
            assert bad_record.closed_by == "gateway" and bad_record.close_code in (1008, 1009)
            report = st.judge(good_record)
            assert report.problems == []
            assert good_record.heard_ms >= 1900
            # the offending call's upstream session was closed too
            session = st.session_for(bad_record.call_sid)
            assert session is not None and session.disconnected_at is not None
    caplog.set_level(logging.WARNING)
    run(scenario())
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.call"]
    assert any("twilio protocol error" in m for m in messages), messages


def test_unknown_twilio_event_is_ignored(run, caplog):
    """Forward compatibility: Twilio may add events; log and count, keep the call."""
    async def scenario():
        async with quiet_stack(greeting="hi") as st:
            handle = st.start_call(CallScript(duration_ms=2000), "CA" + "3" * 32)
            await handle.wait_started()
            await asyncio.sleep(0.2)
            handle.send_raw(f'{{"event":"transcription","streamSid":"{handle.record.stream_sid}","sequenceNumber":"5"}}')
            record = await handle.wait()
            assert st.judge(record).problems == []
    caplog.set_level(logging.WARNING)
    run(scenario())
    assert any("unknown event" in r.getMessage() for r in caplog.records)


def test_upstream_failure_ends_call_cleanly(run, caplog):
    """The upstream refuses the key: the call ends at once with a log line, nothing else breaks."""
    async def scenario():
        async with Stack(StackConfig(settings={"openai_api_key": "sk-wrong"})) as st:
            record = await st.start_call(CallScript(duration_ms=2000)).wait()
            assert record.closed_by == "gateway" and record.close_code == 1011
            assert st.gateway.ended == {"upstream_error": 1}
    caplog.set_level(logging.ERROR)
    run(scenario())
    assert any("upstream failed" in r.getMessage() for r in caplog.records)


def test_twilio_hangup_closes_upstream_at_once(run):
    async def scenario():
        async with quiet_stack(greeting="hi") as st:
            script = CallScript(duration_ms=5000, turns=(Turn(after_heard_ms=300, hangup=True),))
            record = await st.start_call(script).wait()
            session = st.session_for(record.call_sid)
            await st.openai.wait_for(lambda: session.disconnected_at is not None, 2.0)
            assert session.disconnected_at - record.ended_at < 0.5
    run(scenario())
