"""``bench.profile``: the collapsed-stack summariser behind ``python -m bench load --profile`` (on
synthetic py-spy ``--native --idle --threads --format raw`` lines shaped like a real gateway
worker's), and that a profiler that cannot run reports "unavailable" instead of raising."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from bench import profile

T = "thread (11596): MainThread"
ROOT = (f"{T};0x7f7f70e4524a (libc.so.6);_run_module_as_main (<frozen runpy>:198);_run_code (<frozen runpy>:88);"
        "<module> (gateway/runtime/worker.py:224);main (gateway/runtime/worker.py:217);run (uvloop/__init__.py:92);"
        "Runner.run (asyncio/runners.py:118);run_until_complete (loop.c:35410);Py_XDECREF (object.h:602);"
        "run_forever (loop.c:33397);Loop__run (loop.c:20313);Loop__Loop__run (loop.c:19903)")
IO = ROOT + (";uv_run (core.c:464);uv__io_poll (linux.c:1546);uv__stream_io (stream.c:1210);uv__read (stream.c:1154);"
             "loop___uv_stream_buffered_on_read (loop.c:114384);Py_DECREF (object.h:537)")
PICOWS = ";".join(f"{f} (picows/picows.cpython-311-x86_64-linux-gnu.so)" for f in (
    "buffer_updated", "WSProtocol__process_new_data", "WSProtocol__invoke_on_ws_frame", "WSListener_on_ws_frame"))
TWILIO = (IO + ";" + PICOWS
          + ";TwilioMediaListener.on_ws_frame (gateway/twilio/media.py:36);Call.on_twilio (gateway/call.py:170)")
UPSTREAM = IO + ";" + PICOWS + ";UpstreamListener.on_ws_frame (gateway/openai/upstream.py:39)"
WS_SEND = (";WSSender.send (gateway/ws.py:14);send (picows/picows.cpython-311-x86_64-linux-gnu.so);"
           "WSTransport__fast_write (picows/picows.cpython-311-x86_64-linux-gnu.so)")
TLS_WRITE = (";write_nocheck (aiofastnet/ssl_transport.cpython-311-x86_64-linux-gnu.so);"
             "SSLTransportBase__write_impl (aiofastnet/ssl_transport.cpython-311-x86_64-linux-gnu.so)")
FLUSH = (";SSLTransport_Socket__flush_outgoing_bio (aiofastnet/ssl_transport.cpython-311-x86_64-linux-gnu.so);"
         "utils_aiofn_write (aiofastnet/utils.cpython-311-x86_64-linux-gnu.so)")
SSL_WRITE = (";SSLEngineDirect_write (aiofastnet/ssl_engine_direct.cpython-311-x86_64-linux-gnu.so);"
             "SSL_write (libssl.so.3)")
TICK = (ROOT + ";uv_run (core.c:480);uv__run_timers (timer.c:185);TimerHandle__run (loop.c:74185);"
        "Gateway._tick (gateway/server.py:251);GatewayMetrics.flush (gateway/metrics.py:135);"
        "Counter.inc (prometheus_client/metrics.py:342)")

RAW = "\n".join([
    ROOT + ";uv_run (core.c:464);uv__io_poll (linux.c:1452);epoll_pwait (libc.so.6) 50",  # idle
    TWILIO + WS_SEND + TLS_WRITE + FLUSH + ";send (libc.so.6) 20",  # TLS record to OpenAI: kernel send
    TWILIO + WS_SEND + ";send (libc.so.6) 5",  # plain WebSocket send to Twilio
    IO.split(";uv__read")[0] + ";uv__read (stream.c:1063);read (libc.so.6) 6",  # plain socket read
    TWILIO + WS_SEND + TLS_WRITE + SSL_WRITE + ";0x7f7b062ab0a7 (libssl.so.3);EVP_EncryptUpdate (libcrypto.so.3);"
    "0x7f7b012424c3 (libcrypto.so.3) 4",  # AES-GCM
    TWILIO + WS_SEND + TLS_WRITE + SSL_WRITE + ";0x7f7b06279269 (libssl.so.3);free (libc.so.6);"
    "0x7f7b098b4120 (libc.so.6) 1",  # malloc/free inside OpenSSL: TLS, not unrecognised libc
    TWILIO + ";media_to_append (_fastpath/_compiled/framing.pyx:624);"
    "framing__lit (_fastpath/_compiled/framing.pyx:103);"
    "PyBytes_GET_SIZE (bytesobject.h:45);Py_SIZE (object.h:142) 3",  # header inline inside Cython: fast path
    UPSTREAM + ";Call.on_upstream (gateway/call.py:333) 2",
    UPSTREAM + ";Call.on_upstream (gateway/call.py:345);"
    "0x7f7b090ec4c6 (orjson/orjson.cpython-311-x86_64-linux-gnu.so) 1",
    IO + ";utils_aiofn_unpack_simple_buffer (aiofastnet/utils.cpython-311-x86_64-linux-gnu.so) 2",
    TWILIO + WS_SEND.rsplit(";", 1)[0] + " 1",  # leaf is picows's own `send`, not libc's
    ROOT + ";uv_run (core.c:464);uv__io_poll (linux.c:1446) 2",
    TICK + ";MmapedValue.__check_for_pid_change (prometheus_client/values.py:104);os_getpid (libpython3.11.so.1.0);"
    "getpid (libc.so.6) 2",
    TICK + ";LogRecord.__init__ (logging/__init__.py:318) 1",
    "",
])


def test_collapsed_stacks_are_split_into_categories():
    stacks, threads = profile.parse_collapsed(RAW)
    assert threads == 1 and sum(n for _, n in stacks) == 100
    assert all(not frames[0].startswith("thread") for frames, _ in stacks)
    s = profile.summarize(stacks)
    assert (s["samples"], s["idle_samples"], s["busy_samples"]) == (100, 50, 50)
    assert s["idle_share"] == s["busy_share"] == 0.5
    shares = {c["category"].split(" (")[0]: round(c["share_of_busy"], 4) for c in s["categories"]}
    assert shares == {"send": 0.50, "receive": 0.12, "TLS": 0.10, "fast path": 0.06, "picows + aiofastnet": 0.06,
                      "Python other": 0.06, "gateway Python": 0.04, "uvloop / libuv other": 0.04, "JSON": 0.02}
    assert abs(sum(c["share_of_all"] for c in s["categories"]) - 0.5) < 1e-9
    top = {t["frame"]: (t["category"].split(" (")[0], t["samples"]) for t in s["top_leaves"]}
    assert top["send (libc.so.6)"] == ("send", 25)
    assert top["read (libc.so.6)"] == ("receive", 6)
    assert top["? (libcrypto.so.3)"] == ("TLS", 4)
    assert top["Py_SIZE (object.h)"] == ("fast path", 3)  # self frame kept as is, line number dropped
    assert top["getpid (libc.so.6)"] == ("Python other", 2)
    assert s["top_leaves"][0]["frame"] == "send (libc.so.6)" and len(s["top_leaves"]) == 10

    workers = [{"pid": 11596, "file": "x/profile-worker-11596.txt"}]
    text = profile.render({"available": True, "rate_hz": 200, "workers": workers, **s})
    assert "idle 50.0%, busy 50.0%" in text and "send (socket send/write, kernel)" in text


def test_frame_rules():
    cat = profile.frame_category
    assert cat("epoll_wait (libc.so.6)") == profile.IDLE
    assert cat("__libc_send (libc.so.6)").startswith("send") and cat("writev (libc.so.6)").startswith("send")
    assert cat("recv").startswith("receive")  # a bare symbol py-spy could not place in a library
    assert cat("send (picows/picows.cpython-311-x86_64-linux-gnu.so)").startswith("picows")
    assert cat("StreamReader.read (asyncio/streams.py:700)").startswith("Python other")
    assert cat("ssl3_write_bytes (libssl.so.3)").startswith("TLS")
    assert cat("SSLProtocol._do_write (asyncio/sslproto.py:700)").startswith("TLS")
    assert cat("ulaw_decode (_fastpath/_pure/g711.py:12)").startswith("fast path")
    assert cat("Py_DECREF (object.h:537)") is None and cat("0x7f7b098b4120 (libc.so.6)") is None
    assert profile.categorize(["Py_DECREF (object.h:537)"]) == profile.OTHER


def test_profiler_without_py_spy_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(profile, "find_py_spy", lambda: None)

    async def go() -> dict:
        p = profile.Profiler(tmp_path)
        await p.start(1)
        return await p.finish()

    result = asyncio.run(go())
    assert result == {"available": False, "reason": "py-spy not found (pip install 'voice-gateway[bench]')"}
    assert profile.render(result).startswith("profile: unavailable (py-spy not found")


@pytest.mark.skipif(not sys.platform.startswith("linux") or profile.find_py_spy() is None, reason="py-spy, Linux")
def test_profiler_on_a_process_it_cannot_read_is_unavailable(tmp_path):
    target = subprocess.Popen(["sleep", "30"])  # not a Python process: py-spy fails
    try:
        async def go() -> dict:
            p = profile.Profiler(tmp_path, rate_hz=50)
            await p.start(target.pid)  # no children: the process itself
            await asyncio.sleep(0.5)
            return await p.finish(timeout=15)

        result = asyncio.run(go())
    finally:
        target.kill()
        target.wait()
    assert result["available"] is False and result["reason"].startswith(f"worker {target.pid}: py-spy exit ")
