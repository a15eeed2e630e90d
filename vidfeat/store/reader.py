"""The HDF5 feature store: sets, shards, failure logs, a cached index, verification.

Layout (see DESIGN.md, "Store format")::

    STORE/<set>/set.json                        the configuration every video of the set shares
    STORE/<set>/part-<job>-<k>.h5               completed shards, one HDF5 group per video id
    STORE/<set>/part-<job>-<k>.h5.partial       the shard a live (or killed) job is writing
    STORE/<set>/part-<job>-<k>.h5.partial.lock  flock'ed by the writer while the partial is live
    STORE/<set>/failures-<job>.jsonl            one JSON line per failed video
    STORE/<set>/.index.json                     cache: id -> shard (rebuilt when shards change)

Crash safety: a shard is written under a ``.partial`` name, closed, fsync'ed and only then
renamed (``os.replace``) to its final name, so a kill -9 at any moment leaves every completed
shard readable; readers ignore partials. Distinct jobs write distinct file names, so many jobs
share a set without coordinating; the same id written twice (``--overwrite``, a duplicated job)
is resolved by the reader (largest ``written_at`` attr wins, ties to the largest shard name).

Liveness of a partial: the writer creates and ``flock``s the sidecar ``.lock`` *before* creating
the partial and removes it only *after* renaming the partial. So a partial whose lock can be
acquired (or that has no lock file) belongs to a dead job; :func:`cleanup_stale_partials` deletes
exactly those.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import secrets
import socket
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidfeat.errors import ConfigError, StoreError
from vidfeat.provenance import file_sha256  # noqa: F401  (public name of the store)

__all__ = [
    "FailureLog",
    "FeatureSet",
    "FeatureStore",
    "MissingVideoError",
    "ShardWriter",
    "StoreWarning",
    "VerifyReport",
    "check_video_id",
    "cleanup_stale_partials",
    "format_info",
    "file_sha256",
    "format_verify",
    "identity",
    "is_informational",
    "partial_is_live",
    "read_failures",
    "store_info",
    "verify_store",
]

SET_JSON = "set.json"
# set.json keys that record provenance rather than what the arrays are. They never refuse a
# resume or a fusion run: library versions only warn (features may differ slightly), paths and
# ``*_info`` records (where a checkpoint lived, the run's training config) are not compared.
INFORMATIONAL_SUFFIXES = ("_version", "_path", "_info")
# Identity keys with a meaning when absent: a set written before the key existed (or by a run
# that did not set it) compares as if it had recorded this value. ``storage_dtype`` is only
# written for --float16 runs; without it arrays are stored in the extractor's own dtype.
IMPLICIT_DEFAULTS: dict[str, Any] = {"storage_dtype": "native"}
# Identity keys compared only when both the set and the run record them: a set records the
# class list of the run that created it, and a later run over a list without labels has none.
COMPARED_WHEN_BOTH = frozenset({"classes"})
INDEX_JSON = ".index.json"
INDEX_FORMAT = 2  # 2: per-video byte layouts of contiguous feature arrays
FEATURES = "features"
# dataset attr marking arrays the writer narrowed to float16 (value: the original dtype)
FLOAT16_FROM = "vidfeat_float16_from"
_MIB = 1024 * 1024
_CHUNK_BYTES = _MIB
_FLOAT16_MAX = float(np.finfo(np.float16).max)

_SHARD_RE = re.compile(r"^part-(?P<job>.+)-(?P<k>\d+)\.h5$")
_FAILURES_RE = re.compile(r"^failures-(?P<job>.+)\.jsonl$")
_JOB_RE = re.compile(r"^[\w.@+=-]+$")


class MissingVideoError(StoreError, KeyError):
    """A video id is not in a set; also a ``KeyError`` so mapping-style code can catch it."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return self.format_message()


class StoreWarning(UserWarning):
    """Something in the store needs attention but reading can go on (e.g. a corrupt shard)."""


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
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
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


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _write_json_tmp(path: Path, obj: Any) -> Path:
    """Write ``obj`` to a fresh temp file next to ``path`` (fsync'ed); return the temp path."""
    tmp = _tmp_name(path)
    data = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = _write_json_tmp(path, obj)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _h5open(path: Path, mode: str) -> h5py.File:
    """Open without HDF5's own file locks: our shards are immutable once completed and partials
    are guarded by our flock, while HDF5 locks break readers on NFS and during concurrent writes.
    New files allow the 1.8 object format so attributes larger than 64 KiB work."""
    kwargs: dict[str, Any] = {"locking": False}
    if mode in ("w", "w-", "x"):
        kwargs["libver"] = ("v108", "latest")
    return h5py.File(path, mode, **kwargs)


# --------------------------------------------------------------------------- config (set.json)


def is_informational(key: str) -> bool:
    """True for set.json keys that describe provenance, not the stored arrays (see
    ``INFORMATIONAL_SUFFIXES``)."""
    return key.endswith(INFORMATIONAL_SUFFIXES)


def identity(config: dict) -> dict:
    """The keys of a set configuration that determine its arrays (provenance dropped)."""
    return {k: v for k, v in config.items() if not is_informational(k)}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _normalise_config(config: dict) -> dict:
    """What the config looks like after a trip through set.json (tuples -> lists, numpy ->
    python), so comparisons are between like and like."""
    if not isinstance(config, dict):
        raise ConfigError(f"a set configuration must be a dict, not {type(config).__name__}")
    try:
        return json.loads(json.dumps(config, default=_json_default, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"set configuration is not JSON-serialisable ({exc}); pass plain numbers, strings, "
            "lists and dicts"
        ) from exc


def _fmt_value(v: Any, limit: int = 80) -> str:
    text = json.dumps(v, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _diff(key: str, stored: Any, asked: Any, missing: Any) -> list[tuple[str, Any, Any]]:
    """Differences as (dotted key, stored, asked); nested dicts are compared key by key so the
    message names e.g. ``run_config.lr`` rather than dumping the whole dict."""
    if isinstance(stored, dict) and isinstance(asked, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(stored) | set(asked)):
            out += _diff(f"{key}.{k}", stored.get(k, missing), asked.get(k, missing), missing)
        return out
    return [] if stored == asked else [(key, stored, asked)]


def _read_set_json(path: Path, set_name: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{path} (configuration of set {set_name!r}) cannot be read ({exc}); restore it from "
            "a backup or delete the set folder and extract again"
        ) from exc
    if not isinstance(cfg, dict):
        raise StoreError(
            f"{path} does not hold a JSON object; restore it or delete the set and extract again"
        )
    return cfg


class FeatureStore:
    """A folder of feature sets, one sub-folder per set (``STORE/<set>/set.json`` + shards)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    def sets(self) -> list[str]:
        """Names of the sets present (sub-folders holding a ``set.json``), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.name.startswith(".") and (p / SET_JSON).is_file()
        )

    def set_dir(self, name: str) -> Path:
        """The folder of set ``name`` (not created)."""
        return self.root / _check_set_name(name)

    def ensure_set(self, name: str, config: dict) -> dict:
        """Create set ``name`` with ``config`` or check that the existing set matches it.

        ``set.json`` is created atomically (temp file + ``os.link``, which fails if another
        process won the race; that process's file is then compared like any existing one), so
        concurrent jobs starting with the same config all succeed.

        The comparison is symmetric: a key present on only one side differs from its absence
        (a float16 set refuses a float32 run and the other way round), and every differing key
        raises one :class:`ConfigError` naming them with both values. Exceptions: informational
        keys (:func:`is_informational`) never refuse (a ``*_version`` difference warns,
        ``*_path`` and ``*_info`` are not compared); a missing key of ``IMPLICIT_DEFAULTS``
        compares as its default (no ``storage_dtype`` means ``"native"``); keys of
        ``COMPARED_WHEN_BOTH`` (``classes``) are compared only when both sides have them.
        Returns the stored configuration.
        """
        d = self.set_dir(name)
        asked = _normalise_config(config)
        path = d / SET_JSON
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create set folder {d} ({exc}); check the --store path"
            ) from exc
        if not path.exists():
            if self._create_set_json(path, asked):
                return asked
        stored = self._read_when_complete(path, name)
        self._compare(name, stored, asked)
        return stored

    @staticmethod
    def _read_when_complete(path: Path, name: str) -> dict:
        # Only the no-hard-link fallback can expose a set.json still being written; give its
        # writer a moment before calling the file broken.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                return _read_set_json(path, name)
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @staticmethod
    def _create_set_json(path: Path, config: dict) -> bool:
        """True if this call created ``path``; False if another process got there first."""
        try:
            tmp = _write_json_tmp(path, config)
        except OSError as exc:
            raise StoreError(
                f"cannot write {path} ({exc}); check permissions / free space"
            ) from exc
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise StoreError(f"cannot create {path} ({exc})") from exc
            # filesystem without hard links: O_EXCL still decides one winner
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                _write_all(fd, tmp.read_bytes())
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _fsync_path(path.parent, directory=True)
        return True

    @staticmethod
    def _compare(name: str, stored: dict, asked: dict) -> None:
        missing = "<absent>"
        diffs: list[tuple[str, Any, Any]] = []
        version_diffs: list[tuple[str, Any, Any]] = []
        for key in sorted(set(stored) | set(asked)):
            if is_informational(key) and not key.endswith("_version"):
                continue
            if key in COMPARED_WHEN_BOTH and not (key in stored and key in asked):
                continue
            default = IMPLICIT_DEFAULTS.get(key, missing)
            d = _diff(key, stored.get(key, default), asked.get(key, default), missing)
            (version_diffs if key.endswith("_version") else diffs).extend(d)
        if version_diffs:
            txt = ", ".join(
                f"{k}={_fmt_value(a)} (set has {_fmt_value(s)})" for k, s, a in version_diffs
            )
            warnings.warn(
                f"set {name!r} was written with other library versions; this run has {txt}. "
                "Features may differ slightly; use --name for a separate set if that matters",
                StoreWarning,
                stacklevel=3,
            )
        if diffs:
            was = ", ".join(f"{k}={_fmt_value(s)}" for k, s, _ in diffs)
            now = ", ".join(f"{k}={_fmt_value(a)}" for k, _, a in diffs)
            raise ConfigError(
                f"set {name!r} was written with {was}, this run asks {now}; "
                "use --name for a new set or a new store"
            )

    def open_set(self, name: str) -> FeatureSet:
        """A reader for set ``name``; :class:`StoreError` listing the sets present if absent."""
        d = self.set_dir(name)
        if not (d / SET_JSON).is_file():
            present = self.sets()
            have = ", ".join(present) if present else "none"
            raise StoreError(
                f"no feature set {name!r} in store {self.root} (sets present: {have}); "
                f"extract it first (vidfeat extract ... --store {self.root} --name {name}) "
                "or pick one of the sets present"
            )
        return FeatureSet(d)


# --------------------------------------------------------------------------- attrs


def _encode_attr(key: str, value: Any) -> Any:
    """Validate/convert one attr to something h5py stores faithfully; None means omit."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return np.bool_(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise StoreError(f"attr {key!r} contains a NUL character, which HDF5 cannot store")
        return value
    if isinstance(value, bytes):
        return np.void(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple | np.ndarray):
        arr = np.asarray(value)
        if arr.dtype.kind == "U" or (
            arr.dtype.kind == "O" and all(isinstance(x, str) for x in arr.ravel())
        ):
            return arr.astype(h5py.string_dtype())
        if arr.dtype.kind in "biufc":
            return arr
        raise StoreError(
            f"attr {key!r} is an array of {arr.dtype} which cannot be stored faithfully; "
            "pass numbers, booleans or strings"
        )
    raise StoreError(
        f"attr {key!r} has type {type(value).__name__}; store attrs as str, int, float, bool "
        "or numpy arrays (encode anything else, e.g. as a JSON string)"
    )


def _decode_attr(value: Any) -> Any:
    if isinstance(value, np.void):
        return value.tobytes()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return np.array(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value.ravel()],
            dtype=object,
        ).reshape(value.shape)
    return value


def _read_attrs(obj: h5py.Group) -> dict:
    return {k: _decode_attr(v) for k, v in obj.attrs.items()}


# --------------------------------------------------------------------------- partial locks


def _lock_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".lock")


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
        fd = os.open(_lock_path(partial), os.O_RDONLY)
    except FileNotFoundError:
        return False  # writers lock before creating the partial and unlock after renaming it
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
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            # no lock: its writer never got past creating it, or a cleanup removed it after
            # deleting the partial (then the unlink below finds nothing)
            try:
                partial.unlink()
                removed.append(partial)
            except FileNotFoundError:
                pass
            continue
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
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            # a writer creates the lock before the partial: only remove it if nobody holds it
            if _try_lock(fd) and _same_file(lock, fd) and not partial.exists():
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        finally:
            os.close(fd)
    return removed


# --------------------------------------------------------------------------- writer


def _crash_point(name: str) -> None:
    """Fault injection for the reliability tests; unset, a no-op.

    ``VIDFEAT_CRASH_AT=<point>:<n>[:<mode>]`` acts the n-th time (default 1st) the process
    reaches ``<point>``: mode ``kill`` (default) SIGKILLs the process itself (no cleanup);
    mode ``stop`` SIGSTOPs it, so a test can wait for the stop (``waitpid(pid, WUNTRACED)``),
    look at the store at exactly that moment, then kill it from outside.
    Points: ``after-open`` (a new partial shard was created, still empty), ``after-add`` (a
    video is in the partial, before the shard may rotate), ``before-rename`` and
    ``after-rename`` (around the rename that completes a shard).
    """
    spec = os.environ.get("VIDFEAT_CRASH_AT")
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    nth, _, mode = rest.partition(":")
    if mode not in ("", "kill", "stop"):
        raise ValueError(f"VIDFEAT_CRASH_AT mode must be kill or stop (got {mode!r})")
    _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
    if _CRASH_COUNTS[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGSTOP if mode == "stop" else signal.SIGKILL)


_CRASH_COUNTS: dict[str, int] = {}


class ShardWriter:
    """Writes videos of one job into ``part-<job>-<k>.h5`` shards of a set (context manager).

    Each shard is written as ``part-<job>-<k>.h5.partial`` (created exclusively, k past every
    existing shard, partial or lock of this job, so nothing is ever overwritten) while the writer
    holds an ``fcntl.flock`` on ``<partial>.lock``. After ``max_videos`` videos or ``max_mb`` MiB
    of added array data (uncompressed, as stored) the shard is closed, fsync'ed and renamed to
    its final name. Leaving the ``with`` block — also by an exception — completes the current
    shard, so every video whose :meth:`add` returned is kept.

    ``compression``: ``"auto"`` (gzip for integer arrays such as uint8 flow fields, which it
    shrinks several-fold; float features uncompressed: CNN features barely compress — lzf
    keeps 87% of the bytes, gzip 71% — while contiguous arrays read 3x faster, with one
    ``pread`` past HDF5, see :meth:`FeatureSet.features`), ``"gzip"``
    (``compression_level`` 0-9), ``"lzf"`` or None.
    ``min_free_mb``: stop with a clear error (completing the current shard) when the disk has
    less than this much free space left.
    ``float16=True`` stores float32/float64 ``features`` as float16 (integers and ``extra``
    arrays are untouched; values beyond the float16 range are refused rather than turned into
    Inf).
    """

    def __init__(
        self,
        set_dir: str | Path,
        job: str,
        *,
        max_videos: int = 64,
        max_mb: float = 256.0,
        compression: str | None = "auto",
        compression_level: int = 4,
        float16: bool = False,
        min_free_mb: float = 64.0,
    ) -> None:
        self.set_dir = Path(set_dir)
        self.job = _check_job(job)
        if int(max_videos) < 1:
            raise ConfigError(f"--shard-videos must be >= 1 (got {max_videos})")
        if not float(max_mb) > 0:
            raise ConfigError(f"--shard-mb must be > 0 (got {max_mb})")
        if compression not in ("auto", "gzip", "lzf", None):
            raise ConfigError(
                f"compression must be 'auto', 'gzip', 'lzf' or None (got {compression!r})"
            )
        if compression == "gzip" and not 0 <= int(compression_level) <= 9:
            raise ConfigError(f"gzip compression level must be 0-9 (got {compression_level})")
        if not self.set_dir.is_dir():
            raise StoreError(
                f"set folder {self.set_dir} does not exist; create the set first "
                "(FeatureStore.ensure_set)"
            )
        self.max_videos = int(max_videos)
        self.max_bytes = float(max_mb) * _MIB
        self.compression = compression
        self.compression_level = int(compression_level)
        self.float16 = bool(float16)
        self.min_free = float(min_free_mb) * _MIB
        self._file: h5py.File | None = None
        self._partial: Path | None = None
        self._final: Path | None = None
        self._lock: Path | None = None
        self._lock_fd: int | None = None
        self._next_k = 0
        self._pending: list[str] = []
        self._bytes = 0
        self._written: list[str] = []
        self._shards: list[Path] = []
        self._closed = False

    # -- public

    @property
    def written_ids(self) -> list[str]:
        """Ids in shards this writer has completed (durable), in the order they were added."""
        return list(self._written)

    @property
    def shards(self) -> list[Path]:
        """Completed shard files written by this writer."""
        return list(self._shards)

    def add(
        self,
        video_id: str,
        features: np.ndarray,
        attrs: dict,
        extra: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Store one video: dataset ``features``, optional ``extra`` datasets, group attrs.

        Attrs may be str, int, float, bool, numpy scalars/arrays, lists of numbers or strings;
        None values are omitted. ``written_at`` (unix time) is added when absent; readers use it
        to choose between duplicate copies of an id. Adding an id already in the current
        partial replaces it. On failure nothing of this video stays in the shard.
        """
        if self._closed:
            raise StoreError("this ShardWriter is closed; open a new one to add videos")
        check_video_id(video_id)
        feats, from_dtype = self._prepare_features(video_id, features)
        extras: dict[str, np.ndarray] = {}
        for name, arr in (extra or {}).items():
            if not isinstance(name, str) or not name or name == FEATURES or "/" in name:
                raise StoreError(
                    f"extra dataset name {name!r} of video {video_id!r} is invalid: use a plain "
                    f"name other than {FEATURES!r} (e.g. 'scores')"
                )
            a = np.asarray(arr)
            if a.dtype.kind not in "biufc":
                raise StoreError(f"extra {name!r} of video {video_id!r} has dtype {a.dtype}")
            extras[name] = a
        if not isinstance(attrs, dict):
            raise StoreError(f"attrs of video {video_id!r} must be a dict")
        enc = {}
        for k, v in attrs.items():
            if not isinstance(k, str) or not k:
                raise StoreError(f"attr names must be non-empty strings (got {k!r})")
            e = _encode_attr(k, v)
            if e is not None:
                enc[k] = e
        enc.setdefault("written_at", time.time())

        self._check_free_space(video_id, feats.nbytes + sum(a.nbytes for a in extras.values()))
        f = self._ensure_open()
        if video_id in f:
            del f[video_id]
            self._pending.remove(video_id)
        try:
            g = f.create_group(video_id)
            ds = self._write_dataset(g, FEATURES, feats)
            if from_dtype is not None:
                ds.attrs[FLOAT16_FROM] = from_dtype
            for name, a in extras.items():
                self._write_dataset(g, name, a)
            for k, v in enc.items():
                g.attrs[k] = v
        except BaseException as exc:
            with contextlib.suppress(Exception):
                if video_id in f:
                    del f[video_id]
            if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                raise StoreError(
                    f"cannot write video {video_id!r} to {self._partial} ({exc}); check free "
                    "disk space and the attrs/arrays passed"
                ) from exc
            raise
        self._pending.append(video_id)
        self._bytes += feats.nbytes + sum(a.nbytes for a in extras.values())
        _crash_point("after-add")
        if len(self._pending) >= self.max_videos or self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Complete the current partial shard (close, fsync, rename) if it holds anything."""
        if self._file is None:
            return
        f, partial, final = self._file, self._partial, self._final
        assert partial is not None and final is not None
        self._file = None
        try:
            f.close()
            if not self._pending:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
            else:
                _fsync_path(partial)
                if final.exists():  # cannot happen unless someone reuses this job name by hand
                    raise StoreError(
                        f"{final} appeared while this job was writing it; two jobs share the "
                        f"job name {self.job!r}. Give each job a unique --job"
                    )
                _crash_point("before-rename")
                os.replace(partial, final)
                _crash_point("after-rename")
                _fsync_path(self.set_dir, directory=True)
                self._written.extend(self._pending)
                self._shards.append(final)
        except OSError as exc:
            raise StoreError(
                f"cannot complete shard {final} ({exc}); check free disk space. Its videos will "
                "be extracted again on the next run"
            ) from exc
        finally:
            self._pending = []
            self._bytes = 0
            self._partial = self._final = None
            self._release_lock()

    def close(self) -> None:
        """Complete the current shard and release everything; safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception as close_exc:  # noqa: BLE001 - never hide the original exception
            warnings.warn(
                f"could not complete the last shard while handling {exc_type.__name__}: "
                f"{close_exc}",
                StoreWarning,
                stacklevel=2,
            )

    # -- internals

    def _prepare_features(self, video_id: str, features: np.ndarray) -> tuple[np.ndarray, Any]:
        a = np.asarray(features)
        if a.dtype.kind not in "biufc":
            raise StoreError(
                f"features of video {video_id!r} have dtype {a.dtype}; store numeric arrays"
            )
        if self.float16 and a.dtype in (np.float32, np.float64):
            finite = a[np.isfinite(a)]
            if finite.size and float(np.abs(finite).max()) > _FLOAT16_MAX:
                raise StoreError(
                    f"features of video {video_id!r} exceed the float16 range (max |x| = "
                    f"{float(np.abs(finite).max()):.4g} > {_FLOAT16_MAX:g}); extract without "
                    "--float16"
                )
            return a.astype(np.float16), str(a.dtype)
        return a, None

    def _write_dataset(self, g: h5py.Group, name: str, a: np.ndarray) -> h5py.Dataset:
        if a.ndim == 0 or a.size == 0 or self.compression is None:
            return g.create_dataset(name, data=a)
        if a.nbytes <= _CHUNK_BYTES:
            chunks = a.shape
        else:  # whole rows along the first (time) axis, about 1 MiB per chunk
            row = max(1, a.nbytes // a.shape[0])
            chunks = (max(1, min(a.shape[0], _CHUNK_BYTES // row)),) + a.shape[1:]
        method = self.compression
        if method == "auto":
            if a.dtype.kind in "fc":  # float features: stored as they are (see the docstring)
                return g.create_dataset(name, data=a)
            method = "gzip"
        kw: dict[str, Any] = {"compression": method, "chunks": chunks}
        if method == "gzip":
            kw["compression_opts"] = self.compression_level
        if a.dtype.itemsize > 1:
            kw["shuffle"] = True  # byte-shuffling makes float/int arrays compress much better
        return g.create_dataset(name, data=a, **kw)

    def _existing_k(self) -> int:
        pat = re.compile(rf"^part-{re.escape(self.job)}-(\d+)\.h5(\.partial(\.lock)?)?$")
        ks = [int(m.group(1)) for p in os.listdir(self.set_dir) if (m := pat.match(p))]
        return max(ks) + 1 if ks else 0

    def _check_free_space(self, video_id: str, nbytes: int) -> None:
        """Refuse to write when the disk is nearly full. HDF5 does not survive running out of
        space mid-write (it can crash the process), so the writer stops first, completing
        the current shard in the reserve it kept."""
        try:
            st = os.statvfs(self.set_dir)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < 2 * nbytes + self.min_free:
            try:
                self.flush()
            finally:
                raise StoreError(
                    f"disk full: {free / _MIB:.1f} MiB free in {self.set_dir}, below the "
                    f"{self.min_free / _MIB:g} MiB reserve (--min-free-mb); free disk space "
                    f"and rerun: completed videos are kept (stopped before {video_id!r})"
                )

    def _ensure_open(self) -> h5py.File:
        if self._file is not None:
            return self._file
        k = max(self._next_k, self._existing_k())
        for _ in range(10_000):
            stem = f"part-{self.job}-{k}.h5"
            partial = self.set_dir / f"{stem}.partial"
            lock = _lock_path(partial)
            k += 1
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            except OSError as exc:
                raise StoreError(
                    f"cannot create {lock} ({exc}); check that the store is writable"
                ) from exc
            # a cleanup may have grabbed and unlinked the fresh lock before we locked it
            if not _try_lock(fd) or not _same_file(lock, fd):
                os.close(fd)
                continue
            with contextlib.suppress(OSError):
                _write_all(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode())
            if (self.set_dir / stem).exists() or partial.exists():
                self._lock_fd, self._lock = fd, lock
                self._release_lock()
                continue
            try:
                f = _h5open(partial, "w-")  # exclusive create: never clobbers a file
            except (FileExistsError, OSError) as exc:
                self._lock_fd, self._lock = fd, lock
                self._release_lock()
                if partial.exists():
                    continue
                raise StoreError(
                    f"cannot create shard {partial} ({exc}); check that the store is writable"
                ) from exc
            self._file, self._partial, self._final = f, partial, self.set_dir / stem
            self._lock_fd, self._lock = fd, lock
            self._next_k = k
            _crash_point("after-open")
            return f
        raise StoreError(f"no free shard number for job {self.job!r} in {self.set_dir}")

    def _release_lock(self) -> None:
        if self._lock_fd is None:
            return
        # unlink before unlocking: a cleanup that then locks the old inode sees it is not the
        # current lock file and leaves things alone
        if self._lock is not None:
            with contextlib.suppress(FileNotFoundError):
                self._lock.unlink()
        os.close(self._lock_fd)
        self._lock_fd = None
        self._lock = None


# --------------------------------------------------------------------------- failures


class FailureLog:
    """Append-only ``failures-<job>.jsonl`` of a set: one JSON object per failed video.

    Each :meth:`add` writes one whole line with a single ``write`` and fsyncs it, so a crash
    can at worst tear the last line (which :func:`read_failures` skips and the next ``add``
    terminates).
    """

    def __init__(self, set_dir: str | Path, job: str) -> None:
        self.set_dir = Path(set_dir)
        self.job = _check_job(job)
        self.path = self.set_dir / f"failures-{self.job}.jsonl"

    def add(self, video_id: str, path: str, error_class: str, message: str) -> None:
        """Record that ``video_id`` (file ``path``) failed with ``error_class``: ``message``."""
        rec = {
            "video_id": video_id,
            "path": str(path),
            "error_class": error_class,
            "message": message,
            "time": time.time(),
            "job": self.job,
        }
        data = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path} ({exc}); check permissions") from exc
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # end a torn line left by a crash before adding ours
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_failures(set_dir: str | Path) -> list[dict]:
    """Every record of every ``failures-*.jsonl`` of a set (files in name order, lines in
    order). Unparsable lines (a torn last line after a crash) are skipped."""
    set_dir = Path(set_dir)
    out: list[dict] = []
    if not set_dir.is_dir():
        return out
    for p in sorted(set_dir.glob("failures-*.jsonl")):
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            warnings.warn(f"cannot read {p} ({exc}); skipped", StoreWarning, stacklevel=2)
            continue
        m = _FAILURES_RE.match(p.name)
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "video_id" in rec:
                rec.setdefault("job", m.group("job") if m else "")
                out.append(rec)
    return out


# --------------------------------------------------------------------------- reader


def _shard_files(set_dir: Path) -> list[tuple[str, os.stat_result]]:
    out = []
    try:
        names = os.listdir(set_dir)
    except OSError:
        return out
    for n in sorted(names):
        if _SHARD_RE.match(n):
            try:
                st = os.stat(set_dir / n)
            except FileNotFoundError:
                continue
            if not os.path.isdir(set_dir / n):
                out.append((n, st))
    return out


def _scan_shard(path: Path) -> tuple[list[str], dict[str, list]]:
    """The ids of a shard, and for each video whose ``features`` is stored contiguous and
    unfiltered (uncompressed float features, the default) its byte layout ``[offset, shape,
    dtype]``: :meth:`FeatureSet.features` then reads it with one ``pread``, past HDF5."""
    with _h5open(path, "r") as f:
        ids = sorted(f.keys())
        raw: dict[str, list] = {}
        for vid in ids:
            try:
                ds = f[vid][FEATURES]
                if (
                    not isinstance(ds, h5py.Dataset)
                    or ds.chunks is not None  # chunked: compressed, or filters
                    or ds.dtype.kind not in "fiub"
                    or ds.size == 0
                ):
                    continue
                offset = ds.id.get_offset()  # None for compact or unallocated storage
                if offset is not None:
                    raw[vid] = [int(offset), [int(n) for n in ds.shape], ds.dtype.str]
            except Exception:  # noqa: BLE001 - that video is read through h5py, which reports
                continue
        return ids, raw


def _valid_layout(lay: object) -> bool:
    """A cached ``[offset, shape, dtype]`` of the expected types (the cache is untrusted)."""
    try:
        return (
            isinstance(lay, list)
            and len(lay) == 3
            and isinstance(lay[0], int)
            and lay[0] >= 0
            and isinstance(lay[1], list)
            and all(isinstance(n, int) and n > 0 for n in lay[1])
            and isinstance(lay[2], str)
            and np.dtype(lay[2]).kind in "fiub"
        )
    except TypeError:
        return False


def _written_at(path: Path, video_id: str) -> float:
    try:
        with _h5open(path, "r") as f:
            v = f[video_id].attrs.get("written_at")
        t = float(v) if v is not None else -math.inf
        return t if not math.isnan(t) else -math.inf
    except Exception:  # noqa: BLE001 - an unreadable copy loses to any readable one
        return -math.inf


class FeatureSet:
    """Reads one set of a store: ``fs.get(id) -> (features, attrs)``.

    Only completed ``*.h5`` shards are read; partials are ignored. The id -> shard index is
    built by listing the groups of each shard and cached in ``<set>/.index.json`` per shard
    (keyed by name, size and mtime_ns), so reopening a large set only rescans shards that
    appeared or changed. The cache is written atomically; a corrupt cache is rebuilt and a
    read-only set works without it. Call :meth:`refresh` to see shards completed since opening.

    Duplicates: an id present in several shards (``--overwrite``, a duplicated job) resolves
    deterministically to the copy with the largest ``written_at`` attr; ties (or missing
    attrs) go to the lexicographically largest shard name. :meth:`duplicates` lists them.

    Shard files are opened lazily, read-only, without HDF5 file locks, and kept open in a small
    LRU (``max_open``). Handles are per process: after a fork (DataLoader workers) they are
    reopened, never shared; pickling drops them. A shard that cannot be opened is skipped with
    a :class:`StoreWarning`; ``vidfeat store verify`` reports it.
    """

    def __init__(self, set_dir: str | Path, *, max_open: int = 32) -> None:
        self.dir = Path(set_dir)
        self.name = self.dir.name
        try:
            self.config: dict = _read_set_json(self.dir / SET_JSON, self.name)
        except FileNotFoundError as exc:
            raise StoreError(
                f"{self.dir} is not a feature set (no {SET_JSON}); check the --store path and "
                "set name"
            ) from exc
        self.max_open = max(1, int(max_open))
        self._handles: OrderedDict[str, h5py.File] = OrderedDict()
        self._fds: OrderedDict[str, int] = OrderedDict()  # raw reads of contiguous arrays
        self._stat: dict[str, tuple[int, int]] = {}
        self._raw: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        self._pid = os.getpid()
        self._where: dict[str, str] = {}
        self._copies: dict[str, list[str]] = {}
        self._bad: dict[str, str] = {}
        self._ids: list[str] = []
        self.refresh()

    def __repr__(self) -> str:
        return f"FeatureSet({str(self.dir)!r}, {len(self)} videos)"

    # -- index

    def refresh(self) -> None:
        """Rebuild the index from the shards now on disk (reusing cached per-shard listings)."""
        cache = self._load_cache()
        cached_shards = cache.get("shards", {})
        cached_wat = cache.get("written_at", {})
        files = _shard_files(self.dir)
        shards: dict[str, dict] = {}
        changed = set(cached_shards) != {n for n, _ in files}
        for name, st in files:
            c = cached_shards.get(name)
            if (
                isinstance(c, dict)
                and c.get("size") == st.st_size
                and c.get("mtime_ns") == st.st_mtime_ns
                and (isinstance(c.get("ids"), list) or isinstance(c.get("error"), str))
            ):
                shards[name] = c
                continue
            changed = True
            entry: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            try:
                entry["ids"], entry["raw"] = _scan_shard(self.dir / name)
            except Exception as exc:  # noqa: BLE001 - one bad shard must not hide the others
                entry["error"] = f"{type(exc).__name__}: {exc}"
            shards[name] = entry

        self._bad = {n: e["error"] for n, e in shards.items() if "error" in e}
        for n, err in self._bad.items():
            warnings.warn(
                f"set {self.name!r}: shard {n} cannot be opened ({err}); its videos are skipped. "
                f"Run `vidfeat store verify {self.dir.parent}`, then delete the shard and "
                "extract again (completed videos are skipped)",
                StoreWarning,
                stacklevel=3,
            )
        where: dict[str, list[str]] = {}
        for n in sorted(shards):
            for vid in shards[n].get("ids", []):
                where.setdefault(vid, []).append(n)
        wat_out: dict[str, dict[str, float]] = {}
        self._where, self._copies = {}, {}
        for vid, names in where.items():
            if len(names) == 1:
                self._where[vid] = names[0]
                continue
            keys = []
            for n in names:
                c = (
                    cached_wat.get(n, {})
                    if n in cached_shards and shards[n] is cached_shards[n]
                    else {}
                )
                t = c.get(vid) if isinstance(c, dict) else None
                if not isinstance(t, int | float):
                    t = _written_at(self.dir / n, vid)
                    changed = True
                wat_out.setdefault(n, {})[vid] = t
                keys.append((t, n))
            self._copies[vid] = names
            self._where[vid] = max(keys)[1]
        self._ids = sorted(self._where)
        # byte layouts of the chosen copies, and the size + mtime the shards had when listed
        self._stat = {n: (e["size"], e["mtime_ns"]) for n, e in shards.items()}
        self._raw = {}
        for vid, n in self._where.items():
            layouts = shards[n].get("raw")
            lay = layouts.get(vid) if isinstance(layouts, dict) else None
            if _valid_layout(lay):
                self._raw[vid] = (int(lay[0]), tuple(lay[1]), np.dtype(lay[2]))
        # open handles may point at replaced files
        self._close_handles()
        if changed:
            self._save_cache(
                {
                    "format": INDEX_FORMAT,
                    "shards": shards,
                    "written_at": {
                        n: {k: (v if math.isfinite(v) else None) for k, v in d.items()}
                        for n, d in wat_out.items()
                    },
                }
            )

    def _load_cache(self) -> dict:
        try:
            with open(self.dir / INDEX_JSON, encoding="utf-8") as fh:
                cache = json.load(fh)
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(cache, dict)
            or cache.get("format") != INDEX_FORMAT
            or not isinstance(cache.get("shards"), dict)
            or not isinstance(cache.get("written_at", {}), dict)
        ):
            return {}
        return cache

    def _save_cache(self, cache: dict) -> None:
        try:
            _atomic_write_json(self.dir / INDEX_JSON, cache)
        except OSError:
            pass  # read-only set (or full disk): the index is only a cache

    # -- handles

    def _forget_if_forked(self) -> None:
        if os.getpid() != self._pid:
            # forked: the parent's HDF5 handles and descriptors must not be used (or closed) here
            self._handles, self._fds = OrderedDict(), OrderedDict()
            self._pid = os.getpid()

    def _file(self, shard: str) -> h5py.File:
        self._forget_if_forked()
        f = self._handles.get(shard)
        if f is not None:
            self._handles.move_to_end(shard)
            return f
        try:
            f = _h5open(self.dir / shard, "r")
        except Exception as exc:  # noqa: BLE001
            raise StoreError(
                f"set {self.name!r}: shard {shard} cannot be opened ({exc}); run "
                f"`vidfeat store verify {self.dir.parent}`"
            ) from exc
        self._handles[shard] = f
        while len(self._handles) > self.max_open:
            _, old = self._handles.popitem(last=False)
            with contextlib.suppress(Exception):
                old.close()
        return f

    def _close_handles(self) -> None:
        if os.getpid() == self._pid:
            for f in self._handles.values():
                with contextlib.suppress(Exception):
                    f.close()
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._handles = OrderedDict()
        self._fds = OrderedDict()
        self._pid = os.getpid()

    def _fd(self, shard: str) -> int:
        """A raw descriptor of a completed shard, checked to be the file the index listed."""
        self._forget_if_forked()
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        fd = os.open(self.dir / shard, os.O_RDONLY)
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != self._stat.get(shard):
            os.close(fd)
            raise StoreError(
                f"shard {shard} of set {self.name!r} was replaced since the set was opened: "
                "reopen the set"
            )
        self._fds[shard] = fd
        while len(self._fds) > self.max_open:
            _, old = self._fds.popitem(last=False)
            with contextlib.suppress(OSError):
                os.close(old)
        return fd

    def _group(self, video_id: str) -> h5py.Group:
        shard = self._where.get(video_id) if isinstance(video_id, str) else None
        if shard is None:
            raise MissingVideoError(
                f"video {video_id!r} is not in set {self.name!r} ({len(self)} videos); extract "
                "it, or check the id against the video list"
            )
        f = self._file(shard)
        try:
            return f[video_id]
        except KeyError as exc:
            raise StoreError(
                f"video {video_id!r} vanished from shard {shard} of set {self.name!r}; the shard "
                "was replaced since the set was opened: reopen the set"
            ) from exc

    # -- public

    def ids(self) -> list[str]:
        """All video ids of the set, sorted, each once."""
        return list(self._ids)

    def completed_ids(self) -> set[str]:
        """Ids present in a completed shard (the resume point)."""
        return set(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and video_id in self._where

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, dict]]:
        for vid in self._ids:
            arr, attrs = self.get(vid)
            yield vid, arr, attrs

    def get(self, video_id: str) -> tuple[np.ndarray, dict]:
        """``(features, attrs)`` of a video: the array in its stored dtype, attrs as python
        scalars / str / numpy arrays. :class:`StoreError` naming the set if absent."""
        g = self._group(video_id)
        try:
            return g[FEATURES][()], _read_attrs(g)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(
                f"video {video_id!r} in shard {self._where[video_id]} of set {self.name!r} cannot "
                f"be read ({exc}); run `vidfeat store verify {self.dir.parent}`"
            ) from exc

    def features(self, video_id: str) -> np.ndarray:
        """The ``features`` array of a video alone (no attrs decoded: the fast path for
        training loops). A contiguous, uncompressed array is read with one ``pread`` at the
        offset the index recorded, past h5py's per-call overhead (shards never change once
        completed, and the file is checked to be the one indexed); others go through h5py."""
        lay = self._raw.get(video_id) if isinstance(video_id, str) else None
        if lay is not None:
            offset, shape, dtype = lay
            shard = self._where[video_id]
            buf = bytearray(dtype.itemsize * math.prod(shape))
            try:
                got = os.preadv(self._fd(shard), [buf], offset)
            except OSError as exc:
                raise StoreError(
                    f"video {video_id!r} in shard {shard} of set {self.name!r} cannot be read "
                    f"({exc}); run `vidfeat store verify {self.dir.parent}`"
                ) from exc
            if got != len(buf):
                raise StoreError(
                    f"video {video_id!r}: shard {shard} of set {self.name!r} is shorter than "
                    f"its index says; run `vidfeat store verify {self.dir.parent}`"
                )
            return np.frombuffer(buf, dtype=dtype).reshape(shape)
        g = self._group(video_id)
        try:
            return g[FEATURES][()]
        except Exception as exc:  # noqa: BLE001
            raise StoreError(
                f"video {video_id!r} in shard {self._where[video_id]} of set {self.name!r} cannot "
                f"be read ({exc}); run `vidfeat store verify {self.dir.parent}`"
            ) from exc

    def get_extra(self, video_id: str, name: str) -> np.ndarray | None:
        """Extra dataset ``name`` (e.g. ``"scores"``) of a video, None if it has none."""
        g = self._group(video_id)
        ds = g.get(name)
        return None if ds is None or not isinstance(ds, h5py.Dataset) else ds[()]

    def attrs(self, video_id: str) -> dict:
        """The attrs of a video without reading its features."""
        return _read_attrs(self._group(video_id))

    def shard_of(self, video_id: str) -> Path:
        """The completed shard the reader takes ``video_id`` from."""
        if video_id not in self:
            raise MissingVideoError(f"video {video_id!r} is not in set {self.name!r}")
        return self.dir / self._where[video_id]

    def duplicates(self) -> dict[str, list[Path]]:
        """Ids present in more than one completed shard → those shards (sorted by name)."""
        return {v: [self.dir / n for n in names] for v, names in sorted(self._copies.items())}

    def bad_shards(self) -> dict[str, str]:
        """Shards that could not be opened → the error."""
        return dict(self._bad)

    def shards(self) -> list[Path]:
        """Completed shard files (including unreadable ones)."""
        return [self.dir / n for n, _ in _shard_files(self.dir)]

    def failures(self) -> list[dict]:
        """All failure records of the set (see :func:`read_failures`)."""
        return read_failures(self.dir)

    def close(self) -> None:
        """Close open shard files (the set stays usable; files reopen on demand)."""
        self._close_handles()

    def __enter__(self) -> FeatureSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._close_handles()


# --------------------------------------------------------------------------- verify / info


@dataclass
class VerifyReport:
    """Result of :func:`verify_store`: ``problems`` make it fail; ``warnings`` and ``notes``
    do not. ``sets`` holds per-set counts."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sets: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _few(items, n: int = 10) -> str:
    items = sorted(items)
    s = ", ".join(repr(x) for x in items[:n])
    return s + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def _shape_ok(shape: tuple[int, ...], want: Any) -> bool:
    if not isinstance(want, list | tuple):
        return True
    if len(shape) != len(want):
        return False
    return all(w is None or w == -1 or int(w) == s for s, w in zip(shape, want, strict=True))


def _check_array(a: np.ndarray) -> str | None:
    if a.dtype.kind not in "fc":
        return None
    finite = np.isfinite(a)
    if finite.all():
        return None
    n_nan = int(np.isnan(a).sum())
    n_inf = int(a.size - finite.sum()) - n_nan
    parts = [f"{n_nan} NaN"] if n_nan else []
    parts += [f"{n_inf} Inf"] if n_inf else []
    return " and ".join(parts)


def _verify_set(root: Path, name: str, expect_ids: set[str] | None, rep: VerifyReport) -> None:
    d = root / name
    counts = {
        "videos": 0,
        "shards": 0,
        "bad_shards": 0,
        "duplicates": 0,
        "failed": 0,
        "stale_partials": 0,
        "live_partials": 0,
    }
    rep.sets[name] = counts
    try:
        cfg = _read_set_json(d / SET_JSON, name)
    except (StoreError, FileNotFoundError) as exc:
        rep.problems.append(str(exc))
        cfg = {}
    want_shape = cfg.get("feature_shape")
    want_dtype = cfg.get("dtype")
    storage = cfg.get("storage_dtype")
    fix = "delete that shard and run the extraction again (completed videos are skipped)"
    copies: dict[str, list[str]] = {}
    for shard, _ in _shard_files(d):
        counts["shards"] += 1
        try:
            f = _h5open(d / shard, "r")
        except Exception as exc:  # noqa: BLE001
            counts["bad_shards"] += 1
            rep.problems.append(f"set {name!r}: shard {shard} cannot be opened ({exc}); {fix}")
            continue
        with f:
            for vid in f:
                copies.setdefault(vid, []).append(shard)
                where = f"set {name!r}, video {vid!r} ({shard})"
                try:
                    g = f[vid]
                    if not isinstance(g, h5py.Group) or FEATURES not in g:
                        rep.problems.append(f"{where}: no '{FEATURES}' dataset; {fix}")
                        continue
                    ds = g[FEATURES]
                    if not _shape_ok(ds.shape, want_shape):
                        rep.problems.append(
                            f"{where}: features have shape {list(ds.shape)}, set.json says "
                            f"{want_shape}; {fix}"
                        )
                    if want_dtype is not None and ds.dtype != np.dtype(want_dtype):
                        narrowed = ds.dtype == np.float16 and (
                            storage == "float16" or FLOAT16_FROM in ds.attrs
                        )
                        if not narrowed:
                            rep.problems.append(
                                f"{where}: features are {ds.dtype}, set.json says {want_dtype}; "
                                f"{fix}"
                            )
                    for dname, obj in g.items():
                        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fc":
                            bad = _check_array(obj[()])
                            if bad:
                                rep.problems.append(
                                    f"{where}: '{dname}' holds {bad} values; check the input "
                                    f"video and model, then {fix}"
                                )
                except Exception as exc:  # noqa: BLE001 - report and go on with the next video
                    rep.problems.append(f"{where}: cannot be read ({exc}); {fix}")
    counts["videos"] = len(copies)
    dups = {v: s for v, s in copies.items() if len(s) > 1}
    counts["duplicates"] = len(dups)
    if dups:
        listing = "; ".join(f"{v!r} in {', '.join(s)}" for v, s in sorted(dups.items())[:10])
        more = f" (+{len(dups) - 10} more)" if len(dups) > 10 else ""
        rep.warnings.append(
            f"set {name!r}: {len(dups)} id(s) stored in several shards: {listing}{more}. "
            "Readers use the newest copy (largest written_at); delete older shards to reclaim "
            "space"
        )
    for partial in sorted(d.glob("part-*.h5.partial")):
        if partial_is_live(partial):
            counts["live_partials"] += 1
            rep.notes.append(f"set {name!r}: {partial.name} is being written by a live job")
        else:
            counts["stale_partials"] += 1
            rep.warnings.append(
                f"set {name!r}: stale partial {partial.name} left by a killed job; its videos are "
                "not in the set. The next extraction run removes it (or delete it)"
            )
    failed = {r["video_id"] for r in read_failures(d)}
    done = set(copies)
    counts["failed"] = len(failed - done)
    both = failed & done
    if both:
        rep.notes.append(
            f"set {name!r}: {len(both)} id(s) failed once and were extracted later: {_few(both)}"
        )
    if expect_ids is not None:
        missing = set(expect_ids) - done
        unexpected = done - set(expect_ids)
        if missing:
            why = f" ({len(missing & failed)} of them failed: see failures-*.jsonl)"
            rep.problems.append(
                f"set {name!r}: {len(missing)} expected id(s) missing: {_few(missing)}"
                f"{why if missing & failed else ''}; run the extraction for this list again "
                "(add --retry-failed for the failed ones)"
            )
        if unexpected:
            rep.problems.append(
                f"set {name!r}: {len(unexpected)} id(s) not in the expected list: "
                f"{_few(unexpected)}; check that --videos is the list this set was extracted from"
            )


def verify_store(root: str | Path, expect_ids: set[str] | None = None) -> VerifyReport:
    """Open every shard of every set and check it against its set.json.

    Problems: unreadable set.json or shards, groups without ``features``, shapes not matching
    ``feature_shape`` (None/-1 = any), dtypes not matching ``dtype`` (float16 is accepted when
    set.json has ``storage_dtype: float16`` or the writer marked the array as narrowed), NaN/Inf
    in float datasets, and with ``expect_ids`` missing and unexpected ids. Warnings: ids in
    several shards, stale partials. Notes: live partials, ids that failed and later succeeded.
    """
    root = Path(root)
    rep = VerifyReport()
    if not root.is_dir():
        rep.problems.append(f"no store at {root}; check the path")
        return rep
    store = FeatureStore(root)
    names = store.sets()
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and p.name not in names:
            if any(p.glob("part-*.h5")):
                rep.warnings.append(
                    f"{p} holds shards but no {SET_JSON}; it is not a readable set. Restore "
                    f"{SET_JSON} or move the folder out of the store"
                )
    if not names:
        rep.warnings.append(f"store {root} holds no feature sets yet (run vidfeat extract)")
    for name in names:
        _verify_set(root, name, expect_ids, rep)
    return rep


def store_info(root: str | Path) -> list[dict]:
    """One row per set: ``name``, ``config`` (set.json), ``videos``, ``bytes`` (on disk, all
    files of the set folder), ``shards``, ``bad_shards``, ``failures`` (distinct ids that
    failed and are not completed), ``partials`` (partial shard files) and ``duplicates``."""
    root = Path(root)
    rows = []
    store = FeatureStore(root)
    for name in store.sets():
        d = store.set_dir(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StoreWarning)  # bad shards are counted instead
                fs = FeatureSet(d)
        except StoreError as exc:
            rows.append(
                {
                    "name": name,
                    "error": str(exc),
                    "config": {},
                    "videos": 0,
                    "bytes": 0,
                    "shards": 0,
                    "bad_shards": 0,
                    "failures": 0,
                    "partials": 0,
                    "duplicates": 0,
                }
            )
            continue
        try:
            done = fs.completed_ids()
            failed = {r["video_id"] for r in fs.failures()}
            size = 0
            for p in d.iterdir():
                with contextlib.suppress(OSError):
                    if p.is_file():
                        size += p.stat().st_size
            rows.append(
                {
                    "name": name,
                    "config": fs.config,
                    "videos": len(done),
                    "bytes": size,
                    "shards": len(fs.shards()),
                    "bad_shards": len(fs.bad_shards()),
                    "failures": len(failed - done),
                    "partials": len(list(d.glob("part-*.h5.partial"))),
                    "duplicates": len(fs.duplicates()),
                }
            )
        finally:
            fs.close()
    return rows


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def format_info(rows: list[dict]) -> str:
    """Human-readable text for ``vidfeat store info``: one block per set."""
    if not rows:
        return "no feature sets in this store (run `vidfeat extract ...` to create one)"
    out = []
    for r in rows:
        head = (
            f"{r['name']}: {r['videos']} videos, {r['shards']} shards, "
            f"{_human_bytes(r['bytes'])}, {r['failures']} failed"
        )
        extras = []
        if r.get("partials"):
            extras.append(f"{r['partials']} partial")
        if r.get("bad_shards"):
            extras.append(f"{r['bad_shards']} unreadable shard(s): run `vidfeat store verify`")
        if r.get("duplicates"):
            extras.append(f"{r['duplicates']} duplicated id(s)")
        if extras:
            head += " (" + "; ".join(extras) + ")"
        out.append(head)
        if r.get("error"):
            out.append(f"  error: {r['error']}")
        cfg = r.get("config") or {}
        main = {k: v for k, v in cfg.items() if not k.endswith("_version")}
        versions = {k: v for k, v in cfg.items() if k.endswith("_version")}
        for k in sorted(main):
            v = main[k]
            shown = v if isinstance(v, str) and len(v) <= 90 else _fmt_value(v, 90)
            out.append(f"  {k}: {shown}")
        if versions:
            vs = ", ".join(f"{k[: -len('_version')]} {v}" for k, v in sorted(versions.items()))
            out.append(f"  versions: {vs}")
    return "\n".join(out)


def format_verify(report: VerifyReport) -> str:
    """Human-readable text for ``vidfeat store verify``; the last line says OK or the count."""
    out = []
    for name, c in report.sets.items():
        line = (
            f"{name}: {c['videos']} videos in {c['shards']} shards, {c['failed']} failed"
            f", {c['duplicates']} duplicated"
        )
        if c["bad_shards"]:
            line += f", {c['bad_shards']} unreadable shard(s)"
        if c["stale_partials"] or c["live_partials"]:
            line += f", partials: {c['stale_partials']} stale / {c['live_partials']} live"
        out.append(line)
    out += [f"PROBLEM: {p}" for p in report.problems]
    out += [f"warning: {w}" for w in report.warnings]
    out += [f"note: {n}" for n in report.notes]
    if report.ok:
        out.append("OK: no problems found")
    else:
        out.append(f"FAILED: {len(report.problems)} problem(s)")
    return "\n".join(out)
