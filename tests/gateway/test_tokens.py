"""Per-call media tokens: valid once, bound to the CallSid, expiring, canonical, carrying the call's claims."""
from __future__ import annotations

import pytest

from gateway.outcomes import TokenRejection
from gateway.twilio.tokens import CallClaims, TokenVerifier, mint

KEY = b"k" * 32
CLAIMS = CallClaims(agent="support", caller="+15550001", called="+15551234567")


def test_token_valid_once_bound_to_call_and_carrying_its_claims():
    token = mint(KEY, "CA1", now=1000.0, ttl_s=60, claims=CLAIMS)
    verifier = TokenVerifier(KEY)
    assert verifier.verify(token, "CA2", 1001.0) is TokenRejection.BAD_MAC
    assert verifier.verify(token, "CA1", 1001.0) == CLAIMS
    assert verifier.verify(token, "CA1", 1002.0) is TokenRejection.REPLAYED
    assert TokenVerifier(KEY).verify(token, "CA1", 1061.0) is TokenRejection.EXPIRED
    assert TokenVerifier(b"other" * 8).verify(token, "CA1", 1001.0) is TokenRejection.BAD_MAC
    assert TokenVerifier(KEY).verify(mint(KEY, "CA1", 1000.0, 60), "CA1", 1001.0) == CallClaims()


def test_claims_cannot_be_swapped():
    """Another call's (valid) claims spliced into this token break its MAC: no forged agent."""
    mine = mint(KEY, "CA1", now=1000.0, ttl_s=60, claims=CallClaims(agent="basic"))
    other = mint(KEY, "CA1", now=1000.0, ttl_s=60, claims=CallClaims(agent="admin"))
    expiry, _, mac = mine.split(".")
    forged = f"{expiry}.{other.split('.')[1]}.{mac}"
    assert TokenVerifier(KEY).verify(forged, "CA1", 1001.0) is TokenRejection.BAD_MAC


@pytest.mark.parametrize("mutate", [
    lambda t: "0" + t,  # same MAC, non-canonical expiry: must not bypass the replay cache
    lambda t: t.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
    lambda t: t.rsplit(".", 1)[0] + ".ÿÿÿ",  # non-ASCII MAC must not raise
    lambda t: "9" * 5000 + "." + t.split(".", 1)[1],
    lambda t: t.replace(".", "=.", 1),
    lambda t: "", lambda t: "nodot", lambda t: t + ".extra",
])
def test_malformed_tokens_rejected_without_exceptions(mutate):
    token = mint(KEY, "CA1", now=1000.0, ttl_s=60, claims=CLAIMS)
    verifier = TokenVerifier(KEY)
    assert verifier.verify(token, "CA1", 1001.0) == CLAIMS
    assert verifier.verify(mutate(token), "CA1", 1001.0) in (
        TokenRejection.MALFORMED, TokenRejection.BAD_MAC, TokenRejection.MISSING)
