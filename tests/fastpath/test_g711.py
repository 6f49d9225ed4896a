"""G.711 μ-law codec vs CPython's audioop (docs/protocols/g711.md), for both implementations."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import load

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_CODES = bytes(range(256))
ALL_INT16 = np.arange(-32768, 32768, dtype="<i2").tobytes()


def to_native(pcm_le: bytes) -> bytes:
    """audioop works in native byte order; our API is little-endian."""
    return audioop.byteswap(pcm_le, 2) if sys.byteorder == "big" else pcm_le


def ref_decode(codes: bytes) -> bytes:
    return to_native(audioop.ulaw2lin(codes, 2))


def ref_encode(pcm_le: bytes) -> bytes:
    return audioop.lin2ulaw(to_native(pcm_le), 2)


# The ``impl`` fixture only names the implementation; it holds no state to reset between examples.
impl_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def le16(*values: int) -> bytes:
    return np.array(values, dtype="<i2").tobytes()


@pytest.fixture
def g711(impl):
    return load(impl, "g711")


def test_decode_all_codes_match_audioop(g711):
    assert g711.ulaw_decode(ALL_CODES) == ref_decode(ALL_CODES)


def test_encode_all_int16_match_audioop(g711):
    assert g711.ulaw_encode(ALL_INT16) == ref_encode(ALL_INT16)


def test_format_facts(g711):
    decoded = np.frombuffer(g711.ulaw_decode(ALL_CODES), dtype="<i2")
    assert decoded[0xFF] == decoded[0x7F] == 0
    assert decoded[0x80] == 32124 and decoded[0x00] == -32124
    assert len(set(decoded.tolist())) == 255
    assert g711.ulaw_encode(le16(0)) == b"\xff"


def test_cpython_encode_vectors(g711):
    pcm = le16(0, 0x1234, 0x4567, -0x4567, 0x7FFF, -0x8000, -1)
    assert g711.ulaw_encode(pcm) == bytes.fromhex("ffad8e0e80007e")


def test_cpython_decode_vectors(g711):
    codes = bytes.fromhex("000e283f576a767c7e7f808ea8bfd7eaf6fcfeff")
    units14 = [-8031, -4447, -1471, -495, -163, -53, -18, -6, -2, 0,
               8031, 4447, 1471, 495, 163, 53, 18, 6, 2, 0]
    assert g711.ulaw_decode(codes) == le16(*(4 * u for u in units14))


def test_negative_rounding_is_audioops(g711):
    # The 14-bit floor shift makes -1..-4 a full step below zero; 16-bit encoders give 0x7F here.
    assert g711.ulaw_encode(le16(-1, -8, -9, 1, 3, 4)) == bytes([0x7E, 0x7E, 0x7D, 0xFF, 0xFF, 0xFE])


@pytest.mark.parametrize("nbytes", [1, 3, 321])
def test_encode_odd_length_raises(g711, nbytes):
    with pytest.raises(ValueError, match="even number of bytes"):
        g711.ulaw_encode(bytes(nbytes))
    with pytest.raises(ValueError, match="even number of bytes"):
        g711.ulaw_encode(memoryview(bytes(nbytes + 1))[1:])


def test_empty(g711):
    assert g711.ulaw_decode(b"") == b""
    assert g711.ulaw_encode(b"") == b""
    assert type(g711.ulaw_decode(bytearray())) is bytes
    assert type(g711.ulaw_encode(memoryview(b""))) is bytes


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_bytes_like_inputs(g711, wrap):
    codes = ALL_CODES * 3
    pcm = ALL_INT16[:2000]
    for result in (g711.ulaw_decode(wrap(codes)), g711.ulaw_encode(wrap(pcm))):
        assert type(result) is bytes
    assert g711.ulaw_decode(wrap(codes)) == ref_decode(codes)
    assert g711.ulaw_encode(wrap(pcm)) == ref_encode(pcm)


@pytest.mark.parametrize("offset", [1, 3])
def test_unaligned_memoryview_slices(g711, offset):
    # Longer than the compiled byte-wise path's chunk, odd offsets: int16 reads are unaligned.
    pcm = ALL_INT16[12000:16002]
    buf = bytearray(offset) + pcm
    assert g711.ulaw_encode(memoryview(buf)[offset:]) == ref_encode(pcm)
    assert g711.ulaw_encode(memoryview(bytes(buf))[offset:]) == ref_encode(pcm)
    codes = bytes(buf[:999])
    assert g711.ulaw_decode(memoryview(codes)[offset:]) == ref_decode(codes[offset:])


def test_round_trip_every_code(g711):
    back = g711.ulaw_encode(g711.ulaw_decode(ALL_CODES))
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF  # -0 comes back as +0
    assert back == bytes(expected)


@impl_settings
@given(st.lists(st.integers(-32768, 32767), max_size=400))
def test_round_trip_property(impl, samples):
    g711 = load(impl, "g711")
    pcm = le16(*samples)
    codes = g711.ulaw_encode(pcm)
    assert g711.ulaw_encode(g711.ulaw_decode(codes)) == codes
    decoded = np.frombuffer(g711.ulaw_decode(codes), dtype="<i2").astype(np.int32)
    clipped = np.clip(np.array(samples, dtype=np.int32), -32124, 32124)
    assert np.all(np.abs(decoded - clipped) <= 515)  # g711.md#encoding: max quantisation error


@impl_settings
@given(st.binary(max_size=2000))
def test_random_matches_audioop(impl, data):
    g711 = load(impl, "g711")
    assert g711.ulaw_decode(data) == ref_decode(data)
    even = data[: len(data) & ~1]
    assert g711.ulaw_encode(even) == ref_encode(even)


@given(st.binary(max_size=2000), st.integers(0, 1))
def test_compiled_equals_pure(data, offset):
    compiled, pure = load("compiled", "g711"), load("pure", "g711")
    view = memoryview(data)[offset:]
    assert compiled.ulaw_decode(view) == pure.ulaw_decode(view)
    even = view[: len(view) & ~1]
    assert compiled.ulaw_encode(even) == pure.ulaw_encode(even)
