"""The systems the suite measures: shmlog (public API and core level) and its
peers. Each module holds one system; each system says which workloads and
modes it can run and skips the others with a reason."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple, Union

from ..common import (
    BATCH,
    Endpoint,
    Params,
    Proc,
    Row,
    Skip,
    collect,
    consume,
    consume_latency,
    latency_stats,
    produce,
    produce_paced,
    run_procs,
    throughput_row,
)


@dataclass
class Spec:
    """One run: a workload, a mode, sizes and counts."""

    wid: str
    mode: str  # "msg" (per-message API) | "batch"
    size: int
    n: int
    warm: int
    batch: int = BATCH
    durable: bool = False
    rate: int = 0  # W4: messages per second
    spin_us: Union[float, str, None] = None  # W4, shmlog: spin before the futex wait, or "auto"


@dataclass
class Channel:
    """Opens the two ends of a 1 -> 1 run in a child process."""

    producer: Callable[[], Endpoint]
    consumer: Callable[[], Endpoint]


MODE_LABEL = {
    "msg": "per-message",
    "batch": "batch",
}


class System:
    name = "?"
    kind = "peer"  # "peer" | "shmlog"
    #: how each mode is done, for the table's notes
    how = {}

    def check(self) -> None:
        """Raise Skip(reason) when this system cannot run here."""

    def modes(self, wid: str) -> List[str]:
        return {"W1": ["msg"], "W2": ["batch"], "W3": ["msg", "batch"], "W4": ["msg"]}.get(wid, [])

    def latency_variants(self) -> List[Tuple[str, Optional[float]]]:
        return [("msg", None)]

    @contextmanager
    def channel(self, spec: Spec) -> Iterator[Channel]:
        raise Skip("not implemented")
        yield  # pragma: no cover

    # -- 1 -> 1 throughput and latency through the generic loops ---------
    def throughput(self, spec: Spec, p: Params) -> Row:
        row = Row(spec.wid, self.name, mode=spec.mode, procs="1 producer proc -> 1 consumer proc")
        with self.channel(spec) as ch:
            res = run_procs(
                [
                    Proc("consumer", consume, (ch.consumer, spec.mode, spec.n, spec.warm,
                                                spec.size, spec.batch)),
                    Proc("producer", produce, (ch.producer, spec.mode, spec.n, spec.warm,
                                                spec.size, spec.batch)),
                ],
                p.run_limit_s,
            )
        outs = collect(row, res, partial_ok=True)
        if outs is None:
            return row
        cons, prod = outs
        throughput_row(row, cons["received"], spec.size, prod["t0"], cons["t1"])
        row.extra["producer_s"] = (prod["t_end"] - prod["t0"]) / 1e9
        if cons.get("cpu") is not None:
            row.extra["consumer_cpu"] = cons["cpu"]
        return row

    def latency(self, spec: Spec, p: Params) -> Row:
        row = Row(spec.wid, self.name, mode=spec.mode, procs="1 producer proc -> 1 consumer proc")
        with self.channel(spec) as ch:
            res = run_procs(
                [
                    Proc("consumer", consume_latency, (ch.consumer, spec.n, spec.warm)),
                    Proc("producer", produce_paced, (ch.producer, spec.n, spec.warm, spec.size,
                                                      spec.rate)),
                ],
                p.run_limit_s,
            )
        outs = collect(row, res, partial_ok=True)
        if outs is None:
            return row
        cons, prod = outs
        return latency_row(row, spec, cons, prod)

    # -- the multi-process workloads: skipped unless a system has them ---
    def durable(self, spec: Spec, p: Params) -> Row:
        raise Skip("in-memory transport: nothing is written to disk, so no durable mode")

    def groups(self, spec: Spec, p: Params) -> Row:
        raise Skip("a point-to-point queue: no fan-out to several consumer groups")

    def scale(self, spec: Spec, p: Params, partitions: int, producers: int) -> Row:
        raise Skip("partition scaling is measured for shmlog only")


def latency_row(row: Row, spec: Spec, cons: dict, prod: dict) -> Row:
    from array import array

    lat = array("q")
    lat.frombytes(cons["lat"])
    row.n = len(lat)
    row.size = spec.size
    row.lat = latency_stats(lat)
    row.extra["rate"] = spec.rate
    if cons.get("cpu") is not None:
        row.extra["consumer_cpu"] = cons["cpu"]
    late = prod.get("late_sends", 0)
    if late:
        row.extra["late_sends"] = late
        row.note = (row.note + "; " if row.note else "") + (f"producer fell >1 ms behind its pace on {late} sends "
                    f"(latency is measured from the actual send stamp)")
    return row


def all_systems() -> List[System]:
    from .fasterfifo import FasterFifo
    from .mpqueue import MpQueue
    from .natsjs import NatsJetStream
    from .redisstreams import RedisStreams
    from .shmlog_api import ShmlogApi
    from .shmlog_core import ShmlogCore
    from .zmqipc import ZmqIpc

    return [ShmlogApi(), ShmlogCore(), MpQueue(), FasterFifo(), ZmqIpc(), RedisStreams(),
            NatsJetStream()]
