"""Every setting validated from its declaration in ``VARIABLES``: one line per wrong setting naming the
variable, the value and what is allowed; all of them at once; overrides validated too."""
from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import BY_FIELD, VARIABLES, Settings, Var
from gateway.errors import ConfigError

VALID = {"GATEWAY_INSECURE_DEV": "1"}


def bad_values(var: Var) -> list[tuple[str, str]]:
    """(environment value, problem) pairs the declaration must refuse."""
    out: list[tuple[str, str]] = []
    if var.kind is bool:
        out.append(("maybe", "not a boolean"))
    elif var.kind in (int, float):
        out.append(("abc", "not an integer" if var.kind is int else "not a number"))
        if var.minimum is not None:
            out.append((str(int(var.minimum) - 1), "out of range"))
        if var.maximum is not None:
            out.append((str(int(var.maximum) + 1), "out of range"))
    if var.choices:
        out.append(("nope", "unknown value"))
    if var.url:
        out.append(("ftp://example.com", "not a "))
    if var.required and var.kind is str:
        out.append(("", "must not be empty"))
    if var.file:
        out.append(("/nonexistent/ca.pem", "no such readable file"))
    if var.secret:
        out.append(("sk-abc def", "contains spaces or line breaks"))
    out.extend(CHECKED.get(var.env, []))
    return out


# Variables refused by a ``check`` function, with a value each must refuse.
CHECKED = {
    "TWILIO_ACCOUNT_SID": [("AC123", "not a Twilio SID")],
    "TWILIO_API_KEY": [("AC" + "0" * 32, "not a Twilio SID")],
    "GATEWAY_CALL_RECORDS_DIR": [("/nonexistent/records", "neither a directory nor creatable")],
    "GATEWAY_POD_NAME": [("pod:1", "not a name")],
}


CASES = [(var, value, problem) for var in VARIABLES for value, problem in bad_values(var)]


def test_every_default_is_valid():
    for var in VARIABLES:
        assert var.problem(var.default) is None, var.env
    Settings.from_env(VALID)


def test_every_constrained_variable_is_covered():
    """Only free text (instructions, greeting) has nothing to refuse."""
    unconstrained = {var.env for var in VARIABLES if not bad_values(var)}
    assert unconstrained == {"GATEWAY_INSTRUCTIONS", "GATEWAY_GREETING", "GATEWAY_RECONNECT_LINE"}


@pytest.mark.parametrize(("var", "value", "problem"), CASES, ids=[f"{v.env}={x!r}" for v, x, _ in CASES])
def test_one_message_naming_variable_value_and_what_is_allowed(var, value, problem):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**VALID, var.env: value})
    assert len(info.value.problems) == 1, info.value.problems
    line = info.value.problems[0]
    shown = "<secret>" if var.secret else (value if value and " " not in value else repr(value))
    assert line.startswith(f"{var.env}={shown}: {problem}"), line
    assert line.endswith(f"; allowed: {var.describe().replace('`', '')}"), line


def test_the_issue_examples():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**VALID, "GATEWAY_VAD_THRESHOLD": "2", "GATEWAY_PORT": "abc"})
    assert info.value.problems == [
        "GATEWAY_PORT=abc: not an integer; allowed: an integer from 0 to 65535",
        "GATEWAY_VAD_THRESHOLD=2: out of range; allowed: a number from 0 to 1",
    ]
    assert "invalid literal" not in str(info.value)


def test_all_wrong_settings_at_once_in_table_order_with_the_missing_auth_token():
    env = {"GATEWAY_WORKERS": "-1", "GATEWAY_AUDIO_MODE": "opus", "GATEWAY_LOG_LEVEL": "loud",
           "GATEWAY_PUBLIC_URL": "https://abc.ngrok.app/twilio/voice", "GATEWAY_UPSTREAM_URL": "http://x"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    names = [line.split("=", 1)[0] for line in info.value.problems]
    assert names == ["GATEWAY_PUBLIC_URL", "GATEWAY_UPSTREAM_URL", "GATEWAY_AUDIO_MODE", "GATEWAY_LOG_LEVEL",
                     "GATEWAY_WORKERS", ("TWILIO_AUTH_TOKEN is not set: refusing to start without Twilio signature "
                     "validation. Set it to your Twilio account's Auth Token, or GATEWAY_INSECURE_DEV")]
    assert "drop the /twilio/... path" in info.value.problems[0]
    assert "`gateway demo`" in info.value.problems[-1]
    assert str(info.value) == "\n".join(info.value.problems)


def test_overrides_are_validated_like_the_environment():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({}, insecure_dev=True, port=70000, vad_threshold=1.5, twilio_latency_ms="5", audio_mode="x")
    assert info.value.problems == [
        "GATEWAY_PORT=70000 (given to Settings.from_env): out of range; allowed: an integer from 0 to 65535",
        "GATEWAY_AUDIO_MODE=x (given to Settings.from_env): unknown value; allowed: one of passthrough, pcm16",
        "GATEWAY_VAD_THRESHOLD=1.5 (given to Settings.from_env): out of range; allowed: a number from 0 to 1",
        ("GATEWAY_TWILIO_LATENCY_MS='5' (given to Settings.from_env): is a str, not float; allowed: a number from 0 "
        "to 2000"),
    ]
    # an override replaces a wrong environment value, and is the value in force
    s = Settings.from_env({"GATEWAY_PORT": "abc", "GATEWAY_INSECURE_DEV": "1"}, port=18080, workers=1)
    assert (s.port, s.workers) == (18080, 1)
    with pytest.raises(TypeError, match="unknown setting"):
        Settings.from_env(VALID, no_such_setting=1)


def test_parsing_is_forgiving_where_it_is_unambiguous():
    env = {**VALID, "GATEWAY_LOG_LEVEL": "debug", "GATEWAY_PORT": " 9000 ", "GATEWAY_VAD_THRESHOLD": "1"}
    s = Settings.from_env(env)
    assert (s.log_level, s.port, s.vad_threshold) == ("DEBUG", 9000, 1.0)


def test_secrets_are_never_shown():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**VALID, "OPENAI_API_KEY": "sk-xyzzy \n", "GATEWAY_CONTROL_TOKEN": "a b"})
    assert "xyzzy" not in str(info.value) and "a b" not in str(info.value)
    assert [p.split(":", 1)[0] for p in info.value.problems] == ["OPENAI_API_KEY=<secret>",
                                                                 "GATEWAY_CONTROL_TOKEN=<secret>"]


def test_validate_reports_every_problem_of_a_constructed_settings():
    s = Settings(port=-1, audio_mode="x")
    problems = s.problems()
    assert problems[0].startswith("GATEWAY_PORT=-1: out of range")
    assert problems[1].startswith("GATEWAY_AUDIO_MODE=x: unknown value")
    assert problems[2].startswith("TWILIO_AUTH_TOKEN is not set")
    with pytest.raises(ConfigError):
        s.validate()


def test_by_field_and_settings_fields_match():
    import dataclasses

    assert [f.name for f in dataclasses.fields(Settings)] == [v.field for v in VARIABLES]
    assert set(BY_FIELD) == {v.field for v in VARIABLES}
    for var in VARIABLES:  # the dataclass default and the declaration's default agree
        assert getattr(Settings(), var.field) == var.default, var.env


def test_python_m_gateway_config_help():
    out = subprocess.run([sys.executable, "-m", "gateway.config", "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.startswith("usage: python -m gateway.config")
    assert "| Variable |" not in out and "gateway check" in out
    table = subprocess.run([sys.executable, "-m", "gateway.config"], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    assert table.startswith("| Variable | Default | Allowed | Meaning |")


@pytest.mark.parametrize(("env", "message"), [
    ({"GATEWAY_PLAYOUT_CHUNK_MS": "200", "GATEWAY_PLAYOUT_LEAD_MS": "300"},
     "GATEWAY_PLAYOUT_CHUNK_MS must be at most half of GATEWAY_PLAYOUT_LEAD_MS"),
    ({"GATEWAY_MIN_INTERRUPTION_MS": "400", "GATEWAY_PLAYOUT": "burst"},
     "GATEWAY_MIN_INTERRUPTION_MS needs GATEWAY_PLAYOUT=paced"),
])
def test_playout_settings_that_do_not_fit_together(env, message):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"GATEWAY_INSECURE_DEV": "1", **env})
    assert any(line.startswith(message) for line in info.value.problems)
    fixed = {**env, "GATEWAY_PLAYOUT": "paced", "GATEWAY_PLAYOUT_LEAD_MS": "400"}
    Settings.from_env({"GATEWAY_INSECURE_DEV": "1", **fixed})
