"""shmlog/errors.py: one hierarchy, and `check` turning the C core's -errno
returns into the right class with what, offset, code and hint."""

from __future__ import annotations

import errno
import inspect

import pytest

import shmlog
from shmlog import errors

WHAT = "partition region /shmlog-x-p3"


@pytest.mark.parametrize("rc,cls,words", [
    (-errno.EAGAIN, errors.BufferFull, "no free chunk"),
    (-errno.EMSGSIZE, errors.MessageTooLarge, "batch too large"),
    (-errno.EBADMSG, errors.CorruptBatch, "bad CRC or length"),
    (-errno.ERANGE, errors.OffsetOutOfRange, "no longer in shared memory"),
    (-errno.EPROTO, errors.CorruptBatch, "bad magic, version or geometry"),
    (-errno.ENOSPC, errors.ShmlogError, "no free slot"),
    (-errno.EINVAL, errors.InvalidConfig, "invalid argument"),
    (-errno.EIO, errors.ShmlogError, "EIO"),
    (-9999, errors.ShmlogError, "9999"),
])
def test_check_maps_each_errno_to_its_class(rc, cls, words):
    with pytest.raises(cls) as ei:
        errors.check(rc, WHAT)
    e = ei.value
    assert type(e) is cls  # exactly this class, not just a base
    assert isinstance(e, errors.ShmlogError)
    assert e.code == -rc
    assert e.what == WHAT
    assert WHAT in str(e) and words in str(e)
    if cls.HINT:
        assert str(e).endswith(f"({cls.HINT})")


@pytest.mark.parametrize("rc,cls", [
    (-errno.EBADMSG, errors.CorruptBatch),
    (-errno.ERANGE, errors.OffsetOutOfRange),
])
def test_check_names_the_offset(rc, cls):
    with pytest.raises(cls, match=rf"{WHAT} at offset 123456789\b"):
        errors.check(rc, WHAT, offset=123456789)


def test_check_passes_counts_through():
    assert errors.check(0, WHAT) == 0
    assert errors.check(17, WHAT) == 17
    assert errors.check(17, WHAT, offset=3) == 17


def test_every_error_class_derives_from_shmlog_error_and_is_exported():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, Exception) and c.__module__ == errors.__name__]
    assert len(classes) >= 15
    for c in classes:
        assert issubclass(c, errors.ShmlogError), c
    exported = {n for n in shmlog.__all__ if isinstance(getattr(shmlog, n), type)
                and issubclass(getattr(shmlog, n), BaseException)}
    for c in classes:
        if c.__name__ in ("ControlError", "RebalanceInProgress"):
            continue  # broker-internal
        assert c.__name__ in exported, c.__name__
        assert getattr(shmlog, c.__name__) is c


def test_value_and_key_errors_stay_catchable_as_builtins():
    assert issubclass(errors.InvalidConfig, ValueError)
    assert issubclass(errors.MessageTooLarge, ValueError)
    assert issubclass(errors.UnknownTopic, KeyError)
    # KeyError would quote the message; ours read as sentences
    assert str(errors.UnknownTopic("no topic t")).startswith("no topic t (")


def test_hint_is_appended_once():
    e = errors.BufferFull("full")
    assert str(e) == f"full ({errors.BufferFull.HINT})"
    again = errors.BufferFull(str(e))
    assert str(again) == str(e)  # a message that already carries it is left alone
    plain = errors.CorruptBatch("bad")
    assert str(plain) == "bad" and plain.what is None and plain.code is None


def test_hints_say_what_to_do():
    assert "chunk_bytes" in errors.BufferFull.HINT
    assert "max_message_bytes" in errors.MessageTooLarge.HINT
    assert "auto_offset_reset" in errors.OffsetOutOfRange.HINT
    assert "shmlog serve" in errors.BrokerNotRunning.HINT
    assert "close() is final" in errors.Closed.HINT
