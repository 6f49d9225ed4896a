# cython: annotation_typing=False, cdivision=False
"""Playout-mark bookkeeping of one call: where is Twilio's playhead, and what did the caller hear?

Why: on barge-in the gateway sends Twilio ``clear`` and truncates the assistant item upstream at
the offset the caller actually *heard*.  Twilio buffers outbound μ-law and plays it at
``bytes_per_ms`` (8 B/ms); a ``mark`` sent after media is echoed once everything before it has
played (at once on an empty buffer); on ``clear`` every pending mark is echoed too, so an echo
alone means "played *or* cleared".  Marks are typically ~100 ms apart and each message spends
~40 ± 10 ms on the wire, so "last echoed mark" (+ a fixed guess) is tens of ms off.

Model (all times in ms on the gateway's monotonic clock; the public API takes seconds):

* Mark names are ``"{epoch}:{seq}"``.  ``epoch`` goes up by one on every ``clear``; ``seq``
  counts every mark ever issued, so the marks of one epoch carry consecutive seqs and the pending
  FIFO is indexed by ``seq - head_seq``.  An echo of an older epoch is FLUSHED (never counted as
  played); garbage, a seq never issued, a future epoch, an old epoch with a seq of the current
  one, or a duplicate echo is UNKNOWN.  Echoes are FIFO, so an echo that skips pending marks
  acknowledges them too.
* Latency ``L`` (one way) = rtt / 2, the interquartile mean of the last ``_LATENCY_WINDOW``
  samples (robust like a median: one sample taken while an event loop stalled must not bend the
  estimate; efficient like a mean: the per-message jitter averages out);
  ``default_latency_ms`` until the first sample.  Samples come from
  - *probe* marks, only issued when no audio mark of the epoch is pending (Twilio's buffer is
    empty), so they are echoed at once: rtt = echo time - send time (several may be in flight);
  - the first audio mark of a segment that started on an idle buffer: its chunk (bytes ``B..E``,
    sent at ``s``) started playing on arrival, so rtt = echo time - s - (E - B) / bpm.
  An error in ``L`` counts twice in the prediction (echoes are converted back by ``L``, the clear
  travels ``L``), so the gateway should probe whenever it is idle (e.g. every 0.5 s).
* Playback: Twilio plays continuously while its buffer is non-empty.  During such a *segment*
  stream byte ``x`` plays at ``O + x / bpm`` where the origin ``O`` is estimated
  - when a chunk starting at stream byte ``B`` is sent at ``s`` and Twilio will already have run
    dry when it arrives (predicted playhead ``(s + L - O) * bpm >= B``, or no segment yet):
    a new segment starts with ``O = s + L - B / bpm``;
  - from every audio-mark echo (end byte ``E``, received at ``r``): observation
    ``o = r - L - E / bpm``.  Observations within 25 ms of ``O`` are averaged into ``O`` (the
    per-message jitter averages out), a farther one means playback stalled or the estimate was
    off: the segment restarts at ``o``.  An echo with ``E`` at or before the segment's first
    byte was played by the *previous* segment and must not move ``O``.
* ``plan_interrupt(now)`` predicts the playhead when a ``clear`` sent now reaches Twilio:
  ``h = (now + L - O) * bpm``, clamped below by the last echoed mark (certainly played) and above
  by the queued bytes and by ``E_next + 2 * L * bpm`` (the first unacknowledged mark was not
  played ``L`` ago, and the clear needs ``L`` more to arrive).  Each (item, content_index) whose
  audio extends past ``h`` gets ``audio_end_ms = floor(item_offset / bpm - lead_ms)``, clamped to
  ``[0, floor(produced_ms)]`` so a truncate never exceeds what the model produced.

Items are contiguous *runs* of the stream (a new run whenever the (item_id, content_index) of a
chunk differs from the previous chunk's); an item that reappears continues its own byte offset.
Fully played runs are pruned on every echo (the newest run is always kept so the current item
keeps counting); an item whose runs are all pruned is forgotten, so a 4-hour call stays small.
``clear`` resets stream position, items and segment but keeps the latency estimate.

One source, two builds: this file is the pure-Python twin *and* the source of the compiled
ledger (``setup.py`` compiles it as ``_fastpath._compiled.ledger`` with the augmenting
``_fastpath/_compiled/ledger.pxd``, which gives the classes C attributes and the hot methods C
signatures and locals).  It is therefore written in the subset that compiles to tight C: pending
marks in a ring of ``array`` columns (typed memoryviews once compiled), mark names parsed
character by character, constants and outcomes in module globals (C globals once compiled), no
per-call allocation besides the mark name and new runs.
"""
from __future__ import annotations

import math
from array import array

from ..marks import MarkOutcome

__all__ = ["MarkOutcome", "PlayoutLedger"]

_AUDIO = 0  # kinds of pending marks
_PROBE = 1
_TOLERANCE_MS = 25.0
_LATENCY_WINDOW = 16
_MAX_DIGITS = 18  # a longer number cannot be an epoch/seq we issued (and would overflow int64)
_INITIAL_CAP = 16  # slots of the pending-mark ring (a power of two; it doubles when full)
_INF = math.inf
_PLAYED = MarkOutcome.PLAYED
_PROBED = MarkOutcome.PROBE
_FLUSHED = MarkOutcome.FLUSHED
_UNKNOWN = MarkOutcome.UNKNOWN


class _Item:
    """Totals of one (item_id, content_index) in the current epoch (made by ``_new_item``)."""

    __slots__ = ("content_index", "item_id", "produced", "queued", "runs")
    item_id: str
    content_index: int
    queued: int  # μ-law bytes queued for this item
    produced: float  # ms of model audio those bytes represent
    runs: int  # runs of this item still in the run table


class _Run:
    """A stretch ``[start, start + length)`` of the stream belonging to one item (``_new_run``)."""

    __slots__ = ("item", "length", "rel_start", "start")
    item: _Item
    start: int
    length: int
    rel_start: int  # item-relative offset of the run's first byte


# Factories instead of __init__: ``cls.__new__(cls)`` is a direct allocation once compiled.
def _new_item(item_id: str, content_index: int) -> _Item:
    item = _Item.__new__(_Item)
    item.item_id = item_id
    item.content_index = content_index
    item.queued = 0
    item.produced = 0.0
    item.runs = 0
    return item


def _new_run(item: _Item, start: int) -> _Run:
    run = _Run.__new__(_Run)
    run.item = item
    run.start = start
    run.length = 0
    run.rel_start = item.queued
    return run


def _mark_name(name: str) -> tuple[int, int]:
    """``(epoch, seq)`` of a name ``"{epoch}:{seq}"`` in canonical ASCII decimals (no sign, no
    leading zero), else ``(-1, -1)``."""
    epoch = -1
    value = digits = 0
    leading_zero = False
    for ch in name:
        if "0" <= ch <= "9":
            if not digits:
                leading_zero = ch == "0"
            elif leading_zero or digits == _MAX_DIGITS:
                return -1, -1
            value = value * 10 + (ord(ch) - 48)
            digits += 1
        elif ch == ":" and digits and epoch < 0:
            epoch = value
            value = digits = 0
        else:
            return -1, -1
    if epoch < 0 or not digits:
        return -1, -1
    return epoch, value


class PlayoutLedger:
    """Mark bookkeeping and playhead estimate for one Twilio stream (see module docstring)."""

    def __init__(self, bytes_per_ms: int = 8, default_latency_ms: float = 50.0,
                 lead_ms: float = 0.0) -> None:
        if bytes_per_ms <= 0:
            raise ValueError("bytes_per_ms must be positive")
        if not 0.0 <= default_latency_ms < _INF or not 0.0 <= lead_ms < _INF:
            raise ValueError("default_latency_ms and lead_ms must be finite and >= 0")
        self._bpm = int(bytes_per_ms)
        self._lead = float(lead_ms)
        self._latency = float(default_latency_ms)
        self._samples = 0
        # One-way latency samples: the last _LATENCY_WINDOW in a ring, and a sorted scratch copy.
        self._recent = array("d", bytes(8 * _LATENCY_WINDOW))
        self._ordered = array("d", bytes(8 * _LATENCY_WINDOW))
        self._recent_n = self._recent_i = 0
        self._epoch = 0
        self._prefix = ""  # f"{epoch}:", the start of every mark name of the epoch (lazily)
        self._seq = 0  # next seq to issue
        self._epoch_first_seq = 0  # first seq issued in the current epoch
        # Pending marks of the epoch, oldest at _head: seq, kind, end byte and send time (ms).
        # Their seqs are consecutive, so slot (_head + i) % _cap holds seq _seq - _count + i.
        self._cap = _INITIAL_CAP
        self._head = self._count = 0
        self._kinds = array("b", bytes(_INITIAL_CAP))
        self._ends = array("q", bytes(8 * _INITIAL_CAP))
        self._sent = array("d", bytes(8 * _INITIAL_CAP))
        self._audio_pending = 0
        self._played = self._flushed = self._unknown = self._probes = 0
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._pos = 0  # P: bytes queued in this epoch
        self._confirmed = 0  # end byte of the last echoed audio mark
        self._runs: list[_Run] = []
        self._items: dict[tuple[str, int], _Item] = {}
        self._last: _Run | None = None  # newest run (None while the epoch has none)
        self._seg_active = False
        self._origin = 0.0  # O
        self._obs_n = 0
        self._seg_start = 0  # first stream byte of the segment
        # (end byte, sent ms, start byte) of an idle-start segment's first chunk (end -1: none)
        self._rtt_end = -1
        self._rtt_sent = 0.0
        self._rtt_start = 0

    # -- read-only state ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._audio_pending > 0

    @property
    def pending(self) -> int:
        return self._count

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def latency_ms(self) -> float:
        return self._latency

    @property
    def latency_samples(self) -> int:
        return self._samples

    @property
    def played_marks(self) -> int:
        return self._played

    @property
    def flushed_marks(self) -> int:
        return self._flushed

    @property
    def unknown_marks(self) -> int:
        return self._unknown

    @property
    def probe_marks(self) -> int:
        return self._probes

    @property
    def queued_bytes(self) -> int:
        return self._pos

    # -- outbound ------------------------------------------------------------------------------
    def _issue(self, kind: int, sent_ms: float) -> str:
        if self._count == self._cap:
            self._grow()
        slot = (self._head + self._count) & (self._cap - 1)
        self._kinds[slot] = kind
        self._ends[slot] = self._pos
        self._sent[slot] = sent_ms
        self._count += 1
        if not self._prefix:
            self._prefix = f"{self._epoch}:"
        name = f"{self._prefix}{self._seq}"
        self._seq += 1
        return name

    def _grow(self) -> None:
        """Double the ring, the oldest pending mark moving to slot 0."""
        cap = self._cap
        kinds = array("b", bytes(2 * cap))
        ends = array("q", bytes(16 * cap))
        sent = array("d", bytes(16 * cap))
        for i in range(cap):
            slot = (self._head + i) & (cap - 1)
            kinds[i] = self._kinds[slot]
            ends[i] = self._ends[slot]
            sent[i] = self._sent[slot]
        self._kinds, self._ends, self._sent = kinds, ends, sent
        self._cap = 2 * cap
        self._head = 0

    def probe(self, now: float) -> str | None:
        """Mark name to send *before* any media if Twilio's buffer is believed empty, else None."""
        if self._audio_pending:
            return None
        return self._issue(_PROBE, now * 1000.0)

    def queue(self, item_id: str, content_index: int, nbytes: int, produced_ms: float,
              now: float) -> str:
        """Record ``nbytes`` of μ-law about to be sent; return the mark name to send after it."""
        if nbytes < 0 or not 0.0 <= produced_ms < _INF:
            raise ValueError("nbytes must be >= 0 and produced_ms finite and >= 0")
        s = now * 1000.0
        start = self._pos
        if not self._seg_active or (s + self._latency - self._origin) * self._bpm >= start:
            self._seg_active = True
            self._origin = s + self._latency - start / self._bpm
            self._obs_n = 1
            self._seg_start = start
            # On an idle buffer this chunk plays on arrival: its echo measures the round trip.
            if self._audio_pending:
                self._rtt_end = -1
            else:
                self._rtt_end, self._rtt_sent, self._rtt_start = start + nbytes, s, start
        last = self._last
        if (last is None or last.item.content_index != content_index
                or last.item.item_id != item_id):
            key = (item_id, content_index)
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = _new_item(item_id, content_index)
            item.runs += 1
            last = self._last = _new_run(item, start)
            self._runs.append(last)
        last.length += nbytes
        last.item.queued += nbytes
        last.item.produced += produced_ms
        self._pos = start + nbytes
        self._audio_pending += 1
        return self._issue(_AUDIO, s)

    # -- inbound -------------------------------------------------------------------------------
    def on_mark(self, name: str, now: float) -> MarkOutcome:
        """Classify an echoed mark and update played position / latency accordingly."""
        epoch = seq = -1
        if isinstance(name, str):
            epoch, seq = _mark_name(str(name))
        if epoch < 0 or seq < 0 or seq >= self._seq or epoch > self._epoch:
            self._unknown += 1
            return _UNKNOWN
        if epoch < self._epoch:
            if seq >= self._epoch_first_seq:
                self._unknown += 1
                return _UNKNOWN
            self._flushed += 1
            return _FLUSHED
        index = seq - (self._seq - self._count)
        if index < 0:  # already acknowledged: duplicate echo
            self._unknown += 1
            return _UNKNOWN
        while True:  # pop up to the echoed mark: echoes are FIFO, skipped marks were played too
            slot = self._head
            self._head = (slot + 1) & (self._cap - 1)
            self._count -= 1
            if not index:
                break
            index -= 1
            if self._kinds[slot] == _AUDIO:
                self._audio_pending -= 1
                self._confirmed = self._ends[slot]
        r = now * 1000.0
        if self._kinds[slot] == _PROBE:
            self._latency_sample((r - self._sent[slot]) / 2.0)
            self._probes += 1
            return _PROBED
        end = self._ends[slot]
        self._audio_pending -= 1
        self._confirmed = end
        if end == self._rtt_end:
            self._rtt_end = -1
            self._latency_sample((r - self._rtt_sent - (end - self._rtt_start) / self._bpm) / 2.0)
        if end > self._seg_start:  # else the echo describes the previous segment
            o = r - self._latency - end / self._bpm
            if abs(o - self._origin) <= _TOLERANCE_MS:
                self._obs_n += 1
                self._origin += (o - self._origin) / self._obs_n
            else:
                self._origin = o
                self._obs_n = 1
        self._prune()
        self._played += 1
        return _PLAYED

    def _latency_sample(self, sample: float) -> None:
        """Add a one-way latency sample; the estimate is the interquartile mean of the window
        (robust like a median, smooth like a mean)."""
        self._recent[self._recent_i] = sample if sample > 0.0 else 0.0
        self._recent_i = (self._recent_i + 1) % _LATENCY_WINDOW
        if self._recent_n < _LATENCY_WINDOW:
            self._recent_n += 1
        n = self._recent_n
        for i in range(n):  # insertion sort of <= 16 values, only on echoes that carry a sample
            v = self._recent[i]
            j = i
            while j > 0 and self._ordered[j - 1] > v:
                self._ordered[j] = self._ordered[j - 1]
                j -= 1
            self._ordered[j] = v
        lo = n // 4  # drop the lowest and the highest quarter
        hi = n - lo
        total = 0.0
        for i in range(lo, hi):
            total += self._ordered[i]
        self._latency = total / (hi - lo)
        self._samples += 1

    def _prune(self) -> None:
        """Drop fully played runs (keeping the newest) and items left without runs."""
        runs = self._runs
        drop = 0
        while drop < len(runs) - 1:
            run = runs[drop]
            if run.start + run.length > self._confirmed:
                break
            run.item.runs -= 1
            if not run.item.runs:
                del self._items[run.item.item_id, run.item.content_index]
            drop += 1
        if drop:
            del runs[:drop]

    # -- barge-in ------------------------------------------------------------------------------
    def plan_interrupt(self, now: float) -> list[tuple[str, int, int]]:
        """``[(item_id, content_index, audio_end_ms)]`` heard when a clear sent now lands."""
        if not self._audio_pending:
            return []
        bpm = self._bpm
        latency = self._latency
        next_end = 0  # end byte of the oldest pending audio mark
        for i in range(self._count):
            slot = (self._head + i) & (self._cap - 1)
            if self._kinds[slot] == _AUDIO:
                next_end = self._ends[slot]
                break
        h = (now * 1000.0 + latency - self._origin) * bpm
        h = min(h, float(self._pos), next_end + 2.0 * latency * bpm)
        h = max(h, float(self._confirmed))
        plan = []
        seen = set()
        for run in self._runs:
            item = run.item
            key = (item.item_id, item.content_index)
            if run.start + run.length <= h or key in seen:
                continue
            seen.add(key)
            heard = min(max(h - run.start, 0.0), float(run.length))
            # floor(min(...)): "// 1.0" is floor in Python and compiles to C's floor()
            ms = int(min((run.rel_start + heard) / bpm - self._lead, item.produced) // 1.0)
            plan.append((item.item_id, item.content_index, max(0, ms)))
        return plan

    def clear(self, now: float) -> None:
        """The gateway just sent ``clear``: start a new epoch; pending marks become flushed.

        ``now`` is not needed by the model (kept for a uniform call signature)."""
        self._epoch += 1
        self._prefix = ""
        self._epoch_first_seq = self._seq
        self._head = self._count = 0
        self._audio_pending = 0
        self._reset_stream()
