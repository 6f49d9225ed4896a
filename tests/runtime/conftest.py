"""The real ``gateway serve`` in its own process group, its JSON logs read line by line.

``serve(*args, **env)`` (fixture) starts it in a new session; teardown SIGKILLs that whole process
group (the supervisor and its workers), also when the test failed.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import VARIABLES

_READY = re.compile(r"^worker (\d+) ready: pid (\d+)")
_SPAWNED = re.compile(r"^worker (\d+) spawned: pid (\d+)")
# The gateway's settings come from the test only (GATEWAY_NO_EXTENSIONS etc. are inherited).
_CLEARED_ENV = {v.env for v in VARIABLES} | {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("gateway")  # the console script of this venv
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


class GatewayProcess:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        full_env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
        full_env.update(env)
        self.proc = subprocess.Popen(
            [*gateway_command(), "serve", *args], env=full_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self._lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:  # ends at EOF: when every process of the group is gone
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            text = raw.decode(errors="replace").rstrip("\n")
            try:
                entry = json.loads(text)
            except ValueError:
                entry = None
            if not isinstance(entry, dict):
                entry = {"msg": text, "raw": True}
            with self._lock:
                self._lines.append(entry)

    # ------------------------------------------------------------------ log queries
    def logs(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._lines)

    def messages(self, worker: Any = ...) -> list[str]:
        return [e.get("msg", "") for e in self.logs() if worker is ... or e.get("worker") == worker]

    def tail(self, n: int = 80) -> str:
        return "\n".join(json.dumps(e) for e in self.logs()[-n:])

    def ready_pids(self) -> dict[int, int]:
        """Worker index → pid of its latest process that reported ready (supervisor's view)."""
        out = {}
        for msg in self.messages("supervisor"):
            m = _READY.match(msg)
            if m:
                out[int(m[1])] = int(m[2])
        return out

    def spawned_pids(self) -> set[int]:
        return {int(m[2]) for m in map(_SPAWNED.match, self.messages("supervisor")) if m}

    def call_workers(self) -> dict[str, int]:
        """call_sid → index of the worker that logged "stream started" for it."""
        return {e["call_sid"]: e["worker"] for e in self.logs()
                if e.get("msg") == "stream started" and "call_sid" in e}

    # ------------------------------------------------------------------ waiting (always bounded)
    def _check(self, pred: Callable[[], Any], what: str, deadline: float, allow_exit: bool) -> Any:
        value = pred()
        if value:
            return value
        if not allow_exit and self.proc.poll() is not None:
            raise AssertionError(f"gateway serve exited ({self.proc.returncode}) while waiting for {what}\n"
                                 f"{self.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{self.tail()}")
        return None

    async def until(self, pred: Callable[[], Any], timeout: float, what: str, allow_exit: bool = False) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self._check(pred, what, deadline, allow_exit)
            if value:
                return value
            await asyncio.sleep(0.02)

    def until_sync(self, pred: Callable[[], Any], timeout: float, what: str, allow_exit: bool = False) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self._check(pred, what, deadline, allow_exit)
            if value:
                return value
            time.sleep(0.02)

    async def wait_ready(self, workers: int, timeout: float = 20.0) -> dict[int, int]:
        await self.until(lambda: f"all {workers} workers ready" in " ".join(self.messages("supervisor")),
                         timeout, f"{workers} workers ready")
        return self.ready_pids()

    async def wait_exit(self, timeout: float) -> int:
        await self.until(lambda: self.proc.poll() is not None, timeout, "gateway serve to exit", allow_exit=True)
        return self.proc.returncode

    def wait_exit_sync(self, timeout: float) -> int:
        self.until_sync(lambda: self.proc.poll() is not None, timeout, "gateway serve to exit", allow_exit=True)
        return self.proc.returncode

    # ------------------------------------------------------------------ teardown
    def kill(self) -> None:
        try:  # supervisor + workers: the workers stay in the supervisor's process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        finally:
            self._reader.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


@pytest.fixture
def serve():
    """``serve(*cli_args, **env)`` → GatewayProcess; everything it started is killed at teardown."""
    started: list[GatewayProcess] = []

    def start(*args: str, **env: str) -> GatewayProcess:
        gp = GatewayProcess(list(args), env)
        started.append(gp)
        return gp

    yield start
    for gp in started:
        gp.kill()
