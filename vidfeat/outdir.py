"""Output folders: nothing the user made is overwritten unasked.

Every command with ``--out`` calls :func:`claim_out_dir` before it writes: an empty or missing
folder is taken; a folder that holds a run (or other content) is refused with a message naming
``--resume`` (continue it, where the command can) and ``--overwrite`` (start again). Only with
``--overwrite`` is the old content moved aside, to ``<out>.replaced-<time>`` beside it (a rename:
instant, and nothing is lost until the user deletes it).
"""

from __future__ import annotations

import time
from pathlib import Path

from vidfeat.errors import ConfigError


def _holds_anything(out: Path) -> bool:
    return out.is_dir() and any(out.iterdir())


def claim_out_dir(
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool | None = None,
    same: bool = False,
    what: str = "a run",
) -> Path | None:
    """Make ``out`` ready for a new ``what`` (or a resumed one) and return where old content
    was moved, if anywhere.

    ``resume``: None for commands that cannot resume; True when the caller continues the run in
    ``out`` (the caller checks it is one). ``same``: the folder holds an earlier output of the
    same kind that the caller resumes (e.g. an export of the same set), so it is taken as is.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pick another --out")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue, or start again")
    if resume or same or not _holds_anything(out):
        out.mkdir(parents=True, exist_ok=True)
        return None
    if not overwrite:
        fix = "--resume to continue it, or " if resume is not None else ""
        raise ConfigError(
            f"--out {out} already holds {what} ({_few(out)}); pass {fix}--overwrite to start "
            f"again (the old content is moved aside to {out.name}.replaced-<time>), or pick "
            "another --out"
        )
    aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
    n = 1
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}-{n}")
    out.rename(aside)
    out.mkdir(parents=True)
    return aside


def _few(out: Path, n: int = 3) -> str:
    names = sorted(p.name for p in out.iterdir())
    more = f", … {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more
