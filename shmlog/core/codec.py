"""Python side of the record codec: header sections and batch columns.

The record section itself is encoded and decoded in C (csrc/codec.c). Here we
only turn Python objects into the columns C takes (one join, one length
array per batch) and parse header sections, which are rare. Nothing here runs
per message on the fast path except list appends.
"""

from __future__ import annotations

from array import array
from typing import Iterable, List, Optional, Sequence, Tuple

Header = Tuple[str, Optional[bytes]]


def _zigzag(v: int) -> int:
    return (v << 1) ^ (v >> 63)


def _put_varint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _get_varint(buf, pos: int) -> Tuple[int, int]:
    shift = 0
    v = 0
    while True:
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, pos
        shift += 7


def _unzigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


# the zigzag varint of 0..63: one byte each
_ZIGZAG1 = [bytes((i << 1,)) for i in range(64)]


def encode_headers(headers: Optional[Iterable[Header]]) -> bytes:
    """Encode a header list the way the C decoder validates it."""
    if not headers:
        return b""
    # the usual list, a few (str, bytes) pairs under 64 bytes each: one
    # join of precomputed length bytes (no varint encoding per header, as
    # the general loop does; that loop names whatever this one does not take)
    try:
        if len(headers) < 64:  # type: ignore[arg-type]
            parts = [_ZIGZAG1[len(headers)]]  # type: ignore[arg-type]
            for key, value in headers:
                kb = key.encode()
                if value.__class__ is not bytes or len(kb) >= 64 or len(value) >= 64:
                    break
                parts += (_ZIGZAG1[len(kb)], kb, _ZIGZAG1[len(value)], value)
            else:
                return b"".join(parts)
    except (TypeError, ValueError, AttributeError):
        pass
    return _encode_headers(headers)


def _encode_headers(headers: Iterable[Header]) -> bytes:
    items = list(headers)
    out = bytearray()
    _put_varint(out, _zigzag(len(items)))
    for item in items:
        try:
            key, value = item
        except (TypeError, ValueError):
            raise TypeError(f"headers must be (str, bytes) pairs, got {item!r}") from None
        if isinstance(key, str):
            kb = key.encode()
        elif isinstance(key, (bytes, bytearray)):
            kb = bytes(key)
        else:
            raise TypeError(f"header key must be str, got {type(key).__name__}")
        _put_varint(out, _zigzag(len(kb)))
        out += kb
        if value is None:
            _put_varint(out, _zigzag(-1))
        else:
            # as for keys and values: a str has no single byte form, the
            # caller picks the encoding
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"header value must be bytes-like (bytes, bytearray, memoryview) or None, "
                                f"got {type(value).__name__} (header {key!r}); encode str with .encode()")
            vb = bytes(value)
            _put_varint(out, _zigzag(len(vb)))
            out += vb
    return bytes(out)


def decode_headers(section) -> List[Header]:
    """Parse a header section (already bounds-checked by the C decoder)."""
    if not section:
        return []
    count, pos = _get_varint(section, 0)
    count = _unzigzag(count)
    headers: List[Header] = []
    for _ in range(count):
        kl, pos = _get_varint(section, pos)
        kl = _unzigzag(kl)
        key = bytes(section[pos : pos + kl]).decode("utf-8", "replace")
        pos += kl
        vl, pos = _get_varint(section, pos)
        vl = _unzigzag(vl)
        if vl < 0:
            headers.append((key, None))
        else:
            headers.append((key, bytes(section[pos : pos + vl])))
            pos += vl
    return headers


def bytes_error(kind: str, items: Sequence, index_hint: Optional[int] = None) -> TypeError:
    for i, v in enumerate(items):
        if v is not None and not isinstance(v, (bytes, bytearray, memoryview)):
            return TypeError(
                f"{kind} #{i} must be bytes-like (bytes, bytearray, memoryview), "
                f"got {type(v).__name__}; encode str with .encode()"
            )
    return TypeError(f"{kind} must be bytes-like")


def columns(items: Sequence, kind: str = "value", lens: Optional[List[int]] = None) -> Tuple[bytes, array]:
    """(concatenation, int32 lengths with -1 for None) for one batch.

    `lens`, when the caller already has them, must be the plain len() of
    every item (no None)."""
    try:
        blob = b"".join(items)
        return blob, array("i", lens if lens is not None else map(len, items))
    except TypeError:
        pass
    # slow path: None entries (null values/keys) or a wrong type somewhere
    parts = []
    lens = array("i")
    for v in items:
        if v is None:
            lens.append(-1)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            b = bytes(v)
            parts.append(b)
            lens.append(len(b))
        else:
            raise bytes_error(kind, items)
    return b"".join(parts), lens
