"""NATS JetStream through nats-py (asyncio), server on 127.0.0.1 started by
the suite with its store in a temp dir.

W1-W4 use a memory stream (like shmlog's memory buffer; no disk), W5 a file
stream. Producers: per-message mode calls js.publish_async once per message
(acks pipelined, all awaited at the end: nats-py's fastest per-message
path; awaiting each ack would run at ~5k msg/s); batch mode calls it for
each message of a batch and awaits that batch's acks. Consumers:
per-message mode is an ordered push consumer read with next_msg(); batch
mode a pull consumer (AckNone) read with fetch(batch). W6: 4 subjects as
partitions, one durable pull consumer per group shared by its 2 members,
explicit acks (msg.ack() per message; nats-py has no batch ack)."""

from __future__ import annotations

import asyncio
import itertools
import time
from array import array
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List

from ..common import (
    LAT_STAMP,
    Ctl,
    Endpoint,
    Pacer,
    Params,
    Proc,
    Row,
    Skip,
    collect,
    cpu_share,
    now_ns,
    payloads,
    run_groups,
    run_procs,
    throughput_row,
)
from ..servers import SERVERS
from . import Channel, Spec, System, latency_row

STREAM = "BENCH"
_ids = itertools.count()


def _run(coro):
    return asyncio.run(coro)


async def _connect(url: str):
    import nats

    return await nats.connect(url, max_reconnect_attempts=2, connect_timeout=5,
                              pending_size=64 << 20)


async def _make_stream(url: str, name: str, subjects: List[str], file: bool) -> None:
    from nats.js.api import StorageType, StreamConfig

    nc = await _connect(url)
    try:
        js = nc.jetstream()
        try:
            await js.delete_stream(name)
        except Exception:
            pass
        await js.add_stream(StreamConfig(
            name=name, subjects=subjects,
            storage=StorageType.FILE if file else StorageType.MEMORY))
    finally:
        await nc.close()


async def _delete_stream(url: str, name: str) -> None:
    nc = await _connect(url)
    try:
        await nc.jetstream().delete_stream(name)
    except Exception:
        pass
    finally:
        await nc.close()


# ------------------------------------------------------------ async loops
async def _publish(js, subject: str, mode: str, n: int, pool: List[bytes], ctl: Ctl) -> int:
    sent = 0
    pa = js.publish_async
    m = len(pool)
    if mode == "batch":
        while sent < n and not ctl.expired():
            k = min(m, n - sent)
            futs = [await pa(subject, v) for v in pool[:k]]
            await asyncio.wait_for(asyncio.gather(*futs), timeout=max(ctl.left_s(), 1.0))
            sent += k
    else:
        futs = []
        while sent < n and not ctl.expired():
            k = min(m, n - sent)
            for v in pool[:k]:
                futs.append(await pa(subject, v))
            sent += k
            if len(futs) > 100_000:
                await asyncio.wait_for(asyncio.gather(*futs), timeout=max(ctl.left_s(), 1.0))
                futs = []
        if futs:
            await asyncio.wait_for(asyncio.gather(*futs), timeout=max(ctl.left_s(), 1.0))
    return sent


def _produce(url: str, subject: str, mode: str, n: int, warm: int, size: int, batch: int, *,
             ctl: Ctl) -> Dict[str, Any]:
    async def main():
        nc = await _connect(url)
        try:
            js = nc.jetstream()
            pool = payloads(size, batch if mode == "batch" else 64)
            ctl.meet()
            await _publish(js, subject, mode, warm, pool, ctl)
            ctl.meet()
            t0 = now_ns()
            sent = await _publish(js, subject, mode, n, pool, ctl)
            t_end = now_ns()
            return {"t0": t0, "t_end": t_end, "sent": sent, "timed_out": sent < n}
        finally:
            await nc.close()

    return _run(main())


async def _subscribe(js, subject: str, mode: str):
    from nats.js.api import AckPolicy, ConsumerConfig

    if mode == "batch":
        return await js.pull_subscribe(subject, durable=f"bench-{next(_ids)}",
                                       config=ConsumerConfig(ack_policy=AckPolicy.NONE))
    return await js.subscribe(subject, ordered_consumer=True)


async def _receive(sub, mode: str, n: int, batch: int, size: int, ctl: Ctl):
    import nats.errors

    got = 0
    last = None
    if mode == "batch":
        while got < n:
            try:
                msgs = await sub.fetch(batch, timeout=0.2)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                if ctl.expired():
                    break
                continue
            got += len(msgs)
            last = msgs[-1].data
            if ctl.expired():
                break
    else:
        while got < n:
            try:
                msg = await sub.next_msg(timeout=0.2)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                if ctl.expired():
                    break
                continue
            got += 1
            last = msg.data
            if not got & 1023 and ctl.expired():
                break
    t = now_ns()
    if last is not None and len(last) != size:
        raise RuntimeError(f"received a value of {len(last)} bytes, expected {size}")
    return got, t


def _consume(url: str, subject: str, mode: str, n: int, warm: int, size: int, batch: int, *,
             ctl: Ctl) -> Dict[str, Any]:
    async def main():
        nc = await _connect(url)
        try:
            sub = await _subscribe(nc.jetstream(), subject, mode)
            ctl.meet()
            got_w, _ = await _receive(sub, mode, warm, batch, size, ctl)
            ctl.meet()
            cpu0, w0 = time.process_time(), now_ns()
            got, t1 = await _receive(sub, mode, n, batch, size, ctl)
            return {"t1": t1, "received": got, "warm": got_w, "timed_out": got < n,
                    "cpu": cpu_share(cpu0, w0)}
        finally:
            await nc.close()

    return _run(main())


def _produce_paced(url: str, subject: str, n: int, warm: int, size: int, rate: int, *,
                   ctl: Ctl) -> Dict[str, Any]:
    async def main():
        nc = await _connect(url)
        try:
            js = nc.jetstream()
            pacer = Pacer(n, warm, size, rate, ctl)
            futs = []
            for msg in pacer:
                futs.append(await js.publish_async(subject, msg))
                # let the client's flusher task write it now (and acks come in)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            await asyncio.wait_for(asyncio.gather(*futs), timeout=max(ctl.left_s(), 1.0))
            return pacer.result()
        finally:
            await nc.close()

    return _run(main())


def _consume_latency(url: str, subject: str, n: int, warm: int, *, ctl: Ctl) -> Dict[str, Any]:
    import nats.errors

    async def main():
        nc = await _connect(url)
        try:
            sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
            lat = array("q")
            unpack = LAT_STAMP.unpack_from
            ctl.meet()
            total = warm + n
            got = 0
            cpu0 = w0 = None
            while got < total:
                try:
                    msg = await sub.next_msg(timeout=0.2)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    if ctl.expired():
                        break
                    continue
                t = now_ns()
                got += 1
                if got > warm:
                    lat.append(t - unpack(msg.data)[0])
                elif got == warm:
                    cpu0, w0 = time.process_time(), now_ns()
                if t >= ctl.deadline_ns:
                    break
            return {"received": got, "lat": lat.tobytes(), "timed_out": got < total,
                    "cpu": cpu_share(cpu0, w0) if cpu0 is not None else None}
        finally:
            await nc.close()

    return _run(main())


# ----------------------------------------------- W6: sync wrappers (batches)
class _LoopEndpoint(Endpoint):
    """Runs one coroutine per batch on a private loop (the per-call cost is
    small next to a batch of hundreds of messages)."""

    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(_connect(url))
        self.js = self.nc.jetstream()

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.nc.close())
        finally:
            self.loop.close()


class _GroupProd(_LoopEndpoint):
    def __init__(self, url: str, k: int):
        super().__init__(url)
        self.j = k

    def send_batch(self, values: List[bytes]) -> None:
        subject = f"g6.{self.j % 4}"
        self.j += 1

        async def go():
            futs = [await self.js.publish_async(subject, v) for v in values]
            await asyncio.wait_for(asyncio.gather(*futs), timeout=30)

        self.loop.run_until_complete(go())


class _GroupCons(_LoopEndpoint):
    def __init__(self, url: str, g: int, m: int):
        super().__init__(url)
        self.sub = self.loop.run_until_complete(
            self.js.pull_subscribe_bind(durable=f"g{g}", stream="G6"))

    def recv_batch(self, max_n: int, timeout: float) -> List[bytes]:
        import nats.errors

        async def go():
            try:
                msgs = await self.sub.fetch(max_n, timeout=timeout)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                return []
            for m in msgs:
                await m.ack()
            return [m.data for m in msgs]

        return self.loop.run_until_complete(go())


async def _make_groups(url: str) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig

    await _make_stream(url, "G6", ["g6.>"], file=False)
    nc = await _connect(url)
    try:
        js = nc.jetstream()
        for g in range(2):
            await js.add_consumer("G6", ConsumerConfig(
                durable_name=f"g{g}", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=100_000,
                max_waiting=64))
    finally:
        await nc.close()


class NatsJetStream(System):
    name = "nats jetstream"
    how = {"msg": "js.publish_async per message (acks pipelined) / ordered push consumer "
                  "next_msg()",
           "batch": "publish_async per message, batch's acks awaited / pull fetch(batch), "
                    "AckNone"}

    def check(self) -> None:
        try:
            import nats  # noqa: F401
        except ImportError:
            raise Skip("nats-py is not installed (pip install nats-py)") from None
        SERVERS.get("nats")

    @contextmanager
    def _stream(self, file: bool) -> Iterator[str]:
        url = SERVERS.get("nats").url
        _run(_make_stream(url, STREAM, ["bench.>"], file))
        try:
            yield url
        finally:
            _run(_delete_stream(url, STREAM))

    @contextmanager
    def channel(self, spec: Spec) -> Iterator[Channel]:
        raise Skip("runs its own async loops")
        yield  # pragma: no cover

    def throughput(self, spec: Spec, p: Params) -> Row:
        row = Row(spec.wid, self.name, mode=spec.mode, procs="1 producer proc -> 1 consumer proc")
        with self._stream(spec.durable) as url:
            args = (url, "bench.0", spec.mode, spec.n, spec.warm, spec.size, spec.batch)
            res = run_procs([Proc("consumer", _consume, args), Proc("producer", _produce, args)],
                            p.run_limit_s)
        outs = collect(row, res, partial_ok=True)
        if outs is None:
            return row
        cons, prod = outs
        throughput_row(row, cons["received"], spec.size, prod["t0"], cons["t1"])
        if cons.get("cpu") is not None:
            row.extra["consumer_cpu"] = cons["cpu"]
        what = "memory stream" if not spec.durable else "file stream (temp dir on disk)"
        row.note = what + ("; " + row.note if row.note else "")
        return row

    def latency(self, spec: Spec, p: Params) -> Row:
        row = Row(spec.wid, self.name, mode=spec.mode, procs="1 producer proc -> 1 consumer proc")
        with self._stream(False) as url:
            res = run_procs(
                [Proc("consumer", _consume_latency, (url, "bench.0", spec.n, spec.warm)),
                 Proc("producer", _produce_paced, (url, "bench.0", spec.n, spec.warm, spec.size,
                                                    spec.rate))],
                p.run_limit_s)
        outs = collect(row, res, partial_ok=True)
        if outs is None:
            return row
        cons, prod = outs
        return latency_row(row, spec, cons, prod)

    def durable(self, spec: Spec, p: Params) -> Row:
        row = self.throughput(spec, p)
        if row.ok:
            row.note = row.note.replace("file stream (temp dir on disk)",
                                        "file stream in a temp dir on disk (server's default "
                                        "sync policy)")
        return row

    def groups(self, spec: Spec, p: Params) -> Row:
        url = SERVERS.get("nats").url
        _run(_make_groups(url))
        try:
            row = Row("W6", self.name, mode="batch")
            row = run_groups(row, lambda k: _GroupProd(url, k),
                             lambda g, m: _GroupCons(url, g, m), spec.n, spec.size, spec.batch,
                             producers=2, groups=2, members=2, limit_s=p.run_limit_s)
            if row.ok:
                row.note = ("4 subjects as partitions; 1 durable pull consumer per group shared by "
                            "its 2 members; fetch(batch) + ack per message")
            return row
        finally:
            _run(_delete_stream(url, "G6"))
