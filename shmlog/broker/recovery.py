"""Recovery of a disk partition when the supervisor starts or a topic is
created: check the segments not known durable batch by batch, truncate a torn
tail, rebuild missing or stale indexes, and say where the partition's offsets
resume (Storage.initial_offset): at the end of the segments, or above every
offset a consumer group committed there if a torn tail lost more than that,
so an offset a group has consumed is never handed out again for other data.
Runs in the supervisor only."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..core.segments import (
    F_BASE,
    F_COUNT,
    F_WORD,
    FRAME,
    FRAME_ALIGN,
    FRAME_DATA,
    FRAME_HEADER,
    INDEX_ENTRY,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    TIME_ENTRY,
    TIME_SUFFIX,
    IndexBuilder,
    scan_segment,
    segment_bases,
    segment_name,
)
from ..osutil import fsync_dir
from .offsets import highest_committed
from .partition_files import ActiveSegment, PartitionFiles, Segment, write_file

log = logging.getLogger("shmlog.storage")

RECOVERY_POINT = "recovery-point"


class Recovery:
    """Storage's recovery steps (a mixin of Storage)."""

    # (topic id, partition) -> highest offset committed in the group files at start
    _committed_at_start: Optional[Dict[Tuple[int, int], int]] = None

    def _partition(self, name: str, t: Dict[str, Any], p: int) -> PartitionFiles:
        """The storage state of a disk partition, recovered on first use."""
        key = (t["id"], p)
        with self._mu:
            part = self._parts.get(key)
            if part is not None:
                return part
            pdir = self._topic_dir(name, t) / str(p)
            part = PartitionFiles(name, t, p, pdir)
            self._recover(part)
            self._parts[key] = part
            return part

    def _recover(self, part: PartitionFiles) -> None:
        """Check the segments, truncate a torn tail, rebuild indexes, and open
        the last segment for appending (DESIGN.md, "On disk")."""
        d = part.dir
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        names = os.listdir(d)
        bases = segment_bases(d)
        have = {segment_name(b)[:-len(LOG_SUFFIX)] for b in bases}
        for n in names:
            stem, _, suffix = n.partition(".")
            if n.endswith(".tmp") or (("." + suffix) in (INDEX_SUFFIX, TIME_SUFFIX) and stem not in have):
                try:
                    os.unlink(d / n)
                except OSError:
                    pass
        try:
            rp = int((d / RECOVERY_POINT).read_text().strip())
        except (OSError, ValueError):
            rp = 0
        part.recovery_point = rp
        segs: List[Segment] = []
        tail: Optional[Tuple[int, Any]] = None
        i = 0
        while i < len(bases):
            base = bases[i]
            nxt = bases[i + 1] if i + 1 < len(bases) else None
            path = d / segment_name(base)
            size = path.stat().st_size
            if nxt is not None and nxt <= rp:
                max_ts = self._quick_check(path, base, size, nxt)
                if max_ts is not None:
                    segs.append(Segment(base, size, max_ts, nxt))
                    i += 1
                    continue
                log.warning("%s: indexes of %s are missing or stale: rebuilding them", part.what, path)
            res = scan_segment(path, base, nxt)
            if res.valid_end < size:
                cut = size - res.valid_end
                log.warning("%s: truncating %s to its last valid batch: %d bytes removed after "
                            "offset %d (%s)", part.what, path, cut, res.end_offset, res.reason)
                self.truncated_bytes += cut
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, res.valid_end)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                size = res.valid_end
                if nxt is not None:
                    # what follows a torn segment was never durable (it was
                    # written after this one's unfinished fsync): Kafka's rule
                    later = bases[i + 1 :]
                    log.warning("%s: deleting %d segment(s) after the torn one, from offset %d",
                                part.what, len(later), later[0])
                    for b in later:
                        self._unlink_segment(d, b)
                    bases = bases[: i + 1]
                    nxt = None
            if nxt is not None:
                if res.builder.frames == 0:
                    self._unlink_segment(d, base)  # an empty closed segment helps nobody
                    i += 1
                    continue
                res.builder.seal()
                self._write_indexes(path, res.builder, sync=True)
                # a dead supervisor may have left it in the page cache only;
                # the recovery point written below vouches for it
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                segs.append(Segment(base, size, res.builder.max_ts, nxt))
            else:
                tail = (base, res)
            i += 1
        part.segments = segs
        part.has_segments = bool(bases)
        if tail is not None:
            base, res = tail
            path = d / segment_name(base)
            self._write_indexes(path, res.builder, sync=False)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.fsync(fd)  # what a dead supervisor left in the page cache is durable from here
            idx_fd = os.open(path.with_suffix(INDEX_SUFFIX), os.O_WRONLY | os.O_APPEND)
            tidx_fd = os.open(path.with_suffix(TIME_SUFFIX), os.O_WRONLY | os.O_APPEND)
            part.active = ActiveSegment(base, path, fd, idx_fd, tidx_fd, res.valid_end, res.builder,
                                  res.end_offset)
            part.written = part.durable = res.end_offset
            fsync_dir(d)
            self._write_recovery_point(part, base)
        elif segs:
            part.written = part.durable = segs[-1].end_offset

    def _resume_offset(self, part: PartitionFiles, start: int) -> int:
        """Where a re-created region of the partition starts: `start` (the
        end of the segments), unless a consumer group committed beyond it.
        Then a torn tail (or writes a crash lost before their fsync) took
        offsets that group has already consumed; handing them out again
        would give it different data under offsets it believes it has seen,
        and it would skip the new records below its committed offset. Those
        offsets become a hole instead: the next segment starts at the
        committed offset (Kafka never reuses an offset either)."""
        floor = self._committed_floor(part)
        if floor <= start:
            return start
        log.warning("%s: the segments end at offset %d but a consumer group committed offset %d; "
                    "offsets %d..%d were lost (torn tail) and are never reused: the partition "
                    "resumes at %d", part.what, start, floor, start, floor - 1, floor)
        with part.lock:
            part.written = part.durable = floor
            part.force_roll = True  # the next frame opens a segment based at `floor`
        return floor

    def _committed_floor(self, part: PartitionFiles) -> int:
        """The highest offset any group committed on the partition: the group
        files as they were at start (read once) and what live groups have
        committed since (a region found unusable is re-created mid-life)."""
        if self._committed_at_start is None:
            self._committed_at_start = highest_committed(Path(self.sup.data_dir) / "groups")
        floor = self._committed_at_start.get(part.key, 0)
        coordinator = getattr(self.sup, "coordinator", None)
        for g in (coordinator.groups.values() if coordinator is not None else ()):
            tid, off = g.store.offsets.get((part.name, part.p), (None, 0))
            if tid == part.tid:
                floor = max(floor, off)
        return floor

    def _quick_check(self, path: Path, base: int, size: int, nxt: int) -> Optional[int]:
        """The max timestamp of a closed segment whose indexes look sound
        (sizes, first and last entries, the frame the last entry points at),
        or None if they must be rebuilt."""
        try:
            isz = os.path.getsize(path.with_suffix(INDEX_SUFFIX))
            tsz = os.path.getsize(path.with_suffix(TIME_SUFFIX))
        except OSError:
            return None
        ie, te = INDEX_ENTRY.size, TIME_ENTRY.size
        if size == 0 or isz == 0 or tsz == 0 or isz % ie or tsz % te:
            return None
        with open(path.with_suffix(INDEX_SUFFIX), "rb") as f:
            first = INDEX_ENTRY.unpack(f.read(ie))
            f.seek(isz - ie)
            last = INDEX_ENTRY.unpack(f.read(ie))
        with open(path.with_suffix(TIME_SUFFIX), "rb") as f:
            f.seek(tsz - te)
            max_ts, t_off = TIME_ENTRY.unpack(f.read(te))
        if first[1] != 0 or first[0] < base or last[1] >= size or last[1] % FRAME_ALIGN or last[0] >= nxt:
            return None
        if t_off < base or t_off >= nxt:
            return None
        with open(path, "rb") as f:
            f.seek(last[1])
            head = f.read(FRAME_HEADER)
        if len(head) < FRAME_HEADER:
            return None
        fh = FRAME.unpack(head)
        if fh[F_WORD] >> 32 != FRAME_DATA or fh[F_BASE] != last[0] or fh[F_BASE] + fh[F_COUNT] > nxt:
            return None
        return max_ts

    def _write_indexes(self, path: Path, b: IndexBuilder, *, sync: bool) -> None:
        write_file(path.with_suffix(INDEX_SUFFIX), bytes(b.index), sync=sync)
        write_file(path.with_suffix(TIME_SUFFIX), bytes(b.timeindex), sync=sync)

    def _unlink_segment(self, d: Path, base: int) -> None:
        stem = segment_name(base)[: -len(LOG_SUFFIX)]
        # the log first: an index without its log is an orphan recovery removes
        for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_SUFFIX):
            try:
                os.unlink(d / (stem + suffix))
            except FileNotFoundError:
                pass

    def _write_recovery_point(self, part: PartitionFiles, rp: int) -> None:
        """Every segment below rp is complete and fsynced with its indexes:
        recovery trusts them without a scan. Not fsynced itself: a lost
        update only makes the next recovery scan more."""
        if rp == part.recovery_point:
            return
        try:
            write_file(part.dir / RECOVERY_POINT, f"{rp}\n".encode(), sync=False)
            part.recovery_point = rp
        except OSError as exc:
            log.debug("%s: recovery point not written: %s", part.what, exc)
