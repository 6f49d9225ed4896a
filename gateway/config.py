"""Twelve-factor configuration: every setting is an environment variable with a sane default.

``VARIABLES`` is the single source of truth: ``Settings.from_env`` reads it, and a test checks that
the README's table lists exactly these names. Secrets are marked so they never reach a log line.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

AUDIO_MODES = ("passthrough", "pcm16")
UNHEARD_ACTIONS = ("truncate", "delete", "skip")


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Var:
    env: str
    field: str
    default: Any
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False


VARIABLES: tuple[Var, ...] = (
    Var("GATEWAY_HOST", "host", "0.0.0.0", str,  # noqa: S104 - a server in a container listens on all interfaces
        "Listening address of the one public port."),
    Var("GATEWAY_PORT", "port", 8080, int, "The one public port: webhook, media socket, control API, health."),
    Var("GATEWAY_PUBLIC_URL", "public_url", "", str,
        "Public base URL Twilio uses (e.g. `https://gw.example.com`); builds the `<Stream>` URL and the "
        "signed URLs. Empty: derived from the request's Host header (development only)."),
    Var("GATEWAY_UPSTREAM_URL", "upstream_url", "wss://api.openai.com/v1/realtime?model=gpt-realtime", str,
        "OpenAI Realtime WebSocket URL."),
    Var("OPENAI_API_KEY", "openai_api_key", "", str, "Bearer token for the upstream.", secret=True),
    Var("GATEWAY_UPSTREAM_CA_FILE", "upstream_ca_file", "", str,
        "Extra CA bundle (PEM) trusted for the upstream TLS connection (tests, private proxies)."),
    Var("GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S", "upstream_connect_timeout_s", 10.0, float,
        "Upstream TCP+TLS+WebSocket handshake timeout."),
    Var("GATEWAY_MODEL", "model", "gpt-realtime", str, "Model named in `session.update` (must match the URL)."),
    Var("GATEWAY_AUDIO_MODE", "audio_mode", "passthrough", str,
        "`passthrough`: μ-law both ways, no transcoding. `pcm16`: PCM16 24 kHz upstream, transcoded here."),
    Var("GATEWAY_INSTRUCTIONS", "instructions", "You are a helpful phone assistant. Keep answers short.", str,
        "Session instructions."),
    Var("GATEWAY_VOICE", "voice", "marin", str, "Output voice."),
    Var("GATEWAY_GREETING", "greeting", "", str,
        "If set, the assistant speaks first: a `response.create` with these instructions once the session is ready."),
    Var("GATEWAY_VAD_THRESHOLD", "vad_threshold", 0.5, float, "server_vad threshold (0..1)."),
    Var("GATEWAY_VAD_PREFIX_PADDING_MS", "vad_prefix_padding_ms", 300, int, "server_vad prefix padding."),
    Var("GATEWAY_VAD_SILENCE_MS", "vad_silence_ms", 500, int, "server_vad silence that ends a turn."),
    Var("GATEWAY_VAD_CREATE_RESPONSE", "vad_create_response", True, _bool, "server_vad `create_response`."),
    Var("GATEWAY_VAD_INTERRUPT_RESPONSE", "vad_interrupt_response", True, _bool,
        "server_vad `interrupt_response` (server cancels its response on speech start)."),
    Var("GATEWAY_COALESCE_FRAMES", "coalesce_frames", 1, int,
        "Inbound 20 ms frames per `input_audio_buffer.append` (1 = lowest latency)."),
    Var("GATEWAY_TWILIO_LATENCY_MS", "twilio_latency_ms", 50.0, float,
        "Initial one-way latency guess to Twilio until the first mark probe measures it."),
    Var("GATEWAY_UNHEARD_ITEM_ACTION", "unheard_item_action", "truncate", str,
        "What to do on barge-in with an assistant item the caller heard nothing of: `truncate` (at 0 ms), "
        "`delete` the item, or `skip`."),
    Var("GATEWAY_MAX_FRAME_BYTES", "max_frame_bytes", 65536, int,
        "Largest WebSocket message accepted from Twilio; larger closes that call."),
    Var("GATEWAY_MAX_PENDING_AUDIO_MS", "max_pending_audio_ms", 2000, int,
        "Caller audio buffered while the upstream session is being opened."),
    Var("TWILIO_AUTH_TOKEN", "twilio_auth_token", "", str,
        "Validates `X-Twilio-Signature`. Required unless GATEWAY_INSECURE_DEV=1.", secret=True),
    Var("GATEWAY_CALL_TOKEN_SECRET", "call_token_secret", "", str,
        "HMAC key for per-call media tokens, shared by all instances. Default: derived from TWILIO_AUTH_TOKEN.",
        secret=True),
    Var("GATEWAY_CALL_TOKEN_TTL_S", "call_token_ttl_s", 60, int,
        "Lifetime of the per-call token between the webhook and the media socket's `start`."),
    Var("GATEWAY_CONTROL_TOKEN", "control_token", "", str,
        "Bearer token of the control API (`POST /calls/{sid}/interrupt`); empty disables the API.", secret=True),
    Var("GATEWAY_INSECURE_DEV", "insecure_dev", False, _bool,
        "Allow running without TWILIO_AUTH_TOKEN (no signature or call-token checks). Never in production."),
    Var("GATEWAY_AGENTS_FILE", "agents_file", "", str,
        "Agent profiles (TOML: agents, tools, routes, prices; see docs/agents.md). Empty: one agent from the "
        "variables above. Reloaded on SIGHUP."),
    Var("GATEWAY_TOOL_SECRET", "tool_secret", "", str,
        "HMAC key of `X-Gateway-Signature` on tool requests and call-record webhooks (required with HTTP tools).",
        secret=True),
    Var("GATEWAY_CALL_RECORDS_DIR", "call_records_dir", "", str,
        "Directory of the call records (one JSONL file per UTC day). Empty: not written to disk."),
    Var("GATEWAY_CALL_RECORD_WEBHOOK", "call_record_webhook", "", str,
        "URL that receives each call record as a signed JSON POST (retried with backoff). Empty: off."),
    Var("TWILIO_ACCOUNT_SID", "twilio_account_sid", "", str,
        "Twilio account for the REST API (hang-up, transfer). Empty: end_call closes the media stream instead, "
        "transfer_call is unavailable."),
    Var("TWILIO_API_KEY", "twilio_api_key", "", str,
        "Twilio API key SID (`SK…`) for the REST API; with TWILIO_API_SECRET. Default: the account SID with "
        "TWILIO_AUTH_TOKEN."),
    Var("TWILIO_API_SECRET", "twilio_api_secret", "", str, "Secret of TWILIO_API_KEY.", secret=True),
    Var("TWILIO_API_BASE_URL", "twilio_api_base_url", "https://api.twilio.com", str,
        "Base URL of Twilio's REST API (tests and the demo point it at the REST simulator)."),
    Var("GATEWAY_LOG_LEVEL", "log_level", "INFO", str, "DEBUG, INFO, WARNING, ERROR."),
    Var("GATEWAY_WORKERS", "workers", 0, int, "Worker processes of `gateway serve` (0 = one per CPU core)."),
    Var("GATEWAY_MAX_CALLS", "max_calls", 2000, int,
        "Concurrent calls per worker; beyond it media sockets get 503 and the webhook a busy `<Reject>`."),
    Var("GATEWAY_DRAIN_TIMEOUT_S", "drain_timeout_s", 600.0, float,
        "On SIGTERM: how long active calls may continue before they are ended."),
)


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
    log_level: str = "INFO"
    workers: int = 0
    max_calls: int = 2000
    drain_timeout_s: float = 600.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every variable of ``VARIABLES`` (missing ones keep their default), then validate."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = env.get(var.env)
            if raw is None:
                continue
            try:
                values[var.field] = var.parse(raw)
            except ValueError as exc:
                shown = "<secret>" if var.secret else repr(raw)
                raise ConfigError(f"{var.env}={shown}: {exc}") from None
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.audio_mode not in AUDIO_MODES:
            raise ConfigError(f"GATEWAY_AUDIO_MODE must be one of {AUDIO_MODES}, got {self.audio_mode!r}")
        if self.unheard_item_action not in UNHEARD_ACTIONS:
            raise ConfigError(f"GATEWAY_UNHEARD_ITEM_ACTION must be one of {UNHEARD_ACTIONS}")
        if not 1 <= self.coalesce_frames <= 50:
            raise ConfigError("GATEWAY_COALESCE_FRAMES must be within 1..50")
        if not 0 <= self.port < 65536:
            raise ConfigError("GATEWAY_PORT out of range")
        if self.workers < 0 or self.max_calls < 1 or self.drain_timeout_s < 0:
            raise ConfigError("GATEWAY_WORKERS >= 0, GATEWAY_MAX_CALLS >= 1, GATEWAY_DRAIN_TIMEOUT_S >= 0")
        if self.public_url:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
                raise ConfigError("GATEWAY_PUBLIC_URL must be http(s)://host[:port][/prefix] without a query")
        if urlsplit(self.upstream_url).scheme not in ("ws", "wss"):
            raise ConfigError("GATEWAY_UPSTREAM_URL must be a ws:// or wss:// URL")
        for name, url in (("GATEWAY_CALL_RECORD_WEBHOOK", self.call_record_webhook),
                          ("TWILIO_API_BASE_URL", self.twilio_api_base_url)):
            parts = urlsplit(url)
            if url and (parts.scheme not in ("http", "https") or not parts.netloc):
                raise ConfigError(f"{name} must be an http(s) URL")
        if self.twilio_api_key and not self.twilio_api_secret:
            raise ConfigError("TWILIO_API_KEY needs TWILIO_API_SECRET")
        if not self.twilio_auth_token and not self.insecure_dev:
            raise ConfigError(
                "TWILIO_AUTH_TOKEN is not set: refusing to start without Twilio signature validation. "
                "Set GATEWAY_INSECURE_DEV=1 for local development only."
            )

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
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for var in VARIABLES:
        default = "" if var.secret else var.default
        if isinstance(default, bool):
            default = "1" if default else "0"
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{var.env}` | {shown} | {var.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
