"""`shmlog perf`: producer/consumer load tests, like kafka-*-perf-test."""
from __future__ import annotations

import multiprocessing
import struct
import time
from typing import Any, Dict, List, Optional, Sequence

from .. import errors
from .common import (
    add_common,
    add_nested,
    connect,
    flag,
    nonneg_int,
    out,
    print_json,
)

_STAMP = struct.Struct("<q")


def _pct(sorted_vals: Sequence[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def perf_produce(data_dir: str, topic: str, num_records: int, record_size: int, *, batch: int = 0,
                 throughput: float = -1, compression: Optional[str] = None, linger_ms: float = 0,
                 start: bool = True) -> Dict[str, Any]:
    """Send num_records of record_size bytes; latency is send() to commit.
    Values start with the send time (monotonic ns) so a consumer can measure
    end-to-end latency."""
    from ..client.cluster import connect as _connect

    tail = bytes(max(0, record_size - 8))
    stamped = record_size >= 8
    lat: List[float] = []
    sample = max(1, num_records // 20_000)
    with _connect(data_dir, start=start) as cluster:
        cluster.describe_topic(topic)
        with cluster.producer(linger_ms=linger_ms, compression=compression) as producer:
            t0 = time.monotonic()
            mono = time.monotonic_ns
            sent = 0
            if batch:
                while sent < num_records:
                    k = min(batch, num_records - sent)
                    now = mono()
                    head = _STAMP.pack(now) if stamped else b""
                    values = [head + tail] * k if stamped else [bytes(record_size)] * k
                    producer.send_batch(topic, values)
                    lat.append((mono() - now) / 1e6)
                    sent += k
                    if throughput > 0:
                        _throttle(t0, sent, throughput)
            else:
                send = producer.send
                filler = bytes(record_size)

                def delivered(err, md, t=0):
                    if err is None:
                        lat.append((mono() - t) / 1e6)

                for i in range(num_records):
                    now = mono()
                    value = _STAMP.pack(now) + tail if stamped else filler
                    if i % sample == 0:
                        send(topic, value, on_delivery=lambda e, md, t=now: delivered(e, md, t))
                    else:
                        send(topic, value)
                    if throughput > 0 and i % 64 == 0:
                        _throttle(t0, i, throughput)
                sent = num_records
            producer.flush()
            elapsed = time.monotonic() - t0
    lat.sort()
    return {"records": sent, "seconds": elapsed, "bytes": sent * record_size,
            "avg_ms": sum(lat) / len(lat) if lat else 0.0, "max_ms": lat[-1] if lat else 0.0,
            "p50_ms": _pct(lat, 0.5), "p95_ms": _pct(lat, 0.95), "p99_ms": _pct(lat, 0.99),
            "p999_ms": _pct(lat, 0.999)}


def _throttle(t0: float, sent: int, rate: float) -> None:
    ahead = sent / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)


def perf_consume(data_dir: str, topic: str, num_records: int, *, group: Optional[str] = None,
                 timeout_ms: int = 10_000, from_latest: bool = False, start: bool = True,
                 ready=None) -> Dict[str, Any]:
    """Read num_records; end-to-end latency from the send time a perf
    producer writes at the start of each value (when plausible)."""
    from ..client.cluster import connect as _connect

    lat: List[float] = []
    n = 0
    nbytes = 0
    with _connect(data_dir, start=start) as cluster:
        cluster.describe_topic(topic)
        consumer = cluster.consumer(topic, group=group, auto_offset_reset="latest" if from_latest else "earliest")
        try:
            if from_latest and group is None:
                consumer.seek_to_end()
            if ready is not None:
                ready.set()
            t0 = None
            last = time.monotonic()
            mono = time.monotonic_ns
            unpack = _STAMP.unpack_from
            while n < num_records:
                batch = consumer.consume_batch(max_messages=100_000, timeout=0.2)
                now = time.monotonic()
                if batch is None:
                    if now - last >= timeout_ms / 1000.0:
                        break
                    continue
                if t0 is None:
                    t0 = now
                last = now
                values = batch.values[:num_records - n]
                k = len(values)
                n += k
                nbytes += sum(map(len, values))
                now_ns = mono()
                step = max(1, k // 64)
                for v in values[::step]:
                    if len(v) >= 8:
                        d = now_ns - unpack(v)[0]
                        if 0 <= d < 600e9:
                            lat.append(d / 1e6)
            if group is not None:
                try:
                    consumer.commit()
                except errors.ShmlogError:
                    pass
        finally:
            consumer.close()
    elapsed = (last - t0) if t0 is not None and n else 0.0
    lat.sort()
    return {"records": n, "wanted": num_records, "seconds": elapsed, "bytes": nbytes,
            "avg_ms": sum(lat) / len(lat) if lat else None, "p50_ms": _pct(lat, 0.5) if lat else None,
            "p99_ms": _pct(lat, 0.99) if lat else None, "max_ms": lat[-1] if lat else None}


def _producer_line(r: Dict[str, Any]) -> str:
    secs = max(r["seconds"], 1e-9)
    return (f"{r['records']} records sent, {r['records'] / secs:.1f} records/sec "
            f"({r['bytes'] / secs / (1 << 20):.2f} MB/sec), {r['avg_ms']:.3f} ms avg latency, "
            f"{r['max_ms']:.3f} ms max latency, {r['p50_ms']:.3f} ms 50th, {r['p95_ms']:.3f} ms 95th, "
            f"{r['p99_ms']:.3f} ms 99th, {r['p999_ms']:.3f} ms 99.9th.")


def _consumer_line(r: Dict[str, Any]) -> str:
    secs = max(r["seconds"], 1e-9)
    line = (f"{r['records']} records received, {r['records'] / secs:.1f} records/sec "
            f"({r['bytes'] / secs / (1 << 20):.2f} MB/sec)")
    if r.get("avg_ms") is not None:
        line += (f", {r['avg_ms']:.3f} ms avg end-to-end latency, {r['p50_ms']:.3f} ms 50th, "
                 f"{r['p99_ms']:.3f} ms 99th, {r['max_ms']:.3f} ms max")
    return line + "."


def _perf_consume_child(queue, data_dir, topic, n, group, timeout_ms, ready) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        queue.put(("ok", perf_consume(data_dir, topic, n, group=group, timeout_ms=timeout_ms,
                                      from_latest=True, start=False, ready=ready)))
    except BaseException as exc:  # reported to the parent, which exits 1
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
        ready.set()


def _perf_produce_child(queue, data_dir, topic, n, size, batch, throughput, compression) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        queue.put(("ok", perf_produce(data_dir, topic, n, size, batch=batch, throughput=throughput,
                                      compression=compression, start=False)))
    except BaseException as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def cmd_perf(args) -> int:
    action = args.perf_action
    if action is None:
        raise errors.InvalidConfig("perf needs an action: produce, consume or both")
    batch = args.batch if getattr(args, "batch", None) else 0
    with connect(args) as cluster:
        cluster.describe_topic(args.topic)  # unknown topic: exit 1 now
        if action == "produce":
            r = perf_produce(str(cluster.data_dir), args.topic, args.num_records, args.record_size, batch=batch,
                             throughput=args.throughput, compression=args.compression, start=False)
            print_json(r) if flag(args, "json") else out(_producer_line(r))
            return 0
        if action == "consume":
            r = perf_consume(str(cluster.data_dir), args.topic, args.num_records, group=args.group,
                             timeout_ms=args.timeout_ms, from_latest=args.from_latest, start=False)
            print_json(r) if flag(args, "json") else out(_consumer_line(r))
            if r["records"] < args.num_records:
                raise errors.ShmlogError(f"perf consume timed out after {args.timeout_ms} ms with "
                                         f"{r['records']} of {args.num_records} records from topic {args.topic!r}")
            return 0
        # both: a consumer process positioned at the end, then a producer process
        ctx = multiprocessing.get_context("spawn")
        cq, pq = ctx.Queue(), ctx.Queue()
        ready = ctx.Event()
        data_dir = str(cluster.data_dir)
        cproc = ctx.Process(target=_perf_consume_child, name="shmlog-perf-consumer",
                            args=(cq, data_dir, args.topic, args.num_records, args.group, args.timeout_ms, ready))
        pproc = None
        cproc.start()
        try:
            if not ready.wait(30):
                raise errors.ShmlogError("the perf consumer process did not start within 30s")
            pproc = ctx.Process(target=_perf_produce_child, name="shmlog-perf-producer",
                                args=(pq, data_dir, args.topic, args.num_records, args.record_size, batch,
                                      args.throughput, args.compression))
            pproc.start()
            pres = pq.get()
            cres = cq.get()
        finally:
            for proc in (pproc, cproc):
                if proc is None:
                    continue
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        for kind, res in (pres, cres):
            if kind == "error":
                raise errors.ShmlogError(f"perf failed: {res}")
        if flag(args, "json"):
            print_json({"producer": pres[1], "consumer": cres[1]})
        else:
            out("producer: " + _producer_line(pres[1]))
            out("consumer: " + _consumer_line(cres[1]))
        if cres[1]["records"] < args.num_records:
            raise errors.ShmlogError(f"the perf consumer got {cres[1]['records']} of {args.num_records} records "
                                     f"from topic {args.topic!r} before its {args.timeout_ms} ms timeout")
    return 0


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("perf", "producer/consumer load test, like kafka-*-perf-test")
    add_common(p)
    p.set_defaults(func=cmd_perf, perf_action=None)
    ps = p.add_subparsers(dest="perf_action", metavar="ACTION")
    for name, help_ in (("produce", "send records and report throughput and send-to-commit latency"),
                        ("consume", "read records and report throughput and end-to-end latency"),
                        ("both", "a consumer process and a producer process at once (end-to-end latency)")):
        sp = add_nested(ps, name, help_)
        sp.add_argument("--topic", required=True)
        sp.add_argument("--num-records", type=nonneg_int, required=True)
        if name in ("produce", "both"):
            sp.add_argument("--record-size", type=nonneg_int, default=100, help="bytes (default 100)")
            sp.add_argument("--batch", type=nonneg_int, nargs="?", const=1000, default=0, metavar="N",
                            help="send_batch N records at a time (default 1000 with the flag)")
            sp.add_argument("--throughput", type=float, default=-1, help="records/sec cap (-1: none)")
            sp.add_argument("--compression", choices=["none", "lz4"], default=None)
        if name in ("consume", "both"):
            sp.add_argument("--group", default=None)
            sp.add_argument("--timeout-ms", type=nonneg_int, default=10_000,
                            help="give up after this long without a record (default 10000)")
        if name == "consume":
            sp.add_argument("--from-latest", action="store_true", help="skip what is already there")
