"""The first hour with the ``gateway`` command, through the real console script: what `run` chooses
and says, the startup summary and its warnings, configuration errors, the pure-twin refusal, help
texts, and picows' connection lines."""
from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import clean_env, cli, free_port, gateway_command

import _fastpath
from gateway.cli import choose_run_mode
from gateway.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def loopback(port: int, workers: int = 1) -> tuple[str, ...]:
    return ("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers))


# --------------------------------------------------------------------------- gateway run: which mode, and why


def run_args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"serve": False, "demo": False, "host": None, "port": None, "workers": None}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize(("flags", "env", "mode", "reason"), [
    ({}, {}, "demo", "no OPENAI_API_KEY and no Twilio setting is set"),
    ({}, {"OPENAI_API_KEY": "sk-x"}, "demo", "OPENAI_API_KEY is set but TWILIO_AUTH_TOKEN is not"),
    ({}, {"OPENAI_API_KEY": "sk-x", "TWILIO_AUTH_TOKEN": "t"}, "serve",
     "OPENAI_API_KEY and TWILIO_AUTH_TOKEN are set"),
    ({}, {"OPENAI_API_KEY": "sk-x", "GATEWAY_INSECURE_DEV": "1"}, "serve",
     "OPENAI_API_KEY and GATEWAY_INSECURE_DEV=1 are set"),
    ({"port": 9000}, {"OPENAI_API_KEY": "sk-x"}, "refuse",
     "--port asks to serve, but TWILIO_AUTH_TOKEN (or GATEWAY_INSECURE_DEV=1 for local tests) is not set"),
    ({}, {"TWILIO_AUTH_TOKEN": "t", "GATEWAY_PUBLIC_URL": "https://x.example"}, "refuse",
     "GATEWAY_PUBLIC_URL, TWILIO_AUTH_TOKEN ask to serve, but OPENAI_API_KEY is not set"),
    ({}, {"GATEWAY_PORT": "8081"}, "refuse", "GATEWAY_PORT asks to serve, but OPENAI_API_KEY and TWILIO_AUTH_TOKEN"),
    ({"demo": True}, {"OPENAI_API_KEY": "sk-x", "TWILIO_AUTH_TOKEN": "t"}, "demo", "--demo"),
    ({"serve": True}, {}, "serve", "--serve"),
])
def test_run_mode_choice(flags, env, mode, reason):
    got_mode, got_reason = choose_run_mode(run_args(**flags), env)
    assert got_mode == mode
    assert got_reason.startswith(reason), got_reason


@pytest.mark.parametrize("env", [{}, {"OPENAI_API_KEY": "sk-exported-on-a-dev-machine"}])
def test_run_without_a_complete_configuration_runs_the_demo_and_says_why(start, env):
    gw = start("run", **env)
    first = gw.until(lambda: gw.out[:1], 30, "the first line")[0]
    gw.stop()
    assert first.startswith("gateway run: running the demo, because "), first
    assert "`gateway run --serve`" in first and "Connect a real Twilio number" in first
    if env:
        assert "TWILIO_AUTH_TOKEN is not" in first and "not your key" in first
    assert "TWILIO_AUTH_TOKEN is not set: refusing" not in gw.text()  # the old trap


def test_run_refuses_to_serve_an_incomplete_configuration_it_was_asked_to_serve():
    done = cli("run", "--port", "18080", env={"OPENAI_API_KEY": "sk-x"})
    assert done.returncode == 2
    assert done.stderr.startswith("gateway run: not serving: --port asks to serve, but TWILIO_AUTH_TOKEN"), done.stderr
    assert "`gateway demo`" in done.stderr
    done = cli("run", "--demo", "--port", "18080")
    assert done.returncode == 2 and "serving options" in done.stderr


def test_run_serves_a_complete_configuration_and_says_why(start):
    port = free_port()
    gw = start("run", *loopback(port), OPENAI_API_KEY="sk-x", TWILIO_AUTH_TOKEN="tw")
    gw.ready()
    assert gw.err[0] == ("gateway run: serving, because OPENAI_API_KEY and TWILIO_AUTH_TOKEN are set "
                         "(`gateway demo` runs the self-contained demo instead)")
    summary = gw.record("startup summary")
    assert summary["listen"] == f"127.0.0.1:{port}" and summary["warnings"] == []
    assert gw.stop() == 0


# --------------------------------------------------------------------------- gateway serve: startup summary


def test_serve_summary_reports_the_configuration_in_force_as_fields(start):
    port = free_port()
    gw = start("serve", *loopback(port), GATEWAY_PORT="8080", GATEWAY_WORKERS="0", GATEWAY_INSECURE_DEV="1",
               GATEWAY_PUBLIC_URL="http://abcd.ngrok-free.app", GATEWAY_CONTROL_TOKEN="ctl-secret")
    gw.ready()
    s = gw.record("startup summary")
    assert s["worker"] == "supervisor" and s["level"] == "info"
    assert (s["listen"], s["workers"], s["workers_from"]) == (f"127.0.0.1:{port}", 1, "--workers")
    assert (s["settings"]["port"], s["settings"]["workers"], s["settings"]["host"]) == (port, 1, "127.0.0.1")
    assert s["public_url"] == "http://abcd.ngrok-free.app"
    assert s["webhook_url"] == "http://abcd.ngrok-free.app/twilio/voice"
    assert s["stream_url"] == "ws://abcd.ngrok-free.app/twilio/media"
    assert s["upstream_url"] == "wss://api.openai.com/v1/realtime?model=gpt-realtime" and s["model"] == "gpt-realtime"
    assert (s["audio_mode"], s["playout"], s["security"], s["control_api"], s["openai_api_key"]) == (
        "passthrough", "paced", "insecure", "on", "unset")
    assert s["fast_path"] == ("compiled" if _fastpath.COMPILED else "pure")
    assert "ctl-secret" not in gw.text()
    # one warning per setting that makes every call fail (and the insecure public URL), also as log lines
    assert [w.split(":")[0] for w in s["warnings"]] == [
        "OPENAI_API_KEY is not set", "GATEWAY_PUBLIC_URL is http", "GATEWAY_INSECURE_DEV=1 on a public URL"]
    assert "`gateway demo`" in s["warnings"][0]
    warned = [r["msg"] for r in gw.records() if r.get("level") == "warning" and r.get("worker") == "supervisor"]
    assert warned == s["warnings"]
    assert not any(str(r.get("msg", "")).startswith("settings {") for r in gw.records())  # no dict in msg
    assert gw.stop() == 0, gw.text()


def test_serve_summary_warns_on_a_model_mismatch_and_a_plain_remote_upstream(start):
    port = free_port()
    gw = start("serve", *loopback(port), OPENAI_API_KEY="sk-x", TWILIO_AUTH_TOKEN="tw",
               GATEWAY_PUBLIC_URL="https://abcd.ngrok-free.app", GATEWAY_MODEL="gpt-realtime-mini",
               GATEWAY_UPSTREAM_URL="ws://proxy.example.com/v1/realtime?model=gpt-realtime")
    s = gw.record("startup summary")
    assert [w.split(" ")[0] for w in s["warnings"]] == ["GATEWAY_MODEL=gpt-realtime-mini", "GATEWAY_UPSTREAM_URL"]
    assert s["stream_url"] == "wss://abcd.ngrok-free.app/twilio/media" and s["security"] == "secure"
    assert s["control_api"] == "off"
    gw.stop()


def test_serve_summary_is_a_table_on_a_terminal():
    port = free_port()
    main, child = pty.openpty()
    proc = subprocess.Popen([*gateway_command(), "serve", *loopback(port)], env=clean_env(GATEWAY_INSECURE_DEV="1"),
                            stdin=subprocess.DEVNULL,
                            stdout=child, stderr=child, start_new_session=True)
    os.close(child)
    buf = b""
    try:
        deadline = time.monotonic() + 30
        while b"workers ready" not in buf and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    buf += os.read(main, 65536)
                except OSError:
                    break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        os.close(main)
    text = buf.decode(errors="replace").replace("\r\n", "\n")
    assert "gateway serve: configuration in force\n" in text, text
    table = text.split("gateway serve: configuration in force\n", 1)[1]
    labels = [line.split()[0] for line in table.splitlines()[:10]]
    assert labels == ["listen", "public", "webhook", "stream", "upstream", "audio", "playout", "fast", "security",
                      "control"]
    assert "playout      paced (Twilio holds ≤ 300 ms ahead, 100 ms chunks)" in table
    assert f"127.0.0.1:{port} · 1 worker (--workers)" in table
    assert "WARNING      OPENAI_API_KEY is not set" in table
    assert "`gateway check`" in table
    assert '"msg":"startup summary"' not in text


def test_serve_reports_every_wrong_setting_at_once():
    done = cli("serve", env={"GATEWAY_VAD_THRESHOLD": "2", "GATEWAY_PORT": "abc", "GATEWAY_AUDIO_MODE": "opus"})
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == "gateway serve: configuration error (4 problems):"
    assert lines[1:4] == ["  GATEWAY_PORT=abc: not an integer; allowed: an integer from 0 to 65535",
                          "  GATEWAY_AUDIO_MODE=opus: unknown value; allowed: one of passthrough, pcm16",
                          "  GATEWAY_VAD_THRESHOLD=2: out of range; allowed: a number from 0 to 1"]
    assert lines[4].startswith("  TWILIO_AUTH_TOKEN is not set") and "`gateway demo`" in lines[4]
    assert lines[5] == "Every setting and its allowed values: `python -m gateway.config`."  # demo named above
    assert "Traceback" not in done.stderr and "invalid literal" not in done.stderr


def test_serve_options_are_validated_by_their_declarations():
    done = cli("serve", "--port", "70000")
    assert done.returncode == 2
    assert "argument --port: 70000: out of range; allowed: an integer from 0 to 65535" in done.stderr
    done = cli("serve", "--workers", "-1")
    assert "argument --workers: -1: out of range; allowed: an integer from 0 to 256" in done.stderr


# --------------------------------------------------------------------------- the pure-Python twin


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The repository's packages without any built extension: what ``python -m gateway`` imports when
    run from the repository root after a non-editable install."""
    root = tmp_path_factory.mktemp("checkout")
    ignore = shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.html")
    for package in ("gateway", "_fastpath"):
        shutil.copytree(ROOT / package, root / package, ignore=ignore)
    return root


def from_the_source_tree(start, source_copy: Path, *args: str, **env: str):
    """``python -m gateway.cli serve`` started in the source tree: ``-m`` puts the working directory
    first on sys.path (unless PYTHONSAFEPATH, which CI's installed-wheel pass sets: cleared here)."""
    return start(*args, cmd=[sys.executable, "-m", "gateway.cli"], cwd=str(source_copy), **env)


@pytest.fixture
def no_safe_path(monkeypatch):
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)


@pytest.mark.usefixtures("no_safe_path")
def test_serve_refuses_the_pure_twin_nobody_asked_for(start, source_copy):
    gw = from_the_source_tree(start, source_copy, "serve", *loopback(free_port()), GATEWAY_INSECURE_DEV="1",
                              OPENAI_API_KEY="sk-x", GATEWAY_NO_EXTENSIONS="0")
    assert gw.proc.wait(60) == 2, gw.text()
    gw.kill()
    err = "\n".join(gw.err)
    assert err.startswith("gateway serve: refusing to start: the compiled fast path is missing: _fastpath was "
                          f"imported from {source_copy / '_fastpath'}"), err
    assert "GATEWAY_NO_EXTENSIONS=1" in err and "pip install -e ." in err
    assert "RuntimeWarning" not in err


@pytest.mark.usefixtures("no_safe_path")
def test_serve_runs_the_pure_twin_when_asked(start, source_copy):
    gw = from_the_source_tree(start, source_copy, "serve", *loopback(free_port()), GATEWAY_INSECURE_DEV="1",
                              OPENAI_API_KEY="sk-x", GATEWAY_NO_EXTENSIONS="1")
    gw.ready()
    assert gw.record("startup summary")["fast_path"] == "pure"
    assert gw.stop() == 0


def test_a_worker_refuses_the_pure_twin_too(source_copy):
    env = clean_env(GATEWAY_INSECURE_DEV="1", PYTHONPATH=str(source_copy))
    env.pop("GATEWAY_NO_EXTENSIONS", None)
    done = subprocess.run([sys.executable, "-P", "-m", "gateway.runtime.worker", "--index", "0", "--host", "127.0.0.1",
                           "--port", "0"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("gateway worker 0: refusing to start: the compiled fast path is missing")


# --------------------------------------------------------------------------- help


def test_help_is_plain_text_and_covers_every_option():
    outputs = {}
    for args in (["--help"], ["run", "--help"], ["serve", "--help"], ["demo", "--help"], ["check", "--help"]):
        done = cli(*args)
        assert done.returncode == 0, done.stderr
        outputs[" ".join(args)] = done.stdout
    for text in outputs.values():
        assert "``" not in text and ":class:" not in text and ":func:" not in text
    assert all(cmd in outputs["--help"] for cmd in ("gateway demo", "gateway serve", "gateway check", "gateway run"))
    run = outputs["run --help"]
    for option in ("--serve", "--demo", "--host", "--port", "--workers", "--audio-mode"):
        assert option in run
    assert "OPENAI_API_KEY alone does not serve" in run and "never" in run
    assert "passthrough: mu-law both ways" in outputs["demo --help"]
    serve = outputs["serve --help"]
    assert "environment variables" in serve and "python -m gateway.config" in serve and "gateway check" in serve
    check = outputs["check --help"]
    assert cli("doctor", "--help").stdout == check  # an alias of check
    assert "session.created" in check and "no audio" in check and "GET /v1/models" in check


# --------------------------------------------------------------------------- picows' lines


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_picows_connection_lines_follow_the_gateway_format(start, level):
    import asyncio

    from picows import WSListener, ws_connect

    port = free_port()
    gw = start("serve", *loopback(port), GATEWAY_INSECURE_DEV="1", OPENAI_API_KEY="sk-x", GATEWAY_LOG_LEVEL=level)
    gw.ready()

    async def connect_and_leave():
        transport, _ = await ws_connect(WSListener, f"ws://127.0.0.1:{port}/twilio/media")
        transport.disconnect()
        await transport.wait_disconnected()

    asyncio.run(connect_and_leave())
    gw.until(lambda: any(str(r.get("msg", "")).startswith("call ended") for r in gw.records()), 20, "call ended")
    gw.stop()
    assert all(not line.startswith(("New connection", "Disconnected")) for line in gw.err)  # never unformatted
    picows = [r for r in gw.records() if str(r.get("logger", "")).startswith("picows")]
    if level == "INFO":
        assert picows == []
    else:
        assert {(r["logger"], r["level"]) for r in picows} == {("picows.server", "debug")}
        msgs = [r["msg"].split(":")[0] for r in picows]
        assert msgs[0] == "New connection accepted" and "Disconnected" in msgs, msgs
        assert all(isinstance(r["fd"], int) and r["worker"] == 0 for r in picows)


def test_every_variable_is_cleared_for_these_tests():
    """The tests above start from a newcomer's empty environment, whatever the developer exported."""
    env = clean_env()
    assert not {v.env for v in VARIABLES} & set(env)
