"""HTTP tools: the model's function call POSTed, signed, to the tool's URL; the answer back as text.

One pooled ``aiohttp.ClientSession`` per worker serves every call's tools concurrently on the
worker's loop: a slow tool holds a connection, never the loop. Every way a tool can fail becomes
an output of ``{"error": "..."}`` for the model (so it can apologise) and a status for the metrics
and the call record; nothing a tool does can leave a call stuck.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ..outcomes import ToolStatus
from .profiles import Tool
from .signing import HEADER, sign

log = logging.getLogger("gateway.tools")
MAX_ANSWER_BYTES = 64 * 1024  # the model gets the answer as text: keep it a sane size
USER_AGENT = "voice-gateway-tools/1"


@dataclass(frozen=True)
class ToolResult:
    status: ToolStatus
    output: str  # what the model receives as function_call_output.output (JSON text)
    latency_s: float

    @property
    def ok(self) -> bool:
        return self.status is ToolStatus.OK


def error_output(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


class ToolClient:
    """Runs HTTP tools for every call of a worker."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT})
        return self._session

    async def call(self, name: str, tool: Tool, arguments: Any, context: dict[str, Any]) -> ToolResult:
        body = orjson.dumps({"name": name, "arguments": arguments, "call": context})
        headers = {"Content-Type": "application/json", HEADER: sign(self._secret, body)}
        started = time.perf_counter()
        try:
            async with asyncio.timeout(tool.timeout_s):
                async with self._http().post(tool.url, data=body, headers=headers, allow_redirects=False) as resp:
                    answer = await resp.content.read(MAX_ANSWER_BYTES + 1)
                    status = resp.status
        except TimeoutError:
            return self._result(ToolStatus.TIMEOUT, f"the tool did not answer within {tool.timeout_s:g} s", started)
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("tool %s unreachable: %s", name, exc)
            return self._result(ToolStatus.UNREACHABLE, f"the tool is unreachable ({type(exc).__name__})", started)
        if not 200 <= status < 300:
            return self._result(ToolStatus.HTTP_ERROR, f"the tool answered HTTP {status}", started)
        if len(answer) > MAX_ANSWER_BYTES:
            return self._result(ToolStatus.INVALID_JSON, f"the tool's answer exceeds {MAX_ANSWER_BYTES} bytes",
                                started)
        try:
            orjson.loads(answer)
        except orjson.JSONDecodeError:
            return self._result(ToolStatus.INVALID_JSON, "the tool's answer is not valid JSON", started)
        return ToolResult(ToolStatus.OK, answer.decode(), time.perf_counter() - started)

    @staticmethod
    def _result(status: ToolStatus, message: str, started: float) -> ToolResult:
        return ToolResult(status, error_output(message), time.perf_counter() - started)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
