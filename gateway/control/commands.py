"""Running a control verb on a call this worker owns (the end of every routed command)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..agents.agent_call import AgentCall
from ..outcomes import Trigger
from .model import ControlError, Verb, conflict, not_found

if TYPE_CHECKING:
    from ..call import Call


def _text(args: dict[str, Any], key: str, limit: int = 4000) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ControlError(400, f'"{key}" must be a non-empty string')
    if len(value) > limit:
        raise ControlError(400, f'"{key}" is longer than {limit} characters')
    return value


def execute(call: Call | None, call_sid: str, verb: Verb, args: dict[str, Any]) -> dict[str, Any]:
    """The verb's result as JSON; ``ControlError`` with the status the API answers with."""
    from ..call import State  # the runtime layer: importing the bridge is the right direction

    if call is None:
        raise not_found(call_sid)
    behaviour = call.behaviour
    base: dict[str, Any] = {"call_sid": call_sid, "stream_sid": call.stream_sid, "state": call.state.value}
    if verb is Verb.GET:
        details = behaviour.details() if isinstance(behaviour, AgentCall) else {}
        return {**base, **details, "interrupts": dict(call.stats.interrupts)}
    if call.state is not State.STREAMING or not isinstance(behaviour, AgentCall):
        raise conflict(f"call {call_sid} is {call.state.value}")
    if verb is Verb.INTERRUPT:
        return {**base, "interrupted": call.interrupt(Trigger.CONTROL_API)}
    if verb is Verb.HANGUP:
        after = args.get("after_playout", False)
        if not isinstance(after, bool):
            raise ControlError(400, '"after_playout" must be true or false')
        behaviour.hangup(after)
        return {**base, "hanging_up": True, "after_playout": after}
    if verb is Verb.SAY:
        behaviour.say(_text(args, "text"))
        return {**base, "saying": True}
    if verb is Verb.INSTRUCTIONS:
        behaviour.set_instructions(_text(args, "instructions", 32_000))
        return {**base, "instructions_updated": True}
    if verb is Verb.TRANSFER:
        target = _text(args, "target", 256)
        try:
            behaviour.transfer(target)
        except ValueError as exc:
            raise ControlError(400, str(exc)) from None
        except LookupError as exc:
            raise conflict(str(exc)) from None
        return {**base, "transferring_to": target}
    raise ControlError(400, f"unknown verb {verb!r}")
