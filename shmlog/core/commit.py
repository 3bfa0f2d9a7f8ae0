"""The producer's commit crossings into the C core, made holding the GIL
(csrc/commit_call.c): the same functions cffi reaches, called so that the
GIL is released only when the core is about to wait (a chunk to rotate,
buffer space, the budget), not at every commit. A commit that gives the
GIL away lets any waiting thread (the producer's flusher, woken for each
new batch) run in the middle of a stream, and the producer then waits to
get it back: at 256 partitions, a commit every ~30 messages, that costs
half the producer's speed.

Pointer arguments are addresses (`address`) of cffi objects the caller
keeps alive for the call. Never call these for a closed log.
"""

from __future__ import annotations

from . import _commit
from ._core import ffi, lib


def address(cdata) -> int:
    """The address a cffi pointer or array holds, as _commit's calls take it."""
    return int(ffi.cast("uintptr_t", cdata))


_commit.bind(*(address(ffi.addressof(lib, name)) for name in (
    "shmlog_set_block_hook", "shmlog_log_append_one", "shmlog_log_append_pickled",
    "shmlog_keyed_append_one", "shmlog_rich_append")))

append_one = _commit.append_one
append_pickled = _commit.append_pickled
keyed_queue_append = _commit.keyed_queue_append
keyed_append_one = _commit.keyed_append_one
rich_append = _commit.rich_append
