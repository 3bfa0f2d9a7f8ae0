"""`shmlog produce` (lines of stdin) and `shmlog consume` (to stdout)."""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, Tuple

from .. import errors
from .common import (
    add_common,
    connect,
    nonneg_int,
    separator_arg,
)
from .lines import (
    CONSUME_PROPERTIES,
    FORMAT_HELP_ARGPARSE,
    PRODUCE_PROPERTIES,
    consume_options,
    format_arg,
    header_arg,
    headers_text,
    produce_options,
    property_arg,
)


def cmd_produce(args) -> int:
    fixed_key, headers = produce_options(args)
    sep = args.key_separator.encode() if args.key_separator else None
    n = skipped = 0
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
                    key = fixed_key
                    if sep is not None:
                        if sep not in line:
                            if args.skip_bad_lines:
                                skipped += 1
                                print(f"shmlog produce: skipped line {lineno} of stdin: no key separator "
                                      f"{args.key_separator!r}", file=sys.stderr)
                                continue
                            producer.flush()
                            raise errors.ShmlogError(
                                f"line {lineno} of stdin has no key separator {args.key_separator!r}: "
                                f"{n} message(s) before it sent, nothing from it on (--skip-bad-lines "
                                f"skips such lines and goes on)")
                        key, line = line.split(sep, 1)
                    producer.send(args.topic, line, key=key, headers=headers, partition=args.partition)
                    n += 1
            finally:
                producer.flush()
    if args.verbose or skipped:
        print(f"{n} messages sent to {args.topic}" + (f", {skipped} line(s) skipped" if skipped else ""),
              file=sys.stderr)
    return 0


def cmd_consume(args) -> int:
    fmt = consume_options(args)
    reset = "earliest" if args.from_beginning else "latest"
    if args.group and (args.partition is not None or args.offset is not None):
        raise errors.InvalidConfig("--partition/--offset read without a group; drop --group or them")
    if args.offset is not None and args.partition is None:
        raise errors.InvalidConfig("--offset needs --partition")
    n = 0
    out = sys.stdout.buffer
    # between every printed column, as kafka-console-consumer's key.separator
    sep = args.key_separator.encode()
    # what has been printed, per partition: a group commits exactly that
    # (auto-commit would also commit what was fetched but not printed)
    printed: Dict[Tuple[str, int], int] = {}
    unprinted: Dict[Tuple[str, int], int] = {}  # fetched past --max-messages: first offset not printed
    with connect(args) as cluster:
        consumer = cluster.consumer(args.topic if args.partition is None else [], group=args.group,
                                    auto_offset_reset=reset, enable_auto_commit=False)
        try:
            if args.partition is not None:
                cluster.describe_topic(args.topic)
                consumer.assign([(args.topic, args.partition)])
                if args.offset is not None:
                    # an offset the partition does not have is an error to
                    # report, not a reason to wait silently (or to read elsewhere)
                    consumer.auto_offset_reset = "error"
                    try:
                        consumer.seek(args.topic, args.partition, args.offset)
                    finally:
                        consumer.auto_offset_reset = reset
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
                    for msg in msgs[limit - n:]:
                        unprinted.setdefault((msg.topic, msg.partition), msg.offset)
                    msgs = msgs[:limit - n]
                chunks = []
                for msg in msgs:
                    if fmt is not None:
                        chunks.append(fmt(msg))
                        continue
                    if args.print_timestamp:
                        chunks.append(b"CreateTime:%d" % msg.timestamp_ms + sep)
                    if args.print_partition:
                        chunks.append(b"Partition:%d" % msg.partition + sep)
                    if args.print_offset:
                        chunks.append(b"Offset:%d" % msg.offset + sep)
                    if args.print_headers:
                        chunks.append((headers_text(msg.headers, b":", b",") or b"NO_HEADERS") + sep)
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
                if args.group:
                    consumer.commit(offsets=_group_positions(consumer, printed, unprinted))
            finally:
                consumer.close()
    print(f"Processed a total of {n} messages", file=sys.stderr)
    return 0


def _group_positions(consumer, printed: Dict[Tuple[str, int], int],
                     unprinted: Dict[Tuple[str, int], int]) -> Dict[Tuple[str, int], int]:
    """What the group commits on exit: after the last message printed, and
    for a partition with nothing printed its current position (the reset
    point), as Kafka's consumer commits on close: a group that read nothing
    must not reset to "latest" again next time and skip what came meanwhile."""
    owned = consumer.assignment()
    offsets = {tp: consumer.position(*tp) for tp in owned}
    offsets.update(printed)
    offsets.update(unprinted)
    # a partition that moved to another member is that member's to commit
    return {tp: o for tp, o in offsets.items() if tp in owned}


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("produce", "send the lines of stdin to a topic, one message each")
    add_common(p, json_flag=False)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--key-separator", type=separator_arg, default=None, metavar="SEP",
                   help="each line is KEY SEP VALUE (e.g. ':' or '\\t')")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="with --key-separator: skip (and report) a line without it instead of stopping there")
    p.add_argument("--partition", type=nonneg_int, default=None, help="send everything to this partition")
    p.add_argument("--linger-ms", type=float, default=5.0, help="batching delay (default 5)")
    p.add_argument("--compression", choices=["none", "lz4"], default=None)
    p.add_argument("--key", default=None, metavar="KEY", help="the same key for every line")
    p.add_argument("--header", type=header_arg, action="append", metavar="KEY=VALUE",
                   help="a header on every message (repeatable)")
    p.add_argument("--property", type=property_arg(PRODUCE_PROPERTIES), action="append", metavar="NAME=VALUE",
                   help="kafka-console-producer's parse.key=true and key.separator=SEP (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="say how many messages were sent")
    p.set_defaults(parse_key=False, property_key_separator=None)
    p.set_defaults(func=cmd_produce)

    p = add("consume", "print a topic's messages to stdout")
    add_common(p, json_flag=False)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--group", default=None, help="consumer group (default: none, read every partition)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the earliest offset when there is no committed one (default: latest)")
    p.add_argument("--partition", type=nonneg_int, default=None, help="read only this partition")
    p.add_argument("--offset", type=nonneg_int, default=None, help="with --partition: start here")
    p.add_argument("--max-messages", type=nonneg_int, default=None, help="exit after this many")
    p.add_argument("--timeout-ms", type=nonneg_int, default=None,
                   help="exit when no message arrived for this long")
    p.add_argument("--print-key", action="store_true", help="print KEY SEP VALUE")
    p.add_argument("--print-offset", action="store_true", help="prefix Offset:N")
    p.add_argument("--print-partition", action="store_true", help="prefix Partition:N")
    p.add_argument("--print-timestamp", action="store_true", help="prefix CreateTime:MS")
    p.add_argument("--print-headers", action="store_true", help="prefix k:v,k2:v2 (or NO_HEADERS)")
    p.add_argument("--key-separator", type=separator_arg, default="\t", metavar="SEP",
                   help="between the columns the --print-* options print (default tab)")
    p.add_argument("--format", type=format_arg, default=None, metavar="FMT", help=FORMAT_HELP_ARGPARSE)
    p.add_argument("--property", type=property_arg(CONSUME_PROPERTIES), action="append", metavar="NAME=VALUE",
                   help="kafka-console-consumer's print.key, print.timestamp, print.partition, print.offset, "
                        "print.headers (=true/false) and key.separator=SEP (repeatable)")
    p.set_defaults(func=cmd_consume)
