"""shmlog/config.py: topic settings, their defaults and what they resolve to."""

from __future__ import annotations

import os

import pytest
from _broker_helpers import running_cluster

from shmlog import config, errors
from shmlog.config import PREFAULT_AUTO_BYTES, TOPIC_DEFAULTS, topic_config
from shmlog.errors import InvalidConfig


def test_prefault_defaults_to_auto_by_the_topics_shared_memory():
    assert TOPIC_DEFAULTS["prefault"] is None
    ring = TOPIC_DEFAULTS["chunk_count"] * TOPIC_DEFAULTS["chunk_bytes"]
    fits = PREFAULT_AUTO_BYTES // ring
    assert topic_config({"partitions": 1})["prefault"] is True
    assert topic_config({"partitions": fits})["prefault"] is True
    assert topic_config({"partitions": fits + 1})["prefault"] is False
    # small chunks: many partitions still fit
    assert topic_config({"partitions": 256, "chunk_bytes": 64 << 10})["prefault"] is True
    # what the user says wins
    assert topic_config({"partitions": 1, "prefault": False})["prefault"] is False
    assert topic_config({"partitions": fits + 1, "prefault": True})["prefault"] is True


@pytest.mark.parametrize("bad", ["yes", 1, 0.5])
def test_prefault_must_be_a_bool_or_none(bad):
    with pytest.raises(errors.InvalidConfig, match="prefault"):
        topic_config({"prefault": bad})


def _resident(region) -> int:
    st = os.stat("/dev/shm/" + region.name.lstrip("/"))
    return st.st_blocks * 512


def _mapped(region) -> int:
    """Bytes of the region mapped into this process (Rss of its mapping)."""
    from shmlog.core._core import ffi

    addr = int(ffi.cast("uintptr_t", region.base))
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("region mapping not found in /proc/self/smaps")


def test_every_region_is_reserved_and_a_small_topic_is_mapped_when_attached(data_dir):
    with running_cluster(data_dir) as cluster:
        cluster.create_topic("small", partitions=1, storage="memory")
        cluster.create_topic("large", partitions=2, storage="memory",
                             chunk_bytes=PREFAULT_AUTO_BYTES // 4, chunk_count=4)
        small = cluster.topic("small").regions[0]
        large = cluster.topic("large").regions[0]
        ring = TOPIC_DEFAULTS["chunk_count"] * TOPIC_DEFAULTS["chunk_bytes"]
        # every region's pages are allocated when it is created (a full
        # tmpfs is an error then, never a SIGBUS later: issue 18)
        assert _resident(small) >= ring
        assert _resident(large) >= 4 * (PREFAULT_AUTO_BYTES // 4)
        # prefault decides whether a client maps them all when it attaches
        # (no page faults on the producer's first pass) or as it goes
        assert _mapped(small) >= ring
        assert _mapped(large) < ring
        assert cluster.describe_topic("small").config["prefault"] is True
        assert cluster.describe_topic("large").config["prefault"] is False


def test_a_frame_never_passes_what_the_packed_tail_allows():
    # a message alone in its batch may fill a chunk, but never so much that
    # the chunk plus one overflowing frame per producer slot reaches 2^32
    for chunk in (4096, 65536, 1 << 20, 16 << 20, 1 << 30):
        cfg = config.topic_config({"chunk_bytes": chunk})
        mb = config.max_batch_bytes(chunk, cfg["max_message_bytes"])
        assert mb <= chunk and chunk + config.MAX_PRODUCERS * mb < 1 << 32
        top = config.max_frame_bytes(chunk) - config.FRAME_HEADER - config.RECORD_OVERHEAD
        assert config.topic_config({"chunk_bytes": chunk, "max_message_bytes": top})["max_message_bytes"] == top
        with pytest.raises(InvalidConfig, match="max_message_bytes"):
            config.topic_config({"chunk_bytes": chunk, "max_message_bytes": top + 1})
