"""Stop requests for long jobs: SIGTERM/SIGINT end training or its report cleanly.

    stop = stopping.Stop()
    previous = stopping.install_signal_handlers(stop)
    try:
        ...                               # check stop.requested between steps
        with stop.interruptible():        # a phase that a request ends at once
            ...
    finally:
        stopping.restore_handlers(previous)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

log = logging.getLogger(__name__)


class StopRequested(Exception):  # noqa: N818 (a request, not an error)
    """A stop request (SIGTERM/SIGINT) arrived during validation, averaging or the report."""


class Stop:
    """SIGTERM/SIGINT: the first asks to stop, the second exits at once.

    During training steps the request is only noted (the loop saves and returns after the
    current step); inside ``interruptible()`` phases it raises StopRequested right away.
    """

    def __init__(self):
        self.requested = False
        self._interruptible = False

    def __call__(self, signum, frame):
        del frame
        if self.requested:
            print(f"\nsecond stop request (signal {signum}): exiting now; the complete "
                  "checkpoints on disk are kept.", flush=True)
            os._exit(128 + signum)
        self.requested = True
        log.warning("received signal %d: stopping (a second one exits at once).", signum)
        if self._interruptible:
            raise StopRequested(signum)

    @contextlib.contextmanager
    def interruptible(self):
        """A phase that a stop request ends at once (nothing in it needs saving)."""
        if self.requested:
            raise StopRequested()
        outer, self._interruptible = self._interruptible, True
        try:
            yield
        finally:
            self._interruptible = outer


def install_signal_handlers(stop: Stop) -> dict:
    """SIGTERM/SIGINT go to ``stop``; returns the previous handlers."""
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread (e.g. some notebook runners) no handler can be set.
        with contextlib.suppress(ValueError):
            previous[signum] = signal.signal(signum, stop)
    return previous


def restore_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
