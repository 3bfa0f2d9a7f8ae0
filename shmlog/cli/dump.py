"""`shmlog dump`: print a segment file's batches and check their CRCs; with
--print-data-log (Kafka's DumpLogSegments name) also each record's key,
value and headers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from .. import errors
from ..core.segment_dump import dump_segment, not_a_segment
from .common import (
    add_common,
    flag,
    out,
    print_json,
)


def _text(b) -> str:
    # keys and values are bytes: show text as text, anything else escaped
    return "null" if b is None else bytes(b).decode("utf-8", "backslashreplace")


def _records(res) -> List[Dict[str, Any]]:
    headers = res.headers or [()] * len(res)
    return [{"offset": o, "timestamp": ts, "key": _text(k), "value": _text(v),
             "headers": [[hk, _text(hv)] for hk, hv in h]}
            for o, ts, k, v, h in zip(res.offsets, res.timestamps, res.keys, res.values, headers)]


def cmd_dump(args) -> int:
    path = Path(args.segment)
    if not path.is_file():
        raise errors.StorageError(f"no such segment file: {path}", what=str(path))
    try:
        why = not_a_segment(path)
    except OSError as exc:
        raise errors.StorageError(f"cannot read segment {path}: {exc.strerror or exc}", what=str(path)) from None
    if why is not None:
        raise errors.StorageError(f"{path} is {why}", what=str(path))
    bad = []
    n = 0
    as_json = flag(args, "json")
    if not as_json:
        out(f"Dumping {path}")
    items = []
    try:
        for b in dump_segment(str(path), records=args.print_data_log):
            n += 1
            recs = _records(b.pop("records")) if "records" in b else None
            if as_json:
                if recs is not None:
                    b["records"] = recs
                items.append(b)
            else:
                line = (f"offset: {b.get('offset')} position: {b.get('position')} count: {b.get('count')} "
                        f"first_timestamp: {b.get('first_timestamp')} max_timestamp: {b.get('max_timestamp')} "
                        f"bytes: {b.get('bytes')} compression: {b.get('compression') or 'none'} "
                        f"crc_valid: {str(bool(b.get('crc_valid'))).lower()}")
                if b.get("error"):
                    line += f" error: {b['error']}"
                out(line)
                for r in recs or ():
                    text = f"| offset: {r['offset']} timestamp: {r['timestamp']} key: {r['key']} value: {r['value']}"
                    if r["headers"]:
                        text += " headers: " + ",".join(f"{k}={v}" for k, v in r["headers"])
                    out(text)
            if not b.get("crc_valid") or b.get("error"):
                bad.append(b)
    except OSError as exc:
        raise errors.StorageError(f"cannot read segment {path}: {exc.strerror or exc}", what=str(path)) from None
    if as_json:
        print_json(items)
    elif not args.quiet:
        out(f"{n} batches")
    if bad:
        b = bad[0]
        what = "a bad CRC" if not b.get("crc_valid") else "records that do not decode"
        raise errors.CorruptBatch(f"{len(bad)} bad batch(es) in {path}, the first ({what}) at offset "
                                  f"{b.get('offset')} position {b.get('position')}", what=str(path))
    return 0


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("dump", "print a segment file's batches and check their CRCs (exit 1 on a bad one)")
    add_common(p)
    p.add_argument("segment", metavar="SEGMENT_FILE")
    p.add_argument("--print-data-log", action="store_true",
                   help="also print each record: offset, timestamp, key, value, headers")
    p.add_argument("-q", "--quiet", action="store_true", help="no closing count line")
    p.set_defaults(func=cmd_dump)
