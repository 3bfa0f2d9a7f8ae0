"""One start offset for a disk topic (issue 17): once retention deleted
segments, the oldest retained segment is the log's start - in
describe_topic, for consumers (auto_offset_reset) and for group resets -
even while the shared-memory ring still holds the older records.

The topic here has a ring far larger than what is produced, so offset 0
stays in shared memory the whole time: the case where the two starts used
to disagree (describe_topic said 0 and consumers read from memory)."""

from __future__ import annotations

import time

import pytest
from _broker_helpers import running_cluster, wait_for

import shmlog

TOPIC = "keep"
N = 20_000
VALUE = 100


def _oldest_segment(data_dir) -> int:
    logs = sorted((data_dir / "topics" / TOPIC / "0").glob("*.log"))
    return int(logs[0].name[:20])


def test_start_offset_follows_retention_while_the_ring_still_holds_older_records(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, storage="disk", chunk_bytes=1 << 20, chunk_count=8,
                             segment_bytes=64 << 10)
        with cluster.producer() as p:
            for i in range(0, N, 500):
                p.send_batch(TOPIC, [i.to_bytes(8, "little") + bytes(VALUE - 8) for i in range(i, i + 500)],
                             partition=0)
            p.flush(durable=True)
        # a group whose committed offset retention is about to remove
        with cluster.consumer(TOPIC, group="behind", auto_offset_reset="earliest") as c:
            assert c.consume(10, timeout=10)
            c.commit(offsets={(TOPIC, 0): 5})
        assert cluster.describe_topic(TOPIC).partitions[0].start_offset == 0

        cluster.alter_topic(TOPIC, retention_bytes=256 << 10)

        def retention_done():
            # a pass drops segments from the supervisor's list first, then unlinks them
            s = cluster.describe_topic(TOPIC).partitions[0].start_offset
            return s if s and s == _oldest_segment(data_dir) else None

        start = wait_for(retention_done, 10, what="retention to delete the first segments")
        info = cluster.describe_topic(TOPIC).partitions[0]
        assert start == info.start_offset > 5
        assert info.end_offset == N
        assert cluster.topic(TOPIC).regions[0].start_offset == 0, \
            "the ring turned: this test no longer covers records below the start kept in memory"

        # no consumer reads below the start, whatever policy and however it gets there
        with cluster.consumer(TOPIC, auto_offset_reset="error") as c:
            c.assign([(TOPIC, 0)])
            with pytest.raises(shmlog.OffsetOutOfRange, match=f"start offset {start}"):
                c.seek(TOPIC, 0, start - 1)
            c.seek(TOPIC, 0, start)
            assert c.consume(1, timeout=10)[0].offset == start
        with cluster.consumer(TOPIC, auto_offset_reset="earliest") as c:
            c.assign([(TOPIC, 0)])
            assert c.position(TOPIC, 0) == start
            c.seek(TOPIC, 0, 0)
            m = c.consume(1, timeout=10)[0]
            assert m.offset == start and int.from_bytes(m.value[:8], "little") == start
            c.seek_to_beginning()
            assert c.position(TOPIC, 0) == start
        with cluster.consumer(TOPIC, auto_offset_reset="latest") as c:
            c.assign([(TOPIC, 0)])
            c.seek(TOPIC, 0, 0)
            assert c.position(TOPIC, 0) == N
        with cluster.consumer(TOPIC, group="behind", auto_offset_reset="earliest") as c:
            deadline = time.monotonic() + 10
            got = []
            while not got and time.monotonic() < deadline:
                got = c.consume(1, timeout=1)
            assert got and got[0].offset == start  # its committed 5 was deleted
        assert cluster.reset_offsets("fresh", TOPIC, to="earliest", dry_run=True) == {0: start}
