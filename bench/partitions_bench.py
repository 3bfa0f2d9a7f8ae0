"""Partition-scale benchmark (W7 through the public API, issue 18): a disk
topic with default settings at 1, 16, 256 and 1,000 partitions, and the
shared memory each takes.

    python bench/partitions_bench.py [--partitions 1,16,256,1000] [--messages 600000]
                                     [--keyed 20000] [--size 100] [--dir DIR] [--json FILE]

Per partition count, on a fresh data dir with the default shared-memory
budget (shm_budget_bytes unset):

1. create the topic (default settings: storage=disk, the ring sized from the
   budget) and record its chunk geometry and the time the create took;
2. throughput: one producer process send_batch()es --messages values of
   --size bytes in batches of 600 (sticky partitioning), one consumer
   process in group "bench" consume_batch()es them all; rate = messages /
   (first send .. last receive);
3. keyed: one producer process sends --keyed messages one by one with keys
   that go round-robin over the partitions (murmur2), a consumer process in
   group "keyed" reads them all back and checks each one's partition;
4. the largest message: one of the topic's max_message_bytes, sent to
   partition 0 and read back byte for byte (after the memory figures);
5. shared memory of the data dir's regions after the run: apparent size
   (st_size) and resident (st_blocks) of its /dev/shm files, against the
   budget the supervisor reports; and resident again once the partitions
   are idle (the supervisor gives back spilled, read chunks after
   shm_release_idle_ms).

The host is shared: the load average and the CPU share other processes
took during each run are printed beside the figures.
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
from typing import Any, Dict, List

CTX = mp.get_context("fork")
BATCH = 600
MIB = 1 << 20


def _cpu_busy() -> tuple:
    """(busy, total) jiffies of the whole host, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def _cpu_s() -> float:
    """This process's user+system CPU seconds (its threads included)."""
    t = os.times()
    return t.user + t.system


def _proc_cpu_jiffies(pid: int) -> int:
    """User+system jiffies of a live process (the supervisor: spiller, fsync)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _shm_usage(data_dir: Path) -> Dict[str, int]:
    """Regions of the data dir's cluster in /dev/shm: apparent and resident bytes."""
    from shmlog.core.log import SHM_DIR, region_usage

    try:
        cid = (data_dir / "cluster_id").read_text().strip()
    except OSError:
        return {}
    names = [n for n in os.listdir(SHM_DIR) if n.startswith(f"shmlog-{cid}-")]
    sizes = [u for u in map(region_usage, names) if u]
    return {"regions": len(sizes), "apparent": sum(a for a, _ in sizes), "resident": sum(r for _, r in sizes)}


def _producer(data_dir: str, topic: str, n: int, size: int, keys: List[bytes], q) -> None:
    """send_batch() of BATCH values (sticky partitioning), or with keys one
    send() each, keys[i % len(keys)] (round-robin over the partitions)."""
    import shmlog

    try:
        with shmlog.connect(data_dir, start=False) as c, c.producer(linger_ms=5 if keys else 0) as p:
            values = [os.urandom(size) for _ in range(BATCH)]
            q.put(("ready", os.getpid()))
            cpu0 = _cpu_s()
            t0 = time.monotonic_ns()
            sent = 0
            if keys:
                for sent in range(1, n + 1):
                    p.send(topic, values[sent % BATCH], key=keys[sent % len(keys)])
            while sent < n:
                p.send_batch(topic, values)
                sent += BATCH
            p.flush()
        q.put(("done", {"t0": t0, "sent": sent, "cpu_p": _cpu_s() - cpu0}))
    except BaseException as exc:
        q.put(("error", repr(exc)))


def _consumer(data_dir: str, topic: str, group: str, n: int, keys: List[bytes], q) -> None:
    import shmlog
    from shmlog.core.partitioner import partition_for

    try:
        with shmlog.connect(data_dir, start=False) as c, \
                c.consumer(topic, group=group, auto_offset_reset="earliest") as k:
            k.consume_batch(max_messages=1, timeout=0.5)  # join before anyone produces
            got = 0
            misplaced = 0
            parts = set()
            q.put(("ready", os.getpid()))
            cpu0 = _cpu_s()
            deadline = time.monotonic() + 600
            if keys:
                nparts = len(keys)
                while got < n and time.monotonic() < deadline:
                    for m in k.consume(max_messages=10_000, timeout=0.5):
                        if m.key is None:
                            continue  # the unkeyed throughput phase before
                        got += 1
                        parts.add(m.partition)
                        misplaced += partition_for(m.key, nparts) != m.partition
            else:
                while got < n and time.monotonic() < deadline:
                    b = k.consume_batch(max_messages=100_000, timeout=0.5)
                    if b is not None:
                        got += len(b)
                        parts.add(b.partition)
            t1 = time.monotonic_ns()
            cpu_c = _cpu_s() - cpu0
            k.commit()
        q.put(("done", {"t1": t1, "got": got, "partitions": len(parts), "misplaced": misplaced, "cpu_c": cpu_c}))
    except BaseException as exc:
        q.put(("error", repr(exc)))


def _run_pair(prod_target, prod_args, cons_args, data_dir: str, topic: str) -> Dict[str, Any]:
    """A consumer process and a producer process; the load of the host while they run."""
    qc, qp = CTX.Queue(), CTX.Queue()
    cons = CTX.Process(target=_consumer, args=(data_dir, topic, *cons_args, qc))
    cons.start()
    kind, cpid = qc.get(timeout=120)
    if kind == "error":
        cons.join(5)
        raise RuntimeError(f"consumer: {cpid}")
    prod = CTX.Process(target=prod_target, args=(data_dir, topic, *prod_args, qp))
    prod.start()
    kind, ppid = qp.get(timeout=120)
    if kind == "error":
        prod.join(5)
        raise RuntimeError(f"producer: {ppid}")
    busy0, total0 = _cpu_busy()
    sup = _supervisor_pid(data_dir)
    sup0 = _proc_cpu_jiffies(sup)
    load0 = os.getloadavg()[0]
    pk, pres = qp.get(timeout=900)
    ck, cres = qc.get(timeout=900)
    sup1 = _proc_cpu_jiffies(sup)
    busy1, total1 = _cpu_busy()
    for p in (prod, cons):
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join()
    if pk == "error" or ck == "error":
        raise RuntimeError(f"producer: {pres}; consumer: {cres}")
    span = max(total1 - total0, 1)
    hz = os.sysconf("SC_CLK_TCK")
    own = (pres["cpu_p"] + cres["cpu_c"]) * hz + (sup1 - sup0)  # jiffies of the run's processes
    return {**pres, **cres, "seconds": (cres["t1"] - pres["t0"]) / 1e9,
            "host_busy": (busy1 - busy0) / span, "others_busy": max(0.0, (busy1 - busy0 - own) / span),
            "load1": max(load0, os.getloadavg()[0])}


def _idle_usage(data_dir: Path) -> Dict[str, int]:
    """The regions once every partition is idle: the supervisor gives back
    the chunks that are spilled and read after shm_release_idle_ms (1 s by
    default); wait past that, then until the resident size stops falling."""
    time.sleep(1.5)
    last = _shm_usage(data_dir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _shm_usage(data_dir)
        if now.get("resident") == last.get("resident"):
            return now
        last = now
    return last


def _supervisor_pid(data_dir: str) -> int:
    try:
        return int((Path(data_dir) / "shmlog.lock").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def round_robin_keys(partitions: int) -> List[bytes]:
    """keys[p] is a key that murmur2 places on partition p."""
    from shmlog.core.partitioner import partition_for

    keys: List[Any] = [None] * partitions
    left = partitions
    i = 0
    while left:
        k = b"key-%d" % i
        p = partition_for(k, partitions)
        if keys[p] is None:
            keys[p] = k
            left -= 1
        i += 1
    return keys


def largest_message(c, topic: str, size: int) -> bool:
    """Send one message of `size` bytes (the topic's max_message_bytes) to
    partition 0 and read it back: True if it came back byte for byte."""
    value = os.urandom(size)
    where: List[int] = []
    with c.producer(max_block_ms=30_000) as p:
        p.send(topic, value, partition=0, on_delivery=lambda err, md: where.append(md.offset))
        p.flush()
    with c.consumer(topic, group=None) as cons:
        cons.assign([(topic, 0)])
        cons.seek(topic, 0, where[0])
        got = cons.consume(max_messages=1, timeout=10)
    return bool(got) and got[0].value == value


def run_one(partitions: int, args, root: Path) -> Dict[str, Any]:
    import shmlog

    data_dir = root / f"p{partitions}"
    row: Dict[str, Any] = {"partitions": partitions}
    c = shmlog.connect(data_dir, idle_timeout_s=600)
    try:
        t = time.monotonic()
        info = c.create_topic("scale", partitions=partitions)
        row["create_s"] = time.monotonic() - t
        row["chunk_bytes"] = info.config["chunk_bytes"]
        row["chunk_count"] = info.config["chunk_count"]
        row["max_message_bytes"] = info.config["max_message_bytes"]
        n = args.messages - args.messages % BATCH
        r = _run_pair(_producer, (n, args.size, []), ("bench", n, []), str(data_dir), "scale")
        row["throughput"] = {"messages": r["got"], "seconds": r["seconds"], "msgs_per_s": r["got"] / r["seconds"],
                             "MBps": r["got"] * args.size / r["seconds"] / 1e6,
                             "partitions_read": r["partitions"], "host_busy": r["host_busy"],
                             "others_busy": r["others_busy"], "load1": r["load1"]}
        keys = round_robin_keys(partitions)
        k = max(args.keyed, 5 * partitions)
        r = _run_pair(_producer, (k, args.size, keys), ("keyed", k, keys), str(data_dir), "scale")
        row["keyed"] = {"messages": r["got"], "sent": k, "seconds": r["seconds"], "msgs_per_s": r["got"] / r["seconds"],
                        "partitions_read": r["partitions"], "misplaced": r["misplaced"],
                        "others_busy": r["others_busy"], "load1": r["load1"]}
        row["shm_files"] = _shm_usage(data_dir)
        row["shm"] = c.stats().get("shm", {})
        row["shm_idle"] = _idle_usage(data_dir)
        row["released_chunks"] = c.stats().get("shm", {}).get("released_chunks")
        row["within_budget"] = (row["shm_files"].get("apparent", 0) <= row["shm"].get("budget_bytes", 0)
                                and row["shm_files"].get("resident", 0) <= row["shm"].get("budget_bytes", 0))
        row["largest_ok"] = largest_message(c, "scale", row["max_message_bytes"])
    finally:
        try:
            c.shutdown()
        except Exception:
            pass
        c.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return row


def _mib(n: Any) -> str:
    return "-" if n is None else f"{n / MIB:.1f}"


def report(rows: List[Dict[str, Any]]) -> str:
    lines = ["| partitions | chunk | largest message B | create s | msg/s (batch) | MB/s | keyed msg/s | keyed ok | "
             "shm apparent MiB | shm resident MiB | idle resident MiB | per partition MiB | budget MiB | "
             "other CPU | load1 |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        th, ky, sf, sh = r["throughput"], r["keyed"], r["shm_files"], r["shm"]
        ok = ky["messages"] == ky["sent"] and not ky["misplaced"] and ky["partitions_read"] == r["partitions"]
        lines.append(
            f"| {r['partitions']} | {r['chunk_count']} x {r['chunk_bytes'] // 1024} KiB | "
            f"{r['max_message_bytes']}{'' if r.get('largest_ok') else ' (NOT read back)'} | {r['create_s']:.2f} | "
            f"{th['msgs_per_s'] / 1e6:.2f} M | {th['MBps']:.0f} | {ky['msgs_per_s'] / 1e3:.0f} k | "
            f"{'yes' if ok else 'NO'} | {_mib(sf.get('apparent'))} | {_mib(sf.get('resident'))} | "
            f"{_mib(r.get('shm_idle', {}).get('resident'))} | "
            f"{_mib(sf.get('apparent', 0) / max(r['partitions'], 1))} | {_mib(sh.get('budget_bytes'))} | "
            f"{max(th['others_busy'], ky['others_busy']):.0%} | {max(th['load1'], ky['load1']):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", default="1,16,256,1000")
    ap.add_argument("--messages", type=int, default=600_000)
    ap.add_argument("--keyed", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--dir", default=None, help="where the data dirs go (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="shmlog-partitions-", dir=args.dir))
    rows = []
    ok = True
    try:
        for n in [int(x) for x in args.partitions.split(",")]:
            row = run_one(n, args, root)
            rows.append(row)
            ok &= bool(row["within_budget"]) and row["keyed"]["messages"] == row["keyed"]["sent"]
            ok &= bool(row["largest_ok"])
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sys.stdout.write(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
