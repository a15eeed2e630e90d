"""Counting outcomes of a batch job and turning them into a summary line and an exit code.

The black pattern: every long command counts done / skipped / failed, prints one line at the end
and exits non-zero when anything failed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Report:
    what: str = "videos"
    done: int = 0
    skipped: int = 0
    failed: int = 0
    notes: Counter = field(default_factory=Counter)  # e.g. {"no audio track": 3}
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, message)
    started: float = field(default_factory=time.perf_counter)
    seconds: float | None = None
    stopped: str | None = None  # why the run ended early (e.g. "interrupted"); None = it finished
    where: str | None = None  # where the work ran, when it says something (e.g. "on 2 Ray nodes")

    def fail(self, video_id: str, message: str) -> None:
        self.failed += 1
        self.failures.append((video_id, message))

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] += n

    def stop(self, why: str) -> None:
        """The run ended before its last video (Ctrl-C, a full disk): the summary says so and
        the exit code is non-zero."""
        self.stopped = why

    def finish(self) -> Report:
        self.seconds = time.perf_counter() - self.started
        return self

    @property
    def elapsed(self) -> float:
        return self.seconds if self.seconds is not None else time.perf_counter() - self.started

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.stopped else 0

    def summary(self) -> str:
        parts = [f"{self.done} done", f"{self.skipped} skipped", f"{self.failed} failed"]
        parts += [f"{n} {what}" for what, n in sorted(self.notes.items())]
        line = f"{self.what}: " + ", ".join(parts) + f" in {self.elapsed:.1f}s"
        line += f" {self.where}" if self.where else ""
        return line + (f" (stopped: {self.stopped})" if self.stopped else "")
