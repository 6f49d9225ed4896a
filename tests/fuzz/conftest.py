"""Fixtures of the fuzzing tests: a fresh ``CallFuzz`` machine (``bench/fuzz.py``) on each fast path."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import _fastpath
from bench.fuzz import fuzzing, machine_class


@pytest.fixture
def fuzz_impl(impl: str) -> str:
    if impl == "compiled" and not _fastpath.COMPILED:
        pytest.skip("the compiled fast path is not loaded (GATEWAY_NO_EXTENSIONS=1)")
    return impl


@pytest.fixture
def machine(fuzz_impl: str) -> Iterator[Any]:
    """An unconfigured machine; its invariants run after every step, its teardown at the end."""
    with fuzzing(fuzz_impl):
        state = machine_class()()
        try:
            yield state
        finally:
            state.teardown()
