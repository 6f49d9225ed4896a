"""Bugs the fuzzer (bench/fuzz.py) found in the bridge core, each replayed as its reproduction.

Every test drives a ``CallFuzz`` machine step by step (the invariants of ``Harness.check`` run after
each step, as in the fuzzer) and then states the fact the fix restored.
"""
from __future__ import annotations

import importlib
from typing import Any

from fuzz_helpers import configure

from gateway.outcomes import ToolStatus


def media_sent(h: Any) -> int:
    return h.counts.get("twilio media", 0)


def test_cancelled_timers_are_forgotten(machine):
    """``Call._timers`` kept every timer a behaviour cancelled until the call ended: the agent re-arms
    its keypad timer on every digit, so a call grew by one dead timer per key press."""
    h = configure(machine, agent="full")
    timers = h.call._timers
    before = len(timers)  # max_call_s, and the upstream's liveness timers
    for digit in "1234#":
        machine.twilio_dtmf(digit=digit)
    assert len(timers) == before + 1  # the keypad batch, re-armed five times
    assert all(getattr(timer, "_handle", timer).live for timer in timers)
    machine.advance(dt=2.0, tick=False)  # the batch fires once, with every digit
    pressed = [m for m in h.upstream_log if b"The caller pressed" in m]
    assert len(pressed) == 1 and b"1 2 3 4 #" in pressed[0]
    assert len(timers) == before


def test_items_heard_after_generation_are_not_remembered(machine):
    """A barge-in after generation (Twilio still playing a finished response) marked the items it
    truncated as interrupted for the rest of the call: one entry per such barge-in, never freed
    (their response.done, where the call forgets a response's items, had already passed)."""
    h = configure(machine)
    machine.model_turn(answer=False, deltas=3, end="done", items=2, size=800, tool="none")
    machine.speech_started()  # Twilio still holds the audio: clear, truncate both items
    assert h.counts.get("twilio clear") == 1
    assert len(h.call.stats.truncations) == 2
    assert h.call.responses.interrupted_items == set()


def test_a_barge_in_during_generation_still_drops_late_deltas(machine):
    """(The fix above must keep this:) items still generating stay interrupted until their
    response.done, so the deltas already in flight never reach the caller."""
    h = configure(machine)
    machine.model_turn(answer=False, deltas=2, end="open", items=1, size=800, tool="none")
    machine.speech_started()
    sent = media_sent(h)
    machine.audio_delta(item="latest", content_index=0, size=800, shape="compact", index=0, repeat=3)
    assert media_sent(h) == sent and h.call.stats.deltas_dropped == 3
    machine.response_done(response="active", status="cancelled", output="message", usage="none", index=0)
    assert h.call.responses.interrupted_items == set()


def test_the_hold_tone_leaves_no_bookkeeping(machine):
    """Every period of the hold tone (``filler.kind = "tone"``) stayed in ``Playout.produced`` (the
    model audio forwarded per item still generating) until the call ended: local audio is complete
    when it is sent, and nothing ever forgot it."""
    h = configure(machine, agent="full", filler="tone")
    machine.model_turn(answer=False, deltas=1, end="done", items=1, size=800, tool="lookup")
    sent = media_sent(h)
    for _ in range(5):
        machine.advance(dt=1.0, tick=False)  # the tone starts after 0.5 s, one period every 2 s
    assert media_sent(h) - sent == 3
    assert h.call.playout.produced == {}


def test_stopping_the_filler_truncates_the_model_audio_it_cuts(machine):
    """When a tool answered, ``stop_local`` cleared everything Twilio held and told the model
    nothing. The fuzzer's shrunk case: the model's own "let me check" (the response that called
    the tool) was still playing, the speech filler had been asked for, the tool answered, the clear
    cut the model's words and the model believed the caller had heard them all. The clear's plan
    now truncates what it cut, as a barge-in does."""
    h = configure(machine, agent="full", filler="speech", vad_interrupt_response=False)
    machine.model_turn(answer=False, deltas=3, end="done", items=1, size=800, tool="lookup")  # 300 ms
    machine.advance(dt=0.5, tick=False)  # the filler is asked for
    machine.tool_answers(index=0, status=ToolStatus.OK)  # the filler stops: clear
    assert h.counts.get("twilio clear") == 1
    [(item, heard_ms)] = h.call.stats.truncations
    assert item == h.items[0] and 0 <= heard_ms < 300


def test_stopping_the_hold_tone_truncates_the_model_audio_it_cuts(machine):
    """The same with the hold tone, and an answer of the model queued behind it (the caller spoke
    while the tool ran): the answer is cut before a word of it played."""
    h = configure(machine, agent="full", filler="tone")
    machine.model_turn(answer=False, deltas=1, end="done", items=1, size=800, tool="lookup")
    machine.twilio_plays(dt=0.25, frame=True, tick=False)
    machine.advance(dt=0.5, tick=False)  # the tone plays
    machine.model_turn(answer=False, deltas=3, end="done", items=1, size=800, tool="none")  # queued behind it
    answer = h.items[-1]
    machine.tool_answers(status=ToolStatus.OK, index=0)  # the tone stops: clear
    assert h.counts.get("twilio clear") == 1
    assert h.call.stats.truncations == [(answer, 0)]


def test_a_cancelled_filler_plays_no_more(machine):
    """When a tool answered, the agent cancelled its spoken filler with a bare ``response.cancel``:
    the call did not know, and the filler's deltas still in flight were played after the answer
    had arrived (over the model's real answer). ``CallControl.cancel_response`` drops them."""
    h = configure(machine, agent="full", filler="speech")
    machine.model_turn(answer=False, deltas=1, end="done", items=1, size=800, tool="lookup")
    machine.twilio_plays(dt=0.25, frame=True, tick=False)
    machine.advance(dt=0.5, tick=False)  # the filler is asked for
    machine.model_turn(answer=True, deltas=1, end="open", items=1, size=800, tool="none")  # ... and speaks
    machine.twilio_plays(dt=0.25, frame=True, tick=False)  # what came so far has played
    machine.tool_answers(status=ToolStatus.OK, index=0)  # the filler is cancelled
    assert any(b'"response.cancel"' in m for m in h.upstream_log)
    sent = media_sent(h)
    machine.audio_delta(item="latest", content_index=0, size=800, shape="compact", index=0, repeat=2)
    assert media_sent(h) == sent and h.call.stats.deltas_dropped == 2


def test_a_filler_a_barge_in_cancelled_is_not_cancelled_again(machine):
    """(Found by the fuzzer in this shape:) a barge-in cancelled the filler, then the tool answered
    and the agent cancelled it a second time (earning ``response_cancel_not_active``)."""
    h = configure(machine, agent="full", filler="speech", vad_interrupt_response=False)
    machine.response_done(index=0, output="lookup", response="active", status="completed", usage="none")
    machine.response_created(choice="new", metadata="filler")
    machine.speech_started()  # the call cancels the filler
    machine.tool_answers(index=0, status=ToolStatus.OK)
    assert [m for m in h.upstream_log if b"response.cancel" in m] == [
        b'{"type":"response.cancel","response_id":"%s"}' % h.responses[-1].encode()]


def test_a_vad_barge_in_cancels_an_out_of_band_response(machine):
    """The server's VAD cancels the response of the default conversation, never an out-of-band one
    (a filler, a ``say``); on ``speech_started`` the call assumed it would and sent no
    ``response.cancel``: the out-of-band response ran to its end (its audio dropped, its tokens paid)."""
    h = configure(machine, vad_interrupt_response=True)
    machine.response_created(choice="new", metadata="say")
    machine.speech_started()
    assert h.upstream_log[-1] == b'{"type":"response.cancel","response_id":"%s"}' % h.responses[-1].encode()
    machine.response_created(choice="new", metadata=None)  # the VAD's own response: the server cancels it
    cancels = len([m for m in h.upstream_log if b"response.cancel" in m])
    machine.speech_started()
    assert len([m for m in h.upstream_log if b"response.cancel" in m]) == cancels


def test_an_item_that_continues_after_another_items_audio_keeps_its_offset(machine):
    """The ledger forgot an item once all its runs had played (to stay small on long calls): an
    item that continued after another item's audio (a filler's, the hold tone's) restarted at
    offset 0, and a barge-in truncated it too early, so the model forgot words the caller had
    heard. Shrunk: the model's item, a chunk of another item, all echoed, more of the model's item,
    a barge-in: truncated at 0 ms although the caller had heard its first 100 ms."""
    h = configure(machine, vad_interrupt_response=False)
    machine.model_turn(answer=False, deltas=1, end="open", items=1, size=800, tool="none")
    machine.audio_delta(content_index=0, index=0, item="new", repeat=1, shape="compact", size=800)
    machine.twilio_mark(choice="all", index=0)  # all of it played
    machine.audio_delta(content_index=0, index=0, item="latest", repeat=1, shape="compact", size=800)
    machine.speech_started()
    assert h.call.stats.truncations == [(h.items[0], 100)]


def test_the_ledger_keeps_the_offset_of_an_item_that_continues(fuzz_impl):
    """The same on the ledger alone (both implementations): the answer's first 100 ms played, then a
    filler's 100 ms, then more of the answer was queued when the caller barged in."""
    ledger = importlib.import_module(f"_fastpath._{fuzz_impl}.ledger").PlayoutLedger()
    ledger.queue("answer", 0, 800, 100.0, 0.0)
    filler = ledger.queue("filler", 0, 800, 100.0, 0.0)
    ledger.on_mark(filler, 0.3)  # both played
    ledger.queue("answer", 0, 800, 100.0, 0.3)
    assert ledger.plan_interrupt(0.3) == [("answer", 0, 100)]
