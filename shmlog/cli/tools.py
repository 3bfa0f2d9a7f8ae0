"""Kafka-style command-line tools: topics, produce, consume, groups, perf,
dump, stats, top, demo.

Each command is a thin shell over the public API (shmlog.connect and the
Cluster admin calls); it never reaches into the supervisor's internals. The
only exceptions are read-only: the producer/reader slot tables in a mapped
region, when the supervisor's stats op cannot describe them, and segment
file sizes under the data dir.

Errors leave as ShmlogError, which `shmlog.cli.main` turns into exit 1 and
one line on stderr; argparse turns usage errors into exit 2.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import errors
from ..broker import metrics as m
from ..core.segments import dump_segment
from . import _parse_value

# ---------------------------------------------------------------- plumbing

# The slot tables are pinned by csrc/layout.h's _Static_asserts (64 chunk
# descriptors of 256 bytes after a 640-byte header, then 64 producer slots
# and 64 reader slots of 128 bytes each).
_PRODUCERS_AT = 640 + 64 * 256
_READERS_AT = _PRODUCERS_AT + 64 * 128
_SLOTS = 64
_PRODUCER_SLOT = struct.Struct("<IIQQIIQQQ")  # pid fenced claim_seq claim_tail bytes records batches records aborted
_READER_SLOT = struct.Struct("<IIQQQ")  # pid gating position pin group_id


def _kv(item: str) -> Tuple[str, Any]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    return k.strip(), _parse_value(v.strip())


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v!r}")
    return n


def _separator(v: str) -> str:
    # accept the escapes people type in a shell: \t, \n
    v = v.encode().decode("unicode_escape") if "\\" in v else v
    if not v:
        raise argparse.ArgumentTypeError("the separator must not be empty")
    return v


def _common(p: argparse.ArgumentParser, *, json_flag: bool = True, nested: bool = False) -> None:
    """--no-start (and --json) on a command; nested parsers also take
    --data-dir, so `shmlog topics create X --data-dir D` works."""
    sup = argparse.SUPPRESS
    if nested:
        p.add_argument("--data-dir", default=sup, help="data dir (default $SHMLOG_DATA_DIR or ./shmlog-data)")
    p.add_argument("--no-start", action="store_true", default=sup if nested else False,
                   help="fail instead of starting a supervisor when none runs")
    if json_flag:
        p.add_argument("--json", action="store_true", default=sup if nested else False,
                       help="print JSON instead of a table")


def _flag(args: argparse.Namespace, name: str) -> bool:
    return bool(getattr(args, name, False))


def connect(args: argparse.Namespace):
    """The cluster of --data-dir; with --no-start, BrokerNotRunning if none runs."""
    from ..client.cluster import connect as _connect

    no_start = _flag(args, "no_start")
    if no_start and not Path(args.data_dir).is_dir():
        # do not create an empty data dir just to find nobody serving it
        raise errors.BrokerNotRunning(f"no supervisor is serving {Path(args.data_dir).absolute()} "
                                      f"(the directory does not exist)", what=str(args.data_dir))
    return _connect(args.data_dir, start=not no_start)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str], indent: str = "") -> List[str]:
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def _print_json(obj: Any) -> None:
    _out(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _topic_dict(info) -> Dict[str, Any]:
    parts = []
    for p in info.partitions:
        d = {"partition": p.partition, "start_offset": p.start_offset, "end_offset": p.end_offset,
             "durable_offset": p.durable_offset, "bytes": p.bytes}
        d.update(p.extra)
        parts.append(d)
    return {"name": info.name, "topic_id": info.topic_id, "config": info.config, "partitions": parts}


def disk_bytes(data_dir: Path, topic: str, partition: int) -> int:
    """Bytes of segment files (and their indexes) of one partition."""
    d = Path(data_dir) / "topics" / topic / str(partition)
    total = 0
    try:
        with os.scandir(d) as it:
            for e in it:
                try:
                    if e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    except OSError:
        return 0
    return total


def _region_slots(plog) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Producer and reader slots read straight from a mapped region."""
    mv = memoryview(plog._mm)
    producers, readers = [], []
    for i in range(_SLOTS):
        s = _PRODUCER_SLOT.unpack_from(mv, _PRODUCERS_AT + 128 * i)
        if s[0]:
            producers.append({"pid": s[0], "batches": s[6], "records": s[7], "aborted": s[8]})
        r = _READER_SLOT.unpack_from(mv, _READERS_AT + 128 * i)
        if r[0]:
            readers.append({"pid": r[0], "position": r[2], "gating": bool(r[1]), "group_id": r[4]})
    return producers, readers


def _client_side_stats(cluster) -> Dict[str, Any]:
    """What the stats op answers, built from describe calls (used when the
    supervisor's op fails; _fill_slots adds the slot tables)."""
    topics = {name: _topic_dict(info) for name, info in cluster.topics().items()}
    return {"supervisor_pid": cluster.supervisor_pid, "clients": None, "reaped_processes": None,
            "topics": topics, "source": "client"}


def _fill_slots(cluster, stats: Dict[str, Any]) -> None:
    """Partitions the supervisor described without their producer/reader
    slots (its stats op failed part way) get them from the mapped regions."""
    for topic, part in list(m.partitions(stats)):
        if "producers" in part and "readers" in part:
            continue
        try:
            regions = cluster.topic(topic).regions
        except errors.ShmlogError:
            continue
        p = part["partition"]
        if p < len(regions) and not regions[p].closed:
            part["producers"], part["readers"] = _region_slots(regions[p])


def collect_stats(cluster, *, groups: bool = True) -> Dict[str, Any]:
    """The supervisor's stats, plus disk bytes per partition and group lag."""
    try:
        stats = cluster.stats()
    except errors.BrokerNotRunning:
        raise
    except errors.ShmlogError:
        stats = _client_side_stats(cluster)
    _fill_slots(cluster, stats)
    for topic, part in m.partitions(stats):
        part["disk_bytes"] = disk_bytes(cluster.data_dir, topic, part["partition"])
    if groups:
        stats["groups"] = group_lags(cluster, stats)
    stats["collected_at"] = time.time()
    return stats


def group_lags(cluster, stats: Optional[Dict[str, Any]] = None) -> Dict[str, List[Dict[str, Any]]]:
    """{group: rows} for every group; {} when groups are not available."""
    try:
        names = _group_names(cluster.groups())
    except errors.ShmlogError:
        return {}
    ends = {}
    if stats is not None:
        ends = {(t, p["partition"]): p["end_offset"] for t, p in m.partitions(stats)}
    out = {}
    for g in names:
        try:
            out[g] = m.group_rows(cluster.describe_group(g), ends)
        except errors.ShmlogError:
            continue
    return out


def _group_names(answer: Any) -> List[str]:
    if isinstance(answer, dict):
        return sorted(answer)
    if isinstance(answer, list):
        return sorted(g if isinstance(g, str) else g.get("group") or g.get("name") for g in answer)
    return []


# ---------------------------------------------------------------- topics
def cmd_topics(args) -> int:
    action = getattr(args, "topics_action", None) or "list"
    with connect(args) as cluster:
        if action == "create":
            config = dict(args.config or [])
            if args.partitions is not None:
                config["partitions"] = args.partitions
            partitions = config.pop("partitions", 1)
            try:
                info = cluster.create_topic(args.name, partitions=partitions, **config)
            except errors.TopicExists:
                if not args.if_not_exists:
                    raise
                info = cluster.describe_topic(args.name)
            if _flag(args, "json"):
                _print_json(_topic_dict(info))
            else:
                _out(f"Created topic {args.name}.")
        elif action == "list":
            topics = cluster.topics()
            if _flag(args, "json"):
                _print_json({n: _topic_dict(t) for n, t in topics.items()})
            else:
                for n in sorted(topics):
                    _out(n)
        elif action == "describe":
            if args.name:
                infos = [cluster.describe_topic(args.name)]
            else:
                infos = [cluster.topics()[n] for n in sorted(cluster.topics())]
            if _flag(args, "json"):
                ds = [_topic_dict(i) for i in infos]
                for d in ds:
                    for p in d["partitions"]:
                        p["disk_bytes"] = disk_bytes(cluster.data_dir, d["name"], p["partition"])
                _print_json(ds[0] if args.name else {d["name"]: d for d in ds})
            else:
                for i, info in enumerate(infos):
                    if i:
                        _out()
                    for line in describe_lines(cluster, info):
                        _out(line)
        elif action == "alter":
            config = dict(args.config or [])
            if args.partitions is None and not config:
                raise errors.InvalidConfig("topics alter needs --partitions N and/or --config KEY=VALUE")
            info = None
            if config:
                info = cluster.alter_topic(args.name, **config)
            if args.partitions is not None:
                info = cluster.add_partitions(args.name, args.partitions)
            if _flag(args, "json"):
                _print_json(_topic_dict(info))
            else:
                _out(f"Altered topic {args.name}.")
        elif action == "delete":
            try:
                cluster.delete_topic(args.name)
            except errors.UnknownTopic:
                if not args.if_exists:
                    raise
            if not _flag(args, "json"):
                _out(f"Deleted topic {args.name}.")
            else:
                _print_json({"deleted": args.name})
    return 0


def describe_lines(cluster, info) -> List[str]:
    cfg = info.config
    lines = [f"Topic: {info.name}\tTopicId: {info.topic_id}\tPartitionCount: {len(info.partitions)}\t"
             f"Storage: {cfg.get('storage', '?')}",
             "Configs: " + ", ".join(f"{k}={cfg[k]}" for k in sorted(cfg) if k != "partitions")]
    rows = []
    for p in info.partitions:
        used, count = p.extra.get("chunks_in_use"), p.extra.get("chunk_count")
        chunks = f"{used}/{count}" if used is not None and count else "-"
        part = {"bytes": p.bytes, **p.extra}
        rows.append([p.partition, p.start_offset, p.end_offset, p.durable_offset, p.end_offset - p.start_offset,
                     p.bytes, m.human_bytes(disk_bytes(cluster.data_dir, info.name, p.partition)),
                     m.human_bytes(m.shm_bytes(part)), chunks])
    lines += _table(rows, ["PARTITION", "START-OFFSET", "END-OFFSET", "DURABLE-OFFSET", "MESSAGES", "BYTES",
                           "DISK-BYTES", "SHM-BYTES", "SHM-CHUNKS"], indent="  ")
    return lines


# ---------------------------------------------------------------- produce
def cmd_produce(args) -> int:
    sep = args.key_separator.encode() if args.key_separator else None
    n = 0
    with connect(args) as cluster:
        cluster.describe_topic(args.topic)  # unknown topic: fail before reading stdin
        with cluster.producer(linger_ms=args.linger_ms, compression=args.compression) as producer:
            stdin = sys.stdin.buffer
            try:
                for lineno, line in enumerate(stdin, 1):
                    if line.endswith(b"\n"):
                        line = line[:-1]
                        if line.endswith(b"\r"):
                            line = line[:-1]
                    key = None
                    if sep is not None:
                        if sep not in line:
                            producer.flush()
                            raise errors.ShmlogError(
                                f"line {lineno} of stdin has no key separator {args.key_separator!r} "
                                f"({n} messages sent before it)")
                        key, line = line.split(sep, 1)
                    producer.send(args.topic, line, key=key, partition=args.partition)
                    n += 1
            finally:
                producer.flush()
    if args.verbose:
        print(f"{n} messages sent to {args.topic}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- consume
def cmd_consume(args) -> int:
    reset = "earliest" if args.from_beginning else "latest"
    if args.group and (args.partition is not None or args.offset is not None):
        raise errors.InvalidConfig("--partition/--offset read without a group; drop --group or them")
    if args.offset is not None and args.partition is None:
        raise errors.InvalidConfig("--offset needs --partition")
    n = 0
    out = sys.stdout.buffer
    sep = args.key_separator.encode()
    # what has been printed, per partition: a group commits exactly that
    # (auto-commit would also commit what was fetched but not printed)
    printed: Dict[Tuple[str, int], int] = {}
    with connect(args) as cluster:
        consumer = cluster.consumer(args.topic if args.partition is None else [], group=args.group,
                                    auto_offset_reset=reset, enable_auto_commit=False)
        try:
            if args.partition is not None:
                cluster.describe_topic(args.topic)
                consumer.assign([(args.topic, args.partition)])
                if args.offset is not None:
                    consumer.seek(args.topic, args.partition, args.offset)
                elif args.from_beginning:
                    consumer.seek_to_beginning()
                else:
                    consumer.seek_to_end()
            limit = args.max_messages
            timeout = None if args.timeout_ms is None else args.timeout_ms / 1000.0
            last = time.monotonic()
            while limit is None or n < limit:
                wait = 1.0 if timeout is None else max(0.0, min(1.0, last + timeout - time.monotonic()))
                # always fetch generously: what --max-messages leaves over is
                # simply not printed (nor committed)
                msgs = consumer.consume(max_messages=10_000, timeout=wait)
                if not msgs:
                    if timeout is not None and time.monotonic() - last >= timeout:
                        break
                    continue
                last = time.monotonic()
                if limit is not None:
                    msgs = msgs[:limit - n]
                chunks = []
                for msg in msgs:
                    if args.print_timestamp:
                        chunks.append(b"CreateTime:%d\t" % msg.timestamp_ms)
                    if args.print_partition:
                        chunks.append(b"Partition:%d\t" % msg.partition)
                    if args.print_offset:
                        chunks.append(b"Offset:%d\t" % msg.offset)
                    if args.print_key:
                        chunks.append((b"null" if msg.key is None else bytes(msg.key)) + sep)
                    chunks.append((b"null" if msg.value is None else bytes(msg.value)) + b"\n")
                out.write(b"".join(chunks))
                out.flush()
                for msg in msgs:
                    printed[(msg.topic, msg.partition)] = msg.offset + 1
                n += len(msgs)
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:
            # the reader of our stdout went away (| head): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            try:
                if args.group and printed:
                    consumer.commit(offsets=printed)
            finally:
                consumer.close()
    print(f"Processed a total of {n} messages", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- groups
def cmd_groups(args) -> int:
    action = getattr(args, "groups_action", None) or "list"
    with connect(args) as cluster:
        if action == "list":
            answer = cluster.groups()
            if _flag(args, "json"):
                _print_json(answer)
            else:
                for g in _group_names(answer):
                    _out(g)
        elif action == "describe":
            desc = cluster.describe_group(args.group)
            ends = _end_offsets(cluster)
            rows = m.group_rows(desc, ends)
            if _flag(args, "json"):
                _print_json({"group": args.group, "partitions": rows, "raw": desc})
            else:
                state = desc.get("state") if isinstance(desc, dict) else None
                members = desc.get("members") if isinstance(desc, dict) else None
                gen = desc.get("generation") if isinstance(desc, dict) else None
                head = f"Group: {args.group}"
                if state is not None:
                    head += f"\tState: {state}"
                if gen is not None:
                    head += f"\tGeneration: {gen}"
                if members is not None:
                    head += f"\tMembers: {len(members)}"
                _out(head)
                if not rows:
                    _out(f"Consumer group '{args.group}' has no committed offsets and no active members.")
                else:
                    for line in _table(
                            [[args.group, r["topic"], r["partition"], r["committed"], r["end_offset"], r["lag"],
                              r["consumer"]] for r in rows],
                            ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                             "CONSUMER-ID"]):
                        _out(line)
        elif action == "reset-offsets":
            cluster.describe_topic(args.topic)
            kw: Dict[str, Any] = {}
            if args.to_earliest:
                to = "earliest"
            elif args.to_latest:
                to = "latest"
            elif args.to_offset is not None:
                to, kw["offset"] = "offset", args.to_offset
            else:
                to, kw["timestamp_ms"] = "timestamp", _parse_datetime(args.to_datetime)
            answer = cluster.reset_offsets(args.group, args.topic, to=to, **kw)
            rows = _offset_rows(args.topic, answer)
            if _flag(args, "json"):
                _print_json({"group": args.group, "topic": args.topic, "offsets": rows})
            else:
                for line in _table([[args.group, t, p, o] for t, p, o in rows],
                                   ["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"]):
                    _out(line)
    return 0


def _end_offsets(cluster) -> Dict[Tuple[str, int], int]:
    return {(n, p.partition): p.end_offset for n, t in cluster.topics().items() for p in t.partitions}


def _offset_rows(topic: str, answer: Any) -> List[Tuple[str, int, Any]]:
    """reset_offsets' answer as (topic, partition, offset) rows, whatever its shape."""
    rows = []
    if isinstance(answer, dict):
        for k, v in answer.items():
            if isinstance(v, dict) and not {"partition"} & set(v):
                for p, o in v.items():
                    rows.append((str(k), int(p), o))
                continue
            if isinstance(v, dict):
                rows.append((v.get("topic", topic), int(v["partition"]), v.get("offset")))
                continue
            ks = str(k)
            if ":" in ks:
                t, p = ks.rsplit(":", 1)
            else:
                t, p = topic, ks
            rows.append((t, int(p), v))
    elif isinstance(answer, list):
        for v in answer:
            if isinstance(v, dict):
                rows.append((v.get("topic", topic), int(v["partition"]), v.get("offset")))
            elif isinstance(v, (list, tuple)) and len(v) == 3:
                rows.append((str(v[0]), int(v[1]), v[2]))
            elif isinstance(v, (list, tuple)) and len(v) == 2:
                rows.append((topic, int(v[0]), v[1]))
    return sorted(rows)


def _parse_datetime(text: str) -> int:
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    try:
        dt = _dt.datetime.fromisoformat(t)
    except ValueError:
        raise errors.InvalidConfig(f"--to-datetime {text!r} is not an ISO 8601 date/time "
                                   "(e.g. 2024-05-01T12:00:00Z)") from None
    return int(dt.timestamp() * 1000)


# ---------------------------------------------------------------- perf
_STAMP = struct.Struct("<q")


def _pct(sorted_vals: Sequence[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def perf_produce(data_dir: str, topic: str, num_records: int, record_size: int, *, batch: int = 0,
                 throughput: float = -1, compression: Optional[str] = None, linger_ms: float = 0,
                 start: bool = True) -> Dict[str, Any]:
    """Send num_records of record_size bytes; latency is send() to commit.
    Values start with the send time (monotonic ns) so a consumer can measure
    end-to-end latency."""
    from ..client.cluster import connect as _connect

    tail = bytes(max(0, record_size - 8))
    stamped = record_size >= 8
    lat: List[float] = []
    sample = max(1, num_records // 20_000)
    with _connect(data_dir, start=start) as cluster:
        cluster.describe_topic(topic)
        with cluster.producer(linger_ms=linger_ms, compression=compression) as producer:
            t0 = time.monotonic()
            mono = time.monotonic_ns
            sent = 0
            if batch:
                while sent < num_records:
                    k = min(batch, num_records - sent)
                    now = mono()
                    head = _STAMP.pack(now) if stamped else b""
                    values = [head + tail] * k if stamped else [bytes(record_size)] * k
                    producer.send_batch(topic, values)
                    lat.append((mono() - now) / 1e6)
                    sent += k
                    if throughput > 0:
                        _throttle(t0, sent, throughput)
            else:
                send = producer.send
                filler = bytes(record_size)

                def delivered(err, md, t=0):
                    if err is None:
                        lat.append((mono() - t) / 1e6)

                for i in range(num_records):
                    now = mono()
                    value = _STAMP.pack(now) + tail if stamped else filler
                    if i % sample == 0:
                        send(topic, value, on_delivery=lambda e, md, t=now: delivered(e, md, t))
                    else:
                        send(topic, value)
                    if throughput > 0 and i % 64 == 0:
                        _throttle(t0, i, throughput)
                sent = num_records
            producer.flush()
            elapsed = time.monotonic() - t0
    lat.sort()
    return {"records": sent, "seconds": elapsed, "bytes": sent * record_size,
            "avg_ms": sum(lat) / len(lat) if lat else 0.0, "max_ms": lat[-1] if lat else 0.0,
            "p50_ms": _pct(lat, 0.5), "p95_ms": _pct(lat, 0.95), "p99_ms": _pct(lat, 0.99),
            "p999_ms": _pct(lat, 0.999)}


def _throttle(t0: float, sent: int, rate: float) -> None:
    ahead = sent / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)


def perf_consume(data_dir: str, topic: str, num_records: int, *, group: Optional[str] = None,
                 timeout_ms: int = 10_000, from_latest: bool = False, start: bool = True,
                 ready=None) -> Dict[str, Any]:
    """Read num_records; end-to-end latency from the send time a perf
    producer writes at the start of each value (when plausible)."""
    from ..client.cluster import connect as _connect

    lat: List[float] = []
    n = 0
    nbytes = 0
    with _connect(data_dir, start=start) as cluster:
        cluster.describe_topic(topic)
        consumer = cluster.consumer(topic, group=group, auto_offset_reset="latest" if from_latest else "earliest")
        try:
            if from_latest and group is None:
                consumer.seek_to_end()
            if ready is not None:
                ready.set()
            t0 = None
            last = time.monotonic()
            mono = time.monotonic_ns
            unpack = _STAMP.unpack_from
            while n < num_records:
                batch = consumer.consume_batch(max_messages=100_000, timeout=0.2)
                now = time.monotonic()
                if batch is None:
                    if now - last >= timeout_ms / 1000.0:
                        break
                    continue
                if t0 is None:
                    t0 = now
                last = now
                values = batch.values[:num_records - n]
                k = len(values)
                n += k
                nbytes += sum(map(len, values))
                now_ns = mono()
                step = max(1, k // 64)
                for v in values[::step]:
                    if len(v) >= 8:
                        d = now_ns - unpack(v)[0]
                        if 0 <= d < 600e9:
                            lat.append(d / 1e6)
            if group is not None:
                try:
                    consumer.commit()
                except errors.ShmlogError:
                    pass
        finally:
            consumer.close()
    elapsed = (last - t0) if t0 is not None and n else 0.0
    lat.sort()
    return {"records": n, "wanted": num_records, "seconds": elapsed, "bytes": nbytes,
            "avg_ms": sum(lat) / len(lat) if lat else None, "p50_ms": _pct(lat, 0.5) if lat else None,
            "p99_ms": _pct(lat, 0.99) if lat else None, "max_ms": lat[-1] if lat else None}


def _producer_line(r: Dict[str, Any]) -> str:
    secs = max(r["seconds"], 1e-9)
    return (f"{r['records']} records sent, {r['records'] / secs:.1f} records/sec "
            f"({r['bytes'] / secs / (1 << 20):.2f} MB/sec), {r['avg_ms']:.3f} ms avg latency, "
            f"{r['max_ms']:.3f} ms max latency, {r['p50_ms']:.3f} ms 50th, {r['p95_ms']:.3f} ms 95th, "
            f"{r['p99_ms']:.3f} ms 99th, {r['p999_ms']:.3f} ms 99.9th.")


def _consumer_line(r: Dict[str, Any]) -> str:
    secs = max(r["seconds"], 1e-9)
    line = (f"{r['records']} records received, {r['records'] / secs:.1f} records/sec "
            f"({r['bytes'] / secs / (1 << 20):.2f} MB/sec)")
    if r.get("avg_ms") is not None:
        line += (f", {r['avg_ms']:.3f} ms avg end-to-end latency, {r['p50_ms']:.3f} ms 50th, "
                 f"{r['p99_ms']:.3f} ms 99th, {r['max_ms']:.3f} ms max")
    return line + "."


def _perf_consume_child(queue, data_dir, topic, n, group, timeout_ms, ready) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        queue.put(("ok", perf_consume(data_dir, topic, n, group=group, timeout_ms=timeout_ms,
                                      from_latest=True, start=False, ready=ready)))
    except BaseException as exc:  # reported to the parent, which exits 1
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
        ready.set()


def _perf_produce_child(queue, data_dir, topic, n, size, batch, throughput, compression) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        queue.put(("ok", perf_produce(data_dir, topic, n, size, batch=batch, throughput=throughput,
                                      compression=compression, start=False)))
    except BaseException as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def cmd_perf(args) -> int:
    action = args.perf_action
    if action is None:
        raise errors.InvalidConfig("perf needs an action: produce, consume or both")
    batch = args.batch if getattr(args, "batch", None) else 0
    with connect(args) as cluster:
        cluster.describe_topic(args.topic)  # unknown topic: exit 1 now
        if action == "produce":
            r = perf_produce(str(cluster.data_dir), args.topic, args.num_records, args.record_size, batch=batch,
                             throughput=args.throughput, compression=args.compression, start=False)
            _print_json(r) if _flag(args, "json") else _out(_producer_line(r))
            return 0
        if action == "consume":
            r = perf_consume(str(cluster.data_dir), args.topic, args.num_records, group=args.group,
                             timeout_ms=args.timeout_ms, from_latest=args.from_latest, start=False)
            _print_json(r) if _flag(args, "json") else _out(_consumer_line(r))
            if r["records"] < args.num_records:
                raise errors.ShmlogError(f"perf consume timed out after {args.timeout_ms} ms with "
                                         f"{r['records']} of {args.num_records} records from topic {args.topic!r}")
            return 0
        # both: a consumer process positioned at the end, then a producer process
        ctx = multiprocessing.get_context("spawn")
        cq, pq = ctx.Queue(), ctx.Queue()
        ready = ctx.Event()
        data_dir = str(cluster.data_dir)
        cproc = ctx.Process(target=_perf_consume_child, name="shmlog-perf-consumer",
                            args=(cq, data_dir, args.topic, args.num_records, args.group, args.timeout_ms, ready))
        pproc = None
        cproc.start()
        try:
            if not ready.wait(30):
                raise errors.ShmlogError("the perf consumer process did not start within 30s")
            pproc = ctx.Process(target=_perf_produce_child, name="shmlog-perf-producer",
                                args=(pq, data_dir, args.topic, args.num_records, args.record_size, batch,
                                      args.throughput, args.compression))
            pproc.start()
            pres = pq.get()
            cres = cq.get()
        finally:
            for proc in (pproc, cproc):
                if proc is None:
                    continue
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        for kind, res in (pres, cres):
            if kind == "error":
                raise errors.ShmlogError(f"perf failed: {res}")
        if _flag(args, "json"):
            _print_json({"producer": pres[1], "consumer": cres[1]})
        else:
            _out("producer: " + _producer_line(pres[1]))
            _out("consumer: " + _consumer_line(cres[1]))
        if cres[1]["records"] < args.num_records:
            raise errors.ShmlogError(f"the perf consumer got {cres[1]['records']} of {args.num_records} records "
                                     f"from topic {args.topic!r} before its {args.timeout_ms} ms timeout")
    return 0


# ---------------------------------------------------------------- dump
def cmd_dump(args) -> int:
    path = Path(args.segment)
    if not path.is_file():
        raise errors.StorageError(f"no such segment file: {path}", what=str(path))
    bad = []
    n = 0
    as_json = _flag(args, "json")
    if not as_json:
        _out(f"Dumping {path}")
    items = []
    try:
        for b in dump_segment(str(path)):
            n += 1
            if as_json:
                items.append(b)
            else:
                line = (f"offset: {b.get('offset')} position: {b.get('position')} count: {b.get('count')} "
                        f"first_timestamp: {b.get('first_timestamp')} max_timestamp: {b.get('max_timestamp')} "
                        f"bytes: {b.get('bytes')} compression: {b.get('compression') or 'none'} "
                        f"crc_valid: {str(bool(b.get('crc_valid'))).lower()}")
                if b.get("error"):
                    line += f" error: {b['error']}"
                _out(line)
            if not b.get("crc_valid"):
                bad.append(b)
    except OSError as exc:
        raise errors.StorageError(f"cannot read segment {path}: {exc.strerror or exc}", what=str(path)) from None
    if as_json:
        _print_json(items)
    elif not args.quiet:
        _out(f"{n} batches")
    if bad:
        b = bad[0]
        raise errors.CorruptBatch(f"{len(bad)} batch(es) with a bad CRC in {path}, the first at offset "
                                  f"{b.get('offset')} position {b.get('position')}", what=str(path))
    return 0


# ---------------------------------------------------------------- stats
def cmd_stats(args) -> int:
    with connect(args) as cluster:
        stats = collect_stats(cluster)
    if args.prometheus:
        sys.stdout.write(m.prometheus(stats))
    elif _flag(args, "json"):
        _out(m.as_json(stats))
    else:
        tot = m.totals(stats)
        _out(f"supervisor pid {stats.get('supervisor_pid')}  clients {_dash(stats.get('clients'))}  "
             f"reaped processes {_dash(stats.get('reaped_processes'))}  topics {tot['topics']}  "
             f"messages {tot['messages']}  group lag {tot['group_lag']}")
        rows = []
        for topic, p in m.partitions(stats):
            fill = m.fill_ratio(p)
            rows.append([topic, p["partition"], p.get("start_offset"), p.get("end_offset"),
                         m.human_bytes(p.get("bytes")), "-" if fill is None else f"{fill:.0%}",
                         m.human_bytes(p.get("disk_bytes")), p.get("aborted_batches"), p.get("rotations"),
                         len(p.get("producers") or []), len(p.get("readers") or [])])
        if rows:
            for line in _table(rows, ["TOPIC", "PARTITION", "START", "END", "SHM-BYTES", "FILL", "DISK-BYTES",
                                      "ABORTED", "ROTATIONS", "PRODUCERS", "READERS"]):
                _out(line)
    return 0


def _dash(v: Any) -> Any:
    return "-" if v is None else v


# ---------------------------------------------------------------- top/demo
def cmd_top(args) -> int:
    from . import top

    return top.run(args)


def cmd_demo(args) -> int:
    from . import demo

    return demo.run(args)


# ---------------------------------------------------------------- parser
def register(sub, add) -> None:
    """Add the tools to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    # topics
    p = add("topics", "create, list, describe, alter and delete topics")
    _common(p)
    p.set_defaults(func=cmd_topics, topics_action=None)
    ts = p.add_subparsers(dest="topics_action", metavar="ACTION")

    def nested(parent_sub, name, help_, *, json_flag=True):
        sp = parent_sub.add_parser(name, help=help_, description=help_)
        _common(sp, json_flag=json_flag, nested=True)
        return sp

    sp = nested(ts, "create", "create a topic")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--partitions", type=_positive_int, default=None, help="number of partitions (default 1)")
    sp.add_argument("--config", type=_kv, action="append", metavar="KEY=VALUE",
                    help="topic setting, e.g. storage=memory, retention_ms=60000 (repeatable)")
    sp.add_argument("--if-not-exists", action="store_true", help="succeed if the topic already exists")
    nested(ts, "list", "list topic names")
    sp = nested(ts, "describe", "partitions with start/end/durable offsets, bytes, and the config")
    sp.add_argument("name", metavar="NAME", nargs="?", help="topic (default: all)")
    sp = nested(ts, "alter", "change settings live, or add partitions")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--partitions", type=_positive_int, default=None, help="new, larger partition count")
    sp.add_argument("--config", type=_kv, action="append", metavar="KEY=VALUE",
                    help="retention_ms, retention_bytes, segment_bytes, segment_ms, fsync_interval_ms")
    sp = nested(ts, "delete", "delete a topic and its data")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--if-exists", action="store_true", help="succeed if the topic does not exist")

    # produce
    p = add("produce", "send the lines of stdin to a topic, one message each")
    _common(p, json_flag=False)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--key-separator", type=_separator, default=None, metavar="SEP",
                   help="each line is KEY SEP VALUE (e.g. ':' or '\\t')")
    p.add_argument("--partition", type=_positive_int, default=None, help="send everything to this partition")
    p.add_argument("--linger-ms", type=float, default=5.0, help="batching delay (default 5)")
    p.add_argument("--compression", choices=["none", "lz4"], default=None)
    p.add_argument("-v", "--verbose", action="store_true", help="say how many messages were sent")
    p.set_defaults(func=cmd_produce)

    # consume
    p = add("consume", "print a topic's messages to stdout")
    _common(p, json_flag=False)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--group", default=None, help="consumer group (default: none, read every partition)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the earliest offset when there is no committed one (default: latest)")
    p.add_argument("--partition", type=_positive_int, default=None, help="read only this partition")
    p.add_argument("--offset", type=_positive_int, default=None, help="with --partition: start here")
    p.add_argument("--max-messages", type=_positive_int, default=None, help="exit after this many")
    p.add_argument("--timeout-ms", type=_positive_int, default=None,
                   help="exit when no message arrived for this long")
    p.add_argument("--print-key", action="store_true", help="print KEY SEP VALUE")
    p.add_argument("--print-offset", action="store_true", help="prefix Offset:N")
    p.add_argument("--print-partition", action="store_true", help="prefix Partition:N")
    p.add_argument("--print-timestamp", action="store_true", help="prefix CreateTime:MS")
    p.add_argument("--key-separator", type=_separator, default="\t", metavar="SEP",
                   help="between key and value with --print-key (default tab)")
    p.set_defaults(func=cmd_consume)

    # groups
    p = add("groups", "list and describe consumer groups (with lag), reset their offsets")
    _common(p)
    p.set_defaults(func=cmd_groups, groups_action=None)
    gs = p.add_subparsers(dest="groups_action", metavar="ACTION")
    nested(gs, "list", "list group names")
    sp = nested(gs, "describe", "committed offset, log-end offset, lag and owner per partition")
    sp.add_argument("group", metavar="GROUP")
    sp = nested(gs, "reset-offsets", "move a group's committed offsets (members must be stopped)")
    sp.add_argument("group", metavar="GROUP")
    sp.add_argument("--topic", required=True)
    to = sp.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-offset", type=_positive_int, metavar="N")
    to.add_argument("--to-datetime", metavar="ISO", help="e.g. 2024-05-01T12:00:00Z")

    # perf
    p = add("perf", "producer/consumer load test, like kafka-*-perf-test")
    _common(p)
    p.set_defaults(func=cmd_perf, perf_action=None)
    ps = p.add_subparsers(dest="perf_action", metavar="ACTION")
    for name, help_ in (("produce", "send records and report throughput and send-to-commit latency"),
                        ("consume", "read records and report throughput and end-to-end latency"),
                        ("both", "a consumer process and a producer process at once (end-to-end latency)")):
        sp = nested(ps, name, help_)
        sp.add_argument("--topic", required=True)
        sp.add_argument("--num-records", type=_positive_int, required=True)
        if name in ("produce", "both"):
            sp.add_argument("--record-size", type=_positive_int, default=100, help="bytes (default 100)")
            sp.add_argument("--batch", type=_positive_int, nargs="?", const=1000, default=0, metavar="N",
                            help="send_batch N records at a time (default 1000 with the flag)")
            sp.add_argument("--throughput", type=float, default=-1, help="records/sec cap (-1: none)")
            sp.add_argument("--compression", choices=["none", "lz4"], default=None)
        if name in ("consume", "both"):
            sp.add_argument("--group", default=None)
            sp.add_argument("--timeout-ms", type=_positive_int, default=10_000,
                            help="give up after this long without a record (default 10000)")
        if name == "consume":
            sp.add_argument("--from-latest", action="store_true", help="skip what is already there")

    # dump
    p = add("dump", "print a segment file's batches and check their CRCs (exit 1 on a bad one)")
    _common(p)
    p.add_argument("segment", metavar="SEGMENT_FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no closing count line")
    p.set_defaults(func=cmd_dump)

    # stats
    p = add("stats", "broker counters as a table, JSON or Prometheus text")
    _common(p)
    p.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format 0.0.4")
    p.set_defaults(func=cmd_stats)

    # top
    p = add("top", "live rates, lag, buffer fill and processes per partition")
    _common(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--iterations", type=_positive_int, default=0, help="stop after N refreshes (0: never)")
    p.set_defaults(func=cmd_top)

    # demo
    p = add("demo", "a small real pipeline: 2 producer processes, a group of 2 workers, verified")
    _common(p, json_flag=False)
    p.add_argument("--seconds", type=float, default=10.0, help="how long to produce (default 10)")
    p.add_argument("--topic", default="demo-events")
    p.add_argument("--rate", type=float, default=100_000,
                   help="events/sec per producer (default 100000; 0: as fast as possible, which fills "
                        "the buffer so latency becomes queueing time)")
    p.add_argument("--storage", choices=["memory", "disk"], default="memory",
                   help="topic storage (default memory: the buffer is the log, producers feel backpressure)")
    p.set_defaults(func=cmd_demo)
