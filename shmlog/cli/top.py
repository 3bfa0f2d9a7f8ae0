"""`shmlog top`: a live view of a running broker.

Per partition: produce and consume rates (deltas of the end offset and of
the reader positions between two refreshes), end offset, shared-memory fill,
bytes on disk; per group: lag; per mirror (to and from Kafka clusters):
state, rate and lag in messages and seconds; per attached process: pid,
role, CPU and memory. It only reads: stats from the supervisor, sizes of segment files,
and /proc through psutil. It must never register as a producer or reader.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import psutil

from ..broker import metrics as m
from .common import add_common, connect, nonneg_int, table
from .stats import collect_stats, shm_summary

CLEAR = "\x1b[H\x1b[2J"


def rates(stats: Dict[str, Any], prev: Optional[Dict[str, Any]], dt: float
          ) -> Dict[Tuple[str, int], Tuple[Optional[float], Optional[float]]]:
    """(produce/s, consume/s) per partition between two stats snapshots.

    Consume is the sum over reader processes of how far each moved (so two
    groups reading a partition count twice, as Kafka's bytes-out does). The
    supervisor's own reader slots are left out: they are the group
    coordinator's gates at the committed offsets, not consumption."""
    out: Dict[Tuple[str, int], Tuple[Optional[float], Optional[float]]] = {}
    sup = stats.get("supervisor_pid")
    before: Dict[Tuple[str, int], Dict[str, Any]] = {}
    if prev is not None:
        before = {(t, p["partition"]): p for t, p in m.partitions(prev)}
    for t, p in m.partitions(stats):
        key = (t, p["partition"])
        old = before.get(key)
        if old is None or dt <= 0:
            out[key] = (None, None)
            continue
        produced = max(0, p.get("end_offset", 0) - old.get("end_offset", 0)) / dt
        old_pos = {r["pid"]: r["position"] for r in old.get("readers") or []}
        moved = 0
        for r in consumers(p, sup):
            if r["pid"] in old_pos:
                moved += max(0, r["position"] - old_pos[r["pid"]])
        out[key] = (produced, moved / dt)
    return out


def consumers(part: Dict[str, Any], supervisor_pid: Optional[int]) -> List[Dict[str, Any]]:
    """Reader slots of consumer processes (not the supervisor's gates)."""
    return [r for r in part.get("readers") or [] if r.get("pid") != supervisor_pid]


def roles(stats: Dict[str, Any]) -> Dict[int, Dict[str, Any]]:
    """pid -> {"roles": {"producer", "reader", ...}, "partitions": ["t[0]", ...]}."""
    out: Dict[int, Dict[str, Any]] = {}
    sup = stats.get("supervisor_pid")
    if sup:
        out[sup] = {"roles": {"supervisor"}, "partitions": []}
    for t, p in m.partitions(stats):
        for role, key in (("producer", "producers"), ("reader", "readers")):
            for s in p.get(key) or []:
                if s["pid"] == sup:
                    continue  # the coordinator's gate of a group (memory topics)
                e = out.setdefault(s["pid"], {"roles": set(), "partitions": []})
                e["roles"].add(role)
                tp = f"{t}[{p['partition']}]"
                if tp not in e["partitions"]:
                    e["partitions"].append(tp)
    return out


class ProcessSampler:
    """CPU% needs two readings: keep one psutil.Process per pid across refreshes."""

    def __init__(self) -> None:
        self._procs: Dict[int, psutil.Process] = {}

    def sample(self, pids) -> Dict[int, Dict[str, Any]]:
        out = {}
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # first call primes the counter
                with proc.oneshot():
                    cmd = proc.cmdline()
                    name = " ".join(cmd[:4])[:48] or proc.name()
                    if any("multiprocessing" in a for a in cmd):
                        name = f"(multiprocessing child of pid {proc.ppid()})"
                    out[pid] = {"cpu": proc.cpu_percent(None), "rss": proc.memory_info().rss, "name": name}
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
                out[pid] = {"cpu": None, "rss": None, "name": "(gone)"}
        for gone in set(self._procs) - set(pids):
            self._procs.pop(gone, None)
        return out


def snapshot(stats: Dict[str, Any], prev: Optional[Dict[str, Any]], dt: float,
             procs: Dict[int, Dict[str, Any]]) -> Dict[str, Any]:
    """Everything one frame shows, as plain data (also the --json line)."""
    r = rates(stats, prev, dt)
    sup = stats.get("supervisor_pid")
    parts = []
    for t, p in m.partitions(stats):
        pin, pout = r.get((t, p["partition"]), (None, None))
        parts.append({"topic": t, "partition": p["partition"], "end_offset": p.get("end_offset"),
                      "produce_rate": pin, "consume_rate": pout, "chunks_in_use": p.get("chunks_in_use"),
                      "chunks_held": p.get("chunks_held"), "chunk_count": p.get("chunk_count"), "fill": m.fill_ratio(p),
                      "disk_bytes": p.get("disk_bytes"), "shm_reserved_bytes": p.get("shm_reserved_bytes"),
                      "shm_resident_bytes": p.get("shm_resident_bytes"),
                      "shm_used_bytes": p.get("shm_used_bytes"), "producers": len(p.get("producers") or []),
                      "readers": len(consumers(p, sup))})
    groups = [{"group": g, **row} for g in sorted(stats.get("groups") or {}) for row in stats["groups"][g]]
    processes = []
    for pid, info in sorted(roles(stats).items()):
        ps = procs.get(pid, {})
        processes.append({"pid": pid, "role": "+".join(sorted(info["roles"])), "partitions": info["partitions"],
                          "cpu_percent": ps.get("cpu"), "rss_bytes": ps.get("rss"), "command": ps.get("name")})
    mirrors = [{"name": r.get("name"), "direction": r.get("direction"), "state": r.get("state"),
                "rate": r.get("rate"), "lag_messages": r.get("lag_messages"), "lag_seconds": r.get("lag_seconds"),
                "bootstrap": r.get("bootstrap"), "error": r.get("error") or r.get("last_exit"), "pid": r.get("pid")}
               for r in stats.get("mirrors") or []]
    return {"time": stats.get("collected_at", time.time()), "supervisor_pid": stats.get("supervisor_pid"),
            "clients": stats.get("clients"), "shm": stats.get("shm"), "partitions": parts, "groups": groups,
            "mirrors": mirrors, "processes": processes}


def render(snap: Dict[str, Any], data_dir: str, width: int = 120) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(snap["time"]))
    lines = [f"shmlog top — {data_dir}  supervisor pid {snap['supervisor_pid']}  "
             f"clients {snap['clients'] if snap['clients'] is not None else '-'}  {when}",
             shm_summary(snap.get("shm")), ""]
    if snap["partitions"]:
        rows = []
        for p in snap["partitions"]:
            # held (what producers wait on) / in use (held + retained) / all
            held = "-" if p["chunks_held"] is None else p["chunks_held"]
            chunks = f"{held}/{p['chunks_in_use']}/{p['chunk_count']}" if p["chunk_count"] else "-"
            fill = "-" if p["fill"] is None else f"{p['fill']:.0%}"
            rows.append([p["topic"], p["partition"], p["end_offset"], m.human_rate(p["produce_rate"]),
                         m.human_rate(p["consume_rate"]), chunks, fill,
                         m.human_bytes(p.get("shm_reserved_bytes")), m.human_bytes(p.get("shm_resident_bytes")),
                         m.human_bytes(p.get("shm_used_bytes")), m.human_bytes(p["disk_bytes"]),
                         p["producers"], p["readers"]])
        lines += table(rows, ["TOPIC", "PART", "END-OFFSET", "IN/s", "OUT/s", "HELD/USED/CHUNKS", "FILL",
                               "SHM-RESERVED", "SHM-RESIDENT", "SHM-USED", "DISK-BYTES", "PRODUCERS", "READERS"])
    else:
        lines.append("no topics")
    if snap["groups"]:
        lines.append("")
        lines += table([[g["group"], g["topic"], g["partition"], g["committed"], g["end_offset"], g["lag"],
                          g["consumer"]] for g in snap["groups"]],
                        ["GROUP", "TOPIC", "PART", "COMMITTED", "END-OFFSET", "LAG", "CONSUMER"])
    if snap.get("mirrors"):
        lines.append("")
        lines += table([[r["name"], r["direction"], r["state"], m.human_rate(r["rate"]),
                         "-" if r["lag_messages"] is None else r["lag_messages"],
                         "-" if r["lag_seconds"] is None else f"{r['lag_seconds']:.1f}",
                         r["bootstrap"] or "-", r["error"] or ""] for r in snap["mirrors"]],
                       ["MIRROR", "DIR", "STATE", "MSG/s", "LAG", "LAG-S", "REMOTE", "ERROR"])
    if snap["processes"]:
        lines.append("")
        rows = []
        for p in snap["processes"]:
            parts = ",".join(p["partitions"])
            if len(parts) > 40:
                parts = parts[:37] + "..."
            cpu = "-" if p["cpu_percent"] is None else f"{p['cpu_percent']:.1f}"
            rows.append([p["pid"], p["role"], parts or "-", cpu, m.human_bytes(p["rss_bytes"]), p["command"]])
        lines += table(rows, ["PID", "ROLE", "PARTITIONS", "CPU%", "RSS", "COMMAND"])
    return "\n".join(line[:width] for line in lines) + "\n"


def run(args) -> int:
    interval = max(0.05, float(args.interval))
    tty = sys.stdout.isatty() and not args.json
    width = 200
    if tty:
        try:
            width = os.get_terminal_size().columns
        except OSError:
            pass
    sampler = ProcessSampler()
    prev: Optional[Dict[str, Any]] = None
    prev_t = 0.0
    n = 0
    with connect(args) as cluster:
        try:
            while True:
                stats = collect_stats(cluster)
                now = time.monotonic()
                procs = sampler.sample(list(roles(stats)))
                snap = snapshot(stats, prev, now - prev_t, procs)
                if args.json:
                    sys.stdout.write(json.dumps(snap, sort_keys=True, default=str) + "\n")
                else:
                    frame = render(snap, str(cluster.data_dir), width)
                    sys.stdout.write((CLEAR + frame) if tty else frame + "\n")
                sys.stdout.flush()
                prev, prev_t = stats, now
                n += 1
                if args.iterations and n >= args.iterations:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
    return 0


__all__ = ["ProcessSampler", "consumers", "rates", "render", "roles", "run", "snapshot"]


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("top", "live rates, lag, buffer fill and processes per partition")
    add_common(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--iterations", type=nonneg_int, default=0, help="stop after N refreshes (0: never)")
    p.set_defaults(func=run)
