"""Consumer groups, supervisor side: the coordinator. The member that runs in
each consumer is shmlog.client.member; the heartbeat slots they share are
shmlog.core.groups_region; committed offsets are shmlog.broker.offsets.

Protocol (JSON ops over the supervisor socket; every request is answered at
once, so the supervisor's single-threaded loop never waits on a member):

* ``group_join``   -> member_id, token, heartbeat slot, generation. A member
  that was in the group before a supervisor restart rejoins with its
  member_id, slot, token and the partitions it still owns ("claims").
* ``group_sync``   -> the member reports what it owns (having revoked what it
  was told to), commits the offsets of what it just released, and gets back
  what to revoke next and which partitions it may start reading, with their
  committed offsets. Cooperative: a partition is granted only once its old
  owner has released it (or died), so no partition ever has two owners; the
  others keep being read through the whole rebalance.
* ``group_commit`` / ``group_committed`` / ``group_leave``. A commit is
  accepted only from a current member, for partitions it owns now: a member
  removed from the group (its generation is stale) or a partition that moved
  on gets FencedMember, as Kafka fences a stale generation. A commit with no
  member_id comes from a consumer outside the group (Kafka's assign() +
  commit): accepted only while the group has no members, as Kafka does.
* admin: ``groups``, ``describe_group``, ``delete_group``, ``reset_offsets``.

The coordinator's own ticker thread (at the reaper's interval) removes a member
whose process is gone (a zombie counts as gone, a reused pid is told apart by
its start time) or which has not polled for ``session_timeout_ms``, and
rebalances; on_revoke/on_assign run in the members' processes. On memory
topics the coordinator also holds a gating reader slot per (group, partition)
at the committed offset, so producers never overwrite what a group has not
committed; members auto-commit each time they move into the next chunk of a
memory partition, so that gate trails the readers by less than a chunk.

The coordinator must never block the supervisor's loop.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .. import errors, protocol
from ..config import (
    GROUP_RE,
    MAX_SESSION_MS,
    MIN_SESSION_MS,
    validate_group_name,
    validate_topic_name,
)
from ..core.groups_region import (
    H_SUPERVISOR,
    REJOIN,
    S_GENERATION,
    S_GROUP,
    S_NOTIFY,
    S_PID,
    S_POLL,
    S_SESSION,
    S_TOKEN,
    SLOT_COUNT,
    GroupsRegion,
    group_hash,
    region_name,
    slot_index,
)
from ..osutil import pid_alive
from . import assignors
from .group_admin import GroupAdmin
from .group_state import Group, Member, Orphan, int_field, offset_list, tp_list
from .offsets import MAX_OFFSET, OFFSETS_SUFFIX, OffsetStore

log = logging.getLogger("shmlog.groups")

TP = Tuple[str, int]
_now = time.monotonic_ns


class Coordinator(GroupAdmin):
    """The group coordinator, living in the supervisor (built by it; see attach())."""

    def __init__(self, sup):
        self.sup = sup
        self.groups: Dict[str, Group] = {}
        self.region: Optional[GroupsRegion] = None
        self.orphans: Dict[int, Dict[int, Orphan]] = {}
        self.orphan_deadline_ns = 0
        self.dir = Path(sup.data_dir) / "groups"
        self._closed = False

    def attach(self) -> None:
        """Register with the supervisor's hooks (called once, before start)."""
        sup = self.sup
        sup.handlers.update({
            "group_join": self.op_join,
            "group_sync": self.op_sync,
            "group_commit": self.op_commit,
            "group_committed": self.op_committed,
            "group_leave": self.op_leave,
            "groups": self.op_groups,
            "describe_group": self.op_describe,
            "delete_group": self.op_delete,
            "reset_offsets": self.op_reset,
        })
        # liveness runs on the coordinator's own thread, at the reaper's pace: a
        # failing pass of another role (sup.tickers share one try block with the
        # partition reaper) must never stop dead members from being noticed
        sup.on_start.append(self.start)
        sup.on_start.append(self.start_ticker)
        sup.on_stop.append(self.stop)
        sup.on_topic_created.append(self.topic_created)
        sup.on_topic_deleted.append(self.topic_deleted)
        sup.on_partitions_added.append(self.partitions_added)
        # the stale-region sweep at start must keep the groups region, so that
        # it survives a supervisor crash
        sup.keep_regions.append(lambda: [self.region_name()])

    # ------------------------------------------------------------ lifecycle
    def region_name(self) -> str:
        return region_name(self.sup.cluster_id)

    def start(self) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.region = GroupsRegion.open(self.region_name())
        w = self.region.words
        w[H_SUPERVISOR] = os.getpid()
        now = _now()
        longest = 0
        for i in range(SLOT_COUNT):
            tok = w[slot_index(i, S_TOKEN)]
            if not tok:
                continue
            o = Orphan(i, tok, w[slot_index(i, S_PID)],
                        max(w[slot_index(i, S_SESSION)], MIN_SESSION_MS) * 1_000_000)
            self.orphans.setdefault(w[slot_index(i, S_GROUP)], {})[i] = o
            # members may have been quiet while nobody watched: count from now
            w[slot_index(i, S_POLL)] = max(w[slot_index(i, S_POLL)], now)
            w[slot_index(i, S_NOTIFY)] = REJOIN
            longest = max(longest, o.session_ns)
        self.orphan_deadline_ns = now + longest
        if self.orphans:
            log.info("%d member(s) of the previous supervisor must rejoin",
                     sum(len(v) for v in self.orphans.values()))
        for p in sorted(self.dir.glob("*" + OFFSETS_SUFFIX)):
            name = p.name[: -len(OFFSETS_SUFFIX)]
            if GROUP_RE.match(name):
                g = self._group(name)
                self._restore_gates(g)

    def start_ticker(self) -> None:
        t = threading.Thread(target=self._tick_loop, name="shmlog-groups", daemon=True)
        t.start()
        self.sup.threads.append(t)  # joined by Supervisor.shutdown()

    def _tick_loop(self) -> None:
        interval = max(float(self.sup.cfg["reaper_interval_ms"]), 10.0) / 1000.0
        stop = self.sup.stop_event
        while not stop.wait(interval) and not self._closed:
            try:
                self.tick()
            except Exception:
                log.exception("group coordinator pass failed")

    def stop(self) -> None:
        with self.sup.lock:
            self._closed = True
            for g in self.groups.values():
                self._release_gates(g)
                g.store.close()
            if self.region is not None:
                self.region.close()
                self.region.unlink()
                self.region = None

    # ------------------------------------------------------------ helpers
    def _group(self, name: str, *, create: bool = True) -> Optional[Group]:
        g = self.groups.get(name)
        if g is None:
            path = self.dir / (name + OFFSETS_SUFFIX)
            if not create and not path.exists() and group_hash(name) not in self.orphans:
                return None
            g = Group(name, OffsetStore(path))
            g.barrier = self.orphans.pop(g.hash, {})
            self.groups[name] = g
        return g

    def _known_group(self, name: str) -> Group:
        validate_group_name(name)
        g = self._group(name, create=False)
        if g is None:
            raise errors.GroupError(f"unknown group {name!r}: it has no members and no committed offsets",
                                    what=name)
        return g

    def _topic(self, name: str) -> Optional[Dict[str, Any]]:
        return self.sup.meta["topics"].get(name)

    def _plog(self, topic: str, p: int):
        t = self._topic(topic)
        if t is None:
            return None
        plog = self.sup.logs.get((t["id"], p))
        if plog is None or plog.closed:
            return None
        return plog

    def _end_offset(self, topic: str, p: int) -> Optional[int]:
        plog = self._plog(topic, p)
        return None if plog is None else plog.end_offset()

    def _committed(self, g: Group, topic: str, p: int) -> Optional[int]:
        t = self._topic(topic)
        if t is None:
            return None
        return g.store.get(topic, p, t["id"])

    def _partition_counts(self, topics: Iterable[str]) -> Dict[str, int]:
        out = {}
        for name in topics:
            t = self._topic(name)
            if t is not None:
                out[name] = t["config"]["partitions"]
        return out

    def _words(self):
        if self.region is None:
            raise errors.GroupError("the group coordinator is not running")
        return self.region.words

    def _notify(self, m: Member) -> None:
        w = self._words()
        i = slot_index(m.slot, S_NOTIFY)
        v = w[i]
        w[i] = 1 if v >= REJOIN - 1 else v + 1

    def _alloc_slot(self) -> int:
        w = self._words()
        reserved = {o.slot for orph in self.orphans.values() for o in orph}
        reserved |= {s for g in self.groups.values() for s in g.barrier}
        for i in range(SLOT_COUNT):
            if not w[slot_index(i, S_TOKEN)] and i not in reserved:
                return i
        raise errors.GroupError(f"no free member slot: at most {SLOT_COUNT} group members per data dir")

    def _fill_slot(self, m: Member, g: Group, session_ms: int) -> None:
        w = self._words()
        w[slot_index(m.slot, S_PID)] = m.pid
        w[slot_index(m.slot, S_GROUP)] = g.hash
        w[slot_index(m.slot, S_GENERATION)] = g.generation
        w[slot_index(m.slot, S_POLL)] = _now()
        w[slot_index(m.slot, S_SESSION)] = session_ms
        w[slot_index(m.slot, S_NOTIFY)] = 1
        w[slot_index(m.slot, S_TOKEN)] = m.token  # last: the slot is in use

    def _free_slot(self, slot: int) -> None:
        if self.region is None:
            return
        w = self.region.words
        w[slot_index(slot, S_TOKEN)] = 0  # first: the member's next poll sees it is out
        i = slot_index(slot, S_NOTIFY)
        w[i] = (w[i] + 1) % REJOIN
        for k in (S_PID, S_GROUP, S_GENERATION, S_POLL, S_SESSION):
            w[slot_index(slot, k)] = 0

    def _member_group(self, msg: Dict[str, Any]) -> Group:
        """The group of a member request; a group this coordinator does not
        know fences the member (it rejoins)."""
        name = validate_group_name(protocol.field(msg, "group", str))
        g = self._group(name, create=False)
        if g is None:
            raise errors.FencedMember(
                f"group {name!r} has no member {msg.get('member_id')!r} (the supervisor restarted or the "
                f"member was removed)", what=name)
        return g

    def _member(self, g: Group, msg: Dict[str, Any]) -> Member:
        mid = protocol.field(msg, "member_id", str)
        m = g.members.get(mid)
        gen = int_field(msg, "generation", 0, 0, MAX_OFFSET)
        if m is None:
            raise errors.FencedMember(
                f"member {mid!r} is not in group {g.name!r} (its generation {gen} is stale; the group "
                f"is at generation {g.generation}): it was removed after its process died, it stopped "
                f"polling for longer than its session timeout, or the supervisor restarted",
                what=g.name,
            )
        tok = int_field(msg, "token", None, 0, (1 << 64) - 1)
        if tok is not None and tok != m.token:
            raise errors.FencedMember(f"member {mid!r} of group {g.name!r}: token mismatch", what=g.name)
        return m

    # ------------------------------------------------------------ rebalance
    def _rebalance(self, g: Group, reason: str) -> None:
        if g.barrier:
            g.target = None  # wait until every member of the previous supervisor is back
            return
        g.generation += 1
        g.rebalances += 1
        topics = sorted({t for m in g.members.values() for t in m.topics})
        g.parts = self._partition_counts(topics)
        subs = {mid: [t for t in m.topics if t in g.parts] for mid, m in g.members.items()}
        fn = assignors.get(g.assignor or assignors.DEFAULT)
        target = fn(subs, g.parts, {mid: m.owned for mid, m in g.members.items()})
        g.target = {mid: set(target.get(mid, ())) for mid in g.members}
        w = self.region.words if self.region is not None else None
        moving = 0
        for mid, m in g.members.items():
            m.generation = g.generation
            if w is not None:
                w[slot_index(m.slot, S_GENERATION)] = g.generation
            if m.owned != g.target[mid]:
                moving += len(m.owned - g.target[mid])
                self._notify(m)
        log.info("group %r: generation %d (%s): %d member(s), %d partition(s) to move",
                 g.name, g.generation, reason, len(g.members), moving)

    def _release(self, g: Group, m: Member, tps: Iterable[TP]) -> None:
        """m no longer owns tps: free them and wake whoever should get them."""
        wake = set()
        for tp in tps:
            m.owned.discard(tp)
            if g.owner.get(tp) == m.member_id:
                del g.owner[tp]
                if g.target:
                    for mid, want in g.target.items():
                        if tp in want and mid != m.member_id and mid in g.members:
                            wake.add(mid)
        for mid in wake:
            self._notify(g.members[mid])

    def _remove(self, g: Group, m: Member, reason: str) -> None:
        if reason.endswith(" left"):
            log.info("group %r: member %s (pid %d) left", g.name, m.member_id, m.pid)
        else:
            log.warning("group %r: member %s (pid %d) removed: %s", g.name, m.member_id, m.pid, reason)
        self._release(g, m, list(m.owned))
        g.members.pop(m.member_id, None)
        self._free_slot(m.slot)
        if not g.members and not g.barrier:
            g.assignor = None
        self._rebalance(g, reason)

    def _grants(self, g: Group, m: Member) -> List[Tuple[str, int, Optional[int]]]:
        if g.barrier or g.target is None:
            return []
        out = []
        for tp in sorted(g.target.get(m.member_id, ())):
            if tp in m.owned or tp in g.owner:
                continue
            g.owner[tp] = m.member_id
            m.owned.add(tp)
            out.append((tp[0], tp[1], self._start_position(g, tp)))
        return out

    def _start_position(self, g: Group, tp: TP) -> Optional[int]:
        off = self._committed(g, *tp)
        if off is None:
            return None
        end = self._end_offset(*tp)
        if end is not None and off > end:
            # a torn tail of a disk topic dropped what was committed (memory
            # topics restart at or above every committed offset): the
            # member's auto_offset_reset decides, "error" raises
            log.warning("group %r: committed offset %d of %s[%d] is past its end %d",
                        g.name, off, tp[0], tp[1], end)
        return off

    # ------------------------------------------------------------ offsets
    def _commit(self, g: Group, m: Optional[Member], offsets: Dict[TP, int], *, check: bool = True) -> None:
        entries = []
        durable = False
        for (topic, p), off in sorted(offsets.items()):
            t = self._topic(topic)
            if t is None:
                raise errors.UnknownTopic(f"cannot commit for unknown topic {topic!r}", what=topic)
            if not 0 <= p < t["config"]["partitions"]:
                raise errors.UnknownPartition(f"topic {topic!r} has no partition {p}", what=topic)
            if check and m is not None and g.owner.get((topic, p)) != m.member_id:
                raise errors.FencedMember(
                    f"member {m.member_id!r} of group {g.name!r} does not own {topic}[{p}] in "
                    f"generation {g.generation} (it was moved to another member): commit rejected",
                    what=g.name,
                )
            entries.append((topic, t["id"], p, off))
            durable = durable or t["config"]["storage"] != "memory"
        if not entries:
            return
        try:
            g.store.append(entries, durable=durable, generation=g.generation,
                           member_id=m.member_id if m is not None else "admin")
        except OSError as exc:
            raise errors.StorageError(
                f"group {g.name!r}: cannot record committed offsets in {g.store.path}: "
                f"{exc.strerror or exc} (errno {exc.errno}); the commit did not take effect: free "
                f"space or make the data dir writable, then commit again", what=g.name) from None
        for topic, _tid, p, off in entries:
            self._gate(g, topic, p, off)
        if g.store.needs_compaction():
            try:
                g.store.compact({n: t["id"] for n, t in self.sup.meta["topics"].items()})
            except OSError as exc:
                # the commit itself is recorded: do not report it failed;
                # compaction is retried at the next commit
                log.warning("group %r: compacting %s failed (%s); retrying later", g.name, g.store.path, exc)

    def _gate(self, g: Group, topic: str, p: int, offset: int) -> None:
        """Memory topics: hold the producers at this group's committed offset."""
        t = self._topic(topic)
        if t is None or t["config"]["storage"] != "memory":
            return
        plog = self._plog(topic, p)
        if plog is None:
            return
        cur = g.gates.get((topic, p))
        if cur is not None and cur[0] is plog and not plog.closed:
            plog.set_reader_position(cur[1], offset)
            return
        try:
            slot = plog.register_reader(offset, gating=True, group_id=g.hash)
        except errors.ShmlogError as exc:
            log.warning("group %r: cannot gate %s[%d] at its committed offset: %s", g.name, topic, p, exc)
            return
        g.gates[(topic, p)] = (plog, slot)

    def _restore_gates(self, g: Group) -> None:
        for (topic, p), (tid, off) in list(g.store.offsets.items()):
            t = self._topic(topic)
            if t is not None and t["id"] == tid and p < t["config"]["partitions"]:
                self._gate(g, topic, p, off)

    def _release_gates(self, g: Group, topic: Optional[str] = None) -> None:
        for tp, (plog, slot) in list(g.gates.items()):
            if topic is not None and tp[0] != topic:
                continue
            if not plog.closed:
                plog.release_reader(slot)
            del g.gates[tp]

    # ------------------------------------------------------------ ops: members
    def op_join(self, msg: Dict[str, Any], conn) -> Dict[str, Any]:
        name = validate_group_name(protocol.field(msg, "group", str))
        topics = protocol.field(msg, "topics", list)
        if not topics or not all(isinstance(t, str) for t in topics):
            raise protocol.ProtocolError("field 'topics' must be a non-empty list of topic names")
        topics = sorted({validate_topic_name(t) for t in topics})
        assignor = protocol.field(msg, "assignor", str, required=False, default=assignors.DEFAULT)
        assignors.get(assignor)
        pid = int_field(msg, "pid", None, 1, 1 << 31)
        if pid is None:
            raise protocol.ProtocolError("request 'group_join' is missing field 'pid'")
        client_id = protocol.field(msg, "client_id", str, required=False, default="")[:200]
        session_ms = int_field(msg, "session_timeout_ms", None, MIN_SESSION_MS, MAX_SESSION_MS)
        if session_ms is None:
            session_ms = int(self.sup.cfg["session_timeout_ms"])
        mid = protocol.field(msg, "member_id", (str, type(None)), required=False, default=None)
        token = int_field(msg, "token", None, 1, (1 << 64) - 1)
        slot = int_field(msg, "slot", None, 0, SLOT_COUNT - 1)
        gen = int_field(msg, "generation", 0, 0, MAX_OFFSET)
        claims = tp_list(msg, "owned")
        reset = protocol.field(msg, "auto_offset_reset", str, required=False, default="earliest")
        if reset not in ("earliest", "latest", "error"):
            raise protocol.ProtocolError("field 'auto_offset_reset' must be 'earliest', 'latest' or 'error'")
        g = self._group(name)
        if g.assignor is not None and g.assignor != assignor and (g.members or g.barrier):
            raise errors.GroupError(
                f"group {name!r} uses the {g.assignor!r} assignor; this member asked for {assignor!r} "
                f"(every member of a group must use the same one)", what=name)
        self._words()  # raises if the coordinator is not running
        old = g.members.get(mid) if mid else None
        if old is not None and old.token == token:
            # the same join again (a retried request): answer the same
            return self._join_reply(g, old)
        rejoin = mid is not None and token is not None
        if rejoin and slot is not None and slot in g.barrier and g.barrier[slot].token == token:
            del g.barrier[slot]
        else:
            slot = self._alloc_slot()
            token = secrets.randbits(63) | 1
            if not rejoin:
                mid = f"{client_id or 'member'}-{secrets.token_hex(6)}"
            if mid in g.members:
                mid = f"{mid}-{secrets.token_hex(3)}"
        m = Member(mid, client_id, pid, slot, token, topics, session_ms, reset)
        g.assignor = assignor
        g.reset = reset
        g.members[mid] = m
        self._fill_slot(m, g, session_ms)
        if rejoin and claims:
            g.generation = max(g.generation, gen)
            counts = self._partition_counts(topics)
            for tp in claims:
                if tp[0] in counts and tp[1] < counts[tp[0]] and tp not in g.owner:
                    g.owner[tp] = mid
                    m.owned.add(tp)
            log.info("group %r: member %s rejoined with %d of its %d partition(s)",
                     name, mid, len(m.owned), len(claims))
        self._rebalance(g, f"member {mid} joined" if not rejoin else f"member {mid} rejoined")
        return self._join_reply(g, m)

    def _join_reply(self, g: Group, m: Member) -> Dict[str, Any]:
        return {"member_id": m.member_id, "token": m.token, "slot": m.slot,
                "region": self.region_name(), "incarnation": self.region.incarnation,
                "generation": g.generation, "session_timeout_ms": m.session_ns // 1_000_000}

    def op_sync(self, msg: Dict[str, Any], conn) -> Dict[str, Any]:
        g = self._member_group(msg)
        m = self._member(g, msg)
        claimed = set(tp_list(msg, "owned"))
        offsets = offset_list(msg, "offsets")
        released = m.owned - claimed
        if offsets:
            ok = {tp: off for tp, off in offsets.items()
                  if g.owner.get(tp) == m.member_id and self._topic(tp[0]) is not None}
            self._commit(g, m, ok)
        if released:
            self._release(g, m, released)
        m.generation = g.generation
        revoke = sorted(claimed - m.owned)  # not ours (a rejected claim): drop at once
        if g.target is not None and not g.barrier:
            revoke += sorted(m.owned - g.target.get(m.member_id, set()))
        grants = self._grants(g, m)
        waiting = 0
        if g.target is not None:
            waiting = len(g.target.get(m.member_id, set()) - m.owned)
        return {"generation": g.generation, "revoke": [list(tp) for tp in revoke],
                "assign": [list(x) for x in grants], "waiting": waiting}

    def op_commit(self, msg: Dict[str, Any], conn) -> Dict[str, Any]:
        if not msg.get("member_id"):
            return self._commit_outside(msg)
        g = self._member_group(msg)
        m = self._member(g, msg)
        self._commit(g, m, offset_list(msg, "offsets"))
        return {"generation": g.generation}

    def _commit_outside(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        """A commit by no member: a consumer that assigns its partitions
        itself (Kafka's "simple" consumer: assign() and commit, generation
        -1). As Kafka's coordinator does, it is taken only while the group
        has no members (else they would fight over the offsets); the group
        is created by it if need be."""
        name = validate_group_name(protocol.field(msg, "group", str))
        offsets = offset_list(msg, "offsets")
        g = self._group(name)
        if g.members or g.barrier:
            raise errors.FencedMember(
                f"group {name!r} has {len(g.members) + len(g.barrier)} active member(s): only they may "
                f"commit its offsets; commit from a consumer outside the group only while it is empty, "
                f"or use another group", what=name)
        self._commit(g, None, offsets, check=False)
        return {"generation": g.generation}

    def op_committed(self, msg: Dict[str, Any], conn) -> Dict[str, Any]:
        name = validate_group_name(protocol.field(msg, "group", str))
        g = self._group(name, create=False)
        out = []
        for topic, p in tp_list(msg, "partitions"):
            out.append([topic, p, None if g is None else self._committed(g, topic, p)])
        return {"offsets": out}

    def op_leave(self, msg: Dict[str, Any], conn) -> Dict[str, Any]:
        try:
            g = self._member_group(msg)
            m = self._member(g, msg)
        except errors.FencedMember:
            return {}  # already gone
        offsets = offset_list(msg, "offsets")
        ok = {tp: off for tp, off in offsets.items()
              if g.owner.get(tp) == m.member_id and self._topic(tp[0]) is not None}
        try:
            self._commit(g, m, ok)
        finally:
            self._remove(g, m, f"member {m.member_id} left")  # its partitions move either way
        return {}

    # ------------------------------------------------------------ hooks
    def topic_created(self, name: str) -> None:
        for g in self.groups.values():
            if any(name in m.topics for m in g.members.values()):
                self._rebalance(g, f"topic {name!r} created")

    def partitions_added(self, name: str, before: int, after: int) -> None:
        """Supervisor hook (when it has one); otherwise tick() notices."""
        for g in self.groups.values():
            if not g.barrier and any(name in m.topics for m in g.members.values()):
                self._rebalance(g, f"topic {name!r} grew from {before} to {after} partitions")

    def topic_deleted(self, name: str, t: Dict[str, Any]) -> None:
        for g in self.groups.values():
            for tp in [tp for tp in g.gates if tp[0] == name]:
                del g.gates[tp]  # the region is gone with its slots
            if any(name in m.topics for m in g.members.values()):
                self._rebalance(g, f"topic {name!r} deleted")

    def tick(self) -> None:
        """Every reaper pass: dead or silent members out, metadata changes in."""
        with self.sup.lock:
            if self._closed or self.region is None:
                return
            w = self.region.words
            now = _now()
            for g in list(self.groups.values()):
                for m in list(g.members.values()):
                    if not pid_alive(m.pid, m.started):
                        self._remove(g, m, f"its process {m.pid} is gone")
                        continue
                    idle = now - w[slot_index(m.slot, S_POLL)]
                    if idle > m.session_ns:
                        self._remove(g, m, f"no poll for {idle / 1e9:.1f}s (session timeout "
                                           f"{m.session_ns // 1_000_000} ms)")
                if g.barrier and self._prune_orphans(g.barrier, now):
                    self._rebalance(g, "every member of the previous supervisor is back or gone")
                if g.members and not g.barrier:
                    topics = {t for m in g.members.values() for t in m.topics}
                    if self._partition_counts(topics) != g.parts:
                        self._rebalance(g, "partitions changed")
                if self._phantom(g):
                    del self.groups[g.name]
            for h in list(self.orphans):
                self._prune_orphans(self.orphans[h], now)
                if not self.orphans[h]:
                    del self.orphans[h]

    def _prune_orphans(self, orphans: Dict[int, Orphan], now: int) -> bool:
        """Drop orphans that died, went silent or missed the rejoin deadline;
        True when the last one went."""
        if not orphans:
            return False
        w = self.region.words
        for slot, o in list(orphans.items()):
            dead = not pid_alive(o.pid)
            silent = now - w[slot_index(slot, S_POLL)] > o.session_ns
            late = now > self.orphan_deadline_ns
            if dead or silent or late:
                log.warning("member slot %d (pid %d) of the previous supervisor did not rejoin (%s)",
                            slot, o.pid, "gone" if dead else "silent" if silent else "too late")
                del orphans[slot]
                self._free_slot(slot)
        return not orphans
