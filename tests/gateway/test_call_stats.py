"""Every per-call counter reaches a metric: no counter is incremented and never read."""
from __future__ import annotations

from gateway.metrics import METRICS, Kind
from gateway.stats import CallStats


def test_every_call_counter_is_exported():
    flushed = {f.field for m in METRICS for f in m.flush}
    assert flushed == set(CallStats.__slots__)


def test_flushed_metrics_fit_their_fields():
    sample = CallStats()
    for metric in METRICS:
        for flush in metric.flush:
            value = getattr(sample, flush.field)
            if isinstance(value, list) or value is None:
                assert metric.kind is Kind.HISTOGRAM, (metric.name, flush.field)
            else:
                assert metric.kind is Kind.COUNTER, (metric.name, flush.field)
            key_label = 1 if isinstance(value, dict) else 0
            assert len(flush.labels) + key_label == len(metric.labels), (metric.name, flush.field)
