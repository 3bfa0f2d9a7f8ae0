"""Judges a soak run from its workers' logs (formats in shmlog.soak.worker).

Checks, per topic and partition:

- lost: an acknowledged (offset, producer tag, seq) that some group never
  received, or that the replay reader never reached;
- altered: a received offset whose value differs from what was acknowledged
  at that offset, or from what another consumer received there;
- order breaks: within one member incarnation, between two rebalances, an
  offset not above the previous one;
- holes that differ between groups (every consumer skips the same holes);
- duplicates: counted; those *beyond the committed-offset window* are
  violations: a fetch that started after a commit past that offset was
  acknowledged to the same group (a redelivery that no kill explains).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

SAMPLES = 5


def read_lines(path: Path):
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]  # a SIGKILL tore the last line
    for line in data.decode(errors="replace").splitlines():
        if line:
            yield line.split(" ")


def reader_positions(run_dir: Path) -> Dict[int, int]:
    """The furthest next offset per partition any replay reader reached."""
    out: Dict[int, int] = {}
    for path in Path(run_dir).glob("reader-*.log"):
        for f in read_lines(path):
            if f[0] == "P":
                p, o = int(f[2]), int(f[3])
                out[p] = max(out.get(p, 0), o)
    return out


def check(run_dir: Path, ends: Dict[str, List[int]], groups: Sequence[str], disk_topic: str) -> Dict[str, Any]:
    run_dir = Path(run_dir)
    acked: Dict[Tuple[str, int, int], Tuple[str, int]] = {}
    ack_conflicts: List[str] = []
    stalls: List[Tuple[float, str]] = []
    diagnoses: List[str] = []
    violations_seen: List[str] = []
    errors: Dict[str, int] = defaultdict(int)
    for path in sorted(run_dir.glob("prod-*.log")):
        tag = path.name[len("prod-"):-len(".log")]
        for f in read_lines(path):
            if f[0] == "A":
                key = (f[1], int(f[2]), int(f[3]))
                val = (tag, int(f[4]))
                if key in acked and acked[key] != val:
                    ack_conflicts.append(f"{key} acked as {acked[key]} and {val}")
                acked[key] = val
            elif f[0] == "G":
                stalls.append((float(f[1]), path.name))
            elif f[0] == "E":
                errors[f"producer {f[1]}"] += 1

    received: Dict[str, Dict[Tuple[str, int, int], Tuple[str, int]]] = {g: {} for g in groups}
    counts: Dict[str, Dict[Tuple[str, int, int], int]] = {g: defaultdict(int) for g in groups}
    altered: List[str] = []
    order_breaks: List[str] = []
    beyond: List[str] = []
    # per group and partition, the acknowledged commits as (time, offset)
    commits: Dict[str, Dict[Tuple[str, int], List[Tuple[float, int]]]] = {g: defaultdict(list) for g in groups}
    fetches: Dict[str, List[Tuple[float, str, int, int]]] = {g: [] for g in groups}
    for g in groups:
        for path in sorted(run_dir.glob(f"mem-{g}-*.log")):
            last: Dict[Tuple[str, int], int] = {}
            t_fetch = 0.0
            for f in read_lines(path):
                k = f[0]
                if k == "M":
                    key = (f[1], int(f[2]), int(f[3]))
                    val = (f[4], int(f[5]))
                    prev = received[g].get(key)
                    if prev is not None and prev != val:
                        altered.append(f"{g} {key}: {prev} then {val}")
                    received[g][key] = val
                    counts[g][key] += 1
                    tp = key[:2]
                    if tp in last and key[2] <= last[tp]:
                        order_breaks.append(f"{path.name}: {tp} offset {key[2]} after {last[tp]}")
                    last[tp] = key[2]
                    fetches[g].append((t_fetch, key[0], key[1], key[2]))
                elif k == "B":
                    t_fetch = float(f[1])
                elif k == "C":
                    commits[g][(f[2], int(f[3]))].append((float(f[1]), int(f[4])))
                elif k == "R":
                    last = {}
                elif k == "G":
                    stalls.append((float(f[1]), path.name))
                elif k == "D":
                    diagnoses.append(f"{path.name} at {f[1]}: {' '.join(f[2:])}")
                elif k == "V":
                    violations_seen.append(f"{path.name}: {' '.join(f)}")
                elif k == "E":
                    errors[f"member {f[1]}"] += 1
        # per partition: commit times, and the highest offset committed up to each
        prefix: Dict[Tuple[str, int], Tuple[List[float], List[int]]] = {}
        for tp, cs in commits[g].items():
            cs.sort()
            highest, run = [], -1
            for _t, o in cs:
                run = max(run, o)
                highest.append(run)
            prefix[tp] = ([t for t, _o in cs], highest)
        for t_fetch, topic, p, off in fetches[g]:
            if counts[g][(topic, p, off)] < 2 or (topic, p) not in prefix:
                continue
            times, highest = prefix[(topic, p)]
            i = bisect_left(times, t_fetch)  # commits acknowledged before this fetch began
            best = highest[i - 1] if i else -1
            if off < best:
                beyond.append(f"{g} {topic}/{p} offset {off} fetched at {t_fetch:.3f} after offset {best} "
                              f"was committed")
    for path in sorted(run_dir.glob("reader-*.log")):
        for f in read_lines(path):
            if f[0] == "G":
                stalls.append((float(f[1]), path.name))
            elif f[0] == "V":
                violations_seen.append(f"{path.name}: {' '.join(f)}")
            elif f[0] == "E":
                errors[f"reader {f[1]}"] += 1

    lost: List[str] = []
    n_lost = 0
    for key, val in acked.items():
        for g in groups:
            got = received[g].get(key)
            if got is None:
                n_lost += 1
                if len(lost) < SAMPLES:
                    lost.append(f"{g} never received {key} = {val}")
            elif got != val:
                altered.append(f"{g} received {got} at {key}, acknowledged as {val}")
    for g in groups[1:]:
        for key, val in received[g].items():
            other = received[groups[0]].get(key)
            if other is not None and other != val:
                altered.append(f"{groups[0]} and {g} differ at {key}: {other} vs {val}")
    holes_differ = []
    for t, e in ends.items():
        for p in range(len(e)):
            sets = [frozenset(o for (tt, pp, o) in received[g] if tt == t and pp == p) for g in groups]
            if len(set(sets)) > 1:
                holes_differ.append(f"{t}/{p}: groups saw different offset sets")
    reader = reader_positions(run_dir)
    reader_short = [f"{disk_topic}/{p}: reader reached {reader.get(p, 0)} of {end}"
                    for p, end in enumerate(ends.get(disk_topic, [])) if reader.get(p, 0) < end]
    dups = {g: sum(c - 1 for c in counts[g].values() if c > 1) for g in groups}
    by_topic: Dict[str, int] = defaultdict(int)
    for (t, _p, _o) in acked:
        by_topic[t] += 1
    return {
        "acked": len(acked), "acked_by_topic": dict(by_topic),
        "received": {g: len(received[g]) for g in groups},
        "lost": n_lost, "lost_samples": lost,
        "altered": len(altered), "altered_samples": altered[:SAMPLES],
        "ack_conflicts": ack_conflicts[:SAMPLES],
        "order_breaks": len(order_breaks), "order_break_samples": order_breaks[:SAMPLES],
        "holes_differ": holes_differ,
        "duplicates": dups, "duplicates_beyond_window": len(beyond), "beyond_window_samples": beyond[:SAMPLES],
        "reader_short": reader_short, "in_process_violations": violations_seen[:50],
        "longest_stall_s": round(max(stalls, default=(0.0, ""))[0], 3),
        "longest_stall_in": max(stalls, default=(0.0, ""))[1],
        "stall_diagnoses": diagnoses[:20],
        "client_errors": dict(errors),
    }


def violations(fig: Dict[str, Any]) -> List[str]:
    """Every check that failed, one line each (empty: the run passed)."""
    out = []
    for key in ("lost", "altered", "order_breaks", "duplicates_beyond_window"):
        if fig.get(key):
            out.append(f"{key}: {fig[key]}")
    for key in ("ack_conflicts", "holes_differ", "reader_short", "in_process_violations", "crashed_workers",
                "hung_workers", "leaked_segments", "leaked_processes", "listener_not_restarted"):
        if fig.get(key):
            out.append(f"{key}: {fig[key][:3]}")
    if not fig.get("drained", True):
        out.append("drained: consumers did not catch up with the end offsets")
    if fig.get("longest_stall_s", 0) > fig.get("max_stall_allowed_s", float("inf")):
        out.append(f"longest_stall_s: {fig['longest_stall_s']} > {fig['max_stall_allowed_s']}")
    if fig.get("acked", 0) == 0:
        out.append("acked: nothing was acknowledged; the run proves nothing")
    return out
