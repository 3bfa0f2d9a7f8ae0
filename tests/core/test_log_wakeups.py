"""The partition log in shared memory (csrc/ through shmlog/core/log.py):
wake-ups: futex waits, hungry readers, doorbells across partitions,
and waits that time out at a dead claim.

Tests create their regions under the `shm_prefix` fixture and close and
unlink them; every child process is forked, and killed or joined before the
test ends. Fault tests kill real processes (SIGKILL) at chosen points and
check DESIGN.md's invariants. Shared helpers: _log_helpers.py.
"""

from __future__ import annotations

import errno
import statistics
import time

import pytest
from _core_helpers import (
    Child,
    new_log,
    value_of,
)
from _log_helpers import (
    _claim_and_hang,
)
from shmlog.core._core import ffi, lib

from shmlog.core.log import PartitionLog

# Child bodies run in a forked child, attach the region afresh (its own pid
# in the handle) and report over the pipe.

def _wake_consumer(conn, name, trials):
    p = PartitionLog.attach(name)
    reader = p.reader()
    c = p.new_cursor()
    p.seek_end(c)
    for _ in range(trials):
        conn.send("sleeping")
        ok = p.wait(c, 5.0)  # spin_us=0: straight to the futex
        t = time.monotonic_ns()
        res = reader.read(c, 100)
        conn.send((ok, t, None if res is None else list(res.offsets)))
    p.close()


def _hole_waiter(conn, name, start, first_timeout, second_timeout):
    p = PartitionLog.attach(name)
    reader = p.reader()
    c = p.new_cursor()
    assert p.seek(c, start) == 0
    assert reader.read(c, 100) is None  # stalled at the hole
    t0 = time.monotonic()
    ok = p.wait(c, first_timeout)
    conn.send((ok, time.monotonic() - t0))
    conn.send("waiting again")
    ok = p.wait(c, second_timeout)
    t = time.monotonic()
    res = reader.read(c, 100)
    conn.send((ok, t, None if res is None else list(res.offsets)))


# ------------------------------------------------------------ wake-ups

def test_futex_wake_latency_across_processes(shm_prefix):
    trials = 21
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        lat_ms = []
        with Child(_wake_consumer, plog.name, trials) as ch:
            for i in range(trials):
                assert ch.recv() == "sleeping"
                deadline = time.monotonic() + 5
                while plog.hdr.data_waiters == 0:
                    assert time.monotonic() < deadline, "consumer never slept"
                    time.sleep(0.0002)
                time.sleep(0.005)  # well inside FUTEX_WAIT by now
                t0 = time.monotonic_ns()
                plog.append(slot, [b"w" * 37])
                ok, t1, offsets = ch.recv()
                assert ok is True and offsets == [i]
                lat_ms.append((t1 - t0) / 1e6)
            assert ch.join() == 0
        med = statistics.median(lat_ms)
        print(f"\nfutex wake latency over {trials} trials: median {med:.3f} ms, "
              f"min {min(lat_ms):.3f} ms, max {max(lat_ms):.3f} ms")
        assert med < 50, lat_ms


def test_waiter_times_out_at_a_dead_claim_and_wakes_on_reap(shm_prefix):
    with new_log(shm_prefix) as plog:
        live = plog.register_producer()
        plog.append(live, [value_of(j, 37) for j in range(5)])
        with Child(_claim_and_hang, plog.name, 100, 6) as claimer:
            cslot, rc, hole = claimer.recv()
            assert rc == 0 and hole == 5
            claimer.kill()
        assert plog.append(live, [value_of(11 + j, 37) for j in range(2)]) == 11
        with Child(_hole_waiter, plog.name, 5, 0.5, 10.0) as w:
            ok, elapsed = w.recv()
            assert ok is False
            assert 0.49 <= elapsed < 1.5, elapsed  # the timeout, not forever
            assert w.recv() == "waiting again"
            deadline = time.monotonic() + 5
            while plog.hdr.data_waiters == 0:
                assert time.monotonic() < deadline
                time.sleep(0.001)
            time.sleep(0.02)
            t0 = time.monotonic()
            assert plog.reap_producer(cslot) == 1
            ok, t1, offsets = w.recv()
            assert w.join() == 0
        assert ok is True and offsets == [11, 12]
        assert t1 - t0 < 0.5, t1 - t0


def _waiter(conn, name, spin_us, timeout):
    p = PartitionLog.attach(name)
    c = p.new_cursor()
    p.seek_end(c)
    conn.send("waiting")
    conn.send(p.wait(c, timeout, spin_us=spin_us))
    p.close()


def _await(pred, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0002)


def _await_waiting(h, counters: str, spin_us: float) -> None:
    """A reader in wait() counts in `<counters>_hungry` while it spins and
    also in `<counters>_waiters` once it sleeps on the futex."""
    hungry, waiters = f"{counters}_hungry", f"{counters}_waiters"
    if spin_us:
        _await(lambda: getattr(h, hungry) == 1, f"the spinning reader to be counted in {hungry}")
        assert getattr(h, waiters) == 0
    else:
        _await(lambda: getattr(h, waiters) == 1, f"the reader to sleep (counted in {waiters})")
        assert getattr(h, hungry) == 1


@pytest.mark.parametrize("spin_us", [3_000_000, 0], ids=["spinning", "asleep"])
def test_a_waiting_reader_is_hungry_and_only_a_sleeper_is_a_waiter(shm_prefix, spin_us):
    """data_hungry counts every reader in wait() (producers commit at once
    for it); data_waiters only those asleep on the futex (committers owe
    them a wake syscall), so a spinning reader raises only the first."""
    with new_log(shm_prefix) as plog:
        h = plog.hdr
        slot = plog.register_producer()
        plog.append(slot, [b"old"])
        assert (h.data_hungry, h.data_waiters) == (0, 0)
        with Child(_waiter, plog.name, spin_us, 10.0) as ch:
            assert ch.recv() == "waiting"
            _await_waiting(h, "data", spin_us)
            assert not ch.conn.poll(0), "wait() returned with nothing committed"
            plog.append(slot, [b"new"])
            assert ch.recv() is True
            assert ch.join() == 0
        assert (h.data_hungry, h.data_waiters) == (0, 0)


def test_a_wait_that_times_out_or_finds_data_leaves_no_hungry_reader(shm_prefix):
    with new_log(shm_prefix) as plog:
        h = plog.hdr
        c = plog.new_cursor()
        plog.seek_end(c)
        assert plog.wait(c, 0.05, spin_us=20_000) is False  # spin, then sleep, then time out
        assert plog.wait(c, 0.02) is False
        assert (h.data_hungry, h.data_waiters) == (0, 0)
        slot = plog.register_producer()
        plog.append(slot, [b"x"])
        assert plog.wait(c, 1.0, spin_us=1000) is True  # ready at once
        assert (h.data_hungry, h.data_waiters) == (0, 0)


def test_waits_return_0_or_an_index_or_minus_errno(shm_prefix):
    """The C convention (>= 0 or -errno): a timeout is -ETIMEDOUT, never a
    value that could pass for a count or an index."""
    with new_log(shm_prefix) as plog:
        c = plog.new_cursor()
        plog.seek_end(c)
        logs = ffi.new("shmlog_log_t *[]", [plog.checked_log()])
        cursors = ffi.new("shmlog_cursor_t *[]", [c])
        assert lib.shmlog_log_wait(plog.checked_log(), c, 0, 10**6) == -errno.ETIMEDOUT
        assert lib.shmlog_log_wait_any(logs, cursors, 1, ffi.NULL, 0, 10**6) == -errno.ETIMEDOUT
        assert lib.shmlog_log_wait_any(logs, cursors, 1, plog.checked_log(), 0, 10**6) == -errno.ETIMEDOUT
        assert lib.shmlog_log_wait_any(logs, cursors, 0, ffi.NULL, 0, 10**6) == -errno.EINVAL
        plog.append(plog.register_producer(), [b"x"])
        assert lib.shmlog_log_wait(plog.checked_log(), c, 0, 10**6) == 0
        assert lib.shmlog_log_wait_any(logs, cursors, 1, ffi.NULL, 0, 10**6) == 0


def _attach_at_end(names):
    """The regions attached, a cursor at each one's end, and both as the C
    arrays shmlog_log_wait_any takes: (logs, cursors, larr, carr)."""
    logs = [PartitionLog.attach(n) for n in names]
    cursors = [p.new_cursor() for p in logs]
    for p, c in zip(logs, cursors):
        p.seek_end(c)
    larr = ffi.new("shmlog_log_t *[]", [p.checked_log() for p in logs])
    carr = ffi.new("shmlog_cursor_t *[]", cursors)
    return logs, cursors, larr, carr


def _bell_waiter(conn, names, spin_us, timeout):
    logs, _, larr, carr = _attach_at_end(names)
    conn.send("waiting")
    conn.send(lib.shmlog_log_wait_any(larr, carr, len(logs), logs[0].checked_log(),
                                      int(spin_us * 1000), int(timeout * 1e9)))
    for p in logs:
        p.close()


@pytest.mark.parametrize("spin_us", [3_000_000, 0], ids=["spinning", "asleep"])
def test_wait_any_on_a_doorbell_is_hungry_on_the_bell(shm_prefix, spin_us):
    with new_log(shm_prefix, "p0") as p0, new_log(shm_prefix, "p1") as p1:
        for p in (p0, p1):
            p.ring_bell_of(p0)
        h = p0.hdr
        slot = p1.register_producer()
        with Child(_bell_waiter, [p0.name, p1.name], spin_us, 10.0) as ch:
            assert ch.recv() == "waiting"
            _await_waiting(h, "bell", spin_us)
            # the doorbell counts it, not each partition
            assert (h.data_hungry, h.data_waiters, p1.hdr.data_hungry, p1.hdr.data_waiters) == (0, 0, 0, 0)
            assert not ch.conn.poll(0)
            p1.append(slot, [b"ring"])
            assert ch.recv() == 1
            assert ch.join() == 0
        assert (h.bell_hungry, h.bell_waiters) == (0, 0)


def _wait_any_consumer(conn, names, trials):
    logs, cursors, larr, carr = _attach_at_end(names)
    bell = logs[0].checked_log()
    readers = [p.reader() for p in logs]
    for _ in range(trials):
        conn.send("sleeping")
        i = lib.shmlog_log_wait_any(larr, carr, len(logs), bell, 0, 5 * 10**9)
        t = time.monotonic_ns()
        res = readers[i].read(cursors[i], 100) if i >= 0 else None
        conn.send((i, t, None if res is None else list(res.offsets)))
    # nothing committed: a timeout, not a hang
    t0 = time.monotonic()
    i = lib.shmlog_log_wait_any(larr, carr, len(logs), bell, 0, 3 * 10**8)
    conn.send((i, time.monotonic() - t0))


def test_wait_any_wakes_on_a_commit_in_any_partition_through_the_doorbell(shm_prefix):
    trials = 12
    with new_log(shm_prefix, "p0") as p0, new_log(shm_prefix, "p1") as p1, \
            new_log(shm_prefix, "p2") as p2:
        parts = [p0, p1, p2]
        for p in parts:
            p.ring_bell_of(p0)  # partition 0's header holds the topic doorbell
        slots = [p.register_producer() for p in parts]
        lat_ms = []
        with Child(_wait_any_consumer, [p.name for p in parts], trials) as ch:
            for k in range(trials):
                which = (k * 2 + 1) % 3
                assert ch.recv() == "sleeping"
                deadline = time.monotonic() + 5
                while p0.hdr.bell_waiters == 0:
                    assert time.monotonic() < deadline, "consumer never slept on the doorbell"
                    time.sleep(0.0002)
                time.sleep(0.005)
                t0 = time.monotonic_ns()
                base = parts[which].append(slots[which], [b"m" * 37])
                i, t1, offsets = ch.recv()
                assert i == which and offsets == [base]
                lat_ms.append((t1 - t0) / 1e6)
            i, elapsed = ch.recv()
            assert ch.join() == 0
        assert i == -errno.ETIMEDOUT and 0.29 <= elapsed < 1.5, (i, elapsed)
        med = statistics.median(lat_ms)
        print(f"\nwait_any doorbell wake latency over {trials} trials: median {med:.3f} ms, "
              f"max {max(lat_ms):.3f} ms")
        assert med < 50, lat_ms


def _ring_a_closed_bell(conn, name0, name1):
    import faulthandler

    faulthandler.disable()  # a crash here is the finding, not noise
    p0 = PartitionLog.attach(name0)
    p1 = PartitionLog.attach(name1)
    p1.ring_bell_of(p0)
    s = p1.register_producer()
    p0.close()  # e.g. the topic's partition 0 is closed first
    conn.send(p1.append(s, [b"after"]))
    p1.close()


def test_closing_the_bell_region_does_not_crash_its_ringers(shm_prefix):
    with new_log(shm_prefix, "p0") as p0, new_log(shm_prefix, "p1") as p1:
        with Child(_ring_a_closed_bell, p0.name, p1.name) as ch:
            code = ch.join()
            assert code == 0, f"child died with exit code {code} (-11 = SIGSEGV)"
            assert ch.recv(1) == 0


def test_only_the_first_commit_after_a_sleeper_armed_the_word_rings(shm_prefix):
    """data_futex is a generation (bits 1-31) and an armed flag (bit 0): a
    sleeper sets the flag, the first commit clears it and bumps the
    generation (its FUTEX_WAKE is the only syscall owed), the commits after
    it, before the reader runs again, leave the word alone."""
    with new_log(shm_prefix) as plog:
        h = plog.hdr
        slot = plog.register_producer()
        h.data_waiters = 1  # as if a reader slept (no process does)
        try:
            h.data_futex = 4  # not armed: nobody is owed a wake-up
            plog.append(slot, [b"a"])
            assert h.data_futex == 4
            h.data_futex = 5  # armed
            plog.append(slot, [b"b"])
            assert h.data_futex == 6  # the flag cleared, the generation bumped
            plog.append(slot, [b"c"])
            plog.append(slot, [b"d"])
            assert h.data_futex == 6  # the reader was rung once
        finally:
            h.data_waiters = 0


def _wait_each(conn, name, n, timeout):
    """Wait (straight to the futex) for each of n commits; report how many
    waits lasted `timeout` or more (a lost wake-up: the sleep ends only at
    shmlog_log_wait's 100 ms cap on one futex sleep)."""
    p = PartitionLog.attach(name)
    reader = p.reader()
    c = p.new_cursor()
    lost, seen = 0, 0
    for _ in range(n):
        conn.send("going to sleep")
        t0 = time.monotonic()
        p.wait(c, 5.0)
        if time.monotonic() - t0 >= timeout:
            lost += 1
        res = reader.read(c, 100)
        seen += 0 if res is None else len(res.offsets)
    conn.send((lost, seen))
    p.close()


def test_a_commit_while_the_reader_goes_to_sleep_wakes_it(shm_prefix):
    """The Dekker pair between the reader's arming of the futex word and the
    committer's CAS: a commit racing the reader into its sleep (sent at
    once, or a few microseconds after the reader said it goes to sleep)
    always wakes it; a lost wake-up shows as a wait that ran to the 100 ms
    cap of a futex sleep (80 ms: generous for a wake-up on a loaded host)."""
    n, timeout = 300, 0.08
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        with Child(_wait_each, plog.name, n, timeout) as ch:
            for i in range(n):
                assert ch.recv() == "going to sleep"
                end = time.perf_counter() + (i % 7) * 10e-6
                while time.perf_counter() < end:
                    pass
                plog.append(slot, [b"x"])
            lost, seen = ch.recv()
            assert ch.join() == 0
        assert seen == n
        assert lost == 0


def test_a_poll_says_how_its_data_came(shm_prefix):
    """shmlog_log_poll_pickled's read info: `waited` says whether the data
    was there at the first look, seen while spinning, or seen after a futex
    sleep, and `seen_ns` when the wait saw it (the adaptive wait dates
    arrivals by them)."""
    import threading

    with new_log(shm_prefix) as plog:
        reader = plog.reader()
        info = reader._info
        slot = plog.register_producer()
        c = plog.new_cursor()
        plog.seek_end(c)
        plog.append(slot, [b"there"])
        assert list(reader.read(c, 10, spin_ns=10**9, wait_ns=10**9).values) == [b"there"]
        assert (info.waited, info.seen_ns) == (lib.SHMLOG_WAITED_NONE, 0)

        assert reader.read(c, 10, spin_ns=0, wait_ns=10**6) is None  # timed out
        assert info.waited == lib.SHMLOG_WAITED_NONE

        for spin_ns, kind in ((5 * 10**9, lib.SHMLOG_WAITED_SPIN), (0, lib.SHMLOG_WAITED_FUTEX)):
            committed = []

            def commit_later(committed):
                time.sleep(0.05)
                committed.append(time.monotonic_ns())
                plog.append(slot, [b"later"])

            t = threading.Thread(target=commit_later, args=(committed,))
            t.start()
            try:
                res = reader.read(c, 10, spin_ns=spin_ns, wait_ns=10 * 10**9)
                back = time.monotonic_ns()
            finally:
                t.join()
            assert list(res.values) == [b"later"]
            assert info.waited == kind, (spin_ns, info.waited)
            assert committed[0] <= info.seen_ns <= back
