"""False-interruption resume end to end (GATEWAY_MIN_INTERRUPTION_MS with paced playout).

The session's VAD neither cancels nor answers by itself (``interrupt_response``/``create_response``
false); caller speech pauses the assistant, a short one resumes it from where the caller stopped
hearing and is deleted from the conversation, a long one completes the interruption as a barge-in
would, and every real turn is answered by the gateway's own ``response.create``. Verdicts from the
simulators' records (``Stack.judge``): what the caller heard of each item continues without a gap
or a repeat beyond the playhead estimate's tolerance.
"""
from __future__ import annotations

import pytest

from gateway.call import Call
from gateway.sim.harness import RESUME_TOLERANCE_MS, Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig
from gateway.sim.twilio_script import CallScript, Turn

# Scenario tests of the bridge rules, 8 s each: under the production loop only (CI time).
pytestmark = pytest.mark.uvloop_only

TOLERANCE_MS = 20.0
ANSWER_MS = 5000
MIN_INTERRUPTION_MS = 400


def stack(audio_mode: str = "passthrough", **openai) -> Stack:
    cfg = OpenAISimConfig(**{"response_ms": (ANSWER_MS, 1500), "pace": 5.0, "first_audio_ms": 300, **openai})
    settings = {"greeting": "Greet the caller.", "playout": "paced", "min_interruption_ms": MIN_INTERRUPTION_MS}
    return Stack(StackConfig(audio_mode=audio_mode, openai=cfg, settings=settings))


def client_events(session, kind: str) -> list[dict]:
    return [e.event for e in session.client_events if e.type == kind]


def test_session_leaves_interrupting_and_answering_to_the_gateway(run):
    async def scenario():
        async with stack() as st:
            record, report = await st.call(CallScript(duration_ms=1000))
            assert report.problems == []
            session = st.session_for(record.call_sid)
            (update,) = client_events(session, "session.update")
            td = update["session"]["audio"]["input"]["turn_detection"]
            assert td["create_response"] is False and td["interrupt_response"] is False
    run(scenario())


@pytest.mark.parametrize(("audio_mode", "pace"), [
    ("passthrough", 5.0),  # the answer was generated before the cough: all of it held or played
    ("passthrough", 1.5),  # still generating: deltas keep arriving into the held audio while paused
    ("pcm16", 1.5),
])
def test_a_cough_pauses_and_the_answer_resumes_where_the_caller_stopped_hearing(run, audio_mode, pace):
    async def scenario():
        async with stack(audio_mode, pace=pace) as st:
            ended: list[Call] = []
            st.gateway.call_end_hooks.append(ended.append)
            record, report = await st.call(CallScript(duration_ms=ANSWER_MS + 3000,
                                                      turns=(Turn(after_heard_ms=1500, speech_ms=150),)))
            assert report.problems == []
            session = st.session_for(record.call_sid)
            # the caller stopped hearing the assistant (Twilio cleared), then heard all of it
            assert report.clears == 1 and len(report.resumes) == 1
            assert abs(report.resumes[0]) <= RESUME_TOLERANCE_MS
            assert report.heard_ms >= ANSWER_MS - TOLERANCE_MS
            # nothing was cancelled or truncated; the cough is not in the conversation
            assert session.cancels == [] and session.truncates == []
            assert [r.status for r in session.responses] == ["completed"]
            (user,) = session.user_items
            assert client_events(session, "conversation.item.delete") == [
                {"type": "conversation.item.delete", "item_id": user.item_id}]
            assert client_events(session, "response.create")[1:] == []  # only the greeting's
            (call,) = ended
            assert call.stats.false_interruptions == 1 and call.stats.interrupts == {}
            assert call.stats.playout_underruns == 0
    run(scenario())


def test_a_real_interruption_after_the_pause_completes_and_is_answered(run):
    async def scenario():
        async with stack(pace=1.5) as st:  # still generating when the caller speaks
            ended: list[Call] = []
            st.gateway.call_end_hooks.append(ended.append)
            record, report = await st.call(CallScript(duration_ms=ANSWER_MS + 2000,
                                                      turns=(Turn(after_heard_ms=1500, speech_ms=1000),)))
            assert report.problems == []
            session = st.session_for(record.call_sid)
            assert report.clears == 1 and report.resumes == []
            # the server did not cancel (interrupt_response false): the gateway did, and truncated
            # the answer at what the caller heard, as in a barge-in
            assert report.cancels == 1 and session.responses[0].reason == "client_cancelled"
            (truncate,) = report.truncates
            assert truncate.accepted and abs(truncate.error_ms) <= TOLERANCE_MS
            assert 1400 <= truncate.heard_ms <= 1700
            # the caller's turn is answered by the gateway's response.create (create_response false)
            assert len(client_events(session, "response.create")) == 2
            assert [r.trigger for r in session.responses] == ["client", "client"]
            assert client_events(session, "conversation.item.delete") == []
            (call,) = ended
            assert call.stats.false_interruptions == 0 and call.stats.interrupts == {"speech_started": 1}
    run(scenario())


def test_speech_into_silence_is_a_turn_the_gateway_answers(run):
    async def scenario():
        async with stack(response_ms=(1000, 1000)) as st:
            record, report = await st.call(CallScript(duration_ms=4500,
                                                      turns=(Turn(after_quiet_ms=300, speech_ms=200),)))
            assert report.problems == []
            session = st.session_for(record.call_sid)
            # even a short turn is a turn when nothing played: nothing paused, nothing deleted
            assert report.clears == 0 and client_events(session, "conversation.item.delete") == []
            assert [r.status for r in session.responses] == ["completed", "completed"]
            assert report.heard_ms >= 2000 - TOLERANCE_MS
    run(scenario())
