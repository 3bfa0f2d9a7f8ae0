"""The one place that imports confluent-kafka (librdkafka), lazily.

confluent-kafka is an optional extra: shmlog itself never needs it, so it
is imported on first use and a missing install is reported as an error that
names the extra to install, not as a bare ImportError from deep inside a
mirror.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Optional

from .. import errors

LIBRDKAFKA_LOG = logging.getLogger("shmlog.bridge.librdkafka")

EXTRA_HINT = "install the Kafka extra: pip install 'shmlog[kafka]'"


class KafkaUnavailable(errors.ShmlogError):
    HINT = EXTRA_HINT


class KafkaError(errors.ShmlogError):
    """The remote Kafka cluster refused or failed a request."""


def kafka() -> Any:
    """The confluent_kafka module, or KafkaUnavailable naming the extra."""
    try:
        import confluent_kafka
    except ImportError as exc:  # the optional dependency is missing: say which
        raise KafkaUnavailable(f"mirrors to and from Kafka need confluent-kafka ({exc})",
                               what="confluent-kafka") from None
    return confluent_kafka


def new_client(factory: Any, conf: Dict[str, Any]) -> Any:
    """factory(conf) (a Producer, Consumer or AdminClient); a setting that
    librdkafka refuses (an unknown name, a bad value) is InvalidConfig, not
    a Kafka error: retrying cannot fix it, so a mirror's run loop does not
    retry it but stops, saying which setting."""
    ck = kafka()
    try:
        return factory(conf)
    except ck.KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if getattr(err, "code", lambda: None)() == ck.KafkaError._INVALID_ARG:
            raise errors.InvalidConfig(f"librdkafka refuses a mirror setting: {err.str()}; fix or remove it "
                                       f"(-X KEY=VALUE, settings= in Python)") from None
        raise


class ProducerLog:
    """librdkafka's log callback for an idempotent producer: every line goes
    on to LIBRDKAFKA_LOG, and it notes when the producer got its producer id.

    librdkafka asks for the id as the producer starts; if no broker is up
    yet (the usual case: it is still connecting) it asks again only on a
    500 ms timer, and holds every message produced meanwhile. A mirror that
    starts (or restarts after a failure) would spend that time with a full
    window and no acknowledgement; waiting for the id first costs nothing.
    The id shows only in librdkafka's "eos" debug context (with_eos_debug),
    a few lines a producer, not per message."""

    def __init__(self) -> None:
        self.has_producer_id = False

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if not self.has_producer_id and args and str(args[-1]).endswith(_PID_ASSIGNED):
            self.has_producer_id = True
        LIBRDKAFKA_LOG.log(level, fmt, *args)


_PID_ASSIGNED = "Idempotent producer state change WaitPID -> Assigned"


def with_eos_debug(conf: Dict[str, Any]) -> Dict[str, Any]:
    """conf plus librdkafka's "eos" debug context (see ProducerLog)."""
    debug = [d.strip() for d in str(conf.get("debug", "")).split(",") if d.strip()]
    if "eos" not in debug and "all" not in debug:
        debug.append("eos")
    return {**conf, "debug": ",".join(debug)}


def wait_for_producer_id(producer: Any, plog: ProducerLog, timeout: float,
                         stop: Optional[threading.Event] = None) -> bool:
    """Serve the producer's events until it has its idempotent producer id
    (True), or timeout or stop (False: it keeps asking by itself)."""
    deadline = time.monotonic() + timeout
    while not plog.has_producer_id:
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return False
        producer.poll(0.005)
    return True


def admin(conf: Dict[str, Any]) -> Any:
    kafka()  # the clear error first
    from confluent_kafka.admin import AdminClient

    conf = _admin_conf(conf)
    conf.setdefault("logger", LIBRDKAFKA_LOG)  # its reconnect noise goes to logging, not stderr
    return new_client(AdminClient, conf)


# settings that only the producer or only the consumer understands: the
# admin client warns on each, so they are left out of its configuration
_CLIENT_ONLY_PREFIXES = (
    "enable.idempotence", "enable.gapless", "queue.buffering", "linger.ms", "batch.", "compression.",
    "message.timeout", "delivery.timeout", "acks", "request.required.acks", "retries", "group.",
    "enable.auto", "auto.", "session.timeout", "heartbeat.", "max.poll", "fetch.", "isolation.",
    "partition.assignment", "max.partition", "queued.", "statistics.",
)


def _admin_conf(conf: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in conf.items() if not k.startswith(_CLIENT_ONLY_PREFIXES)}


def remote_partitions(adm: Any, topic: str, timeout: float = 10.0) -> int:
    """The partition count of a remote topic, or 0 if it does not exist."""
    # all topics, not list_topics(topic=...): a metadata request naming the
    # topic lets a broker with auto.create.topics.enable create it, with
    # its default partition count instead of ours
    md = adm.list_topics(timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        return 0
    return len(t.partitions)


def ensure_remote_topic(adm: Any, topic: str, partitions: int, timeout: float = 10.0,
                        replication_factor: int = -1, config: Optional[Dict[str, str]] = None) -> int:
    """Create the remote topic with `partitions` (and topic `config`) if it
    is missing; return the count it has (which may differ if someone else
    created it)."""
    n = remote_partitions(adm, topic, timeout)
    if n:
        return n
    ck = kafka()
    from confluent_kafka.admin import NewTopic

    # -1: the cluster's default.replication.factor (Kafka 2.4+)
    fs = adm.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor,
                                     config=dict(config or {}))],
                           request_timeout=timeout)
    try:
        fs[topic].result(timeout)
    except ck.KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if getattr(err, "code", lambda: None)() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
            raise KafkaError(f"could not create topic {topic!r} on the remote cluster: {exc}",
                             what=topic) from None
    n = remote_partitions(adm, topic, timeout)
    if not n:
        raise KafkaError(f"topic {topic!r} does not show up on the remote cluster after creating it",
                         what=topic)
    return n
