"""Segment files: the on-disk form of a partition, and everything that reads it.

A partition's directory `<data_dir>/topics/<topic>/<partition>/` holds
segments named by their base offset:

    <base:020d>.log        frames copied unchanged from shared memory
    <base:020d>.index      sparse offset -> file position, 16-byte entries
    <base:020d>.timeindex  sparse max-timestamp-so-far -> offset, 16-byte entries

A frame is the 64-byte header of csrc/layout.h (frame word DATA|length, CRC32C
over bytes [12, 64) plus the payload) followed by the record section, padded
to 64 bytes. Segment i holds offsets [base_i, base_{i+1}); aborted holes make
offsets skip inside a segment, never across the order.

This module is pure reading and checking: the segment reader a consumer uses
(SegmentStore, SegmentReader), the frame scanner that recovery and `shmlog
dump` share, and the index builder the spiller and recovery share. It must
never trust a byte it reads: every length, offset and CRC is checked before a
record is handed out, and bad data raises CorruptBatch naming the topic,
partition, offset and file.
"""

from __future__ import annotations

import bisect
import os
import struct
import weakref
from array import array
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import lz4.block

from .. import errors
from ._core import ffi, lib
from .codec import decode_headers
from .records import PICKLE_BELOW, ReadResult, pickled_values

# the frame header of csrc/layout.h, shmlog_frame_hdr_t
FRAME = struct.Struct("<QIIQIHHqqQII")
(F_WORD, F_CRC, F_PAYLOAD, F_BASE, F_COUNT, F_ATTRS, F_VERSION, F_FIRST_TS, F_MAX_TS,
 F_PRODUCER_ID, F_PRODUCER_SEQ, F_UNCOMPRESSED) = range(12)
FRAME_HEADER = lib.SHMLOG_FRAME_HEADER
FRAME_ALIGN = lib.SHMLOG_FRAME_ALIGN  # every frame starts at a multiple of this
FRAME_DATA = lib.SHMLOG_DISK_FRAME_DATA  # a segment file's frame word: (this << 32) | bytes
ATTR_LZ4 = lib.SHMLOG_ATTR_LZ4
COMPRESSION_MASK = lib.SHMLOG_ATTR_COMPRESSION_MASK
MAX_FRAME_BYTES = lib.SHMLOG_MAX_CHUNK_BYTES // 2
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")

INDEX_ENTRY = struct.Struct("<QQ")  # base offset of a frame, its file position
TIME_ENTRY = struct.Struct("<qQ")  # max timestamp up to and including that frame, its base offset
INDEX_INTERVAL = 4096  # bytes of log between index entries (Kafka's index.interval.bytes)

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_SUFFIX = ".timeindex"
TOPICS_DIR = "topics"

OK, INCOMPLETE, BAD = 0, 1, 2
_NOTHING = object()  # a read window held nothing readable yet

READ_WINDOW_MIN = 64 << 10
READ_WINDOW_MAX = 4 << 20


def segment_name(base: int) -> str:
    return f"{base:020d}{LOG_SUFFIX}"


def segment_bases(pdir: Path) -> List[int]:
    """Base offsets of the segments in a partition directory, oldest first."""
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if len(n) == 24 and n.endswith(LOG_SUFFIX) and n[:20].isdigit():
            out.append(int(n[:20]))
    out.sort()
    return out


def stamp_disk_word(buf: bytearray, off: int, flen: int) -> None:
    """In shared memory a frame word carries its chunk's generation
    (csrc/layout.h); a segment file has none, so a frame copied out for one
    gets the canonical word (FRAME_DATA << 32) | frame bytes."""
    _U64.pack_into(buf, off, (FRAME_DATA << 32) | flen)


def frame_at(buf, cbuf, pos: int, end: int) -> Tuple[int, Optional[tuple], str]:
    """Check the frame at buf[pos:]: (OK | INCOMPLETE | BAD, header fields, why).

    INCOMPLETE means the frame runs past `end` (a torn tail, or one being
    written); its header fields are given when the header itself is whole and
    sane, so the caller knows how much more to read."""
    if pos + FRAME_HEADER > end:
        return INCOMPLETE, None, f"{end - pos} bytes left, a frame header needs 64"
    f = FRAME.unpack_from(buf, pos)
    word = f[F_WORD]
    flen = word & 0xFFFFFFFF
    if word >> 32 != FRAME_DATA:
        return BAD, f, f"frame word {word:#018x} is not a data frame"
    if flen < FRAME_HEADER or flen % 64 or flen > MAX_FRAME_BYTES:
        return BAD, f, f"bad frame length {flen}"
    if f[F_PAYLOAD] + FRAME_HEADER > flen:
        return BAD, f, f"payload of {f[F_PAYLOAD]} bytes overruns the {flen}-byte frame"
    if f[F_COUNT] == 0:
        return BAD, f, "frame holds no records"
    comp = f[F_ATTRS] & COMPRESSION_MASK
    if comp not in (0, ATTR_LZ4):
        return BAD, f, f"unknown compression {comp}"
    if comp and f[F_UNCOMPRESSED] > MAX_FRAME_BYTES * 16:
        return BAD, f, f"implausible uncompressed size {f[F_UNCOMPRESSED]}"
    if pos + flen > end:
        return INCOMPLETE, f, f"frame of {flen} bytes cut short after {end - pos}"
    if lib.shmlog_crc32c(0, cbuf + pos + 12, FRAME_HEADER - 12 + f[F_PAYLOAD]) != f[F_CRC]:
        return BAD, f, "CRC32C mismatch"
    return OK, f, ""


class IndexBuilder:
    """The sparse .index and .timeindex entries of one segment, built frame by
    frame the same way by the spiller (as it appends) and by recovery (as it
    scans). A .timeindex entry (T, O) promises: every frame up to and
    including the one at offset O has max timestamp <= T."""

    __slots__ = ("index", "timeindex", "last_idx_pos", "max_ts", "last_t_ts", "last_t_pos",
                 "last_base", "frames")

    def __init__(self) -> None:
        self.index = bytearray()
        self.timeindex = bytearray()
        self.last_idx_pos = -1
        self.max_ts: Optional[int] = None
        self.last_t_ts: Optional[int] = None
        self.last_t_pos = -1
        self.last_base: Optional[int] = None
        self.frames = 0

    def add(self, pos: int, base: int, max_ts: int) -> None:
        if self.last_idx_pos < 0 or pos - self.last_idx_pos >= INDEX_INTERVAL:
            self.index += INDEX_ENTRY.pack(base, pos)
            self.last_idx_pos = pos
        if self.max_ts is None or max_ts > self.max_ts:
            self.max_ts = max_ts
            if self.last_t_pos < 0 or pos - self.last_t_pos >= INDEX_INTERVAL:
                self.timeindex += TIME_ENTRY.pack(max_ts, base)
                self.last_t_ts = max_ts
                self.last_t_pos = pos
        self.last_base = base
        self.frames += 1

    def seal(self) -> None:
        """The final .timeindex entry of a segment that will not grow: its
        last entry then holds the segment's max timestamp."""
        if self.max_ts is not None and (self.last_t_ts is None or self.max_ts > self.last_t_ts):
            self.timeindex += TIME_ENTRY.pack(self.max_ts, self.last_base)
            self.last_t_ts = self.max_ts

    def snapshot(self) -> tuple:
        return (len(self.index), len(self.timeindex), self.last_idx_pos, self.max_ts,
                self.last_t_ts, self.last_t_pos, self.last_base, self.frames)

    def restore(self, snap: tuple) -> None:
        (ni, nt, self.last_idx_pos, self.max_ts, self.last_t_ts, self.last_t_pos,
         self.last_base, self.frames) = snap
        del self.index[ni:]
        del self.timeindex[nt:]


class ScanResult:
    """What a full scan of a segment found."""

    __slots__ = ("size", "valid_end", "end_offset", "builder", "reason", "bad_offset")

    def __init__(self, size: int, base: int):
        self.size = size
        self.valid_end = 0  # file position after the last valid frame
        self.end_offset = base  # offset after the last valid frame
        self.builder = IndexBuilder()
        self.reason: Optional[str] = None  # why the scan stopped before the end
        self.bad_offset = base


def iter_file_frames(fd: int, size: int, start: int = 0, window: int = 1 << 20
                     ) -> Iterator[Tuple[int, int, Optional[tuple], str, Any, Any, int]]:
    """(pos, status, header, why, buf, cbuf, buf_pos) for each frame from
    `start`, reading the file in windows; stops after the first frame that is
    not OK (INCOMPLETE at the end of the file, or BAD)."""
    pos = start
    while pos < size:
        want = min(max(window, FRAME_HEADER), size - pos)
        buf = os.pread(fd, want, pos)
        if not buf:
            return
        cbuf = ffi.from_buffer(buf)
        p = 0
        n = len(buf)
        while p < n:
            st, fh, why = frame_at(buf, cbuf, p, n)
            if st == INCOMPLETE and pos + p + (fh[F_WORD] & 0xFFFFFFFF if fh else FRAME_HEADER) <= size:
                break  # more of it is in the file: read the next window from here
            yield pos + p, st, fh, why, buf, cbuf, p
            if st != OK:
                return
            p += fh[F_WORD] & 0xFFFFFFFF
        if p == 0:
            # one frame larger than the window: read exactly that frame
            flen = FRAME.unpack_from(buf, 0)[F_WORD] & 0xFFFFFFFF if n >= FRAME_HEADER else FRAME_HEADER
            window = max(window, flen)
            continue
        pos += p


def scan_segment(path: Path, base: int, upper: Optional[int] = None) -> ScanResult:
    """Validate every frame of a segment (length, CRC, offsets in order and in
    [base, upper)), building its indexes on the way."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        res = ScanResult(size, base)
        b = res.builder
        prev_end = base
        for pos, st, fh, why, _buf, _cbuf, _p in iter_file_frames(fd, size, 0, 8 << 20):
            if st != OK:
                res.reason = why
                break
            fbase, count = fh[F_BASE], fh[F_COUNT]
            if fbase < prev_end:
                res.reason = f"frame at offset {fbase} goes back before offset {prev_end}"
                break
            if upper is not None and fbase + count > upper:
                res.reason = f"frame ends at offset {fbase + count}, past the next segment's base {upper}"
                break
            b.add(pos, fbase, fh[F_MAX_TS])
            prev_end = fbase + count
            res.valid_end = pos + (fh[F_WORD] & 0xFFFFFFFF)
            res.end_offset = prev_end
        res.bad_offset = prev_end
        if res.reason is None and res.valid_end < size:
            res.reason = "trailing bytes"
        return res
    finally:
        os.close(fd)


def _read_entries(path: Path, entry: struct.Struct) -> Optional[List[Tuple[int, int]]]:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) % entry.size:
        data = data[: len(data) - len(data) % entry.size]
    return list(entry.iter_unpack(data))


def _index_lookup(path: Path, offset: int) -> int:
    """File position of the last indexed frame at or below offset (0 if none)."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    n = len(data) // 16
    if not n:
        return 0
    a = array("Q")
    a.frombytes(data[: n * 16])
    if a.itemsize != 8:
        return 0
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        a.byteswap()
    offsets = a[0::2]
    i = bisect.bisect_right(offsets, offset) - 1
    if i < 0:
        return 0
    pos = a[2 * i + 1]
    return pos if pos % 64 == 0 else 0


# ------------------------------------------------------------------ client side
class _Out:
    """Reusable C arrays a record section decodes into."""

    def __init__(self, capacity: int):
        self.capacity = 0
        self.out = ffi.new("shmlog_records_out_t *")
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        o = self.out
        self._arrays = [
            ffi.new("uint64_t[]", capacity), ffi.new("int64_t[]", capacity),
            ffi.new("uint64_t[]", capacity), ffi.new("int32_t[]", capacity),
            ffi.new("uint64_t[]", capacity), ffi.new("int32_t[]", capacity),
            ffi.new("uint64_t[]", capacity), ffi.new("uint32_t[]", capacity),
        ]
        (o.offsets, o.timestamps, o.value_pos, o.value_lens, o.key_pos, o.key_lens,
         o.header_pos, o.header_lens) = self._arrays
        o.capacity = capacity
        self.capacity = capacity

    def result(self, buf, n: int, keep: int, nbytes: int) -> ReadResult:
        """Columns of the first `keep` of n decoded records, sliced out of buf."""
        o = self.out
        k = min(n, keep)
        # small values: the C-written pickle stream, as for shared-memory reads
        values = pickled_values(ffi.from_buffer(buf), o.value_pos, o.value_lens, k) \
            if k and nbytes < k * PICKLE_BELOW else None
        if values is None:
            vpos = ffi.unpack(o.value_pos, k)
            vlen = ffi.unpack(o.value_lens, k)
            if k and min(vlen) < 0:
                values = [None if ln < 0 else buf[p : p + ln] for p, ln in zip(vpos, vlen)]
            else:
                values = [buf[p : p + ln] for p, ln in zip(vpos, vlen)]
        # all-null keys and no headers are the common case: one memcmp each
        if ffi.buffer(o.key_lens, 4 * k)[:] == _NULL_LENS[: 4 * k] if k <= _FAST_K else \
                max(ffi.unpack(o.key_lens, k)) < 0:
            keys = [None] * k
        else:
            kpos = ffi.unpack(o.key_pos, k)
            klen = ffi.unpack(o.key_lens, k)
            keys = [None if ln < 0 else buf[p : p + ln] for p, ln in zip(kpos, klen)]
        headers = None
        if k and not (ffi.buffer(o.header_lens, 4 * k)[:] == _ZERO_LENS[: 4 * k] if k <= _FAST_K
                      else max(ffi.unpack(o.header_lens, k)) == 0):
            hpos = ffi.unpack(o.header_pos, k)
            hlen = ffi.unpack(o.header_lens, k)
            headers = [decode_headers(buf[p : p + ln]) if ln else [] for p, ln in zip(hpos, hlen)]
        return ReadResult(ffi.unpack(o.offsets, k), ffi.unpack(o.timestamps, k), values, keys,
                          headers, 0, nbytes)


_FAST_K = 1 << 16
_NULL_LENS = b"\xff\xff\xff\xff" * _FAST_K
_ZERO_LENS = bytes(4 * _FAST_K)


def decode_frame(frame) -> ReadResult:
    """The records of one whole frame whose CRC checked (as `frame_at` says
    OK), decoded; ValueError if its record section does not decode."""
    fh = FRAME.unpack_from(frame, 0)
    count = fh[F_COUNT]
    out = _Out(count)
    if fh[F_ATTRS] & COMPRESSION_MASK:
        try:
            buf = lz4.block.decompress(bytes(frame[FRAME_HEADER:FRAME_HEADER + fh[F_PAYLOAD]]),
                                       uncompressed_size=fh[F_UNCOMPRESSED])
        except Exception as exc:  # lz4 raises LZ4BlockError
            raise ValueError(f"lz4 payload does not decompress ({exc})") from None
        start, size = 0, len(buf)
    else:
        buf, start, size = frame, FRAME_HEADER, fh[F_PAYLOAD]
    got = lib.shmlog_codec_decode(ffi.from_buffer(buf) + start, size, count, fh[F_BASE], fh[F_FIRST_TS],
                                    start, 0, out.out, 0)
    if got < 0:
        raise ValueError("record section does not decode")
    return out.result(buf, got, got, len(frame))


class SegmentReader:
    """Reads one partition's segments from an offset on, in this process.

    read() hands out records only below the partition's spilled offset (read
    from the region header when the region is mapped): anything above may be
    half-written, and is in shared memory anyway. It returns None at the end
    of what the segments hold, and the consumer continues in shared memory at
    next_offset."""

    def __init__(self, store: SegmentStore, topic: str, partition: int, offset: int,
                 limit: Optional[Callable[[], Optional[int]]]):
        self.store = store
        self.topic = topic
        self.partition = partition
        self.what = f"topic {topic!r} partition {partition}"
        self.pdir = store.partition_dir(topic, partition)
        self.next_offset = offset
        self._limit = limit
        self._fd: Optional[int] = None
        self._base = -1
        self._pos = 0
        self._size = 0
        self._est = 128.0  # bytes of log per record, to size the read window
        self._out = _Out(4096)
        self._closed = False
        self._open_for(offset)

    # -- positioning ------------------------------------------------------
    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open_segment(self, base: int, offset: int) -> bool:
        path = self.pdir / segment_name(base)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        self._close_fd()
        self._fd = fd
        self._base = base
        self._size = os.fstat(fd).st_size
        pos = _index_lookup(path.with_suffix(INDEX_SUFFIX), offset) if offset > base else 0
        if pos >= self._size:
            pos = 0
        if pos:
            head = os.pread(fd, FRAME_HEADER, pos)
            st, fh, _ = frame_at(head, ffi.from_buffer(head), 0, len(head))
            if fh is None or fh[F_WORD] >> 32 != FRAME_DATA or fh[F_BASE] > offset:
                pos = 0  # a stale index: scan from the start
        self._pos = pos
        return True

    def _open_for(self, offset: int) -> None:
        for _attempt in range(5):
            bases = segment_bases(self.pdir)
            if not bases:
                self._close_fd()
                return
            i = max(bisect.bisect_right(bases, offset) - 1, 0)
            if self._open_segment(bases[i], offset):
                return
        self._close_fd()

    def _next_segment(self) -> bool:
        """Move to the segment after the current one, if there is one."""
        bases = segment_bases(self.pdir)
        i = bisect.bisect_right(bases, self._base)
        while i < len(bases):
            if self._open_segment(bases[i], self.next_offset):
                return True
            bases = segment_bases(self.pdir)  # deleted under us (retention): look again
            i = bisect.bisect_right(bases, self._base)
        return False

    def seek(self, offset: int) -> None:
        self.next_offset = offset
        self._open_for(offset)

    def close(self) -> None:
        self._closed = True
        self._close_fd()

    # -- reading ----------------------------------------------------------
    def _corrupt(self, why: str, pos: int) -> errors.CorruptBatch:
        path = self.pdir / segment_name(self._base)
        return errors.CorruptBatch(
            f"corrupt batch in {self.what} at offset {self.next_offset}: {why} "
            f"(segment {path}, byte {pos}); run `shmlog dump {path}`", what=self.what)

    def read(self, max_records: int) -> Optional[ReadResult]:
        if self._closed:
            raise errors.Closed(f"segment reader of {self.what} is closed")
        max_records = max(int(max_records), 1)
        limit = self._limit() if self._limit is not None else None
        if self._fd is not None:
            self._size = os.fstat(self._fd).st_size  # the active segment grows
        while self._fd is not None:
            if limit is not None and self.next_offset >= limit:
                return None
            if self._pos >= self._size:
                self._size = os.fstat(self._fd).st_size
                if self._pos >= self._size:
                    # the segment is complete once a newer one exists (the
                    # spiller finishes a segment before it creates the next)
                    if not segment_bases_after(self.pdir, self._base):
                        return None
                    self._size = os.fstat(self._fd).st_size
                    if self._pos < self._size:
                        continue
                    if not self._next_segment():
                        return None
                    continue
            res = self._read_window(max_records, limit)
            if res is _NOTHING:
                return None  # a tail being written, or the spilled limit
            if res is not None:
                return res
        return None

    def _read_window(self, max_records: int, limit: Optional[int]) -> Optional[ReadResult]:
        """Decode frames from one pread window; None if it only held frames
        before next_offset (the caller reads on) or nothing readable."""
        window = int(self._est * max_records) + FRAME_HEADER
        window = min(max(window, READ_WINDOW_MIN), READ_WINDOW_MAX, self._size - self._pos)
        fd = self._fd
        start = self._pos
        buf = os.pread(fd, window, start)
        cbuf = ffi.from_buffer(buf)
        end = len(buf)
        out = self._out
        o = out.out
        n = 0
        p = 0
        consumed = 0
        while p < end:
            if limit is not None and self.next_offset >= limit:
                break
            st, fh, why = frame_at(buf, cbuf, p, end)
            if st == INCOMPLETE:
                need = (fh[F_WORD] & 0xFFFFFFFF) if fh is not None else FRAME_HEADER
                if start + p + need <= self._size:
                    if p == 0 and end < need:
                        # a frame larger than the window: read exactly it
                        buf = os.pread(fd, need, start)
                        cbuf = ffi.from_buffer(buf)
                        end = len(buf)
                        if end == need:
                            continue
                        self._size = os.fstat(fd).st_size  # shrank under us
                    if p:
                        break  # the next window starts with it
                # the file ends inside this frame
                if n or self._tail_in_progress(limit):
                    break  # hand back what we have; the next read raises
                raise self._corrupt(f"segment ends inside a frame ({why})", start + p)
            if st == BAD:
                if n or self._tail_in_progress(limit):
                    break
                raise self._corrupt(why, start + p)
            flen = fh[F_WORD] & 0xFFFFFFFF
            fbase, count = fh[F_BASE], fh[F_COUNT]
            fend = fbase + count
            if limit is not None and fend > limit:
                break  # written but not yet published: it may be half-written
            if fend <= self.next_offset:
                p += flen  # wholly before the position (after a seek)
                consumed = p
                continue
            if fh[F_ATTRS] & COMPRESSION_MASK:
                if n:
                    break  # hand back what we have; the compressed frame comes next
                return self._read_compressed(buf, p, fh, max_records, start)
            if count > out.capacity - n:
                if n:
                    break
                out.grow(count + max_records)
                o = out.out
            got = lib.shmlog_codec_decode(cbuf + p + FRAME_HEADER, fh[F_PAYLOAD], count, fbase,
                                          fh[F_FIRST_TS], p + FRAME_HEADER, self.next_offset, o, n)
            if got < 0:
                raise self._corrupt("record section does not decode", start + p)
            n += got
            if n >= max_records:
                if n > max_records:
                    # a frame only partly handed out: stay on it, skip what we gave
                    self.next_offset = o.offsets[max_records - 1] + 1
                    self._pos = start + p
                else:
                    self.next_offset = fend
                    self._pos = start + p + flen
                res = out.result(buf, n, max_records, p + flen - consumed)
                self._learn(p + flen, max_records)
                return res
            self.next_offset = fend
            p += flen
        self._pos = start + p
        if n == 0:
            return None if p else _NOTHING
        self._learn(p, n)
        return out.result(buf, n, n, p - consumed)

    def _learn(self, nbytes: int, records: int) -> None:
        if records:
            self._est = max(16.0, min(nbytes / records, float(READ_WINDOW_MAX)))

    def _tail_in_progress(self, limit: Optional[int]) -> bool:
        """A frame that does not check out is only "being written" when it
        lies past what the spiller has published, at the end of the newest
        segment; anywhere else it is corruption."""
        if limit is not None and self.next_offset < limit:
            return False
        return not segment_bases_after(self.pdir, self._base)

    def _read_compressed(self, buf, p: int, fh: tuple, max_records: int, start: int) -> ReadResult:
        flen = fh[F_WORD] & 0xFFFFFFFF
        packed = buf[p + FRAME_HEADER : p + FRAME_HEADER + fh[F_PAYLOAD]]
        try:
            raw = lz4.block.decompress(packed, uncompressed_size=fh[F_UNCOMPRESSED])
        except Exception as exc:  # lz4 raises LZ4BlockError
            raise self._corrupt(f"lz4 payload does not decompress ({exc})", start + p) from None
        count = fh[F_COUNT]
        out = self._out
        out.grow(count)
        got = lib.shmlog_codec_decode(ffi.from_buffer(raw), len(raw), count, fh[F_BASE],
                                      fh[F_FIRST_TS], 0, self.next_offset, out.out, 0)
        if got < 0:
            raise self._corrupt("record section does not decode", start + p)
        fend = fh[F_BASE] + count
        if got > max_records:
            self.next_offset = out.out.offsets[max_records - 1] + 1
            self._pos = start + p
        else:
            self.next_offset = fend
            self._pos = start + p + flen
        return out.result(raw, got, max_records, flen)


def segment_bases_after(pdir: Path, base: int) -> bool:
    """Is there a segment newer than `base`?"""
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return False
    for n in names:
        if len(n) == 24 and n.endswith(LOG_SUFFIX) and n[:20].isdigit() and int(n[:20]) > base:
            return True
    return False


class SegmentStore:
    """Client-side access to the segment files of a data dir (what
    Cluster.segments returns): start offsets, readers, time lookups. Reads
    happen in the calling process, never through the supervisor."""

    def __init__(self, data_dir, cluster=None):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / TOPICS_DIR
        self.cluster = cluster
        self._readers: weakref.WeakSet[SegmentReader] = weakref.WeakSet()

    def partition_dir(self, topic: str, partition: int) -> Path:
        return self.root / topic / str(partition)

    def segments(self, topic: str, partition: int) -> List[int]:
        return segment_bases(self.partition_dir(topic, partition))

    def start_offset(self, topic: str, partition: int) -> Optional[int]:
        """The oldest offset on disk (retention moves it), or None."""
        bases = self.segments(topic, partition)
        return bases[0] if bases else None

    def _limit_fn(self, topic: str, partition: int) -> Optional[Callable[[], Optional[int]]]:
        """The region's spilled offset, read live, when this process maps it."""
        if self.cluster is None:
            return None
        try:
            plog = self.cluster.topic(topic).regions[partition]
        except Exception:
            return None

        def limit() -> Optional[int]:
            h = plog.hdr
            if h is None:
                return None
            return h.spilled_offset

        return limit

    def reader(self, topic: str, partition: int, offset: int) -> Optional[SegmentReader]:
        """A reader from offset, or None when the segments do not hold it
        (below the start offset: retention removed it; or not spilled yet)."""
        bases = self.segments(topic, partition)
        if not bases or offset < bases[0]:
            return None
        limit = self._limit_fn(topic, partition)
        if limit is not None:
            lim = limit()
            if lim is not None and offset >= lim:
                return None
        r = SegmentReader(self, topic, partition, offset, limit)
        if r._fd is None:
            return None
        self._readers.add(r)
        return r

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> Optional[int]:
        """The first offset on disk whose timestamp is >= timestamp_ms, or None."""
        pdir = self.partition_dir(topic, partition)
        bases = segment_bases(pdir)
        limit_fn = self._limit_fn(topic, partition)
        limit = limit_fn() if limit_fn is not None else None
        what = f"topic {topic!r} partition {partition}"
        for i, base in enumerate(bases):
            if limit is not None and base >= limit:
                return None
            tentries = _read_entries(pdir / (segment_name(base)[:-4] + TIME_SUFFIX), TIME_ENTRY) or []
            last = i == len(bases) - 1
            if not last and tentries and tentries[-1][0] < timestamp_ms:
                continue  # sealed segment: its last entry is its max timestamp
            from_offset = base
            for ts, off in tentries:
                if ts < timestamp_ms:
                    from_offset = off
                else:
                    break
            found = _find_time(pdir / segment_name(base), from_offset, timestamp_ms, limit, what)
            if found is not None:
                return found
        return None

    def close(self) -> None:
        """Close every reader this store handed out (Cluster.close calls it)."""
        for r in list(self._readers):
            r.close()
        self._readers.clear()


def _find_time(path: Path, from_offset: int, ts: int, limit: Optional[int], what: str,
               use_index: bool = True) -> Optional[int]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        start = _index_lookup(path.with_suffix(INDEX_SUFFIX), from_offset) if use_index else 0
        if start >= size:
            start = 0
        out = None
        for pos, st, fh, _why, buf, cbuf, p in iter_file_frames(fd, size, start):
            if st != OK:
                if start and pos == start:
                    break  # the index pointed at garbage: scan from the start
                return None  # a tail being written, or damage recovery will handle
            fend = fh[F_BASE] + fh[F_COUNT]
            if limit is not None and fend > limit:
                return None
            if fh[F_MAX_TS] < ts:
                continue
            if out is None:
                out = _Out(max(fh[F_COUNT], 1024))
            out.grow(fh[F_COUNT])
            if fh[F_ATTRS] & COMPRESSION_MASK:
                try:
                    raw = lz4.block.decompress(buf[p + 64 : p + 64 + fh[F_PAYLOAD]],
                                               uncompressed_size=fh[F_UNCOMPRESSED])
                except Exception:
                    raise errors.CorruptBatch(f"corrupt batch in {what} at offset {fh[F_BASE]}: lz4 "
                                              f"payload does not decompress ({path})", what=what) from None
                got = lib.shmlog_codec_decode(ffi.from_buffer(raw), len(raw), fh[F_COUNT], fh[F_BASE],
                                              fh[F_FIRST_TS], 0, 0, out.out, 0)
            else:
                got = lib.shmlog_codec_decode(cbuf + p + 64, fh[F_PAYLOAD], fh[F_COUNT], fh[F_BASE],
                                              fh[F_FIRST_TS], 0, 0, out.out, 0)
            if got < 0:
                raise errors.CorruptBatch(f"corrupt batch in {what} at offset {fh[F_BASE]}: record "
                                          f"section does not decode ({path})", what=what)
            for k in range(got):
                if out.out.timestamps[k] >= ts:
                    return out.out.offsets[k]
        else:
            return None
    finally:
        os.close(fd)
    return _find_time(path, 0, ts, limit, what, use_index=False)
