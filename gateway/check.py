"""``gateway check``: is this configuration ready for a real call?

Three parts, each printed as ``ok`` / ``warn`` / ``FAIL`` / ``skip`` lines with what to do:

1. configuration: every setting validated (all wrong ones listed, then exit 2), the fast path,
   the security mode, and the settings that would make every call fail (``startup.findings``);
2. upstream: the host of ``GATEWAY_UPSTREAM_URL`` resolved, then a picows WebSocket opened the way a
   call opens it (TLS verified against the system CAs plus ``GATEWAY_UPSTREAM_CA_FILE``, only the
   ``Authorization`` header, no redirects), ``session.created`` awaited and the socket closed at
   once: no event and no audio is sent. The Realtime API creates a session on every upgrade and
   offers no cheaper way to test the WebSocket path with the key;
3. public URL (needs ``gateway serve`` running behind it): ``GET /healthz``, then ``POST
   /twilio/voice`` signed with ``TWILIO_AUTH_TOKEN`` as Twilio signs it, expecting TwiML whose
   stream URL is ``wss://<public host>/twilio/media``. No call is created.

Exit status: 0 nothing wrong (warnings allowed), 1 something wrong, 2 invalid configuration.
"""
from __future__ import annotations

import asyncio
import re
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from picows import WSCloseCode, WSError, WSFrame, WSHandshakeError, WSListener, WSMsgType, WSTransport, ws_connect

from .config import TRY_THE_DEMO, Settings
from .errors import ConfigError
from .http import VOICE_PATH, is_local_host, media_url
from .startup import fast_path, fast_path_refusal, findings
from .twilio.signature import compute_signature

CHECK_CALL_SID = "CA" + "0" * 32  # no such call: the webhook only mints a token for it
STREAM_URL = re.compile(r'<Stream url="([^"]+)"')


@dataclass
class Result:
    status: str  # ok | warn | FAIL | skip
    title: str
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"  {self.status:<5} {self.title}", *(f"          {d}" for d in self.details)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _error_body(raw: bytes | None) -> str:
    """``code: message`` of an OpenAI-style JSON error body, else its first line."""
    if not raw:
        return ""
    try:
        error = orjson.loads(raw).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return raw.decode(errors="replace").strip().splitlines()[0][:200] if raw.strip() else ""
    code, message = error.get("code"), error.get("message", "")
    return f"{code}: {message}" if code else str(message)


class _FirstEvent(WSListener):
    """Hands the first text message (``session.created``) or the close to a future."""

    def __init__(self, first: asyncio.Future[bytes]) -> None:
        self.first = first

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.first.done():
            return
        if frame.msg_type is WSMsgType.TEXT:
            self.first.set_result(frame.get_payload_as_bytes())
        elif frame.msg_type is WSMsgType.CLOSE:
            self.first.set_exception(ConnectionError(
                f"closed by the upstream before session.created ({frame.get_close_code().value} "
                f"{frame.get_close_reason() or ''})".rstrip()))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.first.done():
            self.first.set_exception(ConnectionError("connection lost before session.created"))


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """As ``openai.upstream.UpstreamConnector`` builds it."""
    if not settings.upstream_url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context()
    if settings.upstream_ca_file:
        ctx.load_verify_locations(settings.upstream_ca_file)
    return ctx


async def check_upstream(settings: Settings, timeout_s: float) -> Result:
    url = settings.upstream_url
    title = f"upstream {url}"
    if not settings.openai_api_key:
        return Result("skip", title, ["no OPENAI_API_KEY to connect with (see above)"])
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s)
    except (OSError, TimeoutError) as exc:
        return Result("FAIL", title, [f"cannot resolve {host}: {exc or 'timed out'}"])
    addresses = sorted({str(info[4][0]) for info in infos})
    resolved = [] if addresses == [host] else [
        (f"resolved {host} → {', '.join(addresses[:3])}{' …' if len(addresses) > 3 else ''} "
        f"({_ms(time.monotonic() - t0)})")]
    first: asyncio.Future[bytes] = loop.create_future()
    t1 = time.monotonic()
    try:
        transport, _ = await asyncio.wait_for(ws_connect(
            lambda: _FirstEvent(first), url, ssl_context=_ssl_context(settings),
            extra_headers={"Authorization": f"Bearer {settings.openai_api_key}"},
            websocket_handshake_timeout=timeout_s, max_redirects=0, logger_name="check"), timeout_s)
    except (OSError, WSError) as exc:  # timeouts, refused connections and TLS errors are OSErrors
        return Result("FAIL", title, [*resolved, *_connect_problem(exc, f"{host}:{port}", timeout_s)])
    upgraded = time.monotonic() - t1
    details = [*resolved, (f"TCP{' + TLS' if parts.scheme == 'wss' else ''} + WebSocket upgrade with OPENAI_API_KEY "
                         f"accepted ({_ms(upgraded)})")]
    try:
        raw: bytes | None = await asyncio.wait_for(first, timeout_s)
    except (ConnectionError, TimeoutError) as exc:
        raw, problem = None, f"no session.created: {exc or f'nothing within {timeout_s:g} s'}"
    if not transport.is_close_frame_sent and not transport.is_disconnected:
        transport.send_close(WSCloseCode.OK)
    transport.disconnect()
    await asyncio.wait_for(transport.wait_disconnected(), timeout_s)
    if raw is None:
        return Result("FAIL", title, [*details, problem])
    return _session_result(settings, title, details, raw, time.monotonic() - t1)


def _connect_problem(exc: BaseException, where: str, timeout_s: float) -> list[str]:
    if isinstance(exc, TimeoutError):
        return [f"no WebSocket upgrade from {where} within {timeout_s:g} s"]
    if isinstance(exc, ssl.SSLCertVerificationError):
        return [f"TLS: the server's certificate is not trusted ({exc.verify_message})",
                "a private CA or a TLS-inspecting proxy? point GATEWAY_UPSTREAM_CA_FILE at its PEM bundle"]
    if isinstance(exc, ssl.SSLError):
        return [f"TLS handshake failed: {exc}"]
    if isinstance(exc, WSHandshakeError):
        return _refused(exc)
    return [f"cannot connect to {where}: {exc}"]


def _refused(exc: WSHandshakeError) -> list[str]:
    status = int(exc.response.status) if exc.response is not None else 0
    body = _error_body(exc.raw_body)
    if status == 401:
        return [f"the upstream refused OPENAI_API_KEY: HTTP 401 {body}".rstrip(),
                ("check the key (https://platform.openai.com/api-keys) and that it belongs to a project with "
                "Realtime access")]
    if status:
        return [f"WebSocket upgrade refused: HTTP {status} {body}".rstrip()]
    return [f"WebSocket upgrade failed: {exc}"]


def _session_result(settings: Settings, title: str, details: list[str], raw: bytes, elapsed: float) -> Result:
    try:
        event: dict[str, Any] = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Result("FAIL", title, [*details, f"first message is not JSON: {raw[:80]!r}"])
    kind = event.get("type")
    if kind == "error":
        error = event.get("error") or {}
        return Result("FAIL", title, [*details, (f"error instead of session.created: {error.get('code')}: "
                                                f"{error.get('message')}")])
    if kind != "session.created":
        return Result("FAIL", title, [*details, f"first event is {kind!r}, not session.created"])
    model = (event.get("session") or {}).get("model")
    details.append(f"session.created (model {model}) after {_ms(elapsed)}; closed at once, no event or audio sent")
    if model and model != settings.model:
        details.append(f"the session's model {model} is not GATEWAY_MODEL={settings.model}: every call's "
                       "session.update would be refused")
        return Result("FAIL", title, details)
    return Result("ok", title, details)


async def check_public_url(settings: Settings, timeout_s: float) -> list[Result]:
    import aiohttp

    base = settings.public_url.rstrip("/")
    if not base:
        return [Result("warn", "public URL: GATEWAY_PUBLIC_URL is empty, so nothing to check",
                       [("Twilio needs a public https URL: start a tunnel to port "
                        f"{settings.port} (ngrok http {settings.port}) and set GATEWAY_PUBLIC_URL to its https URL")])]
    hint = (f"is `gateway serve` running (this check needs it), and does {base} lead to its port "
            f"{settings.port} (tunnel up, same URL)?")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    out: list[Result] = []
    async with aiohttp.ClientSession(timeout=timeout) as http:
        health = f"{base}/healthz"
        try:
            async with http.get(health, allow_redirects=False) as resp:
                status, text = resp.status, (await resp.text())[:200]
        except (aiohttp.ClientError, TimeoutError) as exc:
            return [Result("FAIL", f"public URL {base}: nothing answers GET /healthz",
                           [f"{type(exc).__name__}: {exc or 'timed out'}", hint])]
        if status != 200 or text.strip() != "ok":
            return [Result("FAIL", f"public URL {base}: GET /healthz answered HTTP {status}, not the gateway's "
                                   "\"ok\"", [f"{text.strip()[:120]!r}", hint])]
        if is_local_host(urlsplit(base).hostname):
            out.append(Result("warn", f"public URL {base} answers GET /healthz, but names a local address",
                              ["fine for the simulators; Twilio cannot reach it: use your tunnel's https URL"]))
        else:
            out.append(Result("ok", f"public URL {base} answers GET /healthz"))
        out.append(await _check_webhook(http, settings, base, hint))
    return out


async def _check_webhook(http: Any, settings: Settings, base: str, hint: str) -> Result:
    import aiohttp

    url = base + VOICE_PATH
    form = {"CallSid": CHECK_CALL_SID, "AccountSid": "AC" + "0" * 32, "From": "gateway-check", "To": "gateway-check",
            "CallStatus": "ringing", "Direction": "inbound"}
    headers = {}
    signed = ""
    if settings.twilio_auth_token:
        headers["X-Twilio-Signature"] = compute_signature(settings.twilio_auth_token, url, form)
        signed = " signed with TWILIO_AUTH_TOKEN"
    title = f"webhook POST {url}{signed}"
    try:
        async with http.post(url, data=form, headers=headers, allow_redirects=False) as resp:
            status, text = resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result("FAIL", title, [f"{type(exc).__name__}: {exc or 'timed out'}", hint])
    if status == 403:
        return Result("FAIL", title, [("refused the signature (HTTP 403): the gateway behind this URL runs with "
                                      "another TWILIO_AUTH_TOKEN, or with a GATEWAY_PUBLIC_URL other than "
                                      f"{settings.public_url}")])
    if 300 <= status < 400:
        return Result("FAIL", title, [(f"HTTP {status} redirect: Twilio signs the URL it calls, so set "
                                      "GATEWAY_PUBLIC_URL (and the console's webhook) to where it leads")])
    if status != 200:
        return Result("FAIL", title, [f"HTTP {status}: {text.strip()[:120]!r}", hint])
    return _twiml_result(settings, title, text)


def _twiml_result(settings: Settings, title: str, text: str) -> Result:
    """The webhook answered 200: is it the gateway's TwiML, with the stream URL Twilio needs?"""
    if "<Reject" in text:
        return Result("warn", title, ["answers, but refuses calls right now (draining, or at GATEWAY_MAX_CALLS)"])
    match = STREAM_URL.search(text)
    if match is None:
        return Result("FAIL", title, [f"the answer is not the gateway's TwiML: {text.strip()[:120]!r}"])
    stream = match.group(1)
    details = [f"TwiML <Stream url=\"{stream}\">"]
    expected = media_url(settings.public_url)
    parts = urlsplit(stream)
    if stream != expected:
        details.append(f"expected {expected}: the gateway behind this URL has another GATEWAY_PUBLIC_URL")
    elif parts.scheme != "wss" and not is_local_host(parts.hostname):
        details.append("Twilio opens only wss:// streams: use the https:// URL of your tunnel as GATEWAY_PUBLIC_URL")
    elif settings.secure and 'name="call_token"' not in text:
        details.append("no call_token parameter: the gateway behind this URL runs without TWILIO_AUTH_TOKEN")
    else:
        return Result("ok", title, details)
    return Result("FAIL", title, details)


def configuration_results(settings: Settings) -> list[Result]:
    out = [Result("ok", "configuration: every setting valid")]
    fast = fast_path()
    refusal = fast_path_refusal(fast)
    out.append(Result("FAIL", "fast path: pure Python, compiled extension missing", [refusal]) if refusal
               else Result("ok", f"fast path: {fast.label}"))
    if settings.secure:
        out.append(Result("ok", "security: Twilio signatures and per-call tokens checked"))
    else:
        out.append(Result("warn", "security: GATEWAY_INSECURE_DEV=1, no signature or call-token checks",
                          ["fine with the simulators; with a real number set TWILIO_AUTH_TOKEN"]))
    out.extend(Result("FAIL" if f.fails_calls else "warn", f.text) for f in findings(settings))
    return out


async def _network(settings: Settings, timeout_s: float) -> list[Result]:
    upstream = await check_upstream(settings, timeout_s)
    return [upstream, *await check_public_url(settings, timeout_s)]


def run_check(timeout_s: float | None = None, out: Any = None) -> int:
    out = out or sys.stdout

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    say("gateway check: is this configuration ready for a real call?")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        for problem in exc.problems:
            say(f"  FAIL  {problem}")
        n = len(exc.problems)
        say(f"result: {n} wrong setting{'s' if n != 1 else ''}; every setting and its allowed values: "
            f"`python -m gateway.config`; {TRY_THE_DEMO}.")
        return 2
    timeout = timeout_s if timeout_s is not None else settings.upstream_connect_timeout_s
    results = configuration_results(settings)
    for result in results:
        for line in result.lines():
            say(line)
    import uvloop

    network = uvloop.run(_network(settings, timeout))
    for result in network:
        for line in result.lines():
            say(line)
    failed = [r for r in results + network if r.status == "FAIL"]
    if failed:
        n = len(failed)
        say(f"result: {n} problem{'s' if n != 1 else ''} (FAIL above): fix before pointing a real number at the "
            f"gateway; {TRY_THE_DEMO}.")
        return 1
    warned = sum(r.status == "warn" for r in results + network)
    if warned:
        say(f"result: nothing wrong, {warned} warning{'s' if warned != 1 else ''} (warn above).")
        return 0
    webhook = settings.public_url.rstrip("/") + VOICE_PATH
    say(f"result: ready. Point the number's voice webhook (A call comes in → Webhook, HTTP POST) at {webhook} "
        "and call it.")
    return 0
