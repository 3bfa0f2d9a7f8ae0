"""Instructions per message of a send() form, producer only (issue 17).

    python bench/send_forms_instr.py --forms headers,timestamp --partitions 4,256

Runs bench/send_forms_bench.py's loop for one form under valgrind's
callgrind twice, with --n1 and --n2 messages, and prints the difference
over the difference in messages: startup, connect and topic creation
cancel out. Instruction counts hold on a loaded host where wall times do
not; they do not see cache misses or the syscalls' kernel side.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def _one(form: str, parts: int, n: int, slowdown: float) -> None:
    # the checkout under test (the working directory: a copy of this script
    # measures another checkout run from there)
    sys.path.insert(0, os.getcwd())
    import shmlog
    from bench.send_forms_bench import run_form
    from shmlog.client import commit_rules, keyed_queue, producer, rich_queue

    # the commit rules are timed (a lone message goes at once when the last
    # commit is a microsecond old): under callgrind, which runs the code
    # ~50x slower, every send would look like a paced producer's and commit
    # alone. Their clock runs that much slower here, so they batch as at
    # full speed.
    clock = commit_rules._clock
    slowed = lambda: clock() / slowdown  # noqa: E731
    for mod in (commit_rules, keyed_queue, producer, rich_queue):
        if getattr(mod, "_clock", None) is clock:
            mod._clock = slowed
    try:  # send()'s C branches (csrc/send.c) read the same rules
        from shmlog.core import _send
    except ImportError:  # a checkout from before them
        pass
    else:
        _send.set_clock(slowed)

    if form == "none":
        # the loop without send(): making the values and keys, the calls
        # around it; subtracted from every form
        import bench.send_forms_bench as sfb

        forms = sfb._forms
        sfb._forms = lambda topic: dict(forms(topic), none=lambda p, v, k, i: None)
    d = tempfile.mkdtemp(prefix="shmlog-sfinstr-")
    cluster = shmlog.connect(d, idle_timeout_s=30)
    try:
        run_form(cluster, form, parts, n)
    finally:
        cluster.shutdown()
        shutil.rmtree(d, ignore_errors=True)


def _count(form: str, parts: int, n: int, slowdown: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, os.path.abspath(__file__), "--one", form,
                        "--partitions", str(parts), "--n1", str(n),
                        "--slowdown", str(slowdown)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            for line in f:
                m = re.match(r"(?:summary|totals):\s*(\d+)", line)
                if m:
                    return int(m.group(1))
    raise RuntimeError("no totals in callgrind's output")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--forms", default="bare,headers,timestamp,on_delivery")
    ap.add_argument("--partitions", default="4,256")
    ap.add_argument("--n1", type=int, default=20_000)
    ap.add_argument("--n2", type=int, default=60_000)
    ap.add_argument("--slowdown", type=float, default=50.0,
                    help="how much slower the code runs under callgrind (the commit rules' clock)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        _one(a.one, int(a.partitions), a.n1, a.slowdown)
        return
    def per_message(form: str, parts: int) -> float:
        lo, hi = _count(form, parts, a.n1, a.slowdown), _count(form, parts, a.n2, a.slowdown)
        return (hi - lo) / (a.n2 - a.n1)

    loop = per_message("none", 4)
    print(f"the loop without send(): {loop:.0f} instructions/message (subtracted below)")
    for parts in map(int, a.partitions.split(",")):
        for form in a.forms.split(","):
            print(f"{parts:4d} partitions  {form:22s} {per_message(form, parts) - loop:8.0f} "
                  f"instructions/message", flush=True)


if __name__ == "__main__":
    main()
