"""What ``gateway serve`` and ``gateway check`` tell a person before the first call.

* ``fast_path()``: which ``_fastpath`` implementation runs and why; ``fast_path_refusal()`` is the
  message when only the pure-Python twin is there and ``GATEWAY_NO_EXTENSIONS=1`` did not ask for it.
* ``findings(settings)``: every setting that will make every call fail (or expose the gateway).
* ``Summary``: the configuration in force as structured fields (one JSON log line) and as the
  short table printed on a terminal.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from .agents.profiles import Agents
from .config import TRY_THE_DEMO, Settings
from .http import MEDIA_PATH, VOICE_PATH, is_local_host, media_url

PURE_TWIN_WARNING = "_fastpath: compiled extension not available"  # start of _fastpath's RuntimeWarning


def quiet_fast_path_warning() -> None:
    """The commands report the fast path themselves: drop ``_fastpath``'s import-time warning."""
    warnings.filterwarnings("ignore", message=PURE_TWIN_WARNING, category=RuntimeWarning)


@dataclass(frozen=True)
class FastPath:
    compiled: bool
    requested_pure: bool  # GATEWAY_NO_EXTENSIONS=1
    location: str  # the directory ``_fastpath`` was imported from

    @property
    def label(self) -> str:
        if self.compiled:
            return "compiled"
        if self.requested_pure:
            return "pure Python (GATEWAY_NO_EXTENSIONS=1)"
        return "pure Python (compiled extension missing)"


def fast_path() -> FastPath:
    quiet_fast_path_warning()
    import _fastpath

    requested = os.environ.get("GATEWAY_NO_EXTENSIONS", "") not in ("", "0")
    return FastPath(bool(_fastpath.COMPILED), requested, os.path.dirname(os.path.abspath(_fastpath.__file__ or "")))


def fast_path_refusal(fp: FastPath) -> str | None:
    """Why serving must not start with this fast path, or None."""
    if fp.compiled or fp.requested_pure:
        return None
    return (
        f"the compiled fast path is missing: _fastpath was imported from {fp.location}, which has no built "
        "extension, so every audio frame would run in the slower pure-Python twin. Build it with "
        "`pip install -e .` in a source checkout (or `python setup.py build_ext --inplace`); after a wheel "
        "install, run the installed `gateway` command, not `python -m gateway...` from the source tree. "
        "To run the pure twin on purpose, set GATEWAY_NO_EXTENSIONS=1."
    )


def _url_model(url: str) -> str | None:
    models = parse_qs(urlsplit(url).query).get("model")
    return models[-1] if models else None


@dataclass(frozen=True)
class Finding:
    """A setting that is valid on its own but will hurt: ``fails_calls`` if every call will fail."""

    text: str
    fails_calls: bool = True


def findings(settings: Settings) -> list[Finding]:
    """Settings that will make every call fail, or expose the gateway: one sentence each."""
    out: list[Finding] = []
    if not settings.openai_api_key:
        out.append(Finding("OPENAI_API_KEY is not set: every call will fail at the upstream (HTTP 401). Set it, "
                           f"or {TRY_THE_DEMO.replace('to try', 'try')}."))
    public = urlsplit(settings.public_url)
    if public.scheme == "http" and not is_local_host(public.hostname):
        out.append(Finding(f"GATEWAY_PUBLIC_URL is http:// on a public host: the stream URL is "
                           f"{media_url(settings.public_url)} and Twilio opens only wss:// streams, so every call "
                           "will fail. Use the https:// URL of your tunnel or load balancer."))
    url_model = _url_model(settings.upstream_url)
    if url_model is not None and url_model != settings.model:
        out.append(Finding(f"GATEWAY_MODEL={settings.model} but GATEWAY_UPSTREAM_URL asks for model={url_model}: "
                           "the upstream refuses a session.update that changes the model, so every call will fail. "
                           "Name the same model in both."))
    upstream = urlsplit(settings.upstream_url)
    if upstream.scheme == "ws" and not is_local_host(upstream.hostname):
        out.append(Finding(f"GATEWAY_UPSTREAM_URL is ws:// to {upstream.hostname}: the API key and the calls' "
                           "audio travel unencrypted. Use wss://.", fails_calls=False))
    if settings.insecure_dev and not settings.twilio_auth_token and settings.public_url and \
            not is_local_host(public.hostname):
        out.append(Finding("GATEWAY_INSECURE_DEV=1 on a public URL: Twilio signatures and call tokens are not "
                           "checked, so anyone who finds the URL can open calls at your expense. Set "
                           "TWILIO_AUTH_TOKEN.", fails_calls=False))
    return out


@dataclass
class Summary:
    """The configuration in force (after command-line options), for the startup line or table."""

    settings: Settings
    workers: int
    workers_origin: str  # "--workers", "GATEWAY_WORKERS", "one per CPU core"
    fast: FastPath
    warnings: list[str] = field(default_factory=list)
    agents: Agents | None = None

    @classmethod
    def build(cls, settings: Settings, workers: int, workers_origin: str, fast: FastPath | None = None,
              agents: Agents | None = None) -> Summary:
        return cls(settings, workers, workers_origin, fast or fast_path(), [f.text for f in findings(settings)],
                   agents)

    @property
    def agents_line(self) -> str:
        agents = self.agents
        if agents is None:
            return "(not loaded)"
        names = ", ".join(f"{n}*" if n == agents.default else n for n in agents.agents)
        return f"{names}  (from {agents.source}; * answers by default)"

    @property
    def listen(self) -> str:
        host = self.settings.host
        return f"[{host}]:{self.settings.port}" if ":" in host else f"{host}:{self.settings.port}"

    @property
    def stream_url(self) -> str:
        if self.settings.public_url:
            return media_url(self.settings.public_url)
        return f"wss://<request host>{MEDIA_PATH} (ws:// for localhost and private addresses)"

    @property
    def webhook_url(self) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/") + VOICE_PATH
        return f"https://<your tunnel host>{VOICE_PATH}"

    @property
    def security(self) -> str:
        if self.settings.secure:
            return "secure: Twilio signatures and per-call tokens checked"
        return "INSECURE (GATEWAY_INSECURE_DEV=1): no signature or call-token checks"

    @property
    def control_api(self) -> str:
        return "on (POST /calls/{call_sid}/interrupt)" if self.settings.control_token else \
            "off (GATEWAY_CONTROL_TOKEN not set)"

    def fields(self) -> dict[str, Any]:
        """Structured fields of the startup log line."""
        s = self.settings
        return {
            "listen": self.listen,
            "workers": self.workers,
            "workers_from": self.workers_origin,
            "max_calls_per_pod": s.max_calls,
            "public_url": s.public_url,
            "stream_url": self.stream_url,
            "webhook_url": self.webhook_url,
            "upstream_url": s.upstream_url,
            "model": s.model,
            "openai_api_key": "set" if s.openai_api_key else "unset",
            "audio_mode": s.audio_mode,
            "playout": s.playout,
            "fast_path": "compiled" if self.fast.compiled else "pure",
            "security": "secure" if s.secure else "insecure",
            "control_api": "on" if s.control_token else "off",
            "agents": sorted(self.agents.agents) if self.agents else [],
            "agents_from": self.agents.source if self.agents else "",
            "warnings": list(self.warnings),
            "settings": s.public(),
        }

    def rows(self) -> list[tuple[str, str]]:
        s = self.settings
        plural = "s" if self.workers != 1 else ""
        public = s.public_url or "(empty: rebuilt from each request's headers; development only)"
        mode = "μ-law both ways, no transcoding" if s.audio_mode == "passthrough" else \
            "PCM16 24 kHz upstream, transcoded here"
        return [
            ("listen", (f"{self.listen} · {self.workers} worker{plural} ({self.workers_origin}) · "
                       f"up to {s.max_calls} calls in all")),
            ("public URL", public),
            ("webhook", f"{self.webhook_url}  (Twilio console: A call comes in → Webhook, HTTP POST)"),
            ("stream URL", self.stream_url),
            ("upstream", (f"{s.upstream_url} · model {s.model} · OPENAI_API_KEY "
                         f"{'set' if s.openai_api_key else 'NOT SET'}")),
            ("audio", f"{s.audio_mode} ({mode})"),
            ("playout", self.playout_line),
            ("fast path", self.fast.label),
            ("security", self.security),
            ("control API", self.control_api),
            ("agents", self.agents_line),
        ]

    @property
    def playout_line(self) -> str:
        s = self.settings
        if s.playout == "burst":
            return "burst (every model delta to Twilio at once)"
        resume = (f", caller speech under {s.min_interruption_ms} ms resumes the answer" if s.min_interruption_ms
                  else "")
        return f"paced (Twilio holds ≤ {s.playout_lead_ms} ms ahead, {s.playout_chunk_ms} ms chunks{resume})"

    def table(self) -> str:
        lines = ["gateway serve: configuration in force"]
        lines += [f"  {label:<12} {text}" for label, text in self.rows()]
        lines += [f"  {'WARNING':<12} {w}" for w in self.warnings]
        lines.append("  every setting: `python -m gateway.config` · before a real call: `gateway check`")
        return "\n".join(lines)

    def emit(self, log: Any, stream: TextIO | None = None) -> None:
        """A table on a terminal; otherwise one JSON line with the fields and one warning line each."""
        out = stream or sys.stderr
        if out.isatty():
            print(self.table(), file=out, flush=True)
            return
        log.info("startup summary", extra={"fields": self.fields()})
        for warning in self.warnings:
            log.warning(warning)
