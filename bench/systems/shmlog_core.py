"""shmlog at the core level: shmlog.core.log.PartitionLog used directly.

No supervisor, no topics: the parent creates one region per partition
("/shmlog-bench-..." names, always unlinked), the producer process attaches
and appends batches, the consumer process attaches, registers a gating
reader (so a full buffer blocks the producer instead of overwriting unread
data, as a memory topic does) and reads with RecordReader.read, which, in one
crossing, reads, or waits when caught up (spin, then futex) and reads, and
publishes the gating position.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Set

from ..common import (
    BATCH,
    KIB,
    LATENCY_SPIN_US,
    MIB,
    Ctl,
    Endpoint,
    Params,
    Proc,
    Row,
    Skip,
    collect,
    now_ns,
    payloads,
    proc_mem,
    run_procs,
    throughput_row,
)
from . import Channel, Spec, System

CHUNK_BYTES = 16 * MIB
CHUNK_COUNT = 4
SCALE_CHUNK_BYTES = 1 * MIB  # W7: 256 partitions x 4 x 16 MiB would be 16 GiB
THROUGHPUT_SPIN_US = 50.0

_LIVE: Set[str] = set()


def region_name(tag: str = "") -> str:
    return f"/shmlog-bench-{os.getpid()}-{uuid.uuid4().hex[:10]}{tag}"


def unlink_all() -> None:
    """Unlink every region this process created and has not unlinked."""
    import posix_ipc

    for name in list(_LIVE):
        try:
            posix_ipc.unlink_shared_memory(name)
        except Exception:
            pass
        _LIVE.discard(name)


@contextmanager
def regions(count: int, chunk_bytes: int, chunk_count: int, prefault: bool) -> Iterator[List[str]]:
    from shmlog.core.log import PartitionLog

    names: List[str] = []
    try:
        for i in range(count):
            name = region_name(f"-p{i}")
            _LIVE.add(name)
            names.append(name)
            plog = PartitionLog.create(name, chunk_bytes=chunk_bytes, chunk_count=chunk_count,
                                       prefault=prefault, gate_readers=True, partition=i)
            plog.close()
        yield names
    finally:
        import posix_ipc

        for name in names:
            try:
                posix_ipc.unlink_shared_memory(name)
            except Exception:
                pass
            _LIVE.discard(name)


def shm_bytes(names: List[str]) -> Dict[str, int]:
    """Allocated (st_size) and resident (st_blocks) bytes of the regions."""
    size = used = 0
    for n in names:
        try:
            st = os.stat("/dev/shm/" + n.lstrip("/"))
        except OSError:
            continue
        size += st.st_size
        used += st.st_blocks * 512
    return {"shm_size": size, "shm_used": used}


def gate_position(cursor) -> int:
    """The position a gating reader publishes after a read: everything below
    the cursor's next offset has been consumed. (A reader parked exactly at a
    reused chunk's end moves on into the next chunk: csrc/log.c next_frame.)"""
    return cursor.next_offset


class _Producer(Endpoint):
    def __init__(self, name: str, deadline_s: float = 60.0):
        from shmlog.core.log import PartitionLog
        from shmlog.core.records import POINTER_VALUE, pickle_values

        self.plog = PartitionLog.attach(name, prefault=True)
        self.slot = self.plog.register_producer()
        self.timeout = deadline_s
        self.pickle_values = pickle_values
        self.pointer_value = POINTER_VALUE

    def send(self, value: bytes) -> None:
        # a batch of one record in one crossing (the core's latency path)
        self.plog.append_one(self.slot, value, time.time_ns() // 1_000_000, timeout=self.timeout)

    def send_batch(self, values: List[bytes]) -> None:
        # small values: one pickle of the list, parsed in C (the core's fast
        # path, what the API's send_batch uses); large ones: a pointer each
        if len(values[0]) < self.pointer_value:
            stream = self.pickle_values(values)
            if stream is not None and self.plog.append_pickled(
                    self.slot, stream, 1 << 30, time.time_ns() // 1_000_000, timeout=self.timeout) >= 0:
                return
        self.plog.append(self.slot, values, timeout=self.timeout)

    def close(self) -> None:
        self.plog.release_producer(self.slot)
        self.plog.close()


class _Consumer(Endpoint):
    def __init__(self, name: str, spin_us: float = THROUGHPUT_SPIN_US, cap: int = BATCH):
        from shmlog.core.log import PartitionLog

        self.plog = PartitionLog.attach(name, prefault=True)
        self.rslot = self.plog.register_reader(0, gating=True)
        self.cursor = self.plog.new_cursor()
        self.plog.seek(self.cursor, 0)
        self.reader = self.plog.reader()
        self.spin_ns = int(spin_us * 1000)
        self.cap = cap
        self.expect = 0
        self.buf: List[bytes] = []
        self.i = 0

    def _read(self, max_n: int, timeout: float) -> Optional[List[bytes]]:
        # one crossing: read, or wait (spinning spin_us first) and read, and
        # publish the gating position (RecordReader.read with wait_ns, slot)
        res = self.reader.read(self.cursor, max_n, slot=self.rslot, spin_ns=self.spin_ns,
                               wait_ns=int(timeout * 1e9), one=True)
        if res is None:
            return None
        if res.__class__ is tuple:  # one record: (offset, timestamp, value), position published
            if res[0] != self.expect:
                raise RuntimeError(f"offsets not dense: expected {self.expect}, got {res[0]}")
            self.expect = res[0] + 1
            return [res[2]]
        if res.offsets[0] != self.expect:
            raise RuntimeError(f"offsets not dense: expected {self.expect}, got {res.offsets[0]}")
        self.expect = res.offsets[-1] + 1
        if not res.positioned:  # large values come back by the column path
            self.plog.set_reader_position(self.rslot, gate_position(self.cursor))
        return res.values

    def recv(self, timeout: float) -> Optional[bytes]:
        if self.i >= len(self.buf):
            vs = self._read(self.cap, timeout)
            if not vs:
                return None
            self.buf = vs
            self.i = 0
        v = self.buf[self.i]
        self.i += 1
        return v

    def recv_batch(self, max_n: int, timeout: float) -> List[bytes]:
        return self._read(max_n, timeout) or []

    def close(self) -> None:
        self.plog.release_reader(self.rslot)
        self.plog.close()


class ShmlogCore(System):
    name = "shmlog-core"
    kind = "shmlog"
    how = {
        "msg": "PartitionLog.append(slot, [value]) per message; consumer reads what is there "
               "(RecordReader.read, up to 600) and hands values out one by one",
        "batch": "PartitionLog.append(slot, values) per batch; RecordReader.read(cursor, batch)",
    }

    def check(self) -> None:
        try:
            import shmlog.core.log  # noqa: F401
        except Exception as exc:  # the C core is not built
            raise Skip(f"shmlog.core.log does not import: {exc}") from None

    def latency_variants(self):
        return [("msg", LATENCY_SPIN_US), ("msg", 0.0)]

    def durable(self, spec: Spec, p: Params) -> Row:
        raise Skip("the core level has no disk: W5 is measured at the API level (disk topics)")

    def groups(self, spec: Spec, p: Params) -> Row:
        raise Skip("the core level has no consumer groups: W6 is measured at the API level")

    @contextmanager
    def channel(self, spec: Spec) -> Iterator[Channel]:
        spin = THROUGHPUT_SPIN_US if spec.spin_us is None else spec.spin_us
        with regions(1, CHUNK_BYTES, CHUNK_COUNT, prefault=True) as names:
            name = names[0]
            yield Channel(producer=lambda: _Producer(name),
                          consumer=lambda: _Consumer(name, spin_us=spin))

    # -- W7 ------------------------------------------------------------------
    def scale(self, spec: Spec, p: Params, partitions: int, producers: int) -> Row:
        row = Row("W7", self.name, mode="batch",
                  procs=f"{producers} producer proc(s) -> 1 consumer proc")
        row.extra.update(partitions=partitions, producers=producers)
        per = spec.n // producers
        per -= per % spec.batch
        n = per * producers
        with regions(partitions, SCALE_CHUNK_BYTES, CHUNK_COUNT, prefault=False) as names:
            procs = [Proc("consumer", _scale_consumer, (names, n, spec.warm * producers,
                                                        spec.batch))]
            for k in range(producers):
                procs.append(Proc(f"producer{k}", _scale_producer,
                                  (names, k, per, spec.warm, spec.size, spec.batch)))
            res = run_procs(procs, p.run_limit_s)
            shm = shm_bytes(names)
        outs = collect(row, res)
        if outs is None:
            return row
        cons, prods = outs[0], outs[1:]
        t0 = min(o["t0"] for o in prods)
        throughput_row(row, cons["received"], spec.size, t0, cons["t1"])
        row.extra.update(shm)
        row.extra["consumer_rss"] = cons["mem"].get("VmHWM", 0)
        row.extra["producer_rss"] = max(o["mem"].get("VmHWM", 0) for o in prods)
        row.extra["rss_shmem"] = max([cons["mem"].get("RssShmem", 0)]
                                     + [o["mem"].get("RssShmem", 0) for o in prods])
        row.note = (f"{partitions} regions of {CHUNK_COUNT} x {SCALE_CHUNK_BYTES // MIB} MiB "
                    f"(not prefaulted)")
        return row


def _scale_producer(names: List[str], k: int, n: int, warm: int, size: int, batch: int, *,
                    ctl: Ctl) -> dict:
    from shmlog.core.log import PartitionLog

    plogs = [PartitionLog.attach(nm) for nm in names]
    slots = [pl.register_producer() for pl in plogs]
    try:
        values = payloads(size, batch)
        P = len(plogs)
        ctl.meet()
        j = k
        for _ in range(warm // batch):
            plogs[j % P].append(slots[j % P], values, timeout=max(ctl.left_s(), 0.1))
            j += 1
        ctl.meet()
        t0 = now_ns()
        sent = 0
        while sent < n and not ctl.expired():
            i = j % P
            plogs[i].append(slots[i], values, timeout=max(ctl.left_s(), 0.1))
            j += 1
            sent += batch
        t_end = now_ns()
        return {"t0": t0, "t_end": t_end, "sent": sent, "timed_out": sent < n, "mem": proc_mem()}
    finally:
        for pl, s in zip(plogs, slots):
            pl.release_producer(s)
            pl.close()


def _scale_consumer(names: List[str], n: int, warm: int, batch: int, *, ctl: Ctl) -> dict:
    from shmlog.core.log import PartitionLog

    plogs = [PartitionLog.attach(nm) for nm in names]
    rslots = [pl.register_reader(0, gating=True) for pl in plogs]
    cursors = []
    for pl in plogs:
        c = pl.new_cursor()
        pl.seek(c, 0)
        cursors.append(c)
    readers = [pl.reader() for pl in plogs]
    P = len(plogs)
    try:
        ctl.meet()

        def drain(target: int) -> int:
            got = 0
            idle = 0
            i = 0
            while got < target:
                res = readers[i].read(cursors[i], batch)
                if res is not None:
                    got += len(res.values)
                    plogs[i].set_reader_position(rslots[i], gate_position(cursors[i]))
                    idle = 0
                    if ctl.expired():
                        break
                else:
                    idle += 1
                    if idle >= P:  # a whole pass found nothing: wait a little
                        if ctl.expired():
                            break
                        plogs[i].wait(cursors[i], 0.001, spin_us=20)
                        idle = 0
                i += 1
                if i == P:
                    i = 0
            return got

        drain(warm)
        ctl.meet()
        got = drain(n)
        t1 = now_ns()
        return {"t1": t1, "received": got, "timed_out": got < n, "mem": proc_mem()}
    finally:
        for pl, s in zip(plogs, rslots):
            pl.release_reader(s)
            pl.close()


# ---------------------------------------------------------------- CRC32C
CRC_PATHS = {0: "table", 1: "SSE4.2 crc32, 3 streams", 2: "VPCLMULQDQ folding"}


def crc_bench(p: Params, size: int = 64 * MIB, mode: str = "64 MiB buffer") -> Row:
    """CRC32C GB/s over one buffer of `size`, in this one process (no IPC):
    64 MiB (from memory), or 64 KiB (a batch, in cache: what a frame's CRC
    costs). A pass is as many CRCs of the buffer as make 64 MiB."""
    from shmlog.core._core import ffi, lib

    row = Row("CRC", "shmlog-core", mode=mode, procs="1 process (no IPC)")
    buf = bytearray(os.urandom(size))
    cbuf = ffi.from_buffer(buf)
    crc = lib.shmlog_crc32c
    crc(0, cbuf, size)  # warm-up: page in, pick the path
    per_pass = max(1, (64 * MIB) // size)
    best = float("inf")
    times = []
    for _ in range(p.crc_reps):
        t = time.perf_counter()
        for _ in range(per_pass):
            crc(0, cbuf, size)
        dt = time.perf_counter() - t
        times.append(dt)
        best = min(best, dt)
    times.sort()
    med = times[len(times) // 2]
    row.n = p.crc_reps
    row.size = size
    row.seconds = sum(times)
    row.gbps = size * per_pass / med / 1e9
    row.extra["best_gbps"] = size * per_pass / best / 1e9
    row.extra["hw"] = bool(lib.shmlog_crc32c_hw())
    row.extra["path"] = CRC_PATHS.get(lib.shmlog_crc32c_hw(), "?")
    # the portable fallback, on a smaller slice, for reference
    small = min(4 * MIB, size)
    t = time.perf_counter()
    for _ in range(max(1, (4 * MIB) // small)):
        lib.shmlog_crc32c_sw(0, cbuf, small)
    row.extra["sw_gbps"] = max(4 * MIB, small) / (time.perf_counter() - t) / 1e9
    used = row.extra["path"] if size <= 2 * MIB or not row.extra["hw"] else CRC_PATHS[1]
    row.note = (f"median of {p.crc_reps} passes; {used}; software fallback "
                f"{row.extra['sw_gbps']:.2f} GB/s")
    del cbuf
    return row


__all__ = ["ShmlogCore", "crc_bench", "unlink_all", "regions", "KIB"]
