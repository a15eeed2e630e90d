"""Flow fields: optical flow on the grid's frame pairs, stored as uint8 ``(T, N, 2, H, W)``.

:class:`FlowFieldsExtractor` is the per-video task of ``vidfeat extract flow`` (and the first
step of flow features with a network: :func:`ensure_flow_fields`). :func:`fields_extractor_for`
rebuilds the extractor of an existing fields set from its set.json, so resuming never mixes
configurations; :func:`prepare_training_fields` fills the fields a flow network trains on.

Imports decode, grid and flow, and the extraction base; the engines never import this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from vidfeat.decode import probe, read_frames
from vidfeat.errors import ConfigError, TooFewFramesError
from vidfeat.extract.job import RunOptions
from vidfeat.extract.worker import Extracted
from vidfeat.grid import SegmentGrid
from vidfeat.report import Report
from vidfeat.videolist import VideoList, VideoRecord, base_attrs


class FlowFieldsExtractor:
    """Optical flow on the grid's pairs, stored as uint8 fields ``(T, N, 2, H, W)``.

    Only the T×N consecutive pairs of the test-mode grid are computed (never every pair of the
    video). Frames are decoded as grayscale, resized by FFmpeg to ``short_side``.
    """

    modality = "flow-fields"

    def __init__(
        self, method, *, segments: int, frames: int, short_side: int, bound: float
    ) -> None:
        if short_side < 16:
            raise ConfigError(f"--short-side must be >= 16 (got {short_side})")
        if not bound > 0:
            raise ConfigError(f"--bound must be > 0 (got {bound})")
        self.method = method
        self.grid = SegmentGrid(segments, frames, "test", pairs=True)
        self.short_side = short_side
        self.bound = float(bound)

    def config(self) -> dict:
        return {
            "modality": self.modality,
            "method": self.method.name,
            "method_params": self.method.config(),
            **self.grid.config(),
            "short_side": self.short_side,
            "quantization": {"dtype": "uint8", "bound": self.bound, "zero": 127.5},
            "dtype": "uint8",
            "feature_shape": [self.grid.T, self.grid.N, 2, -1, -1],
        }

    def setup(self) -> None:
        from vidfeat.flow import configure_worker_threads

        configure_worker_threads(1)

    def extract(self, record: VideoRecord, class_index: int | None) -> Extracted:
        from vidfeat.flow import flow_on_grid, quantize

        info = probe(record.path)
        if info.num_frames < 2:
            # the grid would pair the only frame with itself: zero flow that looks like a still
            # scene, so refuse instead of storing it
            raise TooFewFramesError(
                record.path,
                f"needs at least 2 frames for optical flow, the video holds {info.num_frames}",
            )
        grid = self.grid.sample(info.num_frames, info.fps)
        gray = read_frames(
            record.path, grid.indices.reshape(-1), short_side=self.short_side, gray=True
        )
        gray = gray.reshape(grid.T, self.grid.span, *gray.shape[1:])
        # pairs repeated by the grid of a short video are computed once
        fields = quantize(flow_on_grid(gray, self.method, indices=grid.indices), self.bound)
        return Extracted(fields, base_attrs(record, class_index, info, grid))


def fields_extractor_for(
    store_root: str | Path,
    fields_set: str,
    method: str,
    params: dict,
    segments: int,
    frames: int,
    short_side: int,
    bound: float,
) -> FlowFieldsExtractor:
    """The extractor that fills ``fields_set``: rebuilt from its set.json when it exists, so
    resuming never mixes configurations; otherwise from the given options."""
    from vidfeat.flow import make_method
    from vidfeat.store import FeatureStore

    store = FeatureStore(store_root)
    if fields_set in store.sets():
        c = store.open_set(fields_set).config
        if c.get("method") != method:
            raise ConfigError(f"set {fields_set!r} holds {c.get('method')} flow, not {method}")
        return FlowFieldsExtractor(
            make_method(method, **c["method_params"]),
            segments=int(c["T"]),
            frames=int(c["N"]),
            short_side=int(c["short_side"]),
            bound=float(c["quantization"]["bound"]),
        )
    return FlowFieldsExtractor(
        make_method(method, **params),
        segments=segments,
        frames=frames,
        short_side=short_side,
        bound=bound,
    )


def ensure_flow_fields(
    videos: VideoList,
    store_root: str | Path,
    fields_set: str,
    extractor: FlowFieldsExtractor,
    opts: RunOptions,
    echo: Callable[[str], Any] = print,
) -> Report:
    """Compute the fields of the videos not yet in ``fields_set`` (resumable). The caller's
    ``--retry-failed``, ``--limit`` and ``--overwrite`` apply to its own set, not to this one."""
    from vidfeat.extract import run_extraction

    opts = replace(opts, retry_failed=False, limit=None, overwrite=False)
    rep = run_extraction(videos, extractor, store_root, fields_set, opts, echo=echo)
    if rep.done:
        echo(f"flow fields: {rep.summary()}")
    return rep


def prepare_training_fields(
    lists: list[VideoList],
    store_root: str | Path,
    fields_set: str,
    extractor: FlowFieldsExtractor,
    *,
    workers: int,
    progress: bool,
    echo: Callable[[str], Any] = print,
) -> None:
    """``vidfeat train flow``: the fields of every training and validation video, computed
    into ``fields_set`` where missing, before training starts."""
    for videos in lists:
        ensure_flow_fields(
            videos,
            store_root,
            fields_set,
            extractor,
            RunOptions(workers=max(1, workers), progress=progress),
            echo=echo,
        )
