"""The peer servers, started and stopped by the suite itself.

* redis-server listens on a unix socket in a temp dir only (``--port 0``);
  in-memory (no RDB, no AOF) for W1-W4/W6, AOF with ``appendfsync everysec``
  in a temp dir on disk for W5.
* nats-server listens on 127.0.0.1 (NATS has no unix-socket listener) on a
  free port, with JetStream storing in a temp dir; no monitoring port.

Each server runs as our child, is stopped (SIGTERM, then SIGKILL) when the
suite ends or fails, and its temp dir is removed.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

from .common import Skip, die_with_parent

_RUNNING: List[Server] = []


class Server:
    def __init__(self, name: str, argv: List[str], tmpdir: str):
        self.name = name
        self.argv = argv
        self.dir = tmpdir
        self.log_path = os.path.join(tmpdir, f"{name}.log")
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        log = open(self.log_path, "wb")
        try:
            # SIGTERM if the suite dies without stopping it (killed, crashed)
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir,
                                         preexec_fn=functools.partial(die_with_parent, signal.SIGTERM))
        finally:
            log.close()
        _RUNNING.append(self)

    def log_tail(self, n: int = 5) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return " | ".join(f.read().decode(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.proc = None
        if self in _RUNNING:
            _RUNNING.remove(self)
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_all() -> None:
    for s in list(_RUNNING):
        try:
            s.stop()
        except Exception:
            pass


atexit.register(stop_all)


def _wait_until(ok, what: str, srv: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc is not None and srv.proc.poll() is not None:
            rc = srv.proc.returncode
            tail = srv.log_tail()
            srv.stop()
            raise Skip(f"{what} exited at start (code {rc}): {tail}")
        try:
            if ok():
                return
        except Exception:
            pass
        time.sleep(0.05)
    tail = srv.log_tail()
    srv.stop()
    raise Skip(f"{what} did not become ready in {timeout:.0f} s: {tail}")


# ------------------------------------------------------------------ redis
class Redis(Server):
    def __init__(self, durable: bool):
        exe = shutil.which("redis-server")
        if not exe:
            raise Skip("redis-server is not installed (scripts/install-peers.sh)")
        d = tempfile.mkdtemp(prefix="shmlog-bench-redis-")
        self.sock = os.path.join(d, "redis.sock")
        argv = [exe, "--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700",
                "--dir", d, "--save", "", "--daemonize", "no", "--protected-mode", "yes",
                "--maxmemory", "8gb", "--maxmemory-policy", "noeviction"]
        if durable:
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            argv += ["--appendonly", "no"]
        super().__init__("redis-aof" if durable else "redis", argv, d)
        self.durable = durable

    def start(self) -> None:
        super().start()

        def ping() -> bool:
            import redis

            r = redis.Redis(unix_socket_path=self.sock)
            try:
                return bool(r.ping())
            finally:
                r.close()

        _wait_until(ping, "redis-server", self)

    def version(self) -> str:
        out = subprocess.run([self.argv[0], "--version"], capture_output=True, text=True)
        return out.stdout.split()[2].replace("v=", "") if out.returncode == 0 else "?"


# ------------------------------------------------------------------- nats
def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Nats(Server):
    def __init__(self):
        exe = shutil.which("nats-server")
        if not exe:
            raise Skip("nats-server is not installed (scripts/install-peers.sh)")
        d = tempfile.mkdtemp(prefix="shmlog-bench-nats-")
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        store = os.path.join(d, "js")
        argv = [exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", store]
        super().__init__("nats", argv, d)

    def start(self) -> None:
        super().start()

        def connect() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(7).startswith(b"INFO")

        _wait_until(connect, "nats-server", self)

    def version(self) -> str:
        out = subprocess.run([self.argv[0], "--version"], capture_output=True, text=True)
        return out.stdout.strip().split()[-1] if out.returncode == 0 else "?"


class Servers:
    """Lazily started shared servers of one suite run; errors become skips."""

    def __init__(self):
        self._s: Dict[str, Server] = {}
        self._err: Dict[str, str] = {}

    def get(self, key: str) -> Server:
        if key in self._err:
            raise Skip(self._err[key])
        if key not in self._s:
            try:
                srv = {"redis": lambda: Redis(False), "redis-aof": lambda: Redis(True),
                       "nats": Nats}[key]()
                srv.start()
            except Skip as exc:
                self._err[key] = str(exc)
                raise
            self._s[key] = srv
        return self._s[key]

    def stop(self, key: str) -> None:
        s = self._s.pop(key, None)
        if s:
            s.stop()

    def stop_all(self) -> None:
        for k in list(self._s):
            self.stop(k)


SERVERS = Servers()
