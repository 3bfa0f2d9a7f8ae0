"""Kafka consumer groups through the listener (shmlog/kafka/groups.py):
commits from consumers outside any group, answered as Kafka answers them,
checked against tansu (a Kafka-compatible broker) with the same client code."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List

import pytest
from _broker_helpers import wait_for
from _kafka_helpers import kafka_cluster, tansu_broker

pytest.importorskip("confluent_kafka")
pytest.importorskip("aiokafka")

TOPIC = {"storage": "memory", "chunk_bytes": 1 << 20, "chunk_count": 4}


def _result(tps) -> List[tuple]:
    return [(tp.partition, tp.offset, tp.error.code() if tp.error else 0) for tp in tps]


def simple_commit_flow(bs: str, topic: str) -> Dict[str, Any]:
    """A consumer that assign()s its partitions and commits (generation -1,
    no member id), then the same commit while another consumer is a member
    of the group. Returns what the client saw at each step."""
    from confluent_kafka import Consumer, KafkaException, Producer
    from confluent_kafka import TopicPartition as TP

    p = Producer({"bootstrap.servers": bs})
    for i in range(20):
        p.produce(topic, b"v%d" % i, partition=i % 2)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bs, "group.id": "simple", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    out: Dict[str, Any] = {}
    try:
        c.assign([TP(topic, 0, 0), TP(topic, 1, 0)])
        got = 0
        deadline = time.monotonic() + 60
        while got < 20 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and not m.error():
                got += 1
        out["consumed"] = got
        out["commit"] = _result(c.commit(offsets=[TP(topic, 0, 4), TP(topic, 1, 7)], asynchronous=False))
        out["committed"] = _result(c.committed([TP(topic, 0), TP(topic, 1)], timeout=30))

        async def while_a_member_holds_the_group():
            import aiokafka

            k = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bs, group_id="simple",
                                          auto_offset_reset="earliest", enable_auto_commit=False)
            await k.start()
            try:
                deadline = time.monotonic() + 60
                while not k.assignment() and time.monotonic() < deadline:
                    await k.getmany(timeout_ms=100)
                out["member_assignment"] = sorted(tp.partition for tp in k.assignment())

                def commit():
                    try:
                        return _result(c.commit(offsets=[TP(topic, 0, 9)], asynchronous=False))
                    except KafkaException as exc:
                        return exc.args[0].code()

                out["commit_while_member"] = await asyncio.get_running_loop().run_in_executor(None, commit)
            finally:
                await k.stop()

        asyncio.run(while_a_member_holds_the_group())
        out["committed_after"] = _result(c.committed([TP(topic, 0), TP(topic, 1)], timeout=30))
    finally:
        c.close()
    return out


EXPECTED = {
    "consumed": 20,
    "commit": [(0, 4, 0), (1, 7, 0)],
    "committed": [(0, 4, 0), (1, 7, 0)],
    "member_assignment": [0, 1],
    "commit_while_member": 25,  # UNKNOWN_MEMBER_ID
    "committed_after": [(0, 4, 0), (1, 7, 0)],
}


def test_commit_outside_group_differential_tansu():
    """Kafka's own answers (tansu's are Kafka's here): the reference for
    the listener's test below."""
    import confluent_kafka.admin as cka

    with tansu_broker() as bs:
        admin = cka.AdminClient({"bootstrap.servers": bs})
        for f in admin.create_topics([cka.NewTopic("s", 2, 1)]).values():
            f.result(30)
        assert simple_commit_flow(bs, "s") == EXPECTED


def test_commit_outside_group_through_listener(data_dir):
    """The same flow through the listener gives the same answers, and the
    commit is shmlog's: `groups describe` shows it and a shmlog consumer of
    the group starts there."""
    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("s", partitions=2, **TOPIC)
        assert simple_commit_flow(bs, "s") == EXPECTED
        d = cluster.describe_group("simple")
        assert {x["partition"]: x["committed"] for x in d["partitions"]} == {0: 4, 1: 7}
        # the aiokafka member left: the group is empty, a shmlog member
        # takes both partitions and resumes at the committed offsets
        wait_for(lambda: not cluster.describe_group("simple")["members"], 30, what="the member to leave")
        with cluster.consumer("s", group="simple") as c:
            got: List[Any] = []
            deadline = time.monotonic() + 60
            while len(got) < (10 - 4) + (10 - 7) and time.monotonic() < deadline:
                got += c.consume(100, timeout=0.2)
        assert sorted((m.partition, m.offset) for m in got) == \
            [(0, o) for o in range(4, 10)] + [(1, o) for o in range(7, 10)]


def test_commit_with_a_generation_from_no_member(data_dir):
    """Kafka's other answers for a commit from no member: a generation >= 0
    names a membership: ILLEGAL_GENERATION when the group does not exist,
    UNKNOWN_MEMBER_ID when it does."""
    import struct

    from _kafka_wire import Wire, string

    def commit(w: Wire, group: str, gen: int, member: str) -> int:
        # OffsetCommit v2: one partition, s[0] at offset 3
        body = (string(group) + struct.pack(">i", gen) + string(member) + struct.pack(">qi", -1, 1)
                + string("s") + struct.pack(">iiq", 1, 0, 3) + string(""))
        resp = w.call(8, 2, body)
        (n,) = struct.unpack_from(">h", resp, 4)
        return struct.unpack_from(">h", resp, 4 + 2 + n + 4 + 4)[0]

    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("s", partitions=2, **TOPIC)
        with Wire(bs) as w:
            assert commit(w, "nogroup", 5, "") == 22  # ILLEGAL_GENERATION
            assert commit(w, "g", -1, "") == 0  # creates the group, as Kafka does
            assert commit(w, "g", 5, "") == 25  # UNKNOWN_MEMBER_ID
            assert commit(w, "g", -1, "someone") == 0  # an empty group takes it
        d = cluster.describe_group("g")
        assert {x["partition"]: x["committed"] for x in d["partitions"]} == {0: 3, 1: None}
