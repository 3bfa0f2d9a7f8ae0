"""What both mirror directions share: names and files under
<data_dir>/mirrors/, the status file, the run loop with its backoff, and a
background thread for the Python form. The directions are mirror_out.py
(shmlog -> Kafka) and mirror_in.py (Kafka -> shmlog); mirror.py says what
they guarantee.

This package must never import shmlog.broker: a mirror is a client like
any other.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from .. import errors, protocol
from . import kafka_client

log = logging.getLogger("shmlog.bridge")

# MirrorOut's duplicate bound. A shmlog offset is committed only after
# Kafka acknowledged it, and the mirror never has more than max_in_flight
# messages produced but not yet committed (it stops consuming until acks and
# a commit make room; a commit under way on the consumer's commit thread
# still counts; librdkafka's queue.buffering.max.messages is set to the
# same number). So after a SIGKILL of the mirror, or a fatal producer error,
# at most max_in_flight messages (default below) are sent to Kafka a second
# time, and none is lost. In normal operation there are none: the producer
# is idempotent (enable.idempotence=true) and message.timeout.ms=0 (never
# give up on a message), with enable.gapless.guarantee=true, so a message
# either reaches Kafka in order or the producer raises a fatal error and the
# mirror rewinds to its last commit.
DEFAULT_MAX_IN_FLIGHT = 100_000
DUPLICATE_BOUND = DEFAULT_MAX_IN_FLIGHT

STATUS_INTERVAL = 1.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
PROBE_INTERVAL = 3.0


# names and files of mirrors: one definition, in protocol.py, shared with
# the supervisor (which runs managed mirrors) and Cluster.mirror
MIRRORS_DIR = protocol.MIRRORS_DIR
NAME_RE = protocol.MIRROR_NAME_RE
mirrors_dir = protocol.mirrors_dir
check_name = protocol.check_mirror_name
default_name = protocol.default_mirror_name


def status_path(data_dir: Union[str, Path], name: str) -> Path:
    return protocol.mirror_file(data_dir, name, "status")


def _write_json(path: Path, obj: Any) -> None:
    """Replace path atomically (readers see the old or the new file), but
    without fsync: a status is rewritten every second, and losing the last
    one in a crash costs nothing."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


class _QuietGapless(logging.Filter):
    """librdkafka warns at every start that enable.gapless.guarantee is
    experimental; the mirror sets it on purpose (see DUPLICATE_BOUND)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "enable.gapless.guarantee is experimental" not in record.getMessage()


_rdkafka_log = kafka_client.LIBRDKAFKA_LOG
_rdkafka_log.addFilter(_QuietGapless())


def _bootstrap(conf: Dict[str, Any], bootstrap: str) -> Dict[str, Any]:
    out = {"bootstrap.servers": bootstrap}
    out.update(conf or {})
    return out


class _Stopped(Exception):
    """stop() while a batch waits for room in a full topic."""


class _Mirror:
    """What both directions share: the run loop's stop flag, status file,
    backoff while the remote is down, and a background thread for the
    Python form (open_mirror)."""

    direction = "?"

    def __init__(self, cluster, name: str, bootstrap: str, config: Optional[Dict[str, Any]]):
        self.cluster = cluster
        self.name = check_name(name)
        self.bootstrap = bootstrap
        self.config = dict(config or {})
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._thread_error: Optional[BaseException] = None
        self.state = "starting"
        self.error: Optional[str] = None
        self.error_since: Optional[float] = None
        self.messages = 0  # acknowledged by the other side (and committed)
        self._rate = 0.0
        self._rate_at = time.monotonic()
        self._rate_count = 0
        self._status_at = 0.0
        self._probe_at = 0.0
        self.started = time.time()
        d = mirrors_dir(cluster.data_dir)
        d.mkdir(mode=0o700, exist_ok=True)
        self.status_file = status_path(cluster.data_dir, self.name)

    # ------------------------------------------------------------ errors
    def _remote_error(self, what: str) -> None:
        """The remote is failing: shown in the status (and logged once per
        distinct error), cleared by _remote_ok when things move again."""
        if what != self.error:
            log.error("mirror %s: %s (retrying)", self.name, what)
        if self.error_since is None:
            self.error_since = time.time()
        self.error = what
        self.state = "retrying"
        self._write_status(force=True)

    def _remote_ok(self) -> None:
        if self.error is not None:
            log.warning("mirror %s: the remote is back after %.1fs; resuming", self.name,
                        time.time() - (self.error_since or time.time()))
        self.error = None
        self.error_since = None
        self.state = "running"

    def _probe_idle(self, answers) -> None:
        """An idle mirror with an error on show (say the broker closed an
        idle connection, or was away and is back with nothing to carry)
        asks the cluster for metadata every few seconds, and clears the
        error once it answers. answers() raises if it does not."""
        if self.error is None or time.monotonic() < self._probe_at:
            return
        self._probe_at = time.monotonic() + PROBE_INTERVAL
        try:
            answers()
        except Exception as exc:  # still away: the error stays, librdkafka keeps retrying
            log.debug("mirror %s: probe failed: %s", self.name, exc)
            return
        self._remote_ok()
        self._write_status(force=True)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # ------------------------------------------------------------ status
    def _count(self, n: int) -> None:
        self.messages += n
        self._rate_count += n

    def lag(self) -> Tuple[int, float]:
        raise NotImplementedError

    def status(self) -> Dict[str, Any]:
        now = time.monotonic()
        dt = now - self._rate_at
        if dt >= 0.5:
            self._rate = self._rate_count / dt
            self._rate_count = 0
            self._rate_at = now
        try:
            lag_messages, lag_seconds = self.lag()
        except Exception as exc:  # a status must never stop the mirror
            log.debug("mirror %s: lag unavailable: %s", self.name, exc)
            lag_messages, lag_seconds = None, None
        return {
            "name": self.name, "direction": self.direction, "pid": os.getpid(), "state": self.state,
            "error": self.error, "error_since": self.error_since, "bootstrap": self.bootstrap,
            "messages": self.messages, "rate": round(self._rate, 1), "lag_messages": lag_messages,
            "lag_seconds": None if lag_seconds is None else round(lag_seconds, 3),
            "started": self.started, "updated": time.time(), **self._describe(),
        }

    def _describe(self) -> Dict[str, Any]:
        return {}

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < STATUS_INTERVAL:
            return
        self._status_at = now
        try:
            _write_json(self.status_file, self.status())
        except OSError as exc:
            log.warning("mirror %s: could not write %s: %s", self.name, self.status_file, exc)

    # ------------------------------------------------------------ lifecycle
    def run(self) -> None:
        """Until stop(): open both sides and pump; while the remote (or a
        local topic) is missing, show why and retry with backoff."""
        backoff = BACKOFF_MIN
        self._write_status(force=True)
        try:
            while not self._stop.is_set():
                try:
                    self._open()
                    backoff = BACKOFF_MIN
                    if self.state == "starting":
                        self.state = "running"
                    self._pump()
                    continue
                except _Stopped:
                    self._stopped_while_blocked()
                    break
                except (kafka_client.KafkaError, kafka_client.kafka().KafkaException) as exc:
                    self._remote_error(f"Kafka {self.bootstrap}: {exc}")
                    self._after_failure()
                except errors.UnknownTopic as exc:
                    # a local topic is missing (or none matches yet): wait for it
                    self._remote_error(str(exc))
                except (errors.BrokerNotRunning, errors.GroupError) as exc:
                    # the local supervisor away for longer than a request
                    # waits, or the group moved a partition: start over from
                    # the last commit
                    self._remote_error(f"shmlog {self.cluster.data_dir}: {exc}")
                    self._after_failure()
                self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            self._shutdown()

    # what each direction fills in
    def _open(self) -> None:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    def _after_failure(self) -> None:
        """After the remote failed, before the backoff."""

    def _stopped_while_blocked(self) -> None:
        """stop() came while a batch waited for room (MirrorIn)."""

    def stop(self) -> None:
        """Ask run() to finish: it drains what is in flight, commits, returns."""
        self._stop.set()

    def start(self) -> _Mirror:
        """Run in a background thread (the Python form); stop() or close() ends it."""
        def target():
            try:
                self.run()
            except BaseException as exc:
                self._thread_error = exc
                log.exception("mirror %s failed", self.name)

        self._thread = threading.Thread(target=target, name=f"shmlog-mirror-{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: Optional[float] = 30.0) -> None:
        self.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        err, self._thread_error = self._thread_error, None
        if err is not None:
            raise err

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
