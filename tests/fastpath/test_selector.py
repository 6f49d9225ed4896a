"""The selector: compiled unless GATEWAY_NO_EXTENSIONS=1, and both expose the same API."""
from __future__ import annotations

import importlib.machinery
import inspect
import os
import subprocess
import sys

from impls import NO_EXTENSIONS

import _fastpath
import _fastpath._pure as pure


def test_compiled_loaded_when_extensions_enabled():
    """Fails if the extension did not build or import: the fallback must never hide that."""
    if NO_EXTENSIONS:
        assert _fastpath.COMPILED is False and _fastpath.IMPLEMENTATION is pure
    else:
        assert _fastpath.COMPILED is True
        assert _fastpath.IMPLEMENTATION.__name__ == "_fastpath._compiled"
        ledger = sys.modules[_fastpath.PlayoutLedger.__module__]
        assert ledger.__name__ == "_fastpath._compiled.ledger"
        assert ledger.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_environment_switch_selects_pure_twin():
    env = dict(os.environ, GATEWAY_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", "import _fastpath; print(_fastpath.COMPILED)"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_same_public_api_in_both():
    if NO_EXTENSIONS:
        return
    import _fastpath._compiled as compiled

    for name in _fastpath.__all__:
        if name in ("COMPILED", "IMPLEMENTATION", "ProtocolError"):
            continue
        assert hasattr(compiled, name) and hasattr(pure, name), name
    # Same parameter names for the plain functions (Cython embeds signatures).
    for name in ("decode_media", "media_to_append", "delta_to_pcmu", "encode_mark", "ulaw_encode"):
        pure_params = list(inspect.signature(getattr(pure, name)).parameters)
        assert pure_params == list(inspect.signature(getattr(compiled, name)).parameters), name
