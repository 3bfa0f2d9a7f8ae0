"""python -m bench [--quick] [--only W1,W2] [--systems shmlog-core,redis] [--out FILE]

Runs the workloads (CRC, W1-W7) over shmlog and its peers, each producer and
consumer in its own process, and writes the results table (Markdown) and a
PNG chart next to it. Peer servers are started and stopped by the suite;
anything missing is skipped with the reason. Exit code 1 if a shmlog row
failed or hit its time limit (peers' failures are reported, not fatal,
unless --strict).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, List

from .common import machine, params
from .workloads import ORDER, Suite, is_shmlog

HERE = os.path.dirname(os.path.abspath(__file__))


def _versions() -> Dict[str, str]:
    from importlib import metadata

    out: Dict[str, str] = {}
    for dist in ("shmlog", "pyzmq", "faster-fifo", "redis", "hiredis", "nats-py"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import zmq

        out["libzmq"] = zmq.zmq_version()
    except Exception:
        pass
    for exe, flag in (("redis-server", "--version"), ("nats-server", "--version")):
        try:
            r = subprocess.run([exe, flag], capture_output=True, text=True, timeout=10)
            words = r.stdout.split()
            v = next((w[2:] for w in words if w.startswith("v=")), None) or (
                words[-1].lstrip("v") if words else "?")
            out[exe] = v
        except (OSError, subprocess.TimeoutExpired):
            pass
    return out


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny counts (a smoke test, figures "
                    "are not meaningful)")
    ap.add_argument("--only", default="", help="comma list of workloads: " + ",".join(ORDER))
    ap.add_argument("--systems", default="", help="comma list of systems (default: all)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"),
                    help="Markdown file to write (the chart goes next to it as .png)")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=None, metavar="S",
                    help="before each run wait up to S seconds for the host to be quiet "
                         "(default: 5 full, 0 quick)")
    ap.add_argument("--retries", type=int, default=None,
                    help="re-run a run disturbed by other processes up to N times and keep the "
                         "least disturbed (default: 2 full, 0 quick)")
    ap.add_argument("--budget", type=float, default=300.0, metavar="S",
                    help="stop waiting/retrying once the suite has run S seconds (default 300)")
    ap.add_argument("--strict", action="store_true", help="exit 1 on any failed row")
    ap.add_argument("--kafka-listener", default=None, metavar="HOST:PORT",
                    help="run shmlog's supervisor with this Kafka listener open (idle), to "
                         "show that the shared-memory path does not slow down beside it")
    args = ap.parse_args(argv)
    if args.kafka_listener:
        # read by systems/shmlog_api.py in the process that starts the supervisor
        os.environ["SHMLOG_BENCH_KAFKA_LISTENER"] = args.kafka_listener

    only = [w.strip().upper() for w in args.only.split(",") if w.strip()] or ORDER
    bad = [w for w in only if w not in ORDER]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {ORDER}")

    # SIGTERM/SIGHUP -> KeyboardInterrupt, so the finally below stops servers
    # and unlinks shared memory
    def _stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)

    from . import servers
    from .systems import all_systems
    from .systems.shmlog_core import unlink_all

    systems = all_systems()
    if args.systems:
        want = {s.strip().lower() for s in args.systems.split(",") if s.strip()}
        systems = [s for s in systems if s.name.lower() in want]
        if not systems:
            ap.error("no system matches --systems")

    p = params(args.quick)
    command = " ".join(["python -m bench"] + [shlex.quote(a) for a in
                                              (argv if argv is not None else sys.argv[1:])])
    t_start = time.monotonic()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mach = machine()
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"
    except OSError:
        load = "?"
    print(f"shmlog bench{' (quick)' if p.quick else ''}: {mach['cpu']}, {mach['cores']} cores, "
          f"{mach['ram']}; workloads {','.join(only)}; every producer and consumer is a "
          f"separate process (multiprocessing, fork)", flush=True)
    suite = None
    try:
        quiet = args.quiet_wait if args.quiet_wait is not None else (0.0 if p.quick else 5.0)
        retries = args.retries if args.retries is not None else (0 if p.quick else 2)
        suite = Suite(p, systems, quiet_wait_s=quiet, retries=retries, budget_s=args.budget)
        for name, why in suite.unavailable.items():
            print(f"  {name}: skipped: {why}", flush=True)
        for wid in only:
            suite.run(wid)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc}); cleaning up", file=sys.stderr)
        return 130
    finally:
        for s in systems:
            stop = getattr(s, "shutdown", None)
            if stop:
                try:
                    stop()
                except Exception as exc:
                    print(f"  {s.name}: shutdown failed: {exc}", file=sys.stderr)
        servers.SERVERS.stop_all()
        servers.stop_all()
        unlink_all()

    from .report import write_chart, write_markdown

    rows = suite.rows
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    chart, chart_note = None, "disabled (--no-chart)"
    if not args.no_chart:
        chart, chart_note = write_chart(os.path.splitext(out)[0] + ".png", rows,
                                        [s.name for s in systems])
    write_markdown(out, rows, p, command, date, mach, _versions(), suite.unavailable, chart,
                   chart_note, time.monotonic() - t_start, [s.name for s in systems],
                   {s.name: s.how for s in systems}, load)
    import dataclasses
    import json

    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"command": command, "date": date, "machine": mach, "quick": p.quick,
                   "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1, default=str)
    print(f"wrote {out}" + (f" and {chart}" if chart else f" (no chart: {chart_note})"))
    failed = [r for r in rows if r.status in ("error", "timeout", "partial")]
    # a peer that is slower than the time limit is a finding, not a failure
    fatal = [r for r in failed if (args.strict and r.status != "partial") or is_shmlog(r.system)]
    for r in failed:
        what = "time-limited" if r.status == "partial" else "FAILED"
        print(f"  {what} {r.workload} {r.system} ({r.mode}): {r.status}: {r.note}",
              file=sys.stderr)
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
