"""The adaptive wait (Consumer(spin_us="auto")): when the next message is due, learnt from
the gaps between arrivals, so a paced stream is waited for by a futex
sleep that ends shortly before the message and a short spin that catches
it. Never spins through a whole gap, never sleeps past a due message
without a committer's wake-up to end the sleep.
"""

from __future__ import annotations

import threading
import time

from ..core._core import lib

_WAITED_SPIN = lib.SHMLOG_WAITED_SPIN
_WAITED_FUTEX = lib.SHMLOG_WAITED_FUTEX

# the default consumer's spin before its futex sleep; also the adaptive
# wait's for a stream (no gap worth sleeping in) or an unknown rate
DEFAULT_SPIN_US = 50.0
_now_ns = time.monotonic_ns


class Arrivals:
    """When the next message is due, learnt from the arrivals so far: a
    paced stream (10k msg/s: a message every 100 us) is waited for by a
    futex sleep that ends shortly before the next one is due, then a spin
    until shortly after it. A message caught spinning costs no wake-up (a
    futex wake of a consumer whose core went idle costs several times a
    spin's catch on a VM); one that comes earlier wakes the sleep as any commit does, one
    that comes later than the spin wakes the futex wait after it. A stream
    with no gap to sleep in spins DEFAULT_SPIN_US, as does an unknown rate.

    The gap is the mean over a window of records (not the time between
    reads: a consumer that fell behind reads several at once). Each
    arrival re-anchors the next due time, so an error never accumulates:
    one caught spinning is dated exactly; one that woke the futex is dated
    WAKE_NS before the wake-up returned, a guess on the early side, so that
    a wrong guess moves the next spin earlier, where it catches (and dates)
    the message. The window around the due time (the margin) is learnt
    from how far arrivals land from it (the producer's own jitter) and how
    far the timed sleep's end strays (a VM's timer ends late, and
    that mean lateness is taken off the sleep).

    The sleep's end needs a fine timer: the thread's timer slack (50 us by
    default, more than the margin) is set to 1 us on first use."""

    __slots__ = ("last", "seen", "gap", "w_time", "w_count", "w_reads", "timer_late", "timer_dev",
                 "jitter")

    # the margin on each side of the due time: learnt, within bounds (the
    # upper one also at most a quarter of the gap)
    MARGIN = (5_000, 40_000)
    # how long before a futex wake-up returned its message is taken to
    # have come (a wake-up's usual delay, rounded up): see the class docstring
    WAKE_NS = 25_000
    # gaps shorter than this are a stream: a timed sleep (a timer, a
    # context switch) would cost more than spinning through the gap
    MIN_GAP = 60_000
    # gaps longer than this are not waited out in a spin at all
    MAX_GAP = 20_000_000
    WINDOW = 64  # records per gap measurement (8 for the first)

    def __init__(self):
        self.last = 0  # when the last record came (estimated)
        self.seen = 0  # when the last read returned records
        self.gap = 0
        self.w_time = 0  # the window: time and records in it (records
        self.w_count = 0.0  # after a clipped pause count in proportion)
        self.w_reads = 0  # records read in the window (closes it)
        self.timer_late = 0  # mean lateness of a timed sleep's end
        self.timer_dev = 0  # mean deviation of it from that mean
        self.jitter = 10_000  # mean distance of an arrival from its due time

    def _margin(self, gap: int) -> int:
        lo, hi = self.MARGIN
        m = 2 * (self.jitter + self.timer_dev) + 3_000
        hi = min(hi, gap >> 2)
        return lo if m < lo else (hi if m > hi else m)

    def arrived(self, records: int = 1, how: str = "ready", now: int = 0) -> None:
        """A read returned `records`. how: "spin" (caught spinning: now is
        when they came), "early" (woke the sleep), "late" (woke the wait
        after the spin) or "ready" (there already, or unknown)."""
        now = now or _now_ns()
        gap, last = self.gap, self.last
        t = now
        if how == "early" or how == "late":
            t = now - self.WAKE_NS
        if gap and last:
            due = last + gap
            if how == "ready":
                t = min(now, due)
            elif records == 1:
                # how far from its due time it came: the spin's half-width
                err = t - due
                err = -err if err < 0 else err
                if err < gap >> 1:
                    self.jitter += (err - self.jitter) >> 3
        # the gap: records over a window of time between reads; an idle
        # pause counts as 16 gaps at most, so one pause does not unlearn a
        # steady rate, yet a slower rate is learnt within windows. A read
        # after a clipped pause counts its records in the same proportion
        # as its time: a consumer stalled on a loaded host reads the
        # stall's records at once, and counting all of them against the
        # clipped time would learn a gap shorter than the stream's (and
        # spin where no message is due)
        if self.seen:
            dt = now - self.seen
            cap = 16 * gap
            self.w_reads += records
            if not gap or dt <= cap:
                self.w_time += dt
                self.w_count += records
            else:
                self.w_time += cap
                self.w_count += records * cap / dt
            if self.w_reads >= (self.WINDOW if gap else 8):
                g = max(int(self.w_time / max(self.w_count, 1e-9)), 1)
                self.gap = (gap + g) >> 1 if gap else g
                self.w_time = self.w_reads = 0
                self.w_count = 0.0
        self.seen = now
        self.last = t if t > last else last

    def plan(self, wait_ns: int):
        """(futex sleep first, spin after it) for a wait of up to wait_ns:
        the spin runs until a margin past the due time."""
        gap = self.gap
        if gap < self.MIN_GAP or gap > self.MAX_GAP:
            return 0, int(DEFAULT_SPIN_US * 1000)
        margin = self._margin(gap)
        due = self.last + gap
        now = _now_ns()
        sleep = due - margin - self.timer_late - now
        if sleep <= 0:
            # due already (or late): spin for it, but not for ever
            return 0, max(due + margin - now, margin)
        _fine_timer_slack()
        if sleep >= wait_ns:
            return wait_ns, 0
        return sleep, due + margin - now - sleep

    def _timer(self, late: int) -> None:
        """A timed sleep ended `late` ns after it was due (learnt slowly,
        never above the margin's bound)."""
        late = min(max(late, 0), self.MARGIN[1])
        self.timer_late += (late - self.timer_late) >> 3
        dev = late - self.timer_late
        self.timer_dev += ((-dev if dev < 0 else dev) - self.timer_dev) >> 3

    def read(self, read, a, want: int, wait_ns: int, one: bool):
        """Consumer._read by plan(): a futex sleep (a commit ends it early)
        until shortly before the next message is due, then the spin.

        Arrivals are dated by what the C wait saw (the read info's `waited`
        and `seen_ns`), not by the time the read returned: a message that
        was already there when a late timer let the spin begin would
        otherwise be dated when the spin began, tens of us late on a VM,
        and the due time would drift later read by read; one seen at the
        end of the spin would be taken for a futex wake-up and dated
        WAKE_NS early. Without that info (a stub read) the times the read
        took decide, as they must."""
        info = getattr(getattr(a, "reader", None), "_info", None)
        sleep_ns, spin_ns = self.plan(wait_ns)
        t0 = _now_ns()
        if sleep_ns:
            res = read(a, want, sleep_ns, one, 0)
            t1 = _now_ns()
            if res is not None:
                if info is None:
                    self.arrived(records_in(res), "early" if t1 - t0 > 2_000 else "ready", t1)
                else:
                    self._seen(res, info, "early", t1)
                return res
            if sleep_ns >= wait_ns:
                return None
            self._timer(t1 - t0 - sleep_ns)
            # the spin ends where planned, however late the timer was
            spin_ns = max(spin_ns - (t1 - t0 - sleep_ns), self.MARGIN[0])
            t0 = t1
        res = read(a, want, max(wait_ns - sleep_ns, 1), one, spin_ns)
        if res is not None:
            t1 = _now_ns()
            if info is None:
                dt = t1 - t0
                self.arrived(records_in(res), "spin" if 1_000 < dt < spin_ns
                             else ("late" if dt >= spin_ns else "ready"), t1)
            else:
                self._seen(res, info, "late", t1)
        return res

    def _seen(self, res, info, slept: str, now: int) -> None:
        """arrived() for a read whose C wait said how it found the data:
        `slept` names a futex wake-up in this phase ("early" in the sleep
        before the spin, "late" in the wait after it)."""
        waited = info.waited
        if waited == _WAITED_SPIN:
            self.arrived(records_in(res), "spin", info.seen_ns)
        elif waited == _WAITED_FUTEX:
            self.arrived(records_in(res), slept, info.seen_ns)
        else:
            self.arrived(records_in(res), "ready", now)

    def wait_any(self, logs, cursors, n: int, bell, timeout_ns: int) -> None:
        """Consumer._wait over several partitions, by plan()."""
        sleep_ns, spin_ns = self.plan(timeout_ns)
        if sleep_ns and lib.shmlog_log_wait_any(logs, cursors, n, bell, 0, sleep_ns) >= 0:
            return
        if sleep_ns >= timeout_ns:
            return
        lib.shmlog_log_wait_any(logs, cursors, n, bell, spin_ns, max(timeout_ns - sleep_ns, 1))


def records_in(res) -> int:
    """Records in a read's result (a lone record comes as a tuple)."""
    return 1 if res.__class__ is tuple else len(res)


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
