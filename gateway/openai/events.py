"""The few client events the gateway builds outside the per-frame fast path.

Each builder returns the JSON bytes to send; every shape here is validated in the tests against
``openai.types.realtime`` (the official schema) with unknown keys rejected.
"""
from __future__ import annotations

from typing import Any

import orjson

from ..config import Settings

PCMU = {"type": "audio/pcmu"}
PCM24K = {"type": "audio/pcm", "rate": 24000}


def session_config(settings: Settings) -> dict[str, Any]:
    """GA ``session`` object: formats by audio mode, voice, instructions, explicit server VAD."""
    fmt = PCMU if settings.audio_mode == "passthrough" else PCM24K
    return {
        "type": "realtime",
        "model": settings.model,
        "instructions": settings.instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": fmt,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": settings.vad_threshold,
                    "prefix_padding_ms": settings.vad_prefix_padding_ms,
                    "silence_duration_ms": settings.vad_silence_ms,
                    # Defaults are observed as true but not documented: always set both explicitly.
                    "create_response": settings.vad_create_response,
                    "interrupt_response": settings.vad_interrupt_response,
                },
            },
            "output": {"format": fmt, "voice": settings.voice},
        },
    }


def session_update(settings: Settings, event_id: str | None = None) -> bytes:
    """``event_id`` (e.g. the CallSid) is echoed in any error about it: correlates logs across sides."""
    event: dict[str, Any] = {"type": "session.update", "session": session_config(settings)}
    if event_id:
        event["event_id"] = event_id
    return orjson.dumps(event)


def response_create(instructions: str | None = None) -> bytes:
    if not instructions:
        return b'{"type":"response.create"}'
    return orjson.dumps({"type": "response.create", "response": {"instructions": instructions}})


def response_cancel(response_id: str | None) -> bytes:
    if response_id is None:
        return b'{"type":"response.cancel"}'
    return orjson.dumps({"type": "response.cancel", "response_id": response_id})


def item_truncate(item_id: str, content_index: int, audio_end_ms: int) -> bytes:
    return orjson.dumps(
        {"type": "conversation.item.truncate", "item_id": item_id,
         "content_index": content_index, "audio_end_ms": audio_end_ms}
    )


def item_delete(item_id: str) -> bytes:
    return orjson.dumps({"type": "conversation.item.delete", "item_id": item_id})
