"""The control API (bearer ``GATEWAY_CONTROL_TOKEN``): list, inspect and act on any live call.

Any worker of any pod answers; the command runs on the worker that owns the call (``plane``).

  GET  /calls                       this pod's calls, or the cluster's with Redis (?limit, ?cursor, ?scope)
  GET  /calls/{call_sid}            state, agent, duration, barge-ins, transcript so far
  POST /calls/{call_sid}/interrupt  barge in now
  POST /calls/{call_sid}/hangup     {"after_playout": bool}
  POST /calls/{call_sid}/say        {"text"}: the assistant says it now (out of band)
  POST /calls/{call_sid}/instructions {"instructions"}: session.update mid-call
  POST /calls/{call_sid}/transfer   {"target"}: one of the agent's transfer_targets
  POST /calls                       {"to", "from", "agent"}: an outbound call (202, its CallSid)

Status codes: 400 bad request, 401 no/wrong bearer token, 403 API disabled, 404 no such call
anywhere, 409 wrong state, 503 registry unreachable, 504 owner did not answer in time; every body
is JSON, errors as ``{"error": reason}``.
"""
from __future__ import annotations

import hmac
import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from aiohttp import web

from ..twilio.rest import TwilioRestError
from .model import ControlError, Verb

if TYPE_CHECKING:
    from ..server import Gateway

log = logging.getLogger("gateway.control")
PAGE = 100
MAX_PAGE = 1000
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


def _authorized(gw: Gateway, request: web.Request) -> web.Response | None:
    token = gw.settings.control_token
    if not token:
        return _error(403, "control API disabled: GATEWAY_CONTROL_TOKEN is not set on this gateway")
    supplied = request.headers.get("Authorization", "").encode("utf-8", "replace")
    if not hmac.compare_digest(supplied, f"Bearer {token}".encode()):
        return _error(401, "bearer token required", **{"WWW-Authenticate": "Bearer"})
    return None


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ControlError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ControlError(400, "the body must be a JSON object")
    return body


def routes(gateway_key: web.AppKey[Gateway]) -> list[web.RouteDef]:
    async def list_calls(request: web.Request) -> web.Response:
        gw = request.app[gateway_key]
        if (denied := _authorized(gw, request)) is not None:
            return denied
        try:
            limit = min(MAX_PAGE, max(1, int(request.query.get("limit", PAGE))))
            offset = int(request.query.get("cursor", "0") or 0)
        except ValueError:
            return _error(400, "limit and cursor are integers")
        try:
            calls = await gw.plane.calls()
        except ControlError as exc:
            return _error(exc.status, exc.reason)
        calls.sort(key=lambda c: (float(c.get("started_at", 0)), str(c.get("call_sid"))))
        page = calls[offset:offset + limit]
        more = offset + limit < len(calls)
        return web.json_response({"calls": page, "total": len(calls),
                                  "next_cursor": str(offset + limit) if more else None})

    async def one_call(request: web.Request) -> web.Response:
        return await _command(request, Verb.GET)

    async def verb_call(request: web.Request) -> web.Response:
        name = request.match_info["verb"]
        if name not in {v.value for v in Verb} - {Verb.GET.value}:
            return _error(404, f"no such command {name[:40]!r}")
        return await _command(request, Verb(name))

    async def _command(request: web.Request, verb: Verb) -> web.Response:
        gw = request.app[gateway_key]
        if (denied := _authorized(gw, request)) is not None:
            return denied
        call_sid = request.match_info["call_sid"]
        started = time.perf_counter()
        try:
            args = await _body(request) if verb is not Verb.GET else {}
            route, result = await gw.plane.command(call_sid, verb, args)
        except ControlError as exc:
            gw.metrics.count("gateway_control_commands_total", verb, str(exc.status))
            return _error(exc.status, exc.reason)
        gw.metrics.count("gateway_control_commands_total", verb, "200")
        gw.metrics.observe("gateway_control_routing_seconds", time.perf_counter() - started, route)
        return web.json_response({**result, "route": route})

    async def create_call(request: web.Request) -> web.Response:
        gw = request.app[gateway_key]
        if (denied := _authorized(gw, request)) is not None:
            return denied
        try:
            body = await _body(request)
        except ControlError as exc:
            return _error(exc.status, exc.reason)
        to, from_ = str(body.get("to", "")), str(body.get("from", ""))
        agent = str(body.get("agent") or gw.agents.agents.default)
        if not _E164.fullmatch(to) or not _E164.fullmatch(from_):
            return _error(400, '"to" and "from" must be phone numbers in E.164 (+15551234567)')
        if agent not in gw.agents.agents.agents:
            return _error(400, f"no agent named {agent[:64]!r}")
        rest = gw.agents.rest
        if rest is None:
            return _error(409, "outbound calls need Twilio REST credentials (TWILIO_ACCOUNT_SID)")
        if not gw.settings.public_url:
            return _error(409, "outbound calls need GATEWAY_PUBLIC_URL: Twilio fetches the call's TwiML from it")
        url = f"{gw.settings.public_url.rstrip('/')}/twilio/voice?agent={quote(agent)}"
        try:
            call_sid = await rest.create(to, from_, url=url)
        except TwilioRestError as exc:
            gw.metrics.count("gateway_control_commands_total", "create", "502")
            return _error(502, str(exc))
        gw.metrics.count("gateway_control_commands_total", "create", "202")
        log.info("outbound call %s to %s (agent %s)", call_sid, to, agent)
        return web.json_response({"call_sid": call_sid, "to": to, "from": from_, "agent": agent}, status=202)

    return [
        web.get("/calls", list_calls),
        web.post("/calls", create_call),
        web.get("/calls/{call_sid}", one_call),
        web.post("/calls/{call_sid}/{verb}", verb_call),
    ]
