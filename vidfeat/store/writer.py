"""Writing a set: :class:`ShardWriter` (crash-safe shards), :class:`FailureLog` and
:func:`read_failures` (``failures-<job>.jsonl``), and the codec of HDF5 group attrs.

The writer calls the no-op :func:`_checkpoint` at the moments a kill -9 test wants to hit; it
reads no environment and has no test mode of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidfeat.errors import ConfigError, StoreError
from vidfeat.outdir import open_append
from vidfeat.store.deflate import (  # noqa: F401 - AUTO_GZIP_LEVEL: re-exported
    AUTO_GZIP_LEVEL,
    GZIP_LEVEL,
    Deflated,
    deflate,
    layout,
    write_deflated,
)
from vidfeat.store.guard import json_depth, open_regular
from vidfeat.store.paths import (
    FEATURES,
    StoreWarning,
    _check_job,
    _fsync_path,
    _h5open,
    _lock_path,
    _same_file,
    _try_lock,
    _write_all,
    check_video_id,
)
from vidfeat.store.shardindex import (
    SHARD_INDEX_ATTR,
    dataset_layout,
    encode_shard_index,
    written_at_value,
)

# dataset attr marking arrays the writer narrowed to float16 (value: the original dtype)
FLOAT16_FROM = "vidfeat_float16_from"
_MIB = 1024 * 1024
_FLOAT16_MAX = float(np.finfo(np.float16).max)

_FAILURES_RE = re.compile(r"^failures-(?P<job>.+)\.jsonl$")

# Tests set this to False to write shards exactly as vidfeat did before shards carried their
# index (``vidfeat.store.shardindex``); production code never changes it.
_WRITE_SHARD_INDEX = True


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


# --------------------------------------------------------------------------- writer


def _file_bytes(a: np.ndarray | Deflated) -> int:
    """The bytes an array adds to a shard: its deflated chunks, or (an upper bound) its size."""
    return sum(len(c) for c in a.chunks) if isinstance(a, Deflated) else int(a.nbytes)


def _checkpoint(name: str) -> None:
    """A named moment in the life of a shard; does nothing.

    The points: ``after-open`` (a new partial shard was created, still empty), ``after-add`` (a
    video is in the partial, before the shard may rotate), ``before-rename`` and
    ``after-rename`` (around the rename that completes a shard). The kill -9 trials of the
    reliability tests replace this function in the process they start (``tests/crashhook.py``)
    to stop or kill it at exactly such a moment; production code never does.
    """


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
    (``compression_level`` 0-9, zlib's), ``"lzf"`` or None. Gzip chunks are deflated by
    vidfeat on a thread per core (at auto by ISA-L, 4-5x cheaper than zlib's level 1) into
    the standard gzip filter's format, so any HDF5 reader reads them.
    ``min_free_mb``: stop with a clear error (completing the current shard) when the disk has
    less than this much free space left.
    ``float16=True`` stores float32/float64 ``features`` as float16 (integers and ``extra``
    arrays are untouched; values beyond the float16 range are refused rather than turned into
    Inf).

    Each shard carries its index (ids, byte layout of ``features``, ``written_at``: see
    :mod:`vidfeat.store.shardindex`), written as a root attribute before the shard is closed,
    so readers list a completed shard without opening its groups.
    """

    def __init__(
        self,
        set_dir: str | Path,
        job: str,
        *,
        max_videos: int = 64,
        max_mb: float = 256.0,
        compression: str | None = "auto",
        compression_level: int = GZIP_LEVEL,
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
        self._index: dict[str, tuple[int, tuple[int, ...], str, float]] = {}
        self._bytes = 0
        self._written: list[str] = []
        self._shards: list[Path] = []
        self._sinks: set = set()  # videos being written row by row (vidfeat.store.rows)
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
        features: np.ndarray | Deflated,
        attrs: dict,
        extra: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Store one video: dataset ``features`` (an array, or a worker's :class:`Deflated` one),
        optional ``extra`` datasets, group attrs.

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

        self._check_free_space(
            video_id,
            feats.nbytes + sum(a.nbytes for a in extras.values()),
            _file_bytes(feats) + sum(a.nbytes for a in extras.values()),
        )
        f = self._ensure_open()
        if video_id in f:
            del f[video_id]
            self._pending.remove(video_id)
            self._index.pop(video_id, None)
        try:
            g = f.create_group(video_id)
            ds = self._write_dataset(g, FEATURES, feats)
            if from_dtype is not None:
                ds.attrs[FLOAT16_FROM] = from_dtype
            for name, a in extras.items():
                self._write_dataset(g, name, a)
            for k, v in enc.items():
                g.attrs[k] = v
            # HDF5 never moves raw data once allocated: the offset is final
            layout = dataset_layout(ds)
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
        self._index[video_id] = (*layout, written_at_value(enc["written_at"]))
        self._bytes += feats.nbytes + sum(a.nbytes for a in extras.values())
        _checkpoint("after-add")
        if not self._sinks and (
            len(self._pending) >= self.max_videos or self._bytes >= self.max_bytes
        ):
            self.flush()

    def flush(self) -> None:
        """Complete the current partial shard (close, fsync, rename) if it holds anything.
        Videos still being written row by row leave it first: a shard never holds half a video."""
        for sink in list(self._sinks):
            sink.abort()
        if self._file is None:
            return
        f, partial, final = self._file, self._partial, self._final
        assert partial is not None and final is not None
        self._file = None
        try:
            try:
                if self._pending and _WRITE_SHARD_INDEX:
                    # part of the shard: written before the close, fsync and rename below
                    f.attrs[SHARD_INDEX_ATTR] = encode_shard_index(
                        {v: self._index[v] for v in self._pending}
                    )
            finally:
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
                _checkpoint("before-rename")
                os.replace(partial, final)
                _checkpoint("after-rename")
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
            self._index = {}
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

    def _prepare_features(
        self, video_id: str, features: np.ndarray | Deflated
    ) -> tuple[np.ndarray | Deflated, Any]:
        if isinstance(features, Deflated):  # integers (deflate_for_store): never narrowed
            return features, None
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

    def _write_dataset(self, g: h5py.Group, name: str, a: np.ndarray | Deflated) -> h5py.Dataset:
        lay = layout(a.shape, np.dtype(a.dtype), self.compression, self.compression_level)
        if isinstance(a, Deflated):  # a worker deflated it: stored as it is, if by our rule
            if a.layout != lay:
                raise StoreError(
                    f"{name}: deflated as {a.layout}, this writer stores it as {lay}; deflate "
                    "with the writer's compression (deflate_for_store)"
                )
            return write_deflated(g, name, a)
        if lay.method is None:
            return g.create_dataset(name, data=a)
        if lay.method == "gzip":  # deflated here, chunks on all cores (vidfeat.store.deflate)
            return write_deflated(g, name, deflate(a, lay))
        return g.create_dataset(
            name, data=a, chunks=lay.chunks, compression=lay.method, shuffle=lay.shuffle
        )

    def _existing_k(self) -> int:
        pat = re.compile(rf"^part-{re.escape(self.job)}-(\d+)\.h5(\.partial(\.lock)?)?$")
        ks = [int(m.group(1)) for p in os.listdir(self.set_dir) if (m := pat.match(p))]
        return max(ks) + 1 if ks else 0

    def _check_free_space(self, video_id: str, nbytes: int, file_bytes: int | None = None) -> None:
        """Refuse to write when the disk is nearly full. HDF5 does not survive running out of
        space mid-write (it can crash the process), so the writer stops first, completing
        the current shard in the reserve it kept."""
        self._check_file_limit(video_id, nbytes if file_bytes is None else file_bytes)
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

    def _check_file_limit(self, video_id: str, nbytes: int) -> None:
        """Keep every shard below the process's file-size limit (``ulimit -f``, RLIMIT_FSIZE):
        HDF5 does not survive a write past it (EFBIG), so the writer completes the current
        shard before a video that would not fit in it, and refuses a video that would not fit
        in any shard."""
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit == resource.RLIM_INFINITY:
            return
        need = int(nbytes * 1.1) + _MIB  # HDF5's metadata and chunk overhead
        if need > limit:
            self.flush()
            raise StoreError(
                f"file-size limit: {video_id!r} needs about {need / _MIB:.1f} MiB in one shard "
                f"of {self.set_dir}, over this process's file-size limit of {limit / _MIB:.1f} "
                "MiB (ulimit -f); raise the limit and rerun: completed videos are kept"
            )
        size = 0
        if self._partial is not None:
            with contextlib.suppress(OSError):
                size = self._partial.stat().st_size
        if size + need <= limit:
            return
        if self._pending and not self._sinks:
            self.flush()  # a new shard starts empty
            return
        self.flush()  # completes the shard without the video being written
        raise StoreError(
            f"file-size limit: shard {self._final or self.set_dir} would pass this process's "
            f"file-size limit of {limit / _MIB:.1f} MiB (ulimit -f) with {video_id!r}; raise "
            "the limit (or lower --shard-mb) and rerun: completed videos are kept"
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
            _checkpoint("after-open")
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
        fd = open_append(self.path, read=True)  # never through a link, FIFO or device
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # end a torn line left by a crash before adding ours
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


MAX_FAILURE_LINE = 1 << 20  # bytes of one record: a message and a path, never near this
MAX_FAILURES_BYTES = 256 << 20  # bytes read from one failures file (~1M records)


def read_failures(set_dir: str | Path) -> list[dict]:
    """Every record of every ``failures-*.jsonl`` of a set (files in name order, lines in
    order). Unparsable lines (a torn last line after a crash), lines longer than
    ``MAX_FAILURE_LINE`` and records without a string ``video_id`` are skipped. A failures
    file that is not a regular file (a symlink, a FIFO, ...) is skipped with a
    :class:`StoreWarning`, never read, and at most ``MAX_FAILURES_BYTES`` of one file are."""
    set_dir = Path(set_dir)
    out: list[dict] = []
    if not set_dir.is_dir():
        return out
    for p in sorted(set_dir.glob("failures-*.jsonl")):
        try:
            fd = open_regular(p, "failures log")
        except FileNotFoundError:
            continue
        except StoreError as exc:
            warnings.warn(str(exc), StoreWarning, stacklevel=2)
            continue
        m = _FAILURES_RE.match(p.name)
        try:
            with open(fd, "rb") as fh:
                _read_failure_lines(fh, p, m.group("job") if m else "", out)
        except OSError as exc:
            warnings.warn(f"cannot read {p} ({exc}); skipped", StoreWarning, stacklevel=2)
    return out


def _read_failure_lines(fh: Any, p: Path, job: str, out: list[dict]) -> None:
    total = 0
    while True:
        line = fh.readline(MAX_FAILURE_LINE + 1)
        if not line:
            return
        total += len(line)
        if total > MAX_FAILURES_BYTES:
            warnings.warn(
                f"{p} holds more than {MAX_FAILURES_BYTES >> 20} MiB; the rest is not read",
                StoreWarning,
                stacklevel=3,
            )
            return
        if len(line) > MAX_FAILURE_LINE:
            while line and not line.endswith(b"\n"):  # skip the rest of an overlong line
                line = fh.readline(MAX_FAILURE_LINE + 1)
                total += len(line)
                if total > MAX_FAILURES_BYTES:
                    break
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            continue
        if json_depth(rec, 8) > 8:  # a record is one flat object: nothing prints a deep one
            continue
        if isinstance(rec, dict) and isinstance(rec.get("video_id"), str):
            if not isinstance(rec.get("job", ""), str):
                rec["job"] = job
            rec.setdefault("job", job)
            out.append(rec)
