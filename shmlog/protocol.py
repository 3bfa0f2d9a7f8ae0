"""The control protocol between clients and the supervisor.

Frames are a 4-byte big-endian length then a UTF-8 JSON object, at most
MAX_FRAME bytes. Requests are {"op": <name>, ...}; replies are
{"ok": true, ...} or {"ok": false, "error": <class>, "message": <text>}.
Never pickle: anyone who can reach the socket must not be able to run code.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any, Dict, Optional

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
