"""Assignors (shmlog.broker.assignors): every partition exactly once, to a member
subscribed to its topic; balanced within one; sticky moves the minimum."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmlog.broker import assignors
from shmlog.errors import InvalidConfig

NAMES = ["range", "roundrobin", "sticky"]

topics_st = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 37), min_size=1, max_size=4)


@st.composite
def groups(draw, homogeneous=False):
    parts = draw(topics_st)
    names = sorted(parts)
    n = draw(st.integers(1, 9))
    members = [f"m{i:02d}" for i in draw(st.lists(st.integers(0, 99), min_size=n, max_size=n, unique=True))]
    if homogeneous:
        subs = {m: list(names) for m in members}
    else:
        subs = {m: draw(st.lists(st.sampled_from(names + ["ghost"]), min_size=1, unique=True)) for m in members}
    return subs, parts


@st.composite
def ownership(draw, subs, parts):
    """Some current ownership: possibly stale, overlapping or out of range."""
    tps = [(t, p) for t, n in parts.items() for p in range(n + 2)]
    return {m: draw(st.lists(st.sampled_from(tps), max_size=12)) for m in subs}


def _check_exactly_once(subs, parts, out):
    assert set(out) == set(subs)
    owners = Counter(tp for tps in out.values() for tp in tps)
    subscribed = {t for ts in subs.values() for t in ts if t in parts}
    want = {(t, p) for t in subscribed for p in range(parts[t])}
    assert set(owners) == want
    assert all(c == 1 for c in owners.values())
    for m, tps in out.items():
        assert all(t in subs[m] for t, _ in tps)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_partition_exactly_once(name, data):
    subs, parts = data.draw(groups())
    current = data.draw(ownership(subs, parts))
    out = assignors.get(name)(subs, parts, current)
    _check_exactly_once(subs, parts, out)
    assert out == assignors.get(name)(subs, parts, current)  # deterministic


@pytest.mark.parametrize("name", ["roundrobin", "sticky"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_balanced_within_one(name, data):
    subs, parts = data.draw(groups(homogeneous=True))
    current = data.draw(ownership(subs, parts))
    out = assignors.get(name)(subs, parts, current)
    sizes = [len(v) for v in out.values()]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_range_balanced_within_one_per_topic(data):
    subs, parts = data.draw(groups(homogeneous=True))
    out = assignors.range_assign(subs, parts)
    for t in parts:
        sizes = [sum(1 for tt, _ in tps if tt == t) for tps in out.values()]
        assert max(sizes) - min(sizes) <= 1


def _min_moves(current_valid, total, members):
    """Fewest partitions that must change owner for a within-one balance:
    the larger shares go to the members that own the most."""
    floor, extra = divmod(total, len(members))
    owned = sorted((len(current_valid.get(m, ())) for m in members), reverse=True)
    return sum(max(0, k - (floor + (1 if i < extra else 0))) for i, k in enumerate(owned))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_sticky_moves_the_minimum(data):
    subs, parts = data.draw(groups(homogeneous=True))
    members = sorted(subs)
    universe = [(t, p) for t in sorted(parts) for p in range(parts[t])]
    # a valid current ownership: some partitions owned (by one member), some not
    owner = {tp: data.draw(st.sampled_from(members + [None])) for tp in universe}
    current = {m: [tp for tp, o in owner.items() if o == m] for m in members}
    out = assignors.sticky_assign(subs, parts, current)
    _check_exactly_once(subs, parts, out)
    moved = assignors.moves(current, out)
    assert len(moved) == _min_moves(current, len(universe), members)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_sticky_stable_and_no_move_possible(data):
    subs, parts = data.draw(groups())
    current = data.draw(ownership(subs, parts))
    out = assignors.sticky_assign(subs, parts, current)
    # a second run over its own result moves nothing
    assert assignors.sticky_assign(subs, parts, out) == out
    # heterogeneous subscriptions: no member could take a partition from one
    # that has two more
    for hi, a in out.items():
        for lo, b in out.items():
            if len(a) >= len(b) + 2:
                assert not any(t in subs[lo] for t, _ in a), (hi, lo)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_sticky_member_join_and_leave(data):
    """A join moves partitions only to the newcomer; a leave moves only the
    leaver's partitions."""
    subs, parts = data.draw(groups(homogeneous=True))
    before = assignors.sticky_assign(subs, parts, {})
    new = "zz-new"
    subs2 = {**subs, new: next(iter(subs.values()))}
    after = assignors.sticky_assign(subs2, parts, before)
    for tp in assignors.moves(before, after):
        assert tp in after[new]
    if len(subs) > 1:
        gone = sorted(subs)[0]
        subs3 = {m: ts for m, ts in subs.items() if m != gone}
        cur = {m: tps for m, tps in before.items() if m != gone}
        after3 = assignors.sticky_assign(subs3, parts, cur)
        assert assignors.moves(cur, after3) == set()


def test_examples():
    subs = {"a": ["t"], "b": ["t"], "c": ["t"]}
    assert assignors.range_assign(subs, {"t": 7}) == {
        "a": [("t", 0), ("t", 1), ("t", 2)], "b": [("t", 3), ("t", 4)], "c": [("t", 5), ("t", 6)]}
    assert assignors.roundrobin_assign(subs, {"t": 4}) == {
        "a": [("t", 0), ("t", 3)], "b": [("t", 1)], "c": [("t", 2)]}
    # 3 members on 6 partitions, one leaves: only its two partitions move
    cur = {"a": [("t", 0), ("t", 1)], "b": [("t", 2), ("t", 3)]}
    out = assignors.sticky_assign({"a": ["t"], "b": ["t"]}, {"t": 6}, cur)
    assert set(cur["a"]) <= set(out["a"]) and set(cur["b"]) <= set(out["b"])
    # partition growth: new partitions go to the least loaded, nothing moves
    out2 = assignors.sticky_assign({"a": ["t"], "b": ["t"]}, {"t": 8}, out)
    assert assignors.moves(out, out2) == set()
    assert sorted(len(v) for v in out2.values()) == [4, 4]
    assert assignors.sticky_assign({}, {"t": 3}, {}) == {}


def test_unknown_assignor():
    with pytest.raises(InvalidConfig, match="roundrobin"):
        assignors.get("cooperative-sticky")
