"""Producer.send_batch: many values at once, one crossing into C per
frame, not per message. Producer's method, kept apart by concern; it runs
with the producer's lock and its state.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from .. import errors
from ..core.codec import bytes_error
from .commit_rules import _RECORD_OVERHEAD

_BYTES_LIKE = (bytes, bytearray, memoryview)


def send_batch(self: Any, topic: str, values: Sequence, keys: Optional[Sequence] = None,
               partition: Optional[int] = None, headers: Optional[Sequence] = None,
               timestamps: Optional[Sequence[int]] = None) -> None:
    """Send many values at once: one crossing into C per batch, not per message."""
    st = self._topics.get(topic) or self._state(topic)
    n = len(values)
    if n == 0:
        return
    if keys is not None and len(keys) != n:
        raise ValueError(f"send_batch got {n} values but {len(keys)} keys")
    if partition is None and keys is not None and st.nparts > 1:
        # group by partition, keeping each key's order
        parts: Dict[int, List[int]] = {}
        kp = st.keyed
        for i, k in enumerate(keys):
            p = kp(k) if k is not None else st.sticky
            parts.setdefault(p, []).append(i)
        for p, idx in parts.items():
            self.send_batch(topic, [values[i] for i in idx], keys=[keys[i] for i in idx], partition=p,
                            headers=None if headers is None else [headers[i] for i in idx],
                            timestamps=None if timestamps is None else [timestamps[i] for i in idx])
        return
    if partition is None:
        partition = st.sticky
        if st.nparts > 1:
            st.sticky = (st.sticky + 1) % st.nparts
    elif not 0 <= partition < st.nparts:
        raise errors.UnknownPartition(f"topic {topic!r} has no partition {partition}", what=topic)
    with self._lock:
        if self._error is not None:
            self._raise_async_error()
        # what is pending for this partition goes first (order)
        if st.kq:
            self._commit_keyed(st)
        if st.rq:
            self._commit_rich(st)
        if st.plain[partition]:
            self._commit_plain(st, partition)
        limit = st.frame_limit
        if (keys is None and headers is None and timestamps is None
                and self._append(st, partition, values, None, None, None, None, probe=True)):
            return
        # split by size so each frame fits; most batches are one slice
        if keys is None:
            null_values = False
            try:
                lens = list(map(len, values))
            except TypeError:  # None (null values) or a wrong type, named later
                null_values = True
                lens = [0 if v is None else len(v) if isinstance(v, _BYTES_LIKE) else 0
                        for v in values]
            total = sum(lens)
            # no single message can exceed the limit if they all fit under it
            if total > st.max_message and max(lens) > st.max_message:
                j = next(i for i, ln in enumerate(lens) if ln > st.max_message)
                raise errors.MessageTooLarge(
                    f"message #{j} of {lens[j]} bytes to topic {topic!r} exceeds "
                    f"max_message_bytes={st.max_message}", what=topic)
            if total + _RECORD_OVERHEAD * n <= limit:
                # lens came from map(len): a None among the values would have
                # sent us to the except branch, so they are plain lengths
                self._append(st, partition, values, None, headers, timestamps, None,
                             value_lens=lens if not null_values else None)
                return
        else:
            # a None value is a tombstone: no bytes
            lens = [(len(v) if v is not None else 0) + (len(k) if k is not None else 0)
                    for v, k in zip(values, keys)]
            for j, sz in enumerate(lens):
                if sz > st.max_message:
                    raise errors.MessageTooLarge(
                        f"message #{j} of {sz} bytes to topic {topic!r} exceeds "
                        f"max_message_bytes={st.max_message}", what=topic)
        # the batch goes out frame by frame: check every value (and key)
        # first, so a bad one late in the batch commits nothing
        for kind, items in (("value", values), ("key", keys)):
            if items is not None and not all(v is None or isinstance(v, _BYTES_LIKE) for v in items):
                raise bytes_error(kind, items)
        i = 0
        while i < n:
            j, acc = i, 0
            while j < n and (acc == 0 or acc + lens[j] + _RECORD_OVERHEAD <= limit):
                acc += lens[j] + _RECORD_OVERHEAD
                j += 1
            try:
                self._append(st, partition,
                             values[i:j] if (i, j) != (0, n) else values,
                             None if keys is None else keys[i:j],
                             None if headers is None else headers[i:j],
                             None if timestamps is None else timestamps[i:j], None)
            except errors.ShmlogError as exc:
                # a large batch goes out frame by frame: say how much of
                # it is committed, so a retry can resend only the rest
                exc.committed = i
                raise
            i = j

