"""Helpers shared by the broker tests (supervisor, cluster, producer,
consumer, reaper).

- `running_cluster(data_dir, ...)` connects (auto-starting a supervisor) and
  always stops that supervisor on the way out, whatever the test did to it.
- `Children` forks real client processes ("fork" context) and always kills
  and joins them; a child reports its result (or its traceback) through a
  pickle file, which survives the child being SIGKILLed by someone else.
- `murmur2_ref` is an independent pure-Python transcription of Kafka's
  Utils.murmur2, so partition placement is checked against Kafka's rule and
  not against the C code under test.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import psutil

import shmlog
from shmlog.client.cluster import _connect_socket, supervisor_lock_free  # noqa: F401 (re-exported for tests)

FORK = multiprocessing.get_context("fork")
SHM_DIR = Path("/dev/shm")

# small regions: 4 x 64 KiB per partition
SMALL = {"storage": "memory", "chunk_bytes": 65536, "chunk_count": 4}
# roomy regions: 4 x 1 MiB per partition (a whole test's data fits)
ROOMY = {"storage": "memory", "chunk_bytes": 1 << 20, "chunk_count": 4}


# ---------------------------------------------------------------- Kafka's murmur2
def murmur2_ref(data: bytes) -> int:
    """Kafka's org.apache.kafka.common.utils.Utils.murmur2, signed 32-bit."""
    m = 0x5BD1E995
    r = 24
    mask = 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    rest = length % 4
    tail = 4 * n4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def kafka_partition(key: bytes, num_partitions: int) -> int:
    """Kafka's BuiltInPartitioner.partitionForKey: toPositive(murmur2) % n."""
    return (murmur2_ref(key) & 0x7FFFFFFF) % num_partitions


# ---------------------------------------------------------------- polling
def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.01, what: str = "condition"):
    """Poll pred() until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- supervisors
def cluster_id(data_dir: Path) -> Optional[str]:
    try:
        return (Path(data_dir) / "cluster_id").read_text().strip() or None
    except OSError:
        return None


def segments_of(data_dir: Path) -> List[str]:
    cid = cluster_id(data_dir)
    if not cid:
        return []
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(f"shmlog-{cid}-"))


def partition_regions(data_dir: Path) -> List[str]:
    """The partition regions (shmlog-<cluster>-<topic id>-<partition>) of data_dir's cluster."""
    return [n for n in segments_of(data_dir) if n.count("-") == 3 and n.rsplit("-", 2)[-1].isdigit()
            and n.rsplit("-", 2)[-2].isdigit()]


def _is_supervisor_of(pid: int, data_dir: Path) -> bool:
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "serve" in cmd and str(Path(data_dir).absolute()) in cmd


def supervisor_pid(data_dir: Path) -> Optional[int]:
    """The pid in the supervisor lock file, if that process is a live
    supervisor of data_dir (a stale pid after a SIGKILL gives None)."""
    try:
        txt = (Path(data_dir) / "supervisor.lock").read_text().strip()
    except OSError:
        return None
    if not txt.isdigit():
        return None
    pid = int(txt)
    return pid if _is_supervisor_of(pid, data_dir) else None


def supervisors_of(data_dir: Path) -> List[int]:
    """Every live `shmlog serve` process for data_dir (by command line)."""
    out = []
    needle = str(Path(data_dir).absolute())
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "serve" in cmd and needle in cmd:
            out.append(p.pid)
    return out




def pid_gone(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_supervisor(data_dir: Path, cluster: Optional[shmlog.Cluster] = None, timeout: float = 10.0) -> None:
    """Stop whatever supervisor serves data_dir. Fails (after SIGKILLing it)
    if a clean shutdown did not stop it."""
    # timeout=0: wait here instead, where a zombie counts as gone (a detached
    # supervisor is reaped by pid 1, which may take seconds on some hosts)
    if cluster is not None and not cluster.closed:
        cluster.shutdown(timeout=0)
    deadline = time.monotonic() + 2
    pids = supervisors_of(data_dir)
    while pids and time.monotonic() < deadline:
        time.sleep(0.01)
        pids = [p for p in pids if not pid_gone(p)]
    if pids:
        try:
            with contextlib.closing(shmlog.connect(data_dir, start=False)) as c:
                c.shutdown(timeout=0)
        except shmlog.ShmlogError:
            pass
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if not pid_gone(p)]
            time.sleep(0.02)
    if pids:
        for p in pids:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        raise AssertionError(f"supervisor(s) {pids} of {data_dir} did not stop on shutdown")


@contextlib.contextmanager
def running_cluster(data_dir: Path, **broker_config: Any) -> Iterator[shmlog.Cluster]:
    """shmlog.connect(data_dir, ...) whose supervisor is always stopped after."""
    broker_config.setdefault("idle_timeout_s", 30)
    c = shmlog.connect(data_dir, **broker_config)
    try:
        yield c
    finally:
        stop_supervisor(data_dir, c)


# ---------------------------------------------------------------- raw control socket
def raw_socket(data_dir: Path, timeout: float = 5.0) -> socket.socket:
    """An AF_UNIX connection to <data_dir>/shmlog.sock (the client's own
    connect, through /proc/self/fd so a deep tmp path fits sun_path)."""
    return _connect_socket(Path(data_dir), timeout)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def recv_frame(s: socket.socket) -> Optional[bytes]:
    """One reply body, or None on EOF."""
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return body


# ---------------------------------------------------------------- child processes
def _run_child(out_path: str, fn: Callable, args: tuple) -> None:
    try:
        payload = ("ok", fn(*args))
    except BaseException:
        payload = ("error", traceback.format_exc())
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(payload, f)
    os.replace(tmp, out_path)


class Children:
    """Forked client processes; all killed and joined on exit."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = Path(tmp_path)
        self.procs: List[Any] = []
        self._n = 0

    def start(self, fn: Callable, *args: Any) -> Any:
        self._n += 1
        out = str(self.tmp_path / f"child-{self._n}.pickle")
        p = FORK.Process(target=_run_child, args=(out, fn, args), daemon=True)
        p.start()
        p.out_path = out
        self.procs.append(p)
        return p

    @staticmethod
    def result(p: Any, timeout: float = 60.0) -> Any:
        """Join p and return what its function returned (re-raising its error)."""
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join(5)
            raise AssertionError(f"child {p.pid} did not finish within {timeout}s")
        try:
            with open(p.out_path, "rb") as f:
                status, value = pickle.load(f)
        except FileNotFoundError:
            raise AssertionError(f"child {p.pid} exited with {p.exitcode} and no result") from None
        if status != "ok":
            raise AssertionError(f"child {p.pid} failed:\n{value}")
        return value

    def kill_all(self) -> None:
        for p in self.procs:
            if p.is_alive():
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGCONT)
                p.kill()
        for p in self.procs:
            p.join(10)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc) -> None:
        self.kill_all()


def collect(consumer, want: int, timeout: float, what: str = "messages") -> List[Any]:
    """Consume until `want` messages have arrived (fails on timeout)."""
    got: List[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(got)} of {want} {what} within {timeout}s")
        got.extend(consumer.consume(max_messages=want - len(got), timeout=min(left, 0.5)))
    return got


def by_partition(msgs) -> Dict[int, List[Any]]:
    out: Dict[int, List[Any]] = {}
    for m in msgs:
        out.setdefault(m.partition, []).append(m)
    return out
