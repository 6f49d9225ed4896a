"""Hostile clients on the one public port, each with a clear outcome, a log line and a counter:
slow heads and bodies, floods of pending connections, malformed bodies and headers, absurd
``start`` messages and oversized frames. The port keeps answering everyone else."""
from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

import gateway.server as server_module
from gateway.sim.harness import Stack, StackConfig
from gateway.twilio.tokens import CallClaims, mint

pytestmark = pytest.mark.usefixtures("fast_gate")


@pytest.fixture
def fast_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT_S", 0.5)
    monkeypatch.setattr(server_module, "MAX_PENDING_CONNECTIONS", 50)


def samples(st: Stack, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    assert st.gateway is not None
    body = st.gateway.metrics.render()[0].decode()
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(body)
            for s in f.samples if s.name == name}


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout_s)


def test_slow_heads_and_bodies_are_cut(run):
    async def scenario() -> None:
        async with Stack(StackConfig()) as st:
            port = st.gateway.port  # type: ignore[union-attr]
            conns = []
            for head in (b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n",  # the head never ends
                         b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nCallSid=CA",
                         b"GET /twilio/media HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                conns.append((reader, writer))
            for reader, writer in conns:
                assert await closed_within(reader, 3.0) == b""  # closed by the gateway, nothing answered
                writer.close()
            async with aiohttp.ClientSession() as http, http.get(st.base_url + "/healthz") as resp:
                assert resp.status == 200
            assert samples(st, "gateway_rejected_connections_total") == {(("reason", "slow_request"),): 3.0}

    run(scenario())


def test_a_flood_of_pending_connections_is_capped_and_the_port_recovers(run):
    async def scenario() -> None:
        async with Stack(StackConfig()) as st:
            port = st.gateway.port  # type: ignore[union-attr]
            opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(80)]
            for _, writer in opened:
                writer.write(b"POST /x HTTP/1.1\r\n")

            def refused() -> float:
                return samples(st, "gateway_rejected_connections_total").get((("reason", "too_many"),), 0)

            for _ in range(100):  # the accept queue drains within a few ticks
                if refused() >= 30:
                    break
                await asyncio.sleep(0.01)
            assert refused() == 30  # 50 pending allowed
            for reader, writer in opened:
                await closed_within(reader, 3.0)
                writer.close()
            async with aiohttp.ClientSession() as http, http.get(st.base_url + "/healthz") as resp:
                assert resp.status == 200  # the slow ones were cut; new clients get in again
            assert st.gateway.pending_connections == 0  # type: ignore[union-attr]

    run(scenario())


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"CallSid=\xff\xfe", 400),  # invalid UTF-8
    ({"Content-Type": "multipart/form-data; boundary=b"},
     b"--b\r\nContent-Disposition: form-data; name=\"CallSid\"\r\n\r\nCA1\r\n--b--\r\n", 400),
    ({"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"}, b"", 400),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"x" * (70 * 1024), 400),
])
def test_malformed_webhook_bodies_are_4xx(run, headers: dict[str, str], body: bytes, status: int):
    async def scenario() -> None:
        async with Stack(StackConfig()) as st:
            reader, writer = await asyncio.open_connection("127.0.0.1", st.gateway.port)  # type: ignore[union-attr]
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            length = "" if "Transfer-Encoding" in headers else f"Content-Length: {len(body)}\r\n"
            writer.write(f"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n{head}{length}\r\n".encode() + body)
            answer = await closed_within(reader, 5.0)
            writer.close()
            assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]

    run(scenario())


def test_a_non_ascii_bearer_token_is_a_401(run):
    async def scenario() -> None:
        async with Stack(StackConfig()) as st:
            reader, writer = await asyncio.open_connection("127.0.0.1", st.gateway.port)  # type: ignore[union-attr]
            writer.write("GET /calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer é☃\r\n\r\n".encode())
            answer = await closed_within(reader, 5.0)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]

    run(scenario())


async def _media_socket(st: Stack) -> Any:
    url = st.base_url.replace("http", "ws") + "/twilio/media"
    return await websockets.connect(url, subprotocols=["audio.twilio.com"], max_size=None)  # type: ignore[list-item]


def test_absurd_start_messages_close_only_their_call(run):
    async def scenario() -> None:
        async with Stack(StackConfig()) as st:
            nested = '{"a":' * 1000 + '"x"' + "}" * 1000  # deeper than most JSON libraries go
            token = mint(st.settings.token_key, "CA1", __import__("time").time(), 60, CallClaims())  # type: ignore[union-attr]
            start = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
                "streamSid": "MZ1", "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"call_token": token, "deep": "__NESTED__"}}}
            ws = await _media_socket(st)
            await ws.send(orjson.dumps(start).decode().replace('"__NESTED__"', nested))
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1008
            _record, report = await st.call(__import__("gateway.sim.twilio_script", fromlist=["CallScript"])
                                           .CallScript(duration_ms=1500))
            assert report.problems == []  # the next call is untouched
            errors = samples(st, "gateway_protocol_errors_total")
            assert errors == {(("kind", "invalid_event"), ("side", "twilio")): 1.0}  # no readable `event`

    run(scenario())


def test_every_oversized_frame_is_counted_once(run):
    async def scenario() -> None:
        async with Stack(StackConfig(settings={"max_frame_bytes": 8192})) as st:
            for i in range(10):
                ws = await _media_socket(st)
                await ws.send(orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode())
                payload = base64.b64encode(bytes(20_000)).decode()
                await ws.send(orjson.dumps({"event": "media", "streamSid": f"MZ{i}",
                                            "media": {"payload": payload}}).decode())
                await asyncio.wait_for(ws.wait_closed(), 5)
            await asyncio.sleep(0.1)
            errors = samples(st, "gateway_protocol_errors_total")
            assert errors == {(("kind", "oversized_frame"), ("side", "twilio")): 10.0}

    run(scenario())
