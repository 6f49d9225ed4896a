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
DEFAULT_DELTA_MS = 40  # audio per response.output_audio.delta (--delta-ms; the real API sends small deltas)
REBARGE_SHARE = 0.35  # share of barge-ins followed by a second one half a second into the next reply
REBARGE_HEARD_MS = (450, 550)  # ... of that reply heard when the caller barges in again
# The phase of each caller turn (the judge breaks truncation and stop times down by it):
PHASE_GENERATING = "generating"  # barge-in while the model still generates the answer
PHASE_PLAYING = "playing"  # barge-in after generation, while Twilio still plays the answer
PHASE_REBARGE = "rebarge"  # barge-in again ~0.5 s into the reply that follows a barge-in
PHASE_QUIET = "quiet"  # speaks once the answer has played (no barge-in)
PHASES = (PHASE_GENERATING, PHASE_PLAYING, PHASE_REBARGE, PHASE_QUIET)
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


def conversation(rng: random.Random, barge_in_share: float, turns: int = 60,
                 rebarge_share: float = REBARGE_SHARE) -> list[list[Any]]:
    """The caller's turns: ``[kind, ms, speech_ms, phase]``. Turn k reacts to the model's k-th answer
    (k = 0: the greeting), whose length is known: RESPONSE_MS cycles per session.

    After a barge-in, with probability ``rebarge_share`` the caller barges in again 450–550 ms into
    the model's next reply, the one that answers the interruption (phase ``rebarge``): the gateway
    then has to place the playhead of a reply that has only just started. Otherwise each turn
    barges in with probability ``barge_in_share``, half of those while the model is still
    generating the answer, half after generation while Twilio still plays it; the other turns
    speak once the answer has played."""
    out: list[list[Any]] = []
    barged = False
    for k in range(turns):
        length = RESPONSE_MS[k % len(RESPONSE_MS)]
        generating_ms = length / PACE  # Twilio holds the rest once the model finished generating
        if barged and rng.random() < rebarge_share:
            out.append(["heard", rng.randint(*REBARGE_HEARD_MS), rng.randint(500, 1200), PHASE_REBARGE])
        elif rng.random() < barge_in_share:
            if rng.random() < 0.5:  # while the model is still generating this answer
                heard, phase = rng.uniform(80, max(100, generating_ms - 160)), PHASE_GENERATING
            else:  # after generation, while Twilio still plays it
                heard, phase = rng.uniform(generating_ms + 100, length - 600), PHASE_PLAYING
            out.append(["heard", round(heard), rng.randint(500, 1200), phase])
        else:
            out.append(["quiet", rng.randint(300, 900), rng.randint(800, 2000), PHASE_QUIET])
        barged = out[-1][0] == "heard"
    return out


def build_plan(tl: Timeline, barge_in_share: float, seed: int,
               rebarge_share: float = REBARGE_SHARE) -> list[dict[str, Any]]:
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
                      "turns": conversation(rng, barge_in_share, rebarge_share=rebarge_share),
                      "warmup": False})
    return calls
