"""Kafka listener bench: confluent-kafka producer -> broker -> confluent-kafka
consumer, 100-byte values, shmlog's listener and tansu in the same run.

    python -m bench.kafka_bench                 # 1M messages each way, both brokers
    python -m bench.kafka_bench --count 200000 --systems shmlog
    python -m bench.kafka_bench fuzz --frames 100000

Throughput: one partition; producer linger.ms=5, batch.num.messages=10000,
acks=1, timed from the first produce() to the end of flush(); consumer with
assign() from offset 0, timed until the last message, once with the
client's default settings and once per --queue-backoff-ms value (default
10: librdkafka's default fetch.queue.backoff.ms of 1 s idles the fetcher
each time the application falls behind its 100,000-message queue, so the
default row measures those idle seconds more than either broker). Broker
CPU: user+system seconds of the process on the bootstrap port (shmlog's
listener, tansu) during each phase. Latency: linger.ms=0,
acks=1, one message at a time, produce() to its delivery report (the
client blocks in poll() meanwhile, it does not spin); then the same
Produce (v8, acks=1, one record) from a plain blocking socket, request to
response, which is the broker's share without the client library's thread
hand-offs. Everything
started here (supervisor, listener, tansu) is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "kafka")]

TOPIC = "bench"


@contextlib.contextmanager
def shmlog_broker(count: int) -> Iterator[str]:
    from _kafka_helpers import kafka_cluster

    with tempfile.TemporaryDirectory(prefix="shmlog-kbench-") as d:
        with kafka_cluster(Path(d) / "data") as (cluster, bs):
            # the whole run fits the ring: 64 MiB chunks, batches up to 4 MiB
            chunks = max(4, (count * 120) // (64 << 20) + 2)
            cluster.create_topic(TOPIC, partitions=1, storage="memory", chunk_bytes=64 << 20,
                                 chunk_count=chunks)
            cluster.create_topic(TOPIC + "-lat", partitions=1, storage="memory", chunk_bytes=4 << 20)
            yield bs


@contextlib.contextmanager
def tansu(count: int) -> Iterator[str]:
    import confluent_kafka.admin as cka
    from _kafka_helpers import tansu_broker

    with tansu_broker() as bs:
        admin = cka.AdminClient({"bootstrap.servers": bs})
        for f in admin.create_topics([cka.NewTopic(TOPIC, 1, 1), cka.NewTopic(TOPIC + "-lat", 1, 1)]).values():
            f.result(30)
        yield bs


SYSTEMS = {"shmlog": shmlog_broker, "tansu": tansu}


def produce(bs: str, count: int, size: int) -> float:
    import confluent_kafka as ck

    p = ck.Producer({"bootstrap.servers": bs, "linger.ms": 5, "batch.num.messages": 10000, "acks": 1,
                     "queue.buffering.max.messages": 2_000_000})
    value = os.urandom(size)
    # metadata first, outside the clock, for every broker alike (shmlog maps
    # the topic's regions then: a prefaulted ring takes a moment)
    p.list_topics(TOPIC, timeout=30)
    t0 = time.perf_counter()
    for i in range(count):
        while True:
            try:
                p.produce(TOPIC, value)
                break
            except BufferError:
                p.poll(0.01)
        if i % 50_000 == 0:
            p.poll(0)
    left = p.flush(120)
    t1 = time.perf_counter()
    if left:
        raise RuntimeError(f"{left} messages not delivered")
    return count / (t1 - t0)


def consume(bs: str, count: int, queue_backoff_ms=None) -> float:
    import confluent_kafka as ck

    c = ck.Consumer({"bootstrap.servers": bs, "group.id": "bench", "enable.auto.commit": False,
                     **({"fetch.queue.backoff.ms": queue_backoff_ms} if queue_backoff_ms is not None else {})})
    c.assign([ck.TopicPartition(TOPIC, 0, 0)])
    got = 0
    t0 = time.perf_counter()
    deadline = t0 + 300
    while got < count and time.perf_counter() < deadline:
        for m in c.consume(10_000, 1.0):
            if m.error() is None:
                got += 1
    t1 = time.perf_counter()
    c.close()
    if got < count:
        raise RuntimeError(f"consumed {got} of {count}")
    return count / (t1 - t0)


def latency(bs: str, n: int, size: int) -> Dict[str, float]:
    import confluent_kafka as ck

    p = ck.Producer({"bootstrap.servers": bs, "linger.ms": 0, "acks": 1})
    value = os.urandom(size)
    samples: List[float] = []
    done = []
    for i in range(n + n // 10):
        t0 = time.perf_counter()
        p.produce(TOPIC + "-lat", value, on_delivery=lambda err, msg: done.append(err))
        while not done:
            # block until the delivery report is served (poll returns then):
            # a 100 us poll loop keeps one of a small host's cores busy and
            # delays whichever broker runs on fewer threads
            p.poll(1.0)
        t1 = time.perf_counter()
        done.clear()
        if i >= n // 10:  # warm-up excluded
            samples.append((t1 - t0) * 1e6)
    samples.sort()
    return {"p50_us": samples[len(samples) // 2], "p99_us": samples[int(len(samples) * 0.99)],
            "mean_us": statistics.fmean(samples)}


def raw_latency(bs: str, n: int, size: int) -> Dict[str, float]:
    """Produce v8 acks=1 round trips of one record from a plain socket."""
    from _kafka_wire import Wire, batch, produce_body, produce_result

    from shmlog.kafka import protocol as P

    body = produce_body(8, TOPIC + "-lat", 0, batch([(None, os.urandom(size))]))
    samples: List[float] = []
    with Wire(bs) as w:
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            resp = w.call(P.PRODUCE, 8, body)
            t1 = time.perf_counter()
            if resp is None or produce_result(8, resp)[0] != 0:
                raise RuntimeError(f"raw Produce to {bs} failed")
            if i >= n // 10:  # warm-up excluded
                samples.append((t1 - t0) * 1e6)
    samples.sort()
    return {"p50_us": samples[len(samples) // 2], "p99_us": samples[int(len(samples) * 0.99)],
            "mean_us": statistics.fmean(samples)}


def broker_pid(bs: str) -> Optional[int]:
    """The process serving the bootstrap port: shmlog's listener (not its
    supervisor, which binds the port and hands it to the listener, so both
    hold it) or tansu."""
    import psutil

    port = int(bs.rsplit(":", 1)[1])
    pids = []
    try:
        for c in psutil.net_connections("tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                pids.append(c.pid)
    except psutil.AccessDenied:
        pass
    for pid in pids:
        try:
            if "shmlog.kafka" in " ".join(psutil.Process(pid).cmdline()):
                return pid
        except psutil.Error:
            continue
    return pids[0] if pids else None


class CpuClock:
    """CPU seconds (user + system) a process used between start() and stop()."""

    def __init__(self, pid: Optional[int]):
        self.proc = None
        if pid is not None:
            import psutil

            self.proc = psutil.Process(pid)

    def _now(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def measure(self, fn, *a):
        """(fn's result, CPU seconds the broker used meanwhile or nan)."""
        c0 = self._now() if self.proc else 0.0
        res = fn(*a)
        return res, (self._now() - c0) if self.proc else float("nan")


def run(args) -> int:
    backoffs = [None] + [int(x) for x in str(args.queue_backoff_ms or "").split(",") if x.strip()]
    rows = []
    for name in args.systems.split(","):
        with SYSTEMS[name](args.count) as bs:
            time.sleep(0.5)
            clock = CpuClock(broker_pid(bs))
            prod, prod_cpu = clock.measure(produce, bs, args.count, args.size)
            cons = [clock.measure(consume, bs, args.count, qb) for qb in backoffs]
            lat = latency(bs, args.latency_count, args.size)
            raw = raw_latency(bs, args.latency_count, args.size)
        rows.append((name, prod, prod_cpu, cons, lat, raw))
        print(f"{name:8s} produce {prod / 1e6:6.3f} M msg/s (broker CPU {prod_cpu:5.2f} s)   "
              f"latency p50 {lat['p50_us']:7.1f} us  p99 {lat['p99_us']:7.1f} us   "
              f"raw socket p50 {raw['p50_us']:7.1f} us  p99 {raw['p99_us']:7.1f} us", flush=True)
        for qb, (rate, cpu) in zip(backoffs, cons):
            setting = "default" if qb is None else f"fetch.queue.backoff.ms={qb}"
            print(f"{name:8s} consume {rate / 1e6:6.3f} M msg/s (broker CPU {cpu:5.2f} s)   [{setting}]",
                  flush=True)
    if len(rows) > 1:
        print(f"\n{'':34s}" + "".join(f"{r[0]:>16s}" for r in rows))
        print(f"{'produce M msg/s (broker CPU s)':34s}" +
              "".join(f"{r[1] / 1e6:9.3f} ({r[2]:4.2f})" for r in rows))
        for i, qb in enumerate(backoffs):
            label = "consume, default settings" if qb is None else f"consume, queue backoff {qb} ms"
            print(f"{label:34s}" + "".join(f"{r[3][i][0] / 1e6:9.3f} ({r[3][i][1]:4.2f})" for r in rows))
        print(f"{'produce latency p50 / p99 us':34s}" +
              "".join(f"{r[4]['p50_us']:8.0f} /{r[4]['p99_us']:6.0f}" for r in rows))
        print(f"{'  raw socket p50 / p99 us':34s}" +
              "".join(f"{r[5]['p50_us']:8.0f} /{r[5]['p99_us']:6.0f}" for r in rows))
        print(f"(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 0


def fuzz(args) -> int:
    from _kafka_wire import fuzz_run

    with tempfile.TemporaryDirectory(prefix="shmlog-kfuzz-") as d:
        from _kafka_helpers import api_versions_ok, kafka_cluster

        with kafka_cluster(Path(d) / "data") as (cluster, bs):
            cluster.create_topic("fuzz", partitions=1, storage="memory", chunk_bytes=1 << 20)
            t0 = time.perf_counter()
            sent, slow = fuzz_run(bs, args.frames, args.seed)
            ok = api_versions_ok(int(bs.rsplit(":", 1)[1]), timeout=2.0)
            log = (Path(d) / "data" / "kafka-listener.log").read_text()
    crashes = log.count("after an internal error")
    for part in log.split("after an internal error")[1:]:
        lines = [x for x in part.splitlines() if x.strip()]
        tb = lines[: next((i for i, x in enumerate(lines) if not x.startswith((" ", "Traceback"))), 0) + 1]
        print("handler error:", " | ".join(x.strip() for x in tb[-4:]))
    restarts = log.count("kafka listener on")
    print(f"fuzz: {sent} malformed frames in {time.perf_counter() - t0:.1f}s, {slow} long polls, "
          f"{crashes} handler errors, listener started {restarts}x, serving after: {ok}")
    return 0 if ok and crashes == 0 and restarts == 1 else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kafka_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="throughput", choices=["throughput", "fuzz"])
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--latency-count", type=int, default=5000)
    p.add_argument("--systems", default="shmlog,tansu")
    p.add_argument("--queue-backoff-ms", default="10",
                   help="comma-separated consumer fetch.queue.backoff.ms values, one consume row each "
                        "after the default-settings row (librdkafka's default 1000 ms idles the fetcher "
                        "whenever the app is behind its queue); '' for the default row only")
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1414)
    args = p.parse_args(argv)
    return fuzz(args) if args.mode == "fuzz" else run(args)


if __name__ == "__main__":
    sys.exit(main())
