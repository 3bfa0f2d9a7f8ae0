"""The control protocol between clients and the supervisor.

Frames are a 4-byte big-endian length then a UTF-8 JSON object, at most
MAX_FRAME bytes. Requests are {"op": <name>, ...}; replies are
{"ok": true, ...} or {"ok": false, "error": <class>, "message": <text>}.
Never pickle: anyone who can reach the socket must not be able to run code.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from . import errors

# the files by which a client finds the supervisor of a data dir
SOCKET_NAME = "shmlog.sock"
LOCK_NAME = "supervisor.lock"

MAX_FRAME = 1 << 20
_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    pass


def encode(msg: Dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"control message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def decode_body(body: bytes) -> Dict[str, Any]:
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"control message is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("control message is nested too deeply") from None
    if not isinstance(msg, dict):
        raise ProtocolError("control message must be a JSON object")
    return msg


def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> Optional[Dict[str, Any]]:
    """One message, or None on a clean EOF."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ProtocolError(f"control frame of {n} bytes exceeds {MAX_FRAME}")
    body = _recv_exact(sock, n)
    if body is None:
        raise ProtocolError("connection closed mid-frame")
    return decode_body(body)


def send(sock: socket.socket, msg: Dict[str, Any]) -> None:
    sock.sendall(encode(msg))


def field(msg: Dict[str, Any], name: str, kind, *, required: bool = True, default=None):
    """Schema check for one request field."""
    if name not in msg:
        if required:
            raise ProtocolError(f"request {msg.get('op')!r} is missing field {name!r}")
        return default
    v = msg[name]
    if kind is int and isinstance(v, bool):
        raise ProtocolError(f"field {name!r} must be int")
    if not isinstance(v, kind):
        kn = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(f"field {name!r} must be {kn}, got {type(v).__name__}")
    return v


def ensure_data_dir(data_dir: Path) -> Path:
    """Create the data dir 0700 (invariant 6) or say why it cannot be used."""
    data_dir = Path(data_dir).absolute()
    if data_dir.exists() and not data_dir.is_dir():
        raise errors.ShmlogError(
            f"data dir {data_dir} is not a directory (a file is in the way); choose another path "
            f"with --data-dir or $SHMLOG_DATA_DIR", what=str(data_dir))
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.ShmlogError(
            f"cannot create data dir {data_dir}: {exc.strerror}; choose a writable path "
            f"with --data-dir or $SHMLOG_DATA_DIR",
            what=str(data_dir),
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise errors.ShmlogError(
            f"data dir {data_dir} is not writable; choose a writable path with --data-dir "
            f"or $SHMLOG_DATA_DIR",
            what=str(data_dir),
        )
    return data_dir


# ------------------------------------------------------------ mirrors
# A managed mirror (issue 15) is a spec that Cluster.mirror and `shmlog mirror
# out|in` send in a "mirror_start" op; the supervisor (broker/mirrors.py)
# writes it to <data_dir>/mirrors/<name>.json and runs `python -m
# shmlog.bridge` for it, which reads it back (bridge/spec.py). The three meet
# here, since client, broker and bridge may not import each other. Ops:
# mirror_start {spec} -> {mirror: row}, mirror_stop {name} -> {pid},
# mirrors {} -> {mirrors: [row, ...]} (rows as in the stats op's "mirrors").
MIRRORS_DIR = "mirrors"
MIRROR_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
MIRROR_SPEC_KEYS = ("name", "direction", "topics", "pattern", "bootstrap", "as", "config", "options")
# the keyword options of bridge.MirrorOut / MirrorIn that a spec may carry,
# checked here (type and range) so that a bad value fails in the caller, not
# in a child that the supervisor would restart forever (tests/bridge keep
# these in step with the constructors): name -> (types, valid?, what it must
# be, the CLI flag if there is one)
MIRROR_OPTIONS = {
    "out": {
        "max_in_flight": (int, lambda v: v >= 1, "a count of messages >= 1: the most sent but not yet committed, "
                          "so the most a crash can send twice", "--max-in-flight"),
        "commit_interval_ms": ((int, float), lambda v: v >= 0, "milliseconds >= 0", None),
        "replication_factor": (int, lambda v: v == -1 or v >= 1, "-1 (the cluster's default) or >= 1",
                               "--replication-factor"),
        "create_remote": (bool, None, "true or false", None),
        "stall_timeout_s": ((int, float), lambda v: v > 0, "seconds > 0", None),
    },
    "in": {
        "batch": (int, lambda v: v >= 1, "a count of messages >= 1", None),
        "topic_config": (dict, None, "settings of a shmlog topic", "--topic-config"),
    },
}
# librdkafka settings that mirror out's guarantees rest on (see
# bridge/base.py, DUPLICATE_BOUND): -X may repeat them, not change them
MIRROR_OUT_FIXED_SETTINGS = {
    "enable.idempotence": ("true", "its no-loss, no-duplicate guarantee rests on an idempotent producer"),
    "enable.gapless.guarantee": ("true", "a failed batch must stop the producer, not leave a gap"),
    "message.timeout.ms": ("0", "a message that timed out would leave a gap in Kafka"),
    "delivery.timeout.ms": ("0", "a message that timed out would leave a gap in Kafka"),
}
_TRUE = ("true", "1", "t")


def check_mirror_options(direction: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Each option known for the direction, of the right type and in range;
    InvalidConfig naming the option, what is wrong and what it must be."""
    known = MIRROR_OPTIONS[direction]
    for k, v in options.items():
        if k not in known:
            raise errors.InvalidConfig(f"unknown option {k!r} for a mirror {direction}: use one of "
                                       f"{', '.join(sorted(known))}", what=str(k))
        kinds, valid, must, flag = known[k]
        name = f"{k} ({flag})" if flag else k
        if not isinstance(v, kinds) or (isinstance(v, bool) and kinds is not bool):
            raise errors.InvalidConfig(f"mirror {direction} option {name}={v!r} has type {type(v).__name__}: it must "
                                       f"be {must}", what=k)
        if valid is not None and not valid(v):
            raise errors.InvalidConfig(f"mirror {direction} option {name}={v!r} is out of range: it must be "
                                       f"{must}", what=k)
        if k == "topic_config":
            from .config import topic_config

            try:
                topic_config(v)
            except errors.InvalidConfig as exc:
                raise errors.InvalidConfig(f"mirror in option {name}: {exc}", what=k) from None
    return options


def check_mirror_settings(direction: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """librdkafka settings (-X): name=value, and for out none that would
    break its guarantees."""
    for k, v in settings.items():
        if not isinstance(k, str) or not k or not isinstance(v, (str, int, float, bool)):
            raise errors.InvalidConfig(f"mirror setting {k!r}={v!r}: librdkafka settings are "
                                       f"name=value (string, number or bool)", what=str(k))
        fixed = MIRROR_OUT_FIXED_SETTINGS.get(k) if direction == "out" else None
        if fixed is not None:
            want, why = fixed
            got = str(v).strip().lower()
            if (got in _TRUE) != (want == "true") or (want != "true" and got != want):
                raise errors.InvalidConfig(f"mirror out setting {k}={v!r} is not allowed: mirror out needs "
                                           f"{k}={want} ({why}); leave it out", what=k)
    return settings


def mirrors_dir(data_dir: Union[str, Path]) -> Path:
    return Path(data_dir) / MIRRORS_DIR


def mirror_file(data_dir: Union[str, Path], name: str, kind: str = "spec") -> Path:
    """<data_dir>/mirrors/<name>.json (spec), .status.json (written by the
    mirror every second) or .log (its stdout and stderr)."""
    suffix = {"spec": ".json", "status": ".status.json", "log": ".log"}[kind]
    return mirrors_dir(data_dir) / f"{check_mirror_name(name)}{suffix}"


def check_mirror_name(name: Any) -> str:
    if not isinstance(name, str) or not MIRROR_NAME_RE.match(name):
        raise errors.InvalidConfig(
            f"invalid mirror name {name!r}: use 1-200 letters, digits, '.', '_' or '-'", what=str(name))
    return name


def default_mirror_name(direction: str, topics: Sequence[str], pattern: Optional[str]) -> str:
    base = "pattern" if pattern else "+".join(topics)
    return check_mirror_name(re.sub(r"[^A-Za-z0-9._-]", "_", f"{direction}.{base}")[:200])


def mirror_spec(direction: Any, topics: Union[str, Sequence[str], None], bootstrap: Any, *,
                pattern: Optional[str] = None, as_: Optional[str] = None, name: Optional[str] = None,
                settings: Optional[Dict[str, Any]] = None, options: Optional[Dict[str, Any]] = None
                ) -> Dict[str, Any]:
    """A checked managed-mirror spec; errors name what is wrong."""
    if direction not in ("out", "in"):
        raise errors.InvalidConfig(f"unknown mirror direction {direction!r}: use 'out' (to Kafka) or 'in' "
                                   f"(from Kafka)", what=str(direction))
    if isinstance(topics, str):
        topics = [t for t in topics.split(",") if t]
    topics = list(topics or [])
    if not all(isinstance(t, str) and t for t in topics):
        raise errors.InvalidConfig(f"mirror topics must be non-empty names, got {topics!r}")
    if not isinstance(bootstrap, str) or not bootstrap.strip():
        raise errors.InvalidConfig(f"mirror {direction} needs the Kafka bootstrap servers (host:port[,...]), "
                                   f"got {bootstrap!r}")
    if direction == "out":
        if bool(topics) == bool(pattern):
            raise errors.InvalidConfig("mirror out needs topics (T[,T2...]) or a pattern (RE), one of the two")
        if as_ is not None and len(topics) != 1:
            raise errors.InvalidConfig("a remote topic name (as) needs exactly one local topic")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise errors.InvalidConfig(f"mirror pattern {pattern!r} is not a regular expression: {exc}",
                                           what=pattern) from None
    elif pattern is not None or len(topics) != 1:
        raise errors.InvalidConfig(f"mirror in takes exactly one remote topic (no pattern), got "
                                   f"{pattern or topics!r}")
    if as_ is not None and (not isinstance(as_, str) or not as_):
        raise errors.InvalidConfig(f"the topic's name on the other side (as) must be a name, got {as_!r}")
    if not isinstance(settings or {}, dict) or not isinstance(options or {}, dict):
        raise errors.InvalidConfig("mirror settings and options are name -> value mappings")
    settings = check_mirror_settings(direction, dict(settings or {}))
    options = check_mirror_options(direction, dict(options or {}))
    name = check_mirror_name(name if name is not None else
                             default_mirror_name(direction, [as_ or topics[0]] if direction == "in" else topics,
                                                 pattern))
    return {"name": name, "direction": direction, "topics": topics, "pattern": pattern,
            "bootstrap": bootstrap, "as": as_, "config": settings, "options": options}


def check_mirror_spec(spec: Any) -> Dict[str, Any]:
    """A spec from the socket or a spec file, checked as mirror_spec checks."""
    if not isinstance(spec, dict) or set(spec) - set(MIRROR_SPEC_KEYS) or "direction" not in spec:
        raise errors.InvalidConfig(f"not a mirror spec: {spec!r} (keys {', '.join(MIRROR_SPEC_KEYS)})")
    out = mirror_spec(spec["direction"], spec.get("topics"), spec.get("bootstrap"), pattern=spec.get("pattern"),
                      as_=spec.get("as"), name=spec.get("name"), settings=spec.get("config"),
                      options=spec.get("options"))
    if "name" not in spec:
        raise errors.InvalidConfig("a mirror spec needs its name")
    return out
