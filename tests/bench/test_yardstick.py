"""The host yardstick (bench/yardstick.py) measures a real cross-process round trip."""
from __future__ import annotations

import sys

import pytest

from bench import yardstick

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + loopback TCP")


def test_ping_pong_measures_both_clocks():
    result = yardstick.ping_pong(round_trips=200)
    # A round trip is two sends, two receives and a wake-up of the other process: never free,
    # and never slower in CPU than in wall time for the side that measures.
    assert 0 < result["cpu_us_per_round_trip"] <= result["wall_us_per_round_trip"] * 1.05
    assert result["wall_us_per_round_trip"] < 100_000


def test_measure_runs_in_a_fresh_interpreter():
    result = yardstick.measure()
    assert result is not None and set(result) == {"cpu_us_per_round_trip", "wall_us_per_round_trip"}
