"""The figures of one load run, from what was read while it ran (``bench.loadrun``): CPU and
memory of the system under test in the measurement window, the timeline, whether the simulators
kept up, the gateway's own metrics. Pure functions; ``summarise`` builds a run's summary (the
``runs.<target>`` object of load.json before ``bench.loadreport.json_run`` adds the distributions
and samples)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .loadplan import Timeline
from .metrics import Metrics, metrics_summary
from .procstat import IoSample, TreeSample
from .settings import Settings

SATURATED_BUSY_SHARE = 0.8  # machine CPU busy at or above this: latencies include run-queue waits
LAG_FELL_BEHIND_MS = 50.0
LATE_SHARE_FELL_BEHIND = 0.001

SchedStat = tuple[float, float, int]  # procstat.schedstat: on CPU s, waiting for a CPU s, times scheduled in


@dataclass
class Sample:
    t: float  # seconds since T0
    up: int
    cpu_s: float
    rss: int


@dataclass
class RunOutput:
    summary: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)  # numpy arrays for the plots (not in the JSON)
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Edge:
    """What is read at one edge of the measurement window (in this order)."""

    cpu: TreeSample | None  # the system under test's process tree
    machine: tuple[float, float]  # procstat.machine_cpu(): busy and total CPU seconds of the machine
    sims_cpu_s: float  # CPU of the simulators' processes
    t: float  # time.monotonic()
    sched_sut: SchedStat  # the system under test's processes
    sched_sims: SchedStat  # the simulators' processes
    io: IoSample | None = None  # procstat.io_sample of the system under test's processes
    # the messages the simulators counted so far: {"twilio": {...}, "openai": {...}} (bench.loadsim)
    counts: dict[str, dict[str, int]] | None = None


@dataclass
class Window:
    """The readings a run's figures come from."""

    idle: TreeSample | None  # after the warm-up, before the ramp (idle RSS)
    metrics0: Metrics | None  # /metrics just before the window (None: not scraped)
    start: Edge
    end: Edge
    metrics1: Metrics | None  # /metrics at its end
    perf: dict[str, Any] | None = None  # --syscalls perf: bench.syscalls.SyscallCounter.stop()

    @property
    def seconds(self) -> float:
        return self.end.t - self.start.t


@dataclass
class Readings:
    """Everything read during a run besides the simulators' records."""

    window: Window
    idle_cpu_rate: float | None  # cores the system under test used before any call
    peak_rss: int  # bytes, its workers, highest sample inside the window (0: none)
    stop_s: float  # how long it took to stop
    metrics_final: Metrics | None  # /metrics once every call ended (None: not scraped)


def timeline_figures(tl: Timeline, settle: float, window_s: float, stop_s: float) -> dict[str, Any]:
    return {"warmup_calls": tl.warmup_calls, "ramp": round(tl.ramp_s, 2), "settle": settle,
            "window": round(window_s, 3), "sut_stop": round(stop_s, 2),
            "ramp_start_at": tl.ramp_start, "window_start_at": round(tl.window_start, 3),
            "window_end_at": round(tl.window_end, 3), "hangup_at": round(tl.hangup, 3)}


def contention(a: SchedStat, b: SchedStat, window_s: float) -> dict[str, float | None]:
    """Run-queue waits between two ``procstat.schedstat`` readings."""
    wakeups = b[2] - a[2]
    return {"runqueue_wait_share": (b[1] - a[1]) / window_s,  # seconds waiting for a CPU per second
            "runqueue_wait_per_wakeup_ms": (b[1] - a[1]) / wakeups * 1000 if wakeups > 0 else None}


def cpu_figures(calls: int, w: Window, idle_cpu_rate: float | None) -> dict[str, Any]:
    """CPU of the system under test over the window: per call-second, vs the simulators, vs the machine."""
    window_s = w.seconds
    cpu0, cpu1 = w.start.cpu, w.end.cpu
    cpu_s = sys_s = None
    if cpu0 and cpu1:
        cpu_s, sys_s = cpu1.cpu_s - cpu0.cpu_s, cpu1.sys_s - cpu0.sys_s
    per_call_s = cpu_s / (calls * window_s) if cpu_s is not None else None
    (busy0, total0), (busy1, total1) = w.start.machine, w.end.machine
    sims_cpu_s = w.end.sims_cpu_s - w.start.sims_cpu_s
    return {
        "window_cpu_s": cpu_s,
        # Share spent in the kernel (system calls: socket sends/reads, epoll). On loopback a send
        # also runs the receiving side's TCP processing, so this is higher than over a NIC.
        "kernel_share": sys_s / cpu_s if cpu_s and sys_s is not None else None,
        "per_call_second_ms": per_call_s * 1000 if per_call_s is not None else None,
        "calls_per_core": 1 / per_call_s if per_call_s else None,
        "idle_cpu_share": idle_cpu_rate,  # cores used with no call at all (timers, supervisor)
        "per_call_second_ms_net_of_idle": ((cpu_s - idle_cpu_rate * window_s) / (calls * window_s) * 1000
                                           if cpu_s is not None and idle_cpu_rate is not None else None),
        "processes": len(cpu1.pids) + 1 if cpu1 else None,
        "simulators_cpu_s": sims_cpu_s,
        # The simulators' CPU under the same load is this run's yardstick of the host's speed:
        # on the shared bench VM absolute figures drifted by 35 % within an hour while this ratio
        # stayed within ±3 % (for the same options: TLS, mode and coalescing change the sims' work).
        "vs_simulators": cpu_s / sims_cpu_s if cpu_s is not None and w.end.sims_cpu_s > w.start.sims_cpu_s else None,
        "machine_busy_share": (busy1 - busy0) / (total1 - total0) if total1 > total0 else None,
        "cpus": os.cpu_count(),
        "contention": {"system_under_test": contention(w.start.sched_sut, w.end.sched_sut, window_s),
                       "simulators": contention(w.start.sched_sims, w.end.sched_sims, window_s)},
        "machine_saturated": bool(total1 > total0 and (busy1 - busy0) / (total1 - total0) >= SATURATED_BUSY_SHARE),
    }


# (leg, kind, which simulator counted it, its key there): every message between the system under
# test and its two peers, as the simulators saw them (bench.loadsim counts)
MESSAGE_KINDS = (
    ("twilio_to_system", "media", "twilio", "media"),
    ("twilio_to_system", "mark", "twilio", "mark"),
    ("twilio_to_system", "other", "twilio", "other"),
    ("system_to_twilio", "media", "twilio", "got_media"),
    ("system_to_twilio", "mark", "twilio", "got_mark"),
    ("system_to_twilio", "clear", "twilio", "got_clear"),
    ("system_to_twilio", "other", "twilio", "got_other"),
    ("system_to_openai", "append", "openai", "append"),
    ("system_to_openai", "other", "openai", "client_other"),
    ("openai_to_system", "delta", "openai", "delta"),
    ("openai_to_system", "other", "openai", "server_other"),
)
INBOUND_LEGS = ("twilio_to_system", "openai_to_system")  # what the system under test reads


def message_figures(calls: int, w: Window) -> dict[str, Any]:
    """Messages per call-second in the window, by leg and kind, from the simulators' counts at its
    edges; ``in``/``out``: everything the system under test received / sent."""
    a, b = w.start.counts, w.end.counts
    out: dict[str, Any] = {leg: {} for leg, *_ in MESSAGE_KINDS}
    if a is None or b is None or w.seconds <= 0:
        for leg, kind, *_ in MESSAGE_KINDS:
            out[leg][kind] = None
        return {**out, "in": None, "out": None}
    scale = calls * w.seconds
    for leg, kind, sim, key in MESSAGE_KINDS:
        out[leg][kind] = (b[sim].get(key, 0) - a[sim].get(key, 0)) / scale
    for leg in list(out):
        out[leg]["total"] = sum(out[leg].values())
    return {**out, "in": sum(out[leg]["total"] for leg in INBOUND_LEGS),
            "out": sum(out[leg]["total"] for leg in out if leg not in INBOUND_LEGS)}


def syscall_figures(calls: int, w: Window, messages: dict[str, Any]) -> dict[str, Any]:
    """System calls of the system under test per call-second in the window.

    Always, from /proc/<pid>/io (``procstat.io_sample``): the read family (``syscr``: read, readv,
    pread64, preadv) and the write family (``syscw``: write, writev, pwrite64, pwritev), on sockets
    as on files; not the socket calls (send/sendto/sendmsg, recv/recvfrom/recvmsg), not epoll. Then
    the context switches of all its threads (voluntary: it blocked, e.g. in epoll_wait; involuntary:
    preempted). With --syscalls perf (``w.perf``): every system call (``all``) and the calls of
    ``bench.syscalls.NAMES`` by name; else ``all`` is None."""
    scale = calls * w.seconds
    a, b = w.start.io, w.end.io
    d = b.minus(a) if a is not None and b is not None and scale > 0 else None
    msgs = (messages["in"] or 0.0) + (messages["out"] or 0.0)
    perf = w.perf or {}
    counted = bool(perf.get("available")) and scale > 0
    total = perf["all"] / scale if counted else None
    return {
        "read_family": d.syscr / scale if d else None,
        "write_family": d.syscw / scale if d else None,
        "read_write": (d.syscr + d.syscw) / scale if d else None,
        "read_kib": d.rchar / scale / 1024 if d else None,
        "written_kib": d.wchar / scale / 1024 if d else None,
        "context_switches_voluntary": d.voluntary / scale if d else None,
        "context_switches_involuntary": d.involuntary / scale if d else None,
        "all": total,
        "all_per_message": total / msgs if total is not None and msgs else None,
        "by_name": {name: n / scale for name, n in sorted(perf["by_name"].items(), key=lambda kv: -kv[1]) if n}
        if counted else {},
        "perf": {k: v for k, v in perf.items() if k in ("available", "reason")} if w.perf is not None else None,
    }


def memory_figures(calls: int, idle: TreeSample | None, peak_rss: int) -> dict[str, float | None]:
    """RSS of the workers: after the warm-up, peak in the window, and (peak - idle) per call."""
    idle_rss = idle.rss_workers if idle else None
    mem_per_call = (peak_rss - idle_rss) / calls if idle_rss is not None and peak_rss else None
    return {"idle_rss_mib": idle_rss / 2**20 if idle_rss else None,
            "peak_rss_mib": peak_rss / 2**20 if peak_rss else None,
            "per_call_kib": mem_per_call / 1024 if mem_per_call is not None else None}


def mark_fell_behind(result: dict[str, Any], generators: int) -> None:
    """Adds to ``bench.analysis.analyze``'s result whether each simulator fell behind in the window
    (and the number of load-generator processes)."""
    gen = result["generators"]
    gen["processes"] = generators
    wl = gen["window_frame_lag_ms"]
    gen["fell_behind"] = bool(wl["n"] and (wl["max"] > LAG_FELL_BEHIND_MS
                                           or gen["window_late_share"] > LATE_SHARE_FELL_BEHIND))
    sim = result["openai_sim"]
    ol = sim["window_delta_lag_ms"]
    sim["fell_behind"] = bool(ol["n"] and (ol["max"] > LAG_FELL_BEHIND_MS
                                           or sim["window_late_share"] > LATE_SHARE_FELL_BEHIND))


def summarise(st: Settings, target: str, system: str, tl: Timeline, readings: Readings,
              result: dict[str, Any], profile: dict[str, Any] | None) -> dict[str, Any]:
    """A run's summary: what ran, its timeline, CPU and memory, ``result`` (the verdicts and
    latencies of ``bench.analysis.analyze``, without ``_raw``), the gateway's metrics, the profile."""
    w = readings.window
    mark_fell_behind(result, st.n_generators())
    messages = message_figures(st.calls, w)
    summary = {
        "target": target,
        "system": system,
        # the baselines forward every delta at once, like the gateway's burst playout
        "playout": st.playout if target in ("gateway", "pure") else "burst",
        "calls": st.calls,
        "timeline_s": timeline_figures(tl, st.settle, w.seconds, readings.stop_s),
        "cpu": cpu_figures(st.calls, w, readings.idle_cpu_rate),
        "memory": memory_figures(st.calls, w.idle, readings.peak_rss),
        "messages_per_call_second": messages,
        "syscalls_per_call_second": syscall_figures(st.calls, w, messages),
        **result,
    }
    if target in ("gateway", "burst", "pure"):
        summary["gateway_metrics"] = metrics_summary(w.metrics0, w.metrics1, readings.metrics_final)
    if profile is not None:
        summary["profile"] = profile
    return summary
