"""One consumer group, two kinds of members: a kafka-python consumer (through
the listener) and a shmlog consumer (shared memory). shmlog's coordinator
assigns both: each partition has exactly one owner, and when either member
is SIGKILLed the other takes over its partitions."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from _broker_helpers import Children
from _kafka_helpers import kafka_cluster

TOPIC = {"storage": "memory", "chunk_bytes": 1 << 20, "chunk_count": 4}
PARTS = 4
ALL = {("mix", p) for p in range(PARTS)}


def _write(path: str, owned) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(sorted(owned), f)
    os.replace(tmp, path)


def kafka_member(bs: str, status: str) -> None:
    import kafka

    c = kafka.KafkaConsumer("mix", bootstrap_servers=bs, group_id="mix", auto_offset_reset="earliest",
                            session_timeout_ms=3000, heartbeat_interval_ms=200, client_id="kp")
    while True:
        # not a short timeout: kafka-python 3.0.12 never finishes a rebalance
        # whose SyncGroup answer arrives after poll() gave up waiting for it
        # (join_group_async returns on the timer with the join in flight, the
        # join then completes, and the next poll sees no rejoin needed: the
        # heartbeat stays disabled and the member times out, never to
        # rejoin). Under load a join can take longer than 100 ms.
        c.poll(timeout_ms=2000)
        _write(status, [(tp.topic, tp.partition) for tp in c.assignment()])


def shmlog_member(data_dir: str, status: str) -> None:
    import shmlog

    cluster = shmlog.connect(data_dir, start=False)
    c = cluster.consumer("mix", group="mix", session_timeout_ms=3000)
    while True:
        c.consume(1000, timeout=0.1)
        _write(status, c.assignment())


def _owned(path: Path):
    try:
        return {tuple(x) for x in json.loads(path.read_text())}
    except (OSError, ValueError):
        return None


def _wait_split(cluster, a: Path, b: Path, *, only=None, quiet: float = 30.0, cap: float = 300.0):
    """Until a and b split the partitions (or a owns them all, with only).
    Fails when the group has not moved for `quiet` seconds (no change in
    the members' assignments nor in the coordinator's generation), or
    after `cap` seconds in all: a loaded host slows a rebalance down, and
    only a rebalance that stopped making progress is a failure."""
    start = last_change = time.monotonic()
    last = None
    while True:
        oa, ob = _owned(a), _owned(b) if b is not None else set()
        if oa is not None and ob is not None:
            if only is not None:
                if oa == ALL:
                    return
            elif oa and ob and not (oa & ob) and (oa | ob) == ALL:
                return
        try:
            d = cluster.describe_group("mix")
            state = (oa, ob, d["generation"],
                     [(m["member_id"], [tuple(tp) for tp in m["assignment"]]) for m in d["members"]])
        except Exception as exc:  # the coordinator busy or restarting: not progress
            state = (oa, ob, repr(exc))
        now = time.monotonic()
        if state != last:
            last, last_change = state, now
        if now - last_change > quiet or now - start > cap:
            raise AssertionError(f"assignments never settled: {last}")
        time.sleep(0.05)


def test_mixed_group_kafka_python_and_shmlog_member(data_dir, tmp_path):
    with kafka_cluster(data_dir) as (cluster, bs), Children(tmp_path) as kids:
        cluster.create_topic("mix", partitions=PARTS, **TOPIC)
        with cluster.producer() as p:
            for i in range(400):
                p.send("mix", b"m%d" % i, key=b"%d" % i)
            p.flush()
        ka, sa = tmp_path / "kafka-a.json", tmp_path / "shm-a.json"
        k1 = kids.start(kafka_member, bs, str(ka))
        s1 = kids.start(shmlog_member, str(data_dir), str(sa))
        _wait_split(cluster, ka, sa)
        # the coordinator sees the same split: one kafka and one shmlog member
        d = cluster.describe_group("mix")
        assert len(d["members"]) == 2
        assert {tuple(tp) for m in d["members"] for tp in m["assignment"]} == ALL
        # SIGKILL the Kafka client: its heartbeats stop, the shmlog member takes all
        os.kill(k1.pid, signal.SIGKILL)
        k1.join(5)
        _wait_split(cluster, sa, None, only=True)
        # a new Kafka member joins; then SIGKILL the shmlog member: the Kafka member takes all
        kb = tmp_path / "kafka-b.json"
        kids.start(kafka_member, bs, str(kb))
        _wait_split(cluster, kb, sa)
        os.kill(s1.pid, signal.SIGKILL)
        s1.join(5)
        _wait_split(cluster, kb, None, only=True)
