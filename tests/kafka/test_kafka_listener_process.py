"""The listener as a process of its own: started by the supervisor (config
or `shmlog serve --kafka-listener`), restarted after a crash while Kafka
clients reconnect, stopped with the supervisor; topic auto-creation can be
turned off."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time

import psutil
from _broker_helpers import running_cluster, wait_for
from _kafka_helpers import (
    api_versions_ok,
    free_port,
    kafka_cluster,
    metadata_cluster_id,
    wait_listening,
)
from _kafka_wire import Wire, string

from shmlog.kafka import protocol as P

TOPIC = {"storage": "memory", "chunk_bytes": 1 << 20, "chunk_count": 4}


def listeners_of(data_dir) -> list:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "shmlog.kafka" in cmd and str(data_dir) in cmd:
            out.append(p.pid)
    return out


def test_listener_is_restarted_after_sigkill(data_dir):
    import confluent_kafka as ck

    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("r", partitions=2, **TOPIC)
        p = ck.Producer({"bootstrap.servers": bs, "linger.ms": 1, "reconnect.backoff.ms": 50,
                         "reconnect.backoff.max.ms": 200})
        for i in range(500):
            p.produce("r", key=b"%d" % i, value=b"before-%d" % i)
        assert p.flush(30) == 0
        [old] = listeners_of(data_dir)
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: [x for x in listeners_of(data_dir) if x != old], 20, what="a new listener")
        wait_listening(int(bs.rsplit(":", 1)[1]))
        for i in range(500):
            p.produce("r", key=b"%d" % i, value=b"after-%d" % i)
        assert p.flush(30) == 0
        assert sum(r.end_offset() for r in cluster.topic("r").regions) == 1000
        assert new and old not in listeners_of(data_dir)
        c = ck.Consumer({"bootstrap.servers": bs, "group.id": "r", "auto.offset.reset": "earliest"})
        c.subscribe(["r"])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 1000 and time.monotonic() < deadline:
            got += [m.value() for m in c.consume(1000, 0.5) if m.error() is None]
        c.close()
        assert sorted(got) == sorted([b"before-%d" % i for i in range(500)] + [b"after-%d" % i for i in range(500)])


def _metadata(bs: str, topic: str) -> int:
    with Wire(bs) as w:
        resp = w.call(P.METADATA, 4, struct.pack(">i", 1) + string(topic) + b"\x01")
    # throttle, brokers (node, host, port, rack), cluster id, controller, topics
    pos = 4
    (nb,) = struct.unpack_from(">i", resp, pos)
    pos += 4
    for _ in range(nb):
        pos += 4
        (hl,) = struct.unpack_from(">h", resp, pos)
        pos += 2 + hl + 4
        (rl,) = struct.unpack_from(">h", resp, pos)
        pos += 2 + max(rl, 0)
    (cl,) = struct.unpack_from(">h", resp, pos)
    pos += 2 + max(cl, 0) + 4 + 4
    return struct.unpack_from(">h", resp, pos)[0]


def test_auto_create_on_and_off(data_dir, tmp_path):
    with kafka_cluster(data_dir) as (cluster, bs):
        assert _metadata(bs, "made-on-demand") == 0
        assert "made-on-demand" in cluster.topics()
    with kafka_cluster(tmp_path / "off", kafka_auto_create_topics=False) as (cluster, bs):
        assert _metadata(bs, "not-made") == P.UNKNOWN_TOPIC_OR_PARTITION
        assert "not-made" not in cluster.topics()


def test_serve_kafka_listener_flag_and_clean_stop(data_dir):
    port = free_port()
    sup = subprocess.Popen([sys.executable, "-m", "shmlog", "serve", "--data-dir", str(data_dir),
                            "--kafka-listener", f"127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        assert len(listeners_of(data_dir)) == 1
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(20)
    assert not listeners_of(data_dir)
    assert not api_versions_ok(port)


def test_idempotent_retry_across_a_listener_restart(data_dir):
    """The listener keeps producer sequences in memory; after a restart it
    reads a producer's recent batches back from the frame headers, so a
    retry into the new listener is still acknowledged, not appended."""
    from _kafka_wire import batch, produce_body, produce_result

    with kafka_cluster(data_dir) as (cluster, bs):
        cluster.create_topic("ir", partitions=1, **TOPIC)
        plog = cluster.topic("ir").regions[0]
        with Wire(bs) as w:
            resp = w.call(P.INIT_PRODUCER_ID, 1, string(None) + struct.pack(">i", 30000))
            pid, epoch = struct.unpack_from(">qh", resp, 6)
            bs_ = [batch([(b"k%d" % j, b"v%d-%d" % (i, j)) for j in range(3)], producer_id=pid, epoch=epoch,
                         base_sequence=3 * i) for i in range(4)]
            for i in range(3):
                assert produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "ir", 0, bs_[i]))) == (0, 3 * i)
        [old] = listeners_of(data_dir)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: [x for x in listeners_of(data_dir) if x != old], 20, what="a new listener")
        wait_listening(int(bs.rsplit(":", 1)[1]))
        with Wire(bs) as w:
            # the response to batch 2 was "lost" with the old listener: the retry
            assert produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "ir", 0, bs_[2]))) == (0, 6)
            assert plog.end_offset() == 9
            assert produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "ir", 0, bs_[3]))) == (0, 9)
            gap = batch([(b"x", b"y")], producer_id=pid, epoch=epoch, base_sequence=40)
            code, _ = produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "ir", 0, gap)))
            assert code == P.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert plog.end_offset() == 12


def test_auto_started_supervisor_idles_out_unless_kafka_clients_are_connected(data_dir):
    """The listener is the supervisor's own process, not a client: with no
    Kafka client connected an auto-started supervisor exits after
    idle_timeout_s as it would without a listener; a connected Kafka client
    keeps it up (and is served) for as long as it stays."""
    from _broker_helpers import pid_gone, stop_supervisor

    import shmlog

    port = free_port()
    cluster = shmlog.connect(data_dir, kafka_listener=f"127.0.0.1:{port}", idle_timeout_s=1)
    pid = cluster.supervisor_pid
    try:
        wait_listening(port)
        with Wire(f"127.0.0.1:{port}") as w:
            cluster.close()
            # several idle timeouts pass with only the Kafka client connected
            for _ in range(4):
                time.sleep(1.0)
                assert not pid_gone(pid)
                assert w.call(18, 0, b"") is not None  # ApiVersions: still answered
        wait_for(lambda: pid_gone(pid), 30, what="the idle supervisor to exit")
        wait_for(lambda: not listeners_of(data_dir), 30, what="the listener to stop with it")
    finally:
        stop_supervisor(data_dir)


def test_listener_exits_with_its_supervisor_and_the_next_one_serves_the_port(data_dir):
    """A SIGKILLed supervisor takes its listener with it (the listener
    watches the supervisor's pidfd); the supervisor the client starts next
    binds the same port again and its listener serves it."""
    from _broker_helpers import pid_gone

    with kafka_cluster(data_dir) as (cluster, bs):
        port = int(bs.rsplit(":", 1)[1])
        [old] = listeners_of(data_dir)
        os.kill(cluster.supervisor_pid, signal.SIGKILL)
        wait_for(lambda: pid_gone(old), 20, what="the listener to exit with its supervisor")
        cluster.topics()  # the client starts the next supervisor
        wait_for(lambda: [x for x in listeners_of(data_dir) if x != old], 20, what="a new listener")
        wait_listening(port)
        assert metadata_cluster_id(port) == cluster.cluster_id


def test_a_taken_port_is_retried_without_starting_listeners(data_dir):
    """While someone else holds the port, the supervisor retries bind()
    alone: no listener process is started (each would cost a Python start on
    a core the data path may need), shared-memory clients are served, and a
    listener serves the port once it is free."""
    import socket

    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        with running_cluster(data_dir, kafka_listener=f"127.0.0.1:{port}") as cluster:
            cluster.create_topic("t", partitions=1, **TOPIC)
            seen = set()
            for _ in range(30):  # past several back-off steps (0.2, 0.5, 1.0, ...)
                seen.update(listeners_of(data_dir))
                time.sleep(0.1)
            assert not seen
            blocker.close()
            wait_listening(port)
            assert metadata_cluster_id(port) == cluster.cluster_id
    finally:
        blocker.close()


def test_an_idle_listener_has_no_timer(data_dir):
    """An idle listener sleeps until a client or the supervisor's exit wakes
    it: no periodic wakeup (each would take a core from the data path)."""
    with kafka_cluster(data_dir) as (_cluster, _bs):
        [pid] = listeners_of(data_dir)
        proc = psutil.Process(pid)
        time.sleep(0.5)  # past its start-up

        def wakeups() -> int:
            return sum(psutil.Process(t.id).num_ctx_switches().voluntary for t in proc.threads())

        before = wakeups()
        time.sleep(4.0)
        assert wakeups() - before <= 1
