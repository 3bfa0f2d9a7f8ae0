"""Managed mirrors: one spec file per mirror under <data_dir>/mirrors/.

Cluster.mirror and `shmlog mirror out|in` send the spec to the supervisor
("mirror_start", its format and checks are in shmlog/protocol.py), which
writes <name>.json, starts `python -m shmlog.bridge --data-dir D NAME` for
it (broker/mirrors.py, which never imports this package) and restarts it
when it dies; `Cluster.stop_mirror` / `shmlog mirror stop NAME` removes the
spec and the supervisor stops the process. The mirror itself writes
<name>.status.json every second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .. import errors, protocol
from .base import mirrors_dir, status_path


def spec_path(data_dir: Union[str, Path], name: str) -> Path:
    return protocol.mirror_file(data_dir, name, "spec")


def read_spec(data_dir: Union[str, Path], name: str) -> Dict[str, Any]:
    path = spec_path(data_dir, name)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise errors.ShmlogError(f"no mirror named {name!r} in {mirrors_dir(data_dir)}", what=name) from None
    except ValueError as exc:
        raise errors.ShmlogError(f"mirror spec {path} is corrupt ({exc}); remove it with "
                                 f"`shmlog mirror stop {name}` and create the mirror again",
                                 what=name) from None
    try:
        return protocol.check_mirror_spec(spec)
    except errors.InvalidConfig as exc:
        raise errors.ShmlogError(f"mirror spec {path} is not a mirror spec: {exc}", what=name) from None


def read_status(data_dir: Union[str, Path], name: str) -> Optional[Dict[str, Any]]:
    try:
        st = json.loads(status_path(data_dir, name).read_text())
        return st if isinstance(st, dict) else None
    except (OSError, ValueError):
        return None


def names(data_dir: Union[str, Path]) -> List[str]:
    d = mirrors_dir(data_dir)
    try:
        return sorted(p.name[:-5] for p in d.iterdir()
                      if p.name.endswith(".json") and not p.name.endswith(".status.json")
                      and not p.name.endswith(".supervisor.json"))
    except FileNotFoundError:
        return []


def build(cluster, spec: Dict[str, Any]):
    """The MirrorOut/MirrorIn a spec describes (not started)."""
    from .mirror_in import MirrorIn
    from .mirror_out import MirrorOut

    opts = dict(spec.get("options") or {})
    if spec["direction"] == "out":
        return MirrorOut(cluster, spec.get("topics") or None, to=spec["bootstrap"], pattern=spec.get("pattern"),
                         remote_topic=spec.get("as"), name=spec["name"], config=spec.get("config"), **opts)
    topics = spec.get("topics") or []
    return MirrorIn(cluster, topics[0] if topics else "", from_=spec["bootstrap"], local_topic=spec.get("as"),
                    name=spec["name"], config=spec.get("config"), **opts)
