"""`shmlog groups`: list, describe (with lag), delete and reset-offsets."""
from __future__ import annotations

import datetime as _dt
import sys
from typing import Any, Dict, List, Tuple

from .. import errors
from ..broker import metrics as m
from .common import (
    add_common,
    add_nested,
    connect,
    flag,
    nonneg_int,
    out,
    print_json,
    table,
)
from .stats import group_names


def cmd_groups(args) -> int:
    action = getattr(args, "groups_action", None) or "list"
    with connect(args) as cluster:
        if action == "list":
            answer = cluster.groups()
            if flag(args, "json"):
                print_json(answer)
            else:
                for g in group_names(answer):
                    out(g)
        elif action == "describe":
            desc = cluster.describe_group(args.group)
            ends = _end_offsets(cluster)
            rows = m.group_rows(desc, ends)
            # a mirror out's group ("mirror.<name>"): its rate and lag in seconds too
            mirror = next((r for r in cluster.mirrors() if r.get("group") == args.group), None)
            if flag(args, "json"):
                print_json({"group": args.group, "partitions": rows, "raw": desc, "mirror": mirror})
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
                out(head)
                if mirror is not None:
                    out(f"Mirror: {mirror['name']}\tState: {mirror.get('state')}\tTo: {mirror.get('bootstrap')}"
                        f"\tRate: {m.human_rate(mirror.get('rate'))} msg/s\tLag: {mirror.get('lag_messages')} "
                        f"messages, {mirror.get('lag_seconds')} s")
                if not rows:
                    out(f"Consumer group '{args.group}' has no committed offsets and no active members.")
                else:
                    for line in table(
                            [[args.group, r["topic"], r["partition"], r["committed"], r["end_offset"], r["lag"],
                              r["consumer"]] for r in rows],
                            ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                             "CONSUMER-ID"]):
                        out(line)
        elif action == "delete":
            # the supervisor refuses, naming the live members, while the group has any
            cluster.delete_group(args.group)
            if flag(args, "json"):
                print_json({"deleted": [args.group]})
            else:
                out(f"Deleted consumer group {args.group!r} (its committed offsets and state).")
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
            # Kafka's habit: show what would change unless told --execute
            dry_run = not args.execute
            answer = cluster.reset_offsets(args.group, args.topic, to=to, dry_run=dry_run, **kw)
            rows = _offset_rows(args.topic, answer)
            if flag(args, "json"):
                print_json({"group": args.group, "topic": args.topic, "offsets": rows, "dry_run": dry_run})
            else:
                for line in table([[args.group, t, p, o] for t, p, o in rows],
                                   ["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"]):
                    out(line)
            if dry_run:
                print("(dry run: nothing was changed; add --execute to commit these offsets)", file=sys.stderr)
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


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("groups", "list, describe (with lag) and delete consumer groups, reset their offsets")
    add_common(p)
    p.set_defaults(func=cmd_groups, groups_action=None)
    gs = p.add_subparsers(dest="groups_action", metavar="ACTION")
    add_nested(gs, "list", "list group names")
    sp = add_nested(gs, "describe", "committed offset, log-end offset, lag and owner per partition")
    sp.add_argument("group", metavar="GROUP")
    sp = add_nested(gs, "delete", "delete a group's committed offsets and state "
                                  "(refused while it has active members)")
    sp.add_argument("group", metavar="GROUP")
    sp = add_nested(gs, "reset-offsets", "show, or with --execute commit, new offsets for a group "
                                         "(members must be stopped)")
    sp.add_argument("group", metavar="GROUP")
    sp.add_argument("--topic", required=True)
    to = sp.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-offset", type=nonneg_int, metavar="N")
    to.add_argument("--to-datetime", metavar="ISO", help="e.g. 2024-05-01T12:00:00Z")
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true", help="commit the new offsets")
    mode.add_argument("--dry-run", action="store_true", help="only print the new offsets (the default)")
