"""Calls that survive: the upstream closed, reset, half-open or expired mid-call, its reader stalled;
session rollover before the cap; a Twilio reader that stalls. Over real sockets, judged from what
the simulators recorded.

With a reconnect the call has several upstream sessions (one ``session.update`` each with the
call's event_id): the caller's audio is checked across them — every frame reached exactly one
session, in order, except what was held beyond GATEWAY_MAX_PENDING_AUDIO_MS while no session
could take it (counted).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from gateway.sim.harness import Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig, SimSession
from gateway.sim.twilio_record import CallRecord
from gateway.sim.twilio_script import CallScript, Turn

FAST_PINGS = {"upstream_ping_idle_s": 1.0, "upstream_ping_timeout_s": 1.0}


def stack(**settings: Any) -> Stack:
    openai = settings.pop("openai", None) or OpenAISimConfig(response_ms=(3000,), pace=5.0, first_audio_ms=300)
    mode = settings.pop("audio_mode", "passthrough")
    return Stack(StackConfig(audio_mode=mode, openai=openai, settings={"greeting": "Greet the caller.", **settings}))


def sessions_of(st: Stack, call_sid: str) -> list[SimSession]:
    return [s for s in st.openai.sessions
            if any(e.type == "session.update" and e.event.get("event_id") == f"{call_sid}:session"
                   for e in s.client_events)]


def caller_audio_across(record: CallRecord, sessions: list[SimSession]) -> tuple[int, int]:
    """(bytes sent by the caller, bytes the sessions got). The first session got a prefix of the
    caller's audio, the last one a suffix (byte for byte: nothing altered or reordered); the
    difference is what never reached a session (held beyond the bound, or lost in flight)."""
    sent = bytes(record.caller_audio())
    pieces = [bytes(s.input_audio) for s in sessions]
    assert sent.startswith(pieces[0]), "the first session's audio is not the start of the caller's"
    assert sent.endswith(pieces[-1]), "the last session's audio is not the end of the caller's"
    got = sum(map(len, pieces))
    assert got <= len(sent), "caller audio duplicated across sessions"
    return len(sent), got


async def until(pred: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def replayed(session: SimSession) -> list[dict[str, Any]]:
    return [e.event["item"] for e in session.client_events if e.type == "conversation.item.create"]


def _failure(run, how: str, **settings: Any) -> None:
    async def scenario() -> None:
        async with stack(**settings) as st:
            handle = st.start_call(CallScript(duration_ms=9000, turns=(Turn(after_quiet_ms=400, speech_ms=800),)))
            await until(lambda: st.openai.sessions and st.openai.sessions[0].responses, 10)
            first = st.openai.sessions[0]
            await until(lambda: first.responses[0].status == "completed", 10)  # the greeting was generated
            await asyncio.sleep(0.5)  # ... and is playing at Twilio
            getattr(first, how)()
            record = await handle.wait()
            all_sessions = sessions_of(st, record.call_sid)
            gw = st.gateway
            assert gw is not None
            ended, reconnects = dict(gw.ended), next(iter(gw.calls), None)
        assert str(record.outcome) == "completed" and ended == {"completed": 1}, (record.outcome, ended)
        assert len(all_sessions) == 2, [s.close_reason for s in st.openai.sessions]
        greeting = first.assistant_items[0].transcript
        items = replayed(all_sessions[1])
        assert items and items[0]["role"] == "assistant", items
        assert items[0]["content"][0]["text"] == greeting  # heard in full before the failure
        sent, got = caller_audio_across(record, all_sessions)
        assert sent - got <= 8 * 2000 + 8 * 200, (sent, got)  # ≤ the held bound (+ in flight)
        assert all_sessions[1].responses, "the call went on with the new session"
        del reconnects

    run(scenario())


def test_upstream_closed_mid_call_reconnects_and_replays(run):
    _failure(run, "close")


def test_upstream_reset_mid_call_reconnects(run):
    _failure(run, "reset")


def test_half_open_upstream_found_by_keepalive(run):
    _failure(run, "freeze", **FAST_PINGS)


def test_session_expired_mid_reply_reconnects(run):
    """The server's 60-minute cap arriving while the model speaks (here after 2 s), with rollover
    disabled by a long GATEWAY_MAX_SESSION_S and no expires_at help (the server announces an hour):
    the error is survived."""

    async def scenario() -> None:
        openai = OpenAISimConfig(response_ms=(6000,), pace=1.0, first_audio_ms=200, session_max_s=2.0,
                                 announced_session_s=3600.0)
        async with stack(openai=openai) as st:
            record, _ = await st.call(CallScript(duration_ms=7000))
            sessions = sessions_of(st, record.call_sid)
            gw = st.gateway
            assert gw is not None
            ended = dict(gw.ended)
            metrics = gw.metrics.render()[0].decode()
        assert ended == {"completed": 1} and str(record.outcome) == "completed"
        assert len(sessions) >= 2
        # every session but the last hit the 2 s cap (none announced it): each expiry counted once
        expiries = sum(1 for session in sessions for e in session.errors if e.code == "session_expired")
        assert expiries == len(sessions) - 1
        expired = [line for line in metrics.splitlines() if line.startswith("gateway_upstream_errors_total")]
        assert expired == [f'gateway_upstream_errors_total{{code="session_expired"}} {float(expiries)}'], expired

    run(scenario())


def test_reconnect_budget_spent_ends_the_call_cleanly(run):
    async def scenario() -> None:
        async with stack(upstream_reconnect_attempts=2, upstream_reconnect_budget_s=3.0) as st:
            handle = st.start_call(CallScript(duration_ms=15_000))
            await until(lambda: st.openai.sessions and st.openai.sessions[0].responses, 10)
            st.openai.config.api_key = "sk-rotated"  # every new session is refused (HTTP 401)
            started = time.monotonic()
            st.openai.sessions[0].close(1011, "server error")
            record = await handle.wait()
            took = time.monotonic() - started
            gw = st.gateway
            assert gw is not None
            ended = dict(gw.ended)
        assert ended == {"upstream_error": 1} and took < 5.0, (ended, took)
        assert record.close_code == 1011 and "upstream_failed" in (record.close_reason or "")
        assert len(st.openai.rejected) == 2  # two attempts, both refused

    run(scenario())


def test_rollover_in_silence_loses_and_duplicates_no_caller_audio(run):
    async def scenario() -> None:
        openai = OpenAISimConfig(response_ms=(1000,), pace=5.0, first_audio_ms=200, session_max_s=6.0)
        async with stack(openai=openai) as st:
            record, report = await st.call(CallScript(duration_ms=12_000))
            sessions = sessions_of(st, record.call_sid)
        assert len(sessions) >= 2, "no rollover happened"
        assert all(not s.errors for s in sessions), [e.code for s in sessions for e in s.errors]  # never expired
        sent, got = caller_audio_across(record, sessions)
        assert sent == got  # every frame went to exactly one session
        assert replayed(sessions[1])[0]["role"] == "assistant"
        assert not [p for p in report.problems if "caller audio" not in p and "upstream session" not in p]

    run(scenario())


def test_rollover_waits_for_the_end_of_a_long_answer(run):
    async def scenario() -> None:
        # a 6 s answer starts right before the rollover is due (4.5 s into an 8 s session)
        openai = OpenAISimConfig(response_ms=(500, 6000), pace=5.0, first_audio_ms=200, session_max_s=8.0)
        async with stack(openai=openai) as st:
            script = CallScript(duration_ms=16_000, turns=(Turn(at_ms=3500, speech_ms=600),))
            record, _ = await st.call(script)
            sessions = sessions_of(st, record.call_sid)
        assert len(sessions) >= 2
        answer = sessions[0].assistant_items[-1]
        assert not sessions[0].truncates  # nothing was cut
        # the standby took over: the switch waited for the answer's generation, then (the caller
        # still hearing it) for the last moment before the cap, and beat the cap
        # (16 s of call, 8 s sessions: a second rollover follows, at a quiet moment)
        switched_at = next(e.time for e in sessions[1].client_events if e.type == "conversation.item.create")
        assert switched_at >= answer.created_at + 6.0 / 5.0
        assert [s.errors for s in sessions] == [[]] * len(sessions)  # no session hit the cap
        sent, got = caller_audio_across(record, sessions)
        assert sent == got

    run(scenario())


def test_stalled_upstream_reader_holds_audio_then_reconnects(run):
    async def scenario() -> None:
        openai = OpenAISimConfig(response_ms=(1000,), pace=5.0, first_audio_ms=200, rcvbuf_bytes=4096)
        async with stack(openai=openai, audio_mode="pcm16", upstream_stall_s=2.0) as st:
            handle = st.start_call(CallScript(duration_ms=30_000))
            await until(lambda: st.openai.sessions and st.openai.sessions[0].responses, 10)
            st.openai.sessions[0].stop_reading()
            await until(lambda: len(sessions_of(st, handle.record.call_sid)) >= 2, 25)
            handle.hangup()
            record = await handle.wait()
            gw = st.gateway
            assert gw is not None
            errors = gw.metrics.render()[0].decode()
        assert 'gateway_upstream_errors_total{code="stalled"} 1.0' in errors
        assert str(record.outcome) == "completed"

    run(scenario(), timeout=60)


def test_stalled_twilio_reader_ends_the_call_with_bounded_memory(run):
    async def scenario() -> None:
        # 10 minutes of audio streamed 50x faster than real time, after 1.5 s of "thinking"
        openai = OpenAISimConfig(response_ms=(600_000,), pace=50.0, first_audio_ms=1500)
        async with stack(openai=openai, twilio_stall_ms=2000) as st:
            assert st.twilio is not None
            st.twilio.config.rcvbuf_bytes = 4096
            handle = st.start_call(CallScript(duration_ms=30_000))
            await until(lambda: handle.record.stream_sid, 10)
            handle.stop_reading()
            # The gateway drops the socket: a CLOSE frame queued behind unread audio would keep it
            # open (fd, buffers) for as long as the peer does not read (it was ~30 s here).
            record = await asyncio.wait_for(handle.wait(), 10)
            gw = st.gateway
            assert gw is not None
            ended = dict(gw.ended)
        assert ended == {"twilio_stalled": 1}, ended
        assert record.stream_sid  # the stream was up; the stalled side cannot read our close frame

    run(scenario(), timeout=60)


def test_replay_events_match_the_official_schema(run):
    """What a reconnect sends (session, replayed items, the line) validates against the schema."""

    async def scenario() -> None:
        async with stack(reconnect_line="Tell the caller the line dropped for a second.") as st:
            handle = st.start_call(CallScript(duration_ms=8000, turns=(Turn(after_quiet_ms=300, speech_ms=800),)))
            await until(lambda: st.openai.sessions and len(st.openai.sessions[0].responses) >= 2, 15)
            st.openai.sessions[0].close(1011, "server error")
            record = await handle.wait()
            sessions = sessions_of(st, record.call_sid)
        second = sessions[1]
        assert second.violations == []  # every client event passed the official schema
        assert any((r.metadata or {}).get("gateway") == "reconnect" for r in second.responses)
        kinds = [orjson.loads(orjson.dumps(i))["type"] for i in replayed(second)]
        assert kinds and set(kinds) <= {"message", "function_call", "function_call_output"}

    run(scenario())
