"""Model audio on its way to the caller: Twilio messages, the playout ledger, latency probes.

``Playout`` owns everything the gateway knows about what Twilio holds and has played: the
``PlayoutLedger`` (fed by mark echoes), how much of each still-generating item was received, the
pcm16 output resampler and its tail, and the probe marks that measure the latency to Twilio.
It sends on the Twilio leg only; the barge-in rules that use it live in ``call.Call``.
``GATEWAY_PLAYOUT=burst`` sends every model delta at once; ``paced`` holds it in ``paced.Paced``,
which decides when each chunk goes.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _fastpath as fp

from .paced import Paced, PacedOptions, Plan
from .sender import Sender
from .stats import CallStats

# Latency probes while Twilio's buffer is idle. An error in the latency estimate counts twice in
# a truncation offset, so right after `start` (while the upstream session opens and the model
# thinks) a burst of probes every 20 ms fills the estimator's window; later the worker's tick
# refreshes it sparingly whenever the buffer is idle.
PROBE_BURST_S = 0.02
PROBE_BURST_MAX = 40
PROBE_INTERVAL_S = 1.0
PROBE_SAMPLES_WANTED = 16


class Playout:
    """Forwards model audio to Twilio and knows where Twilio's playhead is."""

    def __init__(self, twilio: Sender, stats: CallStats, clock: Callable[[], float], latency_ms: float,
                 transcode: bool, call_later: Callable[[float, Callable[[], None]], Any] | None,
                 paced: PacedOptions | None = None) -> None:
        self._twilio = twilio
        self._stats = stats
        self._clock = clock
        self._call_later = call_later  # loop.call_later; None: no probe burst (unit tests)
        self.stream_sid = ""
        self.resampler = fp.Resampler(24000, 8000) if transcode else None
        # μ-law at Twilio lags the model's audio by the output resampler's group delay.
        self.lead_ms = self.resampler.delay / 8.0 if self.resampler is not None else 0.0
        self.ledger = fp.PlayoutLedger(8, latency_ms, self.lead_ms)
        self.produced: dict[str, float] = {}  # ms of model audio forwarded, per item still generating
        self._tail_item: tuple[str, int] | None = None  # pcm16: item whose resampler tail is pending
        self._next_probe = 0.0
        self._burst: Any = None
        self._burst_left = PROBE_BURST_MAX
        self.paced = (Paced(paced, self.ledger, self._send, stats, clock, self.lead_ms)
                      if paced is not None else None)

    @property
    def busy(self) -> bool:
        """Audio on its way to the caller: at Twilio (marks pending) or held here."""
        return bool(self.ledger.busy or (self.paced is not None and self.paced.holding))

    # ------------------------------------------------------------------ audio
    def deliver(self, item_id: str, content_index: int, audio: bytes, produced_ms: float) -> None:
        """One delta of an item's audio: to Twilio now (burst), or held and paced."""
        if not audio:
            return
        produced = self.produced
        before = produced.get(item_id, 0.0)
        produced[item_id] = before + produced_ms
        if self.paced is not None:
            self.paced.hold(item_id, content_index, audio, produced_ms, before)
        else:
            self._send(item_id, content_index, audio, produced_ms, self._clock())

    def _send(self, item_id: str, content_index: int, audio: bytes, produced_ms: float, now: float) -> None:
        """Audio into the ledger, then media + mark in one write."""
        ledger = self.ledger
        if not ledger.busy:
            probe = ledger.probe(now)
            if probe is not None:
                self._send_mark(probe)
        mark = ledger.queue(item_id, content_index, len(audio), produced_ms, now)
        sid = self.stream_sid
        self._twilio.send_many(fp.encode_media(sid, audio), fp.encode_mark(sid, mark))
        stats = self._stats
        stats.media_out += 1
        stats.bytes_out += len(audio)

    def pcm16_delta(self, message: bytes | memoryview) -> tuple[str, int, bytes, float] | None:
        """pcm16 mode: a 24 kHz delta as μ-law; ``(item_id, content_index, ulaw, produced_ms)``."""
        assert self.resampler is not None
        delta = fp.delta_to_pcmu(message, self.resampler)
        if delta is None:
            return None
        item_id, content_index, audio, pcm_bytes = delta
        self._tail_item = (item_id, content_index)
        return item_id, content_index, audio, pcm_bytes / 48.0

    def item_done(self, item_id: str) -> float:
        """The model finished an item's audio: play the resampler's tail as part of it.

        Returns the item's audio forwarded, in ms of model audio."""
        if self.resampler is not None and self._tail_item is not None and self._tail_item[0] == item_id:
            content_index = self._tail_item[1]
            self._tail_item = None
            tail = self.resampler.flush()
            if tail:
                self.deliver(item_id, content_index, fp.ulaw_encode(tail), 0.0)
        if self.paced is not None and self.paced.holding:
            self.paced.finish(item_id)
        return self.produced.pop(item_id, 0.0)  # complete: the ledger knows all of it

    def drop_tail(self) -> None:
        """Audio the resampler holds will never be played (interrupted or dropped)."""
        if self.resampler is not None:
            self.resampler.reset()
            self._tail_item = None

    def abandon_tail(self) -> None:
        """A response ended without ``output_audio.done`` for its item: drop the pending tail."""
        if self._tail_item is not None:
            self.drop_tail()

    def on_mark(self, name: str) -> None:
        now = self._clock()
        self.ledger.on_mark(name, now)
        if self.paced is not None and self.paced.holding:  # a chunk played: the lead has room again
            self.paced.pump(now)

    # ------------------------------------------------------------------ barge-in
    def clear(self, now: float) -> Plan | None:
        """If Twilio may still hold audio: where its playhead will be when a `clear` sent now
        arrives (the items to truncate there), then send the `clear`; held audio is dropped.
        None if nothing was on its way to the caller."""
        busy = self.busy
        plan = self._clear_twilio(now)
        if self.paced is not None:
            self.paced.drop(plan)  # also ends a pause
        return plan if busy else None

    def pause(self, now: float) -> Plan:
        """Paced playout: like ``clear``, but what was sent and not heard goes back to the head
        of the held audio, which stays until ``resume`` (or a ``clear`` drops it)."""
        assert self.paced is not None
        plan = self._clear_twilio(now)
        self.paced.pause(plan)
        return plan

    def resume(self) -> None:
        assert self.paced is not None
        self.paced.resume()

    def _clear_twilio(self, now: float) -> Plan:
        ledger = self.ledger
        if not ledger.busy:
            return []
        plan: Plan = ledger.plan_interrupt(now)
        if self.paced is not None:
            plan = self.paced.absolute(plan)
        self._twilio.send(fp.encode_clear(self.stream_sid))
        ledger.clear(now)
        return plan

    # ------------------------------------------------------------------ latency probes
    def _send_mark(self, name: str) -> None:
        self._twilio.send(fp.encode_mark(self.stream_sid, name))

    def probe_burst(self) -> None:
        """Probe every PROBE_BURST_S until the estimator has its window (right after `start`)."""
        self._burst = None
        ledger = self.ledger
        if ledger.busy or ledger.latency_samples >= PROBE_SAMPLES_WANTED:
            return
        probe = ledger.probe(self._clock())
        if probe is not None:
            self._send_mark(probe)
        self._burst_left -= 1
        if self._call_later is not None and self._burst_left > 0:
            self._burst = self._call_later(PROBE_BURST_S, self.probe_burst)

    def tick(self, now: float) -> None:
        """While Twilio's buffer is idle, a probe now and then keeps the latency estimate fresh."""
        ledger = self.ledger
        if not ledger.busy and now >= self._next_probe:
            probe = ledger.probe(now)
            if probe is not None:
                self._send_mark(probe)
                self._next_probe = now + PROBE_INTERVAL_S

    def stop(self) -> None:
        if self.paced is not None:
            self.paced.stop()
        if self._burst is not None:
            self._burst.cancel()
            self._burst = None
