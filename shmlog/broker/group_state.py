"""Consumer groups, the coordinator's state: groups, their members and the
orphans a restarted supervisor found in the groups region, plus the checks
of the fields of group ops. Runs in the supervisor only."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Set, Tuple

from .. import protocol
from ..core.groups_region import (
    group_hash,
)
from ..osutil import proc_start_time
from .offsets import MAX_OFFSET, OffsetStore

TP = Tuple[str, int]
_now = time.monotonic_ns


# ------------------------------------------------------------------ wire helpers
def tp_list(msg: Dict[str, Any], name: str) -> List[TP]:
    v = protocol.field(msg, name, list, required=False, default=[])
    out = []
    for e in v:
        if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                and isinstance(e[1], int) and not isinstance(e[1], bool) and 0 <= e[1] < 1 << 20):
            raise protocol.ProtocolError(f"field {name!r} must be a list of [topic, partition]")
        out.append((e[0], e[1]))
    return out


def offset_list(msg: Dict[str, Any], name: str) -> Dict[TP, int]:
    v = protocol.field(msg, name, list, required=False, default=[])
    out = {}
    for e in v:
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                and all(isinstance(x, int) and not isinstance(x, bool) for x in e[1:])
                and 0 <= e[1] < 1 << 20 and 0 <= e[2] <= MAX_OFFSET):
            raise protocol.ProtocolError(f"field {name!r} must be a list of [topic, partition, offset]")
        out[(e[0], e[1])] = e[2]
    return out


def int_field(msg: Dict[str, Any], name: str, default: Optional[int], lo: int, hi: int) -> Optional[int]:
    v = protocol.field(msg, name, (int, type(None)), required=False, default=default)
    if v is None:
        return default
    if isinstance(v, bool) or not lo <= v <= hi:
        raise protocol.ProtocolError(f"field {name!r} must be an integer in [{lo}, {hi}]")
    return v


# ------------------------------------------------------------------ coordinator
class Member:
    __slots__ = ("member_id", "client_id", "pid", "slot", "token", "topics", "session_ns",
                 "owned", "generation", "joined_ms", "started")

    def __init__(self, member_id: str, client_id: str, pid: int, slot: int, token: int,
                 topics: List[str], session_ms: int):
        self.member_id = member_id
        self.client_id = client_id
        self.pid = pid
        self.slot = slot
        self.token = token
        self.topics = topics
        self.session_ns = session_ms * 1_000_000
        self.owned: Set[TP] = set()
        self.generation = 0
        self.joined_ms = int(time.time() * 1000)
        self.started = proc_start_time(pid)


class Orphan:
    """A slot found in a surviving region at start: a member of the previous
    supervisor that has not rejoined yet."""

    __slots__ = ("slot", "token", "pid", "session_ns")

    def __init__(self, slot: int, token: int, pid: int, session_ns: int):
        self.slot = slot
        self.token = token
        self.pid = pid
        self.session_ns = session_ns


class Group:
    def __init__(self, name: str, store: OffsetStore):
        self.name = name
        self.hash = group_hash(name)
        self.store = store
        self.generation = 0
        self.assignor: Optional[str] = None
        self.members: Dict[str, Member] = {}
        self.owner: Dict[TP, str] = {}
        self.target: Optional[Dict[str, Set[TP]]] = {}
        self.parts: Dict[str, int] = {}
        self.barrier: Dict[int, Orphan] = {}
        self.gates: Dict[TP, Tuple[Any, int]] = {}  # memory topics: (PartitionLog, reader slot)
        self.rebalances = 0

    def state(self) -> str:
        if not self.members and not self.barrier:
            return "Empty"
        if self.barrier or self.target is None:
            return "Rebalancing"
        for mid, m in self.members.items():
            if m.owned != self.target.get(mid, set()):
                return "Rebalancing"
        return "Stable"
