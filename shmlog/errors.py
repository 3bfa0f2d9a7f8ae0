"""The one error hierarchy of shmlog.

Every error a user can see derives from ShmlogError, names what it is about
(topic, partition, offset, path) and, where there is one, says what to do
(HINT). C returns -errno; `check` turns that into the right class here and
nowhere else.
"""

from __future__ import annotations

import errno
from typing import Optional


class ShmlogError(Exception):
    """Base class. `.what` names the object involved, `.code` the errno if any."""

    HINT: Optional[str] = None

    def __init__(self, message: str, *, what: Optional[str] = None, code: Optional[int] = None,
                 hint: Optional[str] = None):
        # hint: this error's own advice instead of the class's HINT ("" none)
        hint = self.HINT if hint is None else hint
        if hint and hint not in message:
            message = f"{message} ({hint})"
        super().__init__(message)
        self.what = what
        self.code = code


class BrokerNotRunning(ShmlogError):
    HINT = "start one with `shmlog serve --data-dir DIR`, or connect with start=True"


class InvalidConfig(ShmlogError, ValueError):
    pass


class InvalidTopic(ShmlogError, ValueError):
    pass


class TopicExists(ShmlogError):
    pass


class UnknownTopic(ShmlogError, KeyError):
    HINT = "create it first with cluster.create_topic() or `shmlog topics create`"

    def __str__(self) -> str:  # KeyError would add quotes
        return Exception.__str__(self)


class UnknownPartition(ShmlogError, KeyError):
    def __str__(self) -> str:
        return Exception.__str__(self)


class BufferFull(ShmlogError):
    HINT = (
        "consumers are not keeping up: raise max_block_ms, add consumers, "
        "or raise the topic's chunk_bytes/chunk_count"
    )


class MessageTooLarge(ShmlogError, ValueError):
    HINT = "raise the topic's max_message_bytes (and chunk_bytes), or split the message"


class OffsetOutOfRange(ShmlogError):
    HINT = "seek to a valid offset, or use auto_offset_reset='earliest'/'latest'"


class CorruptBatch(ShmlogError):
    pass


class GroupError(ShmlogError):
    pass


class RebalanceInProgress(GroupError):
    pass


class FencedMember(GroupError):
    HINT = "this member's generation is stale; it rejoins on its next poll"


class ControlError(ShmlogError):
    """The supervisor rejected or failed a control request."""


class Closed(ShmlogError):
    HINT = "create a new one; close() is final"


class StorageError(ShmlogError):
    pass


def check(rc: int, what: str, *, offset: Optional[int] = None) -> int:
    """Turn a negative C return into the right exception; pass counts through."""
    if rc >= 0:
        return rc
    code = -rc
    where = what if offset is None else f"{what} at offset {offset}"
    if code == errno.EAGAIN:
        raise BufferFull(f"no free chunk in {what} before the timeout", what=what, code=code)
    if code == errno.EMSGSIZE:
        raise MessageTooLarge(f"batch too large for {what}", what=what, code=code)
    if code == errno.EBADMSG:
        raise CorruptBatch(f"corrupt batch in {where}: bad CRC or length", what=what, code=code)
    if code == errno.ERANGE:
        raise OffsetOutOfRange(f"{where} is no longer in shared memory", what=what, code=code)
    if code == errno.EPROTO:
        raise CorruptBatch(
            f"{what}: shared-memory region has a bad magic, version or geometry",
            what=what,
            code=code,
        )
    if code == errno.ENOSPC:
        raise ShmlogError(f"{what}: no free slot (too many producers or readers)", what=what, code=code)
    if code == errno.EINVAL:
        raise InvalidConfig(f"{what}: invalid argument", what=what, code=code)
    if code == errno.ENOMEM:
        # chunk.c, try_rotate: the next chunk's pages could not be reserved
        raise StorageError(
            f"{what}: no shared memory for the next chunk (the tmpfs behind /dev/shm is full): "
            f"consumers and the spiller free chunks as they catch up; free space there, grow it "
            f"(mount -o remount,size=... /dev/shm), or lower the data dir's shm_budget_bytes",
            what=what, code=code)
    raise ShmlogError(f"{what}: {errno.errorcode.get(code, code)}", what=what, code=code)
