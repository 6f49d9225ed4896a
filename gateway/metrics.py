"""Prometheus metrics of one worker, aggregated across workers by prometheus-client's multiprocess mode.

``METRICS`` is the one place a metric is declared: its name, type, help, labels, buckets, and —
for metrics fed by calls — which ``CallStats`` field flows into it (``Flush``). Per-frame code
never touches a metric object: calls count in plain attributes and ``GatewayMetrics.flush`` adds
what changed since the last flush, from the worker's housekeeping tick and once more when a
call ends. The README's metrics table and ``deploy/`` are checked against ``METRICS`` by tests,
and a test checks that every ``CallStats`` field is flushed somewhere.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the supervisor sets it for its workers) every process
writes its samples to that directory and ``/metrics`` on any worker serves the sum over all of
them; without it (demo, tests) a private registry is used.

Names follow Prometheus conventions: counters end in ``_total``, durations are ``_seconds``.
"""
from __future__ import annotations

import enum
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .stats import CallStats

if TYPE_CHECKING:
    from .call import Call

FRAME_SECONDS = 0.02  # Twilio media frames are 20 ms
ULAW_BYTES_PER_S = 8000.0
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONNECT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
OFFSET_BUCKETS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
ROUTING_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)
TOOL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class Kind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Flush(NamedTuple):
    """One ``CallStats`` field flowing into a metric.

    By the field's type: an int adds its increase (× ``scale``); a dict of counts adds each key's
    increase, the key (a string or a tuple) giving the last label values; a list observes its new
    entries (a tuple's leading elements are label values when the metric has labels left, else
    element ``pick``; × ``scale``); an optional value is counted (a counter, the value as label)
    or observed (a histogram) once, when set.
    """

    field: str
    labels: tuple[str, ...] = ()  # fixed label values before any key label
    scale: float = 1.0
    pick: int | None = None


class Metric(NamedTuple):
    name: str  # as exposed (counters with `_total`)
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    flush: tuple[Flush, ...] = ()


METRICS: tuple[Metric, ...] = (
    Metric("gateway_active_calls", Kind.GAUGE, "Calls in progress (all workers)."),
    Metric("gateway_calls_started_total", Kind.COUNTER, "Media streams opened."),
    Metric("gateway_calls_ended_total", Kind.COUNTER, "Calls ended, by outcome.", ("outcome",)),
    Metric("gateway_call_duration_seconds", Kind.HISTOGRAM, "Call duration from media socket open to end.",
           buckets=DURATION_BUCKETS),
    Metric("gateway_media_frames_total", Kind.COUNTER,
           "Media messages: inbound = Twilio frames received, outbound = media messages sent to Twilio.",
           ("direction",), flush=(Flush("frames_in", ("inbound",)), Flush("media_out", ("outbound",)))),
    Metric("gateway_audio_seconds_total", Kind.COUNTER, "Audio carried, by direction.", ("direction",),
           flush=(Flush("frames_in", ("inbound",), FRAME_SECONDS),
                  Flush("bytes_out", ("outbound",), 1 / ULAW_BYTES_PER_S))),
    Metric("gateway_late_audio_dropped_total", Kind.COUNTER, "Model audio deltas of interrupted responses dropped.",
           flush=(Flush("deltas_dropped"),)),
    Metric("gateway_playout_underruns_total", Kind.COUNTER,
           "Paced playout: times Twilio's lead ran dry while model audio was held back in the gateway "
           "(the pacer was late; each is a gap the caller hears).", flush=(Flush("playout_underruns"),)),
    Metric("gateway_caller_audio_dropped_seconds_total", Kind.COUNTER,
           "Caller audio lost while the upstream session was opening (beyond GATEWAY_MAX_PENDING_AUDIO_MS).",
           flush=(Flush("caller_audio_dropped_bytes", scale=1 / ULAW_BYTES_PER_S),)),
    Metric("gateway_interrupts_total", Kind.COUNTER, "Barge-ins that acted, by trigger.", ("trigger",),
           flush=(Flush("interrupts"),)),
    Metric("gateway_false_interruptions_total", Kind.COUNTER,
           "Caller speech shorter than GATEWAY_MIN_INTERRUPTION_MS during the assistant's audio: paused, then "
           "resumed where the caller stopped hearing, the noise deleted from the conversation.",
           flush=(Flush("false_interruptions"),)),
    Metric("gateway_interrupt_to_clear_seconds", Kind.HISTOGRAM,
           "Interrupt trigger to Twilio clear handed to the socket.",
           buckets=LATENCY_BUCKETS, flush=(Flush("clear_latency_s"),)),
    Metric("gateway_truncation_offset_seconds", Kind.HISTOGRAM,
           "audio_end_ms of each conversation.item.truncate sent (its _count is the number of truncations).",
           buckets=OFFSET_BUCKETS, flush=(Flush("truncations", scale=0.001, pick=1),)),
    Metric("gateway_upstream_connect_seconds", Kind.HISTOGRAM, "Upstream TCP+TLS+WebSocket connect time.",
           buckets=CONNECT_BUCKETS, flush=(Flush("upstream_connect_s"),)),
    Metric("gateway_upstream_reconnects_total", Kind.COUNTER,
           "Upstream sessions replaced mid-call, by result (ok, failed attempt, budget exhausted, rollover).",
           ("result",), flush=(Flush("reconnects"),)),
    Metric("gateway_upstream_reconnect_seconds", Kind.HISTOGRAM,
           "Upstream failure to the new session taking over (the caller's pause).", buckets=CONNECT_BUCKETS,
           flush=(Flush("reconnect_s"),)),
    Metric("gateway_upstream_errors_total", Kind.COUNTER, "Upstream failures and error events, by code.", ("code",),
           flush=(Flush("upstream_errors"),)),
    Metric("gateway_protocol_errors_total", Kind.COUNTER, "Invalid peer messages, by side and kind.", ("side", "kind"),
           flush=(Flush("twilio_protocol_errors", ("twilio",)), Flush("upstream_protocol_errors", ("upstream",)))),
    Metric("gateway_calls_by_agent_total", Kind.COUNTER, "Calls by the agent that answered them.", ("agent",),
           flush=(Flush("agent"),)),
    Metric("gateway_tool_calls_total", Kind.COUNTER, "Function calls of the model, by tool and status.",
           ("tool", "status"), flush=(Flush("tool_calls"),)),
    Metric("gateway_tool_latency_seconds", Kind.HISTOGRAM, "Function call to its output, by tool.", ("tool",),
           buckets=TOOL_BUCKETS, flush=(Flush("tool_latency_s"),)),
    Metric("gateway_tokens_total", Kind.COUNTER, "Realtime API tokens used, by kind (from response.done).",
           ("kind",), flush=(Flush("tokens"),)),
    Metric("gateway_dtmf_digits_total", Kind.COUNTER, "Keypad digits pressed by callers.",
           flush=(Flush("dtmf_digits"),)),
    Metric("gateway_call_records_total", Kind.COUNTER, "Call records written or sent, by sink and result.",
           ("sink", "result")),
    Metric("gateway_control_commands_total", Kind.COUNTER, "Control API commands, by verb and HTTP status.",
           ("verb", "result")),
    Metric("gateway_control_routing_seconds", Kind.HISTOGRAM,
           "Control command latency from the request to the owner's answer, by route (local, pod, cluster).",
           ("route",), buckets=ROUTING_BUCKETS),
    Metric("gateway_registry_errors_total", Kind.COUNTER,
           "Call-registry (Redis) operations that failed, by operation: calls go on, remote control does not.",
           ("op",)),
    Metric("gateway_rejected_calls_total", Kind.COUNTER, "Calls refused at webhook or upgrade, by reason.",
           ("reason",)),
    Metric("gateway_rejected_connections_total", Kind.COUNTER,
           "Connections closed before their request reached a handler (slow, oversized, too many), by reason.",
           ("reason",)),
    Metric("gateway_event_loop_lag_seconds", Kind.HISTOGRAM, "Lateness of the worker's housekeeping timer.",
           buckets=LAG_BUCKETS),
    Metric("gateway_worker_restarts_total", Kind.COUNTER, "Workers restarted by the supervisor."),
)
BY_NAME = {m.name: m for m in METRICS}


def markdown_table() -> str:
    """The README's metrics table (a test keeps the two identical)."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    rows += [f"| `{m.name}` | {m.kind} | {', '.join(m.labels) or '–'} | {m.help} |" for m in METRICS]
    return "\n".join(rows)


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def make(metric: Metric, registry: CollectorRegistry | None) -> Any:
    """The prometheus-client object of a declaration (counters are named without `_total`)."""
    if metric.kind is Kind.COUNTER:
        return Counter(metric.name.removesuffix("_total"), metric.help, metric.labels, registry=registry)
    if metric.kind is Kind.GAUGE:
        return Gauge(metric.name, metric.help, metric.labels, registry=registry, multiprocess_mode="livesum")
    assert metric.buckets is not None, metric.name
    return Histogram(metric.name, metric.help, metric.labels, registry=registry, buckets=metric.buckets)


class _Flow:
    """Moves one CallStats field's increase into its metric; ``seen`` is what was moved so far."""

    __slots__ = ("field", "fixed", "labelled", "metric", "pick", "scale", "target", "way")

    def __init__(self, flush: Flush, metric_decl: Metric, metric: Any, sample: CallStats) -> None:
        self.field = flush.field
        self.scale = flush.scale
        self.pick = flush.pick
        self.fixed = flush.labels
        self.metric = metric
        self.way = type(getattr(sample, flush.field))
        self.labelled = len(metric_decl.labels) > len(flush.labels)  # entries carry label values
        self.target = metric.labels(*flush.labels) if flush.labels and not self.labelled else metric

    def initial(self) -> Any:
        return {} if self.way is dict else (False if self.way is type(None) else 0)

    def move(self, current: Any, seen: Any, sums: dict[Any, float]) -> Any:
        """``sums``: counter increases of this flush, added once per counter (each ``inc`` in
        multiprocess mode is a lock, a ``getpid`` system call and an mmap write)."""
        way = self.way
        if way is int:
            if current != seen:
                target = self.target
                sums[target] = sums.get(target, 0) + (current - seen) * self.scale
            return current
        if way is list:
            if len(current) != seen:
                for value in current[seen:]:
                    self._observe(value)
            return len(current)
        if way is dict:
            if current != seen:
                for key, value in current.items():
                    d = value - seen.get(key, 0)
                    if d:
                        keys = key if isinstance(key, tuple) else (key,)
                        child = self.metric.labels(*self.fixed, *keys)
                        sums[child] = sums.get(child, 0) + d * self.scale
                return dict(current)
            return seen
        if not seen and current is not None:  # an optional value, taken once
            if self.labelled:
                self.metric.labels(*self.fixed, current).inc()
            else:
                self.target.observe(current * self.scale)
            return True
        return seen

    def _observe(self, value: Any) -> None:
        if self.labelled:
            *labels, amount = value
            self.metric.labels(*self.fixed, *labels).observe(amount * self.scale)
        else:
            self.target.observe((value if self.pick is None else value[self.pick]) * self.scale)


class GatewayMetrics:
    """The metric objects of one worker and the flush of per-call counters into them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        if _multiprocess():
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]  # untyped upstream
            target = None  # samples go to this process's files; the collector reads all files
        else:
            target = self.registry
        # Every metric exists in every worker (at zero until it counts), the restart counter too:
        # only the supervisor increments it, in the shared multiprocess directory.
        self.objects = {m.name: make(m, target) for m in METRICS}
        sample = CallStats()
        self._flows = [_Flow(f, m, self.objects[m.name], sample) for m in METRICS for f in m.flush]
        self._seen: dict[Call, list[Any]] = {}
        self._active = self.objects["gateway_active_calls"]
        self._started = self.objects["gateway_calls_started_total"]
        self._ended = self.objects["gateway_calls_ended_total"]
        self._duration = self.objects["gateway_call_duration_seconds"]
        self._rejected = self.objects["gateway_rejected_calls_total"]
        self._loop_lag = self.objects["gateway_event_loop_lag_seconds"]

    # ------------------------------------------------------------------ events (rare)
    def call_started(self, call: Call) -> None:
        self._started.inc()
        self._seen[call] = [flow.initial() for flow in self._flows]

    def call_ended(self, call: Call, now: float) -> None:
        sums: dict[Any, float] = {}
        self._flush_call(call, sums)
        _add(sums)
        self._seen.pop(call, None)
        self._ended.labels(call.outcome or "unknown").inc()
        self._duration.observe(max(0.0, now - call.started_at))

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def count(self, name: str, *labels: str) -> None:
        """An event counted where it happens (not per call): ``count("gateway_call_records_total", "file", "ok")``."""
        metric = self.objects[name]
        (metric.labels(*labels) if labels else metric).inc()

    def observe(self, name: str, value: float, *labels: str) -> None:
        metric = self.objects[name]
        (metric.labels(*labels) if labels else metric).observe(value)

    # ------------------------------------------------------------------ the periodic flush
    def flush(self, calls: Iterable[Call], loop_lag_s: float | None = None) -> None:
        """Add what every live call counted since the last flush; set the active gauge."""
        n = 0
        sums: dict[Any, float] = {}
        for call in calls:
            self._flush_call(call, sums)
            n += 1
        _add(sums)
        self._active.set(n)
        if loop_lag_s is not None:
            self._loop_lag.observe(max(0.0, loop_lag_s))

    def _flush_call(self, call: Call, sums: dict[Any, float]) -> None:
        seen = self._seen.get(call)
        if seen is None:
            seen = self._seen[call] = [flow.initial() for flow in self._flows]
        stats = call.stats
        for i, flow in enumerate(self._flows):
            seen[i] = flow.move(getattr(stats, flow.field), seen[i], sums)

    # ------------------------------------------------------------------ exposition
    def render(self) -> tuple[bytes, str]:
        """The text exposition format (all workers in multiprocess mode)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _add(sums: dict[Any, float]) -> None:
    for counter, amount in sums.items():
        counter.inc(amount)


def restart_counter() -> Any:
    """``gateway_worker_restarts_total`` as the supervisor writes it (multiprocess directory)."""
    return make(BY_NAME["gateway_worker_restarts_total"], None)


def unended_calls(pid: int, directory: str) -> int:
    """Calls the worker process ``pid`` counted as started and never as ended, read from its files.

    A worker killed with calls cannot count their end, but its counters outlive it: in
    multiprocess mode each process's counters are in ``counter_<pid>.db`` (prometheus-client's
    naming), written through a shared mapping the kernel keeps after SIGKILL. Exact where the
    pod hub's registry is not: a call is counted started when its media socket opens, before the
    hub hears of it."""
    path = os.path.join(directory, f"counter_{pid}.db")
    if not os.path.exists(path):
        return 0
    from prometheus_client.multiprocess import MultiProcessCollector

    balance = 0.0
    for metric in MultiProcessCollector.merge([path]):  # type: ignore[no-untyped-call]  # untyped upstream
        if metric.name == "gateway_calls_started":
            balance += sum(s.value for s in metric.samples)
        elif metric.name == "gateway_calls_ended":
            balance -= sum(s.value for s in metric.samples)
    return max(0, round(balance))
