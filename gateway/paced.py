"""Paced playout (``GATEWAY_PLAYOUT=paced``): model audio waits here and goes to Twilio in chunks.

Why: in burst mode every model delta goes to Twilio at once, so Twilio holds whatever the model
has produced so far (often seconds) and every delta costs a media message, a mark and a mark echo.
Paced, deltas wait in ``Paced._held`` and leave in chunks of ``chunk_ms`` (one mark each) whenever
Twilio's *lead* (sent and not yet played, by the ledger's playhead estimate) has room under
``max_ahead_ms``: fewer, larger messages both ways, and a barge-in only has the lead to clear.
The first audio of an answer goes out at once (the lead is empty), so pacing adds no latency.
After that ``pump`` runs on every mark echo, and on a delta or a beat of the worker's ``Pacer``
only once time alone can have made room: while the lead is full it drains in real time, so
``pump`` notes when the next chunk fits (``_wake_at``) and deltas and beats before then only
queue audio. Most deltas and beats thus cost no pump: the work is per chunk, not per delta.

Pause and resume (false-interruption resume, ``GATEWAY_MIN_INTERRUPTION_MS``): ``pause`` takes
the plan of a ``clear`` just sent (what the caller heard of each item) and puts the audio sent
but not heard back at the head of the queue, from the audio it keeps of the last few chunks
(``retain``); ``resume`` plays on from exactly there. The ledger's offsets restart at 0 with each
``clear``, so items resumed mid-way carry a base offset (``absolute``).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import _fastpath as fp

from .pacer import Pacer
from .stats import CallStats

# Audio Twilio must still have when the next chunk could land, beyond the latency and one beat.
MARGIN_MS = 25.0
# The most audio one call holds here (60 s of μ-law, 480 KB): beyond it the excess goes to Twilio
# at once, as in burst mode (Twilio buffers minutes), so a model streaming a very long answer much
# faster than real time cannot grow the gateway's memory without bound.
MAX_HELD_BYTES = 60 * 8000

Plan = list[tuple[str, int, int]]  # (item_id, content_index, audio_end_ms) to truncate
Send = Callable[[str, int, bytes, float, float], None]  # (item_id, content_index, ulaw, produced_ms, now)


class PacedOptions:
    """``GATEWAY_PLAYOUT_LEAD_MS``/``_CHUNK_MS``, whether sent audio is kept for a resume, and the pacer."""

    __slots__ = ("chunk_ms", "max_ahead_ms", "pacer", "retain")

    def __init__(self, pacer: Pacer, max_ahead_ms: float, chunk_ms: float, retain: bool = False) -> None:
        self.pacer = pacer
        self.max_ahead_ms = max_ahead_ms
        self.chunk_ms = chunk_ms
        self.retain = retain


class _Held:
    """Model audio of one (item, content part) waiting in the gateway."""

    __slots__ = ("audio", "content_index", "item_id", "open", "produced_ms", "sent_ms")

    def __init__(self, item_id: str, content_index: int, sent_ms: float) -> None:
        self.item_id = item_id
        self.content_index = content_index
        self.audio = bytearray()
        self.produced_ms = 0.0  # ms of model audio ``audio`` represents
        self.sent_ms = sent_ms  # ms of this item before ``audio``: sent to Twilio, heard after a pause
        self.open = True  # more of this item may still arrive


class Paced:
    """The held audio of one call and when it may go (see the module docstring)."""

    def __init__(self, options: PacedOptions, ledger: fp.PlayoutLedger, send: Send, stats: CallStats,
                 clock: Callable[[], float], lead_ms: float) -> None:
        self._options = options
        self._ledger = ledger
        self._send = send
        self._stats = stats
        self._clock = clock
        self._lead_ms = lead_ms  # the output resampler's group delay (pcm16), as in the ledger
        # Lists, not deques: these queues hold a few entries (items waiting; the chunks of about two
        # leads), and an empty deque is 760 bytes per call.
        self._held: list[_Held] = []
        self._held_bytes = 0
        self._throttled = False  # the last pump held audio back because the lead was full
        # Before this (loop time), time alone cannot let anything go: the lead is full (or long
        # enough to wait for a full chunk) until then. Mark echoes, which move the playhead
        # estimate, and everything else that changes what may go pump regardless.
        self._wake_at = 0.0
        self.paused = False
        # Only with ``retain``: the last chunks sent (item, content_index, item byte offset, μ-law),
        # μ-law bytes sent per item, and where each item starts in the ledger's current epoch.
        self._recent: list[tuple[str, int, int, bytes]] = []
        self._recent_bytes = 0
        self._item_bytes: dict[str, int] = {}
        self._base: dict[str, int] = {}

    @property
    def holding(self) -> bool:
        return bool(self._held)

    # ------------------------------------------------------------------ in
    def hold(self, item_id: str, content_index: int, audio: bytes, produced_ms: float, before_ms: float) -> None:
        """A delta; ``before_ms``: the item's model audio received before it."""
        held = self._held
        last = held[-1] if held else None
        if last is None or last.item_id != item_id or last.content_index != content_index:
            if last is not None:
                last.open = False
            # What of this item is not held was sent (an item reappearing after another is rare).
            sent = before_ms - sum(h.produced_ms for h in held if h.item_id == item_id)
            last = _Held(item_id, content_index, max(0.0, sent))
            held.append(last)
        last.audio += audio
        last.produced_ms += produced_ms
        self._held_bytes += len(audio)
        now = self._clock()
        if self._throttled and now < self._wake_at and self._held_bytes <= MAX_HELD_BYTES:
            return  # the head chunk does not fit before _wake_at, and the pacer has this call
        if self.pump(now):
            self._options.pacer.add(self)

    def finish(self, item_id: str) -> None:
        """The model sent all of ``item_id``'s audio: its last held part may go out short."""
        for entry in self._held:
            if entry.item_id == item_id:
                entry.open = False
        self.pump(self._clock())

    # ------------------------------------------------------------------ out
    def beat(self, now: float) -> bool:
        """The pacer's beat: pump only once time can have made room (``_wake_at``)."""
        if now < self._wake_at and self._held and not self.paused:
            return True
        return self.pump(now)

    def pump(self, now: float) -> bool:
        """Send held audio while Twilio's lead has room for it; True while audio waits to be sent.

        A chunk goes out when it fits under ``max_ahead_ms``; a partial one (the model has not sent
        a chunk's worth yet) only when its item is complete or the lead would not outlast waiting:
        until the next chance to send (a beat) plus the trip to Twilio, plus a margin."""
        held = self._held
        self._wake_at = 0.0
        if not held or self.paused:
            return False
        options = self._options
        ledger = self._ledger
        ahead = ledger.ahead_ms(now)
        if self._throttled and ahead < ledger.latency_ms:
            # Audio was held back for lack of room, and Twilio runs dry before what goes now lands.
            self._stats.playout_underruns += 1
        self._throttled = False
        chunk_bytes = int(options.chunk_ms * 8)
        can_wait_ms = max(options.chunk_ms, ledger.latency_ms + options.pacer.period_s * 1000.0 + MARGIN_MS)
        room = options.max_ahead_ms - ahead
        excess = self._held_bytes - MAX_HELD_BYTES  # goes whatever the lead
        while held:
            entry = held[0]
            available = len(entry.audio)
            take = min(available, chunk_bytes)
            if take > room * 8 and excess <= 0:
                self._throttled = True
                self._wake_at = now + (take / 8 - room) / 1000.0  # the lead drains in real time
                break
            if take < chunk_bytes and entry.open and ahead >= can_wait_ms:
                # Wait for a full chunk (a delta pumps): Twilio has enough to play meanwhile.
                self._wake_at = now + (ahead - can_wait_ms) / 1000.0
                break
            if take == available:
                part = entry.produced_ms
                audio = bytes(entry.audio)
                del held[0]
                if not take:
                    continue  # nothing left of a resumed item
            else:
                part = entry.produced_ms * take / available
                audio = bytes(entry.audio[:take])
                del entry.audio[:take]
            entry.produced_ms -= part
            entry.sent_ms += part
            self._held_bytes -= take
            excess -= take
            if options.retain:
                self._keep(entry.item_id, entry.content_index, audio)
            self._send(entry.item_id, entry.content_index, audio, part, now)
            room -= take / 8
            ahead += take / 8
        return bool(held)

    def _keep(self, item_id: str, content_index: int, audio: bytes) -> None:
        """Remember a chunk about to be sent, for a resume; forget what is surely played."""
        start = self._item_bytes.get(item_id, 0)
        self._item_bytes[item_id] = start + len(audio)
        recent = self._recent
        recent.append((item_id, content_index, start, audio))
        self._recent_bytes += len(audio)
        # The lead is at most max_ahead_ms (+ one chunk of estimation slack): keep twice that.
        limit = int(2 * (self._options.max_ahead_ms + self._options.chunk_ms) * 8)
        while self._recent_bytes - len(recent[0][3]) >= limit:
            old = recent.pop(0)
            self._recent_bytes -= len(old[3])
            gone = old[0]
            if (all(r[0] != gone for r in recent) and all(h.item_id != gone for h in self._held)):
                self._item_bytes.pop(gone, None)
                self._base.pop(gone, None)

    # ------------------------------------------------------------------ barge-in
    def absolute(self, plan: Plan) -> Plan:
        """The ledger's plan (offsets in its current epoch) with each item's resumed offset added."""
        base = self._base
        if not base:
            return plan
        return [(item_id, index, ms + base.get(item_id, 0) // 8) for item_id, index, ms in plan]

    def drop(self, plan: Plan) -> None:
        """The interruption is real: forget held and kept audio; items with audio held and not in
        ``plan`` were heard up to what was sent (all of it) and are added to it."""
        planned = {item_id for item_id, _, _ in plan}
        for entry in self._held:
            if entry.item_id not in planned:
                planned.add(entry.item_id)
                plan.append((entry.item_id, entry.content_index, max(0, math.floor(entry.sent_ms - self._lead_ms))))
        self._held.clear()
        self._held_bytes = 0
        self._forget_sent()
        self._throttled = False
        self.paused = False
        self._options.pacer.discard(self)

    def pause(self, plan: Plan) -> None:
        """Twilio was just cleared with ``plan`` (absolute): hold back everything, and put what
        was sent but not heard back at the head of the queue for a resume."""
        self.paused = True
        self._throttled = False
        self._options.pacer.discard(self)
        for item_id, index, heard_ms in reversed(plan):
            self._requeue(item_id, index, heard_ms)
        self._base = dict(self._item_bytes)  # the next epoch starts where each item stands now
        self._recent.clear()
        self._recent_bytes = 0

    def _requeue(self, item_id: str, index: int, heard_ms: int) -> None:
        sent = self._item_bytes.get(item_id, 0)
        heard = min(sent, round((heard_ms + self._lead_ms) * 8))  # μ-law byte the caller is at
        unheard = bytearray()
        for it, ci, start, audio in self._recent:
            if it == item_id and ci == index and start + len(audio) > heard:
                unheard += audio[max(0, heard - start):]
        self._item_bytes[item_id] = sent - len(unheard)
        self._held_bytes += len(unheard)
        held = self._held
        head = held[0] if held else None
        if head is not None and head.item_id == item_id and head.content_index == index:
            head.audio[:0] = unheard
            head.produced_ms += len(unheard) / 8
            head.sent_ms = heard_ms + self._lead_ms
            return
        entry = _Held(item_id, index, heard_ms + self._lead_ms)
        entry.audio += unheard
        entry.produced_ms = len(unheard) / 8
        entry.open = head is None  # more of it may come only if nothing follows it
        held.insert(0, entry)

    def resume(self) -> None:
        """The interruption was not one: play on from where the caller stopped hearing."""
        self.paused = False
        if self.pump(self._clock()):
            self._options.pacer.add(self)

    def _forget_sent(self) -> None:
        self._recent.clear()
        self._recent_bytes = 0
        self._item_bytes.clear()
        self._base.clear()

    def stop(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        self._forget_sent()
        self._options.pacer.discard(self)
