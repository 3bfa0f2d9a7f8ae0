"""Metrics: the broker's stats dict as JSON or as Prometheus text.

Pure functions over one stats dict (what `Cluster.stats()` returns, enriched
by the command line with per-partition `disk_bytes` and a `groups` section).
Nothing here talks to the supervisor or touches shared memory, so every
format is unit-testable with a literal dict.

The stats dict this module reads (keys it does not know are ignored; keys
that are missing are left out of the output, never invented):

    {"supervisor_pid": int, "clients": int, "reaped_processes": int,
     "topics": {name: {"config": {...}, "partitions": [
         {"partition", "start_offset", "end_offset", "durable_offset", "bytes",
          "shm_reserved_bytes", "shm_resident_bytes", "shm_used_bytes", "fill",
          "chunks_in_use", "chunks_held", "chunk_count", "aborted_batches", "rotations",
          "disk_bytes", "producers": [{"pid", "batches", "records"}],
          "readers": [{"pid", "position"}],
          # optional, from the storage role ("bytes" is then on disk):
          "spilled_offset", "segments", "spill_error",
          "spill_latency_ms", "fsync_latency_ms"}]}},
     "storage": {"spilled_bytes", "spilled_frames", "fsyncs", "write_errors",
                 "truncated_bytes", "deleted_segments",
                 "spill_latency_ms", "fsync_latency_ms"},                 # optional
     "shm": {"budget_bytes", "reserved_bytes", "admitted_bytes", "apparent_bytes",
             "resident_bytes", "refused_charges", "tmpfs_bytes",
             "tmpfs_free_bytes"},                                         # optional

Sizes are named for what they measure, the same in every view:
  shm reserved  the region's pages that are allocated: its header and every
                chunk not released (a disk region reserves a chunk when a
                rotation first opens it). The data dir's total is the
                budget's account (csrc/layout.h), never above the budget
  shm admitted  what admission counted for the topics (shm_budget.topic_bytes)
  shm resident  the region's pages in memory (st_blocks of its tmpfs file)
  shm used      bytes of batches in the chunks that hold data
  fill          what producers cannot overwrite yet, over the ring
  disk          segment files and their indexes
  bytes         the partition's log as describe_topic reports it: disk bytes
                for a disk topic, shm used for a memory topic
     "groups": {group: [ {"topic", "partition", "committed", "end_offset",
                          "lag", "consumer"} ]},                         # optional
     "mirrors": [{"name", "direction", "state", "error", "rate", "messages",
                  "lag_messages", "lag_seconds"}]}                       # optional
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

Labels = Sequence[Tuple[str, Any]]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# ---------------------------------------------------------------- helpers
def escape_label(value: Any) -> str:
    """A label value as the exposition format wants it: \\ " and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    f = float(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return repr(f)


class _Family:
    __slots__ = ("name", "kind", "help", "samples")

    def __init__(self, name: str, kind: str, help_: str):
        self.name = name
        self.kind = kind
        self.help = help_
        self.samples: List[Tuple[Labels, Any]] = []


class _Registry:
    """Families in first-seen order; each family's samples stay together, as
    the exposition format requires."""

    def __init__(self) -> None:
        self._families: Dict[str, _Family] = {}

    def add(self, name: str, kind: str, help_: str, value: Any, labels: Labels = ()) -> None:
        if value is None:
            return
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(name, kind, help_)
        fam.samples.append((tuple(labels), value))

    def render(self) -> str:
        lines: List[str] = []
        for fam in self._families.values():
            lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
            lines.append(f"# TYPE {fam.name} {fam.kind}")
            for labels, value in fam.samples:
                if labels:
                    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
                    lines.append(f"{fam.name}{{{inner}}} {format_value(value)}")
                else:
                    lines.append(f"{fam.name} {format_value(value)}")
        return "\n".join(lines) + "\n" if lines else ""


def _ms_to_s(v: Any) -> Optional[float]:
    if v is None:
        return None
    try:
        return float(v) / 1000.0
    except (TypeError, ValueError):
        return None


_STORAGE_COUNTERS = (
    ("spilled_bytes", "shmlog_spilled_bytes_total", "Bytes copied from shared memory to segment files."),
    ("spilled_frames", "shmlog_spilled_batches_total", "Batches copied from shared memory to segment files."),
    ("fsyncs", "shmlog_fsyncs_total", "fsync calls on segment files."),
    ("write_errors", "shmlog_storage_write_errors_total", "Failed segment writes."),
    ("truncated_bytes", "shmlog_truncated_bytes_total", "Torn segment tails cut off by recovery."),
    ("deleted_segments", "shmlog_deleted_segments_total", "Segments removed by retention."),
)


_SHM_GAUGES = (
    ("budget_bytes", "shmlog_shm_budget_bytes", "Shared memory the data dir's regions may reserve."),
    ("reserved_bytes", "shmlog_shm_reserved_total_bytes", "Shared memory the data dir's regions hold reserved (the budget's account)."),
    ("resident_bytes", "shmlog_shm_resident_total_bytes", "Pages of the data dir's regions in memory."),
    ("refused_charges", "shmlog_shm_refused_charges",
     "Chunk rotations that waited because the budget was reached."),
    ("tmpfs_bytes", "shmlog_shm_tmpfs_bytes", "Size of the tmpfs behind /dev/shm."),
    ("tmpfs_free_bytes", "shmlog_shm_tmpfs_free_bytes", "Free space of the tmpfs behind /dev/shm."),
)


def fill_ratio(part: Dict[str, Any]) -> Optional[float]:
    """The share of the ring producers cannot reuse yet (1: they block).
    Chunks in use but not held are retained data, free to be overwritten.
    The supervisor reports it ("fill", counting the active chunk by the
    bytes it holds); from chunk counts alone, the active chunk counts whole."""
    if part.get("fill") is not None:
        return part["fill"]
    held, count = part.get("chunks_held"), part.get("chunk_count")
    if held is None or not count:
        return None
    return held / count


# ---------------------------------------------------------------- groups
_COMMITTED_KEYS = ("committed", "committed_offset", "current_offset", "offset", "position")
_END_KEYS = ("end_offset", "log_end_offset", "end")
_CONSUMER_KEYS = ("consumer", "consumer_id", "member_id", "member", "owner", "client_id")


def _first(d: Dict[str, Any], keys: Iterable[str]) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def group_rows(desc: Any, end_offsets: Optional[Dict[Tuple[str, int], int]] = None) -> List[Dict[str, Any]]:
    """Normalise one group's description into rows of
    {topic, partition, committed, end_offset, lag, consumer}, sorted.

    Accepts the shapes a coordinator is likely to answer with: a list of
    per-partition dicts (under "partitions", "offsets" or "assignment"), a
    {topic: {partition: {...} or offset}} mapping, or members that each carry
    an "assignment" list of [topic, partition]. end_offsets, when given,
    fills in a missing log-end offset; lag is computed when absent."""
    end_offsets = end_offsets or {}
    rows: Dict[Tuple[str, int], Dict[str, Any]] = {}

    def put(topic: str, partition: Any, d: Dict[str, Any]) -> None:
        key = (str(topic), int(partition))
        row = rows.setdefault(key, {"topic": key[0], "partition": key[1], "committed": None,
                                    "end_offset": None, "lag": None, "consumer": None})
        for out, keys in (("committed", _COMMITTED_KEYS), ("end_offset", _END_KEYS),
                          ("lag", ("lag",)), ("consumer", _CONSUMER_KEYS)):
            v = _first(d, keys)
            if v is not None:
                row[out] = v

    if isinstance(desc, list):
        desc = {"partitions": desc}
    if not isinstance(desc, dict):
        return []
    for field in ("partitions", "offsets", "assignment", "lag"):
        val = desc.get(field)
        if isinstance(val, list):
            for d in val:
                if isinstance(d, dict) and "topic" in d and "partition" in d:
                    put(d["topic"], d["partition"], d)
        elif isinstance(val, dict):
            for topic, parts in val.items():
                if isinstance(parts, dict):
                    for p, d in parts.items():
                        put(topic, p, d if isinstance(d, dict) else {"committed": d})
                elif isinstance(parts, list):
                    for d in parts:
                        if isinstance(d, dict) and "partition" in d:
                            put(topic, d["partition"], d)
    members = desc.get("members")
    if isinstance(members, dict):
        members = [dict(v, member_id=k) if isinstance(v, dict) else {"member_id": k} for k, v in members.items()]
    for m in members or []:
        if not isinstance(m, dict):
            continue
        who = _first(m, _CONSUMER_KEYS)
        if who is None and m.get("pid"):
            who = f"pid-{m['pid']}"
        pid = m.get("pid")
        if pid and who is not None and str(pid) not in str(who):
            who = f"{who} (pid {pid})"
        for tp in m.get("assignment") or m.get("partitions") or []:
            if isinstance(tp, dict):
                t, p = tp.get("topic"), tp.get("partition")
            elif isinstance(tp, (list, tuple)) and len(tp) == 2:
                t, p = tp
            else:
                continue
            if t is None or p is None:
                continue
            row = rows.get((str(t), int(p)))
            if row is None:
                put(t, p, {})
                row = rows[(str(t), int(p))]
            if row["consumer"] is None:
                row["consumer"] = who
    for key, row in rows.items():
        if row["end_offset"] is None and key in end_offsets:
            row["end_offset"] = end_offsets[key]
        if row["lag"] is None and row["end_offset"] is not None:
            row["lag"] = max(0, row["end_offset"] - (row["committed"] or 0))
    return [rows[k] for k in sorted(rows)]


# ---------------------------------------------------------------- formats
def as_json(stats: Dict[str, Any]) -> str:
    return json.dumps(stats, indent=2, sort_keys=True, default=str)


def partitions(stats: Dict[str, Any]) -> Iterable[Tuple[str, Dict[str, Any]]]:
    for topic in sorted(stats.get("topics") or {}):
        for part in stats["topics"][topic].get("partitions") or []:
            yield topic, part


def prometheus(stats: Dict[str, Any]) -> str:
    """Prometheus text exposition format 0.0.4."""
    r = _Registry()
    r.add("shmlog_up", "gauge", "1 when the supervisor answered the stats request.",
          1 if stats.get("supervisor_pid") else 0)
    r.add("shmlog_clients", "gauge", "Client connections open to the supervisor.", stats.get("clients"))
    r.add("shmlog_reaped_processes_total", "counter",
          "Dead producer and reader processes whose slots the reaper released.",
          stats.get("reaped_processes"))
    topics = stats.get("topics") or {}
    r.add("shmlog_topics", "gauge", "Topics that exist.", len(topics))
    for topic, part in partitions(stats):
        lb = (("topic", topic), ("partition", part.get("partition")))
        r.add("shmlog_messages_in_total", "counter",
              "Messages appended to the partition (its end offset).", part.get("end_offset"), lb)
        r.add("shmlog_start_offset", "gauge", "Lowest offset still readable.", part.get("start_offset"), lb)
        r.add("shmlog_durable_offset", "gauge", "Every offset below this is fsynced to disk.",
              part.get("durable_offset"), lb)
        r.add("shmlog_bytes", "gauge",
              "The partition's bytes as describe_topic reports them (segment bytes for disk topics, "
              "shared memory in use for memory topics).", part.get("bytes"), lb)
        r.add("shmlog_shm_reserved_bytes", "gauge",
              "Size of the partition's shared-memory region (its pages are allocated at creation).",
              part.get("shm_reserved_bytes"), lb)
        r.add("shmlog_shm_resident_bytes", "gauge", "Pages of the partition's region in memory.",
              part.get("shm_resident_bytes"), lb)
        r.add("shmlog_shm_used_bytes", "gauge", "Bytes of batches in the chunks that hold data.",
              part.get("shm_used_bytes"), lb)
        r.add("shmlog_disk_bytes", "gauge", "Bytes of segment files on disk.", part.get("disk_bytes"), lb)
        r.add("shmlog_chunks_in_use", "gauge",
              "Shared-memory chunks holding data (retained for replay, or still needed).",
              part.get("chunks_in_use"), lb)
        r.add("shmlog_chunks_held", "gauge",
              "Chunks that cannot be reused yet: the active one and those gating readers, "
              "zero-copy pins or the spiller still need.", part.get("chunks_held"), lb)
        r.add("shmlog_chunk_count", "gauge", "Shared-memory chunks of the partition.",
              part.get("chunk_count"), lb)
        r.add("shmlog_chunk_fill_ratio", "gauge",
              "What producers cannot overwrite yet, over the ring (at 1 producers block).",
              fill_ratio(part), lb)
        r.add("shmlog_aborted_batches_total", "counter",
              "Claims of dead or stuck producers the reaper turned into holes.",
              part.get("aborted_batches"), lb)
        r.add("shmlog_rotations_total", "counter", "Chunk rotations (a chunk sealed, the next one opened).",
              part.get("rotations"), lb)
        producers = part.get("producers")
        readers = part.get("readers")
        r.add("shmlog_producers", "gauge", "Producer processes attached.",
              None if producers is None else len(producers), lb)
        r.add("shmlog_readers", "gauge", "Reader slots in use.", None if readers is None else len(readers), lb)
        if producers:
            r.add("shmlog_producer_batches_total", "counter",
                  "Batches committed by the attached producers.",
                  sum(int(p.get("batches") or 0) for p in producers), lb)
        r.add("shmlog_spilled_offset", "gauge", "Every offset below this is copied to segment files.",
              part.get("spilled_offset"), lb)
        r.add("shmlog_segments", "gauge", "Segment files of the partition.", part.get("segments"), lb)
        if "spill_error" in part:
            r.add("shmlog_spill_failing", "gauge", "1 while spilling this partition fails.",
                  1 if part.get("spill_error") else 0, lb)
        r.add("shmlog_spill_latency_seconds", "gauge", "Latest spill latency (shared memory to segment).",
              _ms_to_s(part.get("spill_latency_ms")), lb)
        r.add("shmlog_fsync_latency_seconds", "gauge", "Latest fsync latency of the segment.",
              _ms_to_s(part.get("fsync_latency_ms")), lb)
    storage = stats.get("storage") or {}
    if isinstance(storage, dict):
        for key, name, help_ in _STORAGE_COUNTERS:
            r.add(name, "counter", help_, storage.get(key))
        r.add("shmlog_storage_spill_latency_seconds", "gauge", "Spill latency reported by the storage role.",
              _ms_to_s(storage.get("spill_latency_ms")))
        r.add("shmlog_storage_fsync_latency_seconds", "gauge", "Fsync latency reported by the storage role.",
              _ms_to_s(storage.get("fsync_latency_ms")))
    shm = stats.get("shm") or {}
    if isinstance(shm, dict):
        for key, name, help_ in _SHM_GAUGES:
            r.add(name, "gauge", help_, shm.get(key))
    for group in sorted(stats.get("groups") or {}):
        for row in stats["groups"][group]:
            lb = (("group", group), ("topic", row["topic"]), ("partition", row["partition"]))
            r.add("shmlog_group_lag", "gauge", "Messages between the group's committed offset and the log end.",
                  row.get("lag"), lb)
            r.add("shmlog_group_committed_offset", "gauge", "The group's committed offset.",
                  row.get("committed"), lb)
    for row in stats.get("mirrors") or []:
        lb = (("mirror", row.get("name")), ("direction", row.get("direction")))
        r.add("shmlog_mirror_up", "gauge", "1 while the mirror runs without a remote error.",
              row.get("state") == "running" and not row.get("error"), lb)
        r.add("shmlog_mirror_messages_per_second", "gauge", "Messages the mirror carried a second.",
              row.get("rate"), lb)
        r.add("shmlog_mirror_lag_messages", "gauge", "Messages the mirror has still to carry.",
              row.get("lag_messages"), lb)
        r.add("shmlog_mirror_lag_seconds", "gauge", "Age of the oldest message not yet carried.",
              row.get("lag_seconds"), lb)
        r.add("shmlog_mirror_messages_total", "counter", "Messages carried since the mirror started.",
              row.get("messages"), lb)
    return r.render()


def totals(stats: Dict[str, Any]) -> Dict[str, Any]:
    """A few cluster-wide sums for one-line summaries."""
    msgs = 0
    shm = 0
    disk = 0
    in_use = 0
    chunks = 0
    aborted = 0
    for _topic, part in partitions(stats):
        msgs += int(part.get("end_offset") or 0)
        shm += int(part.get("shm_reserved_bytes") or 0)
        disk += int(part.get("disk_bytes") or 0)
        in_use += int(part.get("chunks_in_use") or 0)
        chunks += int(part.get("chunk_count") or 0)
        aborted += int(part.get("aborted_batches") or 0)
    lag = sum(int(row.get("lag") or 0) for rows in (stats.get("groups") or {}).values() for row in rows)
    return {"topics": len(stats.get("topics") or {}), "messages": msgs, "shm_reserved_bytes": shm,
            "disk_bytes": disk, "chunks_in_use": in_use, "chunk_count": chunks,
            "aborted_batches": aborted, "group_lag": lag}


def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_rate(n: Optional[float]) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e4:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"
