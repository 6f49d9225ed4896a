"""PNG plots of the load and sweep benches (matplotlib, Agg backend; see bench/README.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"gateway": "#1f77b4", "burst": "#9467bd", "pure": "#ff7f0e", "naive": "#d62728", "sdk": "#2ca02c"}


def load_plots(outputs: dict[str, Any], out_dir: Path) -> list[Path]:
    """Latency distributions (both directions), truncation error histogram, run timeline."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    # ---- latency distributions: log-x histograms + CCDF (the tail is what matters)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    edges = np.logspace(-2, 3, 101)
    for col, (key, title) in enumerate((("lat_in", "inbound: Twilio sim sent frame -> OpenAI sim got append"),
                                        ("lat_out", "outbound: OpenAI sim sent delta -> Twilio sim got media"))):
        for name, out in outputs.items():
            v = np.asarray(out.raw.get(key, []))
            if v.size == 0:
                continue
            color = COLORS.get(name)
            axes[0][col].hist(np.clip(v, edges[0], edges[-1]), bins=edges, histtype="step", lw=1.5,
                              color=color, label=f"{name} (n={v.size:,})")
            s = np.sort(v)
            ccdf = 1.0 - np.arange(s.size) / s.size
            axes[1][col].loglog(s, ccdf, color=color, lw=1.5,
                                label=f"{name}: p50 {np.quantile(v, .5):.2f}, p99 {np.quantile(v, .99):.2f}, "
                                      f"max {v.max():.1f} ms")
        axes[0][col].set_xscale("log")
        axes[0][col].set_title(title, fontsize=10)
        axes[0][col].set_xlabel("added latency (ms, log)")
        axes[0][col].set_ylabel("messages")
        axes[0][col].legend(fontsize=8)
        axes[1][col].axvline(5.0, color="gray", ls="--", lw=1)
        axes[1][col].axhline(0.01, color="gray", ls=":", lw=1)
        axes[1][col].set_xlabel("added latency (ms, log)")
        axes[1][col].set_ylabel("share of messages slower (CCDF)")
        axes[1][col].legend(fontsize=8)
        axes[1][col].grid(True, which="both", alpha=0.3)
    fig.suptitle("Forwarding latency through the bridge, steady-state window "
                 "(dashed: 5 ms p99 target; dotted: the p99 line)")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "load_latency.png", plt))

    # ---- truncation error and interrupt latency
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, out in outputs.items():
        e = np.asarray(out.raw.get("truncate_err", []))
        if e.size:
            lim = max(25.0, float(np.quantile(np.abs(e), 0.999)) + 5)
            bins = np.arange(-lim, lim + 2, 2)
            axes[0].hist(np.clip(e, -lim, lim), bins=bins, histtype="step", lw=1.5, color=COLORS.get(name),
                         label=f"{name}: n={e.size}, |p99| {np.quantile(np.abs(e), .99):.1f} ms")
            phases = np.asarray(out.raw.get("truncate_phase", []))
            r = e[phases == "rebarge"] if phases.size == e.size else np.zeros(0)
            if r.size:  # the 2nd barge-in half a second into the next reply, on its own
                axes[0].hist(np.clip(r, -lim, lim), bins=bins, histtype="step", lw=1.2, ls=":",
                             color=COLORS.get(name), label=f"{name}, 2nd barge-in 0.5 s into the next reply: "
                                                           f"n={r.size}, |p99| {np.quantile(np.abs(r), .99):.1f} ms")
        i = np.asarray(out.raw.get("interrupt", []))
        if i.size:
            axes[1].hist(np.clip(i, 0.01, 1000), bins=np.logspace(-2, 3, 81), histtype="step", lw=1.5,
                         color=COLORS.get(name), label=f"{name}: p50 {np.quantile(i, .5):.2f}, "
                                                       f"p99 {np.quantile(i, .99):.2f} ms")
    for x in (-20, 20):
        axes[0].axvline(x, color="gray", ls="--", lw=1)
    axes[0].set_title("truncation error: audio_end_ms - what the caller heard", fontsize=10)
    axes[0].set_xlabel("ms (negative: truncated before the heard point)")
    axes[0].set_ylabel("truncations")
    axes[0].legend(fontsize=8)
    axes[1].set_xscale("log")
    axes[1].axvline(5.0, color="gray", ls="--", lw=1)
    axes[1].set_title("interrupt: model's speech_started sent -> Twilio's clear received", fontsize=10)
    axes[1].set_xlabel("ms (log)")
    axes[1].set_ylabel("interrupts")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "load_truncate_error.png", plt))

    # ---- timeline: calls up and CPU use of the system under test
    fig, ax = plt.subplots(figsize=(12, 4))
    ax2 = ax.twinx()
    for name, out in outputs.items():
        s = out.samples
        if len(s) < 2:
            continue
        t = np.array([x.t for x in s])
        up = np.array([x.up for x in s])
        cpu = np.array([x.cpu_s for x in s])
        rate = np.diff(cpu) / np.maximum(np.diff(t), 1e-9) * 100
        ax.plot(t, up, color=COLORS.get(name), lw=1.5, label=f"{name}: calls up")
        ax2.plot(t[1:], rate, color=COLORS.get(name), lw=1, ls="--", label=f"{name}: CPU % of one core")
        tl = out.summary["timeline_s"]
        ax.axvspan(tl["window_start_at"], tl["window_end_at"], color=COLORS.get(name, "gray"), alpha=0.06)
    ax.set_xlabel("seconds since start (warm-up, ramp, settle, measurement, hang-up)")
    ax.set_ylabel("calls up")
    ax2.set_ylabel("CPU (% of one core)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
    ax.set_title("run timeline (shaded: the steady-state window the figures come from)", fontsize=10)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "load_timeline.png", plt))
    return paths


def sweep_plots(steps: list[dict[str, Any]], out_dir: Path, cpu_target_ms: float) -> list[Path]:
    """CPU per call-second and p99 latency against concurrent calls."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [s for s in steps if s.get("cpu_per_call_second_ms") is not None]
    n = [s["calls"] for s in ok]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    axes[0].plot(n, [s["cpu_per_call_second_ms"] for s in ok], "o-", color=COLORS["gateway"], label="gateway")
    axes[0].axhline(cpu_target_ms, color="gray", ls="--", lw=1, label=f"target {cpu_target_ms:g} ms")
    for s in ok:
        if not s["passed"]:
            axes[0].plot([s["calls"]], [s["cpu_per_call_second_ms"]], "x", color="red", ms=10)
        if s.get("machine_saturated") or s.get("generator_fell_behind"):
            for ax, y in ((axes[0], s["cpu_per_call_second_ms"]), (axes[1], s.get("p99_outbound_ms"))):
                if y is not None:
                    ax.annotate("machine\nlimit", (s["calls"], y), textcoords="offset points", xytext=(0, 8),
                                ha="center", fontsize=7, color="gray")
    axes[0].set_xlabel("concurrent calls")
    axes[0].set_ylabel("CPU ms per call-second")
    axes[0].set_ylim(bottom=0)
    axes[0].set_title("CPU per call-second\n(x: step failed its service level; \"machine limit\": "
                      "simulators behind or CPUs ≥ 80% busy)", fontsize=9)
    axes[0].legend(fontsize=8)
    axes[0].grid(True, alpha=0.3)
    for key, style in (("p99_inbound_ms", "o-"), ("p99_outbound_ms", "s-")):
        axes[1].plot(n, [s.get(key) for s in ok], style, label=key.replace("_", " ").replace(" ms", ""))
    axes[1].axhline(20.0, color="red", ls="--", lw=1, label="service level 20 ms")
    axes[1].axhline(5.0, color="gray", ls="--", lw=1, label="target 5 ms")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("concurrent calls")
    axes[1].set_ylabel("p99 added latency (ms, log)")
    axes[1].set_title("p99 added latency", fontsize=10)
    axes[1].legend(fontsize=8)
    axes[1].grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return [_save(fig, out_dir / "sweep.png", plt)]


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
