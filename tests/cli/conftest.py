"""Fixtures of the CLI tests; the helpers live in ``cli_helpers.py``."""
from __future__ import annotations

import pytest
from cli_helpers import Running, clean_env


@pytest.fixture
def start():
    """``start(*args, cmd=None, cwd=None, **env)`` → Running; killed (with its process group) at teardown."""
    started: list[Running] = []

    def launch(*args: str, cmd: list[str] | None = None, cwd: str | None = None, **env: str) -> Running:
        running = Running(list(args), clean_env(**env), cmd, cwd)
        started.append(running)
        return running

    yield launch
    for running in started:
        running.kill()
