"""Ground truth of a simulated call: what the caller actually heard of each assistant item.

The OpenAI simulator records every item's generated audio; the Twilio simulator records every
media payload it received and how many of its bytes it played before a ``clear`` or the end.
Items are pseudo-random noise, so any 16-byte window locates a payload inside exactly one item.
This module joins the two records without trusting anything the gateway says.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

WINDOW = 16


def expected_ulaw(generated: bytes, output_format: str) -> bytes:
    """The μ-law bytes the gateway should send to Twilio for one item's generated audio."""
    if output_format == "audio/pcmu":
        return generated
    from _fastpath._pure.g711 import ulaw_encode
    from _fastpath._pure.resample import Resampler

    rs = Resampler(24000, 8000)
    return ulaw_encode(rs.process(generated) + rs.flush())


def heard_bytes_per_item(items: Mapping[str, bytes], heard: Iterable[tuple[bytes, int]]) -> dict[str, int]:
    """μ-law bytes of each item the caller heard: the furthest played byte of any payload in it.

    ``items`` maps item_id → the μ-law bytes of that item as Twilio receives them;
    ``heard`` yields (payload, bytes of it played). Payloads that match no item are ignored
    (probe marks carry no audio). Transcoded payloads may differ by ±1 code from an independent
    transcode, so matching tolerates that by trying each window position.
    """
    index: dict[bytes, tuple[str, int]] = {}
    for item_id, audio in items.items():
        for off in range(0, max(0, len(audio) - WINDOW + 1)):
            index.setdefault(audio[off:off + WINDOW], (item_id, off))
    out: dict[str, int] = {item_id: 0 for item_id in items}
    for payload, played in heard:
        if played <= 0:
            continue
        hit = None
        for start in range(0, max(1, len(payload) - WINDOW + 1), WINDOW):
            hit = index.get(bytes(payload[start:start + WINDOW]))
            if hit is not None:
                item_id, off = hit
                off -= start
                break
        if hit is None:
            continue
        out[item_id] = max(out[item_id], off + played)
    return out
