"""`shmlog demo`: the README's first command.

Short real runs through a subprocess: the demo checks its own result (every
event id exactly once), exits 0, and leaves no supervisor, child process or
shared-memory region behind. Plus the pure pieces (latency buckets, the
exactly-once check) on crafted data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shmlog
from shmlog.cli import demo


def _run_demo(data_dir: Path, *extra: str, timeout: float = 120, code: str = ""):
    if code:
        cmd = [sys.executable, "-c", code, "demo", "--data-dir", str(data_dir), *extra]
    else:
        cmd = [sys.executable, "-m", "shmlog", "demo", "--data-dir", str(data_dir), *extra]
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=str(data_dir.parent))
    r.out, r.err = r.stdout.decode(), r.stderr.decode()
    return r


def _assert_nothing_left(data_dir: Path) -> None:
    with pytest.raises(shmlog.BrokerNotRunning):
        shmlog.connect(data_dir, start=False)
    cid = (data_dir / "cluster_id").read_text().strip()
    left = [n for n in os.listdir("/dev/shm") if cid in n]
    assert not left, f"regions left behind: {left}"
    assert not (data_dir / "shmlog.sock").exists()


def _assert_verified(r) -> None:
    assert r.returncode == 0, (r.out, r.err)
    assert "verified   yes" in r.out, r.out
    assert "0 missing, 0 duplicated" in r.out
    for word in ("messages", "rate", "latency", "p50", "p99", "keys"):
        assert word in r.out, word


def test_demo_short_run_verifies_itself_and_leaves_nothing(data_dir):
    t0 = time.monotonic()
    r = _run_demo(data_dir, "--seconds", "5")
    took = time.monotonic() - t0
    _assert_verified(r)
    assert "started by the demo" in r.out
    # not a terminal: plain progress lines, about one a second, no ANSI codes
    progress = [ln for ln in r.out.splitlines() if "produced" in ln and "lag" in ln and "buffer" in ln]
    assert len(progress) >= 3, r.out
    assert "\x1b[" not in r.out and "\r" not in r.out
    assert took < 60
    _assert_nothing_left(data_dir)


@pytest.fixture
def running(data_dir):
    """A supervisor this test started (the demo must leave it running)."""
    c = shmlog.connect(data_dir)
    yield c
    c.shutdown()


def test_demo_reruns_and_keeps_a_supervisor_it_did_not_start(running, data_dir):
    for _ in range(2):
        r = _run_demo(data_dir, "--seconds", "2")
        _assert_verified(r)
        assert "already running" in r.out
        # still there, still answering
        assert running.describe_topic("demo-events").partitions[0].end_offset >= 0
    assert len(running.topics()["demo-events"].partitions) == 4


def test_demo_stops_early_on_ctrl_c(data_dir):
    p = subprocess.Popen([sys.executable, "-m", "shmlog", "demo", "--data-dir", str(data_dir),
                          "--seconds", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=str(data_dir.parent))
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = p.stdout.readline().decode()
            assert line, "the demo ended before it started producing: " + "".join(lines)
            lines.append(line)
            if "produced" in line:
                break
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert time.monotonic() - t0 < 30
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    text = "".join(lines) + out.decode()
    assert p.returncode == 0, (text, err.decode())
    assert "interrupted after" in text and "verified   yes" in text
    _assert_nothing_left(data_dir)


def test_demo_rejects_a_bad_duration(data_dir):
    r = _run_demo(data_dir, "--seconds", "0")
    assert r.returncode == 1 and len(r.err.strip().splitlines()) == 1 and "--seconds" in r.err
    assert not (data_dir / "shmlog.sock").exists()


# ---------------------------------------------------------------- pure parts
def test_latency_buckets_are_monotonic_and_tight():
    prev = -1
    for us in list(range(0, 5000)) + [10**k + d for k in range(4, 10) for d in (-1, 0, 1, 12345)]:
        b = demo.bucket(us)
        lo, hi = demo.bucket_bounds(b)
        assert lo <= us < hi, (us, b, lo, hi)
        assert (hi - lo) <= max(1, us / 31), (us, lo, hi)
        if us < 5000:
            assert b >= prev
            prev = b


def test_percentiles():
    hist = {}
    for us in range(1, 1001):
        b = demo.bucket(us)
        hist[b] = hist.get(b, 0) + 1
    assert demo.percentile_us(hist, 0.5) == pytest.approx(500, rel=0.04)
    assert demo.percentile_us(hist, 0.99) == pytest.approx(990, rel=0.04)
    assert demo.percentile_us({}, 0.5) is None


def test_verify_counts_missing_duplicated_and_unexpected():
    sent = {0: 6, 1: 4}
    w0 = [bytes([1, 1, 1, 0, 0, 0]), bytes([1, 1, 0, 0])]
    w1 = [bytes([0, 0, 0, 1, 1, 1]), bytes([0, 0, 1, 1])]
    assert demo.verify(sent, [w0, w1], 0) == (0, 0, 0)
    # producer 0's id 2 seen by both workers, producer 1's id 3 by nobody
    w1b = [bytes([0, 0, 1, 1, 1, 1]), bytes([0, 0, 1, 0])]
    assert demo.verify(sent, [w0, w1b], 0) == (1, 1, 0)
    # an id past what the producer says it sent, and a worker's own duplicates
    w1c = [bytes([0, 0, 0, 1, 1, 1, 1]), bytes([0, 0, 1, 1])]
    assert demo.verify(sent, [w0, w1c], 3) == (0, 3, 1)
    # a worker that saw nothing of a producer
    assert demo.verify({0: 2}, [[b"\x01\x01"], [b""]], 0) == (0, 0, 0)
