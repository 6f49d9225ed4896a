"""Plain per-call counters, read by the worker's metrics flush.

Per-frame code increments plain attributes here and never touches a metric object; once a second
``metrics.GatewayMetrics.flush`` adds what changed. Every field is exported by a declaration in
``metrics.METRICS`` (a test checks that none is left unread).
"""
from __future__ import annotations


class CallStats:
    __slots__ = (
        "agent",
        "bytes_out",
        "caller_audio_dropped_bytes",
        "clear_latency_s",
        "deltas_dropped",
        "dtmf_digits",
        "false_interruptions",
        "frames_in",
        "interrupts",
        "media_out",
        "playout_underruns",
        "reconnect_s",
        "reconnects",
        "tokens",
        "tool_calls",
        "tool_latency_s",
        "truncations",
        "twilio_protocol_errors",
        "upstream_connect_s",
        "upstream_errors",
        "upstream_protocol_errors",
    )

    def __init__(self) -> None:
        self.frames_in = 0  # Twilio media frames received (20 ms each)
        self.media_out = 0  # media messages sent to Twilio
        self.bytes_out = 0  # μ-law bytes of assistant audio sent to Twilio
        self.deltas_dropped = 0  # late deltas of interrupted responses, never played
        self.playout_underruns = 0  # paced playout: Twilio ran dry while audio was held back here
        # Caller audio lost: more arrived while the upstream session was opening than
        # GATEWAY_MAX_PENDING_AUDIO_MS keeps (the oldest is dropped).
        self.caller_audio_dropped_bytes = 0
        self.interrupts: dict[str, int] = {}  # by Trigger
        self.false_interruptions = 0  # caller speech too short to interrupt: paused, then resumed
        self.clear_latency_s: list[float] = []  # trigger → clear handed to the transport
        self.truncations: list[tuple[str, int]] = []  # (item_id, audio_end_ms)
        self.upstream_errors: dict[str, int] = {}  # by UpstreamFailure or the server's error code
        self.upstream_protocol_errors: dict[str, int] = {}  # by UpstreamViolation
        self.twilio_protocol_errors: dict[str, int] = {}  # by TwilioViolation or call_token_<TokenRejection>
        self.upstream_connect_s: float | None = None
        self.reconnects: dict[str, int] = {}  # by outcomes.Reconnect
        self.reconnect_s: list[float] = []  # failure → a new session took over
        # The agent layer's (never per frame):
        self.agent: str | None = None  # the agent that answered
        self.dtmf_digits = 0
        self.tool_calls: dict[tuple[str, str], int] = {}  # (tool, ToolStatus)
        self.tool_latency_s: list[tuple[str, float]] = []  # (tool, seconds)
        self.tokens: dict[str, int] = {}  # by usage.KINDS


def count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1
