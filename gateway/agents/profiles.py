"""Agent profiles: who answers a call, with which instructions, voice, tools and behaviour.

Profiles come from the TOML file named by ``GATEWAY_AGENTS_FILE`` (read with ``tomllib``,
validated with msgspec when ``gateway serve`` starts and on every ``SIGHUP``), or, without a file,
from the environment variables as one agent named ``default`` (what the gateway did before
profiles existed). The file's shape is documented in ``docs/agents.md``; a wrong file is refused
with one line naming the file, the key and the reason (``AgentsFileError``).
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from ..config import Settings
from ..errors import ConfigError

BUILTIN_TOOLS = frozenset({"end_call", "transfer_call"})
DEFAULT_AGENT = "default"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_SIP = re.compile(r"sips?:[^\s<>\"]+@[^\s<>\"]+")


class AgentsFileError(ConfigError):
    """The agents file cannot be used; the message is one line: file, key, reason."""


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class TurnDetection(_Strict, frozen=True):
    """``audio.input.turn_detection`` of the session; unset knobs take the server's defaults."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = None  # server_vad, 0..1
    prefix_padding_ms: int | None = None  # server_vad
    silence_duration_ms: int | None = None  # server_vad
    eagerness: Literal["low", "medium", "high", "auto"] | None = None  # semantic_vad
    create_response: bool = True
    interrupt_response: bool = True


class Filler(_Strict, frozen=True):
    """What the caller hears while a tool has not answered after ``after_ms``."""

    after_ms: int = 1200
    kind: Literal["speech", "tone", "none"] = "speech"
    instructions: str = "In a few words, tell the caller you are checking. Do not answer the question yet."


class Agent(_Strict, frozen=True):
    instructions: str
    voice: str = "marin"
    greeting: str = ""  # if set, the agent speaks first: a response.create with these instructions
    tools: tuple[str, ...] = ()
    transfer_targets: tuple[str, ...] = ()  # the only targets transfer_call may dial
    dtmf: Literal["forward", "ignore"] = "ignore"
    transcripts: bool = False  # input transcription + the call record's transcript
    model: str | None = None  # default: GATEWAY_MODEL
    audio_mode: Literal["passthrough", "pcm16"] | None = None  # default: GATEWAY_AUDIO_MODE
    turn_detection: TurnDetection | None = None  # default: the GATEWAY_VAD_* variables
    noise_reduction: Literal["near_field", "far_field"] | None = None
    transcription_model: str = "gpt-4o-mini-transcribe"
    transcription_language: str | None = None
    max_call_s: float | None = None  # the agent hangs up after this long
    min_interruption_ms: int | None = None  # false-interruption resume; default: GATEWAY_MIN_INTERRUPTION_MS
    filler: Filler = Filler()


class Tool(_Strict, frozen=True):
    """An HTTP tool: the gateway POSTs the call to ``url`` (signed) and returns the body to the model."""

    description: str
    url: str
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float = 5.0


class Price(_Strict, frozen=True):
    """USD per million tokens, as published for the model."""

    text_input: float = 0.0
    cached_text_input: float = 0.0
    audio_input: float = 0.0
    cached_audio_input: float = 0.0
    text_output: float = 0.0
    audio_output: float = 0.0


# OpenAI's published prices (USD per 1M tokens) at the time of writing; override them per model
# in the agents file's [prices."<model>"] table when they change.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-realtime": Price(text_input=4.0, cached_text_input=0.4, audio_input=32.0, cached_audio_input=0.4,
                          text_output=16.0, audio_output=64.0),
    "gpt-realtime-mini": Price(text_input=0.6, cached_text_input=0.06, audio_input=10.0, cached_audio_input=0.3,
                               text_output=2.4, audio_output=20.0),
}


class AgentsFile(_Strict, frozen=True):
    agents: dict[str, Agent]
    tools: dict[str, Tool] = {}
    routes: dict[str, str] = {}  # "default" or a called number (the webhook's To) -> agent name
    prices: dict[str, Price] = {}


class Agents:
    """The agents of one configuration, immutable: a reload builds a new one, calls keep theirs."""

    def __init__(self, agents: dict[str, Agent], tools: dict[str, Tool], routes: dict[str, str],
                 prices: dict[str, Price], source: str) -> None:
        self.agents = agents
        self.tools = tools
        self.routes = routes
        self.prices = {**DEFAULT_PRICES, **prices}
        self.source = source  # the file, or "environment"
        self.default = routes.get("default") or next(iter(agents))

    def route(self, called: str, requested: str | None) -> tuple[str, bool]:
        """The agent for a call to ``called``, or the webhook's ``?agent=``; (name, known request)."""
        if requested:
            if requested in self.agents:
                return requested, True
            return self.default, False
        return self.routes.get(called, self.default), True

    def get(self, name: str) -> tuple[str, Agent]:
        """The named agent, or the default one if it is gone (a reload removed it mid-call)."""
        if name in self.agents:
            return name, self.agents[name]
        return self.default, self.agents[self.default]

    @property
    def http_tools_used(self) -> bool:
        return any(t in self.tools for agent in self.agents.values() for t in agent.tools)


def from_settings(settings: Settings) -> Agents:
    """Without an agents file: one agent from the environment variables, as before profiles existed."""
    agent = Agent(
        instructions=settings.instructions, voice=settings.voice, greeting=settings.greeting,
        turn_detection=default_turn_detection(settings),
    )
    return Agents({DEFAULT_AGENT: agent}, {}, {}, {}, "environment")


def default_turn_detection(settings: Settings) -> TurnDetection:
    return TurnDetection(
        type="server_vad", threshold=settings.vad_threshold, prefix_padding_ms=settings.vad_prefix_padding_ms,
        silence_duration_ms=settings.vad_silence_ms, create_response=settings.vad_create_response,
        interrupt_response=settings.vad_interrupt_response,
    )


def load(settings: Settings) -> Agents:
    """The agents in force: ``GATEWAY_AGENTS_FILE`` if set, else the environment's one agent."""
    if not settings.agents_file:
        return from_settings(settings)
    return load_file(Path(settings.agents_file), settings)


def load_file(path: Path, settings: Settings) -> Agents:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AgentsFileError(f"agents file {path}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AgentsFileError(f"agents file {path}: not valid TOML: {exc}") from None
    parsed = _convert(path, raw)
    problems = list(_problems(parsed, settings))
    if problems:
        key, reason = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise AgentsFileError(f"agents file {path}: {key}: {reason}{more}")
    routes = dict(parsed.routes)
    return Agents(dict(parsed.agents), dict(parsed.tools), routes, dict(parsed.prices), str(path))


def _convert(path: Path, raw: dict[str, Any]) -> AgentsFile:
    """msgspec validation, one table entry at a time so an error names its entry (msgspec's own
    paths do not show dict keys)."""
    tables: dict[str, type] = {"agents": Agent, "tools": Tool, "prices": Price}
    for section, value in raw.items():
        if section not in (*tables, "routes"):
            raise AgentsFileError(f"agents file {path}: {section}: unknown table (expected agents, tools, routes, "
                                  "prices)")
        if not isinstance(value, dict):
            raise AgentsFileError(f"agents file {path}: {section}: must be a table")
        kind = tables.get(section)
        for name, entry in value.items():
            try:
                msgspec.convert(entry, kind or str)
            except msgspec.ValidationError as exc:
                message, _, where = str(exc).partition(" - at `$")
                key = ".".join(p for p in (section, name, where.rstrip("`").lstrip(".")) if p)
                raise AgentsFileError(f"agents file {path}: {key}: {message}") from None
    try:
        return msgspec.convert(raw, AgentsFile)
    except msgspec.ValidationError as exc:  # e.g. no [agents] table at all
        message, _, where = str(exc).partition(" - at `$")
        raise AgentsFileError(f"agents file {path}: {where.rstrip('`').lstrip('.') or '(top level)'}: "
                              f"{message}") from None


def _problems(f: AgentsFile, settings: Settings) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not f.agents:
        out.append(("agents", "at least one agent is required"))
    out.extend((name, "names are 1-64 letters, digits, '-' or '_'") for name in [*f.agents, *f.tools]
               if not _NAME.fullmatch(name))
    out.extend((f"tools.{name}", f"{name} is built in and cannot be redefined") for name in f.tools
               if name in BUILTIN_TOOLS)
    for name, tool in f.tools.items():
        out += _tool_problems(f"tools.{name}", tool)
    for name, agent in f.agents.items():
        out += _agent_problems(f"agents.{name}", agent, f.tools, settings)
    for called, target in f.routes.items():
        if target not in f.agents:
            out.append((f"routes.{called}", f"no agent named {target!r}"))
        elif called != "default" and not (_E164.fullmatch(called) or _SIP.fullmatch(called)):
            out.append((f"routes.{called}", "route keys are 'default' or a called number in E.164 (+15551234567)"))
    if settings.tool_secret == "" and any(t in f.tools for a in f.agents.values() for t in a.tools):
        out.append(("tools", "GATEWAY_TOOL_SECRET must be set: tool requests are signed with it"))
    return out


def _tool_problems(key: str, tool: Tool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    parts = urlsplit(tool.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        out.append((f"{key}.url", f"must be an http(s) URL, got {tool.url!r}"))
    if not 0 < tool.timeout_s <= 60:
        out.append((f"{key}.timeout_s", "must be within (0, 60] seconds"))
    if tool.parameters.get("type") != "object":
        out.append((f"{key}.parameters", 'must be a JSON schema with type = "object"'))
    if not tool.description.strip():
        out.append((f"{key}.description", "the model needs a description to know when to call it"))
    return out


def _agent_problems(key: str, agent: Agent, tools: dict[str, Tool], settings: Settings) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    builtins = ", ".join(sorted(BUILTIN_TOOLS))
    out.extend((f"{key}.tools", f"no tool named {tool!r} (define [tools.{tool}] or use a built-in: {builtins})")
               for tool in agent.tools if tool not in tools and tool not in BUILTIN_TOOLS)
    if "transfer_call" in agent.tools and not agent.transfer_targets:
        out.append((f"{key}.transfer_targets", "transfer_call needs at least one allowed target"))
    out.extend((f"{key}.transfer_targets", f"{target!r} is neither E.164 (+15550100) nor a sip: URI")
               for target in agent.transfer_targets if not (_E164.fullmatch(target) or _SIP.fullmatch(target)))
    td = agent.turn_detection
    if td is not None:
        if td.threshold is not None and not 0 <= td.threshold <= 1:
            out.append((f"{key}.turn_detection.threshold", "must be within 0..1"))
        vad_only = (td.threshold, td.prefix_padding_ms, td.silence_duration_ms)
        if td.type == "semantic_vad" and any(v is not None for v in vad_only):
            out.append((f"{key}.turn_detection",
                        "threshold/prefix_padding_ms/silence_duration_ms are server_vad knobs"))
        if td.type == "server_vad" and td.eagerness is not None:
            out.append((f"{key}.turn_detection.eagerness", "eagerness is a semantic_vad knob"))
        for field in ("prefix_padding_ms", "silence_duration_ms"):
            value = getattr(td, field)
            if value is not None and not 0 <= value <= 10_000:
                out.append((f"{key}.turn_detection.{field}", "must be within 0..10000 ms"))
    if not 0 <= agent.filler.after_ms <= 60_000:
        out.append((f"{key}.filler.after_ms", "must be within 0..60000 ms"))
    if agent.min_interruption_ms is not None and not 0 <= agent.min_interruption_ms <= 5000:
        out.append((f"{key}.min_interruption_ms", "must be within 0..5000 ms"))
    if agent.min_interruption_ms and settings.playout != "paced":
        out.append((f"{key}.min_interruption_ms", "needs GATEWAY_PLAYOUT=paced (only held audio can be resumed)"))
    if agent.max_call_s is not None and agent.max_call_s <= 0:
        out.append((f"{key}.max_call_s", "must be > 0"))
    if not agent.instructions.strip():
        out.append((f"{key}.instructions", "must not be empty"))
    return out
