"""Consumer groups, client side: this consumer's membership in a group.

Protocol (JSON ops over the supervisor socket, answered at once by the
coordinator in shmlog.broker.coordinator): ``group_join``, ``group_sync``,
``group_commit``, ``group_committed``, ``group_leave``. Cooperative: a
partition is granted only once its old owner has released it (or died).

The member's poll() compares the notify and token words of its heartbeat slot
(shmlog.core.groups_region) with what it saw last, writes its poll time into
the slot, and makes no syscall unless something changed. It must never make a
syscall in poll() on the normal path.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .. import errors
from ..config import (
    DEFAULT_ASSIGNOR,
    MAX_SESSION_MS,
    MIN_SESSION_MS,
    validate_assignor,
    validate_group_name,
)
from ..core.groups_region import (
    REGION_BYTES,
    REJOIN,
    S_NOTIFY,
    S_POLL,
    S_TOKEN,
    GroupsRegion,
    slot_index,
)
from ..osutil import pid_alive

log = logging.getLogger("shmlog.groups")

TP = Tuple[str, int]
_now = time.monotonic_ns

POLL_INTERVAL_S = 0.1  # longest a member sleeps before looking at its slot again
RETRY_NS = 100_000_000  # back-off after a failed control request
SUPERVISOR_CHECK_NS = 1_000_000_000  # how often a member checks that its coordinator lives


class GroupMember:
    """This consumer's membership in a group (built by Consumer(group=...)).

    poll() runs at every fetch-loop iteration: it compares two words of the
    heartbeat slot and a deadline, writes the poll time, and only when
    something changed talks to the coordinator (sync, rejoin, auto-commit).
    """

    def __init__(self, consumer, group: str, topics: Sequence[str], *, assignor: str = DEFAULT_ASSIGNOR,
                 session_timeout_ms: Optional[int] = None, auto_commit_interval_ms: int = 5000,
                 client_id: Optional[str] = None, **unknown: Any):
        if unknown:
            raise errors.InvalidConfig(
                f"unknown consumer setting(s) {', '.join(sorted(unknown))}; group settings are "
                f"assignor, session_timeout_ms, auto_commit_interval_ms, client_id",
                what=sorted(unknown)[0])
        self.group = validate_group_name(group)
        validate_assignor(assignor)
        if not topics:
            raise errors.InvalidConfig(f"a member of group {group!r} needs at least one topic", what=group)
        if session_timeout_ms is None:
            from ..config import BROKER_DEFAULTS

            asked = consumer.cluster.broker_config.get("session_timeout_ms")
            if asked != BROKER_DEFAULTS["session_timeout_ms"]:
                session_timeout_ms = asked  # connect(..., session_timeout_ms=...) asked for it
        if session_timeout_ms is not None:
            if isinstance(session_timeout_ms, bool) or not isinstance(session_timeout_ms, (int, float)) \
                    or not MIN_SESSION_MS <= session_timeout_ms <= MAX_SESSION_MS:
                raise errors.InvalidConfig(
                    f"invalid session_timeout_ms={session_timeout_ms!r}: must be in "
                    f"[{MIN_SESSION_MS}, {MAX_SESSION_MS}]", what="session_timeout_ms")
            session_timeout_ms = int(session_timeout_ms)
        if isinstance(auto_commit_interval_ms, bool) or not isinstance(auto_commit_interval_ms, (int, float)) \
                or auto_commit_interval_ms < 0:
            raise errors.InvalidConfig(
                f"invalid auto_commit_interval_ms={auto_commit_interval_ms!r}: must be >= 0",
                what="auto_commit_interval_ms")
        self.consumer = consumer
        self.cluster = consumer.cluster
        self.topics = sorted(set(topics))
        self.assignor = assignor
        self.session_timeout_ms = session_timeout_ms
        self.auto_commit_ns = int(auto_commit_interval_ms * 1_000_000)
        self.client_id = client_id or f"pid{os.getpid()}"
        self.member_id: Optional[str] = None
        self.generation = 0
        self.owned: Set[TP] = set()
        self.rebalances = 0  # syncs that changed this member's partitions
        self._token = 0
        self._slot = -1
        self._region: Optional[GroupsRegion] = None
        self._incarnation = 0
        self._sup_pid = 0
        self._words = memoryview(bytearray(REGION_BYTES)).cast("Q")  # until joined
        self._i_token = self._i_notify = self._i_poll = 0
        self._seen: Optional[int] = None
        self._due = 0
        self._commit_due = 0
        self._need_join = False
        self._retry_at = 0
        self._sup_check_at = 0
        self._failing = False
        self._closed = False
        self._in_revoke = False
        self._committed_in_revoke: Set[TP] = set()
        self._last_committed: Dict[TP, int] = {}
        # memory topics: [cursor, chunk seq at the last commit] per owned partition
        self._watch: List[List[Any]] = []
        self._user_exc: Optional[BaseException] = None
        self._join(rejoin=False)

    # ------------------------------------------------------------ hot path
    def poll(self) -> None:
        """Heartbeat, and act on what the coordinator asked (cheap; no syscall
        unless something changed)."""
        w = self._words
        now = _now()
        if (w[self._i_token] != self._token or w[self._i_notify] != self._seen or now >= self._due
                or self.cluster.supervisor_pid != self._sup_pid):
            self._slow(now)
            return
        w[self._i_poll] = now
        for cw in self._watch:
            if cw[0].seq != cw[1]:
                self._slow(now)
                return

    def poll_interval(self) -> float:
        """The longest the consumer may sleep before calling poll() again."""
        left = (self._due - _now()) / 1e9
        return max(0.0, min(POLL_INTERVAL_S, left))

    # ------------------------------------------------------------ slow path
    def _slow(self, now: int) -> None:
        if self._closed:
            return
        if now < self._retry_at:
            # the coordinator was unreachable a moment ago: keep reading what
            # we own, heartbeat, and try again after the back-off
            w = self._words
            if w[self._i_token] == self._token:
                w[self._i_poll] = now
            return
        try:
            w = self._words
            if self._need_join or w[self._i_token] != self._token:
                if not self._need_join:
                    self._lost("the coordinator removed this member (session timeout, or its "
                               "supervisor did not see it rejoin)")
                    self._need_join = True
                self._join(rejoin=False)
                w = self._words
            elif self.cluster.supervisor_pid != self._sup_pid or w[self._i_notify] == REJOIN \
                    or self._coordinator_died(now):
                self._join(rejoin=True)
                w = self._words
            if w[self._i_notify] != self._seen:
                self._sync()
            if self.consumer.enable_auto_commit and self.owned:
                if now >= self._commit_due or self._crossed():
                    self._auto_commit(now)
            else:
                for cw in self._watch:
                    cw[1] = cw[0].seq
            self._schedule(now)
            self._failing = False
        except errors.FencedMember as exc:
            log.warning("group %r: %s; rejoining", self.group, exc)
            self._lost(str(exc))
            self._need_join = True
            self._due = 0
        except errors.ShmlogError as exc:
            if isinstance(exc, errors.Closed):
                raise
            log.log(logging.DEBUG if self._failing else logging.WARNING,
                    "group %r: coordinator request failed (%s); retrying every %d ms", self.group, exc,
                    RETRY_NS // 1_000_000)
            self._failing = True
            self._retry_at = now + RETRY_NS
            self._due = 0
        finally:
            w = self._words
            if w[self._i_token] == self._token:
                w[self._i_poll] = _now()
        exc2, self._user_exc = self._user_exc, None
        if exc2 is not None:
            raise exc2

    def _coordinator_died(self, now: int) -> bool:
        """About once a second: is the supervisor we joined gone? The
        Cluster's session watcher normally notices first and reconnects;
        this is the member's own check, so the group recovers even when it
        did not (the rejoin request itself starts a new supervisor)."""
        if now < self._sup_check_at:
            return False
        self._sup_check_at = now + SUPERVISOR_CHECK_NS
        return not pid_alive(self._sup_pid)

    def _schedule(self, now: int) -> None:
        due = min(now + 10_000_000_000, self._sup_check_at)
        if self.consumer.enable_auto_commit and self.owned:
            due = min(due, self._commit_due)
        self._due = due

    def _crossed(self) -> bool:
        """Has the consumer moved into another chunk of a memory partition
        since the last commit? Producers of a memory topic wait for the
        group's committed offset, so the chunk just left is only reusable
        once it is committed: auto-commit then, not only every
        auto_commit_interval_ms (poll() checks this on its normal path)."""
        for cw in self._watch:
            if cw[0].seq != cw[1]:
                return True
        return False

    def _request(self, op: str, **fields: Any) -> Dict[str, Any]:
        return self.cluster.request(op, group=self.group, **fields)

    def _join(self, *, rejoin: bool) -> None:
        fields: Dict[str, Any] = {"topics": self.topics, "assignor": self.assignor, "pid": os.getpid(),
                                  "client_id": self.client_id,
                                  "auto_offset_reset": self.consumer.auto_offset_reset}
        if self.session_timeout_ms is not None:
            fields["session_timeout_ms"] = self.session_timeout_ms
        if rejoin and self.member_id is not None:
            fields.update(member_id=self.member_id, token=self._token, slot=self._slot,
                          generation=self.generation, owned=[list(tp) for tp in sorted(self.owned)])
        reply = self._request("group_join", **fields)
        self._sup_pid = self.cluster.supervisor_pid
        if self._region is None or reply["region"] != self._region.name \
                or reply["incarnation"] != self._incarnation:
            old = self._region
            self._region = GroupsRegion.attach(reply["region"])
            self._incarnation = self._region.incarnation
            if old is not None:
                old.close()
        self.member_id = reply["member_id"]
        self._token = reply["token"]
        self._slot = reply["slot"]
        self.generation = reply["generation"]
        self._words = self._region.words
        self._i_token = slot_index(self._slot, S_TOKEN)
        self._i_notify = slot_index(self._slot, S_NOTIFY)
        self._i_poll = slot_index(self._slot, S_POLL)
        self._words[self._i_poll] = _now()
        self._seen = None  # sync at once
        self._need_join = False
        self._due = 0

    def _sync(self) -> None:
        try:
            self._sync_rounds()
        except BaseException:
            self._seen = None  # whatever happened, tell the coordinator where we are next poll
            raise

    def _sync_rounds(self) -> None:
        offsets: Dict[TP, int] = {}
        for _round in range(16):
            seen = self._words[self._i_notify]
            reply = self._request(
                "group_sync", member_id=self.member_id, token=self._token, generation=self.generation,
                owned=[list(tp) for tp in sorted(self.owned)],
                offsets=[[t, p, o] for (t, p), o in sorted(offsets.items())])
            self._seen = seen
            self.generation = reply["generation"]
            for tp, off in offsets.items():
                self._last_committed[tp] = off
            revoke = {(t, p) for t, p in reply["revoke"]} & self.owned
            grants = {(t, p): pos for t, p, pos in reply["assign"]}
            if not revoke and not grants:
                return
            self.rebalances += 1
            # what we give up is committed as we release it (unless the
            # application committed it itself in on_revoke)
            positions = {}
            if self.consumer.enable_auto_commit:
                self.consumer.settle_positions()
                for tp in revoke:
                    a = self.consumer.assigned_state.get(tp)
                    if a is not None:
                        positions[tp] = a.returned
            self._refresh_topics(grants)
            self.owned = (self.owned - revoke) | set(grants)
            self._apply(sorted(self.owned), grants)
            offsets = {tp: o for tp, o in positions.items() if tp not in self._committed_in_revoke}
            for tp in revoke:
                self._last_committed.pop(tp, None)
            for tp, pos in grants.items():
                if pos is not None:
                    self._last_committed[tp] = pos
                # nothing committed yet: the reset point is committed by the
                # next auto-commit or on close, as Kafka does, even if nothing
                # is read; otherwise a group that read nothing would reset
                # again next time ("latest" skipping what came meanwhile)
            if not revoke:
                return
        # unreachable in practice: the coordinator never asks to revoke twice
        log.warning("group %r: sync did not settle after 16 rounds", self.group)

    def _refresh_topics(self, grants: Dict[TP, Optional[int]]) -> None:
        """Partitions added since this process mapped the topic: remap."""
        for topic in {tp[0] for tp in grants}:
            t = self.cluster.topic(topic)
            if any(p >= t.num_partitions for tt, p in grants if tt == topic):
                self.cluster.topic(topic, refresh=True)

    def _apply(self, wanted: List[TP], positions: Dict[TP, Optional[int]]) -> None:
        """Drive the consumer's assignment; callbacks run here, in this
        process. An exception from a callback is re-raised once the group
        state is consistent again."""
        c = self.consumer
        user_revoke, user_assign = c.on_revoke, c.on_assign

        def on_revoke(tps):
            self._in_revoke = True
            try:
                if user_revoke is not None:
                    user_revoke(tps)
            except BaseException as exc:  # noqa: B036 - re-raised after the protocol step
                self._user_exc = self._user_exc or exc
            finally:
                self._in_revoke = False

        def on_assign(tps):
            try:
                if user_assign is not None:
                    user_assign(tps)
            except BaseException as exc:  # noqa: B036
                self._user_exc = self._user_exc or exc

        self._committed_in_revoke = set()
        c.on_revoke, c.on_assign = on_revoke, on_assign
        try:
            c.apply_assignment(wanted, positions)
        finally:
            c.on_revoke, c.on_assign = user_revoke, user_assign
        self._watch = [[a.cursor, a.cursor.seq] for tp, a in sorted(c.assigned_state.items())
                       if a.storage == "memory"]

    def _lost(self, reason: str) -> None:
        """Our partitions went to others without us: drop them (on_revoke,
        as Kafka's default onPartitionsLost does) and commit nothing."""
        if self.owned or self.consumer.assigned_state:
            log.warning("group %r: member %s lost %d partition(s): %s", self.group, self.member_id,
                        len(self.owned), reason)
        self.owned = set()
        self._last_committed.clear()
        self._apply([], {})

    def _auto_commit(self, now: int) -> None:
        self.consumer.settle_positions()
        offsets = {}
        for tp in self.owned:
            a = self.consumer.assigned_state.get(tp)
            if a is not None and self._last_committed.get(tp) != a.returned:
                offsets[tp] = a.returned
        self._commit_due = now + self.auto_commit_ns
        for cw in self._watch:
            cw[1] = cw[0].seq
        if offsets:
            self._commit_request(offsets)

    def _commit_request(self, offsets: Dict[TP, int], rejoin: bool = True) -> None:
        for attempt in (0, 1):
            try:
                self._request("group_commit", member_id=self.member_id, token=self._token,
                              generation=self.generation,
                              offsets=[[t, p, int(o)] for (t, p), o in sorted(offsets.items())])
                break
            except errors.FencedMember:
                if not rejoin:
                    raise  # another thread's commit: the consumer's own thread decides
                # a new supervisor does not know us yet: rejoin with our
                # partitions and try once more; otherwise we really are out
                if attempt == 0 and not self._need_join and (
                        self.cluster.supervisor_pid != self._sup_pid or self._words[self._i_notify] == REJOIN):
                    self._join(rejoin=True)
                    self._sync()
                    continue
                self._need_join = True
                self._due = 0
                raise
        self._last_committed.update(offsets)

    # ------------------------------------------------------------ consumer API
    def commit(self, offsets: Dict[TP, int], rejoin: bool = True) -> None:
        """Synchronous commit; FencedMember if this member no longer owns a
        partition (it moved, or this member was removed from the group).
        rejoin=False (a commit from a thread other than the consumer's):
        a FencedMember is raised at once, without rejoining, which only the
        consumer's thread may do."""
        if self._closed:
            raise errors.Closed(f"this member of group {self.group!r} is closed")
        offsets = {(t, int(p)): int(o) for (t, p), o in offsets.items()}
        if not offsets:
            return
        if self._in_revoke:
            self._committed_in_revoke.update(offsets)
        self._commit_request(offsets, rejoin)

    def committed(self, partitions: Sequence[TP]) -> Dict[TP, Optional[int]]:
        reply = self._request("group_committed", partitions=[[t, int(p)] for t, p in partitions])
        return {(t, p): off for t, p, off in reply["offsets"]}

    def close(self) -> None:
        """Leave the group: revoke (on_revoke runs), commit what was consumed
        (auto-commit), and hand the partitions over at once."""
        if self._closed:
            return
        try:
            ours = self.member_id is not None and not self._need_join \
                and self._words[self._i_token] == self._token
            positions = {}
            if ours and self.consumer.enable_auto_commit:
                self.consumer.settle_positions()
                for tp in self.owned:
                    a = self.consumer.assigned_state.get(tp)
                    if a is not None and self._last_committed.get(tp) != a.returned:
                        positions[tp] = a.returned
            self._apply([], {})
            offsets = {tp: o for tp, o in positions.items() if tp not in self._committed_in_revoke}
            self.owned = set()
            # after a clean supervisor shutdown ("bye") there is nobody to
            # leave, and asking would start a new supervisor
            if ours and not getattr(self.cluster, "_clean_bye", False):
                self._request("group_leave", member_id=self.member_id, token=self._token,
                              offsets=[[t, p, o] for (t, p), o in sorted(offsets.items())])
        except errors.ShmlogError as exc:
            log.warning("group %r: member %s could not leave cleanly (%s); the coordinator will "
                        "time it out", self.group, self.member_id, exc)
        finally:
            self._closed = True
            self._words = memoryview(bytearray(REGION_BYTES)).cast("Q")
            self._watch = []
            if self._region is not None:
                self._region.close()
                self._region = None
        exc2, self._user_exc = self._user_exc, None
        if exc2 is not None:
            raise exc2

    def __repr__(self) -> str:
        return (f"<GroupMember {self.member_id} of {self.group!r} generation {self.generation}, "
                f"{len(self.owned)} partition(s)>")


