"""How ``PlayoutLedger.on_mark`` classifies an echoed mark.

Defined in a plain Python module so the compiled and the pure ledger return members of the very
same class (``outcome is MarkOutcome.PLAYED`` holds whichever implementation is active).
"""
from __future__ import annotations

import enum

__all__ = ["MarkOutcome"]


class MarkOutcome(enum.IntEnum):
    """How ``on_mark`` classified an echoed mark."""

    PLAYED = 0  # audio mark of the current epoch: the played position advanced
    PROBE = 1  # latency probe of the current epoch: one-way latency estimate updated
    FLUSHED = 2  # mark of an earlier epoch (echoed because of a clear): not counted as played
    UNKNOWN = 3  # not issued by this ledger, garbage, or from a future epoch: ignored
