"""`shmlog serve`: run the supervisor of a data dir, in the foreground or
detached, or stop the one that serves it (--stop)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict

from .. import errors
from ..broker.supervisor import serve
from ..osutil import pid_alive
from ..protocol import ensure_data_dir
from .common import kv_arg, out

LOG_NAME = "supervisor.log"
STOP_TIMEOUT_S = 15.0
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def cmd_serve(args) -> int:
    if args.stop:
        return _stop(Path(args.data_dir))
    settings = dict(args.set or [])
    if args.kafka_listener:
        settings["kafka_listener"] = args.kafka_listener
    if args.detach:
        return _detach(Path(args.data_dir), args.auto, settings)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        return serve(Path(args.data_dir), auto=args.auto, **settings)
    except errors.ShmlogError as exc:
        print(f"shmlog serve: {exc}", file=sys.stderr)
        return 1


def _detach(data_dir: Path, auto: bool, settings: Dict[str, Any]) -> int:
    """Double fork: the supervisor is nobody's child, logs to
    <data_dir>/supervisor.log, and this process exits 0 only once it serves
    (1, with its error, when it could not start)."""
    data_dir = ensure_data_dir(data_dir)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(wfd)
        chunks = []
        while True:
            b = os.read(rfd, 4096)
            if not b:
                break
            chunks.append(b)
        os.close(rfd)
        os.waitpid(pid, 0)  # the middle process exits at once
        msg = b"".join(chunks).decode(errors="replace")
        if msg.startswith("ok "):
            how = "until no client is left for idle_timeout_s" if auto else "until stopped"
            out(f"supervisor pid {msg[3:]} serving {data_dir} in the background {how}; "
                f"logs in {data_dir / LOG_NAME}; stop it with `shmlog serve --stop --data-dir {data_dir}`")
            return 0
        print(f"shmlog serve: {msg or f'the supervisor exited while starting; see {data_dir / LOG_NAME}'}",
              file=sys.stderr)
        return 1
    os.close(rfd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    logfd = os.open(data_dir / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    nullfd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nullfd, 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(nullfd)
    os.close(logfd)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)

    def ready(sup) -> None:
        try:
            os.write(wfd, f"ok {os.getpid()}".encode())
        except OSError:
            pass  # the launcher gave up waiting (EPIPE): serve all the same
        finally:
            os.close(wfd)

    try:
        return serve(data_dir, auto=auto, ready=ready, **settings)
    except errors.ShmlogError as exc:
        print(f"shmlog serve: {exc}", file=sys.stderr)
        try:
            os.write(wfd, str(exc).encode())
        except OSError:
            pass  # ready() ran: the launcher is gone, the log has it
        return 1


def _stop(data_dir: Path) -> int:
    """Ask the supervisor of data_dir to shut down, and wait until it has."""
    from ..client.cluster import connect

    if not data_dir.is_dir():
        raise errors.BrokerNotRunning(f"no supervisor is serving {data_dir.absolute()} (the directory "
                                      f"does not exist)", what=str(data_dir))
    cluster = connect(data_dir, start=False)
    pid = cluster.supervisor_pid
    cluster.shutdown(timeout=STOP_TIMEOUT_S)
    if pid_alive(pid):
        raise errors.ShmlogError(f"the supervisor (pid {pid}) of {data_dir.absolute()} did not stop within "
                                 f"{STOP_TIMEOUT_S:.0f}s; see {data_dir.absolute() / LOG_NAME}",
                                 what=str(data_dir))
    out(f"Stopped the supervisor (pid {pid}) of {data_dir.absolute()}.")
    return 0


def register(sub, add) -> None:
    """Add `serve` to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    sp = add("serve", "run the supervisor in the foreground (or --detach), or --stop it")
    sp.add_argument("--auto", action="store_true", help="exit when no client is left for idle_timeout_s")
    sp.add_argument("--detach", action="store_true",
                    help="run in the background (logs in DATA_DIR/supervisor.log); exits 0 once it serves")
    sp.add_argument("--stop", action="store_true",
                    help="stop the supervisor serving the data dir (and drop memory topics' messages)")
    sp.add_argument("--set", action="append", type=kv_arg, metavar="KEY=VALUE",
                    help="broker setting, e.g. idle_timeout_s=30")
    sp.add_argument("--kafka-listener", metavar="HOST:PORT",
                    help="also serve the Kafka wire protocol here (e.g. 127.0.0.1:9092)")
    sp.set_defaults(func=cmd_serve)
