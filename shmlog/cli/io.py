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


def cmd_produce(args) -> int:
    sep = args.key_separator.encode() if args.key_separator else None
    n = 0
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
                    key = None
                    if sep is not None:
                        if sep not in line:
                            producer.flush()
                            raise errors.ShmlogError(
                                f"line {lineno} of stdin has no key separator {args.key_separator!r} "
                                f"({n} messages sent before it)")
                        key, line = line.split(sep, 1)
                    producer.send(args.topic, line, key=key, partition=args.partition)
                    n += 1
            finally:
                producer.flush()
    if args.verbose:
        print(f"{n} messages sent to {args.topic}", file=sys.stderr)
    return 0


def cmd_consume(args) -> int:
    reset = "earliest" if args.from_beginning else "latest"
    if args.group and (args.partition is not None or args.offset is not None):
        raise errors.InvalidConfig("--partition/--offset read without a group; drop --group or them")
    if args.offset is not None and args.partition is None:
        raise errors.InvalidConfig("--offset needs --partition")
    n = 0
    out = sys.stdout.buffer
    sep = args.key_separator.encode()
    # what has been printed, per partition: a group commits exactly that
    # (auto-commit would also commit what was fetched but not printed)
    printed: Dict[Tuple[str, int], int] = {}
    with connect(args) as cluster:
        consumer = cluster.consumer(args.topic if args.partition is None else [], group=args.group,
                                    auto_offset_reset=reset, enable_auto_commit=False)
        try:
            if args.partition is not None:
                cluster.describe_topic(args.topic)
                consumer.assign([(args.topic, args.partition)])
                if args.offset is not None:
                    consumer.seek(args.topic, args.partition, args.offset)
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
                    msgs = msgs[:limit - n]
                chunks = []
                for msg in msgs:
                    if args.print_timestamp:
                        chunks.append(b"CreateTime:%d\t" % msg.timestamp_ms)
                    if args.print_partition:
                        chunks.append(b"Partition:%d\t" % msg.partition)
                    if args.print_offset:
                        chunks.append(b"Offset:%d\t" % msg.offset)
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
                if args.group and printed:
                    consumer.commit(offsets=printed)
            finally:
                consumer.close()
    print(f"Processed a total of {n} messages", file=sys.stderr)
    return 0


def register(sub, add) -> None:
    """Add these commands to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("produce", "send the lines of stdin to a topic, one message each")
    add_common(p, json_flag=False)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--key-separator", type=separator_arg, default=None, metavar="SEP",
                   help="each line is KEY SEP VALUE (e.g. ':' or '\\t')")
    p.add_argument("--partition", type=nonneg_int, default=None, help="send everything to this partition")
    p.add_argument("--linger-ms", type=float, default=5.0, help="batching delay (default 5)")
    p.add_argument("--compression", choices=["none", "lz4"], default=None)
    p.add_argument("-v", "--verbose", action="store_true", help="say how many messages were sent")
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
    p.add_argument("--key-separator", type=separator_arg, default="\t", metavar="SEP",
                   help="between key and value with --print-key (default tab)")
    p.set_defaults(func=cmd_consume)
