"""Base64 (RFC 4648 §4: standard alphabet, padded) with a strict decoder, table-driven.

Decoding accepts exactly what ``binascii.a2b_base64(s, strict_mode=True)`` accepts: length a multiple
of 4, alphabet characters only (no whitespace), '=' only as the last one or two characters. Like
binascii on Python 3.11 it does not look at the unused low bits before the padding ("QR==" → b"A").
Unlike binascii on 3.11 it rejects '=' after a complete final quad ("QUJD=", CPython gh-118314).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

from _fastpath.errors import ProtocolError

__all__ = ["encode", "decode"]

cdef const char* _ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Encoding: the two characters of every 12-bit group, stored in output (memory) order, so one
# 3-byte group costs two lookups.
cdef uint16_t _PAIRS[4096]
# Decoding: the 6-bit value of a character already shifted for its position in the quad, so a
# quad is four lookups OR-ed together. Non-alphabet characters ('=' included) carry _BAD, which
# survives the OR: one test per quad.
cdef uint32_t _D0[256]
cdef uint32_t _D1[256]
cdef uint32_t _D2[256]
cdef uint32_t _D3[256]
cdef enum:
    _BAD = 0x01000000
    _PAD = 61   # '='


cdef void _build_tables() noexcept:
    cdef int i, c
    cdef char pair[2]
    for i in range(4096):
        pair[0] = _ALPHABET[i >> 6]
        pair[1] = _ALPHABET[i & 63]
        memcpy(&_PAIRS[i], pair, 2)
    for c in range(256):
        _D0[c] = _D1[c] = _D2[c] = _D3[c] = _BAD
    for i in range(64):
        c = <uint8_t>_ALPHABET[i]
        _D0[c] = i << 18
        _D1[c] = i << 12
        _D2[c] = i << 6
        _D3[c] = i


_build_tables()


cdef Py_ssize_t b64_encoded_len(Py_ssize_t n) noexcept nogil:
    return (n + 2) // 3 * 4


cdef void b64_encode(const uint8_t* src, Py_ssize_t n, uint8_t* dst) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef uint32_t v
    while n - i >= 3:
        v = (<uint32_t>src[i] << 16) | (<uint32_t>src[i + 1] << 8) | src[i + 2]
        memcpy(dst, &_PAIRS[v >> 12], 2)
        memcpy(dst + 2, &_PAIRS[v & 0xFFF], 2)
        i += 3
        dst += 4
    if n - i == 0:
        return
    v = <uint32_t>src[i] << 16
    if n - i == 2:
        v |= <uint32_t>src[i + 1] << 8
    dst[0] = _ALPHABET[v >> 18]
    dst[1] = _ALPHABET[(v >> 12) & 63]
    dst[2] = _ALPHABET[(v >> 6) & 63] if n - i == 2 else _PAD
    dst[3] = _PAD


cdef Py_ssize_t b64_decoded_max(Py_ssize_t n) noexcept nogil:
    return n // 4 * 3


cdef Py_ssize_t b64_decode(const uint8_t* src, Py_ssize_t n, uint8_t* dst) noexcept nogil:
    # Writes nothing when n % 4 != 0; otherwise never more than b64_decoded_max(n) bytes (some of
    # them possibly before an invalid quad is found).
    cdef Py_ssize_t i
    cdef uint32_t v
    cdef uint8_t* out = dst
    if n & 3:
        return -1
    if n == 0:
        return 0
    for i in range(0, n - 4, 4):
        v = _D0[src[i]] | _D1[src[i + 1]] | _D2[src[i + 2]] | _D3[src[i + 3]]
        if v & _BAD:
            return -1
        out[0] = <uint8_t>(v >> 16)
        out[1] = <uint8_t>(v >> 8)
        out[2] = <uint8_t>v
        out += 3
    # The last quad is "abcd", "abc=" or "ab=="; any other '=' hits _BAD.
    src += n - 4
    if src[3] != _PAD:
        v = _D0[src[0]] | _D1[src[1]] | _D2[src[2]] | _D3[src[3]]
        if v & _BAD:
            return -1
        out[0] = <uint8_t>(v >> 16)
        out[1] = <uint8_t>(v >> 8)
        out[2] = <uint8_t>v
        return out + 3 - dst
    if src[2] != _PAD:
        v = _D0[src[0]] | _D1[src[1]] | _D2[src[2]]
        if v & _BAD:
            return -1
        out[0] = <uint8_t>(v >> 16)
        out[1] = <uint8_t>(v >> 8)
        return out + 2 - dst
    v = _D0[src[0]] | _D1[src[1]]
    if v & _BAD:
        return -1
    out[0] = <uint8_t>(v >> 16)
    return out + 1 - dst


def encode(data) -> bytes:
    """Bytes-like → padded standard base64 (same as ``base64.b64encode``)."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, b64_encoded_len(view.len))
        b64_encode(<const uint8_t*>view.buf, view.len, <uint8_t*>PyBytes_AS_STRING(out))
    finally:
        PyBuffer_Release(&view)
    return out


def decode(data) -> bytes:
    """Strict base64 → bytes; ProtocolError on anything ``a2b_base64(strict_mode=True)`` rejects."""
    cdef Py_buffer view
    cdef const uint8_t* src
    cdef Py_ssize_t n, size
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        src = <const uint8_t*>view.buf
        n = view.len
        if n & 3:
            raise ProtocolError(f"invalid base64: length {n} is not a multiple of 4")
        # Exact output size, so the result needs no resize: valid input ends in at most two '='.
        size = b64_decoded_max(n)
        if n and src[n - 1] == _PAD:
            size -= 2 if src[n - 2] == _PAD else 1
        out = PyBytes_FromStringAndSize(NULL, size)
        if b64_decode(src, n, <uint8_t*>PyBytes_AS_STRING(out)) != size:
            raise ProtocolError("invalid base64: character outside the standard alphabet or misplaced '='")
    finally:
        PyBuffer_Release(&view)
    return out
