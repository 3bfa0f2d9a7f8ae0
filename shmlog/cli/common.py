"""Helpers every `shmlog` command shares: argument types, --no-start/--json,
connecting to the data dir's supervisor, and plain output (tables, JSON).

Errors leave as ShmlogError, which `shmlog.cli.main` turns into exit 1 and
one line on stderr; argparse turns usage errors into exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .. import errors
from ..config import parse_setting


def kv_arg(item: str) -> Tuple[str, Any]:
    try:
        return parse_setting(item)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def nonneg_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v!r}")
    return n


def separator_arg(v: str) -> str:
    # accept the escapes people type in a shell: \t, \n
    v = v.encode().decode("unicode_escape") if "\\" in v else v
    if not v:
        raise argparse.ArgumentTypeError("the separator must not be empty")
    return v


def add_common(p: argparse.ArgumentParser, *, json_flag: bool = True, nested: bool = False) -> None:
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


def flag(args: argparse.Namespace, name: str) -> bool:
    return bool(getattr(args, name, False))


def connect(args: argparse.Namespace):
    """The cluster of --data-dir; with --no-start, BrokerNotRunning if none runs."""
    from ..client.cluster import connect as _connect

    no_start = flag(args, "no_start")
    if no_start and not Path(args.data_dir).is_dir():
        # do not create an empty data dir just to find nobody serving it
        raise errors.BrokerNotRunning(f"no supervisor is serving {Path(args.data_dir).absolute()} "
                                      f"(the directory does not exist)", what=str(args.data_dir))
    return _connect(args.data_dir, start=not no_start)


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], indent: str = "") -> List[str]:
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def print_json(obj: Any) -> None:
    out(json.dumps(obj, indent=2, sort_keys=True, default=str))


def topic_dict(info) -> Dict[str, Any]:
    parts = []
    for p in info.partitions:
        d = {"partition": p.partition, "start_offset": p.start_offset, "end_offset": p.end_offset,
             "durable_offset": p.durable_offset, "bytes": p.bytes}
        d.update(p.extra)
        parts.append(d)
    return {"name": info.name, "topic_id": info.topic_id, "config": info.config, "partitions": parts}


def add_nested(parent_sub, name: str, help_: str, *, json_flag: bool = True) -> argparse.ArgumentParser:
    """A sub-command of a command family (`topics create`, `groups describe`)."""
    sp = parent_sub.add_parser(name, help=help_, description=help_)
    add_common(sp, json_flag=json_flag, nested=True)
    return sp
