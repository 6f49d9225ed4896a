# Streaming polyphase resampler; other compiled modules call process_into without Python objects.
from libc.stdint cimport int16_t

cdef class Resampler:
    cdef readonly int src_rate
    cdef readonly int dst_rate
    cdef int up
    cdef int down
    cdef Py_ssize_t taps        # taps per phase, zero-padded (oldest end) to a multiple of 4
    cdef float* coeffs          # up * taps, phase-major, each phase time-reversed
    cdef float* buf             # hist_len samples of history, then one piece of input as float
    cdef Py_ssize_t hist_len
    cdef Py_ssize_t offset      # output j sits at up-sampled position j * down + offset
    cdef Py_ssize_t credit      # inputs * up - outputs * down, in [0, down)
    cdef Py_ssize_t tail        # zero samples flush feeds
    cdef bint fed               # input since the last reset (flush of a fresh stream is empty)
    cdef Py_ssize_t _delay

    # Upper bound of output samples for n more input samples (callers size their buffers with it).
    cdef Py_ssize_t max_output(self, Py_ssize_t n) noexcept
    # Consume n samples from src, write produced samples to dst, return their count.
    cdef Py_ssize_t process_into(self, const int16_t* src, Py_ssize_t n, int16_t* dst) noexcept
    # process_into with a NULL src meaning n zero samples.
    cdef Py_ssize_t _run(self, const int16_t* src, Py_ssize_t n, int16_t* dst) noexcept
    cdef Py_ssize_t _filter(self, Py_ssize_t n, int16_t* dst) noexcept
