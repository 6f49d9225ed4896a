"""Shared fixtures: both fast-path implementations, and the async runner of every socket test.

(Helpers importable by test modules live in ``tests/fastpath/impls.py``: a plain ``from conftest
import ...`` would pick whichever of several conftest modules was imported last.)
"""
from __future__ import annotations

import os

import pytest

IMPLS = ["compiled", "pure"]


@pytest.fixture(params=IMPLS)
def impl(request) -> str:
    """Name of the implementation under test: 'compiled' or 'pure'."""
    return request.param


# --------------------------------------------------------------------------- async tests
# Like uvloop's own suite: every async test runs under asyncio and uvloop, and fails on an
# unexpected loop exception-handler call, a task still pending at the end, or a leaked socket.
import asyncio  # noqa: E402
import gc  # noqa: E402

import uvloop  # noqa: E402


def _open_sockets() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(f"{fd}:{target}")
    return out


class LoopRunner:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.loop_errors: list[dict] = []
        self.expected_errors = 0  # a test that provokes handler calls on purpose raises this

    def __call__(self, coro, timeout: float = 120.0):
        loop = uvloop.new_event_loop() if self.kind == "uvloop" else asyncio.new_event_loop()
        loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        before = _open_sockets()
        try:
            result = loop.run_until_complete(asyncio.wait_for(coro, timeout))
            loop.run_until_complete(asyncio.sleep(0.05))  # let closing transports finish
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
        gc.collect()
        assert not pending, f"tasks leaked: {pending!r}"
        leaked = _open_sockets() - before
        assert not leaked, f"sockets leaked: {sorted(leaked)}"
        assert len(self.loop_errors) <= self.expected_errors, f"loop exception handler called: {self.loop_errors!r}"
        return result


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request) -> LoopRunner:
    """``run(coro)`` executes the coroutine on a fresh loop of the parametrized kind."""
    return LoopRunner(request.param)


# --------------------------------------------------------------------------- what is under test
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run in CI's first pass only: independent of the install (deploy manifests, bench smoke), or the
# end-to-end suite, which runs in-process (the same code, installed or not); CI's pure-twin pass runs
# its barge-in and paced-playout files by name.
ONCE_DIRS = ("tests/deploy/", "tests/bench/", "tests/e2e/")


def pytest_configure(config) -> None:
    """``GATEWAY_EXPECT_INSTALLED=1`` (CI's wheel pass): fail at once if the checkout got imported."""
    if os.environ.get("GATEWAY_EXPECT_INSTALLED") != "1":
        return
    import _fastpath
    import bench
    import gateway

    for module in (gateway, _fastpath, bench):
        path = os.path.abspath(module.__file__ or "")
        # The source tree's package directory, not any path under ROOT: CI's venv lives in the checkout.
        if path.startswith(os.path.join(ROOT, module.__name__) + os.sep):
            raise pytest.UsageError(f"GATEWAY_EXPECT_INSTALLED=1 but {module.__name__} was imported from the "
                                    f"checkout ({path}); run with PYTHONSAFEPATH=1 from a venv with the wheel")
    if not _fastpath.COMPILED:
        raise pytest.UsageError("GATEWAY_EXPECT_INSTALLED=1 but the installed wheel has no compiled fast path")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark ``once`` (see ONCE_DIRS); run ``uvloop_only`` tests under uvloop alone."""
    kept, dropped = [], []
    for item in items:
        if any(part in str(item.path).replace(os.sep, "/") for part in ONCE_DIRS):
            item.add_marker(pytest.mark.once)
        callspec = getattr(item, "callspec", None)
        if item.get_closest_marker("uvloop_only") and callspec is not None and callspec.params.get("run") == "asyncio":
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
