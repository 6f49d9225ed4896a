"""Twelve-factor configuration: every setting is an environment variable with a sane default.

``VARIABLES`` is the single source of truth: ``Settings.from_env`` reads it, the README's table is
printed from it (``python -m gateway.config``; a test keeps the two identical), and every value is
validated from its declaration. Adding a setting is one ``Var`` plus its ``Settings`` field::

    Var("GATEWAY_EXAMPLE_MS", "example_ms", 500, parse_int, "What it does.", minimum=0, maximum=10_000)

``parse`` turns the environment string into a value (``parse_int``, ``parse_float``, ``parse_bool``,
``str``...); then the declaration's ``choices``, ``minimum``/``maximum``, ``url`` (allowed schemes),
``required``, ``file`` and ``check`` apply, to values from the environment, to the defaults and to
``from_env``'s overrides alike. Each wrong setting yields one line naming the variable, the value
and what is allowed, and ``from_env`` raises one ``ConfigError`` listing all of them. Secrets are
marked so their values never reach a message or a log line.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

AUDIO_MODES = ("passthrough", "pcm16")
PLAYOUT_MODES = ("paced", "burst")
UNHEARD_ACTIONS = ("truncate", "delete", "skip")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TRY_THE_DEMO = "to try the gateway without any keys: `gateway demo`"


# --------------------------------------------------------------------------- parsers
# Each turns the environment's string into a value or raises ValueError saying what is wrong.
def parse_int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError("not an integer") from None


def parse_float(value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not a boolean")


def parse_upper(value: str) -> str:
    return value.strip().upper()


_bool = parse_bool  # the name this module used before the parsers were public


# --------------------------------------------------------------------------- checks beyond a declaration
def _public_url_problem(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        return "has a query or fragment"
    if parts.path.rstrip("/").endswith(("/twilio/voice", "/twilio/media")):
        return "is the webhook or stream URL, not the base URL (drop the /twilio/... path)"
    return None


def _sid_problem(prefix: str) -> Callable[[str], str | None]:
    """Twilio SIDs: two letters and 32 hex digits (AC… accounts, SK… API keys)."""

    def problem(value: str) -> str | None:
        tail = value[2:]
        if not value.startswith(prefix) or len(tail) != 32 or any(c not in "0123456789abcdef" for c in tail):
            return f"not a Twilio SID ({prefix} and 32 hex digits)"
        return None

    return problem


def _pod_name_problem(value: str) -> str | None:
    ok = len(value) <= 128 and all(c.isascii() and (c.isalnum() or c in ".-_") for c in value)
    return None if ok else "not a name of letters, digits, '.', '-' and '_'"


def _directory_problem(value: str) -> str | None:
    if os.path.exists(value) and not os.path.isdir(value):
        return "exists and is not a directory"
    if not os.path.exists(value) and not os.path.isdir(os.path.dirname(os.path.abspath(value))):
        return "neither a directory nor creatable (its parent does not exist)"
    return None


def _number(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Var:
    """One setting: environment name, ``Settings`` field, default, parser, documentation, and what
    values are allowed (``choices``, ``minimum``/``maximum`` inclusive, ``url`` schemes,
    ``required`` non-empty text, ``file`` = the path of a readable file, ``check`` for anything
    else: returns what is wrong or None). ``allowed`` overrides the generated description."""

    env: str
    field: str
    default: Any
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    url: tuple[str, ...] = ()
    required: bool = False
    file: bool = False
    check: Callable[[Any], str | None] | None = None
    allowed: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)

    def describe(self) -> str:
        """What is allowed, in words (error messages and the README table)."""
        if self.allowed:
            return self.allowed
        if self.choices:
            return "one of " + ", ".join(f"`{c}`" for c in self.choices)
        kind = self.kind
        if kind is bool:
            return "`1` or `0` (also true/false, yes/no, on/off)"
        if kind in (int, float):
            return self._describe_number("an integer" if kind is int else "a number")
        prefix = "" if self.required else "empty or "
        if self.url:
            return prefix + "a " + " or ".join(f"`{s}://`" for s in self.url) + " URL"
        if self.file:
            return prefix + "the path of a readable file"
        return "any non-empty text" if self.required else "any text"

    def _describe_number(self, noun: str) -> str:
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            return f"{noun} from {_number(lo)} to {_number(hi)}"
        if lo is not None:
            return f"{noun} ≥ {_number(lo)}"
        if hi is not None:
            return f"{noun} ≤ {_number(hi)}"
        return noun

    def shown(self, value: Any, raw: str | None = None) -> str:
        """The value as a message may show it: never a secret."""
        if self.secret:
            return "<secret>"
        if raw is None and isinstance(value, str) and self.kind is not str:
            return repr(value)  # a string where a number or boolean belongs
        text = raw if raw is not None else (("1" if value else "0") if isinstance(value, bool) else str(value))
        return text if text and text == text.strip() and " " not in text else repr(text)

    def message(self, problem: str, value: Any, raw: str | None = None, origin: str = "") -> str:
        """One line: variable, value, what is wrong and what is allowed."""
        return (f"{self.env}={self.shown(value, raw)}{origin}: {problem}; "
                f"allowed: {self.describe().replace('`', '')}")

    def problem(self, value: Any) -> str | None:
        """What is wrong with a (parsed) value, or None."""
        kind = self.kind
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            return f"is a {type(value).__name__}, not {'text' if kind is str else kind.__name__}"
        if self.choices and value not in self.choices:
            return "unknown value"
        if kind in (int, float):
            if not math.isfinite(value):
                return "not a finite number"
            if (self.minimum is not None and value < self.minimum) or (
                    self.maximum is not None and value > self.maximum):
                return "out of range"
        if isinstance(value, str):
            return self._text_problem(value)
        return None

    def _text_problem(self, value: str) -> str | None:
        if not value:
            return "must not be empty" if self.required else None
        if self.secret and (value != value.strip() or any(c.isspace() for c in value)):
            return "contains spaces or line breaks (a copy-paste slip?)"
        if self.url:
            parts = urlsplit(value)
            if parts.scheme not in self.url or not parts.hostname:
                return "not a " + " or ".join(f"{s}://" for s in self.url) + " URL with a host"
        if self.file and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            return "no such readable file"
        return self.check(value) if self.check is not None else None


VARIABLES: tuple[Var, ...] = (
    Var("GATEWAY_HOST", "host", "0.0.0.0", str,  # noqa: S104 - a server in a container listens on all interfaces
        "Listening address of the one public port.", required=True),
    Var("GATEWAY_PORT", "port", 8080, parse_int, "The one public port: webhook, media socket, control API, health.",
        minimum=0, maximum=65535),
    Var("GATEWAY_PUBLIC_URL", "public_url", "", str,
        "Public base URL Twilio uses (e.g. `https://gw.example.com`); builds the `<Stream>` URL and the "
        "signed URLs. Empty: derived from the request's Host header (development only).",
        url=("http", "https"), check=_public_url_problem,
        allowed="empty or an `https://` (or `http://`) base URL without query or `/twilio/...` path"),
    Var("GATEWAY_UPSTREAM_URL", "upstream_url", "wss://api.openai.com/v1/realtime?model=gpt-realtime", str,
        "OpenAI Realtime WebSocket URL.", url=("wss", "ws"), required=True),
    Var("OPENAI_API_KEY", "openai_api_key", "", str, "Bearer token for the upstream.", secret=True),
    Var("GATEWAY_UPSTREAM_CA_FILE", "upstream_ca_file", "", str,
        "Extra CA bundle (PEM) trusted for the upstream TLS connection (tests, private proxies).", file=True),
    Var("GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S", "upstream_connect_timeout_s", 10.0, parse_float,
        "Upstream TCP+TLS+WebSocket handshake timeout.", minimum=0.1, maximum=120),
    Var("GATEWAY_MODEL", "model", "gpt-realtime", str, "Model named in `session.update` (must match the URL).",
        required=True),
    Var("GATEWAY_AUDIO_MODE", "audio_mode", "passthrough", str,
        "`passthrough`: μ-law both ways, no transcoding. `pcm16`: PCM16 24 kHz upstream, transcoded here.",
        choices=AUDIO_MODES),
    Var("GATEWAY_INSTRUCTIONS", "instructions", "You are a helpful phone assistant. Keep answers short.", str,
        "Session instructions."),
    Var("GATEWAY_VOICE", "voice", "marin", str, "Output voice.", required=True),
    Var("GATEWAY_GREETING", "greeting", "", str,
        "If set, the assistant speaks first: a `response.create` with these instructions once the session is ready."),
    Var("GATEWAY_VAD_THRESHOLD", "vad_threshold", 0.5, parse_float, "server_vad threshold.", minimum=0, maximum=1),
    Var("GATEWAY_VAD_PREFIX_PADDING_MS", "vad_prefix_padding_ms", 300, parse_int, "server_vad prefix padding.",
        minimum=0, maximum=10_000),
    Var("GATEWAY_VAD_SILENCE_MS", "vad_silence_ms", 500, parse_int, "server_vad silence that ends a turn.",
        minimum=0, maximum=10_000),
    Var("GATEWAY_VAD_CREATE_RESPONSE", "vad_create_response", True, parse_bool, "server_vad `create_response`."),
    Var("GATEWAY_VAD_INTERRUPT_RESPONSE", "vad_interrupt_response", True, parse_bool,
        "server_vad `interrupt_response` (server cancels its response on speech start)."),
    Var("GATEWAY_COALESCE_FRAMES", "coalesce_frames", 1, parse_int,
        "Inbound 20 ms frames per `input_audio_buffer.append` (1 = lowest latency).", minimum=1, maximum=50),
    Var("GATEWAY_PLAYOUT", "playout", "paced", str,
        "`paced`: model audio waits in the gateway and goes to Twilio in chunks, Twilio holding at most "
        "GATEWAY_PLAYOUT_LEAD_MS ahead of its playhead. `burst`: every delta goes to Twilio at once.",
        choices=PLAYOUT_MODES),
    Var("GATEWAY_PLAYOUT_LEAD_MS", "playout_lead_ms", 300, parse_int,
        "Paced playout: most audio Twilio holds ahead of its playhead (covers the latency to Twilio and the "
        "pacer's period with room to spare).", minimum=100, maximum=5000),
    Var("GATEWAY_PLAYOUT_CHUNK_MS", "playout_chunk_ms", 100, parse_int,
        "Paced playout: audio per media message (one mark each) once the lead is built.", minimum=20, maximum=1000),
    Var("GATEWAY_MIN_INTERRUPTION_MS", "min_interruption_ms", 0, parse_int,
        "False-interruption resume (paced playout): caller speech during the assistant's audio pauses it; shorter "
        "than this, playback resumes where the caller stopped hearing and the noise is deleted from the "
        "conversation, else the interruption completes. 0: interrupt at once. Agents may set their own.",
        minimum=0, maximum=5000),
    Var("GATEWAY_TWILIO_LATENCY_MS", "twilio_latency_ms", 50.0, parse_float,
        "Initial one-way latency guess to Twilio until the first mark probe measures it.", minimum=0, maximum=2000),
    Var("GATEWAY_UNHEARD_ITEM_ACTION", "unheard_item_action", "truncate", str,
        "What to do on barge-in with an assistant item the caller heard nothing of: `truncate` (at 0 ms), "
        "`delete` the item, or `skip`.", choices=UNHEARD_ACTIONS),
    Var("GATEWAY_MAX_FRAME_BYTES", "max_frame_bytes", 65536, parse_int,
        "Largest WebSocket message accepted from Twilio; larger closes that call.",
        minimum=4096, maximum=16 * 1024 * 1024),
    Var("GATEWAY_MAX_PENDING_AUDIO_MS", "max_pending_audio_ms", 2000, parse_int,
        "Caller audio buffered while the upstream session is being opened.", minimum=0, maximum=60_000),
    Var("TWILIO_AUTH_TOKEN", "twilio_auth_token", "", str,
        "Validates `X-Twilio-Signature`. Required unless GATEWAY_INSECURE_DEV=1.", secret=True),
    Var("GATEWAY_CALL_TOKEN_SECRET", "call_token_secret", "", str,
        "HMAC key for per-call media tokens, shared by all instances. Default: derived from TWILIO_AUTH_TOKEN.",
        secret=True),
    Var("GATEWAY_CALL_TOKEN_TTL_S", "call_token_ttl_s", 60, parse_int,
        "Lifetime of the per-call token between the webhook and the media socket's `start`.",
        minimum=1, maximum=3600),
    Var("GATEWAY_CONTROL_TOKEN", "control_token", "", str,
        "Bearer token of the control API (`POST /calls/{sid}/interrupt`); empty disables the API.", secret=True),
    Var("GATEWAY_INSECURE_DEV", "insecure_dev", False, parse_bool,
        "Allow running without TWILIO_AUTH_TOKEN (no signature or call-token checks). Never in production."),
    Var("GATEWAY_AGENTS_FILE", "agents_file", "", str,
        "Agent profiles (TOML: agents, tools, routes, prices; see docs/agents.md). Empty: one agent from the "
        "variables above. Reloaded on SIGHUP.", file=True),
    Var("GATEWAY_TOOL_SECRET", "tool_secret", "", str,
        "HMAC key of `X-Gateway-Signature` on tool requests and call-record webhooks (required with HTTP tools).",
        secret=True),
    Var("GATEWAY_CALL_RECORDS_DIR", "call_records_dir", "", str,
        "Directory of the call records (one JSONL file per UTC day). Empty: not written to disk.",
        check=_directory_problem, allowed="empty or a directory (created if its parent exists)"),
    Var("GATEWAY_CALL_RECORD_WEBHOOK", "call_record_webhook", "", str,
        "URL that receives each call record as a signed JSON POST (retried with backoff). Empty: off.",
        url=("http", "https")),
    Var("TWILIO_ACCOUNT_SID", "twilio_account_sid", "", str,
        "Twilio account for the REST API (hang-up, transfer, outbound calls). Empty: end_call closes the media "
        "stream instead, transfer_call is unavailable.", check=_sid_problem("AC"),
        allowed="empty or an account SID (AC and 32 hex digits)"),
    Var("TWILIO_API_KEY", "twilio_api_key", "", str,
        "Twilio API key SID (`SK…`) for the REST API; with TWILIO_API_SECRET. Default: the account SID with "
        "TWILIO_AUTH_TOKEN.", check=_sid_problem("SK"), allowed="empty or an API key SID (SK and 32 hex digits)"),
    Var("TWILIO_API_SECRET", "twilio_api_secret", "", str, "Secret of TWILIO_API_KEY.", secret=True),
    Var("TWILIO_API_BASE_URL", "twilio_api_base_url", "https://api.twilio.com", str,
        "Base URL of Twilio's REST API (tests and the demo point it at the REST simulator).",
        url=("http", "https"), required=True),
    Var("GATEWAY_REDIS_URL", "redis_url", "", str,
        "Redis of the control plane shared by every pod (call registry, routed commands, cluster-wide token "
        "replay protection and GATEWAY_CLUSTER_MAX_CALLS). Empty: the pod is the whole control plane.",
        secret=True, url=("redis", "rediss")),
    Var("GATEWAY_CLUSTER_MAX_CALLS", "cluster_max_calls", 0, parse_int,
        "Concurrent calls across every pod (e.g. the Twilio account's limit); needs GATEWAY_REDIS_URL. 0: no cap.",
        minimum=0),
    Var("GATEWAY_POD_NAME", "pod_name", "", str,
        "This instance's name in the call registry. Empty: the host name (the pod's name on Kubernetes).",
        check=_pod_name_problem, allowed="empty or up to 128 letters, digits, '.', '-', '_'"),
    Var("GATEWAY_UPSTREAM_PING_IDLE_S", "upstream_ping_idle_s", 10.0, parse_float,
        "Upstream keepalive: a WebSocket ping after this long without data (0 = no pings).", minimum=0, maximum=300),
    Var("GATEWAY_UPSTREAM_PING_TIMEOUT_S", "upstream_ping_timeout_s", 5.0, parse_float,
        "Upstream keepalive: no pong within this (at most the idle time) ends the session, and a reconnect "
        "follows: a half-open upstream is found within IDLE + TIMEOUT.", minimum=0.5, maximum=300),
    Var("GATEWAY_UPSTREAM_RECONNECT_ATTEMPTS", "upstream_reconnect_attempts", 3, parse_int,
        "Mid-call upstream failures (close, reset, keepalive, fatal error): new sessions tried before the call "
        "ends (0 = end at once).", minimum=0, maximum=20),
    Var("GATEWAY_UPSTREAM_RECONNECT_BUDGET_S", "upstream_reconnect_budget_s", 10.0, parse_float,
        "The time those attempts may take in all, from the failure.", minimum=0.5, maximum=120),
    Var("GATEWAY_RECONNECT_LINE", "reconnect_line", "", str,
        "What the assistant says after a reconnect (instructions of a short out-of-band response). Empty: "
        "nothing (the caller hears a short pause)."),
    Var("GATEWAY_MAX_SESSION_S", "max_session_s", 3300.0, parse_float,
        "Roll a call over to a fresh upstream session after this long (or 5 min before the server's "
        "`expires_at`, if earlier), at a quiet moment, with the conversation replayed.", minimum=30, maximum=86400),
    Var("GATEWAY_UPSTREAM_STALL_S", "upstream_stall_s", 10.0, parse_float,
        "An upstream that stops reading for this long is replaced (reconnect); meanwhile caller audio is held "
        "(GATEWAY_MAX_PENDING_AUDIO_MS, oldest dropped).", minimum=1, maximum=300),
    Var("GATEWAY_TWILIO_STALL_MS", "twilio_stall_ms", 5000, parse_int,
        "A Twilio socket that stops reading for this long while audio is sent to it is closed (outcome "
        "twilio_stalled); meanwhile at most 6x this much audio is buffered for it.",
        minimum=500, maximum=60_000),
    Var("GATEWAY_LOG_LEVEL", "log_level", "INFO", parse_upper, "Log level (any case).", choices=LOG_LEVELS),
    Var("GATEWAY_WORKERS", "workers", 0, parse_int, "Worker processes of `gateway serve` (0 = one per CPU core).",
        minimum=0, maximum=256),
    Var("GATEWAY_MAX_CALLS", "max_calls", 2000, parse_int,
        "Concurrent calls per pod (all workers of one `gateway serve`); beyond it the webhook answers a busy "
        "`<Reject>`, `/readyz` 503.", minimum=1),
    Var("GATEWAY_DRAIN_TIMEOUT_S", "drain_timeout_s", 600.0, parse_float,
        "On SIGTERM: how long active calls may continue before they are ended.", minimum=0),
)
BY_FIELD: dict[str, Var] = {var.field: var for var in VARIABLES}


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"  # noqa: S104 - see VARIABLES
    port: int = 8080
    public_url: str = ""
    upstream_url: str = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    openai_api_key: str = dataclasses.field(default="", repr=False)
    upstream_ca_file: str = ""
    upstream_connect_timeout_s: float = 10.0
    model: str = "gpt-realtime"
    audio_mode: str = "passthrough"
    instructions: str = "You are a helpful phone assistant. Keep answers short."
    voice: str = "marin"
    greeting: str = ""
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_ms: int = 500
    vad_create_response: bool = True
    vad_interrupt_response: bool = True
    coalesce_frames: int = 1
    playout: str = "paced"
    playout_lead_ms: int = 300
    playout_chunk_ms: int = 100
    min_interruption_ms: int = 0
    twilio_latency_ms: float = 50.0
    unheard_item_action: str = "truncate"
    max_frame_bytes: int = 65536
    max_pending_audio_ms: int = 2000
    twilio_auth_token: str = dataclasses.field(default="", repr=False)
    call_token_secret: str = dataclasses.field(default="", repr=False)
    call_token_ttl_s: int = 60
    control_token: str = dataclasses.field(default="", repr=False)
    insecure_dev: bool = False
    agents_file: str = ""
    tool_secret: str = dataclasses.field(default="", repr=False)
    call_records_dir: str = ""
    call_record_webhook: str = ""
    twilio_account_sid: str = ""
    twilio_api_key: str = ""
    twilio_api_secret: str = dataclasses.field(default="", repr=False)
    twilio_api_base_url: str = "https://api.twilio.com"
    redis_url: str = dataclasses.field(default="", repr=False)
    cluster_max_calls: int = 0
    pod_name: str = ""
    upstream_ping_idle_s: float = 10.0
    upstream_ping_timeout_s: float = 5.0
    upstream_reconnect_attempts: int = 3
    upstream_reconnect_budget_s: float = 10.0
    reconnect_line: str = ""
    max_session_s: float = 3300.0
    upstream_stall_s: float = 10.0
    twilio_stall_ms: int = 5000
    log_level: str = "INFO"
    workers: int = 0
    max_calls: int = 2000
    drain_timeout_s: float = 600.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every variable of ``VARIABLES`` (missing ones keep their default), apply
        ``overrides`` (field name → value, e.g. from command-line options), then validate it all.

        Raises one ``ConfigError`` whose ``problems`` has a line per wrong setting."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        raw: dict[str, str] = {}
        problems: dict[str, str] = {}  # by field: one line per wrong setting
        for var in VARIABLES:
            text = env.get(var.env)
            if text is None:
                continue
            raw[var.field] = text
            try:
                values[var.field] = var.parse(text)
            except ValueError as exc:
                problems[var.field] = var.message(str(exc), text, text)
        unknown = sorted(set(overrides) - set(BY_FIELD))
        if unknown:
            raise TypeError(f"Settings.from_env: unknown setting(s) {', '.join(unknown)}")
        values.update(overrides)
        for field in overrides:
            raw.pop(field, None)
            problems.pop(field, None)
        for var in VARIABLES:
            if var.field in problems:
                continue
            value = values.get(var.field, var.default)
            problem = var.problem(value)
            if problem is not None:
                origin = " (given to Settings.from_env)" if var.field in overrides else ""
                problems[var.field] = var.message(problem, value, raw.get(var.field), origin)
        # Checks across settings see the wrong values replaced by their defaults: all problems at once.
        settings = cls(**{k: v for k, v in values.items() if k not in problems})
        lines = [problems[var.field] for var in VARIABLES if var.field in problems]
        lines += settings.cross_problems(wrong=set(problems))
        if lines:
            raise ConfigError(*lines)
        return settings

    def validate(self) -> None:
        """Raise ``ConfigError`` listing every problem (``problems()``)."""
        problems = self.problems()
        if problems:
            raise ConfigError(*problems)

    def problems(self) -> list[str]:
        """Every wrong setting (one line each), then what is wrong across settings."""
        out: list[str] = []
        for var in VARIABLES:
            value = getattr(self, var.field)
            problem = var.problem(value)
            if problem is not None:
                out.append(var.message(problem, value))
        return out + self.cross_problems()

    def cross_problems(self, wrong: Collection[str] = ()) -> list[str]:
        """What is wrong across settings; checks involving a field in ``wrong`` (already reported
        on its own) are skipped."""
        out: list[str] = []
        involved = {"twilio_auth_token", "insecure_dev"}
        if (self.upstream_ping_idle_s and self.upstream_ping_timeout_s > self.upstream_ping_idle_s
                and not {"upstream_ping_idle_s", "upstream_ping_timeout_s"} & set(wrong)):
            out.append("GATEWAY_UPSTREAM_PING_TIMEOUT_S must not exceed GATEWAY_UPSTREAM_PING_IDLE_S (picows waits for "
                       "a pong at most one idle period)")
        if (self.playout_chunk_ms * 2 > self.playout_lead_ms
                and not {"playout_chunk_ms", "playout_lead_ms"} & set(wrong)):
            out.append("GATEWAY_PLAYOUT_CHUNK_MS must be at most half of GATEWAY_PLAYOUT_LEAD_MS (a chunk is sent when "
                       "the lead has room for it; what remains must outlast the latency to Twilio)")
        if self.min_interruption_ms and self.playout != "paced" and not {"min_interruption_ms", "playout"} & set(wrong):
            out.append("GATEWAY_MIN_INTERRUPTION_MS needs GATEWAY_PLAYOUT=paced: only audio the gateway holds can "
                       "be paused and resumed")
        if self.cluster_max_calls and not self.redis_url and "redis_url" not in wrong:
            out.append("GATEWAY_CLUSTER_MAX_CALLS needs GATEWAY_REDIS_URL: only the cluster's registry can count "
                       "every pod's calls")
        if self.twilio_api_key and not self.twilio_api_secret and "twilio_api_secret" not in wrong:
            out.append("TWILIO_API_KEY is set without TWILIO_API_SECRET: the REST API needs both")
        if not self.twilio_auth_token and not self.insecure_dev and not involved & set(wrong):
            out.append(
                "TWILIO_AUTH_TOKEN is not set: refusing to start without Twilio signature validation. Set it to "
                "your Twilio account's Auth Token, or GATEWAY_INSECURE_DEV=1 for local development only "
                f"({TRY_THE_DEMO})."
            )
        return out

    @property
    def secure(self) -> bool:
        """Signatures and call tokens are enforced (a Twilio auth token is configured)."""
        return bool(self.twilio_auth_token)

    @property
    def twilio_rest_credentials(self) -> tuple[str, str] | None:
        """(username, password) for Twilio's REST API, or None when it is not configured."""
        if not self.twilio_account_sid:
            return None
        if self.twilio_api_key:  # an API key (with its secret) is preferred to the auth token
            return self.twilio_api_key, self.twilio_api_secret
        if self.twilio_auth_token:
            return self.twilio_account_sid, self.twilio_auth_token
        return None

    @property
    def token_key(self) -> bytes:
        """Key for the per-call media tokens; any instance with the same config can verify them."""
        if self.call_token_secret:
            return self.call_token_secret.encode()
        import hashlib
        import hmac

        return hmac.new(self.twilio_auth_token.encode(), b"gateway-call-token-v1", hashlib.sha256).digest()

    def public(self) -> dict[str, Any]:
        """The settings with secrets masked, for the startup log line."""
        out: dict[str, Any] = {}
        for var in VARIABLES:
            value = getattr(self, var.field)
            out[var.field] = ("<set>" if value else "<unset>") if var.secret else value
        return out


def markdown_table() -> str:
    """The README's configuration table (``python -m gateway.config`` prints it)."""
    rows = ["| Variable | Default | Allowed | Meaning |", "|---|---|---|---|"]
    for var in VARIABLES:
        default = "" if var.secret else var.default
        if isinstance(default, bool):
            default = "1" if default else "0"
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{var.env}` | {shown} | {var.describe()} | {var.doc} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m gateway.config",
        description="Print the configuration table (Markdown): every environment variable the gateway "
                    "reads, its default, the values allowed and what it does. The README's table is this "
                    "output; `gateway check` validates the current environment.")
    parser.parse_args(argv)
    print(markdown_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
