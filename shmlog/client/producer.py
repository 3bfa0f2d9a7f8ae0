"""Producer: send() appends to a per-partition pending batch in Python; the
batch crosses into C once (encode, claim, commit) when it is full, when a
consumer is asleep waiting for data, when linger_ms passes, or on flush().
Keyed sends queue per topic instead, and their keys are hashed in C when
the queue is committed (keyed_queue.py): the partition is not known in
send(), only at commit, where each partition's records keep send order.
Every other form (headers, timestamp_ms, on_delivery, key with partition,
...) queues per topic on the rich queue (rich_queue.py), committed the same
way with its headers, timestamps and callbacks handled per commit.

send() must stay a few list appends: no crossing into C for the commit, no
syscall, per message. Its common forms run as one C call (csrc/send.c,
Producer's base _SendBase): the same appends and the same checks, calling
back into this module for every decision that commits, and handing every
other call to _send_py whole. A background flusher thread only exists to
honour linger_ms for a producer that goes quiet.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from array import array
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .. import config as cfgmod
from .. import errors
from ..core import commit as _commit
from ..core._core import ffi, lib
from ..core._messages import RichQueue
from ..core._send import _SendBase, _SendState, set_rules
from ..core.budget_region import budget_wait
from ..core.codec import encode_headers
from ..core.partitioner import KeyPartitioner
from ..core.records import POINTER_BATCH, POINTER_VALUE, pickle_values
from .batch_send import send_batch
from .commit_rules import (
    _F_CLOSED,
    _HDR_BELL_HUNGRY,
    _HDR_FLAGS,
    _HDR_HUNGRY,
    _RECORD_OVERHEAD,
    HUNGRY_BURST,
    HUNGRY_GAP,
    HUNGRY_RATE,
    KQ_SPREAD,
    LONE_AFTER,
    STREAM_BATCH,
    STREAM_GAP,
    _clock,
    next_sticky,
)
from .keyed_queue import commit_keyed, send_keyed_one
from .rich_queue import RecordMetadata, commit_rich, linger_wake, rich_queued

# send()'s C branches read the same rules (commit_rules.py stays their one source)
set_rules(LONE_AFTER, HUNGRY_RATE, STREAM_GAP, _RECORD_OVERHEAD, _HDR_HUNGRY, _HDR_BELL_HUNGRY)

_ids = itertools.count(1)
_append_one = _commit.append_one
_key_partition = lib.shmlog_key_partition
_BYTES_LIKE = (bytes, bytearray, memoryview)
# timestamps are Kafka's: a signed 64-bit count of milliseconds since the epoch
_TS_MAX = (1 << 63) - 1


def _set_next_hungry(st: _TopicState, p: int, n: int) -> None:
    """After a commit of n messages: when the next hungry commit may go.
    Only here, not in send(), so send()'s check stays one comparison."""
    now = _clock()
    t = st.hungry_tokens[p] + (now - st.tokens_at[p]) * HUNGRY_RATE
    if t > HUNGRY_BURST:
        t = HUNGRY_BURST
    st.tokens_at[p] = now
    if n < STREAM_BATCH and t >= 1.0:
        st.hungry_tokens[p] = t - 1.0
        st.next_hungry[p] = now
    else:
        st.hungry_tokens[p] = t
        st.next_hungry[p] = now + (HUNGRY_GAP if n < STREAM_BATCH else STREAM_GAP)


class _TopicState(_SendState):
    # and, in _SendState (csrc/send.c), what send()'s C branches read: plain,
    # kq, rq, h_last, h_enc, h_extra, sticky, key_p, nparts, limit, kq_limit,
    # rq_limit, rq_bytes, kq_bytes, max_message, kq_since, kq_at, kq_next,
    # and the per-partition arrays plain_bytes, plain_since, next_hungry,
    # hungry_tokens, tokens_at (array.array: C holds their buffers, so they
    # are indexed, never replaced or resized)
    __slots__ = ("name", "topic", "rq_since", "rq_next", "slots", "keyed", "frame_limit", "waiters", "bell",
                 "committed_end", "storage", "kq_logs", "kq_slots", "kq_ends", "kq_addrs")

    def __init__(self, name, topic, batch_bytes: int):
        self.name = name
        self.topic = topic
        n = topic.num_partitions
        # every other form of send(), for all partitions, in arrival order
        # (rich_queue.py); its records are encoded and placed in C per commit
        self.rq = RichQueue()
        self.rq_bytes = 0
        self.rq_since = 0.0  # monotonic() when the queue's oldest record came
        self.rq_next = 0.0   # when a waiting reader may trigger the next commit
        self.rq_limit = 0
        # a keyed record's partition on the rich queue: hashed in C at
        # commit (-1), unless there is only one (a reader waiting on it is
        # then seen by send())
        self.key_p = 0 if n == 1 else -1
        # the last header list send() encoded (a shallow copy of tuples of
        # immutables, so equal means the same section) and its section
        self.h_last: Any = None
        self.h_enc = b""
        self.h_extra = _RECORD_OVERHEAD  # the rich queue's bytes for a record, beyond key and value
        # send()'s fast path: plain bytes values, appended without the lock
        # (see Producer._commit_plain); sizes and ages are approximate
        self.plain: List[List[bytes]] = [[] for _ in range(n)]
        plain_bytes = array("q", bytes(8 * n))
        plain_since = array("d", bytes(8 * n))
        self.slots = [-1] * n
        self.keyed = KeyPartitioner(n)
        self.sticky = (os.getpid() + next(_ids)) % n
        first = topic.regions[0]
        # a batch of many records fills at most the chunk/16 share (a larger
        # frame is for one message alone: config.max_batch_bytes); leave room
        # for the frame header and per-record framing (~16 bytes a record)
        share = min(first.max_batch_bytes, cfgmod.batch_share_bytes(first.chunk_bytes))
        self.limit = max(256, min(batch_bytes, share - 64 - 1024))
        # send_batch: the caller already batched, so fill whole frames
        self.frame_limit = max(256, share - 64 - 1024)
        self.max_message = topic.config["max_message_bytes"]
        # data_hungry (offset 272) and the topic doorbell's bell_hungry (276),
        # read from Python without a crossing: a consumer waiting means "send now"
        self.waiters = [memoryview(r.mapping).cast("I") for r in topic.regions]
        self.bell = self.waiters[0]
        self.committed_end = [0] * n
        next_hungry = array("d", bytes(8 * n))  # perf_counter() time the next hungry commit may go
        hungry_tokens = array("d", [HUNGRY_BURST] * n)  # lone commits that may skip the gap
        tokens_at = array("d", bytes(8 * n))
        # send()'s C branches hold these (and the header mappings) from here
        # to Producer.close(); nparts is set here, once
        self._bind(n, plain_bytes, plain_since, next_hungry, hungry_tokens, tokens_at, self.waiters,
                   self.bell)
        self.storage = topic.config["storage"]
        # send()'s keyed fast path: key, value, key, value, ... in arrival
        # order, for every partition at once. The keys are hashed in C when
        # the queue is committed (_commit_keyed), one crossing for the whole
        # queue, not one per message. While it holds records no other list
        # of this topic grows (send() commits it before queueing anything
        # else), so everything else queued is older and goes first.
        self.kq: List[bytes] = []
        # the queue is committed at kq_limit bytes: spread over many
        # partitions, each partition's frame would otherwise carry a record
        # or two (a frame costs ~1 us to append, cold, at 256 partitions)
        self.kq_limit = self.limit * min(n, KQ_SPREAD)
        self.kq_bytes = 0
        self.kq_since = 0.0   # monotonic() when the queue's oldest record came
        self.kq_at = 0.0      # perf_counter() of the last commit of the queue
        self.kq_next = 0.0    # when a waiting reader may trigger the next one
        self.kq_logs = ffi.new("shmlog_log_t *[]", [r.c_log for r in topic.regions])
        self.kq_slots = ffi.new("int32_t[]", [-1] * n)
        self.kq_ends = ffi.new("uint64_t[]", n)  # end offsets committed through the queue
        # the three arrays' addresses, as the queues' commits hand them to C (core.commit)
        self.kq_addrs = (_commit.address(self.kq_logs), _commit.address(self.kq_slots),
                         _commit.address(self.kq_ends))


class _FlusherWake(threading.Event):
    """The flusher's wake-up, set for every new pending batch (at 256
    partitions, every ~30 messages). Event.set takes the condition's lock
    and notifies even when the flag is already up, which costs the sender
    ~1 us a batch; the flag is up from one set() until the flusher clears
    it after waking, and a batch queued meanwhile is seen by the scan the
    flusher makes after clear() (the GIL orders the two), so a set() that
    finds the flag up has nothing to add."""

    def set(self) -> None:
        if not self.is_set():
            super().set()


class _LockBusy(Exception):
    """send() on the no-wait thread (shmlog.aio's loop) found the lock held
    by a commit in another thread: nothing was queued, retry after it."""


class Producer(_SendBase):
    # send() is _SendBase.send (csrc/send.c): its common forms in C, the
    # rest through _send_py below, which it calls with the same arguments
    if TYPE_CHECKING:
        def send(self, topic: str, value, key=None, headers=None, partition: Optional[int] = None,
                 timestamp_ms: Optional[int] = None, on_delivery: Optional[Callable] = None) -> None: ...

    def __init__(self, cluster, *, linger_ms: float = 0, batch_bytes: int = 64 << 10,
                 compression: Optional[str] = None, max_block_ms: int = 60_000,
                 partitioner: str = "murmur2", auto_create: bool = False, **topic_defaults: Any):
        if compression not in (None, "none", "lz4"):
            raise errors.InvalidConfig(f"compression must be None or 'lz4', got {compression!r}")
        if partitioner != "murmur2":
            raise errors.InvalidConfig(f"partitioner must be 'murmur2', got {partitioner!r}")
        if batch_bytes < 1 or max_block_ms < 0 or linger_ms < 0:
            raise errors.InvalidConfig("batch_bytes must be > 0, linger_ms and max_block_ms >= 0")
        self.cluster = cluster
        self.linger_ms = linger_ms
        self.batch_bytes = batch_bytes
        self.compression = None if compression == "none" else compression
        self.max_block_ms = max_block_ms
        self._max_block_ns = int(max_block_ms * 1_000_000)
        self.auto_create = auto_create
        self.topic_defaults = topic_defaults
        self.producer_id = (os.getpid() << 20) | next(_ids)
        self._seq = 0
        self._topics: Dict[str, _TopicState] = {}
        self._lock = threading.RLock()
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._closed = False
        self._error: Optional[BaseException] = None
        self._wake = _FlusherWake()
        self._failed = ffi.new("uint32_t *")  # the partition a queue's commit failed on
        self._failed_addr = _commit.address(self._failed)
        # the rich queue's record array (rich_queue._columns), reused by its commits
        self._rich_records: Any = None
        self._rich_view: Any = None
        self._rich_addr = 0  # its address, as rich_queue's crossing hands it to C
        self._rich_out: Any = None  # its commits' output columns (rich_queue._Placement)
        # shmlog.aio: on this thread (the event loop's) a commit, which may
        # wait for buffer space, is handed to _defer_commit (its worker
        # thread) and the lock is only tried (_LockBusy); _settle_delivery
        # takes a commit's delivery futures (on_delivery is then a future)
        self._nowait_thread: Optional[int] = None
        self._defer_commit: Optional[Callable[[], None]] = None
        self._settle_delivery: Optional[Callable] = None
        self._linger_hook: Optional[Callable[[], None]] = None
        self._last_commit = (-1, 0)  # _append's last frame: base offset, timestamp
        self._flusher = threading.Thread(target=self._flush_loop, name="shmlog-producer-flusher", daemon=True)
        self._flusher.start()

    # ------------------------------------------------------------ topics
    def _state(self, topic: str) -> _TopicState:
        st = self._topics.get(topic)
        if st is not None:
            return st
        if self._closed:
            raise errors.Closed("this Producer is closed")
        try:
            t = self.cluster.topic(topic)
        except errors.UnknownTopic:
            if not self.auto_create:
                raise
            try:
                self.cluster.create_topic(topic, **self.topic_defaults)
            except errors.TopicExists:
                pass
            t = self.cluster.topic(topic)
        with self._lock:
            # threads racing on a topic's first send must share one state:
            # a second one would replace the first, and with it whatever was
            # queued there
            st = self._topics.get(topic)
            if st is None:
                st = self._topics[topic] = _TopicState(topic, t, self.batch_bytes)
        return st

    # ------------------------------------------------------------ send
    def _send_py(self, topic: str, value, key=None, headers=None, partition: Optional[int] = None,
                 timestamp_ms: Optional[int] = None, on_delivery: Optional[Callable] = None) -> None:
        # send() in Python. csrc/send.c runs the fast branches below (up to
        # the long way) as they are written here and calls this for every
        # call they do not take: change one, change the other.
        # fast paths: a bytes value, unkeyed to the sticky or a given
        # partition (nothing else queued for the topic), or keyed
        # (hashed later, per queue, in C); every other form to the rich
        # queue (rich_queue.py). Keep them to a few appends.
        st = self._topics.get(topic)
        if st is not None and value.__class__ is bytes:
            if headers is None and timestamp_ms is None and on_delivery is None and not st.rq:
                if key is None:
                    size = len(value)
                    if size > st.max_message:
                        raise errors.MessageTooLarge(
                            f"message of {size} bytes to topic {topic!r} exceeds "
                            f"max_message_bytes={st.max_message}", what=topic)
                    if partition is None:
                        p = st.sticky
                    elif partition.__class__ is int and 0 <= partition < st.nparts:
                        p = partition
                    else:
                        p = -1  # the long way names the error
                    # nothing keyed/rich ahead of it
                    if p >= 0 and not st.kq:
                        if self._error is not None:
                            self._raise_async_error()
                        # No lock here: list.append is atomic under the GIL, and
                        # every committer (this thread when the batch is full or
                        # a reader waits, the flusher, flush()) takes the lock and
                        # commits a prefix of this very list (_commit_plain), so a
                        # value appended meanwhile is never lost or reordered.
                        vals = st.plain[p]
                        if not vals and not self.linger_ms:
                            # nothing queued: a lone message goes at once when a
                            # reader waits, or (linger_ms=0 means now, as in
                            # Kafka) within the lone-commit budget when none
                            # waits at this instant, one may be busy with the
                            # previous message; not right after a commit, which
                            # is a stream that batches. At most one commit per
                            # HUNGRY_GAP past the budget.
                            now = _clock()
                            since = now - st.tokens_at[p]  # the last commit
                            if now >= st.next_hungry[p] and (
                                    st.waiters[p][_HDR_HUNGRY] or st.bell[_HDR_BELL_HUNGRY]
                                    # the budget as refilled by now (it is stored at commits)
                                    or (since >= LONE_AFTER
                                        and st.hungry_tokens[p] + since * HUNGRY_RATE >= 1.0)):
                                if self._send_one(st, p, value):
                                    return
                        vals.append(value)
                        # racy across threads, and only sizes the batch
                        nb = st.plain_bytes[p] = st.plain_bytes[p] + size + _RECORD_OVERHEAD
                        if nb >= st.limit:
                            self._commit_plain(st, p)
                            if p == st.sticky and st.nparts > 1:
                                next_sticky(st, p)
                            return
                        # values queued behind a commit and a reader waits:
                        # send them now, but at most one batch per HUNGRY_GAP so
                        # a fast reader cannot turn a burst into one commit per
                        # message
                        if (not self.linger_ms and (st.waiters[p][_HDR_HUNGRY] or st.bell[_HDR_BELL_HUNGRY])
                                and _clock() >= st.next_hungry[p]):
                            self._commit_plain(st, p)
                            return
                        if len(vals) == 1:
                            # a new pending batch: the flusher honours linger_ms.
                            # Not woken for a batch already committed above: a
                            # woken thread would take the GIL (and maybe the
                            # reader's core) on the latency path
                            st.plain_since[p] = time.monotonic()
                            self._wake.set()
                        return
                elif key.__class__ is bytes and partition is None:
                    size = len(value) + len(key)
                    if size <= st.max_message:  # else the long way raises
                        if self._error is not None:
                            self._raise_async_error()
                        kq = st.kq
                        if not kq and not self.linger_ms:
                            # a lone keyed message: the same rule as the bare
                            # form's, on its partition (one crossing to hash
                            # it: only a paced producer comes here often; a
                            # stream finds the queue filling, or just committed)
                            p = _key_partition(key, len(key), st.nparts)
                            now = _clock()
                            since = now - st.tokens_at[p]
                            if now >= st.next_hungry[p] and now - st.kq_at >= LONE_AFTER and (
                                    st.waiters[p][_HDR_HUNGRY] or st.bell[_HDR_BELL_HUNGRY]
                                    or (since >= LONE_AFTER
                                        and st.hungry_tokens[p] + since * HUNGRY_RATE >= 1.0)):
                                if self._send_keyed_one(st, p, key, value):
                                    # the end of this send, not of its crossing (csrc/send.c)
                                    st.kq_at = _clock()
                                    return
                        # one extend, atomic under the GIL: another thread's
                        # pair never lands between this key and its value
                        kq += key, value
                        nb = st.kq_bytes = st.kq_bytes + size + _RECORD_OVERHEAD
                        if nb >= st.kq_limit:
                            self._commit_keyed(st)
                            return
                        if not self.linger_ms and st.bell[_HDR_BELL_HUNGRY] and _clock() >= st.kq_next:
                            self._commit_keyed(st)
                            return
                        if len(kq) == 2:
                            st.kq_since = time.monotonic()
                            self._wake.set()
                        return
            # the rich queue: one extend per message, checks that cost no
            # more than a comparison each; anything they do not take goes
            # the long way below, which names what is wrong
            if headers is None:
                hdr = b""
                extra = _RECORD_OVERHEAD  # the record's framing and header bytes
            elif headers == st.h_last:
                hdr = st.h_enc
                extra = st.h_extra
            else:
                hdr = None
            if partition is None:
                p = st.sticky if key is None else st.key_p
            elif partition.__class__ is int and 0 <= partition < st.nparts:
                p = partition
            else:
                p = None
            if (hdr is not None and p is not None and (key is None or key.__class__ is bytes)
                    and (timestamp_ms is None or (timestamp_ms.__class__ is int and 0 <= timestamp_ms <= _TS_MAX))):
                size = len(value) if key is None else len(value) + len(key)
                if size <= st.max_message:
                    if self._error is not None:
                        self._raise_async_error()
                    if st.kq:  # queued keyed records are older than this one
                        self._commit_keyed(st)
                    rq = st.rq
                    # (timestamp_ms None: stamped at commit)
                    rq.append((p, key, value, hdr, timestamp_ms, on_delivery))
                    nb = st.rq_bytes = st.rq_bytes + size + extra
                    # the rest only for a new queue, a full one or a waiting reader
                    if (nb >= st.rq_limit or len(rq) == 1 or st.bell[_HDR_BELL_HUNGRY]
                            or (p >= 0 and st.waiters[p][_HDR_HUNGRY])):
                        self._rich_queued(st, p, nb)
                    return
        st = st or self._state(topic)
        if value.__class__ is not bytes and value is not None:
            if not isinstance(value, (bytearray, memoryview)):
                raise TypeError(f"value must be bytes-like (bytes, bytearray, memoryview), got "
                                f"{type(value).__name__}; encode str with .encode()")
            value = bytes(value)  # a copy: the caller may reuse its buffer
        # fail here, not at commit time, where a bad message would take the
        # accepted messages of its pending batch down with it
        if headers:
            # encoded once, here: a bad header fails this send, not the
            # commit of the batch it would have joined
            hdr = encode_headers(headers)
            if headers.__class__ in (list, tuple) and all(
                    h.__class__ is tuple and h[0].__class__ is str and h[1].__class__ in (bytes, type(None))
                    for h in headers):
                # kept for send()'s fast path: a copy of immutables
                st.h_last, st.h_enc = headers.__class__(headers), hdr
                st.h_extra = len(hdr) + _RECORD_OVERHEAD
        else:
            hdr = b""
        if timestamp_ms is not None:
            if timestamp_ms.__class__ is not int:
                raise TypeError(f"timestamp_ms must be an int (ms since the epoch) or None, got "
                                f"{type(timestamp_ms).__name__}")
            if not 0 <= timestamp_ms <= _TS_MAX:
                raise ValueError(f"timestamp_ms must be between 0 and {_TS_MAX} (ms since the epoch, "
                                 f"a 64-bit signed int), got {timestamp_ms}")
        size = len(value) if value is not None else 0
        if key is not None:
            if not isinstance(key, (bytes, bytearray, memoryview)):
                raise TypeError(f"key must be bytes-like, got {type(key).__name__}; encode str with .encode()")
            key = bytes(key)
            size += len(key)
        if partition is None:
            partition = st.sticky if key is None else st.key_p
        elif partition.__class__ is not int or not 0 <= partition < st.nparts:
            raise errors.UnknownPartition(
                f"topic {topic!r} has no partition {partition!r} (it has {st.nparts})", what=topic)
        if size > st.max_message:
            raise errors.MessageTooLarge(
                f"message of {size} bytes to topic {topic!r} exceeds max_message_bytes={st.max_message}",
                what=topic)
        if self._nowait_thread is not None and self._nowait_thread == threading.get_ident():
            if not self._acquire(False):
                raise _LockBusy()
        else:
            self._acquire()
        try:
            if self._error is not None:
                self._raise_async_error()
            if st.kq:  # queued keyed records are older than this one
                self._commit_keyed(st)
            st.rq.append((partition, key, value, hdr, timestamp_ms, on_delivery))
            nb = st.rq_bytes = st.rq_bytes + size + len(hdr) + _RECORD_OVERHEAD
            self._rich_queued(st, partition, nb)
        finally:
            self._release()

    _rich_queued = rich_queued
    _linger_wake = linger_wake

    send_batch = send_batch

    # ------------------------------------------------------------ commit
    def _commit_plain(self, st: _TopicState, partition: int) -> None:
        """Commit the values send()'s fast path appended for a partition.
        Takes the (re-entrant) lock, then commits a prefix of the list and
        deletes just that prefix: values other threads append meanwhile stay,
        in order, for the next commit. A failed commit drops its prefix, as
        _commit drops a failed batch."""
        self._acquire()
        try:
            vals = st.plain[partition]
            n = len(vals)
            if not n:
                return
            try:
                if n == 1:
                    self._commit_one(st, partition, vals[0])
                else:
                    self._append(st, partition, vals[:n], None, None, None, None)
            finally:
                del vals[:n]
                if vals:  # appended while we committed: sized and aged for the next one
                    st.plain_bytes[partition] = sum(map(len, vals)) + _RECORD_OVERHEAD * len(vals)
                    st.plain_since[partition] = time.monotonic()
                    self._wake.set()
                else:
                    st.plain_bytes[partition] = 0
        finally:
            self._release()

    def _append(self, st: _TopicState, partition: int, values, keys, headers, timestamps, callbacks,
                value_lens=None, probe: bool = False) -> bool:
        """Commit one frame's worth of records. probe=True (send_batch's
        first try, sizes not checked in Python): return False, committing
        nothing, when a value is above max_message_bytes, the batch above the
        frame limit, or the values not plain bytes; the caller then takes the
        path that names the message or splits the batch."""
        plog = st.topic.regions[partition]
        if plog.stale:  # the topic was deleted
            self._topics.pop(st.name, None)
            raise errors.UnknownTopic(f"topic {st.name!r} was deleted while this producer used it",
                                      what=st.name)
        slot = st.slots[partition]
        if slot < 0:
            slot = st.slots[partition] = plog.register_producer()
        self._seq += 1
        ts_now = time.time_ns() // 1_000_000
        try:
            base = -1
            if keys is None and headers is None and timestamps is None and not self.compression:
                if len(values) == 1 and values[0].__class__ is bytes:
                    if probe and len(values[0]) > st.max_message:
                        return False
                    # a paced producer commits message by message: one crossing
                    base = plog.append_one(slot, values[0], ts_now, timeout=self.max_block_ms / 1000.0,
                                           producer_id=self.producer_id, producer_seq=self._seq)
                elif len(values) <= POINTER_BATCH and values[0].__class__ is bytes \
                        and len(values[0]) >= POINTER_VALUE:
                    # few large values: append() hands C one pointer each
                    # (a pickle would copy them once more)
                    if probe:
                        return False
                else:
                    # one pickle pass hands C every value with its length: no
                    # length array, no joined copy (csrc/codec.c)
                    stream = pickle_values(values)
                    if stream is not None:
                        base = plog.append_pickled(slot, stream, st.max_message, ts_now,
                                                   timeout=self.max_block_ms / 1000.0,
                                                   producer_id=self.producer_id, producer_seq=self._seq)
                    if base < 0 and probe:
                        return False
            elif probe:
                return False
            if base < 0:
                base = plog.append(slot, values, keys=keys, headers=headers, timestamps=timestamps,
                                   timestamp=ts_now, compression=self.compression,
                                   timeout=self.max_block_ms / 1000.0, producer_id=self.producer_id,
                                   producer_seq=self._seq, value_lens=value_lens)
        except errors.MessageTooLarge:
            if len(values) == 1:
                raise
            half = len(values) // 2
            for a, b in ((0, half), (half, len(values))):
                try:
                    self._append(st, partition, values[a:b], None if keys is None else keys[a:b],
                                 None if headers is None else headers[a:b],
                                 None if timestamps is None else timestamps[a:b],
                                 None if callbacks is None else callbacks[a:b])
                except errors.ShmlogError as exc:
                    exc.committed = a + getattr(exc, "committed", 0)
                    raise
            self._last_commit = (-1, 0)  # two frames: no one base
            return True
        except errors.BufferFull as exc:
            self._buffer_full(st, partition, exc, callbacks)
        _set_next_hungry(st, partition, len(values))
        self._last_commit = (base, ts_now)  # shmlog.aio's runs name their offsets from it
        end = base + len(values)
        if end > st.committed_end[partition]:
            st.committed_end[partition] = end
        if callbacks:
            for i, cb in enumerate(callbacks):
                if cb is not None:
                    ts = timestamps[i] if timestamps is not None and timestamps[i] is not None else ts_now
                    cb(None, RecordMetadata(st.name, partition, base + i, ts))
        return True

    def _buffer_full(self, st: _TopicState, partition: int, exc: BaseException, callbacks) -> None:
        """Fail a batch whose partition stayed full for max_block_ms (raises)."""
        why = ""
        note = budget_wait(self.cluster._budget, st.topic.regions[partition])
        if note is not None:
            why = f"; {note}"
        elif st.storage == "disk":
            # a disk topic's chunks wait for the spiller: say why it is stuck
            try:
                info = self.cluster.describe_topic(st.name).partitions[partition]
                if info.extra.get("spill_error"):
                    why = f"; the spiller is stuck: {info.extra['spill_error']}"
            except errors.ShmlogError:
                pass
        err = errors.BufferFull(
            f"topic {st.name!r} partition {partition}: shared-memory buffer stayed full for "
            f"max_block_ms={self.max_block_ms}{why}", what=st.name,
            hint="" if note is not None else None)  # the note says what to change
        if callbacks:
            for cb in callbacks:
                if cb is not None:
                    cb(err, None)
        raise err from exc

    def _send_one(self, st: _TopicState, partition: int, value: bytes) -> bool:
        """send()'s lone message, committed at once in one crossing; False
        (nothing done) when other threads queued values meanwhile: not
        needed for any thread's own order (each queues behind its own), it
        keeps arrival order across threads where that costs nothing.
        A paced producer runs this cold after every pause, where each call
        and list operation costs several times what it does in a loop: no
        queueing, no _commit_plain."""
        self._acquire()
        try:
            if st.plain[partition]:
                return False
            self._commit_one(st, partition, value)
            return True
        finally:
            self._release()

    def _commit_one(self, st: _TopicState, partition: int, value: bytes) -> None:
        """One plain message committed in one crossing (what _append does
        for it, minus the generality): a lone send() (_send_one) or a lone
        queued value (_commit_plain). Called with the lock held."""
        plog = st.topic.regions[partition]
        slot = st.slots[partition]
        # first use, or the topic deleted (SHMLOG_F_CLOSED): the long way
        if slot < 0 or plog.closed or st.waiters[partition][_HDR_FLAGS] & _F_CLOSED:
            self._append(st, partition, [value], None, None, None, None)
            return
        self._seq += 1
        rc = _append_one(plog.c_addr, slot, value, time.time_ns() // 1_000_000,
                         self.producer_id, self._seq & 0xFFFFFFFF, self._max_block_ns)
        self._lone_done(st, partition, plog, rc)

    def _lone_done(self, st: _TopicState, partition: int, plog, rc: int) -> None:
        """After a lone message's one crossing: its error, or its bookkeeping."""
        if rc < 0:
            try:
                errors.check(rc, plog.what)
            except errors.BufferFull as exc:
                self._buffer_full(st, partition, exc, None)
        _set_next_hungry(st, partition, 1)
        if rc >= st.committed_end[partition]:
            st.committed_end[partition] = rc + 1

    def _commit_keyed(self, st: _TopicState) -> None:
        commit_keyed(self, st)

    def _commit_rich(self, st: _TopicState) -> None:
        if self._nowait_thread is not None and self._nowait_thread == threading.get_ident():
            # shmlog.aio's loop: commit here while that needs no wait (the
            # lock free, buffer space now), else hand it to the worker
            if self._acquire(False):
                try:
                    if commit_rich(self, st, nowait=True):
                        return
                finally:
                    self._release()
            self._defer_commit()  # type: ignore[misc]
            # until that commit: no more asking, from every send
            st.rq_limit = 1 << 62
            return
        commit_rich(self, st)

    def _send_keyed_one(self, st: _TopicState, partition: int, key: bytes, value: bytes) -> bool:
        return send_keyed_one(self, st, partition, key, value)

    def _raise_async_error(self) -> None:
        err, self._error = self._error, None
        raise err

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(0.5)
            if self._closed:
                return
            self._wake.clear()
            # wait out linger_ms for the oldest pending batch, then commit it
            while not self._closed:
                oldest = None
                with self._lock:
                    for st in list(self._topics.values()):
                        for p in range(st.nparts):
                            if st.plain[p]:
                                oldest = self._flush_due(st.plain_since[p], oldest, self._commit_plain,
                                                         st, p)
                        if st.rq:
                            oldest = self._flush_due(st.rq_since, oldest, self._commit_rich, st)
                        if st.kq:
                            oldest = self._flush_due(st.kq_since, oldest, self._commit_keyed, st)
                if oldest is None:
                    break
                time.sleep(max(0.0, min(oldest - time.monotonic(), 0.05)))

    def _flush_due(self, since: float, oldest: Optional[float], commit: Callable, *args) -> Optional[float]:
        """The flusher's step for one queue that has waited since `since`:
        commit it if linger_ms is up, else return when it will be."""
        due = since + self.linger_ms / 1000.0
        if due <= time.monotonic():
            try:
                commit(*args)
            except BaseException as exc:  # surfaced on the next send/flush
                self._error = exc
            return oldest
        return due if oldest is None or due < oldest else oldest

    # ------------------------------------------------------------ flush
    def flush(self, timeout: Optional[float] = None, durable: bool = False) -> int:
        """Commit everything sent; with durable=True also wait for fsync.
        Returns the number of messages still pending (0 on success)."""
        with self._lock:
            if self._error is not None:
                self._raise_async_error()
            for st in list(self._topics.values()):
                for p in range(st.nparts):
                    if st.plain[p]:
                        self._commit_plain(st, p)
                # then the rich queue, the keyed queue last: in that order
                # each is newer than the ones before
                self._commit_rich(st)
                self._commit_keyed(st)
        if durable:
            deadline = None if timeout is None else time.monotonic() + timeout
            for st in list(self._topics.values()):
                if st.storage != "disk":
                    continue
                for p, end in enumerate(st.committed_end):
                    end = max(end, st.kq_ends[p])
                    if end:
                        left = None if deadline is None else max(0.0, deadline - time.monotonic())
                        self.cluster.request("sync", topic=st.name, partition=p, offset=end,
                                             timeout=left if left is not None else -1)
        return 0

    def close(self, timeout: Optional[float] = None) -> None:
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._wake.set()
            if self._flusher.is_alive() and self._flusher is not threading.current_thread():
                self._flusher.join(timeout=2)
            for st in self._topics.values():
                for p, slot in enumerate(st.slots):
                    if slot >= 0:
                        st.topic.regions[p].release_producer(slot)
                st._unbind()  # send()'s C branches let go of the header mappings
                st.waiters = []
                st.bell = None
            self._topics.clear()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
