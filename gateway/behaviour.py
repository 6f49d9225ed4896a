"""The seam between the bridge (``call.Call``) and what runs above it (agents, the control plane).

The bridge knows frames, the playout ledger and barge-in; it does not know agents, tools or call
records. It asks a ``CallBehaviour`` for the session to open and tells it what happened (server
events it does not act on itself, keypad digits, barge-ins, the end); the behaviour acts on the
call through ``CallControl``. Imports run one way: ``gateway.agents`` implements these, the bridge
only defines them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .openai.server_events import ServerEvent
    from .outcomes import EndReason, Trigger


@dataclass(frozen=True)
class SessionPlan:
    """What the upstream session of a call looks like, decided when its `start` arrives."""

    session: dict[str, Any]  # the `session` of session.update
    audio_mode: str = "passthrough"  # passthrough | pcm16
    model: str = ""  # the model of the upstream URL ("" = as configured)
    greeting: str = ""  # instructions of a first response.create; "" = the caller speaks first
    # False-interruption resume (turns.Turns): caller speech shorter than this pauses the
    # assistant's audio instead of interrupting it; 0 = off. When on, the session's VAD neither
    # cancels nor creates responses: the gateway decides both.
    min_interruption_ms: int = 0
    respond_to_turns: bool = True  # create a response after each caller turn (the VAD's create_response)
    server_interrupts: bool = True  # the server cancels its response on speech start (interrupt_response)


@dataclass(frozen=True)
class Truncation:
    item_id: str
    audio_end_ms: int
    produced_ms: float | None  # model audio of the item forwarded so far, if it was still generating


@dataclass(frozen=True)
class Interruption:
    trigger: Trigger
    at: float  # the call's clock
    truncations: list[Truncation] = field(default_factory=list)


class CallControl(Protocol):
    """What a behaviour may do to its call."""

    call_sid: str | None
    stream_sid: str | None
    custom_parameters: dict[str, str]
    started_at: float

    def now(self) -> float: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Any:
        """A timer on the call's loop (``.cancel()``-able); it never fires after the call ended."""

    def send_upstream(self, data: bytes) -> None: ...

    def cancel_response(self, response_id: str) -> None:
        """Cancel a live response the behaviour asked for (a filler), unless a barge-in cancels it
        already; none of its audio plays after this."""

    @property
    def response_active(self) -> bool: ...

    @property
    def audio_playing(self) -> bool:
        """Twilio may still hold audio sent to it (by the ledger)."""

    def interrupt(self, trigger: Trigger) -> bool: ...

    def play_local(self, tag: str, ulaw: bytes) -> None:
        """Play audio made here (a hold tone) to the caller; never truncated upstream."""

    def stop_local(self) -> None:
        """Clear what Twilio still holds of local audio (and anything else it holds)."""

    def after_playout(self, callback: Callable[[], None], max_wait_s: float) -> None:
        """Run once no response is active and Twilio has played everything sent (or after max_wait_s)."""

    def expect_end(self, reason: EndReason | None) -> None:
        """Twilio's coming stop or close means ``reason`` (a REST hang-up or transfer); None: it does not."""

    def end(self, reason: EndReason, detail: str = "") -> None: ...


class CallBehaviour:
    """What a call does with nothing above the bridge: the session from the settings, no reactions.

    The agent layer subclasses it; every hook is called on the call's loop and must not block.
    """

    def plan(self) -> SessionPlan:
        raise NotImplementedError

    def on_upstream_ready(self) -> None:
        """The session is configured (session.update sent): the behaviour may speak."""

    def on_event(self, event: ServerEvent) -> None:
        """A server event (other than audio deltas), after the bridge has acted on it."""

    def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key."""

    def on_item_audio_done(self, item_id: str, audio_ms: float) -> None:
        """An assistant item's audio is complete: ``audio_ms`` were forwarded to the caller."""

    def on_interrupt(self, interruption: Interruption) -> None:
        """A barge-in acted (clear/cancel/truncate sent)."""

    def on_false_interruption(self, item_id: str) -> None:
        """The caller's turn ``item_id`` was too short to interrupt: deleted, the assistant resumed."""

    def on_end(self, outcome: str, reason: str) -> None:
        """The call ended (both sockets closed or closing)."""

    def replay(self) -> list[bytes]:
        """The conversation so far as client events for a new session (reconnect, rollover)."""
        return []

    def awaits_answer(self) -> bool:
        """After a replay: is the model's turn due (the caller spoke last, unanswered)?"""
        return False
