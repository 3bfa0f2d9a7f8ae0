"""shmlog.aio's send path for plain sends (a bytes value, no key, headers
or timestamp): runs of values, committed by the producer's worker thread.

On the loop, `await producer.send(t, v)` appends the value to the open
run of its topic (and partition, when one is given) and returns a
Delivery: the run and the value's index in it, nothing else. No future,
no callback, no RecordMetadata per message: a run is handed to the
worker whole (one hand-over per run, not per message), which commits it
frame by frame through the synchronous Producer and gives back, per
frame, the partition, base offset and timestamp C wrote. A Delivery's
metadata is built only when it is awaited (or result() asked), from the
frame holding its index; a future exists only for a Delivery awaited
before its run is committed. The loop never waits here: a full buffer
waits in the worker, and the loop's sends wait on the producer's room
event once _QUEUE_MAX of them queue behind it.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from itertools import accumulate, repeat
from typing import Any, List, Optional

from .. import errors
from ..core._core import ffi
from .commit_rules import _F_CLOSED, _HDR_FLAGS, _RECORD_OVERHEAD
from .rich_queue import _NOT_COMMITTED as NOT_COMMITTED
from .rich_queue import RecordMetadata
from .rich_queue import _append as rich_append
from .rich_queue import _columns as rich_columns

# Run.partition of a keyed run (C picks each record's partition)
KEYED = -1
# records a keyed run hands C per crossing
KEYED_PIECE = 8192


class Run:
    """Values sent to one topic (to one explicit partition, or None: the
    sticky one per frame), in send order, up to the hand-over. A keyed run
    (partition KEYED) holds the keys too; C hashes them at commit and
    names each record's partition and offset (parts, offs)."""

    __slots__ = ("topic", "partition", "values", "keys", "loop", "done", "starts", "frames", "err",
                 "err_at", "waiters", "parts", "offs")

    def __init__(self, topic: str, partition: Optional[int], loop: asyncio.AbstractEventLoop):
        self.topic = topic
        self.partition = partition
        self.values: List[bytes] = []
        self.keys: Optional[List[bytes]] = [] if partition == KEYED else None
        self.parts: Optional[List[int]] = None
        self.offs: Optional[List[int]] = None
        self.loop = loop
        self.done = False
        self.starts: List[int] = []   # index of each committed frame's first value
        self.frames: List[tuple] = []  # (partition, base offset, timestamp) per frame
        self.err: Optional[BaseException] = None
        self.err_at = 1 << 62  # values from this index on failed with err
        self.waiters: Optional[List[asyncio.Future]] = None

    def settle(self, starts, frames, err, err_at, parts, offs) -> None:
        """Loop thread: the worker committed this run."""
        self.starts, self.frames, self.err, self.err_at = starts, frames, err, err_at
        self.parts, self.offs = parts, offs
        self.done = True
        self.values = self.keys = None  # type: ignore[assignment]  # committed: only the index matters now
        if self.waiters:
            for fut in self.waiters:
                if not fut.done():
                    fut.set_result(None)
            self.waiters = None


class Delivery:
    """What `await producer.send(t, v)` returns for a plain send: awaiting
    it gives the record's RecordMetadata (or raises its error), like the
    future aiokafka returns; done()/result()/exception() as a future's."""

    __slots__ = ("run", "i")

    def __init__(self, run: Run, i: int):
        self.run = run
        self.i = i

    def done(self) -> bool:
        return self.run.done

    def exception(self) -> Optional[BaseException]:
        run = self.run
        if not run.done:
            raise asyncio.InvalidStateError("the send is not committed yet")
        if self.i >= run.err_at or (run.offs is not None and run.offs[self.i] == NOT_COMMITTED):
            return run.err
        return None

    def result(self) -> RecordMetadata:
        run, i = self.run, self.i
        if not run.done:
            raise asyncio.InvalidStateError("the send is not committed yet")
        if i >= run.err_at or (run.offs is not None and run.offs[i] == NOT_COMMITTED):
            raise run.err  # type: ignore[misc]
        k = bisect_right(run.starts, i) - 1
        p, base, ts = run.frames[k]
        if run.parts is not None:  # keyed: C named each record's place
            return RecordMetadata(run.topic, run.parts[i], run.offs[i], ts)  # type: ignore[index]
        return RecordMetadata(run.topic, p, base + i - run.starts[k], ts)

    def _waiter(self) -> asyncio.Future:
        # one future per awaiter, not one shared: a cancelled awaiter
        # cancels only its own
        run = self.run
        fut = run.loop.create_future()
        if run.waiters is None:
            run.waiters = []
        run.waiters.append(fut)
        return fut

    def add_done_callback(self, fn) -> None:
        """fn(self) on the loop once committed (or failed), as a future's."""
        if self.run.done:
            self.run.loop.call_soon(fn, self)
        else:
            self._waiter().add_done_callback(lambda _f: fn(self))

    def __await__(self):
        if not self.run.done:
            yield from self._waiter().__await__()
        return self.result()


def commit_runs(sync: Any, runs: List[Run]) -> List[tuple]:
    """Worker thread: commit each run frame by frame (it may wait for
    buffer space up to max_block_ms); what each run's settle needs."""
    out = []
    for run in runs:
        if run.keys is not None:
            out.append(_commit_keyed_run(sync, run))
            continue
        starts: List[int] = []
        frames: List[tuple] = []
        err: Optional[BaseException] = None
        err_at = 1 << 62
        values = run.values
        n = len(values)
        i = 0
        try:
            st = sync._topics.get(run.topic) or sync._state(run.topic)
            limit = st.frame_limit
            # cumulative sizes at C speed; each frame's end by bisection
            ends = list(accumulate(map(len, values)))
            with sync._lock:
                while i < n:
                    j = _frame_end(ends, i, limit)
                    p = run.partition
                    if p is None:
                        p = st.sticky
                        if st.nparts > 1:
                            st.sticky = (p + 1) % st.nparts
                    sync._append(st, p, values if (i, j) == (0, n) else values[i:j],
                                 None, None, None, None)
                    base, ts = sync._last_commit
                    if base < 0:
                        raise errors.ShmlogError("a frame of an async send run was split")
                    starts.append(i)
                    frames.append((p, base, ts))
                    i = j
        except Exception as exc:  # the rest of the run gets it
            err, err_at = exc, i
        out.append((run, starts, frames, err, err_at, None, None))
    return out


def _commit_keyed_run(sync: Any, run: Run) -> tuple:
    """A keyed run through the rich queue's crossing (csrc/keyed.c: keys
    hashed, grouped by partition, offsets back), KEYED_PIECE records at a
    time. A failed piece fails its records that C did not commit."""
    starts: List[int] = []
    frames: List[tuple] = []
    parts: List[int] = []
    offs: List[int] = []
    err: Optional[BaseException] = None
    err_at = 1 << 62
    values, keys = run.values, run.keys
    n = len(values)
    i = 0
    try:
        st = sync._topics.get(run.topic) or sync._state(run.topic)
        with sync._lock:
            while i < n:
                j = min(n, i + KEYED_PIECE)
                m = j - i
                records = list(zip(repeat(-1), keys[i:j], values[i:j],  # type: ignore[index]
                                   repeat(b""), repeat(-1), repeat(None)))
                out_parts = ffi.new("int32_t[]", m)
                offsets = ffi.new("uint64_t[]", m)
                ffi.memmove(offsets, b"\xff" * (8 * m), 8 * m)
                ts_now = time.time_ns() // 1_000_000
                sync._seq += 1
                if st.waiters[0][_HDR_FLAGS] & _F_CLOSED or st.topic.regions[0].closed:
                    raise errors.UnknownTopic(f"topic {st.name!r} was deleted while this producer used it",
                                              what=st.name)
                _, flags = rich_columns(sync, records, m)
                rc = rich_append(sync, st, m, flags, ts_now, out_parts, offsets)
                starts.append(i)
                frames.append((-1, -1, ts_now))
                parts += ffi.unpack(out_parts, m)
                offs += ffi.unpack(offsets, m)
                i = j
                if rc < 0:
                    p = sync._failed[0]
                    try:
                        errors.check(rc, st.topic.regions[p].what)
                    except errors.BufferFull as exc:
                        sync._buffer_full(st, p, exc, None)
    except Exception as exc:  # the rest of the run gets it
        err, err_at = exc, i
    return run, starts, frames, err, err_at, parts, offs


def _frame_end(ends: List[int], i: int, limit: int) -> int:
    """The end of the frame that starts at value i: as many values as fit
    under limit with their framing (at least one)."""
    before = ends[i - 1] if i else 0
    lo, hi = i + 1, len(ends)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ends[mid - 1] - before + _RECORD_OVERHEAD * (mid - i) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def settle_runs(done: List[tuple]) -> None:
    """Loop thread: the worker's commit_runs result."""
    for item in done:
        item[0].settle(*item[1:])
