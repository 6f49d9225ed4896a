"""HTTP side (aiohttp): Twilio voice webhook, control API, health.

Routes:
  POST /twilio/voice                 TwiML that connects the call to our media socket
  GET/POST /calls...                 control API (gateway.control.api; bearer GATEWAY_CONTROL_TOKEN)
  GET  /healthz                      the process is alive
  GET  /readyz                       ready for new calls (503 while draining or at capacity)
  GET  /metrics                      Prometheus exposition (all workers in multiprocess mode)
The media socket itself (/twilio/media) is served by picows on the same port (see ``server``).
"""
from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDict

from .control.api import routes as control_routes
from .outcomes import RejectReason
from .twilio import tokens, twiml
from .twilio.signature import validate_signature

if TYPE_CHECKING:
    from .server import Gateway

log = logging.getLogger("gateway.http")
MEDIA_PATH = "/twilio/media"
VOICE_PATH = "/twilio/voice"
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway")


def is_local_host(host: str | None) -> bool:
    """``localhost``, or a loopback, private, link-local or unspecified address: no host Twilio reaches."""
    name = (host or "").strip("[]").lower()
    if not name or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified


def forwarded_base(headers: Mapping[str, str], scheme: str = "http") -> str:
    """Base URL as the client saw it, from a proxy's X-Forwarded-* headers (development only).

    Without ``X-Forwarded-Proto`` a public host name means ``https``: Twilio reaches a laptop
    only through a tunnel or proxy that terminates TLS for that name, and it opens only ``wss://``
    stream URLs (docs/protocols/twilio.md#connect-stream-twiml), so ``ws://`` would fail every call.
    """
    host = headers.get("X-Forwarded-Host", headers.get("Host", "")).split(",")[0].strip()
    proto = headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if not proto:
        proto = scheme if is_local_host(urlsplit(f"//{host}").hostname) else "https"
    return f"{proto}://{host}"


def public_base(request: web.BaseRequest, configured: str) -> str:
    """The base URL Twilio used: configured (production), else rebuilt from proxy headers (dev)."""
    if configured:
        return configured.rstrip("/")
    return forwarded_base(request.headers, request.scheme)


def media_url(base: str) -> str:
    """``wss://`` (or ``ws://`` for a plain-http dev base) URL of the media socket."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{MEDIA_PATH}"


async def _twilio_form(request: web.Request) -> MultiDict[str]:
    """Twilio posts ``application/x-www-form-urlencoded`` UTF-8: anything else is a 400, not a 500."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise web.HTTPBadRequest(text="expected an application/x-www-form-urlencoded body")
    try:
        form = await request.post()
    except (UnicodeDecodeError, ValueError):
        raise web.HTTPBadRequest(text="malformed form body") from None
    return MultiDict((k, v) for k, v in form.items() if isinstance(v, str))


async def voice_webhook(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY_KEY]
    settings = gw.settings
    form = await _twilio_form(request)
    params = dict(form.items())
    base = public_base(request, settings.public_url)
    if settings.secure:
        # Sign over the public URL Twilio requested (base + path + query), never request.url:
        # behind a proxy or tunnel the app sees another scheme/host (docs/protocols/twilio.md#url-variants).
        url = base + request.path_qs
        signature = request.headers.get("X-Twilio-Signature", "")
        urls = [url]
        if not settings.public_url:  # scheme rebuilt from headers: Twilio may have called http or https
            scheme, _, rest = url.partition("://")
            urls.append(("http" if scheme == "https" else "https") + "://" + rest)
        if not any(validate_signature(settings.twilio_auth_token, u, form, signature) for u in urls):
            gw.count_rejected(RejectReason.BAD_SIGNATURE)
            log.warning("webhook rejected: bad X-Twilio-Signature")
            raise web.HTTPForbidden(text="invalid signature")
    call_sid = params.get("CallSid", "")
    if not call_sid:
        raise web.HTTPBadRequest(text="missing CallSid")
    reason = await gw.webhook_refusal(call_sid)
    if reason is not None:
        gw.count_rejected(reason)
        log.warning("call %s refused at webhook: %s", call_sid, reason)
        return web.Response(text=twiml.reject_busy(), content_type="text/xml")
    called, requested = params.get("To", ""), request.query.get("agent")
    agent, known = gw.agents.agents.route(called, requested)
    if not known:
        log.warning("call %s: webhook asked for agent %r, which does not exist; %r answers",
                    call_sid, requested[:64] if requested else requested, agent)
    claims = tokens.CallClaims(agent=agent, caller=params.get("From", ""), called=called)
    token = tokens.mint(settings.token_key, call_sid, time.time(), settings.call_token_ttl_s, claims)
    body = twiml.connect_stream(media_url(base), {tokens.PARAMETER: token})
    return web.Response(text=body, content_type="text/xml")


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY_KEY]
    gw.metrics.flush(gw.calls)  # scrape-fresh numbers for this worker's live calls
    body, content_type = gw.metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def readyz(request: web.Request) -> web.Response:
    gw: Gateway = request.app[GATEWAY_KEY]
    reason = await gw.readiness()
    if reason is None:
        return web.Response(text="ready\n")
    return web.Response(status=503, text=f"not ready: {reason}\n")


@web.middleware
async def one_request_per_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No keep-alive: the next request comes on a new connection, through the dispatcher's gate
    (its timeouts and limits), never straight to aiohttp."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # an error answer is a response too (aiohttp 3)
        exc.force_close()
        raise
    response.force_close()
    return response


def make_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[one_request_per_connection])
    app[GATEWAY_KEY] = gateway
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_routes(control_routes(GATEWAY_KEY))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
