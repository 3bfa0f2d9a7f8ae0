"""Operating-system helpers that every role shares: process liveness (one rule
for zombies and reused pids), and the durable-write steps (write everything,
fsync a directory, replace a JSON file atomically).

Nothing here knows about topics, partitions or the supervisor."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

_HAVE_PROC = os.path.exists("/proc/self/stat")


def proc_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state, start time in clock ticks) from /proc/<pid>/stat; ("X", 0) when
    the process is gone; None when /proc cannot tell."""
    if not _HAVE_PROC:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ("X", 0)
    except OSError:
        return None
    try:
        rest = data[data.rindex(b")") + 2:].split()
        return rest[0].decode(), int(rest[19])
    except (ValueError, IndexError):
        return None


def proc_start_time(pid: int) -> Optional[int]:
    """The process's start time (clock ticks since boot), to tell a reused pid
    apart later; None when it is gone or /proc cannot tell."""
    st = proc_stat(pid)
    return st[1] if st is not None and st[0] != "X" else None


def pid_alive(pid: int, started: Optional[int] = None) -> bool:
    """Is the process alive and, when `started` is given, still the same one?

    A zombie (killed, not yet reaped by its parent) is dead: it will never
    commit, read or heartbeat again, though kill(pid, 0) still succeeds. A pid
    reused by another process (a different start time) is dead too."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    st = proc_stat(pid)
    if st is None:
        return True  # no /proc: trust kill(0)
    state, start = st
    if state in ("Z", "X", "x"):
        return False
    return started is None or start == started


def write_all(fd: int, data: Any) -> None:
    """os.write until every byte of `data` (bytes-like) is written."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: Union[str, Path]) -> None:
    """fsync a directory, so that a create, rename or unlink in it is durable.
    A directory that is gone has nothing left to make durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` as JSON: write a temp file, fsync it, rename it
    over, fsync the directory. A crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    # owner-only (invariant 6) even in a data dir someone made 0755
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
