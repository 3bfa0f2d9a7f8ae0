"""Managed mirrors: one spec file per mirror under <data_dir>/mirrors/.

`shmlog mirror out|in` writes <name>.json; the supervisor (broker/mirrors.py,
which knows only these file names, not this package) starts
`python -m shmlog.bridge --data-dir D NAME` for each spec and restarts it
when it dies; `shmlog mirror stop NAME` removes the spec and the supervisor
stops the process. The mirror itself writes <name>.status.json every second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .. import errors
from ..osutil import write_json_atomic
from .base import check_name, mirrors_dir, status_path

SPEC_KEYS = {"name", "direction", "topics", "pattern", "bootstrap", "as", "config", "options"}


def spec_path(data_dir: Union[str, Path], name: str) -> Path:
    return mirrors_dir(data_dir) / f"{check_name(name)}.json"


def write_spec(data_dir: Union[str, Path], spec: Dict[str, Any]) -> Path:
    bad = set(spec) - SPEC_KEYS
    if bad or spec.get("direction") not in ("out", "in"):
        raise errors.InvalidConfig(f"bad mirror spec {spec!r}")
    path = spec_path(data_dir, spec["name"])
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_json_atomic(path, spec)
    return path


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
    if not isinstance(spec, dict) or set(spec) - SPEC_KEYS or spec.get("direction") not in ("out", "in"):
        raise errors.ShmlogError(f"mirror spec {path} is not a mirror spec", what=name)
    return spec


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
