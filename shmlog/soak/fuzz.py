"""Fuzzers: the control socket, segment files, and shared-memory regions.

Invariant 4 (DESIGN.md): nothing read from the socket, disk or shared memory
is trusted. Each fuzzer feeds seeded garbage to the real code and fails on
a crash (a signal), a hang (no answer within a deadline), an exception that
is not a ShmlogError, or data served that differs from what was written.
The readers run in child processes (``python -m shmlog.soak.fuzz ...``) so a
segfault is a reported failure, not a dead test runner; the supervisor is
a real one, whose pid is watched.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import shmlog
from shmlog import errors, protocol

# ---------------------------------------------------------------- control socket
OPS = ["ping", "create_topic", "delete_topic", "alter_topic", "add_partitions", "topics", "describe_topic",
       "metadata", "stats", "hello", "sync", "group_join", "group_sync", "group_commit", "group_committed",
       "group_leave", "groups", "describe_group", "delete_group", "reset_offsets"]
FIELDS = ["topic", "partition", "offset", "name", "partitions", "config", "group", "member_id", "token",
          "generation", "owned", "offsets", "timeout", "pid", "session", "to", "timestamp_ms", "topics",
          "assignor", "client_id", "session_timeout_ms", "slot", "assignment"]
NAMES = ["f", "fm", "nope", "", ".", "..", "a/b", "../../etc", "x" * 300, "\x00", "é", "g", "f "]


def _junk(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.12:
        return rng.choice([None, True, False])
    if r < 0.35:
        return rng.choice([0, 1, -1, 2, 3, 7, 4096, 4097, 2 ** 31, 2 ** 32, 2 ** 63 - 1, 2 ** 63, 2 ** 64,
                           -(2 ** 63), 10 ** 30, rng.randrange(-1000, 1000)])
    if r < 0.45:
        return rng.choice([0.5, -0.0, 1e308, -1e308, float("inf"), float("nan")])
    if r < 0.7:
        return rng.choice(NAMES)
    if r < 0.85 and depth < 3:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 3:
        return {rng.choice(FIELDS): _junk(rng, depth + 1) for _ in range(rng.randrange(4))}
    return "deep"


# a plausible value per field: most requests are valid but for one or two
# fields, so the fuzz reaches past the schema check into each handler
PLAUSIBLE = {"topic": "f", "partition": 0, "offset": 3, "name": "f", "partitions": 2, "config": {},
             "group": "g", "member_id": "m-1", "token": 1, "generation": 1, "owned": [["f", 0]],
             "offsets": [["f", 0, 1]], "timeout": 0.05, "pid": 1, "session": False, "to": "earliest",
             "timestamp_ms": 0, "topics": ["f"], "assignor": "range", "client_id": "fz",
             "session_timeout_ms": 1000, "slot": 0, "assignment": {}}


def _request(rng: random.Random) -> Dict[str, Any]:
    op = rng.choice(OPS) if rng.random() < 0.95 else rng.choice(["shutdownx", "", "__class__", "x" * 100])
    msg: Dict[str, Any] = {"op": op}
    if rng.random() < 0.5:
        msg.update(PLAUSIBLE)
        for f in rng.sample(FIELDS, rng.randrange(0, 3)):
            if rng.random() < 0.3:
                del msg[f]
            else:
                msg[f] = _junk(rng)
    else:
        for f in rng.sample(FIELDS, rng.randrange(0, 7)):
            msg[f] = _junk(rng)
    if op in ("create_topic", "add_partitions"):
        # a valid request may create real shared memory: keep what one can
        # ask for tiny (exhausting memory through an authorised socket is
        # not what this fuzzer is about)
        cfg = msg.get("config") if isinstance(msg.get("config"), dict) else {}
        cfg.update(chunk_bytes=4096, chunk_count=2, prefault=False)
        msg["config"] = cfg
        if isinstance(msg.get("partitions"), int) and msg["partitions"] > 8:
            msg["partitions"] = rng.choice([-1, 0, 2, "3", None, 2 ** 64])
    return msg


def _frame(rng: random.Random) -> Tuple[bytes, str]:
    """One request's bytes and its category."""
    k = rng.random()
    if k < 0.55:
        body = json.dumps(_request(rng)).encode()
        return struct.pack(">I", len(body)) + body, "wrong-typed"
    if k < 0.65:
        body = json.dumps(_request(rng)).encode()
        cut = rng.randrange(0, len(body) + 4)
        return (struct.pack(">I", len(body)) + body)[:cut], "truncated"
    if k < 0.72:
        n = rng.choice([protocol.MAX_FRAME + 1, 2 ** 32 - 1, 2 ** 31, protocol.MAX_FRAME])
        return struct.pack(">I", n) + os.urandom(rng.randrange(0, 64)), "huge-length"
    if k < 0.85:
        body = rng.choice([b"[]", b"1", b"null", b'"op"', b"{", b"[" * 100000, b'{"op":' * 5000,
                           b"\xff\xfe", b'{"op":"ping"}' * 2, b"{}", b'{"op":null}', b'{"op":["ping"]}'])
        return struct.pack(">I", len(body)) + body, "not-an-object"
    data = rng.randbytes(rng.randrange(0, 300)) if hasattr(rng, "randbytes") else os.urandom(rng.randrange(300))
    return data, "garbage"


def _supervisor_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False


def _ping(data_dir: Path, timeout: float) -> bool:
    try:
        s = protocol_connect(data_dir, timeout)
    except OSError:
        return False
    try:
        protocol.send(s, {"op": "ping"})
        reply = protocol.recv(s)
        return bool(reply and reply.get("ok"))
    except (OSError, protocol.ProtocolError):
        return False
    finally:
        s.close()


def protocol_connect(data_dir: Path, timeout: float) -> socket.socket:
    from ..client.cluster import _connect_socket

    return _connect_socket(Path(data_dir), timeout)


def fuzz_control(data_dir: Path, n: int, seed: int, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """n fuzzed requests at a real supervisor; a ping after every batch of them."""
    rng = random.Random(seed)
    cluster = shmlog.connect(data_dir, idle_timeout_s=60)
    fig: Dict[str, Any] = {"requests": 0, "by_category": {}, "replies": 0, "error_replies": {},
                           "internal_errors": [], "no_reply": 0, "supervisor_died": 0, "hangs": 0}
    try:
        cluster.create_topic("f", partitions=2, chunk_bytes=4096, chunk_count=2)
        cluster.create_topic("fm", partitions=1, storage="memory", chunk_bytes=4096, chunk_count=2)
        pid = cluster.supervisor_pid
        sock: Optional[socket.socket] = None
        t0 = time.monotonic()
        for i in range(n):
            data, cat = _frame(rng)
            fig["by_category"][cat] = fig["by_category"].get(cat, 0) + 1
            fig["requests"] += 1
            if sock is None:
                sock = protocol_connect(data_dir, 10)
                sock.settimeout(2.0)
            try:
                sock.sendall(data)
                if cat == "wrong-typed":
                    reply = protocol.recv(sock)
                    if reply is None:
                        raise ConnectionResetError
                    fig["replies"] += 1
                    if not reply.get("ok"):
                        kind = str(reply.get("error"))
                        fig["error_replies"][kind] = fig["error_replies"].get(kind, 0) + 1
                        if "internal error" in str(reply.get("message", "")):
                            fig["internal_errors"].append(f"{data[4:200]!r}: {reply['message'][:200]}")
                else:
                    sock.close()  # the rest of a broken stream is meaningless: a new connection
                    sock = None
            except socket.timeout:
                fig["no_reply"] += 1  # a long poll (sync) or a frame still incomplete
                sock.close()
                sock = None
            except (OSError, protocol.ProtocolError):
                if sock is not None:
                    sock.close()
                sock = None
            if i % 500 == 499 or i == n - 1:
                if not _supervisor_alive(pid):
                    fig["supervisor_died"] += 1
                    log(f"fuzz control: the supervisor died after request {i}")
                    break
                if not _ping(data_dir, 10):
                    fig["hangs"] += 1
                    log(f"fuzz control: no answer to ping after request {i}")
                    break
            if i % 20000 == 19999:
                log(f"fuzz control: {i + 1} requests, {time.monotonic() - t0:.0f}s")
        if sock is not None:
            sock.close()
        fig["seconds"] = round(time.monotonic() - t0, 1)
        fig["internal_error_count"] = len(fig["internal_errors"])
        fig["internal_errors"] = sorted(set(e.split(": ", 1)[1] for e in fig["internal_errors"]))[:20]
    finally:
        try:
            cluster.shutdown(timeout=30)
        except errors.ShmlogError:
            pass
        cluster.close()
    return fig


# ---------------------------------------------------------------- child runner
def run_child(kind: str, args: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """Run one fuzzer in a child process: a signal or a timeout is reported,
    not suffered."""
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "shmlog.soak.fuzz", kind, json.dumps(args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return {"violation": f"{kind} fuzzer hung for {timeout:.0f}s (seed {args.get('seed')})",
                "stderr": err.decode(errors="replace")[-2000:]}
    if p.returncode != 0:
        how = f"signal {-p.returncode}" if p.returncode < 0 else f"exit {p.returncode}"
        return {"violation": f"{kind} fuzzer died ({how}, seed {args.get('seed')})",
                "stderr": err.decode(errors="replace")[-2000:]}
    fig = json.loads(out.decode().strip().splitlines()[-1])
    fig["seconds"] = round(time.monotonic() - t0, 1)
    return fig


def main(argv: List[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    if kind == "segments":
        from .fuzz_files import fuzz_segments as fn
    elif kind == "region":
        from .fuzz_region import fuzz_regions as fn
    else:
        raise SystemExit(f"unknown fuzzer {kind!r}")
    print(json.dumps(fn(**args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# ---------------------------------------------------------------- segments
def make_template(work: Path, seed: int) -> Path:
    """A real segment written by a real supervisor: ~300 batches of mixed
    records (keys, headers, lz4, sizes that are not powers of two)."""
    rng = random.Random(seed)
    data_dir = work / "template"
    with shmlog.connect(data_dir, idle_timeout_s=30) as cluster:
        try:
            cluster.create_topic("f", partitions=1, chunk_bytes=1 << 20, chunk_count=2, segment_bytes=64 << 20)
            for compression in (None, "lz4"):
                with cluster.producer(compression=compression) as p:
                    for b in range(150):
                        for i in range(rng.randrange(1, 12)):
                            key = rng.randbytes(rng.randrange(0, 20)) if i % 3 == 0 else None
                            headers = [("h", b"%d" % i)] if i % 5 == 1 else None
                            p.send("f", bytes([b % 256]) * rng.randrange(0, 333), key=key, headers=headers,
                                   partition=0)
                        p.flush(durable=b % 50 == 49)
        finally:
            cluster.shutdown(timeout=30)
    return data_dir / "topics" / "f" / "0"


def fuzz_all(work: Path, *, seed: int, control: int, batches: int, regions: int,
             log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The three fuzzers, the file and region ones in child processes."""
    import uuid

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out: Dict[str, Any] = {"violations": []}
    if control:
        fig = fuzz_control(work / "control", control, seed, log=log)
        out["control"] = fig
        if fig["supervisor_died"] or fig["hangs"]:
            out["violations"].append(f"control: supervisor died {fig['supervisor_died']}, hangs {fig['hangs']}")
        if fig["internal_error_count"]:
            out["violations"].append(f"control: {fig['internal_error_count']} internal errors: "
                                     f"{fig['internal_errors'][:3]}")
        log(f"fuzz control: {fig['requests']} requests in {fig['seconds']}s: {fig['by_category']}")
    if batches:
        template = make_template(work, seed)
        # per child: at most ~10 minutes of work, so a hang is told from a long run
        fig = run_child("segments", {"template": str(template), "work": str(work / "segments"),
                                     "seed": seed, "batches": batches}, timeout=3600)
        out["segments"] = fig
        out["violations"] += [f"segments: {v}" for v in fig.get("violations", [])]
        if "violation" in fig:
            out["violations"].append(f"segments: {fig['violation']}: {fig['stderr'][-300:]}")
        log(f"fuzz segments: {fig.get('batches')} batches in {fig.get('rounds')} corrupted files, "
            f"{fig.get('seconds')}s")
    if regions:
        prefix = f"/shmlog-fz{uuid.uuid4().hex[:10]}"
        fig = run_child("region", {"prefix": prefix, "seed": seed, "rounds": regions}, timeout=3600)
        out["regions"] = fig
        out["violations"] += [f"regions: {v}" for v in fig.get("violations", [])]
        if "violation" in fig:
            out["violations"].append(f"regions: {fig['violation']}: {fig['stderr'][-300:]}")
            from ..core.log import unlink_region

            unlink_region(prefix + "-fz")  # the child died holding it
        log(f"fuzz regions: {fig.get('rounds')} corrupted regions read, {fig.get('seconds')}s")
    return out
