"""Consumer API: poll / consume / iteration / consume_batch, positions and
seeks, delivery reports, record fields, lz4, linger_ms, values that never
change after their chunk is reused, and an idle consumer that sleeps yet
wakes at once.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import psutil
import pytest
from _broker_helpers import FORK, ROOMY, SMALL, Children, by_partition, collect, running_cluster

import shmlog


def _produce(cluster, topic, values, **kw):
    with cluster.producer() as producer:
        producer.send_batch(topic, values, **kw)


# ---------------------------------------------------------------- reading
def test_poll_consume_and_iteration(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        _produce(cluster, "t", [b"m%d" % i for i in range(30)], partition=0)
        with cluster.consumer("t") as consumer:
            m = consumer.poll(timeout=5)
            assert isinstance(m, shmlog.Message)
            assert (m.topic, m.partition, m.offset, m.value) == ("t", 0, 0, b"m0")
            msgs = consumer.consume(max_messages=10, timeout=5)
            assert [x.offset for x in msgs] == list(range(1, 11))
            seen = []
            for x in consumer:
                seen.append(x)
                if len(seen) == 19:
                    break
            assert [x.value for x in seen] == [b"m%d" % i for i in range(11, 30)]
            t0 = time.monotonic()
            assert consumer.poll(timeout=0.3) is None
            assert consumer.consume(timeout=0.1) == []
            assert 0.35 <= time.monotonic() - t0 < 2.0
            assert consumer.position("t", 0) == 30


def test_consume_batch_columns(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=2, **ROOMY)
        with cluster.producer() as producer:
            for i in range(100):
                producer.send("t", b"v%d" % i, key=b"k%d" % i if i % 2 else None, partition=0,
                              timestamp_ms=1_000_000 + i, headers=[("i", b"%d" % i)] if i % 3 == 0 else None)
            producer.send_batch("t", [b"other"] * 5, partition=1)
        with cluster.consumer("t") as consumer:
            batches = []
            deadline = time.monotonic() + 10
            while sum(len(b) for b in batches) < 105 and time.monotonic() < deadline:
                b = consumer.consume_batch(max_messages=1000, timeout=0.5)
                if b is not None:
                    batches.append(b)
        assert sum(len(b) for b in batches) == 105
        for b in batches:
            assert isinstance(b, shmlog.MessageBatch)
            assert len({m.partition for m in b}) == 1  # one partition's run
            assert len(b.values) == len(b.keys) == len(b.timestamps_ms) == len(b)
        p0 = [b for b in batches if b.partition == 0]
        assert p0[0].base_offset == 0
        for prev, nxt in zip(p0, p0[1:]):
            assert nxt.base_offset == prev.base_offset + len(prev)  # contiguous runs
        values = [v for b in p0 for v in b.values]
        keys = [k for b in p0 for k in b.keys]
        stamps = [t for b in p0 for t in b.timestamps_ms]
        assert values == [b"v%d" % i for i in range(100)]
        assert keys == [b"k%d" % i if i % 2 else None for i in range(100)]
        assert stamps == [1_000_000 + i for i in range(100)]
        msgs = [m for b in p0 for m in b]
        assert all(isinstance(m, shmlog.Message) and m.topic == "t" for m in msgs)
        assert [m.offset for m in msgs] == list(range(100))
        assert [m.value for m in msgs] == values and [m.key for m in msgs] == keys
        assert [m.timestamp_ms for m in msgs] == stamps
        assert [list(m.headers) for m in msgs] == [[("i", b"%d" % i)] if i % 3 == 0 else [] for i in range(100)]
        assert [b.values for b in batches if b.partition == 1] == [[b"other"] * 5]
        assert batches[0].topic == "t"


def test_positions_seek_and_assignment(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=2, **SMALL)
        for p in (0, 1):
            _produce(cluster, "t", [b"p%d-%d" % (p, i) for i in range(50)], partition=p)
        with cluster.consumer("t") as consumer:
            assert consumer.assignment() == [("t", 0), ("t", 1)]
            assert consumer.position("t", 0) == 0 and consumer.position("t", 1) == 0
            got = collect(consumer, 100, timeout=10)
            assert {p: len(ms) for p, ms in by_partition(got).items()} == {0: 50, 1: 50}
            assert consumer.position("t", 0) == 50 and consumer.position("t", 1) == 50

            consumer.seek("t", 0, 40)
            assert consumer.position("t", 0) == 40
            again = collect(consumer, 10, timeout=5)
            assert [(m.partition, m.offset) for m in again] == [(0, o) for o in range(40, 50)]

            consumer.seek_to_beginning()
            assert consumer.position("t", 0) == 0 and consumer.position("t", 1) == 0
            assert len(collect(consumer, 100, timeout=10)) == 100
            consumer.seek_to_beginning([("t", 1)])
            assert [m.offset for m in collect(consumer, 50, timeout=5)] == list(range(50))

            consumer.seek("t", 1, 5)
            consumer.seek_to_end()
            assert consumer.position("t", 0) == 50 and consumer.position("t", 1) == 50
            assert consumer.consume(timeout=0.2) == []
            _produce(cluster, "t", [b"new"], partition=1)
            m = collect(consumer, 1, timeout=5)[0]
            assert (m.partition, m.offset, m.value) == (1, 50, b"new")

            with pytest.raises(shmlog.UnknownPartition):
                consumer.seek("t", 7, 0)
            with pytest.raises(shmlog.UnknownPartition):
                consumer.position("t", 7)
            consumer.assign([("t", 1)])
            assert consumer.assignment() == [("t", 1)]
            with pytest.raises(shmlog.UnknownPartition):
                consumer.position("t", 0)
            with pytest.raises(shmlog.UnknownPartition):
                consumer.assign([("t", 2)])
            with pytest.raises(shmlog.UnknownTopic):
                consumer.assign([("nope", 0)])
            with pytest.raises(shmlog.GroupError):
                consumer.commit()  # no group, nothing to commit to


def test_auto_offset_reset_latest_and_bad_settings(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        _produce(cluster, "t", [b"old"] * 10, partition=0)
        with cluster.consumer("t", auto_offset_reset="latest") as consumer:
            assert consumer.position("t", 0) == 10
            assert consumer.consume(timeout=0.2) == []
            _produce(cluster, "t", [b"new"], partition=0)
            assert [m.value for m in collect(consumer, 1, timeout=5)] == [b"new"]
        with pytest.raises(shmlog.InvalidConfig, match="auto_offset_reset"):
            cluster.consumer("t", auto_offset_reset="sometime")
        with pytest.raises(shmlog.InvalidConfig, match="isolation"):
            cluster.consumer("t", isolation="dirty")


def test_several_topics(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("a", **SMALL)
        cluster.create_topic("b", partitions=2, **SMALL)
        _produce(cluster, "a", [b"a"] * 3, partition=0)
        _produce(cluster, "b", [b"b"] * 4, partition=1)
        with cluster.consumer(["a", "b"]) as consumer:
            assert consumer.assignment() == [("a", 0), ("b", 0), ("b", 1)]
            got = collect(consumer, 7, timeout=5)
        assert sorted((m.topic, m.partition) for m in got) == [("a", 0)] * 3 + [("b", 1)] * 4


# ---------------------------------------------------------------- records
def test_delivery_reports_match_consumed_offsets(data_dir):
    reports = {}

    def on_delivery(err, md):
        assert err is None
        reports[md] = md

    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=3, **ROOMY)
        with cluster.producer() as producer:
            for i in range(300):
                producer.send("t", b"v%d" % i, key=b"k%d" % (i % 17),
                              on_delivery=lambda e, md, i=i: reports.__setitem__(i, (e, md)))
            producer.flush()
            assert len(reports) == 300  # all reported by the time flush returns
        with cluster.consumer("t") as consumer:
            msgs = collect(consumer, 300, timeout=10)
    for m in msgs:
        err, md = reports[int(m.value[1:])]
        assert err is None and isinstance(md, shmlog.RecordMetadata)
        assert (md.topic, md.partition, md.offset) == ("t", m.partition, m.offset)
        assert md.timestamp == m.timestamp_ms


def test_headers_keys_values_timestamps_round_trip(data_dir):
    headers = [("trace", b"abc"), ("empty", b""), ("null", None), ("caf\u00e9", b"\x00\xff" * 100), ("trace", b"dup")]
    now_ms = time.time_ns() // 1_000_000
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with cluster.producer() as producer:
            producer.send("t", b"with-headers", key=b"k", headers=headers, partition=0)
            producer.send("t", b"", key=b"", partition=0)  # empty, not null
            producer.send("t", None, key=b"tombstone", partition=0)  # null value
            producer.send("t", bytearray(b"ba"), key=memoryview(b"mv"), partition=0)
            producer.send("t", b"ts", partition=0, timestamp_ms=1_234_567_890_123)
            producer.send("t", b"\x00" * 3000, partition=0)
        with cluster.consumer("t") as consumer:
            m = collect(consumer, 6, timeout=5)
    assert list(m[0].headers) == headers and m[0].key == b"k"
    assert (m[1].key, m[1].value) == (b"", b"")
    assert (m[2].key, m[2].value) == (b"tombstone", None)
    assert (m[3].key, m[3].value) == (b"mv", b"ba")
    assert m[4].timestamp_ms == 1_234_567_890_123
    assert m[5].value == b"\x00" * 3000 and m[5].key is None and list(m[5].headers) == []
    for x in (m[0], m[1], m[2], m[3], m[5]):
        assert abs(x.timestamp_ms - now_ms) < 60_000


def test_offsets_for_times(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        _produce(cluster, "t", [b"x%d" % i for i in range(10)], partition=0,
                 timestamps=[1000 * (i + 1) for i in range(10)])
        with cluster.consumer("t") as consumer:
            assert consumer.offsets_for_times("t", {0: 2500}) == {0: 2}
            assert consumer.offsets_for_times("t", {0: 0}) == {0: 0}
            assert consumer.offsets_for_times("t", {0: 10_000}) == {0: 9}
            assert consumer.offsets_for_times("t", {0: 10_001}) == {0: None}


def test_zero_copy_batch_of_lz4_frames_is_a_correct_copy(data_dir):
    """An lz4 frame cannot be viewed in place: consume_batch(copy=False)
    hands out a view over a decoded copy, values, keys and nulls intact."""
    values = [b"v%d" % i * (i + 1) for i in range(30)] + [None, b""]
    keys = [b"k%d" % i if i % 3 else None for i in range(32)]
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with cluster.producer(compression="lz4") as lz:
            lz.send_batch("t", values, keys=keys, partition=0)
        with cluster.consumer("t") as consumer:
            got_v, got_k, offsets = [], [], []
            while len(offsets) < 32:
                view = consumer.consume_batch(max_messages=100, timeout=5, copy=False)
                assert view is not None
                with view:
                    got_v += view.values
                    got_k += [view.key(i) for i in range(len(view))]
                    offsets += list(view.offsets)
            assert offsets == list(range(32))
            assert got_v == values and got_k == keys


def test_lz4_round_trip(data_dir):
    rnd = [os.urandom(n) for n in (0, 1, 100, 3000)]
    compressible = [b"abc" * 1000, b"\x00" * 3900]
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with cluster.producer(compression="lz4") as lz, cluster.producer() as plain:
            lz.send_batch("t", rnd + compressible, partition=0)
            plain.send("t", b"plain", partition=0)
            plain.flush()
            for i in range(50):
                lz.send("t", b"lz-%d" % i, key=b"k%d" % i, headers=[("h", b"%d" % i)], partition=0)
            lz.flush()
            info = cluster.describe_topic("t").partitions[0]
        with cluster.consumer("t") as consumer:
            msgs = collect(consumer, 57, timeout=10)
            assert consumer.consume(timeout=0.2) == []
            consumer.seek_to_beginning()
            batch_values = []
            while len(batch_values) < 57:
                b = consumer.consume_batch(timeout=5)
                assert b is not None
                batch_values += b.values
    values = [m.value for m in msgs]
    assert values == rnd + compressible + [b"plain"] + [b"lz-%d" % i for i in range(50)]
    assert batch_values == values
    assert [m.offset for m in msgs] == list(range(57))
    assert [m.key for m in msgs[7:]] == [b"k%d" % i for i in range(50)]
    assert [list(m.headers) for m in msgs[7:]] == [[("h", b"%d" % i)] for i in range(50)]
    assert info.bytes > 0


def test_linger_ms_batches_and_flush_sends_now(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with cluster.consumer("t") as consumer, cluster.producer(linger_ms=400) as producer:
            t0 = time.monotonic()
            for i in range(5):
                producer.send("t", b"l%d" % i, partition=0)
            assert consumer.poll(timeout=0.1) is None  # lingering, not sent yet
            batch = consumer.consume_batch(timeout=5)
            waited = time.monotonic() - t0
            assert 0.3 <= waited < 2.0, waited
            assert batch.values == [b"l%d" % i for i in range(5)]  # one batch
            producer.send("t", b"now", partition=0)
            producer.flush()
            t1 = time.monotonic()
            assert consumer.poll(timeout=5).value == b"now"
            assert time.monotonic() - t1 < 0.2
        with cluster.consumer("t", auto_offset_reset="latest") as consumer, cluster.producer() as eager:
            t0 = time.monotonic()
            eager.send("t", b"eager", partition=0)  # linger_ms=0: no flush needed
            assert consumer.poll(timeout=5).value == b"eager"
            assert time.monotonic() - t0 < 0.3


# ---------------------------------------------------------------- value lifetime
def test_values_never_change_after_their_chunk_is_reused(data_dir):
    """Hold values from the first chunk, push many chunks of other data
    through the 4 x 64 KiB ring (advancing the only reader, so chunks are
    reused), then compare the held values byte for byte."""
    early = [b"early-%04d-" % i + bytes([i % 251]) * 500 for i in range(60)]
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with cluster.consumer("t") as consumer, cluster.producer() as producer:
            producer.send_batch("t", early[:30], partition=0)
            producer.send_batch("t", early[30:], partition=0)
            held_msgs = collect(consumer, 30, timeout=5)
            held_batch = consumer.consume_batch(max_messages=30, timeout=5)
            assert held_batch is not None and len(held_batch) == 30
            held_views = [m.value for m in held_msgs] + list(held_batch.values)
            held_keys_batch = list(held_batch)
            junk = b"J" * 1000
            for _ in range(40):  # ~40 x 10 KiB: over six times the ring
                producer.send_batch("t", [junk] * 10, partition=0)
                n = 0
                while n < 10:
                    n += len(consumer.consume(max_messages=1000, timeout=5))
            p0 = cluster.describe_topic("t").partitions[0]
            assert p0.start_offset > 60, "the early chunk was never reused: the test proves nothing"
            assert p0.extra.get("rotations", 99) >= 5
    assert held_views == early
    assert [m.value for m in held_keys_batch] == early[30:]
    assert all(isinstance(v, bytes) for v in held_views)


def test_zero_copy_view_pins_its_chunk_until_released(data_dir):
    """consume_batch(copy=False): values stay in shared memory, so the chunk
    is pinned: a producer blocks (BufferFull) rather than reuse it, while a
    copying read moves on. After release() the view refuses access."""
    early = [b"pinned-%03d-" % i + bytes([65 + i % 26]) * 300 for i in range(20)]
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with cluster.consumer("t") as consumer, cluster.producer(max_block_ms=300) as producer:
            producer.send_batch("t", early, partition=0)
            view = consumer.consume_batch(max_messages=20, timeout=5, copy=False)
            assert view is not None and len(view) == 20 and view.base_offset == 0
            assert [view.value(i) for i in range(20)] == early
            with pytest.raises(shmlog.BufferFull):
                for _ in range(200):  # ~600 KiB into a 256 KiB ring
                    producer.send_batch("t", [b"J" * 1000] * 3, partition=0)
                    while consumer.consume(max_messages=1000, timeout=0):
                        pass  # the copying reads keep up; only the pin holds
            assert view.values == early  # never overwritten
            view.release()
            with pytest.raises(shmlog.Closed):
                view.value(0)
            for _ in range(100):  # the ring turns again
                producer.send_batch("t", [b"K" * 1000] * 3, partition=0)
                while consumer.consume(max_messages=1000, timeout=0):
                    pass
            assert cluster.describe_topic("t").partitions[0].start_offset > 20



def test_zero_copy_view_carries_keys_and_headers(data_dir):
    """A view addresses keys as values are (null keys: length -1) and
    carries every record's headers, () where a record has none; a run
    without any headers says so (has_headers False)."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with cluster.consumer("t") as consumer, cluster.producer() as producer:
            keys = [None if i % 3 == 0 else b"key-%d" % i for i in range(9)]
            headers = [[("i", b"%d" % i), ("none", None)] if i % 2 else [] for i in range(9)]
            producer.send_batch("t", [b"v%d" % i for i in range(9)], keys=keys, headers=headers, partition=0)
            producer.flush()
            view = consumer.consume_batch(max_messages=9, timeout=5, copy=False)
            assert view is not None and len(view) == 9 and view.has_headers
            assert [view.key(i) for i in range(9)] == keys
            assert [view.key_lengths[i] < 0 for i in range(9)] == [k is None for k in keys]
            assert [list(h) for h in view.headers] == [[("i", b"%d" % i), ("none", None)] if i % 2 else []
                                                       for i in range(9)]
            view.release()
            producer.send_batch("t", [b"plain"] * 3, partition=0)
            producer.flush()
            view = consumer.consume_batch(max_messages=9, timeout=5, copy=False)
            assert not view.has_headers and view.headers == [(), (), ()]
            view.release()
            with pytest.raises(shmlog.Closed):
                view.headers  # noqa: B018

# ---------------------------------------------------------------- waiting
def _idle_reader(data_dir, ready, n):
    with shmlog.connect(data_dir) as cluster, cluster.consumer("t") as consumer:
        assert consumer.poll(timeout=0.05) is None
        ready.set()
        arrivals = []
        deadline = time.monotonic() + 60
        while len(arrivals) < n and time.monotonic() < deadline:
            m = consumer.poll(timeout=5)
            if m is not None:
                arrivals.append((int(m.value), time.monotonic()))
        return arrivals


def test_idle_consumer_sleeps_and_wakes_at_once(data_dir, tmp_path):
    n = 7
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic("t", partitions=2, **SMALL)
        ready = FORK.Event()
        reader = kids.start(_idle_reader, data_dir, ready, n)
        assert ready.wait(10)
        time.sleep(0.3)
        proc = psutil.Process(reader.pid)
        c0 = proc.cpu_times()
        time.sleep(1.0)
        c1 = proc.cpu_times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        assert cpu < 0.3, f"an idle consumer burnt {cpu:.2f}s of CPU in 1s"

        sent = {}
        with cluster.producer() as producer:
            for i in range(n):
                time.sleep(0.15)
                sent[i] = time.monotonic()
                producer.send("t", b"%d" % i, partition=i % 2)
                producer.flush()
        arrivals = Children.result(reader, timeout=30)
    assert [i for i, _ in arrivals] == list(range(n))
    latency = [t - sent[i] for i, t in arrivals]
    assert statistics.median(latency) < 0.05, latency
    assert max(latency) < 0.25, latency


# ---------------------------------------------------------------- lazily settled positions
SIZES = {0: 5, 1: 7, 2: 9}


def _produce_per_partition(cluster, topic="t", sizes=SIZES, start=0):
    with cluster.producer() as producer:
        for p, n in sizes.items():
            producer.send_batch(topic, [b"%d:%d" % (p, start + i) for i in range(n)], partition=p)


def _positions(consumer, topic="t"):
    return {p: consumer.position(topic, p) for p in SIZES}


def test_positions_after_each_poll_of_a_buffered_fetch(data_dir):
    """poll() hands out one message of a buffered fetch at a time and settles
    positions lazily: position() is always just after the last message
    returned from that partition (its first still-buffered message)."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=3, **ROOMY)
        _produce_per_partition(cluster)
        total = sum(SIZES.values())
        with cluster.consumer("t") as consumer:
            nxt = {p: 0 for p in SIZES}
            assert _positions(consumer) == nxt
            for k in range(total):
                m = consumer.poll(timeout=5)
                assert m.offset == nxt[m.partition] and m.value == b"%d:%d" % (m.partition, m.offset)
                nxt[m.partition] = m.offset + 1
                if k == 0:
                    # the premise: one fetch buffered every partition
                    assert len(consumer._buffer) == total - 1
                assert _positions(consumer) == nxt, k
            assert nxt == SIZES
            assert consumer.poll(timeout=0.1) is None
            assert _positions(consumer) == SIZES
            # a second fetch, mixed with consume(): positions still exact
            _produce_per_partition(cluster, start=100)
            got = [consumer.poll(timeout=5) for _ in range(4)]
            got += consumer.consume(max_messages=6, timeout=5)
            assert len(got) == 10 and len(consumer._buffer) > 0
            for m in got:
                assert m.offset == nxt[m.partition]
                nxt[m.partition] = m.offset + 1
            assert _positions(consumer) == nxt


def test_seek_after_partial_polling(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=3, **ROOMY)
        _produce_per_partition(cluster)
        with cluster.consumer("t") as consumer:
            got = [consumer.poll(timeout=5) for _ in range(3)]
            p0 = got[0].partition
            assert [(m.partition, m.offset) for m in got] == [(p0, 0), (p0, 1), (p0, 2)]
            others = [p for p in SIZES if p != p0]
            p1, p2 = others
            assert len(consumer._buffer) == sum(SIZES.values()) - 3  # the rest is buffered
            consumer.seek("t", p0, 1)  # back: offsets 1 and 2 again
            consumer.seek("t", p1, 4)  # forward over buffered messages
            assert _positions(consumer) == {p0: 1, p1: 4, p2: 0}
            seen = {p: [] for p in SIZES}
            while (m := consumer.poll(timeout=0.5)) is not None:
                seen[m.partition].append(m.offset)
                assert m.value == b"%d:%d" % (m.partition, m.offset)
                assert consumer.position("t", m.partition) == m.offset + 1
            assert seen == {p0: list(range(1, SIZES[p0])), p1: list(range(4, SIZES[p1])),
                            p2: list(range(SIZES[p2]))}
            assert _positions(consumer) == SIZES


def _iterate_until(consumer, messages, seen, total):
    """Go on with one `for m in consumer` iteration (messages) until seen
    holds total messages, each checked."""
    if sum(map(len, seen.values())) >= total:
        return
    for m in messages:
        assert (m.topic, m.value, m.key, m.headers) == ("t", b"%d:%d" % (m.partition, m.offset), None, ())
        assert isinstance(m.timestamp_ms, int) and m.timestamp_ms > 0
        seen[m.partition].append(m.offset)
        assert consumer.position("t", m.partition) == m.offset + 1
        if sum(map(len, seen.values())) >= total:
            break


def test_seek_in_the_middle_of_iteration(data_dir):
    """A seek inside `for m in consumer` takes effect at the very next
    message: the iteration does not go on handing out what poll() had
    buffered for that partition (it did, from a deque seek had replaced)."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=3, **ROOMY)
        _produce_per_partition(cluster)
        with cluster.consumer("t") as consumer:
            got = []
            for m in consumer:
                got.append(m)
                if len(got) == 3:
                    break
            p0 = got[0].partition
            assert [(m.partition, m.offset) for m in got] == [(p0, 0), (p0, 1), (p0, 2)]
            p1, p2 = [p for p in SIZES if p != p0]
            assert len(consumer._buffer) == sum(SIZES.values()) - 3  # the rest is buffered
            seen = {p: [] for p in SIZES}
            messages = iter(consumer)  # a second iteration, with seeks inside it
            for m in messages:
                seen[m.partition].append(m.offset)
                if m.partition == p0 and m.offset == 3:
                    consumer.seek("t", p0, 1)  # back: offsets 1.. again
                    consumer.seek("t", p1, 4)  # forward over buffered messages
                    consumer.seek_to_end([("t", p2)])
                    assert _positions(consumer) == {p0: 1, p1: 4, p2: SIZES[p2]}
                    break
            _iterate_until(consumer, messages, seen, 1 + (SIZES[p0] - 1) + (SIZES[p1] - 4))
            assert seen == {p0: [3] + list(range(1, SIZES[p0])), p1: list(range(4, SIZES[p1])), p2: []}
            assert _positions(consumer) == SIZES


@pytest.mark.parametrize("how", ["commit", "close-auto-commit"])
def test_group_commits_exactly_what_poll_returned(data_dir, how):
    """After polling k messages of a buffered fetch, commit() (or close()
    with auto-commit) commits the positions of what was returned: the next
    member resumes right after the last message polled from each partition,
    skipping nothing and repeating nothing."""
    total = sum(SIZES.values())
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=3, **ROOMY)
        _produce_per_partition(cluster)
        first = cluster.consumer("t", group="g", enable_auto_commit=how != "commit")
        got = [first.poll(timeout=10)]
        got += [first.poll(timeout=5) for _ in range(7)]
        assert None not in got and len(first._buffer) > 0
        assert sorted(first.assignment()) == [("t", p) for p in SIZES]
        nxt = {p: 0 for p in SIZES}
        for m in got:
            assert m.offset == nxt[m.partition]
            nxt[m.partition] = m.offset + 1
        if how == "commit":
            first.commit()
            assert first.committed() == {("t", p): nxt[p] for p in SIZES}
        first.close()
        with cluster.consumer("t", group="g") as second:
            rest = collect(second, total - len(got), timeout=10)
            assert second.consume(timeout=0.3) == []
        for p in SIZES:
            assert [m.offset for m in rest if m.partition == p] == list(range(nxt[p], SIZES[p])), p


def test_one_partition_poll_publishes_what_it_read_and_settles_what_it_returned(data_dir):
    """A single shared-memory partition is read (and waited on) in one
    crossing that also publishes the reader slot's position: the slot holds
    what was read, position() what was returned."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)
        _produce(cluster, "t", [b"m%d" % i for i in range(10)], partition=0)
        with cluster.consumer("t") as consumer, cluster.producer() as producer:
            a = consumer.assigned_state[("t", 0)]
            slot = a.plog.hdr.readers[a.slot]
            for k in range(10):
                m = consumer.poll(timeout=5)
                assert (m.offset, m.value) == (k, b"m%d" % k)
                assert consumer.position("t", 0) == k + 1
                assert slot.position == 10  # the whole read, buffered
            assert consumer.poll(timeout=0.05) is None
            # committed while poll() waits: the same crossing wakes and reads it
            timer = threading.Timer(0.1, producer.send_batch, ("t", [b"late", b"later"]),
                                    {"partition": 0})
            timer.start()
            try:
                m = consumer.poll(timeout=5)
            finally:
                timer.join()
            assert (m.offset, m.value) == (10, b"late")
            assert consumer.position("t", 0) == 11 and slot.position == 12
            assert consumer.poll(timeout=5).value == b"later"
            assert consumer.position("t", 0) == 12


def test_caught_up_poll_hands_out_lone_messages_and_waits_its_whole_timeout(data_dir):
    """poll() of one shared-memory partition with no group reads in one
    crossing and hands a lone message out unbuffered: position() counts it at
    once. With nothing to read it waits the whole timeout, also past the 1 s
    a single wait in C is capped at."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)
        with cluster.consumer("t") as consumer, cluster.producer() as producer:
            for k in range(5):
                # every field of the lone message as C hands it over (a
                # value, an offset and a timestamp, no pickle)
                producer.send("t", b"lone %d" % k, timestamp_ms=1_700_000_000_000 + k)
                producer.flush()
                m = consumer.poll(timeout=5)
                assert m == shmlog.Message("t", 0, k, None, b"lone %d" % k, (), 1_700_000_000_000 + k)
                assert type(m.value) is bytes
                assert consumer.position("t", 0) == k + 1
                assert not consumer._buffer
            for timeout in (0.3, 1.4):
                t0 = time.monotonic()
                assert consumer.poll(timeout=timeout) is None
                assert timeout <= time.monotonic() - t0 < timeout + 1.0
            assert consumer.position("t", 0) == 5
