"""Shared-memory frame-reader fuzzer (run in a child process by
shmlog.soak.fuzz, so a segfault is a reported failure).

Each round formats a small partition region, appends known batches (keys,
headers, lz4), corrupts random bytes of the region (its header or its
chunks, as a buggy or hostile process that can map it would), then attaches
afresh, as a consumer does, and reads everything. Allowed: the original
records, or a ShmlogError (CorruptBatch naming the offset, OffsetOutOfRange).
A record served that differs from what was written, a reader that never
ends, or any other exception is a violation.
"""

from __future__ import annotations

import os
import random
import traceback
from typing import Any, Dict

from .. import errors
from ..core._core import lib
from ..core.log import PartitionLog, unlink_region

CHUNK = 8192
CHUNKS = 3


def _fill(rng: random.Random, plog: PartitionLog) -> Dict[int, tuple]:
    truth: Dict[int, tuple] = {}
    slot = plog.register_producer()
    try:
        for b in range(rng.randrange(1, 12)):
            n = rng.randrange(1, 9)
            values = [bytes([b]) * rng.randrange(0, 200) for _ in range(n)]
            keys = [b"k%d" % i for i in range(n)] if b % 3 == 0 else None
            headers = [[("h", b"v")] for _ in range(n)] if b % 4 == 1 else None
            try:
                base = plog.append(slot, values, keys=keys, headers=headers,
                                   compression="lz4" if b % 2 else None, timeout=0.01)
            except (errors.BufferFull, errors.MessageTooLarge):
                break  # nobody reads here: the ring is full; or over max_batch_bytes
            for i, v in enumerate(values):
                truth[base + i] = (keys[i] if keys else None, v)
    finally:
        plog.release_producer(slot)
    return truth


def _corrupt(rng: random.Random, path: str, size: int) -> str:
    header = lib.SHMLOG_HEADER_BYTES
    with open(path, "r+b") as f:
        where = "header" if rng.random() < 0.4 else "chunks"
        for _ in range(rng.randrange(1, 6)):
            pos = rng.randrange(0, header) if where == "header" else rng.randrange(header, size)
            pos -= pos % 8 if rng.random() < 0.5 else 0
            f.seek(pos)
            f.write(rng.choice([os.urandom(rng.randrange(1, 16)), b"\xff" * 8, bytes(8),
                                rng.randrange(1 << 33).to_bytes(8, "little")]))
    return where


def fuzz_regions(prefix: str, seed: int, rounds: int) -> Dict[str, Any]:
    rng = random.Random(seed)
    fig: Dict[str, Any] = {"rounds": 0, "records_written": 0, "records_served": 0, "stops": {},
                           "corrupted": {}, "violations": []}
    name = f"{prefix}-fz"
    size = PartitionLog.region_bytes(CHUNK, CHUNKS)
    for r in range(rounds):
        plog = PartitionLog.create(name, chunk_bytes=CHUNK, chunk_count=CHUNKS, max_batch_bytes=2048)
        try:
            truth = _fill(rng, plog)
        finally:
            plog.close()
        fig["records_written"] += len(truth)
        try:
            where = _corrupt(rng, "/dev/shm/" + name.lstrip("/"), size)
            fig["corrupted"][where] = fig["corrupted"].get(where, 0) + 1
            how = "end"
            served = []
            try:
                with PartitionLog.attach(name) as reader_log:
                    reader = reader_log.reader()
                    cursor = reader_log.new_cursor()
                    reader_log.seek(cursor, reader_log.start_offset)
                    for _ in range(10_000):
                        res = reader.read(cursor, 500)
                        if res is None:
                            break
                        if isinstance(res, tuple):  # one record (offset, timestamp, value)
                            served.append((res[0], None, res[2]))
                        else:
                            served.extend(zip(res.offsets, res.keys, res.values))
                    else:
                        how = "loop"
            except errors.ShmlogError as exc:
                how = type(exc).__name__
            fig["stops"][how] = fig["stops"].get(how, 0) + 1
            fig["records_served"] += len(served)
            if how == "loop":
                fig["violations"].append(f"seed {seed} round {r}: the reader never ended")
            for o, k, v in served:
                want = truth.get(o)
                if want is None or want != (k, bytes(v)):
                    fig["violations"].append(f"seed {seed} round {r}: served offset {o} = {bytes(v)[:20]!r}, "
                                             f"written {want!r:.60}")
                    break
        except Exception:
            fig["violations"].append(f"seed {seed} round {r}: {traceback.format_exc()[-600:]}")
        finally:
            unlink_region(name)
        fig["rounds"] += 1
        if len(fig["violations"]) >= 20:
            break
    return fig
