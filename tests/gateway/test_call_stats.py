"""Every per-call counter reaches a metric: no counter is incremented and never read, and the
declared flushes really move each field's values into the right series."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import METRICS, GatewayMetrics
from gateway.stats import CallStats


def test_every_call_counter_is_exported():
    flushed = {f.field for m in METRICS for f in m.flush}
    assert flushed == set(CallStats.__slots__)


class _Call:
    """What the metrics read of a call (hashable, as the worker's Call objects are)."""

    def __init__(self, stats: CallStats) -> None:
        self.stats, self.outcome, self.started_at = stats, "completed", 0.0


def _samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_flush_moves_every_field_once():
    stats = CallStats()
    call = _Call(stats)
    metrics = GatewayMetrics()
    metrics.call_started(call)  # type: ignore[arg-type]
    stats.frames_in, stats.media_out, stats.bytes_out = 50, 3, 8000
    stats.deltas_dropped, stats.caller_audio_dropped_bytes, stats.dtmf_digits = 2, 800, 3
    stats.interrupts = {"speech_started": 1}
    stats.clear_latency_s = [0.0002]
    stats.truncations = [("item_1", 1500)]
    stats.upstream_errors = {"session_expired": 1}
    stats.upstream_protocol_errors = {"invalid_fields": 1}
    stats.twilio_protocol_errors = {"unknown_event": 2}
    stats.upstream_connect_s = 0.12
    stats.agent = "support"
    stats.tool_calls = {("lookup_order", "ok"): 1, ("lookup_order", "timeout"): 1}
    stats.tool_latency_s = [("lookup_order", 0.3), ("lookup_order", 5.0)]
    stats.tokens = {"input_audio": 120, "output_audio": 240}
    metrics.flush([call])  # type: ignore[list-item]
    metrics.flush([call])  # a second flush adds nothing
    m = _samples(metrics)
    assert m[("gateway_media_frames_total", (("direction", "inbound"),))] == 50
    assert m[("gateway_media_frames_total", (("direction", "outbound"),))] == 3
    assert m[("gateway_audio_seconds_total", (("direction", "inbound"),))] == 1.0
    assert m[("gateway_audio_seconds_total", (("direction", "outbound"),))] == 1.0
    assert m[("gateway_caller_audio_dropped_seconds_total", ())] == 0.1
    assert m[("gateway_truncation_offset_seconds_sum", ())] == 1.5
    assert m[("gateway_protocol_errors_total", (("kind", "unknown_event"), ("side", "twilio")))] == 2
    assert m[("gateway_protocol_errors_total", (("kind", "invalid_fields"), ("side", "upstream")))] == 1
    assert m[("gateway_calls_by_agent_total", (("agent", "support"),))] == 1
    assert m[("gateway_tool_calls_total", (("status", "timeout"), ("tool", "lookup_order")))] == 1
    assert m[("gateway_tool_latency_seconds_count", (("tool", "lookup_order"),))] == 2
    assert m[("gateway_tokens_total", (("kind", "output_audio"),))] == 240
    assert m[("gateway_dtmf_digits_total", ())] == 3
    assert m[("gateway_upstream_connect_seconds_count", ())] == 1


def test_a_flush_adds_to_each_counter_once_whatever_the_number_of_calls(monkeypatch):
    """In multiprocess mode every ``inc`` is a lock, a getpid system call and an mmap write: the
    once-a-second flush sums the live calls' increases and adds each counter's sum once."""
    from prometheus_client import Counter

    calls = [_Call(CallStats()) for _ in range(50)]
    metrics = GatewayMetrics()
    for i, call in enumerate(calls):
        metrics.call_started(call)  # type: ignore[arg-type]
        call.stats.frames_in, call.stats.media_out, call.stats.bytes_out = 50, 5, 800 * (i + 1)
        call.stats.twilio_protocol_errors = {"unknown_event": 1}
    incs: list[float] = []
    real_inc = Counter.inc
    monkeypatch.setattr(Counter, "inc", lambda self, amount=1, exemplar=None: (incs.append(amount),
                                                                                real_inc(self, amount)))
    metrics.flush(calls)  # type: ignore[arg-type]
    # One per series (frames and seconds, inbound and outbound; Twilio protocol errors), not per call.
    assert len(incs) == 5
    m = _samples(metrics)
    assert m[("gateway_media_frames_total", (("direction", "inbound"),))] == 50 * 50
    assert m[("gateway_audio_seconds_total", (("direction", "outbound"),))] == pytest.approx(127.5)
    assert m[("gateway_protocol_errors_total", (("kind", "unknown_event"), ("side", "twilio")))] == 50
