"""Disk faults (shmlog.soak.diskfault): a full disk during spill and during
group-offset commits, a data dir that turns read-only, and the active
segment deleted underneath. Each must reach users as a clear error, keep
memory topics working, resume when the disk is back, and lose nothing
acknowledged. The tmpfs cases need root (mount)."""

from __future__ import annotations

import os
import shutil

import pytest

from shmlog.soak import diskfault

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                                reason="needs root to mount a small tmpfs as the data dir")


def _run(case, tmp_path):
    res = case(tmp_path)
    assert res["ok"], res
    return res


@needs_root
def test_disk_full_during_spill(tmp_path):
    res = _run(diskfault.case_disk_full_spill, tmp_path)
    assert "No space left" in res["producer_error"] and "No space left" in res["durable_flush_error"]


@needs_root
def test_disk_full_during_commits(tmp_path):
    res = _run(diskfault.case_disk_full_commit, tmp_path)
    assert "No space left" in res["commit_error"] and "g.offsets" in res["commit_error"]


@needs_root
def test_data_dir_turns_read_only(tmp_path):
    res = _run(diskfault.case_read_only, tmp_path)
    assert "Read-only" in res["spill_error"] and "not writable" in res["start_on_ro_error"]


def test_active_segment_deleted_underneath_is_restored(tmp_path):
    """Regression: the spiller kept writing into the unlinked file and
    flush(durable=True) vouched for data that was gone at the next start."""
    res = _run(diskfault.case_segment_deleted, tmp_path)
    assert res["restored_files"] >= 1 and res["recovered"] == res["acked_durable"]
