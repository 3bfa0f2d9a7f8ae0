"""The Kafka listener: an asyncio server, one process, node 0.

Attached to the data dir like any client (shmlog.connect(start=False)): it
maps partition regions, appends and reads them directly, and asks the
supervisor for metadata and group operations. Each connection is one
coroutine answering its requests in order. The event loop itself only
parses headers, moves batches through C and writes responses; anything that
may wait (supervisor requests, a Fetch long poll, an append that finds the
ring full) runs in worker threads. A malformed frame, a size prefix over
max_request_bytes, an unknown API or version, a client that stalls mid-
request or never reads its responses: each closes that connection only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

from .. import errors
from ..client.cluster import Cluster
from ..core.reader import scan_for_time
from ..osutil import pid_alive
from . import legacy
from . import protocol as P
from . import records as R
from .groups import GroupBridge
from .handlers_admin import Admin, api_versions_body
from .handlers_data import DataPlane

log = logging.getLogger("shmlog.kafka")

IDLE_TIMEOUT_S = 600.0  # Kafka's connections.max.idle.ms is 9 minutes
REQUEST_TIMEOUT_S = 30.0  # a request's bytes must all arrive within this (slowloris)
WRITE_TIMEOUT_S = 60.0  # a client that reads nothing for this long is dropped
WAIT_THREADS = 32
# Fault injection for tests only: every Nth Produce with acks is appended and
# then answered by closing the connection (a lost response), so a client's
# idempotent retry can be shown to append nothing twice.
_DROP_EVERY = int(os.environ.get("SHMLOG_KAFKA_TEST_DROP_PRODUCE_RESPONSE", "0") or 0)


class _DropResponse(Exception):
    pass


class State:
    """What every handler shares: the cluster, the regions, the thread pools."""

    def __init__(self, cluster: Cluster, host: str, port: int, *, auto_create: bool = True,
                 max_request_bytes: int = 100 << 20, default_partitions: int = 1):
        self.cluster = cluster
        self.host = host
        self.port = port
        self.auto_create = auto_create
        self.max_request_bytes = max_request_bytes
        self.default_partitions = default_partitions
        self.log = log
        self.wait_pool = ThreadPoolExecutor(WAIT_THREADS, thread_name_prefix="kafka-wait")
        self.ctl_pool = ThreadPoolExecutor(1, thread_name_prefix="kafka-control")
        self._slots: Dict[int, Tuple[Any, int]] = {}
        self._mapped: Dict[str, Any] = {}

    def mapped(self, topic: str) -> bool:
        """Is the topic mapped here and current (cheap: no request)?"""
        t = self._mapped.get(topic)
        return t is not None and not any(r.stale for r in t.regions)

    def map_topic(self, topic: str):
        """Map a topic's regions (a supervisor request, and page faults for
        prefaulted regions: up to a second for large rings). Control thread
        only, never the event loop."""
        t = self.cluster.topic(topic)
        self._mapped[topic] = t
        return t

    async def ensure_mapped(self, topics) -> None:
        """Map what a Produce or Fetch names and this process has not
        mapped yet, in the control thread (other connections keep going)."""
        loop = asyncio.get_running_loop()
        for name in topics:
            if not self.mapped(name):
                try:
                    await loop.run_in_executor(self.ctl_pool, self.map_topic, name)
                except errors.ShmlogError:
                    pass  # the handler answers UNKNOWN_TOPIC_OR_PARTITION

    def region(self, topic: str, p: int):
        t = self.cluster.topic(topic)
        if not 0 <= p < t.num_partitions:
            raise errors.UnknownPartition(f"topic {topic!r} has no partition {p}", what=topic)
        return t.regions[p]

    def producer_partition(self, topic: str, p: int, create: bool = False):
        plog = self.region(topic, p)
        got = self._slots.get(id(plog))
        if got is None or got[0] is not plog:
            got = (plog, plog.register_producer())
            self._slots[id(plog)] = got
        return got

    def forget_topic(self, topic: str) -> None:
        for key, (plog, _slot) in list(self._slots.items()):
            if plog.closed:
                del self._slots[key]

    def _disk(self, topic: str) -> bool:
        try:
            return self.cluster.topic(topic).config.get("storage") == "disk"
        except errors.ShmlogError:
            return False

    def start_offset(self, topic: str, p: int, plog) -> int:
        if self._disk(topic):
            s = self.cluster.segments.start_offset(topic, p)
            if s is not None:
                return min(s, plog.start_offset)
        return plog.start_offset

    def offset_for_time(self, topic: str, p: int, plog, ts: int) -> Optional[int]:
        found = None
        if self._disk(topic):
            found = self.cluster.segments.offset_for_time(topic, p, ts)
        if found is None:
            found = scan_for_time(plog, ts)
        return found

    def read_segments(self, topic: str, p: int, offset: int, limit: int,
                      min_one: bool = True) -> Optional[List[bytes]]:
        """A Fetch behind the shared-memory window: from the segment files,
        limit bytes at most (the first record whole with min_one)."""
        if not self._disk(topic):
            return None
        rd = self.cluster.segments.reader(topic, p, offset)
        if rd is None:
            return None
        try:
            res = rd.read(max(1, min(limit // 64, 10_000)))
        finally:
            rd.close()
        if res is None or not len(res):
            return None
        batch = R.encode_result(res, limit, min_one)
        return [] if batch is None else [batch]

    def close(self) -> None:
        for plog, slot in self._slots.values():
            if not plog.closed:
                try:
                    plog.release_producer(slot)
                except Exception:  # noqa: BLE001 - best effort at exit
                    pass
        self._slots.clear()
        self.wait_pool.shutdown(wait=False, cancel_futures=True)
        self.ctl_pool.shutdown(wait=False, cancel_futures=True)


class Conn:
    __slots__ = ("peer", "client_id", "readers")

    def __init__(self, peer):
        self.peer = peer
        self.client_id: Optional[str] = None
        self.readers: Dict[Tuple[str, int], R.PartitionReader] = {}


class Listener:
    def __init__(self, state: State):
        self.state = state
        self.data = DataPlane(state)
        self.admin = Admin(state)
        self.groups = GroupBridge(state)
        self.connections = 0
        self.closed_bad = 0  # connections closed for bad input (tests look)
        self._produces = 0
        self.control = {
            P.METADATA: self.admin.metadata,
            P.FIND_COORDINATOR: self.admin.find_coordinator,
            P.CREATE_TOPICS: self.admin.create_topics,
            P.DELETE_TOPICS: self.admin.delete_topics,
            P.LIST_OFFSETS: self.data.list_offsets,
            P.INIT_PRODUCER_ID: self.data.init_producer_id,
            P.SYNC_GROUP: self.groups.sync_group,
            P.HEARTBEAT: self.groups.heartbeat,
            P.LEAVE_GROUP: self.groups.leave_group,
            P.OFFSET_COMMIT: self.groups.offset_commit,
            P.OFFSET_FETCH: self.groups.offset_fetch,
            P.DESCRIBE_GROUPS: self.groups.describe_groups,
            P.LIST_GROUPS: self.groups.list_groups,
        }

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer.get_extra_info("peername"))
        self.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = writer.transport
        loop = asyncio.get_running_loop()
        try:
            while True:
                # one timer per request, re-armed, instead of wait_for's task
                # and timer per await: the event loop's share of a small
                # Produce's round trip
                async with asyncio.timeout(IDLE_TIMEOUT_S) as deadline:
                    head = await reader.readexactly(4)
                    size = int.from_bytes(head, "big", signed=True)
                    if size < 10 or size > self.state.max_request_bytes:
                        raise P.MalformedRequest(f"request size {size} outside [10, {self.state.max_request_bytes}]")
                    deadline.reschedule(loop.time() + REQUEST_TIMEOUT_S)
                    frame = await reader.readexactly(size)
                out = await self.dispatch(conn, memoryview(frame))
                if out is not None:
                    writer.write(out)
                    if transport.get_write_buffer_size():
                        # only a client that is not reading makes us wait
                        async with asyncio.timeout(WRITE_TIMEOUT_S):
                            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            return  # the listener is shutting down
        except _DropResponse:
            log.info("test fault: dropped a Produce response to %s", conn.peer)
        except P.MalformedRequest as exc:
            self.closed_bad += 1
            log.info("closing %s: %s", conn.peer, exc)
        except Exception:  # a handler bug costs this connection, never the listener
            self.closed_bad += 1
            log.exception("closing %s after an internal error", conn.peer)
        finally:
            conn.readers.clear()
            writer.close()

    async def dispatch(self, conn: Conn, frame) -> Optional[bytes]:
        api, version, corr, client_id, pos = P.parse_header(frame)
        conn.client_id = client_id
        if api == P.API_VERSIONS:
            lo, hi = P.SUPPORTED[api]
            if not lo <= version <= hi:
                # KIP-511: answer in v0 with UNSUPPORTED_VERSION and our ranges
                return P.frame_response(corr, api_versions_body(0, P.UNSUPPORTED_VERSION))
            return P.frame_response(corr, api_versions_body(version))
        rng = P.SUPPORTED.get(api)
        if rng is None or not rng[0] <= version <= rng[1]:
            raise P.MalformedRequest(f"api {api} v{version} is not served here")
        if api == P.PRODUCE:
            body = await self.data.produce(conn, version, frame, pos)
            if body is not None and _DROP_EVERY:
                self._produces += 1
                if self._produces % _DROP_EVERY == 0:
                    raise _DropResponse()
            return None if body is None else P.frame_response(corr, body)
        if api == P.FETCH:
            return P.frame_response_parts(corr, await self.data.fetch(conn, version, frame, pos))
        req = legacy.decode(api, version, frame, pos)
        loop = asyncio.get_running_loop()
        if api == P.JOIN_GROUP:
            data = await loop.run_in_executor(self.state.ctl_pool, self.groups.join_group, req, version,
                                              client_id or "")
        else:
            data = await loop.run_in_executor(self.state.ctl_pool, self.control[api], req, version)
        return P.frame_response(corr, legacy.encode(api, version, data))


def parse_address(addr: str) -> Tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise errors.InvalidConfig(f"kafka listener {addr!r}: expected HOST:PORT", what="kafka_listener")
    return host.strip("[]"), int(port)


def _watch_supervisor(loop: asyncio.AbstractEventLoop, supervisor_pid: int, stop: asyncio.Event):
    """Set stop when the supervisor is gone (it restarts us; the next one
    starts its own listener). A pidfd turns readable when the process exits,
    so an idle listener has no timer at all; without pidfd (old kernels), a
    liveness check once a second. Returns what to cancel on the way out."""
    def gone() -> None:
        log.warning("supervisor %d is gone: exiting", supervisor_pid)
        stop.set()

    try:
        fd = os.pidfd_open(supervisor_pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        if not pid_alive(supervisor_pid):  # exited, or only a zombie, before we looked
            os.close(fd)
            gone()
            return lambda: None

        def exited() -> None:
            loop.remove_reader(fd)  # it stays readable: once is enough
            gone()

        def cancel() -> None:
            loop.remove_reader(fd)
            os.close(fd)
        loop.add_reader(fd, exited)
        return cancel

    async def poll() -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            if not pid_alive(supervisor_pid):
                gone()

    return asyncio.ensure_future(poll()).cancel


async def _serve(listener: Listener, host: str, port: int, supervisor_pid: int, ready=None,
                 listen_fd: Optional[int] = None) -> None:
    if listen_fd is None:
        server = await asyncio.start_server(listener.handle, host, port, reuse_address=True,
                                            limit=1 << 20)
    else:
        # bound by the supervisor, which keeps it open across our restarts
        server = await asyncio.start_server(listener.handle, sock=socket.socket(fileno=listen_fd),
                                            limit=1 << 20)
    actual = server.sockets[0].getsockname()[1]
    if listener.state.port == 0:
        listener.state.port = actual
    log.info("kafka listener on %s:%d (pid %d)", host, actual, os.getpid())
    if ready is not None:
        ready(actual)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (ValueError, RuntimeError):  # not the main thread (tests)
            pass
    unwatch = _watch_supervisor(loop, supervisor_pid, stop) if supervisor_pid else (lambda: None)
    try:
        async with server:
            await stop.wait()
    finally:
        unwatch()


def run(data_dir: str, address: str, *, listen_fd: Optional[int] = None, supervisor_pid: int = 0,
        auto_create: bool = True, max_request_bytes: int = 100 << 20, ready=None) -> int:
    host, port = parse_address(address)
    cluster = Cluster(data_dir, start=False)
    state = State(cluster, host, port, auto_create=auto_create, max_request_bytes=max_request_bytes)
    listener = Listener(state)
    try:
        asyncio.run(_serve(listener, host, port, supervisor_pid, ready, listen_fd))
    finally:
        try:
            listener.groups.close()
        except errors.ShmlogError:
            pass
        state.close()
        cluster.close()
    return 0
