# C-level base64 (RFC 4648, standard alphabet, padded) used by framing. No I/O, no Python objects.
from libc.stdint cimport uint8_t

# Number of characters b64_encode writes for n input bytes: 4 * ceil(n / 3).
cdef Py_ssize_t b64_encoded_len(Py_ssize_t n) noexcept nogil
cdef void b64_encode(const uint8_t* src, Py_ssize_t n, uint8_t* dst) noexcept nogil
# Upper bound of decoded bytes for n characters (n must be a multiple of 4 to be valid).
cdef Py_ssize_t b64_decoded_max(Py_ssize_t n) noexcept nogil
# Strict decode: n % 4 == 0, alphabet only, '=' only as 1-2 final chars, non-zero trailing bits rejected
# exactly where binascii.a2b_base64(strict_mode=True) rejects them. Returns bytes written or -1 if invalid.
cdef Py_ssize_t b64_decode(const uint8_t* src, Py_ssize_t n, uint8_t* dst) noexcept nogil
