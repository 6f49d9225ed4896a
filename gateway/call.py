"""One phone call: the only place that knows the bridge rules and barge-in.

A ``Call`` is transport-agnostic. It receives raw message bytes from each side (``on_twilio`` /
``on_upstream``) and emits bytes through two ``Sender``\\ s, reading time from an injected clock.
Sockets, backpressure and close codes belong to the transports; parsing of everything but the
per-frame messages belongs to the adapters (``twilio.events``, ``openai.server_events``), which
hand typed events to a dispatch table here; metrics export belongs to the runtime, which reads
the plain counters in ``CallStats``.

Per-frame work is one ``_fastpath`` call each way: inbound media → ``media_to_append``, outbound
delta → ``decode_audio_delta`` (or ``delta_to_pcmu``) → ``Playout.deliver``.

Barge-in (``interrupt``): snapshot where Twilio's playhead will be when a ``clear`` sent now
arrives (``Playout.clear``), send ``clear`` if Twilio may still hold audio, cancel the response
only if it is active and the server is not cancelling it itself, truncate every item the caller
did not hear in full at the heard offset, and drop late deltas of interrupted responses.
"""
from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import _fastpath as fp
from _fastpath import ProtocolError

from .caller_audio import CallerAudio
from .config import Settings
from .errors import TwilioProtocolError, UpstreamError, UpstreamProtocolError
from .openai import events as oa
from .openai import server_events as se
from .outcomes import EndReason, Outcome, Trigger, TwilioViolation, UpstreamFailure, UpstreamViolation
from .playout import Playout
from .responses import Responses
from .sender import Sender
from .stats import CallStats, count
from .twilio import events as tw
from .twilio.tokens import PARAMETER as TOKEN_PARAMETER
from .twilio.tokens import TokenVerifier

log = logging.getLogger("gateway.call")

START_TIMEOUT_S = 10.0  # a media socket must send `start` within this
SILENCE_TIMEOUT_S = 10.0  # Twilio streams 50 frames/s while the call is up: none for this long = gone
BENIGN_UPSTREAM_ERRORS = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response", "invalid_value"}
)
FATAL_UPSTREAM_ERRORS = frozenset({"session_expired", "beta_api_shape_disabled"})


class State(enum.Enum):
    CONNECTED = "connected"  # Twilio socket open, waiting for `start`
    STARTING = "starting"  # `start` accepted, upstream session opening
    STREAMING = "streaming"  # both legs up
    ENDED = "ended"


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
        self.ended = False  # read per upstream frame by the transport: a plain attribute
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self.outcome: Outcome | None = None
        self.stats = CallStats()
        self.started_at = clock()
        self._twilio = twilio
        self._clock = clock
        self._open_upstream = open_upstream
        self._tokens = tokens
        self._on_end = on_end
        self._up: Sender | None = None
        self._direct_up: Sender | None = None  # set while streaming one frame per append: the hot path
        self._connecting: Any = None  # handle of the upstream connect in progress (has .cancel())
        transcode = settings.audio_mode == "pcm16"
        self.caller = CallerAudio(self.stats, settings.coalesce_frames, settings.max_pending_audio_ms, transcode)
        self._in_resampler = self.caller.resampler
        self.playout = Playout(twilio, self.stats, clock, settings.twilio_latency_ms, transcode, call_later)
        self._pcm16 = transcode
        self.responses = Responses()
        self._greeted = False
        self._frames_seen = 0
        self._frames_seen_at = self.started_at

    @property
    def ledger(self) -> fp.PlayoutLedger:
        return self.playout.ledger

    # ------------------------------------------------------------------ Twilio side
    def on_twilio(self, message: bytes | memoryview) -> None:
        """One text message from Twilio. The common case (media while streaming) is one C call."""
        up = self._direct_up
        if up is not None:
            try:
                out = fp.media_to_append(message, self._in_resampler, self.stream_sid)
            except ProtocolError as exc:
                self._twilio_violation(TwilioViolation.INVALID_MEDIA, str(exc))
                return
            if out is not None:
                self.stats.frames_in += 1
                up.send(out)
                return
        if self.state is State.ENDED:
            return
        try:
            event = tw.parse(message, self.stream_sid)
        except TwilioProtocolError as exc:
            self._twilio_violation(exc.kind, str(exc))
            return
        self._TWILIO_HANDLERS[type(event)](self, event)

    def on_twilio_binary(self) -> None:
        """Twilio only sends JSON text frames: a binary frame is a protocol violation."""
        self._twilio_violation(TwilioViolation.BINARY_FRAME, "binary WebSocket frame")

    def on_twilio_oversized(self, size: int) -> None:
        self._twilio_violation(TwilioViolation.OVERSIZED_FRAME, f"{size} bytes > GATEWAY_MAX_FRAME_BYTES")

    def _on_start(self, event: tw.Start) -> None:
        if self.state is not State.CONNECTED:
            self._twilio_violation(TwilioViolation.DUPLICATE_START, "duplicate 'start'")
            return
        info = event.start
        self.stream_sid, self.call_sid = event.streamSid, info.callSid
        self.playout.stream_sid = event.streamSid
        params = info.customParameters
        self.custom_parameters = {k: v for k, v in params.items() if k != TOKEN_PARAMETER}
        if self._tokens is not None:
            rejection = self._tokens.verify(params.get(TOKEN_PARAMETER), info.callSid, time.time())
            if rejection is not None:
                count(self.stats.twilio_protocol_errors, f"call_token_{rejection}")
                log.warning("media stream rejected: call token %s", rejection, extra=self.log_extra())
                self.end(EndReason.CALL_TOKEN_REJECTED, rejection)
                return
        self.state = State.STARTING
        log.info("stream started", extra=self.log_extra())
        # Probe marks on the empty buffer measure the latency to Twilio before any audio.
        self.playout.probe_burst()
        self._connecting = self._open_upstream(self)

    def _on_media(self, event: tw.Media) -> None:
        self.stats.frames_in += 1
        self.caller.on_audio(event.audio)

    def _on_mark(self, event: tw.Mark) -> None:
        self.playout.on_mark(event.mark.name)

    def _on_stop(self, event: tw.Stop) -> None:
        self.end(EndReason.TWILIO_STOP)

    def _on_dtmf(self, event: tw.Dtmf) -> None:
        log.debug("dtmf", extra=self.log_extra())

    def _on_connected(self, event: tw.Connected) -> None:
        pass

    def _on_unknown(self, event: tw.Unknown) -> None:
        # Forward compatible: Twilio may add events; note it, keep the call.
        count(self.stats.twilio_protocol_errors, TwilioViolation.UNKNOWN_EVENT)
        log.warning("twilio sent an unknown event %r; ignored", event.event, extra=self.log_extra())

    _TWILIO_HANDLERS: ClassVar[dict[type, Callable[[Call, Any], None]]] = {
        tw.Media: _on_media, tw.Mark: _on_mark, tw.Start: _on_start, tw.Stop: _on_stop,
        tw.Dtmf: _on_dtmf, tw.Connected: _on_connected, tw.Unknown: _on_unknown,
    }

    def _twilio_violation(self, kind: TwilioViolation, detail: str) -> None:
        count(self.stats.twilio_protocol_errors, kind)
        log.warning("twilio protocol error (%s): %s; closing this call", kind, detail[:200], extra=self.log_extra())
        self.end(EndReason.TWILIO_PROTOCOL_ERROR, kind)

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
        self.state = State.STREAMING
        self.caller.upstream_ready(sender)
        if self.settings.coalesce_frames == 1:
            self._direct_up = sender
        if self.settings.greeting and not self._greeted:
            self._greeted = True
            sender.send(oa.response_create(self.settings.greeting))

    def upstream_failed(self, exc: BaseException, code: UpstreamFailure | str) -> None:
        """The upstream could not be opened or broke: end this call cleanly."""
        count(self.stats.upstream_errors, code)
        log.error("upstream failed (%s): %s", code, exc, extra=self.log_extra())
        self.end(EndReason.UPSTREAM_FAILED, code)

    def upstream_closed(self, code: int, reason: str) -> None:
        if self.state is State.ENDED:
            return
        message = f"upstream closed the session ({code} {reason})"
        self.upstream_failed(UpstreamError(message, UpstreamFailure.CLOSED), UpstreamFailure.CLOSED)

    def on_upstream(self, message: bytes | memoryview) -> None:
        """One text message from the upstream session."""
        if self.state is not State.STREAMING:
            return
        try:
            if self._pcm16:
                delta = self.playout.pcm16_delta(message)
                if delta is not None:
                    self._on_delta(*delta)
                    return
            else:
                audio = fp.decode_audio_delta(message)
                if audio is not None:
                    item_id, content_index, ulaw = audio
                    self._on_delta(item_id, content_index, ulaw, len(ulaw) / 8.0)
                    return
        except ProtocolError as exc:
            self._upstream_violation(UpstreamViolation.INVALID_AUDIO, str(exc))
            return
        try:
            event = se.parse(message)
        except UpstreamProtocolError as exc:
            self._upstream_violation(exc.kind, str(exc))
            return
        if event is not None:
            self._UPSTREAM_HANDLERS[type(event)](self, event)

    def on_upstream_binary(self) -> None:
        self._upstream_violation(UpstreamViolation.BINARY_FRAME, "binary WebSocket frame")

    def _upstream_violation(self, kind: UpstreamViolation, detail: str) -> None:
        count(self.stats.upstream_protocol_errors, kind)
        if kind is UpstreamViolation.INVALID_FIELDS:
            log.warning("upstream protocol error (%s): %s; event ignored", kind, detail[:200], extra=self.log_extra())
            return
        log.error("upstream protocol error (%s): %s; closing this call", kind, detail[:200], extra=self.log_extra())
        self.end(EndReason.UPSTREAM_FAILED, UpstreamFailure.PROTOCOL)

    def _on_delta(self, item_id: str, content_index: int, audio: bytes, produced_ms: float) -> None:
        if self.responses.interrupted(item_id):
            self.stats.deltas_dropped += 1
            self.playout.drop_tail()  # it just ingested audio nobody will hear
            return
        self.playout.deliver(item_id, content_index, audio, produced_ms)

    def _on_speech_started(self, event: se.SpeechStarted) -> None:
        self.interrupt(Trigger.SPEECH_STARTED)

    def _on_response_created(self, event: se.ResponseCreated) -> None:
        self.responses.created(event.response.id)

    def _on_output_item_added(self, event: se.OutputItemAdded) -> None:
        self.responses.item_added(event.item.id, event.response_id)

    def _on_output_audio_done(self, event: se.OutputAudioDone) -> None:
        if event.item_id in self.responses.interrupted_items:
            self.playout.drop_tail()
            self.playout.produced.pop(event.item_id, None)
        else:
            self.playout.item_done(event.item_id)

    def _on_response_done(self, event: se.ResponseDone) -> None:
        # No more deltas can come for this response: forget its bookkeeping (bounded memory).
        for item_id in self.responses.done(event.response.id):
            self.playout.produced.pop(item_id, None)
        self.playout.abandon_tail()

    def _on_error(self, event: se.Error) -> None:
        error = event.error
        code = (error.code or error.type or "unknown")[:64]
        count(self.stats.upstream_errors, code)
        message = error.message[:200]
        if (error.event_id or "").endswith(":session"):
            # Our session.update was refused: formats/voice are not what we send. Cannot go on.
            self._fail(message, UpstreamFailure.SESSION_REJECTED)
        elif code in FATAL_UPSTREAM_ERRORS:
            self._fail(message, code)
        elif code in BENIGN_UPSTREAM_ERRORS:
            log.info("upstream error (benign) %s: %s", code, message, extra=self.log_extra())
        else:
            log.warning("upstream error %s: %s", code, message, extra=self.log_extra())

    def _fail(self, message: str, code: UpstreamFailure | str) -> None:
        self.upstream_failed(UpstreamError(message, code), code)

    def _on_session_updated(self, event: se.SessionUpdated) -> None:
        log.debug("session updated", extra=self.log_extra())

    _UPSTREAM_HANDLERS: ClassVar[dict[type, Callable[[Call, Any], None]]] = {
        se.SpeechStarted: _on_speech_started, se.ResponseCreated: _on_response_created,
        se.OutputItemAdded: _on_output_item_added, se.OutputAudioDone: _on_output_audio_done,
        se.ResponseDone: _on_response_done, se.Error: _on_error, se.SessionUpdated: _on_session_updated,
    }

    # ------------------------------------------------------------------ housekeeping
    def tick(self, now: float) -> None:
        """From the worker's timer (never per frame): start and silence timeouts, idle probes."""
        if self.state is State.CONNECTED and now - self.started_at > START_TIMEOUT_S:
            self._twilio_violation(TwilioViolation.NO_START, f"no 'start' within {START_TIMEOUT_S:.0f} s")
            return
        if self.stats.frames_in != self._frames_seen:
            self._frames_seen, self._frames_seen_at = self.stats.frames_in, now
        elif self.state is not State.CONNECTED and now - self._frames_seen_at > SILENCE_TIMEOUT_S:
            log.warning("no media from Twilio for %.0f s; ending the call", SILENCE_TIMEOUT_S, extra=self.log_extra())
            self.end(EndReason.TWILIO_SILENT)
            return
        if self.state is State.STREAMING:
            self.playout.tick(now)

    # ------------------------------------------------------------------ barge-in
    def interrupt(self, trigger: Trigger = Trigger.API) -> bool:
        """Stop the assistant now: clear Twilio, cancel if needed, truncate at what was heard.

        Returns True if anything was done (audio was queued at Twilio or a response was active).
        """
        if self.state is not State.STREAMING:
            return False
        up = self._up
        assert up is not None
        started = time.perf_counter()  # loop.time() is cached per loop iteration under uvloop
        plan = self.playout.clear(self._clock())
        acted = plan is not None
        if plan is None:
            plan = []
        else:
            self.stats.clear_latency_s.append(time.perf_counter() - started)
        interrupted = self.responses.interrupt_active()
        if interrupted is not None:
            response_id, items = interrupted
            server_cancels = trigger is Trigger.SPEECH_STARTED and self.settings.vad_interrupt_response
            if not server_cancels:
                up.send(oa.response_cancel(response_id))
            # Items of this response still being generated that the caller heard in full *so far*
            # (Twilio's buffer ran dry) are not in the plan, yet the model holds more of them than
            # the caller heard: truncate them at what was forwarded.
            planned = {item for item, _, _ in plan}
            produced = self.playout.produced
            for item_id in items:
                produced_ms = produced.get(item_id)
                if produced_ms is not None and item_id not in planned:
                    plan.append((item_id, 0, max(0, int(produced_ms - self.playout.lead_ms))))
            acted = True
        self._truncate(up, plan)
        self.playout.drop_tail()
        if acted:
            count(self.stats.interrupts, trigger)
            log.info("interrupt (%s): truncate=%s", trigger, plan, extra=self.log_extra())
        return acted

    def _truncate(self, up: Sender, plan: list[tuple[str, int, int]]) -> None:
        action = self.settings.unheard_item_action
        for item_id, content_index, audio_end_ms in plan:
            self.responses.interrupted_items.add(item_id)
            self.playout.produced.pop(item_id, None)
            if audio_end_ms == 0 and action != "truncate":
                if action == "delete":
                    up.send(oa.item_delete(item_id))
                continue
            up.send(oa.item_truncate(item_id, content_index, audio_end_ms))
            self.stats.truncations.append((item_id, audio_end_ms))

    # ------------------------------------------------------------------ lifecycle
    def end(self, reason: EndReason, detail: str = "") -> None:
        """End the call once: close upstream at once (it costs money), then the Twilio socket."""
        if self.state is State.ENDED:
            return
        self.state = State.ENDED
        self.ended = True
        self._direct_up = None
        self.outcome = reason.outcome
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        self.playout.stop()
        if self._up is not None:
            self._up.close(1000, "call ended")
            self._up = None
        close_reason = f"{reason}: {detail}" if detail else str(reason)
        self._twilio.close(reason.close_code, close_reason[:120])
        log.info("call ended: %s", close_reason, extra=self.log_extra())
        if self._on_end is not None:
            self._on_end(self)

    def twilio_closed(self) -> None:
        """The Twilio socket went away (hang-up, network): end the call, close upstream."""
        self.end(EndReason.TWILIO_DISCONNECTED if self.stream_sid else EndReason.TWILIO_GONE_BEFORE_START)

    def log_extra(self) -> dict[str, Any]:
        return {"call_sid": self.call_sid, "stream_sid": self.stream_sid}
