"""Streaming polyphase resampler vs numpy/scipy references, for both implementations."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import load
from scipy import signal

PAIRS = [(8000, 24000), (24000, 8000), (8000, 16000), (16000, 8000), (16000, 24000),
         (24000, 16000)]
FULL = 32767

# The ``impl`` fixture only names the implementation; it holds no state to reset between examples.
impl_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture],
                         deadline=None, max_examples=60)


@pytest.fixture
def rs(impl):
    return load(impl, "resample")


def ratio(src: int, dst: int) -> tuple[int, int]:
    g = math.gcd(src, dst)
    return dst // g, src // g


def pcm(values) -> bytes:
    return np.asarray(values).astype("<i2").tobytes()


def samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float64)


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5 * FULL) -> bytes:
    return pcm(np.rint(amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)))


def noise(seed: int, n: int, scale: float = 8000) -> bytes:
    x = np.random.default_rng(seed).normal(0, scale, n)
    return pcm(np.clip(np.rint(x), -32768, 32767))


def stream(r, data: bytes) -> np.ndarray:
    return samples(r.process(data) + r.flush())


def reference(rs, src: int, dst: int, x: np.ndarray, delay: int) -> np.ndarray:
    """process + flush spelled out: zero-stuff by up, convolve with the prototype, keep every
    down-th sample from the offset that makes the delay whole, round and saturate."""
    up, down = ratio(src, dst)
    h = np.array(rs.design_filter(up, down))
    half = (h.size - 1) // 2
    offset = half - delay * down
    assert 0 <= offset < down
    stuffed = np.zeros((x.size - 1) * up + 1)
    stuffed[::up] = x
    full = np.convolve(stuffed, h)              # every up-sampled position the input touches
    y = full[offset::down]
    return np.rint(np.clip(y, -32768, 32767))


# --- API and bookkeeping ----------------------------------------------------------------------

@pytest.mark.parametrize(("src", "dst"), [(8000, 44100), (8000, 12000), (16000, 48000), (0, 8000),
                                     (8000, -8000), (48000, 24000), (0, 0), (44100, 44100)])
def test_unsupported_rates_raise(rs, src, dst):
    with pytest.raises(ValueError, match="unsupported resampling"):
        rs.Resampler(src, dst)


def test_attributes_and_read_only_delay(rs):
    r = rs.Resampler(24000, 8000)
    assert (r.src_rate, r.dst_rate) == (24000, 8000)
    assert isinstance(r.delay, int)
    with pytest.raises(AttributeError):
        r.delay = 3


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_equal_rates_copy(rs, rate):
    r = rs.Resampler(rate, rate)
    data = noise(1, 321)
    assert r.delay == 0
    out = r.process(memoryview(b"x" + data)[1:])
    assert out == data and type(out) is bytes
    assert r.flush() == b""


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_matches_polyphase_reference_with_saturation(rs, src, dst):
    # a full-scale square wave overshoots after filtering: rounding and saturation are exercised
    square = np.where(np.arange(3001) % 160 < 80, 30000.0, -30000.0)
    x = pcm(np.clip(square + samples(noise(2, 3001, scale=3000)), -32768, 32767))
    r = rs.Resampler(src, dst)
    got = stream(r, x)
    want = reference(rs, src, dst, samples(x), r.delay)
    # flush reaches every output the input touches (and may add a few exact zeros)
    assert got.size >= want.size and np.all(got[want.size:] == 0)
    assert np.abs(got[:want.size] - want).max() <= 1
    assert np.mean(got[:want.size] != want) < 0.01     # float32 rounding flips only, no bias
    assert got.min() == -32768 and got.max() == 32767


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_delay_aligns_an_impulse(rs, src, dst):
    up, down = ratio(src, dst)
    r = rs.Resampler(src, dst)
    h = rs.design_filter(up, down)
    x = np.zeros(600)
    x[300] = 20000                                   # input time 300 / src
    y = stream(r, pcm(x))
    peak = 300 * dst // src + r.delay                # output j <-> input time (j - delay) / dst
    assert np.argmax(y) == peak and abs(y[peak] - 20000 * h[(len(h) - 1) // 2]) <= 1


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_output_counts(rs, src, dst):
    up, down = ratio(src, dst)
    r = rs.Resampler(src, dst)
    fed = produced = 0
    for i, n in enumerate([0, 1, 2, 3, 5, 160, 0, 479, 480, 7]):
        produced += len(r.process(noise(i, n))) // 2
        fed += n
        assert produced == fed * up // down


def test_flush_resets_and_empty_stream_flushes_nothing(rs):
    r, fresh = rs.Resampler(8000, 24000), rs.Resampler(8000, 24000)
    assert r.flush() == b""
    r.process(b"")
    assert r.flush() == b""
    first = r.process(noise(3, 160))
    assert first == fresh.process(noise(3, 160))
    assert len(r.flush()) > 0
    assert r.flush() == b""
    assert r.process(noise(4, 160)) == rs.Resampler(8000, 24000).process(noise(4, 160))


def test_reset_drops_state(rs):
    r = rs.Resampler(24000, 8000)
    r.process(noise(5, 481))
    r.reset()
    fresh = rs.Resampler(24000, 8000)
    assert r.process(noise(6, 480)) + r.flush() == fresh.process(noise(6, 480)) + fresh.flush()


def test_odd_length_raises_and_keeps_state(rs):
    r, twin = rs.Resampler(24000, 8000), rs.Resampler(24000, 8000)
    assert r.process(noise(7, 100)) == twin.process(noise(7, 100))
    with pytest.raises(ValueError, match="even byte length"):
        r.process(b"\x01\x02\x03")
    assert r.process(noise(8, 100)) == twin.process(noise(8, 100))


def test_accepts_bytes_like(rs):
    data = noise(9, 333)
    want = rs.Resampler(8000, 24000).process(data)
    for obj in (bytearray(data), memoryview(data), memoryview(b"ab" + data)[2:],
                memoryview(b"a" + data)[1:], np.frombuffer(data, "<i2")):
        out = rs.Resampler(8000, 24000).process(obj)
        assert out == want and type(out) is bytes


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_20ms_frames_equal_one_shot(rs, src, dst):
    data, frame = noise(12, src), 2 * src // 50
    whole = rs.Resampler(src, dst)
    r = rs.Resampler(src, dst)
    got = b"".join(r.process(data[i:i + frame]) for i in range(0, len(data), frame))
    assert got + r.flush() == whole.process(data) + whole.flush()


@impl_settings
@given(pair=st.sampled_from(PAIRS), n=st.integers(0, 1500), seed=st.integers(0, 2 ** 16),
       cuts=st.lists(st.integers(0, 1500), max_size=12))
def test_chunking_never_changes_output(rs, pair, n, seed, cuts):
    data = noise(seed, n, scale=12000)
    whole = rs.Resampler(*pair)
    want = whole.process(data) + whole.flush()
    r = rs.Resampler(*pair)
    bounds = [0, *sorted(2 * min(c, n) for c in cuts), 2 * n]
    got = b"".join(r.process(data[a:b]) for a, b in itertools.pairwise(bounds)) + r.flush()
    assert got == want
    assert r.process(data) + r.flush() == want     # flush left it ready for a new stream


# --- quality ----------------------------------------------------------------------------------

def snr_db(want: np.ndarray, got: np.ndarray) -> float:
    return 10 * np.log10(np.sum(want ** 2) / np.sum((got - want) ** 2))


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_1khz_tone_snr(rs, src, dst):
    r = rs.Resampler(src, dst)
    y = samples(r.process(tone(1000, src, 1.0)))
    j = np.arange(y.size)
    ideal = 0.5 * FULL * np.sin(2 * np.pi * 1000 * (j - r.delay) / dst)
    skip = len(rs.design_filter(*ratio(src, dst)))
    assert snr_db(ideal[skip:-skip], y[skip:-skip]) >= 60


def fit_tone(y: np.ndarray, freq: float, rate: int) -> tuple[float, float]:
    """Least-squares amplitude of a tone at freq and the rms of what is left."""
    t = np.arange(y.size) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(*coef)), float(np.sqrt(np.mean((y - basis @ coef) ** 2)))


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_passband_ripple_and_image_rejection(rs, src, dst):
    """0..3.4 kHz (scaled to the lower rate) within 0.5 dB, everything else >= 60 dB down."""
    low = min(src, dst)
    skip = len(rs.design_filter(*ratio(src, dst)))
    gains, leaks = [], []
    for f in np.arange(1, 35) * 100 * low / 8000:
        y = samples(rs.Resampler(src, dst).process(tone(f, src, 0.25)))[skip:-skip]
        amp, rest = fit_tone(y, f, dst)
        gains.append(amp / (0.5 * FULL))
        leaks.append(rest / (0.5 * FULL / np.sqrt(2)))
    ripple = 20 * np.log10(max(gains) / min(gains))
    assert ripple <= 0.5 and 20 * np.log10(max(gains)) < 0.25
    assert 20 * np.log10(max(leaks)) <= -60


@pytest.mark.parametrize(("src", "dst"), [p for p in PAIRS if p[0] > p[1]])
def test_anti_aliasing(rs, src, dst):
    """Tones from 4.4 kHz (scaled to the output rate) to the input Nyquist come out >= 60 dB
    down (24k -> 8k: 4.4-12 kHz, every 100 Hz)."""
    skip = len(rs.design_filter(*ratio(src, dst)))
    worst = 0.0
    for f in np.arange(0.55 * dst, src / 2, 100):
        y = samples(rs.Resampler(src, dst).process(tone(f, src, 0.25)))[skip:-skip]
        worst = max(worst, np.sqrt(np.mean(y ** 2)) / (0.5 * FULL / np.sqrt(2)))
    assert 20 * np.log10(worst) <= -60


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_prototype_response(rs, src, dst):
    up, down = ratio(src, dst)
    h = np.array(rs.design_filter(up, down))
    low, fs = min(src, dst), src * up
    assert h.size % 2 == 1 and np.allclose(h, h[::-1]) and np.isclose(h.sum(), up)
    w, resp = signal.freqz(h / up, worN=8192, fs=fs)
    mag = 20 * np.log10(np.abs(resp))
    passband = mag[w <= 0.425 * low]
    assert passband.max() - passband.min() <= 0.5
    assert mag[w >= 0.55 * low].max() <= -60


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_close_to_scipy_resample_poly(rs, src, dst):
    """scipy's own (zero-phase) design agrees on band-limited audio once the delay is removed."""
    n = src // 2
    t = np.arange(n) / src
    x = np.rint(0.3 * FULL * (np.sin(2 * np.pi * 300 * t) + np.sin(2 * np.pi * 2500 * t + 1)))
    r = rs.Resampler(src, dst)
    y = samples(r.process(pcm(x)))
    ref = signal.resample_poly(x, *ratio(src, dst))
    skip = len(rs.design_filter(*ratio(src, dst)))
    m = y.size - r.delay
    assert snr_db(ref[skip:m - skip], y[r.delay + skip:r.delay + m - skip]) >= 50


# --- compiled vs pure -------------------------------------------------------------------------

@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_compiled_and_pure_agree_within_2_lsb(src, dst):
    c, p = load("compiled", "resample"), load("pure", "resample")
    assert c.design_filter(*ratio(src, dst)) == p.design_filter(*ratio(src, dst))
    rc, rp = c.Resampler(src, dst), p.Resampler(src, dst)
    assert rc.delay == rp.delay
    loud = pcm(np.where(np.arange(700) % 40 < 20, 32767, -32768))
    for data in (noise(10, 2000, scale=15000), loud, tone(1000, src, 0.1), noise(11, 37)):
        a, b = samples(rc.process(data)), samples(rp.process(data))
        assert a.size == b.size and np.abs(a - b).max() <= 2
    a, b = samples(rc.flush()), samples(rp.flush())
    assert a.size == b.size and np.abs(a - b).max() <= 2
