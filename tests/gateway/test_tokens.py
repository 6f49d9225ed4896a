"""Per-call media tokens: valid once, bound to the CallSid, expiring, canonical."""
from __future__ import annotations

import pytest

from gateway.twilio.tokens import TokenVerifier, mint

KEY = b"k" * 32


def test_token_valid_once_and_bound_to_call():
    token = mint(KEY, "CA1", now=1000.0, ttl_s=60)
    verifier = TokenVerifier(KEY)
    assert verifier.verify(token, "CA2", 1001.0) == "bad_mac"
    assert verifier.verify(token, "CA1", 1001.0) is None
    assert verifier.verify(token, "CA1", 1002.0) == "replayed"
    assert TokenVerifier(KEY).verify(token, "CA1", 1061.0) == "expired"
    assert TokenVerifier(b"other" * 8).verify(token, "CA1", 1001.0) == "bad_mac"


@pytest.mark.parametrize("mutate", [
    lambda t: "0" + t,  # same MAC, non-canonical expiry: must not bypass the replay cache
    lambda t: t.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
    lambda t: t.split(".")[0] + ".ÿÿÿ",  # non-ASCII MAC must not raise
    lambda t: "9" * 5000 + "." + t.split(".")[1],
    lambda t: "", lambda t: "nodot",
])
def test_malformed_tokens_rejected_without_exceptions(mutate):
    token = mint(KEY, "CA1", now=1000.0, ttl_s=60)
    verifier = TokenVerifier(KEY)
    assert verifier.verify(token, "CA1", 1001.0) is None
    assert verifier.verify(mutate(token), "CA1", 1001.0) in ("malformed", "bad_mac", "missing")
