"""shmlog.aio's plain sends (aio_runs.py): runs committed by the worker
thread, each send's metadata named from its frame. Checked against what a
consumer reads: partition, offset and timestamp of every send, order kept
around the other forms, and a full buffer failing the sends that did not
fit while the loop keeps running.
"""

from __future__ import annotations

import asyncio
import time

from _broker_helpers import ROOMY, SMALL, kafka_partition, running_cluster

import shmlog
from shmlog import aio

TOPIC = "runs"


def _read_all(cluster, n):
    with cluster.consumer(TOPIC, auto_offset_reset="earliest") as c:
        got = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            got.extend(c.consume(10_000, timeout=0.2))
    return got


def test_plain_sends_name_the_offsets_they_were_read_at(data_dir):
    """Runs of sticky and of explicit-partition sends (many frames each),
    a headers send between them: every Delivery names the partition, offset and timestamp its
    record was read at, and each partition keeps send order."""
    n = 6000
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=3, **ROOMY)

        async def main():
            async with aio.connect(data_dir) as acl, acl.producer() as p:
                sent = []
                for i in range(n):
                    v = b"%d" % i + b"." * 100
                    if i == 4000:
                        sent.append(await p.send(TOPIC, v, partition=1, headers=[("h", b"1")]))
                    elif 2500 <= i < 4000 or i % 7 == 0:
                        sent.append(await p.send(TOPIC, v, partition=1))
                    else:
                        sent.append(await p.send(TOPIC, v))
                early = sent[0]
                await p.flush()
                assert early.done() and early.exception() is None
                return [await d for d in sent]

        mds = asyncio.run(main())
        got = {int(m.value.split(b".")[0]): m for m in _read_all(cluster, n)}
    assert len(got) == n
    for i, md in enumerate(mds):
        m = got[i]
        assert (md.topic, md.partition, md.offset) == (TOPIC, m.partition, m.offset), i
        assert md.timestamp == m.timestamp_ms
        if 2500 <= i <= 4000 or i % 7 == 0:
            assert md.partition == 1
    per = {}
    for md in mds:
        per.setdefault(md.partition, []).append(md.offset)
    assert len(per) == 3  # the sticky sends moved on over the partitions
    for offs in per.values():
        assert offs == sorted(offs) and len(set(offs)) == len(offs)


def test_a_full_buffer_fails_the_sends_that_did_not_fit(data_dir):
    """A reader that never reads pins the ring: the worker waits
    max_block_ms, then the sends it could not commit raise BufferFull
    while the ones before resolve; the loop runs on meanwhile."""
    value = b"x" * 200
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **SMALL)
        reader = cluster.consumer(TOPIC)

        async def main():
            gaps = []

            async def tick():
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.005)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.ensure_future(tick())
            async with aio.connect(data_dir) as acl, acl.producer(max_block_ms=300) as p:
                sent = []
                for i in range(3000):  # 600 KiB into a 256 KiB ring
                    sent.append(await p.send(TOPIC, b"%06d" % i + value))
                try:
                    await p.flush()
                except shmlog.BufferFull:
                    pass
                outcome = []
                for d in sent:
                    try:
                        outcome.append(await d)
                    except shmlog.BufferFull as exc:
                        outcome.append(exc)
            ticker.cancel()
            return outcome, max(gaps)

        outcome, gap = asyncio.run(main())
        ok = [md for md in outcome if not isinstance(md, Exception)]
        assert 0 < len(ok) < len(outcome)
        # the committed ones are a prefix, in offset order
        assert ok == outcome[:len(ok)]
        assert [md.offset for md in ok] == list(range(len(ok)))
        assert all(isinstance(e, shmlog.BufferFull) for e in outcome[len(ok):])
        msgs = []
        deadline = time.monotonic() + 10
        while len(msgs) < len(ok) and time.monotonic() < deadline:
            msgs.extend(reader.consume(10_000, timeout=0.2))
        assert [int(m.value[:6]) for m in msgs] == list(range(len(ok)))
        reader.close()
    assert gap < 0.25, f"the loop was blocked for {gap:.3f} s"


def test_keyed_sends_name_the_partition_of_their_key(data_dir):
    """Keyed sends (keys that never repeat) run through the worker too:
    each lands on murmur2(key)'s partition, like Kafka's, and its Delivery
    names the offset it was read at; a key's sends keep their order."""
    n = 20000
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=5, **ROOMY)

        async def main():
            async with aio.connect(data_dir) as acl, acl.producer() as p:
                sent = []
                for i in range(n):
                    # every 10th send repeats a key, so order per key is seen
                    key = b"user-%d" % (i if i % 10 else 7)
                    sent.append(await p.send(TOPIC, b"%d" % i, key=key))
                await p.flush()
                return [await d for d in sent]

        mds = asyncio.run(main())
        got = {int(m.value): m for m in _read_all(cluster, n)}
    assert len(got) == n
    for i, md in enumerate(mds):
        m = got[i]
        assert (md.partition, md.offset) == (m.partition, m.offset), i
        assert md.partition == kafka_partition(m.key, 5)
        assert md.timestamp == m.timestamp_ms
    sevens = [md.offset for i, md in enumerate(mds) if i % 10 == 0]
    assert sevens == sorted(sevens)


def test_linger_commits_a_run_and_done_callbacks_run(data_dir):
    """With linger_ms a run waits that long, then commits: its Deliveries
    resolve without a flush, and add_done_callback runs on the loop."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)

        async def main():
            async with aio.connect(data_dir) as acl, acl.producer(linger_ms=20) as p:
                # the topic's first send takes the synchronous path (it
                # learns the topic); the ones after it join runs
                await p.send_and_wait(TOPIC, b"first")
                sent = [await p.send(TOPIC, b"%d" % i) for i in range(1, 101)]
                assert not sent[0].done()
                seen = []
                sent[-1].add_done_callback(lambda d: seen.append(d.result().offset))
                mds = await asyncio.wait_for(asyncio.gather(*sent), 10)
                await asyncio.sleep(0)
                sent[0].add_done_callback(lambda d: seen.append(d.result().offset))
                await asyncio.sleep(0.01)
                return mds, seen

        mds, seen = asyncio.run(main())
    assert [md.offset for md in mds] == list(range(1, 101))
    assert seen == [100, 1]
