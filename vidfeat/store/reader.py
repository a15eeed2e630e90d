"""Reading a set: :class:`FeatureSet`, its id -> shard index (a scan of each completed shard,
cached in ``.index.json`` with the byte layout of every contiguous ``features`` array) and the
``pread`` fast path of :meth:`FeatureSet.features`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vidfeat.errors import StoreError
from vidfeat.store.paths import (
    FEATURES,
    SET_JSON,
    StoreWarning,
    _atomic_write_json,
    _h5open,
    _read_set_json,
)
from vidfeat.store.writer import _read_attrs, read_failures

INDEX_JSON = ".index.json"
INDEX_FORMAT = 2  # 2: per-video byte layouts of contiguous feature arrays

_SHARD_RE = re.compile(r"^part-(?P<job>.+)-(?P<k>\d+)\.h5$")


class MissingVideoError(StoreError, KeyError):
    """A video id is not in a set; also a ``KeyError`` so mapping-style code can catch it."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return self.format_message()


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
