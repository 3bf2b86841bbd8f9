"""A signal is never lost: Ray's blocking calls catch the KeyboardInterrupt that a signal
handler raises inside them, so the build's handler also records the signal and the
scheduling loop raises it again (a build sent SIGINT while it asked Ray for its nodes
once went on and exited 0)."""
from __future__ import annotations

import os
import signal

import pytest

from lfvila_data.executor.base import fetch_then_cut, stop_on_signals


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_swallowed_signal_still_stops_the_run(handlers, sig):
    stop_on_signals()
    try:  # what a library call that catches the interrupt does
        os.kill(os.getpid(), sig)
    except KeyboardInterrupt:
        pass
    started: list[str] = []

    def wait() -> list:
        raise AssertionError(f"the run went on after the signal: {started}")

    with pytest.raises(KeyboardInterrupt):
        fetch_then_cut(["v0", "v1"], 1, 1, started.append, lambda _: None, wait, list,
                       lambda *_: None, lambda _: None, lambda: None, lambda _: None)
    assert not started  # stopped before any download started


def test_a_new_run_starts_unsignalled(handlers):
    stop_on_signals()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except KeyboardInterrupt:
        pass
    stop_on_signals()  # the next build in this process
    fetch_then_cut([], 1, 1, lambda _: None, lambda _: None, list, list,
                   lambda *_: None, lambda _: None, lambda: None, lambda _: None)  # no raise
