"""Message framing (docs/protocols/twilio.md, openai-realtime.md), both implementations.

References: orjson for JSON, binascii (strict) for base64, and — for the composites — the same
implementation's own primitives chained step by step. ``decode_mark`` is also held to the
gateway's full parse of Twilio messages (gateway.twilio.events.parse), which it replaces for mark
echoes.
"""
from __future__ import annotations

import base64
import binascii
import itertools
import random

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import load

from _fastpath.errors import ProtocolError

# fr is a module (stateless), so sharing it across generated inputs is fine
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
DELTA = "response.output_audio.delta"
BETA_DELTA = "response.audio.delta"


@pytest.fixture
def fr(impl):
    return load(impl, "framing")


# --- references ------------------------------------------------------------------------------

def _strict_b64(text):
    # Python 3.11's strict mode accepts '=' after a complete quad (CPython gh-118314, fixed
    # upstream); both implementations reject it like fixed versions do
    unpadded = text.rstrip("=" if isinstance(text, str) else b"=")
    if unpadded != text and len(unpadded) % 4 == 0:
        raise ProtocolError("base64")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        raise ProtocolError("base64") from None


def _parse(message):
    try:
        return orjson.loads(message)
    except orjson.JSONDecodeError:
        raise ProtocolError("json") from None


def ref_decode_media(message, stream_sid=None):
    msg = _parse(message)
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise ProtocolError("shape")
    if msg["event"] != "media":
        return None
    if stream_sid is not None and msg.get("streamSid") != stream_sid:
        raise ProtocolError("sid")
    media = msg.get("media")
    if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
        raise ProtocolError("payload")
    return _strict_b64(media["payload"])


def ref_decode_mark(message, stream_sid):
    msg = _parse(message)
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise ProtocolError("shape")
    if msg["event"] != "mark":
        return None
    if msg.get("streamSid") != stream_sid:
        raise ProtocolError("sid")
    mark = msg.get("mark")
    if not isinstance(mark, dict) or not isinstance(mark.get("name"), str):
        raise ProtocolError("name")
    return mark["name"]


def ref_decode_delta(message):
    msg = _parse(message)
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("shape")
    if msg["type"] not in (DELTA, BETA_DELTA):
        return None
    item, index, delta = msg.get("item_id"), msg.get("content_index"), msg.get("delta")
    if not isinstance(item, str) or type(index) is not int or not isinstance(delta, str):
        raise ProtocolError("fields")
    return item, index, _strict_b64(delta)


def outcome(fn, *args):
    """Value or exception class, so two implementations/references can be compared."""
    try:
        return fn(*args)
    except ProtocolError:  # a ValueError subclass (errors.py), also caught as such below
        return ProtocolError


# --- message generators ----------------------------------------------------------------------

def twilio_compact(payload: str, sid=SID, seq="4", chunk="2", ts="5", track="inbound") -> bytes:
    """A media message exactly as Twilio writes it (the compiled fast path's template)."""
    return (f'{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"{track}","chunk":"{chunk}",'
            f'"timestamp":"{ts}","payload":"{payload}"}},"streamSid":"{sid}"}}').encode()


def twilio_mark(name: str, sid=SID, seq="4") -> bytes:
    """A mark echo exactly as Twilio writes it: the key order of Twilio's example (twilio.md,
    message shapes), compact (the compiled fast path's template)."""
    return f'{{"event":"mark","sequenceNumber":"{seq}","streamSid":"{sid}","mark":{{"name":"{name}"}}}}'.encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
          "\t": "\\t", "/": "\\/"}


def _u_escape(ch, rnd):
    code = ord(ch)
    units = [code] if code < 0x10000 else [0xD800 + ((code - 0x10000) >> 10),
                                           0xDC00 + ((code - 0x10000) & 0x3FF)]
    return "".join(("\\u%04x" if rnd.random() < 0.5 else "\\u%04X") % u for u in units)


def dump(obj, rnd, ws=0.0, esc=0.0, shuffle=False) -> str:
    """JSON text of obj with random whitespace, escapes and key order (all valid JSON)."""
    def space():
        return rnd.choice([" ", "\n", "\t", "\r\n  "]) if rnd.random() < ws else ""

    def string(s):
        out = []
        for ch in s:
            must = ch in '"\\' or ord(ch) < 0x20
            if must or rnd.random() < esc:
                out.append(_SHORT[ch] if ch in _SHORT and rnd.random() < 0.5 else _u_escape(ch, rnd))
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'

    def value(v):
        if isinstance(v, dict):
            keys = list(v)
            if shuffle:
                rnd.shuffle(keys)
            return "{" + ",".join(space() + string(k) + space() + ":" + space() + value(v[k])
                                  + space() for k in keys) + "}"
        if isinstance(v, list):
            return "[" + ",".join(space() + value(x) + space() for x in v) + "]"
        if isinstance(v, str):
            return string(v)
        return orjson.dumps(v).decode()

    return space() + value(obj) + space()


formatting = st.fixed_dictionaries({
    "ws": st.sampled_from([0.0, 0.0, 0.3]),
    "esc": st.sampled_from([0.0, 0.05, 0.5]),
    "shuffle": st.booleans(),
})
digits = st.integers(0, 10**9).map(str)
ids = st.text(st.characters(codec="utf-8"), max_size=12)
alnum_ids = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1,
                    max_size=40)
audio_bytes = st.binary(max_size=400)


@st.composite
def media_messages(draw):
    """(JSON text, μ-law audio, streamSid) of valid Twilio media messages in any formatting."""
    audio = draw(audio_bytes)
    sid = draw(st.one_of(st.just(SID), alnum_ids, ids))
    msg = {"event": "media", "sequenceNumber": draw(digits),
           "media": {"track": draw(st.sampled_from(["inbound", "outbound", "in bound"])),
                     "chunk": draw(digits), "timestamp": draw(digits), "payload": b64(audio)},
           "streamSid": sid}
    if draw(st.booleans()):
        msg["extra"] = draw(st.sampled_from([None, 1.5, [1, "x"], {"a": True}]))
    return dump(msg, draw(st.randoms()), **draw(formatting)), audio, sid


def as_kind(text: str, kind: str):
    data = text.encode()
    if kind == "str":
        return text
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(b"x" + data)[1:]
    return data


kinds = st.sampled_from(["bytes", "str", "bytearray", "memoryview"])


# --- decode_media ----------------------------------------------------------------------------

@FAST
@given(case=media_messages(), kind=kinds)
def test_decode_media_any_formatting_matches_orjson(fr, case, kind):
    text, audio, sid = case
    msg = as_kind(text, kind)
    assert base64.b64decode(orjson.loads(text)["media"]["payload"]) == audio
    assert fr.decode_media(msg) == audio
    assert fr.decode_media(msg, sid) == audio
    assert type(fr.decode_media(msg)) is bytes


@FAST
@given(audio=audio_bytes, sid=alnum_ids, seq=digits, chunk=digits, ts=digits,
       track=st.text("abcdefghijklmnopqrstuvwxyzABCXYZ", min_size=1, max_size=12), kind=kinds)
def test_decode_media_twilio_compact_shape(fr, audio, sid, seq, chunk, ts, track, kind):
    msg = twilio_compact(b64(audio), sid, seq, chunk, ts, track)
    assert orjson.loads(msg)["streamSid"] == sid
    assert fr.decode_media(as_kind(msg.decode(), kind), sid) == audio
    with pytest.raises(ProtocolError):
        fr.decode_media(msg, sid + "0")
    with pytest.raises(ProtocolError):
        fr.decode_media(msg, sid[:-1])


def test_decode_media_realistic_frame(fr):
    audio = bytes(range(96, 256))  # 160 bytes = 20 ms
    msg = twilio_compact(b64(audio))
    assert len(b64(audio)) == 216
    assert fr.decode_media(msg, SID) == audio


NON_MEDIA = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    {"event": "start", "sequenceNumber": "1",
     "start": {"accountSid": "AC1", "streamSid": SID, "callSid": "CA1", "tracks": ["inbound"],
               "customParameters": {"call_token": "t"},
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
     "streamSid": SID},
    {"event": "dtmf", "streamSid": SID, "sequenceNumber": "5",
     "dtmf": {"track": "inbound_track", "digit": "1"}},
    {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "resp_abc:17"}},
    {"event": "stop", "sequenceNumber": "5", "stop": {"accountSid": "AC1", "callSid": "CA1"},
     "streamSid": SID},
    {"event": "whatever", "media": {"payload": "not base64!"}},
    {"event": "Media", "media": {"payload": "AAAA"}, "streamSid": SID},
    {"event": "", "streamSid": "other"},
]


@FAST
@given(msg=st.sampled_from(NON_MEDIA), fmt=formatting, rnd=st.randoms(), kind=kinds)
def test_decode_media_other_events_are_none(fr, msg, fmt, rnd, kind):
    text = as_kind(dump(msg, rnd, **fmt), kind)
    assert fr.decode_media(text) is None
    assert fr.decode_media(text, SID) is None
    assert fr.media_to_append(text) is None


def test_decode_media_escaped_payload_in_twilio_shape(fr):
    # same template, but the payload holds an escape: valid JSON the fast path must hand over
    msg = twilio_compact("QUJ\\u0044")
    assert fr.decode_media(msg) == b"ABC"
    assert fr.decode_media(twilio_compact("QUJ\\/")) == base64.b64decode("QUJ/")
    assert fr.decode_media(twilio_compact("QU\\/D")) == base64.b64decode("QU/D")


BAD_MEDIA = [
    b"",
    b"   ",
    b"{",
    b"[]",
    b'"media"',
    b"null",
    b"42",
    b"{}",
    b'{"event":1}',
    b'{"event":null,"media":{"payload":""}}',
    b'{"event":"media"}',
    b'{"event":"media","media":null}',
    b'{"event":"media","media":{"payload":null}}',
    b'{"event":"media","media":{"payload":123}}',
    b'{"event":"media","media":"AAAA"}',
    twilio_compact("QUJD").replace(b'},"streamSid"', b'}x,"streamSid"'),
    twilio_compact("QUJD") + b"x",
    twilio_compact("QUJD") + b"}",
    twilio_compact("QUJD")[:-1],
    twilio_compact("QUJD\\"),                  # unterminated: the escaped quote eats the end
    twilio_compact("QUJ\\\""),
    twilio_compact("QUJ"),                     # bad padding
    twilio_compact("QUJD\\n"),                 # whitespace inside base64 (strict)
    twilio_compact("QU JD"),
    twilio_compact("QUJD===="),
    twilio_compact("QUJD="),
    twilio_compact("QQ==QUJD"),                # data after padding
    twilio_compact("QUJ*"),
    twilio_compact("QUJD", seq="0\x01"),       # control character inside a string
    twilio_compact("QUJD").replace(b"QUJD", b"QUJ\xff"),
    twilio_compact("QUJD", sid="MZ\xe9").replace("é".encode(), b"\xe9"),  # not UTF-8
    b'{"event":"media","media":{"payload":"QUJD"},"streamSid":"' + SID.encode() + b'",}',
]


@pytest.mark.parametrize("msg", BAD_MEDIA)
def test_decode_media_malformed_raises(fr, msg):
    for kind in ("bytes", "bytearray", "memoryview"):
        data = {"bytes": msg, "bytearray": bytearray(msg),
                "memoryview": memoryview(b"{" + msg)[1:]}[kind]
        with pytest.raises(ProtocolError) as info:
            fr.decode_media(data)
        assert isinstance(info.value, ValueError)
        with pytest.raises(ProtocolError):
            fr.media_to_append(data)


def test_decode_media_stream_sid_checks(fr):
    good = twilio_compact("QUJD")
    no_sid = b'{"event":"media","media":{"payload":"QUJD"}}'
    num_sid = b'{"event":"media","media":{"payload":"QUJD"},"streamSid":5}'
    assert fr.decode_media(no_sid) == b"ABC"
    for msg, sid in [(good, "MZother"), (good, ""), (good, SID + " "), (no_sid, SID),
                     (num_sid, "5"), (good.decode().replace(SID, "MZé").encode(), "MZe")]:
        with pytest.raises(ProtocolError):
            fr.decode_media(msg, sid)
        with pytest.raises(ProtocolError):
            fr.media_to_append(msg, None, sid)
    assert fr.decode_media(good.decode().replace(SID, "MZé"), "MZé") == b"ABC"


@FAST
@given(case=media_messages(), data=st.data())
def test_decode_media_truncated_and_mutated_agree_with_reference(fr, case, data):
    text, _, sid = case
    raw = text.strip().encode()  # a prefix of a JSON object is never valid JSON
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ProtocolError):
        fr.decode_media(raw[:cut])
    pos = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.sampled_from(b'"\\{}[]:,0aZ=+/ \x00\x1f\xff\xc3') | st.integers(0, 255))
    mutated = raw[:pos] + bytes([new]) + raw[pos + 1:]
    use_sid = data.draw(st.sampled_from([None, sid]))
    assert outcome(fr.decode_media, mutated, use_sid) == outcome(ref_decode_media, mutated, use_sid)


@FAST
@given(audio=st.binary(min_size=1, max_size=60), data=st.data())
def test_decode_media_mutated_twilio_shape_agrees_with_reference(fr, audio, data):
    raw = twilio_compact(b64(audio))
    pos = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.sampled_from(b'"\\{}:,0aZ=+/ \x00\xff') | st.integers(0, 255))
    mutated = raw[:pos] + bytes([new]) + raw[pos + 1:]
    for sid in (None, SID):
        expected = outcome(ref_decode_media, mutated, sid)
        assert outcome(fr.decode_media, mutated, sid) == expected


def test_decode_media_rejects_non_buffers(fr):
    with pytest.raises(TypeError):
        fr.decode_media(12345)
    with pytest.raises(TypeError):
        fr.decode_media(None)


# --- encoders ---------------------------------------------------------------------------------

def test_encoders_exact_shapes(fr):
    assert fr.encode_media(SID, b"\xff\xff\xfe") == (
        b'{"event":"media","streamSid":"' + SID.encode() + b'","media":{"payload":"///+"}}')
    assert fr.encode_mark(SID, "resp_abc:17") == (
        b'{"event":"mark","streamSid":"' + SID.encode() + b'","mark":{"name":"resp_abc:17"}}')
    assert fr.encode_clear(SID) == b'{"event":"clear","streamSid":"' + SID.encode() + b'"}'
    assert fr.encode_append(b"\x00\x01") == b'{"type":"input_audio_buffer.append","audio":"AAE="}'
    assert fr.encode_append(b"") == b'{"type":"input_audio_buffer.append","audio":""}'
    assert fr.encode_media("", b"") == b'{"event":"media","streamSid":"","media":{"payload":""}}'


any_text = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    ['"', "\\", "\x00\x1f\x7f", "a\u2028b", "é😀", "</script>", "\\u0041"])


@FAST
@given(sid=any_text, name=any_text, audio=audio_bytes,
       kind=st.sampled_from(["bytes", "bytearray", "memoryview"]))
def test_encoders_equal_orjson_dumps(fr, sid, name, audio, kind):
    data = {"bytes": audio, "bytearray": bytearray(audio),
            "memoryview": memoryview(b"!" + audio)[1:]}[kind]
    payload = base64.b64encode(audio).decode()
    media = fr.encode_media(sid, data)
    assert type(media) is bytes
    assert media == orjson.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})
    assert fr.encode_mark(sid, name) == orjson.dumps(
        {"event": "mark", "streamSid": sid, "mark": {"name": name}})
    assert fr.encode_clear(sid) == orjson.dumps({"event": "clear", "streamSid": sid})
    assert fr.encode_append(data) == orjson.dumps(
        {"type": "input_audio_buffer.append", "audio": payload})
    # round trips through the readers
    assert fr.decode_media(media, sid) == audio
    assert fr.media_to_append(media, None, sid) == fr.encode_append(audio)
    assert fr.decode_mark(fr.encode_mark(sid, name), sid) == name


def test_encoders_reject_bad_arguments(fr):
    for call in (lambda: fr.encode_media(123, b""), lambda: fr.encode_media(None, b""),
                 lambda: fr.encode_mark(SID, None), lambda: fr.encode_clear(b"MZ1"),
                 lambda: fr.encode_media(SID, "text"), lambda: fr.encode_append(None)):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(TypeError):  # lone surrogate: not encodable as UTF-8 (orjson's error)
        fr.encode_mark(SID, "\ud800")


# --- decode_mark ------------------------------------------------------------------------------

# The names PlayoutLedger gives its marks ("<epoch>:<seq>"), with room to grow ([0-9.:a-z]).
gateway_names = st.text("0123456789.:abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=24)
# Every string the compiled template reads as it is: printable ASCII without '"' and '\'.
plain_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
                     max_size=40)
MARK = twilio_mark("3:17")


@st.composite
def mark_messages(draw):
    """(JSON text, name, streamSid) of valid mark echoes in any formatting, key order, extras."""
    name = draw(gateway_names | any_text)
    sid = draw(st.one_of(st.just(SID), alnum_ids, ids))
    msg = {"event": "mark", "sequenceNumber": draw(digits), "streamSid": sid, "mark": {"name": name}}
    if draw(st.booleans()):
        del msg["sequenceNumber"]
    extras = st.sampled_from([None, True, 1.5, -0, [1, "x"], {"a": {"b": []}}, "é", "\\", "mark"])
    if draw(st.booleans()):
        msg["extra"] = draw(extras)
    if draw(st.booleans()):
        msg["mark"]["extra"] = draw(extras)
    return dump(msg, draw(st.randoms()), **draw(formatting)), name, sid


@FAST
@given(name=gateway_names | plain_text, sid=st.just(SID) | alnum_ids | plain_text, seq=digits, kind=kinds)
def test_decode_mark_twilio_exact_shape(fr, name, sid, seq, kind):
    msg = twilio_mark(name, sid, seq)
    assert orjson.loads(msg) == {"event": "mark", "sequenceNumber": seq, "streamSid": sid, "mark": {"name": name}}
    got = fr.decode_mark(as_kind(msg.decode(), kind), sid)
    assert got == name and type(got) is str
    for other in {sid + "0", sid[:-1], sid.swapcase(), sid + " ", "MZé", ""} - {sid}:
        with pytest.raises(ProtocolError):
            fr.decode_mark(as_kind(msg.decode(), kind), other)


def test_decode_mark_realistic_echo(fr):
    msg = twilio_mark("3:1742", seq="1234")
    assert msg == orjson.dumps({"event": "mark", "sequenceNumber": "1234", "streamSid": SID,
                                "mark": {"name": "3:1742"}})
    assert fr.decode_mark(msg, SID) == "3:1742"
    assert fr.decode_mark(msg.decode(), SID) == "3:1742"
    # what the gateway sends (no sequenceNumber) reads back too
    assert fr.decode_mark(fr.encode_mark(SID, "3:1742"), SID) == "3:1742"


@FAST
@given(case=mark_messages(), kind=kinds)
def test_decode_mark_any_formatting_matches_orjson(fr, case, kind):
    text, name, sid = case
    msg = as_kind(text, kind)
    got = fr.decode_mark(msg, sid)
    assert got == name == ref_decode_mark(text, sid) and type(got) is str
    with pytest.raises(ProtocolError):
        fr.decode_mark(msg, sid + "x")


MARK_SPELLINGS = [  # valid mark echoes outside the template, and their names
    (b" " + MARK, "3:17"),
    (MARK + b"\n", "3:17"),
    (MARK.replace(b'","', b'", "'), "3:17"),
    (MARK.replace(b'":', b'" : '), "3:17"),
    (MARK.replace(b"{", b"{\r\n\t"), "3:17"),
    (twilio_mark("1\\u0037"), "17"),
    (twilio_mark('a\\"b'), 'a"b'),
    (twilio_mark("\\\\"), "\\"),
    (twilio_mark("\\/x\\n"), "/x\n"),
    (twilio_mark("\\ud83d\\ude00"), "😀"),
    (twilio_mark("é€"), "é€"),
    (twilio_mark("\x7f"), "\x7f"),
    (twilio_mark(""), ""),
    (twilio_mark("n", sid=SID[:-1] + "\\u0030"), "n"),
    (twilio_mark("n", seq=""), "n"),
    (twilio_mark("n", seq="x4"), "n"),
    (MARK.replace(b'"sequenceNumber":"4",', b""), "3:17"),
    (MARK.replace(b'"sequenceNumber":"4"', b'"sequenceNumber":4'), "3:17"),
    (MARK.replace(b'"event":"mark"', b'"event":"m\\u0061rk"'), "3:17"),
    (MARK.replace(b'"event"', b'"\\u0065vent"'), "3:17"),
    (MARK.replace(b'{"name"', b'{"x":[1,{"name":5}],"name"'), "3:17"),
    (MARK.replace(b'"3:17"}', b'"3:17","x":null}'), "3:17"),
    (MARK[:-1] + b',"mark2":{"name":5}}', "3:17"),
    (MARK[:-1] + b',"event2":"media"}', "3:17"),
    (MARK.replace(b"3:17", b"3:17\\\\"), "3:17\\"),
]


def test_decode_mark_reordered_spaced_and_escaped(fr):
    fields = orjson.loads(MARK)
    for order in itertools.permutations(fields):
        reordered = {k: fields[k] for k in order}
        for msg in (orjson.dumps(reordered), orjson.dumps(reordered, option=orjson.OPT_INDENT_2)):
            assert fr.decode_mark(msg, SID) == "3:17"
            assert fr.decode_mark(msg.decode(), SID) == "3:17"
    for msg, name in MARK_SPELLINGS:
        assert fr.decode_mark(msg, SID) == name == ref_decode_mark(msg, SID), msg
        assert fr.decode_mark(msg.decode(), SID) == name


def _mark(**fields):
    base = {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "3:17"}}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def _nested(depth: int) -> bytes:
    """The mark echo with an extra field nested ``depth`` arrays deep."""
    return MARK[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"


BAD_MARKS = [
    # not JSON
    b"", b" ", b"{", b"mark", MARK[:1], MARK[:-1], MARK[:-2], MARK[:40],
    MARK + b"}", MARK + b"x", MARK + b",", MARK + b"\x00", MARK.replace(b'"}}', b'",}}'),
    MARK.replace(b'"}}', b'"},}'), b"\xef\xbb\xbf" + MARK, MARK.replace(b"{", b"[", 1),
    MARK.replace(b"3:17", b"3:\x017"), MARK.replace(b"3:17", b"a\tb"), MARK.replace(b"3:17", b"3:\xff"),
    MARK.replace(b"3:17", b"3:\xc3"), MARK.replace(b"3:17", b"\xed\xa0\x80"),
    twilio_mark("3\\"), twilio_mark("\\x41"), twilio_mark("\\ud800"), twilio_mark("\\udc00x"),
    twilio_mark("\\u12"), twilio_mark("3:17\\\\\\"),
    MARK.replace(SID.encode(), SID.encode()[:-1] + b"\xe9"),
    MARK.replace(b'"sequenceNumber":"4"', b'"sequenceNumber":04'),
    MARK.replace(b'"sequenceNumber":"4"', b'"sequenceNumber":NaN'),
    _nested(1100),
    # not an object with a string event
    b"[]", b'"mark"', b"42", b"null", b"{}", b'{"event":null,"mark":{"name":"3:17"}}', b'{"event":["mark"]}',
    b'{"event":1,"streamSid":"x"}', b'{"streamSid":"' + SID.encode() + b'","mark":{"name":"3:17"}}',
    # wrong or missing streamSid
    _mark(streamSid=...), _mark(streamSid=None), _mark(streamSid=5), _mark(streamSid=[SID]),
    _mark(streamSid={"sid": SID}), _mark(streamSid="MZother"), _mark(streamSid=""), _mark(streamSid=SID[:-1]),
    _mark(streamSid=SID + " "), _mark(streamSid=SID.upper()), twilio_mark("3:17", sid="MZother"),
    twilio_mark("3:17", sid=""), twilio_mark("3:17", sid=SID + "\\u0030"),
    # missing or malformed mark
    _mark(mark=...), _mark(mark=None), _mark(mark="3:17"), _mark(mark=["3:17"]), _mark(mark=17), _mark(mark={}),
    _mark(mark={"Name": "3:17"}), _mark(mark={"name": None}), _mark(mark={"name": 17}), _mark(mark={"name": 1.5}),
    _mark(mark={"name": True}), _mark(mark={"name": ["3:17"]}), _mark(mark={"name": {"n": "3:17"}}),
]


@pytest.mark.parametrize("msg", BAD_MARKS)
def test_decode_mark_malformed_raises(fr, msg):
    assert outcome(ref_decode_mark, msg, SID) is ProtocolError  # the case really is invalid
    data = [msg, bytearray(msg), memoryview(b"{" + msg)[1:]]
    try:
        data.append(msg.decode())
    except UnicodeDecodeError:
        pass
    for message in data:
        with pytest.raises(ProtocolError) as info:
            fr.decode_mark(message, SID)
        assert isinstance(info.value, ValueError)


NON_MARK = [m for m in NON_MEDIA if m["event"] != "mark"] + [
    orjson.loads(twilio_compact("QUJD")),
    {"event": "media", "media": {"payload": "not base64"}, "streamSid": "MZother"},
    {"event": "Mark", "streamSid": SID, "mark": {"name": "3:17"}},
    {"event": "mark ", "streamSid": SID, "mark": {"name": "3:17"}},
    {"event": "marks", "streamSid": "MZother", "mark": None},
    {"event": "clear", "streamSid": SID},
    {"event": "stop", "streamSid": 5, "mark": {"name": 5}},
]


@FAST
@given(msg=st.sampled_from(NON_MARK), fmt=formatting, rnd=st.randoms(), kind=kinds)
def test_decode_mark_other_events_are_none(fr, msg, fmt, rnd, kind):
    text = as_kind(dump(msg, rnd, **fmt), kind)
    assert fr.decode_mark(text, SID) is None
    assert fr.decode_mark(text, "MZother") is None  # the streamSid of other events is not looked at


def test_decode_mark_media_is_none(fr):
    for audio in (bytes(range(96, 256)), b"", b"\xff" * 800):
        msg = twilio_compact(b64(audio))
        assert fr.decode_mark(msg, SID) is None
        assert fr.decode_mark(msg, "MZother") is None
        assert fr.decode_mark(msg.decode(), SID) is None
    # Twilio's media shape whose payload is valid JSON but not plain, or not base64: still media
    for payload in ("QUJ\\u0044", "QU\\/D", "not base64!", "é"):
        assert fr.decode_mark(twilio_compact(payload), SID) is None
    # ... or not a JSON string at all
    for payload in ("QUJD\\", "QU\x01D", "QU\\xD", "QU\x7fD\\"):
        with pytest.raises(ProtocolError):
            fr.decode_mark(twilio_compact(payload), SID)
    with pytest.raises(ProtocolError):
        fr.decode_mark(twilio_compact("QUJD").replace(b"QUJD", b"QU\xffD"), SID)


@FAST
@given(case=mark_messages(), name=gateway_names, audio=st.binary(max_size=40), data=st.data())
def test_decode_mark_truncated_and_mutated_agree_with_reference(fr, case, name, audio, data):
    text, _, sid = case
    for raw, stream_sid in ((text.strip().encode(), sid), (twilio_mark(name), SID), (twilio_compact(b64(audio)), SID)):
        cut = data.draw(st.integers(0, len(raw) - 1))
        with pytest.raises(ProtocolError):  # a prefix of a JSON object is never valid JSON
            fr.decode_mark(raw[:cut], stream_sid)
        for _ in range(3):
            pos = data.draw(st.integers(0, len(raw) - 1))
            new = data.draw(st.sampled_from(b'"\\{}[]:,0aZ.:/ \x00\x1f\x7f\xff\xc3') | st.integers(0, 255))
            mutated = raw[:pos] + bytes([new]) + raw[pos + 1:]
            assert outcome(fr.decode_mark, mutated, stream_sid) == outcome(ref_decode_mark, mutated, stream_sid)


def test_decode_mark_rejects_bad_arguments(fr):
    for call in (lambda: fr.decode_mark(MARK, None), lambda: fr.decode_mark(MARK, SID.encode()),
                 lambda: fr.decode_mark(None, SID), lambda: fr.decode_mark(12345, SID),
                 lambda: fr.decode_mark(MARK)):
        with pytest.raises(TypeError):
            call()


class _NoFullParse:
    """Stands in for orjson inside the compiled module: a full parse fails the test."""

    JSONDecodeError = orjson.JSONDecodeError
    dumps = staticmethod(orjson.dumps)

    @staticmethod
    def loads(message):
        raise AssertionError(f"full parse of {bytes(message)[:50]!r}")


def test_compiled_reads_twilio_marks_and_media_without_a_full_parse(monkeypatch):
    """The template paths: a mark echo is read, a media message is None for decode_mark, and a
    mark echo is None for decode_media/media_to_append, all without building a JSON tree."""
    c = load("compiled", "framing")
    resampler = load("compiled", "resample").Resampler(8000, 24000)
    media = twilio_compact(b64(bytes(range(96, 256))))
    monkeypatch.setattr(c, "orjson", _NoFullParse)
    assert c.decode_mark(MARK, SID) == "3:17"
    assert c.decode_mark(MARK.decode(), SID) == "3:17"
    assert c.decode_mark(twilio_mark(""), SID) == ""
    with pytest.raises(ProtocolError):
        c.decode_mark(MARK, "MZother")
    assert c.decode_mark(media, SID) is None
    assert c.decode_media(MARK) is None and c.decode_media(MARK, SID) is None
    assert c.media_to_append(MARK, None, SID) is None
    assert c.media_to_append(MARK, resampler, "MZother") is None
    with pytest.raises(AssertionError, match="full parse"):  # the stand-in really is in place
        c.decode_mark(MARK.replace(b'"4"', b'"4" '), SID)


# --- decode_mark against the gateway's full parse ----------------------------------------------
# gateway.twilio.events.parse (msgspec) is what decode_mark replaces for mark echoes. On every
# message both read the same way (valid UTF-8, no duplicate keys, ...) they must agree: the same
# name, or both reject. decode_mark's None ("not a mark") may meet any outcome of the full parse.

def _full_parse(message: bytes, stream_sid: str):
    from gateway.errors import TwilioProtocolError
    from gateway.twilio import events

    try:
        event = events.parse(message, stream_sid)
    except TwilioProtocolError:
        return ProtocolError
    return event.mark.name if isinstance(event, events.Mark) else None


def _agrees_with_full_parse(fr, message: bytes, stream_sid: str) -> bool:
    got, full = outcome(fr.decode_mark, message, stream_sid), _full_parse(message, stream_sid)
    return got == full or (got is None and full is not None and not isinstance(full, str))


def test_decode_mark_agrees_with_the_full_parse(fr):
    cases = [MARK, twilio_mark(""), twilio_mark("3:17", sid="MZother"), *BAD_MARKS,
             *(msg for msg, _ in MARK_SPELLINGS), *(orjson.dumps(m) for m in NON_MARK)]
    for msg in cases:
        assert _agrees_with_full_parse(fr, msg, SID), (msg, outcome(fr.decode_mark, msg, SID),
                                                       _full_parse(msg, SID))


@FAST
@given(case=mark_messages(), name=gateway_names, data=st.data())
def test_decode_mark_mutated_agrees_with_the_full_parse(fr, case, name, data):
    text, _, sid = case
    for raw, stream_sid in ((text.strip().encode(), sid), (twilio_mark(name), SID)):
        assert _agrees_with_full_parse(fr, raw, stream_sid)
        pos = data.draw(st.integers(0, len(raw) - 1))
        new = data.draw(st.sampled_from(b'"\\{}[]:,0aZ.:/ \x00\x1f\x7f') | st.integers(0, 127))
        mutated = raw[:pos] + bytes([new]) + raw[pos + 1:]
        try:
            mutated.decode()
        except UnicodeDecodeError:
            continue  # msgspec does not validate UTF-8 where it skips: a known difference
        assert _agrees_with_full_parse(fr, mutated, stream_sid), mutated


# Where decode_mark (orjson's reading) and the full parse (msgspec) knowingly differ, on messages
# Twilio does not send: (message, decode_mark, events.parse).
KNOWN_DIFFERENCES = [
    # duplicate keys: orjson keeps the last occurrence; msgspec checks each one and rejects a
    # second "event" tag
    (b'{"event":"media","event":"mark","streamSid":"' + SID.encode() + b'","mark":{"name":"a"}}', "a",
     ProtocolError),
    (b'{"event":"mark","streamSid":null,"streamSid":"' + SID.encode() + b'","mark":{"name":"a"}}', "a",
     ProtocolError),
    (MARK.replace(b'"mark":{', b'"mark":{"name":1},"mark":{'), "3:17", ProtocolError),
    (MARK.replace(b'{"name"', b'{"name":null,"name"'), "3:17", ProtocolError),
    # what msgspec skips unread: invalid UTF-8, a number beyond a double
    (MARK.replace(b'"4"', b'"\xff"'), ProtocolError, "3:17"),
    (MARK[:-1] + b',"x":"\xed\xa0\x80"}', ProtocolError, "3:17"),
    (MARK[:-1] + b',"x":1e400}', ProtocolError, "3:17"),
    # nesting: orjson allows 1024 levels, msgspec stops before Python's recursion limit
    (_nested(1020), "3:17", ProtocolError),
]


@pytest.mark.parametrize(("msg", "mark", "full"), KNOWN_DIFFERENCES)
def test_decode_mark_known_differences_from_the_full_parse(fr, msg, mark, full):
    assert outcome(fr.decode_mark, msg, SID) == mark == outcome(ref_decode_mark, msg, SID)
    assert _full_parse(msg, SID) == full


# --- decode_audio_delta -----------------------------------------------------------------------

@st.composite
def delta_messages(draw):
    """(JSON text, expected (item_id, content_index, audio)) of valid audio deltas."""
    audio = draw(st.binary(max_size=600))
    item = draw(st.one_of(st.just("item_a3"), ids))
    index = draw(st.one_of(st.integers(0, 3), st.integers(0, 2**63 - 1), st.integers(-5, -1)))
    msg = {"type": draw(st.sampled_from([DELTA, BETA_DELTA])), "event_id": "event_" + draw(digits),
           "response_id": "resp_9", "item_id": item, "output_index": draw(st.integers(0, 2**64 - 1)),
           "content_index": index, "delta": b64(audio)}
    if draw(st.booleans()):
        msg["extra"] = draw(st.sampled_from([None, True, 1.5, [], {"a": [1, {"b": None}]}, "é"]))
    # the server's flat compact shape (keys in any order), or any formatting
    fmt = {"ws": 0.0, "esc": 0.0, "shuffle": True} if draw(st.booleans()) else draw(formatting)
    return dump(msg, draw(st.randoms()), **fmt), (item, index, audio)


@FAST
@given(case=delta_messages(), kind=kinds)
def test_decode_audio_delta_matches_orjson(fr, case, kind):
    text, expected = case
    got = fr.decode_audio_delta(as_kind(text, kind))
    assert got == expected == ref_decode_delta(text)
    assert type(got[0]) is str and type(got[1]) is int and type(got[2]) is bytes


def test_decode_audio_delta_server_shape(fr):
    pcm = bytes(range(256)) * 19  # 4864 bytes
    msg = ('{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_9",'
           f'"item_id":"item_a3","output_index":0,"content_index":0,"delta":"{b64(pcm)}"}}')
    assert fr.decode_audio_delta(msg) == ("item_a3", 0, pcm)
    assert fr.decode_audio_delta(msg.replace("output_audio", "audio")) == ("item_a3", 0, pcm)


OTHER_EVENTS = [
    {"type": "response.output_audio_transcript.delta", "item_id": "i", "content_index": 0,
     "delta": "Hello"},
    {"type": "response.output_audio.done", "item_id": "i", "content_index": 0},
    {"type": "response.done", "response": {"status": "cancelled", "output": []}},
    {"type": "session.created", "session": {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": 1000, "item_id": "item_1"},
    {"type": "response.created", "delta": "not base64 at all"},
    {"type": "response.output_audio.delta ", "delta": 5},
    {"type": "", "delta": "x\\\"y"},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired"}},
]


@FAST
@given(msg=st.sampled_from(OTHER_EVENTS), fmt=formatting, rnd=st.randoms(), kind=kinds)
def test_decode_audio_delta_other_events_are_none(fr, msg, fmt, rnd, kind):
    text = as_kind(dump(msg, rnd, **fmt), kind)
    assert fr.decode_audio_delta(text) is None


def _delta(**fields):
    base = {"type": DELTA, "item_id": "item_1", "content_index": 0, "delta": "AAAA"}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


BAD_DELTAS = [
    b"", b"{", b"[]", b"null", b"{}", b'"x"', b"1",
    b'{"type":1}', b'{"type":null}', b'{"item_id":"i"}',
    _delta(item_id=...), _delta(content_index=...), _delta(delta=...),
    _delta(item_id=1), _delta(item_id=None), _delta(content_index="0"), _delta(content_index=True),
    _delta(content_index=0.0), _delta(content_index=None), _delta(delta=5), _delta(delta=None),
    _delta(delta="AAA"), _delta(delta="AA AA"), _delta(delta="AAAA\n"), _delta(delta="é==="),
    _delta(type=BETA_DELTA, delta="A==="),
    b'{"type":"response.output_audio.delta","item_id":"i","content_index":00,"delta":"AAAA"}',
    b'{"type":"response.output_audio.delta","item_id":"i","content_index":01,"delta":"AAAA"}',
    b'{"type":"response.output_audio.delta","item_id":"i","content_index":0,"delta":"AAAA"}x',
    b'{"type":"response.output_audio.delta","item_id":"i","content_index":0,"delta":"AAAA"',
    b'{"type":"response.output_audio.delta","item_id":"i","content_index":0,"delta":"AA\\"}',
    b'{"type":"response.output_audio.delta","item_id":"i","content_index":0,"delta":"AA\\"A"}',
    b'{"type":"response.output_audio.delta","item_id":"i","content_index":0,"delta":"AAAA",}',
    b'{"type":"response.output_audio.delta","item_id":"i\x01","content_index":0,"delta":"AAAA"}',
    b'{"type":"response.done","delta":"x\\","item_id":"y"}',
    b'{"delta":"x\\","delta":"AAAA","type":"response.audio.delta","item_id":"i","content_index":0}',
    b'{"type":"response.audio.delta","item_id":"i","content_index":-0x1,"delta":"AAAA"}',
    b'{"type":"response.audio.delta","item_id":"\xff","content_index":0,"delta":"AAAA"}',
]


@pytest.mark.parametrize("msg", BAD_DELTAS)
def test_decode_audio_delta_malformed_raises(fr, msg):
    assert outcome(ref_decode_delta, msg) is ProtocolError  # the case really is invalid
    with pytest.raises(ProtocolError) as info:
        fr.decode_audio_delta(msg)
    assert isinstance(info.value, ValueError)


def test_decode_audio_delta_duplicates_and_edge_values(fr):
    cases = [
        (b'{"type":"response.audio.delta","item_id":"a","item_id":"b","content_index":1,'
         b'"content_index":2,"delta":"AAAA"}'),
        b'{"type":"x","type":"response.audio.delta","item_id":"","content_index":0,"delta":""}',
        b'{"type":"response.audio.delta","type":"x","item_id":"","content_index":0,"delta":""}',
        (b'{"delta":"AAAA","delta":"AAAB","type":"response.audio.delta","item_id":"i",'
         b'"content_index":0}'),
        (b'{"type":"response.audio.delta","item_id":"i","content_index":999999999999999999,'
         b'"delta":"QQ=="}'),
        (b'{"type":"response.audio.delta","item_id":"i","content_index":9999999999999999999,'
         b'"delta":"QQ=="}'),
        b'{"type":"response.audio.delta","item_id":"i","content_index":1e2,"delta":"QQ=="}',
        b'{"type":"response.audio.delta","item_id":"i","content_index":0,"delta":"QQ==","":1}',
        b'{"type":"response.audio.delta","item_id":"i\\u00e9","content_index":0,"delta":"QQ=="}',
        b'{"type":"response.audio.delta","item_id":"i","content_index":0,"delta":"Q\\u0051=="}',
    ]
    for msg in cases:
        assert outcome(fr.decode_audio_delta, msg) == outcome(ref_decode_delta, msg), msg


@FAST
@given(case=delta_messages(), data=st.data())
def test_decode_audio_delta_truncated_and_mutated_agree_with_reference(fr, case, data):
    raw = case[0].strip().encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ProtocolError):
        fr.decode_audio_delta(raw[:cut])
    for _ in range(3):
        pos = data.draw(st.integers(0, len(raw) - 1))
        new = data.draw(st.sampled_from(b'"\\{}[]:,0-1aZ=+/ \x00\xff\xc3') | st.integers(0, 255))
        mutated = raw[:pos] + bytes([new]) + raw[pos + 1:]
        assert outcome(fr.decode_audio_delta, mutated) == outcome(ref_decode_delta, mutated)


# --- composites -------------------------------------------------------------------------------

def _frames(seed: int, count: int, size: int):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(count)]


def _pcm_frames(seed: int, count: int, samples: int):
    rng = np.random.default_rng(seed)
    t = np.arange(count * samples) / 24000
    sig = 12000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 2000, t.size)
    pcm = np.clip(sig, -32768, 32767).astype("<i2").tobytes()
    return [pcm[i * 2 * samples:(i + 1) * 2 * samples] for i in range(count)]


def test_pcmu_to_append_equals_step_by_step(impl, fr):
    g711, rs = load(impl, "g711"), load(impl, "resample")
    r, twin = rs.Resampler(8000, 24000), rs.Resampler(8000, 24000)
    for ulaw in [*_frames(1, 6, 160), b"", b"\x7f", *_frames(2, 3, 37)]:
        got = fr.pcmu_to_append(memoryview(b"." + ulaw)[1:], r)
        assert got == fr.encode_append(twin.process(g711.ulaw_decode(ulaw)))
        assert type(got) is bytes


def test_media_to_append_passthrough_and_transcoding(impl, fr):
    rs = load(impl, "resample")
    r, twin = rs.Resampler(8000, 24000), rs.Resampler(8000, 24000)
    for i, ulaw in enumerate(_frames(3, 6, 160) + _frames(4, 2, 1)):
        msg = twilio_compact(b64(ulaw), seq=str(i + 3), chunk=str(i + 1), ts=str(20 * i))
        if i % 2:
            msg = dump(orjson.loads(msg), random.Random(i), ws=0.2, esc=0.1, shuffle=True)
        assert fr.media_to_append(msg) == fr.encode_append(ulaw)
        assert fr.media_to_append(msg, None, SID) == (
            b'{"type":"input_audio_buffer.append","audio":"' + b64(ulaw).encode() + b'"}')
        assert fr.media_to_append(msg, r, SID) == fr.pcmu_to_append(ulaw, twin)


def test_media_to_append_errors_leave_resampler_untouched(impl, fr):
    rs = load(impl, "resample")
    r, twin = rs.Resampler(8000, 24000), rs.Resampler(8000, 24000)
    first, second = _frames(5, 2, 160)
    assert fr.media_to_append(twilio_compact(b64(first)), r) == fr.pcmu_to_append(first, twin)
    for bad, sid in [(twilio_compact("QUJ"), None), (twilio_compact(b64(first)), "MZx"),
                     (b"{", None)]:
        with pytest.raises(ProtocolError):
            fr.media_to_append(bad, r, sid)
    assert fr.media_to_append(orjson.dumps(NON_MEDIA[3]), r) is None
    assert fr.media_to_append(twilio_compact(b64(second)), r) == fr.pcmu_to_append(second, twin)


def test_media_to_append_forwards_payload_verbatim(fr):
    # "QR==" is valid (strict mode ignores the unused bits) and is forwarded as sent
    expected = b'{"type":"input_audio_buffer.append","audio":"QR=="}'
    assert fr.media_to_append(twilio_compact("QR==")) == expected
    assert fr.media_to_append(twilio_compact("Q\\u0052==")) == expected


def _delta_msg(pcm: bytes, item="item_a3", index=0, kind=DELTA) -> bytes:
    return (f'{{"type":"{kind}","event_id":"event_1","response_id":"resp_9","item_id":"{item}",'
            f'"output_index":0,"content_index":{index:d},"delta":"{b64(pcm)}"}}').encode()


def test_delta_to_pcmu_equals_step_by_step(impl, fr):
    g711, rs = load(impl, "g711"), load(impl, "resample")
    r, twin = rs.Resampler(24000, 8000), rs.Resampler(24000, 8000)
    frames = [*_pcm_frames(6, 4, 2400), b"", b"\x01\x02", *_pcm_frames(7, 2, 7)]
    for i, pcm in enumerate(frames):
        msg = _delta_msg(pcm, index=i, kind=BETA_DELTA if i % 3 == 2 else DELTA)
        if i % 2:
            msg = dump(orjson.loads(msg), random.Random(i), ws=0.3, esc=0.1, shuffle=True)
        got = fr.delta_to_pcmu(msg, r)
        assert got == ("item_a3", i, g711.ulaw_encode(twin.process(pcm)), len(pcm))
        assert type(got[2]) is bytes


def test_delta_to_pcmu_rejects_bad_input(impl, fr):
    rs = load(impl, "resample")
    r = rs.Resampler(24000, 8000)
    assert fr.delta_to_pcmu(orjson.dumps(OTHER_EVENTS[0]), r) is None
    for bad in [_delta_msg(b"\x01\x02\x03"), _delta(delta="AAA"), b"{"]:
        with pytest.raises(ProtocolError):
            fr.delta_to_pcmu(bad, r)
    with pytest.raises(ValueError, match=r"need a Resampler\(24000, 8000\)"):
        fr.delta_to_pcmu(_delta_msg(b"\0\0"), rs.Resampler(8000, 24000))
    with pytest.raises(ValueError, match=r"need a Resampler\(8000, 24000\)"):
        fr.pcmu_to_append(b"\xff", rs.Resampler(24000, 8000))
    with pytest.raises(ValueError, match=r"need a Resampler\(8000, 24000\)"):
        fr.media_to_append(twilio_compact("QUJD"), rs.Resampler(24000, 8000))


# --- compiled vs pure -------------------------------------------------------------------------

@FAST
@given(case=media_messages(), delta=delta_messages(), mark=mark_messages(), name=any_text, audio=audio_bytes)
def test_compiled_and_pure_frame_identically(case, delta, mark, name, audio):
    c, p = load("compiled", "framing"), load("pure", "framing")
    text, _, sid = case
    assert c.decode_media(text, sid) == p.decode_media(text, sid)
    assert c.decode_mark(text, sid) is None and p.decode_mark(text, sid) is None
    assert c.decode_mark(mark[0], mark[2]) == p.decode_mark(mark[0], mark[2])
    template = twilio_mark(name.replace('"', "").replace("\\", ""))  # maybe with control characters
    assert outcome(c.decode_mark, template, SID) == outcome(p.decode_mark, template, SID)
    assert c.decode_media(mark[0]) is None and p.decode_media(mark[0]) is None
    assert c.media_to_append(text, None, sid) == p.media_to_append(text, None, sid)
    assert c.decode_audio_delta(delta[0]) == p.decode_audio_delta(delta[0])
    assert c.encode_media(sid, audio) == p.encode_media(sid, audio)
    assert c.encode_mark(sid, name) == p.encode_mark(sid, name)
    assert c.encode_clear(name) == p.encode_clear(name)
    assert c.encode_append(audio) == p.encode_append(audio)


def _appended_pcm(message: bytes) -> np.ndarray:
    return np.frombuffer(base64.b64decode(orjson.loads(message)["audio"]), "<i2").astype(int)


def test_compiled_and_pure_composites_agree_within_resampler_tolerance():
    c, p = load("compiled", "framing"), load("pure", "framing")
    crs, prs = load("compiled", "resample"), load("pure", "resample")
    cup, pup = crs.Resampler(8000, 24000), prs.Resampler(8000, 24000)
    cdown, pdown = crs.Resampler(24000, 8000), prs.Resampler(24000, 8000)
    pg711 = load("pure", "g711")
    for ulaw in _frames(8, 5, 160):
        msg = twilio_compact(b64(ulaw))
        a, b = _appended_pcm(c.media_to_append(msg, cup)), _appended_pcm(p.media_to_append(msg, pup))
        assert a.shape == b.shape and np.abs(a - b).max() <= 2
    for pcm in _pcm_frames(9, 4, 2400):
        a, b = c.delta_to_pcmu(_delta_msg(pcm), cdown), p.delta_to_pcmu(_delta_msg(pcm), pdown)
        assert a[:2] == b[:2] and a[3] == b[3] and len(a[2]) == len(b[2])
        # μ-law of values ±2 LSB apart: compare decoded, one quantisation step of slack
        da = np.frombuffer(pg711.ulaw_decode(a[2]), "<i2").astype(int)
        db = np.frombuffer(pg711.ulaw_decode(b[2]), "<i2").astype(int)
        step = np.maximum(8, 2 ** (np.floor(np.log2(np.abs(db) + 132)).astype(int) - 4))
        assert np.all(np.abs(da - db) <= 2 * step)
