"""The rich forms of send() (headers, timestamp_ms, on_delivery, and a key
with or without an explicit partition) through the rich queue: one commit
per queue, keys hashed and headers gathered in C (csrc/keyed.c
shmlog_rich_append). What must hold: Kafka's placement, each record's own
headers and timestamp, callbacks with the offset and partition the record
got, and send order per partition.
"""

from __future__ import annotations

import pytest
from _broker_helpers import ROOMY, by_partition, collect, kafka_partition, running_cluster

import shmlog

TOPIC = "rich"


def _read_all(cluster, want):
    with cluster.consumer(TOPIC, auto_offset_reset="earliest") as consumer:
        return collect(consumer, want, timeout=30)


@pytest.mark.parametrize("partitions", [4, 256])
def test_rich_forms_carry_headers_timestamps_and_callbacks(data_dir, partitions):
    topic = {"storage": "memory", "chunk_bytes": 65536, "chunk_count": 4} if partitions == 256 else ROOMY
    delivered = {}

    def cb(err, md):
        assert err is None
        delivered[md.offset, md.partition] = md

    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=partitions, **topic)
        n = 3000
        static = [("trace", b"abc"), ("empty", None)]
        with cluster.producer() as producer:
            for i in range(n):
                key = b"event-%d" % i  # never repeats
                form = i % 4
                if form == 0:    # the same header list every time: its section is reused
                    producer.send(TOPIC, b"v%d" % i, key=key, headers=static, on_delivery=cb)
                elif form == 1:  # headers that differ per message
                    producer.send(TOPIC, b"v%d" % i, key=key, headers=[("i", b"%d" % i)],
                                  timestamp_ms=1_600_000_000_000 + i, on_delivery=cb)
                elif form == 2:  # explicit partition with a key: the key is kept, not hashed
                    producer.send(TOPIC, b"v%d" % i, key=key, partition=i % partitions,
                                  timestamp_ms=1_600_000_000_000 + i, on_delivery=cb)
                else:
                    producer.send(TOPIC, b"v%d" % i, key=key, timestamp_ms=1_600_000_000_000 + i)
        got = _read_all(cluster, n)
    assert len(got) == n
    for m in got:
        i = int(m.value[1:])
        assert m.key == b"event-%d" % i
        form = i % 4
        want_p = i % partitions if form == 2 else kafka_partition(m.key, partitions)
        assert m.partition == want_p
        if form == 0:
            assert m.headers == [("trace", b"abc"), ("empty", None)]
        elif form == 1:
            assert m.headers == [("i", b"%d" % i)]
        else:
            assert not m.headers
        if form != 0:
            assert m.timestamp_ms == 1_600_000_000_000 + i
        if form != 3:
            md = delivered.pop((m.offset, m.partition))
            assert md.topic == TOPIC
            assert md.timestamp == (m.timestamp_ms if form != 0 else md.timestamp)
    assert not delivered, "a callback named an offset nobody read"
    for msgs in by_partition(got).values():
        seq = [int(m.value[1:]) for m in msgs]
        assert seq == sorted(seq), "a partition's records left send order"


def test_reused_header_list_mutated_between_sends(data_dir):
    """The rich queue reuses the last encoded header section for an equal
    list: a list the caller changes between sends must still give each
    message the headers it had when it was sent."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        hdrs = [("seq", b"0")]
        with cluster.producer() as producer:
            for i in range(200):
                hdrs[0] = ("seq", b"%d" % i)
                producer.send(TOPIC, b"%d" % i, headers=hdrs)
                if i % 3 == 0:
                    hdrs.append(("extra", b"x"))
                    producer.send(TOPIC, b"x%d" % i, headers=hdrs)
                    hdrs.pop()
        got = _read_all(cluster, 200 + 67)
    for m in got:
        if m.value.startswith(b"x"):
            assert m.headers == [("seq", m.value[1:]), ("extra", b"x")]
        else:
            assert m.headers == [("seq", m.value)]


def test_bad_rich_send_raises_at_send_and_spares_the_batch(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, **ROOMY)
        with cluster.producer() as producer:
            producer.send(TOPIC, b"a", headers=[("h", b"1")])
            with pytest.raises(TypeError, match="header value"):
                producer.send(TOPIC, b"b", headers=[("h", "not bytes")])
            with pytest.raises(ValueError, match="timestamp_ms must be between 0 and"):
                producer.send(TOPIC, b"b", headers=[("h", b"1")], timestamp_ms=-5)
            with pytest.raises(TypeError, match="key"):
                producer.send(TOPIC, b"b", key="str key", on_delivery=print)
            with pytest.raises(shmlog.UnknownPartition):
                producer.send(TOPIC, b"b", headers=[("h", b"1")], partition=2)
            producer.send(TOPIC, b"c", timestamp_ms=5, on_delivery=lambda e, md: None)
        got = _read_all(cluster, 2)
    assert sorted(m.value for m in got) == [b"a", b"c"]


def test_callbacks_fail_when_the_topic_is_deleted(data_dir):
    errs = []
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, **ROOMY)
        producer = cluster.producer(linger_ms=60_000)
        try:
            producer.send(TOPIC, b"first")
            producer.flush()
            for i in range(5):
                producer.send(TOPIC, b"%d" % i, headers=[("h", b"1")], on_delivery=lambda e, md: errs.append(e))
            cluster.delete_topic(TOPIC)
            with pytest.raises(shmlog.ShmlogError):
                producer.flush()
        finally:
            try:
                producer.close()
            except shmlog.ShmlogError:
                pass
    assert len(errs) == 5 and all(isinstance(e, shmlog.ShmlogError) for e in errs)
