"""The budget region: the data dir's shared-memory account (csrc/layout.h,
shmlog_budget_t), one page at ``/shmlog-<cluster_id>-budget`` (0600).

The supervisor creates it and keeps `limit` (shm_budget_bytes) and the
count of reserved region bytes right at start and at every topic change;
every process that maps a partition region hands the account to it
(PartitionLog.set_budget), so the rotation that reserves a released chunk's
pages charges it first (chunk.c), and a charge past the limit waits. It
never decides anything: the C core charges and credits, the supervisor
recounts and releases (shmlog.broker.shm_budget).
"""

from __future__ import annotations

import mmap
from typing import Optional

import posix_ipc

from .. import errors
from ._core import ffi, lib
from .log import create_reserved_region, unlink_region

VERSION = 1
REGION_BYTES = 4096


def region_name(cluster_id: str) -> str:
    return f"/shmlog-{cluster_id}-budget"


class BudgetRegion:
    """The account, mapped in this process."""

    def __init__(self, name: str, mm: mmap.mmap, created: bool):
        self.name = name
        self._mm = mm
        self._buf = ffi.from_buffer(mm)
        self.account = ffi.cast("shmlog_budget_t *", self._buf)
        self.created = created
        self.users = 0  # PartitionLogs whose C handle holds the account's address
        self._close_wanted = False

    @classmethod
    def open(cls, name: str, limit: int) -> BudgetRegion:
        """Supervisor side: re-attach a surviving account, else create one;
        either way its limit is `limit` from now on."""
        try:
            region = cls.attach(name)
        except posix_ipc.ExistentialError:
            region = None
        except errors.ShmlogError:
            unlink_region(name)
            region = None
        if region is None:
            mm = create_reserved_region(name, REGION_BYTES, f"budget region {name}")
            region = cls(name, mm, created=True)
            region.account.version = VERSION
            region.account.magic = lib.SHMLOG_BUDGET_MAGIC  # last: half-made never looks valid
        region.account.limit = limit
        return region

    @classmethod
    def attach(cls, name: str) -> BudgetRegion:
        shm = posix_ipc.SharedMemory(name)
        try:
            if shm.size < REGION_BYTES:
                raise errors.CorruptBatch(f"budget region {name} is only {shm.size} bytes", what=name)
            mm = mmap.mmap(shm.fd, REGION_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            shm.close_fd()
        region = cls(name, mm, created=False)
        if region.account.magic != lib.SHMLOG_BUDGET_MAGIC or region.account.version != VERSION:
            region.close()
            raise errors.CorruptBatch(f"budget region {name} has a bad magic or version", what=name)
        return region

    @classmethod
    def attach_if_present(cls, name: str) -> Optional[BudgetRegion]:
        """Client side: the account, or None (a supervisor that keeps none)."""
        try:
            return cls.attach(name)
        except (posix_ipc.ExistentialError, errors.ShmlogError, OSError):
            return None

    @property
    def limit(self) -> int:
        return int(self.account.limit)

    @property
    def reserved(self) -> int:
        return int(self.account.reserved) & lib.SHMLOG_BUDGET_BYTES_MASK

    @property
    def refused(self) -> int:
        return int(self.account.refused)

    @property
    def pressure(self) -> int:
        return int(self.account.pressure)

    def set_reserved(self, n: int) -> None:
        """Set the count, whatever moves it meanwhile (at start)."""
        while lib.shmlog_budget_recount(self.account, self.snapshot(), n) != 0:
            pass

    def snapshot(self) -> int:
        """The account's word now: hand it to `recount` after counting."""
        return int(lib.shmlog_budget_snapshot(self.account))

    def recount(self, snapshot: int, n: int) -> bool:
        """Set the count to n if no charge, credit or recount happened since
        `snapshot` (else False: count again)."""
        return lib.shmlog_budget_recount(self.account, snapshot, n) == 0

    def charge(self, n: int) -> bool:
        return lib.shmlog_budget_charge(self.account, n) == 0

    def credit(self, n: int) -> None:
        lib.shmlog_budget_credit(self.account, n)

    @property
    def closed(self) -> bool:
        return self._buf is None

    def drop_user(self) -> None:
        self.users -= 1
        if self.users <= 0 and self._close_wanted:
            self.close()

    def close(self) -> None:
        """Unmapped once no PartitionLog of this process uses it any more:
        their C handles hold its address."""
        if self._buf is None:
            return
        if self.users > 0:
            self._close_wanted = True
            return
        self.account = ffi.NULL
        ffi.release(self._buf)
        self._buf = None
        try:
            self._mm.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        unlink_region(self.name)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def budget_wait(account: Optional[BudgetRegion], plog) -> Optional[str]:
    """Why a rotation of plog (a PartitionLog) that timed out waited, if it
    was the data dir's account: its next chunk is FREE but released (its
    pages must be charged first) and the account has no room for it. The
    text names the budget, the count and what to change; None otherwise."""
    if account is None or account.closed or plog.closed:
        return None
    h = plog.hdr
    nxt = h.chunks[(h.active_seq + 1) % plog.chunk_count]
    if nxt.state & 0xFF != lib.SHMLOG_CHUNK_FREE or not nxt.released:
        return None
    reserved, limit = account.reserved, account.limit
    if reserved + plog.chunk_bytes <= limit:
        return None  # room again: the wait was on something else, or is over
    return (f"its next chunk ({_mib(plog.chunk_bytes)}) waits for the data dir's shared-memory "
            f"budget: {_mib(reserved)} of shm_budget_bytes={limit} ({_mib(limit)}) is reserved. "
            f"Raise shm_budget_bytes (shmlog serve --set shm_budget_bytes=...), keep fewer "
            f"partitions hot at once, use a smaller chunk_bytes for this topic, or consume faster "
            f"(chunks that are spilled and read give their pages back)")
