"""The records a consumer hands out: Message (one record, a tuple
subclass) and MessageBatch (one partition's run, as columns), and the
per-batch construction of Messages in C (csrc/messages.c)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence, Tuple

from ..core._messages import build as build_messages
from ..core._messages import fields
from ..core.records import ReadResult
from .views import RecordRun


class Message(tuple):
    """One record: (topic, partition, offset, key, value, headers, timestamp_ms).

    A tuple subclass: building one costs what building a tuple costs."""

    __slots__ = ()
    if TYPE_CHECKING:  # what a type checker sees; at run time, slots from C (fields below)
        @property
        def topic(self) -> str: ...
        @property
        def partition(self) -> int: ...
        @property
        def offset(self) -> int: ...
        @property
        def key(self) -> Optional[bytes]: ...
        @property
        def value(self) -> Optional[bytes]: ...
        @property
        def headers(self) -> Sequence[Tuple[str, bytes]]: ...
        @property
        def timestamp_ms(self) -> int: ...

    def __new__(cls, topic, partition, offset, key, value, headers=(), timestamp_ms=0):
        return tuple.__new__(cls, (topic, partition, offset, key, value, headers, timestamp_ms))

    def __getnewargs__(self):
        # pickle and copy rebuild a tuple subclass with cls.__new__(cls,
        # *__getnewargs__()); tuple's own gives one argument (the whole
        # tuple), which this __new__ does not take. Messages cross process
        # boundaries (multiprocessing queues, pools), so they must pickle.
        return tuple(self)

    def __repr__(self) -> str:
        v = self[4]
        vr = repr(v[:40] + b"...") if v is not None and len(v) > 40 else repr(v)
        return (f"Message(topic={self[0]!r}, partition={self[1]}, offset={self[2]}, "
                f"key={self[3]!r}, value={vr}, timestamp_ms={self[6]})")


# read-only descriptors on the tuple items (as a struct sequence has):
# the interpreter reads them as it reads __slots__, no call per attribute
fields(Message)
new_message = tuple.__new__


class MessageBatch(RecordRun):
    """One partition's run of records, as columns; no object per message
    until you iterate."""

    __slots__ = ("topic", "partition", "offsets", "values", "keys", "timestamps_ms", "_headers")

    def __init__(self, topic: str, partition: int, res: ReadResult):
        self.topic = topic
        self.partition = partition
        self.offsets = res.offsets
        self.values = res.values
        self.keys = res.keys
        self.timestamps_ms = res.timestamps
        self._headers = res.headers

    @property
    def headers(self) -> List[Any]:
        return self._headers if self._headers is not None else [()] * len(self.offsets)

    def __iter__(self) -> Iterator[Message]:
        return iter(batch_messages(self.topic, self.partition, self.offsets, self.keys, self.values,
                                   self._headers, self.timestamps_ms))

    def __repr__(self) -> str:
        return f"<MessageBatch {self.topic}[{self.partition}] offsets {self.base_offset}..{self.next_offset - 1} ({len(self)})>"


def batch_messages(topic, partition, offsets, keys, values, headers, timestamps) -> List[Message]:
    # one C call per batch (csrc/messages.c): no call per message, and a
    # Message of atomic fields is not tracked by the cyclic GC
    return build_messages(Message, topic, partition, offsets, keys, values, headers, timestamps)
