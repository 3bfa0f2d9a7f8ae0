"""The reaper (invariant 3): a producer or consumer killed or frozen at any
point never blocks the others for longer than the reaper's timeout, and
the survivors' messages all arrive, once, in order.

Real processes: surviving producers stream into a 2-partition memory topic
while victims die (SIGKILL) or freeze (SIGSTOP) with a claim open, and two
consumers that each read both partitions record what they saw and when.
The broker runs with claim_timeout_ms=500.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import time
from collections import Counter

import psutil
import pytest
from _broker_helpers import FORK, SMALL, Children, collect, running_cluster, wait_for
from shmlog.core._core import ffi, lib

import shmlog

TOPIC = "events"
CLAIM_TIMEOUT_MS = 500
BROKER = {"claim_timeout_ms": CLAIM_TIMEOUT_MS, "reaper_interval_ms": 50}
# generous for 2 busy cores, yet far below "blocked forever" and below the
# 2 s default claim timeout a broker that ignored the setting would use
MAX_STALL_S = 1.5
SURVIVOR_RECORDS = 20


# ---------------------------------------------------------------- children
def _survivor(data_dir, idx, stop):
    """Send small batches alternately to partitions 0 and 1 until stopped;
    returns (batches sent, slowest send_batch in seconds)."""
    with shmlog.connect(data_dir, **BROKER) as cluster, cluster.producer(max_block_ms=30_000) as producer:
        n, worst = 0, 0.0
        while not stop.is_set():
            vals = [b"s%d:%d:%d" % (idx, n, j) for j in range(SURVIVOR_RECORDS)]
            t0 = time.monotonic()
            producer.send_batch(TOPIC, vals, partition=n % 2)
            worst = max(worst, time.monotonic() - t0)
            n += 1
            time.sleep(0.004)
        producer.flush()
        return n, worst


def _reader(data_dir, targets):
    """Read both partitions (manual assignment) until the parent's target of
    survivor messages is reached. Returns the non-victim records, a count of
    each victim value (one per victim batch, repeated), and arrival times."""
    with shmlog.connect(data_dir, **BROKER) as cluster:
        consumer = cluster.consumer([])
        consumer.assign([(TOPIC, 0), (TOPIC, 1)])
        got, victims, times = [], Counter(), []
        target, survivors, last_progress = None, 0, time.monotonic()
        hard_deadline = time.monotonic() + 45

        def take(batch):
            nonlocal survivors
            part = batch.partition
            for off, v in zip(batch.offsets, batch.values):
                if v[0] == 118:  # b"v": a victim's
                    victims[bytes(v)] += 1
                else:
                    got.append((part, off, bytes(v)))
                    survivors += v[0] == 115  # b"s"

        while time.monotonic() < hard_deadline:
            batch = consumer.consume_batch(max_messages=20_000, timeout=0.1)
            if batch is not None:
                last_progress = time.monotonic()
                times.append(last_progress)
                take(batch)
            if target is None:
                try:
                    target = targets.get_nowait()
                except queue.Empty:
                    pass
            if target is not None and (survivors >= target or time.monotonic() - last_progress > 4):
                break
        while True:
            batch = consumer.consume_batch(max_messages=20_000, timeout=0.3)
            if batch is None:
                break
            take(batch)
        consumer.close()
        return got, victims, times


def _claim_then_signal(data_dir, partition, sig):
    """Claim space for a 40-record batch, never commit it, and take `sig`
    (SIGKILL: die holding the claim; SIGSTOP: freeze holding it). After a
    SIGCONT, send a normal batch and return."""
    cluster = shmlog.connect(data_dir, **BROKER)
    plog = cluster.topic(TOPIC).regions[partition]
    slot = plog.register_producer()
    base = ffi.new("uint64_t *")
    assert lib.shmlog_log_claim_only(plog.checked_log(), slot, 2000, 40, base) == 0
    os.kill(os.getpid(), sig)
    with cluster.producer() as producer:
        producer.send_batch(TOPIC, [b"late:%d" % i for i in range(10)], partition=partition)
    cluster.close()
    return int(base[0])


VICTIM_RECORDS = 1000


def _looping_victim(data_dir, idx, started):
    """send_batch in a tight loop until killed: one frame of 1000 copies of
    b"v<idx>:<batch>" each time, so most of a loop is spent between claim and
    commit (encoding) or waiting for a free chunk."""
    with shmlog.connect(data_dir, **BROKER) as cluster, cluster.producer() as producer:
        b = 0
        while True:
            producer.send_batch(TOPIC, [b"v%d:%d" % (idx, b)] * VICTIM_RECORDS, partition=b % 2)
            b += 1
            started.set()


# ---------------------------------------------------------------- the harness
def _parse(v):
    """(producer, batch, index) of a value; victims' values have no index."""
    parts = v.split(b":")
    if parts[0] == b"late":
        return b"late", 0, int(parts[1])
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 0


def _run(data_dir, tmp_path, disrupt, topic_config=SMALL):
    """Start 2 survivors and 2 readers, call disrupt(kids), stop, and check
    survivors' delivery and stalls. Returns the two readers' records."""
    with running_cluster(data_dir, **BROKER) as cluster, Children(tmp_path) as kids:
        cluster.create_topic(TOPIC, partitions=2, **topic_config)
        stop = FORK.Event()
        targets = [FORK.Queue(), FORK.Queue()]
        readers = [kids.start(_reader, data_dir, q) for q in targets]
        survivors = [kids.start(_survivor, data_dir, i, stop) for i in range(2)]
        t_start = time.monotonic()
        wait_for(lambda: sum(p.end_offset for p in cluster.describe_topic(TOPIC).partitions) > 200, 10,
                 what="survivors to start")
        disrupt(kids, cluster)
        time.sleep(0.5)  # survivors keep going a little after the last disruption
        t_stop = time.monotonic()
        stop.set()
        sent = [Children.result(p, timeout=30) for p in survivors]
        expected = {b"s%d:%d:%d" % (i, b, j) for i, (n, _) in enumerate(sent) for b in range(n)
                    for j in range(SURVIVOR_RECORDS)}
        for q in targets:
            q.put(len(expected))
        results = [Children.result(r, timeout=60) for r in readers]

        for i, (_, worst) in enumerate(sent):
            assert worst < MAX_STALL_S, f"survivor {i} was blocked {worst:.2f}s in one send_batch"
        for got, _, times in results:
            values = [v for _, _, v in got]
            survivor_values = [v for v in values if v[:1] == b"s"]
            dupes = [v for v, c in Counter(values).items() if c > 1]
            assert not dupes, f"duplicates: {dupes[:3]}"
            missing = expected - set(survivor_values)
            assert not missing, f"{len(missing)} survivor messages never arrived, e.g. {sorted(missing)[:3]}"
            # per partition: offsets increase, each producer's batches in order
            for part in (0, 1):
                offs = [o for p, o, _ in got if p == part]
                assert offs == sorted(offs) and len(set(offs)) == len(offs)
            last = {}
            for part, _, v in got:
                who, b, j = _parse(v)
                assert last.get((who, part), (-1, -1)) <= (b, j), f"{v!r} out of order"
                last[(who, part)] = (b, j)
            # nobody waited long for data while the survivors were sending
            window = [t for t in times if t_start + 0.5 <= t <= t_stop]
            gaps = [b - a for a, b in zip(window, window[1:])]
            assert window and max(gaps, default=0) < MAX_STALL_S, f"a reader stalled {max(gaps):.2f}s"
        # both readers saw the very same log (holes skipped the same way)
        assert sorted(results[0][0]) == sorted(results[1][0])
        assert results[0][1] == results[1][1]
        info = cluster.describe_topic(TOPIC)
        return results[0][0], results[0][1], info


# ---------------------------------------------------------------- tests
def test_producer_killed_between_claim_and_commit(data_dir, tmp_path):
    """Five times, a producer claims space and is SIGKILLed before it
    commits: the hole is aborted and skipped; nobody waits for it."""
    claims = []

    def disrupt(kids, cluster):
        for k in range(5):
            victim = kids.start(_claim_then_signal, data_dir, k % 2, signal.SIGKILL)
            victim.join(10)
            assert victim.exitcode == -signal.SIGKILL
            claims.append(k % 2)
            time.sleep(0.3)

    got, _, info = _run(data_dir, tmp_path, disrupt)
    assert len(claims) == 5
    assert not any(v.startswith(b"late") for _, _, v in got)
    # the holes' offsets were taken and skipped: offsets are dense except them
    for part in (0, 1):
        offs = [o for p, o, _ in got if p == part]
        holes = info.partitions[part].end_offset - len(offs)
        assert holes == 40 * claims.count(part), (part, holes)
        assert info.partitions[part].extra.get("aborted_batches", 0) >= claims.count(part)


def test_producers_killed_at_random_points(data_dir, tmp_path):
    """A producer looping send_batch is SIGKILLed at a random moment, ten
    times over (some kills land between claim and commit, some while it
    waits for space, most elsewhere; the claim-and-die test above is the
    deterministic case). The survivors carry on, and each victim batch is
    all there or not there at all."""
    rng = random.Random(os.getpid())

    def disrupt(kids, cluster):
        for k in range(10):
            started = FORK.Event()
            victim = kids.start(_looping_victim, data_dir, k, started)
            assert started.wait(10)
            time.sleep(rng.uniform(0.0, 0.1))
            victim.kill()
            victim.join(10)

    _, batches, info = _run(data_dir, tmp_path, disrupt, topic_config={**SMALL, "chunk_bytes": 1 << 20})
    assert batches, "the victims committed nothing: the test proved nothing"
    partial = {b: n for b, n in batches.items() if n != VICTIM_RECORDS}
    assert not partial, f"half-visible or duplicated batches: {partial}"


def test_frozen_producer_claim_is_aborted_after_claim_timeout(data_dir, tmp_path):
    """A producer SIGSTOPped with a claim open is alive, so only the claim
    timeout can help: readers wait at most about claim_timeout_ms. After
    SIGCONT it carries on, and its new batch arrives exactly once."""
    late = {}

    def disrupt(kids, cluster):
        victim = kids.start(_claim_then_signal, data_dir, 0, signal.SIGSTOP)
        wait_for(lambda: psutil.Process(victim.pid).status() == psutil.STATUS_STOPPED, 10,
                 what="the victim to stop")
        time.sleep(2.5 * CLAIM_TIMEOUT_MS / 1000)
        os.kill(victim.pid, signal.SIGCONT)
        late["base"] = Children.result(victim, timeout=20)

    got, _, info = _run(data_dir, tmp_path, disrupt)
    lates = [(p, o, v) for p, o, v in got if v.startswith(b"late")]
    assert [v for _, _, v in lates] == [b"late:%d" % i for i in range(10)]
    assert all(p == 0 for p, _, _ in lates)
    # the frozen claim's 40 offsets were aborted, never shown
    offs = sorted(o for p, o, _ in got if p == 0)
    assert info.partitions[0].end_offset - len(offs) == 40
    assert late["base"] not in offs


def _lazy_reader(data_dir, ready):
    with shmlog.connect(data_dir, **BROKER) as cluster:
        cluster.consumer("bp")  # a gating reader at offset 0 that never reads
        ready.set()
        time.sleep(120)


def test_dead_consumer_stops_gating_memory_topic(data_dir, tmp_path):
    """A consumer SIGKILLed without reading releases its hold on the memory
    topic's chunks: the producer, blocked on it, goes on within a second."""
    with running_cluster(data_dir, **BROKER) as cluster, Children(tmp_path) as kids:
        cluster.create_topic("bp", partitions=1, **SMALL)
        mine = cluster.consumer("bp")
        ready = FORK.Event()
        lazy = kids.start(_lazy_reader, data_dir, ready)
        assert ready.wait(10)
        producer = cluster.producer(max_block_ms=200)
        sent, got = 0, []
        with pytest.raises(shmlog.BufferFull):
            for _ in range(1000):
                producer.send_batch("bp", [b"%08d" % (sent + j) + b"." * 200 for j in range(10)], partition=0)
                sent += 10
                got += mine.consume(max_messages=100, timeout=0)  # I keep up; the lazy one does not
        lazy.kill()
        lazy.join(10)
        producer.close()
        producer = cluster.producer(max_block_ms=5000)
        t0 = time.monotonic()
        for _ in range(60):  # several times what the region holds
            producer.send_batch("bp", [b"%08d" % (sent + j) + b"." * 200 for j in range(10)], partition=0)
            sent += 10
            got += mine.consume(max_messages=1000, timeout=0)
            assert time.monotonic() - t0 < 3.0, "still blocked by a dead reader"
        got += collect(mine, sent - len(got), timeout=10)
        assert [int(m.value[:8]) for m in got] == list(range(sent))
        producer.close()
        mine.close()
