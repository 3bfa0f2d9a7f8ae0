"""Consumer groups, admin side: list, describe (with lag), delete and reset
the offsets of groups. A mixin of the Coordinator (shmlog.broker.coordinator),
answering the admin ops of the control socket; it never blocks the
supervisor's loop."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Tuple

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

    def _group_topics(self, g: Group) -> List[str]:
        """The topics a group reads: its members' subscriptions and the
        (live) topics it has committed offsets on."""
        topics = {t for m in g.members.values() for t in m.topics}
        for (topic, _p), (tid, _off) in g.store.offsets.items():
            t = self._topic(topic)
            if t is not None and t["id"] == tid:
                topics.add(topic)
        return sorted(t for t in topics if self._topic(t) is not None)

    def _reset_policy(self, g: Group, topic: str, p: int) -> str:
        """Where a member of g starts on a partition with no committed
        offset: its owner's auto_offset_reset, else any member's, else the
        API's default ("error" starts at the earliest until told otherwise)."""
        owner = g.members.get(g.owner.get((topic, p), ""))
        for m in ([owner] if owner is not None else []) + list(g.members.values()):
            if topic in m.topics:
                return m.reset
        return g.reset

    def _partition_rows(self, g: Group) -> List[Dict[str, Any]]:
        """One row per partition of every topic the group reads, as Kafka's
        kafka-consumer-groups lists them: committed None where nothing is
        committed, and the lag then counted from where a member would start
        (the start offset for "earliest", none for "latest")."""
        rows = []
        for topic in self._group_topics(g):
            t = self._topic(topic)
            for p in range(t["config"]["partitions"]):
                committed = self._committed(g, topic, p)
                plog = self._plog(topic, p)
                end = start = None
                if plog is not None:
                    end = plog.end_offset()
                    start = self.sup.partition_info(topic, t, p)["start_offset"] \
                        if t["config"]["storage"] == "disk" else plog.start_offset
                if end is None:
                    lag = None
                elif committed is not None:
                    lag = max(end - committed, 0)
                elif self._reset_policy(g, topic, p) == "latest":
                    lag = 0
                else:
                    lag = max(end - start, 0)
                rows.append({"topic": topic, "partition": p, "member_id": g.owner.get((topic, p)),
                             "committed": committed, "end_offset": end, "start_offset": start, "lag": lag})
        return rows

    def _summary(self, g: Group) -> Dict[str, Any]:
        lag = sum(r["lag"] or 0 for r in self._partition_rows(g))
        return {"state": g.state(), "members": len(g.members), "generation": g.generation,
                "assignor": g.assignor, "topics": self._group_topics(g), "lag": lag}

    def unconsumed_memory(self) -> List[Tuple[str, str, int, int]]:
        """(group, topic, partition, lag) of every memory partition holding
        messages that a group with a committed offset on it has not consumed
        yet: what an idle exit would lose (the supervisor stays up for them)."""
        out = []
        for g in self.groups.values():
            for (topic, p), (tid, off) in sorted(g.store.offsets.items()):
                t = self._topic(topic)
                if t is None or t["id"] != tid or t["config"]["storage"] != "memory":
                    continue
                plog = self._plog(topic, p)
                if plog is None:
                    continue
                lag = plog.end_offset() - max(off, plog.start_offset)
                if lag > 0:
                    out.append((g.name, topic, p, lag))
        return out

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
        parts = self._partition_rows(g)
        return {"group": {
            "group": g.name, "state": g.state(), "generation": g.generation, "assignor": g.assignor,
            "members": members, "partitions": parts, "rebalances": g.rebalances,
            "assignment": {mid: [list(tp) for tp in sorted(m.owned)] for mid, m in sorted(g.members.items())},
            "waiting_for_rejoin": len(g.barrier),
        }}

    def _require_inactive(self, g: Group, what: str) -> None:
        """Refuse, naming every live member (client id, pid, member id), so
        the operator knows which consumers to stop: a group's offsets and
        state only change hands while nobody reads with them."""
        if g.members or g.barrier:
            live = [f"{m.client_id} (pid {m.pid}, member {mid})" for mid, m in sorted(g.members.items())]
            live += [f"pid {o.pid} (rejoining after a supervisor restart)" for o in g.barrier.values()]
            raise errors.GroupError(
                f"cannot {what} group {g.name!r}: it has {len(live)} active member(s): "
                f"{', '.join(live)}; close its consumers first (or wait for their session timeout)",
                what=g.name)

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
        # dry_run: the offsets a reset would commit, computed the same way,
        # with nothing committed (and no group created)
        dry_run = protocol.field(msg, "dry_run", bool, required=False, default=False)
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
        g = self._group(name, create=not dry_run)
        if g is not None:
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
        answer = {"offsets": {str(p): off for (_t, p), off in sorted(new.items())}}
        if dry_run:
            return answer
        self._commit(g, None, new, check=False)
        log.info("group %r: offsets of %r reset to %s", name, topic, to)
        return answer

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
