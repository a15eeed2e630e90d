"""Feature store at scale: opening, verifying and reading a 500k-video set.

Writes a set of ``--videos`` (default 500,000; ``--quick`` 50,000) small feature arrays
(T=4, D=8 float32, two attrs, like a tiny extraction) with :class:`vidfeat.store.ShardWriter`,
64 videos per shard (~7,800 shards), into a temporary store, then measures — each open in a
fresh process, so the resident memory it adds is the set's alone:

* writing (printed): ``--write-jobs`` (default 2) concurrent jobs, each a ShardWriter with its
  own job name, as extraction jobs share a set;
* cold open (no ``.index.npz``: one attribute per shard, the shards' own index) <= 10 s;
* warm open (``.index.npz`` present) <= 1 s;
* read-only open (no cache; ``FeatureSet(read_only=True)`` on a set folder chmod'ed a-w, and
  the cache checked not to appear) <= 10 s;
* ``vidfeat store verify`` <= 60 s and ``vidfeat store info`` <= 2 s (the command line,
  process start included);
* RSS added by an open set <= 300 MB;
* random ``features(id)`` reads: this code against today's (the reader of ``--baseline``, a
  git revision before shards carried an index, loaded from git into the same process and
  reading the same store through its own ``.index.json``) in interleaved rounds: ratio >= 1;
* resume planning (``completed_ids()`` of the full set minus a 500k-video list, as
  ``vidfeat.extract.job.plan`` does; open included) <= 10 s.

Today's reader is also timed opening the set cold (a scan of every group) and warm, for
reference. ``--big`` adds a set of 100k videos of 25x2048 float32 (~20 GB; only when the disk
has room) and times the same opens and reads. The temporary store is deleted at the end
(``--keep DIR`` writes it there and keeps it).

The set index is also written as an sqlite file of the same rows, to compare size, open,
lookup and all-ids times with the ``.index.npz`` the reader uses.

Usage: python bench/bench_store_scale.py [--quick] [--videos N] [--big] [--json OUT]
       [--keep DIR [--reuse]] [--write-jobs N] [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidfeat.store import INDEX_FILE, FeatureStore, ShardWriter  # noqa: E402

BASELINE = "7e5d742"  # vidfeat/store/reader.py before shards carried an index (.index.json)
SMALL = (4, 8)
BIG = (25, 2048)
TARGETS = {  # figure: (limit, "max" | "min")
    "cold_open_s": (10.0, "max"),
    "warm_open_s": (1.0, "max"),
    "read_only_open_s": (10.0, "max"),
    "verify_s": (60.0, "max"),
    "info_s": (2.0, "max"),
    "rss_open_mb": (300.0, "max"),
    "read_ratio": (1.0, "min"),
    "resume_plan_s": (10.0, "max"),
}


# --------------------------------------------------------------------------- writing


def write_set(
    root: Path, name: str, n: int, shape: tuple[int, ...], per_shard: int, jobs: int = 1
) -> float:
    """``n`` videos through ShardWriter, split over ``jobs`` concurrent jobs (processes, each
    its own ShardWriter and job name, as extraction jobs share a set); returns the seconds."""
    store = FeatureStore(root)
    store.ensure_set(
        name, {"modality": "bench", "T": shape[0], "dtype": "float32", "feature_shape": shape}
    )
    t0 = time.perf_counter()
    if jobs <= 1:
        write_range(store.set_dir(name), 0, n, shape, per_shard, "bench")
    else:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cuts = [n * j // jobs for j in range(jobs + 1)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "write",
                    str(store.set_dir(name)),
                    f"{cuts[j]}:{cuts[j + 1]}:{'x'.join(map(str, shape))}:{per_shard}:bench{j}",
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
            for j in range(jobs)
        ]
        if any(p.wait() for p in procs):
            raise RuntimeError("a writing job failed")
    return time.perf_counter() - t0


def write_range(
    set_dir: Path, start: int, stop: int, shape: tuple[int, ...], per_shard: int, job: str
) -> None:
    rng = np.random.default_rng(start)
    block = rng.standard_normal((1024, *shape)).astype(np.float32)
    with ShardWriter(set_dir, job, max_videos=per_shard, max_mb=1e6) as w:
        for i in range(start, stop):
            w.add(vid(i), block[i % 1024], {"label": f"class{i % 400}", "class_index": i % 400})


def vid(i: int) -> str:
    return f"video-{i:07d}"


# --------------------------------------------------------------------------- child processes


def load_baseline(rev: str):
    """Today's reader module (``vidfeat/store/reader.py`` at ``rev``), or None without git."""
    try:
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:vidfeat/store/reader.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "baseline_reader.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_reader", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child(kind: str, set_dir: Path, arg: str) -> dict:
    """One measurement in this (fresh) process; returns figures."""
    import gc

    import psutil

    from vidfeat.store import FeatureSet

    if kind == "write":
        start, stop, shape, per_shard, job = arg.split(":")
        dims = tuple(int(x) for x in shape.split("x"))
        write_range(set_dir, int(start), int(stop), dims, int(per_shard), job)
        return {}
    proc = psutil.Process()
    cls = FeatureSet
    if kind.startswith("baseline"):
        mod = load_baseline(arg)
        if mod is None:
            return {"skipped": "no git"}
        cls = mod.FeatureSet
    gc.collect()
    rss0 = proc.memory_info().rss
    if kind in ("open", "baseline-open"):
        t0, c0 = time.perf_counter(), time.process_time()
        fs = cls(set_dir)
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        gc.collect()
        return {
            "s": took,
            "cpu_s": cpu,
            "rss_mb": (proc.memory_info().rss - rss0) / 2**20,
            "videos": len(fs),
        }
    if kind == "read-only":
        t0, c0 = time.perf_counter(), time.process_time()
        fs = cls(set_dir, read_only=True)
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        gc.collect()
        return {
            "s": took,
            "cpu_s": cpu,
            "rss_mb": (proc.memory_info().rss - rss0) / 2**20,
            "videos": len(fs),
            "cache_written": (set_dir / INDEX_FILE).exists(),
        }
    if kind == "plan":
        wanted = [vid(i) for i in range(int(arg))]  # the video list, already parsed
        t0 = time.perf_counter()
        done = cls(set_dir).completed_ids()
        todo = [v for v in wanted if v not in done]
        return {"s": time.perf_counter() - t0, "todo": len(todo), "done": len(done)}
    if kind == "reads":
        return reads(set_dir, arg)
    if kind == "formats":
        return formats(set_dir)
    raise SystemExit(f"unknown child {kind}")


def reads(set_dir: Path, rev: str, n: int = 10_000, rounds: int = 21) -> dict:
    """Random ``features(id)`` reads, this reader vs the baseline's on the same ids (both warm:
    indexes cached, files in the page cache after a first pass), in rounds alternating which
    goes first; the ratio is the median of the rounds' ratios (robust to a machine whose
    load drifts)."""
    from vidfeat.store import FeatureSet

    new = FeatureSet(set_dir)
    mod = load_baseline(rev)
    old = mod.FeatureSet(set_dir) if mod is not None else None
    rng = random.Random(0)
    ids = rng.sample(new.ids(), n) if len(new) >= n else rng.choices(new.ids(), k=n)
    for i in ids:
        a = new.features(i)
        if old is not None:
            np.testing.assert_array_equal(a, old.features(i))
    times: dict[str, list[float]] = {"new": [], "old": []}
    for r in range(rounds):
        order = [("new", new), ("old", old)] if r % 2 == 0 else [("old", old), ("new", new)]
        for name, fs in order:
            if fs is None:
                continue
            t0 = time.perf_counter()
            for i in ids:
                fs.features(i)
            times[name].append(time.perf_counter() - t0)
    out = {"n": len(ids), "new_per_s": len(ids) / float(np.median(times["new"]))}
    if times["old"]:
        out["old_per_s"] = len(ids) / float(np.median(times["old"]))
        out["ratio"] = float(np.median(np.array(times["old"]) / np.array(times["new"])))
    return out


def formats(set_dir: Path, n: int = 20_000) -> dict:
    """The set index as .npz (what the reader uses) against an sqlite file of the same rows:
    size, write, open, one lookup, all ids (the resume point)."""
    import sqlite3

    from vidfeat.store.setindex import SetIndex

    idx = SetIndex.load(set_dir / INDEX_FILE)
    assert idx is not None
    out: dict = {}
    tmp = Path(tempfile.mkdtemp(dir=set_dir.parent))
    try:
        ids = random.Random(1).sample(idx.ids, min(n, len(idx.ids)))
        t0 = time.perf_counter()
        idx.save(tmp / "i.npz")
        out["npz_write_s"] = time.perf_counter() - t0
        out["npz_mb"] = (tmp / "i.npz").stat().st_size / 2**20
        t0 = time.perf_counter()
        j = SetIndex.load(tmp / "i.npz")
        row = dict(zip(j.ids, range(len(j.ids)), strict=True))
        out["npz_open_s"] = time.perf_counter() - t0
        off, lay, sh = memoryview(j.offset), memoryview(j.layout), memoryview(j.shard_of_row)
        t0 = time.perf_counter()
        for i in ids:
            r = row[i]
            off[r], lay[r], sh[r]
        out["npz_lookup_us"] = (time.perf_counter() - t0) / len(ids) * 1e6
        t0 = time.perf_counter()
        set(row)
        out["npz_all_ids_s"] = time.perf_counter() - t0

        db = tmp / "i.sqlite"
        t0 = time.perf_counter()
        con = sqlite3.connect(db)
        con.execute(
            "create table v (id text primary key, shard int, off int, lay int, wat real) "
            "without rowid"
        )
        con.executemany(
            "insert or replace into v values (?, ?, ?, ?, ?)",
            zip(
                idx.ids,
                idx.shard_of_row.tolist(),
                idx.offset.tolist(),
                idx.layout.tolist(),
                idx.wat.tolist(),
                strict=True,
            ),
        )
        con.commit()
        con.close()
        out["sqlite_write_s"] = time.perf_counter() - t0
        out["sqlite_mb"] = db.stat().st_size / 2**20
        t0 = time.perf_counter()
        con = sqlite3.connect(db)
        con.execute("select count(*) from v").fetchone()
        out["sqlite_open_s"] = time.perf_counter() - t0
        q = "select shard, off, lay from v where id = ?"
        t0 = time.perf_counter()
        for i in ids:
            con.execute(q, (i,)).fetchone()
        out["sqlite_lookup_us"] = (time.perf_counter() - t0) / len(ids) * 1e6
        t0 = time.perf_counter()
        {r[0] for r in con.execute("select id from v")}
        out["sqlite_all_ids_s"] = time.perf_counter() - t0
        con.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_child(kind: str, set_dir: Path, arg: str = "") -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(set_dir), arg],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if res.returncode:
        raise RuntimeError(f"child {kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_cli(*args: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", "import sys; from vidfeat.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    took = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"vidfeat {' '.join(args)} failed:\n{res.stdout[-2000:]}{res.stderr}")
    return took, res.stdout


# --------------------------------------------------------------------------- one set


@contextlib.contextmanager
def read_only_dir(d: Path):
    mode = d.stat().st_mode
    os.chmod(d, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        os.chmod(d, mode)


def measure_set(root: Path, name: str, n: int, rev: str, full: bool) -> dict:
    d = root / name
    fig: dict = {"videos": n, "shards": len(list(d.glob("part-*.h5")))}
    cache, legacy = d / INDEX_FILE, d / ".index.json"
    cache.unlink(missing_ok=True)
    fig["cold"] = run_child("open", d)
    assert fig["cold"]["videos"] == n and cache.exists(), fig["cold"]
    fig["warm"] = run_child("open", d)
    cache.unlink()
    with read_only_dir(d):
        fig["read_only"] = run_child("read-only", d)
    assert not cache.exists() and not fig["read_only"]["cache_written"]
    fig["baseline_cold"] = run_child("baseline-open", d, rev)
    fig["baseline_warm"] = run_child("baseline-open", d, rev)
    fig["reads"] = run_child("reads", d, rev)
    legacy.unlink(missing_ok=True)
    if full:
        fig["formats"] = run_child("formats", d)
        fig["index_mb"] = fig["formats"]["npz_mb"]
        fig["plan"] = run_child("plan", d, str(n))
        fig["load_before_verify"] = os.getloadavg()[0]
        fig["verify_s"], out = run_cli("store", "verify", str(root))
        assert "OK: no problems found" in out, out
        fig["verify_out"] = out.strip().splitlines()[0]
        fig["info_s"], out = run_cli("store", "info", str(root))
    return fig


def summary(fig: dict) -> dict:
    s = {
        "cold_open_s": fig["cold"]["s"],
        "warm_open_s": fig["warm"]["s"],
        "read_only_open_s": fig["read_only"]["s"],
        "rss_open_mb": max(fig["cold"]["rss_mb"], fig["warm"]["rss_mb"]),
    }
    if "ratio" in fig["reads"]:
        s["read_ratio"] = fig["reads"]["ratio"]
    for k in ("verify_s", "info_s"):
        if k in fig:
            s[k] = fig[k]
    if "plan" in fig:
        s["resume_plan_s"] = fig["plan"]["s"]
    return s


def report(name: str, fig: dict, write_s: float | None, shape: tuple[int, ...]) -> list[str]:
    s = summary(fig)
    wrote = (
        f"written by ShardWriter in {write_s:.0f} s ({fig['videos'] / write_s:,.0f} videos/s)"
        if write_s
        else "reused (--reuse)"
    )
    lines = [
        f"set {name}: {fig['videos']:,} videos of {shape[0]}x{shape[1]} float32 in "
        f"{fig['shards']:,} shards, {wrote}",
        "",
        f"{'figure':<36}{'this code':>12}{'today':>12}{'target':>10}  ok",
    ]

    def row(label: str, key: str, value: float, today: float | None = None) -> None:
        ok = t = ""
        if key in TARGETS:
            lim, kind = TARGETS[key]
            ok = "yes" if _meets(key, value) else "NO"
            t = f"{'<=' if kind == 'max' else '>='} {lim:g}"
        today_s = f"{today:,.2f}" if today is not None else "-"
        lines.append(f"{label:<36}{value:>12,.2f}{today_s:>12}{t:>10}  {ok}")

    bc, bw = fig["baseline_cold"], fig["baseline_warm"]
    has_b = "s" in bc
    row("cold open, no cache (s)", "cold_open_s", s["cold_open_s"], bc["s"] if has_b else None)
    row("warm open (s)", "warm_open_s", s["warm_open_s"], bw["s"] if has_b else None)
    row("read-only open, no cache (s)", "read_only_open_s", s["read_only_open_s"])
    row(
        "RSS added by an open set (MB)",
        "rss_open_mb",
        s["rss_open_mb"],
        max(bc["rss_mb"], bw["rss_mb"]) if has_b else None,
    )
    r = fig["reads"]
    row("random features() reads / s", "", r["new_per_s"], r.get("old_per_s"))
    if "read_ratio" in s:
        row("  reads: this code / today", "read_ratio", s["read_ratio"])
    if "verify_s" in s:
        row(
            f"vidfeat store verify (s) [load {fig['load_before_verify']:.1f}]",
            "verify_s",
            s["verify_s"],
        )
        row("vidfeat store info (s)", "info_s", s["info_s"])
    if "resume_plan_s" in s:
        row(f"resume plan of {fig['videos']:,} ids (s)", "resume_plan_s", s["resume_plan_s"])
    lines.append(
        f"cpu seconds of the opens: cold {fig['cold']['cpu_s']:.2f}, warm "
        f"{fig['warm']['cpu_s']:.2f}, read-only {fig['read_only']['cpu_s']:.2f}; RSS added: "
        f"cold {fig['cold']['rss_mb']:.0f} MB, warm {fig['warm']['rss_mb']:.0f} MB, read-only "
        f"{fig['read_only']['rss_mb']:.0f} MB"
    )
    f = fig.get("formats")
    if f:
        lines += [
            "",
            "set index as                 file MB   write s    open s  lookup us  all ids s",
            f"{'.index.npz (used)':<28}{f['npz_mb']:>8.1f}{f['npz_write_s']:>10.2f}"
            f"{f['npz_open_s']:>10.2f}{f['npz_lookup_us']:>11.2f}{f['npz_all_ids_s']:>11.2f}",
            f"{'sqlite (same rows)':<28}{f['sqlite_mb']:>8.1f}{f['sqlite_write_s']:>10.2f}"
            f"{f['sqlite_open_s']:>10.2f}{f['sqlite_lookup_us']:>11.2f}"
            f"{f['sqlite_all_ids_s']:>11.2f}",
            "(npz open: load + the id -> row dict; lookup: id -> shard, offset, layout; all ids:"
            " the set of completed ids a resume needs)",
        ]
    return lines


def free_gb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50,000 videos (and 10,000 with --big)")
    ap.add_argument("--videos", type=int, help="videos of the small set (default 500,000)")
    ap.add_argument("--shard-videos", type=int, default=64)
    ap.add_argument(
        "--write-jobs",
        type=int,
        default=min(2, len(os.sched_getaffinity(0))),
        help="concurrent writing jobs (default: 2, or 1 on one CPU)",
    )
    ap.add_argument("--big", action="store_true", help="also 100k videos of 25x2048 (~20 GB)")
    ap.add_argument("--big-videos", type=int, help="videos of the --big set (default 100,000)")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of today's reader")
    ap.add_argument("--keep", type=Path, help="write the store here and keep it")
    ap.add_argument("--reuse", action="store_true", help="with --keep: measure the store there")
    ap.add_argument("--json", type=Path, help="write the figures to this JSON file")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, set_dir, arg = args.child
        print(json.dumps(child(kind, Path(set_dir), arg)))
        return

    t_all = time.perf_counter()
    load0 = os.getloadavg()[0]
    n = args.videos or (50_000 if args.quick else 500_000)
    n_big = args.big_videos or (10_000 if args.quick else 100_000)
    base = args.keep or Path(tempfile.mkdtemp(prefix="vidfeat-bench-store-"))
    root = base / "store"
    out: dict = {"videos": n, "shard_videos": args.shard_videos, "baseline": args.baseline}
    lines: list[str] = []
    try:
        write_s = None
        if args.reuse and (root / "small" / "set.json").exists():
            n = run_child("open", root / "small")["videos"]  # the store there, as it is
        else:
            write_s = write_set(root, "small", n, SMALL, args.shard_videos, args.write_jobs)
        fig = measure_set(root, "small", n, args.baseline, full=True)
        out["small"] = {**fig, "write_s": write_s, "summary": summary(fig)}
        lines += report("small", fig, write_s, SMALL)
        if args.big:
            need = n_big * int(np.prod(BIG)) * 4 / 2**30 * 1.1 + 5
            have = free_gb(root)
            if have < need:
                lines += ["", f"--big skipped: {have:.0f} GB free, {need:.0f} GB needed"]
            else:
                write_b = write_set(root, "big", n_big, BIG, args.shard_videos, args.write_jobs)
                figb = measure_set(root, "big", n_big, args.baseline, full=False)
                out["big"] = {**figb, "write_s": write_b, "summary": summary(figb)}
                lines += [""] + report("big", figb, write_b, BIG)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    took = time.perf_counter() - t_all
    s = out["small"]["summary"]
    misses = [k for k, v in s.items() if k in TARGETS and not _meets(k, v)]
    lines += [
        "",
        f"targets met: {'all' if not misses else 'all but ' + ', '.join(misses)}; "
        f"bench took {took / 60:.1f} min; 1-minute load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, on {len(os.sched_getaffinity(0))} CPUs",
    ]
    out["took_s"] = took
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")


def _meets(key: str, value: float) -> bool:
    lim, kind = TARGETS[key]
    return value <= lim if kind == "max" else value >= lim


if __name__ == "__main__":
    main()
