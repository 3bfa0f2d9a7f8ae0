"""The `shmlog` command line: serve, topics, produce, consume, groups, perf,
dump, top, stats, demo. Exit codes: 0 ok, 1 error (one line on stderr),
2 usage."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from .. import config as cfgmod
from .. import errors
from . import mirror


def _parse_value(v: str):
    if v.lower() in ("none", "null"):
        return None
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def _kv(items: Optional[List[str]]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"shmlog: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def cmd_serve(args) -> int:
    from ..broker.supervisor import serve

    if args.detach:
        # double fork: the supervisor is nobody's child and outlives the
        # client that started it only until idle_timeout_s
        pid = os.fork()
        if pid > 0:
            return 0
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return serve(Path(args.data_dir), auto=args.auto, **_kv(args.set))
    except errors.ShmlogError as exc:
        print(f"shmlog serve: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shmlog", description="Kafka's model over shared memory, for one host.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--data-dir", default=str(cfgmod.default_data_dir()),
                        help="data dir (default $SHMLOG_DATA_DIR or ./shmlog-data)")
        return sp

    sp = add("serve", "run the supervisor in the foreground")
    sp.add_argument("--auto", action="store_true", help="exit when no client is left for idle_timeout_s")
    sp.add_argument("--detach", action="store_true", help="run in the background")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="broker setting, e.g. idle_timeout_s=30")
    sp.set_defaults(func=cmd_serve)
    try:
        from . import tools
    except ImportError:
        tools = None
    if tools is not None:
        tools.register(sub, add)
    mirror.register(sub, add)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except errors.ShmlogError as exc:
        print(f"shmlog {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
