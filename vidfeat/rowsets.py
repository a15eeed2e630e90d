"""Several row sets of a store read together, row for row: the input of
:mod:`vidfeat.layouts` (``vidfeat store export --layout``). Lives here: :class:`RowSets`,
:class:`RowVideo`, :func:`row_grid`. Imports numpy and the public names of
:mod:`vidfeat.store`.

A row set is an untrimmed set: set.json ``grid`` of mode ``snippets`` (N frames centred every S)
or ``windows`` (W frames every S), ``feature_shape`` ``[-1, D]``, and per video ``features``
``(L, D)``, ``times`` ``(L, 3)`` (start, end, centre in seconds) and ``frame_indices``
``(L, span)``, L >= 1. Sets go together only when they share the grid row for row: the same
set.json ``grid`` but for the frames per snippet (else :class:`~vidfeat.errors.ConfigError`
naming the set and the keys that differ) and, per video, the same L and the same row centres
(to a microsecond; to half the longer snippet between snippets of other N, whose centres move
apart where a snippet is clamped at the video's end), else that video is refused with a
ValueError naming the set and what differs. Snippets of another N share a grid when their
centres agree: ActivityNet's two-stream features take RGB snippets of 1 frame and flow
snippets of 5 pairs around the same centres. The sets are opened
read-only: reading them writes nothing into the store.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.store import FeatureSet, FeatureStore

__all__ = ["ROW_MODES", "RowSets", "RowVideo", "row_grid"]

ROW_MODES = ("snippets", "windows")
_SPAN_KEY = {"snippets": "frames", "windows": "window"}  # the grid key of a row's span


@dataclass
class RowVideo:
    """One video as every set agrees on it: its id, rows, times, attrs (the first set's)."""

    vid: str
    rows: int
    times: np.ndarray
    attrs: dict
    written_at: float


def row_grid(fs: FeatureSet) -> dict:
    """The set.json ``grid`` of row set ``fs``; ConfigError for a set that is none (a trimmed
    set of T segments, a grid without stride or span)."""
    grid = fs.config.get("grid")
    if not isinstance(grid, dict) or grid.get("mode") not in ROW_MODES:
        raise ConfigError(
            f"set {fs.name!r} holds no rows of an untrimmed grid (its set.json has no grid of "
            f"mode {' or '.join(ROW_MODES)}: a trimmed set of T segments); --layout exports "
            "row sets: export this one with --format"
        )
    stride, span = grid.get("stride"), grid.get(_SPAN_KEY[grid["mode"]])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (stride, span)):
        raise ConfigError(f"set {fs.name!r}: its grid {json.dumps(grid)} has no stride and span")
    return grid


def _dim(fs: FeatureSet) -> int:
    shape = fs.config.get("feature_shape")
    if not (isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int)):
        raise ConfigError(
            f"set {fs.name!r} holds {shape} arrays per video, not (L, D) rows (flow fields?); "
            "--layout exports (L, D) feature sets"
        )
    return int(shape[1])


class RowSets:
    """Row sets ``names`` of ``store``, opened read-only (closed with ``stack``), checked to
    share one grid; ``dims``: each set's D, ``stride`` and ``span``: the grid's S and N or W."""

    def __init__(self, store: FeatureStore, names: Sequence[str], stack: contextlib.ExitStack):
        self.names = list(names)
        self.sets = [stack.enter_context(store.open_set(n, read_only=True)) for n in names]
        grids = [row_grid(fs) for fs in self.sets]
        for name, g in zip(self.names[1:], grids[1:], strict=True):
            free = {"frames"} if g["mode"] == "snippets" == grids[0]["mode"] else set()
            keys = (set(g) | set(grids[0])) - free
            if any(g.get(k) != grids[0].get(k) for k in keys):
                diff = sorted(k for k in keys if g.get(k) != grids[0].get(k))
                what = ", ".join(f"{k} {g.get(k)!r} vs {grids[0].get(k)!r}" for k in diff)
                raise ConfigError(
                    f"set {name!r} is on another grid than set {self.names[0]!r} ({what}); "
                    f"--set {','.join(self.names)} concatenates the sets row for row, so they "
                    "must share one grid: extract them with the same grid options"
                )
        self.grid = grids[0]
        self.dims = [_dim(fs) for fs in self.sets]

    @property
    def stride(self) -> int:
        return int(self.grid["stride"])

    @property
    def span(self) -> int:
        return int(self.grid[_SPAN_KEY[self.grid["mode"]]])

    def _tolerance(self, attrs: dict) -> float:
        """How far (seconds) the centres of one row may differ between the sets: by half the
        longest snippet, where a snippet clamped at the video's end has moved its centre
        (rows of 1 and 5 frames around frame L-1); 1 µs when the spans are equal."""
        spans = {int(fs.config["grid"].get(_SPAN_KEY[self.grid["mode"]], 1)) for fs in self.sets}
        fps = attrs.get("grid_fps") or self.grid.get("fps") or attrs.get("fps")
        if len(spans) == 1 or not isinstance(fps, int | float) or fps <= 0:
            return 1e-6
        return max(spans) / 2.0 / float(fps) + 1e-6

    def ids(self, video_ids: Sequence[str] | None, missing: list[str]) -> list[str]:
        """The ids to export: ``video_ids`` (those no set holds are appended to ``missing``)
        or every id of any set, sorted (an id absent from some sets is reported by
        :meth:`video`, not dropped)."""
        if video_ids is None:
            return sorted(set().union(*(fs.ids() for fs in self.sets)))
        ids = list(dict.fromkeys(video_ids))
        missing += [v for v in ids if not any(v in fs for fs in self.sets)]
        return [v for v in ids if any(v in fs for fs in self.sets)]

    def video(self, vid: str) -> RowVideo:
        """``vid`` as all sets agree on it; ValueError saying which set differs and how."""
        absent = [n for n, fs in zip(self.names, self.sets, strict=True) if vid not in fs]
        if absent:
            have = [n for n in self.names if n not in absent]
            raise ValueError(
                f"not in set {', '.join(map(repr, absent))} (it is in {', '.join(map(repr, have))})"
                "; extract it there too, or export the sets without it (--videos)"
            )
        first: tuple[str, np.ndarray, np.ndarray] | None = None
        attrs = [fs.attrs(vid) for fs in self.sets]
        for name, fs in zip(self.names, self.sets, strict=True):
            times, idx = _rows_of(fs, vid)
            if first is None:
                first = (name, times, idx)
            else:
                _same_rows(first, (name, times, idx), self._tolerance(attrs[0]))
        assert first is not None
        # the newest copy among the sets: a file older than it is stale
        stamps = [float(w) for a in attrs if isinstance(w := a.get("written_at"), int | float)]
        return RowVideo(vid, first[1].shape[0], first[1], attrs[0], max(stamps, default=0.0))

    def features(self, v: RowVideo) -> list[np.ndarray]:
        """Each set's ``(L, D)`` rows of ``v`` as float32; ValueError when one is not."""
        out = []
        for name, fs, dim in zip(self.names, self.sets, self.dims, strict=True):
            arr = fs.features(v.vid)
            if arr.shape != (v.rows, dim):
                raise ValueError(
                    f"set {name!r} holds features of shape {arr.shape}, its times say "
                    f"({v.rows}, {dim}); run `vidfeat store verify`"
                )
            if arr.dtype.kind != "f":
                raise ValueError(f"set {name!r} holds {arr.dtype} features, not real numbers")
            f32 = arr.astype(np.float32)
            if not np.array_equal(np.isfinite(f32), np.isfinite(arr)):
                raise ValueError(f"set {name!r}: float64 features beyond the float32 range")
            out.append(f32)
        return out


def _rows_of(fs: FeatureSet, vid: str) -> tuple[np.ndarray, np.ndarray]:
    times, idx = fs.get_extra(vid, "times"), fs.get_extra(vid, "frame_indices")
    if times is None or idx is None:
        raise ValueError(f"set {fs.name!r} stores no times/frame_indices for it: no grid rows")
    times, idx = np.asarray(times), np.asarray(idx)
    if (
        times.ndim != 2
        or times.shape[1] != 3
        or times.shape[0] < 1
        or idx.shape[:1] != times.shape[:1]
    ):
        raise ValueError(
            f"set {fs.name!r}: times {times.shape} and frame_indices {idx.shape} are not "
            "(L, 3) and (L, span) with L >= 1"
        )
    return times, idx


def _same_rows(
    a: tuple[str, np.ndarray, np.ndarray], b: tuple[str, np.ndarray, np.ndarray], tol: float
) -> None:
    (na, ta, _), (nb, tb, _) = a, b
    if ta.shape[0] != tb.shape[0]:
        raise ValueError(
            f"set {nb!r} has {tb.shape[0]} rows, set {na!r} {ta.shape[0]}: the sets do not share "
            "its rows (extracted with other options or from another file?)"
        )
    for what, x, y in (("row centres", ta[:, 2:], tb[:, 2:]),):
        if x.shape != y.shape or not np.allclose(x, y, rtol=0, atol=tol):
            bad = np.flatnonzero(np.any((np.abs(x - y) > tol).reshape(x.shape[0], -1), axis=1))
            row = f" (first at row {bad[0]})" if x.shape == y.shape and bad.size else ""
            raise ValueError(
                f"{what} of set {nb!r} differ from set {na!r}{row}: the sets do not share its rows"
            )
