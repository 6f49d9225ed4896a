"""/metrics after scripted calls, admission limit, readiness, and a real Prometheus scraping us."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import METRICS
from gateway.sim.harness import Stack, StackConfig
from gateway.sim.openai_sim import OpenAISimConfig
from gateway.sim.twilio_script import CallScript, Turn


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


def test_metrics_count_scripted_calls(run):
    async def scenario():
        cfg = StackConfig(openai=OpenAISimConfig(response_ms=(2000,), first_audio_ms=300),
                          settings={"greeting": "hi"})
        async with Stack(cfg) as st:
            ended: list = []
            st.gateway.call_end_hooks.append(ended.append)
            scripts = [CallScript(duration_ms=2000, turns=(Turn(after_heard_ms=500, speech_ms=300),)),
                       CallScript(duration_ms=2000, turns=(Turn(after_heard_ms=700, speech_ms=300),)),
                       CallScript(duration_ms=1500)]
            records = await asyncio.gather(*(st.start_call(s).wait() for s in scripts))
            async with (aiohttp.ClientSession() as http,  # one webhook with a bad signature
                        http.post(st.base_url + "/twilio/voice", data={"CallSid": "CA1"},
                                  headers={"X-Twilio-Signature": "bad"}) as resp):
                assert resp.status == 403
            status, text = await _get(st.base_url + "/metrics")
            assert status == 200
            return records, _samples(text), text, [call.stats for call in ended]
    records, m, text, stats = run(scenario())
    assert all(str(r.outcome) == "completed" for r in records)
    for name, kind, *_ in METRICS:  # every documented metric is exported
        assert f"# TYPE {name.removesuffix('_total')} {kind}" in text or f"# TYPE {name} {kind}" in text, name
    assert m[("gateway_calls_started_total", ())] == 3
    assert m[("gateway_calls_ended_total", (("outcome", "completed"),))] == 3
    assert m[("gateway_active_calls", ())] == 0
    assert m[("gateway_interrupts_total", (("trigger", "speech_started"),))] == 2
    assert m[("gateway_truncation_offset_seconds_count", ())] == 2
    assert m[("gateway_interrupt_to_clear_seconds_count", ())] == 2
    assert m[("gateway_rejected_calls_total", (("reason", "bad_signature"),))] == 1
    assert m[("gateway_call_duration_seconds_count", ())] == 3
    assert m[("gateway_upstream_connect_seconds_count", ())] == 3
    inbound = m[("gateway_media_frames_total", (("direction", "inbound"),))]
    sent = sum(len(r.caller_frames) for r in records)
    assert inbound == sent  # every caller frame counted exactly once
    assert m[("gateway_audio_seconds_total", (("direction", "inbound"),))] == pytest.approx(sent * 0.02)
    # Every media message sent is counted once; Twilio received them all, but for what was on its
    # way when the caller hung up (paced playout still sends then: at most a chunk per call).
    sent_s = sum(s.bytes_out for s in stats) / 8000
    assert m[("gateway_audio_seconds_total", (("direction", "outbound"),))] == pytest.approx(sent_s)
    received_s = sum(c.size for r in records for c in r.heard) / 8000
    assert received_s <= sent_s + 1e-9 <= received_s + 0.1 * len(records) + 1e-9
    media = m[("gateway_media_frames_total", (("direction", "outbound"),))]
    assert media == sum(s.media_out for s in stats)
    assert sum(len(r.heard) for r in records) <= media <= sum(len(r.heard) for r in records) + len(records)


def test_admission_limit_readiness_and_busy_twiml(run):
    async def scenario():
        cfg = StackConfig(openai=OpenAISimConfig(response_ms=(1000,)), settings={"max_calls": 1})
        async with Stack(cfg) as st:
            assert (await _get(st.base_url + "/readyz"))[0] == 200
            first = st.start_call(CallScript(duration_ms=1500))
            await first.wait_started()
            status, body = await _get(st.base_url + "/readyz")
            assert status == 503 and "capacity" in body
            second = await st.start_call(CallScript(duration_ms=500)).wait()
            assert str(second.outcome) == "rejected_busy"
            assert '<Reject reason="busy"/>' in second.twiml
            async with aiohttp.ClientSession() as http:  # a media socket past the limit: 503 at upgrade
                headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
                async with http.get(st.base_url + "/twilio/media", headers=headers) as resp:
                    assert resp.status == 503
            assert str((await first.wait()).outcome) == "completed"
            await asyncio.sleep(0.05)
            assert (await _get(st.base_url + "/readyz"))[0] == 200
            assert st.gateway.rejected == {"capacity": 2}
    run(scenario())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Debian's prometheus binary is not installed (.ci/run installs it with apt-get)")
def test_real_prometheus_scrapes_gateway(run):
    async def scenario():
        async with Stack(StackConfig(openai=OpenAISimConfig(response_ms=(800,)), settings={"greeting": "hi"})) as st:
            await st.start_call(CallScript(duration_ms=1200)).wait()
            prom_port = _free_port()
            with tempfile.TemporaryDirectory() as tmp:
                config = os.path.join(tmp, "prometheus.yml")
                with open(config, "w") as f:  # noqa: ASYNC230 - a few bytes of test setup
                    f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gateway\n"
                            f"    static_configs:\n      - targets: ['127.0.0.1:{st.gateway.port}']\n")
                proc = subprocess.Popen(  # noqa: ASYNC220 - starts prometheus and returns at once
                    ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                     f"--web.listen-address=127.0.0.1:{prom_port}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    query = f"http://127.0.0.1:{prom_port}/api/v1/query?query=gateway_calls_started_total"
                    value = None
                    async with aiohttp.ClientSession() as http:
                        for _ in range(150):  # bounded: 30 s
                            await asyncio.sleep(0.2)
                            try:
                                async with http.get(query) as resp:
                                    data = await resp.json()
                            except aiohttp.ClientError:
                                continue
                            result = data.get("data", {}).get("result", [])
                            if result:
                                value = float(result[0]["value"][1])
                                break
                    assert value == 1.0
                finally:
                    proc.terminate()
                    proc.wait(10)
    run(scenario(), timeout=60)


def test_unended_calls_are_read_from_a_killed_workers_counter_file(tmp_path):
    """What the supervisor counts as ``worker_lost``: a SIGKILLed process's started minus ended
    calls, from the files prometheus-client left (fails loudly if it renames or re-formats them)."""
    from gateway.metrics import unended_calls

    child = (
        "import os, signal\n"
        "from gateway.metrics import BY_NAME, make\n"
        "started = make(BY_NAME['gateway_calls_started_total'], None)\n"
        "ended = make(BY_NAME['gateway_calls_ended_total'], None)\n"
        "for _ in range(5): started.inc()\n"
        "ended.labels('completed').inc(); ended.labels('hung_up').inc()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child],
                            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert proc.wait(60) == -signal.SIGKILL
    assert unended_calls(proc.pid, str(tmp_path)) == 3
    assert unended_calls(1, str(tmp_path)) == 0  # no file: that process counted nothing
