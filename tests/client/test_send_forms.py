"""Every form of send() through its fast path: keyed (hashed per queue in C),
explicit partition, and their mixes with the bare form, the rich forms
(headers, timestamps, on_delivery) and send_batch. What must hold: Kafka's
placement for every key, each partition in send order, nothing lost or
doubled, with one thread and with several.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _broker_helpers import ROOMY, by_partition, collect, kafka_partition, running_cluster

TOPIC = "forms"


def _read_all(cluster, want, topic=TOPIC):
    with cluster.consumer(topic, auto_offset_reset="earliest") as consumer:
        return collect(consumer, want, timeout=30)


@pytest.mark.parametrize("partitions", [1, 4, 7, 256])
def test_keyed_never_repeating_keys_land_on_murmur2(data_dir, partitions):
    topic = {"storage": "memory", "chunk_bytes": 65536, "chunk_count": 4} if partitions == 256 else ROOMY
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=partitions, **topic)
        n = 3000
        with cluster.producer() as producer:
            for i in range(n):
                producer.send(TOPIC, b"v%d" % i, key=b"user-%d" % i)
        got = _read_all(cluster, n)
    assert len(got) == n
    for m in got:
        i = int(m.value[1:])
        assert m.key == b"user-%d" % i
        assert m.partition == kafka_partition(m.key, partitions)
    for msgs in by_partition(got).values():
        seq = [int(m.value[1:]) for m in msgs]
        assert seq == sorted(seq), "a partition's records left send order"
        assert [m.offset for m in msgs] == list(range(msgs[0].offset, msgs[0].offset + len(msgs)))


def test_explicit_partition_fast_path_keeps_order_and_placement(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=3, **ROOMY)
        n = 5000
        with cluster.producer() as producer:
            for i in range(n):
                producer.send(TOPIC, b"%d" % i, partition=i % 3)
            with pytest.raises(shmlog_errors().UnknownPartition):
                producer.send(TOPIC, b"x", partition=3)
            with pytest.raises(shmlog_errors().UnknownPartition):
                producer.send(TOPIC, b"x", partition=-1)
        got = _read_all(cluster, n)
    for p, msgs in by_partition(got).items():
        vals = [int(m.value) for m in msgs]
        assert vals == list(range(p, n, 3))


def shmlog_errors():
    import shmlog

    return shmlog


def test_forms_mixed_keep_each_partitions_send_order(data_dir):
    """Keyed sends queue per topic, the others per partition: whatever the
    mix, each partition must see exactly send order."""
    calls = []

    def cb(err, md):
        calls.append((err, md))

    parts = 4
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=parts, **ROOMY)
        sent = []  # (partition, value) in send order
        with cluster.producer() as producer:
            st = None
            for i in range(4000):
                v = b"%d" % i
                form = (i * 7919) % 9
                if form in (0, 1, 2):
                    k = b"k%d" % (i % 50)
                    producer.send(TOPIC, v, key=k)
                    sent.append((kafka_partition(k, parts), v))
                    continue
                if form == 3:
                    producer.send(TOPIC, v, partition=i % parts)
                    sent.append((i % parts, v))
                    continue
                if form == 4:
                    k = b"k%d" % (i % 50)
                    producer.send(TOPIC, v, key=k, headers=[("h", b"%d" % i)])
                    sent.append((kafka_partition(k, parts), v))
                    continue
                if form == 5:
                    k = b"k%d" % (i % 50)
                    producer.send(TOPIC, v, key=k, on_delivery=cb)
                    sent.append((kafka_partition(k, parts), v))
                    continue
                if form == 6:
                    ks = [b"b%d" % (i + j) for j in range(3)]
                    vs = [v + b".%d" % j for j in range(3)]
                    producer.send_batch(TOPIC, vs, keys=ks)
                    sent.extend((kafka_partition(k, parts), x) for k, x in zip(ks, vs))
                    continue
                if st is None:
                    st = producer._topics[TOPIC]
                p = st.sticky  # the bare form goes to the sticky partition
                producer.send(TOPIC, v, timestamp_ms=1_700_000_000_000 + i) if form == 7 \
                    else producer.send(TOPIC, v)
                sent.append((p, v))
            producer.flush()
        got = _read_all(cluster, len(sent))
    want = {}
    for p, v in sent:
        want.setdefault(p, []).append(v)
    have = {p: [m.value for m in msgs] for p, msgs in by_partition(got).items()}
    assert have == want
    assert calls and all(err is None for err, _ in calls)


def test_keyed_from_threads_pairs_each_key_with_its_value(data_dir):
    """The keyed queue is appended without the lock (key and value in one
    extend): another thread's pair must never split a pair."""
    parts, threads, n = 5, 4, 4000
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=parts, **ROOMY)
        with cluster.producer() as producer:
            def run(t):
                for i in range(n):
                    producer.send(TOPIC, b"%d:%d" % (t, i), key=b"%d:%d" % (t, i))

            ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            producer.flush()
        got = _read_all(cluster, threads * n)
    assert len(got) == threads * n
    assert len({m.value for m in got}) == threads * n
    per_thread = {}
    for m in got:
        assert m.key == m.value
        assert m.partition == kafka_partition(m.key, parts)
        t, i = map(int, m.value.split(b":"))
        per_thread.setdefault((t, m.partition), []).append(i)
    for seq in per_thread.values():
        assert seq == sorted(seq)


def test_keyed_lone_sends_to_a_waiting_reader(data_dir):
    """A paced keyed producer (the latency path: one crossing, no queue)
    with a reader waiting gets each message out at once, on its partition."""
    parts = 3
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=parts, **ROOMY)
        with cluster.producer() as producer, \
                cluster.consumer(TOPIC, auto_offset_reset="earliest") as consumer:
            for i in range(60):
                k = b"key-%d" % i
                producer.send(TOPIC, b"%d" % i, key=k)
                m = consumer.poll(timeout=5.0)
                assert m is not None, f"message {i} was not committed at once"
                assert (m.key, m.value, m.partition) == (k, b"%d" % i, kafka_partition(k, parts))


def test_keyed_bad_input_raises_at_send(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, storage="memory", max_message_bytes=1000)
        with cluster.producer() as producer:
            producer.send(TOPIC, b"ok", key=b"k")
            with pytest.raises(shmlog_errors().MessageTooLarge):
                producer.send(TOPIC, b"x" * 990, key=b"y" * 20)
            with pytest.raises(TypeError):
                producer.send(TOPIC, b"x", key="str-key")
            producer.send(TOPIC, b"ok2", key=bytearray(b"k"))
            producer.flush()
        got = _read_all(cluster, 2)
    assert sorted(m.value for m in got) == [b"ok", b"ok2"]
    assert {m.partition for m in got} == {kafka_partition(b"k", 2)}


def test_every_form_at_many_partitions_with_tiny_chunks_keeps_order_and_fields(data_dir):
    """Every form at 32 partitions of 4 KiB chunks (a chunk turns over every
    two frames, so most commits meet a rotation), the ring four chunks deep
    and gated by a consumer reading in a thread of the same process: the
    producer waits for space again and again, and only gets it if its
    commits give the GIL up while they wait. Each partition must hold
    exactly its records in send order, with their keys, headers and
    timestamps, and every on_delivery must name the offset the record got."""
    parts, n, ts0 = 32, 6000, 1_700_000_000_000
    delivered = {}

    def cb(err, md):
        assert err is None, err
        delivered[md.offset, md.partition] = md

    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=parts, storage="memory", chunk_bytes=4096, chunk_count=4)
        got: list = []
        with cluster.consumer(TOPIC, group_id="g", auto_offset_reset="earliest") as consumer:
            reader = threading.Thread(target=lambda: got.extend(collect(consumer, n, timeout=60)))
            consumer.consume(timeout=0)  # joined and assigned before anything is sent
            reader.start()
            sent = []  # (partition or None: where a callback says, value, key, headers, timestamp)
            try:
                _send_every_form(cluster, n, parts, ts0, cb, sent)
            finally:
                reader.join(90)  # the consumer is closed only after its thread is done
            rotations = sum(r.hdr.rotations for r in cluster.topic(TOPIC).regions)
    assert len(got) == n
    at = {m.value: m for m in got}
    assert len(at) == n, "a record came twice"
    for p, v, k, h, ts in sent:
        m = at[v]
        if p is not None:
            assert m.partition == p, v
        assert m.key == k and list(m.headers) == list(h), v
        if ts is not None:
            assert m.timestamp_ms == ts, v
    # each partition: dense offsets, records in send order
    order = {v: i for i, (_, v, *_) in enumerate(sent)}
    for msgs in by_partition(got).values():
        msgs.sort(key=lambda m: m.offset)
        assert [m.offset for m in msgs] == list(range(msgs[0].offset, msgs[0].offset + len(msgs)))
        assert [order[m.value] for m in msgs] == sorted(order[m.value] for m in msgs)
    # every callback named its record's place
    want_cb = [at[v] for i, (_, v, *_) in enumerate(sent) if i % 9 in (5, 8)]
    assert len(delivered) == len(want_cb)
    for m in want_cb:
        md = delivered[m.offset, m.partition]
        assert md.topic == TOPIC and md.timestamp == m.timestamp_ms
    # rotation was on the path, not beside it: each ring turned over
    assert rotations > 4 * parts, rotations


def _send_every_form(cluster, n, parts, ts0, cb, sent):
    """Nine forms in turn; sent gets (partition or None: the callback's or
    the sticky one's, value, key, headers, timestamp) per record."""
    with cluster.producer(max_block_ms=20_000) as producer:
        st = producer._state(TOPIC)  # the bare form's sticky partition is read from it
        for i in range(n):
            v = b"%06d" % i + b"." * 90  # ~60 records a 4 KiB chunk
            k = b"user-%d" % i
            h = [("trace", b"t%d" % i)]
            form = i % 9
            if form == 0:
                p = st.sticky
                producer.send(TOPIC, v)
                sent.append((p, v, None, (), None))
            elif form == 1:
                producer.send(TOPIC, v, partition=i % parts)
                sent.append((i % parts, v, None, (), None))
            elif form == 2:
                producer.send(TOPIC, v, key=k)
                sent.append((kafka_partition(k, parts), v, k, (), None))
            elif form == 3:
                producer.send(TOPIC, v, headers=h)
                sent.append((None, v, None, h, None))
            elif form == 4:
                producer.send(TOPIC, v, timestamp_ms=ts0 + i)
                sent.append((None, v, None, (), ts0 + i))
            elif form == 5:
                producer.send(TOPIC, v, on_delivery=cb)
                sent.append((None, v, None, (), None))
            elif form == 6:
                producer.send(TOPIC, v, key=k, headers=h)
                sent.append((kafka_partition(k, parts), v, k, h, None))
            elif form == 7:
                producer.send(TOPIC, v, partition=(i * 7) % parts, headers=h, timestamp_ms=ts0 + i)
                sent.append(((i * 7) % parts, v, None, h, ts0 + i))
            else:
                producer.send(TOPIC, v, key=k, on_delivery=cb)
                sent.append((kafka_partition(k, parts), v, k, (), None))
        producer.flush()


# A producer process that stops itself (SIGSTOP) at the rotation point of
# the C core (csrc/log.h SHMLOG_POINT_ROTATE: a chunk sealed, the next one
# not yet opened), reached through its commits' crossings (core.commit,
# holding the GIL), and is SIGKILLed there by the test.
_ROTATING_CHILD = textwrap.dedent("""
    import os, signal, sys
    import shmlog
    from shmlog.core._core import ffi, lib
    cluster = shmlog.connect(sys.argv[1], start=False)
    stop_file, parts = sys.argv[2], int(sys.argv[3])

    @ffi.callback("void(int)")
    def hook(point):
        if point == lib.SHMLOG_POINT_ROTATE:
            lib.shmlog_set_test_point(ffi.NULL)
            with open(stop_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(stop_file + ".tmp", stop_file)
            os.kill(os.getpid(), signal.SIGSTOP)

    lib.shmlog_set_test_point(hook)
    with cluster.producer() as p:
        for i in range(100_000):
            v = b"c%06d" % i + b"." * 90
            if i % 3 == 0:
                p.send("t", v, key=b"user-%d" % i)
            elif i % 3 == 1:
                p.send("t", v, key=b"user-%d" % i, headers=[("n", b"%d" % i)])
            else:
                p.send("t", v, partition=i % parts, on_delivery=lambda err, md: None)
""")


def _child_partition(i: int, parts: int) -> int:
    return i % parts if i % 3 == 2 else kafka_partition(b"user-%d" % i, parts)


def test_a_producer_sigkilled_mid_rotation_loses_nothing_it_committed(data_dir, tmp_path):
    """Keyed, headers and on_delivery forms at 16 partitions of 4 KiB chunks;
    the producer is SIGKILLed between sealing a chunk and opening the next.
    Whoever claims there next opens it; the reaper clears the dead slots. A
    new producer's records follow in every partition, offsets stay dense,
    and what the dead one committed is a prefix of what it sent there."""
    parts, after = 16, 1000
    stop_file = tmp_path / "stopped"
    with running_cluster(data_dir, reaper_interval_ms=50) as cluster:
        cluster.create_topic("t", partitions=parts, storage="memory", chunk_bytes=4096, chunk_count=8)
        child = subprocess.Popen([sys.executable, "-c", _ROTATING_CHILD, str(data_dir), str(stop_file),
                                  str(parts)])
        try:
            deadline = time.monotonic() + 30
            while not stop_file.exists():
                assert child.poll() is None, "the producer ended before any rotation"
                assert time.monotonic() < deadline, "the producer never reached a rotation"
                time.sleep(0.02)
            assert int(stop_file.read_text()) == child.pid
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        with cluster.producer() as producer:
            for i in range(after):
                producer.send("t", b"n%06d" % i, key=b"user-%d" % i, headers=[("n", b"%d" % i)])
        with cluster.consumer("t", group_id="check", auto_offset_reset="earliest") as consumer:
            got = []
            deadline = time.monotonic() + 30
            while sum(m.value.startswith(b"n") for m in got) < after:
                assert time.monotonic() < deadline, "the new producer's records did not all arrive"
                got += consumer.consume(max_messages=10_000, timeout=0.5)
            got += consumer.consume(max_messages=10_000, timeout=0.2)
    dead = [m for m in got if m.value.startswith(b"c")]
    assert dead, "the killed producer committed nothing before the rotation"
    for p, msgs in by_partition(got).items():
        assert [m.offset for m in msgs] == list(range(len(msgs))), f"partition {p}: offsets not dense"
        firsts = [m.value[:1] for m in msgs]
        assert firsts == sorted(firsts), f"partition {p}: the dead producer's records after the new ones"
        mine = [int(m.value[1:7]) for m in msgs if m.value.startswith(b"c")]
        sent = [i for i in range(max(mine) + 1 if mine else 0) if _child_partition(i, parts) == p]
        assert mine == sent[:len(mine)] == sent, f"partition {p}: not a prefix of what was sent there"
        for m in msgs:
            i = int(m.value[1:7])
            if m.value.startswith(b"n"):
                assert m.partition == kafka_partition(b"user-%d" % i, parts)
                assert list(m.headers) == [("n", b"%d" % i)]
            elif i % 3 == 1:
                assert list(m.headers) == [("n", b"%d" % i)]
