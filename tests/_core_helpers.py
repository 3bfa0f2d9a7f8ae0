"""Helpers shared by the C-core tests (test_log_*, test_codec, ...).

Regions are always created under the test's `shm_prefix` and closed and
unlinked on the way out; child processes are forked, and always joined or
killed before a helper returns.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import signal
import struct
import traceback
from typing import Callable, Iterator, List, Optional, Tuple

from shmlog.core._core import ffi, lib

from shmlog import errors
from shmlog.core.log import PartitionLog

FORK = multiprocessing.get_context("fork")

SMALL_CHUNK = 65536
SMALL_COUNT = 4

@contextlib.contextmanager
def new_log(shm_prefix: str, suffix: str = "p0", **kw) -> Iterator[PartitionLog]:
    """A freshly formatted partition region; closed and unlinked afterwards."""
    kw.setdefault("chunk_bytes", SMALL_CHUNK)
    kw.setdefault("chunk_count", SMALL_COUNT)
    plog = PartitionLog.create(f"{shm_prefix}-{suffix}", **kw)
    try:
        yield plog
    finally:
        plog.close()
        plog.unlink()


def producer_slot(plog: PartitionLog, i: int):
    return plog.hdr.producers[i]


def reader_slot(plog: PartitionLog, i: int):
    return plog.hdr.readers[i]


def tail_bytes(t: int) -> int:
    return t >> 32


def tail_records(t: int) -> int:
    return t & 0xFFFFFFFF


def tail_pack(nbytes: int, records: int) -> int:
    return (nbytes << 32) | records


def frame_bytes_for(payload_bytes: int) -> int:
    """Frame size a payload of this many bytes takes (64-byte header, aligned)."""
    n = payload_bytes + lib.SHMLOG_FRAME_HEADER
    return (n + lib.SHMLOG_FRAME_ALIGN - 1) // lib.SHMLOG_FRAME_ALIGN * lib.SHMLOG_FRAME_ALIGN


def value_of(i: int, size: int) -> bytes:
    """A value that names its index, padded to `size` bytes (size >= 8)."""
    head = struct.pack("<Q", i)
    return head + bytes((i + k) & 0xFF for k in range(size - 8))


def fast_pickle(obj, protocol: int = 3) -> bytes:
    """A pickle without memo (Pickler.fast), in any protocol: the shape
    pickle_values() writes for protocol 3, or another shape to be refused."""
    f = io.BytesIO()
    p = pickle.Pickler(f, protocol)
    p.fast = True
    p.dump(obj)
    return f.getvalue()


def frame_records(plog: PartitionLog, region_pos: int) -> tuple:
    """What a frame says about its records, minus where it is (base offset,
    CRC) and who wrote it: equal tuples mean byte-identical record sections."""
    f = ffi.cast("shmlog_frame_hdr_t *", plog.c_log.base + region_pos)
    start = region_pos + lib.SHMLOG_FRAME_HEADER
    return (f.record_count, f.attributes, f.batch_version, f.first_timestamp, f.max_timestamp,
            f.uncompressed_bytes, f.payload_bytes, bytes(plog.mapping[start : start + f.payload_bytes]))


def frames(plog: PartitionLog, cursor=None, max_frames: int = 4096) -> List[Tuple[int, int, int]]:
    """Committed frames from the cursor (or the start): (region pos, bytes, end offset)."""
    if cursor is None:
        cursor = plog.new_cursor()
        plog.seek(cursor, plog.start_offset)
    pos = ffi.new("uint64_t[]", max_frames)
    fb = ffi.new("uint32_t[]", max_frames)
    ends = ffi.new("uint64_t[]", max_frames)
    info = ffi.new("shmlog_read_info_t *")
    out = []
    while True:
        n = lib.shmlog_log_read_frames(plog.checked_log(), cursor, pos, fb, ends, max_frames,
                                       1 << 62, info)
        errors.check(n, plog.what)
        if n == 0:
            return out
        out += [(pos[i], fb[i], ends[i]) for i in range(n)]


def read_all(plog: PartitionLog, cursor=None, max_records: int = 100_000, reader=None):
    """Every record readable now: (offsets, values, keys, headers, timestamps)."""
    reader = reader or plog.reader()
    if cursor is None:
        cursor = plog.new_cursor()
        plog.seek(cursor, plog.start_offset)
    offsets: list = []
    values: list = []
    keys: list = []
    headers: list = []
    timestamps: list = []
    while True:
        res = reader.read(cursor, max_records)
        if res is None:
            return offsets, values, keys, headers, timestamps
        offsets += res.offsets
        values += res.values
        keys += res.keys
        headers += res.headers if res.headers is not None else [[]] * len(res)
        timestamps += res.timestamps


@contextlib.contextmanager
def at_point(point: int, action: Callable[[], None]) -> Iterator[list]:
    """Run action() once, the first time the C core reaches test point `point`
    (SHMLOG_POINT_*): it stands for another process that runs while this one
    is stalled between a load and its CAS. Yields a list that holds the point
    once it fired; an exception in action() is raised on the way out (cffi
    would only print it)."""
    fired: list = []
    failed: list = []

    @ffi.callback("void(int)")
    def hook(p):
        if p != point or fired:
            return
        fired.append(p)
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failed.append(exc)

    lib.shmlog_set_test_point(hook)
    try:
        yield fired
    finally:
        lib.shmlog_set_test_point(ffi.NULL)
    if failed:
        raise failed[0]


def fill_until_rotation(plog: PartitionLog, slot: int, value_size: int = 333, per_batch: int = 3,
                        seq: int = 0, timeout: float = 2.0) -> int:
    """Append batches until the active chunk rotates; returns records appended."""
    start = plog.hdr.active_seq
    n = 0
    while plog.hdr.active_seq == start:
        plog.append(slot, [b"f" * value_size] * per_batch, timeout=timeout)
        n += per_batch
    return n


# ---------------------------------------------------------------- processes

class Child:
    """A forked child running fn(conn, *args); talks to the parent over a pipe."""

    def __init__(self, fn: Callable, *args):
        self.conn, child_conn = FORK.Pipe()
        self.proc = FORK.Process(target=_child_main, args=(fn, child_conn, args), daemon=True)
        self.proc.start()
        child_conn.close()

    def recv(self, timeout: float = 10.0):
        if not self.conn.poll(timeout):
            raise TimeoutError(f"child {self.proc.pid} said nothing within {timeout}s")
        msg = self.conn.recv()
        if isinstance(msg, tuple) and msg and msg[0] == "__error__":
            raise AssertionError(f"child {self.proc.pid} failed:\n{msg[1]}")
        return msg

    def send(self, msg) -> None:
        self.conn.send(msg)

    def join(self, timeout: float = 10.0) -> Optional[int]:
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.kill()
            raise AssertionError(f"child {self.proc.pid} still running after {timeout}s (hang?)")
        return self.proc.exitcode

    def kill(self) -> None:
        """SIGKILL and reap (a zombie would still look alive to kill(pid, 0))."""
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)

    def close(self) -> None:
        self.kill()
        self.conn.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _child_main(fn, conn, args):
    try:
        fn(conn, *args)
    except BaseException:
        try:
            conn.send(("__error__", traceback.format_exc()))
        except Exception:
            pass
        os._exit(1)
    conn.close()
    os._exit(0)
