# Augmenting declarations for the ledger's one source, _fastpath/_pure/ledger.py, which setup.py
# compiles as _fastpath._compiled.ledger (Cython pure-Python mode): C types for the module
# constants, the attributes of the three classes, and the signatures and locals of the methods
# the gateway calls per frame.  The model is in that file's docstring.
import cython
from libc.stdint cimport int64_t

cdef int _AUDIO, _PROBE
cdef double _TOLERANCE_MS
cdef int _LATENCY_WINDOW
cdef Py_ssize_t _MAX_DIGITS
cdef Py_ssize_t _INITIAL_CAP
cdef double _INF
cdef object _PLAYED, _PROBED, _FLUSHED, _UNKNOWN


cdef class _Item:
    cdef object item_id
    cdef int64_t content_index
    cdef int64_t queued     # μ-law bytes queued for this item in the epoch
    cdef double produced    # ms of model audio behind those bytes
    cdef Py_ssize_t runs    # runs of this item still in the run table


cdef class _Run:
    cdef _Item item
    cdef int64_t start      # stream byte of the run's first byte
    cdef int64_t length
    cdef int64_t rel_start  # item-relative offset of the run's first byte


@cython.locals(item=_Item)
cdef _Item _new_item(object item_id, int64_t content_index)
@cython.locals(run=_Run)
cdef _Run _new_run(_Item item, int64_t start)


@cython.locals(epoch=int64_t, value=int64_t, digits=Py_ssize_t, leading_zero=bint, ch=Py_UCS4)
cdef (int64_t, int64_t) _mark_name(str name) noexcept


cdef class PlayoutLedger:
    cdef int64_t _bpm
    cdef double _lead
    cdef double _latency
    cdef int64_t _samples
    cdef double[::1] _recent        # ring of the last one-way latency samples
    cdef double[::1] _ordered       # scratch: the same sorted
    cdef int _recent_n, _recent_i
    cdef int64_t _epoch
    cdef str _prefix                # f"{epoch}:", the start of every mark name of the epoch
    cdef int64_t _seq               # next seq to issue
    cdef int64_t _epoch_first_seq   # first seq issued in the current epoch
    cdef Py_ssize_t _cap, _head, _count   # ring of pending marks (power-of-two capacity)
    cdef signed char[::1] _kinds
    cdef int64_t[::1] _ends
    cdef double[::1] _sent
    cdef Py_ssize_t _audio_pending
    cdef int64_t _played, _flushed, _unknown, _probes
    cdef int64_t _pos               # P: bytes queued in the epoch
    cdef int64_t _confirmed         # end byte of the last echoed audio mark
    cdef list _runs                 # _Run in stream order
    cdef dict _items                # (item_id, content_index) -> _Item
    cdef _Run _last                 # newest run (None when the epoch has none)
    cdef bint _seg_active
    cdef double _origin             # O: gateway time stream byte 0 would have played
    cdef int64_t _obs_n             # observations averaged into _origin
    cdef int64_t _seg_start         # first stream byte of the segment
    cdef int64_t _rtt_end           # end byte of an idle-start segment's first chunk (-1: none)
    cdef double _rtt_sent
    cdef int64_t _rtt_start

    cdef int _reset_stream(self) except -1

    @cython.locals(slot=Py_ssize_t)
    cdef str _issue(self, int kind, double sent_ms)

    @cython.locals(cap=Py_ssize_t, i=Py_ssize_t, slot=Py_ssize_t, kinds=cython.schar[::1],
                   ends=int64_t[::1], sent=cython.double[::1])
    cdef int _grow(self) except -1

    cpdef str probe(self, double now)

    @cython.locals(s=double, start=int64_t, last=_Run, item=_Item)
    cpdef str queue(self, object item_id, int64_t content_index, int64_t nbytes, double produced_ms,
                    double now)

    @cython.locals(epoch=int64_t, seq=int64_t, index=int64_t, slot=Py_ssize_t, r=double,
                   end=int64_t, o=double)
    cpdef object on_mark(self, object name, double now)

    @cython.locals(n=int, i=int, j=int, lo=int, hi=int, v=double, total=double)
    cdef void _latency_sample(self, double sample) noexcept

    @cython.locals(runs=list, drop=Py_ssize_t, run=_Run)
    cdef int _prune(self) except -1

    @cython.locals(bpm=double, latency=double, next_end=int64_t, i=Py_ssize_t, slot=Py_ssize_t,
                   h=double, run=_Run, item=_Item, heard=double, ms=int64_t)
    cpdef list plan_interrupt(self, double now)

    cpdef clear(self, double now)
