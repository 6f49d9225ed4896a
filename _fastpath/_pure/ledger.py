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
keeps counting); an item whose runs are all pruned is retired, and forgotten once
``_RETIRED_ITEMS`` newer ones were (so a 4-hour call stays small): an item that continues after
another item's audio was played in between (a filler's, a hold tone's) keeps its offset.
``clear`` resets stream position, items and segment but keeps the latency estimate.

Two sources, on purpose.  The compiled twin (``_fastpath/_compiled/ledger.pyx``) is written by
hand.  Compiling *this* file instead (Cython pure-Python mode, the aiohttp pattern: an augmenting
``ledger.pxd`` with cdef classes, cpdef methods and typed locals, the pending marks in typed
memoryviews over ``array`` columns) was tried in commit 972ad86 and measured against the
hand-written build on the 2-core dev VM: ``python -m bench fastpath``, 5 runs of each build
alternated, median of the per-run medians, CPU ns per call (min-max of the 5):

=================================  ====================  ====================  ======
operation                          hand-written .pyx     one source (.py+pxd)  change
=================================  ====================  ====================  ======
queue                              62.6 (61.8-85.0)      112.8 (106.5-133.7)   +80 %
on_mark                            49.4 (49.0-51.2)      53.7 (52.7-61.0)      +9 %
plan_interrupt, 10 pending         234.2 (225.3-240.7)   237.4 (236.4-241.2)   +1 %
=================================  ====================  ====================  ======

and, for the operations the bench does not time, both builds loaded into one process and timed
alternately (15 rounds, median): probe 52 -> 74 ns (+42 %), queue starting a new run
143 -> 184 (+29 %), on_mark of a probe echo (latency sample) 87 -> 103 (+19 %), on_mark of an
unknown / flushed name +6 % / +5 %, clear and the properties unchanged, ``PlayoutLedger()``
90 ns -> 1.6 us (five memoryview acquisitions).  The criterion was "within 10 % on every ledger
operation", so the hand-written source stays.  What cannot be had in pure-Python mode:

* the mark name: Cython compiles ``f"{epoch}:{seq}"`` to one string per number plus a join (two
  or three allocations where the .pyx writes the digits into a buffer and allocates once); this
  alone is the ~25-30 ns of probe and queue, and no pure-Python spelling avoids it;
* the pending-mark ring: a malloc'd array of C structs in the .pyx; typed memoryviews over
  ``array`` columns are as fast to index but cost ~300 ns each to acquire;
* ``__cinit__`` with typed arguments for the run/item records (``cls.__new__(cls)`` factories
  get close).

The attempt also showed a trap for anyone retrying: with ``cdivision=True`` (set in setup.py)
Cython compiles ``/`` between two C integers as C integer division, not true division (the
.pyx casts to double everywhere; a pure-mode source needs ``cdivision=False``).
"""
from __future__ import annotations

import enum
import math
from collections import deque

__all__ = ["MarkOutcome", "PlayoutLedger"]

_AUDIO = 0
_PROBE = 1
_TOLERANCE_MS = 25.0
_LATENCY_WINDOW = 16
_MAX_DIGITS = 18  # a longer number cannot be an epoch/seq we issued (and would overflow int64)
_RETIRED_ITEMS = 8  # items whose runs were all pruned, kept in case they continue


class MarkOutcome(enum.IntEnum):
    """How ``on_mark`` classified an echoed mark."""

    PLAYED = 0  # audio mark of the current epoch: the played position advanced
    PROBE = 1  # latency probe of the current epoch: one-way latency estimate updated
    FLUSHED = 2  # mark of an earlier epoch (echoed because of a clear): not counted as played
    UNKNOWN = 3  # not issued by this ledger, garbage, or from a future epoch: ignored


class _Item:
    """Totals of one (item_id, content_index) in the current epoch."""

    __slots__ = ("content_index", "item_id", "produced", "queued", "runs")

    def __init__(self, item_id: str, content_index: int) -> None:
        self.item_id = item_id
        self.content_index = content_index
        self.queued = 0  # μ-law bytes queued for this item
        self.produced = 0.0  # ms of model audio those bytes represent
        self.runs = 0  # runs of this item still in the run table


class _Run:
    """A contiguous stretch ``[start, start + length)`` of the stream belonging to one item."""

    __slots__ = ("item", "length", "rel_start", "start")

    def __init__(self, item: _Item, start: int) -> None:
        self.item = item
        self.start = start
        self.length = 0
        self.rel_start = item.queued  # item-relative offset of the run's first byte


def _number(text: str) -> int | None:
    """Canonical ASCII decimal (no sign, no leading zero) as int, else None."""
    if not 0 < len(text) <= _MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    if text[0] == "0" and len(text) > 1:
        return None
    return int(text)


class PlayoutLedger:
    """Mark bookkeeping and playhead estimate for one Twilio stream (see module docstring)."""

    def __init__(self, bytes_per_ms: int = 8, default_latency_ms: float = 50.0,
                 lead_ms: float = 0.0) -> None:
        if bytes_per_ms <= 0:
            raise ValueError("bytes_per_ms must be positive")
        if not 0.0 <= default_latency_ms < math.inf or not 0.0 <= lead_ms < math.inf:
            raise ValueError("default_latency_ms and lead_ms must be finite and >= 0")
        self._bpm = int(bytes_per_ms)
        self._lead = float(lead_ms)
        self._latency = float(default_latency_ms)
        self._samples = 0
        self._recent: deque[float] = deque(maxlen=_LATENCY_WINDOW)  # one-way latency samples
        self._epoch = 0
        self._seq = 0  # next seq to issue
        self._epoch_first_seq = 0  # first seq issued in the current epoch
        self._fifo: deque[tuple[int, int, float]] = deque()  # (kind, end byte, sent ms)
        self._audio_pending = 0
        self._played = self._flushed = self._unknown = self._probes = 0
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._pos = 0  # P: bytes queued in this epoch
        self._confirmed = 0  # end byte of the last echoed audio mark
        self._runs: list[_Run] = []
        self._items: dict[tuple[str, int], _Item] = {}
        self._retired: dict[tuple[str, int], _Item] = {}  # oldest first
        self._seg_active = False
        self._origin = 0.0  # O
        self._obs_n = 0
        self._seg_start = 0  # first stream byte of the segment
        self._rtt_mark = (-1, 0.0, 0)  # (end byte, sent ms, start byte) of a segment's first chunk

    # -- read-only state ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._audio_pending > 0

    @property
    def pending(self) -> int:
        return len(self._fifo)

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
        self._fifo.append((kind, self._pos, sent_ms))
        name = f"{self._epoch}:{self._seq}"
        self._seq += 1
        return name

    def probe(self, now: float) -> str | None:
        """Mark name to send *before* any media if Twilio's buffer is believed empty, else None."""
        if self._audio_pending:
            return None
        return self._issue(_PROBE, now * 1000.0)

    def queue(self, item_id: str, content_index: int, nbytes: int, produced_ms: float,
              now: float) -> str:
        """Record ``nbytes`` of μ-law about to be sent; return the mark name to send after it."""
        if nbytes < 0 or not 0.0 <= produced_ms < math.inf:
            raise ValueError("nbytes must be >= 0 and produced_ms finite and >= 0")
        s = now * 1000.0
        start = self._pos
        if not self._seg_active or (s + self._latency - self._origin) * self._bpm >= start:
            self._seg_active = True
            self._origin = s + self._latency - start / self._bpm
            self._obs_n = 1
            self._seg_start = start
            # On an idle buffer this chunk plays on arrival: its echo measures the round trip.
            self._rtt_mark = (start + nbytes, s, start) if not self._audio_pending else (-1, 0.0, 0)
        runs = self._runs
        last = runs[-1] if runs else None
        if (last is None or last.item.content_index != content_index
                or last.item.item_id != item_id):
            key = (item_id, content_index)
            item = self._items.get(key)
            if item is None:
                item = self._retired.pop(key, None)  # an item that continues after another's audio
                if item is None:
                    item = _Item(item_id, content_index)
                self._items[key] = item
            item.runs += 1
            last = _Run(item, start)
            runs.append(last)
        last.length += nbytes
        last.item.queued += nbytes
        last.item.produced += produced_ms
        self._pos = start + nbytes
        self._audio_pending += 1
        return self._issue(_AUDIO, s)

    # -- inbound -------------------------------------------------------------------------------
    def on_mark(self, name: object, now: float) -> MarkOutcome:
        """Classify an echoed mark and update played position / latency accordingly."""
        epoch = seq = None
        if isinstance(name, str):
            e, sep, q = name.partition(":")
            if sep:
                epoch, seq = _number(e), _number(q)
        if epoch is None or seq is None or seq >= self._seq or epoch > self._epoch:
            self._unknown += 1
            return MarkOutcome.UNKNOWN
        if epoch < self._epoch:
            if seq >= self._epoch_first_seq:
                self._unknown += 1
                return MarkOutcome.UNKNOWN
            self._flushed += 1
            return MarkOutcome.FLUSHED
        fifo = self._fifo
        index = seq - (self._seq - len(fifo))
        if index < 0:  # already acknowledged: duplicate echo
            self._unknown += 1
            return MarkOutcome.UNKNOWN
        for _ in range(index):  # echoes are FIFO: skipped marks were played too
            kind, end, _sent = fifo.popleft()
            if kind == _AUDIO:
                self._audio_pending -= 1
                self._confirmed = end
        kind, end, sent = fifo.popleft()
        r = now * 1000.0
        if kind == _PROBE:
            self._latency_sample((r - sent) / 2.0)
            self._probes += 1
            return MarkOutcome.PROBE
        self._audio_pending -= 1
        self._confirmed = end
        rtt_end, rtt_sent, rtt_start = self._rtt_mark
        if end == rtt_end:
            self._rtt_mark = (-1, 0.0, 0)
            self._latency_sample((r - rtt_sent - (rtt_end - rtt_start) / self._bpm) / 2.0)
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
        return MarkOutcome.PLAYED

    def _latency_sample(self, sample: float) -> None:
        recent = self._recent
        recent.append(max(0.0, sample))  # 0.0 first: NaN and -0.0 become +0.0, as compiled
        ordered = sorted(recent)
        n = len(ordered)
        total = 0.0
        for value in ordered[n // 4:n - n // 4]:  # drop the lowest and highest quarter
            # A plain left fold, as compiled: sum() compensates float rounding since Python 3.12.
            total += value
        self._latency = total / (n - 2 * (n // 4))
        self._samples += 1

    def _prune(self) -> None:
        """Drop fully played runs (keeping the newest); retire items left without runs."""
        runs = self._runs
        drop = 0
        while drop < len(runs) - 1 and runs[drop].start + runs[drop].length <= self._confirmed:
            item = runs[drop].item
            item.runs -= 1
            if not item.runs:
                key = (item.item_id, item.content_index)
                del self._items[key]
                retired = self._retired
                retired[key] = item
                if len(retired) > _RETIRED_ITEMS:
                    del retired[next(iter(retired))]
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
        next_end = next(end for kind, end, _sent in self._fifo if kind == _AUDIO)
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
            ms = math.floor((run.rel_start + heard) / bpm - self._lead)
            plan.append((item.item_id, item.content_index,
                         max(0, min(ms, math.floor(item.produced)))))
        return plan

    def ahead_ms(self, now: float) -> float:
        """Audio sent to Twilio and not yet played at ``now`` (ms), by the playhead estimate."""
        if not self._seg_active or not self._audio_pending:
            return 0.0
        played = max((now * 1000.0 - self._origin) * self._bpm, float(self._confirmed))
        if played >= float(self._pos):
            return 0.0
        return (float(self._pos) - played) / float(self._bpm)

    def clear(self, now: float) -> None:
        """The gateway just sent ``clear``: start a new epoch; pending marks become flushed.

        ``now`` is not needed by the model (kept for a uniform call signature)."""
        self._epoch += 1
        self._epoch_first_seq = self._seq
        self._fifo.clear()
        self._audio_pending = 0
        self._reset_stream()
