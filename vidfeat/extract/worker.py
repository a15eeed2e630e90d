"""One video: the extractor contract and the per-video call, bounded by its alarm.

An :class:`Extractor` is built in the parent process, pickled to where videos are processed (a
worker process, a Ray task, or this process), ``setup()`` once there, and then called once per
video. It raises a :class:`~vidfeat.errors.DecodeError` (or any exception) for a bad video;
:func:`work` turns that into a failure record and never raises for a bad video, so the run goes
on. ``--timeout`` is a ``SIGALRM`` inside :func:`work` (the engines add what a signal cannot
do: the local pool's watchdog kills a worker stuck in a C call).

Imports only errors and the video list: the engines import this, never the reverse.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vidfeat.errors import VidfeatError
from vidfeat.videolist import VideoRecord


@dataclass
class Extracted:
    """One video's record: ``features`` (the dataset every consumer reads), attrs, extras."""

    features: np.ndarray
    attrs: dict
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # counted in the run's summary


class Extractor(Protocol):
    modality: str

    def config(self) -> dict:
        """Everything that determines the stored arrays (goes into the set's set.json)."""
        ...

    def setup(self) -> None:
        """Per-process initialisation (thread counts, models)."""
        ...

    def extract(self, record: VideoRecord, class_index: int | None) -> Extracted: ...


class VideoTimeout(BaseException):
    """Raised inside a worker by SIGALRM when a video exceeds ``--timeout``. A BaseException,
    so an extractor's own ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`VideoTimeout` in this thread after ``seconds`` (0: never). Only the main
    thread receives signals; elsewhere this is a no-op (the parent's watchdog still applies)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise VideoTimeout

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, old)


def timeout_failure(record: VideoRecord, timeout: float, killed: bool = False) -> tuple[str, str]:
    how = (
        "did not return (stuck outside Python); its worker process was killed"
        if killed
        else "was stopped"
    )
    return (
        "Timeout",
        f"{record.path}: extraction exceeded --timeout {timeout:g} s and {how}; a longer "
        "video may need a larger --timeout (0 = no limit)",
    )


Outcome = tuple[Extracted | None, tuple[str, str] | tuple[()]]


def work(
    extractor: Extractor, record: VideoRecord, class_index: int | None, timeout: float = 0.0
) -> Outcome:
    """Extract one video: ``(result, ())`` or ``(None, (error_class, message))``. Never raises
    for a bad video."""
    try:
        with alarm(timeout):
            return extractor.extract(record, class_index), ()
    except VideoTimeout:
        return None, timeout_failure(record, timeout)
    except VidfeatError as exc:  # DecodeError and the rest of the family: their own message
        return None, (type(exc).__name__, str(exc))
    except MemoryError:
        return None, ("MemoryError", f"{record.path}: out of memory")
    except Exception as exc:  # noqa: BLE001 - one bad video must never abort the run
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        where = f" at {Path(tb.filename).name}:{tb.lineno}" if tb else ""
        return None, (type(exc).__name__, f"{record.path}: {exc}{where}")


def record_outcome(job: Any, record: VideoRecord, result: Extracted | None, error: tuple) -> None:
    """Hand one outcome of :func:`work` to the job (written, or logged as a failure)."""
    if result is None:
        job.fail(record, error[0], error[1])
    else:
        job.write(record, result.features, result.attrs, result.extra, result.notes)
