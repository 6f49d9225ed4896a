"""What a simulated call observed: the object tests assert on.

All ``*_at`` times are event-loop times (``loop.time()``, seconds) in the simulator's process.
"Twilio time" events (audio played, marks reached, turns started) carry the simulated instant on the
Twilio media server; ``*_received_at`` / ``echoed_at`` are when a message left or reached the socket.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["CallRecord", "ClearRecord", "DtmfSent", "HeardChunk", "MarkEcho", "Outcome", "Received", "RestAction",
           "TurnStart"]


class Outcome(enum.StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"  # the caller hung up: stop + close sent by the simulator
    GATEWAY_CLOSED = "gateway_closed"  # the gateway closed the socket (or dropped TCP) first
    DROPPED = "dropped"  # CallScript.hangup_at_ms: connection aborted without stop/close
    REJECTED_BUSY = "rejected_busy"  # <Reject reason="busy"/>
    REJECTED = "rejected_rejected"  # <Reject/> or reason="rejected"
    NO_STREAM = "no_stream"  # valid TwiML without <Connect><Stream> (e.g. <Say>, <Hangup/>)
    WEBHOOK_FAILED = "webhook_failed"  # non-200, unreachable, or unparsable TwiML (11200/12100)
    HANDSHAKE_FAILED = "handshake_failed"  # stream URL refused or upgrade not 101 (31920 …)
    REST_COMPLETED = "rest_completed"  # REST update Status=completed: Twilio hung up (stop + close)
    REDIRECTED = "redirected"  # REST update with Twiml/Url: the stream ended (stop + close), new TwiML runs
    CANCELED = "canceled"  # REST Status=canceled (or completed) before the call was answered
    NOT_ANSWERED = "not_answered"  # an outbound call the callee did not answer (busy, no-answer, failed)


@dataclass(slots=True)
class Received:
    """One frame from the gateway: arrival time, its ``event`` (None if unparsable), raw wire data
    (None when ``record_payloads`` is off)."""

    at: float
    event: str | None
    raw: str | bytes | None


@dataclass(slots=True)
class HeardChunk:
    """One valid outbound ``media`` payload and how much of it the caller heard."""

    payload: bytes  # b"" when record_payloads is off; ``size`` is still exact
    size: int
    received_at: float
    start_at: float | None = None  # Twilio time its first byte played (None: never reached the buffer)
    played: int = 0  # bytes actually played before a clear or the end of the call
    seq: int = 0  # its place among the frames received (``CallRecord.received``): the stream's order

    @property
    def dropped(self) -> int:
        return self.size - self.played


@dataclass(slots=True)
class MarkEcho:
    """A ``mark`` from the gateway and its echo back."""

    name: str
    received_at: float
    played_at: float | None = None  # Twilio time the echo was produced (playhead passed / cleared)
    cleared: bool = False  # True: echoed because a clear flushed it, not because it played
    echoed_at: float | None = None  # when the echo was written to the socket (None: never sent)


@dataclass(slots=True)
class ClearRecord:
    received_at: float
    effect_at: float  # Twilio time the clear took effect (after latency)
    bytes_dropped: int
    marks_flushed: list[str]
    seq: int = 0  # its place among the frames received: a clear written with a chunk arrives with it


@dataclass(slots=True)
class TurnStart:
    index: int  # position in CallScript.turns
    at: float  # Twilio time the turn started
    stream_ms: float  # same instant in ms since stream start (first speech sample = stream_ms * 8)
    heard_ms: float  # how far into the current playback run the caller was (0 if none live)
    hangup: bool


@dataclass(slots=True)
class DtmfSent:
    at: float  # Twilio time the key was pressed (the message leaves after the usual latency)
    digit: str


@dataclass
class RestAction:
    """A REST update that changed the call (twilio.md#update-a-live-call)."""

    at: float  # loop time the REST request was processed
    kind: str  # "hangup" (Status=completed) | "cancel" (Status=canceled) | "redirect" (Twiml or Url)
    twiml: str | None = None  # the new TwiML (given, or fetched from url)
    url: str | None = None
    method: str | None = None
    dial: list[str] = field(default_factory=list)  # <Dial> targets of the new TwiML: numbers, sip:, client:
    effect_at: float | None = None  # Twilio time the stream ended because of it (None: no live stream)
    error: str | None = None  # fetching/parsing the new TwiML failed


@dataclass
class CallRecord:
    call_sid: str
    account_sid: str
    outcome: Outcome = Outcome.PENDING
    http_status: int | None = None  # webhook status, or the upgrade status when the handshake failed
    twiml: str | None = None
    after_connect: list[str] = field(default_factory=list)  # verbs after </Connect> (+ "action=…")
    stream_url: str | None = None  # the <Stream url> as signed (public)
    stream_sid: str | None = None
    subprotocol: str | None = None  # Sec-WebSocket-Protocol selected by the gateway
    custom_parameters: dict[str, str] = field(default_factory=dict)
    # (Twilio error/warning code, detail), every occurrence (Twilio logs 31950/31951 once per stream)
    violations: list[tuple[int, str]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    heard: list[HeardChunk] = field(default_factory=list)
    clears: list[ClearRecord] = field(default_factory=list)
    marks: list[MarkEcho] = field(default_factory=list)  # in echo order
    turns: list[TurnStart] = field(default_factory=list)
    caller_frames: list[bytes] = field(default_factory=list)  # μ-law of every media frame sent, in order
    caller_bytes_sent: int = 0
    media_sent: int = 0
    status_callbacks: list[tuple[str, int | None]] = field(default_factory=list)  # (StreamEvent, HTTP status)
    stream_started_at: float | None = None
    ended_at: float | None = None  # Twilio time playback/caller audio stopped
    closed_by: str | None = None  # "twilio" | "gateway"
    close_code: int | None = None  # the gateway's close code (its own close or its reply to ours)
    close_reason: str | None = None
    max_lag_ms: float = 0.0  # worst lateness of a scheduled send (event-loop overload)
    late_sends: int = 0  # sends more than 20 ms late
    dtmf: list[DtmfSent] = field(default_factory=list)  # keys pressed (CallScript.dtmf or send_dtmf)
    # The call as the REST API shows it.
    direction: str = "inbound"  # inbound | outbound-api
    from_: str = ""
    to: str = ""
    status: str = "ringing"  # queued | ringing | in-progress | completed | busy | no-answer | failed | canceled
    rest_actions: list[RestAction] = field(default_factory=list)
    call_status_callbacks: list[tuple[str, int | None]] = field(default_factory=list)  # (CallStatus, HTTP status)

    @property
    def hung_up_by_rest(self) -> bool:
        return self.outcome is Outcome.REST_COMPLETED

    @property
    def transferred_to(self) -> str | None:
        """The first ``<Dial>`` target of the TwiML a REST redirect put on the call, if any."""
        for action in self.rest_actions:
            if action.kind == "redirect" and action.dial:
                return action.dial[0]
        return None

    @property
    def unplayed_bytes(self) -> int:
        """Outbound audio Twilio received but the caller never heard (cleared, or cut by the end of the call)."""
        return sum(c.dropped for c in self.heard)

    def heard_bytes(self) -> bytes:
        """Every μ-law byte the caller heard, in playout order."""
        return b"".join(c.payload[:c.played] for c in self.heard)

    @property
    def heard_ms(self) -> float:
        return sum(c.played for c in self.heard) / 8

    def caller_audio(self) -> bytes:
        """Exactly the inbound audio the simulator sent (concatenated media payloads)."""
        return b"".join(self.caller_frames)

    def events(self, name: str) -> list[Received]:
        """Received gateway frames whose ``event`` is ``name``."""
        return [r for r in self.received if r.event == name]
