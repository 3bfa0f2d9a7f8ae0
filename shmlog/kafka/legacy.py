"""The oldest versions of three APIs, which kio (generated from today's
Kafka, which dropped them) has no schema for, but which the listener
advertises: every API's range starts at 0, as old librdkafka wants.

ListOffsets v0 (a list of offsets per partition), OffsetCommit v0-v1
(no generation in v0, a per-partition timestamp in v1) and CreateTopics v0
(no validate_only, no error messages). Requests become objects shaped like
kio's, so the handlers are the same; responses are written here. Everything
else goes to protocol.decode / protocol.encode.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace as NS
from typing import Any, Dict

from . import protocol as P
from .wire import Reader, string


def _list_offsets_v0(r: Reader) -> Any:
    r.i32()  # replica id
    topics = []
    for _ in range(r.count(6)):
        name = r.string()
        parts = []
        for _ in range(r.count(16)):
            parts.append(NS(partition_index=r.i32(), timestamp=r.i64(), max_num_offsets=r.i32()))
        topics.append(NS(name=name, partitions=parts))
    return NS(topics=topics)


def _offset_commit(version: int):
    def read(r: Reader) -> Any:
        group = r.string()
        gen, member = (r.i32(), r.string()) if version >= 1 else (-1, "")
        topics = []
        for _ in range(r.count(6)):
            name = r.string()
            parts = []
            for _ in range(r.count(14)):
                index, offset = r.i32(), r.i64()
                if version >= 1:
                    r.i64()  # commit timestamp: the coordinator stamps its own
                parts.append(NS(partition_index=index, committed_offset=offset, committed_metadata=r.nstring()))
            topics.append(NS(name=name, partitions=parts))
        return NS(group_id=group, generation_id_or_member_epoch=gen, member_id=member, topics=topics)
    return read


_DECODERS = {
    (P.LIST_OFFSETS, 0): _list_offsets_v0,
    (P.OFFSET_COMMIT, 0): _offset_commit(0),
    (P.OFFSET_COMMIT, 1): _offset_commit(1),
}


def decode(api: int, version: int, frame, pos: int) -> Any:
    fn = _DECODERS.get((api, version))
    if fn is not None:
        return fn(Reader(frame, pos))
    if (api, version) == (P.CREATE_TOPICS, 0):
        # v0 is v1 (= v2's bytes) without the trailing validate_only flag
        return P.decode(api, 2, memoryview(bytes(frame[pos:]) + b"\x00"), 0)
    return P.decode(api, version, frame, pos)


def encode(api: int, version: int, data: Dict[str, Any]) -> bytes:
    if (api, version) == (P.LIST_OFFSETS, 0):
        out = [struct.pack(">i", len(data["topics"]))]
        for t in data["topics"]:
            out += [string(t["name"]), struct.pack(">i", len(t["partitions"]))]
            for p in t["partitions"]:
                offs = p["old_style_offsets"]
                out.append(struct.pack(f">ihi{len(offs)}q", p["partition_index"], p["error_code"], len(offs), *offs))
        return b"".join(out)
    if (api, version) == (P.CREATE_TOPICS, 0):
        out = [struct.pack(">i", len(data["topics"]))]
        out += [string(t["name"]) + struct.pack(">h", t["error_code"]) for t in data["topics"]]
        return b"".join(out)
    if api == P.OFFSET_COMMIT and version < 2:
        return P.encode(api, 2, data)  # v0-v2 answer with the same bytes
    return P.encode(api, version, data)
