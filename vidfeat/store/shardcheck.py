"""Checking one shard, for ``vidfeat store verify``: every video against set.json, NaN/Inf in
float arrays, the shard's index against its groups; and running these checks in worker
processes for large stores.

On shards of small videos verify's cost is HDF5 opening each video's dataset (~65 us); so
this module uses h5py's low-level API (the high-level objects cost several times that),
lists a shard's links in one visit, opens datasets by path, and checks the contiguous float
arrays of a shard in one read and one numpy pass rather than a few numpy calls per video.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from h5py import h5a, h5d, h5g, h5l, h5o

from vidfeat.children import python_command
from vidfeat.cores import available_cores
from vidfeat.store.guard import (
    Refused,
    check_dataset,
    link_problem,
    open_regular,
    read_dataset,
    size_problem,
)
from vidfeat.store.paths import FEATURES
from vidfeat.store.shardindex import decode_shard_index, open_shard, read_index_attr
from vidfeat.store.writer import FLOAT16_FROM


def few(items, n: int = 10) -> str:
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


FIX = "delete that shard and run the extraction again (completed videos are skipped)"


@dataclass
class ShardResult:
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


_F = FEATURES.encode()
_GATHER_MAX = 4096  # arrays up to this many bytes are checked for NaN in one numpy gather
_READ_MAX = 64 * 2**20  # a shard's raw arrays are read with one pread up to this span


def _check_video(
    root: Any, vid: bytes, children: list[bytes], ctx: tuple, out: list[str], raw: list
) -> tuple[int, tuple[int, ...], str] | None:
    """Check one video (``children``: the names linked in its group); returns the layout of
    its features for the index comparison. Contiguous float features are left in ``raw``
    for :func:`_check_raw`, which reads a shard's arrays at once.

    Low-level h5py throughout, each dataset opened by its path: on shards of small videos
    the high-level objects cost several times the HDF5 work, and verify opens them all."""
    (want_shape, want_dtype, storage), dtypes, where, size = ctx
    path = vid + b"/" + _F
    if _F not in children:
        out.append(f"{where()}: no '{FEATURES}' dataset; {FIX}")
        return None
    try:
        did = h5d.open(root, path)
    except Exception:  # noqa: BLE001 - not a dataset (or unreadable): look closer
        obj = h5o.open(root, path)  # raises what cannot be read (a hard link: checked)
        did = obj if isinstance(obj, h5d.DatasetID) else None
    if did is None:
        out.append(f"{where()}: no '{FEATURES}' dataset; {FIX}")
        return None
    shape = did.get_space().get_simple_extent_dims() or ()
    dtype = dtypes(did)
    offset = -1
    if dtype.kind in "fiub" and math.prod(shape) > 0:
        got = did.get_offset()  # None unless contiguous and allocated (never when chunked)
        offset = -1 if got is None else int(got)
    why = size_problem(shape, dtype.itemsize, None)
    if why is None and offset < 0:
        try:  # data outside the file, filters vidfeat does not write, ...
            check_dataset(did, None, size, chunks=True)
        except Refused as exc:
            why = exc.format_message()
    if why is not None:
        out.append(f"{where()}: '{FEATURES}' is not read: {why}; {FIX}")
        return None
    if not _shape_ok(shape, want_shape):
        out.append(
            f"{where()}: features have shape {list(shape)}, set.json says {want_shape}; {FIX}"
        )
    if want_dtype is not None and dtype != want_dtype:
        narrowed = dtype == np.float16 and (
            storage == "float16" or h5a.exists(did, FLOAT16_FROM.encode())
        )
        if not narrowed:
            out.append(f"{where()}: features are {dtype}, set.json says {want_dtype}; {FIX}")
    for dname in children:
        obj = did if dname == _F else h5o.open(root, vid + b"/" + dname)
        if not isinstance(obj, h5d.DatasetID):
            continue
        dt = dtype if obj is did else dtypes(obj)
        if obj is not did:
            try:
                plan = check_dataset(obj, None, size, chunks=True)
            except Refused as exc:
                out.append(f"{where()}: '{dname.decode()}' is not read: {exc}; {FIX}")
                continue
        if dt.kind not in "fc":
            continue
        if obj is did and offset >= 0:
            raw.append((offset, dtype.itemsize * math.prod(shape), dtype, where))
            continue
        if obj is did:
            plan = check_dataset(did, None, size)
        try:
            bad = _check_array(read_dataset(obj, plan))
        except Refused as exc:
            out.append(f"{where()}: '{dname.decode()}' is not read: {exc}; {FIX}")
            continue
        if bad:
            out.append(
                f"{where()}: '{dname.decode()}' holds {bad} values; check the input video "
                f"and model, then {FIX}"
            )
    return offset, shape, dtype.str


def _check_raw(fd: int | None, raw: list, out: list[tuple[int, str]]) -> None:
    """NaN/Inf in a shard's contiguous float features (``raw``: ``(video number, offset,
    nbytes, dtype, where)``), read with one ``pread`` and checked in one numpy pass per
    dtype rather than a few numpy calls per video (which cost as much as HDF5's own work)."""
    if not raw:
        return
    if fd is None:
        for i, _, _, _, where in raw:
            out.append((i, f"{where()}: cannot be read (the shard cannot be opened); {FIX}"))
        return
    size = os.fstat(fd).st_size
    inside = []
    for item in raw:
        i, off, n, _, where = item
        if off + n > size:
            msg = f"the file ends {off + n - size} bytes before the array does"
            out.append((i, f"{where()}: cannot be read ({msg}); {FIX}"))
        else:
            inside.append(item)
    if not inside:
        return
    lo = min(t[1] for t in inside)
    hi = max(t[1] + t[2] for t in inside)
    if hi - lo > _READ_MAX:  # a shard of big arrays: one read per array
        arrays = [(t, np.frombuffer(os.pread(fd, t[2], t[1]), t[3])) for t in inside]
    else:
        mem = np.frombuffer(os.pread(fd, hi - lo, lo), np.uint8)
        arrays = []
        by_dtype: dict[np.dtype, list] = {}
        for t in inside:
            by_dtype.setdefault(t[3], []).append(t)
        for dt, items in by_dtype.items():
            sizes = np.array([t[2] for t in items])
            if sizes.max() > _GATHER_MAX:
                arrays += [(t, mem[t[1] - lo : t[1] - lo + t[2]].view(dt)) for t in items]
                continue
            starts = np.array([t[1] - lo for t in items])
            before = np.cumsum(sizes) - sizes
            vals = mem[np.repeat(starts - before, sizes) + np.arange(sizes.sum())].view(dt)
            finite = np.isfinite(vals)
            if finite.all():
                continue
            ok = np.logical_and.reduceat(finite, before // dt.itemsize)
            for k in np.flatnonzero(~ok).tolist():
                t = items[k]
                arrays.append((t, mem[t[1] - lo : t[1] - lo + t[2]].view(dt)))
    for (i, _, _, _, where), a in arrays:
        bad = _check_array(a)
        if bad:
            out.append(
                (
                    i,
                    f"{where()}: 'features' holds {bad} values; check the input video and "
                    f"model, then {FIX}",
                )
            )


def _links(root: Any) -> tuple[dict[bytes, list[bytes] | Exception], dict[bytes, str]]:
    """The names hard-linked in each video group of a shard (root name -> child names),
    listed in one HDF5 visit; group by group when the visit fails, the error standing for
    the list of a group that cannot be listed. Second: the links that are not hard links
    (path -> why), never followed."""
    names: list[tuple[bytes, int]] = []
    not_hard: dict[bytes, str] = {}
    try:
        root.links.visit(lambda n, i: names.append((n, i.type)), info=True)
    except Exception:  # noqa: BLE001 - a broken group somewhere
        out: dict[bytes, list[bytes] | Exception] = {}
        for n in root:
            try:
                why = link_problem(root, n)
                if why is not None:
                    not_hard[n] = why
                    out[n] = []
                    continue
                g = h5o.open(root, n)
                kids = []
                for k in list(g) if isinstance(g, h5g.GroupID) else []:
                    why = link_problem(g, k)
                    if why is None:
                        kids.append(k)
                    else:
                        not_hard[n + b"/" + k] = why
                out[n] = kids
            except Exception as exc:  # noqa: BLE001 - reported for this video
                out[n] = exc
        return out, not_hard
    groups: dict[bytes, list[bytes] | Exception] = {}
    for n, t in names:
        vid, _, child = n.partition(b"/")
        kids = groups.setdefault(vid, [])
        if t != h5l.TYPE_HARD:
            not_hard[n] = _LINK_KIND.get(t, "a user-defined link") + ", not data of this shard"
        elif child and b"/" not in child:
            kids.append(child)  # type: ignore[union-attr]
    return groups, not_hard


_LINK_KIND = {h5l.TYPE_SOFT: "a soft link", h5l.TYPE_EXTERNAL: "an external link (another file)"}


def _verify_shard(set_name: str, d: str, shard: str, want: tuple) -> ShardResult:
    """Check every video of one shard against set.json (``want``: feature_shape, dtype,
    storage_dtype) and the shard's index against its groups."""
    res = ShardResult(shard)
    path = Path(d) / shard
    try:
        fid = open_shard(path)
    except Exception as exc:  # noqa: BLE001
        res.opened = False
        res.problems.append(f"set {set_name!r}: shard {shard} cannot be opened ({exc}); {FIX}")
        return res
    dtypes = _Dtypes()
    found: dict[str, tuple[int, tuple[int, ...], str]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(fid.close)
        fd: int | None = None
        size: int | None = None
        with contextlib.suppress(OSError):
            fd = open_regular(path, "shard")
            stack.callback(os.close, fd)
            size = os.fstat(fd).st_size
        root = h5g.open(fid, b"/")
        probs: list[tuple[int, str]] = []  # (video number, problem): sorted by video below
        raw: list[tuple] = []
        groups, not_hard = _links(root)
        bad_links: dict[bytes, list[tuple[bytes, str]]] = {}
        for n, why in not_hard.items():
            bad_links.setdefault(n.partition(b"/")[0], []).append((n, why))
        for i, (bvid, children) in enumerate(groups.items()):
            vid = bvid.decode("utf-8", "surrogateescape")
            res.ids.append(vid)

            def where(vid: str = vid) -> str:
                return f"set {set_name!r}, video {vid!r} ({shard})"

            out: list[str] = []
            mine: list = []
            try:
                if isinstance(children, Exception):
                    raise children
                for n, why in bad_links.get(bvid, []):
                    shown = n.decode("utf-8", "surrogateescape")
                    out.append(
                        f"{where()}: {shown!r} is not read: {why}; a store reads only its own "
                        f"bytes: {FIX}"
                    )
                if vid in (".", ".."):
                    out.append(f"{where()}: {vid!r} is not a video id readers accept; {FIX}")
                if bvid not in not_hard and bvid + b"/" + _F not in not_hard:
                    ctx = (want, dtypes, where, size)
                    lay = _check_video(root, bvid, children, ctx, out, mine)
                    if lay is not None:
                        found[vid] = lay
            except Exception as exc:  # noqa: BLE001 - report and go on with the next video
                out.append(f"{where()}: cannot be read ({exc}); {FIX}")
            probs += [(i, m) for m in out]
            raw += [(i, *t) for t in mine]
        try:
            _check_raw(fd, raw, probs)
        except OSError as exc:
            probs.append(
                (len(res.ids), f"set {set_name!r}: shard {shard} cannot be read ({exc}); {FIX}")
            )
        probs.sort(key=lambda p: p[0])
        res.problems = [m for _, m in probs]
        attr = read_index_attr(fid)
        if attr is not None:
            res.indexed = True
            mismatch = _index_mismatch(attr, res.ids, found, res)
            if mismatch:
                res.problems.append(
                    f"set {set_name!r}: the index of shard {shard} does not match its groups "
                    f"({mismatch}): the shard was changed after it was completed, or is "
                    f"corrupt; readers may return wrong arrays: {FIX}"
                )
    return res


def _index_mismatch(raw: Any, ids: list[str], found: dict, res: ShardResult) -> str:
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
        parts.append(f"ids only in the index: {few(only_index, 5)}")
    if only_groups:
        parts.append(f"ids only in the groups: {few(only_groups, 5)}")
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


def verify_shards(tasks: list[tuple[str, str, str, tuple]]) -> list[ShardResult]:
    """Check a batch of shards (the unit of work of a worker process)."""
    return [_verify_shard(*t) for t in tasks]


def workers_for(n_shards: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, int(workers))
    cpus = available_cores()
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
    "from vidfeat.store.shardcheck import verify_shards\n"
    "sys.stdout.buffer.write(pickle.dumps(verify_shards(tasks)))\n"
)


def run_checks(tasks: list[tuple[str, str, str, tuple]], workers: int) -> list[ShardResult]:
    """Check shards, in ``workers`` processes when more than one (interleaved shares so
    each gets alike shards); a share whose worker fails is checked here instead."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        return verify_shards(tasks)
    shares = [tasks[i::workers] for i in range(workers)]
    procs: list[subprocess.Popen | None] = []
    for share in shares:
        p = None
        try:
            p = subprocess.Popen(  # -P: nothing from the current folder (vidfeat.children)
                [*python_command(), "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            path = [p for p in sys.path if p]  # "" is the current folder
            p.stdin.write(pickle.dumps((path, share)))  # type: ignore[union-attr]
            p.stdin.close()  # type: ignore[union-attr]
        except OSError:  # cannot start (or it died at once): this process checks the share
            if p is not None:
                p.kill()
                p.wait()
            p = None
        procs.append(p)
    by_name: dict[str, ShardResult] = {}
    for p, share in zip(procs, shares, strict=True):
        got = None
        if p is not None:
            data = p.stdout.read()  # type: ignore[union-attr]
            p.stdout.close()  # type: ignore[union-attr]
            if p.wait() == 0:
                with contextlib.suppress(Exception):
                    got = pickle.loads(data)
        if got is None:
            got = verify_shards(share)
        by_name.update((r.name, r) for r in got)
    return [by_name[t[2]] for t in tasks]
