"""Mirrors against a real Kafka-compatible broker (tansu, and where marked
`remote` also shmlog's own Kafka listener in a second data dir), never a mock:
out (keys, values, headers, timestamps, placement, order, each once), in,
SIGKILL of the mirror (nothing lost, duplicates within max_in_flight), and
SIGKILL of the broker (retrying with a visible error, clean resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

pytest.importorskip("confluent_kafka", reason="the bridge tests need confluent-kafka (shmlog[kafka])")

from _broker_helpers import ROOMY, collect, kafka_partition, running_cluster, wait_for  # noqa: E402
from _tansu import create_remote_topic, read_all  # noqa: E402

import shmlog.bridge.mirror_out as mirror_out_module  # noqa: E402
from shmlog.bridge.mirror import DEFAULT_MAX_IN_FLIGHT, MirrorOut, open_mirror, status_path  # noqa: E402

# tansu joins a Kafka consumer group after about half the session timeout
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
TS0 = 1_700_000_000_000
# 200k keyed messages through a memory topic smaller than them (the mirror's
# commits are what lets the producer go on: backpressure on the way)
N_OUT = 200_000
TIGHT = {"storage": "memory", "chunk_bytes": 256 << 10, "chunk_count": 4}  # 1 MiB a partition


def _key(i: int) -> bytes:
    return b"key-%d" % (i % 1013)


def _produce(cluster, topic: str, lo: int, hi: int, step: int = 5000) -> None:
    p = cluster.producer()
    for a in range(lo, hi, step):
        b = min(hi, a + step)
        p.send_batch(topic, [b"value-%d" % i for i in range(a, b)], keys=[_key(i) for i in range(a, b)],
                     headers=[[("i", b"%d" % i), ("src", b"shmlog")] for i in range(a, b)],
                     timestamps=[TS0 + i for i in range(a, b)])
    p.flush()
    p.close()


def _index(m) -> int:
    value = m.value() if callable(m.value) else m.value  # a Kafka or a shmlog message
    return int(value.split(b"-")[1])


def _wait_joined(cluster, group: str, timeout: float = 20.0) -> None:
    def joined():
        try:
            return cluster.describe_group(group)["members"]
        except Exception:
            return None

    wait_for(joined, timeout, 0.05, f"the mirror to join group {group!r}")


def _check_remote(msgs, lo: int, hi: int, partitions: int, *, max_dups: int = 0,
                  order_by: str = "partition") -> None:
    """Every index in [lo, hi) arrived, on Kafka's partition for its key, in
    order within its partition (or only per key, when several local
    partitions feed one remote one; a resend starts over at an earlier
    point, so order is checked between first arrivals), with its headers
    and timestamp; duplicates at most max_dups."""
    counts = Counter(_index(m) for m in msgs)
    missing = [i for i in range(lo, hi) if i not in counts]
    assert not missing, f"{len(missing)} messages never arrived, first {missing[:5]}"
    extra = [i for i in counts if not lo <= i < hi]
    assert not extra, f"unexpected messages {extra[:5]}"
    dups = sum(c - 1 for c in counts.values())
    assert dups <= max_dups, f"{dups} duplicates, more than the bound {max_dups}"
    seen = set()
    last = {}
    for m in msgs:
        i = _index(m)
        assert m.key() == _key(i)
        assert m.partition() == kafka_partition(_key(i), partitions), f"message {i} on partition {m.partition()}"
        assert m.headers() == [("i", b"%d" % i), ("src", b"shmlog")], m.headers()
        assert m.timestamp() == (1, TS0 + i)  # (CreateTime, ms) carried unchanged
        if i in seen:
            continue
        seen.add(i)
        k = m.partition() if order_by == "partition" else m.key()
        assert i > last.get(k, -1), f"{order_by} {k}: {i} after {last[k]}"
        last[k] = i


def test_mirror_out_keyed_four_partitions(data_dir, remote):
    tansu = remote  # tansu, or shmlog's own Kafka listener (shmlog to shmlog)
    with running_cluster(data_dir) as c:
        c.create_topic("events", partitions=4, **TIGHT)
        with open_mirror(c, "events", to=tansu.bootstrap, as_="events-remote", name="ev") as m:
            _wait_joined(c, "mirror.ev")
            t0 = time.monotonic()
            _produce(c, "events", 0, N_OUT)
            msgs = read_all(tansu.bootstrap, "events-remote", 4, N_OUT)
            took = time.monotonic() - t0
            _check_remote(msgs, 0, N_OUT, 4)
            assert len(msgs) == N_OUT  # each exactly once
            wait_for(lambda: m.status()["lag_messages"] == 0, 10, 0.05, "lag 0")
            st = m.status()
            assert st["state"] == "running" and st["error"] is None, st
        # progress is the group's commit: everything, after close
        parts = c.describe_group("mirror.ev")["partitions"]
        assert sum(p["committed"] for p in parts) == N_OUT and all(p["lag"] == 0 for p in parts), parts
        assert json.loads(status_path(data_dir, "ev").read_text())["state"] == "stopped"
    print(f"mirrored {N_OUT} messages in {took:.2f}s")


def test_mirror_out_partition_counts_differ(data_dir, remote):
    """3 local partitions into 5 remote ones: Kafka's placement, murmur2(key)."""
    tansu = remote
    create_remote_topic(tansu.bootstrap, "five", 5)
    with running_cluster(data_dir) as c:
        c.create_topic("three", partitions=3, **ROOMY)
        _produce(c, "three", 0, 3000)  # before the mirror: a memory topic this small keeps it all
        with open_mirror(c, "three", to=tansu.bootstrap, as_="five", name="three"):
            msgs = read_all(tansu.bootstrap, "five", 5, 3000)
        _check_remote(msgs, 0, 3000, 5, order_by="key")
        assert len(msgs) == 3000


def test_mirror_out_of_a_disk_topic_read_behind_the_shared_memory(tansu, data_dir):
    """A disk topic whose first messages left shared memory (read back from
    segment files, a copied run rather than a view of the mapping) mirrors
    out the same: keys, headers, timestamps, each once."""
    n = 3000
    with running_cluster(data_dir) as c:
        c.create_topic("spilled", partitions=2, storage="disk", chunk_bytes=64 << 10, chunk_count=4)
        p = c.producer()
        for a in range(0, n, 500):
            p.send_batch("spilled", [b"value-%d-" % i + b"." * 300 for i in range(a, a + 500)],
                         keys=[_key(i) for i in range(a, a + 500)],
                         headers=[[("i", b"%d" % i), ("src", b"shmlog")] for i in range(a, a + 500)],
                         timestamps=[TS0 + i for i in range(a, a + 500)])
        p.flush(durable=True)
        p.close()
        assert min(q.start_offset for q in c.describe_topic("spilled").partitions) == 0
        create_remote_topic(tansu.bootstrap, "spilled-remote", 2)
        with open_mirror(c, "spilled", to=tansu.bootstrap, as_="spilled-remote", name="sp"):
            msgs = read_all(tansu.bootstrap, "spilled-remote", 2, n)
        _check_remote(msgs, 0, n, 2)
        assert len(msgs) == n


def test_mirror_in(data_dir, remote):
    from confluent_kafka import Consumer, Producer, TopicPartition

    tansu = remote
    n = 20_000
    create_remote_topic(tansu.bootstrap, "remote-in", 3)
    kp = Producer({"bootstrap.servers": tansu.bootstrap, "enable.idempotence": True})
    for i in range(n):
        key = None if i % 10 == 0 else _key(i)  # keyless ones too
        kp.produce("remote-in", value=b"value-%d" % i, key=key, partition=i % 3, timestamp=TS0 + i,
                   headers=[("i", b"%d" % i)])
        if i % 1000 == 0:
            kp.poll(0)
    assert kp.flush(30) == 0
    del kp  # no reconnect noise from it after the broker stops
    with running_cluster(data_dir) as c:
        with open_mirror(c, "remote-in", from_=tansu.bootstrap, as_="local-in", name="in1", config=FAST_GROUP) as m:
            wait_for(lambda: "local-in" in c.topics(), 30, 0.05, "the local topic")
            assert c.describe_topic("local-in").config["partitions"] == 3  # created like the remote one
            with c.consumer("local-in") as cons:
                got = collect(cons, n, 60)
            wait_for(lambda: m.status()["messages"] == n, 10, 0.05, "the mirror to count them")
        assert len(got) == n
        last = {}
        for msg in got:
            i = _index(msg)
            assert msg.partition == i % 3  # partition i -> i (counts match)
            assert msg.key == (None if i % 10 == 0 else _key(i))
            assert msg.headers == [("i", b"%d" % i)]
            assert msg.timestamp_ms == TS0 + i
            assert i > last.get(msg.partition, -1)
            last[msg.partition] = i
        # Kafka's committed offsets moved only after shmlog had the batches: all of them now
        kc = Consumer({"bootstrap.servers": tansu.bootstrap, "group.id": "shmlog-mirror-in1"})
        try:
            committed = kc.committed([TopicPartition("remote-in", p) for p in range(3)], timeout=10)
        finally:
            kc.close()
        assert sum(tp.offset for tp in committed) == n, committed


def test_mirror_in_blocks_on_a_full_memory_topic(data_dir, tansu):
    """A memory topic full of what its group has not read holds the inbound
    mirror back (state "blocked", nothing committed to Kafka past it);
    once the group reads on, everything arrives, in order, none dropped."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    n = 4000
    create_remote_topic(tansu.bootstrap, "big", 1)
    kp = Producer({"bootstrap.servers": tansu.bootstrap, "enable.idempotence": True})
    for i in range(n):
        kp.produce("big", value=b"value-%d-" % i + b"x" * 200, key=_key(i), partition=0)
    assert kp.flush(30) == 0
    del kp
    with running_cluster(data_dir) as c:
        c.create_topic("small", partitions=1, storage="memory", chunk_bytes=64 << 10, chunk_count=4)
        with c.consumer("small", group="slow", enable_auto_commit=False) as slow:
            slow.consume(timeout=0.5)  # joined: the topic now keeps what "slow" has not committed
            with open_mirror(c, "big", from_=tansu.bootstrap, as_="small", name="in-small", config=FAST_GROUP) as m:
                wait_for(lambda: m.status()["state"] == "blocked", 30, 0.05, "the mirror to block")
                kc = Consumer({"bootstrap.servers": tansu.bootstrap, "group.id": "shmlog-mirror-in-small"})
                try:
                    (tp,) = kc.committed([TopicPartition("big", 0)], timeout=10)
                finally:
                    kc.close()
                assert tp.offset < n  # Kafka's commit waits for shmlog
                got = []
                deadline = time.monotonic() + 60
                while len(got) < n and time.monotonic() < deadline:
                    batch = slow.consume(max_messages=500, timeout=0.5)
                    got.extend(batch)
                    if batch:
                        slow.commit()
                assert [_index(x) for x in got] == list(range(n))
                wait_for(lambda: m.status()["state"] == "running", 10, 0.05, "the mirror to run again")


def _mirror_proc(data_dir, bootstrap: str, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "shmlog", "mirror", "out", "--data-dir", str(data_dir), "--foreground",
            "--topic", "events", "--to", bootstrap, "--as", "events-remote", "--name", "ev", *extra]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(str(data_dir), "..", "mirror.err"), "ab"))


def _committed(c, group: str) -> int:
    try:
        return sum(p["committed"] or 0 for p in c.describe_group(group)["partitions"])
    except Exception:
        return 0


def test_mirror_out_sigkill_resumes_within_bound(data_dir, tansu):
    """SIGKILL the mirror mid-stream, start it again: nothing lost, and no
    more duplicates than --max-in-flight."""
    n, bound = 60_000, 4000
    procs = []
    try:
        with running_cluster(data_dir) as c:
            c.create_topic("events", partitions=4, **ROOMY)
            procs.append(_mirror_proc(data_dir, tansu.bootstrap, "--max-in-flight", str(bound)))
            _wait_joined(c, "mirror.ev")
            p = c.producer()
            killed = restarted = False
            for a in range(0, n, 1000):
                p.send_batch("events", [b"value-%d" % i for i in range(a, a + 1000)],
                             keys=[_key(i) for i in range(a, a + 1000)],
                             headers=[[("i", b"%d" % i), ("src", b"shmlog")] for i in range(a, a + 1000)],
                             timestamps=[TS0 + i for i in range(a, a + 1000)])
                p.flush()
                if not killed and a >= n // 3:
                    wait_for(lambda: _committed(c, "mirror.ev") > 0, 20, 0.01, "a first commit")
                    procs[0].send_signal(signal.SIGKILL)
                    procs[0].wait(10)
                    killed = True
                    before = _committed(c, "mirror.ev")
                    assert 0 < before < n
                elif killed and not restarted and a >= n // 2:
                    procs.append(_mirror_proc(data_dir, tansu.bootstrap, "--max-in-flight", str(bound)))
                    restarted = True
                time.sleep(0.02)  # a stream, not one burst
            p.close()
            wait_for(lambda: _committed(c, "mirror.ev") == n, 60, 0.05, "the restarted mirror to catch up")
            msgs = read_all(tansu.bootstrap, "events-remote", 4, n)
            _check_remote(msgs, 0, n, 4, max_dups=bound)
            procs[-1].send_signal(signal.SIGTERM)
            assert procs[-1].wait(20) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_mirror_out_commits_never_pass_what_kafka_acknowledged(data_dir, tansu):
    """Commits run on the consumer's commit thread while the mirror goes on
    producing, yet never cover a message Kafka has not acknowledged: with
    the broker frozen (SIGSTOP) mid-stream, messages wait in flight and the
    group's commit stays at or below what was acknowledged, and the window
    (in flight + acknowledged + being committed) within max_in_flight, so a
    SIGKILL then resends at most that. Thawed, every message arrives once."""
    n, bound = 40_000, 6000
    with running_cluster(data_dir) as c:
        c.create_topic("events", partitions=4, **ROOMY)
        with open_mirror(c, "events", to=tansu.bootstrap, as_="events-remote", name="ev",
                         max_in_flight=bound) as m:
            _wait_joined(c, "mirror.ev")
            _produce(c, "events", 0, n // 2)
            wait_for(lambda: _committed(c, "mirror.ev") > 0, 20, 0.01, "a first commit")
            os.kill(tansu.proc.pid, signal.SIGSTOP)
            try:
                _produce(c, "events", n // 2, n)
                waiting = 0
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    committed = c.describe_group("mirror.ev")["partitions"]
                    acknowledged = dict(m._resume)  # only grows: read after the commits
                    for p in committed:
                        got = acknowledged.get(("events", p["partition"]), 0)
                        assert (p["committed"] or 0) <= got, (p, acknowledged)
                    assert m._inflight + m._acked_since + m._committing <= bound
                    waiting += m._inflight > 0
                    time.sleep(0.01)
                assert waiting > 10, "nothing waited for the frozen broker: the test proves nothing"
                assert _committed(c, "mirror.ev") < n
            finally:
                os.kill(tansu.proc.pid, signal.SIGCONT)
            msgs = read_all(tansu.bootstrap, "events-remote", 4, n)
            _check_remote(msgs, 0, n, 4)
            assert len(msgs) == n  # each once: no resend in normal operation
            wait_for(lambda: _committed(c, "mirror.ev") == n, 20, 0.05, "every message committed")


def test_mirror_out_survives_broker_restart(data_dir, tansu):
    """SIGKILL tansu: the mirror retries with backoff and shows the error;
    a fresh broker on the same address (memory storage forgot everything)
    gets everything not committed before, and the state is clean again."""
    with running_cluster(data_dir) as c:
        c.create_topic("events", partitions=4, **ROOMY)
        with open_mirror(c, "events", to=tansu.bootstrap, as_="events-remote", name="ev",
                      config={"reconnect.backoff.max.ms": "500"}, stall_timeout_s=2.0) as m:
            _wait_joined(c, "mirror.ev")
            _produce(c, "events", 0, 5000)
            read_all(tansu.bootstrap, "events-remote", 4, 5000)
            wait_for(lambda: _committed(c, "mirror.ev") == 5000, 10, 0.05, "the first commit")
            tansu.kill()
            _produce(c, "events", 5000, 10_000)
            st = wait_for(lambda: (lambda s: s if s["error"] else None)(m.status()), 30, 0.05,
                          "the mirror to show the error")
            assert st["state"] == "retrying" and "127.0.0.1" in st["error"], st
            # what `shmlog mirror list` shows (written just after the error is set)
            wait_for(lambda: json.loads(status_path(data_dir, "ev").read_text())["error"], 5, 0.05,
                     "the status file to show the error")
            row = c.stats()["mirrors"][0]  # as `shmlog mirror list` and `stats` show it
            assert row["name"] == "ev" and row["state"] == "retrying" and row["error"], row
            assert _committed(c, "mirror.ev") == 5000  # nothing committed while Kafka is away
            time.sleep(1.0)
            tansu.start()
            msgs = read_all(tansu.bootstrap, "events-remote", 4, 5000, timeout=30)
            _check_remote(msgs, 5000, 10_000, 4)
            wait_for(lambda: _committed(c, "mirror.ev") == 10_000, 20, 0.05, "the commit after the restart")
            wait_for(lambda: m.status()["error"] is None, 10, 0.05, "the error to clear")
            assert m.status()["state"] == "running"


def test_managed_mirror_restarts_after_sigkill(data_dir, tansu):
    """`shmlog mirror out` hands the mirror to the supervisor, which starts it
    again after a SIGKILL; `mirror list` shows it, `mirror stop` ends it."""
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "shmlog", "mirror", *args, "--data-dir", str(data_dir)],
                              capture_output=True, text=True, timeout=60)

    with running_cluster(data_dir) as c:
        c.create_topic("events", partitions=4, **ROOMY)
        r = cli("out", "--topic", "events", "--to", tansu.bootstrap, "--as", "events-remote", "--name", "ev")
        assert r.returncode == 0, r.stderr
        _wait_joined(c, "mirror.ev")
        _produce(c, "events", 0, 2000)
        read_all(tansu.bootstrap, "events-remote", 4, 2000)
        rows = json.loads(cli("list", "--json").stdout)
        assert [(r["name"], r["state"], r["managed"]) for r in rows] == [("ev", "running", True)], rows
        pid = rows[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (json.loads(cli("list", "--json").stdout) or [{}])[0].get("pid") not in (None, pid),
                 30, 0.2, "the supervisor to start the mirror again")
        _produce(c, "events", 2000, 4000)
        msgs = read_all(tansu.bootstrap, "events-remote", 4, 4000)
        # the kill came after the first 2000 were committed (read_all saw them)... or not: bounded anyway
        _check_remote(msgs, 0, 4000, 4, max_dups=DEFAULT_MAX_IN_FLIGHT)
        table = cli("list").stdout
        assert "ev" in table and "running" in table, table
        prom = subprocess.run([sys.executable, "-m", "shmlog", "stats", "--prometheus", "--data-dir", str(data_dir)],
                              capture_output=True, text=True, timeout=60).stdout
        assert 'shmlog_mirror_lag_messages{mirror="ev",direction="out"}' in prom, prom[-2000:]
        assert 'shmlog_mirror_up{mirror="ev",direction="out"} 1' in prom
        wait_for(lambda: (json.loads(cli("list", "--json").stdout) or [{}])[0].get("lag_messages") == 0, 20, 0.2,
                 "lag 0")
        top = subprocess.run([sys.executable, "-m", "shmlog", "top", "--iterations", "1", "--json", "--data-dir",
                              str(data_dir)], capture_output=True, text=True, timeout=60)
        assert top.returncode == 0, top.stderr
        (mrow,) = json.loads(top.stdout)["mirrors"]
        assert (mrow["name"], mrow["direction"], mrow["state"], mrow["lag_messages"]) == ("ev", "out", "running", 0)
        assert mrow["lag_seconds"] == 0 and mrow["rate"] is not None, mrow
        frame = subprocess.run([sys.executable, "-m", "shmlog", "top", "--iterations", "1", "--data-dir",
                                str(data_dir)], capture_output=True, text=True, timeout=60).stdout
        assert "MIRROR" in frame and "LAG-S" in frame and tansu.bootstrap in frame, frame
        desc = subprocess.run([sys.executable, "-m", "shmlog", "groups", "describe", "mirror.ev", "--data-dir",
                               str(data_dir)], capture_output=True, text=True, timeout=60)
        assert desc.returncode == 0, desc.stderr
        assert "Mirror: ev\tState: running" in desc.stdout and "Lag: 0 messages, 0" in desc.stdout, desc.stdout
        r = cli("stop", "ev")
        assert r.returncode == 0, r.stderr
        assert json.loads(cli("list", "--json").stdout) == []


def test_mirror_out_pattern_picks_up_new_topics(data_dir, tansu, monkeypatch):
    monkeypatch.setattr(mirror_out_module, "RESCAN_INTERVAL", 0.3)
    with running_cluster(data_dir) as c:
        c.create_topic("logs-a", partitions=2, **ROOMY)
        with open_mirror(c, to=tansu.bootstrap, pattern=r"logs-.*", name="logs"):
            _wait_joined(c, "mirror.logs")
            _produce(c, "logs-a", 0, 500)
            c.create_topic("logs-b", partitions=2, **ROOMY)
            c.create_topic("other", partitions=1, **ROOMY)
            _produce(c, "other", 0, 10)
            wait_for(lambda: ("logs-b", 0) in {(p["topic"], p["partition"])
                                               for p in c.describe_group("mirror.logs")["partitions"]},
                     20, 0.05, "the mirror to take logs-b")
            _produce(c, "logs-b", 500, 1000)
            _check_remote(read_all(tansu.bootstrap, "logs-a", 2, 500), 0, 500, 2)
            _check_remote(read_all(tansu.bootstrap, "logs-b", 2, 500), 500, 1000, 2)
        from _tansu import remote_topics

        assert "other" not in remote_topics(tansu.bootstrap)


def test_missing_extra_names_it(monkeypatch):
    from shmlog.bridge import kafka_client

    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(kafka_client.KafkaUnavailable, match=r"pip install 'shmlog\[kafka\]'"):
        kafka_client.kafka()


def test_settings_that_would_break_the_guarantee_are_refused(data_dir):
    with running_cluster(data_dir) as c:
        c.create_topic("events", partitions=1, **ROOMY)
        for bad in ({"enable.idempotence": "false"}, {"message.timeout.ms": "30000"}):
            m = MirrorOut(c, "events", to="127.0.0.1:1", config=bad)
            with pytest.raises(Exception, match=next(iter(bad))):
                m._producer_conf()


def test_guarantees_doc_states_the_bounds_the_code_has():
    """docs/guarantees.md gives the duplicate bounds in numbers: they are
    the code's defaults (the SIGKILL test above checks that a bound holds)."""
    import inspect
    from pathlib import Path

    from shmlog.bridge.mirror_in import MirrorIn

    doc = (Path(__file__).resolve().parents[2] / "docs" / "guarantees.md").read_text()
    section = doc.split("## Mirrors to and from Kafka", 1)[1].split("\n## ", 1)[0]
    out_default = inspect.signature(MirrorOut.__init__).parameters["max_in_flight"].default
    in_default = inspect.signature(MirrorIn.__init__).parameters["batch"].default
    assert out_default == DEFAULT_MAX_IN_FLIGHT
    assert f"at most `max_in_flight` messages ({out_default:,} by default) a second" in section, section
    assert f"at most `batch` messages ({in_default:,} by" in section, section


def test_one_mib_messages_mirror_out_and_back_in(data_dir, remote):
    """Kafka's largest default message (1 MiB, key included) on a default
    disk topic goes out to the remote cluster and comes back in through a
    mirror in, byte for byte, next to small ones in the same runs."""
    from shmlog.broker import shm_budget

    mmb = shm_budget.DEFAULT_MAX_MESSAGE_BYTES
    key = b"k" * 16
    big_plain = os.urandom(mmb)
    big_keyed = os.urandom(mmb - len(key))
    with running_cluster(data_dir, shm_budget_bytes=512 << 20) as c:
        c.create_topic("big", partitions=2)
        with c.producer(max_block_ms=20_000) as p:
            p.send("big", b"small-0", partition=0)
            p.send("big", big_plain, partition=0, headers=[("h", b"1")])
            p.send("big", big_keyed, key=key)
            p.send("big", b"small-1", partition=0)
            p.flush()
        with open_mirror(c, "big", to=remote.bootstrap, as_="big-remote", name="big") as m:
            msgs = read_all(remote.bootstrap, "big-remote", 2, 4)
            st = m.status()
            assert st["error"] is None, st
        got = sorted((x.value(), x.key()) for x in msgs)
        assert got == sorted([(b"small-0", None), (big_plain, None), (big_keyed, key), (b"small-1", None)])
        assert [x.headers() for x in msgs if x.value() == big_plain] == [[("h", b"1")]]
        c.create_topic("back", partitions=2)
        with open_mirror(c, "big-remote", from_=remote.bootstrap, as_="back", name="back",
                         config=FAST_GROUP):
            with c.consumer("back", group=None, auto_offset_reset="earliest") as cons:
                back = collect(cons, 4, timeout=60)
        assert sorted((x.value, x.key) for x in back) == got


def test_a_message_over_the_producers_limit_is_named_and_not_skipped(data_dir, tansu):
    """-X message.max.bytes below a message: the mirror stops at it with an
    error naming the setting, retries, and commits nothing past it."""
    with running_cluster(data_dir) as c:
        c.create_topic("t", partitions=1, storage="memory", chunk_bytes=4 << 20, chunk_count=4,
                       max_message_bytes=1_000_000)
        with c.producer() as p:
            p.send("t", b"small")
            p.send("t", os.urandom(300_000))
            p.send("t", b"after")
            p.flush()
        with open_mirror(c, "t", to=tansu.bootstrap, name="lim",
                         config={"message.max.bytes": "200000"}) as m:
            wait_for(lambda: "message.max.bytes=200000" in (m.status()["error"] or ""), 30, 0.1,
                     "the mirror to name message.max.bytes")
            assert "t[0] at offsets" in m.status()["error"]
        # the big message and the one after it were never committed as mirrored
        assert _committed(c, "mirror.lim") <= 1
