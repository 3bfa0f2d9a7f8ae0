"""Fetch size limits (KIP-74): a partition's share of a Fetch answer stays
within the request's partition max_bytes and what is left of its max_bytes;
only the first partition with data may go over, by its first record, so a
consumer always makes progress. Checked on the wire for plain frames, frames
a shmlog producer compressed, and a record larger than every limit."""

from __future__ import annotations

import struct
from typing import List, Tuple

import pytest
from _kafka_helpers import kafka_cluster
from _kafka_wire import Wire, string

from shmlog.kafka import protocol as P

VALUE = 333  # not a power of two: record sizes that do not divide a limit


@pytest.fixture(scope="module")
def kc(tmp_path_factory):
    with kafka_cluster(tmp_path_factory.mktemp("kafka") / "data") as (cluster, bs):
        for name, compression in (("plain", None), ("lz4", "lz4")):
            cluster.create_topic(name, partitions=2, storage="memory", chunk_bytes=1 << 20, chunk_count=4)
            with cluster.producer(**({"compression": compression} if compression else {}),
                                  linger_ms=50) as p:
                for i in range(600):
                    p.send(name, bytes([i % 251]) * VALUE, partition=0)
                    p.send(name, b"p1-%d" % i, partition=1)
                p.flush()
        cluster.create_topic("big", partitions=2, storage="memory", chunk_bytes=1 << 20, chunk_count=4)
        with cluster.producer() as p:
            p.send("big", b"x" * 20_000, partition=0)
            p.send("big", b"small", partition=0)
            p.send("big", b"y" * 20_000, partition=1)
            p.flush()
        yield cluster, bs


def fetch(w: Wire, topic: str, offsets: List[int], part_max: int, max_bytes: int = 50 << 20
          ) -> List[Tuple[int, bytes]]:
    """One Fetch v11 for partitions 0..len(offsets)-1: [(error, records)]."""
    body = struct.pack(">iii", -1, 0, 1) + struct.pack(">ib", max_bytes, 0) + struct.pack(">ii", 0, -1)
    body += struct.pack(">i", 1) + string(topic) + struct.pack(">i", len(offsets))
    for p, off in enumerate(offsets):
        body += struct.pack(">iiqqi", p, -1, off, -1, part_max)
    body += struct.pack(">i", 0) + string("")
    resp = w.call(P.FETCH, 11, body)
    pos = 4 + 6 + 4
    (n,) = struct.unpack_from(">h", resp, pos)
    pos += 2 + n
    (count,) = struct.unpack_from(">i", resp, pos)
    pos += 4
    out = []
    for _ in range(count):
        _p, code = struct.unpack_from(">ih", resp, pos)
        pos += 4 + 2 + 8 + 8 + 8
        (na,) = struct.unpack_from(">i", resp, pos)
        pos += 4 + max(na, 0) * 16 + 4
        (rl,) = struct.unpack_from(">i", resp, pos)
        out.append((code, resp[pos + 4 : pos + 4 + max(rl, 0)]))
        pos += 4 + max(rl, 0)
    return out


def records_of(raw: bytes):
    from kafka.record import MemoryRecords

    out = []
    mr = MemoryRecords(raw)
    while mr.has_next():
        b = mr.next_batch()
        assert b is not None, "a partial batch: every batch goes out whole"
        out += [(r.offset, r.value) for r in b]
    return out


@pytest.mark.parametrize("topic", ["plain", "lz4"])
@pytest.mark.parametrize("part_max", [3333, 40_000])
def test_a_partition_never_gets_more_than_its_limit(kc, topic, part_max):
    _c, bs = kc
    got = []
    with Wire(bs) as w:
        off = 0
        while off < 600:
            [(code, raw)] = fetch(w, topic, [off], part_max)
            assert code == 0
            assert 0 < len(raw) <= part_max
            recs = records_of(raw)
            assert recs[0][0] == off
            got += recs
            off = recs[-1][0] + 1
    assert [o for o, _v in got] == list(range(600))  # each record once, in order
    assert all(v == bytes([o % 251]) * VALUE for o, v in got)


def test_the_request_limit_is_shared_and_only_the_first_partition_goes_over(kc):
    _c, bs = kc
    with Wire(bs) as w:
        # the request's max_bytes is shared: partition 1 gets what partition
        # 0 left, and together they stay within it
        (c0, r0), (c1, r1) = fetch(w, "plain", [0, 0], 1 << 20, max_bytes=2000)
        assert c0 == c1 == 0
        assert 0 < len(r0) and len(r0) + len(r1) <= 2000
        assert [v for _o, v in records_of(r1)] == [b"p1-%d" % i for i in range(len(records_of(r1)))]
        # a record larger than every limit: the first partition with data
        # gets it whole (alone), the next one nothing
        (c0, r0), (c1, r1) = fetch(w, "big", [0, 0], 1000, max_bytes=1000)
        assert c0 == c1 == 0
        assert records_of(r0) == [(0, b"x" * 20_000)] and r1 == b""
        # from the next offset the small record fits on its own
        [(code, raw)] = fetch(w, "big", [1], 1000)
        assert code == 0 and records_of(raw) == [(1, b"small")]
        # partition 0 at its end: partition 1 is now the first with data
        (c0, r0), (c1, r1) = fetch(w, "big", [2, 0], 1000, max_bytes=1000)
        assert r0 == b"" and records_of(r1) == [(0, b"y" * 20_000)]
