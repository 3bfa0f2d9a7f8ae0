"""Kafka never reuses an offset: a memory topic's offsets go on from where
they were across supervisor lifetimes (idle exit, SIGKILL, a simulated
reboot), and a group's committed offsets never skip the new messages.
An auto-started supervisor does not drop messages a group has not consumed;
a deleted and re-created topic does not inherit the old one's offsets."""

from __future__ import annotations

import json
import os
import signal
import time

from _broker_helpers import (
    SMALL,
    collect,
    pid_gone,
    running_cluster,
    segments_of,
    stop_supervisor,
    supervisor_lock_free,
    wait_for,
)

import shmlog

TOPIC = "mq"


def _produce(cluster, values):
    with cluster.producer() as producer:
        producer.send_batch(TOPIC, values, partition=0)
        producer.flush()


def _read_group(cluster, n, group="mg", **kw):
    with cluster.consumer(TOPIC, group=group, **kw) as c:
        got = collect(c, n, timeout=10)
        c.commit()
        return [(m.offset, m.value) for m in got]


def _gone(data_dir, pid):
    """The supervisor is dead and its lock and socket are let go."""
    return pid_gone(pid) and supervisor_lock_free(data_dir)


def test_offsets_continue_after_an_idle_exit(data_dir):
    """The issue's reproducer: a group committed 3, the auto-started
    supervisor exits idle, the next one starts the topic at 3 (not 0), and
    the group reads every new message."""
    try:
        with shmlog.connect(data_dir, idle_timeout_s=1) as cluster:
            cluster.create_topic(TOPIC, partitions=1, **SMALL)
            _produce(cluster, [b"a", b"b", b"c"])
            assert _read_group(cluster, 3) == [(0, b"a"), (1, b"b"), (2, b"c")]
            pid = cluster.supervisor_pid
        # everything was consumed: nothing holds the idle supervisor up
        wait_for(lambda: _gone(data_dir, pid), 10, what="the idle supervisor to exit")
        assert segments_of(data_dir) == []
        with shmlog.connect(data_dir, idle_timeout_s=30) as cluster:
            assert cluster.supervisor_pid != pid
            part = cluster.describe_topic(TOPIC).partitions[0]
            assert (part.start_offset, part.end_offset) == (3, 3)
            _produce(cluster, [b"1", b"2", b"3", b"4", b"5"])
            assert _read_group(cluster, 5) == [(3, b"1"), (4, b"2"), (5, b"3"), (6, b"4"), (7, b"5")]
            cluster.shutdown(timeout=5)
    finally:
        stop_supervisor(data_dir)


def test_idle_supervisor_keeps_messages_a_group_has_not_consumed(data_dir):
    """An auto-started supervisor with no clients stays up while a memory
    topic holds messages a group has not read; the group gets them later."""
    try:
        with shmlog.connect(data_dir, idle_timeout_s=1) as cluster:
            cluster.create_topic(TOPIC, partitions=1, **SMALL)
            _produce(cluster, [b"a", b"b", b"c"])
            assert [o for o, _ in _read_group(cluster, 3)] == [0, 1, 2]
            _produce(cluster, [b"d", b"e"])
            pid = cluster.supervisor_pid
        time.sleep(2.5)
        assert not pid_gone(pid), "the idle supervisor dropped messages group 'mg' had not read"
        with shmlog.connect(data_dir, idle_timeout_s=1) as cluster:
            assert cluster.supervisor_pid == pid
            assert _read_group(cluster, 2) == [(3, b"d"), (4, b"e")]
        # now everything is consumed: it exits as usual
        wait_for(lambda: _gone(data_dir, pid), 10, what="the idle supervisor to exit")
        assert segments_of(data_dir) == []
    finally:
        stop_supervisor(data_dir)


def _kill_and_lose_shared_memory(data_dir, pid):
    """SIGKILL the supervisor, then unlink every region of the cluster: what
    a reboot leaves of a memory topic (nothing but the files)."""
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _gone(data_dir, pid), 10, what="the killed supervisor to go")
    for name in segments_of(data_dir):
        os.unlink(f"/dev/shm/{name}")


def _checkpointed(data_dir, topic_id):
    try:
        return json.loads((data_dir / "memory_offsets.json").read_text())["topics"][topic_id][0]
    except (OSError, ValueError, KeyError):
        return -1


def test_offsets_continue_after_sigkill_and_after_a_reboot(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **SMALL)
        _produce(cluster, [b"m%d" % i for i in range(10)])
        assert [o for o, _ in _read_group(cluster, 10)] == list(range(10))
        pid = cluster.supervisor_pid
        cluster.close()

        # SIGKILL: the region survives and is re-attached, offsets go on
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _gone(data_dir, pid), 10, what="the killed supervisor to go")
        with shmlog.connect(data_dir, idle_timeout_s=30) as cluster:
            assert cluster.describe_topic(TOPIC).partitions[0].end_offset == 10
            _produce(cluster, [b"x", b"y"])
            assert _read_group(cluster, 2) == [(10, b"x"), (11, b"y")]
            pid = cluster.supervisor_pid

        # reboot right after the commit: no checkpoint has seen offset 12
        # yet, the group's committed offset still keeps it from repeating
        _kill_and_lose_shared_memory(data_dir, pid)
        with shmlog.connect(data_dir, idle_timeout_s=30) as cluster:
            part = cluster.describe_topic(TOPIC).partitions[0]
            assert part.start_offset == part.end_offset >= 12
            start = part.start_offset
            _produce(cluster, [b"after-reboot"])
            assert _read_group(cluster, 1) == [(start, b"after-reboot")]
            # messages no group has read, then a checkpoint (about a second)
            _produce(cluster, [b"p%d" % i for i in range(5)])
            tid = str(cluster.describe_topic(TOPIC).topic_id)
            wait_for(lambda: _checkpointed(data_dir, tid) >= start + 6, 10, what="a checkpoint")
            pid = cluster.supervisor_pid

        _kill_and_lose_shared_memory(data_dir, pid)
        with shmlog.connect(data_dir, idle_timeout_s=30) as cluster:
            part = cluster.describe_topic(TOPIC).partitions[0]
            assert part.start_offset >= start + 6, "offsets went backwards after a reboot"
            new = part.start_offset
            _produce(cluster, [b"z"])
            # the group's committed offset (start + 1) is below the new
            # start: auto_offset_reset decides, and "error" says so
            with cluster.consumer(TOPIC, group="mg", auto_offset_reset="error") as c:
                try:
                    collect(c, 1, timeout=5)
                except shmlog.OffsetOutOfRange as exc:
                    assert TOPIC in str(exc)
                else:
                    raise AssertionError("a committed offset below the start went unnoticed")
            assert _read_group(cluster, 1, group="mg") == [(new, b"z")]


def test_a_recreated_topic_does_not_inherit_the_old_ones_offsets(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic(TOPIC, partitions=1, **SMALL)
        _produce(cluster, [b"a", b"b", b"c"])
        assert [o for o, _ in _read_group(cluster, 3)] == [0, 1, 2]
        cluster.delete_topic(TOPIC)
        cluster.create_topic(TOPIC, partitions=1, **SMALL)
        _produce(cluster, [b"new0", b"new1"])
        # the old topic's committed 3 must not apply: the group starts fresh
        assert _read_group(cluster, 2) == [(0, b"new0"), (1, b"new1")]
        desc = cluster.describe_group("mg")
        assert [(p["partition"], p["committed"]) for p in desc["partitions"]] == [(0, 2)]
        pid = cluster.supervisor_pid
        cluster.close()

        # and across a restart: the re-created topic's own offsets, not the old ones
        _kill_and_lose_shared_memory(data_dir, pid)
        with shmlog.connect(data_dir, idle_timeout_s=30) as again:
            assert again.describe_topic(TOPIC).partitions[0].start_offset == 2
