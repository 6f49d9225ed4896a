"""Twilio's REST API (Calls: hang up, redirect, create), through the official ``twilio`` package.

Why the package rather than three hand-written POSTs: it is Twilio's maintained client (auth with
an API key or the auth token, error mapping to ``TwilioRestException`` with Twilio's error codes,
retries), and its async HTTP client runs on aiohttp, already the gateway's HTTP stack. One
``TwilioRest`` per worker holds one pooled client; ``TWILIO_API_BASE_URL`` points it elsewhere
(the REST simulator in tests and the demo) by rewriting the base of every URL in the HTTP client,
the one extension point the package offers for that.
"""
from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable
from typing import Any
from xml.sax.saxutils import escape

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

log = logging.getLogger("gateway.twilio.rest")
TWILIO_API = "https://api.twilio.com"
TIMEOUT_S = 10.0


class TwilioRestError(Exception):
    """A REST request failed (Twilio's error code and message, or the network)."""


class _BaseUrlClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # the package ships no types
    """The package's aiohttp client with ``https://api.twilio.com`` replaced by ``base_url``, and
    basic auth sent as a header (the package still uses aiohttp's deprecated ``BasicAuth``)."""

    def __init__(self, base_url: str) -> None:
        super().__init__(timeout=TIMEOUT_S)
        self._base = base_url.rstrip("/")

    async def request(self, method: str, url: str, params: dict[str, object] | None = None,
                      data: dict[str, object] | None = None, headers: dict[str, str] | None = None,
                      auth: tuple[str, str] | None = None, timeout: float | None = None,
                      allow_redirects: bool = False) -> Response:
        if self._base != TWILIO_API and url.startswith(TWILIO_API):
            url = self._base + url[len(TWILIO_API):]
        if auth is not None:
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers = {**(headers or {}), "Authorization": f"Basic {credentials}"}
        return await super().request(method, url, params, data, headers, None, timeout, allow_redirects)


def dial_twiml(target: str) -> str:
    """``<Dial>`` to a phone number (E.164) or a SIP URI."""
    noun = "Sip" if target.startswith(("sip:", "sips:")) else "Number"
    return f"<Response><Dial><{noun}>{escape(target)}</{noun}></Dial></Response>"


class TwilioRest:
    """The REST calls the gateway makes; every failure is a ``TwilioRestError`` with a reason."""

    def __init__(self, account_sid: str, username: str, password: str, base_url: str = TWILIO_API) -> None:
        self.account_sid = account_sid
        self._http = _BaseUrlClient(base_url)
        self._client = Client(username, password, account_sid, http_client=self._http)

    async def hangup(self, call_sid: str) -> None:
        await self._update(call_sid, status="completed")

    async def redirect(self, call_sid: str, twiml: str) -> None:
        await self._update(call_sid, twiml=twiml)

    async def create(self, to: str, from_: str, url: str, status_callback: str | None = None) -> str:
        """Place an outbound call whose TwiML Twilio fetches from ``url``; returns its CallSid."""
        kwargs: dict[str, Any] = {"to": to, "from_": from_, "url": url}
        if status_callback:
            kwargs["status_callback"] = status_callback
        call = await _guarded("create call", self._client.calls.create_async(**kwargs))
        return str(call.sid)

    async def _update(self, call_sid: str, **fields: str) -> None:
        await _guarded(f"update {call_sid}", self._client.calls(call_sid).update_async(**fields))

    async def aclose(self) -> None:
        await self._http.close()


async def _guarded(what: str, request: Awaitable[Any]) -> Any:
    """Await a request; any failure becomes a ``TwilioRestError`` saying what and why."""
    try:
        return await request
    except TwilioRestException as exc:
        raise TwilioRestError(f"{what}: Twilio error {exc.code}: {exc.msg}") from exc
    except Exception as exc:  # aiohttp errors, timeouts: a reason, never a crash
        raise TwilioRestError(f"{what}: {type(exc).__name__}: {exc}") from exc
