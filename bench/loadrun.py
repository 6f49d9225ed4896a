"""One load run against one target (gateway | pure | naive | sdk): every process started, the timeline
followed, the calls judged, the figures computed, every process ended.

``run_target`` is the entry point; ``_run`` reads top to bottom as a run happens:

    prepare             the plan of every call (``bench.loadplan``)
    OpenAI simulator    ``bench.loadsim openai`` (the system under test needs its URL)
    system under test   ``gateway serve`` or a baseline; its idle CPU is counted from here ...
    load generators     ``bench.loadsim twilio``; ... to here (at least 1 s)
    go                  T0: the generators start their calls on one shared CLOCK_MONOTONIC schedule
    warm up             the warm-up calls; then the idle RSS, and a first /metrics scrape
    ramp, settle        N calls start at --ramp-rate, then --settle s; /metrics scraped just before ...
    measure             ... the window: CPU, machine, scheduler, /proc/<pid>/io, the simulators'
                        message counts and /metrics read at both edges (--syscalls perf: perf stat
                        counts system calls in between)
    hang up             every caller hangs up; until then: progress, samples, fail fast (``_watch``)
    stop, collect       the system under test stops; the simulators' records are read back
    analyse             ``bench.analysis`` judges every call from those records
    summarise           ``bench.loadfigures``: CPU, memory, timeline, the gateway's metrics
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procstat
from .baselines import sdk_setup
from .children import Child, child_env, free_port, gateway_command, wait_healthy, workers_flag_supported
from .loadfigures import Edge, Readings, RunOutput, Sample, Window, summarise
from .loadplan import FIRST_AUDIO_MS, PACE, RESPONSE_MS, Timeline, build_plan
from .metrics import Metrics, scrape
from .profile import Profiler
from .settings import Settings
from .syscalls import SyscallCounter

PUBLIC_HOST = "gateway.bench.test"
PUBLIC_URL = f"https://{PUBLIC_HOST}"
NAIVE_MEDIA_HOST = "media.gateway.bench.test"
AUTH_TOKEN = secrets.token_hex(16)  # the simulated Twilio account's auth token (signatures, call tokens)
GREETING = "Greet the caller and offer help with their order."
NAIVE_SYSTEM = "bench/baselines/naive_bridge.py (1 process, asyncio websockets + json + base64 + audioop)"
SCRAPED = ("gateway", "burst", "pure")  # targets with the gateway's /metrics

Progress = Callable[[str], None]


async def run_target(st: Settings, target: str, progress: Progress) -> RunOutput:
    """One complete run against ``target`` (gateway | pure | naive | sdk); every process is ended."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-load-{target}-"))
    children: list[Child] = []
    try:
        return await _run(st, target, work, children, progress)
    finally:
        await asyncio.gather(*(c.stop(signal.SIGKILL, 5.0) for c in children),
                             return_exceptions=True)
        if not st.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            progress(f"[{target}] raw records and logs kept in {work}")


async def _run(st: Settings, target: str, work: Path, children: list[Child], progress: Progress) -> RunOutput:
    """The steps of one run, in the order they happen (see the module docstring)."""
    tl = Timeline(st.calls, st.duration, st.ramp_rate, st.settle)
    plan = build_plan(tl, st.barge_in_share, st.seed, st.rebarge_share)
    # start the processes: the system under test needs the OpenAI simulator's URL, the generators its port
    openai, upstream = await start_openai_sim(st, work, children)
    port = free_port()
    sut_spec = sut_command(st, target, port, upstream)
    sut, idle_from = await start_system_under_test(target, sut_spec, port, work, children, progress)
    generators = await start_generators(st, plan, sut_spec.connect_to, work, children)
    idle_cpu_rate = await idle_cpu(sut, idle_from)
    # run the timeline: warm up, ramp, settle, measure, hang up
    run = RunningLoad(st, target, tl, port, sut, openai, generators, progress, work)
    run.go()
    window, peak_rss, profile = await run.follow_timeline()
    metrics_final = await scrape(port) if run.scrapes else None
    # stop, collect, analyse, summarise
    stop_s = await stop_and_dump(sut, openai)
    calls, openai_out = read_records(work, len(generators))
    progress(f"[{target}] run over; judging {st.calls} calls from the simulators' records ...")
    result = analyse(st, target, tl, run.t0, calls, openai_out)
    raw = result.pop("_raw")
    readings = Readings(window, idle_cpu_rate, peak_rss, stop_s, metrics_final)
    return RunOutput(summarise(st, target, sut_spec.system, tl, readings, result, profile), raw, run.samples)


# ==================================================================================== starting the processes
async def start_openai_sim(st: Settings, work: Path, children: list[Child]) -> tuple[Child, dict[str, Any]]:
    """The OpenAI Realtime simulator, listening; its ``ready`` message (url, api_key, ca_file)."""
    config = {"tls": st.tls, "tls_dir": str(work), "sim": {
        "response_ms": list(RESPONSE_MS), "chunk_ms": st.delta_ms, "pace": PACE, "first_audio_ms": FIRST_AUDIO_MS,
        "seed": st.seed}}
    (work / "openai.json").write_text(json.dumps(config))
    openai = await Child.spawn("openai-sim", [sys.executable, "-m", "bench.loadsim", "openai",
                                              str(work / "openai.json"), str(work / "openai.out.json")],
                               child_env({}), work)
    children.append(openai)
    return openai, await openai.expect("ready", 60)


@dataclass
class SutCommand:
    """How to start a target and reach it."""

    argv: list[str]
    env: dict[str, str]  # on top of child_env
    connect_to: str | dict[str, str]  # where the Twilio simulator connects (per host name for the naive bridge)
    note: str  # how its workers are set (progress line, and the summary's "system" of the gateway)
    system: str  # the summary's "system"


def sut_command(st: Settings, target: str, port: int, upstream: dict[str, Any]) -> SutCommand:
    """The command line and environment of ``target`` listening on ``port``, secure mode, bridging
    to the OpenAI simulator ``upstream``."""
    env = {
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC_URL,
        "GATEWAY_UPSTREAM_URL": upstream["url"], "OPENAI_API_KEY": upstream["api_key"],
        "GATEWAY_UPSTREAM_CA_FILE": upstream["ca_file"], "GATEWAY_GREETING": GREETING,
        "GATEWAY_MAX_CALLS": str(max(100_000, st.calls * 2)), "GATEWAY_AUDIO_MODE": st.mode,
        "GATEWAY_COALESCE_FRAMES": str(st.coalesce), "GATEWAY_TWILIO_LATENCY_MS": str(st.latency_ms),
        "GATEWAY_LOG_LEVEL": st.log_level, "GATEWAY_DRAIN_TIMEOUT_S": "2",
        "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_WORKERS": str(st.workers),
        "GATEWAY_PLAYOUT": "burst" if target == "burst" else st.playout,
    }
    if target == "naive":
        media_port = free_port()
        env.update({"NAIVE_MEDIA_PORT": str(media_port), "NAIVE_MEDIA_URL": f"wss://{NAIVE_MEDIA_HOST}/twilio/media"})
        connect_to = {PUBLIC_HOST: f"http://127.0.0.1:{port}", NAIVE_MEDIA_HOST: f"http://127.0.0.1:{media_port}"}
        return SutCommand([sys.executable, "-m", "bench.baselines.naive_bridge"], env, connect_to, "1 process",
                          NAIVE_SYSTEM)
    if target == "sdk":  # webhook and media socket on one port, as the SDK's Twilio example serves them
        env["NODE_EXTRA_CA_CERTS"] = upstream["ca_file"]  # the simulator's throw-away CA (TLS runs)
        return SutCommand(["node", str(sdk_setup.SERVER)], env, f"http://127.0.0.1:{port}", "1 process",
                          sdk_setup.describe())
    if target == "pure":
        env["GATEWAY_NO_EXTENSIONS"] = "1"
    argv = [*gateway_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers_flag_supported():
        argv[-4:-4] = ["--workers", str(st.workers)]
        note = f"--workers {st.workers}"
    else:
        note = f"GATEWAY_WORKERS={st.workers} (`gateway serve` has no --workers yet)"
    return SutCommand(argv, env, f"http://127.0.0.1:{port}", note, note)


async def start_system_under_test(target: str, spec: SutCommand, port: int, work: Path, children: list[Child],
                                  progress: Progress) -> tuple[Child, tuple[procstat.TreeSample | None, float]]:
    """``target`` running and healthy, then settled for 0.5 s; the first idle CPU reading and its time."""
    env = child_env(spec.env)
    if not env.get("NODE_EXTRA_CA_CERTS"):
        env.pop("NODE_EXTRA_CA_CERTS", None)
    env.pop("DEBUG", None)  # the SDK logs every message with `debug` when DEBUG matches
    if os.environ.get("BENCH_GATEWAY"):
        env["PYTHONSAFEPATH"] = "1"  # its workers (`python -m ...`) must not import this checkout
    sut = await Child.spawn(target, spec.argv, env, work, json_stdout=False)
    children.append(sut)
    await wait_healthy(port, sut)
    await asyncio.sleep(0.5)  # let start-up work settle before the idle measurement
    idle_from = procstat.tree_sample(sut.proc.pid), time.monotonic()
    command = " ".join(Path(a).name if i == 0 and not os.environ.get("BENCH_GATEWAY") else a
                       for i, a in enumerate(spec.argv))
    progress(f"[{target}] up on port {port} ({command}; {spec.note}); upstream {spec.env['GATEWAY_UPSTREAM_URL']}")
    return sut, idle_from


async def start_generators(st: Settings, plan: list[dict[str, Any]], connect_to: str | dict[str, str],
                           work: Path, children: list[Child]) -> list[Child]:
    """The Twilio load generators, each with its share of the plan, loaded and waiting for ``go``."""
    n_gen = st.n_generators()
    sim = {"webhook_url": PUBLIC_URL + "/twilio/voice", "connect_to": connect_to, "auth_token": AUTH_TOKEN,
           "latency_ms": st.latency_ms, "jitter_ms": st.jitter_ms, "timeout_s": 30.0}
    generators = []
    for g in range(n_gen):
        (work / f"plan{g}.json").write_text(json.dumps({"sim": {**sim, "seed": st.seed * 7919 + g},
                                                        "calls": plan[g::n_gen]}))
        child = await Child.spawn(f"twilio-gen{g}", [sys.executable, "-m", "bench.loadsim", "twilio",
                                                     str(work / f"plan{g}.json"), str(work / f"twilio{g}.out.json")],
                                  child_env({}), work)
        children.append(child)
        generators.append(child)
    for child in generators:
        await child.expect("ready", 60)
    return generators


async def idle_cpu(sut: Child, idle_from: tuple[procstat.TreeSample | None, float]) -> float | None:
    """Cores the system under test used with no call at all, over at least 1 s from ``idle_from``."""
    idle_a, idle_a_t = idle_from
    await asyncio.sleep(max(0.0, idle_a_t + 1.0 - time.monotonic()))
    idle_b = procstat.tree_sample(sut.proc.pid)
    return ((idle_b.cpu_s - idle_a.cpu_s) / (time.monotonic() - idle_a_t)) if idle_a and idle_b else None


# ==================================================================================== the timeline
class RunningLoad:
    """The run from T0 to the hang-up: follows the schedule the generators share, samples the
    system under test and reports progress."""

    def __init__(self, st: Settings, target: str, tl: Timeline, port: int, sut: Child, openai: Child,
                 generators: list[Child], progress: Progress, work: Path) -> None:
        self.st, self.target, self.tl, self.port = st, target, tl, port
        self.sut, self.openai, self.generators, self.progress = sut, openai, generators, progress
        self.scrapes = target in SCRAPED  # the baselines have no /metrics
        self.syscalls = SyscallCounter(work) if st.syscalls == "perf" else None
        self.t0 = 0.0
        self.start_cpu = 0.0
        self.pids: list[int] = []  # the system under test's descendants (refreshed while running)
        self.samples: list[Sample] = []
        self.sim_pids = [c.proc.pid for c in [openai, *generators]]
        self.profiler: Profiler | None = None
        if st.profile_dir is not None and target == "gateway":
            self.profiler = Profiler(Path(st.profile_dir), st.profile_rate, max_s=st.duration + 60)

    def go(self) -> None:
        """T0 is 0.3 s from now: every generator starts its calls on that schedule."""
        self.t0 = time.monotonic() + 0.3
        for child in self.generators:
            child.send(f"go {self.t0!r}")
        self.pids = procstat.descendants(self.sut.proc.pid)
        started = self.sut_tree()
        self.start_cpu = started.cpu_s if started else 0.0

    async def follow_timeline(self) -> tuple[Window, int, dict[str, Any] | None]:
        """Warm up, ramp, settle and measure while ``_watch`` samples until every caller hung up:
        the window's readings, the workers' peak RSS in it and the profile (``--profile``)."""
        phases = asyncio.ensure_future(self._phases())
        try:
            peak_rss = await self._watch()
            window = await asyncio.wait_for(phases, 30)
        finally:
            phases.cancel()
            profile = await self.profiler.finish() if self.profiler is not None else None
        return window, peak_rss, profile

    async def _phases(self) -> Window:
        idle = await self.warm_up()
        metrics0 = await self.ramp_and_settle()
        return await self.measure(idle, metrics0)

    async def warm_up(self) -> procstat.TreeSample | None:
        """Until the warm-up calls ended: the idle sample (RSS after warm-up); then warm both ends
        of /metrics before the measured scrapes."""
        await self.at(self.tl.idle_sample)
        idle = self.sample(time.monotonic() - self.t0)
        if self.scrapes:
            await scrape(self.port)
        return idle

    async def ramp_and_settle(self) -> Metrics | None:
        """While the calls start and settle; /metrics just before the window."""
        await self.at(self.tl.window_start - 0.25)
        return await scrape(self.port) if self.scrapes else None

    async def measure(self, idle: procstat.TreeSample | None, metrics0: Metrics | None) -> Window:
        """Both edges of the window (py-spy samples, perf counts in between with --profile,
        --syscalls perf)."""
        await self.at(self.tl.window_start)
        self.pids[:] = procstat.descendants(self.sut.proc.pid)
        cpu0 = self.sut_tree()
        sched_pids = [self.sut.proc.pid, *self.pids]
        start = self.read_edge(cpu0, sched_pids)
        start.counts = await self.sim_counts()
        if self.syscalls is not None:
            await self.syscalls.start(sched_pids)
        if self.profiler is not None:
            await self.profiler.start(self.sut.proc.pid)
        await self.at(self.tl.window_end)
        cpu1 = self.sut_tree()
        if self.profiler is not None:
            self.profiler.interrupt()
        end = self.read_edge(cpu1, sched_pids)
        end.counts = await self.sim_counts()
        syscalls = await self.syscalls.stop() if self.syscalls is not None else None
        metrics1 = await scrape(self.port) if self.scrapes else None
        return Window(idle, metrics0, start, end, metrics1, syscalls)

    async def _watch(self) -> int:
        """Every 0.5 s until every generator is done (every caller hung up): fails fast if the
        system under test died or a generator failed; samples; progress. Returns the peak RSS of
        the workers inside the window."""
        done_waits = [asyncio.ensure_future(g.expect("done", self.tl.hangup + 120)) for g in self.generators]
        tty = sys.stdout.isatty()
        last_print = 0.0
        peak_rss = 0
        try:
            while not all(w.done() for w in done_waits):
                await asyncio.sleep(0.5)
                if not self.sut.alive:
                    raise RuntimeError(f"{self.target} exited ({self.sut.proc.returncode}) during the run:\n"
                                       f"{self.sut.log_tail()}")
                now_rel = time.monotonic() - self.t0
                if int(now_rel * 2) % 4 == 0:
                    self.pids[:] = procstat.descendants(self.sut.proc.pid)
                s = self.sample(now_rel)
                if s is not None and self.tl.window_start <= now_rel <= self.tl.window_end:
                    peak_rss = max(peak_rss, s.rss_workers)
                if now_rel - last_print >= (1.0 if tty else 2.0):
                    last_print = now_rel
                    self.show_progress(self.progress_line(now_rel, s), tty)
                for w in done_waits:
                    if w.done() and (exc := w.exception()) is not None:
                        raise exc
            if tty:
                sys.stdout.write("\n")
        finally:
            for w in done_waits:
                w.cancel()
        return peak_rss

    # ---- readings
    async def at(self, offset: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + offset - time.monotonic()))

    def sut_tree(self) -> procstat.TreeSample | None:
        return procstat.tree_sample(self.sut.proc.pid, self.pids)

    def calls_up(self) -> int:
        return sum(g.status.get("up", 0) for g in self.generators)

    def sample(self, now_rel: float) -> procstat.TreeSample | None:
        s = self.sut_tree()
        if s is not None:
            self.samples.append(Sample(now_rel, self.calls_up(), s.cpu_s, s.rss_workers))
        return s

    def sims_cpu(self) -> float:
        total = 0.0
        for child in [self.openai, *self.generators]:
            s = procstat.tree_sample(child.proc.pid, [])
            total += s.cpu_s if s else 0.0
        return total

    def read_edge(self, cpu: procstat.TreeSample | None, sched_pids: list[int]) -> Edge:
        machine, sims_cpu_s, t = procstat.machine_cpu(), self.sims_cpu(), time.monotonic()
        return Edge(cpu, machine, sims_cpu_s, t, procstat.schedstat(sched_pids), procstat.schedstat(self.sim_pids),
                    procstat.io_sample(sched_pids))

    async def sim_counts(self) -> dict[str, dict[str, int]]:
        """The messages every simulator counted so far (``bench.loadsim``: ``counts``), the Twilio
        generators' summed."""
        sims = [self.openai, *self.generators]
        for child in sims:
            child.send("counts")
        replies = await asyncio.gather(*(child.expect("counts", 30) for child in sims))
        twilio: dict[str, int] = {}
        for reply in replies[1:]:
            for key, value in reply["counts"].items():
                twilio[key] = twilio.get(key, 0) + value
        return {"openai": replies[0]["counts"], "twilio": twilio}

    # ---- progress
    def progress_line(self, now: float, s: procstat.TreeSample | None) -> str:
        target, samples = self.target, self.samples
        lag = max((g.status.get("max_lag_ms", 0.0) for g in self.generators), default=0.0)
        cpu = (s.cpu_s - self.start_cpu) if s else 0.0
        rate = ""
        if len(samples) >= 3 and samples[-1].t > samples[-3].t:
            share = (samples[-1].cpu_s - samples[-3].cpu_s) / (samples[-1].t - samples[-3].t)
            rate = f" ({share * 100:3.0f}% of a core)"
        rss = f"  RSS {s.rss / 2**20:5.0f} MiB" if s else ""
        return (f"[{target}] {now:6.1f}s  {self.tl.phase(now):<18} calls up {self.calls_up():>5}/{self.tl.calls}  "
                f"{target} CPU {cpu:7.2f}s{rate}{rss}  gen lag {lag:.0f} ms")

    def show_progress(self, line: str, tty: bool) -> None:
        if tty:
            sys.stdout.write("\r" + line.ljust(118)[:118])
            sys.stdout.flush()
        else:
            self.progress(line)


# ==================================================================================== after the hang-up
async def stop_and_dump(sut: Child, openai: Child) -> float:
    """Stops the system under test (SIGTERM: it drains), then has the OpenAI simulator write its
    records; the seconds the system under test took to stop."""
    t_stop = time.monotonic()
    await sut.stop(signal.SIGTERM, 20.0)
    stop_s = time.monotonic() - t_stop
    openai.send("dump")
    await openai.expect("done", 120)
    return stop_s


def read_records(work: Path, generators: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every call's record from the Twilio generators, and the OpenAI simulator's records."""
    calls = []
    for g in range(generators):
        calls += json.loads((work / f"twilio{g}.out.json").read_bytes())["calls"]
    return calls, json.loads((work / "openai.out.json").read_bytes())


def analyse(st: Settings, target: str, tl: Timeline, t0: float, calls: list[dict[str, Any]],
            openai_out: dict[str, Any]) -> dict[str, Any]:
    """``bench.analysis.analyze`` over the window (the naive bridge resamples pcm16 its own way:
    its audio cannot be located byte-wise, only counted; the sdk bridge is always μ-law both ways)."""
    from .analysis import analyze

    window = (t0 + tl.window_start, t0 + tl.window_end)
    content_checks = not (target == "naive" and st.mode == "pcm16")
    return analyze(calls, openai_out, st.mode, window, content_checks,
                   clear_reach_s=(st.latency_ms + st.jitter_ms) / 1000 + 0.005)
