"""Child processes of the load bench (simulators, the system under test, py-spy).

Each child runs in its own process group (the gateway's workers join it) and is stopped group and
all. Simulators talk to the bench over stdin/stdout, one JSON object per line (``bench.loadsim``).
Every child gets SIGTERM if the bench process dies (``die_with_parent``), so a killed bench never
leaves a gateway behind. Also here: the pieces of a child's command line and environment that do
not depend on what it is (free ports, the ``gateway`` command, a clean environment).
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from .report import REPO


class Child:
    """A process this bench started, in its own process group (the gateway's workers join it)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path
        self.status: dict[str, Any] = {}
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}  # messages by their first key
        self.reader: asyncio.Future[None] | None = None

    @classmethod
    async def spawn(cls, name: str, argv: list[str], env: dict[str, str], work: Path,
                    json_stdout: bool = True) -> Child:
        log_path = work / f"{name}.log"
        with open_log(log_path) as log:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE if json_stdout else log, stderr=log,
                env=env, cwd=str(REPO), start_new_session=True, preexec_fn=die_with_parent)
        child = cls(name, proc, log_path)
        if json_stdout:
            child.reader = asyncio.ensure_future(child._read())
        return child

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "status" in msg:
                self.status = msg["status"]
            elif isinstance(msg, dict) and msg:
                self.queue(next(iter(msg))).put_nowait(msg)

    def queue(self, key: str) -> asyncio.Queue[dict[str, Any]]:
        """The messages whose first key is ``key`` (so waits for different keys never take each
        other's messages: the bench waits for ``done`` while it asks for ``counts``)."""
        return self.queues.setdefault(key, asyncio.Queue())

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    async def expect(self, key: str, timeout: float) -> dict[str, Any]:
        """The next message whose first key is ``key``; fails if the process exits or time runs out."""
        get = asyncio.ensure_future(self.queue(key).get())
        died = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({get, died}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        died.cancel()
        if get in done:
            return get.result()
        get.cancel()
        if died in done or self.proc.returncode is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before {key!r}:\n{self.log_tail()}")
        raise RuntimeError(f"{self.name}: no {key!r} within {timeout:.0f} s:\n{self.log_tail()}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal the process group, wait, then SIGKILL whatever of the group is left."""
        pgid = self.proc.pid
        if self.proc.returncode is None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                pass
        for attempt in range(50):  # members of the group may outlive its leader (workers)
            try:
                os.killpg(pgid, signal.SIGKILL if self.proc.returncode is None or attempt > 10 else sig)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.1)
        if self.proc.returncode is None:
            await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()


def open_log(path: Path) -> IO[bytes]:
    """A log file for a child's output (``with open_log(path) as f``). Called from coroutines: a
    local file, so opening it holds the event loop for microseconds, not for I/O."""
    return path.open("wb")


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the bench process dies (Linux; no-op elsewhere),
    so a killed bench never leaves a gateway behind (its supervisor then stops its workers)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


async def wait_healthy(port: int, child: Child, timeout: float = 60.0) -> None:
    """Until ``GET /healthz`` on ``port`` answers 200; fails if ``child`` exits or time runs out."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if not child.alive:
                raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{child.name} not healthy on port {port} within {timeout:.0f} s:\n{child.log_tail()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def gateway_command() -> list[str]:
    """How to start the gateway: this environment's ``gateway`` script, or ``$BENCH_GATEWAY`` (the
    ``gateway`` script of another installation: the same bench drives an older checkout, for
    before/after figures)."""
    other = os.environ.get("BENCH_GATEWAY")
    if other:
        return [other]
    script = Path(sys.executable).with_name("gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


@functools.cache
def workers_flag_supported() -> bool:
    """Whether `gateway serve` has --workers (else GATEWAY_WORKERS is used); asked once per process."""
    try:
        out = subprocess.run([*gateway_command(), "serve", "--help"], capture_output=True, text=True,
                             timeout=60, cwd=REPO, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--workers" in out.stdout


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any gateway configuration, plus ``extra``."""
    env = dict(os.environ)
    for key in list(env):  # nothing of the caller's gateway configuration leaks into the run
        if key.startswith("GATEWAY_") or key in ("TWILIO_AUTH_TOKEN", "OPENAI_API_KEY", "PROMETHEUS_MULTIPROC_DIR"):
            del env[key]
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
