"""The partition log in shared memory (csrc/ through shmlog/core/log.py):
pickled appends and reads, keys, headers and timestamps, the pointer
path of large values, and malloc tuning for large reads.

Tests create their regions under the `shm_prefix` fixture and close and
unlink them; every child process is forked, and killed or joined before the
test ends. Fault tests kill real processes (SIGKILL) at chosen points and
check DESIGN.md's invariants. Shared helpers: _log_helpers.py.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import random
import struct
import threading

import pytest
from _core_helpers import (
    fast_pickle,
    frame_records,
    frames,
    new_log,
    read_all,
    tail_bytes,
    value_of,
)
from _log_helpers import (
    chunk_region_pos,
    frame_hdr,
    frame_word,
)
from shmlog.core._core import ffi, lib

from shmlog import errors
from shmlog.core import records as records_module
from shmlog.core.reader import RecordReader
from shmlog.core.records import pickle_values

# ------------------------------------------------------------ pickled appends

def _small_values(n: int) -> list:
    """n values of 8..57 bytes naming their index, with some empty and some null ones."""
    return [None if i % 97 == 3 else b"" if i % 89 == 5 else value_of(i, 8 + i % 50)
            for i in range(n)]


PICKLED_BATCHES = [
    # name, values: every shape pickle writes (item APPEND for one value,
    # MARK..APPENDS groups of at most 1000), every length opcode
    ("mixed", [b"", None, b"\xab" * 255, b"\xcd" * 256, value_of(1, 70000), b"x"]),
    ("one", [b"only"]),
    ("one-null", [None]),
    ("one-empty", [b""]),
    ("one-long", [value_of(2, 3333)]),
    ("two", [b"a", None]),
    ("1000", _small_values(1000)),
    ("1001", _small_values(1001)),
    ("2000", _small_values(2000)),
    ("2500", _small_values(2500)),
]


def test_append_pickled_writes_the_records_append_writes(shm_prefix):
    """append_pickled(pickle_values(values)) and append(values, timestamp=T)
    commit byte-identical record sections: readers get the same offsets,
    values, null keys, no headers and timestamp T from both."""
    T = 1_700_000_000_123
    with new_log(shm_prefix, chunk_bytes=1 << 20, max_batch_bytes=1 << 18) as plog:
        slot = plog.register_producer()
        reader = plog.reader()
        for k, (name, vals) in enumerate(PICKLED_BATCHES):
            n = len(vals)
            end = plog.end_offset()
            base = plog.append_pickled(slot, pickle_values(vals), 1 << 20, T, producer_id=77,
                                       producer_seq=k)
            assert base == end, name
            assert plog.append(slot, vals, timestamp=T) == base + n, name
            c = plog.new_cursor()
            assert plog.seek(c, base) == 0
            offsets, values, keys, headers, timestamps = read_all(plog, c, reader=reader)
            assert offsets == list(range(base, base + 2 * n)), name
            assert values == vals + vals, name
            assert keys == [None] * 2 * n, name
            assert headers == [[]] * 2 * n, name
            assert timestamps == [T] * 2 * n, name
            assert plog.seek(c, base) == 0
            (p_pos, p_fb, p_end), (a_pos, a_fb, a_end) = frames(plog, c)
            assert (p_fb, p_end, a_end) == (a_fb, base + n, base + 2 * n), name
            assert frame_records(plog, p_pos) == frame_records(plog, a_pos), name
            f = frame_hdr(plog, p_pos)
            assert (f.base_offset, f.producer_id, f.producer_seq) == (base, 77, k), name


def _plain_pickle(values) -> bytes:
    f = io.BytesIO()
    p = pickle.Pickler(f, 3)
    p.fast = True
    p.dump(values)
    return f.getvalue()


class _Reentrant:
    """A value whose pickling sends another batch on the same thread (a
    __reduce__ that calls back into the producer)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.nested = None

    def __reduce__(self):
        self.nested = pickle_values(self.inner)
        return (bytes, (b"r",))


def test_pickle_values_keeps_a_pickler_per_thread_and_stays_exact():
    """pickle_values reuses its thread's pickler: every stream is exactly a
    fresh pickler's, also after a batch pickle refused, a batch too big to
    keep the pickler for, a nested call from a value, and in other threads."""
    small = [b"a" * 100] * 3 + [None, b""]
    assert pickle_values(small) == _plain_pickle(small)
    assert pickle_values([b"x", lambda: 0]) is None  # refused mid-dump
    assert pickle_values(small) == _plain_pickle(small)
    big = [bytes([i % 251]) * 4000 for i in range(600)]  # > 1 MiB: not kept
    assert pickle_values(big) == _plain_pickle(big)
    assert pickle_values(small[:1]) == _plain_pickle(small[:1])
    r = _Reentrant([b"inner", b"batch"])
    outer = pickle_values([b"o", r, b"p"])
    assert r.nested == _plain_pickle([b"inner", b"batch"])
    assert outer == _plain_pickle([b"o", _Reentrant([b"z"]), b"p"])  # REDUCE, not bytes
    assert pickle_values(small) == _plain_pickle(small)
    results = {}

    def worker(k: int) -> None:
        vals = [b"%d-%d" % (k, i) for i in range(700 + k)]
        results[k] = all(pickle_values(vals) == _plain_pickle(vals) for _ in range(50))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: True, 1: True, 2: True, 3: True}


def test_append_pickled_accepts_a_value_of_exactly_max_value(shm_prefix):
    with new_log(shm_prefix, max_batch_bytes=16384) as plog:
        slot = plog.register_producer()
        vals = [b"m" * 100, None, b""]
        assert plog.append_pickled(slot, pickle_values(vals), 100, 5) == 0
        assert plog.append_pickled(slot, pickle_values([b"m" * 101]), 100, 5) == -errno.EMSGSIZE
        # the pure-Python pickler ends a batch of 1001 with item APPEND, not
        # MARK item APPENDS: still the shape append_pickled takes
        vals = [b"%d" % i for i in range(1001)]
        f = io.BytesIO()
        p = pickle._Pickler(f, 3)
        p.fast = True
        p.dump(vals)
        assert plog.append_pickled(slot, f.getvalue(), 100, 6) == 3
        offsets, values, *_ = read_all(plog)
        assert offsets == list(range(1004))
        assert values == [b"m" * 100, None, b""] + vals


_REP = b"repeated value"
_GOOD = pickle_values([b"v" * 100, b"w" * 100, None])

REFUSED_STREAMS = [
    # id, stream, max_value, rc
    ("value-above-max_value", pickle_values([b"a", b"b" * 101, None]), 100, -errno.EMSGSIZE),
    ("batch-above-max-frame", pickle_values([b"x" * 1000] * 5), 1 << 20, -errno.E2BIG),
    ("one-value-above-max-frame", pickle_values([b"x" * 5000]), 1 << 20, -errno.E2BIG),
    ("memo-of-a-repeated-value", pickle.dumps([_REP, _REP], 3), 1 << 20, -errno.EPROTO),
    ("memo", pickle.dumps([b"a", b"b"], 3), 1 << 20, -errno.EPROTO),
    ("tuple", fast_pickle((b"a", b"b")), 1 << 20, -errno.EPROTO),
    ("int-value", fast_pickle([b"a", 7]), 1 << 20, -errno.EPROTO),
    ("str-value", fast_pickle([b"a", "str"]), 1 << 20, -errno.EPROTO),
    ("bytearray-value", fast_pickle([bytearray(b"a")]), 1 << 20, -errno.EPROTO),
    ("nested-list", fast_pickle([b"a", [b"b"]]), 1 << 20, -errno.EPROTO),
    ("protocol-2", fast_pickle([b"a", b"b"], 2), 1 << 20, -errno.EPROTO),
    ("protocol-4", fast_pickle([b"a", b"b"], 4), 1 << 20, -errno.EPROTO),
    ("protocol-5", fast_pickle([b"a", b"b"], 5), 1 << 20, -errno.EPROTO),
    ("truncated-before-stop", bytes(_GOOD[:-1]), 1 << 20, -errno.EPROTO),
    ("truncated-in-a-value", bytes(_GOOD[:60]), 1 << 20, -errno.EPROTO),
    ("truncated-before-a-length", bytes(_GOOD[:5]), 1 << 20, -errno.EPROTO),
    ("truncated-after-a-length", bytes(_GOOD[:6]), 1 << 20, -errno.EPROTO),
    ("only-the-header", bytes(_GOOD[:3]), 1 << 20, -errno.EPROTO),
    ("garbage-after-stop", bytes(_GOOD) + b"\x00", 1 << 20, -errno.EPROTO),
    ("second-stop", bytes(_GOOD) + b".", 1 << 20, -errno.EPROTO),
    ("length-past-the-end", b"\x80\x03](B\xff\xff\x00\x00abce.", 1 << 20, -errno.EPROTO),
    ("appends-without-mark", b"\x80\x03]C\x01xe.", 1 << 20, -errno.EPROTO),
    ("item-without-append", b"\x80\x03]C\x01x.", 1 << 20, -errno.EPROTO),
    ("nested-mark", b"\x80\x03]((C\x01xee.", 1 << 20, -errno.EPROTO),
    ("unclosed-mark", b"\x80\x03](C\x01x.", 1 << 20, -errno.EPROTO),
]


@pytest.mark.parametrize("stream,max_value,rc", [pytest.param(*r[1:], id=r[0]) for r in REFUSED_STREAMS])
def test_append_pickled_refuses_without_raising_and_commits_nothing(shm_prefix, stream, max_value, rc):
    with new_log(shm_prefix) as plog:  # max_batch_bytes = 4096
        slot = plog.register_producer()
        assert plog.append(slot, [b"before"] * 3) == 0
        reader = plog.reader()
        c = plog.new_cursor()
        plog.seek_end(c)
        assert plog.append_pickled(slot, stream, max_value, 1) == rc
        assert plog.end_offset() == plog.claimed_end == 3
        assert reader.read(c, 100) is None
        assert frame_word(plog, chunk_region_pos(plog, 0, c.pos)) == 0  # not even a claim
        # no offset was taken: the next batch gets the next one
        assert plog.append_pickled(slot, pickle_values([b"after"]), max_value, 2) == 3
        assert reader.read(c, 100).values == [b"after"]


def test_append_pickled_of_an_empty_list_raises_and_commits_nothing(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        with pytest.raises(ValueError):
            plog.append_pickled(slot, pickle_values([]), 100, 1)
        with pytest.raises(ValueError):
            plog.append(slot, [])
        assert plog.end_offset() == plog.claimed_end == 0


def test_append_one_returns_its_offset_and_reads_back(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        assert plog.append(slot, [b"a", b"b"], timestamp=1) == 0
        assert plog.append_one(slot, b"one", 1234, producer_id=9, producer_seq=5) == 2
        assert plog.append_one(slot, b"", -5) == 3
        assert plog.append_one(slot, value_of(4, 3333), 2**40) == 4
        with pytest.raises(errors.MessageTooLarge):
            plog.append_one(slot, b"x" * 4096, 6)
        assert plog.end_offset() == plog.claimed_end == 5
        offsets, values, keys, headers, timestamps = read_all(plog)
        assert offsets == list(range(5))
        assert values == [b"a", b"b", b"one", b"", value_of(4, 3333)]
        assert keys == [None] * 5 and headers == [[]] * 5
        assert timestamps == [1, 1, 1234, -5, 2**40]
        fr = frames(plog)
        assert [end for _, _, end in fr] == [2, 3, 4, 5]
        f = frame_hdr(plog, fr[1][0])
        assert (f.record_count, f.first_timestamp, f.max_timestamp, f.producer_id,
                f.producer_seq) == (1, 1234, 1234, 9, 5)
        # one record, one frame: what append() writes for it
        assert plog.append(slot, [b"one"], timestamp=1234) == 5
        assert frame_records(plog, frames(plog)[-1][0]) == frame_records(plog, fr[1][0])


# ------------------------------------------------------------ pickled reads

@pytest.fixture
def columns_reads(monkeypatch):
    """Counts reads that took the column path (RecordReader._columns) instead
    of the one-pickle path, so a test knows which path it exercised."""
    calls = []
    orig = RecordReader._columns

    def spy(self, cursor, n):
        calls.append(n)
        return orig(self, cursor, n)

    monkeypatch.setattr(RecordReader, "_columns", spy)
    return calls


def test_read_returns_keys_of_keyed_records(shm_prefix, columns_reads):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        plog.append(slot, [b"u0", b"u1"])  # unkeyed
        keys = [b"k2", None, b"", b"k5" * 20]
        plog.append(slot, [b"v2", b"v3", None, b"v5"], keys=keys)
        plog.append(slot, [b"u6"])
        res = plog.reader().read(plog.new_cursor(), 100)
        assert list(res.offsets) == list(range(7))
        assert res.values == [b"u0", b"u1", b"v2", b"v3", None, b"v5", b"u6"]
        assert res.keys == [None, None] + keys + [None]
        assert res.headers is None
        assert columns_reads == []  # small records: one pickle


def test_read_of_records_with_headers_falls_back_to_columns(shm_prefix, columns_reads):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        plog.append(slot, [b"p0", b"p1"])
        hdrs = [[("h", b"2")], [], [("a", None), ("b", b"")]]
        plog.append(slot, [b"h2", None, b"h4"], keys=[b"k", None, None], headers=hdrs,
                    timestamps=[7, 8, 9])
        plog.append(slot, [b"p5"], timestamp=10)
        reader = plog.reader()
        c = plog.new_cursor()
        res = reader.read(c, 100)
        assert columns_reads == [6]
        assert list(res.offsets) == list(range(6))
        assert res.values == [b"p0", b"p1", b"h2", None, b"h4", b"p5"]
        assert res.keys == [None, None, b"k", None, None, None]
        assert res.headers == [[], []] + hdrs + [[]]
        assert res.timestamps[2:] == [7, 8, 9, 10]
        assert reader.read(c, 100) is None
        # past the headers, the same reader is back on the pickle path
        plog.append(slot, [b"p6"])
        assert reader.read(c, 100).values == [b"p6"]
        assert columns_reads == [6]


@pytest.mark.parametrize("initial_offset", [0, 2**31 - 3, 2**40 + 7])
def test_read_across_an_aborted_batch_skips_the_hole(shm_prefix, columns_reads, initial_offset):
    """A hole (an aborted claim) between two committed batches: one read
    returns both, with offsets that skip it (not a dense range)."""
    with new_log(shm_prefix, initial_offset=initial_offset) as plog:
        b = initial_offset
        slot = plog.register_producer()
        # one timestamp for both batches: time_ns() may tick a millisecond between them
        assert plog.append(slot, [value_of(j, 37) for j in range(5)], timestamp=1234) == b
        out = ffi.new("uint64_t *")
        assert lib.shmlog_log_claim_only(plog.checked_log(), slot, 100, 6, out) == 0
        assert out[0] == b + 5
        assert plog.reap_producer(slot) == 1  # aborted: offsets b+5..b+10 are a hole
        slot = plog.register_producer()
        assert plog.append(slot, [value_of(11 + j, 37) for j in range(4)], timestamp=1234) == b + 11
        reader = plog.reader()
        c = plog.new_cursor()
        assert plog.seek(c, b) == 0
        res = reader.read(c, 100)
        want = list(range(b, b + 5)) + list(range(b + 11, b + 15))
        assert list(res.offsets) == want
        assert res.values == [value_of(o - b, 37) for o in want]
        assert res.timestamps == [1234] * 9
        assert c.next_offset == b + 15
        assert reader.read(c, 100) is None
        assert columns_reads == []


def test_read_returns_each_records_timestamp(shm_prefix, columns_reads):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        tss = [-1, 0, 2**31 - 1, 2**31, -(2**31) - 1, 2**62, 5]
        plog.append(slot, [b"t%d" % i for i in range(len(tss))], timestamps=tss)
        plog.append(slot, [b"same"] * 3, timestamp=2**33)
        res = plog.reader().read(plog.new_cursor(), 100)
        assert list(res.offsets) == list(range(10))
        assert res.timestamps == tss + [2**33] * 3
        assert columns_reads == []


def test_read_of_large_values_takes_the_column_path(shm_prefix, columns_reads):
    with new_log(shm_prefix, max_batch_bytes=16384) as plog:
        slot = plog.register_producer()
        vals = [value_of(0, 1500), None, value_of(2, 3333), b"", value_of(4, 1024)]
        plog.append(slot, vals, keys=[None, b"k1", None, None, b"k4"])
        res = plog.reader().read(plog.new_cursor(), 100)
        assert columns_reads == [5]
        assert list(res.offsets) == list(range(5))
        assert res.values == vals
        assert res.keys == [None, b"k1", None, None, b"k4"]
        assert res.headers is None


def test_read_part_of_a_batch_then_the_rest(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        keys = [None if j % 3 else b"k%d" % j for j in range(10)]
        plog.append(slot, [value_of(j, 9 + j) for j in range(10)], keys=keys,
                    timestamps=[100 + j for j in range(10)])
        plog.append(slot, [value_of(10 + j, 9) for j in range(4)], timestamp=7)
        reader = plog.reader()
        c = plog.new_cursor()
        got = []
        for size in (3, 1, 4, 100):
            res = reader.read(c, size)
            assert 1 <= len(res) <= size
            assert res.values == [value_of(o, 9 + o if o < 10 else 9) for o in res.offsets]
            assert res.keys == [keys[o] if o < 10 else None for o in res.offsets]
            assert res.timestamps == [100 + o if o < 10 else 7 for o in res.offsets]
            got += res.offsets
        assert got == list(range(14))
        assert reader.read(c, 100) is None


def test_read_lz4_frames_between_plain_frames(shm_prefix):
    with new_log(shm_prefix, max_batch_bytes=16384) as plog:
        slot = plog.register_producer()
        want = []
        for comp, n in ((None, 3), ("lz4", 40), ("lz4", 5), (None, 7), ("lz4", 1), (None, 2)):
            base = len(want)
            vals = [value_of(base + j, 37) for j in range(n)]
            assert plog.append(slot, vals, compression=comp, timestamp=base) == base
            want += vals
        reader = plog.reader()
        c = plog.new_cursor()
        runs = []
        while (res := reader.read(c, 1000)) is not None:
            runs.append(list(res.offsets))
            assert res.values == [want[o] for o in res.offsets]
            assert res.keys == [None] * len(res)
        # a compressed frame comes back alone; plain frames are read together
        assert [len(r) for r in runs] == [3, 40, 5, 7, 1, 2]
        assert sum(runs, []) == list(range(len(want)))


# Regression (RecordReader._read_compressed): a partial read of an lz4 frame
# that starts a chunk put back into slot 0 (the cursor still on the previous
# chunk, in the last slot) computed the resume position relative to the
# cursor's old chunk: a negative cursor.pos, OverflowError from cffi.
def test_partial_read_of_an_lz4_frame_at_the_start_of_a_reused_slot(shm_prefix):
    with new_log(shm_prefix, gate_readers=False, max_batch_bytes=16384) as plog:
        slot = plog.register_producer()
        n = 0
        while plog.hdr.active_seq < plog.chunk_count - 1:
            plog.append(slot, [value_of(n + j, 333) for j in range(3)])
            n += 3
        last = plog.hdr.chunks[(plog.chunk_count - 1) % plog.chunk_count]
        while plog.chunk_bytes - tail_bytes(last.tail) > 2000:
            plog.append(slot, [value_of(n + j, 333) for j in range(3)])
            n += 3
        reader = plog.reader()
        c = plog.new_cursor()
        assert plog.seek(c, plog.start_offset) == 0
        offsets, *_ = read_all(plog, c, reader=reader)
        assert offsets[-1] == n - 1 and c.seq == plog.chunk_count - 1
        rng = random.Random(7)
        vals = [rng.randbytes(40) for _ in range(200)]  # incompressible: does not fit
        assert plog.append(slot, vals, compression="lz4") == n  # rotates into slot 0
        assert plog.hdr.active_seq == plog.chunk_count
        got = []
        while (res := reader.read(c, 30)) is not None:
            assert len(res) <= 30
            got += res.values
        assert got == vals


def test_read_of_more_small_values_than_the_pickle_buffer_holds(shm_prefix, monkeypatch,
                                                                 columns_reads):
    """20,000 values of 100 bytes (2 MiB) in one read: the 1 MiB per-thread
    pickle buffer is too small, so that read takes the column path and the
    buffer grows; the next reads of that size are one pickle each."""
    monkeypatch.setattr(records_module, "thread_local", threading.local())  # start from 1 MiB
    with new_log(shm_prefix, chunk_bytes=4 << 20, max_batch_bytes=1 << 18) as plog:
        slot = plog.register_producer()
        reader = plog.reader(capacity=40000)
        c = plog.new_cursor()
        total = 0
        fill = bytes(range(256)) * 2
        for rnd in range(3):
            n = 20000
            vals = [struct.pack("<Q", o) + fill[o % 256 : o % 256 + 92] for o in range(total, total + n)]
            for i in range(0, n, 2000):
                plog.append(slot, vals[i : i + 2000])
            res = reader.read(c, 40000)
            assert list(res.offsets) == list(range(total, total + n)), rnd
            assert res.values == vals, rnd
            assert res.keys == [None] * n
            assert reader.read(c, 40000) is None
            total += n
            assert len(records_module.thread_local.buf) > 1 << 20
        assert columns_reads == [20000]  # only the first read did not fit


def test_read_one_gives_a_lone_plain_record_as_a_tuple_and_anything_else_as_a_result(shm_prefix):
    """read(one=True): exactly one unkeyed record without headers, not null,
    comes back as (offset, timestamp, value), a bytes copy, with the reader
    slot's position published; two records, a key, headers, a null value or
    a compressed frame come back as a ReadResult, the same as one=False."""
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        rslot = plog.register_reader(0, gating=False)
        reader = plog.reader()
        c = plog.new_cursor()
        assert plog.seek(c, 0) == 0
        assert reader.read(c, 100, slot=rslot, one=True) is None
        plog.append_one(slot, b"lone value", 1_700_000_000_123)
        got = reader.read(c, 100, slot=rslot, one=True)
        assert got == (0, 1_700_000_000_123, b"lone value") and type(got[2]) is bytes
        assert plog.hdr.readers[rslot].position == 1
        others = [
            dict(values=[b"a", b"b"]),
            dict(values=[b"k"], keys=[b"key"]),
            dict(values=[b"h"], headers=[[("h", b"1")]]),
            dict(values=[None]),
            dict(values=[b"z" * 300], compression="lz4"),
        ]
        end = 1
        for kw in others:
            values = kw.pop("values")
            assert plog.append(slot, values, timestamp=7, **kw) == end
            res = reader.read(c, 100, slot=rslot, one=True)
            assert not isinstance(res, tuple), kw
            assert list(res.offsets) == list(range(end, end + len(values)))
            assert res.values == values
            end += len(values)
            if res.positioned:  # else (a compressed frame) the caller publishes it
                assert plog.hdr.readers[rslot].position == end


# ------------------------------------------------------ large values and malloc

_HEAP_PROBE = r"""
import os, resource, sys

def faults():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        # what a read of 32 large values allocates, freed before the next
        vals = [b"x" * 65536 for _ in range(32)]
        del vals
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r

before = faults()  # before any import can move glibc's dynamic thresholds
from shmlog.core.heap import keep_freed_heap
from shmlog.core.log import PartitionLog
if sys.argv[1] == "read":
    # the reader sets it on its first large read
    plog = PartitionLog.create(sys.argv[2], chunk_bytes=8 << 20, chunk_count=2)
    try:
        plog.append(plog.register_producer(), [os.urandom(65536) for _ in range(4)])
        c = plog.new_cursor()
        assert len(plog.reader().read(c, 100).values) == 4
    finally:
        plog.close()
        plog.unlink()
    set_now = not keep_freed_heap()  # already set: False now
else:
    set_now = keep_freed_heap()
print(before, int(set_now), faults())
"""


@pytest.mark.skipif(not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
                    reason="glibc's malloc only")
@pytest.mark.parametrize("how", ["call", "read", "opted-out"])
def test_large_reads_keep_freed_heap_instead_of_faulting_it_back(shm_prefix, how):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    if how == "opted-out":
        env["SHMLOG_MALLOC_TUNING"] = "0"
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, how, f"{shm_prefix}-heap"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, set_now, after = map(int, out.stdout.split())
    # glibc trims the heap top after each round's free: ~480 faults a round
    assert before > 200 * 128
    if how == "opted-out":
        assert set_now == 0 and after > 200 * 128
    else:
        assert set_now == 1 and after < before // 10
