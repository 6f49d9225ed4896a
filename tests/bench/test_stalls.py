"""Smoke run of ``python -m bench stalls`` with one call per scenario: a stalled Twilio reader ends
its call as ``twilio_stalled`` and a stalled upstream reader is replaced, with every buffer the
gateway holds within the bound the README states (the bench exits 1 otherwise)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_stalls_smoke(tmp_path: Path):
    out = tmp_path / "stalls.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "stalls", "--calls", "1", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=140, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())["scenarios"]
    assert result["twilio"]["ended"] == {"twilio_stalled": 1}
    assert result["twilio"]["peak_bytes"]["twilio_write"] > 0  # the stall was really reached
    assert result["upstream"]["peak_bytes"]["caller_held"] > 0  # caller audio was really held
    assert all(r["problems"] == [] and r["calls_sampled"] == 1 for r in result.values())
