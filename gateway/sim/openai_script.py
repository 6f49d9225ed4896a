"""What the simulated model says and calls on successive responses (``OpenAISimConfig.script``).

A script is a sequence of :class:`SimTurn`, one per response that writes to the default
conversation (VAD-triggered or ``response.create``), in order; out-of-band responses
(``conversation: "none"``) never consume a turn. Once the script is exhausted the simulator falls
back to its default answers (``items_per_response`` audio items of the ``response_ms`` cycle).

    script = (
        SimTurn.say("Hello, thanks for calling. How can I help?"),           # greeting
        SimTurn.call("lookup_order", {"order_id": "42"}, say="One moment."),  # after the caller's turn
        SimTurn.say("Order 42 shipped yesterday."),                          # after the tool result
        SimTurn.call("end_call", {}, say="Goodbye!"),
    )

A turn streams, in this order: one assistant message (audio with ``text`` as its transcript, or
``text`` as output text in a text-only response) when it has speech, then each function call.
``SimTurn()`` is a response that ends without any output item.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MS_PER_CHAR", "SimFunctionCall", "SimTurn", "default_tokens", "text_tokens"]

MS_PER_CHAR = 65  # speech length estimated from text: ~15 characters per second of speech
_MIN_SPEECH_MS = 300
_TOKEN = re.compile(r"\s*\S+")


@dataclass(frozen=True)
class SimFunctionCall:
    """One function call the model makes: ``arguments`` is the JSON string the model streams.

    ``call_id`` defaults to a fresh ``call_…`` id per emission.
    """

    name: str
    arguments: str = "{}"
    call_id: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a function call needs a name")
        if not isinstance(self.arguments, str):
            raise TypeError("arguments is a JSON string (use SimTurn.call to pass a mapping)")
        json.loads(self.arguments)  # the script's arguments must be valid JSON (ValueError otherwise)


@dataclass(frozen=True)
class SimTurn:
    """One scripted response.

    ``text``: what the model says (the audio transcript, or the text of a text-only response).
    ``audio_ms``: length of the spoken audio; None = estimated from ``text`` (``MS_PER_CHAR`` per
    character, at least 300 ms); 0 = no audio message even if ``text`` is set. A turn with neither
    has no message item: only its ``calls`` (or nothing at all). Audio without ``text`` gets
    generated filler words as its transcript.
    ``calls``: function calls emitted after the message, in order, in the same response.
    """

    text: str | None = None
    audio_ms: int | None = None
    calls: tuple[SimFunctionCall, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "calls", tuple(self.calls))  # a list is fine too
        if self.audio_ms is not None and self.audio_ms < 0:
            raise ValueError("audio_ms must be >= 0")
        if not all(isinstance(call, SimFunctionCall) for call in self.calls):
            raise TypeError("calls must be SimFunctionCall instances")

    @property
    def speech_ms(self) -> int:
        """Length of the audio message (0: the turn has no message item in an audio response)."""
        if self.audio_ms is not None:
            return self.audio_ms
        if self.text:
            return max(_MIN_SPEECH_MS, MS_PER_CHAR * len(self.text.strip()))
        return 0

    @classmethod
    def say(cls, text: str, audio_ms: int | None = None) -> SimTurn:
        """A spoken answer."""
        return cls(text=text, audio_ms=audio_ms)

    @classmethod
    def call(cls, name: str, arguments: Mapping[str, Any] | str | None = None, *, say: str | None = None,
             audio_ms: int | None = None, call_id: str | None = None,
             more: Sequence[SimFunctionCall] = ()) -> SimTurn:
        """Optionally say something, then call ``name`` with ``arguments`` (a mapping is JSON-encoded
        compactly, as the model writes it); ``more`` adds further calls after it."""
        args = arguments if isinstance(arguments, str) else json.dumps(
            dict(arguments or {}), separators=(",", ":"), ensure_ascii=False)
        return cls(text=say, audio_ms=audio_ms if say is not None or audio_ms else 0,
                   calls=(SimFunctionCall(name, args, call_id), *more))


def text_tokens(text: str) -> list[str]:
    """``text`` as transcript deltas: one per word, each with the whitespace before it, so that
    joining them gives the text back (stripped)."""
    return _TOKEN.findall(text.strip())


def default_tokens(words: Sequence[str]) -> list[str]:
    """Filler words as deltas: ``["sure", " let", " me"]``."""
    return [w if i == 0 else " " + w for i, w in enumerate(words)]
