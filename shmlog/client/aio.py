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
block. Waiting for data is the synchronous consumer's futex wait in that
thread, without the sync consumer's spin before it (spin_us=0 unless
given), and the hand-over to the loop is loop.call_soon_threadsafe
(asyncio's self-pipe). Nothing busy-polls: the worker sleeps in the
futex, the loop in epoll. The consumer's worker fetches ahead once asked
(up to _AHEAD messages): a stream costs one hand-over per read, worker ->
loop, and no request loop -> worker per message.

Why the worker does not spin: the spin was most of the consumer's CPU
(profile of a 10k msg/s run: the worker thread's time was mostly in
shmlog_log_wait, the loop thread's in the interpreter and epoll), and it
bought no latency: every message still needs the loop thread woken, and
on a 2-core host the spinning worker holds the core that the loop thread
(and the producer) need right then. Without it the W4 async row used
less CPU at no worse p50/p99 (bench/wait_ab.py, alternated).

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
from .aio_runs import KEYED, Delivery, Run, commit_runs, settle_runs
from .cluster import connect as _connect
from .consumer import Message
from .producer import RecordMetadata, _LockBusy

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
        # plain sends (aio_runs.py): runs not yet handed to the worker, the
        # last one open for more; _handed: runs the worker is committing
        self._runs: List[Run] = []
        self._run: Optional[Run] = None
        self._handed = 0

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
        if headers is None and timestamp_ms is None and value.__class__ is bytes and (
                key is None or (key.__class__ is bytes and partition is None)):
            st = sync._topics.get(topic)
            # a plain or keyed send joins a run, unless rich records of its
            # topic are queued (they are older: it queues behind them)
            if st is not None and not st.rq and not st.kq and (
                    len(value) if key is None else len(value) + len(key)) <= st.max_message and (
                    partition is None or (partition.__class__ is int and 0 <= partition < st.nparts)):
                where = partition if key is None else KEYED
                run = self._run
                if run is None or run.topic != topic or run.partition != where:
                    run = self._run = Run(topic, where, self._loop)
                    self._runs.append(run)
                    if sync.linger_ms:
                        self._linger_soon()
                vals = run.values
                vals.append(value)
                if key is not None:
                    run.keys.append(key)  # type: ignore[union-attr]
                if not self._running and not sync.linger_ms:
                    self._kick()
                return Delivery(run, len(vals) - 1)
        elif self._runs or self._handed:
            # the other forms queue in the synchronous producer: the runs
            # before them (any topic: cheap to be sure) go first
            await self._drain()
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
            runs, self._runs, self._run = self._runs, [], None
            self._handed = len(runs)
            self._ex.submit(self._commit_all, runs)

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
        if self._runs:
            self._kick()

    def _commit_all(self, runs: List[Run]) -> None:
        """Worker thread: commit the runs handed over, then the queues
        until no more was asked for. Both may wait for buffer space
        (max_block_ms): here, not in the loop."""
        err = None
        self._queued = 0
        if runs:
            done = commit_runs(self.sync, runs)
            self._loop.call_soon_threadsafe(settle_runs, done)
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
        self._handed = 0
        self._room.set()
        if self._kicked or (self._runs and not self.sync.linger_ms):
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
        while self._running or self._kicked or self._runs:
            if not self._running:
                self._kick()
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
            # the worker waits on the futex at once (module docstring)
            kwargs = {"spin_us": 0, **kwargs}
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
