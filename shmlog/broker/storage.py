"""Storage: the supervisor's spiller, fsyncer, retention and recovery (the
read side of segment files, which clients use too, is shmlog.core.segments).

The supervisor builds one Storage and calls attach() before it starts:

- recovery, per disk partition, before its region is opened or re-attached:
  the last segment (and any segment not known durable) is checked frame by
  frame, a torn tail is truncated (the log says how many bytes), indexes that
  are missing or stale are rebuilt, and a region that must be re-created
  starts at the end offset of the segments (sup.initial_offset);
- the spiller thread tails every disk partition with its own cursor, copies
  committed frames out of shared memory, validates the chunk, appends the
  frames unchanged to the active segment with its sparse indexes, rolls
  segments by size and age, and publishes the spilled offset at once (a chunk
  may be reused once its frames are in the page cache: Kafka's model);
- the fsync thread fsyncs every fsync_interval_ms, or at once for a "sync"
  request (flush(durable=True)), then publishes the durable offset and
  answers the waiting requests;
- retention deletes whole old segments by time and size, never the active
  one;
- a write that fails (disk full, unwritable) leaves the spilled offset where
  it was, so nothing committed is lost: producers feel backpressure, the
  error shows in stats, and writing resumes with backoff when it can.

It must never write a frame twice or out of order, never publish a spilled
offset before the frames below it are written, nor a durable offset before
they are fsynced.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .. import errors, protocol
from ..core._core import ffi, lib
from ..core.segments import (
    INDEX_SUFFIX,
    TIME_SUFFIX,
    TOPICS_DIR,
    stamp_disk_word,
)
from ..osutil import fsync_dir
from .partition_files import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    ActiveSegment,
    PartitionFiles,
    SegmentWriting,
    write_file,
)
from .recovery import Recovery

log = logging.getLogger("shmlog.storage")


def _read_fd(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)

ERANGE = -errno.ERANGE
EAGAIN = -errno.EAGAIN
GATE_SPILL = lib.SHMLOG_F_GATE_SPILL

MAX_FRAMES = 4096  # frames per read of the spiller
MAX_BYTES = 8 << 20  # bytes per read of the spiller
RETENTION_INTERVAL = 0.5  # seconds between retention passes
SYNC_MAX_WAIT = 8.0  # a client's control socket times out after 10 s
TOPIC_MARKER = "topic_id"



class _PendingSync:
    __slots__ = ("conn", "key", "offset", "deadline", "topic", "partition")

    def __init__(self, conn, key, offset, deadline, topic, partition):
        self.conn = conn
        self.key = key
        self.offset = offset
        self.deadline = deadline
        self.topic = topic
        self.partition = partition


class Storage(Recovery, SegmentWriting):
    """The supervisor's storage role. Lock order: sup.lock, then self._mu,
    then a partition's lock; the spiller reads shared memory under sup.lock
    (a topic delete unmaps regions under it) and writes files outside it."""

    def __init__(self, sup):
        self.sup = sup
        self.root = Path(sup.data_dir) / TOPICS_DIR
        self._mu = threading.RLock()
        self._parts: Dict[Tuple[int, int], PartitionFiles] = {}
        self._checked_dirs: Dict[str, int] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._fsync_wake = threading.Event()
        self._sync_mu = threading.Lock()
        self._syncs: List[_PendingSync] = []
        self._threads: List[threading.Thread] = []
        self._started = False
        self._stopped = False
        self._known_keys: frozenset = frozenset()
        self._fpos = ffi.new("uint64_t[]", MAX_FRAMES)
        self._flen = ffi.new("uint32_t[]", MAX_FRAMES)
        self._fend = ffi.new("uint64_t[]", MAX_FRAMES)
        self._info = ffi.new("shmlog_read_info_t *")
        self.spilled_bytes = 0
        self.spilled_frames = 0
        self.fsyncs = 0
        self.reused_chunk_bugs = 0
        self.reseeks = 0
        self.truncated_bytes = 0
        self.deleted_segments = 0
        self.write_errors = 0
        self.restored_files = 0  # segment files deleted under us and put back

    def attach(self) -> None:
        """Register with the supervisor's hooks (called once, before start)."""
        sup = self.sup
        sup.handlers["sync"] = self.op_sync
        sup.on_start.append(self.start)
        sup.on_stop.append(self.stop)
        sup.on_topic_created.append(self.topic_created)
        sup.on_topic_deleted.append(self.topic_deleted)

    # ------------------------------------------------------------ directories
    def _topic_dir(self, name: str, t: Dict[str, Any]) -> Path:
        """The topic's directory, made sure to belong to this topic id: a
        directory left by a deleted topic of the same name is removed."""
        d = self.root / name
        if self._checked_dirs.get(name) == t["id"]:
            return d
        if d.exists():
            try:
                tid = int((d / TOPIC_MARKER).read_text().strip())
            except (OSError, ValueError):
                tid = None
            if tid != t["id"]:
                log.warning("removing stale segment files of an older topic %r (id %s, now %s) in %s",
                            name, tid, t["id"], d)
                self._trash(d)
        if not d.exists():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            d.mkdir(mode=0o700)
            write_file(d / TOPIC_MARKER, f"{t['id']}\n".encode(), sync=True)
            fsync_dir(d)
            fsync_dir(self.root)
        self._checked_dirs[name] = t["id"]
        return d

    def _trash(self, d: Path) -> None:
        target = self.root / f".trash-{d.name}-{secrets.token_hex(4)}"
        try:
            os.replace(d, target)
        except FileNotFoundError:
            return
        threading.Thread(target=shutil.rmtree, args=(target,), kwargs={"ignore_errors": True},
                         name="shmlog-trash", daemon=True).start()

    def _clean_root(self) -> None:
        """Remove trash and directories of topics that no longer exist."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        topics = self.sup.meta["topics"]
        for n in names:
            p = self.root / n
            if n.startswith(".trash-"):
                shutil.rmtree(p, ignore_errors=True)
            elif not n.startswith(".") and p.is_dir() and n not in topics:
                log.warning("removing segment files of deleted topic %r", n)
                self._trash(p)

    # ------------------------------------------------------------ supervisor hooks
    def initial_offset(self, name: str, t: Dict[str, Any], p: int, default: int) -> int:
        """Where a re-created region starts: the end of the segments (reboot)."""
        if t["config"]["storage"] != "disk":
            return default
        part = self._partition(name, t, p)
        if part.has_segments:
            if part.written != default:
                log.info("%s: region re-created at offset %d, the end of its segments",
                         part.what, part.written)
            return self._resume_offset(part, part.written)
        return self._resume_offset(part, default)

    def start(self) -> None:
        sup = self.sup
        with sup.lock:
            for name, t in sup.meta["topics"].items():
                if t["config"]["storage"] != "disk":
                    continue
                for p in range(t["config"]["partitions"]):
                    self._partition(name, t, p)
            self._clean_root()
        self._started = True
        for fn, tname in ((self._spill_loop, "shmlog-spiller"), (self._fsync_loop, "shmlog-fsync")):
            th = threading.Thread(target=fn, name=tname, daemon=True)
            th.start()
            self._threads.append(th)

    def stop(self) -> None:
        """Final spill and fsync; runs before the supervisor unlinks regions."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._wake.set()
        self._fsync_wake.set()
        for th in self._threads:
            th.join(timeout=30)
        if not self._started:
            return
        deadline = time.monotonic() + 20
        for part, plog in self._targets():
            try:
                with self.sup.lock:
                    target = plog.end_offset() if not plog.closed else 0
                while part.written < target and time.monotonic() < deadline:
                    part.retry_at = 0.0
                    if not self._spill_one(part, plog):
                        if part.error is not None or not part.need_seek:
                            break  # nothing more to read (holes at the end), or failing
            except Exception:
                log.exception("%s: final spill failed", part.what)
        for part in list(self._parts.values()):
            try:
                self._fsync_part(part)
            except Exception:
                log.exception("%s: final fsync failed", part.what)
        self._answer_syncs(final=True)
        with self._mu:
            for part in self._parts.values():
                with part.lock:
                    part.close_files()

    def topic_created(self, name: str) -> None:
        t = self.sup.meta["topics"][name]
        if t["config"]["storage"] != "disk":
            return
        for p in range(t["config"]["partitions"]):
            self._partition(name, t, p)
        self._wake.set()
        self._fsync_wake.set()

    def topic_deleted(self, name: str, t: Dict[str, Any]) -> None:
        if t["config"]["storage"] != "disk":
            return
        with self._mu:
            for key in [k for k in self._parts if k[0] == t["id"]]:
                part = self._parts.pop(key)
                with part.lock:
                    part.deleted = True
                    part.close_files()
            self._checked_dirs.pop(name, None)
            d = self.root / name
            if d.exists():
                self._trash(d)
        self._fsync_wake.set()

    # ------------------------------------------------------------ info
    def describe_into(self, t: Dict[str, Any], p: int, info: Dict[str, Any]) -> None:
        part = self._parts.get((t["id"], p))
        if part is None:
            return
        start = part.start_offset()
        if start is not None:
            # the oldest retained segment is the log's start (Kafka's log
            # start offset), even while shared memory still holds older
            # records: consumers treat offsets below it as out of range
            # (Consumer._seek), so what is reported is what can be read
            info["start_offset"] = start
        info["bytes"] = part.disk_bytes()  # the partition's log is on disk
        info["durable_offset"] = part.durable
        info["spilled_offset"] = part.written
        info["segments"] = len(part.segments) + (1 if part.active is not None else 0)
        info["spill_error"] = part.error

    def stats(self) -> Dict[str, Any]:
        errs = {f"{p.name}[{p.p}]": p.error for p in list(self._parts.values()) if p.error}
        return {
            "spilled_bytes": self.spilled_bytes,
            "spilled_frames": self.spilled_frames,
            "fsyncs": self.fsyncs,
            "write_errors": self.write_errors,
            "restored_files": self.restored_files,
            "errors": errs,
            "last_error": next(iter(errs.values()), None),
            "truncated_bytes": self.truncated_bytes,
            "deleted_segments": self.deleted_segments,
            "reused_chunk_bugs": self.reused_chunk_bugs,
            "reseeks": self.reseeks,
            "pending_syncs": len(self._syncs),
        }

    # ------------------------------------------------------------ sync op
    def op_sync(self, m: Dict[str, Any], conn) -> Optional[Dict[str, Any]]:
        """{"op": "sync", topic, partition, offset, timeout}: reply once
        everything below offset is fsynced (the handler replies later)."""
        topic = protocol.field(m, "topic", str)
        partition = protocol.field(m, "partition", int)
        offset = protocol.field(m, "offset", int)
        timeout = protocol.field(m, "timeout", (int, float), required=False, default=-1)
        t = self.sup.topic_meta(topic)
        n = t["config"]["partitions"]
        if not 0 <= partition < n:
            raise errors.UnknownPartition(f"topic {topic!r} has no partition {partition} (it has {n})",
                                          what=topic)
        if t["config"]["storage"] != "disk":
            return {"durable_offset": offset}
        part = self._partition(topic, t, partition)
        if part.durable >= offset:
            return {"durable_offset": part.durable}
        wait = SYNC_MAX_WAIT if timeout is None or timeout < 0 else min(float(timeout), SYNC_MAX_WAIT)
        with self._sync_mu:
            self._syncs.append(_PendingSync(conn, part.key, offset, time.monotonic() + wait,
                                            topic, partition))
        self._wake.set()
        self._fsync_wake.set()
        return None

    def _answer_syncs(self, final: bool = False) -> None:
        now = time.monotonic()
        replies = []
        with self._sync_mu:
            keep = []
            for s in self._syncs:
                part = self._parts.get(s.key)
                if part is None or part.deleted:
                    replies.append((s, {"ok": False, "error": "UnknownTopic",
                                        "message": f"topic {s.topic!r} was deleted"}))
                elif part.durable >= s.offset:
                    replies.append((s, {"ok": True, "durable_offset": part.durable}))
                elif final or now >= s.deadline:
                    why = part.error or ("the supervisor is stopping" if final else "fsync still running")
                    replies.append((s, {"ok": False, "error": "StorageError", "message":
                                        f"{part.what}: offsets below {s.offset} are not durable yet "
                                        f"(durable up to {part.durable}): {why}"}))
                else:
                    keep.append(s)
            self._syncs = keep
        for s, msg in replies:
            self.sup.send_reply(s.conn, msg)

    # ------------------------------------------------------------ spiller
    def _targets(self) -> List[Tuple[PartitionFiles, Any]]:
        """(partition state, region) of every disk partition with a region."""
        sup = self.sup
        with sup.lock:
            items = list(sup.logs.items())
            keys = frozenset(k for k, _ in items)
            if keys != self._known_keys:
                by_id = {t["id"]: (n, t) for n, t in sup.meta["topics"].items()}
                for (tid, p), _plog in items:
                    nt = by_id.get(tid)
                    if nt is not None and nt[1]["config"]["storage"] == "disk":
                        self._partition(nt[0], nt[1], p)
                self._known_keys = keys
        out = []
        for key, plog in items:
            part = self._parts.get(key)
            if part is not None and not part.deleted:
                out.append((part, plog))
        return out

    def _spill_loop(self) -> None:
        idle = 0.0005
        last_retention = 0.0
        while not self._stop.is_set():
            moved = 0
            bytes_before = self.spilled_bytes
            batch_up = 1 << 20
            targets = []
            try:
                targets = self._targets()
                for part, plog in targets:
                    moved += self._spill_one(part, plog)
                    # a small region must not wait: its producers block sooner
                    batch_up = min(batch_up, plog.chunk_bytes * plog.chunk_count // 8)
            except Exception:
                log.exception("spill pass failed")
                time.sleep(0.1)
            now = time.monotonic()
            retention_due = now - last_retention >= RETENTION_INTERVAL
            if retention_due:
                last_retention = now
                try:
                    self._retention_pass()
                except Exception:
                    log.exception("retention pass failed")
            # a producer waiting for pages (the budget's account refused its
            # rotation) cannot wait for the next interval
            if retention_due or self.sup.shm.pressed():
                try:
                    self.sup.shm.release_idle(targets)
                except Exception:
                    log.exception("release pass failed")
            if moved:
                idle = 0.0005
                if self._syncs:
                    self._fsync_wake.set()
                elif self.spilled_bytes - bytes_before < batch_up:
                    # a trickle: let it gather for a moment instead of spinning
                    # on one frame per pass (each pass has a fixed cost)
                    self._wake.wait(0.001)
                    self._wake.clear()
                continue
            if not targets:
                # no disk topic: nothing to poll. A wakeup of this thread
                # would preempt a spinning reader or a paced producer on a
                # busy host; topic_created() sets _wake
                self._wake.wait(RETENTION_INTERVAL)
                self._wake.clear()
                continue
            self._wake.wait(idle)
            self._wake.clear()
            idle = min(idle * 2, 0.005)

    def _seek_cursor(self, part: PartitionFiles, plog) -> bool:
        """Point the spiller's cursor at the end of the segments (under sup.lock)."""
        if part.cursor is None:
            part.cursor = plog.new_cursor()
            if not plog.hdr.flags & GATE_SPILL:
                log.warning("%s: region was created without spill gating; gating it now", part.what)
                plog.hdr.flags |= GATE_SPILL
        rc = plog.seek(part.cursor, part.written)
        if rc == EAGAIN:
            return False
        if rc == ERANGE:
            start = part.cursor.next_offset
            if start > part.written:
                log.error("%s: offsets %d..%d were neither spilled nor kept in shared memory; "
                          "they are lost. Spilling continues at offset %d", part.what, part.written,
                          start - 1, start)
                with part.lock:
                    part.written = max(part.written, start)
                    part.force_roll = True
        elif rc < 0:
            errors.check(rc, part.what, offset=part.written)
        plog.set_spilled(part.written)
        plog.set_durable(min(part.durable, part.written))
        part.need_seek = False
        return True

    def _spill_one(self, part: PartitionFiles, plog) -> int:
        """Copy what is committed at the cursor into the active segment.
        Returns frames written."""
        if part.retry_at and time.monotonic() < part.retry_at:
            return 0
        sup = self.sup
        info = self._info
        with sup.lock:
            if plog.closed or part.deleted:
                return 0
            handle = plog.c_log
            for _attempt in range(2):
                if part.need_seek and not self._seek_cursor(part, plog):
                    return 0
                n = lib.shmlog_log_read_frames(handle, part.cursor, self._fpos, self._flen,
                                               self._fend, MAX_FRAMES, MAX_BYTES, info)
                if n >= 0:
                    break
                self._read_failed(part, n, info.bad_offset)
                if not part.need_seek:
                    return 0
            if n <= 0:
                return 0
            positions = ffi.unpack(self._fpos, n)
            lengths = ffi.unpack(self._flen, n)
            ends = ffi.unpack(self._fend, n)
            base = handle.base
            bufs: List[bytearray] = []
            frames = []  # (index of buf, position in it, frame bytes, end offset)
            run_start = run_end = positions[0]
            for i in range(n):
                pos = positions[i]
                if pos != run_end:
                    bufs.append(bytearray(ffi.buffer(base + run_start, run_end - run_start)))
                    run_start = run_end = pos
                frames.append((len(bufs), run_end - run_start, lengths[i], ends[i]))
                run_end += lengths[i]
            bufs.append(bytearray(ffi.buffer(base + run_start, run_end - run_start)))
            for bi, off, flen, _end in frames:
                stamp_disk_word(bufs[bi], off, flen)
            seq = info.first_seq
            first_idx = (positions[0] - handle.header_bytes) // handle.chunk_bytes
            if first_idx != seq % handle.chunk_count:
                # the cursor was parked at the end of chunk `seq`, which held
                # nothing unspilled and may be reused now: the frames start
                # in the next chunk, and that one is what must still hold
                seq += 1
            if lib.shmlog_log_validate(handle, seq) != 0:
                # reuse is gated on the spilled offset: this is a bug, not a race
                self.reused_chunk_bugs += 1
                log.error("%s: BUG: chunk %d was reused before it was spilled (offsets from %d); "
                          "re-reading from the spilled offset", part.what, info.first_seq, part.written)
                part.need_seek = True
                return 0
        try:
            with part.lock:
                if part.deleted:
                    return 0
                written = self._append(part, bufs, frames)
        except OSError as exc:
            self._write_failed(part, exc)
            written = 0
        with sup.lock:
            if not plog.closed and not part.deleted:
                plog.set_spilled(part.written)
        if written and part.t["config"]["fsync_interval_ms"] == 0:
            self._fsync_wake.set()  # fsync after every write
        if written and part.error is not None and not part.need_seek:
            log.warning("%s: writing segments again after: %s", part.what, part.error)
            part.error = None
            part.backoff = BACKOFF_MIN
        return written

    def _read_failed(self, part: PartitionFiles, rc: int, bad_offset: int) -> None:
        if rc == ERANGE:
            # the cursor's chunk was reused: allowed only once everything in it
            # was spilled (it was parked at the chunk's end); the seek from the
            # spilled offset tells a real loss apart, and logs it
            self.reseeks += 1
            part.need_seek = True
            return
        try:
            errors.check(rc, part.what, offset=bad_offset)
        except errors.ShmlogError as exc:
            msg = f"cannot spill: {exc}"
        else:
            msg = f"cannot spill: error {rc}"
        if part.error != msg:
            log.error("%s: %s", part.what, msg)
        self._set_error(part, msg)

    def _set_error(self, part: PartitionFiles, msg: str) -> None:
        if part.error is None:
            part.error_since = time.monotonic()
        part.error = msg
        part.retry_at = time.monotonic() + part.backoff
        part.backoff = min(part.backoff * 2, BACKOFF_MAX)

    def _write_failed(self, part: PartitionFiles, exc: OSError) -> None:
        self.write_errors += 1
        where = exc.filename or (str(part.active.path) if part.active else str(part.dir))
        msg = (f"writing {where} failed: {exc.strerror or exc} (errno {exc.errno}); spilling is "
               f"paused (producers see backpressure) and retried, nothing committed is lost")
        if part.error != msg:
            log.error("%s: %s", part.what, msg)
        self._set_error(part, msg)
        part.need_seek = True  # re-read from what is really on disk

    # ------------------------------------------------------------ fsync
    def _fsync_loop(self) -> None:
        while not self._stop.is_set():
            # without disk partitions there is nothing to fsync: do not wake
            # (each wakeup preempts a spinning reader on a busy host);
            # topic_created() and sync requests set _fsync_wake
            timeout = 0.05 if self._parts else RETENTION_INTERVAL
            self._fsync_wake.wait(timeout)
            self._fsync_wake.clear()
            if self._stop.is_set():
                break
            try:
                self._fsync_pass()
                self._answer_syncs()
            except Exception:
                log.exception("fsync pass failed")
                time.sleep(0.1)

    def _fsync_pass(self) -> None:
        now = time.monotonic()
        with self._sync_mu:
            wanted = {s.key for s in self._syncs}
        for part in list(self._parts.values()):
            if part.deleted:
                continue
            interval = part.t["config"]["fsync_interval_ms"] / 1000.0
            due = part.key in wanted or now - part.last_fsync >= interval or part.unsynced
            if due:
                self._fsync_part(part)

    def _fsync_part(self, part: PartitionFiles) -> None:
        with part.lock:
            if part.deleted:
                return
            end = part.written
            closing = list(part.unsynced)
            if end <= part.durable and not closing and not part.dir_dirty:
                part.last_fsync = time.monotonic()
                return
            # a closing segment that retention already dropped is meant to be gone
            kept = {seg.base for seg in part.segments}
            for a in [a for a in closing if a.base in kept] + ([part.active] if part.active is not None else []):
                self._restore_if_unlinked(part, a)
            dir_dirty = part.dir_dirty
            part.dir_dirty = False
            # dup: a topic delete may close the originals while we fsync
            fds = []
            try:
                for a in closing:
                    fds += [os.dup(fd) for fd in a.fds() if fd >= 0]
                if part.active is not None and part.active.fd >= 0:
                    fds.append(os.dup(part.active.fd))
            except OSError:
                for fd in fds:
                    os.close(fd)
                part.dir_dirty |= dir_dirty
                raise
            active_base = part.active.base if part.active is not None else None
        try:
            for fd in fds:
                os.fdatasync(fd)
            if dir_dirty:
                fsync_dir(part.dir)
        except OSError as exc:
            with part.lock:
                part.dir_dirty |= dir_dirty
            msg = f"fsync in {part.dir} failed: {exc.strerror or exc} (errno {exc.errno}); retrying"
            if part.error != msg:
                log.error("%s: %s", part.what, msg)
            self._set_error(part, msg)
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.fsyncs += 1
        if part.error is not None and part.error.startswith("fsync"):
            log.warning("%s: fsync works again after: %s", part.what, part.error)
            part.error = None
            part.backoff = BACKOFF_MIN
        with part.lock:
            for a in closing:
                a.close()
                if a in part.unsynced:
                    part.unsynced.remove(a)
            if end > part.durable:
                part.durable = end
            part.last_fsync = time.monotonic()
            rp = active_base if not part.unsynced and active_base is not None else None
        if rp is not None:
            self._write_recovery_point(part, rp)
        with self.sup.lock:
            plog = self.sup.logs.get(part.key)
            if plog is not None and not plog.closed and not part.deleted:
                plog.set_durable(part.durable)

    def _restore_if_unlinked(self, part: PartitionFiles, act: ActiveSegment) -> None:
        """Put back a segment file someone deleted while we write it (caller
        holds part.lock). fsync on the open file still succeeds, so without
        this everything spilled into it - durably acknowledged - would vanish
        at the next start; its bytes are still in the open file."""
        for attr, path in (("fd", act.path), ("idx_fd", act.path.with_suffix(INDEX_SUFFIX)),
                           ("tidx_fd", act.path.with_suffix(TIME_SUFFIX))):
            old = getattr(act, attr)
            try:
                if old < 0 or os.fstat(old).st_nlink > 0:
                    continue
                src = os.open(f"/proc/self/fd/{old}", os.O_RDONLY)  # readable even when unlinked
                try:
                    write_file(path, _read_fd(src), sync=True)  # via .tmp, which recovery sweeps
                finally:
                    os.close(src)
                new = os.open(path, os.O_WRONLY | os.O_APPEND)
            except OSError as exc:
                msg = (f"segment file {path} was deleted while in use and could not be restored: "
                       f"{exc.strerror or exc}; what was spilled into it is lost at the next start")
                if part.error != msg:
                    log.error("%s: %s", part.what, msg)
                self._set_error(part, msg)
                continue
            os.close(old)
            setattr(act, attr, new)
            part.dir_dirty = True
            self.restored_files += 1
            log.error("%s: %s was deleted while in use; restored it from the open file "
                      "(do not delete segment files by hand: use retention or delete the topic)",
                      part.what, path)

    # ------------------------------------------------------------ retention
    def _retention_pass(self) -> None:
        now_ms = time.time() * 1000
        for part in list(self._parts.values()):
            cfg = part.t["config"]
            rms = cfg.get("retention_ms")
            rbytes = cfg.get("retention_bytes")
            if rms is None and rbytes is None:
                continue
            victims = []
            with part.lock:
                if part.deleted or not part.segments:
                    continue
                total = part.disk_bytes()
                while part.segments:
                    s = part.segments[0]
                    by_bytes = rbytes is not None and total - rbytes >= s.size
                    by_time = rms is not None and s.max_ts is not None and s.max_ts < now_ms - rms
                    if not (by_bytes or by_time):
                        break
                    victims.append((s, "size" if by_bytes else "time"))
                    part.segments.pop(0)
                    total -= s.size
            for s, _why in victims:
                self._unlink_segment(part.dir, s.base)
                self.deleted_segments += 1
            if victims:
                whys = sorted({why for _, why in victims})
                log.info("%s: retention (%s) deleted %d segment(s), %d bytes, offsets %d..%d; "
                         "the log now starts at offset %d", part.what, "+".join(whys), len(victims),
                         sum(s.size for s, _ in victims), victims[0][0].base,
                         victims[-1][0].end_offset - 1, victims[-1][0].end_offset)

