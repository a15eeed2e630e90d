"""Row sets in the layouts of temporal action localisation codebases: ``vidfeat store export
--layout actionformer|bmn|gtad`` (issue 21). Lives here: :func:`export_layout` (the command's
one library call), :func:`check_layout_options`, :func:`pool_rows` (mmaction2's resampling),
:class:`LayoutReport`. Imports numpy, tqdm, yaml, h5py (gtad only), :mod:`vidfeat.export`
(file names, output folder, manifest), :mod:`vidfeat.rowsets` (the sets read row for row) and
the public names of :mod:`vidfeat.store`.

Input: row sets of one store (set.json ``grid`` of mode ``snippets`` or ``windows``,
``feature_shape`` ``[-1, D]``; per video ``features`` ``(L, D)``, ``times`` ``(L, 3)`` and
``frame_indices`` ``(L, span)``, L from 1 up). Several sets
(``--set rgb,flow``) are concatenated along C in the order given, only when they share a grid
row for row: the same set.json ``grid`` (snippets of another N allowed), and per video the
same number of rows L and the same row centres (:mod:`vidfeat.rowsets`). A video absent from
one of the sets, or whose rows differ, is reported in ``failed`` (exit 1) and the others are
exported. Values are written as float32
(float16 sets convert exactly).

Layouts (``P`` = ``--prefix``, default ''; ``<stem>`` = :func:`~vidfeat.export.export_stem`
of the id, the id itself when it is a plain file name):

* ``actionformer`` — ``P<stem>.npy``: ``(L, C)`` float32, what ActionFormer's datasets
  (libs/datasets/thumos14.py, anet.py) ``np.load``; and ``actionformer.yaml``, the
  ``dataset:`` keys of an ActionFormer config: ``feat_stride`` (the grid's stride S),
  ``num_frames``, ``default_fps`` (only when the grid has an fps: otherwise ActionFormer takes
  each video's ``fps`` from its annotation JSON, the manifest's ``fps``), ``input_dim`` (C),
  ``file_prefix``, ``file_ext``, ``feat_folder``. ActionFormer puts a time t (seconds) at row
  ``t·fps/S − num_frames/(2S)``, so row i at ``(i·S + num_frames/2)/fps``: ``num_frames`` is
  the window W (windows grid; a window from frame i·S is centred at i·S + W/2) or the N frames
  of a snippet, unless the stored row centres (``times``) all sit elsewhere by one constant,
  which is then written instead (the report says so).
* ``bmn`` — ``P<stem>.csv``: header ``f0,...,f{C-1}``, exactly ``--steps`` rows (default
  100), what mmaction2's ``LoadLocalizationFeature`` reads (``np.loadtxt(path,
  dtype=np.float32, delimiter=',', skiprows=1)``, then transposed: ``--steps`` >= 2 and C >= 2,
  or that call returns a 1-D array). Each set is resampled separately by :func:`pool_rows`
  (mmaction2's ``pool_feature``, tools/data/activitynet/activitynet_feature_postprocessing.py)
  and the results are concatenated, as that tool does for rgb and flow. Values are ``%.9g``
  (float32 round-trips; mmaction2's own tool writes ``%.4f``).
* ``gtad`` — ``<split>.h5`` (``--split``, default ``features``): one float32 dataset ``(L, C)``
  per video, keyed ``P<id>``, what G-TAD's loader (gtad_lib/dataset.py) reads as
  ``h5[video_name][::skip_videoframes, ...]`` from ``{feature_path}/rgb_val.h5``,
  ``flow_val.h5``, ``rgb_test.h5``, ``flow_test.h5`` (it concatenates flow and rgb itself):
  export each with its ``--split`` into one folder. G-TAD takes every ``skip_videoframes``-th
  row and puts row j at frame ``j·skip_videoframes``: export a stride-1 grid for it, or set
  ``skip_videoframes`` 1 and convert its frame annotations to rows. Bookkeeping files are named
  after the split (``<split>.manifest.csv``, ``<split>.export.json``), so several exports share
  a folder.

Every export writes a manifest (``manifest.csv``; gtad: ``<split>.manifest.csv``): id, file,
key (gtad's dataset name), L (rows written), C, source_L (rows in the store), grid (set.json's
``grid`` as JSON), grid_fps, fps (the video's own), duration, first_centre and last_centre
(seconds of the first and last stored row) and the source sets; ``export.json`` records what the
folder is an export of, and ``missing.txt`` the ids of ``--videos`` that no set holds.

Robustness: the store is opened read-only (nothing in it is written, not even the index
cache). Every file is written under a temporary name and renamed (:mod:`vidfeat.outdir`), so a
file with its final name is complete. A rerun skips a file that exists, is not older than the
store's copies of the video (``written_at``) and has the shape this export writes (gtad: the
HDF5 file holds exactly the videos and shapes of this export); anything else is rewritten. A
write that fails (a full disk, ENOSPC; the file-size limit, EFBIG) stops the export with one
line naming the file, ``--out`` and the cause; the complete files stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError, StoreError
from vidfeat.export import (
    _SAFE,
    EXPORT_JSON,
    MANIFEST,
    MISSING_TXT,
    ExportReport,
    _csv_bytes,
    _finish,
    _prepare_out,
    export_stem,
    save_npy,
)
from vidfeat.outdir import open_temp_beside, write_atomic, write_error
from vidfeat.rowsets import RowSets, RowVideo
from vidfeat.store import FeatureStore

__all__ = [
    "DEFAULT_SPLIT",
    "DEFAULT_STEPS",
    "LAYOUTS",
    "LayoutReport",
    "check_layout_options",
    "export_layout",
    "pool_rows",
]

LAYOUTS: tuple[str, ...] = ("actionformer", "bmn", "gtad")
DEFAULT_STEPS = 100  # BMN's temporal scale on ActivityNet (mmaction2's csv_mean_100)
DEFAULT_SPLIT = "features"
ACTIONFORMER_YAML = "actionformer.yaml"
POOL_EPS = 1e-4  # mmaction2's pool_feature: samples from eps to L-1-eps
POOL_BINS = 3  # mmaction2's num_sample_bins: points averaged per step
_IDENTITY = ("set", "layout", "set_json_sha256", "prefix", "steps", "split")
_MAX_PREFIX = 40  # with a 200-character stem and an extension, names stay under 255 bytes
_SPLIT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=@-]{0,99}")
_RESERVED_SPLITS = frozenset({"manifest", "export", "missing"})


# --------------------------------------------------------------------------- options


def check_layout_options(
    layout: str, *, prefix: str = "", steps: int | None = None, split: str | None = None
) -> None:
    """Refuse (:class:`ConfigError`) options that do not apply to ``layout`` or values it cannot
    write: ``steps`` is bmn's, ``split`` gtad's; ``prefix`` goes into file names (keys)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    if steps is not None and layout != "bmn":
        raise ConfigError(
            f"--steps applies to --layout bmn (the rows every video is resampled to); "
            f"--layout {layout} writes each video's own rows: drop --steps"
        )
    if steps is not None and steps < 2:
        raise ConfigError(
            f"--steps must be >= 2 (got {steps}): mmaction2 reads a one-row CSV as a 1-D array"
        )
    if split is not None and layout != "gtad":
        raise ConfigError(
            f"--split applies to --layout gtad (it names the HDF5 file, e.g. rgb_val for "
            f"rgb_val.h5); --layout {layout} writes one file per video: drop --split"
        )
    if split is not None and (not _SPLIT_RE.fullmatch(split) or split in _RESERVED_SPLITS):
        raise ConfigError(
            f"--split {split!r} is no file name: use letters, digits and - _ . + = @ (not "
            "starting with a dot), e.g. rgb_val"
        )
    bad = sorted({c for c in prefix if c not in _SAFE})
    if bad or prefix.startswith(".") or len(prefix) > _MAX_PREFIX:
        raise ConfigError(
            f"--prefix {prefix!r} cannot start file names: use at most {_MAX_PREFIX} letters, "
            "digits and - _ . + = @, not starting with a dot (ActivityNet's is v_)"
        )


# --------------------------------------------------------------------------- mmaction2 pooling


def pool_rows(rows: np.ndarray, steps: int = DEFAULT_STEPS) -> np.ndarray:
    """``(L, C)`` rows resampled to ``(steps, C)`` float64 as mmaction2's ``pool_feature``
    (mean pooling) computes it, operation for operation.

    The rows are a piecewise-linear function of the row index (x = 0..L-1). Step k averages it
    at ``POOL_BINS`` (3) points ``p_k + b/3·a`` (b = 0, 1, 2), where ``a = (L-1-2·eps)/steps``,
    eps = 1e-4, and ``p_k`` starts at eps and grows by ``a`` each step (accumulated, as there).
    Between rows lo and lo+1 the value is ``(y[lo+1] - y[lo])·(x - lo) + y[lo]``: the
    difference in the input's dtype, the rest in float64, as scipy's ``interp1d`` does with
    integer x. A single row (L = 1) is repeated ``steps`` times.
    """
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(f"pool_rows takes (L, C) rows with L >= 1, not {rows.shape}")
    n = rows.shape[0]
    if n == 1:
        return np.repeat(rows.astype(np.float64), steps, axis=0)
    start, end = POOL_EPS, n - 1 - POOL_EPS
    anchor = (end - start) / steps
    points: list[float] = []
    ptr = start
    for _ in range(steps):
        points.extend(ptr + b / POOL_BINS * anchor for b in range(POOL_BINS))
        ptr += anchor
    x = np.asarray(points)
    hi = np.searchsorted(np.arange(n), x).clip(1, n - 1)
    lo = hi - 1
    y = (rows[hi] - rows[lo]).astype(np.float64) * (x - lo)[:, None] + rows[lo]
    y = y.reshape(steps, POOL_BINS, rows.shape[1])
    total = y[:, 0]
    for b in range(1, POOL_BINS):
        total = total + y[:, b]
    return total / POOL_BINS


# --------------------------------------------------------------------------- report


@dataclass
class LayoutReport(ExportReport):
    """:class:`~vidfeat.export.ExportReport` of a layout export, with ``notes``: things the
    user should know that are no failure (ids whose files are escaped, row centres that are not
    where the codebase puts them)."""

    sets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem_lines(self, limit: int = 20) -> list[str]:
        lines = super().problem_lines(limit)
        if self.missing and len(self.sets) > 1:
            lines[0] = lines[0].replace(
                f"not in set {self.set_name!r}", f"in none of the sets {', '.join(self.sets)}"
            )
        return lines + [f"note: {n}" for n in self.notes]


# --------------------------------------------------------------------------- layouts


def _why(exc: BaseException) -> str:
    return exc.format_message() if isinstance(exc, StoreError) else str(exc)


def _cell(attrs: dict, key: str) -> Any:
    v = attrs.get(key)
    return v if isinstance(v, int | float) and not isinstance(v, bool) else ""


class _Layout:
    """What every layout shares: names, manifest rows, the bookkeeping files' names."""

    manifest = MANIFEST
    ident_name = EXPORT_JSON
    missing_name = MISSING_TXT

    def __init__(self, out: Path, src: RowSets, prefix: str, steps: int | None, split: str | None):
        self.out, self.src, self.prefix = out, src, prefix
        self.steps, self.split = steps, split
        self.channels = sum(src.dims)

    def refuse(self) -> None:
        """Refuse (ConfigError) sets this layout cannot write, before any work."""

    def rows_out(self, v: RowVideo) -> int:
        return v.rows

    def header(self) -> list[str]:
        return ["id", "file", "key", "L", "C", "source_L", "grid", "grid_fps", "fps",
                "duration", "first_centre", "last_centre", "sets"]  # fmt: skip

    def row(self, v: RowVideo, file: str, key: str) -> list:
        grid = json.dumps(self.src.grid, sort_keys=True)
        centres = [f"{float(v.times[i, 2]):.6f}" for i in (0, -1)]
        return [v.vid, file, key, self.rows_out(v), self.channels, v.rows, grid,
                _cell(v.attrs, "grid_fps"), _cell(v.attrs, "fps"), _cell(v.attrs, "duration"),
                *centres, "+".join(self.src.names)]  # fmt: skip

    def run(self, videos: list[RowVideo], overwrite: bool, rep: LayoutReport, progress: bool):
        raise NotImplementedError

    def finish(self, videos: list[RowVideo], rep: LayoutReport) -> None:
        """Files written after the manifest (the ActionFormer config fragment)."""


class _PerFile(_Layout):
    """One file per video, ``<prefix><stem><ext>``."""

    ext = ""

    def name(self, vid: str) -> str:
        return f"{self.prefix}{export_stem(vid)}{self.ext}"

    def matches(self, path: Path, v: RowVideo) -> bool:
        raise NotImplementedError

    def write(self, path: Path, feats: list[np.ndarray]) -> None:
        raise NotImplementedError

    def done(self, v: RowVideo) -> bool:
        """The file of ``v`` is complete, not older than the store's copies, of this shape."""
        path = self.out / self.name(v.vid)
        try:
            if path.stat().st_mtime < v.written_at:
                return False
            return self.matches(path, v)
        except (OSError, ValueError):
            return False

    def run(self, videos: list[RowVideo], overwrite: bool, rep: LayoutReport, progress: bool):
        from tqdm import tqdm

        rows = []
        desc = f"export {rep.set_name} ({rep.format})"
        for v in tqdm(videos, desc=desc, unit="video", disable=None if progress else True):
            name = self.name(v.vid)
            if not overwrite and self.done(v):
                rep.skipped.append(v.vid)
            else:
                try:
                    feats = self.src.features(v)
                except (StoreError, ValueError, TypeError, OSError) as exc:
                    rep.failed[v.vid] = _why(exc)
                    continue
                try:
                    self.write(self.out / name, feats)  # whole or not at all
                except OSError as exc:
                    raise write_error(self.out, name, exc) from exc
                rep.written.append(v.vid)
            rows.append(self.row(v, name, ""))
        escaped = [r[0] for r in rows if export_stem(r[0]) != r[0]]
        if escaped:
            shown = ", ".join(map(repr, escaped[:5])) + (" ..." if len(escaped) > 5 else "")
            rep.notes.append(
                f"{len(escaped)} ids are no plain file names ({shown}): their files are "
                f"escaped ({self.manifest} maps them), so a loader that opens <prefix><id>"
                f"{self.ext} will not find them"
            )
        return rows


class _ActionFormer(_PerFile):
    ext = ".npy"

    def matches(self, path: Path, v: RowVideo) -> bool:
        fmt = np.lib.format
        with open(path, "rb") as fh:
            major, _ = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            size = fh.tell() + v.rows * self.channels * 4
        want = (v.rows, self.channels)
        return shape == want and not fortran and dtype == np.float32 and path.stat().st_size == size

    def write(self, path: Path, feats: list[np.ndarray]) -> None:
        save_npy(path, feats[0] if len(feats) == 1 else np.concatenate(feats, axis=1))

    def finish(self, videos: list[RowVideo], rep: LayoutReport) -> None:
        import yaml

        done = set(rep.written) | set(rep.skipped)
        num_frames = _num_frames(self.src, [v for v in videos if v.vid in done], rep)
        fps = self.src.grid.get("fps")
        keys: dict[str, Any] = {"feat_stride": self.src.stride, "num_frames": num_frames}
        if fps is not None:
            keys["default_fps"] = float(fps)
        keys |= {"input_dim": self.channels, "file_prefix": self.prefix, "file_ext": self.ext}
        keys["feat_folder"] = str(self.out.resolve())
        text = (
            f"# vidfeat store export --layout actionformer --set {','.join(self.src.names)}: the\n"
            "# dataset keys of an ActionFormer config. Merge them into yours (json_file,\n"
            "# num_classes, max_seq_len, ... are the dataset's)."
            + ("" if fps is not None else " The grid has no fps of its own: each video's fps\n"
               "# comes from the annotation JSON (manifest.csv: grid_fps).")
            + "\n" + yaml.safe_dump({"dataset": keys}, sort_keys=False)
        )  # fmt: skip
        try:
            write_atomic(self.out / ACTIONFORMER_YAML, text)
        except OSError as exc:
            raise write_error(self.out, ACTIONFORMER_YAML, exc) from exc


def _num_frames(src: RowSets, videos: list[RowVideo], rep: LayoutReport) -> int | float:
    """ActionFormer's ``num_frames``: row i is at ``(i·S + num_frames/2)/fps`` there. The
    grid's span (W, or N), unless every video's stored centres sit at one other offset."""
    implied: dict[str, float | None] = {}
    for v in videos:
        # the rate of the grid's frames: its --fps, else the video's own
        fps = v.attrs.get("grid_fps") or src.grid.get("fps") or v.attrs.get("fps")
        if not isinstance(fps, int | float) or isinstance(fps, bool) or fps <= 0:
            implied[v.vid] = None
            continue
        off = np.round(v.times[:, 2] * float(fps) - np.arange(v.rows) * src.stride, 3)
        # the offset most rows share: a snippet clamped at the video's end is off by a frame
        vals, counts = np.unique(off, return_counts=True)
        best = int(np.argmax(counts))
        implied[v.vid] = round(2 * float(vals[best]), 6) if counts[best] * 2 > v.rows else None
    values = set(implied.values())
    if len(values) == 1 and None not in values:
        (value,) = values
        assert value is not None
        if value != src.span:
            rep.notes.append(
                f"the stored row centres of every video sit at (i*{src.stride} + {value:g}/2)/fps"
                f", so {ACTIONFORMER_YAML} has num_frames {value:g}, not the grid's {src.span}"
            )
        return int(value) if value == int(value) else value
    odd = [vid for vid, x in implied.items() if x != src.span]
    if odd:
        rep.notes.append(
            f"{len(odd)} videos have rows whose stored centres are not where ActionFormer puts "
            f"them ((i*{src.stride} + {src.span}/2)/fps): {', '.join(odd[:5])}"
            + (" ..." if len(odd) > 5 else "")
        )
    return src.span


class _Bmn(_PerFile):
    ext = ".csv"

    def refuse(self) -> None:
        if self.channels < 2:
            raise ConfigError(
                f"--layout bmn: set {','.join(self.src.names)} has C = 1 feature per row, and "
                "mmaction2's np.loadtxt reads a one-column CSV as a 1-D array; export it with "
                "--layout actionformer or --format csv"
            )

    def rows_out(self, v: RowVideo) -> int:
        assert self.steps is not None
        return self.steps

    def _header(self) -> bytes:
        return ",".join(f"f{j}" for j in range(self.channels)).encode("ascii")

    def matches(self, path: Path, v: RowVideo) -> bool:
        with open(path, "rb") as fh:
            if fh.readline().rstrip(b"\n") != self._header():
                return False
            return sum(1 for _ in fh) == self.steps

    def write(self, path: Path, feats: list[np.ndarray]) -> None:
        assert self.steps is not None
        pooled = [pool_rows(f, self.steps) for f in feats]  # each set by itself, as mmaction2
        write_atomic(path, _csv_bytes(np.concatenate(pooled, axis=1).astype(np.float32)))


class _Gtad(_Layout):
    """One HDF5 file ``<split>.h5`` for the export, a dataset ``(L, C)`` per video."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.file = f"{self.split}.h5"
        self.manifest = f"{self.split}.{MANIFEST}"
        self.ident_name = f"{self.split}.{EXPORT_JSON}"
        self.missing_name = f"{self.split}.{MISSING_TXT}"

    def key(self, vid: str) -> str:
        return self.prefix + vid  # an HDF5 name holds any id (no "/", never "." or "..")

    def done(self, videos: list[RowVideo]) -> bool:
        """The file exists, is not older than the store's copies, and holds exactly these
        videos with these shapes (float32)."""
        import h5py

        path = self.out / self.file
        try:
            if path.stat().st_mtime < max((v.written_at for v in videos), default=0.0):
                return False
            with h5py.File(path, "r", locking=False) as f:
                if set(f.keys()) != {self.key(v.vid) for v in videos}:
                    return False
                return all(
                    f[self.key(v.vid)].shape == (v.rows, self.channels)
                    and f[self.key(v.vid)].dtype == np.float32
                    for v in videos
                )
        except (OSError, RuntimeError, ValueError, KeyError, TypeError):
            return False

    def run(self, videos: list[RowVideo], overwrite: bool, rep: LayoutReport, progress: bool):
        if not overwrite and self.done(videos):
            rep.skipped = [v.vid for v in videos]
            return [self.row(v, self.file, self.key(v.vid)) for v in videos]
        import h5py
        from tqdm import tqdm

        path = self.out / self.file
        fd, tmp = open_temp_beside(path, read=True)
        rows = []
        try:
            # HDF5 writes through this Python file (h5py's fileobj driver): a failed write comes
            # back as Python's OSError with its errno. Through HDF5's own driver a write that
            # fails (EFBIG, ENOSPC) is reported while objects close, and the process can crash.
            with open(fd, "w+b") as fh:
                with h5py.File(fh, "w") as f:
                    for v in tqdm(
                        videos, desc=f"export {rep.set_name} (gtad)", unit="video",
                        disable=None if progress else True,
                    ):  # fmt: skip
                        try:
                            feats = self.src.features(v)
                        except (StoreError, ValueError, TypeError, OSError) as exc:
                            rep.failed[v.vid] = _why(exc)
                            continue
                        f.create_dataset(self.key(v.vid), data=np.concatenate(feats, axis=1))
                        rep.written.append(v.vid)
                        rows.append(self.row(v, self.file, self.key(v.vid)))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError | RuntimeError):  # h5py's errors of a failed write
                raise write_error(self.out, self.file, exc) from exc
            raise
        return rows


_WRITERS: dict[str, type[_Layout]] = {"actionformer": _ActionFormer, "bmn": _Bmn, "gtad": _Gtad}


# --------------------------------------------------------------------------- export


def _set_names(sets: str | Sequence[str]) -> list[str]:
    names = [s.strip() for s in sets.split(",")] if isinstance(sets, str) else list(sets)
    if not names or "" in names:
        raise ConfigError(f"--set {','.join(names)!r}: give set names, comma-separated")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"--set names set {', '.join(dup)} more than once; give each once")
    return names


def export_layout(
    store: str | Path,
    sets: str | Sequence[str],
    out: str | Path,
    layout: str,
    *,
    video_ids: Sequence[str] | None = None,
    prefix: str = "",
    steps: int | None = None,
    split: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> LayoutReport:
    """Export row sets ``sets`` (names, or ``"rgb,flow"``) of ``store`` into folder ``out``
    in ``layout`` (see the module doc): their rows concatenated along C in the order given.

    ``video_ids``: only these ids, in this order (ids no set holds are reported in
    ``missing``); default every id of any set, sorted. ``prefix``: before every id in file
    names (gtad: dataset names). ``steps``: bmn's rows per video (default 100). ``split``:
    gtad's file name without ``.h5`` (default ``features``). ``overwrite``: export into a
    folder holding other content, rewrite files instead of skipping them. Videos that cannot
    be exported go to ``failed``; refusals raise :class:`ConfigError`, write failures
    :class:`StoreError` (one line: the file, ``out`` and the cause).
    """
    t0 = time.monotonic()
    check_layout_options(layout, prefix=prefix, steps=steps, split=split)
    names = _set_names(sets)
    steps = DEFAULT_STEPS if layout == "bmn" and steps is None else steps
    split = DEFAULT_SPLIT if layout == "gtad" and split is None else split
    rep = LayoutReport(out=Path(out), set_name=",".join(names), format=layout, sets=names)
    with contextlib.ExitStack() as stack:
        src = RowSets(FeatureStore(store), names, stack)
        for name, fs in zip(names, src.sets, strict=True):
            rep.unreadable |= {f"{name}/{k}": why for k, why in fs.bad_shards().items()}
        writer = _WRITERS[layout](rep.out, src, prefix, steps, split)
        writer.refuse()
        ids = src.ids(video_ids, rep.missing)
        ident = {
            "vidfeat_export": 1,
            "set": ",".join(names),
            "layout": layout,
            "set_json_sha256": [fs.config_sha256 for fs in src.sets],
            "prefix": prefix,
            "steps": steps,
            "split": split,
            "store": str(Path(store).resolve()),
            "dtype": "float32",
        }
        shared = layout if layout == "gtad" else None
        _prepare_out(rep.out, ident, overwrite, _IDENTITY, writer.ident_name, shared)
        videos = []
        for vid in ids:
            try:
                videos.append(src.video(vid))
            except (StoreError, ValueError, TypeError, OSError) as exc:
                rep.failed[vid] = _why(exc)
        rows = writer.run(videos, overwrite, rep, progress)
    _finish(rep.out, writer.header(), rows, rep.missing, writer.manifest, writer.missing_name)
    writer.finish(videos, rep)
    rep.seconds = time.monotonic() - t0
    return rep
