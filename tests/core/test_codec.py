"""The record codec: csrc/codec.c (encode straight into a claimed chunk,
decode with every length bounds-checked) and shmlog/codec.py (columns and
header sections), directly and through PartitionLog.append/RecordReader.read.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import signal

import pytest
from _core_helpers import Child, frame_records, frames, new_log
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shmlog.core._core import ffi, lib

from shmlog import errors
from shmlog.core.codec import columns, decode_headers, encode_headers
from shmlog.core.records import pickle_values

INT64 = st.integers(-(2**63), 2**63 - 1)

header_lists = st.lists(
    st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=80))), max_size=4)

records = st.lists(
    st.fixed_dictionaries({
        "value": st.one_of(st.none(), st.just(b""), st.binary(max_size=300)),
        "key": st.one_of(st.none(), st.binary(max_size=70)),
        "headers": st.one_of(st.just([]), header_lists),
    }),
    min_size=1, max_size=20,
)


# ------------------------------------------------------------ lib-level helpers

class Batch:
    """A shmlog_batch_in_t built the way PartitionLog.append builds it; keeps
    its buffers alive as long as it lives."""

    def __init__(self, recs, timestamps=None, timestamp=0, with_keys=True, with_headers=True):
        n = len(recs)
        self.keep = []
        bi = ffi.new("shmlog_batch_in_t *")
        bi.count = n
        vblob, vlens = columns([r["value"] for r in recs])
        self.keep += [vblob, vlens]
        bi.values = ffi.from_buffer(vblob)
        bi.value_lens = ffi.from_buffer("int32_t[]", vlens)
        if with_keys:
            kblob, klens = columns([r["key"] for r in recs], "key")
            self.keep += [kblob, klens]
            bi.keys = ffi.from_buffer(kblob)
            bi.key_lens = ffi.from_buffer("int32_t[]", klens)
        if with_headers:
            sections = [encode_headers(r["headers"]) for r in recs]
            hblob, hlens = columns(sections, "headers")
            hl = ffi.new("uint32_t[]", list(hlens))
            self.keep += [hblob, hl]
            bi.headers = ffi.from_buffer(hblob)
            bi.header_lens = hl
        bi.timestamp = timestamp
        if timestamps is not None:
            ts = ffi.new("int64_t[]", timestamps)
            self.keep.append(ts)
            bi.timestamps = ts
        self.bi = bi


class Out:
    def __init__(self, capacity):
        self.arrays = [ffi.new(t, max(capacity, 1)) for t in (
            "uint64_t[]", "int64_t[]", "uint64_t[]", "int32_t[]",
            "uint64_t[]", "int32_t[]", "uint64_t[]", "uint32_t[]")]
        o = self.o = ffi.new("shmlog_records_out_t *")
        o.capacity = capacity
        (o.offsets, o.timestamps, o.value_pos, o.value_lens, o.key_pos, o.key_lens,
         o.header_pos, o.header_lens) = self.arrays

    def rows(self, n, index=0):
        o = self.o
        return [(o.offsets[i], o.timestamps[i], o.value_pos[i], o.value_lens[i], o.key_pos[i],
                 o.key_lens[i], o.header_pos[i], o.header_lens[i]) for i in range(index, index + n)]


def encode(batch: Batch) -> bytes:
    size = lib.shmlog_codec_encoded_size(batch.bi)
    assert size >= 0
    buf = bytearray(size)
    assert lib.shmlog_codec_encode(batch.bi, ffi.from_buffer(buf), size) == size
    return bytes(buf)


def decode(section: bytes, count, base=0, first_ts=0, pos_base=0, skip_below=0, capacity=None,
           index=0):
    out = Out(capacity if capacity is not None else max(count, 1) + index)
    buf = ffi.from_buffer(section) if section else ffi.new("uint8_t[1]")
    n = lib.shmlog_codec_decode(buf, len(section), count, base, first_ts, pos_base, skip_below,
                                  out.o, index)
    return n, out


def unpack(section, out, n, pos_base=0, index=0):
    res = []
    for off, ts, vp, vl, kp, kl, hp, hl in out.rows(n, index):
        vp -= pos_base
        kp -= pos_base
        hp -= pos_base
        res.append({
            "offset": off, "timestamp": ts,
            "value": None if vl < 0 else section[vp: vp + vl],
            "key": None if kl < 0 else section[kp: kp + kl],
            "headers": decode_headers(section[hp: hp + hl]) if hl else [],
        })
    return res


# ------------------------------------------------------------ header sections

@settings(deadline=None)
@given(header_lists)
def test_encode_decode_headers_round_trip(headers):
    section = encode_headers(headers)
    assert decode_headers(section) == [(k, v) for k, v in headers]
    assert (section == b"") == (not headers)


def test_encode_headers_accepts_bytes_keys_and_rejects_str_values_as_keys_and_values_do():
    assert decode_headers(encode_headers([(b"k", b"v")])) == [("k", b"v")]
    with pytest.raises(TypeError, match=r"header value must be bytes-like .* got str \(header b'k'\)"):
        encode_headers([(b"k", "v")])
    with pytest.raises(TypeError, match="header key must be str"):
        encode_headers([(1, b"v")])
    with pytest.raises(TypeError, match="header value must be bytes"):
        encode_headers([("k", 3)])
    with pytest.raises(TypeError, match="pairs"):
        encode_headers([("k",)])


# ------------------------------------------------------------ C codec directly

@settings(max_examples=300, deadline=None)
@given(recs=records, ts=st.one_of(st.none(), st.lists(INT64, min_size=20, max_size=20)),
       timestamp=INT64, base=st.integers(0, 2**62), pos_base=st.integers(0, 2**40),
       with_keys=st.booleans(), with_headers=st.booleans())
def test_batch_encode_decode_round_trip(recs, ts, timestamp, base, pos_base, with_keys,
                                        with_headers):
    n = len(recs)
    timestamps = None if ts is None else ts[:n]
    batch = Batch(recs, timestamps, timestamp, with_keys, with_headers)
    section = encode(batch)
    first = timestamp if timestamps is None else timestamps[0]
    got, out = decode(section, n, base, first, pos_base)
    assert got == n
    rows = unpack(section, out, n, pos_base)
    for i, (r, row) in enumerate(zip(recs, rows)):
        assert row["offset"] == base + i
        assert row["timestamp"] == (timestamp if timestamps is None else timestamps[i])
        assert row["value"] == r["value"]
        assert row["key"] == (r["key"] if with_keys else None)
        assert row["headers"] == (list(r["headers"]) if with_headers else [])


@settings(max_examples=200, deadline=None)
@given(recs=records, ts=st.one_of(st.none(), st.lists(INT64, min_size=20, max_size=20)),
       with_keys=st.booleans(), with_headers=st.booleans())
def test_pointer_columns_and_the_sized_encoder_write_the_same_bytes(recs, ts, with_keys, with_headers):
    """key_ptrs/header_ptrs (the grouped commits point at each record's own
    bytes) encode exactly what the concatenated columns do; and
    shmlog_codec_encode_sized, which trusts a size computed a moment ago,
    writes the same section and refuses a buffer one byte short without
    writing past it."""
    n = len(recs)
    timestamps = None if ts is None else ts[:n]
    batch = Batch(recs, timestamps, 7, with_keys, with_headers)
    section = encode(batch)
    bi = batch.bi
    keep = []
    if with_keys:
        keys = [ffi.from_buffer(r["key"] or b"\0") for r in recs]
        kp = ffi.new("const uint8_t *[]", keys)
        keep += [keys, kp]
        bi.keys, bi.key_ptrs = ffi.NULL, kp
    if with_headers:
        sections = [encode_headers(r["headers"]) or b"\0" for r in recs]
        hbufs = [ffi.from_buffer(h) for h in sections]
        hp = ffi.new("const uint8_t *[]", hbufs)
        keep += [sections, hbufs, hp]
        bi.headers, bi.header_ptrs = ffi.NULL, hp
    assert lib.shmlog_codec_encoded_size(bi) == len(section)
    buf = bytearray(len(section) + 8)
    assert lib.shmlog_codec_encode_sized(bi, ffi.from_buffer(buf), len(section)) == len(section)
    assert bytes(buf[:len(section)]) == section and buf[len(section):] == bytes(8)
    short = bytearray(len(section) + 8)
    assert lib.shmlog_codec_encode_sized(bi, ffi.from_buffer(short), len(section) - 1) == -errno.ENOSPC
    assert short[len(section) - 1:] == bytes(9)


@settings(max_examples=150, deadline=None)
@given(recs=records, skip=st.integers(0, 25), index=st.integers(0, 3), room=st.integers(1, 25))
def test_decode_skips_below_writes_from_index_and_stops_when_full(recs, skip, index, room):
    n = len(recs)
    section = encode(Batch(recs))
    got, out = decode(section, n, base=100, skip_below=100 + skip, index=index,
                      capacity=index + room)
    want = min(room, max(0, n - skip))
    assert got == want
    rows = unpack(section, out, got, index=index)
    first = min(skip, n)
    assert [r["offset"] for r in rows] == list(range(100 + first, 100 + first + want))
    assert [r["value"] for r in rows] == [r["value"] for r in recs[first:first + want]]


def test_decode_needs_room_and_the_exact_record_count():
    recs = [{"value": b"v%d" % i, "key": None, "headers": []} for i in range(5)]
    section = encode(Batch(recs))
    # a full `out` stops the decode: the caller resumes by offset
    n, out = decode(section, 5, base=10, capacity=4)
    assert n == 4 and [r["value"] for r in unpack(section, out, 4)] == [b"v0", b"v1", b"v2", b"v3"]
    n, out = decode(section, 5, base=10, skip_below=14, capacity=4)
    assert n == 1 and unpack(section, out, 1)[0]["offset"] == 14
    assert decode(section, 5, capacity=5)[0] == 5
    assert decode(section, 4)[0] == -errno.EBADMSG  # bytes left over
    assert decode(section, 6)[0] == -errno.EBADMSG  # runs out
    assert decode(section[:-1], 5)[0] == -errno.EBADMSG
    assert decode(b"", 0)[0] == 0


def test_encode_rejects_bad_input():
    good = Batch([{"value": b"abc", "key": None, "headers": []}] * 3)
    size = lib.shmlog_codec_encoded_size(good.bi)
    buf = bytearray(size)
    assert lib.shmlog_codec_encode(good.bi, ffi.from_buffer(buf), size - 1) == -errno.ENOSPC
    empty = Batch([{"value": b"x", "key": None, "headers": []}])
    empty.bi.count = 0
    assert lib.shmlog_codec_encoded_size(empty.bi) == -errno.EINVAL
    bad_len = Batch([{"value": b"x", "key": None, "headers": []}])
    bad_len.bi.value_lens = ffi.new("int32_t[]", [-2])
    assert lib.shmlog_codec_encoded_size(bad_len.bi) == -errno.EINVAL


# ------------------------------------------------------------ untrusted input

PAGE = mmap.PAGESIZE
PROT_NONE = 0  # <sys/mman.h>; the mmap module does not export it


@pytest.fixture(scope="module")
def guarded():
    """A page whose end abuts a PROT_NONE page: a decoder that reads one byte
    past the section it was given faults instead of passing silently."""
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    mm = mmap.mmap(-1, 2 * PAGE, prot=rw)
    anchor = ctypes.c_char.from_buffer(mm)
    addr = ctypes.addressof(anchor)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(addr + PAGE, PAGE, PROT_NONE) == 0, ctypes.get_errno()
    yield mm, ffi.cast("uint8_t *", addr)
    assert libc.mprotect(addr + PAGE, PAGE, rw) == 0
    del anchor
    mm.close()


def decode_guarded(guarded, data: bytes, count: int, capacity: int = 64):
    mm, base = guarded
    assert len(data) <= PAGE
    start = PAGE - len(data)
    mm[start:PAGE] = data
    out = Out(capacity)
    n = lib.shmlog_codec_decode(base + start, len(data), count, 0, 0, 0, 0, out.o, 0)
    if n >= 0:  # whatever it accepts lies inside the section
        for _off, _ts, vp, vl, kp, kl, hp, hl in out.rows(n):
            for pos, ln in ((vp, vl), (kp, kl), (hp, hl)):
                assert 0 <= pos <= len(data)
                assert ln == -1 or pos + max(ln, 0) <= len(data)
    return n


def _touch_past_the_end(conn, addr):
    import faulthandler

    faulthandler.disable()  # the fault is expected: no traceback on stderr
    conn.send("reading")
    ffi.cast("uint8_t *", addr)[PAGE]  # the guard page


def test_the_guard_page_really_faults(guarded):
    """Without this, the tests below could not fail on an over-read."""
    _mm, base = guarded
    with Child(_touch_past_the_end, int(ffi.cast("uintptr_t", base))) as ch:
        assert ch.recv() == "reading"
        assert ch.join() == -signal.SIGSEGV


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=600), count=st.integers(0, 70))
def test_garbage_record_sections_are_rejected_never_crash(guarded, data, count):
    n = decode_guarded(guarded, data, count)
    assert n == -errno.EBADMSG or 0 <= n <= count


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                    min_size=1, max_size=4),
       cut=st.integers(-3, 3))
def test_mutated_sections_are_rejected_or_stay_in_bounds(guarded, recs, flips, cut):
    section = bytearray(encode(Batch(recs)))
    if len(section) > PAGE:
        return
    for at, x in flips:
        section[at % len(section)] ^= x
    if cut < 0:
        section = section[:cut]
    elif cut > 0:
        section += bytes(cut)
    n = decode_guarded(guarded, bytes(section), len(recs))
    assert n == -errno.EBADMSG or 0 <= n <= len(recs)


def test_sections_c_accepts_parse_in_python():
    # one record: attributes, ts delta 0, offset delta 0, null key, empty value,
    # then a header count of 1 spelled as an over-long 10-byte varint
    count = bytes([0x82] + [0x80] * 8 + [0x02])
    body = bytes([0, 0, 0, 1, 0]) + count + bytes([2]) + b"k" + bytes([1])
    section = bytes([len(body)]) + body
    n, out = decode(section, 1)
    if n == -errno.EBADMSG:
        return  # rejecting the over-long varint is a fine fix too
    assert n == 1
    (row,) = unpack(section, out, 1)
    assert row["headers"] == [("k", None)]


# ------------------------------------------------------------ through the log

@pytest.fixture
def plog(shm_prefix):
    with new_log(shm_prefix, max_batch_bytes=16384) as p:
        yield p


def test_append_and_read_round_trip_property(plog):
    slot = plog.register_producer()
    reader = plog.reader()

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(recs=records, ts=st.one_of(st.none(), st.lists(
        st.integers(-(2**53), 2**53), min_size=20, max_size=20)),
        timestamp=st.integers(0, 2**50), lz4=st.booleans())
    def check(recs, ts, timestamp, lz4):
        n = len(recs)
        timestamps = None if ts is None else ts[:n]
        base = plog.append(slot, [r["value"] for r in recs], keys=[r["key"] for r in recs],
                           headers=[r["headers"] for r in recs], timestamps=timestamps,
                           timestamp=timestamp, compression="lz4" if lz4 else None)
        c = plog.new_cursor()
        assert plog.seek(c, base) == 0
        res = reader.read(c, 1000)
        assert list(res.offsets) == list(range(base, base + n))
        assert res.values == [r["value"] for r in recs]
        assert res.keys == [r["key"] for r in recs]
        if any(r["headers"] for r in recs):
            assert res.headers == [list(r["headers"]) for r in recs]
        else:
            assert res.headers is None
        assert res.timestamps == (timestamps if timestamps is not None else [timestamp] * n)
        assert reader.read(c, 1000) is None

    check()


def test_non_bytes_values_and_keys_raise_type_error_naming_the_index(plog):
    slot = plog.register_producer()
    with pytest.raises(TypeError, match=r"value #1 must be bytes-like .*got str"):
        plog.append(slot, [b"a", "b", b"c"])
    with pytest.raises(TypeError, match=r"value #2 must be bytes-like .*got int"):
        plog.append(slot, [None, b"", 7])
    with pytest.raises(TypeError, match=r"key #0 must be bytes-like .*got str"):
        plog.append(slot, [b"a", b"b"], keys=["k", None])
    with pytest.raises(TypeError, match="header value must be bytes"):
        plog.append(slot, [b"a"], headers=[[("h", 1.5)]])
    with pytest.raises(ValueError, match="at least one record"):
        plog.append(slot, [])
    with pytest.raises(ValueError, match="2 keys for 1 values"):
        plog.append(slot, [b"a"], keys=[b"k", b"l"])
    with pytest.raises(errors.InvalidConfig, match="compression"):
        plog.append(slot, [b"a"], compression="zstd")
    # none of these took an offset
    assert plog.claimed_end == 0
    assert plog.append(slot, [bytearray(b"ok"), memoryview(b"mv")]) == 0
    assert plog.reader().read(plog.new_cursor(), 10).values == [b"ok", b"mv"]


# ------------------------------------------------------------ values as a pickled list

pickled_values = st.one_of(
    st.lists(st.one_of(st.none(), st.just(b""), st.binary(max_size=300), st.binary(min_size=250, max_size=3333)),
             min_size=1, max_size=40),
    # long lists of small values: several MARK..APPENDS groups of 1000, maybe
    # ending in one item APPEND
    st.builds(lambda n, seed: [None if (i * seed) % 11 == 0 else bytes([i % 256]) * ((i * seed) % 9)
                               for i in range(n)],
              st.integers(995, 2101), st.integers(1, 10**6)),
)


def test_append_pickled_round_trip_property(shm_prefix):
    """append_pickled(pickle_values(values)) reads back as exactly `values`,
    and its record section is byte for byte what append() writes for them."""
    with new_log(shm_prefix, chunk_bytes=1 << 20, max_batch_bytes=1 << 18, gate_readers=False) as plog:
        slot = plog.register_producer()
        reader = plog.reader()

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(values=pickled_values, timestamp=st.integers(-(2**62), 2**62))
        def check(values, timestamp):
            n = len(values)
            base = plog.append_pickled(slot, pickle_values(values), 1 << 20, timestamp)
            assert base >= 0
            assert plog.append(slot, values, timestamp=timestamp) == base + n
            c = plog.new_cursor()
            assert plog.seek(c, base) == 0
            got = reader.read(c, 2 * n)
            assert list(got.offsets) == list(range(base, base + 2 * n))
            assert got.values == values + values
            assert got.keys == [None] * 2 * n
            assert got.timestamps == [timestamp] * 2 * n
            assert got.headers is None
            assert plog.seek(c, base) == 0
            (pickled, _, _), (appended, _, _) = frames(plog, c)
            assert frame_records(plog, pickled) == frame_records(plog, appended)

        check()


def test_pickled_streams_cut_short_or_extended_are_refused(shm_prefix):
    """Every proper prefix of a good stream, and a good stream with bytes
    after its STOP, is -EPROTO: never a crash, never an offset taken."""
    with new_log(shm_prefix, gate_readers=False) as plog:
        slot = plog.register_producer()

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(values=st.lists(st.one_of(st.none(), st.binary(max_size=300)), min_size=1, max_size=5),
               cut=st.integers(0, 2000), extra=st.binary(min_size=1, max_size=3))
        def check(values, cut, extra):
            stream = bytes(pickle_values(values))
            end = plog.claimed_end
            for bad in (stream[: cut % len(stream)], stream + extra):
                assert plog.append_pickled(slot, bad, 1 << 20, 0) == -errno.EPROTO
            assert plog.claimed_end == plog.end_offset() == end
            assert plog.append_pickled(slot, stream, 1 << 20, 0) == end

        check()
