# C-level G.711 μ-law kernels shared by the other compiled modules (framing composites).
# Samples are native-endian int16_t (little-endian on x86/ARM; the Python wrappers byteswap on
# big-endian hosts), and the int16_t pointer must be 2-byte aligned: copy unaligned PCM first.
# Both are bit-exact with audioop (ulaw2lin / lin2ulaw, width 2); n counts samples = codes.
from libc.stdint cimport int16_t, uint8_t

cdef void ulaw_decode_into(const uint8_t* src, Py_ssize_t n, int16_t* dst) noexcept nogil
cdef void ulaw_encode_into(const int16_t* src, Py_ssize_t n, uint8_t* dst) noexcept nogil
