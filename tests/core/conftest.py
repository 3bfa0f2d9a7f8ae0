"""Fixtures for the core tests (beside tests/conftest.py's data dir and shm prefix)."""
from __future__ import annotations

import pytest

from shmlog.core.budget_region import BudgetRegion


@pytest.fixture
def account(shm_prefix):
    """A data dir's shared-memory budget account (a region of its own), with a limit
    no test reaches unless it sets a smaller one."""
    region = BudgetRegion.open(f"{shm_prefix}-budget", limit=1 << 40)
    try:
        yield region
    finally:
        region.unlink()
        region.close()
