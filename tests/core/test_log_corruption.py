"""The partition log in shared memory (csrc/ through shmlog/core/log.py):
corruption of shared memory: never a crash, a hang or altered data;
bad headers and geometry refused on attach and create.

Tests create their regions under the `shm_prefix` fixture and close and
unlink them; every child process is forked, and killed or joined before the
test ends. Fault tests kill real processes (SIGKILL) at chosen points and
check DESIGN.md's invariants. Shared helpers: _log_helpers.py.
"""

from __future__ import annotations

import errno

import pytest
from _core_helpers import (
    Child,
    fill_until_rotation,
    frames,
    new_log,
    read_all,
    value_of,
)
from _log_helpers import (
    frame_hdr,
    frame_word,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shmlog.core._core import ffi

from shmlog import errors
from shmlog.core.log import PartitionLog

# Child bodies run in a forked child, attach the region afresh (its own pid
# in the handle) and report over the pipe.

def _run_frontier(conn, name):
    p = PartitionLog.attach(name)
    c = p.new_cursor()
    conn.send(p.frontier(c))


# ------------------------------------------------------------ corruption

CORRUPTION_SIZES = (37, 333, 3333, 9, 77)


def _write_corruption_fixture(plog: PartitionLog):
    """40 batches (a third lz4) across two chunks; returns {offset: value}."""
    slot = plog.register_producer()
    expected = {}
    off = 0
    for k in range(40):
        n = 1 if k % 5 == 2 else 2 + k % 4
        vals = [value_of(off + j, CORRUPTION_SIZES[(off + j) % 5] if k % 5 != 2 else 3333)
                for j in range(n)]
        assert plog.append(slot, vals, compression="lz4" if k % 3 == 1 else None) == off
        expected.update((off + j, v) for j, v in enumerate(vals))
        off += n
    plog.release_producer(slot)
    assert plog.hdr.rotations in (1, 2)
    return expected


def _read_everything(conn, name):
    out = {"attach": None, "seek": None, "offsets": [], "values": [], "error": None}
    try:
        p = PartitionLog.attach(name)
    except errors.ShmlogError as e:
        out["attach"] = (type(e).__name__, str(e), e.code)
        conn.send(out)
        return
    reader = p.reader()
    c = p.new_cursor()
    out["seek"] = p.seek(c, 0)
    for _ in range(10_000):
        try:
            res = reader.read(c, 100_000)
        except errors.ShmlogError as e:
            out["error"] = (type(e).__name__, str(e), e.code)
            break
        if res is None:
            break
        out["offsets"] += res.offsets
        out["values"] += res.values
    else:
        out["error"] = ("endless", "", None)
    out["end"] = p.end_offset()
    out["claimed_end"] = p.claimed_end
    c2 = p.new_cursor()
    p.seek(c2, 0)
    out["wait"] = p.wait(c2, 0)
    p.close()
    conn.send(out)


def _part_header_targets():
    h = "shmlog_part_hdr_t"
    ch = ffi.sizeof("shmlog_chunk_t")
    t = [(ffi.offsetof(h, f), ffi.sizeof("uint64_t"))
         for f in ("magic", "region_bytes", "active_seq", "start_offset", "initial_offset")]
    t += [(ffi.offsetof(h, f), 4) for f in ("version", "header_bytes", "chunk_bytes",
                                           "chunk_count", "max_batch_bytes", "flags")]
    for i in range(4):
        for f in ("tail", "seq", "base_offset", "state", "seal"):
            t.append((ffi.offsetof(h, "chunks") + i * ch + ffi.offsetof("shmlog_chunk_t", f), 8))
    return t


def test_corruption_never_crashes_hangs_or_alters_data(shm_prefix):
    with new_log(shm_prefix) as plog:
        expected = _write_corruption_fixture(plog)
        fr = frames(plog)
        assert fr[-1][2] == len(expected)
        mm = plog.mapping
        snapshot = bytes(mm)
        targets = _part_header_targets()
        header_bytes = plog.c_log.header_bytes

        @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(where=st.sampled_from(["payload", "header", "slack", "frame_word",
                                      "hot_field", "anywhere_in_header"]),
               k=st.integers(0, len(fr) - 1), at=st.integers(0, 1 << 30),
               xor=st.integers(1, 255))
        def check(where, k, at, xor):
            pos, fb, end = fr[k]
            f = frame_hdr(plog, pos)
            base, payload = f.base_offset, f.payload_bytes
            if where == "payload":
                byte = pos + 64 + at % payload
            elif where == "header":
                byte = pos + 8 + at % 56
            elif where == "slack":
                slack = fb - 64 - payload
                if slack == 0:
                    return
                byte = pos + 64 + payload + at % slack
            elif where == "frame_word":
                byte = pos + at % 8
            elif where == "hot_field":
                off, size = targets[at % len(targets)]
                byte = off + (at >> 8) % size
            else:
                byte = at % header_bytes
            mm[byte] ^= xor
            try:
                with Child(_read_everything, plog.name) as ch:
                    out = ch.recv(10)  # a hang fails here
                    assert ch.join() == 0  # a segfault fails here
            finally:
                mm[:] = snapshot
            offsets, values, error = out["offsets"], out["values"], out["error"]
            # never altered: whatever is delivered is exactly what was written
            assert offsets == sorted(set(offsets))
            assert all(expected.get(o) == v for o, v in zip(offsets, values))
            assert error is None or error[0] in ("CorruptBatch", "OffsetOutOfRange"), error
            if out["attach"] is not None:
                assert where in ("hot_field", "anywhere_in_header")
                assert out["attach"][0] == "CorruptBatch" and out["attach"][2] == errno.EPROTO
                return
            if error is not None:
                assert plog.name in error[1]
            if where == "slack":
                assert error is None and offsets == sorted(expected)
            elif where in ("payload", "header"):
                # everything before the batch, then an error naming it
                assert offsets == list(range(base)), (where, k)
                assert error is not None and error[0] == "CorruptBatch" and error[2] == errno.EBADMSG
                if not (where == "header" and 16 <= (byte - pos) < 24):
                    assert f"at offset {base}:" in error[1]
            elif where == "frame_word":
                assert offsets[:base] == list(range(base))

        check()


def test_corrupt_frame_length_is_detected_not_skipped(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        for k in range(5):
            plog.append(slot, [value_of(k * 10 + j, 37) for j in range(10)])
        fr = frames(plog)
        pos1, fb1, _ = fr[1]
        w = frame_word(plog, pos1)
        ffi.cast("uint64_t *", plog.c_log.base + pos1)[0] = w + fr[2][1]  # swallow batch 2
        offsets = []
        with pytest.raises(errors.CorruptBatch):
            c = plog.new_cursor()
            reader = plog.reader()
            while True:
                res = reader.read(c, 1000)
                if res is None:
                    break
                offsets += res.offsets
        assert offsets == list(range(10))


def test_corrupt_base_offset_error_names_the_true_offset(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        for k in range(3):
            plog.append(slot, [value_of(k * 10 + j, 37) for j in range(10)])
        pos = frames(plog)[2][0]
        frame_hdr(plog, pos).base_offset = 1 << 56
        c = plog.new_cursor()
        reader = plog.reader()
        assert list(reader.read(c, 20).offsets) == list(range(20))
        with pytest.raises(errors.CorruptBatch, match="at offset 20:"):
            reader.read(c, 100)


def test_frontier_returns_on_a_corrupt_chunk_state(shm_prefix):
    with new_log(shm_prefix) as plog:
        slot = plog.register_producer()
        fill_until_rotation(plog, slot)
        plog.append(slot, [b"z" * 37] * 3)
        plog.hdr.chunks[1].state ^= 0x40
        # the reader is told (not hung) ...
        c = plog.new_cursor()
        with pytest.raises(errors.OffsetOutOfRange):
            read_all(plog, c)
        # ... and so must the reaper be (any answer, an error most naturally)
        with Child(_run_frontier, plog.name) as ch:
            try:
                rc, _seq, _pos = ch.recv(3)
            except TimeoutError:
                pytest.fail("shmlog_log_frontier hung on a corrupt chunk state")
            assert ch.join() == 0
        assert isinstance(rc, int)


@pytest.mark.parametrize("field,value", [
    ("magic", 0),
    ("magic", 0x31474F4C4D485301),
    ("version", 1),  # a region of the untagged frame words
    ("header_bytes", 4096),
    ("chunk_count", 1),
    ("chunk_count", 65),
    ("chunk_bytes", 65536 + 32),
    ("chunk_bytes", 2048),
    ("max_batch_bytes", 65536 + 64),  # a frame larger than a chunk
    ("max_batch_bytes", 64),
    ("region_bytes", 1),
    ("chunk_count+region_bytes", 8),  # self-consistent, but larger than the mapping
])
def test_attach_rejects_a_bad_header(shm_prefix, field, value):
    with new_log(shm_prefix) as plog:
        PartitionLog.attach(plog.name).close()  # the good header attaches
        h = plog.hdr
        if field == "region_bytes":
            h.region_bytes += value
        elif field == "chunk_count+region_bytes":
            h.chunk_count = value
            h.region_bytes = PartitionLog.region_bytes(plog.chunk_bytes, value)
        else:
            setattr(h, field, value)
        with pytest.raises(errors.CorruptBatch, match="bad magic, version or geometry") as ei:
            PartitionLog.attach(plog.name)
        assert ei.value.code == errno.EPROTO
        assert plog.name in str(ei.value)


def test_attach_rejects_a_region_smaller_than_a_header(shm_prefix):
    import posix_ipc

    name = f"{shm_prefix}-tiny"
    seg = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=100)
    seg.close_fd()
    try:
        with pytest.raises(errors.CorruptBatch, match="only 100 bytes"):
            PartitionLog.attach(name)
    finally:
        posix_ipc.unlink_shared_memory(name)


def test_attach_rejects_a_zeroed_region(shm_prefix):
    import posix_ipc

    name = f"{shm_prefix}-zero"
    size = PartitionLog.region_bytes(65536, 4)
    seg = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
    seg.close_fd()
    try:
        with pytest.raises(errors.CorruptBatch) as ei:
            PartitionLog.attach(name)
        assert ei.value.code == errno.EPROTO
    finally:
        posix_ipc.unlink_shared_memory(name)


def test_create_rejects_bad_geometry_and_leaves_no_segment(shm_prefix):
    for kw in ({"chunk_bytes": 65536 + 32}, {"chunk_count": 1}, {"chunk_count": 65},
               {"chunk_bytes": 65536, "max_batch_bytes": 65536 + 64},
               {"chunk_bytes": 65536, "max_batch_bytes": 40000 + 32}):
        with pytest.raises(errors.InvalidConfig, match="invalid geometry"):
            PartitionLog.create(f"{shm_prefix}-bad", **kw)
    # (the shm_prefix fixture fails the test if a segment was left behind)
