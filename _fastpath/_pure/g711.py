"""G.711 μ-law ⇄ PCM16LE, reference twin of ``_fastpath._compiled.g711``.

Bit-exact with CPython's ``audioop`` (docs/protocols/g711.md). Both directions are a table lookup:
the tables are computed once from the textbook formulas below and applied with numpy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt
    from typing_extensions import Buffer

__all__ = ["ulaw_decode", "ulaw_encode"]

_BIAS = 0x84  # 132: added before taking the segment so every segment boundary is a power of two
_BIAS_14 = _BIAS >> 2  # 33: the same bias on the 14-bit scale audioop encodes on
# Largest biased magnitude of each segment (exponent) on the 14-bit scale.
_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _decode_code(code: int) -> int:
    """One μ-law code → int16 (g711.md#decoding). Codes are sent bit-inverted; the sign bit set means negative."""
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return (_BIAS - t) if u & 0x80 else (t - _BIAS)


def _encode_sample14(x14: int) -> int:
    """One 14-bit sample → μ-law code, Sun g711.c / audioop rounding (g711.md#encoding).

    The caller floor-shifts int16 by 2 *before* this function takes the magnitude, so negative
    samples round away from zero (-1 → code 0x7E); that is what makes it audioop-exact.
    """
    if x14 < 0:
        mag, mask = -x14, 0x7F
    else:
        mag, mask = x14, 0xFF
    mag += _BIAS_14
    for seg, upper in enumerate(_SEG_UEND):
        if mag <= upper:
            return ((seg << 4) | ((mag >> (seg + 1)) & 0x0F)) ^ mask
    return 0x7F ^ mask  # beyond the last segment: the largest code of that sign


# int16 value of every code, stored little-endian so tobytes() is PCM16LE on any host.
_DECODE = np.array([_decode_code(c) for c in range(256)], dtype="<i2")
# Code of every 14-bit sample, indexed by x14 + 8192.
_ENCODE = np.array([_encode_sample14(x) for x in range(-8192, 8192)], dtype=np.uint8)


def ulaw_decode(data: Buffer) -> bytes:
    """μ-law bytes → PCM16 little-endian (two bytes per input byte)."""
    return _DECODE[np.frombuffer(memoryview(data), dtype=np.uint8)].tobytes()


def ulaw_encode(pcm: Buffer) -> bytes:
    """PCM16 little-endian → μ-law bytes (``audioop.lin2ulaw(pcm, 2)``).

    Raises ValueError on an odd number of bytes (a caller bug, not peer input).
    """
    nbytes = memoryview(pcm).nbytes
    if nbytes & 1:
        raise ValueError(f"PCM16 input must have an even number of bytes, got {nbytes}")
    samples: npt.NDArray[np.int16] = np.frombuffer(memoryview(pcm), dtype="<i2")
    codes: npt.NDArray[np.uint8] = _ENCODE[(samples >> 2) + 8192]  # numpy types fancy indexing Any
    return codes.tobytes()
