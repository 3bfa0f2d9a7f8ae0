"""Recovery of a disk partition (shmlog/broker/recovery.py) against what
consumer groups already committed: a torn tail truncates the log to offset
M, but a group that committed N > M has seen offsets M..N-1 with the data
that was lost. Those offsets must never be handed out again for different
data (DESIGN.md invariants 1 and 2; Kafka never reuses an offset): the
re-created region starts at or above every offset a group committed, and the
group carries on with the new records, none skipped, none seen twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Tuple

import pytest
from _broker_helpers import running_cluster

from shmlog.core.segment_dump import dump_segment

SMALL_DISK = {"storage": "disk", "chunk_bytes": 65536, "chunk_count": 4}


def _logs(data_dir: Path, topic: str, partition: int = 0) -> List[Path]:
    return sorted((Path(data_dir) / "topics" / topic / str(partition)).glob("*.log"))


def _drain(consumer, want: int, timeout: float = 10.0) -> List[Tuple[int, bytes]]:
    got: List[Tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += [(m.offset, m.value) for m in consumer.consume(max_messages=want - len(got), timeout=0.1)]
    return got


def _tear_last_batches(data_dir: Path, topic: str, batches: int) -> int:
    """Cut the last segment inside its `batches`-th batch from the end, as a
    machine that lost power before the fsync would leave it; returns the
    offset recovery truncates the log to."""
    last = _logs(data_dir, topic)[-1]
    torn = list(dump_segment(last))[-batches]
    with open(last, "r+b") as f:
        f.truncate(torn["position"] + 100)
    return torn["offset"]


# 3: the segment keeps its first 700 offsets; 10: nothing of it is left (its
# first batch is torn), so the new records go into an empty segment file
@pytest.mark.parametrize("torn_batches", [3, 10])
def test_a_torn_tail_never_hands_out_offsets_a_group_has_committed(data_dir, torn_batches):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("t", segment_bytes=1 << 20, **SMALL_DISK)
        with cluster.producer() as p:
            for b in range(10):
                p.send_batch("t", [b"old-%d" % (b * 100 + i) for i in range(100)], partition=0)
            p.flush(durable=True)
        with cluster.consumer("t", group="g", auto_offset_reset="earliest") as k:
            seen = _drain(k, 1000)
            assert [o for o, _ in seen] == list(range(1000))
            k.commit()
        assert cluster.describe_group("g")["partitions"][0]["committed"] == 1000
    # the supervisor is gone and its region unlinked (a reboot); the disk
    # lost the last three batches' writes
    m = _tear_last_batches(data_dir, "t", torn_batches)
    assert m == 1000 - 100 * torn_batches
    with running_cluster(data_dir) as cluster:
        part = cluster.describe_topic("t").partitions[0]
        assert part.end_offset >= 1000, f"the log resumes at {part.end_offset}: below the group's 1000"
        with cluster.producer() as p:
            p.send_batch("t", [b"new-%d" % i for i in range(50)], partition=0)
            p.flush(durable=True)
        with cluster.consumer("t", group="g", auto_offset_reset="earliest") as k:
            got = _drain(k, 50)
            # every new record, once, above everything the group already saw
            assert [v for _, v in got] == [b"new-%d" % i for i in range(50)]
            assert all(o >= 1000 for o, _ in got), [o for o, _ in got][:5]
            assert k.consume(max_messages=10, timeout=0.3) == []
        # a reader from the start sees what survived, then the new records:
        # offsets m..999 are a hole, never data other than what was there
        with cluster.consumer("t", auto_offset_reset="earliest") as k:
            k.assign([("t", 0)])
            k.seek("t", 0, 0)
            everything = _drain(k, m + 50)
        old = [(o, v) for o, v in everything if v.startswith(b"old-")]
        new = [(o, v) for o, v in everything if v.startswith(b"new-")]
        assert old == [(o, b"old-%d" % o) for o in range(m)]
        assert [v for _, v in new] == [b"new-%d" % i for i in range(50)]
        assert new[0][0] >= 1000 and [o for o, _ in new] == list(range(new[0][0], new[0][0] + 50))
    log_text = (Path(data_dir) / "supervisor.log").read_text(errors="replace")
    assert f"offsets {m}..999 were lost (torn tail) and are never reused" in log_text, log_text[-2000:]
