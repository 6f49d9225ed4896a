"""The schedule of a load run and the callers' conversations (see bench/README.md, "Timeline of a
run" and "The conversation"): pure functions of the options and the seed."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

# Audio length of the model's successive answers in every session (the greeting is the first).
RESPONSE_MS = (4000, 3000, 5000, 2500, 6000, 3500)
PACE = 5.0  # the simulated model streams its answers this many times faster than real time
FIRST_AUDIO_MS = 300
CHUNK_MS = 100
WARMUP_CALLS = 4
WARMUP_S = 2.5


@dataclass
class Timeline:
    """Offsets in seconds from T0 (CLOCK_MONOTONIC, fixed when the generators are ready)."""

    calls: int
    duration: float
    ramp_rate: float
    settle: float
    warmup_calls: int = WARMUP_CALLS

    @property
    def idle_sample(self) -> float:
        return WARMUP_S + 1.0 if self.warmup_calls else 0.5

    @property
    def ramp_start(self) -> float:
        return self.idle_sample + 0.5

    @property
    def ramp_s(self) -> float:
        return (self.calls - 1) / self.ramp_rate

    @property
    def window_start(self) -> float:
        return self.ramp_start + self.ramp_s + self.settle

    @property
    def window_end(self) -> float:
        return self.window_start + self.duration

    @property
    def hangup(self) -> float:
        return self.window_end + 0.5

    def phase(self, now: float) -> str:
        """The phase at ``now`` (seconds since T0), as the progress line shows it."""
        if now < self.ramp_start:
            return "warm-up"
        if now < self.ramp_start + self.ramp_s:
            return "ramp"
        if now < self.window_start:
            return "settle"
        if now <= self.window_end:
            return f"measure {now - self.window_start:4.1f}/{self.duration:.0f}s"
        return "hang-up"


def conversation(rng: random.Random, barge_in_share: float, turns: int = 60) -> list[list[Any]]:
    """The caller's turns: ``[kind, ms, speech_ms]``. Turn k reacts to the model's k-th answer
    (k = 0: the greeting), whose length is known: RESPONSE_MS cycles per session."""
    out: list[list[Any]] = []
    for k in range(turns):
        length = RESPONSE_MS[k % len(RESPONSE_MS)]
        generating_ms = length / PACE  # Twilio holds the rest once the model finished generating
        if rng.random() < barge_in_share:
            if rng.random() < 0.5:  # while the model is still generating this answer
                heard = rng.uniform(80, max(100, generating_ms - 160))
            else:  # after generation, while Twilio still plays it
                heard = rng.uniform(generating_ms + 100, length - 600)
            out.append(["heard", round(heard), rng.randint(500, 1200)])
        else:
            out.append(["quiet", rng.randint(300, 900), rng.randint(800, 2000)])
    return out


def build_plan(tl: Timeline, barge_in_share: float, seed: int) -> list[dict[str, Any]]:
    """Every call of the run (warm-up calls first): its sid, start offset, duration and turns."""
    nonce = random.Random(seed).getrandbits(63) ^ int(time.time() * 1000)
    calls = [{"sid": f"CA{nonce & (2**64 - 1):016x}{(1 << 63) | i:016x}", "start": 0.05 * i,
              "duration_ms": int(WARMUP_S * 1000), "turns": [], "warmup": True}
             for i in range(tl.warmup_calls)]
    for i in range(tl.calls):
        start = tl.ramp_start + i / tl.ramp_rate
        rng = random.Random(seed * 1_000_003 + i)
        calls.append({"sid": f"CA{nonce & (2**64 - 1):016x}{i:016x}", "start": start,
                      "duration_ms": int((tl.hangup - start) * 1000),
                      "turns": conversation(rng, barge_in_share), "warmup": False})
    return calls
