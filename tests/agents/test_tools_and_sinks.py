"""HTTP tools and call-record sinks against real local HTTP servers: every way a peer can fail."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web

from gateway.agents.profiles import Tool
from gateway.agents.signing import HEADER, verify
from gateway.agents.sinks import RecordSinks
from gateway.agents.tools import ToolClient
from gateway.outcomes import ToolStatus

SECRET = "tool-secret"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def tool(url: str, timeout_s: float = 1.0) -> Tool:
    return Tool(description="Look up an order.", url=url, timeout_s=timeout_s)


CONTEXT = {"call_sid": "CA1", "stream_sid": "MZ1", "from": "+15550001", "to": "+15551234567", "agent": "support",
           "parameters": {}}


@pytest.mark.parametrize(("answer", "status"), [
    ("ok", ToolStatus.OK), ("slow", ToolStatus.TIMEOUT), ("500", ToolStatus.HTTP_ERROR),
    ("not-json", ToolStatus.INVALID_JSON),
])
def test_tool_outcomes(run, answer, status):
    received: list[tuple[bool, dict]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received.append((verify(SECRET, request.headers[HEADER], body), orjson.loads(body)))
        if answer == "slow":
            await asyncio.sleep(3)
        if answer == "500":
            return web.Response(status=500, text="boom")
        if answer == "not-json":
            return web.Response(text="<html>oops</html>")
        return web.json_response({"order_id": "42", "status": "shipped"})

    async def scenario() -> None:
        client = ToolClient(SECRET)
        try:
            async with serve(handler) as base:
                result = await client.call("lookup_order", tool(base + "/lookup"), {"order_id": "42"}, CONTEXT)
        finally:
            await client.aclose()
        assert result.status is status
        output = orjson.loads(result.output)
        if status is ToolStatus.OK:
            assert output == {"order_id": "42", "status": "shipped"}
        else:
            assert set(output) == {"error"}
        signed, body = received[0]
        assert signed, "the tool server could not verify X-Gateway-Signature"
        assert body == {"name": "lookup_order", "arguments": {"order_id": "42"}, "call": CONTEXT}

    run(scenario())


def test_unreachable_tool(run):
    async def scenario() -> None:
        client = ToolClient(SECRET)
        try:
            result = await client.call("lookup_order", tool("http://127.0.0.1:9/x"), {}, CONTEXT)
        finally:
            await client.aclose()
        assert result.status is ToolStatus.UNREACHABLE and "error" in orjson.loads(result.output)

    run(scenario())


def test_records_reach_both_sinks_and_the_webhook_is_retried(run, tmp_path, monkeypatch):
    from gateway.agents import sinks

    monkeypatch.setattr(sinks, "RETRIES", (0.05, 0.05, 0.05))
    attempts: list[bool] = []
    counted: list[tuple[str, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        attempts.append(verify(SECRET, request.headers[HEADER], await request.read()))
        if len(attempts) < 3:
            return web.Response(status=503)  # two failures, then accepted
        return web.Response(status=204)

    async def scenario() -> None:
        async with serve(handler) as base:
            records = RecordSinks(str(tmp_path), base + "/records", SECRET, lambda s, r: counted.append((s, r)))
            records.submit({"call_sid": "CA1", "ended_at_unix": 1_796_000_000.0})
            records.submit({"call_sid": "CA2", "ended_at_unix": 1_796_000_000.0})
            await records.aclose()
        lines = (tmp_path / "calls-2026-11-30.jsonl").read_bytes().splitlines()
        assert [orjson.loads(line)["call_sid"] for line in lines] == ["CA1", "CA2"]
        assert attempts and all(attempts)
        assert sorted(counted) == [("file", "ok"), ("file", "ok"), ("webhook", "ok"), ("webhook", "ok")]

    run(scenario())


def test_a_refusing_webhook_is_not_retried_and_is_counted(run, monkeypatch):
    from gateway.agents import sinks

    monkeypatch.setattr(sinks, "RETRIES", (0.05, 0.05))
    attempts: list[int] = []
    counted: list[tuple[str, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        attempts.append(1)
        return web.Response(status=400)

    async def scenario() -> None:
        async with serve(handler) as base:
            records = RecordSinks("", base + "/records", SECRET, lambda s, r: counted.append((s, r)))
            records.submit({"call_sid": "CA1"})
            await records.aclose()
        assert len(attempts) == 1 and counted == [("webhook", "error")]

    run(scenario())
