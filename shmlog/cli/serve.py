"""`shmlog serve`: run the supervisor of a data dir, in the foreground or detached."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .. import errors
from ..broker.supervisor import serve
from .common import kv_arg


def cmd_serve(args) -> int:
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
        return serve(Path(args.data_dir), auto=args.auto, **dict(args.set or []))
    except errors.ShmlogError as exc:
        print(f"shmlog serve: {exc}", file=sys.stderr)
        return 1


def register(sub, add) -> None:
    """Add `serve` to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    sp = add("serve", "run the supervisor in the foreground")
    sp.add_argument("--auto", action="store_true", help="exit when no client is left for idle_timeout_s")
    sp.add_argument("--detach", action="store_true", help="run in the background")
    sp.add_argument("--set", action="append", type=kv_arg, metavar="KEY=VALUE",
                    help="broker setting, e.g. idle_timeout_s=30")
    sp.set_defaults(func=cmd_serve)
