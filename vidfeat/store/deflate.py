"""How the store lays out and compresses one array, and the compression itself, done by vidfeat.

:func:`layout` is the one rule for a dataset's chunks and filter (the writer's and the
workers'). :func:`deflate` compresses an array's chunks into the standard HDF5 gzip (+ shuffle)
filter format on a thread per core — ISA-L's deflate at ``--compression auto``, 4-5x cheaper
than zlib's level 1 — into a picklable :class:`Deflated` that :func:`write_deflated` stores
with ``write_direct_chunk``. An extraction worker deflates its video's uint8 flow fields this
way before handing them to the writing parent: 5-8x fewer bytes cross the pipe, and the
parent only writes. Any HDF5 reader reads the result through the usual gzip filter.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h5py
import numpy as np

from vidfeat.cores import available_cores
from vidfeat.errors import StoreError

_CHUNK_BYTES = 1024 * 1024
# gzip level recorded for --compression auto (integer arrays), whose chunks ISA-L deflates at
# its level 1 (zlib's level 1 without it): on real uint8 flow fields that writes 13-22% of the
# raw bytes for a quarter of zlib level 1's CPU (lzf: 18-31%, and slower to read); figures in
# bench/RESULTS.md (bench_flow_methods, section 4)
AUTO_GZIP_LEVEL = 1
GZIP_LEVEL = 4  # --compression gzip

try:  # Intel's ISA-L deflate: the same zlib format, 4-5x less CPU than zlib's level 1
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - a platform without its wheel: zlib writes the same
    _isal_zlib = None


@dataclass(frozen=True)
class Layout:
    """How one array is stored: ``chunks`` None = contiguous; ``method`` None = unfiltered."""

    chunks: tuple[int, ...] | None
    method: str | None  # "gzip", "lzf" or None
    level: int | None = None  # gzip's level (recorded in the file; zlib's, see ``fast``)
    shuffle: bool = False
    fast: bool = False  # deflated by ISA-L (auto) rather than zlib at ``level``


def layout(shape: tuple[int, ...], dtype: np.dtype, compression: str | None, level: int) -> Layout:
    """The store's rule for an array of ``shape`` and ``dtype`` under ``compression``
    (``auto``: gzip for integer arrays, float features contiguous; ``gzip`` at ``level``;
    ``lzf``; None): chunks of whole rows along the first (time) axis, about 1 MiB each."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) if shape else 1
    if not shape or size == 0 or compression is None:
        return Layout(None, None)
    if compression == "auto" and dtype.kind in "fc":
        return Layout(None, None)  # float features: stored as they are (ShardWriter's doc)
    nbytes = size * dtype.itemsize
    if nbytes <= _CHUNK_BYTES:
        chunks = tuple(shape)
    else:
        row = max(1, nbytes // shape[0])
        chunks = (max(1, min(shape[0], _CHUNK_BYTES // row)),) + tuple(shape[1:])
    method = "gzip" if compression == "auto" else compression
    lvl = (AUTO_GZIP_LEVEL if compression == "auto" else int(level)) if method == "gzip" else None
    return Layout(chunks, method, lvl, dtype.itemsize > 1, compression == "auto")


@dataclass
class Deflated:
    """An array as its deflated chunks (picklable): what :func:`write_deflated` stores."""

    shape: tuple[int, ...]
    dtype: str
    layout: Layout
    chunks: list[bytes]

    @property
    def nbytes(self) -> int:
        """The array's bytes (not the compressed size): what free-space checks count."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a forked child makes its own


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        pool = ThreadPoolExecutor(available_cores(), thread_name_prefix="vidfeat-deflate")
        _pool = (os.getpid(), pool)
    return _pool[1]


def _chunk(a: np.ndarray, start: int, lay: Layout) -> bytes:
    """Rows ``start:`` of one chunk as HDF5's shuffle (items over 1 byte) + deflate filters
    store it: an edge chunk padded to full size with the fill value 0. zlib and ISA-L release
    the GIL, so chunks deflate in parallel threads."""
    assert lay.chunks is not None and lay.level is not None
    rows = lay.chunks[0]
    part = np.ascontiguousarray(a[start : start + rows])
    if len(part) < rows:
        part = np.concatenate([part, np.zeros((rows - len(part),) + a.shape[1:], a.dtype)])
    raw = part.view(np.uint8).reshape(-1)
    if lay.shuffle:  # byte k of every item, then byte k+1, ...
        raw = raw.reshape(-1, a.dtype.itemsize).T
    data = np.ascontiguousarray(raw).data
    if lay.fast and _isal_zlib is not None:
        return _isal_zlib.compress(data, 1)
    return zlib.compress(data, lay.level)


def deflate(a: np.ndarray, lay: Layout) -> Deflated:
    """``a`` compressed chunk by chunk as ``lay`` (a gzip layout) says, on a thread per core."""
    if lay.method != "gzip" or lay.chunks is None:
        raise ValueError(f"deflate needs a gzip layout, got {lay}")
    a = np.asarray(a)
    starts = range(0, a.shape[0], lay.chunks[0])
    chunks = list(_threads().map(lambda k: _chunk(a, k, lay), starts))
    return Deflated(tuple(a.shape), a.dtype.str, lay, chunks)


def deflate_for_store(a: np.ndarray, compression: str | None) -> np.ndarray | Deflated:
    """What a worker hands the writer: integer arrays the store gzips (a video's uint8 flow
    fields) already deflated; anything else as it is (float features may still be narrowed
    to float16 by the writer, which then compresses them itself)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iub" or compression not in ("auto", "gzip"):
        return a
    lay = layout(a.shape, a.dtype, compression, GZIP_LEVEL)
    return deflate(a, lay) if lay.method == "gzip" else a


def write_deflated(g: h5py.Group, name: str, d: Deflated) -> h5py.Dataset:
    """Store ``d`` as dataset ``name`` of ``g``: the gzip (+ shuffle) filters declared, the
    chunks written as they are."""
    lay = d.layout
    assert lay.chunks is not None
    if len(d.chunks) != -(-d.shape[0] // lay.chunks[0]):
        raise StoreError(f"{name}: {len(d.chunks)} deflated chunks do not cover shape {d.shape}")
    ds = g.create_dataset(
        name,
        shape=d.shape,
        dtype=np.dtype(d.dtype),
        chunks=lay.chunks,
        compression="gzip",
        compression_opts=lay.level,
        shuffle=lay.shuffle,
    )
    zero = (0,) * (len(d.shape) - 1)
    for k, data in enumerate(d.chunks):
        ds.id.write_direct_chunk((k * lay.chunks[0], *zero), data)
    return ds
