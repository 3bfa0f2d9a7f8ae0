"""A group-offset commit that fails half-written (disk full) must not take
later commits down with it: the store's loader stops at the first bad
line, so a torn fragment left in the file used to swallow every commit
appended after it at the next start (found by `shmlog soak --disk-faults`,
disk full during commits)."""

from __future__ import annotations

import errno
import os

import pytest

from shmlog.broker import offsets as offsets_mod
from shmlog.broker.offsets import OffsetStore


def test_a_failed_append_leaves_no_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "g.offsets"
    store = OffsetStore(path)
    store.append([("t", 1, 0, 50)], durable=True)

    real = offsets_mod.write_all

    def short_write(fd, data):
        os.write(fd, data[: len(data) // 2])  # what fits before the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(offsets_mod, "write_all", short_write)
    with pytest.raises(OSError):
        store.append([("t", 1, 0, 60)], durable=True)
    monkeypatch.setattr(offsets_mod, "write_all", real)
    assert store.get("t", 0, 1) == 50  # the failed commit did not happen
    store.append([("t", 1, 0, 100)], durable=True)  # space is back
    store.close()
    assert OffsetStore(path).get("t", 0, 1) == 100
