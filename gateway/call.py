"""One phone call: the only place that knows the bridge rules and barge-in.

A ``Call`` is transport-agnostic. It receives raw message bytes from each side
(``on_twilio`` / ``on_upstream``) and emits bytes through two tiny sender interfaces, reading time
from an injected clock. Sockets, backpressure and close codes belong to the transports; metrics
export belongs to the runtime, which reads the plain counters in ``CallStats``.

Per-frame work goes through ``_fastpath`` only: inbound media → ``media_to_append`` (one call),
outbound delta → ``decode_audio_delta``/``delta_to_pcmu`` → ``PlayoutLedger.queue`` →
``encode_media`` + ``encode_mark``. Everything else is rare and parsed with orjson.

Barge-in (``interrupt``): snapshot where Twilio's playhead will be when a ``clear`` sent now
arrives (``PlayoutLedger.plan_interrupt``), send ``clear`` if Twilio may still hold audio, cancel
the response only if it is active and the server is not cancelling it itself, truncate every item
the caller did not hear in full at the heard offset, and drop late deltas of interrupted responses.
"""
from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

import _fastpath as fp
from _fastpath import ProtocolError

from .config import Settings
from .errors import TwilioProtocolError, UpstreamError, UpstreamProtocolError
from .openai import events as oa
from .twilio.tokens import PARAMETER as TOKEN_PARAMETER
from .twilio.tokens import TokenVerifier

log = logging.getLogger("gateway.call")

# Latency probes while Twilio's buffer is idle. An error in the latency estimate counts twice in
# a truncation offset, so right after `start` (while the upstream session opens and the model
# thinks) a burst of probes every 20 ms fills the estimator's window; later the worker's tick
# refreshes it sparingly whenever the buffer is idle.
PROBE_BURST_S = 0.02
PROBE_BURST_MAX = 40
PROBE_INTERVAL_S = 1.0
PROBE_SAMPLES_WANTED = 16
START_TIMEOUT_S = 10.0  # a media socket must send `start` within this
SILENCE_TIMEOUT_S = 10.0  # Twilio streams 50 frames/s while the call is up: none for this long = gone
FRAME_BYTES = 160  # 20 ms of μ-law; Twilio's usual frame (not assumed anywhere else)
BENIGN_UPSTREAM_ERRORS = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response", "invalid_value"}
)
FATAL_UPSTREAM_ERRORS = frozenset({"session_expired", "beta_api_shape_disabled"})


class Sender(Protocol):
    """What a transport offers the call: send text messages, close the socket."""

    def send(self, data: bytes) -> None: ...

    def send_many(self, *messages: bytes) -> None:
        """Send several messages, in one socket write where the transport can."""

    def close(self, code: int = 1000, reason: str = "") -> None: ...


class State(enum.Enum):
    CONNECTED = "connected"  # Twilio socket open, waiting for `start`
    STARTING = "starting"  # `start` accepted, upstream session opening
    STREAMING = "streaming"  # both legs up
    ENDED = "ended"


class Trigger(str, enum.Enum):
    SPEECH_STARTED = "speech_started"
    CONTROL_API = "control_api"
    API = "api"


class CallStats:
    """Plain per-call counters, read by the runtime's metrics flush (never a metric object here)."""

    __slots__ = (
        "frames_in", "appends_out", "deltas_in", "media_out", "bytes_out", "deltas_dropped",
        "marks_sent", "interrupts", "clears", "clear_latency_s", "truncations", "cancels",
        "upstream_errors", "twilio_protocol_errors", "upstream_connect_s", "pending_dropped_bytes",
    )

    def __init__(self) -> None:
        self.frames_in = 0  # Twilio media frames received (20 ms each)
        self.appends_out = 0
        self.deltas_in = 0
        self.media_out = 0  # media messages sent to Twilio
        self.bytes_out = 0  # μ-law bytes of assistant audio sent to Twilio
        self.deltas_dropped = 0  # late deltas of interrupted responses, never played
        self.marks_sent = 0
        self.interrupts: dict[str, int] = {}
        self.clears = 0
        self.clear_latency_s: list[float] = []  # trigger → clear handed to the transport
        self.truncations: list[tuple[str, int]] = []  # (item_id, audio_end_ms)
        self.cancels = 0
        self.upstream_errors: dict[str, int] = {}
        self.twilio_protocol_errors: dict[str, int] = {}
        self.upstream_connect_s: float | None = None
        self.pending_dropped_bytes = 0


class Call:
    """Bridge one Twilio media stream to one upstream realtime session."""

    def __init__(
        self,
        settings: Settings,
        twilio: Sender,
        clock: Callable[[], float],
        open_upstream: Callable[[Call], Any],
        tokens: TokenVerifier | None = None,
        on_end: Callable[[Call], None] | None = None,
        call_later: Callable[[float, Callable[[], None]], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.state = State.CONNECTED
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self.outcome: str | None = None  # why the call ended (metric label)
        self.stats = CallStats()
        self.started_at = clock()
        self._twilio = twilio
        self._clock = clock
        self._open_upstream = open_upstream
        self._tokens = tokens
        self._on_end = on_end
        self._up: Sender | None = None
        self._connecting: Any = None  # handle of the upstream connect in progress (has .cancel())
        self._upstream_ready = False
        self._pending_in = bytearray()  # caller audio received before the upstream is ready
        self._inbuf = bytearray()  # coalescing buffer (coalesce_frames > 1)
        self._coalesce_bytes = settings.coalesce_frames * FRAME_BYTES
        self._direct = settings.coalesce_frames == 1  # one frame, one append: the single-call path
        transcode = settings.audio_mode == "pcm16"
        self._in_resampler = fp.Resampler(8000, 24000) if transcode else None
        self._out_resampler = fp.Resampler(24000, 8000) if transcode else None
        # μ-law at Twilio lags the model's audio by the output resampler's group delay.
        self._lead_ms = self._out_resampler.delay / 8.0 if self._out_resampler is not None else 0.0
        self.ledger = fp.PlayoutLedger(8, settings.twilio_latency_ms, self._lead_ms)
        # Response / item bookkeeping for barge-in.
        self._active_response: str | None = None
        self._cancel_requested: str | None = None  # response we (or the server's VAD) are cancelling
        self._item_response: dict[str, str] = {}
        self._interrupted_responses: set[str] = set()
        self._interrupted_items: set[str] = set()
        self._tail_item: tuple[str, int] | None = None  # pcm16: item whose resampler tail is pending
        self._item_produced: dict[str, float] = {}  # ms of model audio forwarded, per item still generating
        self._greeted = False
        self._next_probe = 0.0
        self._frames_seen = 0
        self._frames_seen_at = self.started_at
        self._call_later = call_later  # loop.call_later; None: no probe burst (unit tests)
        self._burst: Any = None
        self._burst_left = PROBE_BURST_MAX

    # ------------------------------------------------------------------ Twilio side
    def on_twilio(self, message: bytes | memoryview) -> None:
        """One text message from Twilio. The common case (media while streaming) is one C call."""
        if self.state is State.STREAMING and self._direct:
            try:
                out = fp.media_to_append(message, self._in_resampler, self.stream_sid)
            except ProtocolError as exc:
                self._twilio_violation("invalid_media", str(exc))
                return
            if out is not None:
                self.stats.frames_in += 1
                self._up.send(out)  # type: ignore[union-attr]
                self.stats.appends_out += 1
                return
            self._on_twilio_slow(message, media_checked=True)
            return
        self._on_twilio_slow(message, media_checked=False)

    def _on_twilio_slow(self, message: bytes | memoryview, media_checked: bool) -> None:
        if self.state is State.ENDED:
            return
        try:
            if self.stream_sid and not media_checked:
                audio = fp.decode_media(message, self.stream_sid)
                if audio is not None:
                    self._on_caller_audio(audio)
                    return
            event = orjson.loads(message)
        except (ProtocolError, orjson.JSONDecodeError) as exc:
            self._twilio_violation("invalid_json" if isinstance(exc, orjson.JSONDecodeError) else "invalid_media",
                                   str(exc))
            return
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            self._twilio_violation("invalid_event", "message is not an object with a string 'event'")
            return
        kind = event["event"]
        try:
            if kind == "connected":
                return
            if kind == "start":
                self._on_start(event)
                return
            if self.stream_sid is None:
                raise TwilioProtocolError(f"{kind!r} before 'start'", "before_start")
            if event.get("streamSid") != self.stream_sid:
                raise TwilioProtocolError("streamSid does not match this stream", "wrong_stream_sid")
            if kind == "media":  # only reached for a media frame that decode_media rejected above
                raise TwilioProtocolError("invalid media message", "invalid_media")
            if kind == "mark":
                mark = event.get("mark")
                name = mark.get("name") if isinstance(mark, dict) else None
                if not isinstance(name, str):
                    raise TwilioProtocolError("mark without a name", "invalid_mark")
                self.ledger.on_mark(name, self._clock())
            elif kind == "stop":
                self.end("twilio_stop", "completed", close_code=1000)
            elif kind == "dtmf":
                log.debug("dtmf", extra=self._log_extra())
            else:
                # Forward compatible: Twilio may add events; note it, keep the call.
                self.stats.twilio_protocol_errors["unknown_event"] = (
                    self.stats.twilio_protocol_errors.get("unknown_event", 0) + 1
                )
                log.warning("twilio sent an unknown event %r; ignored", kind[:40], extra=self._log_extra())
        except TwilioProtocolError as exc:
            self._twilio_violation(exc.kind, str(exc))
        except (TypeError, ValueError, AttributeError) as exc:  # ill-typed fields in a valid JSON event
            self._twilio_violation("invalid_event", f"{kind!r}: {exc}")

    def on_twilio_binary(self) -> None:
        """Twilio only sends JSON text frames: a binary frame is a protocol violation."""
        self._twilio_violation("binary_frame", "binary WebSocket frame")

    def on_twilio_oversized(self, size: int) -> None:
        self._twilio_violation("oversized_frame", f"{size} bytes > GATEWAY_MAX_FRAME_BYTES")

    def _on_start(self, event: dict[str, Any]) -> None:
        if self.state is not State.CONNECTED:
            raise TwilioProtocolError("duplicate 'start'", "duplicate_start")
        start = event.get("start")
        sid = event.get("streamSid")
        if not isinstance(start, dict) or not isinstance(sid, str) or not sid or start.get("streamSid") != sid:
            raise TwilioProtocolError("'start' without a consistent streamSid", "invalid_start")
        fmt = start.get("mediaFormat") or {}
        if (fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels")) != ("audio/x-mulaw", 8000, 1):
            raise TwilioProtocolError(f"unsupported mediaFormat {fmt!r}", "unsupported_format")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise TwilioProtocolError("customParameters is not an object", "invalid_start")
        call_sid = start.get("callSid")
        if not isinstance(call_sid, str) or not call_sid:
            raise TwilioProtocolError("'start' without callSid", "invalid_start")
        self.stream_sid, self.call_sid = sid, call_sid
        self.custom_parameters = {str(k): str(v) for k, v in params.items() if k != TOKEN_PARAMETER}
        if self._tokens is not None:
            reason = self._tokens.verify(params.get(TOKEN_PARAMETER), call_sid, _wall_time())
            if reason is not None:
                self.stats.twilio_protocol_errors["call_token_" + reason] = 1
                log.warning("media stream rejected: call token %s", reason, extra=self._log_extra())
                self.end("call_token_" + reason, "rejected_token", close_code=1008)
                return
        self.state = State.STARTING
        log.info("stream started", extra=self._log_extra())
        # Probe marks on the empty buffer measure the latency to Twilio before any audio.
        self._probe_burst()
        self._connecting = self._open_upstream(self)

    def _on_caller_audio(self, audio: bytes) -> None:
        self.stats.frames_in += 1
        if not self._upstream_ready:
            self._pending_in += audio
            limit = self.settings.max_pending_audio_ms * 8
            if len(self._pending_in) > limit:
                drop = len(self._pending_in) - limit
                del self._pending_in[:drop]
                self.stats.pending_dropped_bytes += drop
            return
        self._inbuf += audio
        if len(self._inbuf) >= self._coalesce_bytes:
            self._send_append(self._inbuf)
            self._inbuf.clear()

    def _send_append(self, ulaw: bytes | bytearray) -> None:
        if self._in_resampler is None:
            msg = fp.encode_append(ulaw)
        else:
            msg = fp.pcmu_to_append(ulaw, self._in_resampler)
        self._up.send(msg)  # type: ignore[union-attr]
        self.stats.appends_out += 1

    def _twilio_violation(self, kind: str, detail: str) -> None:
        errors = self.stats.twilio_protocol_errors
        errors[kind] = errors.get(kind, 0) + 1
        log.warning("twilio protocol error (%s): %s; closing this call", kind, detail[:200],
                    extra=self._log_extra())
        self.end("twilio_protocol_error", "twilio_protocol_error", close_code=1008)

    # ------------------------------------------------------------------ upstream side
    def upstream_connected(self, sender: Sender, connect_s: float) -> None:
        """The transport opened the upstream socket: configure the session, flush early audio."""
        if self.state is State.ENDED:
            sender.close(1000, "call ended")
            return
        self._up = sender
        self._connecting = None
        self.stats.upstream_connect_s = connect_s
        sender.send(oa.session_update(self.settings, f"{self.call_sid}:session"))
        self._upstream_ready = True
        self.state = State.STREAMING
        if self._pending_in:
            pending, self._pending_in = self._pending_in, bytearray()
            for i in range(0, len(pending), 8000):  # ≤ 1 s per append
                self._send_append(pending[i:i + 8000])
        if self.settings.greeting and not self._greeted:
            self._greeted = True
            sender.send(oa.response_create(self.settings.greeting))

    def upstream_failed(self, exc: BaseException, code: str = "connect_failed") -> None:
        """The upstream could not be opened or broke: end this call cleanly."""
        self._count_upstream_error(code)
        log.error("upstream failed (%s): %s", code, exc, extra=self._log_extra())
        self.end("upstream_" + code, "upstream_error", close_code=1011)

    def upstream_closed(self, code: int, reason: str) -> None:
        if self.state is State.ENDED:
            return
        self.upstream_failed(UpstreamError(f"upstream closed the session ({code} {reason})"), "closed")

    def on_upstream(self, message: bytes | memoryview) -> None:
        """One text message from the upstream session."""
        if self.state is not State.STREAMING:
            return
        try:
            if self._out_resampler is None:
                delta = fp.decode_audio_delta(message)
                if delta is not None:
                    item_id, content_index, audio = delta
                    self._on_delta(item_id, content_index, audio, len(audio) / 8.0)
                    return
            else:
                delta4 = fp.delta_to_pcmu(message, self._out_resampler)
                if delta4 is not None:
                    item_id, content_index, audio, pcm_bytes = delta4
                    self._tail_item = (item_id, content_index)
                    self._on_delta(item_id, content_index, audio, pcm_bytes / 48.0)
                    return
            event = orjson.loads(message)
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise UpstreamProtocolError("event is not an object with a string 'type'", "invalid_event")
        except (ProtocolError, orjson.JSONDecodeError) as exc:
            kind = getattr(exc, "kind", "invalid_message")
            self._count_upstream_error("protocol_" + kind)
            log.error("upstream protocol error: %s; closing this call", str(exc)[:200], extra=self._log_extra())
            self.end("upstream_protocol_error", "upstream_error", close_code=1011)
            return
        self._on_upstream_event(event)

    def _on_delta(self, item_id: str, content_index: int, audio: bytes, produced_ms: float) -> None:
        self.stats.deltas_in += 1
        if item_id in self._interrupted_items or self._item_response.get(item_id) in self._interrupted_responses:
            self._interrupted_items.add(item_id)
            self.stats.deltas_dropped += 1
            if self._out_resampler is not None:  # it just ingested audio nobody will hear
                self._out_resampler.reset()
                self._tail_item = None
            return
        if not audio:
            return
        produced = self._item_produced
        produced[item_id] = produced.get(item_id, 0.0) + produced_ms
        now = self._clock()
        ledger = self.ledger
        if not ledger.busy:
            probe = ledger.probe(now)
            if probe is not None:
                self._send_mark(probe)
        mark = ledger.queue(item_id, content_index, len(audio), produced_ms, now)
        sid: str = self.stream_sid  # type: ignore[assignment]
        self._twilio.send_many(fp.encode_media(sid, audio), fp.encode_mark(sid, mark))
        stats = self.stats
        stats.marks_sent += 1
        stats.media_out += 1
        stats.bytes_out += len(audio)

    def _send_mark(self, name: str) -> None:
        self._twilio.send(fp.encode_mark(self.stream_sid, name))  # type: ignore[arg-type]
        self.stats.marks_sent += 1

    def _on_upstream_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "input_audio_buffer.speech_started":
            self.interrupt(Trigger.SPEECH_STARTED)
        elif kind == "response.created":
            response = event.get("response") or {}
            self._active_response = response.get("id")
        elif kind == "response.output_item.added":
            item = event.get("item") or {}
            item_id, response_id = item.get("id"), event.get("response_id")
            if isinstance(item_id, str) and isinstance(response_id, str):
                self._item_response[item_id] = response_id
                if response_id in self._interrupted_responses:
                    self._interrupted_items.add(item_id)
        elif kind in ("response.output_audio.done", "response.audio.done"):
            self._flush_tail(event.get("item_id"))
            self._item_produced.pop(event.get("item_id"), None)  # complete: the ledger knows it
        elif kind == "response.done":
            self._on_response_done(event.get("response") or {})
        elif kind == "error":
            self._on_upstream_error(event.get("error") or {})
        elif kind == "session.updated":
            log.debug("session updated", extra=self._log_extra())

    def _flush_tail(self, item_id: Any) -> None:
        """pcm16: the resampler holds the last few ms of the item; play them as part of it."""
        if self._out_resampler is None or self._tail_item is None or self._tail_item[0] != item_id:
            return
        _, content_index = self._tail_item
        self._tail_item = None
        tail = self._out_resampler.flush()
        if tail and item_id not in self._interrupted_items:
            self._on_delta(item_id, content_index, fp.ulaw_encode(tail), 0.0)

    def _on_response_done(self, response: dict[str, Any]) -> None:
        response_id = response.get("id")
        if response_id == self._active_response:
            self._active_response = None
        if response_id == self._cancel_requested:
            self._cancel_requested = None
        # No more deltas can come for this response: forget its bookkeeping (bounded memory).
        if isinstance(response_id, str):
            self._interrupted_responses.discard(response_id)
            for item_id in [i for i, r in self._item_response.items() if r == response_id]:
                del self._item_response[item_id]
                self._interrupted_items.discard(item_id)
                self._item_produced.pop(item_id, None)
        if self._out_resampler is not None and self._tail_item is not None:
            self._out_resampler.reset()  # an item ended without output_audio.done: drop its tail
            self._tail_item = None

    def _on_upstream_error(self, error: dict[str, Any]) -> None:
        code = error.get("code") or error.get("type") or "unknown"
        code = str(code)[:64]
        self._count_upstream_error(code)
        message = str(error.get("message", ""))[:200]
        if str(error.get("event_id", "")).endswith(":session"):
            # Our session.update was refused: formats/voice are not what we send. Cannot go on.
            self.upstream_failed(UpstreamError(message, code), "session_rejected")
        elif code in FATAL_UPSTREAM_ERRORS:
            self.upstream_failed(UpstreamError(message, code), code)
        elif code in BENIGN_UPSTREAM_ERRORS:
            log.info("upstream error (benign) %s: %s", code, message, extra=self._log_extra())
        else:
            log.warning("upstream error %s: %s", code, message, extra=self._log_extra())

    def _count_upstream_error(self, code: str) -> None:
        errors = self.stats.upstream_errors
        errors[code] = errors.get(code, 0) + 1

    def _probe_burst(self) -> None:
        self._burst = None
        ledger = self.ledger
        if self.state is State.ENDED or ledger.busy or ledger.latency_samples >= PROBE_SAMPLES_WANTED:
            return
        probe = ledger.probe(self._clock())
        if probe is not None:
            self._send_mark(probe)
        self._burst_left -= 1
        if self._call_later is not None and self._burst_left > 0:
            self._burst = self._call_later(PROBE_BURST_S, self._probe_burst)

    def tick(self, now: float) -> None:
        """Housekeeping from the worker's timer (never per frame).

        While Twilio's buffer is idle, probe marks keep the latency estimate fresh.
        """
        if self.state is State.CONNECTED and now - self.started_at > START_TIMEOUT_S:
            self._twilio_violation("no_start", f"no 'start' within {START_TIMEOUT_S:.0f} s")
            return
        if self.stats.frames_in != self._frames_seen:
            self._frames_seen, self._frames_seen_at = self.stats.frames_in, now
        elif self.state is not State.CONNECTED and now - self._frames_seen_at > SILENCE_TIMEOUT_S:
            log.warning("no media from Twilio for %.0f s; ending the call", SILENCE_TIMEOUT_S,
                        extra=self._log_extra())
            self.end("twilio_silent", "twilio_silent", close_code=1001)
            return
        ledger = self.ledger
        if self.state is State.STREAMING and not ledger.busy and now >= self._next_probe:
            probe = ledger.probe(now)
            if probe is not None:
                self._send_mark(probe)
                self._next_probe = now + PROBE_INTERVAL_S

    # ------------------------------------------------------------------ barge-in
    def interrupt(self, trigger: Trigger | str = Trigger.API) -> bool:
        """Stop the assistant now: clear Twilio, cancel if needed, truncate at what was heard.

        Returns True if anything was done (audio was queued at Twilio or a response was active).
        """
        if self.state is not State.STREAMING:
            return False
        trigger = Trigger(trigger)
        started = time.perf_counter()  # loop.time() is cached per loop iteration under uvloop
        t0 = self._clock()
        ledger = self.ledger
        acted = False
        if ledger.busy:
            plan = ledger.plan_interrupt(t0)
            self._twilio.send(fp.encode_clear(self.stream_sid))  # type: ignore[arg-type]
            ledger.clear(t0)
            self.stats.clears += 1
            self.stats.clear_latency_s.append(time.perf_counter() - started)
            acted = True
        else:
            plan = []
        up = self._up
        assert up is not None
        response_id = self._active_response
        if response_id is not None and response_id != self._cancel_requested:
            server_cancels = trigger is Trigger.SPEECH_STARTED and self.settings.vad_interrupt_response
            if not server_cancels:
                up.send(oa.response_cancel(response_id))
                self.stats.cancels += 1
            self._cancel_requested = response_id
            self._interrupted_responses.add(response_id)
            # Items of this response still being generated that the caller heard in full *so far*
            # (Twilio's buffer ran dry) are not in the plan, yet the model holds more of them than
            # the caller heard: truncate them at what was forwarded.
            planned = {item for item, _, _ in plan}
            for item_id, rid in self._item_response.items():
                if rid != response_id:
                    continue
                self._interrupted_items.add(item_id)
                produced_ms = self._item_produced.get(item_id)
                if produced_ms is not None and item_id not in planned:
                    plan.append((item_id, 0, max(0, int(produced_ms - self._lead_ms))))
            acted = True
        for item_id, content_index, audio_end_ms in plan:
            self._interrupted_items.add(item_id)
            self._item_produced.pop(item_id, None)
            if audio_end_ms == 0 and self.settings.unheard_item_action != "truncate":
                if self.settings.unheard_item_action == "delete":
                    up.send(oa.item_delete(item_id))
                continue
            up.send(oa.item_truncate(item_id, content_index, audio_end_ms))
            self.stats.truncations.append((item_id, audio_end_ms))
        if self._out_resampler is not None:
            self._out_resampler.reset()
            self._tail_item = None
        if acted:
            counts = self.stats.interrupts
            counts[trigger.value] = counts.get(trigger.value, 0) + 1
            log.info("interrupt (%s): cleared=%s truncate=%s", trigger.value, bool(plan) or None,
                     plan, extra=self._log_extra())
        return acted

    # ------------------------------------------------------------------ lifecycle
    def end(self, reason: str, outcome: str, close_code: int = 1000) -> None:
        """End the call once: close upstream at once (it costs money), then the Twilio socket."""
        if self.state is State.ENDED:
            return
        self.state = State.ENDED
        self.outcome = outcome
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._burst is not None:
            self._burst.cancel()
            self._burst = None
        if self._up is not None:
            self._up.close(1000, "call ended")
            self._up = None
        self._twilio.close(close_code, reason[:100])
        log.info("call ended: %s", reason, extra=self._log_extra())
        if self._on_end is not None:
            self._on_end(self)

    def twilio_closed(self) -> None:
        """The Twilio socket went away (hang-up, network): end the call, close upstream."""
        self.end("twilio_disconnected", "completed" if self.stream_sid else "no_start")

    def _log_extra(self) -> dict[str, Any]:
        return {"call_sid": self.call_sid, "stream_sid": self.stream_sid}


def _wall_time() -> float:
    return time.time()
