"""Managed mirrors: the supervisor keeps one child process running per spec
file <data_dir>/mirrors/<name>.json, restarts it with backoff when it dies,
and stops it when the spec goes or the supervisor shuts down. Clients
(Cluster.mirror, `shmlog mirror out|in|list|stop`) reach it through the
ops mirror_start, mirror_stop and mirrors (protocol.py): this module writes
and removes the spec files, one path for every caller.

It knows the mirrors only by their files and their command line
(`python -m shmlog.bridge --data-dir D NAME`): it never imports the bridge
(broker -> core only), so a broken or missing Kafka client can never take
the supervisor down — the child fails, says why in its log, and is retried.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil

from .. import errors, protocol
from ..osutil import pid_alive, write_json_atomic

log = logging.getLogger("shmlog.mirrors")

MIRRORS_DIR = protocol.MIRRORS_DIR
SCAN_INTERVAL = 0.5
RESTART_MIN = 0.5
RESTART_MAX = 30.0
HEALTHY_AFTER = 30.0  # a child that ran this long starts its backoff afresh
STOP_TIMEOUT = 15.0


def _spec_names(d: Path) -> List[str]:
    try:
        return sorted(p.name[:-5] for p in d.iterdir()
                      if p.name.endswith(".json") and p.name.count(".json") == 1
                      and not p.name.endswith((".status.json",)))
    except FileNotFoundError:
        return []


def _is_mirror(pid: int, data_dir: Path, name: str) -> bool:
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "shmlog.bridge" in cmd and name in cmd and str(data_dir) in cmd


class MirrorKeeper:
    """The supervisor's mirrors role (Supervisor.mirrors)."""

    def __init__(self, sup):
        self.sup = sup
        self.data_dir = Path(sup.data_dir)
        self.dir = self.data_dir / MIRRORS_DIR
        self.children: Dict[str, subprocess.Popen] = {}
        self.adopted: Dict[str, int] = {}  # pids started by an earlier supervisor
        self.started_at: Dict[str, float] = {}
        self.failures: Dict[str, int] = {}
        self.retry_at: Dict[str, float] = {}
        # per mirror since it was registered: how often its process ended,
        # and how (with its log's last line), for Cluster.mirror's wait and
        # `shmlog mirror list`
        self.exits: Dict[str, int] = {}
        self.last_exit: Dict[str, str] = {}
        self._scan_at = 0.0
        self.closed = False

    def _running(self, name: str) -> bool:
        child = self.children.get(name)
        if child is not None:
            rc = child.poll()
            if rc is None:
                return True
            del self.children[name]
            self._exited(name, f"exit {rc}")
            return False
        pid = self.adopted.get(name)
        if pid is not None:
            if _is_mirror(pid, self.data_dir, name):
                return True
            del self.adopted[name]
            self._exited(name, "gone")
            return False
        # after a supervisor crash its mirrors keep running: find them by
        # the pid in their status file, never start a second copy
        try:
            pid = int(json.loads((self.dir / f"{name}.status.json").read_text()).get("pid") or 0)
        except (OSError, ValueError, TypeError, AttributeError):
            pid = 0
        if pid and _is_mirror(pid, self.data_dir, name):
            self.adopted[name] = pid
            self.started_at[name] = time.monotonic()
            log.info("mirror %s: adopted the running process %d", name, pid)
            return True
        return False

    def _exited(self, name: str, how: str) -> None:
        ran = time.monotonic() - self.started_at.get(name, time.monotonic())
        n = 0 if ran >= HEALTHY_AFTER else self.failures.get(name, 0) + 1
        self.failures[name] = n
        delay = min(RESTART_MAX, RESTART_MIN * (2 ** n)) if n else RESTART_MIN
        self.retry_at[name] = time.monotonic() + delay
        self.exits[name] = self.exits.get(name, 0) + 1
        tail = _last_line(self.dir / f"{name}.log")
        self.last_exit[name] = f"{how}: {tail}" if tail else how
        log.warning("mirror %s stopped (%s after %.1fs); restarting in %.1fs, see %s", name, how, ran,
                    delay, self.dir / f"{name}.log")

    def _spawn(self, name: str) -> None:
        args = [sys.executable, "-m", "shmlog.bridge", "--data-dir", str(self.data_dir), name]
        env = dict(os.environ)
        # the child must import this very shmlog (see Cluster._spawn)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        paths = [root] + [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        logf = open(self.dir / f"{name}.log", "ab")
        try:
            self.children[name] = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf,
                                                   stderr=subprocess.STDOUT, close_fds=True, cwd="/",
                                                   env=env, start_new_session=True)
        finally:
            logf.close()
        self.started_at[name] = time.monotonic()
        log.info("mirror %s: started process %d", name, self.children[name].pid)

    def tick(self) -> None:
        now = time.monotonic()
        if self.closed or now < self._scan_at:
            return
        self._scan_at = now + SCAN_INTERVAL
        wanted = set(_spec_names(self.dir))
        for name in sorted((set(self.children) | set(self.adopted)) - wanted):
            self._stop_one(name)
        for name in sorted(wanted):
            if self._running(name) or now < self.retry_at.get(name, 0.0):
                continue
            try:
                self._spawn(name)
            except OSError as exc:
                log.error("mirror %s: could not start: %s", name, exc)
                self._exited(name, f"spawn failed: {exc}")

    def _signal(self, name: str, sig: int) -> Optional[int]:
        child = self.children.get(name)
        pid = child.pid if child is not None else self.adopted.get(name)
        if pid is None:
            return None
        try:
            os.kill(pid, sig)
        except OSError:
            pass
        return pid

    def _wait(self, names: List[str], deadline: float) -> List[str]:
        left = []
        for name in names:
            child = self.children.get(name)
            if child is not None:
                try:
                    child.wait(max(0.0, deadline - time.monotonic()))
                    continue
                except subprocess.TimeoutExpired:
                    left.append(name)
                    continue
            pid = self.adopted.get(name)
            while pid and _is_mirror(pid, self.data_dir, name) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid and _is_mirror(pid, self.data_dir, name):
                left.append(name)
        return left

    def _stop_one(self, name: str) -> None:
        self.stop_all([name])
        log.info("mirror %s: stopped (its spec was removed)", name)

    def stop_all(self, names: Optional[List[str]] = None) -> None:
        if names is None:
            self.closed = True  # the supervisor stops: tick() starts nothing more
        names = list(names if names is not None else set(self.children) | set(self.adopted))
        for name in names:
            self._signal(name, signal.SIGTERM)
        left = self._wait(names, time.monotonic() + STOP_TIMEOUT)
        for name in left:
            log.warning("mirror %s did not stop within %.0fs: killing it", name, STOP_TIMEOUT)
            self._signal(name, signal.SIGKILL)
        self._wait(left, time.monotonic() + 5)
        for name in names:
            self.children.pop(name, None)
            self.adopted.pop(name, None)
            self.retry_at.pop(name, None)

    # ------------------------------------------------------------ ops
    def op_start(self, m, c) -> Dict[str, Any]:
        """Register a managed mirror (idempotent for the same spec); the
        next tick starts it. The caller waits on the "mirrors" op."""
        spec = protocol.check_mirror_spec(protocol.field(m, "spec", dict))
        name = spec["name"]
        path = protocol.mirror_file(self.data_dir, name, "spec")
        try:
            old: Any = json.loads(path.read_text())
        except FileNotFoundError:
            old = None
        except ValueError:
            old = "corrupt"
        if old is not None and old != spec:
            raise errors.InvalidConfig(f"a different mirror named {name!r} exists; stop it first "
                                       f"(`shmlog mirror stop {name}`) or pick another name", what=name)
        if old is None:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            write_json_atomic(path, spec)
            self.exits.pop(name, None)
            self.last_exit.pop(name, None)
            self.failures.pop(name, None)
            self.retry_at.pop(name, None)
            self._scan_at = 0.0  # start it at the next tick, not the next scan
            log.info("mirror %s: registered (%s %s)", name, spec["direction"], spec["bootstrap"])
        return {"mirror": self.row(name)}

    def op_stop(self, m, c) -> Dict[str, Any]:
        """Forget a managed mirror: the next tick stops its process (SIGTERM:
        it drains and commits). Returns the pid the caller may wait for."""
        name = protocol.check_mirror_name(protocol.field(m, "name", str))
        path = protocol.mirror_file(self.data_dir, name, "spec")
        if not path.exists():
            raise errors.ShmlogError(f"no managed mirror named {name!r} (see `shmlog mirror list`)", what=name)
        row = self.row(name)
        path.unlink()
        self._scan_at = 0.0
        child = self.children.get(name)
        return {"pid": child.pid if child is not None else (self.adopted.get(name) or row.get("pid"))}

    def op_list(self, m, c) -> Dict[str, Any]:
        return {"mirrors": self.rows()}

    def rows(self) -> List[Dict[str, Any]]:
        rows = mirror_rows(self.data_dir)
        for r in rows:
            if r["managed"]:
                r["exits"] = self.exits.get(r["name"], 0)
                r["last_exit"] = self.last_exit.get(r["name"])
        return rows

    def row(self, name: str) -> Dict[str, Any]:
        for r in self.rows():
            if r["name"] == name:
                return r
        return {"name": name, "managed": False, "state": "unknown"}

    def attach(self) -> None:
        sup = self.sup
        sup.handlers.update({"mirror_start": self.op_start, "mirror_stop": self.op_stop,
                             "mirrors": self.op_list})
        sup.tickers.append(self.tick)
        sup.on_stop.append(self.stop_all)
        # the stats op (`shmlog stats`, --prometheus) shows each mirror's
        # rate and lag; wrapped here so that this role stays in this module
        base_stats = sup.stats

        def stats() -> Dict[str, Any]:
            out = base_stats()
            out["mirrors"] = self.rows()
            return out

        sup.stats = stats


def _last_line(path: Path) -> str:
    """The last non-empty line of a mirror's log (why it ended, mostly)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def mirror_rows(data_dir: Path) -> List[Dict[str, Any]]:
    """Every managed mirror, and every running foreground one, as its status
    file says (rate, lag, state, error), with "managed" and a state of
    "down" for a managed mirror whose process is gone. What `shmlog mirror
    list` and the supervisor's stats ("mirrors") show."""
    d = Path(data_dir) / MIRRORS_DIR
    names = set(_spec_names(d))
    try:
        names |= {p.name[: -len(".status.json")] for p in d.iterdir() if p.name.endswith(".status.json")}
    except FileNotFoundError:
        pass
    rows = []
    for name in sorted(names):
        try:
            st = json.loads((d / f"{name}.status.json").read_text())
            st = st if isinstance(st, dict) else {}
        except (OSError, ValueError):
            st = {}
        managed = (d / f"{name}.json").exists()
        alive = isinstance(st.get("pid"), int) and st["pid"] > 0 and pid_alive(st["pid"]) \
            and st.get("state") != "stopped"
        if not managed and not alive:
            continue  # a foreground mirror that ended
        row = {**st, "name": name, "managed": managed}
        if not alive:
            row.update(state="down" if managed else "stopped", rate=0.0)
        rows.append(row)
    return rows
