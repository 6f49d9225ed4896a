"""Every exception the gateway raises, in one hierarchy.

    GatewayError
    ├── ConfigError              invalid or missing configuration: refuse to start
    ├── TwilioProtocolError      a message on the Twilio media socket broke the protocol
    ├── UpstreamProtocolError    a message on the OpenAI Realtime socket broke the protocol
    ├── AuthError                signature / call token / bearer token rejected
    └── UpstreamError            the upstream session failed (connect, TLS, fatal error event, close)

``ProtocolError`` (a ValueError) is defined once, in ``_fastpath.errors``, because the fast path
raises it without knowing about the gateway; both side-specific errors derive from it, so
``except ProtocolError`` catches every invalid-peer-input case.
"""
from __future__ import annotations

from _fastpath.errors import ProtocolError

__all__ = [
    "GatewayError", "ConfigError", "ProtocolError", "TwilioProtocolError",
    "UpstreamProtocolError", "AuthError", "UpstreamError",
]


class GatewayError(Exception):
    """Base of all gateway errors."""


class ConfigError(GatewayError):
    """The configuration is invalid; the process must not start."""


class _SideProtocolError(ProtocolError, GatewayError):
    """A peer violated its wire protocol. ``kind`` is a short metric label."""

    def __init__(self, message: str, kind: str = "invalid_message") -> None:
        super().__init__(message)
        self.kind = kind


class TwilioProtocolError(_SideProtocolError):
    """Invalid input on the Twilio media socket."""


class UpstreamProtocolError(_SideProtocolError):
    """Invalid input on the OpenAI Realtime socket."""


class AuthError(GatewayError):
    """A request failed authentication (Twilio signature, call token, control bearer token)."""


class UpstreamError(GatewayError):
    """The upstream realtime session cannot continue. ``code`` is a short metric label."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code
