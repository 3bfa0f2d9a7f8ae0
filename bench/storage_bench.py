"""Storage benchmark: what spilling to disk costs, and how fast a consumer
catches up from the segments.

    python bench/storage_bench.py [--messages N] [--size 100] [--batch 600] [--dir DIR]

Measures, in one run on one data dir's filesystem:

1. disk bandwidth: a dd-like sequential write of --disk-bytes (1 GiB) in
   8 MiB blocks, then fsync (what the disk really takes);
2. memory-topic ingest: a producer process sends N messages of --size bytes
   with send_batch (--batch per call), a consumer process reads them with
   consume_batch; rate = N / (first send .. last receive);
3. disk-topic ingest: the same on a storage="disk" topic, whose chunks are
   reused only after the spiller copied them; plus the time until
   flush(durable=True) returns (everything fsynced);
4. catch-up: a cold consumer process starts at offset 0 of the disk topic
   (the segments are in the page cache, the shared-memory window long gone)
   and reads all N messages; GB/s of message payload and of segment bytes.

Targets (storage issue): disk ingest >= 80 % of the memory rate or >= 80 %
of the disk's bandwidth; catch-up >= 1 GB/s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

CTX = mp.get_context("fork")
GB = 1e9


def disk_bandwidth(directory: Path, nbytes: int) -> Dict[str, float]:
    """Sequential write of nbytes then fsync, like dd conv=fsync."""
    path = directory / "storage-bench-dd.tmp"
    block = os.urandom(1 << 20) * 8
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        left = nbytes
        while left > 0:
            left -= os.write(fd, block if left >= len(block) else block[:left])
        t1 = time.perf_counter()
        os.fsync(fd)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
        os.unlink(path)
    return {"bytes": nbytes, "seconds": t2 - t0, "GBps": nbytes / (t2 - t0) / GB,
            "write_only_GBps": nbytes / (t1 - t0) / GB}


def _median(rows):
    return sorted(rows, key=lambda r: r["msgs_per_s"])[len(rows) // 2]


def _drop_topic(data_dir: Path, topic: str) -> None:
    import shmlog

    with shmlog.connect(data_dir, idle_timeout_s=60) as cluster:
        cluster.delete_topic(topic)


def _cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process (the supervisor: spiller, fsync)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _values(n: int, size: int):
    filler = b"\x5a" * size
    return [(i.to_bytes(8, "little") + filler)[:size] for i in range(n)]


def _producer(data_dir: str, topic: str, n: int, size: int, batch: int, durable: bool,
              barrier, out) -> None:
    import shmlog

    c = shmlog.connect(data_dir)
    try:
        vals = _values(batch * 64, size)  # distinct values, reused in rotation
        with c.producer() as p:
            p.send_batch(topic, vals[:batch], partition=0)  # map, register
            p.flush()
            barrier.wait()
            t0 = time.monotonic_ns()
            sent = batch
            k = 0
            while sent < n:
                m = min(batch, n - sent)
                p.send_batch(topic, vals[k : k + m], partition=0)
                sent += m
                k = (k + batch) % (len(vals) - batch)
            p.flush()
            t1 = time.monotonic_ns()
            td = t1
            if durable:
                p.flush(durable=True)
                td = time.monotonic_ns()
        out.put(("producer", {"t0": t0, "t_sent": t1, "t_durable": td}))
    finally:
        c.close()


def _consumer(data_dir: str, topic: str, n: int, start: int, barrier, out) -> None:
    import shmlog

    c = shmlog.connect(data_dir)
    try:
        with c.consumer(topic) as cons:
            cons.assign([(topic, 0)])
            cons.seek(topic, 0, start)
            got = 0
            nbytes = 0
            if barrier is not None:
                barrier.wait()
            t0 = time.monotonic_ns()
            while got < n:
                b = cons.consume_batch(100_000, timeout=10.0)
                if b is None:
                    break
                got += len(b)
                vals = b.values
                nbytes += len(vals) * len(vals[0])
            t1 = time.monotonic_ns()
        out.put(("consumer", {"t0": t0, "t1": t1, "records": got, "bytes": nbytes}))
    finally:
        c.close()


def _run(procs, out, count: int) -> Dict[str, Any]:
    for p in procs:
        p.start()
    res: Dict[str, Any] = {}
    try:
        for _ in range(count):
            k, v = out.get(timeout=600)
            res[k] = v
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    return res


def ingest(data_dir: Path, storage: str, n: int, size: int, batch: int, run: int = 0) -> Dict[str, Any]:
    import shmlog

    topic = f"ingest-{storage}-{run}"
    with shmlog.connect(data_dir, idle_timeout_s=60) as cluster:
        cluster.create_topic(topic, storage=storage, segment_bytes=256 << 20)
        barrier = CTX.Barrier(2)
        out = CTX.Queue()
        sup = _cpu_seconds(cluster.supervisor_pid)
        procs = [
            CTX.Process(target=_producer, args=(str(data_dir), topic, n, size, batch,
                                                storage == "disk", barrier, out)),
            CTX.Process(target=_consumer, args=(str(data_dir), topic, n, 0, barrier, out)),
        ]
        r = _run(procs, out, 2)
        sup = _cpu_seconds(cluster.supervisor_pid) - sup
        p, c = r["producer"], r["consumer"]
        secs = (c["t1"] - p["t0"]) / 1e9
        info = cluster.describe_topic(topic).partitions[0]
        row = {"storage": storage, "messages": c["records"], "size": size, "seconds": secs,
               "msgs_per_s": c["records"] / secs, "MBps": c["records"] * size / secs / 1e6,
               "supervisor_cpu_s": sup}
        if storage == "disk":
            row["durable_after_s"] = (p["t_durable"] - p["t0"]) / 1e9
            row["durable_msgs_per_s"] = n / row["durable_after_s"]
            row["segment_bytes"] = info.bytes
        return row


def _fill(data_dir: str, topic: str, n: int, size: int, batch: int, out) -> None:
    import shmlog

    c = shmlog.connect(data_dir)
    try:
        vals = _values(batch * 16, size)
        with c.producer() as p:
            sent = 0
            k = 0
            while sent < n:
                m = min(batch, n - sent)
                p.send_batch(topic, vals[k : k + m], partition=0)
                sent += m
                k = (k + batch) % (len(vals) - batch)
            p.flush(durable=True)
        out.put(("filled", sent))
    finally:
        c.close()


def read_back(data_dir: Path, topic: str, n: int, size: int, batch: int, **topic_cfg) -> Dict[str, Any]:
    """Fill a topic first (producer process), then time a cold consumer
    process reading it all from offset 0."""
    import shmlog

    with shmlog.connect(data_dir, idle_timeout_s=60) as cluster:
        cluster.create_topic(topic, **topic_cfg)
        out = CTX.Queue()
        _run([CTX.Process(target=_fill, args=(str(data_dir), topic, n, size, batch, out))], out, 1)
    return catch_up(data_dir, n, topic)


def catch_up(data_dir: Path, n: int, topic: str = "ingest-disk-0") -> Dict[str, Any]:
    import shmlog

    with shmlog.connect(data_dir, idle_timeout_s=60) as cluster:
        info = cluster.describe_topic(topic).partitions[0]
        region = cluster.topic(topic).regions[0]
        out = CTX.Queue()
        procs = [CTX.Process(target=_consumer, args=(str(data_dir), topic, n, 0, None, out))]
        r = _run(procs, out, 1)["consumer"]
        secs = (r["t1"] - r["t0"]) / 1e9
        seg_bytes = info.bytes
        return {"messages": r["records"], "seconds": secs, "payload_GBps": r["bytes"] / secs / GB,
                "segment_GBps": seg_bytes / secs / GB, "msgs_per_s": r["records"] / secs,
                "shm_start_offset": region.start_offset}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--batch", type=int, default=600)
    ap.add_argument("--disk-bytes", type=int, default=1 << 30)
    ap.add_argument("--repeat", type=int, default=3, help="ingest runs per storage (median kept)")
    ap.add_argument("--large-size", type=int, default=4096, help="message size of the large catch-up")
    ap.add_argument("--large-bytes", type=int, default=1 << 30, help="bytes of the large catch-up")
    ap.add_argument("--dir", default=None, help="where the data dir goes (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="shmlog-storage-bench-", dir=args.dir))
    res: Dict[str, Any] = {"messages": args.messages, "size": args.size, "batch": args.batch,
                           "cpus": os.cpu_count(), "dir": str(base)}
    try:
        res["disk"] = disk_bandwidth(base, args.disk_bytes)
        mem_dir, disk_dir = base / "mem", base / "disk"
        # alternate the two, --repeat times, and keep the median run of each:
        # on a small shared box one run is at the mercy of its neighbours
        mems, dsks = [], []
        for run in range(args.repeat):
            mems.append(ingest(mem_dir, "memory", args.messages, args.size, args.batch, run))
            dsks.append(ingest(disk_dir, "disk", args.messages, args.size, args.batch, run))
            if run < args.repeat - 1:
                _drop_topic(mem_dir, f"ingest-memory-{run}")
        res["memory_ingest"] = _median(mems)
        res["disk_ingest"] = _median(dsks)
        res["memory_ingest_runs"] = [r["msgs_per_s"] for r in mems]
        res["disk_ingest_runs"] = [r["msgs_per_s"] for r in dsks]
        res["catch_up"] = catch_up(disk_dir, args.messages, f"ingest-disk-{args.repeat - 1}")
        # the same read from shared memory (a memory topic big enough to hold
        # it all): what a consumer costs per message, disk or not
        n_shm = min(args.messages, (400 << 20) // (args.size + 16))
        res["shm_read"] = read_back(mem_dir, "shm-read", n_shm, args.size, args.batch,
                                    storage="memory", chunk_bytes=128 << 20, chunk_count=4)
        # catch-up in bytes: 1 GiB of --large-size messages
        n_large = args.large_bytes // args.large_size
        res["catch_up_large"] = read_back(disk_dir, "large", n_large, args.large_size,
                                          max(1, (256 << 10) // args.large_size),
                                          storage="disk", segment_bytes=256 << 20)
        import shmlog

        for d in (mem_dir, disk_dir):
            with shmlog.connect(d, start=False) as c:
                c.shutdown()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    mem, dsk, cu, bw = res["memory_ingest"], res["disk_ingest"], res["catch_up"], res["disk"]
    res["disk_vs_memory"] = dsk["msgs_per_s"] / mem["msgs_per_s"]
    res["disk_vs_bandwidth"] = dsk["MBps"] * 1e6 / (bw["GBps"] * GB)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"storage bench: {args.messages} x {args.size} B, send_batch of {args.batch}, "
          f"{res['cpus']} CPUs, dir {base.parent}")
    print(f"  disk write+fsync {bw['bytes'] / 2**30:.1f} GiB: {bw['GBps'] * 1000:.0f} MB/s "
          f"(page cache only: {bw['write_only_GBps'] * 1000:.0f} MB/s)")
    runs = " / ".join(f"{m / 1e6:.2f}:{d / 1e6:.2f}" for m, d in zip(res["memory_ingest_runs"],
                                                                    res["disk_ingest_runs"]))
    print(f"  ingest runs, memory:disk M msg/s: {runs} (medians below)")
    print(f"  memory topic ingest: {mem['msgs_per_s'] / 1e6:.2f} M msg/s, {mem['MBps']:.0f} MB/s")
    print(f"  disk topic ingest:   {dsk['msgs_per_s'] / 1e6:.2f} M msg/s, {dsk['MBps']:.0f} MB/s "
          f"= {res['disk_vs_memory'] * 100:.0f}% of memory, {res['disk_vs_bandwidth'] * 100:.0f}% of "
          f"disk bandwidth; all fsynced after {dsk['durable_after_s']:.2f}s "
          f"({dsk['durable_msgs_per_s'] / 1e6:.2f} M msg/s); supervisor CPU {dsk['supervisor_cpu_s']:.2f}s "
          f"of {dsk['seconds']:.2f}s")
    print(f"  catch-up from disk:  {cu['msgs_per_s'] / 1e6:.2f} M msg/s, payload {cu['payload_GBps']:.2f} GB/s, "
          f"segments {cu['segment_GBps']:.2f} GB/s")
    sr, cl = res["shm_read"], res["catch_up_large"]
    print(f"  same read from shared memory ({sr['messages']} msgs): {sr['msgs_per_s'] / 1e6:.2f} M msg/s, "
          f"payload {sr['payload_GBps']:.2f} GB/s")
    print(f"  catch-up from disk, {cl['messages']} x {args.large_size} B: {cl['msgs_per_s'] / 1e6:.2f} M msg/s, "
          f"payload {cl['payload_GBps']:.2f} GB/s, segments {cl['segment_GBps']:.2f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
