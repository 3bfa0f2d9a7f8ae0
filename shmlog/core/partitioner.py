"""Key → partition, as Kafka does it: toPositive(murmur2(key)) % partitions.

The hash runs in C; send() looks keys up in a bounded cache first so a hot
key costs one dict lookup, not a crossing into C.
"""

from __future__ import annotations

from ._core import ffi, lib


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 (signed 32-bit result, like Utils.murmur2)."""
    return lib.shmlog_murmur2(ffi.from_buffer(key), len(key))


def partition_for(key: bytes, num_partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class KeyPartitioner:
    """Caches key → partition for one topic's partition count."""

    __slots__ = ("num_partitions", "_cache", "_limit")

    def __init__(self, num_partitions: int, limit: int = 1 << 16):
        self.num_partitions = num_partitions
        self._cache: dict = {}
        self._limit = limit

    def __call__(self, key) -> int:
        if key.__class__ is not bytes:
            # check and convert first: bytearray and writable memoryviews are
            # unhashable, and a list would fail as "unhashable", not as a key
            if not isinstance(key, (bytearray, memoryview)):
                raise TypeError(
                    f"key must be bytes-like, got {type(key).__name__}; encode str with .encode()"
                )
            key = bytes(key)
        p = self._cache.get(key)
        if p is None:
            p = (lib.shmlog_murmur2(ffi.from_buffer(key), len(key)) & 0x7FFFFFFF) % self.num_partitions
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[key] = p
        return p
