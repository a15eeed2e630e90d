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

**Untrimmed video** has two more grids, whose row count L grows with the video
(:class:`RowGrid`): ``snippets`` (N frames centred every S frames: centres ``S//2 + kS`` while
below L, frames ``centre - N//2 … centre + N - N//2 - 1`` clamped to ``[0, L-1]``; ActivityNet's
TSN features, mmaction2's ``UntrimmedSampleFrames``) and ``windows`` (W frames starting at
``0, S, 2S, …``, complete windows only: ``⌊(L−W)/S⌋ + 1`` rows; a video shorter than W gives
one window padded with its last frame). A video too short for any snippet centre (L ≤ S//2)
gets one row centred on its middle frame, where mmaction2 gives none: a video never has no row.

Their frames are on the grid's frame axis: the video's own frames, or (``fps=F``) frames taken
at F per second, the decoded frame nearest each ``k/F`` (:func:`frames_at_fps`). One time
convention for every grid of rows: frame k spans ``[k/fps, (k+1)/fps)``; a row starts at its
first frame's start, ends at its last frame's end, and its centre is the midpoint, so a window
starting at frame s has centre ``(s + W/2)/fps``. Flow computes, for each of a row's frames f,
the pair ``(f, min(f + 1, L - 1))``: the row keeps the frame indices of every other modality.
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
    # grids of rows: the video frame (source rank) of each frame of the grid's axis when frames
    # are taken at another rate (``--fps``), ``(num_frames,)``, else None (the video's own)
    source: np.ndarray | None = None
    padded: int = 0

    @property
    def T(self) -> int:  # noqa: N802 - T is the paper's name
        return int(self.indices.shape[0])

    @property
    def decoded(self) -> np.ndarray:
        """The video frames to decode for ``indices`` (source ranks), ``(T, span)``."""
        return self.indices if self.source is None else self.source[self.indices]

    def video_frames(self, indices: np.ndarray) -> np.ndarray:
        """The video frames (source ranks) of frame ``indices`` of the grid's axis."""
        return indices if self.source is None else self.source[indices]

    @property
    def times(self) -> np.ndarray:
        """``(T, 3)`` float64: start, end, centre of each row (seconds)."""
        return np.stack([self.start, self.end, self.centre], axis=1)


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


# --------------------------------------------------------------------------- grids of rows

ROW_GRIDS = ("snippets", "windows")


@dataclass(frozen=True)
class RowGrid:
    """A grid of rows for untrimmed video (see the module docstring): ``snippets`` of ``frames``
    frames centred every ``stride`` frames, or ``windows`` of ``window`` frames every ``stride``
    frames; ``fps``: take the frames at this rate (None: the video's own)."""

    mode: str
    stride: int
    frames: int = 1  # snippets: N frames per row
    window: int = 0  # windows: W frames per row
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ROW_GRIDS:
            raise ConfigError(f"--grid must be snippets or windows here (got {self.mode!r})")
        if self.stride < 1:
            raise ConfigError(f"--stride must be >= 1 frame (got {self.stride})")
        if self.mode == "snippets" and self.frames < 1:
            raise ConfigError(f"frames per snippet must be >= 1 (got {self.frames})")
        if self.mode == "windows" and self.window < 1:
            raise ConfigError(f"--window must be >= 1 frame (got {self.window})")
        if self.fps is not None and not 0 < self.fps <= 1000:
            raise ConfigError(f"--fps must be in (0, 1000] frames per second (got {self.fps})")

    @property
    def span(self) -> int:
        """Frames per row."""
        return self.frames if self.mode == "snippets" else self.window

    def config(self) -> dict:
        """What set.json records (``grid``): a set never mixes grids."""
        out: dict = {"mode": self.mode, "stride": self.stride}
        out.update({"frames": self.frames} if self.mode == "snippets" else {"window": self.window})
        out["fps"] = self.fps
        return out

    def rows(self, L: int) -> tuple[np.ndarray, int]:
        """``(rows, span)`` frame indices of a video of ``L`` frames, and the frames of padding."""
        if L < 1:
            raise ConfigError("a video with no frames has no rows")
        S, span = self.stride, self.span
        if self.mode == "snippets":
            centres = np.arange(S // 2, L, S, dtype=np.int64)
            if centres.size == 0:
                centres = np.array([(L - 1) // 2], dtype=np.int64)
            offsets = np.arange(-(span // 2), span - span // 2, dtype=np.int64)
            return np.clip(centres[:, None] + offsets[None, :], 0, L - 1), 0
        if L < span:  # one window, padded with the last frame
            return np.minimum(np.arange(span, dtype=np.int64), L - 1)[None, :], span - L
        starts = np.arange(0, L - span + 1, S, dtype=np.int64)
        return starts[:, None] + np.arange(span, dtype=np.int64)[None, :], 0

    def sample(self, num_frames: int, fps: float, times: np.ndarray | None = None) -> GridSample:
        """The rows of a video of ``num_frames`` frames at ``fps``. With the grid's ``fps`` the
        frames are those at that rate, the decoded frame nearest each ``k/F`` by ``times``
        (each frame's presentation time in seconds from the first; None: ``j/fps``)."""
        if num_frames < 1:
            raise ConfigError("a video with no frames has no rows")
        if not fps > 0:
            raise ConfigError(f"fps must be > 0 to place rows in time (got {fps})")
        source = None
        rate = float(fps)
        L = int(num_frames)
        if self.fps is not None:
            source = frames_at_fps(num_frames, fps, self.fps, times)
            rate, L = float(self.fps), int(source.size)
        idx, padded = self.rows(L)
        first = idx.min(axis=1).astype(np.float64)
        last = idx.max(axis=1).astype(np.float64)
        start, end = first / rate, (last + 1) / rate
        return GridSample(
            indices=idx,
            start=start,
            end=end,
            # from frame numbers, so rows of other spans around one centre agree exactly
            centre=(first + last + 1) / (2.0 * rate),
            num_frames=L,
            fps=rate,
            source=source,
            padded=padded,
        )


def frames_at_fps(
    num_frames: int, fps: float, rate: float, times: np.ndarray | None = None
) -> np.ndarray:
    """The video frames (ranks) taken at ``rate`` frames per second: for each ``k/rate`` below
    the video's duration, the frame whose presentation time is nearest (the earlier on a tie).
    ``times``: each frame's presentation time in seconds from the first (None: ``j/fps``).
    The duration is the last frame's time plus one frame (``1/fps``)."""
    n = int(num_frames)
    t = np.arange(n, dtype=np.float64) / fps if times is None else np.asarray(times, np.float64)
    if t.shape != (n,):
        raise ConfigError(f"{t.size} frame times for {n} frames")
    duration = float(t[-1]) + 1.0 / fps
    count = max(1, int(np.ceil(duration * rate - 1e-9)))
    want = np.arange(count, dtype=np.float64) / rate
    hi = np.clip(np.searchsorted(t, want, side="left"), 0, n - 1)
    lo = np.clip(hi - 1, 0, n - 1)
    return np.where(np.abs(t[lo] - want) <= np.abs(t[hi] - want), lo, hi).astype(np.int64)
