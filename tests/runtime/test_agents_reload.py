"""Agent profiles under the real ``gateway serve``: SIGHUP reloads them in every worker without
touching calls in progress, a bad file on reload keeps the old one, a bad file at start is refused."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from test_runtime import Sims, arun, free_port, serve_args, sid

from gateway.sim.twilio_script import CallScript

pytestmark = pytest.mark.timeout(120)

AGENT = """
[agents.support]
instructions = "{text}"
greeting = "Greet the caller."
"""


def instructions(sims: Sims, call_sid: str) -> str:
    session = sims.stack.session_for(call_sid)
    assert session is not None, call_sid
    update = next(e for e in session.client_events if e.type == "session.update")
    return str(update.event["session"]["instructions"])


def test_sighup_reloads_agents_in_every_worker_and_spares_calls_in_progress(serve, tmp_path: Path):
    path = tmp_path / "agents.toml"
    path.write_text(AGENT.format(text="Version one."))

    async def scenario() -> None:
        async with Sims() as sims:
            port = free_port()
            gw = serve(*serve_args(2, port), **sims.env(GATEWAY_AGENTS_FILE=str(path)))
            await gw.wait_ready(2)
            twilio = sims.twilio_for(port)
            long_calls = [twilio.start_call(CallScript(duration_ms=6000), sid("a", i)) for i in range(4)]
            await asyncio.sleep(1.5)  # the long calls are streaming with version one
            path.write_text(AGENT.format(text="Version two."))
            gw.proc.send_signal(signal.SIGHUP)
            await gw.until(lambda: sum("agents reloaded" in m for m in gw.messages()) >= 2, 10, "2 workers reloaded")
            new_calls = [twilio.start_call(CallScript(duration_ms=1500), sid("b", i)) for i in range(4)]
            path.write_text("[agents.support]\ninstructions = 7\n")  # a broken edit...
            gw.proc.send_signal(signal.SIGHUP)
            await gw.until(lambda: sum("not reloaded" in m for m in gw.messages()) >= 2, 10, "2 refusals")
            later = [twilio.start_call(CallScript(duration_ms=1500), sid("c", i)) for i in range(2)]
            records = await asyncio.wait_for(asyncio.gather(*(c.wait() for c in long_calls + new_calls + later)), 30)
            assert sims.problems(records) == {}  # the calls in progress were not touched
            assert {instructions(sims, c.record.call_sid) for c in long_calls} == {"Version one."}
            assert {instructions(sims, c.record.call_sid) for c in new_calls + later} == {"Version two."}
            assert len(set(gw.call_workers().values())) == 2  # both workers took calls
            refusal = next(m for m in gw.messages() if "not reloaded" in m)
            assert "agents.support.instructions: Expected `str`, got `int`" in refusal
            gw.proc.send_signal(signal.SIGTERM)
            assert await gw.wait_exit(20) == 0

    arun(scenario(), 100)


def test_a_bad_agents_file_stops_serve_with_one_line(serve, tmp_path: Path):
    path = tmp_path / "agents.toml"
    path.write_text('[agents.support]\ninstructions = "Hi"\ntools = ["nope"]\n')
    gw = serve("--workers", "1", "--port", "0", GATEWAY_INSECURE_DEV="1", GATEWAY_AGENTS_FILE=str(path))
    assert gw.wait_exit_sync(20) == 2
    lines = [m.strip() for m in gw.messages() if "agents file" in m]
    expected = (f"agents file {path}: agents.support.tools: no tool named 'nope' "
                "(define [tools.nope] or use a built-in: end_call, transfer_call)")
    assert lines == [expected]
    assert "gateway serve: configuration error (1 problem):" in gw.messages()
