"""Configuration table in the README, and the client events built outside the fast path."""
from __future__ import annotations

import pathlib

import orjson
import pytest

from gateway.agents import profiles, session
from gateway.config import VARIABLES, Settings, markdown_table
from gateway.openai import events as oa
from gateway.sim.openai_schema import validate_client_event

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_is_the_code_table():
    text = README.read_text()
    start, end = text.index("<!-- config-table:start -->"), text.index("<!-- config-table:end -->")
    assert text[start:end].split("\n", 1)[1].strip() == markdown_table().strip()
    for var in VARIABLES:
        assert f"`{var.env}`" in text


@pytest.mark.parametrize("mode", ["passthrough", "pcm16"])
def test_session_update_matches_official_schema(mode):
    settings = Settings.from_env({}, insecure_dev=True, audio_mode=mode, vad_interrupt_response=False)
    agents = profiles.from_settings(settings)
    _, agent = agents.get(agents.default)
    event = orjson.loads(oa.session_update(session.session_config(agent, agents.tools, settings), "CA1:session"))
    _, errors = validate_client_event(event)
    assert errors == []
    fmt = event["session"]["audio"]["input"]["format"]
    assert fmt == ({"type": "audio/pcmu"} if mode == "passthrough" else {"type": "audio/pcm", "rate": 24000})
    vad = event["session"]["audio"]["input"]["turn_detection"]
    assert vad["create_response"] is True and vad["interrupt_response"] is False  # always explicit


@pytest.mark.parametrize("raw", [
    oa.response_create(), oa.response_create("Greet the caller."), oa.response_cancel(None),
    oa.response_cancel("resp_1"), oa.item_truncate("item_1", 0, 1234), oa.item_delete("item_1"),
    oa.response_out_of_band("Say you are checking.", "filler"), oa.function_call_output("call_1", '{"ok":true}'),
    oa.user_text("The caller pressed 4 2 #"), oa.system_text("The transfer failed."),
])
def test_client_events_match_official_schema(raw):
    _, errors = validate_client_event(orjson.loads(raw))
    assert errors == []


def test_schema_check_catches_a_typo():
    """The validator the simulator and these tests rely on must reject unknown keys."""
    _, errors = validate_client_event({"type": "conversation.item.truncate", "item_id": "i",
                                       "content_index": 0, "audio_end_ms": 5, "audio_end": 5})
    assert errors


def test_readme_metrics_table_is_the_code_table():
    from gateway.metrics import markdown_table

    text = README.read_text()
    start, end = text.index("<!-- metrics-table:start -->"), text.index("<!-- metrics-table:end -->")
    assert text[start:end].split("\n", 1)[1].strip() == markdown_table().strip()
