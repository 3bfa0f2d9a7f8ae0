"""The tansu fixture (a real Kafka-compatible broker per test, see _tansu.py)."""

from __future__ import annotations

import pytest
from _tansu import Tansu


@pytest.fixture
def tansu(tmp_path):
    t = Tansu(tmp_path).start()
    try:
        yield t
    finally:
        t.stop()
