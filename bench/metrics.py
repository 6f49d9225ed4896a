"""The system under test's Prometheus ``/metrics``: scraping, histogram quantiles between two
scrapes (Prometheus bucket interpolation) and the counters a load run reports."""
from __future__ import annotations

import math
from typing import Any

# {(sample name, sorted label items): value}
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Metrics:
    """Prometheus text -> {(sample name, sorted label items): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def histogram(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> list[tuple[float, float]]:
    """[(le, cumulative count)] of one histogram, sorted by le: an unlabelled one, or the series
    with ``labels`` of a labelled one."""
    want = (labels or {}).items()
    rows = [(float(d["le"]), v) for (n, items), v in metrics.items()
            if n == name + "_bucket" and "le" in (d := dict(items)) and all(d.get(k) == x for k, x in want)]
    return sorted(rows)


def histogram_diff(before: Metrics, after: Metrics, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Quantile estimates (Prometheus interpolation) of the observations between two scrapes."""
    b = dict(histogram(before, name, labels))
    rows = [(le, c - b.get(le, 0.0)) for le, c in histogram(after, name, labels)]
    total = rows[-1][1] if rows else 0.0
    out: dict[str, Any] = {"n": int(total), "buckets": [[le, int(c)] for le, c in rows]}
    for q, key in ((0.5, "p50"), (0.99, "p99")):
        out[key] = _bucket_quantile(rows, q) if total else None
    nonempty = [le for (le, c), (_, p) in zip(rows, [(0.0, 0.0), *rows][:-1], strict=True) if c > p]
    out["max_bucket"] = nonempty[-1] if nonempty else None  # upper bound of the highest non-empty bucket
    return out


def _bucket_quantile(rows: list[tuple[float, float]], q: float) -> float:
    total = rows[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in rows:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def counter_sum(metrics: Metrics, name: str) -> dict[str, float]:
    """{label values joined by '/': value} of a counter."""
    out = {}
    for (n, labels), v in metrics.items():
        if n == name and v:
            out["/".join(v2 for _, v2 in labels) or "total"] = v
    return out


async def scrape(port: int) -> Metrics | None:
    """``GET /metrics`` on ``port`` of 127.0.0.1, parsed; None when it does not answer 200."""
    import aiohttp

    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                    http.get(f"http://127.0.0.1:{port}/metrics") as resp):
            if resp.status != 200:
                return None
            return parse_metrics(await resp.text())
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


def metrics_summary(m0: Metrics | None, m1: Metrics | None, final: Metrics | None) -> dict[str, Any]:
    """The gateway's own figures: histograms over the window (``m0`` -> ``m1``, its edges) and
    counters and histograms over the whole run (``final``, scraped after every call ended)."""
    out: dict[str, Any] = {}
    if m0 is not None and m1 is not None:
        lag = histogram_diff(m0, m1, "gateway_event_loop_lag_seconds")
        clear = histogram_diff(m0, m1, "gateway_interrupt_to_clear_seconds")
        out["event_loop_lag_ms"] = scale_ms(lag)
        out["window_interrupt_to_clear_ms"] = scale_ms(clear)
    if final is not None:
        out["upstream_errors"] = counter_sum(final, "gateway_upstream_errors_total")
        out["protocol_errors"] = counter_sum(final, "gateway_protocol_errors_total")
        out["rejected_calls"] = counter_sum(final, "gateway_rejected_calls_total")
        out["calls_ended"] = counter_sum(final, "gateway_calls_ended_total")
        out["late_audio_dropped"] = sum(counter_sum(final, "gateway_late_audio_dropped_total").values())
        out["interrupts"] = counter_sum(final, "gateway_interrupts_total")
        out["interrupt_to_clear_ms"] = scale_ms(histogram_diff({}, final, "gateway_interrupt_to_clear_seconds"))
    return out


def scale_ms(h: dict[str, Any]) -> dict[str, Any]:
    """Seconds -> milliseconds for the quantile fields of ``histogram_diff``."""
    out = dict(h)
    for key in ("p50", "p99", "max_bucket"):
        if out.get(key) is not None:
            out[key] = out[key] * 1000
    out["buckets"] = [["+Inf" if math.isinf(le) else le * 1000, c] for le, c in out["buckets"]]
    return out
