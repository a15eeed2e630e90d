"""Reading a set: :class:`FeatureSet`, its id -> shard index (built from the index each shard
carries, :mod:`vidfeat.store.shardindex`, or a scan of the groups of older shards, and cached in
``.index.npz``, :mod:`vidfeat.store.setindex`) and the ``pread`` fast path of
:meth:`FeatureSet.features`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import stat
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from h5py import h5d

from vidfeat.errors import StoreError
from vidfeat.store.guard import (
    Refused,
    ShapeRule,
    check_dataset,
    file_kind,
    link_problem,
    read_dataset,
    size_problem,
)
from vidfeat.store.paths import FEATURES, SET_JSON, StoreWarning, _h5open, read_set_json_bytes
from vidfeat.store.setindex import INDEX_FILE as INDEX_FILE
from vidfeat.store.setindex import INDEX_FORMAT as INDEX_FORMAT
from vidfeat.store.setindex import LEGACY_INDEX_JSON, SHARD_RE, SetIndex, ShardRec
from vidfeat.store.shardindex import (
    ShardListing,
    read_shard_index_at,
    scan_groups,
    written_at_value,
)
from vidfeat.store.writer import _read_attrs, read_failures

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # at offset 0 of every shard vidfeat writes
_RAW_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
INDEX_JSON = LEGACY_INDEX_JSON  # the cache of format 2 (read once when a store has no .index.npz)


class MissingVideoError(StoreError, KeyError):
    """A video id is not in a set; also a ``KeyError`` so mapping-style code can catch it."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return self.format_message()


def _shard_entries(set_dir: Path) -> tuple[list[tuple[str, os.stat_result]], dict[str, str]]:
    """Completed shards of a set, by name, with their stat (never through a symlink), and the
    entries with a shard's name that are not regular files (symlink, FIFO, directory,
    device) -> what they are: those are skipped, never opened."""
    out = []
    skipped: dict[str, str] = {}
    try:
        it = os.scandir(set_dir)
    except OSError:
        return out, skipped
    with it:
        for e in it:
            if SHARD_RE.match(e.name):
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append((e.name, st))
                else:
                    skipped[e.name] = file_kind(st.st_mode)
    out.sort(key=lambda x: x[0])
    return out, dict(sorted(skipped.items()))


def _shard_files(set_dir: Path) -> list[tuple[str, os.stat_result]]:
    """Completed shards of a set that are regular files, by name, with their stat."""
    return _shard_entries(set_dir)[0]


def _scan_shard(path: Path) -> ShardListing:
    """What a completed shard holds: its own index (one attribute) when it has a sound one,
    else a scan of its groups (shards written before shards carried an index)."""
    listing = read_shard_index_at(path)
    if listing is not None:
        return listing
    with _h5open(path, "r") as f:
        return scan_groups(f)


def _written_at(path: Path, video_id: str) -> float:
    try:
        with _h5open(path, "r") as f:
            if link_problem(f.id, video_id.encode("utf-8", "surrogateescape")) is not None:
                return -math.inf
            return written_at_value(f[video_id].attrs.get("written_at"))
    except Exception:  # noqa: BLE001 - an unreadable copy loses to any readable one
        return -math.inf


class FeatureSet:
    """Reads one set of a store: ``fs.get(id) -> (features, attrs)``.

    Only completed ``*.h5`` shards are read; partials are ignored. The id -> shard index is
    built from the index each shard carries (one attribute per shard; shards written before
    that are scanned group by group) and cached in ``<set>/.index.npz`` with each shard's name,
    size and mtime_ns, so reopening a large set lists only shards that appeared or changed. The
    cache is written atomically; a corrupt or hand-edited one is rebuilt. ``read_only=True``
    never writes it (a set on read-only media works the same without the flag: the index is
    then built in memory from the shards' own indexes). Call :meth:`refresh` to see shards
    completed since opening.

    Duplicates: an id present in several shards (``--overwrite``, a duplicated job) resolves
    deterministically to the copy with the largest ``written_at`` attr; ties (or missing
    attrs) go to the lexicographically largest shard name. :meth:`duplicates` lists them.

    Shard files are opened lazily, read-only, without HDF5 file locks, and kept open in a small
    LRU (``max_open``). Handles are per process: after a fork (DataLoader workers) they are
    reopened, never shared; pickling drops them. A shard that cannot be opened is skipped with
    a :class:`StoreWarning`; ``vidfeat store verify`` reports it.
    """

    def __init__(self, set_dir: str | Path, *, max_open: int = 32, read_only: bool = False) -> None:
        self.dir = Path(set_dir)
        self._dir_str = str(self.dir)
        self.name = self.dir.name
        try:
            self.config, raw = read_set_json_bytes(self.dir / SET_JSON, self.name)
        except FileNotFoundError as exc:
            raise StoreError(
                f"{self.dir} is not a feature set (no {SET_JSON}); check the --store path and "
                "set name"
            ) from exc
        #: sha256 of the set.json bytes the configuration was read from
        self.config_sha256 = hashlib.sha256(raw).hexdigest()
        #: what the set's feature_shape lets a ``features`` array be (sizes checked unread)
        self.shape_rule = ShapeRule.from_config(self.config, str(self.dir / SET_JSON))
        self.max_open = max(1, int(max_open))
        self.read_only = bool(read_only)
        self._handles: OrderedDict[str, h5py.File] = OrderedDict()
        self._fds: OrderedDict[str, int] = OrderedDict()  # raw reads of contiguous arrays
        self._signed: set[tuple[str, int, int]] = set()  # shards seen to be HDF5 files
        self._pid = os.getpid()
        self._index: SetIndex | None = None
        self.refresh()

    def __repr__(self) -> str:
        return f"FeatureSet({str(self.dir)!r}, {len(self)} videos)"

    # -- index

    def refresh(self) -> None:
        """Bring the index up to date with the shards now on disk: shards that appeared or
        changed (size, mtime_ns) are listed, removed ones dropped, the others reused."""
        files, skipped = _shard_entries(self.dir)
        base, changed = self._index, False
        if base is None:
            base = SetIndex.load(self.dir / INDEX_FILE)
            if base is None:
                changed = True
                base = SetIndex.from_legacy_json(self.dir / INDEX_JSON) or SetIndex.empty()
        if len(files) != len(base.shards) or any(n not in base.start for n, _ in files):
            changed = True
        parts: list[tuple[ShardRec, SetIndex | ShardListing | None]] = []
        for name, st in files:
            old = base.by_name(name) if name in base.start else None
            if old is not None and (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns):
                parts.append((old, None if old.error is not None else base))
                continue
            changed = True
            rec = ShardRec(name, st.st_size, st.st_mtime_ns)
            try:
                parts.append((rec, _scan_shard(self.dir / name)))
            except Exception as exc:  # noqa: BLE001 - one bad shard must not hide the others
                rec.error = f"{type(exc).__name__}: {exc}"
                parts.append((rec, None))
        idx = SetIndex.assemble(parts) if changed else base

        for s in idx.shards:
            if s.error is not None:
                warnings.warn(
                    f"set {self.name!r}: shard {s.name} cannot be opened ({s.error}); its "
                    f"videos are skipped. Run `vidfeat store verify {self.dir.parent}`, then "
                    "delete the shard and extract again (completed videos are skipped)",
                    StoreWarning,
                    stacklevel=3,
                )
        for name, kind in skipped.items():
            warnings.warn(
                f"set {self.name!r}: {name} is {kind}, not a regular file: it is skipped, never "
                "read (a store reads only its own files); remove it",
                StoreWarning,
                stacklevel=3,
            )
        self._skipped = skipped
        self._index = idx
        self._names = [s.name for s in idx.shards]
        self._stat = {s.name: (s.size, s.mtime_ns) for s in idx.shards}
        self._layouts = [
            (shape, np.dtype(dt), np.dtype(dt).itemsize * math.prod(shape))
            for shape, dt in idx.layouts
        ]
        self._offset = self._checked_offsets(idx)
        self._columns()
        self._resolved: tuple[dict[str, int], dict[str, list[int]]] | None = None
        self._sorted: list[str] | None = None  # sorted ids, made when first asked for
        # open handles may point at replaced files
        self._close_handles()
        if changed and not self.read_only:
            self._save_cache(idx)

    def _resolve(self) -> tuple[dict[str, int], dict[str, list[int]]]:
        """``id -> row`` of the copy readers use, and the rows of ids in several shards.

        Made when first needed (a lookup, ``len``), not on opening: listing the completed ids
        for a resume needs none of it. The newest copy of a duplicated id wins (largest
        ``written_at``, ties to the largest shard name); ``written_at`` missing from the index
        (shards scanned) is read from the group once, then kept in the cache."""
        if self._resolved is not None:
            return self._resolved
        idx, names = self._index, self._names
        ids = idx.ids
        row = dict(zip(ids, range(len(ids)), strict=True))
        copies: dict[str, list[int]] = {}
        if len(row) != len(ids):  # ids in several shards
            filled = False
            multi = {v for r, v in enumerate(ids) if row[v] != r}
            for r, v in enumerate(ids):
                if v in multi:
                    copies.setdefault(v, []).append(r)  # rows are in shard name order
            for v, rows in copies.items():
                keys = []
                for r in rows:
                    t = float(idx.wat[r])
                    if math.isnan(t):
                        t = _written_at(self.dir / names[idx.shard_of_row[r]], v)
                        idx.wat[r] = t
                        filled = True
                    keys.append((t, names[idx.shard_of_row[r]], r))
                row[v] = max(keys)[2]
            if filled and not self.read_only:
                self._save_cache(idx)
        self._resolved = (row, copies)
        return self._resolved

    @property
    def _row(self) -> dict[str, int]:
        return self._resolve()[0]

    @property
    def _copies(self) -> dict[str, list[int]]:
        return self._resolve()[1]

    def _save_cache(self, idx: SetIndex) -> None:
        try:
            idx.save(self.dir / INDEX_FILE)
        except OSError:
            pass  # read-only set (or full disk): the index is only a cache

    def _checked_offsets(self, idx: SetIndex) -> np.ndarray:
        """The index's ``pread`` offsets, -2 for those the shard and set.json cannot hold: a
        layout past :data:`~vidfeat.store.guard.MAX_ARRAY_BYTES` or the set's feature_shape,
        or an array ending past its shard's size. Reading those is refused before anything is
        allocated (:meth:`_bad_row`); ``vidfeat store verify`` compares the index with the
        shard's groups. One numpy pass over the rows when the set is opened."""
        off = idx.offset
        if not len(off) or not (off >= 0).any():
            return off
        ok = [
            size_problem(shape, np.dtype(dt).itemsize, self.shape_rule) is None
            for shape, dt in idx.layouts
        ]
        nbytes = [min(n, 2**61) for _, _, n in self._layouts]
        lay_ok = np.array([*ok, False], bool)  # code -1 (no layout) indexes the last entry
        lay_nb = np.array([*nbytes, 0], np.int64)
        sizes = np.array([s.size for s in idx.shards], np.int64)
        lay = idx.layout
        end = np.minimum(off, 2**61) + lay_nb[lay]
        bad = (off >= 0) & (~lay_ok[lay] | (end > sizes[idx.shard_of_row]))
        for odd in (".", ".."):  # ids no video can have (a list scan: ~2 ms for 500k ids)
            if odd in idx.ids:
                bad[[r for r, v in enumerate(idx.ids) if v == odd]] = True
        return np.where(bad, -2, off) if bad.any() else off

    def _bad_row(self, video_id: str, row: int) -> StoreError:
        """The error of reading a video whose index entry the shard cannot hold."""
        shard = self._shard_name(row)
        if video_id in (".", ".."):
            return StoreError(
                f"shard {shard} of set {self.name!r} lists the id {video_id!r}, which no video "
                "can have: it is not read"
            )
        shape, dtype, nbytes = self._layouts[self._lay_of[row]]
        why = size_problem(shape, dtype.itemsize, self.shape_rule)
        if why is None:
            return StoreError(
                f"video {video_id!r}: shard {shard} of set {self.name!r} is shorter than its "
                f"index says (an array of {nbytes:,} bytes at offset {self._index.offset[row]:,}"
                f"); run `vidfeat store verify {self.dir.parent}`"
            )
        return StoreError(
            f"video {video_id!r} in shard {shard} of set {self.name!r} is not read: its index "
            f"entry says {why}; run `vidfeat store verify {self.dir.parent}`"
        )

    def _columns(self) -> None:
        # zero-copy views of the index columns that index to python ints in ~40 ns, twice as
        # fast as numpy scalars: features() stays as quick as a dict of tuples, without one
        self._off = memoryview(self._offset)
        self._lay_of = memoryview(self._index.layout)
        self._shard_of = memoryview(self._index.shard_of_row)

    def _shard_name(self, row: int) -> str:
        return self._names[self._shard_of[row]]

    @property
    def _raw(self) -> dict[str, tuple[int, tuple[int, ...], np.dtype]]:
        """``{id: (offset, shape, dtype)}`` of the videos read with one ``pread``."""
        out = {}
        for vid, r in self._row.items():
            off = self._off[r]
            if off >= 0:
                shape, dtype, _ = self._layouts[self._lay_of[r]]
                out[vid] = (off, shape, dtype)
        return out

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
        # a str path, not dir / shard: pathlib's parsing is a tenth of a random read
        path = os.path.join(self._dir_str, shard)
        try:  # never through a symlink, never blocking (a FIFO is refused by fstat below)
            fd = os.open(path, _RAW_OPEN)
        except OSError as exc:
            why = "it is a symbolic link" if exc.errno == errno.ELOOP else str(exc)
            raise StoreError(
                f"shard {shard} of set {self.name!r} cannot be opened ({why}); run "
                f"`vidfeat store verify {self.dir.parent}`"
            ) from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise StoreError(
                f"{path} is {file_kind(st.st_mode)}, not a regular file: it is not read; run "
                f"`vidfeat store verify {self.dir.parent}`"
            )
        if (st.st_size, st.st_mtime_ns) != self._stat.get(shard):
            os.close(fd)
            raise StoreError(
                f"shard {shard} of set {self.name!r} was replaced since the set was opened: "
                "reopen the set"
            )
        key = (shard, st.st_dev, st.st_ino)
        if key not in self._signed:  # once per file and process: the LRU reopens shards
            if os.pread(fd, len(_HDF5_SIGNATURE), 0) != _HDF5_SIGNATURE:
                os.close(fd)
                raise StoreError(
                    f"{path} is not an HDF5 file, so not a shard of set {self.name!r}: it is "
                    f"not read; run `vidfeat store verify {self.dir.parent}`"
                )
            self._signed.add(key)
        self._fds[shard] = fd
        while len(self._fds) > self.max_open:
            _, old = self._fds.popitem(last=False)
            with contextlib.suppress(OSError):
                os.close(old)
        return fd

    def _group(self, video_id: str) -> h5py.Group:
        row = self._row.get(video_id) if isinstance(video_id, str) else None
        if row is None:
            raise MissingVideoError(
                f"video {video_id!r} is not in set {self.name!r} ({len(self)} videos); extract "
                "it, or check the id against the video list"
            )
        shard = self._shard_name(row)
        if video_id in (".", "..") or "\0" in video_id:
            raise StoreError(
                f"shard {shard} of set {self.name!r} lists the id {video_id!r}, which no video "
                "can have: it is not read"
            )
        f = self._file(shard)
        try:
            why = link_problem(f.id, video_id.encode("utf-8", "surrogateescape"))
        except KeyError as exc:
            raise StoreError(
                f"video {video_id!r} vanished from shard {shard} of set {self.name!r}; the shard "
                "was replaced since the set was opened: reopen the set"
            ) from exc
        if why is not None:
            raise StoreError(
                f"video {video_id!r} in shard {shard} of set {self.name!r} is not read: {why}; "
                f"run `vidfeat store verify {self.dir.parent}`"
            )
        try:
            g = f[video_id]
        except Exception as exc:  # noqa: BLE001 - a damaged object header
            raise StoreError(
                f"video {video_id!r} in shard {shard} of set {self.name!r} cannot be read "
                f"({exc}); run `vidfeat store verify {self.dir.parent}`"
            ) from exc
        if not isinstance(g, h5py.Group):
            raise StoreError(
                f"video {video_id!r} in shard {shard} of set {self.name!r} is not a group; "
                f"run `vidfeat store verify {self.dir.parent}`"
            )
        return g

    def _dataset(self, video_id: str, g: h5py.Group, name: str) -> np.ndarray | None:
        """Dataset ``name`` of the group of ``video_id`` (None when it has none), read only
        after :func:`~vidfeat.store.guard.check_dataset` accepted it: data inside the shard,
        numeric, within the caps and (``features``) the set's feature_shape."""
        shard = self._shard_name(self._row[video_id])
        where = f"video {video_id!r} in shard {shard} of set {self.name!r}"
        bname = name.encode()
        try:
            why = link_problem(g.id, bname)
        except KeyError:
            return None
        try:
            if why is not None:
                raise Refused(why)
            try:
                did = h5d.open(g.id, bname)
            except Exception as exc:  # noqa: BLE001 - a group or an unreadable object
                raise Refused(f"it is not a dataset ({exc})") from exc
            rule = self.shape_rule if name == FEATURES else None
            size = self._stat.get(shard, (None,))[0]
            return read_dataset(did, check_dataset(did, rule, size))
        except Refused as exc:
            raise StoreError(
                f"{where}: {name!r} is not read: {exc.format_message()}; run "
                f"`vidfeat store verify {self.dir.parent}`"
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise StoreError(
                f"{where} cannot be read ({exc}); run `vidfeat store verify {self.dir.parent}`"
            ) from exc

    # -- public

    @property
    def _ids(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self._row)  # ~0.3 s for 500k ids
        return self._sorted

    def ids(self) -> list[str]:
        """All video ids of the set, sorted, each once."""
        return list(self._ids)

    def completed_ids(self) -> set[str]:
        """Ids present in a completed shard (the resume point)."""
        return set(self._index.ids)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and video_id in self._row

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, dict]]:
        for vid in self._ids:
            arr, attrs = self.get(vid)
            yield vid, arr, attrs

    def get(self, video_id: str) -> tuple[np.ndarray, dict]:
        """``(features, attrs)`` of a video: the array in its stored dtype, attrs as python
        scalars / str / numpy arrays. :class:`StoreError` naming the set if absent."""
        g = self._group(video_id)
        arr = self._features(video_id, g)
        try:
            return arr, _read_attrs(g)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(
                f"video {video_id!r} in shard {self.shard_of(video_id).name} of set "
                f"{self.name!r} cannot be read ({exc}); run `vidfeat store verify "
                f"{self.dir.parent}`"
            ) from exc

    def _features(self, video_id: str, g: h5py.Group) -> np.ndarray:
        arr = self._dataset(video_id, g, FEATURES)
        if arr is None:
            raise StoreError(
                f"video {video_id!r} in shard {self.shard_of(video_id).name} of set "
                f"{self.name!r} has no {FEATURES!r} dataset; run `vidfeat store verify "
                f"{self.dir.parent}`"
            )
        return arr

    def features(self, video_id: str) -> np.ndarray:
        """The ``features`` array of a video alone (no attrs decoded: the fast path for
        training loops). A contiguous, uncompressed array is read with one ``pread`` at the
        offset the index recorded, past h5py's per-call overhead (shards never change once
        completed, and the file is checked to be the one indexed); others go through h5py."""
        rows = (self._resolved or self._resolve())[0]
        row = rows.get(video_id) if isinstance(video_id, str) else None
        offset = -1 if row is None else self._off[row]
        if offset == -2:
            raise self._bad_row(video_id, row)  # type: ignore[arg-type]
        if offset >= 0:
            shape, dtype, nbytes = self._layouts[self._lay_of[row]]
            shard = self._names[self._shard_of[row]]
            buf = bytearray(nbytes)
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
        return self._features(video_id, self._group(video_id))

    def get_extra(self, video_id: str, name: str) -> np.ndarray | None:
        """Extra dataset ``name`` (e.g. ``"scores"``) of a video, None if it has none."""
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise StoreError(f"extra dataset name {name!r} is invalid: use a plain name")
        g = self._group(video_id)
        try:
            is_group = link_problem(g.id, name.encode()) is None and isinstance(
                g.get(name), h5py.Group
            )
        except KeyError:
            return None
        return None if is_group else self._dataset(video_id, g, name)

    def lengths(self) -> np.ndarray:
        """The first dimension of each video's ``features`` (its rows, or T segments), read
        from the set's index, not from the arrays; -1 where the index does not know it."""
        code = np.asarray(self._index.layout)[list(self._row.values())]
        firsts = np.array([shape[0] if shape else -1 for shape, _, _ in self._layouts] + [-1])
        return firsts[code] if len(code) else np.zeros(0, np.int64)

    def rows(self, video_id: str) -> dict[str, np.ndarray]:
        """Where each row of a video lies: ``frame_indices`` ``(L, span)`` and ``start``,
        ``end``, ``centre`` ``(L,)`` in seconds. A set of an untrimmed grid stores them as the
        datasets ``frame_indices`` and ``times``; a segments set as its attrs."""
        times = self.get_extra(video_id, "times")
        if times is not None:
            fi = self.get_extra(video_id, "frame_indices")
            if times.ndim != 2 or times.shape[1] != 3 or fi is None or len(fi) != len(times):
                raise StoreError(
                    f"video {video_id!r} of set {self.name!r} has malformed row times; run "
                    f"`vidfeat store verify {self.dir.parent}`"
                )
            return {"frame_indices": fi, "start": times[:, 0], "end": times[:, 1],
                    "centre": times[:, 2]}  # fmt: skip
        a = self.attrs(video_id)
        start, end = np.asarray(a.get("segment_start")), np.asarray(a.get("segment_end"))
        return {"frame_indices": np.asarray(a.get("frame_indices")), "start": start, "end": end,
                "centre": (start + end) / 2.0}  # fmt: skip

    def attrs(self, video_id: str) -> dict:
        """The attrs of a video without reading its features."""
        g = self._group(video_id)
        try:
            return _read_attrs(g)
        except Exception as exc:  # noqa: BLE001 - attrs HDF5 cannot decode
            raise StoreError(
                f"the attrs of video {video_id!r} in shard {self.shard_of(video_id).name} of set "
                f"{self.name!r} cannot be read ({exc}); run `vidfeat store verify "
                f"{self.dir.parent}`"
            ) from exc

    def shard_of(self, video_id: str) -> Path:
        """The completed shard the reader takes ``video_id`` from."""
        if video_id not in self:
            raise MissingVideoError(f"video {video_id!r} is not in set {self.name!r}")
        return self.dir / self._shard_name(self._row[video_id])

    def duplicates(self) -> dict[str, list[Path]]:
        """Ids present in more than one completed shard → those shards (sorted by name)."""
        return {
            v: [self.dir / self._shard_name(r) for r in rows]
            for v, rows in sorted(self._copies.items())
        }

    def bad_shards(self) -> dict[str, str]:
        """Shards that could not be opened → the error; entries with a shard's name that are
        not regular files (symlinks, FIFOs, ...) → what they are (never opened)."""
        bad = {s.name: s.error for s in self._index.shards if s.error is not None}
        bad.update((n, f"{kind}, not a regular file: skipped") for n, kind in self._skipped.items())
        return dict(sorted(bad.items()))

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
        state["_fds"] = OrderedDict()  # descriptors mean nothing in another process
        for k in ("_off", "_lay_of", "_shard_of"):  # memoryviews: rebuilt from the index
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()
        self._columns()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._close_handles()
