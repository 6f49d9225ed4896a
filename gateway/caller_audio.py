"""Caller audio outside the one-C-call path: held while there is no upstream to take it, or coalesced.

The common case (one Twilio frame → one ``input_audio_buffer.append``) never comes here; see
``Call.on_twilio``. Audio that arrives while the upstream session is opening, reconnecting or not
reading is kept, up to ``GATEWAY_MAX_PENDING_AUDIO_MS`` (the oldest is dropped and counted beyond
that), and sent as soon as a session takes it; with ``GATEWAY_COALESCE_FRAMES`` > 1, frames are
batched per append.
"""
from __future__ import annotations

import _fastpath as fp

from .sender import Sender
from .stats import CallStats

FRAME_BYTES = 160  # 20 ms of μ-law; Twilio's usual frame (not assumed anywhere else)
MAX_APPEND_BYTES = 8000  # 1 s of μ-law per append when flushing what was held


class CallerAudio:
    __slots__ = ("_coalesce_bytes", "_inbuf", "_limit", "_pending", "_stats", "_up", "resampler")

    def __init__(self, stats: CallStats, coalesce_frames: int, max_pending_ms: int, transcode: bool) -> None:
        self._stats = stats
        self._up: Sender | None = None
        self._pending = bytearray()  # received before the upstream is ready
        self._limit = max_pending_ms * 8
        self._inbuf = bytearray()  # coalescing buffer
        self._coalesce_bytes = coalesce_frames * FRAME_BYTES
        self.resampler = fp.Resampler(8000, 24000) if transcode else None

    def on_audio(self, audio: bytes) -> None:
        if self._up is None:
            self._pending += audio
            if len(self._pending) > self._limit:
                drop = len(self._pending) - self._limit
                del self._pending[:drop]
                self._stats.caller_audio_dropped_bytes += drop
            return
        self._inbuf += audio
        if len(self._inbuf) >= self._coalesce_bytes:
            self._send(self._inbuf)
            self._inbuf.clear()

    def hold(self) -> None:
        """No upstream to send to (reconnecting, or it stopped reading): keep audio until there is.

        What was being coalesced is kept first; beyond the bound the oldest is dropped and counted.
        """
        self._up = None
        self._pending += self._inbuf
        self._inbuf.clear()

    def upstream_ready(self, up: Sender) -> None:
        """From now on audio goes to ``up``; what was held goes first."""
        self._up = up
        pending, self._pending = self._pending, bytearray()
        for i in range(0, len(pending), MAX_APPEND_BYTES):
            self._send(pending[i:i + MAX_APPEND_BYTES])

    def _send(self, ulaw: bytes | bytearray) -> None:
        assert self._up is not None
        if self.resampler is None:
            self._up.send(fp.encode_append(ulaw))
        else:
            self._up.send(fp.pcmu_to_append(ulaw, self.resampler))
