"""The rich queue's fast path (client/rich_queue.py): records read into the
C core's record array by shmlog.core._messages.rich_columns, appended in
one crossing, and their on_delivery called from C with a RecordMetadata
built there (and refilled when no callback kept it). What must hold: every
header list arrives byte for byte, every timestamp as sent (None: the
commit's time; out of range refused at send()), each callback exactly once
in send order per partition with the offset the record got, errors reach
the callbacks, and mixed forms on one partition keep their order.
"""

from __future__ import annotations

import time

import pytest
from _broker_helpers import ROOMY, SMALL, by_partition, collect, running_cluster

import shmlog
from shmlog.core.codec import decode_headers, encode_headers

TOPIC = "rq"
MEM256 = {"storage": "memory", "chunk_bytes": 65536, "chunk_count": 4}

HEADER_LISTS = [
    [("trace", b"00-4bf92f35-01")],
    [],                                             # an empty list: no headers
    [("empty", b""), ("none", None)],               # empty and null values
    [("dup", b"1"), ("dup", b"2"), ("dup", b"1")],  # repeated names, in order
    [("", b"nameless")],                            # an empty name
    [("trâce-ü", b"x"), ("名前", "ß".encode()), ("emoji-😀", b"\x00\xff")],  # non-ASCII names
    [(f"h{i}", bytes([i]) * i) for i in range(70)],  # long: the general encoder
]


def _read_all(cluster, want, topic=TOPIC):
    with cluster.consumer(topic, auto_offset_reset="earliest") as consumer:
        return collect(consumer, want, timeout=30)


@pytest.mark.parametrize("partitions", [4, 256])
def test_headers_arrive_byte_identical(data_dir, partitions):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=partitions, **(MEM256 if partitions == 256 else ROOMY))
        n = 700
        with cluster.producer() as producer:
            for i in range(n):
                # each list twice in a row (the second send reuses the first's
                # encoded section), some with a key, some to a partition
                hdrs = HEADER_LISTS[(i // 2) % len(HEADER_LISTS)]
                if i % 3 == 0:
                    producer.send(TOPIC, b"%d" % i, headers=hdrs)
                elif i % 3 == 1:
                    producer.send(TOPIC, b"%d" % i, key=b"k%d" % i, headers=hdrs)
                else:
                    producer.send(TOPIC, b"%d" % i, partition=i % partitions, headers=list(hdrs))
        got = _read_all(cluster, n)
    assert len(got) == n
    for m in got:
        i = int(m.value)
        want = HEADER_LISTS[(i // 2) % len(HEADER_LISTS)]
        assert list(m.headers) == want
        # byte for byte: the section the consumer got encodes back to what was sent
        assert encode_headers(m.headers) == encode_headers(want)
        assert decode_headers(encode_headers(want)) == want


def test_timestamps_explicit_now_and_out_of_range(data_dir):
    top = (1 << 63) - 1
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        with cluster.producer() as producer:
            before = time.time_ns() // 1_000_000
            stamps = [1_700_000_000_000, 0, None, 1, top, 1_600_000_000_000, None, 5]
            for i, ts in enumerate(stamps):
                if i % 2:
                    producer.send(TOPIC, b"%d" % i, timestamp_ms=ts)
                else:  # the same with a callback: its metadata carries the timestamp too
                    producer.send(TOPIC, b"%d" % i, timestamp_ms=ts, on_delivery=lambda e, md: None)
            for bad in (-1, -5, 1 << 63, 1 << 80, -(1 << 70)):
                with pytest.raises(ValueError, match="timestamp_ms must be between 0 and"):
                    producer.send(TOPIC, b"bad", timestamp_ms=bad)
            for bad in (1.5, "1", True):
                with pytest.raises(TypeError, match="timestamp_ms"):
                    producer.send(TOPIC, b"bad", timestamp_ms=bad)
            producer.flush()
            after = time.time_ns() // 1_000_000
        got = _read_all(cluster, len(stamps))
    assert [m.value for m in got] == [b"%d" % i for i in range(len(stamps))]  # nothing bad queued
    for m, ts in zip(got, stamps):
        if ts is None:
            assert before <= m.timestamp_ms <= after
        else:
            assert m.timestamp_ms == ts


@pytest.mark.parametrize("partitions", [4, 256])
def test_on_delivery_once_per_message_in_order_with_its_offset(data_dir, partitions):
    calls = []
    kept = []

    def cb(err, md):
        assert err is None
        calls.append((md.partition, md.offset, md.timestamp))

    def keep(err, md):  # keeps every metadata object: none may change afterwards
        assert err is None
        kept.append(md)

    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=partitions, **(MEM256 if partitions == 256 else ROOMY))
        n = 4000
        sent = []  # the callback each message got, by index
        with cluster.producer() as producer:
            for i in range(n):
                v = b"%d" % i
                which = keep if i % 7 == 0 else cb
                if i % 4 == 0:
                    producer.send(TOPIC, v, on_delivery=which)
                elif i % 4 == 1:
                    producer.send(TOPIC, v, key=b"user-%d" % i, on_delivery=which)
                elif i % 4 == 2:
                    producer.send(TOPIC, v, timestamp_ms=1_650_000_000_000 + i, on_delivery=which)
                else:
                    producer.send(TOPIC, v, headers=[("i", v)], on_delivery=which)
                sent.append(which)
        got = _read_all(cluster, n)
    assert len(got) == n
    # every message's callback ran exactly once: match them up by (partition, offset)
    by_off = {(m.partition, m.offset): m for m in got}
    assert len(calls) + len(kept) == n
    seen = set()
    for p, off, ts in calls:
        m = by_off[p, off]
        assert sent[int(m.value)] is cb and m.timestamp_ms == ts
        seen.add((p, off))
    for md in kept:
        assert isinstance(md, shmlog.RecordMetadata) and md.topic == TOPIC
        m = by_off[md.partition, md.offset]
        assert sent[int(m.value)] is keep and m.timestamp_ms == md.timestamp
        assert md._asdict() == {"topic": TOPIC, "partition": md.partition, "offset": md.offset,
                                "timestamp": md.timestamp}
        seen.add((md.partition, md.offset))
    assert len(seen) == n
    # per partition, callbacks came in send order, offsets dense
    order = [(p, off) for p, off, _ in calls]
    for p, msgs in by_partition(got).items():
        offs = [o for q, o in order if q == p]
        assert offs == sorted(offs)
        vals = [int(m.value) for m in msgs]
        assert vals == sorted(vals), "a partition's records left send order"
        assert [m.offset for m in msgs] == list(range(msgs[0].offset, msgs[0].offset + len(msgs)))


def test_a_raising_callback_does_not_cost_the_others_their_call(data_dir):
    calls = []

    def cb(err, md):
        calls.append(md.offset)
        if md.offset % 10 == 3:
            raise RuntimeError(f"callback failed at {md.offset}")

    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        with cluster.producer(linger_ms=60_000) as producer:
            for i in range(30):
                producer.send(TOPIC, b"%d" % i, on_delivery=cb)
            with pytest.raises(RuntimeError, match="at 3$"):  # the first one's
                producer.flush()
            assert calls == list(range(30))
            producer.flush()  # nothing left, nothing called twice
            assert calls == list(range(30))
        assert [m.offset for m in _read_all(cluster, 30)] == list(range(30))


def test_callback_that_sends_and_flushes_delivers_each_once(data_dir):
    """A callback runs in the committing thread: its own send() and flush()
    find the committed records gone from the queue, not queued twice."""
    calls = []
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        with cluster.producer(linger_ms=60_000) as producer:
            def cb(err, md):
                calls.append(md.offset)
                if md.offset < 20:
                    producer.send(TOPIC, b"echo", on_delivery=cb)
                    producer.flush()

            for i in range(20):
                producer.send(TOPIC, b"%d" % i, on_delivery=cb)
            producer.flush()
        got = _read_all(cluster, 40)
    assert sorted(calls) == list(range(40)) and len(calls) == 40
    assert [m.offset for m in got] == list(range(40))
    assert sum(m.value == b"echo" for m in got) == 20


def test_a_commit_inside_a_callback_does_not_disturb_the_rest_of_its_commit(data_dir):
    """The commit's partition and offset columns are kept and reused across
    commits; a callback's own commit of several records (made while the
    outer commit's callbacks are still being called from those columns)
    must not write over the entries the outer commit has yet to deliver."""
    calls = []
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, **ROOMY)
        with cluster.producer(linger_ms=60_000) as producer:
            def inner(err, md):
                calls.append(("inner", md.partition, md.offset))

            def outer(err, md):
                calls.append(("outer", md.partition, md.offset))
                if len(calls) == 1:
                    for i in range(6):
                        producer.send(TOPIC, b"in%d" % i, partition=1 - md.partition, on_delivery=inner)
                    producer.flush()

            for i in range(20):
                producer.send(TOPIC, b"out%d" % i, partition=0, on_delivery=outer)
            producer.flush()
        got = _read_all(cluster, 26)
    place = {(m.partition, m.offset): m.value for m in got}
    outer_calls = [(p, o) for who, p, o in calls if who == "outer"]
    inner_calls = [(p, o) for who, p, o in calls if who == "inner"]
    assert outer_calls == [(0, i) for i in range(20)]
    assert inner_calls == [(1, i) for i in range(6)]
    assert [place[po] for po in outer_calls] == [b"out%d" % i for i in range(20)]
    assert [place[po] for po in inner_calls] == [b"in%d" % i for i in range(6)]


def test_buffer_full_reaches_every_callback_of_the_batch(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("bp", partitions=1, **SMALL)
        consumer = cluster.consumer("bp")  # never reads: the buffer fills
        producer = cluster.producer(max_block_ms=200, linger_ms=60_000)
        try:
            reports = []
            value = b"." * 200
            with pytest.raises(shmlog.BufferFull):
                for i in range(100_000):
                    producer.send("bp", value, headers=[("i", b"%d" % i)],
                                  on_delivery=lambda e, md, i=i: reports.append((i, e, md)))
                    if i % 50 == 49:
                        producer.flush()
            assert sorted(i for i, _, _ in reports) == list(range(len(reports)))  # each once
            failed = [(i, e) for i, e, md in reports if e is not None]
            ok = [md for _, e, md in reports if e is None]
            assert failed and all(isinstance(e, shmlog.BufferFull) for _, e in failed)
            assert all(md is None for _, e, md in reports if e is not None)
            assert [md.offset for md in ok] == list(range(len(ok)))
            # the failed batch was not half committed
            msgs = collect(consumer, len(ok), timeout=10)
            assert len(msgs) == len(ok) and consumer.consume(timeout=0.2) == []
        finally:
            consumer.close()
            try:
                producer.close()
            except shmlog.ShmlogError:
                pass


def test_mixed_forms_on_one_partition_keep_send_order(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        n = 3000
        delivered = []
        with cluster.producer() as producer:
            for i in range(n):
                v = b"%d" % i
                form = (i * 7 + i // 13) % 8  # runs of one form and single switches
                if form == 0:
                    producer.send(TOPIC, v)
                elif form == 1:
                    producer.send(TOPIC, v, partition=0)
                elif form == 2:
                    producer.send(TOPIC, v, key=b"k%d" % i)
                elif form == 3:
                    producer.send(TOPIC, v, headers=[("f", b"3")])
                elif form == 4:
                    producer.send(TOPIC, v, timestamp_ms=1_000 + i)
                elif form == 5:
                    producer.send(TOPIC, v, on_delivery=lambda e, md, i=i: delivered.append((i, md.offset)))
                elif form == 6:
                    producer.send(TOPIC, v, key=b"k", partition=0, headers=[("f", b"6")], timestamp_ms=2_000 + i)
                else:
                    producer.send_batch(TOPIC, [v])
        got = _read_all(cluster, n)
    assert [int(m.value) for m in got] == list(range(n))
    assert [m.offset for m in got] == list(range(n))
    assert all(got[i].offset == off for i, off in delivered)
