"""The `shmlog` command line: serve, topics, produce, consume, groups, perf,
dump, stats, top, demo, soak, mirror; one module per command family, each with its own
register(). Exit codes: 0 ok, 1 error (one line on stderr), 2 usage.

Global options (--data-dir, --json, --no-start) are taken before or after
the command; no option may be abbreviated (argparse's prefix matching would
silently read `--key` as `--key-separator`)."""

from __future__ import annotations

import argparse
import sys
from typing import Iterator, List, Optional

from .. import config as cfgmod
from .. import errors
from . import demo, dump, groups, io, mirror, perf, serve, soak, stats, top, topics
from .common import DATA_DIR_HELP

# the top-level copies of the per-command flags land in their own dests: a
# subcommand's namespace is copied over the top-level one afterwards
# (argparse), which would otherwise reset them to the subcommand's defaults
_GLOBAL_FLAGS = (("--json", "global_json", "json", "print JSON instead of a table"),
                 ("--no-start", "global_no_start", "no_start",
                  "fail instead of starting a supervisor when none runs"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shmlog", description="Kafka's model over shared memory, for one host.",
                                allow_abbrev=False)
    # default SUPPRESS everywhere: whichever --data-dir is given, before or
    # after the command, survives; main() fills in the default
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help=DATA_DIR_HELP)
    for opt, dest, _name, help_ in _GLOBAL_FLAGS:
        p.add_argument(opt, dest=dest, action="store_true", help=help_ + " (commands that have it)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_, allow_abbrev=False)
        sp.add_argument("--data-dir", default=argparse.SUPPRESS, help=DATA_DIR_HELP)
        return sp

    for family in (serve, topics, io, groups, perf, dump, stats, top, demo, soak, mirror):
        family.register(sub, add)
    for parser in walk(p):
        parser.allow_abbrev = False  # also on parsers a family made itself
    return p


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every sub-command parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from walk(child)


def _apply_globals(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Top-level --json/--no-start onto the command, which must have them."""
    if not hasattr(args, "data_dir"):
        args.data_dir = str(cfgmod.default_data_dir())
    for opt, dest, name, _help in _GLOBAL_FLAGS:
        if getattr(args, dest, False):
            if not hasattr(args, name):
                parser.error(f"{args.command} does not take {opt}")
            setattr(args, name, True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _apply_globals(parser, args)
    try:
        return args.func(args) or 0
    except errors.ShmlogError as exc:
        print(f"shmlog {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
