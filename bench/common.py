"""What every system and workload of the suite shares: parameters, results,
the process runner, the generic producer/consumer loops, machine facts.

Rules the runner enforces for every system alike:

* the producer(s) and consumer(s) are separate processes, started with the
  multiprocessing *fork* context; the parent only sets up, waits and reports;
* every process first opens its endpoint, then all meet at a barrier, so
  nobody is measured while connecting or mapping;
* a warm-up of ``warm`` messages goes end to end before a second barrier;
  the clock starts after it (warm-up excluded), in the producer, just before
  its first timed send, and stops in the consumer after its last receive;
  both read ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every
  process of the host);
* every loop is bounded by a count *and* an absolute deadline; a process
  past the deadline stops and reports what it did (the row says so), and the
  parent kills anything still alive a few seconds after it.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import multiprocessing.connection
import os
import platform
import queue
import signal
import struct
import sys
import time
import traceback
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

now_ns = time.monotonic_ns
CTX = mp.get_context("fork")

KIB = 1024
MIB = 1024 * 1024

SMALL = 100  # bytes, W1/W2/W4/W5/W6/W7
LARGE = 64 * KIB  # bytes, W3
BATCH = 600  # records per batch in every batch mode (~64 KiB of 100-byte records)
LARGE_BATCH = 8  # 64 KiB records per batch (512 KiB) in W3's batch mode
BUFFER_BYTES = 64 * MIB  # the in-flight budget every bounded queue gets (shmlog: 4 x 16 MiB)
# W4, shmlog's latency-tuned consumer: spin this long before a futex sleep
# (10x the paced gap, so a producer's hiccup does not put it to sleep)
LATENCY_SPIN_US = 1000.0

LAT_STAMP = struct.Struct("<q")


def payloads(size: int, count: int) -> List[bytes]:
    """`count` distinct values of `size` bytes (distinct objects and contents,
    so no serializer can send one and reference it `count` times)."""
    filler = b"\x5a" * size
    return [(i.to_bytes(8, "little") + filler)[:size] for i in range(count)]


class Skip(Exception):
    """A system or workload cannot run here; the message says why."""


# --------------------------------------------------------------- parameters
@dataclass
class Params:
    """Counts and limits of one suite run (same for every system)."""

    quick: bool
    w1_n: int
    w2_n: int
    w3_n: int
    w4_n: int
    w4_rate: int
    w5_n: int
    w6_n: int
    w7_n: int
    w7_partitions: Tuple[int, ...]
    w7_producers: Tuple[int, ...]
    crc_reps: int
    warm_frac: float
    run_limit_s: float  # wall-clock limit of one run (one system, one mode)

    def warm(self, n: int, batch: int = 1) -> int:
        w = max(int(n * self.warm_frac), batch)
        return -(-w // batch) * batch  # whole batches


def params(quick: bool) -> Params:
    if quick:
        return Params(
            quick=True, w1_n=2_000, w2_n=12_000, w3_n=64, w4_n=400, w4_rate=10_000,
            w5_n=6_000, w6_n=4_800, w7_n=14_400, w7_partitions=(1, 16),
            w7_producers=(1, 2), crc_reps=2, warm_frac=0.1, run_limit_s=15.0,
        )
    return Params(
        quick=False, w1_n=1_000_000, w2_n=3_600_000, w3_n=16_000, w4_n=20_000,
        w4_rate=10_000, w5_n=600_000, w6_n=240_000, w7_n=2_400_000,
        w7_partitions=(1, 16, 256, 1000), w7_producers=(1, 2, 4), crc_reps=20,
        warm_frac=0.05, run_limit_s=30.0,
    )


# ------------------------------------------------------------------ results
@dataclass
class Row:
    workload: str
    system: str
    mode: str = ""
    procs: str = ""
    status: str = "ok"  # ok | skip | error | timeout
    n: int = 0  # messages in the timed phase
    size: int = 0  # bytes per message
    seconds: float = 0.0
    rate: float = 0.0  # messages per second (delivered)
    gbps: float = 0.0  # payload GB/s (1e9 bytes)
    lat: Dict[str, float] = field(default_factory=dict)  # p50/p99/p999/max in us
    extra: Dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def ok(self) -> bool:
        """Has a figure ("partial": the run hit its time limit; the figure
        covers the messages that made it, and the row says so)."""
        return self.status in ("ok", "partial")


def throughput_row(row: Row, n: int, size: int, t0: int, t1: int) -> Row:
    row.n = n
    row.size = size
    row.seconds = max(t1 - t0, 1) / 1e9
    row.rate = n / row.seconds
    row.gbps = n * size / row.seconds / 1e9
    return row


def latency_stats(samples_ns: Sequence[int]) -> Dict[str, float]:
    s = sorted(samples_ns)
    if not s:
        return {}

    def pct(p: float) -> float:
        i = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
        return s[i] / 1e3

    return {"p50": pct(50), "p99": pct(99), "p99.9": pct(99.9), "max": s[-1] / 1e3,
            "mean": sum(s) / len(s) / 1e3}


# ---------------------------------------------------------- process runner
@dataclass
class Proc:
    """One child process of a run: fn(*args, ctl=Ctl) -> dict."""

    role: str
    fn: Callable[..., Dict[str, Any]]
    args: tuple = ()


class Ctl:
    """What a child gets from the runner: the barrier and the deadline."""

    def __init__(self, barrier, deadline_ns: int, role: str):
        self.barrier = barrier
        self.deadline_ns = deadline_ns
        self.role = role

    def meet(self) -> None:
        left = max((self.deadline_ns - now_ns()) / 1e9, 0.05)
        self.barrier.wait(timeout=left)

    def expired(self) -> bool:
        return now_ns() >= self.deadline_ns

    def left_s(self) -> float:
        return max((self.deadline_ns - now_ns()) / 1e9, 0.0)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent dies
    (PR_SET_PDEATHSIG), so a suite killed by a signal, or crashed, leaves
    nothing running. Also usable as a Popen preexec_fn."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)
    except Exception:
        pass


def _child(conn, fn, args, ctl: Ctl) -> None:
    # a parent killed by a signal must not leave us running: die with it
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # what a forked worker should do (Python's gc docs, "prefork"): the
    # objects inherited from the suite's parent go to the permanent
    # generation, so the collector does not walk them on every full pass
    # while the run measures the system. Same for every system.
    gc.freeze()
    try:
        out = fn(*args, ctl=ctl)
        conn.send(("ok", out))
    except BaseException as exc:  # report anything, including Skip
        try:
            ctl.barrier.abort()
        except Exception:
            pass
        kind = "skip" if isinstance(exc, Skip) else "error"
        conn.send((kind, f"{type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=6)))
    finally:
        conn.close()
        # skip atexit handlers and inherited finalizers (servers, temp dirs)
        # of the parent: this process only ran fn
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run_procs(procs: List[Proc], limit_s: float) -> List[Tuple[str, Any]]:
    """Fork every proc, wait for all (bounded), return [(status, result)].

    status is "ok" (result is fn's dict), "error"/"skip" (result is text) or
    "timeout". Children still alive after the limit plus grace are killed."""
    deadline = now_ns() + int(limit_s * 1e9)
    barrier = CTX.Barrier(len(procs))
    children = []
    for p in procs:
        r, w = CTX.Pipe(duplex=False)
        ctl = Ctl(barrier, deadline, p.role)
        proc = CTX.Process(target=_child, args=(w, p.fn, p.args, ctl), name=f"bench-{p.role}",
                           daemon=True)
        proc.start()
        w.close()
        children.append((proc, r))
    results: List[Tuple[str, Any]] = [("timeout", "no result before the time limit")] * len(procs)
    hard = deadline + int(5e9)
    pending = set(range(len(children)))
    while pending and now_ns() < hard:
        # one blocking wait on every pipe: the parent must not wake up every
        # few ms during a run (each wakeup preempts a measured process on a
        # 2-core host)
        ready = mp.connection.wait([children[i][1] for i in pending],
                                   timeout=min(max((hard - now_ns()) / 1e9, 0.0), 1.0))
        for i in list(pending):
            proc, r = children[i]
            if r not in ready:
                continue
            try:
                results[i] = r.recv()
            except (EOFError, OSError):
                results[i] = ("error", f"{procs[i].role} died (exit code {proc.exitcode})")
            pending.discard(i)
    for proc, r in children:
        proc.join(timeout=max((hard - now_ns()) / 1e9, 0.5))
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
        r.close()
    return results


def collect(row: Row, results: List[Tuple[str, Any]], partial_ok: bool = False
            ) -> Optional[List[Dict[str, Any]]]:
    """Fill row.status/note from failed results; the dicts if all went well
    (or, with partial_ok, if every process stopped cleanly at the time limit:
    row.status is then "partial")."""
    bad = [(s, r) for s, r in results if s != "ok"]
    if bad:
        s, r = bad[0]
        row.status = s
        row.note = (r if isinstance(r, str) else str(r)).strip().splitlines()[0][:300]
        if s == "error":
            print(f"    error detail:\n{r}", file=sys.stderr)
        return None
    outs = [r for _, r in results]
    if any(o.get("timed_out") for o in outs):
        got = max((o.get("received", 0) for o in outs), default=0)
        if partial_ok and got > 0:
            row.status = "partial"
            row.note = (f"time-limited: stopped at the run's time limit after {got:,} messages; "
                        f"the figure covers those")
            return outs
        row.status = "timeout"
        row.note = f"stopped at the time limit ({got} messages received)"
        return None
    return outs


# ------------------------------------------------- generic loops (sync APIs)
class Endpoint:
    """What a sync system hands the generic loops (opened in the child).

    send and recv may be replaced by plain callables set on the instance
    (the loops only call ep.send(value) / ep.recv(timeout)): adapters bind
    the system's own call where they can, e.g. functools.partial(q.put,
    block=True), so a per-message figure measures the system, not a layer of
    adapter methods. Every adapter is held to that."""

    def send(self, value: bytes) -> None:  # per message
        raise NotImplementedError

    def send_batch(self, values: List[bytes]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def ready(self) -> None:
        """Consumer side: be subscribed / joined before anyone produces."""

    def recv(self, timeout: float) -> Optional[bytes]:  # one value or None
        raise NotImplementedError

    def recv_batch(self, max_n: int, timeout: float) -> List[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def produce(open_ep: Callable[[], Endpoint], mode: str, n: int, warm: int, size: int,
            batch: int, *, ctl: Ctl) -> Dict[str, Any]:
    ep = open_ep()
    try:
        pool = payloads(size, batch if mode.startswith("batch") else 64)
        ctl.meet()  # everyone is open
        _send(ep, mode, warm, pool, ctl)
        ep.flush()
        ctl.meet()  # the consumer has the warm-up
        t0 = now_ns()
        sent = _send(ep, mode, n, pool, ctl)
        ep.flush()
        t_end = now_ns()
        return {"t0": t0, "t_end": t_end, "sent": sent, "timed_out": sent < n}
    finally:
        ep.close()


def _send(ep: Endpoint, mode: str, n: int, pool: List[bytes], ctl: Ctl) -> int:
    sent = 0
    m = len(pool)
    if mode.startswith("batch"):
        while sent < n:
            if ctl.expired():
                break
            k = min(m, n - sent)
            ep.send_batch(pool if k == m else pool[:k])
            sent += k
    else:
        send = ep.send
        while sent < n:
            if ctl.expired():
                break
            k = min(m, n - sent)
            for v in pool[:k] if k < m else pool:
                send(v)
            sent += k
    return sent


def consume(open_ep: Callable[[], Endpoint], mode: str, n: int, warm: int, size: int,
            batch: int, *, ctl: Ctl) -> Dict[str, Any]:
    ep = open_ep()
    try:
        ep.ready()
        ctl.meet()
        got_w, _ = _recv(ep, mode, warm, size, batch, ctl)
        ctl.meet()
        cpu0, w0 = time.process_time(), now_ns()
        got, t1 = _recv(ep, mode, n, size, batch, ctl)
        return {"t1": t1, "received": got, "warm": got_w, "timed_out": got < n,
                "cpu": cpu_share(cpu0, w0)}
    finally:
        ep.close()


def _recv(ep: Endpoint, mode: str, n: int, size: int, batch: int, ctl: Ctl) -> Tuple[int, int]:
    got = 0
    bad = 0
    if mode.startswith("batch"):
        while got < n:
            vs = ep.recv_batch(batch, 0.2)
            if vs:
                got += len(vs)
                if len(vs[-1]) != size:
                    bad += 1
            if ctl.expired():
                break
    else:
        recv = ep.recv
        last = None
        while got < n:
            v = recv(0.2)
            if v is not None:
                got += 1
                last = v
                if got & 1023 or not ctl.expired():
                    continue
                break
            if ctl.expired():
                break
        if last is not None and len(last) != size:
            bad += 1
    t = now_ns()
    if bad:
        raise RuntimeError(f"received values of the wrong size ({bad} batches)")
    return got, t


class Pacer:
    """W4's schedule, shared by every paced producer: iterating meets the
    other processes, then waits for each send's slot (warm+n of them at
    `rate`/s) and yields the message to send at once, stamped with
    monotonic_ns; it stops early once ctl expires. result() says how many
    went out and how many came >1 ms after their slot."""

    def __init__(self, n: int, warm: int, size: int, rate: int, ctl: Ctl):
        self.total = warm + n
        self.size = size
        self.rate = rate
        self.ctl = ctl
        self.sent = 0
        self.late = 0

    def __iter__(self) -> Iterator[bytes]:
        pad = b"\0" * (self.size - LAT_STAMP.size)
        pack = LAT_STAMP.pack
        fine_timer_slack()
        self.ctl.meet()
        period = 1e9 / self.rate
        start = now_ns() + 1_000_000
        for i in range(self.total):
            target = start + int(i * period)
            if pace_until(target) - target > 1_000_000:
                self.late += 1
            yield pack(now_ns()) + pad
            self.sent = i + 1
            if (self.sent & 255) == 0 and self.ctl.expired():
                return

    def result(self) -> Dict[str, Any]:
        return {"sent": self.sent, "late_sends": self.late, "timed_out": self.sent < self.total}


def produce_paced(open_ep: Callable[[], Endpoint], n: int, warm: int, size: int, rate: int, *,
                  ctl: Ctl) -> Dict[str, Any]:
    """Send warm+n messages at `rate`/s, each stamped with monotonic_ns."""
    ep = open_ep()
    try:
        pacer = Pacer(n, warm, size, rate, ctl)
        send = ep.send
        for msg in pacer:
            send(msg)
        ep.flush()
        return pacer.result()
    finally:
        ep.close()


def fine_timer_slack() -> None:
    """Let this process's short sleeps end on time (PR_SET_TIMERSLACK 1 us)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)
    except Exception:
        pass


def pace_until(target: int) -> int:
    """Wait until monotonic_ns() >= target: sleep most of the gap, then yield
    (os.sched_yield releases the GIL and the CPU, so a paced producer does
    not starve the consumer, a server, or a client's own I/O thread of the
    2 cores).

    Not time.sleep(0): that is a zero-length clock_nanosleep, which arms a
    timer, and on this VM programming the timer exits to the hypervisor;
    the send right after a 60 us spin of those cost 2.7 us (p50) against
    1.1 us after a spin of sched_yield and 0.9 us after a pure busy-wait
    (append_one, one process, no reader). Every system's producer paces
    with this function."""
    t = now_ns()
    while t < target:
        left = target - t
        if left > 70_000:
            time.sleep((left - 60_000) / 1e9)
        else:
            os.sched_yield()
        t = now_ns()
    return t


def consume_latency(open_ep: Callable[[], Endpoint], n: int, warm: int, *, ctl: Ctl) -> Dict[str, Any]:
    ep = open_ep()
    try:
        ep.ready()
        lat = array("q")
        unpack = LAT_STAMP.unpack_from
        ctl.meet()
        total = warm + n
        got = 0
        recv = ep.recv
        cpu0 = w0 = None
        while got < total:
            v = recv(0.2)
            if v is None:
                if ctl.expired():
                    break
                continue
            t = now_ns()
            got += 1
            if got > warm:
                lat.append(t - unpack(v)[0])
            elif got == warm:
                cpu0, w0 = time.process_time(), now_ns()
            if t >= ctl.deadline_ns:
                break
        return {"received": got, "lat": lat.tobytes(), "timed_out": got < total,
                "cpu": cpu_share(cpu0, w0) if cpu0 is not None else None}
    finally:
        ep.close()


def cpu_share(cpu0: float, wall0_ns: int) -> float:
    """CPU this process used since (process_time, monotonic_ns), as a share
    of one core: what a consumer's wait costs (a busy-polling one shows ~1)."""
    wall = (now_ns() - wall0_ns) / 1e9
    return (time.process_time() - cpu0) / wall if wall > 0 else 0.0


# ----------------------------------------------------------- machine facts
def machine() -> Dict[str, str]:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / MIB:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0] + " (" + platform.python_implementation() + ")",
        "clock": time.get_clock_info("monotonic").implementation,
    }


def proc_mem() -> Dict[str, int]:
    """This process's peak RSS and shared-memory RSS (kB from /proc, as bytes)."""
    out = {}
    try:
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssShmem", "RssAnon"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def drain_queue(q) -> None:
    try:
        while True:
            q.get_nowait()
    except (queue.Empty, OSError, ValueError):
        pass


# ------------------------------------------------ W6: producers and groups
def group_producer(open_ep: Callable[[int], Endpoint], k: int, n: int, size: int, batch: int, *,
                   ctl: Ctl) -> Dict[str, Any]:
    """Producer k of W6: n values in batches (the endpoint spreads them over
    the partitions)."""
    ep = open_ep(k)
    try:
        values = payloads(size, batch)
        ctl.meet()
        t0 = now_ns()
        sent = 0
        while sent < n and not ctl.expired():
            m = min(batch, n - sent)
            ep.send_batch(values if m == batch else values[:m])
            sent += m
        ep.flush()
        return {"t0": t0, "t_end": now_ns(), "sent": sent, "timed_out": sent < n}
    finally:
        ep.close()


def group_consumer(open_ep: Callable[[int, int], Endpoint], g: int, m: int, n_total: int,
                   counter, batch: int, *, ctl: Ctl) -> Dict[str, Any]:
    """Member m of group g of W6: consume until the group as a whole has
    n_total messages (counter is the group's shared count)."""
    ep = open_ep(g, m)
    try:
        ep.ready()  # join the group / subscribe before anyone produces
        ctl.meet()
        mine = 0
        t_done = 0
        while counter.value < n_total:
            vs = ep.recv_batch(batch, 0.1)
            if vs:
                mine += len(vs)
                with counter.get_lock():
                    counter.value += len(vs)
                    total = counter.value
                if total >= n_total:
                    t_done = now_ns()
                    break
            if ctl.expired():
                break
        return {"t_done": t_done, "received": mine, "group": g,
                "timed_out": counter.value < n_total}
    finally:
        ep.close()


def run_groups(row: Row, open_prod, open_cons, n: int, size: int, batch: int, producers: int,
               groups: int, members: int, limit_s: float) -> Row:
    """W6 skeleton: `producers` procs, `groups` groups of `members` procs;
    rate = n / (first producer start .. last group complete)."""
    per = n // producers
    n = per * producers
    counters = [CTX.Value("q", 0) for _ in range(groups)]
    procs = [Proc(f"consumer-g{g}-m{m}", group_consumer,
                  (open_cons, g, m, n, counters[g], batch))
             for g in range(groups) for m in range(members)]
    procs += [Proc(f"producer{k}", group_producer, (open_prod, k, per, size, batch))
              for k in range(producers)]
    row.procs = (f"{producers} producer procs -> {groups} groups x {members} consumer procs "
                 f"({len(procs)} processes)")
    res = run_procs(procs, limit_s)
    outs = collect(row, res)
    if outs is None:
        return row
    cons = outs[: groups * members]
    prods = outs[groups * members:]
    t0 = min(o["t0"] for o in prods)
    done = [max(o["t_done"] for o in cons if o["group"] == g) for g in range(groups)]
    throughput_row(row, n, size, t0, max(done))
    row.extra["per_group"] = [c.value for c in counters]
    row.extra["members_received"] = [o["received"] for o in cons]
    return row


# ------------------------------------------------------- host interference
def cpu_snapshot() -> Tuple[float, float, float]:
    """(wall s, CPU-seconds busy on the whole host, CPU-seconds used by this
    process and all its descendants, live or reaped)."""
    hz = os.sysconf("SC_CLK_TCK")
    busy = 0.0
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: steal is time the
        # hypervisor gave to someone else, so it counts as interference
        busy = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / hz
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    ours = t.user + t.system + t.children_user + t.children_system
    try:
        import psutil

        for c in psutil.Process().children(recursive=True):
            try:
                ct = c.cpu_times()
                ours += ct.user + ct.system
            except psutil.Error:
                pass
    except ImportError:
        pass
    return time.monotonic(), busy, ours


def foreign_cpu(a: Tuple[float, float, float], b: Tuple[float, float, float]) -> float:
    """Share of the host's CPUs used by processes that are not ours between
    two snapshots (0..1)."""
    wall = b[0] - a[0]
    if wall <= 0:
        return 0.0
    other = (b[1] - a[1]) - (b[2] - a[2])
    return max(0.0, other / (wall * (os.cpu_count() or 1)))
