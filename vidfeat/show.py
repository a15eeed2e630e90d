"""``vidfeat show``: a contact sheet of what vidfeat computed for one video, as one PNG.

Panels, top to bottom (each drawn only when the store has what it needs):

* ``frames`` — one thumbnail per grid segment (at most 12, picked evenly), decoded from the
  video file at the stored ``frame_indices`` (the middle frame of each segment's run), with the
  segment times as captions. The grid is that of the set with the most segments that stored
  frame indices, else a test-mode grid of the first set's T;
* ``flow:<set>`` — per flow-fields set, the fields of a few segments (middle pair) as colour
  images in the Middlebury style: hue = direction, saturation = magnitude / the set's
  quantisation bound (white = still), with the colour key drawn once;
* ``audio`` — the log-mel of the whole track (the VGGish frontend of :mod:`vidfeat.audio`) with
  the T example windows (centred on the segment centres) drawn as rectangles; ``no-audio``
  instead (a plain "no audio track" panel) when the store says ``has_audio=false`` or the file
  has no track;
* ``norms`` — per ``(T, D)`` feature set, the L2 norm of each segment's feature against the
  segment centre time, one line per set;
* ``scores:<set>`` — per set with a ``scores`` extra and ``classes`` in its set.json, the top-5
  classes as horizontal bars;
* ``timeline:<set>`` — per row set (a snippets / windows grid: one row per grid position, with
  ``times`` and ``(L, K)`` ``scores``), the scores against the row centre time
  (:mod:`vidfeat.timeline`), with the intervals of ``--annotations`` shaded.

Row sets stand in for segments elsewhere too: their rows' ``times`` place the thumbnails, norms
and audio windows; panels of long videos pool or thin what they draw, so the time a sheet takes
is bounded whatever the number of rows.

Sets are discovered from the store; a set that holds the video but fits no panel is listed in
:attr:`SheetResult.skipped` with the reason. Figures are built on a bare ``Figure`` (Agg canvas,
no pyplot state) and written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError, StoreError
from vidfeat.outdir import atomic_write
from vidfeat.timeline import PANEL_HEIGHT, check_rows, is_row_set, load_intervals, timeline_panel

MAX_THUMBS = 12  # thumbnails in the frame strip
FLOW_SEGMENTS = 4  # segments shown per flow-fields set
TOP_K = 5
THUMB_SHORT_SIDE = 112
MAX_MEL_COLUMNS = 2000  # log-mel frames are max-pooled in time down to this many columns
FIG_WIDTH = 14.0  # inches, at 100 dpi
MAX_NORM_POINTS = 2000  # a long row set's norms are averaged over consecutive rows to this many
MAX_WINDOWS = 48  # audio example windows outlined at most (evenly picked)

__all__ = ["SheetResult", "contact_sheet", "flow_to_rgb"]


@dataclass
class SheetResult:
    """What :func:`contact_sheet` drew. ``panels`` in drawing order: ``frames``,
    ``flow:<set>``…, ``audio`` or ``no-audio``, ``norms``, ``scores:<set>``…"""

    path: Path
    video_id: str
    video_path: Path
    panels: list[str]
    segments: int  # T of the frame strip's grid
    thumbnails: list[int]  # the segments shown in the strip
    grid_from: str  # the set whose frame_indices the strip used, or "test-mode grid"
    has_audio: bool
    skipped: dict[str, str] = field(default_factory=dict)  # set -> why it has no panel
    notes: list[str] = field(default_factory=list)  # one short phrase per panel

    def summary(self) -> str:
        line = f"wrote {self.path} ({self.video_id}): {'; '.join(self.notes)}"
        if self.skipped:
            line += "; not drawn: " + ", ".join(f"{k} ({v})" for k, v in self.skipped.items())
        return line


# --------------------------------------------------------------------------- store side


@dataclass
class _Set:
    name: str
    config: dict
    attrs: dict
    features: np.ndarray
    scores: np.ndarray | None
    times: np.ndarray | None = None  # (L, 3) start, end, centre of a row set's rows

    @property
    def score_names(self) -> list[str] | None:
        """The names of the scores' columns (:func:`vidfeat.store.score_classes`)."""
        from vidfeat.store import score_classes

        return score_classes(self.config)


def _load_sets(store, video_id: str) -> list[_Set]:
    """Every set holding ``video_id``, its features, attrs and scores read once."""
    from vidfeat.store import FeatureStore

    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    names = store.sets()
    if not names:
        raise StoreError(f"no feature sets in store {store.root}; extract some first")
    found: list[_Set] = []
    ids: set[str] = set()
    for name in names:
        fs = store.open_set(name)
        try:
            if video_id in fs:
                arr, attrs = fs.get(video_id)
                s = _Set(name, fs.config, attrs, arr, fs.get_extra(video_id, "scores"))
                if is_row_set(fs.config):
                    s.times = fs.get_extra(video_id, "times")
                _check_set(s, f"video {video_id!r} in set {name!r} ({fs.shard_of(video_id).name})")
                found.append(s)
            else:
                ids.update(fs.ids())
        finally:
            fs.close()
    if not found:
        close = difflib.get_close_matches(video_id, sorted(ids), n=3, cutoff=0.6)
        few = close + [i for i in sorted(ids) if i not in close][: 5 - len(close)]
        raise StoreError(
            f"video {video_id!r} is in no set of store {store.root} (sets: {', '.join(names)}); "
            f"ids present include {', '.join(few) or 'none'} ({len(ids)} in all)"
        )
    return found


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _is_real(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float | np.floating) and np.isfinite(v))


def _check_set(s: _Set, where: str) -> None:
    """Refuse (StoreError naming the video and the attr) stored values the sheet uses that are
    not of their kind: a store written by someone else can hold anything."""
    a, c = s.attrs, s.config

    def bad(key: str, v: Any, kind: str) -> StoreError:
        shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
        return StoreError(
            f"{where}: {key} is {shown}, not {kind}; the store was not written by vidfeat or is "
            "damaged (run `vidfeat store verify`)"
        )

    for key in ("num_frames", "class_index"):
        if key in a and not (_is_int(a[key]) and 0 <= a[key] < 2**40):
            raise bad(f"attr {key!r}", a[key], "a non-negative integer")
    for key in ("label", "source_path"):
        if key in a and not isinstance(a[key], str):
            raise bad(f"attr {key!r}", a[key], "a string")
    if "has_audio" in a and not isinstance(a["has_audio"], bool | int | np.bool_ | np.integer):
        raise bad("attr 'has_audio'", a["has_audio"], "a boolean")
    for key in ("segment_start", "segment_end"):
        v = np.asarray(a.get(key, []))
        if v.dtype.kind not in "iuf" or v.ndim > 1 or not np.isfinite(v).all():
            raise bad(f"attr {key!r}", a[key], "a list of seconds")
    if "frame_indices" in a:
        v = np.asarray(a["frame_indices"])
        if v.dtype.kind not in "iu" or v.ndim not in (1, 2) or not v.size or (v < 0).any():
            raise bad("attr 'frame_indices'", a["frame_indices"], "frame numbers")
    for key in ("classes", "score_classes"):
        classes = c.get(key)
        if classes is not None and not (
            isinstance(classes, list) and all(isinstance(k, str) for k in classes)
        ):
            raise bad(f"set.json {key}", classes, "a list of class names")
    if "T" in c and c["T"] is not None and not (_is_int(c["T"]) and 0 < c["T"] < 2**20):
        raise bad("set.json T", c["T"], "a number of segments")
    if c.get("modality") == "flow-fields" or isinstance(c.get("quantization"), dict):
        q = c.get("quantization")
        bound = q.get("bound") if isinstance(q, dict) else None
        if c.get("modality") == "flow-fields" and s.features.ndim != 5:
            raise bad("features", f"{s.features.dtype} {s.features.shape}", "(T, N, 2, H, W)")
        if _is_fields(s) and not (_is_real(bound) and bound > 0):
            raise bad("set.json quantization.bound", bound, "a positive number")
    if s.features.ndim >= 1 and not s.features.shape[0]:
        raise bad("features", f"shape {s.features.shape}", "at least one segment")


def _is_fields(s: _Set) -> bool:
    return s.config.get("modality") == "flow-fields" or (
        s.features.ndim == 5 and isinstance(s.config.get("quantization"), dict)
    )


def _attr(sets: list[_Set], key: str) -> Any:
    for s in sets:
        if key in s.attrs:
            return s.attrs[key]
    return None


def _video_path(sets: list[_Set], video_id: str, videos, video_root) -> Path:
    """The file to decode: from ``videos`` (a list, when the file moved) or the stored path."""
    if videos is None:
        if video_root is not None:
            raise ConfigError("--video-root applies only with --videos (it resolves that list)")
        src = _attr(sets, "source_path")
        if src is None:
            raise ConfigError(
                f"the store records no source_path for {video_id!r}; pass --videos LIST"
            )
        path = Path(str(src))
        if not path.exists():
            raise ConfigError(
                f"the video file of {video_id!r} recorded in the store, {path}, is gone; "
                "pass --videos LIST naming where it is now"
            )
        return path
    from vidfeat.videolist import VideoList, load_list

    vl = videos if isinstance(videos, VideoList) else load_list(videos, video_root=video_root)
    rec = vl.by_id().get(video_id)
    if rec is None:
        raise ConfigError(f"video {video_id!r} is not in --videos {vl.source} ({len(vl)} videos)")
    return Path(rec.path)


def _segment_times(s: _Set, info) -> tuple[np.ndarray, np.ndarray]:
    """A set's stored segment start/end times, else (none stored, or not one per row of its
    features) those of a test-mode grid of its T."""
    T = int(s.features.shape[0])
    if _rows_ok(s):
        return np.asarray(s.times[:, 0], float), np.asarray(s.times[:, 1], float)
    start = np.asarray(s.attrs.get("segment_start", []), float).reshape(-1)
    end = np.asarray(s.attrs.get("segment_end", []), float).reshape(-1)
    if len(start) == len(end) == T:
        return start, end
    from vidfeat.grid import SegmentGrid

    g = SegmentGrid(T, 1, "test").sample(info.num_frames, info.fps)
    return g.start, g.end


def _rows_ok(s: _Set) -> bool:
    """A row set whose ``times`` are one finite (start, end, centre) per row."""
    t = s.times
    return (
        t is not None
        and t.shape == (s.features.shape[0], 3)
        and t.dtype.kind in "iuf"
        and bool(np.isfinite(t).all())
    )


def _strip_grid(sets: list[_Set], info) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(frame per segment, start, end, source) of the frame strip: the finest stored segment
    grid, else the rows of the row set with most rows (the frame at each row's centre, on the
    video's own frame axis), else a test-mode grid."""
    stored = [s for s in sets if "frame_indices" in s.attrs]
    rows = [s for s in sets if _rows_ok(s)]
    if rows and not stored:
        s = min(rows, key=lambda s: (-len(s.times), s.name))
        frame = np.floor(s.times[:, 2] * info.fps).astype(np.int64)
        start, end = _segment_times(s, info)
        return np.clip(frame, 0, max(info.num_frames - 1, 0)), start, end, s.name
    if stored:
        # the finest grid; among equals the first set by name
        s = min(stored, key=lambda s: (-np.shape(s.attrs["frame_indices"])[0], s.name))
        idx = np.asarray(s.attrs["frame_indices"], dtype=np.int64)
        idx = idx[:, None] if idx.ndim == 1 else idx
        start, end = _segment_times(s, info)
        return idx[:, (idx.shape[1] - 1) // 2], start, end, s.name
    from vidfeat.grid import SegmentGrid

    T = int(sets[0].config.get("T") or sets[0].features.shape[0])
    g = SegmentGrid(T, 1, "test").sample(info.num_frames, info.fps)
    return g.indices[:, 0], g.start, g.end, "test-mode grid"


def _evenly(n: int, k: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, k))})


# --------------------------------------------------------------------------- pictures


def flow_to_rgb(flow: np.ndarray, bound: float) -> np.ndarray:
    """Flow ``(2, H, W)`` (dx, dy in pixels, y down) → float RGB ``(H, W, 3)`` in [0, 1]:
    hue = direction, saturation = ``|flow| / bound`` clipped to 1, value 1 (white = still)."""
    from matplotlib.colors import hsv_to_rgb

    dx, dy = np.asarray(flow[0], np.float64), np.asarray(flow[1], np.float64)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    sat = np.clip(np.hypot(dx, dy) / float(bound), 0.0, 1.0)
    return hsv_to_rgb(np.stack([hue, sat, np.ones_like(sat)], axis=-1))


def _wheel(n: int = 65) -> np.ndarray:
    """The colour key: flow from the centre to each pixel, |flow| = 1 at the rim (RGBA)."""
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    rgba = np.ones((n, n, 4))
    rgba[..., :3] = flow_to_rgb(np.stack([x, y]), 1.0)
    rgba[..., 3] = np.hypot(x, y) <= 1.0
    return rgba


def _log_mel_image(wave: np.ndarray) -> tuple[np.ndarray, float]:
    """Log-mel ``(64, columns)`` of a 16 kHz track, computed in chunks and max-pooled in time
    to at most ``MAX_MEL_COLUMNS`` columns; also the seconds per column."""
    from vidfeat.audio import HOP, NUM_BANDS, SAMPLE_RATE, WINDOW, log_mel

    frames = max(0, 1 + (len(wave) - WINDOW) // HOP) if len(wave) >= WINDOW else 0
    if frames == 0:
        return np.zeros((NUM_BANDS, 0), np.float32), HOP / SAMPLE_RATE
    parts = []
    step = 4096
    for k in range(0, frames, step):
        n = min(step, frames - k)
        parts.append(log_mel(wave[k * HOP : (k + n - 1) * HOP + WINDOW]))
    mel = np.concatenate(parts)  # (frames, 64)
    pool = max(1, -(-frames // MAX_MEL_COLUMNS))
    if pool > 1:
        pad = (-frames) % pool
        mel = np.concatenate([mel, np.repeat(mel[-1:], pad, axis=0)])
        mel = mel.reshape(-1, pool, NUM_BANDS).max(axis=1)
    return mel.T, pool * HOP / SAMPLE_RATE


# --------------------------------------------------------------------------- panels


def _axes(sf, n: int, height: float, title: str, head: float, foot: float = 0.1):
    """``n`` axes side by side in a panel of ``height`` inches, ``head``/``foot`` inches kept
    free above (the panel's title and the axes' titles) and below (tick labels)."""
    sf.suptitle(title, fontsize=9, x=0.01, ha="left", va="top", y=1.0 - 0.04 / height)
    axes = sf.subplots(
        1,
        n,
        squeeze=False,
        gridspec_kw={
            "top": 1.0 - head / height,
            "bottom": foot / height,
            "left": 0.09,
            "right": 0.98,
            "wspace": 0.25,
        },
    )
    return list(axes.ravel())


def _frames_panel(sf, h, thumbs: np.ndarray, shown: list[int], start, end, T: int, src) -> str:
    title = f"frames: {len(shown)} of {T} segments (the grid of {src})"
    axes = _axes(sf, max(len(shown), MAX_THUMBS), h, title, head=0.65)
    for ax, t, img in zip(axes, shown, thumbs, strict=False):
        ax.imshow(img)
        ax.set_title(f"seg {t}\n{start[t]:.2f}–{end[t]:.2f} s", fontsize=7)
    for ax in axes:
        ax.axis("off")
    return f"frames ({len(shown)} of {T} segments)"


def _flow_panel(sf, h, s: _Set, info, with_key: bool) -> str:
    from vidfeat.flow import dequantize

    bound = float(s.config["quantization"]["bound"])
    q = np.asarray(s.features)  # (T, N, 2, H, W) uint8
    T, N = q.shape[:2]
    segs = _evenly(T, FLOW_SEGMENTS)
    start, end = _segment_times(s, info)
    pair = (N - 1) // 2
    peak = max(float(np.abs(dequantize(q[t, pair], bound)).max()) for t in segs)
    title = (
        f"flow {s.name}: {s.config.get('method', '?')}, bound ±{bound:g} px (largest component "
        f"shown {peak:.1f} px)"
    )
    axes = _axes(sf, FLOW_SEGMENTS + 1, h, title, head=0.55)
    for ax, t in zip(axes, segs, strict=False):
        f = dequantize(q[t, pair], bound)
        ax.imshow(flow_to_rgb(f, bound))
        ax.set_title(f"seg {t} ({start[t]:.2f}–{end[t]:.2f} s), pair {pair}", fontsize=7)
        ax.axis("off")
    for ax in axes[len(segs) :]:
        ax.axis("off")
    if with_key:
        key = axes[-1]
        key.imshow(_wheel(), extent=(-1, 1, 1, -1))
        key.set_title("key: hue = direction\nsaturation = |flow| / bound", fontsize=7)
    return f"flow {s.name} ({len(segs)} segments)"


def _audio_panel(sf, h, path: Path, sets: list[_Set], info, grid_start, grid_end):
    from matplotlib.patches import Rectangle

    from vidfeat.audio import EXAMPLE_SAMPLES, NUM_BANDS, SAMPLE_RATE, load_track, window_starts

    stored = _attr([s for s in sets if s.config.get("modality") == "audio"] + sets, "has_audio")
    if stored is not None and not bool(stored):
        wave, why = None, "has_audio=false in the store"
    else:
        wave, why = load_track(path)
    if wave is None:
        (ax,) = _axes(sf, 1, h, "audio", head=0.3)
        ax.set_facecolor("0.92")
        ax.text(0.5, 0.55, "no audio track", ha="center", va="center", fontsize=16, color="0.3")
        ax.text(0.5, 0.3, why, ha="center", va="center", fontsize=9, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        return "no-audio", f"no audio track ({why})"
    mel, sec = _log_mel_image(wave)
    audio_sets = [s for s in sets if s.config.get("modality") == "audio"]
    if audio_sets:
        start, end = _segment_times(audio_sets[0], info)
    else:
        start, end = grid_start, grid_end
    lo = window_starts((start + end) / 2.0) / SAMPLE_RATE
    width = EXAMPLE_SAMPLES / SAMPLE_RATE
    count = len(lo)
    lo = lo[_evenly(count, MAX_WINDOWS)]  # a long row set: a few windows, evenly picked
    title = (
        f"audio log-mel (16 kHz, 64 bands) with the {count} example windows ({width:.3f} s "
        "each, centred on the segment centres; zero-padded past the track's ends)"
        + (f"; {len(lo)} of them outlined" if len(lo) < count else "")
    )
    (ax,) = _axes(sf, 1, h, title, head=0.3, foot=0.45)
    ax.imshow(
        mel, aspect="auto", origin="lower", cmap="magma", extent=(0, mel.shape[1] * sec, 0, 64)
    )
    lanes = min(len(lo), 4)
    h = NUM_BANDS / lanes
    for t, x in enumerate(lo):
        lane = t % lanes
        ax.add_patch(
            Rectangle((x, lane * h + 0.5), width, h - 1, fill=False, lw=1.2, edgecolor=f"C{t % 10}")
        )
    ax.set_xlim(min(0.0, float(lo.min())), max(len(wave) / SAMPLE_RATE, float(lo.max()) + width))
    ax.set_xlabel("time (s)", fontsize=8)
    ax.set_ylabel("mel band", fontsize=8)
    ax.tick_params(labelsize=7)
    return "audio", f"audio log-mel ({count} windows)"


def _norms_panel(sf, h, feats: list[_Set], info) -> str:
    norms = [np.linalg.norm(np.asarray(s.features, np.float64), axis=1) for s in feats]
    typical = [float(np.median(n)) for n in norms if np.median(n) > 0]
    log = bool(typical) and max(typical) > 10 * min(typical) and all(n.min() > 0 for n in norms)
    title = "per-segment feature L2 norms" + (
        " (log scale: the sets differ in size)" if log else ""
    )
    (ax,) = _axes(sf, 1, h, title, head=0.3, foot=0.45)
    for i, (s, n) in enumerate(zip(feats, norms, strict=True)):
        start, end = _segment_times(s, info)
        x = (start + end) / 2
        label = f"{s.name} (D={s.features.shape[1]})"
        if len(n) > MAX_NORM_POINTS:  # a long row set: the mean of consecutive rows
            at = np.arange(0, len(n), -(-len(n) // MAX_NORM_POINTS))
            counts = np.diff(np.append(at, len(n)))
            x, n = np.add.reduceat(x, at) / counts, np.add.reduceat(n, at) / counts
            label += f", mean of {counts[0]} rows"
        ax.plot(x, n, marker="o" if len(n) <= 200 else None, ms=3, color=f"C{i}", label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlim(0, info.duration)
    ax.set_xlabel("segment / row centre (s)", fontsize=8)
    ax.set_ylabel("L2 norm", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="best")
    return f"norms ({', '.join(s.name for s in feats)})"


def _scores_panel(sf, h, scored: list[_Set], label) -> str:
    title = "clip scores" + (" (green: the true label)" if label is not None else "")
    axes = _axes(sf, max(len(scored), 2), h, title, head=0.55, foot=0.35)
    for ax, s in zip(axes, scored, strict=False):
        p = np.asarray(s.scores, np.float64).reshape(-1)
        classes = s.score_names or []
        top = np.argsort(-p, kind="stable")[:TOP_K]
        colours = ["C2" if classes[k] == label else "C0" for k in top]
        y = np.arange(len(top))
        ax.barh(y, p[top], color=colours)
        ax.set_yticks(y, [classes[k] for k in top], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.1)
        ax.tick_params(axis="x", labelsize=7)
        for yy, k in zip(y, top, strict=True):
            ax.text(p[k] + 0.01, yy, f"{p[k]:.2f}", va="center", fontsize=7)
        ax.set_title(f"{s.name}: top-{TOP_K}" + (f" (true: {label})" if label else ""), fontsize=8)
    for ax in axes[len(scored) :]:
        ax.axis("off")
    return f"scores ({', '.join(s.name for s in scored)})"


# --------------------------------------------------------------------------- the sheet


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file (got {out})")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; name a .png file")
    return out


def _save_atomic(fig, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as fh:
        fig.savefig(fh, format="png", dpi=100)


def _sort_sets(sets: list) -> tuple[list, list, list, list, dict[str, str]]:
    """The sets a sheet draws: flow fields, ``(T, D)`` / ``(L, D)`` features (their norms), clip
    scores with their classes, row scores (timelines); and why each other one is left out."""
    fields, feats, scored, timelines, skipped = [], [], [], [], {}
    for s in sets:
        if _is_fields(s):
            fields.append(s)
        elif s.features.ndim == 2 and s.features.dtype.kind in "fiu":
            feats.append(s)
        else:
            skipped[s.name] = f"features {s.features.dtype} {tuple(s.features.shape)}"
        if s.scores is not None and is_row_set(s.config):
            rows = s.features.shape[0] if s.features.ndim else 0
            why = check_rows(s.times, s.scores, s.score_names, rows)
            if why is None:
                timelines.append(s)
                continue
            skipped[s.name] = f"{skipped[s.name]}, {why}" if s.name in skipped else why
        elif s.scores is not None:
            classes = s.score_names
            if not classes:
                why = "scores but no classes in set.json"
            elif len(classes) != np.size(s.scores):
                why = f"{np.size(s.scores)} scores for {len(classes)} classes"
            else:
                scored.append(s)
                continue
            skipped[s.name] = f"{skipped[s.name]}, {why}" if s.name in skipped else why
    return fields, feats, scored, timelines, skipped


def _intervals(annotations, video_id: str, timelines: list[_Set], sets: list[_Set]):
    """The annotated intervals of the video, or None without ``annotations``. Refused
    (ConfigError) when no set can show them: they are drawn on the row scores' timeline."""
    if annotations is None:
        return None
    if not timelines:
        raise ConfigError(
            f"--annotations applies to a row set's score timeline (a snippets/windows grid with "
            f"scores); no set holding {video_id!r} has one ({', '.join(s.name for s in sets)}): "
            "leave --annotations out"
        )
    return load_intervals(annotations, video_id)


def _probe_matching(path: Path, sets: list[_Set], video_id: str):
    """The file's VideoInfo; ConfigError when its frame count is not the one stored."""
    from vidfeat.decode import probe

    info = probe(path)
    stored_frames = _attr(sets, "num_frames")
    if stored_frames is not None and int(stored_frames) != info.num_frames:
        raise ConfigError(
            f"{path} holds {info.num_frames} frames, the store recorded {int(stored_frames)} for "
            f"{video_id!r}: not the file its features came from; pass --videos with that file"
        )
    return info


def _header(video_id: str, sets: list[_Set], info, path: Path) -> str:
    label, cls = _attr(sets, "label"), _attr(sets, "class_index")
    return (
        f"{video_id}"
        + (f" — {label}" if label is not None else "")
        + (f" (class {int(cls)})" if cls is not None else "")
        + f" — {info.duration:.2f} s, {info.fps:g} fps, {info.num_frames} frames — {path}"
    )


def contact_sheet(
    store, video_id: str, out: str | Path, videos=None, *, video_root=None, annotations=None
) -> SheetResult:
    """Draw the contact sheet of ``video_id`` from ``store`` (a path or FeatureStore) to the PNG
    ``out`` (written atomically). ``videos``: a list file or VideoList to find the video file
    in when it moved (else the stored ``source_path``); ``video_root`` resolves that list;
    ``annotations``: an ActivityNet/THUMOS JSON file whose intervals of the video are shaded on
    the row sets' score timelines.

    Raises StoreError for an id in no set (naming ids that exist), ConfigError for options
    that do not apply, a video the annotations do not list, or a file that is not the one the
    store describes.
    """
    from matplotlib.figure import Figure

    from vidfeat.decode import read_frames

    out = _check_out(out)
    sets = _load_sets(store, video_id)
    fields, feats, scored, timelines, skipped = _sort_sets(sets)
    intervals = _intervals(annotations, video_id, timelines, sets)
    path = _video_path(sets, video_id, videos, video_root)
    info = _probe_matching(path, sets, video_id)
    frame_idx, start, end, grid_from = _strip_grid(sets, info)
    T = len(frame_idx)
    shown = _evenly(T, MAX_THUMBS)
    thumbs = read_frames(path, frame_idx[shown], short_side=THUMB_SHORT_SIDE)

    heights = [0.4, 2.1] + [2.4] * len(fields) + [2.5] + [2.5] * bool(feats)
    heights += [0.3 * TOP_K + 1.0] * bool(scored) + [PANEL_HEIGHT] * len(timelines)
    fig = Figure(figsize=(FIG_WIDTH, sum(heights)))
    subs = list(fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False).ravel())
    subs[0].text(0.01, 0.5, _header(video_id, sets, info, path), fontsize=10,
                 fontweight="bold", va="center")  # fmt: skip
    rows = iter(zip(subs[1:], heights[1:], strict=True))
    panels = ["frames"]
    notes = [_frames_panel(*next(rows), thumbs, shown, start, end, T, grid_from)]
    for i, s in enumerate(fields):
        notes.append(_flow_panel(*next(rows), s, info, with_key=i == 0))
        panels.append(f"flow:{s.name}")
    name, note = _audio_panel(*next(rows), path, sets, info, start, end)
    panels.append(name)
    notes.append(note)
    if feats:
        notes.append(_norms_panel(*next(rows), feats, info))
        panels.append("norms")
    if scored:
        notes.append(_scores_panel(*next(rows), scored, _attr(sets, "label")))
        panels += [f"scores:{s.name}" for s in scored]
    for s in timelines:
        classes = s.score_names or []
        args = (s.name, s.times, s.scores, classes, intervals, info.duration)
        notes.append(timeline_panel(*next(rows), *args))
        panels.append(f"timeline:{s.name}")
    _save_atomic(fig, out)
    return SheetResult(
        path=out,
        video_id=video_id,
        video_path=path,
        panels=panels,
        segments=T,
        thumbnails=shown,
        grid_from=grid_from,
        has_audio="audio" in panels,
        skipped=skipped,
        notes=notes,
    )
