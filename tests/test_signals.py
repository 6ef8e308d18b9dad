"""Ctrl-C and SIGTERM for a driver (tuner.signals): Tune's SIGINT handler does not outlive fit(),
and SIGTERM outside a sweep is never lost, even when SIGINT is ignored (a job started with `&`)."""

import os
import signal

import pytest

from tuner import signals


@pytest.fixture
def own_handlers():
    """Put this process's handlers back after the test, and the module's flags."""
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])
    signals._terminated = False


def test_tunes_sigint_handler_is_gone_after_fit_and_sigterm_stops_the_driver(own_handlers):
    stopped = []

    def tunes(signum, frame):  # as Tune's: stop the trials, save the experiment; no exception
        stopped.append(signum)

    signals.handle_sigterm()
    with signals.fitting():
        signal.signal(signal.SIGINT, tunes)  # what Tuner.fit() installs and leaves behind
        os.kill(os.getpid(), signal.SIGTERM)  # during the sweep: through Tune's handler
    assert stopped == [signal.SIGINT] and signals.terminated() and signals.stopped_code() == 143
    assert signal.getsignal(signal.SIGINT) is not tunes  # the handler from before fit() is back
    with pytest.raises(KeyboardInterrupt):  # after fit (the test, the model write): not lost
        os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_sigterm_stops_a_driver_whose_sigint_is_ignored(own_handlers):
    """A job started with `&` from a script inherits SIGINT ignored: SIGTERM still stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signals.handle_sigterm()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
    assert signals.stopped_word() == "terminated"
