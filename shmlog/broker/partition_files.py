"""The files of one disk partition as storage holds them open: closed
segments, the active segment with its index and time index, and the writes
that append batches to them (roll by size and age, sparse indexes).

Runs in the supervisor only (shmlog.broker.storage). It must never write a
batch twice or out of order."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..core.segments import (
    F_BASE,
    F_MAX_TS,
    FRAME,
    INDEX_SUFFIX,
    TIME_SUFFIX,
    IndexBuilder,
    segment_name,
)
from ..osutil import write_all

log = logging.getLogger("shmlog.storage")

# back-off of a partition whose writes fail (disk full, unwritable), seconds
BACKOFF_MIN = 0.01
BACKOFF_MAX = 1.0


def writev_all(fd: int, pieces: List[Any]) -> None:
    pieces = [memoryview(x) for x in pieces]
    while pieces:
        batch = pieces[:512]
        n = os.writev(fd, batch)
        while n and pieces:
            if n >= len(pieces[0]):
                n -= len(pieces[0])
                pieces.pop(0)
            else:
                pieces[0] = pieces[0][n:]
                n = 0


def write_file(path: Path, data: bytes, *, sync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Segment:
    """A closed segment: it will not grow again."""

    __slots__ = ("base", "size", "max_ts", "end_offset")

    def __init__(self, base: int, size: int, max_ts: Optional[int], end_offset: int):
        self.base = base
        self.size = size
        self.max_ts = max_ts
        self.end_offset = end_offset


class ActiveSegment:
    """The segment being appended to, with its open files."""

    __slots__ = ("base", "path", "fd", "idx_fd", "tidx_fd", "size", "idx_written", "tidx_written",
                 "builder", "end_offset", "first_write")

    def __init__(self, base: int, path: Path, fd: int, idx_fd: int, tidx_fd: int, size: int,
                 builder: IndexBuilder, end_offset: int):
        self.base = base
        self.path = path
        self.fd = fd
        self.idx_fd = idx_fd
        self.tidx_fd = tidx_fd
        self.size = size
        self.builder = builder
        self.idx_written = len(builder.index)
        self.tidx_written = len(builder.timeindex)
        self.end_offset = end_offset
        self.first_write: Optional[float] = time.monotonic() if size else None

    def fds(self) -> List[int]:
        return [self.fd, self.idx_fd, self.tidx_fd]

    def close(self) -> None:
        for fd in self.fds():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fd = self.idx_fd = self.tidx_fd = -1


class PartitionFiles:
    """One disk partition's storage state in the supervisor."""

    def __init__(self, name: str, t: Dict[str, Any], p: int, pdir: Path):
        self.name = name
        self.t = t
        self.tid = t["id"]
        self.p = p
        self.key = (t["id"], p)
        self.what = f"topic {name!r} partition {p}"
        self.dir = pdir
        self.lock = threading.Lock()
        self.segments: List[Segment] = []
        self.active: Optional[ActiveSegment] = None
        self.written = 0  # end offset of what is in segment files
        self.durable = 0  # end offset of what is fsynced
        self.has_segments = False
        self.cursor = None  # spiller cursor, once the region is known
        self.need_seek = True
        self.force_roll = False
        self.unsynced: List[ActiveSegment] = []  # rolled segments awaiting fsync and close
        self.dir_dirty = False
        self.recovery_point = 0
        self.last_fsync = time.monotonic()
        self.error: Optional[str] = None
        self.error_since = 0.0
        self.retry_at = 0.0
        self.backoff = BACKOFF_MIN
        self.deleted = False
        self.spilled_bytes = 0

    def start_offset(self) -> Optional[int]:
        if self.segments:
            return self.segments[0].base
        if self.active is not None:
            return self.active.base
        return None

    def disk_bytes(self) -> int:
        return sum(s.size for s in self.segments) + (self.active.size if self.active else 0)

    def close_files(self) -> None:
        if self.active is not None:
            self.active.close()
        for a in self.unsynced:
            a.close()
        self.unsynced = []


class SegmentWriting:
    """Storage's append path (a mixin of Storage: uses its counters and the
    supervisor's topic config)."""

    def _open_active(self, part: PartitionFiles, base: int) -> ActiveSegment:
        part.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = part.dir / segment_name(base)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            fd = os.open(path, flags | os.O_EXCL, 0o600)
        except FileExistsError:
            if os.path.getsize(path):
                raise OSError(errno.EEXIST, f"segment {path} already exists and is not empty "
                              f"(spiller at offset {base})", str(path)) from None
            fd = os.open(path, flags, 0o600)
        fds = [fd]
        try:
            fds.append(os.open(path.with_suffix(INDEX_SUFFIX), flags | os.O_TRUNC, 0o600))
            fds.append(os.open(path.with_suffix(TIME_SUFFIX), flags | os.O_TRUNC, 0o600))
        except OSError:
            for f in fds:
                os.close(f)
            raise
        part.dir_dirty = True
        part.has_segments = True
        act = ActiveSegment(base, path, fds[0], fds[1], fds[2], 0, IndexBuilder(), base)
        part.active = act
        return act

    def _roll(self, part: PartitionFiles) -> ActiveSegment:
        act = part.active
        b = act.builder
        snap = b.snapshot()
        b.seal()
        try:
            if len(b.timeindex) > act.tidx_written:
                write_all(act.tidx_fd, b.timeindex[act.tidx_written:])
        except OSError:
            b.restore(snap)
            try:
                os.ftruncate(act.tidx_fd, act.tidx_written)
            except OSError:
                pass
            raise
        act.tidx_written = len(b.timeindex)
        part.segments.append(Segment(act.base, act.size, b.max_ts, act.end_offset))
        part.unsynced.append(act)
        part.active = None
        part.force_roll = False
        return self._open_active(part, part.written)

    def _append(self, part: PartitionFiles, bufs: List[bytes], frames: List[tuple]) -> int:
        """Append frames to the segments, rolling as needed (under part.lock).
        A failed write is undone back to the last whole group, and raises."""
        cfg = part.t["config"]
        seg_bytes = cfg["segment_bytes"]
        seg_s = cfg["segment_ms"] / 1000.0
        now = time.monotonic()
        act = part.active
        if act is None:
            act = self._open_active(part, part.written)
        if part.force_roll and act.size:
            act = self._roll(part)
        part.force_roll = False
        unpack = FRAME.unpack_from
        views = [memoryview(b) for b in bufs]
        written = 0
        pieces: List[memoryview] = []
        group = 0  # frames in the pending group
        snap = act.builder.snapshot()
        size = act.size
        floor = part.written
        cur = None  # (buf index, start, stop) of the pending piece
        for bi, off, flen, end in frames:
            if end <= floor:
                continue  # already on disk (a re-attached region): never write twice
            if size and (size + flen > seg_bytes or
                         (act.first_write is not None and now - act.first_write >= seg_s)):
                if group:
                    pieces.append(views[cur[0]][cur[1]:cur[2]])
                    written += self._flush(part, act, pieces, size, floor, snap, group)
                pieces, group, cur = [], 0, None
                act = self._roll(part)
                snap = act.builder.snapshot()
                size = 0
            f = unpack(views[bi], off)
            act.builder.add(size, f[F_BASE], f[F_MAX_TS])
            if cur is not None and cur[0] == bi and cur[2] == off:
                cur = (bi, cur[1], off + flen)
            else:
                if cur is not None:
                    pieces.append(views[cur[0]][cur[1]:cur[2]])
                cur = (bi, off, off + flen)
            size += flen
            floor = end
            group += 1
        if group:
            pieces.append(views[cur[0]][cur[1]:cur[2]])
            written += self._flush(part, act, pieces, size, floor, snap, group)
        return written

    def _flush(self, part: PartitionFiles, act: ActiveSegment, pieces: List[memoryview], size: int,
               end: int, snap: tuple, nframes: int) -> int:
        """Write one group of frames and its index entries to the active segment."""
        b = act.builder
        try:
            writev_all(act.fd, pieces)
            if len(b.index) > act.idx_written:
                write_all(act.idx_fd, b.index[act.idx_written:])
            if len(b.timeindex) > act.tidx_written:
                write_all(act.tidx_fd, b.timeindex[act.tidx_written:])
        except OSError as exc:
            if exc.filename is None:
                exc.filename = str(act.path)
            for fd, n in ((act.fd, act.size), (act.idx_fd, act.idx_written),
                          (act.tidx_fd, act.tidx_written)):
                try:
                    os.ftruncate(fd, n)
                except OSError:
                    pass
            b.restore(snap)
            raise
        nbytes = size - act.size
        act.size = size
        act.idx_written = len(b.index)
        act.tidx_written = len(b.timeindex)
        act.end_offset = end
        if act.first_write is None:
            act.first_write = time.monotonic()
        part.written = end
        part.spilled_bytes += nbytes
        self.spilled_bytes += nbytes
        self.spilled_frames += nframes
        return nframes
