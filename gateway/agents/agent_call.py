"""One call's agent: session from its profile, tools, filler, keypad, hang-up, transfer, the record.

``AgentCall`` is the ``CallBehaviour`` of every call (without an agents file, of the ``default``
agent built from the environment). It never touches frames: it hears server events the bridge
forwards and acts through ``CallControl``.

Function calls run when their response is done and ``completed``: a response cancelled by a
barge-in also emits ``function_call_arguments.done``, but its calls are not executed (recorded as
``skipped``). HTTP tools run concurrently on the worker's loop; their outputs go back as
``function_call_output`` items, followed by one ``response.create`` once every call of the batch
has answered and no response is active. ``end_call`` and ``transfer_call`` wait until the caller
heard the model's last words (``CallControl.after_playout``), then ask Twilio's REST API.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from ..behaviour import CallBehaviour, CallControl, Interruption, SessionPlan
from ..openai import events as oa
from ..openai import server_events as se
from ..outcomes import EndReason, ToolStatus, Trigger
from ..stats import CallStats
from ..twilio.rest import TwilioRestError, dial_twiml
from ..twilio.tokens import CallClaims
from . import session as sess
from .tone import PERIOD_S, hold_pattern
from .tools import ToolResult, error_output
from .transcript import Transcript
from .usage import Tokens

if TYPE_CHECKING:
    from .services import AgentServices

log = logging.getLogger("gateway.agent")
DTMF_BATCH_S = 1.5  # digits pressed within this of each other reach the model together
PLAYOUT_WAIT_S = 30.0  # the longest end_call/transfer waits for the last words to play
REST_STOP_WAIT_S = 5.0  # after a REST hang-up/transfer, Twilio's stop is expected within this


class _ToolCall:
    __slots__ = ("arguments", "call_id", "latency_s", "name", "output", "started_at", "status")

    def __init__(self, name: str, call_id: str, arguments: str, started_at: float) -> None:
        self.name, self.call_id, self.arguments = name, call_id, arguments
        self.started_at = started_at
        self.status: str = "running"
        self.latency_s: float | None = None
        self.output: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {"name": self.name, "call_id": self.call_id, "arguments": self.arguments, "status": self.status,
                "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 1),
                "at_s": round(self.started_at, 3)}


class AgentCall(CallBehaviour):
    def __init__(self, services: AgentServices, call: CallControl, stats: CallStats, claims: CallClaims) -> None:
        self._services = services
        self._call = call
        self._stats = stats
        self.claims = claims
        self.agent_name, self.agent = services.agents.get(claims.agent or services.agents.default)
        self._tools_config = services.agents.tools
        self._prices = services.agents.prices
        stats.agent = self.agent_name
        settings = services.settings
        self.model = sess.model(self.agent, settings)
        self.transcript = Transcript()
        self.tokens = Tokens()
        self.tool_calls: list[_ToolCall] = []
        self.barge_ins: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outstanding = 0  # HTTP tool calls of the current batch not answered yet
        self._want_response = False  # a response.create is due once nothing is active
        self._digits: list[str] = []
        self._dtmf_timer: Any = None
        self._filler_timer: Any = None
        self._filler_response: str | None = None
        self._filler_spoken = False
        self._pending_say = ""
        self._out_of_band: set[str] = set()
        self._last_replayed: tuple[float, int, list[bytes]] | None = None
        self._tone_timer: Any = None
        self._ending: EndReason | None = None
        self._stop_fallback: Any = None
        self._started_wall = time.time()
        self._max_timer: Any = None

    # ------------------------------------------------------------------ session
    def plan(self) -> SessionPlan:
        settings = self._services.settings
        session = self._services.session(self.agent_name, self.agent)
        model = self.model if self.model != settings.model else ""
        td = sess.turn_detection(self.agent, settings)
        resume_ms = sess.min_interruption_ms(self.agent, settings)
        return SessionPlan(session, sess.audio_mode(self.agent, settings), model, self.agent.greeting,
                           min_interruption_ms=resume_ms, respond_to_turns=td.create_response,
                           server_interrupts=td.interrupt_response and not resume_ms)

    def on_upstream_ready(self) -> None:
        if self.agent.max_call_s is not None:
            self._max_timer = self._call.call_later(self.agent.max_call_s, self._max_duration)

    def _at(self) -> float:
        return self._call.now() - self._call.started_at

    # ------------------------------------------------------------------ server events
    def on_event(self, event: se.ServerEvent) -> None:
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_response_created(self, event: se.ResponseCreated) -> None:
        metadata = event.response.metadata or {}
        if metadata.get("gateway") == "filler":
            self._filler_response = event.response.id
        elif "gateway" in metadata:  # said by the control API, or after a reconnect: not the conversation
            self._out_of_band.add(event.response.id)

    # The transcript is kept for every call (events only, never per frame): the record shows it
    # when the agent asks for transcripts, and a new session gets it replayed after a reconnect.
    def _on_item_added(self, event: se.OutputItemAdded) -> None:
        if event.item.type == "message":
            out_of_band = event.response_id == self._filler_response or event.response_id in self._out_of_band
            self.transcript.assistant_item(event.item.id, self._at(), filler=out_of_band)

    def _on_committed(self, event: se.InputCommitted) -> None:
        self.transcript.caller_item(event.item_id, self._at())

    def _on_input_transcript(self, event: se.InputTranscription) -> None:
        self.transcript.caller_text(event.item_id, event.transcript, self._at())

    def _on_output_transcript(self, event: se.OutputTranscript) -> None:
        self.transcript.assistant_text(event.item_id, event.transcript, self._at())

    def _on_response_done(self, event: se.ResponseDone) -> None:
        response = event.response
        if response.usage is not None:
            for kind, n in self.tokens.add(response.usage).items():
                self._stats.tokens[kind] = self._stats.tokens.get(kind, 0) + n
        if response.id == self._filler_response:
            self._filler_response = None
        self._say_if_due()
        calls = [item for item in response.output if item.type == "function_call"]
        if calls and response.status == "completed":
            self._run(calls)
        else:
            for item in calls:  # of a cancelled or failed response: the model never got to ask
                skipped = _ToolCall(item.name, item.call_id, item.arguments, self._at())
                skipped.status = "skipped"
                self.tool_calls.append(skipped)
        self._respond_if_due()

    _HANDLERS: ClassVar[dict[type, Any]] = {
        se.ResponseCreated: _on_response_created, se.OutputItemAdded: _on_item_added,
        se.InputCommitted: _on_committed, se.InputTranscription: _on_input_transcript,
        se.OutputTranscript: _on_output_transcript, se.ResponseDone: _on_response_done,
    }

    def on_item_audio_done(self, item_id: str, audio_ms: float) -> None:
        self.transcript.audio_done(item_id, audio_ms)

    def on_interrupt(self, interruption: Interruption) -> None:
        for t in interruption.truncations:
            self.transcript.truncated(t.item_id, t.audio_end_ms, t.produced_ms)
        self.barge_ins.append({
            "trigger": str(interruption.trigger), "at_s": round(interruption.at - self._call.started_at, 3),
            "truncated": [{"item_id": t.item_id, "heard_ms": t.audio_end_ms} for t in interruption.truncations],
        })

    def on_false_interruption(self, item_id: str) -> None:
        self.transcript.forget(item_id)
        self.barge_ins.append({"trigger": "speech_started", "at_s": round(self._at(), 3), "resumed": True})

    # ------------------------------------------------------------------ keypad
    def on_dtmf(self, digit: str) -> None:
        self._stats.dtmf_digits += 1
        if self.agent.dtmf != "forward":
            log.debug("dtmf %s ignored (agent %s)", digit, self.agent_name, extra=self._extra())
            return
        self._digits.append(digit[:1])
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        self._dtmf_timer = self._call.call_later(DTMF_BATCH_S, self._send_digits)

    def _send_digits(self) -> None:
        self._dtmf_timer = None
        digits, self._digits = " ".join(self._digits), []
        text = f"The caller pressed {digits}"
        self._call.send_upstream(oa.user_text(text))
        self.transcript.keypad(digits, self._at())
        self._want_response = True
        self._respond_if_due()

    # ------------------------------------------------------------------ function calls
    def _run(self, calls: list[se.OutputItem]) -> None:
        for item in calls:
            record = _ToolCall(item.name, item.call_id, item.arguments, self._at())
            self.tool_calls.append(record)
            if item.name not in self.agent.tools:
                self._answer(record, ToolResult(ToolStatus.UNKNOWN_TOOL, error_output(f"no tool named {item.name!r}"),
                                                0.0))
                continue
            try:
                arguments = orjson.loads(item.arguments or "{}")
            except orjson.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                self._answer(record, ToolResult(ToolStatus.BAD_ARGUMENTS,
                                                error_output("arguments must be a JSON object"), 0.0))
                continue
            if item.name == "end_call":
                self._end_call(record, arguments)
            elif item.name == "transfer_call":
                self._transfer(record, arguments)
            else:
                self._outstanding += 1
                self._spawn(self._http_tool(record, arguments))
        if self._outstanding:
            self._arm_filler()

    async def _http_tool(self, record: _ToolCall, arguments: dict[str, Any]) -> None:
        tool = self._tools_config[record.name]
        call = self._call
        context = {"call_sid": call.call_sid, "stream_sid": call.stream_sid, "from": self.claims.caller,
                   "to": self.claims.called, "agent": self.agent_name, "parameters": call.custom_parameters}
        result = await self._services.tools.call(record.name, tool, arguments, context)
        self._outstanding -= 1
        if self._outstanding == 0:
            self._stop_filler()
        self._answer(record, result)

    def _answer(self, record: _ToolCall, result: ToolResult, respond: bool = True) -> None:
        record.status = str(result.status)
        record.latency_s = result.latency_s
        record.output = result.output
        key = (record.name, record.status)
        self._stats.tool_calls[key] = self._stats.tool_calls.get(key, 0) + 1
        self._stats.tool_latency_s.append((record.name, result.latency_s))
        if result.status is ToolStatus.REFUSED:  # the model asked for what the agent may not do
            log.info("tool %s: %s", record.name, result.status, extra=self._extra())
        elif not result.ok:
            log.warning("tool %s: %s", record.name, result.status, extra=self._extra())
        self._call.send_upstream(oa.function_call_output(record.call_id, result.output))
        if respond:
            self._want_response = True
        self._respond_if_due()

    def _respond_if_due(self) -> None:
        """One response.create for everything the model must react to, once nothing is active."""
        if self._want_response and not self._outstanding and not self._call.response_active and not self._ending:
            self._want_response = False
            self._call.send_upstream(oa.response_create())

    # ------------------------------------------------------------------ filler
    def _arm_filler(self) -> None:
        filler = self.agent.filler
        if filler.kind == "none" or self._filler_timer is not None:
            return
        self._filler_timer = self._call.call_later(filler.after_ms / 1000.0, self._filler_due)

    def _filler_due(self) -> None:
        self._filler_timer = None
        if not self._outstanding:
            return
        if self.agent.filler.kind == "tone":
            self._tone()
        elif not self._call.response_active:
            self._call.send_upstream(oa.response_out_of_band(self.agent.filler.instructions, "filler"))
            self._filler_spoken = True

    def _tone(self) -> None:
        """One period of hold tone every period while a tool runs: Twilio holds about one ahead."""
        self._tone_timer = None
        if not self._outstanding:
            return
        self._call.play_local("hold", hold_pattern())
        self._tone_timer = self._call.call_later(PERIOD_S, self._tone)

    def _stop_filler(self) -> None:
        if self._filler_timer is not None:
            self._filler_timer.cancel()
            self._filler_timer = None
        if self._tone_timer is not None:
            self._tone_timer.cancel()
            self._tone_timer = None
            self._call.stop_local()
        if self._filler_response is not None:  # still generating
            self._call.cancel_response(self._filler_response)
        if self._filler_spoken:  # Twilio may still be playing it
            self._filler_spoken = False
            self._call.stop_local()

    # ------------------------------------------------------------------ built-ins
    def _end_call(self, record: _ToolCall, arguments: dict[str, Any]) -> None:
        reason = str(arguments.get("reason", ""))[:200]
        self._answer(record, ToolResult(ToolStatus.OK, '{"ok":true,"result":"the call ends after your goodbye"}', 0.0),
                     respond=False)
        log.info("end_call (%s): hanging up once the goodbye has played", reason or "no reason", extra=self._extra())
        self._ending = EndReason.AGENT_HANGUP
        self._call.after_playout(lambda: self._spawn(self._hangup(EndReason.AGENT_HANGUP)), PLAYOUT_WAIT_S)

    def _max_duration(self) -> None:
        log.info("max_call_s (%g s) reached: hanging up", self.agent.max_call_s, extra=self._extra())
        self._ending = EndReason.MAX_DURATION
        self._call.after_playout(lambda: self._spawn(self._hangup(EndReason.MAX_DURATION)), 5.0)

    async def _hangup(self, reason: EndReason) -> None:
        rest = self._services.rest
        call_sid = self._call.call_sid
        if rest is None or call_sid is None:
            self._call.end(reason, "media stream closed (no Twilio REST credentials)")
            return
        self._expect_end(reason)
        try:
            await rest.hangup(call_sid)
        except TwilioRestError as exc:
            log.error("REST hang-up failed (%s): closing the media stream instead", exc, extra=self._extra())
            self._call.end(reason, "REST hang-up failed; media stream closed")

    def _transfer(self, record: _ToolCall, arguments: dict[str, Any]) -> None:
        target = str(arguments.get("target", ""))
        if target not in self.agent.transfer_targets:
            self._answer(record, ToolResult(ToolStatus.REFUSED, error_output(
                f"{target!r} is not an allowed transfer target; allowed: {', '.join(self.agent.transfer_targets)}"),
                0.0))
            return
        if self._services.rest is None:
            self._answer(record, ToolResult(ToolStatus.UNAVAILABLE,
                                            error_output("transfers are not configured on this line"), 0.0))
            return
        self._answer(record, ToolResult(ToolStatus.OK, orjson.dumps({"ok": True, "transferring_to": target}).decode(),
                                        0.0), respond=False)
        log.info("transfer_call to %s once the last words have played", target, extra=self._extra())
        self._ending = EndReason.TRANSFERRED
        self._call.after_playout(lambda: self._spawn(self._redirect(target)), PLAYOUT_WAIT_S)

    async def _redirect(self, target: str) -> None:
        rest, call_sid = self._services.rest, self._call.call_sid
        assert rest is not None and call_sid is not None
        self._expect_end(EndReason.TRANSFERRED)
        try:
            await rest.redirect(call_sid, dial_twiml(target))
        except TwilioRestError as exc:
            log.error("transfer to %s failed: %s", target, exc, extra=self._extra())
            self._ending = None
            self._call.expect_end(None)
            if self._stop_fallback is not None:
                self._stop_fallback.cancel()
                self._stop_fallback = None
            self._call.send_upstream(oa.system_text(
                f"The transfer to {target} failed. Tell the caller and offer to help otherwise."))
            self._want_response = True
            self._respond_if_due()

    def _expect_end(self, reason: EndReason) -> None:
        """Twilio will stop the stream; if it does not within REST_STOP_WAIT_S, end it ourselves."""
        self._call.expect_end(reason)
        self._stop_fallback = self._call.call_later(
            REST_STOP_WAIT_S, lambda: self._call.end(reason, "no stop from Twilio after REST"))

    # ------------------------------------------------------------------ the control API
    def details(self) -> dict[str, Any]:
        """What ``GET /calls/{sid}`` shows of a live call."""
        out: dict[str, Any] = {
            "agent": self.agent_name, "from": self.claims.caller, "to": self.claims.called, "model": self.model,
            "duration_s": round(time.time() - self._started_wall, 3), "barge_ins": self.barge_ins,
            "tool_calls": [t.as_record() for t in self.tool_calls], "dtmf_digits": self._stats.dtmf_digits,
            "usage": {"responses": self.tokens.responses, "tokens": dict(self.tokens.counts)},
        }
        if self.agent.transcripts:
            out["transcript"] = self.transcript.snapshot()
        return out

    def hangup(self, after_playout: bool) -> None:
        """End the call now, or once what was already sent has played."""
        self._ending = EndReason.API_HANGUP
        if after_playout:
            self._call.after_playout(lambda: self._spawn(self._hangup(EndReason.API_HANGUP)), PLAYOUT_WAIT_S)
        else:
            self._spawn(self._hangup(EndReason.API_HANGUP))

    def say(self, text: str) -> None:
        """The assistant says ``text`` now (an out-of-band response: not part of the conversation)."""
        self._pending_say = f"Say exactly this to the caller, and nothing else: {text}"
        if self._call.response_active or self._call.audio_playing:
            self._call.interrupt(Trigger.CONTROL_API)
        self._say_if_due()

    def _say_if_due(self) -> None:
        if self._pending_say and not self._call.response_active:
            self._call.send_upstream(oa.response_out_of_band(self._pending_say, "say"))
            self._pending_say = ""

    def set_instructions(self, instructions: str) -> None:
        self._call.send_upstream(oa.session_update({"type": "realtime", "instructions": instructions}))

    def transfer(self, target: str) -> None:
        """Redirect the call to ``target`` (one of the agent's ``transfer_targets``) now."""
        if target not in self.agent.transfer_targets:
            raise ValueError(f"{target!r} is not a transfer target of agent {self.agent_name!r}")
        if self._services.rest is None:
            raise LookupError("transfers need Twilio REST credentials (TWILIO_ACCOUNT_SID)")
        self._ending = EndReason.TRANSFERRED
        self._spawn(self._redirect(target))

    # ------------------------------------------------------------------ a new session (reconnect, rollover)
    def replay(self) -> list[bytes]:
        """The conversation as the caller lived it, as items for a new session: caller turns (their
        transcripts), assistant turns cut to what was heard, keypad input, and function calls with
        their outputs (a call still running gets its output when the tool answers)."""
        timeline: list[tuple[float, int, list[bytes]]] = []
        for i, turn in enumerate(self.transcript.turns):
            if turn.filler:
                continue
            text = turn.heard_text()
            if turn.role == "caller" and text:
                timeline.append((turn.at_s, i, [oa.user_text(text)]))
            elif turn.role == "keypad":
                timeline.append((turn.at_s, i, [oa.user_text(f"The caller pressed {text}")]))
            elif turn.role == "assistant" and text:
                timeline.append((turn.at_s, i, [oa.assistant_text(text)]))
        for j, call in enumerate(self.tool_calls):
            if call.status == "skipped":
                continue
            events = [oa.function_call(call.call_id, call.name, call.arguments)]
            if call.output is not None:
                events.append(oa.function_call_output(call.call_id, call.output))
            timeline.append((call.started_at, len(self.transcript.turns) + j, events))
        timeline.sort(key=lambda entry: (entry[0], entry[1]))
        self._last_replayed = timeline[-1] if timeline else None
        return [event for _, _, events in timeline for event in events]

    def awaits_answer(self) -> bool:
        last = self._last_replayed
        if last is None:
            return False
        first = last[2][0]
        return b'"role":"user"' in first or (len(last[2]) > 1 and not self._outstanding)

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("agent task failed", exc_info=task.exception(), extra=self._extra())

    def on_end(self, outcome: str, reason: str) -> None:
        for task in self._tasks:
            task.cancel()
        for record in self.tool_calls:
            if record.status == "running":
                record.status = "abandoned"  # the call ended before the tool answered
        self._services.records.submit(self.record(outcome, reason))

    def record(self, outcome: str, reason: str) -> dict[str, Any]:
        """The call record (``docs/agents.md#call-records``)."""
        ended = time.time()
        price = self._prices.get(self.model)
        call = self._call
        record: dict[str, Any] = {
            "call_sid": call.call_sid, "stream_sid": call.stream_sid, "agent": self.agent_name,
            "from": self.claims.caller, "to": self.claims.called, "model": self.model,
            "started_at": _iso(self._started_wall), "ended_at": _iso(ended), "ended_at_unix": round(ended, 3),
            "duration_s": round(ended - self._started_wall, 3), "outcome": outcome, "end_reason": reason,
            "barge_ins": self.barge_ins, "tool_calls": [t.as_record() for t in self.tool_calls],
            "dtmf_digits": self._stats.dtmf_digits,
            "usage": {"responses": self.tokens.responses, "tokens": dict(self.tokens.counts)},
            "cost_usd": self.tokens.cost_usd(price),
        }
        if self.agent.transcripts:
            record["transcript"] = self.transcript.snapshot()
        return record

    def _extra(self) -> dict[str, Any]:
        return {"call_sid": self._call.call_sid, "stream_sid": self._call.stream_sid}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
