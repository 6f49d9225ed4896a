"""A rolling restart of two ``gateway serve`` instances behind a real haproxy (Debian's), driven
by ``deploy/haproxy/haproxy.cfg`` itself: the file users copy, only its environment variables
pointed at loopback ports and a throw-away certificate.

Calls are placed the way Twilio places them: the signed webhook and the media WebSocket go to the
proxy over TLS (``wss://``, certificate for the public host), haproxy picks an instance for each.
What happened to every call comes from the simulators' records (judged like ``Stack.judge``);
which instance carried a call comes from that instance's own log stream ("stream started").

1. Instance A leaves with the documented procedure: the runtime API's ``set server gateway/a
   state drain`` and then SIGTERM, while half the calls are mid-conversation on A. New calls placed
   right after the SIGTERM all go to B and none is refused; A's calls run to their scripted end
   through the proxy; A exits 0 once its last call ended; haproxy's own health check sees A's
   ``/readyz`` 503.
2. A is started again and put back (``state ready``); instance B then gets only a SIGTERM, no
   runtime-API step: haproxy's ``/readyz`` check alone marks B DOWN within seconds, new calls go
   to A, B's calls finish, B exits 0.

Skipped, with the reason printed, where haproxy (``.ci/run`` installs Debian's) or the
``openssl`` command line tool is missing.
"""
from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from test_runtime import AUTH_TOKEN, JITTER_MS, LATENCY_MS, PUBLIC_URL, Sims, arun, serve_args, sid

from gateway.sim.twilio_script import CallScript, Turn
from gateway.sim.twilio_sim import TwilioCall, TwilioSim, TwilioSimConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
PUBLIC_HOST = urlsplit(PUBLIC_URL).hostname or ""
CONTROL_TOKEN = "rolling-drain-control-token"
BACKEND = "gateway"  # the backend's name in haproxy.cfg (the runtime API's "gateway/a")

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- the proxy


def listen_port() -> int:
    """A free port BELOW the kernel's ephemeral range: no outgoing connection of this busy machine
    (every call opens several) can take it between now and the moment haproxy binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def listen_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = listen_port()
        if port not in ports:
            ports.append(port)
    return ports


def _haproxy_binary() -> str | None:
    for candidate in (shutil.which("haproxy"), "/usr/sbin/haproxy"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture
def haproxy_binary() -> str:
    binary = _haproxy_binary()
    if binary is None:
        pytest.skip("Debian's haproxy is not installed (.ci/run installs it with apt-get)")
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool is missing (needed for the proxy's test certificate)")
    return binary


def make_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A throw-away CA and a certificate for ``host`` signed by it: (PEM for haproxy: certificate
    + key, the CA file a client trusts)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    key, csr, crt, ext = (directory / n for n in ("server.key", "server.csr", "server.crt", "server.ext"))
    ext.write_text(f"subjectAltName=DNS:{host}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=rolling drain test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={host}"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", str(int.from_bytes(os.urandom(8))),
         "-out", crt, "-days", "2", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True, timeout=30)
    pem = directory / "haproxy.pem"
    pem.write_bytes(crt.read_bytes() + key.read_bytes())
    return pem, ca


class Haproxy:
    """haproxy in the foreground (``-db``) on ``deploy/haproxy/haproxy.cfg``, logging to a file."""

    def __init__(self, binary: str, env: dict[str, str], workdir: Path) -> None:
        self.admin_socket = workdir / "admin.sock"
        self.log_path = workdir / "haproxy.log"
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GATEWAY_LB_UNPRIVILEGED": "1",
                    "GATEWAY_LB_LOG": "stderr", "GATEWAY_LB_LOG_FORMAT": "raw",
                    "GATEWAY_LB_ADMIN_SOCKET": str(self.admin_socket), "GATEWAY_LB_MAXCONN": "500", **env}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(CONFIG)], env=full_env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    async def admin(self, command: str) -> str:
        """One runtime-API command over the admin socket; its answer."""
        reader, writer = await asyncio.open_unix_connection(str(self.admin_socket))
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.read(), 5)).decode()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the backend's servers: {name: {status, check_status, check_code, stot, ...}}."""
        text = await self.admin("show stat")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r for r in rows if r.get("pxname") == BACKEND and r["svname"] != "BACKEND"}

    async def until(self, server: str, pred: Any, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited ({self.proc.returncode})\n{self.tail()}")
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                last = (await self.servers()).get(server, {})
                if last and pred(last):
                    return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"haproxy: server {server} never {what}: {last}\n{self.tail()}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def haproxy(haproxy_binary: str, tmp_path: Path) -> Iterator[Any]:
    """``haproxy(**env)`` → a running ``Haproxy``; killed at teardown."""
    started: list[Haproxy] = []

    def start(**env: str) -> Haproxy:
        proxy = Haproxy(haproxy_binary, env, tmp_path)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.mark.once
def test_config_is_valid_with_its_production_defaults(haproxy_binary: str, tmp_path: Path):
    """The file as users copy it: only the certificate path replaced (chroot, user, syslog as is)."""
    pem, _ = make_certificate(tmp_path, PUBLIC_HOST)
    env = {"PATH": os.environ.get("PATH", ""), "GATEWAY_LB_CERT": str(pem)}
    result = subprocess.run([haproxy_binary, "-c", "-f", str(CONFIG)], env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


# --------------------------------------------------------------------------- calls


def conversation(i: int, duration_ms: int) -> CallScript:
    """The greeting, then caller turns every couple of seconds; every other call barges in on the
    greeting (clear + truncate), the others wait for the answer to end."""
    first = Turn(after_heard_ms=500, speech_ms=400) if i % 2 else Turn(after_quiet_ms=300, speech_ms=600)
    return CallScript(duration_ms=duration_ms, turns=(first, Turn(after_quiet_ms=400, speech_ms=700),
                                                      Turn(after_heard_ms=700, speech_ms=500)))


async def place(twilio: TwilioSim, tag: str, n: int, duration_ms: int, every_s: float) -> list[TwilioCall]:
    """``n`` calls, one every ``every_s`` seconds."""
    handles = []
    for i in range(n):
        if i:
            await asyncio.sleep(every_s)
        handles.append(twilio.start_call(conversation(i, duration_ms), sid(tag, i)))
    return handles


def sids(handles: list[TwilioCall]) -> set[str]:
    return {h.record.call_sid for h in handles}


def check_calls(sims: Sims, records: list[Any], duration_ms: dict[str, int]) -> None:
    """Every call completed normally and lasted its scripted length: the caller hung up (not the
    gateway, not the proxy), no violation on either side, audio intact (``Stack.judge``)."""
    bad = [(r.call_sid, str(r.outcome), r.closed_by, r.close_code, r.violations) for r in records
           if str(r.outcome) != "completed" or r.closed_by != "twilio" or r.violations]
    assert bad == []
    assert sims.problems(records) == {}
    short = {r.call_sid: round(r.ended_at - r.stream_started_at, 2) for r in records
             if r.ended_at - r.stream_started_at < duration_ms[r.call_sid] / 1000 - 0.1}
    assert short == {}


# --------------------------------------------------------------------------- the scenario


def test_rolling_drain_through_haproxy_drops_no_call(serve, haproxy, tmp_path: Path):
    pem, ca = make_certificate(tmp_path, PUBLIC_HOST)
    client_tls = ssl.create_default_context(cafile=str(ca))

    async def scenario() -> dict[str, Any]:
        async with Sims() as sims:
            port_a, port_b, public, internal, stats = listen_ports(5)

            def gateway_env(name: str) -> dict[str, str]:
                return sims.env(GATEWAY_POD_NAME=name, GATEWAY_DRAIN_TIMEOUT_S="60",
                                GATEWAY_CONTROL_TOKEN=CONTROL_TOKEN)

            gw_a = serve(*serve_args(2, port_a), **gateway_env("gw-a"))
            gw_b = serve(*serve_args(2, port_b), **gateway_env("gw-b"))
            await gw_a.wait_ready(2)
            await gw_b.wait_ready(2)
            proxy = haproxy(GATEWAY_LB_BIND=f"127.0.0.1:{public}", GATEWAY_LB_CERT=str(pem),
                            GATEWAY_LB_INTERNAL_BIND=f"127.0.0.1:{internal}",
                            GATEWAY_LB_STATS_BIND=f"127.0.0.1:{stats}",
                            GATEWAY_A=f"127.0.0.1:{port_a}", GATEWAY_B=f"127.0.0.1:{port_b}")
            for name in ("a", "b"):
                await proxy.until(name, lambda s: s["status"] == "UP" and s["check_status"] == "L7OK", 15,
                                  "UP with /readyz 200")
            await check_routes(public, internal, client_tls)

            twilio = sims.twilio = TwilioSim(TwilioSimConfig(
                webhook_url=PUBLIC_URL + "/twilio/voice", connect_to=f"https://127.0.0.1:{public}",
                auth_token=AUTH_TOKEN, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, timeout_s=10.0,
                ssl_context=client_tls))
            durations: dict[str, int] = {}

            async def wave(tag: str, n: int, duration_ms: int, every_s: float) -> list[TwilioCall]:
                handles = await place(twilio, tag, n, duration_ms, every_s)
                durations.update(dict.fromkeys(sids(handles), duration_ms))
                return handles

            def streaming(handles: list[TwilioCall], *gws: Any) -> Any:
                return lambda: sids(handles) <= set().union(*(set(g.call_workers()) for g in gws))

            # ---- 1. both instances up; half the calls on A
            w1 = await wave("w1", 8, 9000, 0.15)
            await gw_a.until(streaming(w1, gw_a, gw_b), 15, "every first-wave call streaming")
            on_a, on_b = sids(w1) & set(gw_a.call_workers()), sids(w1) & set(gw_b.call_workers())
            assert len(on_a) >= 2 and len(on_b) >= 2, (on_a, on_b)  # leastconn spreads the calls
            await asyncio.sleep(2.5)  # mid-conversation: greetings played, first barge-ins done

            # ---- 2. A leaves: runtime API "drain", then SIGTERM; new calls keep coming
            assert (await proxy.admin(f"set server {BACKEND}/a state drain")).strip() == ""
            gw_a.proc.send_signal(signal.SIGTERM)
            sigterm_a = time.monotonic()
            w2 = await wave("w2", 6, 4000, 0.4)
            checked_503 = await proxy.until("a", lambda s: s["check_code"] == "503", 5,
                                            "seen answering /readyz 503")  # haproxy's own check sees the drain
            await gw_b.until(streaming(w2, gw_b), 15, "every call placed during the drain streaming on B")
            assert not sids(w2) & set(gw_a.call_workers())
            records_a = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in w1 if h.record.call_sid in on_a)),
                                               20)
            assert await gw_a.wait_exit(15) == 0, gw_a.tail()
            a_exit_after_sigterm = time.monotonic() - sigterm_a
            records = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in w1 + w2)), 20)
            check_calls(sims, records, durations)
            a_messages = gw_a.messages()
            assert "all workers exited; supervisor exit code 0" in gw_a.messages("supervisor")
            assert not any(m.startswith("drain timeout") or m.endswith("stopping now") for m in a_messages)
            assert not any("refused" in m for m in gw_a.messages() + gw_b.messages()), "a call was refused"
            last_a_call_end = max(r.ended_at for r in records_a)
            assert last_a_call_end - sigterm_a > 3.0  # A's calls went on well after the SIGTERM

            # ---- 3. A comes back (a new version, say) and is put back into rotation
            gw_a2 = serve(*serve_args(2, port_a), **gateway_env("gw-a"))
            await gw_a2.wait_ready(2)
            assert (await proxy.admin(f"set server {BACKEND}/a state ready")).strip() == ""
            await proxy.until("a", lambda s: s["status"] == "UP", 10, "UP again")

            # ---- 4. B gets SIGTERM only: haproxy's /readyz check alone takes it out of rotation
            w3 = await wave("w3", 6, 8000, 0.15)
            await gw_b.until(streaming(w3, gw_a2, gw_b), 15, "every third-wave call streaming")
            on_b3 = sids(w3) & set(gw_b.call_workers())
            assert on_b3 and sids(w3) - on_b3, (on_b3, sids(w3))
            await asyncio.sleep(1.5)
            gw_b.proc.send_signal(signal.SIGTERM)
            sigterm_b = time.monotonic()
            await proxy.until("b", lambda s: s["status"].startswith("DOWN"), 5, "DOWN after its SIGTERM")
            b_down_after = time.monotonic() - sigterm_b
            w4 = await wave("w4", 4, 3000, 0.3)
            await gw_a2.until(streaming(w4, gw_a2), 15, "every call placed after B went DOWN streaming on A")
            assert not sids(w4) & set(gw_b.call_workers())
            records = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in w3 + w4)), 20)
            check_calls(sims, records, durations)
            assert await gw_b.wait_exit(15) == 0, gw_b.tail()
            assert "all workers exited; supervisor exit code 0" in gw_b.messages("supervisor")
            assert not any("refused" in m for m in gw_a2.messages() + gw_b.messages()), "a call was refused"
            gw_a2.proc.send_signal(signal.SIGTERM)
            assert await gw_a2.wait_exit(15) == 0, gw_a2.tail()
            return {
                "wave 1 (before A's SIGTERM)": {"A": len(on_a), "B": len(on_b)},
                "wave 2 (during A's drain)": {"A": 0, "B": len(w2)},
                "wave 3 (A back, before B's SIGTERM)": {"A": len(w3) - len(on_b3), "B": len(on_b3)},
                "wave 4 (after B went DOWN)": {"A": len(w4), "B": 0},
                "A exited after SIGTERM (s)": round(a_exit_after_sigterm, 1),
                "A's check at the drain": f"{checked_503['check_status']} {checked_503['check_code']}",
                "B DOWN after SIGTERM, check alone (s)": round(b_down_after, 2),
            }

    summary = arun(scenario(), 100)
    print("\nrolling drain through haproxy:", summary)


async def check_routes(public: int, internal: int, client_tls: ssl.SSLContext) -> None:
    """The public frontend serves Twilio's two paths only; the internal one the control API."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as http:
        for path in ("/metrics", "/calls", "/readyz"):
            async with http.get(f"https://127.0.0.1:{public}{path}", server_hostname=PUBLIC_HOST,
                                headers={"Host": PUBLIC_HOST}) as resp:
                assert resp.status == 404, (path, resp.status)
        headers = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
        async with http.get(f"http://127.0.0.1:{internal}/calls", headers=headers) as resp:
            assert resp.status == 200 and "calls" in await resp.json()
        async with http.get(f"http://127.0.0.1:{internal}/metrics") as resp:
            assert resp.status == 404


def test_a_503_from_one_instance_is_retried_on_the_other(serve, haproxy, tmp_path: Path):
    """``retry-on ... 503`` with ``option redispatch``: a request an instance refuses with 503 (a
    media socket reaching an instance that began draining, or is full, before haproxy's check
    noticed) is sent again to the other instance, the webhook's form body included, and the call
    goes through. Instance "a" here answers /readyz 200 and everything else 503; with leastconn
    (it never holds a connection) haproxy tries it first for almost every request."""
    pem, ca = make_certificate(tmp_path, PUBLIC_HOST)
    client_tls = ssl.create_default_context(cafile=str(ca))

    async def scenario() -> Counter[str]:
        refused: Counter[str] = Counter()

        async def refuse(request: web.Request) -> web.Response:
            if request.path == "/readyz":
                return web.Response(text="ready\n")
            refused[f"{request.method} {request.path}"] += 1
            return web.Response(status=503, text="not ready: draining\n")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", refuse)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        async with Sims() as sims:
            port_a, port_b, public, internal, stats = listen_ports(5)
            try:
                await web.TCPSite(runner, "127.0.0.1", port_a).start()
                gw_b = serve(*serve_args(1, port_b), **sims.env(GATEWAY_POD_NAME="gw-b"))
                await gw_b.wait_ready(1)
                proxy = haproxy(GATEWAY_LB_BIND=f"127.0.0.1:{public}", GATEWAY_LB_CERT=str(pem),
                                GATEWAY_LB_INTERNAL_BIND=f"127.0.0.1:{internal}",
                                GATEWAY_LB_STATS_BIND=f"127.0.0.1:{stats}",
                                GATEWAY_A=f"127.0.0.1:{port_a}", GATEWAY_B=f"127.0.0.1:{port_b}")
                for name in ("a", "b"):
                    await proxy.until(name, lambda s: s["status"] == "UP", 15, "UP")
                twilio = sims.twilio = TwilioSim(TwilioSimConfig(
                    webhook_url=PUBLIC_URL + "/twilio/voice", connect_to=f"https://127.0.0.1:{public}",
                    auth_token=AUTH_TOKEN, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, timeout_s=10.0,
                    ssl_context=client_tls))
                handles = await place(twilio, "r", 4, 2500, 0.3)
                records = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 20)
                check_calls(sims, records, dict.fromkeys(sids(handles), 2500))
                assert set(gw_b.call_workers()) == sids(handles)
            finally:
                await runner.cleanup()
        return refused

    refused = arun(scenario(), 60)
    print("\nrequests refused with 503 by instance a, then retried on b:", dict(refused))
    assert refused["POST /twilio/voice"] >= 1 and refused["GET /twilio/media"] >= 1, refused
