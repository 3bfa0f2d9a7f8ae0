"""The host's W4 floor: what one-way latency two C processes (no Python in
the loop) get over shared memory at W4's pace, for each way the consumer
can wait, with each side's CPU share. It says what p50/p99 this host
permits at all, to read W4's rows against:

    python -m bench.floor --rounds 3 --rate 10000 spin futex spinfutex:50 adaptive

Modes: `spin` (busy poll, a whole core), `futex` (sleep at once; the
producer wakes it), `spinfutex:US` (spin US microseconds, then the futex:
shmlog's default consumer), `adaptive` (a futex sleep until shortly before
the next message is due, then a spin: shmlog's spin_us="auto"). bench/floor.c
is compiled with cc into a temporary directory on each run; nothing built
is kept. Modes alternate round by round; the median of each column per mode
is printed at the end."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.c")
COLUMNS = ("p50", "p99", "p99.9", "consumer_cpu", "producer_cpu", "late_sends", "same_cpu")


def build(dest: str) -> str:
    """floor.c compiled into dest; raises with cc's message if it fails."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("bench.floor needs a C compiler (cc or gcc) on PATH")
    exe = os.path.join(dest, "floor")
    r = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", exe, SOURCE], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"cc failed on {SOURCE}:\n{r.stderr}")
    return exe


def run(exe: str, mode: str, rate: int, n: int, warm: int) -> Dict[str, float]:
    out = subprocess.run([exe, mode, str(rate), str(n), str(warm)], capture_output=True, text=True,
                         timeout=60 + 3 * (n + warm) / rate)
    if out.returncode != 0:
        raise RuntimeError(f"floor {mode} failed: {out.stderr.strip()}")
    kv = dict(f.split("=", 1) for f in out.stdout.split())
    return {k: float(kv[k]) for k in COLUMNS}


def fmt(r: Dict[str, float]) -> str:
    return (f"p50 {r['p50']:7.2f}  p99 {r['p99']:7.2f}  p99.9 {r['p99.9']:8.2f} us"
            f"  consumer cpu {100 * r['consumer_cpu']:4.0f}%  producer cpu {100 * r['producer_cpu']:4.0f}%"
            f"  late sends {int(r['late_sends'])}  same cpu {100 * r['same_cpu']:3.0f}%")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    ap.add_argument("modes", nargs="*", default=["spin", "futex", "spinfutex:50", "adaptive"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=10_000, help="messages per second (W4: 10,000)")
    ap.add_argument("--n", type=int, default=20_000, help="measured messages per run (W4: 20,000)")
    ap.add_argument("--warm", type=int, default=1_000)
    a = ap.parse_args(argv)
    res: Dict[str, List[Dict[str, float]]] = {m: [] for m in a.modes}
    with tempfile.TemporaryDirectory(prefix="shmlog-floor-") as d:
        exe = build(d)
        for r in range(a.rounds):
            for m in a.modes:
                out = run(exe, m, a.rate, a.n, a.warm)
                res[m].append(out)
                print(f"round {r} {m:14s} {fmt(out)}  load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"median over {a.rounds} rounds ({a.rate} msg/s, {a.n} messages each):")
    for m, outs in res.items():
        print(f"  {m:14s} " + fmt({k: statistics.median(o[k] for o in outs) for k in COLUMNS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
