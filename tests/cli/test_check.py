"""``gateway check`` through the real console script, against the simulators: the OpenAI simulator
(TLS, a throw-away CA) as the upstream and a real ``Gateway`` behind the public URL, both in this
process; the check runs as a subprocess with a newcomer's clean environment."""
from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from cli_helpers import clean_env, free_port, gateway_command

from gateway.config import Settings
from gateway.server import Gateway
from gateway.sim.openai_sim import OpenAIRealtimeSim, OpenAISimConfig
from gateway.sim.openai_tls import make_self_signed_tls

AUTH_TOKEN = "check-auth-token"
API_KEY = "sk-sim-check"
pytestmark = pytest.mark.timeout(120)


@dataclass
class Target:
    sim: OpenAIRealtimeSim
    gateway: Gateway
    env: dict[str, str]


@contextlib.asynccontextmanager
async def target() -> AsyncIterator[Target]:
    """The OpenAI simulator accepting only ``API_KEY``, and a gateway answering on its public URL."""
    tls_dir = tempfile.TemporaryDirectory(prefix="check-tls-")
    ssl_ctx, ca_file = make_self_signed_tls(tls_dir.name)
    sim = OpenAIRealtimeSim(OpenAISimConfig(api_key=API_KEY))
    gateway: Gateway | None = None
    try:
        upstream = await sim.start(ssl_context=ssl_ctx)
        port = free_port()
        public = f"http://127.0.0.1:{port}"
        settings = Settings.from_env({}, host="127.0.0.1", port=port, public_url=public, upstream_url=upstream,
                                     openai_api_key=API_KEY, upstream_ca_file=ca_file, twilio_auth_token=AUTH_TOKEN)
        gateway = Gateway(settings)
        await gateway.start()
        yield Target(sim, gateway, {
            "OPENAI_API_KEY": API_KEY, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": public,
            "GATEWAY_UPSTREAM_URL": upstream, "GATEWAY_UPSTREAM_CA_FILE": ca_file, "GATEWAY_PORT": str(port)})
    finally:
        if gateway is not None:
            await gateway.stop()
        await sim.stop()
        tls_dir.cleanup()


async def check(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *gateway_command(), "check", "--timeout", "5", *args, env=clean_env(**env),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode()


def statuses(out: str) -> dict[str, str]:
    """First words of each result line → its status (``upstream`` → ``ok``)."""
    found = {}
    for line in out.splitlines():
        status, _, title = line.strip().partition(" ")
        if line.startswith("  ") and not line.startswith("      ") and status in ("ok", "warn", "FAIL", "skip"):
            found[" ".join(title.split()[:2])] = status
    return found


def test_good_configuration(run):
    async def scenario():
        async with target() as t:
            code, out = await check(t.env)
            assert code == 0, out
            got = statuses(out)
            assert got["configuration: every"] == "ok" and got["fast path:"] == "ok" and got["security: Twilio"] == "ok"
            assert got[f"upstream {t.env['GATEWAY_UPSTREAM_URL']}"] == "ok"
            assert got["webhook POST"] == "ok"
            assert got["public URL"] == "warn"  # 127.0.0.1: fine for the simulators, not for Twilio
            assert "TCP + TLS + WebSocket upgrade with OPENAI_API_KEY accepted" in out
            assert "session.created (model gpt-realtime)" in out and "closed at once, no event or audio sent" in out
            assert "TwiML <Stream url=\"ws://127.0.0.1:" in out
            assert out.rstrip().splitlines()[-1] == "result: nothing wrong, 1 warning (warn above)."
            # no session was used: nothing sent, closed by the client at once
            [session] = t.sim.sessions
            assert session.client_events == [] and session.client_closed and session.client_close_code == 1000
            assert t.gateway.calls == set() and t.gateway.rejected == {}
    run(scenario())


def test_bad_key_refused_by_the_openai_simulator(run):
    async def scenario():
        async with target() as t:
            code, out = await check({**t.env, "OPENAI_API_KEY": "sk-wrong"})
            assert code == 1, out
            assert statuses(out)[f"upstream {t.env['GATEWAY_UPSTREAM_URL']}"] == "FAIL"
            assert ("the upstream refused OPENAI_API_KEY: HTTP 401 invalid_api_key: Incorrect API key provided."
                    in out)
            assert [(r.status, r.reason) for r in t.sim.rejected] == [(401, "incorrect API key")]
            assert t.sim.sessions == []
            assert out.rstrip().splitlines()[-1].startswith("result: 1 problem (FAIL above)")
            assert "`gateway demo`" in out
    run(scenario())


def test_unreachable_upstream(run):
    async def scenario():
        async with target() as t:
            port = free_port()
            code, out = await check({**t.env, "GATEWAY_UPSTREAM_URL": f"wss://127.0.0.1:{port}/v1/realtime"
                                                                      "?model=gpt-realtime"})
            assert code == 1, out
            assert f"cannot connect to 127.0.0.1:{port}:" in out
            assert statuses(out)["webhook POST"] == "ok"  # the rest is still checked
    run(scenario())


def test_untrusted_upstream_certificate(run):
    async def scenario():
        async with target() as t:
            code, out = await check({**t.env, "GATEWAY_UPSTREAM_CA_FILE": ""})
            assert code == 1, out
            assert "TLS: the server's certificate is not trusted" in out and "GATEWAY_UPSTREAM_CA_FILE" in out
    run.expected_errors = 1  # the simulator's side of the failed TLS handshake
    run(scenario())


@pytest.mark.parametrize("case", ["nothing answers", "wrong path", "other auth token"])
def test_wrong_public_url(run, case):
    async def scenario():
        async with target() as t:
            env = dict(t.env)
            if case == "nothing answers":
                env["GATEWAY_PUBLIC_URL"] = f"http://127.0.0.1:{free_port()}"
            elif case == "wrong path":
                env["GATEWAY_PUBLIC_URL"] += "/prefix"
            else:
                env["TWILIO_AUTH_TOKEN"] = "another-accounts-token"
            code, out = await check(env)
            assert code == 1, out
            if case == "nothing answers":
                assert "nothing answers GET /healthz" in out and "is `gateway serve` running" in out
            elif case == "wrong path":
                assert "GET /healthz answered HTTP 404, not the gateway's \"ok\"" in out
            else:
                assert statuses(out)["webhook POST"] == "FAIL"
                assert "refused the signature (HTTP 403)" in out and "another TWILIO_AUTH_TOKEN" in out
            assert statuses(out)[f"upstream {t.env['GATEWAY_UPSTREAM_URL']}"] == "ok"
    run(scenario())


def test_no_api_key_fails_and_the_upstream_is_skipped(run):
    async def scenario():
        async with target() as t:
            env = {k: v for k, v in t.env.items() if k != "OPENAI_API_KEY"}
            code, out = await check(env)
            assert code == 1, out
            got = statuses(out)
            assert got["OPENAI_API_KEY is"] == "FAIL" and got[f"upstream {t.env['GATEWAY_UPSTREAM_URL']}"] == "skip"
            assert t.sim.sessions == [] and t.sim.rejected == []
    run(scenario())


def test_invalid_configuration_lists_every_wrong_setting(run):
    async def scenario():
        code, out = await check({"GATEWAY_VAD_THRESHOLD": "2", "GATEWAY_PORT": "abc", "TWILIO_AUTH_TOKEN": "x"})
        assert code == 2, out
        assert out.splitlines()[1:3] == [
            "  FAIL  GATEWAY_PORT=abc: not an integer; allowed: an integer from 0 to 65535",
            "  FAIL  GATEWAY_VAD_THRESHOLD=2: out of range; allowed: a number from 0 to 1"]
        assert out.splitlines()[3].startswith("result: 2 wrong settings")
    run(scenario())
