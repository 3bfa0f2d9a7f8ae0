"""The soak: a bounded real pipeline under random SIGKILLs, then the checks.

Producers, group members (two groups) and a replay reader run as separate
processes (shmlog.soak.worker) against one data dir with a disk topic and a
memory topic. A chaos thread SIGKILLs a random producer, member, reader or
the supervisor every few seconds and restarts what it killed (the
supervisor is restarted by its clients' failover, as in production). At the
end the pipeline drains, shuts down cleanly, and shmlog.soak.checker judges
the workers' logs. The runner never reads or writes the shared memory
itself: it sees what users see.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil

import shmlog
from shmlog import errors

from . import checker

DISK = "soak-disk"
MEMORY = "soak-mem"
GROUPS = ("g1", "g2")
KINDS = ("producer", "member", "reader", "supervisor", "listener")  # listener: with kafka_listener only


class Worker:
    def __init__(self, runner: Runner, kind: str, slot: str, extra: Dict[str, Any]):
        self.runner, self.kind, self.slot, self.extra = runner, kind, slot, extra
        self.incarnation = 0
        self.proc: Optional[subprocess.Popen] = None
        self.expected_exit = False

    def start(self) -> None:
        self.incarnation += 1
        tag = f"{self.slot}.{self.incarnation}"
        args = {"run_dir": str(self.runner.run_dir), "data_dir": str(self.runner.data_dir),
                "broker": self.runner.broker, "tag": tag, **self.extra}
        err = open(self.runner.run_dir / f"stderr-{tag}.txt", "wb")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "shmlog.soak.worker", self.kind, json.dumps(args)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err, close_fds=True)
        finally:
            err.close()
        self.tag = tag

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Runner:
    def __init__(self, run_dir: Path, *, seconds: float, seed: int, kill_every: float,
                 producers: int = 3, members: int = 2, rate: float = 200.0, max_stall: float = 30.0,
                 kinds=None, kafka_listener: Optional[str] = None, log=print):
        self.run_dir = Path(run_dir)
        self.data_dir = self.run_dir / "data"
        self.seconds = seconds
        self.seed = seed
        self.kill_every = kill_every
        self.n_producers = producers
        self.n_members = members
        self.rate = rate
        self.max_stall = max_stall
        self.log = log
        self.rng = random.Random(seed)
        # a supervisor whose clients are all being killed must not exit under us
        self.broker: Dict[str, Any] = {"idle_timeout_s": 30}
        # with a Kafka listener (the supervisor's own process, restarted by
        # it) the chaos kills that too; its restarts are timed and checked
        self.kafka_listener = kafka_listener
        if kafka_listener:
            self.broker["kafka_listener"] = kafka_listener
        self.kinds = tuple(k for k in (kinds or KINDS) if k != "listener" or kafka_listener)
        self.listener_restart_s: List[float] = []
        self.listener_not_restarted: List[str] = []
        self.kills: Dict[str, int] = {k: 0 for k in KINDS}
        self.crashes: List[str] = []
        self.supervisor_restart_s: List[float] = []
        self.workers: List[Worker] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ setup
    def _setup(self) -> shmlog.Cluster:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cluster = shmlog.connect(self.data_dir, **self.broker)
        # small rings so chunks rotate and the memory topic pushes back;
        # small segments so segments roll and the reader replays from disk
        cluster.create_topic(DISK, partitions=3, storage="disk", chunk_bytes=128 << 10, chunk_count=4,
                             segment_bytes=256 << 10, fsync_interval_ms=200)
        cluster.create_topic(MEMORY, partitions=2, storage="memory", chunk_bytes=64 << 10, chunk_count=4)
        return cluster

    def _spawn_all(self, cluster: shmlog.Cluster) -> None:
        for g in GROUPS:
            for i in range(self.n_members):
                self.workers.append(Worker(self, "member", f"{g}m{i}", {"group": g, "topics": [DISK, MEMORY]}))
        self.workers.append(Worker(self, "reader", "r0", {"topic": DISK}))
        for w in self.workers:
            w.start()
        # members first: a memory topic keeps data only for groups that exist
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(len(_group(cluster, g).get("members") or []) >= self.n_members for g in GROUPS):
                break
            time.sleep(0.2)
        for i in range(self.n_producers):
            w = Worker(self, "producer", f"p{i}", {"topics": [DISK, MEMORY], "rate": self.rate, "round_s": 0.1})
            w.start()
            self.workers.append(w)

    # ------------------------------------------------------------ chaos
    def _supervisor_pid(self) -> Optional[int]:
        try:
            pid = int((self.data_dir / "supervisor.lock").read_text().strip())
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and "serve" in p.cmdline():
                return pid
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def _listener_pid(self) -> Optional[int]:
        for p in psutil.process_iter(["cmdline", "status"]):
            cmd = p.info["cmdline"] or []
            if "shmlog.kafka" in cmd and str(self.data_dir) in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
                return p.pid
        return None

    def _listener_answers(self) -> bool:
        """Does the listener answer a Kafka ApiVersions v0, as a client sees it?"""
        host, port = self.kafka_listener.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=2) as s:
                body = struct.pack(">hhih", 18, 0, 1, 4) + b"soak"
                s.sendall(struct.pack(">i", len(body)) + body)
                return len(s.recv(4)) > 0
        except OSError:
            return False

    def _kill_listener(self) -> bool:
        pid = self._listener_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        while not self._stop.is_set():
            new = self._listener_pid()
            if new is not None and new != pid and self._listener_answers():
                self.listener_restart_s.append(time.monotonic() - t0)
                return True
            if time.monotonic() - t0 > 60:
                self.listener_not_restarted.append(f"listener pid {pid} killed; no new listener answered in 60s")
                return True
            time.sleep(0.02)
        return True

    def _chaos(self, cluster: shmlog.Cluster) -> None:
        while not self._stop.wait(self.kill_every):
            kind = self.rng.choice(self.kinds)
            if kind == "listener":
                if not self._kill_listener():
                    continue
            elif kind == "supervisor":
                pid = self._supervisor_pid()
                if pid is None:
                    continue
                os.kill(pid, signal.SIGKILL)
                t0 = time.monotonic()
                while time.monotonic() - t0 < 60 and not self._stop.is_set():
                    new = self._supervisor_pid()
                    if new is not None and new != pid:
                        try:
                            cluster.request("stats")
                            break
                        except errors.ShmlogError:
                            pass
                    time.sleep(0.02)
                self.supervisor_restart_s.append(time.monotonic() - t0)
            else:
                pool = [w for w in self.workers if w.kind == kind]
                w = self.rng.choice(pool)
                with self._lock:
                    w.kill()
                    w.start()
            self.kills[kind] += 1

    def _watch_crashes(self) -> None:
        with self._lock:
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None and not w.expected_exit:
                    tail = ""
                    with contextlib.suppress(OSError):
                        tail = (self.run_dir / f"stderr-{w.tag}.txt").read_text()[-400:]
                    self.crashes.append(f"{w.kind} {w.tag} exited {w.proc.returncode}: {tail}")
                    self.log(f"soak: {w.kind} {w.tag} exited {w.proc.returncode} unasked; restarting")
                    w.start()

    # ------------------------------------------------------------ the run
    def run(self) -> Dict[str, Any]:
        t_start = time.monotonic()
        cluster = self._setup()
        hung: List[str] = []
        drained = True
        try:
            self._spawn_all(cluster)
            self.log(f"soak: {len(self.workers)} workers, {self.seconds:.0f}s, kill every {self.kill_every}s, "
                     f"seed {self.seed}, run dir {self.run_dir}")
            t_run = time.monotonic()
            chaos = threading.Thread(target=self._chaos, args=(cluster,), name="soak-chaos", daemon=True)
            chaos.start()
            next_note = t_run + 30
            while time.monotonic() - t_run < self.seconds:
                time.sleep(0.5)
                self._watch_crashes()
                if time.monotonic() >= next_note:
                    next_note += 30
                    self.log(f"soak: {time.monotonic() - t_run:.0f}s, kills {self.kills}")
            self._stop.set()
            chaos.join()
            run_s = time.monotonic() - t_run
            # drain: producers finish their round and exit; consumers catch up
            (self.run_dir / "stop-producers").touch()
            hung += self._wait_exit([w for w in self.workers if w.kind == "producer"], 60)
            ends = {t: [p.end_offset for p in cluster.describe_topic(t).partitions] for t in (DISK, MEMORY)}
            drained = self._drain(cluster, ends, timeout=max(120.0, self.seconds / 2))
            (self.run_dir / "stop-consumers").touch()
            hung += self._wait_exit(self.workers, 60)
        finally:
            self._stop.set()
            for w in self.workers:
                w.kill()
            cid = cluster.cluster_id
            with contextlib.suppress(errors.ShmlogError):
                cluster.shutdown(timeout=30)
            cluster.close()
        leaks = self._leaks(cid)
        figures = checker.check(self.run_dir, ends, GROUPS, DISK)
        figures.update({
            "seconds": round(run_s, 1), "seed": self.seed, "kill_every_s": self.kill_every,
            "kills": dict(self.kills), "kills_total": sum(self.kills.values()),
            "supervisor_restart_max_s": round(max(self.supervisor_restart_s, default=0.0), 3),
            "listener_restart_max_s": round(max(self.listener_restart_s, default=0.0), 3),
            "listener_not_restarted": self.listener_not_restarted,
            "crashed_workers": self.crashes, "hung_workers": hung, "drained": drained,
            "leaked_segments": leaks["segments"], "leaked_processes": leaks["processes"],
            "wall_s": round(time.monotonic() - t_start, 1),
            "throughput_msgs_s": round(figures["acked"] / run_s, 1) if run_s else 0.0,
            "max_stall_allowed_s": self.max_stall,
        })
        figures["violations"] = checker.violations(figures)
        return figures

    def _wait_exit(self, workers: List[Worker], timeout: float) -> List[str]:
        with self._lock:
            for w in workers:
                w.expected_exit = True
        deadline = time.monotonic() + timeout
        hung = []
        for w in workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hung.append(f"{w.kind} {w.tag}")
                w.kill()
        return hung

    def _drain(self, cluster: shmlog.Cluster, ends: Dict[str, List[int]], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._watch_crashes()
            ok = True
            for g in GROUPS:
                committed = {(p["topic"], p["partition"]): p.get("committed")
                             for p in _group(cluster, g).get("partitions") or []}
                for t, e in ends.items():
                    for p, end in enumerate(e):
                        if (committed.get((t, p)) or 0) < end:
                            ok = False
            reader = checker.reader_positions(self.run_dir)
            if any(reader.get(p, 0) < end for p, end in enumerate(ends[DISK])):
                ok = False
            if ok:
                return True
            time.sleep(0.5)
        return False

    def _leaks(self, cid: str) -> Dict[str, List[Any]]:
        deadline = time.monotonic() + 10
        while True:
            segs = sorted(n for n in os.listdir("/dev/shm") if cid and n.startswith(f"shmlog-{cid}-"))
            procs = []
            needle = str(self.data_dir)
            for p in psutil.process_iter(["pid", "cmdline", "status"]):
                try:
                    if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                        continue
                    if any(needle in a for a in (p.info["cmdline"] or [])):
                        procs.append(f"{p.pid} {' '.join(p.info['cmdline'])[:100]}")
                except psutil.Error:
                    continue
            if (not segs and not procs) or time.monotonic() > deadline:
                return {"segments": segs, "processes": procs}
            time.sleep(0.2)


def _group(cluster: shmlog.Cluster, g: str) -> Dict[str, Any]:
    try:
        return cluster.describe_group(g)
    except errors.ShmlogError:
        return {}
