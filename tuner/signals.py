"""Ctrl-C and SIGTERM for a driver: a sweep stops as Ray Tune stops it, and a signal outside a
sweep (the checks, decoding, the test, the model write) is never lost.

Ray Tune installs its own SIGINT handler in `Tuner.fit()` (it stops the trials and saves the
experiment, so the run can resume) and leaves it installed when fit() returns: a Ctrl-C during the
test or the model write would then be swallowed and the process exit 0. So every fit() runs inside
`fitting()`, which puts the driver's handlers back after it. SIGTERM (kill, docker stop, Slurm)
stops a sweep as Ctrl-C does, through Tune's handler while fit() runs, and anywhere else raises
KeyboardInterrupt itself: never through SIGINT's handler, which a job started in the background
(`&` in a script) inherits as "ignore".
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

TERMINATED = 143  # 128 + SIGTERM, as a shell reports it
INTERRUPTED = 130  # 128 + SIGINT

_terminated = False  # set by SIGTERM: the run stops as on Ctrl-C, and exits 143
_fitting = False  # inside fitting(): Tune's SIGINT handler is the one that stops the sweep


def terminated() -> bool:
    """Whether SIGTERM (not Ctrl-C) stopped this driver."""
    return _terminated


def stopped_code() -> int:
    """The exit code of a driver that was stopped: 143 after SIGTERM, 130 after Ctrl-C."""
    return TERMINATED if _terminated else INTERRUPTED


def stopped_word() -> str:
    return "terminated" if _terminated else "interrupted"


def _on_sigterm(signum, frame) -> None:
    global _terminated
    _terminated = True
    handler = signal.getsignal(signal.SIGINT)
    if _fitting and callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # Tune's: stop the trials, save the experiment
        return
    raise KeyboardInterrupt


def handle_sigterm() -> None:
    """(Re)install the SIGTERM handler: ray.init replaces it with one that exits at once."""
    signal.signal(signal.SIGTERM, _on_sigterm)


@contextmanager
def fitting() -> Iterator[None]:
    """Around Tuner.fit(): while it runs SIGTERM goes to Tune's SIGINT handler; afterwards the
    SIGINT handler from before it is back (Tune leaves its own installed), and ours for SIGTERM."""
    global _fitting
    before = signal.getsignal(signal.SIGINT)
    _fitting = True
    try:
        yield
    finally:
        _fitting = False
        if before is not None:  # None: installed from C, nothing to put back
            signal.signal(signal.SIGINT, before)
        handle_sigterm()
