"""Checking and describing a store: :func:`verify_store` opens every shard of every set and
checks it against its set.json (``vidfeat store verify``); :func:`store_info` counts videos,
bytes and failures per set (``vidfeat store info``); ``format_*`` render both as text.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5o

from vidfeat.errors import StoreError
from vidfeat.store.paths import (
    FEATURES,
    SET_JSON,
    StoreWarning,
    _h5open,
    _read_set_json,
    partial_is_live,
)
from vidfeat.store.reader import FeatureSet, _shard_files
from vidfeat.store.sets import FeatureStore, _fmt_value
from vidfeat.store.shardindex import (
    decode_shard_index,
    open_shard,
    read_index_attr,
    written_at_value,
)
from vidfeat.store.writer import FLOAT16_FROM, read_failures


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


def _few(items, n: int = 10) -> str:
    items = sorted(items)
    s = ", ".join(repr(x) for x in items[:n])
    return s + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def _shape_ok(shape: tuple[int, ...], want: Any) -> bool:
    if not isinstance(want, list | tuple):
        return True
    if len(shape) != len(want):
        return False
    if tuple(want) == shape:
        return True
    return all(w is None or w == -1 or int(w) == s for s, w in zip(shape, want, strict=True))


def _check_array(a: np.ndarray) -> str | None:
    if a.dtype.kind not in "fc":
        return None
    finite = np.isfinite(a)
    if finite.all():
        return None
    n_nan = int(np.isnan(a).sum())
    n_inf = int(a.size - finite.sum()) - n_nan
    parts = [f"{n_nan} NaN"] if n_nan else []
    parts += [f"{n_inf} Inf"] if n_inf else []
    return " and ".join(parts)


_FIX = "delete that shard and run the extraction again (completed videos are skipped)"


@dataclass
class _ShardResult:
    """What checking one shard found (built in a worker process for large stores)."""

    name: str
    opened: bool = True
    ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    indexed: bool = False
    index_wat: dict[str, float] = field(default_factory=dict)


class _Dtypes:
    """numpy dtypes of HDF5 types, converted once per distinct type (h5py's conversion costs
    more than opening the dataset)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, np.dtype]] = []

    def __call__(self, did: h5d.DatasetID) -> np.dtype:
        tid = did.get_type()
        for t, dt in self.seen:
            if t == tid:  # H5Tequal
                return dt
        dt = did.dtype
        self.seen.append((tid, dt))
        return dt


def _read_array(did: h5d.DatasetID, fd: int | None, offset: int, shape, dtype) -> np.ndarray:
    if offset >= 0 and fd is not None:
        n = dtype.itemsize * math.prod(shape)
        buf = os.pread(fd, n, offset)
        if len(buf) != n:
            raise StoreError(f"the file ends {n - len(buf)} bytes before the array does")
        return np.frombuffer(buf, dtype).reshape(shape)
    return h5py.Dataset(did)[()]


_F = FEATURES.encode()


def _check_video(
    root: Any, vid: bytes, children: list[bytes], fd: int | None, ctx: tuple, out: list[str]
) -> tuple[int, tuple[int, ...], str] | None:
    """Check one video (``children``: the names linked in its group); returns the layout of
    its features for the index comparison.

    Low-level h5py throughout, each dataset opened by its path: on shards of small videos
    the high-level objects cost several times the HDF5 work, and verify opens them all."""
    (want_shape, want_dtype, storage), dtypes, where = ctx
    try:
        did = h5o.open(root, vid + b"/" + _F) if _F in children else None
    except KeyError:
        did = None
    if not isinstance(did, h5d.DatasetID):
        out.append(f"{where()}: no '{FEATURES}' dataset; {_FIX}")
        return None
    shape = did.get_space().get_simple_extent_dims() or ()
    dtype = dtypes(did)
    offset = -1
    if dtype.kind in "fiub" and math.prod(shape) > 0:
        got = did.get_offset()  # None unless contiguous and allocated (never when chunked)
        offset = -1 if got is None else int(got)
    if not _shape_ok(shape, want_shape):
        out.append(
            f"{where()}: features have shape {list(shape)}, set.json says {want_shape}; {_FIX}"
        )
    if want_dtype is not None and dtype != np.dtype(want_dtype):
        narrowed = dtype == np.float16 and (
            storage == "float16" or h5a.exists(did, FLOAT16_FROM.encode())
        )
        if not narrowed:
            out.append(f"{where()}: features are {dtype}, set.json says {want_dtype}; {_FIX}")
    for dname in children:
        obj = did if dname == _F else h5o.open(root, vid + b"/" + dname)
        if not isinstance(obj, h5d.DatasetID):
            continue
        dt = dtype if obj is did else dtypes(obj)
        if dt.kind in "fc":
            if obj is did:
                arr = _read_array(did, fd, offset, shape, dtype)
            else:
                arr = h5py.Dataset(obj)[()]
            bad = _check_array(arr)
            if bad:
                out.append(
                    f"{where()}: '{dname.decode()}' holds {bad} values; check the input video "
                    f"and model, then {_FIX}"
                )
    return offset, shape, dtype.str


def _links(root: Any) -> dict[bytes, list[bytes] | Exception]:
    """The names linked in each video group of a shard (root name -> child names), listed in
    one HDF5 visit; group by group when the visit fails, the error standing for the list of
    a group that cannot be listed."""
    names: list[bytes] = []
    try:
        root.links.visit(names.append)  # "vid", "vid/features", "vid/scores", ...
    except Exception:  # noqa: BLE001 - a broken group somewhere
        out: dict[bytes, list[bytes] | Exception] = {}
        for n in root:
            try:
                g = h5o.open(root, n)
                out[n] = list(g) if isinstance(g, h5g.GroupID) else []
            except Exception as exc:  # noqa: BLE001 - reported for this video
                out[n] = exc
        return out
    groups: dict[bytes, list[bytes] | Exception] = {}
    for n in names:
        vid, _, child = n.partition(b"/")
        kids = groups.setdefault(vid, [])
        if child and b"/" not in child:
            kids.append(child)  # type: ignore[union-attr]
    return groups


def _verify_shard(set_name: str, d: str, shard: str, want: tuple) -> _ShardResult:
    """Check every video of one shard against set.json (``want``: feature_shape, dtype,
    storage_dtype) and the shard's index against its groups."""
    res = _ShardResult(shard)
    path = Path(d) / shard
    try:
        fid = open_shard(path)
    except Exception as exc:  # noqa: BLE001
        res.opened = False
        res.problems.append(f"set {set_name!r}: shard {shard} cannot be opened ({exc}); {_FIX}")
        return res
    dtypes = _Dtypes()
    found: dict[str, tuple[int, tuple[int, ...], str]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(fid.close)
        fd: int | None = None
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            stack.callback(os.close, fd)
        root = h5g.open(fid, b"/")
        for bvid, children in _links(root).items():
            vid = bvid.decode("utf-8", "surrogateescape")
            res.ids.append(vid)

            def where(vid: str = vid) -> str:
                return f"set {set_name!r}, video {vid!r} ({shard})"

            try:
                if isinstance(children, Exception):
                    raise children
                lay = _check_video(root, bvid, children, fd, (want, dtypes, where), res.problems)
                if lay is not None:
                    found[vid] = lay
            except Exception as exc:  # noqa: BLE001 - report and go on with the next video
                res.problems.append(f"{where()}: cannot be read ({exc}); {_FIX}")
        raw = read_index_attr(fid)
        if raw is not None:
            res.indexed = True
            mismatch = _index_mismatch(raw, res.ids, found, res)
            if mismatch:
                res.problems.append(
                    f"set {set_name!r}: the index of shard {shard} does not match its groups "
                    f"({mismatch}): the shard was changed after it was completed, or is "
                    f"corrupt; readers may return wrong arrays: {_FIX}"
                )
    return res


def _index_mismatch(raw: Any, ids: list[str], found: dict, res: _ShardResult) -> str:
    """How a shard's index differs from its groups ('' when it matches)."""
    listing = decode_shard_index(raw)
    if listing is None:
        return "it cannot be decoded"
    rows = listing.rows()
    res.index_wat = {v: w for v, _, _, w in rows}
    parts = []
    only_index = set(listing.ids) - set(ids)
    only_groups = set(ids) - set(listing.ids)
    if only_index:
        parts.append(f"ids only in the index: {_few(only_index, 5)}")
    if only_groups:
        parts.append(f"ids only in the groups: {_few(only_groups, 5)}")
    diff = []
    for vid, off, (shape, dtype), _ in rows:
        got = found.get(vid)
        if got is not None and got != (off, shape, dtype):
            diff.append(
                f"{vid!r}: offset {off}, shape {list(shape)}, {dtype} in the index but "
                f"{got[0]}, {list(got[1])}, {got[2]} in the file"
            )
    if diff:
        parts.append(f"{len(diff)} layout(s) differ: " + "; ".join(diff[:3]))
    return "; ".join(parts)


def _verify_shards(tasks: list[tuple[str, str, str, tuple]]) -> list[_ShardResult]:
    """Check a batch of shards (the unit of work of a worker process)."""
    return [_verify_shard(*t) for t in tasks]


def _workers(n_shards: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, int(workers))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    # a worker process costs ~0.5 s to start: only worth it for hundreds of shards
    return max(1, min(cpus, 8, n_shards // 200))


# A worker is a fresh interpreter running this, fed pickled (sys.path, tasks) on stdin: unlike
# multiprocessing's spawn it never re-imports the caller's __main__ (an unguarded script
# calling verify_store would run again in each worker), and unlike fork it copies no threads
# or HDF5 state of the caller.
_WORKER = (
    "import pickle, sys\n"
    "path, tasks = pickle.load(sys.stdin.buffer)\n"
    "sys.path[:0] = [p for p in path if p not in sys.path]\n"
    "from vidfeat.store.verify import _verify_shards\n"
    "sys.stdout.buffer.write(pickle.dumps(_verify_shards(tasks)))\n"
)


def _run(tasks: list[tuple[str, str, str, tuple]], workers: int) -> list[_ShardResult]:
    """Check shards, in ``workers`` processes when more than one (interleaved shares so
    each gets alike shards); a share whose worker fails is checked here instead."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        return _verify_shards(tasks)
    shares = [tasks[i::workers] for i in range(workers)]
    procs: list[subprocess.Popen | None] = []
    for share in shares:
        p = None
        try:
            p = subprocess.Popen(
                [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            p.stdin.write(pickle.dumps((sys.path, share)))  # type: ignore[union-attr]
            p.stdin.close()  # type: ignore[union-attr]
        except OSError:  # cannot start (or it died at once): this process checks the share
            if p is not None:
                p.kill()
                p.wait()
            p = None
        procs.append(p)
    by_name: dict[str, _ShardResult] = {}
    for p, share in zip(procs, shares, strict=True):
        got = None
        if p is not None:
            data = p.stdout.read()  # type: ignore[union-attr]
            p.stdout.close()  # type: ignore[union-attr]
            if p.wait() == 0:
                with contextlib.suppress(Exception):
                    got = pickle.loads(data)
        if got is None:
            got = _verify_shards(share)
        by_name.update((r.name, r) for r in got)
    return [by_name[t[2]] for t in tasks]


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
                    t = written_at_value(f[vid].attrs.get("written_at"))
            except Exception:  # noqa: BLE001 - reported by the main pass
                continue
            if t != r.index_wat[vid]:
                rep.problems.append(
                    f"set {name!r}: the index of shard {shard} records written_at "
                    f"{r.index_wat[vid]} for duplicated id {vid!r}, its group has {t}: "
                    f"readers may pick the wrong copy; {_FIX}"
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
        rep.problems.append(str(exc))
        cfg = {}
    want = (cfg.get("feature_shape"), cfg.get("dtype"), cfg.get("storage_dtype"))
    shards = [n for n, _ in _shard_files(d)]
    tasks = [(name, str(d), n, want) for n in shards]
    results = {r.name: r for r in _run(tasks, _workers(len(tasks), workers))}
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
    copies: dict[str, list[str]] = {}  # the shards of ids stored more than once
    if multi:
        for shard in shards:
            for v in multi.intersection(results[shard].ids):
                copies.setdefault(v, []).append(shard)
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
    failed = {r["video_id"] for r in read_failures(d)}
    counts["failed"] = len(failed - done)
    both = failed & done
    if both:
        rep.notes.append(
            f"set {name!r}: {len(both)} id(s) failed once and were extracted later: {_few(both)}"
        )
    if expect_ids is not None:
        missing = set(expect_ids) - done
        unexpected = done - set(expect_ids)
        if missing:
            why = f" ({len(missing & failed)} of them failed: see failures-*.jsonl)"
            rep.problems.append(
                f"set {name!r}: {len(missing)} expected id(s) missing: {_few(missing)}"
                f"{why if missing & failed else ''}; run the extraction for this list again "
                "(add --retry-failed for the failed ones)"
            )
        if unexpected:
            rep.problems.append(
                f"set {name!r}: {len(unexpected)} id(s) not in the expected list: "
                f"{_few(unexpected)}; check that --videos is the list this set was extracted from"
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
    unexpected ids. Warnings: ids in several shards, stale partials. Notes: live partials, ids
    that failed and later succeeded, shards without an index (written by older versions).

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
        except StoreError as exc:
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
            failed = {r["video_id"] for r in fs.failures()}
            size = partials = 0
            with os.scandir(d) as it:  # one pass: a set may hold tens of thousands of files
                for e in it:
                    with contextlib.suppress(OSError):
                        if e.is_file():
                            size += e.stat().st_size
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
        cfg = r.get("config") or {}
        main = {k: v for k, v in cfg.items() if not k.endswith("_version")}
        versions = {k: v for k, v in cfg.items() if k.endswith("_version")}
        for k in sorted(main):
            v = main[k]
            shown = v if isinstance(v, str) and len(v) <= 90 else _fmt_value(v, 90)
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
