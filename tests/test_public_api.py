"""Pins the public surface: shmlog.__all__, and every name and parameter
that shared/API.md promises. A rename or a dropped keyword fails here
before it fails a user."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import shmlog

EXPORTED = {
    "BrokerNotRunning", "BufferFull", "Closed", "Cluster", "Consumer", "CorruptBatch", "FencedMember",
    "GroupError", "InvalidConfig", "InvalidTopic", "Message", "MessageBatch", "MessageTooLarge",
    "OffsetOutOfRange", "PartitionInfo", "Producer", "RecordMetadata", "ShmlogError", "StorageError",
    "TopicExists", "TopicInfo", "UnknownPartition", "UnknownTopic", "connect",
}
ERRORS = {
    "ShmlogError", "BrokerNotRunning", "BufferFull", "Closed", "CorruptBatch", "FencedMember", "GroupError",
    "InvalidConfig", "InvalidTopic", "MessageTooLarge", "OffsetOutOfRange", "StorageError", "TopicExists",
    "UnknownPartition", "UnknownTopic",
}
CLUSTER_METHODS = {
    "create_topic", "topics", "describe_topic", "add_partitions", "delete_topic", "alter_topic",
    "producer", "consumer", "groups", "describe_group", "mirror", "shutdown", "close", "__enter__", "__exit__",
}
PRODUCER_METHODS = {"send", "send_batch", "flush", "close", "__enter__", "__exit__"}
CONSUMER_METHODS = {
    "poll", "consume", "consume_batch", "commit", "seek", "seek_to_beginning", "seek_to_end",
    "offsets_for_times", "position", "assignment", "assign", "close", "__iter__", "__enter__", "__exit__",
}
MESSAGE_FIELDS = {"topic", "partition", "offset", "key", "value", "headers", "timestamp_ms"}
BATCH_FIELDS = {"topic", "partition", "base_offset", "values", "keys", "timestamps_ms", "__len__", "__iter__"}

API_MD = Path(__file__).resolve().parents[2] / "shared" / "API.md"


def _params(fn):
    return inspect.signature(fn).parameters


def _has_kwargs(fn, *names):
    ps = _params(fn)
    missing = [n for n in names if n not in ps]
    assert not missing, f"{fn.__qualname__} lacks {missing}"


def test_all_is_pinned():
    assert set(shmlog.__all__) == EXPORTED
    assert len(shmlog.__all__) == len(set(shmlog.__all__))
    for name in shmlog.__all__:
        assert hasattr(shmlog, name), name
    assert isinstance(shmlog.__version__, str)


def test_error_hierarchy():
    for name in ERRORS:
        cls = getattr(shmlog, name)
        assert issubclass(cls, shmlog.ShmlogError), name
        err = cls("message naming it", what="events")
        assert err.what == "events" and hasattr(err, "code")
    for name in ("InvalidTopic", "InvalidConfig", "MessageTooLarge"):
        assert issubclass(getattr(shmlog, name), ValueError)
    assert issubclass(shmlog.UnknownTopic, KeyError)
    assert str(shmlog.UnknownTopic("unknown topic 'x'")).startswith("unknown topic 'x'")  # no KeyError quotes
    assert shmlog.BrokerNotRunning.HINT and "serve" in shmlog.BrokerNotRunning.HINT


def test_connect_signature():
    ps = _params(shmlog.connect)
    names = list(ps)
    assert names[0] == "data_dir"
    assert ps["start"].kind is inspect.Parameter.KEYWORD_ONLY and ps["start"].default is True
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values())


def test_cluster_methods():
    missing = {m for m in CLUSTER_METHODS if not callable(getattr(shmlog.Cluster, m, None))}
    assert not missing
    _has_kwargs(shmlog.Cluster.create_topic, "name", "partitions")
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _params(shmlog.Cluster.create_topic).values())
    _has_kwargs(shmlog.Cluster.consumer, "topics", "group")
    _has_kwargs(shmlog.Cluster.add_partitions, "name", "partitions")
    assert isinstance(shmlog.Cluster.closed, property)


def test_producer_methods_and_parameters():
    missing = {m for m in PRODUCER_METHODS if not callable(getattr(shmlog.Producer, m, None))}
    assert not missing
    _has_kwargs(shmlog.Producer.__init__, "linger_ms", "batch_bytes", "compression", "max_block_ms", "partitioner")
    _has_kwargs(shmlog.Producer.send, "topic", "value", "key", "headers", "partition", "timestamp_ms",
                "on_delivery")
    _has_kwargs(shmlog.Producer.send_batch, "topic", "values", "keys", "partition")
    _has_kwargs(shmlog.Producer.flush, "timeout", "durable")
    defaults = {k: p.default for k, p in _params(shmlog.Producer.__init__).items()}
    assert defaults["linger_ms"] == 0 and defaults["compression"] is None
    assert defaults["max_block_ms"] == 60_000 and defaults["partitioner"] == "murmur2"
    assert defaults["batch_bytes"] == 64 << 10
    assert _params(shmlog.Producer.flush)["durable"].default is False


def test_consumer_methods_and_parameters():
    missing = {m for m in CONSUMER_METHODS if not callable(getattr(shmlog.Consumer, m, None))}
    assert not missing
    _has_kwargs(shmlog.Consumer.__init__, "topics", "group", "auto_offset_reset", "enable_auto_commit",
                "isolation", "on_assign", "on_revoke")
    defaults = {k: p.default for k, p in _params(shmlog.Consumer.__init__).items()}
    assert defaults["group"] is None and defaults["auto_offset_reset"] == "earliest"
    assert defaults["enable_auto_commit"] is True and defaults["isolation"] == "committed"
    _has_kwargs(shmlog.Consumer.poll, "timeout")
    _has_kwargs(shmlog.Consumer.consume, "max_messages", "timeout")
    _has_kwargs(shmlog.Consumer.consume_batch, "max_messages", "timeout")
    _has_kwargs(shmlog.Consumer.commit, "offsets")
    _has_kwargs(shmlog.Consumer.seek, "topic", "partition", "offset")
    _has_kwargs(shmlog.Consumer.offsets_for_times, "topic", "timestamps")
    _has_kwargs(shmlog.Consumer.position, "topic", "partition")
    _has_kwargs(shmlog.Consumer.assign, "partitions")


def test_record_types():
    m = shmlog.Message("t", 1, 2, b"k", b"v", [("h", b"x")], 3)
    assert {f: getattr(m, f) for f in MESSAGE_FIELDS} == {
        "topic": "t", "partition": 1, "offset": 2, "key": b"k", "value": b"v", "headers": [("h", b"x")],
        "timestamp_ms": 3}
    missing = {f for f in BATCH_FIELDS if not hasattr(shmlog.MessageBatch, f)}
    assert not missing
    assert shmlog.RecordMetadata._fields == ("topic", "partition", "offset", "timestamp")
    assert {f.name for f in dataclasses.fields(shmlog.TopicInfo)} >= {"name", "partitions", "config"}
    assert {f.name for f in dataclasses.fields(shmlog.PartitionInfo)} >= {
        "partition", "start_offset", "end_offset", "durable_offset", "bytes"}


def test_names_in_api_md_exist():
    if not API_MD.exists():
        pytest.skip(f"{API_MD} is not beside this checkout")
    text = API_MD.read_text()
    owners = {
        "cluster": shmlog.Cluster, "producer": shmlog.Producer, "consumer": shmlog.Consumer,
        "batch": shmlog.MessageBatch, "msg": shmlog.Message, "shmlog": shmlog,
    }
    checked = 0
    for var, owner in owners.items():
        for name in set(re.findall(rf"\b{var}\.([A-Za-z_]\w*)", text)):
            if var == "shmlog" and not (name[0].isupper() or name == "connect"):
                continue
            assert hasattr(owner, name), f"API.md uses {var}.{name}, which does not exist"
            checked += 1
    assert checked >= 30, f"only {checked} names found in API.md: did its format change?"
    for err in set(re.findall(r"shmlog\.([A-Z]\w+)", text)):
        assert issubclass(getattr(shmlog, err), shmlog.ShmlogError) and err in shmlog.__all__
