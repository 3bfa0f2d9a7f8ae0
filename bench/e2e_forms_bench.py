"""Per-message end-to-end (issue 17): one producer process -> one consumer
process, default settings, 100 B distinct values, beside pyzmq ipc
PUSH/PULL in the same run.

    python bench/e2e_forms_bench.py [--n 300000] [--repeat 3] [--shmlog DIR]

shmlog forms: send(t, v, partition=0), send(t, v, key=k) (keys never
repeat, 4 partitions) and send(t, v, partition=0, headers=[...]), each read
by `for m in consumer` and by `for m in consumer.consume(10_000)` (every
Message built, every field touched once). --shmlog DIR imports shmlog
from another checkout (a before/after in one script). Each line also names
the CPU seconds of the producer and the consumer process: on two cores the
busier one is the limit. The clock starts in the producer after a barrier and stops in the
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

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--shmlog" in sys.argv:
    _ROOT = os.path.abspath(sys.argv[sys.argv.index("--shmlog") + 1])
sys.path.insert(0, _ROOT)

import shmlog  # noqa: E402

HEADERS = [("trace-id", b"0123456789abcdef")]


def _shm_consume(d, topic, n, q, ready, loop):
    c = shmlog.connect(d, start=False)
    with c.consumer(topic, group="e2e") as consumer:
        while not consumer.assignment():
            consumer.poll(timeout=0.01)
        ready.wait()
        cpu = time.process_time()
        got = 0
        if loop == "iter":
            for m in consumer:
                m.value, m.key, m.headers  # noqa: B018 - what a user reads
                got += 1
                if got == n:
                    break
        else:
            while got < n:
                for m in consumer.consume(10_000):
                    m.value, m.key, m.headers  # noqa: B018
                    got += 1
        q.put((time.monotonic(), time.process_time() - cpu))
    c.close()


def _shm_produce(d, topic, n, form, start, ready, pq):
    c = shmlog.connect(d, start=False)
    vals = [b"%0100d" % i for i in range(n)]
    keys = [b"event-%012d" % i for i in range(n)]
    with c.producer() as p:
        send = p.send
        ready.wait()
        start.value = time.monotonic()
        cpu = time.process_time()
        if form == "partition=0":
            for v in vals:
                send(topic, v, partition=0)
        elif form == "headers":
            for v in vals:
                send(topic, v, partition=0, headers=HEADERS)
        else:
            for v, k in zip(vals, keys):
                send(topic, v, key=k)
        p.flush()
        pq.put(time.process_time() - cpu)
    c.close()


def _zmq_consume(addr, n, q, ready):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind(addr)
    ready.wait()
    cpu = time.process_time()
    for _ in range(n):
        s.recv()
    q.put((time.monotonic(), time.process_time() - cpu))
    s.close(linger=0)
    ctx.term()


def _zmq_produce(addr, n, start, ready, pq):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(addr)
    vals = [b"%0100d" % i for i in range(n)]
    ready.wait()
    start.value = time.monotonic()
    cpu = time.process_time()
    for v in vals:
        s.send(v)
    s.close(linger=-1)
    pq.put(time.process_time() - cpu)
    ctx.term()


def run(name, n, d, cluster):
    ctx = mp.get_context("fork")
    q, pq, ready, start = ctx.Queue(), ctx.Queue(), ctx.Barrier(2), ctx.Value("d", 0.0)
    if name == "pyzmq ipc":
        addr = "ipc://" + os.path.join(d, "zmq.sock")
        procs = [ctx.Process(target=_zmq_consume, args=(addr, n, q, ready)),
                 ctx.Process(target=_zmq_produce, args=(addr, n, start, ready, pq))]
    else:
        form, loop = name.split(" ")
        topic = "e2e-" + form.replace("=", "")
        cluster.create_topic(topic, partitions=4 if form == "keyed" else 1, storage="memory")
        procs = [ctx.Process(target=_shm_consume, args=(d, topic, n, q, ready, loop)),
                 ctx.Process(target=_shm_produce, args=(d, topic, n, form, start, ready, pq))]
    for p in procs:
        p.start()
    try:
        end, ccpu = q.get(timeout=120)
        pcpu = pq.get(timeout=120)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    if name != "pyzmq ipc":
        cluster.delete_topic(topic)
    return n / (end - start.value), pcpu, ccpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shmlog", default=None, help="import shmlog from this checkout")
    ap.add_argument("--forms", default="partition=0,keyed,headers")
    ap.add_argument("--loops", default="iter,consume")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="shmlog-e2e-")
    cluster = shmlog.connect(d, idle_timeout_s=60)
    forms = ["pyzmq ipc"] + [f"{f} {lp}" for f in a.forms.split(",") for lp in a.loops.split(",")]
    best = {f: (0.0, 0.0, 0.0) for f in forms}
    try:
        print(f"shmlog from {os.path.dirname(os.path.dirname(shmlog.__file__))}")
        print(f"load before: {os.getloadavg()[0]:.2f}; n={a.n}, 100 B values")
        for _ in range(a.repeat):
            for f in forms:
                r = run(f, a.n, d, cluster)
                if r[0] > best[f][0]:
                    best[f] = r
        z = best["pyzmq ipc"][0]
        print(f"  {'form loop':22s} {'msg/s':>12s} {'vs pyzmq':>9s}  CPU s: producer consumer")
        for f in forms:
            rate, pcpu, ccpu = best[f]
            print(f"  {f:22s} {rate / 1e6:6.2f} M msg/s {rate / z:6.2f}x   {pcpu:6.2f} {ccpu:6.2f}")
        print(f"load after: {os.getloadavg()[0]:.2f}")
    finally:
        cluster.shutdown()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
