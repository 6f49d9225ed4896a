"""CPU time and resident memory of a process tree, and machine-wide CPU use, from /proc (Linux).

``tree_sample(root)`` covers the root (e.g. the ``gateway serve`` supervisor) and every live
descendant (its workers). CPU is user+sys of each live process plus the user+sys its reaped
children left behind (``cutime``/``cstime``: a worker that died and was restarted still counts).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class ProcStat:
    pid: int
    ppid: int
    cpu_s: float  # utime + stime
    child_cpu_s: float  # cutime + cstime (reaped children)
    rss: int  # bytes
    sys_s: float = 0.0  # stime + cstime: the kernel's share of cpu_s + child_cpu_s


@dataclass
class TreeSample:
    cpu_s: float  # whole tree, children included
    rss: int  # whole tree
    rss_workers: int  # the descendants only (the root alone when it has none)
    pids: list[int] = field(default_factory=list)
    sys_s: float = 0.0  # the kernel's part of cpu_s (system calls: socket I/O, epoll)


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()  # comm may contain spaces and parentheses
    # rest[0] is field 3 (state): field n is rest[n - 3]
    return ProcStat(pid, int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK,
                    (int(rest[13]) + int(rest[14])) / CLK_TCK, int(rest[21]) * PAGE,
                    (int(rest[12]) + int(rest[14])) / CLK_TCK)


def descendants(root: int) -> list[int]:
    """Live descendants of ``root`` (any depth), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def tree_sample(root: int, pids: list[int] | None = None) -> TreeSample | None:
    """CPU and RSS of ``root`` and its descendants (``pids``: a cached descendant list)."""
    top = read_stat(root)
    if top is None:
        return None
    if pids is None:
        pids = descendants(root)
    cpu, sys_s, rss_workers = top.cpu_s + top.child_cpu_s, top.sys_s, 0
    live = []
    for pid in pids:
        st = read_stat(pid)
        if st is None:
            continue
        live.append(pid)
        cpu += st.cpu_s + st.child_cpu_s
        sys_s += st.sys_s
        rss_workers += st.rss
    return TreeSample(cpu, top.rss + rss_workers, rss_workers if live else top.rss, live, sys_s)


@dataclass
class IoSample:
    """Summed counters of a set of processes (``io_sample``)."""

    syscr: int = 0  # read-family system calls (/proc/<pid>/io)
    syscw: int = 0  # write-family system calls
    rchar: int = 0  # bytes those read calls returned
    wchar: int = 0  # bytes those write calls took
    voluntary: int = 0  # context switches of every thread: it blocked (epoll wait, futex, ...)
    involuntary: int = 0  # ... it was preempted
    processes: int = 0  # processes read

    def minus(self, other: IoSample) -> IoSample:
        return IoSample(self.syscr - other.syscr, self.syscw - other.syscw, self.rchar - other.rchar,
                        self.wchar - other.wchar, self.voluntary - other.voluntary,
                        self.involuntary - other.involuntary, min(self.processes, other.processes))


def io_sample(pids: list[int]) -> IoSample | None:
    """System-call and context-switch counters summed over ``pids`` and all their threads.

    ``syscr``/``syscw`` of /proc/<pid>/io count the calls that go through the VFS read and write
    paths: read(2), readv(2), pread64(2), preadv(2) and write(2), writev(2), pwrite64(2), pwritev(2)
    (and sendfile, copy_file_range), on any file descriptor, sockets included. They do
    *not* count send/sendto/sendmsg/recv/recvfrom/recvmsg (the socket calls), epoll_wait, futex or
    anything else. The context switches come from each thread's /proc/<pid>/task/<tid>/status.
    None if no process could be read (/proc/<pid>/io needs the same user or ptrace rights)."""
    total = IoSample()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io", encoding="ascii") as f:
                io = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            total.syscr += int(io["syscr"])
            total.syscw += int(io["syscw"])
            total.rchar += int(io["rchar"])
            total.wchar += int(io["wchar"])
        except (OSError, KeyError, ValueError):
            continue
        total.processes += 1
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii", errors="replace") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total.voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            total.involuntary += int(line.split()[1])
            except (OSError, ValueError):
                continue
    return total if total.processes else None


def schedstat(pids: list[int]) -> tuple[float, float, int]:
    """Summed (seconds on a CPU, seconds runnable but waiting for a CPU, times scheduled in) of the
    main threads of ``pids`` from /proc/<pid>/schedstat (zeros where unavailable). The wait is
    what CPU contention adds to every message such a process handles."""
    run = wait = slices = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
                a, b, c = f.read().split()[:3]
        except (OSError, ValueError):
            continue
        run, wait, slices = run + int(a), wait + int(b), slices + int(c)
    return run / 1e9, wait / 1e9, slices


def machine_cpu() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return (total - idle) / CLK_TCK, total / CLK_TCK
