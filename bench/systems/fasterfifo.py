"""faster-fifo: a multiprocessing queue over a shared-memory circular buffer
(pip faster-fifo), pickle per message.

Per-message mode: put(value) / get(); batch mode: put_many(values) /
get_many(max_messages_to_get=batch). Buffer: 64 MiB, as shmlog's."""

from __future__ import annotations

import queue
from contextlib import contextmanager
from typing import Iterator, List, Optional

from ..common import BUFFER_BYTES, Endpoint, Skip
from . import Channel, Spec, System


class _End(Endpoint):
    def __init__(self, q):
        self.q = q
        # a lambda, not a partial with keywords: that builds a dict per call
        # (~0.25 us here), which the call a user writes does not
        put = q.put
        self.send = lambda v: put(v, True, 30.0)  # Endpoint docstring

    def send_batch(self, values: List[bytes]) -> None:
        self.q.put_many(values, True, 30.0)

    def recv(self, timeout: float) -> Optional[bytes]:
        try:
            return self.q.get(True, timeout)
        except queue.Empty:
            return None

    def recv_batch(self, max_n: int, timeout: float) -> List[bytes]:
        try:
            return self.q.get_many(True, timeout, max_n)
        except queue.Empty:
            return []


class FasterFifo(System):
    name = "faster-fifo"
    how = {"msg": "put(value) / get()",
           "batch": "put_many(values) / get_many(max_messages_to_get=batch)"}

    def check(self) -> None:
        try:
            import faster_fifo  # noqa: F401
        except ImportError:
            raise Skip("faster-fifo is not installed (pip install faster-fifo)") from None

    @contextmanager
    def channel(self, spec: Spec) -> Iterator[Channel]:
        from faster_fifo import Queue

        q = Queue(max_size_bytes=BUFFER_BYTES)
        try:
            yield Channel(producer=lambda: _End(q), consumer=lambda: _End(q))
        finally:
            q.close()
