"""Twilio request signatures (``X-Twilio-Signature``) as small pure functions.

The algorithm and its URL variants: docs/protocols/twilio.md#signature-validation.

Used by the Twilio simulator to sign what it sends and by the gateway to validate what it receives.
Semantics follow twilio-python's ``RequestValidator``: HMAC-SHA1 over ``url + name1 + value1 + …``
(parameters sorted by name, byte-wise; repeated values sorted too), base64-encoded.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator, Mapping
from urllib.parse import parse_qs, urlsplit, urlunsplit

__all__ = ["body_sha256", "compute_signature", "validate_signature"]

_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def _sorted_pairs(params: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    # Multi-valued mappings (aiohttp/multidict ``getall``, Django ``getlist``) contribute every
    # value; twilio-python de-duplicates and sorts them, so do we.
    getall = getattr(params, "getall", None) or getattr(params, "getlist", None)
    for name in sorted(set(params)):
        values = getall(name) if getall is not None else (params[name],)
        for value in sorted(set(values)):
            yield name, value


def compute_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """Signature Twilio sends for a request to ``url`` (exactly as given) with form ``params``.

    GET requests, WebSocket upgrades and JSON bodies (twilio.md#json-bodies) are signed with no params.
    """
    data = url
    if params:
        data += "".join(name + value for name, value in _sorted_pairs(params))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def body_sha256(body: bytes | str) -> str:
    """Lower-case hex SHA-256 of a raw request body: the ``bodySHA256`` query value (twilio.md#json-bodies)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return hashlib.sha256(body).hexdigest()


def _url_candidates(url: str) -> list[str]:
    """``url`` plus the forms Twilio may have signed: credentials removed, default port added or
    any port removed and, for ws/wss only, a trailing ``/`` appended to the path
    (docs/protocols/twilio.md#url-variants)."""
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():  # no port (also covers a bare IPv6 literal "[::1]")
        host, port = hostport, ""
    scheme = parts.scheme.lower()
    netlocs = [host]
    if port:
        netlocs.append(f"{host}:{port}")
    elif scheme in _DEFAULT_PORTS:
        netlocs.append(f"{host}:{_DEFAULT_PORTS[scheme]}")
    paths = [parts.path]
    if scheme in ("ws", "wss") and not parts.path.endswith("/"):
        paths.append(parts.path + "/")
    candidates = [url]
    for netloc in netlocs:
        for path in paths:
            candidate = urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))
            if candidate not in candidates:
                candidates.append(candidate)
    return candidates


def validate_signature(
    auth_token: str,
    url: str,
    params: Mapping[str, str] | str | bytes | None,
    signature: str | None,
) -> bool:
    """True if ``signature`` is Twilio's signature of a request to ``url``.

    ``url`` is the *public* URL Twilio requested (rebuild it from the configured public base URL,
    never from what a proxy forwarded). ``params``: the form fields of a form-encoded POST (all of
    them, untrimmed); ``None``/``{}`` for GET and WebSocket upgrades; or the raw body (``str``/
    ``bytes``) of a JSON request, whose ``bodySHA256`` query value is then checked as well (twilio.md#json-bodies).
    Port variants and, for ws/wss, the trailing-slash variant are accepted; comparisons are
    constant-time.
    """
    if not signature:
        return False
    if isinstance(params, (str, bytes)):
        hashes = parse_qs(urlsplit(url).query).get("bodySHA256")
        if not hashes or not hmac.compare_digest(body_sha256(params).encode(), hashes[0].lower().encode("utf-8")):
            return False
        params = None
    expected = signature.encode("utf-8")
    return any(
        hmac.compare_digest(compute_signature(auth_token, candidate, params).encode("ascii"), expected)
        for candidate in _url_candidates(url)
    )
