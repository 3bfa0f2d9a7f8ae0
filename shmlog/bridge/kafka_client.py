"""The one place that imports confluent-kafka (librdkafka), lazily.

confluent-kafka is an optional extra: shmlog itself never needs it, so it
is imported on first use and a missing install is reported as an error that
names the extra to install, not as a bare ImportError from deep inside a
mirror.
"""

from __future__ import annotations

import logging
from typing import Any, Dict

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
                        replication_factor: int = -1) -> int:
    """Create the remote topic with `partitions` if it is missing; return
    the count it has (which may differ if someone else created it)."""
    n = remote_partitions(adm, topic, timeout)
    if n:
        return n
    ck = kafka()
    from confluent_kafka.admin import NewTopic

    # -1: the cluster's default.replication.factor (Kafka 2.4+)
    fs = adm.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor)],
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
