"""Fault points armed from the environment, for fault tests that SIGKILL a
live process at an exact step of the C core (csrc/log.h, SHMLOG_POINT_*).

``SHMLOG_STOP_AT=<name>`` (reclaim, rotate, seal, reserve, release): the
first time this process reaches that point, it writes its pid to the file
``SHMLOG_STOP_FILE`` names and stops itself (SIGSTOP), so the test can
SIGKILL it right there, in the middle of the step. Without the variable
nothing is installed and the C hook stays NULL (one predicted branch).
Only processes that call `arm_from_env` (the supervisor at start) look.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

from ._core import ffi, lib

POINTS = {
    "reclaim": lib.SHMLOG_POINT_RECLAIM,
    "rotate": lib.SHMLOG_POINT_ROTATE,
    "seal": lib.SHMLOG_POINT_SEAL,
    "reserve": lib.SHMLOG_POINT_RESERVE,
    "release": lib.SHMLOG_POINT_RELEASE,
}

_hook: Optional[Any] = None  # the cffi callback must outlive its use in C


def arm_from_env() -> bool:
    """Install the stop point SHMLOG_STOP_AT names, if any; True if armed."""
    global _hook
    name = os.environ.get("SHMLOG_STOP_AT")
    if not name or name not in POINTS:
        return False
    point, path = POINTS[name], os.environ.get("SHMLOG_STOP_FILE", "")
    fired = []

    @ffi.callback("void(int)")
    def hook(p):
        if p != point or fired:
            return
        fired.append(p)
        if path:
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(path + ".tmp", path)
        os.kill(os.getpid(), signal.SIGSTOP)

    _hook = hook
    lib.shmlog_set_test_point(hook)
    return True
