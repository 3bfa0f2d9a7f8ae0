"""Layout cross-check: what Python sees through cffi (shmlog/core/_build.py's cdef,
with `...` filled in by the compiler) against what csrc/layout.h pins.

Two sources, so C and Python can never drift apart silently:
- a full table of every field the cdef names (offset and C type), written
  from layout.h by hand;
- every `_Static_assert` in layout.h, parsed, so a new assert is covered
  without touching this file.
"""

from __future__ import annotations

import ast
import operator
import re
import struct
from pathlib import Path

import pytest
from shmlog.core._core import ffi, lib

LAYOUT_H = Path(__file__).resolve().parents[2] / "csrc" / "layout.h"

# struct -> {field: (offset, C type)}; sizes below. From csrc/layout.h.
FIELDS = {
    "shmlog_part_hdr_t": {
        "magic": (0, "uint64_t"),
        "version": (8, "uint32_t"),
        "header_bytes": (12, "uint32_t"),
        "region_bytes": (16, "uint64_t"),
        "chunk_bytes": (24, "uint32_t"),
        "chunk_count": (28, "uint32_t"),
        "max_batch_bytes": (32, "uint32_t"),
        "flags": (36, "uint32_t"),
        "partition": (40, "uint32_t"),
        "creator_pid": (44, "uint32_t"),
        "initial_offset": (48, "uint64_t"),
        "active_seq": (128, "uint64_t"),
        "data_futex": (256, "uint32_t"),
        "data_waiters": (260, "uint32_t"),
        "space_futex": (384, "uint32_t"),
        "space_waiters": (388, "uint32_t"),
        "start_offset": (512, "uint64_t"),
        "spilled_offset": (520, "uint64_t"),
        "durable_offset": (528, "uint64_t"),
        "supervisor_pid": (536, "uint64_t"),
        "aborted_batches": (544, "uint64_t"),
        "reclaimed_chunks": (552, "uint64_t"),
        "rotations": (560, "uint64_t"),
        "bell_futex": (264, "uint32_t"),
        "bell_waiters": (268, "uint32_t"),
        "data_hungry": (272, "uint32_t"),
        "bell_hungry": (276, "uint32_t"),
        "chunks": (640, "shmlog_chunk_t[64]"),
        "producers": (640 + 64 * 256, "shmlog_producer_slot_t[64]"),
        "readers": (640 + 64 * 256 + 64 * 128, "shmlog_reader_slot_t[64]"),
    },
    "shmlog_chunk_t": {
        "tail": (0, "uint64_t"),
        "seq": (128, "uint64_t"),
        "base_offset": (136, "uint64_t"),
        "state": (144, "uint64_t"),
        "seal": (152, "uint64_t"),
        "released": (160, "uint64_t"),
    },
    "shmlog_producer_slot_t": {
        "pid": (0, "uint32_t"),
        "fenced": (4, "uint32_t"),
        "claim_seq": (8, "uint64_t"),
        "claim_tail": (16, "uint64_t"),
        "claim_bytes": (24, "uint32_t"),
        "claim_records": (28, "uint32_t"),
        "batches": (32, "uint64_t"),
        "records": (40, "uint64_t"),
        "aborted": (48, "uint64_t"),
        "claim_stamped": (56, "uint32_t"),
    },
    "shmlog_reader_slot_t": {
        "pid": (0, "uint32_t"),
        "gating": (4, "uint32_t"),
        "position": (8, "uint64_t"),
        "pin": (16, "uint64_t"),
        "group_id": (24, "uint64_t"),
    },
    "shmlog_frame_hdr_t": {
        "frame": (0, "uint64_t"),
        "crc": (8, "uint32_t"),
        "payload_bytes": (12, "uint32_t"),
        "base_offset": (16, "uint64_t"),
        "record_count": (24, "uint32_t"),
        "attributes": (28, "uint16_t"),
        "batch_version": (30, "uint16_t"),
        "first_timestamp": (32, "int64_t"),
        "max_timestamp": (40, "int64_t"),
        "producer_id": (48, "uint64_t"),
        "producer_seq": (56, "uint32_t"),
        "uncompressed_bytes": (60, "uint32_t"),
    },
}

SIZES = {
    "shmlog_part_hdr_t": 640 + 64 * 256 + 128 * 128,
    "shmlog_chunk_t": 256,
    "shmlog_producer_slot_t": 128,
    "shmlog_reader_slot_t": 128,
    "shmlog_frame_hdr_t": 64,
}


def _cdef_fields(struct_name):
    return dict(ffi.typeof(struct_name).fields)


@pytest.mark.parametrize("struct_name", sorted(FIELDS))
def test_every_cdef_field_is_where_layout_h_puts_it(struct_name):
    cdef = _cdef_fields(struct_name)
    table = FIELDS[struct_name]
    # the table covers every field Python can reach, and nothing it cannot
    assert sorted(cdef) == sorted(table)
    for name, (offset, ctype) in table.items():
        assert ffi.offsetof(struct_name, name) == offset, f"{struct_name}.{name}"
        assert cdef[name].offset == offset
        assert cdef[name].type.cname == ffi.typeof(ctype).cname, f"{struct_name}.{name}"
    assert ffi.sizeof(struct_name) == SIZES[struct_name]


def test_fields_do_not_overlap():
    for struct_name, table in FIELDS.items():
        spans = sorted((off, off + ffi.sizeof(ctype), name) for name, (off, ctype) in table.items())
        for (_a0, a1, an), (b0, _b1, bn) in zip(spans, spans[1:]):
            assert a1 <= b0, f"{struct_name}: {an} overlaps {bn}"
        assert spans[-1][1] <= SIZES[struct_name]


def test_hot_words_are_alone_on_their_128_bytes():
    """The claim word and each futex/counter group sit on their own 128 bytes
    (STYLE.md): nothing else in the same block."""
    def block_members(table, block):
        return sorted(n for n, (off, _t) in table.items() if off // 128 == block)

    hdr = FIELDS["shmlog_part_hdr_t"]
    assert block_members(hdr, 1) == ["active_seq"]
    # the topic doorbell shares the data line: committers read both waiter
    # counters together, only waiting readers write them
    assert block_members(hdr, 2) == ["bell_futex", "bell_hungry", "bell_waiters", "data_futex",
                                     "data_hungry", "data_waiters"]
    assert block_members(hdr, 3) == ["space_futex", "space_waiters"]
    assert block_members(FIELDS["shmlog_chunk_t"], 0) == ["tail"]
    # chunk descriptors stay 128-byte aligned inside the header
    assert ffi.offsetof("shmlog_part_hdr_t", "chunks") % 128 == 0
    assert ffi.sizeof("shmlog_chunk_t") % 128 == 0


def test_header_bytes_and_constants():
    hdr = ffi.sizeof("shmlog_part_hdr_t")
    assert lib.SHMLOG_HEADER_BYTES == (hdr + 4095) // 4096 * 4096 == 36864
    assert struct.pack("<Q", lib.SHMLOG_MAGIC) == b"\0SHMLOG1"
    assert lib.SHMLOG_VERSION == 3
    assert (lib.SHMLOG_MAX_CHUNKS, lib.SHMLOG_MAX_PRODUCERS, lib.SHMLOG_MAX_READERS) == (64, 64, 64)
    assert lib.SHMLOG_FRAME_HEADER == ffi.sizeof("shmlog_frame_hdr_t") == 64
    assert lib.SHMLOG_FRAME_ALIGN == 64
    # the slot tables end the header: readers are last
    assert hdr == 640 + lib.SHMLOG_MAX_CHUNKS * 256 + lib.SHMLOG_MAX_PRODUCERS * 128 + (
        lib.SHMLOG_MAX_READERS * 128)
    # frame types are distinct, never zero (0 = nothing written yet), and fit
    # in the low bits a 64-byte-aligned frame length leaves free
    types = {lib.SHMLOG_FRAME_CLAIMED, lib.SHMLOG_FRAME_DATA, lib.SHMLOG_FRAME_PAD}
    assert len(types) == 3 and 0 not in types
    assert all(t <= lib.SHMLOG_FRAME_TYPE_MASK == lib.SHMLOG_FRAME_ALIGN - 1 for t in types)
    assert lib.shmlog_log_region_bytes(65536, 4) == 36864 + 4 * 65536



def test_config_mirrors_of_layout_constants():
    # shmlog/config.py may not import the core, so it spells these itself
    from shmlog import config
    assert config.MIN_CHUNK_BYTES == lib.SHMLOG_MIN_CHUNK_BYTES
    assert config.MAX_CHUNK_BYTES == lib.SHMLOG_MAX_CHUNK_BYTES
    assert config.MAX_CHUNKS == lib.SHMLOG_MAX_CHUNKS
    assert config.FRAME_ALIGN == lib.SHMLOG_FRAME_ALIGN
    assert config.FRAME_HEADER == lib.SHMLOG_FRAME_HEADER
    assert config.MAX_PRODUCERS == lib.SHMLOG_MAX_PRODUCERS

# ------------------------------------------------------------ _Static_asserts

ASSERT_RE = re.compile(
    r"_Static_assert\(\s*(?:offsetof\(\s*(?P<ostruct>\w+)\s*,\s*(?P<field>\w+)\s*\)"
    r"|sizeof\(\s*(?P<sstruct>\w+)\s*\))\s*==\s*(?P<expr>[^,]+?)\s*,\s*\"(?P<msg>[^\"]*)\"\s*\)\s*;"
)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.LShift: operator.lshift, ast.FloorDiv: operator.floordiv}


def _eval(expr: str) -> int:
    """Integer arithmetic over numbers and SHMLOG_* constants the cdef exports."""
    expr = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", expr)

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return getattr(lib, node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"cannot evaluate {ast.dump(node)} in {expr!r}")

    return ev(ast.parse(expr.replace("/", "//"), mode="eval"))


def _static_asserts():
    text = LAYOUT_H.read_text()
    return text, [m.groupdict() for m in ASSERT_RE.finditer(text)]


_TEXT, _ASSERTS = _static_asserts()

def _assert_params():
    params = []
    for a in _ASSERTS:
        if a["ostruct"]:
            pid = f"offsetof({a['ostruct']},{a['field']})"
        else:
            pid = f"sizeof({a['sstruct']})"
        params.append(pytest.param(a, id=pid))
    return params


def test_every_static_assert_was_parsed():
    assert len(_ASSERTS) == _TEXT.count("_Static_assert(")
    assert len(_ASSERTS) >= 16


@pytest.mark.parametrize("claim", _assert_params())
def test_static_assert_holds_from_python(claim):
    expected = _eval(claim["expr"])
    if claim["ostruct"]:
        got = ffi.offsetof(claim["ostruct"], claim["field"])
    else:
        got = ffi.sizeof(claim["sstruct"])
    assert got == expected, claim["msg"]


def test_eval_understands_layout_h_arithmetic():
    assert _eval("640 + 64 * 256") == 17024
    assert _eval("SHMLOG_FRAME_HEADER") == 64
    assert _eval("4096u") == 4096
    with pytest.raises(ValueError):
        _eval("foo(1)")
