"""Host yardstick: what one cross-process message costs on this machine right now.

The gateway's CPU per call-second is dominated by socket I/O that wakes another process: every
message on loopback runs the receiver's TCP processing and wakes its event loop, and on a
virtual machine a wake-up can mean an inter-processor interrupt and a VM exit. That cost depends
on the host and on its neighbours, and it moves: the same commit measured 1.03 and 1.41 ms per
call-second an hour apart on the shared bench VM, while the simulators' own CPU moved by the same
factor. A run therefore records this yardstick before and after: a TCP ping-pong over loopback
between two processes (300-byte messages, TCP_NODELAY, blocking sockets), CPU and wall time per
round trip of the side that measures. Compare CPU per call-second between runs only when their
yardsticks agree.

Run as ``python -m bench.yardstick`` (prints JSON); ``measure()`` runs it in a fresh process so
that the caller's event loop and threads are never forked.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from .report import REPO

ROUND_TRIPS = 4000
MESSAGE = b"x" * 300


def ping_pong(round_trips: int = ROUND_TRIPS) -> dict[str, float]:
    """CPU and wall microseconds per round trip, measured by the pinging process."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    near = socket.create_connection(server.getsockname())
    far, _ = server.accept()
    server.close()
    for s in (near, far):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pid = os.fork()
    if pid == 0:  # the echoing side: blocks in recv, so every ping wakes it
        near.close()
        buf = bytearray(4096)
        try:
            for _ in range(round_trips):
                far.recv_into(buf)
                far.sendall(MESSAGE)
        finally:
            os._exit(0)
    far.close()
    buf = bytearray(4096)
    try:
        cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
        for _ in range(round_trips):
            near.sendall(MESSAGE)
            near.recv_into(buf)
        cpu, wall = time.process_time_ns() - cpu0, time.perf_counter_ns() - wall0
    finally:
        near.close()
        os.waitpid(pid, 0)
    return {"cpu_us_per_round_trip": round(cpu / round_trips / 1000, 2),
            "wall_us_per_round_trip": round(wall / round_trips / 1000, 2)}


def measure(timeout_s: float = 30.0) -> dict[str, float] | None:
    """The yardstick from a fresh interpreter; None if it could not run (never fails the bench)."""
    try:
        out = subprocess.run([sys.executable, "-m", "bench.yardstick"], capture_output=True, text=True,
                             timeout=timeout_s, check=True, cwd=REPO).stdout
        return json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


if __name__ == "__main__":
    print(json.dumps(ping_pong()))
