"""Twilio REST API simulator: the Calls resource, linked to the Twilio media simulator.

Serves what the gateway needs to hang up, transfer and place calls (docs/protocols/twilio.md,
"REST Calls resource" and "What the Twilio REST simulator models"):

* ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` — create: ``To``, ``From``, ``Url`` (+ ``Method``)
  or ``Twiml``, ``StatusCallback``… → 201 and the Call resource (``queued``); the call then rings,
  is answered and runs like an inbound one (signed TwiML request with ``Direction=outbound-api``,
  media stream with a ``CallScript``).
* ``POST …/Calls/{CallSid}.json`` — update: ``Status=completed`` hangs up, ``Twiml`` / ``Url``
  redirects; either ends a running ``<Connect><Stream>`` with ``stop`` and close at Twilio time.
* ``GET …/Calls/{CallSid}.json`` — fetch.

HTTP basic auth (Account SID + auth token, or API key SID + secret), Twilio's error JSON, and a
record of every request (``requests``). Point the official ``twilio`` package at :attr:`base_url`
instead of ``https://api.twilio.com``.

    rest = TwilioRestSim(twilio_sim)
    base_url = await rest.start()
    ...
    await rest.stop()
"""
from __future__ import annotations

import asyncio
import binascii
import dataclasses
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from .twilio_record import RestAction
from .twilio_script import CallScript
from .twilio_sim import CallOrigin, TwilioCall, TwilioSim

__all__ = ["DEFAULT_API_KEY_SECRET", "DEFAULT_API_KEY_SID", "RestRequest", "TwilioRestConfig", "TwilioRestSim",
           "dial_targets"]

API_VERSION = "2010-04-01"
DEFAULT_API_KEY_SID = "SK" + "5e1d0b6b0a4c4f6e9b8d7c6a5f4e3d2c"
DEFAULT_API_KEY_SECRET = "sim-api-key-secret"  # noqa: S105 - the simulator's test key, no secret
MAX_TWIML = 4000  # characters (twilio.md#update-a-live-call, error 32018)
_CALL_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls(?:/(?P<sid>[^/]+))?\.json$")
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_FINAL = frozenset(("completed", "busy", "no-answer", "failed", "canceled"))


@dataclass
class TwilioRestConfig:
    """REST simulator settings; account SID and auth token default to the ``TwilioSim``'s."""

    account_sid: str | None = None
    auth_token: str | None = None
    api_keys: dict[str, str] = field(default_factory=lambda: {DEFAULT_API_KEY_SID: DEFAULT_API_KEY_SECRET})
    default_script: CallScript = field(default_factory=lambda: CallScript(duration_ms=10_000))
    scripts: Mapping[str, CallScript] = field(default_factory=dict)  # Calls.create: callee script by To
    answers: Mapping[str, str] = field(default_factory=dict)  # To -> busy | no-answer | failed (else answered)
    ring_ms: float = 0.0  # Calls.create: ringing before the callee answers
    end_delay_ms: float = 0.0  # REST update -> the stream ends at Twilio (Twilio time), after what played
    numbers: tuple[str, ...] | None = None  # the account's caller IDs for From; None accepts any
    fetch_redirect_url: bool = True  # an update with Url: request it (signed) for the new TwiML


@dataclass
class RestRequest:
    """One request the REST simulator received and what it answered."""

    time: float  # loop time
    method: str
    path: str
    form: dict[str, str]  # last value of each form field
    form_multi: dict[str, list[str]]  # every value (StatusCallbackEvent repeats)
    auth_user: str | None  # the basic-auth user name (Account SID or API key SID)
    status: int = 0
    response: dict[str, Any] | None = None
    call_sid: str | None = None

    @property
    def error_code(self) -> int | None:
        return self.response.get("code") if self.response and self.status >= 400 else None


class _Error(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def dial_targets(root: ET.Element) -> list[str]:
    """The ``<Dial>`` targets of a TwiML document: numbers as given, ``sip:…``, ``client:…``."""
    out: list[str] = []
    for dial in root.iter("Dial"):
        nouns = list(dial)
        if not nouns and (dial.text or "").strip():
            out.append((dial.text or "").strip())
        for noun in nouns:
            text = (noun.text or "").strip()
            if noun.tag == "Client":
                identity = noun.find("Identity")
                text = (identity.text or "").strip() if identity is not None else text
                out.append(f"client:{text}")
            elif noun.tag in ("Number", "Sip"):
                out.append(text)
            elif noun.tag in ("Conference", "Queue"):
                out.append(f"{noun.tag.lower()}:{text}")
    return out


class TwilioRestSim:
    """The REST API of the simulated Twilio account; calls are the linked ``TwilioSim``'s."""

    def __init__(self, twilio: TwilioSim, config: TwilioRestConfig | None = None) -> None:
        self.twilio = twilio
        self.config = config or TwilioRestConfig()
        self.account_sid = self.config.account_sid or twilio.config.account_sid
        self.auth_token = self.config.auth_token or twilio.config.auth_token
        self.requests: list[RestRequest] = []
        self.created: list[str] = []  # CallSids placed through Calls.create, in order
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def api_key_sid(self) -> str:
        return next(iter(self.config.api_keys))

    @property
    def api_key_secret(self) -> str:
        return self.config.api_keys[self.api_key_sid]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the base URL that replaces ``https://api.twilio.com``."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def call(self, call_sid: str) -> TwilioCall | None:
        return self.twilio.calls.get(call_sid)

    # ---------------------------------------------------------------- HTTP

    async def _handle(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        form_multi: dict[str, list[str]] = {}
        if request.method == "POST":
            for key, value in (await request.post()).items():
                form_multi.setdefault(key, []).append(str(value))
        record = RestRequest(loop.time(), request.method, request.path, {k: v[-1] for k, v in form_multi.items()},
                             form_multi, None)
        self.requests.append(record)
        headers = {"Twilio-Request-Id": "RQ" + secrets.token_hex(16)}
        try:
            record.auth_user = self._authenticate(request)
            status, body = self._route(request, record)
        except _Error as exc:
            status = exc.status
            body = {"code": exc.code, "message": exc.message,
                    "more_info": f"https://www.twilio.com/docs/errors/{exc.code}", "status": exc.status}
            if exc.code == 20003:
                headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        record.status, record.response = status, body
        return web.json_response(body, status=status, headers=headers)

    def _authenticate(self, request: web.Request) -> str:
        """HTTP basic auth: Account SID + auth token, or API key SID + secret (twilio.md#rest-calls-resource)."""
        header = request.headers.get("Authorization", "")
        user = password = None
        if header[:6].lower() == "basic ":
            try:
                user, _, password = binascii.a2b_base64(header[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user = None
        match = _CALL_PATH.match(request.path)
        ok = (user == self.account_sid and password == self.auth_token) or (
            user in self.config.api_keys and password == self.config.api_keys[user])
        if not ok or (match is not None and match["account"] != self.account_sid):
            raise _Error(401, 20003, "Authenticate")
        assert user is not None  # ok
        return user

    def _route(self, request: web.Request, record: RestRequest) -> tuple[int, dict[str, Any]]:
        match = _CALL_PATH.match(request.path)
        if match is None or request.method not in ("GET", "POST"):
            if match is not None and request.method == "DELETE":
                raise _Error(405, 20004, "Method not allowed")
            raise _Error(404, 20404, f"The requested resource {request.path} was not found")
        sid = match["sid"]
        if sid is None:
            if request.method != "POST":
                raise _Error(405, 20004, "Method not allowed")  # listing calls is not modelled
            return 201, self._create(record)
        call = self.twilio.calls.get(sid)
        if call is None:
            raise _Error(404, 20404, f"The requested resource {request.path} was not found")
        record.call_sid = sid
        if request.method == "GET":
            return 200, self.resource(call)
        return 200, self._update(call, record)

    # ---------------------------------------------------------------- Calls resource

    def resource(self, call: TwilioCall) -> dict[str, Any]:
        """The Call resource JSON (twilio.md#rest-calls-resource), as Twilio shows it now."""
        rec = call.record
        uri = f"/{API_VERSION}/Accounts/{rec.account_sid}/Calls/{rec.call_sid}"
        duration = call.duration_s
        return {
            "account_sid": rec.account_sid, "annotation": None, "answered_by": None, "api_version": API_VERSION,
            "caller_name": None, "date_created": _rfc2822(call.created_at),
            "date_updated": _rfc2822(call.ended_at_wall or call.answered_at or call.created_at),
            "direction": rec.direction, "duration": None if duration is None else str(duration),
            "end_time": _rfc2822(call.ended_at_wall), "forwarded_from": None, "from": rec.from_,
            "from_formatted": rec.from_, "group_sid": None, "parent_call_sid": None, "phone_number_sid": None,
            "price": None, "price_unit": "USD", "queue_time": "0", "sid": rec.call_sid,
            "start_time": _rfc2822(call.answered_at), "status": rec.status,
            "subresource_uris": {name: f"{uri}/{name.title().replace('_', '')}.json"
                                 for name in ("notifications", "recordings", "payments", "events", "siprec",
                                              "streams", "transcriptions")},
            "to": rec.to, "to_formatted": rec.to, "trunk_sid": None, "uri": f"{uri}.json",
        }

    def _create(self, record: RestRequest) -> dict[str, Any]:
        """Calls.create (twilio.md#create-an-outbound-call): validate, place the call, answer 201 queued."""
        form, cfg = record.form, self.config
        to, from_ = form.get("To", ""), form.get("From", "")
        if not to:
            raise _Error(400, 21201, "No 'To' number is specified")
        if not from_:
            raise _Error(400, 21213, "No 'From' number is specified")
        if not (_E164.match(to) or to.startswith(("sip:", "client:"))):
            raise _Error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if cfg.numbers is not None and from_ not in cfg.numbers:
            raise _Error(400, 21210, f"The source phone number provided, {from_}, is not yet verified for "
                         "your account. You may only make calls from phone numbers that you've verified or "
                         "purchased from Twilio.")
        url, twiml = form.get("Url"), form.get("Twiml")
        if url is None and twiml is None and "ApplicationSid" not in form:
            raise _Error(400, 21205, "Url parameter is required.")
        if "ApplicationSid" in form:
            raise _Error(400, 21218, "Invalid ApplicationSid")  # applications are not modelled
        method = self._method(form, "Method")
        if url is not None:
            _check_url(url)
            twiml = None  # "If both twiml and url are provided then twiml parameter will be ignored" (doc)
        elif twiml is not None and len(twiml) > MAX_TWIML:
            raise _Error(400, 32018, f"Twiml must be {MAX_TWIML} characters or fewer")
        callback = form.get("StatusCallback")
        if callback is not None:
            _check_url(callback)
        events = frozenset(e for v in record.form_multi.get("StatusCallbackEvent", []) for e in v.split()) \
            or frozenset({"completed"})
        origin = CallOrigin(direction="outbound-api", url=url, method=method, twiml=twiml,
                            ring_s=cfg.ring_ms / 1000, answer=cfg.answers.get(to, "in-progress"),
                            status_callback=callback, status_callback_method=self._method(form, "StatusCallbackMethod"),
                            status_callback_events=events)
        script = dataclasses.replace(cfg.scripts.get(to, cfg.default_script), caller=from_, called=to)
        call = self.twilio.start_call_from(origin, script, _new_sid())
        record.call_sid = call.record.call_sid
        self.created.append(call.record.call_sid)
        return self.resource(call)

    def _update(self, call: TwilioCall, record: RestRequest) -> dict[str, Any]:
        """Calls update (twilio.md#update-a-live-call): hang up, cancel or redirect."""
        form, rec = record.form, call.record
        status, twiml, url = form.get("Status"), form.get("Twiml"), form.get("Url")
        if status is not None and status not in ("completed", "canceled"):
            raise _Error(400, 20001, f"Invalid Status: {status}. Status must be 'canceled' or 'completed'.")
        if twiml is not None and url is not None:
            raise _Error(400, 20001, "Twiml and Url are mutually exclusive")
        method = self._method(form, "Method")
        if url is not None:
            _check_url(url)
        if twiml is not None and len(twiml) > MAX_TWIML:
            raise _Error(400, 32018, f"Twiml must be {MAX_TWIML} characters or fewer")
        if "StatusCallback" in form:
            _check_url(form["StatusCallback"])
            call.status_callback = (form["StatusCallback"], self._method(form, "StatusCallbackMethod"),
                                    frozenset({"completed"}))
        if rec.status in _FINAL:
            raise _Error(400, 21220, "Call is not in-progress. Cannot redirect.")
        now = asyncio.get_running_loop().time()
        delay = self.config.end_delay_ms / 1000
        ringing = rec.status in ("queued", "ringing")
        if status is not None:
            if ringing:
                rec.rest_actions.append(RestAction(now, "cancel"))
                call.end_by_rest("cancel")
                return {**self.resource(call), "status": "canceled"}
            if status == "canceled":  # only for calls not answered yet: no effect on a call in progress
                return self.resource(call)
            action = RestAction(now, "hangup")
            rec.rest_actions.append(action)
            action.effect_at = call.end_by_rest("rest", delay)
            return {**self.resource(call), "status": "completed"}
        if twiml is None and url is None:
            return self.resource(call)
        if ringing:
            raise _Error(400, 21220, "Call is not in-progress. Cannot redirect.")
        action = RestAction(now, "redirect", twiml=twiml, url=url, method=method if url else None)
        rec.rest_actions.append(action)
        if twiml is not None:
            _parse_into(action, twiml)
        elif self.config.fetch_redirect_url:
            task = asyncio.get_running_loop().create_task(self._fetch(call, action))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        action.effect_at = call.end_by_rest("redirect", delay)
        return self.resource(call)

    async def _fetch(self, call: TwilioCall, action: RestAction) -> None:
        """The redirect's new TwiML, requested the way Twilio requests any voice URL (signed)."""
        assert action.url is not None and action.method is not None  # a Url redirect
        try:
            status, body = await self.twilio._request(action.method, action.url, call.call_params("in-progress"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            action.error = f"11200: request failed: {exc!r}"
            return
        if status != 200:
            action.error = f"11200: HTTP {status}"
            return
        _parse_into(action, body)

    @staticmethod
    def _method(form: Mapping[str, str], key: str) -> str:
        method = form.get(key, "POST").upper()
        if method not in ("GET", "POST"):
            raise _Error(400, 20001, f"{key} must be GET or POST")
        return method


def _parse_into(action: RestAction, twiml: str) -> None:
    action.twiml = twiml
    try:
        root = ET.fromstring(twiml)  # noqa: S314 - TwiML from the gateway under test, on loopback
    except ET.ParseError as exc:
        action.error = f"12100: TwiML parse error: {exc}"
        return
    if root.tag != "Response":
        action.error = f"12100: TwiML root is <{root.tag}>"
        return
    action.dial = dial_targets(root)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Error(400, 21205, f"Url is not a valid URL: {url}")


def _new_sid() -> str:
    return "CA" + secrets.token_hex(16)


def _rfc2822(when: datetime | None) -> str | None:
    return None if when is None else format_datetime(when)
