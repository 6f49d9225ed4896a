"""A soft hold tone made here as μ-law, for callers waiting on a slow tool (``filler.kind = "tone"``).

Two short, quiet chimes (660 Hz then 880 Hz, 150 ms each with 10 ms ramps, at -24 dBFS) every two
seconds: audible as "still there", not intrusive, and cheap to make once per process.
"""
from __future__ import annotations

import functools

import numpy as np

import _fastpath as fp

RATE = 8000
PERIOD_S = 2.0
LEVEL = 10 ** (-24 / 20) * 32767


@functools.cache
def hold_pattern() -> bytes:
    """One PERIOD_S of the pattern, μ-law 8 kHz."""
    pcm = np.zeros(int(RATE * PERIOD_S), dtype=np.float64)
    n = int(0.15 * RATE)
    ramp = int(0.01 * RATE)
    envelope = np.ones(n)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
    t = np.arange(n) / RATE
    for start_s, freq in ((0.0, 660.0), (0.2, 880.0)):
        start = int(start_s * RATE)
        pcm[start:start + n] += LEVEL * envelope * np.sin(2 * np.pi * freq * t)
    return fp.ulaw_encode(pcm.astype("<i2").tobytes())
