"""Mirrors to and from Kafka clusters (issue 15): MirrorOut, MirrorIn, and
open_mirror(cluster, ...), the Python form. confluent-kafka is an
optional extra, imported on first use (kafka_client)."""

from .mirror import DUPLICATE_BOUND, MirrorIn, MirrorOut, open_mirror

__all__ = ["DUPLICATE_BOUND", "MirrorIn", "MirrorOut", "open_mirror"]
