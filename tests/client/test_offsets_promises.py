"""Kafka's promises on positions, through the Python API: a group commits
its position on close even when it read nothing; lag rows cover every
partition a group reads; a position out of range follows auto_offset_reset
(and never waits silently past the end); a bad seek names what was wrong."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from _broker_helpers import SMALL, collect, running_cluster

import shmlog
from shmlog.broker import metrics


def _produce(cluster, topic, values, partition=0):
    with cluster.producer() as producer:
        producer.send_batch(topic, values, partition=partition)
        producer.flush()


# ---------------------------------------------------------------- commit on close
def test_a_group_that_read_nothing_commits_its_position_on_close(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("orders", partitions=2, **SMALL)
        _produce(cluster, "orders", [b"old"])
        with cluster.consumer("orders", group="cg4", auto_offset_reset="latest") as c:
            assert c.poll(timeout=0.5) is None
            assert sorted(c.assignment()) == [("orders", 0), ("orders", 1)]
        desc = cluster.describe_group("cg4")
        assert sorted((p["partition"], p["committed"]) for p in desc["partitions"]) == [(0, 1), (1, 0)]
        # produced while nobody reads: the next start resumes where the
        # group was, not at "latest" again (which would skip these)
        _produce(cluster, "orders", [b"n0", b"n1"], partition=0)
        _produce(cluster, "orders", [b"n2"], partition=1)
        with cluster.consumer("orders", group="cg4", auto_offset_reset="latest") as c:
            got = collect(c, 3, timeout=10)
            assert sorted(m.value for m in got) == [b"n0", b"n1", b"n2"]



def test_asynchronous_commits_land_in_order_and_close_waits_for_them(data_dir):
    """commit(asynchronous=True) returns a Future; commits made one after
    another land in that order (the last one wins), and close() waits for
    one still under way. A commit the coordinator refuses (of a topic it
    does not know) raises from result(), as a synchronous one does."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("ac", partitions=2, **SMALL)
        _produce(cluster, "ac", [b"x"] * 50)
        with cluster.consumer("ac", group="acg", enable_auto_commit=False) as c:
            collect(c, 50, timeout=10)
            futures = [c.commit(offsets={("ac", 0): off}, asynchronous=True) for off in range(1, 41)]
            assert all(isinstance(f, Future) for f in futures)
            assert [f.result(timeout=10) for f in futures] == [None] * 40
            assert c.committed([("ac", 0)]) == {("ac", 0): 40}
            assert c.commit(offsets={("ac", 0): 41}) is None  # synchronous, as before
            with pytest.raises(shmlog.UnknownTopic, match="other"):
                c.commit(offsets={("other", 0): 1}, asynchronous=True).result(timeout=10)
            last = c.commit(offsets={("ac", 0): 50}, asynchronous=True)
        assert last.done()
        assert {(p["partition"], p["committed"]) for p in cluster.describe_group("acg")["partitions"]} >= {(0, 50)}


# ---------------------------------------------------------------- lag rows
def _rows(cluster, group):
    return [(r["partition"], r["committed"], r["end_offset"], r["lag"])
            for r in metrics.group_rows(cluster.describe_group(group))]


def test_lag_rows_list_every_partition_of_the_group(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("lt", partitions=3, **SMALL)
        for p in range(3):
            _produce(cluster, "lt", [b"x"] * (p + 2), partition=p)
        with cluster.consumer("lt", group="lg", enable_auto_commit=False) as c:
            collect(c, 9, timeout=10)
            # only partition 0 committed; the others have no offset yet
            c.commit(offsets={("lt", 0): 2})
            assert _rows(cluster, "lg") == [(0, 2, 2, 0), (1, None, 3, 3), (2, None, 4, 4)]
        # no member left: still every partition of the topic it has offsets on
        assert _rows(cluster, "lg") == [(0, 2, 2, 0), (1, None, 3, 3), (2, None, 4, 4)]
        # a partition added later shows too, lag counted from its start
        cluster.add_partitions("lt", 4)
        _produce(cluster, "lt", [b"y"] * 5, partition=3)
        assert _rows(cluster, "lg")[-1] == (3, None, 5, 5)
        assert cluster.groups()["lg"]["lag"] == 3 + 4 + 5
        # the Prometheus gauge gets a sample per partition
        text = metrics.prometheus({"groups": {"lg": metrics.group_rows(cluster.describe_group("lg"))}})
        lags = [ln for ln in text.splitlines() if ln.startswith("shmlog_group_lag{")]
        assert len(lags) == 4, text


def test_lag_of_a_group_with_no_commits_counts_from_its_reset_point(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("rt", partitions=2, **SMALL)
        _produce(cluster, "rt", [b"a", b"b", b"c"])
        with cluster.consumer("rt", group="early", auto_offset_reset="earliest", enable_auto_commit=False) as c:
            c.poll(timeout=0.2)
            assert _rows(cluster, "early") == [(0, None, 3, 3), (1, None, 0, 0)]
        with cluster.consumer("rt", group="late", auto_offset_reset="latest", enable_auto_commit=False) as c:
            c.poll(timeout=0.2)
            assert _rows(cluster, "late") == [(0, None, 3, 0), (1, None, 0, 0)]


# ---------------------------------------------------------------- out of range
@pytest.mark.parametrize("policy", ["earliest", "latest", "error"])
def test_a_seek_past_the_end_follows_auto_offset_reset(data_dir, policy):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        _produce(cluster, "t", [b"m%d" % i for i in range(5)])
        with cluster.consumer("t", auto_offset_reset=policy) as c:
            if policy == "error":
                with pytest.raises(shmlog.OffsetOutOfRange, match=r"'t' partition 0: offset 5000 is past the end"):
                    c.seek("t", 0, 5000)
                return
            c.seek("t", 0, 5000)
            want = {"earliest": 0, "latest": 5}[policy]
            assert c.position("t", 0) == want
            _produce(cluster, "t", [b"later"])
            m = collect(c, 1, timeout=5)[0]
            assert (m.offset, m.value) == ((0, b"m0") if policy == "earliest" else (5, b"later"))


def test_a_committed_offset_past_the_end_follows_auto_offset_reset(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        _produce(cluster, "t", [b"a", b"b"])
        with cluster.consumer("t", group="g", enable_auto_commit=False) as c:
            collect(c, 2, timeout=5)
            c.commit(offsets={("t", 0): 9})  # Kafka takes any offset; using it is what counts
        with cluster.consumer("t", group="g", auto_offset_reset="error", enable_auto_commit=False) as c:
            with pytest.raises(shmlog.OffsetOutOfRange, match="offset 9 is past the end offset 2"):
                collect(c, 1, timeout=5)
            c.seek("t", 0, 1)  # the application decides; reading goes on
            assert collect(c, 1, timeout=5)[0].value == b"b"
        with cluster.consumer("t", group="g", auto_offset_reset="earliest", enable_auto_commit=False) as c:
            assert [m.offset for m in collect(c, 2, timeout=5)] == [0, 1]


@pytest.mark.parametrize("offset", [-5, 1 << 64])
def test_a_bad_seek_names_the_partition(data_dir, offset):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with cluster.consumer("t") as c:
            with pytest.raises(shmlog.OffsetOutOfRange, match=rf"topic 't' partition 0: cannot seek to offset {offset}"):
                c.seek("t", 0, offset)
            with pytest.raises(TypeError, match="offset must be an int"):
                c.seek("t", 0, "5")


# ---------------------------------------------------------------- smaller promises
def test_closed_objects_say_closed(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        c = cluster.consumer("t")
        c.close()
        with pytest.raises(shmlog.Closed, match="Consumer is closed"):
            next(iter(c))
        other = shmlog.connect(data_dir)
        other.close()
        with pytest.raises(shmlog.Closed, match="Cluster is closed"):
            other.producer()
        with pytest.raises(shmlog.Closed, match="Cluster is closed"):
            other.consumer("t")


def test_header_values_must_be_bytes_like_as_keys_and_values(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        with cluster.producer() as producer:
            with pytest.raises(TypeError, match=r"header value must be bytes-like .* got str \(header 'trace'\)"):
                producer.send("t", b"v", headers=[("trace", "abc")])
            producer.send("t", b"v", headers=[("trace", b"abc"), ("none", None)])
        with cluster.consumer("t") as c:
            m = collect(c, 1, timeout=5)[0]
            assert m.value == b"v" and list(m.headers) == [("trace", b"abc"), ("none", None)]


def test_a_data_dir_that_is_a_file_is_named_as_such(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(shmlog.ShmlogError, match="is not a directory"):
        shmlog.connect(f)
