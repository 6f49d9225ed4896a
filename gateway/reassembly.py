"""Reassembly of fragmented WebSocket messages, bounded: the one helper both legs use.

Peers send whole messages in one frame almost always; a fragmented message is collected here, up to
``max_bytes`` (beyond that the message is refused, never buffered further: a peer that streams an
endless message must not grow a worker's memory).
"""
from __future__ import annotations

import enum

from picows import WSFrame, WSMsgType


class Fragment(enum.Enum):
    PENDING = "pending"  # a fragment was kept; more to come
    ORPHAN = "orphan"  # a continuation without a first fragment
    TOO_BIG = "too_big"  # the message exceeded max_bytes: dropped


class Reassembler:
    __slots__ = ("_buf", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf: bytearray | None = None

    def feed(self, frame: WSFrame) -> bytes | Fragment:
        """A fragment of a message (TEXT without fin, or CONTINUATION): the whole message once
        complete, else what happened to it."""
        payload = frame.get_payload_as_memoryview()
        if frame.msg_type is WSMsgType.TEXT:  # the first fragment
            self._buf = None
            if len(payload) > self.max_bytes:
                return Fragment.TOO_BIG
            self._buf = bytearray(payload)
            return Fragment.PENDING
        if self._buf is None:
            return Fragment.ORPHAN
        if len(self._buf) + len(payload) > self.max_bytes:
            self._buf = None
            return Fragment.TOO_BIG
        self._buf += payload
        if not frame.fin:
            return Fragment.PENDING
        message, self._buf = bytes(self._buf), None
        return message
