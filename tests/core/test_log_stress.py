"""The partition log in shared memory (csrc/ through shmlog/core/log.py):
many producers, one consumer: every record once, in order.

Tests create their regions under the `shm_prefix` fixture and close and
unlink them; every child process is forked, and killed or joined before the
test ends. Fault tests kill real processes (SIGKILL) at chosen points and
check DESIGN.md's invariants. Shared helpers: _log_helpers.py.
"""

from __future__ import annotations

import random
import struct
import time

from _core_helpers import (
    Child,
    new_log,
)

from shmlog import errors
from shmlog.core.log import PartitionLog

# ------------------------------------------------------------ many producers

STRESS_PRODUCERS = 4
STRESS_RECORDS = 250_000
STRESS_SIZES = (9, 13, 21, 37, 51)
STRESS_FILL = bytes(range(256)) * 14
_TAG = struct.Struct("<HI")


def _stress_len(seq: int) -> int:
    if seq % 997 == 0:
        return 3333
    if seq % 101 == 0:
        return 333
    return STRESS_SIZES[seq % len(STRESS_SIZES)]


def _stress_producer(conn, name, tag, count):
    p = PartitionLog.attach(name)
    s = p.register_producer()
    rng = random.Random(tag)
    pack = _TAG.pack
    fill = STRESS_FILL
    conn.send("ready")
    assert conn.recv() == "go"
    seq = 0
    batches = 0
    while seq < count:
        n = min(rng.randint(50, 200), count - seq)
        vals = [pack(tag, q) + fill[: _stress_len(q) - 6] for q in range(seq, seq + n)]
        p.append(s, vals, timeout=60, producer_id=tag, producer_seq=batches)
        seq += n
        batches += 1
    p.release_producer(s)
    p.close()
    conn.send(("done", batches))


def _stress_consumer(conn, name, producers, per_producer):
    p = PartitionLog.attach(name)
    slot = p.register_reader(0, gating=True)
    reader = p.reader(8192)
    c = p.new_cursor()
    assert p.seek(c, 0) == 0
    conn.send(slot)
    want = producers * per_producer
    expect_seq = [0] * producers
    next_off = 0
    total = 0
    problems = []
    unpack = _TAG.unpack_from
    fill = STRESS_FILL
    rng = random.Random(99)
    deadline = time.monotonic() + 100
    while total < want and len(problems) < 20:
        try:
            res = reader.read(c, rng.randint(200, 4096))  # batches hold <= 200 records
        except errors.OffsetOutOfRange as exc:
            # a gating reader is never overtaken. (It was, once in ~75 runs,
            # when a producer stalled between checking the oldest chunk and
            # its CAS: test_reclaim_stalled_before_its_cas_*)
            problems.append(("out of range", c.next_offset, p.start_offset, str(exc)))
            break
        if res is None:
            if time.monotonic() > deadline:
                problems.append(("timeout", total))
                break
            p.wait(c, 0.5)
            continue
        for off, v in zip(res.offsets, res.values):
            if off != next_off:
                problems.append(("offset", off, next_off))
            next_off = off + 1
            tag, seq = unpack(v)
            if tag >= producers or seq != expect_seq[tag]:
                problems.append(("order", tag, seq, expect_seq[tag] if tag < producers else None))
                if tag >= producers:
                    continue
            expect_seq[tag] = seq + 1
            if len(v) != _stress_len(seq) or v[6:] != fill[: len(v) - 6]:
                problems.append(("value", tag, seq, len(v)))
        total += len(res)
        p.set_reader_position(slot, c.next_offset)
    extra = reader.read(c, 4096)
    conn.send({"total": total, "next_off": next_off, "expect_seq": expect_seq,
               "problems": problems[:20], "extra": None if extra is None else len(extra)})
    p.release_reader(slot)
    p.close()


def _gather(children, timeout):
    """One message from each child, failing fast on the first child error."""
    results = [None] * len(children)
    pending = set(range(len(children)))
    deadline = time.monotonic() + timeout
    while pending:
        assert time.monotonic() < deadline, f"children {sorted(pending)} still running (hang?)"
        for i in sorted(pending):
            if children[i].conn.poll(0.01):
                results[i] = children[i].recv(0)
                pending.discard(i)
    return results


def test_four_producers_one_consumer_every_record_once_in_order(shm_prefix):
    with new_log(shm_prefix, max_batch_bytes=16384) as plog:
        children = []
        try:
            consumer = Child(_stress_consumer, plog.name, STRESS_PRODUCERS, STRESS_RECORDS)
            children.append(consumer)
            consumer.recv()  # registered before anything is produced
            producers = [Child(_stress_producer, plog.name, tag, STRESS_RECORDS)
                         for tag in range(STRESS_PRODUCERS)]
            children += producers
            for pr in producers:
                assert pr.recv() == "ready"
            t0 = time.monotonic()
            for pr in producers:
                pr.send("go")
            *done, result = _gather(producers + [consumer], 100)
            elapsed = time.monotonic() - t0
            batches = [d[1] for d in done]
            for ch in children:
                assert ch.join() == 0
        finally:
            for ch in children:
                ch.close()
        total = STRESS_PRODUCERS * STRESS_RECORDS
        rotations = plog.hdr.rotations
        print(f"\n{total} records from {STRESS_PRODUCERS} producers in {sum(batches)} batches: "
              f"{elapsed:.1f} s, {rotations} chunk rotations, "
              f"{plog.hdr.reclaimed_chunks} chunks reclaimed")
        assert result["problems"] == []
        assert result["total"] == total and result["next_off"] == total
        assert result["expect_seq"] == [STRESS_RECORDS] * STRESS_PRODUCERS
        assert result["extra"] is None
        assert plog.end_offset() == plog.claimed_end == total
        assert plog.hdr.aborted_batches == 0
        assert 100 <= rotations < 10_000
