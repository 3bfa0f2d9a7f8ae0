"""`shmlog topics`: create, list, describe, alter and delete topics."""
from __future__ import annotations

from typing import List

from .. import errors
from ..broker import metrics as m
from .common import (
    add_common,
    add_nested,
    connect,
    flag,
    kv_arg,
    nonneg_int,
    out,
    print_json,
    table,
    topic_dict,
)
from .stats import disk_bytes


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
            if flag(args, "json"):
                print_json(topic_dict(info))
            else:
                out(f"Created topic {args.name}.")
        elif action == "list":
            topics = cluster.topics()
            if flag(args, "json"):
                print_json({n: topic_dict(t) for n, t in topics.items()})
            else:
                for n in sorted(topics):
                    out(n)
        elif action == "describe":
            if args.name:
                infos = [cluster.describe_topic(args.name)]
            else:
                infos = [cluster.topics()[n] for n in sorted(cluster.topics())]
            if flag(args, "json"):
                ds = [topic_dict(i) for i in infos]
                for d in ds:
                    for p in d["partitions"]:
                        p["disk_bytes"] = disk_bytes(cluster.data_dir, d["name"], p["partition"])
                print_json(ds[0] if args.name else {d["name"]: d for d in ds})
            else:
                for i, info in enumerate(infos):
                    if i:
                        out()
                    for line in describe_lines(cluster, info):
                        out(line)
        elif action == "alter":
            config = dict(args.config or [])
            if args.partitions is None and not config:
                raise errors.InvalidConfig("topics alter needs --partitions N and/or --config KEY=VALUE")
            info = None
            if config:
                info = cluster.alter_topic(args.name, **config)
            if args.partitions is not None:
                info = cluster.add_partitions(args.name, args.partitions)
            if flag(args, "json"):
                print_json(topic_dict(info))
            else:
                out(f"Altered topic {args.name}.")
        elif action == "delete":
            try:
                cluster.delete_topic(args.name)
            except errors.UnknownTopic:
                if not args.if_exists:
                    raise
            if not flag(args, "json"):
                out(f"Deleted topic {args.name}.")
            else:
                print_json({"deleted": args.name})
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
    lines += table(rows, ["PARTITION", "START-OFFSET", "END-OFFSET", "DURABLE-OFFSET", "MESSAGES", "BYTES",
                           "DISK-BYTES", "SHM-BYTES", "SHM-CHUNKS"], indent="  ")
    return lines


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("topics", "create, list, describe, alter and delete topics")
    add_common(p)
    p.set_defaults(func=cmd_topics, topics_action=None)
    ts = p.add_subparsers(dest="topics_action", metavar="ACTION")

    sp = add_nested(ts, "create", "create a topic")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--partitions", type=nonneg_int, default=None, help="number of partitions (default 1)")
    sp.add_argument("--config", type=kv_arg, action="append", metavar="KEY=VALUE",
                    help="topic setting, e.g. storage=memory, retention_ms=60000 (repeatable)")
    sp.add_argument("--if-not-exists", action="store_true", help="succeed if the topic already exists")
    add_nested(ts, "list", "list topic names")
    sp = add_nested(ts, "describe", "partitions with start/end/durable offsets, bytes, and the config")
    sp.add_argument("name", metavar="NAME", nargs="?", help="topic (default: all)")
    sp = add_nested(ts, "alter", "change settings live, or add partitions")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--partitions", type=nonneg_int, default=None, help="new, larger partition count")
    sp.add_argument("--config", type=kv_arg, action="append", metavar="KEY=VALUE",
                    help="retention_ms, retention_bytes, segment_bytes, segment_ms, fsync_interval_ms")
    sp = add_nested(ts, "delete", "delete a topic and its data")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--if-exists", action="store_true", help="succeed if the topic does not exist")
