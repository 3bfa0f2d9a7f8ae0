"""Mirrors between shmlog topics and a Kafka cluster (confluent-kafka).

A mirror is a pair of long-running clients whose progress is a committed
offset on the side it reads, committed only after the other side
acknowledged:

- MirrorOut: a shmlog consumer group ("mirror.<name>") + an idempotent
  Kafka producer. A shmlog offset is committed only once Kafka's delivery
  report covers it, so a SIGKILLed mirror resumes from there and resends at
  most what was in flight (DUPLICATE_BOUND below).
- MirrorIn: a Kafka consumer group ("shmlog-mirror-<name>", auto-commit off)
  + a shmlog producer. The Kafka offset is committed only after the batch is
  committed in shmlog (and fsynced, for disk topics).

Neither side ever drops a message: a slow or absent Kafka slows the mirror
(librdkafka's queue fills, produce() is retried), a full memory topic blocks
the inbound mirror (send_batch is retried). While the remote is down the
mirror keeps retrying with backoff and says why in its status file
(<data_dir>/mirrors/<name>.status.json, rewritten every second), which
`shmlog mirror list` shows.

This module must never import shmlog.broker: it is a client like any other.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple, Union

from .. import errors
from ..core.partitioner import KeyPartitioner
from . import kafka_client

log = logging.getLogger("shmlog.bridge")

MIRRORS_DIR = "mirrors"
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")

# MirrorOut's duplicate bound. A shmlog offset is committed only after
# Kafka acknowledged it, and the mirror never has more than max_in_flight
# messages produced but not yet committed (it stops consuming until acks and
# a commit make room; librdkafka's queue.buffering.max.messages is set to the
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
RESCAN_INTERVAL = 10.0  # --pattern: how often new local topics are looked for


def mirrors_dir(data_dir: Union[str, Path]) -> Path:
    return Path(data_dir) / MIRRORS_DIR


def status_path(data_dir: Union[str, Path], name: str) -> Path:
    return mirrors_dir(data_dir) / f"{name}.status.json"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise errors.InvalidConfig(
            f"invalid mirror name {name!r}: use 1-200 letters, digits, '.', '_' or '-'", what=str(name))
    return name


def default_name(direction: str, topics: Sequence[str], pattern: Optional[str]) -> str:
    base = "pattern" if pattern else "+".join(topics)
    return check_name(re.sub(r"[^A-Za-z0-9._-]", "_", f"{direction}.{base}")[:200])


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


_rdkafka_log = logging.getLogger("shmlog.bridge.librdkafka")
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
    Python form (Cluster.mirror)."""

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


class _Run:
    """One consumed shmlog batch in flight to Kafka: committed once every
    remote partition it went to acknowledged its last message (librdkafka
    keeps order per partition, and with the gap-less guarantee a later
    message is never acknowledged after an earlier one failed)."""

    __slots__ = ("end", "left", "count", "ts", "gen")

    def __init__(self, end: int, left: int, count: int, ts: int, gen: int):
        self.end = end
        self.left = left
        self.count = count
        self.ts = ts
        self.gen = gen


class MirrorOut(_Mirror):
    """shmlog topic(s) -> Kafka. See the module docstring for the guarantees."""

    direction = "out"

    def __init__(self, cluster, topics: Union[str, Sequence[str], None] = None, *, to: str,
                 pattern: Optional[str] = None, remote_topic: Optional[str] = None,
                 name: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, commit_interval_ms: float = 20.0,
                 replication_factor: int = -1, create_remote: bool = True,
                 stall_timeout_s: float = 10.0):
        if isinstance(topics, str):
            topics = [t for t in topics.split(",") if t]
        topics = list(topics or [])
        if bool(topics) == bool(pattern):
            raise errors.InvalidConfig("mirror out needs topics or a pattern (one of the two)")
        if remote_topic is not None and len(topics) != 1:
            raise errors.InvalidConfig("a remote topic name (--as) needs exactly one local topic")
        if max_in_flight < 1:
            raise errors.InvalidConfig(f"max_in_flight must be >= 1, got {max_in_flight}")
        super().__init__(cluster, name or default_name("out", topics, pattern), to, config)
        self.pattern = re.compile(pattern) if pattern else None
        self.topics = topics
        self.remote_topic = remote_topic
        self.group = f"mirror.{self.name}"
        self.max_in_flight = max_in_flight
        self.commit_interval = commit_interval_ms / 1000.0
        self.replication_factor = replication_factor
        self.create_remote = create_remote
        self.stall_timeout = stall_timeout_s
        self._ack_at = time.monotonic()
        self._watch_at = 0.0
        self._rescan_at = time.monotonic() + RESCAN_INTERVAL
        self._reopen = False
        self.topics_now: List[str] = list(topics)
        kafka_client.kafka()  # fail now, naming the extra, not in the run loop
        self._producer = None
        self._consumer = None
        self._admin = None
        self._gen = 0
        self._inflight = 0
        self._pending: Dict[Tuple[str, int], Deque[_Run]] = {}
        self._resume: Dict[Tuple[str, int], int] = {}  # last committed (or first read) offset
        self._to_commit: Dict[Tuple[str, int], int] = {}
        self._commit_at = 0.0
        self._broken: Optional[str] = None  # a delivery failure or fatal error: rewind
        self._acked_since = 0
        self._remote: Dict[str, Tuple[str, int, Optional[KeyPartitioner]]] = {}
        self._local_parts: Dict[str, int] = {}
        self._last_progress = time.monotonic()

    # ------------------------------------------------------------ setup
    def _producer_conf(self) -> Dict[str, Any]:
        conf = {
            # the guarantees in the module docstring rest on these three
            "enable.idempotence": True,
            "enable.gapless.guarantee": True,
            "message.timeout.ms": 0,
            "queue.buffering.max.messages": self.max_in_flight,
            "linger.ms": 5,
            "batch.num.messages": 10000,
            # the mirror creates remote topics itself, with the local
            # partition count; a broker's auto-creation would pick its own
            "allow.auto.create.topics": False,
        }
        conf.update(self.config)
        for k in ("enable.idempotence", "enable.gapless.guarantee"):
            if str(conf.get(k)).lower() not in ("true", "1"):
                raise errors.InvalidConfig(
                    f"mirror out needs {k}=true (its no-loss, no-duplicate guarantee rests on it)", what=k)
        for k in ("message.timeout.ms", "delivery.timeout.ms"):
            if k in self.config and str(self.config[k]) != "0":
                # a timed-out message is failed alone, leaving a gap that
                # the per-run delivery tracking would not see
                raise errors.InvalidConfig(
                    f"mirror out needs {k}=0 (never time a message out): a timed-out message would "
                    f"leave a gap in Kafka", what=k)
        conf["error_cb"] = self._on_error
        conf.setdefault("logger", _rdkafka_log)
        return _bootstrap(conf, self.bootstrap)

    def _local_topics(self) -> List[str]:
        if self.pattern is None:
            return self.topics
        names = sorted(n for n in self.cluster.topics() if self.pattern.fullmatch(n))
        return names

    def _open(self) -> None:
        ck = kafka_client.kafka()
        topics = self._local_topics()
        if not topics:
            raise errors.UnknownTopic(f"no local topic matches the pattern {self.pattern.pattern!r}")
        if self._admin is None:
            self._admin = kafka_client.admin(_bootstrap(self.config, self.bootstrap))
        for t in topics:
            n = self.cluster.topic(t).num_partitions
            self._local_parts[t] = n
            rt = self.remote_topic or t
            if self.create_remote:
                rn = kafka_client.ensure_remote_topic(self._admin, rt, n)
            else:
                rn = kafka_client.remote_partitions(self._admin, rt)
                if not rn:
                    raise kafka_client.KafkaError(f"remote topic {rt!r} does not exist", what=rt)
            # partition i -> i when the counts match, else Kafka's own placement
            self._remote[t] = (rt, rn, None if rn == n else KeyPartitioner(rn))
            if rn != n:
                log.warning("mirror %s: local topic %r has %d partitions, remote %r has %d: placing "
                            "by murmur2(key) (keyless messages: local partition %% %d)", self.name, t, n,
                            rt, rn, rn)
        if self._producer is None:
            self._producer = ck.Producer(self._producer_conf())
        if self._consumer is None:
            self._consumer = self.cluster.consumer(topics, group=self.group, enable_auto_commit=False)
            self.topics_now = topics

    def _on_error(self, err) -> None:
        """librdkafka's global error callback (from poll()): transport errors
        are retried by librdkafka itself; a fatal one needs a new producer."""
        if err.fatal():
            self._broken = f"fatal Kafka producer error: {err.str()}"
            return
        self._remote_error(f"Kafka {self.bootstrap}: {err.str()}")

    def _on_delivery(self, run: _Run, err, msg) -> None:
        if run.gen != self._gen:
            return  # a report of a producer we already replaced
        if err is not None:
            self._broken = f"Kafka refused a message of {msg.topic()}[{msg.partition()}]: {err.str()}"
            return
        run.left -= 1

    # ------------------------------------------------------------ the loop
    def _after_failure(self) -> None:
        self._rewind()

    def _pump(self) -> None:
        producer = self._producer
        consumer = self._consumer
        produce = producer.produce
        poll = producer.poll
        while not self._stop.is_set():
            if self._broken is not None:
                raise kafka_client.KafkaError(self._broken)
            if self._reopen:
                if self._inflight:
                    poll(0.01)
                    self._settle()
                    continue
                self._settle(force=True)
                self._consumer.close()
                self._consumer = None
                self._pending.clear()
                self._resume.clear()
                self._reopen = False
                return  # run() opens again, with the topics that match now
            # the window: sent but not committed, whether acknowledged yet
            # or not; never more than max_in_flight (the duplicate bound)
            room = self.max_in_flight - self._inflight - self._acked_since
            if room > 0:
                # wait for data only when nothing is in flight: delivery
                # reports are served by poll() below, not while we sleep here
                batch = consumer.consume_batch(max_messages=min(10_000, room),
                                               timeout=0.01 if self._inflight else 0.1)
                if batch is not None:
                    self._send(batch, produce, poll)
                poll(0)
            else:
                poll(0.01)  # the window is full: wait for acknowledgements
            self._settle()
            self._watch()
            self._write_status()

    def _watch(self) -> None:
        """Once a second: is Kafka acknowledging what is in flight? A broker
        that answers but never acknowledges (it restarted empty and no longer
        knows this idempotent producer: librdkafka then retries forever,
        silently) gets a new producer after stall_timeout_s, and what was not
        committed is sent again. A broker that does not answer at all is
        simply waited for: librdkafka reconnects by itself."""
        now = time.monotonic()
        if now < self._watch_at:
            return
        self._watch_at = now + 1.0
        if self.pattern is not None and now >= self._rescan_at:
            self._rescan_at = now + RESCAN_INTERVAL
            if set(self._local_topics()) != set(self.topics_now):
                # new (or deleted) matching topics: finish what is in flight,
                # commit, and reopen the consumer with the new set (_pump)
                log.info("mirror %s: the topics matching %r changed; reopening", self.name,
                         self.pattern.pattern)
                self._reopen = True
        if not self._inflight:
            self._probe_idle(lambda: self._admin.list_topics(timeout=2))
            return
        stalled = now - self._ack_at
        if stalled < self.stall_timeout:
            return
        what = f"Kafka {self.bootstrap}: no acknowledgement for {stalled:.0f}s ({self._inflight} messages in flight)"
        try:
            self._admin.list_topics(timeout=2)
        except kafka_client.kafka().KafkaException:
            if self.error is None or "no acknowledgement" in self.error:
                self._remote_error(f"{what}; the cluster does not answer")
            return
        raise kafka_client.KafkaError(f"{what} although the cluster answers: starting a new producer and "
                                      f"resending from the last commit")

    def _send(self, batch, produce, poll) -> None:
        topic = batch.topic
        p = batch.partition
        rt, rn, kp = self._remote[topic]
        offsets = batch.offsets
        values = batch.values
        keys = batch.keys
        stamps = batch.timestamps_ms
        headers = batch._headers  # None when no record had headers
        n = len(offsets)
        tp = (topic, p)
        if tp not in self._resume:
            self._resume[tp] = offsets[0]
        if kp is None:
            parts = None
            lasts = {n - 1: p}
        else:
            fallback = p % rn
            parts = [fallback if k is None else kp(k) for k in keys]
            lasts = {}
            for i, rp in enumerate(parts):
                lasts[rp] = i
            lasts = {i: rp for rp, i in lasts.items()}
        if not self._inflight:
            self._ack_at = time.monotonic()  # the stall clock starts with the first message in flight
        run = _Run(offsets[-1] + 1, len(lasts), n, stamps[0], self._gen)
        self._pending.setdefault(tp, deque()).append(run)
        self._inflight += n
        cb = functools.partial(self._on_delivery, run)
        start = 0
        if parts is None and headers is None:
            # the common case (no headers, partition i -> i) without the
            # general loop's per-message branches
            try:
                for start in range(n - 1):
                    produce(rt, value=values[start], key=keys[start], partition=p, timestamp=stamps[start])
                start = n - 1
                produce(rt, value=values[start], key=keys[start], partition=p, timestamp=stamps[start],
                        on_delivery=cb)
                return
            except BufferError:
                pass  # the general loop below waits, from message `start` on
        rp = p
        for i in range(start, n):
            if parts is not None:
                rp = parts[i]
            h = headers[i] if headers is not None else None
            while True:
                try:
                    # only the last message of the run per remote partition
                    # carries a delivery callback: a Python call per message
                    # would cost more than the produce() itself
                    if i in lasts:
                        produce(rt, value=values[i], key=keys[i], partition=rp, timestamp=stamps[i],
                                headers=h or None, on_delivery=cb)
                    else:
                        produce(rt, value=values[i], key=keys[i], partition=rp, timestamp=stamps[i],
                                headers=h or None)
                    break
                except BufferError:
                    # librdkafka's queue is full: Kafka is slow or away.
                    # Wait for it (backpressure), never drop.
                    poll(0.05)
                    self._settle()
                    self._write_status()
                    if self._broken is not None:
                        raise kafka_client.KafkaError(self._broken) from None
                    if self._stop.is_set() and self._inflight:
                        # stopping: what is not produced yet is simply not
                        # committed; the next start sends it
                        return
            if (i & 1023) == 1023:
                poll(0)

    def _settle(self, force: bool = False) -> None:
        """Move the commit point past every run all of whose remote
        partitions acknowledged it, and commit every commit_interval."""
        done = 0
        oldest = None
        for tp, runs in self._pending.items():
            end = None
            while runs and runs[0].left <= 0:
                r = runs.popleft()
                end = r.end
                done += r.count
            if end is not None:
                self._to_commit[tp] = end
                self._resume[tp] = end
            if runs and (oldest is None or runs[0].ts < oldest):
                oldest = runs[0].ts
        if done:
            self._inflight -= done
            self._acked_since += done
            self._last_progress = self._ack_at = time.monotonic()
            if self.error is not None or self.state != "running":
                self._remote_ok()
        now = time.monotonic()
        if self._to_commit and (force or now >= self._commit_at
                                or self._acked_since >= self.max_in_flight // 2):
            self._commit_now()
            self._commit_at = now + self.commit_interval

    def _commit_now(self) -> None:
        offsets, self._to_commit = self._to_commit, {}
        self._consumer.commit(offsets)
        self._count(self._acked_since)
        self._acked_since = 0

    def lag(self) -> Tuple[int, float]:
        c = self._consumer
        if c is None:
            return 0, 0.0
        ends = c.end_offsets()
        lag = 0
        for tp, end in ends.items():
            pos = self._resume.get(tp)
            if pos is None:
                pos = c.position(*tp)
            lag += max(0, end - pos)
        oldest = None
        for runs in self._pending.values():
            if runs and (oldest is None or runs[0].ts < oldest):
                oldest = runs[0].ts
        if oldest is not None:
            secs = max(0.0, time.time() - oldest / 1000.0)
        elif lag:
            secs = time.monotonic() - self._last_progress
        else:
            secs = 0.0
        return lag, secs

    def _describe(self) -> Dict[str, Any]:
        return {"topics": list(getattr(self, "topics_now", self.topics)), "group": self.group,
                "in_flight": self._inflight, "max_in_flight": self.max_in_flight,
                "remote_topics": {t: r[0] for t, r in self._remote.items()}}

    def _rewind(self) -> None:
        """A producer that failed (fatal error, refused message, remote
        gone): drop it and everything in flight, and read again from the
        last commit. What Kafka did take since then is sent again: that is
        the duplicate bound, max_in_flight."""
        old, self._producer = self._producer, None
        self._gen += 1
        self._broken = None
        if old is not None:
            try:
                old.purge()
                old.poll(0)
            except Exception as exc:
                log.debug("mirror %s: purging the old producer: %s", self.name, exc)
        if self._to_commit and self._consumer is not None:
            try:
                self._commit_now()
            except errors.ShmlogError as exc:
                log.warning("mirror %s: commit before rewinding failed: %s", self.name, exc)
        if self._consumer is not None:
            for tp, off in self._resume.items():
                try:
                    self._consumer.seek(tp[0], tp[1], off)
                except errors.ShmlogError as exc:
                    log.warning("mirror %s: could not rewind %s[%d] to %d: %s", self.name, tp[0], tp[1],
                                off, exc)
        self._pending.clear()
        self._inflight = 0
        self._acked_since = 0

    def _shutdown(self) -> None:
        """Stop: let Kafka acknowledge what is in flight (a few seconds at
        most), commit that, close both sides."""
        p = self._producer
        if p is not None and self._broken is None:
            deadline = time.monotonic() + 10
            # len(p): messages librdkafka still holds (a run cut short by
            # the stop never completes, so _inflight need not reach 0)
            while len(p) and time.monotonic() < deadline and self._broken is None:
                p.poll(0.05)
                self._settle()
        if self._consumer is not None:
            try:
                self._settle(force=True)
            except errors.ShmlogError as exc:
                log.warning("mirror %s: last commit failed: %s", self.name, exc)
        if p is not None:
            try:
                p.purge()
                p.poll(0)
            except Exception:
                pass
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self.state = "stopped"
        self._write_status(force=True)


class MirrorIn(_Mirror):
    """Kafka topic -> shmlog topic. See the module docstring for the guarantees."""

    direction = "in"

    def __init__(self, cluster, topic: str, *, from_: str, local_topic: Optional[str] = None,
                 name: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
                 batch: int = 10_000, topic_config: Optional[Dict[str, Any]] = None):
        if not topic or "," in topic:
            raise errors.InvalidConfig(f"mirror in takes one remote topic, got {topic!r}")
        super().__init__(cluster, name or default_name("in", [local_topic or topic], None), from_, config)
        self.topic = topic
        self.local_topic = local_topic or topic
        self.batch = batch
        self.topic_config = dict(topic_config or {})
        self.group = str(self.config.get("group.id", f"shmlog-mirror-{self.name}"))
        kafka_client.kafka()
        self._kc = None
        self._producer = None
        self._nlocal = 0
        self._kp: Optional[KeyPartitioner] = None
        self._positions: Dict[int, int] = {}
        self._last_ts: Optional[float] = None
        self._uncommitted: Dict[int, int] = {}

    def _consumer_conf(self) -> Dict[str, Any]:
        conf = {"group.id": self.group, "auto.offset.reset": "earliest", "enable.partition.eof": False}
        conf.update(self.config)
        # the guarantee rests on these: Kafka offsets move only after shmlog has the batch
        conf["enable.auto.commit"] = False
        conf["enable.auto.offset.store"] = False
        conf["error_cb"] = self._on_error
        return _bootstrap(conf, self.bootstrap)

    def _on_error(self, err) -> None:
        self._remote_error(f"Kafka {self.bootstrap}: {err.str()}")

    def _open(self) -> None:
        ck = kafka_client.kafka()
        adm = kafka_client.admin(_bootstrap(self.config, self.bootstrap))
        rn = kafka_client.remote_partitions(adm, self.topic)
        if not rn:
            raise kafka_client.KafkaError(f"remote topic {self.topic!r} does not exist (yet)", what=self.topic)
        try:
            self._nlocal = self.cluster.topic(self.local_topic).num_partitions
        except errors.UnknownTopic:
            try:
                self.cluster.create_topic(self.local_topic, partitions=rn, **self.topic_config)
            except errors.TopicExists:
                pass
            self._nlocal = self.cluster.topic(self.local_topic).num_partitions
        self._kp = None if self._nlocal == rn else KeyPartitioner(self._nlocal)
        if self._producer is None:
            # max_block_ms: how long one try waits on a full memory topic
            # before the loop below tries again (and keeps the status fresh)
            self._producer = self.cluster.producer(max_block_ms=1000)
        if self._kc is None:
            self._kc = ck.Consumer(self._consumer_conf())
            self._kc.subscribe([self.topic], on_revoke=self._on_revoke)

    def _on_revoke(self, consumer, partitions) -> None:
        for tp in partitions:
            self._positions.pop(tp.partition, None)

    def _stopped_while_blocked(self) -> None:
        # the batch being sent is not committed to Kafka: read again next time
        self._uncommitted.clear()

    def _after_failure(self) -> None:
        """A batch may be half in shmlog and the Kafka consumer past it:
        commit what shmlog has, then rejoin from Kafka's committed offsets
        (a new consumer), so nothing read but not written is skipped."""
        if self._kc is None:
            return
        if self._uncommitted:
            try:
                self._producer.flush(durable=True)
                self._commit_kafka()
            except errors.ShmlogError as exc:
                log.warning("mirror %s: could not commit before starting over: %s", self.name, exc)
        try:
            self._kc.close()
        except Exception as exc:
            log.debug("mirror %s: closing the Kafka consumer: %s", self.name, exc)
        self._kc = None
        self._uncommitted.clear()
        self._positions.clear()

    def _pump(self) -> None:
        kc = self._kc
        while not self._stop.is_set():
            msgs = kc.consume(self.batch, 0.1)
            if msgs:
                self._mirror(msgs)
            else:
                if self._uncommitted:
                    self._commit_kafka()
                self._probe_idle(lambda: kc.list_topics(timeout=2))
            self._write_status()

    def _mirror(self, msgs) -> None:
        runs: Dict[int, List[Any]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != kafka_client.kafka().KafkaError._PARTITION_EOF:
                    self._remote_error(f"Kafka {self.bootstrap}: {err.str()}")
                continue
            runs.setdefault(m.partition(), []).append(m)
        for kp_, ms in runs.items():
            values = [m.value() for m in ms]
            keys = [m.key() for m in ms]
            headers = [m.headers() or None for m in ms]
            stamps = [ts if kind else None for kind, ts in (m.timestamp() for m in ms)]
            if not any(headers):
                headers = None
            if all(s is None for s in stamps):
                stamps = None
            if self._kp is None:
                self._send(kp_, values, keys, headers, stamps)
            else:
                # counts differ: Kafka's own placement (murmur2), keyless by partition
                fallback = kp_ % self._nlocal
                parts = [fallback if k is None else self._kp(k) for k in keys]
                for lp in sorted(set(parts)):
                    idx = [i for i, q in enumerate(parts) if q == lp]
                    self._send(lp, [values[i] for i in idx], [keys[i] for i in idx],
                               None if headers is None else [headers[i] for i in idx],
                               None if stamps is None else [stamps[i] for i in idx])
            self._uncommitted[kp_] = ms[-1].offset() + 1
            self._positions[kp_] = ms[-1].offset() + 1
            ts = ms[-1].timestamp()
            self._last_ts = ts[1] / 1000.0 if ts[0] else time.time()
        # shmlog has the batch (durably, on disk topics) before Kafka hears of it
        self._producer.flush(durable=True)
        n = sum(len(ms) for ms in runs.values())
        self._commit_kafka()
        self._count(n)
        if self.error is not None or self.state != "running":
            self._remote_ok()

    def _send(self, partition: int, values, keys, headers, stamps) -> None:
        """send_batch until all of it is committed: a full memory topic
        blocks here (backpressure), it never drops."""
        while values:
            if self._stop.is_set() and self.state == "blocked":
                # stopping while blocked: this batch is not committed to
                # Kafka, so the next start reads it again
                raise _Stopped()
            try:
                self._producer.send_batch(self.local_topic, values, keys=keys, partition=partition,
                                          headers=headers, timestamps=stamps)
                if self.state == "blocked":
                    self.state = "running"
                return
            except errors.BufferFull as exc:
                k = getattr(exc, "committed", 0)
                values, keys = values[k:], keys[k:]
                headers = None if headers is None else headers[k:]
                stamps = None if stamps is None else stamps[k:]
                # Kafka's consumer is not polled meanwhile (that would hand
                # out more messages): blocked past max.poll.interval.ms it
                # leaves the group, the commit below fails and is retried,
                # and the worst case is these messages mirrored twice
                self.state = "blocked"
                self._write_status()

    def _commit_kafka(self) -> None:
        ck = kafka_client.kafka()
        offsets = [ck.TopicPartition(self.topic, p, o) for p, o in self._uncommitted.items()]
        try:
            self._kc.commit(offsets=offsets, asynchronous=False)
            self._uncommitted.clear()
        except ck.KafkaException as exc:
            # kept and tried again: the messages are in shmlog already, so
            # the worst outcome of a crash now is their being mirrored twice
            self._remote_error(f"Kafka {self.bootstrap}: commit failed: {exc}")

    def lag(self) -> Tuple[int, float]:
        kc = self._kc
        if kc is None:
            return 0, 0.0
        ck = kafka_client.kafka()
        lag = 0
        for p, pos in list(self._positions.items()):
            try:
                _lo, hi = kc.get_watermark_offsets(ck.TopicPartition(self.topic, p), cached=True)
            except ck.KafkaException:
                continue
            if hi >= 0:
                lag += max(0, hi - pos)
        secs = max(0.0, time.time() - self._last_ts) if lag and self._last_ts else 0.0
        return lag, secs

    def _describe(self) -> Dict[str, Any]:
        return {"topic": self.topic, "local_topic": self.local_topic, "group": self.group}

    def _shutdown(self) -> None:
        if self._kc is not None:
            try:
                if self._uncommitted and self._producer is not None:
                    self._producer.flush(durable=True)
                    self._commit_kafka()
            except errors.ShmlogError as exc:
                log.warning("mirror %s: last commit failed: %s", self.name, exc)
            try:
                self._kc.close()
            except Exception as exc:
                log.debug("mirror %s: closing the Kafka consumer: %s", self.name, exc)
            self._kc = None
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        self.state = "stopped"
        self._write_status(force=True)


def open_mirror(cluster, topics: Union[str, Sequence[str], None] = None, *, to: Optional[str] = None,
           from_: Optional[str] = None, pattern: Optional[str] = None, as_: Optional[str] = None,
           name: Optional[str] = None, config: Optional[Dict[str, Any]] = None, start: bool = True,
           **options: Any) -> _Mirror:
    """Mirror shmlog topics out to Kafka (to=BOOTSTRAP) or a Kafka topic in
    (from_=BOOTSTRAP). as_ names the topic on the other side. With
    start=True the mirror runs in a background thread until close()."""
    if (to is None) == (from_ is None):
        raise errors.InvalidConfig("mirror needs exactly one of to= (out to Kafka) or from_= (in from Kafka)")
    if to is not None:
        m: _Mirror = MirrorOut(cluster, topics, to=to, pattern=pattern, remote_topic=as_, name=name,
                               config=config, **options)
    else:
        if pattern is not None:
            raise errors.InvalidConfig("mirror in takes one topic, not a pattern")
        if not isinstance(topics, str):
            topics = ",".join(topics or [])
        m = MirrorIn(cluster, topics, from_=from_, local_topic=as_, name=name, config=config, **options)
    return m.start() if start else m
