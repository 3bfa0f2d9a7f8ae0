"""`shmlog demo`: a small real pipeline on one data dir, verified end to end.

Two producer processes emit keyed synthetic events (event id, send time,
producer id, key) into a 4-partition topic; a consumer group of two worker
processes aggregates them (counts per key, latency from send to processing)
while the parent shows throughput, lag and buffer fill. When time is up (or
on Ctrl-C) the producers stop, the workers drain to the end offsets and send
back which ids they saw, and the parent checks that every id arrived exactly
once. If consumer groups are not available the workers fall back to manual
assignment of two partitions each, and say so.

The demo must leave nothing running: it joins every child, and shuts the
supervisor down if it was the one that started it.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_mod
import random
import signal
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .. import errors
from .common import add_common

# event id, send time (CLOCK_MONOTONIC ns: the same clock in every process of
# the host), producer id, key index
EVENT = struct.Struct("<QqHH")
NUM_KEYS = 16
KEYS = [f"user-{i:02d}".encode() for i in range(NUM_KEYS)]
GROUP = "demo-workers"
PARTITIONS = 4
PRODUCERS = 2
WORKERS = 2
BATCH = 256


# ---------------------------------------------------------------- latency
def bucket(us: int) -> int:
    """Log-linear bucket of a latency in microseconds: exact below 64 us,
    then 32 buckets per power of two (about 3% wide)."""
    if us < 64:
        return us if us > 0 else 0
    e = us.bit_length() - 6
    return 64 + (e - 1) * 32 + ((us >> e) - 32)


def bucket_bounds(b: int) -> Tuple[int, int]:
    if b < 64:
        return b, b + 1
    e = (b - 64) // 32 + 1
    mant = (b - 64) % 32 + 32
    return mant << e, (mant + 1) << e


def percentile_us(hist: Dict[int, int], q: float) -> Optional[float]:
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            lo, hi = bucket_bounds(b)
            return (lo + hi) / 2
    lo, hi = bucket_bounds(max(hist))
    return (lo + hi) / 2


# ---------------------------------------------------------------- children
def _quiet_child() -> None:
    # Ctrl-C is the parent's to handle: it stops the children in order
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def producer_main(data_dir: str, topic: str, index: int, rate: float, stop, results) -> None:
    _quiet_child()
    from ..client.cluster import connect

    sent = 0
    try:
        with connect(data_dir, start=False) as cluster:
            with cluster.producer(linger_ms=1, max_block_ms=30_000) as producer:
                results.put(("producer-ready", index, None))
                rng = random.Random(index)
                # throttled: about one batch a millisecond, so a batch's events
                # share a send time that is close to their real one
                batch = BATCH if rate <= 0 else max(1, min(BATCH, int(rate / 1000)))
                pack = EVENT.pack
                mono = time.monotonic_ns
                keys_range = range(NUM_KEYS)
                t0 = time.monotonic()
                while not stop.is_set():
                    ks = rng.choices(keys_range, k=batch)
                    now = mono()
                    values = [pack(sent + i, now, index, k) for i, k in enumerate(ks)]
                    producer.send_batch(topic, values, keys=[KEYS[k] for k in ks])
                    sent += batch
                    if rate > 0:
                        ahead = sent / rate - (time.monotonic() - t0)
                        if ahead > 0:
                            stop.wait(ahead)
                producer.flush()
        results.put(("producer-done", index, {"sent": sent}))
    except BaseException as exc:  # reported; the parent fails the run
        results.put(("producer-error", index, f"{type(exc).__name__}: {exc} (after {sent} events)"))


def worker_main(data_dir: str, topic: str, index: int, generation: int, mode: str,
                partitions: List[int], drain, abort, results) -> None:
    _quiet_child()
    from ..client.cluster import connect

    def put(kind: str, payload: Any) -> None:
        results.put((kind, (generation, index), payload))

    try:
        cluster = connect(data_dir, start=False)
    except BaseException as exc:
        put("worker-error", f"{type(exc).__name__}: {exc}")
        return
    consumer = None
    try:
        assignments = [0]

        def on_assign(tps):
            assignments[0] += 1

        if mode == "group":
            try:
                consumer = cluster.consumer(topic, group=GROUP, auto_offset_reset="earliest",
                                            on_assign=on_assign)
            except BaseException as exc:
                put("join-failed", f"{type(exc).__name__}: {exc}")
                return
        else:
            consumer = cluster.consumer([], auto_offset_reset="earliest")
            consumer.assign([(topic, p) for p in partitions])
            consumer.seek_to_beginning()

        seen = [bytearray() for _ in range(PRODUCERS)]
        dups = 0
        malformed = 0
        counts = [0] * NUM_KEYS
        hist: Counter = Counter()
        processed = 0
        poll_errors = 0
        last_report = 0.0
        unpack = EVENT.iter_unpack
        size = EVENT.size
        mono = time.monotonic_ns
        draining_since = None
        while not abort.is_set():
            try:
                batch = consumer.consume_batch(max_messages=4096, timeout=0.05)
            except errors.Closed:
                raise
            except errors.ShmlogError as exc:
                poll_errors += 1
                if poll_errors == 1:
                    put("warning", f"poll failed: {exc}")
                time.sleep(0.05)
                continue
            if batch is not None:
                values = batch.values
                data = b"".join(values)
                if len(data) != size * len(values):
                    good = [v for v in values if len(v) == size]
                    malformed += len(values) - len(good)
                    data = b"".join(good)
                now = mono()
                lats = []
                for eid, ts, prod, k in unpack(data):
                    if prod >= PRODUCERS or k >= NUM_KEYS:
                        malformed += 1
                        continue
                    s = seen[prod]
                    if eid >= len(s):
                        s.extend(bytes(max(eid + 1 - len(s), 1 << 16)))
                    if s[eid]:
                        dups += 1
                    else:
                        s[eid] = 1
                    counts[k] += 1
                    lats.append((now - ts) // 1000)
                hist.update(map(bucket, lats))
                processed += len(values)
            t = time.monotonic()
            if t - last_report >= 0.2 or batch is None:
                last_report = t
                put("progress", {"processed": processed,
                                 "positions": {p: consumer.position(tp, p) for tp, p in consumer.assignment()},
                                 "assignment": [p for _, p in consumer.assignment()],
                                 "rebalances": assignments[0]})
            if drain.is_set() and batch is None:
                # producers have flushed: the end offsets are final
                if draining_since is None:
                    draining_since = t
                ends = consumer.end_offsets()
                if all(consumer.position(*tp) >= end for tp, end in ends.items()):
                    break
        if abort.is_set():
            return
        if mode == "group":
            try:
                consumer.commit()
            except errors.ShmlogError:
                pass
        put("worker-done", {"processed": processed, "dups": dups, "malformed": malformed,
                            "seen": [bytes(s) for s in seen], "counts": counts, "hist": dict(hist),
                            "assignment": [p for _, p in consumer.assignment()],
                            "rebalances": assignments[0]})
    except BaseException as exc:
        put("worker-error", f"{type(exc).__name__}: {exc}")
    finally:
        try:
            if consumer is not None:
                consumer.close()
        finally:
            cluster.close()


# ---------------------------------------------------------------- parent
class _Display:
    """A progress line refreshed in place on a TTY, plain lines otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._open = False

    def progress(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def say(self, line: str = "") -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(line + "\n")
        self.stream.flush()


def _supervisor_answers(data_dir: Path) -> bool:
    from ..client.cluster import connect

    try:
        c = connect(data_dir, start=False)
    except errors.BrokerNotRunning:
        return False
    c.close()
    return True


class _Run:
    def __init__(self, args, cluster, display: _Display):
        self.args = args
        self.cluster = cluster
        self.out = display
        self.topic = args.topic
        self.data_dir = str(cluster.data_dir)
        self.ctx = multiprocessing.get_context("spawn")
        self.results = self.ctx.Queue()
        self.stop_producers = self.ctx.Event()
        self.drain = self.ctx.Event()
        self.abort = self.ctx.Event()
        self.producers: List[Any] = []
        self.workers: List[Any] = []
        self.generation = 0
        self.mode = "group"
        self.fallback_reason: Optional[str] = None
        self.progress: Dict[int, Dict[str, Any]] = {}
        self.producer_done: Dict[int, Dict[str, Any]] = {}
        self.worker_done: Dict[int, Dict[str, Any]] = {}
        self.failures: List[str] = []
        self.warnings: List[str] = []
        self.ready_producers = set()

    # -- children -------------------------------------------------------
    def _start(self, target, args, name):
        # children start with SIGINT ignored (kept across exec), so a Ctrl-C
        # during their start-up cannot kill them half way
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            p = self.ctx.Process(target=target, args=args, name=name, daemon=False)
            p.start()
        finally:
            signal.signal(signal.SIGINT, old)
        return p

    def start_workers(self, mode: str) -> None:
        self.generation += 1
        self.mode = mode
        self.abort = self.ctx.Event()
        self.progress = {}
        self.workers = []
        for i in range(WORKERS):
            parts = list(range(i * PARTITIONS // WORKERS, (i + 1) * PARTITIONS // WORKERS))
            self.workers.append(self._start(worker_main, (self.data_dir, self.topic, i, self.generation, mode, parts,
                                                          self.drain, self.abort, self.results),
                                            f"shmlog-demo-worker-{i}"))

    def start_producers(self) -> None:
        for i in range(PRODUCERS):
            self.producers.append(self._start(producer_main, (self.data_dir, self.topic, i, self.args.rate,
                                                              self.stop_producers, self.results),
                                              f"shmlog-demo-producer-{i}"))

    def pump(self, timeout: float) -> None:
        """Handle what the children sent, waiting up to timeout for the first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                kind, who, payload = self.results.get(timeout=max(0.0, left)) if left > 0 \
                    else self.results.get_nowait()
            except queue_mod.Empty:
                return
            if isinstance(who, tuple):
                gen, idx = who
                if gen != self.generation:
                    continue  # a worker of an abandoned attempt
            else:
                idx = who
            if kind == "progress":
                self.progress[idx] = payload
            elif kind == "worker-done":
                self.worker_done[idx] = payload
            elif kind == "producer-ready":
                self.ready_producers.add(idx)
            elif kind == "producer-done":
                self.producer_done[idx] = payload
            elif kind == "join-failed":
                if self.fallback_reason is None:
                    self.fallback_reason = f"joining group {GROUP!r} failed: {payload}"
            elif kind == "warning":
                self.warnings.append(f"worker {idx}: {payload}")
            elif kind in ("worker-error", "producer-error"):
                self.failures.append(f"{kind.split('-')[0]} {idx}: {payload}")

    def assignment_complete(self) -> bool:
        owned: List[int] = []
        for i in range(WORKERS):
            pr = self.progress.get(i)
            if pr is None:
                return False
            owned += pr["assignment"]
        return sorted(owned) == list(range(PARTITIONS))

    def wait_assignment(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        stable_since = None
        last = None
        while time.monotonic() < deadline:
            self.pump(0.1)
            if self.failures or (self.mode == "group" and self.fallback_reason):
                return False
            if any(not w.is_alive() for w in self.workers):
                self.pump(0.2)
                return False
            if self.assignment_complete():
                now_assign = tuple(tuple(self.progress[i]["assignment"]) for i in range(WORKERS))
                if now_assign != last:
                    last, stable_since = now_assign, time.monotonic()
                elif time.monotonic() - stable_since >= (0.5 if self.mode == "group" else 0.0):
                    return True
        return False

    def _join(self, procs: List[Any], timeout: float) -> None:
        # keep reading the queue meanwhile: a child cannot exit before what
        # it put there has been taken off the pipe
        deadline = time.monotonic() + timeout
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            self.pump(0.05)
            for p in procs:
                p.join(0)

    def stop_workers(self, timeout: float = 10.0) -> None:
        self.abort.set()
        self._join(self.workers, timeout)
        for w in self.workers:
            if w.is_alive():
                w.kill()
                w.join()

    def join_all(self, timeout: float = 10.0) -> None:
        self._join(self.producers + self.workers, timeout)
        for p in self.producers + self.workers:
            if p.is_alive():
                p.kill()
                p.join()
                self.failures.append(f"{p.name} (pid {p.pid}) did not exit and was killed")

    # -- display --------------------------------------------------------
    def snapshot(self) -> Dict[str, Any]:
        info = self.cluster.describe_topic(self.topic)
        ends = {p.partition: p.end_offset for p in info.partitions}
        # held, not in use: consumed chunks stay in use as retention until
        # a producer needs them; held ones are what producers would wait on
        used = sum(p.extra.get("chunks_held", 0) for p in info.partitions)
        total = sum(p.extra.get("chunk_count", 0) for p in info.partitions) or 1
        positions: Dict[int, int] = {}
        for pr in self.progress.values():
            for p, pos in pr["positions"].items():
                positions[int(p)] = max(pos, positions.get(int(p), 0))
        lag = sum(max(0, end - positions.get(p, 0)) for p, end in ends.items())
        consumed = sum(pr["processed"] for pr in self.progress.values())
        return {"produced": sum(ends.values()), "consumed": consumed, "lag": lag, "fill": used / total,
                "used": used, "total": total, "t": time.monotonic()}


def run(args) -> int:
    out = _Display()
    data_dir = Path(args.data_dir)
    no_start = bool(getattr(args, "no_start", False))
    if args.seconds <= 0:
        raise errors.InvalidConfig(f"--seconds must be > 0, got {args.seconds}")
    was_running = _supervisor_answers(data_dir)
    from ..client.cluster import connect

    cluster = connect(data_dir, start=not no_start)
    started_here = not was_running
    r = _Run(args, cluster, out)
    try:
        return _run(r, started_here)
    finally:
        r.abort.set()
        r.stop_producers.set()
        r.drain.set()
        r.join_all(timeout=10)
        if started_here:
            cluster.shutdown()
        else:
            cluster.close()


def _run(r: _Run, started_here: bool) -> int:
    args, cluster, out, topic = r.args, r.cluster, r.out, r.topic
    # a fresh topic each run: offsets start at 0 and every id is checkable
    try:
        cluster.delete_topic(topic)
    except errors.UnknownTopic:
        pass
    cluster.create_topic(topic, partitions=PARTITIONS, storage=args.storage, chunk_bytes=1 << 20, chunk_count=4)
    sup = "started by the demo" if started_here else "already running"
    out.say(f"shmlog demo — data dir {cluster.data_dir} (supervisor pid {cluster.supervisor_pid}, {sup})")
    out.say(f"topic {topic}: {PARTITIONS} partitions, storage={args.storage}, 4 x 1 MiB shared-memory chunks each")

    # committed offsets of an earlier run point into the old topic
    for forget in (lambda: cluster.delete_group(GROUP),
                   lambda: cluster.reset_offsets(GROUP, topic, to="earliest")):
        try:
            forget()
        except errors.ShmlogError:
            pass
    ok = False
    if r.fallback_reason is None:
        r.start_workers("group")
        ok = r.wait_assignment(20.0)
        if not ok:
            if r.fallback_reason is None:
                r.fallback_reason = (r.failures.pop() if r.failures else
                                     f"group {GROUP!r} did not assign all {PARTITIONS} partitions within 20s")
            r.stop_workers()
    if not ok:
        out.say(f"consumer groups unavailable ({r.fallback_reason}): "
                f"falling back to {WORKERS} workers with manual assignment of "
                f"{PARTITIONS // WORKERS} partitions each")
        r.start_workers("manual")
        if not r.wait_assignment(30.0):
            raise errors.ShmlogError("demo workers did not start: " + ("; ".join(r.failures) or "timed out"))
    assign = " | ".join(",".join(f"p{p}" for p in r.progress[i]["assignment"]) for i in range(WORKERS))
    who = f"group {GROUP!r}" if r.mode == "group" else "manual assignment"
    r.start_producers()
    deadline = time.monotonic() + 30
    while len(r.ready_producers) < PRODUCERS and time.monotonic() < deadline and not r.failures:
        r.pump(0.1)
    if r.failures:
        raise errors.ShmlogError("demo producers failed: " + "; ".join(r.failures))
    out.say(f"{PRODUCERS} producers (pids {', '.join(str(p.pid) for p in r.producers)}) -> {WORKERS} workers "
            f"(pids {', '.join(str(w.pid) for w in r.workers)}), {who}: {assign}")
    out.say(f"running for {args.seconds:g}s (Ctrl-C stops early)")

    tick = 0.25 if out.tty else 1.0
    t_start = time.monotonic()
    prev = r.snapshot()
    prev["t"] = t_start
    interrupted = False
    try:
        while True:
            now = time.monotonic()
            if now - t_start >= args.seconds:
                break
            r.pump(min(tick, max(0.0, prev["t"] + tick - now)))
            if r.failures:
                break
            now = time.monotonic()
            if now - prev["t"] >= tick:
                s = r.snapshot()
                dt = s["t"] - prev["t"]
                out.progress(_line(now - t_start, s, (s["produced"] - prev["produced"]) / dt,
                                   (s["consumed"] - prev["consumed"]) / dt))
                prev = s
    except KeyboardInterrupt:
        interrupted = True
    produce_seconds = time.monotonic() - t_start
    if interrupted:
        out.say(f"interrupted after {produce_seconds:.1f}s: stopping")

    # stop the producers, then let the workers drain to the final end offsets
    r.stop_producers.set()
    try:
        deadline = time.monotonic() + 60
        while len(r.producer_done) + sum(f.startswith("producer") for f in r.failures) < PRODUCERS \
                and time.monotonic() < deadline:
            r.pump(0.1)
        r._join(r.producers, max(0.0, deadline - time.monotonic()))
        end_produce = time.monotonic()
        r.drain.set()
        deadline = time.monotonic() + 60
        last_line = 0.0
        while len(r.worker_done) + sum(f.startswith("worker") for f in r.failures) < WORKERS \
                and time.monotonic() < deadline:
            r.pump(0.1)
            if time.monotonic() - last_line >= 1.0:
                last_line = time.monotonic()
                s = r.snapshot()
                out.progress(_line(s["t"] - t_start, s, 0.0, None, "draining"))
        end_consume = time.monotonic()
    except KeyboardInterrupt:
        r.failures.append("interrupted again while draining")
        return _summary(r, produce_seconds, produce_seconds, produce_seconds)
    r.join_all(timeout=10)
    return _summary(r, produce_seconds, end_produce - t_start, end_consume - t_start)


def _line(elapsed: float, s: Dict[str, Any], rate_in: float, rate_out: Optional[float],
          label: str = "") -> str:
    out_rate = "" if rate_out is None else f" ({rate_out:,.0f}/s)"
    return (f"{elapsed:5.1f}s {label + ' ' if label else ''}produced {s['produced']:,} ({rate_in:,.0f}/s)  "
            f"consumed {s['consumed']:,}{out_rate}  lag {s['lag']:,}  "
            f"buffer {s['used']}/{s['total']} chunks ({s['fill']:.0%})")


def verify(sent: Dict[int, int], seen_by_worker: List[List[bytes]], local_dups: int
           ) -> Tuple[int, int, int]:
    """(missing, duplicated, unexpected) over all producers' ids.

    Each worker reports, per producer, a byte per id (1 = seen); two workers
    that both saw an id are a duplicate, an id nobody saw is missing."""
    missing = 0
    dups = local_dups
    unexpected = 0
    for prod, n in sent.items():
        union = 0
        for seen in seen_by_worker:
            s = seen[prod] if prod < len(seen) else b""
            extra = s[n:]
            unexpected += extra.count(1)
            bits = int.from_bytes(s[:n], "little")
            dups += bin(union & bits).count("1")
            union |= bits
        missing += n - bin(union).count("1")
    for seen in seen_by_worker:
        for prod in range(len(seen)):
            if prod not in sent:
                unexpected += seen[prod].count(1)
    return missing, dups, unexpected


def _summary(r: _Run, produce_seconds: float, produced_by: float, consumed_by: float) -> int:
    out = r.out
    sent = {i: d["sent"] for i, d in r.producer_done.items()}
    total_sent = sum(sent.values())
    done = [r.worker_done[i] for i in sorted(r.worker_done)]
    processed = sum(d["processed"] for d in done)
    hist: Dict[int, int] = Counter()
    counts = [0] * NUM_KEYS
    for d in done:
        hist.update({int(k): v for k, v in d["hist"].items()})
        for k, c in enumerate(d["counts"]):
            counts[k] += c
    try:
        end_total = sum(p.end_offset for p in r.cluster.describe_topic(r.topic).partitions)
    except errors.ShmlogError:
        end_total = None
    missing, dups, unexpected = verify(sent, [d["seen"] for d in done], sum(d["dups"] for d in done))
    malformed = sum(d["malformed"] for d in done)
    problems = list(r.failures)
    if len(sent) < PRODUCERS:
        problems.append(f"only {len(sent)} of {PRODUCERS} producers reported")
    if len(done) < WORKERS:
        problems.append(f"only {len(done)} of {WORKERS} workers reported")
    if missing:
        problems.append(f"{missing:,} events missing")
    if dups:
        problems.append(f"{dups:,} events delivered more than once")
    if unexpected:
        problems.append(f"{unexpected:,} events with ids that were never sent")
    if malformed:
        problems.append(f"{malformed:,} malformed events")
    if end_total is not None and end_total != total_sent:
        problems.append(f"the topic's end offsets add up to {end_total:,}, the producers sent {total_sent:,}")
    if not total_sent and not problems:
        problems.append("no events were produced")

    out.say()
    out.say("summary")
    out.say(f"  messages   {total_sent:,} produced by {len(sent)} producers, {processed:,} processed by "
            f"{len(done)} workers")
    rate = total_sent / produce_seconds if produce_seconds > 0 else 0.0
    out.say(f"  rate       {rate:,.0f} msg/s over {produce_seconds:.1f}s "
            f"(all consumed {max(0.0, consumed_by - produced_by):.2f}s after the producers stopped)")
    p50, p99, pmax = percentile_us(hist, 0.5), percentile_us(hist, 0.99), percentile_us(hist, 1.0)
    if p50 is not None:
        out.say(f"  latency    p50 {p50 / 1000:.3f} ms, p99 {p99 / 1000:.3f} ms, max {pmax / 1000:.1f} ms "
                f"(send -> processed by a worker)")
    if any(counts):
        top = sorted(range(NUM_KEYS), key=lambda k: -counts[k])[:3]
        out.say(f"  keys       {sum(1 for c in counts if c)} keys, {min(counts):,}..{max(counts):,} events each; "
                f"top: " + ", ".join(f"{KEYS[k].decode()} {counts[k]:,}" for k in top))
    if r.mode == "group":
        rebalances = max((d.get("rebalances", 0) for d in done), default=0)
        parts = " | ".join(",".join(f"p{p}" for p in d["assignment"]) for d in done)
        moved = "no rebalance during the run" if rebalances <= 1 else f"{rebalances - 1} rebalance(s) during the run"
        out.say(f"  consumers  group {GROUP!r}: {parts} ({moved})")
    else:
        out.say(f"  consumers  manual assignment, {PARTITIONS // WORKERS} partitions per worker "
                f"(consumer groups unavailable: {r.fallback_reason})")
    for w in r.warnings[:3]:
        out.say(f"  warning    {w}")
    if problems:
        out.say("  verified   NO: " + "; ".join(problems))
        print(f"shmlog demo: verification failed: {'; '.join(problems)}", file=sys.stderr)
        return 1
    out.say(f"  verified   yes: every one of {total_sent:,} event ids arrived exactly once "
            f"(0 missing, 0 duplicated)")
    return 0


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("demo", "a small real pipeline: 2 producer processes, a group of 2 workers, verified")
    add_common(p, json_flag=False)
    p.add_argument("--seconds", type=float, default=10.0, help="how long to produce (default 10)")
    p.add_argument("--topic", default="demo-events")
    p.add_argument("--rate", type=float, default=100_000,
                   help="events/sec per producer (default 100000; 0: as fast as possible, which fills "
                        "the buffer so latency becomes queueing time)")
    p.add_argument("--storage", choices=["memory", "disk"], default="memory",
                   help="topic storage (default memory: the buffer is the log, producers feel backpressure)")
    p.set_defaults(func=run)
