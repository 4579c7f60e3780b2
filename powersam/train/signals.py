"""Graceful stops: SIGINT / SIGTERM become a request the training loop polls between iterations."""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["StopRequests", "ignore_stop_signals"]


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT / SIGTERM, which a terminal, ``kill`` of the process
    group or a container stop also send them, so the main process finishes its iteration and saves. (Before, a
    dying worker ended the run with "DataLoader worker is killed by signal: Terminated" and no save.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopRequests:
    """While :meth:`installed`, SIGINT and SIGTERM set :attr:`requested` instead of killing the process, so the loop
    can finish its iteration and save; a second Ctrl-C raises ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handlers for the block (main thread only: elsewhere Python cannot set signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if signum == signal.SIGINT and self.requested:
                raise KeyboardInterrupt
            self.requested = True
            # no logging here: a handler may interrupt the logging module while it holds its lock
            sys.stderr.write(f"\n{signal.Signals(signum).name}: finishing this iteration, saving, then stopping "
                             "(Ctrl-C again to abort now)\n")

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
