"""The supervisor: failover after SIGKILL, clean exit on SIGTERM / idle /
shutdown, one per data dir, and a control socket that survives any input.

Fault tests kill the real supervisor process while real client processes
stream through a memory topic, then check that nothing was lost or
duplicated and that a new supervisor took over without anyone starting it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import queue
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

import posix_ipc
import pytest
from _broker_helpers import (
    FORK,
    SMALL,
    Children,
    collect,
    frame,
    partition_regions,
    pid_gone,
    raw_socket,
    recv_frame,
    running_cluster,
    segments_of,
    stop_supervisor,
    supervisor_lock_free,
    supervisor_pid,
    supervisors_of,
    wait_for,
)

import shmlog

TOPIC = "stream"


def _serving_pid(data_dir):
    """The pid of the supervisor that answers a hello right now, or None."""
    try:
        s = raw_socket(data_dir, timeout=1)
    except OSError:
        return None
    with s:
        try:
            s.sendall(frame(json.dumps({"op": "hello", "pid": os.getpid()}).encode()))
            body = recv_frame(s)
        except OSError:
            return None
    if body is None:
        return None
    reply = json.loads(body)
    return reply.get("supervisor_pid") if reply.get("ok") else None


def _released(data_dir):
    """The dead supervisor's listener refuses connections and its lock is free."""
    try:
        raw_socket(data_dir, timeout=1).close()
        return False
    except ConnectionRefusedError:
        pass
    except OSError:
        return False
    return supervisor_lock_free(data_dir)


def _watchers():
    """Live session-watcher threads in this process (one per open Cluster)."""
    return sum(1 for t in threading.enumerate() if t.name == "shmlog-session" and t.is_alive())


# ---------------------------------------------------------------- failover
def _stream_producer(data_dir, stop):
    """send() one message at a time, alternating partitions, until stopped."""
    with shmlog.connect(data_dir) as cluster, cluster.producer() as producer:
        n = 0
        while not stop.is_set():
            producer.send(TOPIC, b"%d" % n, partition=n % 2)
            n += 1
            if n % 5 == 0:
                time.sleep(0.002)
        producer.flush()
        time.sleep(0.5)  # let a pending failover finish before looking
        return n, _watchers(), cluster.failovers


def _stream_consumer(data_dir, target_q):
    with shmlog.connect(data_dir) as cluster, cluster.consumer(TOPIC) as consumer:
        got, target = [], None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (target is None or len(got) < target):
            got.extend((m.partition, m.offset, bytes(m.value))
                       for m in consumer.consume(max_messages=10_000, timeout=0.1))
            if target is None:
                try:
                    target = target_q.get_nowait()
                except queue.Empty:
                    pass
        got.extend((m.partition, m.offset, bytes(m.value)) for m in consumer.consume(timeout=0.3))
        return got, _watchers()


LINGERING_LOCK_BUG = (
    "BUG: Cluster._elect_and_start (shmlog/cluster.py) checks the supervisor lock once: a lock "
    "still held by a SIGKILLed supervisor (the kernel releases it a moment after the process "
    "is gone) is taken for 'one is starting', and the elected client waits for a socket until "
    "its timeout instead of starting a supervisor as soon as the lock is free")


# The bug is a race that hits this test in some runs only, so the marker
# cannot be strict; test_connect_while_a_dead_supervisors_lock_lingers is
# its deterministic (strict) witness. Drop both markers once the fix lands.
def test_sigkill_supervisor_midstream_five_times(data_dir, tmp_path):
    """SIGKILL the supervisor while a producer and a consumer process stream,
    five times in a row: each time a new one serves within 2 s without
    anyone starting it by hand, the clients carry on, nothing is lost or
    doubled, and every client still watches its supervisor afterwards."""
    kills = 5
    with running_cluster(data_dir) as cluster, Children(tmp_path) as kids:
        extra = [shmlog.connect(data_dir) for _ in range(4)]  # more clients racing to take over
        try:
            cluster.create_topic(TOPIC, partitions=2, **SMALL)
            stop, target_q = FORK.Event(), FORK.Queue()
            cons = kids.start(_stream_consumer, data_dir, target_q)
            prod = kids.start(_stream_producer, data_dir, stop)
            wait_for(lambda: cluster.describe_topic(TOPIC).partitions[1].end_offset > 100, 10,
                     what="the stream to start")
            restarts, pid = [], _serving_pid(data_dir)
            assert pid and pid == supervisor_pid(data_dir)
            for _ in range(kills):
                os.kill(pid, signal.SIGKILL)
                t0 = time.monotonic()
                new = wait_for(lambda old=pid: (p := _serving_pid(data_dir)) and p != old and p, 10,
                               interval=0.005, what="a new supervisor")
                restarts.append(time.monotonic() - t0)
                pid = new
                time.sleep(0.4)  # stream through the new one for a while
            stop.set()
            n, prod_watchers, prod_failovers = Children.result(prod, timeout=30)
            target_q.put(n)
            got, cons_watchers = Children.result(cons, timeout=60)

            assert max(restarts) < 2.0, f"restart took {max(restarts):.2f}s"
            time.sleep(0.3)
            assert supervisors_of(data_dir) == [pid], "not exactly one supervisor after failover"
            assert n > 200
            assert len(got) == n, f"consumer got {len(got)} of {n}"
            for part, msgs in by_partition_tuples(got).items():
                assert [o for o, _ in msgs] == list(range(len(msgs))), f"partition {part}: offsets"
                assert [int(v) for _, v in msgs] == list(range(part, n, 2)), f"partition {part}: values"
            info = cluster.describe_topic(TOPIC)
            assert sum(p.end_offset for p in info.partitions) == n
            assert cluster.supervisor_pid == pid
            # each client is still watching (would survive one more death)
            assert prod_watchers == 1 and cons_watchers == 1
            assert _watchers() == 1 + len(extra)
            assert prod_failovers >= 1
        finally:
            for c in extra:
                c.close()


def by_partition_tuples(got):
    out = {}
    for part, off, value in got:
        out.setdefault(part, []).append((off, value))
    return out


def test_lone_client_restarts_supervisor_ten_times(data_dir):
    """One client, ten SIGKILLs: it restarts the supervisor every time."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **SMALL)
        for k in range(1, 11):
            old = cluster.supervisor_pid
            os.kill(old, signal.SIGKILL)
            wait_for(lambda old=old, k=k: cluster.failovers == k and cluster.supervisor_pid != old, 5,
                     what=f"failover #{k}")
        assert cluster.describe_topic(TOPIC).name == TOPIC


def test_connect_while_a_dead_supervisors_lock_lingers(data_dir):
    """The supervisor lock is still held (as by a supervisor that was just
    SIGKILLed) and nothing listens: once the lock is let go, connect()
    starts a supervisor at once instead of waiting out its timeout."""
    data_dir.mkdir(mode=0o700, parents=True)
    fd = os.open(data_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    releaser = threading.Timer(0.5, lambda: (fcntl.flock(fd, fcntl.LOCK_UN), os.close(fd)))
    releaser.start()
    t0 = time.monotonic()
    try:
        with running_cluster(data_dir, timeout=4) as cluster:
            took = time.monotonic() - t0
            assert cluster.topics() == {}
        assert took < 2.5, f"connect took {took:.1f}s"
    finally:
        releaser.join()


def test_regions_survive_supervisor_crash_and_stale_ones_are_reclaimed(data_dir):
    """Kill the supervisor with no client attached: its regions and socket
    stay behind. The next connect starts a new one that re-attaches the
    regions (data intact, offsets continue) and unlinks a stray one."""
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **SMALL)
        with cluster.producer() as producer:
            producer.send_batch(TOPIC, [b"m%d" % i for i in range(50)], partition=0)
        pid = cluster.supervisor_pid
        cid = cluster.cluster_id
        cluster.close()  # nobody left to fail over
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pid_gone(pid), 5, what="the supervisor to die")
        # the kernel may release a killed process's listener and flock a moment
        # after it is gone; connecting inside that window hits the
        # LINGERING_LOCK_BUG, which test_connect_while_a_dead_supervisors_lock_lingers pins
        wait_for(lambda: _released(data_dir), 5, what="the dead listener and lock to be released")
        assert segments_of(data_dir), "regions should outlive a crash"
        assert (data_dir / "shmlog.sock").exists()
        stray = posix_ipc.SharedMemory(f"/shmlog-{cid}-999-0", posix_ipc.O_CREX, mode=0o600, size=4096)
        stray.close_fd()

        with shmlog.connect(data_dir, idle_timeout_s=30) as again:
            assert again.supervisor_pid != pid and again.cluster_id == cid
            assert f"shmlog-{cid}-999-0" not in segments_of(data_dir)
            with again.consumer(TOPIC) as consumer:
                assert [m.value for m in collect(consumer, 50, timeout=10)] == [b"m%d" % i for i in range(50)]
            with again.producer() as producer:
                producer.send(TOPIC, b"next", partition=0)
            with again.consumer(TOPIC) as consumer:
                consumer.seek(TOPIC, 0, 50)
                m = collect(consumer, 1, timeout=10)[0]
                assert (m.offset, m.value) == (50, b"next")
            again.shutdown(timeout=0)


# ---------------------------------------------------------------- clean exits
def test_sigterm_is_a_clean_shutdown(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("a", partitions=2, **SMALL)
        cluster.create_topic("b", partitions=1, **SMALL)
        with cluster.producer() as producer:
            producer.send("a", b"x")
        assert len(partition_regions(data_dir)) == 3
        pid = cluster.supervisor_pid
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: pid_gone(pid), 10, what="the supervisor to exit on SIGTERM")
        assert segments_of(data_dir) == []
        assert not (data_dir / "shmlog.sock").exists()
        time.sleep(1.0)
        # clients were told "bye": a clean stop is not a crash to fail over from
        assert supervisors_of(data_dir) == []
        assert cluster.failovers == 0


def test_idle_auto_started_supervisor_exits(data_dir):
    with running_cluster(data_dir, idle_timeout_s=1) as cluster:
        cluster.create_topic("t", partitions=2, **SMALL)
        pid = cluster.supervisor_pid
        time.sleep(1.6)
        assert not pid_gone(pid), "exited while a client was connected"
        assert segments_of(data_dir)
        cluster.close()
        t0 = time.monotonic()
        wait_for(lambda: pid_gone(pid), 5, what="the idle supervisor to exit")
        assert time.monotonic() - t0 >= 0.5
        assert segments_of(data_dir) == []
        assert not (data_dir / "shmlog.sock").exists()
        assert supervisors_of(data_dir) == []


def test_auto_start_from_a_source_checkout_without_the_built_core(data_dir, tmp_path, monkeypatch):
    """`pip install . && shmlog demo` run inside the clone: the working
    directory holds a shmlog/ package without _core, which `python -m
    shmlog` would import first. The supervisor must import the client's
    shmlog wherever it is started from, relative PYTHONPATH entries too."""
    shadow = tmp_path / "checkout"
    (shadow / "shmlog").mkdir(parents=True)
    (shadow / "shmlog" / "__init__.py").write_text("raise ImportError('a source tree without _core')\n")
    (shadow / "shmlog" / "__main__.py").write_text("raise SystemExit(3)\n")
    monkeypatch.chdir(shadow)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["."] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=1, **SMALL)
        with cluster.producer() as producer:
            producer.send("t", b"x")
        assert not pid_gone(cluster.supervisor_pid)
        assert os.readlink(f"/proc/{cluster.supervisor_pid}/cwd") == "/"


def _auto_start_and_leave(data_dir):
    cluster = shmlog.connect(data_dir, idle_timeout_s=1)
    cluster.create_topic("t", partitions=2, **SMALL)
    with cluster.producer() as producer:
        producer.send("t", b"x")
    return cluster.supervisor_pid  # and the process exits without close()


def test_idle_supervisor_exits_after_last_client_process_is_gone(data_dir, tmp_path):
    try:
        with Children(tmp_path) as kids:
            pid = Children.result(kids.start(_auto_start_and_leave, data_dir))
        t0 = time.monotonic()
        assert segments_of(data_dir) and not pid_gone(pid)
        wait_for(lambda: pid_gone(pid), 6, what="the idle supervisor to exit")
        assert time.monotonic() - t0 >= 0.3
        assert segments_of(data_dir) == []
        assert not (data_dir / "shmlog.sock").exists()
    finally:
        stop_supervisor(data_dir)


def test_shutdown_stops_supervisor_for_every_client(data_dir):
    with running_cluster(data_dir) as cluster:
        other = shmlog.connect(data_dir)
        cluster.create_topic("t", **SMALL)
        pid = cluster.supervisor_pid
        other.shutdown(timeout=0)
        wait_for(lambda: pid_gone(pid), 10, what="the supervisor to stop")
        time.sleep(0.5)
        assert supervisors_of(data_dir) == [] and cluster.failovers == 0
        assert segments_of(data_dir) == []


def test_start_false_needs_a_running_supervisor(data_dir):
    with pytest.raises(shmlog.BrokerNotRunning, match=str(data_dir)):
        shmlog.connect(data_dir, start=False)
    assert supervisors_of(data_dir) == []
    with running_cluster(data_dir) as cluster, shmlog.connect(data_dir, start=False) as c2:
        assert c2.supervisor_pid == cluster.supervisor_pid
        assert c2.cluster_id == cluster.cluster_id


def test_second_supervisor_on_same_dir_is_refused(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", **SMALL)
        pid = cluster.supervisor_pid
        r = subprocess.run([sys.executable, "-m", "shmlog", "serve", "--data-dir", str(data_dir)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert f"pid {pid}" in r.stderr and "already" in r.stderr
        assert _serving_pid(data_dir) == pid
        assert supervisor_pid(data_dir) == pid  # the lock file was not overwritten
        assert cluster.describe_topic("t").name == "t"


def test_permissions_are_owner_only(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", partitions=2, **SMALL)
        assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
        sock = os.stat(data_dir / "shmlog.sock")
        assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
        assert len(partition_regions(data_dir)) == 2
        for name in segments_of(data_dir):
            assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o600, name
        for name in ("supervisor.lock", "failover.lock"):
            mode = stat.S_IMODE(os.stat(data_dir / name).st_mode)
            assert mode & 0o077 == 0, (name, oct(mode))


# ---------------------------------------------------------------- the control socket
GARBAGE_FRAMES = {
    "text-no-length": b"hello world, this is not a frame",
    "2GiB-length": struct.pack(">I", 2 << 30) + b"{}",
    "4GiB-length": b"\xff\xff\xff\xff",
    "just-over-max": struct.pack(">I", (1 << 20) + 1) + b"{" * 100,
}
BAD_BODIES = {
    "not-json": b"not json {",
    "bad-utf8": b"\xff\xfe\xfd",
    "json-array": b"[1, 2, 3]",
    "json-string": b'"topics"',
    "json-null": b"null",
    "pickle": pickle.dumps({"op": "topics"}),
    "empty": b"",
    "no-op": b"{}",
    "op-not-str": b'{"op": 5}',
    "unknown-op": b'{"op": "frobnicate"}',
    "dunder-op": b'{"op": "__init__"}',
    "name-int": b'{"op": "create_topic", "name": 5}',
    "name-path": b'{"op": "create_topic", "name": "../../etc"}',
    "config-list": b'{"op": "create_topic", "name": "x", "config": []}',
    "partitions-str": b'{"op": "create_topic", "name": "x", "config": {"partitions": "4"}}',
    "partitions-bool": b'{"op": "create_topic", "name": "x", "config": {"partitions": true}}',
    "partitions-huge": b'{"op": "create_topic", "name": "x", "config": {"partitions": 1e308}}',
    "retention-nan": b'{"op": "create_topic", "name": "x", "config": {"retention_ms": NaN}}',
    "chunk-negative": b'{"op": "create_topic", "name": "x", "config": {"chunk_bytes": -65536}}',
    "unknown-setting": b'{"op": "create_topic", "name": "x", "config": {"bogus": 1}}',
    "describe-list": b'{"op": "describe_topic", "name": ["data"]}',
    "describe-missing": b'{"op": "describe_topic"}',
    "metadata-dict": b'{"op": "metadata", "name": {"a": 1}}',
    "add-str": b'{"op": "add_partitions", "name": "data", "partitions": "8"}',
    "add-float": b'{"op": "add_partitions", "name": "data", "partitions": 2.5}',
    "add-fewer": b'{"op": "add_partitions", "name": "data", "partitions": 1}',
    "add-too-many": b'{"op": "add_partitions", "name": "data", "partitions": 100000}',
    "alter-str": b'{"op": "alter_topic", "name": "data", "config": {"retention_ms": "soon"}}',
    "alter-storage": b'{"op": "alter_topic", "name": "data", "config": {"storage": "disk"}}',
    "delete-null": b'{"op": "delete_topic", "name": null}',
    "hello-pid-str": b'{"op": "hello", "pid": "me"}',
    "hello-session-str": b'{"op": "hello", "session": "yes"}',
}


def _check_still_serving(cluster, pid):
    """Same supervisor, same single topic, data intact, new clients work."""
    assert _serving_pid(cluster.data_dir) == pid, "the supervisor died (or was replaced)"
    assert set(cluster.topics()) == {"data"}
    info = cluster.describe_topic("data")
    assert [p.end_offset for p in info.partitions] == [100, 0]
    with shmlog.connect(cluster.data_dir, start=False) as c2, c2.consumer("data") as consumer:
        msgs = collect(consumer, 100, timeout=10)
        assert [m.value for m in msgs] == [b"d%d" % i for i in range(100)]


def _data_cluster(cluster):
    cluster.create_topic("data", partitions=2, **SMALL)
    with cluster.producer() as producer:
        producer.send_batch("data", [b"d%d" % i for i in range(100)], partition=0)
    return cluster.supervisor_pid


def test_garbage_frames_on_control_socket(data_dir):
    with running_cluster(data_dir) as cluster:
        pid = _data_cluster(cluster)
        for name, junk in GARBAGE_FRAMES.items():
            with raw_socket(data_dir) as s:
                s.sendall(junk)
                body = recv_frame(s)  # an error reply, then the connection is closed
                assert body is not None, name
                reply = json.loads(body)
                assert reply["ok"] is False and reply["error"] == "ProtocolError", (name, reply)
                assert "exceeds" in reply["message"], (name, reply)
                assert recv_frame(s) is None, f"{name}: connection left open"
        _check_still_serving(cluster, pid)


def test_bad_requests_on_control_socket(data_dir):
    with running_cluster(data_dir) as cluster:
        pid = _data_cluster(cluster)
        with raw_socket(data_dir) as s:  # all on one connection: it stays usable
            for name, body in BAD_BODIES.items():
                s.sendall(frame(body))
                reply = recv_frame(s)
                assert reply is not None, f"{name}: connection closed"
                reply = json.loads(reply)
                assert reply["ok"] is False, (name, reply)
                assert reply.get("error") and reply.get("message"), (name, reply)
                assert "internal error" not in reply["message"], (name, reply)
            s.sendall(frame(b'{"op": "topics"}'))
            assert set(json.loads(recv_frame(s))["topics"]) == {"data"}
        _check_still_serving(cluster, pid)


def test_deeply_nested_request_is_a_protocol_error(data_dir):
    with running_cluster(data_dir) as cluster:
        pid = _data_cluster(cluster)
        with raw_socket(data_dir) as s:
            s.sendall(frame(b"[" * 200_000))
            reply = json.loads(recv_frame(s))
        _check_still_serving(cluster, pid)  # it survives either way
        assert reply["ok"] is False and reply["error"] == "ProtocolError", reply


def test_truncated_and_abandoned_requests(data_dir):
    """Half a frame, then silence or a hang-up: others are served meanwhile."""
    with running_cluster(data_dir) as cluster:
        pid = _data_cluster(cluster)
        hung = raw_socket(data_dir)
        hung.sendall(struct.pack(">I", 1000) + b'{"op": "top')  # and never the rest
        half = raw_socket(data_dir)
        half.sendall(b"\x00\x00")
        t0 = time.monotonic()
        _check_still_serving(cluster, pid)
        assert time.monotonic() - t0 < 5
        hung.close()
        half.close()
        for _ in range(50):  # many connections that hang up at once
            s = raw_socket(data_dir)
            s.sendall(frame(b'{"op": "topics"}')[:7])
            s.close()
        _check_still_serving(cluster, pid)


def test_client_that_never_reads_replies_does_not_stall_others(data_dir):
    with running_cluster(data_dir) as cluster:
        pid = _data_cluster(cluster)
        greedy = raw_socket(data_dir)
        greedy.setblocking(False)
        req = frame(b'{"op": "topics"}')
        sent = 0
        try:
            for _ in range(20_000):
                greedy.send(req)
                sent += 1
        except (BlockingIOError, socket.timeout):
            pass
        assert sent > 100
        time.sleep(0.3)
        took = []

        def ask():
            t0 = time.monotonic()
            cluster.describe_topic("data")
            took.append(time.monotonic() - t0)

        t = threading.Thread(target=ask, daemon=True)
        t.start()
        t.join(3)
        greedy.close()  # unblocks a stalled supervisor either way
        t.join(30)
        assert took and took[0] < 1.0, f"a normal request waited {took[0] if took else '>30'}s"
        _check_still_serving(cluster, pid)
