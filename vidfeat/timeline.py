"""The score timeline of a row set (snippets / windows grid), a panel of ``vidfeat show``.

A row set stores, per video, ``times`` (L, 3: start, end, centre in seconds) and ``scores``
(L, K softmax per row). The panel draws, against the row centre time, the top classes' scores
as lines and the scores of the leading classes as a heatmap (class × time); intervals from an
annotation file (ActivityNet / THUMOS JSON, :func:`load_intervals`) are shaded on the lines and
outlined on their class's heatmap row. Long videos (L up to 1e5 rows and beyond) draw in
bounded time: consecutive rows are max-pooled down to at most ``MAX_COLUMNS`` columns, so a
short peak still shows.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError

MAX_COLUMNS = 2000  # pooled columns drawn, whatever L
TOP_LINES = 5  # classes drawn as lines
HEATMAP_CLASSES = 16  # classes in the heatmap at most (annotated ones first)
MAX_LABELLED = 40  # above this many intervals their names are not written
PANEL_HEIGHT = 4.6  # inches

ROW_MODES = ("snippets", "windows")


def is_row_set(config: dict) -> bool:
    """A set whose videos have one row per grid position (the contract's ``grid`` key, mode
    snippets or windows), not T segments."""
    grid = config.get("grid")
    return isinstance(grid, dict) and grid.get("mode") in ROW_MODES


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    label: str


def load_intervals(path: str | Path, video_id: str) -> list[Interval]:
    """The annotated intervals of ``video_id`` in an ActivityNet / THUMOS JSON file
    (``database.<id>.annotations[*].segment`` and ``label``). ConfigError naming the file when
    it is not such a file or does not list the video (with ids it does list)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--annotations {path}: not a readable JSON file ({exc})") from exc
    db = data.get("database") if isinstance(data, dict) else None
    if not isinstance(db, dict):
        raise ConfigError(
            f'--annotations {path} has no "database" object: not an ActivityNet/THUMOS file'
        )
    if video_id not in db:
        ids = sorted(str(k) for k in db)
        close = difflib.get_close_matches(video_id, ids, n=3, cutoff=0.6)
        few = close + [i for i in ids if i not in close][: 5 - len(close)]
        raise ConfigError(
            f"video {video_id!r} is not in --annotations {path} ({len(ids)} videos; ids "
            f"present include {', '.join(few) or 'none'}): pass the file that annotates it"
        )
    entry = db[video_id]
    acts = entry.get("annotations", []) if isinstance(entry, dict) else None
    if not isinstance(acts, list):
        raise ConfigError(f"--annotations {path}: {video_id!r} has no list of annotations")
    return [_interval(a, path, video_id, i) for i, a in enumerate(acts)]


def _interval(act: Any, path: Path, video_id: str, i: int) -> Interval:
    seg = act.get("segment") if isinstance(act, dict) else None
    ok = isinstance(seg, list | tuple) and len(seg) == 2
    ok = ok and all(isinstance(v, int | float) and math.isfinite(v) for v in seg)
    if not ok or seg[0] > seg[1]:
        raise ConfigError(
            f"--annotations {path}: annotation {i} of {video_id!r} has segment {seg!r}, not "
            "[start, end] in seconds"
        )
    return Interval(float(seg[0]), float(seg[1]), str(act.get("label", "?")))


def check_rows(times: Any, scores: Any, classes: Any, rows: int) -> str | None:
    """Why a row set's ``times`` / ``scores`` cannot make a timeline, or None when they can."""
    if not isinstance(classes, list) or not classes:
        return "scores but no classes in set.json"
    if times is None:
        return "row scores but no times"
    times, scores = np.asarray(times), np.asarray(scores)
    if times.shape != (rows, 3) or times.dtype.kind not in "iuf" or not np.isfinite(times).all():
        return f"times {times.dtype} {times.shape}, not ({rows}, 3) seconds"
    if scores.shape != (rows, len(classes)) or scores.dtype.kind not in "iuf":
        return f"scores {scores.dtype} {scores.shape} for {rows} rows and {len(classes)} classes"
    return None


def pool_rows(x: np.ndarray, values: np.ndarray, columns: int = MAX_COLUMNS):
    """Rows ``x`` (L,) sorted, ``values`` (L, K) → at most ``columns`` groups of consecutive
    rows: their mean x, the max of each column's values, and the rows per group."""
    L = len(x)
    pool = max(1, math.ceil(L / columns))
    if pool == 1:
        return x, values, 1
    starts = np.arange(0, L, pool)
    counts = np.diff(np.append(starts, L))
    return np.add.reduceat(x, starts) / counts, np.maximum.reduceat(values, starts, axis=0), pool


def _edges(x: np.ndarray) -> np.ndarray:
    """Column edges around centres ``x``: the midpoints, and half a step past either end."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[2 * x[0] - mid[0]], mid, [2 * x[-1] - mid[-1]]])


def _shown_classes(peak: np.ndarray, classes: list[str], intervals: list[Interval]) -> list[int]:
    """The heatmap's classes: the annotated ones, then the highest peaks; in index order."""
    labels = dict.fromkeys(i.label for i in intervals)
    annotated = [classes.index(c) for c in labels if c in classes]
    ranked = [int(k) for k in np.argsort(-peak, kind="stable") if k not in annotated]
    return sorted((annotated + ranked)[: max(HEATMAP_CLASSES, len(annotated))])


def timeline_panel(
    sf,
    h: float,
    name: str,
    times: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    intervals: list[Interval] | None,
    duration: float,
) -> str:
    """Draw the timeline of one row set into the subfigure ``sf`` (``h`` inches high); the
    panel's note for the sheet's summary."""
    order = np.argsort(times[:, 2], kind="stable")
    x, pooled, pool = pool_rows(times[order, 2], np.asarray(scores, np.float32)[order])
    peak = pooled.max(axis=0)
    top = [int(k) for k in np.argsort(-peak, kind="stable")[:TOP_LINES]]
    title = (
        f"score timeline {name}: {len(times)} rows"
        + (f", max over every {pool} rows" if pool > 1 else "")
        + (f"; {len(intervals)} annotated intervals shaded" if intervals is not None else "")
    )
    sf.suptitle(title, fontsize=9, x=0.01, ha="left", va="top", y=1.0 - 0.04 / h)
    lines, heat = sf.subplots(
        2,
        1,
        sharex=True,
        gridspec_kw={"top": 1 - 0.35 / h, "bottom": 0.45 / h, "left": 0.09, "right": 0.86,
                     "hspace": 0.08, "height_ratios": [1, 1.2]},
    )  # fmt: skip
    colour = {k: f"C{i}" for i, k in enumerate(top)}
    for k in top:
        lines.plot(x, pooled[:, k], lw=1.0, color=colour[k], label=classes[k])
    lines.set_ylim(0, 1.05)
    lines.set_ylabel("score", fontsize=8)
    lines.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    shown = _shown_classes(peak, classes, intervals or [])
    heat.pcolormesh(
        _edges(x), np.arange(len(shown) + 1) - 0.5, pooled[:, shown].T, cmap="viridis",
        vmin=0, vmax=1, shading="flat", rasterized=True,
    )  # fmt: skip
    heat.set_yticks(range(len(shown)), [classes[k] for k in shown], fontsize=6)
    heat.set_ylim(len(shown) - 0.5, -0.5)
    if intervals:
        _draw_intervals(lines, heat, intervals, classes, shown, colour)
    heat.set_xlim(0, max(duration, float(times[:, 1].max())))
    heat.set_xlabel("row centre (s)", fontsize=8)
    for ax in (lines, heat):
        ax.tick_params(labelsize=7)
    return f"timeline {name} ({len(times)} rows" + (f", pooled by {pool})" if pool > 1 else ")")


def _draw_intervals(lines, heat, intervals, classes, shown, colour) -> None:
    """Shade each interval on the lines (its class's line colour, grey when that class has no
    line) and outline it on its class's heatmap row; names written when there are few."""
    spans = [(i.start, i.end - i.start) for i in intervals]
    faces = [
        colour.get(classes.index(i.label), "0.5") if i.label in classes else "0.5"
        for i in intervals
    ]
    lines.broken_barh(spans, (0, 1.05), facecolors=faces, alpha=0.18, lw=0)
    for row, k in enumerate(shown):
        mine = [s for s, i in zip(spans, intervals, strict=True) if i.label == classes[k]]
        if mine:
            heat.broken_barh(mine, (row - 0.45, 0.9), facecolors="none", edgecolors="white", lw=1)
    if len(intervals) <= MAX_LABELLED:
        for i in intervals:
            lines.text((i.start + i.end) / 2, 1.02, i.label, fontsize=5, ha="center", va="top",
                       clip_on=True)  # fmt: skip
