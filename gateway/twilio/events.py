"""Twilio Media Streams messages, parsed and validated into typed events.

The per-frame case (``media`` while streaming) never comes here: ``_fastpath.media_to_append``
parses and re-frames it in one C call. Everything else (``start``, ``mark`` echoes, ``dtmf``,
``stop``, and media before the upstream is up) is decoded here with msgspec against the shapes
in ``docs/protocols/twilio.md``; unknown fields are ignored (Twilio adds fields over time),
wrong types are a protocol violation, and an unknown ``event`` is reported as ``Unknown`` so the
call can count it and go on.
"""
from __future__ import annotations

import msgspec

import _fastpath as fp
from _fastpath import ProtocolError

from ..errors import TwilioProtocolError
from ..outcomes import TwilioViolation as V

MULAW_8K_MONO = ("audio/x-mulaw", 8000, 1)


class MediaFormat(msgspec.Struct, frozen=True):
    encoding: str
    sampleRate: int  # noqa: N815 - Twilio's field name
    channels: int


class StartInfo(msgspec.Struct, frozen=True):
    streamSid: str  # noqa: N815
    callSid: str  # noqa: N815
    mediaFormat: MediaFormat  # noqa: N815
    accountSid: str = ""  # noqa: N815
    tracks: list[str] = []
    customParameters: dict[str, str] = {}  # noqa: N815 - <Parameter> values are strings


class MarkInfo(msgspec.Struct, frozen=True):
    name: str


class DtmfInfo(msgspec.Struct, frozen=True):
    digit: str
    track: str = "inbound_track"


class _Message(msgspec.Struct, frozen=True, tag_field="event"):
    pass


class Connected(_Message, tag="connected", frozen=True):
    protocol: str = ""


class Start(_Message, tag="start", frozen=True):
    streamSid: str  # noqa: N815
    start: StartInfo


class Mark(_Message, tag="mark", frozen=True):
    streamSid: str  # noqa: N815
    mark: MarkInfo


class Dtmf(_Message, tag="dtmf", frozen=True):
    streamSid: str  # noqa: N815
    dtmf: DtmfInfo


class Stop(_Message, tag="stop", frozen=True):
    streamSid: str  # noqa: N815


class _MediaShape(_Message, tag="media", frozen=True):
    """Recognises ``media``; its payload is then decoded strictly by the fast path (``Media``)."""

    streamSid: str  # noqa: N815


class Media(msgspec.Struct, frozen=True):
    """Caller audio that arrived outside the per-frame path (before the upstream is up)."""

    audio: bytes


class Unknown(msgspec.Struct, frozen=True):
    """An event this gateway does not know: counted and ignored."""

    event: str


class _Envelope(msgspec.Struct):
    event: str


TwilioEvent = Connected | Start | Mark | Dtmf | Stop | Media | Unknown
_KNOWN = Connected | Start | Mark | Dtmf | Stop | _MediaShape
_decoder = msgspec.json.Decoder(_KNOWN)
_envelope = msgspec.json.Decoder(_Envelope)
_INVALID = {"start": V.INVALID_START, "mark": V.INVALID_MARK, "media": V.INVALID_MEDIA}
_KNOWN_NAMES = frozenset(("connected", "start", "mark", "dtmf", "stop", "media"))


def parse(message: bytes | memoryview, stream_sid: str | None) -> TwilioEvent:
    """One message from Twilio as a typed event; ``TwilioProtocolError`` if it breaks the protocol.

    ``stream_sid`` is the stream's sid once ``start`` was accepted (None before): every later
    message must carry it, and nothing but ``connected``/``start`` may come before it.
    """
    try:
        event = _decoder.decode(message)
    except msgspec.ValidationError as exc:
        unknown = _unknown_or_invalid(message, exc)
        if stream_sid is None:
            raise TwilioProtocolError(f"{unknown.event!r} before 'start'", V.BEFORE_START) from None
        return unknown
    except msgspec.DecodeError as exc:
        raise TwilioProtocolError(f"malformed JSON: {exc}", V.INVALID_JSON) from None
    except RecursionError:  # nesting deeper than any message of Twilio's (msgspec's own limit)
        raise TwilioProtocolError("message nested too deep", V.INVALID_JSON) from None
    if isinstance(event, Mark | Dtmf | Stop | _MediaShape):
        if stream_sid is None:
            raise TwilioProtocolError(f"{_name(event)!r} before 'start'", V.BEFORE_START)
        if event.streamSid != stream_sid:
            raise TwilioProtocolError("streamSid does not match this stream", V.WRONG_STREAM_SID)
        if isinstance(event, _MediaShape):  # caller audio outside the per-frame path
            try:
                audio = fp.decode_media(message, stream_sid)
            except ProtocolError as exc:
                raise TwilioProtocolError(str(exc), V.INVALID_MEDIA) from None
            return Media(audio or b"")
    elif isinstance(event, Start):
        _check_start(event)
    return event


def _check_start(event: Start) -> None:
    info = event.start
    if not event.streamSid or info.streamSid != event.streamSid:
        raise TwilioProtocolError("'start' without a consistent streamSid", V.INVALID_START)
    if not info.callSid:
        raise TwilioProtocolError("'start' without callSid", V.INVALID_START)
    fmt = info.mediaFormat
    if (fmt.encoding, fmt.sampleRate, fmt.channels) != MULAW_8K_MONO:
        raise TwilioProtocolError(f"unsupported mediaFormat {fmt!r}", V.UNSUPPORTED_FORMAT)


def _unknown_or_invalid(message: bytes | memoryview, exc: msgspec.ValidationError) -> Unknown:
    """A valid JSON document that is not a known event: an unknown event, or a broken known one."""
    try:
        name = _envelope.decode(message).event
    except (msgspec.DecodeError, RecursionError):
        raise TwilioProtocolError("message is not an object with a string 'event'", V.INVALID_EVENT) from None
    kind = _INVALID.get(name)
    if kind is None and name in _KNOWN_NAMES:
        kind = V.INVALID_EVENT
    if kind is not None:
        raise TwilioProtocolError(f"{name!r}: {exc}", kind) from None
    return Unknown(name[:40])


def _name(event: msgspec.Struct) -> str:
    return str(type(event).__struct_config__.tag)

