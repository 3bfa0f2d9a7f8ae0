"""Consumer-group benchmarks: rebalance time after a SIGKILL, and group
throughput against Redis Streams consumer groups.

    python -m bench.groups_bench              # full run
    python -m bench.groups_bench --quick      # a smoke run (seconds)
    python -m bench.groups_bench --out FILE   # also write the markdown table

1. Rebalance after SIGKILL: a group of 3 consumer processes on a 6-partition
   memory topic fed continuously by a producer process; one member is
   SIGKILLed; measured from just before the kill until the survivors have
   consumed a message from every partition the dead member owned ("resumed"),
   and until they got them (on_assign). Default settings (the supervisor
   sees the pid die; session_timeout_ms only matters for hung members).
   A fresh group per trial; p50/min/max over the trials.

2. Throughput: 2 producer processes -> a 4-partition memory topic -> one
   group of 2 consumer processes; 100-byte messages, send_batch of 600 and
   consume_batch; messages/s = N / (first producer start .. the group has all
   N). Redis Streams on the same shape when redis-server is installed: 4
   streams, pipelined XADD per batch of 600, XREADGROUP COUNT 600 over the 4
   streams + pipelined XACK per read, 1 group of 2 consumers.

Every process is forked ("fork"), bounded by a deadline, and killed if still
alive at the end; the supervisor is shut down and the data dir removed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

import shmlog

from .common import die_with_parent

CTX = mp.get_context("fork")
now_ns = time.monotonic_ns
SIZE = 100
BATCH = 600


def _flush_exit(q) -> None:
    """os._exit skips the queue's feeder thread: flush it first."""
    try:
        q.close()
        q.join_thread()
    finally:
        os._exit(0)


# ------------------------------------------------------------------ 1. rebalance
def _rb_producer(data_dir: str, topic: str, stop) -> None:
    die_with_parent()
    try:
        c = shmlog.connect(data_dir)
        p = c.producer()
        parts = c.describe_topic(topic).partitions
        values = [b"r" * SIZE] * 20
        while not stop.is_set():
            for q in parts:
                p.send_batch(topic, values, partition=q.partition)
            p.flush()
            time.sleep(0.002)
        p.close()
        c.close()
    finally:
        os._exit(0)


def _rb_member(data_dir: str, topic: str, group: str, events, stop) -> None:
    """Report ("assign", pid, tps, t) at on_assign and ("first", pid, tp, t) at
    the first message of each newly assigned partition, on this member's own
    pipe (a queue shared by all would have a writer lock that the SIGKILLed
    member can take to its grave)."""
    die_with_parent()
    try:
        c = shmlog.connect(data_dir)
        fresh = set()

        def on_assign(tps):
            t = now_ns()
            fresh.update(tps)
            events.send(("assign", os.getpid(), list(tps), t))

        k = c.consumer(topic, group=group, on_assign=on_assign)
        while not stop.is_set():
            b = k.consume_batch(max_messages=1000, timeout=0.05)
            if b is not None and (b.topic, b.partition) in fresh:
                fresh.discard((b.topic, b.partition))
                events.send(("first", os.getpid(), (b.topic, b.partition), now_ns()))
        k.close()
        c.close()
    except Exception:
        events.send(("error", os.getpid(), traceback.format_exc(), 0))
    finally:
        os._exit(0)


class _Trial:
    """Events of one rebalance trial, as the members report them."""

    def __init__(self, events: List[Any]):
        self.events = list(events)  # the read ends of the members' pipes
        self.firsts: Dict[Tuple[str, int], int] = {}
        self.assigned_at: Dict[Tuple[str, int], int] = {}
        self.after = 0  # after the kill: only the survivors' events from then on
        self.victim = 0

    def drain(self, timeout: float) -> None:
        for conn in mp.connection.wait(self.events, timeout):
            try:
                ev = conn.recv()
            except (EOFError, OSError):
                self.events.remove(conn)  # that member is gone
                continue
            self._event(*ev)

    def _event(self, kind: str, pid: int, x: Any, t: int) -> None:
        if kind == "error":
            raise RuntimeError(f"member {pid} failed:\n{x}")
        if self.after and (pid == self.victim or t < self.after):
            return  # queued before the kill, or the victim's own
        if kind == "assign":
            for tp in x:
                self.assigned_at[tuple(tp)] = t
        elif kind == "first":
            self.firsts[tuple(x)] = t


def rebalance_trials(data_dir: str, trials: int) -> Dict[str, Any]:
    c = shmlog.connect(data_dir)
    topic = "rebalance"
    c.create_topic(topic, partitions=6, storage="memory")
    stop_prod = CTX.Event()
    prod = CTX.Process(target=_rb_producer, args=(data_dir, topic, stop_prod), daemon=True)
    prod.start()
    resumed: List[float] = []
    assigned: List[float] = []
    try:
        for trial in range(trials):
            group = f"rb{trial}"
            stop = CTX.Event()
            pipes = [CTX.Pipe(duplex=False) for _ in range(3)]
            procs = [CTX.Process(target=_rb_member, args=(data_dir, topic, group, w, stop), daemon=True)
                     for _r, w in pipes]
            for p in procs:
                p.start()
            for _r, w in pipes:
                w.close()
            tr = _Trial([r for r, _w in pipes])
            firsts, assigned_at, drain = tr.firsts, tr.assigned_at, tr.drain
            deadline = time.monotonic() + 20
            # steady: every partition consumed, the group stable
            while time.monotonic() < deadline:
                drain(0.05)
                try:
                    d = c.describe_group(group)
                except shmlog.GroupError:
                    continue
                if d["state"] == "Stable" and len(d["members"]) == 3 and len(firsts) == 6:
                    break
            else:
                raise RuntimeError(f"trial {trial}: the group never settled")
            d = c.describe_group(group)
            victim = procs[trial % 3]
            lost = {tuple(tp) for m in d["members"] if m["pid"] == victim.pid for tp in m["assignment"]}
            firsts.clear()
            assigned_at.clear()
            t_kill = now_ns()
            tr.after, tr.victim = t_kill, victim.pid
            os.kill(victim.pid, signal.SIGKILL)
            # reap it at once, as a process manager would: the C core's
            # pid check takes a zombie's reader slot for a live reader, and
            # a memory topic's producers would wait on it (see the notes)
            victim.join(5)
            while time.monotonic() < deadline and not (lost <= set(firsts) and lost <= set(assigned_at)):
                drain(0.05)
            if not (lost <= set(firsts) and lost <= set(assigned_at)):
                d = c.describe_group(group)
                raise RuntimeError(
                    f"trial {trial}: partitions {sorted(lost - set(firsts))} never resumed (assigned: "
                    f"{sorted(lost & set(assigned_at))}); group {d['state']}, members "
                    f"{[(m['pid'], m['assignment'], m['target']) for m in d['members']]}; victim {victim.pid} "
                    f"exit {victim.exitcode}; see {data_dir}/supervisor.log")
            resumed.append((max(firsts[tp] for tp in lost) - t_kill) / 1e9)
            assigned.append((max(assigned_at[tp] for tp in lost) - t_kill) / 1e9)
            stop.set()
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join(5)
            for r, _w in pipes:
                r.close()
            c.delete_group(group)
            print(f"  trial {trial}: {len(lost)} partitions resumed on the survivors after "
                  f"{resumed[-1] * 1000:.0f} ms (assigned after {assigned[-1] * 1000:.0f} ms)", flush=True)
    finally:
        stop_prod.set()
        prod.join(10)
        if prod.is_alive():
            prod.kill()
        c.close()
    return {"trials": trials, "resumed_p50": statistics.median(resumed), "resumed_min": min(resumed),
            "resumed_max": max(resumed), "assigned_p50": statistics.median(assigned)}


# ------------------------------------------------------------------ 2. throughput
class _Sides:
    """What a system gives the throughput runner (opened in the child)."""

    def producer(self, k: int):  # -> (send_batch(values), close())
        raise NotImplementedError

    def consumer(self, m: int):  # -> (ready(), recv_batch() -> int, close())
        raise NotImplementedError


class ShmlogSides(_Sides):
    def __init__(self, data_dir: str, topic: str, group: str, members: int):
        self.data_dir, self.topic, self.group, self.members = data_dir, topic, group, members

    def producer(self, k):
        c = shmlog.connect(self.data_dir)
        p = c.producer()
        topic = self.topic

        def send(values):
            p.send_batch(topic, values)

        def close():
            p.flush()
            p.close()
            c.close()
        return send, close

    def consumer(self, m):
        c = shmlog.connect(self.data_dir)
        k = c.consumer(self.topic, group=self.group)
        parts = c.describe_topic(self.topic).partitions
        share = len(parts) // self.members
        pending = []

        def ready():
            deadline = time.monotonic() + 20
            while len(k.assignment()) != share and time.monotonic() < deadline:
                b = k.consume_batch(max_messages=1, timeout=0.05)
                if b is not None:
                    pending.append(len(b))

        def recv():
            if pending:
                return pending.pop()
            b = k.consume_batch(max_messages=4 * BATCH, timeout=0.1)
            return 0 if b is None else len(b)

        def close():
            k.close()
            c.close()
        return ready, recv, close


class ShmlogManualSides(ShmlogSides):
    """The same shape without a group: each consumer assigned its half of the
    partitions by hand (the baseline the group's cost is measured against)."""

    def consumer(self, m):
        c = shmlog.connect(self.data_dir)
        n = len(c.describe_topic(self.topic).partitions)
        k = c.consumer([])
        k.assign([(self.topic, p) for p in range(n) if p % self.members == m])

        def recv():
            b = k.consume_batch(max_messages=4 * BATCH, timeout=0.1)
            return 0 if b is None else len(b)

        def close():
            k.close()
            c.close()
        return (lambda: None), recv, close


class RedisSides(_Sides):
    def __init__(self, sock: str, streams: int, group: str):
        self.sock, self.streams, self.group = sock, streams, group

    def _r(self):
        import redis

        return redis.Redis(unix_socket_path=self.sock, socket_timeout=30)

    def producer(self, k):
        r = self._r()
        keys = [f"s{i}" for i in range(self.streams)]
        state = {"j": k}

        def send(values):
            key = keys[state["j"] % len(keys)]
            state["j"] += 1
            pipe = r.pipeline(transaction=False)
            for v in values:
                pipe.execute_command("XADD", key, "*", "v", v)
            pipe.execute()
        return send, r.close

    def consumer(self, m):
        r = self._r()
        streams = {f"s{i}": ">" for i in range(self.streams)}
        name = f"c{m}"

        def recv():
            resp = r.xreadgroup(self.group, name, streams, count=BATCH, block=100)
            n = 0
            pipe = None
            for stream, entries in resp or []:
                if entries:
                    n += len(entries)
                    pipe = pipe or r.pipeline(transaction=False)
                    pipe.xack(stream, self.group, *[eid for eid, _ in entries])
            if pipe is not None:
                pipe.execute()
            return n
        return (lambda: None), recv, r.close


def _tp_producer(sides: _Sides, k: int, n: int, barrier, out, deadline_ns: int) -> None:
    die_with_parent()
    try:
        send, close = sides.producer(k)
        values = [b"\x5a" * SIZE] * BATCH
        barrier.wait(30)
        t0 = now_ns()
        sent = 0
        while sent < n and now_ns() < deadline_ns:
            m = min(BATCH, n - sent)
            send(values if m == BATCH else values[:m])
            sent += m
        close()
        out.put(("producer", k, t0, sent))
    except Exception:
        out.put(("error", k, traceback.format_exc(), 0))
    finally:
        _flush_exit(out)


def _tp_consumer(sides: _Sides, m: int, n_total: int, counters, lasts, barrier, out, deadline_ns: int) -> None:
    die_with_parent()
    try:
        ready, recv, close = sides.consumer(m)
        ready()
        barrier.wait(30)
        mine = counters[m]
        last = lasts[m]
        got = 0
        while now_ns() < deadline_ns:
            k = recv()
            if k:
                got += k
                mine.value = got
                last.value = now_ns()
            if sum(c.value for c in counters) >= n_total:
                break
        close()
        out.put(("consumer", m, last.value, got))
    except Exception:
        out.put(("error", m, traceback.format_exc(), 0))
    finally:
        _flush_exit(out)


def throughput(sides: _Sides, n: int, producers: int = 2, members: int = 2, limit_s: float = 120) -> Dict[str, Any]:
    per = n // producers
    n = per * producers
    deadline = now_ns() + int(limit_s * 1e9)
    barrier = CTX.Barrier(producers + members)
    out = CTX.Queue()
    counters = [CTX.Value("q", 0, lock=False) for _ in range(members)]
    lasts = [CTX.Value("q", 0, lock=False) for _ in range(members)]
    procs = [CTX.Process(target=_tp_consumer, args=(sides, m, n, counters, lasts, barrier, out, deadline),
                         daemon=True) for m in range(members)]
    procs += [CTX.Process(target=_tp_producer, args=(sides, k, per, barrier, out, deadline), daemon=True)
              for k in range(producers)]
    for p in procs:
        p.start()
    results = []
    try:
        while len(results) < len(procs):
            left = (deadline - now_ns()) / 1e9 + 10
            if left <= 0:
                raise RuntimeError("throughput run timed out")
            r = out.get(timeout=left)
            if r[0] == "error":
                raise RuntimeError(f"a process failed:\n{r[2]}")
            results.append(r)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    t0 = min(r[2] for r in results if r[0] == "producer")
    t1 = max(r[2] for r in results if r[0] == "consumer")
    got = sum(r[3] for r in results if r[0] == "consumer")
    if got < n:
        raise RuntimeError(f"the group received {got} of {n} messages before the time limit")
    secs = (t1 - t0) / 1e9
    return {"n": n, "seconds": secs, "rate": n / secs,
            "per_member": [r[3] for r in sorted(results) if r[0] == "consumer"]}


def shmlog_throughput(data_dir: str, n: int, *, group: bool = True) -> Dict[str, Any]:
    c = shmlog.connect(data_dir)
    topic = "tput" if group else "tput-manual"
    try:
        c.create_topic(topic, partitions=4, storage="memory")
        sides = ShmlogSides if group else ShmlogManualSides
        return throughput(sides(data_dir, topic, "tput-group", 2), n)
    finally:
        c.close()


def redis_throughput(n: int) -> Dict[str, Any]:
    exe = shutil.which("redis-server")
    if not exe:
        raise _Skip("redis-server is not installed (scripts/install-peers.sh)")
    try:
        import redis
    except ImportError:
        raise _Skip("redis-py is not installed (pip install redis)") from None
    d = tempfile.mkdtemp(prefix="shmlog-groups-bench-redis-")
    sock = os.path.join(d, "redis.sock")
    log = open(os.path.join(d, "redis.log"), "wb")
    srv = subprocess.Popen([exe, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--dir", d,
                            "--save", "", "--appendonly", "no", "--daemonize", "no"],
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        r = redis.Redis(unix_socket_path=sock)
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except Exception:
                if time.monotonic() > deadline or srv.poll() is not None:
                    raise _Skip("redis-server did not start") from None
                time.sleep(0.05)
        for i in range(4):
            r.xgroup_create(f"s{i}", "g", id="0", mkstream=True)
        r.close()
        return throughput(RedisSides(sock, 4, "g"), n)
    finally:
        srv.terminate()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait(5)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


class _Skip(Exception):
    pass


# ------------------------------------------------------------------ main
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, 5 trials (a smoke run)")
    ap.add_argument("--trials", type=int, default=None, help="rebalance trials (>= 5)")
    ap.add_argument("--n", type=int, default=None, help="messages in the throughput run")
    ap.add_argument("--redis-n", type=int, default=None, help="messages in the Redis run")
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args(argv)
    trials = max(args.trials or (5 if args.quick else 7), 5)
    n = args.n or (600_000 if args.quick else 12_000_000)
    redis_n = args.redis_n or (120_000 if args.quick else 1_200_000)
    rows = []
    tmp = tempfile.mkdtemp(prefix="shmlog-groups-bench-")
    data_dir = os.path.join(tmp, "data")
    keeper = shmlog.connect(data_dir)  # holds the auto-started supervisor
    try:
        print(f"rebalance after SIGKILL: {trials} trials, 3 members, 6 partitions", flush=True)
        rb = rebalance_trials(data_dir, trials)
        rows.append(("rebalance after SIGKILL (3 -> 2 members, 6 partitions)",
                     f"p50 {rb['resumed_p50'] * 1000:.0f} ms to resume (min {rb['resumed_min'] * 1000:.0f}, "
                     f"max {rb['resumed_max'] * 1000:.0f}; assigned p50 {rb['assigned_p50'] * 1000:.0f} ms), "
                     f"{rb['trials']} trials", "<= 1500 ms"))
        print(f"shmlog group throughput: {n} messages", flush=True)
        tp = shmlog_throughput(data_dir, n)
        rows.append(("shmlog: 2 producers -> 4 partitions (memory) -> group of 2",
                     f"{tp['rate'] / 1e6:.2f} M msg/s ({tp['n']} msgs in {tp['seconds']:.2f} s; "
                     f"per member {tp['per_member']})", ">= 5 M/s"))
        print(f"shmlog, same shape without a group (manual assign): {n} messages", flush=True)
        base = shmlog_throughput(data_dir, n, group=False)
        rows.append(("shmlog baseline: same, 2 consumers with manual assign (no group)",
                     f"{base['rate'] / 1e6:.2f} M msg/s ({base['n']} msgs in {base['seconds']:.2f} s)", "-"))
    except BaseException:
        keeper.shutdown()
        print(f"(kept {data_dir} for its supervisor.log)", file=sys.stderr)
        raise
    keeper.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"redis streams group throughput: {redis_n} messages", flush=True)
    try:
        rd = redis_throughput(redis_n)
        rows.append(("redis streams: XADD pipelines -> 4 streams -> XREADGROUP/XACK group of 2",
                     f"{rd['rate'] / 1e6:.3f} M msg/s ({rd['n']} msgs in {rd['seconds']:.2f} s)", "-"))
    except _Skip as exc:
        rows.append(("redis streams: consumer group", f"skipped: {exc}", "-"))
    cpu = os.cpu_count()
    table = ["| benchmark | result | target |", "|---|---|---|"]
    table += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = (f"### Consumer groups ({cpu} CPUs, Python {sys.version.split()[0]}, "
            f"100-byte messages, batches of {BATCH})\n\n" + "\n".join(table) + "\n")
    print()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
