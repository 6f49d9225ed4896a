"""``gateway.paced.Paced`` on its own: the real PlayoutLedger, a hand-driven clock, no sockets
(end to end: tests/e2e/test_paced_playout.py, test_bargein.py, test_false_interruption.py)."""
from __future__ import annotations

from typing import Any

import pytest

import _fastpath as fp
from gateway.paced import MAX_HELD_BYTES, Paced, PacedOptions
from gateway.pacer import Pacer
from gateway.stats import CallStats

LEAD_MS, CHUNK_MS = 300, 100


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any]] = []

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any) -> Any:
        self.timers.append((self.now + delay, callback))
        return self


def make(retain: bool = False) -> tuple[Paced, list[tuple[str, int, bytes, float]], Clock, fp.PlayoutLedger]:
    clock = Clock()
    ledger = fp.PlayoutLedger(8, 40.0, 0.0)
    sent: list[tuple[str, int, bytes, float]] = []

    def send(item_id: str, index: int, audio: bytes, produced_ms: float, now: float) -> None:
        ledger.queue(item_id, index, len(audio), produced_ms, now)
        sent.append((item_id, index, audio, produced_ms))

    pacer = Pacer(clock, clock.call_later, 0.05)
    paced = Paced(PacedOptions(pacer, LEAD_MS, CHUNK_MS, retain), ledger, send, CallStats(), clock, 0.0)
    return paced, sent, clock, ledger


def audio(ms: int, start: int = 0) -> bytes:
    return bytes((start + i) % 251 for i in range(ms * 8))


def test_first_audio_goes_at_once_then_whole_chunks_within_the_lead():
    paced, sent, clock, ledger = make()
    paced.hold("a", 0, audio(40), 40.0, 0.0)  # the lead is empty: no waiting
    assert [len(s[2]) for s in sent] == [320]
    for k in range(1, 50):  # 2 s of answer arriving at once (5x real time)
        paced.hold("a", 0, audio(40, 320 * k), 40.0, 40.0 * k)
    # ahead_ms counts what is on its way too: Twilio itself holds at most the lead
    assert ledger.ahead_ms(clock.now) <= LEAD_MS + ledger.latency_ms
    assert all(len(s[2]) == CHUNK_MS * 8 for s in sent[3:])  # after the lead built up: whole chunks
    clock.now = 1.0  # a second later the lead has room again
    assert paced.pump(clock.now)
    assert ledger.ahead_ms(clock.now) <= LEAD_MS + ledger.latency_ms
    assert b"".join(s[2] for s in sent) == audio(2000)[:len(b"".join(s[2] for s in sent))]  # in order


def test_a_partial_chunk_waits_only_while_the_lead_outlasts_the_wait():
    paced, sent, clock, _ledger = make()
    paced.hold("a", 0, audio(200), 200.0, 0.0)
    n = len(sent)
    paced.hold("a", 0, audio(30, 1600), 30.0, 200.0)  # 30 ms: not a chunk's worth yet
    assert len(sent) == n  # Twilio still has ~200 ms: wait for more
    clock.now = 0.15  # the lead dropped below latency + a beat + margin: send what there is
    paced.pump(clock.now)
    assert len(sent) == n + 1 and len(sent[-1][2]) == 240
    paced.hold("b", 0, audio(30), 30.0, 0.0)  # a new item closes "a"; b's first 30 ms
    paced.finish("b")  # ... and all of b: no reason to wait
    assert sent[-1][0] == "b"


def test_held_audio_is_bounded():
    """A model streaming a very long answer much faster than real time: what exceeds
    MAX_HELD_BYTES goes to Twilio at once (Twilio buffers minutes)."""
    paced, sent, _clock, _ledger = make()
    for k in range(90):  # 90 s of audio at once
        paced.hold("a", 0, audio(1000), 1000.0, 1000.0 * k)
    held = 90 * 8000 - sum(len(s[2]) for s in sent)
    assert MAX_HELD_BYTES - CHUNK_MS * 8 <= held <= MAX_HELD_BYTES


def test_drop_truncates_unsent_items_at_what_was_sent():
    paced, sent, _clock, _ledger = make()
    paced.hold("a", 0, audio(1000), 1000.0, 0.0)
    sent_ms = sum(s[3] for s in sent)
    plan: list[tuple[str, int, int]] = []
    paced.drop(plan)
    assert plan == [("a", 0, int(sent_ms))] and not paced.holding


@pytest.mark.parametrize("heard_ms", [0, 50, 170])
def test_pause_requeues_exactly_what_was_not_heard(heard_ms):
    paced, sent, clock, ledger = make(retain=True)
    paced.hold("a", 0, audio(2000), 2000.0, 0.0)
    out = b"".join(s[2] for s in sent)
    ledger.clear(clock.now)  # Twilio was cleared with the caller at heard_ms
    paced.pause([("a", 0, heard_ms)])
    assert paced.paused and not paced.pump(clock.now)
    paced.resume()
    again = b"".join(s[2] for s in sent)[len(out):]
    assert again == audio(2000)[heard_ms * 8:heard_ms * 8 + len(again)]  # from the heard byte on
    # a real interruption after all: the item is truncated at what was sent, nothing more goes
    plan: list[tuple[str, int, int]] = []
    paced.drop(plan)
    n = len(sent)
    clock.now += 5.0
    assert not paced.pump(clock.now) and len(sent) == n
    assert plan == [("a", 0, int(heard_ms + len(again) / 8))]


class CountingLedger:
    """The real ledger; counts ``ahead_ms``, which every pump that looks at the lead calls once."""

    def __init__(self, ledger: fp.PlayoutLedger) -> None:
        self._ledger = ledger
        self.looks = 0

    def ahead_ms(self, now: float) -> float:
        self.looks += 1
        return self._ledger.ahead_ms(now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


def test_deltas_and_beats_pump_only_once_time_can_have_made_room():
    """A 3 s answer arriving at 5x real time, beats every 50 ms: the sends (what, how much, when)
    are exactly those of pumping on every delta and beat, with a fraction of the pumps."""
    def run(every_event: bool) -> tuple[list[tuple[str, int, float]], int]:
        clock = Clock()
        ledger = CountingLedger(fp.PlayoutLedger(8, 40.0, 0.0))
        sent: list[tuple[str, int, float]] = []

        def send(item_id: str, index: int, ulaw: bytes, produced_ms: float, now: float) -> None:
            ledger.queue(item_id, index, len(ulaw), produced_ms, now)
            sent.append((item_id, len(ulaw), round(now, 6)))

        pacer = Pacer(clock, clock.call_later, 0.05)
        paced = Paced(PacedOptions(pacer, LEAD_MS, CHUNK_MS), ledger, send, CallStats(), clock, 0.0)  # type: ignore[arg-type]
        events = [(k * 0.008, "delta", k) for k in range(75)] + [(b * 0.05, "beat", b) for b in range(1, 80)]
        for at, kind, k in sorted(events):
            clock.now = at
            if kind == "delta":
                paced.hold("a", 0, audio(40, 320 * k), 40.0, 40.0 * k)
                if k == 74:
                    paced.finish("a")
            elif every_event:
                paced.pump(at)
            else:
                paced.beat(at)
            if every_event and kind == "delta":
                paced.pump(at)
        assert not paced.holding
        return sent, ledger.looks

    reference, reference_looks = run(every_event=True)
    sent, looks = run(every_event=False)
    assert sent == reference
    assert sum(n for _, n, _ in sent) == 75 * 320  # all of it, once
    assert looks * 3 < reference_looks, (looks, reference_looks)
