"""Frames between the workers of a pod and their hub: a 4-byte length, then a msgpack map.

A private Unix socket in the supervisor's runtime directory carries them; nothing here is on the
per-frame path (admission, registration, commands only).
"""
from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgspec

MAX_FRAME = 4 * 1024 * 1024  # a GET of a long call's transcript fits; anything larger is a bug
_LENGTH = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(dict[str, Any])


class WireError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def encode(message: dict[str, Any]) -> bytes:
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


async def read(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise WireError("stream ended inside a frame header") from None
        return None
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise WireError(f"frame of {length} bytes > {MAX_FRAME}")
    try:
        return _decoder.decode(await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        raise WireError("stream ended inside a frame") from None
    except msgspec.DecodeError as exc:
        raise WireError(f"undecodable frame: {exc}") from None
