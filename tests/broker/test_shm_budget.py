"""The shared-memory budget of a data dir (issue 18): many partitions with
default settings fit, a request past the budget is refused with the figures
and harms nothing, and a full tmpfs is an error, never a SIGBUS."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict

import pytest
from _broker_helpers import (
    SHM_DIR,
    murmur2_ref,
    partition_regions,
    pid_gone,
    running_cluster,
    stop_supervisor,
)

import shmlog
from shmlog import config as cfgmod
from shmlog import errors
from shmlog.broker import shm_budget
from shmlog.core import budget_region, groups_region
from shmlog.core.log import PartitionLog

MIB = 1 << 20


def _usage(data_dir):
    """(apparent, resident) bytes of the cluster's partition regions."""
    apparent = resident = 0
    for n in partition_regions(data_dir):
        st = os.stat(SHM_DIR / n)
        apparent += st.st_size
        resident += st.st_blocks * 512
    return apparent, resident


def test_disk_ring_defaults_scale_with_partitions():
    budget = 6 << 30
    one = shm_budget.disk_ring_chunk_bytes(1, budget, budget)
    assert one == cfgmod.TOPIC_DEFAULTS["chunk_bytes"]  # few partitions: as before
    share = budget // shm_budget.DISK_TOPIC_SHARE
    mid = shm_budget.disk_ring_chunk_bytes(256, budget, budget)
    assert shm_budget.DISK_CHUNK_MIN < mid < one and mid % shm_budget.CHUNK_ALIGN == 0
    assert shm_budget.planned_bytes(_disk(256, mid)) <= share
    # 1,000 partitions: the share would give ~700 KiB chunks, but a chunk
    # holds at least one message of the default max_message_bytes (1 MiB)
    wide = shm_budget.disk_ring_chunk_bytes(1000, budget, budget)
    frame = cfgmod.message_frame_bytes(shm_budget.DEFAULT_MAX_MESSAGE_BYTES)
    assert frame <= wide < frame + shm_budget.CHUNK_ALIGN and wide % shm_budget.CHUNK_ALIGN == 0
    cfg = cfgmod.topic_config({"partitions": 1000, "chunk_bytes": wide,
                               "max_message_bytes": shm_budget.DEFAULT_MAX_MESSAGE_BYTES})
    assert cfgmod.max_batch_bytes(wide, cfg["max_message_bytes"]) == frame
    # a smaller max_message_bytes the user set lets the share decide
    small = shm_budget.disk_ring_chunk_bytes(1000, budget, budget, max_message_bytes=10_000)
    assert shm_budget.DISK_CHUNK_MIN < small < wide
    assert shm_budget.planned_bytes(_disk(1000, small)) <= share
    # what is left of the budget caps the share
    left = shm_budget.disk_ring_chunk_bytes(16, budget, 64 * MIB, max_message_bytes=10_000)
    assert left < 4 * MIB and shm_budget.planned_bytes(_disk(16, left)) <= 64 * MIB
    # a max_message_bytes the user set still fits a batch of the ring
    chunk = shm_budget.disk_ring_chunk_bytes(1000, budget, budget, max_message_bytes=100_000)
    cfg = cfgmod.topic_config({"chunk_bytes": chunk, "max_message_bytes": 100_000})
    assert cfg["max_message_bytes"] == 100_000


def _disk(partitions, chunk_bytes):
    return cfgmod.topic_config({"partitions": partitions, "chunk_bytes": chunk_bytes, "storage": "disk"})


def test_admission_counts_a_disk_topics_active_chunks_and_one_ring():
    hot = shm_budget.DISK_HOT_PARTITIONS
    cfg = _disk(1000, MIB)
    full = PartitionLog.region_bytes(MIB, 4)
    idle = full - 3 * MIB
    # admission: the floor every partition holds, and one ring to move in
    assert shm_budget.topic_bytes(cfg) == 1000 * idle + 3 * MIB
    assert shm_budget.topic_bytes(_disk(2, MIB)) == full + idle
    assert shm_budget.added_bytes(cfg, 1000, 1001) == idle
    assert shm_budget.added_bytes(_disk(1, MIB), 1, 2) == idle
    # what default chunk sizes plan for: the hot partitions' full rings
    assert shm_budget.planned_bytes(cfg) == 1000 * idle + hot * 3 * MIB
    assert shm_budget.planned_bytes(_disk(2, MIB)) == 2 * full
    mem = cfgmod.topic_config({"partitions": 1000, "chunk_bytes": MIB, "storage": "memory"})
    assert shm_budget.topic_bytes(mem) == 1000 * full  # a memory topic's ring is its log


def test_budget_setting_is_validated():
    assert cfgmod.broker_config({})["shm_budget_bytes"] is None
    assert cfgmod.broker_config({"shm_budget_bytes": 1 << 30})["shm_budget_bytes"] == 1 << 30
    with pytest.raises(errors.InvalidConfig, match="shm_budget_bytes"):
        cfgmod.broker_config({"shm_budget_bytes": -1})
    assert 0 < shm_budget.default_budget() <= (os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 4


def test_many_partitions_default_disk_topic_within_budget(data_dir):
    budget = 512 * MIB
    with running_cluster(data_dir, shm_budget_bytes=budget) as c:
        info = c.create_topic("wide", partitions=200)  # default settings: a disk topic
        cfg = info.config
        assert cfg["storage"] == "disk" and cfg["chunk_bytes"] < cfgmod.TOPIC_DEFAULTS["chunk_bytes"]
        keys = [b"user-%d" % i for i in range(600)]
        sent = [(k, b"%s/%d" % (k, r)) for r in range(3) for k in keys]
        with c.producer() as p:
            for k, v in sent:
                p.send("wide", v, key=k)
            p.flush()
        got = []
        with c.consumer("wide", group="readers", auto_offset_reset="earliest") as cons:
            deadline = time.monotonic() + 60
            while len(got) < len(sent) and time.monotonic() < deadline:
                got += cons.consume(max_messages=10_000, timeout=0.5)
            cons.commit()
        assert sorted((m.key, m.value) for m in got) == sorted(sent)
        by_key = defaultdict(list)
        for m in got:
            assert m.partition == (murmur2_ref(m.key) & 0x7FFFFFFF) % 200
            by_key[m.key].append(m.value)
        assert all(v == [b"%s/%d" % (k, r) for r in range(3)] for k, v in by_key.items())
        assert len({m.partition for m in got}) > 150
        apparent, resident = _usage(data_dir)
        assert len(partition_regions(data_dir)) == 200
        assert apparent <= budget and resident <= budget
        shm = c.stats()["shm"]
        assert shm["budget_bytes"] == budget
        groups = groups_region.REGION_BYTES + budget_region.REGION_BYTES
        assert shm["admitted_bytes"] == shm_budget.topic_bytes(cfg) + groups <= budget
        assert shm["apparent_bytes"] == apparent + groups and shm["resident_bytes"] <= budget
        # a disk partition reserves its first chunk up front, the rest of its
        # ring when a rotation first opens it: 3 x 600 small messages over
        # 200 partitions never fill a first chunk
        count = cfg["chunk_count"]
        header = PartitionLog.region_bytes(cfg["chunk_bytes"], count) - count * cfg["chunk_bytes"]
        assert resident == 200 * (header + cfg["chunk_bytes"]) < apparent
        # the account counts exactly what is reserved
        assert shm["reserved_bytes"] == resident + groups


def test_one_mib_messages_on_a_many_partition_default_disk_topic(data_dir):
    """Kafka's habit: 1 MiB messages on a topic of many partitions created
    with default settings. Each is produced (plain and keyed), read by a
    group, and read again from segment files once the ring turned over,
    byte for byte; one byte more is refused, naming the limit, and costs
    nothing already committed."""
    budget = 512 * MIB
    mmb = shm_budget.DEFAULT_MAX_MESSAGE_BYTES
    with running_cluster(data_dir, shm_budget_bytes=budget) as c:
        cfg = c.create_topic("big", partitions=200).config
        assert cfg["max_message_bytes"] == mmb and cfg["chunk_bytes"] < 2 * mmb
        rng = random.Random(18)
        plain = rng.randbytes(mmb)
        key = b"k" * 16
        keyed = rng.randbytes(mmb - len(key))
        kp = (murmur2_ref(key) & 0x7FFFFFFF) % 200
        p0 = (kp + 1) % 200  # the plain ones go to another partition
        with c.producer(max_block_ms=20_000) as prod:
            prod.send("big", plain, partition=p0)
            prod.send("big", keyed, key=key)
            prod.flush()
            with pytest.raises(errors.MessageTooLarge, match=f"max_message_bytes={mmb}"):
                prod.send("big", plain + b"x", partition=p0)
            with pytest.raises(errors.MessageTooLarge, match=f"max_message_bytes={mmb}"):
                prod.send("big", keyed + b"x", key=key)
            with c.consumer("big", group="readers", auto_offset_reset="earliest") as cons:
                got = []
                deadline = time.monotonic() + 60
                while len(got) < 2 and time.monotonic() < deadline:
                    got += cons.consume(max_messages=10, timeout=0.5)
                cons.commit()
            assert sorted((m.partition, m.offset, m.key, m.value) for m in got) == sorted(
                [(p0, 0, None, plain), (kp, 0, key, keyed)])
            # more of them turn both rings over: offset 0 leaves shared memory
            for i in range(cfg["chunk_count"] + 1):
                prod.send("big", plain[i:] + plain[:i], partition=p0)
                prod.send("big", keyed[i:] + keyed[:i], key=key)
            prod.flush(durable=True)
            regions = prod._topics["big"].topic.regions
            assert regions[p0].start_offset > 0 and regions[kp].start_offset > 0
        with c.consumer("big", group=None) as cons:
            cons.assign([("big", p0), ("big", kp)])
            cons.seek_to_beginning()
            got = []
            deadline = time.monotonic() + 60
            while len(got) < 2 * (cfg["chunk_count"] + 2) and time.monotonic() < deadline:
                got += cons.consume(max_messages=10, timeout=0.5)
        want = [(p0, 0, None, plain), (kp, 0, key, keyed)] + [
            x for i in range(cfg["chunk_count"] + 1) for x in (
                (p0, i + 1, None, plain[i:] + plain[:i]), (kp, i + 1, key, keyed[i:] + keyed[:i]))]
        assert sorted((m.partition, m.offset, m.key, m.value) for m in got) == sorted(want)


def test_past_the_budget_fails_with_the_figures_and_harms_nothing(data_dir):
    budget = 48 * MIB
    small = {"storage": "memory", "chunk_bytes": MIB, "chunk_count": 4}
    with running_cluster(data_dir, shm_budget_bytes=budget) as c:
        c.create_topic("kept", partitions=4, **small)
        with c.producer() as p:
            for i in range(100):
                p.send("kept", b"m%d" % i, partition=i % 4)
            p.flush()
        before = sorted(partition_regions(data_dir))
        with pytest.raises(errors.InvalidConfig) as ei:
            c.create_topic("big", partitions=2, storage="memory")  # 2 x 64 MiB
        msg = str(ei.value)
        assert "topic 'big'" in msg and "budget of 48.0 MiB" in msg and "needs 128.1 MiB" in msg
        assert "chunk_bytes" in msg and "shm_budget_bytes" in msg and "delete" in msg
        with pytest.raises(errors.InvalidConfig, match="adding 8 partition.*budget"):
            c.add_partitions("kept", 12)
        assert sorted(partition_regions(data_dir)) == before
        assert set(c.topics()) == {"kept"}
        assert len(c.describe_topic("kept").partitions) == 4
        with c.consumer("kept", group=None) as cons:
            cons.assign([("kept", p) for p in range(4)])
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 100 and time.monotonic() < deadline:
                got += cons.consume(max_messages=1000, timeout=0.5)
        assert sorted(m.value for m in got) == sorted(b"m%d" % i for i in range(100))
        # a disk topic with default settings takes its ring from what is left
        # (never smaller than a chunk that holds one message of 1 MiB)
        wide = c.create_topic("wide", partitions=8)
        frame = cfgmod.message_frame_bytes(shm_budget.DEFAULT_MAX_MESSAGE_BYTES)
        assert frame <= wide.config["chunk_bytes"] < frame + shm_budget.CHUNK_ALIGN
        assert wide.config["max_message_bytes"] == shm_budget.DEFAULT_MAX_MESSAGE_BYTES
        shm = c.stats()["shm"]
        assert shm["reserved_bytes"] <= budget and _usage(data_dir)[1] <= budget


# Runs in a private mount namespace whose /dev/shm is a 64 MiB tmpfs (the
# host's /dev/shm and other tests never see it; it goes with the namespace).
_TMPFS_CHILD = textwrap.dedent(r"""
    import errno, json, os, signal, sys, time
    import shmlog
    from shmlog import errors
    from shmlog.core.log import PartitionLog, unlink_region

    data_dir = sys.argv[1]
    res = {}

    # 1. the hazard: a region larger than the tmpfs, pages not reserved,
    #    kills its writer with SIGBUS (so this test can fail)
    pid = os.fork()
    if pid == 0:
        try:
            log = PartitionLog.create("/shmlog-tmpfs-unreserved", chunk_bytes=16 << 20, chunk_count=5)
            for off in range(0, len(log.mapping), 4096):
                log.mapping[off] = 1
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    res["unreserved"] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    unlink_region("/shmlog-tmpfs-unreserved")

    # 2. the same region, reserved: an error naming the space, nothing left
    try:
        PartitionLog.create("/shmlog-tmpfs-reserved", chunk_bytes=16 << 20, chunk_count=5, reserve=True)
        res["reserved"] = "created"
    except errors.StorageError as exc:
        res["reserved"] = str(exc)
    res["left_after_reserve"] = sorted(os.listdir("/dev/shm"))

    # 3. through the supervisor, with a budget far past the tmpfs
    # (idle partitions keep their chunks here: release has its own tests)
    with shmlog.connect(data_dir, shm_budget_bytes=1 << 40, idle_timeout_s=30,
                        shm_release_idle_ms=0) as c:
        try:
            c.create_topic("big", partitions=2, storage="memory")
            res["big"] = "created"
        except errors.ShmlogError as exc:
            res["big"] = f"{type(exc).__name__}: {exc}"
        c.create_topic("d", partitions=1, chunk_bytes=1 << 20, chunk_count=4)
        # "d" goes round once: every chunk of its ring gets its pages
        with c.producer() as p:
            for i in range(4 * 16):
                p.send("d", bytes([i % 251]) * 60_000)
            p.flush()
        # "e" holds only its first chunk: its first rotation needs pages
        c.create_topic("e", partitions=1, chunk_bytes=1 << 20, chunk_count=4)
        # fill what is left of the tmpfs
        with open("/dev/shm/filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError as exc:
                res["filler_errno"] = exc.errno
        try:
            c.create_topic("more", partitions=1, chunk_bytes=1 << 20, chunk_count=4)
            res["more"] = "created"
        except errors.ShmlogError as exc:
            res["more"] = f"{type(exc).__name__}: {exc}"
        # a rotation into a chunk without pages: an error for that producer
        try:
            with c.producer() as p:
                for i in range(64):
                    p.send("e", bytes([i % 251]) * 60_000)
                p.flush()
            res["e"] = "sent"
        except errors.ShmlogError as exc:
            res["e"] = f"{type(exc).__name__}: {exc}"
        # the ring goes round 4 times more on a full tmpfs: its pages were reserved
        n = 4 * 4 * 16
        with c.producer() as p:
            for i in range(n):
                p.send("d", bytes([i % 251]) * 60_000)
            p.flush()
        n += 4 * 16
        got = 0
        with c.consumer("d", group="g", auto_offset_reset="earliest") as cons:
            deadline = time.monotonic() + 30
            while got < n and time.monotonic() < deadline:
                got += len(cons.consume(max_messages=1000, timeout=0.5))
        res["sent"], res["got"] = n, got
        res["stats_ok"] = "shm" in c.stats()  # the supervisor still answers
        os.unlink("/dev/shm/filler")
        # with space again, "e" rotates
        with c.producer() as p:
            for i in range(64):
                p.send("e", bytes([i % 251]) * 60_000)
            p.flush()
        res["e_end"] = c.describe_topic("e").partitions[0].end_offset
        c.shutdown()
    print(json.dumps(res))
""")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to mount a private 64 MiB tmpfs on /dev/shm")
def test_full_tmpfs_is_an_error_never_a_sigbus(data_dir):
    data_dir.mkdir(parents=True, exist_ok=True)
    script = ("mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm || exit 77; "
              'exec "$0" -c "$1" "$2"')
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                        sys.executable, _TMPFS_CHILD, str(data_dir)],
                       capture_output=True, timeout=120)
    if r.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {r.stderr.decode()[-300:]}")
    assert r.returncode != -signal.SIGBUS, "a SIGBUS reached the test's child"
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    res = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert res["unreserved"] == -signal.SIGBUS  # the hazard is real on this tmpfs
    assert "cannot reserve" in res["reserved"] and "bytes free" in res["reserved"]
    assert res["left_after_reserve"] == []
    assert res["big"].startswith("StorageError") and "/dev/shm" in res["big"] and "free" in res["big"]
    assert res["filler_errno"] == 28  # ENOSPC: the tmpfs is full
    assert res["more"].startswith("StorageError"), res["more"]
    assert res["e"].startswith("StorageError") and "/dev/shm is full" in res["e"], res["e"]
    assert res["got"] == res["sent"] and res["stats_ok"]
    assert res["e_end"] >= 64


def test_a_failed_reservation_leaves_no_region_behind(data_dir, monkeypatch):
    """posix_fallocate failing part way through a create or an add (the tmpfs
    filled between the free-space check and the regions): the regions
    already made go, the topic is as it was, the supervisor goes on."""
    from shmlog.broker.supervisor import Supervisor
    from shmlog.core import log as core_log

    real = core_log.reserve_fd
    calls = {"n": 0, "fail_at": 3}

    def flaky(fd, size, what, name="", start=0):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise errors.StorageError(f"{what}: cannot reserve {size} bytes (test)", what=what)
        real(fd, size, what, name, start=start)

    monkeypatch.setattr(core_log, "reserve_fd", flaky)
    sup = Supervisor(data_dir, shm_budget_bytes=256 * MIB)
    sup.start()
    try:
        small = {"storage": "memory", "chunk_bytes": 65536, "chunk_count": 4}
        with pytest.raises(errors.StorageError, match="cannot reserve"):
            sup._op_create_topic({"name": "t", "config": {"partitions": 4, **small}}, None)
        assert partition_regions(data_dir) == [] and sup.meta["topics"] == {} and sup.logs == {}
        calls.update(n=0, fail_at=4)
        sup._op_create_topic({"name": "t", "config": {"partitions": 2, **small}}, None)
        with pytest.raises(errors.StorageError, match="cannot reserve"):
            sup._op_add_partitions({"name": "t", "partitions": 5}, None)
        assert len(partition_regions(data_dir)) == 2 and len(sup.logs) == 2
        assert sup.meta["topics"]["t"]["config"]["partitions"] == 2
        calls.update(fail_at=0)
        sup._op_add_partitions({"name": "t", "partitions": 5}, None)
        assert len(partition_regions(data_dir)) == 5
    finally:
        sup.shutdown()
    assert partition_regions(data_dir) == []


def _wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_idle_partitions_give_their_chunks_back_and_everything_reads_back(data_dir):
    chunk = 64 << 10
    with running_cluster(data_dir, shm_release_idle_ms=100) as c:
        c.create_topic("t", partitions=4, chunk_bytes=chunk, chunk_count=4)
        header = PartitionLog.region_bytes(chunk, 4) - 4 * chunk
        sent = [b"%06d" % i + b"x" * 1000 for i in range(1000)]  # ~16 rings on partition 0
        with c.producer() as p:
            for i, v in enumerate(sent):
                p.send("t", v, partition=0 if i % 10 else 1 + i % 3)
            p.flush(durable=True)
        with c.consumer("t", group="live", auto_offset_reset="earliest") as cons:
            got = []
            deadline = time.monotonic() + 30
            while len(got) < len(sent) and time.monotonic() < deadline:
                got += cons.consume(max_messages=10_000, timeout=0.5)
            cons.commit()
            assert sorted(m.value for m in got) == sorted(sent)
            # idle now: every partition keeps its header and its active chunk,
            # with a consumer that has read everything still attached (and
            # polling: its position tells the supervisor it is past them)
            def released():
                assert cons.consume(max_messages=10, timeout=0.05) == []
                return _usage(data_dir)[1] == 4 * (header + chunk)

            assert _wait_for(released), _usage(data_dir)
        assert c.stats()["shm"]["released_chunks"] >= 3
        part0 = c.describe_topic("t").partitions[0]
        assert part0.start_offset == 0 and part0.end_offset == 900
        # the released offsets read back from segment files, in order
        with c.consumer("t", group="replay", auto_offset_reset="earliest") as cons:
            got = []
            deadline = time.monotonic() + 30
            while len(got) < len(sent) and time.monotonic() < deadline:
                got += cons.consume(max_messages=10_000, timeout=0.5)
        by_p = defaultdict(list)
        for m in got:
            by_p[m.partition].append(m.offset)
        assert sorted(m.value for m in got) == sorted(sent)
        assert all(offs == list(range(len(offs))) for offs in by_p.values())
        # and partition 0 takes writes again: its rotations reserve the pages
        with c.producer() as p:
            for v in sent:
                p.send("t", v, partition=0)
            p.flush()
        assert c.describe_topic("t").partitions[0].end_offset == 1900


def test_the_groups_region_is_reserved_and_counted(data_dir):
    with running_cluster(data_dir, shm_budget_bytes=64 * MIB) as c:
        name = groups_region.region_name(c.cluster_id)
        st = os.stat(SHM_DIR / name.lstrip("/"))
        # every page allocated: a heartbeat write on a full tmpfs is no SIGBUS
        assert st.st_blocks * 512 >= st.st_size == groups_region.REGION_BYTES
        shm = c.stats()["shm"]
        assert shm["reserved_bytes"] == groups_region.REGION_BYTES + budget_region.REGION_BYTES
        # the groups region's last page is a whole page in the tmpfs
        assert shm["reserved_bytes"] <= shm["resident_bytes"] < shm["reserved_bytes"] + 4096


def test_ring_geometry_cannot_be_altered_live_and_the_error_says_what_to_do(data_dir):
    with running_cluster(data_dir, shm_budget_bytes=64 * MIB) as c:
        c.create_topic("t", partitions=2, chunk_bytes=256 << 10, chunk_count=4)
        before = c.stats()["shm"]["reserved_bytes"]
        for conf in ({"chunk_bytes": 1 << 20}, {"chunk_count": 8}, {"chunk_bytes": 1 << 20, "retention_ms": 5}):
            with pytest.raises(errors.InvalidConfig) as ei:
                c.alter_topic("t", **conf)
            msg = str(ei.value)
            assert "cannot alter chunk_" in msg and "topic 't'" in msg
            assert "chunk_bytes=262144" in msg and "Create a topic" in msg and "shm_budget_bytes" in msg
        cfg = c.describe_topic("t").config
        assert (cfg["chunk_bytes"], cfg["chunk_count"]) == (256 << 10, 4)
        assert c.stats()["shm"]["reserved_bytes"] == before
        # what can change live still does
        assert c.alter_topic("t", retention_ms=60_000).config["retention_ms"] == 60_000


@pytest.mark.parametrize("release_idle_ms", [1000, 0])
def test_many_hot_partitions_share_a_budget_smaller_than_their_rings(data_dir, release_idle_ms):
    """Every partition busy at once, and the budget smaller than their full
    rings: the account makes rotations wait for pages the release pass frees
    elsewhere, so resident shared memory never passes the budget; producers
    are slowed (BufferFull, retried), never failed for good; nothing lost."""
    chunk, parts = 256 << 10, 8
    budget = 5 * MIB
    ring = PartitionLog.region_bytes(chunk, 4)
    assert parts * ring > budget + 3 * MIB  # all full rings would pass it by far
    fixed = groups_region.REGION_BYTES + budget_region.REGION_BYTES
    # release_idle_ms=0 keeps idle partitions' pages, not busy ones' under pressure
    with running_cluster(data_dir, shm_budget_bytes=budget, shm_release_idle_ms=release_idle_ms) as c:
        c.create_topic("hot", partitions=parts, storage="disk", chunk_bytes=chunk, chunk_count=4)
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((_usage(data_dir)[1] + fixed, c.stats()["shm"]["reserved_bytes"]))
                time.sleep(0.01)

        got = []

        def consume():
            with c.consumer("hot", group="g", auto_offset_reset="earliest") as cons:
                while not stop.is_set() or len(got) < total:
                    got.extend((m.partition, m.offset, m.value)
                               for m in cons.consume(max_messages=5000, timeout=0.2))
                    if stop.is_set() and time.monotonic() > give_up:
                        break

        total = 16 * 1024  # 16 MiB of 1 KiB values: each ring goes round twice
        give_up = float("inf")
        threads = [threading.Thread(target=sample), threading.Thread(target=consume)]
        for t in threads:
            t.start()
        waits = 0
        try:
            with c.producer(max_block_ms=500, linger_ms=0) as p:
                for i in range(total):
                    v = b"%08d" % i + b"x" * 1016
                    while True:
                        try:
                            p.send("hot", v, partition=i % parts)
                            break
                        except errors.BufferFull:
                            waits += 1
                            # slowed, not stuck: 500 ms waits, 30 s at most
                            assert waits < 60, "producers never got pages back"
                    if i % 256 == 255:
                        p.flush()
                p.flush()
        finally:
            give_up = time.monotonic() + 60
            stop.set()
            for t in threads:
                t.join(timeout=90)
        assert max(s[0] for s in samples) <= budget
        assert max(s[1] for s in samples) <= budget
        stats = c.stats()
        shm = stats["shm"]
        assert shm["resident_bytes"] <= budget and shm["refused_charges"] > 0
        # the views agree: the data dir's reserved is its partitions' plus the
        # groups region and the account's page
        parts_reserved = sum(p_["shm_reserved_bytes"] for p_ in stats["topics"]["hot"]["partitions"])
        assert shm["reserved_bytes"] == parts_reserved + fixed
        # no loss, no duplicate, dense offsets in every partition
        assert sorted(int(v[:8]) for _, _, v in got) == list(range(total))
        for q in range(parts):
            offs = sorted(o for p_, o, _ in got if p_ == q)
            assert offs == list(range(total // parts))


def test_a_supervisor_sigkilled_mid_release_loses_nothing(data_dir, tmp_path, monkeypatch):
    """The live supervisor stops inside its release pass (a chunk RELEASING,
    its flag set, its pages not yet given back) and is SIGKILLed there. The
    producer goes on through that chunk, a new supervisor starts, and a
    group reads every offset back, dense, from segments and shared memory."""
    stop_file = tmp_path / "stopped"
    monkeypatch.setenv("SHMLOG_STOP_AT", "release")
    monkeypatch.setenv("SHMLOG_STOP_FILE", str(stop_file))
    chunk = 64 << 10
    sent = [b"%06d" % i + b"y" * 500 for i in range(2000)]  # ~8 rings
    c = shmlog.connect(data_dir, shm_release_idle_ms=50, idle_timeout_s=30)
    try:
        c.create_topic("t", partitions=1, chunk_bytes=chunk, chunk_count=4)
        with c.producer() as p:
            for v in sent[:1000]:
                p.send("t", v, partition=0)
            p.flush()
            assert _wait_for(stop_file.exists, timeout=20), "the supervisor never reached the release"
            pid = int(stop_file.read_text())
            os.kill(pid, signal.SIGKILL)
            assert _wait_for(lambda: pid_gone(pid), timeout=10)
            monkeypatch.delenv("SHMLOG_STOP_AT")
            # writes go on without a supervisor, through the half-released chunk
            for v in sent[1000:]:
                p.send("t", v, partition=0)
            p.flush()
        with c.consumer("t", group="after", auto_offset_reset="earliest") as cons:
            got = []
            deadline = time.monotonic() + 30
            while len(got) < len(sent) and time.monotonic() < deadline:
                got += cons.consume(max_messages=10_000, timeout=0.5)
        assert [m.offset for m in got] == list(range(len(sent)))
        assert [m.value for m in got] == sent
    finally:
        stop_supervisor(data_dir, c)


# A producer in its own process, armed to stop at a fault point of the C
# core (core.fault_points) the first time it reaches it.
_PRODUCER_CHILD = textwrap.dedent(r"""
    import sys
    import shmlog
    from shmlog.core import fault_points
    c = shmlog.connect(sys.argv[1], start=False)
    assert fault_points.arm_from_env()
    with c.producer() as p:
        for i in range(100_000):
            p.send("t", b"%08d" % i + b"z" * 992, partition=0)
            if i % 16 == 15:
                p.flush()
""")


def test_a_count_left_high_by_a_killed_producer_is_recounted_without_a_restart(data_dir, tmp_path):
    """A producer SIGKILLed after it charged the account for a released
    chunk and before it reserved the pages leaves the count a chunk high.
    The supervisor's reaper finds the dead pid, repairs the half-opened
    chunk, and recounts: the account returns to what the regions hold, and
    the ring goes on."""
    chunk = 256 << 10
    fixed = groups_region.REGION_BYTES + budget_region.REGION_BYTES
    stop_file = tmp_path / "stopped"
    with running_cluster(data_dir, shm_budget_bytes=64 * MIB, reaper_interval_ms=50) as c:
        c.create_topic("t", partitions=1, chunk_bytes=chunk, chunk_count=4)

        def true_count():
            parts = c.stats()["topics"]["t"]["partitions"]
            return sum(p_["shm_reserved_bytes"] for p_ in parts) + fixed

        assert c.stats()["shm"]["reserved_bytes"] == true_count()
        env = dict(os.environ, SHMLOG_STOP_AT="reserve", SHMLOG_STOP_FILE=str(stop_file))
        child = subprocess.Popen([sys.executable, "-c", _PRODUCER_CHILD, str(data_dir)], env=env)
        try:
            assert _wait_for(stop_file.exists, timeout=30), "the producer never reached the reserve"
            pid = int(stop_file.read_text())
            assert pid == child.pid
            # stopped between its charge and its reservation: chunk 1 is
            # charged; while it is OPENING the partition's figure counts it too
            header = PartitionLog.region_bytes(chunk, 4) - 4 * chunk
            assert c.stats()["shm"]["reserved_bytes"] == true_count() == header + 2 * chunk + fixed
            os.kill(pid, signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        # the reaper repairs the chunk to FREE (its pages never taken) ...
        assert _wait_for(lambda: c.stats()["reaped_processes"] >= 1, timeout=10)
        # ... and the count comes back to the true figure, no restart
        assert _wait_for(lambda: c.stats()["shm"]["reserved_bytes"] == true_count(), timeout=10), (
            c.stats()["shm"]["reserved_bytes"], true_count())
        assert true_count() == header + chunk + fixed
        # the ring goes round through the repaired chunk; nothing committed is lost
        with c.producer() as p:
            for i in range(2000):
                p.send("t", b"after-%06d" % i + b"w" * 500, partition=0)
            p.flush()
        with c.consumer("t", group="after", auto_offset_reset="earliest") as cons:
            got = []
            deadline = time.monotonic() + 30
            while (not got or got[-1].value[:12] != b"after-001999") and time.monotonic() < deadline:
                got += cons.consume(max_messages=10_000, timeout=0.5)
        assert [m.offset for m in got] == list(range(len(got)))
        assert [m.value for m in got[-2000:]] == [b"after-%06d" % i + b"w" * 500 for i in range(2000)]
        assert c.stats()["shm"]["reserved_bytes"] <= 64 * MIB


def test_a_rotation_that_waits_on_the_budget_says_so(data_dir):
    """Hot partitions, a small budget that other partitions hold (planted
    here as a charge on the account), a short max_block_ms: the BufferFull
    names shm_budget_bytes, the count and what to change; once pages come
    back the same producer goes on and nothing committed is lost."""
    budget = 8 * MIB
    chunk = 256 << 10
    with running_cluster(data_dir, shm_budget_bytes=budget) as c:
        c.create_topic("hot", partitions=4, chunk_bytes=chunk, chunk_count=4)
        acc = budget_region.BudgetRegion.attach(budget_region.region_name(c.cluster_id))
        try:
            held = budget - acc.reserved - chunk // 2  # less than a chunk left
            assert acc.charge(held)
            sent, err = [], None
            with c.producer(max_block_ms=200) as p:
                for i in range(4 * 4 * chunk // 1024):
                    v = b"%08d" % i + b"h" * 1016
                    try:
                        p.send("hot", v, partition=i % 4)
                        p.flush()
                    except errors.BufferFull as exc:
                        err = exc
                        break
                    sent.append(v)
                assert err is not None, "no rotation ever waited"
                msg = str(err)
                assert f"shm_budget_bytes={budget}" in msg and "MiB" in msg and "reserved" in msg
                for advice in ("Raise shm_budget_bytes", "fewer partitions hot", "smaller chunk_bytes",
                               "consume faster"):
                    assert advice in msg, msg
                assert "consumers are not keeping up" not in msg  # the generic hint would mislead
                acc.credit(held)  # the pages come back
                p.send("hot", v, partition=i % 4)
                p.flush()
                sent.append(v)
        finally:
            acc.close()
        with c.consumer("hot", group="g", auto_offset_reset="earliest") as cons:
            got = []
            deadline = time.monotonic() + 30
            while len(got) < len(sent) and time.monotonic() < deadline:
                got += cons.consume(max_messages=10_000, timeout=0.5)
        assert sorted(m.value for m in got) == sorted(sent)
