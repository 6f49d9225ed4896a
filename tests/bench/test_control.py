"""Smoke run of ``python -m bench control`` (4 calls, 6 rounds) through the real ``gateway serve``,
simulators and ``redis-server``: every request answered 200 with the route where the call is,
every expected route seen, the gateway's histogram counting exactly the measured requests, the
report written, and nothing left running. Never speed (the machine may be shared). Without
redis-server the bench skips its redis configuration, and so does this test, with the reason."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_load_smoke import REPO, TAG, _tagged_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bench reads /proc")
CALLS, ROUNDS = 4, 6  # 12 requests asked through the call's own pod: local and pod both show up (p > 0.999)


def check(config: dict[str, Any], routes: set[str]) -> None:
    assert config["requests_sent"] == config["requests_planned"] == CALLS * ROUNDS
    assert config["failed"] == 0, config["failures"]
    assert set(config["routes"]) == routes and config["missing_routes"] == []
    assert sum(r["n"] for r in config["routes"].values()) == CALLS * ROUNDS
    for r in config["routes"].values():
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] and len(r["samples_ms"]) == r["n"]
    gateway = config["gateway_histogram_ms"]
    assert {k: v["n"] for k, v in gateway.items()} == {k: v["n"] for k, v in config["routes"].items()}


@pytest.mark.timeout(90)
def test_control_smoke(tmp_path: Path):
    out = tmp_path / "control.json"
    tag = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "control", "--calls", str(CALLS), "--rounds", str(ROUNDS), "--out", str(out)],
        cwd=REPO, env={**os.environ, TAG: tag}, capture_output=True, text=True, timeout=80, check=False)
    assert _tagged_processes(tag) == [], "the bench left processes behind"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert data["bench"] == "control" and data["ok"] and data["environment"]["python"]
    assert data["options"]["calls"] == CALLS and data["options"]["rounds"] == ROUNDS
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "routing latency" in proc.stdout and "[embedded] round 6/6" in proc.stdout
    check(data["configs"]["embedded"], {"local", "pod"})
    redis = data["configs"]["redis"]
    if shutil.which("redis-server") is None:
        assert "[redis] skipped" in proc.stdout
        pytest.skip(f"the redis configuration: {redis['skipped']}")
    check(redis, {"local", "pod", "cluster"})
