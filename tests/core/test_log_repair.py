"""The partition log in shared memory (csrc/ through shmlog/core/log.py):
dead claimers: holes committed as aborted batches, seals by the reaper,
and a producer fenced mid-claim.

Tests create their regions under the `shm_prefix` fixture and close and
unlink them; every child process is forked, and killed or joined before the
test ends. Fault tests kill real processes (SIGKILL) at chosen points and
check DESIGN.md's invariants. Shared helpers: _log_helpers.py.
"""

from __future__ import annotations

import errno
import threading
import time

import pytest
from _core_helpers import (
    Child,
    frame_bytes_for,
    new_log,
    producer_slot,
    read_all,
    tail_bytes,
    tail_pack,
    tail_records,
    value_of,
)
from _log_helpers import (
    _claim_and_hang,
    _fetch_add_and_hang,
    chunk_region_pos,
    frame_word,
)
from shmlog.core._core import lib

from shmlog import errors
from shmlog.core.log import PartitionLog

# ------------------------------------------------------------ dead claimers

@pytest.mark.parametrize("repair", ["reap_producer", "unblock"])
def test_dead_claimer_hole_is_skipped_after_repair(shm_prefix, repair):
    with new_log(shm_prefix) as plog:
        live = plog.register_producer()
        expected = []
        for k in range(3):
            vals = [value_of(len(expected) + j, 37 + 296 * (k % 2)) for j in range(5)]
            plog.append(live, vals)
            expected += vals
        a = len(expected)  # 15
        with Child(_claim_and_hang, plog.name, 333, 7) as claimer:
            cslot, rc, hole_base = claimer.recv()
            assert rc == 0 and hole_base == a
            claimer.kill()  # SIGKILL between claim and commit
        after = {}
        for k in range(3):
            base = plog.claimed_end
            vals = [value_of(base + j, 3333 if j == 0 else 37) for j in range(1 + k)]
            assert plog.append(live, vals) == base
            after.update((base + j, v) for j, v in enumerate(vals))
        assert min(after) == a + 7
        reader = plog.reader()
        c = plog.new_cursor()
        offsets, values, *_ = read_all(plog, c, reader=reader)
        assert offsets == list(range(a)) and values == expected
        # stalled at the hole: a waiter times out, never hangs
        t0 = time.monotonic()
        assert plog.wait(c, 0.2) is False
        assert 0.19 <= time.monotonic() - t0 < 1.5
        probe = plog.new_cursor()
        plog.seek(probe, a)
        state, seq, pos = plog.frontier(probe)
        assert state == lib.SHMLOG_FRONTIER_BLOCKED
        hole_pos = chunk_region_pos(plog, seq, pos)
        fb = frame_bytes_for(333)
        assert frame_word(plog, hole_pos) == lib.shmlog_frame_word(seq, lib.SHMLOG_FRAME_CLAIMED, fb)
        if repair == "reap_producer":
            assert plog.reap_producer(cslot) == 1
            assert producer_slot(plog, cslot).pid == 0
        else:
            assert plog.unblock(seq, pos) == 1
            assert plog.unblock(seq, pos) == 0  # idempotent
        assert frame_word(plog, hole_pos) == lib.shmlog_frame_word(seq, lib.SHMLOG_FRAME_PAD, fb)
        assert plog.hdr.aborted_batches == 1
        offsets, values, *_ = read_all(plog, c, reader=reader)
        assert offsets == sorted(after) and values == [after[o] for o in offsets]
        # every consumer skips the hole the same way
        offsets, values, *_ = read_all(plog)
        assert offsets == list(range(a)) + sorted(after)
        assert values == expected + [after[o] for o in sorted(after)]
        state, _, _ = plog.frontier(probe)
        assert state == lib.SHMLOG_FRONTIER_IDLE


def test_claimer_killed_before_its_header_is_padded_to_the_next_frame(shm_prefix):
    """Killed between the fetch-add and the CLAIMED header: no slot knows the
    claim's position, so unblock() sizes the hole from the next header; it must
    refuse while that claimer is still alive."""
    with new_log(shm_prefix) as plog:
        live = plog.register_producer()
        plog.append(live, [value_of(j, 37) for j in range(4)])
        fb = frame_bytes_for(500)
        with Child(_fetch_add_and_hang, plog.name, fb, 9, False) as claimer:
            cslot, seq, prev = claimer.recv()
            assert tail_records(prev) == 4
            plog.append(live, [value_of(13 + j, 37) for j in range(3)])  # lands after the hole
            c = plog.new_cursor()
            assert read_all(plog, c)[0] == [0, 1, 2, 3]
            state, fseq, pos = plog.frontier(plog.new_cursor())
            assert (state, fseq, pos) == (lib.SHMLOG_FRONTIER_BLOCKED, seq, tail_bytes(prev))
            assert frame_word(plog, chunk_region_pos(plog, seq, pos)) == 0
            # alive and maybe about to write its header: not padded over
            assert plog.unblock(seq, pos) == -errno.EAGAIN
            claimer.kill()
        assert plog.unblock(seq, pos) == 1
        assert frame_word(plog, chunk_region_pos(plog, seq, pos)) == lib.shmlog_frame_word(
            seq, lib.SHMLOG_FRAME_PAD, fb)
        assert plog.reap_producer(cslot) == 0  # nothing left to abort; slot freed
        assert producer_slot(plog, cslot).pid == 0
        offsets, values, *_ = read_all(plog, c)
        assert offsets == [13, 14, 15]
        assert values == [value_of(13 + j, 37) for j in range(3)]


def _fill_chunk_below(plog: PartitionLog, slot: int, fb_next: int) -> int:
    """Commit small batches into the active chunk until a frame of fb_next
    bytes no longer fits; returns the records committed."""
    d = plog.hdr.chunks[plog.hdr.active_seq % plog.chunk_count]
    n = 0
    step = None
    while True:
        before = tail_bytes(d.tail)
        if step is not None and plog.chunk_bytes - before < max(step, fb_next):
            break
        plog.append(slot, [value_of(n + j, 333) for j in range(3)])
        step = tail_bytes(d.tail) - before
        n += 3
    assert plog.chunk_bytes - tail_bytes(d.tail) < fb_next
    assert plog.hdr.rotations == 0
    return n


def test_dead_first_overflower_is_sealed_by_the_reaper(shm_prefix):
    with new_log(shm_prefix) as plog:
        live = plog.register_producer()
        n = _fill_chunk_below(plog, live, 4096)
        with Child(_fetch_add_and_hang, plog.name, 4096, 5, True) as claimer:
            cslot, seq, prev = claimer.recv()
            assert seq == 0 and tail_records(prev) == n
            assert tail_bytes(prev) + 4096 > plog.chunk_bytes  # the first overflower
            claimer.kill()  # before it wrote the seal
        c = plog.new_cursor()
        assert read_all(plog, c)[0] == list(range(n))
        # nobody can rotate: producers time out instead of waiting forever
        with pytest.raises(errors.BufferFull):
            plog.append(live, [b"late"], timeout=0.2)
        state, fseq, pos = plog.frontier(plog.new_cursor())
        assert state == lib.SHMLOG_FRONTIER_UNSEALED and fseq == 0
        assert plog.reap_producer(cslot) == 0
        assert plog.hdr.chunks[0].seal == tail_pack(tail_bytes(prev), n)
        assert plog.frontier(plog.new_cursor())[0] == lib.SHMLOG_FRONTIER_FULL
        # the next append rotates; offsets stay dense (the lost claim took none)
        assert plog.append(live, [value_of(n, 37), value_of(n + 1, 37)], timeout=1) == n
        assert plog.hdr.rotations == 1 and plog.hdr.chunks[1].base_offset == n
        offsets, values, *_ = read_all(plog, c)
        assert offsets == [n, n + 1] and values == [value_of(n, 37), value_of(n + 1, 37)]


def test_force_seal_when_nobody_knows_the_overflowing_claim(shm_prefix):
    with new_log(shm_prefix) as plog:
        live = plog.register_producer()
        n = _fill_chunk_below(plog, live, 4096)
        d = plog.hdr.chunks[0]
        pb = tail_bytes(d.tail)
        # a fetch-add whose producer vanished before even its slot said so
        d.tail = d.tail + tail_pack(4096, 5)
        c = plog.new_cursor()
        assert read_all(plog, c)[0] == list(range(n))
        assert plog.frontier(plog.new_cursor()) == (lib.SHMLOG_FRONTIER_UNSEALED, 0, pb)
        with pytest.raises(errors.BufferFull):
            plog.append(live, [b"late"], timeout=0.2)
        assert plog.force_seal(0) == 1
        assert plog.force_seal(0) == 0  # idempotent
        # sealed at the chunk's end with every claimed record counted
        assert d.seal == tail_pack(plog.chunk_bytes, n + 5)
        # the unclaimed space before the end is now a hole for unblock()
        assert plog.frontier(plog.new_cursor()) == (lib.SHMLOG_FRONTIER_BLOCKED, 0, pb)
        assert plog.unblock(0, pb) == 1
        assert plog.frontier(plog.new_cursor())[0] == lib.SHMLOG_FRONTIER_FULL
        assert plog.append(live, [value_of(n + 5, 37)], timeout=1) == n + 5
        assert plog.hdr.rotations == 1
        # the lost claim's 5 offsets are the hole; nothing committed is lost
        offsets, *_ = read_all(plog, c)
        assert offsets == [n + 5]
        assert read_all(plog)[0] == list(range(n)) + [n + 5]


def test_a_producer_fenced_mid_claim_gives_it_up_and_loses_nothing(shm_prefix):
    """A reaper raises a claim's `fenced` before padding over it; a producer
    that finds its claim fenced before it stamped the word must give the
    claim up (pad it: a hole of its offsets) and append the batch again.
    Here a thread fences the producer's slot over and over while it appends
    (cffi releases the GIL in C, so the fence lands inside claims)."""
    with new_log(shm_prefix, chunk_bytes=4 << 20) as plog:
        slot = plog.register_producer()
        ps = producer_slot(plog, slot)
        stop = threading.Event()

        def fencer():
            while not stop.is_set():
                ps.fenced = 1

        t = threading.Thread(target=fencer, daemon=True)
        t.start()
        sent: list = []
        bases: list = []
        try:
            deadline = time.monotonic() + 10  # a loaded host lands fewer fences
            i = 0
            while plog.hdr.aborted_batches < 20 and time.monotonic() < deadline:
                vals = [value_of(i * 4 + j, 37) for j in range(4)]
                bases.append(plog.append(slot, vals))
                sent.append(vals)
                i += 1
        finally:
            stop.set()
            t.join()
        assert plog.hdr.aborted_batches >= 1, "no claim was ever given up: the fence is ignored"
        # every batch once, in order, at the offsets append() returned; the
        # given-up claims are holes between them. (A slow host may have
        # wrapped the ring: what is still in memory is checked.)
        assert len(set(bases)) == len(bases) and bases == sorted(bases)
        want = {b + j: v for b, vals in zip(bases, sent) for j, v in enumerate(vals)}
        offsets, values, *_ = read_all(plog)
        start = plog.start_offset
        assert offsets == sorted(o for o in want if o >= start)
        assert values == [want[o] for o in offsets]
        assert offsets and offsets[-1] == bases[-1] + 3
