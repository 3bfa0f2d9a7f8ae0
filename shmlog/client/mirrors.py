"""Cluster.mirror, Cluster.mirrors and Cluster.stop_mirror: managed mirrors
to and from Kafka clusters, asked of the supervisor over the control socket
(ops mirror_start, mirrors, mirror_stop in protocol.py). The supervisor
runs each mirror as its own process (`python -m shmlog.bridge`) and restarts
it after a crash; this module never imports the bridge or the broker, so it
needs no Kafka client: the mirror's process does.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Union

from .. import errors, protocol
from ..osutil import pid_alive

START_TIMEOUT = 30.0  # the supervisor scans every 0.5 s; a child starts in ~1 s, more under load
STOP_TIMEOUT = 30.0


def start(cluster, topics: Union[str, Sequence[str], None] = None, *, to: Optional[str] = None,
          from_: Optional[str] = None, pattern: Optional[str] = None, as_: Optional[str] = None,
          name: Optional[str] = None, settings: Optional[Dict[str, Any]] = None,
          timeout: float = START_TIMEOUT, **options: Any) -> Dict[str, Any]:
    if (to is None) == (from_ is None):
        raise errors.InvalidConfig("mirror needs exactly one of to= (out to Kafka) or from_= (in from Kafka)")
    direction = "out" if to is not None else "in"
    spec = protocol.mirror_spec(direction, topics, to if to is not None else from_, pattern=pattern, as_=as_,
                                name=name, settings=settings, options=options)
    name = spec["name"]
    before = _row(cluster, name) or {}
    row = cluster.request("mirror_start", spec=spec)["mirror"]
    log = protocol.mirror_file(cluster.data_dir, name, "log")
    exits = row.get("exits") or 0
    deadline = time.monotonic() + timeout
    while True:
        row = _row(cluster, name) or {}
        if not row.get("managed"):
            raise errors.ShmlogError(f"mirror {name} was stopped while it started", what=name)
        pid = row.get("pid")
        fresh = row.get("updated") != before.get("updated") or before.get("state") in (None, "down", "stopped")
        # a status written by a live process of this registration, past its start
        if fresh and pid and pid_alive(pid) and row.get("state") not in ("starting", "down", "stopped"):
            return row
        if (row.get("exits") or 0) > exits:
            raise errors.ShmlogError(
                f"mirror {name} failed to start ({row.get('last_exit')}); see {log}. It stays registered "
                f"and the supervisor retries it: Cluster.stop_mirror({name!r}) or `shmlog mirror stop {name}` "
                f"removes it", what=name)
        if time.monotonic() > deadline:
            raise errors.ShmlogError(
                f"mirror {name} did not report running within {timeout:.0f}s (state {row.get('state')}); "
                f"see {log}. It stays registered and is retried: Cluster.stop_mirror({name!r}) or "
                f"`shmlog mirror stop {name}` removes it", what=name)
        time.sleep(0.1)


def rows(cluster) -> List[Dict[str, Any]]:
    return cluster.request("mirrors")["mirrors"]


def _row(cluster, name: str) -> Optional[Dict[str, Any]]:
    return next((r for r in rows(cluster) if r["name"] == name), None)


def stop(cluster, name: str, timeout: float = STOP_TIMEOUT) -> None:
    protocol.check_mirror_name(name)
    pid = cluster.request("mirror_stop", name=name).get("pid")
    deadline = time.monotonic() + timeout
    while pid and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid and pid_alive(pid):
        raise errors.ShmlogError(f"mirror {name} (pid {pid}) is still running {timeout:.0f}s after it was "
                                 f"stopped; see {protocol.mirror_file(cluster.data_dir, name, 'log')}", what=name)
