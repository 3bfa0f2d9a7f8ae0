"""One partition's shared-memory log, as seen from one process.

PartitionLog creates or attaches a POSIX shared-memory region by name, and
wraps the C core: append a batch, read batches from a cursor, wait for data,
close and unlink. It knows nothing of topics, the supervisor or disk; the
broker layers (producer, consumer, spiller) are built on it.

It must never cross into C per message: every call here moves a batch.
"""

from __future__ import annotations

import errno
import mmap
import os
import pickle
import threading
import time
from array import array
from typing import List, Optional, Sequence

import lz4.block
import posix_ipc

from .. import errors
from ._core import ffi, lib
from .codec import columns, decode_headers, encode_headers

NONE = (1 << 64) - 1
_REC_KEYS = lib.SHMLOG_REC_KEYS
_REC_HEADERS = lib.SHMLOG_REC_HEADERS
_REC_NULLS = lib.SHMLOG_REC_NULLS
COMPRESSION = {None: 0, "none": 0, "lz4": lib.SHMLOG_ATTR_LZ4}

DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_CHUNK_COUNT = 4


def default_max_batch_bytes(chunk_bytes: int) -> int:
    """chunk/16 (DESIGN.md, Limits), at least 4 KiB, 64-byte aligned."""
    mb = max(chunk_bytes // 16, 4096)
    mb = min(mb, chunk_bytes // 2)
    return mb - mb % 64


class ReadResult:
    """Columns of the records one read returned (no object per message)."""

    __slots__ = ("offsets", "timestamps", "values", "keys", "headers", "first_seq", "bytes",
                 "positioned")

    def __init__(self, offsets, timestamps, values, keys, headers, first_seq, nbytes,
                 positioned=False):
        self.offsets: Sequence[int] = offsets  # a range when dense
        self.timestamps: List[int] = timestamps
        self.values: List[Optional[bytes]] = values
        self.keys: List[Optional[bytes]] = keys
        self.headers: Optional[List[list]] = headers  # None when no record had headers
        self.first_seq = first_seq
        self.bytes = nbytes
        self.positioned = positioned  # the reader slot's position is already published

    def __len__(self) -> int:
        return len(self.offsets)


class PartitionLog:
    """A partition region mapped into this process."""

    def __init__(self, name: str, shm, mm: mmap.mmap, handle, *, created: bool, what: str):
        self.name = name
        self.what = what
        self._shm = shm
        self._mm = mm
        self._buf = ffi.from_buffer(mm)
        self._log = handle
        self.created = created
        self._closed = False
        self._bell_buf = None
        self._slot_bufs = (ffi.new("uint32_t[]", _SLOTS), ffi.new("uint32_t[]", _SLOTS))
        lib.shmlog_log_attach(self._log, self._buf, len(mm), os.getpid())
        self.hdr = self._log.hdr
        self.chunk_bytes = self._log.chunk_bytes
        self.chunk_count = self._log.chunk_count
        self.max_batch_bytes = self._log.max_batch_bytes
        # the largest batch can hold this many records (7 bytes minimum each)
        self.max_records_per_batch = self.max_batch_bytes // 7 + 1

    # -- lifecycle -------------------------------------------------------
    @classmethod
    def region_bytes(cls, chunk_bytes: int, chunk_count: int) -> int:
        return lib.shmlog_log_region_bytes(chunk_bytes, chunk_count)

    @classmethod
    def create(
        cls,
        name: str,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        chunk_count: int = DEFAULT_CHUNK_COUNT,
        max_batch_bytes: Optional[int] = None,
        gate_readers: bool = True,
        gate_spill: bool = False,
        partition: int = 0,
        initial_offset: int = 0,
        prefault: bool = False,
        what: Optional[str] = None,
    ) -> PartitionLog:
        what = what or f"partition region {name}"
        if max_batch_bytes is None:
            max_batch_bytes = default_max_batch_bytes(chunk_bytes)
        size = lib.shmlog_log_region_bytes(chunk_bytes, chunk_count)
        flags = (lib.SHMLOG_F_GATE_READERS if gate_readers else 0) | (
            lib.SHMLOG_F_GATE_SPILL if gate_spill else 0
        )
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            mm = _map(shm.fd, size, prefault)
        finally:
            shm.close_fd()
        buf = ffi.from_buffer(mm)
        rc = lib.shmlog_log_format(
            buf, size, chunk_bytes, chunk_count, max_batch_bytes, flags, partition,
            initial_offset, os.getpid(),
        )
        ffi.release(buf)
        if rc < 0:
            mm.close()
            posix_ipc.unlink_shared_memory(name)
            raise errors.InvalidConfig(
                f"{what}: invalid geometry chunk_bytes={chunk_bytes} chunk_count={chunk_count} "
                f"max_batch_bytes={max_batch_bytes} (chunk_bytes: 4 KiB..1 GiB, multiple of 64; "
                f"chunk_count: 2..64; max_batch_bytes: 128..chunk_bytes/2, multiple of 64)",
                what=what,
            )
        return cls(name, shm, mm, ffi.new("shmlog_log_t *"), created=True, what=what)

    @classmethod
    def attach(cls, name: str, *, prefault: bool = False, what: Optional[str] = None) -> PartitionLog:
        what = what or f"partition region {name}"
        shm = posix_ipc.SharedMemory(name)
        try:
            size = shm.size
            if size < lib.SHMLOG_HEADER_BYTES:
                raise errors.CorruptBatch(f"{what}: region is only {size} bytes", what=what)
            mm = _map(shm.fd, size, prefault)
        finally:
            shm.close_fd()
        handle = ffi.new("shmlog_log_t *")
        buf = ffi.from_buffer(mm)
        rc = lib.shmlog_log_attach(handle, buf, size, os.getpid())
        ffi.release(buf)
        if rc < 0:
            mm.close()
            errors.check(rc, what)
        return cls(name, shm, mm, handle, created=False, what=what)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.hdr = None
        self._log = None
        ffi.release(self._buf)
        if self._bell_buf is not None:
            ffi.release(self._bell_buf)
            self._bell_buf = None
        try:
            self._mm.close()
        except BufferError:
            # a zero-copy view still exports the mapping; the OS unmaps it
            # when the last view is gone
            pass

    def unlink(self) -> None:
        unlink_region(self.name)

    @property
    def closed(self) -> bool:
        return self._closed

    def _handle(self):
        if self._closed:
            raise errors.Closed(f"{self.what} is closed")
        return self._log

    def __enter__(self) -> PartitionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state -----------------------------------------------------------
    @property
    def start_offset(self) -> int:
        return lib.shmlog_log_start_offset(self._handle())

    @property
    def claimed_end(self) -> int:
        return lib.shmlog_log_claimed_end(self._handle())

    def chunks_in_use(self) -> int:
        """Chunks holding data (not FREE): retained for replay, or still needed."""
        return lib.shmlog_log_chunks_in_use(self._handle())

    def chunks_held(self) -> int:
        """Chunks that cannot be reused now (the active one, and what gating
        readers, pins or the spiller still need): producers block when this
        reaches chunk_count. The fill gauge's numerator."""
        return lib.shmlog_log_chunks_held(self._handle())

    def end_offset(self) -> int:
        """The committed end (next offset a reader at the end would get)."""
        c = ffi.new("shmlog_cursor_t *")
        lib.shmlog_log_seek_end(self._handle(), c)
        return c.next_offset

    # -- producing -------------------------------------------------------
    def register_producer(self) -> int:
        return errors.check(lib.shmlog_log_producer_register(self._handle()), self.what)

    def release_producer(self, slot: int) -> None:
        if not self._closed:
            lib.shmlog_log_producer_release(self._log, slot)

    def append(
        self,
        slot: int,
        values: Sequence,
        *,
        keys: Optional[Sequence] = None,
        headers: Optional[Sequence] = None,
        timestamps: Optional[Sequence[int]] = None,
        timestamp: Optional[int] = None,
        compression: Optional[str] = None,
        timeout: float = 60.0,
        producer_id: int = 0,
        producer_seq: int = 0,
        value_lens: Optional[List[int]] = None,
    ) -> int:
        """Append one batch; returns its base offset. value_lens: len() of
        each value if the caller has them (saves a pass)."""
        log = self._handle()
        n = len(values)
        if n == 0:
            raise ValueError("a batch needs at least one record")
        bi = ffi.new("shmlog_batch_in_t *")
        bi.count = n
        keep = None
        if n <= _POINTER_BATCH:
            try:
                if value_lens is None:
                    value_lens = list(map(len, values))
                if sum(value_lens) >= n * _POINTER_VALUE:
                    # few large values: hand C one pointer each, no join copy
                    ptrs = [ffi.from_buffer("uint8_t[]", v) for v in values]
                    vlens = array("i", value_lens)
                    arr = ffi.new("uint8_t *[]", ptrs)
                    keep = [ptrs, arr, vlens]
                    bi.value_ptrs = arr
            except TypeError:  # None values or wrong types: columns() names them
                value_lens = None
                keep = None
        if keep is None:
            vblob, vlens = columns(values, "value", value_lens)
            keep = [vblob, vlens]
            bi.values = ffi.from_buffer(vblob)
        bi.value_lens = ffi.from_buffer("int32_t[]", vlens)
        if keys is not None and any(k is not None for k in keys):
            if len(keys) != n:
                raise ValueError(f"{len(keys)} keys for {n} values")
            kblob, klens = columns(keys, "key")
            keep += [kblob, klens]
            bi.keys = ffi.from_buffer(kblob)
            bi.key_lens = ffi.from_buffer("int32_t[]", klens)
        if headers is not None and any(headers):
            if len(headers) != n:
                raise ValueError(f"{len(headers)} header lists for {n} values")
            sections = [encode_headers(h) for h in headers]
            hblob, hlens = columns(sections, "headers")
            hl = ffi.new("uint32_t[]", list(hlens))
            keep += [hblob, hl]
            bi.headers = ffi.from_buffer(hblob)
            bi.header_lens = hl
        ts = timestamp if timestamp is not None else time.time_ns() // 1_000_000
        bi.timestamp = ts
        if timestamps is not None:
            tsa = ffi.new("int64_t[]", [ts if t is None else t for t in timestamps])
            keep.append(tsa)
            bi.timestamps = tsa
        bi.producer_id = producer_id
        bi.producer_seq = producer_seq & 0xFFFFFFFF
        out = ffi.new("uint64_t *")
        timeout_ns = int(max(timeout, 0) * 1e9)
        attrs = COMPRESSION.get(compression)
        if attrs is None:
            raise errors.InvalidConfig(f"compression must be None or 'lz4', got {compression!r}")
        if attrs:
            size = lib.shmlog_codec_encoded_size(bi)
            errors.check(size, self.what)
            raw = bytearray(size)
            lib.shmlog_codec_encode(bi, ffi.from_buffer(raw), size)
            packed = lz4.block.compress(bytes(raw), store_size=False)
            first = ts if timestamps is None else bi.timestamps[0]
            mx = ts if timestamps is None else max(bi.timestamps[i] for i in range(n))
            rc = lib.shmlog_log_append_section(
                log, slot, packed, len(packed), n, attrs, first, mx, producer_id,
                producer_seq & 0xFFFFFFFF, size, timeout_ns, out,
            )
        else:
            rc = lib.shmlog_log_append(log, slot, bi, timeout_ns, out)
        if rc < 0:
            errors.check(rc, self.what)
        del keep
        return out[0]

    def append_pickled(self, slot: int, stream, max_value: int, timestamp: int, *,
                       timeout: float = 60.0, producer_id: int = 0, producer_seq: int = 0) -> int:
        """Append an unkeyed batch given as pickle_values(values). Returns the
        base offset, or (without raising) -EPROTO / -EMSGSIZE / -E2BIG when
        the caller must use append() instead (another shape, a value above
        max_value, a batch above the frame limit); raises for anything else."""
        rc = lib.shmlog_log_append_pickled(self._handle(), slot, ffi.from_buffer(stream), len(stream),
                                           min(max_value, 0x7FFFFFFF), timestamp, producer_id,
                                           producer_seq & 0xFFFFFFFF, int(max(timeout, 0) * 1e9))
        if rc < 0 and rc not in _APPEND_FALLBACK:
            errors.check(rc, self.what)
        return rc

    def append_one(self, slot: int, value: bytes, timestamp: int, *, timeout: float = 60.0,
                   producer_id: int = 0, producer_seq: int = 0) -> int:
        """Append a batch of one unkeyed bytes record in one crossing (the
        latency path, often run cold after a pause: no calls but the one into
        C); returns its offset."""
        if self._closed:
            self._handle()  # raises Closed
        rc = _append_one(self._log, slot, value, len(value), timestamp, producer_id,
                         producer_seq & 0xFFFFFFFF, int(timeout * 1e9) if timeout > 0 else 0)
        if rc < 0:
            errors.check(rc, self.what)
        return rc

    # -- reading ---------------------------------------------------------
    def register_reader(self, position: int, *, gating: bool = True, group_id: int = 0) -> int:
        return errors.check(
            lib.shmlog_log_reader_register(self._handle(), position, 1 if gating else 0, group_id),
            self.what,
        )

    def release_reader(self, slot: int) -> None:
        if not self._closed:
            lib.shmlog_log_reader_release(self._log, slot)

    def set_reader_position(self, slot: int, position: int) -> None:
        lib.shmlog_log_reader_set_position(self._handle(), slot, position)

    def set_reader_pin(self, slot: int, pin: Optional[int]) -> None:
        """Hold chunks from `pin` on against reuse (zero-copy views); None releases."""
        lib.shmlog_log_reader_set_pin(self._handle(), slot, NONE if pin is None else pin)

    def new_cursor(self):
        return ffi.new("shmlog_cursor_t *")

    def seek(self, cursor, offset: int) -> int:
        """0 ok; -ERANGE when offset is below the start (cursor at the start)."""
        return lib.shmlog_log_seek(self._handle(), cursor, offset)

    def seek_end(self, cursor) -> None:
        lib.shmlog_log_seek_end(self._handle(), cursor)

    def wait(self, cursor, timeout: float, spin_us: float = 0.0) -> bool:
        """True when data is ready at the cursor, False on timeout."""
        rc = lib.shmlog_log_wait(self._handle(), cursor, int(spin_us * 1000), int(max(timeout, 0) * 1e9))
        return rc == 0

    def reader(self, capacity: Optional[int] = None) -> RecordReader:
        return RecordReader(self, capacity or max(self.max_records_per_batch, 4096))

    # -- reaper / supervisor ----------------------------------------------
    def slot_pids(self):
        """([(slot, pid)] of producers, [(slot, pid)] of readers) in use, read
        in one crossing (the reaper scans every partition each pass)."""
        slots, pids = self._slot_bufs
        n = lib.shmlog_log_slot_pids(self._handle(), slots, pids)
        producers, readers = [], []
        np = lib.SHMLOG_MAX_PRODUCERS
        for k in range(n):
            s = slots[k]
            if s < np:
                producers.append((s, pids[k]))
            else:
                readers.append((s - np, pids[k]))
        return producers, readers

    def producer_slots(self):
        return self.slot_pids()[0]

    def slot_table(self):
        """([producer dict], [reader dict]) of the slots in use, with their
        counters: what `shmlog stats` shows when the supervisor cannot. A
        racy snapshot (plain loads), for display only."""
        hdr = self.hdr
        producers, readers = [], []
        for i in range(lib.SHMLOG_MAX_PRODUCERS):
            s = hdr.producers[i]
            if s.pid:
                producers.append({"pid": s.pid, "batches": s.batches, "records": s.records, "aborted": s.aborted})
        for i in range(lib.SHMLOG_MAX_READERS):
            r = hdr.readers[i]
            if r.pid:
                readers.append({"pid": r.pid, "position": r.position, "gating": bool(r.gating),
                                "group_id": r.group_id})
        return producers, readers

    def reader_slots(self):
        return self.slot_pids()[1]

    def reap_producer(self, slot: int) -> int:
        return lib.shmlog_log_reap_producer(self._handle(), slot)

    def reap_reader(self, slot: int) -> int:
        return lib.shmlog_log_reap_reader(self._handle(), slot)

    def unblock(self, seq: int, pos: int, force: bool = False) -> int:
        return lib.shmlog_log_unblock(self._handle(), seq, pos, 1 if force else 0)

    def force_seal(self, seq: int) -> int:
        return lib.shmlog_log_force_seal(self._handle(), seq)

    def repair_chunks(self, dead_pid: int) -> int:
        return lib.shmlog_log_repair_chunks(self._handle(), dead_pid)

    def frontier(self, cursor):
        seq = ffi.new("uint64_t *")
        pos = ffi.new("uint32_t *")
        rc = lib.shmlog_log_frontier(self._handle(), cursor, seq, pos)
        return rc, seq[0], pos[0]

    def ring_bell_of(self, bell: PartitionLog) -> None:
        """Commits here also ring `bell`'s doorbell (partition 0 of the topic).

        C keeps raw pointers into bell's mapping, so we hold an export of it:
        bell.close() then cannot unmap it under us (it stays mapped until
        this log closes too)."""
        self._bell_buf = ffi.from_buffer(bell._mm) if bell is not self else None
        lib.shmlog_log_set_bell(self._handle(), bell._handle())

    def set_spilled(self, offset: int) -> None:
        lib.shmlog_log_set_spilled(self._handle(), offset)

    def set_durable(self, offset: int) -> None:
        lib.shmlog_log_set_durable(self._handle(), offset)


def unlink_region(name: str) -> bool:
    """Remove a shared-memory region by name; False if it was already gone."""
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


def _map(fd: int, size: int, prefault: bool) -> mmap.mmap:
    flags = mmap.MAP_SHARED
    if prefault and hasattr(mmap, "MAP_POPULATE"):
        flags |= mmap.MAP_POPULATE
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


class RecordReader:
    """Decoded-record reads from a cursor into reusable C arrays.

    Values are copied out of shared memory (mmap slicing makes bytes), and the
    chunk is validated afterwards, so a value handed out never changes even if
    the chunk is reused the next instant (a seqlock, not a lock).
    """

    def __init__(self, plog: PartitionLog, capacity: int):
        self.plog = plog
        self.capacity = capacity
        self._out = ffi.new("shmlog_records_out_t *")
        self._arrays = [
            ffi.new("uint64_t[]", capacity),
            ffi.new("int64_t[]", capacity),
            ffi.new("uint64_t[]", capacity),
            ffi.new("int32_t[]", capacity),
            ffi.new("uint64_t[]", capacity),
            ffi.new("int32_t[]", capacity),
            ffi.new("uint64_t[]", capacity),
            ffi.new("uint32_t[]", capacity),
        ]
        o = self._out
        o.capacity = capacity
        (o.offsets, o.timestamps, o.value_pos, o.value_lens, o.key_pos, o.key_lens,
         o.header_pos, o.header_lens) = self._arrays
        self._info = ffi.new("shmlog_read_info_t *")

    def read(self, cursor, max_records: int, max_bytes: int = 1 << 62, *, slot: int = -1,
             spin_ns: int = 0, wait_ns: int = 0, one: bool = False):
        """Up to max_records decoded records, or None if nothing is committed.
        one=True: a read that found a single unkeyed record without headers
        returns it as a tuple (offset, timestamp, value) instead of a
        ReadResult (a caught-up poll(): no pickle, no result object).

        Raises OffsetOutOfRange if the cursor's chunk was reused (the reader
        fell behind) and CorruptBatch for bad data, naming the offset."""
        plog = self.plog
        info = self._info
        buf = _tls.__dict__.get("buf") or _grow_tls(0)
        # wait_ns: wait for data first when nothing is committed; slot: a
        # reader slot whose position C publishes after a pickled read
        k = lib.shmlog_log_poll_pickled(plog._handle(), cursor, self._out,
                                        max_records if max_records < self.capacity else self.capacity,
                                        max_bytes, _PICKLE_BELOW, info, _tls.cbuf, len(buf),
                                        slot, spin_ns, wait_ns, _READ_ONE_OK if one else 0)
        if k == _READ_ONE:
            return info.one_offset, info.one_timestamp, _tls.view[: info.one_len].tobytes()
        if k == _READ_PICKLE:
            # one crossing, one loads: the stream was validated in C
            values, keys, offsets, base, timestamps, ts, first_seq, nbytes = pickle.loads(
                _tls.view[: info.pickle_bytes])
            n = len(values)
            if offsets is None:
                # dense: a range, not 600 int objects nobody may look at
                offsets = range(base, base + n)
            return ReadResult(offsets, [ts] * n if timestamps is None else timestamps, values,
                              [None] * n if keys is None else keys, None, first_seq, nbytes,
                              slot >= 0)
        if k == _READ_NONE:
            return None
        if k == _READ_FRAME:
            s = info.start
            return self._read_compressed(cursor, (s.seq, s.pos, s.next_offset), self._out.capacity)
        if k < 0:
            errors.check(k, plog.what, offset=info.bad_offset)
        if not self._out.flags & _REC_HEADERS and info.bytes < info.records * _PICKLE_BELOW:
            _grow_tls(len(buf) + 1)  # small records that did not fit: a roomier stream next time
        return self._columns(cursor, info.records)

    def _columns(self, cursor, n: int) -> ReadResult:
        """The general copy-out (headers, large values): the records are in
        the out arrays; validate after copying."""
        plog = self.plog
        o = self._out
        info = self._info
        mm = plog._mm
        flags = o.flags
        # columns that are all empty (no keys, no headers) are never unpacked
        small = info.bytes < n * _PICKLE_BELOW
        values = _pickled(plog._buf, o.value_pos, o.value_lens, n) if small else None
        if values is None:
            if not _heap_kept and info.bytes >= 1 << 17:
                keep_freed_heap()
            vpos = ffi.unpack(o.value_pos, n)
            vlen = ffi.unpack(o.value_lens, n)
            if flags & _REC_NULLS:
                values = [None if ln < 0 else mm[p : p + ln] for p, ln in zip(vpos, vlen)]
            else:
                values = [mm[p : p + ln] for p, ln in zip(vpos, vlen)]
        if flags & _REC_KEYS:
            keys = _pickled(plog._buf, o.key_pos, o.key_lens, n) if small else None
            if keys is None:
                kpos = ffi.unpack(o.key_pos, n)
                klen = ffi.unpack(o.key_lens, n)
                keys = [None if ln < 0 else mm[p : p + ln] for p, ln in zip(kpos, klen)]
        else:
            keys = [None] * n
        headers = None
        if flags & _REC_HEADERS:
            hpos = ffi.unpack(o.header_pos, n)
            hlen = ffi.unpack(o.header_lens, n)
            headers = [decode_headers(mm[p : p + ln]) if ln else [] for p, ln in zip(hpos, hlen)]
        offsets = ffi.unpack(o.offsets, n)
        timestamps = ffi.unpack(o.timestamps, n)
        if lib.shmlog_log_validate_read(plog._handle(), cursor, info) != 0:
            # the chunk was reused while we copied: nothing we copied is trusted
            errors.check(-errno.ERANGE, plog.what, offset=info.start.next_offset)
        return ReadResult(offsets, timestamps, values, keys, headers, info.first_seq, info.bytes)

    def read_view(self, cursor, max_records: int):
        """Zero-copy read: positions of the values in the mapping instead of
        bytes. Returns (offsets, timestamps, value_pos, value_lens, key_pos,
        key_lens) as arrays, or None. The caller must pin the cursor's offset
        (reader slot pin) before calling and keep it until done with them.
        Compressed frames are not viewable: those come back as a ReadResult."""
        plog = self.plog
        log = plog._handle()
        o = self._out
        o.capacity = min(max_records, self.capacity)
        info = self._info
        saved = (cursor.seq, cursor.pos, cursor.next_offset)
        if lib.shmlog_log_validate(log, cursor.seq) != 0:
            errors.check(-errno.ERANGE, plog.what, offset=saved[2])
        n = lib.shmlog_log_read(log, cursor, o, 1 << 62, info)
        if n < 0:
            errors.check(n, plog.what, offset=info.bad_offset)
        if n == 0:
            if not info.frame_pos:
                return None
            return self._read_compressed(cursor, saved, o.capacity)
        cols = (
            _array("Q", o.offsets, 8 * n),
            _array("q", o.timestamps, 8 * n),
            _array("Q", o.value_pos, 8 * n),
            _array("i", o.value_lens, 4 * n),
            _array("Q", o.key_pos, 8 * n),
            _array("i", o.key_lens, 4 * n),
        )
        if lib.shmlog_log_validate(log, info.first_seq) != 0:
            cursor.seq, cursor.pos, cursor.next_offset = saved
            errors.check(-errno.ERANGE, plog.what, offset=saved[2])
        return cols

    def _read_compressed(self, cursor, saved, max_records: int) -> ReadResult:
        plog = self.plog
        info = self._info
        mm = plog._mm
        start = info.frame_pos + lib.SHMLOG_FRAME_HEADER
        packed = mm[start : start + info.frame_payload_bytes]
        if lib.shmlog_log_validate(plog._handle(), info.first_seq) != 0:
            cursor.seq, cursor.pos, cursor.next_offset = saved
            errors.check(-errno.ERANGE, plog.what, offset=saved[2])
        try:
            raw = lz4.block.decompress(packed, uncompressed_size=info.frame_uncompressed_bytes)
        except Exception as exc:  # lz4 raises LZ4BlockError
            raise errors.CorruptBatch(
                f"{plog.what} at offset {saved[2]}: lz4 payload does not decompress ({exc})",
                what=plog.what, code=errno.EBADMSG,
            ) from None
        res = decode_section(
            raw, info.frame_record_count, info.frame_base_offset, info.frame_first_timestamp,
            saved[2], self, plog.what, capacity=max_records,
        )
        end = info.frame_base_offset + info.frame_record_count
        if len(res) and res.offsets[-1] + 1 < end:
            # partial: stay on this frame and resume after the last record
            # handed out. The frame's chunk is info.first_seq, not the one the
            # cursor started in (the read may have stepped into the next chunk)
            seq = info.first_seq
            cursor.seq = seq
            cursor.pos = (info.frame_pos - lib.SHMLOG_HEADER_BYTES
                          - (seq % self.plog.chunk_count) * self.plog.chunk_bytes)
            cursor.next_offset = res.offsets[-1] + 1
        elif cursor.next_offset < end:
            cursor.next_offset = end
        res.first_seq = info.first_seq
        res.bytes = info.bytes
        return res


# Small values are copied out through a pickle stream the C core writes
# (shmlog_codec_values_pickle): pickle.loads makes the bytes objects in C, ~3x
# faster than slicing the mapping per value. Large values are sliced (one
# copy instead of two). The stream's opcodes all come from our C code.
_PICKLE_BELOW = 1024  # average frame bytes per record
# appends of at most this many values averaging at least this size pass one
# pointer per value instead of joining them first (saves a copy)
_POINTER_BATCH = 256
_POINTER_VALUE = 16384
_tls = threading.local()


_APPEND_FALLBACK = (-errno.EPROTO, -errno.EMSGSIZE, -errno.E2BIG)
_SLOTS = lib.SHMLOG_MAX_PRODUCERS + lib.SHMLOG_MAX_READERS


class _Sink:
    """A pickler's file that keeps the bytes object pickle hands it: protocol
    3 writes the whole stream once, at the end of dump(), so nothing is
    copied into a BytesIO."""

    __slots__ = ("write",)

    def __init__(self, write) -> None:
        self.write = write


_PICKLER_KEEP = 1 << 20  # a thread's pickler that grew past this is not kept


def _new_pickler():
    out: list = []
    p = pickle.Pickler(_Sink(out.append), 3)
    # documented as deprecated (not removed); without it the stream would
    # carry memo opcodes, which C refuses (-EPROTO): append() then
    p.fast = True
    return p, out


def pickle_values(values) -> Optional[bytes]:
    """The pickle of a list of bytes that append_pickled takes: protocol 3
    without a memo (Pickler.fast), so every value is written in place with
    its length. None if the values do not pickle (the caller falls back).

    Each thread keeps its pickler: a new one starts from a 4 KiB buffer and
    doubles it (copying) up to the batch's size on every call, ~2 us of a
    600 x 100 B batch's ~30; a kept one starts at the size it last reached."""
    tls = _tls.__dict__
    kept = tls.pop("pickler", None)  # popped: a nested call (a value's __reduce__) gets its own
    p, out = kept or _new_pickler()
    try:
        p.dump(values)
    except Exception:  # a value pickle refuses: append() names it
        return None
    finally:
        stream = b"".join(out) if len(out) != 1 else out[0]
        out.clear()
    if len(stream) <= _PICKLER_KEEP:
        tls["pickler"] = (p, out)
    return stream


_append_one = lib.shmlog_log_append_one
_READ_NONE = lib.SHMLOG_READ_NONE
_READ_PICKLE = lib.SHMLOG_READ_PICKLE
_READ_FRAME = lib.SHMLOG_READ_FRAME
_READ_ONE = lib.SHMLOG_READ_ONE
_READ_ONE_OK = lib.SHMLOG_READ_ONE_OK


def _grow_tls(need: int) -> bytearray:
    """This thread's pickle-stream buffer, of at least `need` bytes: 1 MiB
    first, then 4x at a time up to 16 MiB (slicing covers anything larger)."""
    old = _tls.__dict__.get("buf")
    size = len(old) if old is not None else 1 << 20
    while size < need and size < (16 << 20):
        size *= 4
    if old is not None:
        if size == len(old):
            return old
        _tls.view.release()
    buf = _tls.buf = bytearray(size)
    _tls.cbuf = ffi.from_buffer(buf)
    _tls.view = memoryview(buf)
    return buf


def _pickled(base, pos, lens, n: int) -> Optional[list]:
    buf = _tls.__dict__.get("buf") or _grow_tls(0)
    k = lib.shmlog_codec_values_pickle(base, pos, lens, n, _tls.cbuf, len(buf))
    if k < 0:
        if len(buf) >= 16 << 20:
            return None
        _grow_tls(len(buf) + 1)
        return _pickled(base, pos, lens, n)
    return pickle.loads(_tls.view[:k])


# glibc's own dynamic thresholds top out here (DEFAULT_MMAP_THRESHOLD_MAX, and
# trim = 2 x mmap): where a program that frees large blocks converges anyway
_HEAP_MMAP_THRESHOLD = 32 << 20
_HEAP_TRIM_THRESHOLD = 64 << 20
_HEAP_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
_heap_kept = False


def keep_freed_heap() -> bool:
    """Let glibc keep freed heap for the next read instead of returning it.

    A reader copying out 64 KiB values frees and re-allocates a batch of them
    every read; glibc sees them as small (under its 128 KiB first threshold),
    trims the heap top after each free, and each read then page-faults its
    memory back in: measured, 213,000 faults instead of 21,000 for 32,000
    values of 64 KiB, and twice the reader's time (bench/README.md). This
    sets the thresholds glibc
    itself converges to for large blocks. Once per process, on the first
    large read; not if the MALLOC_*_ environment already tunes malloc, or
    SHMLOG_MALLOC_TUNING=0. True if it was set now."""
    global _heap_kept
    if _heap_kept:
        return False
    _heap_kept = True
    env = os.environ
    if env.get("SHMLOG_MALLOC_TUNING", "1") == "0" or any(k in env for k in _HEAP_ENV) or (
            "glibc.malloc." in env.get("GLIBC_TUNABLES", "")):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    # mmap first: setting any threshold freezes glibc's dynamic one
    return bool(mallopt(m_mmap_threshold, _HEAP_MMAP_THRESHOLD) and
                mallopt(m_trim_threshold, _HEAP_TRIM_THRESHOLD))


def _array(code: str, cdata, nbytes: int) -> array:
    a = array(code)
    a.frombytes(ffi.buffer(cdata, nbytes))
    return a


def decode_section(raw: bytes, count: int, base_offset: int, first_ts: int, skip_below: int,
                   reader: RecordReader, what: str, capacity: Optional[int] = None) -> ReadResult:
    """Decode a record section held in a Python buffer (lz4 frames, segments).
    Stops after `capacity` records (default: the reader's capacity)."""
    o = reader._out
    o.capacity = min(capacity or reader.capacity, reader.capacity)
    o.flags = 0
    n = lib.shmlog_codec_decode(ffi.from_buffer(raw), len(raw), count, base_offset, first_ts,
                                0, skip_below, o, 0)
    if n < 0:
        errors.check(n, what, offset=base_offset)
    flags = o.flags
    small = len(raw) < n * _PICKLE_BELOW
    cbase = ffi.from_buffer(raw) if small else None
    values = _pickled(cbase, o.value_pos, o.value_lens, n) if small else None
    if values is None:
        vpos = ffi.unpack(o.value_pos, n)
        vlen = ffi.unpack(o.value_lens, n)
        values = [None if ln < 0 else raw[p : p + ln] for p, ln in zip(vpos, vlen)]
    keys = None
    if not flags & _REC_KEYS:
        keys = [None] * n
    elif small:
        keys = _pickled(cbase, o.key_pos, o.key_lens, n)
    if keys is None:
        kpos = ffi.unpack(o.key_pos, n)
        klen = ffi.unpack(o.key_lens, n)
        keys = [None if ln < 0 else raw[p : p + ln] for p, ln in zip(kpos, klen)]
    headers = None
    if flags & _REC_HEADERS:
        hpos = ffi.unpack(o.header_pos, n)
        hlen = ffi.unpack(o.header_lens, n)
        headers = [decode_headers(raw[p : p + ln]) if ln else [] for p, ln in zip(hpos, hlen)]
    return ReadResult(ffi.unpack(o.offsets, n), ffi.unpack(o.timestamps, n), values, keys,
                      headers, 0, len(raw))


def scan_for_time(plog, ts: int) -> Optional[int]:
    """First offset in shared memory with timestamp >= ts (memory topics, or
    the tail of disk topics)."""
    cur = plog.new_cursor()
    plog.seek(cur, 0)
    reader = plog.reader()
    while True:
        try:
            res = reader.read(cur, reader.capacity)
        except errors.OffsetOutOfRange:
            plog.seek(cur, 0)
            continue
        if res is None:
            return None
        for off, t in zip(res.offsets, res.timestamps):
            if t >= ts:
                return off
