"""``--syscalls perf``: every system call of the system under test in the measurement window, by name.

``/proc/<pid>/io`` (``bench.procstat.io_sample``, always read) counts only the read/write family:
the gateway's sends go through send(2)/sendto(2), which it does not see. With ``--syscalls perf``
the bench also runs ``perf stat`` on the kernel's syscall tracepoints (``raw_syscalls:sys_enter``
for the total, ``syscalls:sys_enter_<name>`` for the names in ``NAMES``) attached to every process
of the system under test from the window's start to its end, in counting mode (no samples, no
per-event records). Exact, but not free: while a syscall tracepoint is enabled every system call on
the machine takes the kernel's slow entry path (measured here: getppid 254 → 411 ns); at 200 calls
the gateway's CPU per call-second read 10-20 % high in such a run: take CPU figures from runs
without it. Needs ``perf`` and tracefs (root, or ``perf_event_paranoid`` ≤ 1 and a readable tracefs).
"""
from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

from .children import Child, child_env

# The calls an event loop makes per message, and a few that show where time goes otherwise.
NAMES = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "epoll_wait",
         "epoll_pwait", "epoll_pwait2", "epoll_ctl", "io_uring_enter", "futex", "getpid", "clock_gettime",
         "mprotect", "madvise", "munmap", "mmap", "brk")
TRACEFS = (Path("/sys/kernel/tracing/events"), Path("/sys/kernel/debug/tracing/events"))


def _events_dir() -> Path | None:
    for path in TRACEFS:
        if (path / "raw_syscalls" / "sys_enter").is_dir():
            return path
    return None


def unavailable() -> str | None:
    """Why ``perf stat`` cannot count system calls here (None: it can)."""
    if shutil.which("perf") is None:
        return "perf is not installed"
    if _events_dir() is None:
        return "no syscall tracepoints (tracefs not mounted or not readable)"
    return None


def events() -> list[str]:
    """The total and every name of ``NAMES`` this kernel has a tracepoint for."""
    base = _events_dir()
    names = [n for n in NAMES if base is not None and (base / "syscalls" / f"sys_enter_{n}").is_dir()]
    return ["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{n}" for n in names)]


def parse(text: str) -> dict[str, Any]:
    """``perf stat -x,`` output → ``{"all": total, "by_name": {name: count}}`` (None where not counted)."""
    total: int | None = None
    by_name: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if line.startswith("#") or len(fields) < 3:
            continue
        value, event = fields[0], fields[2]
        if not value.strip().isdigit():
            continue  # <not counted>, <not supported>
        if event == "raw_syscalls:sys_enter":
            total = int(value)
        elif event.startswith("syscalls:sys_enter_"):
            by_name[event.removeprefix("syscalls:sys_enter_")] = int(value)
    return {"all": total, "by_name": by_name}


class SyscallCounter:
    """``perf stat`` on the syscall tracepoints of some processes, between ``start`` and ``stop``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.out = work / "perf-syscalls.csv"
        self.child: Child | None = None
        self.reason = unavailable()

    async def start(self, pids: list[int]) -> None:
        if self.reason is not None or not pids:
            return
        argv = ["perf", "stat", "-x,", "--no-big-num", "-o", str(self.out), "-e", ",".join(events()),
                "-p", ",".join(str(p) for p in pids)]
        self.child = await Child.spawn("perf-syscalls", argv, child_env({}), self.work, json_stdout=False)

    async def stop(self) -> dict[str, Any]:
        """The counts (``parse``), or ``{"available": False, "reason": ...}``."""
        if self.child is None:
            return {"available": False, "reason": self.reason or "no process to count"}
        await self.child.stop(signal.SIGINT, 10.0)
        try:
            counts = parse(self.out.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            return {"available": False, "reason": f"perf wrote nothing ({exc}): {self.child.log_tail(3)}"}
        if counts["all"] is None:
            return {"available": False, "reason": f"perf counted nothing: {self.child.log_tail(3)}"}
        return {"available": True, **counts}
