"""CRC32C (csrc/crc32c.c): the folding path (VPCLMULQDQ), the SSE4.2 path
and the portable table path against known answers and a bitwise pure-Python
reference, at every length and alignment that could trip the three-stream
stitching or the folding's 256/64/16-byte steps. A path this CPU lacks is
skipped, with the reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shmlog.core._core import ffi, lib

POLY = 0x82F63B78


def crc32c_bitwise(data: bytes, crc: int = 0) -> int:
    """The definition: reflected Castagnoli, init ~0, final xor ~0, bit by bit."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (POLY & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _table():
    t = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (POLY & -(c & 1))
        t.append(c)
    return t


_T = _table()


def crc32c_table(data: bytes, crc: int = 0) -> int:
    """Byte-at-a-time table version, for buffers too long for the bitwise one."""
    crc ^= 0xFFFFFFFF
    t = _T
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


IMPLS = {
    "dispatch": lambda crc, buf, n: lib.shmlog_crc32c(crc, buf, n),
    "sw": lambda crc, buf, n: lib.shmlog_crc32c_sw(crc, buf, n),
    "sse42": lambda crc, buf, n: lib.shmlog_crc32c_path(lib.SHMLOG_CRC32C_PATH_SSE42, crc, buf, n),
    "fold": lambda crc, buf, n: lib.shmlog_crc32c_path(lib.SHMLOG_CRC32C_PATH_FOLD, crc, buf, n),
}
NEEDS = {"sse42": lib.SHMLOG_CRC32C_PATH_SSE42, "fold": lib.SHMLOG_CRC32C_PATH_FOLD}


def crc_of(impl: str, data, crc: int = 0, offset: int = 0, length=None) -> int:
    buf = ffi.from_buffer(data) if len(data) else ffi.NULL
    n = len(data) - offset if length is None else length
    ptr = buf + offset if len(data) else buf
    return IMPLS[impl](crc, ptr, n)


def _skip_unless_cpu_has(impl: str) -> None:
    if lib.shmlog_crc32c_hw() < NEEDS.get(impl, 0):
        pytest.skip(f"this CPU has no {impl} path (shmlog_crc32c_hw() = {lib.shmlog_crc32c_hw()})")


@pytest.fixture(params=sorted(IMPLS))
def impl(request):
    _skip_unless_cpu_has(request.param)
    return request.param


def test_reports_which_path_it_uses():
    assert lib.shmlog_crc32c_hw() in (lib.SHMLOG_CRC32C_PATH_TABLE, lib.SHMLOG_CRC32C_PATH_SSE42,
                                      lib.SHMLOG_CRC32C_PATH_FOLD)


@pytest.mark.parametrize("data,expected", [
    (b"123456789", 0xE3069283),
    (b"", 0x00000000),
    (b"a", 0xC1D04330),
    # RFC 3720 (iSCSI), appendix B.4
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_known_answers(impl, data, expected):
    assert crc32c_bitwise(data) == expected  # the reference itself is right
    assert crc_of(impl, data) == expected


def test_zero_length_returns_the_previous_crc(impl):
    data = b"xyz"
    assert crc_of(impl, data, crc=0xDEADBEEF, length=0) == 0xDEADBEEF


# lengths around the SSE path's block sizes (3 x 256 and 3 x 8192), the
# slicing-by-8 word size, and the folding's steps (256 a loop, then 64, then
# 16 bytes, then 8 and 1; folding starts at 256 bytes)
EDGE_LENGTHS = sorted({0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 257, 271, 272, 279,
                       319, 320, 335, 336, 383, 384, 447, 448, 511, 512, 513, 767, 768, 769,
                       1000, 3333, 8191, 8192, 8193, 24575, 24576, 24577, 24576 + 768,
                       49152 + 5, 100_003})


def test_edge_lengths_at_every_alignment(impl):
    blob = bytearray((i * 131 + 7) & 0xFF for i in range(100_003 + 8))
    for n in EDGE_LENGTHS:
        for offset in range(8):
            want = crc32c_table(bytes(blob[offset: offset + n]))
            assert crc_of(impl, blob, offset=offset, length=n) == want, (n, offset)


def test_hw_and_sw_agree_on_long_buffers():
    blob = bytes((i * 7919) & 0xFF for i in range(200_001))
    for n in (24576 * 3 + 1, 100_000, 200_001):
        for offset in (0, 1, 5):
            assert crc_of("dispatch", blob, offset=offset, length=n - offset) == crc_of(
                "sw", blob, offset=offset, length=n - offset)


def test_every_path_agrees_around_the_folding_size_limit(impl):
    """Folding covers 256 B..2 MiB; above that dispatch goes to three crc32
    streams. Both sides of the limit, and a frame-sized buffer, agree."""
    import os

    blob = os.urandom((2 << 20) + 4099)
    for n in (61_440, (2 << 20) - 1, 2 << 20, (2 << 20) + 1, (2 << 20) + 4097):
        for offset in (0, 3):
            assert crc_of(impl, blob, offset=offset, length=n) == crc_of(
                "sw", blob, offset=offset, length=n), (n, offset)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1500), offset=st.integers(0, 7))
def test_matches_bitwise_reference(data, offset):
    buf = bytearray(offset) + data  # data starts `offset` bytes into the buffer
    want = crc32c_bitwise(data)
    for impl in IMPLS:  # a path the CPU lacks runs the best one below it
        assert crc_of(impl, buf, offset=offset) == want, impl


@settings(max_examples=200, deadline=None)
@given(a=st.binary(max_size=3000), b=st.binary(max_size=3000), seed=st.integers(0, 2**32 - 1))
def test_chaining_is_the_crc_of_the_concatenation(a, b, seed):
    whole = crc32c_table(a + b)
    for impl in IMPLS:
        assert crc_of(impl, b, crc=crc_of(impl, a)) == whole
    # chaining also continues any prior value exactly like the reference
    assert crc_of("dispatch", b, crc=seed) == crc_of("sw", b, crc=seed) == crc32c_table(b, seed)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=30_000), cut=st.integers(0, 30_000))
def test_any_split_point_chains(data, cut):
    cut %= len(data) + 1
    whole = crc_of("sw", data)
    assert crc_of("dispatch", data) == whole
    head = crc_of("dispatch", data[:cut])
    assert crc_of("dispatch", data[cut:], crc=head) == whole
