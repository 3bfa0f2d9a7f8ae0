"""W4 (one-way latency at 10,000 msg/s) for chosen consumer wait settings,
alternated round by round, so that a change of the wait strategy is
compared with the one before it under the same load:

    python -m bench.wait_ab --rounds 3 sync:default sync:auto sync:50 async:default

A variant is `sync|async:SPIN` where SPIN is `default` (no spin_us given),
`auto` or microseconds. Prints p50/p99/p99.9 and the consumer's CPU share
per run, then the median of each column per variant."""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from .common import SMALL, Proc, Row, collect, consume_latency, params, produce_paced, run_procs
from .systems import Spec, latency_row
from .systems.shmlog_api import ShmlogApi, _aio_consume_latency


def _spin(text: str):
    if text == "default":
        return None
    if text == "auto":
        return "auto"
    return float(text)


def run_one(sys_: ShmlogApi, variant: str, n: int, rate: int, limit_s: float) -> dict:
    kind, _, spin = variant.partition(":")
    spin_us = _spin(spin or "default")
    mode = "msg async" if kind == "async" else "msg"
    spec = Spec("W4", mode, SMALL, n, max(n // 10, 1), rate=rate, spin_us=spin_us)
    with sys_.channel(spec) as ch:
        if kind == "async":
            kw = {} if spin_us is None else {"spin_us": spin_us}
            cons = Proc("consumer", _aio_consume_latency, (ch.data_dir, ch.topic, spec.n, spec.warm, kw))
        else:
            cons = Proc("consumer", consume_latency, (ch.consumer, spec.n, spec.warm))
        res = run_procs([cons, Proc("producer", produce_paced, (ch.producer, spec.n, spec.warm,
                                                                spec.size, spec.rate))], limit_s)
    row = Row("W4", sys_.name, mode=mode)
    outs = collect(row, res, partial_ok=True)
    if outs is None:
        return {"error": row.note}
    row = latency_row(row, spec, *outs)
    return {"p50": row.lat["p50"], "p99": row.lat["p99"], "p99.9": row.lat["p99.9"],
            "cpu": 100 * (row.extra.get("consumer_cpu") or 0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wait_ab")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=params(False).w4_n)
    ap.add_argument("--rate", type=int, default=10_000)
    a = ap.parse_args(argv)
    s = ShmlogApi()
    s.check()
    res = {v: [] for v in a.variants}
    try:
        for r in range(a.rounds):
            for v in a.variants:
                out = run_one(s, v, a.n, a.rate, 60.0)
                res[v].append(out)
                load = os.getloadavg()[0]
                print(f"round {r} {v:16s} " + (out["error"] if "error" in out else
                      f"p50 {out['p50']:7.1f}  p99 {out['p99']:8.1f}  p99.9 {out['p99.9']:8.1f} us"
                      f"  cpu {out['cpu']:4.0f}%") + f"  load {load:.2f}", flush=True)
    finally:
        s.shutdown()
    print("median over rounds:")
    for v, outs in res.items():
        ok = [o for o in outs if "error" not in o]
        if ok:
            med = {k: statistics.median(o[k] for o in ok) for k in ("p50", "p99", "p99.9", "cpu")}
            print(f"  {v:16s} p50 {med['p50']:7.1f}  p99 {med['p99']:8.1f}  p99.9 {med['p99.9']:8.1f} us"
                  f"  cpu {med['cpu']:4.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
