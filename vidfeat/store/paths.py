"""Names, small file helpers and partial-shard locks: the bottom layer of the store.

Shared by the writer, the reader, the set registry and verification: checks of video ids, set
and job names; fsync, the temporary ``set.json`` and opening HDF5 files without HDF5's own locks;
reading a set's ``set.json``; and the ``flock``-ed ``.lock`` sidecars that tell the partial
shard of a live job from one a killed job left behind (:func:`partial_is_live`,
:func:`cleanup_stale_partials`). Imports no other module of :mod:`vidfeat.store`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import h5py

from vidfeat.errors import ConfigError, StoreError
from vidfeat.errors import StoreWarning as StoreWarning  # its home before vidfeat.errors
from vidfeat.outdir import open_temp_beside
from vidfeat.store.guard import (
    MAX_JSON_BYTES,
    NotRegularFile,
    h5_path,
    open_regular,
    parse_json,
    read_capped,
    same_file,
)

SET_JSON = "set.json"
FEATURES = "features"

_JOB_RE = re.compile(r"^[\w.@+=-]+$")


# --------------------------------------------------------------------------- names


def check_video_id(video_id: str) -> str:
    """Return ``video_id`` if it can be an HDF5 group name that stays inside its shard.

    Raises :class:`StoreError` for empty ids, ``.``, ``..`` and ids containing ``/`` or NUL.
    """
    if (
        not isinstance(video_id, str)
        or not video_id
        or video_id in (".", "..")
        or "/" in video_id
        or "\x00" in video_id
    ):
        raise StoreError(
            f"invalid video id {video_id!r}: ids must be non-empty strings, not '.' or '..', "
            "without '/' or NUL; give the video list a video_id column with safe ids"
        )
    return video_id


def _check_set_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\x00" in name
    ):
        raise ConfigError(
            f"invalid set name {name!r}: use a plain folder name (letters, digits, '-', '_'), "
            "not starting with '.', e.g. --name rgb-stnet"
        )
    return name


def _check_job(job: str) -> str:
    if not isinstance(job, str) or not _JOB_RE.match(job):
        raise ConfigError(
            f"invalid job name {job!r}: use letters, digits and . _ - @ + = only (e.g. --job run1)"
        )
    return job


# --------------------------------------------------------------------------- small file helpers


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_DIRECTORY if directory else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _write_json_tmp(path: Path, obj: Any) -> Path:
    """Write ``obj`` to a fresh temp file next to ``path`` (fsync'ed); return the temp path
    (``ensure_set`` links it to ``path``, which fails if another process got there first)."""
    data = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    fd, tmp = open_temp_beside(path, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _h5open(path: Path, mode: str) -> h5py.File:
    """Open without HDF5's own file locks: our shards are immutable once completed and partials
    are guarded by our flock, while HDF5 locks break readers on NFS and during concurrent writes.
    New files allow the 1.8 object format so attributes larger than 64 KiB work.

    Reading (``"r"``) opens only a regular file, never through a symlink and never blocking
    on a FIFO (:func:`vidfeat.store.guard.open_regular`): :class:`NotRegularFile` else."""
    kwargs: dict[str, Any] = {"locking": False}
    if mode in ("w", "w-", "x"):
        kwargs["libver"] = ("v108", "latest")
    if mode != "r":
        return h5py.File(path, mode, **kwargs)
    fd = open_regular(path, "shard")
    try:
        f = h5py.File(h5_path(fd, path), mode, **kwargs)
        if not same_file(f.id, fd):
            f.close()
            raise NotRegularFile(f"{path} (shard) was replaced while being opened; skipped")
        return f
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- set.json


def read_set_json_bytes(path: Path, set_name: str) -> tuple[dict, bytes]:
    """A set's configuration and the bytes it was parsed from (FileNotFoundError when absent,
    :class:`StoreError` for anything but a regular file of JSON holding an object)."""
    try:
        data = read_capped(path, MAX_JSON_BYTES, f"configuration of set {set_name!r}")
        cfg = parse_json(data, f"{path} (configuration of set {set_name!r})")
    except FileNotFoundError:
        raise
    except StoreError as exc:
        raise StoreError(
            f"{exc}; restore it from a backup or delete the set folder and extract again"
        ) from None
    if not isinstance(cfg, dict):
        raise StoreError(
            f"{path} does not hold a JSON object; restore it or delete the set and extract again"
        )
    return cfg, data


def _read_set_json(path: Path, set_name: str) -> dict:
    return read_set_json_bytes(path, set_name)[0]


# --------------------------------------------------------------------------- partial locks


def _lock_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".lock")


def _open_lock(lock: Path) -> int | None:
    """A descriptor of an existing lock file to ``flock``; None when it is not a regular file
    (a symlink, a FIFO someone planted: never followed, never blocked on). Raises
    FileNotFoundError when absent."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def partial_is_live(partial: str | Path) -> bool:
    """True while the writer of ``partial`` holds its lock (it is still writing).

    Non-destructive: the lock is taken for an instant and released.
    """
    partial = Path(partial)
    try:
        fd = _open_lock(_lock_path(partial))
    except FileNotFoundError:
        return False  # writers lock before creating the partial and unlock after renaming it
    if fd is None:
        return False  # not a lock vidfeat made
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)  # closing drops a lock we may have taken


def cleanup_stale_partials(set_dir: str | Path) -> list[Path]:
    """Delete partial shards (and their lock files) whose writer is dead; return the partials
    removed. Partials of live writers (lock held) are left alone. Lock files left without a
    partial (a job killed right after renaming its shard) are removed too."""
    set_dir = Path(set_dir)
    removed: list[Path] = []
    if not set_dir.is_dir():
        return removed
    for partial in sorted(set_dir.glob("part-*.h5.partial")):
        lock = _lock_path(partial)
        try:
            fd = _open_lock(lock)
        except FileNotFoundError:
            # no lock: its writer never got past creating it, or a cleanup removed it after
            # deleting the partial (then the unlink below finds nothing)
            try:
                partial.unlink()
                removed.append(partial)
            except FileNotFoundError:
                pass
            continue
        if fd is None:
            continue  # a lock that is not a regular file: left alone (store verify says so)
        try:
            if not _try_lock(fd) or not _same_file(lock, fd):
                continue
            try:
                partial.unlink()
                removed.append(partial)
            except FileNotFoundError:
                pass
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        finally:
            os.close(fd)
    for lock in sorted(set_dir.glob("part-*.h5.partial.lock")):
        partial = lock.with_name(lock.name[: -len(".lock")])
        if partial.exists():
            continue
        try:
            fd = _open_lock(lock)
        except FileNotFoundError:
            continue
        if fd is None:
            continue
        try:
            # a writer creates the lock before the partial: only remove it if nobody holds it
            if _try_lock(fd) and _same_file(lock, fd) and not partial.exists():
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        finally:
            os.close(fd)
    return removed
