"""One timer per worker that meters every call's held model audio to Twilio (paced playout).

Why one timer: a timer per call would be thousands of loop wake-ups per second for nothing; here
a call is on the list only while audio waits in its ``Playout`` (idle calls cost nothing), and
one wake-up every ``period_s`` serves all of them. Each ``beat`` sends what the call's lead has
room for and says whether audio is still waiting.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("gateway.pacer")


class Pumped(Protocol):
    def beat(self, now: float) -> bool:
        """Send what may go now; True while audio is still waiting."""


class Pacer:
    """Calls ``beat(now)`` of each registered playout every ``period_s`` until it has nothing left."""

    def __init__(self, clock: Callable[[], float], call_later: Callable[[float, Callable[[], None]], Any],
                 period_s: float) -> None:
        self._clock = clock
        self._call_later = call_later
        self.period_s = period_s
        self._waiting: dict[Pumped, None] = {}  # insertion-ordered set: fair, oldest first
        self._handle: Any = None

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, playout: Pumped) -> None:
        """``playout`` holds audio: pump it on the next beat (and every beat until it is done)."""
        self._waiting[playout] = None
        if self._handle is None:
            self._handle = self._call_later(self.period_s, self._beat)

    def discard(self, playout: Pumped) -> None:
        self._waiting.pop(playout, None)

    def _beat(self) -> None:
        self._handle = None
        now = self._clock()
        waiting = self._waiting
        for playout in list(waiting):
            try:
                more = playout.beat(now)
            except Exception:  # one call's bug must not stop every call's audio
                log.exception("playout pump failed; its held audio is dropped")
                more = False
            if not more:
                waiting.pop(playout, None)
        if waiting:
            self._handle = self._call_later(self.period_s, self._beat)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._waiting.clear()
