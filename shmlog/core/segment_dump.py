"""Segment files for people and tools: `shmlog dump` and the checks tests
run. Walks a file frame by frame from its first byte, trusting nothing: a
frame that does not parse ends the walk with an entry saying why. Reading
only; the reader consumers use is shmlog.core.segments."""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from ._core import ffi
from .segments import (
    ATTR_LZ4,
    COMPRESSION_MASK,
    F_ATTRS,
    F_BASE,
    F_COUNT,
    F_FIRST_TS,
    F_MAX_TS,
    F_PAYLOAD,
    F_PRODUCER_ID,
    F_PRODUCER_SEQ,
    F_WORD,
    FRAME,
    FRAME_DATA,
    FRAME_HEADER,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    MAX_FRAME_BYTES,
    OK,
    TIME_SUFFIX,
    TOPICS_DIR,
    decode_frame,
    frame_at,
)

_U64 = struct.Struct("<Q")


def not_a_segment(path) -> Optional[str]:
    """Why the file at path cannot be a segment (an index or time index by
    its name, or its first 8 bytes are not a data frame's word), or None. An
    empty .log file is a segment with no batches yet."""
    name = Path(path).name
    with open(path, "rb") as f:
        head = f.read(8)
    if name.endswith(INDEX_SUFFIX) or name.endswith(TIME_SUFFIX):
        what = "an offset index" if name.endswith(INDEX_SUFFIX) else "a time index"
    elif head and (len(head) < 8 or _U64.unpack(head)[0] >> 32 != FRAME_DATA):
        what = "a file that does not start with a shmlog batch"
    else:
        return None
    return (f"{what}, not a segment (segments are the <base offset>{LOG_SUFFIX} files "
            f"under <data dir>/{TOPICS_DIR}/<topic>/<partition>/)")


def dump_segment(path, records: bool = False) -> Iterator[Dict[str, Any]]:
    """One dict per batch of a segment file, for `shmlog dump`: offset,
    last_offset, position, count, first/max timestamp, compression,
    crc_valid, bytes; with records=True also "records", the batch's decoded
    ReadResult. A header that cannot be parsed ends the walk with a dict
    that has crc_valid False and an "error"."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            want = min(FRAME_HEADER, size - pos)
            head = os.pread(fd, want, pos)
            if len(head) < FRAME_HEADER:
                yield {"position": pos, "bytes": len(head), "crc_valid": False,
                       "error": f"truncated: {len(head)} bytes left, a frame header needs 64"}
                return
            f = FRAME.unpack_from(head, 0)
            word = f[F_WORD]
            flen = word & 0xFFFFFFFF
            entry: Dict[str, Any] = {
                "offset": f[F_BASE], "last_offset": f[F_BASE] + f[F_COUNT] - 1, "position": pos,
                "count": f[F_COUNT], "first_timestamp": f[F_FIRST_TS], "max_timestamp": f[F_MAX_TS],
                "compression": "lz4" if f[F_ATTRS] & COMPRESSION_MASK == ATTR_LZ4 else
                ("none" if f[F_ATTRS] & COMPRESSION_MASK == 0 else f"unknown({f[F_ATTRS] & 7})"),
                "bytes": flen, "payload_bytes": f[F_PAYLOAD], "producer_id": f[F_PRODUCER_ID],
                "producer_seq": f[F_PRODUCER_SEQ],
            }
            if word >> 32 != FRAME_DATA or flen < FRAME_HEADER or flen % 64 or flen > MAX_FRAME_BYTES:
                entry.update(crc_valid=False, bytes=size - pos,
                             error=f"not a data frame (frame word {word:#018x}); the rest of the file is unreadable")
                yield entry
                return
            if pos + flen > size:
                entry.update(crc_valid=False, bytes=size - pos,
                             error=f"truncated: frame of {flen} bytes, {size - pos} left in the file")
                yield entry
                return
            frame = os.pread(fd, flen, pos)
            st, _fh, why = frame_at(frame, ffi.from_buffer(frame), 0, len(frame))
            entry["crc_valid"] = st == OK
            if st != OK:
                entry["error"] = why
            elif records:
                try:
                    entry["records"] = decode_frame(frame)
                except ValueError as exc:
                    entry["error"] = str(exc)
            yield entry
            pos += flen
    finally:
        os.close(fd)


def check_segment(path) -> Tuple[int, int]:
    """(batches, bad batches) of a segment file: every CRC and length checked."""
    n = bad = 0
    for e in dump_segment(path):
        n += 1
        if not e["crc_valid"]:
            bad += 1
    return n, bad
