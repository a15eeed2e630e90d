"""The per-shard index: what a completed shard holds, readable without opening its groups.

:class:`ShardWriter` stores it as the root attribute ``vidfeat_index`` of every shard, just
before the shard is closed, fsync'ed and renamed, so a completed shard always carries it. It is
an attribute rather than a dataset because every root-level name of a shard is a video id (an
index dataset could clash with an id, and older readers would list it as a video), whereas
attributes are not group members: readers and tools that do not know the index never see it.

The attribute is a JSON string, column by column, ids sorted, ``features`` layouts as codes
into a table of the distinct (shape, dtype) pairs (a shard of one set has one or a few)::

    {"format": 1, "ids": [...], "offset": [...], "layout": [0, 0, ...],
     "layouts": [[[T, D], "<f4"], ...], "written_at": [...]}

``offset`` is the byte offset of a video's ``features`` array when it is stored contiguous and
unfiltered (uncompressed numeric features, the default for floats) so readers can ``pread``
it, else -1; ``layout`` says the shape and dtype of ``features`` for every video;
``written_at`` is the attr readers use to choose between duplicate copies (null when absent
or not a number).

Reading it costs one HDF5 open and one attribute read (~0.4 ms) instead of opening every
group's dataset (~15 ms for 64 videos). Shards written before the index existed (or whose
index does not match their root group) are listed by :func:`scan_groups`, as before.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5f, h5g
from h5py._hl.files import make_fapl  # the fapl h5py.File builds (see _fapl)

from vidfeat.store.guard import (
    MAX_INDEX_ATTR_BYTES,
    NotRegularFile,
    h5_path,
    link_problem,
    open_regular,
    parse_dtype,
    same_file,
)
from vidfeat.store.paths import FEATURES

SHARD_INDEX_ATTR = "vidfeat_index"
SHARD_INDEX_FORMAT = 1


def written_at_value(value: Any) -> float:
    """The ``written_at`` attr as readers rank copies: a float, ``-inf`` when absent, NaN or
    not a number (an unreadable copy loses to any readable one)."""
    if value is None:
        return -math.inf
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # float() of a 1-element array warns in numpy 2
            t = float(value)
    except Exception:  # noqa: BLE001
        return -math.inf
    return t if not math.isnan(t) else -math.inf


def dataset_layout(ds: h5py.Dataset) -> tuple[int, tuple[int, ...], str]:
    """``(offset, shape, dtype)`` of a ``features`` dataset; offset -1 unless the array can be
    read with one ``pread``: contiguous (not chunked, so not compressed or filtered), allocated,
    numeric and non-empty. Writer, reader scan and verify all use this one rule."""
    shape = tuple(int(n) for n in ds.shape) if ds.shape is not None else ()
    dtype = ds.dtype
    offset = -1
    if ds.chunks is None and dtype.kind in "fiub" and ds.size:
        got = ds.id.get_offset()  # None for compact or unallocated storage
        if got is not None:
            offset = int(got)
    return offset, shape, dtype.str


Layout = tuple[tuple[int, ...], str]  # (shape, dtype str) of a features array


@dataclass
class ShardListing:
    """What one shard holds, as numpy columns over its ids (sorted).

    ``offset`` -1 means "read through h5py"; ``code`` indexes ``layouts`` (-1: unknown, a video
    whose ``features`` could not be inspected); ``written_at`` is NaN when not recorded
    (scanned shards: it is read from the group only for ids stored in several shards) and
    -inf when the group has none. ``indexed`` tells whether it came from the shard's index.
    """

    ids: list[str]
    offset: np.ndarray  # int64
    code: np.ndarray  # int32
    layouts: list[Layout]
    written_at: np.ndarray  # float64
    indexed: bool = False

    def rows(self) -> list[tuple[str, int, Layout | None, float]]:
        """``(id, offset, (shape, dtype) or None, written_at)`` per video."""
        lay = [*self.layouts, None]  # code -1 -> None
        return [
            (v, o, lay[c], w)
            for v, o, c, w in zip(
                self.ids,
                self.offset.tolist(),
                self.code.tolist(),
                self.written_at.tolist(),
                strict=True,
            )
        ]


def listing_from_rows(
    ids: list[str], rows: list[tuple[int, Layout | None, float]], indexed: bool
) -> ShardListing:
    """A listing from ``(offset, layout or None, written_at)`` per id."""
    codes: dict[Layout, int] = {}
    code = [-1 if lay is None else codes.setdefault(lay, len(codes)) for _, lay, _ in rows]
    return ShardListing(
        ids=list(ids),
        offset=np.array([o for o, _, _ in rows], np.int64).reshape(-1),
        code=np.array(code, np.int32).reshape(-1),
        layouts=list(codes),
        written_at=np.array([w for _, _, w in rows], np.float64).reshape(-1),
        indexed=indexed,
    )


def encode_shard_index(entries: dict[str, tuple[int, tuple[int, ...], str, float]]) -> str:
    """The attribute text for ``{id: (offset, shape, dtype, written_at)}``."""
    ids = sorted(entries)
    codes: dict[Layout, int] = {}
    layout = [
        codes.setdefault((tuple(int(n) for n in entries[v][1]), str(entries[v][2])), len(codes))
        for v in ids
    ]
    return json.dumps(
        {
            "format": SHARD_INDEX_FORMAT,
            "ids": ids,
            "offset": [int(entries[v][0]) for v in ids],
            "layout": layout,
            "layouts": [[list(shape), dtype] for shape, dtype in codes],
            "written_at": [
                float(entries[v][3]) if math.isfinite(entries[v][3]) else None for v in ids
            ],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _valid_dtype(s: object) -> bool:
    return parse_dtype(s) is not None


def _ints_in(values: list, low: int, high: int) -> bool:
    """All JSON integers in [low, high) (plain python: faster than numpy for a shard's few)."""
    return all(type(v) is int for v in values) and (
        not values or (min(values) >= low and max(values) < high)
    )


def decode_shard_index(text: object) -> ShardListing | None:
    """The listing an index attribute holds, or None when it is malformed. Validated column by
    column and per distinct layout (~0.1 ms for 64 videos, most of it parsing the JSON)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str) or len(text) > MAX_INDEX_ATTR_BYTES:
        return None
    try:
        d = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(d, dict) or d.get("format") != SHARD_INDEX_FORMAT:
        return None
    cols = [d.get(k) for k in ("ids", "offset", "layout", "written_at")]
    table = d.get("layouts")
    if not all(type(c) is list for c in [*cols, table]) or len({len(c) for c in cols}) != 1:
        return None
    ids, off, code, wat = cols
    try:
        uniq = set(ids)
        if len(uniq) != len(ids) or "" in uniq or "/" in "".join(ids) or "\0" in "".join(ids):
            return None
        if not all(
            type(t) is list
            and len(t) == 2
            and type(t[0]) is list
            and len(t[0]) <= 32
            and all(type(n) is int and 0 <= n < 2**62 for n in t[0])
            and _valid_dtype(t[1])
            for t in table
        ):
            return None
        layouts = [(tuple(shape), dtype) for shape, dtype in table]
    except (TypeError, ValueError):  # ids that are not strings, malformed layouts
        return None
    if len(set(layouts)) != len(layouts):
        return None
    if not _ints_in(off, -1, 2**62) or not _ints_in(code, 0, len(layouts)):
        return None
    readable = [np.dtype(dt).kind in "fiub" and math.prod(shape) > 0 for shape, dt in layouts]
    pairs = zip(off, code, strict=True)
    if not all(readable) and any(o >= 0 and not readable[c] for o, c in pairs):
        return None  # a pread offset only for numeric, non-empty arrays
    if not all(type(w) is float or type(w) is int for w in wat):
        if not all(w is None or type(w) in (int, float) for w in wat):
            return None  # strings, booleans
        wat = [-math.inf if w is None else w for w in wat]
    try:
        w = np.array(wat, np.float64)
    except OverflowError:  # an integer beyond float range
        return None
    w[np.isnan(w)] = -math.inf
    return ShardListing(
        ids, np.array(off, np.int64), np.array(code, np.int32), layouts, w, indexed=True
    )


_ATTR = SHARD_INDEX_ATTR.encode()
_FEATURES = FEATURES.encode()
_STR = h5py.string_dtype()
_FAPL: tuple[int, Any] | None = None


def _fapl() -> Any:
    """The file access properties ``h5py.File(..., locking=False)`` uses (HDF5 refuses to
    open a file twice in one process with different ones), made once per process."""
    global _FAPL
    if _FAPL is None or _FAPL[0] != os.getpid():
        _FAPL = (os.getpid(), make_fapl(None, locking=False))
    return _FAPL[1]


def open_shard(path: Path) -> Any:
    """A low-level HDF5 file id of a shard, opened read-only as :func:`_h5open` does (close
    it with ``.close()``): a regular file only, never through a symlink, never blocking
    (:class:`~vidfeat.store.guard.NotRegularFile` else)."""
    fd = open_regular(path, "shard")
    try:
        fid = h5f.open(os.fsencode(h5_path(fd, path)), h5f.ACC_RDONLY, fapl=_fapl())
        if not same_file(fid, fd):
            fid.close()
            raise NotRegularFile(f"{path} (shard) was replaced while being opened; skipped")
        return fid
    finally:
        os.close(fd)


def read_index_attr(fid: Any) -> object:
    """The raw index attribute of an open shard: None when absent, a string (or bytes) as
    stored, or an object :func:`decode_shard_index` refuses when it cannot be read."""
    if not h5a.exists(fid, _ATTR):
        return None
    try:
        attr = h5a.open(fid, _ATTR)
        if attr.get_space().get_simple_extent_npoints() != 1 or attr.dtype != _STR:
            return ValueError("the index attribute is not one string")
        buf = np.empty((), dtype=_STR)
        attr.read(buf)
        return buf[()]
    except Exception as exc:  # noqa: BLE001 - not a string: no usable index
        return exc


def read_shard_index_at(path: Path) -> ShardListing | None:
    """The index stored in the shard at ``path``, or None when it has none (written before
    the index existed), a malformed one, or one not listing as many videos as the root group
    links (the shard was edited after it was completed): the caller then scans the groups.

    Read through h5py's low-level API, at half the cost of opening an ``h5py.File``. Raises
    when the file cannot be opened."""
    fid = open_shard(path)
    try:
        raw = read_index_attr(fid)
        listing = None if raw is None else decode_shard_index(raw)
        if listing is None or len(listing.ids) != h5g.open(fid, b"/").get_num_objs():
            return None
        return listing
    finally:
        fid.close()


def scan_groups(f: h5py.File) -> ShardListing:
    """The listing of an open shard from its groups (each video's dataset is opened: the
    slow path for shards without an index). Members that are not hard links (soft or
    external links) are listed without a layout and never followed: reading them is refused."""
    ids = sorted(f.keys())
    rows = []
    for vid in ids:
        off, lay = -1, None
        with contextlib.suppress(Exception):  # that video is read through h5py, which reports
            bvid = vid.encode("utf-8", "surrogateescape")
            if link_problem(f.id, bvid) is None:
                g = f[vid]
                if isinstance(g, h5py.Group) and link_problem(g.id, _FEATURES) is None:
                    ds = g[FEATURES]
                    if isinstance(ds, h5py.Dataset):
                        off, shape, dtype = dataset_layout(ds)
                        lay = (shape, dtype)
        rows.append((off, lay, math.nan))
    return listing_from_rows(ids, rows, indexed=False)
