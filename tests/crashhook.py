"""Run the vidfeat command line with a crash point armed: the kill -9 trials of
test_reliability start the extraction as

    python tests/crashhook.py <point>[:<n>][:<mode>] -- <vidfeat arguments>

which replaces the shard writer's no-op ``vidfeat.store.writer._checkpoint`` in this process
only, then runs the command line. The hook acts the n-th time (default 1st) the process
reaches ``<point>``: mode ``kill`` (default) SIGKILLs the process itself (no cleanup); mode
``stop`` SIGSTOPs it, so a test can wait for the stop (``waitpid(pid, WUNTRACED)``), look at
the store at exactly that moment, then kill it from outside. The points are those of
``_checkpoint``: ``after-open``, ``after-add``, ``before-rename``, ``after-rename``.
The parent process alone writes shards (workers only compute), so patching it is enough.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTS = ("after-open", "after-add", "before-rename", "after-rename")
MODES = {"": signal.SIGKILL, "kill": signal.SIGKILL, "stop": signal.SIGSTOP}
USAGE = "usage: python tests/crashhook.py <point>[:<n>][:kill|stop] -- <vidfeat arguments>"


def arm(spec: str) -> None:
    """Replace ``vidfeat.store.writer._checkpoint`` so the process stops or dies at ``spec``."""
    point, _, rest = spec.partition(":")
    nth, _, mode = rest.partition(":")
    if point not in POINTS or mode not in MODES or not (nth or "1").isdigit():
        raise SystemExit(f"bad crash point {spec!r} (points: {', '.join(POINTS)})\n{USAGE}")
    want, sig = int(nth or 1), MODES[mode]

    import vidfeat.store.writer as writer

    real = writer._checkpoint
    reached = 0

    def checkpoint(name: str) -> None:
        nonlocal reached
        real(name)
        if name == point:
            reached += 1
            if reached == want:
                os.kill(os.getpid(), sig)

    writer._checkpoint = checkpoint


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[1] != "--":
        raise SystemExit(USAGE)
    sys.path.insert(0, str(ROOT))  # this checkout's cli and vidfeat, as `python -c` in ROOT
    arm(argv[0])
    from vidfeat.cli import main as cli_main

    cli_main(args=argv[2:], prog_name="vidfeat")


if __name__ == "__main__":
    main()
