"""Messages built per batch in C (csrc/messages.c via shmlog/client/messages.py):
every field exactly as sent through each way of reading (poll, consume,
iteration, consume_batch), header lists parsed in C, and the GC rule (a
Message of atomic fields is untracked, one with a headers list is not).
"""

from __future__ import annotations

import copy
import gc
import multiprocessing as mp
import pickle

import pytest
from _broker_helpers import ROOMY, running_cluster
from shmlog.core._messages import headers as header_lists

import shmlog
from shmlog.client.messages import Message, batch_messages
from shmlog.core.codec import encode_headers

TS = 1_700_000_000_000

# (key, value, headers, timestamp_ms) per record: None keys and values,
# empty values, header values of None and b"", a non-ASCII header key,
# several headers, and records without headers among ones with
RECORDS = [
    (None, b"plain", None, TS),
    (b"k1", b"", [("trace", b"abc")], TS + 1),
    (None, None, [("a", b"1"), ("b\u00e9", None), ("c", b"")], TS + 2),
    (b"", b"x" * 3000, None, TS + 3),
    (b"k4", b"v4", [], TS + 4),
    (b"k5", None, None, TS + 5),
]


def _expected(partition=0):
    # a record sent without headers reads back as () when no record of its
    # read had headers, else [] (as before the C path)
    return [("t", partition, off, k, v, list(h) if h is not None else [], ts)
            for off, (k, v, h, ts) in enumerate(RECORDS)]


def _send_all(cluster, records, partition=0):
    with cluster.producer() as p:
        for k, v, h, ts in records:
            p.send("t", v, key=k, headers=h, partition=partition, timestamp_ms=ts)


def _fields(m):
    return (m.topic, m.partition, m.offset, m.key, m.value,
            list(m.headers), m.timestamp_ms)


@pytest.mark.parametrize("how", ["consume", "iterate", "poll", "batch"])
def test_every_field_as_sent(data_dir, how):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=2, **ROOMY)
        _send_all(cluster, RECORDS, partition=1)
        with cluster.consumer("t") as consumer:
            got = []
            while len(got) < len(RECORDS):
                if how == "consume":
                    got += consumer.consume(10_000, timeout=5)
                elif how == "poll":
                    got.append(consumer.poll(timeout=5))
                elif how == "batch":
                    got += list(consumer.consume_batch(timeout=5))
                else:
                    for m in consumer:
                        got.append(m)
                        if len(got) == len(RECORDS):
                            break
        assert all(type(m) is shmlog.Message for m in got)
        assert [_fields(m) for m in got] == _expected(partition=1)
        assert all(isinstance(m.headers, list) for m in got)


def _echo(q_in, q_out):
    q_out.put([(type(m).__name__, _fields(m)) for m in q_in.get(timeout=30)])


def test_messages_pickle_copy_and_cross_a_multiprocessing_queue(data_dir):
    """A worker pool's habit: consumed Messages handed to another process
    through a multiprocessing queue arrive as Messages, every field intact."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **ROOMY)
        _send_all(cluster, RECORDS)
        with cluster.consumer("t") as consumer:
            got = []
            while len(got) < len(RECORDS):
                got += consumer.consume(10_000, timeout=5)
    want = _expected()
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(got, proto))
        assert all(type(m) is Message for m in back) and [_fields(m) for m in back] == want, proto
    assert [_fields(copy.copy(m)) for m in got] == want
    assert [_fields(m) for m in copy.deepcopy(got)] == want
    ctx = mp.get_context("spawn")
    q_in, q_out = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_echo, args=(q_in, q_out))
    proc.start()
    try:
        q_in.put(got)
        assert q_out.get(timeout=60) == [("Message", w) for w in want]
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_unkeyed_run_without_headers(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **ROOMY)
        values = [b"v%d" % i for i in range(5000)] + [b""]
        with cluster.producer() as p:
            for v in values:
                p.send("t", v, partition=0)
        with cluster.consumer("t") as consumer:
            got = []
            for m in consumer:
                got.append(m)
                if len(got) == len(values):
                    break
        assert [m.value for m in got] == values
        assert [m.offset for m in got] == list(range(len(values)))
        assert {(m.topic, m.partition, m.key, m.headers) for m in got} == {("t", 0, None, ())}
        assert all(isinstance(m.timestamp_ms, int) and m.timestamp_ms > 0 for m in got)


def test_build_matches_the_tuple_and_the_gc_rule():
    offsets = [7, 9]
    ms = batch_messages("t", 3, offsets, [None, b"k"], [b"a", None], None, [1, 2])
    assert ms == [Message("t", 3, 7, None, b"a", (), 1), Message("t", 3, 9, b"k", None, (), 2)]
    assert all(type(m) is Message for m in ms)
    assert not any(gc.is_tracked(m) for m in ms)  # all atomic: untracked, as CPython does for tuples
    dense = batch_messages("t", 0, range(5, 8), [None] * 3, [b"x"] * 3, None, 42)
    assert [m.offset for m in dense] == [5, 6, 7] and {m.timestamp_ms for m in dense} == {42}
    with_headers = batch_messages("t", 0, range(2), [None] * 2, [b"x"] * 2, [[("h", b"1")], []], [0, 0])
    assert all(gc.is_tracked(m) for m in with_headers)  # a mutable list inside: the GC must see it
    # a cycle through a headers list is still collected
    m = with_headers[0]
    m.headers.append(m)
    del m, with_headers
    assert gc.collect() >= 1
    with pytest.raises(AttributeError):  # the fields are read-only, as a tuple's items are
        ms[0].value = b"changed"
    assert ms[0].value == b"a" and ms[0][4] == b"a"
    with pytest.raises(ValueError):
        batch_messages("t", 0, [1], [None], [b"a", b"b"], None, [0, 0])


def test_header_sections_parse_in_c_and_refuse_what_does_not_parse():
    sec = encode_headers([("a", b"1"), ("b\u00e9", None), ("c", b"")])
    buf = sec + b"\x02\x7f" + sec[:4]
    got = header_lists(buf, [0, 0, len(sec), len(sec) + 2, len(buf) - 1],
                       [len(sec), 0, 2, 4, 5])
    assert got[0] == [("a", b"1"), ("b\u00e9", None), ("c", b"")]
    assert got[1] == []
    assert got[2] is None  # a key longer than the section
    assert got[3] is None  # cut short
    assert got[4] is None  # past the end of the buffer
    assert header_lists(encode_headers([("k", b"v" * 300)]), [0], [306 + 1]) == [None]
    big = encode_headers([("k" * 200, b"v" * 300)])
    assert header_lists(big, [0], [len(big)]) == [[("k" * 200, b"v" * 300)]]
