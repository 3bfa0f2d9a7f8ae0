"""The adaptive wait (spin_us="auto", shmlog.client.arrivals): it learns
a paced stream's gap and sleeps on the futex until shortly before the next
message is due, yet a message that comes earlier wakes it, no wait outlasts
its timeout, no message is missed, and once the stream stops it sleeps
instead of spinning.
"""

from __future__ import annotations

import random
import time

import pytest
from _broker_helpers import ROOMY, Children, running_cluster

import shmlog
from shmlog.client import arrivals as amod

TOPIC = "arr"


def _send_after(data_dir, delay_s, values):
    time.sleep(delay_s)
    with shmlog.connect(data_dir) as cluster, cluster.producer() as producer:
        for v in values:
            producer.send(TOPIC, v, partition=0)
        producer.flush()
    return len(values)


def _irregular_producer(data_dir, n, seed):
    """Paced stretches (~10k msg/s), bursts and pauses, in one partition."""
    rnd = random.Random(seed)
    with shmlog.connect(data_dir) as cluster, cluster.producer() as producer:
        i = 0
        while i < n:
            kind = rnd.random()
            run = rnd.randint(1, 300)
            for _ in range(min(run, n - i)):
                producer.send(TOPIC, b"%d" % i, partition=0)
                producer.flush()
                i += 1
                if kind < 0.6:
                    t = time.perf_counter() + 0.0001
                    while time.perf_counter() < t:
                        pass
            if kind > 0.9:
                time.sleep(rnd.uniform(0.001, 0.05))
    return n


def _learnt(consumer, gap_ns):
    """As if the consumer had learnt a stream of one message every gap_ns,
    the last one just now."""
    arr = consumer._arrivals
    assert arr is not None, "spin_us='auto' waits adaptively"
    arr.gap = gap_ns
    arr.last = amod._now_ns()
    arr.seen, arr.w_time, arr.w_count, arr.w_reads = arr.last, 0, 0.0, 0


def test_a_message_earlier_than_due_ends_the_sleep(data_dir, tmp_path, monkeypatch):
    """The learnt gap says the next message is due in 30 s: the consumer
    sleeps on the futex, and the commit of one sent after 0.2 s wakes it."""
    monkeypatch.setattr(amod.Arrivals, "MAX_GAP", 10**12)
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        with cluster.consumer(TOPIC, spin_us="auto") as consumer:
            assert consumer.poll(timeout=0.05) is None
            _learnt(consumer, 30 * 10**9)
            assert consumer._arrivals.plan(60 * 10**9)[0] > 20 * 10**9  # a long sleep planned
            kids.start(_send_after, data_dir, 0.2, [b"early"])
            t0 = time.monotonic()
            m = consumer.poll(timeout=60)
            waited = time.monotonic() - t0
    assert m is not None and m.value == b"early"
    assert waited < 15, f"slept {waited:.1f} s through a commit (the plan was ~30 s)"


def test_no_wait_outlasts_its_timeout(data_dir, monkeypatch):
    monkeypatch.setattr(amod.Arrivals, "MAX_GAP", 10**12)
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        with cluster.consumer(TOPIC, spin_us="auto") as consumer:
            assert consumer.poll(timeout=0.05) is None
            _learnt(consumer, 30 * 10**9)
            t0 = time.monotonic()
            assert consumer.poll(timeout=0.3) is None
            waited = time.monotonic() - t0
    assert 0.3 <= waited < 10, waited


def test_once_a_paced_stream_stops_the_consumer_sleeps(data_dir):
    """Learnt 10k msg/s, then nothing comes: each wait spins around one due
    time at most, then sleeps; it does not spin through the idle second."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        with cluster.consumer(TOPIC, spin_us="auto") as consumer:
            assert consumer.poll(timeout=0.05) is None
            _learnt(consumer, 100_000)
            c0, t0 = time.thread_time(), time.monotonic()
            while time.monotonic() - t0 < 1.0:
                assert consumer.poll(timeout=0.1) is None
            cpu = time.thread_time() - c0
            wall = time.monotonic() - t0
    # a spinning wait would use ~1 s; ten sleeping waits use ~1 ms
    assert cpu < 0.3 * wall, f"an idle consumer used {cpu:.2f} s of CPU in {wall:.2f} s"


def test_adaptive_wait_delivers_every_message_in_order(data_dir, tmp_path):
    n = 3000
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        with cluster.consumer(TOPIC, spin_us="auto") as consumer:
            assert consumer.poll(timeout=0.05) is None
            kids.start(_irregular_producer, data_dir, n, 17)
            got = []
            deadline = time.monotonic() + 60
            while len(got) < n and time.monotonic() < deadline:
                m = consumer.poll(timeout=1.0)
                if m is not None:
                    got.append(m)
    assert [int(m.value) for m in got] == list(range(n))
    assert [m.offset for m in got] == list(range(n))


def test_spin_us_is_checked(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        for bad in ("fast", -1, True):
            with pytest.raises(shmlog.InvalidConfig, match="spin_us"):
                cluster.consumer(TOPIC, spin_us=bad)
        with cluster.consumer(TOPIC, spin_us="auto") as c:
            assert c._arrivals is not None
        with cluster.consumer(TOPIC, spin_us=20) as c:
            assert c._arrivals is None and c.spin_ns == 20_000
        with cluster.consumer(TOPIC) as c:  # the default: the fixed spin
            assert c._arrivals is None and c.spin_ns == int(amod.DEFAULT_SPIN_US * 1000)


def test_arrivals_learn_the_gap_and_the_phase(monkeypatch):
    """A paced stream: the gap is learnt over a window of records, a spin
    dates an arrival exactly and the spin is planned around the next due
    time, a futex wake-up dates it WAKE_NS earlier (the early side), the
    margin follows the arrivals' jitter and the timer's lateness shortens
    the planned sleep."""
    clock = [1_000_000_000]
    monkeypatch.setattr(amod, "_now_ns", lambda: clock[0])
    monkeypatch.setattr(amod, "_fine_timer_slack", lambda: None)
    arr = amod.Arrivals()
    default = int(amod.DEFAULT_SPIN_US * 1000)
    assert arr.plan(10**9) == (0, default)  # an unknown rate: the fixed spin
    for _ in range(200):  # 10k msg/s, each caught spinning on time
        arr.arrived(1, "spin")
        clock[0] += 100_000
    assert abs(arr.gap - 100_000) < 1_000
    margin = arr._margin(arr.gap)
    assert margin < 10_000, "arrivals on time: a narrow window"
    due = arr.last + arr.gap
    clock[0] = arr.last + 5_000  # 5 us after the last arrival
    sleep, spin = arr.plan(10**9)
    assert clock[0] + sleep == due - margin and spin == 2 * margin
    # a wait shorter than the sleep: all of it asleep, no spin
    assert arr.plan(1_000) == (1_000, 0)
    # woken by the futex: dated WAKE_NS before the wake-up, so the next
    # spin starts earlier rather than later
    clock[0] = due + 3_000
    arr.arrived(1, "early")
    assert arr.last == due + 3_000 - amod.Arrivals.WAKE_NS
    # jittery arrivals (+-20 us) widen the window, up to a quarter of the gap
    for i in range(100):
        clock[0] = arr.last + arr.gap + (20_000 if i & 1 else -20_000)
        arr.arrived(1, "spin")
    assert arr._margin(arr.gap) == arr.gap >> 2
    # a late timer (learnt): the sleep is cut by it
    arr.timer_late = 20_000
    clock[0] = arr.last + 1_000
    sleep, _ = arr.plan(10**9)
    assert clock[0] + sleep == arr.last + arr.gap - arr._margin(arr.gap) - 20_000
    # a long idle pause does not unlearn the rate in one step
    gap = arr.gap
    clock[0] += 10**9
    arr.arrived(1, "late")
    assert arr.gap < 2 * gap
    # past the due time: spin for it, no sleep
    clock[0] = arr.last + arr.gap + 1_000
    sleep, spin = arr.plan(10**9)
    assert sleep == 0 and spin >= arr._margin(arr.gap)
    # several records in one read count as several arrivals in the gap: a
    # stream, waited for by the fixed spin
    b = amod.Arrivals()
    for _ in range(20):
        b.arrived(10, "ready")
        clock[0] += 100_000
    assert b.gap < 20_000
    assert b.plan(10**9) == (0, default)
    # a rate too slow to spin for: the fixed spin, then the futex
    slow = amod.Arrivals()
    for _ in range(10):
        slow.arrived()
        clock[0] += 50_000_000
    assert slow.gap > amod.Arrivals.MAX_GAP
    assert slow.plan(10**9) == (0, default)


def test_a_stalled_consumer_does_not_learn_a_shorter_gap(monkeypatch):
    """10k msg/s, and every 20th message the consumer is stalled 3 ms (a
    loaded host) and then reads the stall's 30 messages at once: the gap
    learnt stays the stream's, not the shorter one that counting all 30
    against the clipped pause would give."""
    clock = [1_000_000_000]
    monkeypatch.setattr(amod, "_now_ns", lambda: clock[0])
    arr = amod.Arrivals()
    for i in range(2000):
        if i % 20 == 19:
            clock[0] += 3_000_000
            arr.arrived(30, "ready")
        else:
            clock[0] += 100_000
            arr.arrived(1, "spin")
    assert 90_000 <= arr.gap <= 110_000, arr.gap


def test_the_spin_ends_where_planned_after_a_late_timer(monkeypatch):
    """Arrivals.read: a timed sleep that ended late shortens the spin after
    it, so the spin still ends a margin past the due time."""
    clock = [1_000_000_000]
    monkeypatch.setattr(amod, "_now_ns", lambda: clock[0])
    monkeypatch.setattr(amod, "_fine_timer_slack", lambda: None)
    arr = amod.Arrivals()
    for _ in range(200):
        arr.arrived(1, "spin")
        clock[0] += 100_000
    clock[0] = arr.last + 5_000
    sleep, spin = arr.plan(10**9)
    calls = []

    def read(a, want, wait_ns, one, spin_ns):
        calls.append((wait_ns, spin_ns))
        if spin_ns == 0:
            clock[0] += wait_ns + 3_000  # the timer ends 3 us late
            return None
        clock[0] += 2_000
        return (0, 0, b"v")

    assert arr.read(read, None, 1, 10**9, True) == (0, 0, b"v")
    assert calls[0] == (sleep, 0)
    assert calls[1][1] == spin - 3_000
    assert arr.timer_late == 3_000 >> 3


def test_arrivals_are_dated_by_what_the_wait_saw(monkeypatch):
    """Arrivals.read dates a message by the C wait's account (read info
    `waited`, `seen_ns`), not by when the read returned: one already there
    when a late timer let the spin begin is dated at most at its due time
    (not when the spin began: that would move the next due time later,
    read by read); one seen spinning at the C wait's own time; one seen
    after a futex sleep WAKE_NS before it."""
    from types import SimpleNamespace

    from shmlog.core._core import lib

    clock = [1_000_000_000]
    monkeypatch.setattr(amod, "_now_ns", lambda: clock[0])
    monkeypatch.setattr(amod, "_fine_timer_slack", lambda: None)

    def learnt():
        arr = amod.Arrivals()
        for _ in range(200):
            arr.arrived(1, "spin")
            clock[0] += 100_000
        clock[0] = arr.last + 5_000
        return arr

    def reads(info, kind, seen_after_sleep, back_after_sleep):
        """A read stub: the timed sleep ends 40 us late with nothing; the
        next call finds the message as `kind` says."""
        def read(a, want, wait_ns, one, spin_ns):
            if spin_ns == 0:
                clock[0] += wait_ns + 40_000
                return None
            t = clock[0]
            info.waited, info.seen_ns = kind, (t + seen_after_sleep if kind else 0)
            clock[0] = t + back_after_sleep
            return (0, 0, b"v")
        return read

    for kind in (lib.SHMLOG_WAITED_NONE, lib.SHMLOG_WAITED_SPIN, lib.SHMLOG_WAITED_FUTEX):
        arr = learnt()
        due = arr.last + arr.gap
        info = SimpleNamespace(waited=0, seen_ns=0)
        a = SimpleNamespace(reader=SimpleNamespace(_info=info))
        sleep, _ = arr.plan(10**9)
        start = clock[0]
        assert arr.read(reads(info, kind, 7_000, 12_000), a, 1, 10**9, True) == (0, 0, b"v")
        spin_began = start + sleep + 40_000
        if kind == lib.SHMLOG_WAITED_NONE:
            # there already when the spin began, after the due time
            assert spin_began > due and arr.last == due
        elif kind == lib.SHMLOG_WAITED_SPIN:
            assert arr.last == spin_began + 7_000  # seen, not returned (+12 us)
        else:
            assert arr.last == spin_began + 7_000 - amod.Arrivals.WAKE_NS
