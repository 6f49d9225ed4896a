"""Request signatures (and the verifier the docs show), token usage and cost, transcripts as heard."""
from __future__ import annotations

from pathlib import Path

from gateway.agents.profiles import DEFAULT_PRICES
from gateway.agents.signing import sign, verify
from gateway.agents.transcript import Transcript
from gateway.agents.usage import Tokens
from gateway.openai.server_events import CachedDetails, InputDetails, OutputDetails, Usage


def test_signature_round_trip_and_tampering():
    body = b'{"name":"lookup_order"}'
    header = sign("k", body, now=1_000_000)
    assert header.startswith("t=1000000,v1=")
    assert verify("k", header, body, now=1_000_010)
    assert not verify("k", header, body + b" ", now=1_000_010)
    assert not verify("other", header, body, now=1_000_010)
    assert not verify("k", header, body, now=1_000_000 + 301)  # too old: a replay
    assert not verify("k", "garbage", body, now=1_000_000)


def test_the_documented_verifier_accepts_what_we_sign():
    text = (Path(__file__).resolve().parents[2] / "docs" / "agents.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) <= 6  # "a 5-line verifier" (plus its import line)
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 - the documentation's own code, checked
    body = b'{"x":1}'
    assert namespace["verify"]("k", sign("k", body), body)
    assert not namespace["verify"]("k", sign("k", body), body + b"!")


def test_usage_sums_and_costs():
    tokens = Tokens()
    usage = Usage(total_tokens=1300, input_tokens=1000, output_tokens=300,
                  input_token_details=InputDetails(text_tokens=200, audio_tokens=800, cached_tokens=500,
                                                   cached_tokens_details=CachedDetails(text_tokens=100,
                                                                                       audio_tokens=400)),
                  output_token_details=OutputDetails(text_tokens=50, audio_tokens=250))
    assert tokens.add(usage) == {"input_text": 100, "input_audio": 400, "input_cached_text": 100,
                                 "input_cached_audio": 400, "output_text": 50, "output_audio": 250}
    tokens.add(usage)
    assert tokens.counts["output_audio"] == 500 and tokens.responses == 2
    price = DEFAULT_PRICES["gpt-realtime"]
    expected = (200 * 4.0 + 200 * 0.4 + 800 * 32.0 + 800 * 0.4 + 100 * 16.0 + 500 * 64.0) / 1e6
    assert tokens.cost_usd(price) == round(expected, 6)
    assert tokens.cost_usd(None) is None


def test_a_deleted_caller_turn_leaves_the_transcript_for_good():
    """False-interruption resume deletes the noise from the conversation: its transcription, which
    comes later, must not bring it back."""
    t = Transcript()
    t.assistant_item("item_a1", 1.0)
    t.caller_item("item_c1", 2.0)
    t.forget("item_c1")
    t.caller_text("item_c1", "cough", 2.5)
    t.caller_item("item_c2", 3.0)
    t.caller_text("item_c2", "hello", 3.5)
    assert [(s["role"], s.get("text")) for s in t.snapshot()] == [("assistant", ""), ("caller", "hello")]


def test_assistant_turn_cut_where_the_caller_stopped_hearing():
    t = Transcript()
    t.caller_item("item_c1", 1.0)
    t.assistant_item("item_a1", 2.0)
    t.assistant_text("item_a1", "one two three four five six seven eight nine ten", 3.0)
    t.audio_done("item_a1", 4000.0)
    t.truncated("item_a1", 1200, None)  # 30 % heard
    t.caller_text("item_c1", "hello there", 5.0)  # transcription arrives late: placed at its item
    t.keypad("4 2 #", 6.0)
    snap = t.snapshot()
    assert [s["role"] for s in snap] == ["caller", "assistant", "keypad"]
    assert snap[0]["text"] == "hello there"
    assert snap[1]["text"] == "one two three" and snap[1]["truncated"] and snap[1]["heard_ms"] == 1200
    assert snap[1]["full_text"].endswith("ten")
    t.truncated("item_a1", 0, 4000.0)
    assert t.snapshot()[1]["text"] == ""  # heard nothing: no words
