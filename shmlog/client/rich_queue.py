"""The producer's rich queue (see _TopicState.rq): every send() that is
not a bare value to a partition or a bare keyed value (headers,
timestamp_ms, on_delivery, a key with an explicit partition, a non-bytes
value, ...) appends its record to one queue per topic, in arrival order:
shmlog.core._messages.RichQueue (csrc/rich_queue.h), which keeps the
records in the C core's record array itself, each with a reference to its
key, value, encoded header section (b"" for none) and on_delivery; its
partition (-1: hash the key in C) and timestamp_ms (-1: now) are fields.
send()'s C branch (csrc/send.c) pushes there directly; its Python path
appends the tuple

    (partition, key or None, value or None, header bytes, timestamp_ms or None, on_delivery or None)

which is also what indexing the queue returns.

Its commit take()s the records as a batch (sends made meanwhile go to the
queue's next arrays), hands the batch's array to C in one crossing
(csrc/keyed.c shmlog_rich_append: hashes keys, groups by partition
stably, one frame per partition), calls the delivery callbacks from C
with the offsets C wrote (_messages.deliver: a RecordMetadata built in C
per callback), and recycles the batch's arrays for the queue. Nothing per
message is allocated or encoded in Python (a header list equal to the
last one reuses its encoded section). Producer's methods, kept apart by
concern; they run with its lock and its state.
"""

from __future__ import annotations

import errno
import functools
import threading
import time
from collections import deque
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

from .. import errors
from ..core import commit as _commit
from ..core._core import ffi, lib
from ..core._messages import deliver as _deliver_each
from ..core._messages import first_nonempty as _first_nonempty
from ..core._messages import rich_columns as _rich_columns
from .commit_rules import (
    _F_CLOSED,
    _HDR_BELL_HUNGRY,
    _HDR_FLAGS,
    _HDR_HUNGRY,
    _RECORD_OVERHEAD,
    HUNGRY_GAP,
    STREAM_BATCH,
    STREAM_GAP,
    _clock,
    next_sticky,
)


class RecordMetadata(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int


_rich_append = _commit.rich_append
_CALLBACKS = lib.SHMLOG_RICH_CALLBACKS
# a queued record's callback, its timestamp
_callback_of = itemgetter(5)
_stamp_of = itemgetter(4)
_make_meta = functools.partial(tuple.__new__, RecordMetadata)
_NOT_COMMITTED = (1 << 64) - 1


def rich_queued(self: Any, st: Any, p: int, nb: int) -> None:
    """After send() queued a record on the rich queue (now nb bytes):
    commit it when it is full, or a reader waits (at most one commit per
    HUNGRY_GAP); else have the flusher honour linger_ms for a new queue."""
    if len(st.rq) == 1:
        # a queue spread over partitions by key holds several frames
        st.rq_limit = st.limit if p >= 0 else st.kq_limit
        if nb < st.rq_limit and not self.linger_ms and not (
                st.bell[_HDR_BELL_HUNGRY] or (p >= 0 and st.waiters[p][_HDR_HUNGRY])):
            st.rq_since = time.monotonic()
            self._linger_wake()
            return
    if nb >= st.rq_limit:
        self._commit_rich(st)
        # (not when the commit was deferred to shmlog.aio's worker)
        if p == st.sticky and st.nparts > 1 and not st.rq:
            next_sticky(st, p)
        return
    if (not self.linger_ms and (st.bell[_HDR_BELL_HUNGRY] or (p >= 0 and st.waiters[p][_HDR_HUNGRY]))
            and _clock() >= st.rq_next):
        self._commit_rich(st)
        return
    if len(st.rq) == 1:
        st.rq_since = time.monotonic()
        self._linger_wake()

def linger_wake(self: Any) -> None:
    """A new rich queue: the flusher thread honours linger_ms, or on
    shmlog.aio's loop the loop itself (a thread woken per queue would
    take the GIL from the loop for every commit)."""
    if self._linger_hook is not None and self._nowait_thread == threading.get_ident():
        self._linger_hook()
    else:
        self._wake.set()


def _records(self: Any, n: int):
    """The C core's record array for a commit of n records: the
    producer's, grown as needed and reused (commits run under its lock;
    nothing reads it once the commit's crossing returns)."""
    arr = self._rich_records
    if arr is None or len(arr) < n:
        arr = self._rich_records = ffi.new("shmlog_rich_record_t[]", max(n, 1024))
        self._rich_view = ffi.buffer(arr)
        self._rich_addr = _commit.address(arr)
    return arr


def _columns(self: Any, records: list, n: int):
    """records[0:n] as the C core's record array (in one call, pointing
    into their bytes: valid while records lives) and what they use
    (SHMLOG_RICH_* flags)."""
    arr = _records(self, n)
    return arr, _rich_columns(records, n, self._rich_view)


class _Placement:
    """A commit's output columns, which C fills: each record's partition
    and offset (NOT_COMMITTED until committed), with their buffers and
    addresses made once. The producer keeps one and reuses it (a commit
    with callbacks would otherwise make two cffi arrays and look up their
    addresses and buffers: ~4 us, a tenth of a 30-record commit); a commit
    made from a delivery callback, while the kept one is still being read,
    gets its own."""

    __slots__ = ("size", "parts", "offsets", "parts_buf", "offsets_buf", "parts_at", "offsets_at", "busy")

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts = ffi.new("int32_t[]", size)
        self.offsets = ffi.new("uint64_t[]", size)
        self.parts_buf = ffi.buffer(self.parts)
        self.offsets_buf = ffi.buffer(self.offsets)
        self.parts_at = _commit.address(self.parts)
        self.offsets_at = _commit.address(self.offsets)
        self.busy = False


def _placement(self: Any, n: int) -> _Placement:
    out = self._rich_out
    if out is None or out.busy or out.size < n:
        out = _Placement(max(n, 1024))
        if self._rich_out is None or not self._rich_out.busy:
            self._rich_out = out
    out.busy = True
    return out


def commit_rich(self: Any, st: Any, nowait: bool = False) -> bool:
    """Commit a topic's rich queue: the plain lists first (older: nothing
    joins them while the queue holds records), then the queue in one
    crossing. It takes every record queued when it starts (later sends
    queue behind them); a failed commit drops what it took, and their
    callbacks get the error.
    nowait (shmlog.aio's loop thread, with delivery futures): no wait for
    buffer space; what did not fit stays queued, first, and False says a
    commit that may wait is still needed."""
    kept = None
    out = None
    self._acquire()
    try:
        rq = st.rq
        n = len(rq)
        if not n:
            return True
        first = _first_nonempty(st.plain)
        if first >= 0:
            for p in range(first, st.nparts):
                if st.plain[p]:
                    self._commit_plain(st, p)
        # every record queued by now, sends made from here on (callbacks,
        # another thread while C waits for space) queue behind it
        records = rq.take()
        n = len(records)
        with_callbacks = False
        delivered = False
        try:
            if st.waiters[0][_HDR_FLAGS] & _F_CLOSED or st.topic.regions[0].closed:
                self._topics.pop(st.name, None)
                raise errors.UnknownTopic(f"topic {st.name!r} was deleted while this producer used it",
                                          what=st.name)
            ts_now = time.time_ns() // 1_000_000
            self._seq += 1
            # the batch is the core's record array already (send() wrote
            # it); the callbacks need each record's partition and offset
            flags = records.flags
            at = records.address
            with_callbacks = bool(flags & _CALLBACKS)
            if with_callbacks or nowait:
                out = _placement(self, n)
                rc = _append_at(self, st, n, flags, ts_now, out.parts_at, out.offsets_at, nowait, at)
            else:
                rc = _append_at(self, st, n, flags, ts_now, 0, 0, nowait, at)
            if nowait and rc == -errno.EAGAIN:
                # full now: deliver what went, keep the rest for the worker
                # (back on the queue when the callbacks have run)
                kept = True
                rc = 0
            err = None
            if rc < 0:
                p = self._failed[0]
                try:
                    try:
                        errors.check(rc, st.topic.regions[p].what)
                    except errors.BufferFull as exc:
                        self._buffer_full(st, p, exc, None)
                except errors.ShmlogError as exc:
                    err = exc
            if with_callbacks:
                delivered = True
                if self._settle_delivery is None:
                    _deliver_each(records, n, RecordMetadata, st.name, out.parts_buf, out.offsets_buf,
                                  ts_now, err)
                else:
                    _deliver(self, st, list(map(_callback_of, records)), out.parts, out.offsets,
                             list(map(_stamp_of, records)), ts_now, err)
            if err is not None:
                raise err
        except errors.ShmlogError as exc:
            callbacks = [r[5] for r in records]
            if callbacks.count(None) == len(callbacks):
                callbacks = None
            if callbacks is not None and not delivered:
                if self._settle_delivery is not None:
                    self._settle_delivery(callbacks, None, exc)
                    raise
                for cb in callbacks:
                    if cb is not None:
                        cb(exc, None)
            raise
        finally:
            if kept:
                # older than anything queued meanwhile: back to the front
                kept = rq.putback(records, out.offsets_buf) > 0
            if out is not None:
                out.busy = False
            rq.recycle(records)
            if rq:
                st.rq_bytes = rq.nbytes(_RECORD_OVERHEAD)
                st.rq_limit = st.limit if rq.first_partition >= 0 else st.kq_limit
                st.rq_since = time.monotonic()
                self._wake.set()
            else:  # (the usual case: no generator to sum nothing)
                st.rq_bytes = 0
                st.rq_limit = st.limit
            now = _clock()
            st.rq_next = now + (HUNGRY_GAP if n < STREAM_BATCH else STREAM_GAP)
    finally:
        self._release()
    return not kept


def _append(self: Any, st: Any, n: int, flags: int, ts_now: int, out_parts, offsets,
            nowait: bool = False) -> int:
    """_append_at with the output columns as cffi arrays (or ffi.NULL)."""
    return _append_at(self, st, n, flags, ts_now, 0 if out_parts == ffi.NULL else _commit.address(out_parts),
                      0 if offsets == ffi.NULL else _commit.address(offsets), nowait)


def _append_at(self: Any, st: Any, n: int, flags: int, ts_now: int, parts_at: int, offsets_at: int,
               nowait: bool = False, records_at: int = 0) -> int:
    """The commit's crossing of the records _columns wrote (and another per
    partition on first use, to take a producer slot there), holding the
    GIL unless C must wait (core.commit). parts_at/offsets_at: addresses of
    the output columns or 0; the offsets are set to NOT_COMMITTED first.
    records_at: the record array's address (a RichQueue batch's), 0: the
    producer's own (_columns). On failure self._failed[0] names the
    partition."""
    failed = self._failed
    logs, slots, ends = st.kq_addrs
    while True:
        rc = _rich_append(logs, slots, st.nparts, records_at or self._rich_addr, n, flags, ts_now,
                          self.producer_id, self._seq & 0xFFFFFFFF, 0 if nowait else self._max_block_ns,
                          ends, self._failed_addr, parts_at, offsets_at)
        if rc != -errno.ENOENT:
            return rc
        p = failed[0]
        if st.slots[p] < 0:
            st.slots[p] = st.topic.regions[p].register_producer()
        st.kq_slots[p] = st.slots[p]


def _deliver(self: Any, st: Any, callbacks, out_parts, offsets, stamps, ts_now: int, err) -> None:
    """Delivery callbacks of one commit, in send order: the committed
    records get (None, RecordMetadata), the rest the error. The columns
    come out of C in one unpack each and the metadata tuples are made at C
    speed (NamedTuple's own __new__ is a Python call: half a callback's
    cost)."""
    n = len(callbacks)
    offs = ffi.unpack(offsets, n)
    # None (or -1): stamped at the commit
    stamps = [ts_now if ts is None or ts < 0 else ts for ts in stamps]
    metas = map(_make_meta, zip(repeat(st.name), ffi.unpack(out_parts, n), offs, stamps))
    if self._settle_delivery is not None:
        # shmlog.aio: the callbacks are futures, settled in the loop
        # None: not committed (err, or kept queued when err is None)
        if _NOT_COMMITTED in offs:
            metas = [None if off == _NOT_COMMITTED else md for md, off in zip(metas, offs)]
        self._settle_delivery(callbacks, list(metas), err)
        return
    if err is None:
        cb = callbacks[0]
        if cb is not None and callbacks.count(cb) == n:
            # one callback for the whole commit (the usual case): called
            # from C's iteration, no Python loop around it
            deque(map(cb, repeat(None), metas), 0)
            return
        for cb, md in zip(callbacks, metas):
            if cb is not None:
                cb(None, md)
        return
    for cb, md, off in zip(callbacks, metas, offs):
        if cb is not None:
            if off == _NOT_COMMITTED:
                cb(err, None)
            else:
                cb(None, md)
