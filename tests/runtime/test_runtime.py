"""``gateway serve``: supervisor + worker processes sharing one SO_REUSEPORT port, end to end.

The real ``gateway serve`` runs as a subprocess (its own process group, killed at teardown);
the OpenAI Realtime and Twilio simulators run in the test process, like ``gateway.sim.harness``
but with the gateway in other processes. Which worker handled a call comes from the workers'
JSON log lines ("stream started", fields ``worker`` and ``call_sid``). Calls are judged by
``Stack.judge`` from the simulators' records only.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Self

import aiohttp
import pytest

from gateway.runtime.supervisor import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    Supervisor,
    next_backoff,
)
from gateway.sim.harness import Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig
from gateway.sim.twilio_script import CallScript, Turn
from gateway.sim.twilio_sim import TwilioSim, TwilioSimConfig

PUBLIC_URL = "https://gateway.example.test"
AUTH_TOKEN = "sim-auth-token"
LATENCY_MS, JITTER_MS = 20.0, 5.0

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arun(coro, timeout: float):
    """Run a scenario on a fresh loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def sid(tag: str, i: int) -> str:
    return f"CA{tag}{i:0{32 - len(tag)}x}"


def script(i: int, duration_ms: int = 3000) -> CallScript:
    """Greeting from the model; every other caller barges in on it (clear + truncate)."""
    turns = (Turn(after_heard_ms=500, speech_ms=400),) if i % 2 else ()
    return CallScript(duration_ms=duration_ms, turns=turns)


class Sims:
    """The two simulators in this process; ``env()`` configures a gateway process against them."""

    def __init__(self) -> None:
        # Stack is used for its OpenAI simulator and its judge only: the gateway is elsewhere.
        self.stack = Stack(StackConfig(tls=False, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, openai=OpenAISimConfig(
            response_ms=(1500,), pace=5.0, first_audio_ms=200)))
        self.upstream_url = ""
        self.twilio: TwilioSim | None = None

    async def __aenter__(self) -> Self:
        self.upstream_url = await self.stack.openai.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.twilio is not None:
            await self.twilio.close()
        await self.stack.openai.stop()

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC_URL,
            "GATEWAY_UPSTREAM_URL": self.upstream_url, "OPENAI_API_KEY": "sk-sim",
            "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S": "5", "GATEWAY_TWILIO_LATENCY_MS": str(LATENCY_MS),
            "GATEWAY_GREETING": "Greet the caller.", "GATEWAY_DRAIN_TIMEOUT_S": "20", "GATEWAY_LOG_LEVEL": "INFO",
            **extra,
        }

    def twilio_for(self, port: int) -> TwilioSim:
        self.twilio = TwilioSim(TwilioSimConfig(
            webhook_url=PUBLIC_URL + "/twilio/voice", connect_to=f"http://127.0.0.1:{port}", auth_token=AUTH_TOKEN,
            latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, timeout_s=10.0))
        return self.twilio

    def problems(self, records) -> dict[str, list[str]]:
        out = {}
        for record in records:
            report = self.stack.judge(record)
            if report.problems:
                out[record.call_sid] = report.problems
        return out


def serve_args(workers: int, port: int) -> tuple[str, ...]:
    return ("--workers", str(workers), "--host", "127.0.0.1", "--port", str(port))


async def gather_bounded(handles, timeout: float, return_exceptions: bool = False):
    return await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles), return_exceptions=return_exceptions),
                                  timeout)


async def sigterm_and_wait(gw, timeout: float = 20.0) -> int:
    gw.proc.send_signal(signal.SIGTERM)
    return await gw.wait_exit(timeout)


# --------------------------------------------------------------------------- load spreads


def test_two_workers_share_the_port_and_the_calls(serve):
    async def scenario():
        async with Sims() as sims:
            port = free_port()
            gw = serve(*serve_args(2, port), **sims.env())
            pids = await gw.wait_ready(2)
            assert set(pids) == {0, 1} and len(set(pids.values())) == 2
            twilio = sims.twilio_for(port)
            handles = [twilio.start_call(script(i), sid("a", i)) for i in range(16)]
            records = await gather_bounded(handles, 30)
            assert [(r.call_sid, str(r.outcome), r.violations) for r in records if str(r.outcome) != "completed"
                    or r.violations] == []
            assert sims.problems(records) == {}
            placement = gw.call_workers()
            assert set(placement) == {r.call_sid for r in records}, gw.tail()
            assert sorted(set(placement.values())) == [0, 1], placement  # the kernel used both workers

            # Multiprocess metrics: the supervisor gave the workers a fresh directory, so every
            # worker's /metrics counts the calls of both.
            metrics_dir = next(m.split("=", 1)[1] for m in gw.messages("supervisor")
                               if m.startswith("prometheus multiprocess mode: PROMETHEUS_MULTIPROC_DIR="))
            assert os.path.isdir(metrics_dir)  # noqa: ASYNC240 - one stat() of a local directory
            connector = aiohttp.TCPConnector(force_close=True)  # a new connection (any worker) per request
            async with aiohttp.ClientSession(connector=connector) as http:
                for _ in range(6):
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        assert resp.status == 200
                        assert "\ngateway_calls_started_total 16.0\n" in await resp.text()
            assert await sigterm_and_wait(gw) == 0, gw.tail()
            assert not os.path.exists(metrics_dir)  # noqa: ASYNC240 - removed by the supervisor on exit
    arun(scenario(), 60)


# --------------------------------------------------------------------------- a worker dies


def test_sigkill_of_one_worker_spares_the_other_and_is_restarted(serve, tmp_path):
    async def scenario():
        prom_dir = tmp_path / "prometheus"
        prom_dir.mkdir()
        async with Sims() as sims:
            port = free_port()
            gw = serve(*serve_args(2, port), **sims.env(PROMETHEUS_MULTIPROC_DIR=str(prom_dir)))
            pids = await gw.wait_ready(2)
            twilio = sims.twilio_for(port)
            handles = [twilio.start_call(script(i, 4000), sid("b", i)) for i in range(12)]
            sids = {h.record.call_sid for h in handles}
            placement = await gw.until(lambda: (p := gw.call_workers()) and set(p) >= sids and p, 10,
                                       "every call's stream started")
            counts = {w: sum(1 for v in placement.values() if v == w) for w in (0, 1)}
            survivor = max(counts, key=counts.get)
            victim = 1 - survivor
            assert counts[survivor] > 0
            # What prometheus_client leaves for a live gauge of that worker: must be cleaned up.
            gauge_file = prom_dir / f"gauge_livesum_{pids[victim]}.db"
            gauge_file.write_bytes(b"")

            os.kill(pids[victim], signal.SIGKILL)
            results = await gather_bounded(handles, 30, return_exceptions=True)
            by_sid = {h.record.call_sid: r for h, r in zip(handles, results, strict=True)}
            spared = [by_sid[s] for s, w in placement.items() if w == survivor]
            for record in spared:
                assert not isinstance(record, BaseException), record
                assert str(record.outcome) == "completed" and record.violations == [], record.call_sid
            assert sims.problems(spared) == {}
            for s, w in placement.items():  # the victim's calls really were cut
                if w == victim:
                    assert isinstance(by_sid[s], BaseException) or str(by_sid[s].outcome) != "completed"

            new_pid = await gw.until(lambda: gw.ready_pids().get(victim, pids[victim]) != pids[victim]
                                     and gw.ready_pids()[victim], 15, "a replacement worker ready")
            assert new_pid != pids[victim] and new_pid != pids[survivor]
            supervisor = gw.messages("supervisor")
            assert any(m.startswith(f"worker {victim} (pid {pids[victim]}) exited unexpectedly (signal SIGKILL)")
                       and "restarting in 0.5 s" in m for m in supervisor), supervisor
            assert any(m.startswith(f"worker {victim} restarted: pid {new_pid}") for m in supervisor), supervisor
            assert (f"worker {victim} (pid {pids[victim]}) died with {counts[victim]} calls: counted as ended "
                    "(outcome worker_lost)") in supervisor, supervisor
            assert any(f"worker ready (pid {new_pid}," in m for m in gw.messages(victim))
            assert not gauge_file.exists()  # mark_process_dead ran for the dead pid

            # New calls work afterwards (on either worker).
            more = [twilio.start_call(script(i), sid("c", i)) for i in range(6)]
            records = await gather_bounded(more, 30)
            assert [str(r.outcome) for r in records] == ["completed"] * len(records)
            assert sims.problems(records) == {}
            # Any worker's /metrics sums all processes, the supervisor's restart counter included.
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            assert "gateway_worker_restarts_total 1.0" in text
            # Every call started was counted as ended, the dead worker's included (by the supervisor).
            lost = counts[victim]
            ended_lines = [line for line in text.splitlines() if line.startswith("gateway_calls_ended_total")]
            assert f'gateway_calls_ended_total{{outcome="worker_lost"}} {float(lost)}' in text, (
                counts, ended_lines, [m for m in gw.messages("supervisor") if "hub" in m])
            started = float(next(line.split()[-1] for line in text.splitlines()
                                 if line.startswith("gateway_calls_started_total ")))
            ended = sum(float(line.split()[-1]) for line in text.splitlines()
                        if line.startswith("gateway_calls_ended_total{"))
            assert started == ended == len(handles) + len(more), (started, ended)
            assert await sigterm_and_wait(gw) == 0, gw.tail()
    arun(scenario(), 75)


def test_calls_a_killed_worker_held_before_their_start_are_counted_lost(serve):
    """A call is counted started when its media socket opens; the hub hears of it only at its
    ``start``. Killed in between, the worker's calls are still counted ended (``worker_lost``)."""
    async def scenario():
        async with Sims() as sims:
            port = free_port()
            gw = serve(*serve_args(1, port), **sims.env())
            pids = await gw.wait_ready(1)
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                sockets = [await http.ws_connect(f"ws://127.0.0.1:{port}/twilio/media") for _ in range(2)]
                for ws in sockets:
                    await ws.send_str('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')

                async def metrics() -> str:
                    async with http.get(base + "/metrics") as resp:
                        return await resp.text()

                deadline = time.monotonic() + 10
                while "\ngateway_calls_started_total 2.0\n" not in await metrics():
                    assert time.monotonic() < deadline, "the worker never counted the two sockets"
                    await asyncio.sleep(0.05)
                os.kill(pids[0], signal.SIGKILL)
                for ws in sockets:
                    await ws.receive(timeout=10)  # closed with the worker
                    await ws.close()
                await gw.until(lambda: gw.ready_pids().get(0, pids[0]) != pids[0], 15, "a replacement worker ready")
                text = await metrics()
            # The supervisor's counters, from the directory it created (none given here).
            assert "\ngateway_worker_restarts_total 1.0\n" in text, text
            assert 'gateway_calls_ended_total{outcome="worker_lost"} 2.0' in text, text
            assert f"worker 0 (pid {pids[0]}) died with 2 calls: counted as ended (outcome worker_lost)" in (
                gw.messages("supervisor"))
            assert not any("is gone with" in m for m in gw.messages("supervisor"))  # the hub never knew them
            assert await sigterm_and_wait(gw) == 0, gw.tail()
    arun(scenario(), 60)


# --------------------------------------------------------------------------- graceful drain


@pytest.mark.parametrize("target", ["supervisor", "process group"])
def test_sigterm_drains_active_calls_and_refuses_new_ones(serve, target):
    """``process group``: every worker gets SIGTERM twice (directly, as from systemd's default
    KillMode or ``timeout``, and forwarded by the supervisor): still one drain, not a hard stop."""
    async def scenario():
        async with Sims() as sims:
            port = free_port()
            gw = serve(*serve_args(2, port), **sims.env(GATEWAY_DRAIN_TIMEOUT_S="20"))
            await gw.wait_ready(2)
            twilio = sims.twilio_for(port)
            handles = [twilio.start_call(script(i, 4000), sid("d", i)) for i in range(6)]
            sids = {h.record.call_sid for h in handles}
            await gw.until(lambda: set(gw.call_workers()) >= sids, 10, "every call's stream started")
            base = f"http://127.0.0.1:{port}"
            connector = aiohttp.TCPConnector(force_close=True)  # a new connection (any worker) per request
            async with aiohttp.ClientSession(connector=connector) as http:
                async with http.get(base + "/readyz") as resp:
                    assert resp.status == 200

                sent_at = time.monotonic()
                if target == "supervisor":
                    gw.proc.send_signal(signal.SIGTERM)
                else:
                    os.killpg(gw.proc.pid, signal.SIGTERM)
                first_503 = None
                in_a_row = 0
                while in_a_row < 8:  # both workers must be refusing: 8 new connections in a row
                    assert time.monotonic() - sent_at < 3.0, f"readiness did not flip\n{gw.tail()}"
                    async with http.get(base + "/readyz") as resp:
                        if resp.status == 503:
                            first_503 = first_503 or time.monotonic()
                            in_a_row += 1
                            assert "draining" in await resp.text()
                        else:
                            in_a_row = 0
                            await asyncio.sleep(0.01)
                assert first_503 - sent_at < 1.0

                for _ in range(4):  # the media socket refuses new streams
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await http.ws_connect(base.replace("http", "ws") + "/twilio/media")
                    assert refused.value.status == 503

            late = [twilio.start_call(script(i), sid("e", i)) for i in range(4)]
            late_records = await gather_bounded(late, 10)
            assert [str(r.outcome) for r in late_records] == ["rejected_busy"] * 4
            assert all(r.twiml and '<Reject reason="busy"/>' in r.twiml for r in late_records)

            records = await gather_bounded(handles, 20)  # the active calls finish normally
            assert [str(r.outcome) for r in records] == ["completed"] * len(records)
            assert all(r.closed_by == "twilio" for r in records)
            assert sims.problems(records) == {}
            assert await gw.wait_exit(20) == 0, gw.tail()
            messages = gw.messages()
            assert sum(1 for m in messages if m.startswith("draining:")) == 2
            assert not any(m.startswith("drain timeout") for m in messages)
            assert "all workers exited; supervisor exit code 0" in gw.messages("supervisor")
            assert not any(m.endswith("stopping now") for m in messages)
            # a planned shutdown is not an incident: no error line (alerts fire on them)
            errors = [r["msg"] for r in gw.logs() if r.get("level") == "error"]
            assert errors == [], errors
    arun(scenario(), 60)


@pytest.mark.parametrize("how", ["second SIGTERM", "SIGINT"])
def test_second_sigterm_or_sigint_stops_at_once(serve, how):
    async def scenario():
        async with Sims() as sims:
            port = free_port()
            gw = serve(*serve_args(2, port), **sims.env(GATEWAY_DRAIN_TIMEOUT_S="60"))
            await gw.wait_ready(2)
            twilio = sims.twilio_for(port)
            handles = [twilio.start_call(CallScript(duration_ms=20000), sid("f", i)) for i in range(4)]
            sids = {h.record.call_sid for h in handles}
            await gw.until(lambda: set(gw.call_workers()) >= sids, 10, "every call's stream started")
            if how == "SIGINT":
                gw.proc.send_signal(signal.SIGINT)
            else:
                gw.proc.send_signal(signal.SIGTERM)
                await gw.until(lambda: sum(m.startswith("draining:") for m in gw.messages()) == 2, 5, "drain")
                await asyncio.sleep(1.2)  # past the duplicate window: this one means "now"
                gw.proc.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            records = await gather_bounded(handles, 10)
            assert time.monotonic() - stopped_at < 5  # not the 20 s calls, nor the 60 s drain
            assert {(str(r.outcome), r.closed_by, r.close_code) for r in records} == {
                ("gateway_closed", "gateway", 1001)}
            assert await gw.wait_exit(10) == 0, gw.tail()
            # SIGINT: every worker; 2nd SIGTERM: those with calls (an idle one drained at once and left)
            expected = {0, 1} if how == "SIGINT" else set(gw.call_workers().values())
            assert {e["worker"] for e in gw.logs() if e.get("msg", "").endswith("stopping now")} == expected
    arun(scenario(), 60)


# --------------------------------------------------------------------------- cannot start


def _static_env(**extra: str) -> dict[str, str]:
    return {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC_URL, "OPENAI_API_KEY": "sk-sim",
            "GATEWAY_UPSTREAM_URL": "ws://127.0.0.1:9/v1/realtime", **extra}


def test_worker_that_cannot_listen_makes_serve_fail(serve):
    with socket.socket() as blocker:  # a plain listener WITHOUT SO_REUSEPORT holds the port
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        started = time.monotonic()
        gw = serve(*serve_args(2, port), **_static_env())
        code = gw.wait_exit_sync(20)
        assert code != 0
        assert time.monotonic() - started < 20
    messages = gw.messages()
    assert any(m.startswith(f"cannot listen on 127.0.0.1:{port}") for m in messages), gw.tail()
    assert any("before it was ready" in m for m in gw.messages("supervisor")), gw.tail()


@pytest.mark.parametrize(("args", "env", "expect"), [
    (("--workers", "2", "--host", "127.0.0.1", "--port", "0"), {}, "port 0 cannot be shared"),
    (("--workers", "1", "--host", "127.0.0.1", "--port", "1"), {"GATEWAY_AUDIO_MODE": "opus"}, "configuration error"),
])
def test_refused_configuration_exits_2(serve, args, env, expect):
    gw = serve(*args, **_static_env(**env))
    assert gw.wait_exit_sync(15) == 2
    assert any(expect in m for m in gw.messages()), gw.tail()


# --------------------------------------------------------------------------- supervisor unit


def test_backoff_doubles_to_the_cap_and_resets_after_a_minute_up():
    delays, state = [], BACKOFF_MIN_S
    for _ in range(9):
        delay, state = next_backoff(state, uptime_s=1.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert state == BACKOFF_MAX_S
    assert next_backoff(state, uptime_s=60.0) == (0.5, 1.0)


FAKE_WORKER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
fd = int(sys.argv[sys.argv.index("--ready-fd") + 1])
os.write(fd, b"ready 4321\\n"); os.close(fd)
time.sleep(0.3)
sys.exit(3)
"""


def test_the_supervisor_imports_no_prometheus_client_before_it_sets_its_directory():
    """prometheus-client chooses multiprocess mode once, at import: imported before the supervisor
    sets PROMETHEUS_MULTIPROC_DIR, the supervisor's own counters (restarts, worker_lost) are lost."""
    code = ("import sys\n"
            "from gateway import cli\n"
            "from gateway.agents.profiles import load\n"
            "from gateway.control.hub import pod_name\n"
            "from gateway.logs import setup_logging\n"
            "from gateway.runtime.supervisor import Supervisor\n"
            "from gateway.startup import Summary, fast_path\n"
            "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))\n")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_supervisor_restarts_with_backoff_calls_the_hook_and_exits_0_on_sigterm(caplog, tmp_path):
    """In-process supervisor over a fake worker that is ready, then crashes after 0.3 s."""
    sup = Supervisor(1, "127.0.0.1", 0, worker_cmd=[sys.executable, "-c", FAKE_WORKER],
                     env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    restarts: list[tuple[int, int, float]] = []

    def hook(index: int, pid: int) -> None:
        restarts.append((index, pid, time.monotonic()))
        if len(restarts) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the supervisor's loop: stop

    sup.restart_hooks.append(hook)
    caplog.set_level(logging.INFO, logger="gateway.supervisor")
    started = time.monotonic()
    assert sup.run() == 0
    assert time.monotonic() - started < 10
    assert [i for i, _, _ in restarts] == [0, 0] and sup.restart_count == 2
    assert len({pid for _, pid, _ in restarts}) == 2
    waits = [m for m in caplog.messages if "exited unexpectedly (exit code 3)" in m]
    assert "restarting in 0.5 s" in waits[0] and "restarting in 1.0 s" in waits[1]
    assert restarts[1][2] - restarts[0][2] >= 0.3 + 1.0 - 0.05  # up 0.3 s, then the doubled backoff
    assert sup.port == 4321  # one worker on port 0: its restarts keep the port it reported
    assert "all workers exited; supervisor exit code 0" in caplog.messages
