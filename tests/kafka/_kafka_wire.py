"""A raw Kafka wire client for the protocol tests: hand-built requests, so
the tests can send what no real client would (old versions, bad CRCs,
malformed frames). Record batches come from kafka-python's builder, an
implementation independent of the listener's."""

from __future__ import annotations

import socket
import struct
from typing import List, Optional, Tuple

from _kafka_helpers import recv_exact


def batch(values: List[Tuple[Optional[bytes], bytes]], *, producer_id: int = -1, epoch: int = -1,
          base_sequence: int = -1, codec: int = 0) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False,
                                  producer_id=producer_id, producer_epoch=epoch,
                                  base_sequence=base_sequence, batch_size=1 << 24)
    for i, (k, v) in enumerate(values):
        b.append(i, timestamp=1_700_000_000_000 + i, key=k, value=v, headers=[])
    return bytes(b.build())


def string(s: Optional[str]) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(s)) + s.encode()


def produce_body(version: int, topic: str, partition: int, records: bytes, acks: int = 1) -> bytes:
    out = b""
    if version >= 3:
        out += string(None)
    out += struct.pack(">hii", acks, 5000, 1) + string(topic) + struct.pack(">ii", 1, partition)
    return out + struct.pack(">i", len(records)) + records


def fetch_body(version: int, topic: str, partition: int, offset: int, max_wait: int = 0,
               min_bytes: int = 1) -> bytes:
    out = struct.pack(">iii", -1, max_wait, min_bytes)
    if version >= 3:
        out += struct.pack(">i", 1 << 20)
    if version >= 4:
        out += b"\x00"
    if version >= 7:
        out += struct.pack(">ii", 0, -1)
    out += struct.pack(">i", 1) + string(topic) + struct.pack(">ii", 1, partition)
    if version >= 9:
        out += struct.pack(">i", -1)
    out += struct.pack(">q", offset)
    if version >= 5:
        out += struct.pack(">q", -1)
    out += struct.pack(">i", 1 << 20)
    if version >= 7:
        out += struct.pack(">i", 0)
    if version >= 11:
        out += string("")
    return out


class Wire:
    def __init__(self, bootstrap: str, timeout: float = 10.0):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.corr = 0

    def send(self, api: int, version: int, body: bytes) -> int:
        self.corr += 1
        head = struct.pack(">hhi", api, version, self.corr) + string("wire-test")
        if api == 18 and version >= 3:
            head += b"\x00"  # request header v2: no tagged fields
        msg = head + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        return self.corr

    def recv(self) -> Optional[bytes]:
        """The response body after the correlation id, or None if closed."""
        try:
            head = recv_exact(self.sock, 4)
            if head is None:
                return None
            data = recv_exact(self.sock, struct.unpack(">i", head)[0])
        except ConnectionError:
            return None
        if data is None:
            return None
        assert struct.unpack(">i", data[:4])[0] == self.corr
        return data[4:]

    def call(self, api: int, version: int, body: bytes) -> Optional[bytes]:
        self.send(api, version, body)
        return self.recv()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def produce_result(version: int, resp: bytes) -> Tuple[int, int]:
    """(error code, base offset) of a one-partition Produce response."""
    pos = 4
    (n,) = struct.unpack_from(">h", resp, pos)
    pos += 2 + n + 4  # topic name, partition count
    _p, code, base = struct.unpack_from(">ihq", resp, pos)
    return code, base


def fetch_result(version: int, resp: bytes) -> Tuple[int, int, bytes]:
    """(error code, high watermark, records) of a one-partition Fetch response."""
    pos = 0
    if version >= 1:
        pos += 4
    if version >= 7:
        pos += 6
    pos += 4
    (n,) = struct.unpack_from(">h", resp, pos)
    pos += 2 + n + 4
    _p, code, hw = struct.unpack_from(">ihq", resp, pos)
    pos += 14
    if version >= 4:
        pos += 8
    if version >= 5:
        pos += 8
    if version >= 4:
        (na,) = struct.unpack_from(">i", resp, pos)
        pos += 4 + max(na, 0) * 16
    if version >= 11:
        pos += 4
    (rl,) = struct.unpack_from(">i", resp, pos)
    return code, hw, resp[pos + 4 : pos + 4 + max(rl, 0)]


def fuzz_templates(topic: str) -> List[Tuple[int, int, bytes]]:
    """Valid requests (api, version, body) that fuzz_frame mutates."""
    good = batch([(b"k", b"v")])
    return [
        (0, 8, produce_body(8, topic, 0, good)),
        (0, 3, produce_body(3, topic, 0, good)),
        (1, 11, fetch_body(11, topic, 0, 0)),
        (1, 4, fetch_body(4, topic, 0, 0)),
        (3, 8, struct.pack(">i", 1) + string(topic) + b"\x00\x00\x00"),
        (2, 5, struct.pack(">ib", -1, 0) + struct.pack(">i", 1) + string(topic)
         + struct.pack(">iiiq", 1, 0, -1, -1)),
        (11, 5, string("fz") + struct.pack(">ii", 10000, 10000) + string("") + string(None)
         + string("consumer") + struct.pack(">i", 1) + string("range") + struct.pack(">i", 0)),
        (8, 7, string("fz") + struct.pack(">i", -1) + string("") + string(None) + struct.pack(">i", 0)),
    ]


def fuzz_frame(rng, templates) -> bytes:
    """One malformed request (size prefix included): a valid one with bytes
    flipped, truncated, a length field overwritten, or random bytes."""
    api, ver, body = rng.choice(templates)
    head = struct.pack(">hhi", api, ver, 7) + string("fz")
    frame = bytearray(head + body)
    kind = rng.random()
    if kind < 0.4:
        for _ in range(rng.randint(1, 6)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
    elif kind < 0.7:
        frame = frame[: rng.randrange(len(frame))]
    elif kind < 0.8:
        frame = bytearray(rng.randbytes(rng.randint(0, 200)))
    else:
        pos = rng.randrange(len(head), len(frame))
        frame[pos:pos + 4] = struct.pack(">i", rng.choice([-1, 0x7FFFFFFF, -0x80000000, 1 << 20]))
    return struct.pack(">i", len(frame)) + bytes(frame)


def fuzz_run(bootstrap: str, frames: int, seed: int) -> Tuple[int, int]:
    """Send `frames` malformed requests, reconnecting whenever the listener
    closes. Returns (frames sent, frames that got neither an answer nor a
    close within 0.5 s: long polls a mutated Fetch asked for)."""
    import random

    rng = random.Random(seed)
    templates = fuzz_templates("fuzz")
    host, port = bootstrap.rsplit(":", 1)
    s = None
    sent = slow = 0
    for _ in range(frames):
        if s is None:
            s = socket.create_connection((host, int(port)), timeout=5)
        try:
            s.sendall(fuzz_frame(rng, templates))
            s.settimeout(0.5)
            if not s.recv(1 << 16):
                s.close()
                s = None
        except socket.timeout:
            slow += 1
            s.close()
            s = None
        except ConnectionError:
            s.close()
            s = None
        sent += 1
    if s is not None:
        s.close()
    return sent, slow
