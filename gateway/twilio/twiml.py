"""TwiML documents the webhook answers with."""
from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import quoteattr

_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


def connect_stream(stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Connect><Stream>``: a bidirectional media stream; the call ends when we close the socket."""
    params = "".join(
        f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in parameters.items()
    )
    return f"{_HEAD}<Response><Connect><Stream url={quoteattr(stream_url)}>{params}</Stream></Connect></Response>"


def reject_busy() -> str:
    """Refuse the call with a busy signal so Twilio (and its caller) move on at once."""
    return f'{_HEAD}<Response><Reject reason="busy"/></Response>'
