"""Where a driver's wall time goes: named phases, timed as they run (imports, checks, Ray start,
the sweep, the test, the report, shutdown), for status.json and `tuner bench --overhead`.

No heavy imports: the CLI times its own imports with it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

_seconds: dict[str, float] = {}  # this process's phases, in the order they first ran


@contextmanager
def phase(name: str):
    """Time the block as phase `name` (added up if it runs more than once)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _seconds[name] = _seconds.get(name, 0.0) + time.perf_counter() - t0


def timed(name: str, fn):
    """`fn`, timed as phase `name` whenever it is called (for callbacks such as a shutdown)."""
    def call(*args, **kwargs):
        with phase(name):
            return fn(*args, **kwargs)
    return call


def record(name: str, seconds: float) -> None:
    """Add `seconds` measured elsewhere to phase `name`."""
    _seconds[name] = _seconds.get(name, 0.0) + seconds


def since_start() -> float:
    """Seconds since this process was created (the interpreter's start and every import since),
    from the kernel's record of the process (Linux's /proc); 0.0 where there is none."""
    import os

    try:
        with open("/proc/self/stat") as f:  # field 22: start time, in clock ticks after boot
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


def seconds() -> dict[str, float]:
    """The phases so far, in seconds, rounded to milliseconds."""
    return {k: round(v, 3) for k, v in _seconds.items()}
