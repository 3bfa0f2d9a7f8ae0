"""Produce, Fetch, ListOffsets and InitProducerId: the data path.

Produce and Fetch are parsed and answered with the struct codecs of
wire.py (they are the hot path); their record batches go through C one
batch at a time (records.py). Idempotence lives here: per (producer id,
partition) the last sequence and the offsets of the last five batches, so a
retried batch is acknowledged with its first offset and not appended twice.
This module never blocks the event loop for long: an append that finds no
free chunk, and a Fetch long poll, wait in worker threads.
"""

from __future__ import annotations

import asyncio
import errno
import struct
import time
from collections import deque
from typing import Any, Dict, List, Optional, Tuple

from .. import errors
from ..core._core import ffi, lib
from . import protocol as P
from . import records as R
from .wire import Reader, string

IDEMPOTENT_WINDOW = 5  # batches remembered per producer and partition (Kafka's in-flight limit)
MAX_WAIT_MS = 30_000  # a Fetch long poll longer than this is cut to it

_ihqqq = struct.Struct(">ihqqq")
_ihq = struct.Struct(">ihq")
_i = struct.Struct(">i")
_q = struct.Struct(">q")


class _Seqs:
    """One producer's recent batches on one partition."""

    __slots__ = ("epoch", "last_seq", "recent")

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.last_seq = -1
        self.recent: deque = deque(maxlen=IDEMPOTENT_WINDOW)  # (first seq, last seq, base offset)


class DataPlane:
    def __init__(self, state):
        self.state = state
        self.seqs: Dict[Tuple[int, str, int], _Seqs] = {}
        # producer ids: time-based so a restarted listener does not hand out
        # an id a live producer still uses
        self._next_pid = (time.time_ns() // 1_000_000) << 8

    # ------------------------------------------------------------ Produce
    async def produce(self, conn, version: int, frame, pos: int) -> Optional[bytes]:
        r = Reader(frame, pos)
        if version >= 3:
            r.nstring()  # transactional id: not supported, batches say so
        acks = r.i16()
        timeout_ms = r.i32()
        topics = []
        for _ in range(r.count(6)):
            name = r.string()
            parts = []
            for _ in range(r.count(8)):
                parts.append((r.i32(), r.nbytes()))
            topics.append((name, parts))
        if version >= 3:
            await self.state.ensure_mapped([name for name, _parts in topics])
        results: List[Tuple[str, List[Tuple[int, int, int, int, Optional[str]]]]] = []
        for name, parts in topics:
            res = []
            for index, recs in parts:
                if version < 3:
                    res.append((index, P.UNSUPPORTED_VERSION, -1, -1, "Produce v3+ (record batches v2) only"))
                    continue
                res.append(await self._produce_partition(name, index, recs, timeout_ms))
            results.append((name, res))
        if acks == 0:
            return None
        out = [_i.pack(len(results))]
        for name, res in results:
            out.append(string(name))
            out.append(_i.pack(len(res)))
            for index, code, base, start, msg in res:
                out.append(_ihq.pack(index, code, base))
                if version >= 2:
                    out.append(_q.pack(-1))  # log append time: CreateTime topics
                if version >= 5:
                    out.append(_q.pack(start))
                if version >= 8:
                    out.append(_i.pack(0))  # no per-record errors
                    out.append(string(msg if code else None))
        if version >= 1:
            out.append(_i.pack(0))
        return b"".join(out)

    async def _produce_partition(self, topic: str, index: int, recs, timeout_ms: int):
        st = self.state
        try:
            plog, slot = st.producer_partition(topic, index, create=True)
        except errors.UnknownTopic:
            return index, P.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, f"unknown topic {topic!r}"
        except errors.UnknownPartition:
            return index, P.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, f"topic {topic!r} has no partition {index}"
        except errors.ShmlogError as exc:
            return index, P.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, str(exc)
        if recs is None or not len(recs):
            return index, P.CORRUPT_MESSAGE, -1, -1, "no records"
        try:
            batches = R.parse_batches(recs, plog.max_batch_bytes)
        except R.BatchError as exc:
            return index, exc.code, -1, -1, str(exc)
        first_base = -1
        for b in batches:
            key = (b.producer_id, topic, index) if b.producer_id >= 0 and b.base_sequence >= 0 else None
            if key is not None and key not in self.seqs and b.base_sequence > 0:
                # a producer this listener has not seen here, mid-stream: it
                # may be retrying into a restarted listener; its recent
                # batches are in the frame headers
                await self._recover(key, plog, b.producer_epoch)
            if key is not None:
                code, dup = self._check_sequence(key, b)
                if code:
                    return index, code, -1, -1, "sequence check failed"
                if dup is not None:
                    first_base = dup if first_base < 0 else first_base
                    continue
            base = R.append_batch(plog, slot, b, 0)
            if base == -errno.EAGAIN:
                # no free chunk now: wait in a thread, not in the event loop
                loop = asyncio.get_running_loop()
                base = await loop.run_in_executor(st.wait_pool, R.append_batch, plog, slot, b,
                                                  max(timeout_ms, 1) * 1_000_000)
            if base < 0:
                code = P.MESSAGE_TOO_LARGE if base in (-errno.EMSGSIZE, -errno.E2BIG) else \
                    P.REQUEST_TIMED_OUT if base == -errno.EAGAIN else P.KAFKA_STORAGE_ERROR
                return index, code, -1, -1, f"append failed ({errno.errorcode.get(-base, base)})"
            if key is not None:
                s = self.seqs[key]
                s.last_seq = (b.base_sequence + b.count - 1) & 0x7FFFFFFF
                s.recent.append((b.base_sequence, s.last_seq, base))
            if first_base < 0:
                first_base = base
        return index, P.NONE, first_base, plog.start_offset, None

    async def _recover(self, key, plog, epoch: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            recent = await loop.run_in_executor(self.state.ctl_pool, R.recover_producer, plog, key[0],
                                                IDEMPOTENT_WINDOW)
        except errors.ShmlogError:
            return
        if recent and key not in self.seqs:
            s = self.seqs[key] = _Seqs(epoch)
            s.recent.extend(recent)
            s.last_seq = recent[-1][1]

    def _check_sequence(self, key, b) -> Tuple[int, Optional[int]]:
        """(error code, base offset of a duplicate or None)."""
        s = self.seqs.get(key)
        if s is None or b.producer_epoch > s.epoch:
            # unknown here (new, or from before a listener restart): take the
            # producer's sequence as the start
            self.seqs[key] = _Seqs(b.producer_epoch)
            return P.NONE, None
        if b.producer_epoch < s.epoch:
            return P.INVALID_PRODUCER_EPOCH, None
        last = (b.base_sequence + b.count - 1) & 0x7FFFFFFF
        for first, lst, base in s.recent:
            if first == b.base_sequence and lst == last:
                return P.NONE, base  # a retry of a batch we appended
        if s.last_seq >= 0 and b.base_sequence != (s.last_seq + 1) & 0x7FFFFFFF:
            return P.OUT_OF_ORDER_SEQUENCE_NUMBER, None
        return P.NONE, None

    def init_producer_id(self, req, version: int) -> Dict[str, Any]:
        if getattr(req, "transactional_id", None):
            return {"throttle_time": 0, "error_code": P.INVALID_REQUEST, "producer_id": -1,
                    "producer_epoch": -1}
        self._next_pid += 1
        return {"throttle_time": 0, "error_code": P.NONE, "producer_id": self._next_pid,
                "producer_epoch": 0}

    # ------------------------------------------------------------ Fetch
    async def fetch(self, conn, version: int, frame, pos: int) -> List[bytes]:
        """The Fetch response body in parts (P.frame_response_parts joins them)."""
        r = Reader(frame, pos)
        r.i32()  # replica id
        max_wait = min(max(r.i32(), 0), MAX_WAIT_MS)
        min_bytes = r.i32()
        max_bytes = r.i32() if version >= 3 else 1 << 30
        if version >= 4:
            r.i8()  # isolation level: nothing here is transactional
        if version >= 7:
            r.i32()  # session id: we never open a session, every fetch is full
            r.i32()
        wanted = []
        for _ in range(r.count(6)):
            name = r.string()
            for _ in range(r.count(16)):
                p = r.i32()
                if version >= 9:
                    r.i32()  # current leader epoch
                off = r.i64()
                if version >= 5:
                    r.i64()  # follower's log start offset
                pmax = r.i32()
                wanted.append((name, p, off, pmax))
        # forgotten topics (v7+) and rack id (v11+) do not matter without sessions
        answers = {}
        if version < 4:
            for name, p, _off, _pmax in wanted:
                answers[(name, p)] = (P.UNSUPPORTED_VERSION, -1, -1, [])
        else:
            await self.state.ensure_mapped(sorted({w[0] for w in wanted}))
            deadline = time.monotonic() + max_wait / 1000.0
            while True:
                size = self._fetch_once(conn, wanted, answers, max(max_bytes, 1))
                left = deadline - time.monotonic()
                if size >= max(min_bytes, 1) or left <= 0:
                    break
                if any(a[0] for a in answers.values()):
                    break  # an error answer goes out at once
                await self._wait(conn, wanted, left)
        return self._fetch_response(version, wanted, answers)

    def _fetch_once(self, conn, wanted, answers, max_bytes: int) -> int:
        size = sum(len(b) for a in answers.values() for b in a[3])
        for name, p, off, pmax in wanted:
            prev = answers.get((name, p))
            if prev is not None and (prev[0] or prev[3]):
                continue
            if size >= max_bytes and size:
                answers.setdefault((name, p), self._empty(name, p))
                continue
            # KIP-74: a partition's share stops at its own limit and at what
            # is left of the request's; only the first partition with data
            # may go over, by its first record, so a consumer always moves on
            ans = self._read_partition(conn, name, p, off, min(pmax, max_bytes - size), not size)
            answers[(name, p)] = ans
            size += sum(len(b) for b in ans[3])
        return size

    def _empty(self, name: str, p: int):
        try:
            plog = self.state.region(name, p)
            return (P.NONE, plog.end_offset(), plog.start_offset, [])
        except errors.ShmlogError:
            return (P.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, [])

    def _read_partition(self, conn, name: str, p: int, off: int, limit: int, min_one: bool):
        st = self.state
        try:
            plog = st.region(name, p)
        except errors.ShmlogError:
            return (P.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, [])
        end = plog.end_offset()
        start = st.start_offset(name, p, plog)
        if off > end or off < start:
            return (P.OFFSET_OUT_OF_RANGE, end, start, [])
        rd = conn.readers.get((name, p))
        if rd is None or rd.plog is not plog:
            rd = conn.readers[(name, p)] = R.PartitionReader(plog)
        if off == end:
            rd.read(off, 1)  # positions the cursor for the long poll
            return (P.NONE, end, start, [])
        try:
            batches, _nxt, why = rd.read(off, limit, min_one)
            if why == "range":
                batches = st.read_segments(name, p, off, limit, min_one)
                if batches is None:
                    return (P.OFFSET_OUT_OF_RANGE, end, start, [])
        except errors.CorruptBatch as exc:
            st.log.error("fetch %s[%d] at %d: %s", name, p, off, exc)
            return (P.CORRUPT_MESSAGE, end, start, [])
        return (P.NONE, plog.end_offset(), start, batches)

    async def _wait(self, conn, wanted, left: float) -> None:
        logs, cursors, topics = [], [], set()
        for name, p, _off, _pmax in wanted:
            rd = conn.readers.get((name, p))
            if rd is None or rd.plog.closed:
                continue
            logs.append(rd.plog.c_log)
            cursors.append(rd.cursor)
            topics.add(name)
        if not logs:
            await asyncio.sleep(min(left, 0.1))
            return
        bell = ffi.NULL
        if len(topics) == 1 and len(logs) > 1:
            bell = self.state.region(next(iter(topics)), 0).c_log
        la = ffi.new("shmlog_log_t *[]", logs)
        ca = ffi.new("shmlog_cursor_t *[]", cursors)
        loop = asyncio.get_running_loop()
        # the futex wait runs in a thread: other connections keep being served
        await loop.run_in_executor(self.state.wait_pool, lib.shmlog_log_wait_any, la, ca,
                                   len(logs), bell, 0, int(left * 1e9))

    def _fetch_response(self, version: int, wanted, answers) -> List[bytes]:
        out = []
        if version >= 1:
            out.append(_i.pack(0))
        if version >= 7:
            out.append(struct.pack(">hi", 0, 0))  # no error, no session
        topics: Dict[str, list] = {}
        for name, p, _off, _pmax in wanted:
            topics.setdefault(name, []).append(p)
        out.append(_i.pack(len(topics)))
        for name, parts in topics.items():
            out.append(string(name))
            out.append(_i.pack(len(parts)))
            for p in parts:
                code, hw, start, batches = answers.get((name, p)) or (P.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, [])
                out.append(struct.pack(">ihq", p, code, hw))
                if version >= 4:
                    out.append(_q.pack(hw))  # last stable offset: nothing is transactional
                if version >= 5:
                    out.append(_q.pack(start))
                if version >= 4:
                    out.append(_i.pack(-1))  # no aborted transactions
                if version >= 11:
                    out.append(_i.pack(-1))  # no preferred read replica
                n = sum(len(b) for b in batches)
                out.append(_i.pack(n))
                out.extend(batches)
        return out

    # ------------------------------------------------------------ ListOffsets
    def list_offsets(self, req, version: int) -> Dict[str, Any]:
        st = self.state
        topics = []
        for t in req.topics or ():
            parts = []
            for pr in t.partitions or ():
                ts = int(pr.timestamp) if not hasattr(pr.timestamp, "timestamp") else \
                    int(pr.timestamp.timestamp() * 1000)
                code, off = P.NONE, -1
                try:
                    plog = st.region(t.name, pr.partition_index)
                    if ts == -1:
                        off = plog.end_offset()
                    elif ts == -2:
                        off = st.start_offset(t.name, pr.partition_index, plog)
                    else:
                        found = st.offset_for_time(t.name, pr.partition_index, plog, ts)
                        off = -1 if found is None else found
                except errors.ShmlogError:
                    code = P.UNKNOWN_TOPIC_OR_PARTITION
                parts.append({"partition_index": pr.partition_index, "error_code": code,
                              "timestamp": -1, "offset": off, "leader_epoch": -1,
                              "old_style_offsets": [off] if off >= 0 else []})
            topics.append({"name": t.name, "partitions": parts})
        return {"throttle_time": 0, "topics": topics}
