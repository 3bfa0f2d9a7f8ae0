"""Broker figures gathered for `shmlog stats`, `top` and `topics describe`:
the supervisor's stats op, segment bytes on disk, producer/reader slots and
group lag. Read-only: never reaches into the supervisor's internals."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import errors
from ..broker import metrics as m
from .common import (
    add_common,
    connect,
    flag,
    out,
    table,
    topic_dict,
)


def disk_bytes(data_dir: Path, topic: str, partition: int) -> int:
    """Bytes of segment files (and their indexes) of one partition."""
    d = Path(data_dir) / "topics" / topic / str(partition)
    total = 0
    try:
        with os.scandir(d) as it:
            for e in it:
                try:
                    if e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    except OSError:
        return 0
    return total


# the size columns of every view, named for what each measures (metrics.py)
SIZE_HEADERS = ["SHM-RESERVED", "SHM-RESIDENT", "SHM-USED", "FILL", "DISK-BYTES"]


def size_cells(part: Dict[str, Any]) -> List[str]:
    """SIZE_HEADERS' cells for one partition of a stats/describe dict."""
    fill = m.fill_ratio(part)
    return [m.human_bytes(part.get("shm_reserved_bytes")), m.human_bytes(part.get("shm_resident_bytes")),
            m.human_bytes(part.get("shm_used_bytes")), "-" if fill is None else f"{fill:.0%}",
            m.human_bytes(part.get("disk_bytes"))]


def shm_summary(shm: Optional[Dict[str, Any]]) -> str:
    """One line: the data dir's shared-memory budget, what its regions
    reserve and what is resident, and the tmpfs's free space."""
    if not shm or "budget_bytes" not in shm:
        return "shared memory: -"
    budget, reserved = shm.get("budget_bytes"), shm.get("reserved_bytes")
    share = f" ({reserved / budget:.0%})" if budget and reserved is not None else ""
    return (f"shared memory: budget {m.human_bytes(budget)}  reserved {m.human_bytes(reserved)}{share}  "
            f"resident {m.human_bytes(shm.get('resident_bytes'))}  "
            f"admitted {m.human_bytes(shm.get('admitted_bytes'))}  "
            f"rotations waited {shm.get('refused_charges', 0)}  "
            f"tmpfs free {m.human_bytes(shm.get('tmpfs_free_bytes'))} of {m.human_bytes(shm.get('tmpfs_bytes'))}")


def _client_side_stats(cluster) -> Dict[str, Any]:
    """What the stats op answers, built from describe calls (used when the
    supervisor's op fails; _fill_slots adds the slot tables)."""
    topics = {name: topic_dict(info) for name, info in cluster.topics().items()}
    return {"supervisor_pid": cluster.supervisor_pid, "clients": None, "reaped_processes": None,
            "topics": topics, "source": "client"}


def _fill_slots(cluster, stats: Dict[str, Any]) -> None:
    """Partitions the supervisor described without their producer/reader
    slots (its stats op failed part way) get them from the mapped regions."""
    for topic, part in list(m.partitions(stats)):
        if "producers" in part and "readers" in part:
            continue
        try:
            regions = cluster.topic(topic).regions
        except errors.ShmlogError:
            continue
        p = part["partition"]
        if p < len(regions) and not regions[p].closed:
            part["producers"], part["readers"] = regions[p].slot_table()


def collect_stats(cluster, *, groups: bool = True) -> Dict[str, Any]:
    """The supervisor's stats, plus disk bytes per partition and group lag."""
    try:
        stats = cluster.stats()
    except errors.BrokerNotRunning:
        raise
    except errors.ShmlogError:
        stats = _client_side_stats(cluster)
    _fill_slots(cluster, stats)
    for topic, part in m.partitions(stats):
        part["disk_bytes"] = disk_bytes(cluster.data_dir, topic, part["partition"])
    if groups:
        stats["groups"] = group_lags(cluster, stats)
    stats["collected_at"] = time.time()
    return stats


def group_lags(cluster, stats: Optional[Dict[str, Any]] = None) -> Dict[str, List[Dict[str, Any]]]:
    """{group: rows} for every group; {} when groups are not available."""
    try:
        names = group_names(cluster.groups())
    except errors.ShmlogError:
        return {}
    ends = {}
    if stats is not None:
        ends = {(t, p["partition"]): p["end_offset"] for t, p in m.partitions(stats)}
    out = {}
    for g in names:
        try:
            out[g] = m.group_rows(cluster.describe_group(g), ends)
        except errors.ShmlogError:
            continue
    return out


def group_names(answer: Any) -> List[str]:
    if isinstance(answer, dict):
        return sorted(answer)
    if isinstance(answer, list):
        return sorted(g if isinstance(g, str) else g.get("group") or g.get("name") for g in answer)
    return []


def cmd_stats(args) -> int:
    with connect(args) as cluster:
        stats = collect_stats(cluster)
    if args.prometheus:
        sys.stdout.write(m.prometheus(stats))
    elif flag(args, "json"):
        out(m.as_json(stats))
    else:
        tot = m.totals(stats)
        out(f"supervisor pid {stats.get('supervisor_pid')}  clients {_dash(stats.get('clients'))}  "
             f"reaped processes {_dash(stats.get('reaped_processes'))}  topics {tot['topics']}  "
             f"messages {tot['messages']}  group lag {tot['group_lag']}")
        out(shm_summary(stats.get("shm")))
        rows = []
        for topic, p in m.partitions(stats):
            rows.append([topic, p["partition"], p.get("start_offset"), p.get("end_offset"), *size_cells(p),
                         p.get("aborted_batches"), p.get("rotations"),
                         len(p.get("producers") or []), len(p.get("readers") or [])])
        if rows:
            for line in table(rows, ["TOPIC", "PARTITION", "START", "END", *SIZE_HEADERS,
                                      "ABORTED", "ROTATIONS", "PRODUCERS", "READERS"]):
                out(line)
    return 0


def _dash(v: Any) -> Any:
    return "-" if v is None else v


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("stats", "broker counters as a table, JSON or Prometheus text")
    add_common(p)
    p.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format 0.0.4")
    p.set_defaults(func=cmd_stats)
