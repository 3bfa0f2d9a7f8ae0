"""Consumer groups (shmlog.broker.coordinator, shmlog.client.member): the coordinator in the supervisor and the
member in each consumer.

The fault tests run members as real forked processes that log every event
(join, assign, revoke, each batch, each commit, leave) with os.write to
their own O_APPEND file, so the log survives the member being SIGKILLed.
From those logs the tests check the invariants: a partition is never owned
by two members at once (ownership intervals from on_assign/on_revoke times,
CLOCK_MONOTONIC being one clock for every process), every message is
processed, and duplicates come only from a killed member's uncommitted range.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import stat
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import psutil
import pytest

import shmlog
from shmlog import errors
from shmlog.broker import offsets as offsets_mod
from shmlog.broker.offsets import OffsetStore
from shmlog.client import member as member_mod
from shmlog.core import groups_region as groups

FORK = multiprocessing.get_context("fork")
MEM = {"storage": "memory", "chunk_bytes": 1 << 20, "chunk_count": 4}
now = time.monotonic_ns


# ---------------------------------------------------------------- member process
def _fmt(tps) -> str:
    return ",".join(f"{t}:{p}" for t, p in sorted(tps)) or "-"


def _member_main(data_dir: str, topics, group: str, path: str, stop, opts: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def rec(*fields) -> None:
        os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())

    try:
        opts = dict(opts)
        manual = opts.pop("manual_commit_every", 0)
        delay = opts.pop("delay", 0.0)
        max_messages = opts.pop("max_messages", 500)
        c = shmlog.connect(data_dir)
        holder = {}

        def on_assign(tps):
            rec("A", now(), _fmt(tps))

        def on_revoke(tps):
            rec("R", now(), _fmt(tps))
            if manual:  # Kafka's pattern: commit what you give up
                k = holder["k"]
                offs = {tp: k.position(*tp) for tp in tps}
                k.commit(offsets=offs)
                for (t, p), o in offs.items():
                    rec("C", t, p, o)

        k = c.consumer(topics, group=group, on_assign=on_assign, on_revoke=on_revoke,
                       enable_auto_commit=not manual, **opts)
        holder["k"] = k
        rec("J", now(), k._member.member_id)
        batches = 0
        while not stop.is_set():
            b = k.consume_batch(max_messages=max_messages, timeout=0.05)
            if b is None:
                continue
            offs = b.offsets
            rec("M", b.topic, b.partition, offs[0], offs[-1], len(offs))
            batches += 1
            if manual and batches % manual == 0:
                k.commit()
                for t, p in k.assignment():
                    rec("C", t, p, k.position(t, p))
            if delay:
                time.sleep(delay)
        rec("X", now())
        k.close()
        rec("Z", now())
        c.close()
    except BaseException:
        rec("E", json.dumps(traceback.format_exc()))
    finally:
        os._exit(0)


def _producer_main(data_dir: str, topic: str, n: int, batch: int, pause: float) -> None:
    try:
        c = shmlog.connect(data_dir)
        p = c.producer()
        sent = 0
        i = 0
        while sent < n:
            k = min(batch, n - sent)
            p.send_batch(topic, [b"v%d" % (sent + j) for j in range(k)])
            sent += k
            i += 1
            if pause and i % 4 == 0:
                p.flush()
                time.sleep(pause)
        p.flush()
        p.close()
        c.close()
    finally:
        os._exit(0)


class Member:
    def __init__(self, tmp: Path, data_dir, topics, group: str, name: str, **opts):
        self.name = name
        self.path = tmp / f"{name}.log"
        self.stop_evt = FORK.Event()
        self.killed_at: Optional[int] = None
        self.proc = FORK.Process(target=_member_main,
                                 args=(str(data_dir), topics, group, str(self.path), self.stop_evt, opts),
                                 daemon=True)
        self.proc.start()

    def stop(self) -> None:
        self.stop_evt.set()

    def kill(self) -> int:
        self.killed_at = now()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(5)
        return self.killed_at

    def join(self, timeout: float = 20) -> None:
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
            raise AssertionError(f"member {self.name} did not stop")

    def log(self) -> MemberLog:
        return MemberLog(self)


class MemberLog:
    def __init__(self, m: Member):
        self.name = m.name
        self.events: List[Tuple] = []
        self.batches: List[Tuple[str, int, int, int, int]] = []
        self.commits: Dict[Tuple[str, int], int] = {}
        self.errors: List[str] = []
        try:
            text = m.path.read_text()
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            f = line.split(" ")
            kind = f[0]
            if kind in ("A", "R"):
                tps = [] if f[2] == "-" else [(x.rsplit(":", 1)[0], int(x.rsplit(":", 1)[1]))
                                              for x in f[2].split(",")]
                self.events.append((kind, int(f[1]), tps))
            elif kind in ("J", "X", "Z"):
                self.events.append((kind, int(f[1]), []))
            elif kind == "M":
                self.batches.append((f[1], int(f[2]), int(f[3]), int(f[4]), int(f[5])))
            elif kind == "C":
                self.commits[(f[1], int(f[2]))] = int(f[3])
            elif kind == "E":
                self.errors.append(json.loads(line[2:]))
        self.killed_at = m.killed_at

    def intervals(self) -> List[Tuple[Tuple[str, int], int, int, str, str]]:
        """(tp, start, end, member, how it ended: revoke|close|kill|open)."""
        out = []
        open_: Dict[Tuple[str, int], int] = {}
        closing = False
        for kind, ts, tps in self.events:
            if kind == "X":
                closing = True
            elif kind == "A":
                for tp in tps:
                    assert tp not in open_, f"{self.name}: {tp} assigned twice"
                    open_[tp] = ts
            elif kind == "R":
                for tp in tps:
                    assert tp in open_, f"{self.name}: {tp} revoked but not assigned"
                    out.append((tp, open_.pop(tp), ts, self.name, "close" if closing else "revoke"))
        for tp, start in open_.items():
            end = self.killed_at if self.killed_at is not None else 1 << 62
            out.append((tp, start, end, self.name, "kill" if self.killed_at else "open"))
        return out

    def owned_at_end(self):
        return {iv[0] for iv in self.intervals() if iv[4] in ("kill", "open")}


def check_no_double_ownership(logs: List[MemberLog]):
    by_tp = defaultdict(list)
    for lg in logs:
        for iv in lg.intervals():
            by_tp[iv[0]].append(iv)
    for tp, ivs in by_tp.items():
        ivs.sort(key=lambda iv: iv[1])
        for a, b in zip(ivs, ivs[1:]):
            assert b[1] >= a[2], (f"{tp} owned twice: by {a[3]} until {a[2]} ({a[4]}) and by "
                                  f"{b[3]} from {b[1]}")
    return by_tp


def delivered(logs: List[MemberLog]) -> Dict[Tuple[str, int], Counter]:
    seen: Dict[Tuple[str, int], Counter] = defaultdict(Counter)
    for lg in logs:
        for t, p, first, last, count in lg.batches:
            assert count == last - first + 1, f"{lg.name}: offsets of a batch not dense"
            seen[(t, p)].update(range(first, last + 1))
    return seen


def wait_all_delivered(members: List[Member], ends: Dict[Tuple[str, int], int], timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        logs = [m.log() for m in members]
        for lg in logs:
            assert not lg.errors, f"{lg.name} failed:\n{lg.errors[0]}"
        seen = delivered(logs)
        missing = {tp: end - len(seen.get(tp, ())) for tp, end in ends.items() if len(seen.get(tp, ())) < end}
        if not missing:
            return logs
        if time.monotonic() > deadline:
            raise AssertionError(f"not delivered after {timeout}s: {missing}")
        time.sleep(0.05)


def end_offsets(cluster, topic: str) -> Dict[Tuple[str, int], int]:
    return {(topic, p.partition): p.end_offset for p in cluster.describe_topic(topic).partitions}


def run_producer(data_dir, topic: str, n: int, batch: int = 100, pause: float = 0.0):
    p = FORK.Process(target=_producer_main, args=(str(data_dir), topic, n, batch, pause), daemon=True)
    p.start()
    return p


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def stop_all(members: List[Member]) -> None:
    for m in members:
        if m.proc.is_alive():
            m.stop()
    for m in members:
        m.join()


def kill_supervisor(cluster, pid: Optional[int] = None) -> None:
    """SIGKILL the supervisor and wait until it is reaped: its leader thread
    shows as a zombie while sibling threads may still hold its socket open."""
    pid = pid or cluster.supervisor_pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid), 10, "the supervisor to be gone")


def stable(cluster, group: str, members: int, partitions: int) -> bool:
    try:
        d = cluster.describe_group(group)
    except errors.GroupError:
        return False  # nobody joined yet
    return (d["state"] == "Stable" and len(d["members"]) == members
            and sum(len(m["assignment"]) for m in d["members"]) == partitions)


@pytest.fixture
def cluster(data_dir):
    c = shmlog.connect(data_dir, session_timeout_ms=3000)
    try:
        yield c
    finally:
        c.shutdown()


# ---------------------------------------------------------------- process tests
def test_three_members_own_each_partition_once_and_process_each_message_once(cluster, data_dir, tmp_path):
    cluster.create_topic("t", partitions=6)  # disk topic: offsets fsynced on commit
    members = []
    try:
        members.append(Member(tmp_path, data_dir, "t", "g", "m0", auto_commit_interval_ms=100))
        prod = run_producer(data_dir, "t", 30_000, batch=50, pause=0.005)
        for i in (1, 2):
            time.sleep(0.25)
            members.append(Member(tmp_path, data_dir, "t", "g", f"m{i}", auto_commit_interval_ms=100))
        prod.join(30)
        assert prod.exitcode == 0
        ends = end_offsets(cluster, "t")
        assert sum(ends.values()) == 30_000
        wait_all_delivered(members, ends, 20)
        wait_for(lambda: stable(cluster, "g", 3, 6), 5, "a stable group")
        d = cluster.describe_group("g")
        assert sorted(len(m["assignment"]) for m in d["members"]) == [2, 2, 2]
        assert {m["pid"] for m in d["members"]} == {m.proc.pid for m in members}
    finally:
        stop_all(members)
    logs = [m.log() for m in members]
    by_tp = check_no_double_ownership(logs)
    assert set(by_tp) == set(ends)
    seen = delivered(logs)
    for tp, end in ends.items():
        assert set(seen[tp]) == set(range(end)), tp
        dups = [o for o, c in seen[tp].items() if c > 1]
        assert not dups, f"{tp}: {len(dups)} message(s) processed twice without a crash"
    # the joins moved partitions cooperatively: revokes happened, and the
    # last leaver's close committed everything
    assert any(iv[4] == "revoke" for ivs in by_tp.values() for iv in ivs)
    d = cluster.describe_group("g")
    assert d["state"] == "Empty"
    assert all(p["lag"] == 0 for p in d["partitions"]), d["partitions"]


def test_sigkill_member_partitions_move_and_only_its_uncommitted_range_repeats(cluster, data_dir, tmp_path):
    cluster.create_topic("t", partitions=6, **MEM)
    opts = {"manual_commit_every": 3, "delay": 0.002, "max_messages": 40}
    members = [Member(tmp_path, data_dir, "t", "g", f"m{i}", **opts) for i in range(3)]
    try:
        wait_for(lambda: stable(cluster, "g", 3, 6), 10, "a stable group of 3")
        prod = run_producer(data_dir, "t", 40_000, batch=40, pause=0.002)
        victim = members[0]
        wait_for(lambda: len(victim.log().batches) > 30, 10, "the victim to be busy")
        t_kill = victim.kill()
        owned = victim.log().owned_at_end()
        assert len(owned) == 2
        prod.join(60)
        assert prod.exitcode == 0
        ends = end_offsets(cluster, "t")
        logs = wait_all_delivered(members, ends, 30)
        # moved within session_timeout_ms + 1 s (pid death is seen at once)
        moved_at = {}
        for lg in logs[1:]:
            for kind, ts, tps in lg.events:
                if kind == "A" and ts > t_kill:
                    for tp in tps:
                        moved_at.setdefault(tp, ts)
        assert owned <= set(moved_at), (owned, moved_at)
        for tp in owned:
            assert moved_at[tp] - t_kill < (3.0 + 1.0) * 1e9, (tp, (moved_at[tp] - t_kill) / 1e9)
        wait_for(lambda: stable(cluster, "g", 2, 6), 5, "a stable group of 2")
    finally:
        stop_all([m for m in members if m.killed_at is None])
    logs = [m.log() for m in members]
    check_no_double_ownership(logs)
    seen = delivered(logs)
    vlog = logs[0]
    vseen = delivered([vlog])
    sseen = delivered(logs[1:])
    for tp, end in ends.items():
        assert set(seen[tp]) == set(range(end)), f"{tp}: messages lost"
        dups = sorted(o for o, c in seen[tp].items() if c > 1)
        if not dups:
            continue
        assert tp in owned, f"{tp}: duplicates in a partition the killed member did not own"
        # every duplicate: processed by the victim after its last commit, then
        # again by the new owner, which started exactly at the committed offset
        committed = vlog.commits.get(tp, 0)
        assert dups[0] >= committed, (tp, dups[0], committed)
        assert dups[-1] <= max(vseen[tp]), tp
        assert all(sseen[tp][o] == 1 and vseen[tp][o] == 1 for o in dups)
        assert dups == list(range(dups[0], dups[-1] + 1))


def test_rebalance_storm_never_owns_twice_loses_nothing(cluster, data_dir, tmp_path):
    cluster.create_topic("t", partitions=6, **MEM)
    rng = random.Random(7)
    opts = {"auto_commit_interval_ms": 200, "max_messages": 100}
    members: List[Member] = [Member(tmp_path, data_dir, "t", "g", "m0", **opts)]
    live = list(members)
    try:
        prod = run_producer(data_dir, "t", 60_000, batch=50, pause=0.01)
        for i in range(1, 15):
            time.sleep(rng.uniform(0.1, 0.4))
            if len(live) >= 4 or (len(live) > 1 and rng.random() < 0.4):
                m = live.pop(rng.randrange(len(live)))
                m.stop()
            else:
                m = Member(tmp_path, data_dir, "t", "g", f"m{i}", **opts)
                members.append(m)
                live.append(m)
        prod.join(60)
        assert prod.exitcode == 0
        ends = end_offsets(cluster, "t")
        wait_all_delivered(members, ends, 30)
        wait_for(lambda: stable(cluster, "g", len(live), 6), 10, "the group to settle")
        sizes = sorted(len(m["assignment"]) for m in cluster.describe_group("g")["members"])
        assert sizes[-1] - sizes[0] <= 1
    finally:
        stop_all(members)
    logs = [m.log() for m in members]
    for lg in logs:
        assert not lg.errors, lg.errors[0]
    by_tp = check_no_double_ownership(logs)
    seen = delivered(logs)
    for tp, end in ends.items():
        assert set(seen[tp]) == set(range(end)), f"{tp}: messages lost"
        dups = [o for o, c in seen[tp].items() if c > 1]
        assert not dups, f"{tp}: {len(dups)} duplicate(s) although no member crashed"
    # a partition is only revoked to move: the next owner is another member,
    # unless membership changed again in between (the mover left)
    changes = sorted(ts for lg in logs for kind, ts, _ in lg.events if kind in ("J", "X"))
    revokes = 0
    for tp, ivs in by_tp.items():
        ivs.sort(key=lambda iv: iv[1])
        for a, b in zip(ivs, ivs[1:]):
            if a[4] != "revoke":
                continue
            revokes += 1
            if b[3] == a[3]:
                lo, hi = a[2] - int(5e8), b[1] + int(5e8)
                assert any(lo <= ts <= hi for ts in changes), f"{tp} revoked from {a[3]} and given back"
    assert revokes > 0


def test_two_groups_each_receive_everything(cluster, data_dir, tmp_path):
    cluster.create_topic("t", partitions=4, **MEM)
    members = [Member(tmp_path, data_dir, "t", g, f"{g}-{i}") for g in ("ga", "gb") for i in range(2)]
    try:
        prod = run_producer(data_dir, "t", 20_000, batch=100)
        prod.join(30)
        ends = end_offsets(cluster, "t")
        wait_all_delivered(members[:2], ends, 20)
        wait_all_delivered(members[2:], ends, 20)
        assert set(cluster.groups()) == {"ga", "gb"}
    finally:
        stop_all(members)
    for group_logs in ([m.log() for m in members[:2]], [m.log() for m in members[2:]]):
        check_no_double_ownership(group_logs)
        seen = delivered(group_logs)
        for tp, end in ends.items():
            assert sorted(seen[tp].items()) == [(o, 1) for o in range(end)]


# ---------------------------------------------------------------- supervisor restarts
def _drain(consumer, want: int, timeout: float = 10) -> List[Tuple[int, int]]:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for m in consumer.consume(max_messages=want - len(got), timeout=0.1):
            got.append((m.partition, m.offset))
    return got


def _connect_after_crash(data_dir):
    # Cluster._hello does not retry a connection reset by a supervisor that
    # dies or is being replaced while we connect (see the issue note); a
    # user would retry too
    for attempt in range(5):
        try:
            return shmlog.connect(data_dir, session_timeout_ms=3000)
        except ConnectionResetError:
            if attempt == 4:
                raise
            time.sleep(0.2)


def test_offsets_survive_supervisor_sigkill_and_reboot(data_dir):
    c = shmlog.connect(data_dir, session_timeout_ms=3000)
    try:
        c.create_topic("t", partitions=3)
        with c.producer() as p:
            for i in range(30):
                p.send_batch("t", [b"x%d" % i] * 100, partition=i % 3)
            p.flush(durable=True)
        # a closed member's commits, and a live member reading across the crash
        with c.consumer("t", group="done") as k:
            assert len(_drain(k, 1200)) == 1200
            k.commit()
            done = {tp: k.position(*tp) for tp in k.assignment()}
        assert sum(done.values()) == 1200
        live = c.consumer("t", group="live", auto_commit_interval_ms=100)
        before = _drain(live, 1500)
        live.commit()
        pos_before = {tp: live.position(*tp) for tp in live.assignment()}
        gen_before = live._member.generation

        sup0 = c.supervisor_pid
        kill_supervisor(c)
        # the clients start a new supervisor; the live member rejoins with
        # its partitions and goes on where it was
        after = _drain(live, 1500)
        assert len(after) == 1500
        assert not set(before) & set(after), "the live member re-read messages after the restart"
        assert sorted(before + after) == sorted((p, o) for p in range(3) for o in range(1000))
        assert c.supervisor_pid != 0
        _until([live], lambda: c.supervisor_pid != sup0 and stable(c, "live", 1, 3), timeout=10,
               what="the live member to rejoin")
        assert live._member.generation > gen_before
        assert sorted(live.assignment()) == sorted(pos_before)
        d = c.describe_group("done")
        assert {(q["topic"], q["partition"]): q["committed"] for q in d["partitions"]} == done
        live.commit()
        live.close()

        # simulated reboot: supervisor gone and every region of the cluster
        # unlinked; committed offsets come back from <data_dir>/groups
        cid = c.cluster_id
        pid = c.supervisor_pid
        c.close()
        kill_supervisor(c, pid)
        for n in os.listdir("/dev/shm"):
            if n.startswith(f"shmlog-{cid}-"):
                os.unlink(f"/dev/shm/{n}")
    finally:
        if not c.closed:
            c.shutdown()
    c = _connect_after_crash(data_dir)
    try:
        d = c.describe_group("done")
        assert {(q["topic"], q["partition"]): q["committed"] for q in d["partitions"]} == done
        committed = {(q["topic"], q["partition"]): q["committed"] for q in c.describe_group("live")["partitions"]}
        assert committed == {("t", p): 1000 for p in range(3)}
        with c.consumer("t", group="done") as k:
            assert k.committed([("t", p) for p in range(3)]) == done
            rest = _drain(k, 1800)
            assert sorted(rest) == sorted((p, o) for p in range(3) for o in range(1000)
                                          if o >= done[("t", p)])
    finally:
        c.shutdown()


def test_after_a_supervisor_crash_nothing_is_granted_until_every_member_rejoined(cluster):
    """The new coordinator re-attaches the groups region, finds both members'
    slots, and hands out nothing until both have rejoined with their claims."""
    cluster.create_topic("t", partitions=4, **MEM)
    a = cluster.consumer("t", group="g")
    b = cluster.consumer("t", group="g")
    _until([a, b], lambda: stable(cluster, "g", 2, 4), what="2 members")
    own_a, own_b = set(a.assignment()), set(b.assignment())
    sup0 = cluster.supervisor_pid
    kill_supervisor(cluster)
    # only a polls: it rejoins with its partitions; b's stay b's
    _until([a], lambda: cluster.supervisor_pid != sup0 and a._member._sup_pid == cluster.supervisor_pid,
           timeout=10, what="a to rejoin")
    for _ in range(10):
        a.consume(timeout=0.02)
    d = cluster.describe_group("g")
    assert d["waiting_for_rejoin"] == 1 and d["state"] == "Rebalancing"
    assert set(a.assignment()) == own_a
    assert {tuple(tp) for m in d["members"] for tp in m["assignment"]} == own_a
    _until([a, b], lambda: stable(cluster, "g", 2, 4), what="b to rejoin")
    assert set(a.assignment()) == own_a and set(b.assignment()) == own_b
    a.close()
    b.close()


def test_member_that_dies_while_the_supervisor_is_down_loses_its_partitions(cluster, data_dir, tmp_path):
    cluster.create_topic("t", partitions=4, **MEM)
    a = cluster.consumer("t", group="g")
    m = Member(tmp_path, data_dir, "t", "g", "b")
    try:
        _until([a], lambda: stable(cluster, "g", 2, 4), timeout=10, what="2 members")
        sup0 = cluster.supervisor_pid
        kill_supervisor(cluster)
        m.kill()
        _until([a], lambda: cluster.supervisor_pid != sup0 and stable(cluster, "g", 1, 4), timeout=10,
               what="a to get everything")
        assert len(a.assignment()) == 4
    finally:
        stop_all([x for x in [m] if x.killed_at is None])
        a.close()


def test_a_killed_member_not_yet_reaped_by_its_parent_counts_as_dead(cluster, data_dir, tmp_path):
    cluster.create_topic("t", partitions=2, **MEM)
    a = cluster.consumer("t", group="g")
    m = Member(tmp_path, data_dir, "t", "g", "b")
    try:
        _until([a], lambda: stable(cluster, "g", 2, 2), timeout=10, what="2 members")
        t0 = time.monotonic()
        os.kill(m.proc.pid, signal.SIGKILL)  # no join: a zombie until we reap it
        wait_for(lambda: psutil.Process(m.proc.pid).status() == psutil.STATUS_ZOMBIE, 5, "a zombie")
        _until([a], lambda: len(a.assignment()) == 2, timeout=5, what="a to take over")
        assert time.monotonic() - t0 < 1.5  # the pid check, not the 3 s session timeout
        assert psutil.Process(m.proc.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        m.proc.join(5)
        a.close()


# ---------------------------------------------------------------- in-process protocol tests
def _spin(consumers, rounds: int = 10, timeout: float = 0.02):
    """Drive every consumer's poll loop (one process plays several members)."""
    got = defaultdict(list)
    for _ in range(rounds):
        for k in consumers:
            for m in k.consume(timeout=timeout):
                got[id(k)].append((m.topic, m.partition, m.offset))
    return got


def _until(consumers, pred, timeout: float = 5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        _spin(consumers, rounds=1, timeout=0.01)


def test_sticky_revokes_only_what_moves(cluster):
    cluster.create_topic("t", partitions=6, **MEM)
    events = defaultdict(list)

    def mk(name):
        return cluster.consumer("t", group="g", on_assign=lambda t: events[name].append(("A", sorted(t))),
                                on_revoke=lambda t: events[name].append(("R", sorted(t))))

    ks = {n: mk(n) for n in ("a", "b", "c")}
    _until(ks.values(), lambda: stable(cluster, "g", 3, 6), what="3 members")
    before = {n: set(k.assignment()) for n, k in ks.items()}
    events.clear()
    ks["d"] = mk("d")
    _until(ks.values(), lambda: stable(cluster, "g", 4, 6), what="4 members")
    after = {n: set(k.assignment()) for n, k in ks.items()}
    revoked = {tp for n in "abc" for kind, tps in events[n] if kind == "R" for tp in tps}
    assert revoked == after["d"] and len(revoked) == 1
    for n in "abc":
        assert after[n] <= before[n]
        assert [e for e in events[n] if e[0] == "A"] == []
    # a leave moves only the leaver's partitions: nobody else revokes
    events.clear()
    ks.pop("a").close()
    _until(ks.values(), lambda: stable(cluster, "g", 3, 6), what="3 members again")
    for n in "bcd":
        assert [e for e in events[n] if e[0] == "R"] == []
        assert set(ks[n].assignment()) >= after[n]
    for k in ks.values():
        k.close()


def test_range_and_roundrobin_assignors_and_mismatch(cluster):
    cluster.create_topic("a", partitions=3, **MEM)
    cluster.create_topic("b", partitions=3, **MEM)
    k1 = cluster.consumer(["a", "b"], group="r", assignor="range", client_id="one")
    k2 = cluster.consumer(["a", "b"], group="r", assignor="range", client_id="two")
    _until([k1, k2], lambda: stable(cluster, "r", 2, 6), what="range group")
    # range: per topic, the first member (by member id) gets the longer run
    a1 = sorted(k1.assignment())
    assert len(a1) in (2, 4)
    with pytest.raises(errors.GroupError, match="range"):
        cluster.consumer(["a", "b"], group="r", assignor="roundrobin")
    with pytest.raises(errors.InvalidConfig, match="assignor"):
        cluster.consumer("a", group="x", assignor="nope")
    with pytest.raises(errors.InvalidConfig, match="group name"):
        cluster.consumer("a", group="bad/name")
    with pytest.raises(errors.InvalidConfig, match="unknown consumer setting"):
        cluster.consumer("a", group="x", sesion_timeout_ms=5)
    k1.close()
    k2.close()
    k3 = cluster.consumer(["a", "b"], group="r", assignor="roundrobin")
    _until([k3], lambda: stable(cluster, "r", 1, 6), what="roundrobin group")
    assert cluster.describe_group("r")["assignor"] == "roundrobin"
    k3.close()


def test_session_timeout_fences_a_silent_member(cluster):
    cluster.create_topic("t", partitions=2, **MEM)
    revoked = []
    a = cluster.consumer("t", group="g", session_timeout_ms=400, on_revoke=revoked.append)
    b = cluster.consumer("t", group="g", session_timeout_ms=400)
    _until([a, b], lambda: stable(cluster, "g", 2, 2), what="2 members")
    with cluster.producer() as p:
        p.send_batch("t", [b"x"] * 10, partition=0)
        p.send_batch("t", [b"y"] * 10, partition=1)
    a_tp = a.assignment()
    # a stops polling; b keeps going and takes everything
    deadline = time.monotonic() + 3
    while len(b.assignment()) < 2 and time.monotonic() < deadline:
        b.consume(timeout=0.02)
    assert len(b.assignment()) == 2
    with pytest.raises(errors.FencedMember, match="not in group"):
        a.commit(offsets={a_tp[0]: 5})
    # a's next poll drops its partitions (on_revoke) and rejoins
    a.consume(timeout=0.05)
    assert revoked and revoked[-1] == a_tp
    _until([a, b], lambda: stable(cluster, "g", 2, 2), what="a to come back")
    assert len(a.assignment()) == 1
    a.close()
    b.close()


def test_commit_of_a_partition_this_member_does_not_own_is_fenced(cluster):
    cluster.create_topic("t", partitions=2, **MEM)
    a = cluster.consumer("t", group="g")
    b = cluster.consumer("t", group="g")
    _until([a, b], lambda: stable(cluster, "g", 2, 2), what="2 members")
    other = b.assignment()[0]
    with pytest.raises(errors.FencedMember, match="does not own"):
        a.commit(offsets={other: 1})
    a.commit(offsets={a.assignment()[0]: 0})
    a.close()
    b.close()


def test_partitions_added_and_several_topics(cluster):
    cluster.create_topic("a", partitions=2, **MEM)
    cluster.create_topic("b", partitions=1, **MEM)
    revokes = []
    ks = [cluster.consumer(["a", "b"], group="g", on_revoke=revokes.append) for _ in range(2)]
    _until(ks, lambda: stable(cluster, "g", 2, 3), what="3 partitions")
    revokes.clear()
    cluster.add_partitions("a", 5)
    _until(ks, lambda: stable(cluster, "g", 2, 6), what="6 partitions", timeout=5)
    assert revokes == []  # sticky: the new partitions are spread, nothing moves
    assert sorted(tp for k in ks for tp in k.assignment()) == \
        [("a", p) for p in range(5)] + [("b", 0)]
    with cluster.producer() as p:
        p.send_batch("a", [b"new"] * 7, partition=4)
    got = _spin(ks, rounds=5)
    assert sorted(x for v in got.values() for x in v) == [("a", 4, o) for o in range(7)]
    for k in ks:
        k.close()


def test_admin_describe_delete_reset(cluster):
    cluster.create_topic("t", partitions=2)
    with cluster.producer() as p:
        p.send_batch("t", [b"a"] * 10, partition=0)
        t_mid = int(time.time() * 1000) + 1
        time.sleep(0.01)
        p.send_batch("t", [b"b"] * 10, partition=0)
        p.send_batch("t", [b"c"] * 5, partition=1)
    k = cluster.consumer("t", group="g", client_id="worker-1")
    assert len(_drain(k, 25)) == 25
    k.commit(offsets={("t", 0): 15, ("t", 1): 5})
    d = cluster.describe_group("g")
    assert d["state"] == "Stable"
    [m] = d["members"]
    assert m["pid"] == os.getpid() and m["client_id"] == "worker-1"
    assert sorted(map(tuple, m["assignment"])) == [("t", 0), ("t", 1)]
    parts = {q["partition"]: q for q in d["partitions"]}
    assert (parts[0]["committed"], parts[0]["end_offset"], parts[0]["lag"]) == (15, 20, 5)
    assert (parts[1]["committed"], parts[1]["end_offset"], parts[1]["lag"]) == (5, 5, 0)
    assert cluster.groups()["g"]["members"] == 1
    assert cluster.groups()["g"]["lag"] == 5
    with pytest.raises(errors.GroupError, match="active member"):
        cluster.delete_group("g")
    with pytest.raises(errors.GroupError, match="active member"):
        cluster.reset_offsets("g", "t", to="earliest")
    k.close()  # auto-commit on close: everything consumed
    assert {q["partition"]: q["lag"] for q in cluster.describe_group("g")["partitions"]} == {0: 0, 1: 0}
    off = cluster.reset_offsets("g", "t", to="earliest")
    assert {int(p): o for p, o in off.items()} == {0: 0, 1: 0}
    off = cluster.reset_offsets("g", "t", to="offset", offset=12)
    assert {int(p): o for p, o in off.items()} == {0: 12, 1: 5}  # clamped to the end
    off = cluster.reset_offsets("g", "t", to="timestamp", timestamp_ms=t_mid)
    assert {int(p): o for p, o in off.items()}[0] == 10
    off = cluster.reset_offsets("g", "t", to="latest")
    assert {int(p): o for p, o in off.items()} == {0: 20, 1: 5}
    off = cluster.reset_offsets("g", "t", to="offset", offset=3)
    with cluster.consumer("t", group="g") as k2:
        got = _drain(k2, 19)
        assert sorted(got) == [(0, o) for o in range(3, 20)] + [(1, 3), (1, 4)]
    with pytest.raises(errors.InvalidConfig):
        cluster.reset_offsets("g", "t", to="yesterday")
    with pytest.raises(errors.UnknownTopic):
        cluster.reset_offsets("g", "nope")
    cluster.delete_group("g")
    assert "g" not in cluster.groups()
    with pytest.raises(errors.GroupError, match="unknown group"):
        cluster.describe_group("g")
    with pytest.raises(errors.GroupError, match="unknown group"):
        cluster.delete_group("g")


def test_memory_topic_producers_are_gated_by_the_groups_committed_offset(cluster):
    cluster.create_topic("m", partitions=1, storage="memory", chunk_bytes=4096, chunk_count=3)
    value = b"v" * 200
    with cluster.consumer("m", group="slow") as k:
        with cluster.producer(max_block_ms=300) as p:
            p.send_batch("m", [value] * 5)
            p.flush()
        assert len(_drain(k, 5)) == 5
        k.commit(offsets={("m", 0): 2})  # processed only two
        k.enable_auto_commit = False
    # nobody reads now; the group's gate at offset 2 holds the producers
    sent = 5
    with cluster.producer(max_block_ms=300) as p:
        with pytest.raises(errors.BufferFull):
            for _ in range(200):
                p.send("m", value)
                p.flush()
                sent += 1
    assert sent < 100
    # the group resumes at 2: nothing it had not committed was overwritten
    with cluster.consumer("m", group="slow") as k:
        got = _drain(k, sent - 2)
        assert [o for _, o in got] == list(range(2, sent))
    # a deleted group no longer holds anyone
    cluster.delete_group("slow")
    with cluster.producer(max_block_ms=2000) as p:
        for _ in range(100):
            p.send("m", value)
        p.flush()


def test_group_on_a_small_memory_topic_keeps_producers_flowing(cluster, data_dir, tmp_path):
    """The committed-offset gate trails the readers by less than a chunk:
    members commit as they move into the next chunk, not only every
    auto_commit_interval_ms (here a minute, longer than the whole test)."""
    cluster.create_topic("m", partitions=2, storage="memory", chunk_bytes=16384, chunk_count=3)
    members = [Member(tmp_path, data_dir, "m", "g", f"m{i}", auto_commit_interval_ms=60_000)
               for i in range(2)]
    try:
        wait_for(lambda: stable(cluster, "g", 2, 2), 10, "a stable group")
        n = 6000  # ~40 times what the two partitions hold at once
        t0 = time.monotonic()
        with cluster.producer(max_block_ms=5000) as p:
            for i in range(0, n, 20):
                p.send_batch("m", [b"%06d" % j + b"x" * 194 for j in range(i, i + 20)])
            p.flush()
        assert time.monotonic() - t0 < 10
        ends = end_offsets(cluster, "m")
        assert sum(ends.values()) == n
        wait_all_delivered(members, ends, 10)
    finally:
        stop_all(members)
    seen = delivered([m.log() for m in members])
    assert all(sorted(seen[tp].items()) == [(o, 1) for o in range(end)] for tp, end in ends.items())


def test_poll_makes_no_request_on_the_normal_path(cluster, monkeypatch):
    cluster.create_topic("t", partitions=2, **MEM)
    k = cluster.consumer("t", group="g", auto_commit_interval_ms=60_000)
    _until([k], lambda: stable(cluster, "g", 1, 2), what="assignment")
    k.consume(timeout=0.01)
    member = k._member

    def no_request(*a, **kw):
        raise AssertionError("poll() talked to the supervisor on the normal path")

    monkeypatch.setattr(cluster, "request", no_request)
    t0 = time.perf_counter()
    for _ in range(20_000):
        member.poll()
    per = (time.perf_counter() - t0) / 20_000
    assert per < 20e-6, f"poll() costs {per * 1e6:.1f} us"
    monkeypatch.undo()
    assert 0 < member.poll_interval() <= member_mod.POLL_INTERVAL_S
    k.close()


def test_groups_region_layout_and_permissions(cluster, data_dir):
    cluster.create_topic("t", partitions=1, **MEM)
    k = cluster.consumer("t", group="g")
    k.consume(timeout=0.01)
    k.commit()
    name = groups.region_name(cluster.cluster_id)
    st = os.stat("/dev/shm" + name)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == groups.HEADER_BYTES + groups.SLOT_COUNT * groups.SLOT_BYTES
    assert stat.S_IMODE(os.stat(data_dir / "groups").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(data_dir / "groups" / "g.offsets").st_mode) == 0o600
    r = groups.GroupsRegion.attach(name)
    try:
        w = r.words
        assert w[groups.H_MAGIC] == int.from_bytes(b"SHMLGRP1", "little")
        slot = k._member._slot
        assert w[groups.slot_index(slot, groups.S_PID)] == os.getpid()
        assert w[groups.slot_index(slot, groups.S_TOKEN)] == k._member._token
        assert groups.slot_index(1, 0) * 8 == groups.HEADER_BYTES + groups.SLOT_BYTES
        before = w[groups.slot_index(slot, groups.S_POLL)]
        time.sleep(0.002)
        k._member.poll()
        assert w[groups.slot_index(slot, groups.S_POLL)] > before
    finally:
        r.close()
    k.close()


def test_bad_group_requests_get_errors_and_the_supervisor_keeps_serving(cluster):
    for fields in ({"group": "g", "topics": "t", "pid": 1},
                   {"group": "g", "topics": ["t"]},
                   {"group": "../x", "topics": ["t"], "pid": 1},
                   {"group": "g", "topics": ["t"], "pid": 1, "owned": [["t", -1]],
                    "member_id": "m", "token": 1}):
        with pytest.raises(errors.ShmlogError):
            cluster.request("group_join", **fields)
    with pytest.raises(errors.FencedMember):
        cluster.request("group_commit", group="nobody", member_id="m", offsets=[["t", 0, 1]])
    with pytest.raises(errors.ShmlogError):
        cluster.request("group_sync", group="g", member_id=5)
    assert cluster.groups() == {}


# ---------------------------------------------------------------- offsets file
def test_offset_store_torn_tail_and_compaction(tmp_path):
    path = tmp_path / "groups" / "g.offsets"
    s = OffsetStore(path)
    s.append([("t", 1, 0, 10), ("t", 1, 1, 20)], durable=True)
    s.append([("t", 1, 0, 11)], durable=False)
    s.close()
    with open(path, "ab") as f:
        f.write(b'deadbeef {"o":[["t",1,0,99]]')  # a torn append
    s = OffsetStore(path)
    assert s.get("t", 0, 1) == 11 and s.get("t", 1, 1) == 20
    assert s.get("t", 0, 2) is None  # another incarnation of the topic
    assert path.read_bytes().endswith(b"\n")
    for i in range(3000):
        s.append([("t", 1, 0, 100 + i), ("gone", 9, 0, i)], durable=False)
        if s.needs_compaction():
            s.compact({"t": 1})
    assert path.stat().st_size < 2 * offsets_mod.COMPACT_BYTES + 200
    s.close()
    s = OffsetStore(path)
    assert s.get("t", 0, 1) == 3099 and s.get("t", 1, 1) == 20
    s.delete()
    assert not path.exists()
