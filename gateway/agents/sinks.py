"""Where call records go: a JSONL file per UTC day, and/or a signed POST to a webhook.

Neither may block the worker's loop or lose a record quietly: file appends run on one dedicated
thread (in order), webhook deliveries on a few tasks fed by a bounded queue, retried with
exponential backoff. Every record delivered, failed or dropped is counted
(``gateway_call_records_total{sink,result}``) and every failure logged.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .signing import HEADER, sign

log = logging.getLogger("gateway.records")
QUEUE_MAX = 1000  # records waiting for the webhook; beyond it the oldest is dropped (and counted)
SENDERS = 4
RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # backoff before each retry: ~30 s in all
TIMEOUT_S = 10.0
DRAIN_S = 5.0

Count = Callable[[str, str], None]  # (sink, result)


class RecordSinks:
    def __init__(self, directory: str, webhook: str, secret: str, count: Count) -> None:
        self._dir = Path(directory) if directory else None
        self._webhook = webhook
        self._secret = secret
        self._count = count
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="call-records") if self._dir else None
        self._queue: asyncio.Queue[bytes] | None = None
        self._senders: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._pending_files: set[asyncio.Future[None]] = set()

    @property
    def enabled(self) -> bool:
        return self._dir is not None or bool(self._webhook)

    def submit(self, record: dict[str, Any]) -> None:
        """Hand one record to every sink; returns at once."""
        if not self.enabled:
            return
        body = orjson.dumps(record)
        if self._dir is not None and self._writer is not None:
            day = time.strftime("%Y-%m-%d", time.gmtime(record.get("ended_at_unix") or time.time()))
            future = asyncio.get_running_loop().run_in_executor(self._writer, self._append, day, body)
            self._pending_files.add(future)
            future.add_done_callback(self._file_done)
        if self._webhook:
            self._enqueue(body)

    # ------------------------------------------------------------------ file
    def _append(self, day: str, body: bytes) -> None:
        assert self._dir is not None
        self._dir.mkdir(parents=True, exist_ok=True)
        with (self._dir / f"calls-{day}.jsonl").open("ab") as f:
            f.write(body + b"\n")

    def _file_done(self, future: asyncio.Future[None]) -> None:
        self._pending_files.discard(future)
        exc = future.exception() if not future.cancelled() else None
        if exc is not None:
            log.error("call record not written to %s: %s", self._dir, exc)
            self._count("file", "error")
        else:
            self._count("file", "ok")

    # ------------------------------------------------------------------ webhook
    def _enqueue(self, body: bytes) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE_MAX)
            self._senders = [asyncio.get_running_loop().create_task(self._send_loop()) for _ in range(SENDERS)]
        if self._queue.full():
            self._queue.get_nowait()
            log.error("call-record webhook backlog over %d records: the oldest was dropped", QUEUE_MAX)
            self._count("webhook", "dropped")
        self._queue.put_nowait(body)

    async def _send_loop(self) -> None:
        assert self._queue is not None
        while True:
            body = await self._queue.get()
            delivered = False
            try:
                delivered = await self._deliver(body)
            finally:
                self._count("webhook", "ok" if delivered else "error")
                self._queue.task_done()

    async def _deliver(self, body: bytes) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        reason = ""
        for attempt, backoff in enumerate((0.0, *RETRIES)):
            if backoff:
                await asyncio.sleep(backoff)
            headers = {"Content-Type": "application/json", HEADER: sign(self._secret, body)}
            try:
                async with self._session.post(self._webhook, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    reason = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break  # the receiver refuses this record: retrying will not help
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            log.warning("call-record webhook attempt %d failed: %s", attempt + 1, reason)
        log.error("call record not delivered to the webhook: %s", reason)
        return False

    async def flush(self) -> None:
        """Wait (bounded) until every record submitted so far is written and delivered or failed."""
        if self._pending_files:
            await asyncio.wait(set(self._pending_files), timeout=DRAIN_S)
        if self._queue is not None:  # join also waits for deliveries in flight
            try:
                await asyncio.wait_for(self._queue.join(), DRAIN_S)
            except TimeoutError:
                log.error("call records not delivered to the webhook yet (%d queued)", self._queue.qsize())

    async def aclose(self) -> None:
        """Finish what is in flight (bounded), then stop."""
        await self.flush()
        for task in self._senders:
            task.cancel()
        if self._senders:
            await asyncio.gather(*self._senders, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
