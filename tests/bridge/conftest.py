"""The remote sides of the mirror tests: tansu (a real Kafka-compatible
broker per test, see _tansu.py) and, for `remote`, also shmlog's own Kafka
listener in a second data dir (shmlog to shmlog)."""

from __future__ import annotations

import pytest
from _tansu import Tansu, shmlog_remote


@pytest.fixture
def tansu(tmp_path):
    t = Tansu(tmp_path).start()
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture(params=["tansu", "shmlog"])
def remote(request, tmp_path):
    """The Kafka cluster a mirror talks to: tansu, or a second shmlog data
    dir whose supervisor runs the Kafka listener. Has .bootstrap and .kind."""
    if request.param == "tansu":
        t = Tansu(tmp_path).start()
        try:
            yield t
        finally:
            t.stop()
    else:
        with shmlog_remote(tmp_path / "remote-data") as r:
            yield r
