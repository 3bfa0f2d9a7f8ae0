"""When the producer commits: the timing rules send() and the keyed queue
share (lone commits for a waiting reader, streams that batch), and the
partition header words they read without a crossing.
"""

from __future__ import annotations

import time

from ..core._core import ffi, lib

# upper bound of the per-record framing (length, attributes, deltas, key and
# value lengths, header count) for records up to a few MiB
_RECORD_OVERHEAD = 16
# with linger_ms=0 and a reader waiting, commit at once, but not more often
# than this: paced sends go out one by one, bursts still batch
HUNGRY_GAP = 50e-6
# ... unless the last commit already carried a stream (STREAM_BATCH messages
# or more): then a reader is kept busy anyway, and batches of ~4x the size
# cost a quarter of the per-commit overhead on both sides
STREAM_GAP = 200e-6
STREAM_BATCH = 8
# ... and a paced producer's bursts (catching up after the host stalled it)
# skip the gap: up to HUNGRY_BURST lone commits at once, refilled at
# HUNGRY_RATE a second. A stream (send() at ~2 M/s) spends them in its first
# ~15 us and batches from then on; a 10k msg/s producer never runs out, so
# none of its messages waits for the flusher thread (a thread wake-up
# costs more than the paced message's whole trip: bench/README.md, W4).
HUNGRY_BURST = 32.0
HUNGRY_RATE = 20_000.0
# A lone message with no reader waiting goes at once (on the budget above)
# if the last commit is at least this old: a paced producer's catch-up burst
# sends every ~1.5-2 us and gets its messages out one by one (a reader busy
# with the previous message finds the next one committed, not waiting for
# the flusher thread); a stream's send() comes ~0.4 us after a commit and
# keeps batching (a stream whose every batch goes out alone pays the
# per-commit cost once per message: bench/README.md, W1).
LONE_AFTER = 1e-6
# the keyed queue holds up to this many partitions' batch_bytes
KQ_SPREAD = 16
_clock = time.perf_counter
# header words read through a memoryview (no crossing, no cffi attribute)
_HDR_FLAGS = ffi.offsetof("shmlog_part_hdr_t", "flags") // 4
_HDR_HUNGRY = ffi.offsetof("shmlog_part_hdr_t", "data_hungry") // 4  # a reader waits here
_HDR_BELL_HUNGRY = ffi.offsetof("shmlog_part_hdr_t", "bell_hungry") // 4  # ... or on the doorbell
_F_CLOSED = lib.SHMLOG_F_CLOSED


def next_sticky(st, p: int) -> None:
    """After partition p's batch filled: the sticky partition moves on, and
    the next one is part of the same stream. Without the mark its first
    sends would find it idle (its last commit a whole round of partitions
    ago, its lone-commit budget refilled) and go out one per commit, each
    to a partition whose header is cold: at hundreds of partitions most of
    a stream's commits would carry a message or two."""
    q = st.sticky = (p + 1) % st.nparts
    due = _clock() + STREAM_GAP
    if st.next_hungry[q] < due:
        st.next_hungry[q] = due
