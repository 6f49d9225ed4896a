"""The control API says when it is disabled; without GATEWAY_PUBLIC_URL a public host gets wss://."""
from __future__ import annotations

import aiohttp
import pytest

from gateway.http import forwarded_base, is_local_host
from gateway.sim.harness import AUTH_TOKEN, Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig
from gateway.twilio.signature import compute_signature


def quiet_stack(**settings) -> Stack:
    return Stack(StackConfig(openai=OpenAISimConfig(response_ms=(1000,)), settings=settings))


@pytest.mark.parametrize(("headers", "base"), [
    ({"Host": "abcd.ngrok-free.app"}, "https://abcd.ngrok-free.app"),  # a plain tunnel: no X-Forwarded-Proto
    ({"Host": "gw.example.com:8443"}, "https://gw.example.com:8443"),
    ({"Host": "abcd.ngrok-free.app", "X-Forwarded-Proto": "http"}, "http://abcd.ngrok-free.app"),  # said: kept
    ({"Host": "127.0.0.1:8080"}, "http://127.0.0.1:8080"),
    ({"Host": "localhost:8080"}, "http://localhost:8080"),
    ({"Host": "[::1]:8080"}, "http://[::1]:8080"),
    ({"Host": "192.168.1.20:8080"}, "http://192.168.1.20:8080"),
    ({"Host": "10.0.0.1", "X-Forwarded-Host": "gw.example.com", "X-Forwarded-Proto": "https"}, "https://gw.example.com"),
])
def test_forwarded_base_assumes_https_for_public_hosts(headers, base):
    assert forwarded_base(headers) == base


def test_is_local_host():
    local = ["localhost", "a.localhost", "127.0.0.1", "::1", "10.1.2.3", "169.254.1.1", "", None]
    assert all(map(is_local_host, local))
    assert not any(map(is_local_host, ["abcd.ngrok-free.app", "8.8.8.8", "gateway.example.test"]))


def test_empty_public_url_behind_a_plain_tunnel_gives_wss_and_accepts_either_scheme(run):
    async def scenario():
        async with quiet_stack(public_url="") as st, aiohttp.ClientSession() as http:
            host = "abcd.ngrok-free.app"
            form = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32}
            for scheme in ("https", "http"):  # the console may say either; the tunnel forwards plain http
                signature = compute_signature(AUTH_TOKEN, f"{scheme}://{host}/twilio/voice", form)
                async with http.post(st.base_url + "/twilio/voice", data=form,
                                     headers={"Host": host, "X-Twilio-Signature": signature}) as resp:
                    assert resp.status == 200, await resp.text()
                    assert f'<Stream url="wss://{host}/twilio/media">' in await resp.text()
            bad = compute_signature("another-token", f"https://{host}/twilio/voice", form)
            async with http.post(st.base_url + "/twilio/voice", data=form,
                                 headers={"Host": host, "X-Twilio-Signature": bad}) as resp:
                assert resp.status == 403
    run(scenario())


def test_control_api_disabled_says_so(run):
    async def scenario():
        async with quiet_stack(control_token="") as st, aiohttp.ClientSession() as http:
            url = st.base_url + "/calls/CA123/interrupt"
            for headers in ({}, {"Authorization": "Bearer something"}):
                async with http.post(url, headers=headers) as resp:
                    assert resp.status == 403
                    text = await resp.text()
                    assert "control API disabled" in text and "GATEWAY_CONTROL_TOKEN" in text
    run(scenario())
