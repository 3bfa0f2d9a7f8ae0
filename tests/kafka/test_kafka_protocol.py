"""The listener at the byte level: version negotiation (KIP-511), old
Produce/Fetch versions, CRC checks, acks=0, idempotent retries, the Fetch
long poll, and bad input (oversized, unknown API, truncated, slowloris,
never-reading clients, seeded fuzz) costing only the offending connection."""

from __future__ import annotations

import socket
import struct
import threading
import time

import psutil
import pytest
from _kafka_helpers import kafka_cluster
from _kafka_wire import (
    Wire,
    batch,
    fetch_body,
    fetch_result,
    fuzz_run,
    produce_body,
    produce_result,
    string,
)

from shmlog.kafka import protocol as P

TOPIC = {"storage": "memory", "chunk_bytes": 1 << 20, "chunk_count": 4}


@pytest.fixture(scope="module")
def kc(tmp_path_factory):
    with kafka_cluster(tmp_path_factory.mktemp("kafka") / "data") as (cluster, bs):
        for name in ("p", "idem", "poll", "fuzz", "acks0"):
            cluster.create_topic(name, partitions=1, **TOPIC)
        yield cluster, bs


def listener_pid(cluster) -> int:
    me = psutil.Process()
    for p in me.children(recursive=True):
        try:
            if "shmlog.kafka" in " ".join(p.cmdline()):
                return p.pid
        except psutil.Error:
            pass
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "shmlog.kafka" in cmd and str(cluster.data_dir) in cmd:
            return p.pid
    raise AssertionError("no listener process")


def records_of(raw: bytes):
    from kafka.record import MemoryRecords

    out = []
    mr = MemoryRecords(raw)
    while mr.has_next():
        b = mr.next_batch()
        out += [(r.offset, r.key, r.value) for r in b]
    return out


def test_api_versions_every_version_and_kip511(kc):
    _c, bs = kc
    with Wire(bs) as w:
        for v in range(4):
            resp = w.call(P.API_VERSIONS, v, b"" if v < 3 else b"\x05wire\x021\x00")
            code = struct.unpack_from(">h", resp, 0)[0]
            assert code == 0
        # a version above ours: the v0 answer with UNSUPPORTED_VERSION and our ranges
        resp = w.call(P.API_VERSIONS, 4, b"\x05wire\x021\x00")
        code, n = struct.unpack_from(">hi", resp, 0)
        assert code == P.UNSUPPORTED_VERSION
        ranges = {struct.unpack_from(">hhh", resp, 6 + 6 * i)[0]: struct.unpack_from(">hhh", resp, 6 + 6 * i)[1:]
                  for i in range(n)}
        assert ranges == P.SUPPORTED
        assert all(lo == 0 for lo, _hi in ranges.values())


def test_old_produce_and_fetch_get_an_error_per_partition(kc):
    _c, bs = kc
    with Wire(bs) as w:
        code, _ = produce_result(2, w.call(P.PRODUCE, 2, produce_body(2, "p", 0, b"\0" * 30)))
        assert code == P.UNSUPPORTED_VERSION
        code, _hw, recs = fetch_result(3, w.call(P.FETCH, 3, fetch_body(3, "p", 0, 0)))
        assert code == P.UNSUPPORTED_VERSION and recs == b""


@pytest.mark.parametrize("pv,fv", [(3, 4), (5, 7), (8, 11)])
def test_produce_fetch_versions_and_bad_crc(kc, pv, fv):
    cluster, bs = kc
    with Wire(bs) as w:
        start = cluster.topic("p").regions[0].end_offset()
        good = batch([(b"k%d" % i, b"v%d" % i) for i in range(10)])
        code, base = produce_result(pv, w.call(P.PRODUCE, pv, produce_body(pv, "p", 0, good)))
        assert (code, base) == (0, start)
        bad = bytearray(good)
        bad[-1] ^= 0xFF  # the CRC covers this byte
        code, _ = produce_result(pv, w.call(P.PRODUCE, pv, produce_body(pv, "p", 0, bytes(bad))))
        assert code == P.CORRUPT_MESSAGE
        code, hw, recs = fetch_result(fv, w.call(P.FETCH, fv, fetch_body(fv, "p", 0, start)))
        assert code == 0 and hw == start + 10
        assert records_of(recs) == [(start + i, b"k%d" % i, b"v%d" % i) for i in range(10)]
        # unknown topic and out-of-range offsets are per-partition errors
        code, _ = produce_result(pv, w.call(P.PRODUCE, pv, produce_body(pv, "nope", 0, good)))
        assert code == P.UNKNOWN_TOPIC_OR_PARTITION
        code, _hw, _r = fetch_result(fv, w.call(P.FETCH, fv, fetch_body(fv, "p", 0, start + 1000)))
        assert code == P.OFFSET_OUT_OF_RANGE


def test_acks_0_gets_no_response(kc):
    cluster, bs = kc
    with Wire(bs) as w:
        w.send(P.PRODUCE, 7, produce_body(7, "acks0", 0, batch([(None, b"fire")]), acks=0))
        # the next answer on this connection is for the next request
        code = struct.unpack_from(">h", w.call(P.API_VERSIONS, 0, b""), 0)[0]
        assert code == 0
    deadline = time.monotonic() + 5
    while cluster.topic("acks0").regions[0].end_offset() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_idempotent_retry_is_acknowledged_once(kc):
    cluster, bs = kc
    plog = cluster.topic("idem").regions[0]
    with Wire(bs) as w:
        resp = w.call(P.INIT_PRODUCER_ID, 1, string(None) + struct.pack(">i", 30000))
        _t, code, pid, epoch = struct.unpack_from(">ihqh", resp, 0)
        assert code == 0 and pid > 0
        b0 = batch([(b"a", b"1"), (b"b", b"2")], producer_id=pid, epoch=epoch, base_sequence=0)
        b1 = batch([(b"c", b"3")], producer_id=pid, epoch=epoch, base_sequence=2)
        assert produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "idem", 0, b0))) == (0, 0)
        # the response to b1 is "lost": the producer closes and retries
        w.send(P.PRODUCE, 8, produce_body(8, "idem", 0, b1))
    deadline = time.monotonic() + 5
    while plog.end_offset() < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with Wire(bs) as w:
        assert produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "idem", 0, b1))) == (0, 2)
        assert produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "idem", 0, b0))) == (0, 0)
        gap = batch([(b"d", b"4")], producer_id=pid, epoch=epoch, base_sequence=7)
        code, _ = produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "idem", 0, gap)))
        assert code == P.OUT_OF_ORDER_SEQUENCE_NUMBER
        old = batch([(b"e", b"5")], producer_id=pid, epoch=epoch - 1 if epoch > 0 else -5, base_sequence=3)
        if epoch > 0:
            code, _ = produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "idem", 0, old)))
            assert code == P.INVALID_PRODUCER_EPOCH
    assert plog.end_offset() == 3  # each message once


def test_fetch_long_poll_is_woken_by_a_commit(kc):
    cluster, bs = kc
    end = cluster.topic("poll").regions[0].end_offset()

    def later():
        time.sleep(0.3)
        with cluster.producer() as p:
            p.send("poll", b"wake")
            p.flush()

    t = threading.Thread(target=later)
    with Wire(bs) as w:
        t0 = time.monotonic()
        t.start()
        code, _hw, recs = fetch_result(11, w.call(P.FETCH, 11, fetch_body(11, "poll", 0, end, max_wait=5000)))
        took = time.monotonic() - t0
        t.join()
        assert code == 0 and [r[2] for r in records_of(recs)] == [b"wake"]
        assert 0.25 < took < 2.0, took
        # nothing arrives: the answer comes after max_wait, empty
        t0 = time.monotonic()
        code, _hw, recs = fetch_result(11, w.call(P.FETCH, 11, fetch_body(11, "poll", 0, end + 1, max_wait=300)))
        assert code == 0 and recs == b"" and 0.25 < time.monotonic() - t0 < 2.0


def _still_serves(bs: str) -> None:
    with Wire(bs, timeout=5) as w:
        assert struct.unpack_from(">h", w.call(P.API_VERSIONS, 0, b""), 0)[0] == 0


def test_bad_frames_close_only_their_connection(kc):
    cluster, bs = kc
    pid = listener_pid(cluster)
    host, port = bs.rsplit(":", 1)
    # a size prefix over max_request_bytes, a negative one, an unknown API, a truncated header
    for raw in (struct.pack(">i", 1 << 30), struct.pack(">i", -5),
                struct.pack(">ihhi", 10, 999, 0, 1) + b"\xff\xff",
                struct.pack(">ihhi", 12, 3, 99, 1) + b"\x00\x05ab"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(raw)
            assert s.recv(100) == b""  # closed by the listener
    # slowloris: half a request, then silence; another client is served meanwhile
    slow = socket.create_connection((host, int(port)))
    slow.sendall(struct.pack(">i", 100) + b"\x00\x12")
    # a client that sends and never reads
    hog = Wire(bs)
    for _ in range(200):
        hog.send(P.FETCH, 11, fetch_body(11, "p", 0, 0))
    t0 = time.monotonic()
    _still_serves(bs)
    assert time.monotonic() - t0 < 1.0
    slow.close()
    hog.close()
    assert listener_pid(cluster) == pid


def test_seeded_fuzz_of_malformed_frames(kc):
    """A few thousand malformed frames (mutated, truncated, random): none
    crashes or stalls the listener; valid requests keep working. (The
    bench's `kafka_bench fuzz` sends 100k.)"""
    cluster, bs = kc
    pid = listener_pid(cluster)
    sent, slow = fuzz_run(bs, 3000, seed=1414)
    assert sent == 3000
    assert slow < 150, f"{slow} frames got neither an answer nor a close within 0.5 s"
    _still_serves(bs)
    with Wire(bs) as w:
        code, _base = produce_result(8, w.call(P.PRODUCE, 8, produce_body(8, "fuzz", 0, batch([(b"k", b"v")]))))
        assert code == 0
    assert listener_pid(cluster) == pid


# requests every control API accepts, written by kio (an implementation
# independent of the listener's legacy codecs) where it has the schema
_COMMON = {"group_id": "vg", "member_id": "", "key": "vg", "key_type": 0, "protocol_type": "consumer",
           "topics": [], "topic_names": [], "groups": ["vg"], "generation_id": -1,
           "generation_id_or_member_epoch": -1, "session_timeout": 10000, "rebalance_timeout": 10000,
           "protocols": [], "assignments": [], "transactional_id": None, "transaction_timeout": 1000,
           "timeout": 1000, "replica_id": -1, "isolation_level": 0, "allow_auto_topic_creation": False,
           "validate_only": False, "group_instance_id": None, "members": [], "retention_time": -1}
_LEGACY = {
    (P.LIST_OFFSETS, 0): struct.pack(">ii", -1, 1) + string("p") + struct.pack(">iiqi", 1, 0, -1, 1),
    (P.OFFSET_COMMIT, 0): string("vg") + struct.pack(">i", 0),
    (P.OFFSET_COMMIT, 1): string("vg") + struct.pack(">i", -1) + string("") + struct.pack(">i", 0),
    (P.CREATE_TOPICS, 0): struct.pack(">ii", 0, 1000),
}
_SAME_BYTES_AS = {(P.OFFSET_FETCH, 0): 1, (P.DELETE_TOPICS, 0): 1, (P.CREATE_TOPICS, 1): 2}


def _request_body(api: int, version: int) -> bytes:
    import io

    from kio.index import load_request_schema
    from kio.serial import entity_writer

    if (api, version) in _LEGACY:
        return _LEGACY[(api, version)]
    cls = load_request_schema(api, _SAME_BYTES_AS.get((api, version), version))
    buf = io.BytesIO()
    entity_writer(cls)(buf, P.build(cls, _COMMON))
    return buf.getvalue()


def test_every_advertised_version_is_answered(kc):
    """Each control API at each version it advertises gets a response (not
    a closed connection), the oldest ones included."""
    _c, bs = kc
    with Wire(bs) as w:
        for api, (lo, hi) in sorted(P.SUPPORTED.items()):
            if api in (P.PRODUCE, P.FETCH, P.API_VERSIONS):
                continue  # byte-level tests above
            for v in range(lo, hi + 1):
                assert w.call(api, v, _request_body(api, v)) is not None, f"api {api} v{v}"
        # ListOffsets v0 answers with a list of offsets
        resp = w.call(P.LIST_OFFSETS, 0, _LEGACY[(P.LIST_OFFSETS, 0)])
        (n,) = struct.unpack_from(">h", resp, 4)
        _p, code, count = struct.unpack_from(">ihi", resp, 6 + n + 4)
        assert code == 0 and count == 1
