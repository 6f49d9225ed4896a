"""Smoke run of ``python -m bench reconnect``: one call per failure kind (close, reset, half-open,
session expired), each reconnected exactly once with the call completing, every figure present and
consistent, the report and plot written. Never speed (the machine may be shared)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.reconnect import KINDS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_reconnect_smoke(tmp_path: Path):
    out = tmp_path / "reconnect.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "reconnect", "--calls", str(len(KINDS)), "--concurrency",
                           str(len(KINDS)), "--duration-s", "8", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=110, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 calls, 4 reconnects, no problems" in proc.stdout
    result = json.loads(out.read_text())
    assert result["problems"] == []
    for kind in KINDS:
        k = result["kinds"][kind]
        assert k["calls"] == 1 and k["reconnect_ms"]["n"] == 1 and k["detection_ms"]["n"] == 1
        assert 0 < k["reconnect_ms"]["p50"] < 5000
    # the keepalive finds a half-open session only after its idle + timeout (1 + 1 s here)
    assert result["kinds"]["freeze"]["detection_ms"]["p50"] >= 1000
    assert all(s["outcome"] == "completed" and s["sessions"] == 2 for s in result["samples"])
    assert out.with_suffix(".png").stat().st_size > 0
