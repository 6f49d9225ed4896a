"""What the simulated caller does: call length, speech turns and their triggers, caller audio."""
from __future__ import annotations

import base64
import functools
import math
import random
import warnings
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

with warnings.catch_warnings():  # stdlib audioop (3.11/3.12) or audioop-lts (3.13+)
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["DTMF_DIGITS", "FRAME_BYTES", "SILENCE_FRAME", "CallScript", "Dtmf", "Turn", "speech_pool"]

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law, Twilio's inbound frame size (docs/protocols/twilio.md#cadence)
SILENCE_FRAME = b"\xff" * FRAME_BYTES  # μ-law +0
POOL_FRAMES = 50  # 1 s of noise, cycled; a multiple of the frame size so frames are shared objects
DTMF_DIGITS = frozenset("0123456789*#")  # keys a phone sends (twilio.md#message-shapes: one key per dtmf)


@dataclass(frozen=True)
class Turn:
    """One thing the caller does, started by exactly one trigger.

    Turns run in order: a turn is *armed* when the previous turn's speech ends (the first at stream
    start) and starts once its trigger holds. Triggers:

    * ``at_ms``: this many ms after stream start (or at arming, if that is later);
    * ``after_heard_ms``: once the caller has heard this much of the playback run playing at
      arming, or else of a later run, counted from the run's start (1000 = "interrupt one second
      into the answer"; fires at once if already heard). A run is assistant audio from a start on an
      empty buffer until a ``clear`` or until the buffer stays empty ``RUN_GAP_S`` (300 ms); shorter
      underruns don't end it and aren't counted as heard;
    * ``after_quiet_ms``: once the outbound buffer has been empty this long after audio that played
      at or after arming (i.e. after playback finished or was cleared; underruns count too).

    The caller then speaks ``speech_ms`` of speech-like noise at ``level_dbfs`` (sample-accurate
    start), or with ``hangup=True`` hangs up instead (``stop`` + close).
    """

    at_ms: float | None = None
    after_heard_ms: float | None = None
    after_quiet_ms: float | None = None
    speech_ms: int = 800
    level_dbfs: float = -20.0
    hangup: bool = False

    def __post_init__(self) -> None:
        triggers = (self.at_ms, self.after_heard_ms, self.after_quiet_ms)
        if sum(t is not None for t in triggers) != 1:
            raise ValueError("a Turn needs exactly one of at_ms, after_heard_ms, after_quiet_ms")
        if any(t is not None and t < 0 for t in triggers) or self.speech_ms < 0:
            raise ValueError("Turn times must be >= 0")


@dataclass(frozen=True)
class Dtmf:
    """The caller presses ``digits`` (one ``dtmf`` message per key), the first at ``at_ms`` after
    stream start, the next ones ``interval_ms`` apart."""

    at_ms: float
    digits: str
    interval_ms: float = 250.0

    def __post_init__(self) -> None:
        if not self.digits or set(self.digits) - DTMF_DIGITS:
            raise ValueError(f"DTMF digits must be among 0-9, * and #: {self.digits!r}")
        if self.at_ms < 0 or self.interval_ms < 0:
            raise ValueError("Dtmf times must be >= 0")

    def presses(self) -> list[tuple[float, str]]:
        """(ms after stream start, key) of every key press."""
        return [(self.at_ms + i * self.interval_ms, d) for i, d in enumerate(self.digits)]


@dataclass(frozen=True)
class CallScript:
    """A whole call from the caller's side.

    ``duration_ms``: the caller hangs up this long after stream start (Twilio sends ``stop`` and
    closes), unless the gateway or a ``Turn(hangup=True)`` ends the call first.
    ``hangup_at_ms``: instead the line dies abruptly at that time: the TCP connection is dropped
    with no ``stop`` and no close frame (network / Twilio edge failure).
    ``dtmf``: key presses at fixed times (Twilio sends each as a ``dtmf`` message; the caller's audio
    frames keep flowing meanwhile).
    """

    duration_ms: int = 5_000
    turns: Sequence[Turn] = ()
    hangup_at_ms: int | None = None
    caller: str = "+14155550123"
    called: str = "+18005550199"
    extra_params: dict[str, str] = field(default_factory=dict)  # added to the webhook form
    dtmf: Sequence[Dtmf] = ()


@functools.lru_cache(maxsize=16)
def speech_pool(level_dbfs: float) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """``POOL_FRAMES`` frames of low-passed Gaussian noise at ``level_dbfs`` RMS, μ-law encoded,
    and their base64 forms. Deterministic and shared by every call (keeps per-frame cost ~0)."""
    rng = random.Random(0x7A11)
    n = POOL_FRAMES * FRAME_BYTES
    raw, y = [], 0.0
    for _ in range(n):  # one-pole low-pass: a speech-like spectral tilt
        y = 0.6 * y + rng.gauss(0.0, 1.0)
        raw.append(y)
    scale = 32768.0 * 10 ** (level_dbfs / 20) / math.sqrt(sum(v * v for v in raw) / n)
    pcm = array("h", (max(-32768, min(32767, round(v * scale))) for v in raw))
    ulaw = audioop.lin2ulaw(pcm.tobytes(), 2)
    frames = tuple(ulaw[i:i + FRAME_BYTES] for i in range(0, n, FRAME_BYTES))
    return frames, tuple(base64.b64encode(f) for f in frames)
