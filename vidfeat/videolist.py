"""Video lists: which videos to process, with labels, stable ids and a stable class index.

Three formats are read (detected from the first line):

* **generic CSV** with a header: ``path,label`` plus optional ``video_id`` and ``split``; paths
  are relative to the CSV's folder or absolute; ``label`` may be omitted for extraction;
* **Kinetics annotation CSV**: ``label,youtube_id,time_start,time_end,split[,is_cc]`` (the test
  split has no label column); files are found under ``video_root`` as
  ``{youtube_id}_{start:06d}_{end:06d}.mp4``, the convention of the Kinetics download tools.
  Rows whose file is missing are dropped and reported (``VideoList.missing``), not fatal;
* **plain text**: one path per line (no header, no labels) — extraction only.

Ids: the ``video_id`` column, else the file name without extension (Kinetics: the file stem).
Ids are HDF5 group names in the store, so ``/`` and NUL are refused, as are ``.`` and ``..``.
The class index is the sorted list of label names; a validation list is read against the
training list's classes, and a label the training list never saw is an error.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from vidfeat.errors import ListError
from vidfeat.outdir import write_atomic

GENERIC_COLUMNS = {"path", "label", "video_id", "split"}
KINETICS_COLUMNS = {"label", "youtube_id", "time_start", "time_end", "split", "is_cc"}


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    path: Path
    label: str | None = None
    split: str | None = None
    line: int = 0  # line in the list file (1-based; the header is line 1)


@dataclass
class VideoList:
    """The records of one list file, plus the class index they are labelled with."""

    source: Path
    records: list[VideoRecord]
    classes: list[str]
    format: str
    missing: list[tuple[int, Path]] = field(default_factory=list)  # Kinetics rows without a file

    def __len__(self) -> int:
        return len(self.records)

    def missing_note(self, examples: int = 3) -> str | None:
        """One line about the rows whose video file is absent (a Kinetics list's videos that
        were never downloaded): they are skipped, not fatal. None when there are none."""
        if not self.missing:
            return None
        n, total = len(self.missing), len(self.missing) + len(self.records)
        shown = ", ".join(f"line {line}: {p.name}" for line, p in self.missing[:examples])
        more = f", and {n - examples} more" if n > examples else ""
        return (
            f"{n} of {total} rows of {self.source} have no video file and are skipped "
            f"({shown}{more}); `vidfeat data probe {self.source} --video-root ...` lists them all"
        )

    def __iter__(self):
        return iter(self.records)

    @property
    def labelled(self) -> bool:
        return bool(self.records) and all(r.label is not None for r in self.records)

    def class_index(self, label: str) -> int:
        return self.classes.index(label)

    def label_indices(self) -> list[int]:
        lookup = {c: i for i, c in enumerate(self.classes)}
        return [lookup[r.label] for r in self.records]  # type: ignore[index]

    def ids(self) -> list[str]:
        return [r.video_id for r in self.records]

    def by_id(self) -> dict[str, VideoRecord]:
        return {r.video_id: r for r in self.records}

    def subset(self, ids: set[str]) -> VideoList:
        return VideoList(
            self.source,
            [r for r in self.records if r.video_id in ids],
            self.classes,
            self.format,
            self.missing,
        )


def check_id(video_id: str, where: str | Path, line: int | None) -> str:
    """Refuse ids that could not be HDF5 group names or could escape the store."""
    if not video_id or video_id in (".", "..") or "/" in video_id or "\x00" in video_id:
        raise ListError(
            where,
            line,
            f"invalid video id {video_id!r}: ids must be non-empty, not '.' or '..', and "
            "contain no '/' (add a video_id column with safe ids)",
        )
    return video_id


def load_list(
    path: str | Path,
    *,
    video_root: str | Path | None = None,
    classes: list[str] | None = None,
    require_labels: bool = False,
    split: str | None = None,
) -> VideoList:
    """Read a video list (format detected). ``classes``: the training class index this list
    must conform to (validation lists). ``split``: keep only rows of that split."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ListError(path, None, "video list not found") from None
    except UnicodeDecodeError:
        raise ListError(path, None, "not a UTF-8 text file; a video list is CSV or text") from None
    except OSError as exc:
        raise ListError(path, None, f"cannot read: {exc.strerror}") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise ListError(path, None, "the video list is empty")
    fmt, header = _detect(first)
    if fmt == "kinetics":
        vl = _read_kinetics(path, text, video_root)
    elif fmt == "csv":
        vl = _read_generic(path, text)
    elif fmt == "unknown":
        raise ListError(
            path,
            1,
            f"unknown columns {header}: expected a header with 'path' (and optional 'label', "
            "'video_id', 'split'), a Kinetics CSV (label,youtube_id,time_start,time_end,split), "
            "or one path per line",
        )
    else:
        vl = _read_plain(path, lines)
    if split is not None:
        vl.records = [r for r in vl.records if r.split == split]
    if not vl.records:
        what = f" of split {split!r}" if split else ""
        raise ListError(path, None, f"the video list has no videos{what}")
    _check_duplicates(path, vl.records)
    has_labels = [r.label is not None for r in vl.records]
    if any(has_labels) and not all(has_labels):
        r = vl.records[has_labels.index(False)]
        raise ListError(path, r.line, "row without a label in a labelled list")
    if require_labels and not all(has_labels):
        raise ListError(path, None, "this command needs labels: add a 'label' column")
    found = sorted({r.label for r in vl.records if r.label is not None})
    if classes is not None:
        known = set(classes)
        for r in vl.records:
            if r.label is not None and r.label not in known:
                raise ListError(
                    path,
                    r.line,
                    f"label {r.label!r} never appears in the training list "
                    f"({len(classes)} classes); fix the label or retrain with it",
                )
        vl.classes = list(classes)
    else:
        vl.classes = found
    return vl


def _detect(first: str) -> tuple[str, list[str]]:
    """The format of a list from its first line: kinetics, csv, text, or unknown (columns
    that are neither), and the header cells."""
    header = [h.strip().lower() for h in next(csv.reader([first]))]
    if "youtube_id" in header:
        return "kinetics", header
    if "path" in header:
        return "csv", header
    return ("unknown" if len(header) > 1 else "text"), header


def list_format(path: str | Path) -> str | None:
    """The format :func:`load_list` reads ``path`` as (kinetics, csv, text or unknown); None
    when it cannot be read (loading it names the problem)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    first = next((ln for ln in text.splitlines() if ln.strip()), None)
    return None if first is None else _detect(first)[0]


def _check_duplicates(path: Path, records: list[VideoRecord]) -> None:
    seen: dict[str, int] = {}
    for r in records:
        if r.video_id in seen:
            raise ListError(
                path,
                r.line,
                f"duplicate video id {r.video_id!r} (first on line {seen[r.video_id]}); ids "
                "come from the video_id column or the file name — add a video_id column",
            )
        seen[r.video_id] = r.line


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base / q)


def _rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    for cells in reader:
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            continue
        if len(cells) != len(header):
            raise ListError(path, line, f"expected {len(header)} fields, found {len(cells)}")
        rows.append((line, {h: c.strip() for h, c in zip(header, cells, strict=True)}))
    return header or [], rows


def _read_generic(path: Path, text: str) -> VideoList:
    header, rows = _rows(path, text)
    unknown = [h for h in header if h not in GENERIC_COLUMNS]
    if unknown:
        raise ListError(
            path, 1, f"unknown columns {unknown}; a generic list has path,label[,video_id,split]"
        )
    if len(set(header)) != len(header):
        raise ListError(path, 1, "a column name appears twice in the header")
    base = path.parent
    records = []
    for line, row in rows:
        if not row["path"]:
            raise ListError(path, line, "empty path")
        p = _resolve(base, row["path"])
        vid = row.get("video_id") or Path(row["path"]).stem
        label = row.get("label") or None
        records.append(
            VideoRecord(check_id(vid, path, line), p, label, row.get("split") or None, line)
        )
    return VideoList(path, records, [], "csv")


def _read_kinetics(path: Path, text: str, video_root: str | Path | None) -> VideoList:
    header, rows = _rows(path, text)
    unknown = [h for h in header if h not in KINETICS_COLUMNS]
    if unknown:
        raise ListError(
            path,
            1,
            f"unknown columns {unknown} in a Kinetics CSV "
            "(label,youtube_id,time_start,time_end,split[,is_cc])",
        )
    for need in ("youtube_id", "time_start", "time_end"):
        if need not in header:
            raise ListError(path, 1, f"Kinetics CSV without a {need!r} column")
    if video_root is None:
        raise ListError(path, None, "a Kinetics CSV needs --video-root (the downloaded videos)")
    root = Path(video_root)
    records, missing = [], []
    for line, row in rows:
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except ValueError:
            raise ListError(path, line, "time_start/time_end must be numbers") from None
        stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
        label = row.get("label") or None
        candidates = [root / f"{stem}.mp4"]
        if label is not None:  # the download tools can also sort videos into class folders
            candidates.append(root / label / f"{stem}.mp4")
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            missing.append((line, candidates[0]))
            continue
        records.append(
            VideoRecord(check_id(stem, path, line), found, label, row.get("split") or None, line)
        )
    return VideoList(path, records, [], "kinetics", missing)


def _read_plain(path: Path, lines: list[str]) -> VideoList:
    base = path.parent
    records = []
    for i, ln in enumerate(lines, start=1):
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        records.append(VideoRecord(check_id(Path(s).stem, path, i), _resolve(base, s), line=i))
    return VideoList(path, records, [], "text")


def write_classes(path: str | Path, classes: list[str]) -> None:
    """The class index saved with every run: one label per line, index = line number. Written
    whole or not at all (:func:`vidfeat.outdir.write_atomic`, UTF-8)."""
    write_atomic(path, "".join(c + "\n" for c in classes))


def read_classes(path: str | Path) -> list[str]:
    p = Path(path)
    try:
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise ListError(p, None, "classes file not found") from None
    if len(set(names)) != len(names):
        raise ListError(p, None, "duplicate class names")
    return names


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
