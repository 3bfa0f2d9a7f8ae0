"""The partition log in shared memory (csrc/ through shmlog/core/log.py):
backpressure and retention (gating readers, pins, chunk reuse), a
stalled CAS on a chunk's state, repair of dead rotators, and reuse of a
chunk without zeroing it (stale words never read as frames).

Tests create their regions under the `shm_prefix` fixture and close and
unlink them; every child process is forked, and killed or joined before the
test ends. Fault tests kill real processes (SIGKILL) at chosen points and
check DESIGN.md's invariants. Shared helpers: _log_helpers.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import time

import pytest
from _core_helpers import (
    Child,
    at_point,
    fill_until_rotation,
    frame_bytes_for,
    new_log,
    producer_slot,
    read_all,
    reader_slot,
    tail_bytes,
    tail_records,
    value_of,
)
from _log_helpers import (
    _fetch_add_and_hang,
    chunk_region_pos,
    fill_until_full,
    frame_hdr,
    frame_word,
)
from shmlog.core._core import ffi, lib

from shmlog import errors
from shmlog.core import reader as reader_module
from shmlog.core.log import PartitionLog
from shmlog.core.records import NONE

# Child bodies run in a forked child, attach the region afresh (its own pid
# in the handle) and report over the pipe.

def _register_reader_and_hang(conn, name):
    p = PartitionLog.attach(name)
    conn.send(p.register_reader(0, gating=True))
    time.sleep(60)


def _blocked_producer(conn, name):
    p = PartitionLog.attach(name)
    s = p.register_producer()
    conn.send("appending")
    base = p.append(s, [b"w" * 37], timeout=10)
    conn.send((base, time.monotonic()))


# ------------------------------------------------------------ backpressure, retention

def test_gating_reader_blocks_append_until_it_moves(shm_prefix):
    with new_log(shm_prefix) as plog:
        rslot = plog.register_reader(0, gating=True)
        slot = plog.register_producer()
        n = fill_until_full(plog, slot)
        assert lib.shmlog_log_chunks_in_use(plog.checked_log()) == plog.chunk_count
        assert plog.hdr.active_seq == plog.chunk_count - 1
        t0 = time.monotonic()
        with pytest.raises(errors.BufferFull) as ei:
            plog.append(slot, [b"y" * 37], timeout=0.3)
        elapsed = time.monotonic() - t0
        assert 0.29 <= elapsed < 1.5, elapsed
        assert "no free chunk" in str(ei.value) and errors.BufferFull.HINT in str(ei.value)
        assert ei.value.code == errno.EAGAIN
        assert plog.start_offset == 0
        end0 = plog.hdr.chunks[1].base_offset
        # one offset short of the end of the oldest chunk still gates it
        plog.set_reader_position(rslot, end0 - 1)
        with pytest.raises(errors.BufferFull):
            plog.append(slot, [b"y" * 37], timeout=0.05)
        plog.set_reader_position(rslot, end0)
        assert plog.append(slot, [b"y" * 37], timeout=1) == n
        assert plog.start_offset == end0
        assert plog.hdr.reclaimed_chunks == 1
        assert plog.hdr.active_seq == plog.chunk_count


def test_chunks_held_counts_what_producers_would_wait_on(shm_prefix):
    """chunks_in_use counts retained data too; chunks_held only what cannot be
    reused now (the fill gauge): the active chunk, and what a gating reader,
    a pin or the spiller still needs."""
    with new_log(shm_prefix, gate_spill=True) as plog:
        k = plog.chunk_count
        slot = plog.register_producer()
        rslot = plog.register_reader(0, gating=True)
        assert plog.chunks_held() == 1  # the active chunk
        fill_until_full(plog, slot)
        assert plog.chunks_in_use() == plog.chunks_held() == k
        base = [plog.hdr.chunks[i].base_offset for i in range(k)]
        plog.set_reader_position(rslot, base[2])
        assert plog.chunks_held() == k  # the spiller has copied nothing yet
        plog.set_spilled(base[3] - 1)
        assert plog.chunks_held() == k - 2  # chunks 0 and 1 are free to reuse ...
        assert plog.chunks_in_use() == k  # ... but still hold data until a producer needs them
        plog.set_reader_pin(rslot, base[1])  # a zero-copy view in chunk 1
        assert plog.chunks_held() == k - 1
        plog.set_reader_pin(rslot, None)
        plog.set_reader_position(rslot, plog.end_offset())
        plog.set_spilled(plog.end_offset())
        assert plog.chunks_held() == 1
        plog.release_reader(rslot)
        assert plog.chunks_held() == 1
    with new_log(shm_prefix, suffix="p1", gate_readers=False) as plog:
        slot = plog.register_producer()
        rslot = plog.register_reader(0, gating=True)  # gating, but the topic gates nothing on readers
        while plog.hdr.active_seq < plog.chunk_count - 1:
            plog.append(slot, [b"a" * 333] * 3, timeout=1)
        assert (plog.chunks_held(), plog.chunks_in_use()) == (1, plog.chunk_count)


def test_a_pin_holds_its_chunk_even_without_gating(shm_prefix):
    """Zero-copy readers pin the lowest offset they still read in place: that
    chunk is not reused, whatever the topic's gating, until the pin moves."""
    with new_log(shm_prefix, gate_readers=False) as plog:
        rslot = plog.register_reader(0, gating=False)
        slot = plog.register_producer()
        # an unpinned, non-gating reader holds nothing back
        while plog.hdr.active_seq < plog.chunk_count + 1:
            plog.append(slot, [b"p" * 333] * 3, timeout=0)
        start = plog.start_offset
        assert start > 0
        plog.set_reader_pin(rslot, start + 1)  # inside the oldest chunk still there
        assert reader_slot(plog, rslot).pin == start + 1
        fill_until_full(plog, slot)
        assert plog.start_offset == start
        plog.set_reader_pin(rslot, None)
        assert reader_slot(plog, rslot).pin == NONE
        plog.append(slot, [b"p" * 37], timeout=1)
        assert plog.start_offset > start


def test_blocked_producer_process_proceeds_when_reader_moves(shm_prefix):
    with new_log(shm_prefix) as plog:
        rslot = plog.register_reader(0, gating=True)
        slot = plog.register_producer()
        n = fill_until_full(plog, slot)
        with Child(_blocked_producer, plog.name) as ch:
            assert ch.recv() == "appending"
            deadline = time.monotonic() + 5
            while plog.hdr.space_waiters == 0:  # it is asleep on the space futex
                assert time.monotonic() < deadline, "producer never waited for space"
                time.sleep(0.001)
            time.sleep(0.05)
            assert not ch.conn.poll(0), "append returned while every chunk was gated"
            t_move = time.monotonic()
            plog.set_reader_position(rslot, plog.hdr.chunks[1].base_offset)
            base, t_done = ch.recv(5)
            assert ch.join() == 0
        assert base == n
        assert t_done - t_move < 0.5, t_done - t_move


def test_without_readers_the_oldest_chunk_is_dropped(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        reader = plog.reader()
        stale = plog.new_cursor()
        plog.append(slot, [value_of(j, 37) for j in range(3)])
        assert list(reader.read(stale, 100).offsets) == [0, 1, 2]
        while plog.hdr.active_seq < plog.chunk_count:  # seq chunk_count reuses chunk 0
            plog.append(slot, [b"z" * 333] * 3, timeout=0)
        base1 = plog.hdr.chunks[1].base_offset
        assert plog.start_offset == base1 > 0
        assert plog.hdr.reclaimed_chunks == 1
        # the reader whose chunk was dropped is told so, naming its offset
        with pytest.raises(errors.OffsetOutOfRange, match="at offset 3 ") as ei:
            reader.read(stale, 100)
        assert ei.value.code == errno.ERANGE
        # seeking below the start: -ERANGE, cursor at the start
        c = plog.new_cursor()
        assert plog.seek(c, 0) == -errno.ERANGE
        assert c.next_offset == base1
        assert plog.seek(c, base1 - 1) == -errno.ERANGE
        offsets, *_ = read_all(plog, c)
        assert offsets == list(range(base1, plog.end_offset()))
        assert plog.seek(c, base1) == 0


def test_dead_gating_reader_is_released_by_producer_slow_path(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        with Child(_register_reader_and_hang, plog.name) as ch:
            rslot = ch.recv()
            rs = reader_slot(plog, rslot)
            assert rs.pid == ch.proc.pid and rs.gating == 1 and rs.position == 0
            fill_until_full(plog, slot)
            with pytest.raises(errors.BufferFull):  # the live reader gates
                plog.append(slot, [b"q" * 37], timeout=0.2)
            ch.kill()  # SIGKILL while registered, then reaped
        t0 = time.monotonic()
        plog.append(slot, [b"q" * 37], timeout=5)
        assert time.monotonic() - t0 < 1.0
        assert reader_slot(plog, rslot).pid == 0
        assert plog.start_offset > 0


def test_reader_at_chunk_end_survives_reuse_of_that_chunk(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        n0 = fill_until_rotation(plog, slot)  # chunk 0 sealed, chunk 1 active
        base1 = plog.hdr.chunks[1].base_offset
        rslot = plog.register_reader(0, gating=True)
        reader = plog.reader()
        c = plog.new_cursor()
        res = reader.read(c, base1)  # exactly the records of chunk 0
        assert list(res.offsets) == list(range(base1)) and n0 >= base1
        assert c.seq == 0 and c.next_offset == base1
        plog.set_reader_position(rslot, c.next_offset)  # "next offset it will consume"
        while plog.hdr.active_seq < plog.chunk_count:  # reuses chunk 0 (nothing lost)
            plog.append(slot, [b"z" * 333] * 3, timeout=1)
        assert plog.start_offset == base1
        res = reader.read(c, 100_000)
        assert res.offsets[0] == base1


def test_read_starting_at_a_chunk_end_validates_the_chunk_it_read(shm_prefix, monkeypatch):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        fill_until_rotation(plog, slot)  # chunk 0 sealed; chunk 1 holds one batch
        base1 = plog.hdr.chunks[1].base_offset
        rslot = plog.register_reader(0, gating=True)
        reader = plog.reader()
        c = plog.new_cursor()
        assert list(reader.read(c, base1).offsets) == list(range(base1))  # parked at chunk 0's end
        plog.set_reader_position(rslot, base1)
        real = reader_module.lib

        class RacingLib:
            """A producer reuses chunk 0 between the reader's copy and its validation."""

            def __getattr__(self, name):
                return getattr(real, name)

            def shmlog_log_read(self, *args):
                n = real.shmlog_log_read(*args)
                while plog.hdr.active_seq < plog.chunk_count:
                    plog.append(slot, [b"z" * 333] * 3, timeout=1)
                return n

        monkeypatch.setattr(reader_module, "lib", RacingLib())
        res = reader.read(c, 100)  # every record it copied came from chunk 1, still valid
        assert res.offsets[0] == base1


# A process can stall (preempted, stopped) between loading a chunk's state and
# the CAS that acts on it, while the others take the ring round once and the
# chunk's slot comes back to the very same state. Each test stalls one step at
# its test point, runs that cycle, and checks the stale CAS did nothing.

def _drain(plog, reader, cursor, rslot, upto=None):
    """Read (and release) every committed record, or those below `upto`."""
    offsets = []
    while upto is None or cursor.next_offset < upto:
        res = reader.read(cursor, 100_000 if upto is None else upto - cursor.next_offset)
        if res is None:
            break
        offsets += res.offsets
    plog.set_reader_position(rslot, cursor.next_offset)
    return offsets


class _Ring:
    """A log with two producer slots and one gating reader, all in this process."""

    def __init__(self, plog):
        self.plog, self.k = plog, plog.chunk_count
        self.slot, self.other = plog.register_producer(), plog.register_producer()
        self.rslot = plog.register_reader(0, gating=True)
        self.reader, self.c = plog.reader(), plog.new_cursor()
        self.got = []

    def drain(self, upto=None):
        self.got += _drain(self.plog, self.reader, self.c, self.rslot, upto)

    def go_round(self, to_seq):
        """The other producer appends (the reader keeping up) until chunk to_seq is active."""
        while self.plog.hdr.active_seq < to_seq:
            self.plog.append(self.other, [b"b" * 333] * 3, timeout=1)
            self.drain()

    def check(self):
        _cycle_checked(self.plog, self.slot, self.reader, self.c, self.rslot, self.got, 2 * self.k)


def _cycle_checked(plog, slot, reader, cursor, rslot, got, rotations):
    """Go on for `rotations` more rotations, reading everything: nothing may
    block (a broken ring would) and every offset must arrive once, in order."""
    target = plog.hdr.active_seq + rotations
    while plog.hdr.active_seq < target:
        plog.append(slot, [b"c" * 333] * 3, timeout=1)
        got += _drain(plog, reader, cursor, rslot)
    assert got == list(range(plog.end_offset()))


def test_reclaim_stalled_before_its_cas_spares_the_slots_next_generation(shm_prefix):
    with new_log(shm_prefix) as plog:
        r = _Ring(plog)
        r.go_round(r.k - 1)  # the ring is full; the reader is done with chunk 0 only
        r.drain(upto=plog.hdr.chunks[1].base_offset)

        def ring_goes_round():
            # chunk 0 is freed, its slot reopened as chunk k and sealed; the
            # reader stops at chunk k's start, so chunk k is still needed
            assert lib.shmlog_log_reclaim(plog.checked_log()) == 1
            while plog.hdr.active_seq < r.k + 1:
                r.drain(plog.hdr.chunks[0].base_offset if plog.hdr.active_seq >= r.k else None)
                plog.append(r.slot, [b"b" * 333] * 3, timeout=1)
            assert plog.hdr.chunks[0].seq == r.k
            assert r.c.next_offset == plog.hdr.chunks[0].base_offset

        with at_point(lib.SHMLOG_POINT_RECLAIM, ring_goes_round) as fired:
            lib.shmlog_log_reclaim(plog.checked_log())  # checks chunk 0, stalls, then CASes
        assert fired
        assert plog.hdr.chunks[0].seq == r.k
        assert plog.hdr.chunks[0].state & 0xFF == lib.SHMLOG_CHUNK_SEALED  # not freed under the reader
        r.check()


def test_rotation_stalled_before_its_cas_does_not_open_a_stale_chunk(shm_prefix):
    with new_log(shm_prefix) as plog:
        r = _Ring(plog)

        def ring_goes_round():
            # chunk 0 is sealed and still the active one. Meanwhile another
            # producer opens chunk 1 there, fills the ring, and slot 1 is
            # freed again, ready for chunk k + 1
            r.go_round(r.k)
            assert lib.shmlog_log_reclaim(plog.checked_log()) == 1
            assert plog.hdr.chunks[1].state & 0xFF == lib.SHMLOG_CHUNK_FREE

        with at_point(lib.SHMLOG_POINT_ROTATE, ring_goes_round) as fired:
            fill_until_rotation(plog, r.slot)  # overflows chunk 0, stalls rotating
        assert fired
        assert plog.hdr.active_seq == r.k
        assert plog.hdr.chunks[1].state & 0xFF == lib.SHMLOG_CHUNK_FREE  # not reopened as chunk 1
        r.drain()
        r.check()


def test_seal_stalled_before_its_cas_does_not_seal_the_next_generation(shm_prefix):
    with new_log(shm_prefix) as plog:
        r = _Ring(plog)
        for _ in range(5):
            plog.append(r.slot, [b"a" * 333] * 3, timeout=1)
        # a sealer that was stopped between its seal word and its state CAS
        # (a claimer holds the chunk until it is done: it is never the one to stall)
        plog.hdr.chunks[0].seal = plog.hdr.chunks[0].tail

        def ring_goes_round():
            # a producer found chunk 0 ACTIVE with its seal set and went to
            # finish the seal. Meanwhile the ring goes round and slot 0 is
            # the active chunk k
            r.go_round(r.k)

        with at_point(lib.SHMLOG_POINT_SEAL, ring_goes_round) as fired:
            plog.append(r.slot, [b"a" * 333] * 3, timeout=1)  # finds chunk 0 sealed, stalls
        assert fired
        assert plog.hdr.chunks[0].seq == plog.hdr.active_seq == r.k
        assert plog.hdr.chunks[0].state & 0xFF == lib.SHMLOG_CHUNK_ACTIVE  # still takes claims
        r.drain()
        r.check()


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _plant_state(chunk, state: int, pid: int) -> None:
    """What a process SIGKILLed right after its CAS into `state` leaves."""
    chunk.state = (pid << 32) | ((chunk.state + 0x100) & 0xFFFFFF00) | state


def test_repair_of_a_dead_reclaimer_keeps_a_pinned_chunk(shm_prefix):
    with new_log(shm_prefix) as plog:
        r = _Ring(plog)
        r.go_round(r.k - 1)  # the reader's position releases chunk 0 ...
        plog.set_reader_pin(r.rslot, 0)  # ... but a zero-copy view still pins it
        dead = _dead_pid()
        # a reclaimer that died after its CAS, before it looked at the pins
        _plant_state(plog.hdr.chunks[0], lib.SHMLOG_CHUNK_RECLAIMING, dead)
        assert plog.repair_chunks(dead) == 1
        assert plog.hdr.chunks[0].state & 0xFF == lib.SHMLOG_CHUNK_SEALED
        assert lib.shmlog_log_reclaim(plog.checked_log()) == 0  # the pin holds it
        c2 = plog.new_cursor()
        assert read_all(plog, c2)[0][:3] == [0, 1, 2]
        plog.set_reader_pin(r.rslot, None)
        assert lib.shmlog_log_reclaim(plog.checked_log()) == 1  # reclaimed again, with every check
        assert plog.start_offset == plog.hdr.chunks[1].base_offset
        r.check()


def test_repair_of_a_dead_opener_frees_the_slot_for_the_next_rotation(shm_prefix):
    with new_log(shm_prefix) as plog:
        r = _Ring(plog)
        dead = _dead_pid()
        # an opener that died after its CAS, with the slot half written
        plog.hdr.chunks[1].seq = 1
        plog.hdr.chunks[1].tail = 12345
        _plant_state(plog.hdr.chunks[1], lib.SHMLOG_CHUNK_OPENING, dead)
        with pytest.raises(errors.BufferFull):
            fill_until_rotation(plog, r.slot, timeout=0.05)
        assert plog.repair_chunks(dead) == 1
        assert plog.repair_chunks(dead) == 0
        assert plog.hdr.chunks[1].state & 0xFF == lib.SHMLOG_CHUNK_FREE
        fill_until_rotation(plog, r.slot)
        assert plog.hdr.chunks[1].seq == plog.hdr.active_seq == 1
        r.drain()
        r.check()


def test_producer_and_reader_slots_are_listed_and_released(shm_prefix):
    with new_log(shm_prefix) as plog:
        assert plog.producer_slots() == [] and plog.reader_slots() == []
        p = plog.register_producer()
        r = plog.register_reader(7, gating=True, group_id=42)
        assert plog.producer_slots() == [(p, os.getpid())]
        assert plog.reader_slots() == [(r, os.getpid())]
        rs = plog.hdr.readers[r]
        assert (rs.position, rs.gating, rs.group_id, rs.pin) == (7, 1, 42, NONE)
        plog.release_producer(p)
        plog.release_reader(r)
        assert plog.producer_slots() == [] and plog.reader_slots() == []
        assert plog.hdr.readers[r].position == NONE


# ------------------------------------------------- chunk reuse without zeroing
#
# A reused chunk is not zeroed: frame words carry their chunk's generation
# (csrc/layout.h). The worst stale bytes are ones that carry the *current*
# generation's tag by chance; these tests plant exactly those and check that
# readers, producers and the reaper never take them for frames.

def _plant(plog: PartitionLog, seq: int, start: int, kind: int, fl: int = 128) -> None:
    """At every 64-byte position of chunk `seq` from `start` on, a word with
    seq's own tag and a header that cannot pass (crc and lengths nonsense)."""
    words = ffi.cast("uint64_t *", plog.c_log.base + chunk_region_pos(plog, seq, 0))
    w = lib.shmlog_frame_word(seq, kind, fl)
    for pos in range(start, plog.chunk_bytes - 63, 64):
        words[pos // 8] = w
        words[pos // 8 + 1] = 0x0BAD0BAD0BAD0BAD


@pytest.mark.parametrize("kind", ["DATA", "PAD", "CLAIMED"])
def test_stale_words_with_this_generations_tag_are_never_read_as_frames(shm_prefix, kind):
    k = getattr(lib, f"SHMLOG_FRAME_{kind}")
    rng = random.Random(kind)
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        reader = plog.reader()
        c = plog.new_cursor()
        planted_for = None
        got_offsets: list = []
        got_values: list = []
        sent: list = []
        while plog.hdr.rotations < 3 * plog.chunk_count:
            seq = plog.hdr.active_seq
            if planted_for != seq:
                # the unclaimed rest of the active chunk, and all of the next
                # slot (the oldest generation, read already) for when it is reused
                _plant(plog, seq, tail_bytes(plog.hdr.chunks[seq % plog.chunk_count].tail), k)
                _plant(plog, seq + 1, 0, k)
                planted_for = seq
            tb = tail_bytes(plog.hdr.chunks[seq % plog.chunk_count].tail)
            # max_batch_bytes is 4096 here; sizes vary so frames move across generations
            vals = [rng.randbytes(rng.randint(0, 400)) for _ in range(rng.randint(1, 8))]
            base = plog.append(slot, vals)
            sent += vals
            if plog.hdr.active_seq == seq:
                # the slack after the payload is zeroed, not left to the old bytes
                f = frame_hdr(plog, chunk_region_pos(plog, seq, tb))
                assert f.base_offset == base
                fb = frame_bytes_for(f.payload_bytes)
                start = chunk_region_pos(plog, seq, tb) + 64 + f.payload_bytes
                assert plog.mapping[start : chunk_region_pos(plog, seq, tb) + fb] == bytes(
                    fb - 64 - f.payload_bytes)
            offsets, values, *_ = read_all(plog, c, reader=reader)
            assert offsets == list(range(base, base + len(vals))) and values == vals
            # caught up, at a planted word: nothing, and no wake-up either
            assert reader.read(c, 100) is None
            assert plog.wait(c, 0) is False
            got_offsets += offsets
            got_values += values
        assert got_offsets == list(range(len(sent))) and got_values == sent
        # a second reader from the start sees the same (what is still in memory)
        offsets, values, *_ = read_all(plog)
        assert offsets == list(range(plog.start_offset, len(sent)))
        assert values == sent[plog.start_offset:]
        assert plog.hdr.aborted_batches == 0


@contextlib.contextmanager
def _stalled_claim(plog: PartitionLog):
    """Records 0-3, a claimer stopped right after its fetch-add (9 records,
    500 bytes, its slot knows the claim), records 13-15 after that hole.
    Yields (claimer, its slot, seq, pos of the hole)."""
    live = plog.register_producer()
    plog.append(live, [value_of(j, 37) for j in range(4)])
    with Child(_fetch_add_and_hang, plog.name, frame_bytes_for(500), 9, True) as claimer:
        cslot, seq, prev = claimer.recv()
        assert tail_records(prev) == 4
        plog.append(live, [value_of(13 + j, 37) for j in range(3)])
        yield claimer, cslot, seq, tail_bytes(prev)


@pytest.mark.parametrize("kind", ["DATA", "PAD", "CLAIMED", "BAD_LENGTH"])
def test_a_tagged_stale_word_inside_an_unstamped_claim_waits_for_the_claimer(shm_prefix, kind):
    """Right after its fetch-add a producer has not yet stamped its word: if
    the stale bytes there carry this generation's tag, readers must wait for
    it (not skip a "pad", not report corruption), and the reaper must pad
    the claim when the producer dies."""
    fb = frame_bytes_for(500)
    with new_log(shm_prefix) as plog:
        reader = plog.reader()
        c = plog.new_cursor()
        with _stalled_claim(plog) as (claimer, cslot, seq, pos):
            assert read_all(plog, c, reader=reader)[0] == [0, 1, 2, 3]
            rp = chunk_region_pos(plog, seq, pos)
            t = {"BAD_LENGTH": lib.SHMLOG_FRAME_DATA}.get(kind) or getattr(lib, f"SHMLOG_FRAME_{kind}")
            fl = plog.chunk_bytes * 2 if kind == "BAD_LENGTH" else fb
            ffi.cast("uint64_t *", plog.c_log.base + rp)[0] = lib.shmlog_frame_word(seq, t, fl)
            assert reader.read(c, 100) is None
            assert plog.wait(c, 0.05) is False
            state, fseq, fpos = plog.frontier(plog.new_cursor())
            assert (state, fseq, fpos) == (lib.SHMLOG_FRONTIER_BLOCKED, seq, pos)
            claimer.kill()
        # the slot knows the claim and that it was never stamped: padded
        assert plog.reap_producer(cslot) == 1
        assert frame_word(plog, rp) == lib.shmlog_frame_word(seq, lib.SHMLOG_FRAME_PAD, fb)
        offsets, values, *_ = read_all(plog, c, reader=reader)
        assert offsets == [13, 14, 15]
        assert values == [value_of(13 + j, 37) for j in range(3)]


def test_unblock_pads_an_unstamped_claim_over_a_tagged_stale_word(shm_prefix):
    """The reaper's unblock (a claimer stalled past its timeout) takes a tagged
    stale word at an unstamped claim for what it is: a hole to pad."""
    fb = frame_bytes_for(500)
    with new_log(shm_prefix) as plog:
        with _stalled_claim(plog) as (claimer, cslot, seq, pos):
            rp = chunk_region_pos(plog, seq, pos)
            ffi.cast("uint64_t *", plog.c_log.base + rp)[0] = lib.shmlog_frame_word(
                seq, lib.SHMLOG_FRAME_DATA, fb)
            assert plog.unblock(seq, pos) == 1  # known position: padded, alive or not
            assert frame_word(plog, rp) == lib.shmlog_frame_word(seq, lib.SHMLOG_FRAME_PAD, fb)
            assert producer_slot(plog, cslot).fenced == 1  # it would give the claim up
            offsets, *_ = read_all(plog)
            assert offsets == [0, 1, 2, 3, 13, 14, 15]
            claimer.kill()
        assert plog.reap_producer(cslot) == 0  # already padded: counted once
        assert plog.hdr.aborted_batches == 1


def test_a_frame_of_one_message_may_fill_a_whole_chunk(shm_prefix):
    """max_batch_bytes may be the chunk itself (a topic's largest message
    alone in its batch, config.max_batch_bytes): a frame that does not fit
    behind what a chunk holds seals it and fills the next one whole, and
    the ring goes round with such frames; one byte more is refused."""
    chunk = 65536
    with new_log(shm_prefix, chunk_bytes=chunk, chunk_count=2, max_batch_bytes=chunk,
                 gate_readers=False) as plog:
        slot = plog.register_producer()
        rng = random.Random(3)
        small = b"s" * 100
        big = [rng.randbytes(chunk - 64 - 32) for _ in range(5)]
        assert frame_bytes_for(len(big[0]) + 11) == chunk
        want = []
        for b in big:
            want += [(plog.append_one(slot, small, 0, timeout=1), small),
                     (plog.append_one(slot, b, 0, timeout=1), b)]
        with pytest.raises(errors.MessageTooLarge):
            plog.append_one(slot, big[0] + b"x" * 64, 0, timeout=1)
        assert plog.hdr.active_seq >= 5  # every big frame took a chunk of its own
        offsets, values = read_all(plog)[:2]
        assert list(zip(offsets, values)) == want[-len(offsets):] and values[-1] == big[-1]
        assert offsets == list(range(offsets[0], 10))
