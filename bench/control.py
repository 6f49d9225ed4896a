"""Control plane: how long a command takes to reach its call, by route, one pod alone vs two pods over Redis.

A control command (`GET /calls/{sid}`, `POST /calls/{sid}/interrupt`, ...) lands on whichever worker
the kernel picks; the answer's `route` says how it reached the call: `local` (that worker owns it),
`pod` (another worker of the same `gateway serve`, through the supervisor's hub on a unix socket) or
`cluster` (another pod, through Redis pub/sub). Two configurations, one after the other, each with
fresh processes on 127.0.0.1:
  * embedded: one `gateway serve --workers 2`, no Redis (routes local and pod);
  * redis: a `redis-server` started here (free port, no persistence) and two pods
    (`gateway serve --workers 2` each, GATEWAY_POD_NAME pod-a / pod-b, the same GATEWAY_REDIS_URL):
    routes local, pod and cluster. Skipped, with the reason, when redis-server is not installed.
Each configuration places --calls calls that stay up (the OpenAI simulator and one Twilio simulator
per pod, `python -m bench.loadsim`; with two pods, call i is placed on pod i mod 2), waits until every
pod lists them all, then sends --rounds rounds of `GET /calls/{sid}` for every call, one request at a
time, each on a new TCP connection (so SO_REUSEPORT spreads them over the workers). With two pods,
a call is asked through its own pod in even rounds and through the other pod in odd rounds. One
round per pod before them is not counted (first connections, first commands through hub and Redis).

Measured per route: the client-side wall time of each request (time.perf_counter around the request
and its JSON body, connection set-up included): n, p50, p99, max; and the gateway's own
gateway_control_routing_seconds{route} (request -> owner's answer, inside the asked worker), scraped
from every pod before and after the rounds, summed over the pods, p50/p99 interpolated in its buckets.

Output: progress lines, a table (rows: route; columns per configuration), --out (control.json: every
figure, the samples, the options and the environment) and control.png beside it (unless --no-plots).
Exit status 1 if a request failed (not 200, timed out, or a route that contradicts where the call is),
a configuration could not run, or an expected route never showed up.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .children import Child, child_env, free_port, gateway_command
from .metrics import Metrics, histogram_diff, scale_ms, scrape

WORKERS = 2
ROUTES = ("local", "pod", "cluster")
EXPECTED = {"embedded": ("local", "pod"), "redis": ("local", "pod", "cluster")}
POD_NAMES = ("pod-a", "pod-b")
CONTROL_TOKEN = secrets.token_hex(16)
START_GAP_S = 0.05  # between call starts: the webhooks arrive one at a time, not as a burst
CALL_MARGIN_S = 300.0  # calls outlive the measurement (--budget-s) by this much: none ends mid-run
HISTOGRAM = "gateway_control_routing_seconds"


# ==================================================================================== options
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .report import RESULTS
    from .settings import positive_int

    parser.add_argument("--calls", type=positive_int, default=20, help="calls kept up per configuration (20)")
    parser.add_argument("--rounds", type=positive_int, default=20,
                        help="rounds of GET /calls/{sid}, one request per call each (20)")
    parser.add_argument("--request-timeout", type=float, default=10.0,
                        help="seconds before a request counts as failed (10; the gateway itself gives up on an "
                             "owner after 5 s with a 504)")
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="the rounds of one configuration stop after this many seconds; requests not sent "
                             "count as failed (120)")
    parser.add_argument("--redis-server", default="redis-server",
                        help="redis-server binary, a name on PATH or a path (default redis-server)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the processes' logs (their directory is printed)")
    parser.add_argument("--no-plots", action="store_true", help="skip control.png")
    parser.add_argument("--out", type=Path, default=RESULTS / "control" / "control.json",
                        help="the JSON report; control.png goes beside it (bench/results/control/control.json)")


def run(args: argparse.Namespace) -> int:
    """``python -m bench control``: both configurations, the table, control.json and control.png."""
    from .report import environment, write_json

    redis_binary = shutil.which(args.redis_server)
    print(f"bench control: {args.calls} calls up, {args.rounds} rounds of GET /calls/{{sid}} per call, a new TCP "
          f"connection per request; embedded (1 pod × {WORKERS} workers) then redis (2 pods × {WORKERS} workers); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    configs = asyncio.run(run_configs(args, redis_binary, lambda line: print(line, flush=True)))
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "run"}
    result: dict[str, Any] = {"bench": "control", "options": options, "environment": environment(),
                              "configs": configs, "ok": all(_config_ok(c) for c in configs.values())}
    print()
    print(render_summary(result))
    if not args.no_plots:
        result["plots"] = [str(plot(result, args.out.with_suffix(".png")))]
    path = write_json(args.out, result)
    print(f"\nwrote {path}" + "".join(f"\n      {p}" for p in result.get("plots", [])))
    return 0 if result["ok"] else 1


def _config_ok(config: dict[str, Any]) -> bool:
    return bool(config.get("skipped")) or (not config.get("error") and config["failed"] == 0
                                            and not config["missing_routes"])


# ==================================================================================== the runs
async def run_configs(args: argparse.Namespace, redis_binary: str | None, progress: Any) -> dict[str, Any]:
    """Embedded, then redis (or why it was skipped): each a summary, or the error that stopped it."""
    out: dict[str, Any] = {}
    for name, pods in (("embedded", 1), ("redis", 2)):
        if name == "redis" and redis_binary is None:
            reason = f"{args.redis_server!r} not found (Debian: apt-get install redis-server)"
            progress(f"[redis] skipped: {reason}")
            out[name] = {"skipped": reason}
            continue
        try:
            out[name] = await run_config(name, pods, redis_binary if name == "redis" else None, args, progress)
        except (RuntimeError, OSError, TimeoutError) as exc:
            progress(f"[{name}] failed: {exc}")
            out[name] = {"error": str(exc)}
    return out


@dataclass
class Pod:
    name: str
    port: int
    child: Child

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def run_config(name: str, n_pods: int, redis_binary: str | None, args: argparse.Namespace,
                     progress: Any) -> dict[str, Any]:
    """One configuration from start to end; every process it started is killed when it returns or fails."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-control-{name}-"))
    children: list[Child] = []
    try:
        _, upstream = await start_openai(work, children)
        redis_url = await start_redis(redis_binary, work, children) if redis_binary else ""
        pods = await start_pods(n_pods, upstream, redis_url, work, children)
        progress(f"[{name}] up: " + ", ".join(f"{p.name} on port {p.port}" for p in pods)
                 + (f", {redis_url}" if redis_url else ""))
        sids = call_sids(args.calls)
        home = [i % n_pods for i in range(len(sids))]
        generators = await start_callers(pods, sids, home, args.budget_s + CALL_MARGIN_S, work, children)
        await wait_calls_up(name, pods, generators, len(sids), progress)
        # Not counted: first connections, first commands through the hub and Redis.
        await ask_rounds(name, pods, sids, home, len(pods), args, lambda _: None)
        before = await scrape_all(pods)
        t0 = time.monotonic()
        asked = await ask_rounds(name, pods, sids, home, args.rounds, args, progress)
        elapsed = time.monotonic() - t0
        after = await scrape_all(pods)
        return summarise(name, pods, args, asked, elapsed, before, after)
    finally:
        await asyncio.gather(*(c.stop(signal.SIGKILL, 5.0) for c in children), return_exceptions=True)
        if args.keep_work:
            progress(f"[{name}] logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


async def start_openai(work: Path, children: list[Child]) -> tuple[Child, dict[str, Any]]:
    """The OpenAI simulator (``bench.loadsim openai``, plain ws://): a short greeting, then only the
    callers' silence flows, so the calls stay up without keeping the workers busy."""
    config = {"tls": False, "tls_dir": str(work), "sim": {"response_ms": [1500], "first_audio_ms": 200}}
    (work / "openai.json").write_text(json.dumps(config))
    child = await Child.spawn("openai-sim", [sys.executable, "-m", "bench.loadsim", "openai", str(work / "openai.json"),
                                             str(work / "openai.out.json")], child_env({}), work)
    children.append(child)
    return child, await child.expect("ready", 60)


async def start_redis(binary: str, work: Path, children: list[Child]) -> str:
    """A throw-away ``redis-server`` on a free loopback port (no snapshots, no AOF); its URL once it answers PING."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    port = free_port()
    child = await Child.spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no", "--dir", str(work)], child_env({}), work,
                              json_stdout=False)
    children.append(child)
    url = f"redis://127.0.0.1:{port}/0"
    client = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if not child.alive:
                raise RuntimeError(f"redis-server exited ({child.proc.returncode}):\n{child.log_tail()}")
            try:
                if await client.ping():
                    return url
            except (RedisError, OSError):
                pass
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    raise RuntimeError(f"redis-server did not answer PING on port {port} within 10 s:\n{child.log_tail()}")


async def start_pods(n: int, upstream: dict[str, Any], redis_url: str, work: Path, children: list[Child]) -> list[Pod]:
    """``n`` × ``gateway serve --workers 2``, started together; returns once every worker of every pod is ready.

    TMPDIR points into ``work``: the supervisor's hub socket and metrics directory go with it,
    even when the pod is killed."""
    from .loadrun import AUTH_TOKEN, PUBLIC_URL

    pods = []
    for name in POD_NAMES[:n]:
        port = free_port()
        tmp = work / name
        tmp.mkdir()
        env = {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC_URL,
               "GATEWAY_UPSTREAM_URL": upstream["url"], "OPENAI_API_KEY": upstream["api_key"],
               "GATEWAY_GREETING": "Greet the caller.", "GATEWAY_CONTROL_TOKEN": CONTROL_TOKEN,
               "GATEWAY_LOG_LEVEL": "INFO", "GATEWAY_DRAIN_TIMEOUT_S": "2", "TMPDIR": str(tmp)}
        if redis_url:
            env.update(GATEWAY_REDIS_URL=redis_url, GATEWAY_POD_NAME=name)
        argv = [*gateway_command(), "serve", "--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port)]
        child = await Child.spawn(name, argv, child_env(env), work, json_stdout=False)
        children.append(child)
        pods.append(Pod(name, port, child))
    await asyncio.gather(*(wait_logged(p.child, f"all {WORKERS} workers ready", 60.0) for p in pods))
    return pods


async def wait_logged(child: Child, needle: str, timeout: float) -> None:
    """Until ``needle`` is in the child's log (the supervisor logs "all N workers ready"); fails if it exits."""
    deadline = time.monotonic() + timeout
    while needle not in child.log_path.read_text(errors="replace"):
        if not child.alive:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name}: no {needle!r} within {timeout:.0f} s:\n{child.log_tail()}")
        await asyncio.sleep(0.1)


def call_sids(n: int) -> list[str]:
    nonce = secrets.randbits(64)
    return [f"CA{nonce:016x}{i:016x}" for i in range(n)]


async def start_callers(pods: list[Pod], sids: list[str], home: list[int], call_s: float, work: Path,
                        children: list[Child]) -> list[Child]:
    """One Twilio simulator per pod (``bench.loadsim twilio``) placing that pod's calls: each lasts
    ``call_s`` with no caller turn (silence after the greeting); started as soon as all are loaded."""
    from .loadrun import AUTH_TOKEN, PUBLIC_URL

    generators = []
    for k, pod in enumerate(pods):
        mine = [sid for sid, h in zip(sids, home, strict=True) if h == k]
        plan = {"sim": {"webhook_url": PUBLIC_URL + "/twilio/voice", "connect_to": pod.base, "auth_token": AUTH_TOKEN,
                        "latency_ms": 20.0, "jitter_ms": 5.0, "seed": k, "timeout_s": 30.0},
                "calls": [{"sid": sid, "start": round(j * START_GAP_S, 3), "duration_ms": int(call_s * 1000),
                           "turns": []} for j, sid in enumerate(mine)]}
        (work / f"plan-{pod.name}.json").write_text(json.dumps(plan))
        child = await Child.spawn(f"twilio-{pod.name}", [sys.executable, "-m", "bench.loadsim", "twilio",
                                                         str(work / f"plan-{pod.name}.json"),
                                                         str(work / f"twilio-{pod.name}.out.json")],
                                  child_env({}), work)
        children.append(child)
        generators.append(child)
    for child in generators:
        await child.expect("ready", 60)
    t0 = time.monotonic() + 0.2
    for child in generators:
        child.send(f"go {t0!r}")
    return generators


async def wait_calls_up(name: str, pods: list[Pod], generators: list[Child], n: int, progress: Any) -> None:
    """Until the Twilio side streams every call and every pod's ``GET /calls`` lists them all (with
    Redis: the cluster's registry), so every call can be reached from anywhere."""
    import aiohttp

    deadline = time.monotonic() + 30.0 + n * START_GAP_S
    last = 0.0
    async with _client(10.0) as http:
        while True:
            for child in (*(p.child for p in pods), *generators):
                if not child.alive:
                    raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
            up = sum(g.status.get("up", 0) for g in generators)
            listed: list[int | str] = []  # per pod: the calls it lists, or why it did not answer
            for pod in pods:
                try:
                    async with http.get(f"{pod.base}/calls?limit=1000") as resp:
                        body = await resp.json()
                        listed.append(int(body["total"]) if resp.status == 200 else f"HTTP {resp.status}: {body}")
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                    listed.append(repr(exc)[:100])
            if up == n and all(x == n for x in listed):
                progress(f"[{name}] {n} calls up, listed by every pod")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"calls not all up in time: {up}/{n} streaming, listed {listed} by the pods")
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                progress(f"[{name}] calls streaming {up}/{n}, listed by the pods: {listed}")
            await asyncio.sleep(0.25)


def _client(timeout: float) -> Any:
    """A session that opens a new TCP connection per request (the kernel then picks the worker)."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                 headers={"Authorization": f"Bearer {CONTROL_TOKEN}"},
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def scrape_all(pods: list[Pod]) -> list[Metrics | None]:
    return list(await asyncio.gather(*(scrape(p.port) for p in pods)))


# ==================================================================================== the measurement
@dataclass
class Asked:
    """One request: the pod asked, what came back, its client-side wall time."""

    round: int
    call: int
    pod: str
    status: int | None  # None: no answer (timeout, connection error)
    route: str | None
    ms: float
    error: str | None = None


async def ask_rounds(name: str, pods: list[Pod], sids: list[str], home: list[int], rounds: int,
                     args: argparse.Namespace, progress: Any) -> list[Asked]:
    """Every call once per round, one request at a time. Call i lives on pod ``home[i]``; in round r
    it is asked through pod ``(home[i] + r) mod pods``. Stops at --budget-s."""
    import aiohttp

    out: list[Asked] = []
    deadline = time.monotonic() + args.budget_s
    last = time.monotonic()
    async with _client(args.request_timeout) as http:
        for r in range(rounds):
            for i, sid in enumerate(sids):
                if time.monotonic() > deadline:
                    progress(f"[{name}] --budget-s {args.budget_s:g} s spent: {len(out)} of "
                             f"{rounds * len(sids)} requests sent")
                    return out
                asked = (home[i] + r) % len(pods)
                started = time.perf_counter()
                try:
                    async with http.get(f"{pods[asked].base}/calls/{sid}") as resp:
                        body = await resp.json()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    out.append(Asked(r, i, pods[asked].name, None, None, (time.perf_counter() - started) * 1000,
                                     repr(exc)[:200]))
                    continue
                ms = (time.perf_counter() - started) * 1000
                route = body.get("route") if isinstance(body, dict) else None
                error = _wrong_answer(status, body, route, sid, asked == home[i])
                out.append(Asked(r, i, pods[asked].name, status, route, ms, error))
            if time.monotonic() - last >= 1.0 or r == rounds - 1:
                last = time.monotonic()
                progress(f"[{name}] round {r + 1}/{rounds}: {len(out)} requests, "
                         + ", ".join(f"{k} {v}" for k, v in _route_counts(out).items())
                         + f", failed {sum(a.error is not None for a in out)}")
    return out


def _wrong_answer(status: int, body: Any, route: str | None, sid: str, same_pod: bool) -> str | None:
    """Why an answer is a failure (None: it is right): not 200, another call, or a route that
    contradicts where the call is (its own pod: local or pod; another pod: cluster)."""
    if status != 200 or not isinstance(body, dict):
        return f"status {status}: {str(body)[:200]}"
    if body.get("call_sid") != sid:
        return f"answered for {body.get('call_sid')!r}"
    if route not in (("local", "pod") if same_pod else ("cluster",)):
        return f"route {route!r} asked through {'its own' if same_pod else 'another'} pod"
    return None


def _route_counts(asked: list[Asked]) -> dict[str, int]:
    counts = dict.fromkeys(ROUTES, 0)
    for a in asked:
        if a.error is None and a.route in counts:
            counts[a.route] += 1
    return {k: v for k, v in counts.items() if v}


# ==================================================================================== figures
def summarise(name: str, pods: list[Pod], args: argparse.Namespace, asked: list[Asked], elapsed: float,
              before: list[Metrics | None], after: list[Metrics | None]) -> dict[str, Any]:
    """Client-side quantiles per route, the gateway's histogram per route (summed over the pods),
    failures, and the routes that never showed up."""
    import numpy as np

    routes: dict[str, Any] = {}
    for route in ROUTES:
        ms = np.array([a.ms for a in asked if a.error is None and a.route == route])
        if ms.size:
            routes[route] = {"n": int(ms.size), "p50_ms": _r(np.quantile(ms, 0.5)),
                             "p99_ms": _r(np.quantile(ms, 0.99)), "max_ms": _r(ms.max()),
                             "samples_ms": [_r(x) for x in ms]}
    failures = [a for a in asked if a.error is not None]
    planned = args.rounds * args.calls
    scraped = None not in before and None not in after
    gateway: dict[str, Any] = {}
    if scraped:
        b, a = _sum_metrics(before), _sum_metrics(after)
        for route in ROUTES:
            h = histogram_diff(b, a, HISTOGRAM, {"route": route})
            if h["n"]:
                gateway[route] = scale_ms(h)
    return {
        "pods": [{"name": p.name, "port": p.port, "workers": WORKERS} for p in pods],
        "calls": args.calls, "rounds": args.rounds, "requests_planned": planned, "requests_sent": len(asked),
        "failed": len(failures) + planned - len(asked), "seconds": round(elapsed, 3),
        "failures": [{"round": f.round, "call": f.call, "pod": f.pod, "status": f.status, "error": f.error}
                     for f in failures[:20]],
        "routes": routes, "gateway_histogram_ms": gateway if scraped else None,
        "expected_routes": list(EXPECTED[name]), "missing_routes": [r for r in EXPECTED[name] if r not in routes],
    }


def _r(x: float) -> float:
    return round(float(x), 4)


def _sum_metrics(scrapes: list[Metrics | None]) -> Metrics:
    """The pods' samples added up (the histogram over the whole configuration)."""
    total: Metrics = {}
    for m in scrapes:
        for key, value in (m or {}).items():
            total[key] = total.get(key, 0.0) + value
    return total


# ==================================================================================== report
def render_summary(result: dict[str, Any]) -> str:
    """The table (rows: route; per configuration n, client p50/p99/max, gateway p50/p99) and what went wrong."""
    from .report import fmt, render_table

    configs = {k: v for k, v in result["configs"].items() if "routes" in v}
    headers = ["route"]
    for _ in configs:
        headers += ["n", "p50", "p99", "max", "gw p50", "gw p99"]
    rows = []
    for route in ROUTES:
        row = [route]
        for c in configs.values():
            s = c["routes"].get(route, {})
            g = (c["gateway_histogram_ms"] or {}).get(route, {})
            row += [fmt(s.get("n")), fmt(s.get("p50_ms")), fmt(s.get("p99_ms")), fmt(s.get("max_ms")),
                    fmt(g.get("p50")), fmt(g.get("p99"))]
        rows.append(row)
    title = ("control-plane routing latency of GET /calls/{sid} in ms. n, p50, p99, max: the client's wall time "
             "(a new TCP connection per request); gw: the gateway's gateway_control_routing_seconds, interpolated")
    lines = [title]
    if configs:
        table = render_table(headers, rows)
        lines += ["", _group_header(table.splitlines()[1], [_label(k, c) for k, c in configs.items()]), table]
    for key, c in result["configs"].items():
        if c.get("skipped"):
            lines.append(f"{key}: skipped: {c['skipped']}")
        elif c.get("error"):
            lines.append(f"{key}: FAILED: {c['error']}")
        else:
            lines.append(f"{key}: {c['requests_sent']}/{c['requests_planned']} requests in {c['seconds']:.2f} s, "
                         f"failed {c['failed']}" + (f", routes missing: {', '.join(c['missing_routes'])}"
                                                    if c["missing_routes"] else ""))
            lines += [f"  {f['pod']} round {f['round']} call {f['call']}: {f['error']}" for f in c["failures"][:5]]
    env = result["environment"]
    lines.append(f"machine: {env['cpu_count']} CPUs ({env['cpu_model']}), load average "
                 f"{' '.join(f'{x:.2f}' for x in env['load_average'] or [])}")
    return "\n".join(lines)


def _label(key: str, config: dict[str, Any]) -> str:
    return f"{key} ({len(config['pods'])} pod{'s' if len(config['pods']) > 1 else ''} × {WORKERS} workers)"


def _group_header(rule: str, labels: list[str]) -> str:
    """A line naming each configuration above its six columns (positions from the table's rule line)."""
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    line = ""
    for k, label in enumerate(labels):
        at = starts[1 + 6 * k]
        line = line.ljust(at) + label
    return line


def plot(result: dict[str, Any], path: Path) -> Path:
    """Left: the share of requests slower than x, per route and configuration (client side). Right:
    p50 and p99 per route, client side and the gateway's histogram."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = {"local": "#1f77b4", "pod": "#ff7f0e", "cluster": "#2ca02c"}
    styles = {"embedded": "-", "redis": "--"}
    configs = {k: v for k, v in result["configs"].items() if "routes" in v}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for key, c in configs.items():
        for route, s in c["routes"].items():
            v = np.sort(np.asarray(s["samples_ms"]))
            label = f"{key} {route}: p50 {s['p50_ms']:.2f}, p99 {s['p99_ms']:.2f} ms (n={s['n']})"
            axes[0].loglog(v, 1.0 - np.arange(v.size) / v.size, ls=styles.get(key, ":"), color=colors[route],
                           lw=1.5, label=label)
    for axis in (axes[0].xaxis, axes[1].yaxis):  # 0.6, 2, 10 rather than 6×10⁻¹, 2×10⁰, 10¹
        axis.set_major_formatter(mpl.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        axis.set_minor_formatter(mpl.ticker.FuncFormatter(lambda x, _: f"{x:g}" if f"{x:g}"[0] in "25" else ""))
    axes[0].axhline(0.01, color="gray", ls=":", lw=1)
    axes[0].set_xlabel("client-side wall time per request (ms, log)")
    axes[0].set_ylabel("share of requests slower (log; dotted: the p99 line)")
    axes[0].set_title("GET /calls/{sid}, a new TCP connection per request", fontsize=10)
    axes[0].grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    for k, (key, c) in enumerate(configs.items()):
        gateway = c["gateway_histogram_ms"] or {}
        for j, route in enumerate(ROUTES):
            x = j + (k - (len(configs) - 1) / 2) * 0.3
            s, g = c["routes"].get(route), gateway.get(route)
            if s:
                axes[1].plot([x, x], [s["p50_ms"], s["p99_ms"]], ls=styles.get(key, ":"), color=colors[route], lw=1)
                axes[1].plot([x], [s["p50_ms"]], "o", color=colors[route])
                axes[1].plot([x], [s["p99_ms"]], "^", color=colors[route])
            if g and g.get("p50") is not None:
                axes[1].plot([x + 0.08, x + 0.08], [g["p50"], g["p99"]], "s", color=colors[route], mfc="none")
            if s or g:
                axes[1].annotate(key, (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                                 textcoords="offset points", ha="center", fontsize=7, color="gray")
    axes[1].set_xticks(range(len(ROUTES)), ROUTES)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("ms (log)")
    axes[1].set_title("p50 (o) and p99 (^) client side; □ the gateway's histogram p50/p99", fontsize=10)
    axes[1].grid(True, which="both", alpha=0.3)
    env = result["environment"]
    fig.suptitle(f"control-plane routing latency ({env['cpu_count']} CPUs, load average "
                 f"{' '.join(f'{x:.2f}' for x in env['load_average'] or [])})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
