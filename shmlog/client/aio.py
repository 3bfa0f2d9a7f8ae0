"""asyncio: aiokafka's shape over the synchronous clients.

    from shmlog import aio
    async with aio.connect("./data") as cluster:
        async with cluster.producer() as p:
            await p.send("events", b"v", key=b"k")          # queued; a future
            md = await p.send_and_wait("events", b"v")      # RecordMetadata
        async with cluster.consumer("events", group="g") as c:
            async for msg in c: ...
            msg = await c.getone()
            batches = await c.getmany(max_messages=1000, timeout=1.0)

Each producer and consumer owns one worker thread that runs its
synchronous client; the event loop never calls into anything that can
block. Waiting for data is the consumer's futex wait (csrc/log.c
shmlog_log_wait_any) in that thread, and the hand-over to the loop is
loop.call_soon_threadsafe (asyncio's self-pipe). Nothing busy-polls:
the worker sleeps in the futex, the loop in epoll.

Why a waiter thread and not an eventfd in the loop's epoll set: a futex
cannot be polled, and an eventfd would have to be shared with every
producer process (passed over the supervisor's socket) and written by
each commit that finds a sleeper, a second wake-up syscall on the
producer's side beside the futex one that sync consumers need. The thread
costs one extra wake-up on the consumer's side only (bench: async W4).

Must never: run a synchronous client call on the loop thread, or drop
what a worker fetched because the awaiting task was cancelled (it stays
buffered for the next call).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import inspect
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from .. import errors
from .cluster import connect as _connect
from .consumer import Message
from .producer import RecordMetadata

TP = Tuple[str, int]

# how long one wait in a worker lasts before it looks at the closing flag
_WAIT_SLICE = 0.2
# messages a consumer worker fetches per hand-over to the loop
_FETCH = 10_000
# sends queued in the loop before send() waits for the worker to take them
_QUEUE_MAX = 100_000


def _worker(name: str) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)


class AIOCluster:
    """An async handle on shmlog.connect(); admin calls run in a thread."""

    def __init__(self, data_dir, **kwargs: Any):
        self._args = (data_dir, kwargs)
        self.sync = None

    async def start(self) -> AIOCluster:
        if self.sync is None:
            data_dir, kwargs = self._args
            loop = asyncio.get_running_loop()
            self.sync = await loop.run_in_executor(None, functools.partial(_connect, data_dir, **kwargs))
        return self

    def __await__(self):
        return self.start().__await__()

    async def __aenter__(self) -> AIOCluster:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self.sync is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.sync.close)

    async def shutdown(self, timeout: float = 10.0) -> None:
        if self.sync is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.sync.shutdown, timeout)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.sync is None:
            raise errors.Closed("this AIOCluster is not started: use `async with aio.connect(...)`")
        fn = getattr(self.sync, name)
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def create_topic(self, name: str, partitions: int = 1, **config: Any):
        return await self._call("create_topic", name, partitions, **config)

    async def topics(self):
        return await self._call("topics")

    async def describe_topic(self, name: str):
        return await self._call("describe_topic", name)

    async def delete_topic(self, name: str) -> None:
        await self._call("delete_topic", name)

    async def describe_group(self, group: str):
        return await self._call("describe_group", group)

    def producer(self, **kwargs: Any) -> AIOProducer:
        return AIOProducer(self, **kwargs)

    def consumer(self, topics: Union[str, Sequence[str]], group: Optional[str] = None,
                 **kwargs: Any) -> AIOConsumer:
        return AIOConsumer(self, topics, group=group, **kwargs)


def connect(data_dir=None, **kwargs: Any) -> AIOCluster:
    """`async with aio.connect(d) as cluster` (or `cluster = await aio.connect(d)`)."""
    return AIOCluster(data_dir, **kwargs)


class AIOProducer:
    """send() queues in the loop and returns a future of RecordMetadata; the
    worker thread hands the queue to the synchronous Producer, whose send()
    may block on a full buffer (max_block_ms) there, never in the loop."""

    def __init__(self, cluster: AIOCluster, **kwargs: Any):
        self._cluster = cluster
        self._kwargs = kwargs
        self.sync = None
        self._ex = _worker("shmlog-aio-producer")
        self._queue: List[tuple] = []
        self._draining: Optional[asyncio.Future] = None
        self._room: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closed = False

    async def start(self) -> AIOProducer:
        if self.sync is None:
            await self._cluster.start()
            self._loop = asyncio.get_running_loop()
            self._room = asyncio.Event()
            self._room.set()
            self.sync = await self._loop.run_in_executor(
                self._ex, functools.partial(self._cluster.sync.producer, **self._kwargs))
        return self

    async def __aenter__(self) -> AIOProducer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def send(self, topic: str, value, key=None, partition: Optional[int] = None,
                   timestamp_ms: Optional[int] = None, headers=None) -> asyncio.Future:
        """Queue one message; the returned future gives its RecordMetadata
        once committed (aiokafka's send). Waits (without blocking the loop)
        only while _QUEUE_MAX sends are queued ahead of it."""
        if self.sync is None:
            raise errors.Closed("this AIOProducer is not started: use `async with cluster.producer()`")
        if self._closed:
            raise errors.Closed("this AIOProducer is closed")
        while len(self._queue) >= _QUEUE_MAX:
            self._room.clear()
            self._kick()
            await self._room.wait()
        fut = self._loop.create_future()
        self._queue.append((topic, value, key, partition, timestamp_ms, headers, fut))
        self._kick()
        return fut

    async def send_and_wait(self, topic: str, value, key=None, partition: Optional[int] = None,
                            timestamp_ms: Optional[int] = None, headers=None) -> RecordMetadata:
        return await (await self.send(topic, value, key=key, partition=partition,
                                      timestamp_ms=timestamp_ms, headers=headers))

    async def send_batch(self, topic: str, values: Sequence, keys: Optional[Sequence] = None,
                         partition: Optional[int] = None) -> None:
        """The synchronous send_batch, in the worker (after what is queued)."""
        await self._drain()
        await self._loop.run_in_executor(
            self._ex, functools.partial(self.sync.send_batch, topic, values, keys=keys, partition=partition))

    def _kick(self) -> None:
        # one hand-over at a time; it takes everything queued when it runs
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain_once())

    async def _drain_once(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                self._room.set()
                await self._loop.run_in_executor(self._ex, self._send_all, batch)
        finally:
            self._draining = None

    async def _drain(self) -> None:
        while self._draining is not None or self._queue:
            if self._draining is None:
                self._kick()
            await asyncio.shield(self._draining)

    def _send_all(self, batch: List[tuple]) -> None:
        """Worker thread: the synchronous send() of every queued message.
        Futures are settled through the loop (call_soon_threadsafe), one
        hand-over per batch, not per message."""
        send = self.sync.send
        done: List[Tuple[asyncio.Future, Any, Any]] = []

        def delivered(fut, err, md):
            done.append((fut, err, md))

        for topic, value, key, partition, ts, headers, fut in batch:
            try:
                send(topic, value, key=key, partition=partition, timestamp_ms=ts, headers=headers,
                     on_delivery=functools.partial(delivered, fut))
            except BaseException as exc:  # this message failed: say so, go on with the rest
                done.append((fut, exc, None))
        try:
            self.sync.flush()
        except BaseException as exc:
            # what the flush failed to commit got its callback already
            # (BufferFull); anything else fails the futures still open
            done.append((None, exc, None))
        self._loop.call_soon_threadsafe(_settle, done, batch)

    async def flush(self) -> None:
        await self._drain()

    async def stop(self) -> None:
        if self._closed or self.sync is None:
            self._closed = True
            return
        try:
            await self._drain()
        finally:
            self._closed = True
            await self._loop.run_in_executor(self._ex, self.sync.close)
            self._ex.shutdown(wait=False)

    close = stop


def _settle(done, batch) -> None:
    """Loop thread: resolve the delivery futures of one hand-over."""
    late_error = None
    for fut, err, md in done:
        if fut is None:
            late_error = err
        elif not fut.done():
            if err is None:
                fut.set_result(md)
            else:
                fut.set_exception(err)
    for item in batch:
        fut = item[-1]
        if not fut.done():
            fut.set_exception(late_error or errors.ShmlogError("message was not delivered"))


class AIOConsumer:
    """Consumer whose waits happen in a worker thread: getone(), getmany(),
    `async for`. Group callbacks (plain functions or coroutine functions)
    run on the loop, while the worker waits for them."""

    def __init__(self, cluster: AIOCluster, topics: Union[str, Sequence[str]], *,
                 group: Optional[str] = None, on_assign: Optional[Callable] = None,
                 on_revoke: Optional[Callable] = None, **kwargs: Any):
        self._cluster = cluster
        self._args = (topics, group, on_assign, on_revoke, kwargs)
        self.sync = None
        self._ex = _worker("shmlog-aio-consumer")
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._buf: Deque[Message] = collections.deque()
        self._fetching: Optional[asyncio.Future] = None
        self._closed = False

    def _on_loop(self, cb: Optional[Callable]) -> Optional[Callable]:
        """Wrap a user callback: called in the worker, run on the loop."""
        if cb is None:
            return None
        loop = self._loop

        async def run(arg):
            r = cb(arg)
            if inspect.isawaitable(r):
                await r

        def call(arg):
            asyncio.run_coroutine_threadsafe(run(arg), loop).result()
        return call

    async def start(self) -> AIOConsumer:
        if self.sync is None:
            await self._cluster.start()
            self._loop = asyncio.get_running_loop()
            topics, group, on_assign, on_revoke, kwargs = self._args
            self.sync = await self._loop.run_in_executor(self._ex, functools.partial(
                self._cluster.sync.consumer, topics, group=group, on_assign=self._on_loop(on_assign),
                on_revoke=self._on_loop(on_revoke), **kwargs))
        return self

    async def __aenter__(self) -> AIOConsumer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _fetch_worker(self, max_messages: int, timeout: Optional[float]) -> List[Message]:
        """Worker thread: wait (futex) for up to timeout, in slices so a
        close() is seen; returns what one consume() gave."""
        sync = self.sync
        left = timeout
        while not self._closed:
            step = _WAIT_SLICE if left is None else min(left, _WAIT_SLICE)
            msgs = sync.consume(max_messages, timeout=step)
            if msgs:
                return msgs
            if left is not None:
                left -= step
                if left <= 0:
                    return []
        return []

    async def _fill(self, max_messages: int, timeout: Optional[float]) -> None:
        """Bring messages into the buffer. One fetch at a time: a caller
        that was cancelled leaves its fetch running, and what it brings is
        buffered for the next call, never dropped."""
        if self.sync is None:
            raise errors.Closed("this AIOConsumer is not started: use `async with cluster.consumer(...)`")
        if self._closed:
            raise errors.Closed("this AIOConsumer is closed")
        if self._fetching is None:
            fut = self._loop.run_in_executor(self._ex, self._fetch_worker, max_messages, timeout)
            self._fetching = fut
            fut.add_done_callback(self._fetched)
        await asyncio.shield(self._fetching)

    def _fetched(self, fut: asyncio.Future) -> None:
        self._fetching = None
        if not fut.cancelled() and fut.exception() is None:
            self._buf.extend(fut.result())

    async def getone(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next message; None only after `timeout` seconds (default: wait)."""
        while not self._buf:
            await self._fill(_FETCH, timeout)
            if timeout is not None and not self._buf:
                return None
        return self._buf.popleft()

    async def getmany(self, max_messages: int = 10_000, timeout: float = 0.0, *,
                      timeout_ms: Optional[int] = None, max_records: Optional[int] = None
                      ) -> Dict[TP, List[Message]]:
        """Up to max_messages, waiting up to timeout for the first, as
        aiokafka's getmany: {(topic, partition): [Message, ...]}."""
        if timeout_ms is not None:
            timeout = timeout_ms / 1000.0
        if max_records is not None:
            max_messages = max_records
        if not self._buf:
            await self._fill(max_messages, timeout)
        out: Dict[TP, List[Message]] = {}
        buf = self._buf
        n = min(max_messages, len(buf))
        for _ in range(n):
            m = buf.popleft()
            tp = (m[0], m[1])
            lst = out.get(tp)
            if lst is None:
                lst = out[tp] = []
            lst.append(m)
        return out

    def __aiter__(self) -> AIOConsumer:
        return self

    async def __anext__(self) -> Message:
        buf = self._buf
        while not buf:
            if self._closed:
                raise StopAsyncIteration
            await self._fill(_FETCH, None)
        return buf.popleft()

    async def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        if self._fetching is not None:
            await asyncio.shield(self._fetching)
        return await self._loop.run_in_executor(self._ex, functools.partial(fn, *args, **kwargs))

    async def commit(self, offsets: Optional[Dict[TP, int]] = None) -> None:
        """Commit what was handed out (messages still buffered here are not)."""
        if offsets is None:
            await self._call(self._rewind)
        await self._call(self.sync.commit, offsets)

    def _rewind(self) -> None:
        """Worker thread: a partition whose messages are still buffered here
        was handed out only up to the first of them; the synchronous
        consumer counts them as returned (what commit() and close() commit)."""
        first: Dict[TP, int] = {}
        for m in list(self._buf):
            first.setdefault((m[0], m[1]), m[2])
        for tp, off in first.items():
            a = self.sync.assigned_state.get(tp)
            if a is not None and off < a.returned:
                a.returned = off

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        await self._call(self.sync.seek, topic, partition, offset)
        self._buf = collections.deque(m for m in self._buf if (m[0], m[1]) != (topic, partition))

    async def assignment(self) -> List[TP]:
        return await self._call(self.sync.assignment)

    async def stop(self) -> None:
        if self._closed or self.sync is None:
            self._closed = True
            return
        self._closed = True  # the worker's wait ends within _WAIT_SLICE
        if self._fetching is not None:
            try:
                await asyncio.shield(self._fetching)
            except Exception:
                pass
        # close() commits what consume() returned: not what is still buffered
        await self._loop.run_in_executor(self._ex, self._rewind)
        self._buf.clear()
        await self._loop.run_in_executor(self._ex, self.sync.close)
        self._ex.shutdown(wait=False)

    close = stop
