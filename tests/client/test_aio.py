"""asyncio API (shmlog.aio): real producer processes feeding an asyncio
consumer and back, with a ticker coroutine proving the loop never blocks
while the clients wait for data or for buffer space, and that waiting
does not burn CPU.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from _broker_helpers import ROOMY, SMALL, Children, by_partition, kafka_partition, running_cluster

import shmlog
from shmlog import aio

TOPIC = "aio"


def _paced_producer(data_dir, n, delay_s, start_after_s):
    """A separate process: n keyed messages, one every delay_s."""
    time.sleep(start_after_s)
    with shmlog.connect(data_dir) as cluster, cluster.producer() as producer:
        for i in range(n):
            producer.send(TOPIC, b"%d" % i, key=b"k%d" % (i % 10))
            if delay_s:
                time.sleep(delay_s)
        producer.flush()
    return n


def _sync_consumer(data_dir, want):
    with shmlog.connect(data_dir) as cluster, \
            cluster.consumer(TOPIC, auto_offset_reset="earliest") as consumer:
        got = []
        deadline = time.monotonic() + 60
        while len(got) < want and time.monotonic() < deadline:
            got.extend((m.partition, m.key, m.value) for m in consumer.consume(10_000, timeout=0.5))
        return got


class Ticker:
    """Counts ticks of a coroutine that sleeps `period`; the longest gap
    between two ticks says how long the loop was blocked."""

    def __init__(self, period=0.005):
        self.period = period
        self.ticks = 0
        self.max_gap = 0.0
        self.task = None

    async def _run(self):
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            self.ticks += 1

    def __enter__(self):
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc):
        self.task.cancel()


def test_async_consumer_waits_without_blocking_the_loop(data_dir, tmp_path):
    n = 300
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic(TOPIC, partitions=3, **ROOMY)

        async def main():
            got = []
            async with aio.connect(data_dir) as acl, acl.consumer(TOPIC, group="g") as c:
                with Ticker() as ticker:
                    # nothing produced yet: an idle wait of ~1 s
                    cpu0, t0 = time.process_time(), time.monotonic()
                    assert await c.getmany(timeout=1.0) == {}
                    idle_cpu = time.process_time() - cpu0
                    idle_wall = time.monotonic() - t0
                    idle_ticks = ticker.ticks
                    kids.start(_paced_producer, data_dir, n, 0.001, 0.0)
                    while len(got) < n:
                        m = await asyncio.wait_for(c.getone(), 30)
                        got.append(m)
                    gap = ticker.max_gap
            return got, idle_cpu, idle_wall, idle_ticks, gap

        got, idle_cpu, idle_wall, idle_ticks, gap = asyncio.run(main())
        assert [k.result(p) for k, p in [(kids, kids.procs[0])]] == [n]
    assert idle_wall >= 0.9
    # the loop ran its ticker all along (a blocked loop would tick ~0 times)
    assert idle_ticks >= 0.25 * idle_wall / 0.005, idle_ticks
    assert gap < 0.5, f"the loop was blocked for {gap:.3f} s"
    # and nothing busy-polled: a spinning waiter would take ~1 s of CPU
    assert idle_cpu < 0.5 * idle_wall, f"idle wait used {idle_cpu:.3f} s of CPU in {idle_wall:.3f} s"
    parts = by_partition(got)
    for p, msgs in parts.items():
        assert [m.offset for m in msgs] == list(range(len(msgs)))
        for m in msgs:
            assert p == kafka_partition(m.key, 3)
    assert sorted(int(m.value) for m in got) == list(range(n))


def test_async_producer_to_a_consumer_process(data_dir, tmp_path):
    n = 5000
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic(TOPIC, partitions=4, **ROOMY)
        child = kids.start(_sync_consumer, data_dir, n + 2)

        async def main():
            async with aio.connect(data_dir) as acl, acl.producer() as p:
                futs = []
                for i in range(n):
                    futs.append(await p.send(TOPIC, b"%d" % i, key=b"u%d" % i))
                md = await p.send_and_wait(TOPIC, b"explicit", partition=2)
                await p.send(TOPIC, b"hdr", headers=[("trace", b"t1")], timestamp_ms=1_700_000_000_000)
                await p.flush()
                mds = await asyncio.gather(*futs)
            return mds, md

        mds, md = asyncio.run(main())
        got = Children.result(child)
    assert md.partition == 2
    for i, m in enumerate(mds):
        assert m.partition == kafka_partition(b"u%d" % i, 4)
    per = {}
    for p, k, v in got:
        if k is not None:
            assert p == kafka_partition(k, 4)
            per.setdefault(p, []).append(int(v))
    for vals in per.values():
        assert vals == sorted(vals)
    assert sorted(v for _, _, v in got) == sorted([b"%d" % i for i in range(n)] + [b"explicit", b"hdr"])
    offsets = {}
    for m in mds:
        offsets.setdefault(m.partition, []).append(m.offset)
    for offs in offsets.values():
        assert offs == sorted(offs)


def test_producer_waits_for_space_without_blocking_the_loop(data_dir):
    """A memory topic holds 4 x 64 KiB: an async producer sending 30x that
    must wait for the async consumer, which runs on the same loop. If either
    blocked the loop, the other could never run."""
    n = 20000
    value = b"x" * 100
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **SMALL)

        async def main():
            async with aio.connect(data_dir) as acl, \
                    acl.consumer(TOPIC, group="g") as c, acl.producer() as p:
                # the group's reader gates the ring once it is assigned:
                # before that a producer would not wait for it
                deadline = time.monotonic() + 30
                while not await c.assignment() and time.monotonic() < deadline:
                    assert await c.getmany(timeout=0.05) == {}
                with Ticker() as ticker:
                    async def produce():
                        for i in range(n):
                            await p.send(TOPIC, value + b"%d" % i)
                        await p.flush()

                    async def consume():
                        got = 0
                        while got < n:
                            batches = await c.getmany(max_messages=5000, timeout=5.0)
                            for msgs in batches.values():
                                for m in msgs:
                                    assert m.value == value + b"%d" % (m.offset)
                                got += len(msgs)
                        return got

                    _, got = await asyncio.wait_for(asyncio.gather(produce(), consume()), 60)
                    return got, ticker.max_gap

        got, gap = asyncio.run(main())
    assert got == n
    assert gap < 0.5, f"the loop was blocked for {gap:.3f} s"


def test_cancelled_getone_loses_nothing(data_dir, tmp_path):
    n = 200
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)

        async def main():
            got = []
            async with aio.connect(data_dir) as acl, acl.consumer(TOPIC) as c:
                kids.start(_paced_producer, data_dir, n, 0.0005, 0.2)
                deadline = time.monotonic() + 30
                while len(got) < n and time.monotonic() < deadline:
                    try:
                        got.append(await asyncio.wait_for(c.getone(), 0.002))
                    except asyncio.TimeoutError:
                        pass
            return got

        got = asyncio.run(main())
    assert [int(m.value) for m in got] == list(range(n))


def test_group_callbacks_run_on_the_loop(data_dir):
    calls = []
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, **ROOMY)

        async def main():
            loop_thread = threading.get_ident()

            async def on_assign(tps):
                await asyncio.sleep(0)
                calls.append(("assign", sorted(tps), threading.get_ident() == loop_thread))

            def on_revoke(tps):
                calls.append(("revoke", sorted(tps), threading.get_ident() == loop_thread))

            async with aio.connect(data_dir) as acl:
                async with acl.producer() as p:
                    await p.send_and_wait(TOPIC, b"hello", partition=1)
                async with acl.consumer(TOPIC, group="g", on_assign=on_assign, on_revoke=on_revoke) as c:
                    m = await c.getone(timeout=10)
                    assert m is not None and m.value == b"hello"
                    assert sorted(await c.assignment()) == [(TOPIC, 0), (TOPIC, 1)]
                    await c.commit()
                desc = await acl.describe_group("g")
            return desc

        desc = asyncio.run(main())
    assert calls[0] == ("assign", [(TOPIC, 0), (TOPIC, 1)], True)
    assert calls[-1][0] == "revoke" and calls[-1][2]
    assert desc is not None


def test_not_started_and_closed_errors(data_dir):
    async def main():
        acl = aio.connect(data_dir)
        with pytest.raises(shmlog.Closed):
            await acl.create_topic(TOPIC)
        async with acl:
            await acl.create_topic(TOPIC, partitions=1, **ROOMY)
            p = acl.producer()
            with pytest.raises(shmlog.Closed):
                await p.send(TOPIC, b"x")
            async with p:
                await p.send(TOPIC, b"x")
            with pytest.raises(shmlog.Closed):
                await p.send(TOPIC, b"y")
            c = acl.consumer(TOPIC)
            async with c:
                assert (await c.getone(timeout=5)).value == b"x"
                assert await c.getone(timeout=0.05) is None
            with pytest.raises(shmlog.Closed):
                await c.getone()
            await acl.shutdown()

    with running_cluster(data_dir):
        asyncio.run(main())
    assert os.path.isdir(data_dir)


def test_async_send_futures_name_the_offsets_read_through_a_full_buffer(data_dir):
    """send() commits on the loop without waiting; when the ring is full
    what did not fit stays queued for the worker thread. Every future must
    still resolve to the partition and offset its record was read at, with
    its headers and timestamp, and the loop must keep running meanwhile."""
    n = 20000
    pad = b"p" * 500
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=2, **SMALL)

        async def main():
            async with aio.connect(data_dir) as acl, \
                    acl.consumer(TOPIC, group="g") as c, acl.producer() as p:
                deadline = time.monotonic() + 30
                while not await c.assignment() and time.monotonic() < deadline:
                    assert await c.getmany(timeout=0.05) == {}
                with Ticker() as ticker:
                    async def produce():
                        futs = []
                        for i in range(n):
                            # 500 B values: the ring (2 x 4 x 64 KiB) fills between
                            # the producer's yields, so commits find it full
                            futs.append(await p.send(TOPIC, b"%d|" % i + pad, key=b"k%d" % i,
                                                     headers=[("i", b"%d" % i)],
                                                     timestamp_ms=1_600_000_000_000 + i))
                        await p.flush()
                        return await asyncio.gather(*futs)

                    async def consume():
                        got = {}
                        while len(got) < n:
                            for msgs in (await c.getmany(max_messages=5000, timeout=5.0)).values():
                                for m in msgs:
                                    got[int(m.value.split(b"|")[0])] = m
                        return got

                    mds, got = await asyncio.wait_for(asyncio.gather(produce(), consume()), 60)
                    return mds, got, ticker.max_gap

        mds, got, gap = asyncio.run(main())
    assert gap < 0.5, f"the loop was blocked for {gap:.3f} s"
    for i, md in enumerate(mds):
        m = got[i]
        assert (md.partition, md.offset) == (m.partition, m.offset)
        assert md.partition == kafka_partition(b"k%d" % i, 2)
        assert m.value == b"%d|" % i + pad
        assert m.headers == [("i", b"%d" % i)]
        assert m.timestamp_ms == md.timestamp == 1_600_000_000_000 + i

def test_what_was_fetched_ahead_is_not_committed_and_a_seek_drops_it(data_dir):
    """The worker fetches ahead of the application: commit() and close()
    count only what getone() handed out, and after a seek the next message
    is the one sought, not one fetched before it."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)
        with cluster.producer() as p:
            p.send_batch(TOPIC, [b"%d" % i for i in range(100)], partition=0)

        async def main():
            async with aio.connect(data_dir) as acl:
                async with acl.consumer(TOPIC, group="g") as c:
                    first = [await c.getone(timeout=10) for _ in range(10)]
                    await c.commit()
                    committed = await c._call(c.sync.committed)
                    await c.seek(TOPIC, 0, 50)
                    after_seek = await c.getone(timeout=10)
                    more = [await c.getone(timeout=10) for _ in range(4)]
                async with acl.consumer(TOPIC, group="g") as c2:
                    resumed = await c2.getone(timeout=10)
            return first, committed, after_seek, more, resumed

        first, committed, after_seek, more, resumed = asyncio.run(main())
    assert [m.offset for m in first] == list(range(10))
    assert committed == {(TOPIC, 0): 10}
    assert after_seek.offset == 50
    assert [m.offset for m in more] == [51, 52, 53, 54]
    # close() committed what was handed out: up to 54, not what the worker fetched ahead
    assert resumed.offset == 55


def test_async_consumer_at_a_steady_rate_keeps_the_loop_ticking(data_dir, tmp_path):
    """A stream of 2000 messages at ~2k msg/s: every one arrives, in order,
    and the loop keeps ticking while the consumer waits between them."""
    n = 2000
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)

        async def main():
            got = []
            async with aio.connect(data_dir) as acl, acl.consumer(TOPIC) as c:
                with Ticker(period=0.002) as ticker:
                    kids.start(_paced_producer, data_dir, n, 0.0005, 0.1)
                    t0 = time.monotonic()
                    async for m in c:
                        got.append(m)
                        if len(got) == n:
                            break
                    wall = time.monotonic() - t0
                    return got, ticker.ticks, ticker.max_gap, wall

        got, ticks, gap, wall = asyncio.run(main())
    assert [int(m.value) for m in got] == list(range(n))
    assert gap < 0.5, f"the loop was blocked for {gap:.3f} s"
    assert ticks >= 0.25 * wall / 0.002, (ticks, wall)


def test_async_consumer_waits_on_the_futex_without_a_spin(data_dir):
    """The worker thread sleeps on the futex at once (a spin there would
    hold the core the loop thread needs for the hand-over); spin_us given
    by the caller still holds."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **ROOMY)

        async def main():
            async with aio.connect(data_dir) as acl:
                async with acl.consumer(TOPIC) as c:
                    assert await c.getmany(timeout=0.05) == {}
                    default = c.sync.spin_ns
                async with acl.consumer(TOPIC, spin_us=20) as c:
                    given = c.sync.spin_ns
            return default, given

        assert asyncio.run(main()) == (0, 20_000)
