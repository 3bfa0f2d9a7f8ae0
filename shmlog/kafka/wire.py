"""Bounded struct reads and writes for the hand-coded messages (Produce,
Fetch, and the consumer protocol's embedded assignment/subscription).

Every read is checked against the end of the frame; a short or inconsistent
frame raises MalformedRequest, which closes only that connection.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

from .protocol import MalformedRequest

_h = struct.Struct(">h")
_i = struct.Struct(">i")
_q = struct.Struct(">q")
_b = struct.Struct(">b")


class Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, pos: int = 0):
        self.buf = buf
        self.pos = pos
        self.end = len(buf)

    def _need(self, n: int) -> int:
        p = self.pos
        if n < 0 or p + n > self.end:
            raise MalformedRequest(f"field of {n} bytes at {p} runs past the frame ({self.end})")
        self.pos = p + n
        return p

    def i8(self) -> int:
        return _b.unpack_from(self.buf, self._need(1))[0]

    def i16(self) -> int:
        return _h.unpack_from(self.buf, self._need(2))[0]

    def i32(self) -> int:
        return _i.unpack_from(self.buf, self._need(4))[0]

    def i64(self) -> int:
        return _q.unpack_from(self.buf, self._need(8))[0]

    def nstring(self) -> Optional[str]:
        n = self.i16()
        if n < 0:
            return None
        p = self._need(n)
        return bytes(self.buf[p : p + n]).decode("utf-8", "replace")

    def string(self) -> str:
        s = self.nstring()
        if s is None:
            raise MalformedRequest("null where a string is required")
        return s

    def nbytes(self):
        """A memoryview of the bytes (no copy), or None."""
        n = self.i32()
        if n < 0:
            return None
        p = self._need(n)
        return memoryview(self.buf)[p : p + n]

    def count(self, min_item: int = 1) -> int:
        """An array length, checked against what is left (null = 0)."""
        n = self.i32()
        if n < 0:
            return 0
        if n * min_item > self.end - self.pos:
            raise MalformedRequest(f"array of {n} items cannot fit in {self.end - self.pos} bytes")
        return n


def string(s: Optional[str]) -> bytes:
    if s is None:
        return b"\xff\xff"
    b = s.encode()
    return _h.pack(len(b)) + b


def nbytes(b: Optional[bytes]) -> bytes:
    if b is None:
        return b"\xff\xff\xff\xff"
    return _i.pack(len(b)) + b


def assignment(tps) -> bytes:
    """ConsumerProtocolAssignment v0: version, [topic, [partition]], user data."""
    by_topic = {}
    for t, p in sorted(tps):
        by_topic.setdefault(t, []).append(p)
    out = [_h.pack(0), _i.pack(len(by_topic))]
    for t, parts in by_topic.items():
        out.append(string(t))
        out.append(_i.pack(len(parts)))
        out.append(struct.pack(f">{len(parts)}i", *parts))
    out.append(_i.pack(-1))  # no user data
    return b"".join(out)


def subscription_topics(metadata) -> List[str]:
    """The topics of a ConsumerProtocolSubscription (any version: the
    topics come first after the version)."""
    r = Reader(metadata)
    r.i16()
    return [r.string() for _ in range(r.count(2))]


def subscription_owned(metadata) -> Optional[List[Tuple[str, int]]]:
    """The partitions a member says it owns, from a ConsumerProtocolSubscription
    v1 or later (cooperative clients send them at every JoinGroup); None
    for v0, which has no such field."""
    r = Reader(metadata)
    if r.i16() < 1:
        return None
    for _ in range(r.count(2)):
        r.string()
    r.nbytes()  # user data
    out = []
    for _ in range(r.count(6)):
        topic = r.string()
        out += [(topic, r.i32()) for _ in range(r.count(4))]
    return out
