# ruff: noqa: F821  (reveal_type is mypy's, never run)
"""A user's program, type-checked by tests/test_typing.py (never run): every
reveal_type() below must show the precise type, not Any."""

from __future__ import annotations

import shmlog


def main(data_dir: str) -> None:
    with shmlog.connect(data_dir) as cluster:
        reveal_type(cluster)  # E: shmlog.client.cluster.Cluster
        info = cluster.create_topic("events", partitions=4)
        reveal_type(info.partitions[0].end_offset)  # E: int
        with cluster.producer(linger_ms=0) as producer:
            reveal_type(producer)  # E: shmlog.client.producer.Producer
            producer.send("events", b"hello", key=b"user-1", headers=[("trace", b"abc")])
            producer.send_batch("events", [b"v1", b"v2"])
            reveal_type(producer.flush(durable=True))  # E: int
        with cluster.consumer("events", group="billing") as consumer:
            reveal_type(consumer)  # E: shmlog.client.consumer.Consumer
            for msg in consumer:
                reveal_type(msg)  # E: shmlog.client.messages.Message
                reveal_type(msg.offset)  # E: int
                reveal_type(msg.value)  # E: bytes | None
                reveal_type(msg.key)  # E: bytes | None
                reveal_type(msg.topic)  # E: str
                reveal_type(msg.timestamp_ms)  # E: int
                break
            reveal_type(consumer.poll(timeout=1.0))  # E: shmlog.client.messages.Message | None
            reveal_type(consumer.consume(max_messages=10))  # E: list[shmlog.client.messages.Message]
            reveal_type(consumer.position("events", 0))  # E: int
