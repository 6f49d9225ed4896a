"""A small tool server for tests and the demo: what a team's own HTTP tool would look like.

It verifies ``X-Gateway-Signature`` on every request (401 otherwise), records what it received,
and answers per path: ``/lookup-order`` (an order's status, after ``delay_s``), ``/fail`` (HTTP
500), ``/garbage`` (a body that is not JSON), ``/slow`` (sleeps ``slow_s`` before answering).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ..agents.signing import HEADER, verify


@dataclass
class ToolRequest:
    path: str
    body: dict[str, Any]
    signed: bool
    at: float  # time.monotonic()


@dataclass
class ToolServer:
    secret: str
    delay_s: float = 0.0  # /lookup-order answers after this
    slow_s: float = 10.0  # /slow answers after this
    requests: list[ToolRequest] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    base_url: str = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        signed = verify(self.secret, request.headers.get(HEADER, ""), raw)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {}
        name = request.match_info["name"]
        self.requests.append(ToolRequest(name, body, signed, time.monotonic()))
        if not signed:
            return web.json_response({"error": "bad signature"}, status=401)
        if name == "fail":
            return web.Response(status=500, text="internal error")
        if name == "garbage":
            return web.Response(text="<html>not json</html>", content_type="text/html")
        if name == "slow":
            await asyncio.sleep(self.slow_s)
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        order_id = str((body.get("arguments") or {}).get("order_id", "?"))
        return web.json_response({"order_id": order_id, "status": "shipped", "eta": "tomorrow before noon"})
