"""Extractors: what turns one video into one stored record. The runner is modality-agnostic.

An extractor is built in the parent process, pickled to the workers, ``setup()`` once there,
and then called once per video. It raises a :class:`~vidfeat.errors.DecodeError` (or any
exception) for a bad video; the runner records it in the failures file and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from vidfeat.decode import probe, read_frames
from vidfeat.errors import TooFewFramesError
from vidfeat.grid import SegmentGrid
from vidfeat.videolist import VideoRecord


@dataclass
class Extracted:
    """One video's record: ``features`` (the dataset every consumer reads), attrs, extras."""

    features: np.ndarray
    attrs: dict
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # counted in the run's summary


class Extractor(Protocol):
    modality: str

    def config(self) -> dict:
        """Everything that determines the stored arrays (goes into the set's set.json)."""
        ...

    def setup(self) -> None:
        """Per-process initialisation (thread counts, models)."""
        ...

    def extract(self, record: VideoRecord, class_index: int | None) -> Extracted: ...


def base_attrs(record: VideoRecord, class_index: int | None, info, grid) -> dict:
    """Attrs every stored video carries (see DESIGN.md, store format)."""
    attrs = {
        "video_id": record.video_id,
        "source_path": str(record.path),
        "source_size": info.size_bytes,
        "source_mtime_ns": info.mtime_ns,
        "fps": info.fps,
        "num_frames": info.num_frames,
        "duration": info.duration,
        "has_audio": info.has_audio,
        "segment_start": grid.start,
        "segment_end": grid.end,
        "frame_indices": grid.indices,
    }
    if record.label is not None:
        attrs["label"] = record.label
    if class_index is not None:
        attrs["class_index"] = int(class_index)
    return attrs


class FlowFieldsExtractor:
    """Optical flow on the grid's pairs, stored as uint8 fields ``(T, N, 2, H, W)``.

    Only the T×N consecutive pairs of the test-mode grid are computed (never every pair of the
    video). Frames are decoded as grayscale, resized by FFmpeg to ``short_side``.
    """

    modality = "flow-fields"

    def __init__(
        self, method, *, segments: int, frames: int, short_side: int, bound: float
    ) -> None:
        from vidfeat.errors import ConfigError

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
