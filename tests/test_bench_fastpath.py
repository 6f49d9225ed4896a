"""Smoke test of ``python -m bench fastpath --quick`` run in-process: the report is complete and
sane. Speed is not asserted (the figures of a --quick run on a shared machine mean nothing)."""
from __future__ import annotations

import json
import os

import pytest

from bench.__main__ import main

NO_EXTENSIONS = os.environ.get("GATEWAY_NO_EXTENSIONS", "") not in ("", "0")

# The public functions of the _fastpath API (methods for the two classes).
FUNCTIONS = {
    "ulaw_decode", "ulaw_encode", "Resampler.process", "decode_media", "decode_mark", "encode_media",
    "encode_mark", "encode_clear", "encode_append", "decode_audio_delta", "pcmu_to_append",
    "media_to_append", "delta_to_pcmu", "PlayoutLedger.queue", "PlayoutLedger.on_mark",
    "PlayoutLedger.plan_interrupt",
}


def _assert_positive(measurement: dict) -> None:
    assert measurement["number"] >= 1 and measurement["repeat"] == 2
    for clock in ("cpu_ns", "wall_ns"):
        stats = measurement[clock]
        assert len(stats["samples"]) == 2
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
        assert stats["spread"] >= 0


@pytest.mark.skipif(NO_EXTENSIONS, reason="GATEWAY_NO_EXTENSIONS=1: the bench needs the compiled twin")
def test_fastpath_bench_quick(tmp_path, capsys):
    out = tmp_path / "results" / "fastpath.json"  # the directory does not exist yet

    assert main(["fastpath", "--quick", "--repeat", "2", "--out", str(out)]) == 0

    data = json.loads(out.read_text())
    assert data["options"]["quick"] is True and data["options"]["repeat"] == 2
    assert data["environment"]["python"] and data["environment"]["packages"]["orjson"]
    _assert_positive(data["harness_overhead"])
    cases = data["cases"]
    assert {case["function"] for case in cases} == FUNCTIONS
    for case in cases:
        _assert_positive(case["compiled"])
        _assert_positive(case["pure"])
        assert case["speedup_vs_pure"] > 0
        if case["function"].startswith("PlayoutLedger."):
            assert case["baselines"] == {} and case["off_the_shelf"] is None
            assert case["speedup_vs_off_the_shelf"] is None
        else:
            assert case["baselines"] and case["off_the_shelf"] in case["baselines"]
            for measurement in case["baselines"].values():
                _assert_positive(measurement)
            assert case["speedup_vs_off_the_shelf"] > 0
        assert (case["met"] is None) == (not case["targets"])
    # the mark echo is also timed through today's path, the gateway's msgspec decode
    mark = next(case for case in cases if case["name"].startswith("decode_mark (Twilio mark echo)"))
    assert set(mark["baselines"]) == {"orjson+dict", "msgspec events.parse"}
    assert len(data["verdicts"]) == 4
    assert all(isinstance(v["met"], bool) for v in data["verdicts"])

    printed = capsys.readouterr().out
    for case in cases:
        assert case["name"] in printed
    verdict_lines = [line for line in printed.splitlines() if line.startswith(("MET ", "NOT MET "))]
    assert len(verdict_lines) == 4
