"""Export one feature set to plain files: ``vidfeat store export`` (one ``(T, D)`` file per video).

The layout temporal action localisation tools (ActionFormer, BMN, G-TAD) and video_features
users read: ``np.load(DIR/<stem>.npy)`` → ``(T, D)`` float32. Lives here: :func:`export_set`
(the command's one library call), :class:`ExportReport`, :func:`export_stem` (id → file name).
Imports numpy, tqdm, :mod:`vidfeat.csvsafe`, the public names of :mod:`vidfeat.store` and its
file guard (no h5py, no torch).

Output folder ``DIR``:

* ``<stem>.npy`` — the ``(T, D)`` float32 array; ``.npz`` — key ``features`` (and ``scores``
  with ``--with-scores``); ``.csv`` — a header ``f0,...,f{D-1}`` then T rows written with
  ``%.9g`` (enough digits for float32 to round-trip exactly);
* ``<stem>.scores.npy`` — the clip scores ``(K,)`` float32 (``--with-scores``, npy and csv;
  a row set's per-row scores ``(L, K)`` as stored, with empty top-1 cells in the manifest);
* ``manifest.csv`` — one row per exported video: id, file, label (the list's, as extracted),
  T, D, fps, duration, segment_start, segment_end (``;``-joined seconds), and with scores
  ``scores_file`` (npy, csv), ``top1_index``, ``top1_score`` and ``top1`` (the name of the
  scores' column, i.e. a network's class, which may be none of the labels; only when set.json
  names the scores' columns: :func:`vidfeat.store.score_classes`).
  Text cells that begin like a spreadsheet formula (``=``, ``+``, ``-``, ``@``, tab, CR) get a
  leading ``'`` (:mod:`vidfeat.csvsafe`; ``csvsafe.uncell`` gives the text back);
* ``export.json`` — what this folder is an export of (set, format, sha256 of set.json,
  with_scores, flatten): a later run of the same export resumes, anything else is refused
  unless ``overwrite``;
* ``missing.txt`` — the ids asked for (``video_ids``) that the set does not hold, if any.

The store is opened read-only: an export writes nothing into it (a store on read-only media
exports the same). Row sets (untrimmed grids: ``(L, D)`` per video, L from 1 up) export like any
``(T, D)`` set; :mod:`vidfeat.layouts` writes them as localisation codebases read them.

A store may have been written by someone else: a video whose id is no file name (``..``),
whose attrs are not of their kind (a string fps) or whose arrays are refused by the store's
checks is reported in ``failed`` and the others are exported; nothing is written outside
``--out``.

Values: float16/float32 sets export exactly (float16 → float32 is exact); float64 is rounded to
float32; integer sets (``flatten``) export their stored values as float32, not dequantised.
Sets with more than 2 dims per video (flow fields, ``(T, N, 2, H, W)`` uint8) are refused
unless ``flatten``, which writes ``(T, prod(rest))`` rows in C order.

File names (:func:`export_stem`): store ids are any non-empty string without ``/`` or NUL, not
``.``/``..``. Letters, digits and ``- _ . + = @`` are kept; every other UTF-8 byte (also ``%``
and ``~``) is written ``%XX``, as are a leading ``.`` (no hidden files), the ``.`` of a trailing
``.scores`` (no clash with scores files) and the first letter of the stems ``manifest``,
``export`` and ``missing``. So ``urllib.parse.unquote(stem)`` gives the id back and no two ids
share a file. A stem longer than 200 characters is cut and ends in ``~`` + 16 hex digits of the
id's sha256 (``~`` appears nowhere else). The mapping is case-sensitive: on a case-insensitive
filesystem ids differing only in case would clash. ``manifest.csv`` maps ids to files anyway.

Resume: every file is written under ``.<name>.tmp-<pid>-<hex>``, fsync'ed and renamed
(:func:`vidfeat.outdir.atomic_write`), so a file with its final name is complete; leftover temp
files of dead processes are deleted at the start. A file already present is skipped unless the
store's copy of the video was written after it (re-extracted: ``written_at`` attr newer than the
file) or ``overwrite``. The manifest is rewritten complete at the end. One export per folder at
a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat import csvsafe
from vidfeat.errors import ConfigError, StoreError
from vidfeat.outdir import (
    atomic_write,
    refuse_planted_links,
    remove_stale_temps,
    write_atomic,
    write_error,
)
from vidfeat.store import FeatureSet, FeatureStore, check_video_id, score_classes
from vidfeat.store.guard import MAX_JSON_BYTES, parse_json, read_capped

__all__ = ["FORMATS", "ExportReport", "export_set", "export_stem", "save_npy"]

FORMATS: tuple[str, ...] = ("npy", "npz", "csv")
MANIFEST = "manifest.csv"
EXPORT_JSON = "export.json"
MISSING_TXT = "missing.txt"
SCORES = "scores"
EXPORT_FORMAT = 1  # version of export.json

_SAFE = frozenset(string.ascii_letters + string.digits + "-_.+=@")
_RESERVED_STEMS = frozenset({"manifest", "export", "missing"})
_MAX_STEM = 200  # + ".scores.npy" and the temp-file decoration stays under 255 bytes
_IDENTITY = ("set", "format", "set_json_sha256", "with_scores", "flatten")


# --------------------------------------------------------------------------- names


def export_stem(video_id: str) -> str:
    """The file name (without extension) of ``video_id`` in an export; see the module doc."""
    check_video_id(video_id)
    parts = []
    for i, ch in enumerate(video_id):
        if ch in _SAFE and not (i == 0 and ch == "."):
            parts.append(ch)
        else:
            parts.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    stem = "".join(parts)
    if stem.lower().endswith(".scores"):
        stem = stem[: -len(".scores")] + "%2E" + stem[-len("scores") :]
    if stem.lower() in _RESERVED_STEMS:
        stem = f"%{ord(stem[0]):02X}{stem[1:]}"
    if len(stem) > _MAX_STEM:
        cut = stem[: _MAX_STEM - 17]
        pct = cut.find("%", len(cut) - 2)
        if pct != -1:  # never cut inside a %XX escape
            cut = cut[:pct]
        digest = hashlib.sha256(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        stem = f"{cut}~{digest}"
    return stem


# --------------------------------------------------------------------------- report


@dataclass
class ExportReport:
    """What :func:`export_set` did; ``ok`` is False when ids were missing, videos failed or
    shards of the set could not be read (``unreadable``: shard → why; their videos are not in
    the export)."""

    out: Path
    set_name: str
    format: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.failed and not self.unreadable

    def summary(self) -> str:
        """``export: N written, M skipped, K missing[, F failed][, U unreadable shards] in Xs
        -> DIR``."""
        failed = f", {len(self.failed)} failed" if self.failed else ""
        if self.unreadable:
            failed += f", {len(self.unreadable)} unreadable shard(s)"
        return (
            f"export: {len(self.written)} written, {len(self.skipped)} skipped, "
            f"{len(self.missing)} missing{failed} in {self.seconds:.1f}s -> {self.out}"
        )

    def problem_lines(self, limit: int = 20) -> list[str]:
        """The missing ids and failed videos (at most ``limit`` of each), for stderr."""
        lines = []
        if self.missing:
            shown = ", ".join(self.missing[:limit])
            more = f" and {len(self.missing) - limit} more" if len(self.missing) > limit else ""
            lines.append(
                f"{len(self.missing)} ids of the list are not in set {self.set_name!r}: "
                f"{shown}{more} (all in {self.out / MISSING_TXT}); extract them first"
            )
        for vid, msg in list(self.failed.items())[:limit]:
            shown = vid if vid.isprintable() else repr(vid)  # no terminal escapes from a store
            lines.append(f"failed: {shown}: {msg}")
        if len(self.failed) > limit:
            lines.append(f"failed: ... and {len(self.failed) - limit} more")
        for shard, why in list(self.unreadable.items())[:limit]:
            lines.append(f"unreadable shard {shard}: {why}; its videos are not exported")
        return lines


# --------------------------------------------------------------------------- files


class _Chunks:
    """A file numpy cannot tell is one: ``np.save`` then writes through ``write`` in chunks of
    16 MiB, not with ``ndarray.tofile``, whose error on a short write carries no errno ("3000
    requested and 1468 written"); so a full disk or the file-size limit says ENOSPC or EFBIG."""

    def __init__(self, fh: Any) -> None:
        self.write = fh.write


def save_npy(path: Path, arr: np.ndarray) -> None:
    """``np.save`` of ``arr`` to ``path``, whole or not at all (:func:`atomic_write`); a
    failed write raises OSError with its errno."""
    with atomic_write(path) as fh:
        np.save(_Chunks(fh), arr, allow_pickle=False)


def _csv_bytes(arr: np.ndarray) -> bytes:
    buf = io.StringIO()
    header = ",".join(f"f{j}" for j in range(arr.shape[1]))
    np.savetxt(buf, arr, fmt="%.9g", delimiter=",", header=header, comments="")
    return buf.getvalue().encode("ascii")


def _seconds(values: Any, key: str) -> str:
    if values is None:
        return ""
    a = np.atleast_1d(np.asarray(values))
    if a.dtype.kind not in "iuf" or a.ndim != 1:
        raise ValueError(f"attr {key!r} is not a list of seconds (got {_shown(values)})")
    return ";".join(f"{float(x):.6f}".rstrip("0").rstrip(".") for x in a)


def _number(attrs: dict, key: str) -> Any:
    """A numeric attr as a manifest cell ("" when absent); ValueError for anything else."""
    v = attrs.get(key)
    if v is None:
        return ""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v
    raise ValueError(f"attr {key!r} is not a number (got {_shown(v)})")


def _text(attrs: dict, key: str) -> Any:
    """A text (or numeric) attr as a manifest cell; ValueError for arrays and bytes."""
    v = attrs.get(key)
    if v is None:
        return ""
    if isinstance(v, str | int | float) and not isinstance(v, bool):
        return v
    raise ValueError(f"attr {key!r} is not a string (got {_shown(v)})")


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- the output folder


def _read_json(path: Path) -> dict | None:
    """A JSON object from a regular file (never through a symlink, at most 64 MiB), or None."""
    try:
        obj = parse_json(read_capped(path, MAX_JSON_BYTES, "JSON file"), str(path))
    except (OSError, StoreError):
        return None
    return obj if isinstance(obj, dict) else None


def _prepare_out(
    out: Path,
    ident: dict,
    overwrite: bool,
    keys: Sequence[str] = _IDENTITY,
    name: str = EXPORT_JSON,
    shared: str | None = None,
) -> None:
    """Refuse a foreign ``out`` (unless ``overwrite``), create it, record ``ident`` in ``name``
    (``export.json``); ``keys``: the entries of ``ident`` a resumed export must match.
    ``shared``: a layout whose exports share a folder, each with its own ``name`` (G-TAD reads
    ``rgb_val.h5`` and ``flow_val.h5`` from one folder): a folder holding another export of
    that layout is taken."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the export")
    refuse_planted_links(out)  # its files are kept (resumed, or --overwrite'n one by one)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        prev = _read_json(out / name)
        if prev is None and not (shared and _holds_export_of(out, shared)):
            raise ConfigError(
                f"--out {out} is not empty and holds no vidfeat export ({name} absent); "
                "choose an empty or new folder, or pass --overwrite to export into it anyway "
                "(files with the same names are replaced, other files are left alone)"
            )
        diff = [k for k in keys if prev is not None and prev.get(k) != ident[k]]
        if diff:
            was = ", ".join(f"{k}={prev.get(k)!r}" for k in diff)  # type: ignore[union-attr]
            now = ", ".join(f"{k}={ident[k]!r}" for k in diff)
            raise ConfigError(
                f"--out {out} holds another export ({was}; this one has {now}); choose another "
                "--out, or pass --overwrite to export into it anyway (files with the same "
                "names are replaced)"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        write_atomic(out / name, json.dumps(ident, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise write_error(out, name, exc) from exc


def _holds_export_of(out: Path, layout: str) -> bool:
    """``out`` holds a ``*.export.json`` of an export in ``layout``."""
    return any((_read_json(p) or {}).get("layout") == layout for p in out.glob("*." + EXPORT_JSON))


# --------------------------------------------------------------------------- checks


def _sets_of_td(store: FeatureStore) -> list[str]:
    """Sets of the store whose set.json says ``(T, D)`` per video."""
    out = []
    for name in store.sets():
        cfg = _read_json(store.set_dir(name) / "set.json") or {}
        shape = cfg.get("feature_shape")
        if isinstance(shape, list) and len(shape) == 2:
            out.append(name)
    return out


def _refuse_not_td(store: FeatureStore, fs: FeatureSet, shape: Sequence, dtype: Any) -> None:
    shown = "(" + ", ".join("?" if s in (None, -1) else str(s) for s in shape) + ")"
    ok = _sets_of_td(store)
    listed = ", ".join(ok) if ok else "none"
    flat = (
        ". Pass --flatten to write it as (T, prod(rest)) float32 rows of the stored values"
        if len(shape) > 2
        else ""
    )
    what = f"{shown} {dtype}" if dtype else shown
    raise ConfigError(
        f"set {fs.name!r} holds {what} arrays per video, not (T, D) features; sets of this "
        f"store that can be exported: {listed}{flat}"
    )


def _refuse_flatten(fs: FeatureSet, shape) -> None:
    raise ConfigError(
        f"--flatten applies to sets of more than (T, D) per video; set {fs.name!r} holds "
        f"{tuple(shape)} (T, D) features already: export it without --flatten"
    )


def _as_td(arr: np.ndarray, flatten: bool) -> np.ndarray:
    if arr.ndim == 2:
        pass
    elif arr.ndim > 2 and flatten:
        arr = arr.reshape(arr.shape[0], -1)
    else:
        hint = "" if arr.ndim < 2 else "; pass --flatten to export it as (T, prod(rest))"
        raise ValueError(f"features have shape {arr.shape}, not (T, D){hint}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"features have dtype {arr.dtype}; only real numbers export")
    out = arr.astype(np.float32)
    if arr.dtype == np.float64 and not np.array_equal(np.isfinite(out), np.isfinite(arr)):
        raise ValueError("float64 features beyond the float32 range")
    return out


# --------------------------------------------------------------------------- export


class _Exporter:
    """One export run: file names, skip decisions, writing, manifest rows."""

    def __init__(self, fs: FeatureSet, out: Path, fmt: str, with_scores: bool, flatten: bool):
        self.fs, self.out, self.fmt = fs, out, fmt
        self.with_scores, self.flatten = with_scores, flatten
        self.classes = score_classes(fs.config)  # the scores' columns, for top1 (not the labels)
        self.scores_file = with_scores and fmt != "npz"

    def header(self) -> list[str]:
        cols = ["id", "file", "label", "T", "D", "fps", "duration"]
        cols += ["segment_start", "segment_end"]
        if self.with_scores:
            cols += (["scores_file"] if self.scores_file else []) + ["top1_index", "top1_score"]
            cols += ["top1"] if self.classes is not None else []
        return cols

    def files(self, vid: str) -> tuple[Path, Path | None]:
        stem = export_stem(vid)  # StoreError for ids that are no file name (".", "..", "/")
        if stem in ("", ".", "..") or "/" in stem or "\0" in stem:  # pragma: no cover
            raise StoreError(f"video id {vid!r} gives no file name inside --out")
        data = self.out / f"{stem}.{self.fmt}"
        return data, (self.out / f"{stem}.{SCORES}.npy" if self.scores_file else None)

    def is_done(self, vid: str, attrs: dict) -> bool:
        """All files of ``vid`` exist and are not older than the store's copy of the video."""
        data, scores = self.files(vid)
        try:
            mtimes = [p.stat().st_mtime for p in (data, scores) if p is not None]
        except FileNotFoundError:
            return False
        written_at = attrs.get("written_at")
        return not (isinstance(written_at, int | float) and written_at > min(mtimes))

    def scores(self, vid: str) -> np.ndarray:
        sc = self.fs.get_extra(vid, SCORES)
        if sc is None:
            raise ValueError("the set stores no clip scores for this video")
        return np.asarray(sc).astype(np.float32)

    def write(self, vid: str, feats: np.ndarray, sc: np.ndarray | None) -> None:
        data, scores_path = self.files(vid)
        try:
            if self.fmt == "npy":
                save_npy(data, feats)
            elif self.fmt == "npz":
                arrays = {"features": feats} | ({SCORES: sc} if sc is not None else {})
                with atomic_write(data) as fh:
                    np.savez(fh, **arrays)
            else:
                write_atomic(data, _csv_bytes(feats))
            if scores_path is not None and sc is not None:
                save_npy(scores_path, sc)
        except OSError as exc:
            raise write_error(self.out, data.name, exc) from exc

    def row(self, vid: str, attrs: dict, shape: tuple[int, int], sc: np.ndarray | None) -> list:
        """The manifest row of a video (ValueError when an attr is not of its kind: a store
        written by someone else); text cells are neutralised when the manifest is written."""
        data, scores_path = self.files(vid)
        r: list = [vid, data.name, _text(attrs, "label"), shape[0], shape[1]]
        r += [_number(attrs, "fps"), _number(attrs, "duration")]
        r += [
            _seconds(attrs.get("segment_start"), "segment_start"),
            _seconds(attrs.get("segment_end"), "segment_end"),
        ]
        if self.with_scores:
            assert sc is not None
            r += [scores_path.name] if scores_path is not None else []
            if sc.ndim != 1:  # a row set's (L, K) scores: no one top-1 for the video
                r += [""] * (3 if self.classes is not None else 2)
                return r
            k = int(np.argmax(sc)) if sc.size else -1
            r += [k, float(sc.reshape(-1)[k]) if k >= 0 else ""]
            if self.classes is not None:
                r += [self.classes[k] if 0 <= k < len(self.classes) else ""]
        return r


def export_set(
    store: str | Path,
    set_name: str,
    out: str | Path,
    fmt: str = "npy",
    *,
    video_ids: Sequence[str] | None = None,
    with_scores: bool = False,
    flatten: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> ExportReport:
    """Export set ``set_name`` of ``store`` into folder ``out`` as ``fmt`` (see the module doc).

    ``video_ids``: only these ids, in this order (ids the set lacks are reported in
    ``missing``, not fatal); default all ids of the set, sorted. ``with_scores``: also the
    stored clip scores (refused when the set has none). ``flatten``: export sets of more than
    2 dims per video as ``(T, prod(rest))``. ``overwrite``: export into a folder holding other
    content, and rewrite files instead of skipping them. Unreadable videos are reported in
    ``failed``; refusals and write errors raise :class:`ConfigError` / :class:`StoreError`.
    """
    t0 = time.monotonic()
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    st = FeatureStore(store)
    rep = ExportReport(out=Path(out), set_name=set_name, format=fmt)
    with st.open_set(set_name, read_only=True) as fs:  # a store may be read-only
        rep.unreadable = fs.bad_shards()
        ids = _ids_to_export(st, fs, video_ids, rep, with_scores, flatten)
        ident = {
            "vidfeat_export": EXPORT_FORMAT,
            "set": set_name,
            "format": fmt,
            "set_json_sha256": fs.config_sha256,
            "with_scores": bool(with_scores),
            "flatten": bool(flatten),
            "store": str(Path(store).resolve()),
            "dtype": "float32",
        }
        _prepare_out(rep.out, ident, overwrite)
        ex = _Exporter(fs, rep.out, fmt, with_scores, flatten)
        rows = []
        from tqdm import tqdm

        with tqdm(
            ids, desc=f"export {set_name}", unit="video", disable=None if progress else True
        ) as bar:
            for vid in bar:
                # a video of a store someone else wrote may be bad in any way (its id, its
                # attrs, its arrays): that video is reported, the others are exported
                try:
                    ex.files(vid)
                    attrs = fs.attrs(vid)
                    feats = _as_td(fs.features(vid), flatten)
                    sc = ex.scores(vid) if with_scores else None
                    row = ex.row(vid, attrs, feats.shape, sc)
                except (StoreError, ValueError, TypeError, OSError) as exc:
                    rep.failed[vid] = (
                        exc.format_message() if isinstance(exc, StoreError) else str(exc)
                    )
                    continue
                if not overwrite and ex.is_done(vid, attrs):
                    rep.skipped.append(vid)
                else:
                    ex.write(vid, feats, sc)
                    rep.written.append(vid)
                rows.append(row)
    _finish(rep.out, ex.header(), rows, rep.missing)
    rep.seconds = time.monotonic() - t0
    return rep


def _ids_to_export(
    st: FeatureStore,
    fs: FeatureSet,
    video_ids: Sequence[str] | None,
    rep: ExportReport,
    with_scores: bool,
    flatten: bool,
) -> list[str]:
    """The ids to export (missing ones go to ``rep.missing``) after the refusals: not
    ``(T, D)`` without ``flatten``, ``flatten`` on a ``(T, D)`` set, ``with_scores`` on a set
    without scores."""
    shape = fs.config.get("feature_shape")
    if isinstance(shape, list) and (len(shape) < 2 or (len(shape) > 2 and not flatten)):
        _refuse_not_td(st, fs, shape, fs.config.get("dtype"))
    if flatten and isinstance(shape, list) and len(shape) == 2:
        _refuse_flatten(fs, shape)
    if video_ids is None:
        ids = fs.ids()
    else:
        ids = list(dict.fromkeys(video_ids))
        rep.missing = [v for v in ids if v not in fs]
        ids = [v for v in ids if v in fs]
    first = _first_readable(fs, ids)
    if not isinstance(shape, list) and first is not None:
        arr = fs.features(first)
        if arr.ndim != 2 and not flatten:
            _refuse_not_td(st, fs, arr.shape, arr.dtype)
        if arr.ndim == 2 and flatten:
            _refuse_flatten(fs, arr.shape)
    if with_scores and first is not None and fs.get_extra(first, SCORES) is None:
        raise ConfigError(
            f"set {fs.name!r} stores no clip scores (its network had no classifier head, e.g. "
            "a raw VGGish or a flow-fields set); export it without --with-scores"
        )
    return ids


def _first_readable(fs: FeatureSet, ids: list[str], tries: int = 20) -> str | None:
    """The first of ``ids`` (among the first ``tries``) whose features can be read: what the
    set holds is judged by a good video, a bad one is reported by the export itself."""
    for vid in ids[:tries]:
        try:
            fs.features(vid)
            fs.get_extra(vid, SCORES)
        except (StoreError, ValueError, OSError):
            continue
        return vid
    return None


def _finish(
    out: Path,
    header: list[str],
    rows: list[list],
    missing: list[str],
    manifest: str = MANIFEST,
    missing_name: str = MISSING_TXT,
) -> None:
    """Write the manifest (complete, atomically) and ``missing.txt``; fsync the folder."""
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")  # no cell a spreadsheet runs as a formula
    w.writerow(header)
    w.writerows(rows)
    body = buf.getvalue().encode("utf-8")
    name = manifest
    try:
        write_atomic(out / manifest, body)
        name = missing_name
        if missing:
            text = "".join(v + "\n" for v in missing).encode("utf-8", "surrogatepass")
            write_atomic(out / missing_name, text)
        else:
            with contextlib.suppress(FileNotFoundError):
                (out / missing_name).unlink()
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(out, name, exc) from exc
