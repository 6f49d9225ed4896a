"""Child processes of ``python -m bench load``: the OpenAI simulator and the Twilio load generators.

    python -m bench.loadsim openai CONFIG.json OUT.json
    python -m bench.loadsim twilio PLAN.json OUT.json

Each runs the project's simulator (``gateway.sim``) on uvloop in its own process, instrumented
with a few system-wide ``time.monotonic()`` stamps (CLOCK_MONOTONIC, comparable across
processes) and CRCs instead of raw audio, so records of thousands of calls stay small:

* Twilio side, per call: send time and running CRC-32 of every caller frame; per outbound
  ``media`` received: arrival time, CRC-32 and the first ``FP_BYTES`` bytes of its audio (enough
  to locate it inside the assistant item it came from), size, bytes played; arrival time of
  every ``clear``.
* OpenAI side, per session: arrival time and cumulative size of every append and the CRC-32 of
  all appended audio; send time, item and byte offset of every audio delta; send time of every
  ``speech_started``; items (their audio is rebuilt from the simulator's deterministic bank),
  truncates, cancels, errors, violations.

Both also count every message they exchange with the system under test, by kind (``counts``):
Twilio side, what it wrote (caller ``media``, ``mark`` echoes, anything else: ``connected``,
``start``, ``stop``) and what it received (``media``, ``mark``, ``clear``, anything else); OpenAI
side, what it received (``input_audio_buffer.append``, any other client event) and what it sent
(``response.output_audio.delta``, any other server event).

Control over stdin/stdout, one JSON object per line. The child prints ``{"ready": ...}`` once
listening (OpenAI) or loaded (Twilio). Twilio then waits for ``go <T0>`` (T0 on CLOCK_MONOTONIC;
call start offsets are relative to it), prints ``{"status": ...}`` every second and, when every
call is over, writes OUT.json and prints ``{"done": true}``. The OpenAI child waits for ``dump``,
stops, writes OUT.json and prints ``{"done": true}``. Either answers ``counts`` at any time with
``{"counts": {...}}``: the messages counted so far (the bench reads them at both edges of the
measurement window). EOF on stdin (the parent died) ends either child at once.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import os
import sys
import time
import zlib
from array import array
from dataclasses import fields
from typing import Any

import orjson

FP_BYTES = 48  # audio bytes kept per outbound media message (three 16-byte locator windows)
LOOP_OFFSET = [0.0]  # this process's loop.time() - time.monotonic(), set once the loop runs
# Messages between this Twilio process and the system under test, by kind (``twilio_counts``):
TW_SENT_MARK, TW_SENT_OTHER, TW_GOT_MEDIA, TW_GOT_MARK, TW_GOT_CLEAR, TW_GOT_OTHER = range(6)
TW_COUNTS = [0] * 6  # media sent is CallRecord.media_sent (summed at read time)
_TW_GOT = {"media": TW_GOT_MEDIA, "mark": TW_GOT_MARK, "clear": TW_GOT_CLEAR}
_monotonic = time.monotonic
_crc32 = zlib.crc32


def pack(arr: array[Any] | bytes | bytearray) -> str:
    """Arrays travel as base64 of their machine representation (see ``unpack``)."""
    return base64.b64encode(arr if isinstance(arr, (bytes, bytearray)) else arr.tobytes()).decode()


def unpack(text: str, typecode: str) -> array[Any]:
    out: array[Any] = array(typecode)
    out.frombytes(base64.b64decode(text))
    return out


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _read_json(path: str) -> Any:
    with open(path, "rb") as f:
        return orjson.loads(f.read())


def _write_json(path: str, obj: Any) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps(obj))


async def _watch_stdin(reader: asyncio.StreamReader, lines: asyncio.Queue[str]) -> None:
    """Forward stdin lines; on EOF (the bench process is gone) exit at once."""
    while True:
        line = await reader.readline()
        if not line:
            os._exit(3)
        await lines.put(line.decode().strip())


# ==================================================================================== OpenAI side

def _openai_classes():
    from gateway.sim import openai_sim
    from gateway.sim.openai_sim import OpenAIRealtimeSim, SimSession

    class BenchSession(SimSession):
        """A simulator session with precise stamps on appends, deltas and speech_started."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.b_app_t = array("d")
            self.b_app_cum = array("q")
            self.b_crc = 0
            self.b_d_item = array("i")
            self.b_d_off = array("i")
            self.b_d_n = array("i")
            self.b_d_t = array("d")
            self.b_d_lag = array("f")  # ms the delta was sent after its pacing slot (< 0: early)
            self.b_ss = array("d")
            self.b_trunc_t = array("d")  # arrival of each truncate (same order as self.truncates)
            self.b_item_index: dict[str, int] = {}

        def _on_append(self, audio_b64: str, event_id: str | None, now: float) -> None:
            t = _monotonic()
            before = self.append_bytes
            super()._on_append(audio_b64, event_id, now)
            if self.append_bytes != before:
                self.b_app_t.append(t)
                self.b_app_cum.append(self.append_bytes)
                self.b_crc = _crc32(binascii.a2b_base64(audio_b64), self.b_crc)

        def _send_audio_chunk(self, stream: Any) -> bool:
            item = stream.item
            off = item.delivered_bytes
            t = _monotonic()
            pacer = self._pacer
            assert pacer is not None  # the simulator is running
            due = stream.next_due - pacer.period  # _pump advanced it before calling us
            exhausted = super()._send_audio_chunk(stream)
            index = self.b_item_index.get(item.item_id)
            if index is None:
                index = next(i for i in range(len(self.assistant_items) - 1, -1, -1)
                             if self.assistant_items[i] is item)
                self.b_item_index[item.item_id] = index
            self.b_d_item.append(index)
            self.b_d_off.append(off)
            self.b_d_n.append(item.delivered_bytes - off)
            self.b_d_t.append(t)
            self.b_d_lag.append((t + LOOP_OFFSET[0] - due) * 1000.0)
            return exhausted

        def _speech_started(self, td: dict[str, Any]) -> None:
            self.b_ss.append(_monotonic())
            super()._speech_started(td)

        def export(self) -> dict[str, Any]:
            sid = None
            for event in self.client_events:
                event_id = event.event.get("event_id")
                if event.type == "session.update" and isinstance(event_id, str) and event_id.endswith(":session"):
                    sid = event_id[:-len(":session")]
                    break
            return {
                "index": self.index, "sid": sid, "input_format": self.input_format,
                "output_format": self.output_format,
                "append_t": pack(self.b_app_t), "append_cum": pack(self.b_app_cum),
                "append_count": self.append_count, "append_bytes": self.append_bytes, "input_crc": self.b_crc,
                "items": [[it.item_id, it.response_id, it.output_format, it._first_chunk, it.generated_bytes,
                           it.delivered_bytes, it.status, it.truncated_ms] for it in self.assistant_items],
                "delta_item": pack(self.b_d_item), "delta_off": pack(self.b_d_off), "delta_n": pack(self.b_d_n),
                "delta_t": pack(self.b_d_t), "delta_lag": pack(self.b_d_lag), "speech_started": pack(self.b_ss),
                "truncates": [[t.item_id, t.audio_end_ms, t.accepted, t.error] for t in self.truncates],
                "truncate_t": pack(self.b_trunc_t),
                "cancels": [[c.response_id, c.cancelled_response_id] for c in self.cancels],
                "errors": [[e.code, e.message[:200]] for e in self.errors], "error_count": self.error_count,
                "violations": self.violations[:20], "violation_count": self.violation_count,
                "responses": [[r.trigger, r.status, r.reason] for r in self.responses],
                "client_event_counts": self.client_event_counts,
                "client_closed": self.client_closed, "close_reason": self.close_reason,
            }

    def _on_truncate_stamped(session: SimSession, event: dict[str, Any], event_id: str | None, now: float) -> None:
        assert isinstance(session, BenchSession)  # this table is BenchSession's
        session.b_trunc_t.append(_monotonic())
        SimSession._on_truncate(session, event, event_id, now)

    # client events are dispatched through this table of plain functions
    BenchSession._HANDLERS = {**SimSession._HANDLERS, "conversation.item.truncate": _on_truncate_stamped}

    # The simulator builds sessions through this module-level name; in this child process only,
    # point it at the instrumented subclass. gateway.sim.openai_sim has no hook for a session
    # class, so this rebinds a class name on purpose, which mypy reports as [misc].
    openai_sim.SimSession = BenchSession  # type: ignore[misc]
    return OpenAIRealtimeSim, BenchSession


async def openai_main(config_path: str, out_path: str) -> None:
    from gateway.sim.openai_sim import OpenAISimConfig
    from gateway.sim.openai_tls import make_self_signed_tls

    config = _read_json(config_path)
    sim_cls, _ = _openai_classes()
    known = {f.name for f in fields(OpenAISimConfig)}
    sim_kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config["sim"].items()
                                  if k in known}
    sim = sim_cls(OpenAISimConfig(**sim_kwargs, record_audio=False, record_server_events=False))
    ssl_ctx, ca_file = make_self_signed_tls(config["tls_dir"]) if config["tls"] else (None, "")
    lines: asyncio.Queue[str] = asyncio.Queue()
    watcher = asyncio.ensure_future(_watch_stdin(await _stdin_reader(), lines))
    await _measure_loop_offset()
    url = await sim.start("127.0.0.1", 0, ssl_ctx)
    emit({"ready": True, "url": url, "ca_file": ca_file, "api_key": sim.config.api_key, "pid": os.getpid()})
    while (line := await lines.get()) != "dump":
        if line == "counts":
            emit({"counts": openai_counts(sim.sessions)})
    watcher.cancel()
    await sim.stop()
    cfg = sim.config
    out = {
        "bank": {"seed": cfg.seed, "chunk_ms": cfg.chunk_ms, "bank_s": cfg.bank_s},
        "rejected": [[r.status, r.path, r.reason] for r in sim.rejected],
        "sessions": [s.export() for s in sim.sessions],
    }
    _write_json(out_path, out)
    emit({"done": True})


def openai_counts(sessions: list[Any]) -> dict[str, int]:
    """Messages of every session so far: client events received (appends, others) and server events
    sent (audio deltas, others). Read from the sessions' own counters: nothing is added per message."""
    appends = other_in = deltas = sent = 0
    for s in sessions:
        appends += s.append_count
        other_in += sum(s.client_event_counts.values())
        deltas += len(s.b_d_t)
        sent += s._event_n  # every server event takes the next event number (deltas included)
    return {"append": appends, "client_other": other_in, "delta": deltas, "server_other": sent - deltas}


# ==================================================================================== Twilio side

def _twilio_classes():
    from gateway.sim.twilio_record import MarkEcho
    from gateway.sim.twilio_sim import TwilioCall, TwilioSim

    class BenchCall(TwilioCall):
        """A simulated call that stamps what it sends and fingerprints what it receives."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.f_t = array("d")  # send time of caller frame k
            self.f_crc = array("I")  # CRC-32 of caller frames 0..k
            self.f_lag = array("f")  # ms frame k was written after it was due (generator lateness)
            self._crc = 0
            self.frames_unverified = False  # a frame was dropped (gateway not reading): CRCs unusable
            self.c_t = array("d")  # arrival of outbound media message i (= record.heard[i])
            self.c_crc = array("I")
            self.c_fp = bytearray()  # FP_BYTES per message, zero-padded
            self.clear_t = array("d")
            self.sim_error: str | None = None

        def _flush(self, now: float) -> None:
            q = self._outq
            if not q or q[0][0] > now:
                super()._flush(now)
                return
            frames: list[tuple[float, bytes]] = []  # (due, caller frame) of the messages due now
            counts = TW_COUNTS
            for due, _data, tag, _binary in q:
                if due > now:
                    break
                if type(tag) is bytes:
                    frames.append((due, tag))
                elif type(tag) is MarkEcho:
                    counts[TW_SENT_MARK] += 1
                else:  # connected, start, stop, dtmf
                    counts[TW_SENT_OTHER] += 1
            rec = self.record
            sent = rec.media_sent
            t = _monotonic()
            super()._flush(now)
            if frames:
                if rec.media_sent - sent == len(frames):
                    crc = self._crc
                    lt = t + LOOP_OFFSET[0]
                    for due, frame in frames:
                        crc = _crc32(frame, crc)
                        self.f_t.append(t)
                        self.f_crc.append(crc)
                        self.f_lag.append((lt - due) * 1000.0)
                    self._crc = crc
                else:
                    self.frames_unverified = True

        def _on_message(self, data: bytes, binary: bool) -> None:
            t = _monotonic()
            heard = self.record.heard
            n = len(heard)
            super()._on_message(data, binary)
            TW_COUNTS[_TW_GOT.get(self.record.received[-1].event, TW_GOT_OTHER)] += 1  # type: ignore[arg-type]
            if len(heard) != n:
                audio = _payload(data)
                self.c_t.append(t)
                self.c_crc.append(_crc32(audio))
                self.c_fp += audio[:FP_BYTES].ljust(FP_BYTES, b"\0")
            elif not binary and len(data) < 200 and b'"clear"' in data:
                self.clear_t.append(t)

        def export(self, warmup: bool, loop_offset: float, phases: list[str]) -> dict[str, Any]:
            rec = self.record
            heard = rec.heard
            return {
                "sid": rec.call_sid, "warmup": warmup, "outcome": str(rec.outcome), "closed_by": rec.closed_by,
                "close_code": rec.close_code, "close_reason": rec.close_reason,
                "violations": [[c, d[:200]] for c, d in rec.violations[:20]], "violation_count": len(rec.violations),
                "late_sends": rec.late_sends, "max_lag_ms": rec.max_lag_ms, "media_sent": rec.media_sent,
                "caller_bytes_sent": rec.caller_bytes_sent, "frames_unverified": self.frames_unverified,
                "loop_offset": loop_offset, "stream_started_at": rec.stream_started_at, "ended_at": rec.ended_at,
                "frames_t": pack(self.f_t), "frames_crc": pack(self.f_crc), "frames_lag": pack(self.f_lag),
                "chunks_t": pack(self.c_t), "chunks_crc": pack(self.c_crc), "chunks_fp": pack(self.c_fp),
                "chunks_size": pack(array("i", [c.size for c in heard])),
                "chunks_played": pack(array("i", [c.played for c in heard])),
                "chunks_start": pack(array("d", [c.start_at if c.start_at is not None else float("nan")
                                                 for c in heard])),
                "clears_t": pack(self.clear_t),
                "clears": [[c.received_at, c.effect_at, c.bytes_dropped] for c in rec.clears],
                "turns": [[t.index, t.at, t.stream_ms, t.heard_ms] for t in rec.turns],
                "turn_phases": phases,  # the plan's phase of each turn (bench.loadplan.PHASES)
                "marks": len(rec.marks), "sim_error": self.sim_error,
            }

    class BenchTwilioSim(TwilioSim):
        def start_call(self, script: Any, call_sid: str | None = None) -> BenchCall:
            import random

            rng = random.Random(self._rng.getrandbits(64))
            call = BenchCall(self, script, call_sid or f"CA{rng.getrandbits(128):032x}", rng)
            # TwilioCall declares `task` as None (gateway/sim/twilio_sim.py, whose own start_call
            # does the same): drop this ignore once it is typed `asyncio.Task[CallRecord] | None`.
            call.task = asyncio.get_running_loop().create_task(call._run())  # type: ignore[assignment, unused-ignore]
            return call

    return BenchTwilioSim, BenchCall


def _payload(data: bytes) -> bytes:
    """The decoded audio of a media message already validated by the simulator."""
    i = data.find(b'"payload"')
    if i >= 0:
        start = data.index(b'"', data.index(b":", i + 9) + 1) + 1
        return binascii.a2b_base64(data[start:data.index(b'"', start)])
    return binascii.a2b_base64(orjson.loads(data)["media"]["payload"])


def build_script(spec: dict[str, Any]) -> Any:
    """A ``CallScript`` from the plan's compact form: turns are ``[kind, value_ms, speech_ms, phase]``
    with kind ``heard`` (barge in after hearing value_ms of the answer) or ``quiet`` (speak
    value_ms after the answer finished); the phase only labels the turn for the judge."""
    from gateway.sim.twilio_script import CallScript, Turn

    turns = []
    for kind, value, speech_ms, *_phase in spec.get("turns", ()):
        if kind == "heard":
            turns.append(Turn(after_heard_ms=value, speech_ms=speech_ms))
        else:
            turns.append(Turn(after_quiet_ms=value, speech_ms=speech_ms))
    return CallScript(duration_ms=int(spec["duration_ms"]), turns=tuple(turns))


async def twilio_main(plan_path: str, out_path: str) -> None:
    from gateway.sim.twilio_sim import TwilioSimConfig

    plan = _read_json(plan_path)
    sim_cls, _ = _twilio_classes()
    s = plan["sim"]
    sim = sim_cls(TwilioSimConfig(
        webhook_url=s["webhook_url"], connect_to=s["connect_to"], auth_token=s["auth_token"],
        latency_ms=s["latency_ms"], jitter_ms=s["jitter_ms"], seed=s["seed"], record_payloads=False,
        timeout_s=s.get("timeout_s", 30.0)))
    calls = plan["calls"]
    scripts = [build_script(c) for c in calls]
    lines: asyncio.Queue[str] = asyncio.Queue()
    watcher = asyncio.ensure_future(_watch_stdin(await _stdin_reader(), lines))
    loop = asyncio.get_running_loop()
    emit({"ready": True, "pid": os.getpid(), "calls": len(calls)})
    while True:
        line = await lines.get()
        if line.startswith("go "):
            t0 = float(line.split()[1])
            break
    await _measure_loop_offset()
    offset = LOOP_OFFSET[0]
    handles: list[Any] = [None] * len(calls)  # the BenchCall of each call once started
    all_started = loop.create_future()
    started = 0

    def start(i: int) -> None:
        nonlocal started
        handles[i] = sim.start_call(scripts[i], calls[i]["sid"])
        started += 1
        if started == len(calls) and not all_started.done():
            all_started.set_result(None)

    for i, call in enumerate(calls):
        loop.call_at(t0 + call["start"] + offset, start, i)
    if not calls:
        all_started.set_result(None)

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            up = ended = late = 0
            lag = 0.0
            for h in handles:
                if h is None:
                    continue
                rec = h.record
                if h.task.done():
                    ended += 1
                elif rec.stream_started_at is not None and rec.ended_at is None:
                    up += 1
                late += rec.late_sends
                lag = max(lag, rec.max_lag_ms)
            emit({"status": {"started": started, "up": up, "ended": ended, "late_sends": late,
                             "max_lag_ms": round(lag, 1)}})

    async def answer() -> None:
        while True:
            if await lines.get() == "counts":
                emit({"counts": twilio_counts(handles)})

    reporter = asyncio.ensure_future(report())
    answerer = asyncio.ensure_future(answer())
    await all_started
    results = await asyncio.gather(*(h.task for h in handles), return_exceptions=True)
    reporter.cancel()
    answerer.cancel()
    watcher.cancel()
    for h, result in zip(handles, results, strict=True):
        if isinstance(result, BaseException):
            h.sim_error = repr(result)[:300]
    await sim.close()
    out = {"calls": [h.export(c.get("warmup", False), offset, [t[3] if len(t) > 3 else t[0] for t in c["turns"]])
                     for h, c in zip(handles, calls, strict=True)]}
    _write_json(out_path, out)
    emit({"done": True})


def twilio_counts(handles: list[Any]) -> dict[str, int]:
    """Messages of every call so far: written to the system under test (caller media, mark echoes,
    others) and received from it (media, mark, clear, others)."""
    c = TW_COUNTS
    return {"media": sum(h.record.media_sent for h in handles if h is not None),
            "mark": c[TW_SENT_MARK], "other": c[TW_SENT_OTHER], "got_media": c[TW_GOT_MEDIA],
            "got_mark": c[TW_GOT_MARK], "got_clear": c[TW_GOT_CLEAR], "got_other": c[TW_GOT_OTHER]}


async def _measure_loop_offset() -> None:
    """loop.time() - CLOCK_MONOTONIC (uvloop's clock has 1 ms resolution: take the median)."""
    loop = asyncio.get_running_loop()
    samples = []
    for _ in range(5):
        await asyncio.sleep(0.002)
        samples.append(loop.time() - _monotonic())
    LOOP_OFFSET[0] = sorted(samples)[2]


def main(argv: list[str]) -> int:
    import gc

    import uvloop

    # Short-lived simulator processes: a full collection over hundreds of thousands of live
    # record objects stalls the loop for tens of ms and would be charged to the gateway's
    # latency; the few reference cycles they create can wait for the process to end.
    gc.disable()
    role, config_path, out_path = argv
    if role == "openai":
        uvloop.run(openai_main(config_path, out_path))
    elif role == "twilio":
        uvloop.run(twilio_main(config_path, out_path))
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
