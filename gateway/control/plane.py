"""One worker's view of the control plane: admission, registration, commands for any call.

``LocalPlane`` serves a lone gateway process (tests, the demo): the pod is this process.
``PodPlane`` talks to the pod's hub (``hub.PodHub`` in the supervisor) over its Unix socket; with
``GATEWAY_REDIS_URL`` a ``redis_plane.ClusterPlane`` wraps either to reach every pod. A command
for a call this worker owns runs here without a round trip (``Route.LOCAL``).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .hub import COMMAND_TIMEOUT_S, Admission
from .model import CallInfo, ControlError, Route, Verb, not_found, timed_out, unavailable
from .wire import WireError, encode, read

log = logging.getLogger("gateway.control")
HUB_TIMEOUT_S = 2.0

# Runs a verb on a call of this worker; raises ControlError (404 if the call is not here).
Executor = Callable[[str, Verb, dict[str, Any]], Awaitable[dict[str, Any]]]


def info_dict(info: CallInfo) -> dict[str, Any]:
    return msgspec.to_builtins(info)  # type: ignore[no-any-return]


class ControlPlane:
    """The interface the gateway uses; ``LocalPlane`` is also its simplest implementation."""

    def __init__(self, max_calls: int, pod: str, worker: int) -> None:
        self.pod = pod
        self.worker = worker
        self._admission = Admission(max_calls, pod)
        self._executor: Executor | None = None
        self._local: set[str] = set()  # calls this worker owns

    def serve_commands(self, executor: Executor) -> None:
        self._executor = executor

    async def start(self) -> None:
        """Connect to whatever the plane needs (nothing for a lone process)."""

    # ------------------------------------------------------------------ admission and registry
    async def reserve(self, call_sid: str) -> str | None:
        """The webhook of ``call_sid`` wants a place: None if granted, else a RejectReason value."""
        return self._admission.reserve(call_sid, time.monotonic())

    async def start_call(self, info: CallInfo, token: str, token_expiry: float) -> str | None:
        """The media socket's ``start``: None if the call may stream, else why not."""
        reason = self._admission.start_call(self.worker, info_dict(info), token, token_expiry, time.monotonic())
        if reason is None:
            self._local.add(info.call_sid)
        return reason

    def update(self, info: CallInfo) -> None:
        self._admission.update(self.worker, info_dict(info))

    def end_call(self, call_sid: str) -> None:
        if call_sid in self._local:
            self._local.discard(call_sid)
            self._admission.end_call(self.worker, call_sid)

    async def counts(self) -> dict[str, int]:
        return self._admission.counts

    async def calls(self) -> list[dict[str, Any]]:
        return [info for _, info in self._admission.live.values()]

    # ------------------------------------------------------------------ commands
    async def command(self, call_sid: str, verb: Verb, args: dict[str, Any]) -> tuple[Route, dict[str, Any]]:
        if call_sid in self._local:
            return Route.LOCAL, await self._run_local(call_sid, verb, args)
        return await self._route(call_sid, verb, args)

    async def _run_local(self, call_sid: str, verb: Verb, args: dict[str, Any]) -> dict[str, Any]:
        if self._executor is None:
            raise unavailable("this worker serves no commands")
        return await self._executor(call_sid, verb, args)

    async def _route(self, call_sid: str, verb: Verb, args: dict[str, Any]) -> tuple[Route, dict[str, Any]]:
        raise not_found(call_sid)

    async def aclose(self) -> None:
        pass


class LocalPlane(ControlPlane):
    """A lone gateway process (tests, the demo, a bare ``Gateway``): the pod is this process."""


class PodPlane(ControlPlane):
    """A worker of ``gateway serve``: the pod's admission and registry live in the hub."""

    def __init__(self, max_calls: int, pod: str, worker: int, hub_path: str) -> None:
        super().__init__(max_calls, pod, worker)
        self._path = hub_path
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._counts: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False  # this worker is closing its side: losing the hub is expected

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self._path)
        self._writer.write(encode({"op": "hello", "id": 0, "worker": self.worker}))
        hello = await asyncio.wait_for(read(reader), HUB_TIMEOUT_S)
        if not hello or not hello.get("ok"):
            raise ConnectionError("the hub refused this worker")
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (message := await read(reader)) is not None:
                if message.get("op") == "run":
                    task = asyncio.get_running_loop().create_task(self._serve_run(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    continue
                future = self._pending.pop(message.get("id", 0), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (WireError, OSError) as exc:
            if not self._closing:
                log.error("control: hub connection broken: %s", exc)
        finally:
            if not self._closing:
                # The supervisor closes the hub when the pod stops, before or while its workers drain.
                log.warning("control: lost the hub; admission falls back to this worker's own count")
            self._writer = None
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("hub connection lost"))
            self._pending.clear()

    async def _serve_run(self, m: dict[str, Any]) -> None:
        try:
            body = await self._run_local(m["call_sid"], Verb(m["verb"]), m.get("args") or {})
            reply = {"op": "reply", "id": m["id"], "ok": True, "status": 200, "body": body}
        except ControlError as exc:
            reply = {"op": "reply", "id": m["id"], "ok": False, "status": exc.status, "reason": exc.reason}
        except ValueError as exc:
            reply = {"op": "reply", "id": m["id"], "ok": False, "status": 400, "reason": str(exc)}
        if self._writer is not None:
            self._writer.write(encode(reply))

    async def _request(self, op: str, timeout_s: float = HUB_TIMEOUT_S, **fields: Any) -> dict[str, Any]:
        if self._writer is None:
            raise ConnectionError("no hub connection")
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self._writer.write(encode({"op": op, "id": rid, **fields}))
        try:
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(rid, None)
        self._counts = {k: reply[k] for k in ("live", "reserved", "max") if k in reply}
        return reply

    def _fire(self, op: str, **fields: Any) -> None:
        if self._writer is not None:
            self._writer.write(encode({"op": op, "id": 0, **fields}))

    async def reserve(self, call_sid: str) -> str | None:
        try:
            reply = await self._request("reserve", call_sid=call_sid)
        except (ConnectionError, TimeoutError) as exc:
            log.error("control: hub unreachable at the webhook (%s): this worker's own count decides", exc)
            return await super().reserve(call_sid)
        return None if reply.get("ok") else str(reply.get("reason"))

    async def start_call(self, info: CallInfo, token: str, token_expiry: float) -> str | None:
        try:
            reply = await self._request("start", info=info_dict(info), token=token, token_expiry=token_expiry)
        except (ConnectionError, TimeoutError) as exc:
            log.error("control: hub unreachable at start (%s): this worker's own count decides", exc)
            return await super().start_call(info, token, token_expiry)
        if reply.get("ok"):
            self._local.add(info.call_sid)
            return None
        return str(reply.get("reason"))

    def update(self, info: CallInfo) -> None:
        self._fire("update", info=info_dict(info))

    def end_call(self, call_sid: str) -> None:
        if call_sid in self._local:
            self._local.discard(call_sid)
            self._fire("end", call_sid=call_sid)
            self._admission.end_call(self.worker, call_sid)  # in case it was admitted while the hub was away

    async def counts(self) -> dict[str, int]:
        try:
            return {k: v for k, v in (await self._request("count")).items() if k in ("live", "reserved", "max")}
        except (ConnectionError, TimeoutError):
            return await super().counts()

    async def calls(self) -> list[dict[str, Any]]:
        try:
            return list((await self._request("list")).get("calls", []))
        except (ConnectionError, TimeoutError) as exc:
            raise unavailable(f"the pod's hub is unreachable: {exc}") from exc

    async def _route(self, call_sid: str, verb: Verb, args: dict[str, Any]) -> tuple[Route, dict[str, Any]]:
        try:
            reply = await self._request("command", COMMAND_TIMEOUT_S + 1.0, call_sid=call_sid, verb=str(verb),
                                        args=args, timeout=COMMAND_TIMEOUT_S)
        except (ConnectionError, TimeoutError) as exc:
            raise unavailable(f"the pod's hub is unreachable: {exc}") from exc
        if reply.get("ok"):
            return Route.POD, dict(reply.get("body") or {})
        status = int(reply.get("status") or 500)
        if status == 404:
            raise not_found(call_sid)
        if status == 504:
            raise timed_out(str(reply.get("reason")))
        raise ControlError(status, str(reply.get("reason")))

    async def aclose(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, *self._tasks, return_exceptions=True)
