"""``X-Gateway-Signature``: how a tool server (or a call-record receiver) knows a request is ours.

``t=<unix seconds>,v1=<hex HMAC-SHA256(GATEWAY_TOOL_SECRET, "<t>.<body>")>``, the scheme Stripe
made familiar: the timestamp is signed with the body, so a receiver rejects replays older than
its tolerance. The README shows the five-line verifier a receiver needs; ``verify`` is the same.
"""
from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Gateway-Signature"
TOLERANCE_S = 300


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    t = int(time.time() if now is None else now)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float | None = None, tolerance_s: int = TOLERANCE_S) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    t, mac = fields.get("t", ""), fields.get("v1", "")
    if not t.isdigit() or abs((time.time() if now is None else now) - int(t)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, expected)
