"""Twilio simulator: plays Twilio's side of phone calls against the gateway (docs/protocols/twilio.md).

One call = signed voice webhook POST -> TwiML -> signed WebSocket upgrade to ``<Stream url>`` ->
``connected``, ``start``, a ``media`` frame every 20 ms of caller audio (``CallScript``) -> ``stop`` and
close. Outbound ``media``/``mark``/``clear`` are validated exactly (twilio.md#messages-to-twilio) and
played out in continuous time at 8 bytes/ms; marks are echoed when the playhead passes them or a clear flushes them.

Time model: the simulator's clock is the Twilio media server's. A message from the gateway takes
effect ``latency ± jitter`` after it reaches the socket; a message to the gateway is written
``latency ± jitter`` after Twilio produced it; both directions stay FIFO (TCP). Each call runs on one
re-armed ``loop.call_at`` timer against absolute times (no per-frame tasks, no sleep drift); lateness
is recorded in ``CallRecord.max_lag_ms`` / ``late_sends``. Stdlib base64/binascii, orjson and
audioop only (not ``_fastpath``), so the simulator checks the gateway independently.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import random
import socket
import ssl
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import aiohttp
import orjson
import picows
from picows import WSCloseCode, WSListener, WSMsgType, WSTransport

from ..twilio.signature import compute_signature
from .twilio_record import (
    CallRecord,
    ClearRecord,
    DtmfSent,
    HeardChunk,
    MarkEcho,
    Outcome,
    Received,
    TurnStart,
)
from .twilio_script import DTMF_DIGITS, FRAME_BYTES, POOL_FRAMES, SILENCE_FRAME, CallScript, Dtmf, Turn, speech_pool

__all__ = ["CallOrigin", "CallRecord", "CallScript", "Dtmf", "Outcome", "Turn", "TwilioCall", "TwilioSim",
           "TwilioSimConfig"]

SUBPROTOCOL = "audio.twilio.com"
_INF = float("inf")
_BPS = 8000.0  # μ-law bytes per second
_FRAME_S = 0.020
_SILENCE_B64 = base64.b64encode(SILENCE_FRAME)
_CLOSE_WAIT_S = 2.0  # after our close frame, wait this long for the gateway's reply
_MEDIA_KEYS = frozenset(("event", "streamSid", "media"))
_MARK_KEYS = frozenset(("event", "streamSid", "mark"))
_CLEAR_KEYS = frozenset(("event", "streamSid"))
_MEDIA, _MARK, _CLEAR = 0, 1, 2  # inbound queue kinds
_STOP = object()  # out-queue tag: close the socket right after this message
_ABORT = object()  # out-queue tag: drop the connection (after what was already in flight)
_CLOSE = object()  # out-queue tag: send a close frame (no message)
RUN_GAP_S = 0.3  # an empty buffer this long (or a clear) ends a playback run; shorter underruns don't


@dataclass
class TwilioSimConfig:
    """Simulator settings shared by all calls of one ``TwilioSim``."""

    webhook_url: str  # public URL Twilio POSTs, e.g. "https://gw.example.com/twilio/voice" (signed as-is)
    # Where to really send HTTP/WS: a base URL ("http://127.0.0.1:8080") replacing scheme+host of
    # every public URL (path/query kept, http->ws, https->wss), or {public netloc: base URL}.
    # The public Host header is kept. None = use URLs as given.
    connect_to: str | Mapping[str, str] | None = None
    auth_token: str = "sim-auth-token"  # noqa: S105 - the simulator's default test token, no secret
    account_sid: str = "AC5e1d0b6b0a4c4f6e9b8d7c6a5f4e3d2c"
    latency_ms: float = 40.0  # one-way gateway<->Twilio latency, both directions
    jitter_ms: float = 10.0  # uniform ± per message, FIFO order preserved
    offer_subprotocol: bool = False  # offer Sec-WebSocket-Protocol: audio.twilio.com
    sign_websocket: bool = True  # send X-Twilio-Signature on the upgrade
    seed: int = 0
    ssl_context: ssl.SSLContext | None = None
    record_payloads: bool = True  # keep audio/raw frames in records (turn off for big load runs)
    timeout_s: float = 15.0  # webhook / connect / handshake timeout (Twilio's webhook limit)
    # A REST update (hang-up or redirect) ends the stream with `stop` then close (obs, unconfirmed);
    # False: Twilio just closes the socket.
    rest_end_sends_stop: bool = True
    rcvbuf_bytes: int = 0  # SO_RCVBUF of media sockets (0 = the kernel's); tests of a stalled reader


@dataclass(frozen=True)
class CallOrigin:
    """Where a call comes from and where its TwiML comes from.

    Inbound (default): Twilio POSTs ``TwilioSimConfig.webhook_url``. Outbound (``Calls.create``):
    ``direction="outbound-api"``, TwiML from ``twiml`` or fetched from ``url`` with ``method`` once the
    callee answers (after ``ring_s``); ``answer`` is what the callee does: "in-progress" (answers),
    "busy", "no-answer" or "failed". ``status_callback`` gets the call's status events.
    """

    direction: str = "inbound"
    url: str | None = None  # None: TwilioSimConfig.webhook_url
    method: str = "POST"
    twiml: str | None = None
    ring_s: float = 0.0
    answer: str = "in-progress"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_callback_events: frozenset[str] = field(default_factory=lambda: frozenset({"completed"}))


class TwilioSim:
    """Places simulated Twilio calls; use as ``async with TwilioSim(cfg) as sim``."""

    def __init__(self, config: TwilioSimConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._session: aiohttp.ClientSession | None = None
        self.calls: dict[str, TwilioCall] = {}  # every call started, by CallSid (what the REST API sees)

    async def __aenter__(self) -> TwilioSim:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP client (calls in progress are not affected)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def start_call(self, script: CallScript, call_sid: str | None = None) -> TwilioCall:
        """Start an inbound call in the background and return its live handle (``await call.wait()``)."""
        return self.start_call_from(CallOrigin(), script, call_sid)

    def start_call_from(self, origin: CallOrigin, script: CallScript, call_sid: str | None = None) -> TwilioCall:
        """Start a call of any origin (``Calls.create`` uses an outbound-api one)."""
        rng = random.Random(self._rng.getrandbits(64))
        call = TwilioCall(self, script, call_sid or f"CA{rng.getrandbits(128):032x}", rng, origin=origin)
        self.calls[call.record.call_sid] = call
        call.task = asyncio.get_running_loop().create_task(call._run())
        return call

    async def place_call(self, script: CallScript, call_sid: str | None = None) -> CallRecord:
        """Run one whole call and return what it observed."""
        return await self.start_call(script, call_sid).wait()

    def _route(self, url: str) -> tuple[str, str | None]:
        """(URL to really connect to, public netloc for the Host header if rerouted)."""
        target = self.config.connect_to
        parts = urlsplit(url)
        if isinstance(target, Mapping):
            target = target.get(parts.netloc, target.get(parts.hostname or ""))
        if target is None:
            return url, None
        base = urlsplit(target)
        scheme = base.scheme
        if parts.scheme in ("ws", "wss"):
            scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
        return urlunsplit((scheme, base.netloc, parts.path, parts.query, "")), parts.netloc

    async def _request(self, method: str, public_url: str, params: dict[str, str]) -> tuple[int, str]:
        """A signed Twilio webhook request (form POST, or GET with params in the query)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=self.config.ssl_context or True),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        if method == "GET":
            public_url += ("&" if "?" in public_url else "?") + urlencode(params)
            signature = compute_signature(self.config.auth_token, public_url)
        else:
            signature = compute_signature(self.config.auth_token, public_url, params)
        url, host = self._route(public_url)
        headers = {"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1", "Accept": "*/*"}
        kwargs: dict[str, Any] = {}
        if host is not None:
            headers["Host"] = host
            if url.startswith("https:"):
                kwargs["server_hostname"] = urlsplit(public_url).hostname
        async with self._session.request(method, url, headers=headers,
                                         data=params if method == "POST" else None, **kwargs) as resp:
            return resp.status, await resp.text()


class TwilioCall(WSListener):
    """One call in progress: the live handle tests poke at, and the picows listener of its socket.

    ``record`` fills in as the call runs; ``await wait()`` returns it when the call is over.
    """

    def __init__(self, sim: TwilioSim, script: CallScript, call_sid: str, rng: random.Random, *,
                 origin: CallOrigin | None = None) -> None:
        super().__init__()
        cfg = sim.config
        self.sim, self.script = sim, script
        self.origin = origin or CallOrigin()
        self.task: asyncio.Task[CallRecord] | None = None  # set by TwilioSim.start_call
        inbound = self.origin.direction == "inbound"
        self.record = CallRecord(call_sid=call_sid, account_sid=cfg.account_sid, direction=self.origin.direction,
                                 from_=script.caller, to=script.called, status="ringing" if inbound else "queued")
        self._init_rest_state()
        self._loop = asyncio.get_running_loop()
        self._rng = rng
        self._keep = cfg.record_payloads
        self._lat = cfg.latency_ms / 1000
        self._jit = cfg.jitter_ms / 1000
        self._transport: WSTransport | None = None
        self._done = self._loop.create_future()
        self._started = self._loop.create_future()
        self._error: BaseException | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._wake_at = _INF
        self._close_handle: asyncio.TimerHandle | None = None
        self._callbacks: list[asyncio.Task[None]] = []
        self._status_cb: tuple[str, str, str | None] | None = None  # (url, method, StreamName)
        self._fragments: bytearray | None = None
        self._fragments_binary = False
        self._paused = False
        # model state (Twilio time); see _advance
        self._running = False  # stream started and the model not finished
        self._dead = False  # socket gone: nothing more can be sent
        self._sid = ""
        self._t0 = 0.0
        self._seq = 0
        self._k = 0  # next frame index
        self._n_frames = 0
        self._next_gen = _INF
        self._fjit = 0.0  # jitter pre-drawn for the next frame, so its wake-up time is known
        self._end_at = _INF
        self._end_kind = "hangup"  # how the call ends at _end_at: hangup | abort | rest | redirect
        self._dtmf_q: deque[tuple[float, str]] = deque()  # (Twilio time, key) of scripted presses
        self._media_tmpl = b""
        self._outq: deque[tuple[float, bytes | str, object, bool]] = deque()  # (due, data, tag, binary)
        self._last_out = 0.0
        self._inq: deque[tuple[float, int, object]] = deque()  # (effect time, kind, HeardChunk|MarkEcho|ClearRecord)
        self._last_in = 0.0
        self._pending: deque[tuple[float, MarkEcho]] = deque()  # (play time, mark)
        self._play_end = -_INF  # when the buffered audio runs out
        self._seg_start: float | None = None  # start of the latest contiguous playout segment
        self._acc = 0.0  # seconds played before that segment
        self._run_id = 0  # playback runs so far (a run = segments separated by < RUN_GAP_S)
        self._run_p0 = 0.0  # seconds played before the current run
        self._run_over = True  # a clear ended the run: the next audio starts a new one
        self._applied = 0  # heard[:_applied] reached the buffer
        self._live = 0  # heard[_live:_applied] may still be playing
        self._turns = tuple(script.turns)
        self._turn_i = 0
        self._armed = 0.0
        self._arm_run = 1  # the armed turn counts heard audio in this run or a later one
        self._speak_end: float | None = None
        # (start byte, end byte, speech_pool(): frames and their base64)
        self._speech: deque[tuple[int, int, tuple[tuple[bytes, ...], tuple[bytes, ...]]]] = deque()

    def _init_rest_state(self) -> None:
        """What the REST API shows of the call, and its call status callback."""
        self.created_at = datetime.now(UTC)  # wall clock, for the REST resource's dates
        self.answered_at: datetime | None = None
        self.ended_at_wall: datetime | None = None
        origin = self.origin
        self.status_callback: tuple[str, str, frozenset[str]] | None = (
            (origin.status_callback, origin.status_callback_method, origin.status_callback_events)
            if origin.status_callback else None)
        self._status_seq = 0
        self._pending_end: str | None = None  # a REST update that arrived before the stream ran

    # ---------------------------------------------------------------- public live-call API

    async def wait(self) -> CallRecord:
        """Wait for the end of the call; re-raises simulator/listener errors."""
        if self.task is None:
            raise RuntimeError("the call was not started: use TwilioSim.start_call")
        return await asyncio.shield(self.task)

    async def wait_started(self) -> bool:
        """True once ``start`` has been produced; False if the call ended without a stream."""
        return await asyncio.shield(self._started)

    def send_raw(self, data: bytes | str) -> None:
        """Send arbitrary data to the gateway (``bytes`` = binary frame) in order with the stream,
        after the usual latency. No sequence number is consumed. For hostile-input tests."""
        self._inject(lambda now: self._emit(now, data, None, not isinstance(data, str)))

    def send_dtmf(self, digit: str) -> None:
        """The caller presses ``digit`` now: a ``dtmf`` event (twilio.md#message-shapes)."""
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            raise ValueError(f"one DTMF key (0-9, *, #) per message: {digit!r}")
        self._inject(lambda now: self._emit_dtmf(now, digit))

    def stop_reading(self) -> None:
        """Failure injection: this Twilio media server stops reading the gateway's messages (its
        socket buffer fills up) while it keeps sending caller audio."""
        if self._transport is not None:
            self._transport.underlying_transport.pause_reading()

    def hangup(self) -> None:
        """The caller hangs up now: ``stop`` then close."""
        def end(now: float) -> None:
            self._end_at, self._end_kind = now, "hangup"
            self._advance(now)
        self._inject(end)

    @property
    def running(self) -> bool:
        """The media stream is up (started and not ended)."""
        return self._running

    def end_by_rest(self, kind: str, delay_s: float = 0.0) -> float | None:
        """A REST update ends the stream ``delay_s`` from now, in Twilio time (``kind``: "rest" for a
        hang-up, "redirect" for new TwiML): audio already buffered plays until then, then ``stop`` and
        close. Returns that Twilio time, or None if no stream is running (the call then ends or is
        redirected as soon as its setup finishes)."""
        if not self._running:
            if self._pending_end is None:
                self._pending_end = kind
            return None
        at = self._loop.time() + delay_s

        def end(_now: float) -> None:
            if at < self._end_at:
                self._end_at, self._end_kind = at, kind
        self._inject(end)
        return min(at, self._end_at)  # an earlier end (the caller hanging up) wins

    def _emit_dtmf(self, t: float, digit: str) -> None:
        self.record.dtmf.append(DtmfSent(t, digit))
        self._seq += 1
        self._emit(t, orjson.dumps({
            "event": "dtmf", "streamSid": self._sid, "sequenceNumber": str(self._seq),
            "dtmf": {"track": "inbound_track", "digit": digit}}))

    def _inject(self, action: Callable[[float], None]) -> None:
        if not self._running:
            raise RuntimeError("the stream is not running")
        now = self._loop.time()
        self._advance(now)
        action(now)
        self._flush(now)
        self._schedule_next()

    # ---------------------------------------------------------------- call setup

    async def _run(self) -> CallRecord:
        try:
            if await self._ring():
                stream = await self._webhook()
                transport = None
                if stream is not None and not self._end_if_pending():
                    transport = await self._connect(stream)
                if transport is not None and self._end_if_pending():  # a REST update while connecting
                    transport.disconnect()
                    await transport.wait_disconnected()
                elif transport is not None:
                    self._begin()
                    await self._done
                    await transport.wait_disconnected()  # re-raises listener exceptions
            else:
                self._end_if_pending()
        finally:
            self._stop_timers()
            if self._transport is not None and not self._transport.is_disconnected:
                self._transport.disconnect(False)
            if not self._started.done():
                self._started.set_result(False)
            self._call_over()
            if self._callbacks:
                await asyncio.gather(*self._callbacks, return_exceptions=True)
        if self._error is not None:
            raise self._error
        return self.record

    async def _ring(self) -> bool:
        """An outbound call rings (``origin.ring_s``) and is answered or not; True: go on with the TwiML."""
        if self.origin.direction == "inbound":
            return self._pending_end is None
        self._call_status("queued")
        await asyncio.sleep(0)  # the REST answer (201 queued) goes out before anything else happens
        self._call_status("ringing")
        if self.origin.ring_s > 0:
            await asyncio.sleep(self.origin.ring_s)
        if self._pending_end is not None:
            return False
        if self.origin.answer != "in-progress":
            self.record.outcome = Outcome.NOT_ANSWERED
            self.record.status = self.origin.answer
            return False
        return True

    def _end_if_pending(self) -> bool:
        """Apply a REST update that came before the stream ran; True if the call is over."""
        kind = self._pending_end
        if kind is None:
            return False
        if self.record.status in ("queued", "ringing"):
            self.record.outcome, self.record.status = Outcome.CANCELED, "canceled"
        else:
            self.record.outcome = Outcome.REDIRECTED if kind == "redirect" else Outcome.REST_COMPLETED
        return True

    def _call_status(self, status: str) -> None:
        """The call reaches ``status``: record it and send the call status callback if one asks for it
        (twilio.md#call-status-callback)."""
        rec = self.record
        rec.status = status
        if status == "in-progress":
            self.answered_at = datetime.now(UTC)
        elif status not in ("queued", "ringing"):
            self.ended_at_wall = datetime.now(UTC)
        if self.status_callback is None:
            return
        url, method, events = self.status_callback
        event = {"queued": "initiated", "ringing": "ringing", "in-progress": "answered"}.get(status, "completed")
        if event not in events:
            return
        params = {"AccountSid": rec.account_sid, "ApiVersion": "2010-04-01", "CallSid": rec.call_sid,
                  "CallStatus": status, "Called": rec.to, "Caller": rec.from_, "Direction": rec.direction,
                  "From": rec.from_, "To": rec.to, "CallbackSource": "call-progress-events",
                  "SequenceNumber": str(self._status_seq),
                  "Timestamp": format_datetime(datetime.now(UTC), usegmt=False)}
        self._status_seq += 1
        if event == "completed":
            params["CallDuration"] = str(self.duration_s or 0)

        async def post() -> None:
            try:
                code, _ = await self.sim._request(method, url, params)
            except (TimeoutError, aiohttp.ClientError, OSError):
                code = None
            rec.call_status_callbacks.append((status, code))
        self._callbacks.append(self._loop.create_task(post()))

    @property
    def duration_s(self) -> int | None:
        """Whole seconds from answer to end (None while in progress or if never answered)."""
        if self.answered_at is None or self.ended_at_wall is None:
            return None
        return int((self.ended_at_wall - self.answered_at).total_seconds())

    def _call_over(self) -> None:
        """The call's final status (once): completed if it was answered, else why not."""
        rec = self.record
        if rec.status not in ("queued", "ringing", "in-progress"):
            return
        final = {Outcome.REJECTED_BUSY: "busy", Outcome.REJECTED: "no-answer", Outcome.CANCELED: "canceled"}.get(
            rec.outcome)
        if final is None:
            final = "completed" if rec.status == "in-progress" else "failed"
        self._call_status(final)

    def _fail_setup(self, outcome: Outcome, code: int, detail: str) -> None:
        self.record.outcome = outcome
        self.record.violations.append((code, detail))

    def call_params(self, status: str) -> dict[str, str]:
        """The standard parameters of Twilio's voice requests for this call."""
        cfg, rec = self.sim.config, self.record
        return {"AccountSid": cfg.account_sid, "ApiVersion": "2010-04-01", "CallSid": rec.call_sid,
                "CallStatus": status, "Called": rec.to, "Caller": rec.from_, "Direction": rec.direction,
                "From": rec.from_, "FromCountry": "US", "To": rec.to, "ToCountry": "US"}

    async def _webhook(self) -> ET.Element | None:
        """Get the call's TwiML (the voice webhook, or the TwiML given to Calls.create) and return the
        <Stream> element to follow (None: call over)."""
        cfg, rec, origin = self.sim.config, self.record, self.origin
        if origin.twiml is not None:
            body = origin.twiml
        else:
            inbound = origin.direction == "inbound"
            params = {**self.call_params("ringing" if inbound else "in-progress"), **self.script.extra_params}
            try:
                status, body = await self.sim._request(origin.method, origin.url or cfg.webhook_url, params)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self._fail_setup(Outcome.WEBHOOK_FAILED, 11200, f"webhook request failed: {exc!r}")
                return None
            rec.http_status = status
            if status != 200:
                rec.twiml = body
                self._fail_setup(Outcome.WEBHOOK_FAILED, 11200, f"webhook returned HTTP {status}")
                return None
        rec.twiml = body
        try:
            root = ET.fromstring(body)  # noqa: S314 - TwiML of the gateway under test, on loopback
        except ET.ParseError as exc:
            self._fail_setup(Outcome.WEBHOOK_FAILED, 12100, f"TwiML parse error: {exc}")
            return None
        if root.tag != "Response":
            self._fail_setup(Outcome.WEBHOOK_FAILED, 12100, f"TwiML root is <{root.tag}>")
            return None
        verbs = list(root)
        for i, verb in enumerate(verbs):  # verbs before <Connect> (<Say>, <Pause>…) take no time here
            if verb.tag == "Reject":
                busy = verb.get("reason") == "busy"
                rec.outcome = Outcome.REJECTED_BUSY if busy else Outcome.REJECTED
                return None
            if i == 0:
                self._call_status("in-progress")  # any other first verb answers the call
            if verb.tag == "Hangup":
                break
            stream = verb.find("Stream") if verb.tag == "Connect" else None
            if stream is not None:
                rec.after_connect = [v.tag for v in verbs[i + 1:]]
                if verb.get("action"):
                    rec.after_connect.append(f"action={verb.get('action')}")
                return stream
        if not verbs:
            self._call_status("in-progress")
        rec.outcome = Outcome.NO_STREAM
        return None

    async def _connect(self, stream: ET.Element) -> WSTransport | None:
        """Open the media WebSocket the way Twilio does (twilio.md#the-media-websocket-upgrade); None if that failed."""
        cfg, rec = self.sim.config, self.record
        url = stream.get("url") or ""
        base = self.origin.url or cfg.webhook_url
        if url and not urlsplit(url).scheme:  # relative to the URL the TwiML came from
            url = urlunsplit(("wss", *urlsplit(urljoin(base, url))[1:]))
        parts = urlsplit(url)
        if parts.scheme != "wss":
            self._fail_setup(Outcome.HANDSHAKE_FAILED, 31922, f"<Stream url> must be wss: {url!r}")
            return None
        if parts.query:
            rec.violations.append((31920, f"query string in <Stream url> not supported, dropped: {url}"))
            url = urlunsplit(parts._replace(query="", fragment=""))
        track = stream.get("track")
        if track not in (None, "inbound_track"):
            self._fail_setup(Outcome.HANDSHAKE_FAILED, 31941, f"track={track!r} on <Connect><Stream>")
            return None
        rec.stream_url = url
        rec.custom_parameters = {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}
        if stream.get("statusCallback"):
            self._status_cb = (urljoin(base, stream.get("statusCallback")),
                               (stream.get("statusCallbackMethod") or "POST").upper(), stream.get("name"))
        headers = {"User-Agent": "Twilio.TmeWs/1.0"}
        if cfg.sign_websocket:
            headers["X-Twilio-Signature"] = compute_signature(cfg.auth_token, url)
        if cfg.offer_subprotocol:
            headers["Sec-WebSocket-Protocol"] = SUBPROTOCOL
        target, host = self.sim._route(url)
        kwargs: dict[str, Any] = {}
        if host is not None:
            headers["Host"] = host
            if target.startswith("wss:"):
                kwargs["server_hostname"] = parts.hostname
        if cfg.rcvbuf_bytes:  # small windows make a media server that stops reading felt in seconds
            kwargs["socket_factory"] = _small_window_socket(cfg.rcvbuf_bytes)
        try:
            transport, _ = await asyncio.wait_for(picows.ws_connect(
                lambda: self, target, ssl_context=cfg.ssl_context, extra_headers=headers,
                websocket_handshake_timeout=cfg.timeout_s, max_redirects=0, **kwargs), cfg.timeout_s)
        except picows.WSHandshakeError as exc:
            rec.http_status = int(exc.response.status) if exc.response is not None else None
            self._fail_setup(Outcome.HANDSHAKE_FAILED, 31920, f"upgrade failed: {exc}")
            return None
        except TimeoutError:
            rec.http_status = None
            self._fail_setup(Outcome.HANDSHAKE_FAILED, 31901, "WebSocket connection timeout")
            return None
        except OSError as exc:
            rec.http_status = None
            self._fail_setup(Outcome.HANDSHAKE_FAILED, 31920, f"cannot connect: {exc!r}")
            return None
        self._transport = transport
        response: Any = transport.response  # typed as always set, but None if the peer left mid-upgrade
        if response is None:
            rec.http_status = None
            self._fail_setup(Outcome.HANDSHAKE_FAILED, 31920, "upgrade failed: no response")
            return None
        selected = response.headers.get("Sec-WebSocket-Protocol")
        if selected is not None and not (cfg.offer_subprotocol and selected == SUBPROTOCOL):
            self._fail_setup(Outcome.HANDSHAKE_FAILED, 31920, f"server selected subprotocol {selected!r}, not offered")
            transport.disconnect()
            await transport.wait_disconnected()
            return None
        rec.subprotocol = selected
        return transport

    def _begin(self) -> None:
        """Stream start: ``connected`` + ``start`` now, then media frames on the 20 ms grid."""
        now = self._loop.time()
        rec, cfg, script = self.record, self.sim.config, self.script
        self._sid = rec.stream_sid = f"MZ{self._rng.getrandbits(128):032x}"
        self._t0 = rec.stream_started_at = now
        self._media_tmpl = (b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound",'
                            b'"chunk":"%d","timestamp":"%d","payload":"%b"},"streamSid":"'
                            + self._sid.encode() + b'"}')
        self._n_frames = script.duration_ms // 20
        self._next_gen = now + _FRAME_S
        self._fjit = self._draw()
        self._end_at = now + script.duration_ms / 1000
        if script.hangup_at_ms is not None and script.hangup_at_ms < script.duration_ms:
            self._end_at, self._end_kind = now + script.hangup_at_ms / 1000, "abort"
        self._dtmf_q = deque(sorted((now + ms / 1000, key) for press in script.dtmf for ms, key in press.presses()))
        self._arm(now)
        self._running = True
        self._emit(now, b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self._seq = 1
        self._emit(now, orjson.dumps({
            "event": "start", "sequenceNumber": "1",
            "start": {"accountSid": cfg.account_sid, "streamSid": self._sid, "callSid": rec.call_sid,
                      "tracks": ["inbound"], "customParameters": rec.custom_parameters,
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
            "streamSid": self._sid}))
        self._started.set_result(True)
        self._status_callback("stream-started")
        self._flush(now)
        self._schedule_next()

    def _status_callback(self, event: str) -> None:
        """Stream statusCallback (twilio.md#stream-status-callback), if the TwiML asked for one."""
        if self._status_cb is None:
            return
        url, method, name = self._status_cb
        params = {"AccountSid": self.record.account_sid, "CallSid": self.record.call_sid,
                  "StreamSid": self._sid, "StreamName": name or self._sid, "StreamEvent": event,
                  "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds")}

        async def post() -> None:
            try:
                status, _ = await self.sim._request(method, url, params)
            except (TimeoutError, aiohttp.ClientError, OSError):
                status = None
            self.record.status_callbacks.append((event, status))
        self._callbacks.append(self._loop.create_task(post()))

    # ---------------------------------------------------------------- timer and out-queue

    def _draw(self) -> float:
        return self._rng.uniform(-self._jit, self._jit) if self._jit else 0.0

    def _emit(self, gen: float, data: bytes | str, tag: object = None, binary: bool = False,
              jitter: float | None = None) -> None:
        """Queue a message produced at Twilio time ``gen`` for delivery after latency ± jitter."""
        due = gen + self._lat + (self._draw() if jitter is None else jitter)
        due = max(due, gen, self._last_out)  # never before production, FIFO
        self._last_out = due
        self._outq.append((due, data, tag, binary))

    def _flush(self, now: float) -> None:
        """Write every queued message that is due."""
        q, tr, rec = self._outq, self._transport, self.record
        assert tr is not None  # messages are queued only once the socket is open
        while q and q[0][0] <= now:
            due, data, tag, binary = q.popleft()
            lag = now - due
            if lag > 0.02:
                rec.late_sends += 1
            rec.max_lag_ms = max(rec.max_lag_ms, lag * 1000)
            if tag.__class__ is bytes:  # caller media frame
                if self._paused:  # the gateway is not reading: Twilio drops audio (31930)
                    if not rec.violations or rec.violations[-1][0] != 31930:
                        rec.violations.append((31930, "media buffer overflow: gateway not reading"))
                    continue
                tr.send(WSMsgType.TEXT, data)
                rec.media_sent += 1
                rec.caller_bytes_sent += len(tag)
                if self._keep:
                    rec.caller_frames.append(tag)
            elif tag is _STOP:
                tr.send(WSMsgType.TEXT, data)
                tr.send_close(WSCloseCode.OK)
                self._close_handle = self._loop.call_later(_CLOSE_WAIT_S, tr.disconnect)
            elif tag is _ABORT:
                q.clear()
                tr.disconnect(False)
            elif tag is _CLOSE:
                tr.send_close(WSCloseCode.OK)
                self._close_handle = self._loop.call_later(_CLOSE_WAIT_S, tr.disconnect)
            else:
                tr.send(WSMsgType.BINARY if binary else WSMsgType.TEXT, data)
                if isinstance(tag, MarkEcho):  # else None: raw data (send_raw)
                    tag.echoed_at = now

    def _wake(self) -> None:
        # uvloop's timers have 1 ms resolution and may fire a little early: act at the scheduled time
        now = max(self._loop.time(), self._wake_at)
        self._handle = None
        self._wake_at = _INF
        try:
            self._advance(now)
            self._flush(now)
            self._schedule_next()
        except BaseException as exc:  # surface simulator bugs from place_call()
            self._error = exc
            if self._transport is not None:
                self._transport.disconnect(False)
            raise

    def _schedule_next(self) -> None:
        t = self._outq[0][0] if self._outq else _INF
        if self._running:
            if self._k < self._n_frames:
                t = min(t, max(self._next_gen, self._next_gen + self._lat + self._fjit))
            if self._pending:
                t = min(t, self._pending[0][0])
            if self._dtmf_q:
                t = min(t, self._dtmf_q[0][0])
            for e, kind, _ in self._inq:  # mark/clear effects may echo marks
                if kind != _MEDIA:
                    t = min(t, e)
                    break
            if self._turn_i < len(self._turns) and self._turns[self._turn_i].hangup:
                t = min(t, self._turn_due(), self._inq[0][0] if self._inq else _INF)
            t = min(t, self._end_at)
        if t == _INF:
            return
        if self._handle is not None:
            if t >= self._wake_at:
                return
            self._handle.cancel()
        self._wake_at = t
        self._handle = self._loop.call_at(t, self._wake)

    def _stop_timers(self) -> None:
        for handle in (self._handle, self._close_handle):
            if handle is not None:
                handle.cancel()
        self._handle = self._close_handle = None
        self._wake_at = _INF

    # ---------------------------------------------------------------- the Twilio-time model

    def _advance(self, t: float) -> None:
        """Process every Twilio-time event up to ``t`` in time order: mark echoes, inbound message
        effects, turn starts/ends, frame production, end of call."""
        while self._running:
            tm = self._pending[0][0] if self._pending else _INF
            te = self._inq[0][0] if self._inq else _INF
            tt = self._turn_due()
            tf = self._next_gen if self._k < self._n_frames else _INF
            td = self._dtmf_q[0][0] if self._dtmf_q else _INF
            n = min(tm, te, tt, td, tf, self._end_at)
            if n > t:
                return
            if tm == n:
                self._echo_mark(self._pending.popleft()[1], n, False)
            elif te == n:
                self._apply(*self._inq.popleft())
            elif tt == n:
                self._turn_event(n)
            elif td == n:
                self._emit_dtmf(n, self._dtmf_q.popleft()[1])
            elif tf == n:
                self._produce_frame()
            else:
                self._end(n)

    def _apply(self, e: float, kind: int, obj: Any) -> None:  # obj: HeardChunk, MarkEcho or ClearRecord by kind
        """An outbound gateway message takes effect at Twilio time ``e`` (twilio.md#playback-buffer-marks-and-clear)."""
        if kind == _MEDIA:
            if self._play_end <= e:  # audio on an empty buffer: a new segment, maybe a new run
                if self._seg_start is not None:
                    self._acc += self._play_end - self._seg_start
                if self._run_over or e - self._play_end >= RUN_GAP_S:
                    self._run_id += 1
                    self._run_p0 = self._acc
                    self._run_over = False
                self._seg_start = start = e
            else:
                start = self._play_end
            obj.start_at, obj.played = start, obj.size
            self._play_end = start + obj.size / _BPS
            self._applied += 1
        elif kind == _MARK:
            if self._play_end <= e:
                self._echo_mark(obj, e, False)
            else:
                self._pending.append((self._play_end, obj))
        else:
            obj.effect_at = e
            obj.bytes_dropped = self._cut(e)
            obj.marks_flushed = [m.name for _, m in self._pending]
            pending, self._pending = self._pending, deque()
            for _, mark in pending:
                self._echo_mark(mark, e, True)
            self._play_end = min(self._play_end, e)
            self._run_over = True
            self.record.clears.append(obj)

    def _cut(self, t: float) -> int:
        """Stop playout at ``t``: fix ``played`` of every chunk still playing; return bytes dropped."""
        dropped = 0
        for chunk in self.record.heard[self._live:self._applied]:
            assert chunk.start_at is not None  # applied: it reached the buffer
            played = int((t - chunk.start_at) * _BPS + 1e-3)
            if played < chunk.size:
                played = max(played, 0)
                dropped += chunk.size - played
                chunk.played = played
        self._live = self._applied
        return dropped

    def _echo_mark(self, mark: MarkEcho, at: float, cleared: bool) -> None:
        mark.played_at, mark.cleared = at, cleared
        self.record.marks.append(mark)
        if not self._dead:
            self._seq += 1
            self._emit(at, orjson.dumps({"event": "mark", "sequenceNumber": str(self._seq),
                                         "streamSid": self._sid, "mark": {"name": mark.name}}), mark)

    def _run_live(self, t: float) -> bool:
        """A playback run is playing at ``t`` (or is in an underrun shorter than RUN_GAP_S)."""
        return self._run_id > 0 and (self._play_end >= t or (
            not self._run_over and t - self._play_end < RUN_GAP_S))

    def _run_heard(self, t: float) -> float:
        """Seconds of the current run heard by ``t`` (0 if no run is live)."""
        if not self._run_live(t):
            return 0.0
        assert self._seg_start is not None  # a live run has a segment
        return self._acc + min(t, self._play_end) - self._seg_start - self._run_p0

    def _arm(self, a: float) -> None:
        self._armed = a
        self._arm_run = self._run_id if self._run_live(a) else self._run_id + 1

    def _turn_due(self) -> float:
        """Twilio time of the next turn event (speech end or next turn start); inf if not known yet."""
        if self._speak_end is not None:
            return self._speak_end
        if self._turn_i >= len(self._turns):
            return _INF
        turn = self._turns[self._turn_i]
        if turn.at_ms is not None:
            return max(self._armed, self._t0 + turn.at_ms / 1000)
        if turn.after_heard_ms is not None:
            if self._run_id < self._arm_run:
                return _INF
            assert self._seg_start is not None  # _run_id >= _arm_run >= 1: a run started
            # when the current segment reaches the threshold (in the past if already heard)
            tau = self._seg_start + turn.after_heard_ms / 1000 - (self._acc - self._run_p0)
            return max(tau, self._armed) if tau <= self._play_end else _INF
        assert turn.after_quiet_ms is not None  # a Turn has exactly one trigger
        return self._play_end + turn.after_quiet_ms / 1000 if self._play_end > self._armed else _INF

    def _turn_event(self, t: float) -> None:
        if self._speak_end is not None:  # speech over: arm the next turn
            self._speak_end = None
            self._turn_i += 1
            self._arm(t)
            return
        turn = self._turns[self._turn_i]
        self.record.turns.append(TurnStart(self._turn_i, t, (t - self._t0) * 1000,
                                           self._run_heard(t) * 1000, turn.hangup))
        if turn.hangup:
            self._turn_i = len(self._turns)
            self._end_at, self._end_kind = t, "hangup"
            return
        start = max(round((t - self._t0) * _BPS), self._k * FRAME_BYTES)  # first sample not yet sent
        self._speech.append((start, start + turn.speech_ms * 8, speech_pool(turn.level_dbfs)))
        self._speak_end = t + turn.speech_ms / 1000

    def _produce_frame(self) -> None:
        """Media frame ``k`` (stream bytes [160k, 160k+160)) at the end of its 20 ms."""
        k = self._k
        lo = k * FRAME_BYTES
        hi = lo + FRAME_BYTES
        speech = self._speech
        while speech and speech[0][1] <= lo:
            speech.popleft()
        if not speech or speech[0][0] >= hi:
            frame, b64 = SILENCE_FRAME, _SILENCE_B64
        elif speech[0][0] <= lo and speech[0][1] >= hi:
            frames, b64s = speech[0][2]
            frame, b64 = frames[k % POOL_FRAMES], b64s[k % POOL_FRAMES]
        else:  # a turn starts or ends inside this frame
            buf = bytearray(SILENCE_FRAME)
            for s, e, (frames, _) in speech:
                a, b = max(s, lo) - lo, min(e, hi) - lo
                if a < b:
                    buf[a:b] = frames[k % POOL_FRAMES][a:b]
            frame = bytes(buf)
            b64 = base64.b64encode(frame)
        gen = self._next_gen
        self._k = k + 1
        self._next_gen = self._t0 + (k + 2) * _FRAME_S
        self._seq += 1
        jitter, self._fjit = self._fjit, self._draw()
        self._emit(gen, self._media_tmpl % (self._seq, k + 1, 20 * k, b64), frame, False, jitter)

    def _end(self, t: float) -> None:
        """The caller hangs up (``stop`` + close) or the line dies (abort) at Twilio time ``t``."""
        while self._k < self._n_frames and self._next_gen <= t + 1e-6:  # a frame ending at t (float ties)
            self._produce_frame()
        self._finish(t)
        kind = self._end_kind
        if kind == "abort":
            self.record.outcome = Outcome.DROPPED
            self._emit(t, b"", _ABORT)
        else:
            self.record.outcome = {"rest": Outcome.REST_COMPLETED, "redirect": Outcome.REDIRECTED}.get(
                kind, Outcome.COMPLETED)
            self.record.closed_by = "twilio"
            if kind != "hangup" and not self.sim.config.rest_end_sends_stop:
                self._emit(t, b"", _CLOSE)
                return
            self._seq += 1
            self._emit(t, orjson.dumps({
                "event": "stop", "sequenceNumber": str(self._seq),
                "stop": {"accountSid": self.record.account_sid, "callSid": self.record.call_sid},
                "streamSid": self._sid}), _STOP)

    def _finish(self, t: float) -> None:
        """Playout and caller audio stop at ``t``; later gateway messages are only recorded."""
        self._cut(t)
        self._running = False
        self._pending.clear()
        self._inq.clear()
        self._dtmf_q.clear()
        self.record.ended_at = t
        self._status_callback("stream-stopped")

    # ---------------------------------------------------------------- inbound (picows callbacks)

    def on_ws_frame(self, transport: WSTransport, frame: picows.WSFrame) -> None:
        mt = frame.msg_type
        if mt in (WSMsgType.TEXT, WSMsgType.BINARY):
            if frame.fin:
                self._on_message(frame.get_payload_as_bytes(), mt == WSMsgType.BINARY)
            else:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
                self._fragments_binary = mt == WSMsgType.BINARY
        elif mt == WSMsgType.CONTINUATION and self._fragments is not None:
            self._fragments += frame.get_payload_as_memoryview()
            if frame.fin:
                data, self._fragments = bytes(self._fragments), None
                self._on_message(data, self._fragments_binary)
        elif mt == WSMsgType.CLOSE:
            payload = frame.get_payload_as_bytes()
            rec = self.record
            rec.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            rec.close_reason = payload[2:].decode("utf-8", "replace")
            if not transport.is_close_frame_sent:
                if rec.closed_by is None:
                    rec.closed_by = "gateway"
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, _transport: WSTransport) -> None:
        rec = self.record
        self._dead = True
        self._outq.clear()
        if self._running:  # the gateway closed or dropped the connection first
            rec.outcome = Outcome.GATEWAY_CLOSED
            rec.closed_by = rec.closed_by or "gateway"
            # what the gateway sent before closing still takes effect; then playout stops
            end = max(self._loop.time() + self._lat, self._last_in)
            self._n_frames = self._k
            self._turn_i, self._speak_end = len(self._turns), None
            self._dtmf_q.clear()
            self._end_at = _INF
            self._advance(end)
            self._finish(end)
        self._stop_timers()
        if not self._done.done():
            self._done.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def _violation(self, code: int, detail: str) -> None:
        self.record.violations.append((code, detail))

    def _on_message(self, data: bytes, binary: bool) -> None:
        """Validate one gateway frame exactly against twilio.md#messages-to-twilio and queue its effect."""
        now = self._loop.time()
        rec = self.record
        if binary:
            rec.received.append(Received(now, None, data if self._keep else None))
            self._violation(31950, f"binary frame ({len(data)} bytes)")
            return
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            msg = None
        event = msg.get("event") if isinstance(msg, dict) else None
        if not isinstance(event, str):
            event = None
        rec.received.append(Received(now, event, data.decode("utf-8", "replace") if self._keep else None))
        if event is None:
            self._violation(31951, "not a JSON object with a string 'event'")
            return
        item = self._outbound_effect(msg, event, now)
        if item is None or not self._running:
            return
        kind, effect = item
        if isinstance(effect, HeardChunk):  # kind _MEDIA
            rec.heard.append(effect)
        e = max(now + self._lat + self._draw(), self._last_in)
        self._last_in = e
        self._inq.append((e, kind, effect))
        if e <= now:
            self._advance(now)
            self._flush(now)
        self._schedule_next()

    def _outbound_effect(self, msg: dict[str, Any], event: str,
                         now: float) -> tuple[int, HeardChunk | MarkEcho | ClearRecord] | None:
        """The queue entry of a valid ``media``/``mark``/``clear`` (exact keys, our streamSid); None,
        with the violation recorded, for anything else."""
        item: tuple[int, HeardChunk | MarkEcho | ClearRecord]
        if event == "media":
            media = msg.get("media")
            if msg.keys() != _MEDIA_KEYS or not isinstance(media, dict) or media.keys() != {"payload"}:
                self._violation(
                    31951, f"media: keys must be exactly event/streamSid/media{{payload}}: {str(msg)[:200]}")
                return None
            payload = media["payload"]
            try:
                audio = binascii.a2b_base64(payload, strict_mode=True) if isinstance(payload, str) else None
            except (binascii.Error, ValueError):
                audio = None
            if audio is None:
                self._violation(31951, "media: payload is not valid base64")
                return None
            item = (_MEDIA, HeardChunk(audio if self._keep else b"", len(audio), now, seq=len(self.record.received)))
        elif event == "mark":
            mark = msg.get("mark")
            if (msg.keys() != _MARK_KEYS or not isinstance(mark, dict) or mark.keys() != {"name"}
                    or not isinstance(mark["name"], str)):
                self._violation(
                    31951, f"mark: must be exactly event/streamSid/mark{{name: str}}: {str(msg)[:200]}")
                return None
            item = (_MARK, MarkEcho(mark["name"], now))
        elif event == "clear":
            if msg.keys() != _CLEAR_KEYS:
                self._violation(31951, f"clear: keys must be exactly event/streamSid: {list(msg)}")
                return None
            item = (_CLEAR, ClearRecord(now, 0.0, 0, [], seq=len(self.record.received)))
        else:
            self._violation(31951, f"unknown event {event!r}")
            return None
        if msg["streamSid"] != self._sid:
            self._violation(31951, f"{event}: wrong streamSid {msg['streamSid']!r}")
            return None
        return item


def _small_window_socket(rcvbuf: int) -> Callable[[Any], socket.socket]:
    def factory(_url: Any) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        return sock

    return factory
