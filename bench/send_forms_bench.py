"""Producer-only throughput of every form of send() (issue 17).

    python bench/send_forms_bench.py [--n 300000] [--partitions 4,256] [--forms bare,keyed,...]

One producer in this process, a memory topic, 100 B distinct values, keys
that never repeat, flush() inside the clock. No consumer: this isolates
send()'s own per-message cost, which the two-process W1 rows (python -m
bench --only W1) hide behind the consumer. Each form runs back to back in
the same run, so their ratios to the bare form hold under the host's load
(printed beside the table). Rates per wall second and per CPU second of
this process (all its threads): on a loaded host the second is the steadier
measure of send()'s cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shmlog  # noqa: E402

HDRS = [("trace", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01")]


def _forms(topic):
    def cb(err, md):
        pass

    return {
        "bare": lambda p, v, k, i: p.send(topic, v),
        "partition": lambda p, v, k, i: p.send(topic, v, partition=0),
        "keyed": lambda p, v, k, i: p.send(topic, v, key=k),
        "headers": lambda p, v, k, i: p.send(topic, v, headers=HDRS),
        "timestamp": lambda p, v, k, i: p.send(topic, v, timestamp_ms=i),
        "on_delivery": lambda p, v, k, i: p.send(topic, v, on_delivery=cb),
        "keyed+headers": lambda p, v, k, i: p.send(topic, v, key=k, headers=HDRS),
        "partition+headers+ts": lambda p, v, k, i: p.send(topic, v, partition=0, headers=HDRS,
                                                          timestamp_ms=i),
        "keyed+on_delivery": lambda p, v, k, i: p.send(topic, v, key=k, on_delivery=cb),
    }


def chunk_bytes(parts, fixed=None):
    """The memory topic's chunk size: --chunk-bytes, else 1 MiB up to 16
    partitions and 64 KiB above (256 x 8 x 1 MiB would not be prefaulted).
    A frame is at most chunk/16 (4 KiB at 64 KiB): at 256 partitions each
    commit then carries ~25 messages, not ~550, which is most of why the
    bare form runs slower there; --chunk-bytes 1048576 shows the rest."""
    return fixed or (1 << 20 if parts <= 16 else 1 << 16)


def run_form(cluster, form, parts, n, chunk=None):
    topic = f"sf-{form.replace('+', '-')}-{parts}"
    cluster.create_topic(topic, partitions=parts, storage="memory",
                         chunk_bytes=chunk_bytes(parts, chunk), chunk_count=8)
    send = _forms(topic)[form]
    values = [b"%0100d" % i for i in range(n)]
    keys = [b"event-%012d" % i for i in range(n)]
    ts0 = int(time.time() * 1000)
    with cluster.producer(linger_ms=0) as p:
        p.send(topic, b"warm")
        p.flush()
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            send(p, values[i], keys[i], ts0 + i)
        p.flush()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    cluster.delete_topic(topic)
    return n / dt, n / cpu


async def _aio_run(data_dir, parts, n, form, chunk=None):
    from shmlog import aio

    topic = f"sf-{form.replace(' ', '-')}-{parts}"
    values = [b"%0100d" % i for i in range(n)]
    keys = [b"event-%012d" % i for i in range(n)]
    async with aio.connect(data_dir, start=False) as cluster:
        await cluster.create_topic(topic, partitions=parts, storage="memory",
                                   chunk_bytes=chunk_bytes(parts, chunk), chunk_count=8)
        async with cluster.producer(linger_ms=0) as p:
            await p.send(topic, b"warm")
            await p.flush()
            c0, t0 = time.process_time(), time.perf_counter()
            if form == "aio bare":
                for v in values:
                    await p.send(topic, v)
            else:
                for v, k in zip(values, keys):
                    await p.send(topic, v, key=k)
            await p.flush()
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        await cluster.delete_topic(topic)
    return n / dt, n / cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--partitions", default="4,256")
    ap.add_argument("--forms", default=",".join(list(_forms("x")) + ["aio bare", "aio keyed"]))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-bytes", type=int, default=None,
                    help="chunk size at every partition count (default: 1 MiB up to 16, 64 KiB above)")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="shmlog-sendforms-")
    cluster = shmlog.connect(d, idle_timeout_s=30)
    try:
        print(f"load before: {os.getloadavg()[0]:.2f}; n={a.n}, 100 B values, memory topic")
        forms = a.forms.split(",")
        for parts in map(int, a.partitions.split(",")):
            # round robin, best of --repeat: each form sees the same spread
            # of the host's load
            best = {f: (0.0, 0.0) for f in forms}
            for _ in range(a.repeat):
                for form in forms:
                    if form.startswith("aio"):
                        r = asyncio.run(_aio_run(d, parts, a.n, form, a.chunk_bytes))
                    else:
                        r = run_form(cluster, form, parts, a.n, a.chunk_bytes)
                    best[form] = (max(best[form][0], r[0]), max(best[form][1], r[1]))
            bare = best.get("bare")
            cb = chunk_bytes(parts, a.chunk_bytes)
            print(f"\n{parts} partitions ({cb >> 10} KiB chunks, frames <= {max(cb // 16, 4096) >> 10} KiB)"
                  f"\n                         wall M/s  vs bare   per CPU-s M/s  vs bare")
            for form in forms:
                w, c = best[form]
                rw = f"{w / bare[0]:6.0%}" if bare else ""
                rc = f"{c / bare[1]:6.0%}" if bare else ""
                print(f"  {form:22s} {w / 1e6:8.2f}   {rw}   {c / 1e6:12.2f}   {rc}", flush=True)
        print(f"\nload after: {os.getloadavg()[0]:.2f}")
    finally:
        cluster.shutdown()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
