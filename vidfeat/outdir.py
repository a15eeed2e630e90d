"""Output folders: nothing the user made is overwritten unasked.

Every command with ``--out`` calls :func:`claim_out_dir` before it writes: an empty or missing
folder is taken; a folder whose content would be kept and that holds a symlink is refused (a
planted link would send a write elsewhere); a folder that holds a run (or other content) is
refused with a message naming ``--resume`` (continue it, where the command can) and
``--overwrite`` (start again). Only with ``--overwrite`` is the old content moved aside, to
``<out>.replaced-<time>`` beside it (a rename: instant, and nothing is lost until the user
deletes it).

Files inside such folders are written whole or not at all (:func:`atomic_write`): a temporary
beside the target, created exclusively under an unpredictable name that follows no symlink,
fsync'ed, then renamed over the target (``os.replace``). A crash at any moment leaves the old
file or the new one, never a torn one; the temporary of a killed process is named
``.<name>.tmp-<pid>-<hex>``, and :func:`remove_stale_temps` deletes those whose process is gone.
Every atomic write of vidfeat goes through here: checkpoints of both trainers, exports, the
store's JSON and index files, contact sheets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vidfeat.errors import ConfigError, StoreError


def _holds_anything(out: Path) -> bool:
    return out.is_dir() and any(out.iterdir())


def planted_links(out: Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` symlinks inside folder ``out`` (at any depth, never followed), as paths
    relative to it. A link in an output folder would redirect one of vidfeat's writes (or a
    resumed run's reads) to wherever it points."""
    found: list[str] = []
    stack = [out]
    while stack and len(found) < limit:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_symlink():
                    found.append(os.path.relpath(entry.path, out))
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return sorted(found[:limit])


def refuse_planted_links(out: Path) -> None:
    """Refuse an existing ``--out`` folder that holds a symlink: vidfeat writes only real files
    into its output folders, and a planted link would send a write wherever it points."""
    links = planted_links(out) if out.is_dir() else []
    if links:
        raise ConfigError(
            f"--out {out} holds symlinks ({', '.join(links)}): vidfeat writes only real files "
            "into its output folders, and a link would send a write elsewhere; remove them, or "
            "pick another --out"
        )


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
    if not (overwrite and not resume):  # content kept: a link in it could redirect a write
        refuse_planted_links(out)
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


# --------------------------------------------------------------------------- atomic writes

_TEMP_RE = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]{8,16}$")
_NAME_KEEP = 100  # characters of the target's name kept in its temporary's (names <= 255 bytes)


def open_temp_beside(
    path: str | Path, mode: int = 0o666, *, read: bool = False
) -> tuple[int, Path]:
    """A new, empty temporary file in ``path``'s folder, open for writing (and reading with
    ``read``): its descriptor and its path. Created with ``O_EXCL | O_NOFOLLOW`` under a random
    name (never an existing file or a planted symlink); ``mode`` is filtered by the umask, as
    for any new file."""
    path = Path(path)
    flags = (os.O_RDWR if read else os.O_WRONLY) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    flags |= os.O_CLOEXEC
    for _ in range(100):
        tmp = path.with_name(f".{path.name[:_NAME_KEEP]}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_write(path: str | Path, *, mode: int = 0o666) -> Iterator[BinaryIO]:
    """Write ``path`` whole or not at all: yields a binary file (a temporary beside ``path``);
    when the block ends it is flushed, fsync'ed and renamed over ``path``. On any error,
    including KeyboardInterrupt, the temporary is removed and ``path`` is as it was::

        with atomic_write(run / "best.pt") as fh:
            torch.save(state, fh)
    """
    path = Path(path)
    fd, tmp = open_temp_beside(path, mode)
    try:
        # the file object of that descriptor, named by its path (open() calls the opener once)
        with open(tmp, "wb", opener=lambda _path, _flags: fd) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | Path, data: bytes | str, *, mode: int = 0o666) -> None:
    """:func:`atomic_write` of ``data`` (text is written as UTF-8)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_write(path, mode=mode) as fh:
        fh.write(data)


def open_append(path: str | Path, *, mode: int = 0o644, read: bool = False) -> int:
    """A descriptor open for appending to the regular file ``path`` (created if missing; also
    for reading with ``read``), that follows no symlink and never blocks: a planted link, FIFO
    or device is refused with a :class:`~vidfeat.errors.StoreError` instead of being written
    through (or hanging the writer)."""
    flags = os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    flags |= os.O_RDWR if read else os.O_WRONLY
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        kinds = {errno.ELOOP: "a symlink", errno.ENXIO: "a FIFO, not a regular file"}
        why = kinds.get(exc.errno, exc.strerror)
        raise StoreError(
            f"{path}: cannot be appended to ({why}); vidfeat appends only to regular files it "
            "made: remove it"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{path}: not a regular file; vidfeat appends only to files it made")
    os.set_blocking(fd, True)
    return fd


def remove_stale_temps(folder: str | Path) -> None:
    """Delete the temporaries of :func:`atomic_write` in ``folder`` left by processes that are
    gone (killed mid-write); those of live processes stay."""
    for p in Path(folder).iterdir():
        m = _TEMP_RE.match(p.name)
        if m and not _pid_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                p.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- write failures

_CAUSES = {
    errno.ENOSPC: ("the disk is full (ENOSPC)", "free some space"),
    errno.EDQUOT: ("the disk quota is used up (EDQUOT)", "free some space"),
    errno.EFBIG: (
        "a file reached the size limit (EFBIG: `ulimit -f`, or the file system's largest file)",
        "raise the limit (ulimit -f unlimited) or pick an --out on another file system",
    ),
    errno.EROFS: ("the file system is read-only (EROFS)", "pick a writable --out"),
    errno.EACCES: ("permission denied (EACCES)", "pick a writable --out"),
    errno.EPERM: ("operation not permitted (EPERM)", "pick a writable --out"),
}
# HDF5 reports the C library's errno only inside its message ("errno = 28, error message = ...")
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def error_number(exc: BaseException) -> int | None:
    """The errno behind a failed write: an OSError's own, or the one HDF5 (h5py raises
    RuntimeError or OSError) names in its message; None when there is none."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    m = _HDF5_ERRNO.search(str(exc))
    return int(m[1]) if m else None


def write_error(out: str | Path, name: str, exc: BaseException) -> StoreError:
    """A failed write of file ``name`` into output folder ``out``, as the one line the command
    line prints: the file, the folder, the cause and what to do. The caller has removed what it
    had half written (:func:`atomic_write` does)."""
    n = error_number(exc)
    cause, fix = _CAUSES.get(n or -1, (os.strerror(n) if n else str(exc), "check the folder"))
    return StoreError(
        f"cannot write {name} in --out {out}: {cause}; nothing half-written was kept: {fix}, "
        "then run the same command again (complete files are kept and skipped)"
    )
