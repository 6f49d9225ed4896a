"""Verdicts and figures of a load run, from the two simulators' records only.

The rules are those of ``gateway.sim.harness.Stack.judge`` (every caller frame reaches the model
once and in order; what Twilio receives of each assistant item is a gap-free, byte-exact prefix of
it; every item the caller did not hear in full is truncated; truncation offset vs what the caller
heard; no violation or error on either side), applied to the compact records shipped back by
``bench.loadsim``: CRC-32s instead of audio, and the first bytes of each outbound media message to
locate it inside the assistant item it came from (items are unique noise). Latencies join
CLOCK_MONOTONIC stamps taken in the different processes.
"""
from __future__ import annotations

import bisect
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .loadplan import PHASES
from .loadsim import FP_BYTES, unpack

WINDOW = 16  # locator window (gateway.sim.truth.WINDOW)
TAIL_TOLERANCE_BYTES = 8 * 100  # caller audio still in flight when the call ends (harness: 100 ms)
UNDERRUN_SLACK_S = 0.002
TRUNCATE_TOLERANCE_MS = 20.0  # the truncation target: |audio_end_ms - heard| p99
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def stats(values_ms: Any) -> dict[str, Any]:
    """count, mean, p50/p90/p99/p99.9, min and max of a list of milliseconds (None when empty)."""
    a = np.asarray(values_ms, dtype=float)
    if a.size == 0:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "p999": None, "min": None, "max": None}
    q = np.quantile(a, QUANTILES)
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(q[0]), "p90": float(q[1]),
            "p99": float(q[2]), "p999": float(q[3]), "min": float(a.min()), "max": float(a.max())}


# ------------------------------------------------------------------------------- expected audio
class Items:
    """The μ-law each assistant item of a session should reach Twilio as, rebuilt from the bank."""

    def __init__(self, session: dict[str, Any], bank: dict[str, Any], transcode: bool) -> None:
        from gateway.sim.openai_audio import audio_bank

        self.ids, self.audio, self.status, self.truncated = [], [], [], []
        for item_id, _resp, fmt, first_chunk, generated, _delivered, status, truncated_ms in session["items"]:
            self.ids.append(item_id)
            self.status.append(status)
            self.truncated.append(truncated_ms)
            if not fmt:
                self.audio.append(b"")
                continue
            raw = audio_bank(fmt, bank["seed"], bank["chunk_ms"], bank["bank_s"]).audio(first_chunk, generated)
            self.audio.append(_to_ulaw(raw, fmt) if transcode else raw)
        self._full: dict[bytes, tuple[int, int]] | None = None

    def index_full(self) -> dict[bytes, tuple[int, int]]:
        """Every 16-byte window of every item (built on first use: ~5 ms per 3 s item)."""
        if self._full is None:
            index: dict[bytes, tuple[int, int]] = {}
            for i, audio in enumerate(self.audio):
                for off in range(max(0, len(audio) - WINDOW + 1)):
                    index.setdefault(audio[off:off + WINDOW], (i, off))
            self._full = index
        return self._full

    def locate(self, fp: bytes, size: int, starts: dict[bytes, tuple[int, int]] | None) -> tuple[int, int] | None:
        """(item index, byte offset) of a media payload from its first bytes."""
        if starts is not None:
            hit = starts.get(fp[:WINDOW])
            if hit is not None:
                return hit
        index = self.index_full()
        usable = min(size, len(fp))
        for start in range(0, max(1, usable - WINDOW + 1), WINDOW):
            hit = index.get(fp[start:start + WINDOW])
            if hit is not None:
                return hit[0], hit[1] - start
        return None


def _to_ulaw(pcm24k: bytes, fmt: str) -> bytes:
    """``gateway.sim.truth.expected_ulaw`` with the compiled fast path when available (its twin
    is tested bit-identical to the pure one; the pure one takes ~30 ms per second of audio)."""
    if fmt == "audio/pcmu":
        return pcm24k
    import _fastpath

    if not _fastpath.COMPILED:
        from gateway.sim.truth import expected_ulaw

        return expected_ulaw(pcm24k, fmt)
    rs = _fastpath.Resampler(24000, 8000)
    return _fastpath.ulaw_encode(rs.process(pcm24k) + rs.flush())


def lead_ms(mode: str) -> float:
    if mode != "pcm16":
        return 0.0
    from _fastpath._pure.resample import Resampler

    return Resampler(24000, 8000).delay / 8.0


# ------------------------------------------------------------------------------- one call
@dataclass
class CallVerdict:
    sid: str
    problems: list[str] = field(default_factory=list)
    lat_in: list[float] = field(default_factory=list)  # ms, frames sent inside the window
    lat_out: list[float] = field(default_factory=list)
    # ms, the media messages that started a playback run at Twilio (its buffer was empty: the
    # caller was waiting for them): the outbound latency a caller can hear. Paced playout holds
    # the rest back on purpose, so only these say what it adds.
    lat_first: list[float] = field(default_factory=list)
    out_method: str = ""
    truncate_err: list[float] = field(default_factory=list)  # signed ms (audio_end_ms - heard)
    truncate_phase: list[str] = field(default_factory=list)  # the phase of the turn behind each (loadplan.PHASES)
    interrupt_ms: list[float] = field(default_factory=list)  # speech_started sent -> clear received
    stop_ms: list[float] = field(default_factory=list)  # caller speech start -> audio stopped (Twilio time)
    stop_phase: list[str] = field(default_factory=list)
    inbound_lost_bytes: int = 0
    inbound_lost_at_start_ms: float = 0.0  # caller frames dropped before the first one forwarded
    gaps: int = 0
    overlaps: int = 0
    unmatched: int = 0
    late_chunks: int = 0  # media of an item that arrived after a clear had cut that item
    late_played_ms: float = 0.0
    underruns: int = 0
    underrun_ms: float = 0.0
    clears: int = 0
    truncates: int = 0
    truncates_censored: int = 0  # issued too close to the hang-up for the truth to be known
    turns: int = 0
    responses: int = 0
    upstream_errors: Counter[str] = field(default_factory=Counter)
    gen_lag: list[float] = field(default_factory=list)  # Twilio sim: ms each caller frame was sent late (window)
    sim_lag: list[float] = field(default_factory=list)  # OpenAI sim: ms each delta was sent after its slot
    twilio_violations: int = 0
    upstream_violations: int = 0


def leading_frames_lost(frames_crc: Any, k: int, crc: int, max_frames: int = 500) -> int | None:
    """j if the model received exactly caller frames j .. j+k-1 (160 B each): the first j frames
    were dropped (a bridge that discards audio until its upstream session is open), else None.

    ``frames_crc[i]`` is the running CRC-32 of frames 0..i. CRC-32 is affine, so the CRC of frames
    j..j+k-1 alone is crc(0..j+k-1) ^ crc32(zeros(L), crc(0..j-1)) ^ crc32(zeros(L), 0), L = 160 k."""
    zeros = bytes(160 * k)
    base = zlib.crc32(zeros)
    for j in range(1, min(max_frames, len(frames_crc) - k) + 1):
        if frames_crc[j + k - 1] ^ zlib.crc32(zeros, frames_crc[j - 1]) ^ base == crc:
            return j
    return None


def judge_call(call: dict[str, Any], session: dict[str, Any] | None, bank: dict[str, Any], mode: str,
               window: tuple[float, float], lead: float, content_checks: bool = True,
               clear_reach_s: float = 0.05) -> CallVerdict:
    """``content_checks=False`` when the bridge resamples with another algorithm (naive pcm16):
    outbound audio cannot be located byte-wise, only counted. ``clear_reach_s``: the longest a
    ``clear`` takes to take effect at Twilio (simulated latency + jitter); a truncation issued later
    than that before the caller hung up has no ground truth (the hang-up, not the clear, ended
    playback) and is counted as censored instead of judged."""
    v = CallVerdict(call["sid"])
    problems = v.problems
    if call.get("sim_error"):
        problems.append(f"simulator error: {call['sim_error']}")
    if call["outcome"] != "completed":
        problems.append(f"call ended as {call['outcome']} ({call['close_code']} {call['close_reason']})")
    v.twilio_violations = call["violation_count"]
    problems.extend(f"twilio violation {code}: {detail}" for code, detail in call["violations"])
    v.turns = len(call["turns"])
    v.clears = len(call["clears"])
    if session is None:
        problems.append("no upstream session for this call")
        return v
    v.upstream_violations = session["violation_count"]
    problems.extend(f"upstream violation: {x}" for x in session["violations"])
    for code, _message in session["errors"]:
        v.upstream_errors[str(code)] += 1
    problems.extend(f"upstream error provoked: {code}: {message}" for code, message in session["errors"])
    v.responses = len(session["responses"])
    v.truncates = len(session["truncates"])
    w0, w1 = window

    # ---- inbound: every caller frame reaches the model once, in order
    frames_t = np.asarray(unpack(call["frames_t"], "d"))
    frames_crc = unpack(call["frames_crc"], "I")
    sent_bytes = call["caller_bytes_sent"]
    ratio = 6 if mode == "pcm16" else 1  # 24 kHz PCM16 bytes per 8 kHz μ-law byte
    got = session["append_bytes"] / ratio
    v.inbound_lost_bytes = max(0, int(sent_bytes - got))
    if mode == "passthrough":
        n = session["append_bytes"]
        if n > sent_bytes:
            problems.append(f"caller audio duplicated: {n} B upstream, {sent_bytes} B sent")
        elif n and not call["frames_unverified"]:
            k = n // 160
            if n % 160 or k == 0 or frames_crc[k - 1] != session["input_crc"]:
                skipped = leading_frames_lost(frames_crc, k, session["input_crc"]) if not n % 160 else None
                if skipped:
                    v.inbound_lost_at_start_ms = skipped * 20.0
                    problems.append(f"caller audio lost at the start: the first {skipped} frames "
                                    f"({skipped * 20} ms); the rest arrived in order")
                else:
                    problems.append("caller audio altered, reordered or duplicated on the way upstream")
        if sent_bytes - n > TAIL_TOLERANCE_BYTES:
            problems.append(f"caller audio lost: {sent_bytes - n} of {sent_bytes} bytes never arrived")
    elif abs(got - sent_bytes) > TAIL_TOLERANCE_BYTES:
        problems.append(f"caller audio length upstream {session['append_bytes']} B, expected ≈{sent_bytes * 6} B")
    lag = np.asarray(unpack(call.get("frames_lag", ""), "f"), dtype=float)
    if lag.size == frames_t.size:
        v.gen_lag = lag[(frames_t >= w0) & (frames_t <= w1)].tolist()
    app_t = np.asarray(unpack(session["append_t"], "d"))
    app_cum = np.asarray(unpack(session["append_cum"], "q"), dtype=float) / ratio
    if frames_t.size and app_t.size:
        need = 160.0 * np.arange(1, frames_t.size + 1) - (8 if ratio != 1 else 0)
        idx = np.searchsorted(app_cum, need, side="left")
        ok = (idx < app_t.size) & (frames_t >= w0) & (frames_t <= w1)
        v.lat_in = ((app_t[idx[ok]] - frames_t[ok]) * 1000.0).tolist()

    # ---- outbound
    chunks_t = unpack(call["chunks_t"], "d")
    sizes = unpack(call["chunks_size"], "i")
    played = unpack(call["chunks_played"], "i")
    starts_at = unpack(call["chunks_start"], "d")
    crcs = unpack(call["chunks_crc"], "I")
    fps = bytes(unpack(call["chunks_fp"], "B"))
    clears_t = sorted(unpack(call["clears_t"], "d"))
    d_item = unpack(session["delta_item"], "i")
    d_off = unpack(session["delta_off"], "i")
    d_t = unpack(session["delta_t"], "d")
    d_lag = unpack(session.get("delta_lag", ""), "f")
    if len(d_lag) == len(d_t):
        v.sim_lag = [x for x, t in zip(d_lag, d_t, strict=True) if w0 <= t <= w1]
    items = Items(session, bank, transcode=mode == "pcm16") if content_checks else None
    n_items = len(session["items"])
    received = [0] * n_items
    heard = [0] * n_items
    located: list[tuple[int, int] | None] = [None] * len(sizes)
    if items is not None:
        starts: dict[bytes, tuple[int, int]] | None = None
        if mode == "passthrough":  # passthrough forwards each delta as one media message
            starts = {}
            for it, off in zip(d_item, d_off, strict=True):
                audio = items.audio[it]
                starts.setdefault(audio[off:off + WINDOW], (it, off))
        prev: tuple[int, int, int, float] | None = None  # item, end offset, chunk index, end time
        first_t: dict[int, float] = {}  # arrival of each item's first media message
        for i, size in enumerate(sizes):
            fp = fps[i * FP_BYTES:(i + 1) * FP_BYTES]
            hit = items.locate(fp, size, starts)
            if hit is None:
                if size:
                    v.unmatched += 1
                prev = None
                continue
            it, off = hit
            located[i] = hit
            if mode == "passthrough" and zlib.crc32(items.audio[it][off:off + size]) != crcs[i]:
                problems.append(f"item {items.ids[it]}: audio at Twilio differs from what the model produced")
            if off > received[it]:
                v.gaps += 1
                problems.append(f"item {items.ids[it]}: chunk at offset {off} after {received[it]} B (gap)")
            elif off < received[it]:
                v.overlaps += 1
                problems.append(f"item {items.ids[it]}: chunk at offset {off} after {received[it]} B (duplicate)")
            received[it] = max(received[it], off + size)
            first = first_t.setdefault(it, chunks_t[i])
            if bisect.bisect_left(clears_t, chunks_t[i]) != bisect.bisect_left(clears_t, first):
                # a clear cut this item, yet more of it arrived afterwards: late audio of an
                # interrupted response (not counted as heard up to the truncation point)
                v.late_chunks += 1
                v.late_played_ms += played[i] / 8.0
            elif played[i] > 0:
                heard[it] = max(heard[it], off + played[i])
            start = starts_at[i]
            if prev is not None and prev[0] == it and prev[1] == off and not math.isnan(start):
                cleared_between = bisect.bisect_left(clears_t, chunks_t[i]) != bisect.bisect_left(
                    clears_t, chunks_t[prev[2]])
                if not cleared_between and start > prev[3] + UNDERRUN_SLACK_S:
                    v.underruns += 1
                    v.underrun_ms += (start - prev[3]) * 1000.0
            prev = (it, off + size, i, (start + size / 8000.0) if not math.isnan(start) else math.nan)
        if v.unmatched:
            problems.append(f"Twilio received {v.unmatched} media messages matching no assistant item")
        if v.late_played_ms:
            problems.append(f"late audio of an interrupted item played after the clear: {v.late_played_ms:.0f} ms "
                            f"({v.late_chunks} messages)")
        interrupted = {t[0] for t in session["truncates"]}
        ended_by_caller = call["closed_by"] == "twilio" or call["outcome"] == "dropped"
        for it in range(n_items):
            exp_len = len(items.audio[it])
            item_id = items.ids[it]
            if (items.status[it] == "completed" and item_id not in interrupted and not call["clears"]
                    and call["closed_by"] != "twilio" and received[it] < exp_len - 8 * 5):
                problems.append(f"item {item_id}: only {received[it]} of {exp_len} B reached Twilio")
            if received[it] and heard[it] < exp_len - 8 and item_id not in interrupted and not ended_by_caller:
                problems.append(f"item {item_id}: heard {heard[it] / 8:.0f} of {exp_len / 8:.0f} ms, never truncated")
        by_id = {item_id: i for i, item_id in enumerate(items.ids)}
        trunc_t = unpack(session.get("truncate_t", ""), "d")
        turn_t = [at - call["loop_offset"] for _i, at, _ms, _h in call["turns"]]  # CLOCK_MONOTONIC
        ended = (call["ended_at"] - call["loop_offset"]) if call["ended_at"] is not None else math.inf
        for k, (item_id, audio_end_ms, accepted, error) in enumerate(session["truncates"]):
            if not accepted:
                problems.append(f"truncate rejected: {error}")
            if k < len(trunc_t) and trunc_t[k] + clear_reach_s >= ended:
                v.truncates_censored += 1  # its clear could not reach Twilio before the caller hung up
                continue
            it = by_id.get(item_id)
            heard_ms = max(0.0, heard[it] / 8.0 - lead) if it is not None else 0.0
            v.truncate_err.append(audio_end_ms - heard_ms)
            # the barge-in behind it: the caller's latest turn started before the truncate arrived
            turn = bisect.bisect_right(turn_t, trunc_t[k]) - 1 if k < len(trunc_t) else -1
            v.truncate_phase.append(turn_phase(call, turn))
    else:
        for _item_id, _audio_end_ms, accepted, error in session["truncates"]:
            if not accepted:
                problems.append(f"truncate rejected: {error}")

    # ---- outbound latency: OpenAI sim sent the delta -> Twilio sim received its media message
    lat_out = []
    run_starts = playback_run_starts(starts_at, played)
    if items is not None and mode == "passthrough":
        v.out_method = "content"
        sent_at = {(it, off): t for it, off, t in zip(d_item, d_off, d_t, strict=True)}
        for i, hit in enumerate(located):
            if hit is not None and w0 <= chunks_t[i] <= w1:
                t = sent_at.get(hit)
                if t is not None:
                    lat_out.append((chunks_t[i] - t) * 1000.0)
                    if i in run_starts:
                        v.lat_first.append(lat_out[-1])
    elif items is not None:
        # pcm16: one media message per delta (the resampler tail of an item comes last): the
        # k-th message of an item, in item order, carries the k-th delta of that item.
        v.out_method = "item order"
        per_item: dict[int, list[float]] = {}
        for it, t in zip(d_item, d_t, strict=True):
            per_item.setdefault(it, []).append(t)
        seen: dict[int, list[tuple[int, int]]] = {}  # item -> [(byte offset, message index)]
        for i, hit in enumerate(located):
            if hit is not None:
                seen.setdefault(hit[0], []).append((hit[1], i))
        for it, messages in seen.items():
            messages.sort()  # by offset (ties: in arrival order)
            for k, (_off, i) in enumerate(messages):
                sends = per_item.get(it, ())
                if k < len(sends) and w0 <= chunks_t[i] <= w1 and chunks_t[i] >= sends[k]:
                    lat_out.append((chunks_t[i] - sends[k]) * 1000.0)
                    if i in run_starts:
                        v.lat_first.append(lat_out[-1])
    else:
        v.out_method = "session order"  # every delta forwarded, in order (naive bridge)
        if len(sizes) <= len(d_t):
            for i in range(len(sizes)):
                if w0 <= chunks_t[i] <= w1 and chunks_t[i] >= d_t[i]:
                    lat_out.append((chunks_t[i] - d_t[i]) * 1000.0)
                    if i in run_starts:
                        v.lat_first.append(lat_out[-1])
    v.lat_out = lat_out

    # ---- interrupt: speech_started sent by the model -> clear received by Twilio
    ss = sorted(unpack(session["speech_started"], "d"))
    for t in clears_t:
        k = bisect.bisect_right(ss, t) - 1
        if k >= 0 and t - ss[k] < 2.0:
            v.interrupt_ms.append((t - ss[k]) * 1000.0)
    for _received, effect_at, _dropped in call["clears"]:
        before = [k for k, (_i, at, _ms, _h) in enumerate(call["turns"]) if at <= effect_at]
        if before:
            v.stop_ms.append((effect_at - call["turns"][before[-1]][1]) * 1000.0)
            v.stop_phase.append(turn_phase(call, before[-1]))
    return v


def playback_run_starts(starts_at: Sequence[float], played: Sequence[int]) -> set[int]:
    """Indexes of the media messages that began playing on an idle Twilio buffer (Twilio time);
    one never played (cleared, or the caller hung up first) did not begin anything."""
    out = set()
    busy_until = -math.inf
    for i, start in enumerate(starts_at):
        if math.isnan(start) or played[i] <= 0:
            continue
        if start > busy_until + UNDERRUN_SLACK_S:
            out.add(i)
        busy_until = max(busy_until, start + played[i] / 8000.0)
    return out


def turn_phase(call: dict[str, Any], k: int) -> str:
    """The plan's phase (``bench.loadplan.PHASES``) of the call's k-th recorded turn; ``other`` if
    there is none (k < 0) or the plan did not label it."""
    if k < 0 or k >= len(call["turns"]):
        return "other"
    index = call["turns"][k][0]
    phases = call.get("turn_phases") or ()
    return phases[index] if index < len(phases) else "other"


def by_phase(values: list[float], phases: list[str], signed: bool = False) -> dict[str, Any]:
    """``stats`` per phase of ``loadplan.PHASES`` and ``other`` (values whose turn has no phase),
    every one present; with ``signed``: of the absolute values, plus their signed mean and how many
    were more than the truncation target (20 ms) short of or past the truth."""
    groups: dict[str, list[float]] = {phase: [] for phase in (*PHASES, "other")}
    for value, phase in zip(values, phases, strict=True):
        groups.setdefault(phase, []).append(value)
    out = {}
    for phase, group in groups.items():
        a = np.asarray(group, dtype=float)
        entry = stats(np.abs(a) if signed else a)
        if signed:
            entry["signed_mean"] = float(a.mean()) if a.size else None
            entry["short_over_20ms"] = int((a < -TRUNCATE_TOLERANCE_MS).sum())
            entry["past_over_20ms"] = int((a > TRUNCATE_TOLERANCE_MS).sum())
        out[phase] = entry
    return out


# ------------------------------------------------------------------------------- the whole run
def analyze(calls: list[dict[str, Any]], openai: dict[str, Any], mode: str, window: tuple[float, float],
            content_checks: bool = True, clear_reach_s: float = 0.05) -> dict[str, Any]:
    sessions = {s["sid"]: s for s in openai["sessions"] if s["sid"]}
    lead = lead_ms(mode)
    verdicts = [judge_call(c, sessions.get(c["sid"]), openai["bank"], mode, window, lead, content_checks,
                           clear_reach_s) for c in calls if not c["warmup"]]
    kinds: Counter[str] = Counter()
    examples: list[str] = []
    for v in verdicts:
        for p in v.problems:
            kinds[_kind(p)] += 1
            if len(examples) < 20:
                examples.append(f"{v.sid}: {p}")
    upstream_errors: Counter[str] = Counter()
    for v in verdicts:
        upstream_errors.update(v.upstream_errors)
    lat_in = np.concatenate([np.asarray(v.lat_in) for v in verdicts]) if verdicts else np.zeros(0)
    lat_out = np.concatenate([np.asarray(v.lat_out) for v in verdicts]) if verdicts else np.zeros(0)
    lat_first = np.concatenate([np.asarray(v.lat_first) for v in verdicts]) if verdicts else np.zeros(0)
    trunc = np.asarray([e for v in verdicts for e in v.truncate_err])
    trunc_phase = [p for v in verdicts for p in v.truncate_phase]
    interrupt = np.asarray([x for v in verdicts for x in v.interrupt_ms])
    stop = np.asarray([x for v in verdicts for x in v.stop_ms])
    stop_phase = [p for v in verdicts for p in v.stop_phase]
    failed = [v for v in verdicts if v.problems]
    late = sum(c["late_sends"] for c in calls if not c["warmup"])
    sent = sum(c["media_sent"] for c in calls if not c["warmup"])
    max_lag = max((c["max_lag_ms"] for c in calls if not c["warmup"]), default=0.0)
    gen_lag = np.concatenate([np.asarray(v.gen_lag) for v in verdicts]) if verdicts else np.zeros(0)
    sim_lag = np.concatenate([np.asarray(v.sim_lag) for v in verdicts]) if verdicts else np.zeros(0)
    outcomes = Counter(c["outcome"] for c in calls if not c["warmup"])
    return {
        "calls_judged": len(verdicts),
        "correctness": {
            "calls_ok": len(verdicts) - len(failed),
            "calls_with_problems": len(failed),
            "problem_kinds": dict(kinds.most_common()),
            "examples": examples,
            "outcomes": dict(outcomes),
            "inbound_lost_bytes_total": sum(v.inbound_lost_bytes for v in verdicts),
            "inbound_lost_calls_over_tolerance": sum(1 for v in verdicts
                                                     if v.inbound_lost_bytes > TAIL_TOLERANCE_BYTES),
            "inbound_lost_at_start_calls": sum(1 for v in verdicts if v.inbound_lost_at_start_ms),
            "inbound_lost_at_start_ms_max": max((v.inbound_lost_at_start_ms for v in verdicts), default=0.0),
            "outbound_gaps": sum(v.gaps for v in verdicts),
            "outbound_duplicates": sum(v.overlaps for v in verdicts),
            "outbound_unmatched": sum(v.unmatched for v in verdicts),
            "late_audio_played_ms": round(sum(v.late_played_ms for v in verdicts), 1),
            "underruns": sum(v.underruns for v in verdicts),
            "underrun_ms_total": round(sum(v.underrun_ms for v in verdicts), 1),
            "twilio_violations": sum(v.twilio_violations for v in verdicts),
            "upstream_violations": sum(v.upstream_violations for v in verdicts),
            "upstream_errors": dict(upstream_errors),
            "upstream_rejected_upgrades": len(openai.get("rejected", [])),
            "content_checks": content_checks,
            # truncation accuracy is a target, not a problem of the call (the gateway's exit status
            # does not depend on it), but a bridge that truncates far from what the caller heard
            # does not do the job: the report counts it against the baselines' verdict
            "truncates_off_over_20ms": int((np.abs(trunc) > TRUNCATE_TOLERANCE_MS).sum()),
            "calls_with_truncate_off_over_20ms": sum(1 for v in verdicts
                                                     if any(abs(e) > TRUNCATE_TOLERANCE_MS for e in v.truncate_err)),
        },
        "conversation": {
            "turns": sum(v.turns for v in verdicts),
            "responses": sum(v.responses for v in verdicts),
            "clears": sum(v.clears for v in verdicts),
            "truncates": sum(v.truncates for v in verdicts),
            "truncates_censored_by_hangup": sum(v.truncates_censored for v in verdicts),
        },
        "latency_ms": {"inbound": stats(lat_in), "outbound": stats(lat_out), "outbound_first": stats(lat_first),
                       "outbound_method": verdicts[0].out_method if verdicts else ""},
        "interrupt_ms_sims": stats(interrupt),
        "stop_ms": {**stats(stop), "by_phase": by_phase(stop.tolist(), stop_phase)},
        "truncate_error_ms": {**stats(np.abs(trunc)), "signed_mean": float(trunc.mean()) if trunc.size else None,
                              "available": bool(content_checks),
                              "by_phase": by_phase(trunc.tolist(), trunc_phase, signed=True)},
        "generators": {
            # whole calls, from CallRecord (ramp and hang-up included)
            "media_sent": sent, "late_sends": late, "late_share": late / sent if sent else 0.0, "max_lag_ms": max_lag,
            # steady-state window only, per caller frame (±1 ms: uvloop's clock)
            "window_frame_lag_ms": stats(gen_lag),
            "window_late_share": float((gen_lag > 20.0).mean()) if gen_lag.size else 0.0,
        },
        "openai_sim": {"window_delta_lag_ms": stats(sim_lag),
                       "window_late_share": float((sim_lag > 20.0).mean()) if sim_lag.size else 0.0},
        "_raw": {"lat_in": lat_in, "lat_out": lat_out, "truncate_err": trunc, "truncate_phase": trunc_phase,
                 "interrupt": interrupt},
    }


def _kind(problem: str) -> str:
    """A problem message without its per-call details (ids, numbers), for counting."""
    text = re.sub(r"\b(item|resp|event|CA|MZ)_?[0-9A-Za-z]{12,}\b", "<id>", problem)
    text = re.sub(r"[-+]?\d+(\.\d+)?", "N", text)
    return text[:100]
