"""Redis Streams through redis-py (with hiredis when installed), server on a
unix socket in a temp dir, started by the suite.

Per-message mode: one XADD per message / XREAD COUNT 1 per message. Batch
mode: XADDs of a batch in one pipeline / XREAD COUNT batch. W5: the same
batch mode against a second server with appendonly yes, appendfsync
everysec. W6: 4 streams (partitions), XREADGROUP over all four and XACK per
batch, 2 groups of 2 consumers."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional

from ..common import Endpoint, Params, Row, Skip, run_groups
from ..servers import SERVERS
from . import Channel, Spec, System

KEY = "bench"
PARTS = 4


def _client(sock: str):
    import redis

    return redis.Redis(unix_socket_path=sock, socket_timeout=30)


def _entries(resp):
    """[(stream, [(id, {field: value}), ...]), ...] from XREAD/XREADGROUP (RESP2)."""
    return resp or []


class _Prod(Endpoint):
    def __init__(self, sock: str, keys: List[str], k: int = 0):
        self.r = _client(sock)
        self.keys = keys
        self.j = k

    def _key(self) -> str:
        key = self.keys[self.j % len(self.keys)]
        self.j += 1
        return key

    def send(self, value: bytes) -> None:
        self.r.execute_command("XADD", self._key(), "*", "v", value)

    def send_batch(self, values: List[bytes]) -> None:
        key = self._key()
        pipe = self.r.pipeline(transaction=False)
        for v in values:
            pipe.execute_command("XADD", key, "*", "v", v)
        pipe.execute()

    def close(self) -> None:
        self.r.close()


class _Cons(Endpoint):
    def __init__(self, sock: str, per_recv: int = 1):
        self.r = _client(sock)
        self.per_recv = per_recv
        self.last = b"0-0"
        self.buf: List[bytes] = []
        self.i = 0

    def _read(self, count: int, timeout: float) -> List[bytes]:
        resp = self.r.xread({KEY: self.last}, count=count, block=max(1, int(timeout * 1000)))
        out: List[bytes] = []
        for _stream, entries in _entries(resp):
            for eid, fields in entries:
                out.append(fields[b"v"])
                self.last = eid
        return out

    def recv(self, timeout: float) -> Optional[bytes]:
        if self.i >= len(self.buf):
            # per-message mode asks for one entry per call (COUNT 1); W4 takes
            # what is there (up to per_recv) so its latency is not capped by
            # one round trip per message
            vs = self._read(self.per_recv, timeout)
            if not vs:
                return None
            self.buf = vs
            self.i = 0
        v = self.buf[self.i]
        self.i += 1
        return v

    def recv_batch(self, max_n: int, timeout: float) -> List[bytes]:
        return self._read(max_n, timeout)

    def close(self) -> None:
        self.r.close()


class _GroupCons(Endpoint):
    def __init__(self, sock: str, g: int, m: int):
        self.r = _client(sock)
        self.group = f"g{g}"
        self.name = f"g{g}-c{m}"
        self.streams = {f"{KEY}:{i}": ">" for i in range(PARTS)}

    def recv_batch(self, max_n: int, timeout: float) -> List[bytes]:
        resp = self.r.xreadgroup(self.group, self.name, self.streams, count=max_n,
                                 block=max(1, int(timeout * 1000)))
        out: List[bytes] = []
        pipe = None
        for stream, entries in _entries(resp):
            if not entries:
                continue
            ids = []
            for eid, fields in entries:
                out.append(fields[b"v"])
                ids.append(eid)
            pipe = pipe or self.r.pipeline(transaction=False)
            pipe.xack(stream, self.group, *ids)
        if pipe is not None:
            pipe.execute()
        return out

    def close(self) -> None:
        self.r.close()


class RedisStreams(System):
    name = "redis streams"
    how = {"msg": "XADD per message / XREAD COUNT 1 per message (W4: XREAD COUNT 600, "
                  "values handed out one by one)",
           "batch": "pipelined XADDs per batch / XREAD COUNT batch"}

    def check(self) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise Skip("redis-py is not installed (pip install redis)") from None
        SERVERS.get("redis")

    @contextmanager
    def channel(self, spec: Spec) -> Iterator[Channel]:
        srv = SERVERS.get("redis-aof" if spec.durable else "redis")
        sock = srv.sock
        r = _client(sock)
        r.flushall()
        try:
            per_recv = spec.batch if spec.wid == "W4" else 1
            yield Channel(producer=lambda: _Prod(sock, [KEY]),
                          consumer=lambda: _Cons(sock, per_recv))
        finally:
            r.flushall()
            r.close()

    def durable(self, spec: Spec, p: Params) -> Row:
        try:
            row = self.throughput(spec, p)
        finally:
            SERVERS.stop("redis-aof")
        if row.ok:
            row.note = "appendonly yes, appendfsync everysec, AOF in a temp dir on disk" + (
                "; " + row.note if row.note else "")
        return row

    def groups(self, spec: Spec, p: Params) -> Row:
        srv = SERVERS.get("redis")
        sock = srv.sock
        r = _client(sock)
        r.flushall()
        try:
            for i in range(PARTS):
                for g in range(2):
                    r.xgroup_create(f"{KEY}:{i}", f"g{g}", id="0", mkstream=True)
            keys = [f"{KEY}:{i}" for i in range(PARTS)]
            row = Row("W6", self.name, mode="batch")
            row = run_groups(row, lambda k: _Prod(sock, keys, k),
                             lambda g, m: _GroupCons(sock, g, m), spec.n, spec.size, spec.batch,
                             producers=2, groups=2, members=2, limit_s=p.run_limit_s)
            if row.ok:
                row.note = ("4 streams; XREADGROUP COUNT batch over all 4 + pipelined XACK per "
                            "batch; producers pipeline XADDs per batch")
            return row
        finally:
            r.flushall()
            r.close()
