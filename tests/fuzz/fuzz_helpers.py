"""Helpers of the fuzzing tests (a module of its own: ``from conftest import`` is ambiguous in this suite)."""
from __future__ import annotations

from typing import Any

# The configuration of a call that streams at once (what ``CallFuzz.configure`` draws per example).
STREAMING = {
    "secure": True, "audio_mode": "passthrough", "coalesce_frames": 1, "unheard_item_action": "truncate",
    "vad_interrupt_response": True, "max_pending_audio_ms": 2000, "greeting": "", "admit_deferred": False,
    "agent": "default", "filler": "speech", "rest": False, "prologue": "streaming", "hostile": False,
}


def configure(state: Any, **overrides: Any) -> Any:
    state.configure(**{**STREAMING, **overrides})
    return state.harness
