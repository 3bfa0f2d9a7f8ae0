"""shmlog.core.commit: the producer's commit crossings hold the GIL through a
commit that does not wait, and give it up when the core must wait (for a
reader to free a chunk), so threads of the same process still run then."""

from __future__ import annotations

import contextlib
import errno
import sys
import threading
import time

import pytest
from _core_helpers import new_log
from _log_helpers import fill_until_full
from shmlog.core._core import ffi

from shmlog.core import commit
from shmlog.core.records import pickle_values


@contextlib.contextmanager
def _switch_interval(seconds: float):
    """Other threads get the GIL only when this one gives it up (no forced
    switch during the test)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_a_commit_that_does_not_wait_keeps_the_gil(shm_prefix):
    """A thread waiting for the GIL does not run during a commit that does
    not wait: a call that gave the GIL up (as cffi's do) would let it take
    the GIL while C copies a large value (and the producer would then wait
    to get it back: the cost core.commit exists to avoid)."""
    with new_log(shm_prefix, chunk_bytes=16 << 20, chunk_count=2) as plog:
        slot = plog.register_producer()
        big = b"v" * (256 << 10)  # ~100 us in C: a waiting thread's wake-up takes less
        stream = pickle_values([b"v" * 100] * 8)
        ran = [0]
        stop = threading.Event()

        def other():
            while not stop.is_set():
                ran[0] += 1
                time.sleep(0)  # gives the GIL up at once

        with _switch_interval(100.0):
            t = threading.Thread(target=other, daemon=True)
            t.start()
            try:
                while ran[0] < 3:  # it runs, and now waits for the GIL
                    time.sleep(0.001)
                before = ran[0]
                for i in range(20):
                    assert commit.append_one(plog.c_addr, slot, big, i, 1, i, 10**9) == 9 * i
                    assert commit.append_pickled(plog.c_addr, slot, stream, 1 << 20, i, 1, i, 10**9) == 9 * i + 1
                after = ran[0]
            finally:
                stop.set()
                t.join(5)
        assert after == before, f"another thread ran {after - before} times during the commits"
        assert plog.end_offset() == 20 * 9


def test_a_commit_that_waits_gives_the_gil_to_the_thread_that_frees_space(shm_prefix):
    """The ring is full and a gating reader holds it: the commit waits, and
    the reader - a thread of this process - must be able to run to move on.
    Holding the GIL through the wait would stall both until the timeout."""
    with new_log(shm_prefix) as plog:
        rslot = plog.register_reader(0, gating=True)
        slot = plog.register_producer()
        end = fill_until_full(plog, slot)  # records, from offset 0
        moved = threading.Event()

        def reader():
            # gets the GIL back from its sleeps only when the producer gives
            # it up (no forced switch): then it sees the producer asleep
            while not plog.hdr.space_waiters:
                time.sleep(0.0005)
            plog.set_reader_position(rslot, plog.end_offset())
            moved.set()

        with _switch_interval(100.0):
            t = threading.Thread(target=reader, daemon=True)
            t0 = time.monotonic()
            t.start()  # returns once the thread runs; it then waits for the GIL
            rc = commit.append_one(plog.c_addr, slot, b"after", 0, 1, 1, 5 * 10**9)
            waited = time.monotonic() - t0
            t.join(5)
        assert moved.is_set()
        assert rc == end, (rc, -errno.EAGAIN)
        assert waited < 4, waited


def test_keyed_and_rich_crossings_check_their_lengths(shm_prefix):
    """Bytes columns that disagree with their lengths are refused before C
    reads past them."""
    with new_log(shm_prefix) as plog:
        logs = ffi.new("shmlog_log_t *[]", [plog.c_log])
        slots = ffi.new("int32_t[]", [plog.register_producer()])
        ends = ffi.new("uint64_t[]", 1)
        failed = ffi.new("uint32_t *")
        a = commit.address
        lens = (3).to_bytes(4, sys.byteorder)
        with pytest.raises(ValueError, match="value lengths add up to 3, the blob holds 2"):
            commit.keyed_append(a(logs), a(slots), 1, b"ab", lens, b"key", lens, 1, 0, 1, 1, 0, a(ends), a(failed))
        with pytest.raises(ValueError, match="key lengths: 8 bytes for 1 records"):
            commit.keyed_append(a(logs), a(slots), 1, b"abc", lens, b"key", lens * 2, 1, 0, 1, 1, 0, a(ends),
                                a(failed))
        assert commit.keyed_append(a(logs), a(slots), 1, b"abc", lens, b"key", lens, 1, 0, 1, 1, 0, a(ends),
                                   a(failed)) == 1
        assert ends[0] == 1
