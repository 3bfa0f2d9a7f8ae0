"""The default consumer's wait: when the next message is due, learnt from
the gaps between arrivals, so a paced stream is waited for by a futex
sleep that ends shortly before the message and a short spin that catches
it. Never spins through a whole gap, never sleeps past a due message
without a committer's wake-up to end the sleep.
"""

from __future__ import annotations

import threading
import time

from ..core._core import lib

DEFAULT_SPIN_US = 50.0
_now_ns = time.monotonic_ns


class Arrivals:
    """When the next message is due, learnt from the gaps between arrivals:
    a paced stream (10k msg/s: a message every 100 us) is waited for by a
    futex sleep that ends shortly before the next one is due, then a spin
    that catches it without a wake-up (~7 us here). A message that comes
    earlier wakes the sleep as any commit does; a stream with no gap to
    sleep in spins DEFAULT_SPIN_US, as a fixed spin_us would.

    The sleep's end needs a fine timer: the thread's timer slack (50 us by
    default, more than the margin) is set to 1 us on first use."""

    __slots__ = ("last", "gap")

    # lead of the wake-up over the due time: a share of the gap, within
    # bounds that cover a late timer on a busy host
    MARGIN = (15_000, 40_000)
    # gaps longer than this are not waited out in a spin at all
    MAX_GAP = 20_000_000

    def __init__(self):
        self.last = 0
        self.gap = 0

    def arrived(self) -> None:
        now = _now_ns()
        if self.last:
            g = now - self.last
            if not self.gap:
                self.gap = g
            else:
                # an idle pause counts as 4 gaps at most: one pause must
                # not unlearn a steady rate
                self.gap += (min(g, 4 * self.gap) - self.gap) >> 3
        self.last = now

    def plan(self, wait_ns: int):
        """(futex sleep first, spin after it) for a wait of up to wait_ns."""
        gap = self.gap
        if not gap or gap > self.MAX_GAP:
            return 0, int(DEFAULT_SPIN_US * 1000)
        lo, hi = self.MARGIN
        margin = min(max(gap >> 2, lo), hi)
        if gap <= 2 * margin:  # a stream: nothing to sleep through
            return 0, int(DEFAULT_SPIN_US * 1000)
        sleep = self.last + gap - margin - _now_ns()
        spin = 3 * margin
        if sleep <= 0:
            # due already (or late): spin for it, but not for ever
            return 0, spin
        _fine_timer_slack()
        return (sleep if sleep < wait_ns else wait_ns), spin

    def read(self, read, a, want: int, wait_ns: int, one: bool):
        """Consumer._read by plan(): a futex sleep (a commit ends it early)
        until shortly before the next message is due, then the spin."""
        sleep_ns, spin_ns = self.plan(wait_ns)
        res = read(a, want, sleep_ns, one, 0) if sleep_ns else None
        if res is None:
            res = read(a, want, max(wait_ns - sleep_ns, 1), one, spin_ns)
        if res is not None:
            self.arrived()
        return res

    def wait_any(self, logs, cursors, n: int, bell, timeout_ns: int) -> None:
        """Consumer._wait over several partitions, by plan()."""
        sleep_ns, spin_ns = self.plan(timeout_ns)
        if sleep_ns and lib.shmlog_log_wait_any(logs, cursors, n, bell, 0, sleep_ns) >= 0:
            return
        lib.shmlog_log_wait_any(logs, cursors, n, bell, spin_ns, max(timeout_ns - sleep_ns, 1))


_slack_set = threading.local()


def _fine_timer_slack() -> None:
    """PR_SET_TIMERSLACK 1 us for this thread, once: the default 50 us
    would let a timed sleep end after the message it was to wake for."""
    if getattr(_slack_set, "done", False):
        return
    _slack_set.done = True
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)
    except Exception:
        pass
