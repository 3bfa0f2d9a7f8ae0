"""Topic and broker settings: defaults, validation, and the data dir.

Everything a user passes is checked here, with an error that names the
setting, the bad value and the allowed range, before anything is created.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import InvalidConfig, InvalidTopic

TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")

# Mirrors of csrc/layout.h (this shared module may not import shmlog.core;
# tests/core/test_layout.py pins each one to its C constant so they cannot drift).
MIN_CHUNK_BYTES = 4096  # SHMLOG_MIN_CHUNK_BYTES
MAX_CHUNK_BYTES = 1 << 30  # SHMLOG_MAX_CHUNK_BYTES
MAX_CHUNKS = 64  # SHMLOG_MAX_CHUNKS
FRAME_ALIGN = 64  # SHMLOG_FRAME_ALIGN
FRAME_HEADER = 64  # SHMLOG_FRAME_HEADER
MAX_PRODUCERS = 64  # SHMLOG_MAX_PRODUCERS
# room for one record's own framing (length, attributes, timestamp and offset
# deltas, key and value length varints) when a frame holds a single record
RECORD_OVERHEAD = 32

TOPIC_DEFAULTS: Dict[str, Any] = {
    "partitions": 1,
    "retention_ms": 7 * 24 * 3600 * 1000,
    "retention_bytes": None,
    "segment_bytes": 64 << 20,
    "segment_ms": 7 * 24 * 3600 * 1000,
    "storage": "disk",
    "fsync_interval_ms": 1000,
    "chunk_bytes": 16 << 20,
    "chunk_count": 4,
    "max_message_bytes": None,  # derived from chunk_bytes when None
    "prefault": None,  # None: auto (PREFAULT_AUTO_BYTES)
}

# prefault=None resolves to True when the topic's shared memory (partitions x
# chunk_count x chunk_bytes) is at most this: its pages are then mapped when
# a client attaches, instead of faulting one by one on the producer's path
# during the first pass through the ring (a fault costs more than the small
# batches that touch a page, and lands in a latency-bound stream's tail;
# bench/README.md has the figures). Larger topics
# are mapped as data arrives. (Every region's pages are allocated when it is
# created, whatever this says: shmlog.broker.shm_budget.)
PREFAULT_AUTO_BYTES = 256 << 20

BROKER_DEFAULTS: Dict[str, Any] = {
    "idle_timeout_s": 5.0,
    "claim_timeout_ms": 2000,
    "reaper_interval_ms": 100,
    "session_timeout_ms": 10000,
    # the shared memory (bytes of partition regions, reserved when they are
    # created) this data dir may hold; None: SHM_BUDGET_FRACTION of the
    # smaller of RAM and the shared-memory tmpfs (shmlog.broker.shm_budget)
    "shm_budget_bytes": None,
    # a disk partition whose claimed end has not moved for this long gives
    # back the pages of its spilled, read chunks (all but the active one);
    # 0 never (shmlog.broker.shm_budget)
    "shm_release_idle_ms": 1000,
    # the Kafka wire-protocol listener (shmlog.kafka): "host:port" or None
    # (off); loopback unless the user names another address
    "kafka_listener": None,
    "kafka_auto_create_topics": True,  # Metadata may create topics clients ask for
    "kafka_max_request_bytes": 100 << 20,  # a larger size prefix closes that connection
}

# broker settings that are not plain non-negative numbers: their check
_BROKER_SPECIAL = {
    "kafka_listener": lambda v: v is None or (isinstance(v, str) and ":" in v),
    "kafka_auto_create_topics": lambda v: isinstance(v, bool),
}
# broker settings that may be None (meaning: derived on this host)
_BROKER_NONE_OK = {"shm_budget_bytes"}


def default_data_dir() -> Path:
    return Path(os.environ.get("SHMLOG_DATA_DIR", "./shmlog-data"))


def validate_topic_name(name: Any) -> str:
    if not isinstance(name, str) or not TOPIC_RE.match(name) or name in (".", ".."):
        raise InvalidTopic(
            f"invalid topic name {name!r}: use 1-200 characters of [A-Za-z0-9._-], "
            f"not '.' or '..'",
            what=str(name),
        )
    return name


def _int(cfg: Dict[str, Any], key: str, lo: int, hi: int, allow_none: bool = False) -> None:
    v = cfg[key]
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        rng = f"an integer in [{lo}, {hi}]" + (" or None" if allow_none else "")
        raise InvalidConfig(f"invalid {key}={v!r}: must be {rng}", what=key)


def max_batch_bytes(chunk_bytes: int, max_message_bytes: Optional[int] = None) -> int:
    """The largest frame a region of this chunk size takes. A batch of many
    records may take chunk/16 (at least 4 KiB, at most chunk/2): an
    overflowing batch wastes what is left of its chunk, and this keeps that
    waste small. A batch of one message may take up to the whole chunk, so
    max_message_bytes is not bound to chunk/16 (producers never fill a
    many-record frame past the chunk/16 share: batch_share_bytes)."""
    mb = batch_share_bytes(chunk_bytes)
    if max_message_bytes is not None:
        mb = max(mb, message_frame_bytes(max_message_bytes))
    return min(mb, max_frame_bytes(chunk_bytes))


def batch_share_bytes(chunk_bytes: int) -> int:
    """The largest frame of many records: chunk/16, at least 4 KiB, at most chunk/2."""
    mb = max(chunk_bytes // 16, MIN_CHUNK_BYTES)
    mb = min(mb, chunk_bytes // 2)
    return mb - mb % FRAME_ALIGN


def message_frame_bytes(message_bytes: int) -> int:
    """The frame one message of this many bytes (key and value) needs."""
    fb = message_bytes + FRAME_HEADER + RECORD_OVERHEAD
    return fb + -fb % FRAME_ALIGN


def max_frame_bytes(chunk_bytes: int) -> int:
    """The largest frame a chunk of this size can take: the chunk itself,
    as long as the packed tail (the chunk plus one overflowing frame per
    producer slot, csrc/region.c) stays below 2^32."""
    cap = min(chunk_bytes, ((1 << 32) - 1 - chunk_bytes) // MAX_PRODUCERS)
    return cap - cap % FRAME_ALIGN


def topic_config(overrides: Optional[Dict[str, Any]] = None, base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Merge and validate; returns a complete config dict."""
    cfg = dict(base or TOPIC_DEFAULTS)
    for k, v in (overrides or {}).items():
        if k not in TOPIC_DEFAULTS:
            raise InvalidConfig(
                f"unknown topic setting {k!r}; known: {', '.join(sorted(TOPIC_DEFAULTS))}", what=k
            )
        cfg[k] = v
    _int(cfg, "partitions", 1, 4096)
    _int(cfg, "retention_ms", 1, 1 << 62, allow_none=True)
    _int(cfg, "retention_bytes", 1, 1 << 62, allow_none=True)
    _int(cfg, "segment_bytes", 4096, 1 << 31)
    _int(cfg, "segment_ms", 1, 1 << 62)
    _int(cfg, "fsync_interval_ms", 0, 1 << 31)
    _int(cfg, "chunk_bytes", MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
    if cfg["chunk_bytes"] % FRAME_ALIGN:
        raise InvalidConfig(f"invalid chunk_bytes={cfg['chunk_bytes']}: must be a multiple of {FRAME_ALIGN}",
                            what="chunk_bytes")
    _int(cfg, "chunk_count", 2, MAX_CHUNKS)
    if cfg["storage"] not in ("disk", "memory"):
        raise InvalidConfig(f"invalid storage={cfg['storage']!r}: must be 'disk' or 'memory'", what="storage")
    if cfg["max_message_bytes"] is None:
        cfg["max_message_bytes"] = max_batch_bytes(cfg["chunk_bytes"]) - FRAME_HEADER - RECORD_OVERHEAD
    # a message alone in its batch may fill a chunk (max_batch_bytes)
    _int(cfg, "max_message_bytes", 1, max_frame_bytes(cfg["chunk_bytes"]) - FRAME_HEADER - RECORD_OVERHEAD)
    if cfg["prefault"] is None:
        ring = cfg["partitions"] * cfg["chunk_count"] * cfg["chunk_bytes"]
        cfg["prefault"] = ring <= PREFAULT_AUTO_BYTES
    elif not isinstance(cfg["prefault"], bool):
        raise InvalidConfig(f"invalid prefault={cfg['prefault']!r}: must be True, False or None (auto)",
                            what="prefault")
    return cfg


def broker_config(overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    cfg = dict(BROKER_DEFAULTS)
    for k, v in (overrides or {}).items():
        if k not in BROKER_DEFAULTS:
            raise InvalidConfig(
                f"unknown broker setting {k!r}; known: {', '.join(sorted(BROKER_DEFAULTS))}", what=k
            )
        if v is None and k in _BROKER_NONE_OK:
            cfg[k] = v
            continue
        special = _BROKER_SPECIAL.get(k)
        if special is not None:
            if not special(v):
                need = "'host:port' or None" if k == "kafka_listener" else "True or False"
                raise InvalidConfig(f"invalid {k}={v!r}: must be {need}", what=k)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise InvalidConfig(f"invalid {k}={v!r}: must be a non-negative number", what=k)
        cfg[k] = v
    return cfg


# ------------------------------------------------------------------ groups
GROUP_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
MIN_SESSION_MS = 100
MAX_SESSION_MS = 3_600_000
# the partition assignors the coordinator runs (shmlog.broker.assignors); a
# member names one when it joins
ASSIGNOR_NAMES = ("range", "roundrobin", "sticky")
DEFAULT_ASSIGNOR = "sticky"


def validate_group_name(name: Any) -> str:
    if not isinstance(name, str) or not GROUP_RE.match(name) or name in (".", ".."):
        raise InvalidConfig(
            f"invalid group name {name!r}: use 1-200 characters of [A-Za-z0-9._-], not '.' or '..'",
            what=str(name),
        )
    return name


def validate_assignor(name: Any) -> str:
    """`name` if it is a known partition assignor, else InvalidConfig listing them."""
    if not isinstance(name, str) or name not in ASSIGNOR_NAMES:
        raise InvalidConfig(
            f"unknown partition assignor {name!r}; use one of {', '.join(sorted(ASSIGNOR_NAMES))}",
            what="assignor",
        )
    return name


# ------------------------------------------------------------------ KEY=VALUE
def parse_value(v: str) -> Any:
    """A setting's value as typed on a command line: none/null, true/false,
    an int, a float, else the string itself."""
    if v.lower() in ("none", "null"):
        return None
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


# Kafka's topic-level names whose meaning shmlog's settings share; any other
# dotted name whose underscored form is a setting (chunk.bytes) maps too
KAFKA_TOPIC_NAMES = {
    "retention.ms": "retention_ms",
    "retention.bytes": "retention_bytes",
    "segment.bytes": "segment_bytes",
    "segment.ms": "segment_ms",
    "max.message.bytes": "max_message_bytes",
    "flush.ms": "fsync_interval_ms",
}
# Kafka spells "no limit" -1 for these; shmlog spells it None
_KAFKA_UNLIMITED = ("retention_ms", "retention_bytes")


def kafka_topic_setting(key: str, value: Any) -> tuple[str, Any]:
    """A topic setting given with Kafka's name (retention.ms=-1) as shmlog's
    (retention_ms=None); shmlog's own names and unknown names pass unchanged,
    so topic_config names whatever it rejects as the user typed it."""
    name = KAFKA_TOPIC_NAMES.get(key)
    if name is None and "." in key and key.replace(".", "_") in TOPIC_DEFAULTS:
        name = key.replace(".", "_")
    if name is None:
        return key, value
    if name in _KAFKA_UNLIMITED and value == -1 and not isinstance(value, bool):
        value = None
    return name, value


def parse_setting(item: str) -> tuple[str, Any]:
    """("key", value) from "key=value"; ValueError naming the item otherwise."""
    k, sep, v = item.partition("=")
    if not sep or not k.strip():
        raise ValueError(f"expected KEY=VALUE, got {item!r}")
    return k.strip(), parse_value(v.strip())
