"""The client events the gateway builds outside the per-frame fast path.

Each builder returns the JSON bytes to send; every shape here is validated in the tests against
``openai.types.realtime`` (the official schema) with unknown keys rejected. What goes into the
session (formats, voice, tools) is decided by the agent layer (``agents.session``).
"""
from __future__ import annotations

from typing import Any

import orjson

PCMU = {"type": "audio/pcmu"}
PCM24K = {"type": "audio/pcm", "rate": 24000}


def session_update(session: dict[str, Any], event_id: str | None = None) -> bytes:
    """``event_id`` (e.g. the CallSid) is echoed in any error about it: correlates logs across sides."""
    event: dict[str, Any] = {"type": "session.update", "session": session}
    if event_id:
        event["event_id"] = event_id
    return orjson.dumps(event)


def response_create(instructions: str | None = None) -> bytes:
    if not instructions:
        return b'{"type":"response.create"}'
    return orjson.dumps({"type": "response.create", "response": {"instructions": instructions}})


def response_out_of_band(instructions: str, purpose: str) -> bytes:
    """A response outside the conversation (``conversation: "none"``): it speaks, but the model
    will not remember it. ``metadata.gateway`` names why the gateway asked for it."""
    return orjson.dumps({"type": "response.create", "response": {
        "conversation": "none", "instructions": instructions, "output_modalities": ["audio"],
        "metadata": {"gateway": purpose},
    }})


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


def function_call_output(call_id: str, output: str) -> bytes:
    return orjson.dumps({"type": "conversation.item.create",
                         "item": {"type": "function_call_output", "call_id": call_id, "output": output}})


def user_text(text: str) -> bytes:
    """A user message in text (the caller's keypad input, say)."""
    return orjson.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}],
    }})


def assistant_text(text: str) -> bytes:
    """What the assistant said earlier (a replay into a new session), as text."""
    return orjson.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}],
    }})


def function_call(call_id: str, name: str, arguments: str) -> bytes:
    """A function call the model made earlier (a replay into a new session)."""
    return orjson.dumps({"type": "conversation.item.create", "item": {
        "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
    }})


def system_text(text: str) -> bytes:
    """A system message: something the gateway tells the model mid-call (a failed transfer, say)."""
    return orjson.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "system", "content": [{"type": "input_text", "text": text}],
    }})
