"""X-Twilio-Signature helpers against the published vectors and the URL variants
(docs/protocols/twilio.md#signature-validation)."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from multidict import MultiDict

from gateway.twilio.signature import body_sha256, compute_signature, validate_signature

# test vector of Twilio's docs (docs/protocols/twilio.md#algorithm)
TOKEN = "12345"
URL = "https://example.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675310", "Digits": "1234",
          "From": "+14158675310", "To": "+18005551212"}
SIGNATURE = "L/OH5YylLD5NRKLltdqwSvS0BnU="

# JSON body vector (docs/protocols/twilio.md#json-bodies)
JSON_BODY = '{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}'
BODY_HASH = "5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9"


def _reference(token: str, data: str) -> str:
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def test_doc_vector():
    assert compute_signature(TOKEN, URL, PARAMS) == SIGNATURE
    assert validate_signature(TOKEN, URL, PARAMS, SIGNATURE)


def test_string_construction_sorts_names_bytewise():
    params = {"b": "2", "B": "1", "a": "x y", "_": ""}
    expected = _reference("tok", "https://h/p" + "B1" + "_" + "ax y" + "b2")
    assert compute_signature("tok", "https://h/p", params) == expected


def test_no_params_signs_url_only():
    assert compute_signature("tok", "wss://gw.example.com/twilio/media") == \
        _reference("tok", "wss://gw.example.com/twilio/media")
    assert compute_signature("tok", "wss://x/m", {}) == compute_signature("tok", "wss://x/m", None)


@pytest.mark.parametrize("tamper", [
    lambda p: {**p, "Digits": "1235"},
    lambda p: {**p, "Extra": ""},  # an added field must be signed too
    lambda p: {k: v for k, v in p.items() if k != "To"},
    lambda p: {**p, "From": " +14158675310"},  # whitespace is significant
])
def test_tampered_params_rejected(tamper):
    assert not validate_signature(TOKEN, URL, tamper(PARAMS), SIGNATURE)


def test_wrong_token_url_or_signature_rejected():
    assert not validate_signature("12346", URL, PARAMS, SIGNATURE)
    assert not validate_signature(TOKEN, URL.replace("foo=1", "foo=2"), PARAMS, SIGNATURE)
    assert not validate_signature(TOKEN, URL.replace("https:", "http:"), PARAMS, SIGNATURE)
    assert not validate_signature(TOKEN, URL, PARAMS, SIGNATURE.lower())
    assert not validate_signature(TOKEN, URL, PARAMS, "")
    assert not validate_signature(TOKEN, URL, PARAMS, None)
    assert not validate_signature(TOKEN, URL, PARAMS, "é" * 28)  # non-ASCII header: False, no crash


def test_multivalue_params_sorted():
    form = MultiDict([("To", "+2"), ("Digits", "9"), ("Digits", "1")])
    expected = _reference("tok", "https://h/p" + "Digits1" + "Digits9" + "To+2")
    assert compute_signature("tok", "https://h/p", form) == expected
    assert validate_signature("tok", "https://h/p", form, expected)


@pytest.mark.parametrize(("signed", "requested"), [
    ("https://example.com/v", "https://example.com:443/v"),  # Twilio dropped the https port
    ("https://example.com:443/v", "https://example.com/v"),
    ("https://example.com/v", "https://example.com:8443/v"),  # any port removed
    ("http://example.com:8080/v", "http://example.com:8080/v"),
    ("http://example.com/v", "http://example.com:8080/v"),
    ("https://example.com/v?a=1", "https://user:pw@example.com/v?a=1"),  # credentials not signed
    ("wss://gw.example.com/twilio/media", "wss://gw.example.com:443/twilio/media"),
    ("wss://gw.example.com/twilio/media/", "wss://gw.example.com/twilio/media"),  # trailing slash
    ("wss://gw.example.com:443/twilio/media/", "wss://gw.example.com/twilio/media"),
])
def test_url_variants_accepted(signed, requested):
    params = {"CallSid": "CA1"} if signed.startswith("http") else {}
    assert validate_signature("tok", requested, params, compute_signature("tok", signed, params))


@pytest.mark.parametrize(("signed", "requested"), [
    ("https://example.com/v/", "https://example.com/v"),  # trailing-slash leniency is ws/wss only
    ("wss://gw.example.com/twilio/media", "https://gw.example.com/twilio/media"),  # scheme matters
    ("https://example.com:8443/v", "https://example.com:9443/v"),
    ("https://example.com/v", "https://example.org/v"),
])
def test_url_variants_rejected(signed, requested):
    assert not validate_signature("tok", requested, {}, compute_signature("tok", signed, {}))


def test_json_body_vector():
    assert body_sha256(JSON_BODY) == BODY_HASH
    assert body_sha256(JSON_BODY.encode()) == BODY_HASH
    url = "https://example.com/myapp?bodySHA256=" + BODY_HASH
    signature = compute_signature(TOKEN, url)  # JSON requests: URL only, no body params
    assert validate_signature(TOKEN, url, JSON_BODY, signature)
    assert validate_signature(TOKEN, url, JSON_BODY.encode(), signature)
    assert not validate_signature(TOKEN, url, JSON_BODY.replace("3030", "3031"), signature)
    assert not validate_signature(TOKEN, "https://example.com/myapp", JSON_BODY,
                                  compute_signature(TOKEN, "https://example.com/myapp"))
