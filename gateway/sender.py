"""What a call needs from a transport: send text messages, close. Both legs implement it."""
from __future__ import annotations

from typing import Protocol


class Sender(Protocol):
    def send(self, data: bytes) -> None: ...

    def send_many(self, *messages: bytes) -> None:
        """Send several messages, in one socket write where the transport can."""

    def close(self, code: int = 1000, reason: str = "", *, abort: bool = False) -> None:
        """Close with a CLOSE frame, flushing what is queued; ``abort``: drop the connection and what
        is queued (a peer that stopped reading would otherwise hold the socket open indefinitely)."""
