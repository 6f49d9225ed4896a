"""The cluster: every pod's calls in Redis, commands to the owning worker over Redis pub/sub.

``ClusterPlane`` wraps a worker's pod plane (``PodPlane`` or ``LocalPlane``): admission and
commands are decided in the pod first, Redis adds what only the cluster knows. Layout:

* ``gw:call:{sid}`` — a hash (the ``CallInfo``) with a TTL the owning worker refreshes every
  ``TTL_S / 3`` for all its calls in one pipeline: a dead pod's calls vanish within ``TTL_S``;
* ``gw:calls`` — a sorted set of CallSids scored by expiry (unix s): listing, paginated, and the
  cluster count behind ``GATEWAY_CLUSTER_MAX_CALLS`` (webhook reservations are in it too, with a
  short expiry, admitted atomically by a Lua script);
* ``gw:token:{mac}`` — ``SET NX EX``: a call token is single-use across the cluster;
* ``gw:owner:{sid}`` — ``SET NX EX``: one media socket per CallSid across the cluster;
* ``gw:cmd:{pod}:{worker}`` / ``gw:reply:{pod}:{worker}`` — pub/sub channels of each worker's
  commands and of the answers to the commands it sent.

Redis down, restarted or slow never touches a call: admission falls back to the pod's answer,
the registry catches up (every local call re-registered) once Redis answers again, and the control
API serves this pod's calls and answers 503 for the others. Every Redis failure is logged once per
outage and counted (``gateway_registry_errors_total{op}``).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .model import CallInfo, ControlError, Route, Verb, not_found, timed_out, unavailable
from .plane import ControlPlane, info_dict

log = logging.getLogger("gateway.cluster")
TTL_S = 30  # a registry entry outlives its owner by at most this
RESERVATION_S = 30
COMMAND_TIMEOUT_S = 5.0
OP_TIMEOUT_S = 1.0  # one Redis round trip on the webhook/start path; slower counts as down
SIGNED_MESSAGE_TTL_S = 30.0  # a command (or answer) older than this is refused

# Atomically: forget expired entries, then admit ARGV[1] with expiry ARGV[3] if the cluster holds
# fewer than ARGV[4] calls (0 = no cap). Returns 1 if admitted (or already there), else 0.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
local cap = tonumber(ARGV[4])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

Count = Callable[[str], None]  # op -> count a registry error


def call_key(call_sid: str) -> str:
    return f"gw:call:{call_sid}"


class ClusterPlane(ControlPlane):
    def __init__(self, inner: ControlPlane, url: str, cluster_max_calls: int, count_error: Count,
                 key: bytes) -> None:
        super().__init__(0, inner.pod, inner.worker)
        self._inner = inner
        self._cap = cluster_max_calls
        self._count_error = count_error
        self._key = key  # commands and answers are signed: reaching Redis is not enough to command a call
        self._redis = aioredis.Redis.from_url(url, socket_timeout=OP_TIMEOUT_S, socket_connect_timeout=OP_TIMEOUT_S,
                                              health_check_interval=10, decode_responses=True)
        self._reserve = self._redis.register_script(_RESERVE)
        self._healthy = True
        self._infos: dict[str, CallInfo] = {}  # this worker's calls, re-registered after an outage
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._channel = f"gw:cmd:{inner.pod}:{inner.worker}"
        self._reply_channel = f"gw:reply:{inner.pod}:{inner.worker}"

    def serve_commands(self, executor: Any) -> None:
        super().serve_commands(executor)
        self._inner.serve_commands(executor)

    async def start(self) -> None:
        await self._inner.start()
        self._listener = asyncio.get_running_loop().create_task(self._listen())
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    # ------------------------------------------------------------------ health
    def _failed(self, op: str, exc: BaseException) -> None:
        self._count_error(op)
        if self._healthy:
            log.error("redis unreachable (%s: %s): calls continue; control of other pods' calls is unavailable "
                      "until it answers", op, exc)
        self._healthy = False

    def _recovered(self) -> None:
        if not self._healthy:
            log.warning("redis answers again: re-registering this worker's %d calls", len(self._infos))
            self._healthy = True

    # ------------------------------------------------------------------ admission and registry
    async def reserve(self, call_sid: str) -> str | None:
        reason = await self._inner.reserve(call_sid)
        if reason is not None or self._cap <= 0:
            return reason
        now = time.time()
        try:
            admitted = await self._reserve(keys=["gw:calls"], args=[call_sid, now, now + RESERVATION_S, self._cap])
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("reserve", exc)
            return None  # the pod admitted it; the cluster cap cannot be checked now
        self._recovered()
        return None if admitted else "cluster_capacity"

    async def start_call(self, info: CallInfo, token: str, token_expiry: float) -> str | None:
        info = msgspec.structs.replace(info, pod=self.pod, worker=self.worker)
        reason = await self._inner.start_call(info, token, token_expiry)
        if reason is not None:
            return reason
        self._local.add(info.call_sid)
        owner = f"{self.pod}:{self.worker}"
        ttl = max(1, int(token_expiry - time.time())) if token else TTL_S
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if token:
                    pipe.set(f"gw:token:{_digest(token)}", owner, nx=True, ex=ttl)
                pipe.set(f"gw:owner:{info.call_sid}", owner, nx=True, ex=TTL_S)
                pipe.get(f"gw:owner:{info.call_sid}")
                results = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("start", exc)
            self._infos[info.call_sid] = info  # registered when Redis answers again
            return None
        self._recovered()
        token_fresh = results[0] if token else True
        owner_now = str(results[-1] or owner)
        if not token_fresh or owner_now != owner:
            self._local.discard(info.call_sid)
            self._inner.end_call(info.call_sid)
            return "replayed" if not token_fresh else "duplicate"
        self._infos[info.call_sid] = info
        await self._register([info])
        return None

    def update(self, info: CallInfo) -> None:
        self._inner.update(info)
        if info.call_sid in self._infos:
            self._infos[info.call_sid] = info
            self._spawn(self._register([info]))

    def end_call(self, call_sid: str) -> None:
        self._inner.end_call(call_sid)
        self._local.discard(call_sid)
        if self._infos.pop(call_sid, None) is not None:
            self._spawn(self._unregister(call_sid))

    async def _register(self, infos: list[CallInfo]) -> None:
        expiry = time.time() + TTL_S
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for info in infos:
                    key = call_key(info.call_sid)
                    pipe.hset(key, mapping={k: str(v) for k, v in info_dict(info).items()})
                    pipe.expire(key, TTL_S)
                    owner = f"gw:owner:{info.call_sid}"
                    pipe.set(owner, f"{self.pod}:{self.worker}", nx=True, ex=TTL_S)  # again after a Redis restart
                    pipe.expire(owner, TTL_S)
                    pipe.zadd("gw:calls", {info.call_sid: expiry})
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("register", exc)
            return
        self._recovered()

    async def _unregister(self, call_sid: str) -> None:
        try:
            await self._redis.delete(call_key(call_sid), f"gw:owner:{call_sid}")
            await self._redis.zrem("gw:calls", call_sid)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("unregister", exc)  # the entry expires within TTL_S anyway

    async def _refresh_loop(self) -> None:
        """Keep this worker's entries alive (and re-register them all after an outage)."""
        while True:
            await asyncio.sleep(TTL_S / 3)
            if self._infos:
                await self._register(list(self._infos.values()))
            try:  # entries of pods that died (and expired reservations) leave the listing set
                await self._redis.zremrangebyscore("gw:calls", "-inf", time.time())
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed("cleanup", exc)

    async def counts(self) -> dict[str, int]:
        return await self._inner.counts()

    async def calls(self) -> list[dict[str, Any]]:
        """Every pod's calls (the cluster registry)."""
        try:
            sids = await self._redis.zrangebyscore("gw:calls", time.time(), "+inf")
            async with self._redis.pipeline(transaction=False) as pipe:
                for call_sid in sids:
                    pipe.hgetall(call_key(str(call_sid)))
                entries = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("list", exc)
            raise unavailable(f"the call registry (Redis) is unreachable: {exc}") from exc
        self._recovered()
        # an empty entry is a reservation (no hash yet) or an entry that just expired
        return [info_dict(msgspec.convert(entry, CallInfo, strict=False)) for entry in entries if entry]

    # ------------------------------------------------------------------ commands
    async def command(self, call_sid: str, verb: Verb, args: dict[str, Any]) -> tuple[Route, dict[str, Any]]:
        try:
            return await self._inner.command(call_sid, verb, args)
        except ControlError as exc:
            if exc.status != 404:
                raise
        return await self._cluster_command(call_sid, verb, args)

    async def _cluster_command(self, call_sid: str, verb: Verb, args: dict[str, Any]) -> tuple[Route, dict[str, Any]]:
        try:
            raw = await self._redis.get(f"gw:owner:{call_sid}")
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("route", exc)
            raise unavailable(f"the call registry (Redis) is unreachable: {exc}") from exc
        self._recovered()
        if raw is None:
            raise not_found(call_sid)
        owner = str(raw)
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        message = self._seal({"id": rid, "reply_to": self._reply_channel, "call_sid": call_sid,
                              "verb": str(verb), "args": args, "at": time.time()})
        try:
            receivers = await self._redis.publish(f"gw:cmd:{owner}", message)
            if not receivers:
                raise timed_out(f"the owner of {call_sid} ({owner}) is not listening")
            reply = await asyncio.wait_for(future, COMMAND_TIMEOUT_S)
        except TimeoutError:
            raise timed_out(f"the owner of {call_sid} ({owner}) did not answer in time") from None
        except (RedisError, OSError) as exc:
            self._failed("route", exc)
            raise unavailable(f"the call registry (Redis) is unreachable: {exc}") from exc
        finally:
            self._pending.pop(rid, None)
        if reply.get("ok"):
            return Route.CLUSTER, dict(reply.get("body") or {})
        raise ControlError(int(reply.get("status") or 500), str(reply.get("reason")))

    async def _listen(self) -> None:
        """This worker's command and reply channels, resubscribed after every Redis outage."""
        while True:
            try:
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(self._channel, self._reply_channel)
                async for message in self._pubsub.listen():
                    self._on_message(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed("subscribe", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await self._pubsub.aclose()

    def _seal(self, body: dict[str, Any]) -> bytes:
        payload = msgspec.json.encode(body)
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode() + b"." + payload

    def _open(self, data: Any) -> dict[str, Any] | None:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        mac, _, payload = raw.partition(b".")
        expected = hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(mac, expected):
            return None
        body: dict[str, Any] = msgspec.json.decode(payload)
        if abs(time.time() - float(body.get("at", 0))) > SIGNED_MESSAGE_TTL_S:
            return None  # an old message replayed into the channel
        return body

    def _on_message(self, message: dict[str, Any]) -> None:
        try:
            body = self._open(message["data"])
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            body = None
        if body is None:
            self._count_error("unsigned")
            log.warning("cluster: a message on %s without a valid signature was ignored", message.get("channel"))
            return
        if message["channel"] == self._reply_channel:
            future = self._pending.pop(int(body.get("id", 0)), None)
            if future is not None and not future.done():
                future.set_result(body)
        else:
            self._spawn(self._serve(body))

    async def _serve(self, m: dict[str, Any]) -> None:
        try:
            result = await self._run_local(str(m["call_sid"]), Verb(m["verb"]), dict(m.get("args") or {}))
            reply = {"id": m["id"], "ok": True, "body": result}
        except ControlError as exc:
            reply = {"id": m["id"], "ok": False, "status": exc.status, "reason": exc.reason}
        except (ValueError, KeyError) as exc:
            reply = {"id": m.get("id"), "ok": False, "status": 400, "reason": str(exc)}
        try:
            await self._redis.publish(str(m["reply_to"]), self._seal({**reply, "at": time.time()}))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("reply", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for call_sid in list(self._infos):
            await self._unregister(call_sid)
        for task in (self._listener, self._refresher, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._listener, self._refresher, *self._tasks) if t is not None),
                             return_exceptions=True)
        await self._redis.aclose()
        await self._inner.aclose()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]
