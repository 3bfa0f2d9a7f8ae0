"""A 45-second soak in the suite: a real pipeline (3 producers, 2 groups of
2 members, a replay reader; a disk and a memory topic) while a process or
the supervisor is SIGKILLed every 2 s. Nothing acknowledged may be lost,
altered or reordered, nothing may leak. `shmlog soak --minutes 10` is the
long form (RELIABILITY.md)."""

from __future__ import annotations

import os

from shmlog.soak.runner import Runner


def test_soak_under_random_kills(tmp_path):
    seed = int(os.environ.get("SHMLOG_SOAK_SEED", "16"))
    fig = Runner(tmp_path / "soak", seconds=45, seed=seed, kill_every=2.0, rate=100.0,
                 log=lambda msg: None).run()
    assert fig["violations"] == [], fig
    assert fig["kills_total"] >= 15, fig["kills"]
    assert fig["acked_by_topic"].get("soak-disk") and fig["acked_by_topic"].get("soak-mem"), fig
    assert not fig["leaked_segments"] and not fig["leaked_processes"]
