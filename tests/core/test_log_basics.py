"""The partition log in shared memory (csrc/ through shmlog/core/log.py):
appends, reads and seeks with dense offsets across rotations, lz4
batches, and a region's lifecycle (close, use after close, slots, deletion).

Tests create their regions under the `shm_prefix` fixture and close and
unlink them; every child process is forked, and killed or joined before the
test ends. Fault tests kill real processes (SIGKILL) at chosen points and
check DESIGN.md's invariants. Shared helpers: _log_helpers.py.
"""

from __future__ import annotations

import os

import pytest
from _core_helpers import (
    frames,
    new_log,
    read_all,
    tail_records,
    value_of,
)
from _log_helpers import (
    chunk_region_pos,
    frame_hdr,
)
from shmlog.core._core import ffi, lib

from shmlog import errors
from shmlog.core.log import PartitionLog

# ------------------------------------------------------------ basics

def test_append_read_round_trip_dense_offsets_across_rotations(shm_prefix):
    sizes = [37, 333, 3333, 9, 77, 13]
    batch_sizes = [1, 3, 7, 11, 2]
    with new_log(shm_prefix, max_batch_bytes=16384) as plog:
        slot = plog.register_producer()
        total = 0
        k = 0
        # stay below chunk_count chunks: nothing is dropped, everything readable
        while plog.hdr.rotations < plog.chunk_count - 1:
            n = batch_sizes[k % len(batch_sizes)]
            vals = [value_of(total + j, sizes[(total + j) % len(sizes)]) for j in range(n)]
            assert plog.append(slot, vals) == total
            total += n
            k += 1
        offsets, values, keys, headers, _ = read_all(plog)
        assert offsets == list(range(total))
        assert values == [value_of(o, sizes[o % len(sizes)]) for o in offsets]
        assert keys == [None] * total
        assert plog.end_offset() == plog.claimed_end == total
        # chunk bases chain: each starts where the sealed one before it ended
        h = plog.hdr
        for seq in range(1, plog.chunk_count):
            prev = h.chunks[seq - 1]
            assert h.chunks[seq].seq == seq
            assert h.chunks[seq].base_offset == prev.base_offset + tail_records(prev.seal)


def test_large_values_take_the_pointer_path_and_round_trip(shm_prefix):
    """Few large values are handed to C one pointer each (no join copy);
    what comes back must be byte-identical, with or without known lengths,
    and a batch holding None or a non-bytes value falls back to the join
    path (null value kept; TypeError naming the index)."""
    with new_log(shm_prefix, chunk_bytes=1 << 22, chunk_count=4, max_batch_bytes=1 << 20) as plog:
        slot = plog.register_producer()
        big = [bytes([i]) * (20000 + 3333 * i) for i in range(5)]
        assert plog.append(slot, big) == 0
        assert plog.append(slot, big, value_lens=[len(v) for v in big]) == 5
        with_null = [big[0], None, bytearray(big[2]), memoryview(big[3])]
        assert plog.append(slot, with_null) == 10
        with pytest.raises(TypeError, match="#1"):
            plog.append(slot, [big[0], "not bytes" * 3000])
        offsets, values, _keys, _headers, _ = read_all(plog)
        assert offsets == list(range(14))
        assert values == big + big + [big[0], None, big[2], big[3]]


def test_message_too_large_takes_no_offset(shm_prefix):
    with new_log(shm_prefix) as plog:  # max_batch_bytes = 4096
        slot = plog.register_producer()
        plog.append(slot, [b"a" * 37])
        with pytest.raises(errors.MessageTooLarge, match="batch too large"):
            plog.append(slot, [b"b" * 4033])
        assert plog.claimed_end == plog.end_offset() == 1
        assert plog.append(slot, [b"c" * 3333]) == 1


def test_seek_to_zero_into_a_batch_and_into_a_later_chunk(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        total = 0
        while plog.hdr.rotations < 2:
            plog.append(slot, [value_of(total + j, 333) for j in range(7)])
            total += 7
        base1 = plog.hdr.chunks[1].base_offset
        assert 0 < base1 < total
        reader = plog.reader()
        # region position of the frame holding each offset
        frame_at = {}
        begin = 0
        for pos, _fb, end in frames(plog):
            frame_at.update((o, pos) for o in range(begin, end))
            begin = end
        targets = [0, 3, 7, 10, base1, base1 + 5, total - 1, total]
        for target in targets:
            c = plog.new_cursor()
            assert plog.seek(c, target) == 0, target
            assert c.next_offset == target
            expect_seq = sum(1 for s in range(3) if plog.hdr.chunks[s].base_offset <= target) - 1
            if target < total:
                # the cursor stands on the frame that holds the offset
                assert c.seq == expect_seq, target
                assert chunk_region_pos(plog, c.seq, c.pos) == frame_at[target], target
            offsets, values, *_ = read_all(plog, c, reader=reader)
            assert offsets == list(range(target, total)), target
            assert values == [value_of(o, 333) for o in offsets]


def test_seek_end_end_offset_and_claimed_end(shm_prefix):
    with new_log(shm_prefix) as plog:
        reader = plog.reader()
        c = plog.new_cursor()
        plog.seek_end(c)
        assert c.next_offset == plog.end_offset() == plog.claimed_end == 0
        assert reader.read(c, 10) is None
        slot = plog.register_producer()
        for k in range(5):
            plog.append(slot, [value_of(k * 3 + j, 37) for j in range(3)])
        assert plog.end_offset() == plog.claimed_end == 15
        plog.seek_end(c)
        assert c.next_offset == 15
        assert reader.read(c, 10) is None
        assert plog.append(slot, [value_of(15 + j, 37) for j in range(4)]) == 15
        assert list(reader.read(c, 10).offsets) == [15, 16, 17, 18]
        # an in-flight claim: the claimed end moves, the committed end does not
        out = ffi.new("uint64_t *")
        assert lib.shmlog_log_claim_only(plog.checked_log(), slot, 100, 6, out) == 0
        assert out[0] == 19
        assert plog.claimed_end == 25
        assert plog.end_offset() == 19
        assert plog.reap_producer(slot) == 1  # abort it: a hole of 6 offsets
        slot = plog.register_producer()
        assert plog.append(slot, [b"after"]) == 25
        assert plog.end_offset() == plog.claimed_end == 26
        assert list(reader.read(c, 10).offsets) == [25]


def test_seek_past_end_stops_at_end(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        plog.append(slot, [value_of(j, 37) for j in range(10)])
        c = plog.new_cursor()
        assert plog.seek(c, 25) == 0
        plog.append(slot, [value_of(10 + j, 37) for j in range(20)])
        offsets, *_ = read_all(plog, c)
        # log.h: "Offsets past the end stop at the end." -- and invariant 2:
        # a consumer never silently skips committed offsets
        assert offsets == list(range(10, 30))


def test_read_with_max_records_smaller_than_a_batch(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        plog.append(slot, [value_of(j, 37) for j in range(5)])
        plog.append(slot, [value_of(5 + j, 333) for j in range(3)])
        reader = plog.reader()
        c = plog.new_cursor()
        assert plog.seek(c, 1) == 0
        got = []
        for _ in range(20):
            res = reader.read(c, 2)  # "Up to max_records decoded records"
            if res is None:
                break
            assert 1 <= len(res) <= 2
            assert res.values == [value_of(o, 37 if o < 5 else 333) for o in res.offsets]
            got += res.offsets
        assert got == list(range(1, 8))


def test_lz4_batch_larger_than_the_reader_capacity_is_not_truncated(shm_prefix):
    with new_log(shm_prefix, max_batch_bytes=16384) as plog:
        slot = plog.register_producer()
        plog.append(slot, [value_of(j, 9) for j in range(500)], compression="lz4")
        offsets, values, *_ = read_all(plog, reader=plog.reader(100))
        assert offsets == list(range(500))


def test_lz4_read_respects_max_records(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        plog.append(slot, [value_of(j, 37) for j in range(50)], compression="lz4")
        res = plog.reader().read(plog.new_cursor(), 10)
        assert len(res) <= 10


# ------------------------------------------------------------ lz4

def test_lz4_batches_round_trip_mixed_with_plain(shm_prefix):
    with new_log(shm_prefix, max_batch_bytes=16384) as plog:
        slot = plog.register_producer()
        expected = {}
        compressions = [None, "lz4", "lz4", None, "lz4", None, "lz4"]
        off = 0
        for k, comp in enumerate(compressions):
            n = 5 + 7 * k
            vals, keys, hdrs, tss = [], [], [], []
            for j in range(n):
                o = off + j
                v = None if o % 11 == 5 else (b"" if o % 13 == 4 else value_of(o, (37, 333, 9)[o % 3]))
                key = None if o % 3 == 0 else b"key-%d" % o
                h = [("h", b"%d" % o), ("none", None)] if o % 4 == 1 else []
                vals.append(v)
                keys.append(key)
                hdrs.append(h)
                tss.append(1_700_000_000_000 + (o * 37) % 1000 - 500)
                expected[o] = (v, key, h, tss[-1])
            assert plog.append(slot, vals, keys=keys, headers=hdrs, timestamps=tss,
                               compression=comp) == off
            off += n
        # lz4 batches really are compressed frames
        fr = frames(plog)
        assert len(fr) == len(compressions)
        for (pos, _fb, _end), comp in zip(fr, compressions):
            f = frame_hdr(plog, pos)
            assert (f.attributes & lib.SHMLOG_ATTR_COMPRESSION_MASK) == (
                lib.SHMLOG_ATTR_LZ4 if comp else 0)
            if comp:
                assert f.payload_bytes < f.uncompressed_bytes
        offsets, values, keys, headers, timestamps = read_all(plog)
        assert offsets == list(range(off))
        for o, v, key, h, ts in zip(offsets, values, keys, headers, timestamps):
            assert (v, key, h, ts) == expected[o], o
        # seek into the middle of a compressed batch: records before it are skipped
        lz4_base = fr[0][2]  # the second batch (lz4) starts where the first ends
        c = plog.new_cursor()
        assert plog.seek(c, lz4_base + 4) == 0
        offsets, values, *_ = read_all(plog, c)
        assert offsets == list(range(lz4_base + 4, off))
        assert values == [expected[o][0] for o in offsets]


def test_lz4_garbage_with_valid_crc_is_corrupt_batch(shm_prefix):
    """A frame whose CRC checks but whose lz4 payload does not decompress (a
    buggy producer) gives CorruptBatch naming the offset, not a crash."""
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        plog.append(slot, [b"ok" * 20] * 3)
        garbage = bytes(range(200, 256)) * 3
        out = ffi.new("uint64_t *")
        rc = lib.shmlog_log_append_section(plog.checked_log(), slot, garbage, len(garbage), 4,
                                           lib.SHMLOG_ATTR_LZ4, 0, 0, 0, 0, 0xFFFFFFFF, 10**9, out)
        assert rc == 0 and out[0] == 3
        reader = plog.reader()
        c = plog.new_cursor()
        assert list(reader.read(c, 100).offsets) == [0, 1, 2]
        with pytest.raises(errors.CorruptBatch, match="at offset 3"):
            reader.read(c, 100)


def test_lz4_corrupt_batch_carries_what(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        garbage = bytes(range(200, 256)) * 3
        out = ffi.new("uint64_t *")
        lib.shmlog_log_append_section(plog.checked_log(), slot, garbage, len(garbage), 4,
                                      lib.SHMLOG_ATTR_LZ4, 0, 0, 0, 0, 1000, 10**9, out)
        with pytest.raises(errors.CorruptBatch) as ei:
            plog.reader().read(plog.new_cursor(), 100)
        assert ei.value.what == plog.what


# ------------------------------------------------------------ lifecycle

def test_close_twice_and_use_after_close_raises_closed(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        rslot = plog.register_reader(0)
        plog.append(slot, [b"a" * 37])
        reader = plog.reader()
        c = plog.new_cursor()
        plog.close()
        plog.close()  # twice is fine
        assert plog.closed
        calls = [
            lambda: plog.append(slot, [b"b"]),
            lambda: reader.read(c, 10),
            lambda: plog.wait(c, 0.01),
            lambda: plog.seek(c, 0),
            lambda: plog.seek_end(c),
            lambda: plog.end_offset(),
            lambda: plog.start_offset,
            lambda: plog.claimed_end,
            lambda: plog.register_producer(),
            lambda: plog.register_reader(0),
            lambda: plog.set_reader_position(rslot, 1),
            lambda: plog.reap_producer(slot),
            lambda: plog.frontier(c),
        ]
        for call in calls:
            with pytest.raises(errors.Closed, match="is closed") as ei:
                call()
            assert isinstance(ei.value, errors.ShmlogError)
            assert errors.Closed.HINT in str(ei.value)
        # releasing after close is a quiet no-op (used in finally blocks)
        plog.release_producer(slot)
        plog.release_reader(rslot)


def test_a_region_marked_deleted_is_stale_in_every_attached_process(shm_prefix):
    """The supervisor deletes a topic by setting SHMLOG_F_CLOSED in the
    region's header: another handle on the same region sees it `stale`
    (so a client maps the topic afresh) without a request."""
    with new_log(shm_prefix) as plog:
        other = PartitionLog.attach(plog.name)
        try:
            assert not plog.stale and not other.stale
            plog.mark_deleted()
            assert other.stale and plog.stale
            assert other.hdr.flags & lib.SHMLOG_F_CLOSED
        finally:
            other.close()
        assert other.stale  # closed here: stale too, without touching the unmapped header

def test_slot_pids_lists_exactly_the_slots_in_use(shm_prefix):
    """The reaper's one-call scan: every producer and reader slot in use,
    with its pid, and nothing else (freed slots drop out)."""
    with new_log(shm_prefix) as plog:
        assert plog.slot_pids() == ([], [])
        prods = [plog.register_producer() for _ in range(3)]
        readers = [plog.register_reader(0, gating=g) for g in (True, False)]
        me = os.getpid()
        assert plog.slot_pids() == ([(s, me) for s in prods], [(s, me) for s in readers])
        plog.release_producer(prods[1])
        plog.release_reader(readers[0])
        assert plog.slot_pids() == ([(prods[0], me), (prods[2], me)], [(readers[1], me)])
        assert plog.producer_slots() == [(prods[0], me), (prods[2], me)]
        assert plog.reader_slots() == [(readers[1], me)]
