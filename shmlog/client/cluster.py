"""Client side of the control plane: connect(), Cluster and its admin calls.

A Cluster holds one request connection and one session connection to the
supervisor. The session connection carries nothing; it exists so the
supervisor can count live clients (idle exit) and so this process notices at
once when the supervisor dies — then one client, elected through a lock file,
starts a new one (the single-host form of Kafka's controller failover). The
data path never waits for any of this: partition regions stay mapped.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from .. import config as cfgmod
from .. import errors, protocol
from ..core.budget_region import BudgetRegion
from ..core.budget_region import region_name as budget_region_name
from ..core.log import PartitionLog
from ..core.segments import SegmentStore
from ..osutil import pid_alive
from ..protocol import LOCK_NAME, SOCKET_NAME, ensure_data_dir
from . import mirrors as _mirrors

if TYPE_CHECKING:  # imported where used: producer and consumer import this module
    from .consumer import Consumer
    from .producer import Producer

log = logging.getLogger("shmlog.client")

FAILOVER_LOCK = "failover.lock"


def supervisor_lock_free(data_dir) -> bool:
    """Nobody holds data_dir's supervisor lock (probed without keeping it)."""
    try:
        fd = os.open(Path(data_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@dataclass
class PartitionInfo:
    partition: int
    start_offset: int
    end_offset: int
    durable_offset: int
    bytes: int
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class TopicInfo:
    name: str
    partitions: List[PartitionInfo]
    config: Dict[str, Any]
    topic_id: int = 0

    @classmethod
    def from_wire(cls, d: Dict[str, Any]) -> TopicInfo:
        parts = []
        for p in d["partitions"]:
            base = {k: p[k] for k in ("partition", "start_offset", "end_offset", "durable_offset", "bytes")}
            extra = {k: v for k, v in p.items() if k not in base}
            parts.append(PartitionInfo(**base, extra=extra))
        return cls(name=d["name"], partitions=parts, config=d["config"], topic_id=d.get("topic_id", 0))


_ERRORS = {
    name: getattr(errors, name)
    for name in dir(errors)
    if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), errors.ShmlogError)
}


def _raise_remote(reply: Dict[str, Any]) -> None:
    kind = reply.get("error", "ShmlogError")
    cls = _ERRORS.get(kind, errors.ControlError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, reply.get("message", kind))
    exc.what = None
    exc.code = None
    raise exc


def _connect_socket(data_dir: Path, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    # through /proc/self/fd: deep data dirs would overflow sun_path (108 bytes)
    dfd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        s.connect(f"/proc/self/fd/{dfd}/{SOCKET_NAME}")
    except OSError:
        s.close()
        raise
    finally:
        os.close(dfd)
    return s


class _Topic:
    """This process's view of one topic: metadata and mapped regions."""

    def __init__(self, name: str, topic_id: int, config: Dict[str, Any], regions: List[PartitionLog]):
        self.name = name
        self.topic_id = topic_id
        self.config = config
        self.regions = regions

    @property
    def num_partitions(self) -> int:
        return len(self.regions)


class Cluster:
    """A connection to the supervisor of one data dir. See shmlog.connect()."""

    def __init__(self, data_dir: Union[str, Path], *, start: bool = True, timeout: float = 10.0,
                 **broker_config: Any):
        self.data_dir = ensure_data_dir(Path(data_dir))
        self.broker_config = cfgmod.broker_config(broker_config)
        self._start = start
        self._timeout = timeout
        self._req_lock = threading.Lock()
        self._topics: Dict[str, _Topic] = {}
        self._topics_lock = threading.Lock()
        self._closed = False
        self._clean_bye = False
        self._sock: Optional[socket.socket] = None
        self._session: Optional[socket.socket] = None
        self.cluster_id = ""
        self.supervisor_pid = 0
        self.failovers = 0
        self._children: List[Any] = []  # producers/consumers to close with us
        self._segments: Any = None
        self._budget: Optional[BudgetRegion] = None
        self._ensure_supervisor()
        self._open_session()

    # ------------------------------------------------------------ plumbing
    def _try_connect(self) -> Optional[socket.socket]:
        try:
            return _connect_socket(self.data_dir, self._timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                return None
            raise

    def _hello(self, s: socket.socket, session: bool) -> Dict[str, Any]:
        protocol.send(s, {"op": "hello", "pid": os.getpid(), "session": session})
        reply = protocol.recv(s)
        if reply is None or not reply.get("ok"):
            raise errors.BrokerNotRunning(f"supervisor of {self.data_dir} did not answer hello")
        self.cluster_id = reply["cluster_id"]
        self.supervisor_pid = reply["supervisor_pid"]
        return reply

    def _ensure_supervisor(self) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            s = self._try_connect()
            if s is None and self._start:
                s = self._elect_and_start()
            if s is None:
                raise errors.BrokerNotRunning(f"no supervisor is serving {self.data_dir}",
                                              what=str(self.data_dir))
            try:
                self._hello(s, session=False)
                break
            except (OSError, protocol.ProtocolError):
                # a SIGKILLed supervisor shows as a zombie while its other
                # threads tear down, and its listening socket still accepts,
                # then resets: wait for it to go, then elect and start anew
                s.close()
                if time.monotonic() > deadline:
                    raise errors.BrokerNotRunning(
                        f"the supervisor of {self.data_dir} keeps dropping connections") from None
                time.sleep(0.02)
        old, self._sock = self._sock, s
        if old is not None:
            old.close()

    def _elect_and_start(self) -> Optional[socket.socket]:
        """Exactly one client starts the supervisor: whoever holds the failover lock."""
        deadline = time.monotonic() + self._timeout
        fd = os.open(self.data_dir / FAILOVER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    s = self._try_connect()
                    if s is not None:
                        return s
                    if time.monotonic() > deadline:
                        raise errors.BrokerNotRunning(
                            f"timed out waiting for another client to start the supervisor of {self.data_dir}"
                        ) from None
                    time.sleep(0.01)
            # The supervisor lock held with nobody answering means either a
            # supervisor that is starting (it answers soon) or one that was
            # just SIGKILLed (the kernel lets go of its lock a moment after
            # the process is gone): look again until one of the two happens.
            while time.monotonic() < deadline:
                s = self._try_connect()
                if s is not None:
                    return s
                if self._supervisor_lock_free():
                    self._spawn()
                    return self._wait_for_socket(deadline)
                time.sleep(0.01)
            raise errors.BrokerNotRunning(
                f"the supervisor lock of {self.data_dir} is held but nobody answers on its socket; "
                f"see {self.data_dir / 'supervisor.log'}")
        finally:
            os.close(fd)

    def _supervisor_lock_free(self) -> bool:
        return supervisor_lock_free(self.data_dir)

    def _wait_for_socket(self, deadline: float) -> socket.socket:
        while time.monotonic() < deadline:
            s = self._try_connect()
            if s is not None:
                return s
            time.sleep(0.005)
        raise errors.BrokerNotRunning(
            f"the supervisor of {self.data_dir} did not start within {self._timeout:.0f}s; "
            f"see {self.data_dir / 'supervisor.log'}"
        )

    def _spawn(self) -> None:
        args = [sys.executable, "-m", "shmlog", "serve", "--data-dir", str(self.data_dir), "--auto", "--detach"]
        for k, v in self.broker_config.items():
            args += ["--set", f"{k}={v}"]
        # The supervisor must import this very shmlog: `python -m` puts the
        # working directory first on sys.path, and a source checkout there
        # (`pip install . && shmlog demo` run in the clone) has no built
        # _core. So it runs from "/" (a daemon holds no directory busy), with
        # this package's root first and relative PYTHONPATH entries made
        # absolute.
        env = dict(os.environ)
        # the directory that holds the shmlog package (this file is shmlog/client/cluster.py)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        paths = [root] + [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        # owner-only (invariant 6): the log names topics, groups and paths
        logf = open(os.open(self.data_dir / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        try:
            # --detach forks again and exits, so the supervisor is nobody's child
            p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True, cwd="/", env=env)
            try:
                rc = p.wait(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                # `serve --detach` returns once the supervisor serves; it may
                # still be recovering: the caller's wait for the socket decides
                return
        finally:
            logf.close()
        if rc != 0:
            s = self._try_connect()
            if s is not None:
                # another supervisor got there first (`shmlog serve` by hand):
                # somebody serves, which is all this client asked for
                s.close()
                return
            tail = ""
            try:
                tail = (self.data_dir / "supervisor.log").read_text()[-600:]
            except OSError:
                pass
            raise errors.BrokerNotRunning(f"could not start a supervisor for {self.data_dir} (exit {rc}): {tail}")

    def _open_session(self) -> None:
        s = self._try_connect()
        if s is None:
            raise errors.BrokerNotRunning(f"supervisor of {self.data_dir} went away")
        self._hello(s, session=True)
        s.settimeout(None)
        self._session = s
        t = threading.Thread(target=self._watch, args=(s,), name="shmlog-session", daemon=True)
        t.start()

    def _watch(self, s: socket.socket) -> None:
        """Block on the session socket; EOF without "bye" means the supervisor died."""
        try:
            msg = protocol.recv(s)
        except (OSError, protocol.ProtocolError):
            msg = None
        if self._closed:
            return
        if msg is not None and msg.get("op") == "bye":
            self._clean_bye = True
            return
        self._failover()

    def _failover(self) -> None:
        for _attempt in range(50):
            if self._closed:
                return
            try:
                with self._req_lock:
                    self._ensure_supervisor()
                self._open_session()
                self.failovers += 1
                log.warning("supervisor of %s restarted (pid %d)", self.data_dir, self.supervisor_pid)
                return
            except (errors.ShmlogError, OSError, protocol.ProtocolError):
                time.sleep(0.05)
        log.error("could not restart the supervisor of %s", self.data_dir)

    def request(self, op: str, **fields: Any) -> Dict[str, Any]:
        if self._closed:
            raise errors.Closed("this Cluster is closed")
        msg = {"op": op, **fields}
        # a lost supervisor is restarted by the failover (~0.1-1 s): keep
        # trying for as long as a request may take, not three quick tries
        deadline = time.monotonic() + self._timeout
        for attempt in itertools.count():
            with self._req_lock:
                try:
                    if self._sock is None:
                        self._ensure_supervisor()
                    protocol.send(self._sock, msg)
                    reply = protocol.recv(self._sock)
                    if reply is None:
                        raise ConnectionResetError("supervisor closed the connection")
                    break
                except (OSError, protocol.ProtocolError):
                    if self._sock is not None:
                        self._sock.close()
                    self._sock = None
                    if op == "shutdown":
                        return {"ok": True}
                    if time.monotonic() > deadline or not self._start:
                        raise errors.BrokerNotRunning(f"lost the supervisor of {self.data_dir}") from None
            time.sleep(min(0.05 * (attempt + 1), 0.5))
        if not reply.get("ok"):
            _raise_remote(reply)
        return reply

    # ------------------------------------------------------------ topics
    def create_topic(self, name: str, partitions: int = 1, **config: Any) -> TopicInfo:
        cfgmod.validate_topic_name(name)
        config = {**config, "partitions": partitions}
        cfgmod.topic_config(config)  # fail here, with the same message, before a round trip
        return TopicInfo.from_wire(self.request("create_topic", name=name, config=config)["topic"])

    def topics(self) -> Dict[str, TopicInfo]:
        return {n: TopicInfo.from_wire(t) for n, t in self.request("topics")["topics"].items()}

    def describe_topic(self, name: str) -> TopicInfo:
        cfgmod.validate_topic_name(name)
        return TopicInfo.from_wire(self.request("describe_topic", name=name)["topic"])

    def add_partitions(self, name: str, partitions: int) -> TopicInfo:
        info = TopicInfo.from_wire(self.request("add_partitions", name=name, partitions=partitions)["topic"])
        with self._topics_lock:
            self._topics.pop(name, None)
        return info

    def delete_topic(self, name: str) -> None:
        cfgmod.validate_topic_name(name)
        self.request("delete_topic", name=name)
        self._forget(name)

    def alter_topic(self, name: str, **config: Any) -> TopicInfo:
        return TopicInfo.from_wire(self.request("alter_topic", name=name, config=config)["topic"])

    def stats(self) -> Dict[str, Any]:
        return self.request("stats")["stats"]

    # ------------------------------------------------------------ regions
    def _forget(self, name: str) -> None:
        with self._topics_lock:
            t = self._topics.pop(name, None)
        if t is not None:
            for r in t.regions:
                r.close()

    def topic(self, name: str, *, refresh: bool = False) -> _Topic:
        """Metadata and mapped regions of a topic (cached per process)."""
        with self._topics_lock:
            t = self._topics.get(name)
            if t is not None and not refresh and not any(r.stale for r in t.regions):
                return t
        meta = self.request("metadata", name=name)
        with self._topics_lock:
            old = self._topics.get(name)
            if old is not None and old.topic_id == meta["topic_id"] and len(old.regions) == len(meta["regions"]) \
                    and not any(r.stale for r in old.regions):
                return old
            regions = []
            for p, rname in enumerate(meta["regions"]):
                reuse = None
                if old is not None and old.topic_id == meta["topic_id"] and p < len(old.regions):
                    reuse = old.regions[p]
                if reuse is not None and not reuse.closed:
                    regions.append(reuse)
                else:
                    regions.append(PartitionLog.attach(rname, prefault=meta["config"].get("prefault", False),
                                                       what=f"topic {name!r} partition {p}"))
            if self._budget is None:
                self._budget = BudgetRegion.attach_if_present(budget_region_name(self.cluster_id))
            for r in regions:
                r.ring_bell_of(regions[0])
                r.set_budget(self._budget)
            t = _Topic(name, meta["topic_id"], meta["config"], regions)
            self._topics[name] = t
            return t

    @property
    def segments(self):
        """Client-side reader of segment files (shmlog.storage), or None."""
        if self._segments is None:
            self._segments = SegmentStore(self.data_dir, self)
        return self._segments

    # ------------------------------------------------------------ clients
    def producer(self, **kwargs: Any) -> Producer:
        from .producer import Producer

        self._check_open()
        p = Producer(self, **kwargs)
        self._children.append(p)
        return p

    def consumer(self, topics: Union[str, Sequence[str]], group: Optional[str] = None, **kwargs: Any) -> Consumer:
        from .consumer import Consumer

        self._check_open()
        c = Consumer(self, topics, group=group, **kwargs)
        self._children.append(c)
        return c

    # groups (the coordinator lives in the supervisor, shmlog/groups.py)
    def groups(self) -> Dict[str, Any]:
        return self.request("groups")["groups"]

    def describe_group(self, group: str) -> Dict[str, Any]:
        return self.request("describe_group", group=group)["group"]

    def delete_group(self, group: str) -> None:
        self.request("delete_group", group=group)

    def reset_offsets(self, group: str, topic: str, *, to: str = "earliest", offset: Optional[int] = None,
                      timestamp_ms: Optional[int] = None, dry_run: bool = False) -> Dict[int, int]:
        """Move a stopped group's committed offsets on `topic` to the
        earliest/latest offset, an offset, or the first at a timestamp;
        {partition: new offset}. dry_run=True computes them, commits nothing."""
        offsets = self.request("reset_offsets", group=group, topic=topic, to=to, offset=offset,
                               timestamp_ms=timestamp_ms, dry_run=dry_run)["offsets"]
        return {int(p): o for p, o in offsets.items()}  # JSON object keys are strings

    # mirrors to and from Kafka clusters, run by the supervisor (client/mirrors.py)
    def mirror(self, topics: Union[str, Sequence[str], None] = None, *, to: Optional[str] = None,
               from_: Optional[str] = None, pattern: Optional[str] = None, as_: Optional[str] = None,
               name: Optional[str] = None, settings: Optional[Dict[str, Any]] = None,
               timeout: float = 30.0, **options: Any) -> Dict[str, Any]:
        """Register a managed mirror: local topics (or a pattern) out to the
        Kafka cluster `to`, or one Kafka topic in `from_` it; as_ names the
        topic on the other side, settings are librdkafka's (like -X). The
        supervisor runs it and restarts it after a crash; returns its row
        (as mirrors() shows it) once it reports running."""
        return _mirrors.start(self, topics, to=to, from_=from_, pattern=pattern, as_=as_, name=name,
                              settings=settings, timeout=timeout, **options)

    def mirrors(self) -> List[Dict[str, Any]]:
        """Managed and running mirrors: name, direction, state, rate, lag_messages, lag_seconds, error..."""
        return _mirrors.rows(self)

    def stop_mirror(self, name: str, timeout: float = 30.0) -> None:
        """Stop a managed mirror and forget it (its committed progress stays)."""
        _mirrors.stop(self, name, timeout)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Detach this process only: the supervisor and the data stay."""
        if self._closed:
            return
        for c in list(self._children):
            try:
                c.close()
            except Exception:
                log.exception("closing %r failed", c)
        self._children.clear()
        self._closed = True
        for s in (self._session, self._sock):
            if s is not None:
                try:
                    # close() alone does not end a connection that the watcher
                    # thread is blocked in recv() on: the supervisor would
                    # never see this client go (idle exit, client count)
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass
        if self._segments is not None:
            self._segments.close()
        with self._topics_lock:
            for t in self._topics.values():
                for r in t.regions:
                    r.close()
            self._topics.clear()
        if self._budget is not None:
            self._budget.close()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the supervisor (all clients lose it), then close."""
        for c in list(self._children):
            try:
                c.close()
            except Exception:
                log.exception("closing %r failed", c)
        pid = self.supervisor_pid
        self._closed_for_shutdown = True
        try:
            self.request("shutdown")
        except errors.ShmlogError:
            pass
        self.close()
        deadline = time.monotonic() + timeout
        while pid and time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.01)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        # at creation, not at the first send or poll: the mistake is here
        if self._closed:
            raise errors.Closed("this Cluster is closed; connect again (shmlog.connect) for new producers "
                                "and consumers")

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Cluster {self.data_dir} supervisor pid {self.supervisor_pid}>"


def connect(data_dir: Union[str, Path, None] = None, *, start: bool = True, **broker_config: Any) -> Cluster:
    """Attach to the supervisor serving data_dir, starting one if needed."""
    if data_dir is None:
        data_dir = cfgmod.default_data_dir()
    timeout = broker_config.pop("timeout", 10.0)
    return Cluster(data_dir, start=start, timeout=timeout, **broker_config)


__all__ = ["Cluster", "TopicInfo", "PartitionInfo", "connect", "Tuple"]
