"""kcat (librdkafka 2.x, Debian's) against the listener: every compression
codec in, and the shmlog API on the other side both ways, with keys,
headers and timestamps intact."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest
from _broker_helpers import kafka_partition
from _kafka_helpers import kafka_cluster

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")

TOPIC = {"storage": "memory", "chunk_bytes": 1 << 20, "chunk_count": 4}
N = 2000


def kcat(bs: str, *args: str, stdin: str = "", quiet: float = 60.0) -> str:
    """Run kcat to its end. It is stopped (and the test fails) only when
    it printed nothing for `quiet` seconds: a loaded host makes it slow,
    not wrong."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(["kcat", "-b", bs, *args], stdin=subprocess.PIPE, stdout=out, stderr=err)
        try:
            p.stdin.write(stdin.encode())
            p.stdin.close()
            size, last = 0, time.monotonic()
            while p.poll() is None:
                now, grown = time.monotonic(), os.fstat(out.fileno()).st_size
                if grown != size:
                    size, last = grown, now
                elif now - last > quiet:
                    raise AssertionError(f"kcat {' '.join(args)} printed nothing for {quiet}s")
                time.sleep(0.05)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
        out.seek(0)
        err.seek(0)
        assert p.returncode == 0, err.read().decode()
        return out.read().decode()


def drain(consumer, n: int):
    got = []
    for _ in range(200):
        got += consumer.consume(n - len(got), timeout=0.2)
        if len(got) >= n:
            break
    return got


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_produces_with_each_codec(codec, data_dir):
    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("t", partitions=2, **TOPIC)
        lines = "".join(f"k{i}:v{i}-{'x' * (i % 50)}\n" for i in range(N))
        kcat(bs, "-P", "-t", "t", "-K:", "-H", "h1=one", "-X", f"compression.codec={codec}",
             "-X", "partitioner=murmur2_random", stdin=lines)
        # shmlog's own consumer reads what kcat wrote
        with cluster.consumer("t") as c:
            got = drain(c, N)
        assert len(got) == N
        by_key = {m.key: m for m in got}
        assert len(by_key) == N
        for i in range(N):
            m = by_key[b"k%d" % i]
            assert m.value == f"v{i}-{'x' * (i % 50)}".encode()
            assert list(m.headers) == [("h1", b"one")]
        # and kcat reads it back through the listener
        out = kcat(bs, "-C", "-t", "t", "-e", "-f", "%k=%s|%h\n")
        rows = sorted(out.splitlines())
        assert rows == sorted(f"k{i}=v{i}-{'x' * (i % 50)}|h1=one" for i in range(N))


def test_shmlog_lz4_frames_to_kcat(data_dir):
    """Frames a shmlog producer compressed (lz4 blocks) come out as plain
    Kafka batches, also when a fetch starts inside such a frame."""
    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("z", partitions=1, **TOPIC)
        with cluster.producer(compression="lz4", linger_ms=50) as p:
            p.send_batch("z", [b"packed-%d" % i for i in range(N)], keys=[b"%d" % i for i in range(N)])
            p.flush()
        out = kcat(bs, "-C", "-t", "z", "-e", "-f", "%o|%k|%s\n")
        assert out.splitlines() == [f"{i}|{i}|packed-{i}" for i in range(N)]
        out = kcat(bs, "-C", "-t", "z", "-o", "1234", "-e", "-f", "%o|%s\n")
        assert out.splitlines() == [f"{i}|packed-{i}" for i in range(1234, N)]


def test_shmlog_producer_to_kcat(data_dir):
    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("s", partitions=3, **TOPIC)
        with cluster.producer() as p:
            for i in range(N):
                p.send("s", b"value-%d" % i, key=b"key-%d" % i,
                       headers=[("n", b"%d" % i), ("kind", b"shm")] if i % 2 else None,
                       timestamp_ms=1_700_000_000_000 + i)
            p.send_batch("s", [b"batch-%d" % i for i in range(100)], keys=[b"bk-%d" % i for i in range(100)])
            p.flush()
        out = kcat(bs, "-C", "-t", "s", "-e", "-f", "%p|%k|%s|%h|%T\n")
        rows = [r.split("|") for r in out.splitlines()]
        assert len(rows) == N + 100
        seen = {k: (int(p), v, h, int(t)) for p, k, v, h, t in rows}
        for i in range(N):
            part, v, h, t = seen[f"key-{i}"]
            assert v == f"value-{i}"
            assert h == (f"n={i},kind=shm" if i % 2 else "")
            assert t == 1_700_000_000_000 + i
        assert all(seen[f"bk-{i}"][1] == f"batch-{i}" for i in range(100))
        # shmlog's producer put each key where Kafka's murmur2 rule does
        for i in range(N):
            assert seen[f"key-{i}"][0] == kafka_partition(b"key-%d" % i, 3)


def test_kcat_replays_from_segment_files(data_dir):
    """A disk topic whose early data has left shared memory: a Fetch from
    offset 0 is served from the segment files, then from shared memory."""
    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("d", partitions=1, storage="disk", chunk_bytes=65536, chunk_count=4)
        n = 6000
        with cluster.producer() as p:
            for i in range(n):
                p.send("d", b"disk-%d-" % i + b"x" * 100, key=b"%d" % i,
                       headers=[("i", b"%d" % i)] if i % 3 == 0 else None)
            p.flush(durable=True)
        plog = cluster.topic("d").regions[0]
        assert plog.start_offset > 0  # the window moved on: offset 0 is only on disk
        out = kcat(bs, "-C", "-t", "d", "-o", "beginning", "-e", "-f", "%o|%k|%h\n")
        rows = out.splitlines()
        assert rows == [f"{i}|{i}|" + (f"i={i}" if i % 3 == 0 else "") for i in range(n)]
