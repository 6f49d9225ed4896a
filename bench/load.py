"""Load test: N concurrent simulated phone calls through the real gateway (`gateway serve`).

Three kinds of processes, all on this machine:
  * the OpenAI Realtime simulator (uvloop; TLS with a throw-away CA unless --no-tls),
  * the system under test: `gateway serve --workers W` configured by environment variables
    (--baseline pure: the same with GATEWAY_NO_EXTENSIONS=1; --baseline naive: the bridge in
    bench/baselines/naive_bridge.py; each baseline runs after the gateway, under the same load),
  * Twilio simulators as load generators (uvloop; one process per ~250 calls).
A few warm-up calls run first, then N calls ramp up (--ramp-rate per second), the system settles
(--settle s) and the steady state is measured for --duration s with all N calls up; then every
caller hangs up. Each caller really talks (a 20 ms frame every 20 ms); the model answers with
multi-second responses streamed 5× faster than real time (first audio after 300 ms); a share of
the caller's turns barge in at a random moment, during generation or after it while Twilio still
plays (--barge-in-share), the others wait until the answer has played.

Measured: CPU of the gateway's process tree (supervisor + workers, /proc, sampled at the edges of
the steady-state window) per call-second and calls per core; RSS per call (peak - idle) / N;
latency added in each direction (Twilio sim socket -> OpenAI sim socket and back, joined on
CLOCK_MONOTONIC stamps); interrupt latency (model's speech_started sent -> Twilio's clear
received, and the gateway's own gateway_interrupt_to_clear_seconds); truncation error vs what the
caller heard; loss, duplication, underruns, errors and protocol violations on both sides (all must
be zero); the gateway's event-loop lag; whether the load generators kept up. Correctness verdicts
come from the simulators' records only (the rules of gateway.sim.harness.Stack.judge).

Output: progress while running, a table at the end (with the targets and by how much a missed one
is missed), DIR/load.json (every figure, the options and the environment) and PNG plots.
--profile: py-spy samples every gateway worker during the gateway run's window (bench/profile.py):
DIR/profile-worker-<pid>.txt and, in the report and load.json, where the busy time goes.
Exit status 1 if the gateway under test lost, duplicated or altered audio or provoked any error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from . import procstat
from .profile import DEFAULT_RATE_HZ as DEFAULT_PROFILE_RATE_HZ
from .report import REPO, environment, render_table, write_json

RESULTS = REPO / "bench" / "results"
PUBLIC_HOST = "gateway.bench.test"
PUBLIC_URL = f"https://{PUBLIC_HOST}"
NAIVE_MEDIA_HOST = "media.gateway.bench.test"
AUTH_TOKEN = "bench-auth-token"
GREETING = "Greet the caller and offer help with their order."
# Audio length of the model's successive answers in every session (the greeting is the first).
RESPONSE_MS = (4000, 3000, 5000, 2500, 6000, 3500)
PACE = 5.0
FIRST_AUDIO_MS = 300
CHUNK_MS = 100
WARMUP_CALLS = 4
WARMUP_S = 2.5
CALLS_PER_GENERATOR = 250
TARGETS = ("gateway", "pure", "naive")
SATURATED_BUSY_SHARE = 0.8  # machine CPU busy at or above this: latencies include run-queue waits
LAG_FELL_BEHIND_MS = 50.0
LATE_SHARE_FELL_BEHIND = 0.001

# Targets (reported against, never asserted).
CPU_TARGET_MS = {("passthrough", False): 0.5, ("passthrough", True): 0.8, ("pcm16", False): 1.0, ("pcm16", True): 1.0}
P99_LATENCY_TARGET_MS = 5.0
INTERRUPT_P99_TARGET_MS = 5.0
TRUNCATE_P99_TARGET_MS = 20.0
MEMORY_TARGET_KIB = 64.0
NAIVE_RATIO_TARGET = 5.0


# ==================================================================================== options
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _baselines(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in ("none", "pure", "naive"):
            raise argparse.ArgumentTypeError(f"unknown baseline {name!r} (none, pure, naive)")
    return [n for n in names if n != "none"]


def add_common_arguments(parser: argparse.ArgumentParser, baseline: bool = True) -> None:
    """Options shared by `load` and `sweep`."""
    parser.add_argument("--workers", type=_positive_int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--mode", choices=("passthrough", "pcm16"), default="passthrough",
                        help="GATEWAY_AUDIO_MODE (default passthrough)")
    parser.add_argument("--coalesce", type=_positive_int, default=1, help="GATEWAY_COALESCE_FRAMES (default 1)")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="simulated one-way Twilio latency (40)")
    parser.add_argument("--jitter-ms", type=float, default=10.0, help="± jitter on it (10)")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                        help="TLS between the gateway and the OpenAI simulator (default on, as in production)")
    if baseline:
        parser.add_argument("--baseline", type=_baselines, default=[],
                            help="also run, under the same load: none (default), pure (the gateway with "
                                 "GATEWAY_NO_EXTENSIONS=1), naive (bench/baselines/naive_bridge.py) or "
                                 "a comma list such as pure,naive; reported as ratios")
    parser.add_argument("--barge-in-share", type=float, default=0.5,
                        help="share of caller turns that interrupt the answer (default 0.5)")
    parser.add_argument("--ramp-rate", type=float, default=50.0, help="new calls per second while ramping (50)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between the last call starting and the measurement window (2)")
    parser.add_argument("--generators", type=int, default=0,
                        help=f"Twilio load-generator processes (0 = one per {CALLS_PER_GENERATOR} calls, "
                             "at most one per CPU)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the conversations and simulators")
    parser.add_argument("--log-level", default="INFO", help="GATEWAY_LOG_LEVEL of the gateway (INFO, its default)")
    parser.add_argument("--keep-work", action="store_true", help="keep the raw records and process logs")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=_positive_int, default=200, help="concurrent calls (default 200)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of steady state with all calls up (default 20); each call lasts from "
                             "its start through the end of this window")
    add_common_arguments(parser)
    parser.add_argument("--profile", action="store_true",
                        help="sample every gateway worker with py-spy (--native --idle) during the gateway run's "
                             "measurement window: DIR/profile-worker-<pid>.txt (collapsed stacks) and a breakdown "
                             "of where the busy time goes (idle, send, receive, TLS, fast path, ...)")
    parser.add_argument("--profile-rate", type=_positive_int, default=DEFAULT_PROFILE_RATE_HZ,
                        help=f"py-spy samples per second with --profile (default {DEFAULT_PROFILE_RATE_HZ})")
    parser.add_argument("--out", type=Path, default=RESULTS / "load", help="output directory (bench/results/load)")


# ==================================================================================== processes
class Child:
    """A process this bench started, in its own process group (the gateway's workers join it)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path
        self.status: dict = {}
        self.messages: asyncio.Queue = asyncio.Queue()
        self.reader: asyncio.Future | None = None

    @classmethod
    async def spawn(cls, name: str, argv: list[str], env: dict[str, str], work: Path,
                    json_stdout: bool = True) -> Child:
        log_path = work / f"{name}.log"
        log = open(log_path, "wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE if json_stdout else log, stderr=log,
                env=env, cwd=str(REPO), start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()
        child = cls(name, proc, log_path)
        if json_stdout:
            child.reader = asyncio.ensure_future(child._read())
        return child

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "status" in msg:
                self.status = msg["status"]
            else:
                self.messages.put_nowait(msg)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    async def expect(self, key: str, timeout: float) -> dict:
        """The next message carrying ``key``; fails if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            get = asyncio.ensure_future(self.messages.get())
            died = asyncio.ensure_future(self.proc.wait())
            done, _ = await asyncio.wait({get, died}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
            died.cancel()
            if get in done:
                msg = get.result()
                if key in msg:
                    return msg
                continue
            get.cancel()
            if died in done or self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before {key!r}:\n{self.log_tail()}")
            raise RuntimeError(f"{self.name}: no {key!r} within {timeout:.0f} s:\n{self.log_tail()}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal the process group, wait, then SIGKILL whatever of the group is left."""
        pgid = self.proc.pid
        if self.proc.returncode is None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                pass
        for _ in range(50):  # members of the group may outlive its leader (workers)
            try:
                os.killpg(pgid, signal.SIGKILL if self.proc.returncode is None or _ > 10 else sig)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.1)
        if self.proc.returncode is None:
            await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the bench process dies (Linux; no-op elsewhere),
    so a killed bench never leaves a gateway behind (its supervisor then stops its workers)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


_WORKERS_FLAG: bool | None = None


def workers_flag_supported() -> bool:
    """Whether `gateway serve` has --workers (else GATEWAY_WORKERS is used)."""
    global _WORKERS_FLAG
    if _WORKERS_FLAG is None:
        try:
            out = subprocess.run([*gateway_command(), "serve", "--help"], capture_output=True, text=True,
                                 timeout=60, cwd=REPO, check=False)
            _WORKERS_FLAG = "--workers" in out.stdout
        except (OSError, subprocess.SubprocessError):
            _WORKERS_FLAG = False
    return _WORKERS_FLAG


# ==================================================================================== the plan
@dataclass
class Timeline:
    """Offsets in seconds from T0 (CLOCK_MONOTONIC, fixed when the generators are ready)."""

    calls: int
    duration: float
    ramp_rate: float
    settle: float
    warmup_calls: int = WARMUP_CALLS

    @property
    def idle_sample(self) -> float:
        return WARMUP_S + 1.0 if self.warmup_calls else 0.5

    @property
    def ramp_start(self) -> float:
        return self.idle_sample + 0.5

    @property
    def ramp_s(self) -> float:
        return (self.calls - 1) / self.ramp_rate

    @property
    def window_start(self) -> float:
        return self.ramp_start + self.ramp_s + self.settle

    @property
    def window_end(self) -> float:
        return self.window_start + self.duration

    @property
    def hangup(self) -> float:
        return self.window_end + 0.5


def conversation(rng: random.Random, barge_in_share: float, turns: int = 60) -> list[list]:
    """The caller's turns: ``[kind, ms, speech_ms]``. Turn k reacts to the model's k-th answer
    (k = 0: the greeting), whose length is known: RESPONSE_MS cycles per session."""
    out = []
    for k in range(turns):
        length = RESPONSE_MS[k % len(RESPONSE_MS)]
        generating_ms = length / PACE  # Twilio holds the rest once the model finished generating
        if rng.random() < barge_in_share:
            if rng.random() < 0.5:  # while the model is still generating this answer
                heard = rng.uniform(80, max(100, generating_ms - 160))
            else:  # after generation, while Twilio still plays it
                heard = rng.uniform(generating_ms + 100, length - 600)
            out.append(["heard", round(heard), rng.randint(500, 1200)])
        else:
            out.append(["quiet", rng.randint(300, 900), rng.randint(800, 2000)])
    return out


def build_plan(tl: Timeline, barge_in_share: float, seed: int) -> list[dict]:
    nonce = random.Random(seed).getrandbits(63) ^ int(time.time() * 1000)
    calls = []
    for i in range(tl.warmup_calls):
        calls.append({"sid": f"CA{nonce & (2**64 - 1):016x}{(1 << 63) | i:016x}", "start": 0.05 * i,
                      "duration_ms": int(WARMUP_S * 1000), "turns": [], "warmup": True})
    for i in range(tl.calls):
        start = tl.ramp_start + i / tl.ramp_rate
        rng = random.Random(seed * 1_000_003 + i)
        calls.append({"sid": f"CA{nonce & (2**64 - 1):016x}{i:016x}", "start": start,
                      "duration_ms": int((tl.hangup - start) * 1000),
                      "turns": conversation(rng, barge_in_share), "warmup": False})
    return calls


# ==================================================================================== metrics
def parse_metrics(text: str) -> dict[tuple, float]:
    """Prometheus text -> {(sample name, sorted label items): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def histogram(metrics: dict[tuple, float], name: str) -> list[tuple[float, float]]:
    """[(le, cumulative count)] of one unlabelled histogram, sorted by le."""
    rows = [(float(dict(labels)["le"]), v) for (n, labels), v in metrics.items()
            if n == name + "_bucket" and "le" in dict(labels)]
    return sorted(rows)


def histogram_diff(before: dict, after: dict, name: str) -> dict:
    """Quantile estimates (Prometheus interpolation) of the observations between two scrapes."""
    b = dict(histogram(before, name))
    rows = [(le, c - b.get(le, 0.0)) for le, c in histogram(after, name)]
    total = rows[-1][1] if rows else 0.0
    out: dict[str, Any] = {"n": int(total), "buckets": [[le, int(c)] for le, c in rows]}
    for q, key in ((0.5, "p50"), (0.99, "p99")):
        out[key] = _bucket_quantile(rows, q) if total else None
    nonempty = [le for (le, c), (_, p) in zip(rows, [(0.0, 0.0)] + rows[:-1]) if c > p]
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


def counter_sum(metrics: dict[tuple, float], name: str) -> dict[str, float]:
    """{label values joined by '/': value} of a counter."""
    out = {}
    for (n, labels), v in metrics.items():
        if n == name and v:
            out["/".join(v2 for _, v2 in labels) or "total"] = v
    return out


async def scrape(port: int) -> dict[tuple, float] | None:
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                if resp.status != 200:
                    return None
                return parse_metrics(await resp.text())
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


async def wait_healthy(port: int, child: Child, timeout: float = 60.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if not child.alive:
                raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{child.name} not healthy on port {port} within {timeout:.0f} s:\n{child.log_tail()}")


# ==================================================================================== one run
@dataclass
class Settings:
    """Everything one run needs (``load`` and ``sweep`` build it from their options)."""

    calls: int
    duration: float
    workers: int = 1
    mode: str = "passthrough"
    coalesce: int = 1
    latency_ms: float = 40.0
    jitter_ms: float = 10.0
    tls: bool = True
    barge_in_share: float = 0.5
    ramp_rate: float = 50.0
    settle: float = 2.0
    generators: int = 0
    seed: int = 1
    log_level: str = "INFO"
    keep_work: bool = False
    profile_dir: str | None = None  # --profile: py-spy the gateway's workers in the window, files here
    profile_rate: int = DEFAULT_PROFILE_RATE_HZ

    @classmethod
    def from_args(cls, args: argparse.Namespace, calls: int, duration: float) -> Settings:
        return cls(calls=calls, duration=duration, workers=args.workers, mode=args.mode, coalesce=args.coalesce,
                   latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, tls=args.tls,
                   barge_in_share=args.barge_in_share, ramp_rate=args.ramp_rate, settle=args.settle,
                   generators=args.generators, seed=args.seed, log_level=args.log_level, keep_work=args.keep_work,
                   profile_dir=str(args.out) if getattr(args, "profile", False) else None,
                   profile_rate=getattr(args, "profile_rate", DEFAULT_PROFILE_RATE_HZ))

    def n_generators(self) -> int:
        if self.generators > 0:
            return self.generators
        return max(1, min(os.cpu_count() or 1, math.ceil(self.calls / CALLS_PER_GENERATOR)))


@dataclass
class Sample:
    t: float  # seconds since T0
    up: int
    cpu_s: float
    rss: int


@dataclass
class RunOutput:
    summary: dict
    raw: dict = field(default_factory=dict)  # numpy arrays for the plots (not in the JSON)
    samples: list[Sample] = field(default_factory=list)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for key in list(env):  # nothing of the caller's gateway configuration leaks into the run
        if key.startswith("GATEWAY_") or key in ("TWILIO_AUTH_TOKEN", "OPENAI_API_KEY", "PROMETHEUS_MULTIPROC_DIR"):
            del env[key]
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def run_target(st: Settings, target: str, progress: Callable[[str], None]) -> RunOutput:
    """One complete run against ``target`` (gateway | pure | naive); every process is ended."""
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


async def _run(st: Settings, target: str, work: Path, children: list[Child],
               progress: Callable[[str], None]) -> RunOutput:
    py = sys.executable
    tl = Timeline(st.calls, st.duration, st.ramp_rate, st.settle)
    # ---- OpenAI simulator
    openai_cfg = {"tls": st.tls, "tls_dir": str(work), "sim": {
        "response_ms": list(RESPONSE_MS), "chunk_ms": CHUNK_MS, "pace": PACE, "first_audio_ms": FIRST_AUDIO_MS,
        "seed": st.seed}}
    (work / "openai.json").write_text(json.dumps(openai_cfg))
    openai = await Child.spawn("openai-sim", [py, "-m", "bench.loadsim", "openai", str(work / "openai.json"),
                                              str(work / "openai.out.json")], _child_env({}), work)
    children.append(openai)
    up = await openai.expect("ready", 60)

    # ---- system under test
    port = free_port()
    env = {
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC_URL,
        "GATEWAY_UPSTREAM_URL": up["url"], "OPENAI_API_KEY": up["api_key"],
        "GATEWAY_UPSTREAM_CA_FILE": up["ca_file"], "GATEWAY_GREETING": GREETING,
        "GATEWAY_MAX_CALLS": str(max(100_000, st.calls * 2)), "GATEWAY_AUDIO_MODE": st.mode,
        "GATEWAY_COALESCE_FRAMES": str(st.coalesce), "GATEWAY_TWILIO_LATENCY_MS": str(st.latency_ms),
        "GATEWAY_LOG_LEVEL": st.log_level, "GATEWAY_DRAIN_TIMEOUT_S": "2",
        "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_WORKERS": str(st.workers),
    }
    connect_to: Any = f"http://127.0.0.1:{port}"
    if target == "naive":
        media_port = free_port()
        env.update({"NAIVE_MEDIA_PORT": str(media_port), "NAIVE_MEDIA_URL": f"wss://{NAIVE_MEDIA_HOST}/twilio/media"})
        connect_to = {PUBLIC_HOST: f"http://127.0.0.1:{port}", NAIVE_MEDIA_HOST: f"http://127.0.0.1:{media_port}"}
        argv = [py, "-m", "bench.baselines.naive_bridge"]
        workers_note = "1 process"
    else:
        if target == "pure":
            env["GATEWAY_NO_EXTENSIONS"] = "1"
        argv = [*gateway_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
        if workers_flag_supported():
            argv[-4:-4] = ["--workers", str(st.workers)]
            workers_note = f"--workers {st.workers}"
        else:
            workers_note = f"GATEWAY_WORKERS={st.workers} (`gateway serve` has no --workers yet)"
    sut = await Child.spawn(target, argv, _child_env(env), work, json_stdout=False)
    children.append(sut)
    await wait_healthy(port, sut)
    await asyncio.sleep(0.5)  # let start-up work settle before the idle measurement
    idle_a = procstat.tree_sample(sut.proc.pid)
    idle_a_t = time.monotonic()
    progress(f"[{target}] up on port {port} ({' '.join(Path(a).name if i == 0 else a for i, a in enumerate(argv))}; "
             f"{workers_note}); upstream {up['url']}")

    # ---- load generators
    plan = build_plan(tl, st.barge_in_share, st.seed)
    n_gen = st.n_generators()
    sim = {"webhook_url": PUBLIC_URL + "/twilio/voice", "connect_to": connect_to, "auth_token": AUTH_TOKEN,
           "latency_ms": st.latency_ms, "jitter_ms": st.jitter_ms, "timeout_s": 30.0}
    generators = []
    for g in range(n_gen):
        (work / f"plan{g}.json").write_text(json.dumps({"sim": {**sim, "seed": st.seed * 7919 + g},
                                                        "calls": plan[g::n_gen]}))
        child = await Child.spawn(f"twilio-gen{g}", [py, "-m", "bench.loadsim", "twilio", str(work / f"plan{g}.json"),
                                                     str(work / f"twilio{g}.out.json")], _child_env({}), work)
        children.append(child)
        generators.append(child)
    for child in generators:
        await child.expect("ready", 60)
    await asyncio.sleep(max(0.0, idle_a_t + 1.0 - time.monotonic()))
    idle_b = procstat.tree_sample(sut.proc.pid)
    idle_cpu_rate = ((idle_b.cpu_s - idle_a.cpu_s) / (time.monotonic() - idle_a_t)) if idle_a and idle_b else None

    # ---- run: the schedule is absolute (CLOCK_MONOTONIC), shared by every process
    t0 = time.monotonic() + 0.3
    for child in generators:
        child.send(f"go {t0!r}")
    pids: list[int] = procstat.descendants(sut.proc.pid)
    samples: list[Sample] = []
    marks: dict[str, Any] = {}
    started_cpu = procstat.tree_sample(sut.proc.pid, pids)
    start_cpu = started_cpu.cpu_s if started_cpu else 0.0

    def sample(now_rel: float) -> procstat.TreeSample | None:
        s = procstat.tree_sample(sut.proc.pid, pids)
        if s is not None:
            samples.append(Sample(now_rel, sum(g.status.get("up", 0) for g in generators), s.cpu_s, s.rss_workers))
        return s

    sim_pids = [c.proc.pid for c in [openai, *generators]]

    def sims_cpu() -> float:
        total = 0.0
        for child in [openai, *generators]:
            s = procstat.tree_sample(child.proc.pid, [])
            total += s.cpu_s if s else 0.0
        return total

    async def at(offset: float) -> None:
        await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))

    profiler = None
    if st.profile_dir is not None and target == "gateway":
        from .profile import Profiler

        profiler = Profiler(Path(st.profile_dir), st.profile_rate, max_s=st.duration + 60)

    async def edges() -> None:
        await at(tl.idle_sample)
        marks["idle"] = sample(time.monotonic() - t0)
        if target != "naive":
            await scrape(port)  # warm both ends of /metrics before the measured scrapes
        await at(tl.window_start - 0.25)
        marks["metrics0"] = await scrape(port) if target != "naive" else None
        await at(tl.window_start)
        pids[:] = procstat.descendants(sut.proc.pid)
        marks["cpu0"] = procstat.tree_sample(sut.proc.pid, pids)
        marks["machine0"], marks["sims0"], marks["t0"] = procstat.machine_cpu(), sims_cpu(), time.monotonic()
        sched_pids = [sut.proc.pid, *pids]
        marks["sched0"] = procstat.schedstat(sched_pids), procstat.schedstat(sim_pids)
        if profiler is not None:
            await profiler.start(sut.proc.pid)
        await at(tl.window_end)
        marks["cpu1"] = procstat.tree_sample(sut.proc.pid, pids)
        if profiler is not None:
            profiler.interrupt()
        marks["machine1"], marks["sims1"], marks["t1"] = procstat.machine_cpu(), sims_cpu(), time.monotonic()
        marks["sched1"] = procstat.schedstat(sched_pids), procstat.schedstat(sim_pids)
        marks["metrics1"] = await scrape(port) if target != "naive" else None

    edge_task = asyncio.ensure_future(edges())
    done_waits = [asyncio.ensure_future(g.expect("done", tl.hangup + 120)) for g in generators]
    tty = sys.stdout.isatty()
    last_print = 0.0
    peak_rss = 0
    try:
        while not all(w.done() for w in done_waits):
            await asyncio.sleep(0.5)
            if not sut.alive:
                raise RuntimeError(f"{target} exited ({sut.proc.returncode}) during the run:\n{sut.log_tail()}")
            now_rel = time.monotonic() - t0
            if int(now_rel * 2) % 4 == 0:
                pids[:] = procstat.descendants(sut.proc.pid)
            s = sample(now_rel)
            if s is not None and tl.window_start <= now_rel <= tl.window_end:
                peak_rss = max(peak_rss, s.rss_workers)
            if now_rel - last_print >= (1.0 if tty else 2.0):
                last_print = now_rel
                line = _progress_line(target, tl, now_rel, generators, s, start_cpu, samples)
                if tty:
                    sys.stdout.write("\r" + line.ljust(118)[:118])
                    sys.stdout.flush()
                else:
                    progress(line)
            for w in done_waits:
                if w.done() and w.exception() is not None:
                    raise w.exception()
        if tty:
            sys.stdout.write("\n")
        await asyncio.wait_for(edge_task, 30)
    finally:
        edge_task.cancel()
        for w in done_waits:
            w.cancel()
        profile = await profiler.finish() if profiler is not None else None
    metrics_final = await scrape(port) if target != "naive" else None

    # ---- stop the system under test, then collect the simulators' records
    t_stop = time.monotonic()
    await sut.stop(signal.SIGTERM, 20.0)
    stop_s = time.monotonic() - t_stop
    openai.send("dump")
    await openai.expect("done", 120)
    calls = []
    for g in range(n_gen):
        calls += json.loads((work / f"twilio{g}.out.json").read_bytes())["calls"]
    openai_out = json.loads((work / "openai.out.json").read_bytes())
    progress(f"[{target}] run over; judging {st.calls} calls from the simulators' records ...")

    from .analysis import analyze

    window = (t0 + tl.window_start, t0 + tl.window_end)
    content_checks = not (target == "naive" and st.mode == "pcm16")
    result = analyze(calls, openai_out, st.mode, window, content_checks,
                     clear_reach_s=(st.latency_ms + st.jitter_ms) / 1000 + 0.005)
    raw = result.pop("_raw")

    # ---- resources
    cpu0, cpu1 = marks.get("cpu0"), marks.get("cpu1")
    window_s = marks["t1"] - marks["t0"]
    cpu_s = (cpu1.cpu_s - cpu0.cpu_s) if cpu0 and cpu1 else None
    sys_s = (cpu1.sys_s - cpu0.sys_s) if cpu0 and cpu1 else None
    per_call_s = cpu_s / (st.calls * window_s) if cpu_s is not None else None
    busy0, total0 = marks["machine0"]
    busy1, total1 = marks["machine1"]
    (g0, s0), (g1, s1) = marks["sched0"], marks["sched1"]

    def contention(a: tuple, b: tuple) -> dict:
        wakeups = b[2] - a[2]
        return {"runqueue_wait_share": (b[1] - a[1]) / window_s,  # seconds waiting for a CPU per second
                "runqueue_wait_per_wakeup_ms": (b[1] - a[1]) / wakeups * 1000 if wakeups > 0 else None}

    sut_contention, sims_contention = contention(g0, g1), contention(s0, s1)
    idle = marks.get("idle")
    idle_rss = idle.rss_workers if idle else None
    mem_per_call = (peak_rss - idle_rss) / st.calls if idle_rss is not None and peak_rss else None
    gen = result["generators"]
    gen["processes"] = n_gen
    wl = gen["window_frame_lag_ms"]
    gen["fell_behind"] = bool(wl["n"] and (wl["max"] > LAG_FELL_BEHIND_MS
                                           or gen["window_late_share"] > LATE_SHARE_FELL_BEHIND))
    ol = result["openai_sim"]["window_delta_lag_ms"]
    result["openai_sim"]["fell_behind"] = bool(ol["n"] and (ol["max"] > LAG_FELL_BEHIND_MS or
                                               result["openai_sim"]["window_late_share"] > LATE_SHARE_FELL_BEHIND))
    summary = {
        "target": target,
        "system": workers_note if target != "naive" else "bench/baselines/naive_bridge.py (1 process, asyncio "
                                                          "websockets + json + base64 + audioop)",
        "calls": st.calls,
        "timeline_s": {"warmup_calls": tl.warmup_calls, "ramp": round(tl.ramp_s, 2), "settle": st.settle,
                       "window": round(window_s, 3), "sut_stop": round(stop_s, 2),
                       "ramp_start_at": tl.ramp_start, "window_start_at": round(tl.window_start, 3),
                       "window_end_at": round(tl.window_end, 3), "hangup_at": round(tl.hangup, 3)},
        "cpu": {
            "window_cpu_s": cpu_s,
            # Share spent in the kernel (system calls: socket sends/reads, epoll). On loopback a send
            # also runs the receiving side's TCP processing, so this is higher than over a NIC.
            "kernel_share": sys_s / cpu_s if cpu_s else None,
            "per_call_second_ms": per_call_s * 1000 if per_call_s is not None else None,
            "calls_per_core": 1 / per_call_s if per_call_s else None,
            "idle_cpu_share": idle_cpu_rate,  # cores used with no call at all (timers, supervisor)
            "per_call_second_ms_net_of_idle": ((cpu_s - idle_cpu_rate * window_s) / (st.calls * window_s) * 1000
                                               if cpu_s is not None and idle_cpu_rate is not None else None),
            "processes": len(cpu1.pids) + 1 if cpu1 else None,
            "simulators_cpu_s": marks["sims1"] - marks["sims0"],
            # The simulators' CPU under the same load is this run's yardstick of the host's speed:
            # on the shared bench VM absolute figures drifted by 35 % within an hour while this ratio
            # stayed within ±3 % (for the same options: TLS, mode and coalescing change the sims' work).
            "vs_simulators": (cpu_s / (marks["sims1"] - marks["sims0"])
                              if cpu_s is not None and marks["sims1"] > marks["sims0"] else None),
            "machine_busy_share": (busy1 - busy0) / (total1 - total0) if total1 > total0 else None,
            "cpus": os.cpu_count(),
            "contention": {"system_under_test": sut_contention, "simulators": sims_contention},
            "machine_saturated": bool(total1 > total0 and (busy1 - busy0) / (total1 - total0) >= SATURATED_BUSY_SHARE),
        },
        "memory": {"idle_rss_mib": idle_rss / 2**20 if idle_rss else None,
                   "peak_rss_mib": peak_rss / 2**20 if peak_rss else None,
                   "per_call_kib": mem_per_call / 1024 if mem_per_call is not None else None},
        **result,
    }
    if target != "naive":
        summary["gateway_metrics"] = _metrics_summary(marks.get("metrics0"), marks.get("metrics1"), metrics_final)
    if profile is not None:
        summary["profile"] = profile
    return RunOutput(summary, raw, samples)


def _metrics_summary(m0: dict | None, m1: dict | None, final: dict | None) -> dict:
    out: dict[str, Any] = {}
    if m0 is not None and m1 is not None:
        lag = histogram_diff(m0, m1, "gateway_event_loop_lag_seconds")
        clear = histogram_diff(m0, m1, "gateway_interrupt_to_clear_seconds")
        out["event_loop_lag_ms"] = _scale(lag)
        out["window_interrupt_to_clear_ms"] = _scale(clear)
    if final is not None:
        out["upstream_errors"] = counter_sum(final, "gateway_upstream_errors_total")
        out["protocol_errors"] = counter_sum(final, "gateway_protocol_errors_total")
        out["rejected_calls"] = counter_sum(final, "gateway_rejected_calls_total")
        out["calls_ended"] = counter_sum(final, "gateway_calls_ended_total")
        out["late_audio_dropped"] = sum(counter_sum(final, "gateway_late_audio_dropped_total").values())
        out["interrupts"] = counter_sum(final, "gateway_interrupts_total")
        out["interrupt_to_clear_ms"] = _scale(histogram_diff({}, final, "gateway_interrupt_to_clear_seconds"))
    return out


def _scale(h: dict) -> dict:
    """Seconds -> milliseconds for the quantile fields of ``histogram_diff``."""
    out = dict(h)
    for key in ("p50", "p99", "max_bucket"):
        if out.get(key) is not None:
            out[key] = out[key] * 1000
    out["buckets"] = [["+Inf" if math.isinf(le) else le * 1000, c] for le, c in out["buckets"]]
    return out


def _progress_line(target: str, tl: Timeline, now: float, generators: list[Child], s: procstat.TreeSample | None,
                   start_cpu: float, samples: list[Sample]) -> str:
    if now < tl.ramp_start:
        phase = "warm-up"
    elif now < tl.ramp_start + tl.ramp_s:
        phase = "ramp"
    elif now < tl.window_start:
        phase = "settle"
    elif now <= tl.window_end:
        phase = f"measure {now - tl.window_start:4.1f}/{tl.duration:.0f}s"
    else:
        phase = "hang-up"
    up = sum(g.status.get("up", 0) for g in generators)
    lag = max((g.status.get("max_lag_ms", 0.0) for g in generators), default=0.0)
    cpu = (s.cpu_s - start_cpu) if s else 0.0
    rate = ""
    if len(samples) >= 3 and samples[-1].t > samples[-3].t:
        rate = f" ({(samples[-1].cpu_s - samples[-3].cpu_s) / (samples[-1].t - samples[-3].t) * 100:3.0f}% of a core)"
    rss = f"  RSS {s.rss / 2**20:5.0f} MiB" if s else ""
    return (f"[{target}] {now:6.1f}s  {phase:<18} calls up {up:>5}/{tl.calls}  {target} CPU {cpu:7.2f}s{rate}"
            f"{rss}  gen lag {lag:.0f} ms")


# ==================================================================================== report
def cpu_target_ms(st: Settings) -> float:
    return CPU_TARGET_MS[(st.mode, st.tls)]


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def _miss(value: float, target: float, higher_is_better: bool, unit: str) -> str:
    if higher_is_better:
        return f"short by {target - value:.3g}{unit} ({(target - value) / target:.0%})"
    return f"over by {value - target:.3g}{unit} (+{(value - target) / target:.0%})"


def evaluate_targets(st: Settings, runs: dict[str, dict]) -> list[dict]:
    """The issue's targets against the gateway run (reported, never asserted)."""
    g = runs.get("gateway")
    if g is None:
        return []
    out = []

    def add(name: str, value: float | None, target: float, higher: bool, unit: str, note: str = "") -> None:
        if value is None:
            out.append({"name": name, "value": None, "target": target, "met": None, "note": note or "not measured"})
            return
        met = value >= target if higher else value <= target
        out.append({"name": name, "value": value, "target": target, "higher_is_better": higher, "unit": unit,
                    "met": met, "miss": None if met else _miss(value, target, higher, unit), "note": note})

    cpu_t = cpu_target_ms(st)
    label = f"{st.mode}{' + TLS' if st.tls else ' plain'}"
    add(f"CPU per call-second, {label} (ms)", g["cpu"]["per_call_second_ms"], cpu_t, False, " ms")
    add("calls per core", g["cpu"]["calls_per_core"], 1 / cpu_t * 1000, True, "")
    lat = g["latency_ms"]
    p99 = max((x["p99"] for x in (lat["inbound"], lat["outbound"]) if x["p99"] is not None), default=None)
    note = "target is for 1,000 calls on one worker" if (st.calls != 1000 or st.workers != 1) else ""
    add("p99 added latency, worse direction (ms)", p99, P99_LATENCY_TARGET_MS, False, " ms", note)
    gm = g.get("gateway_metrics", {}).get("interrupt_to_clear_ms", {})
    add("interrupt latency p99 inside the gateway (ms)", gm.get("p99"), INTERRUPT_P99_TARGET_MS, False, " ms",
        "gateway_interrupt_to_clear_seconds (bucket interpolation)")
    tr = g["truncate_error_ms"]
    add("truncate error p99 (ms)", tr["p99"], TRUNCATE_P99_TARGET_MS, False, " ms",
        f"at {st.latency_ms:g} ± {st.jitter_ms:g} ms" + ("" if (st.latency_ms, st.jitter_ms) == (40, 10)
                                                          else "; target is at 40 ± 10 ms"))
    add("memory per call (KiB)", g["memory"]["per_call_kib"], MEMORY_TARGET_KIB, False, " KiB")
    naive = runs.get("naive")
    if naive is not None:
        a, b = g["cpu"]["per_call_second_ms"], naive["cpu"]["per_call_second_ms"]
        add("CPU per call vs naive baseline (×less)", b / a if a and b else None, NAIVE_RATIO_TARGET, True, "×")
    return out


def ratios(runs: dict[str, dict]) -> dict:
    g = runs.get("gateway")
    out = {}
    for name, r in runs.items():
        if name == "gateway" or g is None:
            continue
        a, b = g["cpu"]["per_call_second_ms"], r["cpu"]["per_call_second_ms"]
        ma, mb = g["memory"]["per_call_kib"], r["memory"]["per_call_kib"]
        la = g["latency_ms"]["inbound"]["p99"], g["latency_ms"]["outbound"]["p99"]
        lb = r["latency_ms"]["inbound"]["p99"], r["latency_ms"]["outbound"]["p99"]
        out[name] = {
            "cpu_per_call_second": b / a if a and b else None,  # > 1: the gateway is cheaper
            "memory_per_call": mb / ma if ma and mb else None,
            "p99_inbound_latency": lb[0] / la[0] if la[0] and lb[0] else None,
            "p99_outbound_latency": lb[1] / la[1] if la[1] and lb[1] else None,
        }
    return out


def render_report(st: Settings, runs: dict[str, dict], targets: list[dict], rat: dict) -> str:
    names = list(runs)

    def row(label: str, get: Callable[[dict], Any], digits: int = 2) -> list[str]:
        cells = []
        for n in names:
            try:
                cells.append(_fmt(get(runs[n]), digits))
            except (KeyError, TypeError):
                cells.append("-")
        return [label, *cells]

    def lat(key: str, q: str) -> Callable[[dict], Any]:
        return lambda r: r["latency_ms"][key][q]

    rows = [
        row("concurrent calls", lambda r: r["calls"]),
        row("CPU per call-second (ms)", lambda r: r["cpu"]["per_call_second_ms"], 3),
        row("calls per core", lambda r: r["cpu"]["calls_per_core"], 0),
        row("  net of idle CPU (ms per call-s)", lambda r: r["cpu"]["per_call_second_ms_net_of_idle"], 3),
        row("  idle CPU (% of a core)", lambda r: r["cpu"]["idle_cpu_share"] * 100, 1),
        row("CPU in window (s)", lambda r: r["cpu"]["window_cpu_s"]),
        row("  relative to the simulators' CPU", lambda r: r["cpu"]["vs_simulators"], 3),
        row("  of which in the kernel (%)", lambda r: r["cpu"]["kernel_share"] * 100
            if r["cpu"].get("kernel_share") is not None else None, 0),
        row("RSS idle -> peak (MiB)", lambda r: f"{r['memory']['idle_rss_mib']:.1f} -> {r['memory']['peak_rss_mib']:.1f}"),
        row("memory per call (KiB)", lambda r: r["memory"]["per_call_kib"], 1),
        row("inbound latency p50/p99/max (ms)", lambda r: "/".join(_fmt(r["latency_ms"]["inbound"][q], 2)
                                                                    for q in ("p50", "p99", "max"))),
        row("outbound latency p50/p99/max (ms)", lambda r: "/".join(_fmt(r["latency_ms"]["outbound"][q], 2)
                                                                     for q in ("p50", "p99", "max"))),
        row("speech_started->clear p50/p99 (ms)", lambda r: "/".join(_fmt(r["interrupt_ms_sims"][q], 2)
                                                                      for q in ("p50", "p99"))),
        row("gateway interrupt->clear p50/p99 (ms)", lambda r: "/".join(
            _fmt(r["gateway_metrics"]["interrupt_to_clear_ms"][q], 3) for q in ("p50", "p99"))),
        row("truncate error |ms| p50/p99/max", lambda r: "/".join(_fmt(r["truncate_error_ms"][q], 1)
                                                                 for q in ("p50", "p99", "max"))),
        row("caller speech -> audio stopped p50 (ms)", lambda r: r["stop_ms"]["p50"], 0),
        row("event-loop lag p99 (ms, buckets)", lambda r: r["gateway_metrics"]["event_loop_lag_ms"]["p99"], 1),
        row("turns / barge-ins (clears) / truncates", lambda r: f"{r['conversation']['turns']} / "
                                                                f"{r['conversation']['clears']} / "
                                                                f"{r['conversation']['truncates']}"),
        row("calls with problems", lambda r: f"{r['correctness']['calls_with_problems']}/{r['calls_judged']}"),
        row("audio lost (calls) / gaps / dups", lambda r: f"{r['correctness']['inbound_lost_calls_over_tolerance']} / "
                                                          f"{r['correctness']['outbound_gaps']} / "
                                                          f"{r['correctness']['outbound_duplicates']}"),
        row("underruns", lambda r: r["correctness"]["underruns"]),
        row("upstream errors / violations", lambda r: f"{sum(r['correctness']['upstream_errors'].values())} / "
                                                      f"{r['correctness']['upstream_violations']}"),
        row("Twilio violations", lambda r: r["correctness"]["twilio_violations"]),
        row("Twilio sims: frame lag p99/max (ms)", lambda r: "/".join(
            _fmt(r["generators"]["window_frame_lag_ms"][q], 1) for q in ("p99", "max"))),
        row("  CallRecord late sends / max lag (ms)", lambda r: f"{r['generators']['late_sends']} / "
                                                               f"{r['generators']['max_lag_ms']:.1f}"),
        row("OpenAI sim: delta lag p99/max (ms)", lambda r: "/".join(
            _fmt(r["openai_sim"]["window_delta_lag_ms"][q], 1) for q in ("p99", "max"))),
        row("machine CPU busy in window", lambda r: f"{r['cpu']['machine_busy_share']:.0%} of "
                                                    f"{r['cpu']['cpus']} CPUs"),
        row("waiting for a CPU: system / sims", lambda r: "{:.1%} / {:.1%}".format(
            r["cpu"]["contention"]["system_under_test"]["runqueue_wait_share"],
            r["cpu"]["contention"]["simulators"]["runqueue_wait_share"])),
        row("  per wake-up, system (ms)", lambda r: r["cpu"]["contention"]["system_under_test"]
            ["runqueue_wait_per_wakeup_ms"], 3),
    ]
    lines = [render_table(["figure", *names], rows)]
    for n in names:
        r = runs[n]
        if r["generators"]["fell_behind"] or r["openai_sim"]["fell_behind"]:
            g, o = r["generators"], r["openai_sim"]
            lines.append(f"! {n}: the simulators fell behind in the window (Twilio frames: max "
                         f"{_fmt(g['window_frame_lag_ms']['max'], 0)} ms late, {g['window_late_share']:.2%} > 20 ms; "
                         f"OpenAI deltas: max {_fmt(o['window_delta_lag_ms']['max'], 0)} ms late, "
                         f"{o['window_late_share']:.2%} > 20 ms): latencies include their delay")
        if r["cpu"]["machine_saturated"]:
            lines.append(f"! {n}: the machine was saturated ({r['cpu']['machine_busy_share']:.0%} of {r['cpu']['cpus']} "
                         f"CPUs busy; {n} waited for a CPU "
                         f"{r['cpu']['contention']['system_under_test']['runqueue_wait_share']:.0%} of the time, the "
                         f"simulators {r['cpu']['contention']['simulators']['runqueue_wait_share']:.0%}): latencies "
                         f"include CPU run-queue waits")
        if r["correctness"]["calls_with_problems"]:
            lines.append(f"! {n}: {r['correctness']['calls_with_problems']} calls with problems: "
                         + "; ".join(f"{k} ×{v}" for k, v in list(r["correctness"]["problem_kinds"].items())[:6]))
    if rat:
        lines.append("")
        for name, x in rat.items():
            lines.append(f"vs {name}: {name} uses {_fmt(x['cpu_per_call_second'])}× the gateway's CPU per call-second, "
                         f"{_fmt(x['memory_per_call'])}× its memory per call; p99 latency in/out "
                         f"{_fmt(x['p99_inbound_latency'])}×/{_fmt(x['p99_outbound_latency'])}×")
    if targets:
        lines.append("")
        lines.append("targets (gateway run; reported, not asserted):")
        for t in targets:
            if t["met"] is None:
                verdict = f"n/a  ({t['note']})"
            else:
                verdict = "MET" if t["met"] else f"NOT MET, {t['miss']}"
                if t.get("note"):
                    verdict += f"  [{t['note']}]"
            value = _fmt(t["value"], 3) if t["value"] is not None else "-"
            cmp = "≥" if t.get("higher_is_better") else "≤"
            lines.append(f"  {t['name']:<46} {value:>10}  target {cmp} {_fmt(float(t['target']), 3):<8} {verdict}")
    profile = runs.get("gateway", {}).get("profile")
    if profile is not None:
        from .profile import render as render_profile

        lines += ["", render_profile(profile)]
    return "\n".join(lines)


def latency_histogram(values: np.ndarray) -> dict:
    """Counts over log-spaced bins from 10 µs to 10 s (for the JSON)."""
    edges = np.logspace(-2, 4, 61)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges) if values.size else (np.zeros(60), None)
    return {"edges_ms": [round(float(e), 5) for e in edges], "counts": [int(c) for c in counts]}


def json_run(out: RunOutput) -> dict:
    raw = out.raw
    return {
        **out.summary,
        "distributions": {
            "inbound_latency": latency_histogram(raw["lat_in"]),
            "outbound_latency": latency_histogram(raw["lat_out"]),
            "truncate_error_ms": [round(float(x), 2) for x in raw["truncate_err"]],
            "speech_started_to_clear_ms": [round(float(x), 3) for x in raw["interrupt"]],
        },
        "samples": [[round(s.t, 2), s.up, round(s.cpu_s, 3), s.rss] for s in out.samples],
    }


# ==================================================================================== entry point
def run(args: argparse.Namespace) -> int:
    st = Settings.from_args(args, args.calls, args.duration)
    return asyncio.run(main(st, args.baseline, args.out, not args.no_plots, vars(args)))


async def main(st: Settings, baselines: list[str], out_dir: Path, plots: bool, options: dict) -> int:
    def progress(msg: str) -> None:
        print(msg, flush=True)

    print(f"bench load: {st.calls} calls × {st.duration:g} s steady state, {st.mode}"
          f"{' + TLS' if st.tls else ''}, coalesce {st.coalesce}, Twilio latency {st.latency_ms:g} ± "
          f"{st.jitter_ms:g} ms, barge-in share {st.barge_in_share:g}, {st.n_generators()} load generator(s), "
          f"targets: gateway{''.join(', ' + b for b in baselines)}", flush=True)
    outputs: dict[str, RunOutput] = {}
    for target in ["gateway", *[b for b in baselines if b != "gateway"]]:
        outputs[target] = await run_target(st, target, progress)
    runs = {name: json_run(o) for name, o in outputs.items()}
    targets = evaluate_targets(st, runs)
    rat = ratios(runs)
    print()
    print(render_report(st, runs, targets, rat))
    data = {"bench": "load", "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()
                                         if k not in ("run",)},
            "environment": environment(),
            "settings": st.__dict__, "runs": runs, "ratios": rat, "targets": targets}
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        from .plots import load_plots

        data["plots"] = [str(p) for p in load_plots(outputs, out_dir)]
    path = write_json(out_dir / "load.json", data)
    print(f"\nwrote {path}" + "".join(f"\n      {p}" for p in data.get("plots", [])))
    return 0 if runs["gateway"]["correctness"]["calls_with_problems"] == 0 else 1
