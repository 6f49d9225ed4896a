"""Streaming anti-aliased PCM16 resampler, compiled twin of ``_fastpath._pure.resample``.

Same filter (``design_filter``), same output positions and counts; float32 arithmetic, so the
samples agree with the pure twin within 2 LSB. Input is converted to float in pieces of at most
PIECE samples behind a float history kept in the instance, so process_into never allocates and
cannot fail.
Kernels are written for gcc's auto-vectoriser without reassociation: the up-sampler accumulates
all outputs of one phase at once, the general path keeps LANES partial sums per dot product.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int16_t, uint16_t, uintptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memmove, memset

from _fastpath._pure.resample import design_filter, rate_ratio

__all__ = ["Resampler", "design_filter", "rate_ratio"]

cdef extern from "Python.h":
    const bint PY_BIG_ENDIAN

cdef enum:
    PIECE = 512     # input samples converted to float per step
    LANES = 4       # taps per step of the kernels; taps per phase are padded to a multiple

cdef inline int16_t _pcm16(float v) noexcept nogil:
    """Round to nearest (ties to even, like numpy.rint) and saturate.

    Adding and removing 1.5 * 2**23 rounds a float32 below 2**22 in magnitude to an integer (and
    |v| <= 32768 * sum(|h|) is far below); clamping the int keeps the loops vectorisable."""
    cdef int r = <int>((v + <float>12582912.0) - <float>12582912.0)
    r = r if r < 32767 else 32767
    r = r if r > -32768 else -32768
    return <int16_t>r


cdef inline float _dot(const float* g, const float* x, Py_ssize_t taps) noexcept nogil:
    """<g, x> over taps (a multiple of LANES) with LANES partial sums, added in a fixed order."""
    cdef float acc[LANES]
    cdef Py_ssize_t i, k
    for i in range(LANES):
        acc[i] = 0
    for k in range(taps // LANES):
        for i in range(LANES):
            acc[i] += g[k * LANES + i] * x[k * LANES + i]
    return (acc[0] + acc[2]) + (acc[1] + acc[3])


cdef void _upsample(const float* g, Py_ssize_t taps, Py_ssize_t up, const float* x,
                    Py_ssize_t n, int16_t* dst) noexcept nogil:
    """dst[i * up + p] = <g_p, x[i : i + taps]> for i < n <= PIECE.

    One phase at a time, all n outputs of it accumulate together (the loop over i vectorises),
    LANES (= 4, written out) taps per pass so each accumulator is loaded and stored once per four
    products; the sum keeps the order of the pure twin's taps, no reassociation needed.
    """
    cdef float acc[PIECE]
    cdef const float* gk
    cdef const float* xk
    cdef Py_ssize_t i, k, p
    for p in range(up):
        for i in range(n):
            acc[i] = 0
        for k in range(taps // LANES):
            gk = g + p * taps + k * LANES
            xk = x + k * LANES
            for i in range(n):
                acc[i] = (acc[i] + gk[0] * xk[i] + gk[1] * xk[i + 1]
                          + gk[2] * xk[i + 2] + gk[3] * xk[i + 3])
        for i in range(n):
            dst[i * up + p] = _pcm16(acc[i])


cdef void _swap16(int16_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        p[i] = <int16_t>((<uint16_t>p[i] >> 8) | (<uint16_t>p[i] << 8))


cdef class Resampler:
    """Resampler(int src_rate, int dst_rate)

    Stateful PCM16 LE mono resampler (see the pure twin).  The first line is the signature of
    ``__cinit__`` in embedsignature's form (Cython only embeds ``__init__``'s)."""

    def __cinit__(self, int src_rate, int dst_rate):
        cdef Py_ssize_t up, down, n, half, p, k
        up, down = rate_ratio(src_rate, dst_rate)
        h = design_filter(up, down)
        n = len(h)
        half = (n - 1) // 2
        self.src_rate, self.dst_rate, self.up, self.down = src_rate, dst_rate, up, down
        self.taps = ((n + up - 1) // up + LANES - 1) // LANES * LANES
        self.offset = half % down
        self._delay = half // down
        # the oldest pending output's window may start (down - 1) / up samples before the piece
        self.hist_len = self.taps - 1 + (down - 1 + up - 1) // up
        self.tail = (n - 1 - self.offset + down + up - 1) // up - 1
        self.coeffs = <float*>calloc(up * self.taps, sizeof(float))
        self.buf = <float*>calloc(self.hist_len + PIECE, sizeof(float))
        if self.coeffs == NULL or self.buf == NULL:
            raise MemoryError()
        for p in range(up):
            for k in range((n - p + up - 1) // up):    # phase p, k-th newest tap: h[p + k * up]
                self.coeffs[p * self.taps + self.taps - 1 - k] = h[p + k * up]

    def __dealloc__(self):
        free(self.coeffs)
        free(self.buf)

    @property
    def delay(self):
        """Group delay in output samples: output j is input time (j - delay) / dst_rate."""
        return self._delay

    def reset(self):
        """Forget the stream (history, phase) without output."""
        memset(self.buf, 0, (self.hist_len + PIECE) * sizeof(float))
        self.credit = 0
        self.fed = False

    def process(self, pcm):
        """process(pcm) -> bytes: resample PCM16 LE mono (floor(n_in * up / down) in all)."""
        cdef Py_buffer v
        cdef const int16_t* src
        cdef int16_t* own = NULL
        cdef Py_ssize_t n
        PyObject_GetBuffer(pcm, &v, PyBUF_SIMPLE)
        try:
            if v.len & 1:
                raise ValueError("PCM16 input must have an even byte length")
            n = v.len // 2
            src = <const int16_t*>v.buf
            if PY_BIG_ENDIAN or <uintptr_t>v.buf & 1:   # the kernels read aligned native int16
                own = <int16_t*>PyMem_Malloc(v.len + 1)
                if own == NULL:
                    raise MemoryError()
                memcpy(own, v.buf, v.len)
                if PY_BIG_ENDIAN:
                    _swap16(own, n)
                src = own
            out = PyBytes_FromStringAndSize(NULL, 2 * self.max_output(n))
            n = self.process_into(src, n, <int16_t*>PyBytes_AS_STRING(out))
        finally:
            PyMem_Free(own)
            PyBuffer_Release(&v)
        if PY_BIG_ENDIAN:
            _swap16(<int16_t*>PyBytes_AS_STRING(out), n)
        return out

    def flush(self):
        """flush() -> bytes: the tail still inside the filter (as if zeros followed), then reset."""
        cdef Py_ssize_t n
        out = b""
        if self.fed:
            out = PyBytes_FromStringAndSize(NULL, 2 * self.max_output(self.tail))
            n = self._run(NULL, self.tail, <int16_t*>PyBytes_AS_STRING(out))
            if PY_BIG_ENDIAN:
                _swap16(<int16_t*>PyBytes_AS_STRING(out), n)
        self.reset()
        return out

    cdef Py_ssize_t max_output(self, Py_ssize_t n) noexcept:
        return (self.credit + n * self.up) // self.down

    cdef Py_ssize_t process_into(self, const int16_t* src, Py_ssize_t n, int16_t* dst) noexcept:
        if n > 0:
            self.fed = True
        if self.up == self.down:
            memcpy(dst, src, n * sizeof(int16_t))
            return n
        return self._run(src, n, dst)

    cdef Py_ssize_t _run(self, const int16_t* src, Py_ssize_t n, int16_t* dst) noexcept:
        cdef Py_ssize_t done = 0, piece, i
        cdef float* x = self.buf + self.hist_len
        while n > 0:
            piece = min(n, <Py_ssize_t>PIECE)
            if src == NULL:
                memset(x, 0, piece * sizeof(float))
            else:
                for i in range(piece):
                    x[i] = src[i]
                src += piece
            done += self._filter(piece, dst + done)
            memmove(self.buf, self.buf + piece, self.hist_len * sizeof(float))
            n -= piece
        return done

    cdef Py_ssize_t _filter(self, Py_ssize_t n, int16_t* dst) noexcept:
        """Write the outputs that n new samples at buf[hist_len:] complete; return their count.

        Output at up-sampled position pos (counted from buf[0]) is the dot product of phase
        pos % up with the taps samples ending at input q = pos // up."""
        cdef Py_ssize_t up = self.up, down = self.down, taps = self.taps
        cdef Py_ssize_t credit = self.credit + n * up, count = credit // down, j
        cdef Py_ssize_t pos = self.offset - self.credit + self.hist_len * up
        cdef Py_ssize_t q = pos // up, p = pos % up, q_step = down // up, p_step = down % up
        self.credit = credit - count * down
        if down == 1:      # credit and offset are 0: every input yields phases 0..up-1 in order
            _upsample(self.coeffs, taps, up, self.buf + q - taps + 1, n, dst)
            return count
        for j in range(count):
            dst[j] = _pcm16(_dot(self.coeffs + p * taps, self.buf + q - taps + 1, taps))
            q += q_step
            p += p_step
            if p >= up:
                p -= up
                q += 1
        return count
