"""Partition assignors of consumer groups: "range", "roundrobin", "sticky".

An assignor is a pure function run by the group coordinator (shmlog.groups)
at every rebalance:

    assign(subscriptions, partitions, current) -> {member_id: [(topic, p), ...]}

* subscriptions: member_id -> the topics that member subscribes to;
* partitions:    topic -> partition count (topics that exist);
* current:       member_id -> the partitions it owns now (only "sticky" looks).

Every partition of a subscribed topic goes to exactly one member subscribed
to its topic; the result is deterministic (members in member_id order). The
coordinator, not the assignor, makes rebalancing cooperative: a partition
changes hands only after its old owner revoked it, so an assignor only says
where partitions should end up. "sticky" moves as few partitions as balance
allows, so only the partitions that move are ever revoked.

This module must stay pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ..config import ASSIGNOR_NAMES, DEFAULT_ASSIGNOR, validate_assignor

TP = Tuple[str, int]
Subscriptions = Mapping[str, Sequence[str]]
Assignment = Dict[str, List[TP]]
Assignor = Callable[[Subscriptions, Mapping[str, int], Optional[Mapping[str, Iterable[TP]]]], Assignment]


def _all_partitions(subscriptions: Subscriptions, partitions: Mapping[str, int]) -> List[TP]:
    topics = sorted({t for ts in subscriptions.values() for t in ts if partitions.get(t, 0) > 0})
    return [(t, p) for t in topics for p in range(partitions[t])]


def range_assign(subscriptions: Subscriptions, partitions: Mapping[str, int],
                 current: Optional[Mapping[str, Iterable[TP]]] = None) -> Assignment:
    """Kafka's RangeAssignor: per topic, contiguous runs to the subscribed
    members in member_id order, the first (count % members) one longer.
    Balanced within one per topic (not across topics)."""
    out: Assignment = {m: [] for m in subscriptions}
    topics = sorted({t for ts in subscriptions.values() for t in ts})
    for t in topics:
        n = partitions.get(t, 0)
        members = sorted(m for m, ts in subscriptions.items() if t in ts)
        if n <= 0 or not members:
            continue
        each, extra = divmod(n, len(members))
        start = 0
        for i, m in enumerate(members):
            k = each + (1 if i < extra else 0)
            out[m].extend((t, p) for p in range(start, start + k))
            start += k
    return out


def roundrobin_assign(subscriptions: Subscriptions, partitions: Mapping[str, int],
                      current: Optional[Mapping[str, Iterable[TP]]] = None) -> Assignment:
    """Kafka's RoundRobinAssignor: all partitions in (topic, partition) order,
    dealt to the members in member_id order, skipping members not subscribed
    to the partition's topic. Balanced within one when subscriptions are equal."""
    out: Assignment = {m: [] for m in subscriptions}
    members = sorted(subscriptions)
    if not members:
        return out
    subs = {m: set(subscriptions[m]) for m in members}
    i = 0
    for tp in _all_partitions(subscriptions, partitions):
        for k in range(len(members)):
            m = members[(i + k) % len(members)]
            if tp[0] in subs[m]:
                out[m].append(tp)
                i = (i + k + 1) % len(members)
                break
    return out


def sticky_assign(subscriptions: Subscriptions, partitions: Mapping[str, int],
                  current: Optional[Mapping[str, Iterable[TP]]] = None) -> Assignment:
    """Kafka's (cooperative) StickyAssignor: as balanced as the subscriptions
    allow, moving as few currently owned partitions as possible.

    1. Every member keeps what it owns that is still valid (the partition
       exists, the member subscribes to its topic, nobody earlier claims it).
    2. Unowned partitions go, one by one, to the least loaded eligible member.
    3. While some member has at least two more than another member that could
       take one of its partitions, move one (from the most to the least loaded).

    With equal subscriptions this ends balanced within one, and every move is
    forced: a member only gives up partitions beyond its final share, and the
    larger shares go to the members that owned the most. Several members
    claiming one partition can only come from a stale claim; the first in
    member_id order keeps it."""
    members = sorted(subscriptions)
    out: Dict[str, List[TP]] = {m: [] for m in members}
    if not members:
        return {}
    subs: Dict[str, Set[str]] = {m: set(subscriptions[m]) for m in members}
    universe = _all_partitions(subscriptions, partitions)
    valid = set(universe)
    owner: Dict[TP, str] = {}
    current = current or {}
    for m in members:
        for tp in sorted(current.get(m, ())):
            tp = (tp[0], int(tp[1]))
            if tp in valid and tp[0] in subs[m] and tp not in owner:
                owner[tp] = m
                out[m].append(tp)
    eligible: Dict[str, List[str]] = {}
    for t in {tp[0] for tp in universe}:
        eligible[t] = [m for m in members if t in subs[m]]
    # 2. unowned partitions to the least loaded eligible member
    for tp in universe:
        if tp in owner:
            continue
        cands = eligible[tp[0]]
        m = min(cands, key=lambda c: (len(out[c]), c))
        owner[tp] = m
        out[m].append(tp)
    # 3. balance by single moves from the most to the least loaded
    homogeneous = all(subs[m] == subs[members[0]] for m in members)
    while True:
        moved = _move_one(out, subs, homogeneous)
        if not moved:
            break
    return {m: sorted(tps) for m, tps in out.items()}


def _move_one(out: Dict[str, List[TP]], subs: Dict[str, Set[str]], homogeneous: bool) -> bool:
    """Move one partition from an overloaded member to one with >= 2 fewer
    that can take it; False when no such move exists."""
    order = sorted(out, key=lambda m: (-len(out[m]), m))
    if homogeneous:
        hi, lo = order[0], order[-1]
        if len(out[hi]) - len(out[lo]) < 2:
            return False
        # give away the partition that was placed last (highest in order):
        # deterministic, and never one this member owned longer than another
        tp = out[hi].pop()
        out[lo].append(tp)
        return True
    for hi in order:
        for lo in reversed(order):
            if len(out[hi]) - len(out[lo]) < 2:
                break
            for i in range(len(out[hi]) - 1, -1, -1):
                if out[hi][i][0] in subs[lo]:
                    out[lo].append(out[hi].pop(i))
                    return True
    return False


ASSIGNORS: Dict[str, Assignor] = {
    "range": range_assign,
    "roundrobin": roundrobin_assign,
    "sticky": sticky_assign,
}

DEFAULT = DEFAULT_ASSIGNOR
assert set(ASSIGNORS) == set(ASSIGNOR_NAMES), "config.ASSIGNOR_NAMES must list every assignor"


def get(name: str) -> Assignor:
    """The assignor called `name`, or InvalidConfig listing the known ones."""
    return ASSIGNORS[validate_assignor(name)]


def moves(before: Mapping[str, Iterable[TP]], after: Mapping[str, Iterable[TP]]) -> Set[TP]:
    """Partitions owned in `before` whose owner differs in `after` (or that
    lost their owner): what a cooperative rebalance has to revoke."""
    was = {tp: m for m, tps in before.items() for tp in tps}
    now = {tp: m for m, tps in after.items() for tp in tps}
    return {tp for tp, m in was.items() if now.get(tp) != m}


__all__ = ["ASSIGNORS", "DEFAULT", "get", "moves", "range_assign", "roundrobin_assign", "sticky_assign"]
