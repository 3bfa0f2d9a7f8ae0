"""Kafka consumer groups through the listener (shmlog/kafka/groups.py):
commits from consumers outside any group, answered as Kafka answers them,
checked against tansu (a Kafka-compatible broker) with the same client code."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
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


# ---------------------------------------------------------------- cooperative
PARTS = 4
ALL = {("coop", p) for p in range(PARTS)}


def _log(path: str, who: str, op: str, tps) -> None:
    """One ownership event, stamped with CLOCK_MONOTONIC (one clock for
    every process of the host)."""
    with open(path, "a") as f:
        f.write(json.dumps({"t": time.monotonic(), "who": who, "op": op, "tps": sorted(tps)}) + "\n")


def cooperative_member(bs: str, events: str, who: str) -> None:
    """A confluent-kafka member speaking only cooperative-sticky, whose
    application polls slowly (it processes for a while between polls), so
    that it learns of a revocation well after the listener answered."""
    from confluent_kafka import Consumer

    def on_assign(c, tps):
        _log(events, who, "assign", [(tp.topic, tp.partition) for tp in tps])

    def on_revoke(c, tps):
        c.incremental_unassign(tps)
        # stamped after the partitions are given up: from here on it reads
        # them no more, so a new owner before this instant is a second one
        _log(events, who, "revoke", [(tp.topic, tp.partition) for tp in tps])

    c = Consumer({"bootstrap.servers": bs, "group.id": "coop", "client.id": who,
                  "partition.assignment.strategy": "cooperative-sticky", "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 100})
    c.subscribe(["coop"], on_assign=on_assign, on_revoke=on_revoke)
    while True:
        c.poll(0.05)
        time.sleep(0.5)


def shmlog_coop_member(data_dir: str, events: str, who: str, stop_file: str) -> None:
    import shmlog

    cluster = shmlog.connect(data_dir, start=False)
    c = cluster.consumer("coop", group="coop", session_timeout_ms=6000)
    owned: set = set()
    while not os.path.exists(stop_file):
        c.consume(1000, timeout=0.02)
        now = set(c.assignment())
        if now - owned:
            _log(events, who, "assign", now - owned)
        if owned - now:
            _log(events, who, "revoke", owned - now)
        owned = now
    # close() hands its partitions back: they are its until it returns
    c.close()
    _log(events, who, "revoke", owned)
    cluster.close()


def _events(path: Path) -> List[Dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(x) for x in lines if x.endswith("}")]


def _owners(events) -> Dict[tuple, set]:
    """Who owns each partition after the events so far."""
    owners: Dict[tuple, set] = {tp: set() for tp in ALL}
    for e in events:
        for t, p in e["tps"]:
            (owners[(t, p)].add if e["op"] == "assign" else owners[(t, p)].discard)(e["who"])
    return owners


def _double_owners(events) -> List[str]:
    """Every instant at which a partition had two owners."""
    owners: Dict[tuple, set] = {tp: set() for tp in ALL}
    bad = []
    for e in sorted(events, key=lambda e: e["t"]):
        for t, p in e["tps"]:
            who = owners[(t, p)]
            if e["op"] == "assign":
                if who - {e["who"]}:
                    bad.append(f"{t}[{p}] assigned to {e['who']} at {e['t']:.3f} while {sorted(who)} own it")
                who.add(e["who"])
            else:
                who.discard(e["who"])
    return bad


def _wait_owned(path: Path, want: Dict[str, int], timeout: float = 60.0) -> None:
    """Until each member named in want owns that many partitions and every
    partition has an owner (the deadline moves on while events arrive)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        ev = _events(path)
        if len(ev) != seen:
            seen = len(ev)
            deadline = max(deadline, time.monotonic() + 20)
        owners = _owners(ev)
        counts = {w: sum(w in o for o in owners.values()) for w in want}
        if counts == want and all(owners.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"ownership never became {want}: {owners}")
        time.sleep(0.05)


def test_cooperative_sticky_member_never_shares_a_partition(data_dir, tmp_path):
    """A client that speaks only cooperative-sticky keeps reading what it
    owns through a rebalance. What it must give up is revoked first (in
    no one's assignment) and handed to the new owner only after the client
    rejoined without it: never two owners, as members join and leave."""
    from _broker_helpers import Children

    events = tmp_path / "events.jsonl"
    stop = tmp_path / "stop-b"
    with kafka_cluster(data_dir) as (cluster, bs), Children(tmp_path) as kids:
        cluster.create_topic("coop", partitions=PARTS, **TOPIC)
        kids.start(cooperative_member, bs, str(events), "A")
        _wait_owned(events, {"A": 4})
        b = kids.start(shmlog_coop_member, str(data_dir), str(events), "B", str(stop))
        _wait_owned(events, {"A": 2, "B": 2})
        kids.start(cooperative_member, bs, str(events), "C")
        _wait_owned(events, {"A": 1, "B": 2, "C": 1})
        stop.touch()
        Children.result(b)
        _wait_owned(events, {"A": 2, "B": 0, "C": 2})
        assert _double_owners(_events(events)) == []
