"""pyzmq PUSH/PULL over ipc:// (a unix socket in a temp dir).

Per-message mode: send(value) / recv() (non-blocking first, poll only when
nothing is queued); batch mode: send_multipart(values)
/ recv_multipart() (one zmq message of `batch` frames). High-water marks
are set to the same in-flight budget as shmlog's buffer (64 MiB)."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator, List, Optional

from ..common import BUFFER_BYTES, Endpoint, Skip
from . import Channel, Spec, System


class _Push(Endpoint):
    def __init__(self, addr: str, hwm: int, size: int):
        import zmq

        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.PUSH)
        self.s.setsockopt(zmq.SNDHWM, hwm)
        self.s.connect(addr)
        # what a pyzmq user writes: s.send(v), which copies a small message
        # (copy=False makes a tracked Frame per call: 1.9-2.1 us against
        # 1.0-1.1 us for 100 B here), and copy=False for large ones, where
        # it saves the copy; never a partial with keywords (a dict per call)
        send = self.s.send
        self.send = send if size < zmq.COPY_THRESHOLD else (lambda v: send(v, 0, False))

    def send_batch(self, values: List[bytes]) -> None:
        self.s.send_multipart(values, copy=False)

    def close(self) -> None:
        self.s.close(linger=5000)  # deliver what is queued, bounded
        self.ctx.term()


class _Pull(Endpoint):
    def __init__(self, addr: str, hwm: int):
        import zmq

        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.PULL)
        self.s.setsockopt(zmq.RCVHWM, hwm)
        self.s.bind(addr)
        self._recv_now = functools.partial(self.s.recv, zmq.NOBLOCK)
        self._again = zmq.Again

    def recv(self, timeout: float) -> Optional[bytes]:
        # what a pyzmq user's loop does: a plain recv(), waiting only when
        # nothing is queued (a poll() before every recv() doubled the
        # consumer's calls per message and made pyzmq look slower than it is)
        try:
            return self._recv_now()
        except self._again:
            if self.s.poll(int(timeout * 1000)):
                return self.s.recv()
            return None

    def recv_batch(self, max_n: int, timeout: float) -> List[bytes]:
        if self.s.poll(int(timeout * 1000)):
            return self.s.recv_multipart()
        return []

    def close(self) -> None:
        self.s.close(linger=0)
        self.ctx.term()


class ZmqIpc(System):
    name = "pyzmq ipc"
    how = {"msg": "PUSH send(value) / PULL recv()",
           "batch": "send_multipart(values) / recv_multipart()"}

    def check(self) -> None:
        try:
            import zmq  # noqa: F401
        except ImportError:
            raise Skip("pyzmq is not installed (pip install pyzmq)") from None

    @contextmanager
    def channel(self, spec: Spec) -> Iterator[Channel]:
        d = tempfile.mkdtemp(prefix="shmlog-bench-zmq-")
        addr = "ipc://" + os.path.join(d, "s")
        # HWM counts frames (a batch is one message of `batch` frames)
        hwm = max(16, min(BUFFER_BYTES // spec.size, 1_000_000))
        try:
            yield Channel(producer=lambda: _Push(addr, hwm, spec.size), consumer=lambda: _Pull(addr, hwm))
        finally:
            shutil.rmtree(d, ignore_errors=True)
