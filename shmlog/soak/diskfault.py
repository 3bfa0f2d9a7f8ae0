"""Disk faults: a full disk (during spill, during group-offset commits), a
read-only data dir, and a segment file deleted underneath.

The full and read-only cases put the data dir on a small tmpfs, so they need
root (mount); without it they are reported as skipped. Each case checks
that the fault reaches users as a clear error (producers, `sync`, describe,
stats), that memory topics keep working, that service resumes when the disk
is back, and that nothing acknowledged before or after is lost - across a
supervisor restart too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import shmlog
from shmlog import errors

BROKER = {"idle_timeout_s": 30}


def unmount(path: Path) -> None:
    """Unmount, retrying while a just-killed process still holds a file there;
    lazily as the last resort, so that no mount outlives the run."""
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        unmount(path)


def _fill(path: Path) -> Path:
    """Fill the file system of path to the last byte."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * (64 << 10)
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    finally:
        os.close(fd)
    return filler


def _wait(pred: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return None


def _spill_error(c: shmlog.Cluster, topic: str) -> Optional[str]:
    return c.describe_topic(topic).partitions[0].extra.get("spill_error")


def _read_all(c: shmlog.Cluster, topic: str, want: int, timeout: float = 30) -> List[bytes]:
    out: List[bytes] = []
    with c.consumer(topic) as consumer:
        consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            out.extend(bytes(m.value) for m in consumer.consume(max_messages=want - len(out), timeout=0.5))
    return out


def _memory_works(c: shmlog.Cluster, n: int = 500) -> bool:
    """A memory topic takes and serves n messages while the disk is sick."""
    # created before the fault (creating a topic writes its metadata); the
    # group commits nothing here (offsets go to disk), it only reads
    with c.consumer("mem", group="mg", enable_auto_commit=False) as consumer, c.producer() as p:
        consumer.consume(timeout=0.2)  # join: a memory topic keeps data for groups that exist
        got = 0
        for i in range(n):
            p.send("mem", b"m%d" % i)
        p.flush(timeout=10)
        deadline = time.monotonic() + 20
        while got < n and time.monotonic() < deadline:
            got += len(consumer.consume(max_messages=n, timeout=0.5))
        return got >= n


def _connect(data_dir: Path) -> shmlog.Cluster:
    c = shmlog.connect(data_dir, **BROKER)
    c.create_topic("mem", partitions=1, storage="memory", chunk_bytes=64 << 10, chunk_count=2)
    return c


def _stop(c: shmlog.Cluster) -> None:
    with contextlib.suppress(errors.ShmlogError):
        c.shutdown(timeout=30)
    c.close()


def _restart(c: shmlog.Cluster, data_dir: Path) -> shmlog.Cluster:
    c.shutdown(timeout=30)
    c.close()
    return shmlog.connect(data_dir, **BROKER)


def case_disk_full_spill(root: Path) -> Dict[str, Any]:
    out: Dict[str, Any] = {"case": "disk full during spill"}
    with tmpfs(root / "mnt-full", "4m") as mnt:
        data = mnt / "data"
        c = _connect(data)
        try:
            c.create_topic("d", partitions=1, chunk_bytes=64 << 10, chunk_count=4, segment_bytes=1 << 20)
            filler = _fill(mnt)
            values = [b"v%06d" % i + b"." * 200 for i in range(4000)]  # ~0.9 MB: more than the ring
            acked = 0
            with c.producer(max_block_ms=3000) as p:
                try:
                    for v in values:
                        p.send("d", v)
                        acked += 1
                        if acked % 200 == 0:
                            p.flush(timeout=10)
                except errors.BufferFull as exc:
                    out["producer_error"] = str(exc)
                    acked -= acked % 200  # what the last flush() vouched for
                try:
                    p.flush(timeout=3, durable=True)
                    out["durable_flush_error"] = None
                except errors.ShmlogError as exc:
                    out["durable_flush_error"] = f"{type(exc).__name__}: {exc}"
            out["spill_error"] = _spill_error(c, "d")
            out["stats_errors"] = c.stats().get("storage", {}).get("errors")
            out["memory_topic_works"] = _memory_works(c)
            filler.unlink()  # space returns
            with c.producer() as p:
                p.flush(durable=True, timeout=60)  # nothing new: waits only for the backlog
            out["spill_error_cleared"] = bool(_wait(lambda: _spill_error(c, "d") is None, 60))
            out["acked"] = acked
            c = _restart(c, data)
            got = _read_all(c, "d", acked)
            out["recovered"] = sum(1 for a, b in zip(got, values) if a == b)
        finally:
            _stop(c)
    out["ok"] = bool(out.get("producer_error") and "spill" in out["producer_error"] and out["spill_error"]
                     and out["durable_flush_error"] and out["memory_topic_works"]
                     and out["spill_error_cleared"] and out["recovered"] == out["acked"] > 0)
    return out


def case_disk_full_commit(root: Path) -> Dict[str, Any]:
    out: Dict[str, Any] = {"case": "disk full during group-offset commits"}
    with tmpfs(root / "mnt-commit", "2m") as mnt:
        data = mnt / "data"
        c = _connect(data)
        try:
            c.create_topic("d", partitions=1, chunk_bytes=64 << 10, chunk_count=2)
            with c.producer() as p:
                for i in range(100):
                    p.send("d", b"%d" % i)
                p.flush(durable=True)
            with c.consumer("d", group="g", enable_auto_commit=False) as consumer:
                got = _consume_n(consumer, 50)
                consumer.commit(offsets={("d", 0): 50})
                filler = _fill(mnt)
                got += _consume_n(consumer, 50)
                for i in range(400):  # the offsets file grows with every commit: past its last page
                    try:
                        consumer.commit(offsets={("d", 0): 60 + i % 2})
                    except errors.ShmlogError as exc:
                        out["commit_error"] = f"{type(exc).__name__}: {exc}"
                        break
                out["committed_while_full"] = c.describe_group("g")["partitions"][0]["committed"]
                out["memory_topic_works"] = _memory_works(c)
                filler.unlink()
                consumer.commit(offsets={("d", 0): 100})
                out["commit_after_space_returns"] = True
            c = _restart(c, data)
            out["committed_after_restart"] = c.describe_group("g")["partitions"][0]["committed"]
        finally:
            _stop(c)
    # a commit that failed is not half-kept: the one after the disk is
    # back must survive the restart (a torn record used to swallow it)
    out["ok"] = bool(str(out.get("commit_error")).startswith("StorageError")
                     and out.get("committed_while_full") in (60, 61)
                     and out.get("memory_topic_works") and out.get("commit_after_space_returns")
                     and out["committed_after_restart"] == 100)
    out["note"] = ("a commit on the full disk " + ("failed with a clear error" if out.get("commit_error")
                   else "succeeded (the offsets file had room)"))
    return out


def _consume_n(consumer, n: int) -> list:
    got: list = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        got += consumer.consume(max_messages=n - len(got), timeout=0.5)
    return got


@contextlib.contextmanager
def read_only(path: Path):
    """path read-only from now on (a read-only bind mount over itself):
    opening, creating and renaming files there fails with EROFS. (A tmpfs
    cannot be remounted read-only while files are open for writing.)"""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield path
    finally:
        unmount(path)


def case_read_only(root: Path) -> Dict[str, Any]:
    out: Dict[str, Any] = {"case": "data dir turns read-only while running"}
    with tmpfs(root / "mnt-ro", "16m") as mnt:
        data = mnt / "data"
        c = _connect(data)
        try:
            # small segments: spilling needs new files soon
            c.create_topic("d", partitions=1, chunk_bytes=64 << 10, chunk_count=4, segment_bytes=16 << 10)
            values = [b"r%05d" % i + b"." * 100 for i in range(1500)]
            acked = 0
            with c.producer(max_block_ms=3000) as p:
                for v in values[:100]:
                    p.send("d", v)
                p.flush(durable=True)
                acked = 100
                with read_only(data):
                    try:
                        for i, v in enumerate(values[100:], 100):
                            p.send("d", v)
                            if i % 100 == 99:
                                p.flush(timeout=10)
                                acked = i + 1
                    except errors.BufferFull as exc:
                        out["producer_error"] = str(exc)
                    out["spill_error"] = _wait(lambda: _spill_error(c, "d"), 10)
                    try:
                        c.create_topic("new", partitions=1)
                        out["create_topic_error"] = None
                    except errors.ShmlogError as exc:
                        out["create_topic_error"] = f"{type(exc).__name__}: {exc}"
                    out["memory_topic_works"] = _memory_works(c)
                # writable again: the backlog spills; what BufferFull refused is not acknowledged
                p.flush(durable=True, timeout=60)
            out["spill_error_cleared"] = bool(_wait(lambda: _spill_error(c, "d") is None, 60))
            c = _restart(c, data)
            got = _read_all(c, "d", acked)
            out["acked"] = acked
            out["recovered"] = sum(1 for a, b in zip(got, values) if a == b)
        finally:
            _stop(c)
        # a read-only data dir at start: a clear error, not a half-started supervisor
        with read_only(data):
            try:
                _stop(shmlog.connect(data, **BROKER))
                out["start_on_ro_error"] = None
            except errors.ShmlogError as exc:
                out["start_on_ro_error"] = str(exc)
    out["ok"] = bool(out.get("spill_error") and str(out.get("create_topic_error")).startswith("StorageError") and out.get("memory_topic_works")
                     and out.get("start_on_ro_error") and out.get("spill_error_cleared")
                     and out.get("recovered") == out.get("acked") > 100)
    return out


def case_segment_deleted(root: Path) -> Dict[str, Any]:
    """The active segment file unlinked under a running supervisor."""
    out: Dict[str, Any] = {"case": "active segment file deleted underneath"}
    data = root / "deleted" / "data"
    c = _connect(data)
    try:
        c.create_topic("d", partitions=1, chunk_bytes=64 << 10, chunk_count=4, segment_bytes=1 << 20)
        values = [b"s%05d" % i for i in range(400)]
        pdir = data / "topics" / "d" / "0"
        with c.producer() as p:
            for v in values[:200]:
                p.send("d", v)
            p.flush(durable=True)
            for f in pdir.glob("*.log"):
                f.unlink()
            for v in values[200:]:
                p.send("d", v)
            try:
                p.flush(durable=True, timeout=10)
                out["durable_flush_error"] = None
            except errors.ShmlogError as exc:
                out["durable_flush_error"] = f"{type(exc).__name__}: {exc}"
        out["spill_error"] = _spill_error(c, "d")
        out["restored_files"] = c.stats().get("storage", {}).get("restored_files")
        out["memory_topic_works"] = _memory_works(c)
        c = _restart(c, data)
        got = _read_all(c, "d", len(values), timeout=10)
        out["acked_durable"] = 0 if out["durable_flush_error"] else len(values)
        out["recovered"] = sum(1 for a, b in zip(got, values) if a == b)
        out["logged"] = any("was deleted while in use" in line
                            for line in (data / "supervisor.log").read_text().splitlines())
    finally:
        _stop(c)
    # flush(durable=True) vouched for all of it: all of it must be back,
    # and the log must say what happened
    out["ok"] = bool(out["memory_topic_works"] and out["logged"] and out["recovered"] == out["acked_durable"] > 0)
    return out


CASES = [case_disk_full_spill, case_disk_full_commit, case_read_only, case_segment_deleted]
NEEDS_ROOT = {case_disk_full_spill, case_disk_full_commit, case_read_only}


def disk_fault_cases(work: Path, *, log: Callable[[str], None] = print,
                     cases: Optional[List[Callable]] = None) -> Dict[str, Any]:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    fig: Dict[str, Any] = {"cases": [], "violations": [], "skipped": []}
    for case in cases or CASES:
        if case in NEEDS_ROOT and (os.geteuid() != 0 or shutil.which("mount") is None):
            fig["skipped"].append(f"{case.__name__}: needs root to mount a tmpfs")
            continue
        try:
            res = case(work)
        except Exception as exc:  # a case that blows up is a failed case, with its reason
            res = {"case": case.__name__, "ok": False, "exception": f"{type(exc).__name__}: {exc}"}
        fig["cases"].append(res)
        log(f"disk fault: {res['case']}: {'ok' if res['ok'] else 'FAILED'}")
        if not res["ok"]:
            fig["violations"].append(f"{res['case']}: {res}")
    return fig
