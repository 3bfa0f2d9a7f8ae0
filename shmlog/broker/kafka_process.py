"""The supervisor's side of the Kafka listener: start it, restart it.

The listener (shmlog.kafka) runs as its own process, attached to the
partition regions like any producer or consumer, so a crash or a slow Kafka
client there can never stall the supervisor or the shared-memory path. This
module only binds its port, spawns it, watches it from the reaper's tick and
restarts it (with a back-off) when it dies; it never imports shmlog.kafka.

The supervisor binds the listening socket once and hands it to every
listener it starts: a restarted listener never races anyone for the port
(clients that connect meanwhile wait in the backlog instead of being
refused), and a port someone else holds costs a bind() per retry, not a
Python process start per retry on a core the data path may need.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from typing import Any, Optional, Tuple

log = logging.getLogger("shmlog.kafka")

RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # after 1, 2, ... crashes in a row
STABLE_S = 30.0  # a listener that lived this long resets the back-off
CLIENTS_CHECK_S = 1.0  # how often an idle supervisor looks at the Kafka connections
BACKLOG = 128  # connections the kernel queues while no listener accepts (a restart)
_ESTABLISHED = "01"  # TCP state in /proc/net/tcp


class ListenerProcess:
    def __init__(self, sup, address: str):
        self.sup = sup
        self.address = address
        self.proc: Optional[subprocess.Popen] = None
        self.started = 0.0
        self.crashes = 0
        self.next_start = 0.0
        self.restarts = 0
        self.bind_failures = 0  # in a row; the back-off applies as for crashes
        self.sock: Optional[socket.socket] = None
        self.stopped = False
        self._clients_at = -CLIENTS_CHECK_S
        self._clients = 0
        try:
            self.port = int(address.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            self.port = 0

    @property
    def pid(self) -> int:
        """The listener's pid while it runs (its control connections say so in hello), else 0."""
        p = self.proc
        return p.pid if p is not None and p.poll() is None else 0

    def holds_supervisor_up(self, conn_pids) -> bool:
        """Do the supervisor's clients count as live? Any client but this
        listener does; the listener's own control connections count only
        while Kafka clients are connected to it (it would otherwise hold an
        auto-started supervisor up forever)."""
        ours = self.pid
        return any(pid != ours for pid in conn_pids) or bool(self.kafka_clients())

    def kafka_clients(self) -> int:
        """Kafka client connections the listener has now: the established
        TCP connections on its port, from /proc/net/tcp{,6} (asking the
        kernel, not the listener, so a wedged listener cannot lie, and the
        listener needs no reporting channel). Looked up at most once a
        second: the idle rule needs no more."""
        now = time.monotonic()
        if now - self._clients_at < CLIENTS_CHECK_S:
            return self._clients
        self._clients_at = now
        n = 0
        for table in self._tcp_tables():
            try:
                with open(table) as f:
                    next(f, None)
                    for line in f:
                        fields = line.split()
                        if len(fields) > 3 and fields[3] == _ESTABLISHED \
                                and int(fields[1].rsplit(":", 1)[1], 16) == self.port:
                            n += 1
            except OSError:
                continue
        self._clients = n
        return n

    def _tcp_tables(self) -> Tuple[str, ...]:
        """The kernel tables our port's connections can be in: the bound
        socket's family only. Each read walks the whole TCP hash table
        (milliseconds of CPU on a host with much memory), whatever it holds."""
        family = self.sock.family if self.sock is not None else None
        if family == socket.AF_INET:
            return ("/proc/net/tcp",)
        if family == socket.AF_INET6:  # v4-mapped connections are listed here too
            return ("/proc/net/tcp6",)
        return ("/proc/net/tcp", "/proc/net/tcp6")

    def _bind(self) -> bool:
        """Bind and listen on the listener's address, once; False (logged,
        retried from tick with the back-off) while the port is taken."""
        if self.sock is not None:
            return True
        host, _, port = self.address.rpartition(":")
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]") or None, int(port),
                                                              type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, ValueError) as exc:
            self.bind_failures += 1
            log.error("kafka listener %s: %s", self.address, exc)
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            self.bind_failures += 1
            if self.bind_failures == 1 or self.bind_failures % 60 == 0:
                log.error("kafka listener cannot bind %s (%s); retrying (%d attempt(s) so far)",
                          self.address, exc.strerror or exc, self.bind_failures)
            return False
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.bind_failures = 0
        return True

    def _spawn(self) -> None:
        cfg = self.sup.cfg
        fd = self.sock.fileno()
        args = [sys.executable, "-m", "shmlog.kafka", "--data-dir", str(self.sup.data_dir),
                "--listen", self.address, "--listen-fd", str(fd),
                "--supervisor-pid", str(os.getpid()),
                "--max-request-bytes", str(int(cfg["kafka_max_request_bytes"]))]
        if not cfg["kafka_auto_create_topics"]:
            args.append("--no-auto-create-topics")
        logf = open(self.sup.data_dir / "kafka-listener.log", "ab")
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, close_fds=True, pass_fds=(fd,))
        finally:
            logf.close()
        self.started = time.monotonic()
        log.info("kafka listener on %s: pid %d", self.address, self.proc.pid)

    def start(self) -> None:
        if not self._bind():
            delay = RESTART_BACKOFF_S[min(self.bind_failures - 1, len(RESTART_BACKOFF_S) - 1)]
            self.next_start = time.monotonic() + delay
            return
        try:
            self._spawn()
        except OSError as exc:
            log.error("kafka listener could not start: %s", exc)

    def tick(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            return
        now = time.monotonic()
        if p is not None:
            lived = now - self.started
            self.crashes = 0 if lived >= STABLE_S else self.crashes + 1
            delay = RESTART_BACKOFF_S[min(self.crashes, len(RESTART_BACKOFF_S) - 1)]
            log.warning("kafka listener (pid %d) exited with %s after %.1fs; restarting in %.1fs",
                        p.pid, p.returncode, lived, delay)
            self.proc = None
            self.next_start = now + delay
        if now >= self.next_start and not self.stopped:
            if self.sock is not None:
                self.restarts += 1
            self.start()

    def stop(self) -> None:
        self.stopped = True
        p, self.proc = self.proc, None
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)

    @classmethod
    def attach(cls, sup: Any) -> Optional[ListenerProcess]:
        """Hook into the supervisor's start, tick and stop, when
        kafka_listener is set; None otherwise."""
        address = sup.cfg.get("kafka_listener")
        if not address:
            return None
        lp = cls(sup, address)
        sup.on_start.append(lp.start)
        sup.tickers.append(lp.tick)
        sup.on_stop.append(lp.stop)
        return lp
