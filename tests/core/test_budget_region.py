"""The data dir's shared-memory account (core.budget_region, csrc/layout.h
shmlog_budget_t): a rotation that opens a released chunk charges it, a
release credits it, and a charge past the limit makes the producer wait
(BufferFull at its timeout) instead of taking pages."""

from __future__ import annotations

import os

import pytest
from _core_helpers import fill_until_rotation, new_log
from shmlog.core._core import ffi, lib

from shmlog import errors
from shmlog.core.budget_region import BudgetRegion
from shmlog.core.log import region_usage

CHUNK = 64 << 10
HEADER = lib.SHMLOG_HEADER_BYTES


def _disk_log(shm_prefix, suffix):
    return new_log(shm_prefix, suffix, chunk_bytes=CHUNK, chunk_count=4, gate_readers=False,
                   gate_spill=True, reserve=True, reserve_ring=False)


def test_layout_is_pinned():
    assert ffi.sizeof("shmlog_budget_t") == 256
    assert ffi.offsetof("shmlog_budget_t", "limit") == 16
    assert ffi.offsetof("shmlog_budget_t", "reserved") == 128


def test_charge_refuses_past_the_limit_and_credit_never_goes_below_zero(account):
    account.account.limit = 100
    assert account.charge(60) and account.reserved == 60
    assert not account.charge(41)
    assert account.reserved == 60 and account.refused == 1 and account.pressure == 1
    assert account.charge(40) and account.reserved == 100
    account.credit(30)
    assert account.reserved == 70
    account.credit(1000)
    assert account.reserved == 0


def test_a_recount_loses_to_a_charge_or_credit_made_while_it_counted(account):
    """shm_budget.recount stores its figure with a compare-and-swap against
    the account's word taken before it read the regions: a charge or credit
    made meanwhile (even one that brings the bytes back to where they were)
    fails it, so a recount never drops a live producer's charge."""
    account.account.limit = 1 << 30
    account.set_reserved(1000)
    snap = account.snapshot()
    assert account.charge(CHUNK)
    assert not account.recount(snap, 500) and account.reserved == 1000 + CHUNK
    snap = account.snapshot()
    assert account.charge(CHUNK)
    account.credit(CHUNK)  # the bytes are as they were; the tag is not
    assert not account.recount(snap, 500) and account.reserved == 1000 + CHUNK
    snap = account.snapshot()
    assert account.recount(snap, 500) and account.reserved == 500
    assert not account.recount(snap, 700)  # a recount bumps the tag too


def test_a_chunk_mid_opening_or_mid_release_counts_as_reserved(shm_prefix):
    """An opener charges before it clears `released`, a releaser sets it
    before it credits: while a chunk is OPENING or RELEASING the account
    may hold it, so the regions' own figure counts it (high, never low)."""
    with _disk_log(shm_prefix, "mid") as plog:
        base = plog.reserved_bytes()
        assert base == HEADER + CHUNK and plog.hdr.chunks[1].released == 1
        d = plog.hdr.chunks[1]
        for state in (lib.SHMLOG_CHUNK_OPENING, lib.SHMLOG_CHUNK_RELEASING):
            saved = d.state
            d.state = (os.getpid() << 32) | ((saved + 0x100) & 0xFFFFFF00) | state
            assert plog.reserved_bytes() == base + CHUNK
            d.state = saved
        assert plog.reserved_bytes() == base


def test_a_reattached_account_keeps_its_count(account):
    account.set_reserved(12345)
    again = BudgetRegion.open(account.name, limit=999_999)
    try:
        assert not again.created and again.reserved == 12345 and account.limit == 999_999
    finally:
        again.close()


def test_rotations_charge_released_chunks_releases_credit_them(shm_prefix, account):
    with _disk_log(shm_prefix, "p0") as plog:
        plog.set_budget(account)
        assert account.users == 1
        slot = plog.register_producer()
        # chunks 1..3 are released at creation: each first rotation charges one
        for k in range(1, 4):
            fill_until_rotation(plog, slot, timeout=1)
            assert account.reserved == k * CHUNK
        # the ring is full: spilled and released, the three sealed chunks
        # give their pages back and their charge with them
        plog.set_spilled(plog.end_offset())
        assert plog.release() == 3
        assert account.reserved == 0
        # a wrapping rotation into a released chunk charges it again
        fill_until_rotation(plog, slot, timeout=1)
        assert account.reserved == CHUNK
        # a reused chunk that was never released is not charged twice
        plog.set_spilled(plog.end_offset())
    assert account.users == 0


def test_past_the_limit_a_rotation_waits_and_a_release_lets_it_go(shm_prefix, account):
    with _disk_log(shm_prefix, "p0") as hot, _disk_log(shm_prefix, "p1") as other:
        for plog in (hot, other):
            plog.set_budget(account)
        # room for two more chunks in all
        account.account.limit = 2 * CHUNK
        a, b = hot.register_producer(), other.register_producer()
        fill_until_rotation(other, b, timeout=1)  # other takes one chunk
        fill_until_rotation(hot, a, timeout=1)  # hot takes the last one
        assert account.reserved == 2 * CHUNK
        resident = region_usage(hot.name)[1] + region_usage(other.name)[1]
        with pytest.raises(errors.BufferFull):
            fill_until_rotation(hot, a, timeout=0.2)
        assert account.refused >= 1 and account.pressure >= 1
        # nothing was taken past the limit
        assert region_usage(hot.name)[1] + region_usage(other.name)[1] == resident
        # other's first chunk is spilled and read: its release credits it ...
        other.set_spilled(other.end_offset())
        assert other.release() >= 1
        assert account.reserved <= CHUNK
        # ... and the hot partition's rotation goes through
        fill_until_rotation(hot, a, timeout=1)
        assert account.reserved <= 2 * CHUNK


def test_a_refused_rotation_leaves_the_count_as_it_was(shm_prefix, account):
    with _disk_log(shm_prefix, "p0") as plog:
        plog.set_budget(account)
        slot = plog.register_producer()
        account.account.limit = CHUNK  # admits exactly one chunk
        fill_until_rotation(plog, slot, timeout=1)
        assert account.reserved == CHUNK
        with pytest.raises(errors.BufferFull):
            fill_until_rotation(plog, slot, timeout=0.1)
        assert account.reserved == CHUNK and plog.hdr.chunks[2].released == 1
