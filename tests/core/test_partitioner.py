"""Key -> partition exactly as Kafka does it: toPositive(murmur2(key)) % n.

The expected hashes are Kafka's own test vectors (UtilsTest.testMurmur2 in
apache/kafka, plus the tail-length and librdkafka cases other Kafka clients
pin); `murmur2_ref` is an independent transcription of Utils.murmur2 used to
check placement on a live broker.
"""

from __future__ import annotations

import pytest
from _broker_helpers import (
    ROOMY,
    by_partition,
    collect,
    kafka_partition,
    murmur2_ref,
    running_cluster,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from shmlog.core.partitioner import KeyPartitioner, murmur2, partition_for

# Kafka UtilsTest.testMurmur2
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
# every tail length (len % 4 = 0..3), the empty key, and librdkafka's cases
MORE_VECTORS = {
    b"string-f-24-chars-length": 124730809,
    b"string-fo-25-chars-length": 1269511650,
    b"string-foo-26-chars-length": 119165628,
    b"string-last-27-chars-length": 1089971754,
    b"kafka": -798503068,
    b"giberish123456789": -1890243828,
    b"1234": -1614185708,
    b"234": -406844982,
    b"34": -2026295078,
    b"4": 1514888353,
    b"": 275646681,
    b"1": -1993445489,
    b"12": 126087238,
    b"123": -267702483,
    b"12345": -1188365604,
}


@pytest.mark.parametrize("key,expected", sorted({**KAFKA_VECTORS, **MORE_VECTORS}.items()))
def test_murmur2_matches_kafka_vectors(key, expected):
    assert murmur2(key) == expected
    assert murmur2_ref(key) == expected  # the reference used below is right too


def test_murmur2_takes_any_bytes_like():
    assert murmur2(bytearray(b"foobar")) == -790332482
    assert murmur2(memoryview(b"xxfoobar")[2:]) == -790332482


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_murmur2_matches_reference(key):
    assert murmur2(key) == murmur2_ref(key)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([1, 2, 3, 4, 7, 16, 3333, 4096]))
def test_partition_for_is_kafkas_rule(key, n):
    expected = kafka_partition(key, n)
    assert partition_for(key, n) == expected
    kp = KeyPartitioner(n)
    assert kp(key) == expected
    assert kp(key) == expected  # the cached answer is the same


def test_to_positive_masks_sign_bit_not_abs():
    # murmur2(b"21") is negative: Kafka masks with 0x7fffffff; abs() would
    # put it on partition 2 of 3, Kafka puts it on 0.
    assert murmur2(b"21") < 0
    assert abs(murmur2(b"21")) % 3 == 2
    assert partition_for(b"21", 3) == 0
    assert KeyPartitioner(3)(b"21") == 0


def test_key_partitioner_cache_is_bounded():
    kp = KeyPartitioner(5, limit=16)
    keys = [b"k%d" % i for i in range(100)]
    for k in keys:
        assert kp(k) == kafka_partition(k, 5)
    assert len(kp._cache) <= 16
    for k in keys:  # after evictions, still right
        assert kp(k) == kafka_partition(k, 5)


@pytest.mark.parametrize("bad", ["text", 42, 4.2, ("a",)])
def test_key_partitioner_rejects_non_bytes(bad):
    with pytest.raises(TypeError, match="bytes-like"):
        KeyPartitioner(4)(bad)


@pytest.mark.parametrize("make", [bytearray, lambda b: memoryview(bytearray(b))], ids=["bytearray", "memoryview"])
def test_key_partitioner_accepts_mutable_bytes_like(make):
    assert KeyPartitioner(4)(make(b"foobar")) == kafka_partition(b"foobar", 4)


def test_key_partitioner_rejects_unhashable_non_bytes_clearly():
    with pytest.raises(TypeError, match="bytes-like"):
        KeyPartitioner(4)(["a"])


@pytest.mark.parametrize("partitions", [4, 7])
def test_keyed_messages_land_where_kafka_puts_them(data_dir, partitions):
    keys = [b"user-%d" % i for i in range(60)] + list(KAFKA_VECTORS)
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("keyed", partitions=partitions, **ROOMY)
        with cluster.producer() as producer:
            for i, k in enumerate(keys):
                producer.send("keyed", b"v%d" % i, key=k)
            # send_batch groups by partition with the same rule
            producer.send_batch("keyed", [b"b%d" % i for i in range(len(keys))], keys=keys)
            producer.flush()
        with cluster.consumer("keyed") as consumer:
            msgs = collect(consumer, 2 * len(keys), timeout=10)
        for m in msgs:
            assert m.partition == kafka_partition(bytes(m.key), partitions), m
        # every key used more than one partition overall (the test can tell)
        assert len(by_partition(msgs)) == partitions
