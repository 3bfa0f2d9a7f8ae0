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
block. Waiting for data is the synchronous consumer's wait (spin, then
futex) in that thread, and the hand-over to the loop is
loop.call_soon_threadsafe (asyncio's self-pipe). Nothing busy-polls:
the worker sleeps in the futex, the loop in epoll. The consumer's worker
fetches ahead once asked (up to _AHEAD messages): a stream costs one
hand-over per read, worker -> loop, and no request loop -> worker per
message. That cut the consumer's CPU at 10k msg/s in a harness without a
group (52% -> 29% of a core). The bench's W4 async row, with a group,
still shows 73-88% on a loaded host.

The hand-over itself costs the same either way. A worker thread waking
the loop at 10k/s by call_soon_threadsafe or by an eventfd in add_reader
gave p50 14.3 / 13.2 us and 8-10% of the loop thread's CPU, same run.
An eventfd that producers write, in place of the worker's futex wait,
was not built: see the next paragraph.

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
from .producer import RecordMetadata

TP = Tuple[str, int]

# how long one idle fetch in a consumer's worker lasts before it looks for
# calls to run (commit, seek, close): their latency while nothing comes
_IDLE_SLICE = 0.05
# messages a consumer worker fetches per read, and fetches ahead of the
# application before it pauses
_FETCH = 10_000
_AHEAD = 10_000
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
    """Consumer whose waits happen in its own worker thread: getone(),
    getmany(), `async for`. Group callbacks (plain functions or coroutine
    functions) run on the loop, while the worker waits for them.

    The worker fetches ahead (up to _AHEAD messages) without being asked
    each time: a message costs one hand-over (worker -> loop, coalesced
    while one is pending), not a request to the worker and an answer.
    Calls that touch the synchronous consumer (commit, seek, assignment,
    close) run in the worker between two fetches, so they wait at most
    _IDLE_SLICE for an idle fetch to end."""

    def __init__(self, cluster: AIOCluster, topics: Union[str, Sequence[str]], *,
                 group: Optional[str] = None, on_assign: Optional[Callable] = None,
                 on_revoke: Optional[Callable] = None, **kwargs: Any):
        self._cluster = cluster
        self._args = (topics, group, on_assign, on_revoke, kwargs)
        self.sync = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._buf: Deque[Message] = collections.deque()  # loop side
        # worker side, under _cond: calls to run, what was fetched but not
        # yet handed to the loop, whether a hand-over is scheduled
        self._cond = threading.Condition()
        self._calls: Deque[tuple] = collections.deque()
        self._fetched: List[Message] = []
        self._handing = False
        self._error: Optional[BaseException] = None
        self._want = False  # a getter asked: fetch ahead from now on
        self._paused = False  # the worker waits for the buffer to drain
        self._exit = False
        self._thread: Optional[threading.Thread] = None
        self._waiters: List[asyncio.Future] = []
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
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shmlog-aio-consumer",
                                                daemon=True)
                self._thread.start()
            topics, group, on_assign, on_revoke, kwargs = self._args
            try:
                self.sync = await self._call(functools.partial(
                    self._cluster.sync.consumer, topics, group=group,
                    on_assign=self._on_loop(on_assign), on_revoke=self._on_loop(on_revoke), **kwargs))
            except BaseException:
                await self._end_worker()
                raise
        return self

    async def __aenter__(self) -> AIOConsumer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ------------------------------------------------------------ the worker
    def _may_fetch(self) -> bool:
        return (self._want and self.sync is not None and self._error is None and not self._closed
                and len(self._buf) + len(self._fetched) < _AHEAD)

    def _run(self) -> None:
        """Worker thread: run the calls posted to it; between them, fetch
        ahead (the consumer's futex wait, in slices) and hand what comes to
        the loop."""
        cond = self._cond
        loop = self._loop
        while True:
            with cond:
                while not self._calls and not self._may_fetch():
                    if self._exit:
                        return
                    self._paused = True
                    cond.wait()
                self._paused = False
                call = self._calls.popleft() if self._calls else None
            if call is not None:
                fn, fut = call
                try:
                    r, exc = fn(), None
                except BaseException as e:  # handed to the awaiting caller
                    r, exc = None, e
                loop.call_soon_threadsafe(_resolve, fut, r, exc)
                continue
            try:
                msgs = self.sync.consume(_FETCH, timeout=_IDLE_SLICE)
            except BaseException as e:  # the next getter raises it
                msgs, err = [], e
            else:
                err = None
            if not msgs and err is None:
                continue
            with cond:
                self._fetched.extend(msgs)
                if err is not None:
                    self._error = err
                hand, self._handing = not self._handing, True
            if hand:
                loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        """Loop thread: take what the worker fetched; wake the getters."""
        with self._cond:
            got, self._fetched = self._fetched, []
            self._handing = False
        self._buf.extend(got)
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _poke(self) -> None:
        with self._cond:
            self._cond.notify()

    async def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run fn in the worker, between two fetches."""
        if self._thread is None:
            raise errors.Closed("this AIOConsumer is not started: use `async with cluster.consumer(...)`")
        fut = self._loop.create_future()
        with self._cond:
            self._calls.append((functools.partial(fn, *args, **kwargs), fut))
            self._cond.notify()
        return await fut

    # ------------------------------------------------------------ reading
    async def _wait(self, timeout: Optional[float]) -> None:
        """Until the worker hands something over (or raised), or timeout."""
        if self.sync is None:
            raise errors.Closed("this AIOConsumer is not started: use `async with cluster.consumer(...)`")
        if self._closed:
            raise errors.Closed("this AIOConsumer is closed")
        if self._error is not None:
            with self._cond:
                err, self._error = self._error, None
                self._cond.notify()
            raise err
        if not self._want or self._paused:
            self._want = True
            self._poke()
        if timeout is not None and timeout <= 0:
            await asyncio.sleep(0)  # let a hand-over that is due run
            return
        fut = self._loop.create_future()
        self._waiters.append(fut)
        timer = None if timeout is None else self._loop.call_later(timeout, _resolve, fut, None, None)
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()
            if not fut.done():  # cancelled: nothing of ours is lost, it stays in _buf
                fut.cancel()

    def _took(self) -> None:
        """The loop took from the buffer: a worker paused on a full one
        fetches again once half of it is gone."""
        if self._paused and len(self._buf) < _AHEAD // 2:
            self._poke()

    async def getone(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next message; None only after `timeout` seconds (default: wait)."""
        buf = self._buf
        if not buf:
            deadline = None if timeout is None else self._loop.time() + timeout
            while not buf:
                left = None if deadline is None else deadline - self._loop.time()
                if left is not None and left <= 0:
                    return None
                await self._wait(left)
        m = buf.popleft()
        if self._paused:
            self._took()
        return m

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
            await self._wait(timeout)
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
        self._took()
        return out

    def __aiter__(self) -> AIOConsumer:
        return self

    async def __anext__(self) -> Message:
        buf = self._buf
        while not buf:
            if self._closed:
                raise StopAsyncIteration
            await self._wait(_IDLE_SLICE * 4)
        m = buf.popleft()
        if self._paused:
            self._took()
        return m

    # ------------------------------------------------------------ offsets
    async def commit(self, offsets: Optional[Dict[TP, int]] = None) -> None:
        """Commit what was handed out (messages still buffered here are not)."""
        def commit():
            if offsets is None:
                self._rewind()
            self.sync.commit(offsets)
        await self._call(commit)

    def _rewind(self) -> None:
        """Worker thread: a partition whose messages are still buffered here
        was handed out only up to the first of them; the synchronous
        consumer counts them as returned (what commit() and close() commit)."""
        first: Dict[TP, int] = {}
        for m in list(self._buf) + self._fetched:
            first.setdefault((m[0], m[1]), m[2])
        for tp, off in first.items():
            a = self.sync.assigned_state.get(tp)
            if a is not None and off < a.returned:
                a.returned = off

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)

        def seek():
            self.sync.seek(topic, partition, offset)
            # what was fetched from before the seek goes; the loop drops its
            # part before any later hand-over runs (callbacks run in order)
            with self._cond:
                self._fetched = [m for m in self._fetched if (m[0], m[1]) != tp]
            self._loop.call_soon_threadsafe(self._drop, tp)
        await self._call(seek)

    def _drop(self, tp: TP) -> None:
        self._buf = collections.deque(m for m in self._buf if (m[0], m[1]) != tp)

    async def assignment(self) -> List[TP]:
        return await self._call(self.sync.assignment)

    async def stop(self) -> None:
        if self._closed or self.sync is None:
            self._closed = True
            await self._end_worker()
            return
        self._closed = True  # the worker stops fetching after its slice

        def close():
            # close() commits what consume() returned: not what is still buffered
            try:
                self._rewind()
                self.sync.close()
            finally:
                with self._cond:
                    self._fetched = []
                    self._exit = True
        try:
            await self._call(close)
        finally:
            self._buf.clear()
            await self._end_worker()

    async def _end_worker(self) -> None:
        t = self._thread
        if t is None:
            return
        with self._cond:
            self._exit = True
            self._cond.notify()
        await self._loop.run_in_executor(None, t.join)

    close = stop


def _resolve(fut: asyncio.Future, result: Any, exc: Optional[BaseException]) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)
