"""How `shmlog produce` reads lines and `shmlog consume` prints them, in the
spellings people bring from Kafka's console tools and kcat:

- `--header KEY=VALUE` (repeatable): a header on every produced message;
- `--property NAME=VALUE`: kafka-console-producer's `parse.key`,
  `key.separator` and kafka-console-consumer's `print.key`,
  `print.timestamp`, `print.partition`, `print.offset`, `print.headers`,
  `key.separator`, mapped onto shmlog's own options;
- `--format FMT`: kcat's `-f` (see FORMAT_HELP).

Each item is checked while the command line is parsed (argparse types), so a
misspelt property or format field is a usage error (exit 2); options that
contradict each other are an InvalidConfig (exit 1) from produce_options /
consume_options - both before any supervisor is started. Nothing here talks
to the cluster."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import errors
from .common import separator_arg

FORMAT_FIELDS = {
    "t": "topic", "p": "partition", "o": "offset", "k": "key", "s": "value",
    "K": "key length (-1 for a null key)", "S": "value length (-1 for a null value)",
    "T": "timestamp (ms since the epoch)", "h": "headers as k=v,k2=v2",
}
FORMAT_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\"}
FORMAT_HELP = ("print each message as FMT, like kcat -f: " +
               ", ".join(f"%{k} {v}" for k, v in FORMAT_FIELDS.items()) +
               r", %% a percent sign; escapes \n \t \r \\. No newline is added: end FMT with \n")
# argparse %-expands help strings (for %(default)s): the fields' percent signs must be doubled
FORMAT_HELP_ARGPARSE = FORMAT_HELP.replace("%", "%%")


def header_arg(item: str) -> Tuple[str, bytes]:
    """("key", b"value") from KEY=VALUE; the value may be empty."""
    k, sep, v = item.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE for a header, got {item!r}")
    return k, v.encode()


def _bool(name: str, v: str) -> bool:
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise argparse.ArgumentTypeError(f"property {name} takes true or false, got {v!r}")


# property name -> (attribute of the parsed args, value converter)
PRODUCE_PROPERTIES: Dict[str, Tuple[str, Callable[[str, str], Any]]] = {
    "parse.key": ("parse_key", _bool),
    "key.separator": ("property_key_separator", lambda _n, v: separator_arg(v)),
}
CONSUME_PROPERTIES: Dict[str, Tuple[str, Callable[[str, str], Any]]] = {
    "print.key": ("print_key", _bool),
    "print.timestamp": ("print_timestamp", _bool),
    "print.partition": ("print_partition", _bool),
    "print.offset": ("print_offset", _bool),
    "print.headers": ("print_headers", _bool),
    "key.separator": ("key_separator", lambda _n, v: separator_arg(v)),
}


def property_arg(known: Dict[str, Tuple[str, Callable[[str, str], Any]]]) -> Callable[[str], Tuple[str, Any]]:
    """An argparse type for --property NAME=VALUE: (attribute, value)."""

    def parse(item: str) -> Tuple[str, Any]:
        name, sep, v = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
        if name not in known:
            raise argparse.ArgumentTypeError(
                f"unknown property {name!r}; this command knows {', '.join(sorted(known))}")
        attr, conv = known[name]
        return attr, conv(name, v)

    parse.__name__ = "property"  # argparse names the type in its messages
    return parse


def apply_properties(args: argparse.Namespace) -> None:
    """Set the options the --property items stand for (later ones win)."""
    for attr, value in getattr(args, "property", None) or []:
        setattr(args, attr, value)


def produce_options(args: argparse.Namespace) -> Tuple[Optional[bytes], Optional[List[Tuple[str, bytes]]]]:
    """Settle produce's key options (--property onto --key-separator) and
    return (the fixed key of --key, the headers of --header)."""
    apply_properties(args)
    if args.property_key_separator is not None and not args.parse_key:
        raise errors.InvalidConfig("--property key.separator needs --property parse.key=true (as in "
                                   "kafka-console-producer), or use --key-separator")
    if args.parse_key:
        # Kafka's console producer: parse.key=true splits at key.separator (tab by default)
        args.key_separator = args.key_separator or args.property_key_separator or "\t"
    if args.key is not None and args.key_separator:
        raise errors.InvalidConfig("--key gives every line the same key and --key-separator (parse.key) "
                                   "reads a key from each line: use one of them")
    return (None if args.key is None else args.key.encode()), (args.header or None)


def consume_options(args: argparse.Namespace) -> Optional[MessageFormat]:
    """Settle consume's print options (--property onto --print-*); the
    --format to print with, if any."""
    apply_properties(args)
    if args.format is not None and (args.print_key or args.print_offset or args.print_partition
                                    or args.print_timestamp or args.print_headers):
        raise errors.InvalidConfig("--format says what to print; drop the --print-* options "
                                   "(or print.* properties), or --format")
    return args.format


class MessageFormat:
    """A compiled --format: fmt(msg) -> the bytes to print for it."""

    def __init__(self, spec: str):
        self.spec = spec
        self.parts: List[Any] = []  # bytes literals and field letters (str)
        lit = bytearray()
        i = 0
        while i < len(spec):
            c = spec[i]
            if c == "%":
                f = spec[i + 1] if i + 1 < len(spec) else ""
                if f == "%":
                    lit += b"%"
                elif f in FORMAT_FIELDS:
                    if lit:
                        self.parts.append(bytes(lit))
                        lit.clear()
                    self.parts.append(f)
                else:
                    known = " ".join("%" + k for k in FORMAT_FIELDS)
                    got = f"'%{f}'" if f else "a lone '%' at the end"
                    raise argparse.ArgumentTypeError(
                        f"--format has {got}; fields are {known}, and %% prints a percent sign")
                i += 2
            elif c == "\\" and i + 1 < len(spec) and spec[i + 1] in FORMAT_ESCAPES:
                lit += FORMAT_ESCAPES[spec[i + 1]]
                i += 2
            else:
                lit += c.encode()
                i += 1
        if lit:
            self.parts.append(bytes(lit))

    def __call__(self, msg) -> bytes:
        out = []
        for part in self.parts:
            if part.__class__ is bytes:
                out.append(part)
            elif part == "s":
                out.append(b"" if msg.value is None else bytes(msg.value))
            elif part == "k":
                out.append(b"" if msg.key is None else bytes(msg.key))
            elif part == "o":
                out.append(b"%d" % msg.offset)
            elif part == "p":
                out.append(b"%d" % msg.partition)
            elif part == "t":
                out.append(msg.topic.encode())
            elif part == "T":
                out.append(b"%d" % msg.timestamp_ms)
            elif part == "K":
                out.append(b"%d" % (-1 if msg.key is None else len(msg.key)))
            elif part == "S":
                out.append(b"%d" % (-1 if msg.value is None else len(msg.value)))
            else:  # "h"
                out.append(headers_text(msg.headers, b"=", b","))
        return b"".join(out)


def format_arg(spec: str) -> MessageFormat:
    return MessageFormat(spec)


def headers_text(headers, kv: bytes, sep: bytes) -> bytes:
    """k=v,k2=v2 (a null value prints as null)."""
    return sep.join(k.encode() + kv + (b"null" if v is None else bytes(v)) for k, v in headers or ())
