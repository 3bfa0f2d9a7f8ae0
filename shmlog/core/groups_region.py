"""The groups region: the shared-memory heartbeat slots that a group member
(shmlog.client.member) and the coordinator (shmlog.broker.coordinator) share.

The coordinator tells a member to sync through its heartbeat slot in the
groups region ``/shmlog-<cluster_id>-groups`` (0600): the member's poll()
compares the slot's notify and token words with what it saw last, writes its
poll time into the slot, and makes no syscall unless something changed.

Region layout (little-endian u64 words; pinned by tests/broker/test_groups.py):

    header, 128 bytes: magic, version, slot_count, incarnation, supervisor_pid
    slot i at 128 + 128*i: pid, token, group_hash, generation, notify,
                           last_poll_ns (CLOCK_MONOTONIC), session_timeout_ms

A slot is 128 bytes so a member's poll touches one cache line nobody else
writes on the normal path. The region survives a supervisor crash: the next
supervisor re-attaches it, treats the slots it finds as members that must
rejoin (``notify`` = REJOIN), and grants nothing in their groups until each
has rejoined, died or timed out.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import secrets

import posix_ipc

from .. import errors
from .log import create_reserved_region, reserve_fd, unlink_region

log = logging.getLogger("shmlog.groups")

MAGIC = int.from_bytes(b"SHMLGRP1", "little")
VERSION = 1
HEADER_BYTES = 128
SLOT_BYTES = 128
SLOT_COUNT = 1024
REGION_BYTES = HEADER_BYTES + SLOT_BYTES * SLOT_COUNT
H_MAGIC, H_VERSION, H_SLOTS, H_INCARNATION, H_SUPERVISOR = range(5)
S_PID, S_TOKEN, S_GROUP, S_GENERATION, S_NOTIFY, S_POLL, S_SESSION = range(7)
REJOIN = (1 << 64) - 1  # notify value: the coordinator restarted, rejoin with your claims


def region_name(cluster_id: str) -> str:
    return f"/shmlog-{cluster_id}-groups"


def group_hash(name: str) -> int:
    h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    return h or 1


def slot_index(slot: int, word: int) -> int:
    """Index of a slot's word in the region's u64 view."""
    return (HEADER_BYTES + slot * SLOT_BYTES) // 8 + word



class GroupsRegion:
    """The heartbeat region, mapped in this process (as a u64 view)."""

    def __init__(self, name: str, mm: mmap.mmap, created: bool):
        self.name = name
        self._mm = mm
        self.words = memoryview(mm).cast("Q")
        self.created = created

    @classmethod
    def open(cls, name: str) -> GroupsRegion:
        """Supervisor side: re-attach a surviving region, else create one."""
        try:
            region = cls.attach(name)
            log.info("re-attached groups region %s", name)
            return region
        except posix_ipc.ExistentialError:
            pass
        except errors.ShmlogError as exc:
            log.error("groups region %s is unusable (%s); recreating it", name, exc)
            unlink_region(name)
        # its pages now: a member's heartbeat write into a page the full
        # tmpfs cannot give would be a SIGBUS in that member
        mm = create_reserved_region(name, REGION_BYTES, f"groups region {name}")
        region = cls(name, mm, created=True)
        w = region.words
        w[H_VERSION] = VERSION
        w[H_SLOTS] = SLOT_COUNT
        w[H_INCARNATION] = secrets.randbits(63) | 1
        w[H_MAGIC] = MAGIC  # last: a half-formatted region never looks valid
        return region

    @classmethod
    def attach(cls, name: str) -> GroupsRegion:
        shm = posix_ipc.SharedMemory(name)
        try:
            size = shm.size
            if size < REGION_BYTES:
                raise errors.CorruptBatch(f"groups region {name} is only {size} bytes", what=name)
            # a region of a version that did not reserve: reserve it now
            reserve_fd(shm.fd, REGION_BYTES, f"groups region {name}", name)
            mm = mmap.mmap(shm.fd, REGION_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            shm.close_fd()
        region = cls(name, mm, created=False)
        w = region.words
        if w[H_MAGIC] != MAGIC or w[H_VERSION] != VERSION or w[H_SLOTS] != SLOT_COUNT:
            region.close()
            raise errors.CorruptBatch(
                f"groups region {name} has a bad magic, version or slot count", what=name)
        return region

    @property
    def incarnation(self) -> int:
        return self.words[H_INCARNATION]

    def close(self) -> None:
        if self.words is None:
            return
        self.words.release()
        self.words = None
        try:
            self._mm.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        unlink_region(self.name)
