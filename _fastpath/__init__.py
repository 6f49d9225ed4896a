"""Per-frame work of the gateway: G.711 μ-law, resampling, message framing, playout marks.

The compiled implementation (``_fastpath._compiled``, Cython) is used unless the environment sets
``GATEWAY_NO_EXTENSIONS=1`` or it failed to build; ``_fastpath._pure`` is the readable reference
with identical signatures. ``COMPILED`` tells which one is active.

Types: type checkers see the compiled API, described by the stubs ``_fastpath/_compiled/*.pyi``
(the package ships ``py.typed``); tests/fastpath/test_stubs.py checks that stubs, compiled modules
and pure twin export the same names with the same parameters.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import ProtocolError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "COMPILED",
    "IMPLEMENTATION",
    "MarkOutcome",
    "PlayoutLedger",
    "ProtocolError",
    "Resampler",
    "decode_audio_delta",
    "decode_mark",
    "decode_media",
    "delta_to_pcmu",
    "encode_append",
    "encode_clear",
    "encode_mark",
    "encode_media",
    "media_to_append",
    "pcmu_to_append",
    "ulaw_decode",
    "ulaw_encode",
]


def _select() -> tuple[ModuleType, bool]:
    """The implementation package to use, and whether it is the compiled one."""
    if os.environ.get("GATEWAY_NO_EXTENSIONS", "") not in ("", "0"):
        from . import _pure

        return _pure, False
    try:
        from . import _compiled
    except ImportError:  # not built (e.g. source checkout without build_ext): fall back loudly
        import warnings

        warnings.warn(
            "_fastpath: compiled extension not available, using the pure-Python twin",
            RuntimeWarning,
            stacklevel=3,  # the module importing _fastpath
        )
        from . import _pure

        return _pure, False
    return _compiled, True


IMPLEMENTATION, COMPILED = _select()

if TYPE_CHECKING:
    from ._compiled import (
        MarkOutcome,
        PlayoutLedger,
        Resampler,
        decode_audio_delta,
        decode_mark,
        decode_media,
        delta_to_pcmu,
        encode_append,
        encode_clear,
        encode_mark,
        encode_media,
        media_to_append,
        pcmu_to_append,
        ulaw_decode,
        ulaw_encode,
    )
else:
    globals().update((name, getattr(IMPLEMENTATION, name)) for name in IMPLEMENTATION.__all__)
