"""One phone call: the only place that knows the bridge rules and barge-in.

A ``Call`` is transport-agnostic. It receives raw message bytes from each side (``on_twilio`` /
``on_upstream``) and emits bytes through two ``Sender``\\ s, reading time from an injected clock.
Sockets, backpressure and close codes belong to the transports; parsing of everything but the
per-frame messages belongs to the adapters (``twilio.events``, ``openai.server_events``), which
hand typed events to a dispatch table here; metrics export belongs to the runtime, which reads
the plain counters in ``CallStats``.

Per-frame work is one ``_fastpath`` call each way: inbound media → ``media_to_append``, outbound
delta → ``decode_audio_delta`` (or ``delta_to_pcmu``) → ``Playout.deliver``; a mark echo (one per
chunk sent) is one more, ``decode_mark``.

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

from .behaviour import CallBehaviour, Interruption, SessionPlan, Truncation
from .caller_audio import CallerAudio
from .config import Settings
from .continuity import Continuity
from .errors import TwilioProtocolError, UpstreamError, UpstreamProtocolError
from .openai import events as oa
from .openai import server_events as se
from .openai.upstream import UpstreamLink
from .outcomes import EndReason, Outcome, Trigger, TwilioViolation, UpstreamFailure, UpstreamViolation
from .paced import PacedOptions
from .pacer import Pacer
from .playout import Playout
from .responses import LOCAL_PREFIX, Responses
from .sender import Sender
from .stats import CallStats, count
from .turns import Turns
from .twilio import events as tw
from .twilio.tokens import PARAMETER as TOKEN_PARAMETER
from .twilio.tokens import CallClaims, TokenVerifier

BehaviourFactory = Callable[["Call", CallClaims], CallBehaviour]

log = logging.getLogger("gateway.call")

START_TIMEOUT_S = 10.0  # a media socket must send `start` within this
SILENCE_TIMEOUT_S = 10.0  # Twilio streams 50 frames/s while the call is up: none for this long = gone
BENIGN_UPSTREAM_ERRORS = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response", "invalid_value"}
)
FATAL_UPSTREAM_ERRORS = frozenset({"session_expired", "beta_api_shape_disabled"})


class _Timer:
    """A timer of the call (``Call.call_later``). Cancelling it also forgets it: the call keeps only
    timers that may still fire (an agent re-arms its keypad timer on every digit)."""

    __slots__ = ("_call", "_handle")

    def __init__(self, call: Call, handle: Any) -> None:
        self._call, self._handle = call, handle

    def cancel(self) -> None:
        self._call._timers.discard(self)
        self._handle.cancel()


def pacer_period_s(settings: Settings) -> float:
    """The paced playout's beat: half a chunk, so the lead never drops a full chunk below its target."""
    return settings.playout_chunk_ms / 2000.0


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
        open_upstream: Callable[[Call, str], Any],
        make_behaviour: BehaviourFactory,
        tokens: TokenVerifier,
        on_end: Callable[[Call], None] | None = None,
        call_later: Callable[[float, Callable[[], None]], Any] | None = None,
        admit: Callable[[Call, str], None] | None = None,
        pacer: Pacer | None = None,
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
        self._make_behaviour = make_behaviour
        self._tokens = tokens
        self._on_end = on_end
        self._call_later = call_later
        self._admit = admit  # the control plane's say on `start`; None: admitted at once
        if pacer is None and call_later is not None and settings.playout == "paced":
            pacer = Pacer(clock, call_later, pacer_period_s(settings))  # a call on its own (tests)
        self._pacer = pacer if settings.playout == "paced" else None
        self._up: UpstreamLink | None = None
        self._direct_up: Sender | None = None  # set while streaming one frame per append: the hot path
        self._connecting: Any = None  # handle of the upstream connect in progress (has .cancel())
        self.behaviour = CallBehaviour()  # the agent's, once `start` says which agent
        self._plan: SessionPlan | None = None
        self._configure_audio(settings.audio_mode == "pcm16")
        self.responses = Responses()
        self._frames_seen = 0
        self._frames_seen_at = self.started_at
        self._after_playout: list[Callable[[], None]] = []
        self._expected_end: EndReason | None = None  # what Twilio's coming stop/close means
        self._timers: set[_Timer] = set()
        self._local_seq = 0
        self._caller_speaking = False
        self.continuity = Continuity(self)
        self.turns: Turns | None = None  # false-interruption resume, when the plan asks for it

    def _configure_audio(self, transcode: bool) -> None:
        settings = self.settings
        self.caller = CallerAudio(self.stats, settings.coalesce_frames, settings.max_pending_audio_ms, transcode)
        self._in_resampler = self.caller.resampler
        plan = self._plan
        paced = None
        if self._pacer is not None:
            paced = PacedOptions(self._pacer, settings.playout_lead_ms, settings.playout_chunk_ms,
                                 retain=plan is not None and plan.min_interruption_ms > 0)
        self.playout = Playout(self._twilio, self.stats, self._clock, settings.twilio_latency_ms, transcode,
                               self._call_later, paced)
        self._pcm16 = transcode

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
        if self.stream_sid is not None:  # a mark echo (one per chunk sent): no full parse either
            try:
                name = fp.decode_mark(message, self.stream_sid)
            except ProtocolError:
                name = None  # the full parse below names the violation
            if name is not None:
                self._mark(name)
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

    def on_twilio_stalled(self) -> None:
        log.warning("twilio stopped reading: more than %d ms of audio waiting; ending the call",
                    self.settings.twilio_stall_ms, extra=self.log_extra())
        self.end(EndReason.TWILIO_STALLED)

    def on_twilio_oversized(self, size: int) -> None:
        self._twilio_violation(TwilioViolation.OVERSIZED_FRAME, f"{size} bytes > GATEWAY_MAX_FRAME_BYTES")

    def _on_start(self, event: tw.Start) -> None:
        if self.state is not State.CONNECTED:
            self._twilio_violation(TwilioViolation.DUPLICATE_START, "duplicate 'start'")
            return
        info = event.start
        self.stream_sid, self.call_sid = event.streamSid, info.callSid
        params = info.customParameters
        self.custom_parameters = {k: v for k, v in params.items() if k != TOKEN_PARAMETER}
        claims = self._tokens.verify(params.get(TOKEN_PARAMETER), info.callSid, time.time())
        if not isinstance(claims, CallClaims):
            if self.settings.secure:
                count(self.stats.twilio_protocol_errors, f"call_token_{claims}")
                log.warning("media stream rejected: call token %s", claims, extra=self.log_extra())
                self.end(EndReason.CALL_TOKEN_REJECTED, claims)
                return
            claims = CallClaims()  # development mode: nothing is enforced, the default agent answers
        self.behaviour = self._make_behaviour(self, claims)
        plan = self._plan = self.behaviour.plan()
        if (plan.audio_mode == "pcm16") != self._pcm16 or plan.min_interruption_ms:
            self._configure_audio(plan.audio_mode == "pcm16")
        if plan.min_interruption_ms:
            self.turns = Turns(self, plan)
        self.playout.stream_sid = event.streamSid
        self.state = State.STARTING
        log.info("stream started", extra=self.log_extra())
        # Probe marks on the empty buffer measure the latency to Twilio before any audio.
        self.playout.probe_burst()
        if self._admit is None:
            self.admitted(None)
        else:  # caller audio is held meanwhile (CallerAudio), nothing is lost
            self._admit(self, params.get(TOKEN_PARAMETER, ""))

    def admitted(self, refusal: EndReason | None) -> None:
        """The control plane's answer to this call's `start`: open the upstream, or end the call."""
        if self.state is not State.STARTING:
            return
        if refusal is not None:
            log.warning("media stream refused by the control plane: %s", refusal, extra=self.log_extra())
            self.end(refusal)
            return
        assert self._plan is not None
        self._connecting = self._open_upstream(self, self._plan.model)

    def _on_media(self, event: tw.Media) -> None:
        self.stats.frames_in += 1
        self.caller.on_audio(event.audio)

    def _on_mark(self, event: tw.Mark) -> None:
        self._mark(event.mark.name)

    def _mark(self, name: str) -> None:
        self.playout.on_mark(name)
        if self._after_playout:
            self._check_played()

    def _on_stop(self, _event: tw.Stop) -> None:
        self.end(self._expected_end or EndReason.TWILIO_STOP)

    def _on_dtmf(self, event: tw.Dtmf) -> None:
        self.behaviour.on_dtmf(event.dtmf.digit)

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
    def upstream_connected(self, link: UpstreamLink, connect_s: float) -> None:
        """The transport opened an upstream socket: the first session, or one after a failure."""
        if self.state is State.ENDED:
            link.close(1000, "call ended")
            return
        self._connecting = None
        if self.continuity.reconnecting:
            self.continuity.reconnected(link)
            return
        self.stats.upstream_connect_s = connect_s
        plan = self._plan
        assert plan is not None
        self.state = State.STREAMING
        self.bring_up_upstream(link)
        if plan.greeting:
            link.send(oa.response_create(plan.greeting))
        self.behaviour.on_upstream_ready()
        self.continuity.session_started()

    # -- the upstream session's lifecycle, driven by continuity.Continuity
    def configure(self, link: Sender) -> None:
        """Send the call's session (the same for every session of the call)."""
        assert self._plan is not None
        link.send(oa.session_update(self._plan.session, f"{self.call_sid}:session"))

    def bring_up_upstream(self, link: UpstreamLink, replay: bool = False, line: str = "") -> None:
        """``link`` becomes the call's session: configured, the conversation replayed, held audio sent."""
        self.configure(link)
        if replay:
            for event in self.behaviour.replay():
                link.send(event)
        self._up = link
        self.caller.upstream_ready(link)
        self.direct_on()
        if replay:
            if line:
                link.send(oa.response_out_of_band(line, "reconnect"))
            if self.behaviour.awaits_answer():
                link.send(oa.response_create())

    def switch_upstream(self, link: UpstreamLink) -> None:
        """Rollover: ``link`` (configured already) takes over between two caller frames."""
        old = self._up
        for event in self.behaviour.replay():
            link.send(event)
        link.retarget(self)
        self._up = link
        self.caller.upstream_ready(link)
        self.direct_on()
        if old is not None:
            old.detach()
            old.close(1000, "session rollover")

    def take_down_upstream(self) -> None:
        """The session is gone: hold caller audio, forget its responses (Twilio plays what it has)."""
        old, self._up = self._up, None
        self.direct_off()
        self.caller.hold()
        self.continuity.session_lost()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if old is not None:
            old.detach()
            old.close(1000, "replaced", abort=True)  # it failed: nothing it still has queued matters
        for item_id in self.responses.reset():
            self.playout.produced.pop(item_id, None)
        self.playout.drop_tail()

    def open_upstream_again(self, sink: Any) -> None:
        assert self._plan is not None
        self._connecting = self._open_upstream(sink, self._plan.model)

    def direct_on(self) -> None:
        if self.settings.coalesce_frames == 1 and self._up is not None:
            self._direct_up = self._up

    def direct_off(self) -> None:
        self._direct_up = None

    def resume_upstream(self) -> None:
        """The upstream reads again: what was held goes first, then the per-frame path."""
        if self._up is not None:
            self.caller.upstream_ready(self._up)
            self.direct_on()

    @property
    def quiet(self) -> bool:
        """A moment to switch sessions: no response, the caller silent, nothing playing at Twilio."""
        return self.responses.active is None and not self._caller_speaking and not self.playout.busy

    def upstream_failed(self, exc: BaseException, code: UpstreamFailure | str, counted: bool = False) -> None:
        """The upstream could not be opened or broke: a new session if the call is up, else the end."""
        if not counted:
            count(self.stats.upstream_errors, code)
        if (self.state is State.STREAMING and code is not UpstreamFailure.SESSION_REJECTED
                and self.continuity.recover(code, str(exc))):
            return
        log.error("upstream failed (%s): %s", code, exc, extra=self.log_extra())
        self.end(EndReason.UPSTREAM_FAILED, code)

    def upstream_closed(self, code: int, reason: str, failure: UpstreamFailure = UpstreamFailure.CLOSED) -> None:
        if self.state is State.ENDED:
            return
        message = f"upstream closed the session ({code} {reason})"
        self.upstream_failed(UpstreamError(message, failure), failure)

    def upstream_paused(self) -> None:
        if self.state is State.STREAMING:
            self.continuity.paused()

    def upstream_resumed(self) -> None:
        if self.state is State.STREAMING:
            self.continuity.resumed()

    def on_upstream_oversized(self, limit: int) -> None:
        self._upstream_violation(UpstreamViolation.OVERSIZED, f"a message over {limit} bytes")

    def on_upstream(self, message: bytes | memoryview) -> None:
        """One text message from the upstream session (``session.created`` may precede
        ``upstream_connected``: the socket delivers as soon as the handshake is done)."""
        if self.ended:
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
            handler = self._UPSTREAM_HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event)
            if self.state is State.STREAMING:
                self.behaviour.on_event(event)

    def on_upstream_binary(self) -> None:
        self._upstream_violation(UpstreamViolation.BINARY_FRAME, "binary WebSocket frame")

    def _upstream_violation(self, kind: UpstreamViolation, detail: str) -> None:
        count(self.stats.upstream_protocol_errors, kind)
        if kind is UpstreamViolation.INVALID_FIELDS:
            log.warning("upstream protocol error (%s): %s; event ignored", kind, detail[:200], extra=self.log_extra())
            return
        log.error("upstream protocol error (%s): %s", kind, detail[:200], extra=self.log_extra())
        failure = UpstreamFailure.OVERSIZED if kind is UpstreamViolation.OVERSIZED else UpstreamFailure.PROTOCOL
        self.upstream_failed(UpstreamProtocolError(detail, kind), failure)

    def _on_delta(self, item_id: str, content_index: int, audio: bytes, produced_ms: float) -> None:
        if self.responses.interrupted(item_id):
            self.stats.deltas_dropped += 1
            self.playout.drop_tail()  # it just ingested audio nobody will hear
            return
        self.playout.deliver(item_id, content_index, audio, produced_ms)

    def _on_speech_started(self, event: se.SpeechStarted) -> None:
        self._caller_speaking = True
        if self.turns is not None:
            self.turns.speech_started(event)
        else:
            self.interrupt(Trigger.SPEECH_STARTED)

    def _on_speech_stopped(self, event: se.SpeechStopped) -> None:
        self._caller_speaking = False
        if self.turns is not None:
            self.turns.speech_stopped(event)

    def _on_committed(self, event: se.InputCommitted) -> None:
        if self.turns is not None:
            self.turns.committed(event)

    def _on_session_created(self, event: se.SessionCreated) -> None:
        self.continuity.expires_at(event.session.expires_at)

    def _on_response_created(self, event: se.ResponseCreated) -> None:
        metadata = event.response.metadata
        self.responses.created(event.response.id, out_of_band=bool(metadata and "gateway" in metadata))

    def _on_output_item_added(self, event: se.OutputItemAdded) -> None:
        self.responses.item_added(event.item.id, event.response_id)

    def _on_output_audio_done(self, event: se.OutputAudioDone) -> None:
        if event.item_id in self.responses.interrupted_items:
            self.playout.drop_tail()
            self.playout.produced.pop(event.item_id, None)
        else:
            self.behaviour.on_item_audio_done(event.item_id, self.playout.item_done(event.item_id))

    def _on_response_done(self, event: se.ResponseDone) -> None:
        # No more deltas can come for this response: forget its bookkeeping (bounded memory).
        for item_id in self.responses.done(event.response.id):
            self.playout.produced.pop(item_id, None)
        self.playout.abandon_tail()
        if self.turns is not None:
            self.turns.response_done()
        if self._after_playout:
            self._check_played()

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
        self.upstream_failed(UpstreamError(message, code), code, counted=code != UpstreamFailure.SESSION_REJECTED)

    def _on_session_updated(self, event: se.SessionUpdated) -> None:
        log.debug("session updated", extra=self.log_extra())

    _UPSTREAM_HANDLERS: ClassVar[dict[type, Callable[[Call, Any], None]]] = {
        se.SpeechStarted: _on_speech_started, se.ResponseCreated: _on_response_created,
        se.OutputItemAdded: _on_output_item_added, se.OutputAudioDone: _on_output_audio_done,
        se.ResponseDone: _on_response_done, se.Error: _on_error, se.SessionUpdated: _on_session_updated,
        se.SpeechStopped: _on_speech_stopped, se.SessionCreated: _on_session_created,
        se.InputCommitted: _on_committed,
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
        started = time.perf_counter()  # loop.time() is cached per loop iteration under uvloop
        plan = self.playout.clear(self._clock())
        acted = plan is not None
        if plan is None:
            plan = []
        else:
            self.stats.clear_latency_s.append(time.perf_counter() - started)
        interrupted = self.responses.interrupt_active() if up is not None else None
        if interrupted is not None and up is not None:
            response_id, items = interrupted
            # The server's VAD cancels a response of the default conversation, never an out-of-band one.
            server_cancels = (trigger is Trigger.SPEECH_STARTED and self._plan is not None
                              and self._plan.server_interrupts
                              and response_id not in self.responses.out_of_band)
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
        truncations = self._truncate(up, plan) if up is not None else []
        self.playout.drop_tail()
        if acted:
            count(self.stats.interrupts, trigger)
            log.info("interrupt (%s): truncate=%s", trigger, plan, extra=self.log_extra())
            self.behaviour.on_interrupt(Interruption(trigger, self._clock(), truncations))
        return acted

    def _truncate(self, up: Sender, plan: list[tuple[str, int, int]]) -> list[Truncation]:
        action = self.settings.unheard_item_action
        responses = self.responses
        done: list[Truncation] = []
        for item_id, content_index, audio_end_ms in plan:
            produced_ms = self.playout.produced.pop(item_id, None)
            if produced_ms is not None or item_id in responses.item_response:
                responses.interrupted_items.add(item_id)  # more may come: drop it (forgotten at response.done)
            if not responses.truncatable(item_id):
                continue  # local audio, or an out-of-band response's: not in the conversation
            if audio_end_ms == 0 and action != "truncate":
                if action == "delete":
                    up.send(oa.item_delete(item_id))
                continue
            up.send(oa.item_truncate(item_id, content_index, audio_end_ms))
            self.stats.truncations.append((item_id, audio_end_ms))
            done.append(Truncation(item_id, audio_end_ms, produced_ms))
        return done

    # ------------------------------------------------------------------ CallControl (for the behaviour)
    def now(self) -> float:
        return self._clock()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Any:
        assert self._call_later is not None, "timers need a loop"

        def fire() -> None:
            self._timers.discard(timer)
            if self.state is not State.ENDED:
                callback()

        timer = _Timer(self, self._call_later(delay_s, fire))
        self._timers.add(timer)
        return timer

    def send_upstream(self, data: bytes) -> None:
        if self._up is not None:
            self._up.send(data)

    def cancel_response(self, response_id: str) -> None:
        if self._up is not None and self.responses.cancel(response_id):
            self._up.send(oa.response_cancel(response_id))

    @property
    def response_active(self) -> bool:
        return self.responses.active is not None

    @property
    def audio_playing(self) -> bool:
        return self.playout.busy

    def play_local(self, tag: str, ulaw: bytes) -> None:
        if self.state is State.STREAMING and ulaw:
            self._local_seq += 1
            item_id = f"{LOCAL_PREFIX}{tag}-{self._local_seq}"
            self.playout.deliver(item_id, 0, ulaw, len(ulaw) / 8.0)
            self.playout.produced.pop(item_id, None)  # complete at once: not an item still generating

    def stop_local(self) -> None:
        if self.state is State.STREAMING:
            plan = self.playout.clear(self._clock())
            if plan and self._up is not None:  # model audio the clear cut: the model forgets it too
                self._truncate(self._up, plan)

    def after_playout(self, callback: Callable[[], None], max_wait_s: float) -> None:
        self._after_playout.append(callback)
        self.call_later(max_wait_s, self._played_or_timeout)
        self._check_played()

    def expect_end(self, reason: EndReason | None) -> None:
        """Twilio's coming stop or close is this reason (a REST hang-up or transfer was asked for)."""
        self._expected_end = reason

    def _check_played(self) -> None:
        if self.responses.active is None and not self.playout.busy:
            self._played_or_timeout()

    def _played_or_timeout(self) -> None:
        callbacks, self._after_playout = self._after_playout, []
        for callback in callbacks:
            callback()

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
        self.continuity.stop()
        if self.turns is not None:
            self.turns.stop()
        for timer in list(self._timers):
            timer.cancel()
        self._timers.clear()
        self._after_playout.clear()
        if self._up is not None:
            self._up.close(1000, "call ended")
            self._up = None
        close_reason = f"{reason}: {detail}" if detail else str(reason)
        self._twilio.close(reason.close_code, close_reason[:120], abort=reason is EndReason.TWILIO_STALLED)
        log.info("call ended: %s", close_reason, extra=self.log_extra())
        try:
            self.behaviour.on_end(reason.outcome, close_reason)
        except Exception:  # the call record must never keep a call from ending
            log.exception("behaviour.on_end failed", extra=self.log_extra())
        if self._on_end is not None:
            self._on_end(self)

    def twilio_closed(self) -> None:
        """The Twilio socket went away (hang-up, network): end the call, close upstream."""
        if not self.stream_sid:
            self.end(EndReason.TWILIO_GONE_BEFORE_START)
        else:
            self.end(self._expected_end or EndReason.TWILIO_DISCONNECTED)

    def log_extra(self) -> dict[str, Any]:
        return {"call_sid": self.call_sid, "stream_sid": self.stream_sid}
