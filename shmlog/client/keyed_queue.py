"""The producer's keyed queue (see _TopicState.kq): its commit, which
hashes every key and appends one frame per partition in one crossing
(csrc/keyed.c), and a lone keyed send's one-crossing commit. Producer's
methods, kept apart by concern; they run with its lock and its state.
"""

from __future__ import annotations

import errno
import time
from typing import Any

from .. import errors
from ..core import commit as _commit
from .commit_rules import (
    _F_CLOSED,
    _HDR_FLAGS,
    _RECORD_OVERHEAD,
    HUNGRY_GAP,
    STREAM_BATCH,
    STREAM_GAP,
    _clock,
)
from .rich_queue import _first_nonempty, _records

_keyed_one = _commit.keyed_append_one
_keyed_queue_append = _commit.keyed_queue_append


def commit_keyed(self: Any, st: Any) -> None:
    """Commit a topic's keyed queue: every other list of the topic first
    (the plain lists, then the rich queue: older, as nothing joins them
    while the keyed queue holds records), then the
    queue in one crossing that hashes each key and appends one frame per
    partition touched (csrc/keyed.c). Like _commit_plain it commits a
    prefix and deletes just that; a failed commit drops its prefix."""
    self._acquire()
    try:
        kq = st.kq
        n = len(kq)
        if not n:
            return
        if st.rq or _first_nonempty(st.plain) >= 0:
            self._commit_rich(st)  # the plain lists first, when it holds records
            for p in range(st.nparts):
                if st.plain[p]:
                    self._commit_plain(st, p)
        try:
            if st.waiters[0][_HDR_FLAGS] & _F_CLOSED or st.topic.regions[0].closed:
                self._topics.pop(st.name, None)
                raise errors.UnknownTopic(f"topic {st.name!r} was deleted while this producer used it",
                                          what=st.name)
            # the queue's keys and values are read into the core's record
            # array in C (no joined copy, no length columns made here)
            recs = _records(self, n // 2)
            logs, slots, ends = st.kq_addrs
            failed = self._failed
            self._seq += 1
            ts_now = time.time_ns() // 1_000_000
            while True:
                # one crossing, holding the GIL unless C must wait (core.commit)
                rc = _keyed_queue_append(logs, slots, st.nparts, kq, n, self._rich_addr, len(recs), ts_now,
                                         self.producer_id, self._seq & 0xFFFFFFFF, self._max_block_ns,
                                         ends, self._failed_addr)
                if rc != -errno.ENOENT:
                    break
                # first record for this partition: take a producer slot
                p = failed[0]
                if st.slots[p] < 0:
                    st.slots[p] = st.topic.regions[p].register_producer()
                st.kq_slots[p] = st.slots[p]
            if rc < 0:
                p = failed[0]
                try:
                    errors.check(rc, st.topic.regions[p].what)
                except errors.BufferFull as exc:
                    self._buffer_full(st, p, exc, None)
        finally:
            del kq[:n]
            st.kq_bytes = (sum(map(len, kq)) + _RECORD_OVERHEAD * (len(kq) // 2)) if kq else 0
            if kq:
                st.kq_since = time.monotonic()
                self._wake.set()
            now = st.kq_at = _clock()
            st.kq_next = now + (HUNGRY_GAP if n < 2 * STREAM_BATCH else STREAM_GAP)
    finally:
        self._release()

def send_keyed_one(self: Any, st: Any, partition: int, key: bytes, value: bytes) -> bool:
    """send()'s lone keyed message, committed at once in one crossing to
    the partition its key hashed to; False (nothing done) when anything
    is queued for the topic's keyed queue or that partition (order), or
    on the partition's first use (the queue's commit registers)."""
    self._acquire()
    try:
        plog = st.topic.regions[partition]
        slot = st.slots[partition]
        if (st.kq or st.plain[partition] or st.rq or slot < 0
                or plog.closed or st.waiters[partition][_HDR_FLAGS] & _F_CLOSED):
            return False
        self._seq += 1
        rc = _keyed_one(plog.c_addr, slot, key, value, time.time_ns() // 1_000_000,
                        self.producer_id, self._seq & 0xFFFFFFFF, self._max_block_ns)
        self._lone_done(st, partition, plog, rc)
        # a stream of keyed sends (each to another partition, with its
        # own budget) finds this too recent and queues
        st.kq_at = st.tokens_at[partition]
        return True
    finally:
        self._release()
