"""Barge-in in every phase, end to end over real sockets on loopback.

OpenAI simulator (TLS) ⇄ gateway (secure mode) ⇄ Twilio simulator with 40 ± 10 ms one-way latency.
Every test runs in both playout modes (``GATEWAY_PLAYOUT``: paced and burst; burst under uvloop
only), with the same accuracy assertions. Verdicts come from the simulators' records
(``Stack.judge``): truncate offset vs what the caller heard, no audio lost or duplicated on either
leg, no late audio of an interrupted response played, zero schema violations upstream, zero Twilio
protocol violations, zero upstream errors provoked.
"""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway.sim.harness import Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig
from gateway.sim.twilio_script import CallScript, Turn

TOLERANCE_MS = 20.0
GREETING = {"greeting": "Greet the caller."}
LEAD_MS = 300  # GATEWAY_PLAYOUT_LEAD_MS in paced mode


@pytest.fixture(params=["paced", "burst"])
def playout(request) -> str:
    return request.param


@pytest.fixture
def stack(playout, run):
    """``stack(audio_mode, **openai_sim_config)``: the test's stack, in the test's playout mode."""
    if playout == "burst" and run.kind == "asyncio":
        pytest.skip("burst playout runs under uvloop only: the event loop makes no difference to playout")

    def make(audio_mode: str = "passthrough", **openai) -> Stack:
        cfg = OpenAISimConfig(**{"response_ms": (6000,), "pace": 5.0, "first_audio_ms": 400, **openai})
        settings = dict(GREETING, playout=playout, playout_lead_ms=LEAD_MS)
        return Stack(StackConfig(audio_mode=audio_mode, openai=cfg, settings=settings))
    return make


def assert_correct(report, record, clears: int, truncates: int, cancels: int = 0) -> None:
    assert report.problems == []
    assert len(record.turns) >= 1
    assert report.clears == clears
    assert len(report.truncates) == truncates
    assert report.cancels == cancels
    for t in report.truncates:
        assert t.accepted
        assert abs(t.error_ms) <= TOLERANCE_MS, f"truncate {t.audio_end_ms} ms vs heard {t.heard_ms:.1f} ms"


@pytest.mark.parametrize("audio_mode", ["passthrough", "pcm16"])
def test_barge_in_during_generation(run, stack, audio_mode):
    async def scenario():
        async with stack(audio_mode) as st:
            record, report = await st.call(CallScript(duration_ms=3000,
                                                      turns=(Turn(after_heard_ms=300, speech_ms=500),)))
            session = st.session_for(record.call_sid)
            # The model was still generating when the caller spoke: the server cancelled it itself
            # (interrupt_response) and the gateway did not send a redundant response.cancel.
            assert session.responses[0].status == "cancelled" and session.responses[0].reason == "turn_detected"
            assert_correct(report, record, clears=1, truncates=1, cancels=0)
    run(scenario())


@pytest.mark.parametrize("audio_mode", ["passthrough", "pcm16"])
def test_barge_in_after_generation_while_twilio_plays(run, stack, audio_mode, playout):
    """The seed bug (docs/barge-in.md): generation finished long ago, Twilio still plays; clear + truncate anyway."""
    async def scenario():
        async with stack(audio_mode) as st:
            record, report = await st.call(CallScript(duration_ms=4000,
                                                      turns=(Turn(after_heard_ms=2500, speech_ms=500),)))
            session = st.session_for(record.call_sid)
            first = session.responses[0]
            assert first.status == "completed" and first.done_at < record.turns[0].at - 0.5
            assert_correct(report, record, clears=1, truncates=1, cancels=0)
            if playout == "burst":
                assert record.clears[0].bytes_dropped > 8 * 2000  # seconds of audio were still queued
            else:  # seconds were held in the gateway; Twilio only had the lead to drop
                assert record.clears[0].bytes_dropped <= 8 * LEAD_MS
    run(scenario())


def test_speech_after_playback_finished_does_nothing(run, stack):
    async def scenario():
        async with stack(response_ms=(1500,)) as st:
            record, report = await st.call(CallScript(duration_ms=4000,
                                                      turns=(Turn(after_quiet_ms=400, speech_ms=500),)))
            assert_correct(report, record, clears=0, truncates=0, cancels=0)
            assert report.heard_ms >= 1500  # the greeting in full, then the answer to the speech
    run(scenario())


def test_control_api_interrupt_cancels_active_response(run, stack):
    """A non-VAD trigger during generation: the server will not cancel, so the gateway does."""
    async def scenario():
        async with stack(pace=1.5) as st:
            handle = st.start_call(CallScript(duration_ms=3000), "CA" + "c" * 32)
            await handle.wait_started()
            async with aiohttp.ClientSession() as http:
                url = f"{st.base_url}/calls/{'CA' + 'c' * 32}/interrupt"
                headers = {"Authorization": f"Bearer {st.settings.control_token}"}
                # interrupt ~800 ms after the greeting started playing
                await st.openai.wait_for(lambda: any(h.start_at for h in handle.record.heard), 10)
                await asyncio.sleep(0.8)
                async with http.post(url, headers=headers) as resp:
                    assert resp.status == 200 and (await resp.json())["interrupted"] is True
            record = await handle.wait()
            report = st.judge(record)
            session = st.session_for(record.call_sid)
            assert session.responses[0].status == "cancelled"
            assert session.responses[0].reason == "client_cancelled"
            assert report.problems == []
            assert report.clears == 1 and report.cancels == 1 and len(report.truncates) == 1
            assert abs(report.truncates[0].error_ms) <= TOLERANCE_MS
    run(scenario())


def test_two_interrupts_in_quick_succession(run, stack):
    """Python API twice in the same tick, then VAD speech: one clear, one truncate, no error."""
    async def scenario():
        async with stack() as st:
            sid = "CA" + "d" * 32
            handle = st.start_call(CallScript(duration_ms=3500, turns=(Turn(after_heard_ms=1200, speech_ms=400),)), sid)
            await handle.wait_started()
            await st.openai.wait_for(lambda: any(h.start_at for h in handle.record.heard), 10)
            await asyncio.sleep(1.0)
            call = st.gateway.calls_by_sid[sid]
            assert call.interrupt() is True
            assert call.interrupt() is False  # nothing left to do: no second clear/cancel/truncate
            record = await handle.wait()
            report = st.judge(record)
            assert report.problems == []
            assert report.clears == 1 and len(report.truncates) == 1
            assert abs(report.truncates[0].error_ms) <= TOLERANCE_MS
    run(scenario())


def test_two_items_back_to_back(run, stack):
    async def scenario():
        async with stack(response_ms=(1500, 3000), items_per_response=2) as st:
            record, report = await st.call(CallScript(duration_ms=3000,
                                                      turns=(Turn(after_heard_ms=800, speech_ms=400),)))
            assert_correct(report, record, clears=1, truncates=2)
            first, second = report.truncates
            assert 780 <= first.heard_ms <= 1100
            assert second.audio_end_ms == 0 and second.heard_ms == 0
    run(scenario())


def test_late_deltas_of_interrupted_response_are_dropped(run, stack):
    """The simulator sends in-flight deltas after its VAD cancel; none may reach the caller."""
    async def scenario():
        async with stack(inflight_deltas_after_cancel=3) as st:
            record, report = await st.call(CallScript(duration_ms=2500,
                                                      turns=(Turn(after_heard_ms=200, speech_ms=400),)))
            assert_correct(report, record, clears=1, truncates=1)
            session = st.session_for(record.call_sid)
            item = session.assistant_items[0]
            clear_at = record.clears[0].received_at
            late = [h for h in record.heard if h.received_at > clear_at and session.locate(h.payload[:40])
                    and session.locate(h.payload[:40])[0].item_id == item.item_id]
            assert late == []
    run(scenario())


def test_barge_in_when_generation_is_slower_than_playback(run, stack):
    """Twilio's buffer runs dry between deltas: the item is truncated at what was forwarded."""
    async def scenario():
        async with stack(pace=0.8) as st:
            _, report = await st.call(CallScript(duration_ms=2500,
                                                 turns=(Turn(after_heard_ms=700, speech_ms=400),)))
            assert report.problems == []
            assert len(report.truncates) == 1
            assert abs(report.truncates[0].error_ms) <= TOLERANCE_MS
    run(scenario())



def test_large_deltas_over_tls(run, stack):
    """A 7 s delta: in pcm16 a 448 KB event that spans dozens of TLS records and outgrows every
    initial buffer (picows read buffers, aiofastnet's one-record BIOs), and a 75 KB media message
    to Twilio (the 8-byte WebSocket length form of the gateway's own framing). All audio still
    arrives byte for byte, and the barge-in in the middle of it is still exact."""
    async def scenario():
        async with stack("pcm16", response_ms=(8000,), chunk_ms=7000) as st:
            assert st.config.tls
            # The call outlasts the item with room to spare: with the pure-Python twin the first
            # 448 KB delta takes over a second to arrive, and the barge-in must still happen in-call.
            record, report = await st.call(CallScript(duration_ms=11000,
                                                      turns=(Turn(after_heard_ms=7300, speech_ms=400),)))
            assert_correct(report, record, clears=1, truncates=1, cancels=0)
            assert report.heard_ms >= 7000
    run(scenario())
