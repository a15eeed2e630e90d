"""The segment grid: the one time axis every modality of a video is computed on.

A video of L frames at ``fps`` is cut into T segments of equal duration. Segment t covers frames
``[t·L/T, (t+1)·L/T)`` and gets a run of ``span`` consecutive frame indices inside it: N frames for
RGB super-images, N+1 frames (N pairs) for optical flow. In ``test`` mode the run is centred in
the segment; in ``train`` mode it starts at a random offset inside the segment (seeded).

Short videos. When a segment holds fewer than ``span`` frames the run is shifted left so it never
goes past the last frame (it may then reach into the previous segment). When the whole video has
fewer than ``span`` frames, the indices past the end **repeat the last frame** (clamp) rather than
wrapping to the start: a wrap would fake a jump in motion that flow would then "see". Either way
every grid yields exactly T×span indices, and every index is in ``[0, L-1]``.

Times are in seconds, computed from frame indices and fps: segment t spans
``[t·L/T/fps, (t+1)·L/T/fps)``; audio uses the segment centres.

``reference`` mode reproduces the authors' test reader (PaddleCV video ``video_loader``), so an
imported authors' network sees exactly their frames: segments of ``⌊L/T⌋`` frames, segment t
from ``t·⌊L/T⌋``, its run at offset ``(⌊L/T⌋ − span) // 2`` (at the segment start when the
segment is shorter than the run; frame t when ``⌊L/T⌋ = 0``), indices wrapping modulo L.
The ``⌊t·L/T⌋`` boundaries of the other modes spread the remainder over the video instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from vidfeat.errors import ConfigError

Mode = Literal["train", "test", "reference"]


@dataclass(frozen=True)
class GridSample:
    """The grid of one video.

    ``indices``: int64 ``(T, span)`` frame indices; ``start``/``end``/``centre``: float64 ``(T,)``
    segment times in seconds.
    """

    indices: np.ndarray
    start: np.ndarray
    end: np.ndarray
    centre: np.ndarray
    num_frames: int
    fps: float

    @property
    def T(self) -> int:  # noqa: N802 - T is the paper's name
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class SegmentGrid:
    """T segments × N frames per segment, in ``train`` (random offsets) or ``test`` (centred) mode.

    ``pairs=True`` asks for N+1 frames per segment (N consecutive pairs, for optical flow).
    """

    T: int  # segments per video; the paper trains StNet with 7 and tests with 25
    N: int  # frames per segment (a super-image stacks N frames: 3N channels)
    mode: Mode = "test"
    pairs: bool = False

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ConfigError(f"--segments must be >= 1 (got {self.T})")
        if self.N < 1:
            raise ConfigError(f"--frames must be >= 1 (got {self.N})")
        if self.mode not in ("train", "test", "reference"):
            raise ConfigError(
                f"grid mode must be 'train', 'test' or 'reference' (got {self.mode!r})"
            )

    @property
    def span(self) -> int:
        """Consecutive frames taken per segment."""
        return self.N + 1 if self.pairs else self.N

    def config(self) -> dict:
        return {"T": self.T, "N": self.N, "grid_mode": self.mode, "pairs": self.pairs}

    def sample(
        self, num_frames: int, fps: float, rng: np.random.Generator | int | None = None
    ) -> GridSample:
        """Frame indices and segment times for a video of ``num_frames`` frames at ``fps``.

        ``rng`` is used only in train mode (a Generator or a seed; None = fresh entropy).
        """
        if num_frames < 1:
            raise ConfigError("a video with no frames has no segment grid")
        if not fps > 0:
            raise ConfigError(f"fps must be > 0 to place segments in time (got {fps})")
        L, T, span = int(num_frames), self.T, self.span
        if self.mode == "reference":
            return self._reference(L, fps)
        bounds = np.arange(T + 1, dtype=np.float64) * L / T
        seg_lo = np.floor(bounds[:-1]).astype(np.int64)
        seg_hi = np.maximum(np.floor(bounds[1:]).astype(np.int64), seg_lo + 1)
        room = seg_hi - seg_lo - span  # spare frames inside each segment (may be negative)
        if self.mode == "test":
            offset = np.maximum(room, 0) // 2
        else:
            gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
            offset = gen.integers(0, np.maximum(room, 0) + 1)
        first = seg_lo + offset
        # never run past the last frame; a video shorter than span repeats its last frame
        first = np.clip(first, 0, max(L - span, 0))
        idx = first[:, None] + np.arange(span, dtype=np.int64)[None, :]
        idx = np.minimum(idx, L - 1)
        start = bounds[:-1] / fps
        end = bounds[1:] / fps
        return GridSample(
            indices=idx,
            start=start,
            end=end,
            centre=(start + end) / 2.0,
            num_frames=L,
            fps=float(fps),
        )

    def _reference(self, L: int, fps: float) -> GridSample:
        """The authors' test-time frames (see the module docstring)."""
        T, span = self.T, self.span
        avg = L // T
        t = np.arange(T, dtype=np.int64)
        if avg >= span:
            first = (avg - span) // 2 + t * avg
        elif avg >= 1:
            first = t * avg
        else:
            first = t
        idx = (first[:, None] + np.arange(span, dtype=np.int64)[None, :]) % L
        lo = (t * max(avg, 1)).astype(np.float64)
        start, end = lo / fps, (lo + max(avg, 1)) / fps
        return GridSample(
            indices=idx, start=start, end=end, centre=(start + end) / 2.0, num_frames=L,
            fps=float(fps),
        )  # fmt: skip
