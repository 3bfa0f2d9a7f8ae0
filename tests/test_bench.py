"""The benchmark suite must keep working: run it end to end in --quick mode
(tiny counts; no figure is asserted) and check that it exits 0, writes its
table, and leaves no shared-memory segment or process behind. Peers that are
not installed are skipped by the suite itself, so this passes without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")
MARK = "shmlog-bench-"


def _bench_segments():
    try:
        return {p.name for p in SHM.iterdir() if p.name.startswith(MARK)}
    except FileNotFoundError:
        return set()


def _bench_processes(since: float, marks):
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if any(m in cmd for m in marks) and p.info["create_time"] >= since - 1 and p.pid != os.getpid():
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append((p.pid, cmd[:120]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


@pytest.mark.skipif(not (ROOT / "bench" / "__main__.py").exists(), reason="no bench/ here")
def test_bench_quick_end_to_end(tmp_path):
    out = tmp_path / "RESULTS.md"
    before = _bench_segments()
    since = time.time()
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    elapsed = time.monotonic() - t
    report = f"exit {proc.returncode} after {elapsed:.0f} s\n--- stdout\n{proc.stdout[-6000:]}" \
             f"\n--- stderr\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, report
    assert "left shared-memory segments" not in proc.stderr, report
    text = out.read_text()
    assert "## Summary (workload x system)" in text, report
    assert "| Workload |" in text and "## Targets" in text and "## Details" in text, report
    # the core level always runs (no peer needed), so its rows must be there
    assert "shmlog-core" in text and "| W2 |" in text, report
    assert "separate processes" in text, report
    # nothing left behind: regions, servers, supervisors, children
    deadline = time.monotonic() + 5
    marks = (MARK, str(out))  # servers' temp dirs; the suite's forked children
    while time.monotonic() < deadline and (_bench_segments() - before
                                           or _bench_processes(since, marks)):
        time.sleep(0.1)
    assert not (_bench_segments() - before), f"segments left: {_bench_segments() - before}"
    assert not _bench_processes(since, marks), f"processes left: {_bench_processes(since, marks)}"


@pytest.mark.skipif(not (ROOT / "bench" / "floor.c").exists(), reason="no bench/floor.c here")
def test_floor_runs_every_wait_mode():
    """bench.floor: floor.c builds with cc (-Wall -Wextra, no warning) and
    each way to wait delivers every message and reports its figures."""
    import shutil
    import tempfile

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    sys.path.insert(0, str(ROOT))
    try:
        from bench import floor
    finally:
        sys.path.remove(str(ROOT))
    with tempfile.TemporaryDirectory() as d:
        exe = floor.build(d)
        r = subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-fsyntax-only", floor.SOURCE],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
        for mode in ("spin", "futex", "spinfutex:20", "adaptive"):
            out = floor.run(exe, mode, 20_000, 300, 20)
            assert set(out) == set(floor.COLUMNS)
            assert 0 < out["p50"] <= out["p99"] <= out["p99.9"], (mode, out)
            assert 0 <= out["same_cpu"] <= 1 and out["consumer_cpu"] > 0, (mode, out)
        bad = subprocess.run([exe, "nap", "1000", "10", "1"], capture_output=True, text=True)
        assert bad.returncode == 2 and "unknown mode nap" in bad.stderr


def test_report_shows_the_default_w4_row_beside_a_tuned_one(tmp_path):
    """A shmlog W4 row with a tuned wait never stands alone in the summary:
    the default wait's row comes first, and the issue's default-settings
    target is judged on the default row, consumer CPU included."""
    sys.path.insert(0, str(ROOT))
    try:
        from bench.common import Row, params
        from bench.report import write_markdown
    finally:
        sys.path.remove(str(ROOT))

    def w4(system, mode, p50, p99, cpu):
        return Row("W4", system, mode=mode, n=100, lat={"p50": p50, "p99": p99, "p99.9": p99},
                   extra={"consumer_cpu": cpu})

    rows = [w4("shmlog", "msg, default wait (spin 50 us)", 28.0, 140.0, 0.66),
            w4("shmlog", "msg, wait spin 1000 us", 7.0, 44.0, 1.0),
            w4("faster-fifo", "msg", 54.0, 172.0, 0.25)]
    out = tmp_path / "r.md"
    systems = ["shmlog", "faster-fifo"]
    mach = dict.fromkeys(("cpu", "cores", "ram", "kernel", "python", "clock"), "?")
    write_markdown(str(out), rows, params(True), "cmd", "date", mach, {}, {}, None, "", 1.0, systems,
                   {s: {} for s in systems})
    text = out.read_text()
    line = next(x for x in text.splitlines() if x.startswith("| W4 |"))
    assert line.index("28.0 / 140.0 us (CPU 66%)") < line.index("tuned: 7.0 / 44.0 us (CPU 100%)"), line
    assert "1.93x default, 7.71x tuned (vs faster-fifo)" in line, line
    target = next(x for x in text.splitlines() if "API W4 with default settings" in x)
    assert "p50 28.0 us, p99 140.0 us, consumer CPU 66%" in target and "NOT met" in target, target
