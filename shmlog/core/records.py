"""Records between shared memory and Python objects: the columns a read
returns (ReadResult), the pickle streams that carry many small values across
the C boundary in one call, and decoding of a record section held in a
Python buffer (lz4 frames, segment files).

Never a Python call per record where one per batch will do."""

from __future__ import annotations

import pickle
import threading
from array import array
from typing import List, Optional, Sequence

from .. import errors
from ._core import ffi, lib
from .codec import decode_headers

NONE = (1 << 64) - 1
REC_KEYS = lib.SHMLOG_REC_KEYS
REC_HEADERS = lib.SHMLOG_REC_HEADERS
REC_NULLS = lib.SHMLOG_REC_NULLS


class ReadResult:
    """Columns of the records one read returned (no object per message)."""

    __slots__ = ("offsets", "timestamps", "values", "keys", "headers", "first_seq", "bytes",
                 "positioned")

    def __init__(self, offsets, timestamps, values, keys, headers, first_seq, nbytes,
                 positioned=False):
        self.offsets: Sequence[int] = offsets  # a range when dense
        self.timestamps: List[int] = timestamps
        self.values: List[Optional[bytes]] = values
        self.keys: List[Optional[bytes]] = keys
        self.headers: Optional[List[list]] = headers  # None when no record had headers
        self.first_seq = first_seq
        self.bytes = nbytes
        self.positioned = positioned  # the reader slot's position is already published

    def __len__(self) -> int:
        return len(self.offsets)


# Small values are copied out through a pickle stream the C core writes
# (shmlog_codec_values_pickle): pickle.loads makes the bytes objects in C, ~3x
# faster than slicing the mapping per value. Large values are sliced (one
# copy instead of two). The stream's opcodes all come from our C code.
PICKLE_BELOW = 1024  # average frame bytes per record
# appends of at most this many values averaging at least this size pass one
# pointer per value instead of joining them first (saves a copy)
POINTER_BATCH = 256
POINTER_VALUE = 16384
thread_local = threading.local()




class _Sink:
    """A pickler's file that keeps the bytes object pickle hands it: protocol
    3 writes the whole stream once, at the end of dump(), so nothing is
    copied into a BytesIO."""

    __slots__ = ("write",)

    def __init__(self, write) -> None:
        self.write = write


_PICKLER_KEEP = 1 << 20  # a thread's pickler that grew past this is not kept


def _new_pickler():
    out: list = []
    p = pickle.Pickler(_Sink(out.append), 3)
    # documented as deprecated (not removed); without it the stream would
    # carry memo opcodes, which C refuses (-EPROTO): append() then
    p.fast = True
    return p, out


def pickle_values(values) -> Optional[bytes]:
    """The pickle of a list of bytes that append_pickled takes: protocol 3
    without a memo (Pickler.fast), so every value is written in place with
    its length. None if the values do not pickle (the caller falls back).

    Each thread keeps its pickler: a new one starts from a 4 KiB buffer and
    doubles it (copying) up to the batch's size on every call, work that
    grows with the batch; a kept one starts at the size it last reached."""
    state = thread_local.__dict__
    kept = state.pop("pickler", None)  # popped: a nested call (a value's __reduce__) gets its own
    p, out = kept or _new_pickler()
    try:
        p.dump(values)
    except Exception:  # a value pickle refuses: append() names it
        return None
    finally:
        stream = b"".join(out) if len(out) != 1 else out[0]
        out.clear()
    if len(stream) <= _PICKLER_KEEP:
        state["pickler"] = (p, out)
    return stream




def grow_tls(need: int) -> bytearray:
    """This thread's pickle-stream buffer, of at least `need` bytes: 1 MiB
    first, then 4x at a time up to 16 MiB (slicing covers anything larger)."""
    old = thread_local.__dict__.get("buf")
    size = len(old) if old is not None else 1 << 20
    while size < need and size < (16 << 20):
        size *= 4
    if old is not None:
        if size == len(old):
            return old
        thread_local.view.release()
    buf = thread_local.buf = bytearray(size)
    thread_local.cbuf = ffi.from_buffer(buf)
    thread_local.view = memoryview(buf)
    return buf


def pickled_values(base, pos, lens, n: int) -> Optional[list]:
    buf = thread_local.__dict__.get("buf") or grow_tls(0)
    k = lib.shmlog_codec_values_pickle(base, pos, lens, n, thread_local.cbuf, len(buf))
    if k < 0:
        if len(buf) >= 16 << 20:
            return None
        grow_tls(len(buf) + 1)
        return pickled_values(base, pos, lens, n)
    return pickle.loads(thread_local.view[:k])


def c_array(code: str, cdata, nbytes: int) -> array:
    a = array(code)
    a.frombytes(ffi.buffer(cdata, nbytes))
    return a


def decode_section(raw: bytes, count: int, base_offset: int, first_ts: int, skip_below: int,
                   reader, what: str, capacity: Optional[int] = None) -> ReadResult:
    """Decode a record section held in a Python buffer (lz4 frames, segments).
    Stops after `capacity` records (default: the reader's capacity)."""
    o = reader.out
    o.capacity = min(capacity or reader.capacity, reader.capacity)
    o.flags = 0
    n = lib.shmlog_codec_decode(ffi.from_buffer(raw), len(raw), count, base_offset, first_ts,
                                0, skip_below, o, 0)
    if n < 0:
        errors.check(n, what, offset=base_offset)
    flags = o.flags
    small = len(raw) < n * PICKLE_BELOW
    cbase = ffi.from_buffer(raw) if small else None
    values = pickled_values(cbase, o.value_pos, o.value_lens, n) if small else None
    if values is None:
        vpos = ffi.unpack(o.value_pos, n)
        vlen = ffi.unpack(o.value_lens, n)
        values = [None if ln < 0 else raw[p : p + ln] for p, ln in zip(vpos, vlen)]
    keys = None
    if not flags & REC_KEYS:
        keys = [None] * n
    elif small:
        keys = pickled_values(cbase, o.key_pos, o.key_lens, n)
    if keys is None:
        kpos = ffi.unpack(o.key_pos, n)
        klen = ffi.unpack(o.key_lens, n)
        keys = [None if ln < 0 else raw[p : p + ln] for p, ln in zip(kpos, klen)]
    headers = None
    if flags & REC_HEADERS:
        hpos = ffi.unpack(o.header_pos, n)
        hlen = ffi.unpack(o.header_lens, n)
        headers = [decode_headers(raw[p : p + ln]) if ln else [] for p, ln in zip(hpos, hlen)]
    return ReadResult(ffi.unpack(o.offsets, n), ffi.unpack(o.timestamps, n), values, keys,
                      headers, 0, len(raw))
