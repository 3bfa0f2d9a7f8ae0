"""Per-message end-to-end (issue 17): one producer process -> one consumer
process, default settings, 100 B distinct values, beside pyzmq ipc
PUSH/PULL in the same run.

    python bench/e2e_forms_bench.py [--n 300000] [--repeat 3]

shmlog forms: send(t, v, partition=0) and send(t, v, key=k) (keys never
repeat, 4 partitions), each read by `for m in consumer` (every Message
built). The clock starts in the producer after a barrier and stops in the
consumer after the last message (CLOCK_MONOTONIC, shared). Best of
--repeat, forms round robin so each sees the same spread of host load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shmlog  # noqa: E402


def _shm_consume(d, topic, n, q, ready):
    c = shmlog.connect(d, start=False)
    with c.consumer(topic, group="e2e") as consumer:
        while not consumer.assignment():
            consumer.poll(timeout=0.01)
        ready.wait()
        got = 0
        for _m in consumer:
            got += 1
            if got == n:
                break
        q.put(time.monotonic())
    c.close()


def _shm_produce(d, topic, n, form, start, ready):
    c = shmlog.connect(d, start=False)
    vals = [b"%0100d" % i for i in range(n)]
    keys = [b"event-%012d" % i for i in range(n)]
    with c.producer() as p:
        send = p.send
        ready.wait()
        start.value = time.monotonic()
        if form == "partition=0":
            for v in vals:
                send(topic, v, partition=0)
        else:
            for v, k in zip(vals, keys):
                send(topic, v, key=k)
        p.flush()
    c.close()


def _zmq_consume(addr, n, q, ready):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind(addr)
    ready.wait()
    for _ in range(n):
        s.recv()
    q.put(time.monotonic())
    s.close(linger=0)
    ctx.term()


def _zmq_produce(addr, n, start, ready):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(addr)
    vals = [b"%0100d" % i for i in range(n)]
    ready.wait()
    start.value = time.monotonic()
    for v in vals:
        s.send(v)
    s.close(linger=-1)
    ctx.term()


def run(form, n, d, cluster):
    ctx = mp.get_context("fork")
    q, ready, start = ctx.Queue(), ctx.Barrier(2), ctx.Value("d", 0.0)
    if form == "pyzmq ipc":
        addr = "ipc://" + os.path.join(d, "zmq.sock")
        procs = [ctx.Process(target=_zmq_consume, args=(addr, n, q, ready)),
                 ctx.Process(target=_zmq_produce, args=(addr, n, start, ready))]
    else:
        topic = "e2e-" + form.replace("=", "")
        cluster.create_topic(topic, partitions=1 if form == "partition=0" else 4, storage="memory")
        procs = [ctx.Process(target=_shm_consume, args=(d, topic, n, q, ready)),
                 ctx.Process(target=_shm_produce, args=(d, topic, n, form, start, ready))]
    for p in procs:
        p.start()
    try:
        end = q.get(timeout=120)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    if form != "pyzmq ipc":
        cluster.delete_topic(topic)
    return n / (end - start.value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="shmlog-e2e-")
    cluster = shmlog.connect(d, idle_timeout_s=60)
    forms = ["pyzmq ipc", "partition=0", "keyed"]
    best = dict.fromkeys(forms, 0.0)
    try:
        print(f"load before: {os.getloadavg()[0]:.2f}; n={a.n}, 100 B values")
        for _ in range(a.repeat):
            for f in forms:
                best[f] = max(best[f], run(f, a.n, d, cluster))
        z = best["pyzmq ipc"]
        for f in forms:
            print(f"  {f:12s} {best[f] / 1e6:6.2f} M msg/s   {best[f] / z:5.2f}x pyzmq ipc")
        print(f"load after: {os.getloadavg()[0]:.2f}")
    finally:
        cluster.shutdown()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
