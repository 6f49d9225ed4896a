"""The pod's hub: one registry and one admission count for every worker of a ``gateway serve``.

It runs in the supervisor (which serves no calls) on a private Unix socket that every worker
connects to at start. Being one single-threaded process, it decides admission exactly: a webhook
reserves a place for its CallSid (``reserve``), the media socket's ``start`` turns the reservation
into a live call (``start``) — or refuses a second socket for a call that already streams, a
token already used, or a call beyond ``GATEWAY_MAX_CALLS`` — and ``end`` frees it. Commands for a
call are forwarded to the worker that owns it and its answer relayed back.

A worker that dies takes its calls with it: the hub drops them at once and stops routing to it.
(The supervisor counts them as ended, from the dead worker's own counters: the hub cannot, as it
hears of a call only at its ``start``, after the media socket opened.)
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .wire import WireError, encode, read

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("gateway.hub")
HUB_ENV = "GATEWAY_HUB_SOCKET"  # set by the supervisor for its workers (not a user setting)
WORKER_ENV = "GATEWAY_WORKER_INDEX"
RESERVATION_S = 30.0  # a webhook's place is kept this long for its media socket
COMMAND_TIMEOUT_S = 5.0


def pod_name(settings: Settings) -> str:
    return settings.pod_name or socket.gethostname()


@dataclass
class _Worker:
    index: int
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)


class Admission:
    """The pod's exact admission and registry, in one place (the hub's, or a lone process's)."""

    def __init__(self, max_calls: int, pod: str) -> None:
        self.max_calls = max_calls
        self.pod = pod
        self.live: dict[str, tuple[int, dict[str, Any]]] = {}  # call_sid -> (worker, info)
        self.reservations: dict[str, float] = {}  # call_sid -> expiry (monotonic)
        self._tokens: dict[str, float] = {}  # used call tokens -> expiry (wall clock)

    def _expire(self, now: float) -> None:
        if self.reservations:
            self.reservations = {sid: t for sid, t in self.reservations.items() if t > now}
        if len(self._tokens) > 4096:
            wall = time.time()
            self._tokens = {tok: t for tok, t in self._tokens.items() if t > wall}

    @property
    def counts(self) -> dict[str, int]:
        return {"live": len(self.live), "reserved": len(self.reservations), "max": self.max_calls}

    def reserve(self, call_sid: str, now: float) -> str | None:
        """A webhook wants a place for ``call_sid``: None if granted, else why not."""
        self._expire(now)
        if call_sid in self.live or call_sid in self.reservations:
            return None  # a retried webhook keeps its place (and cannot double it)
        if len(self.live) + len(self.reservations) >= self.max_calls:
            return "capacity"
        self.reservations[call_sid] = now + RESERVATION_S
        return None

    def start_call(self, worker: int, info: dict[str, Any], token: str, token_expiry: float,
                   now: float) -> str | None:
        """A media socket's ``start``: None if it may stream, else why not."""
        self._expire(now)
        call_sid = info["call_sid"]
        if token and token in self._tokens:
            return "replayed"
        if call_sid in self.live:
            return "duplicate"
        reserved = self.reservations.pop(call_sid, None) is not None
        if not reserved and len(self.live) + len(self.reservations) >= self.max_calls:
            return "capacity"
        if token:
            self._tokens[token] = token_expiry
        self.live[call_sid] = (worker, {**info, "pod": self.pod, "worker": worker})
        return None

    def update(self, worker: int, info: dict[str, Any]) -> None:
        entry = self.live.get(info["call_sid"])
        if entry is not None and entry[0] == worker:
            entry[1].update(info)

    def end_call(self, worker: int, call_sid: str) -> None:
        entry = self.live.get(call_sid)
        if entry is not None and entry[0] == worker:
            del self.live[call_sid]

    def drop_worker(self, worker: int) -> int:
        lost = [sid for sid, (w, _) in self.live.items() if w == worker]
        for sid in lost:
            del self.live[sid]
        return len(lost)


class PodHub:
    def __init__(self, path: str, max_calls: int, pod: str) -> None:
        self.path = path
        self.admission = Admission(max_calls, pod)
        self._server: asyncio.AbstractServer | None = None
        self._workers: dict[int, _Worker] = {}
        self._ids = itertools.count(1)

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for worker in list(self._workers.values()):
                worker.writer.close()
            await self._server.wait_closed()

    # ------------------------------------------------------------------ connections
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker: _Worker | None = None
        try:
            hello = await read(reader)
            if hello is None or hello.get("op") != "hello":
                return
            worker = _Worker(int(hello["worker"]), writer)
            old = self._workers.get(worker.index)
            if old is not None:  # a restarted worker replaces its predecessor
                self._lost(old)
            self._workers[worker.index] = worker
            writer.write(encode({"id": hello.get("id", 0), "ok": True, **self.admission.counts}))
            while (message := await read(reader)) is not None:
                self._dispatch(worker, message)
        except (WireError, OSError, KeyError, TypeError, ValueError) as exc:
            log.error("hub: worker connection broken: %s", exc)
        finally:
            if worker is not None and self._workers.get(worker.index) is worker:
                self._lost(worker)
            writer.close()

    def _lost(self, worker: _Worker) -> None:
        """A worker is gone: its calls with it."""
        self._workers.pop(worker.index, None)
        lost = self.admission.drop_worker(worker.index)
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"worker {worker.index} is gone"))
        if lost:
            log.warning("hub: worker %d is gone with %d calls", worker.index, lost)

    def _dispatch(self, worker: _Worker, m: dict[str, Any]) -> None:
        op, rid = m.get("op"), m.get("id", 0)
        now = time.monotonic()
        if op == "reply":  # the answer to a command we forwarded to this worker
            future = worker.pending.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(m)
            return
        admission = self.admission
        if op == "reserve":
            self._answer(worker, rid, reason=admission.reserve(m["call_sid"], now))
        elif op == "start":
            reason = admission.start_call(worker.index, m["info"], m.get("token", ""), m.get("token_expiry", 0.0),
                                          now)
            self._answer(worker, rid, reason=reason)
        elif op == "update":
            admission.update(worker.index, m["info"])
        elif op == "end":
            admission.end_call(worker.index, m["call_sid"])
        elif op == "list":
            self._answer(worker, rid, calls=[info for _, info in admission.live.values()])
        elif op == "count":
            self._answer(worker, rid)
        elif op == "command":
            task = asyncio.get_running_loop().create_task(self._route(worker, rid, m))
            task.add_done_callback(_log_failure)

    def _answer(self, worker: _Worker, rid: int, reason: str | None = None, **fields: Any) -> None:
        if rid:
            counts = self.admission.counts
            worker.writer.write(encode({"id": rid, "ok": reason is None, "reason": reason, **counts, **fields}))

    async def _route(self, asker: _Worker, rid: int, m: dict[str, Any]) -> None:
        entry = self.admission.live.get(m["call_sid"])
        owner = self._workers.get(entry[0]) if entry is not None else None
        if owner is None:
            self._answer(asker, rid, reason="not_found", status=404)
            return
        hub_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        owner.pending[hub_id] = future
        owner.writer.write(encode({"op": "run", "id": hub_id, "call_sid": m["call_sid"], "verb": m["verb"],
                                   "args": m.get("args", {})}))
        try:
            reply = await asyncio.wait_for(future, m.get("timeout", COMMAND_TIMEOUT_S))
        except (TimeoutError, ConnectionError) as exc:
            owner.pending.pop(hub_id, None)
            self._answer(asker, rid, reason=f"owner worker {owner.index}: {exc or 'no answer in time'}", status=504)
            return
        asker.writer.write(encode({**reply, "id": rid, "op": "result"}))


def _log_failure(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            log.error("hub: routing failed", exc_info=exc)
