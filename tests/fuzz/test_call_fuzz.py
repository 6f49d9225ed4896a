"""The stateful fuzzer of the bridge core (``bench/fuzz.py``), briefly, on both fast-path implementations.

A short, derandomized run (the same examples on every run, so CI is stable); the long run is
``python -m bench fuzz --examples N``. A failure prints hypothesis's shrunk reproduction: a list of
``state.<rule>(...)`` calls that ``tests/fuzz/test_regressions.py`` can replay as they are.
"""
from __future__ import annotations

from hypothesis.stateful import run_state_machine_as_test

from bench.fuzz import Harness, fuzzing, hypothesis_settings, machine_class

EXAMPLES = 200
STEPS = 40


def test_call_keeps_its_invariants_under_fuzzing(fuzz_impl):
    examples = Harness.examples
    with fuzzing(fuzz_impl):
        run_state_machine_as_test(machine_class(), settings=hypothesis_settings(EXAMPLES, STEPS, derandomize=True))
    assert Harness.examples - examples >= EXAMPLES
