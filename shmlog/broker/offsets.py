"""The committed-offset store of consumer groups (runs in the supervisor).

Committed offsets live in ``<data_dir>/groups/<group>.offsets``: one line
per commit, ``<crc32 of the json, 8 hex digits> <json>``, fsynced when it
holds a disk topic's offsets (a memory topic's data dies with the machine
anyway, and the page cache survives a supervisor crash), compacted by
rewrite-and-rename.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..osutil import fsync_dir, write_all

log = logging.getLogger("shmlog.groups")

TP = Tuple[str, int]
MAX_OFFSET = (1 << 63) - 1
OFFSETS_SUFFIX = ".offsets"
COMPACT_BYTES = 64 << 10


class OffsetStore:
    """Committed offsets of one group: ``<data_dir>/groups/<group>.offsets``.

    Append-only lines ``<crc32 hex> <json>\\n``; json is
    {"o": [[topic, topic_id, partition, offset], ...], "g": generation,
    "m": member_id, "t": time_ms}. Loading stops at the first line whose CRC
    or JSON is bad (a torn append) and truncates the file there; offsets of a
    topic id that no longer exists are ignored and dropped by compaction."""

    def __init__(self, path: Path):
        self.path = path
        self.offsets: Dict[TP, Tuple[int, int]] = {}  # (topic, p) -> (topic_id, offset)
        self._fd: Optional[int] = None
        self._size = 0
        self._base = 0  # size right after the last compaction
        self.load()

    def load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        pos = 0
        good = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            line = data[pos:nl]
            rec = _parse_record(line)
            if rec is None:
                break
            self._apply(rec)
            pos = nl + 1
            good = pos
        if good < len(data):
            log.error("%s: bad or torn record at byte %d; dropped the %d byte(s) after it",
                      self.path, good, len(data) - good)
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        self._size = good
        self._base = good

    def _apply(self, rec: Dict[str, Any]) -> None:
        for topic, tid, p, off in rec.get("o", ()):
            self.offsets[(topic, p)] = (tid, off)

    def get(self, topic: str, p: int, topic_id: int) -> Optional[int]:
        v = self.offsets.get((topic, p))
        if v is None or v[0] != topic_id:
            return None
        return v[1]

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    def append(self, entries: Sequence[Tuple[str, int, int, int]], *, durable: bool,
               generation: int = 0, member_id: str = "") -> None:
        """Record offsets; with durable=True they survive a machine crash
        once this returns (fsync)."""
        if not entries:
            return
        rec = {"o": [list(e) for e in entries], "g": generation, "m": member_id,
               "t": int(time.time() * 1000)}
        line = _format_record(rec)
        fd = self._open()
        before = os.fstat(fd).st_size
        try:
            write_all(fd, line)
            if durable:
                os.fsync(fd)
        except OSError:
            # A short write (disk full, EIO) must not leave a torn line for
            # the next record to be appended to: load() stops at the first
            # bad line, so every later commit would vanish at the next start.
            # The commit failed, so take all of it back.
            try:
                os.ftruncate(fd, before)
            except OSError:
                self.close()  # reopened next time; load() drops the tail at the next start
                log.error("%s: could not take back a failed append; commits after it may be "
                          "dropped at the next start", self.path)
            raise
        self._size += len(line)
        for topic, tid, p, off in entries:
            self.offsets[(topic, p)] = (tid, off)

    def needs_compaction(self) -> bool:
        return self._size > COMPACT_BYTES and self._size > 2 * self._base

    def compact(self, live_topic_ids: Dict[str, int]) -> None:
        """Rewrite the file with one record of the current offsets (of live
        topics), fsync, rename over the old one, fsync the directory."""
        keep = {tp: v for tp, v in self.offsets.items() if live_topic_ids.get(tp[0]) == v[0]}
        self.offsets = keep
        entries = [[t, tid, p, off] for (t, p), (tid, off) in sorted(keep.items())]
        line = _format_record({"o": entries, "g": 0, "m": "compaction", "t": int(time.time() * 1000)})
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self.close()
        self._size = self._base = len(line)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def delete(self) -> None:
        self.close()
        self.offsets.clear()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fsync_dir(self.path.parent)


def read_committed(path: Path) -> List[Tuple[str, int, int, int]]:
    """Every (topic, topic_id, partition, offset) committed in a group's file,
    read without changing it (a torn tail ends the reading, as in load())."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    out: List[Tuple[str, int, int, int]] = []
    for line in data.split(b"\n")[:-1]:
        rec = _parse_record(line)
        if rec is None:
            break
        out.extend((t, tid, p, off) for t, tid, p, off in rec.get("o", ()))
    return out


def highest_committed(groups_dir: Path) -> Dict[Tuple[int, int], int]:
    """(topic id, partition) -> the highest offset any group's file commits
    there: offsets a group has consumed, which a partition re-created after
    a crash must never hand out again (memory_offsets, recovery)."""
    out: Dict[Tuple[int, int], int] = {}
    for path in sorted(groups_dir.glob("*" + OFFSETS_SUFFIX)) if groups_dir.is_dir() else ():
        for _topic, tid, p, off in read_committed(path):
            if off > out.get((tid, p), -1):
                out[(tid, p)] = off
    return out


def _format_record(rec: Dict[str, Any]) -> bytes:
    body = json.dumps(rec, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _parse_record(line: bytes) -> Optional[Dict[str, Any]]:
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        rec = json.loads(body)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("o", []), list):
        return None
    for e in rec.get("o", []):
        if not (isinstance(e, list) and len(e) == 4 and isinstance(e[0], str)
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in e[1:])):
            return None
    return rec
