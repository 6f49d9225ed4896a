# Playout-mark ledger of one call (model: _fastpath/_pure/ledger.py docstring).
from libc.stdint cimport int64_t

cdef enum MarkKind:
    MARK_AUDIO = 0
    MARK_PROBE = 1

# One unacknowledged mark of the current epoch.  Its seq is implicit: the pending marks of an
# epoch carry consecutive seqs, so ring slot i holds seq (next_seq - count + i).
cdef struct PendingMark:
    int64_t end         # stream byte position after the audio before this mark
    double sent_ms      # gateway time the mark was issued
    MarkKind kind

cdef class _Item:
    cdef object item_id
    cdef int content_index
    cdef int64_t queued     # μ-law bytes queued for this item in the epoch
    cdef double produced    # ms of model audio behind those bytes
    cdef Py_ssize_t runs    # runs of this item still in the run table

cdef class _Run:
    cdef _Item item
    cdef int64_t start      # stream byte of the run's first byte
    cdef int64_t length
    cdef int64_t rel_start  # item-relative offset of the run's first byte

cdef class PlayoutLedger:
    cdef int64_t _bpm
    cdef double _lead
    cdef double _latency
    cdef int64_t _samples
    cdef int64_t _epoch
    cdef int64_t _seq               # next seq to issue
    cdef int64_t _epoch_first_seq   # first seq issued in the current epoch
    cdef PendingMark* _ring         # FIFO of pending marks (power-of-two ring)
    cdef Py_ssize_t _cap, _head, _count
    cdef Py_ssize_t _audio_pending
    cdef int64_t _played, _flushed, _unknown, _probes
    cdef int64_t _pos               # P: bytes queued in the epoch
    cdef int64_t _confirmed         # end byte of the last echoed audio mark
    cdef list _runs                 # _Run in stream order
    cdef dict _items                # (item_id, content_index) -> _Item
    cdef dict _retired              # items whose runs were all pruned (the last RETIRED_ITEMS), oldest first
    cdef _Run _last                 # newest run (None when the epoch has none)
    cdef bint _seg_active
    cdef double _origin             # O: gateway time stream byte 0 would have played
    cdef int64_t _obs_n             # observations averaged into _origin
    cdef int64_t _seg_start         # first stream byte of the segment
    cdef double _recent[16]         # last one-way latency samples (ring; interquartile mean = estimate)
    cdef int _recent_n, _recent_i
    cdef int64_t _rtt_end           # end byte of an idle-start segment's first chunk (-1: none)
    cdef int64_t _rtt_start
    cdef double _rtt_sent

    cdef int _reset_stream(self) except -1
    cdef str _issue(self, MarkKind kind, double sent_ms)
    cdef int _prune(self) except -1
    cdef void _latency_sample(self, double sample) noexcept
