"""Simulated power loss for disk topics.

Each run: producers (shmlog.soak.worker, ``durable``) send to a disk topic
and log what ``flush(durable=True)`` acknowledged; then every process is
SIGKILLed, the shared memory is unlinked (a reboot), and the tail of each
partition's active segment is torn past its last durably acknowledged
frame - cut at a random point, overwritten with garbage or zeros, or
extended with junk - and its indexes are cut or scribbled anywhere (they
are only hints). `shmlog dump` must then report the torn tail; on restart
recovery must bring back every durably acknowledged message, serve nothing
corrupt, and leave segments that `shmlog dump` finds clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import psutil

import shmlog
from shmlog import errors

from .checker import read_lines

TOPIC = "pl"
PARTITIONS = 2


def _kill_everything(data_dir: Path, procs: List[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()
    needle = str(data_dir)
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and any(needle in a for a in (p.info["cmdline"] or [])):
                os.kill(p.pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if (p.pid != os.getpid() and p.info["status"] != psutil.STATUS_ZOMBIE
                        and any(needle in a for a in (p.info["cmdline"] or []))):
                    alive.append(p.pid)
            except psutil.Error:
                pass
        if not alive:
            return
        time.sleep(0.05)


def _unlink_shm(cid: str) -> int:
    n = 0
    for name in os.listdir("/dev/shm"):
        if cid and name.startswith(f"shmlog-{cid}-"):
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")
                n += 1
    return n


def _dump(path: Path) -> Tuple[int, List[Dict[str, Any]]]:
    r = subprocess.run([sys.executable, "-m", "shmlog", "dump", str(path), "--json"],
                       capture_output=True, text=True, timeout=120)
    try:
        return r.returncode, json.loads(r.stdout or "[]")
    except ValueError:
        return r.returncode, [{"error": f"unparsable dump output: {r.stdout[:200]} {r.stderr[:200]}"}]


def _tear(rng: random.Random, pdir: Path, durable_end: Dict[int, int]) -> Dict[str, Any]:
    """Tear the active segment past its durable frames; scribble its indexes."""
    logs = sorted(pdir.glob("*.log"))
    if not logs:
        return {"kind": "none"}
    path = logs[-1]
    entries = [e for e in _dump(path)[1] if e.get("crc_valid")]
    base = int(path.stem)
    last_durable = durable_end.get(int(pdir.name), -1)
    # bytes up to the end of the last frame holding a durably acknowledged offset are safe
    safe = 0
    for e in entries:
        if e["offset"] <= last_durable and base <= last_durable:
            safe = e["position"] + e["bytes"]
    size = path.stat().st_size
    kind = rng.choice(["cut", "garbage", "zeros", "junk-tail", "cut-mid-frame"])
    at = rng.randrange(safe, size + 1) if size > safe else size
    with open(path, "r+b") as f:
        if kind == "cut":
            f.truncate(at)
        elif kind == "cut-mid-frame":
            f.truncate(min(size, at + rng.randrange(1, 63)) if at < size else size)
        elif kind == "garbage":
            f.seek(at)
            f.write(os.urandom(min(rng.randrange(1, 4096), max(size - at, 1))))
        elif kind == "zeros":
            f.seek(at)
            f.write(bytes(min(rng.randrange(1, 4096), max(size - at, 1))))
        else:
            f.seek(0, 2)
            f.write(rng.choice([os.urandom(rng.randrange(1, 300)), bytes(rng.randrange(64, 4096))]))
    for suffix in (".index", ".timeindex"):
        idx = path.with_suffix(suffix)
        if idx.exists() and rng.random() < 0.7:
            n = idx.stat().st_size
            with open(idx, "r+b") as f:
                if rng.random() < 0.5:
                    f.truncate(rng.randrange(0, n + 1))
                elif n:
                    f.seek(rng.randrange(n))
                    f.write(os.urandom(rng.randrange(1, 24)))
    return {"kind": kind, "segment": str(path), "safe": safe, "size_before": size,
            "size_after": path.stat().st_size}


def power_loss_runs(work: Path, *, runs: int, seed: int, log: Callable[[str], None] = print) -> Dict[str, Any]:
    rng = random.Random(seed)
    work = Path(work)
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    fig: Dict[str, Any] = {"runs": 0, "durable_acked": 0, "recovered": 0, "lost": 0, "corrupt_served": 0,
                           "tears": {}, "dump_reported_tear": 0, "dump_clean_after": 0, "truncated_bytes": 0,
                           "violations": []}
    broker = {"idle_timeout_s": 30}
    with shmlog.connect(data_dir, **broker) as c:
        c.create_topic(TOPIC, partitions=PARTITIONS, chunk_bytes=64 << 10, chunk_count=4, segment_bytes=48 << 10,
                       fsync_interval_ms=50)
        cid = c.cluster_id
    for r in range(runs):
        procs = []
        for i in range(2):
            tag = f"r{r}p{i}"
            args = {"run_dir": str(work), "data_dir": str(data_dir), "broker": broker, "tag": tag,
                    "topics": [TOPIC], "rate": 400, "round_s": 0.05, "durable": i == 0}
            procs.append(subprocess.Popen([sys.executable, "-m", "shmlog.soak.worker", "producer", json.dumps(args)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # kill at a random moment once both are producing (start-up is slow on a loaded host)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                (work / f"prod-r{r}p{i}.log").exists() and (work / f"prod-r{r}p{i}.log").stat().st_size
                for i in range(2)):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 1.5))
        _kill_everything(data_dir, procs)
        _unlink_shm(cid)
        # what flush(durable=True) vouched for, over all runs so far
        durable: Dict[Tuple[int, int], str] = {}
        for path in work.glob("prod-r*p0.log"):
            tag = path.name[len("prod-"):-len(".log")]
            for f in read_lines(path):
                if f[0] == "A":
                    durable[(int(f[2]), int(f[3]))] = f"{tag}:{f[4]}"
        durable_end = {}
        for (p, o) in durable:
            durable_end[p] = max(durable_end.get(p, -1), o)
        for p in range(PARTITIONS):
            t = _tear(rng, data_dir / "topics" / TOPIC / str(p), durable_end)
            fig["tears"][t["kind"]] = fig["tears"].get(t["kind"], 0) + 1
            if t["kind"] != "none" and t["size_after"] != t["size_before"] or t["kind"] in ("garbage", "zeros"):
                rc, entries = _dump(Path(t["segment"]))
                if rc != 0 and any(e.get("error") for e in entries):
                    fig["dump_reported_tear"] += 1
        # reboot: a new supervisor recovers
        fig["runs"] += 1
        try:
            with shmlog.connect(data_dir, **broker) as c:
                served: Dict[Tuple[int, int], bytes] = {}
                with c.consumer(TOPIC) as consumer:
                    consumer.seek_to_beginning()
                    ends = {p.partition: p.end_offset for p in c.describe_topic(TOPIC).partitions}
                    deadline = time.monotonic() + 120
                    while any(consumer.position(TOPIC, p) < e for p, e in ends.items()):
                        for m in consumer.consume(max_messages=10_000, timeout=0.5):
                            if (m.partition, m.offset) in served:
                                fig["violations"].append(f"run {r}: offset {m.partition}/{m.offset} served twice")
                            served[(m.partition, m.offset)] = bytes(m.value)
                        if time.monotonic() > deadline:
                            fig["violations"].append(f"run {r}: could not read back to the end offsets {ends}")
                            break
        except errors.ShmlogError as exc:
            fig["violations"].append(f"run {r}: {type(exc).__name__}: {exc}")
            served = {}
        lost = [k for k, v in durable.items() if not served.get(k, b"").startswith((v + ":").encode())]
        from .worker import parse_value

        bad = [k for k, v in served.items() if parse_value(v) is None]
        fig["durable_acked"] = len(durable)
        fig["recovered"] = len(durable) - len(lost)
        fig["lost"] = len(lost)
        fig["corrupt_served"] += len(bad)
        if lost:
            fig["violations"].append(f"run {r}: {len(lost)} durably acknowledged messages lost, e.g. {lost[:3]}")
        if bad:
            fig["violations"].append(f"run {r}: {len(bad)} corrupt values served, e.g. {bad[:3]}")
        clean = True
        for p in range(PARTITIONS):
            for seg in sorted((data_dir / "topics" / TOPIC / str(p)).glob("*.log")):
                rc, _entries = _dump(seg)
                clean = clean and rc == 0
        fig["dump_clean_after"] += int(clean)
        if not clean:
            fig["violations"].append(f"run {r}: `shmlog dump` still finds bad batches after recovery")
        log(f"power loss {r + 1}/{runs}: {len(durable)} durably acknowledged, {len(lost)} lost")
    with contextlib.suppress(OSError):
        for line in (data_dir / "supervisor.log").read_text().splitlines():
            if "bytes removed" in line:
                with contextlib.suppress(ValueError, IndexError):
                    fig["truncated_bytes"] += int(line.split(" bytes removed")[0].rsplit(" ", 1)[1])
    with shmlog.connect(data_dir, **broker) as c:
        c.shutdown(timeout=30)
    left = [n for n in os.listdir("/dev/shm") if n.startswith(f"shmlog-{cid}-")]
    if left:
        fig["violations"].append(f"leaked segments {left}")
    return fig
