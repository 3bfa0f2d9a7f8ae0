"""shmlog.core._produce.produce_run (csrc/produce.c): the mirror's produce
loop over a zero-copy run, checked against a recording stand-in for a
Kafka producer's produce(): what each call gets, where the delivery
callback goes, the murmur2 placement, resuming after BufferError, and
positions outside the buffer refused."""

from __future__ import annotations

from array import array

import pytest
from shmlog.core._produce import produce_run

from shmlog.core.partitioner import KeyPartitioner


class Recorder:
    """produce(topic, value, key, partition, on_delivery, callback, timestamp, headers)"""

    def __init__(self, full_at=()):
        self.calls = []
        self.attempts = 0
        self.full_at = set(full_at)  # attempt numbers that raise BufferError

    def __call__(self, *args):
        self.attempts += 1
        if self.attempts - 1 in self.full_at:
            raise BufferError("Local: Queue full")
        self.calls.append(args)


def _run(records):
    """(buffer, value_pos, value_lens, key_pos, key_lens, timestamps) for
    records given as (key, value, timestamp); None is a null field."""
    blob = bytearray(b"\xee" * 7)  # positions do not start at 0
    cols = [array("Q"), array("i"), array("Q"), array("i"), array("q")]
    for key, value, ts in records:
        for field, (pos, lens) in ((value, (cols[0], cols[1])), (key, (cols[2], cols[3]))):
            pos.append(len(blob))
            lens.append(-1 if field is None else len(field))
            blob += field or b""
        cols[4].append(ts)
    return (bytes(blob), *cols)


RECORDS = [(b"k%d" % i, b"value-%d" % i, 1000 + i // 3) for i in range(10)]
CB = object()


def test_every_field_reaches_produce_and_the_callback_goes_on_the_last():
    rec = Recorder()
    headers = [[("i", b"%d" % i)] if i % 2 else [] for i in range(10)]
    reached, callbacks = produce_run(rec, "remote", *_run(RECORDS), headers, 2, 0, 0, 0, 10, CB)
    assert (reached, callbacks) == (10, 1)
    assert len(rec.calls) == 10
    for i, (topic, value, key, part, on_delivery, callback, ts, h) in enumerate(rec.calls):
        assert (topic, value, key, part, ts) == ("remote", b"value-%d" % i, b"k%d" % i, 2, 1000 + i // 3)
        assert type(value) is bytes and type(key) is bytes
        assert on_delivery is (CB if i == 9 else None) and callback is None
        assert h == ([("i", b"%d" % i)] if i % 2 else None)


def test_null_and_empty_fields():
    records = [(None, b"v", 1), (b"", None, 2), (b"k", b"", 3)]
    rec = Recorder()
    assert produce_run(rec, "t", *_run(records), None, 0, 0, 0, 0, 3, CB) == (3, 1)
    assert [(c[1], c[2], c[7]) for c in rec.calls] == [(b"v", None, None), (None, b"", None), (b"", b"k", None)]


def test_keys_placed_by_murmur2_with_a_callback_per_remote_partition():
    records = [(b"key-%d" % i, b"v", 0) for i in range(200)] + [(None, b"keyless", 0)]
    kp = KeyPartitioner(5)
    rec = Recorder()
    reached, callbacks = produce_run(rec, "t", *_run(records), None, 3, 5, 0, 0, len(records), CB)
    want = [kp(k) for k, _, _ in records[:-1]] + [3 % 5]  # a null key: local partition % remote count
    assert [c[3] for c in rec.calls] == want
    assert reached == len(records) and callbacks == len(set(want))
    last = {q: i for i, q in enumerate(want)}
    assert [i for i, c in enumerate(rec.calls) if c[4] is CB] == sorted(last.values())


def test_a_full_queue_stops_at_the_record_and_resumes_there():
    rec = Recorder(full_at={4})
    cols = _run(RECORDS)
    reached, callbacks = produce_run(rec, "t", *cols, None, 0, 0, 2, 2, 10, CB)
    assert (reached, callbacks) == (6, 1) and len(rec.calls) == 4  # records 2..5 went, 6 was refused
    reached, callbacks = produce_run(rec, "t", *cols, None, 0, 0, 2, reached, 10, CB)
    assert (reached, callbacks) == (10, 1)
    assert [c[1] for c in rec.calls] == [b"value-%d" % i for i in range(2, 10)]
    assert [c[4] is CB for c in rec.calls] == [False] * 7 + [True]


def test_other_errors_propagate():
    def produce(*args):
        raise TypeError("not this")

    with pytest.raises(TypeError, match="not this"):
        produce_run(produce, "t", *_run(RECORDS), None, 0, 0, 0, 0, 10, CB)


@pytest.mark.parametrize("column, index, bad", [(1, 3, 1 << 40), (2, 5, 1 << 30), (4, 0, 1 << 30),
                                                (3, 9, 1 << 50)])
def test_positions_outside_the_buffer_are_refused(column, index, bad):
    cols = list(_run(RECORDS))
    cols[column][index] = bad
    rec = Recorder()
    with pytest.raises(ValueError, match="outside the buffer"):
        produce_run(rec, "t", *cols, None, 0, 7 if column >= 3 else 0, 0, 0, 10, CB)


def test_columns_shorter_than_the_run_are_refused():
    cols = list(_run(RECORDS))
    with pytest.raises(ValueError, match="fewer than"):
        produce_run(Recorder(), "t", *cols, None, 0, 0, 0, 0, 11, CB)
    with pytest.raises(ValueError, match="headers"):
        produce_run(Recorder(), "t", *cols, [[]] * 5, 0, 0, 0, 0, 10, CB)
    with pytest.raises(ValueError):
        produce_run(Recorder(), "t", *cols, None, 0, 0, 5, 4, 10, CB)
