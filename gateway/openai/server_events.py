"""OpenAI Realtime server events the gateway acts on, parsed into typed events.

Output audio deltas never come here (``_fastpath.decode_audio_delta`` / ``delta_to_pcmu`` parse
them in one C call). Every other server event is identified by its ``type`` first (a small
msgspec decode that skips the rest); only the types the gateway acts on are then decoded in full
against their shapes (``docs/protocols/openai-realtime.md``). Unknown fields are ignored (the
API adds fields), unknown types return ``None``.

Two kinds of bad input: a message that is not a JSON object with a string ``type`` means the
peer is not speaking the protocol (``INVALID_MESSAGE``: the call cannot trust the session), a
known event with ill-typed fields is counted and skipped (``INVALID_FIELDS``).
"""
from __future__ import annotations

import msgspec

from ..errors import UpstreamProtocolError
from ..outcomes import UpstreamViolation


class ResponseRef(msgspec.Struct, frozen=True):
    id: str
    status: str = ""
    metadata: dict[str, str] | None = None


class CachedDetails(msgspec.Struct, frozen=True):
    text_tokens: int = 0
    audio_tokens: int = 0


class InputDetails(msgspec.Struct, frozen=True):
    text_tokens: int = 0
    audio_tokens: int = 0
    cached_tokens: int = 0
    cached_tokens_details: CachedDetails | None = None


class OutputDetails(msgspec.Struct, frozen=True):
    text_tokens: int = 0
    audio_tokens: int = 0


class Usage(msgspec.Struct, frozen=True):
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: InputDetails | None = None
    output_token_details: OutputDetails | None = None


class OutputItem(msgspec.Struct, frozen=True):
    """An item of ``response.done``'s output: a message, or a function call to run."""

    type: str
    id: str = ""
    status: str = ""
    call_id: str = ""
    name: str = ""
    arguments: str = ""


class FinishedResponse(msgspec.Struct, frozen=True):
    id: str
    status: str = ""
    output: list[OutputItem] = []
    usage: Usage | None = None
    metadata: dict[str, str] | None = None


class ItemRef(msgspec.Struct, frozen=True):
    id: str
    type: str = ""


class ErrorInfo(msgspec.Struct, frozen=True):
    type: str = ""
    code: str | None = None
    message: str = ""
    param: str | None = None
    event_id: str | None = None


class SpeechStarted(msgspec.Struct, frozen=True):
    audio_start_ms: int = 0
    item_id: str = ""


class ResponseCreated(msgspec.Struct, frozen=True):
    response: ResponseRef


class OutputItemAdded(msgspec.Struct, frozen=True):
    response_id: str
    item: ItemRef


class OutputAudioDone(msgspec.Struct, frozen=True):
    item_id: str
    response_id: str = ""


class ResponseDone(msgspec.Struct, frozen=True):
    response: FinishedResponse


class InputCommitted(msgspec.Struct, frozen=True):
    """A caller turn became a conversation item (its transcript, if any, follows later)."""

    item_id: str


class InputTranscription(msgspec.Struct, frozen=True):
    item_id: str
    transcript: str
    content_index: int = 0


class OutputTranscript(msgspec.Struct, frozen=True):
    item_id: str
    transcript: str
    response_id: str = ""
    content_index: int = 0


class Error(msgspec.Struct, frozen=True):
    error: ErrorInfo


class SessionUpdated(msgspec.Struct, frozen=True):
    pass


class SessionInfo(msgspec.Struct, frozen=True):
    expires_at: int = 0  # unix seconds; the session stops working then (the 60-minute cap)


class SessionCreated(msgspec.Struct, frozen=True):
    session: SessionInfo = SessionInfo()


class SpeechStopped(msgspec.Struct, frozen=True):
    audio_end_ms: int = 0
    item_id: str = ""


ServerEvent = (SpeechStarted | ResponseCreated | OutputItemAdded | OutputAudioDone | ResponseDone | Error
               | SessionUpdated | InputCommitted | InputTranscription | OutputTranscript | SessionCreated
               | SpeechStopped)

# type → the struct it decodes into. ``response.audio.done`` is the beta name of the GA event.
EVENT_TYPES: dict[str, type[ServerEvent]] = {
    "input_audio_buffer.speech_started": SpeechStarted,
    "response.created": ResponseCreated,
    "response.output_item.added": OutputItemAdded,
    "response.output_audio.done": OutputAudioDone,
    "response.audio.done": OutputAudioDone,
    "response.done": ResponseDone,
    "error": Error,
    "session.updated": SessionUpdated,
    "session.created": SessionCreated,
    "input_audio_buffer.speech_stopped": SpeechStopped,
    "input_audio_buffer.committed": InputCommitted,
    "conversation.item.input_audio_transcription.completed": InputTranscription,
    "response.output_audio_transcript.done": OutputTranscript,
}


class _Envelope(msgspec.Struct):
    type: str


_envelope = msgspec.json.Decoder(_Envelope)
_decoders = {name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()}


def parse(message: bytes | memoryview) -> ServerEvent | None:
    """The typed event of one server message, None for types the gateway does not act on."""
    try:
        kind = _envelope.decode(message).type
    except (msgspec.DecodeError, RecursionError) as exc:
        raise UpstreamProtocolError(f"not a JSON object with a string 'type': {exc}",
                                    UpstreamViolation.INVALID_MESSAGE) from None
    decoder = _decoders.get(kind)
    if decoder is None:
        return None
    try:
        return decoder.decode(message)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise UpstreamProtocolError(f"{kind}: {exc}", UpstreamViolation.INVALID_FIELDS) from None
