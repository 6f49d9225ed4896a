"""``python -m bench load``'s report and figures without running anything.

``data/load_runs.json`` holds the runs of a real ``load --calls 20 --duration 5 --baseline
burst,pure,naive,sdk --profile --syscalls perf`` (its load.json without the distributions and samples) and
``data/load_report.txt`` what that bench printed for them: the table, its warnings, the ratios,
the targets and the profile must come out the same, character for character. A deliberate change
of the report updates both files from a new run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.loadfigures import Edge, Window, cpu_figures, mark_fell_behind, memory_figures
from bench.loadreport import evaluate_targets, figures_table, ratios, render_report
from bench.procstat import TreeSample
from bench.settings import Settings

DATA = Path(__file__).with_name("data")


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((DATA / "load_runs.json").read_text(encoding="utf-8"))


def test_targets_and_ratios_as_recorded(recorded):
    st = Settings(**recorded["settings"])
    assert evaluate_targets(st, recorded["runs"]) == recorded["targets"]
    assert ratios(recorded["runs"]) == recorded["ratios"]


def test_report_text_as_recorded(recorded):
    runs = recorded["runs"]
    text = render_report(runs, evaluate_targets(Settings(**recorded["settings"]), runs), ratios(runs))
    expected = (DATA / "load_report.txt").read_text(encoding="utf-8").removesuffix("\n")
    assert text.splitlines() == expected.splitlines()
    assert text == expected


def test_report_of_a_run_with_missing_figures():
    """A figure that could not be measured (None, or absent as in the naive bridge's gateway
    metrics) is a ``-`` cell, never an error."""
    run = json.loads((DATA / "load_runs.json").read_text(encoding="utf-8"))["runs"]["naive"]
    run["cpu"]["per_call_second_ms"] = None
    run["latency_ms"]["inbound"]["p99"] = None
    text = figures_table({"naive": run})
    rows = dict(re.split(r"\s{2,}", line.strip()) for line in text.splitlines()[2:])
    assert rows["CPU per call-second (ms)"] == "-"
    assert rows["gateway interrupt->clear p50/p99 (ms)"] == "-"
    assert rows["inbound latency p50/p99/max (ms)"].split("/")[1] == "-"


def test_report_of_runs_without_message_counts_or_perf():
    """A run recorded before the message and system-call figures existed, or without perf, shows
    ``-`` cells for them."""
    run = json.loads((DATA / "load_runs.json").read_text(encoding="utf-8"))["runs"]["sdk"]
    del run["messages_per_call_second"]
    run["syscalls_per_call_second"]["all"] = None
    text = figures_table({"sdk": run})
    rows = dict(re.split(r"\s{2,}", line.strip()) for line in text.splitlines()[2:])
    assert rows["msgs per call-s Twilio->sys media/mark/other"] == "-"
    assert rows["every syscall (--syscalls perf)"] == "-"
    assert rows["correctness (the simulators' verdict)"].startswith("FAILS: 4/20 calls, truncation p99")


def _edge(cpu_s: float, sys_s: float, busy: float, total: float, sims: float, t: float,
          wait_s: float, slices: int) -> Edge:
    tree = TreeSample(cpu_s=cpu_s, rss=0, rss_workers=0, pids=[11, 12], sys_s=sys_s)
    return Edge(tree, (busy, total), sims, t, (0.0, wait_s, slices), (0.0, wait_s * 2, slices))


def test_cpu_figures():
    """10 calls for 2 s using 0.05 s of CPU (0.01 s of it in the kernel): 2.5 ms per call-second."""
    w = Window(idle=None, metrics0=None, metrics1=None,
               start=_edge(1.00, 0.10, busy=100.0, total=400.0, sims=3.0, t=50.0, wait_s=0.0, slices=0),
               end=_edge(1.05, 0.11, busy=103.0, total=404.0, sims=3.2, t=52.0, wait_s=0.02, slices=40))
    cpu = cpu_figures(10, w, idle_cpu_rate=0.005)
    assert cpu["window_cpu_s"] == pytest.approx(0.05)
    assert cpu["kernel_share"] == pytest.approx(0.2)
    assert cpu["per_call_second_ms"] == pytest.approx(2.5)
    assert cpu["calls_per_core"] == pytest.approx(400)
    assert cpu["per_call_second_ms_net_of_idle"] == pytest.approx((0.05 - 0.01) / 20 * 1000)
    assert cpu["processes"] == 3  # the two descendants and the root
    assert cpu["simulators_cpu_s"] == pytest.approx(0.2)
    assert cpu["vs_simulators"] == pytest.approx(0.25)
    assert cpu["machine_busy_share"] == pytest.approx(0.75)
    assert cpu["machine_saturated"] is False
    sut = cpu["contention"]["system_under_test"]
    assert sut["runqueue_wait_share"] == pytest.approx(0.01)
    assert sut["runqueue_wait_per_wakeup_ms"] == pytest.approx(0.5)
    assert cpu["contention"]["simulators"]["runqueue_wait_share"] == pytest.approx(0.02)


def test_cpu_figures_without_a_reading():
    start = _edge(1.0, 0.1, busy=100.0, total=400.0, sims=3.0, t=50.0, wait_s=0.0, slices=0)
    end = Edge(None, (100.0, 400.0), 3.0, 52.0, (0.0, 0.0, 0), (0.0, 0.0, 0))
    cpu = cpu_figures(10, Window(None, None, start, end, None), idle_cpu_rate=None)
    assert cpu["window_cpu_s"] is cpu["per_call_second_ms"] is cpu["calls_per_core"] is None
    assert cpu["vs_simulators"] is cpu["machine_busy_share"] is cpu["processes"] is None
    assert cpu["contention"]["system_under_test"]["runqueue_wait_per_wakeup_ms"] is None


def test_memory_figures():
    idle = TreeSample(cpu_s=0.0, rss=0, rss_workers=50 * 2**20, pids=[], sys_s=0.0)
    mem = memory_figures(100, idle, peak_rss=50 * 2**20 + 100 * 64 * 1024)
    assert mem == {"idle_rss_mib": 50.0, "peak_rss_mib": pytest.approx(56.25), "per_call_kib": pytest.approx(64.0)}
    assert memory_figures(100, None, 0) == {"idle_rss_mib": None, "peak_rss_mib": None, "per_call_kib": None}


@pytest.mark.parametrize(("max_ms", "late_share", "behind"), [(10.0, 0.0, False), (60.0, 0.0, True),
                                                               (10.0, 0.01, True)])
def test_simulators_fell_behind(max_ms, late_share, behind):
    lag = {"n": 100, "max": max_ms}
    result = {"generators": {"window_frame_lag_ms": lag, "window_late_share": late_share},
              "openai_sim": {"window_delta_lag_ms": dict(lag), "window_late_share": 0.0}}
    mark_fell_behind(result, 2)
    assert result["generators"]["processes"] == 2
    assert result["generators"]["fell_behind"] is behind
    assert result["openai_sim"]["fell_behind"] is (max_ms > 50)
