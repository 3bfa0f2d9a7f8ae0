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
from _core_helpers import new_log, read_all
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


def test_the_keyed_queue_crossing_checks_the_queue_before_c_reads_it(shm_prefix):
    """The keyed queue is read in C straight from the list: items that are
    not bytes, an odd count, or more records than the array holds are
    refused before anything is appended."""
    with new_log(shm_prefix) as plog:
        logs = ffi.new("shmlog_log_t *[]", [plog.c_log])
        slots = ffi.new("int32_t[]", [plog.register_producer()])
        ends = ffi.new("uint64_t[]", 1)
        failed = ffi.new("uint32_t *")
        recs = ffi.new("shmlog_rich_record_t[]", 2)
        a = commit.address

        def append(queue, n, capacity=2):
            return commit.keyed_queue_append(a(logs), a(slots), 1, queue, n, a(recs), capacity, 7, 1, 1, 0,
                                             a(ends), a(failed))

        with pytest.raises(TypeError, match="record 1: key and value must be bytes"):
            append([b"k0", b"v0", b"k1", "v1"], 4)
        with pytest.raises(ValueError, match="an even count"):
            append([b"k0", b"v0", b"k1"], 3)
        with pytest.raises(ValueError, match="2 records of room"):
            append([b"k0", b"v0", b"k1", b"v1", b"k2", b"v2"], 6)
        with pytest.raises(ValueError, match="of a queue of 2"):
            append([b"k0", b"v0"], 4)
        assert plog.end_offset() == 0
        assert append([b"k0", b"v0", b"k1", b"v1", b"late"], 4) == 2
        assert ends[0] == 2
        offsets, values, keys, _, timestamps = read_all(plog)
        assert (offsets, values, keys, timestamps) == ([0, 1], [b"v0", b"v1"], [b"k0", b"k1"], [7, 7])
