"""Helpers of the CLI tests (``from cli_helpers import ...``; conftest modules are not importable by name):
the ``gateway`` console script of this venv run as a newcomer runs it, with a clean environment (none
of the gateway's variables inherited), its output read line by line, everything it started killed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gateway.config import VARIABLES

CLEARED = {v.env for v in VARIABLES} | {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("gateway")  # the console script of this venv
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def clean_env(**env: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in CLEARED}
    out.update(env)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``gateway *args`` to completion (clean environment plus ``env``)."""
    return subprocess.run([*gateway_command(), *args], env=clean_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


class Running:
    """A ``gateway`` process in its own session; stdout and stderr lines collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str], cmd: list[str] | None = None,
                 cwd: str | None = None) -> None:
        self.proc = subprocess.Popen([*(cmd or gateway_command()), *args], env=env, cwd=cwd,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, dest), daemon=True)
                         for stream, dest in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, dest: list[str]) -> None:
        dest.extend(raw.decode(errors="replace").rstrip("\n") for raw in stream)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr."""
        out = []
        for line in list(self.err):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def text(self) -> str:
        return "\n".join(["--- stdout", *self.out, "--- stderr", *self.err])

    def until(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the readers drain
                value = predicate()
                if value:
                    return value
                raise AssertionError(f"exited ({self.proc.returncode}) while waiting for {what}\n{self.text()}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}\n{self.text()}")

    def record(self, msg: str, timeout: float = 20) -> dict[str, Any]:
        return self.until(lambda: next((r for r in self.records() if r.get("msg") == msg), None), timeout,
                          f"log line {msg!r}")

    def ready(self, timeout: float = 30) -> None:
        self.until(lambda: any(str(r.get("msg", "")).startswith("all ") and "workers ready" in r["msg"]
                               for r in self.records()), timeout, "workers ready")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM to the command itself (the supervisor forwards it to its workers), as an orchestrator
        sends it; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
