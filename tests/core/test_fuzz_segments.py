"""Invariant 4 on disk: corrupted copies of a real segment through the
recovery scan, `shmlog dump`'s walk and the consumer's segment reader, in a
child process (a segfault fails the test instead of killing pytest). Only
the original records or a ShmlogError may come out. `shmlog soak --fuzz`
runs 1M batches."""

from __future__ import annotations

from shmlog.soak.fuzz import make_template, run_child


def test_corrupted_segments_never_serve_bad_data(tmp_path, data_dir):
    template = make_template(data_dir.parent, seed=16)
    fig = run_child("segments", {"template": str(template), "work": str(tmp_path / "fz"), "seed": 16,
                                 "batches": 60_000}, timeout=600)
    assert "violation" not in fig, fig
    assert fig["violations"] == [], fig["violations"]
    assert fig["batches"] >= 60_000
    # both ways a reader meets a bad frame were exercised
    assert fig["stops"].get("CorruptBatch") and fig["stops"].get("end"), fig["stops"]
