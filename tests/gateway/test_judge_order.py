"""The judge orders what Twilio received by its place in the stream, not by arrival time: a chunk
and a ``clear`` written together arrive in one read, at the same instant."""
from __future__ import annotations

import random
from types import SimpleNamespace

from gateway.sim.harness import _check_outbound
from gateway.sim.twilio_record import CallRecord, ClearRecord, HeardChunk


def test_a_resume_after_a_clear_that_arrived_with_the_last_chunk_is_a_resume_not_a_repeat():
    audio = random.Random(7).randbytes(4000)
    record = CallRecord("CA1", "AC1")
    record.heard = [
        HeardChunk(audio[0:800], 800, 1.0, played=800, seq=1),
        HeardChunk(audio[800:1600], 800, 1.1, played=400, seq=3),  # half played, then cleared
        HeardChunk(audio[1200:2000], 800, 1.5, seq=6),  # resumed where the caller stopped hearing
    ]
    record.clears = [ClearRecord(1.1, 1.15, 400, [], seq=5)]  # in the same read as the chunk before
    session = SimpleNamespace(truncates=[], assistant_items=[])
    problems: list[str] = []
    resumes: list[float] = []
    received = _check_outbound(record, session, {"item_1": audio}, "passthrough", problems, resumes)  # type: ignore[arg-type]
    assert problems == [] and resumes == [0.0]
    assert received == {"item_1": 2000}


def test_a_chunk_repeated_without_a_clear_between_is_still_caught():
    audio = random.Random(7).randbytes(4000)
    record = CallRecord("CA1", "AC1")
    record.heard = [
        HeardChunk(audio[0:800], 800, 1.0, played=800, seq=1),
        HeardChunk(audio[800:1600], 800, 1.1, seq=3),
        HeardChunk(audio[1200:2000], 800, 1.1, seq=6),
    ]
    record.clears = [ClearRecord(1.1, 1.15, 0, [], seq=7)]  # same instant, but after the repeat
    problems: list[str] = []
    _check_outbound(record, SimpleNamespace(truncates=[], assistant_items=[]), {"item_1": audio},  # type: ignore[arg-type]
                    "passthrough", problems, [])
    assert problems == ["item item_1: chunk at offset 1200 after 1600 B (gap, duplicate or reorder)"]
