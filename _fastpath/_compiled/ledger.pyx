# cython: language_level=3
"""Compiled twin of ``_fastpath._pure.ledger`` (same model, same float operations in the same
order, so both give identical results).  Pending marks live in a malloc'd ring of C structs;
mark names are formatted and parsed on the str's 1-byte data; the item table is only touched
when a new run starts or on pruning.  Why this is not generated from the pure source: see the end
of that module's docstring (a pure-Python-mode build was measured 9-80 % slower)."""
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport (PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_Check,
                              PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_New)
from libc.math cimport INFINITY, fabs, floor
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy

from _fastpath._pure.ledger import MarkOutcome

__all__ = ["MarkOutcome", "PlayoutLedger"]

cdef tuple _OUTCOMES = tuple(MarkOutcome)
cdef enum:
    PLAYED = 0
    PROBE = 1
    FLUSHED = 2
    UNKNOWN = 3
    MAX_DIGITS = 18     # a longer number cannot be an epoch/seq we issued
    INITIAL_CAP = 16
    RETIRED_ITEMS = 8   # items whose runs were all pruned, kept in case they continue
cdef double TOLERANCE_MS = 25.0


cdef inline Py_ssize_t _put_digits(char* dst, int64_t v) noexcept nogil:
    """Write v >= 0 in decimal at dst; return the number of chars."""
    cdef char tmp[20]
    cdef Py_ssize_t n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        dst[i] = tmp[n - 1 - i]
    return n


cdef inline int64_t _number(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Canonical ASCII decimal (no sign, no leading zero), or -1."""
    cdef int64_t v = 0
    cdef Py_ssize_t i
    if n <= 0 or n > MAX_DIGITS or (p[0] == 48 and n > 1):
        return -1
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return -1
        v = v * 10 + (p[i] - 48)
    return v


cdef class _Item:
    """Totals of one (item_id, content_index) in the current epoch."""

    def __cinit__(self, item_id, int content_index):
        self.item_id = item_id
        self.content_index = content_index


cdef class _Run:
    """A contiguous stretch ``[start, start + length)`` of the stream belonging to one item."""

    def __cinit__(self, _Item item, int64_t start):
        self.item = item
        self.start = start
        self.rel_start = item.queued


cdef class PlayoutLedger:
    """Mark bookkeeping and playhead estimate for one Twilio stream (see the pure module)."""

    def __cinit__(self, *args, **kwargs):
        self._ring = <PendingMark*>PyMem_Malloc(INITIAL_CAP * sizeof(PendingMark))
        if self._ring == NULL:
            raise MemoryError()
        self._cap = INITIAL_CAP

    def __dealloc__(self):
        PyMem_Free(self._ring)

    def __init__(self, int bytes_per_ms=8, double default_latency_ms=50.0, double lead_ms=0.0):
        if bytes_per_ms <= 0:
            raise ValueError("bytes_per_ms must be positive")
        if not 0.0 <= default_latency_ms < INFINITY or not 0.0 <= lead_ms < INFINITY:
            raise ValueError("default_latency_ms and lead_ms must be finite and >= 0")
        self._bpm = bytes_per_ms
        self._lead = lead_ms
        self._latency = default_latency_ms
        self._reset_stream()

    cdef int _reset_stream(self) except -1:
        self._pos = 0
        self._confirmed = 0
        self._runs = []
        self._items = {}
        self._retired = {}
        self._last = None
        self._seg_active = False
        self._origin = 0.0
        self._obs_n = 0
        self._seg_start = 0
        self._rtt_end = -1
        return 0

    # -- read-only state ---------------------------------------------------------------------
    @property
    def busy(self):
        return self._audio_pending > 0

    @property
    def pending(self):
        return self._count

    @property
    def epoch(self):
        return self._epoch

    @property
    def latency_ms(self):
        return self._latency

    @property
    def latency_samples(self):
        return self._samples

    @property
    def played_marks(self):
        return self._played

    @property
    def flushed_marks(self):
        return self._flushed

    @property
    def unknown_marks(self):
        return self._unknown

    @property
    def probe_marks(self):
        return self._probes

    @property
    def queued_bytes(self):
        return self._pos

    # -- outbound ------------------------------------------------------------------------------
    cdef str _issue(self, MarkKind kind, double sent_ms):
        cdef PendingMark* ring
        cdef Py_ssize_t i, n
        cdef char buf[48]
        if self._count == self._cap:
            ring = <PendingMark*>PyMem_Malloc(2 * self._cap * sizeof(PendingMark))
            if ring == NULL:
                raise MemoryError()
            for i in range(self._count):
                ring[i] = self._ring[(self._head + i) & (self._cap - 1)]
            PyMem_Free(self._ring)
            self._ring = ring
            self._head = 0
            self._cap *= 2
        i = (self._head + self._count) & (self._cap - 1)
        self._ring[i].kind = kind
        self._ring[i].end = self._pos
        self._ring[i].sent_ms = sent_ms
        self._count += 1
        n = _put_digits(buf, self._epoch)
        buf[n] = 58  # ':'
        n += 1 + _put_digits(buf + n + 1, self._seq)
        self._seq += 1
        name = PyUnicode_New(n, 127)
        memcpy(PyUnicode_1BYTE_DATA(name), buf, n)
        return name

    def probe(self, double now):
        """Mark name to send *before* any media if Twilio's buffer is believed empty, else None."""
        if self._audio_pending:
            return None
        return self._issue(MARK_PROBE, now * 1000.0)

    def queue(self, item_id, int content_index, int64_t nbytes, double produced_ms, double now):
        """Record ``nbytes`` of μ-law about to be sent; return the mark name to send after it."""
        cdef double s = now * 1000.0
        cdef int64_t start = self._pos
        cdef _Run last = self._last
        cdef _Item item
        if nbytes < 0 or not 0.0 <= produced_ms < INFINITY:
            raise ValueError("nbytes must be >= 0 and produced_ms finite and >= 0")
        if (not self._seg_active
                or (s + self._latency - self._origin) * <double>self._bpm >= <double>start):
            self._seg_active = True
            self._origin = s + self._latency - <double>start / <double>self._bpm
            self._obs_n = 1
            self._seg_start = start
            # On an idle buffer this chunk plays on arrival: its echo measures the round trip.
            if self._audio_pending == 0:
                self._rtt_end, self._rtt_sent, self._rtt_start = start + nbytes, s, start
            else:
                self._rtt_end = -1
        if (last is None or last.item.content_index != content_index
                or not (last.item.item_id is item_id or last.item.item_id == item_id)):
            key = (item_id, content_index)
            item = self._items.get(key)
            if item is None:
                item = self._retired.pop(key, None)
                if item is None:
                    item = _Item(item_id, content_index)
                self._items[key] = item
            item.runs += 1
            last = _Run(item, start)
            self._runs.append(last)
            self._last = last
        last.length += nbytes
        last.item.queued += nbytes
        last.item.produced += produced_ms
        self._pos = start + nbytes
        self._audio_pending += 1
        return self._issue(MARK_AUDIO, s)

    # -- inbound -------------------------------------------------------------------------------
    def on_mark(self, name, double now):
        """Classify an echoed mark and update played position / latency accordingly."""
        cdef const uint8_t* p
        cdef Py_ssize_t n, colon, index
        cdef int64_t epoch = -1, seq = -1
        cdef PendingMark m
        cdef double r, o, sample
        if PyUnicode_Check(name) and PyUnicode_KIND(name) == PyUnicode_1BYTE_KIND:
            p = PyUnicode_1BYTE_DATA(name)
            n = PyUnicode_GET_LENGTH(name)
            colon = 0
            while colon < n and p[colon] != 58:
                colon += 1
            if colon < n:
                epoch = _number(p, colon)
                seq = _number(p + colon + 1, n - colon - 1)
        if epoch < 0 or seq < 0 or seq >= self._seq or epoch > self._epoch:
            self._unknown += 1
            return _OUTCOMES[UNKNOWN]
        if epoch < self._epoch:
            if seq >= self._epoch_first_seq:
                self._unknown += 1
                return _OUTCOMES[UNKNOWN]
            self._flushed += 1
            return _OUTCOMES[FLUSHED]
        index = <Py_ssize_t>(seq - (self._seq - self._count))
        if index < 0:  # already acknowledged: duplicate echo
            self._unknown += 1
            return _OUTCOMES[UNKNOWN]
        while True:  # echoes are FIFO: skipped marks were played too
            m = self._ring[self._head]
            self._head = (self._head + 1) & (self._cap - 1)
            self._count -= 1
            if index == 0:
                break
            index -= 1
            if m.kind == MARK_AUDIO:
                self._audio_pending -= 1
                self._confirmed = m.end
        r = now * 1000.0
        if m.kind == MARK_PROBE:
            self._latency_sample((r - m.sent_ms) / 2.0)
            self._probes += 1
            return _OUTCOMES[PROBE]
        self._audio_pending -= 1
        self._confirmed = m.end
        if m.end == self._rtt_end:
            self._rtt_end = -1
            self._latency_sample(
                (r - self._rtt_sent - <double>(m.end - self._rtt_start) / <double>self._bpm) / 2.0)
        if m.end > self._seg_start:  # else the echo describes the previous segment
            o = r - self._latency - <double>m.end / <double>self._bpm
            if fabs(o - self._origin) <= TOLERANCE_MS:
                self._obs_n += 1
                self._origin += (o - self._origin) / <double>self._obs_n
            else:
                self._origin = o
                self._obs_n = 1
        self._prune()
        self._played += 1
        return _OUTCOMES[PLAYED]

    cdef void _latency_sample(self, double sample) noexcept:
        """Add a one-way latency sample; the estimate is the interquartile mean of the window."""
        cdef double ordered[16]
        cdef double v, total = 0.0
        cdef int n, i, j, lo, hi
        self._recent[self._recent_i] = sample if sample > 0.0 else 0.0
        self._recent_i = (self._recent_i + 1) % 16
        if self._recent_n < 16:
            self._recent_n += 1
        n = self._recent_n
        for i in range(n):  # insertion sort of <= 16 values, only on echoes that carry a sample
            v = self._recent[i]
            j = i
            while j > 0 and ordered[j - 1] > v:
                ordered[j] = ordered[j - 1]
                j -= 1
            ordered[j] = v
        lo = n // 4
        hi = n - n // 4
        for i in range(lo, hi):
            total += ordered[i]
        self._latency = total / <double>(hi - lo)
        self._samples += 1

    cdef int _prune(self) except -1:
        """Drop fully played runs (keeping the newest); retire items left without runs."""
        cdef list runs = self._runs
        cdef Py_ssize_t drop = 0, last = len(runs) - 1
        cdef _Run run
        while drop < last:
            run = <_Run>runs[drop]
            if run.start + run.length > self._confirmed:
                break
            run.item.runs -= 1
            if not run.item.runs:
                key = (run.item.item_id, run.item.content_index)
                del self._items[key]
                self._retired[key] = run.item
                if len(self._retired) > RETIRED_ITEMS:
                    del self._retired[next(iter(self._retired))]
            drop += 1
        if drop:
            del runs[:drop]
        return 0

    # -- barge-in ------------------------------------------------------------------------------
    def plan_interrupt(self, double now):
        """``[(item_id, content_index, audio_end_ms)]`` heard when a clear sent now lands."""
        cdef double bpm = <double>self._bpm, latency = self._latency, h, heard, ms, cap
        cdef Py_ssize_t i
        cdef int64_t next_end = 0
        cdef _Run run
        if not self._audio_pending:
            return []
        for i in range(self._count):
            if self._ring[(self._head + i) & (self._cap - 1)].kind == MARK_AUDIO:
                next_end = self._ring[(self._head + i) & (self._cap - 1)].end
                break
        h = (now * 1000.0 + latency - self._origin) * bpm
        h = min(h, <double>self._pos, <double>next_end + 2.0 * latency * bpm)
        h = max(h, <double>self._confirmed)
        plan = []
        seen = set()
        for run in self._runs:
            key = (run.item.item_id, run.item.content_index)
            if <double>(run.start + run.length) <= h or key in seen:
                continue
            seen.add(key)
            heard = min(max(h - <double>run.start, 0.0), <double>run.length)
            ms = floor((<double>run.rel_start + heard) / bpm - self._lead)
            cap = floor(run.item.produced)
            plan.append((run.item.item_id, run.item.content_index,
                         <int64_t>max(0.0, min(ms, cap))))
        return plan

    def ahead_ms(self, double now):
        """Audio sent to Twilio and not yet played at ``now`` (ms), by the playhead estimate."""
        cdef double played
        if not self._seg_active or not self._audio_pending:
            return 0.0
        played = (now * 1000.0 - self._origin) * self._bpm
        if played < <double>self._confirmed:
            played = <double>self._confirmed
        if played >= <double>self._pos:
            return 0.0
        return (<double>self._pos - played) / <double>self._bpm

    def clear(self, double now):
        """The gateway just sent ``clear``: start a new epoch; pending marks become flushed."""
        self._epoch += 1
        self._epoch_first_seq = self._seq
        self._head = 0
        self._count = 0
        self._audio_pending = 0
        self._reset_stream()
