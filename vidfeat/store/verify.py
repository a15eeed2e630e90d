"""Checking and describing a store: :func:`verify_store` opens every shard of every set and
checks it against its set.json (``vidfeat store verify``); :func:`store_info` counts videos,
bytes and failures per set (``vidfeat store info``); ``format_*`` render both as text.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidfeat.errors import StoreError
from vidfeat.store.guard import ShapeRule, file_kind, link_problem, parse_dtype
from vidfeat.store.paths import (
    SET_JSON,
    StoreWarning,
    _h5open,
    _read_set_json,
    partial_is_live,
)
from vidfeat.store.reader import INDEX_FILE, INDEX_JSON, FeatureSet, _shard_entries
from vidfeat.store.sets import FeatureStore, _fmt_value
from vidfeat.store.shardcheck import FIX, few, run_checks, workers_for
from vidfeat.store.shardindex import written_at_value
from vidfeat.store.writer import read_failures


@dataclass
class VerifyReport:
    """Result of :func:`verify_store`: ``problems`` make it fail; ``warnings`` and ``notes``
    do not. ``sets`` holds per-set counts."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sets: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _check_duplicate_times(
    d: Path, name: str, copies: dict[str, list[str]], results: dict, rep: VerifyReport
) -> None:
    """The ``written_at`` an index records decides which copy of a duplicated id readers
    use: check it against the group's attr (duplicates are few; at most 1,000 checked)."""
    checked = 0
    for vid, shards in sorted(copies.items()):
        for shard in shards:
            r = results[shard]
            if vid not in r.index_wat or checked >= 1000:
                continue
            checked += 1
            try:
                with _h5open(d / shard, "r") as f:
                    if link_problem(f.id, vid.encode("utf-8", "surrogateescape")) is not None:
                        continue  # reported by the main pass
                    t = written_at_value(f[vid].attrs.get("written_at"))
            except Exception:  # noqa: BLE001 - reported by the main pass
                continue
            if t != r.index_wat[vid]:
                rep.problems.append(
                    f"set {name!r}: the index of shard {shard} records written_at "
                    f"{r.index_wat[vid]} for duplicated id {vid!r}, its group has {t}: "
                    f"readers may pick the wrong copy; {FIX}"
                )


def _verify_set(
    root: Path, name: str, expect_ids: set[str] | None, rep: VerifyReport, workers: int | None
) -> None:
    d = root / name
    counts = {
        "videos": 0,
        "shards": 0,
        "bad_shards": 0,
        "duplicates": 0,
        "failed": 0,
        "stale_partials": 0,
        "live_partials": 0,
        "unindexed_shards": 0,
    }
    rep.sets[name] = counts
    try:
        cfg = _read_set_json(d / SET_JSON, name)
    except (StoreError, FileNotFoundError) as exc:
        rep.problems.append(exc.format_message() if isinstance(exc, StoreError) else str(exc))
        cfg = {}
    want = _wanted(d, cfg, rep)
    files, skipped = _shard_entries(d)
    shards = [n for n, _ in files]
    for n, kind in skipped.items():
        counts["bad_shards"] += 1
        rep.problems.append(
            f"set {name!r}: {n} is {kind}, not a regular file: readers skip it (a store reads "
            "only its own files); remove it"
        )
    _check_other_files(d, name, rep)
    tasks = [(name, str(d), n, want) for n in shards]
    results = {r.name: r for r in run_checks(tasks, workers_for(len(tasks), workers))}
    done, copies = _tally_shards(shards, results, counts, rep)
    if counts["unindexed_shards"]:
        rep.notes.append(
            f"set {name!r}: {counts['unindexed_shards']} shard(s) carry no index (written by "
            "vidfeat before shards did): readers list their groups instead, which is slower "
            "on the first open"
        )
    counts["videos"] = len(done)
    dups = copies
    counts["duplicates"] = len(dups)
    _check_duplicate_times(d, name, dups, results, rep)
    if dups:
        listing = "; ".join(f"{v!r} in {', '.join(s)}" for v, s in sorted(dups.items())[:10])
        more = f" (+{len(dups) - 10} more)" if len(dups) > 10 else ""
        rep.warnings.append(
            f"set {name!r}: {len(dups)} id(s) stored in several shards: {listing}{more}. "
            "Readers use the newest copy (largest written_at); delete older shards to reclaim "
            "space"
        )
    _check_partials(d, name, counts, rep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)  # non-regular files: reported above
        failed = {r["video_id"] for r in read_failures(d)}
    counts["failed"] = len(failed - done)
    both = failed & done
    if both:
        rep.notes.append(
            f"set {name!r}: {len(both)} id(s) failed once and were extracted later: {few(both)}"
        )
    if expect_ids is not None:
        _check_expected(name, set(expect_ids), done, failed, rep)


def _tally_shards(
    shards: list[str], results: dict, counts: dict[str, int], rep: VerifyReport
) -> tuple[set[str], dict[str, list[str]]]:
    """Count the checked shards into ``counts`` and ``rep``; the ids they hold, and the shards
    of each id stored more than once."""
    done: set[str] = set()
    multi: set[str] = set()
    for shard in shards:
        r = results[shard]
        counts["shards"] += 1
        counts["bad_shards"] += not r.opened
        counts["unindexed_shards"] += r.opened and not r.indexed
        rep.problems.extend(r.problems)
        if not done.isdisjoint(r.ids):
            multi.update(done.intersection(r.ids))
        done.update(r.ids)
    copies: dict[str, list[str]] = {}
    if multi:
        for shard in shards:
            for v in multi.intersection(results[shard].ids):
                copies.setdefault(v, []).append(shard)
    return done, copies


def _check_partials(d: Path, name: str, counts: dict[str, int], rep: VerifyReport) -> None:
    for partial in sorted(d.glob("part-*.h5.partial")):
        if partial_is_live(partial):
            counts["live_partials"] += 1
            rep.notes.append(f"set {name!r}: {partial.name} is being written by a live job")
        else:
            counts["stale_partials"] += 1
            rep.warnings.append(
                f"set {name!r}: stale partial {partial.name} left by a killed job; its videos are "
                "not in the set. The next extraction run removes it (or delete it)"
            )


def _check_expected(
    name: str, expect: set[str], done: set[str], failed: set[str], rep: VerifyReport
) -> None:
    missing = expect - done
    unexpected = done - expect
    if missing:
        why = f" ({len(missing & failed)} of them failed: see failures-*.jsonl)"
        rep.problems.append(
            f"set {name!r}: {len(missing)} expected id(s) missing: {few(missing)}"
            f"{why if missing & failed else ''}; run the extraction for this list again "
            "(add --retry-failed for the failed ones)"
        )
    if unexpected:
        rep.problems.append(
            f"set {name!r}: {len(unexpected)} id(s) not in the expected list: "
            f"{few(unexpected)}; check that --videos is the list this set was extracted from"
        )


def _wanted(d: Path, cfg: dict, rep: VerifyReport) -> tuple:
    """(feature_shape, dtype, storage_dtype) of set.json as shard checks compare them; a
    malformed feature_shape or dtype is a problem of the set, and not compared."""
    shape: list | None = None
    try:
        rule = ShapeRule.from_config(cfg, str(d / SET_JSON))
        shape = None if rule.dims is None else list(rule.dims)
    except StoreError as exc:
        rep.problems.append(exc.format_message())
    dtype = cfg.get("dtype")
    parsed = None if dtype is None else parse_dtype(dtype)
    if dtype is not None and parsed is None:
        rep.problems.append(
            f"{d / SET_JSON}: dtype {_fmt_value(dtype, 60)} is not a numeric dtype; restore the "
            "file or delete the set and extract again"
        )
    return shape, parsed, cfg.get("storage_dtype")


def _check_other_files(d: Path, name: str, rep: VerifyReport) -> None:
    """Failures logs that are not regular files are problems (readers skip them, and a
    symlink would read outside the store); index caches that are not, warnings (ignored and
    rebuilt)."""
    for p in sorted(d.glob("failures-*.jsonl")):
        with contextlib.suppress(OSError):
            mode = os.lstat(p).st_mode
            if not stat.S_ISREG(mode):
                rep.problems.append(
                    f"set {name!r}: {p.name} is {file_kind(mode)}, not a regular file: readers "
                    "skip it (a store reads only its own files); remove it"
                )
    for cache in (INDEX_FILE, INDEX_JSON):
        with contextlib.suppress(OSError):
            mode = os.lstat(d / cache).st_mode
            if not stat.S_ISREG(mode):
                rep.warnings.append(
                    f"set {name!r}: {cache} is {file_kind(mode)}, not a regular file: readers "
                    "ignore it; remove it"
                )


def verify_store(
    root: str | Path, expect_ids: set[str] | None = None, *, workers: int | None = None
) -> VerifyReport:
    """Open every shard of every set and check it against its set.json.

    Problems: unreadable set.json or shards, groups without ``features``, shapes not matching
    ``feature_shape`` (None/-1 = any), dtypes not matching ``dtype`` (float16 is accepted when
    set.json has ``storage_dtype: float16`` or the writer marked the array as narrowed), NaN/Inf
    in float datasets, each shard's index not matching its groups (ids, byte offsets, shapes,
    dtypes; the ``written_at`` of duplicated ids), and with ``expect_ids`` missing and
    unexpected ids. Also everything readers refuse in a store someone else wrote
    (:mod:`vidfeat.store.guard`): shards and failures logs that are not regular files
    (symlinks, FIFOs, directories), soft/external links, datasets whose data lies in other
    files (external raw storage, virtual datasets), arrays past the size cap or with chunks
    that store more than their data, a malformed ``feature_shape`` or ``dtype`` in set.json.
    Warnings: ids in several shards, stale partials. Notes: live partials, ids that failed and
    later succeeded, shards without an index (written by older versions).

    Shards are checked in ``workers`` processes (default: one per CPU, at most 8, when the
    store has hundreds of shards; 1 = in this process).
    """
    root = Path(root)
    rep = VerifyReport()
    if not root.is_dir():
        rep.problems.append(f"no store at {root}; check the path")
        return rep
    store = FeatureStore(root)
    names = store.sets()
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and p.name not in names:
            if any(p.glob("part-*.h5")):
                rep.warnings.append(
                    f"{p} holds shards but no {SET_JSON}; it is not a readable set. Restore "
                    f"{SET_JSON} or move the folder out of the store"
                )
    if not names:
        rep.warnings.append(f"store {root} holds no feature sets yet (run vidfeat extract)")
    for name in names:
        _verify_set(root, name, expect_ids, rep, workers)
    return rep


def store_info(root: str | Path) -> list[dict]:
    """One row per set: ``name``, ``config`` (set.json), ``videos``, ``bytes`` (on disk, all
    files of the set folder), ``shards``, ``bad_shards``, ``failures`` (distinct ids that
    failed and are not completed), ``partials`` (partial shard files) and ``duplicates``."""
    root = Path(root)
    rows = []
    store = FeatureStore(root)
    for name in store.sets():
        d = store.set_dir(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StoreWarning)  # bad shards are counted instead
                fs = FeatureSet(d)
        except (StoreError, ValueError, OSError) as exc:
            rows.append(
                {
                    "name": name,
                    "error": str(exc),
                    "config": {},
                    "videos": 0,
                    "bytes": 0,
                    "shards": 0,
                    "bad_shards": 0,
                    "failures": 0,
                    "partials": 0,
                    "duplicates": 0,
                }
            )
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", StoreWarning)
                failed = {r["video_id"] for r in fs.failures()}
            notes = [str(w.message) for w in caught if issubclass(w.category, StoreWarning)]
            notes += [f"{n} is {k}, not a regular file: skipped" for n, k in fs._skipped.items()]
            size = partials = 0
            with os.scandir(d) as it:  # one pass: a set may hold tens of thousands of files
                for e in it:
                    with contextlib.suppress(OSError):
                        if e.is_file(follow_symlinks=False):
                            size += e.stat(follow_symlinks=False).st_size
                            partials += e.name.endswith(".h5.partial") and e.name.startswith(
                                "part-"
                            )
            rows.append(
                {
                    "name": name,
                    "config": fs.config,
                    "videos": len(fs),
                    "bytes": size,
                    "shards": len(fs._names),  # the completed shards the set was opened with
                    "bad_shards": len(fs.bad_shards()),
                    "failures": sum(v not in fs for v in failed),
                    "partials": partials,
                    "duplicates": len(fs.duplicates()),
                    "notes": notes,
                    "rows": fs.lengths() if "grid" in fs.config else None,
                }
            )
        finally:
            fs.close()
    return rows


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def format_info(rows: list[dict]) -> str:
    """Human-readable text for ``vidfeat store info``: one block per set."""
    if not rows:
        return "no feature sets in this store (run `vidfeat extract ...` to create one)"
    out = []
    for r in rows:
        head = (
            f"{r['name']}: {r['videos']} videos, {r['shards']} shards, "
            f"{_human_bytes(r['bytes'])}, {r['failures']} failed"
        )
        extras = []
        if r.get("partials"):
            extras.append(f"{r['partials']} partial")
        if r.get("bad_shards"):
            extras.append(f"{r['bad_shards']} unreadable shard(s): run `vidfeat store verify`")
        if r.get("duplicates"):
            extras.append(f"{r['duplicates']} duplicated id(s)")
        if extras:
            head += " (" + "; ".join(extras) + ")"
        out.append(head)
        if r.get("error"):
            out.append(f"  error: {r['error']}")
        out += [f"  note: {n}" for n in r.get("notes") or []]
        rows = r.get("rows")
        if rows is not None and len(rows[rows >= 0]):
            L = rows[rows >= 0]
            q = np.percentile(L, [0, 50, 90, 100]).astype(int)
            out.append(
                f"  rows per video: min {q[0]:,}, median {q[1]:,}, 90% {q[2]:,}, max {q[3]:,} "
                f"({int(L.sum()):,} rows)"
            )
        cfg = r.get("config") or {}
        main = {k: v for k, v in cfg.items() if not k.endswith("_version")}
        versions = {k: v for k, v in cfg.items() if k.endswith("_version")}
        for k in sorted(main):
            v = main[k]
            plain = isinstance(v, str) and len(v) <= 90 and v.isprintable()  # no escapes
            shown = v if plain else _fmt_value(v, 90)
            out.append(f"  {k}: {shown}")
        if versions:
            vs = ", ".join(f"{k[: -len('_version')]} {v}" for k, v in sorted(versions.items()))
            out.append(f"  versions: {vs}")
    return "\n".join(out)


def format_verify(report: VerifyReport) -> str:
    """Human-readable text for ``vidfeat store verify``; the last line says OK or the count."""
    out = []
    for name, c in report.sets.items():
        line = (
            f"{name}: {c['videos']} videos in {c['shards']} shards, {c['failed']} failed"
            f", {c['duplicates']} duplicated"
        )
        if c["bad_shards"]:
            line += f", {c['bad_shards']} unreadable shard(s)"
        if c["stale_partials"] or c["live_partials"]:
            line += f", partials: {c['stale_partials']} stale / {c['live_partials']} live"
        out.append(line)
    out += [f"PROBLEM: {p}" for p in report.problems]
    out += [f"warning: {w}" for w in report.warnings]
    out += [f"note: {n}" for n in report.notes]
    if report.ok:
        out.append("OK: no problems found")
    else:
        out.append(f"FAILED: {len(report.problems)} problem(s)")
    return "\n".join(out)
