"""Kafka wire protocol: framing, request headers, and the message codecs.

Control-plane messages (Metadata, the group APIs, offsets, admin) are read
and written with kio, whose dataclasses are generated from Kafka's own
message schemas, so every version's fields are the spec's; handlers build
responses as plain dicts and ``encode`` fits them to the version asked.
Produce and Fetch, the data path, use the small struct codecs in
handlers_data.py (a kio response costs ~10 us to build and write, struct
~0.6 us). This module must never trust a length from the wire: every read
is bounded by the frame, and a malformed frame raises MalformedRequest.
"""

from __future__ import annotations

import dataclasses
import datetime
import struct
import types
import typing
from functools import cache
from typing import Any, Dict, Optional, Tuple

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer

# API keys
PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR = 8, 9, 10
JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14
DESCRIBE_GROUPS, LIST_GROUPS, API_VERSIONS = 15, 16, 18
CREATE_TOPICS, DELETE_TOPICS, INIT_PRODUCER_ID = 19, 20, 22

# What the listener advertises: non-flexible versions only (ApiVersions v3
# excepted, see below), each from 0, since old librdkafka (Debian's 2.0.2
# behind kcat) turns a feature on only when an exact old version is inside
# the advertised range. Produce < 3 and Fetch < 4 are answered with
# UNSUPPORTED_VERSION per partition (they carry magic 0/1 message sets).
SUPPORTED: Dict[int, Tuple[int, int]] = {
    PRODUCE: (0, 8),
    FETCH: (0, 11),
    LIST_OFFSETS: (0, 5),
    METADATA: (0, 8),
    OFFSET_COMMIT: (0, 7),
    OFFSET_FETCH: (0, 5),
    FIND_COORDINATOR: (0, 2),
    JOIN_GROUP: (0, 5),
    HEARTBEAT: (0, 3),
    LEAVE_GROUP: (0, 3),
    SYNC_GROUP: (0, 3),
    DESCRIBE_GROUPS: (0, 4),
    LIST_GROUPS: (0, 2),
    API_VERSIONS: (0, 3),
    CREATE_TOPICS: (0, 4),
    DELETE_TOPICS: (0, 3),
    INIT_PRODUCER_ID: (0, 1),
}

# Versions older than the ones kio was generated for, whose bytes are the
# same as a newer version's: (api, old) -> (version to parse the request
# with, bytes to append to the request, bytes to drop from the front of the
# response). Each pair was checked against Kafka's message JSON.
_ALIASES: Dict[Tuple[int, int], Tuple[int, bytes, int]] = {
    (OFFSET_FETCH, 0): (1, b"", 0),  # v0 reads ZooKeeper offsets: same bytes
    (DELETE_TOPICS, 0): (1, b"", 4),  # v1 adds throttle_time_ms first
    (CREATE_TOPICS, 1): (2, b"", 4),  # v2 adds throttle_time_ms first
}

NONE = 0
UNKNOWN_SERVER_ERROR = -1
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
REQUEST_TIMED_OUT = 7
MESSAGE_TOO_LARGE = 10
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
INVALID_TOPIC_EXCEPTION = 17
ILLEGAL_GENERATION = 22
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REQUEST = 42
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
KAFKA_STORAGE_ERROR = 56
UNKNOWN_PRODUCER_ID = 59
GROUP_ID_NOT_FOUND = 69
UNSUPPORTED_COMPRESSION_TYPE = 76
INVALID_RECORD = 87

_I16 = struct.Struct(">h")
_HEADER = struct.Struct(">hhi")  # api_key, api_version, correlation_id


class MalformedRequest(Exception):
    """The frame cannot be parsed: the listener closes that connection."""


def flexible_header(api_key: int, version: int) -> bool:
    # of the APIs served here only ApiVersions v3 is flexible
    return api_key == API_VERSIONS and version >= 3


def parse_header(frame: memoryview) -> Tuple[int, int, int, Optional[str], int]:
    """(api_key, api_version, correlation_id, client_id, body offset)."""
    if len(frame) < 10:
        raise MalformedRequest(f"request of {len(frame)} bytes has no header")
    api_key, version, corr = _HEADER.unpack_from(frame, 0)
    (n,) = _I16.unpack_from(frame, 8)
    pos = 10
    client_id = None
    if n >= 0:
        if pos + n > len(frame):
            raise MalformedRequest("client_id runs past the frame")
        client_id = bytes(frame[pos : pos + n]).decode("utf-8", "replace")
        pos += n
    if flexible_header(api_key, version):
        pos = skip_tagged_fields(frame, pos)
    return api_key, version, corr, client_id, pos


def read_uvarint(buf, pos: int) -> Tuple[int, int]:
    v = shift = 0
    while True:
        if pos >= len(buf) or shift > 28:
            raise MalformedRequest("bad varint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, pos
        shift += 7


def skip_tagged_fields(buf, pos: int) -> int:
    count, pos = read_uvarint(buf, pos)
    for _ in range(count):
        _tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        pos += size
        if pos > len(buf):
            raise MalformedRequest("tagged field runs past the frame")
    return pos


# ------------------------------------------------------------------ kio glue
@cache
def _reader(api_key: int, version: int):
    return entity_reader(load_request_schema(api_key, version))


@cache
def _response(api_key: int, version: int):
    cls = load_response_schema(api_key, version)
    return cls, entity_writer(cls)


def decode(api_key: int, version: int, frame: memoryview, pos: int) -> Any:
    """The request body as kio's dataclass for that version."""
    alias = _ALIASES.get((api_key, version))
    data: Any = frame[pos:]
    if alias is not None:
        version = alias[0]
        if alias[1]:
            data = bytes(data) + alias[1]
    try:
        obj, _size = _reader(api_key, version)(data, 0)
    except MalformedRequest:
        raise
    except Exception as exc:  # kio raises struct/Value/Index errors on short or bad input
        raise MalformedRequest(f"api {api_key} v{version}: {exc.__class__.__name__}: {exc}") from None
    return obj


def encode(api_key: int, version: int, data: Dict[str, Any]) -> bytes:
    """A response body: the fields of data that this version has (the rest
    is dropped; missing ones take the schema's defaults)."""
    alias = _ALIASES.get((api_key, version))
    drop = 0
    if alias is not None:
        version, drop = alias[0], alias[2]
    cls, writer = _response(api_key, version)
    buf = _Buf()
    writer(buf, build(cls, data))
    out = buf.getvalue()
    return out[drop:]


class _Buf:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list = []

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _convert(f: dataclasses.Field, hint: Any, v: Any) -> Any:
    kind = f.metadata.get("kafka_type")
    if kind == "error_code":
        return ErrorCode(int(v))
    if kind in ("timedelta_i32", "timedelta_i64"):
        return v if isinstance(v, datetime.timedelta) else datetime.timedelta(milliseconds=int(v))
    if kind == "datetime_i64":
        if v is None or isinstance(v, datetime.datetime):
            return v
        return _EPOCH + datetime.timedelta(milliseconds=int(v))
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, *_rest) = typing.get_args(hint)
        if dataclasses.is_dataclass(item):
            return tuple(build(item, x) for x in v)
        return tuple(v)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if v is None:
            return None
        if len(args) == 1:
            return _convert(f, args[0], v)
        return v
    if dataclasses.is_dataclass(hint) and isinstance(v, dict):
        return build(hint, v)
    return v


@cache
def _fields(cls) -> Tuple[Tuple[dataclasses.Field, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


def build(cls, data: Dict[str, Any]) -> Any:
    """kio dataclass `cls` from a dict holding a superset of its fields."""
    kw = {}
    for f, hint in _fields(cls):
        if f.name in data:
            kw[f.name] = _convert(f, hint, data[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kind = f.metadata.get("kafka_type")
            # fields a handler does not know about get Kafka's "nothing" value
            if kind == "error_code":
                kw[f.name] = ErrorCode.none
            elif kind in ("timedelta_i32", "timedelta_i64"):
                kw[f.name] = datetime.timedelta(0)
            elif typing.get_origin(hint) is tuple:
                kw[f.name] = ()
            elif kind in ("int8", "int16", "int32", "int64"):
                kw[f.name] = -1 if f.name.endswith(("_id", "epoch", "timestamp")) else 0
            elif kind == "bool":
                kw[f.name] = False
            else:
                kw[f.name] = None
    return cls(**kw)


def ms(v: Any) -> int:
    """A kio timedelta (or an int) in milliseconds."""
    if isinstance(v, datetime.timedelta):
        return int(v / datetime.timedelta(milliseconds=1))
    return int(v)


def frame_response_parts(corr: int, parts: list) -> bytes:
    """frame_response for a body given in parts (a Fetch answer: its batches
    as they were encoded), joined once: no copy of the body before the
    framed one."""
    size = 4 + sum(len(x) for x in parts)
    return b"".join([struct.pack(">ii", size, corr), *parts])


def frame_response(corr: int, body: bytes, flexible: bool = False) -> bytes:
    """Size prefix, response header (v0, or v1 with empty tagged fields), body."""
    head = struct.pack(">ii", 4 + len(body) + (1 if flexible else 0), corr)
    return head + (b"\x00" if flexible else b"") + body
