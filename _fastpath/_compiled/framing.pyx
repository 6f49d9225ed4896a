"""Message framing: Twilio Media Streams JSON and OpenAI Realtime JSON carrying base64 audio.

Compiled twin of ``_fastpath._pure.framing`` (same names, signatures and results).

Inbound messages take a fast path without building a JSON tree when they have the compact
shape the peers send (Twilio's media and mark messages, OpenAI's flat audio deltas); the fast
path is strict enough that everything it accepts is valid JSON, and anything else falls back to
``orjson.loads`` plus the same validation as the pure twin.
Outbound messages are written straight into one ``bytes`` object. Intermediate audio lives in
module-level scratch buffers: the GIL is held from filling them to the last read, and nothing
in between can run Python code (no Python calls, no GC-tracked allocations that could start
a collection and its finalizers).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_Check, PyUnicode_DATA, PyUnicode_GET_LENGTH
from libc.stdint cimport int16_t, uint8_t, uint16_t
from libc.string cimport memchr, memcmp, memcpy

from _fastpath._compiled.b64 cimport b64_decode, b64_decoded_max, b64_encode, b64_encoded_len
from _fastpath._compiled.g711 cimport ulaw_decode_into, ulaw_encode_into
from _fastpath._compiled.resample cimport Resampler

import orjson

from _fastpath.errors import ProtocolError

__all__ = [
    "decode_audio_delta", "decode_mark", "decode_media", "delta_to_pcmu", "encode_append",
    "encode_clear", "encode_mark", "encode_media", "media_to_append", "pcmu_to_append",
]

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    const bint PY_BIG_ENDIAN  # the C kernels work on native int16; the wire is little-endian
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)

cdef extern from *:
    """
    /* A view of memory kept alive by the caller: nothing to release (obj stays NULL). */
    static inline void fp_borrow(Py_buffer *v, void *buf, Py_ssize_t len) {
        v->buf = buf; v->len = len; v->obj = NULL;
    }
    """
    void fp_borrow(Py_buffer* v, void* buf, Py_ssize_t len) noexcept

# ---------------------------------------------------------------------------------------------
# character classes, scratch buffers, input access

cdef enum:
    DIGIT = 1
    ALPHA = 2
    PLAIN = 4   # printable ASCII that a JSON string holds without escaping (no '"', no '\\')

cdef uint8_t _CLS[256]


cdef void _build_classes() noexcept:
    cdef int c
    for c in range(256):
        _CLS[c] = ((DIGIT if 0x30 <= c <= 0x39 else 0)
                   | (ALPHA if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A else 0)
                   | (PLAIN if 0x20 <= c <= 0x7E and c != 0x22 and c != 0x5C else 0))


_build_classes()

# 0: decoded base64 (μ-law or PCM16 bytes), 1: PCM16 to resample, 2: resampled PCM16
cdef uint8_t* _scratch[3]
cdef Py_ssize_t _scratch_cap[3]


cdef uint8_t* _reserve(int i, Py_ssize_t n) except NULL:
    """Scratch buffer i with room for n bytes (grows, never shrinks; aligned for int16_t)."""
    cdef void* p
    if n > _scratch_cap[i] or _scratch[i] == NULL:
        n = max(n, 4096)
        p = PyMem_Realloc(_scratch[i], n)
        if p == NULL:
            raise MemoryError()
        _scratch[i] = <uint8_t*>p
        _scratch_cap[i] = n
    return _scratch[i]


cdef inline int _get_bytes(object obj, Py_buffer* view) except -1:
    """Point view at a bytes-like object's memory; PyBuffer_Release(view) is always safe after."""
    if PyBytes_CheckExact(obj):
        fp_borrow(view, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj))
        return 0
    return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)


cdef inline bint _get_text(object obj, Py_buffer* view) except -1:
    """Like _get_bytes, and also takes str. False (nothing acquired) for a non-ASCII str: no fast
    shape contains non-ASCII characters, so only the full parser can read it."""
    if PyUnicode_Check(obj):
        if not PyUnicode_IS_ASCII(obj):
            return False
        fp_borrow(view, PyUnicode_DATA(obj), PyUnicode_GET_LENGTH(obj))
        return True
    _get_bytes(obj, view)
    return True


cdef inline const uint8_t* _lit(const uint8_t* p, const uint8_t* end, bytes s) noexcept:
    """p advanced past the literal s, or NULL if the input does not continue with s."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s)
    if p == NULL or end - p < n or memcmp(p, PyBytes_AS_STRING(s), n) != 0:
        return NULL
    return p + n


cdef inline const uint8_t* _run(const uint8_t* p, const uint8_t* end, uint8_t cls) noexcept nogil:
    """p advanced past a non-empty run of characters of class cls, or NULL."""
    cdef const uint8_t* q = p
    if p == NULL:
        return NULL
    while q < end and _CLS[q[0]] & cls:
        q += 1
    return q if q > p else NULL


cdef inline const uint8_t* _run0(const uint8_t* p, const uint8_t* end, uint8_t cls) noexcept nogil:
    """p advanced past a possibly empty run of characters of class cls (NULL stays NULL)."""
    if p == NULL:
        return NULL
    while p < end and _CLS[p[0]] & cls:
        p += 1
    return p


cdef void _swap16(int16_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        p[i] = <int16_t>((<uint16_t>p[i] >> 8) | (<uint16_t>p[i] << 8))


cdef bint _plain(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """True if every byte is PLAIN, i.e. p[:n] is the exact contents of a JSON string without
    escapes. No early exit, so the compiler vectorizes it (a media payload is ~216 bytes)."""
    cdef Py_ssize_t i
    cdef uint8_t c
    cdef int bad = 0
    for i in range(n):
        c = p[i]
        bad |= (c < 0x20) | (c > 0x7E) | (c == 0x22) | (c == 0x5C)
    return not bad


cdef inline bint _all(const uint8_t* p, Py_ssize_t n, uint8_t cls) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not _CLS[p[i]] & cls:
            return False
    return True


cdef Py_ssize_t _b64_into_scratch(const uint8_t* chars, Py_ssize_t n) except -2:
    """Strictly decode base64 into scratch 0; the byte count, or -1 if it is not valid base64."""
    return b64_decode(chars, n, _reserve(0, b64_decoded_max(n)))


cdef const uint8_t* _ascii(str text, Py_ssize_t* n) except? NULL:
    """UTF-8 of a str parsed by orjson (never has lone surrogates); ASCII for valid base64."""
    return <const uint8_t*>PyUnicode_AsUTF8AndSize(text, n)


cdef object _loads(object message):
    if not isinstance(message, (bytes, bytearray, memoryview, str)):
        message = memoryview(message)  # other bytes-like objects; TypeError for non-buffers
    try:
        return orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None


cdef inline object _bad_base64():
    return ProtocolError("invalid base64 audio")

# ---------------------------------------------------------------------------------------------
# Twilio → gateway

cdef bytes _M_HEAD = b'{"event":"media","sequenceNumber":"'
cdef bytes _M_TRACK = b'","media":{"track":"'
cdef bytes _M_CHUNK = b'","chunk":"'
cdef bytes _M_TIMESTAMP = b'","timestamp":"'
cdef bytes _M_PAYLOAD = b'","payload":"'
cdef bytes _M_SID = b'"},"streamSid":"'
cdef bytes _M_TAIL = b'"}'


cdef bint _match_media(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pay, Py_ssize_t* pay_n,
                       Py_ssize_t* sid, Py_ssize_t* sid_n) noexcept:
    """Match the exact compact media message Twilio sends; offsets/lengths of payload and sid.

    The payload run is only delimited here (up to the next '"'); the caller's strict base64
    decode proves it is plain base64, which makes the whole message valid JSON. If that decode
    fails the caller must fall back to the full parser (the run may hold an escape).
    """
    cdef const uint8_t* start = p
    cdef const uint8_t* end = p + n
    cdef const uint8_t* q
    p = _run(_lit(p, end, _M_HEAD), end, DIGIT)
    p = _run(_lit(p, end, _M_TRACK), end, ALPHA)
    p = _run(_lit(p, end, _M_CHUNK), end, DIGIT)
    p = _run(_lit(p, end, _M_TIMESTAMP), end, DIGIT)
    p = _lit(p, end, _M_PAYLOAD)
    if p == NULL:
        return False
    q = <const uint8_t*>memchr(p, c'"', end - p)
    if q == NULL:
        return False
    pay[0] = p - start
    pay_n[0] = q - p
    p = _lit(q, end, _M_SID)
    q = _run(p, end, DIGIT | ALPHA)
    if _lit(q, end, _M_TAIL) != end:
        return False
    sid[0] = p - start
    sid_n[0] = q - p
    return True


cdef bytes _K_HEAD = b'{"event":"mark","sequenceNumber":"'
cdef bytes _K_SID = b'","streamSid":"'
cdef bytes _K_NAME = b'","mark":{"name":"'
cdef bytes _K_TAIL = b'"}}'


cdef bint _match_mark(const uint8_t* p, Py_ssize_t n, Py_ssize_t* sid, Py_ssize_t* sid_n,
                      Py_ssize_t* name, Py_ssize_t* name_n) noexcept:
    """Match the exact compact mark echo Twilio sends; offsets/lengths of sid and mark name.

    Both are runs of PLAIN characters (possibly empty), so a match is valid JSON with unique
    keys, event "mark", and strings whose values are exactly those bytes.
    """
    cdef const uint8_t* start = p
    cdef const uint8_t* end = p + n
    cdef const uint8_t* q
    cdef const uint8_t* r
    p = _run(_lit(p, end, _K_HEAD), end, DIGIT)
    p = _lit(p, end, _K_SID)
    q = _run0(p, end, PLAIN)
    r = _lit(q, end, _K_NAME)
    if r == NULL:
        return False
    q = _run0(r, end, PLAIN)
    if _lit(q, end, _K_TAIL) != end:
        return False
    sid[0] = p - start
    sid_n[0] = (r - len(_K_NAME)) - p
    name[0] = r - start
    name_n[0] = q - r
    return True


cdef bint _same_sid(const uint8_t* sid, Py_ssize_t sid_n, str stream_sid) noexcept:
    return (PyUnicode_IS_ASCII(stream_sid) and PyUnicode_GET_LENGTH(stream_sid) == sid_n
            and memcmp(PyUnicode_DATA(stream_sid), sid, sid_n) == 0)


cdef dict _twilio_message(object message):
    """Full parse of a Twilio message: a JSON object whose "event" is a str (else ProtocolError)."""
    msg = _loads(message)
    if type(msg) is not dict:
        raise ProtocolError("Twilio message is not a JSON object")
    if type((<dict>msg).get("event")) is not str:
        raise ProtocolError('Twilio message without a string "event"')
    return <dict>msg


cdef object _media_payload(object message, str stream_sid):
    """Full parse: the payload str of a media message, None for other events (as the pure twin)."""
    cdef dict msg = _twilio_message(message)
    if msg["event"] != "media":
        return None
    if stream_sid is not None and msg.get("streamSid") != stream_sid:
        raise ProtocolError("media message for another (or no) streamSid")
    media = msg.get("media")
    payload = (<dict>media).get("payload") if type(media) is dict else None
    if type(payload) is not str:
        raise ProtocolError('media message without a string "media.payload"')
    return payload


cdef object _mark_name(object message, str stream_sid):
    """Full parse: the name str of a mark message for stream_sid, None for other events (as the
    pure twin)."""
    cdef dict msg = _twilio_message(message)
    if msg["event"] != "mark":
        return None
    if msg.get("streamSid") != stream_sid:
        raise ProtocolError("mark message for another (or no) streamSid")
    mark = msg.get("mark")
    name = (<dict>mark).get("name") if type(mark) is dict else None
    if type(name) is not str:
        raise ProtocolError('mark message without a string "mark.name"')
    return name


# Each public reader below tries the fast shape and returns from inside the try block when it
# matched; falling out of it means "use the full parser".

def decode_media(message, str stream_sid=None):
    """decode_media(message, stream_sid=None) -> bytes | None

    μ-law bytes of a Twilio ``media`` message; None for every other event. With ``stream_sid``
    the message must carry that top-level ``streamSid``. ProtocolError for malformed input.
    """
    cdef Py_buffer v
    cdef Py_ssize_t pay, pay_n, sid, sid_n, m
    cdef const uint8_t* p
    if _get_text(message, &v):
        try:
            p = <const uint8_t*>v.buf
            if _match_media(p, v.len, &pay, &pay_n, &sid, &sid_n):
                m = _b64_into_scratch(p + pay, pay_n)
                if m >= 0:
                    if stream_sid is not None and not _same_sid(p + sid, sid_n, stream_sid):
                        raise ProtocolError("media message for another streamSid")
                    return PyBytes_FromStringAndSize(<char*>_scratch[0], m)
            elif _match_mark(p, v.len, &sid, &sid_n, &pay, &pay_n):
                return None  # a mark echo: valid JSON by construction, not media
        finally:
            PyBuffer_Release(&v)
    payload = _media_payload(message, stream_sid)
    if payload is None:
        return None
    p = _ascii(payload, &pay_n)
    m = _b64_into_scratch(p, pay_n)
    if m < 0:
        raise _bad_base64()
    return PyBytes_FromStringAndSize(<char*>_scratch[0], m)


def decode_mark(message, str stream_sid not None):
    """decode_mark(message, stream_sid) -> str | None

    ``mark.name`` of a Twilio ``mark`` message (the echo of a mark the gateway sent) carrying
    the top-level ``streamSid`` ``stream_sid``; None for every other event. ProtocolError for
    malformed input, a mark of another (or no) streamSid, or one without a string name.
    """
    cdef Py_buffer v
    cdef Py_ssize_t a, a_n, b, b_n
    cdef const uint8_t* p
    if _get_text(message, &v):
        try:
            p = <const uint8_t*>v.buf
            if _match_mark(p, v.len, &a, &a_n, &b, &b_n):
                if not _same_sid(p + a, a_n, stream_sid):  # the sid is plain: its bytes are its value
                    raise ProtocolError("mark message for another streamSid")
                return PyUnicode_DecodeASCII(<const char*>p + b, b_n, NULL)
            if _match_media(p, v.len, &a, &a_n, &b, &b_n) and _plain(p + a, a_n):
                return None  # Twilio's media message with a plain payload: valid JSON, not a mark
        finally:
            PyBuffer_Release(&v)
    return _mark_name(message, stream_sid)


# ---------------------------------------------------------------------------------------------
# gateway → Twilio / OpenAI

cdef struct JStr:
    const char* p   # string contents between the quotes, JSON-escaped
    Py_ssize_t n


cdef object _jstr(str s, JStr* out):
    """JSON string contents of s; returns the object that owns out.p (keep it alive)."""
    if PyUnicode_IS_ASCII(s):
        out.p = <const char*>PyUnicode_DATA(s)
        out.n = PyUnicode_GET_LENGTH(s)
        if _all(<const uint8_t*>out.p, out.n, PLAIN):
            return s
    lit = orjson.dumps(s)  # needs escaping (rare): orjson defines the exact form
    out.p = PyBytes_AS_STRING(lit) + 1
    out.n = PyBytes_GET_SIZE(lit) - 2
    return lit


cdef inline char* _put(char* dst, const char* src, Py_ssize_t n) noexcept nogil:
    memcpy(dst, src, n)
    return dst + n


cdef inline char* _put_lit(char* dst, bytes s) noexcept:
    return _put(dst, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))


cdef bytes _TW_MEDIA_HEAD = b'{"event":"media","streamSid":"'
cdef bytes _TW_MEDIA_MID = b'","media":{"payload":"'
cdef bytes _TW_MEDIA_TAIL = b'"}}'
cdef bytes _TW_MARK_HEAD = b'{"event":"mark","streamSid":"'
cdef bytes _TW_MARK_MID = b'","mark":{"name":"'
cdef bytes _TW_MARK_TAIL = b'"}}'
cdef bytes _TW_CLEAR_HEAD = b'{"event":"clear","streamSid":"'
cdef bytes _TW_CLEAR_TAIL = b'"}'
cdef bytes _APPEND_HEAD = b'{"type":"input_audio_buffer.append","audio":"'
cdef bytes _APPEND_TAIL = b'"}'


def encode_media(str stream_sid not None, audio):
    """encode_media(stream_sid: str, audio) -> bytes

    Twilio outbound ``media`` message carrying μ-law 8 kHz ``audio``.
    """
    cdef JStr sid
    cdef Py_buffer v
    cdef Py_ssize_t b64n
    cdef char* p
    keep = _jstr(stream_sid, &sid)
    _get_bytes(audio, &v)
    try:
        b64n = b64_encoded_len(v.len)
        out = PyBytes_FromStringAndSize(NULL, len(_TW_MEDIA_HEAD) + sid.n + len(_TW_MEDIA_MID)
                                        + b64n + len(_TW_MEDIA_TAIL))
        p = _put(_put_lit(PyBytes_AS_STRING(out), _TW_MEDIA_HEAD), sid.p, sid.n)
        p = _put_lit(p, _TW_MEDIA_MID)
        b64_encode(<const uint8_t*>v.buf, v.len, <uint8_t*>p)
        _put_lit(p + b64n, _TW_MEDIA_TAIL)
        return out
    finally:
        PyBuffer_Release(&v)


def encode_mark(str stream_sid not None, str name not None):
    """encode_mark(stream_sid: str, name: str) -> bytes

    Twilio outbound ``mark`` message; Twilio echoes ``name`` once the audio before it played.
    """
    cdef JStr sid, nm
    cdef char* p
    keep_sid = _jstr(stream_sid, &sid)
    keep_name = _jstr(name, &nm)
    out = PyBytes_FromStringAndSize(NULL, len(_TW_MARK_HEAD) + sid.n + len(_TW_MARK_MID) + nm.n
                                    + len(_TW_MARK_TAIL))
    p = _put(_put_lit(PyBytes_AS_STRING(out), _TW_MARK_HEAD), sid.p, sid.n)
    _put_lit(_put(_put_lit(p, _TW_MARK_MID), nm.p, nm.n), _TW_MARK_TAIL)
    return out


def encode_clear(str stream_sid not None):
    """encode_clear(stream_sid: str) -> bytes

    Twilio outbound ``clear`` message (drop all buffered outbound audio).
    """
    cdef JStr sid
    keep = _jstr(stream_sid, &sid)
    out = PyBytes_FromStringAndSize(NULL, len(_TW_CLEAR_HEAD) + sid.n + len(_TW_CLEAR_TAIL))
    _put_lit(_put(_put_lit(PyBytes_AS_STRING(out), _TW_CLEAR_HEAD), sid.p, sid.n), _TW_CLEAR_TAIL)
    return out


cdef bytes _append_frame(const uint8_t* audio, Py_ssize_t n, bint is_base64):
    """``input_audio_buffer.append`` around raw audio, or around base64 characters as they are."""
    cdef Py_ssize_t b64n = n if is_base64 else b64_encoded_len(n)
    cdef char* p
    out = PyBytes_FromStringAndSize(NULL, len(_APPEND_HEAD) + b64n + len(_APPEND_TAIL))
    p = _put_lit(PyBytes_AS_STRING(out), _APPEND_HEAD)
    if is_base64:
        memcpy(p, audio, n)
    else:
        b64_encode(audio, n, <uint8_t*>p)
    _put_lit(p + b64n, _APPEND_TAIL)
    return out


def encode_append(audio):
    """encode_append(audio) -> bytes

    OpenAI ``input_audio_buffer.append`` carrying ``audio`` in the session's input format.
    """
    cdef Py_buffer v
    _get_bytes(audio, &v)
    try:
        return _append_frame(<const uint8_t*>v.buf, v.len, False)
    finally:
        PyBuffer_Release(&v)

# ---------------------------------------------------------------------------------------------
# OpenAI → gateway

cdef struct Field:
    int kind              # 0 absent, 1 string, 2 integer
    Py_ssize_t start, n   # string contents (offset into the message, length)
    long long value       # integer value

cdef enum:
    F_TYPE = 0
    F_ITEM = 1
    F_INDEX = 2
    F_DELTA = 3


cdef bint _scan_flat(const uint8_t* p, Py_ssize_t n, Field* f, bint* delta_unchecked) noexcept:
    """Scan a compact flat JSON object whose values are plain ASCII strings or non-negative
    integers (no whitespace, no escapes), recording type/item_id/content_index/delta (last
    occurrence wins, as in orjson). False if the message has any other shape.

    The delta string is only delimited (it can be ~100 kB): *delta_unchecked tells the caller
    it must prove it plain (by a successful base64 decode) before trusting the scan.
    """
    cdef const uint8_t* start = p
    cdef const uint8_t* end = p + n
    cdef const uint8_t* key
    cdef const uint8_t* q
    cdef Py_ssize_t key_n
    cdef int slot, digits
    cdef long long value
    delta_unchecked[0] = False
    if n < 2 or p[0] != c'{':
        return False
    p += 1
    if p[0] == c'}':
        return p + 1 == end
    while True:
        if p >= end or p[0] != c'"':
            return False
        key = p + 1
        p = key
        while p < end and _CLS[p[0]] & PLAIN:
            p += 1
        if end - p < 3 or p[0] != c'"' or p[1] != c':':
            return False
        key_n = p - key
        p += 2
        slot = -1
        if key_n == 4 and memcmp(key, b"type", 4) == 0:
            slot = F_TYPE
        elif key_n == 7 and memcmp(key, b"item_id", 7) == 0:
            slot = F_ITEM
        elif key_n == 13 and memcmp(key, b"content_index", 13) == 0:
            slot = F_INDEX
        elif key_n == 5 and memcmp(key, b"delta", 5) == 0:
            if f[F_DELTA].kind:
                return False  # a second delta: the first one was never proven plain
            slot = F_DELTA
        if p[0] == c'"':
            p += 1
            if slot == F_DELTA:
                q = <const uint8_t*>memchr(p, c'"', end - p)
                if q == NULL:
                    return False
                delta_unchecked[0] = True
            else:
                q = p
                while q < end and _CLS[q[0]] & PLAIN:
                    q += 1
                if q >= end or q[0] != c'"':
                    return False
            if slot >= 0:
                f[slot].kind = 1
                f[slot].start = p - start
                f[slot].n = q - p
            p = q + 1
        elif _CLS[p[0]] & DIGIT:
            value = 0
            digits = 0
            while p < end and _CLS[p[0]] & DIGIT:
                value = value * 10 + (p[0] - c'0')
                digits += 1
                p += 1
                if digits > 18:
                    return False
            if digits > 1 and p[-digits] == c'0':
                return False  # leading zero: invalid JSON, let orjson say so
            if slot >= 0:
                f[slot].kind = 2
                f[slot].value = value
        else:
            return False
        if p >= end:
            return False
        if p[0] == c'}':
            return p + 1 == end
        if p[0] != c',':
            return False
        p += 1


cdef bint _is_delta_type(const uint8_t* s, Py_ssize_t n) noexcept:
    return ((n == 27 and memcmp(s, b"response.output_audio.delta", 27) == 0)
            or (n == 20 and memcmp(s, b"response.audio.delta", 20) == 0))


cdef object _delta_slow(object message):
    """Full parse: (item_id, content_index, delta str) of an audio delta, None for other events."""
    msg = _loads(message)
    if type(msg) is not dict:
        raise ProtocolError("OpenAI message is not a JSON object")
    kind = (<dict>msg).get("type")
    if type(kind) is not str:
        raise ProtocolError('OpenAI message without a string "type"')
    if kind != "response.output_audio.delta" and kind != "response.audio.delta":
        return None
    item_id = (<dict>msg).get("item_id")
    content_index = (<dict>msg).get("content_index")
    delta = (<dict>msg).get("delta")
    if type(item_id) is not str or type(content_index) is not int or type(delta) is not str:
        raise ProtocolError(f"{kind} without string item_id, integer content_index, string delta")
    return item_id, content_index, delta


cdef tuple _delta_into_scratch(object message, Py_ssize_t* m):
    """(item_id, content_index) of an audio delta whose audio is left decoded in scratch 0
    (*m bytes); None for other events. ProtocolError as the pure decode_audio_delta.

    Decoding is the last step, so the caller can use scratch 0 before anything allocates a
    GC-tracked object (a GC pass may run finalizers, i.e. arbitrary Python code)."""
    cdef Py_buffer v
    cdef Field f[4]
    cdef bint unchecked
    cdef const uint8_t* p
    cdef Py_ssize_t n
    cdef int i
    for i in range(4):
        f[i].kind = 0
    if _get_text(message, &v):
        try:
            p = <const uint8_t*>v.buf
            if _scan_flat(p, v.len, f, &unchecked):
                if (f[F_TYPE].kind == 1 and _is_delta_type(p + f[F_TYPE].start, f[F_TYPE].n)
                        and f[F_ITEM].kind == 1 and f[F_INDEX].kind == 2 and f[F_DELTA].kind == 1):
                    head = (PyUnicode_DecodeASCII(<const char*>p + f[F_ITEM].start, f[F_ITEM].n,
                                                  NULL),
                            f[F_INDEX].value)
                    m[0] = _b64_into_scratch(p + f[F_DELTA].start, f[F_DELTA].n)
                    if m[0] >= 0:
                        return head
                elif not unchecked or _all(p + f[F_DELTA].start, f[F_DELTA].n, PLAIN):
                    if f[F_TYPE].kind != 1:
                        raise ProtocolError('OpenAI message without a string "type"')
                    if not _is_delta_type(p + f[F_TYPE].start, f[F_TYPE].n):
                        return None
                    raise ProtocolError("audio delta without string item_id, integer "
                                        "content_index, string delta")
        finally:
            PyBuffer_Release(&v)
    fields = _delta_slow(message)
    if fields is None:
        return None
    item_id, content_index, delta = fields
    head = (item_id, content_index)
    p = _ascii(delta, &n)
    m[0] = _b64_into_scratch(p, n)
    if m[0] < 0:
        raise _bad_base64()
    return head


def decode_audio_delta(message):
    """decode_audio_delta(message) -> tuple[str, int, bytes] | None

    ``(item_id, content_index, audio)`` of ``response.output_audio.delta`` (or the beta name
    ``response.audio.delta``); None for every other event type. ProtocolError for bad input.
    """
    cdef Py_ssize_t m
    head = _delta_into_scratch(message, &m)
    if head is None:
        return None
    audio = PyBytes_FromStringAndSize(<char*>_scratch[0], m)
    return (head[0], head[1], audio)

# ---------------------------------------------------------------------------------------------
# composites: one call per frame, audio stays in C buffers until the output bytes

cdef int _check_rates(Resampler r, int src_rate, int dst_rate) except -1:
    if r.src_rate != src_rate or r.dst_rate != dst_rate:
        raise ValueError(f"need a Resampler({src_rate}, {dst_rate}), "
                         f"got Resampler({r.src_rate}, {r.dst_rate})")
    return 0


cdef bytes _ulaw_to_append(const uint8_t* ulaw, Py_ssize_t n, Resampler r):
    """μ-law 8 kHz → PCM16 → r (8k→24k) → append frame; ulaw must not live in scratch 1 or 2."""
    cdef int16_t* pcm = <int16_t*>_reserve(1, 2 * n)
    cdef int16_t* out = <int16_t*>_reserve(2, 2 * r.max_output(n))
    ulaw_decode_into(ulaw, n, pcm)
    n = r.process_into(pcm, n, out)
    if PY_BIG_ENDIAN:
        _swap16(out, n)
    return _append_frame(<const uint8_t*>out, 2 * n, False)


def pcmu_to_append(ulaw, Resampler resampler not None):
    """pcmu_to_append(ulaw, resampler) -> bytes

    μ-law 8 kHz → ``input_audio_buffer.append`` with PCM16 LE 24 kHz, through the caller's
    Resampler(8000, 24000) (it carries filter state from frame to frame).
    """
    cdef Py_buffer v
    _check_rates(resampler, 8000, 24000)
    _get_bytes(ulaw, &v)
    try:
        return _ulaw_to_append(<const uint8_t*>v.buf, v.len, resampler)
    finally:
        PyBuffer_Release(&v)


cdef bytes _decoded_to_append(const uint8_t* chars, Py_ssize_t n, Py_ssize_t m, Resampler r):
    """Append frame for a payload already decoded into scratch 0 (m bytes): its base64
    characters verbatim if r is None, else the μ-law transcoded through r."""
    if r is None:
        return _append_frame(chars, n, True)
    return _ulaw_to_append(_scratch[0], m, r)


def media_to_append(message, Resampler resampler=None, str stream_sid=None):
    """media_to_append(message, resampler=None, stream_sid=None) -> bytes | None

    Twilio ``media`` message → OpenAI ``input_audio_buffer.append``; None for other events.
    Without a resampler the strictly validated base64 payload is forwarded verbatim (session
    input ``audio/pcmu``); with a Resampler(8000, 24000) it is transcoded to PCM16 24 kHz.
    """
    cdef Py_buffer v
    cdef Py_ssize_t pay, pay_n, sid, sid_n, m
    cdef const uint8_t* p
    if resampler is not None:
        _check_rates(resampler, 8000, 24000)
    if _get_text(message, &v):
        try:
            p = <const uint8_t*>v.buf
            if _match_media(p, v.len, &pay, &pay_n, &sid, &sid_n):
                m = _b64_into_scratch(p + pay, pay_n)
                if m >= 0:
                    if stream_sid is not None and not _same_sid(p + sid, sid_n, stream_sid):
                        raise ProtocolError("media message for another streamSid")
                    return _decoded_to_append(p + pay, pay_n, m, resampler)
            elif _match_mark(p, v.len, &sid, &sid_n, &pay, &pay_n):
                return None  # a mark echo: valid JSON by construction, not media
        finally:
            PyBuffer_Release(&v)
    payload = _media_payload(message, stream_sid)
    if payload is None:
        return None
    p = _ascii(payload, &pay_n)
    m = _b64_into_scratch(p, pay_n)
    if m < 0:
        raise _bad_base64()
    return _decoded_to_append(p, pay_n, m, resampler)


def delta_to_pcmu(message, Resampler resampler not None):
    """delta_to_pcmu(message, resampler) -> tuple[str, int, bytes, int] | None

    PCM16 24 kHz output-audio delta → ``(item_id, content_index, μ-law 8 kHz, pcm_byte_count)``
    through the caller's Resampler(24000, 8000); None for non-delta events.
    """
    cdef Py_ssize_t m, k
    cdef int16_t* out
    _check_rates(resampler, 24000, 8000)
    head = _delta_into_scratch(message, &m)
    if head is None:
        return None
    if m % 2:
        raise ProtocolError(f"PCM16 delta with an odd byte count ({m})")
    if PY_BIG_ENDIAN:
        _swap16(<int16_t*>_scratch[0], m // 2)
    out = <int16_t*>_reserve(2, 2 * resampler.max_output(m // 2))
    k = resampler.process_into(<const int16_t*>_scratch[0], m // 2, out)
    ulaw = PyBytes_FromStringAndSize(NULL, k)
    ulaw_encode_into(out, k, <uint8_t*>PyBytes_AS_STRING(ulaw))
    return (head[0], head[1], ulaw, m)
