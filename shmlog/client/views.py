"""Runs of one partition's records handed out by consume_batch: what a
MessageBatch (copied columns) and a MessageView (zero-copy, values left in
shared memory with an explicit lifetime) share, and the view itself.
Never crosses into C: the consumer (shmlog.client.consumer) fills them."""

from __future__ import annotations

from array import array
from itertools import accumulate
from typing import Any, List, Optional

from .. import errors
from ..core.records import ReadResult


class RecordRun:
    """What a batch and a view share: one partition's run of offsets."""

    __slots__ = ()

    @property
    def base_offset(self) -> int:
        return self.offsets[0]

    @property
    def next_offset(self) -> int:
        return self.offsets[-1] + 1

    def __len__(self) -> int:
        return len(self.offsets)



class MessageView(RecordRun):
    """A zero-copy run of one partition's records: values stay in shared
    memory, addressed by position, and nothing is materialised until asked.

    Lifetime is explicit: the chunks are pinned (never reused) until
    release() — or the consumer's next consume_batch(copy=False) on the same
    partition, or close(). After that, any access raises shmlog.Closed.
    Use it as a context manager to release promptly."""

    __slots__ = ("topic", "partition", "offsets", "timestamps_ms", "value_positions", "value_lengths",
                 "key_positions", "key_lengths", "_headers", "_mm", "_owner", "_released")

    def __init__(self, topic, partition, cols, mm, owner):
        self.topic = topic
        self.partition = partition
        # key_lengths: -1 for a null key; _headers: None when no record has any
        (self.offsets, self.timestamps_ms, self.value_positions, self.value_lengths,
         self.key_positions, self.key_lengths, self._headers) = cols
        self._mm = mm
        self._owner = owner
        self._released = False

    def mark_released(self) -> None:
        """Its chunks are no longer pinned (the partition moved on or closed):
        any later access raises Closed."""
        self._released = True

    def _check(self) -> None:
        if self._released:
            raise errors.Closed(f"zero-copy batch of {self.topic}[{self.partition}] was released")

    @property
    def buffer(self) -> memoryview:
        """The whole mapping; values are buffer[value_positions[i]:+value_lengths[i]]."""
        self._check()
        return memoryview(self._mm)

    def value(self, i: int) -> Optional[bytes]:
        """Copy one value out (bytes), or None for a null value."""
        self._check()
        ln = self.value_lengths[i]
        if ln < 0:
            return None
        p = self.value_positions[i]
        return self._mm[p : p + ln]

    def key(self, i: int) -> Optional[bytes]:
        self._check()
        ln = self.key_lengths[i]
        if ln < 0:
            return None
        p = self.key_positions[i]
        return self._mm[p : p + ln]

    @property
    def headers(self) -> List[Any]:
        """Every record's headers (parsed when read: they are small)."""
        self._check()
        return self._headers if self._headers is not None else [()] * len(self.offsets)

    @property
    def has_headers(self) -> bool:
        return self._headers is not None

    @property
    def values(self) -> List[Optional[bytes]]:
        """Materialise every value (copies)."""
        self._check()
        mm = self._mm
        return [None if ln < 0 else mm[p : p + ln] for p, ln in zip(self.value_positions, self.value_lengths)]

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner(self)

    def __enter__(self) -> MessageView:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _packed(items: List[Optional[bytes]], start: int):
    """(blob, positions, lengths) for values laid end to end from `start`;
    a None keeps its slot with length -1."""
    lens = [-1 if v is None else len(v) for v in items]
    pos = list(accumulate((max(ln, 0) for ln in lens), initial=start))[:-1]
    return b"".join(v for v in items if v is not None), array("Q", pos), array("i", lens)


def copied_view(topic: str, partition: int, res: ReadResult) -> MessageView:
    """A MessageView over values that were copied anyway (disk, lz4)."""
    blob, pos, lens = _packed(res.values, 0)
    kblob, kpos, klens = _packed(res.keys, len(blob))
    cols = (array("Q", res.offsets), array("q", res.timestamps), pos, lens, kpos, klens, res.headers)
    return MessageView(topic, partition, cols, blob + kblob, lambda v: None)
