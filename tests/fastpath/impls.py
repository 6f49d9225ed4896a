"""Which fast-path implementations a test may use (compiled skipped when extensions are off)."""
from __future__ import annotations

import importlib
import os

import pytest

NO_EXTENSIONS = os.environ.get("GATEWAY_NO_EXTENSIONS", "") not in ("", "0")


def load(impl: str, module: str):
    """Return ``_fastpath._<impl>.<module>`` (skips the compiled one when extensions are off)."""
    if impl == "compiled" and NO_EXTENSIONS:
        pytest.skip("GATEWAY_NO_EXTENSIONS=1: compiled implementation disabled for this run")
    return importlib.import_module(f"_fastpath._{impl}.{module}")
