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
import time
from array import array
from typing import List, Optional, Sequence

import lz4.block
import posix_ipc

from .. import errors
from . import commit as _commit
from ._core import ffi, lib
from .codec import columns, encode_headers
from .reader import RecordReader
from .records import NONE, POINTER_BATCH, POINTER_VALUE, ReadResult, pickle_values  # noqa: F401  (re-exported: the log's public vocabulary)

COMPRESSION = {None: 0, "none": 0, "lz4": lib.SHMLOG_ATTR_LZ4}

_APPEND_FALLBACK = (-errno.EPROTO, -errno.EMSGSIZE, -errno.E2BIG)
_SLOTS = lib.SHMLOG_MAX_PRODUCERS + lib.SHMLOG_MAX_READERS

DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_CHUNK_COUNT = 4


def default_max_batch_bytes(chunk_bytes: int) -> int:
    """chunk/16 (DESIGN.md, Limits), at least 4 KiB, 64-byte aligned."""
    mb = max(chunk_bytes // 16, 4096)
    mb = min(mb, chunk_bytes // 2)
    return mb - mb % 64


class PartitionLog:
    """A partition region mapped into this process."""

    def __init__(self, name: str, shm, mm: mmap.mmap, handle, *, created: bool, what: str):
        self.name = name
        self.what = what
        self._shm = shm
        self.mapping = mm
        self.base = ffi.from_buffer(mm)
        self.c_log = handle
        # the handle's address: the producer's commits reach the core with
        # it through core.commit (holding the GIL), never after close()
        self.c_addr = _commit.address(handle)
        self.created = created
        self._closed = False
        self._bell_buf = None
        self._budget = None
        self._slot_bufs = (ffi.new("uint32_t[]", _SLOTS), ffi.new("uint32_t[]", _SLOTS))
        lib.shmlog_log_attach(self.c_log, self.base, len(mm), os.getpid())
        self.hdr = self.c_log.hdr
        self.chunk_bytes = self.c_log.chunk_bytes
        self.chunk_count = self.c_log.chunk_count
        self.max_batch_bytes = self.c_log.max_batch_bytes
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
        reserve: bool = False,
        reserve_ring: bool = True,
        what: Optional[str] = None,
    ) -> PartitionLog:
        """reserve: allocate the region's pages now (posix_fallocate), so a
        full tmpfs is an error here and never a SIGBUS later in whichever
        process first writes a page. reserve_ring=False reserves only the
        header and the first chunk: the others are reserved by the rotation
        that first opens them (chunk.c, try_rotate), which turns a full
        tmpfs into StorageError for that producer. Disk topics use it: an
        idle partition then never holds more than its first chunk."""
        what = what or f"partition region {name}"
        if max_batch_bytes is None:
            max_batch_bytes = default_max_batch_bytes(chunk_bytes)
        size = lib.shmlog_log_region_bytes(chunk_bytes, chunk_count)
        flags = (lib.SHMLOG_F_GATE_READERS if gate_readers else 0) | (
            lib.SHMLOG_F_GATE_SPILL if gate_spill else 0
        )
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            if reserve:
                reserve_fd(shm.fd, size if reserve_ring else lib.SHMLOG_HEADER_BYTES + chunk_bytes,
                           what, name)
            mm = _map(shm.fd, size, prefault)
        except BaseException:
            shm.close_fd()
            unlink_region(name)
            raise
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
                f"chunk_count: 2..64; max_batch_bytes: 128..chunk_bytes, multiple of 64)",
                what=what,
            )
        plog = cls(name, shm, mm, ffi.new("shmlog_log_t *"), created=True, what=what)
        if reserve and reserve_ring:
            # every chunk's pages are allocated: none needs reserving when it
            # opens (format marks all but the first, for lazy regions)
            for i in range(chunk_count):
                plog.hdr.chunks[i].released = 0
        return plog

    @classmethod
    def attach(cls, name: str, *, prefault: bool = False, what: Optional[str] = None) -> PartitionLog:
        what = what or f"partition region {name}"
        shm = posix_ipc.SharedMemory(name)
        try:
            size = shm.size
            if size < lib.SHMLOG_HEADER_BYTES:
                raise errors.CorruptBatch(f"{what}: region is only {size} bytes", what=what)
            mm = _map(shm.fd, size, False)
        finally:
            shm.close_fd()
        handle = ffi.new("shmlog_log_t *")
        buf = ffi.from_buffer(mm)
        rc = lib.shmlog_log_attach(handle, buf, size, os.getpid())
        ffi.release(buf)
        if rc < 0:
            mm.close()
            errors.check(rc, what)
        plog = cls(name, shm, mm, handle, created=False, what=what)
        if prefault:
            plog._prefault()
        return plog

    def _prefault(self) -> None:
        """Map the pages of the header and of every chunk that holds them now.

        Not MAP_POPULATE: that faults in the whole region, and a fault on a
        page a released chunk gave back (chunk.c, shmlog_log_release)
        allocates it again - every client's attach would undo the release.
        MADV_POPULATE_WRITE (Linux 5.14) on the reserved parts only; an
        older kernel maps pages as they are touched."""
        hb, cb, mm = lib.SHMLOG_HEADER_BYTES, self.chunk_bytes, self.mapping
        spans = [(0, hb)]
        for i in range(self.chunk_count):
            if not self.hdr.chunks[i].released:
                start = hb + i * cb
                lo = start - start % mmap.PAGESIZE
                spans.append((lo, min(start + cb, len(mm)) - lo))
        try:
            for start, length in spans:
                mm.madvise(_MADV_POPULATE_WRITE, start, length)
        except OSError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.set_budget(None)
        self.hdr = None
        self.c_log = None
        self.c_addr = 0
        ffi.release(self.base)
        if self._bell_buf is not None:
            ffi.release(self._bell_buf)
            self._bell_buf = None
        try:
            self.mapping.close()
        except BufferError:
            # a zero-copy view still exports the mapping; the OS unmaps it
            # when the last view is gone
            pass

    def unlink(self) -> None:
        unlink_region(self.name)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stale(self) -> bool:
        """Closed here, or the supervisor deleted the topic (SHMLOG_F_CLOSED
        in the region's header): the caller must map the topic afresh."""
        return self._closed or bool(self.hdr.flags & lib.SHMLOG_F_CLOSED)

    def mark_deleted(self) -> None:
        """Set SHMLOG_F_CLOSED: every process attached to this region sees
        it go `stale` and detaches (the supervisor, deleting the topic)."""
        self.hdr.flags |= lib.SHMLOG_F_CLOSED

    def checked_log(self):
        if self._closed:
            raise errors.Closed(f"{self.what} is closed")
        return self.c_log

    def __enter__(self) -> PartitionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state -----------------------------------------------------------
    @property
    def start_offset(self) -> int:
        return lib.shmlog_log_start_offset(self.checked_log())

    @property
    def claimed_end(self) -> int:
        return lib.shmlog_log_claimed_end(self.checked_log())

    def chunks_in_use(self) -> int:
        """Chunks holding data (not FREE): retained for replay, or still needed."""
        return lib.shmlog_log_chunks_in_use(self.checked_log())

    def chunks_held(self) -> int:
        """Chunks that cannot be reused now (the active one, and what gating
        readers, pins or the spiller still need): producers block when this
        reaches chunk_count. The fill gauge's numerator."""
        return lib.shmlog_log_chunks_held(self.checked_log())

    def chunks_released(self) -> int:
        """Chunks whose pages are given back (or were never reserved): a
        racy snapshot for display and the budget's resident estimate."""
        hdr = self.hdr
        if hdr is None:
            return 0
        return sum(1 for i in range(self.chunk_count) if hdr.chunks[i].released)

    def release(self) -> int:
        """Free the chunks that are spilled and behind every live reader and
        give their pages back to the tmpfs (shmlog_log_release): the
        supervisor's call for an idle partition of a disk topic. Returns the
        chunks released."""
        rc = lib.shmlog_log_release(self.checked_log())
        if rc < 0:
            raise errors.StorageError(
                f"{self.what}: giving idle chunks back to the tmpfs failed "
                f"({os.strerror(-rc)})", what=self.what, code=-rc)
        return rc

    def set_budget(self, region) -> None:
        """Charge rotations into released chunks to the data dir's account
        (core.budget_region.BudgetRegion), or to none. The region stays
        mapped while this log uses it."""
        if self._budget is region:
            return
        if self.c_log is not None:
            lib.shmlog_log_set_budget(self.c_log, region.account if region is not None else ffi.NULL)
        if self._budget is not None:
            self._budget.drop_user()
        self._budget = region
        if region is not None:
            region.users += 1

    def reserved_bytes(self) -> int:
        """The header and every chunk not marked released: what this region
        holds in the account (shmlog_log_reserved_bytes)."""
        return lib.shmlog_log_reserved_bytes(self.checked_log())

    def reserve_pages(self) -> None:
        """reserve_fd for the header and every chunk not marked released: a
        region a supervisor re-attaches to may come from a version that did
        not reserve; released chunks are reserved when they are opened."""
        shm = posix_ipc.SharedMemory(self.name)
        try:
            hb, cb = lib.SHMLOG_HEADER_BYTES, self.chunk_bytes
            reserve_fd(shm.fd, hb, self.what, self.name, start=0)
            for i in range(self.chunk_count):
                if not self.hdr.chunks[i].released:
                    reserve_fd(shm.fd, cb, self.what, self.name, start=hb + i * cb)
        finally:
            shm.close_fd()

    def used_bytes(self) -> tuple:
        """(bytes of frames in chunks that hold data, bytes in the active
        chunk): a racy snapshot for display (plain loads of the tail words)."""
        hdr = self.hdr
        if hdr is None:
            return 0, 0
        cb = self.chunk_bytes
        active = hdr.active_seq % self.chunk_count
        used = act = 0
        for i in range(self.chunk_count):
            c = hdr.chunks[i]
            if c.state & 0xFF == lib.SHMLOG_CHUNK_FREE:
                continue
            b = min(c.tail >> 32, cb)
            used += b
            if i == active:
                act = b
        return used, act

    def end_offset(self) -> int:
        """The committed end (next offset a reader at the end would get)."""
        c = ffi.new("shmlog_cursor_t *")
        lib.shmlog_log_seek_end(self.checked_log(), c)
        return c.next_offset

    # -- producing -------------------------------------------------------
    def register_producer(self) -> int:
        return errors.check(lib.shmlog_log_producer_register(self.checked_log()), self.what)

    def release_producer(self, slot: int) -> None:
        if not self._closed:
            lib.shmlog_log_producer_release(self.c_log, slot)

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
        log = self.checked_log()
        n = len(values)
        if n == 0:
            raise ValueError("a batch needs at least one record")
        bi = ffi.new("shmlog_batch_in_t *")
        bi.count = n
        keep = None
        if n <= POINTER_BATCH:
            try:
                if value_lens is None:
                    value_lens = list(map(len, values))
                if sum(value_lens) >= n * POINTER_VALUE:
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
            # bytes: a section send() already encoded (and so validated)
            sections = [h if h.__class__ is bytes else encode_headers(h) for h in headers]
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
        if self._closed:
            self.checked_log()  # raises Closed
        rc = _commit.append_pickled(self.c_addr, slot, stream, min(max_value, 0x7FFFFFFF), timestamp,
                                    producer_id, producer_seq & 0xFFFFFFFF, int(max(timeout, 0) * 1e9))
        if rc < 0 and rc not in _APPEND_FALLBACK:
            errors.check(rc, self.what)
        return rc

    def append_one(self, slot: int, value: bytes, timestamp: int, *, timeout: float = 60.0,
                   producer_id: int = 0, producer_seq: int = 0) -> int:
        """Append a batch of one unkeyed bytes record in one crossing (the
        latency path, often run cold after a pause: no calls but the one into
        C); returns its offset."""
        if self._closed:
            self.checked_log()  # raises Closed
        rc = _commit.append_one(self.c_addr, slot, value, timestamp, producer_id,
                                producer_seq & 0xFFFFFFFF, int(timeout * 1e9) if timeout > 0 else 0)
        if rc < 0:
            errors.check(rc, self.what)
        return rc

    # -- reading ---------------------------------------------------------
    def register_reader(self, position: int, *, gating: bool = True, group_id: int = 0) -> int:
        return errors.check(
            lib.shmlog_log_reader_register(self.checked_log(), position, 1 if gating else 0, group_id),
            self.what,
        )

    def release_reader(self, slot: int) -> None:
        if not self._closed:
            lib.shmlog_log_reader_release(self.c_log, slot)

    def set_reader_position(self, slot: int, position: int) -> None:
        lib.shmlog_log_reader_set_position(self.checked_log(), slot, position)

    def set_reader_pin(self, slot: int, pin: Optional[int]) -> None:
        """Hold chunks from `pin` on against reuse (zero-copy views); None releases."""
        lib.shmlog_log_reader_set_pin(self.checked_log(), slot, NONE if pin is None else pin)

    def new_cursor(self):
        return ffi.new("shmlog_cursor_t *")

    def seek(self, cursor, offset: int) -> int:
        """0 ok; -ERANGE when offset is below the start (cursor at the start)."""
        return lib.shmlog_log_seek(self.checked_log(), cursor, offset)

    def seek_end(self, cursor) -> None:
        lib.shmlog_log_seek_end(self.checked_log(), cursor)

    def wait(self, cursor, timeout: float, spin_us: float = 0.0) -> bool:
        """True when data is ready at the cursor, False on timeout."""
        rc = lib.shmlog_log_wait(self.checked_log(), cursor, int(spin_us * 1000), int(max(timeout, 0) * 1e9))
        return rc == 0

    def reader(self, capacity: Optional[int] = None) -> RecordReader:
        return RecordReader(self, capacity or max(self.max_records_per_batch, 4096))

    # -- reaper / supervisor ----------------------------------------------
    def slot_pids(self):
        """([(slot, pid)] of producers, [(slot, pid)] of readers) in use, read
        in one crossing (the reaper scans every partition each pass)."""
        slots, pids = self._slot_bufs
        n = lib.shmlog_log_slot_pids(self.checked_log(), slots, pids)
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
        return lib.shmlog_log_reap_producer(self.checked_log(), slot)

    def reap_reader(self, slot: int) -> int:
        return lib.shmlog_log_reap_reader(self.checked_log(), slot)

    def unblock(self, seq: int, pos: int, force: bool = False) -> int:
        return lib.shmlog_log_unblock(self.checked_log(), seq, pos, 1 if force else 0)

    def force_seal(self, seq: int) -> int:
        return lib.shmlog_log_force_seal(self.checked_log(), seq)

    def repair_chunks(self, dead_pid: int) -> int:
        return lib.shmlog_log_repair_chunks(self.checked_log(), dead_pid)

    def frontier(self, cursor):
        seq = ffi.new("uint64_t *")
        pos = ffi.new("uint32_t *")
        rc = lib.shmlog_log_frontier(self.checked_log(), cursor, seq, pos)
        return rc, seq[0], pos[0]

    def ring_bell_of(self, bell: PartitionLog) -> None:
        """Commits here also ring `bell`'s doorbell (partition 0 of the topic).

        C keeps raw pointers into bell's mapping, so we hold an export of it:
        bell.close() then cannot unmap it under us (it stays mapped until
        this log closes too)."""
        self._bell_buf = ffi.from_buffer(bell.mapping) if bell is not self else None
        lib.shmlog_log_set_bell(self.checked_log(), bell.checked_log())

    def set_spilled(self, offset: int) -> None:
        lib.shmlog_log_set_spilled(self.checked_log(), offset)

    def set_durable(self, offset: int) -> None:
        lib.shmlog_log_set_durable(self.checked_log(), offset)


def unlink_region(name: str) -> bool:
    """Remove a shared-memory region by name; False if it was already gone."""
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


# glibc's shm_open() resolves a region name to a file here (a tmpfs); its
# st_size is what the region reserves, its st_blocks what is resident
SHM_DIR = "/dev/shm"


def region_path(name: str) -> str:
    return os.path.join(SHM_DIR, name.lstrip("/"))


def region_usage(name: str) -> Optional[tuple]:
    """(apparent bytes, resident bytes) of a region, None if it is gone."""
    try:
        st = os.stat(region_path(name))
    except OSError:
        return None
    return st.st_size, st.st_blocks * 512


def create_reserved_region(name: str, size: int, what: str) -> mmap.mmap:
    """Create region `name` (exclusively) with all its pages reserved, and map it.

    Small fixed regions (groups, budget) are written through their mapping by every
    process: a page the full tmpfs cannot give would be a SIGBUS in that writer, so the
    pages are taken now (reserve_fd) and a failure unlinks the half-made region."""
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
    try:
        reserve_fd(shm.fd, size, what, name)
        mm = mmap.mmap(shm.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        shm.close_fd()
        unlink_region(name)
        raise
    shm.close_fd()
    return mm


def reserve_fd(fd: int, size: int, what: str, name: str = "", *, start: int = 0) -> None:
    """Allocate the pages of [start, start + size) of a shared-memory file now.

    A page of a tmpfs file that is first touched through a mapping when the
    tmpfs is full raises SIGBUS in the writer; posix_fallocate turns that
    into ENOSPC here, where it can be reported (tmpfs supports fallocate
    since Linux 3.5). Pages already allocated are left as they are."""
    try:
        os.posix_fallocate(fd, start, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            free = shm_free_bytes()
            raise errors.StorageError(
                f"{what}: cannot reserve {size} bytes of shared memory for region {name or '?'} "
                f"in {SHM_DIR} ({exc.strerror}; {free if free is not None else '?'} bytes free there): "
                f"delete topics, use smaller chunk_bytes/chunk_count, or grow the tmpfs "
                f"(mount -o remount,size=... {SHM_DIR})",
                what=what, code=exc.errno,
            ) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        # a filesystem without fallocate: nothing to reserve with; the
        # supervisor's free-space check is all there is


def shm_space() -> tuple:
    """(size, free bytes) of the tmpfs behind SHM_DIR; (None, None) if unknown."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None, None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def shm_free_bytes() -> Optional[int]:
    return shm_space()[1]


_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14


def _map(fd: int, size: int, prefault: bool) -> mmap.mmap:
    flags = mmap.MAP_SHARED
    if prefault and hasattr(mmap, "MAP_POPULATE"):
        flags |= mmap.MAP_POPULATE
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
