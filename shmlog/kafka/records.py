"""Kafka record batches <-> shmlog frames, one batch per C call.

Produce: each v2 batch is parsed and CRC-checked in C, decompressed with one
library call (gzip: zlib; snappy, zstd: cramjam; lz4: lz4.frame), and its
records are validated and rewritten as a shmlog record section in C (the two
encodings differ only in the record length prefix), then appended as one
frame. Fetch: a read run (the columns shmlog_log_read fills, values left in
place in the region) is encoded as one v2 batch with CRC32C in C, and the
chunk is validated after the copy (a seqlock: a reused chunk means the copy
is thrown away). No per-record Python on either path, except the replay of
segment files, which come back from shmlog's segment reader as lists.
"""

from __future__ import annotations

import errno
import struct
import zlib
from typing import List, Optional, Tuple

import cramjam
import lz4.block
import lz4.frame

from .. import errors
from ..core._core import ffi, lib
from ..core.codec import encode_headers
from . import protocol as P

CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = range(5)
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
_XERIAL = b"\x82SNAPPY\x00"

READ_CAPACITY = 4096  # records per shmlog_log_read into the out arrays


class BatchError(Exception):
    """A batch that gets an error code for its partition (not a closed connection)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Batch:
    __slots__ = ("producer_id", "producer_epoch", "base_sequence", "count", "first_ts", "max_ts",
                 "section", "nbytes")

    def __init__(self, hdr, section: bytes, max_delta: int, nbytes: int):
        self.producer_id = hdr.producer_id
        self.producer_epoch = hdr.producer_epoch
        self.base_sequence = hdr.base_sequence
        self.count = hdr.record_count
        self.first_ts = hdr.first_timestamp
        self.max_ts = hdr.first_timestamp + max_delta
        self.section = section
        self.nbytes = nbytes


def _decompress(codec: int, data: bytes, limit: int) -> bytes:
    """One library call per batch; more than `limit` bytes out is refused
    (a decompression bomb costs the sender its partition, not our memory)."""
    if codec == CODEC_GZIP:
        d = zlib.decompressobj(wbits=47)  # gzip or zlib header, as producers send
        out = d.decompress(data, limit + 1)
    elif codec == CODEC_SNAPPY:
        if data[:8] == _XERIAL:
            # xerial framing (Java and kafka-python): 16-byte header, then
            # (int32 length, raw block) pairs
            parts, pos, total = [], 16, 0
            while pos < len(data):
                if pos + 4 > len(data):
                    raise ValueError("truncated xerial block length")
                n = int.from_bytes(data[pos : pos + 4], "big")
                pos += 4
                block = bytes(cramjam.snappy.decompress_raw(data[pos : pos + n]))
                total += len(block)
                if total > limit:
                    break
                parts.append(block)
                pos += n
            out = b"".join(parts)
            if total > limit:
                out += b"\0"
        else:
            out = bytes(cramjam.snappy.decompress_raw(data))
    elif codec == CODEC_LZ4:
        out = lz4.frame.decompress(data)
    elif codec == CODEC_ZSTD:
        out = bytes(cramjam.zstd.decompress(data))
    else:
        raise BatchError(P.UNSUPPORTED_COMPRESSION_TYPE, f"compression codec {codec} is not known")
    if len(out) > limit:
        raise BatchError(P.MESSAGE_TOO_LARGE, f"batch decompresses to more than {limit} bytes")
    return out


def parse_batches(records, limit: int) -> List[Batch]:
    """The batches of one partition's Produce records, translated; raises
    BatchError (CORRUPT_MESSAGE for a bad CRC or malformed batch)."""
    mv = memoryview(records)
    total = len(mv)
    cbuf = ffi.from_buffer(mv)
    hdr = ffi.new("shmlog_kafka_batch_t *")
    max_delta = ffi.new("int64_t *")
    out: List[Batch] = []
    pos = 0
    while pos < total:
        rc = lib.shmlog_kafka_batch_parse(cbuf + pos, total - pos, hdr)
        if rc == -errno.EILSEQ:
            raise BatchError(P.CORRUPT_MESSAGE, "record batch CRC32C does not match")
        if rc < 0:
            raise BatchError(P.CORRUPT_MESSAGE, "malformed record batch (magic 2 expected)")
        if hdr.attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL):
            raise BatchError(P.INVALID_RECORD, "transactional batches are not supported")
        count = hdr.record_count
        if count <= 0 or hdr.last_offset_delta != count - 1:
            raise BatchError(P.INVALID_RECORD, "record count and last offset delta disagree")
        start = pos + hdr.records_pos
        raw = mv[start : start + hdr.records_len]
        codec = hdr.attributes & 7
        if codec:
            try:
                raw = _decompress(codec, bytes(raw), limit)
            except BatchError:
                raise
            except Exception as exc:  # zlib.error, lz4's RuntimeError, cramjam's DecompressionError
                raise BatchError(P.CORRUPT_MESSAGE, f"batch does not decompress: {exc}") from None
        section = bytearray(len(raw))
        n = lib.shmlog_kafka_records_to_section(ffi.from_buffer(raw), len(raw), count,
                                                ffi.from_buffer(section), len(section), max_delta)
        if n < 0:
            raise BatchError(P.CORRUPT_MESSAGE, "malformed records in batch")
        del section[n:]
        out.append(Batch(hdr, bytes(section), max_delta[0], n))
        pos += rc
    return out


def append_batch(plog, slot: int, b: Batch, timeout_ns: int) -> int:
    """Append one translated batch as one frame; returns its base offset or
    -errno (-EAGAIN: no free chunk before the timeout, -EMSGSIZE)."""
    out = ffi.new("uint64_t *")
    rc = lib.shmlog_log_append_section(
        plog.checked_log(), slot, b.section, b.nbytes, b.count, 0, b.first_ts, b.max_ts,
        b.producer_id if b.producer_id > 0 else 0, b.base_sequence & 0xFFFFFFFF, b.nbytes,
        timeout_ns, out)
    return rc if rc < 0 else out[0]


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_AT = {f: ffi.offsetof("shmlog_frame_hdr_t", f)
       for f in ("frame", "base_offset", "record_count", "producer_id", "producer_seq")}
RECOVER_FRAMES = 1024


def recover_producer(plog, producer_id: int, window: int) -> List[Tuple[int, int, int]]:
    """The last `window` batches (first seq, last seq, base offset) that
    producer_id appended to this partition, read from the frame headers in
    shared memory: an idempotent producer's retry after a listener restart
    is then still recognised. Control thread only (it walks the window)."""
    log = plog.checked_log()
    cur = plog.new_cursor()
    plog.seek(cur, plog.start_offset)
    pos = ffi.new("uint64_t[]", RECOVER_FRAMES)
    nbytes = ffi.new("uint32_t[]", RECOVER_FRAMES)
    ends = ffi.new("uint64_t[]", RECOVER_FRAMES)
    info = ffi.new("shmlog_read_info_t *")
    mm = plog.mapping
    found: List[Tuple[int, int, int]] = []
    while True:
        n = lib.shmlog_log_read_frames(log, cur, pos, nbytes, ends, RECOVER_FRAMES, 1 << 40, info)
        if n <= 0:
            break
        batch = []
        for i in range(n):
            p = pos[i]
            if _U64.unpack_from(mm, p + _AT["frame"])[0] & lib.SHMLOG_FRAME_TYPE_MASK != lib.SHMLOG_FRAME_DATA:
                continue
            if _U64.unpack_from(mm, p + _AT["producer_id"])[0] == producer_id:
                seq = _U32.unpack_from(mm, p + _AT["producer_seq"])[0]
                count = _U32.unpack_from(mm, p + _AT["record_count"])[0]
                base = _U64.unpack_from(mm, p + _AT["base_offset"])[0]
                batch.append((seq, (seq + count - 1) & 0x7FFFFFFF, base))
        if lib.shmlog_log_validate(log, info.first_seq) != 0:
            # the window moved while we looked: what we read is not trusted
            found = []
            plog.seek(cur, plog.start_offset)
            continue
        found = (found + batch)[-window:]
    return found


class PartitionReader:
    """One partition's read position for Fetch, kept between requests of a
    connection so a consumer reading on pays for no seek."""

    def __init__(self, plog):
        self.plog = plog
        self.cursor = plog.new_cursor()
        self.cursor.next_offset = (1 << 64) - 1  # not positioned yet
        self.out = ffi.new("shmlog_records_out_t *")
        self._arrays = [
            ffi.new("uint64_t[]", READ_CAPACITY), ffi.new("int64_t[]", READ_CAPACITY),
            ffi.new("uint64_t[]", READ_CAPACITY), ffi.new("int32_t[]", READ_CAPACITY),
            ffi.new("uint64_t[]", READ_CAPACITY), ffi.new("int32_t[]", READ_CAPACITY),
            ffi.new("uint64_t[]", READ_CAPACITY), ffi.new("uint32_t[]", READ_CAPACITY),
        ]
        o = self.out
        o.capacity = READ_CAPACITY
        (o.offsets, o.timestamps, o.value_pos, o.value_lens, o.key_pos, o.key_lens,
         o.header_pos, o.header_lens) = self._arrays
        self.info = ffi.new("shmlog_read_info_t *")
        self.buf = bytearray(1 << 16)
        self.record_bytes = 0  # encoded bytes per record in the last batch (0: not known yet)

    def _encode(self, base, n: int) -> bytes:
        need = lib.shmlog_kafka_encode_bound(self.out, n)
        if need > len(self.buf):
            self.buf = bytearray(max(need, 2 * len(self.buf)))
        k = lib.shmlog_kafka_encode(base, self.out, n, ffi.from_buffer(self.buf), len(self.buf))
        if k < 0:
            raise errors.CorruptBatch(f"{self.plog.what}: encode failed ({k})", what=self.plog.what)
        return bytes(memoryview(self.buf)[:k])

    def read(self, offset: int, max_bytes: int, min_one: bool = True
             ) -> Tuple[List[bytes], int, Optional[str]]:
        """Batches from offset, max_bytes at most in all (Kafka's rule for a
        partition's share of a Fetch), except that with min_one the first
        record goes out whole even if larger, so a consumer always makes
        progress. Records that do not fit are put back: the cursor resumes
        at the first of them. Returns (batches, next offset, None) or ([],
        offset, 'range') when offset is not in shared memory (below its
        window)."""
        plog = self.plog
        log = plog.checked_log()
        c = self.cursor
        if c.next_offset != offset:
            rc = plog.seek(c, offset)
            if rc == -errno.ERANGE:
                c.next_offset = (1 << 64) - 1
                return [], offset, "range"
            if rc < 0:
                errors.check(rc, plog.what, offset=offset)
        out, info = self.out, self.info
        batches: List[bytes] = []
        size = 0
        while size < max_bytes or (min_one and not batches):
            saved = (c.seq, c.pos, c.next_offset)
            out.capacity = self._capacity(max_bytes - size)
            out.flags = 0
            n = lib.shmlog_log_read(log, c, out, max(max_bytes - size, 1), info)
            if n < 0:
                if n == -errno.ERANGE:
                    c.seq, c.pos, c.next_offset = saved
                    c.next_offset = (1 << 64) - 1
                    if batches:
                        break
                    return [], offset, "range"
                errors.check(n, plog.what, offset=info.bad_offset)
            if n == 0:
                if not info.frame_pos:
                    break
                b = self._compressed(saved, max_bytes - size, min_one and not batches)
                if b is None:
                    break
                batches.append(b)
                size += len(b)
                continue
            k = self._fit(n, max_bytes - size, min_one and not batches)
            b = self._encode(plog.base, k) if k else b""
            if lib.shmlog_log_validate(log, info.first_seq) != 0:
                # the chunk was reused while we copied: nothing copied is trusted
                c.seq, c.pos, c.next_offset = saved
                c.next_offset = (1 << 64) - 1
                if batches:
                    break
                return [], saved[2], "range"
            if k < n:
                # put back what does not fit: from where this read started,
                # the next read skips frame headers up to the first of them
                c.seq, c.pos = saved[0], saved[1]
                c.next_offset = out.offsets[k]
                if k:
                    batches.append(b)
                break
            batches.append(b)
            size += len(b)
            self.record_bytes = len(b) // k
        return batches, c.next_offset, None

    def _capacity(self, room: int) -> int:
        """Records to decode for room bytes: what the last batch's record
        size says fits, and a few more, so that the records put back at a
        limit (decoded for nothing) stay few."""
        if self.record_bytes <= 0 or room <= 0:
            return READ_CAPACITY
        return max(16, min(READ_CAPACITY, room // self.record_bytes + 16))

    def _fit(self, n: int, room: int, min_one: bool) -> int:
        """How many of the n records read fit in room bytes once encoded
        (one C count); 1 if none does and the first must go out whole."""
        k = lib.shmlog_kafka_encode_fit(self.out, n, max(room, 0))
        return 1 if k == 0 and min_one else k

    def _compressed(self, saved, room: int, min_one: bool) -> Optional[bytes]:
        """A frame a shmlog producer wrote with compression='lz4': decompress
        it, decode into the out arrays (positions in the decompressed bytes),
        encode from there, as many records as fit in room."""
        plog, info, c = self.plog, self.info, self.cursor
        start = info.frame_pos + lib.SHMLOG_FRAME_HEADER
        packed = plog.mapping[start : start + info.frame_payload_bytes]
        if lib.shmlog_log_validate(plog.checked_log(), info.first_seq) != 0:
            c.seq, c.pos, c.next_offset = saved
            return None
        raw = lz4.block.decompress(packed, uncompressed_size=info.frame_uncompressed_bytes)
        self.out.capacity = READ_CAPACITY
        n = lib.shmlog_codec_decode(ffi.from_buffer(raw), len(raw), info.frame_record_count,
                                      info.frame_base_offset, info.frame_first_timestamp, 0,
                                      saved[2], self.out, 0)
        if n < 0:
            raise errors.CorruptBatch(f"{plog.what} at offset {saved[2]}: bad compressed frame",
                                      what=plog.what)
        end = info.frame_base_offset + info.frame_record_count
        if n == 0:
            c.next_offset = max(c.next_offset, end)
            return None
        k = self._fit(n, room, min_one)
        if k == 0:
            c.seq, c.pos, c.next_offset = saved
            return None
        last = self.out.offsets[k - 1] + 1
        if last < end:
            # not every record of this frame goes out now: resume inside it
            seq = info.first_seq
            c.seq = seq
            c.pos = (info.frame_pos - lib.SHMLOG_HEADER_BYTES
                     - (seq % plog.chunk_count) * plog.chunk_bytes)
            c.next_offset = last
        elif c.next_offset < end:
            c.next_offset = end
        return self._encode(ffi.from_buffer(raw), k)


def encode_result(res, max_bytes: int = 1 << 62, min_one: bool = True) -> Optional[bytes]:
    """A ReadResult from the segment reader as one batch of the records
    that fit in max_bytes (the first whole with min_one; None if none
    fits). The replay of files only: their reader hands out Python lists,
    so the columns are laid out in Python here (no per-record codec work:
    C encodes)."""
    n = len(res)
    hdrs = [encode_headers(h) if h else None for h in res.headers] if res.headers else [None] * n
    o = ffi.new("shmlog_records_out_t *")
    o.capacity = n
    keep = [ffi.new("uint64_t[]", list(res.offsets)), ffi.new("int64_t[]", list(res.timestamps))]
    cols = []
    parts: List[bytes] = []
    pos = 0
    for column, kind in ((res.keys, "int32_t[]"), (res.values, "int32_t[]"), (hdrs, "uint32_t[]")):
        starts = ffi.new("uint64_t[]", n)
        lens = ffi.new(kind, n)
        for i, item in enumerate(column):
            starts[i] = pos
            if item is None:
                lens[i] = 0 if kind == "uint32_t[]" else -1
            else:
                lens[i] = len(item)
                parts.append(item)
                pos += len(item)
        cols += [starts, lens]
    keep += cols
    o.offsets, o.timestamps = keep[0], keep[1]
    o.key_pos, o.key_lens, o.value_pos, o.value_lens, o.header_pos, o.header_lens = cols
    base = b"".join(parts) or b"\0"
    n = lib.shmlog_kafka_encode_fit(o, n, max(max_bytes, 0)) or (1 if min_one else 0)
    if not n:
        return None
    need = lib.shmlog_kafka_encode_bound(o, n)
    dst = bytearray(need)
    k = lib.shmlog_kafka_encode(ffi.from_buffer(base), o, n, ffi.from_buffer(dst), need)
    return bytes(dst[:k])
