"""Stateful fuzzing of the bridge core: one ``Call`` fed interleaved Twilio and upstream messages.

``python -m bench fuzz --examples N`` runs N examples and reports examples/s; a failure is printed
with hypothesis's shrunk reproduction (a Python program of ``state.<rule>(...)`` calls, which
``tests/fuzz`` can replay as it is) and the run stops. ``tests/fuzz`` also runs the machine briefly
on both fast-path implementations.

What an example is: one call, built the way ``gateway.server.Gateway._make_call`` builds it, driven
from a fresh ``Call`` through ``--steps`` rules, then shut down (``Call.end(SHUTDOWN)``, as
``Gateway.stop`` does). A rule is one message from Twilio or from the upstream, a transport event,
time passing, a barge-in, a control-API verb, a tool or REST answer, or a short realistic sequence
(``model_turn``: a whole spoken response in order; ``twilio_plays``: time passing while Twilio plays
and echoes marks). The invariants are checked after every message the call handles ("steps" in the
counts) and after the shutdown.

How a call is built: real ``Settings`` (drawn per example: secure or development mode, passthrough
or pcm16, coalescing, unheard-item action, VAD cancelling or not, caller-audio buffer, greeting,
admission at once or deferred), the real ``TokenVerifier`` with tokens minted by
``gateway.twilio.tokens.mint``, the real agent behaviour (``AgentServices(...).behaviour``) with the
``default`` agent of ``profiles.from_settings`` or a second agent with every feature on (tools
``end_call``, ``transfer_call`` and an HTTP tool, DTMF forwarding, transcripts, a speech or tone
filler, ``max_call_s``); the HTTP tool client and Twilio's REST API are fakes whose answers are
rules. Two recording senders parse every message the call sends; the clock is manual and
``call_later`` is a timer wheel on it; a step runs with the fuzzer's event loop set as the running
loop (the agent creates tasks), and the loop runs whenever the agent has tasks. Half the examples
are "hostile" (protocol violations and the other side going away are drawn too, and end most
calls); the other half live long enough to get deep.

Invariants (``Harness.check``), after every step:

* nothing raised out of ``Call`` (nor out of a timer callback), no exception was swallowed into a
  log record, the loop's exception handler was never called, no task outlives its call;
* ``call.state`` moves only connected → starting → streaming → ended (any of them → ended);
  ``ended`` is terminal and an ended call sends nothing on either leg; the Twilio socket is closed
  exactly once, when the call ends, and so is every upstream socket handed to it;
* every message to the upstream validates against the official GA schema
  (``gateway.sim.openai_schema.validate_client_event``, unknown keys rejected); ``session.update``
  comes first; in passthrough mode the caller audio appended is exactly the caller audio received,
  in order, less what the pending buffer dropped (counted);
* every message to Twilio is one of the documented shapes (media / mark / clear with exactly the
  documented keys and this stream's ``streamSid``), nothing before ``start`` was accepted, mark
  names are never reused, media carries audio, and only in answer to a model delta (or the pcm16
  tail at ``output_audio.done``, or a local hold tone from a timer);
* every ``conversation.item.truncate`` has ``0 <= audio_end_ms <=`` the audio of that item (and
  content part) forwarded to Twilio, in ms, and ``>=`` what mark echoes proved the caller heard of
  it (less the pcm16 resampler lead, 1 ms tolerance); none names local or out-of-band audio;
* a barge-in while Twilio may hold audio (an audio mark of the current epoch unacknowledged) sends
  ``clear``; every conversation item a clear cut (by the ledger's own plan) is truncated (or
  deleted, or skipped at 0 ms as configured) in the same step; a barge-in on an active response
  gets it cancelled exactly once, by the call or by the server's VAD (which cancels only a
  default-conversation response); after a clear or a cancel for an interrupted item (truncated or
  deleted, or of a cancelled response), no media for that item is forwarded;
* buffers are bounded: caller audio held while the upstream opens <= GATEWAY_MAX_PENDING_AUDIO_MS,
  the coalescing buffer < one append; ``Responses`` and ``Playout.produced`` hold only live items
  and responses (a response not done, an item whose audio may still come); the ledger's pending
  marks are exactly the marks sent in the current epoch that Twilio has not echoed; the call's timer
  set holds only timers that can still fire.

Inputs outside the protocol are sent too (the call must survive them and stay bounded), but the
invariants about meaning do not judge what the call does with them: a delta of an item after its
``output_audio.done`` or after its response's ``response.done``, an item announced twice or for a
response already done, audio in a content part other than 0, a response id used again. The call
forgets a response's items at its ``response.done`` (docs/protocols/openai-realtime.md, "What the
gateway relies on"), so what it does with such audio is by design.

Not fuzzed here (each has its own end-to-end tests over real sockets): paced playout (the oracle
models burst playout, where every delta goes to Twilio in the step that brought it), upstream
reconnects and session rollover (one upstream session per example: a fatal upstream event ends the
call), and false-interruption resume (``GATEWAY_MIN_INTERRUPTION_MS`` stays 0).
"""
from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import functools
import heapq
import logging
import math
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, cast

import msgspec
import orjson

import _fastpath
from gateway.agents import profiles
from gateway.agents.services import AgentServices
from gateway.agents.tools import ToolResult
from gateway.call import Call, State
from gateway.config import Settings
from gateway.control import commands
from gateway.control.model import ControlError, Verb
from gateway.errors import UpstreamProtocolError
from gateway.openai import server_events as se
from gateway.openai.upstream import UpstreamLink
from gateway.outcomes import EndReason, ToolStatus, Trigger, UpstreamFailure
from gateway.responses import LOCAL_PREFIX, OUT_OF_BAND_MEMORY
from gateway.twilio.rest import TwilioRestError
from gateway.twilio.tokens import CallClaims, TokenVerifier, mint

from .report import RESULTS, environment, write_json

STREAM_SID = "MZ00000000000000000000000000000001"
OTHER_SID = "MZ00000000000000000000000000000002"
CALL_SID = "CA00000000000000000000000000000001"
ACCOUNT_SID = "AC00000000000000000000000000000001"
TRANSFER_TARGET = "+15550100"
T0 = 1000.0  # the manual clock's start (loop time: any origin)
FRAME = 160

# --------------------------------------------------------------------------- per-example configuration


@dataclass(frozen=True)
class FuzzConfig:
    """What varies between calls (drawn once per example)."""

    secure: bool = True
    audio_mode: str = "passthrough"
    coalesce_frames: int = 1
    unheard_item_action: str = "truncate"
    vad_interrupt_response: bool = True
    max_pending_audio_ms: int = 2000
    greeting: str = ""
    admit_deferred: bool = False
    agent: str = "default"  # "default" (profiles.from_settings) or "full" (every agent feature)
    filler: str = "speech"  # the full agent's filler kind
    rest: bool = True  # Twilio REST configured (hang-up / transfer through the fake)

    def settings(self) -> Settings:
        return Settings(
            twilio_auth_token="fuzz-auth-token" if self.secure else "", insecure_dev=not self.secure,
            audio_mode=self.audio_mode, coalesce_frames=self.coalesce_frames,
            unheard_item_action=self.unheard_item_action, vad_interrupt_response=self.vad_interrupt_response,
            max_pending_audio_ms=self.max_pending_audio_ms, greeting=self.greeting,
            tool_secret="fuzz-tool-secret",  # noqa: S106 - a test key
            twilio_account_sid=ACCOUNT_SID if self.rest else "",
            # The oracle models burst playout and one upstream session per call; paced playout, upstream
            # reconnects and false-interruption resume are proven by their own end-to-end tests.
            playout="burst", upstream_reconnect_attempts=0,
        )


def build_agents(config: FuzzConfig, settings: Settings) -> profiles.Agents:
    base = profiles.from_settings(settings)
    default = base.agents[profiles.DEFAULT_AGENT]
    full = msgspec.structs.replace(
        default, tools=("end_call", "transfer_call", "lookup"), transfer_targets=(TRANSFER_TARGET,),
        dtmf="forward", transcripts=True, max_call_s=30.0,
        filler=profiles.Filler(after_ms=500, kind=config.filler),  # type: ignore[arg-type]
    )
    tools = {"lookup": profiles.Tool(description="Look an order up.", url="http://127.0.0.1:9/lookup")}
    return profiles.Agents({profiles.DEFAULT_AGENT: default, "full": full}, tools, {}, {}, "fuzz")


# --------------------------------------------------------------------------- fakes around the call


class Timer:
    __slots__ = ("callback", "cancelled", "fired", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback = when, callback
        self.cancelled = self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def live(self) -> bool:
        return not (self.cancelled or self.fired)


class TimerWheel:
    """``loop.call_later`` on the manual clock: timers fire when a step advances the clock."""

    def __init__(self, harness: Harness) -> None:
        self._h = harness
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self._h.now + max(0.0, delay), callback)
        self._seq += 1
        heapq.heappush(self._heap, (timer.when, self._seq, timer))
        return timer

    def advance(self, dt: float) -> None:
        target = self._h.now + dt
        while self._heap and self._heap[0][0] <= target:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self._h.now = max(self._h.now, when)
            timer.fired = True
            timer.callback()
        self._h.now = target


class Pending:
    """Answers (tool results, REST outcomes) the fuzzer gives at a step of its choosing."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    async def wait(self) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        try:
            return await future
        finally:
            self.futures.remove(future)


class FakeTools:
    """The agent layer's ``ToolClient``: a tool answers when the fuzzer says so."""

    def __init__(self) -> None:
        self.pending = Pending()
        self.calls = 0

    async def call(self, name: str, tool: Any, arguments: Any, context: dict[str, Any]) -> ToolResult:
        self.calls += 1
        result: ToolResult = await self.pending.wait()
        return result

    async def aclose(self) -> None:
        return None


class FakeRest:
    """Twilio's REST API: a hang-up or redirect succeeds or fails when the fuzzer says so."""

    def __init__(self) -> None:
        self.pending = Pending()
        self.requests: list[str] = []

    async def hangup(self, call_sid: str) -> None:
        self.requests.append("hangup")
        await self.pending.wait()

    async def redirect(self, call_sid: str, twiml: str) -> None:
        self.requests.append("redirect")
        await self.pending.wait()


class FuzzServices(AgentServices):
    """The worker's agent services with the network parts replaced by fakes."""

    def __init__(self, settings: Settings, agents: profiles.Agents, rest: FakeRest | None) -> None:
        super().__init__(settings, agents, lambda _sink, _result: None)
        self.fake_tools = FakeTools()
        self.tools = self.fake_tools  # type: ignore[assignment]
        self._fake_rest = rest

    @property
    def rest(self) -> Any:
        return self._fake_rest


class Connecting:
    """The handle ``open_upstream`` returns (``Call`` cancels it if it ends first)."""

    def __init__(self) -> None:
        self.cancelled = False
        self.done = False

    def cancel(self) -> None:
        self.cancelled = True


class Leg:
    """A ``Sender`` that hands every message to the harness, which parses and checks it."""

    def __init__(self, harness: Harness, name: str) -> None:
        self._h = harness
        self.name = name
        self.sent = 0
        self.closes: list[tuple[int, str]] = []

    def send(self, data: bytes) -> None:
        self._h.on_sent(self, (data,))

    def send_many(self, *messages: bytes) -> None:
        self._h.on_sent(self, messages)

    def close(self, code: int = 1000, reason: str = "", *, abort: bool = False) -> None:
        self.closes.append((code, reason))
        self._h.on_closed(self)

    def retarget(self, sink: Any) -> None:
        """``UpstreamLink``'s: the harness delivers events itself, to ``Harness.call``."""

    def detach(self) -> None:
        """``UpstreamLink``'s (reconnects are off in the fuzzer: never called)."""


class FuzzFailure(AssertionError):  # noqa: N818 - what the fuzzer reports: a failure, not an error
    """An invariant does not hold (the message lists every violation of the step)."""


# --------------------------------------------------------------------------- message builders


_PATTERN = bytes((i * 37 + 11) & 0xFF for i in range(256)) * 160  # 40 KiB


def audio(n: int) -> bytes:
    """Deterministic audio bytes (content never changes a control path)."""
    return _PATTERN[:n] if n <= len(_PATTERN) else (_PATTERN * (n // len(_PATTERN) + 1))[:n]


def b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def mutate(message: bytes, how: str, where: int) -> bytes:
    """A broken copy of a valid message: cut short, a byte flipped, a byte dropped, doubled."""
    if not message:
        return b"\xff"
    i = where % len(message)
    if how == "truncate":
        return message[:i]
    if how == "flip":
        return message[:i] + bytes([message[i] ^ 0x20]) + message[i + 1:]
    if how == "drop":
        return message[:i] + message[i + 1:]
    if how == "invalid_utf8":
        return message[:i] + b"\xc3\x28" + message[i:]
    return message + message  # "concat": two documents in one frame


# --------------------------------------------------------------------------- schema validation (cached)


@functools.cache
def _validator() -> Callable[[dict[str, Any]], tuple[Any, list[Any]]]:
    from gateway.sim.openai_schema import validate_client_event  # pydantic + the SDK: loaded once, when needed

    return validate_client_event


@functools.lru_cache(maxsize=4096)
def schema_problems(message: bytes) -> str | None:
    try:
        event = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(event, dict):
        return "not a JSON object"
    _model, errors = _validator()(event)
    return "; ".join(e.message for e in errors) if errors else None


APPEND_HEAD = b'{"type":"input_audio_buffer.append","audio":"'
APPEND_TAIL = b'"}'


# --------------------------------------------------------------------------- logs and loop errors


class _Swallowed(logging.Handler):
    """Collects log records that carry an exception: something raised and was only logged."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


_SWALLOWED = _Swallowed()


@contextlib.contextmanager
def quiet_gateway_logs() -> Iterator[None]:
    """The gateway logs every protocol violation: mute them (and their cost) while fuzzing, but
    collect every record carrying an exception."""
    logger = logging.getLogger("gateway")
    saved = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(_SWALLOWED)
    try:
        yield
    finally:
        logger.removeHandler(_SWALLOWED)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_ERRORS: list[dict[str, Any]] = []


def fuzz_loop() -> asyncio.AbstractEventLoop:
    """One loop for every example of the process (a loop per example would dominate the cost)."""
    global _LOOP  # noqa: PLW0603 - a per-process singleton
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()
        _LOOP.set_exception_handler(lambda _loop, context: _LOOP_ERRORS.append(context))
    return _LOOP


def close_fuzz_loop() -> None:
    global _LOOP  # noqa: PLW0603 - a per-process singleton
    if _LOOP is not None and not _LOOP.is_closed():
        _LOOP.close()
    _LOOP = None


@contextlib.contextmanager
def fuzzing(impl: str) -> Iterator[None]:
    """Where examples run: the chosen fast path, the gateway's logs muted (exceptions collected),
    and the examples' event loop closed at the end."""
    try:
        with fastpath_impl(impl), quiet_gateway_logs():
            yield
    finally:
        close_fuzz_loop()


@contextlib.contextmanager
def fastpath_impl(impl: str) -> Iterator[None]:
    """Run the gateway on the compiled or the pure fast path (``_fastpath``'s names are looked up
    per call, so swapping the module's attributes swaps the implementation)."""
    if impl not in ("compiled", "pure"):
        raise ValueError(f"unknown fast-path implementation {impl!r}")
    if impl == "compiled" and not _fastpath.COMPILED:
        raise RuntimeError("the compiled fast path is not loaded (GATEWAY_NO_EXTENSIONS=1 or not built)")
    import importlib

    module = importlib.import_module(f"_fastpath._{impl}")
    names = ["COMPILED", "IMPLEMENTATION", *module.__all__]
    saved = {name: getattr(_fastpath, name) for name in names}
    _fastpath.__dict__.update({name: getattr(module, name) for name in module.__all__})
    _fastpath.__dict__.update(COMPILED=impl == "compiled", IMPLEMENTATION=module)
    try:
        yield
    finally:
        _fastpath.__dict__.update(saved)


# --------------------------------------------------------------------------- the harness


LEGAL = {
    State.CONNECTED: {State.CONNECTED, State.STARTING, State.ENDED},
    State.STARTING: {State.STARTING, State.STREAMING, State.ENDED},
    State.STREAMING: {State.STREAMING, State.ENDED},
    State.ENDED: {State.ENDED},
}


class Harness:
    """One call, its fakes, and an oracle of what the wire says (for the invariants)."""

    examples = 0  # examples started in this process (the bench's count)
    steps = 0
    seen: ClassVar[dict[str, int]] = {}  # what the examples got to (how deep the fuzzing goes), summed per process

    def __init__(self, config: FuzzConfig) -> None:
        Harness.examples += 1
        self.config = config
        self.settings = config.settings()
        self.now = T0
        self.loop = fuzz_loop()
        self.timers = TimerWheel(self)
        self.verifier = TokenVerifier(self.settings.token_key)
        self.rest = FakeRest() if config.rest else None
        self.services = FuzzServices(self.settings, build_agents(config, self.settings), self.rest)
        self.twilio = Leg(self, "twilio")
        self.ups: list[Leg] = []  # every upstream sender handed to the call
        self.connects: list[Connecting] = []
        self.admissions: list[str] = []
        self.admitted = 0  # answers given to those requests
        self.failures: list[str] = []
        self.step_kind = "init"
        self.step_key: tuple[str, int] | None = None  # (item, content_index) of the delta being handled
        self.step_ms = 0.0
        self.step_media = 0
        self.step_clear = False
        self.mutated_twilio = False
        self.last_twilio = b""
        self.last_twilio_audio: bytes | None = None
        self.last_upstream = b""
        self._seq = 0
        self._loop_errors = len(_LOOP_ERRORS)
        self._swallowed = len(_SWALLOWED.records)
        # oracle: Twilio leg
        self.mark_names: set[str] = set()
        self.all_marks: list[str] = []  # every mark sent, in order
        self.echoed: list[str] = []
        self.epoch = 0
        self.epoch_media: list[tuple[tuple[str, int] | None, int]] = []
        self.epoch_marks: list[tuple[str, bool, int, int]] = []  # (name, audio, media before it, bytes before it)
        self.epoch_bytes = 0  # audio bytes sent this epoch
        self.played = 0  # Twilio's playhead (bytes of this epoch) in the playback model of twilio_plays
        self.played_at = T0
        self.mark_at: dict[str, tuple[int, int]] = {}  # name -> (epoch, index in epoch_marks)
        self.acked = 0  # epoch_marks acknowledged (a FIFO prefix)
        self.heard_at_clear: dict[tuple[str, int], int] = {}
        self.forwarded: dict[tuple[str, int], float] = {}  # model ms forwarded per (item, content_index)
        self.last_ci: dict[str, int] = {}
        # oracle: upstream leg
        self.creates: list[dict[str, Any]] = []  # the `response` of every response.create the call sent
        self.answered = 0  # of those, how many a model_turn answered
        self.appended = bytearray()  # passthrough: caller audio appended upstream
        self.caller_audio = bytearray()  # passthrough: caller audio the call accepted
        self.first_append_checked = False
        self.responses: list[str] = []
        self.live_responses: set[str] = set()
        self.done_responses: set[str] = set()
        self.oob_responses: set[str] = set()
        self.oob_items: set[str] = set()
        self.item_resp: dict[str, str] = {}  # item -> response, as the call maps them (forgotten at response.done)
        self.item_history: dict[str, str] = {}  # item -> its last response, never forgotten (to pick old items)
        self.items: list[str] = []
        self.generating: set[str] = set()  # items with audio forwarded that may still get more
        self.delta_items: set[str] = set()  # items the upstream sent deltas for
        self.outside: set[str] = set()  # items that got a delta after their output_audio.done or response.done
        self.audio_done_items: set[str] = set()
        self.active: str | None = None
        self.cancel_req: str | None = None
        self.cancelled: set[str] = set()  # responses the gateway or the server's VAD cancelled
        self.interrupted: set[str] = set()  # items truncated or deleted
        self.cancels_sent: dict[str, int] = {}
        self.prev_state = State.CONNECTED
        self.ended_at_counts: tuple[int, int] | None = None
        self.call = Call(self.settings, self.twilio, lambda: self.now, self._open_upstream,
                         lambda c, claims: self.services.behaviour(c, c.stats, claims), self.verifier,
                         self._on_end, self.timers.call_later, self._admit if config.admit_deferred else None)
        self.on_end_calls = 0
        self.counts: dict[str, int] = {}  # this call's share of ``seen``
        self.upstream_log: list[bytes] = []  # every message to the upstream but audio appends
        self._watched: Any = None
        self.step_plans: list[list[tuple[str, int, int]]] = []
        self.step_truncated: dict[str, int] = {}
        self.step_cancels: set[str] = set()
        self.expect_cancel: str | None = None

    # ------------------------------------------------------------------ the call's collaborators
    def _open_upstream(self, call: Call, model: str) -> Connecting:
        if self.connects:
            self.failures.append("open_upstream called twice")
        handle = Connecting()
        self.connects.append(handle)
        return handle

    def _admit(self, call: Call, token: str) -> None:
        self.admissions.append(token)

    def _on_end(self, call: Call) -> None:
        self.on_end_calls += 1

    # ------------------------------------------------------------------ driving
    def drive(self, kind: str, action: Callable[[], Any]) -> Any:
        """Run one step, then check the invariants.

        The step runs as if on the loop (``asyncio.get_running_loop()`` answers, tasks can be
        created); if the agent has tasks, the loop then runs until they wait again. Running every
        step through ``run_until_complete`` would cost more than the step itself."""
        Harness.steps += 1
        if self.call.state is State.STREAMING:
            self._saw("steps while streaming")
        self.step_kind, self.step_media, self.step_clear = kind, 0, False
        self.heard_at_clear = {}
        self.step_plans = []
        self.step_truncated = {}
        self.step_cancels = set()
        self._watch_playout()
        asyncio._set_running_loop(self.loop)
        try:
            result = action()
        finally:
            asyncio._set_running_loop(None)
        if getattr(self.call.behaviour, "_tasks", None):
            self.loop.run_until_complete(self._settle())
        self.step_kind, self.step_key = "idle", None
        self.check()
        return result

    def _watch_playout(self) -> None:
        """Record the plan of every clear (``Playout.clear``: what the ledger believes the clear cut),
        to check that every conversation item it cut is truncated (``check``)."""
        playout = self.call.playout
        if playout is self._watched:
            return
        self._watched = playout
        clear = playout.clear

        def watched(now: float) -> list[tuple[str, int, int]] | None:
            plan = clear(now)
            if plan:
                self.step_plans.append(list(plan))
            return plan

        setattr(playout, "clear", watched)  # noqa: B010 - an instance attribute shadows the method

    @staticmethod
    async def _settle() -> None:
        for _ in range(4):  # tasks run to their next wait (a fake's future, or their end)
            await asyncio.sleep(0)

    def twilio_message(self, message: bytes, *, kind: str = "twilio", mutated: bool = False,
                       caller_audio: bytes | None = None) -> None:
        """One text message from Twilio; ``caller_audio``: the audio of a valid media message."""
        self.last_twilio, self.last_twilio_audio = message, caller_audio
        self.mutated_twilio |= mutated
        call = self.call
        self._observe_twilio(message)
        before = call.stats.frames_in

        def deliver() -> None:
            call.on_twilio(message)
            if caller_audio is not None and call.stats.frames_in > before and call.state is not State.ENDED:
                self.caller_audio += caller_audio

        self.drive(kind, deliver)

    def _observe_twilio(self, message: bytes) -> None:
        """A mark echo the call will process moves the oracle's acknowledged position too."""
        sid = self.call.stream_sid
        if sid is None or self.call.state is State.ENDED:
            return
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict) and event.get("event") == "mark" and event.get("streamSid") == sid:
            mark = event.get("mark")
            if isinstance(mark, dict) and isinstance(mark.get("name"), str):
                self.echo(mark["name"])

    def upstream_message(self, message: bytes) -> None:
        """One text message from the upstream; the oracle reads it as the call will.

        Before the session is connected the server has sent nothing but ``session.created`` (the call
        accepts that early); other events cannot arrive then and are not delivered."""
        if self.call.state in (State.CONNECTED, State.STARTING) and b'"session.created"' not in message:
            return
        self.last_upstream = message
        kind, must_clear = self._observe_upstream(message)
        self.drive(kind, lambda: self.call.on_upstream(message))
        if must_clear and not self.step_clear and self.call.state is not State.ENDED:
            raise FuzzFailure("speech_started while Twilio may hold audio: no clear sent")

    def _observe_upstream(self, message: bytes) -> tuple[str, bool]:
        """(the step's kind, whether it must send a clear); updates the oracle of responses and items."""
        self.step_key, self.step_ms = None, 0.0
        if self.call.state is not State.STREAMING:
            return "upstream", False
        try:
            delta = _fastpath.decode_audio_delta(message)
        except _fastpath.ProtocolError:
            return "upstream", False
        if delta is not None:
            item, content_index, data = delta
            self.step_key = (item, content_index)
            self.step_ms = len(data) / (48.0 if self.config.audio_mode == "pcm16" else 8.0)
            self.delta_items.add(item)
            if (item in self.audio_done_items or (item in self.item_history and item not in self.item_resp)
                    or content_index != 0):
                # a delta after its audio's or its response's end, or audio in a content part other
                # than 0: outside the protocol (an assistant item has one part, audio)
                self.outside.add(item)
            self.last_ci[item] = content_index
            return "delta", False
        try:
            event = se.parse(message)
        except UpstreamProtocolError:
            return "upstream", False
        if isinstance(event, se.ResponseCreated):
            metadata = event.response.metadata
            self.saw_response_created(event.response.id, bool(metadata and "gateway" in metadata))
        elif isinstance(event, se.OutputItemAdded):
            self.saw_item_added(event.item.id, event.response_id)
        elif isinstance(event, se.ResponseDone):
            self.saw_response_done(event.response.id)
        elif isinstance(event, se.OutputAudioDone):
            self.generating.discard(event.item_id)
            self.audio_done_items.add(event.item_id)
            self.step_key = (event.item_id, self.last_ci.get(event.item_id, 0))
            return "audio_done", False
        elif isinstance(event, se.SpeechStarted):
            must_clear = self.audio_pending()
            self.saw_barge_in(vad=True)
            return "speech_started", must_clear
        return "upstream", False

    def _saw(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        Harness.seen[what] = Harness.seen.get(what, 0) + 1

    def next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}_{self._seq:04d}"

    # ------------------------------------------------------------------ what the call sends
    def on_sent(self, leg: Leg, messages: tuple[bytes, ...]) -> None:
        leg.sent += len(messages)
        if leg.closes:
            self.failures.append(f"{leg.name}: sent after close: {messages[0][:80]!r}")
        if self.call.state is State.ENDED:
            self.failures.append(f"{leg.name}: sent after the call ended: {messages[0][:80]!r}")
        if leg is self.twilio:
            media: tuple[str, int] | bool | None = False  # False: no media before this mark in the write
            for message in messages:
                media = self._twilio_sent(message, media)
        else:
            for message in messages:
                self._upstream_sent(leg, message)

    def on_closed(self, leg: Leg) -> None:
        if len(leg.closes) > 1:
            self.failures.append(f"{leg.name}: closed {len(leg.closes)} times")
        if leg is self.twilio and self.call.state is not State.ENDED:
            self.failures.append("twilio leg closed while the call is not ended")

    def _twilio_sent(self, message: bytes, media_before: tuple[str, int] | bool | None
                     ) -> tuple[str, int] | bool | None:
        fail = self.failures.append
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            fail(f"twilio: not JSON: {message[:80]!r}")
            return False
        sid = self.call.stream_sid
        if self.call.state is State.CONNECTED or sid is None:
            fail(f"twilio: sent before start was accepted: {message[:80]!r}")
        kind = event.get("event") if isinstance(event, dict) else None
        if kind == "media":
            ok = (set(event) == {"event", "streamSid", "media"} and isinstance(event["media"], dict)
                  and set(event["media"]) == {"payload"} and isinstance(event["media"]["payload"], str))
            if not ok:
                fail(f"twilio: media of the wrong shape: {message[:120]!r}")
                return False
            try:
                ulaw = binascii.a2b_base64(event["media"]["payload"], strict_mode=True)
            except binascii.Error:
                fail("twilio: media payload is not strict base64")
                return False
            if not ulaw:
                fail("twilio: media without audio")
            if event["streamSid"] != sid:
                fail(f"twilio: media for streamSid {event['streamSid']!r}, not {sid!r}")
            self._saw("twilio media")
            return self._media_sent(len(ulaw))
        if kind == "mark":
            ok = (set(event) == {"event", "streamSid", "mark"} and isinstance(event["mark"], dict)
                  and set(event["mark"]) == {"name"} and isinstance(event["mark"]["name"], str))
            if not ok:
                fail(f"twilio: mark of the wrong shape: {message[:120]!r}")
                return False
            if event["streamSid"] != sid:
                fail(f"twilio: mark for streamSid {event['streamSid']!r}, not {sid!r}")
            name = event["mark"]["name"]
            if name in self.mark_names:
                fail(f"twilio: mark name {name!r} reused")
            self.mark_names.add(name)
            self.all_marks.append(name)
            self.mark_at[name] = (self.epoch, len(self.epoch_marks))
            self.epoch_marks.append((name, media_before is not False, len(self.epoch_media), self.epoch_bytes))
            return False
        if kind == "clear":
            if set(event) != {"event", "streamSid"} or event["streamSid"] != sid:
                fail(f"twilio: clear of the wrong shape or stream: {message[:120]!r}")
            self._clear_sent()
            self._saw("twilio clear")
            return False
        fail(f"twilio: not a documented outbound message: {message[:120]!r}")
        return False

    def _media_sent(self, nbytes: int) -> tuple[str, int] | None:
        self.step_media += 1
        key: tuple[str, int] | None = None
        if self.step_kind == "delta" and self.step_key is not None:
            key = self.step_key
            if self.step_media > 1:
                self.failures.append("twilio: more than one media message for one delta")
            self.forwarded[key] = self.forwarded.get(key, 0.0) + self.step_ms
            item = key[0]
            self.last_ci[item] = key[1]
            self.generating.add(item)
            if self.interrupted_now(item):
                self.failures.append(f"twilio: media forwarded for interrupted item {item!r}")
        elif self.step_kind == "audio_done" and self.step_key is not None:
            key = self.step_key
            item = key[0]
            if self.config.audio_mode != "pcm16":
                self.failures.append("twilio: media at output_audio.done in passthrough mode")
            if self.interrupted_now(item):
                self.failures.append(f"twilio: resampler tail forwarded for interrupted item {item!r}")
        elif self.step_kind not in ("timer", "advance"):  # hold tone: local audio, from a timer
            self.failures.append(f"twilio: media sent during a {self.step_kind!r} step")
        self.epoch_media.append((key, nbytes))
        self.playhead()  # Twilio plays on from where it is (or starts now, on an empty buffer)
        self.epoch_bytes += nbytes
        return key

    def interrupted_now(self, item: str) -> bool:
        """Audio of ``item`` must not reach the caller: it was truncated or deleted, or its response
        was cancelled. (Not judged: an item whose response is over, as the call forgets a
        response's items at its ``response.done`` as documented, and items outside the protocol.)"""
        rid = self.item_history.get(item)
        if item in self.outside or (rid is not None and (item not in self.item_resp or rid not in self.live_responses)):
            return False
        return item in self.interrupted or rid in self.cancelled

    def _played_media(self) -> int:
        return self.epoch_marks[self.acked - 1][2] if self.acked else 0

    def _heard_bytes(self) -> dict[tuple[str, int], int]:
        heard: dict[tuple[str, int], int] = {}
        for key, nbytes in self.epoch_media[:self._played_media()]:
            if key is not None:
                heard[key] = heard.get(key, 0) + nbytes
        return heard

    def _clear_sent(self) -> None:
        self.step_clear = True
        self.heard_at_clear = self._heard_bytes()
        self.epoch += 1
        self.epoch_media, self.epoch_marks, self.acked = [], [], 0
        self.epoch_bytes = self.played = 0
        self.played_at = self.now

    def audio_pending(self) -> bool:
        """Twilio may still hold audio: an audio mark of this epoch is not acknowledged."""
        return any(audio for _name, audio, _n, _b in self.epoch_marks[self.acked:])

    def playhead(self) -> int:
        """Where Twilio's playhead is now (plays 8 bytes/ms, in order, from the audio's arrival;
        the model of ``twilio_plays``, with no network latency)."""
        self.played = min(self.epoch_bytes, self.played + int((self.now - self.played_at) * 8000))
        self.played_at = self.now
        return self.played

    def marks_played(self) -> list[str]:
        """Marks Twilio would echo now: every mark of an earlier epoch (a clear flushed them) and
        those of this epoch whose audio has played, in the order sent."""
        echoed = set(self.echoed)
        position = self.playhead()
        out = [m for m in self.all_marks if m not in echoed and self.mark_at[m][0] < self.epoch]
        out += [name for name, _audio, _n, before in self.epoch_marks[self.acked:] if before <= position
                and name not in echoed]
        return out

    def echo(self, name: str) -> None:
        """Bookkeeping of a mark echo the fuzzer sends (before the call sees it)."""
        self.echoed.append(name)
        at = self.mark_at.get(name)
        if at is not None and at[0] == self.epoch and at[1] >= self.acked:
            self.acked = at[1] + 1

    def _upstream_sent(self, leg: Leg, message: bytes) -> None:
        fail = self.failures.append
        if not self.ups or leg is not self.ups[-1]:
            fail(f"upstream: sent on a sender that is not the current one: {message[:80]!r}")
        first = leg.sent == 1
        if message.startswith(APPEND_HEAD) and message.endswith(APPEND_TAIL) and self.first_append_checked:
            try:
                data = binascii.a2b_base64(message[len(APPEND_HEAD):-len(APPEND_TAIL)], strict_mode=True)
            except binascii.Error:
                fail("upstream: append with invalid base64")
                return
            if self.config.audio_mode == "passthrough":
                self.appended += data
            elif len(data) % 2:
                fail("upstream: pcm16 append with an odd byte count")
        else:
            self.upstream_log.append(bytes(message))
            problem = schema_problems(bytes(message))
            if problem is not None:
                fail(f"upstream: {problem}: {message[:200]!r}")
                return
            event = orjson.loads(message)
            kind = event["type"]
            self._saw(f"upstream {kind}")
            if first and kind != "session.update":
                fail(f"upstream: first message is {kind}, not session.update")
            if kind == "response.create":
                self.creates.append(event.get("response") or {})
            if kind == "input_audio_buffer.append":
                self.first_append_checked = True
                if self.config.audio_mode == "passthrough":
                    self.appended += binascii.a2b_base64(event["audio"])
            elif kind == "conversation.item.truncate":
                self._truncate_sent(event["item_id"], event["content_index"], event["audio_end_ms"])
            elif kind == "conversation.item.delete":
                if self.config.unheard_item_action != "delete":
                    fail("upstream: item deleted although GATEWAY_UNHEARD_ITEM_ACTION is not delete")
                self._interrupted_item(event["item_id"])
            elif kind == "response.cancel":
                self._cancel_sent(event.get("response_id"))

    def _truncate_sent(self, item: str, content_index: int, end_ms: int) -> None:
        fail = self.failures.append
        key = (item, content_index)
        forwarded = self.forwarded.get(key, 0.0)
        if item in self.outside:  # several audio parts: the call counts an item's audio as a whole
            forwarded = sum(ms for (i, _ci), ms in self.forwarded.items() if i == item)
        if not 0 <= end_ms <= math.floor(forwarded + 1e-6):
            fail(f"upstream: truncate {item!r}[{content_index}] at {end_ms} ms, forwarded {forwarded:.3f} ms")
        heard = self.heard_at_clear.get(key) if self.step_clear else self._heard_bytes().get(key)
        if heard and item not in self.outside:  # (audio after the item's end restarts its count: not judged)
            floor_ms = math.floor(heard / 8 - self.call.playout.lead_ms) - 1
            if end_ms < floor_ms:
                fail(f"upstream: truncate {item!r}[{content_index}] at {end_ms} ms, mark echoes proved "
                     f"{heard / 8:.1f} ms heard")
        if item.startswith(LOCAL_PREFIX) or item in self.oob_items:
            fail(f"upstream: truncate of local or out-of-band audio {item!r}")
        self._interrupted_item(item, end_ms)

    def _interrupted_item(self, item: str, end_ms: int = 0) -> None:
        self.step_truncated[item] = end_ms
        self.interrupted.add(item)
        self.generating.discard(item)  # the call forgets what it forwarded of it

    def _cancel_sent(self, response_id: str | None) -> None:
        if response_id is None:
            self.failures.append("upstream: response.cancel without response_id")
            return
        self.cancels_sent[response_id] = self.cancels_sent.get(response_id, 0) + 1
        if self.cancels_sent[response_id] > 1:
            self.failures.append(f"upstream: {response_id!r} cancelled twice (by the call, or after the server's VAD)")
        self.cancelled.add(response_id)
        self.step_cancels.add(response_id)
        if response_id == self.active:
            self.cancel_req = response_id

    # ------------------------------------------------------------------ oracle of the upstream events
    def saw_response_created(self, response_id: str, out_of_band: bool) -> None:
        if response_id in self.done_responses:  # an id used again (outside the protocol): a new response
            self.cancels_sent.pop(response_id, None)
            self.cancelled.discard(response_id)
        self.responses.append(response_id)
        self.live_responses.add(response_id)
        self.done_responses.discard(response_id)
        if out_of_band:
            self.oob_responses.add(response_id)
        self.active = response_id

    def saw_item_added(self, item: str, response_id: str) -> None:
        if item not in self.item_history:
            self.items.append(item)
        else:  # an item announced again (outside the protocol: item ids are unique)
            self.outside.add(item)
        self.item_resp[item] = self.item_history[item] = response_id
        if response_id in self.oob_responses:
            self.oob_items.add(item)

    def saw_response_done(self, response_id: str) -> None:
        self.live_responses.discard(response_id)
        self.done_responses.add(response_id)
        self.oob_responses.discard(response_id)
        if self.active == response_id:
            self.active = None
        if self.cancel_req == response_id:
            self.cancel_req = None
        for item, rid in list(self.item_resp.items()):
            if rid == response_id:
                self.generating.discard(item)
                del self.item_resp[item]

    def saw_barge_in(self, vad: bool) -> None:
        """A barge-in acts on the active response unless it is already being cancelled: the server
        cancels it (speech_started with interrupt_response, a default-conversation response only:
        out-of-band responses are not the VAD's), else the call must."""
        active = self.active
        if active is not None and active != self.cancel_req:
            self.cancel_req = active
            if vad and self.settings.vad_interrupt_response and active not in self.oob_responses:
                self.cancelled.add(active)
                self.cancels_sent[active] = self.cancels_sent.get(active, 0) + 1
            else:
                self.expect_cancel = active

    # ------------------------------------------------------------------ invariants
    def check(self) -> None:
        call = self.call
        fail = self.failures.append
        state = call.state
        if state not in LEGAL[self.prev_state]:
            fail(f"state went {self.prev_state.value} -> {state.value}")
        if call.ended != (state is State.ENDED):
            fail(f"call.ended is {call.ended} in state {state.value}")
        if (call.outcome is not None) != (state is State.ENDED):
            fail(f"call.outcome is {call.outcome!r} in state {state.value}")
        if state is State.ENDED:
            if self.ended_at_counts is None:
                self.ended_at_counts = (self.twilio.sent, sum(leg.sent for leg in self.ups))
                if len(self.twilio.closes) != 1:
                    fail(f"the call ended and closed the twilio leg {len(self.twilio.closes)} times")
                if self.on_end_calls != 1:
                    fail(f"on_end called {self.on_end_calls} times")
            elif self.ended_at_counts != (self.twilio.sent, sum(leg.sent for leg in self.ups)):
                fail("an ended call sent a message")
            for leg in self.ups:
                if len(leg.closes) != 1:
                    fail(f"upstream sender closed {len(leg.closes)} times after the call ended")
            for handle in self.connects:
                if not handle.done and not handle.cancelled:
                    fail("the call ended without cancelling its upstream connect")
        elif self.twilio.closes:
            fail("twilio leg closed before the call ended")
        self.prev_state = state
        # errors that did not escape but should not happen
        if len(_LOOP_ERRORS) > self._loop_errors:
            fail(f"loop exception handler called: {_LOOP_ERRORS[self._loop_errors:]!r}")
            self._loop_errors = len(_LOOP_ERRORS)
        if len(_SWALLOWED.records) > self._swallowed:
            for record in _SWALLOWED.records[self._swallowed:]:
                text = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
                fail(f"an exception was logged ({record.getMessage()}):\n{text}")
            self._swallowed = len(_SWALLOWED.records)
        # every conversation item a clear cut (by the ledger's own plan) is truncated at once
        for plan in self.step_plans:
            for item, _content_index, end_ms in plan:
                if item.startswith(LOCAL_PREFIX) or item in self.oob_items or item in self.step_truncated:
                    continue
                if end_ms == 0 and self.config.unheard_item_action == "skip":
                    continue
                fail(f"a clear cut {item!r} at {end_ms} ms and the model was not told (no truncate)")
        self.step_plans = []
        if self.expect_cancel is not None and self.expect_cancel not in self.step_cancels and state is not State.ENDED:
            fail(f"a barge-in interrupted {self.expect_cancel!r} and nobody cancels it")
        self.expect_cancel = None
        # caller audio
        caller = call.caller
        if len(caller._pending) > self.settings.max_pending_audio_ms * 8:
            fail(f"caller audio held: {len(caller._pending)} bytes > GATEWAY_MAX_PENDING_AUDIO_MS")
        if len(caller._inbuf) >= max(1, self.settings.coalesce_frames * FRAME):
            fail(f"coalescing buffer holds {len(caller._inbuf)} bytes")
        if self.config.audio_mode == "passthrough" and not self.mutated_twilio:
            dropped = call.stats.caller_audio_dropped_bytes
            expected = self.caller_audio[dropped:dropped + len(self.appended)]
            if self.appended != expected:
                fail(f"caller audio appended ({len(self.appended)} bytes) is not the audio received "
                     f"({len(self.caller_audio)} bytes, {dropped} dropped)")
        # bookkeeping bounded by what is live
        responses = call.responses
        live_items = set(self.item_resp)
        if not set(responses.item_response) <= live_items:
            fail(f"Responses.item_response keeps {sorted(set(responses.item_response) - live_items)}")
        if not responses.interrupted_responses <= self.live_responses:
            kept = sorted(responses.interrupted_responses - self.live_responses)
            fail(f"Responses.interrupted_responses keeps {kept}")
        if not responses.out_of_band <= self.live_responses:
            fail(f"Responses.out_of_band keeps {sorted(responses.out_of_band - self.live_responses)}")
        if len(responses.out_of_band_items) > OUT_OF_BAND_MEMORY:
            fail(f"Responses.out_of_band_items holds {len(responses.out_of_band_items)}")
        # an item never announced by output_item.added, or with a delta after its response.done (both
        # outside the protocol) has no response.done to be forgotten at: the call may keep it
        still = live_items | (self.delta_items - set(self.item_history)) | self.outside
        if not responses.interrupted_items <= still:
            fail(f"Responses.interrupted_items keeps {sorted(responses.interrupted_items - still)}")
        if not set(call.playout.produced) <= self.generating:
            fail(f"Playout.produced keeps {sorted(set(call.playout.produced) - self.generating)}")
        unacked = len(self.epoch_marks) - self.acked
        if call.ledger.pending != unacked:
            fail(f"ledger: {call.ledger.pending} marks pending, {unacked} sent and not echoed this epoch")
        timers: set[Any] = set(call._timers)  # Timers of the wheel (wrapped by the call, or not)
        dead = [t for t in timers if not getattr(t, "_handle", t).live]
        if dead:
            fail(f"Call._timers keeps {len(dead)} timers that cannot fire (cancelled or fired)")
        if self.failures:
            failures, self.failures = self.failures, []
            raise FuzzFailure("\n".join(failures))

    def teardown(self) -> None:
        """The end of an example: the worker shuts down (every live call ends), tasks are reaped."""
        if self.call.outcome is not None:
            reason = self.twilio.closes[0][1].partition(":")[0] if self.twilio.closes else "?"
            self._saw(f"ended: {reason}")
        else:
            self._saw(f"alive at the last step: {self.call.state.value}")
        stats = self.call.stats
        for what, n in (("caller frames", stats.frames_in), ("late deltas dropped", stats.deltas_dropped),
                        ("tool calls", self.services.fake_tools.calls),
                        ("REST requests", len(self.rest.requests) if self.rest else 0),
                        ("interrupts acting", sum(stats.interrupts.values()))):
            Harness.seen[what] = Harness.seen.get(what, 0) + n
        try:
            if self.call.state is not State.ENDED:
                self.drive("shutdown", lambda: self.call.end(EndReason.SHUTDOWN))
        finally:
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        if pending and self.call.state is State.ENDED:
            raise FuzzFailure(f"tasks still running after the call ended: {pending!r}")

    # ------------------------------------------------------------------ Twilio messages
    def start_message(self, variant: str) -> bytes:
        now = time.time()
        key = self.settings.token_key
        claims = CallClaims(agent=self.config.agent, caller="+15550001", called="+15550002")
        token: str | None = mint(key, CALL_SID, now, 60, claims)
        sid, inner_sid, call_sid = STREAM_SID, STREAM_SID, CALL_SID
        fmt: dict[str, Any] = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        params: dict[str, Any] = {"who": "fuzz"}
        if variant == "no_token":
            token = None
        elif variant == "malformed_token":
            token = "not.a-token"  # noqa: S105
        elif variant == "bad_mac":
            assert token is not None
            token = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        elif variant == "expired_token":
            token = mint(key, CALL_SID, now - 3600, 60, claims)
        elif variant == "other_call_token":
            token = mint(key, "CA" + "9" * 32, now, 60, claims)
        elif variant == "replayed_token":
            assert token is not None
            self.verifier.verify(token, CALL_SID, now)
        elif variant == "inconsistent_sid":
            inner_sid = OTHER_SID
        elif variant == "no_call_sid":
            call_sid = ""
        elif variant == "bad_format":
            fmt = {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}
        elif variant == "params_not_strings":
            params = {"n": 5}
        elif variant == "default_agent":
            token = mint(key, CALL_SID, now, 60, CallClaims())
        if token is not None:
            params["call_token"] = token
        start = {"accountSid": ACCOUNT_SID, "streamSid": inner_sid, "callSid": call_sid, "tracks": ["inbound"],
                 "customParameters": params, "mediaFormat": fmt}
        if variant == "missing_start":
            return dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid})
        return dumps({"event": "start", "sequenceNumber": "1", "start": start, "streamSid": sid})

    def media_message(self, shape: str, size: int) -> tuple[bytes, bytes | None]:
        """(message, the caller audio it carries if valid)."""
        self._seq += 1
        data = audio(size)
        payload = b64(data)
        sid = STREAM_SID
        compact: dict[str, Any] = {"event": "media", "sequenceNumber": str(self._seq),
                   "media": {"track": "inbound", "chunk": str(self._seq), "timestamp": str(20 * self._seq),
                             "payload": payload}, "streamSid": sid}
        if shape == "compact":
            return dumps(compact), data
        if shape == "reordered":
            return dumps({"streamSid": sid, "media": {"payload": payload}, "event": "media"}), data
        if shape == "spaced":
            return orjson.dumps(compact, option=orjson.OPT_INDENT_2), data
        if shape == "bad_base64":
            compact["media"]["payload"] = payload[:-1] + "!"
        elif shape == "bad_padding":
            compact["media"]["payload"] = b64(audio(3)) + "="
        elif shape == "no_payload":
            del compact["media"]["payload"]
        elif shape == "payload_number":
            compact["media"]["payload"] = 5
        elif shape == "wrong_sid":
            compact["streamSid"] = OTHER_SID
        elif shape == "no_sid":
            del compact["streamSid"]
        elif shape == "media_null":
            compact["media"] = None
        return dumps(compact), None

    # ------------------------------------------------------------------ upstream messages
    def delta_message(self, item: str, content_index: int, nbytes: int, shape: str) -> bytes:
        data = audio(nbytes)
        rid = self.item_history.get(item, "resp_unknown")
        event: dict[str, Any] = {"type": "response.output_audio.delta", "event_id": self.next_id("event"),
                                 "response_id": rid, "item_id": item, "output_index": 0,
                                 "content_index": content_index, "delta": b64(data)}
        if shape == "beta":
            event["type"] = "response.audio.delta"
        elif shape == "spaced":
            return orjson.dumps(event, option=orjson.OPT_INDENT_2)
        elif shape == "nested":
            event["extra"] = {"a": [1, {"b": None}]}
        if shape == "bad_base64":
            event["delta"] = "@@@@"
        elif shape == "no_delta":
            del event["delta"]
        elif shape == "index_bool":
            event["content_index"] = True
        elif shape == "index_str":
            event["content_index"] = "0"
        elif shape == "item_number":
            event["item_id"] = 7
        elif shape == "escaped_item":
            event["item_id"] = item + "\u00e9\n"
        return dumps(event)


# --------------------------------------------------------------------------- the state machine


def _w(*weighted: tuple[Any, int]) -> tuple[Any, ...]:
    """A tuple for ``st.sampled_from`` in which each value appears as often as its weight (the
    first value is what a failing example shrinks towards)."""
    return tuple(value for value, weight in weighted for _ in range(weight))


STEP_DT = _w((0.02, 4), (0.001, 1), (0.05, 2), (0.1, 2), (0.25, 2), (0.5, 2), (1.0, 2), (2.0, 1), (5.0, 1),
             (10.5, 1))
MEDIA_SHAPES = _w(("compact", 8), ("reordered", 1), ("spaced", 1))
MEDIA_SIZES = _w((160, 6), (0, 1), (1, 1), (159, 1), (161, 1), (320, 1), (800, 1), (8000, 1), (40000, 1))
DELTA_SHAPES = _w(("compact", 8), ("beta", 1), ("spaced", 1), ("nested", 1), ("escaped_item", 1))
DELTA_SIZES = _w((800, 6), (480, 2), (0, 1), (1, 1), (2, 1), (160, 1), (2400, 1), (4800, 1), (24000, 1))
MARK_CHOICES = _w(("next", 8), ("all", 2), ("skip", 2), ("duplicate", 1), ("old_epoch", 1), ("unknown", 1),
                  ("future_epoch", 1), ("leading_zero", 1), ("huge_number", 1), ("non_ascii_digits", 1))
ITEM_CHOICES = _w(("latest", 6), ("live", 2), ("old", 1), ("interrupted", 1), ("new", 1), ("local_looking", 1))
RESPONSE_CHOICES = _w(("active", 6), ("new", 1), ("old", 1), ("unknown", 1))
BENIGN_ERRORS = ("response_cancel_not_active", "conversation_already_has_active_response", "invalid_value",
                 "unknown_code", "null_code", "long_message")
# Hostile steps (most end the call: a protocol violation, the other side going away); rules drawn only
# in examples with hostile=True, so that half the examples live long enough to get deep.
TWILIO_HOSTILE = (
    "start:valid", "start:default_agent", "start:no_token", "start:malformed_token", "start:bad_mac",
    "start:expired_token", "start:other_call_token", "start:replayed_token", "start:inconsistent_sid",
    "start:no_call_sid", "start:bad_format", "start:params_not_strings", "start:missing_start",
    "media:bad_base64", "media:bad_padding", "media:no_payload", "media:payload_number", "media:wrong_sid",
    "media:no_sid", "media:media_null", "mark:not_string", "mark:wrong_sid", "mark:no_name",
    "garbage:not_json", "garbage:array", "garbage:number", "garbage:no_event", "garbage:event_number",
    "garbage:empty", "garbage:invalid_utf8", "garbage:unknown_event", "garbage:truncate", "garbage:flip",
    "garbage:drop", "garbage:concat", "garbage:connected", "garbage:dtmf_bad", "stop:ok", "stop:wrong_sid",
    "transport:binary", "transport:oversized", "transport:close",
)
UPSTREAM_HOSTILE = (
    "delta:bad_base64", "delta:no_delta", "delta:index_bool", "delta:index_str", "delta:item_number",
    "delta:odd_pcm", "error:session_expired", "error:beta_api_shape_disabled", "error:session_event",
    "error:code_number", "error:no_error_object", "garbage:not_json", "garbage:array", "garbage:number",
    "garbage:no_type", "garbage:type_number", "garbage:empty", "garbage:invalid_utf8", "garbage:unknown_type",
    "garbage:truncate", "garbage:flip", "garbage:drop", "garbage:concat", "garbage:bad_fields",
    "transport:closed", "transport:lost", "transport:binary", "connect:late",
)


@functools.cache
def machine_class() -> type:
    """The ``RuleBasedStateMachine`` (built on first use: hypothesis is a test dependency)."""
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

    pick = st.integers(min_value=0, max_value=63)

    def hostile(machine: CallFuzz) -> bool:
        return machine.hostile

    class CallFuzz(RuleBasedStateMachine):
        """Every rule is one step of one call; ``Harness`` checks the invariants after each."""

        def __init__(self) -> None:
            super().__init__()
            self.h: Harness | None = None
            self.hostile = False

        @property
        def harness(self) -> Harness:
            assert self.h is not None
            return self.h

        @initialize(
            secure=st.booleans(), audio_mode=st.sampled_from(("passthrough", "pcm16")),
            coalesce_frames=st.sampled_from((1, 1, 3)),
            unheard_item_action=st.sampled_from(("truncate", "truncate", "delete", "skip")),
            vad_interrupt_response=st.booleans(), max_pending_audio_ms=st.sampled_from((2000, 100, 0)),
            greeting=st.sampled_from(("", "Greet the caller.")), admit_deferred=st.booleans(),
            agent=st.sampled_from(("default", "full", "full")), filler=st.sampled_from(("speech", "tone", "none")),
            rest=st.booleans(), prologue=st.sampled_from(("streaming", "streaming", "streaming", "started", "none")),
            hostile=st.booleans(),
        )
        def configure(self, prologue: str, hostile: bool, **config: Any) -> None:
            self.h = Harness(FuzzConfig(**config))
            self.hostile = hostile
            h = self.h
            if prologue == "none":
                return
            h.twilio_message(dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            h.twilio_message(h.start_message("valid"), kind="start")
            if h.config.admit_deferred and h.admissions:
                h.admitted += 1
                h.drive("admit", lambda: h.call.admitted(None))
            if prologue == "streaming":
                self._connect()

        def teardown(self) -> None:
            if self.h is not None:
                self.h.teardown()

        # -------------------------------------------------------------- Twilio
        @precondition(lambda self: self.h is not None and self.h.call.state is State.CONNECTED)
        @rule(connected_first=st.booleans())
        def twilio_start(self, connected_first: bool) -> None:
            h = self.harness
            if connected_first:
                h.twilio_message(dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            h.twilio_message(h.start_message("valid"), kind="start")

        @rule(shape=st.sampled_from(MEDIA_SHAPES), size=st.sampled_from(MEDIA_SIZES), repeat=st.integers(1, 5))
        def twilio_media(self, shape: str, size: int, repeat: int) -> None:
            h = self.harness
            for _ in range(repeat):
                message, caller_audio = h.media_message(shape, size)
                h.twilio_message(message, kind="media", caller_audio=caller_audio)

        @rule(choice=st.sampled_from(MARK_CHOICES), index=pick)
        def twilio_mark(self, choice: str, index: int) -> None:
            """Twilio echoes a mark: the next one (as it plays), all of them (a clear), one further on,
            again, of an earlier epoch, or a name the gateway never sent."""
            h = self.harness
            marks = h.all_marks
            echoed = set(h.echoed)
            unechoed = [m for m in marks if m not in echoed]
            names: list[str] = []
            if choice == "next" and unechoed:
                names = [unechoed[0]]
            elif choice == "all":
                names = unechoed
            elif choice == "skip" and unechoed:
                names = [unechoed[index % len(unechoed)]]
            elif choice == "duplicate" and h.echoed:
                names = [h.echoed[index % len(h.echoed)]]
            elif choice == "old_epoch" and marks:
                names = [m for m in marks if h.mark_at[m][0] < h.epoch][:1] or [marks[0]]
            elif choice == "unknown":
                names = [("", "x", "1:", ":1", "a:b", "1:2:3", " 0:1", "-1:0")[index % 8]]
            elif choice == "future_epoch":
                names = [f"{h.epoch + 1}:{index}"]
            elif choice == "leading_zero":
                names = [f"0{h.epoch}:{index}"]
            elif choice == "huge_number":
                names = [f"{h.epoch}:{'9' * (18 + index % 4)}"]
            elif choice == "non_ascii_digits":
                names = ["\u0661:\u0662"]
            for name in names:
                h.twilio_message(dumps({"event": "mark", "sequenceNumber": "9", "streamSid": STREAM_SID,
                                        "mark": {"name": name}}), kind="mark")

        @rule(digit=st.sampled_from(("1", "5", "#", "*", "0", "", "12", "\u00e9")))
        def twilio_dtmf(self, digit: str) -> None:
            message = dumps({"event": "dtmf", "streamSid": STREAM_SID, "sequenceNumber": "7",
                             "dtmf": {"track": "inbound_track", "digit": digit}})
            self.harness.twilio_message(message, kind="dtmf")

        @rule()
        def twilio_duplicate(self) -> None:
            h = self.harness
            if h.last_twilio:
                h.twilio_message(h.last_twilio, kind="duplicate", caller_audio=h.last_twilio_audio)

        @rule(kind=st.sampled_from(("unknown_event", "connected")))
        def twilio_unknown(self, kind: str) -> None:
            """Forward compatible: an event Twilio may add is counted and ignored."""
            message = (dumps({"event": "hologram", "streamSid": STREAM_SID, "sequenceNumber": "3"}) if kind ==
                       "unknown_event" else dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            self.harness.twilio_message(message, kind="twilio")

        @precondition(hostile)
        @rule(kind=st.sampled_from(TWILIO_HOSTILE), where=pick)
        def twilio_hostile(self, kind: str, where: int) -> None:
            h = self.harness
            group, _, variant = kind.partition(":")
            call = h.call
            if group == "start":
                h.twilio_message(h.start_message(variant), kind="start", mutated=variant != "valid")
            elif group == "media":
                h.twilio_message(h.media_message(variant, 160)[0], kind="media")
            elif group == "mark":
                name: Any = where if variant == "not_string" else (h.all_marks or ["0:0"])[0]
                body: dict[str, Any] = {"name": name} if variant != "no_name" else {}
                sid = OTHER_SID if variant == "wrong_sid" else STREAM_SID
                h.twilio_message(dumps({"event": "mark", "streamSid": sid, "mark": body}), kind="mark")
            elif group == "garbage":
                message = {
                    "not_json": b"hello", "array": b"[1,2]", "number": b"5", "no_event": b'{"streamSid":"x"}',
                    "event_number": b'{"event":5}', "empty": b"", "invalid_utf8": b'{"event":"\xff"}',
                    "unknown_event": dumps({"event": "hologram"}),
                    "connected": dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                    "dtmf_bad": dumps({"event": "dtmf", "streamSid": STREAM_SID, "dtmf": {"digit": 5}}),
                }.get(variant)
                if message is None:
                    message = mutate(h.last_twilio or h.start_message("valid"), variant, where)
                h.twilio_message(message, kind="garbage", mutated=True)
            elif group == "stop":
                sid = OTHER_SID if variant == "wrong_sid" else STREAM_SID
                h.twilio_message(dumps({"event": "stop", "sequenceNumber": "99", "streamSid": sid,
                                        "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID}}), kind="stop")
            else:
                action = {"binary": call.on_twilio_binary, "oversized": lambda: call.on_twilio_oversized(70000),
                          "close": call.twilio_closed}[variant]
                h.drive(variant, action)

        # -------------------------------------------------------------- the upstream connection
        def _connect(self) -> None:
            h = self.harness
            if not h.connects:
                return
            handle = h.connects[-1]
            handle.done = True
            leg = Leg(h, f"upstream{len(h.ups)}")
            h.ups.append(leg)
            h.drive("connect", lambda: h.call.upstream_connected(cast(UpstreamLink, leg), 0.05))

        @precondition(lambda self: self.h is not None and bool(self.h.connects) and not self.h.connects[-1].done
                      and not self.h.connects[-1].cancelled)
        @rule(outcome=st.sampled_from(("connected", "connected", "connected", "failed", "timeout")))
        def upstream_connect(self, outcome: str) -> None:
            h = self.harness
            if outcome == "connected":
                self._connect()
                return
            h.connects[-1].done = True
            code = UpstreamFailure.CONNECT_FAILED if outcome == "failed" else UpstreamFailure.CONNECT_TIMEOUT
            h.drive("connect", lambda: h.call.upstream_failed(OSError("refused"), code))

        @precondition(lambda self: self.h is not None and len(self.h.admissions) > self.h.admitted)
        @rule(refused=st.booleans())
        def admit(self, refused: bool) -> None:
            """The control plane answers the call's `start` (once, as ``Gateway._admission`` does)."""
            h = self.harness
            h.admitted += 1
            h.drive("admit", lambda: h.call.admitted(EndReason.OVER_CAPACITY if refused else None))

        # -------------------------------------------------------------- upstream events
        def _response(self, choice: str, index: int) -> str:
            h = self.harness
            if choice == "active" and h.active is not None:
                return h.active
            if choice == "old" and h.responses:
                return h.responses[index % len(h.responses)]
            if choice == "unknown":
                return "resp_unknown"
            return h.responses[-1] if h.responses and choice == "active" else h.next_id("resp")

        def _item(self, choice: str, index: int) -> str:
            h = self.harness
            items = h.items
            if choice == "latest" and items:
                return items[-1]
            if choice == "live":
                live = [i for i in items if i in h.item_resp]
                if live:
                    return live[index % len(live)]
            if choice == "old":
                old = [i for i in items if h.item_history.get(i) in h.done_responses]
                if old:
                    return old[index % len(old)]
            if choice == "interrupted":
                hit = sorted(h.interrupted) or [i for i in items if h.item_history.get(i) in h.cancelled]
                if hit:
                    return hit[index % len(hit)]
            if choice == "local_looking":
                return f"{LOCAL_PREFIX}hold-1"
            return items[-1] if items and choice != "new" else h.next_id("item")

        @rule(kind=st.sampled_from(("session.created", "session.updated", "conversation.created",
                                    "rate_limits.updated", "conversation.item.added", "conversation.item.truncated",
                                    "response.content_part.added", "response.output_item.done",
                                    "input_audio_buffer.cleared", "output_audio_buffer.started")))
        def upstream_other(self, kind: str) -> None:
            """Events the gateway does not act on."""
            h = self.harness
            event: dict[str, Any] = {"type": kind, "event_id": h.next_id("event")}
            if kind.startswith("session."):
                event["session"] = {"type": "realtime", "id": "sess_1", "object": "realtime.session"}
            h.upstream_message(dumps(event))

        @rule(choice=st.sampled_from(("new", "new", "new", "duplicate")),
              metadata=st.sampled_from((None, None, None, "filler", "say", "other")))
        def response_created(self, choice: str, metadata: str | None) -> None:
            h = self.harness
            rid = h.responses[-1] if choice == "duplicate" and h.responses else h.next_id("resp")
            response: dict[str, Any] = {"object": "realtime.response", "id": rid, "status": "in_progress",
                                        "output": [], "usage": None}
            if metadata is not None:
                response["metadata"] = {"gateway": metadata} if metadata != "other" else {"purpose": "x"}
                response["conversation_id"] = None
            h.upstream_message(dumps({"type": "response.created", "event_id": h.next_id("event"),
                                      "response": response}))

        @rule(response=st.sampled_from(RESPONSE_CHOICES), item_type=st.sampled_from(("message", "function_call")),
              item=st.sampled_from(("new", "new", "new", "latest")), index=pick)
        def output_item_added(self, response: str, item_type: str, item: str, index: int) -> None:
            h = self.harness
            rid = self._response(response, index)
            item_id = self._item(item, index)
            payload: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": item_type,
                                       "status": "in_progress"}
            if item_type == "function_call":
                payload.update(name="lookup", call_id=h.next_id("call"), arguments="")
            else:
                payload.update(role="assistant", content=[])
            h.upstream_message(dumps({"type": "response.output_item.added", "event_id": h.next_id("event"),
                                      "response_id": rid, "output_index": 0, "item": payload}))

        @rule(item=st.sampled_from(ITEM_CHOICES), content_index=st.sampled_from((0, 0, 0, 1)),
              size=st.sampled_from(DELTA_SIZES), shape=st.sampled_from(DELTA_SHAPES), index=pick,
              repeat=st.integers(1, 4))
        def audio_delta(self, item: str, content_index: int, size: int, shape: str, index: int, repeat: int) -> None:
            h = self.harness
            item_id = self._item(item, index)
            for _ in range(repeat):
                h.upstream_message(h.delta_message(item_id, content_index, size, shape))

        @rule(item=st.sampled_from(ITEM_CHOICES), beta=st.booleans(), index=pick)
        def audio_done(self, item: str, beta: bool, index: int) -> None:
            h = self.harness
            item_id = self._item(item, index)
            kind = "response.audio.done" if beta else "response.output_audio.done"
            message = dumps({"type": kind, "event_id": h.next_id("event"),
                             "response_id": h.item_history.get(item_id, ""), "item_id": item_id, "output_index": 0,
                             "content_index": 0})
            h.upstream_message(message)

        @rule(kind=st.sampled_from(("output_transcript_delta", "output_transcript_done", "input_committed",
                                    "input_delta", "input_completed", "input_failed", "speech_stopped",
                                    "args_delta", "args_done", "text_delta")),
              item=st.sampled_from(ITEM_CHOICES), index=pick)
        def transcript(self, kind: str, item: str, index: int) -> None:
            h = self.harness
            item_id = self._item(item, index)
            rid = h.item_history.get(item_id, "resp_x")
            base = {"event_id": h.next_id("event"), "item_id": item_id}
            table: dict[str, dict[str, Any]] = {
                "output_transcript_delta": {"type": "response.output_audio_transcript.delta", "response_id": rid,
                                            "output_index": 0, "content_index": 0, "delta": "Hello "},
                "output_transcript_done": {"type": "response.output_audio_transcript.done", "response_id": rid,
                                           "output_index": 0, "content_index": 0,
                                           "transcript": "Hello there, how can I help you today?"},
                "input_committed": {"type": "input_audio_buffer.committed", "previous_item_id": None},
                "input_delta": {"type": "conversation.item.input_audio_transcription.delta", "content_index": 0,
                                "delta": "I want"},
                "input_completed": {"type": "conversation.item.input_audio_transcription.completed",
                                    "content_index": 0, "transcript": "I want my order status"},
                "input_failed": {"type": "conversation.item.input_audio_transcription.failed", "content_index": 0,
                                 "error": {"type": "transcription_error", "code": "x", "message": "m"}},
                "speech_stopped": {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 1200},
                "args_delta": {"type": "response.function_call_arguments.delta", "response_id": rid,
                               "output_index": 0, "call_id": "call_1", "delta": '{"order'},
                "args_done": {"type": "response.function_call_arguments.done", "response_id": rid,
                              "output_index": 0, "call_id": "call_1", "name": "lookup", "arguments": "{}"},
                "text_delta": {"type": "response.output_text.delta", "response_id": rid, "output_index": 0,
                               "content_index": 0, "delta": "hi"},
            }
            h.upstream_message(dumps({**table[kind], **base}))

        @rule(response=st.sampled_from(RESPONSE_CHOICES),
              status=st.sampled_from(("completed", "completed", "cancelled", "incomplete", "failed")),
              output=st.sampled_from(("none", "message", "message", "lookup", "end_call", "transfer", "transfer_bad",
                                      "unknown_tool", "bad_arguments", "arguments_list", "two_lookups",
                                      "message_and_end_call")),
              usage=st.sampled_from(("none", "full", "flat", "negative")), index=pick)
        def response_done(self, response: str, status: str, output: str, usage: str, index: int) -> None:
            h = self.harness
            rid = self._response(response, index)
            items = [i for i, r in h.item_resp.items() if r == rid]

            def call_item(name: str, arguments: str) -> dict[str, Any]:
                return {"id": h.next_id("item"), "object": "realtime.item", "type": "function_call",
                        "status": "completed", "name": name, "call_id": h.next_id("call"), "arguments": arguments}

            out: list[dict[str, Any]] = [{"id": i, "object": "realtime.item", "type": "message",
                                          "status": "completed", "role": "assistant", "content": []}
                                         for i in items if output != "none"]
            out += {
                "lookup": [call_item("lookup", '{"order_id":"42"}')],
                "two_lookups": [call_item("lookup", "{}"), call_item("lookup", '{"order_id":"7"}')],
                "end_call": [call_item("end_call", '{"reason":"done"}')],
                "message_and_end_call": [call_item("end_call", "{}")],
                "transfer": [call_item("transfer_call", f'{{"target":"{TRANSFER_TARGET}"}}')],
                "transfer_bad": [call_item("transfer_call", '{"target":"+19995550000"}')],
                "unknown_tool": [call_item("teleport", "{}")],
                "bad_arguments": [call_item("lookup", '{"order_id":')],
                "arguments_list": [call_item("end_call", "[1,2]")],
            }.get(output, [])
            body: dict[str, Any] = {"object": "realtime.response", "id": rid, "status": status, "output": out}
            if usage == "full":
                body["usage"] = {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10,
                                 "input_token_details": {"text_tokens": 5, "audio_tokens": 15, "cached_tokens": 4,
                                                         "cached_tokens_details": {"text_tokens": 2,
                                                                                   "audio_tokens": 2}},
                                 "output_token_details": {"text_tokens": 3, "audio_tokens": 7}}
            elif usage == "flat":
                body["usage"] = {"total_tokens": 3, "input_tokens": 2, "output_tokens": 1}
            elif usage == "negative":
                body["usage"] = {"total_tokens": -3, "input_tokens": -2, "output_tokens": -1}
            h.upstream_message(dumps({"type": "response.done", "event_id": h.next_id("event"), "response": body}))

        @rule()
        def speech_started(self) -> None:
            h = self.harness
            h.upstream_message(dumps({"type": "input_audio_buffer.speech_started", "event_id": h.next_id("event"),
                                      "audio_start_ms": 1000, "item_id": h.next_id("item")}))

        @rule(code=st.sampled_from(BENIGN_ERRORS))
        def upstream_error(self, code: str) -> None:
            """Errors that leave the session open."""
            self._error(code)

        def _error(self, code: str) -> None:
            h = self.harness
            error: Any = {"type": "invalid_request_error", "code": code, "message": "something", "param": None,
                          "event_id": None}
            if code == "session_event":
                error.update(code="invalid_value", event_id=f"{CALL_SID}:session")
            elif code == "unknown_code":
                error["code"] = "rate_limited_somehow"
            elif code == "null_code":
                error["code"] = None
            elif code == "code_number":
                error["code"] = 5
            elif code == "no_error_object":
                error = "oops"
            elif code == "long_message":
                error.update(code="x" * 300, message="m" * 5000)
            h.upstream_message(dumps({"type": "error", "event_id": h.next_id("event"), "error": error}))

        @rule()
        def upstream_duplicate(self) -> None:
            h = self.harness
            if h.last_upstream:
                h.upstream_message(h.last_upstream)

        @precondition(hostile)
        @rule(kind=st.sampled_from(UPSTREAM_HOSTILE), where=pick)
        def upstream_hostile(self, kind: str, where: int) -> None:
            h = self.harness
            group, _, variant = kind.partition(":")
            call = h.call
            if group == "delta":
                item = self._item("latest", where)
                size = 801 if variant == "odd_pcm" else 800
                h.upstream_message(h.delta_message(item, 0, size, "compact" if variant == "odd_pcm" else variant))
            elif group == "error":
                self._error(variant)
            elif group == "garbage":
                message = {
                    "not_json": b"nope", "array": b"[]", "number": b"1", "no_type": b'{"event_id":"e"}',
                    "type_number": b'{"type":1}', "empty": b"", "invalid_utf8": b'{"type":"\xff"}',
                    "unknown_type": b'{"type":"response.hologram.delta","x":1}',
                    "bad_fields": (b'{"type":"response.created","response":5}',
                                   b'{"type":"response.done","response":{"id":1}}',
                                   b'{"type":"response.output_item.added","response_id":"r","item":null}',
                                   b'{"type":"error","error":{"message":5}}')[where % 4],
                }.get(variant)
                if message is None:
                    base = h.last_upstream or dumps({"type": "response.created", "response": {"id": "resp_g"}})
                    message = mutate(base, variant, where)
                h.upstream_message(message)
            elif group == "connect":  # the transport completes a connect the call already cancelled
                if h.connects and h.connects[-1].cancelled and not h.connects[-1].done:
                    self._connect()
            elif h.ups:
                action = {"closed": lambda: call.upstream_closed(1001, "going away"),
                          "lost": lambda: call.upstream_closed(1006, "connection lost"),
                          "binary": call.on_upstream_binary}[variant]
                h.drive(variant, action)

        # -------------------------------------------------------------- time, barge-in, the control plane
        @rule(dt=st.sampled_from(STEP_DT), tick=st.booleans())
        def advance(self, dt: float, tick: bool) -> None:
            """Time passes (timers fire); the worker's housekeeping tick may run."""
            self._time_passes(dt, tick)

        def _time_passes(self, dt: float, tick: bool) -> None:
            h = self.harness

            def run() -> None:
                h.timers.advance(dt)
                if tick:
                    h.call.tick(h.now)

            h.drive("timer", run)

        @rule(items=st.sampled_from((1, 1, 2)), deltas=st.integers(1, 6),
              size=st.sampled_from((800, 800, 1600, 4000, 160)),
              end=st.sampled_from(("done", "done", "open", "cancelled", "audio_done")),
              tool=st.sampled_from(("none", "none", "lookup", "end_call", "transfer")), answer=st.booleans())
        def model_turn(self, items: int, deltas: int, size: int, end: str, tool: str, answer: bool) -> None:
            """A spoken response as the server streams it, in order: created, per item (added, deltas,
            audio done, transcript), done; or only its beginning (``open``: still generating,
            ``audio_done``: every item's audio out, no response.done yet). With ``answer`` it answers
            the oldest response.create of the call not answered yet (its metadata echoed)."""
            h = self.harness
            response: dict[str, Any] = {"object": "realtime.response", "id": h.next_id("resp"),
                                        "status": "in_progress", "output": [], "usage": None}
            if answer and h.answered < len(h.creates):
                request = h.creates[h.answered]
                h.answered += 1
                if request.get("metadata"):
                    response["metadata"] = request["metadata"]
                if request.get("conversation") == "none":
                    response["conversation_id"] = None
            rid = response["id"]

            def send(event: dict[str, Any]) -> bool:
                h.upstream_message(dumps({"event_id": h.next_id("event"), **event}))
                return h.call.state is State.STREAMING

            if not send({"type": "response.created", "response": response}):
                return
            output: list[dict[str, Any]] = []
            for k in range(items):
                item = h.next_id("item")
                message = {"id": item, "object": "realtime.item", "type": "message", "status": "in_progress",
                           "role": "assistant", "content": []}
                output.append({**message, "status": "completed"})
                if not send({"type": "response.output_item.added", "response_id": rid, "output_index": k,
                             "item": message}):
                    return
                for _ in range(deltas):
                    h.upstream_message(h.delta_message(item, 0, size, "compact"))
                if end == "open" or h.call.state is not State.STREAMING:
                    return
                ids = {"response_id": rid, "item_id": item, "output_index": k, "content_index": 0}
                if not send({"type": "response.output_audio.done", **ids}):
                    return
                if not send({"type": "response.output_audio_transcript.done", **ids, "transcript": "Sure."}):
                    return
            if end == "audio_done":
                return
            if tool != "none" and end == "done":
                name, arguments = {"lookup": ("lookup", '{"order_id":"42"}'), "end_call": ("end_call", "{}"),
                                   "transfer": ("transfer_call", f'{{"target":"{TRANSFER_TARGET}"}}')}[tool]
                output.append({"id": h.next_id("item"), "object": "realtime.item", "type": "function_call",
                               "status": "completed", "name": name, "call_id": h.next_id("call"),
                               "arguments": arguments})
            send({"type": "response.done", "response": {**response, "output": output,
                                                         "status": "cancelled" if end == "cancelled" else "completed"}})

        @rule(dt=st.sampled_from((0.02, 0.1, 0.1, 0.25, 0.5, 1.0, 2.0)), frame=st.booleans(), tick=st.booleans())
        def twilio_plays(self, dt: float, frame: bool, tick: bool) -> None:
            """Time passes as on a live call: Twilio plays what it holds (8 bytes/ms, from arrival)
            and echoes each mark as its audio has played (every flushed mark at once), a caller
            frame arrives, the worker's tick may run."""
            h = self.harness
            self._time_passes(dt, tick)
            if frame and h.call.state is not State.ENDED:
                message, caller_audio = h.media_message("compact", FRAME)
                h.twilio_message(message, kind="media", caller_audio=caller_audio)
            for name in h.marks_played():
                if h.call.state is State.ENDED:
                    break
                h.twilio_message(dumps({"event": "mark", "sequenceNumber": "5", "streamSid": STREAM_SID,
                                        "mark": {"name": name}}), kind="mark")

        @rule(trigger=st.sampled_from((Trigger.API, Trigger.CONTROL_API, Trigger.SPEECH_STARTED)))
        def interrupt(self, trigger: Trigger) -> None:
            h = self.harness
            streaming = h.call.state is State.STREAMING
            must_clear = streaming and h.audio_pending()
            if streaming:
                h.saw_barge_in(vad=trigger is Trigger.SPEECH_STARTED)
            h.drive("interrupt", lambda: h.call.interrupt(trigger))
            if must_clear and not h.step_clear:
                raise FuzzFailure("interrupt while Twilio may hold audio: no clear sent")

        @rule(verb=st.sampled_from((Verb.GET, Verb.INTERRUPT, Verb.HANGUP, Verb.SAY, Verb.SAY, Verb.INSTRUCTIONS,
                                    Verb.TRANSFER)),
              arg=st.sampled_from(("good", "good", "bad")), after_playout=st.booleans())
        def control(self, verb: Verb, arg: str, after_playout: bool) -> None:
            """A control-API verb, through ``control.commands.execute`` as the API runs it."""
            h = self.harness
            args: dict[str, Any] = {"after_playout": after_playout if arg == "good" else "yes",
                                    "text": "Your order has shipped." if arg == "good" else "",
                                    "instructions": "Be brief." if arg == "good" else 5,
                                    "target": TRANSFER_TARGET if arg == "good" else "+19995550000"}
            streaming = h.call.state is State.STREAMING
            barge_in = streaming and (verb is Verb.INTERRUPT or (
                verb is Verb.SAY and arg == "good" and (h.call.response_active or h.call.audio_playing)))
            must_clear = barge_in and h.audio_pending()
            if barge_in:
                h.saw_barge_in(vad=False)

            def run() -> None:
                with contextlib.suppress(ControlError):
                    commands.execute(h.call, CALL_SID, verb, args)

            h.drive("control", run)
            if must_clear and not h.step_clear:
                raise FuzzFailure(f"{verb} while Twilio may hold audio: no clear sent")

        @precondition(lambda self: self.h is not None and bool(self.h.services.fake_tools.pending.futures))
        @rule(status=st.sampled_from((ToolStatus.OK, ToolStatus.OK, ToolStatus.TIMEOUT, ToolStatus.HTTP_ERROR)),
              index=pick)
        def tool_answers(self, status: ToolStatus, index: int) -> None:
            h = self.harness
            futures = h.services.fake_tools.pending.futures
            future = futures[index % len(futures)]
            output = '{"status":"shipped"}' if status is ToolStatus.OK else '{"error":"no"}'
            def answer() -> None:
                if not future.done():
                    future.set_result(ToolResult(status, output, 0.2))

            h.drive("tool", answer)

        @precondition(lambda self: self.h is not None and self.h.rest is not None and bool(self.h.rest.pending.futures))
        @rule(ok=st.booleans())
        def rest_answers(self, ok: bool) -> None:
            h = self.harness
            assert h.rest is not None
            future = h.rest.pending.futures[0]

            def answer() -> None:
                if ok:
                    future.set_result(None)
                else:
                    future.set_exception(TwilioRestError("update CA…: Twilio error 21220: not in progress"))

            h.drive("rest", answer)

        @invariant()
        def nothing_pending(self) -> None:
            """Failures found while sending (outside a step) surface at the next invariant check."""
            if self.h is not None and self.h.failures:
                failures, self.h.failures = self.h.failures, []
                raise FuzzFailure("\n".join(failures))

    CallFuzz.__name__ = CallFuzz.__qualname__ = "CallFuzz"
    return CallFuzz


def hypothesis_settings(examples: int, steps: int, derandomize: bool = False) -> Any:
    from hypothesis import HealthCheck, Phase, settings

    return settings(max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
                    derandomize=derandomize, suppress_health_check=list(HealthCheck),
                    phases=(Phase.generate, Phase.shrink), print_blob=True, report_multiple_bugs=False)


# --------------------------------------------------------------------------- running


@dataclass
class ChunkResult:
    examples: int
    steps: int
    seconds: float
    failure: str | None = None
    seed: int | None = None
    seen: dict[str, int] | None = None


def run_chunk(examples: int, steps: int, seed: int | None, impl: str, derandomize: bool = False) -> ChunkResult:
    """Run ``examples`` examples (one hypothesis run); a failure comes back shrunk, as text."""
    from hypothesis.reporting import with_reporter
    from hypothesis.stateful import run_state_machine_as_test

    machine: Any = machine_class()
    if seed is not None:
        machine._hypothesis_internal_use_seed = seed  # what @seed sets (run_state_machine_as_test reads it)
    report: list[object] = []
    e0, s0, t0 = Harness.examples, Harness.steps, time.perf_counter()
    seen0 = dict(Harness.seen)
    failure = None
    with fuzzing(impl), with_reporter(report.append):
        try:
            run_state_machine_as_test(machine, settings=hypothesis_settings(examples, steps, derandomize))
        except Exception as exc:  # noqa: BLE001 - the failure is the result
            shown = [str(line) for line in report or getattr(exc, "__notes__", [])]
            failure = "\n".join(shown) + f"\n{type(exc).__name__}: {exc}"
    seen = {k: n - seen0.get(k, 0) for k, n in Harness.seen.items() if n - seen0.get(k, 0)}
    return ChunkResult(Harness.examples - e0, Harness.steps - s0, time.perf_counter() - t0, failure, seed, seen)


def _job(job: int, examples: int, chunk: int, steps: int, impl: str, seed: int, queue: Any) -> None:
    """One process's share: chunks of examples with their own seeds; each chunk's result goes on
    the queue (the reproduction of a failure included); stops at the first failure."""
    done = index = 0
    while done < examples:
        n = min(chunk, examples - done)
        result = run_chunk(n, steps, seed + job * 1_000_003 + index, impl)
        index += 1
        done += n
        queue.put(asdict(result))
        if result.failure is not None:
            return


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=int, default=10_000, help="examples to run (one example = one call "
                        "driven through --steps steps); default %(default)s")
    parser.add_argument("--steps", type=int, default=40, help="steps per example (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: random, printed)")
    parser.add_argument("--chunk", type=int, default=1000,
                        help="examples per hypothesis run: a progress line each (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="processes, each with its own seeds "
                        "(default %(default)s)")
    parser.add_argument("--impl", choices=("compiled", "pure"), default="compiled" if _fastpath.COMPILED else "pure",
                        help="fast-path implementation (default: the loaded one)")
    parser.add_argument("--output", default=str(RESULTS / "fuzz.json"), help="JSON summary (default %(default)s)")


class _Inline:
    """The queue of a single in-process job: results are handled as they come."""

    def __init__(self, handle: Callable[[dict[str, Any]], None]) -> None:
        self.put = handle


def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    jobs = max(1, min(args.jobs, args.examples))
    print(f"fuzz: {args.examples} examples x {args.steps} steps, {args.impl} fast path, seed {seed}, "
          f"{jobs} job(s), chunks of {args.chunk}", flush=True)
    started = time.perf_counter()
    shares = [args.examples // jobs + (1 if j < args.examples % jobs else 0) for j in range(jobs)]
    results: list[dict[str, Any]] = []

    def handle(result: dict[str, Any]) -> None:
        results.append(result)
        _progress(results, args.examples, started)

    if jobs == 1:
        _job(0, shares[0], args.chunk, args.steps, args.impl, seed, _Inline(handle))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager:
            queue = manager.Queue()
            procs = [ctx.Process(target=_job, args=(j, shares[j], args.chunk, args.steps, args.impl, seed, queue))
                     for j in range(jobs)]
            for proc in procs:
                proc.start()
            while any(proc.is_alive() for proc in procs) or not queue.empty():
                with contextlib.suppress(Exception):
                    handle(queue.get(timeout=1.0))
                if any(r["failure"] is not None for r in results):
                    break
            for proc in procs:  # after a failure the other jobs stop where they are
                proc.terminate() if proc.is_alive() else None
                proc.join()
    seconds = time.perf_counter() - started
    failures = [r for r in results if r["failure"] is not None]
    examples = sum(r["examples"] for r in results)
    steps = sum(r["steps"] for r in results)
    seen: dict[str, int] = {}
    for r in results:
        for what, n in (r.get("seen") or {}).items():
            seen[what] = seen.get(what, 0) + n
        r.pop("seen", None)
    summary = {
        "examples": examples, "requested": args.examples, "steps": steps, "steps_per_example": args.steps,
        "example": "one call from a fresh Call through --steps steps (rules), then shut down",
        "seconds": round(seconds, 1), "examples_per_s": round(examples / seconds, 1) if seconds else None,
        "steps_per_s": round(steps / seconds, 1) if seconds else None,
        "seed": seed, "jobs": jobs, "impl": args.impl, "chunk": args.chunk,
        "failures": failures, "failed": bool(failures), "seen": dict(sorted(seen.items())),
        "environment": environment(),
    }
    rate = examples / seconds if seconds else 0.0
    print(f"fuzz: {examples} examples ({steps} steps) in {seconds:.1f} s: {rate:.1f} examples/s, "
          f"{steps / seconds if seconds else 0:.0f} steps/s; {'FAILED' if summary['failed'] else 'no failure'}",
          flush=True)
    print("what the examples got to (totals):")
    for what, n in sorted(seen.items()):
        print(f"  {what:40} {n:>12}")
    for r in failures:
        print(f"\n--- failure (seed {r['seed']}); hypothesis's shrunk reproduction:\n{r['failure']}", flush=True)
    write_json(args.output, summary)
    print(f"summary: {args.output}")
    return 1 if summary["failed"] else 0


def _progress(results: list[dict[str, Any]], total: int, started: float) -> None:
    done = sum(r["examples"] for r in results)
    steps = sum(r["steps"] for r in results)
    elapsed = time.perf_counter() - started
    rate = done / elapsed if elapsed else 0.0
    eta = (total - done) / rate if rate else float("inf")
    print(f"  {done}/{total} examples, {steps} steps, {elapsed:.0f} s, {rate:.1f} examples/s, ETA {eta:.0f} s",
          flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(argparse.ArgumentParser().parse_args()))
