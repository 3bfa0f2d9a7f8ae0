"""shmlog/kafka/records.py and the record walk it shares with the codec
(csrc/record_iter.h): a Produce batch's records become a shmlog section
whose decode gives back what the producer wrote, and a malformed record is
refused alike by the Kafka translation (zigzag length prefix) and by the
section decoder (unsigned length prefix)."""

from __future__ import annotations

import errno

import pytest
from _kafka_wire import batch
from shmlog.core._core import ffi, lib

from shmlog.core.codec import decode_headers
from shmlog.kafka import protocol as P
from shmlog.kafka import records as R


def zigzag(v: int) -> int:
    return (v << 1) ^ (v >> 63)


def varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def body(ts_delta=0, offset_delta=0, key=None, value=b"v", headers=(), tail=b"") -> bytes:
    """A record's bytes after its length prefix (the same in both encodings)."""
    out = b"\x00" + varint(zigzag(ts_delta)) + varint(zigzag(offset_delta))
    for part in (key, value):
        out += varint(zigzag(-1)) if part is None else varint(zigzag(len(part))) + part
    out += varint(zigzag(len(headers)))
    for k, v in headers:
        out += varint(zigzag(len(k))) + k
        out += varint(zigzag(-1)) if v is None else varint(zigzag(len(v))) + v
    return out + tail


def as_kafka(bodies) -> bytes:
    return b"".join(varint(zigzag(len(b))) + b for b in bodies)


def as_shmlog(bodies) -> bytes:
    return b"".join(varint(len(b)) + b for b in bodies)


def to_section(records: bytes, count: int) -> int:
    dst = bytearray(len(records) + 16)
    max_delta = ffi.new("int64_t *")
    src = ffi.from_buffer(records) if records else ffi.new("uint8_t[1]")
    return lib.shmlog_kafka_records_to_section(src, len(records), count, ffi.from_buffer(dst), len(dst),
                                               max_delta)


class Out:
    """shmlog_records_out_t with its arrays (kept alive with it)."""

    def __init__(self, capacity: int):
        self.o = ffi.new("shmlog_records_out_t *")
        self.arrays = [ffi.new(t, capacity) for t in ("uint64_t[]", "int64_t[]", "uint64_t[]", "int32_t[]",
                                                       "uint64_t[]", "int32_t[]", "uint64_t[]", "uint32_t[]")]
        o = self.o
        o.capacity = capacity
        (o.offsets, o.timestamps, o.value_pos, o.value_lens, o.key_pos, o.key_lens,
         o.header_pos, o.header_lens) = self.arrays


def decode_section(section: bytes, count: int, base: int = 0, first_ts: int = 0):
    """(shmlog_codec_decode's result, the Out it filled)."""
    out = Out(max(count, 1))
    src = ffi.from_buffer(section) if section else ffi.new("uint8_t[1]")
    return lib.shmlog_codec_decode(src, len(section), count, base, first_ts, 0, 0, out.o, 0), out.o


def decode(section: bytes, count: int) -> int:
    return decode_section(section, count)[0]


def test_a_produced_batch_becomes_a_section_that_decodes_to_what_was_written():
    values = [(None, b"plain"), (b"key", b""), (b"k2", b"x" * 300), (None, b"y" * 70)]
    raw = batch(values)
    (b,) = R.parse_batches(raw, 1 << 20)
    assert b.count == len(values)
    n, out = decode_section(b.section, b.count, base=100, first_ts=b.first_ts)
    assert n == len(values)
    got = [(None if out.key_lens[i] < 0 else b.section[out.key_pos[i]:out.key_pos[i] + out.key_lens[i]],
            b.section[out.value_pos[i]:out.value_pos[i] + out.value_lens[i]]) for i in range(n)]
    assert got == values
    assert [out.offsets[i] for i in range(n)] == [100, 101, 102, 103]
    assert [out.timestamps[i] for i in range(n)] == [1_700_000_000_000 + i for i in range(n)]
    assert b.max_ts == 1_700_000_000_000 + len(values) - 1


def test_headers_and_null_values_cross_the_translation_unchanged():
    bodies = [body(offset_delta=0, key=b"k", value=None, headers=[(b"h", b"1"), (b"n", None)]),
              body(offset_delta=1, ts_delta=-5, value=b"v", headers=[])]
    kafka = as_kafka(bodies)
    dst = bytearray(len(kafka))
    max_delta = ffi.new("int64_t *")
    n = lib.shmlog_kafka_records_to_section(ffi.from_buffer(kafka), len(kafka), 2, ffi.from_buffer(dst),
                                            len(dst), max_delta)
    assert bytes(dst[:n]) == as_shmlog(bodies)
    assert max_delta[0] == 0  # the largest timestamp delta, not the last
    m, out = decode_section(bytes(dst[:n]), 2, base=0, first_ts=1000)
    assert m == 2
    assert out.value_lens[0] == -1 and out.key_lens[0] == 1
    hp, hl = out.header_pos[0], out.header_lens[0]
    assert decode_headers(bytes(dst[hp:hp + hl])) == [("h", b"1"), ("n", None)]
    assert out.header_lens[1] == 0 and out.timestamps[1] == 995


MALFORMED = {
    "offset delta not dense": [body(offset_delta=1)],
    "second record repeats delta 0": [body(), body(offset_delta=0)],
    "key length below -1": [body()[:3] + varint(zigzag(-2)) + body()[4:]],
    "value longer than the record": [b"\x00\x00\x00\x01" + varint(zigzag(50)) + b"v\x00"],
    "negative header count": [body()[:-1] + varint(zigzag(-1))],
    "header count beyond the record": [body()[:-1] + varint(zigzag(5))],
    # attributes, deltas, null key, value "v", one header whose key is null
    "header key null": [b"\x00\x00\x00\x01\x02v\x02\x01\x01"],
    "bytes left inside the record": [body(tail=b"\x00")],
    "varint running off the record": [b"\x00\x00\x00\x01\x02v\xff"],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_both_paths_refuse_the_same_malformed_record(case):
    bodies = MALFORMED[case]
    assert to_section(as_kafka(bodies), len(bodies)) == -errno.EBADMSG, case
    assert decode(as_shmlog(bodies), len(bodies)) == -errno.EBADMSG, case


@pytest.mark.parametrize("records, count", [
    (b"", 1),                                  # no record where one is promised
    (b"\x00", 1),                              # a record of length 0 (no attributes byte)
    (b"\x7f" + b"\x00" * 10, 1),               # a length past the end of the section
    (b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 1),  # an over-long varint
])
def test_both_paths_refuse_a_bad_length_prefix(records, count):
    assert to_section(records, count) == -errno.EBADMSG
    assert decode(records, count) == -errno.EBADMSG


def test_both_paths_refuse_bytes_after_the_last_record():
    bodies = [body()]
    assert to_section(as_kafka(bodies) + b"\x00", 1) == -errno.EBADMSG
    assert decode(as_shmlog(bodies) + b"\x00", 1) == -errno.EBADMSG
    # and take the same record without them
    assert to_section(as_kafka(bodies), 1) == len(as_shmlog(bodies))
    assert decode(as_shmlog(bodies), 1) == 1


def test_a_corrupt_batch_is_refused_with_corrupt_message():
    raw = bytearray(batch([(None, b"value")]))
    raw[-1] ^= 0xFF
    with pytest.raises(R.BatchError, match="CRC32C") as exc:
        R.parse_batches(bytes(raw), 1 << 20)
    assert exc.value.code == P.CORRUPT_MESSAGE


def test_encode_fit_counts_exactly_what_encode_writes():
    # varied sizes (a value of 130 bytes takes a two-byte length) and
    # timestamps that go back and forth: the count must match the bytes
    values = [(b"k" * (i % 3), b"v" * (7 + 41 * i % 333)) for i in range(40)]
    raw = batch(values)
    (b,) = R.parse_batches(raw, 1 << 20)
    n, out = decode_section(b.section, b.count, base=5000, first_ts=b.first_ts)
    assert n == len(values)
    base = ffi.from_buffer(b.section)
    sizes = []
    for k in range(1, n + 1):
        dst = bytearray(lib.shmlog_kafka_encode_bound(out, k))
        sizes.append(lib.shmlog_kafka_encode(base, out, k, ffi.from_buffer(dst), len(dst)))
    assert lib.shmlog_kafka_encode_fit(out, n, sizes[0] - 1) == 0
    for k, size in enumerate(sizes, 1):
        assert lib.shmlog_kafka_encode_fit(out, n, size) == k
        if k < n:
            assert lib.shmlog_kafka_encode_fit(out, n, sizes[k] - 1) == k
    assert lib.shmlog_kafka_encode_fit(out, n, 1 << 40) == n
