"""shmlog through its public API (shared/API.md): shmlog.connect, topics,
cluster.producer() / cluster.consumer(), send / send_batch / poll /
consume_batch.

One supervisor per suite run serves a temp data dir: started with
``shmlog serve --data-dir D`` when the CLI has it, else by
``shmlog.connect(D)`` in a helper process. The parent only does admin
(create/delete topic) through short-lived connections that it closes before
it forks; every producer and consumer process connects on its own with
``start=False``. Skipped, with the reason, while ``shmlog.connect`` does not
exist.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional

from ..common import (
    CTX,
    LAT_STAMP,
    LATENCY_SPIN_US,
    Ctl,
    Endpoint,
    Params,
    Proc,
    Row,
    Skip,
    collect,
    cpu_share,
    die_with_parent,
    now_ns,
    payloads,
    proc_mem,
    produce_paced,
    run_groups,
    run_procs,
    throughput_row,
)
from . import Channel, Spec, System, latency_row


def _close(obj: Any) -> None:
    if obj is None:
        return
    close = getattr(obj, "close", None)
    if callable(close):
        close()
    elif hasattr(obj, "__exit__"):
        obj.__exit__(None, None, None)


def _connect(data_dir: str, start: bool = False):
    import shmlog

    return shmlog.connect(data_dir, start=start)


# W1's forms of send() beside the bare one: (mode, topic partitions)
SEND_FORMS = {"msg keyed": 4, "msg headers": 1, "msg partition": 1, "msg timestamp": 1,
              "msg on_delivery": 1}
HEADERS = [("trace", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01")]


def _delivered(err, md) -> None:
    """W1 on_delivery: what a user's callback at least does."""
    if err is not None:
        raise err


class _Prod(Endpoint):
    def __init__(self, data_dir: str, topic: str, form: str = "msg"):
        self.c = _connect(data_dir)
        self.p = self.c.producer(linger_ms=0)
        self.topic = topic
        # what a user's loop calls: producer.send(topic, value) (Endpoint docstring)
        self.send = functools.partial(self.p.send, topic)
        if form == "msg keyed":
            # a key that never repeats (an event id): made before the clock
            # starts, one lambda call of adapter per send
            keys = iter([b"event-%012d" % i for i in range(2_000_000)])
            psend = self.p.send
            self.send = lambda v: psend(topic, v, key=next(keys))
        # the keyword forms through a lambda, the call a user writes: a
        # functools.partial with keywords builds and merges a dict on every
        # call (~0.25 us here, half a bare send), which such a call does not
        elif form == "msg headers":
            psend = self.p.send
            self.send = lambda v: psend(topic, v, headers=HEADERS)
        elif form == "msg timestamp":
            psend = self.p.send
            self.send = lambda v: psend(topic, v, timestamp_ms=1_700_000_000_000)
        elif form == "msg on_delivery":
            psend = self.p.send
            self.send = lambda v: psend(topic, v, on_delivery=_delivered)
        elif form == "msg partition":
            psend = self.p.send
            self.send = lambda v: psend(topic, v, partition=0)

    def send_batch(self, values: List[bytes]) -> None:
        self.p.send_batch(self.topic, values)

    def flush(self) -> None:
        self.p.flush()

    def close(self) -> None:
        try:
            _close(self.p)
        finally:
            _close(self.c)


class _ViewBatch:
    """A zero-copy batch as the generic loop sees it: len() and item access
    (which copies that one value out)."""

    __slots__ = ("view",)

    def __init__(self, view):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> Optional[bytes]:
        return self.view.value(i)


class _Cons(Endpoint):
    def __init__(self, data_dir: str, topic: str, group: Optional[str], view: bool = False, **kw):
        self.c = _connect(data_dir)
        self.k = self.c.consumer(topic, group=group, auto_offset_reset="earliest", **kw)
        self.view = view
        self.pending: List[bytes] = []
        poll = self.k.poll
        pending = self.pending

        def recv(timeout: float) -> Optional[bytes]:
            # what a user's loop does: m = consumer.poll(timeout); m.value
            if pending:
                return pending.pop(0)
            m = poll(timeout)
            return None if m is None else m[4]

        self.recv = recv

    def ready(self) -> None:
        # join the group / take the assignment before anyone produces
        b = self.k.consume_batch(max_messages=1, timeout=0.5)
        if b:
            self.pending.extend(b.values)

    def recv_batch(self, max_n: int, timeout: float) -> List[bytes]:
        if self.pending:
            out = list(self.pending)
            self.pending.clear()  # the same list recv() holds
            return out
        if self.view:
            # the previous view is released by this call (MessageView lifetime)
            v = self.k.consume_batch(max_messages=max_n, timeout=timeout, copy=False)
            return _ViewBatch(v) if v else []
        b = self.k.consume_batch(max_messages=max_n, timeout=timeout)
        # batch.values is a list of bytes already (what mp.Queue's get() hands
        # its caller too): no copy of it
        return b.values if b else []

    def close(self) -> None:
        try:
            _close(self.k)
        finally:
            _close(self.c)


def _supervise_embedded(data_dir: str, stop_path: str) -> None:
    """Helper process: hold a connection (so the auto-started supervisor stays
    up) until the parent removes stop_path."""
    c = _connect(data_dir, start=True)
    try:
        deadline = time.monotonic() + 3600
        while os.path.exists(stop_path) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        _close(c)
    os._exit(0)


class _Broker:
    """The supervisor of one suite run."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="shmlog-bench-api-")
        self.data_dir = os.path.join(self.dir, "data")
        self.proc = None
        self.helper = None
        self.stop_path = os.path.join(self.dir, "hold")

    def start(self) -> None:
        cmd = [sys.executable, "-c", "import sys; from shmlog.cli import main; sys.exit(main())",
               "serve", "--data-dir", self.data_dir]
        listener = os.environ.get("SHMLOG_BENCH_KAFKA_LISTENER")  # bench --kafka-listener
        if listener:
            cmd += ["--kafka-listener", listener]
        has_cli = subprocess.run(cmd[:3] + ["--help"], capture_output=True, timeout=30)
        if has_cli.returncode == 0 and b"serve" in has_cli.stdout:
            # SIGTERM (a clean shutdown: segments unlinked) if the suite
            # dies without stopping it, e.g. killed or crashed
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL,
                                         preexec_fn=functools.partial(die_with_parent, signal.SIGTERM))
        else:
            open(self.stop_path, "w").close()
            self.helper = CTX.Process(target=_supervise_embedded,
                                      args=(self.data_dir, self.stop_path), daemon=True)
            self.helper.start()
        deadline = time.monotonic() + 20
        last = None
        while time.monotonic() < deadline:
            try:
                _close(_connect(self.data_dir))
                return
            except Exception as exc:  # BrokerNotRunning until it is up
                last = exc
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"shmlog supervisor for {self.data_dir} not reachable: {last}")

    def admin(self):
        return _connect(self.data_dir)

    def stop(self) -> None:
        try:
            c = _connect(self.data_dir)
            try:
                c.shutdown()
            finally:
                _close(c)
        except Exception:
            pass
        if self.helper is not None:
            try:
                os.unlink(self.stop_path)
            except OSError:
                pass
            self.helper.join(10)
            if self.helper.is_alive():
                self.helper.kill()
                self.helper.join(5)
            self.helper = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        self._check_segments()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cluster_id(self) -> str:
        try:
            with open(os.path.join(self.data_dir, "cluster_id")) as f:
                return f.read().strip()
        except OSError:
            return ""

    def shm_bytes(self) -> dict:
        """Allocated and resident bytes of the cluster's /dev/shm regions."""
        cid = self.cluster_id()
        size = used = 0
        if cid:
            for n in os.listdir("/dev/shm"):
                if n.startswith(f"shmlog-{cid}-"):
                    try:
                        st = os.stat(os.path.join("/dev/shm", n))
                    except OSError:
                        continue
                    size += st.st_size
                    used += st.st_blocks * 512
        return {"shm_size": size, "shm_used": used} if cid else {}

    def _check_segments(self) -> None:
        """Invariant 5: after shutdown no /dev/shm/shmlog-<cluster_id>-* is
        left. Leftovers are removed and reported on stderr (tests/test_bench.py
        fails on that line)."""
        cid = self.cluster_id()
        if not cid:
            return
        prefix = f"shmlog-{cid}-"
        left = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                left = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
            except OSError:
                return
            if not left:
                return
            time.sleep(0.1)
        for n in left:
            try:
                os.unlink(os.path.join("/dev/shm", n))
            except OSError:
                pass
        print(f"bench: shmlog supervisor left shared-memory segments after shutdown: {left}",
              file=sys.stderr)


class ShmlogApi(System):
    name = "shmlog"
    kind = "shmlog"
    how = {"msg": "producer.send(topic, value) (the producer batches sends internally, as "
                  "Kafka's does; linger_ms=0) / consumer.poll()",
           "msg keyed": "producer.send(topic, value, key=k), a key that never repeats, topic of 4 "
                        "partitions / consumer.poll() over the 4",
           "msg headers": "producer.send(topic, value, headers=[(\"trace\", 55 B)]) / consumer.poll()",
           "msg partition": "producer.send(topic, value, partition=0) / consumer.poll()",
           "msg timestamp": "producer.send(topic, value, timestamp_ms=t) / consumer.poll()",
           "msg on_delivery": "producer.send(topic, value, on_delivery=cb) / consumer.poll()",
           "msg async": "shmlog.aio: `await producer.send(topic, value)` / `async for msg in consumer` "
                        "(W1), `await consumer.getone()` (W4)",
           "batch": "producer.send_batch(topic, values) / consumer.consume_batch(batch)",
           "batch-view": "producer.send_batch(topic, values) / consumer.consume_batch(batch, "
                         "copy=False): a zero-copy MessageView, released by the next call; "
                         "only the last value of each batch is copied out (to check it). "
                         "shmlog alone: never compared with a peer"}

    def modes(self, wid: str) -> List[str]:
        if wid == "W2":
            return ["batch", "batch-view"]
        if wid == "W1":
            return ["msg", *SEND_FORMS, "msg async"]
        return super().modes(wid)

    def throughput(self, spec: Spec, p: Params) -> Row:
        if spec.mode != "msg async":
            return super().throughput(spec, p)
        row = Row(spec.wid, self.name, mode=spec.mode, procs="1 producer proc -> 1 consumer proc")
        with self.channel(spec) as ch:
            res = run_procs([Proc("consumer", _aio_consume, (ch.data_dir, ch.topic, spec.n, spec.warm,
                                                             spec.size)),
                             Proc("producer", _aio_produce, (ch.data_dir, ch.topic, spec.n, spec.warm,
                                                             spec.size))], p.run_limit_s)
        outs = collect(row, res, partial_ok=True)
        if outs is None:
            return row
        cons, prod = outs
        throughput_row(row, cons["received"], spec.size, prod["t0"], cons["t1"])
        row.extra["consumer_cpu"] = cons["cpu"]
        return row

    def latency(self, spec: Spec, p: Params) -> Row:
        if spec.mode != "msg async":
            return super().latency(spec, p)
        row = Row(spec.wid, self.name, mode=spec.mode, procs="1 producer proc -> 1 consumer proc")
        with self.channel(spec) as ch:
            res = run_procs([Proc("consumer", _aio_consume_latency, (ch.data_dir, ch.topic, spec.n,
                                                                     spec.warm)),
                             Proc("producer", produce_paced, (ch.producer, spec.n, spec.warm, spec.size,
                                                              spec.rate))], p.run_limit_s)
        outs = collect(row, res, partial_ok=True)
        if outs is None:
            return row
        cons, prod = outs
        return latency_row(row, spec, cons, prod)

    def __init__(self):
        self.broker: Optional[_Broker] = None

    def check(self) -> None:
        try:
            import shmlog
        except Exception as exc:
            raise Skip(f"shmlog does not import: {exc}") from None
        if not hasattr(shmlog, "connect"):
            raise Skip("shmlog.connect does not exist yet (public API still being written); "
                       "API-level rows run once it lands")
        # shmlog.connect exists: probe the whole path once (supervisor, topic,
        # send, flush, poll, consume_batch) in a child process. While that
        # fails the API rows are skipped with the error; once it works, any
        # failing API row is a real failure (exit code 1).
        try:
            broker = self._get_broker()
        except Exception as exc:
            raise Skip(f"shmlog API present but its supervisor does not start: "
                       f"{type(exc).__name__}: {exc}") from None
        res = run_procs([Proc("api-probe", _probe, (broker.data_dir,))], 60.0)
        status, out = res[0]
        if status != "ok":
            self.shutdown()
            first = (out if isinstance(out, str) else str(out)).strip().splitlines()[0]
            raise Skip(f"shmlog API present but not working yet (probe: connect, create_topic, "
                       f"send, flush, poll, consume_batch): {first}")

    def _get_broker(self) -> _Broker:
        if self.broker is None:
            b = _Broker()
            b.start()
            self.broker = b
        return self.broker

    def shutdown(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    @contextmanager
    def topic(self, wid: str, partitions: int = 1, **cfg) -> Iterator[str]:
        b = self._get_broker()
        name = f"bench-{wid.lower()}-{uuid.uuid4().hex[:8]}"
        c = b.admin()
        try:
            c.create_topic(name, partitions=partitions, **cfg)
        finally:
            _close(c)
        try:
            yield name
        finally:
            try:
                c = b.admin()
                try:
                    c.delete_topic(name)
                finally:
                    _close(c)
            except Exception:
                pass

    @contextmanager
    def channel(self, spec: Spec) -> Iterator[Channel]:
        storage = "disk" if spec.durable else "memory"
        cfg = {"storage": storage}
        if spec.durable:
            cfg["fsync_interval_ms"] = 1000
        with self.topic(spec.wid, partitions=SEND_FORMS.get(spec.mode, 1), **cfg) as t:
            d = self.broker.data_dir
            kw = {} if spec.spin_us is None else {"spin_us": spec.spin_us}
            view = spec.mode == "batch-view"
            ch = Channel(producer=lambda: _Prod(d, t, spec.mode),
                         consumer=lambda: _Cons(d, t, f"bench-{spec.wid}", view=view, **kw))
            ch.data_dir, ch.topic = d, t
            yield ch

    def latency_variants(self):
        # the default consumer (spin 50 us, then futex), the adaptive wait
        # (spin_us="auto": futex sleep until shortly before the next message
        # is due, then a spin), and a latency-tuned one that spins 1 ms:
        # through a 10,000 msg/s stream, for a whole core
        return [("msg", None), ("msg", "auto"), ("msg", LATENCY_SPIN_US), ("msg async", None)]

    def durable(self, spec: Spec, p: Params) -> Row:
        row = self.throughput(spec, p)
        if row.ok:
            row.note = ("disk topic, fsync_interval_ms=1000, consumer isolation=committed "
                        "(comparable to appendfsync everysec)") + (
                "; " + row.note if row.note else "")
        return row

    def groups(self, spec: Spec, p: Params) -> Row:
        with self.topic("W6", partitions=4, storage="memory") as t:
            d = self.broker.data_dir
            row = Row("W6", self.name, mode="batch")
            row = run_groups(row, lambda k: _Prod(d, t), lambda g, m: _Cons(d, t, f"g{g}"),
                             spec.n, spec.size, spec.batch, producers=2, groups=2, members=2,
                             limit_s=p.run_limit_s)
            if row.ok:
                row.note = ("topic of 4 partitions (memory); send_batch with sticky "
                            "partitioning; groups g0, g1 of 2 members each, consume_batch(batch)")
            return row

    def scale(self, spec: Spec, p: Params, partitions: int, producers: int) -> Row:
        row = Row("W7", self.name, mode="batch",
                  procs=f"{producers} producer proc(s) -> 1 consumer proc")
        row.extra.update(partitions=partitions, producers=producers)
        per = spec.n // producers
        per -= per % spec.batch
        n = per * producers
        # default settings: a disk topic, whose ring the supervisor sizes
        # from its shared-memory budget and the partition count (a memory
        # topic of default geometry is 64 MiB a partition: 256 of them are
        # past the default budget of this host)
        with self.topic("W7", partitions=partitions) as t:
            d = self.broker.data_dir
            procs = [Proc("consumer", _scale_consumer, (d, t, n, spec.batch))]
            procs += [Proc(f"producer{k}", _scale_producer, (d, t, per, spec.size, spec.batch))
                      for k in range(producers)]
            res = run_procs(procs, p.run_limit_s)
            shm = self.broker.shm_bytes()
        outs = collect(row, res)
        if outs is None:
            return row
        cons, prods = outs[0], outs[1:]
        throughput_row(row, cons["received"], spec.size, min(o["t0"] for o in prods), cons["t1"])
        row.extra.update(shm)
        row.extra["consumer_rss"] = cons["mem"].get("VmHWM", 0)
        row.extra["producer_rss"] = max(o["mem"].get("VmHWM", 0) for o in prods)
        row.extra["rss_shmem"] = max([cons["mem"].get("RssShmem", 0)]
                                     + [o["mem"].get("RssShmem", 0) for o in prods])
        row.note = ("no warm-up; disk topic with default settings (ring sized from the shm budget); "
                    "shm = every region of the cluster (this topic + the groups region)")
        return row


def _scale_producer(d: str, t: str, n: int, size: int, batch: int, *, ctl: Ctl) -> dict:
    ep = _Prod(d, t)
    try:
        values = payloads(size, batch)
        ctl.meet()
        t0 = now_ns()
        sent = 0
        while sent < n and not ctl.expired():
            ep.send_batch(values)
            sent += batch
        ep.flush()
        return {"t0": t0, "sent": sent, "timed_out": sent < n, "mem": proc_mem()}
    finally:
        ep.close()


def _scale_consumer(d: str, t: str, n: int, batch: int, *, ctl: Ctl) -> dict:
    ep = _Cons(d, t, "bench-w7")
    try:
        ep.ready()
        ctl.meet()
        got = 0
        while got < n:
            vs = ep.recv_batch(batch, 0.2)
            got += len(vs)
            if ctl.expired():
                break
        return {"t1": now_ns(), "received": got, "timed_out": got < n, "mem": proc_mem()}
    finally:
        ep.close()


# ---------------------------------------------------------------- asyncio rows
def _aio_produce(d: str, t: str, n: int, warm: int, size: int, *, ctl: Ctl) -> dict:
    """W1 async: `await producer.send(topic, value)` per message."""
    import asyncio

    from shmlog import aio

    async def main():
        async with aio.connect(d, start=False) as cluster, cluster.producer(linger_ms=0) as p:
            pool = payloads(size, 64)
            send = p.send

            async def run(k):
                sent = 0
                while sent < k and not ctl.expired():
                    for v in pool[:min(64, k - sent)]:
                        await send(t, v)
                    sent += min(64, k - sent)
                await p.flush()
                return sent

            ctl.meet()
            await run(warm)
            ctl.meet()
            t0 = now_ns()
            sent = await run(n)
            return {"t0": t0, "t_end": now_ns(), "sent": sent, "timed_out": sent < n}

    return asyncio.run(main())


def _aio_consume(d: str, t: str, n: int, warm: int, size: int, *, ctl: Ctl) -> dict:
    """W1 async: `async for msg in consumer`."""
    import asyncio

    from shmlog import aio

    async def main():
        async with aio.connect(d, start=False) as cluster, \
                cluster.consumer(t, group="bench-W1-async") as c:
            await c.getmany(max_messages=1, timeout=0.5)  # joined before anyone produces
            ctl.meet()

            async def run(k):
                got = 0
                while got < k and not ctl.expired():
                    try:
                        m = await asyncio.wait_for(c.getone(), 0.2)
                    except asyncio.TimeoutError:
                        continue
                    got += 1
                    if len(m.value) != size:
                        raise RuntimeError("received a value of the wrong size")
                return got

            await run(warm)
            ctl.meet()
            cpu0, w0 = time.process_time(), now_ns()
            got = 0
            last = None
            async for m in c:
                got += 1
                last = m
                if got >= n or (not got & 1023 and ctl.expired()):
                    break
            if last is not None and len(last.value) != size:
                raise RuntimeError("received a value of the wrong size")
            return {"t1": now_ns(), "received": got, "timed_out": got < n, "cpu": cpu_share(cpu0, w0)}

    return asyncio.run(main())


def _aio_consume_latency(d: str, t: str, n: int, warm: int, kw: Optional[dict] = None, *,
                         ctl: Ctl) -> dict:
    """W4 async: a sync paced producer, `await consumer.getone()` here
    (kw: the consumer's settings, default none)."""
    import asyncio
    from array import array

    from shmlog import aio

    async def main():
        async with aio.connect(d, start=False) as cluster, \
                cluster.consumer(t, group="bench-W4-async", **(kw or {})) as c:
            await c.getmany(max_messages=1, timeout=0.5)
            lat = array("q")
            unpack = LAT_STAMP.unpack_from
            ctl.meet()
            total, got = warm + n, 0
            cpu0 = w0 = None
            while got < total:
                m = await c.getone(timeout=0.2)
                if m is None:
                    if ctl.expired():
                        break
                    continue
                tn = now_ns()
                got += 1
                if got > warm:
                    lat.append(tn - unpack(m.value)[0])
                elif got == warm:
                    cpu0, w0 = time.process_time(), now_ns()
                if tn >= ctl.deadline_ns:
                    break
            return {"received": got, "lat": lat.tobytes(), "timed_out": got < total,
                    "cpu": cpu_share(cpu0, w0) if cpu0 is not None else None}

    return asyncio.run(main())


def _probe(d: str, *, ctl: Ctl) -> dict:
    c = _connect(d)
    try:
        name = f"bench-probe-{uuid.uuid4().hex[:8]}"
        c.create_topic(name, partitions=1, storage="memory")
        try:
            p = c.producer(linger_ms=0)
            try:
                p.send(name, b"probe-1")
                p.send_batch(name, [b"probe-2", b"probe-3"])
                p.flush()
            finally:
                _close(p)
            k = c.consumer(name, group="bench-probe", auto_offset_reset="earliest")
            try:
                got = []
                deadline = time.monotonic() + 10
                while not got and time.monotonic() < deadline:
                    m = k.poll(timeout=0.5)
                    if m is not None:
                        got.append(m.value)
                while len(got) < 3 and time.monotonic() < deadline:
                    b = k.consume_batch(max_messages=10, timeout=0.5)
                    if b:
                        got.extend(b.values)
                if [bytes(v) for v in got] != [b"probe-1", b"probe-2", b"probe-3"]:
                    raise RuntimeError(f"probe read back {got!r}")
            finally:
                _close(k)
        finally:
            c.delete_topic(name)
    finally:
        _close(c)
    return {}
