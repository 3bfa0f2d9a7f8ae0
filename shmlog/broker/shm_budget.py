"""The shared-memory budget of one data dir, and the ring sizes that follow.

Two bounds, one per moment:

- Admission (create_topic, add_partitions): the supervisor asks `check`
  before it creates regions and refuses, with an error that says what to
  change, a request whose floor does not fit: a memory topic's whole rings
  (its ring is its log), a disk topic's header and active chunk per
  partition plus one full ring (so at least one partition can always move).
- Run time: the data dir's account (core.budget_region, csrc/layout.h)
  counts every reserved page of every region. A rotation that opens a
  released chunk charges it first; past the budget it waits (BufferFull at
  the producer's timeout, retryable) and bumps the account's pressure word,
  which makes the next release pass (`release_idle`, run by the spiller's
  thread) give back spilled, read chunks of busy partitions too. So resident
  shared memory stays within the budget however many partitions are hot.

A disk topic's ring only has to absorb what the spiller has not copied yet
and what live readers have not read: readers further behind read segment
files. So when the user does not set chunk_bytes/chunk_count, a disk topic
gets a ring sized from the budget and its partition count, planned for
DISK_HOT_PARTITIONS busy partitions (a 1,000-partition topic does not take
1,000 x 64 MiB). A memory topic's ring is its whole log: its size stays the
user's choice (TOPIC_DEFAULTS), checked against the budget like any other.

It never writes into a partition region: it reads configs and sizes of
files in /dev/shm, keeps the account's limit and count, and asks regions
to release (shmlog_log_release).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from .. import config as cfgmod
from .. import errors
from ..core import budget_region, fault_points, groups_region
from ..core.log import PartitionLog, region_usage, shm_free_bytes, shm_space

# default budget: this share of the smaller of RAM and the tmpfs behind
# /dev/shm (other data dirs and other programs use both too)
SHM_BUDGET_FRACTION = 0.25

# a disk topic's default ring: at most TOPIC_DEFAULTS' 4 x 16 MiB (what one
# partition had before, so topics of few partitions are unchanged), at most
# 1/DISK_TOPIC_SHARE of the budget for the whole topic, and chunks of at
# least DISK_CHUNK_MIN (a batch may take chunk/16: 16 KiB at the minimum)
DISK_TOPIC_SHARE = 8
# A disk partition holds its header and its active chunk at all times; the
# rest of its ring only while it is busy (an idle one gives those pages back:
# release_idle). Default chunk sizes are planned so that this many
# partitions of each disk topic can hold full rings at once; more hot ones
# than that share the budget through the account (they wait for pages, they
# never pass it).
DISK_HOT_PARTITIONS = 32
DISK_CHUNK_MIN = 256 << 10
CHUNK_ALIGN = 64 << 10  # chunk sizes in whole 64 KiB units (page multiples)
GEOMETRY_KEYS = ("chunk_bytes", "chunk_count")
# a recount whose compare-and-swap loses to charges this many times in a
# row gives up until the next reason to count (rotations are rare)
RECOUNT_TRIES = 8
# the largest message (key and value) a default disk topic takes when the
# user does not set max_message_bytes: Kafka's default (message.max.bytes)
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20


def ram_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def default_budget() -> int:
    sizes = [s for s in (ram_bytes(), shm_space()[0]) if s]
    base = min(sizes) if sizes else 1 << 30
    return int(base * SHM_BUDGET_FRACTION)


def region_bytes(cfg: Dict[str, Any]) -> int:
    """Bytes one partition region of a topic with this config spans (its
    apparent size; a memory topic reserves all of it)."""
    return PartitionLog.region_bytes(cfg["chunk_bytes"], cfg["chunk_count"])


def topic_bytes(cfg: Dict[str, Any], partitions: Optional[int] = None) -> int:
    """What admission counts for a topic (or for `partitions` of its
    partitions): a memory topic's whole rings (the log is its size); a disk
    topic's header and active chunk per partition, and the rest of one ring
    (the account shares out the rest at run time)."""
    n = cfg["partitions"] if partitions is None else partitions
    full = region_bytes(cfg)
    if cfg.get("storage") != "disk":
        return n * full
    idle = full - (cfg["chunk_count"] - 1) * cfg["chunk_bytes"]
    return n * idle + min(n, 1) * (full - idle)


def planned_bytes(cfg: Dict[str, Any]) -> int:
    """What a topic holds with DISK_HOT_PARTITIONS of a disk topic's
    partitions busy (full rings): what default chunk sizes plan for."""
    n = cfg["partitions"]
    full = region_bytes(cfg)
    if cfg.get("storage") != "disk":
        return n * full
    idle = full - (cfg["chunk_count"] - 1) * cfg["chunk_bytes"]
    return n * idle + min(n, DISK_HOT_PARTITIONS) * (full - idle)


def added_bytes(cfg: Dict[str, Any], before: int, after: int) -> int:
    """What growing a topic from `before` to `after` partitions adds to the budget."""
    return topic_bytes(cfg, after) - topic_bytes(cfg, before)


def ring_alter_error(name: str, ring, geometry: str) -> errors.InvalidConfig:
    """chunk_bytes/chunk_count cannot change live: every producer and
    consumer has mapped the regions with the geometry they were made with;
    a new one means new regions, new offsets and a new budget check."""
    return errors.InvalidConfig(
        f"cannot alter {', '.join(ring)} of topic {name!r}: its shared-memory regions keep the "
        f"ring geometry they were created with ({geometry}), which every producer and consumer "
        f"has mapped. Create a topic with the new --config {ring[0]}=... (checked against "
        f"shm_budget_bytes) and move to it, or delete and re-create this one",
        what=name,
    )


def human(n: Optional[float]) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def disk_ring_chunk_bytes(partitions: int, budget: int, available: int,
                          max_message_bytes: Optional[int] = None) -> int:
    """chunk_bytes of a disk topic whose user did not set its geometry: the
    topic's share of the budget (or what is left of it, if less) over its
    partitions, clamped to [DISK_CHUNK_MIN, the default chunk], and never
    smaller than the frame of one message of max_message_bytes (default
    DEFAULT_MAX_MESSAGE_BYTES): a message alone in its batch may fill a
    chunk (config.max_batch_bytes), so a 1,000-partition topic takes Kafka's
    1 MiB messages with chunks of ~1 MiB, not 16."""
    count = cfgmod.TOPIC_DEFAULTS["chunk_count"]
    top = cfgmod.TOPIC_DEFAULTS["chunk_bytes"]
    share = min(budget // DISK_TOPIC_SHARE, max(available, 0))
    header = PartitionLog.region_bytes(top, count) - top * count
    n = max(partitions, 1)
    # planned_bytes: n x (header + chunk) + min(n, hot) x (count - 1) x chunk
    chunk = (share - n * header) // (n + min(n, DISK_HOT_PARTITIONS) * (count - 1))
    chunk -= chunk % CHUNK_ALIGN
    chunk = max(DISK_CHUNK_MIN, min(top, chunk))
    mmb = DEFAULT_MAX_MESSAGE_BYTES if max_message_bytes is None else max_message_bytes
    need = cfgmod.message_frame_bytes(mmb)
    need += -need % CHUNK_ALIGN
    return max(chunk, min(need, cfgmod.MAX_CHUNK_BYTES))


def disk_ring_chunk_count(partitions: int, chunk_bytes: int, apparent_left: int) -> int:
    """chunk_count of a disk topic whose user did not set its geometry:
    TOPIC_DEFAULTS' 4, or fewer (at least 2) when the topic's regions would
    span more than what is left of the budget. Apparent size is not memory
    (only reserved pages are, and the account bounds those), but a tmpfs
    full of files larger than the budget misleads whoever reads df."""
    count = cfgmod.TOPIC_DEFAULTS["chunk_count"]
    n = max(partitions, 1)
    while count > 2 and n * PartitionLog.region_bytes(chunk_bytes, count) > apparent_left:
        count -= 1
    return count


class ShmBudget:
    """The supervisor's view of its data dir's shared memory."""

    def __init__(self, sup):
        self.sup = sup
        self._ends: Dict[Any, tuple] = {}  # partition key -> (claimed end, since when)
        self.released_chunks = 0
        self.account: Optional[budget_region.BudgetRegion] = None
        self._pressure_seen = 0
        self._reaped_seen = 0
        self.recounts = 0
        sup.tickers.append(self.after_reap)
        sup.keep_regions.append(lambda: [budget_region.region_name(sup.cluster_id)])
        sup.on_start.append(self.start)
        sup.on_stop.append(self.stop)
        sup.on_topic_created.append(lambda name: self.recount())
        sup.on_partitions_added.append(lambda name, before, after: self.recount())
        sup.on_topic_deleted.append(lambda name, t: self.recount())

    # -- the account -------------------------------------------------------
    def start(self) -> None:
        # fault tests stop the supervisor at a chosen step, then SIGKILL it
        fault_points.arm_from_env()
        self.account = budget_region.BudgetRegion.open(
            budget_region.region_name(self.sup.cluster_id), self.budget)
        self._pressure_seen = self.account.pressure
        self.recount()

    def stop(self) -> None:
        if self.account is not None:
            self.account.unlink()
            self.account.close()  # unmapped once the supervisor's logs close
            self.account = None

    def recount(self) -> int:
        """Set the account's count from the regions themselves (their
        header and unreleased chunks, the groups region, the account's
        page), and hand the account to every region the supervisor maps.
        At start, at every topic change, and after the reaper found a dead
        client: it drops what killed processes left counted (layout.h).

        Never low while live producers charge: the count is taken from the
        account's word (bytes and a tag that every charge and credit bumps)
        before the regions are read, and stored with a compare-and-swap
        against it, so a charge or credit made meanwhile fails the swap and
        the regions are read again; a chunk in the middle of an opening or
        a release counts as reserved (shmlog_log_reserved_bytes), whichever
        side of its charge or credit the reading fell on."""
        acc = self.account
        if acc is None:
            return 0
        for _ in range(RECOUNT_TRIES):
            with self.sup.lock:
                snap = acc.snapshot()
                logs = [plog for plog in self.sup.logs.values() if not plog.closed]
                for plog in logs:
                    plog.set_budget(acc)
                n = groups_region.REGION_BYTES + budget_region.REGION_BYTES + sum(
                    plog.reserved_bytes() for plog in logs)
            if acc.recount(snap, n):
                self.recounts += 1
                return n
        return acc.reserved  # busy rotating: the next dead client or topic change counts again

    def after_reap(self) -> None:
        """The reaper's ticker: recount once it has reaped a dead process
        (its repair put that process's half-opened chunks back to FREE, so
        a charge it made before dying is dropped now, not at the next
        start)."""
        reaped = self.sup.reaped_processes
        if reaped != self._reaped_seen:
            self._reaped_seen = reaped
            self.recount()

    def pressed(self) -> bool:
        """Has a rotation been refused since the last release pass? Then
        the spiller runs one now, not at its next interval."""
        acc = self.account
        return acc is not None and acc.pressure != self._pressure_seen

    @property
    def budget(self) -> int:
        b = self.sup.cfg.get("shm_budget_bytes")
        return int(b) if b is not None else default_budget()

    def reserved(self) -> int:
        """What admission counts for every topic of the data dir (by
        config: topic_bytes), the groups region (heartbeat slots, its pages
        reserved when it is created) and the account's page."""
        return groups_region.REGION_BYTES + budget_region.REGION_BYTES + sum(
            topic_bytes(t["config"]) for t in self.sup.meta["topics"].values())

    def _region_names(self):
        return [plog.name for plog in list(self.sup.logs.values())] + [
            groups_region.region_name(self.sup.cluster_id),
            budget_region.region_name(self.sup.cluster_id)]

    def topic_defaults(self, conf: Dict[str, Any]) -> Dict[str, Any]:
        """conf (what the user asked for) with a disk topic's ring sized from
        the budget and its largest message when the user set neither
        chunk_bytes nor chunk_count; max_message_bytes defaults to
        DEFAULT_MAX_MESSAGE_BYTES there, whatever the partition count."""
        storage = conf.get("storage", cfgmod.TOPIC_DEFAULTS["storage"])
        if storage != "disk" or any(k in conf for k in GEOMETRY_KEYS):
            return conf
        partitions = conf.get("partitions", cfgmod.TOPIC_DEFAULTS["partitions"])
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            return conf  # topic_config names the bad value
        mmb = conf.get("max_message_bytes")
        if isinstance(mmb, bool) or not isinstance(mmb, int) or mmb < 1:
            if mmb is not None:
                return conf  # topic_config names the bad value
            mmb = DEFAULT_MAX_MESSAGE_BYTES
        budget = self.budget
        topics = self.sup.meta["topics"].values()
        fixed = groups_region.REGION_BYTES + budget_region.REGION_BYTES
        planned = fixed + sum(planned_bytes(t["config"]) for t in topics)
        chunk = disk_ring_chunk_bytes(partitions, budget, budget - planned, mmb)
        apparent = fixed + sum(t["config"]["partitions"] * region_bytes(t["config"]) for t in topics)
        count = disk_ring_chunk_count(partitions, chunk, budget - apparent)
        return {**conf, "chunk_bytes": chunk, "chunk_count": count, "max_message_bytes": mmb}

    def check(self, name: str, needed: int, request: str) -> None:
        """Refuse a request that needs `needed` more bytes of regions when
        that goes past the budget, or past what the tmpfs has free."""
        budget = self.budget
        reserved = self.reserved()
        if reserved + needed > budget:
            # InvalidConfig: the request's settings do not fit the budget
            # (the public error classes stay those of API.md)
            raise errors.InvalidConfig(
                f"{request} needs {human(needed)} of shared memory ({needed} bytes), but the data dir "
                f"{self.sup.data_dir} has {human(reserved)} of its budget of {human(budget)} reserved "
                f"({human(max(budget - reserved, 0))} left; shm_budget_bytes={budget}): use fewer "
                f"partitions or smaller chunk_bytes/chunk_count (--config chunk_bytes=...), delete "
                f"topics, or raise the broker setting shm_budget_bytes (shmlog serve --set "
                f"shm_budget_bytes=...)",
                what=name,
            )
        free = shm_free_bytes()
        if free is not None and needed > free:
            raise errors.StorageError(
                f"{request} needs {human(needed)} of shared memory ({needed} bytes), but the tmpfs "
                f"behind /dev/shm has only {human(free)} free (other programs use it too): free "
                f"space there, grow it (mount -o remount,size=... /dev/shm), or ask for less",
                what=name,
            )

    def release_idle(self, targets) -> int:
        """Give back the pages of spilled, read chunks of idle disk partitions
        (the spiller calls this with its [(partition files, region)] every
        retention interval). A partition is idle once its claimed end has
        not moved for shm_release_idle_ms: a busy one keeps its ring, so its
        rotations never pay for reserving pages again. Past the budget
        (a rotation was refused: the account's pressure word moved, or the
        count is near the limit), busy ones give back their spilled, read
        chunks too, whatever their idle time (and even with shm_release_idle_ms=0).
        The supervisor does it, not the clients: it knows
        spilled offsets, sees every reader slot, and outlives them.

        Released chunks are FREE (reused, for readers): a reader asking for
        their offsets finds them below the start offset and reads segment
        files, as for any offset behind the ring."""
        idle_ms = self.sup.cfg.get("shm_release_idle_ms", 1000)
        now = time.monotonic()
        over = None
        acc = self.account
        if acc is not None:
            pressure = acc.pressure
            # near the limit already: the next rotations anywhere need pages
            over = pressure != self._pressure_seen or acc.reserved > acc.limit * 0.9
            self._pressure_seen = pressure
        if not idle_ms and not over:
            return 0  # idle partitions keep their pages; under pressure busy ones still give
        released = 0
        seen = set()
        for part, plog in targets:
            key = part.key
            seen.add(key)
            with self.sup.lock:
                if plog.closed or part.deleted:
                    continue
                end = plog.claimed_end
                prev = self._ends.get(key)
                if prev is None or prev[0] != end:
                    self._ends[key] = (end, now)
                    if over is None:
                        over = self.resident() > self.budget
                    if not over:
                        continue
                elif (not idle_ms or (now - prev[1]) * 1000 < idle_ms) and not over:
                    continue
                plog.set_budget(acc)
                released += plog.release()
        for key in [k for k in self._ends if k not in seen]:
            del self._ends[key]
        self.released_chunks += released
        return released

    def resident(self) -> int:
        total = 0
        for name in self._region_names():
            u = region_usage(name)
            if u is not None:
                total += u[1]
        return total

    def stats(self) -> Dict[str, Any]:
        """Data-dir totals: budget, reserved (by config), apparent and
        resident size of the regions that exist, the tmpfs's size and free."""
        apparent = resident = 0
        for name in self._region_names():
            u = region_usage(name)
            if u is not None:
                apparent += u[0]
                resident += u[1]
        total, free = shm_space()
        acc = self.account
        return {"budget_bytes": self.budget,
                # the account (what regions hold reserved now), else the admission count
                "reserved_bytes": acc.reserved if acc is not None else self.reserved(),
                "admitted_bytes": self.reserved(),
                "refused_charges": acc.refused if acc is not None else 0,
                "apparent_bytes": apparent, "resident_bytes": resident,
                "tmpfs_bytes": total, "tmpfs_free_bytes": free,
                "released_chunks": self.released_chunks}
