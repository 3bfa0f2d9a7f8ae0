"""Segment files without a supervisor: frames copied out of a real region
(the spiller's path), then scanned, dumped, indexed, damaged and read back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from shmlog.core._core import ffi, lib

import shmlog
from shmlog.core.log import PartitionLog
from shmlog.core.segments import (
    INDEX_INTERVAL,
    IndexBuilder,
    SegmentStore,
    check_segment,
    dump_segment,
    scan_segment,
    segment_name,
    stamp_disk_word,
)


def value(i: int, size: int = 50) -> bytes:
    return i.to_bytes(8, "little") + bytes([i % 251]) * (size - 8)


def frames_of(plog: PartitionLog) -> List[bytes]:
    """Every committed frame of a region, copied out as the spiller does."""
    cur = plog.new_cursor()
    plog.seek(cur, 0)
    pos = ffi.new("uint64_t[]", 4096)
    lens = ffi.new("uint32_t[]", 4096)
    ends = ffi.new("uint64_t[]", 4096)
    info = ffi.new("shmlog_read_info_t *")
    out = []
    while True:
        n = lib.shmlog_log_read_frames(plog.c_log, cur, pos, lens, ends, 4096, 1 << 30, info)
        assert n >= 0
        if n == 0:
            return out
        for i in range(n):
            frame = bytearray(plog.mapping[pos[i] : pos[i] + lens[i]])
            stamp_disk_word(frame, 0, lens[i])
            out.append(bytes(frame))


@pytest.fixture
def region(shm_prefix):
    plog = PartitionLog.create(shm_prefix + "-seg", chunk_bytes=1 << 20, chunk_count=4)
    try:
        yield plog
    finally:
        plog.close()
        plog.unlink()


def fill(plog: PartitionLog, sizes: List[int], *, lz4_every: int = 0, ts0: int = 1_000,
         start: int = 0) -> List[bytes]:
    """Append batches of the given record counts; return their frames."""
    slot = plog.register_producer()
    i = start
    for k, n in enumerate(sizes):
        comp = "lz4" if lz4_every and k % lz4_every == lz4_every - 1 else None
        plog.append(slot, [value(j) for j in range(i, i + n)], timestamps=[ts0 + j for j in range(i, i + n)],
                    compression=comp)
        i += n
    plog.release_producer(slot)
    return frames_of(plog)


def write_partition(pdir: Path, segments: List[List[bytes]], bases: List[int]) -> None:
    """Segment files with indexes, as the spiller writes them."""
    pdir.mkdir(parents=True, exist_ok=True)
    for base, frames in zip(bases, segments):
        path = pdir / segment_name(base)
        b = IndexBuilder()
        pos = 0
        for f in frames:
            hdr = shmlog.core.segments.FRAME.unpack_from(f, 0)
            b.add(pos, hdr[3], hdr[8])
            pos += len(f)
        b.seal()
        path.write_bytes(b"".join(frames))
        path.with_suffix(".index").write_bytes(bytes(b.index))
        path.with_suffix(".timeindex").write_bytes(bytes(b.timeindex))


def read_all(store: SegmentStore, offset: int, max_records: int) -> List[Tuple[int, bytes]]:
    r = store.reader("t", 0, offset)
    assert r is not None
    out = []
    while True:
        res = r.read(max_records)
        if res is None:
            break
        assert 0 < len(res) <= max_records
        out.extend(zip(res.offsets, res.values))
    r.close()
    return out


def test_dump_and_check_a_segment(tmp_path, region):
    frames = fill(region, [10, 20, 30, 5], lz4_every=2)
    path = tmp_path / segment_name(0)
    path.write_bytes(b"".join(frames))
    batches = list(dump_segment(path))
    assert [b["offset"] for b in batches] == [0, 10, 30, 60]
    assert [b["count"] for b in batches] == [10, 20, 30, 5]
    assert [b["last_offset"] for b in batches] == [9, 29, 59, 64]
    assert [b["compression"] for b in batches] == ["none", "lz4", "none", "lz4"]
    assert all(b["crc_valid"] for b in batches)
    assert batches[1]["first_timestamp"] == 1010 and batches[1]["max_timestamp"] == 1029
    assert [b["position"] for b in batches] == [0, len(frames[0]), len(frames[0]) + len(frames[1]),
                                                sum(map(len, frames[:3]))]
    assert sum(b["bytes"] for b in batches) == path.stat().st_size
    assert check_segment(path) == (4, 0)


def test_dump_reports_bad_crc_garbage_and_truncation(tmp_path, region):
    frames = fill(region, [10, 10, 10])
    path = tmp_path / segment_name(0)
    data = bytearray(b"".join(frames))
    data[len(frames[0]) + 64 + 3] ^= 1  # a payload byte of the second batch
    path.write_bytes(bytes(data))
    batches = list(dump_segment(path))
    assert [b["crc_valid"] for b in batches] == [True, False, True]
    assert "CRC" in batches[1]["error"]
    assert check_segment(path) == (3, 1)
    path.write_bytes(bytes(data[: len(frames[0])]) + b"\x99" * 200)
    batches = list(dump_segment(path))
    assert len(batches) == 2 and not batches[1]["crc_valid"] and "not a data frame" in batches[1]["error"]
    path.write_bytes(b"".join(frames)[:-30])
    batches = list(dump_segment(path))
    assert len(batches) == 3 and "truncated" in batches[2]["error"]
    assert check_segment(path) == (3, 1)


def test_scan_stops_at_the_first_bad_frame(tmp_path, region):
    frames = fill(region, [7, 8, 9])
    path = tmp_path / segment_name(0)
    path.write_bytes(b"".join(frames) + b"\x00" * 100)
    res = scan_segment(path, 0)
    assert (res.valid_end, res.end_offset) == (sum(map(len, frames)), 24)
    assert res.reason and res.builder.frames == 3
    res = scan_segment(path, 0, upper=14)  # the next segment starts at 14
    assert (res.end_offset, res.builder.frames) == (7, 1) and "next segment" in res.reason
    path.write_bytes(frames[1] + frames[0])  # offsets going back
    res = scan_segment(path, 0)
    assert res.end_offset == 15 and "back" in res.reason
    path.write_bytes(b"")
    res = scan_segment(path, 5)
    assert (res.valid_end, res.end_offset, res.reason) == (0, 5, None)


def test_index_builder_is_sparse_and_monotonic():
    b = IndexBuilder()
    pos = 0
    ts = [5, 3, 9, 9, 12, 1, 40]
    for k, t in enumerate(ts * 50):
        b.add(pos, k * 10, t + k)
        pos += 1000
    idx = [int.from_bytes(b.index[i + 8 : i + 16], "little") for i in range(0, len(b.index), 16)]
    assert idx[0] == 0 and all(q - p >= INDEX_INTERVAL for p, q in zip(idx, idx[1:]))
    snap = b.snapshot()
    n_t = len(b.timeindex)
    b.add(pos, 9999, 10**9)
    b.restore(snap)
    assert len(b.timeindex) == n_t and b.max_ts != 10**9
    b.seal()
    tents = [(int.from_bytes(b.timeindex[i : i + 8], "little", signed=True),
              int.from_bytes(b.timeindex[i + 8 : i + 16], "little")) for i in range(0, len(b.timeindex), 16)]
    assert tents == sorted(tents) and len({t for t, _ in tents}) == len(tents)
    assert tents[-1][0] == b.max_ts == max(t + k for k, t in enumerate(ts * 50))


def test_reader_across_segments_with_index_and_partial_frames(tmp_path, region):
    frames = fill(region, [30] * 40, lz4_every=5)
    store = SegmentStore(tmp_path)
    pdir = store.partition_dir("t", 0)
    write_partition(pdir, [frames[:15], frames[15:28], frames[28:]], [0, 450, 840])
    n = 1200
    for start, maxr in [(0, 100_000), (0, 7), (451, 13), (839, 1), (1000, 64)]:
        got = read_all(store, start, maxr)
        assert [o for o, _ in got] == list(range(start, n)), (start, maxr)
        assert all(v == value(o) for o, v in got)
    assert store.start_offset("t", 0) == 0
    assert store.reader("t", 1, 0) is None
    # offset_for_time: the first offset whose timestamp is >= ts (ts = 1000 + offset)
    for q, want in [(0, 0), (1000, 0), (1451, 451), (1839, 839), (2199, 1199), (2200, None)]:
        assert store.offset_for_time("t", 0, q) == want, q


def test_reader_raises_on_corruption_before_the_tail(tmp_path, region):
    frames = fill(region, [20] * 10)
    store = SegmentStore(tmp_path)
    pdir = store.partition_dir("t", 0)
    write_partition(pdir, [frames[:5], frames[5:]], [0, 100])
    path = pdir / segment_name(0)
    data = bytearray(path.read_bytes())
    data[2 * len(frames[0]) + 100] ^= 0xFF  # inside the third batch (offsets 40..59)
    path.write_bytes(bytes(data))
    r = store.reader("t", 0, 0)
    res = r.read(1000)
    assert list(res.offsets) == list(range(40))
    with pytest.raises(shmlog.CorruptBatch, match=r"offset 40.*00000000000000000000\.log"):
        r.read(1000)
    r.close()


def test_reader_stops_quietly_at_a_tail_being_written(tmp_path, region):
    frames = fill(region, [20] * 4)
    store = SegmentStore(tmp_path)
    pdir = store.partition_dir("t", 0)
    write_partition(pdir, [frames[:3]], [0])
    path = pdir / segment_name(0)
    with open(path, "ab") as f:
        f.write(frames[3][:100])  # the spiller is mid-write
    r = store.reader("t", 0, 0)
    assert list(r.read(1000).offsets) == list(range(60))
    assert r.read(1000) is None and r.next_offset == 60
    with open(path, "ab") as f:
        f.write(frames[3][100:])
    assert list(r.read(1000).offsets) == list(range(60, 80))
    r.close()


def test_a_stale_index_falls_back_to_a_scan(tmp_path, region):
    frames = fill(region, [25] * 20)
    store = SegmentStore(tmp_path)
    pdir = store.partition_dir("t", 0)
    write_partition(pdir, [frames], [0])
    (pdir / "00000000000000000000.index").write_bytes((300).to_bytes(8, "little") + (64 * 3).to_bytes(8, "little"))
    got = read_all(store, 310, 1000)
    assert [o for o, _ in got] == list(range(310, 500))


@settings(max_examples=25, deadline=None)
@given(sizes=hs.lists(hs.integers(1, 120), min_size=1, max_size=30),
       cuts=hs.lists(hs.integers(1, 5), min_size=0, max_size=3),
       start=hs.integers(0, 3000), maxr=hs.integers(1, 400))
def test_reads_are_dense_whatever_the_split(tmp_path_factory, sizes, cuts, start, maxr):
    prefix = f"/shmlog-tprop{os.getpid()}-{abs(hash((tuple(sizes), tuple(cuts), start, maxr)))}"
    plog = PartitionLog.create(prefix, chunk_bytes=1 << 20, chunk_count=4)
    try:
        frames = fill(plog, sizes, lz4_every=3)
    finally:
        plog.close()
        plog.unlink()
    tmp = tmp_path_factory.mktemp("prop")
    store = SegmentStore(tmp)
    pdir = store.partition_dir("t", 0)
    # split the frames into segments at the given cut points
    groups, bases, i, off = [], [], 0, 0
    ends = [sum(sizes[: k + 1]) for k in range(len(sizes))]
    for c in cuts + [len(frames)]:
        j = min(i + c, len(frames))
        if j > i:
            groups.append(frames[i:j])
            bases.append(off)
            off = ends[j - 1]
            i = j
    if i < len(frames):
        groups.append(frames[i:])
        bases.append(off)
    write_partition(pdir, groups, bases)
    n = sum(sizes)
    start = min(start, n - 1)
    got = read_all(store, start, maxr)
    assert [o for o, _ in got] == list(range(start, n))
    assert all(v == value(o) for o, v in got)
