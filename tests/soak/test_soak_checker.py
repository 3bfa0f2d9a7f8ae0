"""The soak's checker must fail on each kind of violation: a checker that
cannot fail proves nothing. Synthetic worker logs, one defect each."""

from __future__ import annotations

from pathlib import Path

import pytest

from shmlog.soak import checker

GROUPS = ("g1", "g2")
ENDS = {"d": [3], "m": [2]}


def _write(run: Path, name: str, lines) -> None:
    (run / name).write_text("".join(line + "\n" for line in lines))


def _clean(run: Path) -> None:
    _write(run, "prod-p0.1.log", ["A d 0 0 0", "A d 0 1 1", "A d 0 2 2", "A m 0 0 3", "A m 0 1 4"])
    msgs = ["M d 0 0 p0.1 0", "M d 0 1 p0.1 1", "M d 0 2 p0.1 2", "M m 0 0 p0.1 3", "M m 0 1 p0.1 4"]
    for g in GROUPS:
        _write(run, f"mem-{g}-{g}m0.1.log", ["R 1.0", "B 2.0", *msgs, "C 3.0 d 0 3", "C 3.0 m 0 2", "G 0.5"])
    _write(run, "reader-r0.1.log", ["P d 0 3", "G 0.25"])


def test_clean_run_passes(tmp_path):
    _clean(tmp_path)
    fig = checker.check(tmp_path, ENDS, GROUPS, "d")
    fig.update(drained=True, max_stall_allowed_s=30)
    assert checker.violations(fig) == []
    assert fig["acked"] == 5 and fig["lost"] == 0 and fig["longest_stall_s"] == 0.5


def _mutate(run: Path, name: str, old: str, new: str) -> None:
    p = run / name
    p.write_text(p.read_text().replace(old, new, 1))


@pytest.mark.parametrize("name,old,new,key", [
    ("mem-g2-g2m0.1.log", "M d 0 1 p0.1 1\n", "", "lost"),
    ("mem-g1-g1m0.1.log", "M m 0 1 p0.1 4", "M m 0 1 p0.1 5", "altered"),
    ("mem-g1-g1m0.1.log", "M d 0 2 p0.1 2\n", "M d 0 2 p0.1 2\nM d 0 1 p0.1 1\n", "order_breaks"),
    ("mem-g1-g1m0.1.log", "G 0.5\n", "G 0.5\nB 4.0\nM d 0 1 p0.1 1\n", "duplicates_beyond_window"),
    ("reader-r0.1.log", "P d 0 3", "P d 0 2", "reader_short"),
    ("mem-g1-g1m0.1.log", "G 0.5", "G 31.0", "longest_stall_s"),
])
def test_each_violation_is_caught(tmp_path, name, old, new, key):
    _clean(tmp_path)
    _mutate(tmp_path, name, old, new)
    fig = checker.check(tmp_path, ENDS, GROUPS, "d")
    fig.update(drained=True, max_stall_allowed_s=30)
    found = checker.violations(fig)
    assert any(v.startswith(key) for v in found), found


def test_redelivery_inside_the_committed_window_is_not_a_violation(tmp_path):
    # a member killed after logging offsets 1-2 but before committing them:
    # its successor fetches from the committed offset (1) again
    _clean(tmp_path)
    _write(tmp_path, "mem-g1-g1m0.2.log", ["B 2.5", "M d 0 1 p0.1 1", "M d 0 2 p0.1 2"])
    _mutate(tmp_path, "mem-g1-g1m0.1.log", "C 3.0 d 0 3", "C 3.0 d 0 1")
    fig = checker.check(tmp_path, ENDS, GROUPS, "d")
    fig.update(drained=True, max_stall_allowed_s=30)
    assert checker.violations(fig) == []
    assert fig["duplicates"]["g1"] == 2


def test_a_torn_last_line_is_dropped(tmp_path):
    _clean(tmp_path)
    with open(tmp_path / "prod-p0.1.log", "a") as f:
        f.write("A d 0 3 9")  # SIGKILL mid-write: not acknowledged
    fig = checker.check(tmp_path, ENDS, GROUPS, "d")
    assert fig["acked"] == 5
