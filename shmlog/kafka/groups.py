"""Kafka consumer groups on shmlog's coordinator.

shmlog's coordinator assigns partitions itself (cooperative: a partition is
granted only once its old owner released it). Each Kafka member is one
shmlog membership held by this listener: JoinGroup joins (group_join), the
Kafka "leader" is told only about itself (its assignment is ignored; clients
are content), and SyncGroup answers every member with what the coordinator
granted it, as ConsumerProtocolAssignment v0. When the coordinator asks a
member to give something up or offers it more, that member's next Heartbeat
gets REBALANCE_IN_PROGRESS: an eager client then commits, drops everything
and rejoins, and only at its SyncGroup does the listener report the
partitions released. Kafka heartbeats are the member's polls (the slot's poll
word), so a silent Kafka client times out like a silent shmlog member.
Offsets are the coordinator's, so `shmlog groups describe` shows them and a
kafka-python member and a shmlog member share one group.

Runs in the listener's control thread only.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from .. import errors
from ..config import MAX_SESSION_MS, MIN_SESSION_MS, validate_group_name
from ..core.groups_region import REJOIN, S_NOTIFY, S_POLL, S_TOKEN, GroupsRegion, slot_index
from . import protocol as P
from .wire import assignment, subscription_owned, subscription_topics

TP = Tuple[str, int]
# protocols that revoke everything before rejoining, preferred when offered:
# the bridge releases partitions at SyncGroup, which is right for them
EAGER = ("range", "roundrobin", "roundrobin ")


def valid_group(name) -> bool:
    """shmlog's group name rule (Kafka's is looser): others get INVALID_GROUP_ID."""
    try:
        validate_group_name(name)
        return True
    except errors.InvalidConfig:
        return False


class KafkaMember:
    def __init__(self, group: str, client_id: str, topics: List[str], session_ms: int, protocol: str,
                 metadata: bytes):
        self.group = group
        self.client_id = client_id
        self.topics = topics
        self.session_ms = session_ms
        self.protocol = protocol
        self.metadata = metadata
        self.member_id = ""
        self.token = 0
        self.slot = -1
        self.generation = 0  # shmlog's
        self.kgen = 0  # the generation id the Kafka client sees
        self.owned: Set[TP] = set()
        self.pending_revoke: Set[TP] = set()
        # what the client said it owns at its last JoinGroup (cooperative
        # subscriptions carry it; None when the client did not say)
        self.client_owned: Optional[Set[TP]] = None
        self.rebalance = True  # until its first SyncGroup
        self.seen: Optional[int] = None

    @property
    def eager(self) -> bool:
        """Does the client drop everything before it rejoins? Cooperative
        clients keep reading what they own through JoinGroup and SyncGroup,
        and give up a partition only once a SyncGroup left it out; without
        the owned partitions in its subscription we cannot tell when."""
        return self.protocol in EAGER or self.client_owned is None


class GroupBridge:
    def __init__(self, state):
        self.state = state
        self.members: Dict[Tuple[str, str], KafkaMember] = {}
        self.region: Optional[GroupsRegion] = None
        self._region_key: Tuple[str, int] = ("", 0)

    # ------------------------------------------------------------ plumbing
    def _request(self, op: str, **fields: Any) -> Dict[str, Any]:
        return self.state.cluster.request(op, **fields)

    def _attach(self, reply: Dict[str, Any]) -> None:
        key = (reply["region"], reply["incarnation"])
        if self.region is None or key != self._region_key:
            old = self.region
            self.region = GroupsRegion.attach(reply["region"])
            self._region_key = key
            if old is not None:
                old.close()

    def _word(self, m: KafkaMember, which: int) -> int:
        return self.region.words[slot_index(m.slot, which)]

    def _alive(self, m: KafkaMember) -> bool:
        return self.region is not None and m.slot >= 0 and self._word(m, S_TOKEN) == m.token

    def _touch(self, m: KafkaMember) -> None:
        if self._alive(m):
            self.region.words[slot_index(m.slot, S_POLL)] = time.monotonic_ns()

    def _adopt(self, m: KafkaMember, reply: Dict[str, Any]) -> None:
        self._attach(reply)
        m.member_id = reply["member_id"]
        m.token = reply["token"]
        m.slot = reply["slot"]
        m.generation = reply["generation"]
        self._touch(m)

    def _join(self, m: KafkaMember, rejoin: bool) -> None:
        fields: Dict[str, Any] = {"group": m.group, "topics": m.topics, "pid": os.getpid(),
                                  "client_id": m.client_id, "session_timeout_ms": m.session_ms}
        if rejoin:
            fields.update(member_id=m.member_id, token=m.token, slot=m.slot, generation=m.generation,
                          owned=[list(tp) for tp in sorted(m.owned)])
        self._adopt(m, self._request("group_join", **fields))

    def _sync(self, m: KafkaMember) -> Tuple[Set[TP], Set[TP]]:
        """One group_sync reporting m.owned; returns (revoke, grants)."""
        if self.region is not None and self._word(m, S_NOTIFY) == REJOIN:
            self._join(m, rejoin=True)
        m.seen = self._word(m, S_NOTIFY)
        reply = self._request("group_sync", group=m.group, member_id=m.member_id, token=m.token,
                              generation=m.generation, owned=[list(tp) for tp in sorted(m.owned)],
                              offsets=[])
        m.generation = reply["generation"]
        revoke = {(t, p) for t, p in reply["revoke"]} & m.owned
        grants = {(t, p) for t, p, _pos in reply["assign"]}
        return revoke, grants

    def _member(self, group: str, member_id: str) -> Optional[KafkaMember]:
        m = self.members.get((group, member_id))
        if m is not None and not self._alive(m):
            # the coordinator removed it (session timeout, or its supervisor
            # restarted and it missed the rejoin): the client must join anew
            del self.members[(group, member_id)]
            return None
        return m

    # ------------------------------------------------------------ APIs
    def join_group(self, req, version: int, client_id: str) -> Dict[str, Any]:
        base = {"throttle_time": 0, "generation_id": -1, "protocol_name": "", "leader": "",
                "member_id": req.member_id, "members": []}
        if not valid_group(req.group_id):
            return {**base, "error_code": P.INVALID_GROUP_ID}
        if req.protocol_type != "consumer" or not req.protocols:
            return {**base, "error_code": 23}  # INCONSISTENT_GROUP_PROTOCOL
        session_ms = P.ms(req.session_timeout)
        if not MIN_SESSION_MS <= session_ms <= MAX_SESSION_MS:
            return {**base, "error_code": P.INVALID_SESSION_TIMEOUT}
        names = [p.name for p in req.protocols]
        chosen = next((p for p in req.protocols if p.name in EAGER), req.protocols[0])
        try:
            topics = sorted(set(subscription_topics(chosen.metadata)))
            claimed = subscription_owned(chosen.metadata)
        except P.MalformedRequest:
            return {**base, "error_code": 23}
        if not topics:
            return {**base, "error_code": 23}
        m = None
        if req.member_id:
            m = self._member(req.group_id, req.member_id)
            if m is None:
                return {**base, "error_code": P.UNKNOWN_MEMBER_ID}
            if m.topics != topics:
                # a new subscription: leave and join as a new member
                self._leave(m)
                m = None
        try:
            if m is None:
                m = KafkaMember(req.group_id, client_id or "kafka", topics, session_ms, chosen.name,
                                bytes(chosen.metadata))
                self._join(m, rejoin=False)
                self.members[(m.group, m.member_id)] = m
            else:
                self._touch(m)
                m.protocol = chosen.name if chosen.name in names else m.protocol
                m.metadata = bytes(chosen.metadata)
            m.client_owned = None if claimed is None else set(claimed)
        except errors.ShmlogError as exc:  # an invalid topic name, the coordinator away, ...
            self.state.log.warning("join of group %r failed: %s", req.group_id, exc)
            return {**base, "error_code": P.COORDINATOR_NOT_AVAILABLE}
        m.kgen += 1
        m.rebalance = True
        return {"throttle_time": 0, "error_code": P.NONE, "generation_id": m.kgen,
                "protocol_name": m.protocol, "leader": m.member_id, "member_id": m.member_id,
                "members": [{"member_id": m.member_id, "group_instance_id": None, "metadata": m.metadata}]}

    def sync_group(self, req, version: int) -> Dict[str, Any]:
        m = self._member(req.group_id, req.member_id)
        if m is None:
            return {"throttle_time": 0, "error_code": P.UNKNOWN_MEMBER_ID, "assignment": b""}
        if req.generation_id != m.kgen:
            return {"throttle_time": 0, "error_code": P.ILLEGAL_GENERATION, "assignment": b""}
        # an eager client dropped everything before it rejoined: what the
        # coordinator asked back is released now. A cooperative one still
        # reads what it owns: only what it left out of its JoinGroup is
        # released; the rest it learns of from this SyncGroup (left out of
        # its assignment), gives up, then rejoins without it.
        released = m.pending_revoke if m.eager else m.pending_revoke - m.client_owned
        m.owned -= released
        m.pending_revoke -= released
        try:
            for _round in range(16):
                revoke, grants = self._sync(m)
                m.owned |= grants
                if m.eager:
                    m.owned -= revoke
                    if not revoke and not grants:
                        break
                else:
                    new = revoke - m.pending_revoke
                    m.pending_revoke |= revoke
                    if not new and not grants:
                        break
        except errors.FencedMember:
            self.members.pop((m.group, m.member_id), None)
            return {"throttle_time": 0, "error_code": P.UNKNOWN_MEMBER_ID, "assignment": b""}
        except errors.ShmlogError as exc:
            self.state.log.warning("sync of group %r failed: %s", m.group, exc)
            return {"throttle_time": 0, "error_code": P.REBALANCE_IN_PROGRESS, "assignment": b""}
        m.rebalance = False
        self._touch(m)
        return {"throttle_time": 0, "error_code": P.NONE, "assignment": assignment(m.owned - m.pending_revoke)}

    def heartbeat(self, req, version: int) -> Dict[str, Any]:
        m = self._member(req.group_id, req.member_id)
        if m is None:
            return {"throttle_time": 0, "error_code": P.UNKNOWN_MEMBER_ID}
        if req.generation_id != m.kgen:
            return {"throttle_time": 0, "error_code": P.ILLEGAL_GENERATION}
        self._touch(m)
        if not m.rebalance and self._word(m, S_NOTIFY) != m.seen:
            try:
                revoke, grants = self._sync(m)
            except errors.FencedMember:
                self.members.pop((m.group, m.member_id), None)
                return {"throttle_time": 0, "error_code": P.UNKNOWN_MEMBER_ID}
            except errors.ShmlogError:
                return {"throttle_time": 0, "error_code": P.NONE}  # try again next heartbeat
            # grants are ours from now on (nobody else reads them); revokes
            # are reported released only once the client rejoined
            m.owned |= grants
            m.pending_revoke |= revoke
            if revoke or grants:
                m.rebalance = True
        code = P.REBALANCE_IN_PROGRESS if m.rebalance else P.NONE
        return {"throttle_time": 0, "error_code": code}

    def _leave(self, m: KafkaMember) -> None:
        self.members.pop((m.group, m.member_id), None)
        if not self._alive(m):
            return
        try:
            self._request("group_leave", group=m.group, member_id=m.member_id, token=m.token, offsets=[])
        except errors.ShmlogError as exc:
            self.state.log.warning("leave of group %r failed: %s", m.group, exc)

    def leave_group(self, req, version: int) -> Dict[str, Any]:
        ids = [req.member_id] if version < 3 else [x.member_id for x in req.members or ()]
        out = []
        for mid in ids:
            m = self.members.get((req.group_id, mid))
            code = P.UNKNOWN_MEMBER_ID if m is None else P.NONE
            if m is not None:
                self._leave(m)
            out.append({"member_id": mid, "group_instance_id": None, "error_code": code})
        top = out[0]["error_code"] if version < 3 and out else P.NONE
        return {"throttle_time": 0, "error_code": top, "members": out}

    def offset_commit(self, req, version: int) -> Dict[str, Any]:
        gen = getattr(req, "generation_id_or_member_epoch", getattr(req, "generation_id", -1))
        m = self._member(req.group_id, req.member_id) if req.member_id else None
        offsets = [(t.name, p.partition_index, p.committed_offset) for t in req.topics or () for p in t.partitions or ()]
        code = P.NONE
        if not valid_group(req.group_id):
            code = P.INVALID_GROUP_ID
        elif m is None:
            code = self._commit_outside(req.group_id, req.member_id, gen, offsets)
            if isinstance(code, dict):
                return self._commit_reply(req, lambda t, p: code.get((t, p), P.NONE))
        elif gen != m.kgen:
            code = P.ILLEGAL_GENERATION
        else:
            self._touch(m)
            mine = m.owned | m.pending_revoke
            ok = [[t, p, o] for t, p, o in offsets if (t, p) in mine and o >= 0]
            try:
                if ok:
                    self._request("group_commit", group=m.group, member_id=m.member_id, token=m.token,
                                  generation=m.generation, offsets=ok)
            except errors.FencedMember:
                code = P.REBALANCE_IN_PROGRESS
            except errors.ShmlogError as exc:
                self.state.log.warning("commit to group %r failed: %s", m.group, exc)
                code = P.COORDINATOR_NOT_AVAILABLE
            if not code and len(ok) != len(offsets):
                bad = {(t, p) for t, p, _o in offsets} - {(t, p) for t, p, _o in ok}
                return self._commit_reply(req, lambda t, p: P.ILLEGAL_GENERATION if (t, p) in bad else P.NONE)
        return self._commit_reply(req, lambda t, p: code)

    def _commit_outside(self, group: str, member_id: str, gen: int, offsets):
        """OffsetCommit from no member of this listener, answered as Kafka's
        coordinator does (ClassicGroup.validateOffsetCommit): generation < 0
        (assign() + commit: librdkafka, kafka-python, aiokafka) commits
        while the group has no members; with members it is UNKNOWN_MEMBER_ID.
        A generation >= 0 names a membership: UNKNOWN_MEMBER_ID if the group
        exists, ILLEGAL_GENERATION if it does not. Returns an error code for
        every partition, or a dict of codes per partition."""
        if gen >= 0:
            try:
                self._request("describe_group", group=group)
            except errors.GroupError:
                return P.ILLEGAL_GENERATION
            except errors.ShmlogError:
                return P.COORDINATOR_NOT_AVAILABLE
            return P.UNKNOWN_MEMBER_ID
        ok = [[t, p, o] for t, p, o in offsets if o >= 0]
        if not ok:
            return P.NONE
        try:
            self._request("group_commit", group=group, offsets=ok)
        except errors.FencedMember:
            return P.UNKNOWN_MEMBER_ID
        except (errors.UnknownTopic, errors.UnknownPartition):
            return self._commit_per_partition(group, ok)
        except errors.ShmlogError as exc:
            self.state.log.warning("commit to group %r from outside it failed: %s", group, exc)
            return P.COORDINATOR_NOT_AVAILABLE
        return P.NONE

    def _commit_per_partition(self, group: str, ok) -> Dict[TP, int]:
        """One commit per partition, so that a partition Kafka's client
        names but shmlog does not have fails alone."""
        codes: Dict[TP, int] = {}
        for t, p, o in ok:
            try:
                self._request("group_commit", group=group, offsets=[[t, p, o]])
                codes[(t, p)] = P.NONE
            except (errors.UnknownTopic, errors.UnknownPartition):
                codes[(t, p)] = P.UNKNOWN_TOPIC_OR_PARTITION
            except errors.FencedMember:
                codes[(t, p)] = P.UNKNOWN_MEMBER_ID
            except errors.ShmlogError:
                codes[(t, p)] = P.COORDINATOR_NOT_AVAILABLE
        return codes

    @staticmethod
    def _commit_reply(req, code_of) -> Dict[str, Any]:
        return {"throttle_time": 0, "topics": [
            {"name": t.name, "partitions": [{"partition_index": p.partition_index,
                                             "error_code": code_of(t.name, p.partition_index)}
                                            for p in t.partitions or ()]} for t in req.topics or ()]}

    def offset_fetch(self, req, version: int) -> Dict[str, Any]:
        if not valid_group(req.group_id):
            return {"throttle_time": 0, "error_code": P.INVALID_GROUP_ID, "topics": []}
        if req.topics is None:
            try:
                d = self._request("describe_group", group=req.group_id)["group"]
                tps = [(x["topic"], x["partition"]) for x in d["partitions"] if x["committed"] is not None]
            except errors.ShmlogError:
                tps = []
        else:
            tps = [(t.name, p) for t in req.topics for p in t.partition_indexes or ()]
        committed: Dict[TP, Optional[int]] = {}
        code = P.NONE
        if tps:
            try:
                reply = self._request("group_committed", group=req.group_id,
                                      partitions=[[t, p] for t, p in tps])
                committed = {(t, p): off for t, p, off in reply["offsets"]}
            except errors.ShmlogError:
                code = P.COORDINATOR_NOT_AVAILABLE
        topics: Dict[str, list] = {}
        for t, p in tps:
            off = committed.get((t, p))
            topics.setdefault(t, []).append({
                "partition_index": p, "committed_offset": -1 if off is None else off,
                "committed_leader_epoch": -1, "metadata": "", "error_code": P.NONE})
        return {"throttle_time": 0, "error_code": code,
                "topics": [{"name": t, "partitions": ps} for t, ps in topics.items()]}

    def describe_groups(self, req, version: int) -> Dict[str, Any]:
        out = []
        for g in req.groups or ():
            if not valid_group(g):
                out.append({"error_code": P.INVALID_GROUP_ID, "group_id": g, "group_state": "Dead",
                            "protocol_type": "", "protocol_data": "", "members": []})
                continue
            try:
                d = self._request("describe_group", group=g)["group"]
            except errors.ShmlogError:
                out.append({"error_code": P.NONE, "group_id": g, "group_state": "Dead", "protocol_type": "",
                            "protocol_data": "", "members": []})
                continue
            members = []
            for mm in d["members"]:
                km = self.members.get((g, mm["member_id"]))
                members.append({"member_id": mm["member_id"], "group_instance_id": None,
                                "client_id": mm["client_id"], "client_host": "/127.0.0.1",
                                "member_metadata": km.metadata if km else b"",
                                "member_assignment": assignment([tuple(x) for x in mm["assignment"]])})
            state = "Stable" if members else "Empty"
            out.append({"error_code": P.NONE, "group_id": g, "group_state": state, "protocol_type": "consumer",
                        "protocol_data": d.get("assignor") or "", "members": members})
        return {"throttle_time": 0, "groups": out}

    def list_groups(self, req, version: int) -> Dict[str, Any]:
        try:
            groups = self._request("groups")["groups"]
        except errors.ShmlogError:
            return {"throttle_time": 0, "error_code": P.COORDINATOR_NOT_AVAILABLE, "groups": []}
        return {"throttle_time": 0, "error_code": P.NONE,
                "groups": [{"group_id": g, "protocol_type": "consumer"} for g in sorted(groups)]}

    def close(self) -> None:
        for m in list(self.members.values()):
            self._leave(m)
        if self.region is not None:
            self.region.close()
            self.region = None
