"""Where W4's tail comes from: one W4 run through the public API (the
suite's pacer, producer and consumer, a group consumer as in W4) with a
timestamp at each stage of every message, then each message over a
threshold put down to what was happening at the time:

    python -m bench.w4_probe --spin default --over 40
    python -m bench.w4_probe --spin auto --rate 1000

Per message: the producer's slot, when it woke for it (late sends), the
stamp before send() and the time send() returned; the consumer's receipt,
the CPU each side was on, and the consumer's garbage collections. Per
process: CPU share, voluntary and involuntary context switches, and run
delay (/proc/self/schedstat: time runnable but not running). A slow message
is charged, in this order, to: a producer that woke > 1 ms late (a burst
follows), a send() that took > 20 us, a consumer still busy with an
earlier message (it received the one before after this one was sent), a
GC pass in the consumer, or its wake-up: on the producer's CPU or on
another CPU (the costly case on a VM: an idle vCPU must be woken)."""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import signal
import statistics
import sys
import threading
from array import array
from typing import Any, Dict

from .common import LAT_STAMP, SMALL, Proc, fine_timer_slack, now_ns, pace_until, run_procs
from .systems import Spec
from .systems.shmlog_api import ShmlogApi

_libc = ctypes.CDLL(None)
_getcpu = _libc.sched_getcpu


def _sched() -> Dict[str, int]:
    """This process's scheduler counters (all its threads)."""
    out = {"run_delay_ns": 0, "voluntary": 0, "involuntary": 0}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            out["run_delay_ns"] += int(f.read().split()[1])
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    out["voluntary"] += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    out["involuntary"] += int(line.split()[1])
    return out


def _delta(a: Dict[str, int], b: Dict[str, int]) -> Dict[str, int]:
    return {k: b[k] - a[k] for k in a}


def producer(open_ep, n: int, warm: int, rate: int, *, ctl) -> Dict[str, Any]:
    ep = open_ep()
    try:
        send = ep.send
        pad = b"\0" * (SMALL - LAT_STAMP.size)
        pack = LAT_STAMP.pack
        total = n + warm
        woke, stamp, done, cpu = array("q"), array("q"), array("q"), array("b")
        fine_timer_slack()
        ctl.meet()
        period = 1e9 / rate
        start = now_ns() + 1_000_000
        s0 = c0 = None
        for i in range(total):
            if i == warm:
                s0, c0 = _sched(), os.times()
            target = start + int(i * period)
            woke.append(pace_until(target) - target)
            cpu.append(_getcpu())
            t = now_ns()
            send(pack(t) + pad)
            done.append(now_ns() - t)
            stamp.append(t)
        ep.flush()
        c1 = os.times()
        wall = (stamp[-1] - stamp[warm]) / 1e9
        return {"woke": woke.tobytes(), "stamp": stamp.tobytes(), "send": done.tobytes(),
                "cpu_on": cpu.tobytes(), "sched": _delta(s0, _sched()),
                "cpu": (c1.user + c1.system - c0.user - c0.system) / wall}
    finally:
        ep.close()


def consumer(open_ep, n: int, warm: int, *, ctl) -> Dict[str, Any]:
    ep = open_ep()
    gcs = array("q")

    def on_gc(phase, info):
        if phase == "start":
            gcs.append(now_ns())

    try:
        ep.ready()
        recv = ep.recv
        got = array("q")
        cpu = array("b")
        ctl.meet()
        gc.callbacks.append(on_gc)
        total = n + warm
        s0 = c0 = w0 = None
        while len(got) < total:
            v = recv(0.2)
            if v is None:
                if ctl.expired():
                    break
                continue
            got.append(now_ns())
            cpu.append(_getcpu())
            if len(got) == warm:
                s0, c0, w0 = _sched(), os.times(), now_ns()
        c1 = os.times()
        return {"got": got.tobytes(), "cpu_on": cpu.tobytes(), "gc": gcs.tobytes(),
                "sched": _delta(s0, _sched()),
                "cpu": (c1.user + c1.system - c0.user - c0.system) / ((now_ns() - w0) / 1e9)}
    finally:
        gc.callbacks.remove(on_gc)
        ep.close()


def _arr(b: bytes, code: str = "q") -> array:
    a = array(code)
    a.frombytes(b)
    return a


def analyse(prod: Dict[str, Any], cons: Dict[str, Any], warm: int, over_us: float) -> None:
    woke, stamp, send = _arr(prod["woke"]), _arr(prod["stamp"]), _arr(prod["send"])
    pcpu, got, ccpu, gcs = _arr(prod["cpu_on"], "b"), _arr(cons["got"]), _arr(cons["cpu_on"], "b"), _arr(cons["gc"])
    n = min(len(got), len(stamp))
    lat = [(got[i] - stamp[i]) / 1e3 for i in range(warm, n)]
    q = statistics.quantiles(lat, n=1000)
    same = sum(1 for i in range(warm, n) if pcpu[i] == ccpu[i])
    print(f"messages {len(lat)}: p50 {q[499]:.1f}  p99 {q[989]:.1f}  p99.9 {q[998]:.1f} us; "
          f"received on the sender's CPU: {100 * same / len(lat):.0f}%")
    for who, d in (("producer", prod), ("consumer", cons)):
        s = d["sched"]
        print(f"  {who}: CPU {100 * d['cpu']:.0f}%, run delay {s['run_delay_ns'] / 1e6:.1f} ms, "
              f"context switches {s['voluntary']} voluntary / {s['involuntary']} involuntary")
    late_p = sum(1 for i in range(warm, n) if woke[i] > 1_000_000)
    print(f"  producer woke > 1 ms after its slot: {late_p} sends; send() > 20 us: "
          f"{sum(1 for i in range(warm, n) if send[i] > 20_000)}; consumer GC passes: {len(gcs)}")
    causes: Dict[str, list] = {}
    gi = 0
    gl = sorted(gcs)
    for i in range(warm, n):
        lt = (got[i] - stamp[i]) / 1e3
        if lt <= over_us:
            continue
        while gi < len(gl) and gl[gi] < stamp[i] - 2_000_000:
            gi += 1
        if any(woke[j] > 1_000_000 for j in range(max(i - 20, 0), i + 1)):
            c = "burst after a producer woken > 1 ms late"
        elif send[i] > 20_000:
            c = "send() > 20 us (producer stalled inside it)"
        elif got[i - 1] > stamp[i]:
            c = "consumer still busy with an earlier message"
        elif gi < len(gl) and gl[gi] <= got[i]:
            c = "consumer GC pass"
        elif pcpu[i] == ccpu[i]:
            c = "wake-up on the producer's CPU"
        else:
            c = "wake-up on another CPU than the producer's"
        causes.setdefault(c, []).append(lt)
    slow = sum(len(v) for v in causes.values())
    print(f"  {slow} messages over {over_us:g} us:")
    for c, v in sorted(causes.items(), key=lambda kv: -len(kv[1])):
        print(f"    {len(v):5d}  median {statistics.median(v):7.1f} us  {c}")
    other = [(got[i] - stamp[i]) / 1e3 for i in range(warm, n) if pcpu[i] != ccpu[i]]
    mine = [(got[i] - stamp[i]) / 1e3 for i in range(warm, n) if pcpu[i] == ccpu[i]]
    for name, v in (("same CPU", mine), ("other CPU", other)):
        if len(v) > 100:
            qq = statistics.quantiles(v, n=100)
            print(f"  received on {name}: {len(v)} messages, p50 {qq[49]:.1f}  p99 {qq[98]:.1f} us")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.w4_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spin", default="default", help="the consumer's spin_us: default, auto or microseconds")
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--over", type=float, default=40.0, help="the threshold in us for a slow message")
    ap.add_argument("--stop-supervisor", action="store_true",
                    help="SIGSTOP the supervisor from 1.5 s after the start (the consumer has joined its "
                         "group by then) to the end: the data path does not need it, so this shows "
                         "what its wake-ups cost")
    a = ap.parse_args(argv)
    spin = None if a.spin == "default" else ("auto" if a.spin == "auto" else float(a.spin))
    warm = max(a.n // 20, 1)
    s = ShmlogApi()
    s.check()
    try:
        spec = Spec("W4", "msg", SMALL, a.n, warm, rate=a.rate, spin_us=spin)
        with s.channel(spec) as ch:
            stopper = None
            if a.stop_supervisor:
                with open(os.path.join(ch.data_dir, "supervisor.lock")) as f:
                    sup = int(f.read().split()[0])
                stopper = threading.Timer(1.5, os.kill, (sup, signal.SIGSTOP))
                stopper.start()
            try:
                res = run_procs([Proc("consumer", consumer, (ch.consumer, a.n, warm)),
                                 Proc("producer", producer, (ch.producer, a.n, warm, a.rate))], 60.0)
            finally:
                if stopper is not None:
                    stopper.cancel()
                    os.kill(sup, signal.SIGCONT)
    finally:
        s.shutdown()
    if any(st != "ok" for st, _ in res):
        print("failed:", res)
        return 1
    print(f"W4 probe: spin_us={a.spin}, {a.rate} msg/s, load {os.getloadavg()[0]:.2f}"
          + (", supervisor stopped" if a.stop_supervisor else ""))
    analyse(res[1][1], res[0][1], warm, a.over)
    return 0


if __name__ == "__main__":
    sys.exit(main())
