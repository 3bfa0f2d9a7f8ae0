"""The supervisor: one per data dir, never on the data path.

It owns topic metadata, creates and removes the partition regions, serves
control requests on <data_dir>/shmlog.sock, and runs the reaper (dead or
stuck producers and readers). Producers and consumers keep moving while it
restarts: everything they need is in the regions they have mapped.

It never trusts a request: every frame is size-limited and schema-checked; a
bad one gets an error reply (or its connection closed), everybody else is served.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import selectors
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import posix_ipc

from .. import config as cfgmod
from .. import errors, protocol
from ..core.log import PartitionLog, region_usage, unlink_region
from ..osutil import pid_alive, write_json_atomic
from ..protocol import LOCK_NAME, SOCKET_NAME, ensure_data_dir
from . import shm_budget
from .coordinator import Coordinator
from .kafka_process import ListenerProcess
from .memory_offsets import MemoryOffsets
from .mirrors import MirrorKeeper
from .shm_budget import ShmBudget, added_bytes, human, region_bytes, topic_bytes
from .storage import Storage

log = logging.getLogger("shmlog.supervisor")

META_NAME = "meta.json"
CLUSTER_ID_NAME = "cluster_id"


def region_name(cluster_id: str, topic_id: int, partition: int) -> str:
    return f"/shmlog-{cluster_id}-{topic_id}-{partition}"


def cluster_id_of(data_dir: Path) -> str:
    p = data_dir / CLUSTER_ID_NAME
    try:
        cid = p.read_text().strip()
        if cid:
            return cid
    except FileNotFoundError:
        pass
    cid = secrets.token_hex(4)
    tmp = p.with_suffix(".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:  # owner-only
        f.write(cid + "\n")
    os.replace(tmp, p)
    return cid


class AlreadyRunning(errors.ShmlogError):
    pass


# replies a client has not read yet; past this it is dropped
MAX_PENDING_OUT = 8 << 20


class _Conn:
    __slots__ = ("sock", "buf", "session", "pid", "out", "mu")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.session = False
        self.pid = 0
        self.out = bytearray()  # encoded replies the socket did not take yet
        self.mu = threading.Lock()  # send_reply runs on the serving thread and the spiller


class Supervisor:
    def __init__(self, data_dir: Path, *, auto: bool = False, **broker_config: Any):
        self.data_dir = ensure_data_dir(Path(data_dir))
        self.cfg = cfgmod.broker_config(broker_config)
        self.auto = auto
        self.cluster_id = ""
        self.meta: Dict[str, Any] = {"next_topic_id": 1, "topics": {}}
        self.logs: Dict[Tuple[int, int], PartitionLog] = {}
        self.lock = threading.RLock()  # guards meta and logs against the reaper
        self.stop_event = threading.Event()
        self._lock_fd: Optional[int] = None
        self._listener: Optional[socket.socket] = None
        self._sel: Optional[selectors.BaseSelector] = None
        self._conns: Dict[int, _Conn] = {}
        self.threads: List[threading.Thread] = []
        self._idle_since = time.monotonic()
        self.handlers: Dict[str, Callable[[Dict[str, Any], _Conn], Dict[str, Any]]] = {
            "hello": self._op_hello,
            "ping": lambda m, c: {},
            "create_topic": self._op_create_topic,
            "delete_topic": self._op_delete_topic,
            "alter_topic": self._op_alter_topic,
            "add_partitions": self._op_add_partitions,
            "topics": self._op_topics,
            "describe_topic": self._op_describe_topic,
            "metadata": self._op_metadata,
            "shutdown": self._op_shutdown,
            "stats": self._op_stats,
        }
        # roles (spiller, group coordinator) plug in here
        self.tickers: List[Callable[[], None]] = []
        self.on_topic_created: List[Callable[[str], None]] = []
        self.on_topic_deleted: List[Callable[[str, Dict[str, Any]], None]] = []
        self.on_stop: List[Callable[[], None]] = []
        self.on_start: List[Callable[[], None]] = []
        self.on_partitions_added: List[Callable[[str, int, int], None]] = []
        # regions of this cluster, other than partition regions, that the
        # stale-region sweep at start must keep (the groups region)
        self.keep_regions: List[Callable[[], List[str]]] = []
        self.reaped_processes = 0
        self.started_ns = time.time_ns()
        # the roles that live in their own modules, wired here explicitly
        self.shm = ShmBudget(self)
        self.coordinator = Coordinator(self)
        self.storage = Storage(self)
        self.memory_offsets = MemoryOffsets(self)
        self.coordinator.attach()
        self.storage.attach()
        self.memory_offsets.attach()
        self._held_log_at = 0.0
        # the Kafka listener's process, when kafka_listener is set
        self.kafka_listener = ListenerProcess.attach(self)
        self.mirrors = MirrorKeeper(self)
        self.mirrors.attach()

    # ------------------------------------------------------------ start/stop
    def acquire_lock(self) -> None:
        path = self.data_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            try:
                other = os.pread(fd, 32, 0).decode().strip() or "?"
            except OSError:
                other = "?"
            os.close(fd)
            raise AlreadyRunning(
                f"another supervisor (pid {other}) is already serving {self.data_dir}; "
                f"connect to it, or stop it first",
                what=str(self.data_dir),
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def start(self) -> None:
        self.acquire_lock()
        self.cluster_id = cluster_id_of(self.data_dir)
        meta_path = self.data_dir / META_NAME
        if meta_path.exists():
            try:
                self.meta = json.loads(meta_path.read_text())
            except ValueError as exc:
                raise errors.StorageError(
                    f"metadata file {meta_path} is corrupt ({exc}); restore it from a backup",
                    what=str(meta_path),
                ) from None
        self._open_regions()
        self._reclaim_stale_regions()
        self._bind()
        for fn in self.on_start:
            fn()
        for fn in (self._reaper_loop,):
            t = threading.Thread(target=fn, name=fn.__name__, daemon=True)
            t.start()
            self.threads.append(t)

    def _bind(self) -> None:
        path = self.data_dir / SOCKET_NAME
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind through /proc/self/fd so a deep data dir never hits the
        # 108-byte sun_path limit
        dfd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            old = os.umask(0o177)
            try:
                s.bind(f"/proc/self/fd/{dfd}/{SOCKET_NAME}")
            finally:
                os.umask(old)
        finally:
            os.close(dfd)
        os.chmod(path, 0o600)
        s.listen(128)
        s.setblocking(False)
        self._listener = s

    def _open_regions(self) -> None:
        for name, t in self.meta["topics"].items():
            for p in range(t["config"]["partitions"]):
                self._open_partition(name, t, p)

    def _open_partition(self, name: str, t: Dict[str, Any], p: int, *, initial_offset: int = 0) -> PartitionLog:
        rname = region_name(self.cluster_id, t["id"], p)
        what = f"topic {name!r} partition {p}"
        c = t["config"]
        try:
            plog = PartitionLog.attach(rname, what=what)
            log.info("re-attached surviving region %s", rname)
            try:
                # pages an older supervisor never allocated: allocate them now,
                # so a full tmpfs is this warning, not a SIGBUS in a producer
                plog.reserve_pages()
            except (errors.StorageError, OSError) as exc:
                log.warning("%s: %s", what, exc)
        except posix_ipc.ExistentialError:
            plog = PartitionLog.create(
                rname, chunk_bytes=c["chunk_bytes"], chunk_count=c["chunk_count"],
                max_batch_bytes=cfgmod.max_batch_bytes(c["chunk_bytes"], c["max_message_bytes"]),
                gate_readers=self.gates_readers(c), gate_spill=self.gates_spill(c),
                partition=p, initial_offset=self.initial_offset(name, t, p, initial_offset),
                prefault=False, reserve=True, reserve_ring=c["storage"] != "disk", what=what,
            )
        except errors.ShmlogError as exc:
            log.error("region %s is unusable (%s); recreating it", rname, exc)
            unlink_region(rname)
            return self._open_partition(name, t, p, initial_offset=initial_offset)
        plog.hdr.supervisor_pid = os.getpid()
        self.logs[(t["id"], p)] = plog
        return plog

    # storage plugs in here: what gates chunk reuse, and where offsets resume
    def gates_readers(self, c: Dict[str, Any]) -> bool:
        return c["storage"] == "memory" or not self.spills()

    def gates_spill(self, c: Dict[str, Any]) -> bool:
        return c["storage"] == "disk" and self.spills()

    def spills(self) -> bool:
        return True  # every disk topic is spilled by self.storage

    def initial_offset(self, name: str, t: Dict[str, Any], p: int, default: int) -> int:
        if t["config"]["storage"] == "memory":
            return self.memory_offsets.initial_offset(name, t, p, default)
        return self.storage.initial_offset(name, t, p, default)

    def _reclaim_stale_regions(self) -> None:
        keep = {plog.name.lstrip("/") for plog in self.logs.values()}
        for fn in self.keep_regions:
            keep.update(n.lstrip("/") for n in fn())
        prefix = f"shmlog-{self.cluster_id}-"
        try:
            names = os.listdir("/dev/shm")
        except FileNotFoundError:
            return
        for n in names:
            if n.startswith(prefix) and n not in keep:
                if unlink_region("/" + n):
                    log.info("reclaimed stale region /%s", n)

    def save_meta(self) -> None:
        write_json_atomic(self.data_dir / META_NAME, self.meta)

    def serve_forever(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not self.stop_event.is_set():
                for key, events in sel.select(timeout=0.1):
                    if key.data is None:
                        self._accept(sel)
                        continue
                    if events & selectors.EVENT_WRITE:
                        self._flush(sel, key.data)
                    if events & selectors.EVENT_READ and key.data.sock.fileno() >= 0:
                        self._readable(sel, key.data)
                if self.auto and not self._live_clients():
                    if time.monotonic() - self._idle_since >= self.cfg["idle_timeout_s"] \
                            and not self._holds_unconsumed():
                        log.info("no clients for %.1fs: exiting", self.cfg["idle_timeout_s"])
                        break
        finally:
            sel.close()

    def _live_clients(self) -> bool:
        """Does a client keep an auto-started supervisor up? (Our own Kafka
        listener only while Kafka clients are connected to it.)"""
        lp = self.kafka_listener
        if lp is None or not lp.pid:
            return bool(self._conns)
        live = lp.holds_supervisor_up(c.pid for c in self._conns.values())
        if live:
            self._idle_since = time.monotonic()  # idle time counts from the last one
        return live

    def _holds_unconsumed(self) -> bool:
        """An auto-started supervisor never drops messages on its own: it
        stays up while a memory topic holds messages that a group with
        committed offsets on it has not consumed (its lag > 0). Stopping it
        explicitly (shutdown, SIGTERM, `serve --stop`) still drops them."""
        with self.lock:
            held = self.coordinator.unconsumed_memory()
        if held:
            now = time.monotonic()
            if now - self._held_log_at >= 60:
                self._held_log_at = now
                g, topic, p, lag = held[0]
                log.info("idle, but not exiting: group %r has not consumed %d message(s) of memory "
                         "topic %r partition %d (%d partition(s) in all); they would be lost. "
                         "`shmlog serve --stop` stops it anyway", g, lag, topic, p, len(held))
            self._idle_since = now - self.cfg["idle_timeout_s"] + 1.0  # look again in a second
        return bool(held)

    def stop(self) -> None:
        self.stop_event.set()

    def shutdown(self) -> None:
        """Clean exit: nothing of ours remains (invariant 5)."""
        self.stop_event.set()
        for fn in self.on_stop:
            try:
                fn()
            except Exception:
                log.exception("stop hook failed")
        for t in self.threads:
            t.join(timeout=5)
        for c in list(self._conns.values()):
            try:
                if c.session:
                    protocol.send(c.sock, {"op": "bye"})
            except OSError:
                pass
            c.sock.close()
        self._conns.clear()
        if self._listener is not None:
            self._listener.close()
            try:
                (self.data_dir / SOCKET_NAME).unlink()
            except FileNotFoundError:
                pass
        with self.lock:
            # the memory topics' offsets resume here next time (never reused)
            self.memory_offsets.write(self.memory_offsets.snapshot())
            for plog in self.logs.values():
                plog.close()
                plog.unlink()
            self.logs.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------ connections
    def _accept(self, sel) -> None:
        try:
            s, _ = self._listener.accept()
        except OSError:
            return
        s.setblocking(False)
        c = _Conn(s)
        self._conns[s.fileno()] = c
        sel.register(s, selectors.EVENT_READ, c)

    def _drop(self, sel, c: _Conn) -> None:
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        self._conns.pop(c.sock.fileno(), None)
        c.sock.close()
        if not self._conns:
            self._idle_since = time.monotonic()

    def _readable(self, sel, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, c)
            return
        c.buf += data
        self._process(sel, c)

    def _process(self, sel, c: _Conn) -> None:
        # while replies are pending the client must read first: frames stay
        # buffered, and the socket is not read (EVENT_WRITE only)
        while len(c.buf) >= 4 and not c.out:
            n = int.from_bytes(c.buf[:4], "big")
            if n > protocol.MAX_FRAME:
                self._reply_error(c, "ProtocolError",
                                  f"control frame of {n} bytes exceeds {protocol.MAX_FRAME}")
                self._drop(sel, c)
                return
            if len(c.buf) < 4 + n:
                return
            body = bytes(c.buf[4 : 4 + n])
            del c.buf[: 4 + n]
            self._dispatch(c, body)

    def _reply_error(self, c: _Conn, kind: str, message: str) -> None:
        self.send_reply(c, {"ok": False, "error": kind, "message": message})

    def send_reply(self, c: _Conn, msg: Dict[str, Any]) -> None:
        """Never blocks: what the socket does not take now is sent by the
        serving loop when the client reads (a client that never reads must
        not stall the supervisor for everybody)."""
        data = protocol.encode(msg)
        with c.mu:
            if not c.out:
                try:
                    n = c.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    return
                data = data[n:]
                if not data:
                    return
            c.out += data
            if len(c.out) > MAX_PENDING_OUT:
                try:
                    c.sock.shutdown(socket.SHUT_RDWR)  # the serving loop sees EOF and drops it
                except OSError:
                    pass
                return
        try:
            self._sel.modify(c.sock, selectors.EVENT_WRITE, c)
        except (KeyError, ValueError, OSError, AttributeError):
            pass

    def _flush(self, sel, c: _Conn) -> None:
        with c.mu:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = -1
            if n >= 0:
                del c.out[:n]
                if c.out:
                    return
        if n < 0:
            self._drop(sel, c)
            return
        sel.modify(c.sock, selectors.EVENT_READ, c)
        self._process(sel, c)  # the frames that arrived meanwhile

    def _dispatch(self, c: _Conn, body: bytes) -> None:
        op = "request"
        try:
            msg = protocol.decode_body(body)
            op = protocol.field(msg, "op", str)
            handler = self.handlers.get(op)
            if handler is None:
                raise protocol.ProtocolError(f"unknown op {op!r}")
            with self.lock:
                reply = handler(msg, c)
            if reply is None:
                return  # handler replies later (long polls)
            reply.setdefault("ok", True)
            self.send_reply(c, reply)
        except protocol.ProtocolError as exc:
            self._reply_error(c, "ProtocolError", str(exc))
        except errors.ShmlogError as exc:
            self._reply_error(c, type(exc).__name__, str(exc))
        except OSError as exc:
            # the data dir failed under a request (disk full, read-only, EIO):
            # the user's problem to fix, so say which file and why
            log.error("request %r: %s", op, exc)
            self._reply_error(c, "StorageError",
                              f"{op}: {exc.strerror or exc} ({exc.filename or 'data dir'}, errno {exc.errno}); "
                              f"it did not take effect: free space or make {self.data_dir} writable, "
                              f"then retry")
        except Exception as exc:  # never let one request take the supervisor down
            log.exception("request failed")
            self._reply_error(c, "ShmlogError", f"internal error: {exc!r}")

    # ------------------------------------------------------------ ops
    def _op_hello(self, m, c: _Conn):
        c.pid = protocol.field(m, "pid", int, required=False, default=0)
        c.session = bool(protocol.field(m, "session", bool, required=False, default=False))
        return {"cluster_id": self.cluster_id, "supervisor_pid": os.getpid()}

    def topic_meta(self, name: Any) -> Dict[str, Any]:
        cfgmod.validate_topic_name(name)
        t = self.meta["topics"].get(name)
        if t is None:
            raise errors.UnknownTopic(f"unknown topic {name!r}", what=name)
        return t

    def _op_create_topic(self, m, c):
        name = cfgmod.validate_topic_name(protocol.field(m, "name", str))
        conf = protocol.field(m, "config", dict, required=False, default={})
        if name in self.meta["topics"]:
            raise errors.TopicExists(f"topic {name!r} already exists", what=name)
        cfg = cfgmod.topic_config(self.shm.topic_defaults(conf))
        self.shm.check(name, topic_bytes(cfg),
                       f"creating topic {name!r} with {cfg['partitions']} partition(s) of "
                       f"{self._geometry(cfg)}")
        tid = self.meta["next_topic_id"]
        t = {"id": tid, "config": cfg, "created_ms": int(time.time() * 1000)}
        try:
            for p in range(cfg["partitions"]):
                self._open_partition(name, t, p)
        except BaseException:
            self._drop_partitions(tid, 0, cfg["partitions"])
            raise
        self.meta["next_topic_id"] = tid + 1
        self.meta["topics"][name] = t
        self.save_meta()
        for fn in self.on_topic_created:
            fn(name)
        return {"topic": self.topic_info(name)}

    def _op_delete_topic(self, m, c):
        name = protocol.field(m, "name", str)
        t = self.topic_meta(name)
        for p in range(t["config"]["partitions"]):
            plog = self.logs.pop((t["id"], p), None)
            if plog is not None:
                plog.mark_deleted()  # attached clients detach
                plog.close()
                plog.unlink()
        del self.meta["topics"][name]
        self.save_meta()
        for fn in self.on_topic_deleted:
            fn(name, t)
        return {}

    ALTERABLE = {"retention_ms", "retention_bytes", "segment_bytes", "segment_ms", "fsync_interval_ms"}

    def _op_alter_topic(self, m, c):
        name = protocol.field(m, "name", str)
        conf = protocol.field(m, "config", dict)
        t = self.topic_meta(name)
        bad = set(conf) - self.ALTERABLE
        ring = sorted(bad & set(shm_budget.GEOMETRY_KEYS))
        if ring:
            raise shm_budget.ring_alter_error(name, ring, self._geometry(t["config"]))
        if bad:
            raise errors.InvalidConfig(
                f"cannot alter {', '.join(sorted(bad))} of topic {name!r}: only "
                f"{', '.join(sorted(self.ALTERABLE))} change live (partitions: add_partitions)",
                what=name,
            )
        t["config"] = cfgmod.topic_config(conf, base=t["config"])
        self.save_meta()
        return {"topic": self.topic_info(name)}

    def _op_add_partitions(self, m, c):
        name = protocol.field(m, "name", str)
        total = protocol.field(m, "partitions", int)
        t = self.topic_meta(name)
        cur = t["config"]["partitions"]
        if total <= cur:
            raise errors.InvalidConfig(
                f"topic {name!r} has {cur} partitions; add_partitions needs a larger total, got {total}",
                what=name,
            )
        new_cfg = cfgmod.topic_config({"partitions": total}, base=t["config"])
        self.shm.check(name, added_bytes(new_cfg, cur, total),
                       f"adding {total - cur} partition(s) of {self._geometry(new_cfg)} to topic {name!r}")
        try:
            for p in range(cur, total):
                self._open_partition(name, t, p)
        except BaseException:
            self._drop_partitions(t["id"], cur, total)
            raise
        t["config"] = new_cfg
        self.save_meta()
        for fn in self.on_partitions_added:
            fn(name, cur, total)
        return {"topic": self.topic_info(name)}

    def _drop_partitions(self, tid: int, first: int, end: int) -> None:
        """Undo a create or add that failed part way: the regions it made go."""
        for p in range(first, end):
            plog = self.logs.pop((tid, p), None)
            if plog is not None:
                plog.close()
                plog.unlink()

    @staticmethod
    def _geometry(cfg: Dict[str, Any]) -> str:
        return (f"{human(region_bytes(cfg))} each (chunk_count={cfg['chunk_count']} x "
                f"chunk_bytes={cfg['chunk_bytes']}, plus the header)")

    def _op_topics(self, m, c):
        return {"topics": {n: self.topic_info(n) for n in sorted(self.meta["topics"])}}

    def _op_describe_topic(self, m, c):
        name = protocol.field(m, "name", str)
        self.topic_meta(name)
        return {"topic": self.topic_info(name)}

    def _op_metadata(self, m, c):
        name = protocol.field(m, "name", str)
        t = self.topic_meta(name)
        return {
            "name": name,
            "topic_id": t["id"],
            "config": t["config"],
            "regions": [region_name(self.cluster_id, t["id"], p) for p in range(t["config"]["partitions"])],
        }

    def _op_shutdown(self, m, c):
        self.stop_event.set()
        return {}

    def _op_stats(self, m, c):
        return {"stats": self.stats()}

    # ------------------------------------------------------------ info
    def partition_info(self, name: str, t: Dict[str, Any], p: int) -> Dict[str, Any]:
        plog = self.logs.get((t["id"], p))
        if plog is None or plog.closed:
            return {"partition": p, "start_offset": 0, "end_offset": 0, "durable_offset": 0, "bytes": 0}
        h = plog.hdr
        end = plog.end_offset()
        start = plog.start_offset
        in_use = plog.chunks_in_use()
        held = plog.chunks_held()
        used, active = plog.used_bytes()
        ring = plog.chunk_count * plog.chunk_bytes
        usage = region_usage(plog.name)
        info = {
            "partition": p,
            "start_offset": start,
            "end_offset": end,
            "durable_offset": h.durable_offset if t["config"]["storage"] == "disk" else end,
            # a memory topic's log is its shared memory: the bytes of data it
            # holds (a disk topic's storage replaces this with segment bytes)
            "bytes": used,
            # sizes, each named for what it measures (the same words in
            # stats, topics describe, top and Prometheus):
            "shm_reserved_bytes": plog.reserved_bytes(),  # as the budget's account counts it
            "chunks_released": plog.chunks_released(),
            "shm_resident_bytes": usage[1] if usage else None,  # its pages in memory
            "shm_used_bytes": used,  # bytes of batches in chunks that hold data
            # what producers cannot overwrite yet, over the ring: an empty
            # partition is 0 (its active chunk counts by what it holds)
            "fill": 0.0 if held <= 0 else min(1.0, ((held - 1) * plog.chunk_bytes + active) / ring),
            "chunks_in_use": in_use,
            "chunks_held": held,
            "chunk_count": plog.chunk_count,
            "chunk_bytes": plog.chunk_bytes,
            "aborted_batches": h.aborted_batches,
            "rotations": h.rotations,
        }
        if t["config"]["storage"] == "disk":
            self.storage.describe_into(t, p, info)
        return info

    def topic_info(self, name: str) -> Dict[str, Any]:
        t = self.meta["topics"][name]
        return {
            "name": name,
            "topic_id": t["id"],
            "config": t["config"],
            "partitions": [self.partition_info(name, t, p) for p in range(t["config"]["partitions"])],
        }

    def stats(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"supervisor_pid": os.getpid(), "clients": len(self._conns),
                               "reaped_processes": self.reaped_processes, "topics": {}}
        try:
            for name in self.meta["topics"]:
                info = self.topic_info(name)
                t = self.meta["topics"][name]
                for pi in info["partitions"]:
                    plog = self.logs.get((t["id"], pi["partition"]))
                    if plog is None or plog.closed:
                        continue
                    pi["producers"], pi["readers"] = plog.slot_table()
                out["topics"][name] = info
        except Exception as exc:
            # a bug in one figure must not hide the others (storage's below)
            log.exception("supervisor stats failed; answering with topic info only")
            out["stats_error"] = repr(exc)
            out["topics"] = {n: self.topic_info(n) for n in self.meta["topics"]}
        out["storage"] = self.storage.stats()
        try:
            out["shm"] = self.shm.stats()
        except Exception as exc:
            log.exception("shared-memory stats failed")
            out["shm"] = {"error": repr(exc)}
        return out

    # ------------------------------------------------------------ reaper
    def _reaper_loop(self) -> None:
        interval = self.cfg["reaper_interval_ms"] / 1000.0
        stuck: Dict[Tuple[int, int], Tuple[int, int, int, float]] = {}
        cursors: Dict[Tuple[int, int], Any] = {}
        while not self.stop_event.wait(interval):
            try:
                with self.lock:
                    items = list(self.logs.items())
                # one liveness check per pid and pass: a consumer of 256
                # partitions holds 256 reader slots
                alive: Dict[int, bool] = {}
                for key, plog in items:
                    if plog.closed:
                        continue
                    self._reap_partition(key, plog, stuck, cursors, alive)
            except Exception:
                log.exception("reaper pass failed")
            for fn in self.tickers:  # one role's failure never stops another's
                try:
                    fn()
                except Exception:
                    log.exception("ticker %r failed", fn)

    def _reap_partition(self, key, plog: PartitionLog, stuck, cursors,
                        alive: Optional[Dict[int, bool]] = None) -> None:
        if alive is None:
            alive = {}

        def is_alive(pid: int) -> bool:
            ok = alive.get(pid)
            if ok is None:
                ok = alive[pid] = pid_alive(pid)
            return ok

        with self.lock:
            if plog.closed:
                return
            producers, readers = plog.slot_pids()
            for slot, pid in producers:
                if not is_alive(pid):
                    n = plog.reap_producer(slot)
                    plog.repair_chunks(pid)
                    self.reaped_processes += 1
                    log.warning("%s: reaped dead producer pid %d (%d claim(s) aborted)", plog.what, pid, n)
            for slot, pid in readers:
                if not is_alive(pid):
                    plog.reap_reader(slot)
                    self.reaped_processes += 1
                    log.warning("%s: released the reader slot of dead pid %d", plog.what, pid)
            cur = cursors.get(key)
            if cur is None:
                cur = cursors[key] = plog.new_cursor()
                plog.seek(cur, 0)
            state, seq, pos = plog.frontier(cur)
            now = time.monotonic()
            if state in (1, 2):  # BLOCKED, UNSEALED
                prev = stuck.get(key)
                if prev is None or prev[:3] != (state, seq, pos):
                    stuck[key] = (state, seq, pos, now)
                elif (now - prev[3]) * 1000 >= self.cfg["claim_timeout_ms"]:
                    force = (now - prev[3]) * 1000 >= 3 * self.cfg["claim_timeout_ms"]
                    if state == 1:
                        rc = plog.unblock(seq, pos, force)
                    else:
                        rc = plog.force_seal(seq)
                    log.warning("%s: claim stuck for %.1fs at chunk %d byte %d: %s (rc=%d)",
                                plog.what, now - prev[3], seq, pos,
                                "aborted" if state == 1 else "sealed", rc)
                    stuck.pop(key, None)
            else:
                stuck.pop(key, None)


def serve(data_dir: Path, *, auto: bool = False, ready: Optional[Callable[[Supervisor], None]] = None,
          **broker_config: Any) -> int:
    """Run a supervisor in this process until SIGTERM/SIGINT, shutdown, or
    idle; ready(sup) is called once it serves (`serve --detach` reports then)."""
    sup = Supervisor(data_dir, auto=auto, **broker_config)
    sup.start()

    def on_signal(signum, frame):
        sup.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("serving %s (cluster %s, pid %d)", sup.data_dir, sup.cluster_id, os.getpid())
    try:
        if ready is not None:
            ready(sup)
        sup.serve_forever()
    finally:
        sup.shutdown()
    return 0
