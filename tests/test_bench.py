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
