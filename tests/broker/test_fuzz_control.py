"""Invariant 4 on the control socket: a few thousand seeded garbage,
truncated, huge-length and wrong-typed requests at a real supervisor; it
must answer each well-framed one, never die, never hang, and never fail
with an internal error (a missing schema check). `shmlog soak --fuzz` runs
100k."""

from __future__ import annotations

from shmlog.soak.fuzz import fuzz_control


def test_control_socket_survives_fuzz(data_dir):
    fig = fuzz_control(data_dir, 4000, seed=16, log=lambda m: None)
    assert fig["requests"] == 4000
    assert fig["supervisor_died"] == 0 and fig["hangs"] == 0, fig
    assert fig["internal_error_count"] == 0, fig["internal_errors"]
    # the fuzz reached past the framing into the handlers
    assert fig["replies"] > 1000 and len(fig["error_replies"]) >= 4, fig
