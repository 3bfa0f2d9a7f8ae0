"""Invariant 4 in shared memory: random bytes written into a region's
header or chunks, then a fresh reader attaches and reads everything, in a
child process (a segfault fails the test, not pytest). Only the original
records or a ShmlogError may come out."""

from __future__ import annotations

from shmlog.soak.fuzz import run_child


def test_corrupted_regions_never_crash_or_mislead_a_reader(shm_prefix):
    fig = run_child("region", {"prefix": shm_prefix, "seed": 16, "rounds": 1500}, timeout=600)
    assert "violation" not in fig, fig
    assert fig["violations"] == [], fig["violations"]
    assert fig["rounds"] == 1500
    assert fig["stops"].get("CorruptBatch") and fig["corrupted"].get("header"), fig
