"""G.711 μ-law ⇄ PCM16LE, bit-exact with CPython's ``audioop`` (docs/protocols/g711.md).

The kernels work on native ``int16_t``; the Python wrappers present little-endian bytes on any host.
"""
import sys

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int16_t, uint8_t, uint16_t, uint32_t, uintptr_t
from libc.string cimport memcpy

__all__ = ["ulaw_decode", "ulaw_encode"]

cdef bint _BIG_ENDIAN = sys.byteorder == "big"
cdef int16_t _DECODE[256]
cdef enum:
    _CHUNK = 256    # samples per step of the byte-wise encode path (stack buffer)


cdef void _build_decode_table() noexcept:
    """g711.md#decoding: |pcm| = (((mant << 3) + 132) << exp) - 132 on the bit-inverted code."""
    cdef int code, u, t
    for code in range(256):
        u = ~code & 0xFF
        t = (((u & 0x0F) << 3) + 132) << ((u & 0x70) >> 4)
        _DECODE[code] = <int16_t>((132 - t) if u & 0x80 else (t - 132))


_build_decode_table()


cdef void ulaw_decode_into(const uint8_t* src, Py_ssize_t n, int16_t* dst) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = _DECODE[src[i]]


cdef void ulaw_encode_into(const int16_t* src, Py_ssize_t n, uint8_t* dst) noexcept nogil:
    # audioop variant (g711.md#encoding): magnitude of the 14-bit sample taken AFTER the floor shift, + bias 33.
    # The segment is floor(log2(mag)) - 5 and the step the 4 bits below the leading one, which is
    # exactly what an IEEE float stores: exponent and top mantissa bits. So for mag in [33, 8191]
    # (clamped: larger magnitudes take the max code 0x7F) float_bits >> 19 == (127+5+seg) << 4 | step.
    # Branch-free, table-free (no cache footprint), and GCC vectorises it with plain SSE2.
    cdef Py_ssize_t i
    cdef int16_t x, neg
    cdef uint16_t mag
    cdef float f
    cdef uint32_t bits
    for i in range(n):
        x = src[i] >> 2
        neg = x >> 15                              # 0 or -1
        mag = <uint16_t>((x ^ neg) - neg + 33)
        if mag > 0x1FFF:
            mag = 0x1FFF
        f = <float>mag
        memcpy(&bits, &f, 4)
        # (seg << 4 | step) inverted for transmission: positive ^ 0xFF, negative ^ 0x7F.
        dst[i] = <uint8_t>(((bits >> 19) - (132 << 4)) ^ (0xFF ^ (neg & 0x80)))


cdef inline void _byteswap16(int16_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint16_t v
    for i in range(n):
        v = <uint16_t>p[i]
        p[i] = <int16_t>((v >> 8) | (v << 8))


cdef void _encode_bytewise(const uint8_t* src, Py_ssize_t n, uint8_t* dst) noexcept nogil:
    """Encode little-endian samples from any address (unaligned buffers, big-endian hosts)."""
    cdef int16_t tmp[_CHUNK]
    cdef Py_ssize_t done = 0, k, i
    while done < n:
        k = min(n - done, _CHUNK)
        for i in range(k):
            tmp[i] = <int16_t>(src[2 * (done + i)] | (src[2 * (done + i) + 1] << 8))
        ulaw_encode_into(tmp, k, dst + done)
        done += k


def ulaw_decode(data) -> bytes:
    """μ-law bytes → PCM16 little-endian (two bytes per input byte)."""
    cdef Py_buffer view
    cdef int16_t* dst
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, 2 * view.len)
        # A bytes payload starts at a pointer-aligned offset, so int16 stores into it are aligned.
        dst = <int16_t*>PyBytes_AS_STRING(out)
        ulaw_decode_into(<const uint8_t*>view.buf, view.len, dst)
        if _BIG_ENDIAN:
            _byteswap16(dst, view.len)
    finally:
        PyBuffer_Release(&view)
    return out


def ulaw_encode(pcm) -> bytes:
    """PCM16 little-endian → μ-law bytes (audioop.lin2ulaw(pcm, 2)); odd length is a ValueError."""
    cdef Py_buffer view
    cdef Py_ssize_t n
    PyObject_GetBuffer(pcm, &view, PyBUF_SIMPLE)
    try:
        if view.len & 1:
            raise ValueError(f"PCM16 input must have an even number of bytes, got {view.len}")
        n = view.len >> 1
        out = PyBytes_FromStringAndSize(NULL, n)
        if _BIG_ENDIAN or (<uintptr_t>view.buf) & 1:
            _encode_bytewise(<const uint8_t*>view.buf, n, <uint8_t*>PyBytes_AS_STRING(out))
        else:
            ulaw_encode_into(<const int16_t*>view.buf, n, <uint8_t*>PyBytes_AS_STRING(out))
    finally:
        PyBuffer_Release(&view)
    return out
