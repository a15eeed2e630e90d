"""The index of a set: every copy of every video, by shard, as a few numpy columns.

:class:`SetIndex` holds one row per (shard, video) pair, rows grouped by shard in name order:
the id, the byte offset of ``features`` (-1: read through h5py), a code into a small table of
(shape, dtype) layouts and ``written_at`` (NaN: not known yet). The reader builds it from the
per-shard indexes (:mod:`vidfeat.store.shardindex`) and caches it as ``<set>/.index.npz``: an
uncompressed numpy archive written atomically (temp file, fsync, rename), with each shard's
name, size and mtime_ns so only shards that appeared or changed are listed again.

Why npz (figures from bench/bench_store_scale.py, 500k videos in 7,814 shards): the archive
is 16.6 MB, written in 0.08 s, loaded with its id -> row dict in 0.24 s; a lookup (id ->
shard, offset, layout) costs 1.5 us through the dict and memoryviews, and all ids (the
resume point) come in 0.05 s. An sqlite file of the same rows is 14.2 MB and opens at once,
but takes 0.9 s to write, 13 us per lookup through the sqlite3 module (a good part of the
``pread`` it precedes) and 0.34 s to list all ids. The JSON of format 2 took 3.4 s to open.
Ids are one NUL-separated UTF-8 blob (NUL cannot occur in an id).

The cache is untrusted: anything malformed (wrong types, lengths, codes out of range) makes
:meth:`SetIndex.load` return None and the reader rebuilds it; an offset past the end of its
shard is an error when read (never a short array). ``vidfeat store verify`` checks the
shards themselves, not this cache.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidfeat.errors import StoreError
from vidfeat.outdir import atomic_write
from vidfeat.store.guard import MAX_JSON_BYTES, open_regular, parse_dtype, parse_json, read_capped
from vidfeat.store.paths import _fsync_path
from vidfeat.store.shardindex import ShardListing, listing_from_rows

INDEX_FILE = ".index.npz"
INDEX_FORMAT = 3  # 3: numpy columns (.index.npz); 2 was .index.json
LEGACY_INDEX_JSON = ".index.json"  # format 2, read once to avoid rescanning old stores

SHARD_RE = re.compile(r"^part-(?P<job>.+)-(?P<k>\d+)\.h5$")


@dataclass
class ShardRec:
    """One completed shard as listed: its stat when listed, its rows, how it was listed."""

    name: str
    size: int
    mtime_ns: int
    count: int = 0
    indexed: bool = False  # listed from its own index (False: groups scanned)
    error: str | None = None  # could not be opened


class SetIndex:
    """Rows of every copy of every video of a set, grouped by shard (see the module doc)."""

    def __init__(
        self,
        shards: list[ShardRec],
        ids: list[str],
        offset: np.ndarray,
        layout: np.ndarray,
        wat: np.ndarray,
        layouts: list[tuple[tuple[int, ...], str]],
    ) -> None:
        self.shards = shards
        self.ids = ids
        self.offset = offset
        self.layout = layout
        self.wat = wat
        self.layouts = layouts
        counts = [s.count for s in shards]
        starts = np.cumsum([0, *counts]).tolist()
        self.start = dict(zip([s.name for s in shards], starts, strict=False))
        self._pos = {s.name: i for i, s in enumerate(shards)}
        self.shard_of_row = np.repeat(np.arange(len(shards), dtype=np.int32), counts)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> SetIndex:
        return cls([], [], np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0), [])

    def rows_of(self, shard: str) -> range:
        i = self.start[shard]
        return range(i, i + self.by_name(shard).count)

    def by_name(self, shard: str) -> ShardRec:
        return self.shards[self._pos[shard]]

    # -- building

    @classmethod
    def assemble(cls, parts: list[tuple[ShardRec, SetIndex | ShardListing | None]]) -> SetIndex:
        """A new index from shards in name order, each with its rows taken from an existing
        index (reused unchanged), a fresh listing, or None (an unreadable shard)."""
        layouts: list[tuple[tuple[int, ...], str]] = []
        codes: dict[tuple[tuple[int, ...], str], int] = {}
        remaps: dict[int, np.ndarray] = {}
        ids: list[str] = []
        offs, lays, wats = [], [], []
        shards = []
        for rec, src in parts:
            if isinstance(src, SetIndex):
                r = src.rows_of(rec.name)
                remap = remaps.get(id(src))
                if remap is None:
                    remap = np.empty(len(src.layouts) + 1, np.int32)
                    remap[-1] = -1  # code -1 stays -1
                    for c, lay in enumerate(src.layouts):
                        remap[c] = codes.setdefault(lay, len(codes))
                        if remap[c] == len(layouts):
                            layouts.append(lay)
                    remaps[id(src)] = remap
                ids.extend(src.ids[r.start : r.stop])
                offs.append(src.offset[r.start : r.stop])
                lays.append(remap[src.layout[r.start : r.stop]])
                wats.append(src.wat[r.start : r.stop])
                rec.count = len(r)
            elif isinstance(src, ShardListing):
                remap = np.empty(len(src.layouts) + 1, np.int32)
                remap[-1] = -1
                for c, lay in enumerate(src.layouts):
                    remap[c] = codes.setdefault(lay, len(codes))
                    if remap[c] == len(layouts):
                        layouts.append(lay)
                ids.extend(src.ids)
                offs.append(src.offset)
                lays.append(remap[src.code])
                wats.append(src.written_at)
                rec.count = len(src.ids)
                rec.indexed = src.indexed
            else:
                rec.count = 0
            shards.append(rec)
        cat = np.concatenate
        lay = cat(lays) if lays else np.zeros(0, np.int32)
        used = np.unique(lay[lay >= 0])
        if len(used) < len(layouts):  # drop layouts only removed shards used
            remap = np.full(len(layouts) + 1, -1, np.int32)
            remap[used] = np.arange(len(used), dtype=np.int32)
            lay = remap[lay]
            layouts = [layouts[c] for c in used.tolist()]
        return cls(
            shards,
            ids,
            cat(offs) if offs else np.zeros(0, np.int64),
            lay,
            cat(wats) if wats else np.zeros(0),
            layouts,
        )

    # -- the cache file

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename)."""
        dtypes = sorted({d for _, d in self.layouts})
        dcode = {d: i for i, d in enumerate(dtypes)}
        meta = {
            "format": INDEX_FORMAT,
            "dtypes": dtypes,
            "errors": {s.name: s.error for s in self.shards if s.error is not None},
        }
        dims = [n for shape, _ in self.layouts for n in shape]
        stat = [(s.size, s.mtime_ns, s.count, int(s.indexed)) for s in self.shards]
        arrays = {
            "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
            "shard_names": np.frombuffer("\0".join(s.name for s in self.shards).encode(), np.uint8),
            "shard_stat": np.asarray(stat, np.int64).reshape(-1),
            "ids": np.frombuffer("\0".join(self.ids).encode("utf-8"), np.uint8),
            "offset": self.offset.astype(np.int64, copy=False),
            "layout": self.layout.astype(np.int32, copy=False),
            "wat": self.wat.astype(np.float64, copy=False),
            "lay_ndim": np.asarray([len(s) for s, _ in self.layouts], np.int16),
            "lay_dims": np.asarray(dims, np.int64),
            "lay_dtype": np.asarray([dcode[d] for _, d in self.layouts], np.int16),
        }
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with atomic_write(path, mode=0o644) as fh:
            fh.write(buf.getbuffer())
        _fsync_path(path.parent, directory=True)

    @classmethod
    def load(cls, path: Path) -> SetIndex | None:
        """The index cached at ``path``, or None when absent, not a regular file, of another
        format or malformed. Read without numpy's loader: every member must be stored (not
        compressed), of the name, dtype and size expected, and the sizes must add up to at
        most the file's own, so nothing is allocated past the bytes the file holds."""
        try:
            fd = open_regular(path, "index cache")
        except (OSError, StoreError):
            return None
        try:
            with open(fd, "rb") as fh:
                a = _read_npz(fh, os.fstat(fh.fileno()).st_size)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
            return None
        if a is None:
            return None
        try:
            return cls._from_arrays(a)
        except (
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            OverflowError,
            UnicodeDecodeError,
            RecursionError,
        ):
            return None

    @classmethod
    def _from_arrays(cls, a: dict[str, np.ndarray]) -> SetIndex | None:
        want = _NPZ_DTYPES
        if set(a) != set(want) or any(a[k].dtype != t or a[k].ndim != 1 for k, t in want.items()):
            return None
        meta = json.loads(a["meta"].tobytes().decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            return None
        dtypes, errors = meta.get("dtypes"), meta.get("errors")
        if not isinstance(dtypes, list) or not isinstance(errors, dict):
            return None
        if not all(parse_dtype(d) is not None for d in dtypes):
            return None
        blob = a["shard_names"].tobytes().decode("utf-8")
        names = blob.split("\0") if blob else []
        stat = a["shard_stat"]
        if len(stat) != 4 * len(names) or not all(map(SHARD_RE.match, names)):
            return None
        stat = stat.reshape(-1, 4)
        if ((stat[:, 2] < 0) | (stat[:, 3] < 0) | (stat[:, 3] > 1)).any():
            return None  # negative counts, "indexed" flags other than 0 and 1
        if not all(isinstance(e, str) for e in errors.values()) or not set(errors) <= set(names):
            return None
        shards = [
            ShardRec(name, size, mtime, count, bool(indexed), errors.get(name))
            for name, (size, mtime, count, indexed) in zip(names, stat.tolist(), strict=True)
        ]
        if any(s.error is not None and s.count for s in shards):
            return None
        names = [s.name for s in shards]
        if names != sorted(set(names)):
            return None
        n = sum(s.count for s in shards)
        blob = a["ids"].tobytes()
        ids = blob.decode("utf-8").split("\0") if n else []
        if blob and not n:
            return None
        off, lay, wat = a["offset"], a["layout"], a["wat"]
        if not (len(ids) == len(off) == len(lay) == len(wat) == n):
            return None
        if n and (b"/" in blob or b"\0\0" in blob or blob[:1] == b"\0" or blob[-1:] == b"\0"):
            return None  # empty ids or ids with '/' cannot be group names
        ndim, flat, dcodes = a["lay_ndim"], a["lay_dims"], a["lay_dtype"]
        if (
            len(ndim) != len(dcodes)
            or (ndim < 0).any()
            or int(ndim.sum()) != len(flat)
            or (flat < 0).any()
            or (dcodes < 0).any()
            or (dcodes >= len(dtypes)).any()
        ):
            return None
        layouts = []
        pos = 0
        for k, dc in zip(ndim.tolist(), dcodes.tolist(), strict=True):
            layouts.append((tuple(flat[pos : pos + k].tolist()), dtypes[dc]))
            pos += k
        if n:
            if (off < -1).any() or (lay < -1).any() or (lay >= len(layouts)).any():
                return None
            raw = off >= 0
            if (lay[raw] < 0).any():
                return None
            readable = np.array(
                [np.dtype(d).kind in "fiub" and math.prod(s) > 0 for s, d in layouts] + [False]
            )
            if not readable[lay[raw]].all():
                return None
        return cls(shards, ids, off, lay, wat, layouts)

    @classmethod
    def from_legacy_json(cls, path: Path) -> SetIndex | None:
        """The index of format 2 (``.index.json``, vidfeat before ``.index.npz``), so a store
        an older version indexed is not rescanned (its shards have no index of their own)."""
        try:
            cache = parse_json(read_capped(path, MAX_JSON_BYTES, "legacy index"), str(path))
        except (OSError, StoreError):
            return None
        if not isinstance(cache, dict) or cache.get("format") != 2:
            return None
        shards, wat_all = cache.get("shards"), cache.get("written_at", {})
        if not isinstance(shards, dict) or not isinstance(wat_all, dict):
            return None
        parts: list[tuple[ShardRec, ShardListing | None]] = []
        for name in sorted(shards):
            c = shards[name]
            if not SHARD_RE.match(name) or not isinstance(c, dict):
                continue
            size, mtime = c.get("size"), c.get("mtime_ns")
            if not isinstance(size, int) or not isinstance(mtime, int):
                continue
            if isinstance(c.get("error"), str):
                parts.append((ShardRec(name, size, mtime, error=c["error"]), None))
                continue
            ids = c.get("ids")
            if not isinstance(ids, list) or not all(
                isinstance(v, str) and v and "/" not in v for v in ids
            ):
                continue
            raw = c.get("raw") if isinstance(c.get("raw"), dict) else {}
            wat = wat_all.get(name) if isinstance(wat_all.get(name), dict) else {}
            rows = []
            for vid in ids:
                lay = raw.get(vid)
                ok = _valid_legacy_layout(lay)
                t = wat.get(vid, math.nan)
                t = -math.inf if t is None else t if isinstance(t, int | float) else math.nan
                rows.append((lay[0] if ok else -1, (tuple(lay[1]), lay[2]) if ok else None, t))
            parts.append((ShardRec(name, size, mtime), listing_from_rows(ids, rows, indexed=False)))
        return cls.assemble(parts)


_NPZ_DTYPES = {
    "meta": np.uint8,
    "shard_names": np.uint8,
    "shard_stat": np.int64,
    "ids": np.uint8,
    "offset": np.int64,
    "layout": np.int32,
    "wat": np.float64,
    "lay_ndim": np.int16,
    "lay_dims": np.int64,
    "lay_dtype": np.int16,
}


def _read_npz(fh, file_size: int) -> dict[str, np.ndarray] | None:
    """The 1-D arrays of an index archive, or None when it is not exactly what
    :meth:`SetIndex.save` writes (see :meth:`SetIndex.load`)."""
    with zipfile.ZipFile(fh) as zf:
        infos = zf.infolist()
        want = {f"{k}.npy": k for k in _NPZ_DTYPES}
        if len(infos) != len(want) or {i.filename for i in infos} != set(want):
            return None
        if any(
            i.compress_type != zipfile.ZIP_STORED or i.file_size != i.compress_size for i in infos
        ):
            return None  # a compressed member could inflate past the file's size
        if sum(i.file_size for i in infos) > file_size:
            return None
        out = {}
        for i in infos:
            key = want[i.filename]
            raw = zf.read(i)
            arr = _npy_1d(raw, np.dtype(_NPZ_DTYPES[key]))
            if arr is None:
                return None
            out[key] = arr
    out["wat"] = out["wat"].copy()  # written in place when written_at is filled in
    return out


def _npy_1d(raw: bytes, dtype: np.dtype) -> np.ndarray | None:
    """A 1-D array of ``dtype`` from the bytes of a ``.npy`` member, its header checked
    against the data it is followed by (None when they disagree)."""
    from numpy.lib import format as npy

    bio = io.BytesIO(raw)
    try:
        version = npy.read_magic(bio)
        if version == (1, 0):
            shape, fortran, dt = npy.read_array_header_1_0(bio)
        elif version == (2, 0):
            shape, fortran, dt = npy.read_array_header_2_0(bio)
        else:
            return None
    except Exception:  # noqa: BLE001 - a header numpy cannot parse (SyntaxError and others)
        return None
    start = bio.tell()
    if (
        dt != dtype
        or not isinstance(shape, tuple)
        or len(shape) != 1
        or type(shape[0]) is not int
        or shape[0] * dtype.itemsize != len(raw) - start
    ):
        return None
    return np.frombuffer(raw, dtype, shape[0], offset=start)


def _valid_legacy_layout(lay: object) -> bool:
    """A format-2 ``[offset, shape, dtype]`` of the expected types (the cache is untrusted)."""
    try:
        return (
            isinstance(lay, list)
            and len(lay) == 3
            and isinstance(lay[0], int)
            and lay[0] >= 0
            and isinstance(lay[1], list)
            and all(isinstance(n, int) and n > 0 for n in lay[1])
            and len(lay[1]) <= 32
            and all(n < 2**62 for n in lay[1])
            and parse_dtype(lay[2]) is not None
            and np.dtype(lay[2]).kind in "fiub"
        )
    except TypeError:
        return False
