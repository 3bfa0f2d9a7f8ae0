"""Cluster: connect(), the admin calls, and their errors.

Every bad call must fail with a clear error naming what is wrong, create
nothing, and leave what was committed before untouched.
"""

from __future__ import annotations

import os
import time

import pytest
from _broker_helpers import (
    FORK,
    SMALL,
    Children,
    collect,
    kafka_partition,
    partition_regions,
    running_cluster,
    segments_of,
    stop_supervisor,
    supervisors_of,
)

import shmlog

RULE = r"\[A-Za-z0-9\._-\]"

BAD_NAMES = ["", ".", "..", "a b", "x" * 201, "caf\u00e9", "a/b", "../etc", "tab\there", "new\nline",
             "semi;colon", "star*", "nul\x00l"]
GOOD_NAMES = ["x" * 200, "...", "a.b_c-D9", "-", "_", "0", "CamelCase.v2"]


# ---------------------------------------------------------------- admin
def test_admin_round_trip(data_dir):
    with running_cluster(data_dir) as cluster:
        info = cluster.create_topic("events", partitions=3, retention_ms=60_000, **SMALL)
        assert isinstance(info, shmlog.TopicInfo)
        assert info.name == "events" and len(info.partitions) == 3
        assert info.config["retention_ms"] == 60_000 and info.config["storage"] == "memory"
        assert [p.partition for p in info.partitions] == [0, 1, 2]
        assert all(p.start_offset == 0 and p.end_offset == 0 for p in info.partitions)
        assert len(partition_regions(data_dir)) == 3

        with cluster.producer() as producer:
            producer.send_batch("events", [b"a", b"b", b"c"], partition=1)
        info = cluster.describe_topic("events")
        p1 = info.partitions[1]
        assert isinstance(p1, shmlog.PartitionInfo)
        assert (p1.start_offset, p1.end_offset, p1.durable_offset) == (0, 3, 3)
        assert p1.bytes > 0
        assert set(cluster.topics()) == {"events"}
        assert isinstance(cluster.topics()["events"], shmlog.TopicInfo)

        info = cluster.alter_topic("events", retention_ms=120_000)
        assert info.config["retention_ms"] == 120_000
        assert cluster.describe_topic("events").config["retention_ms"] == 120_000
        with pytest.raises(shmlog.InvalidConfig, match="partitions"):
            cluster.alter_topic("events", partitions=9)
        with pytest.raises(shmlog.InvalidConfig, match="storage"):
            cluster.alter_topic("events", storage="disk")

        info = cluster.add_partitions("events", 5)
        assert len(info.partitions) == 5 and len(partition_regions(data_dir)) == 5
        with pytest.raises(shmlog.InvalidConfig, match="larger"):
            cluster.add_partitions("events", 4)
        keys = [b"k%d" % i for i in range(40)]
        with cluster.producer() as producer:
            for k in keys:
                producer.send("events", k, key=k)
        with cluster.consumer("events") as consumer:
            msgs = collect(consumer, 43, timeout=10)
        assert {m.partition for m in msgs} - {1} <= {0, 1, 2, 3, 4}
        for m in msgs:
            if m.key is not None:
                assert m.partition == kafka_partition(bytes(m.key), 5)
        assert {m.partition for m in msgs if m.key is not None} & {3, 4}, "new partitions unused"

        with pytest.raises(shmlog.TopicExists, match="events"):
            cluster.create_topic("events", **SMALL)
        cluster.delete_topic("events")
        assert cluster.topics() == {}
        assert partition_regions(data_dir) == []
        with pytest.raises(shmlog.UnknownTopic, match="events"):
            cluster.describe_topic("events")


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_invalid_topic_names(data_dir, name):
    with running_cluster(data_dir) as cluster:
        for call in (lambda: cluster.create_topic(name, **SMALL),
                     lambda: cluster.describe_topic(name),
                     lambda: cluster.delete_topic(name),
                     lambda: cluster.consumer(name)):
            with pytest.raises(shmlog.InvalidTopic, match=RULE) as info:
                call()
            msg = str(info.value)
            assert "1-200" in msg and "'.' or '..'" in msg
        with cluster.producer() as producer, pytest.raises(shmlog.InvalidTopic, match=RULE):
            producer.send(name, b"v")
        assert cluster.topics() == {}
        assert segments_of(data_dir) == [] or partition_regions(data_dir) == []


@pytest.mark.parametrize("name", [123, None, b"bytes", ["t"]])
def test_non_string_topic_names(data_dir, name):
    with running_cluster(data_dir) as cluster:
        with pytest.raises(shmlog.InvalidTopic, match=RULE):
            cluster.create_topic(name, **SMALL)
        with pytest.raises(shmlog.InvalidTopic, match=RULE):
            cluster.describe_topic(name)


def test_boundary_topic_names_are_fine(data_dir):
    with running_cluster(data_dir) as cluster:
        for name in GOOD_NAMES:
            cluster.create_topic(name, **SMALL)
        assert set(cluster.topics()) == set(GOOD_NAMES)
        with cluster.producer() as producer:
            for name in GOOD_NAMES:
                producer.send(name, name.encode())
        for name in GOOD_NAMES:
            with cluster.consumer(name) as consumer:
                assert collect(consumer, 1, timeout=5)[0].value == name.encode()


def test_unknown_topic(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("known", **SMALL)
        calls = [
            lambda: cluster.describe_topic("nope"),
            lambda: cluster.delete_topic("nope"),
            lambda: cluster.alter_topic("nope", retention_ms=1000),
            lambda: cluster.add_partitions("nope", 4),
            lambda: cluster.consumer("nope"),
            lambda: cluster.consumer(["known", "nope"]),
        ]
        for call in calls:
            with pytest.raises(shmlog.UnknownTopic, match="'nope'"):
                call()
        with cluster.producer() as producer:
            with pytest.raises(shmlog.UnknownTopic, match="'nope'"):
                producer.send("nope", b"v")
        assert isinstance(shmlog.UnknownTopic("x"), KeyError)  # like a dict miss
        assert set(cluster.topics()) == {"known"}


@pytest.mark.parametrize("setting,value", [
    ("partitions", 0), ("partitions", "4"), ("partitions", True), ("partitions", 5000),
    ("storage", "tape"), ("chunk_bytes", 1000), ("chunk_bytes", 65537), ("chunk_count", 1),
    ("retention_ms", -1), ("retention_bytes", 0), ("segment_bytes", 10), ("bogus", 1),
])
def test_invalid_topic_config_names_the_setting(data_dir, setting, value):
    with running_cluster(data_dir) as cluster:
        kwargs = {**SMALL, setting: value}
        partitions = kwargs.pop("partitions", 1)
        with pytest.raises(shmlog.InvalidConfig, match=setting):
            cluster.create_topic("t", partitions=partitions, **kwargs)
        assert cluster.topics() == {}
        assert partition_regions(data_dir) == []


def test_delete_in_another_process_stops_producers(data_dir, tmp_path):
    def delete_it(d):
        with shmlog.connect(d) as c:
            c.delete_topic("t")

    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic("t", **SMALL)
        producer = cluster.producer()
        producer.send("t", b"old")
        producer.flush()
        Children.result(kids.start(delete_it, data_dir))
        with pytest.raises(shmlog.UnknownTopic, match="'t'"):
            producer.send("t", b"lost?")
            producer.flush()
        cluster.create_topic("t", **SMALL)  # same name, new topic: starts empty
        producer.send("t", b"new")
        producer.flush()
        with cluster.consumer("t") as consumer:
            assert [m.value for m in collect(consumer, 1, timeout=5)] == [b"new"]
            assert consumer.consume(timeout=0.2) == []
        producer.close()


# ---------------------------------------------------------------- connect
def test_connect_to_unusable_paths(data_dir, tmp_path):
    a_file = tmp_path / "plain-file"
    a_file.write_text("not a dir")
    for bad in (a_file / "data", a_file, a_file / "deeper" / "data"):
        with pytest.raises(shmlog.ShmlogError, match=str(bad)) as info:
            shmlog.connect(bad)
        assert "data dir" in str(info.value)
        assert supervisors_of(bad) == []
    with pytest.raises(shmlog.ShmlogError, match="/proc/shmlog-data"):
        shmlog.connect("/proc/shmlog-data")
    assert not data_dir.exists()  # nothing was started for the real one either


def test_deep_data_dir_beyond_sun_path(tmp_path):
    deep = tmp_path.joinpath(*["d" * 50] * 5) / "data"
    assert len(str(deep / "shmlog.sock")) > 108
    try:
        with running_cluster(deep) as cluster:
            cluster.create_topic("t", **SMALL)
            with cluster.producer() as producer:
                producer.send("t", b"deep")
            with shmlog.connect(deep, start=False) as c2, c2.consumer("t") as consumer:
                assert collect(consumer, 1, timeout=5)[0].value == b"deep"
    finally:
        stop_supervisor(deep)
    assert supervisors_of(deep) == [] and segments_of(deep) == []


def test_default_data_dir_from_environment(data_dir, monkeypatch):
    monkeypatch.setenv("SHMLOG_DATA_DIR", str(data_dir))
    with shmlog.connect(idle_timeout_s=30) as cluster:
        try:
            assert cluster.data_dir == data_dir.absolute()
            assert (data_dir / "shmlog.sock").exists()
        finally:
            stop_supervisor(data_dir, cluster)


def test_bad_broker_settings(data_dir):
    with pytest.raises(shmlog.InvalidConfig, match="bogus"):
        shmlog.connect(data_dir, bogus=1)
    with pytest.raises(shmlog.InvalidConfig, match="idle_timeout_s"):
        shmlog.connect(data_dir, idle_timeout_s=-1)
    assert supervisors_of(data_dir) == []


def _connect_at(data_dir, go):
    go.wait(10)
    with shmlog.connect(data_dir, idle_timeout_s=30) as c:
        return c.supervisor_pid, c.cluster_id


def test_simultaneous_first_connects_start_one_supervisor(data_dir, tmp_path):
    with Children(tmp_path) as kids:
        go = FORK.Event()
        procs = [kids.start(_connect_at, data_dir, go) for _ in range(6)]
        time.sleep(0.3)
        go.set()
        answers = {Children.result(p, timeout=30) for p in procs}
    try:
        assert len(answers) == 1, answers
        (pid, cid), = answers
        assert supervisors_of(data_dir) == [pid]
        assert cid == (data_dir / "cluster_id").read_text().strip()
    finally:
        stop_supervisor(data_dir)


def test_close_detaches_only_this_client(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with shmlog.connect(data_dir) as other:
            producer = other.producer()
            consumer = other.consumer("t")
            producer.send("t", b"x")
        assert other.closed
        other.close()  # twice is fine
        with pytest.raises(shmlog.Closed):
            other.describe_topic("t")
        with pytest.raises(shmlog.Closed):
            consumer.poll(timeout=0)
        # the supervisor and the data stay
        assert cluster.describe_topic("t").partitions[0].end_offset == 1
        with cluster.consumer("t") as c2:
            assert collect(c2, 1, timeout=5)[0].value == b"x"


# ---------------------------------------------------------------- two clusters
def test_two_data_dirs_are_separate_clusters(data_dir, tmp_path):
    other_dir = tmp_path / "other-data"
    try:
        with running_cluster(data_dir) as a, running_cluster(other_dir) as b:
            assert a.cluster_id != b.cluster_id
            assert a.supervisor_pid != b.supervisor_pid
            a.create_topic("shared-name", partitions=2, **SMALL)
            b.create_topic("shared-name", partitions=1, **SMALL)
            a.create_topic("only-in-a", **SMALL)
            assert set(a.topics()) == {"shared-name", "only-in-a"}
            assert set(b.topics()) == {"shared-name"}
            with pytest.raises(shmlog.UnknownTopic):
                b.describe_topic("only-in-a")
            ra, rb = partition_regions(data_dir), partition_regions(other_dir)
            assert len(ra) == 3 and len(rb) == 1 and not set(ra) & set(rb)
            assert all(a.cluster_id in n for n in ra) and all(b.cluster_id in n for n in rb)
            with a.producer() as pa, b.producer() as pb:
                pa.send("shared-name", b"from-a", partition=0)
                pb.send("shared-name", b"from-b", partition=0)
            with a.consumer("shared-name") as ca, b.consumer("shared-name") as cb:
                assert [m.value for m in collect(ca, 1, timeout=5)] == [b"from-a"]
                assert [m.value for m in collect(cb, 1, timeout=5)] == [b"from-b"]
                assert ca.consume(timeout=0.2) == [] and cb.consume(timeout=0.2) == []
            assert len(b.describe_topic("shared-name").partitions) == 1
    finally:
        stop_supervisor(other_dir)
    assert supervisors_of(other_dir) == []
    assert segments_of(other_dir) == []
    assert os.path.exists(other_dir / "cluster_id")
