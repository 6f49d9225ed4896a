"""Pure-Python twin of ``_fastpath._compiled``: same names, same signatures, same results."""
from .framing import (
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
)
from .g711 import ulaw_decode, ulaw_encode
from .ledger import MarkOutcome, PlayoutLedger
from .resample import Resampler

__all__ = [
    "MarkOutcome",
    "PlayoutLedger",
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
