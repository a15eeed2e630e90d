"""Rows of untrimmed video as network input, streamed: a video of any length in bounded memory.

:class:`RowStream` is an ``IterableDataset`` over a video list on a grid of rows
(:class:`~vidfeat.grid.RowGrid`). For each video it yields, in order:

* ``{"index": i, "begin": meta}`` — the video's attrs and its rows (``frame_indices``,
  ``times``), before any decoding, so the writer can allocate the whole ``(L, D)`` array;
* ``{"index": i, "start": r, "x": Tensor [R, 1, C, S, S] | [R, 1, 1, 96, 64]}`` — rows
  ``r … r + R - 1`` as the network takes them (one row = a one-segment clip), ``rows`` per item
  (``fields``: the rows' uint8 flow fields as well, for a fields set);
* ``{"index": i, "end": True}`` — or ``{"index": i, "error": (class, message)}`` at any point
  (the writer then drops what it had of the video; the run goes on).

The frames are decoded in a thread (:func:`row_frames`) that hands each wanted frame over a
bounded queue and keeps none: the consumer holds only the frames of the rows not yet emitted,
so memory does not grow with the video. Which frames are read is decided by
:func:`~vidfeat.decode.read_frames`: it decodes on while the next wanted frame is ahead in the
same GOP (dense rows) and seeks to the keyframe before it when that skips work (sparse rows).
Audio streams its 16 kHz chunks likewise (:func:`audio_rows`).

The row makers: :class:`RGBRows` (N frames → a 3N-channel super-image, uint8: the network's
side normalises it, :func:`~vidfeat.clips.normalize_on_device`), :class:`FlowRows` (the pairs
``(f, min(f + 1, L - 1))`` of each row frame f on the grid's frame axis, quantised as the
fields sets store them), :class:`AudioRows` (one VGGish example centred on each row's centre).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vidfeat.clips import ClipSpec, _crop_box, library_transform, resize_args
from vidfeat.decode import frame_times, output_size, probe, read_frames
from vidfeat.errors import CorruptVideoError, TooFewFramesError, VidfeatError
from vidfeat.grid import GridSample, RowGrid
from vidfeat.videolist import VideoList, VideoRecord, base_attrs

QUEUE_FRAMES = 32  # decoded frames in flight between the decoding thread and the rows


class _Stopped(Exception):
    """Raised in the decoding thread: the consumer gave up on the video."""


def row_frames(
    path: Any, frames: np.ndarray, rows: int, transform: Any = None, **read_kw: Any
) -> Iterator[tuple[int, np.ndarray]]:
    """Batches of ``rows`` rows of decoded frames: ``(r, array (R, k, H, W[, 3]))`` for
    ``frames`` ``(L, k)`` video frame ranks, in row order. Rows' smallest ranks must not
    decrease (true of every grid of rows). Frames no later row needs are dropped at once.
    ``transform`` (one frame → one frame) runs in the decoding thread, before the queue."""
    L = len(frames)
    wanted = np.unique(frames)
    q: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    stop = threading.Event()

    def put(item: tuple) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        raise _Stopped

    def decode() -> None:
        try:
            tf = transform or (lambda f: f)
            read_frames(path, wanted, on_frame=lambda r, f: put((r, tf(f))), keep=False, **read_kw)
            put(("done", None))
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            try:
                put(("error", exc))
            except _Stopped:
                pass

    th = threading.Thread(target=decode, name="vidfeat-rows", daemon=True)
    th.start()
    have: dict[int, np.ndarray] = {}
    try:
        r = 0
        while r < L:
            hi = min(r + rows, L)
            block = frames[r:hi]
            need = set(np.unique(block).tolist()) - have.keys()
            while need:
                key, value = q.get()
                if key == "error":
                    raise value
                if key == "done":
                    raise CorruptVideoError(path, f"decoding ended before frame {min(need)}")
                have[key] = value
                need.discard(key)
            yield r, np.stack([np.stack([have[j] for j in row]) for row in block.tolist()])
            r = hi
            if r < L:
                lo = int(frames[r].min())
                for j in [j for j in have if j < lo]:
                    del have[j]
    finally:
        stop.set()
        th.join(timeout=30.0)


def _centre_crop(frames: np.ndarray, size: int, *, channels_last: bool) -> np.ndarray:
    """``(..., H, W, C)`` (``channels_last``) or ``(..., H, W)`` → the centred ``size`` ×
    ``size`` crop, the box the test clips take (:func:`~vidfeat.clips._crop_box`)."""
    lead = frames.ndim - (3 if channels_last else 2)
    y0, x0 = _crop_box(*frames.shape[lead : lead + 2], size, None)
    box = (Ellipsis, slice(y0, y0 + size), slice(x0, x0 + size))
    return frames[(*box, slice(None))] if channels_last else frames[box]


@dataclass
class RGBRows:
    """RGB rows: each row's frames → one uint8 super-image ``[1, 3k, S, S]`` (channel
    ``3·j + c``), resized and centre-cropped as ``spec`` says (a run's test preprocessing)."""

    spec: ClipSpec
    modality = "rgb"

    def batches(self, path, info, sample: GridSample, rows: int) -> Iterator[tuple[int, dict]]:
        s = self.spec.size
        lib = library_transform(self.spec)  # the weights' own resize and crop, if a library's
        kw = resize_args(self.spec, info)
        for r, fr in row_frames(path, sample.decoded, rows, lib, **kw):
            h, w = fr.shape[2:4]
            if min(h, w) < s:
                raise VidfeatError(f"{path}: frames of {w}x{h} are smaller than the crop {s}")
            clip = fr if lib is not None else _centre_crop(fr, s, channels_last=True)
            R, k = clip.shape[:2]
            x = clip.transpose(0, 1, 4, 2, 3).reshape(R, 1, k * 3, s, s)
            yield r, {"x": torch.from_numpy(np.ascontiguousarray(x))}


@dataclass
class FlowRows:
    """Flow rows: for each frame f of a row, the field of the pair ``(f, min(f + 1, L - 1))``
    on the grid's frame axis, quantised (uint8 ``(R, k, 2, H, W)``, as a fields set stores
    it). ``crop``: also the network's input, the centred crop in [-1, 1] ``[R, 1, 2k, S, S]``;
    ``keep_fields``: hand the fields over as well (a fields set is written)."""

    method: Any  # a configured FlowMethod (set up in the worker)
    short_side: int
    bound: float
    crop: int | None = None
    keep_fields: bool = True
    threads: int = 1
    modality = "flow"

    def setup(self) -> None:
        from vidfeat.flow import configure_worker_threads

        configure_worker_threads(self.threads, torch=self.method.uses_torch)
        self.method.setup()

    def row_shapes(self, info: Any, sample: GridSample) -> dict:
        """The per-row shape of the fields, ``(k, 2, H, W)``, when they are kept."""
        if not self.keep_fields:
            return {}
        h, w = flow_frame_size(info, self.short_side)
        return {"fields": (sample.indices.shape[1], 2, h, w)}

    def batches(self, path, info, sample: GridSample, rows: int) -> Iterator[tuple[int, dict]]:
        from vidfeat.flow import flow_on_grid, to_network_input

        if sample.num_frames < 2:
            raise TooFewFramesError(
                path, f"needs at least 2 frames for optical flow, the video holds {info.num_frames}"
            )
        idx = sample.indices
        nxt = np.minimum(idx + 1, sample.num_frames - 1)
        # (L, 2k): the row's frames then their successors, as video frames
        pairs = np.concatenate([sample.video_frames(idx), sample.video_frames(nxt)], axis=1)
        k = idx.shape[1]
        gray = not self.method.color
        for r, fr in row_frames(path, pairs, rows, short_side=self.short_side, gray=gray):
            R = fr.shape[0]
            # every pair as a one-pair "segment": (R·k, 2, H, W[, 3])
            both = np.stack([fr[:, :k], fr[:, k:]], axis=2).reshape(R * k, 2, *fr.shape[2:])
            keys = np.stack([pairs[r : r + R, :k], pairs[r : r + R, k:]], axis=2).reshape(-1, 2)
            q = flow_on_grid(both, self.method, keys, bound=self.bound, threads=self.threads)
            q = q.reshape(R, k, 2, *q.shape[-2:])
            if self.crop is not None and min(q.shape[-2:]) < self.crop:
                raise VidfeatError(f"{path}: flow fields of {q.shape[-1]}x{q.shape[-2]} are "
                                   f"smaller than the network's crop {self.crop}")  # fmt: skip
            out: dict = {}
            if self.keep_fields:
                out["fields"] = torch.from_numpy(q)
            if self.crop is not None:
                x = to_network_input(_centre_crop(q, self.crop, channels_last=False))
                out["x"] = torch.from_numpy(x.reshape(R, 1, 2 * k, self.crop, self.crop))
            yield r, out


@dataclass
class AudioRows:
    """Audio rows: one 0.96 s log-mel example centred on each row's centre ``[R, 1, 1, 96,
    64]``; a video without a usable track gives silence and ``has_audio`` False."""

    modality = "audio"

    def batches(self, path, info, sample: GridSample, rows: int) -> Iterator[tuple[int, dict]]:
        from vidfeat.audio import examples_from_windows

        for r, windows in audio_rows(path, sample.centre, rows):
            ex = examples_from_windows(windows)[:, None, None]
            yield r, {"x": torch.from_numpy(np.ascontiguousarray(ex, dtype=np.float32))}


def audio_rows(path, centres: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(r, windows (R, 15600))``: the 16 kHz example windows centred on ``centres``
    (non-decreasing, seconds), ``rows`` at a time, zeros where a window leaves the track,
    from the track streamed in chunks (only the samples of pending windows are kept)."""
    from vidfeat.audio import EXAMPLE_SAMPLES, SAMPLE_RATE, window_starts
    from vidfeat.decode import iter_audio

    starts = window_starts(centres)
    L = len(starts)
    chunks = iter_audio(path, SAMPLE_RATE) or iter(())
    buf = np.zeros(0, dtype=np.float32)
    buf_at = 0  # sample number of buf[0]
    ended = False
    r = 0
    while r < L:
        hi = min(r + rows, L)
        need = int(starts[hi - 1]) + EXAMPLE_SAMPLES
        parts, have = [buf], buf_at + len(buf)
        while not ended and have < need:
            chunk = next(chunks, None)
            if chunk is None:
                ended = True
            else:
                parts.append(np.asarray(chunk, dtype=np.float32))
                have += len(chunk)
        if len(parts) > 1:  # one copy per batch, not one per chunk
            buf = np.concatenate(parts)
        out = np.zeros((hi - r, EXAMPLE_SAMPLES), dtype=np.float32)
        for t in range(r, hi):
            lo = int(starts[t])
            a, b = max(lo, buf_at), min(lo + EXAMPLE_SAMPLES, buf_at + len(buf))
            if a < b:
                out[t - r, a - lo : b - lo] = buf[a - buf_at : b - buf_at]
        yield r, out
        r = hi
        if r < L:
            drop = max(0, min(int(starts[r]), buf_at + len(buf)) - buf_at)
            buf, buf_at = buf[drop:], buf_at + drop


class RowStream(IterableDataset):
    """A video list on a grid of rows, as the items of the module docstring. Each DataLoader
    worker takes every ``num_workers``-th video."""

    def __init__(self, videos: VideoList, grid: RowGrid, maker: Any, rows: int) -> None:
        super().__init__()
        self.videos, self.grid, self.maker, self.rows = videos, grid, maker, int(rows)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        setup = getattr(self.maker, "setup", None)
        if setup is not None:
            setup()
        for i in range(start, len(self.videos.records), step):
            yield from self._video(i)

    def _video(self, i: int) -> Iterator[dict]:
        rec = self.videos.records[i]
        began = False
        try:
            info, sample, meta = self.begin(rec)
            yield {"index": i, "begin": meta}
            began = True
            for r, out in self.maker.batches(rec.path, info, sample, self.rows):
                yield {"index": i, "start": r, **out}
            yield {"index": i, "end": True}
        except VidfeatError as exc:
            yield {"index": i, "error": (type(exc).__name__, exc.format_message())}
        except Exception as exc:  # noqa: BLE001 - one bad video never ends the stream
            where = "after its first rows" if began else "before its first row"
            yield {"index": i, "error": (type(exc).__name__, f"{rec.path}: {exc} ({where})")}

    def begin(self, rec: VideoRecord) -> tuple[Any, GridSample, dict]:
        """The video's probe, its rows and the attrs stored with it."""
        info = probe(rec.path)
        times = frame_times(rec.path) if self.grid.fps is not None else None
        sample = self.grid.sample(info.num_frames, info.fps, times)
        attrs = base_attrs(rec, None, info, sample)  # the writer adds the set's class_index
        for k in ("segment_start", "segment_end", "frame_indices"):
            attrs.pop(k)  # datasets of their own: frame_indices, times
        attrs.update(grid_fps=sample.fps, grid_frames=sample.num_frames, num_rows=sample.T)
        attrs["padded_frames"] = int(sample.padded)
        if self.maker.modality == "audio":
            attrs["has_audio"] = bool(info.has_audio)
        meta = {"attrs": attrs, "frame_indices": sample.indices, "times": sample.times}
        shapes = getattr(self.maker, "row_shapes", None)
        if shapes is not None:
            meta["row_shapes"] = shapes(info, sample)
        return info, sample, meta


def flow_frame_size(info: Any, short_side: int) -> tuple[int, int]:
    """(H, W) of a video's flow fields at ``short_side``."""
    w, h = output_size(info.width, info.height, short_side=short_side)
    return h, w
