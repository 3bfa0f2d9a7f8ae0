"""shmlog.bridge.kafka_client: seeing when an idempotent producer has its
producer id (librdkafka holds what is produced before that), against a
real broker and against none."""

from __future__ import annotations

import logging
import time

import pytest

pytest.importorskip("confluent_kafka", reason="the bridge tests need confluent-kafka (shmlog[kafka])")

from _tansu import free_port  # noqa: E402

from shmlog.bridge import kafka_client  # noqa: E402


def _producer(bootstrap: str, **conf):
    plog = kafka_client.ProducerLog()
    ck = kafka_client.kafka()
    p = ck.Producer(kafka_client.with_eos_debug({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                                 "logger": plog, **conf}))
    return p, plog


def test_waits_for_the_producer_id(remote):
    p, plog = _producer(remote.bootstrap)
    assert not plog.has_producer_id  # asked for as the producer starts, not there yet
    assert kafka_client.wait_for_producer_id(p, plog, 20)
    assert plog.has_producer_id
    p.flush(5)


def test_no_broker_no_producer_id(caplog):
    p, plog = _producer(f"127.0.0.1:{free_port()}", **{"debug": "broker"})
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger=kafka_client.LIBRDKAFKA_LOG.name):
        assert not kafka_client.wait_for_producer_id(p, plog, 0.5)
    assert 0.5 <= time.monotonic() - t0 < 5
    assert not plog.has_producer_id
    # every line still reaches the librdkafka logger, both debug contexts
    assert any("Idempotent producer state change" in r.getMessage() for r in caplog.records)
    assert any("Connect to" in r.getMessage() for r in caplog.records)
    p.purge()


def test_eos_debug_joins_what_is_set():
    assert kafka_client.with_eos_debug({})["debug"] == "eos"
    assert kafka_client.with_eos_debug({"debug": "broker, topic"})["debug"] == "broker,topic,eos"
    assert kafka_client.with_eos_debug({"debug": "eos"})["debug"] == "eos"
    assert kafka_client.with_eos_debug({"debug": "all"})["debug"] == "all"
