"""Consumer groups, admin side (shmlog/broker/group_admin.py): deleting a
group, as Kafka's `kafka-consumer-groups --delete` does — refused while the
group has live members (naming them), and then gone for good: its committed
offsets, its file, and across a supervisor restart."""

from __future__ import annotations

import os
import time

import pytest

import shmlog
from shmlog import errors


@pytest.fixture
def cluster(data_dir):
    c = shmlog.connect(data_dir, session_timeout_ms=3000)
    try:
        yield c
    finally:
        c.shutdown()


def _drain(consumer, want: int, timeout: float = 10) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += [m.offset for m in consumer.consume(max_messages=want - len(got), timeout=0.1)]
    return got


def test_delete_group_refuses_naming_its_live_members(cluster):
    cluster.create_topic("t", partitions=1)
    with cluster.producer() as p:
        p.send_batch("t", [b"x"] * 5, partition=0)
    with cluster.consumer("t", group="g", client_id="worker-7", enable_auto_commit=False) as k:
        assert len(_drain(k, 5)) == 5
        k.commit()
        [m] = cluster.describe_group("g")["members"]
        with pytest.raises(errors.GroupError) as ei:
            cluster.delete_group("g")
        msg = str(ei.value)
        assert "cannot delete group 'g'" in msg and "1 active member(s)" in msg
        assert "worker-7" in msg and f"pid {os.getpid()}" in msg and m["member_id"] in msg
        assert "close its consumers first" in msg
        # refused means untouched: the member keeps its partition and the offset stays
        assert cluster.describe_group("g")["partitions"][0]["committed"] == 5
    assert "g" in cluster.groups()


def test_a_deleted_group_starts_over_by_auto_offset_reset(cluster, data_dir):
    cluster.create_topic("t", partitions=2)
    with cluster.producer() as p:
        p.send_batch("t", [b"x"] * 4, partition=0)
        p.send_batch("t", [b"y"] * 3, partition=1)
    with cluster.consumer("t", group="g") as k:
        assert len(_drain(k, 7)) == 7
    assert {q["committed"] for q in cluster.describe_group("g")["partitions"]} == {4, 3}
    files = list(data_dir.rglob("g.*"))
    assert files, "the group's committed offsets were never written to a file"
    cluster.delete_group("g")
    assert "g" not in cluster.groups()
    assert not any(f.exists() for f in files)
    with pytest.raises(errors.GroupError, match="unknown group 'g'"):
        cluster.describe_group("g")
    with pytest.raises(errors.GroupError, match="unknown group 'g'"):
        cluster.delete_group("g")
    # nothing committed any more: a new member of the same name reads from the start
    with cluster.consumer("t", group="g", auto_offset_reset="earliest") as k:
        assert len(_drain(k, 7)) == 7


def test_a_deleted_group_stays_deleted_across_a_supervisor_restart(data_dir):
    with shmlog.connect(data_dir) as c:
        c.create_topic("t", partitions=1)
        with c.producer() as p:
            p.send_batch("t", [b"x"] * 3, partition=0)
        with c.consumer("t", group="gone") as k, c.consumer("t", group="kept") as k2:
            assert len(_drain(k, 3)) == 3 and len(_drain(k2, 3)) == 3
        c.delete_group("gone")
        c.shutdown()
    c = shmlog.connect(data_dir)
    try:
        assert "gone" not in c.groups() and "kept" in c.groups()
        assert c.describe_group("kept")["partitions"][0]["committed"] == 3
    finally:
        c.shutdown()
