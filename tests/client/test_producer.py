"""Producer: keyed placement, ordering and exactly-once delivery across real
processes, backpressure on memory topics, and bad input.

Topics are storage="memory" (no disk involved); every test stops its
supervisor (running_cluster) and joins or kills its children (Children).
"""

from __future__ import annotations

import errno
import time
from collections import Counter, defaultdict

import pytest
from _broker_helpers import (
    ROOMY,
    SMALL,
    Children,
    by_partition,
    collect,
    kafka_partition,
    running_cluster,
    wait_for,
)
from _core_helpers import frames

import shmlog
from shmlog.core.log import PartitionLog

TOPIC = "orders"


# ---------------------------------------------------------------- children
def _keyed_producer(data_dir, idx, n, keys):
    """Producer #idx: n messages, value b"p<idx>:<key>:<seq>"; alternates
    runs of send() and runs of keyed send_batch()."""
    with shmlog.connect(data_dir) as cluster, cluster.producer() as producer:
        i = 0
        while i < n:
            run = list(range(i, min(i + 37, n)))
            items = [(keys[(j * 7 + idx) % len(keys)], j) for j in run]
            vals = [b"p%d:%s:%d" % (idx, k, j) for k, j in items]
            if (i // 37) % 2 == 0:
                for (k, _), v in zip(items, vals):
                    producer.send(TOPIC, v, key=k)
            else:
                producer.send_batch(TOPIC, vals, keys=[k for k, _ in items])
            i += len(run)
        producer.flush()
    return n


def _assigned_consumer(data_dir, parts, want, style):
    """Read `parts` by manual assignment until `want` messages arrived (or
    30 s), then drain briefly so duplicates would show; returns tuples."""
    with shmlog.connect(data_dir) as cluster:
        if style == "topic-then-assign":
            consumer = cluster.consumer(TOPIC)
        else:
            consumer = cluster.consumer([])
            assert consumer.assignment() == []
        consumer.assign([(TOPIC, p) for p in parts])
        assert consumer.assignment() == sorted((TOPIC, p) for p in parts)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < want and time.monotonic() < deadline:
            got.extend(consumer.consume(max_messages=5000, timeout=0.5))
        got.extend(consumer.consume(max_messages=5000, timeout=0.3))
        consumer.close()
        return [(m.partition, m.offset, bytes(m.key), bytes(m.value)) for m in got]


def test_three_producers_two_consumers_keyed(data_dir, tmp_path):
    """3 producer processes, 2 manually assigned consumer processes on a
    4-partition topic: each message arrives once, on murmur2(key) % 4, in
    per-key order, with dense offsets per partition."""
    n = 1500
    keys = [b"key-%d" % i for i in range(24)]
    expected = {b"p%d:%s:%d" % (idx, keys[(j * 7 + idx) % len(keys)], j) for idx in range(3) for j in range(n)}
    per_part = Counter(kafka_partition(v.split(b":")[1], 4) for v in expected)
    assert len(per_part) == 4  # the keys cover every partition, so the split means something
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic(TOPIC, partitions=4, **ROOMY)
        consumers = [
            kids.start(_assigned_consumer, data_dir, [0, 1], per_part[0] + per_part[1], "topic-then-assign"),
            kids.start(_assigned_consumer, data_dir, [2, 3], per_part[2] + per_part[3], "empty-then-assign"),
        ]
        producers = [kids.start(_keyed_producer, data_dir, idx, n, keys) for idx in range(3)]
        for p in producers:
            assert Children.result(p, timeout=60) == n
        got_a, got_b = (Children.result(c, timeout=60) for c in consumers)

        assert {p for p, *_ in got_a} <= {0, 1}
        assert {p for p, *_ in got_b} <= {2, 3}
        got = got_a + got_b
        values = [v for *_, v in got]
        dupes = [v for v, c in Counter(values).items() if c > 1]
        assert not dupes, f"{len(dupes)} duplicated, e.g. {dupes[:3]}"
        missing = expected - set(values)
        assert not missing, f"{len(missing)} lost, e.g. {sorted(missing)[:3]}"
        assert len(values) == len(expected)

        last_seq = {}
        offsets = defaultdict(list)
        for part, off, key, value in got:
            prod, vkey, seq = value.split(b":")
            assert key == vkey
            assert part == kafka_partition(key, 4), f"key {key!r} on partition {part}"
            offsets[part].append(off)
            # within a producer, each key's messages keep their send order
            assert last_seq.get((prod, key), -1) < int(seq), f"{value!r} out of order"
            last_seq[(prod, key)] = int(seq)
        for part, offs in offsets.items():
            assert offs == list(range(per_part[part])), f"partition {part} offsets not dense/in order"
        # the admin view agrees
        ends = {pi.partition: pi.end_offset for pi in cluster.describe_topic(TOPIC).partitions}
        assert ends == dict(per_part)


def test_send_batch_with_keys_splits_like_send(data_dir):
    keys = [b"k%d" % (i % 13) for i in range(400)]
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=3, **ROOMY)
        with cluster.producer() as producer:
            producer.send_batch("t", [b"%d" % i for i in range(400)], keys=keys)
            with pytest.raises(ValueError):
                producer.send_batch("t", [b"a", b"b"], keys=[b"k"])
        with cluster.consumer("t") as consumer:
            msgs = collect(consumer, 400, timeout=10)
        for part, ms in by_partition(msgs).items():
            seqs = [int(m.value) for m in ms]
            assert seqs == sorted(seqs)
            for m in ms:
                assert part == kafka_partition(bytes(m.key), 3)
                assert m.key == keys[int(m.value)]


def test_unkeyed_messages_spread_over_partitions(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=4, **ROOMY)
        with cluster.producer(batch_bytes=1024) as producer:
            for i in range(2000):
                producer.send("t", b"%06d" % i + b"." * 100)
            for i in range(8):  # send_batch without keys moves on each call
                producer.send_batch("t", [b"b%d" % i] * 10)
            producer.flush()
        with cluster.consumer("t") as consumer:
            msgs = collect(consumer, 2080, timeout=10)
        parts = by_partition(msgs)
        assert set(parts) == {0, 1, 2, 3}
        # a partition's messages are in the order they were sent
        for ms in parts.values():
            seqs = [int(m.value[:6]) for m in ms if not m.value.startswith(b"b")]
            assert seqs == sorted(seqs)


def test_explicit_partition(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=3, **ROOMY)
        with cluster.producer() as producer:
            for i in range(30):
                producer.send("t", b"%d" % i, key=b"same-key", partition=i % 3)
            producer.send_batch("t", [b"x", b"y"], partition=2)
        with cluster.consumer("t") as consumer:
            msgs = collect(consumer, 32, timeout=10)
        parts = by_partition(msgs)
        assert [int(m.value) for m in parts[0]] == list(range(0, 30, 3))
        assert [m.value for m in parts[2]][-2:] == [b"x", b"y"]


# ---------------------------------------------------------------- backpressure
def _bulk_producer(data_dir, topic, n, size, max_block_ms):
    with shmlog.connect(data_dir) as cluster, cluster.producer(max_block_ms=max_block_ms) as producer:
        t0 = time.monotonic()
        for i in range(n):
            producer.send(topic, b"%08d" % i + b"." * (size - 8), partition=0)
        producer.flush()
        return time.monotonic() - t0


def test_slow_consumer_blocks_producer_without_loss(data_dir, tmp_path):
    """A memory topic is a bounded queue: a consumer that does not read makes
    the producer wait (not drop); once it reads, everything arrives."""
    n, size = 6000, 100  # ~2.5x what 4 x 64 KiB chunks hold
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic("bp", partitions=1, **SMALL)
        consumer = cluster.consumer("bp")  # a gating reader at offset 0, not reading yet
        prod = kids.start(_bulk_producer, data_dir, "bp", n, size, 60_000)

        def end():
            return cluster.describe_topic("bp").partitions[0].end_offset

        wait_for(lambda: end() > 0, 10, what="the producer to start")
        time.sleep(1.0)
        stuck = end()
        time.sleep(0.3)
        assert prod.is_alive(), "producer finished although nobody read: data was dropped or overwritten"
        assert end() == stuck < n, "the producer kept committing past the unread chunks"

        msgs = []
        deadline = time.monotonic() + 30
        while len(msgs) < n and time.monotonic() < deadline:
            msgs.extend(consumer.consume(max_messages=500, timeout=0.5))
            time.sleep(0.001)  # a slow consumer
        elapsed = Children.result(prod, timeout=30)
        assert elapsed >= 1.0  # it really was blocked
        assert [int(m.value[:8]) for m in msgs] == list(range(n))
        assert [m.offset for m in msgs] == list(range(n))
        assert all(len(m.value) == size for m in msgs)
        assert consumer.consume(timeout=0.2) == []
        consumer.close()


def test_buffer_full_after_max_block_ms(data_dir):
    """With a reader that never reads, a producer blocks max_block_ms, then
    raises BufferFull naming topic and partition; nothing committed is lost,
    and it can send again once the reader catches up."""
    value = b"." * 200  # 10 of these are one frame: a batch is all or nothing
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("bp", partitions=1, **SMALL)
        consumer = cluster.consumer("bp")
        producer = cluster.producer(max_block_ms=300)
        committed = 0
        for _ in range(1000):
            batch = [b"%08d" % (committed + j) + value for j in range(10)]
            t0 = time.monotonic()
            try:
                producer.send_batch("bp", batch, partition=0)
            except shmlog.BufferFull as exc:
                blocked = time.monotonic() - t0
                err = exc
                break
            committed += 10
        else:
            pytest.fail("the producer never blocked on a reader that does not read")
        assert 0.25 <= blocked < 5.0, blocked
        assert "'bp'" in str(err) and "partition 0" in str(err) and "max_block_ms" in str(err)
        assert isinstance(err, shmlog.ShmlogError)

        # a send() with a delivery callback learns about it too
        reports = []
        producer.send("bp", b"late", partition=0, on_delivery=lambda e, md: reports.append((e, md)))
        with pytest.raises(shmlog.BufferFull):
            producer.flush()
        assert len(reports) == 1 and isinstance(reports[0][0], shmlog.BufferFull) and reports[0][1] is None

        msgs = collect(consumer, committed, timeout=10)
        assert [int(m.value[:8]) for m in msgs] == list(range(committed))
        assert consumer.consume(timeout=0.2) == []  # the failed batches were not half-committed

        producer.send_batch("bp", [b"after"] * 10, partition=0)  # room again
        assert [m.value for m in collect(consumer, 10, timeout=10)] == [b"after"] * 10
        assert msgs[-1].offset == committed - 1
        producer.close()
        consumer.close()


def test_send_batch_buffer_full_says_what_was_committed(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("bp", partitions=1, **SMALL)
        consumer = cluster.consumer("bp")
        producer = cluster.producer(max_block_ms=200)
        sent = 0
        with pytest.raises(shmlog.BufferFull) as info:
            for _ in range(1000):
                # 2 values of 1 KiB per frame (max batch 4 KiB): 5 frames per call
                producer.send_batch("bp", [b"%08d" % (sent + j) + b"." * 1000 for j in range(10)], partition=0)
                sent += 10
        msgs = collect(consumer, sent, timeout=10)
        msgs += consumer.consume(timeout=0.3)
        partial = len(msgs) - sent
        # either the failed call committed nothing, or the error says how much it did
        assert partial == 0 or getattr(info.value, "committed", None) == partial, partial
        producer.close()
        consumer.close()


# ---------------------------------------------------------------- send_batch paths
@pytest.fixture
def pickled_appends(monkeypatch):
    """The return codes of PartitionLog.append_pickled in this process, so a
    test knows send_batch took (or tried) the one-pickle path."""
    rcs = []
    orig = PartitionLog.append_pickled

    def spy(self, *args, **kw):
        rc = orig(self, *args, **kw)
        rcs.append(rc)
        return rc

    monkeypatch.setattr(PartitionLog, "append_pickled", spy)
    return rcs


def _end(cluster, topic="t", partition=0) -> int:
    return cluster.describe_topic(topic).partitions[partition].end_offset


def test_send_batch_of_plain_bytes_is_one_pickled_frame(data_dir, pickled_appends):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)
        vals = [b"v%03d" % i + b"." * (i % 37) for i in range(100)]
        with cluster.producer() as producer:
            producer.send_batch("t", vals, partition=0)
            assert pickled_appends == [0]
            producer.send_batch("t", [b"one"], partition=0)  # append_one, not a pickle
            assert pickled_appends == [0]
        assert len(frames(cluster.topic("t").regions[0])) == 2
        with cluster.consumer("t") as consumer:
            msgs = collect(consumer, 101, timeout=10)
            assert consumer.consume(timeout=0.1) == []
        assert [m.value for m in msgs] == vals + [b"one"]
        assert [m.offset for m in msgs] == list(range(101))


def test_send_batch_names_the_oversized_message_and_commits_nothing(data_dir, pickled_appends):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)
        limit = cluster.describe_topic("t").config["max_message_bytes"]
        big = b"x" * (limit + 1)
        with cluster.producer() as producer:
            producer.send_batch("t", [b"before"] * 3, partition=0)
            cases = [
                ([b"a", big, b"c"], 1),
                ([big], 0),
                ([None, b"b", big], 2),  # tombstones among them
                ([b"s" * 10] * 300 + [big], 300),  # more than one frame's worth before it
                ([b"s" * 10] * 5 + [big, big], 5),  # the first one is named
            ]
            for values, j in cases:
                with pytest.raises(shmlog.MessageTooLarge, match=rf"message #{j} of {limit + 1} bytes"):
                    producer.send_batch("t", values, partition=0)
                assert _end(cluster) == 3, j
            # the pickled path was tried and refused each, without raising from C
            assert all(rc < 0 for rc in pickled_appends[1:]), pickled_appends
            producer.send_batch("t", [b"x" * limit, b"after"], partition=0)  # the limit itself is fine
        with cluster.consumer("t") as consumer:
            msgs = collect(consumer, 5, timeout=10)
            assert consumer.consume(timeout=0.2) == []
        assert [m.value for m in msgs] == [b"before"] * 3 + [b"x" * limit, b"after"]
        assert [m.offset for m in msgs] == list(range(5))


def test_send_batch_larger_than_a_frame_is_split_in_order(data_dir, pickled_appends):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)  # 4 KiB frames
        vals = [b"%06d" % i + b"." * (i % 101) for i in range(1500)]  # ~85 KiB
        with cluster.producer() as producer:
            producer.send_batch("t", vals, partition=0)
        assert pickled_appends[0] == -errno.E2BIG  # then split into frames that fit
        plog = cluster.topic("t").regions[0]
        fr = frames(plog)
        assert len(fr) > 20 and all(fb <= plog.max_batch_bytes for _, fb, _ in fr)
        assert [end for _, _, end in fr] == sorted({end for _, _, end in fr})
        assert fr[-1][2] == 1500
        with cluster.consumer("t") as consumer:
            msgs = collect(consumer, 1500, timeout=10)
            assert consumer.consume(timeout=0.1) == []
        assert [m.value for m in msgs] == vals
        assert [m.offset for m in msgs] == list(range(1500))


def test_send_batch_of_tombstones_bytearrays_and_memoryviews(data_dir):
    backing = bytearray(b"0123456789")
    batches = [
        [None, None],
        [None, b"a", bytearray(b"ba"), memoryview(b"mv"), b"", None, memoryview(backing)[2:5]],
        [bytearray(b"only bytearrays"), bytearray()],
        [memoryview(b"only views")],
        [None],
        [bytearray(b"one")],
        # more than a 4 KiB frame: split, and still every kind of value
        [None if i % 7 == 0 else bytearray(b"%05d" % i) if i % 3 == 0 else memoryview(b"%05d" % i)
         if i % 3 == 1 else b"%05d" % i for i in range(1200)],
    ]
    want = [[None if v is None else bytes(v) for v in b] for b in batches]
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)
        with cluster.producer() as producer:
            for b in batches:
                producer.send_batch("t", b, partition=0)
        n = sum(map(len, want))
        with cluster.consumer("t") as consumer:
            msgs = collect(consumer, n, timeout=10)
            assert consumer.consume(timeout=0.1) == []
        assert [m.value for m in msgs] == sum(want, [])
        assert [m.offset for m in msgs] == list(range(n))
        assert all(m.key is None for m in msgs)


def test_send_batch_with_a_str_value_raises_type_error_and_commits_nothing(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)
        with cluster.producer() as producer:
            producer.send_batch("t", [b"before"], partition=0)
            for values, j in (([b"a", "str", b"c"], 1), (["str"], 0), ([None, b"b", "s"], 2),
                              ([b"a", b"b", 7], 2)):
                with pytest.raises(TypeError, match=rf"value #{j} must be bytes-like"):
                    producer.send_batch("t", values, partition=0)
                assert _end(cluster) == 1, values
            producer.send_batch("t", [b"after"], partition=0)
        with cluster.consumer("t") as consumer:
            assert [m.value for m in collect(consumer, 2, timeout=10)] == [b"before", b"after"]
            assert consumer.consume(timeout=0.2) == []


# Regression (Producer.send_batch): a batch bigger than one frame was split
# and committed frame by frame before each slice's values were type checked,
# so a str late in the batch raised TypeError after the frames before it were
# committed, naming an index relative to the slice.
def test_send_batch_over_a_frame_with_a_str_value_commits_nothing(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)  # 4 KiB frames
        with cluster.producer() as producer:
            with pytest.raises(TypeError, match=r"value #100 must be bytes-like"):
                producer.send_batch("t", [b"v" * 100] * 100 + ["str"], partition=0)
            assert _end(cluster) == 0


# ---------------------------------------------------------------- bad input
BAD_VALUES = ["text", 42, 4.2, ["b"], {"a": b"b"}, object()]


def test_bad_input_is_rejected_and_committed_data_survives(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=2, **SMALL)
        producer = cluster.producer()
        producer.send_batch("t", [b"before-%d" % i for i in range(5)], partition=0)
        limit = cluster.describe_topic("t").config["max_message_bytes"]

        for bad in BAD_VALUES:
            with pytest.raises(TypeError, match="bytes"):
                producer.send("t", bad, partition=0)
            with pytest.raises(TypeError, match="bytes"):
                producer.send_batch("t", [bad], partition=0)
            with pytest.raises(TypeError, match="bytes"):
                producer.send("t", b"v", key=bad, partition=0)
        for bad in ("text", 42):
            with pytest.raises(TypeError, match="bytes"):
                producer.send("t", b"v", key=bad)
            with pytest.raises(TypeError, match="bytes"):
                producer.send_batch("t", [b"v"], keys=[bad])

        with pytest.raises(shmlog.MessageTooLarge, match=f"'t'.*{limit}"):
            producer.send("t", b"x" * (limit + 1), partition=0)
        with pytest.raises(shmlog.MessageTooLarge):
            producer.send("t", b"x" * (limit - 1), key=b"ab", partition=0)  # key counts
        with pytest.raises(shmlog.MessageTooLarge):
            producer.send("t", b"x" * limit, key=b"k")
        with pytest.raises(shmlog.MessageTooLarge):
            producer.send_batch("t", [b"small", b"x" * (limit + 1)], partition=0)
        with pytest.raises(shmlog.UnknownPartition):
            producer.send("t", b"v", partition=2)
        with pytest.raises(shmlog.UnknownPartition):
            producer.send("t", b"v", partition=-1)
        with pytest.raises(shmlog.UnknownPartition):
            producer.send_batch("t", [b"v"], partition=7)
        with pytest.raises(shmlog.UnknownTopic, match="nope"):
            producer.send("nope", b"v")
        with pytest.raises(shmlog.UnknownTopic):
            producer.send_batch("nope", [b"v"])
        with pytest.raises(shmlog.InvalidTopic, match=r"A-Za-z0-9"):
            producer.send("bad topic", b"v")

        producer.send("t", b"x" * limit, partition=0)  # exactly the limit is fine
        producer.send("t", b"after", partition=0)
        producer.flush()
        with cluster.consumer("t") as consumer:
            consumer.assign([("t", 0)])
            msgs = collect(consumer, 7, timeout=10)
            assert consumer.consume(timeout=0.2) == []
        assert [m.value for m in msgs] == [b"before-%d" % i for i in range(5)] + [b"x" * limit, b"after"]
        assert [m.offset for m in msgs] == list(range(7))
        assert cluster.describe_topic("t").partitions[1].end_offset == 0
        producer.close()


def test_topic_max_message_bytes_is_enforced(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, max_message_bytes=100, **SMALL)
        with cluster.producer() as producer:
            producer.send("t", b"x" * 100)
            with pytest.raises(shmlog.MessageTooLarge, match="max_message_bytes=100"):
                producer.send("t", b"x" * 101)
        with pytest.raises(shmlog.InvalidConfig, match="max_message_bytes"):
            cluster.create_topic("t2", max_message_bytes=1 << 30, **SMALL)


@pytest.mark.parametrize("bad", [{"headers": [("h", 5)]}, {"headers": ["not-a-pair"]}, {"timestamp_ms": "now"}],
                         ids=["header-value", "header-shape", "timestamp"])
def test_bad_headers_or_timestamp_fail_in_send_and_lose_nothing(data_dir, bad):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)
        producer = cluster.producer(linger_ms=2000)
        producer.send("t", b"good-1")
        producer.send("t", b"good-2")
        with pytest.raises(TypeError):
            producer.send("t", b"bad", **bad)
        producer.flush()
        with cluster.consumer("t") as consumer:
            assert [m.value for m in collect(consumer, 2, timeout=5)] == [b"good-1", b"good-2"]
        producer.close()


def test_bad_producer_settings(data_dir):
    with running_cluster(data_dir) as cluster:
        with pytest.raises(shmlog.InvalidConfig, match="compression"):
            cluster.producer(compression="zstd")
        with pytest.raises(shmlog.InvalidConfig, match="partitioner"):
            cluster.producer(partitioner="random")
        with pytest.raises(shmlog.InvalidConfig):
            cluster.producer(max_block_ms=-1)


# ---------------------------------------------------------------- lifecycle
def test_auto_create_and_close(data_dir):
    with running_cluster(data_dir) as cluster:
        producer = cluster.producer(auto_create=True, partitions=2, **SMALL)
        producer.send("fresh", b"v", partition=1)
        producer.flush()
        info = cluster.describe_topic("fresh")
        assert len(info.partitions) == 2 and info.config["storage"] == "memory"
        assert info.partitions[1].end_offset == 1
        producer.close()
        producer.close()  # twice is fine
        with pytest.raises(shmlog.Closed):
            producer.send("fresh", b"v")
        with cluster.producer() as p2, pytest.raises(shmlog.UnknownTopic):
            p2.send("other", b"v")  # no auto-create unless asked


# ---------------------------------------------------------------- threads
# send()'s fast path appends plain values without the producer's lock; every
# committer (send when a batch fills or a reader waits, the linger flusher,
# flush, a keyed send's slow path) commits a prefix under the lock. Threads
# hammering one Producer must lose nothing, duplicate nothing, and keep each
# thread's order within a partition.
def _hammer(producer, tid: int, n: int, partitions: int) -> None:
    for i in range(n):
        v = b"t%d:%d" % (tid, i)
        r = i % 301
        if r == 3:
            producer.send(TOPIC, v, key=b"k%d" % (i % 5))  # slow path, keyed
        elif r == 7:
            producer.send(TOPIC, v, headers=[("h", b"x")])  # slow path, headers
        elif r == 9:
            producer.send_batch(TOPIC, [v], partition=tid % partitions)
        else:
            # the lock-free fast path (it stands aside while a keyed batch is
            # pending, until the flush below or a commit clears it)
            producer.send(TOPIC, v)
        if r == 11:
            producer.flush()


@pytest.mark.parametrize("partitions,linger_ms,reader", [(1, 0, False), (1, 1, True), (3, 0, True)])
def test_threads_sending_on_one_producer_lose_and_reorder_nothing(data_dir, partitions, linger_ms,
                                                                    reader):
    import threading

    threads_n, per = 4, 6000
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=partitions, **ROOMY)
        got = []
        stop = threading.Event()
        consumer = cluster.consumer(TOPIC, spin_us=200)

        def read():  # a waiting reader makes send() commit at once (hungry)
            while not stop.is_set() or len(got) < threads_n * per:
                got.extend(consumer.consume(max_messages=10_000, timeout=0.2))
                if stop.is_set() and len(got) >= threads_n * per:
                    break

        reader_thread = threading.Thread(target=read) if reader else None
        if reader_thread:
            reader_thread.start()
        with cluster.producer(linger_ms=linger_ms) as producer:
            workers = [threading.Thread(target=_hammer, args=(producer, t, per, partitions))
                       for t in range(threads_n)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            producer.flush()
        stop.set()
        if reader_thread:
            reader_thread.join(60)
            assert not reader_thread.is_alive()
        else:
            got = collect(consumer, threads_n * per, timeout=60)
        assert consumer.consume(timeout=0.3) == []
        consumer.close()
    values = Counter(m.value for m in got)
    assert len(got) == threads_n * per and len(values) == threads_n * per, "lost or duplicated"
    for msgs in by_partition(got).values():
        last = {}
        for m in msgs:
            tid, i = map(int, m.value[1:].split(b":"))
            assert i > last.get(tid, -1), f"thread {tid}'s order broken in partition {m.partition}"
            last[tid] = i


def test_the_lone_commit_budget_refills_between_commits(data_dir):
    """The budget is stored at commits: once a burst spent it, a lone send a
    few ms later (refilled by then, and past HUNGRY_GAP) still goes at once,
    although no commit happened in between to store the refill."""
    from shmlog.client import producer as producer_module

    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, storage="memory")
        with cluster.producer() as p:
            p.send("t", b"first")
            p.flush()
            st = p._topics["t"]
            region = st.topic.regions[0]
            # what a commit at the end of a long burst stores
            now = time.perf_counter()
            st.hungry_tokens[0] = 0.0
            st.tokens_at[0] = now
            st.next_hungry[0] = now + producer_module.HUNGRY_GAP
            time.sleep(0.005)  # refills ~100 tokens, far past HUNGRY_GAP
            with p._lock:  # the flusher thread cannot commit meanwhile; send() here can
                p.send("t", b"after")
                assert region.end_offset() == 2, "a lone send after the refill was held back"


@pytest.mark.parametrize("reader_waits", [True, False], ids=["reader-waits", "none-waits"])
def test_lone_sends_commit_at_once_and_a_stream_batches(data_dir, reader_waits):
    """linger_ms=0: a lone send() commits before it returns. With a reader
    waiting (data_hungry) so does a burst of them, back to back (a paced
    producer catching up after a stall: HUNGRY_BURST commits skip
    HUNGRY_GAP). With none waiting at that instant (one may be busy with the
    previous message; the flusher thread would take tens of us) paced ones
    do, on the same budget. A stream after them batches."""
    from shmlog.client import producer as producer_module

    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, storage="memory")
        with cluster.producer() as p:
            p.send("t", b"first")
            p.flush()
            region = p._topics["t"].topic.regions[0]
            region.hdr.data_hungry = 1 if reader_waits else 0  # what a reader in poll() sets
            try:
                for i in range(10):
                    if not reader_waits:  # paced: back to back they are a stream
                        time.sleep(20 * producer_module.LONE_AFTER)
                    p.send("t", b"lone %d" % i)
                    assert region.end_offset() == 2 + i, f"lone send #{i} was held back"
                n = 3000
                for i in range(n):
                    p.send("t", b"stream %d" % i)
                p.flush()
            finally:
                region.hdr.data_hungry = 0
            assert producer_module.HUNGRY_BURST < 100
            # one frame per lone message and at most the rest of the tokens;
            # the stream itself goes out in batches (a few hundred frames at
            # most even on a slow host, not one per message)
            nframes = len(frames(region))
            assert nframes < 11 + producer_module.HUNGRY_BURST + n // 4, nframes
        with cluster.consumer("t", auto_offset_reset="earliest") as c:
            got = []
            while len(got) < 11 + n:
                batch = c.consume_batch(10_000, timeout=5)
                assert batch is not None
                got += batch.values
        assert got == [b"first"] + [b"lone %d" % i for i in range(10)] + [b"stream %d" % i for i in range(n)]


@pytest.mark.parametrize("form", ["bare", "headers", "keyed"])
def test_a_stream_that_stops_without_flush_is_committed_by_the_flusher_at_once(data_dir, form):
    """linger_ms=0 and no reader waiting: a stream's last batches stay queued
    when send() returns, and only the flusher thread commits them. It is
    woken for each new batch (a wake-up skipped while one is pending must
    never be one too few): the tail is readable within milliseconds, not at
    the flusher's half-second timeout."""
    n = 2000
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=16, storage="memory", chunk_bytes=65536, chunk_count=8)
        with cluster.consumer("t", group_id="g", auto_offset_reset="earliest") as consumer, \
                cluster.producer(linger_ms=0) as producer:
            consumer.consume(timeout=0)  # assigned; it does not wait while the stream runs
            for rnd in range(3):
                for i in range(n):
                    v = b"%d-%06d" % (rnd, i)
                    if form == "bare":
                        producer.send("t", v)
                    elif form == "headers":
                        producer.send("t", v, headers=[("h", b"1")])
                    else:
                        producer.send("t", v, key=v)
                t0 = time.monotonic()
                got = 0
                while got < n and time.monotonic() - t0 < 5:
                    got += len(consumer.consume(max_messages=n, timeout=0.01))
                took = time.monotonic() - t0
                assert got == n
                assert took < 0.3, f"round {rnd}: the stream's tail took {took:.3f} s to be committed"
