"""Stateless per-call media tokens that carry the call's context from the webhook to the media socket.

The (signature-validated) voice webhook mints ``<expiry>.<claims>.<mac>``: ``claims`` is the
base64url JSON of what the media socket must know but Twilio's ``start`` does not carry (the
chosen agent, the caller's and the called number), and ``mac = HMAC-SHA256(key,
"<call_sid>.<expiry>.<claims>")``. It travels as a ``<Parameter>``; the media socket's ``start``
must carry it for the same CallSid before any upstream session is opened. A caller cannot forge
an agent (a plain ``<Parameter name="agent">`` is ignored) and any instance sharing the key can
verify it, so a call may land on another pod than its webhook. A per-worker replay cache makes a
token single-use on the worker that accepts it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import msgspec

from ..outcomes import TokenRejection

PARAMETER = "call_token"
MAX_TOKEN = 2048


class CallClaims(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the webhook knew about the call: signed, so the media socket can trust it."""

    agent: str = ""
    caller: str = ""  # the webhook's From
    called: str = ""  # the webhook's To


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CallClaims)


def _mac(key: bytes, call_sid: str, expiry: int, claims: str) -> str:
    digest = hmac.new(key, f"{call_sid}.{expiry}.{claims}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def mint(key: bytes, call_sid: str, now: float, ttl_s: int, claims: CallClaims | None = None) -> str:
    expiry = int(now) + ttl_s
    encoded = _b64(_encoder.encode(claims or CallClaims()))
    return f"{expiry}.{encoded}.{_mac(key, call_sid, expiry, encoded)}"


class TokenVerifier:
    """Checks tokens and remembers the ones already used until they expire."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._used: dict[str, int] = {}

    def verify(self, token: str | None, call_sid: str, now: float) -> CallClaims | TokenRejection:
        """The token's claims if valid (and consume it), else why it was refused."""
        if not token or not isinstance(token, str):
            return TokenRejection.MISSING
        parts = _split(token)
        if parts is None:
            return TokenRejection.MALFORMED
        expiry, encoded, mac = parts
        expected = _mac(self._key, call_sid, expiry, encoded).encode()
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), expected):
            return TokenRejection.BAD_MAC
        claims = _claims(encoded)
        if claims is None:
            return TokenRejection.MALFORMED
        if expiry < now:
            return TokenRejection.EXPIRED
        if token in self._used:
            return TokenRejection.REPLAYED
        if len(self._used) > 1024:
            self._used = {t: e for t, e in self._used.items() if e >= now}
        self._used[token] = expiry
        return claims


def expiry_of(token: str) -> float:
    """The unix expiry a token names (0 if it names none): how long its use must be remembered."""
    parts = _split(token) if token else None
    return float(parts[0]) if parts else 0.0


def _split(token: str) -> tuple[int, str, str] | None:
    """(expiry, claims, mac) of a well-formed token, None otherwise."""
    if len(token) > MAX_TOKEN or token.count(".") != 2:
        return None
    expiry_s, encoded, mac = token.split(".")
    # Canonical ASCII decimal only: "0123" or full-width digits would mint a fresh replay-cache
    # key for the same MAC.
    if not (0 < len(expiry_s) <= 12 and expiry_s.isascii() and expiry_s.isdigit()) or not mac:
        return None
    if str(int(expiry_s)) != expiry_s:
        return None
    return int(expiry_s), encoded, mac


def _claims(encoded: str) -> CallClaims | None:
    """Decode claims the MAC vouched for; None if they are not the canonical encoding."""
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        claims = _decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None
    return claims if _b64(raw) == encoded else None
