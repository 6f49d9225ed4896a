"""Agent profiles: the agents file's contract, its one-line errors, routing, and the session built."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.agents import profiles, session
from gateway.config import Settings
from gateway.openai import events as oa
from gateway.sim.openai_schema import validate_client_event

SETTINGS = Settings.from_env({}, insecure_dev=True, tool_secret="s3cret")

GOOD = """
[agents.support]
instructions = "You are the support line of Example Inc."
voice = "marin"
greeting = "Greet the caller and ask for their order number."
tools = ["lookup_order", "end_call", "transfer_call"]
transfer_targets = ["+15550100", "sip:desk@example.com"]
dtmf = "forward"
transcripts = true
noise_reduction = "near_field"
transcription_language = "en"
max_call_s = 900

[agents.support.turn_detection]
type = "semantic_vad"
eagerness = "auto"

[agents.sales]
instructions = "You sell things."
audio_mode = "pcm16"
model = "gpt-realtime-mini"
[agents.sales.filler]
kind = "tone"
after_ms = 800

[tools.lookup_order]
description = "Look up an order by its number."
parameters = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
url = "https://tools.example.com/lookup-order"
timeout_s = 5.0

[routes]
default = "support"
"+15551234567" = "sales"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    return path


def test_the_documented_file_loads(tmp_path):
    agents = profiles.load_file(write(tmp_path, GOOD), SETTINGS)
    assert set(agents.agents) == {"support", "sales"}
    assert agents.route("+15551234567", None) == ("sales", True)
    assert agents.route("+15550000000", None) == ("support", True)
    assert agents.route("+15551234567", "support") == ("support", True)  # ?agent= wins
    assert agents.route("+15551234567", "nobody") == ("support", False)  # unknown: default, flagged
    assert agents.get("gone") == ("support", agents.agents["support"])  # removed by a reload
    assert agents.agents["sales"].filler.kind == "tone"


def test_docs_example_is_the_contract(tmp_path):
    """The agents file shown in docs/agents.md loads as written."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "agents.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    agents = profiles.load_file(write(tmp_path, example), SETTINGS)
    assert agents.agents["support"].tools == ("lookup_order", "end_call", "transfer_call")


@pytest.mark.parametrize("name", ["support", "sales"])
def test_sessions_match_the_official_schema(tmp_path, name):
    agents = profiles.load_file(write(tmp_path, GOOD), SETTINGS)
    config = session.session_config(agents.agents[name], agents.tools, SETTINGS)
    _, errors = validate_client_event(orjson.loads(oa.session_update(config, "CA1:session")))
    assert errors == []
    if name == "support":
        assert [t["name"] for t in config["tools"]] == ["lookup_order", "end_call", "transfer_call"]
        transfer = config["tools"][2]["parameters"]["properties"]["target"]
        assert transfer["enum"] == ["+15550100", "sip:desk@example.com"]
        audio_in = config["audio"]["input"]
        assert audio_in["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "en"}
        assert audio_in["noise_reduction"] == {"type": "near_field"}
        assert audio_in["turn_detection"] == {"type": "semantic_vad", "eagerness": "auto",
                                              "create_response": True, "interrupt_response": True}
    else:
        assert config["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert config["model"] == "gpt-realtime-mini" and "tools" not in config


def test_without_a_file_one_agent_from_the_environment():
    settings = Settings.from_env({}, insecure_dev=True, instructions="Be brief.", voice="cedar", greeting="Hi")
    agents = profiles.load(settings)
    name, agent = agents.get(agents.default)
    assert (name, agent.instructions, agent.voice, agent.greeting, agent.tools) == ("default", "Be brief.", "cedar",
                                                                                    "Hi", ())
    assert agents.source == "environment"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda t: t.replace('voice = "marin"', "voice = 7"),
     "agents.support.voice: Expected `str`, got `int`"),
    (lambda t: t.replace('dtmf = "forward"', 'dtmf = "sometimes"'),
     "agents.support.dtmf: Invalid enum value 'sometimes'"),
    (lambda t: t.replace('voice = "marin"', 'voice = "marin"\nvoise = "x"'),
     "agents.support: Object contains unknown field `voise`"),
    (lambda t: t.replace('"lookup_order", "end_call"', '"lookup", "end_call"'),
     "agents.support.tools: no tool named 'lookup' (define [tools.lookup] or use a built-in"),
    (lambda t: t.replace('transfer_targets = ["+15550100", "sip:desk@example.com"]', "transfer_targets = []"),
     "agents.support.transfer_targets: transfer_call needs at least one allowed target"),
    (lambda t: t.replace('"+15550100", "sip', '"555-0100", "sip'),
     "agents.support.transfer_targets: '555-0100' is neither E.164"),
    (lambda t: t.replace('"+15551234567" = "sales"', '"+15551234567" = "marketing"'),
     "routes.+15551234567: no agent named 'marketing'"),
    (lambda t: t.replace('url = "https://tools', 'url = "ftp://tools'),
     "tools.lookup_order.url: must be an http(s) URL"),
    (lambda t: t.replace("timeout_s = 5.0", "timeout_s = 0"),
     "tools.lookup_order.timeout_s: must be within (0, 60] seconds"),
    (lambda t: t.replace('eagerness = "auto"', 'eagerness = "auto"\nthreshold = 0.5'),
     "agents.support.turn_detection: threshold/prefix_padding_ms/silence_duration_ms are server_vad knobs"),
    (lambda t: t.replace("[tools.lookup_order]", "[tools.end_call]").replace('"lookup_order", ', ""),
     "tools.end_call: end_call is built in and cannot be redefined"),
    (lambda t: t.replace("[agents.sales]", "[agents.sales]]"), "not valid TOML"),
    (lambda t: t.replace("max_call_s = 900", "max_call_s = 900\nmin_interruption_ms = 9000"),
     "agents.support.min_interruption_ms: must be within 0..5000 ms"),
])
def test_bad_files_are_refused_in_one_line(tmp_path, mutate, message):
    path = write(tmp_path, mutate(GOOD))
    with pytest.raises(profiles.AgentsFileError) as info:
        profiles.load_file(path, SETTINGS)
    text = str(info.value)
    assert text.startswith(f"agents file {path}: ") and "\n" not in text
    assert message in text


def test_http_tools_need_the_signing_secret(tmp_path):
    settings = Settings.from_env({}, insecure_dev=True)
    with pytest.raises(profiles.AgentsFileError, match="GATEWAY_TOOL_SECRET must be set"):
        profiles.load_file(write(tmp_path, GOOD), settings)


def test_missing_file(tmp_path):
    with pytest.raises(profiles.AgentsFileError, match="cannot read it"):
        profiles.load_file(tmp_path / "nope.toml", SETTINGS)


def test_false_interruption_resume_per_agent(tmp_path):
    """An agent's min_interruption_ms overrides the deployment's; the session then leaves both
    interrupting and answering to the gateway; burst playout cannot resume, so it is refused."""
    text = GOOD.replace("max_call_s = 900", "max_call_s = 900\nmin_interruption_ms = 400")
    agents = profiles.load_file(write(tmp_path, text), SETTINGS)
    support, sales = agents.agents["support"], agents.agents["sales"]
    assert session.min_interruption_ms(support, SETTINGS) == 400
    assert session.min_interruption_ms(sales, SETTINGS) == 0  # GATEWAY_MIN_INTERRUPTION_MS=0
    td = session.session_config(support, agents.tools, SETTINGS)["audio"]["input"]["turn_detection"]
    assert td["create_response"] is False and td["interrupt_response"] is False
    td = session.session_config(sales, agents.tools, SETTINGS)["audio"]["input"]["turn_detection"]
    assert td["create_response"] is True and td["interrupt_response"] is True
    everyone = Settings.from_env({}, insecure_dev=True, tool_secret="s3cret", min_interruption_ms=300)
    assert session.min_interruption_ms(sales, everyone) == 300
    burst = Settings.from_env({}, insecure_dev=True, tool_secret="s3cret", playout="burst")
    with pytest.raises(profiles.AgentsFileError, match="min_interruption_ms: needs GATEWAY_PLAYOUT=paced"):
        profiles.load_file(write(tmp_path, text), burst)
