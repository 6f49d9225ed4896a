"""A/B timing of PlayoutLedger operations: several compiled ledger builds interleaved in one process.

usage: python /tmp/ledger_ab.py ROUNDS name=path/to/ledger.so [name=...] [pure]
Every round measures every op of every variant once (order rotated per round), CPU ns per call,
~10 ms per measurement, gc off; prints the median over rounds and the min.
"""
import gc
import importlib
import importlib.util
import statistics
import sys
import time
from itertools import repeat

ITEM = "item_CJ3ZqH0lTf8bDtoR2vmWq"
OTHER = "item_CJ3ZsW2nFqk1xUj9PzQ0e"
SEND_S = 0.05


def load_so(path):
    spec = importlib.util.spec_from_file_location("_fastpath._compiled.ledger", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# each op: (name, make(mod, number) -> body)
def op_queue(m, n):
    q = m.PlayoutLedger().queue
    times = [i * SEND_S for i in range(n)]

    def body():
        for now in times:
            q(ITEM, 0, 800, 100.0, now)
    return body


def op_queue_alt(m, n):  # a new run (and item lookup) on every call
    q = m.PlayoutLedger().queue
    args = [(ITEM if i % 2 else OTHER, i * SEND_S) for i in range(n)]

    def body():
        for item, now in args:
            q(item, 0, 800, 100.0, now)
    return body


def op_on_mark(m, n):
    led = m.PlayoutLedger()
    names = [led.queue(ITEM, 0, 800, 100.0, i * SEND_S) for i in range(n)]
    echoes = [0.1 + 0.1 * (i + 1) for i in range(n)]
    on_mark = led.on_mark

    def body():
        for name, now in zip(names, echoes):
            on_mark(name, now)
    return body


def op_on_mark_alt(m, n):  # steady state, a new item every chunk: queue + echo (prunes a run)
    led = m.PlayoutLedger()
    pending = [led.queue(OTHER, 0, 800, 100.0, 0.0), led.queue(ITEM, 0, 800, 100.0, SEND_S)]
    args = [(ITEM if i % 2 else OTHER, (i + 2) * SEND_S, 0.1 + 0.1 * (i + 1)) for i in range(n)]
    queue, on_mark, append, pop = led.queue, led.on_mark, pending.append, pending.pop

    def body():
        for item, now, echo in args:
            append(queue(item, 0, 800, 100.0, now))
            on_mark(pop(0), echo)
    return body


def op_probe_echo(m, n):  # on_mark of probes: the latency-sample path
    led = m.PlayoutLedger()
    names = [led.probe(i * 0.5) for i in range(n)]
    echoes = [i * 0.5 + 0.08 + (i % 7) * 0.003 for i in range(n)]
    on_mark = led.on_mark

    def body():
        for name, now in zip(names, echoes):
            on_mark(name, now)
    return body


def op_on_mark_unknown(m, n):
    on_mark = m.PlayoutLedger().on_mark

    def body():
        for _ in repeat(None, n):
            on_mark("7:123", 1.0)
    return body


def op_on_mark_flushed(m, n):
    led = m.PlayoutLedger()
    led.queue(ITEM, 0, 800, 100.0, 0.0)
    led.clear(0.01)
    on_mark = led.on_mark

    def body():
        for _ in repeat(None, n):
            on_mark("0:0", 1.0)
    return body


def op_probe(m, n):
    probe = m.PlayoutLedger().probe

    def body():
        for _ in repeat(None, n):
            probe(1.0)
    return body


def op_probe_busy(m, n):
    led = m.PlayoutLedger()
    led.queue(ITEM, 0, 800, 100.0, 0.0)
    probe = led.probe

    def body():
        for _ in repeat(None, n):
            probe(1.0)
    return body


def op_plan(m, n):
    led = m.PlayoutLedger()
    names = [led.queue(item, 0, 800, 100.0, i * SEND_S)
             for i, item in enumerate([ITEM] * 6 + [OTHER] * 6)]
    for i, name in enumerate(names[:2]):
        led.on_mark(name, 0.1 + 0.1 * (i + 1))
    plan = led.plan_interrupt

    def body():
        for _ in repeat(None, n):
            plan(0.35)
    return body


def op_clear(m, n):
    clear = m.PlayoutLedger().clear

    def body():
        for _ in repeat(None, n):
            clear(1.0)
    return body


def op_busy(m, n):
    led = m.PlayoutLedger()

    def body():
        for _ in repeat(None, n):
            led.busy
    return body


def op_new(m, n):
    cls = m.PlayoutLedger

    def body():
        for _ in repeat(None, n):
            cls()
    return body


OPS = [("queue", op_queue), ("queue new run", op_queue_alt), ("on_mark played", op_on_mark),
       ("queue+on_mark new run", op_on_mark_alt), ("on_mark probe", op_probe_echo),
       ("on_mark unknown", op_on_mark_unknown), ("on_mark flushed", op_on_mark_flushed),
       ("probe", op_probe), ("probe busy", op_probe_busy), ("plan_interrupt 10", op_plan),
       ("clear", op_clear), ("busy", op_busy), ("PlayoutLedger()", op_new)]


def time_once(make, m, number):
    body = make(m, number)
    c0 = time.process_time_ns()
    body()
    return (time.process_time_ns() - c0) / number


def main():
    rounds = int(sys.argv[1])
    variants = {}
    for arg in sys.argv[2:]:
        if arg == "pure":
            variants["pure"] = importlib.import_module("_fastpath._pure.ledger")
        else:
            name, path = arg.split("=", 1)
            variants[name] = load_so(path)
    # calibrate on the first variant: ~10 ms per measurement
    numbers = {}
    for label, make in OPS:
        for m in variants.values():
            time_once(make, m, 1000)  # warm-up
        per = time_once(make, next(iter(variants.values())), 20000)
        numbers[label] = max(1000, int(10e6 / per))
    samples = {(v, label): [] for v in variants for label, _ in OPS}
    names = list(variants)
    gc.disable()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for label, make in OPS:
            for v in order:
                samples[v, label].append(time_once(make, variants[v], numbers[label]))
    gc.enable()
    head = f"{'op':<22}" + "".join(f"{v + ' med':>14}{'min':>8}" for v in names)
    if len(names) >= 2:
        head += f"{names[1] + '/' + names[0]:>16}"
    print(head)
    for label, _ in OPS:
        row = f"{label:<22}"
        meds = []
        for v in names:
            s = samples[v, label]
            meds.append(statistics.median(s))
            row += f"{meds[-1]:>14.1f}{min(s):>8.1f}"
        if len(names) >= 2:
            row += f"{meds[1] / meds[0] - 1:>+15.1%}"
        print(row)


if __name__ == "__main__":
    main()
