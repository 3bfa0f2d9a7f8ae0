"""Where a memory topic's offsets resume when its regions are re-created.

Kafka never reuses an offset: a consumer or a group that remembers offset N
must never be handed a different message as N. A memory topic's log lives
only in shared memory, so when its region is gone (the supervisor exited and
unlinked it, or the machine rebooted) the supervisor re-creates it empty; it
then starts at the partition's last known end, not at 0:

- ``<data_dir>/memory_offsets.json`` holds, per topic id, the next offset of
  every memory partition: written at each clean exit (before the regions are
  unlinked) and checkpointed by the reaper at most once per
  CHECKPOINT_INTERVAL_S while the offsets move (never per message: producers
  claim offsets in shared memory without the supervisor);
- a re-created region also starts at or above the highest offset any group
  committed on it (groups/<group>.offsets), which covers what was produced
  and consumed after the last checkpoint before a crash.

So after a reboot offsets may repeat only for messages written after the
last checkpoint that no group committed past; a group's committed offset is
then at or below the new start, and it follows auto_offset_reset. A region
that survived (supervisor SIGKILLed) is re-attached and its offsets simply
continue. A deleted topic's entry is dropped: a re-created topic has a new
id and starts at 0, and committed offsets carry the topic id, so the old
topic's never apply to it.

Runs in the supervisor only; it must never be on the data path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..osutil import write_json_atomic
from .offsets import highest_committed

log = logging.getLogger("shmlog.supervisor")

MEMORY_OFFSETS_NAME = "memory_offsets.json"
CHECKPOINT_INTERVAL_S = 1.0


class MemoryOffsets:
    """The supervisor's record of its memory partitions' next offsets."""

    def __init__(self, sup):
        self.sup = sup
        self.path = Path(sup.data_dir) / MEMORY_OFFSETS_NAME
        # topic id (str: JSON keys) -> next offset per partition
        self.next: Dict[str, List[int]] = {}
        self._committed: Optional[Dict[Tuple[int, int], int]] = None
        self._last_checkpoint = 0.0
        self._loaded = False
        self._write_mu = threading.Lock()

    def attach(self) -> None:
        # a deleted topic's entry goes with the next write (its id is gone
        # from the metadata, and ids are never reused)
        self.sup.tickers.append(self.tick)

    # ------------------------------------------------------------ reading
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # offsets may then repeat after a reboot, but nothing else is at
            # stake: say so and carry on (the committed offsets still count)
            log.error("%s is unreadable (%s); memory topics resume at their groups' committed offsets",
                      self.path, exc)
            return
        topics = data.get("topics") if isinstance(data, dict) else None
        for tid, offs in (topics or {}).items():
            if isinstance(offs, list) and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0
                                              for o in offs):
                self.next[str(tid)] = offs

    def _highest_committed(self) -> Dict[Tuple[int, int], int]:
        """(topic id, partition) -> the highest offset any group committed
        (read once per supervisor start, before the coordinator loads)."""
        if self._committed is None:
            self._committed = highest_committed(Path(self.sup.data_dir) / "groups")
        return self._committed

    def initial_offset(self, name: str, t: Dict[str, Any], p: int, default: int) -> int:
        """Where a re-created region of memory partition p starts."""
        self._load()
        offs = self.next.get(str(t["id"]), [])
        # the files as they were at start, and what groups committed since
        # (a region found unusable later is re-created mid-life)
        live = [off for g in self.sup.coordinator.groups.values()
                for (tid, off) in [g.store.offsets.get((name, p), (None, 0))] if tid == t["id"]]
        start = max([default, offs[p] if p < len(offs) else 0,
                     self._highest_committed().get((t["id"], p), 0)] + live)
        if start:
            log.info("memory topic id %d partition %d: region re-created at offset %d (offsets are "
                     "never reused; the messages before it are gone)", t["id"], p, start)
        return start

    # ------------------------------------------------------------ writing
    def snapshot(self) -> Optional[Dict[str, List[int]]]:
        """The next offsets of every live memory partition now (call with
        sup.lock held: it reads the regions), or None when nothing moved."""
        self._load()
        sup = self.sup
        out = {}
        for t in sup.meta["topics"].values():
            if t["config"]["storage"] != "memory":
                continue
            key = str(t["id"])
            old = self.next.get(key, [])
            offs = []
            for p in range(t["config"]["partitions"]):
                plog = sup.logs.get((t["id"], p))
                prev = old[p] if p < len(old) else 0
                if plog is None or plog.closed:
                    offs.append(prev)
                    continue
                # claimed, not only committed: a claim in flight takes its
                # offsets too (it commits or becomes an aborted hole)
                offs.append(max(prev, plog.end_offset(), plog.claimed_end))
            out[key] = offs
        if out == self.next and (self.path.exists() or not out):
            return None
        return out

    def write(self, cur: Optional[Dict[str, List[int]]]) -> None:
        """Persist a snapshot (fsynced). Never called while waiting for
        sup.lock: the fsync must not stall the supervisor's loop, and the
        write lock is never held while taking sup.lock (no deadlock)."""
        if cur is None:
            return
        with self._write_mu:
            # an older snapshot written late must not move an offset back:
            # keep the higher of the two (ids absent from cur are deleted topics)
            merged = {}
            for key, offs in cur.items():
                old = self.next.get(key, [])
                merged[key] = [max(o, old[p] if p < len(old) else 0) for p, o in enumerate(offs)]
            try:
                write_json_atomic(self.path, {"topics": merged})
            except OSError as exc:
                log.error("cannot write %s (%s); memory topics' offsets may repeat after a reboot",
                          self.path, exc)
                return
            self.next = merged

    def tick(self) -> None:
        """A reaper pass: checkpoint at most every CHECKPOINT_INTERVAL_S."""
        now = time.monotonic()
        if now - self._last_checkpoint < CHECKPOINT_INTERVAL_S:
            return
        self._last_checkpoint = now
        with self.sup.lock:
            cur = self.snapshot()
        self.write(cur)
