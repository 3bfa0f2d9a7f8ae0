"""The soak's client processes: producer, group member and replay reader.

Run as ``python -m shmlog.soak.worker KIND JSON``. Each incarnation appends
what it did to its own log file, one ``os.write`` per batch of lines, so a
SIGKILL loses at most a torn last line (the checker drops it). A worker
writes what it *knows*: a producer logs a message only after ``flush()``
returned and ``on_delivery`` named its offset; a member logs a commit only
after the coordinator acknowledged it. Anything later than the last line
is, for the checker, not acknowledged / not committed.

Line formats (space separated):

producer  ``A topic partition offset seq``      acknowledged
member    ``B t``                               a fetch started at monotonic t
          ``M topic partition offset ptag seq`` a message of that fetch
          ``C t topic partition offset``        commit acknowledged at t
          ``R t``                               a rebalance callback ran
          ``D wall json``                       no message for 5 s: [topic, partition,
                                                position, end offset] owned
all       ``G seconds``                         longest stall so far
          ``V kind topic partition offset ...`` a violation seen in-process
          ``E text``                            an error (figures, not violations)

A worker must never exit on an error that chaos causes (a lost supervisor, a
fenced member): it logs it and carries on, as an application would.
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, List

import shmlog
from shmlog import errors

PAD = b"abcdefghijklmnopqrstuvwxyz0123456789"


def make_value(tag: str, seq: int) -> bytes:
    """A value that proves its own integrity: prefix plus a seq-derived pad."""
    head = f"{tag}:{seq}:".encode()
    n = (seq * 7) % 61
    return head + (PAD * 2)[:n]


def parse_value(value: bytes):
    """(tag, seq) if value is exactly what make_value built, else None."""
    try:
        tag, seq_s, _ = value.split(b":", 2)
        seq = int(seq_s)
        tag_s = tag.decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return (tag_s, seq) if make_value(tag_s, seq) == value else None


class Log:
    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.lines: List[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        if self.lines:
            data = ("\n".join(self.lines) + "\n").encode()
            self.lines = []
            os.write(self.fd, data)


class Stall:
    """Longest gap between two moments of progress, while progress is expected."""

    def __init__(self, log: Log):
        self.log = log
        self.last = time.monotonic()
        self.worst = 0.0
        self.reported = 0.0
        self.beat = self.last
        self.diagnosed = False  # a long stall's state was logged ("D" line)

    def progress(self, now: float) -> None:
        self.worst = max(self.worst, now - self.last)
        self.last = now
        self.diagnosed = False

    def pause(self) -> None:
        self.last = time.monotonic()

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now - self.beat >= 1.0 and self.worst > self.reported:
            self.log.add(f"G {self.worst:.3f}")
            self.reported = self.worst
        if now - self.beat >= 1.0:
            self.beat = now


def _connect(a: Dict[str, Any]):
    return shmlog.connect(a["data_dir"], **a.get("broker", {}))


def run_producer(a: Dict[str, Any]) -> None:
    run = Path(a["run_dir"])
    tag = a["tag"]
    log = Log(run / f"prod-{tag}.log")
    stall = Stall(log)
    cluster = _connect(a)
    producer = cluster.producer(max_block_ms=a.get("max_block_ms", 30_000))
    topics: List[str] = a["topics"]
    per_round = max(1, int(a["rate"] * a["round_s"]))
    seq = 0
    stop = run / "stop-producers"
    while not stop.exists():
        t0 = time.monotonic()
        acked: List[tuple] = []

        def on_delivery(seq, err, md, _acked=acked):
            if err is None:
                _acked.append((md.topic, md.partition, md.offset, seq))

        try:
            for topic in topics:
                for _ in range(per_round):
                    producer.send(topic, make_value(tag, seq), on_delivery=partial(on_delivery, seq))
                    seq += 1
            # acknowledged = flush() returned: committed and visible (API.md);
            # with durable, also fsynced: what must survive a power loss
            producer.flush(timeout=a.get("max_block_ms", 30_000) / 1000, durable=a.get("durable", False))
            log.lines.extend(f"A {t} {p} {o} {s}" for t, p, o, s in acked)
        except errors.ShmlogError as exc:
            # what flush did not vouch for is not acknowledged, even if
            # on_delivery ran for some of it
            log.add(f"E {type(exc).__name__}: {str(exc)[:200]}")
        stall.progress(time.monotonic())
        stall.heartbeat()
        log.flush()
        left = a["round_s"] - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
            stall.pause()
    producer.close()
    cluster.close()
    log.add("Q")
    log.flush()


def _consume(consumer, log: Log, n: int):
    """consume(), or None after logging an error chaos caused (then back off a little)."""
    try:
        return consumer.consume(max_messages=n, timeout=0.5)
    except errors.ShmlogError as exc:
        log.add(f"E {type(exc).__name__}: {str(exc)[:200]}")
        log.flush()
        time.sleep(0.1)
        return None


def _diagnose(consumer) -> str:
    """What a member that gets nothing is holding: assignment, positions, ends."""
    try:
        tps = consumer.assignment()
        ends = consumer.end_offsets(tps)
        return json.dumps([[t, p, consumer.position(t, p), ends.get((t, p))] for t, p in tps])
    except Exception as exc:  # a diagnosis must never kill the worker
        return json.dumps(repr(exc))


def run_member(a: Dict[str, Any]) -> None:
    """A group member: consume, log what arrived, then commit and log that."""
    run = Path(a["run_dir"])
    tag = a["tag"]
    log = Log(run / f"mem-{a['group']}-{tag}.log")
    stall = Stall(log)
    cluster = _connect(a)

    def rebalanced(tps):
        log.add(f"R {time.monotonic():.6f}")

    consumer = cluster.consumer(a["topics"], group=a["group"], enable_auto_commit=False,
                                auto_offset_reset="earliest", on_assign=rebalanced, on_revoke=rebalanced)
    stop = run / "stop-consumers"
    quiet = run / "stop-producers"
    seen_first = False
    while not stop.exists():
        t = time.monotonic()
        msgs = _consume(consumer, log, 2000)
        if msgs is None:
            continue
        if msgs:
            log.add(f"B {t:.6f}")
            ends: Dict[tuple, int] = {}
            for m in msgs:
                pv = parse_value(bytes(m.value))
                if pv is None:
                    log.add(f"V altered {m.topic} {m.partition} {m.offset} {bytes(m.value)[:40]!r}")
                    continue
                log.add(f"M {m.topic} {m.partition} {m.offset} {pv[0]} {pv[1]}")
                ends[(m.topic, m.partition)] = m.offset + 1
            log.flush()  # what arrived is on record before it is committed
            try:
                consumer.commit(offsets=ends)
                now = time.monotonic()
                log.lines.extend(f"C {now:.6f} {tp[0]} {tp[1]} {o}" for tp, o in ends.items())
            except errors.ShmlogError as exc:
                log.add(f"E commit {type(exc).__name__}: {str(exc)[:200]}")
            if seen_first:
                stall.progress(time.monotonic())
            else:
                seen_first = True
                stall.pause()
        elif quiet.exists():
            stall.pause()  # no data expected any more: not a stall
        elif seen_first and time.monotonic() - stall.last > 5 and not stall.diagnosed:
            stall.diagnosed = True
            log.add(f"D {time.time():.3f} {_diagnose(consumer)}")
        stall.heartbeat()
        log.flush()
    consumer.close()
    cluster.close()
    log.add("Q")
    log.flush()


def run_reader(a: Dict[str, Any]) -> None:
    """A consumer without a group that replays the disk topic from offset 0
    (through the segment files once the shared-memory window moved on) and
    checks order and values in-process."""
    run = Path(a["run_dir"])
    tag = a["tag"]
    log = Log(run / f"reader-{tag}.log")
    stall = Stall(log)
    cluster = _connect(a)
    topic = a["topic"]
    consumer = cluster.consumer(topic, auto_offset_reset="earliest")
    consumer.seek_to_beginning()
    nxt: Dict[int, int] = {}
    stop = run / "stop-consumers"
    quiet = run / "stop-producers"
    last_p = 0.0
    while not stop.exists():
        msgs = _consume(consumer, log, 5000)
        if msgs is None:
            continue
        for m in msgs:
            prev = nxt.get(m.partition)
            if prev is not None and m.offset < prev:
                log.add(f"V order {topic} {m.partition} {m.offset} after {prev - 1}")
            if parse_value(bytes(m.value)) is None:
                log.add(f"V altered {topic} {m.partition} {m.offset}")
            nxt[m.partition] = m.offset + 1
        if msgs:
            stall.progress(time.monotonic())
        elif quiet.exists():
            stall.pause()
        now = time.monotonic()
        if now - last_p >= 0.5:
            log.lines.extend(f"P {topic} {p} {o}" for p, o in sorted(nxt.items()))
            last_p = now
        stall.heartbeat()
        log.flush()
    log.lines.extend(f"P {topic} {p} {o}" for p, o in sorted(nxt.items()))
    consumer.close()
    cluster.close()
    log.add("Q")
    log.flush()


KINDS = {"producer": run_producer, "member": run_member, "reader": run_reader}


def main(argv: List[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    KINDS[kind](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
