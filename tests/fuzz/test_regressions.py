"""Bugs the fuzzer (bench/fuzz.py) found in the bridge core, each replayed as its reproduction.

Every test drives a ``CallFuzz`` machine step by step (the invariants of ``Harness.check`` run after
each step, as in the fuzzer) and then states the fact the fix restored.
"""
from __future__ import annotations

from typing import Any

from fuzz_helpers import configure


def media_sent(h: Any) -> int:
    return h.counts.get("twilio media", 0)


def test_cancelled_timers_are_forgotten(machine):
    """``Call._timers`` kept every timer a behaviour cancelled until the call ended: the agent re-arms
    its keypad timer on every digit, so a call grew by one dead timer per key press."""
    h = configure(machine, agent="full")
    for digit in "1234#":
        machine.twilio_dtmf(digit=digit)
    timers = h.call._timers
    assert len(timers) == 2  # the keypad batch (re-armed five times) and max_call_s
    assert all(getattr(timer, "_handle", timer).live for timer in timers)
    machine.advance(dt=2.0, tick=False)  # the batch fires once, with every digit
    pressed = [m for m in h.upstream_log if b"The caller pressed" in m]
    assert len(pressed) == 1 and b"1 2 3 4 #" in pressed[0]
    assert len(timers) == 1
