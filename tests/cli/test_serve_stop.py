"""`shmlog serve --detach` reports whether the supervisor started (exit 0
once it serves, 1 with the reason), logs to DATA_DIR/supervisor.log, and
`shmlog serve --stop` stops it."""

from __future__ import annotations

import subprocess
import sys

from _broker_helpers import SMALL, pid_gone, segments_of, stop_supervisor, supervisors_of, wait_for

import shmlog


def run(data_dir, *args):
    r = subprocess.run([sys.executable, "-m", "shmlog", *args, "--data-dir", str(data_dir)],
                       capture_output=True, timeout=60, cwd=str(data_dir.parent))
    r.out, r.err = r.stdout.decode(), r.stderr.decode()
    return r


def test_serve_detach_then_stop(data_dir):
    try:
        r = run(data_dir, "serve", "--detach")
        assert r.returncode == 0, r.err
        # nothing of the supervisor's log on the launching terminal
        assert r.err == "" and "INFO" not in r.out, (r.out, r.err)
        assert "serving" in r.out and "--stop" in r.out
        with shmlog.connect(data_dir, start=False) as cluster:
            pid = cluster.supervisor_pid
            assert f"pid {pid}" in r.out
            cluster.create_topic("t", **SMALL)
        assert "serving" in (data_dir / "supervisor.log").read_text()

        # a second one cannot serve the same dir, and says so
        r = run(data_dir, "serve", "--detach")
        assert r.returncode == 1, (r.out, r.err)
        assert "already serving" in r.err and str(pid) in r.err
        assert supervisors_of(data_dir) == [pid]

        r = run(data_dir, "serve", "--stop")
        assert r.returncode == 0, r.err
        assert f"pid {pid}" in r.out
        wait_for(lambda: pid_gone(pid), 5, what="the stopped supervisor to be reaped")
        assert segments_of(data_dir) == []
        assert not (data_dir / "shmlog.sock").exists()

        r = run(data_dir, "serve", "--stop")
        assert r.returncode == 1 and "no supervisor is serving" in r.err, (r.out, r.err)
    finally:
        stop_supervisor(data_dir)


def test_serve_detach_that_cannot_start_exits_1(data_dir):
    data_dir.mkdir(mode=0o700)
    (data_dir / "meta.json").write_text("{not json")
    r = run(data_dir, "serve", "--detach")
    assert r.returncode == 1, (r.out, r.err)
    assert "meta.json" in r.err and "corrupt" in r.err
    assert supervisors_of(data_dir) == []
