"""Consumer groups, admin side: list, describe (with lag), delete and reset
the offsets of groups. A mixin of the Coordinator (shmlog.broker.coordinator),
answering the admin ops of the control socket; it never blocks the
supervisor's loop."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional, Tuple

from .. import errors, protocol
from ..config import (
    validate_group_name,
)
from ..core.groups_region import (
    S_POLL,
    slot_index,
)
from ..core.reader import scan_for_time
from ..core.segments import SegmentStore
from .group_state import Group, int_field
from .offsets import MAX_OFFSET

log = logging.getLogger("shmlog.groups")

TP = Tuple[str, int]
_now = time.monotonic_ns


class GroupAdmin:
    """The coordinator's admin ops (a mixin: uses its groups, store and sup)."""

    def _summary(self, g: Group) -> Dict[str, Any]:
        lag = 0
        for (topic, p), (tid, off) in g.store.offsets.items():
            t = self._topic(topic)
            if t is not None and t["id"] == tid:
                end = self._end_offset(topic, p)
                if end is not None:
                    lag += max(end - off, 0)
        topics = sorted({t for m in g.members.values() for t in m.topics}
                        | {tp[0] for tp in g.store.offsets if self._topic(tp[0]) is not None})
        return {"state": g.state(), "members": len(g.members), "generation": g.generation,
                "assignor": g.assignor, "topics": topics, "lag": lag}

    def op_groups(self, msg: Dict[str, Any], conn) -> Dict[str, Any]:
        return {"groups": {name: self._summary(g) for name, g in sorted(self.groups.items())
                           if not self._phantom(g)}}

    def _phantom(self, g: Group) -> bool:
        """Known only because someone named it: no members, nothing committed."""
        return not (g.members or g.barrier or g.store.offsets or g.gates or g.store.path.exists())

    def op_describe(self, msg: Dict[str, Any], conn) -> Dict[str, Any]:
        g = self._known_group(protocol.field(msg, "group", str))
        now = _now()
        w = self.region.words if self.region is not None else None
        members = []
        for mid, m in sorted(g.members.items()):
            members.append({
                "member_id": mid, "client_id": m.client_id, "pid": m.pid, "topics": m.topics,
                "assignment": [list(tp) for tp in sorted(m.owned)],
                "target": [list(tp) for tp in sorted((g.target or {}).get(mid, ()))],
                "generation": m.generation,
                "last_poll_ms_ago": None if w is None else max(now - w[slot_index(m.slot, S_POLL)], 0) // 1_000_000,
                "session_timeout_ms": m.session_ns // 1_000_000,
            })
        topics = {t for m in g.members.values() for t in m.topics}
        topics |= {tp[0] for tp in g.store.offsets}
        parts = []
        for topic in sorted(topics):
            t = self._topic(topic)
            if t is None:
                continue
            for p in range(t["config"]["partitions"]):
                committed = self._committed(g, topic, p)
                if committed is None and not any(topic in m.topics for m in g.members.values()):
                    continue
                end = self._end_offset(topic, p)
                parts.append({
                    "topic": topic, "partition": p, "member_id": g.owner.get((topic, p)),
                    "committed": committed, "end_offset": end,
                    "lag": None if committed is None or end is None else max(end - committed, 0),
                })
        return {"group": {
            "group": g.name, "state": g.state(), "generation": g.generation, "assignor": g.assignor,
            "members": members, "partitions": parts, "rebalances": g.rebalances,
            "assignment": {mid: [list(tp) for tp in sorted(m.owned)] for mid, m in sorted(g.members.items())},
            "waiting_for_rejoin": len(g.barrier),
        }}

    def _require_inactive(self, g: Group, what: str) -> None:
        if g.members or g.barrier:
            n = len(g.members) + len(g.barrier)
            raise errors.GroupError(
                f"cannot {what} group {g.name!r}: it has {n} active member(s); close its consumers "
                f"first (or wait for their session timeout)", what=g.name)

    def op_delete(self, msg: Dict[str, Any], conn) -> Dict[str, Any]:
        g = self._known_group(protocol.field(msg, "group", str))
        self._require_inactive(g, "delete")
        self._release_gates(g)
        g.store.delete()
        del self.groups[g.name]
        log.info("group %r deleted", g.name)
        return {}

    def op_reset(self, msg: Dict[str, Any], conn) -> Dict[str, Any]:
        name = validate_group_name(protocol.field(msg, "group", str))
        topic = protocol.field(msg, "topic", str)
        to = protocol.field(msg, "to", str, required=False, default="earliest")
        offset = int_field(msg, "offset", None, 0, MAX_OFFSET)
        ts = int_field(msg, "timestamp_ms", None, 0, MAX_OFFSET)
        if to == "earliest" and offset is not None:
            to = "offset"
        elif to == "earliest" and ts is not None:
            to = "timestamp"
        if to == "time":
            to = "timestamp"
        if to not in ("earliest", "latest", "offset", "timestamp"):
            raise errors.InvalidConfig(
                f"reset_offsets: to={to!r}; use 'earliest', 'latest', 'offset' (with offset=) or "
                f"'timestamp' (with timestamp_ms=)", what="to")
        if to == "offset" and offset is None:
            raise errors.InvalidConfig("reset_offsets(to='offset') needs offset=", what="offset")
        if to == "timestamp" and ts is None:
            raise errors.InvalidConfig("reset_offsets(to='timestamp') needs timestamp_ms=", what="timestamp_ms")
        t = self._topic(topic)
        if t is None:
            raise errors.UnknownTopic(f"unknown topic {topic!r}", what=topic)
        g = self._group(name)
        self._require_inactive(g, "reset the offsets of")
        new: Dict[TP, int] = {}
        for p in range(t["config"]["partitions"]):
            info = self.sup.partition_info(topic, t, p)
            start, end = info["start_offset"], info["end_offset"]
            if to == "earliest":
                off = start
            elif to == "latest":
                off = end
            elif to == "offset":
                off = min(max(offset, start), end)
            else:
                off = self._offset_for_time(topic, t, p, ts)
                off = end if off is None else min(max(off, start), end)
            new[(topic, p)] = off
        self._commit(g, None, new, check=False)
        log.info("group %r: offsets of %r reset to %s", name, topic, to)
        return {"offsets": {str(p): off for (_t, p), off in sorted(new.items())}}

    def _offset_for_time(self, topic: str, t: Dict[str, Any], p: int, ts: int) -> Optional[int]:
        """First offset with timestamp >= ts: the segment time indexes of a
        disk topic first, then the shared-memory window."""
        if t["config"]["storage"] == "disk":
            try:
                off = SegmentStore(self.sup.data_dir).offset_for_time(topic, p, ts)
            except (errors.ShmlogError, OSError) as exc:
                log.warning("time index of %s[%d] unusable (%s); scanning memory", topic, p, exc)
                off = None
            if off is not None:
                return off
        plog = self._plog(topic, p)
        if plog is None:
            return None
        return scan_for_time(plog, ts)
