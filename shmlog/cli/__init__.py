"""The `shmlog` command line: serve, topics, produce, consume, groups, perf,
dump, stats, top, demo, mirror; one module per command family, each with its own
register(). Exit codes: 0 ok, 1 error (one line on stderr), 2 usage."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .. import config as cfgmod
from .. import errors
from . import demo, dump, groups, io, mirror, perf, serve, stats, top, topics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shmlog", description="Kafka's model over shared memory, for one host.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--data-dir", default=str(cfgmod.default_data_dir()),
                        help="data dir (default $SHMLOG_DATA_DIR or ./shmlog-data)")
        return sp

    for family in (serve, topics, io, groups, perf, dump, stats, top, demo, mirror):
        family.register(sub, add)
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
