"""Stateless per-call media tokens.

The (signature-validated) voice webhook mints ``<expiry>.<mac>`` with
``mac = HMAC-SHA256(key, "<call_sid>.<expiry>")`` and passes it as a ``<Parameter>``; the media
socket's ``start`` must carry it for the same CallSid before any upstream session is opened. Any
instance sharing the key can verify it, so a call may land on another pod than its webhook.
A per-worker replay cache makes a token single-use on the worker that accepts it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

PARAMETER = "call_token"


def _mac(key: bytes, call_sid: str, expiry: int) -> str:
    digest = hmac.new(key, f"{call_sid}.{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


def mint(key: bytes, call_sid: str, now: float, ttl_s: int) -> str:
    expiry = int(now) + ttl_s
    return f"{expiry}.{_mac(key, call_sid, expiry)}"


class TokenVerifier:
    """Checks tokens and remembers the ones already used until they expire."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._used: dict[str, int] = {}

    def verify(self, token: str | None, call_sid: str, now: float) -> str | None:
        """Return None if valid (and consume it), else a short reason (a metric label)."""
        if not token or not isinstance(token, str):
            return "missing"
        expiry_s, _, mac = token.partition(".")
        # Canonical ASCII decimal only: "0123" or full-width digits would mint a fresh replay-cache
        # key for the same MAC.
        if not (0 < len(expiry_s) <= 12 and expiry_s.isascii() and expiry_s.isdigit()) or not mac:
            return "malformed"
        expiry = int(expiry_s)
        if str(expiry) != expiry_s:
            return "malformed"
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), _mac(self._key, call_sid, expiry).encode()):
            return "bad_mac"
        if expiry < now:
            return "expired"
        if token in self._used:
            return "replayed"
        if len(self._used) > 1024:
            self._used = {t: e for t, e in self._used.items() if e >= now}
        self._used[token] = expiry
        return None
