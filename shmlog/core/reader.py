"""Reading records from a partition log: RecordReader (reusable C arrays
for decoded reads, copy-out then validate: a value handed out never changes)
and the scan for a timestamp in shared memory."""

from __future__ import annotations

import errno
import pickle
from typing import Optional

import lz4.block

from .. import errors
from . import records
from ._core import ffi, lib
from ._messages import headers as header_lists
from .heap import keep_freed_heap
from .records import (
    PICKLE_BELOW,
    REC_HEADERS,
    REC_KEYS,
    REC_NULLS,
    ReadResult,
    c_array,
    decode_section,
    grow_tls,
    pickled_values,
)

_READ_NONE = lib.SHMLOG_READ_NONE
_READ_PICKLE = lib.SHMLOG_READ_PICKLE
_READ_FRAME = lib.SHMLOG_READ_FRAME
_READ_ONE = lib.SHMLOG_READ_ONE
_READ_ONE_OK = lib.SHMLOG_READ_ONE_OK


class RecordReader:
    """Decoded-record reads from a cursor into reusable C arrays.

    Values are copied out of shared memory (mmap slicing makes bytes), and the
    chunk is validated afterwards, so a value handed out never changes even if
    the chunk is reused the next instant (a seqlock, not a lock).
    """

    def __init__(self, plog, capacity: int):  # plog: a PartitionLog
        self.plog = plog
        self.capacity = capacity
        self.out = ffi.new("shmlog_records_out_t *")
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
        o = self.out
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
        buf = records.thread_local.__dict__.get("buf") or grow_tls(0)
        # wait_ns: wait for data first when nothing is committed; slot: a
        # reader slot whose position C publishes after a pickled read
        k = lib.shmlog_log_poll_pickled(plog.checked_log(), cursor, self.out,
                                        max_records if max_records < self.capacity else self.capacity,
                                        max_bytes, PICKLE_BELOW, info, records.thread_local.cbuf, len(buf),
                                        slot, spin_ns, wait_ns, _READ_ONE_OK if one else 0)
        if k == _READ_ONE:
            return info.one_offset, info.one_timestamp, records.thread_local.view[: info.one_len].tobytes()
        if k == _READ_PICKLE:
            # one crossing, one loads: the stream was validated in C
            values, keys, offsets, base, timestamps, ts, first_seq, nbytes = pickle.loads(
                records.thread_local.view[: info.pickle_bytes])
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
            return self._read_compressed(cursor, (s.seq, s.pos, s.next_offset), self.out.capacity)
        if k < 0:
            errors.check(k, plog.what, offset=info.bad_offset)
        if not self.out.flags & REC_HEADERS and info.bytes < info.records * PICKLE_BELOW:
            grow_tls(len(buf) + 1)  # small records that did not fit: a roomier stream next time
        return self._columns(cursor, info.records)

    def _columns(self, cursor, n: int) -> ReadResult:
        """The general copy-out (headers, large values): the records are in
        the out arrays; validate after copying."""
        plog = self.plog
        o = self.out
        info = self._info
        mm = plog.mapping
        flags = o.flags
        # columns that are all empty (no keys, no headers) are never unpacked
        small = info.bytes < n * PICKLE_BELOW
        values = pickled_values(plog.base, o.value_pos, o.value_lens, n) if small else None
        if values is None:
            if info.bytes >= 1 << 17:  # keep_freed_heap acts once per process
                keep_freed_heap()
            vpos = ffi.unpack(o.value_pos, n)
            vlen = ffi.unpack(o.value_lens, n)
            if flags & REC_NULLS:
                values = [None if ln < 0 else mm[p : p + ln] for p, ln in zip(vpos, vlen)]
            else:
                values = [mm[p : p + ln] for p, ln in zip(vpos, vlen)]
        if flags & REC_KEYS:
            keys = pickled_values(plog.base, o.key_pos, o.key_lens, n) if small else None
            if keys is None:
                kpos = ffi.unpack(o.key_pos, n)
                klen = ffi.unpack(o.key_lens, n)
                keys = [None if ln < 0 else mm[p : p + ln] for p, ln in zip(kpos, klen)]
        else:
            keys = [None] * n
        headers = None
        if flags & REC_HEADERS:
            hpos = ffi.unpack(o.header_pos, n)
            hlen = ffi.unpack(o.header_lens, n)
            # parsed in C per batch, from the mapping; torn bytes parse as
            # None and the validation below rejects the whole read
            headers = header_lists(mm, hpos, hlen)
        offsets = ffi.unpack(o.offsets, n)
        timestamps = ffi.unpack(o.timestamps, n)
        if lib.shmlog_log_validate_read(plog.checked_log(), cursor, info) != 0:
            # the chunk was reused while we copied: nothing we copied is trusted
            errors.check(-errno.ERANGE, plog.what, offset=info.start.next_offset)
        if headers is not None and None in headers:  # validated in C while stable: not expected
            raise errors.CorruptBatch(f"{plog.what} at offset {offsets[headers.index(None)]}: "
                                      "header section does not parse", what=plog.what, code=errno.EBADMSG)
        return ReadResult(offsets, timestamps, values, keys, headers, info.first_seq, info.bytes)

    def read_view(self, cursor, max_records: int):
        """Zero-copy read: positions of the values in the mapping instead of
        bytes. Returns (offsets, timestamps, value_pos, value_lens, key_pos,
        key_lens) as arrays plus the header lists (None when no record has
        headers), or None. The caller must pin the cursor's offset
        (reader slot pin) before calling and keep it until done with them.
        Compressed frames are not viewable: those come back as a ReadResult."""
        plog = self.plog
        log = plog.checked_log()
        o = self.out
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
            c_array("Q", o.offsets, 8 * n),
            c_array("q", o.timestamps, 8 * n),
            c_array("Q", o.value_pos, 8 * n),
            c_array("i", o.value_lens, 4 * n),
            c_array("Q", o.key_pos, 8 * n),
            c_array("i", o.key_lens, 4 * n),
        )
        headers = None
        if o.flags & REC_HEADERS:
            # parsed in C per batch; torn bytes parse as None and the
            # validation below rejects the whole read
            headers = header_lists(plog.mapping, ffi.unpack(o.header_pos, n), ffi.unpack(o.header_lens, n))
        if lib.shmlog_log_validate(log, info.first_seq) != 0:
            cursor.seq, cursor.pos, cursor.next_offset = saved
            errors.check(-errno.ERANGE, plog.what, offset=saved[2])
        if headers is not None and None in headers:  # validated in C while stable: not expected
            raise errors.CorruptBatch(f"{plog.what} at offset {cols[0][headers.index(None)]}: "
                                      "header section does not parse", what=plog.what, code=errno.EBADMSG)
        return cols + (headers,)

    def _read_compressed(self, cursor, saved, max_records: int) -> ReadResult:
        plog = self.plog
        info = self._info
        mm = plog.mapping
        start = info.frame_pos + lib.SHMLOG_FRAME_HEADER
        packed = mm[start : start + info.frame_payload_bytes]
        if lib.shmlog_log_validate(plog.checked_log(), info.first_seq) != 0:
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
