"""The supervisor of ``gateway serve``: N worker processes on one port, restarted when they die.

``gateway serve`` ALWAYS runs this supervisor, also with ``--workers 1``: one code path, and a
crashed single worker is restarted too. The supervisor itself serves nothing; it is a small
stdlib-asyncio process (its speed does not matter), and each worker is a fresh interpreter
(``subprocess``, not ``multiprocessing`` fork) with its own uvloop.

Protocol with a worker (``worker.py``):

* spawn: ``sys.executable -P -m gateway.runtime.worker --index I --ready-fd W --host H --port P
  --parent-pid S`` with the environment inherited (same ``Settings.from_env()``) and this
  package's directory first on ``PYTHONPATH`` (``worker_command``); ``W`` is the
  write end of a fresh pipe handed over with ``pass_fds`` (closed here right after the spawn);
* ready: the worker writes ``ready <port>\\n`` on that pipe once its own ``SO_REUSEPORT`` socket
  listens, and closes it. EOF without that line means it failed to start (its exit is reaped);
* reload: SIGHUP is forwarded to every worker (they re-read the agents file);
* stop: the supervisor forwards SIGTERM (drain) / SIGINT (stop at once) to every worker;
  a second signal is forwarded again (the worker then stops at once).

Lifecycle:

* start: all workers must be ready within ``ready_timeout_s`` (30 s). A worker that exits (or
  is still not ready) before that → the others are stopped and the supervisor exits 1, with a
  log line naming the worker and its exit status;
* run: a worker that dies is restarted after an exponential backoff (0.5 s doubling to 30 s,
  reset to 0.5 s when the worker had been up for 60 s), with a warning log line, a restart count
  and the ``on_worker_restart(index, pid)`` hook (for the metrics counter). A restarted worker
  that is not ready within ``ready_timeout_s`` is killed (and restarted again);
* stop: on SIGTERM/SIGINT no more restarts; exit 0 when every worker that was running exited 0
  (a worker killed by the forwarded signal before it could install its handlers also counts as
  clean), 1 otherwise. Workers still running ``drain_timeout_s`` + 30 s after the signal are
  killed (exit 1).

Metrics (prometheus-client multiprocess mode): with no ``PROMETHEUS_MULTIPROC_DIR`` in the
environment, the supervisor creates a fresh one (removed when
it exits) and hands it to its workers, so any worker's ``/metrics`` shows the sum over all of
them. A directory given by the operator is used as is (created if missing, never wiped: wipe it
between runs yourself). Whenever multiprocess mode is on, ``mark_process_dead(pid)`` runs for
every worker that exits. Port 0 only makes sense with one worker (each worker would get its own
ephemeral port); the supervisor refuses it for more, and a single worker's actual port is kept
for its restarts.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Nothing imported here may import prometheus_client: it picks multiprocess mode once, at import,
# from PROMETHEUS_MULTIPROC_DIR, which this process sets only in ``run`` (tests/runtime check it).
from ..control.hub import HUB_ENV, PodHub
from ..outcomes import Outcome

log = logging.getLogger("gateway.supervisor")

READY_TIMEOUT_S = 30.0
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_S = 60.0  # a worker up this long restarts after BACKOFF_MIN_S again
STOP_GRACE_S = 30.0  # after the drain timeout, before workers are killed
FAIL_STOP_S = 10.0  # failed start: time the other workers get to stop before SIGKILL
TICK_S = 0.1  # exit polling period (ready notifications and signals wake the loop at once)
WORKER_MODULE = "gateway.runtime.worker"


def worker_command() -> list[str]:
    """argv that runs a worker from the SAME ``gateway`` package this supervisor imported.

    ``-P``: the worker's working directory is not put on ``sys.path`` (run from a source checkout
    after a wheel install, ``-m`` would otherwise import the checkout, with no compiled fast path);
    the directory this package came from goes first on ``PYTHONPATH`` instead (``worker_env``).
    """
    return [sys.executable, "-P", "-m", WORKER_MODULE]


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the directory that holds this ``gateway`` package first on PYTHONPATH."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return out


def next_backoff(backoff_s: float, uptime_s: float) -> tuple[float, float]:
    """(delay before this restart, backoff state for the next restart)."""
    if uptime_s >= BACKOFF_RESET_S:
        backoff_s = BACKOFF_MIN_S
    return backoff_s, min(backoff_s * 2, BACKOFF_MAX_S)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _mark_process_dead(pid: int, path: str | None) -> None:
    """prometheus_client multiprocess mode: drop the dead worker's live-gauge files."""
    if not path:
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]  # untyped upstream
    except Exception:  # metrics bookkeeping must never take the supervisor down
        log.warning("mark_process_dead(%d) failed", pid, exc_info=True)


@dataclass
class WorkerProcess:
    """One worker slot: its current process (None while down) and restart bookkeeping."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # read end of the ready pipe while waiting for "ready"
    ready_buf: bytes = b""
    ready: bool = False
    spawned_at: float = 0.0
    ready_at: float | None = None
    killed: bool = False  # SIGKILL sent for a ready timeout
    backoff_s: float = BACKOFF_MIN_S
    restart_at: float | None = None  # monotonic time of the pending restart
    restarts: int = 0
    port: int | None = None
    last_exit: int | None = None
    unended_at_spawn: int = 0  # a reused pid's old counter file (an operator's kept directory)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """``Supervisor(workers, host, port).run()`` → process exit code."""

    def __init__(self, workers: int, host: str, port: int, *, drain_timeout_s: float = 600.0,
                 ready_timeout_s: float = READY_TIMEOUT_S, worker_cmd: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, max_calls: int | None = None, pod: str = "") -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        if port == 0 and workers > 1:
            raise ValueError("port 0 with several workers: each worker would listen on its own random port")
        self.host, self.port = host, port
        self.drain_timeout_s = drain_timeout_s
        self.ready_timeout_s = ready_timeout_s
        # argv of a worker before "--index I --ready-fd W ..." (tests substitute a fake worker)
        self.worker_cmd = list(worker_cmd) if worker_cmd else worker_command()
        self.env = worker_env(os.environ if env is None else env)
        self.workers = [WorkerProcess(i) for i in range(workers)]
        self.restart_count = 0
        # Callables (index, pid) run by on_worker_restart, e.g. a Prometheus counter's inc.
        self.restart_hooks: list[Callable[[int, int], None]] = [self._count_restart]
        # The pod's hub (control plane) when max_calls is given: gateway serve always gives it.
        self._hub_max_calls = max_calls
        self._pod = pod
        self.hub: PodHub | None = None
        self._hub_dir: str | None = None
        self._restart_counter: Any = None  # prometheus Counter, created on the first restart
        self._ended_counter: Any = None  # gateway_calls_ended_total, for calls of dead workers
        self._phase = "starting"  # starting → running → stopping | failing
        self._signal: int | None = None
        self._extra_signal: int | None = None
        self._failure: str | None = None
        self._stop_codes: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR of the workers, if any
        self._own_metrics_dir = False

    # ------------------------------------------------------------------ hook
    def _count_restart(self, index: int, pid: int) -> None:
        """``gateway_worker_restarts_total``: written to the shared metrics directory by this process."""
        if self.metrics_dir is None:
            return
        if self._restart_counter is None:
            from ..metrics import restart_counter

            self._restart_counter = restart_counter()
        self._restart_counter.inc()

    def on_worker_restart(self, index: int, pid: int) -> None:
        """HOOK (metrics): called once per worker restart, right after the replacement process
        was spawned; ``pid`` is the NEW process (the dead one is in the preceding log line).
        Runs ``self.restart_hooks``; their exceptions are logged, never fatal."""
        for hook in list(self.restart_hooks):
            try:
                hook(index, pid)
            except Exception:
                log.exception("worker restart hook failed")

    # ------------------------------------------------------------------ entry point
    def run(self) -> int:
        try:
            self._setup_metrics_dir()
        except OSError as exc:
            log.error("cannot prepare %s: %s", MULTIPROC_ENV, exc)
            return 1
        loop = asyncio.new_event_loop()  # plain asyncio: no Runner SIGINT magic, no uvloop needed
        try:
            return loop.run_until_complete(self._main())
        finally:
            loop.close()
            if self._own_metrics_dir and self.metrics_dir:
                if os.environ.get(MULTIPROC_ENV) == self.metrics_dir:
                    del os.environ[MULTIPROC_ENV]
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _setup_metrics_dir(self) -> None:
        given = self.env.get(MULTIPROC_ENV)
        if given:
            os.makedirs(given, exist_ok=True)
            self.metrics_dir = given
        else:  # even for one worker: the restart counter lives in this process
            if "prometheus_client" in sys.modules:  # a regression of this module's imports
                log.error("prometheus_client was imported before %s was set: this process's counters "
                          "(worker restarts, calls of dead workers) will be missing from /metrics", MULTIPROC_ENV)
            self.metrics_dir = tempfile.mkdtemp(prefix="gateway-prometheus-")
            self._own_metrics_dir = True
            # The workers inherit it; set here too, so metrics created in this process (the
            # restart counter behind on_worker_restart) land in the same directory.
            os.environ[MULTIPROC_ENV] = self.metrics_dir
            self.env[MULTIPROC_ENV] = self.metrics_dir
        if self.metrics_dir:
            log.info("prometheus multiprocess mode: %s=%s", MULTIPROC_ENV, self.metrics_dir)
            self._count_lost_calls(0)  # the worker_lost series exists (at 0) from the start: alerts see its first rise

    async def _start_hub(self) -> None:
        """The pod's control plane on a private Unix socket the workers connect to (``control.hub``)."""
        if self._hub_max_calls is None:
            return
        self._hub_dir = tempfile.mkdtemp(prefix="gateway-hub-")  # mode 0700: only this user's processes
        path = os.path.join(self._hub_dir, "hub.sock")
        self.hub = PodHub(path, self._hub_max_calls, self._pod)
        await self.hub.start()
        self.env[HUB_ENV] = path
        log.info("pod hub on %s (up to %d calls in the pod)", path, self._hub_max_calls)

    def _unended_calls(self, pid: int) -> int:
        if self.metrics_dir is None:
            return 0
        from ..metrics import unended_calls

        try:
            return unended_calls(pid, self.metrics_dir)
        except Exception:  # metrics bookkeeping must never take the supervisor down
            log.warning("reading the counters of pid %d failed", pid, exc_info=True)
            return 0

    def _count_lost_calls(self, lost: int) -> None:
        """A dead worker's calls are counted as ended (its own process can no longer do it)."""
        if self.metrics_dir is None:
            return
        if self._ended_counter is None:
            from ..metrics import BY_NAME, make

            self._ended_counter = make(BY_NAME["gateway_calls_ended_total"], None)
        self._ended_counter.labels(Outcome.WORKER_LOST).inc(lost)  # inc(0) creates the series

    async def _stop_hub(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
        if self._hub_dir is not None:
            shutil.rmtree(self._hub_dir, ignore_errors=True)

    async def _main(self) -> int:
        try:
            await self._start_hub()
            return await self._supervise()
        finally:
            await self._stop_hub()

    async def _supervise(self) -> int:
        self._loop = loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        log.info("supervisor (pid %d): starting %d workers on %s:%d", os.getpid(), len(self.workers),
                 self.host, self.port)
        try:
            for w in self.workers:
                self._spawn(w)
            while True:
                self._reap(time.monotonic())
                if self._failure is not None:
                    log.error("%s; stopping the other workers", self._failure)
                    self._phase = "failing"
                    await self._stop_workers(signal.SIGTERM, FAIL_STOP_S)
                    log.error("gateway did not start: %s", self._failure)
                    return 1
                if self._signal is not None:
                    return await self._shutdown(self._signal)
                if self._phase == "starting" and all(w.ready for w in self.workers):
                    self._phase = "running"
                    log.info("all %d workers ready on %s:%d", len(self.workers), self.host, self.port)
                self._restart_due(time.monotonic())
                await self._sleep(TICK_S)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for w in self.workers:
                self._close_ready(w)
                if w.proc is not None and w.proc.poll() is None:  # only on a supervisor bug
                    log.error("supervisor exiting: SIGTERM to worker %d (pid %d)", w.index, w.proc.pid)
                    w.proc.send_signal(signal.SIGTERM)

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    # ------------------------------------------------------------------ signals
    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._signal is None:
            self._signal = sig
        elif self._phase == "stopping":
            log.info("%s again: forwarding (workers stop at once)", name)
            self._forward(sig)
        elif self._phase != "failing":
            self._extra_signal = sig  # arrived before the shutdown began: forwarded right after the first
        assert self._wake is not None
        self._wake.set()

    def _on_hup(self) -> None:
        """SIGHUP: every worker re-reads the agents file (calls in progress keep theirs)."""
        log.info("SIGHUP: workers reload the agents file")
        self._forward(signal.SIGHUP)

    def _forward(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None:
                try:
                    w.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    # ------------------------------------------------------------------ spawning / readiness
    def _spawn(self, w: WorkerProcess) -> None:
        assert self._loop is not None
        read_fd, write_fd = os.pipe()
        cmd = [*self.worker_cmd, "--index", str(w.index), "--ready-fd", str(write_fd),
               "--host", self.host, "--port", str(self.port), "--parent-pid", str(os.getpid())]
        try:
            w.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
                cmd, pass_fds=(write_fd,), env=self.env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            os.close(read_fd)
            w.proc = None
            self._spawn_failed(w, exc)
            return
        finally:
            os.close(write_fd)
        w.spawned_at = time.monotonic()
        w.ready, w.ready_at, w.ready_buf, w.killed = False, None, b"", False
        # Read before the worker can count a call: it has only just been exec'd, and it counts
        # calls only once it listens.
        w.unended_at_spawn = self._unended_calls(w.proc.pid)
        os.set_blocking(read_fd, False)
        w.ready_fd = read_fd
        self._loop.add_reader(read_fd, self._on_ready_data, w)
        log.info("worker %d spawned: pid %d", w.index, w.proc.pid)

    def _spawn_failed(self, w: WorkerProcess, exc: OSError) -> None:
        if self._phase == "starting":
            self._failure = f"worker {w.index} could not be spawned: {exc}"
            return
        now = time.monotonic()
        delay, w.backoff_s = next_backoff(w.backoff_s, 0.0)
        w.restart_at = now + delay
        log.error("worker %d could not be spawned (%s); retrying in %.1f s", w.index, exc, delay)

    def _on_ready_data(self, w: WorkerProcess) -> None:
        assert w.ready_fd is not None and self._wake is not None
        try:
            data = os.read(w.ready_fd, 256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            w.ready_buf += data
            if b"\n" not in w.ready_buf:
                return
            words = w.ready_buf.split(b"\n", 1)[0].decode(errors="replace").split()
            if words[:1] == ["ready"] and w.proc is not None:
                w.port = int(words[1]) if len(words) > 1 and words[1].isdigit() else self.port
                w.ready, w.ready_at = True, time.monotonic()
                log.info("worker %d ready: pid %d, port %d", w.index, w.proc.pid, w.port)
                if self.port == 0:  # single worker on an ephemeral port: its restarts keep that port
                    self.port = w.port
        self._close_ready(w)  # EOF without "ready": the exit is reaped by _reap
        self._wake.set()

    def _close_ready(self, w: WorkerProcess) -> None:
        if w.ready_fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(w.ready_fd)
            os.close(w.ready_fd)
            w.ready_fd = None

    # ------------------------------------------------------------------ exits and restarts
    def _reap(self, now: float) -> None:
        for w in self.workers:
            if w.proc is None:
                continue
            returncode = w.proc.poll()
            if returncode is not None:
                self._exited(w, returncode, now)
                continue
            if (not w.ready and not w.killed and self._phase in ("starting", "running")
                    and now - w.spawned_at > self.ready_timeout_s):
                msg = f"worker {w.index} (pid {w.proc.pid}) not ready after {self.ready_timeout_s:.0f} s"
                if self._phase == "starting" and w.restarts == 0:
                    self._failure = self._failure or msg
                else:
                    log.error("%s: killing it", msg)
                w.killed = True
                w.proc.kill()

    def _exited(self, w: WorkerProcess, returncode: int, now: float) -> None:
        assert w.proc is not None
        pid = w.proc.pid
        was_ready = w.ready
        w.proc, w.last_exit, w.ready = None, returncode, False
        self._close_ready(w)
        _mark_process_dead(pid, self.metrics_dir)
        lost = self._unended_calls(pid) - w.unended_at_spawn
        if lost > 0:
            log.warning("worker %d (pid %d) died with %d calls: counted as ended (outcome worker_lost)",
                        w.index, pid, lost)
            self._count_lost_calls(lost)
        if self._phase in ("stopping", "failing"):
            clean = returncode == 0 or (not was_ready and returncode in (-signal.SIGTERM, -signal.SIGINT))
            self._stop_codes[w.index] = 0 if clean else (returncode or 1)
            log_fn = log.info if clean else log.error
            log_fn("worker %d (pid %d) exited (%s)", w.index, pid, describe_exit(returncode))
            return
        if self._phase == "starting" and not was_ready and w.restarts == 0:
            self._failure = self._failure or (
                f"worker {w.index} (pid {pid}) exited ({describe_exit(returncode)}) before it was ready")
            return
        uptime = now - w.ready_at if was_ready and w.ready_at is not None else 0.0
        delay, w.backoff_s = next_backoff(w.backoff_s, uptime)
        w.restart_at = now + delay
        log.warning("worker %d (pid %d) exited unexpectedly (%s) after %.1f s up; restarting in %.1f s",
                    w.index, pid, describe_exit(returncode), uptime, delay)

    def _restart_due(self, now: float) -> None:
        for w in self.workers:
            if w.restart_at is None or now < w.restart_at:
                continue
            w.restart_at = None
            self._spawn(w)
            if w.proc is not None:
                w.restarts += 1
                self.restart_count += 1
                log.info("worker %d restarted: pid %d (restart %d of this worker, %d in total)",
                         w.index, w.proc.pid, w.restarts, self.restart_count)
                self.on_worker_restart(w.index, w.proc.pid)

    # ------------------------------------------------------------------ stopping
    async def _shutdown(self, sig: int) -> int:
        self._phase = "stopping"
        name = signal.Signals(sig).name
        running = [w for w in self.workers if w.proc is not None]
        log.info("%s: forwarding to %d workers, waiting for them to exit", name, len(running))
        codes = await self._stop_workers(sig, self.drain_timeout_s + STOP_GRACE_S, self._extra_signal)
        code = 0 if all(c == 0 for c in codes.values()) else 1
        log.info("all workers exited; supervisor exit code %d", code)
        return code

    async def _stop_workers(self, sig: int, timeout_s: float, then: int | None = None) -> dict[int, int]:
        """Signal every running worker, wait up to ``timeout_s``, kill the rest; exit codes by index."""
        for w in self.workers:
            w.restart_at = None
        self._stop_codes = {}
        self._forward(sig)
        if then is not None:
            self._forward(then)
        deadline = time.monotonic() + timeout_s
        while any(w.proc is not None for w in self.workers):
            if time.monotonic() >= deadline:
                for w in self.workers:
                    if w.proc is not None:
                        log.error("worker %d (pid %d) still running %.0f s after %s: killing it",
                                  w.index, w.proc.pid, timeout_s, signal.Signals(sig).name)
                        w.proc.kill()
                        returncode = w.proc.wait()
                        self._exited(w, returncode, time.monotonic())
                        self._stop_codes[w.index] = 1
                break
            await self._sleep(TICK_S)
            self._reap(time.monotonic())
        return dict(self._stop_codes)
