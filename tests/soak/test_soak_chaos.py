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


def test_soak_kills_the_kafka_listener_too(tmp_path):
    """With a Kafka listener the chaos SIGKILLs it as well (and the
    supervisor, which restarts it): every kill is followed by a listener
    that answers Kafka clients again, and the pipeline's invariants hold."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fig = Runner(tmp_path / "soak", seconds=15, seed=14, kill_every=1.5, rate=100.0,
                 kinds=("listener", "supervisor"), kafka_listener=f"127.0.0.1:{port}",
                 log=lambda msg: None).run()
    assert fig["violations"] == [], fig
    assert fig["kills"]["listener"] >= 2, fig["kills"]
    assert not fig["listener_not_restarted"]
    assert not fig["leaked_segments"] and not fig["leaked_processes"]
