"""Sampling profile of the gateway's workers during the measurement window (``load --profile``).

`py-spy record --native --idle --format raw` runs against every worker process (the children of
the ``gateway serve`` supervisor) from the start of the steady-state window until its end (SIGINT,
on which py-spy writes its file): DIR/profile-worker-<pid>.txt, one collapsed stack per line,
``root;...;leaf count``. py-spy reads the process's memory from outside (no instrumentation);
``--native`` adds the C frames (libc, OpenSSL, uvloop/libuv, Cython) to the Python ones.
py-spy cannot unwind native stacks with ``--nonblocking``, so each sample briefly stops the
worker (ptrace): the latency figures of a profiled run include those pauses.

``summarize`` turns the samples into: the share of samples where the worker was idle (waiting in
epoll), and how its busy samples split over a few categories (``CATEGORIES``), each sample
counted under its leaf-most frame that a rule recognises, plus the top leaf functions by self
samples. A failure (py-spy missing, no permission to ptrace, ...) never stops the bench: the
summary then says ``{"available": false, "reason": ...}``.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import procstat
from .children import die_with_parent, open_log
from .report import render_table

DEFAULT_RATE_HZ = 200
IDLE = "idle (epoll wait)"
OTHER = "other (unrecognised)"
_LIBC = r"(libc|libpthread)[.-]|$"  # a libc wrapper (or a bare symbol py-spy could not place)

# The categorisation rules, in priority order: (category, function-name regex, location regex),
# both re.match-ed (None: any). A frame belongs to the first category whose regexes both match;
# a stack is counted under its leaf-most frame that belongs to a category (frames that match no
# rule, such as CPython header inlines `Py_DECREF (object.h:537)`, malloc or unnamed libc
# addresses, are skipped on the way from the leaf to the root). A frame reads `name (location)`:
# location is `file:line` for Python and Cython/C with debug info, a library (`libc.so.6`,
# `picows/picows.cpython-311-x86_64-linux-gnu.so`) for other native code.
CATEGORIES: tuple[tuple[str, str | None, str | None], ...] = (
    (IDLE, (r"(__)?(epoll_p?wait2?|select|poll|ppoll|pselect6?|(clock_)?nanosleep|pthread_cond_(timed)?wait"
            r"|__futex_abstimed_wait\w*|sem_(timed)?wait)$"), _LIBC),
    ("send (socket send/write, kernel)", r"(__libc_|__)?(send|sendmsg|sendto|sendmmsg|write|writev)$", _LIBC),
    ("receive (socket recv/read, kernel)", r"(__libc_|__)?(recv|recvmsg|recvfrom|recvmmsg|read|readv)$", _LIBC),
    ("TLS (OpenSSL, ssl transports)",
     r"(SSL_|ssl3_|ssl_|tls1?3?_|EVP_|aesni_|gcm_|ossl_|CRYPTO_|OPENSSL_|BIO_|_ssl__)", None),
    ("TLS (OpenSSL, ssl transports)", None, r"libssl|libcrypto|.*(^|/)_ssl\.|.*sslproto|aiofastnet/ssl_"),
    ("fast path (_fastpath)", None, r".*(^|/)_fastpath/|(b64|framing|g711|ledger|resample)\.(c|pyx):"),
    ("gateway Python", None, r"(.*/)?gateway/"),
    ("JSON (orjson, msgspec)", None, r"(.*/)?(orjson|msgspec)/"),
    ("picows + aiofastnet (WebSocket, transport)", None, r"(.*/)?(picows|aiofastnet)/"),
    ("uvloop / libuv other", r"uv_|uv__", None),
    ("uvloop / libuv other", None, (r"(.*/)?uvloop/|(loop|core|linux|linux-core|stream|timer|tcp|udp|pipe|poll|"
                                    r"async|signal|process|uv-common|loop-watcher|threadpool|getaddrinfo|fs|"
                                    r"idna|inet|strscpy|random|thread|tty)\.c:")),
    ("Python other (interpreter, stdlib, packages)", None, r"libpython|python3?[\d.]*$|<|.*\.py:\d"),
)
_RULES = [(cat, re.compile(n) if n else None, re.compile(w) if w else None) for cat, n, w in CATEGORIES]
_FRAME = re.compile(r"^(.*) \(([^()]*)\)$")
_THREAD = re.compile(r"^(thread|process) \(?\d+")  # py-spy --threads / --subprocesses prefixes


def split_frame(frame: str) -> tuple[str, str]:
    """``"Call.tick (gateway/call.py:487)"`` -> ``("Call.tick", "gateway/call.py:487")``."""
    m = _FRAME.match(frame)
    return (m.group(1), m.group(2)) if m else (frame, "")


def frame_category(frame: str) -> str | None:
    name, where = split_frame(frame)
    for cat, name_re, where_re in _RULES:
        if (name_re is None or name_re.match(name)) and (where_re is None or where_re.match(where)):
            return cat
    return None


def categorize(frames: list[str]) -> str:
    """The category of one stack (root first, leaf last): that of its leaf-most recognised frame."""
    for frame in reversed(frames):
        cat = frame_category(frame)
        if cat is not None:
            return cat
    return OTHER


def leaf_key(frame: str) -> str:
    """A leaf frame without its line number (``"? (libcrypto.so.3)"`` for an unnamed address)."""
    name, where = split_frame(frame)
    where = re.sub(r":\d+$", "", where)
    if re.fullmatch(r"0x[0-9a-f]+", name):
        name = "?"
    return f"{name} ({where})" if where else name


def parse_collapsed(text: str) -> tuple[list[tuple[list[str], int]], int]:
    """py-spy ``--format raw`` -> ([(frames root first, count)], number of threads seen)."""
    stacks: list[tuple[list[str], int]] = []
    threads: set[str] = set()
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        body, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = body.split(";")
        while frames and _THREAD.match(frames[0]):
            threads.add(frames.pop(0))
        if frames:
            stacks.append((frames, n))
    return stacks, max(1, len(threads))


def summarize(stacks: Iterable[tuple[list[str], int]], top: int = 10) -> dict[str, Any]:
    """Idle share of all samples; categories and top leaf functions as shares of busy samples."""
    cats: Counter[str] = Counter()
    leaves: Counter[tuple[str, str]] = Counter()
    for frames, n in stacks:
        cat = categorize(frames)
        cats[cat] += n
        if cat != IDLE:
            leaves[(leaf_key(frames[-1]), cat)] += n
    total = sum(cats.values())
    idle = cats.pop(IDLE, 0)
    busy = total - idle
    return {
        "samples": total,
        "idle_samples": idle,
        "busy_samples": busy,
        "idle_share": idle / total if total else None,
        "busy_share": busy / total if total else None,
        "categories": [{"category": c, "samples": n, "share_of_busy": n / busy, "share_of_all": n / total}
                       for c, n in cats.most_common() if n],
        "top_leaves": [{"frame": f, "category": c, "samples": n, "share_of_busy": n / busy}
                       for (f, c), n in leaves.most_common(top)],
    }


def render(profile: dict[str, Any] | None) -> str:
    """The profile section of the report (a line when it is unavailable)."""
    if not profile:
        return ""
    if not profile.get("available"):
        return f"profile: unavailable ({profile.get('reason', 'unknown')})"
    w = profile["workers"]
    lines = [(f"profile of the gateway worker{'s' if len(w) > 1 else ''} (py-spy, {profile['rate_hz']} Hz, "
              f"{len(w)} process{'es' if len(w) > 1 else ''}, {profile['samples']:,} samples in the window): "
              f"idle {profile['idle_share']:.1%}, busy {profile['busy_share']:.1%}"
              + (f" (idle by worker: {', '.join(format(x['idle_share'], '.0%') for x in w)})" if len(w) > 1 else ""))]
    for x in w:
        if x.get("threads", 1) > 1:
            lines.append(f"! worker {x['pid']}: {x['threads']} Python threads sampled; shares are of thread-samples")
        if x.get("reason"):
            lines.append(f"! worker {x['pid']}: {x['reason']}")
    if profile["busy_samples"]:
        rows = [[c["category"], f"{c['share_of_busy']:.1%}", f"{c['share_of_all']:.1%}", f"{c['samples']:,}"]
                for c in profile["categories"]]
        lines.append(render_table(["where the busy time goes", "of busy", "of all", "samples"], rows))
        lines.append("")
        rows = [[t["frame"], t["category"].split(" (")[0], f"{t['share_of_busy']:.1%}"] for t in profile["top_leaves"]]
        lines.append(render_table(["top leaf functions (self)", "category", "of busy"], rows, align="llr"))
    lines.append("(each sample stops the worker briefly: this run's latencies include py-spy's pauses; "
                 f"stacks in {', '.join(Path(x['file']).name for x in w if x.get('file'))})")
    return "\n".join(lines)


# ================================================================================ running py-spy
def find_py_spy() -> str | None:
    """py-spy next to this interpreter (the venv's wheel), else on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("py-spy")


def worker_pids(root: int) -> list[int]:
    """The direct children of the supervisor (its workers); the root itself if it has none."""
    kids = []
    for pid in procstat.descendants(root):
        st = procstat.read_stat(pid)
        if st is not None and st.ppid == root:
            kids.append(pid)
    return sorted(kids) or [root]


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("py-spy>")]
    for ln in lines:
        if ln.lower().startswith("error"):
            return ln.removeprefix("Error:").strip()[:200]
    return (lines[-1] if lines else "no output")[:200]


class Profiler:
    """py-spy on every worker of ``root``: ``start`` at the window's start, ``interrupt`` at its end,
    then ``finish`` for the summary. Never raises; failures end up in the summary's reason."""

    def __init__(self, out_dir: Path, rate_hz: int = DEFAULT_RATE_HZ, max_s: float = 600.0) -> None:
        self.out_dir, self.rate_hz, self.max_s = Path(out_dir), rate_hz, max_s
        self.procs: dict[int, tuple[asyncio.subprocess.Process, Path, Path]] = {}
        self.reason: str | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    async def start(self, root: int) -> None:
        exe = find_py_spy()
        if exe is None:
            self.reason = "py-spy not found (pip install 'voice-gateway[bench]')"
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for old in self.out_dir.glob("profile-worker-*.txt"):  # an earlier run's workers
                old.unlink()
            env = {**os.environ, "RUST_BACKTRACE": "0"}
            loop = asyncio.get_running_loop()
            self.started_at = loop.time()
            for pid in worker_pids(root):
                out = self.out_dir / f"profile-worker-{pid}.txt"
                err = self.out_dir / f".profile-worker-{pid}.log"
                with open_log(err) as err_f:
                    proc = await asyncio.create_subprocess_exec(
                        exe, "record", "--pid", str(pid), "--native", "--idle", "--threads",
                        "--rate", str(self.rate_hz), "--duration", str(int(self.max_s)),
                        "--format", "raw", "--output", str(out),
                        stdin=asyncio.subprocess.DEVNULL, stdout=err_f, stderr=asyncio.subprocess.STDOUT,
                        env=env, preexec_fn=die_with_parent)
                self.procs[pid] = (proc, out, err)
        except OSError as exc:
            self.reason = f"could not start py-spy: {exc}"

    def interrupt(self) -> None:
        """End sampling now (py-spy writes its file on SIGINT)."""
        if self.stopped_at is None and self.started_at is not None:
            self.stopped_at = asyncio.get_running_loop().time()
        for proc, _, _ in self.procs.values():
            if proc.returncode is None:
                try:
                    proc.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass

    async def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for every py-spy (killing any that hangs) and summarise what they wrote."""
        try:
            return await self._finish(timeout)
        except Exception as exc:  # noqa: BLE001 - the bench goes on without a profile
            return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}

    async def _finish(self, timeout: float) -> dict[str, Any]:
        self.interrupt()
        for proc, _, _ in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                await proc.wait()
        if self.reason:
            return {"available": False, "reason": self.reason}
        if not self.procs:
            return {"available": False, "reason": "no worker process to profile"}
        stacks: list[tuple[list[str], int]] = []
        workers, failures = [], []
        for pid, (proc, out, err) in self.procs.items():
            log = err.read_text(errors="replace") if err.exists() else ""
            err.unlink(missing_ok=True)
            text = out.read_text(errors="replace") if out.exists() else ""
            mine, threads = parse_collapsed(text)
            if not mine:
                failures.append(f"worker {pid}: py-spy exit {proc.returncode}: {_first_error(log)}")
                continue
            s = summarize(mine)
            m = re.search(r"Samples: (\d+) Errors: (\d+)", log)
            workers.append({"pid": pid, "file": str(out), "samples": s["samples"], "idle_share": s["idle_share"],
                            "threads": threads, "py_spy_errors": int(m.group(2)) if m else None,
                            "py_spy_exit": proc.returncode})
            stacks += mine
        if not workers:
            return {"available": False, "reason": "; ".join(failures)}
        sampled_s = self.stopped_at - self.started_at if self.stopped_at and self.started_at is not None else None
        result = {"available": True, "tool": "py-spy record --native --idle --threads --format raw",
                  "rate_hz": self.rate_hz,
                  "sampled_s": round(sampled_s, 2) if sampled_s is not None else None,
                  "workers": workers, **summarize(stacks)}
        if failures:
            result["failures"] = failures
        return result

