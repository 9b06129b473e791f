"""Stopping a run cleanly on SIGINT or SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def stop_on_signals(run: Any) -> Iterator[None]:
    """SIGINT or SIGTERM sets ``run.stop_signal``, which asks ``run.fit`` to stop after the
    current epoch's checkpoint.

    The first signal is recorded in ``stop_signal`` and training continues to the end of the
    epoch, which is then evaluated and checkpointed as usual, so ``--resume`` continues
    exactly. A second signal acts at once with the default behaviour (the partial epoch is
    lost; the last checkpoint is intact). Only the main thread can install handlers;
    elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        if run.stop_signal is not None:  # the second one: do what it would have done
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        run.stop_signal = signum

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
