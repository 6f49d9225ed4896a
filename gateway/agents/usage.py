"""Tokens a call used (summed from every ``response.done``) and what they cost.

The Realtime API reports usage per response: input tokens (text and audio, of which some cached)
and output tokens (text and audio). The cost applies the model's price per million tokens of each
kind (``profiles.DEFAULT_PRICES`` or the agents file's ``[prices]``); cached input is billed at the
cached price instead of the full one.
"""
from __future__ import annotations

from ..openai.server_events import Usage
from .profiles import Price

KINDS = ("input_text", "input_audio", "input_cached_text", "input_cached_audio", "output_text", "output_audio")


class Tokens:
    __slots__ = ("counts", "responses")

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.responses = 0

    def add(self, usage: Usage) -> dict[str, int]:
        """Add one response's usage; returns what it added, by kind (for the metrics)."""
        added = dict.fromkeys(KINDS, 0)
        i, o = usage.input_token_details, usage.output_token_details
        if i is not None:
            cached = i.cached_tokens_details
            cached_text = cached.text_tokens if cached else 0
            cached_audio = cached.audio_tokens if cached else 0
            added["input_cached_text"] = cached_text
            added["input_cached_audio"] = cached_audio
            added["input_text"] = max(0, i.text_tokens - cached_text)
            added["input_audio"] = max(0, i.audio_tokens - cached_audio)
        else:
            added["input_text"] = usage.input_tokens
        if o is not None:
            added["output_text"] = o.text_tokens
            added["output_audio"] = o.audio_tokens
        else:
            added["output_text"] = usage.output_tokens
        for kind, n in added.items():
            self.counts[kind] += n
        self.responses += 1
        return {k: n for k, n in added.items() if n}

    def cost_usd(self, price: Price | None) -> float | None:
        """USD for the tokens so far; None if the model has no known price."""
        if price is None:
            return None
        c = self.counts
        per_million = (
            c["input_text"] * price.text_input + c["input_cached_text"] * price.cached_text_input
            + c["input_audio"] * price.audio_input + c["input_cached_audio"] * price.cached_audio_input
            + c["output_text"] * price.text_output + c["output_audio"] * price.audio_output
        )
        return round(per_million / 1_000_000, 6)
