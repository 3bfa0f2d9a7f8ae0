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
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..osutil import write_json_atomic
from .offsets import OFFSETS_SUFFIX, read_committed

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

    def attach(self) -> None:
        sup = self.sup
        sup.tickers.append(self.tick)
        sup.on_topic_deleted.append(self.topic_deleted)

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
            self._committed = {}
            d = Path(self.sup.data_dir) / "groups"
            for path in sorted(d.glob("*" + OFFSETS_SUFFIX)) if d.is_dir() else ():
                for _topic, tid, p, off in read_committed(path):
                    key = (tid, p)
                    if off > self._committed.get(key, -1):
                        self._committed[key] = off
        return self._committed

    def initial_offset(self, t: Dict[str, Any], p: int, default: int) -> int:
        """Where a re-created region of memory partition p starts."""
        self._load()
        offs = self.next.get(str(t["id"]), [])
        start = max(default, offs[p] if p < len(offs) else 0,
                    self._highest_committed().get((t["id"], p), 0))
        if start:
            log.info("memory topic id %d partition %d: region re-created at offset %d (offsets are "
                     "never reused; the messages before it are gone)", t["id"], p, start)
        return start

    # ------------------------------------------------------------ writing
    def _current(self) -> Dict[str, List[int]]:
        sup = self.sup
        out = dict(self.next)
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
        live = {str(t["id"]) for t in sup.meta["topics"].values()}
        return {k: v for k, v in out.items() if k in live}

    def checkpoint(self, *, force: bool = False) -> None:
        """Persist the next offsets if they moved (force: even if the last
        checkpoint was a moment ago). Call with sup.lock held."""
        self._load()
        now = time.monotonic()
        if not force and now - self._last_checkpoint < CHECKPOINT_INTERVAL_S:
            return
        cur = self._current()
        if cur == self.next and (self.path.exists() or not cur):
            self._last_checkpoint = now
            return
        try:
            write_json_atomic(self.path, {"topics": cur})
        except OSError as exc:
            log.error("cannot write %s (%s); memory topics' offsets may repeat after a reboot",
                      self.path, exc)
            return
        self.next = cur
        self._last_checkpoint = now

    def tick(self) -> None:
        with self.sup.lock:
            self.checkpoint()

    def topic_deleted(self, name: str, t: Dict[str, Any]) -> None:
        if self.next.pop(str(t["id"]), None) is not None:
            self.checkpoint(force=True)
