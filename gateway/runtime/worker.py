"""One worker process of ``gateway serve``: ``python -m gateway.runtime.worker --index I``.

Started by ``supervisor.Supervisor`` (environment inherited: the worker reads the same
``Settings.from_env()``), but runnable by hand too. What it does:

1. Opens ITS OWN listening socket on host:port with ``SO_REUSEADDR`` + ``SO_REUSEPORT``. Every
   worker binds the same address with its own socket, so the kernel load-balances new
   connections over the workers (no shared accept queue, no thundering herd). A port already
   bound by a socket without ``SO_REUSEPORT`` makes the bind fail: exit 1, before "ready".
2. Runs one ``server.Gateway`` on that socket under uvloop, logging JSON with ``"worker": I``.
3. Once listening, writes ``ready <port>\\n`` to ``--ready-fd`` (a pipe from the supervisor, passed
   with ``pass_fds``) and closes it. EOF on the pipe without that line = failed to start.
4. Signals:
   * first SIGTERM: graceful drain. ``Gateway.drain`` flips readiness at once (``/readyz`` 503,
     webhook ``<Reject reason="busy"/>``, media socket 503 — the port keeps answering so load
     balancers and Twilio move on), active calls continue for up to ``GATEWAY_DRAIN_TIMEOUT_S``,
     then ``Gateway.stop()`` and exit 0;
   * a second SIGTERM, or SIGINT at any time: stop at once (``Gateway.stop()`` ends the calls
     cleanly, close code 1001), exit 0. A second SIGTERM less than ``DUPLICATE_WINDOW_S`` (1 s)
     after the first is the same request delivered twice — a signal to the whole process group
     or cgroup (``timeout``, systemd's default KillMode, a tty) plus the supervisor's forwarding —
     and does not cut the drain short.
   * SIGHUP: re-read ``GATEWAY_AGENTS_FILE`` (``AgentServices.reload``): calls in progress keep
     their agent, new calls get the new file; a bad file is logged and the previous one kept.
   Stop signals that arrive while the interpreter is still starting are remembered and honoured
   as soon as the event loop runs; signals after the loop closed are ignored (still exit 0).
5. On Linux the worker asks for SIGTERM when its parent (the supervisor) dies
   (``PR_SET_PDEATHSIG``), so an orphaned worker drains and exits instead of serving forever.

Exit codes: 0 after a signal, 1 if it could not listen or crashed, 2 on a configuration error or
when only the pure-Python fast path is available and ``GATEWAY_NO_EXTENSIONS=1`` did not ask for it.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the worker imports asyncio and the gateway only after its signal handlers are in
    import asyncio
    import logging

    from ..config import Settings

DUPLICATE_WINDOW_S = 1.0  # a 2nd SIGTERM this soon after the 1st is the same request delivered twice


class _Signals:
    """SIGTERM/SIGINT, caught by a plain Python handler installed first thing and kept until the
    process exits: a signal during start-up is remembered, and one after the event loop closed
    is harmless (``loop.add_signal_handler`` would restore SIG_DFL when the loop closes). The
    handler hands each signal to the running loop with ``call_soon_threadsafe``."""

    def __init__(self) -> None:
        self.received: list[tuple[int, float]] = []  # (signum, monotonic time)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callback: Callable[[int, float], None] | None = None
        self.on_reload: Callable[[], object] | None = None  # SIGHUP: re-read the agents file

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:  # not a stop request: reload (ignored until the gateway runs)
            loop, reload = self._loop, self.on_reload
            if loop is not None and reload is not None and not loop.is_closed():
                loop.call_soon_threadsafe(reload)
            return
        at = time.monotonic()
        self.received.append((signum, at))
        loop, callback = self._loop, self._callback
        if loop is not None and callback is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, signum, at)

    def attach(self, loop: asyncio.AbstractEventLoop, callback: Callable[[int, float], None]) -> None:
        """From now on ``callback(signum, at)`` runs on ``loop``; earlier signals are replayed."""
        self._loop, self._callback = loop, callback
        for signum, at in self.received:
            loop.call_soon(callback, signum, at)

    def detach(self) -> None:
        self._loop = self._callback = self.on_reload = None


_signals = _Signals()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway-worker", description="one worker of `gateway serve`")
    parser.add_argument("--index", type=int, required=True, help="worker index (the `worker` log field)")
    parser.add_argument("--ready-fd", type=int, default=None,
                        help="pipe fd: `ready <port>\\n` is written to it once listening")
    parser.add_argument("--host", default=None, help="overrides GATEWAY_HOST")
    parser.add_argument("--port", type=int, default=None, help="overrides GATEWAY_PORT")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="supervisor pid: SIGTERM to ourselves when it dies (Linux)")
    return parser.parse_args(argv)


def listen_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A non-blocking listening TCP socket with SO_REUSEADDR and SO_REUSEPORT, one per process."""
    family, type_, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: get SIGTERM (→ drain) when the supervisor dies; if it is already gone, drain now."""
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not fatal: the supervisor stops its workers itself
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


class _StopRequest:
    """First SIGTERM → drain; a later SIGTERM or any SIGINT → stop at once.

    A second SIGTERM within ``DUPLICATE_WINDOW_S`` of the first is the same request arriving
    twice (a signal to the whole process group or cgroup — ``timeout``, systemd's default
    KillMode — plus the supervisor's forwarding) and does not cut the drain short."""

    def __init__(self, log: logging.Logger) -> None:
        import asyncio

        self._log = log
        self._first_at: float | None = None
        self.requested = asyncio.Event()
        self.immediate = asyncio.Event()

    def __call__(self, signum: int, at: float) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM and self._first_at is None:
            self._first_at = at
            self._log.info("%s: draining", name)
        elif signum == signal.SIGTERM and self._first_at is not None and at - self._first_at < DUPLICATE_WINDOW_S:
            self._log.info("%s again within %.0f s: same request, still draining", name, DUPLICATE_WINDOW_S)
        elif not self.immediate.is_set():
            self._log.info("%s: stopping now", name)
            self.immediate.set()
        self.requested.set()


def _notify_ready(ready_fd: int | None, port: int) -> None:
    if ready_fd is None:
        return
    try:
        os.write(ready_fd, f"ready {port}\n".encode())
    except OSError:  # the supervisor is gone (PR_SET_PDEATHSIG drains us)
        pass
    finally:
        os.close(ready_fd)


async def serve(settings: Settings, sock: socket.socket, ready_fd: int | None, log: logging.Logger) -> int:
    """Run one gateway on ``sock`` until a signal says stop; returns the exit code."""
    import asyncio

    from ..server import Gateway

    stop = _StopRequest(log)
    _signals.attach(asyncio.get_running_loop(), stop)
    try:
        gateway = Gateway(settings)
        _signals.on_reload = gateway.agents.reload
        port = await gateway.start(sock=sock)
        _notify_ready(ready_fd, port)
        log.info("worker ready (pid %d, port %d)", os.getpid(), port)
        await stop.requested.wait()
        if not stop.immediate.is_set():
            drain = asyncio.create_task(gateway.drain(settings.drain_timeout_s))
            now = asyncio.create_task(stop.immediate.wait())
            await asyncio.wait({drain, now}, return_when=asyncio.FIRST_COMPLETED)
            if drain.done():
                log.info("drained (%d calls ended at the drain timeout)", drain.result())
            for task in (drain, now):
                task.cancel()
            await asyncio.gather(drain, now, return_exceptions=True)
        await gateway.stop()  # ends any call still up (close code 1001), closes the socket
        log.info("worker stopped (pid %d)", os.getpid())
        return 0
    finally:
        _signals.detach()


def main(argv: list[str] | None = None) -> int:
    _signals.install()  # before the heavy imports: no signal is lost
    args = _parse(argv)
    import logging
    import warnings

    # The refusal below says it better than _fastpath's import-time warning (startup.PURE_TWIN_WARNING).
    warnings.filterwarnings("ignore", message="_fastpath: compiled extension not available", category=RuntimeWarning)
    from ..config import Settings
    from ..control.hub import WORKER_ENV
    from ..errors import ConfigError
    from ..logs import setup_logging
    from ..startup import fast_path, fast_path_refusal

    os.environ[WORKER_ENV] = str(args.index)  # control.setup: this worker's place in the pod
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        problems = "; ".join(exc.problems)
        print(f"gateway worker {args.index}: configuration error: {problems}", file=sys.stderr, flush=True)
        return 2
    refusal = fast_path_refusal(fast_path())
    if refusal is not None:
        print(f"gateway worker {args.index}: refusing to start: {refusal}", file=sys.stderr, flush=True)
        return 2
    setup_logging(settings.log_level, worker=args.index)
    log = logging.getLogger("gateway.worker")
    _die_with_parent(args.parent_pid)
    host = args.host if args.host is not None else settings.host
    port = args.port if args.port is not None else settings.port
    try:
        sock = listen_socket(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d with SO_REUSEPORT: %s", host, port, exc)
        return 1
    import uvloop

    try:
        return uvloop.run(serve(settings, sock, args.ready_fd, log))
    except Exception:
        log.exception("worker failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
