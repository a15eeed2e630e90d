"""Writing one video row by row: :class:`VideoSink`, for videos too long to hold in memory.

A video of an untrimmed grid has L rows, known before its first frame is decoded. Its group is
created in the writer's open shard with every dataset allocated at its final shape (``features``
``(L, D)``, ``scores``, ``frame_indices``, ``times``), and batches of rows are written into them
as the network produces them, so neither the frames nor the features of a whole video are ever
held. :meth:`VideoSink.commit` makes the video part of the shard (its index entry, its bytes);
:meth:`VideoSink.abort` deletes the group, and the writer aborts every open sink before it
completes a shard, so a shard never holds a half-written video. Several sinks may be open at
once (one per decoding worker); the shard rotates only when none is.

Datasets follow the writer's layout rule (float features contiguous, so the reader's one-pread
path applies; integer arrays such as flow fields in gzip chunks of whole rows, deflated here as
each chunk fills up, on threads and by ISA-L at ``auto`` as :mod:`~vidfeat.store.deflate` does
for whole arrays, then written as they are). ``float16`` narrows float features as the writer
does.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import h5py
import numpy as np

from vidfeat.errors import StoreError
from vidfeat.store.deflate import Layout, deflate, layout
from vidfeat.store.paths import FEATURES, check_video_id
from vidfeat.store.shardindex import dataset_layout, written_at_value
from vidfeat.store.writer import _FLOAT16_MAX, FLOAT16_FROM, ShardWriter, _checkpoint, _encode_attr


class VideoSink:
    """One video's group, filled row by row (see the module docstring).

    ``arrays``: name → (shape, dtype) of each dataset, ``features`` first; ``attrs``: the
    group's attrs (encoded as :meth:`ShardWriter.add` does)."""

    def __init__(
        self,
        writer: ShardWriter,
        video_id: str,
        arrays: dict[str, tuple[tuple[int, ...], Any]],
        attrs: dict,
    ) -> None:
        if writer._closed:
            raise StoreError("this ShardWriter is closed; open a new one to add videos")
        check_video_id(video_id)
        if FEATURES not in arrays:
            raise StoreError(f"video {video_id!r}: a sink needs a {FEATURES!r} array")
        self.writer, self.video_id = writer, video_id
        self.shapes = {k: tuple(int(n) for n in v[0]) for k, v in arrays.items()}
        dtypes = {k: np.dtype(v[1]) for k, v in arrays.items()}
        self.from_dtype = None
        if writer.float16 and dtypes[FEATURES] in (np.float32, np.float64):
            self.from_dtype, dtypes[FEATURES] = str(dtypes[FEATURES]), np.dtype(np.float16)
        self.dtypes = dtypes
        self.nbytes = sum(int(np.prod(s)) * dtypes[k].itemsize for k, s in self.shapes.items())
        enc = {k: e for k, v in attrs.items() if (e := _encode_attr(k, v)) is not None}
        enc.setdefault("written_at", time.time())
        self.written_at = enc["written_at"]
        # contiguous arrays take their whole size at the first write; chunked (compressed)
        # ones are checked batch by batch (:meth:`write`), where their size is known
        self.chunked = {
            k for k, shp in self.shapes.items()
            if layout(shp, dtypes[k], writer.compression, writer.compression_level).method
        }  # fmt: skip
        whole = sum(
            int(np.prod(shp)) * dtypes[k].itemsize
            for k, shp in self.shapes.items()
            if k not in self.chunked
        )
        writer._check_free_space(video_id, self.nbytes, whole)
        f = writer._ensure_open()
        if video_id in f:
            raise StoreError(f"video {video_id!r} is already in this job's open shard")
        self.direct: dict[str, _Chunks] = {}  # gzip datasets: rows deflated chunk by chunk
        self.group: h5py.Group | None = f.create_group(video_id)
        writer._sinks.add(self)
        try:
            for name, shape in self.shapes.items():
                self._create(name, shape, dtypes[name])
            for k, v in enc.items():
                self.group.attrs[k] = v
        except BaseException:
            self.abort()
            raise

    def _create(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        w = self.writer
        lay = layout(shape, dtype, w.compression, w.compression_level)
        assert self.group is not None
        if lay.method == "gzip":  # deflated here (ISA-L at auto, on threads), whole chunks
            self.direct[name] = _Chunks(lay)
        if lay.method is None:
            ds = self.group.create_dataset(name, shape=shape, dtype=dtype)
        else:
            ds = self.group.create_dataset(
                name,
                shape=shape,
                dtype=dtype,
                chunks=lay.chunks,
                compression=lay.method,
                compression_opts=lay.level if lay.method == "gzip" else None,
                shuffle=lay.shuffle,
            )
        if name == FEATURES and self.from_dtype is not None:
            ds.attrs[FLOAT16_FROM] = self.from_dtype

    def write(self, name: str, start: int, rows: np.ndarray) -> None:
        """Rows ``start … start + len(rows) - 1`` of dataset ``name``."""
        if self.group is None:
            raise StoreError(f"video {self.video_id!r} was already committed or aborted")
        a = np.asarray(rows)
        shape = self.shapes[name]
        if a.shape[1:] != shape[1:] or not 0 <= start <= shape[0] - len(a):
            raise StoreError(
                f"video {self.video_id!r}: rows {start}..{start + len(a) - 1} of shape "
                f"{a.shape[1:]} do not fit {name!r} {shape}"
            )
        if name == FEATURES and self.from_dtype is not None:
            finite = a[np.isfinite(a)]
            if finite.size and float(np.abs(finite).max()) > _FLOAT16_MAX:
                raise StoreError(
                    f"features of video {self.video_id!r} exceed the float16 range; extract "
                    "without --float16"
                )
        if name in self.chunked:  # compressed rows: their size bounds what they add
            self.writer._check_free_space(self.video_id, a.nbytes)
        try:
            a = a.astype(self.dtypes[name], copy=False)
            if name in self.direct:
                self.direct[name].add(self.group[name], start, a)
            else:
                self.group[name][start : start + len(a)] = a
        except OSError as exc:
            raise StoreError(
                f"cannot write video {self.video_id!r} to {self.writer._partial} ({exc}); check "
                "free disk space"
            ) from exc

    def commit(self) -> None:
        """The video is complete: part of the shard (which may now rotate)."""
        w, g = self.writer, self.group
        if g is None:
            raise StoreError(f"video {self.video_id!r} was already committed or aborted")
        try:
            for name, chunks in self.direct.items():
                chunks.finish(g[name])
        except OSError as exc:
            raise StoreError(
                f"cannot write video {self.video_id!r} to {w._partial} ({exc}); check free "
                "disk space"
            ) from exc
        lay = dataset_layout(g[FEATURES])
        self.group = None
        w._sinks.discard(self)
        w._pending.append(self.video_id)
        w._index[self.video_id] = (*lay, written_at_value(self.written_at))
        w._bytes += self.nbytes
        _checkpoint("after-add")
        if not w._sinks and (len(w._pending) >= w.max_videos or w._bytes >= w.max_bytes):
            w.flush()

    def abort(self) -> None:
        """Forget the video: its group leaves the shard. Safe to call twice."""
        g, self.group = self.group, None
        self.writer._sinks.discard(self)
        if g is None:
            return
        f = self.writer._file
        with contextlib.suppress(Exception):
            if f is not None and self.video_id in f:
                del f[self.video_id]

    @property
    def open(self) -> bool:
        return self.group is not None


class _Chunks:
    """Rows of a gzip dataset arriving in order, written as whole deflated chunks
    (``write_direct_chunk``): the rows of a chunk not yet complete wait here, at most one
    chunk's worth (about 1 MiB)."""

    def __init__(self, lay: Layout) -> None:
        assert lay.chunks is not None
        self.lay, self.rows = lay, lay.chunks[0]
        self.at = 0  # first row of the chunk being filled
        self.next = 0  # the row expected next
        self.parts: list[np.ndarray] = []

    def add(self, ds: h5py.Dataset, start: int, a: np.ndarray) -> None:
        if start != self.next:
            raise StoreError(f"rows of a compressed array must come in order: row {start} "
                             f"arrived, row {self.next} was expected")  # fmt: skip
        self.parts.append(a)
        self.next += len(a)
        full = (self.next - self.at) // self.rows * self.rows
        if full:
            block = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
            self._write(ds, block[:full])
            self.parts = [block[full:]] if full < len(block) else []
            self.at += full

    def finish(self, ds: h5py.Dataset) -> None:
        if self.parts:
            self._write(ds, np.concatenate(self.parts))  # the edge chunk, padded by deflate
            self.parts = []

    def _write(self, ds: h5py.Dataset, block: np.ndarray) -> None:
        zero = (0,) * (block.ndim - 1)
        for k, data in enumerate(deflate(block, self.lay).chunks):
            ds.id.write_direct_chunk((self.at + k * self.rows, *zero), data)
