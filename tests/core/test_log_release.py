"""Released chunks (issue 18): a disk partition's chunks that are spilled and
behind every live reader give their pages back to the tmpfs, a copy that
raced the release is rejected by validation, the rotation that reuses a
released chunk reserves its pages again, and a process killed mid-release or
mid-reserve leaves a ring that still goes round."""

from __future__ import annotations

import errno
import os
import signal

import pytest
from _core_helpers import Child, fill_until_rotation, new_log, read_all
from shmlog.core._core import ffi, lib

from shmlog import errors
from shmlog.core.budget_region import BudgetRegion
from shmlog.core.log import PartitionLog, region_usage

CHUNK = 64 << 10  # a multiple of the page size: a released chunk gives back all of it
HEADER = lib.SHMLOG_HEADER_BYTES


def _disk_log(shm_prefix):
    """A disk topic's region: reuse gated on the spilled offset, only the
    header and the first chunk reserved at creation."""
    return new_log(shm_prefix, chunk_bytes=CHUNK, chunk_count=4, gate_readers=False,
                   gate_spill=True, reserve=True, reserve_ring=False)


def _resident(plog) -> int:
    return region_usage(plog.name)[1]


def _fill_ring(plog, slot) -> None:
    """Append until the last chunk of the ring is the active one."""
    while plog.hdr.active_seq < plog.chunk_count - 1:
        fill_until_rotation(plog, slot, timeout=1)


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _plant_state(chunk, state: int, pid: int) -> None:
    """What a process SIGKILLed right after its CAS into `state` leaves."""
    chunk.state = (pid << 32) | ((chunk.state + 0x100) & 0xFFFFFF00) | state


def test_only_the_first_chunk_is_reserved_and_rotations_reserve_the_rest(shm_prefix):
    with _disk_log(shm_prefix) as plog:
        assert _resident(plog) == HEADER + CHUNK
        assert [plog.hdr.chunks[i].released for i in range(4)] == [0, 1, 1, 1]
        slot = plog.register_producer()
        _fill_ring(plog, slot)
        assert plog.chunks_released() == 0
        assert _resident(plog) == HEADER + 4 * CHUNK


def test_release_frees_what_is_spilled_and_read_and_rotation_reserves_it_again(shm_prefix):
    with _disk_log(shm_prefix) as plog:
        slot = plog.register_producer()
        _fill_ring(plog, slot)
        assert plog.release() == 0  # nothing spilled: nothing may go
        assert _resident(plog) == HEADER + 4 * CHUNK
        plog.set_spilled(plog.end_offset())
        inside = plog.hdr.chunks[2].base_offset + 1
        rslot = plog.register_reader(inside, gating=False)  # a reader still inside chunk 2
        assert plog.release() == 2
        assert plog.start_offset == plog.hdr.chunks[2].base_offset
        assert _resident(plog) == HEADER + 2 * CHUNK
        assert plog.chunks_released() == 2
        # their offsets are below the start now: readers go to segment files
        assert plog.seek(plog.new_cursor(), 0) == -errno.ERANGE
        plog.set_reader_position(rslot, plog.end_offset())
        assert plog.release() == 1
        assert _resident(plog) == HEADER + CHUNK  # the active chunk only
        # the ring goes round again through released chunks: each rotation
        # reserves its chunk's pages first, and what is written reads back
        start = plog.start_offset
        for _ in range(4):
            fill_until_rotation(plog, slot, timeout=1)
            plog.set_spilled(plog.end_offset())
            plog.set_reader_position(rslot, plog.end_offset())
        c = plog.new_cursor()
        assert plog.seek(c, start) in (0, -errno.ERANGE)
        offsets = read_all(plog, c)[0]
        assert offsets == list(range(c.next_offset - len(offsets), plog.end_offset()))
        assert plog.chunks_released() == 0
        assert _resident(plog) == HEADER + 4 * CHUNK


def test_a_copy_that_raced_a_release_is_rejected(shm_prefix):
    with _disk_log(shm_prefix) as plog:
        slot = plog.register_producer()
        _fill_ring(plog, slot)
        # a reader that checked chunk 0 and is copying out of it ...
        c = plog.new_cursor()
        assert plog.seek(c, 0) == 0
        word_pos = HEADER  # chunk 0's first frame word
        assert int.from_bytes(plog.mapping[word_pos:word_pos + 8], "little") != 0
        assert lib.shmlog_log_validate(plog.checked_log(), 0) == 0
        # ... when the supervisor releases it
        plog.set_spilled(plog.end_offset())
        assert plog.release() == 3
        # what it copied now may be zeros; its validation says so, and it
        # retries, from the segment files (its offsets are below the start)
        assert int.from_bytes(plog.mapping[word_pos:word_pos + 8], "little") == 0
        assert lib.shmlog_log_validate(plog.checked_log(), 0) == -errno.ERANGE
        assert plog.seek(c, 0) == -errno.ERANGE


@pytest.mark.parametrize("flag_set", [False, True])
def test_a_releaser_killed_mid_release_leaves_a_ring_that_goes_round(shm_prefix, flag_set):
    with _disk_log(shm_prefix) as plog:
        slot = plog.register_producer()
        _fill_ring(plog, slot)
        plog.set_spilled(plog.end_offset())
        # chunk 0, the next one rotation opens: FREE, its pages still there
        assert lib.shmlog_log_reclaim(plog.checked_log()) == 1
        dead = _dead_pid()
        # a supervisor SIGKILLed after its CAS to RELEASING, before (or after)
        # it set the flag and punched the pages
        d = plog.hdr.chunks[0]
        _plant_state(d, lib.SHMLOG_CHUNK_RELEASING, dead)
        d.released = 1 if flag_set else 0
        # a producer waiting for that chunk puts it back itself (nobody waits
        # for the next supervisor), reserving its pages if the flag says so
        fill_until_rotation(plog, slot, timeout=1)
        assert plog.hdr.active_seq == 4 and d.state & 0xFF == lib.SHMLOG_CHUNK_ACTIVE
        assert d.released == 0
        # the next supervisor's release finishes what the dead one began
        assert lib.shmlog_log_reclaim(plog.checked_log()) == 1  # chunk 1
        dead2 = _dead_pid()
        _plant_state(plog.hdr.chunks[1], lib.SHMLOG_CHUNK_RELEASING, dead2)
        # chunk 1 back to FREE and released, chunks 2 and 3 freed and released
        plog.set_spilled(plog.end_offset())
        assert plog.release() == 3
        assert plog.hdr.chunks[1].state & 0xFF == lib.SHMLOG_CHUNK_FREE
        assert [plog.hdr.chunks[i].released for i in range(4)] == [0, 1, 1, 1]
        for _ in range(4):
            fill_until_rotation(plog, slot, timeout=1)
            plog.set_spilled(plog.end_offset())
        c = plog.new_cursor()
        plog.seek(c, plog.start_offset)
        offsets = read_all(plog, c)[0]
        assert offsets and offsets == list(range(offsets[0], plog.end_offset()))


def test_a_producer_killed_mid_reserve_leaves_the_chunk_released(shm_prefix):
    with _disk_log(shm_prefix) as plog:
        slot = plog.register_producer()
        dead = _dead_pid()
        # a rotator SIGKILLed after its CAS to OPENING, while it reserved chunk 1's pages
        d = plog.hdr.chunks[1]
        _plant_state(d, lib.SHMLOG_CHUNK_OPENING, dead)
        with pytest.raises(errors.BufferFull):
            fill_until_rotation(plog, slot, timeout=0.05)
        assert plog.repair_chunks(dead) == 1  # the reaper's repair
        assert d.state & 0xFF == lib.SHMLOG_CHUNK_FREE and d.released == 1
        fill_until_rotation(plog, slot, timeout=1)  # reserves again, then opens
        assert plog.hdr.active_seq == 1 and d.released == 0
        c = plog.new_cursor()
        plog.seek(c, 0)
        assert read_all(plog, c)[0] == list(range(plog.end_offset()))


# ---------------------------------------------------------------- live kills
# A child process runs the real code up to a test point, tells the parent
# and stops itself there; the parent SIGKILLs it mid-step and checks that
# the others go on: nothing lost, offsets dense, the account never low.

def _stop_at(conn, point: int) -> None:
    @ffi.callback("void(int)")
    def hook(p):
        if p == point:
            lib.shmlog_set_test_point(ffi.NULL)
            conn.send("stopped")
            os.kill(os.getpid(), signal.SIGSTOP)

    _stop_at.hook = hook  # kept alive while C holds it
    lib.shmlog_set_test_point(hook)


def _child_release(conn, name: str, account_name: str) -> None:
    plog = PartitionLog.attach(name)
    plog.set_budget(BudgetRegion.attach(account_name))
    _stop_at(conn, lib.SHMLOG_POINT_RELEASE)
    plog.release()
    conn.send("finished")  # never: SIGKILLed at the point


def _child_produce(conn, name: str, account_name: str) -> None:
    plog = PartitionLog.attach(name)
    plog.set_budget(BudgetRegion.attach(account_name))
    slot = plog.register_producer()
    conn.send(slot)
    _stop_at(conn, lib.SHMLOG_POINT_RESERVE)
    for _ in range(10_000):
        plog.append(slot, [b"c" * 333] * 3, timeout=1)
    conn.send("finished")


def _child_read(conn, name: str) -> None:
    plog = PartitionLog.attach(name)
    rslot = plog.register_reader(0, gating=False)
    plog.set_reader_pin(rslot, 0)  # a zero-copy view of offset 0 on its way out
    c = plog.new_cursor()
    plog.seek(c, 0)
    plog.reader().read(c, 10)  # copied; validation would come next
    conn.send(rslot)
    os.kill(os.getpid(), signal.SIGSTOP)


def _dense_from(plog, first: int) -> list:
    c = plog.new_cursor()
    assert plog.seek(c, first) == 0
    offsets = read_all(plog, c)[0]
    assert offsets == list(range(first, plog.end_offset()))
    return offsets


def test_a_releaser_sigkilled_mid_release_leaves_a_ring_that_goes_round(shm_prefix, account):
    with _disk_log(shm_prefix) as plog:
        plog.set_budget(account)
        slot = plog.register_producer()
        _fill_ring(plog, slot)
        plog.set_spilled(plog.end_offset())
        with Child(_child_release, plog.name, account.name) as child:
            assert child.recv() == "stopped"
            child.kill()
            dead = child.proc.pid
        states = [(plog.hdr.chunks[i].state & 0xFF, plog.hdr.chunks[i].state >> 32) for i in range(4)]
        assert (lib.SHMLOG_CHUNK_RELEASING, dead) in states
        # the killed releaser kept its charge: the count is high, never low
        # (its RELEASING chunk counts as reserved; chunk 0 was reserved at
        # creation, outside this account)
        assert account.reserved >= plog.reserved_bytes() - HEADER - CHUNK
        # the producer goes round the ring through the dead releaser's chunk
        # (it puts it back itself), and a new releaser finishes the job
        first = plog.start_offset
        for _ in range(5):
            fill_until_rotation(plog, slot, timeout=1)
            plog.set_spilled(plog.end_offset())
        assert plog.release() >= 1
        assert all(plog.hdr.chunks[i].state & 0xFF != lib.SHMLOG_CHUNK_RELEASING for i in range(4))
        _dense_from(plog, max(first, plog.start_offset))
        assert account.reserved >= plog.reserved_bytes() - HEADER


def test_a_producer_sigkilled_mid_rotation_into_a_released_chunk(shm_prefix, account):
    with _disk_log(shm_prefix) as plog:
        plog.set_budget(account)
        with Child(_child_produce, plog.name, account.name) as child:
            dead_slot = child.recv()
            assert child.recv() == "stopped"
            child.kill()
            dead = child.proc.pid
        d = plog.hdr.chunks[1]
        assert d.state & 0xFF == lib.SHMLOG_CHUNK_OPENING and d.state >> 32 == dead
        assert d.released == 1 and account.reserved == CHUNK  # charged, pages not yet taken
        end = plog.end_offset()
        # the reaper: the dead producer's claims and its half-opened chunk
        plog.reap_producer(dead_slot)
        assert plog.repair_chunks(dead) == 1
        slot = plog.register_producer()
        for _ in range(3):
            fill_until_rotation(plog, slot, timeout=1)
        assert d.released == 0 and plog.end_offset() > end
        # everything the dead producer committed is there, then ours: dense
        _dense_from(plog, 0)
        # its charge stays counted (high, never low) until the supervisor
        # recounts; chunk 0 was reserved at creation, outside this account
        leaked = CHUNK
        assert account.reserved == (plog.reserved_bytes() - HEADER - CHUNK) + leaked


def test_a_reader_sigkilled_mid_copy_delays_a_release_only_until_it_is_reaped(shm_prefix):
    with _disk_log(shm_prefix) as plog:
        slot = plog.register_producer()
        _fill_ring(plog, slot)
        plog.set_spilled(plog.end_offset())
        with Child(_child_read, plog.name) as child:
            rslot = child.recv()
            child.kill()
        # its slot still says it reads chunk 0: nothing behind it goes yet
        assert plog.release() == 0
        assert plog.reap_reader(rslot) >= 0  # the reaper finds it dead
        assert plog.release() == 3
        fill_until_rotation(plog, slot, timeout=1)
        _dense_from(plog, plog.start_offset)
