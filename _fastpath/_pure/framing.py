"""Message framing: Twilio Media Streams JSON and OpenAI Realtime JSON carrying base64 audio.

Readable reference for ``_fastpath._compiled.framing``. Every message is parsed in full with
orjson here; the compiled twin skips the parse for the compact shapes the peers actually send
and must give the same results (docs/protocols/twilio.md#what-the-fast-path-assumes, openai-realtime.md#audio-deltas).
"""
from __future__ import annotations

import binascii
from typing import TYPE_CHECKING

import orjson

from ..errors import ProtocolError
from .g711 import ulaw_decode, ulaw_encode

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from .resample import Resampler

__all__ = [
    "decode_audio_delta",
    "decode_mark",
    "decode_media",
    "delta_to_pcmu",
    "encode_append",
    "encode_clear",
    "encode_mark",
    "encode_media",
    "media_to_append",
    "pcmu_to_append",
]

_AUDIO_DELTA_TYPES = frozenset({"response.output_audio.delta", "response.audio.delta"})
_APPEND_HEAD = b'{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = b'"}'


def _loads(message: str | Buffer) -> object:
    """Parse a peer message; anything orjson rejects is the peer's fault."""
    if not isinstance(message, (bytes, bytearray, memoryview, str)):
        message = memoryview(message)  # other bytes-like objects; TypeError for non-buffers
    try:
        return orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None


def _b64decode(text: str) -> bytes:
    """Strict base64 (no whitespace, correct padding): a sloppy payload is a broken peer.

    Python 3.11's strict mode still accepts '=' after a complete final quad ("QUJD=", CPython
    gh-118314, fixed upstream); that is rejected here as in fixed versions and the compiled twin.
    """
    unpadded = text.rstrip("=")
    if unpadded != text and len(unpadded) % 4 == 0:
        raise ProtocolError("invalid base64 audio: padding after a complete group")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters
        raise ProtocolError(f"invalid base64 audio: {exc}") from None


def _b64encode(audio: Buffer) -> bytes:
    return binascii.b2a_base64(audio, newline=False)


def _json_str(value: object) -> bytes:
    """JSON string literal (with quotes), escaped exactly as orjson does."""
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    return orjson.dumps(value)


def _twilio_message(message: str | Buffer) -> dict[str, object]:
    """A Twilio message: a JSON object whose ``event`` is a string."""
    msg = _loads(message)
    if not isinstance(msg, dict):
        raise ProtocolError("Twilio message is not a JSON object")
    if not isinstance(msg.get("event"), str):
        raise ProtocolError('Twilio message without a string "event"')
    return msg


def _media_payload(message: str | Buffer, stream_sid: str | None) -> str | None:
    """The base64 payload string of a Twilio ``media`` message, None for other events."""
    msg = _twilio_message(message)
    if msg["event"] != "media":
        return None
    if stream_sid is not None and msg.get("streamSid") != stream_sid:
        raise ProtocolError("media message for another (or no) streamSid")
    media = msg.get("media")
    payload = media.get("payload") if isinstance(media, dict) else None
    if not isinstance(payload, str):
        raise ProtocolError('media message without a string "media.payload"')
    return payload


def decode_media(message: str | Buffer, stream_sid: str | None = None) -> bytes | None:
    """μ-law bytes of a Twilio ``media`` message; None for every other event.

    With ``stream_sid`` the message must carry that top-level ``streamSid`` (audio of another
    stream on this socket would be a protocol violation, not something to play).
    """
    payload = _media_payload(message, stream_sid)
    return None if payload is None else _b64decode(payload)


def decode_mark(message: str | Buffer, stream_sid: str) -> str | None:
    """``mark.name`` of a Twilio ``mark`` message (the echo of a mark the gateway sent); None for
    every other event.

    The message must carry ``stream_sid`` as its top-level ``streamSid`` and a string
    ``mark.name``; anything else about a mark (or malformed JSON) is a ProtocolError. The JSON is
    read as orjson reads it: of duplicate keys the last one counts (the compiled twin reads
    Twilio's own compact shape without a parse, twilio.md#message-shapes, with the same results).
    """
    if not isinstance(stream_sid, str):
        raise TypeError(f"stream_sid must be str, not {type(stream_sid).__name__}")
    msg = _twilio_message(message)
    if msg["event"] != "mark":
        return None
    if msg.get("streamSid") != stream_sid:
        raise ProtocolError("mark message for another (or no) streamSid")
    mark = msg.get("mark")
    name = mark.get("name") if isinstance(mark, dict) else None
    if not isinstance(name, str):
        raise ProtocolError('mark message without a string "mark.name"')
    return name


def encode_media(stream_sid: str, audio: Buffer) -> bytes:
    """Twilio outbound ``media`` message carrying μ-law 8 kHz ``audio``."""
    return (b'{"event":"media","streamSid":' + _json_str(stream_sid)
            + b',"media":{"payload":"' + _b64encode(audio) + b'"}}')


def encode_mark(stream_sid: str, name: str) -> bytes:
    """Twilio outbound ``mark`` message; Twilio echoes ``name`` once the audio before it played."""
    return (b'{"event":"mark","streamSid":' + _json_str(stream_sid)
            + b',"mark":{"name":' + _json_str(name) + b"}}")


def encode_clear(stream_sid: str) -> bytes:
    """Twilio outbound ``clear`` message (drop all buffered outbound audio)."""
    return b'{"event":"clear","streamSid":' + _json_str(stream_sid) + b"}"


def encode_append(audio: Buffer) -> bytes:
    """OpenAI ``input_audio_buffer.append`` carrying ``audio`` in the session's input format."""
    return _APPEND_HEAD + _b64encode(audio) + _APPEND_TAIL


def _delta_fields(message: str | Buffer) -> tuple[str, int, str] | None:
    """``(item_id, content_index, base64 delta)`` of an output-audio delta, None for other events."""
    msg = _loads(message)
    if not isinstance(msg, dict):
        raise ProtocolError("OpenAI message is not a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError('OpenAI message without a string "type"')
    if kind not in _AUDIO_DELTA_TYPES:
        return None
    item_id, content_index, delta = msg.get("item_id"), msg.get("content_index"), msg.get("delta")
    # bool is an int subclass but never a valid index
    if not isinstance(item_id, str) or type(content_index) is not int or not isinstance(delta, str):
        raise ProtocolError(f"{kind} without string item_id, integer content_index, string delta")
    return item_id, content_index, delta


def decode_audio_delta(message: str | Buffer) -> tuple[str, int, bytes] | None:
    """``(item_id, content_index, audio)`` of ``response.output_audio.delta`` (or the beta name
    ``response.audio.delta``); None for every other event type."""
    fields = _delta_fields(message)
    if fields is None:
        return None
    item_id, content_index, delta = fields
    return item_id, content_index, _b64decode(delta)


def _check_rates(resampler: Resampler, src_rate: int, dst_rate: int) -> None:
    if (resampler.src_rate, resampler.dst_rate) != (src_rate, dst_rate):
        raise ValueError(f"need a Resampler({src_rate}, {dst_rate}), "
                         f"got Resampler({resampler.src_rate}, {resampler.dst_rate})")


def pcmu_to_append(ulaw: Buffer, resampler: Resampler) -> bytes:
    """μ-law 8 kHz → ``input_audio_buffer.append`` with PCM16 LE 24 kHz.

    ``resampler`` is the caller's Resampler(8000, 24000) for this call; it keeps filter state
    between frames, so every frame of the call must go through the same one.
    """
    _check_rates(resampler, 8000, 24000)
    return encode_append(resampler.process(ulaw_decode(ulaw)))


def media_to_append(message: str | Buffer, resampler: Resampler | None = None,
                    stream_sid: str | None = None) -> bytes | None:
    """Twilio ``media`` message → OpenAI ``input_audio_buffer.append``; None for other events.

    Without a resampler the session takes μ-law (``audio/pcmu``): the payload characters are
    forwarded verbatim once they are known to be strict base64. With a Resampler(8000, 24000)
    the audio is transcoded to PCM16 24 kHz as in :func:`pcmu_to_append`.
    """
    payload = _media_payload(message, stream_sid)
    if payload is None:
        return None
    ulaw = _b64decode(payload)
    if resampler is None:
        return _APPEND_HEAD + payload.encode("ascii") + _APPEND_TAIL
    return pcmu_to_append(ulaw, resampler)


def delta_to_pcmu(message: str | Buffer, resampler: Resampler) -> tuple[str, int, bytes, int] | None:
    """PCM16 24 kHz output-audio delta → ``(item_id, content_index, μ-law 8 kHz, pcm_byte_count)``.

    ``resampler`` is the caller's Resampler(24000, 8000); None for non-delta events.
    ``pcm_byte_count`` is what the server sent, for playout accounting in its units.
    """
    _check_rates(resampler, 24000, 8000)
    fields = _delta_fields(message)
    if fields is None:
        return None
    item_id, content_index, delta = fields
    pcm = _b64decode(delta)
    if len(pcm) % 2:
        raise ProtocolError(f"PCM16 delta with an odd byte count ({len(pcm)})")
    return item_id, content_index, ulaw_encode(resampler.process(pcm)), len(pcm)
