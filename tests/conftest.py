"""Fixtures shared by every test: a private data dir and shared-memory prefix,
and a leak check that fails the test if a /dev/shm segment or a child
process of ours outlives it (invariant 5)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest

SHM_DIR = Path("/dev/shm")


def _segments(marker: str):
    try:
        return sorted(p.name for p in SHM_DIR.iterdir() if marker in p.name)
    except FileNotFoundError:
        return []


def _cluster_id(data_dir: Path):
    try:
        return (data_dir / "cluster_id").read_text().strip()
    except OSError:
        return None


def _supervisors_of(data_dir: Path):
    out = []
    needle = str(data_dir)
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(needle == a or a.startswith(needle + os.sep) for a in cmd) and p.pid != os.getpid():
            out.append(p)
    return out


@pytest.fixture
def shm_prefix():
    """A shared-memory name prefix private to this test ("/shmlog-t<id>")."""
    prefix = f"shmlog-t{uuid.uuid4().hex[:12]}"
    yield "/" + prefix
    left = _segments(prefix)
    for name in left:
        try:
            os.unlink(SHM_DIR / name)
        except OSError:
            pass
    assert not left, f"shared-memory segments outlived the test: {left}"


@pytest.fixture
def data_dir(tmp_path):
    """A data dir private to this test; fails if a supervisor or a region of
    its cluster outlives the test."""
    d = tmp_path / "data"
    yield d
    deadline = time.monotonic() + 5
    procs = _supervisors_of(d)
    while procs and time.monotonic() < deadline:
        time.sleep(0.05)
        procs = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    cid = _cluster_id(d)
    left = _segments(cid) if cid else []
    for name in left:
        try:
            os.unlink(SHM_DIR / name)
        except OSError:
            pass
    assert not procs, f"supervisor processes outlived the test: {[p.pid for p in procs]}"
    assert not left, f"shared-memory segments outlived the test: {left}"


@pytest.fixture(autouse=True)
def no_stray_children():
    """Every child process a test starts must be gone when it ends."""
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 5
    kids = []
    while time.monotonic() < deadline:
        # multiprocessing's resource tracker is per-interpreter, not per-test
        kids = [
            k for k in me.children(recursive=True)
            if _alive(k) and "resource_tracker" not in _cmd(k) and "forkserver" not in _cmd(k)
        ]
        if not kids:
            break
        time.sleep(0.05)
    for k in kids:
        try:
            os.kill(k.pid, signal.SIGKILL)
        except OSError:
            pass
    assert not kids, f"child processes outlived the test: {[(k.pid, _cmd(k)) for k in kids]}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:120]
    except psutil.Error:
        return "?"
