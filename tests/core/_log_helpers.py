"""Helpers shared by the partition-log tests (tests/core/test_log_*.py):
raw views of a region's frames and chunks, and the child-process bodies
more than one of those files forks."""

from __future__ import annotations

import time

import pytest
from _core_helpers import (
    producer_slot,
    tail_pack,
)
from shmlog.core._core import ffi, lib

from shmlog import errors
from shmlog.core.log import PartitionLog
from shmlog.core.records import NONE


def frame_word(plog: PartitionLog, region_pos: int) -> int:
    return ffi.cast("uint64_t *", plog.c_log.base + region_pos)[0]


def frame_hdr(plog: PartitionLog, region_pos: int):
    return ffi.cast("shmlog_frame_hdr_t *", plog.c_log.base + region_pos)


def chunk_region_pos(plog: PartitionLog, seq: int, pos: int) -> int:
    return plog.c_log.header_bytes + (seq % plog.chunk_count) * plog.chunk_bytes + pos


def fill_until_full(plog: PartitionLog, slot: int, limit: int = 100_000) -> int:
    """Append 3 x 333-byte batches with timeout 0 until BufferFull; records appended."""
    n = 0
    with pytest.raises(errors.BufferFull):
        while n < limit:
            plog.append(slot, [b"x" * 333] * 3, timeout=0)
            n += 3
    return n


# Child bodies run in a forked child, attach the region afresh (its own pid
# in the handle) and report over the pipe.

def _claim_and_hang(conn, name, payload_bytes, records):
    """Claim space and write the CLAIMED header, never commit (then be killed)."""
    p = PartitionLog.attach(name)
    s = p.register_producer()
    out = ffi.new("uint64_t *")
    rc = lib.shmlog_log_claim_only(p.checked_log(), s, payload_bytes, records, out)
    conn.send((s, rc, int(out[0])))
    time.sleep(60)


def _fetch_add_and_hang(conn, name, fb, records, publish_claim_tail):
    """Do exactly what claim() does up to and including its fetch-add, then stop:
    the state of a producer SIGKILLed right after the fetch-add (before it wrote
    the CLAIMED header, or before the first overflower wrote the seal). Nobody
    else claims meanwhile, so the plain read-modify-write of the tail is the
    fetch-add."""
    p = PartitionLog.attach(name)
    s = p.register_producer()
    ps = producer_slot(p, s)
    h = p.hdr
    seq = h.active_seq
    d = h.chunks[seq % p.chunk_count]
    ps.claim_bytes = fb
    ps.claim_records = records
    ps.claim_tail = NONE
    ps.claim_seq = seq
    prev = d.tail
    d.tail = prev + tail_pack(fb, records)
    if publish_claim_tail:
        ps.claim_tail = prev
    conn.send((s, seq, int(prev)))
    time.sleep(60)
