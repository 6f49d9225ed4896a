"""Model audio on its way to the caller: Twilio messages, the playout ledger, latency probes.

``Playout`` owns everything the gateway knows about what Twilio holds and has played: the
``PlayoutLedger`` (fed by mark echoes), how much of each still-generating item was received, the
pcm16 output resampler and its tail, and the probe marks that measure the latency to Twilio.
It sends on the Twilio leg only; the barge-in rules that use it live in ``call.Call``.

Two ways to send (``GATEWAY_PLAYOUT``):

* ``burst``: every model delta goes to Twilio at once (one media + one mark each), so Twilio holds
  whatever the model has produced so far, often seconds.
* ``paced``: deltas wait here in ``_held`` and go out in chunks of ``chunk_ms`` (one mark each)
  whenever Twilio's lead (sent and not yet played, by the ledger's playhead estimate) has room,
  so Twilio never holds more than ``max_ahead_ms``. Fewer, larger messages both ways (media and mark
  echoes), and a barge-in only has the lead to clear: the held audio is simply dropped, and the
  items it belonged to are truncated at what was sent, all of which the caller heard. The first
  audio of an answer goes out at once (the lead is empty), so pacing adds no latency; after that
  ``pump`` runs on every delta, every mark echo and every beat of the worker's ``Pacer``.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import _fastpath as fp

from .pacer import Pacer
from .sender import Sender
from .stats import CallStats

log = logging.getLogger("gateway.playout")

# Latency probes while Twilio's buffer is idle. An error in the latency estimate counts twice in
# a truncation offset, so right after `start` (while the upstream session opens and the model
# thinks) a burst of probes every 20 ms fills the estimator's window; later the worker's tick
# refreshes it sparingly whenever the buffer is idle.
PROBE_BURST_S = 0.02
PROBE_BURST_MAX = 40
PROBE_INTERVAL_S = 1.0
PROBE_SAMPLES_WANTED = 16

Plan = list[tuple[str, int, int]]  # (item_id, content_index, audio_end_ms) to truncate


class _Held:
    """Model audio of one (item, content part) waiting in the gateway (paced playout)."""

    __slots__ = ("audio", "content_index", "item_id", "open", "produced_ms", "sent_ms")

    def __init__(self, item_id: str, content_index: int, sent_ms: float) -> None:
        self.item_id = item_id
        self.content_index = content_index
        self.audio = bytearray()
        self.produced_ms = 0.0  # ms of model audio ``audio`` represents
        self.sent_ms = sent_ms  # ms of this item already sent to Twilio: what precedes ``audio``
        self.open = True  # more of this item may still arrive


class PacedOptions:
    """Paced playout's parameters (``GATEWAY_PLAYOUT_LEAD_MS``/``_CHUNK_MS``) and the worker's pacer."""

    __slots__ = ("chunk_ms", "max_ahead_ms", "pacer")

    def __init__(self, pacer: Pacer, max_ahead_ms: float, chunk_ms: float) -> None:
        self.pacer = pacer
        self.max_ahead_ms = max_ahead_ms
        self.chunk_ms = chunk_ms


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
        self._paced = paced
        self._held: deque[_Held] = deque()
        self._throttled = False  # the last pump held audio back because the lead was full

    @property
    def busy(self) -> bool:
        """Audio on its way to the caller: at Twilio (marks pending) or held here."""
        return bool(self.ledger.busy or self._held)

    # ------------------------------------------------------------------ audio
    def deliver(self, item_id: str, content_index: int, audio: bytes, produced_ms: float) -> None:
        """One delta of an item's audio: to Twilio now (burst), or held and paced."""
        if not audio:
            return
        produced = self.produced
        before = produced.get(item_id, 0.0)
        produced[item_id] = before + produced_ms
        if self._paced is not None:
            self._hold(item_id, content_index, audio, produced_ms, before)
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

    # ------------------------------------------------------------------ paced playout
    def _hold(self, item_id: str, content_index: int, audio: bytes, produced_ms: float, before: float) -> None:
        held = self._held
        last = held[-1] if held else None
        if last is None or last.item_id != item_id or last.content_index != content_index:
            if last is not None:
                last.open = False
            # What of this item is not held was sent (an item reappearing after another is rare).
            sent = before - sum(h.produced_ms for h in held if h.item_id == item_id)
            last = _Held(item_id, content_index, max(0.0, sent))
            held.append(last)
        last.audio += audio
        last.produced_ms += produced_ms
        paced = self._paced
        assert paced is not None
        if self.pump(self._clock()):
            paced.pacer.add(self)

    def pump(self, now: float) -> bool:
        """Send held audio while Twilio's lead has room for it; True while audio is still held.

        A chunk goes out when it fits under ``max_ahead_ms``; a partial one (the model has not sent
        a chunk's worth yet) only when its item is complete or Twilio's lead is below one chunk."""
        held = self._held
        if not held:
            return False
        paced = self._paced
        assert paced is not None
        ledger = self.ledger
        ahead = ledger.ahead_ms(now)
        if self._throttled and ahead < ledger.latency_ms:
            # Audio was held back for lack of room, and Twilio runs dry before what goes now lands.
            self._stats.playout_underruns += 1
        self._throttled = False
        chunk_ms = paced.chunk_ms
        chunk_bytes = int(chunk_ms * 8)
        room = paced.max_ahead_ms - ahead
        while held:
            entry = held[0]
            available = len(entry.audio)
            take = min(available, chunk_bytes)
            if take > room * 8:
                self._throttled = True
                break
            if take < chunk_bytes and entry.open and ahead >= chunk_ms:
                break  # wait for a full chunk: Twilio has enough to play meanwhile
            if take == available:
                part = entry.produced_ms
                audio = bytes(entry.audio)
                held.popleft()
            else:
                part = entry.produced_ms * take / available
                audio = bytes(entry.audio[:take])
                del entry.audio[:take]
            entry.produced_ms -= part
            entry.sent_ms += part
            self._send(entry.item_id, entry.content_index, audio, part, now)
            room -= take / 8
            ahead += take / 8
        return bool(held)

    def _finish_held(self, item_id: str) -> None:
        """The model sent all of ``item_id``'s audio: its last held part may go out short."""
        for entry in self._held:
            if entry.item_id == item_id:
                entry.open = False
        if self._held:
            self.pump(self._clock())

    def _drop_held(self, plan: Plan) -> None:
        """Barge-in: forget held audio; items not in ``plan`` were heard up to what was sent."""
        planned = {item_id for item_id, _, _ in plan}
        for entry in self._held:
            if entry.item_id not in planned:
                planned.add(entry.item_id)
                plan.append((entry.item_id, entry.content_index, max(0, math.floor(entry.sent_ms - self.lead_ms))))
        self._held.clear()
        self._throttled = False
        assert self._paced is not None
        self._paced.pacer.discard(self)

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
        if self._held:
            self._finish_held(item_id)
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
        if self._held:  # a chunk finished playing: the lead has room again
            self.pump(now)

    # ------------------------------------------------------------------ barge-in
    def clear(self, now: float) -> Plan | None:
        """If Twilio may still hold audio: where its playhead will be when a `clear` sent now
        arrives (the items to truncate there), then send the `clear`; held audio is dropped.
        None if nothing was on its way to the caller."""
        ledger = self.ledger
        if not ledger.busy and not self._held:
            return None
        plan: Plan = []
        if ledger.busy:
            plan = ledger.plan_interrupt(now)
            self._twilio.send(fp.encode_clear(self.stream_sid))
            ledger.clear(now)
        if self._held:
            self._drop_held(plan)
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
        if self._held:
            self._held.clear()
            assert self._paced is not None
            self._paced.pacer.discard(self)
        if self._burst is not None:
            self._burst.cancel()
            self._burst = None
