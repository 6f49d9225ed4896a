"""The Realtime session an agent profile asks for (the ``session`` of ``session.update``).

Everything is set explicitly, also what has a server default, so a call behaves the same when the
server's defaults change (``create_response``/``interrupt_response`` are observed true but not
documented as such).
"""
from __future__ import annotations

from typing import Any

from ..config import Settings
from ..openai.events import PCM24K, PCMU
from .profiles import Agent, Tool, TurnDetection, default_turn_detection

END_CALL = {
    "type": "function", "name": "end_call",
    "description": ("End the phone call. Say a short goodbye first, in the same response: the call ends "
                    "once the caller has heard it."),
    "parameters": {"type": "object", "properties": {
        "reason": {"type": "string", "description": "Why the call ends, in a few words."}}},
}


def transfer_call(targets: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "function", "name": "transfer_call",
        "description": ("Transfer the caller to another line (a human, another department). Tell the caller "
                        "first, in the same response; the transfer happens once they have heard it."),
        "parameters": {"type": "object", "properties": {
            "target": {"type": "string", "enum": list(targets), "description": "Where to transfer the call."}},
            "required": ["target"]},
    }


def audio_mode(agent: Agent, settings: Settings) -> str:
    return agent.audio_mode or settings.audio_mode


def model(agent: Agent, settings: Settings) -> str:
    return agent.model or settings.model


def min_interruption_ms(agent: Agent, settings: Settings) -> int:
    """False-interruption resume threshold (0: off); only paced playout can pause and resume."""
    value = settings.min_interruption_ms if agent.min_interruption_ms is None else agent.min_interruption_ms
    return value if settings.playout == "paced" else 0


def turn_detection(agent: Agent, settings: Settings) -> TurnDetection:
    return agent.turn_detection or default_turn_detection(settings)


def session_config(agent: Agent, tools: dict[str, Tool], settings: Settings) -> dict[str, Any]:
    """GA ``session`` object for one call of this agent."""
    fmt = PCMU if audio_mode(agent, settings) == "passthrough" else PCM24K
    td = _turn_detection(turn_detection(agent, settings))
    if min_interruption_ms(agent, settings):
        # The gateway decides whether speech interrupts and when to answer (turns.Turns).
        td["create_response"] = td["interrupt_response"] = False
    audio_input: dict[str, Any] = {"format": fmt, "turn_detection": td}
    if agent.noise_reduction is not None:
        audio_input["noise_reduction"] = {"type": agent.noise_reduction}
    # Caller turns are transcribed for the record, and for replaying the conversation into a new
    # session after an upstream failure or at a rollover (the new session cannot hear old audio).
    if agent.transcripts or settings.upstream_reconnect_attempts > 0:
        transcription: dict[str, Any] = {"model": agent.transcription_model}
        if agent.transcription_language:
            transcription["language"] = agent.transcription_language
        audio_input["transcription"] = transcription
    session: dict[str, Any] = {
        "type": "realtime",
        "model": model(agent, settings),
        "instructions": agent.instructions,
        "output_modalities": ["audio"],
        "audio": {"input": audio_input, "output": {"format": fmt, "voice": agent.voice}},
    }
    declared = [tool_schema(name, agent, tools) for name in agent.tools]
    if declared:
        session["tools"] = declared
        session["tool_choice"] = "auto"
    return session


def tool_schema(name: str, agent: Agent, tools: dict[str, Tool]) -> dict[str, Any]:
    if name == "end_call":
        return END_CALL
    if name == "transfer_call":
        return transfer_call(agent.transfer_targets)
    tool = tools[name]
    return {"type": "function", "name": name, "description": tool.description, "parameters": tool.parameters}


def _turn_detection(td: TurnDetection) -> dict[str, Any]:
    out: dict[str, Any] = {"type": td.type}
    if td.type == "server_vad":
        for key in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
            value = getattr(td, key)
            if value is not None:
                out[key] = value
    elif td.eagerness is not None:
        out["eagerness"] = td.eagerness
    out["create_response"] = td.create_response
    out["interrupt_response"] = td.interrupt_response
    return out
