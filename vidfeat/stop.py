"""Stop signals: Ctrl-C and SIGTERM ask a long job to stop at its next safe point.

A handler only sets a flag that the job checks between units of work (a training step, a
video), so a stop never lands inside a half-written shard, a half-made optimiser update or a
garbage-collector callback (where Python would swallow a KeyboardInterrupt). A second signal
acts at once. Imports nothing of vidfeat: extraction and the fusion trainer both use it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: while active, the first SIGINT/SIGTERM sets :attr:`requested` and
    restores the previous handler, so a second one acts at once. Signal handlers exist only in
    the main thread; elsewhere this does nothing."""

    SIGNALS = SIGNALS

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def ignore_stop_signals(*_: object) -> None:
    """For child processes (DataLoader or extraction workers) that share the terminal's process
    group: Ctrl-C goes to the parent, which stops them in order, instead of killing them under
    it. Usable as a DataLoader ``worker_init_fn``."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
