"""`shmlog soak`: the reliability run (see RELIABILITY.md).

A bounded pipeline under random SIGKILLs (shmlog.soak.runner), optionally
followed by simulated power losses, disk faults and the long fuzzers. It
runs in a fresh directory of its own, never in the user's data dir, and
exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List


def _figures_line(fig: Dict[str, Any]) -> str:
    return (f"soak {fig['seconds']}s seed {fig['seed']}: kills {fig['kills']} "
            f"(supervisor back within {fig['supervisor_restart_max_s']}s); acked {fig['acked']} "
            f"{fig['acked_by_topic']}; lost {fig['lost']}; altered {fig['altered']}; "
            f"order breaks {fig['order_breaks']}; duplicates {fig['duplicates']} "
            f"(beyond the committed window: {fig['duplicates_beyond_window']}); "
            f"longest stall {fig['longest_stall_s']}s; leaked segments {len(fig['leaked_segments'])}, "
            f"processes {len(fig['leaked_processes'])}; {fig['throughput_msgs_s']} acked msg/s")


def cmd_soak(args: argparse.Namespace) -> int:
    seconds = args.seconds if args.seconds is not None else args.minutes * 60.0
    base = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="shmlog-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    report: Dict[str, Any] = {"seed": seed, "run_dir": str(base)}
    failed: List[str] = []

    def note(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    if seconds > 0:
        from ..soak.runner import Runner

        fig = Runner(base / "soak", seconds=seconds, seed=seed, kill_every=args.kill_every,
                     producers=args.producers, members=args.members, rate=args.rate,
                     max_stall=args.max_stall, kinds=args.kill.split(",") if args.kill else None,
                     kafka_listener=args.kafka_listener, log=note).run()
        report["soak"] = fig
        failed += [f"soak {v}" for v in fig["violations"]]
        note(_figures_line(fig))
    if args.power_loss:
        from ..soak.powerloss import power_loss_runs

        fig = power_loss_runs(base / "power", runs=args.power_loss, seed=seed, log=note)
        report["power_loss"] = fig
        failed += [f"power loss {v}" for v in fig["violations"]]
    if args.disk_faults:
        from ..soak.diskfault import disk_fault_cases

        fig = disk_fault_cases(base / "disk", log=note)
        report["disk_faults"] = fig
        failed += [f"disk fault {v}" for v in fig["violations"]]
    if args.fuzz:
        from ..soak.fuzz import fuzz_all

        fig = fuzz_all(base / "fuzz", seed=seed, control=args.fuzz_control, batches=args.fuzz_segments,
                       regions=args.fuzz_regions, log=note)
        report["fuzz"] = fig
        failed += [f"fuzz {v}" for v in fig["violations"]]
    report["violations"] = failed
    report["ok"] = not failed
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for v in failed:
            print(f"VIOLATION {v}")
        print("soak: ok" if not failed else f"soak: {len(failed)} violation(s); logs kept in {base}")
    if not failed and not args.keep and not args.run_dir:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if not failed else 1


def _kinds(v: str) -> str:
    from ..soak.runner import KINDS

    bad = [k for k in v.split(",") if k not in KINDS]
    if bad or not v:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {bad}; choose from {','.join(KINDS)}")
    return v


def register(sub, add) -> None:
    """Add `soak` to the `shmlog` parser (called by shmlog.cli.build_parser)."""
    p = add("soak", "reliability run: a pipeline under random SIGKILLs, power loss, disk faults, fuzz")
    # the soak never touches the user's data dir; it runs in --run-dir
    p.set_defaults(func=cmd_soak, data_dir=None)
    p.add_argument("--minutes", type=float, default=1.0, help="length of the chaos run (default 1)")
    p.add_argument("--seconds", type=float, default=None, help="length in seconds (overrides --minutes; 0: skip)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    p.add_argument("--kill-every", type=float, default=3.0, metavar="S", help="seconds between kills (default 3)")
    p.add_argument("--kill", default=None, type=_kinds, metavar="KINDS",
                   help="what chaos may kill, comma separated (default: producer,member,reader,supervisor, "
                   "and listener with --kafka-listener)")
    p.add_argument("--kafka-listener", default=None, metavar="HOST:PORT",
                   help="run the supervisor with a Kafka listener there (chaos kills it too)")
    p.add_argument("--producers", type=int, default=3, help="producer processes (default 3)")
    p.add_argument("--members", type=int, default=2, help="members in each of the 2 groups (default 2)")
    p.add_argument("--rate", type=float, default=200.0, help="messages/s per producer and topic (default 200)")
    p.add_argument("--max-stall", type=float, default=30.0, metavar="S",
                   help="fail if a survivor makes no progress for longer (default 30)")
    p.add_argument("--power-loss", type=int, default=0, metavar="N", help="also run N simulated power losses")
    p.add_argument("--disk-faults", action="store_true", help="also run the disk-fault cases (root: tmpfs)")
    p.add_argument("--fuzz", action="store_true", help="also run the long fuzzers")
    p.add_argument("--fuzz-control", type=int, default=100_000, metavar="N", help="control-socket requests")
    p.add_argument("--fuzz-segments", type=int, default=1_000_000, metavar="N", help="corrupted batches")
    p.add_argument("--fuzz-regions", type=int, default=20_000, metavar="N", help="corrupted regions read")
    p.add_argument("--run-dir", default=None, help="where to run and keep logs (default: a temp dir, "
                   "removed after a passing run)")
    p.add_argument("--keep", action="store_true", help="keep the run dir even if the run passed")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
