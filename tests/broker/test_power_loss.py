"""Invariant 1 across a simulated power loss: producers killed mid-stream
with the supervisor, shared memory unlinked (a reboot), the active
segments' tails torn past what was fsynced and their indexes scribbled.
Everything flush(durable=True) acknowledged comes back, nothing corrupt is
served, `shmlog dump` reports the torn tails before recovery and finds the
segments clean after it."""

from __future__ import annotations

from shmlog.soak.powerloss import power_loss_runs


def test_durable_messages_survive_power_loss(tmp_path):
    fig = power_loss_runs(tmp_path / "pl", runs=3, seed=16, log=lambda m: None)
    assert fig["violations"] == [], fig
    assert fig["runs"] == 3 and fig["durable_acked"] > 0
    assert fig["recovered"] == fig["durable_acked"] and fig["corrupt_served"] == 0
    assert fig["dump_clean_after"] == 3
