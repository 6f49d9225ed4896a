"""Per-frame cost of every _fastpath function: compiled vs pure twin vs off-the-shelf pipeline.

Figures are ns per 20 ms frame of audio: calls carrying 100 ms are divided by 5 (marked "÷5"),
calls carrying no audio (mark/clear messages, ledger operations) are per call ("/call").
Each measurement times `number` back-to-back calls per repeat (chosen so a repeat takes ~30 ms
unless --number is given) and reports the median over --repeat repeats, plus min and the
relative spread (max - min) / median. The headline is CPU time (time.process_time_ns) because
the machine may be shared; wall time (time.perf_counter_ns) is secondary. Calibration doubles as
warm-up; the garbage collector is off while timing; setup (fresh resamplers, ledgers) is untimed.
The figures include the timing loop and the Python call itself (see "harness overhead").
"""
from __future__ import annotations

import argparse
import base64
import binascii
import gc
import importlib
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product, repeat
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson

from .report import RESULTS, environment, render_table, write_json

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

Body = Callable[[], None]
Maker = Callable[[int], Body]  # number -> body making `number` calls; the Maker's own work is untimed

MODULES = ("g711", "resample", "framing", "ledger")
IMPLS = ("compiled", "pure")

# ------------------------------------------------------------------------------ realistic inputs
STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
ITEM_ID = "item_CJ3ZqH0lTf8bDtoR2vmWq"
OTHER_ITEM_ID = "item_CJ3ZsW2nFqk1xUj9PzQ0e"
MARK_NAME = "3:1742"


def speech_like(ms: int, rate: int) -> bytes:
    """PCM16 LE: two tones plus noise (deterministic), so codecs see varied samples."""
    t = np.arange(rate * ms // 1000) / rate
    x = (6000 * np.sin(2 * np.pi * 220 * t) + 2500 * np.sin(2 * np.pi * 1270 * t)
         + np.random.default_rng(ms * rate).normal(0, 400, t.size))
    return x.astype("<i2").tobytes()


def twilio_media(ulaw: bytes) -> bytes:
    """Inbound Twilio ``media`` message, key order and types as the fast path assumes them
    (docs/protocols/twilio.md#what-the-fast-path-assumes)."""
    return orjson.dumps({
        "event": "media", "sequenceNumber": "4",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "5",
                  "payload": base64.b64encode(ulaw).decode()},
        "streamSid": STREAM_SID,
    })


def twilio_mark(name: str) -> bytes:
    """Mark echo from Twilio: key order of Twilio's example (docs/protocols/twilio.md#message-shapes)."""
    return orjson.dumps({"event": "mark", "sequenceNumber": "1234", "streamSid": STREAM_SID,
                         "mark": {"name": name}})


def audio_delta(audio: bytes) -> bytes:
    """``response.output_audio.delta`` as in docs/protocols/openai-realtime.md#response-events."""
    return orjson.dumps({
        "type": "response.output_audio.delta", "event_id": "event_CJ3ZrbYXNnU1ZYPqMz4aA",
        "response_id": "resp_CJ3ZqGx2YB8m0Rk7tLwVd", "item_id": ITEM_ID,
        "output_index": 0, "content_index": 0, "delta": base64.b64encode(audio).decode(),
    })


PCM8K_FRAME = speech_like(20, 8000)  # 320 B
ULAW_FRAME = audioop.lin2ulaw(PCM8K_FRAME, 2)  # 160 B
PCM24K_FRAME = speech_like(20, 24000)  # 960 B
ULAW_100MS = audioop.lin2ulaw(speech_like(100, 8000), 2)  # 800 B
PCM24K_100MS = speech_like(100, 24000)  # 4800 B
MEDIA_MSG = twilio_media(ULAW_FRAME)
MARK_MSG = twilio_mark(MARK_NAME)
DELTA_PCMU = audio_delta(ULAW_100MS)
DELTA_PCM16 = audio_delta(PCM24K_100MS)
assert len(orjson.loads(MEDIA_MSG)["media"]["payload"]) == 216

# ------------------------------------------------------------------------------ timing


def calls(setup: Callable[[], tuple[Any, ...]]) -> Maker:
    """Maker timing ``fn(*args)`` where ``setup() -> (fn, *args)`` runs untimed once per repeat
    (so stateful objects start fresh). Specialised by arity: ``fn(*args)`` would add ~10 ns."""
    def make(number: int) -> Body:
        fn, *args = setup()
        if len(args) == 1:
            (a,) = args

            def body() -> None:
                for _ in repeat(None, number):
                    fn(a)
        else:
            a, b = args

            def body() -> None:
                for _ in repeat(None, number):
                    fn(a, b)
        return body
    return make


def summary(samples: list[float]) -> dict[str, Any]:
    median = statistics.median(samples)
    return {"median": median, "min": min(samples), "max": max(samples),
            "spread": (max(samples) - min(samples)) / median, "samples": samples}


def calibrate(make: Maker, goal_ns: int) -> int:
    """Smallest-ish ``number`` whose body takes at least 2/3 of ``goal_ns`` (runs = warm-up)."""
    number = 1
    while True:
        body = make(number)
        t0 = time.perf_counter_ns()
        body()
        elapsed = time.perf_counter_ns() - t0
        if elapsed * 3 >= goal_ns * 2:
            return number
        number = max(number * 2, min(number * 10, round(number * goal_ns / max(elapsed, 1))))


def measure(make: Maker, divisor: float, opts: SimpleNamespace) -> dict[str, Any]:
    """CPU and wall ns per frame (or per call) of the calls ``make`` produces."""
    if opts.number:
        number = opts.number
        make(number)()  # warm-up
    else:
        number = calibrate(make, opts.goal_ns)
    cpu, wall = [], []
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(opts.repeat):
            body = make(number)
            w0 = time.perf_counter_ns()
            c0 = time.process_time_ns()
            body()
            c1 = time.process_time_ns()
            w1 = time.perf_counter_ns()
            cpu.append((c1 - c0) / number / divisor)
            wall.append((w1 - w0) / number / divisor)
    finally:
        if gc_enabled:
            gc.enable()
    return {"number": number, "repeat": opts.repeat, "cpu_ns": summary(cpu), "wall_ns": summary(wall)}


# ------------------------------------------------------------------------------ off-the-shelf parts
CODECS = {  # name -> (decode str/bytes -> bytes, encode bytes -> str for orjson)
    "base64": (base64.b64decode, lambda b: base64.b64encode(b).decode("ascii")),
    "binascii": (binascii.a2b_base64, lambda b: binascii.b2a_base64(b, newline=False).decode("ascii")),
}
try:  # optional (not a dependency): imported by name, so the type checker does not require it
    pybase64 = importlib.import_module("pybase64")
except ImportError:
    pass
else:
    CODECS["pybase64"] = (pybase64.b64decode, lambda b: pybase64.b64encode(b).decode("ascii"))


def ratecv(src: int, dst: int) -> Callable[[bytes], bytes]:
    """Streaming ``audioop.ratecv`` with its state carried from frame to frame."""
    state = None

    def process(pcm: bytes) -> bytes:
        nonlocal state
        out, state = audioop.ratecv(pcm, 2, 1, src, dst, state)
        return out
    return process


RESAMPLERS = {"audioop.ratecv": ratecv}
try:  # optional (not a dependency): imported by name, so the type checker does not require it
    soxr = importlib.import_module("soxr")
except ImportError:
    pass
else:
    def soxr_stream(src: int, dst: int) -> Callable[[bytes], bytes]:
        """soxr streaming resampler (default quality) on int16 samples."""
        stream = soxr.ResampleStream(src, dst, 1, dtype="int16")
        return lambda pcm: stream.resample_chunk(np.frombuffer(pcm, "<i2")).tobytes()
    RESAMPLERS["soxr"] = soxr_stream


def pipelines(prefix: str, build: Callable[[SimpleNamespace], Callable[..., Any]], *args: Any,
              codec: bool = False, rates: tuple[int, int] | None = None) -> dict[str, Maker]:
    """One baseline per available base64 codec and/or resampler.

    ``build(kit)`` returns the pipeline function; ``kit`` has ``dec``/``enc`` (base64) and
    ``resample`` (a fresh streaming resampler per repeat when ``rates`` is given).
    """
    codecs = CODECS.items() if codec else [(None, (None, None))]
    resamplers = RESAMPLERS.items() if rates else [(None, None)]
    out = {}
    for (cname, (dec, enc)), (rname, resampler) in product(codecs, resamplers):
        def setup(dec=dec, enc=enc, resampler=resampler) -> tuple[Any, ...]:
            kit = SimpleNamespace(dec=dec, enc=enc, resample=resampler(*rates) if resampler and rates else None)
            return (build(kit), *args)
        out["+".join(filter(None, (prefix, cname, rname)))] = calls(setup)
    return out


def _decode_media(k):
    def run(msg):
        d = orjson.loads(msg)
        if d["event"] == "media":
            return k.dec(d["media"]["payload"])
        return None
    return run


def _decode_mark(msg, sid):
    d = orjson.loads(msg)
    if d["event"] == "mark":
        if d["streamSid"] != sid:
            raise ValueError("streamSid")
        return d["mark"]["name"]
    return None


def _media_to_append_not_media(msg):
    """What a fallback full parse costs on a message that is not media (orjson, no audio)."""
    d = orjson.loads(msg)
    return None if d["event"] != "media" else d


def _gateway_parse():
    """Today's reading of a mark echo: the gateway's typed msgspec decode (imported lazily, so
    the bench does not load the gateway unless the case runs)."""
    from gateway.twilio.events import parse
    return parse


def _decode_delta(k):
    def run(msg):
        d = orjson.loads(msg)
        if d["type"] == "response.output_audio.delta":
            return d["item_id"], d["content_index"], k.dec(d["delta"])
        return None
    return run


def _media_to_append(k):
    def run(msg):
        d = orjson.loads(msg)
        if d["event"] == "media":
            return orjson.dumps({"type": "input_audio_buffer.append",
                                 "audio": k.enc(k.dec(d["media"]["payload"]))})
        return None
    return run


def _media_to_append_transcoding(k):
    def run(msg):
        d = orjson.loads(msg)
        if d["event"] == "media":
            pcm = k.resample(audioop.ulaw2lin(k.dec(d["media"]["payload"]), 2))
            return orjson.dumps({"type": "input_audio_buffer.append", "audio": k.enc(pcm)})
        return None
    return run


def _pcmu_to_append(k):
    return lambda ulaw: orjson.dumps({"type": "input_audio_buffer.append",
                                      "audio": k.enc(k.resample(audioop.ulaw2lin(ulaw, 2)))})


def _delta_to_pcmu(k):
    def run(msg):
        d = orjson.loads(msg)
        if d["type"] == "response.output_audio.delta":
            pcm = k.dec(d["delta"])
            return d["item_id"], d["content_index"], audioop.lin2ulaw(k.resample(pcm), 2), len(pcm)
        return None
    return run


# ------------------------------------------------------------------------------ ledger workloads
SEND_S = 0.05  # a 100 ms (800 B) chunk every 50 ms: OpenAI produces faster than real time


def _ledger_queue(m) -> Maker:
    def make(number: int) -> Body:
        queue = m.ledger.PlayoutLedger().queue
        times = [i * SEND_S for i in range(number)]

        def body() -> None:
            for now in times:
                queue(ITEM_ID, 0, 800, 100.0, now)
        return body
    return make


def _ledger_on_mark(m) -> Maker:
    """Steady state: every mark was queued (untimed) and is echoed in order when its audio played
    (latency 50 ms each way, so every echo agrees with the playhead estimate)."""
    def make(number: int) -> Body:
        ledger = m.ledger.PlayoutLedger()
        names = [ledger.queue(ITEM_ID, 0, 800, 100.0, i * SEND_S) for i in range(number)]
        echoes = [0.1 + 0.1 * (i + 1) for i in range(number)]
        on_mark = ledger.on_mark

        def body() -> None:
            for name, now in zip(names, echoes, strict=True):
                on_mark(name, now)
        return body
    return make


def _ledger_with_pending(m) -> tuple[Any, ...]:
    """Two items of 6 chunks each, the first two marks echoed: 10 marks pending."""
    ledger = m.ledger.PlayoutLedger()
    names = [ledger.queue(item, 0, 800, 100.0, i * SEND_S)
             for i, item in enumerate([ITEM_ID] * 6 + [OTHER_ITEM_ID] * 6)]
    for i, name in enumerate(names[:2]):
        ledger.on_mark(name, 0.1 + 0.1 * (i + 1))
    return ledger.plan_interrupt, 0.35


# ------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Target:
    label: str
    short: str
    max_ns: float | None = None  # compiled CPU ns per frame (or per call)
    min_speedup: float | None = None  # off-the-shelf / compiled

    def met(self, compiled_ns: float, speedup: float | None) -> bool:
        if self.max_ns is not None:
            return compiled_ns <= self.max_ns
        if self.min_speedup is not None:
            return speedup is not None and speedup >= self.min_speedup
        raise ValueError(f"target {self.label!r} sets neither max_ns nor min_speedup")


PASSTHROUGH = Target("Twilio media -> append, passthrough <= 500 ns CPU/frame", "<=500 ns", max_ns=500)
TRANSCODING = Target("Twilio media -> append, transcoding <= 3000 ns CPU/frame", "<=3000 ns", max_ns=3000)
LEDGER = Target("ledger operations <= 200 ns CPU/call", "<=200 ns", max_ns=200)
COMPOSITE = Target("every composite >= 2x faster than off-the-shelf", ">=2x ots", min_speedup=2)
TARGETS = (PASSTHROUGH, TRANSCODING, LEDGER, COMPOSITE)


@dataclass(frozen=True)
class Case:
    label: str
    function: str  # public _fastpath name
    fastpath: Callable[[SimpleNamespace], Maker]  # applied to the compiled and to the pure modules
    baselines: dict[str, Maker]
    frames: float | None = 1  # 20 ms frames per call; None: no audio, figures are per call
    targets: tuple[Target, ...] = ()

    @property
    def name(self) -> str:
        if self.frames is None:
            return f"{self.label} /call"
        return self.label if self.frames == 1 else f"{self.label} ÷{self.frames:g}"


def _resampler(m, src: int, dst: int):
    return m.resample.Resampler(src, dst)


CASES = (
    Case("ulaw_decode 160 B", "ulaw_decode",
         lambda m: calls(lambda: (m.g711.ulaw_decode, ULAW_FRAME)),
         {"audioop.ulaw2lin": calls(lambda: (audioop.ulaw2lin, ULAW_FRAME, 2))}),
    Case("ulaw_encode 320 B", "ulaw_encode",
         lambda m: calls(lambda: (m.g711.ulaw_encode, PCM8K_FRAME)),
         {"audioop.lin2ulaw": calls(lambda: (audioop.lin2ulaw, PCM8K_FRAME, 2))}),
    Case("Resampler(8000,24000).process 320 B", "Resampler.process",
         lambda m: calls(lambda: (_resampler(m, 8000, 24000).process, PCM8K_FRAME)),
         pipelines("", lambda k: k.resample, PCM8K_FRAME, rates=(8000, 24000))),
    Case("Resampler(24000,8000).process 960 B", "Resampler.process",
         lambda m: calls(lambda: (_resampler(m, 24000, 8000).process, PCM24K_FRAME)),
         pipelines("", lambda k: k.resample, PCM24K_FRAME, rates=(24000, 8000))),
    Case("decode_media (Twilio media 160 B)", "decode_media",
         lambda m: calls(lambda: (m.framing.decode_media, MEDIA_MSG)),
         pipelines("orjson", _decode_media, MEDIA_MSG, codec=True)),
    Case("decode_mark (Twilio mark echo)", "decode_mark",
         lambda m: calls(lambda: (m.framing.decode_mark, MARK_MSG, STREAM_SID)),
         {"orjson+dict": calls(lambda: (_decode_mark, MARK_MSG, STREAM_SID)),
          "msgspec events.parse": calls(lambda: (_gateway_parse(), MARK_MSG, STREAM_SID))},
         frames=None),
    Case("decode_mark (Twilio media -> None)", "decode_mark",
         lambda m: calls(lambda: (m.framing.decode_mark, MEDIA_MSG, STREAM_SID)),
         {"orjson+dict": calls(lambda: (_decode_mark, MEDIA_MSG, STREAM_SID))},
         frames=None),
    Case("media_to_append (Twilio mark echo -> None)", "media_to_append",
         lambda m: calls(lambda: (m.framing.media_to_append, MARK_MSG)),
         {"orjson+dict": calls(lambda: (_media_to_append_not_media, MARK_MSG))},
         frames=None),
    Case("encode_media 800 B", "encode_media",
         lambda m: calls(lambda: (m.framing.encode_media, STREAM_SID, ULAW_100MS)),
         pipelines("orjson", lambda k: lambda sid, audio: orjson.dumps(
             {"event": "media", "streamSid": sid, "media": {"payload": k.enc(audio)}}),
             STREAM_SID, ULAW_100MS, codec=True),
         frames=5),
    Case("encode_mark", "encode_mark",
         lambda m: calls(lambda: (m.framing.encode_mark, STREAM_SID, MARK_NAME)),
         {"orjson": calls(lambda: (lambda sid, name: orjson.dumps(
             {"event": "mark", "streamSid": sid, "mark": {"name": name}}), STREAM_SID, MARK_NAME))},
         frames=None),
    Case("encode_clear", "encode_clear",
         lambda m: calls(lambda: (m.framing.encode_clear, STREAM_SID)),
         {"orjson": calls(lambda: (lambda sid: orjson.dumps({"event": "clear", "streamSid": sid}),
                                   STREAM_SID))},
         frames=None),
    Case("encode_append 160 B", "encode_append",
         lambda m: calls(lambda: (m.framing.encode_append, ULAW_FRAME)),
         pipelines("orjson", lambda k: lambda audio: orjson.dumps(
             {"type": "input_audio_buffer.append", "audio": k.enc(audio)}), ULAW_FRAME, codec=True)),
    Case("decode_audio_delta pcmu 800 B", "decode_audio_delta",
         lambda m: calls(lambda: (m.framing.decode_audio_delta, DELTA_PCMU)),
         pipelines("orjson", _decode_delta, DELTA_PCMU, codec=True), frames=5),
    Case("decode_audio_delta pcm16 4800 B", "decode_audio_delta",
         lambda m: calls(lambda: (m.framing.decode_audio_delta, DELTA_PCM16)),
         pipelines("orjson", _decode_delta, DELTA_PCM16, codec=True), frames=5),
    Case("media_to_append passthrough", "media_to_append",
         lambda m: calls(lambda: (m.framing.media_to_append, MEDIA_MSG)),
         pipelines("orjson", _media_to_append, MEDIA_MSG, codec=True),
         targets=(PASSTHROUGH, COMPOSITE)),
    Case("media_to_append transcoding", "media_to_append",
         lambda m: calls(lambda: (m.framing.media_to_append, MEDIA_MSG, _resampler(m, 8000, 24000))),
         pipelines("orjson+ulaw2lin", _media_to_append_transcoding, MEDIA_MSG, codec=True,
                   rates=(8000, 24000)),
         targets=(TRANSCODING, COMPOSITE)),
    Case("pcmu_to_append 160 B", "pcmu_to_append",
         lambda m: calls(lambda: (m.framing.pcmu_to_append, ULAW_FRAME, _resampler(m, 8000, 24000))),
         pipelines("orjson+ulaw2lin", _pcmu_to_append, ULAW_FRAME, codec=True, rates=(8000, 24000)),
         targets=(COMPOSITE,)),
    Case("delta_to_pcmu pcm16 4800 B", "delta_to_pcmu",
         lambda m: calls(lambda: (m.framing.delta_to_pcmu, DELTA_PCM16, _resampler(m, 24000, 8000))),
         pipelines("orjson+lin2ulaw", _delta_to_pcmu, DELTA_PCM16, codec=True, rates=(24000, 8000)),
         frames=5, targets=(COMPOSITE,)),
    Case("PlayoutLedger.queue", "PlayoutLedger.queue", _ledger_queue, {}, frames=None,
         targets=(LEDGER,)),
    Case("PlayoutLedger.on_mark", "PlayoutLedger.on_mark", _ledger_on_mark, {}, frames=None,
         targets=(LEDGER,)),
    Case("PlayoutLedger.plan_interrupt 10 pending", "PlayoutLedger.plan_interrupt",
         lambda m: calls(lambda: _ledger_with_pending(m)), {}, frames=None, targets=(LEDGER,)),
)


# ------------------------------------------------------------------------------ command


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=_positive,
                        help="timed repeats per measurement (default 7, --quick 3)")
    parser.add_argument("--number", type=_positive,
                        help="calls per repeat (default: adaptive, ~30 ms per repeat, --quick ~1.5 ms)")
    parser.add_argument("--out", default=RESULTS / "fastpath.json",
                        help="JSON output path (default: bench/results/fastpath.json)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny counts (smoke test; the figures are not meaningful)")


def load(impl: str) -> SimpleNamespace:
    """The submodules of ``_fastpath._<impl>`` (the package aggregators are not needed)."""
    return SimpleNamespace(**{m: importlib.import_module(f"_fastpath._{impl}.{m}") for m in MODULES})


def figure(result: dict[str, Any], key: str, clock: str = "cpu_ns", field: str = "median") -> float:
    """One figure of a case result; ``key`` is an implementation or baseline name."""
    measurement = result[key] if key in IMPLS else result["baselines"][key]
    value: float = measurement[clock][field]
    return value


def stat(result: dict[str, Any], key: str | None, clock: str = "cpu_ns", field: str = "median") -> float | None:
    """``figure``, None when there is no such implementation or baseline (``key`` None: n/a)."""
    return None if key is None else figure(result, key, clock, field)


def run_case(case: Case, impls: dict[str, SimpleNamespace], opts: SimpleNamespace) -> dict[str, Any]:
    divisor = case.frames or 1
    result: dict[str, Any] = {"name": case.name, "function": case.function, "frames_per_call": case.frames,
                              "targets": [t.label for t in case.targets]}
    for impl, modules in impls.items():
        result[impl] = measure(case.fastpath(modules), divisor, opts)
    result["baselines"] = {name: measure(make, divisor, opts) for name, make in case.baselines.items()}
    best = min(result["baselines"], key=lambda name: figure(result, name), default=None)
    compiled = figure(result, "compiled")
    speedup = figure(result, best) / compiled if best else None
    result.update(off_the_shelf=best, speedup_vs_pure=figure(result, "pure") / compiled,
                  speedup_vs_off_the_shelf=speedup,
                  met=all(t.met(compiled, speedup) for t in case.targets) if case.targets else None)
    return result


def verdicts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per target over every case that carries it."""
    out = []
    for target in TARGETS:
        hits = [r for case, r in zip(CASES, results, strict=True) if target in case.targets]
        if target.max_ns is not None:
            detail = ", ".join(f"{r['name']} {_ns(stat(r, 'compiled'))} ns" for r in hits)
        else:
            detail = ", ".join(f"{r['name']} {_ratio(r['speedup_vs_off_the_shelf'])}" for r in hits)
        met = all(target.met(figure(r, "compiled"), r["speedup_vs_off_the_shelf"]) for r in hits)
        out.append({"target": target.label, "met": met, "detail": detail})
    return out


def _ns(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.1f}" if x < 10 else f"{x:,.0f}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}x"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def print_report(results: list[dict[str, Any]], checks: list[dict[str, Any]], repeat: int) -> None:
    rows = [[r["name"], _ns(stat(r, "compiled")), _ns(stat(r, "pure")),
             _ns(stat(r, r["off_the_shelf"])), _ratio(r["speedup_vs_pure"]),
             _ratio(r["speedup_vs_off_the_shelf"]), ", ".join(t.short for t in case.targets),
             "" if r["met"] is None else ("yes" if r["met"] else "NO")]
            for case, r in zip(CASES, results, strict=True)]
    print(f"\nCPU ns per 20 ms frame, median of {repeat} repeats "
          "(÷5: 100 ms of audio per call, figure divided by 5; /call: no audio, per call)")
    print(render_table(["function", "compiled", "pure", "off-the-shelf", "compiled/pure",
                        "compiled vs ots", "target", "met?"], rows, align="lrrrrrll"))

    rows = [[r["name"], _ns(stat(r, "compiled", "wall_ns")), _ns(stat(r, "pure", "wall_ns")),
             _ns(stat(r, r["off_the_shelf"], "wall_ns")), _ns(stat(r, "compiled", field="min")),
             _pct(stat(r, "compiled", field="spread")), _pct(stat(r, "pure", field="spread")),
             _pct(stat(r, r["off_the_shelf"], field="spread")), r["off_the_shelf"] or "n/a"]
            for r in results]
    print("\nSecondary: wall ns (median), compiled CPU min, CPU spread (max - min) / median, "
          "fastest off-the-shelf pipeline")
    print(render_table(["function", "wall compiled", "wall pure", "wall ots", "cpu min compiled",
                        "spread c", "spread p", "spread ots", "off-the-shelf used"],
                       rows, align="lrrrrrrrl"))
    print()
    for v in checks:
        print(f"{'MET    ' if v['met'] else 'NOT MET'}  {v['target']}: {v['detail']}")


def run(args: argparse.Namespace) -> int:
    opts = SimpleNamespace(repeat=args.repeat or (3 if args.quick else 7), number=args.number,
                           goal_ns=1_500_000 if args.quick else 30_000_000, quick=args.quick)
    impls = {impl: load(impl) for impl in IMPLS}
    env = environment()
    print(f"bench fastpath: {env['cpu_model']}, {env['cpu_count']} cores, Python {env['python']}, "
          f"load average {env['load_average']}; repeat={opts.repeat}, "
          f"number={opts.number or 'adaptive'}{' (quick)' if opts.quick else ''}", flush=True)
    optional = {"soxr": "soxr" in RESAMPLERS, "pybase64": "pybase64" in CODECS}
    print("optional baselines: " + ", ".join(
        f"{name} {'used' if found else 'not importable, skipped'}" for name, found in optional.items()))
    overhead = measure(calls(lambda: (id, None)), 1, opts)
    print(f"harness overhead (timing loop + one trivial builtin call): "
          f"{_ns(overhead['cpu_ns']['median'])} ns CPU/call, included in every figure", flush=True)

    results = []
    for i, case in enumerate(CASES, 1):
        r = run_case(case, impls, opts)
        results.append(r)
        print(f"[{i:2}/{len(CASES)}] {case.name:<46} compiled {_ns(stat(r, 'compiled')):>7}  "
              f"pure {_ns(stat(r, 'pure')):>8}  off-the-shelf {_ns(stat(r, r['off_the_shelf'])):>7}  "
              f"ns CPU  ({r['off_the_shelf'] or 'no baseline'})", flush=True)

    checks = verdicts(results)
    print_report(results, checks, opts.repeat)
    path = write_json(args.out, {
        "benchmark": "fastpath",
        "unit": "ns per 20 ms frame (per call where frames_per_call is null)",
        "headline": "cpu_ns (time.process_time_ns); wall_ns (time.perf_counter_ns) is secondary",
        "spread": "(max - min) / median over the repeats",
        "options": {"repeat": opts.repeat, "number": opts.number, "goal_ns": opts.goal_ns,
                    "quick": opts.quick, "out": str(args.out)},
        "environment": env,
        "optional_baselines": optional,
        "harness_overhead": overhead,
        "cases": results,
        "verdicts": checks,
    })
    print(f"\nwrote {path}")
    return 0
