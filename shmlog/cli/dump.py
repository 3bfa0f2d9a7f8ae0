"""`shmlog dump`: print a segment file's batches and check their CRCs."""
from __future__ import annotations

from pathlib import Path

from .. import errors
from ..core.segments import dump_segment
from .common import (
    add_common,
    flag,
    out,
    print_json,
)


def cmd_dump(args) -> int:
    path = Path(args.segment)
    if not path.is_file():
        raise errors.StorageError(f"no such segment file: {path}", what=str(path))
    bad = []
    n = 0
    as_json = flag(args, "json")
    if not as_json:
        out(f"Dumping {path}")
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
                out(line)
            if not b.get("crc_valid"):
                bad.append(b)
    except OSError as exc:
        raise errors.StorageError(f"cannot read segment {path}: {exc.strerror or exc}", what=str(path)) from None
    if as_json:
        print_json(items)
    elif not args.quiet:
        out(f"{n} batches")
    if bad:
        b = bad[0]
        raise errors.CorruptBatch(f"{len(bad)} batch(es) with a bad CRC in {path}, the first at offset "
                                  f"{b.get('offset')} position {b.get('position')}", what=str(path))
    return 0


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("dump", "print a segment file's batches and check their CRCs (exit 1 on a bad one)")
    add_common(p)
    p.add_argument("segment", metavar="SEGMENT_FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no closing count line")
    p.set_defaults(func=cmd_dump)
