"""send()'s fast branches in C (shmlog.core._send, csrc/send.c): each
common form is taken there, not by the Python path (Producer._send_py),
lands where Python would put it (murmur2 for keys, the partition given,
the sticky one otherwise), in each partition's send order, with nothing
lost or doubled when threads race mixed forms; everything it does not
take goes to _send_py whole, so errors read as before.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import pytest
from _broker_helpers import ROOMY, collect, kafka_partition, running_cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

import shmlog
from shmlog import aio
from shmlog.core import _send

TOPIC = "csend"
HDRS = [("trace", b"00-4bf92f35")]
TS = 1_700_000_000_000


def _read_all(cluster, want, topic=TOPIC):
    with cluster.consumer(topic, auto_offset_reset="earliest") as consumer:
        return collect(consumer, want, timeout=30)


class _SlowPath:
    """Counts the calls that reach Producer._send_py (the Python path)."""

    def __init__(self, producer):
        self.calls = []
        self._real = producer._send_py
        producer._send_py = self

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self._real(*args, **kwargs)


def test_the_producer_is_the_c_type_and_keeps_its_signature(data_dir):
    import inspect

    with running_cluster(data_dir) as cluster:
        with cluster.producer() as producer:
            assert isinstance(producer, _send._SendBase)
            assert list(inspect.signature(type(producer).send).parameters) == [
                "self", "topic", "value", "key", "headers", "partition", "timestamp_ms", "on_delivery"]


def test_every_common_form_is_taken_in_c_and_placed_as_in_kafka(data_dir):
    """A paced-free stream of each form (no reader): none reaches the
    Python path once the topic is known and the header list encoded, and
    each lands where it should, in send order."""
    parts = 4
    got_cb = []

    def cb(err, md):
        got_cb.append((err, md.partition, md.offset))

    forms = [
        ("bare", lambda p, v, i: p.send(TOPIC, v), None),
        ("partition", lambda p, v, i: p.send(TOPIC, v, partition=i % parts), lambda i, k: i % parts),
        ("positional", lambda p, v, i: p.send(TOPIC, v, None, None, 2), lambda i, k: 2),
        ("keyed", lambda p, v, i: p.send(TOPIC, v, key=b"user-%d" % i),
         lambda i, k: kafka_partition(k, parts)),
        ("headers", lambda p, v, i: p.send(TOPIC, v, headers=HDRS), None),
        ("timestamp", lambda p, v, i: p.send(TOPIC, v, timestamp_ms=TS + i), None),
        ("on_delivery", lambda p, v, i: p.send(TOPIC, v, on_delivery=cb), None),
        ("keyed+headers", lambda p, v, i: p.send(TOPIC, v, key=b"user-%d" % i, headers=HDRS),
         lambda i, k: kafka_partition(k, parts)),
        ("partition+headers+ts", lambda p, v, i: p.send(TOPIC, v, partition=1, headers=HDRS,
                                                        timestamp_ms=TS + i), lambda i, k: 1),
    ]
    n = 600
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=parts, **ROOMY)
        with cluster.producer() as producer:
            producer.send(TOPIC, b"first", headers=HDRS)  # the topic's state, the header list encoded
            producer.flush()
            slow = _SlowPath(producer)
            for f, (_, send, _) in enumerate(forms):
                for i in range(n):
                    send(producer, b"%d:%d" % (f, i), i)
                producer.flush()
            assert slow.calls == [], f"{len(slow.calls)} sends took the Python path"
        got = _read_all(cluster, 1 + n * len(forms))
    assert len(got) == 1 + n * len(forms)
    assert len({m.value for m in got}) == len(got), "a message was doubled"
    seen = {}
    for m in got:
        if m.value == b"first":
            continue
        f, i = map(int, m.value.split(b":"))
        name, _, where = forms[f]
        seen.setdefault((f, m.partition), []).append(i)
        if where is not None:
            assert m.partition == where(i, m.key), f"{name} message {i} on partition {m.partition}"
        if "keyed" in name:
            assert m.key == b"user-%d" % i
        if "headers" in name:
            assert list(m.headers) == HDRS
        if name in ("timestamp", "partition+headers+ts"):
            assert m.timestamp_ms == TS + i
    for (f, p), seq in seen.items():
        assert seq == sorted(seq), f"form {forms[f][0]} left send order on partition {p}"
    assert len(got_cb) == n and all(err is None for err, _, _ in got_cb)
    offsets = {(p, o) for _, p, o in got_cb}
    assert offsets == {(m.partition, m.offset) for m in got if m.value.startswith(b"6:")}


def _committed(st):
    """Each partition's end offset as this producer committed it (any path)."""
    return [max(end, st.kq_ends[p]) for p, end in enumerate(st.committed_end)]


def test_a_lone_send_still_goes_at_once_to_a_waiting_reader(data_dir):
    """The hungry-reader rule stays Python's: with a reader waiting, each
    paced message of every fast form is committed at once, not left for
    the flusher."""
    parts = 3
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=parts, **ROOMY)
        with cluster.producer() as producer, \
                cluster.consumer(TOPIC, auto_offset_reset="earliest") as consumer:
            for p in range(parts):  # each partition's producer slot taken
                producer.send(TOPIC, b"warm", partition=p)
            producer.flush()
            assert len(collect(consumer, parts, timeout=5)) == parts
            slow = _SlowPath(producer)
            st = producer._topics[TOPIC]
            for i in range(30):
                for form in ("bare", "partition", "keyed"):
                    # the reader is asleep on the partitions by now
                    time.sleep(0.002)
                    before = _committed(st)
                    if form == "bare":
                        producer.send(TOPIC, b"b%d" % i)
                    elif form == "partition":
                        producer.send(TOPIC, b"p%d" % i, partition=i % parts)
                    else:
                        producer.send(TOPIC, b"k%d" % i, key=b"key-%d" % i)
                    # committed inside send(), not queued for the flusher
                    assert sum(_committed(st)) == sum(before) + 1, \
                        f"{form} message {i} was queued, not committed at once"
                    m = consumer.poll(timeout=5.0)
                    assert m is not None
                    if form == "partition":
                        assert m.partition == i % parts
                    if form == "keyed":
                        assert m.partition == kafka_partition(b"key-%d" % i, parts)
            assert slow.calls == []


def test_queued_rich_records_live_in_the_record_array_and_the_collector_sees_only_callbacks(data_dir):
    """send()'s C branch pushes a rich record straight into the queue's
    record array (csrc/rich_queue.h): read back they are the tuples the
    Python path appends, in send order, with their partition (-1: the
    key's) and timestamp (None: the commit's); the collector is shown only
    their callbacks (a callback may close a cycle, bytes and ints cannot)."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, **ROOMY)
        delivered = []
        with cluster.producer(linger_ms=60_000) as producer:
            producer.send(TOPIC, b"warm")  # the topic known: C takes the sends below
            producer.send(TOPIC, b"h0", headers=HDRS)  # the Python path encodes HDRS once
            producer.flush()
            slow = _SlowPath(producer)
            st = producer._topics[TOPIC]

            def cb(err, md):
                delivered.append((err, md))

            producer.send(TOPIC, b"h", headers=HDRS)
            producer.send(TOPIC, b"t", timestamp_ms=TS, partition=1)
            producer.send(TOPIC, b"k", key=b"k", headers=HDRS)
            producer.send(TOPIC, b"cb", on_delivery=cb)
            producer.send(TOPIC, b"n", partition=0, headers=HDRS, timestamp_ms=TS)
            assert slow.calls == []
            recs = list(st.rq)
            assert [r[2] for r in recs] == [b"h", b"t", b"k", b"cb", b"n"]
            assert [r[0] for r in recs] == [st.sticky, 1, -1, st.sticky, 0]
            assert [r[1] for r in recs] == [None, None, b"k", None, None]
            assert [r[4] for r in recs] == [None, TS, None, None, TS]
            assert [r[5] for r in recs] == [None, None, None, cb, None]
            assert recs[0][3] == recs[2][3] == recs[4][3] == st.h_enc and recs[1][3] == b""
            assert gc.get_referents(st.rq) == [cb]
            assert gc.is_tracked(st.rq)
            del recs
        got = _read_all(cluster, 7)
    assert sorted(m.value for m in got) == sorted([b"warm", b"h0", b"h", b"t", b"k", b"cb", b"n"])
    assert len(delivered) == 1 and delivered[0][0] is None


def test_a_cycle_through_a_queued_callback_is_collected_with_its_queue():
    """The queue holds its callbacks strongly and shows them to the
    collector: a producer state that a queued callback refers back to is
    garbage once nothing else holds it (tp_traverse/tp_clear)."""
    from shmlog.core._messages import RichQueue

    class Owner:
        pass

    owner = Owner()
    owner.rq = RichQueue()
    owner.rq.append((0, None, b"v", b"", None, lambda err, md, o=owner: o))
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None


def test_rich_queue_take_putback_recycle_keep_order_and_references():
    """A commit's batch: take() empties the queue, sends meanwhile queue
    behind, putback() returns the uncommitted ones ahead of them in their
    order, recycle() releases the rest; nothing leaks a reference."""
    import sys
    from array import array

    from shmlog.core._messages import RichQueue

    values = [b"v%d" % i + bytes(100) for i in range(600)]  # more than one growth
    before = [sys.getrefcount(v) for v in values]
    q = RichQueue()
    for i, v in enumerate(values[:500]):
        q.append((i % 3, b"k" if i % 2 else None, v, b"", i if i % 5 else None, None))
    assert len(q) == 500 and q.first_partition == 0
    assert q.nbytes(10) == sum(len(v) + 10 for v in values[:500]) + 250
    batch = q.take()
    assert len(q) == 0 and len(batch) == 500 and batch.address != 0
    for v in values[500:]:
        q.append((-1, b"kk", v, b"", None, None))
    del v
    offsets = array("Q", [(1 << 64) - 1 if i % 7 == 0 else i for i in range(500)])
    back = q.putback(batch, offsets)
    assert back == len(range(0, 500, 7))
    assert [r[2] for r in q] == [values[i] for i in range(0, 500, 7)] + values[500:]
    assert [r[2] for r in batch] == [values[i] for i in range(500) if i % 7]
    assert q[0] == (0, None, values[0], b"", None, None) and q[1] == (1, b"k", values[7], b"", 7, None)
    assert q.flags & 1 and not q.flags & 8  # keys, no callbacks
    q.recycle(batch)
    assert len(batch) == 0
    rest = q.take()
    q.recycle(rest)
    assert len(q) == 0
    assert [sys.getrefcount(v) for v in values] == before
    with pytest.raises(IndexError):
        q[0]
    with pytest.raises(ValueError, match="no partition and no key"):
        q.append((-1, None, b"v", b"", None, None))
    with pytest.raises(TypeError, match="value must be bytes or None"):
        q.append((0, None, "text", b"", None, None))
    with pytest.raises(TypeError, match="tuple"):
        q.append([0, None, b"v", b"", None, None])
    with pytest.raises(ValueError):
        q.recycle(q)
    assert len(q) == 0


def test_linger_ms_still_holds_messages_back(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, **ROOMY)
        with cluster.producer(linger_ms=300) as producer, \
                cluster.consumer(TOPIC, auto_offset_reset="earliest") as consumer:
            producer.send(TOPIC, b"warm")  # the topic known: C takes the sends below
            producer.flush()
            assert consumer.poll(timeout=5.0).value == b"warm"
            t0 = time.monotonic()
            # (in this order: a plain send behind queued keyed records would
            # commit them first, to keep the order between the queues)
            producer.send(TOPIC, b"a")
            producer.send(TOPIC, b"c", partition=1)
            producer.send(TOPIC, b"b", key=b"k")
            assert consumer.poll(timeout=0.1) is None
            got = collect(consumer, 3, timeout=10)
            assert time.monotonic() - t0 >= 0.25
    assert sorted(m.value for m in got) == [b"a", b"b", b"c"]


def _bad_calls():
    big = b"x" * 2000
    return [
        ("str value", (TOPIC, "text"), {}),
        ("str key", (TOPIC, b"v"), {"key": "k"}),
        ("partition too big", (TOPIC, b"v"), {"partition": 9}),
        ("partition negative", (TOPIC, b"v"), {"partition": -1}),
        ("partition a bool", (TOPIC, b"v"), {"partition": True}),
        ("partition a float", (TOPIC, b"v"), {"partition": 1.0}),
        ("timestamp negative", (TOPIC, b"v"), {"timestamp_ms": -1}),
        ("timestamp a float", (TOPIC, b"v"), {"timestamp_ms": 1.5}),
        ("timestamp too big", (TOPIC, b"v"), {"timestamp_ms": 1 << 63}),
        ("value too large", (TOPIC, big), {}),
        ("keyed too large", (TOPIC, big), {"key": b"k"}),
        ("partitioned too large", (TOPIC, big), {"partition": 0}),
        ("bad headers", (TOPIC, b"v"), {"headers": [("h", "str")]}),
        ("unknown keyword", (TOPIC, b"v"), {"partitoin": 1}),
        ("value twice", (TOPIC, b"v"), {"value": b"w"}),
        ("no value", (TOPIC,), {}),
        ("too many", (TOPIC, b"v", None, None, None, None, None, None), {}),
        ("unknown topic", ("no-such-topic", b"v"), {}),
        ("unhashable topic", ([1], b"v"), {}),
    ]


@pytest.mark.parametrize("name,args,kwargs", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_errors_are_the_python_paths_own(data_dir, name, args, kwargs):
    """Whatever C does not take goes to _send_py unchanged: the same
    exception, the same message, and nothing queued."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, storage="memory", max_message_bytes=1000)
        with cluster.producer() as producer:
            producer.send(TOPIC, b"ok")  # the topic is known: C would take it
            with pytest.raises(Exception) as want:
                producer._send_py(*args, **kwargs)
            with pytest.raises(Exception) as have:
                producer.send(*args, **kwargs)
            assert type(have.value) is type(want.value)
            assert str(have.value) == str(want.value)
            producer.flush()
        got = _read_all(cluster, 1)
    assert [m.value for m in got] == [b"ok"]


def test_an_async_error_is_raised_by_the_next_send_of_every_form(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, **ROOMY)
        with cluster.producer() as producer:
            producer.send(TOPIC, b"ok")
            for kwargs in ({}, {"partition": 1}, {"key": b"k"}, {"headers": HDRS}):
                producer._error = shmlog.errors.BufferFull("from the flusher")
                with pytest.raises(shmlog.errors.BufferFull, match="from the flusher"):
                    producer.send(TOPIC, b"lost", **kwargs)
                assert producer._error is None
            producer.flush()
        got = _read_all(cluster, 1)
    assert [m.value for m in got] == [b"ok"]


def test_after_close_send_says_closed_and_the_state_lets_go(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, **ROOMY)
        producer = cluster.producer()
        producer.send(TOPIC, b"a")
        st = producer._topics[TOPIC]
        header_view = weakref.ref(st.waiters[1])
        producer.close()
        with pytest.raises(shmlog.errors.Closed):
            producer.send(TOPIC, b"b")
        # unbound: C no longer holds the header mappings' views (the state
        # itself may live on), and a second _unbind is harmless
        gc.collect()
        assert header_view() is None, "the state still holds a view of a partition header"
        st._unbind()
        with pytest.raises(AttributeError):
            st.next_hungry = None  # read-only: C holds its buffer
        got = _read_all(cluster, 1)
    assert [m.value for m in got] == [b"a"]


def _thread_script():
    # (form, n): 0 bare, 1 partition, 2 keyed, 3 headers, 4 timestamp,
    # 5 on_delivery, 6 keyed+headers
    return hst.lists(hst.tuples(hst.integers(0, 6), hst.integers(1, 300)), min_size=1, max_size=6)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(scripts=hst.lists(_thread_script(), min_size=2, max_size=4), parts=hst.sampled_from([1, 3, 7]))
def test_threads_racing_mixed_forms_match_the_model(data_dir, scripts, parts):
    """Several threads send runs of mixed forms on one producer. Model:
    every message exactly once; keyed ones on murmur2's partition,
    explicit ones on theirs; within a partition each thread's messages in
    its send order; headers and timestamps kept; each callback once."""
    topic = f"race-{parts}-{time.monotonic_ns()}"
    delivered = []

    def cb(err, md):
        delivered.append((err, md.partition, md.offset))

    with running_cluster(data_dir) as cluster:
        cluster.create_topic(topic, partitions=parts, storage="memory", chunk_bytes=1 << 18, chunk_count=8)
        expect = {}  # value -> (partition or None, key, headers, timestamp)
        with cluster.producer() as producer:
            producer.send(topic, b"warm", headers=HDRS)
            start = threading.Barrier(len(scripts))

            def run(t, script):
                start.wait()
                i = 0
                for form, n in script:
                    for _ in range(n):
                        v = b"%d:%d" % (t, i)
                        k = b"k-%d-%d" % (t, i)
                        if form == 0:
                            producer.send(topic, v)
                        elif form == 1:
                            producer.send(topic, v, partition=i % parts)
                        elif form == 2:
                            producer.send(topic, v, key=k)
                        elif form == 3:
                            producer.send(topic, v, headers=HDRS)
                        elif form == 4:
                            producer.send(topic, v, timestamp_ms=TS + i)
                        elif form == 5:
                            producer.send(topic, v, on_delivery=cb)
                        else:
                            producer.send(topic, v, key=k, headers=HDRS)
                        i += 1

            for t, script in enumerate(scripts):
                i = 0
                for form, n in script:
                    for _ in range(n):
                        k = b"k-%d-%d" % (t, i)
                        where = (i % parts if form == 1 else
                                 kafka_partition(k, parts) if form in (2, 6) else None)
                        expect[b"%d:%d" % (t, i)] = (where, k if form in (2, 6) else None,
                                                     HDRS if form in (3, 6) else [],
                                                     TS + i if form == 4 else None, form == 5)
                        i += 1
            threads = [threading.Thread(target=run, args=(t, s)) for t, s in enumerate(scripts)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            producer.flush()
        got = _read_all(cluster, 1 + len(expect), topic=topic)
        cluster.delete_topic(topic)
    got = [m for m in got if m.value != b"warm"]
    assert sorted(m.value for m in got) == sorted(expect), "lost or doubled messages"
    order = {}
    for m in got:
        where, key, headers, ts, _ = expect[m.value]
        if where is not None:
            assert m.partition == where
        assert m.key == key
        assert list(m.headers or []) == headers
        if ts is not None:
            assert m.timestamp_ms == ts
        t, i = map(int, m.value.split(b":"))
        order.setdefault((t, m.partition), []).append((m.offset, i))
    for seq in order.values():
        assert [i for _, i in sorted(seq)] == sorted(i for _, i in seq), "a thread's order was broken"
    with_cb = {(m.partition, m.offset) for m in got if expect[m.value][4]}
    assert len(delivered) == len(with_cb) and {(p, o) for _, p, o in delivered} == with_cb
    assert all(err is None for err, _, _ in delivered)


def test_aio_rich_forms_take_the_c_path(data_dir):
    """shmlog.aio queues its rich forms through the synchronous send():
    the C branch, with the future as on_delivery."""

    async def main():
        async with aio.connect(data_dir) as cluster:
            await cluster.create_topic(TOPIC, partitions=2, **ROOMY)
            async with cluster.producer() as p:
                await (await p.send(TOPIC, b"first", headers=HDRS))
                slow = _SlowPath(p.sync)
                futs = [await p.send(TOPIC, b"%d" % i, headers=HDRS, timestamp_ms=TS + i, partition=i % 2)
                        for i in range(500)]
                metas = await asyncio.gather(*futs)
                assert slow.calls == []
            return metas

    with running_cluster(data_dir) as cluster:
        metas = asyncio.run(main())
        got = _read_all(cluster, 501)
    assert [(md.partition, md.timestamp) for md in metas] == [(i % 2, TS + i) for i in range(500)]
    by_offset = {(m.partition, m.offset): m for m in got}
    for i, md in enumerate(metas):
        m = by_offset[(md.partition, md.offset)]
        assert m.value == b"%d" % i and list(m.headers) == HDRS and m.timestamp_ms == TS + i
