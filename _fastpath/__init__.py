"""Per-frame work of the gateway: G.711 μ-law, resampling, message framing, playout marks.

The compiled implementation (``_fastpath._compiled``, Cython) is used unless the environment sets
``GATEWAY_NO_EXTENSIONS=1`` or it failed to build; ``_fastpath._pure`` is the readable reference
with identical signatures. ``COMPILED`` tells which one is active.
"""
from __future__ import annotations

import os

from .errors import ProtocolError

__all__ = [
    "COMPILED",
    "IMPLEMENTATION",
    "ProtocolError",
    "ulaw_decode",
    "ulaw_encode",
    "Resampler",
    "decode_media",
    "encode_media",
    "encode_mark",
    "encode_clear",
    "encode_append",
    "decode_audio_delta",
    "pcmu_to_append",
    "media_to_append",
    "delta_to_pcmu",
    "PlayoutLedger",
    "MarkOutcome",
]

if os.environ.get("GATEWAY_NO_EXTENSIONS", "") not in ("", "0"):
    from . import _pure as _impl

    COMPILED = False
else:
    try:
        from . import _compiled as _impl

        COMPILED = True
    except ImportError:  # not built (e.g. source checkout without build_ext): fall back loudly
        import warnings

        warnings.warn(
            "_fastpath: compiled extension not available, using the pure-Python twin",
            RuntimeWarning,
            stacklevel=2,
        )
        from . import _pure as _impl

        COMPILED = False

IMPLEMENTATION = _impl
ulaw_decode = _impl.ulaw_decode
ulaw_encode = _impl.ulaw_encode
Resampler = _impl.Resampler
decode_media = _impl.decode_media
encode_media = _impl.encode_media
encode_mark = _impl.encode_mark
encode_clear = _impl.encode_clear
encode_append = _impl.encode_append
decode_audio_delta = _impl.decode_audio_delta
pcmu_to_append = _impl.pcmu_to_append
media_to_append = _impl.media_to_append
delta_to_pcmu = _impl.delta_to_pcmu
PlayoutLedger = _impl.PlayoutLedger
MarkOutcome = _impl.MarkOutcome
