"""``python -m bench soak`` without processes: the plan keeps the slots busy and ends with the soak,
the verdict tells a leak from a heap that settles and from noise, and the judge tells caller audio
lost to a late upstream session (by design) from unexplained loss."""
from __future__ import annotations

import itertools
import math
import random

from bench.soak import FLAT, SoakSettings, analyse, build_plan, judge

ST = SoakSettings(calls=50, minutes=20.0, warmup_min=2.0, ramp_rate=25.0)


def test_plan_keeps_every_slot_busy_and_ends_with_the_soak():
    plan = build_plan(ST)
    assert len({c["sid"] for c in plan}) == len(plan)
    assert {c["slot"] for c in plan} == set(range(ST.calls))
    for call in plan:
        assert call["start"] + call["duration_ms"] / 1000 <= ST.end_s
        assert call["duration_ms"] <= ST.max_call_s * 1000
    by_slot: dict[int, list[dict]] = {}
    for call in plan:
        by_slot.setdefault(call["slot"], []).append(call)
    for calls in by_slot.values():  # back to back: the next call starts after the previous one ends
        for a, b in itertools.pairwise(calls):
            assert 0.5 <= b["start"] - (a["start"] + a["duration_ms"] / 1000) <= 2.1


def samples(rss_kib, fds=lambda t: 121.0, calls=50, seed=3):
    """A soak's samples every 10 s: RSS in KiB as a function of minutes, plus noise and call wobble."""
    rng = random.Random(seed)
    rows = []
    for k in range(int(ST.end_s / 10) + 1):
        t = k * 10.0
        up = calls + rng.randint(-3, 3)
        rows.append({"t": t, "calls_up": up, "gateway_active_calls": up, "ended": int(t * 2),
                     "rss_workers": int((rss_kib(t / 60) + 90 * up + rng.gauss(0, 40)) * 1024),
                     "rss_supervisor": 60 * 2**20, "fds_workers": int(fds(t / 60) + 2 * up), "machine_busy": 0.5})
    return rows


IDLE = {"rss_workers": 64 * 2**20, "fds_workers": 21, "workers": 1}


def test_a_steady_leak_is_growing():
    result = analyse(ST, samples(lambda m: 70_000 + 300 * m), IDLE)
    assert result["verdicts"]["rss_workers_kib"].startswith("growing: 300"), result["verdicts"]
    assert result["verdicts"]["fds_workers"].startswith(FLAT)


def test_a_heap_that_settles_is_flat_and_says_so():
    result = analyse(ST, samples(lambda m: 70_000 + 20_000 * (1 - math.exp(-m / 2.5))), IDLE)
    verdict = result["verdicts"]["rss_workers_kib"]
    assert verdict.startswith(f"{FLAT} (settled"), verdict


def test_noise_is_flat_and_leaking_fds_are_growing():
    result = analyse(ST, samples(lambda m: 70_000, fds=lambda m: 121 + 3 * m), IDLE)
    assert result["verdicts"]["rss_workers_kib"].startswith(FLAT + ":"), result["verdicts"]
    assert result["verdicts"]["fds_workers"].startswith("growing: 3"), result["verdicts"]


def test_judge_tells_a_late_upstream_from_lost_audio():
    plan = [{"sid": f"CA{i}", "duration_ms": 30_000} for i in range(3)]
    calls = [{"sid": f"CA{i}", "outcome": "completed", "closed_by": "twilio", "close_code": 1000,
              "close_reason": "", "violations": [], "sim_error": None, "stream_started_at": 10.0,
              "ended_at": 40.0, "stream_started_mono": 100.0, "caller_bytes_sent": 240_000, "clears": 2, "turns": 5}
             for i in range(3)]
    sessions = [{"sid": "CA0", "append_bytes": 240_000, "connected_mono": 100.2},  # all there
                {"sid": "CA1", "append_bytes": 236_000, "connected_mono": 102.5},  # 0.5 s beyond the 2 s buffered
                {"sid": "CA2", "append_bytes": 236_000, "connected_mono": 100.2}]  # lost, unexplained
    for s in sessions:
        s.update(errors=[], violations=[], truncates=2, truncates_rejected=0)
    verdict = judge(ST, plan, calls, sessions)
    assert verdict["with_problems"] == 1 and list(verdict["examples"]) == ["CA2"]
    assert verdict["caller_audio_beyond_pending_limit"] == 1 and list(verdict["late_upstream_examples"]) == ["CA1"]
    assert verdict["upstream_opened_after_stream_start_s"]["over_pending_limit"] == 1
