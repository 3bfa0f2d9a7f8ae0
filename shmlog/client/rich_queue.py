"""The producer's rich queue (see _TopicState.rq): every send() that is
not a bare value to a partition or a bare keyed value (headers,
timestamp_ms, on_delivery, a key with an explicit partition, a non-bytes
value, ...) appends its record to one flat list per topic, six items a
record, in arrival order:

    partition (-1: hash the key in C), key or None, value or None,
    encoded header section (b"" for none), timestamp_ms (-1: now),
    on_delivery or None

Its commit hands the columns to C in one crossing (csrc/keyed.c
shmlog_rich_append: hashes keys, groups by partition stably, one frame per
partition) and then calls the delivery callbacks with the offsets C wrote.
Per message, send() only extends the list; nothing per message crosses
into C and nothing per message is encoded in Python (a header list equal
to the last one reuses its encoded section). Producer's methods, kept
apart by concern; they run with its lock and its state.
"""

from __future__ import annotations

import errno
import time
from array import array
from typing import Any, NamedTuple

from .. import errors
from ..core._core import ffi, lib
from .commit_rules import (
    _F_CLOSED,
    _HDR_FLAGS,
    _RECORD_OVERHEAD,
    HUNGRY_GAP,
    STREAM_BATCH,
    STREAM_GAP,
    _clock,
)


class RecordMetadata(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int


_rich_append = lib.shmlog_rich_append
_new_tuple = tuple.__new__
_NOT_COMMITTED = (1 << 64) - 1
RQ_FIELDS = 6


def _lens(items) -> array:
    try:
        return array("i", map(len, items))
    except TypeError:  # None among them: a null key or value
        return array("i", [-1 if v is None else len(v) for v in items])


def commit_rich(self: Any, st: Any) -> None:
    """Commit a topic's rich queue: the plain lists first (older: nothing
    joins them while the queue holds records), then the queue in one
    crossing. Like _commit_plain it commits a prefix and deletes just that;
    a failed commit drops its prefix, its callbacks get the error."""
    self._acquire()
    try:
        rq = st.rq
        n = len(rq)
        if not n:
            return
        if any(st.plain):
            for p in range(st.nparts):
                if st.plain[p]:
                    self._commit_plain(st, p)
        count = n // RQ_FIELDS
        callbacks = rq[5:n:RQ_FIELDS]
        with_cb = callbacks.count(None) != count
        delivered = False
        try:
            if st.waiters[0][_HDR_FLAGS] & _F_CLOSED or st.topic.regions[0].closed:
                self._topics.pop(st.name, None)
                raise errors.UnknownTopic(f"topic {st.name!r} was deleted while this producer used it",
                                          what=st.name)
            parts = array("i", rq[0:n:RQ_FIELDS])
            keys = rq[1:n:RQ_FIELDS]
            values = rq[2:n:RQ_FIELDS]
            headers = rq[3:n:RQ_FIELDS]
            stamps = rq[4:n:RQ_FIELDS]
            vlens = _lens(values)
            vblob = b"".join(values) if vlens.count(-1) == 0 else b"".join([v for v in values if v])
            if keys.count(None) == count:
                kblob = klens = ffi.NULL
            else:
                klens = _lens(keys)
                kblob = b"".join(keys) if klens.count(-1) == 0 else b"".join([k for k in keys if k])
                klens = ffi.from_buffer("int32_t[]", klens)
            hblob = b"".join(headers)
            hlens = ffi.from_buffer("uint32_t[]", array("I", map(len, headers))) if hblob else ffi.NULL
            if not hblob:
                hblob = ffi.NULL
            tsa = ffi.NULL if stamps.count(-1) == count else ffi.from_buffer("int64_t[]", array("q", stamps))
            out_parts = offsets = ffi.NULL
            if with_cb:
                out_parts = ffi.new("int32_t[]", count)
                offsets = ffi.new("uint64_t[]", count)
                ffi.memmove(offsets, b"\xff" * (8 * count), 8 * count)
            failed = ffi.new("uint32_t *")
            self._seq += 1
            ts_now = time.time_ns() // 1_000_000
            while True:
                rc = _rich_append(st.kq_logs, st.kq_slots, st.nparts, ffi.from_buffer("int32_t[]", parts),
                                  vblob, ffi.from_buffer("int32_t[]", vlens), kblob, klens, hblob, hlens,
                                  tsa, count, ts_now, self.producer_id, self._seq & 0xFFFFFFFF,
                                  self._max_block_ns, st.kq_ends, failed, out_parts, offsets)
                if rc != -errno.ENOENT:
                    break
                # first record for this partition: take a producer slot
                p = failed[0]
                if st.slots[p] < 0:
                    st.slots[p] = st.topic.regions[p].register_producer()
                st.kq_slots[p] = st.slots[p]
            err = None
            if rc < 0:
                p = failed[0]
                try:
                    try:
                        errors.check(rc, st.topic.regions[p].what)
                    except errors.BufferFull as exc:
                        self._buffer_full(st, p, exc, None)
                except errors.ShmlogError as exc:
                    err = exc
            if with_cb:
                delivered = True
                _deliver(st, callbacks, out_parts, offsets, stamps, ts_now, err)
            if err is not None:
                raise err
        except errors.ShmlogError as exc:
            if with_cb and not delivered:
                for cb in callbacks:
                    if cb is not None:
                        cb(exc, None)
            raise
        finally:
            del rq[:n]
            st.rq_bytes = (sum(len(v) for v in rq[2::RQ_FIELDS] if v) +
                           _RECORD_OVERHEAD * (len(rq) // RQ_FIELDS)) if rq else 0
            if rq:
                st.rq_since = time.monotonic()
                self._wake.set()
            now = _clock()
            st.rq_next = now + (HUNGRY_GAP if count < STREAM_BATCH else STREAM_GAP)
    finally:
        self._release()


def _deliver(st: Any, callbacks, out_parts, offsets, stamps, ts_now: int, err) -> None:
    """Delivery callbacks of one commit, in send order: the committed
    records get (None, RecordMetadata), the rest the error. The columns
    come out of C in one unpack each; a metadata tuple is made without
    NamedTuple's Python-level __new__ (a third of a callback's cost)."""
    name = st.name
    count = len(callbacks)
    parts = ffi.unpack(out_parts, count)
    offs = ffi.unpack(offsets, count)
    for cb, p, off, ts in zip(callbacks, parts, offs, stamps):
        if cb is None:
            continue
        if off == _NOT_COMMITTED:
            cb(err, None)
        else:
            cb(None, _new_tuple(RecordMetadata, (name, p, off, ts_now if ts < 0 else ts)))
