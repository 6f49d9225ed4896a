"""Paced playout end to end (``GATEWAY_PLAYOUT=paced``): the lead Twilio holds, underruns, and the
message count, over real sockets against the simulators (barge-in in every phase and mode is in
``test_bargein.py``)."""
from __future__ import annotations

import itertools

from gateway.call import Call
from gateway.sim.harness import Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig
from gateway.sim.twilio_script import CallScript

LEAD_MS = 300
CHUNK_MS = 100
ANSWER_MS = 6000


def test_paced_playout_bounds_the_lead_without_gaps(run):
    """A 6 s greeting generated 5x faster than real time: Twilio never holds more than the lead
    (plus the one-way latency it is on its way for), plays it without a gap, and gets it in
    chunks of CHUNK_MS instead of one message per 40 ms delta."""
    async def scenario():
        settings = {"greeting": "Greet the caller.", "playout": "paced", "playout_lead_ms": LEAD_MS,
                    "playout_chunk_ms": CHUNK_MS}
        openai = OpenAISimConfig(response_ms=(ANSWER_MS,), pace=5.0, first_audio_ms=400, chunk_ms=40)
        async with Stack(StackConfig(openai=openai, settings=settings)) as st:
            ended: list[Call] = []
            st.gateway.call_end_hooks.append(ended.append)
            record, report = await st.call(CallScript(duration_ms=ANSWER_MS + 2500))
            assert report.problems == []
            assert report.heard_ms >= ANSWER_MS - 10
            heard = [h for h in record.heard if h.start_at is not None]
            # queued at Twilio + on the way there, for each chunk: at most the lead (+ jitter)
            ahead_ms = [(h.start_at - h.received_at) * 1000 for h in heard]
            assert max(ahead_ms) <= LEAD_MS + 30, max(ahead_ms)
            for before, after in itertools.pairwise(heard):
                gap_ms = (after.start_at - before.start_at) * 1000 - before.size / 8
                assert gap_ms <= 1.0, f"{gap_ms:.1f} ms of silence inside the answer"
            # the first deltas go out as they come (the lead is empty), then whole chunks
            assert len(record.heard) <= ANSWER_MS / CHUNK_MS + 10
            (call,) = ended
            assert call.stats.playout_underruns == 0
            assert call.stats.media_out == len(record.heard)
    run(scenario())
