"""The Twilio leg's own WebSocket framing (``ServerWSSender.send_many``): RFC 6455 §5.2 lengths."""
from __future__ import annotations

import pytest

from gateway.ws import _text_frame_header


@pytest.mark.parametrize(("length", "header"), [
    (0, b"\x81\x00"),
    (125, b"\x81\x7d"),
    (126, b"\x81\x7e\x00\x7e"),
    (65535, b"\x81\x7e\xff\xff"),
    (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    (2**40 + 5, b"\x81\x7f\x00\x00\x01\x00\x00\x00\x00\x05"),
])
def test_text_frame_header(length, header):
    assert _text_frame_header(length) == header
