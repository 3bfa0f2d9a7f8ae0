"""Segment-file fuzzer (run in a child process by shmlog.soak.fuzz).

A real segment (written by a real supervisor) is the template. Each round
corrupts a copy (bit flips, overwritten runs, zeroed runs, a cut tail,
duplicated or spliced ranges, a scrambled index) and runs every reader of
segment files over it: the recovery scan (scan_segment), `shmlog dump`'s
walk (dump_segment) and the consumer's SegmentReader. Allowed outcomes: the
original records, or a ShmlogError. A record served that differs from the
template at its offset is a violation, and so is any other exception.
"""

from __future__ import annotations

import os
import random
import shutil
import traceback
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .. import errors
from ..core.segment_dump import check_segment
from ..core.segments import SegmentStore, scan_segment, segment_bases

TOPIC = "f"


def _read_all(store: SegmentStore, start: int, limit: int = 100_000) -> Tuple[List[tuple], str]:
    """Every (offset, key, value) the reader serves from start, and how it stopped."""
    out: List[tuple] = []
    r = store.reader(TOPIC, 0, start)
    if r is None:
        return out, "none"
    try:
        for _ in range(limit):
            res = r.read(1000)
            if res is None:
                return out, "end"
            out.extend(zip(res.offsets, res.keys, res.values))
        return out, "loop"  # the reader never reached an end: a hang in the making
    except errors.ShmlogError as exc:
        return out, type(exc).__name__
    finally:
        r.close()


def _mutate(rng: random.Random, data: bytearray) -> str:
    n = len(data)
    kind = rng.choice(["flip", "run", "zero", "cut", "dup", "splice", "word"])
    if n == 0:
        return "empty"
    a = rng.randrange(n)
    if kind == "flip":
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "run":
        ln = min(rng.randrange(1, 200), n - a)
        data[a:a + ln] = os.urandom(ln)
    elif kind == "zero":
        ln = min(rng.randrange(1, 4096), n - a)
        data[a:a + ln] = bytes(ln)
    elif kind == "cut":
        del data[a:]
    elif kind == "dup":
        b = rng.randrange(a, min(n, a + 8192) + 1)
        data[b:b] = data[a:b]
    elif kind == "splice":
        data[a:a] = os.urandom(rng.randrange(1, 300))
    else:
        # a frame header word (64-byte aligned): length, offsets, counts
        i = (a // 64) * 64 + rng.choice([0, 4, 8, 16, 24, 32, 40, 48, 56])
        if i + 8 <= n:
            data[i:i + 8] = rng.choice([b"\xff" * 8, bytes(8), os.urandom(8),
                                        (rng.randrange(1 << 40)).to_bytes(8, "little")])
    return kind


def fuzz_segments(template: str, work: str, seed: int, batches: int) -> Dict[str, Any]:
    tdir = Path(template)
    base = segment_bases(tdir)[0]
    log_path = tdir / f"{base:020d}.log"
    orig_log = log_path.read_bytes()
    orig_idx = log_path.with_suffix(".index").read_bytes()
    per_file, bad = check_segment(log_path)
    assert per_file > 0 and bad == 0, f"template {log_path} has {bad} bad batches of {per_file}"
    wdir = Path(work) / "topics" / TOPIC / "0"
    wdir.mkdir(parents=True, exist_ok=True)
    store = SegmentStore(Path(work))
    wlog = wdir / log_path.name
    widx = wlog.with_suffix(".index")
    wlog.write_bytes(orig_log)
    widx.write_bytes(orig_idx)
    truth_list, how = _read_all(store, base)
    assert how == "end", how
    truth = {o: (k, v) for o, k, v in truth_list}
    # half the rounds the fuzzed segment is the newest (a bad tail may be a
    # frame being written: the reader stops); half it is followed by another
    # (a bad frame is corruption: CorruptBatch)
    nxt = wdir / f"{max(truth) + 1:020d}.log"
    rng = random.Random(seed)
    fig: Dict[str, Any] = {"rounds": 0, "batches": 0, "kinds": {}, "stops": {}, "truncated_rounds": 0,
                           "violations": []}
    while fig["batches"] < batches:
        data = bytearray(orig_log)
        kinds = [_mutate(rng, data) for _ in range(rng.randrange(1, 4))]
        idx = bytearray(orig_idx)
        if rng.random() < 0.2:
            _mutate(rng, idx)
        wlog.write_bytes(data)
        widx.write_bytes(idx)
        if rng.random() < 0.5:
            nxt.write_bytes(b"")
        elif nxt.exists():
            nxt.unlink()
        for k in kinds:
            fig["kinds"][k] = fig["kinds"].get(k, 0) + 1
        try:
            res = scan_segment(wlog, base)
            if res.valid_end < len(data):
                fig["truncated_rounds"] += 1
            check_segment(wlog)
            for start in (base, rng.choice(list(truth) or [base])):
                served, how = _read_all(store, start)
                fig["stops"][how] = fig["stops"].get(how, 0) + 1
                if how == "loop":
                    fig["violations"].append(f"seed {seed} round {fig['rounds']}: reader never ended ({kinds})")
                offsets = [o for o, _k, _v in served]
                if any(b <= a for a, b in zip(offsets, offsets[1:])):
                    fig["violations"].append(f"seed {seed} round {fig['rounds']}: offsets served out of "
                                             f"order or twice ({kinds})")
                for o, k, v in served:
                    if truth.get(o) != (k, v):
                        fig["violations"].append(
                            f"seed {seed} round {fig['rounds']}: served offset {o} = {v[:20]!r}, "
                            f"not what was written ({kinds})")
                        break
            # recovery keeps [0, valid_end): that prefix must read back whole
            if res.valid_end < len(data):
                cut = bytes(data[:res.valid_end])
                wlog.write_bytes(cut)
                served, how = _read_all(store, base)
                if [o for o, _k, _v in served] != [o for o in sorted(truth) if o < res.end_offset]:
                    fig["violations"].append(f"seed {seed} round {fig['rounds']}: the recovered prefix "
                                             f"(up to offset {res.end_offset}) does not read back ({how})")
        except errors.ShmlogError:
            fig["stops"]["ShmlogError"] = fig["stops"].get("ShmlogError", 0) + 1
        except Exception:
            fig["violations"].append(f"seed {seed} round {fig['rounds']} ({kinds}): {traceback.format_exc()[-600:]}")
        fig["rounds"] += 1
        fig["batches"] += per_file
        if len(fig["violations"]) >= 20:
            break
    shutil.rmtree(Path(work) / "topics", ignore_errors=True)
    fig["valid_batches"] = per_file
    fig["batches_per_file"] = per_file
    return fig
