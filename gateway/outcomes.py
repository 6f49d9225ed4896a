"""Every label the gateway reports about a call, in one place.

Dashboards and alerts select on these values (``gateway_calls_ended_total{outcome="upstream_error"}``
pages someone), so they are enums, never strings typed at the call site, and a value is never
renamed without updating ``deploy/``. This module imports nothing of the gateway: every layer may
use it.
"""
from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """How a call ended: the ``outcome`` label of ``gateway_calls_ended_total``."""

    COMPLETED = "completed"  # Twilio sent `stop` or hung up
    NO_START = "no_start"  # the socket closed before `start`
    REJECTED_TOKEN = "rejected_token"  # noqa: S105 - a label: `start` without a valid, unused call token
    TWILIO_PROTOCOL_ERROR = "twilio_protocol_error"
    TWILIO_SILENT = "twilio_silent"  # no media for SILENCE_TIMEOUT_S: a half-open socket
    TWILIO_STALLED = "twilio_stalled"  # Twilio stopped reading while audio kept coming
    UPSTREAM_ERROR = "upstream_error"
    DRAIN_TIMEOUT = "drain_timeout"
    SHUTDOWN = "shutdown"
    AGENT_HANGUP = "agent_hangup"  # the agent's end_call (or its max_call_s)
    TRANSFERRED = "transferred"  # the agent's transfer_call (or the control API) redirected the call
    API_HANGUP = "api_hangup"  # POST /calls/{sid}/hangup
    WORKER_LOST = "worker_lost"  # the worker holding the call died (counted by the supervisor)
    REJECTED_DUPLICATE = "rejected_duplicate"  # a second media socket for a call that already streams
    REJECTED_CAPACITY = "rejected_capacity"  # `start` beyond the pod's GATEWAY_MAX_CALLS (no reservation)


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway sends (RFC 6455 §7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # shutdown, drain, a peer that went silent
    POLICY_VIOLATION = 1008  # protocol violation, bad call token
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # the other leg failed
    TRY_AGAIN_LATER = 1013  # no room for the call right now


class EndReason(enum.StrEnum):
    """Why the gateway ended a call: the log line and the WebSocket close reason.

    Each reason maps to exactly one outcome and close code (``END_REASONS``), so the three can
    never disagree.
    """

    TWILIO_STOP = "twilio_stop"
    TWILIO_DISCONNECTED = "twilio_disconnected"
    TWILIO_GONE_BEFORE_START = "twilio_gone_before_start"
    TWILIO_PROTOCOL_ERROR = "twilio_protocol_error"
    CALL_TOKEN_REJECTED = "call_token_rejected"  # noqa: S105 - a label, not a secret
    TWILIO_SILENT = "twilio_silent"
    TWILIO_STALLED = "twilio_stalled"
    UPSTREAM_FAILED = "upstream_failed"
    DRAIN_TIMEOUT = "drain_timeout"
    SHUTDOWN = "shutdown"
    AGENT_HANGUP = "agent_hangup"
    MAX_DURATION = "max_duration"
    TRANSFERRED = "transferred"
    API_HANGUP = "api_hangup"
    DUPLICATE_STREAM = "duplicate_stream"
    TOKEN_REPLAYED_ELSEWHERE = "token_replayed_elsewhere"  # noqa: S105 - a label
    OVER_CAPACITY = "over_capacity"

    @property
    def outcome(self) -> Outcome:
        return END_REASONS[self][0]

    @property
    def close_code(self) -> CloseCode:
        return END_REASONS[self][1]


END_REASONS: dict[EndReason, tuple[Outcome, CloseCode]] = {
    EndReason.TWILIO_STOP: (Outcome.COMPLETED, CloseCode.NORMAL),
    EndReason.TWILIO_DISCONNECTED: (Outcome.COMPLETED, CloseCode.NORMAL),
    EndReason.TWILIO_GONE_BEFORE_START: (Outcome.NO_START, CloseCode.NORMAL),
    EndReason.TWILIO_PROTOCOL_ERROR: (Outcome.TWILIO_PROTOCOL_ERROR, CloseCode.POLICY_VIOLATION),
    EndReason.CALL_TOKEN_REJECTED: (Outcome.REJECTED_TOKEN, CloseCode.POLICY_VIOLATION),
    EndReason.TWILIO_SILENT: (Outcome.TWILIO_SILENT, CloseCode.GOING_AWAY),
    EndReason.TWILIO_STALLED: (Outcome.TWILIO_STALLED, CloseCode.GOING_AWAY),
    EndReason.UPSTREAM_FAILED: (Outcome.UPSTREAM_ERROR, CloseCode.INTERNAL_ERROR),
    EndReason.DRAIN_TIMEOUT: (Outcome.DRAIN_TIMEOUT, CloseCode.GOING_AWAY),
    EndReason.SHUTDOWN: (Outcome.SHUTDOWN, CloseCode.GOING_AWAY),
    EndReason.AGENT_HANGUP: (Outcome.AGENT_HANGUP, CloseCode.NORMAL),
    EndReason.MAX_DURATION: (Outcome.AGENT_HANGUP, CloseCode.NORMAL),
    EndReason.TRANSFERRED: (Outcome.TRANSFERRED, CloseCode.NORMAL),
    EndReason.API_HANGUP: (Outcome.API_HANGUP, CloseCode.NORMAL),
    EndReason.DUPLICATE_STREAM: (Outcome.REJECTED_DUPLICATE, CloseCode.POLICY_VIOLATION),
    EndReason.TOKEN_REPLAYED_ELSEWHERE: (Outcome.REJECTED_TOKEN, CloseCode.POLICY_VIOLATION),
    EndReason.OVER_CAPACITY: (Outcome.REJECTED_CAPACITY, CloseCode.TRY_AGAIN_LATER),
}


class Trigger(enum.StrEnum):
    """What asked for a barge-in: the ``trigger`` label of ``gateway_interrupts_total``."""

    SPEECH_STARTED = "speech_started"  # the model's VAD heard the caller
    CONTROL_API = "control_api"  # POST /calls/{sid}/interrupt
    API = "api"  # Call.interrupt() from Python


class RejectReason(enum.StrEnum):
    """Why a new call was refused: the ``reason`` label of ``gateway_rejected_calls_total``."""

    DRAINING = "draining"
    CAPACITY = "capacity"  # the pod is at GATEWAY_MAX_CALLS
    CLUSTER_CAPACITY = "cluster_capacity"  # the cluster is at GATEWAY_CLUSTER_MAX_CALLS
    BAD_SIGNATURE = "bad_signature"


class ConnectionRefusal(enum.StrEnum):
    """Why a connection was closed before its request reached a handler
    (``gateway_rejected_connections_total{reason}``)."""

    SLOW_REQUEST = "slow_request"  # head (and body) not in within the request timeout
    OVERSIZED_HEAD = "oversized_head"
    BAD_BODY = "bad_body"  # chunked, unreadable Content-Length, or beyond the body limit
    TOO_MANY = "too_many"  # the worker's limit of connections still sending their request


class TwilioViolation(enum.StrEnum):
    """Kinds of invalid input on the Twilio media socket (``protocol_errors{side="twilio"}``)."""

    INVALID_JSON = "invalid_json"
    INVALID_MEDIA = "invalid_media"
    INVALID_EVENT = "invalid_event"
    INVALID_MARK = "invalid_mark"
    INVALID_START = "invalid_start"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DUPLICATE_START = "duplicate_start"
    BEFORE_START = "before_start"
    WRONG_STREAM_SID = "wrong_stream_sid"
    BINARY_FRAME = "binary_frame"
    OVERSIZED_FRAME = "oversized_frame"
    NO_START = "no_start"  # no `start` within START_TIMEOUT_S
    UNKNOWN_EVENT = "unknown_event"  # counted, not fatal: Twilio adds events over time


class TokenRejection(enum.StrEnum):
    """Why a call token in `start` was refused (counted as ``call_token_<value>``)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    BAD_MAC = "bad_mac"
    EXPIRED = "expired"
    REPLAYED = "replayed"


class UpstreamFailure(enum.StrEnum):
    """Why the upstream session could not go on (``gateway_upstream_errors_total{code}``).

    The same label also carries the ``code`` of the server's own ``error`` events, an open set
    of strings chosen by the server.
    """

    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    TLS = "tls"
    HANDSHAKE = "handshake"  # the WebSocket upgrade was refused (401, 403, 5xx)
    CLOSED = "closed"  # the server closed or the connection was lost mid-call
    SESSION_REJECTED = "session_rejected"  # our session.update was refused
    PROTOCOL = "protocol"  # an invalid server message (``protocol_errors{side="upstream"}``)
    KEEPALIVE = "keepalive"  # no pong within GATEWAY_UPSTREAM_PING_TIMEOUT_S: a half-open upstream
    STALLED = "stalled"  # the upstream stopped reading for GATEWAY_UPSTREAM_STALL_S
    OVERSIZED = "oversized"  # a server message beyond the reassembly bound


class UpstreamViolation(enum.StrEnum):
    """Kinds of invalid input on the upstream socket (``protocol_errors{side="upstream"}``)."""

    INVALID_MESSAGE = "invalid_message"  # not a JSON object with a string `type`: fatal
    INVALID_AUDIO = "invalid_audio"  # an output-audio delta the fast path rejected: fatal
    INVALID_FIELDS = "invalid_fields"  # a known event with ill-typed fields: counted, skipped
    OVERSIZED = "oversized"  # a message beyond the reassembly bound
    BINARY_FRAME = "binary_frame"


class ToolStatus(enum.StrEnum):
    """How a tool call went: the ``status`` label of ``gateway_tool_calls_total``."""

    OK = "ok"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"  # a non-2xx answer
    INVALID_JSON = "invalid_json"  # the tool answered something that is not JSON
    UNREACHABLE = "unreachable"  # connection refused, DNS, TLS
    BAD_ARGUMENTS = "bad_arguments"  # the model's arguments are not a JSON object
    REFUSED = "refused"  # a built-in refused (a transfer target not allowed)
    UNAVAILABLE = "unavailable"  # a built-in that is not configured (no Twilio REST credentials)
    UNKNOWN_TOOL = "unknown_tool"  # the model called a tool the agent does not have


class Reconnect(enum.StrEnum):
    """How an upstream reconnect went: the ``result`` label of ``gateway_upstream_reconnects_total``."""

    OK = "ok"  # a new session took over, the conversation replayed
    FAILED = "failed"  # an attempt failed (another may follow)
    EXHAUSTED = "exhausted"  # the budget was spent: the call ended
    ROLLOVER = "rollover"  # a planned switch to a fresh session before the server's cap
