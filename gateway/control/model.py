"""What the control plane knows of a call, the commands it routes, and how they fail.

A call is registered by the worker that owns it (the one holding its media socket) and found by
any worker of any pod: through the pod's hub (the supervisor of ``gateway serve``) and, with
``GATEWAY_REDIS_URL``, through Redis. Commands run on the owner; their failures map to the
control API's status codes (``ControlError.status``).
"""
from __future__ import annotations

import enum

import msgspec


class Verb(enum.StrEnum):
    """What the control API can ask of a live call (``gateway_control_commands_total{verb}``)."""

    GET = "get"  # details: state, agent, duration, barge-ins, transcript so far
    INTERRUPT = "interrupt"
    HANGUP = "hangup"  # {"after_playout": bool}
    SAY = "say"  # {"text"}: an out-of-band response
    INSTRUCTIONS = "instructions"  # {"instructions"}: session.update mid-call
    TRANSFER = "transfer"  # {"target"}: REST redirect with <Dial>


class Route(enum.StrEnum):
    """Where a command ran, for the routing-latency histogram."""

    LOCAL = "local"  # the worker that got the request owns the call
    POD = "pod"  # another worker of this pod, through the hub
    CLUSTER = "cluster"  # another pod, through Redis


class CallInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """A registry entry: enough to find the call and list it."""

    call_sid: str
    stream_sid: str = ""
    pod: str = ""
    worker: int = 0
    agent: str = ""
    started_at: float = 0.0  # unix seconds
    state: str = ""
    direction: str = "inbound"


class ControlError(Exception):
    """A command could not run; ``status`` is the HTTP status the control API answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def not_found(call_sid: str) -> ControlError:
    return ControlError(404, f"no call {call_sid} on any worker")


def conflict(reason: str) -> ControlError:
    return ControlError(409, reason)


def unavailable(reason: str) -> ControlError:
    return ControlError(503, reason)


def timed_out(reason: str) -> ControlError:
    return ControlError(504, reason)
