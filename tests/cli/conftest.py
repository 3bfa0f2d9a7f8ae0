"""Fixtures of the command-line tests."""

from __future__ import annotations

import pytest

import shmlog


@pytest.fixture
def broker(data_dir):
    """The test's data dir; whatever supervisor the CLI started is stopped."""
    yield data_dir
    try:
        c = shmlog.connect(data_dir, start=False)
    except shmlog.BrokerNotRunning:
        return
    c.shutdown()
