"""MirrorIn: a Kafka topic -> a shmlog topic. See mirror.py for the
guarantees."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

from .. import errors, protocol
from ..core.partitioner import KeyPartitioner
from . import kafka_client
from .base import _bootstrap, _Mirror, _rdkafka_log, _Stopped, default_name, log


class MirrorIn(_Mirror):
    """Kafka topic -> shmlog topic. See the module docstring for the guarantees."""

    direction = "in"

    def __init__(self, cluster, topic: str, *, from_: str, local_topic: Optional[str] = None,
                 name: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
                 batch: int = 10_000, topic_config: Optional[Dict[str, Any]] = None):
        if not topic or "," in topic:
            raise errors.InvalidConfig(f"mirror in takes one remote topic, got {topic!r}")
        protocol.check_mirror_options("in", {"batch": batch, "topic_config": dict(topic_config or {})})
        protocol.check_mirror_settings("in", dict(config or {}))
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
        conf.setdefault("logger", _rdkafka_log)
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
            self._kc = kafka_client.new_client(ck.Consumer, self._consumer_conf())
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
