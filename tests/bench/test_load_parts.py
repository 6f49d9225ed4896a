"""Parts of ``python -m bench load`` without a run: the barge-in mix, the message and system-call
figures, their sources (/proc, perf's output, the simulators' counts over stdin/stdout), the
truncation phases and the sdk baseline's set-up checks."""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench import procstat, syscalls
from bench.analysis import by_phase, leading_frames_lost, turn_phase
from bench.baselines import sdk_setup
from bench.children import Child, child_env
from bench.loadfigures import Edge, Window, message_figures, syscall_figures
from bench.loadplan import PHASE_QUIET, PHASE_REBARGE, PHASES, REBARGE_HEARD_MS, conversation
from bench.loadreport import correctness_failures
from bench.loadsim import build_script
from bench.procstat import IoSample
from bench.settings import _baselines


# ------------------------------------------------------------------------------- the barge-in mix
def test_every_barge_in_is_followed_by_a_rebarge_when_the_share_is_one():
    turns = conversation(random.Random(3), barge_in_share=1.0, turns=30, rebarge_share=1.0)
    assert turns[0][3] in ("generating", "playing")
    for kind, heard, _speech, phase in turns[1:]:
        assert (kind, phase) == ("heard", PHASE_REBARGE)
        assert REBARGE_HEARD_MS[0] <= heard <= REBARGE_HEARD_MS[1]


def test_no_rebarge_without_its_share_and_none_after_a_quiet_turn():
    turns = conversation(random.Random(5), barge_in_share=0.5, turns=200, rebarge_share=0.0)
    assert PHASE_REBARGE not in {t[3] for t in turns}
    turns = conversation(random.Random(5), barge_in_share=0.0, turns=50, rebarge_share=1.0)
    assert {t[3] for t in turns} == {PHASE_QUIET}


def test_the_default_mix_has_every_phase_in_proportion():
    counts: Counter[str] = Counter()
    after_barge_in = 0
    for seed in range(200):
        turns = conversation(random.Random(seed), barge_in_share=0.5)
        counts.update(t[3] for t in turns)
        after_barge_in += sum(1 for a in turns[:-1] if a[0] == "heard")
    assert set(counts) == set(PHASES)
    assert counts[PHASE_REBARGE] / after_barge_in == pytest.approx(0.35, abs=0.03)
    assert counts["generating"] == pytest.approx(counts["playing"], rel=0.1)


def test_the_script_takes_the_phase_as_a_label_only():
    script = build_script({"duration_ms": 5000, "turns": [["heard", 500, 700, PHASE_REBARGE],
                                                          ["quiet", 300, 800, PHASE_QUIET], ["heard", 90, 600]]})
    assert [(t.after_heard_ms, t.after_quiet_ms, t.speech_ms) for t in script.turns] == [
        (500, None, 700), (None, 300, 800), (90, None, 600)]


# ------------------------------------------------------------------------------- truncation phases
def test_turn_phase_and_by_phase():
    call = {"turns": [[0, 1.0, 0.0, 0.0], [2, 3.0, 0.0, 0.0]], "turn_phases": ["playing", "quiet", "rebarge"]}
    assert [turn_phase(call, k) for k in (-1, 0, 1, 2)] == ["other", "playing", "rebarge", "other"]
    assert turn_phase({"turns": [[0, 1.0, 0.0, 0.0]]}, 0) == "other"  # a plan without labels
    out = by_phase([-30.0, 5.0, 25.0, -4.0], ["rebarge", "rebarge", "playing", "other"], signed=True)
    assert set(out) == {*PHASES, "other"}
    assert out["rebarge"]["n"] == 2 and out["rebarge"]["max"] == 30.0
    assert out["rebarge"]["signed_mean"] == pytest.approx(-12.5)
    assert (out["rebarge"]["short_over_20ms"], out["playing"]["past_over_20ms"]) == (1, 1)
    assert out["generating"]["n"] == 0 and out["generating"]["p99"] is None


def test_caller_frames_dropped_before_the_upstream_opened_are_named_as_such():
    """The judge recognises "the first j caller frames never arrived, the rest did in order" from
    the running CRCs alone (a bridge that drops audio until its upstream session is open)."""
    import zlib

    rng = random.Random(9)
    frames = [bytes(rng.getrandbits(8) for _ in range(160)) for _ in range(120)]
    running, crc = [], 0
    for frame in frames:
        crc = zlib.crc32(frame, crc)
        running.append(crc)

    def crc_of(part: list[bytes]) -> int:
        return zlib.crc32(b"".join(part))

    assert leading_frames_lost(running, 100, crc_of(frames[2:102])) == 2
    assert leading_frames_lost(running, 117, crc_of(frames[3:])) == 3
    assert leading_frames_lost(running, 100, crc_of(frames[2:50] + frames[51:103])) is None  # a gap inside
    assert leading_frames_lost(running, 100, crc_of(frames[:100])) is None  # nothing lost at the start


# ------------------------------------------------------------------------------- messages and syscalls
def _edge(counts: dict, io: IoSample | None, t: float) -> Edge:
    return Edge(None, (0.0, 0.0), 0.0, t, (0.0, 0.0, 0), (0.0, 0.0, 0), io, counts)


def _counts(k: int) -> dict:
    return {"twilio": {"media": 50 * k, "mark": 10 * k, "other": 0, "got_media": 25 * k, "got_mark": 26 * k,
                       "got_clear": k, "got_other": 0},
            "openai": {"append": 50 * k, "client_other": 2 * k, "delta": 25 * k, "server_other": 6 * k}}


def test_message_figures_per_call_second_by_leg_and_kind():
    """10 calls for 2 s: counts grew by 20× the per call-second figures."""
    w = Window(None, None, _edge(_counts(5), None, 100.0), _edge(_counts(25), None, 102.0), None)
    m = message_figures(10, w)
    assert m["twilio_to_system"] == {"media": 50.0, "mark": 10.0, "other": 0.0, "total": 60.0}
    assert m["system_to_twilio"] == {"media": 25.0, "mark": 26.0, "clear": 1.0, "other": 0.0, "total": 52.0}
    assert m["system_to_openai"] == {"append": 50.0, "other": 2.0, "total": 52.0}
    assert m["openai_to_system"] == {"delta": 25.0, "other": 6.0, "total": 31.0}
    assert (m["in"], m["out"]) == (91.0, 104.0)
    unread = message_figures(10, Window(None, None, _edge(None, None, 0.0), _edge(None, None, 2.0), None))
    assert unread["in"] is None and unread["openai_to_system"]["delta"] is None


def test_syscall_figures_from_proc_and_perf():
    a = IoSample(syscr=1000, syscw=100, rchar=2048, wchar=1024, voluntary=50, involuntary=5, processes=2)
    b = IoSample(syscr=3000, syscw=700, rchar=2048 + 20 * 1024, wchar=1024 + 20 * 512, voluntary=450,
                 involuntary=25, processes=2)
    w = Window(None, None, _edge(_counts(5), a, 100.0), _edge(_counts(25), b, 102.0), None,
               {"available": True, "all": 8000, "by_name": {"read": 2000, "sendto": 4000, "brk": 0}})
    s = syscall_figures(10, w, message_figures(10, w))
    assert (s["read_family"], s["write_family"], s["read_write"]) == (100.0, 30.0, 130.0)
    assert (s["read_kib"], s["written_kib"]) == (1.0, 0.5)
    assert (s["context_switches_voluntary"], s["context_switches_involuntary"]) == (20.0, 1.0)
    assert s["all"] == 400.0 and s["all_per_message"] == pytest.approx(400 / 195)
    assert list(s["by_name"].items()) == [("sendto", 200.0), ("read", 100.0)]  # by count, zeros dropped
    assert s["perf"] == {"available": True}
    proc_only = syscall_figures(10, Window(None, None, w.start, w.end, None), message_figures(10, w))
    assert proc_only["all"] is None and proc_only["by_name"] == {} and proc_only["perf"] is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_io_sample_counts_this_process_reads():
    before = procstat.io_sample([os.getpid()])
    if before is None:
        pytest.skip("/proc/<pid>/io is not readable here")
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        for _ in range(200):
            os.read(fd, 16)
    finally:
        os.close(fd)
    after = procstat.io_sample([os.getpid()])
    assert after is not None
    d = after.minus(before)
    assert d.syscr >= 200 and d.rchar >= 200 * 16 and d.processes == 1
    assert procstat.io_sample([2**22 + 12345]) is None  # no such process


def test_perf_stat_output_is_parsed():
    text = ("# started on Mon Dec  7 07:21:35 2026\n\n"
            "28153,,raw_syscalls:sys_enter,963357064,100.00,,\n"
            "8947,,syscalls:sys_enter_read,963357064,100.00,,\n"
            "<not counted>,,syscalls:sys_enter_sendto,0,0.00,,\n"
            "0,,syscalls:sys_enter_recvmsg,963357064,100.00,,\n")
    assert syscalls.parse(text) == {"all": 28153, "by_name": {"read": 8947, "recvmsg": 0}}
    assert syscalls.parse("")["all"] is None


# ------------------------------------------------------------------------------- the simulators' replies
def test_a_child_keeps_each_kind_of_message_for_its_own_wait(tmp_path: Path):
    """The bench waits for a generator's ``done`` while it asks for ``counts``: neither wait may take
    (and drop) the other's message, whichever arrives first."""
    script = ("import sys\n"
              "print('{\"done\": true}', flush=True)\n"
              "print('{\"status\": {\"up\": 3}}', flush=True)\n"
              "sys.stdin.readline()\n"
              "print('{\"counts\": {\"media\": 7}}', flush=True)\n"
              "sys.stdin.readline()\n")

    async def run() -> None:
        child = await Child.spawn("fake", [sys.executable, "-c", script], child_env({}), tmp_path)
        try:
            done = asyncio.ensure_future(child.expect("done", 10))
            child.send("counts")
            assert (await child.expect("counts", 10))["counts"] == {"media": 7}
            assert (await done)["done"] is True
            assert child.status == {"up": 3}
            child.send("bye")
        finally:
            await child.stop()

    asyncio.run(run())


# ------------------------------------------------------------------------------- baselines
def test_baseline_names():
    assert _baselines("sdk,naive,sdk") == ["sdk", "naive"]
    assert _baselines("none") == []
    with pytest.raises(argparse.ArgumentTypeError, match="unknown baseline 'node'"):
        _baselines("node")


def test_sdk_baseline_needs_node(monkeypatch):
    monkeypatch.setattr(sdk_setup.shutil, "which", lambda _name: None)
    assert "node is not installed" in (sdk_setup.unavailable() or "")


def test_sdk_baseline_pins_its_packages():
    """package.json pins exact versions; the lock holds the same ones."""
    import json

    deps = json.loads((sdk_setup.SDK_DIR / "package.json").read_text())["dependencies"]
    assert set(deps) >= {"@openai/agents", "@openai/agents-extensions", "ws"}
    assert all(v[0].isdigit() for v in deps.values()), deps
    locked = sdk_setup.versions()
    assert all(locked[name] == version for name, version in deps.items() if name in locked)
    assert "@openai/agents-realtime" in locked


def test_a_baseline_that_truncates_far_off_fails_the_checks():
    run = {"calls_judged": 10, "correctness": {"calls_with_problems": 0, "problem_kinds": {},
                                               "truncates_off_over_20ms": 7, "calls_with_truncate_off_over_20ms": 5},
           "truncate_error_ms": {"p99": 78.0, "n": 12}}
    assert correctness_failures(run) == ("truncation error p99 78 ms > 20 ms (7 of 12 truncations off by more, "
                                         "on 5/10 calls)")
    run["truncate_error_ms"]["p99"] = 12.0
    assert correctness_failures(run) is None
    run["correctness"].update(calls_with_problems=2, problem_kinds={"late audio of an interrupted item": 2})
    assert correctness_failures(run) == "2/10 calls with problems (late audio of an interrupted item ×2)"


# ------------------------------------------------------------------------------- medians of runs
def test_medians_of_runs_and_ratios_within_each_run(tmp_path: Path):
    import copy
    import json

    from bench.medians import load_runs, medians, render

    base = json.loads((Path(__file__).with_name("data") / "load_runs.json").read_text())
    paths = []
    for i, cpu in enumerate((1.0, 3.0, 2.0)):
        data = copy.deepcopy(base)
        data["runs"]["gateway"]["cpu"]["per_call_second_ms"] = cpu
        data["ratios"]["sdk"]["cpu_per_call_second"] = 10.0 - cpu
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "load.json").write_text(json.dumps(data))
        paths.append(tmp_path / f"r{i}")
    del base["runs"]["naive"]  # a run without one baseline still counts for the others
    (tmp_path / "r3.json").write_text(json.dumps(base))
    result = medians(load_runs([*paths, tmp_path / "r3.json"]))
    cpu = result["figures"]["gateway"]["CPU per call-second (ms)"]
    recorded = base["runs"]["gateway"]["cpu"]["per_call_second_ms"]  # 5.2 ms: the 4th run's
    assert (cpu["median"], cpu["min"], cpu["max"], cpu["n"]) == (2.5, 1.0, recorded, 4)
    assert result["figures"]["naive"]["CPU per call-second (ms)"]["n"] == 3
    assert result["ratios"]["sdk"]["cpu_per_call_second"]["median"] == pytest.approx(7.5)  # 9, 7, 8 and 1.65
    text = render(result)
    assert text.startswith("medians of 4 runs") and "sdk over the gateway, within each run" in text


def test_a_count_target_of_zero_reports_the_excess():
    """Underruns and lost audio must be zero: a miss says by how many (no percentage of zero)."""
    from bench.loadreport import _target

    t = _target("underruns", 3, 0, False, "")
    assert (t["met"], t["miss"]) == (False, "over by 3")
    assert _target("underruns", 0, 0, False, "")["met"] is True


def test_a_baseline_that_carried_less_of_the_load_is_compared_per_message():
    """At 500 calls on 2 cores the baselines lost most calls: their CPU per call-second was for a
    fraction of the gateway's work. The ratios say how much of it they handled and compare per
    message; the report says the per call-second ratio is not the same work."""
    import copy
    import json

    from bench.loadreport import ratio_lines, ratios

    runs = json.loads((Path(__file__).with_name("data") / "load_runs.json").read_text())["runs"]
    runs = {"gateway": runs["gateway"], "sdk": copy.deepcopy(runs["sdk"])}
    m = runs["sdk"]["messages_per_call_second"]
    assert ratios(runs)["sdk"]["messages_handled"] == pytest.approx(1.0, abs=0.02)  # the whole load
    m["twilio_to_system"]["media"] *= 0.4
    m["openai_to_system"]["delta"] *= 0.4
    x = ratios(runs)["sdk"]
    assert x["messages_handled"] == pytest.approx(0.4, rel=0.02)
    assert x["cpu_per_message"] == pytest.approx(x["cpu_per_call_second"] / x["messages_handled"])
    [line] = ratio_lines({"sdk": x}, runs)
    assert "! not the same work: it handled only 40% of the gateway's load" in line
