"""Prometheus metrics of one worker, aggregated across workers by prometheus-client's multiprocess mode.

Per-frame code never touches a metric object: calls count in plain ints (``call.CallStats``) and
``flush`` adds what changed since the last flush, from the worker's housekeeping tick and once
more when a call ends. With ``PROMETHEUS_MULTIPROC_DIR`` set (the supervisor sets it for its
workers) every process writes its samples to that directory and ``/metrics`` on any worker
serves the sum over all of them; without it (demo, tests) a private registry is used.

Names follow Prometheus conventions: counters end in ``_total``, durations are ``_seconds``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from .call import Call

FRAME_SECONDS = 0.02  # Twilio media frames are 20 ms
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONNECT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
OFFSET_BUCKETS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

# (name, type, help, labels) — the README's metrics table is checked against this list.
METRICS = (
    ("gateway_active_calls", "gauge", "Calls in progress (all workers).", ()),
    ("gateway_calls_started_total", "counter", "Media streams opened.", ()),
    ("gateway_calls_ended_total", "counter", "Calls ended, by outcome.", ("outcome",)),
    ("gateway_call_duration_seconds", "histogram", "Call duration from media socket open to end.", ()),
    ("gateway_media_frames_total", "counter",
     "Media messages: inbound = Twilio frames received, outbound = media messages sent to Twilio.", ("direction",)),
    ("gateway_audio_seconds_total", "counter", "Audio carried, by direction.", ("direction",)),
    ("gateway_late_audio_dropped_total", "counter", "Model audio deltas of interrupted responses dropped.", ()),
    ("gateway_interrupts_total", "counter", "Barge-ins that acted, by trigger.", ("trigger",)),
    ("gateway_interrupt_to_clear_seconds", "histogram", "Interrupt trigger to Twilio clear handed to the socket.", ()),
    ("gateway_truncation_offset_seconds", "histogram",
     "audio_end_ms of each conversation.item.truncate sent (its _count is the number of truncations).", ()),
    ("gateway_upstream_connect_seconds", "histogram", "Upstream TCP+TLS+WebSocket connect time.", ()),
    ("gateway_upstream_errors_total", "counter", "Upstream failures and error events, by code.", ("code",)),
    ("gateway_protocol_errors_total", "counter", "Invalid peer messages, by side and kind.", ("side", "kind")),
    ("gateway_rejected_calls_total", "counter", "Calls refused at webhook or upgrade, by reason.", ("reason",)),
    ("gateway_event_loop_lag_seconds", "histogram", "Lateness of the worker's housekeeping timer.", ()),
    ("gateway_worker_restarts_total", "counter", "Workers restarted by the supervisor.", ()),
)


class _Seen:
    """What of one call's counters was already added to the metrics."""

    __slots__ = ("frames_in", "media_out", "bytes_out", "dropped", "clears", "truncs", "interrupts",
                 "upstream_errors", "twilio_errors", "connect")

    def __init__(self) -> None:
        self.frames_in = self.media_out = self.bytes_out = self.dropped = self.clears = self.truncs = 0
        self.interrupts: dict[str, int] = {}
        self.upstream_errors: dict[str, int] = {}
        self.twilio_errors: dict[str, int] = {}
        self.connect = False


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class GatewayMetrics:
    """The metric objects of one worker and the flush of per-call counters into them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        if _multiprocess():
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)
            target = None  # samples go to this process's files; the collector reads all files
        else:
            target = self.registry
        self.active = Gauge("gateway_active_calls", METRICS[0][2], registry=target, multiprocess_mode="livesum")
        self.started = Counter("gateway_calls_started", METRICS[1][2], registry=target)
        self.ended = Counter("gateway_calls_ended", METRICS[2][2], ["outcome"], registry=target)
        self.duration = Histogram("gateway_call_duration_seconds", METRICS[3][2], registry=target,
                                  buckets=DURATION_BUCKETS)
        self.frames = Counter("gateway_media_frames", METRICS[4][2], ["direction"], registry=target)
        self.audio = Counter("gateway_audio_seconds", METRICS[5][2], ["direction"], registry=target)
        self.dropped = Counter("gateway_late_audio_dropped", METRICS[6][2], registry=target)
        self.interrupts = Counter("gateway_interrupts", METRICS[7][2], ["trigger"], registry=target)
        self.clear_latency = Histogram("gateway_interrupt_to_clear_seconds", METRICS[8][2], registry=target,
                                       buckets=LATENCY_BUCKETS)
        self.truncation = Histogram("gateway_truncation_offset_seconds", METRICS[9][2], registry=target,
                                    buckets=OFFSET_BUCKETS)
        self.connect = Histogram("gateway_upstream_connect_seconds", METRICS[10][2], registry=target,
                                 buckets=CONNECT_BUCKETS)
        self.upstream_errors = Counter("gateway_upstream_errors", METRICS[11][2], ["code"], registry=target)
        self.protocol_errors = Counter("gateway_protocol_errors", METRICS[12][2], ["side", "kind"], registry=target)
        self.rejected_calls = Counter("gateway_rejected_calls", METRICS[13][2], ["reason"], registry=target)
        self.loop_lag = Histogram("gateway_event_loop_lag_seconds", METRICS[14][2], registry=target,
                                  buckets=LAG_BUCKETS)
        self.worker_restarts = Counter("gateway_worker_restarts", METRICS[15][2], registry=target)
        self._frames_in = self.frames.labels("inbound")
        self._frames_out = self.frames.labels("outbound")
        self._audio_in = self.audio.labels("inbound")
        self._audio_out = self.audio.labels("outbound")
        self._seen: dict[Call, _Seen] = {}

    # ------------------------------------------------------------------ events (rare)
    def call_started(self, call: Call) -> None:
        self.started.inc()
        self._seen[call] = _Seen()

    def call_ended(self, call: Call, now: float) -> None:
        self._flush_call(call)
        self._seen.pop(call, None)
        self.ended.labels(call.outcome or "unknown").inc()
        self.duration.observe(max(0.0, now - call.started_at))

    def rejected(self, reason: str) -> None:
        self.rejected_calls.labels(reason).inc()

    # ------------------------------------------------------------------ the periodic flush
    def flush(self, calls: Iterable[Call], loop_lag_s: float | None = None) -> None:
        """Add what every live call counted since the last flush; set the active gauge."""
        n = 0
        for call in calls:
            self._flush_call(call)
            n += 1
        self.active.set(n)
        if loop_lag_s is not None:
            self.loop_lag.observe(max(0.0, loop_lag_s))

    def _flush_call(self, call: Call) -> None:
        seen = self._seen.get(call)
        if seen is None:
            seen = self._seen[call] = _Seen()
        st = call.stats
        if st.frames_in != seen.frames_in:
            d = st.frames_in - seen.frames_in
            self._frames_in.inc(d)
            self._audio_in.inc(d * FRAME_SECONDS)
            seen.frames_in = st.frames_in
        if st.bytes_out != seen.bytes_out:
            self._audio_out.inc((st.bytes_out - seen.bytes_out) / 8000.0)
            seen.bytes_out = st.bytes_out
        if st.media_out != seen.media_out:
            self._frames_out.inc(st.media_out - seen.media_out)
            seen.media_out = st.media_out
        if st.deltas_dropped != seen.dropped:
            self.dropped.inc(st.deltas_dropped - seen.dropped)
            seen.dropped = st.deltas_dropped
        if len(st.clear_latency_s) != seen.clears:
            for value in st.clear_latency_s[seen.clears:]:
                self.clear_latency.observe(value)
            seen.clears = len(st.clear_latency_s)
        if len(st.truncations) != seen.truncs:
            for _item, end_ms in st.truncations[seen.truncs:]:
                self.truncation.observe(end_ms / 1000.0)
            seen.truncs = len(st.truncations)
        if not seen.connect and st.upstream_connect_s is not None:
            self.connect.observe(st.upstream_connect_s)
            seen.connect = True
        _add_dict(st.interrupts, seen.interrupts, lambda k, d: self.interrupts.labels(k).inc(d))
        _add_dict(st.twilio_protocol_errors, seen.twilio_errors,
                  lambda k, d: self.protocol_errors.labels("twilio", k).inc(d))
        _add_dict(st.upstream_errors, seen.upstream_errors, self._upstream_error)

    def _upstream_error(self, code: str, d: int) -> None:
        if code.startswith("protocol_"):
            self.protocol_errors.labels("upstream", code[len("protocol_"):]).inc(d)
        else:
            self.upstream_errors.labels(code).inc(d)

    # ------------------------------------------------------------------ exposition
    def render(self) -> tuple[bytes, str]:
        """The text exposition format (all workers in multiprocess mode)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _add_dict(current: dict[str, int], seen: dict[str, int], add) -> None:
    if current == seen:
        return
    for key, value in current.items():
        d = value - seen.get(key, 0)
        if d:
            add(key, d)
            seen[key] = value
