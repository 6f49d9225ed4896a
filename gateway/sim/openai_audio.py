"""Assistant audio for the OpenAI simulator: one precomputed bank per output format.

The bank is deterministic band-limited noise (200–3400 Hz, so it survives 24 kHz → 8 kHz resampling)
under a syllable-rate envelope with a floor (never silence). Items take consecutive, non-overlapping
chunk ranges of the bank from a per-session starting point, so within a session every item's bytes
are unique (any 40-byte μ-law slice locates one item and offset) until the session has used the whole
bank (``bank_s`` seconds of assistant audio). Base64 of each chunk is cached, so streaming a delta
costs no encoding. Input-side helpers (bytes per ms, frame energy for the VAD) live here too.
"""
from __future__ import annotations

import functools
import warnings
from binascii import b2a_base64

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib on 3.11/3.12, the audioop-lts package from 3.13

__all__ = ["BYTES_PER_MS", "AudioBank", "audio_bank", "frame_rms"]

#: Bytes per millisecond of each GA audio format (docs/protocols/openai-realtime.md#audio-formats).
BYTES_PER_MS = {"audio/pcmu": 8, "audio/pcma": 8, "audio/pcm": 48}
_RATE = {"audio/pcmu": 8000, "audio/pcma": 8000, "audio/pcm": 24000}
_RMS_DBFS = -18.0  # long-term level of the generated speech


def frame_rms(fmt: str, frame: bytes) -> int:
    """RMS of one frame on the int16 scale, whatever the session input format."""
    if fmt == "audio/pcmu":
        frame = audioop.ulaw2lin(frame, 2)
    elif fmt == "audio/pcma":
        frame = audioop.alaw2lin(frame, 2)
    return audioop.rms(frame, 2)


def _speech_like_pcm16(rate: int, n: int, seed: int) -> np.ndarray:
    """``n`` int16 samples: noise with a flat 200–3400 Hz spectrum times a 3.7 Hz 'syllable' envelope."""
    rng = np.random.Generator(np.random.PCG64(seed))
    lo, hi = 200 * n // rate, 3400 * n // rate
    spectrum = np.zeros(n // 2 + 1, np.complex128)
    spectrum[lo:hi] = rng.standard_normal(hi - lo) + 1j * rng.standard_normal(hi - lo)
    x = np.fft.irfft(spectrum, n)
    t = np.arange(n) / rate
    envelope = 0.35 + 0.65 * np.abs(np.sin(2 * np.pi * 3.7 * t))
    x *= envelope * (32768 * 10 ** (_RMS_DBFS / 20) / x.std())
    return np.clip(np.rint(x), -32768, 32767).astype("<i2")


class AudioBank:
    """``seconds`` of generated audio in one output format, cut into ``chunk_ms`` chunks."""

    def __init__(self, fmt: str, seed: int, chunk_ms: int, seconds: int) -> None:
        self.format = fmt
        self.chunk_bytes = chunk_ms * BYTES_PER_MS[fmt]
        self.n_chunks = max(1, seconds * 1000 // chunk_ms)
        n_samples = self.n_chunks * chunk_ms * _RATE[fmt] // 1000
        pcm = _speech_like_pcm16(_RATE[fmt], n_samples, seed).tobytes()
        if fmt == "audio/pcmu":
            pcm = audioop.lin2ulaw(pcm, 2)
        elif fmt == "audio/pcma":
            pcm = audioop.lin2alaw(pcm, 2)
        self.data = pcm
        self._b64: list[bytes | None] = [None] * self.n_chunks

    def b64_chunk(self, index: int, nbytes: int) -> bytes:
        """Base64 (no newline) of the first ``nbytes`` of chunk ``index`` (taken modulo the bank)."""
        index %= self.n_chunks
        if nbytes == self.chunk_bytes:
            cached = self._b64[index]
            if cached is None:
                cached = self._b64[index] = b2a_base64(self._chunk(index, nbytes), newline=False)
            return cached
        return b2a_base64(self._chunk(index, nbytes), newline=False)

    def audio(self, first_chunk: int, nbytes: int) -> bytes:
        """``nbytes`` of contiguous audio starting at chunk ``first_chunk``, wrapping around the bank."""
        start = (first_chunk % self.n_chunks) * self.chunk_bytes
        out = self.data[start:start + nbytes]
        while len(out) < nbytes:
            out += self.data[:nbytes - len(out)]
        return out

    def _chunk(self, index: int, nbytes: int) -> bytes:
        start = index * self.chunk_bytes
        return self.data[start:start + nbytes]


@functools.cache
def audio_bank(fmt: str, seed: int, chunk_ms: int, seconds: int) -> AudioBank:
    """Shared bank per (format, seed, chunk size, length): built once per process (~0.1 s)."""
    return AudioBank(fmt, seed, chunk_ms, seconds)
