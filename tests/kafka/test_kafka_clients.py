"""Real Kafka clients against the listener: confluent-kafka (librdkafka),
kafka-python and aiokafka produce keyed messages and consume them back in a
consumer group; every message arrives once, on the partition Kafka's murmur2
gives its key (the one shmlog's own producer picks), and the group's
committed offsets are the coordinator's (what `shmlog groups describe`
shows). The same client test runs against tansu, a Kafka-compatible broker,
so any place where the listener answers differently shows."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Dict, List, Tuple

import pytest
from _broker_helpers import kafka_partition
from _kafka_helpers import kafka_cluster, tansu_broker

N = 100_000  # per client; about 1-3 s each way
PARTITIONS = 4
# 4 MiB chunks: batches up to 256 KiB (chunk_bytes / 16); clients batch at 128 KiB
TOPIC = {"storage": "memory", "chunk_bytes": 4 << 20, "chunk_count": 4}
BATCH = 128 << 10


def _messages(n: int) -> List[Tuple[bytes, bytes]]:
    return [(b"key-%d" % i, b"value-%d" % i) for i in range(n)]


# ------------------------------------------------------------------ clients
def confluent_round_trip(bs: str, topic: str, group: str, msgs) -> Dict[bytes, List[Tuple[int, bytes]]]:
    import confluent_kafka as ck

    # librdkafka's default partitioner hashes with CRC32; murmur2_random is
    # Java's (and shmlog's) rule
    p = ck.Producer({"bootstrap.servers": bs, "linger.ms": 5, "enable.idempotence": True,
                     "partitioner": "murmur2_random", "batch.size": BATCH})
    for i, (k, v) in enumerate(msgs):
        while True:
            try:
                p.produce(topic, key=k, value=v)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    c = ck.Consumer({"bootstrap.servers": bs, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": False})
    c.subscribe([topic])
    got: Dict[bytes, List[Tuple[int, bytes]]] = {}
    total = 0
    deadline = time.monotonic() + 120
    while total < len(msgs) and time.monotonic() < deadline:
        for m in c.consume(10_000, 0.5):
            assert m.error() is None, m.error()
            got.setdefault(m.key(), []).append((m.partition(), m.value()))
            total += 1
    c.commit(asynchronous=False)
    c.close()
    return got


def kafka_python_round_trip(bs: str, topic: str, group: str, msgs) -> Dict[bytes, List[Tuple[int, bytes]]]:
    import kafka

    p = kafka.KafkaProducer(bootstrap_servers=bs, linger_ms=5, batch_size=BATCH)
    for k, v in msgs:
        p.send(topic, key=k, value=v)
    p.flush(60)
    p.close()
    c = kafka.KafkaConsumer(topic, bootstrap_servers=bs, group_id=group, auto_offset_reset="earliest",
                            enable_auto_commit=False, max_poll_records=10_000)
    got: Dict[bytes, List[Tuple[int, bytes]]] = {}
    total = 0
    deadline = time.monotonic() + 120
    while total < len(msgs) and time.monotonic() < deadline:
        for tp, batch in c.poll(timeout_ms=500).items():
            for m in batch:
                got.setdefault(m.key, []).append((tp.partition, m.value))
                total += 1
    c.commit()
    c.close()
    return got


def aiokafka_round_trip(bs: str, topic: str, group: str, msgs) -> Dict[bytes, List[Tuple[int, bytes]]]:
    import aiokafka

    async def run():
        p = aiokafka.AIOKafkaProducer(bootstrap_servers=bs, linger_ms=5, max_batch_size=BATCH)
        await p.start()
        try:
            futs = [await p.send(topic, key=k, value=v) for k, v in msgs]
            await p.flush()
            for f in futs:
                await f
        finally:
            await p.stop()
        c = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bs, group_id=group,
                                      auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        got: Dict[bytes, List[Tuple[int, bytes]]] = {}
        total = 0
        try:
            deadline = time.monotonic() + 120
            while total < len(msgs) and time.monotonic() < deadline:
                for tp, batch in (await c.getmany(timeout_ms=500, max_records=10_000)).items():
                    for m in batch:
                        got.setdefault(m.key, []).append((tp.partition, m.value))
                        total += 1
            await c.commit()
        finally:
            await c.stop()
        return got

    return asyncio.run(run())


CLIENTS = {"confluent": confluent_round_trip, "kafka-python": kafka_python_round_trip,
           "aiokafka": aiokafka_round_trip}


def check_once_on_murmur2(got, msgs) -> None:
    want = dict(msgs)
    dup = {k: v for k, v in got.items() if len(v) != 1}
    assert not dup, f"{len(dup)} keys delivered more than once, e.g. {next(iter(dup.items()))}"
    missing = set(want) - set(got)
    assert not missing, f"{len(missing)} messages never arrived"
    for k, [(p, v)] in got.items():
        assert v == want[k]
        assert p == kafka_partition(k, PARTITIONS), f"key {k!r} on partition {p}"


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_round_trip_through_listener(client, data_dir):
    msgs = _messages(N)
    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("events", partitions=PARTITIONS, **TOPIC)
        got = CLIENTS[client](bs, "events", f"g-{client}", msgs)
        check_once_on_murmur2(got, msgs)
        # the group's offsets are shmlog's: the coordinator has them
        desc = cluster.describe_group(f"g-{client}")
        committed = {x["partition"]: x["committed"] for x in desc["partitions"]}
        counts = Counter(kafka_partition(k, PARTITIONS) for k, _v in msgs)
        assert committed == {p: counts[p] for p in range(PARTITIONS)}


# tansu's group joins take ~25 s with confluent-kafka and kafka-python (its
# rebalance delays), so the suite runs aiokafka's; SHMLOG_TANSU_ALL=1 runs all
DIFF_CLIENTS = sorted(CLIENTS) if os.environ.get("SHMLOG_TANSU_ALL") else ["aiokafka"]


@pytest.mark.parametrize("client", DIFF_CLIENTS)
def test_client_round_trip_differential_tansu(client):
    """The same client code against tansu: both brokers must give the same
    result (fewer messages: this checks behaviour, not speed)."""
    import confluent_kafka.admin as cka

    msgs = _messages(2_000)
    with tansu_broker() as bs:
        admin = cka.AdminClient({"bootstrap.servers": bs})
        for f in admin.create_topics([cka.NewTopic("events", PARTITIONS, 1)]).values():
            f.result(30)
        got = CLIENTS[client](bs, "events", f"g-{client}", msgs)
        check_once_on_murmur2(got, msgs)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_idempotent_producer_retry_after_lost_response(client, data_dir, monkeypatch):
    """Every 7th Produce response is lost (the listener closes the connection
    after the append): the idempotent producer retries and the listener
    acknowledges the retry with the original offsets; each message once."""
    monkeypatch.setenv("SHMLOG_KAFKA_TEST_DROP_PRODUCE_RESPONSE", "7")
    n = 3000
    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("idem", partitions=2, **TOPIC)
        if client == "kafka-python":
            import kafka

            p = kafka.KafkaProducer(bootstrap_servers=bs, enable_idempotence=True, acks="all",
                                    linger_ms=2, retries=100, max_in_flight_requests_per_connection=1)
            for i in range(n):
                p.send("idem", key=b"%d" % i, value=b"m-%d" % i)
                if i % 100 == 99:
                    p.flush(30)
            p.flush(30)
            p.close()
        else:
            import confluent_kafka as ck

            p = ck.Producer({"bootstrap.servers": bs, "enable.idempotence": True, "linger.ms": 2,
                             "partitioner": "murmur2_random", "reconnect.backoff.ms": 20})
            for i in range(n):
                p.produce("idem", key=b"%d" % i, value=b"m-%d" % i)
                if i % 100 == 99:
                    p.flush(30)
            assert p.flush(30) == 0
        with cluster.consumer("idem") as c:
            got = []
            for _ in range(100):
                got += c.consume(n, timeout=0.1)
                if sum(r.end_offset() for r in cluster.topic("idem").regions) <= len(got):
                    break
        values = Counter(m.value for m in got)
        assert sum(values.values()) == n, f"{sum(values.values()) - n} duplicates"
        assert set(values) == {b"m-%d" % i for i in range(n)}
        assert "dropped a Produce response" in (data_dir / "kafka-listener.log").read_text()
