"""MirrorOut: shmlog topic(s) -> a Kafka cluster. See mirror.py for the
guarantees and DUPLICATE_BOUND for what a crash may send twice."""

from __future__ import annotations

import functools
import re
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple, Union

from .. import errors, protocol
from ..core._produce import produce_run
from ..core.partitioner import KeyPartitioner
from . import kafka_client
from .base import (
    DEFAULT_MAX_IN_FLIGHT,
    _bootstrap,
    _Mirror,
    default_name,
    log,
)

RUN_MESSAGES = 1000  # messages per delivery callback (see _send)

# librdkafka settings for throughput that the mirror sets unless -X says
# otherwise (bench/mirror_bench.py gives its hand-written loop the same):
# batches of up to 10k messages that wait at most 5 ms to fill
PRODUCER_DEFAULTS = {"linger.ms": 5, "batch.num.messages": 10000}
# what a record batch of one message adds to the key and value that a
# topic's max_message_bytes counts: the batch header (61 B), the record's
# varints and its headers (which max_message_bytes leaves out). Kafka's own
# defaults differ by 12 B (max.message.bytes 1048588 for 1 MiB); headers
# need more room than that.
FRAMING_ROOM = 64 << 10
# librdkafka's message.max.bytes and Kafka's max.message.bytes defaults: a
# mirror raises them only for topics whose messages may be larger
RDKAFKA_MESSAGE_MAX = 1_000_000
KAFKA_TOPIC_MESSAGE_MAX = 1_048_588
RESCAN_INTERVAL = 10.0  # --pattern: how often new local topics are looked for
PRODUCER_ID_WAIT = 5.0  # at most, before the first produce (then librdkafka goes on asking)


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
        protocol.check_mirror_options("out", {
            "max_in_flight": max_in_flight, "commit_interval_ms": commit_interval_ms,
            "replication_factor": replication_factor, "create_remote": create_remote,
            "stall_timeout_s": stall_timeout_s})
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
        self._message_max = RDKAFKA_MESSAGE_MAX  # librdkafka's message.max.bytes, as set
        self._consumer = None
        self._admin = None
        self._gen = 0
        self._inflight = 0
        self._pending: Dict[Tuple[str, int], Deque[_Run]] = {}
        self._resume: Dict[Tuple[str, int], int] = {}  # last committed (or first read) offset
        self._to_commit: Dict[Tuple[str, int], int] = {}
        self._commit_at = 0.0
        self._broken: Optional[str] = None  # a delivery failure or fatal error: rewind
        self._acked_since = 0  # acknowledged, not committed yet
        self._committing = 0  # acknowledged, in the commit under way
        self._commit_pending: Optional[Tuple[Any, Dict[Tuple[str, int], int]]] = None  # (future, offsets)
        self._remote: Dict[str, Tuple[str, int, Optional[KeyPartitioner]]] = {}
        self._local_parts: Dict[str, int] = {}
        self._last_progress = time.monotonic()
        # perf_counter of the first produce() and of the last delivery
        # report that completed a run: what bench/mirror_bench.py times
        self.first_produce_at: Optional[float] = None
        self.last_ack_at: Optional[float] = None

    # ------------------------------------------------------------ setup
    def _producer_conf(self) -> Dict[str, Any]:
        conf = {
            # the guarantees in the module docstring rest on these three
            "enable.idempotence": True,
            "enable.gapless.guarantee": True,
            "message.timeout.ms": 0,
            "queue.buffering.max.messages": self.max_in_flight,
            **PRODUCER_DEFAULTS,
            # the mirror creates remote topics itself, with the local
            # partition count; a broker's auto-creation would pick its own
            "allow.auto.create.topics": False,
        }
        # the settings the guarantees rest on: -X may repeat, not change them
        conf.update(protocol.check_mirror_settings("out", self.config))
        conf["error_cb"] = self._on_error
        # the log callback sees when the producer id arrives (_open waits for it)
        self._producer_log = kafka_client.ProducerLog()
        conf["logger"] = self._producer_log
        return _bootstrap(kafka_client.with_eos_debug(conf), self.bootstrap)

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
        largest = 0
        for t in topics:
            info = self.cluster.topic(t)
            n = info.num_partitions
            self._local_parts[t] = n
            # the largest record batch a message of this topic makes
            need = int(info.config.get("max_message_bytes") or 0) + FRAMING_ROOM
            largest = max(largest, need)
            rt = self.remote_topic or t
            if self.create_remote:
                # a topic the mirror creates takes the local topic's largest
                # message; Kafka's default (1048588) would refuse a 1 MiB
                # value with a key or headers, and the mirror would stall
                cfg = {"max.message.bytes": str(need)} if need > KAFKA_TOPIC_MESSAGE_MAX else None
                rn = kafka_client.ensure_remote_topic(self._admin, rt, n,
                                                      replication_factor=self.replication_factor,
                                                      config=cfg)
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
            conf = self._producer_conf()
            # librdkafka refuses at produce() a message over message.max.bytes
            # (1,000,000 by default, less than Kafka's 1 MiB): raise it to what
            # the mirrored topics allow, unless -X set it. A topic matched later
            # with larger messages gets a named error (_produce_refused).
            if "message.max.bytes" not in self.config:
                conf["message.max.bytes"] = min(max(RDKAFKA_MESSAGE_MAX, largest), 1_000_000_000)
            self._message_max = int(conf.get("message.max.bytes", RDKAFKA_MESSAGE_MAX))
            self._producer = kafka_client.new_client(ck.Producer, conf)
            # connect before the first message: a producer that is still
            # connecting (and getting its idempotent producer id) holds
            # what is produced meanwhile, so a fresh mirror would start
            # with a full window that no acknowledgement frees
            self._producer.list_topics(timeout=10)
            # and has its idempotent producer id: librdkafka holds messages
            # until then, up to 500 ms after start (see ProducerLog)
            kafka_client.wait_for_producer_id(self._producer, self._producer_log, PRODUCER_ID_WAIT, self._stop)
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
        if run.left <= 0:
            self.last_ack_at = time.perf_counter()

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
            room = self.max_in_flight - self._inflight - self._acked_since - self._committing
            if room > 0:
                # wait for data only when nothing is in flight: delivery
                # reports are served by poll() below, not while we sleep here
                view = consumer.consume_batch(max_messages=min(10_000, room),
                                              timeout=0.01 if self._inflight else 0.1, copy=False)
                if view is not None:
                    self._send(view, produce, poll)
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

    def _send(self, view, produce, poll) -> None:
        """Produce one consumed run (a MessageView: values and keys still in
        the pinned mapping) and release it: librdkafka copies each record."""
        try:
            topic = view.topic
            p = view.partition
            rt, rn, kp = self._remote[topic]
            tp = (topic, p)
            offsets = view.offsets
            if tp not in self._resume:
                self._resume[tp] = offsets[0]
            cols = (view.buffer, view.value_positions, view.value_lengths, view.key_positions,
                    view.key_lengths, view.timestamps_ms, view.headers if view.has_headers else None,
                    p, 0 if kp is None else rn)
            n = len(offsets)
            # a run is what one delivery callback per remote partition covers:
            # its messages leave the window (max_in_flight) only when its last
            # one is acknowledged, so runs much shorter than a batch keep the
            # window flowing (whole 10k-message runs left it full, waiting, a
            # third of the time)
            for lo in range(0, n, RUN_MESSAGES):
                if not self._send_run(tp, rt, cols, offsets, lo, min(n, lo + RUN_MESSAGES), produce, poll):
                    return
        finally:
            view.release()

    def _send_run(self, tp, rt: str, cols, offsets, lo: int, hi: int, produce, poll) -> bool:
        """Produce messages [lo, hi) of a run; False when stop() came while
        librdkafka's queue was full (the rest is not sent)."""
        if self.first_produce_at is None:
            self.first_produce_at = time.perf_counter()
        if not self._inflight:
            self._ack_at = time.monotonic()  # the stall clock starts with the first message in flight
        # left: more than any run can count until produce_run says how many
        # remote partitions the run spans (no report can come before that:
        # they are served by poll(), on this thread)
        run = _Run(offsets[hi - 1] + 1, hi - lo + 1, hi - lo, cols[5][lo], self._gen)
        self._pending.setdefault(tp, deque()).append(run)
        self._inflight += hi - lo
        cb = functools.partial(self._on_delivery, run)
        start = lo
        while True:
            # one C call produces the run (csrc/produce.c): a bytes object per
            # value and key made from the mapping just for its produce(),
            # which copies it, and the delivery callback only on the last
            # message per remote partition (a Python call per message would
            # cost more than the produce() itself). Keys, timestamps and
            # headers are passed as they are; tests/bridge check they arrive.
            try:
                start, run.left = produce_run(produce, rt, *cols, lo, start, hi, cb)
            except kafka_client.kafka().KafkaException as exc:
                raise self._produce_refused(exc, tp, offsets[lo], offsets[hi - 1]) from None
            if start >= hi:
                return True
            # librdkafka's queue is full: Kafka is slow or away. Wait for it
            # (backpressure), never drop.
            poll(0.05)
            self._settle()
            self._write_status()
            if self._broken is not None:
                raise kafka_client.KafkaError(self._broken) from None
            if self._stop.is_set() and self._inflight:
                # stopping: what is not produced yet is simply not
                # committed; the next start sends it
                return False

    def _produce_refused(self, exc, tp, first: int, last: int) -> Exception:
        """What produce() raised for a message of [first, last] of tp, as an
        error that says what to change (the mirror retries; nothing is
        committed past it)."""
        err = exc.args[0] if exc.args else None
        code = getattr(err, "code", lambda: None)()
        if code == kafka_client.kafka().KafkaError.MSG_SIZE_TOO_LARGE:
            return kafka_client.KafkaError(
                f"a message of {tp[0]}[{tp[1]}] at offsets {first}..{last} is larger than librdkafka's "
                f"message.max.bytes={self._message_max}: raise it (-X message.max.bytes=N, up to "
                f"1000000000) and the remote topic's max.message.bytes", what=tp[0])
        return kafka_client.KafkaError(f"producing {tp[0]}[{tp[1]}] at offsets {first}..{last}: {exc}",
                                       what=tp[0])

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
        self._commit_done(wait=force)
        now = time.monotonic()
        if self._to_commit and self._commit_pending is None and (
                force or now >= self._commit_at or self._acked_since >= self.max_in_flight // 2):
            self._commit_now(wait=force)
            self._commit_at = now + self.commit_interval

    def _commit_now(self, wait: bool = True) -> None:
        """Commit what Kafka acknowledged. wait=False: the round trip runs on
        the consumer's commit thread while this one goes on producing; its
        messages stay in the window (_committing) until it returns, so the
        duplicate bound holds, and commits stay in order (one at a time)."""
        self._commit_done(wait=True)
        offsets, self._to_commit = self._to_commit, {}
        self._committing, self._acked_since = self._acked_since, 0
        if wait:
            self._consumer.commit(offsets)
            self._count(self._committing)
            self._committing = 0
            return
        self._commit_pending = (self._consumer.commit(offsets, asynchronous=True), offsets)

    def _commit_done(self, wait: bool) -> None:
        """Count an asynchronous commit that returned (or wait for it)."""
        if self._commit_pending is None:
            return
        future, offsets = self._commit_pending
        if not wait and not future.done():
            return
        self._commit_pending = None
        try:
            future.result()
        except errors.FencedMember:
            # the commit thread may not rejoin: this one does (a restarted
            # supervisor), or raises if the partitions really moved
            self._consumer.commit(offsets)
        self._count(self._committing)
        self._committing = 0

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
        if (self._to_commit or self._commit_pending is not None) and self._consumer is not None:
            try:
                self._commit_now()
            except errors.ShmlogError as exc:
                log.warning("mirror %s: commit before rewinding failed: %s", self.name, exc)
        self._commit_pending = None
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
        self._committing = 0

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
