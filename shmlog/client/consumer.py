"""Consumer: reads committed batches from the partitions it is assigned.

Reads cross into C once per batch (decode into columns), values are copied
out of shared memory by slicing the mapping, and the chunk is validated after
the copy, so a value handed out never changes. An idle consumer sleeps on the
topic's futex doorbell (after a short spin), not in a poll loop.

Groups (shmlog.client.member) drive the assignment through apply_assignment; disk
reads behind the shared-memory window (shmlog.storage) plug in through the
cluster's segment reader. This module must not talk to the supervisor on the
data path.
"""

from __future__ import annotations

import errno
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from .. import errors
from ..core._core import ffi, lib
from ..core.reader import scan_for_time
from ..core.records import ReadResult
from .arrivals import DEFAULT_SPIN_US, Arrivals, records_in
from .messages import Message, MessageBatch, batch_messages, new_message
from .views import MessageView, copied_view

__all__ = ["Consumer", "Message", "MessageBatch"]

TP = Tuple[str, int]
NONE = (1 << 64) - 1
ERANGE = -errno.ERANGE
MAX_OFFSET = (1 << 63) - 1
READ_SLICE = 2048


class _Assigned:
    """One assigned partition's reading state in this process."""

    __slots__ = ("topic", "partition", "plog", "cursor", "reader", "slot", "returned", "storage",
                 "disk", "tp", "view", "polled_end", "error")

    def __init__(self, topic: str, partition: int, plog, storage: str, gating: bool):
        self.topic = topic
        self.partition = partition
        self.tp = (topic, partition)
        self.plog = plog
        self.cursor = plog.new_cursor()
        self.reader = plog.reader()
        self.slot = plog.register_reader(plog.start_offset, gating=gating)
        self.returned = 0
        self.polled_end = 0  # after the last message poll() buffered
        self.storage = storage
        self.disk = None  # a segment reader while behind the shared-memory window
        self.view: Optional[MessageView] = None  # the outstanding zero-copy batch
        # auto_offset_reset="error" and a position out of range that a group
        # assignment handed us: raised by the next poll, until a seek
        self.error: Optional[errors.OffsetOutOfRange] = None

    def release(self) -> None:
        if self.view is not None:
            self.view.mark_released()
            self.view = None
        if self.slot >= 0 and not self.plog.closed:
            self.plog.release_reader(self.slot)
        self.slot = -1
        if self.disk is not None:
            self.disk.close()
            self.disk = None


class Consumer:
    def __init__(self, cluster, topics: Union[str, Sequence[str]], *, group: Optional[str] = None,
                 auto_offset_reset: str = "earliest", enable_auto_commit: bool = True,
                 isolation: str = "committed", on_assign: Optional[Callable] = None,
                 on_revoke: Optional[Callable] = None, spin_us: Union[float, str, None] = None,
                 **group_options: Any):
        if auto_offset_reset not in ("earliest", "latest", "error"):
            raise errors.InvalidConfig(
                f"auto_offset_reset must be 'earliest', 'latest' or 'error', got {auto_offset_reset!r}")
        if isolation not in ("committed", "durable"):
            raise errors.InvalidConfig(f"isolation must be 'committed' or 'durable', got {isolation!r}")
        self.cluster = cluster
        self.topics = [topics] if isinstance(topics, str) else list(topics or [])
        self.group = group
        self.auto_offset_reset = auto_offset_reset
        self.enable_auto_commit = enable_auto_commit
        self.isolation = isolation
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        # None: spin DEFAULT_SPIN_US, then the futex; a number: that spin;
        # "auto": a futex sleep up to shortly before the next message is due
        # and a spin around it (arrivals.py). Not the default: its tail at a
        # paced 10k msg/s on a quiet host (a timed sleep that ends late by
        # the hypervisor's timer, a run-queue delay after it) is not yet
        # shown to be no worse than the fixed spin's (bench.wait_ab)
        if spin_us is not None and spin_us != "auto":
            if isinstance(spin_us, bool) or not isinstance(spin_us, (int, float)) or spin_us < 0:
                raise errors.InvalidConfig(
                    f"spin_us must be None (default), 'auto' (adaptive wait) or microseconds >= 0, "
                    f"got {spin_us!r}")
        self._arrivals = Arrivals() if spin_us == "auto" else None
        self.spin_ns = int((float(spin_us) if spin_us not in (None, "auto") else DEFAULT_SPIN_US) * 1000)
        self.assigned_state: Dict[TP, _Assigned] = {}
        self._order: List[_Assigned] = []
        self._rr = 0
        self._buffer: deque = deque()
        # partitions whose messages poll() buffered: their `returned` is
        # settled lazily (settle_positions), so poll() itself is one popleft
        self._polled: List[_Assigned] = []
        self._wait_args = None
        self._closed = False
        self._has_errors = False  # some _Assigned.error is set
        self._member = None
        self._committer: Optional[ThreadPoolExecutor] = None  # commit(asynchronous=True)
        for t in self.topics:
            self.cluster.topic(t)  # UnknownTopic now, not at the first poll
        if group is not None:
            from .member import GroupMember

            self._member = GroupMember(self, group, self.topics, **group_options)
        elif self.topics:
            self.assign([(t, p) for t in self.topics for p in range(self.cluster.topic(t).num_partitions)])

    # ------------------------------------------------------------ assignment
    def assign(self, partitions: Iterable[TP]) -> None:
        """Manual assignment (no group): read exactly these partitions."""
        if self._member is not None:
            raise errors.GroupError("assign() is for consumers without a group; this one is in "
                                    f"group {self.group!r}")
        wanted = [(t, int(p)) for t, p in partitions]
        self.apply_assignment(wanted, {})

    def apply_assignment(self, wanted: Sequence[TP], positions: Dict[TP, Optional[int]],
                          *, callbacks: bool = True) -> None:
        wanted_set = set(wanted)
        revoked = [tp for tp in self.assigned_state if tp not in wanted_set]
        added = [tp for tp in wanted if tp not in self.assigned_state]
        if revoked:
            if callbacks and self.on_revoke is not None:
                self.on_revoke(revoked)
            for tp in revoked:
                self._forget_polled(tp)
                self.assigned_state.pop(tp).release()
            self._drop_buffered(lambda tp: tp not in wanted_set)
        for tp in added:
            topic, p = tp
            t = self.cluster.topic(topic)
            if not 0 <= p < t.num_partitions:
                raise errors.UnknownPartition(f"topic {topic!r} has no partition {p} (it has {t.num_partitions})",
                                              what=topic)
            a = _Assigned(topic, p, t.regions[p], t.config["storage"],
                          gating=t.config["storage"] == "memory")
            self.assigned_state[tp] = a
            pos = positions.get(tp)
            if pos is None:
                self._reset(a, self.auto_offset_reset if self.auto_offset_reset != "error" else "earliest")
            else:
                try:
                    self._seek(a, pos)
                except errors.OffsetOutOfRange as exc:
                    # a committed offset out of range: the group protocol
                    # step must complete; the application hears of it at
                    # its next poll (as in Kafka)
                    a.error = exc
                    self._has_errors = True
        self._order = list(self.assigned_state.values())
        self._wait_args = None
        if added and callbacks and self.on_assign is not None:
            self.on_assign(added)

    def assignment(self) -> List[TP]:
        return sorted(self.assigned_state)

    def _get(self, topic: str, partition: int) -> _Assigned:
        a = self.assigned_state.get((topic, partition))
        if a is None:
            raise errors.UnknownPartition(f"partition {topic}[{partition}] is not assigned to this consumer",
                                          what=topic)
        return a

    # ------------------------------------------------------------ positions
    def _storage(self):
        return getattr(self.cluster, "segments", None)

    def _reset(self, a: _Assigned, policy: str) -> None:
        if policy == "latest":
            a.plog.seek_end(a.cursor)
            self._set_position(a, a.cursor.next_offset)
            return
        if policy == "error":
            raise errors.OffsetOutOfRange(
                f"topic {a.topic!r} partition {a.partition}: offset {a.returned} is out of range "
                f"(start {self._start_offset(a)})", what=a.topic)
        self._seek(a, self._start_offset(a))

    def _start_offset(self, a: _Assigned) -> int:
        s = self._disk_start(a)
        return a.plog.start_offset if s is None else s

    def _disk_start(self, a: _Assigned) -> Optional[int]:
        """A disk partition's oldest retained offset (None: no segment yet).
        It is the log's start, as describe_topic reports it: what retention
        deleted from disk is gone even while shared memory still holds it,
        as in Kafka, so every consumer sees the same start whatever the
        state of the ring."""
        seg = self._storage()
        if seg is None or a.storage != "disk":
            return None
        return seg.start_offset(a.topic, a.partition)

    def _seek(self, a: _Assigned, offset: int) -> None:
        a.error = None
        if a.disk is not None:
            a.disk.close()
            a.disk = None
        start = self._disk_start(a)
        # below the retained segments: out of range, auto_offset_reset decides
        rc = ERANGE if start is not None and offset < start else a.plog.seek(a.cursor, offset)
        if rc == ERANGE:
            seg = self._storage()
            if seg is not None and a.storage == "disk":
                disk = seg.reader(a.topic, a.partition, offset)
                if disk is not None:
                    a.disk = disk
                    self._set_position(a, offset)
                    return
            a.returned = offset
            start = self._start_offset(a)
            if self.auto_offset_reset == "error":
                raise errors.OffsetOutOfRange(
                    f"topic {a.topic!r} partition {a.partition}: offset {offset} is below the start "
                    f"offset {start}", what=a.topic)
            if self.auto_offset_reset == "latest":
                self._reset(a, "latest")
                return
            if start > offset:
                # earliest: the oldest offset on disk, not the oldest one still
                # in shared memory (that would skip everything on disk)
                self._seek(a, start)
                return
            offset = a.cursor.next_offset
        elif rc < 0:
            errors.check(rc, a.plog.what, offset=offset)
        elif a.cursor.next_offset < offset:
            # past the end (C stopped the cursor at the end): the offset
            # does not exist yet, and waiting for it would silently skip
            # whatever is produced up to it; auto_offset_reset decides
            end = a.cursor.next_offset
            if self.auto_offset_reset == "error":
                a.returned = offset
                raise errors.OffsetOutOfRange(
                    f"topic {a.topic!r} partition {a.partition}: offset {offset} is past the end "
                    f"offset {end}", what=a.topic)
            if self.auto_offset_reset == "latest":
                offset = end
            else:
                self._seek(a, self._start_offset(a))
                return
        self._set_position(a, offset)

    def _set_position(self, a: _Assigned, offset: int) -> None:
        a.returned = offset
        if a.slot >= 0:
            a.plog.set_reader_position(a.slot, offset)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read topic[partition] from offset next. An offset outside the
        partition's range follows auto_offset_reset ("error" raises
        OffsetOutOfRange here)."""
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"seek({topic!r}, {partition!r}, offset): offset must be an int, "
                            f"got {type(offset).__name__}")
        if not 0 <= offset <= MAX_OFFSET:
            raise errors.OffsetOutOfRange(
                f"topic {topic!r} partition {partition}: cannot seek to offset {offset}; offsets are "
                f"0..{MAX_OFFSET}", what=topic)
        a = self._get(topic, partition)
        self._forget_polled(a.tp)
        self._drop_buffered(lambda tp: tp == (topic, partition))
        self._seek(a, offset)

    def seek_to_beginning(self, partitions: Optional[Iterable[TP]] = None) -> None:
        for tp in list(partitions or self.assigned_state):
            a = self._get(*tp)
            self._forget_polled(a.tp)
            self._drop_buffered(lambda m_tp, tp=a.tp: m_tp == tp)
            self._seek(a, self._start_offset(a))

    def seek_to_end(self, partitions: Optional[Iterable[TP]] = None) -> None:
        for tp in list(partitions or self.assigned_state):
            a = self._get(*tp)
            self._forget_polled(a.tp)
            self._drop_buffered(lambda m_tp, tp=a.tp: m_tp == tp)
            if a.disk is not None:
                a.disk.close()
                a.disk = None
            self._reset(a, "latest")

    def position(self, topic: str, partition: int) -> int:
        self.settle_positions()
        return self._get(topic, partition).returned

    def end_offsets(self, partitions: Optional[Iterable[TP]] = None) -> Dict[TP, int]:
        return {tp: self._get(*tp).plog.end_offset() for tp in (partitions or self.assigned_state)}

    def offsets_for_times(self, topic: str, timestamps: Dict[int, int]) -> Dict[int, Optional[int]]:
        """The first offset whose timestamp is at or after each given timestamp."""
        t = self.cluster.topic(topic)
        out: Dict[int, Optional[int]] = {}
        seg = self._storage()
        for p, ts in timestamps.items():
            found = None
            if seg is not None and t.config["storage"] == "disk":
                found = seg.offset_for_time(topic, p, ts)
            if found is None:
                found = scan_for_time(t.regions[p], ts)
            out[p] = found
        return out

    # ------------------------------------------------------------ reading
    def _read(self, a: _Assigned, max_records: int, wait_ns: int = 0, one: bool = False,
              spin_ns: Optional[int] = None):
        """Up to max_records from a's position; wait_ns > 0 (shared memory,
        nothing committed yet) waits for data first, spinning spin_ns
        (default: spin_us).
        one=True: a lone plain record may come back as a tuple (offset,
        timestamp, value), see RecordReader.read."""
        if a.disk is not None:
            res = a.disk.read(max_records)
            if res is None or not len(res):
                # caught up with the segments: continue in shared memory
                nxt = a.disk.next_offset
                a.disk.close()
                a.disk = None
                rc = a.plog.seek(a.cursor, nxt)
                if rc == ERANGE:
                    # the window moved on while we read the disk: read more disk
                    a.disk = self._storage().reader(a.topic, a.partition, nxt)
                    if a.disk is None:
                        self._reset(a, self.auto_offset_reset)
                    return None
                if a.slot >= 0:
                    # back in shared memory: chunks below are released once
                    # every reader is past them (shmlog_log_release)
                    a.plog.set_reader_position(a.slot, nxt)
                return None
        else:
            try:
                # C publishes the position after the read, except where the
                # durable isolation below may move the cursor back
                durable = self.isolation == "durable"
                res = a.reader.read(a.cursor, max_records, slot=-1 if durable else a.slot,
                                    spin_ns=self.spin_ns if spin_ns is None else spin_ns,
                                    wait_ns=wait_ns, one=one and not durable)
            except errors.OffsetOutOfRange:
                # fell behind the shared-memory window (the chunk was reused)
                self._seek(a, a.cursor.next_offset)
                return None
            if res is None:
                return None
            if res.__class__ is tuple:  # one record; C published the position
                return res
        if self.isolation == "durable" and a.storage == "disk":
            durable = a.plog.hdr.durable_offset
            offs = res.offsets
            if offs[0] >= durable:
                if a.disk is None:
                    a.plog.seek(a.cursor, offs[0])
                else:
                    a.disk.seek(offs[0])
                return None
            if offs[-1] >= durable:
                k = next(i for i, o in enumerate(offs) if o >= durable)
                res.offsets, res.values, res.keys, res.timestamps = offs[:k], res.values[:k], res.keys[:k], res.timestamps[:k]
                if res.headers is not None:
                    res.headers = res.headers[:k]
                if a.disk is None:
                    a.plog.seek(a.cursor, durable)
                else:
                    a.disk.seek(durable)
        if a.slot >= 0 and a.disk is None and not res.positioned:
            a.plog.set_reader_position(a.slot, a.cursor.next_offset)
        return res

    def _raise_pending(self) -> None:
        if not self._has_errors:
            return
        for a in self._order:
            if a.error is not None:
                raise a.error
        self._has_errors = False

    def _fetch(self, max_records: int, timeout: Optional[float], one_partition: bool = False,
               one: bool = False) -> List[Tuple[_Assigned, Any]]:
        if self._closed:
            raise errors.Closed("this Consumer is closed")
        self._raise_pending()
        # callers settle poll()'s positions first (see settle_positions)
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = 1.0 if timeout is None else max(timeout, 0.0)
        while True:
            if self._member is not None:
                self._member.poll()
                self._raise_pending()
                wait = min(wait, self._member.poll_interval())
            out = []
            order = self._order
            n = len(order)
            left = max_records
            if n == 1 and order[0].disk is None and self.isolation != "durable":
                # one shared-memory partition: read, wait and read again,
                # and publish the position, in one crossing
                a = order[0]
                want, wait_ns = min(left, READ_SLICE), int(min(wait, 1.0) * 1e9)
                arr = self._arrivals
                res = (self._read(a, want, wait_ns, one) if arr is None
                       else arr.read(self._read, a, want, wait_ns, one))
                if res is not None and len(res):
                    return [(a, res)]
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return []
                wait = 1.0 if deadline is None else deadline - now
                continue
            for i in range(n):
                a = order[(self._rr + i) % n]
                # decode in slices: 100k fresh objects at once thrash the caches
                # and the GC; ~2k per read keeps the per-record cost flat
                res = self._read(a, left if left < READ_SLICE else READ_SLICE, 0, one)
                if res is not None and len(res):
                    out.append((a, res))
                    left -= len(res)
                    if left <= 0 or one_partition:
                        self._rr = (self._rr + i + 1) % n
                        break
            if out:
                if self._arrivals is not None:
                    self._arrivals.arrived(sum(records_in(r) for _, r in out))
                return out
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            wait = 1.0 if deadline is None else deadline - now
            if self._member is not None:
                wait = min(wait, self._member.poll_interval())
            if n == 0 or any(a.disk is not None for a in order):
                time.sleep(min(wait, 0.01) if n == 0 else 0)
                continue
            self._wait(min(wait, 1.0))

    def _wait(self, timeout: float) -> None:
        if self._wait_args is None:
            order = self._order
            logs = ffi.new("shmlog_log_t *[]", [a.plog.c_log for a in order])
            cursors = ffi.new("shmlog_cursor_t *[]", [a.cursor for a in order])
            topics = {a.topic for a in order}
            bell = order[0].plog.c_log if len(order) > 1 and len(topics) == 1 else ffi.NULL
            if bell != ffi.NULL:
                bell = self.cluster.topic(order[0].topic).regions[0].c_log
            self._wait_args = (logs, cursors, len(order), bell)
        logs, cursors, n, bell = self._wait_args
        if self._arrivals is None:
            lib.shmlog_log_wait_any(logs, cursors, n, bell, self.spin_ns, int(timeout * 1e9))
        else:
            self._arrivals.wait_any(logs, cursors, n, bell, int(timeout * 1e9))

    def consume(self, max_messages: int = 10_000, timeout: Optional[float] = 1.0) -> List[Message]:
        """Up to max_messages, waiting up to timeout for the first."""
        self.settle_positions()
        msgs: List[Message] = []
        while self._buffer and len(msgs) < max_messages:
            m = self._buffer.popleft()
            msgs.append(m)
            self.assigned_state[(m[0], m[1])].returned = m[2] + 1
        if msgs:
            return msgs
        for a, res in self._fetch(max_messages, timeout):
            msgs.extend(batch_messages(a.topic, a.partition, res.offsets, res.keys, res.values, res.headers,
                                       res.timestamps))
            a.returned = res.offsets[-1] + 1
        return msgs

    def consume_batch(self, max_messages: int = 100_000, timeout: Optional[float] = 1.0, *,
                      copy: bool = True) -> Union[MessageBatch, MessageView, None]:
        """One partition's run of records as columns (no object per message), or None.

        copy=False returns a MessageView: values stay in shared memory until
        its release() (see MessageView for the lifetime rules)."""
        self.settle_positions()
        if not copy:
            return self._consume_view(max_messages, timeout)
        if self._buffer:
            first = self._buffer[0]
            run = []
            while self._buffer and (self._buffer[0][0], self._buffer[0][1]) == (first[0], first[1]) \
                    and len(run) < max_messages:
                run.append(self._buffer.popleft())
            self.assigned_state[(first[0], first[1])].returned = run[-1][2] + 1
            res = ReadResult([m[2] for m in run], [m[6] for m in run], [m[4] for m in run],
                             [m[3] for m in run], [m[5] for m in run], 0, 0)
            return MessageBatch(first[0], first[1], res)
        got = self._fetch(max_messages, timeout, one_partition=True)
        if not got:
            return None
        a, res = got[0]
        a.returned = res.offsets[-1] + 1
        return MessageBatch(a.topic, a.partition, res)

    def _release_view(self, view: MessageView) -> None:
        a = self.assigned_state.get((view.topic, view.partition))
        if a is not None and a.view is view:
            a.view = None
            if a.slot >= 0:
                a.plog.set_reader_pin(a.slot, None)

    def _consume_view(self, max_messages: int, timeout: Optional[float]) -> Optional[MessageView]:
        if self._buffer:
            raise errors.ShmlogError("consume_batch(copy=False) after poll(): drain poll() first")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._member is not None:
                self._member.poll()
                self._raise_pending()
            order = self._order
            n = len(order)
            for i in range(n):
                a = order[(self._rr + i) % n]
                if a.disk is not None or a.slot < 0:
                    res = self._read(a, max_messages)  # disk reads are copies
                    if res is not None and len(res):
                        self._rr = (self._rr + i + 1) % n
                        a.returned = res.offsets[-1] + 1
                        return copied_view(a.topic, a.partition, res)
                    continue
                if a.view is not None:
                    a.view.release()
                # pin first, then read: the reclaimer re-checks pins after it
                # claims a chunk (csrc/chunk.c, reclaim_oldest)
                a.plog.set_reader_pin(a.slot, a.cursor.next_offset)
                try:
                    cols = a.reader.read_view(a.cursor, min(max_messages, a.reader.capacity))
                except errors.OffsetOutOfRange:
                    a.plog.set_reader_pin(a.slot, None)
                    self._seek(a, a.cursor.next_offset)
                    continue
                if cols is None:
                    a.plog.set_reader_pin(a.slot, None)
                    continue
                if isinstance(cols, ReadResult):  # an lz4 frame: decoded copy
                    a.plog.set_reader_pin(a.slot, None)
                    if not len(cols):
                        continue
                    a.returned = cols.offsets[-1] + 1
                    a.plog.set_reader_position(a.slot, a.cursor.next_offset)
                    self._rr = (self._rr + i + 1) % n
                    return copied_view(a.topic, a.partition, cols)
                a.plog.set_reader_position(a.slot, a.cursor.next_offset)
                a.returned = cols[0][-1] + 1
                self._rr = (self._rr + i + 1) % n
                a.view = MessageView(a.topic, a.partition, cols, a.plog.mapping, self._release_view)
                return a.view
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            wait = 1.0 if deadline is None else deadline - now
            if self._member is not None:
                wait = min(wait, self._member.poll_interval())
            if n == 0:
                time.sleep(min(wait, 0.01))
                continue
            self._wait(min(wait, 1.0))

    def poll(self, timeout: Optional[float] = 1.0) -> Optional[Message]:
        """The next message, or None after timeout."""
        buf = self._buffer
        if buf:
            return buf.popleft()
        self.settle_positions()
        got = self._fetch(10_000, timeout, one=True)
        if len(got) == 1 and got[0][1].__class__ is tuple:
            # a lone record, (offset, timestamp, value), handed out at once:
            # nothing buffered, so nothing for settle_positions to do later
            a, (off, ts, value) = got[0]
            a.returned = off + 1
            return new_message(Message, (a.topic, a.partition, off, None, value, (), ts))
        for a, res in got:
            if res.__class__ is tuple:  # a lone record of one partition among several
                off = res[0]
                buf.append(new_message(Message, (a.topic, a.partition, off, None, res[2], (), res[1])))
                a.polled_end = off + 1
                self._polled.append(a)
                continue
            offsets = res.offsets
            if len(offsets) == 1:  # a caught-up reader: skip the column machinery
                buf.append(new_message(Message, (a.topic, a.partition, offsets[0], res.keys[0],
                                                 res.values[0], res.headers[0] if res.headers else (),
                                                 res.timestamps[0])))
            else:
                buf.extend(batch_messages(a.topic, a.partition, offsets, res.keys, res.values,
                                          res.headers, res.timestamps))
            a.polled_end = offsets[-1] + 1
            self._polled.append(a)
        if not buf:
            return None
        return buf.popleft()

    def settle_positions(self) -> None:
        """Bring `returned` up to date for what poll() handed out: a partition
        resumes at its first message still buffered, or after the last
        message it buffered."""
        polled = self._polled
        if not polled:
            return
        first: Dict[TP, int] = {}
        for m in self._buffer:
            tp = (m[0], m[1])
            if tp not in first:
                first[tp] = m[2]
                if len(first) == len(polled):
                    break
        for a in polled:
            nxt = first.get(a.tp, a.polled_end)
            if nxt > a.returned:
                a.returned = nxt
        if not self._buffer:
            polled.clear()

    def _drop_buffered(self, dropped: Callable[[TP], bool]) -> None:
        """Drop what poll() buffered for the partitions dropped(tp) names.
        In place: a running `for m in consumer` holds this same deque, and
        must not go on handing out what a seek or a revoke dropped."""
        buf = self._buffer
        if buf:
            kept = [m for m in buf if not dropped((m[0], m[1]))]
            buf.clear()
            buf.extend(kept)

    def _forget_polled(self, tp: TP) -> None:
        """tp's buffered messages are dropped (seek, revoke): settle first,
        then stop settling it from what poll() had buffered."""
        self.settle_positions()
        self._polled = [a for a in self._polled if a.tp != tp]

    def __iter__(self) -> Iterator[Message]:
        if self._closed:
            raise errors.Closed("this Consumer is closed")
        return self._messages_until_closed()

    def _messages_until_closed(self) -> Iterator[Message]:
        buf = self._buffer
        popleft = buf.popleft  # bound once: the loop below runs per message
        while not self._closed:
            # what poll() buffered goes out without a poll() call each;
            # close(), seek() and a revoke empty or filter this same deque
            # (in place, see _drop_buffered)
            while buf:
                yield popleft()
            m = self.poll(timeout=1.0)
            if m is not None:
                yield m

    # ------------------------------------------------------------ offsets
    def commit(self, offsets: Optional[Dict[TP, int]] = None,
               asynchronous: bool = False) -> Optional[Future]:
        """Commit positions (default: everything returned so far) for the group.

        asynchronous=True: the round trip to the supervisor runs on a
        background thread (one per consumer, commits in the order made) and
        a concurrent.futures.Future comes back; its result() raises what a
        synchronous commit would, except that a FencedMember does not rejoin
        first (only this thread may): commit synchronously then, which
        rejoins if the supervisor restarted and raises if really fenced."""
        if self._member is None:
            raise errors.GroupError("commit() needs a consumer group: create the consumer with group=...")
        self.settle_positions()
        if offsets is None:
            offsets = {tp: a.returned for tp, a in self.assigned_state.items()}
        if asynchronous:
            if self._committer is None:
                self._committer = ThreadPoolExecutor(1, thread_name_prefix="shmlog-commit")
            return self._committer.submit(self._member.commit, dict(offsets), False)
        self._member.commit(offsets)
        return None

    def committed(self, partitions: Optional[Iterable[TP]] = None) -> Dict[TP, Optional[int]]:
        if self._member is None:
            raise errors.GroupError("committed() needs a consumer group")
        return self._member.committed(list(partitions or self.assigned_state))

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._committer is not None:
                self._committer.shutdown(wait=True)  # asynchronous commits finish first
                self._committer = None
            self.settle_positions()
            if self._member is not None:
                self._member.close()
        finally:
            self._closed = True
            for a in self.assigned_state.values():
                a.release()
            self.assigned_state.clear()
            self._order = []
            self._wait_args = None
            self._buffer.clear()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
