"""Smoke test of ``python -m bench load``: a short real run (20 calls, ~4 s of steady state, one
worker, ``--profile``) through the real ``gateway serve`` and simulator processes. Asserts
correctness outputs only (no audio lost or duplicated, no errors or violations, report files
written, a profile section: py-spy's breakdown, or why it was unavailable), that load.json has
the recorded set of keys (``data/load_json_keys.txt``) and that no process is left behind; never
speed (the machine may be shared)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TAG = "BENCH_SMOKE_TAG"
# Every key path of the load.json of this smoke run, as the bench wrote it when the file was
# recorded: a key added, renamed or dropped fails the test (update the file on purpose).
LOAD_JSON_KEYS = Path(__file__).with_name("data") / "load_json_keys.txt"
# Objects keyed by data (problem kinds, outcomes, error codes, metric label values): their keys
# vary from run to run, so only their own path counts.
DATA_KEYED = (
    "correctness.problem_kinds", "correctness.outcomes", "correctness.upstream_errors",
    "gateway_metrics.upstream_errors", "gateway_metrics.protocol_errors", "gateway_metrics.rejected_calls",
    "gateway_metrics.calls_ended", "gateway_metrics.interrupts", "syscalls_per_call_second.by_name",
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bench reads /proc")


def _tagged_processes(tag: str) -> list[int]:
    """Processes whose environment carries ``TAG=tag`` (every process the bench started inherits it)."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def key_paths(obj: Any, prefix: str = "") -> set[str]:
    """Dotted paths of every object key (``[]`` for list items, the union over them)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            if not path.endswith(DATA_KEYED):
                out |= key_paths(value, path)
    elif isinstance(obj, list):
        for item in obj:
            out |= key_paths(item, prefix + "[]")
    return out


def expected_key_paths(data: dict) -> set[str]:
    """The recorded key paths, adjusted for what this machine could not provide."""
    expected = set(LOAD_JSON_KEYS.read_text(encoding="utf-8").split())
    if data["environment"]["git"] is None:  # not run from a git checkout
        expected -= {"environment.git.commit", "environment.git.dirty"}
    if not data["runs"]["gateway"]["profile"]["available"]:  # py-spy could not run: only the reason
        expected = {k for k in expected if not k.startswith("runs.gateway.profile.")}
        expected |= {"runs.gateway.profile.available", "runs.gateway.profile.reason"}
    return expected


def test_key_paths():
    data = {"a": 1, "runs": {"g": {"correctness": {"outcomes": {"completed": 20}}}}, "l": [{"x": 1}, {"y": [{}]}]}
    assert key_paths(data) == {"a", "runs", "runs.g", "runs.g.correctness", "runs.g.correctness.outcomes",
                               "l", "l[].x", "l[].y"}


@pytest.mark.timeout(120)
def test_load_smoke(tmp_path):
    out = tmp_path / "load"
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG: tag}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "load", "--calls", "20", "--duration", "4", "--workers", "1",
         "--profile", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110, check=False)
    elapsed = time.monotonic() - started
    assert _tagged_processes(tag) == [], "the bench left processes behind"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert elapsed < 60, f"smoke run took {elapsed:.0f} s"

    data = json.loads((out / "load.json").read_text())
    actual, expected = key_paths(data), expected_key_paths(data)
    assert actual == expected, (f"load.json keys changed: new {sorted(actual - expected)}, "
                                f"gone {sorted(expected - actual)}")
    for png in ("load_latency.png", "load_truncate_error.png", "load_timeline.png"):
        assert (out / png).stat().st_size > 1000
    assert data["environment"]["python"] and data["options"]["calls"] == 20
    assert 0 < data["runs"]["gateway"]["cpu"]["kernel_share"] < 1
    assert data["runs"]["gateway"]["cpu"]["vs_simulators"] > 0
    assert "relative to the simulators' CPU" in proc.stdout
    run = data["runs"]["gateway"]
    assert run["calls"] == 20 and run["calls_judged"] == 20
    c = run["correctness"]
    assert c["calls_with_problems"] == 0, c["examples"]
    assert c["outcomes"] == {"completed": 20}
    assert c["inbound_lost_calls_over_tolerance"] == 0
    assert c["outbound_gaps"] == c["outbound_duplicates"] == c["outbound_unmatched"] == 0
    assert c["late_audio_played_ms"] == 0 and c["underruns"] == 0
    assert c["twilio_violations"] == c["upstream_violations"] == 0 and c["upstream_errors"] == {}
    assert c["upstream_rejected_upgrades"] == 0
    metrics = run["gateway_metrics"]
    assert metrics["upstream_errors"] == {} and metrics["protocol_errors"] == {}
    # the figures exist (their values are not judged here)
    assert run["cpu"]["per_call_second_ms"] > 0
    assert run["latency_ms"]["inbound"]["n"] > 0 and run["latency_ms"]["outbound"]["n"] > 0
    assert run["conversation"]["turns"] > 0
    assert "CPU per call-second" in proc.stdout
    # --profile: py-spy's breakdown of the window, or the reason it could not run (no ptrace, ...)
    prof = run["profile"]
    if prof["available"]:
        assert prof["samples"] > 0 and len(prof["workers"]) == 1
        assert 0 <= prof["idle_share"] <= 1
        assert abs(sum(c["share_of_busy"] for c in prof["categories"]) - 1) < 1e-9 or prof["busy_samples"] == 0
        assert (out / f"profile-worker-{prof['workers'][0]['pid']}.txt").stat().st_size > 0
        assert "profile of the gateway worker" in proc.stdout
    else:
        assert f"profile: unavailable ({prof['reason']})" in proc.stdout


@pytest.mark.timeout(120)
def test_sweep_smoke(tmp_path):
    """One tiny step of `python -m bench sweep`: verdict, table, JSON, plot."""
    out = tmp_path / "sweep"
    tag = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "sweep", "--start", "10", "--step", "10", "--max", "10",
         "--duration", "3", "--out", str(out)],
        cwd=REPO, env={**os.environ, TAG: tag}, capture_output=True, text=True, timeout=110, check=False)
    assert _tagged_processes(tag) == [], "the sweep left processes behind"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads((out / "sweep.json").read_text())
    [step] = data["steps"]
    assert step["calls"] == 10 and step["passed"], step["reasons"]
    assert data["highest_passing_calls"] == 10
    assert step["cpu_per_call_second_ms"] > 0 and step["cpu_vs_simulators"] > 0
    assert (out / "sweep.png").stat().st_size > 1000
    assert "highest passing: 10 concurrent calls" in proc.stdout


@pytest.mark.timeout(300)
def test_sdk_baseline_smoke(tmp_path):
    """`--baseline sdk`: the OpenAI Agents SDK bridge (bench/baselines/sdk, installed with npm ci on
    first use) runs under the same load as the gateway, its Node process is measured, the
    simulators judge it and the report says whether it passed their checks. Its correctness is
    not asserted: finding its faults is the point of running it."""
    from bench.baselines import sdk_setup

    missing = sdk_setup.unavailable()
    if missing is not None:
        pytest.skip(f"sdk baseline: {missing}")
    out = tmp_path / "load"
    tag = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "load", "--calls", "10", "--duration", "4", "--baseline", "sdk",
         "--no-plots", "--out", str(out)],
        cwd=REPO, env={**os.environ, TAG: tag}, capture_output=True, text=True, timeout=280, check=False)
    assert _tagged_processes(tag) == [], "the bench left processes behind"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads((out / "load.json").read_text())
    sdk = data["runs"]["sdk"]
    assert sdk["system"].startswith("bench/baselines/sdk/server.mjs (Node v")
    assert sdk["calls_judged"] == 10 and sdk["correctness"]["outcomes"] == {"completed": 10}
    assert sdk["cpu"]["per_call_second_ms"] > 0 and sdk["memory"]["peak_rss_mib"] > 0
    m = sdk["messages_per_call_second"]
    assert m["twilio_to_system"]["media"] == pytest.approx(50, rel=0.1)  # a caller frame every 20 ms
    assert m["system_to_openai"]["append"] == pytest.approx(50, rel=0.1)  # ... each forwarded as one append
    assert m["openai_to_system"]["delta"] > 0 and m["system_to_twilio"]["media"] > 0
    assert sdk["syscalls_per_call_second"]["read_write"] > 0
    assert sdk["conversation"]["turns"] > 0 and sdk["truncate_error_ms"]["n"] >= 0
    assert data["ratios"]["sdk"]["cpu_per_call_second"] > 0
    assert any(t["name"] == "CPU per call vs SDK baseline (×less)" for t in data["targets"])
    assert "vs sdk: sdk uses" in proc.stdout
    assert "sdk FAILS the correctness checks" in proc.stdout or "sdk passes the correctness checks" in proc.stdout
