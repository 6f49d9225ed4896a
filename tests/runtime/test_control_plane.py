"""The control plane under the real ``gateway serve``: every verb reaches the worker that owns the
call whichever worker (or pod) the request lands on; pod-wide admission is exact; tokens and
CallSids are single-use across workers and pods; Redis (a real ``redis-server``) killed and restarted
mid-call leaves the calls untouched; an outbound call placed with one request is bridged end to end.

Every effect is proven by what the simulators recorded (OpenAI: interrupts, say, instructions;
Twilio REST: hang-up, transfer, create), not by what the gateway answers.
"""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_runtime import AUTH_TOKEN, PUBLIC_URL, Sims, arun, free_port, serve_args, sid

from gateway.sim.twilio_rest import TwilioRestSim
from gateway.sim.twilio_script import CallScript
from gateway.sim.twilio_sim import TwilioSim, TwilioSimConfig
from gateway.twilio.signature import compute_signature

pytestmark = pytest.mark.timeout(180)
TOKEN = "control-token-for-tests"
AGENTS = """
[agents.support]
instructions = "You are the support line."
greeting = "Greet the caller."
tools = ["end_call", "transfer_call"]
transfer_targets = ["+15550100"]
transcripts = true
"""


def control_env(sims: Sims, rest: TwilioRestSim, agents: Path, **extra: str) -> dict[str, str]:
    return sims.env(GATEWAY_CONTROL_TOKEN=TOKEN, TWILIO_ACCOUNT_SID=rest.account_sid,
                    TWILIO_API_BASE_URL=rest.base_url, GATEWAY_AGENTS_FILE=str(agents), **extra)


@contextlib.asynccontextmanager
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: the kernel spreads them over the workers (SO_REUSEPORT).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield session


async def ask(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with session.request(method, url, **kw) as resp:
        return resp.status, await resp.json()


async def until(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_every_verb_reaches_its_call_whichever_worker_answers(serve, tmp_path: Path):
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)

    async def scenario() -> None:
        async with Sims() as sims:
            port = free_port()
            twilio = sims.twilio_for(port)
            rest = TwilioRestSim(twilio)
            await rest.start()
            try:
                gw = serve(*serve_args(2, port), **control_env(sims, rest, agents))
                await gw.wait_ready(2)
                base = f"http://127.0.0.1:{port}"
                long_call = twilio.start_call(CallScript(duration_ms=30_000), sid("v", 1))
                hang_call = twilio.start_call(CallScript(duration_ms=30_000), sid("v", 2))
                await until(lambda: all(sims.stack.session_for(c.record.call_sid) for c in (long_call, hang_call)),
                            10, "both sessions")
                first = long_call.record.call_sid
                async with http() as client:
                    routes = set()
                    for _ in range(12):  # listed and found from every worker
                        status, body = await ask(client, "GET", f"{base}/calls")
                        assert status == 200 and {c["call_sid"] for c in body["calls"]} >= {first}
                        status, body = await ask(client, "GET", f"{base}/calls/{first}")
                        assert status == 200 and body["agent"] == "support", body
                        routes.add(body["route"])
                    assert routes == {"local", "pod"}  # some requests reached the other worker
                    status, body = await ask(client, "POST", f"{base}/calls/{first}/say", json={"text": "Hold on."})
                    assert status == 200, body
                    session = sims.stack.session_for(first)
                    assert session is not None
                    await until(lambda: any((r.metadata or {}).get("gateway") == "say" for r in session.responses),
                                5, "the said response")
                    await asyncio.sleep(0.3)  # its audio reached Twilio
                    interrupted = []
                    for _ in range(6):  # the first one clears what Twilio holds; the others find nothing to do
                        status, body = await ask(client, "POST", f"{base}/calls/{first}/interrupt")
                        assert status == 200, body
                        interrupted.append(body["interrupted"])
                    assert interrupted.count(True) == 1, interrupted
                    status, body = await ask(client, "POST", f"{base}/calls/{first}/instructions",
                                             json={"instructions": "Speak French."})
                    assert status == 200, body
                    await until(lambda: [e for e in session.client_events if e.type == "session.update"
                                         and e.event["session"].get("instructions") == "Speak French."], 5,
                                "the instructions")
                    status, body = await ask(client, "POST", f"{base}/calls/{first}/transfer",
                                             json={"target": "+19999999999"})
                    assert status == 400 and "not a transfer target" in body["error"]
                    status, body = await ask(client, "POST", f"{base}/calls/{first}/transfer",
                                             json={"target": "+15550100"})
                    assert status == 200, body
                    second = hang_call.record.call_sid
                    status, body = await ask(client, "POST", f"{base}/calls/{second}/hangup",
                                             json={"after_playout": True})
                    assert status == 200, body
                    records = await asyncio.wait_for(asyncio.gather(long_call.wait(), hang_call.wait()), 30)
                    assert [str(r.outcome) for r in records] == ["redirected", "rest_completed"]
                    assert len(records[0].clears) == 1  # the interrupt cleared Twilio's buffer
                    assert records[0].transferred_to == "+15550100"
                    status, body = await ask(client, "GET", f"{base}/calls/{first}")
                    assert status == 404, body
                    async with aiohttp.ClientSession() as anonymous:
                        assert (await ask(anonymous, "GET", f"{base}/calls"))[0] == 401
            finally:
                await rest.stop()

    arun(scenario(), 150)


def test_pod_wide_admission_is_exact_under_concurrent_arrivals(serve, tmp_path: Path):
    async def scenario() -> None:
        async with Sims() as sims:
            port = free_port()
            gw = serve(*serve_args(2, port), **sims.env(GATEWAY_MAX_CALLS="5"))
            await gw.wait_ready(2)
            url = PUBLIC_URL + "/twilio/voice"

            async def webhook(i: int) -> str:
                form = {"CallSid": sid("adm", i), "From": "+14155550123", "To": "+18005550199"}
                headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, \
                        s.post(f"http://127.0.0.1:{port}/twilio/voice", data=form, headers=headers) as resp:
                    return await resp.text()

            answers = await asyncio.gather(*(webhook(i) for i in range(40)))
            connected = sum("<Connect>" in a for a in answers)
            busy = sum('<Reject reason="busy"/>' in a for a in answers)
            assert (connected, busy) == (5, 35)
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 503 and "capacity" in await resp.text()  # 5 places reserved in the pod

    arun(scenario(), 60)


def test_a_replayed_token_and_a_second_socket_are_refused_on_the_other_worker(serve, tmp_path: Path):
    """Twilio signs no timestamp: a webhook replayed with its valid signature, or a second media
    socket for a streaming CallSid, must never become a second upstream session."""

    async def scenario() -> None:
        async with Sims() as sims:
            port = free_port()
            twilio = sims.twilio_for(port)
            gw = serve(*serve_args(2, port), **sims.env())
            await gw.wait_ready(2)
            first = twilio.start_call(CallScript(duration_ms=8000), sid("dup", 1))
            await until(lambda: sims.stack.session_for(first.record.call_sid) is not None, 10, "the first session")
            # The same CallSid again: within the same second the webhook mints the very same token
            # (a replay: refused by the worker's own cache or, on the other worker, by the pod's hub)...
            copies = [twilio.start_call(CallScript(duration_ms=3000), sid("dup", 1)) for _ in range(4)]
            await asyncio.sleep(1.1)
            # ... a second later a fresh token: a second media socket for a streaming call
            copies += [twilio.start_call(CallScript(duration_ms=3000), sid("dup", 1)) for _ in range(4)]
            records = await asyncio.wait_for(asyncio.gather(*(c.wait() for c in copies)), 20)
            assert {(r.close_code, r.closed_by) for r in records} == {(1008, "gateway")}
            sessions = [s for s in sims.stack.openai.sessions if any(
                e.type == "session.update" and e.event.get("event_id") == f"{sid('dup', 1)}:session"
                for e in s.client_events)]
            assert len(sessions) == 1  # one upstream session billing for the CallSid
            def refusals() -> list[str]:
                return [m for m in gw.messages() if m.startswith("call ended: ")
                        and ("replayed" in m or "duplicate_stream" in m)]

            await gw.until(lambda: len(refusals()) >= 8, 5, "the gateway's log lines of 8 refusals")
            refusals = refusals()
            assert len(refusals) == 8, refusals
            assert any("duplicate_stream" in m for m in refusals) and any("replayed" in m for m in refusals)
            await first.wait()

    arun(scenario(), 60)


# --------------------------------------------------------------------------- Redis
@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.skip("Debian's redis-server is not installed (.ci/run installs it with apt-get)")
    port = free_port()
    state: dict[str, Any] = {"port": port, "url": f"redis://127.0.0.1:{port}/0"}

    def start() -> None:
        state["proc"] = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), __import__("socket").create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop() -> None:
        state["proc"].kill()
        state["proc"].wait(10)

    state["start"], state["stop"] = start, stop
    start()
    yield state
    stop()


def test_two_pods_share_one_control_plane_in_redis(serve, tmp_path: Path, redis_server):
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)

    async def scenario() -> None:
        async with Sims() as sims:
            ports = [free_port(), free_port()]
            twilio = sims.twilio_for(ports[0])  # every call lands on pod A
            rest = TwilioRestSim(twilio)
            await rest.start()
            try:
                pods = [serve(*serve_args(2, port), **control_env(
                    sims, rest, agents, GATEWAY_REDIS_URL=redis_server["url"], GATEWAY_POD_NAME=name,
                    GATEWAY_CLUSTER_MAX_CALLS="50")) for port, name in zip(ports, ("pod-a", "pod-b"), strict=True)]
                for gw in pods:
                    await gw.wait_ready(2)
                call = twilio.start_call(CallScript(duration_ms=40_000), sid("rd", 1))
                call_sid = sid("rd", 1)
                await until(lambda: sims.stack.session_for(call_sid) is not None, 10, "the session")
                # The same CallSid through pod B (a replayed webhook, or Twilio's second socket): refused
                twilio_b = TwilioSim(TwilioSimConfig(webhook_url=PUBLIC_URL + "/twilio/voice",
                                                     connect_to=f"http://127.0.0.1:{ports[1]}", auth_token=AUTH_TOKEN))
                try:
                    twice = [twilio_b.start_call(CallScript(duration_ms=3000), call_sid) for _ in range(3)]
                    copies = await asyncio.wait_for(asyncio.gather(*(c.wait() for c in twice)), 20)
                finally:
                    await twilio_b.close()
                assert {(r.close_code, r.closed_by) for r in copies} == {(1008, "gateway")}
                assert sum(s is not None for s in [sims.stack.session_for(call_sid)]) == 1
                assert len([s for s in sims.stack.openai.sessions if any(
                    e.type == "session.update" and e.event.get("event_id") == f"{call_sid}:session"
                    for e in s.client_events)]) == 1  # one upstream session billing for the CallSid
                other = f"http://127.0.0.1:{ports[1]}"
                async with http() as client:
                    status, body = await ask(client, "GET", f"{other}/calls/{call_sid}")
                    assert status == 200 and body["route"] == "cluster", body
                    status, body = await ask(client, "GET", f"{other}/calls")
                    assert status == 200 and [c["pod"] for c in body["calls"]] == ["pod-a"]
                    status, body = await ask(client, "POST", f"{other}/calls/{call_sid}/interrupt")
                    assert status == 200 and body["route"] == "cluster", body
                    # Redis goes away mid-call: the call goes on; pod B cannot reach it, pod A still can
                    redis_server["stop"]()
                    await asyncio.sleep(1.0)
                    status, body = await ask(client, "GET", f"{other}/calls/{call_sid}")
                    assert status == 503, body
                    status, body = await ask(client, "GET", f"http://127.0.0.1:{ports[0]}/calls/{call_sid}")
                    assert status in (200, 503), body  # 200 when the request lands on pod A's owner worker
                    redis_server["start"]()
                    for _ in range(100):  # the registry catches up (re-registration, resubscription)
                        status, body = await ask(client, "GET", f"{other}/calls/{call_sid}")
                        if status == 200:
                            break
                        await asyncio.sleep(0.3)
                    assert status == 200 and body["route"] == "cluster", body
                    status, body = await ask(client, "POST", f"{other}/calls/{call_sid}/hangup")
                    assert status == 200, body
                record = await asyncio.wait_for(call.wait(), 20)
                assert str(record.outcome) == "rest_completed"
                assert sims.problems([record]) == {}  # audio flowed through the outage untouched
                assert any("redis unreachable" in m for gw in pods for m in gw.messages())
            finally:
                await rest.stop()

    arun(scenario(), 170)


def test_an_outbound_call_with_one_request(serve, tmp_path: Path):
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)

    async def scenario() -> None:
        async with Sims() as sims:
            port = free_port()
            twilio = sims.twilio_for(port)
            rest = TwilioRestSim(twilio)
            await rest.start()
            try:
                gw = serve(*serve_args(1, port), **control_env(sims, rest, agents))
                await gw.wait_ready(1)
                async with http() as client:
                    status, body = await ask(client, "POST", f"http://127.0.0.1:{port}/calls",
                                             json={"to": "+15557654321", "from": "+18005550199",
                                                   "agent": "support"})
                assert status == 202, body
                call_sid = body["call_sid"]
                await until(lambda: call_sid in twilio.calls and twilio.calls[call_sid].record.stream_sid, 10,
                            "the outbound call's stream")
                record = await asyncio.wait_for(twilio.calls[call_sid].wait(), 30)
                assert record.direction == "outbound-api" and str(record.outcome) == "completed"
                assert sims.problems([record]) == {}
                session = sims.stack.session_for(call_sid)
                assert session is not None  # bridged to the model with the chosen agent
                update = next(e for e in session.client_events if e.type == "session.update")
                assert update.event["session"]["instructions"] == "You are the support line."
            finally:
                await rest.stop()

    arun(scenario(), 60)
