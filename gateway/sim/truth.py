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


class ItemIndex:
    """Locates a μ-law payload inside the expected audio of the call's items."""

    def __init__(self, items: Mapping[str, bytes]) -> None:
        self._index: dict[bytes, tuple[str, int]] = {}
        for item_id, audio in items.items():
            for off in range(max(0, len(audio) - WINDOW + 1)):
                self._index.setdefault(audio[off:off + WINDOW], (item_id, off))

    def locate(self, payload: bytes) -> tuple[str, int] | None:
        """(item_id, offset of the payload's first byte) or None. Tries several windows because a
        transcoded payload may differ by one code here and there from an independent transcode."""
        for start in range(0, max(1, len(payload) - WINDOW + 1), WINDOW):
            hit = self._index.get(bytes(payload[start:start + WINDOW]))
            if hit is not None:
                return hit[0], hit[1] - start
        return None


def heard_bytes_per_item(items: Mapping[str, bytes], heard: Iterable[tuple[bytes, int]]) -> dict[str, int]:
    """μ-law bytes of each item the caller heard: the furthest played byte of any payload in it.

    ``items`` maps item_id → the μ-law bytes of that item as Twilio receives them; ``heard``
    yields (payload, bytes of it played). Payloads that match no item are ignored.
    """
    index = ItemIndex(items)
    out: dict[str, int] = dict.fromkeys(items, 0)
    for payload, played in heard:
        hit = index.locate(payload) if played > 0 else None
        if hit is not None:
            out[hit[0]] = max(out[hit[0]], hit[1] + played)
    return out
