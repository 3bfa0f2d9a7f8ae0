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
import threading
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from .. import errors
from .cluster import connect as _connect
from .consumer import Message
from .producer import RecordMetadata, _LockBusy

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
    """send() runs the synchronous Producer's send() on the loop thread
    itself: it only appends to the topic's queue, a few list operations,
    with a future as the record's delivery callback. What may wait for
    buffer space, the commit, runs in the worker thread (Producer's
    _defer_commit hook), one hand-over per batch, not per message; the
    commit's futures come back to the loop in one call_soon_threadsafe."""

    def __init__(self, cluster: AIOCluster, **kwargs: Any):
        self._cluster = cluster
        self._kwargs = kwargs
        self.sync = None
        self._ex = _worker("shmlog-aio-producer")
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._room: Optional[asyncio.Event] = None  # set while the worker is idle
        self._running = False   # a commit hand-over is in the worker
        self._kicked = False    # a commit was asked for since the worker last looked
        self._queued = 0        # sends since the worker's last commit began
        self._lingering = False  # a linger_ms commit is scheduled in the loop
        self._closed = False

    async def start(self) -> AIOProducer:
        if self.sync is None:
            await self._cluster.start()
            self._loop = asyncio.get_running_loop()
            self._room = asyncio.Event()
            self._room.set()
            sync = await self._loop.run_in_executor(
                self._ex, functools.partial(self._cluster.sync.producer, **self._kwargs))
            sync._settle_delivery = self._settle_threadsafe
            sync._defer_commit = self._kick
            sync._linger_hook = self._linger_soon
            sync._nowait_thread = threading.get_ident()
            self.sync = sync
        return self

    async def __aenter__(self) -> AIOProducer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def send(self, topic: str, value, key=None, partition: Optional[int] = None,
                   timestamp_ms: Optional[int] = None, headers=None) -> asyncio.Future:
        """Queue one message; the returned future gives its RecordMetadata
        once committed (aiokafka's send). Waits (without blocking the loop)
        only while _QUEUE_MAX sends wait behind a commit that waits for
        buffer space."""
        sync = self.sync
        if sync is None:
            raise errors.Closed("this AIOProducer is not started: use `async with cluster.producer()`")
        if self._closed:
            raise errors.Closed("this AIOProducer is closed")
        if self._queued >= _QUEUE_MAX and self._running:
            await self._idle()
        self._queued += 1
        if not self._queued & 1023:
            # a send that needs no wait does not yield: let the loop's other
            # tasks (and the settling of futures) run now and then
            await asyncio.sleep(0)
        fut = self._loop.create_future()
        while True:
            try:
                sync.send(topic, value, key, headers, partition, timestamp_ms, fut)
                return fut
            except _LockBusy:  # the worker is committing (maybe waiting for space)
                await self._idle()

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

    async def _idle(self) -> None:
        while self._running:
            await self._room.wait()

    def _kick(self) -> None:
        """Loop thread (Producer._defer_commit): have the worker commit
        everything queued; one hand-over at a time."""
        self._kicked = True
        if not self._running:
            self._running = True
            self._room.clear()
            self._ex.submit(self._commit_all)

    def _linger_soon(self) -> None:
        """Loop thread (Producer._linger_wake): a new queue commits once
        linger_ms is up, here in the loop (without waiting, else through
        the worker)."""
        if not self._lingering:
            self._lingering = True
            self._loop.call_later(self.sync.linger_ms / 1000.0, self._linger_commit)

    def _linger_commit(self) -> None:
        self._lingering = False
        sync = self.sync
        if sync is None or sync._closed:
            return
        for st in list(sync._topics.values()):
            if st.rq:
                sync._commit_rich(st)

    def _commit_all(self) -> None:
        """Worker thread: commit until no more was asked for. flush() may
        wait for buffer space (max_block_ms): here, not in the loop."""
        err = None
        while True:
            self._kicked = False
            self._queued = 0
            try:
                self.sync.flush()
            except BaseException as exc:  # its futures got it; a later send raises it too
                err = exc
            if not self._kicked:
                break
        self._loop.call_soon_threadsafe(self._worker_idle, err)

    def _worker_idle(self, err) -> None:
        self._running = False
        self._room.set()
        if self._kicked:
            self._kick()

    def _settle_threadsafe(self, futs, metas, err) -> None:
        """Any thread (Producer's commit): a commit's futures, settled in the
        loop (from the loop itself without waking it through its pipe)."""
        if threading.get_ident() == self.sync._nowait_thread:
            self._loop.call_soon(_settle, futs, metas, err)
        else:
            self._loop.call_soon_threadsafe(_settle, futs, metas, err)

    async def _drain(self) -> None:
        """Until everything sent so far is committed (or failed)."""
        self._kick()
        while self._running or self._kicked:
            await self._room.wait()

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


def _settle(futs, metas, err) -> None:
    """Loop thread: resolve the delivery futures of one commit: metas[i]
    None (or no metas) means not delivered."""
    if metas is None:
        metas = [None] * len(futs)
    for fut, md in zip(futs, metas):
        if fut is None or fut.done():
            continue
        if md is not None:
            fut.set_result(md)
        elif err is not None:
            fut.set_exception(err)
        # else: kept queued by a commit that found the buffer full


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
