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

from .outcomes import TwilioViolation, UpstreamFailure, UpstreamViolation

__all__ = [
    "AuthError",
    "ConfigError",
    "GatewayError",
    "ProtocolError",
    "TwilioProtocolError",
    "UpstreamError",
    "UpstreamProtocolError",
]


class GatewayError(Exception):
    """Base of all gateway errors."""


class ConfigError(GatewayError):
    """The configuration is invalid; the process must not start. ``problems``: one line per wrong
    setting (the message is those lines joined)."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(problems))


class TwilioProtocolError(ProtocolError, GatewayError):
    """Invalid input on the Twilio media socket; ``kind`` is its metric label."""

    def __init__(self, message: str, kind: TwilioViolation) -> None:
        super().__init__(message)
        self.kind = kind


class UpstreamProtocolError(ProtocolError, GatewayError):
    """Invalid input on the OpenAI Realtime socket; ``kind`` is its metric label."""

    def __init__(self, message: str, kind: UpstreamViolation) -> None:
        super().__init__(message)
        self.kind = kind


class AuthError(GatewayError):
    """A request failed authentication (Twilio signature, call token, control bearer token)."""


class UpstreamError(GatewayError):
    """The upstream realtime session cannot continue. ``code`` is its metric label: one of
    ``UpstreamFailure`` or the ``code`` of the server's own ``error`` event."""

    def __init__(self, message: str, code: UpstreamFailure | str) -> None:
        super().__init__(message)
        self.code = code
