"""OpenAI Realtime API (GA) simulator over WebSocket, built on picows.

Faithful to docs/protocols/openai-realtime.md (see "What the OpenAI simulator models" there): GA
event names and shapes, every client event validated against the official openai-python schema (plus
unknown keys), an energy VAD on appended audio, barge-in with in-flight deltas,
truncate/cancel/active-response errors with the observed texts, the session duration cap, and an
agent's side of a session: scripted turns (``OpenAISimConfig.script``: speech and function calls),
function call outputs, user text items, out-of-band responses, input transcription and usage. Cheap
enough for thousands of sessions: audio comes from a precomputed bank with cached base64, audio
deltas are built from byte templates, and one shared timer paces every response (no task per
session).

    sim = OpenAIRealtimeSim(OpenAISimConfig(response_ms=(600,)))
    url = await sim.start()               # ws://127.0.0.1:PORT/v1/realtime?model=gpt-realtime
    ...                                   # point the gateway (or any client) at url
    session = sim.sessions[0]             # everything it saw and sent, with loop.time() stamps
    assert not sim.violations()
    await sim.stop()
"""
from __future__ import annotations

import asyncio
import binascii
import math
import socket
import ssl
import string
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from gateway.sim.openai_audio import BYTES_PER_MS, AudioBank, audio_bank, frame_rms
from gateway.sim.openai_schema import validate_client_event
from gateway.sim.openai_script import SimFunctionCall, SimTurn, default_tokens, text_tokens

__all__ = ["AssistantItem", "CancelRecord", "ClientEvent", "ErrorRecord", "FunctionCallItem", "FunctionOutput",
           "OpenAIRealtimeSim", "OpenAISimConfig", "RejectedUpgrade", "ResponseRecord", "SimFunctionCall",
           "SimSession", "SimTurn", "TextInput", "TruncateRecord", "UserItem"]

DEFAULT_MODEL = "gpt-realtime"
DEFAULT_INSTRUCTIONS = ("Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. "
                        "Act like a human, but remember that you aren't a human and that you can't do human things "
                        "in the real world.")
_WORDS = ("sure", "let", "me", "check", "that", "order", "for", "you", "it", "shipped", "yesterday", "and", "should",
          "arrive", "by", "friday", "is", "there", "anything", "else", "I", "can", "help", "with", "today")
_RATE_LIMITS = [{"name": "requests", "limit": 20000, "remaining": 19999, "reset_seconds": 0.003},
                {"name": "tokens", "limit": 4000000, "remaining": 3995000, "reset_seconds": 0.075}]
_MAX_RECORDS = 1000  # violations/errors kept per session (counters keep counting)
_CLOSE_GRACE_S = 2.0  # after our CLOSE frame, wait this long for the client's before dropping TCP
_TEXT = WSMsgType.TEXT


@dataclass
class OpenAISimConfig:
    """Simulator behaviour; defaults match the real service where it is known."""

    api_key: str = "sk-sim"
    response_ms: tuple[int, ...] = (3000,)  # audio length of successive items (cycled per session)
    items_per_response: int = 1  # assistant message items per response, streamed one after another
    chunk_ms: int = 100  # audio per response.output_audio.delta
    pace: float = 5.0  # delivery speed vs real time (5 = 100 ms of audio every 20 ms)
    first_audio_ms: int = 0  # model "thinking" time: response.created -> first delta (real models: a few 100 ms)
    inflight_deltas_after_cancel: int = 1  # deltas still sent after a VAD barge-in cancel
    vad_threshold_dbfs: float = -40.0  # energy VAD on appended audio (20 ms windows)
    vad_min_speech_ms: int = 60  # speech must last this long before speech_started
    session_max_s: float = 3600.0  # then error session_expired + close 1001
    # ``expires_at`` announces session_max_s unless set: a server ending the session earlier than
    # it said (no help for the client's rollover), to test surviving the cap itself
    announced_session_s: float | None = None
    rcvbuf_bytes: int = 0  # SO_RCVBUF of accepted sockets (0 = the kernel's); tests of a stalled reader
    reject_beta_header: bool = True  # `OpenAI-Beta` header → error beta_api_shape_disabled + close
    seed: int = 0
    record_audio: bool = True  # keep appended input audio bytes (off for load benches: counters only)
    record_server_events: bool = True  # keep (time, type) of every event sent (off for load benches)
    bank_s: int = 300  # seconds of distinct assistant audio per format (per-session uniqueness horizon)
    # What the model does on successive default-conversation responses (see openai_script.py); each
    # session starts at turn 0 (``SimSession.script`` may be replaced per session, e.g. in on_session).
    # Exhausted: the default answers above.
    script: tuple[SimTurn, ...] = ()
    filler_ms: int = 1200  # audio of an out-of-band response (conversation "none"); never from the script
    filler_text: str = "One moment please."  # its transcript (or text)
    args_chunk_chars: int = 16  # function call arguments per response.function_call_arguments.delta
    # Input transcription (only with audio.input.transcription set): transcript of the Nth committed
    # user audio turn = caller_transcripts[N % len], or "caller turn N+1" when empty; its events come
    # this long after the commit (the ASR runs asynchronously: they may land inside the response).
    caller_transcripts: tuple[str, ...] = ()
    transcription_delay_ms: int = 300


@dataclass
class ClientEvent:
    """A non-append client event as received (appends are only counted)."""

    type: str
    time: float
    event: dict[str, Any]


@dataclass
class ErrorRecord:
    """An ``error`` event the simulator sent."""

    time: float
    code: str | None
    message: str
    param: str | None = None
    event_id: str | None = None


@dataclass
class TruncateRecord:
    """A ``conversation.item.truncate`` and its outcome."""

    time: float
    item_id: str
    content_index: int
    audio_end_ms: int
    accepted: bool
    error: str | None = None  # error message when not accepted


@dataclass
class CancelRecord:
    """A ``response.cancel``; ``cancelled_response_id`` is None when nothing was active."""

    time: float
    response_id: str | None
    cancelled_response_id: str | None


@dataclass
class ResponseRecord:
    """One response: created by VAD or by ``response.create``.

    ``item_id`` is the first output item; ``item_ids`` lists every item actually started, in output order
    (with ``items_per_response`` > 1 a cancelled response lists only the items it got to).
    """

    response_id: str
    item_id: str
    trigger: str  # "vad" | "client"
    created_at: float
    status: str = "in_progress"  # completed | cancelled
    reason: str | None = None  # turn_detected | client_cancelled
    done_at: float | None = None
    item_ids: list[str] = field(default_factory=list)  # every output item started (messages and function calls)
    conversation: bool = True  # False: out-of-band (conversation "none")
    instructions: str | None = None  # the response.create override, if any
    metadata: dict[str, Any] | None = None
    script_index: int | None = None  # the SimTurn it played (None: default answer or out-of-band filler)
    call_ids: list[str] = field(default_factory=list)  # call_id of each function call item, in order
    usage: dict[str, Any] | None = None  # response.done's usage


@dataclass
class UserItem:
    """A committed user audio turn, as offsets on the session input timeline (ms)."""

    item_id: str
    start_ms: float
    end_ms: float
    committed_at: float
    by_vad: bool
    transcript: str | None = None  # set once input_audio_transcription.completed was sent


@dataclass
class FunctionCallItem:
    """A function call the simulated model made (``status`` completed, or incomplete if its response
    was cancelled while the arguments streamed: ``arguments`` is then what was generated)."""

    item_id: str
    response_id: str
    call_id: str
    name: str
    planned_arguments: str
    created_at: float
    conversation: bool = True
    status: str = "in_progress"  # completed | incomplete
    arguments: str = ""  # streamed so far
    declared: bool = True  # False: the tool was not declared (or tool_choice forbade it): a violation


@dataclass
class FunctionOutput:
    """A ``function_call_output`` item the client created (accepted: its call_id was in the conversation)."""

    time: float
    item_id: str
    call_id: str
    name: str  # of the function call it answers
    output: str


@dataclass
class TextInput:
    """A ``message`` item with ``input_text`` content the client created (user text, DTMF, system notes)."""

    time: float
    item_id: str
    role: str
    text: str


@dataclass
class AssistantItem:
    """An assistant message the simulator generated.

    ``generated_bytes`` is the item's server-side audio: what was sent, plus at a barge-in the
    in-flight deltas (generated before the cancel, delivered just after). ``delivered_bytes`` is
    what was actually sent. Truncation limits are checked against ``generated_ms`` (floor).
    """

    item_id: str
    response_id: str
    output_format: str  # audio/pcmu | audio/pcma | audio/pcm; "" for a text-only response
    planned_bytes: int
    created_at: float
    status: str = "in_progress"  # completed | incomplete
    generated_bytes: int = 0
    delivered_bytes: int = 0
    transcript: str = ""  # transcript (or text) sent so far
    truncated_ms: int | None = None
    conversation: bool = True  # False: an out-of-band response's item (not in the conversation)
    _bank: AudioBank | None = field(default=None, repr=False)
    _first_chunk: int = field(default=0, repr=False)

    @property
    def bytes_per_ms(self) -> int:
        return BYTES_PER_MS.get(self.output_format, 0)

    @property
    def audio(self) -> bytes:
        """The full generated audio, in the item's output format (= the concatenated deltas once delivered)."""
        return self._bank.audio(self._first_chunk, self.generated_bytes) if self._bank else b""

    @property
    def delivered_audio(self) -> bytes:
        return self.audio[:self.delivered_bytes]

    @property
    def generated_ms(self) -> int:
        return self.generated_bytes // self.bytes_per_ms if self._bank else 0

    @property
    def delivered_ms(self) -> int:
        return self.delivered_bytes // self.bytes_per_ms if self._bank else 0

    @property
    def audio_ms(self) -> int:
        """Server-side audio length now: the truncation point if truncated, else generated_ms."""
        return self.generated_ms if self.truncated_ms is None else self.truncated_ms


@dataclass
class RejectedUpgrade:
    """A WebSocket upgrade refused with an HTTP status."""

    time: float
    path: str
    status: int
    reason: str


class _Stream:
    """The delivery state of one in-progress response.

    A response streams its output items one after another: ``item`` is the current one (output
    ``index``; None before the first and in a response without items), ``items`` every item started
    so far, ``plan`` the items still to start (a ``SimFunctionCall``, a ``_Message`` or None for a
    default audio item of the ``response_ms`` cycle). ``tokens``, ``tokens_sent``, ``chunks_sent``
    and the delta template ``mid`` belong to the current item (transcript deltas of a message, or
    argument chunks of a function call).
    """

    __slots__ = (
        "cancel_countdown",
        "cancel_reason",
        "chunks_sent",
        "context",
        "conversation",
        "format",
        "head",
        "index",
        "item",
        "items",
        "metadata",
        "mid",
        "modalities",
        "next_due",
        "plan",
        "record",
        "tokens",
        "tokens_sent",
        "tool_choice",
        "tools",
        "voice",
    )

    def __init__(self, record: ResponseRecord, fmt: dict[str, Any], voice: Any, modalities: list[str],
                 conversation: bool, plan: list[SimFunctionCall | _Message | None], metadata: Any) -> None:
        self.record, self.format, self.voice = record, fmt, voice
        self.modalities, self.conversation, self.metadata = modalities, conversation, metadata
        self.items: list[AssistantItem | FunctionCallItem] = []
        self.item: AssistantItem | FunctionCallItem | None = None
        self.index = -1
        self.plan = plan
        self.tokens: list[str] = []
        self.tokens_sent = self.chunks_sent = 0
        self.next_due = 0.0
        self.cancel_countdown: int | None = None
        self.cancel_reason: str | None = None
        self.head = self.mid = b""
        self.tools: list[dict[str, Any]] = []
        self.tool_choice: Any = "auto"
        self.context: tuple[int, int] = (0, 0)  # (text, audio) input tokens when the response started


@dataclass(frozen=True)
class _Message:
    """A planned assistant message: its audio length and transcript deltas (script or filler)."""

    audio_ms: int
    tokens: tuple[str, ...]


class _Pacer:
    """One shared timer driving every streaming response of a simulator; idle when nothing streams."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.loop, self.period = loop, period
        self.streams: dict[_Stream, SimSession] = {}  # insertion-ordered set
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0

    def add(self, stream: _Stream, session: SimSession) -> None:
        if self._handle is None:
            self._next = self.loop.time() + self.period
            self._handle = self.loop.call_at(self._next, self._tick)
        # A stream added while a tick runs (a queued response) starts on the following tick.
        stream.next_due = self._next if self._next > self.loop.time() else self._next + self.period
        self.streams[stream] = session

    def discard(self, stream: _Stream) -> None:
        self.streams.pop(stream, None)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.streams.clear()

    def _tick(self) -> None:
        now = self.loop.time()
        horizon = now + self.period / 2  # call_at may fire a hair early
        for stream, session in list(self.streams.items()):
            if stream in self.streams:
                session._pump(stream, horizon)
        if not self.streams:
            self._handle = None
            return
        self._next += self.period
        if self._next < now:  # the loop lagged: keep the grid, deltas catch up by due time
            self._next = now + self.period
        self._handle = self.loop.call_at(self._next, self._tick)


_B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a bijection on 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _b62(x: int, width: int) -> str:
    out = []
    for _ in range(width):
        x, r = divmod(x, 62)
        out.append(_B62[r])
    return "".join(out)


class SimSession(WSListener):
    """One simulated Realtime session (a picows listener) and everything it recorded."""

    def __init__(self, sim: OpenAIRealtimeSim, index: int, path: str, query: dict[str, str],
                 headers: dict[str, str]) -> None:
        super().__init__()
        cfg = sim.config
        self.sim, self.index, self.path, self.query, self.headers = sim, index, path, query, headers
        self.model: str | None = query.get("model")
        self.beta_header: str | None = headers.get("openai-beta")
        self.transport: WSTransport | None = None
        self.session_id = sim._new_id("sess_")
        self.conversation_id = sim._new_id("conv_")
        loop, pacer = sim._loop, sim._pacer
        assert loop is not None and pacer is not None, "sessions exist only while the simulator runs"
        self._loop, self._cfg, self._pacer = loop, cfg, pacer
        self.connected_at: float = loop.time()
        self.session_config: dict[str, Any] = self._default_session()
        # What the client did.
        self.client_events: list[ClientEvent] = []
        self.client_event_counts: dict[str, int] = {}
        self.append_count = 0
        self.append_bytes = 0
        self.first_append_at: float | None = None
        self.last_append_at: float | None = None
        self.input_audio = bytearray()  # appended bytes in the input format of the time (if record_audio)
        self.input_ms = 0.0  # input timeline: ms of all audio appended
        self.truncates: list[TruncateRecord] = []
        self.cancels: list[CancelRecord] = []
        # What the simulator did.
        self.violations: list[str] = []
        self.violation_count = 0
        self.errors: list[ErrorRecord] = []
        self.error_count = 0
        self.user_items: list[UserItem] = []
        self.assistant_items: list[AssistantItem] = []
        self.responses: list[ResponseRecord] = []
        self.server_events: list[tuple[float, str]] = []  # (time, type) if record_server_events
        self.speech_started_at: list[float] = []
        self.speech_stopped_at: list[float] = []
        # How it ended.
        self.client_closed = False  # the client sent CLOSE first or dropped the connection
        self.client_close_code: int | None = None
        self.server_close_code: int | None = None
        self.close_reason: str | None = None
        self.disconnected_at: float | None = None
        # Internals.
        tag = _b62(_mix64(sim._id_salt ^ index), 11)  # 62**11 > 2**64: distinct per session
        self._event_prefix = "event_" + tag
        self._event_prefix_b = self._event_prefix.encode()
        self._event_n = 0
        self._conversation: dict[str, dict[str, Any]] = {}  # item_id -> item (ordered)
        self._assistant: dict[str, AssistantItem] = {}
        self._user: dict[str, UserItem] = {}
        self._active: _Stream | None = None  # the default-conversation response
        self._out_of_band: dict[str, _Stream] = {}
        self._auto_response_pending = False
        self._init_agent_state(cfg)
        self._bank_cursor = _mix64(cfg.seed * 1_000_003 + index)  # per-session start in the audio bank
        self._buffer_start_ms = 0.0
        self._committed_input_ms = 0.0
        self._paused = False
        self._closing = False
        self._fragments: bytearray | None = None
        self._fragment_type: WSMsgType | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._vad_threshold_rms = 32768 * 10 ** (cfg.vad_threshold_dbfs / 20)
        self._vad_resync()

    def _init_agent_state(self, cfg: OpenAISimConfig) -> None:
        """What the model does and what the client fed it (script, tools, transcripts, usage)."""
        self.function_calls: list[FunctionCallItem] = []  # every function call the model made, in order
        self.function_outputs: list[FunctionOutput] = []  # accepted function_call_output items, in order
        self.text_inputs: list[TextInput] = []  # input_text messages the client created (user text, DTMF)
        self.script: tuple[SimTurn, ...] = tuple(cfg.script)  # replaceable before the response it scripts
        self.script_pos = 0  # next turn to play
        self._audio_responses = 0  # audio items started (any response): voice lock, filler words
        self._cycle = 0  # default audio items started: position in the response_ms cycle
        self._transcribed = 0  # user audio turns transcribed
        self._last_context = (0, 0)  # (text, audio) input tokens of the previous response: the cached prefix
        self._timers: set[asyncio.TimerHandle] = set()
        self.frozen = False  # freeze(): a half-open connection

    # ---------------------------------------------------------------- public helpers

    def send_event(self, event: dict[str, Any]) -> None:
        """Send any server event as is (``event_id`` added if missing) — for failure injection."""
        if "event_id" not in event:
            event = {**event, "event_id": self._next_event_id()}
        self._write(event.get("type", ""), orjson.dumps(event))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a CLOSE frame and drop the connection once the client answers (or after 2 s)."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self.server_close_code = code
        if self.close_reason is None:
            self.close_reason = f"server closed {code}" + (f": {reason}" if reason else "")
        self._stop_streams()
        self.transport.send_close(WSCloseCode(code), reason.encode())
        self._close_timer = self._loop.call_later(_CLOSE_GRACE_S, self.transport.disconnect)

    def reset(self) -> None:
        """Failure injection: the TCP connection is reset (no CLOSE frame, as a crashed server)."""
        if self.transport is not None:
            self._stop_streams()
            self.transport.underlying_transport.abort()

    def freeze(self) -> None:
        """Failure injection: a half-open upstream. Nothing is read (pings included: no pong) and
        nothing is sent any more; the socket stays open."""
        if self.transport is not None:
            self.frozen = True
            self._stop_streams()
            self.transport.underlying_transport.pause_reading()

    def expire(self) -> None:
        """Failure injection: the session cap arrives now (``error`` session_expired, CLOSE 1001)."""
        if self.transport is not None and not self._closing:
            self._expire()

    def stop_reading(self) -> None:
        """Failure injection: the server stops reading (its socket buffer fills, the client's
        writes back up) but keeps sending."""
        if self.transport is not None:
            self.transport.underlying_transport.pause_reading()

    def locate(self, audio: bytes) -> tuple[AssistantItem, int] | None:
        """Find which generated item contains this output-format slice, and at which byte offset."""
        for item in self.assistant_items:
            offset = item.audio.find(audio)
            if offset >= 0:
                return item, offset
        return None

    @property
    def input_format(self) -> str:
        return self.session_config["audio"]["input"]["format"]["type"]

    @property
    def output_format(self) -> str:
        return self.session_config["audio"]["output"]["format"]["type"]

    # ---------------------------------------------------------------- picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.connected_at = self._loop.time()
        if self.beta_header is not None:
            self._violation(f"OpenAI-Beta header sent ({self.beta_header!r}); the beta interface is retired")
            if self._cfg.reject_beta_header:
                self._send_error("beta_api_shape_disabled", "The Realtime API beta interface has been disabled. "
                                 "Remove the 'OpenAI-Beta: realtime=v1' header and use the GA event shapes.")
                self.close(1008, "beta_api_shape_disabled")
                return
        self._expiry = self._loop.call_later(self._cfg.session_max_s, self._expire)
        self._send("session.created", session=self.session_config)
        self._send("conversation.created", conversation={"id": self.conversation_id, "object": "realtime.conversation"})
        if self.sim.on_session is not None:
            self.sim.on_session(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is _TEXT and frame.fin:
            self._on_text(frame.get_payload_as_bytes())
        elif kind is WSMsgType.CLOSE:
            self.client_close_code = frame.get_close_code().value
            if not self._closing:  # the client closes first: answer, then drop TCP
                self.client_closed = True
                self.close_reason = f"client closed {self.client_close_code}: {frame.get_close_reason() or ''}"
                self._closing = True
                self._stop_streams()
                transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind is _TEXT or kind is WSMsgType.BINARY or kind is WSMsgType.CONTINUATION:
            self._on_fragment(kind, frame)

    def _on_fragment(self, kind: WSMsgType, frame: WSFrame) -> None:
        """Reassemble fragmented messages (picows hands over raw frames)."""
        if kind is not WSMsgType.CONTINUATION:
            self._fragment_type, self._fragments = kind, bytearray()
        if self._fragments is None:
            return
        self._fragments += frame.get_payload_as_memoryview()
        if frame.fin:
            data, msg_type, self._fragments = bytes(self._fragments), self._fragment_type, None
            if msg_type is _TEXT:
                self._on_text(data)
            else:
                self._on_binary()

    def on_ws_disconnected(self, _transport: WSTransport) -> None:
        self.disconnected_at = self._loop.time()
        if not self._closing:
            self.client_closed = True
            self.close_reason = "connection lost (no CLOSE frame)"
        self._closing = True
        self._stop_streams()
        for handle in (self._expiry, self._close_timer, *self._timers):
            if handle is not None:
                handle.cancel()
        self._timers.clear()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    # ---------------------------------------------------------------- sending

    def _next_event_id(self) -> str:
        self._event_n += 1
        return f"{self._event_prefix}{self._event_n}"

    def _send(self, type_: str, **fields: Any) -> None:
        self._write(type_, orjson.dumps({"type": type_, "event_id": self._next_event_id(), **fields}))

    def _write(self, type_: str, data: bytes) -> None:
        if self.transport is None or self._closing or self.frozen:
            return
        self.transport.send(_TEXT, data)
        if self._cfg.record_server_events:
            self.server_events.append((self._loop.time(), type_))

    def _send_error(self, code: str | None, message: str, param: str | None = None, event_id: str | None = None,
                    error_type: str = "invalid_request_error") -> None:
        self.error_count += 1
        if len(self.errors) < _MAX_RECORDS:
            self.errors.append(ErrorRecord(self._loop.time(), code, message, param, event_id))
        self._send("error", error={"type": error_type, "code": code, "message": message, "param": param,
                                   "event_id": event_id})

    def _violation(self, text: str) -> None:
        self.violation_count += 1
        if len(self.violations) < _MAX_RECORDS:
            self.violations.append(text)

    # ---------------------------------------------------------------- receiving

    def _on_binary(self) -> None:
        self._violation("binary frame received (the Realtime API takes JSON text frames only)")
        self._send_error("invalid_json", "Binary frames are not supported. Send JSON events as text frames.")

    def _on_text(self, data: bytes) -> None:
        if self._closing:  # after our CLOSE frame the server reads nothing more
            return
        now = self._loop.time()
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self._violation(f"non-JSON text frame: {data[:80]!r}")
            self._send_error("invalid_json", f"We could not parse the JSON body of your request. ({exc})")
            return
        if not isinstance(event, dict):
            self._violation(f"event is not a JSON object: {data[:80]!r}")
            self._send_error("invalid_type", "Invalid type for event: expected an object.")
            return
        type_ = event.get("type")
        if type_ == "input_audio_buffer.append" and isinstance(event.get("audio"), str) and (
                len(event) == 2 or (len(event) == 3 and isinstance(event.get("event_id"), str))):
            self._on_append(event["audio"], event.get("event_id"), now)  # fast path: exactly the append schema
            return
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if type_ != "input_audio_buffer.append":  # appends are only counted (append_count)
            self.client_event_counts[str(type_)] = self.client_event_counts.get(str(type_), 0) + 1
            self.client_events.append(ClientEvent(str(type_), now, event))
        _, errors = validate_client_event(event)
        if errors:
            self._violation(f"{type_}: " + "; ".join(e.message for e in errors))
            self._send_error(errors[0].code, errors[0].message, errors[0].param, event_id)
            return
        self._HANDLERS[event["type"]](self, event, event_id, now)  # a valid event: a known type

    # ---------------------------------------------------------------- session

    def _default_session(self) -> dict[str, Any]:
        pcm = {"type": "audio/pcm", "rate": 24000}
        expires_at = int(time.time() + (self._cfg.announced_session_s or self._cfg.session_max_s))
        return {
            "type": "realtime", "object": "realtime.session", "id": self.session_id,
            "model": self.model or DEFAULT_MODEL, "output_modalities": ["audio"], "instructions": DEFAULT_INSTRUCTIONS,
            "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "truncation": "auto",
            "prompt": None, "expires_at": expires_at, "include": None,
            "audio": {
                "input": {"format": dict(pcm), "transcription": None, "noise_reduction": None,
                          "turn_detection": _turn_detection({"type": "server_vad"})},
                "output": {"format": dict(pcm), "voice": "marin", "speed": 1.0},
            },
        }

    def _on_session_update(self, event: dict[str, Any], event_id: str | None, _now: float) -> None:
        update = event["session"]
        if update["type"] != "realtime":
            self._send_error("invalid_value", "Cannot change the session type of a realtime session to "
                             f"'{update['type']}'.", "session.type", event_id)
            return
        if self._both_modalities(update, "session.output_modalities", event_id):
            return
        cfg = self.session_config
        # The SDK types let every setting be null. Null switches turn_detection, transcription and
        # noise_reduction off; a null format or output_modalities is no setting at all, so it is
        # ignored like an omitted key (storing it broke the session: formats and responses need one).
        audio = {side: {key: value for key, value in (settings or {}).items() if value is not None or key != "format"}
                 for side, settings in (update.get("audio") or {}).items()}
        voice = audio.get("output", {}).get("voice")
        if voice is not None and voice != cfg["audio"]["output"]["voice"] and self._audio_responses:
            self._send_error("cannot_update_voice", "Cannot update a conversation's voice if assistant audio is "
                             "present.", "session.audio.output.voice", event_id)
            return
        for key, value in update.items():
            if key not in ("audio", "model", "type") and (value is not None or key != "output_modalities"):
                cfg[key] = value  # the model comes from the URL
        for side, settings in audio.items():
            for key, value in settings.items():
                if key == "format":
                    cfg["audio"][side][key] = _audio_format(value)
                elif key == "turn_detection" and value is not None:
                    cfg["audio"][side][key] = _turn_detection(value)
                else:
                    cfg["audio"][side][key] = value
        if {"format", "turn_detection"} & set(audio.get("input", {})):
            self._vad_resync()
        self._send("session.updated", session=cfg)
        if self.sim.on_session_update is not None:
            self.sim.on_session_update(self)

    def _both_modalities(self, params: dict[str, Any], param: str, event_id: str | None) -> bool:
        """The API answers audio or text, never both at once: error out on ``["text", "audio"]``."""
        if len(set(params.get("output_modalities") or ())) < 2:
            return False
        self._send_error("invalid_value", "Invalid 'output_modalities': 'audio' and 'text' cannot be requested "
                         "together. Use ['audio'] (audio with transcript) or ['text'].", param, event_id)
        return True

    # ---------------------------------------------------------------- input audio + VAD

    def _vad_resync(self) -> None:
        """Restart the VAD at the current end of the input timeline (new input format or turn detection)."""
        self._in_fmt = self.input_format
        self._td: dict[str, Any] | None = self.session_config["audio"]["input"]["turn_detection"]
        self._in_bpm = BYTES_PER_MS[self._in_fmt]
        self._vad_window = 20 * self._in_bpm
        self._vad_carry = b""
        self._vad_pos_ms = self.input_ms
        self._vad_reset()

    def _vad_reset(self) -> None:
        self._speaking = False
        self._loud_run_ms = 0
        self._loud_start_ms = 0.0
        self._quiet_run_ms = 0
        self._speech_item_id: str | None = None
        self._speech_start_ms = 0.0

    def _on_append(self, audio_b64: str, event_id: str | None, now: float) -> None:
        self.append_count += 1
        if self.first_append_at is None:
            self.first_append_at = now
        self.last_append_at = now
        try:
            audio = binascii.a2b_base64(audio_b64, strict_mode=True)
        except binascii.Error as exc:
            self._violation(f"input_audio_buffer.append: invalid base64 audio ({exc})")
            self._send_error("invalid_value", "Invalid 'audio': expected base64-encoded audio bytes.", "audio",
                             event_id)
            return
        self.append_bytes += len(audio)
        if self._cfg.record_audio:
            self.input_audio += audio
        self.input_ms += len(audio) / self._in_bpm
        if self._td is None:
            return
        if self._vad_carry:
            audio = self._vad_carry + audio
        window, n = self._vad_window, len(audio)
        whole = n - n % window
        for start in range(0, whole, window):
            self._vad_window_done(audio[start:start + window] if n != window else audio)
        self._vad_carry = audio[whole:]

    def _vad_window_done(self, frame: bytes) -> None:
        start_ms = self._vad_pos_ms
        self._vad_pos_ms = end_ms = start_ms + 20
        loud = frame_rms(self._in_fmt, frame) >= self._vad_threshold_rms
        td = self._td
        assert td is not None  # _on_append runs the VAD only with turn detection on
        if not self._speaking:
            if not loud:
                self._loud_run_ms = 0
                return
            if self._loud_run_ms == 0:
                self._loud_start_ms = start_ms
            self._loud_run_ms += 20
            if self._loud_run_ms >= self._cfg.vad_min_speech_ms:
                self._speech_started(td)
        elif loud:
            self._quiet_run_ms = 0
        else:
            self._quiet_run_ms += 20
            if self._quiet_run_ms >= td.get("silence_duration_ms", 500):
                self._speech_stopped(td, end_ms)

    def _speech_started(self, td: dict[str, Any]) -> None:
        self._speaking, self._quiet_run_ms = True, 0
        self._speech_item_id = self.sim._new_id("item_")
        self._speech_start_ms = max(self._buffer_start_ms, self._loud_start_ms - td.get("prefix_padding_ms", 300), 0.0)
        self.speech_started_at.append(self._loop.time())
        self._send("input_audio_buffer.speech_started", audio_start_ms=int(self._speech_start_ms),
                   item_id=self._speech_item_id)
        if td.get("interrupt_response", True) and self._active is not None and self._active.cancel_countdown is None:
            self._cancel_by_vad(self._active)

    def _speech_stopped(self, td: dict[str, Any], end_ms: float) -> None:
        item_id, start_ms = self._speech_item_id, self._speech_start_ms
        assert item_id is not None  # set by _speech_started
        self._vad_reset()
        self.speech_stopped_at.append(self._loop.time())
        self._send("input_audio_buffer.speech_stopped", audio_end_ms=int(end_ms), item_id=item_id)
        self._commit(item_id, start_ms, end_ms, by_vad=True)
        if td.get("create_response", True):
            if self._active is None:
                self._start_response("vad", {})
            else:
                self._auto_response_pending = True

    def _commit(self, item_id: str, start_ms: float, end_ms: float, by_vad: bool) -> None:
        previous = self._last_item_id()
        self._buffer_start_ms = end_ms
        self._committed_input_ms += end_ms - start_ms
        user = UserItem(item_id, start_ms, end_ms, self._loop.time(), by_vad)
        self.user_items.append(user)
        self._user[item_id] = user
        item = {"id": item_id, "type": "message", "object": "realtime.item", "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        self._conversation[item_id] = item
        self._send("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        self._send("conversation.item.added", previous_item_id=previous, item=item)
        self._send("conversation.item.done", previous_item_id=previous, item=item)
        transcription = self.session_config["audio"]["input"]["transcription"]
        if transcription is not None:
            n = self._transcribed
            self._transcribed += 1
            texts = self._cfg.caller_transcripts
            transcript = texts[n % len(texts)] if texts else f"caller turn {n + 1}"
            model = str(transcription.get("model") or "whisper-1")
            self._later(self._cfg.transcription_delay_ms / 1000, self._transcribe, user, model, transcript)

    def _transcribe(self, user: UserItem, model: str, transcript: str) -> None:
        """The ASR's result for one committed user turn: deltas (streaming models), then completed.

        whisper-1 is billed by duration and sends no deltas; the gpt-4o transcribe models are billed by
        tokens (simulator approximation: 1 audio token per 100 ms, 1 text token per 4 characters).
        """
        item_id, seconds = user.item_id, (user.end_ms - user.start_ms) / 1000
        usage: dict[str, Any]
        if model == "whisper-1":
            usage = {"type": "duration", "seconds": round(seconds, 3)}
        else:
            tokens = text_tokens(transcript)
            step = max(1, -(-len(tokens) // 3))
            for i in range(0, len(tokens), step):
                self._send("conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0,
                           delta="".join(tokens[i:i + step]))
            audio_tokens, text_out = math.ceil(seconds * 10), _text_tokens(transcript)
            usage = {"type": "tokens", "input_tokens": audio_tokens, "output_tokens": text_out,
                     "total_tokens": audio_tokens + text_out,
                     "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens}}
        user.transcript = transcript
        item = self._conversation.get(item_id)
        if item is not None and item.get("content"):
            item["content"][0]["transcript"] = transcript
        self._send("conversation.item.input_audio_transcription.completed", item_id=item_id, content_index=0,
                   transcript=transcript, usage=usage)

    def _later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` after ``delay`` s (at once if 0), unless the session is over by then."""
        if delay <= 0:
            callback(*args)
            return

        def fire() -> None:
            self._timers.discard(handle)
            if not self._closing:
                callback(*args)
        handle = self._loop.call_later(delay, fire)
        self._timers.add(handle)

    def _on_commit(self, _event: dict[str, Any], event_id: str | None, _now: float) -> None:
        buffered = self.input_ms - self._buffer_start_ms
        if buffered < 100:
            self._send_error("input_audio_buffer_commit_empty", "Error committing input audio buffer: buffer too "
                             f"small. Expected at least 100ms of audio, but buffer only has {buffered:.2f}ms of audio.",
                             None, event_id)
            return
        self._vad_reset()
        self._commit(self.sim._new_id("item_"), self._buffer_start_ms, self.input_ms, by_vad=False)

    def _on_clear(self, _event: dict[str, Any], _event_id: str | None, _now: float) -> None:
        self._buffer_start_ms = self.input_ms
        self._vad_reset()
        self._send("input_audio_buffer.cleared")

    # ---------------------------------------------------------------- responses

    def _on_response_create(self, event: dict[str, Any], event_id: str | None, _now: float) -> None:
        params = event.get("response") or {}
        if self._both_modalities(params, "response.output_modalities", event_id):
            return
        if params.get("conversation", "auto") != "none" and self._active is not None:
            self._send_error("conversation_already_has_active_response", "Conversation already has an active "
                             f"response in progress: {self._active.record.response_id}. Wait until the response is "
                             "finished before creating a new one.", None, event_id)
            return
        self._start_response("client", params)

    def _plan(self, in_conversation: bool, text_only: bool) -> tuple[list[SimFunctionCall | _Message | None],
                                                                      int | None]:
        """The output items of a new response and the script turn it plays (None: not scripted)."""
        cfg = self._cfg
        if not in_conversation:  # out-of-band: filler, never the script
            return [_Message(cfg.filler_ms, tuple(text_tokens(cfg.filler_text)))], None
        if self.script_pos >= len(self.script):
            return [None] * max(1, cfg.items_per_response), None
        index = self.script_pos
        self.script_pos += 1
        turn = self.script[index]
        plan: list[SimFunctionCall | _Message | None] = []
        audio_ms = turn.speech_ms
        if audio_ms > 0 or (text_only and turn.text):
            tokens = text_tokens(turn.text) if turn.text else []
            if not tokens:
                tokens = default_tokens(self._filler_words(audio_ms))
            plan.append(_Message(audio_ms, tuple(tokens)))
        plan.extend(turn.calls)
        return plan, index

    def _filler_words(self, audio_ms: int) -> list[str]:
        return [_WORDS[(self._audio_responses * 7 + i) % len(_WORDS)] for i in range(max(1, audio_ms // 400))]

    def _start_response(self, trigger: str, params: dict[str, Any]) -> None:
        cfg, sim = self.session_config, self.sim
        now = self._loop.time()
        out = (params.get("audio") or {}).get("output") or {}
        fmt = _audio_format(out["format"]) if out.get("format") else cfg["audio"]["output"]["format"]
        voice = out.get("voice", cfg["audio"]["output"]["voice"])
        modalities = params.get("output_modalities") or cfg["output_modalities"]
        in_conversation = params.get("conversation", "auto") != "none"
        plan, script_index = self._plan(in_conversation, "audio" not in modalities)
        record = ResponseRecord(sim._new_id("resp_"), sim._new_id("item_"), trigger, now,
                                conversation=in_conversation, instructions=params.get("instructions"),
                                metadata=params.get("metadata"), script_index=script_index)
        stream = _Stream(record, fmt, voice, modalities, in_conversation, plan, params.get("metadata"))
        stream.tools = params["tools"] if params.get("tools") is not None else cfg["tools"] or []
        stream.tool_choice = params.get("tool_choice") or cfg["tool_choice"]
        stream.context = self._context_tokens(params)
        stream.head = b'{"type":"response.output_audio.delta","event_id":"' + self._event_prefix_b
        self.responses.append(record)
        if in_conversation:
            self._active = stream
        else:
            self._out_of_band[record.response_id] = stream
        self._send("response.created", response=self._response_json(stream))
        self._send("rate_limits.updated", rate_limits=_RATE_LIMITS)
        if stream.plan:
            self._start_item(stream, record.item_id)
        self._pacer.add(stream, self)
        stream.next_due += self._cfg.first_audio_ms / 1000

    def _start_item(self, stream: _Stream, item_id: str | None = None) -> None:
        """Create the response's next planned output item and open it (output_item.added, …)."""
        spec = stream.plan.pop(0)
        item_id = item_id or self.sim._new_id("item_")
        record = stream.record
        stream.index = len(stream.items)
        stream.tokens_sent = stream.chunks_sent = 0
        record.item_ids.append(item_id)
        if isinstance(spec, SimFunctionCall):
            self._start_function_call(stream, spec, item_id)
            return
        now = self._loop.time()
        fmt = stream.format
        if spec is None:  # a default item: the response_ms cycle and filler words
            audio_ms = self._cfg.response_ms[self._cycle % len(self._cfg.response_ms)]
            tokens = default_tokens(self._filler_words(audio_ms))
        else:
            audio_ms, tokens = spec.audio_ms, list(spec.tokens)
        if "audio" in stream.modalities:
            bank = audio_bank(fmt["type"], self._cfg.seed, self._cfg.chunk_ms, self._cfg.bank_s)
            item = AssistantItem(item_id, record.response_id, fmt["type"], audio_ms * BYTES_PER_MS[fmt["type"]],
                                 now, conversation=stream.conversation, _bank=bank, _first_chunk=self._bank_cursor)
            self._bank_cursor += -(-item.planned_bytes // bank.chunk_bytes)
            self._audio_responses += 1
            if spec is None:
                self._cycle += 1
        else:
            item = AssistantItem(item_id, record.response_id, "", 0, now, conversation=stream.conversation)
        stream.item = item
        stream.items.append(item)
        stream.tokens = tokens
        stream.mid = (f'","response_id":"{record.response_id}","item_id":"{item_id}","output_index":{stream.index},'
                      '"content_index":0,"delta":"').encode()
        self.assistant_items.append(item)
        self._assistant[item_id] = item
        self._send("response.output_item.added", response_id=record.response_id, output_index=stream.index,
                   item=self._item_json(item))
        if stream.conversation:
            previous = self._last_item_id()
            self._conversation[item_id] = self._item_json(item)
            self._send("conversation.item.added", previous_item_id=previous, item=self._item_json(item))
        part = {"type": "audio", "transcript": ""} if item.output_format else {"type": "text", "text": ""}
        self._send("response.content_part.added", **self._ids(stream), part=part)

    def _start_function_call(self, stream: _Stream, spec: SimFunctionCall, item_id: str) -> None:
        record = stream.record
        call = FunctionCallItem(item_id, record.response_id, spec.call_id or self.sim._new_id("call_")[:21],
                                spec.name, spec.arguments, self._loop.time(), conversation=stream.conversation)
        call.declared = self._tool_allowed(stream, spec.name)
        record.call_ids.append(call.call_id)
        stream.item = call
        stream.items.append(call)
        size = max(1, self._cfg.args_chunk_chars)
        stream.tokens = [spec.arguments[i:i + size] for i in range(0, len(spec.arguments), size)] or [""]
        self.function_calls.append(call)
        self._send("response.output_item.added", response_id=record.response_id, output_index=stream.index,
                   item=self._item_json(call))
        if stream.conversation:
            previous = self._last_item_id()
            self._conversation[item_id] = self._item_json(call)
            self._send("conversation.item.added", previous_item_id=previous, item=self._item_json(call))

    def _tool_allowed(self, stream: _Stream, name: str) -> bool:
        """The real model only calls declared function tools, as tool_choice allows: anything else in
        the script is a test bug, reported as a violation (the call is still streamed)."""
        declared = [t.get("name") for t in stream.tools if isinstance(t, dict) and t.get("type") == "function"]
        choice = stream.tool_choice
        problem = None
        if name not in declared:
            problem = f"'{name}' is not a declared function tool (declared: {declared})"
        elif choice == "none":
            problem = f"'{name}' called but tool_choice is 'none'"
        elif isinstance(choice, dict) and choice.get("name") not in (None, name):
            problem = f"'{name}' called but tool_choice forces '{choice.get('name')}'"
        if problem is None:
            return True
        self._violation(f"script: response {stream.record.response_id}: {problem}")
        return False

    def _pump(self, stream: _Stream, horizon: float) -> None:
        """Send every delta of ``stream`` that is due by ``horizon`` (called by the pacer)."""
        if self._paused:
            return
        period = self._pacer.period
        while stream.next_due <= horizon:
            stream.next_due += period
            item = stream.item
            if item is None:  # a response without output items
                exhausted = True
            elif isinstance(item, FunctionCallItem):
                exhausted = self._send_args_chunk(stream)
            elif item.output_format:
                exhausted = self._send_audio_chunk(stream)
            else:
                exhausted = self._send_text_word(stream)
            if stream.cancel_countdown is not None:
                stream.cancel_countdown -= 1
                if stream.cancel_countdown <= 0 or exhausted:
                    self._finish(stream, "cancelled", stream.cancel_reason)
                    return
            elif exhausted:
                if not stream.plan:
                    self._finish(stream, "completed", None)
                    return
                if item is not None:
                    self._finish_item(stream, "completed")
                self._start_item(stream)  # its first delta is due on the next period

    def _send_audio_chunk(self, stream: _Stream) -> bool:
        """One ``response.output_audio.delta`` (from a byte template) + its transcript share; True at the end."""
        item = stream.item
        assert isinstance(item, AssistantItem) and item._bank is not None  # audio items always have a bank
        bank = item._bank
        n = min(bank.chunk_bytes, item.planned_bytes - item.delivered_bytes)
        self._event_n += 1
        self._write("response.output_audio.delta", b"".join((
            stream.head, b"%d" % self._event_n, stream.mid, bank.b64_chunk(item._first_chunk + stream.chunks_sent, n),
            b'"}')))
        stream.chunks_sent += 1
        item.delivered_bytes += n
        item.generated_bytes = max(item.generated_bytes, item.delivered_bytes)
        # the transcript follows the audio: its share of the words once that share of the audio is out
        due = -(-len(stream.tokens) * item.delivered_bytes // item.planned_bytes) if item.planned_bytes else \
            len(stream.tokens)
        if due > stream.tokens_sent:
            delta = "".join(stream.tokens[stream.tokens_sent:due])
            stream.tokens_sent = due
            item.transcript += delta
            self._send("response.output_audio_transcript.delta", **self._ids(stream), delta=delta)
        return item.delivered_bytes >= item.planned_bytes

    def _send_text_word(self, stream: _Stream) -> bool:
        item = stream.item
        assert isinstance(item, AssistantItem)  # a text message
        delta = stream.tokens[stream.tokens_sent]
        stream.tokens_sent += 1
        item.transcript += delta
        self._send("response.output_text.delta", **self._ids(stream), delta=delta)
        return stream.tokens_sent == len(stream.tokens)

    def _send_args_chunk(self, stream: _Stream) -> bool:
        """One ``response.function_call_arguments.delta``; True once the arguments are complete."""
        call = stream.item
        assert isinstance(call, FunctionCallItem)
        delta = stream.tokens[stream.tokens_sent]
        stream.tokens_sent += 1
        call.arguments += delta
        if delta:
            self._send("response.function_call_arguments.delta", response_id=call.response_id, item_id=call.item_id,
                       output_index=stream.index, call_id=call.call_id, delta=delta)
        return stream.tokens_sent == len(stream.tokens)

    def _cancel_by_vad(self, stream: _Stream) -> None:
        item = stream.item
        inflight = self._cfg.inflight_deltas_after_cancel
        if isinstance(item, AssistantItem) and item.output_format:
            assert item._bank is not None  # audio items always have one
            item.generated_bytes = min(item.planned_bytes, item.delivered_bytes + inflight * item._bank.chunk_bytes)
        stream.cancel_reason = "turn_detected"
        stream.cancel_countdown = inflight
        if inflight <= 0 or item is None:
            self._finish(stream, "cancelled", "turn_detected")

    def _finish(self, stream: _Stream, status: str, reason: str | None) -> None:
        """Close a response: the done events of the current part and item, then the response's (also for a
        cancel: the current item ends incomplete and the items not started yet never are)."""
        self._pacer.discard(stream)
        record = stream.record
        record.status, record.reason, record.done_at = status, reason, self._loop.time()
        if stream.item is not None:
            self._finish_item(stream, "completed" if status == "completed" else "incomplete")
        response = self._response_json(stream)
        record.usage = response["usage"]
        self._send("response.done", response=response)
        if self._active is stream:
            self._active = None
            if self._auto_response_pending and not self._closing:
                self._auto_response_pending = False
                self._start_response("vad", {})
        else:
            self._out_of_band.pop(record.response_id, None)

    def _finish_item(self, stream: _Stream, status: str) -> None:
        """The done events of the current item: audio/transcript (or text), part, output item, conversation item;
        for a function call: arguments done, output item, conversation item."""
        record, item = stream.record, stream.item
        assert item is not None  # called for a started item
        item.status = status
        if isinstance(item, FunctionCallItem):
            # also sent for a cancelled response (doc), with the arguments generated so far (assumed)
            self._send("response.function_call_arguments.done", response_id=record.response_id,
                       item_id=item.item_id, output_index=stream.index, call_id=item.call_id, name=item.name,
                       arguments=item.arguments)
        else:
            ids = self._ids(stream)
            if item.output_format:
                self._send("response.output_audio.done", **ids)
                self._send("response.output_audio_transcript.done", **ids, transcript=item.transcript)
                part = {"type": "audio", "transcript": item.transcript}
            else:
                self._send("response.output_text.done", **ids, text=item.transcript)
                part = {"type": "text", "text": item.transcript}
            self._send("response.content_part.done", **ids, part=part)
        self._send("response.output_item.done", response_id=record.response_id, output_index=stream.index,
                   item=self._item_json(item))
        if stream.conversation and item.item_id in self._conversation:
            # The conversation keeps its own view: a truncate that arrived while the item was still being
            # generated has removed the transcript, and finishing the item must not bring it back.
            entry = self._item_json(item, in_conversation=True)
            self._conversation[item.item_id] = entry
            self._send("conversation.item.done", previous_item_id=self._previous_of(item.item_id), item=entry)

    def _on_response_cancel(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        wanted = event.get("response_id")
        stream = self._active if wanted is None or (self._active and self._active.record.response_id == wanted) \
            else self._out_of_band.get(wanted)
        self.cancels.append(CancelRecord(now, wanted, stream.record.response_id if stream else None))
        if stream is None:
            self._send_error("response_cancel_not_active", "Cancellation failed: no active response found", None,
                             event_id)
            return
        self._finish(stream, "cancelled", stream.cancel_reason or "client_cancelled")

    def _stop_streams(self) -> None:
        for stream in [self._active, *self._out_of_band.values()]:
            if stream is not None:
                self._pacer.discard(stream)
        self._active = None
        self._out_of_band.clear()

    # ---------------------------------------------------------------- conversation items

    def _on_truncate(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        item_id, index, end_ms = event["item_id"], event["content_index"], event["audio_end_ms"]
        item = self._assistant.get(item_id)
        error: tuple[str | None, str, str | None] | None = None
        if item_id not in self._conversation:
            error = ("invalid_value", f"Item with item_id '{item_id}' not found.", "item_id")
        elif item is None or not item.output_format or item.generated_bytes == 0:
            error = ("unsupported_content_type", "Only model output audio messages can be truncated", "item_id")
        elif index != 0:
            error = ("invalid_value", (f"Invalid 'content_index': {index}. The item has a single content part, "
                                       "index 0."), "content_index")
        elif end_ms < 0:
            error = ("invalid_value", f"Invalid 'audio_end_ms': {end_ms}. Expected a value >= 0.", "audio_end_ms")
        elif end_ms > item.audio_ms:
            error = ("invalid_value", f"Audio content of {item.audio_ms}ms is already shorter than {end_ms}ms",
                     "audio_end_ms")
        self.truncates.append(TruncateRecord(now, item_id, index, end_ms, error is None, error and error[1]))
        if error is not None:
            self._send_error(error[0], error[1], error[2], event_id)
            return
        assert item is not None  # no error: an assistant audio item
        item.truncated_ms = end_ms
        content = self._conversation[item_id]["content"]
        if content:
            content[0]["transcript"] = ""  # the server forgets what the caller never heard
        self._send("conversation.item.truncated", item_id=item_id, content_index=index, audio_end_ms=end_ms)

    def _on_item_delete(self, event: dict[str, Any], event_id: str | None, _now: float) -> None:
        item_id = event["item_id"]
        if self._conversation.pop(item_id, None) is None:
            self._send_error("invalid_value", f"Item with item_id '{item_id}' not found.", "item_id", event_id)
            return
        self._send("conversation.item.deleted", item_id=item_id)

    def _on_item_retrieve(self, event: dict[str, Any], event_id: str | None, _now: float) -> None:
        item_id = event["item_id"]
        item = self._conversation.get(item_id)
        if item is None:
            self._send_error("invalid_value", f"Item with item_id '{item_id}' not found.", "item_id", event_id)
            return
        item = orjson.loads(orjson.dumps(item))
        audio = b""
        if item_id in self._assistant:
            assistant = self._assistant[item_id]
            audio = assistant.audio[:assistant.audio_ms * assistant.bytes_per_ms]
        elif item_id in self._user and self._cfg.record_audio:
            user = self._user[item_id]
            audio = bytes(self.input_audio[int(user.start_ms * self._in_bpm):int(user.end_ms * self._in_bpm)])
        if audio and item.get("content"):
            item["content"][0]["audio"] = binascii.b2a_base64(audio, newline=False).decode()
        self._send("conversation.item.retrieved", item=item)

    def _on_item_create(self, event: dict[str, Any], event_id: str | None, _now: float) -> None:
        item = dict(event["item"])
        if "content" in item:  # copied: the recorded client event must stay as received
            item["content"] = [dict(part) for part in item["content"]]
        if item.get("role") == "assistant" and any(c.get("type") == "output_audio" for c in item.get("content", [])):
            self._send_error("invalid_value", "Assistant audio cannot be created; assistant messages take "
                             "'output_text' content.", "item.content", event_id)
            return
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self._conversation:
            self._send_error("invalid_value", f"Previous item with item_id '{previous}' not found.",
                             "previous_item_id", event_id)
            return
        item_id = item.get("id") or self.sim._new_id("item_")
        if item_id in self._conversation:
            self._send_error("invalid_value", f"Item with item_id '{item_id}' already exists.", "item.id", event_id)
            return
        call: dict[str, Any] | None = None
        if item.get("type") == "function_call_output":
            # the server checks that a function_call with this call_id is in the conversation (doc); text obs
            call = next((c for c in self._conversation.values()
                         if c.get("type") == "function_call" and c.get("call_id") == item.get("call_id")), None)
            if call is None:
                self._send_error("invalid_tool_call_id", f"Tool call ID '{item.get('call_id')}' not found in "
                                 "conversation.", None, event_id)
                return
        item.update(id=item_id, object="realtime.item", status="completed")
        for part in item.get("content", []):
            part.pop("audio", None)  # events never echo audio bytes
        if previous is None:
            previous = self._last_item_id()
            self._conversation[item_id] = item
        else:
            entries = list(self._conversation.items())
            at = 0 if previous == "root" else [k for k, _ in entries].index(previous) + 1
            entries.insert(at, (item_id, item))
            self._conversation = dict(entries)
            previous = None if previous == "root" else previous
        now = self._loop.time()
        if call is not None:
            self.function_outputs.append(FunctionOutput(now, item_id, item["call_id"], str(call.get("name", "")),
                                                        item.get("output", "")))
        elif item.get("type") == "message" and item.get("role") in ("user", "system"):
            text = "".join(str(p.get("text", "")) for p in item.get("content", []) if p.get("type") == "input_text")
            if text:
                self.text_inputs.append(TextInput(now, item_id, item["role"], text))
        self._send("conversation.item.added", previous_item_id=previous, item=item)
        self._send("conversation.item.done", previous_item_id=previous, item=item)

    def _on_output_audio_buffer_clear(self, _event: dict[str, Any], event_id: str | None, _now: float) -> None:
        self._violation("output_audio_buffer.clear is WebRTC/SIP only; a WebSocket session has no output buffer")
        self._send_error("invalid_value", "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
                         "type", event_id)

    # ---------------------------------------------------------------- helpers

    def _last_item_id(self) -> str | None:
        return next(reversed(self._conversation), None)

    def _previous_of(self, item_id: str) -> str | None:
        previous = None
        for key in self._conversation:
            if key == item_id:
                return previous
            previous = key
        return previous

    def _ids(self, stream: _Stream) -> dict[str, Any]:
        assert stream.item is not None  # per-item events come from a started item
        return {"response_id": stream.record.response_id, "item_id": stream.item.item_id,
                "output_index": stream.index, "content_index": 0}

    def _item_json(self, item: AssistantItem | FunctionCallItem, in_conversation: bool = False) -> dict[str, Any]:
        """The item as events show it; ``in_conversation``: as the conversation keeps it (a truncated
        message has lost its transcript)."""
        if isinstance(item, FunctionCallItem):
            return {"id": item.item_id, "type": "function_call", "object": "realtime.item", "status": item.status,
                    "name": item.name, "call_id": item.call_id, "arguments": item.arguments}
        content = []
        if item.status != "in_progress":
            text = "" if in_conversation and item.truncated_ms is not None else item.transcript
            content = [{"type": "output_audio", "transcript": text} if item.output_format
                       else {"type": "output_text", "text": text}]
        return {"id": item.item_id, "type": "message", "object": "realtime.item", "status": item.status,
                "role": "assistant", "content": content}

    def _context_tokens(self, params: dict[str, Any]) -> tuple[int, int]:
        """(text, audio) input tokens of a response starting now (simulator approximation, see
        docs/protocols/openai-realtime.md): instructions + tools + every conversation item (or the
        response's own ``input``), text at 1 token per 4 characters (rounded up per piece), user audio
        at 1 token per 100 ms, assistant audio at 1 token per 50 ms (truncated items count what remains)."""
        cfg = self.session_config
        instructions = params.get("instructions")
        text = _text_tokens((cfg.get("instructions") or "") if instructions is None else instructions)
        tools = params.get("tools") if params.get("tools") is not None else cfg.get("tools")
        if tools:
            text += _text_tokens(orjson.dumps(tools).decode())
        audio = 0
        if params.get("input") is not None:
            items = [self._conversation.get(i.get("id", ""), {}) if i.get("type") == "item_reference" else i
                     for i in params["input"] if isinstance(i, dict)]
        else:
            items = list(self._conversation.values())
        for item in items:
            item_id, kind = item.get("id", ""), item.get("type")
            if kind == "function_call":
                text += _text_tokens(str(item.get("name", "")) + str(item.get("arguments", "")))
            elif kind == "function_call_output":
                text += _text_tokens(str(item.get("output", "")))
            elif item_id in self._user:
                user = self._user[item_id]
                audio += math.ceil((user.end_ms - user.start_ms) / 100)
            elif item_id in self._assistant and self._assistant[item_id].output_format:
                audio += math.ceil(self._assistant[item_id].audio_ms / 50)
            else:
                for part in item.get("content") or ():
                    text += _text_tokens(str(part.get("text") or part.get("transcript") or ""))
        return text, audio

    def _usage(self, stream: _Stream) -> dict[str, Any]:
        """response.done's usage (simulator approximation): input = the context when the response
        started, of which the previous response's input is cached; output = 1 text token per 4
        characters of transcript/text/arguments, 1 audio token per 50 ms of generated audio."""
        text_in, audio_in = stream.context
        cached_text, cached_audio = min(text_in, self._last_context[0]), min(audio_in, self._last_context[1])
        self._last_context = stream.context
        text_out = audio_out = 0
        for item in stream.items:
            if isinstance(item, FunctionCallItem):
                text_out += _text_tokens(item.arguments)
            else:
                text_out += _text_tokens(item.transcript)
                audio_out += math.ceil(item.generated_ms / 50)
        input_tokens, output_tokens = text_in + audio_in, text_out + audio_out
        return {"total_tokens": input_tokens + output_tokens, "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0,
                                        "cached_tokens": cached_text + cached_audio,
                                        "cached_tokens_details": {"text_tokens": cached_text,
                                                                  "audio_tokens": cached_audio, "image_tokens": 0}},
                "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}

    def _response_json(self, stream: _Stream) -> dict[str, Any]:
        record = stream.record
        done = record.status != "in_progress"
        return {
            "object": "realtime.response", "id": record.response_id, "status": record.status,
            "status_details": None if record.status != "cancelled" else {"type": "cancelled",
                                                                         "reason": record.reason},
            "output": [self._item_json(item) for item in stream.items] if done else [],
            "conversation_id": self.conversation_id if stream.conversation else None,
            "output_modalities": stream.modalities, "max_output_tokens": self.session_config["max_output_tokens"],
            "audio": {"output": {"format": stream.format, "voice": stream.voice}},
            "usage": self._usage(stream) if done else None, "metadata": stream.metadata,
        }

    def _expire(self) -> None:
        minutes = self._cfg.session_max_s / 60
        message = f"Your session hit the maximum duration of {minutes:g} minutes."
        self._send_error("session_expired", message)
        self.close(1001, message)

    def _on_append_event(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        self._on_append(event["audio"], event_id, now)  # a valid append the fast path did not take

    _HANDLERS: ClassVar[dict[str, Callable[[SimSession, dict[str, Any], str | None, float], None]]] = {
        "session.update": _on_session_update,
        "input_audio_buffer.append": _on_append_event,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "conversation.item.create": _on_item_create,
        "conversation.item.delete": _on_item_delete,
        "conversation.item.retrieve": _on_item_retrieve,
        "conversation.item.truncate": _on_truncate,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
        "output_audio_buffer.clear": _on_output_audio_buffer_clear,
    }


def _text_tokens(text: str) -> int:
    """Simulator approximation of a text's token count: 1 token per 4 characters, rounded up."""
    return -(-len(text) // 4)


def _audio_format(value: dict[str, Any]) -> dict[str, Any]:
    """Normalise a GA format object: pcm always carries its (only) rate; G.711 never has one."""
    fmt = value.get("type") or "audio/pcm"
    return {"type": fmt, "rate": 24000} if fmt == "audio/pcm" else {"type": fmt}


def _turn_detection(value: dict[str, Any]) -> dict[str, Any]:
    """A turn_detection object with the server defaults filled in (a new object replaces the old one)."""
    if value["type"] == "server_vad":
        base = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                "idle_timeout_ms": None, "create_response": True, "interrupt_response": True}
    else:
        base = {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
    return {**base, **value}


class OpenAIRealtimeSim:
    """The simulator server: start it, point a client at :attr:`url`, inspect :attr:`sessions`."""

    def __init__(self, config: OpenAISimConfig | None = None) -> None:
        self.config = config or OpenAISimConfig()
        self.sessions: list[SimSession] = []  # in connection order
        self.rejected: list[RejectedUpgrade] = []
        self.on_session: Callable[[SimSession], None] | None = None  # called after session.created is sent
        # called after each session.update is applied (a test or the demo may pick the script from
        # the instructions the client sent)
        self.on_session_update: Callable[[SimSession], None] | None = None
        self.url = ""
        self._server: asyncio.Server | None = None
        self._pacer: _Pacer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._id_salt = _mix64(self.config.seed)
        self._id_n = 0

    @property
    def websocket_base_url(self) -> str:
        """Base URL for the openai SDK (``AsyncOpenAI(websocket_base_url=...)``)."""
        return self.url.split("/realtime", 1)[0]

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> str:
        """Listen (port 0 = ephemeral) and return ``ws(s)://host:port/v1/realtime?model=gpt-realtime``."""
        self._loop = asyncio.get_running_loop()
        self._warm_up()
        self._pacer = _Pacer(self._loop, self.config.chunk_ms / self.config.pace / 1000)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.config.rcvbuf_bytes:  # small windows make a server that stops reading felt in seconds
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf_bytes)
        sock.bind((host, port))
        self._server = await ws_create_server(self._route, sock=sock, ssl=ssl_context,
                                              max_frame_size=32 * 1024 * 1024)
        bound_port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'wss' if ssl_context else 'ws'}://{host}:{bound_port}/v1/realtime?model={DEFAULT_MODEL}"
        return self.url

    def _warm_up(self) -> None:
        """Build the audio banks and the schema validator now, not inside the first session:
        a ~0.5 s stall of the shared event loop would distort every timing measured in-process."""
        for fmt in ("audio/pcmu", "audio/pcm"):
            audio_bank(fmt, self.config.seed, self.config.chunk_ms, self.config.bank_s)
        validate_client_event({"type": "input_audio_buffer.clear"})

    async def stop(self) -> None:
        """Close the listener and every live session (CLOSE 1001), then wait for the disconnects."""
        if self._server is None:
            return
        self._server.close()
        live = [(s, s.transport) for s in self.sessions if s.transport is not None and s.disconnected_at is None]
        for session, _ in live:
            session.close(1001, "server shutting down")
        if live:
            waits = asyncio.gather(*(transport.wait_disconnected() for _, transport in live), return_exceptions=True)
            try:
                await asyncio.wait_for(waits, _CLOSE_GRACE_S + 1)
            except TimeoutError:
                pass
        if self._pacer is not None:
            self._pacer.close()
        await self._server.wait_closed()
        self._server = None

    def violations(self) -> list[str]:
        """Every schema/protocol violation seen, across refused upgrades and sessions."""
        out = [f"upgrade refused ({r.status}) {r.path}: {r.reason}" for r in self.rejected]
        for session in self.sessions:
            out += [f"session {session.index}: {v}" for v in session.violations]
        return out

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Test helper: poll ``predicate`` every 5 ms until true; TimeoutError after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - polls any predicate: there is no event to wait on
                await asyncio.sleep(0.005)

    def _new_id(self, prefix: str) -> str:
        """``prefix`` + 21 base62 characters, unique within the simulator and deterministic per seed."""
        self._id_n += 1
        return prefix + _b62((_mix64(self._id_salt + self._id_n) << 61) | self._id_n, 21)

    def _route(self, request: WSUpgradeRequest) -> SimSession | WSUpgradeResponseWithListener | None:
        path, _, query = request.path.decode("latin-1").partition("?")
        assert self._loop is not None  # upgrades arrive only after start()
        now = self._loop.time()
        if path.rstrip("/") != "/v1/realtime":
            self.rejected.append(RejectedUpgrade(now, path, 404, "unknown path"))
            return None
        auth = request.headers.get("Authorization")
        if auth != f"Bearer {self.config.api_key}":
            reason = "missing Authorization header" if auth is None else "incorrect API key"
            self.rejected.append(RejectedUpgrade(now, path, 401, reason))
            message = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
                       "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)." if auth is None
                       else "Incorrect API key provided.")
            body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                           "code": None if auth is None else "invalid_api_key"}})
            response = WSUpgradeResponse.create_error_response(401, body, {"Content-Type": "application/json"})
            return WSUpgradeResponseWithListener(response, None)
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
        headers = {k.lower(): v for k, v in request.headers.items()}
        session = SimSession(self, len(self.sessions), path, params, headers)
        self.sessions.append(session)
        return session
